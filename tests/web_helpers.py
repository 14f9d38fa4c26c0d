"""Shared by the web demo's tests and the preprocessing tests: the shipped models (loaded
once per test process), digits as strokes, which the API tests render with PIL and the
browser tests draw with the mouse or a finger, digits on paper, and pictures that
preprocessing must refuse."""

from __future__ import annotations

import functools
import io
import math
import struct
import zlib
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import torch
from PIL import Image, ImageDraw

import tinydigits
from tinydigits import weights
from tinydigits.runtime import set_threads

CHROMIUM = "/usr/bin/chromium"  # Debian's package (scripts/setup.sh); Playwright's own builds do not run here
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
SCREENSHOT = Path(__file__).resolve().parents[1] / "docs" / "web-demo.png"
STATIC_SCREENSHOT = SCREENSHOT.with_name("static-site.png")

Stroke = list[tuple[float, float]]  # points as fractions of the pad's width and height

_ZERO = [(0.5 + 0.2 * math.sin(2 * math.pi * k / 28), 0.5 - 0.3 * math.cos(2 * math.pi * k / 28))
         for k in range(29)]
DIGITS: dict[int, list[Stroke]] = {
    1: [[(0.52, 0.18), (0.50, 0.50), (0.48, 0.82)]],
    7: [[(0.28, 0.22), (0.72, 0.22), (0.58, 0.45), (0.46, 0.82)]],
    0: [_ZERO],
}
PAD = 280  # the page's canvas size in pixels
LINE_WIDTH = 18  # the page's stroke width (app.js)


# The digit models the page offers (those with shipped weights) and its "all of them" choice.
PAGE_MODELS = weights.shipped_models("digit")
ALL_LABEL = "All three" if len(PAGE_MODELS) == 3 else f"All {len(PAGE_MODELS)}"


@functools.cache
def shipped_models() -> dict[str, tinydigits.models.TinyDigitNet]:
    # $TINYDIGITS_THREADS, as the command line honours it: on a busy machine extra torch
    # threads spin and make every preprocessing and inference step here many times slower.
    set_threads()
    return {name: tinydigits.load_model(name, pretrained=True) for name in weights.shipped_models("digit")}


@functools.cache
def shipped_reader() -> tinydigits.models.NumberReader:
    """The shipped number reader, which the static site's "A number" mode runs."""
    set_threads()
    return tinydigits.load_model(tinydigits.models.DEFAULT_READER, pretrained=True)


def draw_png(strokes: list[Stroke], size: int = PAD, width: int = LINE_WIDTH) -> bytes:
    """Dark strokes on white, as the page's canvas draws them, as a PNG."""
    image = Image.new("RGB", (size, size), "white")
    pen = ImageDraw.Draw(image)
    for stroke in strokes:
        points = [(x * size, y * size) for x, y in stroke]
        pen.line(points, fill=(17, 17, 17), width=width, joint="curve")
        for x, y in (points[0], points[-1]):  # round caps
            pen.ellipse((x - width / 2, y - width / 2, x + width / 2, y + width / 2), fill=(17, 17, 17))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def png_bytes(image: Image.Image, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", **options)
    return buffer.getvalue()


def on_paper(digit: torch.Tensor, size: int = 160, canvas: tuple[int, int] = (400, 300),
             at: tuple[int, int] = (30, 90)) -> Image.Image:
    """A plain black-on-white rendering of an MNIST digit, off-centre on a larger sheet."""
    ink = Image.fromarray(digit.numpy()).resize((size, size), Image.Resampling.BICUBIC)
    sheet = Image.new("L", canvas, 0)
    sheet.paste(ink, at)
    return Image.eval(sheet, lambda v: 255 - v)


def _png(width: int, height: int, bit_depth: int, rows: bytes) -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, bit_depth, 0, 0, 0, 0)  # grayscale
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", rows) + chunk(b"IEND", b"")


def huge_png(width: int, height: int) -> bytes:
    """A tiny PNG file whose header claims ``width`` x ``height`` pixels (a decompression bomb)."""
    return _png(width, height, 8, zlib.compress(b"\x00" * 1000, 9))  # pixel data cut short


