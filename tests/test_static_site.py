"""The demo as a static site (`tinydigits export --format web`), in Debian's Chromium.

The site is exported with the real command, served by Python's plain static file server on
127.0.0.1, and read by the browser alone: no request may go to an /api path or leave the
origin. The page's JavaScript is compared with Python: its engine with PyTorch on the 10,000
MNIST test images, its preprocessing with `to_mnist` on 50 drawn digits and 50 photos
(scan-like and phone-like JPEGs), its strips with `ink_strip` and its number reader with
PyTorch on 50 pictures of touching numbers, its number reading with `read_number(...,
method="sequence")` on those 50 pictures and 20 numbers drawn on the wide pad; and the page
must work offline once loaded. Set TINYDIGITS_SCREENSHOT=1 to also refresh
docs/static-site.png and docs/static-site.json (size, first-load and per-reading times,
parity figures), which the README quotes.
"""

from __future__ import annotations

import base64
import functools
import gzip
import http.server
import io
import json
import math
import os
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_helpers import one_line_error
from click.testing import CliRunner
from PIL import Image
from scan_images import scan_like
from web_helpers import (
    ALL_LABEL,
    CHROMIUM,
    DIGITS,
    PAGE_MODELS,
    STATIC_SCREENSHOT,
    Page,
    Stroke,
    shipped_models,
    shipped_reader,
)

from tinydigits import data
from tinydigits.cli import main
from tinydigits.deploy.static_site import MANIFEST
from tinydigits.markdown import GeneratedBlock
from tinydigits.models import DEFAULT_READER
from tinydigits.preprocess import WORK_SIDE, ink_map, load_image, to_mnist
from tinydigits.read import read_number
from tinydigits.segment import digit_groups
from tinydigits.sequence import digit_boxes, read_picture
from tinydigits.strips import batch_strips, ink_strip, number_set
from tinydigits.weights import get_weights

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"{CHROMIUM} is not installed")
pytest.importorskip("playwright.sync_api")
FIGURES = STATIC_SCREENSHOT.with_suffix(".json")
README = Path(__file__).resolve().parents[1] / "README.md"
README_BLOCK = GeneratedBlock("static-site", "TINYDIGITS_SCREENSHOT=1 pytest tests/test_static_site.py")
# Bytes: the issue's hard limit is 1 MB (its aim was 200 KB, met until the number reader's
# 75k fp32 parameters, 402 KB as base64, joined the three digit models' 97 KB).
SITE_LIMIT = 700_000
LOGP_TOLERANCE = 1e-4  # largest |log-probability difference| allowed between the page's engine and PyTorch


def summary(figures: dict) -> str:
    """The README's sentences about the site, from docs/static-site.json."""
    f = figures
    parts = [
        f"{f['site_bytes'] / 1e3:.0f} KB ({f['site_gzip_bytes'] / 1e3:.0f} KB gzipped, as hosts serve it),",
        f"{f['weights_bytes'] / 1e3:.0f} KB of it the models' weights",
        f"({f['reader_weights_bytes'] / 1e3:.0f} KB the number reader's). From navigation to the digit",
        f"models ready took {f['first_load_ms']:,} ms in headless Chromium, served from 127.0.0.1, and",
        f"to the number reader ready, loaded after them, {f['reader_ready_ms']:,} ms (median of",
        f"{f['loads']} loads; load average {f['load_average']} on {f['cpus']} CPUs); a drawn digit was",
        f"read in {f['drawn_digit_ms']} ms (median; preprocessing and MNIST-Medium), a number drawn on the",
        f"wide pad in {f['drawn_number_ms']} ms (median; ink map, strip, number reader and",
        "MNIST-Medium), a photo of",
        f"a digit in {f['photo_ms']} ms ({f['photo_decode_ms']} ms of it the browser decoding the",
        f"file; scan-like photos {f['photo_scan_ms']} ms, phone-like {f['photo_phone_ms']} ms). The",
        f"page's engine gave PyTorch's digit on {f['engine_same_digit']:,} of {f['engine_images']:,}",
        "MNIST test images per model (every digit model; largest log-probability difference",
        f"{f['engine_max_logp_diff']:.1e}) and the number reader's log-probabilities on the strips of",
        f"{f['reader_strips']} pictures of touching numbers to within {f['reader_max_logp_diff']:.1e};",
        f"its strips were `ink_strip`'s to within {f['strip_max_abs_diff']:.1e}. JavaScript",
        f"preprocessing gave the same 28x28 input as Python's `to_mnist` on {f['parity_drawings']} drawn",
        f"digits (mean absolute difference {f['parity_mean_abs_diff']:.4f}, largest",
        f"{f['parity_max_abs_diff']:.4f}, on 0-1 pixels; the same digit on {f['parity_same_prediction']})",
        f"and on {f['photos']} photos (mean {f['photo_mean_abs_diff']:.4f}, largest",
        f"{f['photo_max_abs_diff']:.4f}; {f['photo_exact']} identical; the same digit on",
        f"{f['photo_same_digit']}); the page read the same number as",
        f"`read_number(..., method=\"sequence\")` on {f['numbers_same']} of {f['numbers']} pictures of",
        f"touching numbers ({f['numbers_ms']} ms each, median) and on {f['drawn_numbers_same']} of",
        f"{f['drawn_numbers']} numbers drawn on the pad, with the same boxes.",
    ]
    return " ".join(parts) + "\n"


def test_the_readme_quotes_the_measured_figures():
    figures = json.loads(FIGURES.read_text())
    assert README_BLOCK.read(README.read_text()) == summary(figures), (
        "README's static-site figures are stale: run TINYDIGITS_SCREENSHOT=1 pytest "
        "tests/test_static_site.py")
    assert figures.get("weights_sha256") == site_weights(), (
        "docs/static-site.json was measured with other weights than those shipped: run "
        "TINYDIGITS_SCREENSHOT=1 pytest tests/test_static_site.py")


