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

import numpy as np
import torch
from PIL import Image, ImageDraw

import tinydigits
from tinydigits.runtime import set_threads

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


@functools.cache
def shipped_models() -> dict[str, tinydigits.models.TinyDigitNet]:
    # $TINYDIGITS_THREADS, as the command line honours it: on a busy machine extra torch
    # threads spin and make every preprocessing and inference step here many times slower.
    set_threads()
    return {name: tinydigits.load_model(name, pretrained=True) for name in tinydigits.MODELS}


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
