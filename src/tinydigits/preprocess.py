"""Turning a real picture of a handwritten digit into an MNIST-style 28x28 input.

MNIST was made by taking a scanned digit, removing the background, scaling it to fit
a 20x20 box (keeping its aspect ratio, antialiased) and placing it in a 28x28 field
centred on its centre of mass, white ink on black. :func:`to_mnist` does the same to
a photo or scan: dark ink on light (tinted, unevenly lit) paper or light ink on dark,
of any size and position. :func:`load_image` reads a path, bytes or a file object
with the checks a server-facing decoder needs (size limit before decoding, truncated
or non-image data, EXIF rotation). Both raise :class:`PreprocessError` with a
one-line message that does not name the file, so callers can prefix whatever name
they know.

    >>> from tinydigits.preprocess import load_image, to_mnist
    >>> digit = to_mnist(load_image("photo.jpg"))     # uint8 [28, 28], white on black
"""

from __future__ import annotations

import io
import math
import os
import warnings
from pathlib import Path
from typing import IO

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError
from scipy import ndimage

from .errors import TinyDigitsError, first_line

__all__ = ["FORMATS", "MAX_PIXELS", "WORK_SIDE", "PreprocessError", "fit_to_mnist", "ink_map", "load_image",
           "remove_specks", "to_mnist"]

Source = str | os.PathLike | bytes | bytearray | memoryview | IO[bytes]

# Refused before any pixel is decoded: 40 MP is more than any phone camera makes, and
# a larger image costs hundreds of MB once decoded (decompression bombs claim far more).
MAX_PIXELS = 40_000_000
# Only these decoders are ever used; others (EPS runs Ghostscript, for one) are refused.
# The JPEG decoder also opens MPO, which many phones write.
FORMATS = ("PNG", "JPEG", "BMP", "WEBP", "GIF", "TIFF", "PPM")

WORK_SIDE = 512  # larger pictures are box-reduced to this first: plenty for a 20x20 result
BOX = 20  # MNIST: the digit fits a 20x20 box ...
SIZE = 28  # ... inside a 28x28 field ...
CENTRE = 14.0  # ... with its centre of mass here (measured on MNIST: 13.99, 14.01)
MIN_STROKE = 1.2  # output stroke widths below this (MNIST's median is 2.0) get thickened
TARGET_STROKE = 1.8


class PreprocessError(TinyDigitsError):
    """An input that cannot be turned into a digit image; the message is one line."""