def site_weights() -> dict[str, str]:
    """The shipped files a site carries: its figures hold for these only."""
    return {name: get_weights(name).sha256 for name in [*PAGE_MODELS, DEFAULT_READER]}


class StaticServer:
    """``python -m http.server -d SITE``, in a thread, on a free port of 127.0.0.1."""

    def __init__(self, site: Path) -> None:
        class Quiet(http.server.SimpleHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

        handler = functools.partial(Quiet, directory=site)
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("static") / "site"
    result = CliRunner().invoke(main, ["export", "--format", "web", "-o", str(folder)])
    assert result.exit_code == 0, result.output
    assert f"python -m http.server --bind 127.0.0.1 -d {folder}" in result.output
    return folder


@pytest.fixture(scope="module")
def static(site):
    server = StaticServer(site)
    yield server
    server.close()


def open_page(browser, server, **options) -> Page:
    options = {"viewport": {"width": 1280, "height": 820}, "reduced_motion": "reduce", **options}
    page = Page(browser, server, where="browser", **options)
    page.page.wait_for_selector("body[data-models-ready=true]")
    return page


def _png_pixels(data_url: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(data_url.split(",", 1)[1]))).convert("L"))


SITE_FILES = [MANIFEST, "index.html", "manifest.webmanifest", "models.json", "sw.js", "static/tinydigits.js",
              "static/icon.svg", "static/style.css", *(f"models/{name}.json" for name in PAGE_MODELS),
              f"models/{DEFAULT_READER}.json"]


def test_the_export_is_a_self_contained_site_under_700_kb(site):
    files = sorted(p.relative_to(site).as_posix() for p in site.rglob("*") if p.is_file())
    assert files == sorted(SITE_FILES)
    manifest = json.loads((site / MANIFEST).read_text())
    assert set(manifest["files"]) == set(files) - {MANIFEST}
    total = sum((site / f).stat().st_size for f in files)
    assert total <= SITE_LIMIT, f"the site is {total:,} bytes"
    document = json.loads((site / "models.json").read_text())
    assert document["inference"] == ["browser"] and document["default"] == "medium"
    assert [info["name"] for info in document["models"]] == PAGE_MODELS
    for info in document["models"]:
        weights = site / info["weights"]
        assert weights.stat().st_size == info["weights_bytes"] < 45_000
        assert json.loads(weights.read_text())["format"] == "tinydigits-js-1"
    reader = document["reader"]  # what "A number" mode runs
    assert reader["name"] == DEFAULT_READER and reader["weights"] == f"models/{DEFAULT_READER}.json"
    weights = json.loads((site / reader["weights"]).read_text())
    assert (site / reader["weights"]).stat().st_size == reader["weights_bytes"] < 450_000
    assert weights["task"] == "number" and weights["input"] == [1, 32, None]
    assert not any(layer["op"] == "affine" for layer in weights["layers"])  # every BatchNorm folded away
    html = (site / "index.html").read_text()
    head = html.split("<body")[0]
    assert 'src="static/tinydigits.js"' in html  # the page's scripts as one file
    # ... which carries the files the first read needs, so the page reads before any fetch.
    bundle = (site / "static" / "tinydigits.js").read_text()
    first, _ = bundle.split("\n", 1)
    assert first.startswith("window.tinydigitsFirstRead = ") and first.endswith(";")
    carried = json.loads(first.removeprefix("window.tinydigitsFirstRead = ").removesuffix(";"))
    default_weights = json.loads((site / "models" / "medium.json").read_text())
    assert carried == {"models.json": document, "models/medium.json": default_weights}
    assert "http:" not in head and "https:" not in head  # all from here
    assert html.count("<script") == 1
    assert "unsafe-eval" not in html and "wasm" not in html and 'rel="manifest"' in html
    worker = (site / "sw.js").read_text()
    cached = [f for f in files if f not in (MANIFEST, "sw.js")]
    assert "__VERSION__" not in worker and all(f'"{f}"' in worker for f in cached)
    app = json.loads((site / "manifest.webmanifest").read_text())
    assert app["display"] == "standalone" and app["start_url"] == "./"
    assert (site / app["icons"][0]["src"]).is_file()


def test_the_engine_gives_pytorchs_digit_on_the_10000_test_images(browser, static, mnist):
    images = mnist.test_images
    page = open_page(browser, static)
    figures = {"images": len(images), "same": [], "diff": []}
    try:
        encoded = base64.b64encode(images.numpy().tobytes()).decode()
        for name, model in shipped_models().items():
            logp = page.page.evaluate("""async ([name, encoded, count]) => {
                const bytes = Uint8Array.from(atob(encoded), (c) => c.charCodeAt(0));
                const response = await fetch(`models/${name}.json`);
                const model = window.tinydigitsEngine.load(await response.json());
                return Array.from(window.tinydigitsEngine.runMany(model, bytes, count));
            }""", [name, encoded, len(images)])
            ours = torch.tensor(logp).view(-1, 10)
            with torch.no_grad():
                expected = model(data.normalize(images))
            same = int((ours.argmax(1) == expected.argmax(1)).sum())
            largest = float((ours - expected).abs().max())
            figures["same"].append(same)
            figures["diff"].append(largest)
            assert same == len(images), f"{name}: the same digit as PyTorch on {same} of {len(images)}"
            assert largest <= LOGP_TOLERANCE, f"{name}: largest |log-probability difference| {largest:.2e}"
        page.check_stayed_local()
    finally:
        page.context.close()
    if os.environ.get("TINYDIGITS_SCREENSHOT"):
        _record(engine_images=len(images), engine_same_digit=min(figures["same"]),
                engine_max_logp_diff=float(f"{max(figures['diff']):.2e}"))