@functools.cache
def blank_png(width: int, height: int) -> bytes:
    """A complete, valid 1-bit black PNG of ``width`` x ``height``: a few KB even for hundreds
    of megapixels, which decode to a byte (or more) per pixel."""
    row = bytes(1 + (width + 7) // 8)  # filter byte, then the packed pixels
    packer = zlib.compressobj(9)
    rows = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    return _png(width, height, 1, rows)


def truncated_jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.effect_noise((300, 300), 60).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()[:3000]


BAD_INPUTS = {
    "empty": (lambda: b"", "empty file"),
    "text": (lambda: b"hello, not a picture\n", "not an image"),
    "truncated": (truncated_jpeg, "truncated"),
    "blank": (lambda: png_bytes(Image.new("RGB", (640, 480), (235, 230, 210))), "no ink"),
    "blank_noisy_jpeg": (lambda: _noisy_blank(), "no ink"),
    "bomb_40mp": (lambda: huge_png(8000, 6000), "too large"),
    "bomb_pil_limit": (lambda: huge_png(30000, 30000), "too large"),
}


def _noisy_blank() -> bytes:
    rng = np.random.default_rng(0)
    _, xx = np.mgrid[0:480, 0:640]
    sheet = 220 - 40 * xx / 640 + rng.normal(0, 4, (480, 640))
    buffer = io.BytesIO()
    Image.fromarray(np.clip(sheet, 0, 255).astype(np.uint8)).save(buffer, format="JPEG", quality=60)
    return buffer.getvalue()


class Page:
    """A page of the demo, recording every request it makes and every script error. ``where``
    is where the models run: "server" (``tinydigits serve``) or "browser" (a static site);
    ``init_script`` runs before the page's own (e.g. to take a browser feature away)."""

    def __init__(self, browser, live, where: str = "server", init_script: str = "",
                 **context_options) -> None:
        self.where = where
        self.context = browser.new_context(**context_options)
        if init_script:  # run in the page before its own scripts
            self.context.add_init_script(init_script)
        self.page = self.context.new_page()
        self.origin = urlsplit(live.url)
        self.requests: list[str] = []
        self.blocked: list[str] = []
        self.errors: list[str] = []
        self.page.on("request", lambda r: self.requests.append(r.url))
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        # A 4xx answer is logged by Chromium as "Failed to load resource"; anything else
        # (a script error, a Content-Security-Policy violation) is a failure.
        self.page.on("console", lambda m: m.type == "error" and "Failed to load resource" not in m.text
                     and self.errors.append(m.text))
        self.page.route("**/*", self._only_local)
        self.page.goto(live.url)
        self.page.wait_for_selector("body[data-ready=true]")

    def _local(self, url: str) -> bool:
        parts = urlsplit(url)
        return parts.scheme in ("data", "blob") or (parts.hostname == "127.0.0.1"
                                                    and parts.port == self.origin.port)

    def _only_local(self, route) -> None:
        if self._local(route.request.url):
            route.continue_()
        else:  # never let it out, and fail the test afterwards
            self.blocked.append(route.request.url)
            route.abort()

    def check_stayed_local(self) -> None:
        api = [url for url in self.requests if "/api/" in urlsplit(url).path]
        if self.where == "server":
            assert api  # the listener did see the traffic
        else:  # in the browser: the models ran here, nothing was sent anywhere
            assert api == [] and any("/models/" in url and url.endswith(".json") for url in self.requests)
        assert self.blocked == [] and [u for u in self.requests if not self._local(u)] == []
        assert self.errors == []

    # ------------------------------------------------------------ actions

    def points(self, stroke: Stroke) -> list[tuple[float, float]]:
        box = self.page.locator("#pad").bounding_box()
        return [(box["x"] + x * box["width"], box["y"] + y * box["height"]) for x, y in stroke]

    def draw(self, strokes: list[Stroke]) -> None:
        mouse = self.page.mouse
        for stroke in strokes:
            first, *rest = self.points(stroke)
            mouse.move(*first)
            mouse.down()
            for point in rest:
                mouse.move(*point, steps=6)
            mouse.up()

    def idle(self) -> None:
        """Wait until no prediction is pending or in flight."""
        # A function, not an expression string: the page's Content-Security-Policy forbids eval.
        self.page.wait_for_function("() => document.body.dataset.busy === 'false'")

    def cards(self) -> list[dict]:
        """Each model's answer as shown: model, digit, and the bars' probabilities and widths."""
        return self.page.eval_on_selector_all("#results .card", """cards => cards.map(card => ({
            model: card.dataset.model,
            digit: card.querySelector('.digit').textContent,
            time: card.querySelector('.time').textContent,
            bars: [...card.querySelectorAll('.bars li')].map(li => ({
                digit: Number(li.dataset.digit), p: Number(li.dataset.p), top: li.classList.contains('top'),
                width: li.querySelector('.fill').getBoundingClientRect().width,
                track: li.querySelector('.track').getBoundingClientRect().width}))}))""")

    def check_reads(self, digit: int, models: int = 1) -> list[dict]:
        cards = self.cards()
        assert len(cards) == models
        for card in cards:
            assert card["digit"] == str(digit), card
            bars = card["bars"]
            assert [b["digit"] for b in bars] == list(range(10))
            assert abs(sum(b["p"] for b in bars) - 1) < 1e-3
            top = max(bars, key=lambda b: b["p"])
            assert top["digit"] == digit and top["top"] and [b["top"] for b in bars].count(True) == 1
            assert top["p"] > 0.5 and top["width"] > 0.5 * top["track"]  # the bar is drawn to scale
            assert all(b["width"] <= top["width"] for b in bars)
            assert ("ms on the server" if self.where == "server" else "ms in your browser") in card["time"]
        seen = self.page.locator("#seen")
        assert seen.is_visible() and seen.evaluate("img => [img.naturalWidth, img.naturalHeight]") == [28, 28]
        return cards
