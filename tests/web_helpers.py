"""Shared by the web demo's tests: the shipped models (loaded once per test process) and
digits as strokes, which the API tests render with PIL and the browser tests draw with the
mouse or a finger."""

from __future__ import annotations

import functools
import io
import math

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