def test_digits_drawn_with_the_mouse_are_read_in_the_browser(browser, static, site, tmp_path):
    page = open_page(browser, static)
    try:
        p = page.page
        p.wait_for_selector("body[data-reader-ready=true]")  # the number reader follows the digit models
        assert not p.locator("#inference").is_visible()  # nothing to switch to without a server
        # Photos and numbers are read in the browser too.
        assert p.get_by_text("Upload a photo", exact=True).is_visible() and p.locator("#mode").is_visible()
        assert p.locator("#camera").get_attribute("accept") == "image/*"
        assert p.locator("#camera").get_attribute("capture") == "environment"
        assert "nothing you draw or upload leaves this machine" in p.locator("#local-note").inner_text()
        p.get_by_label(ALL_LABEL).check()
        for digit in (1, 7, 0):
            p.get_by_role("button", name="Clear").click()
            page.draw(DIGITS[digit])
            page.idle()
            page.check_reads(digit, models=len(PAGE_MODELS))
            assert "nothing you draw leaves this machine" in p.locator("#message").inner_text()
        page.check_stayed_local()
        shot = tmp_path / "static-site.png"
        p.screenshot(path=str(shot), full_page=True)
        if os.environ.get("TINYDIGITS_SCREENSHOT"):
            shutil.copyfile(shot, STATIC_SCREENSHOT)
            files = [f for f in site.rglob("*") if f.is_file()]
            weights = sum(f.stat().st_size for f in (site / "models").iterdir())
            _record(site_bytes=sum(f.stat().st_size for f in files), weights_bytes=weights,
                    reader_weights_bytes=(site / "models" / f"{DEFAULT_READER}.json").stat().st_size,
                    site_gzip_bytes=sum(len(gzip.compress(f.read_bytes(), 9)) for f in files),
                    **first_loads(browser, static), load_average=round(os.getloadavg()[0], 1),
                    cpus=os.cpu_count())
    finally:
        page.context.close()


def first_loads(browser, static, count: int = 5) -> dict[str, object]:
    """Median times from navigation to the digit models and to the number reader ready, each
    load in a fresh context (an empty cache, no service worker yet), as a first visit."""
    digits, reader = [], []
    for _ in range(count):
        page = open_page(browser, static)
        try:
            page.page.wait_for_selector("body[data-reader-ready=true]")
            marks = page.page.evaluate("""() => ["tinydigits-models-ready", "tinydigits-reader-ready"]
                .map((name) => performance.getEntriesByName(name)[0].startTime)""")
        finally:
            page.context.close()
        digits.append(marks[0])
        reader.append(marks[1])
    return {"first_load_ms": round(float(np.median(digits))),
            "reader_ready_ms": round(float(np.median(reader))), "loads": count}


REQUIRED = ("site_bytes", "engine_images", "parity_drawings", "photos", "numbers", "drawn_numbers")


def _record(**figures: object) -> None:
    previous = json.loads(FIGURES.read_text()) if FIGURES.is_file() else {}
    figures["weights_sha256"] = site_weights()
    if previous.get("weights_sha256") != figures["weights_sha256"]:  # other weights': all measured again
        previous = {}
    FIGURES.write_text(json.dumps({**previous, **figures}, indent=2) + "\n")
    if all(key in previous or key in figures for key in REQUIRED):
        README_BLOCK.update(README, summary({**previous, **figures}))


def test_phone_sized_window_with_a_finger(browser, static):
    page = open_page(browser, static, viewport={"width": 390, "height": 844}, device_scale_factor=2,
                     is_mobile=True, has_touch=True)
    try:
        p = page.page
        assert p.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
        cdp = page.context.new_cdp_session(p)
        for stroke in DIGITS[7]:
            first, *rest = page.points(stroke)
            cdp.send("Input.dispatchTouchEvent", {"type": "touchStart", "touchPoints": [{"x": first[0],
                                                                                        "y": first[1]}]})
            for point in rest:
                cdp.send("Input.dispatchTouchEvent", {"type": "touchMove",
                                                      "touchPoints": [{"x": point[0], "y": point[1]}]})
            cdp.send("Input.dispatchTouchEvent", {"type": "touchEnd", "touchPoints": []})
        page.idle()
        page.check_reads(7)
        assert p.evaluate("window.scrollY") == 0
        page.check_stayed_local()
    finally:
        page.context.close()


# Ten digit shapes as strokes (fractions of the pad), drawn five times each with a random
# slant, size, position and wobble: 50 drawings for the preprocessing parity check.
SHAPES: dict[int, list[Stroke]] = {
    **DIGITS,
    2: [[(0.3, 0.3), (0.4, 0.2), (0.55, 0.18), (0.68, 0.25), (0.7, 0.37), (0.6, 0.5), (0.3, 0.8),
         (0.72, 0.8)]],
    3: [[(0.3, 0.22), (0.55, 0.18), (0.68, 0.28), (0.6, 0.45), (0.45, 0.48), (0.6, 0.5), (0.7, 0.62),
         (0.62, 0.78), (0.45, 0.82), (0.3, 0.76)]],
    4: [[(0.55, 0.18), (0.3, 0.6), (0.75, 0.6)], [(0.62, 0.35), (0.62, 0.85)]],
    5: [[(0.68, 0.2), (0.38, 0.2), (0.35, 0.47), (0.55, 0.45), (0.68, 0.56), (0.66, 0.73), (0.5, 0.82),
         (0.32, 0.76)]],
    6: [[(0.62, 0.18), (0.45, 0.32), (0.35, 0.55), (0.38, 0.75), (0.52, 0.82), (0.65, 0.72), (0.62, 0.57),
         (0.48, 0.52), (0.36, 0.6)]],
    8: [[(0.6, 0.22), (0.48, 0.17), (0.36, 0.25), (0.4, 0.4), (0.6, 0.55), (0.64, 0.72), (0.5, 0.83),
         (0.36, 0.72), (0.4, 0.55), (0.6, 0.4), (0.62, 0.27), (0.6, 0.22)]],
    9: [[(0.64, 0.3), (0.52, 0.2), (0.38, 0.27), (0.38, 0.42), (0.52, 0.48), (0.64, 0.38), (0.64, 0.3),
         (0.62, 0.6), (0.58, 0.83)]],
}