def _open_source(source: Source) -> tuple[IO[bytes], bool]:
    """A seekable binary stream for ``source`` and whether we must close it."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        return io.BytesIO(bytes(source)), True
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if path.is_dir():
            raise PreprocessError("is a directory, not an image file")
        try:
            return open(path, "rb"), True  # closed by load_image
        except FileNotFoundError:
            raise PreprocessError("no such file") from None
        except OSError as err:
            raise PreprocessError(f"cannot read the file ({err.strerror or first_line(err)})") from None
    if not hasattr(source, "read"):
        raise TypeError(f"load_image expects a path, bytes or a binary file, got {type(source).__name__}")
    try:
        seekable = source.seekable()
    except (AttributeError, OSError, ValueError):
        seekable = False
    if not seekable:  # PIL needs to seek; pipes and sockets are read into memory
        return io.BytesIO(source.read()), True
    return source, False


def load_image(source: Source, *, max_pixels: int = MAX_PIXELS, reduce_to: int | None = None) -> Image.Image:
    """Decode an image from a path, bytes or a binary file object, upright per EXIF.

    The dimensions are checked against ``max_pixels`` from the header, before any pixel
    is decoded; empty, truncated, corrupt and non-image data raise :class:`PreprocessError`.
    Multi-frame images (GIF, TIFF) give their first frame. The mode is left as stored
    (``to_mnist`` handles 16-bit, palette and transparent images). With ``reduce_to``, a
    JPEG is decoded at 1/2, 1/4 or 1/8 scale (JPEG's draft mode: almost free, where a
    full decode of a phone photo takes tens of ms) as long as both sides stay at least
    ``reduce_to`` pixels; other formats are decoded at full size.
    """
    stream, close = _open_source(source)
    try:
        start = stream.tell()
        stream.seek(0, io.SEEK_END)
        if stream.tell() <= start:
            raise PreprocessError("empty file")
        stream.seek(start)
        # PIL only warns between its own limit and twice it; a warning must not slip through.
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            try:
                image = Image.open(stream, formats=FORMATS)
            except (Image.DecompressionBombError, Image.DecompressionBombWarning):
                raise PreprocessError(
                    f"image too large (refused before decoding; the limit is {max_pixels / 1e6:g} megapixels)"
                ) from None
            except UnidentifiedImageError:
                raise PreprocessError(
                    "not an image, or not a supported format (" + ", ".join(FORMATS) + ")"
                ) from None
            except Exception as err:  # decoders raise many types for garbage headers
                raise PreprocessError(f"not a readable image ({first_line(err)})") from None
            width, height = image.size
            if width * height > max_pixels:
                raise PreprocessError(
                    f"image too large: {width}x{height} is {width * height / 1e6:.1f} megapixels, "
                    f"the limit is {max_pixels / 1e6:g} (refused before decoding)"
                )
            if width == 0 or height == 0:
                raise PreprocessError(f"image has no pixels ({width}x{height})")
            if reduce_to is not None and image.format in ("JPEG", "MPO"):
                image.draft(image.mode, (reduce_to, reduce_to))
            try:
                image.load()
            except Exception as err:  # truncated JPEG: OSError; broken PNG: SyntaxError, zlib...
                raise PreprocessError(f"corrupt or truncated image ({first_line(err)})") from None
        try:
            upright = ImageOps.exif_transpose(image)
        except Exception:  # a broken EXIF block is no reason to refuse the pixels
            upright = image
        return upright if upright is not None else image
    finally:
        if close:
            stream.close()


# ------------------------------------------------------------------- pixels


def _to_gray(image: Image.Image) -> np.ndarray:
    """Luminance in [0, 1] as float32 [H, W], reduced to at most WORK_SIDE, transparency resolved."""
    mode = image.mode
    if mode.startswith("I;16") or mode in ("I", "F"):
        values = np.asarray(image, dtype=np.float32)
        # 16-bit PNGs open as I;16 (or I in older Pillow); scale by the full 16-bit range, not
        # by clipping at 255 as convert("L") would.
        if mode.startswith("I;16") or values.max(initial=0) > 255:
            scale = 65535.0
        elif mode == "F" and values.max(initial=0) <= 1.0:
            scale = 1.0
        else:
            scale = 255.0
        image = Image.fromarray(np.clip(values / scale, 0, 1).astype(np.float32), mode="F")
    elif mode in ("P", "PA", "La", "RGBa") or (mode == "RGBA"):
        image = image.convert("RGBA")  # palette transparency becomes a real alpha channel
    elif mode != "LA" and mode not in ("L", "RGB"):
        image = image.convert("RGB")  # 1, CMYK, YCbCr, LAB, HSV, RGBX, ...
    factor = math.ceil(max(image.size) / WORK_SIDE)
    if factor > 1:
        image = image.reduce(factor)  # area average: keeps thin strokes as faint lines
    if image.mode == "F":
        return np.asarray(image, dtype=np.float32).copy()
    # float64 elementwise, rounded to float32 once at the end: the same on every CPU (a BLAS
    # product's last bit depends on its kernel), and what the page's JavaScript computes in doubles.
    pixels = np.asarray(image, dtype=np.float64) / 255.0
    if image.mode == "L":
        return pixels.astype(np.float32)
    color, alpha = (pixels, None) if image.mode == "RGB" else (pixels[..., :-1], pixels[..., -1])
    if color.shape[-1] == 1:
        gray = color[..., 0]
    else:
        gray = color[..., 0] * 0.299 + color[..., 1] * 0.587 + color[..., 2] * 0.114
    if alpha is None or alpha.min() >= 1.0:
        return gray.astype(np.float32)
    # Transparent background: composite over white, as viewers show it, unless the visible
    # content is nearly all light (white strokes on transparent), which needs a black backdrop.
    opaque = alpha > 0.5
    light = opaque.any() and float(np.quantile(gray[opaque], 0.25)) > 0.5
    backdrop = 0.0 if light else 1.0
    return (gray * alpha + backdrop * (1.0 - alpha)).astype(np.float32)


# The quadratic surface's terms, as powers (of x, of y): c0 + c1 x + c2 y + c3 x^2 + c4 xy + c5 y^2.
_TERMS = ((0, 0), (1, 0), (0, 1), (2, 0), (1, 1), (0, 2))


def _surface_at(coef: tuple[float, ...], xn: np.ndarray, yn: np.ndarray) -> np.ndarray:
    """The quadratic surface at points, elementwise in a fixed order (float64)."""
    return (coef[0] + coef[1] * xn + coef[2] * yn
            + coef[3] * (xn * xn) + coef[4] * (xn * yn) + coef[5] * (yn * yn))


def _solve(matrix: list[list[float]], rhs: list[float]) -> tuple[float, ...]:
    """``matrix @ x = rhs`` for a small system by Gaussian elimination with partial pivoting in
    Python floats: a fixed order of IEEE operations, so the same answer on every CPU (LAPACK's
    blocked kernels differ between them). A (near-)singular pivot leaves its unknown at 0,
    which a one- or two-pixel-thin picture needs."""
    n = len(rhs)
    rows = [[*row, value] for row, value in zip(matrix, rhs, strict=True)]
    scale = max(abs(v) for row in matrix for v in row) or 1.0
    pivots: list[int | None] = []
    r = 0
    for c in range(n):
        best = max(range(r, n), key=lambda i: abs(rows[i][c]), default=None)
        if best is None or abs(rows[best][c]) <= 1e-9 * scale:
            pivots.append(None)
            continue
        rows[r], rows[best] = rows[best], rows[r]
        for i in range(r + 1, n):
            factor = rows[i][c] / rows[r][c]
            if factor:
                rows[i] = [a - factor * b for a, b in zip(rows[i], rows[r], strict=True)]
        pivots.append(r)
        r += 1
    solution = [0.0] * n
    for c in reversed(range(n)):
        row = pivots[c]
        if row is not None:
            known = 0.0  # left to right, not sum(): Python 3.12's sum() compensates, 3.11's does not
            for k in range(c + 1, n):
                known += rows[row][k] * solution[k]
            solution[c] = (rows[row][n] - known) / rows[row][c]
    return tuple(solution)


def _fit_background(gray: np.ndarray) -> tuple[np.ndarray, float, float]:
    """A smooth (quadratic) paper surface fitted robustly, the paper's noise level and median.

    Computed in float64 with elementwise operations, NumPy's fixed-order sums and a solver of
    our own, so the result does not depend on which BLAS/LAPACK kernel the CPU picks: the
    surface decides which pixels count as ink, and a last-bit difference there once moved an
    output pixel by 1/255 between two machines."""
    h, w = gray.shape
    step = max(1, int(math.sqrt(h * w / 8_000)))  # fit on about 8k pixels at most
    ys, xs = np.mgrid[0:h:step, 0:w:step]
    values = gray[::step, ::step].ravel().astype(np.float64)
    # Coordinates scaled to [-1, 1] keep the normal equations well conditioned.
    yn, xn = (ys.ravel() / max(h - 1, 1)) * 2 - 1, (xs.ravel() / max(w - 1, 1)) * 2 - 1
    coef: tuple[float, ...] = (float(np.median(values)), 0.0, 0.0, 0.0, 0.0, 0.0)
    inliers = np.ones(len(values), dtype=bool)
    sigma = 0.0
    fitted_on = None  # the pixels the current coef was fitted on
    for _ in range(6):
        residual = values - _surface_at(coef, xn, yn)
        sigma = 1.4826 * float(np.median(np.abs(residual[inliers])))
        # Ink, in either polarity, is the outlier; the paper is what is left.
        inliers = np.abs(residual) <= max(2.5 * sigma, 0.01)
        if inliers.sum() < 12:
            break
        if fitted_on is not None and np.array_equal(inliers, fitted_on):
            break  # a fixed point: every further round would refit the same pixels to the same surface
        fitted_on = inliers
        # Normal equations (6x6, far cheaper than an SVD): each entry a sum of x^a y^b over the inliers.
        x, y, v = xn[inliers], yn[inliers], values[inliers]
        powers_x, powers_y = [np.ones_like(x), x, x * x, x * x * x, x * x * x * x], \
            [np.ones_like(y), y, y * y, y * y * y, y * y * y * y]
        moment = {(a, b): float((powers_x[a] * powers_y[b]).sum())
                  for a in range(5) for b in range(5 - a)}
        gram = [[moment[(a + c, b + d)] + (1e-6 if (a, b) == (c, d) else 0.0) for c, d in _TERMS]
                for a, b in _TERMS]
        rhs = [float((powers_x[a] * powers_y[b] * v).sum()) for a, b in _TERMS]
        coef = _solve(gram, rhs)
    # The surface, by broadcasting a column of y terms against a row of x terms.
    yy = (np.arange(h, dtype=np.float64) / max(h - 1, 1) * 2 - 1)[:, None]
    xx = (np.arange(w, dtype=np.float64) / max(w - 1, 1) * 2 - 1)[None, :]
    surface = (coef[0] + coef[2] * yy + coef[5] * yy * yy) + xx * (coef[1] + coef[3] * xx + coef[4] * yy)
    paper = float(np.median(_surface_at(coef, xn[inliers], yn[inliers])))
    return np.clip(surface, 0.0, 1.0).astype(np.float32), sigma, paper


def _ink_map(gray: np.ndarray) -> np.ndarray:
    """Ink strength in [0, 1] (1 = solid stroke, 0 = paper), polarity detected."""
    background, sigma, paper = _fit_background(gray)
    residual = gray - background
    margin = max(3 * sigma, 0.02)
    dark = float(np.clip(-residual - margin, 0, None).sum())
    light = float(np.clip(residual - margin, 0, None).sum())
    if dark > light:  # dark ink on light paper: contrast relative to the local paper brightness
        ink = -residual / np.maximum(background, 0.05)
        noise = sigma / max(paper, 0.05)
    else:  # light ink on dark (MNIST itself): relative to the headroom above the paper
        ink = residual / np.maximum(1.0 - background, 0.05)
        noise = sigma / max(1.0 - paper, 0.05)
    ink = np.clip(ink, 0.0, None)
    low = max(3 * noise, 1.5 / 255)
    candidates = ink[ink > low]
    if candidates.size == 0:
        raise PreprocessError("no ink found: the image looks blank")
    top = float(np.quantile(candidates, 0.995))
    if top < max(6 * noise, 0.1):
        raise PreprocessError("no ink found: the image looks blank (no marks stand out from the paper)")
    strong = candidates[candidates > 0.5 * top]
    high = max(float(np.median(strong)), low + 1e-3)
    return np.clip((ink - low) / (high - low), 0.0, 1.0).astype(np.float32)


def remove_specks(ink: np.ndarray) -> np.ndarray:
    """Remove specks and marks far smaller than the digit; keep all parts of the digit."""
    h, w = ink.shape
    f = max(1, math.ceil(max(h, w) / 100))  # label on a coarse grid: fast, and thin strokes survive
    padded = np.pad(ink, ((0, -h % f), (0, -w % f)))
    blocks = padded.reshape(padded.shape[0] // f, f, padded.shape[1] // f, f)
    labels, count = ndimage.label(blocks.max(axis=(1, 3)) > 0.35, structure=np.ones((3, 3)))  # 8-connected
    if count == 0:
        raise PreprocessError("no ink found: the image looks blank")
    mass = np.bincount(labels.ravel(), weights=blocks.sum(axis=(1, 3)).ravel())
    mass[0] = 0  # label 0 is the background
    keep = ndimage.binary_dilation(mass[labels] >= 0.03 * mass.max(), np.ones((3, 3)))  # and the halo
    keep = np.repeat(np.repeat(keep, f, axis=0), f, axis=1)[:h, :w]
    return np.where(keep, ink, np.float32(0))


def _thicken(ink: np.ndarray, scale: float) -> np.ndarray:
    """Dilate hair-thin pen strokes so that, once scaled, they are about as wide as MNIST's."""
    solid = ink > 0.5
    area = float(ink.sum())
    edges = int((solid[1:] != solid[:-1]).sum() + (solid[:, 1:] != solid[:, :-1]).sum())
    if edges == 0:
        return ink
    width = 2 * area / edges  # a stroke of width w and length L has area wL and perimeter ~2L
    # Only pictures much larger than 28 px: at MNIST's own scale, thin strokes are the writer's.
    if width * scale >= MIN_STROKE or scale > 0.5:
        return ink
    radius = max(1, round((TARGET_STROKE / scale - width) / 2))
    thick = F.max_pool2d(torch.from_numpy(ink)[None, None], 2 * radius + 1, stride=1, padding=radius)
    return thick[0, 0].numpy()