def varied(strokes: list[Stroke], rng: np.random.Generator) -> list[Stroke]:
    # Up to nearly the pad's height: there Python thickens the strokes (preprocess._thicken).
    angle, zoom = math.radians(rng.uniform(-12, 12)), rng.uniform(0.75, 1.35)
    dx, dy = rng.uniform(-0.06, 0.06, size=2)
    out = []
    for stroke in strokes:
        points = []
        for x, y in stroke:
            x, y = x - 0.5, y - 0.5
            x, y = x * math.cos(angle) - y * math.sin(angle), x * math.sin(angle) + y * math.cos(angle)
            wobble = rng.normal(0, 0.008, size=2)
            x, y = 0.5 + zoom * x + dx + wobble[0], 0.5 + zoom * y + dy + wobble[1]
            points.append((min(max(x, 0.03), 0.97), min(max(y, 0.03), 0.97)))  # on the pad
        out.append(points)
    return out


def test_javascript_preprocessing_matches_python_on_50_drawn_digits(browser, static):
    rng = np.random.default_rng(0)
    medium = shipped_models()["medium"]
    page = open_page(browser, static)
    diffs, same, right, times = [], 0, 0, []
    try:
        p = page.page
        for digit in range(10):
            for _ in range(5):
                p.get_by_role("button", name="Clear").click()
                page.draw(varied(SHAPES[digit], rng))
                page.idle()
                canvas = p.evaluate("() => document.getElementById('pad').toDataURL('image/png')")
                ours = _png_pixels(p.locator("#seen").get_attribute("src"))  # what the page's model saw
                python = to_mnist(load_image(base64.b64decode(canvas.split(",", 1)[1]))).numpy()
                assert ours.shape == (28, 28) and ours.max() > 200  # a digit, not an empty picture
                diffs.append(float(np.abs(ours.astype(np.float32) - python.astype(np.float32)).mean() / 255))
                with torch.no_grad():
                    expected = int(medium(data.normalize(torch.from_numpy(python)[None])).argmax())
                shown = int(p.locator("#results .digit").inner_text())
                times.append(p.evaluate("() => window.tinydigitsTimes.total"))
                same += shown == expected
                right += shown == digit
        page.check_stayed_local()
    finally:
        page.context.close()
    mean_diff = float(np.mean(diffs))
    if os.environ.get("TINYDIGITS_SCREENSHOT"):
        _record(parity_drawings=len(diffs), parity_mean_abs_diff=round(mean_diff, 6),
                parity_max_abs_diff=round(max(diffs), 6), parity_same_prediction=same, parity_correct=right,
                drawn_digit_ms=round(float(np.median(times)), 1))
    assert len(diffs) == 50
    assert mean_diff <= 0.02, f"mean |JS - Python| {mean_diff:.4f} on 0-1 pixels"
    assert max(diffs) <= 1 / 255, f"largest mean |JS - Python| of a drawing {max(diffs):.4f}"
    assert same >= 49, f"the same digit as Python + PyTorch on {same} of 50"


# ------------------------------------------------------------------- photos


def phone_like(digit: np.ndarray, rng: np.random.Generator) -> bytes:
    """A large JPEG like a phone's photo of a digit on paper: a scan-like picture enlarged to a
    short side of 1100-2600 px (so Python decodes it in JPEG draft mode, at 1/2 or 1/4 scale),
    with sensor noise, saved at a phone's quality."""
    picture = load_image(scan_like(digit, rng, "JPEG").data).convert("RGB")
    scale = rng.uniform(1100, 2600) / min(picture.size)
    size = (round(picture.width * scale), round(picture.height * scale))
    big = picture.resize(size, Image.Resampling.BICUBIC)
    noise = rng.normal(0, rng.uniform(1, 5), size=(big.height, big.width, 1))
    pixels = np.asarray(big, dtype=np.float32) + noise
    buffer = io.BytesIO()
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(buffer, format="JPEG",
                                                                    quality=int(rng.integers(80, 95)))
    return buffer.getvalue()


def photos(mnist, count_scan: int = 40, count_phone: int = 10) -> list[tuple[str, bytes]]:
    rng = np.random.default_rng(23)
    scans = [("scan", scan_like(mnist.test_images[i].numpy(), rng, "JPEG").data) for i in range(count_scan)]
    phones = [("phone", phone_like(mnist.test_images[100 + i].numpy(), rng)) for i in range(count_phone)]
    return scans + phones


def upload(page: Page, path: Path) -> None:
    page.page.locator("#file").set_input_files(str(path))
    page.idle()


def test_photos_give_pythons_28x28_and_digit(browser, static, mnist, tmp_path):
    medium = shipped_models()["medium"]
    page = open_page(browser, static)
    diffs, same, exact, times = [], 0, 0, {"scan": [], "phone": [], "decode": []}
    try:
        p = page.page
        for index, (kind, photo) in enumerate(photos(mnist)):
            path = tmp_path / f"{kind}-{index}.jpg"
            path.write_bytes(photo)
            upload(page, path)
            python = to_mnist(photo).numpy()  # as the server and `tinydigits predict` read the file
            assert p.locator("#seen").is_visible(), (path.name, p.locator("#message").inner_text())
            ours = _png_pixels(p.locator("#seen").get_attribute("src"))
            difference = np.abs(ours.astype(np.float32) - python.astype(np.float32))
            diffs.append(float(difference.mean() / 255))
            exact += bool(difference.max() == 0)
            with torch.no_grad():
                expected = int(medium(data.normalize(torch.from_numpy(python)[None])).argmax())
            same += int(p.locator("#results .digit").inner_text()) == expected
            timing = p.evaluate("() => window.tinydigitsTimes")
            if kind == "phone":  # decoded at Python's JPEG draft scale by the browser's decoder
                assert timing["decoder"] == "ImageDecoder", path.name
            times[kind].append(timing["total"])
            times["decode"].append(timing["decode"])
            assert f"your photo ({path.name}) in your browser" in p.locator("#message").inner_text()
        # Not a picture: said so, and the page carries on.
        bad = tmp_path / "notes.png"
        bad.write_text("not a picture")
        upload(page, bad)
        assert "not an image" in p.locator("#message").inner_text()
        page.check_stayed_local()
    finally:
        page.context.close()
    mean = float(np.mean(diffs))
    if os.environ.get("TINYDIGITS_SCREENSHOT"):
        _record(photos=len(diffs), photo_mean_abs_diff=round(mean, 6),
                photo_max_abs_diff=round(max(diffs), 6), photo_exact=exact, photo_same_digit=same,
                photo_ms=round(float(np.median(times["scan"] + times["phone"])), 1),
                photo_decode_ms=round(float(np.median(times["decode"])), 1),
                photo_scan_ms=round(float(np.median(times["scan"])), 1),
                photo_phone_ms=round(float(np.median(times["phone"])), 1))
    assert len(diffs) == 50
    assert mean <= 1 / 255, f"mean |JS - Python| {mean:.4f} on 0-1 pixels"
    assert same >= 49, f"the same digit as Python + PyTorch on {same} of 50"
    # Phone photos are decoded at Python's JPEG draft scale by the browser's own decoder (the
    # same pixels as Pillow's); the box average that stands in for it elsewhere matched 1 in 10.
    assert exact >= 45, f"the very same 28x28 as Python on {exact} of 50"


def _turned(photo: bytes, orientation: int) -> bytes:
    """The photo saved again with an EXIF orientation tag (as a phone held sideways saves it)."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    buffer = io.BytesIO()
    Image.open(io.BytesIO(photo)).save(buffer, format="JPEG", quality=90, exif=exif.tobytes())
    return buffer.getvalue()


def _read_photos(page: Page, pictures: list[bytes], folder: Path) -> list[tuple[float, str]]:
    """Each photo's mean |JS - Python| on its 28x28 (0-255) and the decoder the page used."""
    results = []
    for index, photo in enumerate(pictures):
        path = folder / f"photo-{index}.jpg"
        path.write_bytes(photo)
        upload(page, path)
        ours = _png_pixels(page.page.locator("#seen").get_attribute("src")).astype(np.float32)
        python = to_mnist(photo).numpy().astype(np.float32)
        decoder = page.page.evaluate("() => window.tinydigitsTimes.decoder")
        results.append((float(np.abs(ours - python).mean()), decoder))
    return results


def test_phone_photos_turned_by_exif_are_read_upright(browser, static, mnist, tmp_path):
    phone = photos(mnist)[-1][1]
    page = open_page(browser, static)
    try:
        # Turned: decoded at draft scale by the browser and turned upright, exactly as Python.
        turned = _read_photos(page, [_turned(phone, o) for o in (3, 6, 8)], tmp_path)
        assert turned == [(0.0, "ImageDecoder")] * 3
        # Mirrored: decoded whole and box-averaged by the page, close to the draft decode (1.1
        # and 0.01 levels of 255 when measured) but aligned to the other edge when mirrored.
        mirrored = _read_photos(page, [_turned(phone, o) for o in (2, 5)], tmp_path)
        assert [decoder for _, decoder in mirrored] == ["whole"] * 2
        assert all(difference <= 2 for difference, _ in mirrored), mirrored
        page.check_stayed_local()
    finally:
        page.context.close()


def test_without_imagedecoder_a_phone_photo_is_decoded_whole_and_box_averaged(browser, static, mnist,
                                                                              tmp_path):
    page = open_page(browser, static, init_script="delete window.ImageDecoder;")
    try:
        assert page.page.evaluate("() => typeof ImageDecoder") == "undefined"
        results = _read_photos(page, [photo for _, photo in photos(mnist)[-3:]], tmp_path)
        assert [decoder for _, decoder in results] == ["whole"] * 3
        assert all(difference <= 1 for difference, _ in results)
        page.check_stayed_local()
    finally:
        page.context.close()


def test_jpeg_headers_are_read_before_decoding_as_pillow_reads_them(browser, static):
    def jpeg(**options) -> bytes:
        buffer = io.BytesIO()
        Image.new("RGB", (70, 50), "white").save(buffer, format="JPEG", **options)
        return buffer.getvalue()

    exif = Image.Exif()
    exif[0x0112] = 6
    turned = jpeg(exif=exif.tobytes())
    cases = {
        "baseline": jpeg(),
        "progressive": jpeg(progressive=True),
        "EXIF orientation 6": turned,
        "junk between segments": turned.replace(b"\xff\xdb", b"\x00\x13\x37\xff\xdb", 1),
        "cut before the frame header": turned[:40],
        "PNG": _png_bytes(),
    }
    page = open_page(browser, static)
    try:
        for name, payload in cases.items():
            header = page.page.evaluate("(b) => window.tinydigitsPreprocess.jpegHeader(Uint8Array.from(b))",
                                        list(payload))
            try:
                image = Image.open(io.BytesIO(payload))
                expected = {"width": image.width, "height": image.height,
                            "orientation": image.getexif().get(0x0112, 1)} if image.format == "JPEG" else None
            except OSError:  # Pillow cannot read it either
                expected = None
            assert header == expected, name
    finally:
        page.context.close()