def to_mnist(image: Image.Image | Source) -> torch.Tensor:
    """An MNIST-style uint8 [28, 28] image (white digit on black) from a picture of one digit.

    ``image`` is a PIL image or anything :func:`load_image` reads. Steps, as MNIST was
    made: grayscale (alpha resolved, 16-bit scaled), fit and remove the paper background,
    detect the polarity and make the ink white, drop specks, crop to the ink, scale to fit
    a 20x20 box keeping the aspect ratio (antialiased), and place it in 28x28 with its
    centre of mass at the centre. Raises :class:`PreprocessError` when there is no ink.
    """
    if not isinstance(image, Image.Image):
        image = load_image(image, reduce_to=WORK_SIDE)
    return fit_to_mnist(remove_specks(ink_map(image)))


def ink_map(image: Image.Image) -> np.ndarray:
    """Ink strength, float32 [H, W] in [0, 1] (1 = solid stroke, 0 = paper), of a picture reduced
    to at most :data:`WORK_SIDE` pixels a side (by ``ceil(max(size) / WORK_SIDE)``): grayscale,
    the paper's lighting fitted and removed, polarity detected. Raises :class:`PreprocessError`
    when no ink stands out."""
    return _ink_map(_to_gray(image))


def fit_to_mnist(ink: np.ndarray) -> torch.Tensor:
    """MNIST's framing of an ink map of one digit: cropped to the ink, scaled into a 20x20 box
    keeping the aspect ratio (antialiased; hair-thin strokes thickened first), and placed in
    28x28 with its centre of mass at the centre; uint8, white on black."""
    rows, cols = np.flatnonzero(ink.any(axis=1)), np.flatnonzero(ink.any(axis=0))
    if rows.size == 0:
        raise PreprocessError("no ink found: the image looks blank")
    ink = ink[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    ink = _thicken(np.pad(ink, 1), BOX / max(ink.shape))
    rows, cols = np.flatnonzero(ink.any(axis=1)), np.flatnonzero(ink.any(axis=0))
    ink = ink[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    h, w = ink.shape
    scale = BOX / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    if size == (w, h):
        small = ink
    else:  # Lanczos is antialiased when shrinking; it rings a little, hence the clip
        small = np.asarray(Image.fromarray(ink, mode="F").resize(size, Image.Resampling.LANCZOS))
        small = np.clip(small, 0.0, 1.0)
    total = float(small.sum())
    if total <= 0:
        raise PreprocessError("no ink found: the image looks blank")
    sh, sw = small.shape
    cy = float((small.sum(axis=1) * np.arange(sh)).sum()) / total
    cx = float((small.sum(axis=0) * np.arange(sw)).sum()) / total
    # Whole-pixel shift (as MNIST), clamped so a lopsided digit is never cut off.
    top = min(max(round(CENTRE - cy), 0), SIZE - sh)
    left = min(max(round(CENTRE - cx), 0), SIZE - sw)
    canvas = np.zeros((SIZE, SIZE), dtype=np.float32)
    canvas[top : top + sh, left : left + sw] = small
    return torch.from_numpy(np.round(canvas * 255).astype(np.uint8))