def _png_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_a_jpeg_over_40_megapixels_is_refused_with_its_size(browser, static, tmp_path):
    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), "white").save(buffer, format="JPEG")
    jpeg = bytearray(buffer.getvalue())
    frame = jpeg.index(b"\xff\xc0")  # baseline frame header: length, precision, height, width
    jpeg[frame + 5 : frame + 9] = (6000).to_bytes(2, "big") + (8000).to_bytes(2, "big")
    path = tmp_path / "huge.jpg"
    path.write_bytes(bytes(jpeg))
    page = open_page(browser, static)
    try:
        upload(page, path)
        message = page.page.locator("#message").inner_text()
        assert "image too large: 8000x6000, the limit is 40 megapixels" in message
        page.check_stayed_local()
    finally:
        page.context.close()


# ------------------------------------------------------------------ numbers


def _floats(values: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(values, dtype="<f4").tobytes()).decode()


@functools.cache
def touching_pictures() -> list:
    """The first 50 pictures of the frozen test set of touching numbers (2-8 digits)."""
    return number_set("touching", count=50)


def test_the_page_makes_pythons_strips_and_pytorchs_log_probabilities(browser, static):
    """On Python's own ink maps of 50 pictures of touching numbers: the page's strip is
    `ink_strip`'s, and its reader gives PyTorch's log-probabilities on it."""
    reader = shipped_reader()
    page = open_page(browser, static)
    strip_diff, logp_diff = 0.0, 0.0
    try:
        for picture in touching_pictures():
            image = load_image(picture.data)
            factor = max(1, math.ceil(max(image.size) / WORK_SIDE))  # as number_strip
            ink = ink_map(image)
            strip = ink_strip(ink, factor)
            batch, _ = batch_strips([strip.pixels])
            with torch.no_grad():
                expected = reader(batch)[0].numpy()
            ours = page.page.evaluate("""async ([encoded, width, height, factor, weights]) => {
                const R = window.tinydigitsRead;
                const response = window.testReader ? null : await fetch(weights);
                window.testReader ??= window.tinydigitsEngine.load(await response.json());
                const bytes = Uint8Array.from(atob(encoded), (c) => c.charCodeAt(0));
                const strip = R.inkStrip(new Float32Array(bytes.buffer), width, height, factor);
                const { logProbs, columns } = R.readerOutput(window.testReader, strip);
                const origin = [strip.left, strip.top, strip.scale];
                return { pixels: Array.from(strip.pixels), width: strip.width, columns, origin,
                         logProbs: Array.from(logProbs) };
            }""", [_floats(ink), ink.shape[1], ink.shape[0], factor, f"models/{DEFAULT_READER}.json"])
            assert ours["width"] == strip.pixels.shape[-1] and ours["columns"] == expected.shape[1]
            assert ours["origin"] == [strip.left, strip.top, strip.scale]
            pixels = np.array(ours["pixels"], dtype=np.float32).reshape(strip.pixels.shape)
            strip_diff = max(strip_diff, float(np.abs(pixels - strip.pixels.numpy()).max()))
            logp_diff = max(logp_diff, float(np.abs(np.array(ours["logProbs"]).reshape(expected.shape)
                                                    - expected).max()))
        page.check_stayed_local()
    finally:
        page.context.close()
    if os.environ.get("TINYDIGITS_SCREENSHOT"):
        _record(reader_strips=50, strip_max_abs_diff=float(f"{strip_diff:.2e}"),
                reader_max_logp_diff=float(f"{logp_diff:.2e}"))
    assert strip_diff <= 1e-6, f"largest |strip pixel difference| {strip_diff:.2e}"
    assert logp_diff <= LOGP_TOLERANCE, f"largest |log-probability difference| {logp_diff:.2e}"


def test_the_page_weighs_medium_as_python_does_where_a_stroke_crosses_a_box(browser, static):
    """On Python's own ink maps of the 50 touching numbers: the page's reading with Medium as
    the second opinion has Python's digits and probabilities, where half the boxes have a
    stroke crossing their edge (Medium's opinion counts TOUCHING_SHARE as much there)."""
    reader, medium = shipped_reader(), shipped_models()["medium"]
    page = open_page(browser, static)
    compared, crossed, boxes, largest = 0, 0, 0, 0.0
    try:
        for picture in touching_pictures():
            image = load_image(picture.data)
            factor = max(1, math.ceil(max(image.size) / WORK_SIDE))  # as number_strip
            ink = ink_map(image)
            expected = read_number(image, reader, method="sequence", digit_model=medium)
            alone = [box.alone for box in digit_boxes(*read_picture(image, reader))]
            ours = page.page.evaluate("""async ([encoded, width, height, factor, names]) => {
                const E = window.tinydigitsEngine;
                const load = async (name) => E.load(await (await fetch(`models/${name}.json`)).json());
                window.testModels ??= await Promise.all(names.map(load));
                const bytes = Uint8Array.from(atob(encoded), (c) => c.charCodeAt(0));
                const [reader, medium] = window.testModels;
                const reading = window.tinydigitsRead.readInk(new Float32Array(bytes.buffer), width, height,
                                                              factor, reader, medium);
                return { number: reading.number, probabilities: reading.digits.map((d) => d.probability) };
            }""", [_floats(ink), ink.shape[1], ink.shape[0], factor, [DEFAULT_READER, "medium"]])
            if ours["number"] != expected.number:
                continue
            compared += 1
            crossed += alone.count(False)
            boxes += len(alone)
            largest = max(largest, max(abs(a - d.probability)
                                       for a, d in zip(ours["probabilities"], expected.digits, strict=True)))
        page.check_stayed_local()
    finally:
        page.context.close()
    assert compared >= 49, f"the same number as Python on {compared} of 50"
    assert 0.2 * boxes < crossed < boxes, f"{crossed} of {boxes} boxes with a stroke across an edge"
    assert largest <= 1e-4, f"largest |probability difference| {largest:.2e}"


def test_number_pictures_are_read_as_python_reads_them(browser, static, tmp_path):
    reader = shipped_reader()
    pictures = touching_pictures()
    page = open_page(browser, static)
    same, right, times = 0, 0, []
    try:
        p = page.page
        p.get_by_label("A number").check()
        assert not p.locator("#models").is_visible()  # the number reader reads, whatever model is picked
        for index, picture in enumerate(pictures):
            path = tmp_path / f"number-{index}.{picture.format.lower()}"
            path.write_bytes(picture.data)
            upload(page, path)
            # As /api/read reads it (the browser decodes a JPEG close to Pillow, not to the bit).
            expected = read_number(load_image(picture.data), reader, method="sequence").number
            shown = p.locator("#results .digit").inner_text()
            same += shown == expected
            right += shown == picture.number
            times.append(p.evaluate("() => window.tinydigitsTimes.total"))
            assert p.locator("#results .card").count() == 1
        page.check_stayed_local()
    finally:
        page.context.close()
    if os.environ.get("TINYDIGITS_SCREENSHOT"):
        _record(numbers=len(pictures), numbers_same=same, numbers_right=right,
                numbers_ms=round(float(np.median(times)), 1))
    assert same >= 0.98 * len(pictures), f"the same number as Python on {same} of {len(pictures)}"


def shown_reading(page: Page) -> tuple[str, list[dict]]:
    """The number shown, and each digit's box (in the pad's pixels) and probability."""
    number = page.page.locator("#results .digit").inner_text()
    digits = page.page.evaluate("""() => {
        const pad = document.getElementById("pad");
        const boxes = [...document.querySelectorAll("#boxes .box")];
        const rows = [...document.querySelectorAll("#results .number-digits li")];
        const px = (style, side) => Math.round(parseFloat(style) * side / 100);  // app.js writes percentages
        return rows.map((row, i) => {
            const { left, top, width, height } = boxes[i].style;
            return { digit: Number(row.dataset.digit), probability: Number(row.dataset.p),
                     box: { x: px(left, pad.width), y: px(top, pad.height), width: px(width, pad.width),
                            height: px(height, pad.height) } };
        });
    }""")
    return number, digits


def canvas_png(page: Page) -> bytes:
    canvas = page.page.evaluate("() => document.getElementById('pad').toDataURL('image/png')")
    return base64.b64decode(canvas.split(",", 1)[1])


def test_numbers_drawn_on_the_wide_pad_are_read_as_python_reads_them(browser, static):
    rng = np.random.default_rng(5)
    reader = shipped_reader()
    page = open_page(browser, static)
    same, count, times = 0, 20, []
    try:
        p = page.page
        p.get_by_label("A number").check()
        for _ in range(count):
            p.get_by_role("button", name="Clear").click()
            digits = [int(d) for d in rng.integers(0, 10, int(rng.integers(2, 5)))]
            strokes = []
            for slot, digit in enumerate(digits):  # each digit in its own slot of the wide pad
                for stroke in varied(SHAPES[digit], rng):
                    strokes.append([((slot + 0.1 + 0.8 * x) / len(digits), 0.1 + 0.8 * y) for x, y in stroke])
            page.draw(strokes)
            page.idle()
            # The canvas's own pixels, so Python reads exactly what the page read.
            expected = read_number(canvas_png(page), reader, method="sequence").to_dict()
            number, shown = shown_reading(page)
            same += number == expected["number"]
            assert [d["box"] for d in shown] == [d["box"] for d in expected["digits"]]  # to the pixel
            assert [d["probability"] for d in shown] == pytest.approx(
                [d["probability"] for d in expected["digits"]], abs=1e-4)
            times.append(p.evaluate("() => window.tinydigitsTimes.total"))
        page.check_stayed_local()
    finally:
        page.context.close()
    if os.environ.get("TINYDIGITS_SCREENSHOT"):
        _record(drawn_numbers=count, drawn_numbers_same=same,
                drawn_number_ms=round(float(np.median(times)), 1))
    assert same == count, f"the same number as Python on {same} of {count}"


# A 1 and a 7 whose bar starts on the 1's top: one piece of ink (on the wide pad's fractions).
TOUCHING_17: list[Stroke] = [[(0.36, 0.2), (0.355, 0.5), (0.35, 0.8)],
                             [(0.36, 0.22), (0.56, 0.22), (0.5, 0.5), (0.45, 0.8)]]


def test_a_touching_17_and_a_separate_305_are_read_in_the_browser(browser, static):
    page = open_page(browser, static)
    try:
        p = page.page
        p.get_by_label("A number").check()
        page.draw(TOUCHING_17)
        page.idle()
        assert len(digit_groups(ink_map(load_image(canvas_png(page))))) == 1  # they do touch
        assert p.locator("#results .digit").inner_text() == "17"
        assert [b.inner_text() for b in p.locator("#boxes .box").all()] == ["1", "7"]
        p.get_by_role("button", name="Clear").click()
        strokes = [[((slot + 0.15 + 0.7 * x) / 3, 0.1 + 0.8 * y) for x, y in stroke]
                   for slot, digit in enumerate((3, 0, 5)) for stroke in SHAPES[digit]]
        page.draw(strokes)
        page.idle()
        assert len(digit_groups(ink_map(load_image(canvas_png(page))))) == 3  # apart
        number, shown = shown_reading(page)
        assert number == "305" and all(d["probability"] > 0.5 for d in shown)
        assert "ms in your browser" in p.locator("#results .time").inner_text()
        page.check_stayed_local()
    finally:
        page.context.close()


# ------------------------------------------------------------------ offline


def test_the_site_works_offline_after_the_first_visit(browser, static):
    page = open_page(browser, static)
    try:
        p = page.page
        p.wait_for_selector("body[data-offline=ready]")
        page.context.set_offline(True)
        p.reload()
        p.wait_for_selector("body[data-models-ready=true]")
        page.draw(DIGITS[7])
        page.idle()
        page.check_reads(7)
        assert p.evaluate("() => navigator.serviceWorker.controller !== null")  # served by the worker
        assert page.errors == []
    finally:
        page.context.set_offline(False)
        page.context.close()


# ---------------------------------------------------------------- export errors


def export(*args: str):
    return CliRunner().invoke(main, ["export", "--format", "web", *args])


def test_the_export_needs_no_network_and_no_npm(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "no-programs"))  # no npm, nothing to fetch
    result = export("--model", "small", "-o", str(tmp_path / "site"))
    assert result.exit_code == 0, result.output
    assert (tmp_path / "site" / "models" / "small.json").is_file()


@pytest.mark.parametrize("where", ["/proc/tinydigits-site", "a-file"])
def test_a_folder_that_cannot_be_written_is_one_line(tmp_path, where):
    target = Path(where) if where.startswith("/") else tmp_path / where
    if where == "a-file":
        target.write_text("mine")
    line = one_line_error(export("--model", "small", "-o", str(target)))
    assert str(target) in line
    if where == "a-file":
        assert target.read_text() == "mine"


def test_a_folder_of_someone_elses_files_is_refused_and_left_alone(tmp_path):
    folder = tmp_path / "mine"
    (folder / "models").mkdir(parents=True)
    (folder / "notes.txt").write_text("do not touch")
    line = one_line_error(export("--model", "small", "-o", str(folder)))
    assert "holds models" in line or "holds notes.txt" in line
    assert "nothing was written" in line
    assert sorted(p.name for p in folder.rglob("*")) == ["models", "notes.txt"]


def test_exporting_again_replaces_only_the_previous_export(tmp_path):
    folder = tmp_path / "site"
    assert export("-o", str(folder)).exit_code == 0
    assert export("--model", "small", "-o", str(folder)).exit_code == 0  # a previous export: replaced
    models = sorted(p.name for p in (folder / "models").iterdir())
    assert models == sorted([f"{DEFAULT_READER}.json", "small.json"])
    assert [m["name"] for m in json.loads((folder / "models.json").read_text())["models"]] == ["small"]
    (folder / "extra.html").write_text("a user's page")  # now it holds something else
    line = one_line_error(export("--model", "small", "-o", str(folder)))
    assert "holds extra.html" in line and (folder / "extra.html").read_text() == "a user's page"


def test_a_manifest_naming_files_elsewhere_is_refused(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    folder = tmp_path / "site"
    folder.mkdir()
    hostile = [{"../victim.txt": 1}, {str(victim): 1}, {"index.html": 1, "static/../../victim.txt": 1}, [1]]
    for files in hostile:
        (folder / MANIFEST).write_text(json.dumps({"files": files}))
        line = one_line_error(export("--model", "small", "-o", str(folder)))
        assert "not a tinydigits site manifest" in line and victim.read_text() == "keep me"


def test_an_export_killed_half_way_can_be_run_again(tmp_path):
    from tinydigits.deploy.static_site import previous_files

    folder = tmp_path / "site"
    (folder / "static").mkdir(parents=True)
    # What a kill leaves: the manifest listing what was being written, some of it, a temporary file.
    (folder / MANIFEST).write_text(json.dumps({"files": {"index.html": 0, "static/tinydigits.js": 0}}))
    (folder / "index.html").write_text("<!doctype html>")
    (folder / "static" / ".tinydigits.js.k2j3.tmp").write_text("half")
    assert previous_files(folder) == {"index.html", "static/tinydigits.js"}
    assert export("--model", "small", "-o", str(folder)).exit_code == 0
    assert not list(folder.rglob("*.tmp")) and (folder / "static" / "tinydigits.js").is_file()


def test_int8_is_refused_for_the_site(tmp_path):
    result = export("--int8", "-o", str(tmp_path / "site"))
    assert result.exit_code == 2 and "Error: --int8 is not available for --format web" in result.output
    assert not (tmp_path / "site").exists()


# ------------------------------------------------- the served page, switched


def test_the_served_page_switches_between_server_and_browser(browser):
    from tinydigits.deploy.serve import BackgroundServer, create_app

    server = BackgroundServer(create_app(shipped_models(), in_browser=True))
    page = Page(browser, server, viewport={"width": 1280, "height": 820}, reduced_motion="reduce")
    try:
        p = page.page
        assert p.locator("#inference").is_visible() and p.get_by_label("On the server").is_checked()
        page.draw(DIGITS[7])
        page.idle()
        page.check_reads(7)
        sent = len([u for u in page.requests if "/api/" in u])
        p.get_by_label("In your browser").check()
        p.wait_for_selector("body[data-models-ready=true]")
        page.where = "browser"
        p.get_by_role("button", name="Clear").click()
        page.draw(DIGITS[1])
        page.idle()
        page.check_reads(1)
        assert p.get_by_text("Upload a photo", exact=True).is_visible()  # photos too, in the browser
        # Numbers too: without the reader's weights in models.json, with the segmenter and the
        # digit model chosen (read.js's fallback).
        p.get_by_label("A number").check()
        assert p.locator("#models").is_visible()
        for offset, digit in ((0.0, 1), (0.5, 7)):
            page.draw([[(offset + x / 2, y) for x, y in stroke] for stroke in DIGITS[digit]])
        page.idle()
        assert p.locator("#results .digit").inner_text() == "17" and p.locator("#boxes .box").count() == 2
        assert len([u for u in page.requests if "/api/" in u]) == sent  # nothing more went to the API
        p.get_by_label("One digit").check()
        page.draw(DIGITS[1])
        page.idle()
        p.get_by_label("On the server").check()
        page.where = "server"
        page.idle()
        page.check_reads(1)
        assert page.blocked == [] and page.errors == []
    finally:
        page.context.close()
        server.close()
