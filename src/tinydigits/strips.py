"""Whole numbers as pictures and as the strips the number reader reads.

A *strip* is a number's ink, cleaned of specks, ruled lines and frames by the segmenter's
first steps (:func:`tinydigits.segment.digit_groups`), cropped and scaled so that its ink is
:data:`INK_HEIGHT` pixels tall inside a :data:`STRIP_HEIGHT`-pixel row, whatever its width.

The pictures are made here too: MNIST digits written left to right on scan-like paper (tint,
lighting, noise, blur, JPEG) or as the web page's pad draws them (thick, solid strokes), with
per-digit scale, slant, stroke thickness and vertical jitter on a sloped baseline, the gap
between neighbours anywhere from clearly apart to overlapping. The reader trains on such
pictures made on the fly from MNIST training digits; its validation and test sets are seeded
sets of them (:func:`number_set`), the test sets made of MNIST test digits only.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageFilter
from scipy import ndimage

from . import data
from .augment import random_affine
from .errors import ConfigError
from .preprocess import WORK_SIDE, PreprocessError, ink_map, load_image
from .segment import INK, MAX_DIGITS, digit_groups

__all__ = ["INK_HEIGHT", "STRIP_HEIGHT", "NumberPicture", "Strip", "ink_groups", "number_picture",
           "number_set", "number_strip"]

STRIP_HEIGHT = 32  # the reader's input height: any width
INK_HEIGHT = 24  # the number's ink box is scaled to this height, centred in the strip
PAD = 4  # blank columns each side of the ink
COLUMN = 2  # strip pixels per output column of the reader
MAX_ASPECT = 1.6 * MAX_DIGITS  # ink wider than this many heights is not a number of <= MAX_DIGITS digits

# Where the gap between neighbours is drawn from, in digit heights (negative: their boxes overlap).
APART = (0.15, 0.5)
TOUCHING = (-0.25, 0.02)
SET_KINDS = ("separate", "touching")


@dataclass(frozen=True)
class NumberPicture:
    """One picture of a number: its encoded bytes, the number, the format, and how much the
    neighbours' ink boxes overlap at most (in digit heights; negative: the smallest gap)."""

    data: bytes
    number: str
    format: str
    overlap: float = 0.0
    ink_groups: int = 0  # 8-connected groups of ink in the clean drawing

    @property
    def touching(self) -> bool:
        """Decided from the ink, not the gaps drawn: fewer separate marks than digits."""
        return self.ink_groups < len(self.number)


@dataclass(frozen=True)
class Strip:
    """A number's strip and where it came from: strip column x shows ink column
    (x - PAD) / scale of ``ink``, whose corner is (left, top) in the ink map, which is the
    picture reduced by ``factor``."""

    pixels: torch.Tensor  # float32 [1, STRIP_HEIGHT, width], normalized as MNIST is
    ink: np.ndarray  # the cleaned ink map, float32 [h, w] in [0, 1]
    left: int
    top: int
    scale: float  # strip pixels per ink-map pixel
    factor: int  # picture pixels per ink-map pixel (large pictures are reduced first)


def _crop(digit: np.ndarray) -> np.ndarray:
    rows, cols = np.flatnonzero(digit.any(axis=1)), np.flatnonzero(digit.any(axis=0))
    return digit[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]


def ink_groups(alpha: np.ndarray) -> int:
    """The 8-connected groups of ink in a drawing (ink strength in [0, 1])."""
    return int(ndimage.label(alpha > INK, structure=np.ones((3, 3)))[1])


def _styled(digit: np.ndarray, height: float, rng: np.random.Generator, style_jitter: bool) -> np.ndarray:
    """One MNIST digit (uint8 [28, 28]) scaled to ``height`` for its 20-pixel box, slanted and
    thickened or thinned, as ink strength in [0, 1]."""
    ink = Image.fromarray(_crop(digit))
    scale = height * (rng.uniform(0.85, 1.15) if style_jitter else rng.uniform(0.9, 1.1)) / 20
    size = (max(1, round(ink.width * scale)), max(1, round(ink.height * scale)))
    big = ink.resize(size, Image.Resampling.BICUBIC)
    if style_jitter:
        shear = math.tan(math.radians(rng.uniform(-12, 12)))
        extra = math.ceil(abs(shear) * big.height)
        big = big.transform((big.width + extra, big.height), Image.Transform.AFFINE,
                            (1, shear, -extra if shear > 0 else 0, 0, 1, 0), Image.Resampling.BILINEAR)
    alpha = np.clip((np.asarray(big, dtype=np.float32) / 255 - 0.15) / 0.5, 0, 1)
    if style_jitter:
        radius = rng.uniform(-0.6, 1.0) * height / 40  # pixels of stroke added (or taken) per side
        if abs(radius) >= 0.5:
            size = 2 * round(abs(radius)) + 1
            alpha = (ndimage.grey_dilation if radius > 0 else ndimage.grey_erosion)(alpha, size=(size, size))
    return alpha


def number_picture(digits: list[np.ndarray], rng: np.random.Generator,
                   gaps: tuple[float, float] = APART, heights: tuple[int, int] = (50, 111),
                   style_jitter: bool = True, pad_strokes: float = 0.0) -> tuple[Image.Image, float, int]:
    """A picture of MNIST digits (uint8 [28, 28] each, white on black) written in a row, the
    largest overlap of neighbouring ink boxes (in heights), and the number of ink groups.
    ``pad_strokes``: the chance of drawing it as the web page's pad does instead of on paper."""
    height = int(rng.integers(*heights))
    slope = math.tan(math.radians(rng.uniform(-4, 4)))
    placed, x, overlap = [], int(0.6 * height), -math.inf
    for index, digit in enumerate(digits):
        alpha = _styled(digit, height, rng, style_jitter)
        placed.append((alpha, x))
        gap = rng.uniform(*gaps)
        if index < len(digits) - 1:
            overlap = max(overlap, -gap)
        x += alpha.shape[1] + round(gap * height)
        x = max(x, placed[-1][1] + 2)  # never write a digit left of the one before
    width = max(x, max(left + a.shape[1] for a, left in placed)) + int(0.6 * height)
    canvas_height = int(2.2 * height + abs(slope) * width)
    alpha = np.zeros((canvas_height, width), dtype=np.float32)
    base = 0.5 * height + (abs(slope) * width if slope < 0 else 0)
    for big, left in placed:
        top = int(base + slope * left + rng.uniform(-0.06, 0.06) * height)
        top = min(max(top, 0), canvas_height - big.shape[0])
        region = alpha[top : top + big.shape[0], left : left + big.shape[1]]
        np.maximum(region, big, out=region)
    groups = ink_groups(alpha)
    if len(digits) == 1:
        overlap = 0.0
    if rng.random() < pad_strokes:
        solid = np.clip(alpha * 1.6, 0, 1)  # the pad's round brush: dark, solid strokes on white
        pixels = (255 * (1 - solid)).astype(np.uint8)
        return Image.fromarray(pixels, mode="L").convert("RGB"), float(overlap), groups

    paper = np.array([rng.uniform(200, 255) for _ in range(3)], dtype=np.float32)
    if rng.random() < 0.3:  # tinted notepaper
        paper[int(rng.integers(0, 3))] -= rng.uniform(20, 60)
    ink_colour = np.array([rng.uniform(0, 70) for _ in range(3)], dtype=np.float32)
    if rng.random() < 0.4:  # a blue ballpoint
        ink_colour[2] = rng.uniform(90, 160)
    strength = alpha[..., None] * rng.uniform(0.8, 1.0)
    pixels = paper * (1 - strength) + ink_colour * strength
    ramp = np.linspace(0, 1, width, dtype=np.float32)[None, :] * math.cos(rng.uniform(0, 2 * math.pi))
    pixels = pixels * (1.0 - rng.uniform(0.0, 0.3) * (ramp[..., None] + 1) / 2)
    pixels += rng.normal(0, rng.uniform(0, 6), size=(*pixels.shape[:2], 1)).astype(np.float32)
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), mode="RGB")
    image = image.filter(ImageFilter.GaussianBlur(rng.uniform(0, 1.2) * height / 80))
    image = image.rotate(rng.uniform(-2, 2), resample=Image.Resampling.BICUBIC, expand=True,
                         fillcolor=tuple(int(v) for v in paper))
    return image, float(overlap), groups


def _file_format(rng: np.random.Generator) -> tuple[str, dict[str, int]]:
    """JPEG (quality 75-95) or PNG, half and half, and the options to save it with."""
    fmt = "JPEG" if rng.random() < 0.5 else "PNG"
    # PNG's pixels are the same at any compression level; level 1 saves a strip 4x as fast as
    # Pillow's default 6, for about 12% more bytes.
    return fmt, ({"quality": int(rng.integers(75, 96))} if fmt == "JPEG" else {"compress_level": 1})


def _saved(image: Image.Image, fmt: str, options: dict[str, int]) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def encode(image: Image.Image, rng: np.random.Generator) -> tuple[bytes, str]:
    """The picture saved as JPEG (quality 75-95) or PNG, half and half."""
    fmt, options = _file_format(rng)
    return _saved(image, fmt, options), fmt


# The frozen sets: seeds and sizes fixed here, so a figure names its set by kind alone.
SET_SEEDS = {"test": 2026_11_30, "val": 2026_11_31}
SET_SIZE = 1000
SET_LENGTHS = (2, 8)  # digits per number, both included


def number_set(kind: str, split: str = "test", count: int = SET_SIZE, mnist: data.MNIST | None = None,
               data_dir: str | None = None) -> list[NumberPicture]:
    """The seeded set of ``count`` pictures of 2-8 digit numbers of a ``kind`` (``separate``:
    gaps of 15-50% of the digits' height; ``touching``: fewer ink groups than digits, drawn
    again until so), of MNIST test digits (``split="test"``) or of the 5,000 validation digits
    held out of training (``split="val"``). The first ``n`` pictures of a larger set are the
    set of ``n``."""
    if kind not in SET_KINDS or split not in SET_SEEDS:
        raise ConfigError(f"unknown number set {kind!r}/{split!r}; kinds: {', '.join(SET_KINDS)}, "
                          f"splits: {', '.join(SET_SEEDS)}")
    mnist = mnist if mnist is not None else data.load_mnist(data_dir)
    if split == "test":
        images, labels = mnist.test_images, mnist.test_labels
    else:
        _, _, images, labels = data.split_train_val(mnist.train_images, mnist.train_labels, 5000, seed=0)
    rng = np.random.default_rng([SET_SEEDS[split], SET_KINDS.index(kind)])
    pictures: list[NumberPicture] = []
    while len(pictures) < count:
        length = int(rng.integers(SET_LENGTHS[0], SET_LENGTHS[1] + 1))
        picks = rng.choice(len(labels), length, replace=False)
        touching = kind == "touching"
        image, overlap, groups = number_picture([images[i].numpy() for i in picks], rng,
                                                gaps=TOUCHING if touching else APART)
        if touching and groups >= length:
            continue  # not touching after all: the test decides from the ink
        payload, fmt = encode(image, rng)
        pictures.append(NumberPicture(payload, "".join(str(int(labels[i])) for i in picks), fmt,
                                      round(overlap, 4), groups))
    return pictures


def number_strip(image: Image.Image | bytes | str) -> Strip:
    """The reader's strip of a picture of a number. Raises :class:`PreprocessError` for a blank
    picture, one holding only lines, and one whose ink is too many digits wide."""
    if not isinstance(image, Image.Image):
        image = load_image(image)
    factor = max(1, math.ceil(max(image.size) / WORK_SIDE))  # what ink_map reduces the picture by
    return ink_strip(ink_map(image), factor)


def ink_strip(full: np.ndarray, factor: int = 1) -> Strip:
    """The strip of an ink map (float32 [H, W] in [0, 1])."""
    clean = np.zeros_like(full)
    for piece in digit_groups(full):  # specks, ruled lines and frames left out
        region = clean[piece.top : piece.top + piece.height, piece.left : piece.left + piece.width]
        np.maximum(region, piece.ink, out=region)
    rows, cols = np.flatnonzero(clean.any(axis=1)), np.flatnonzero(clean.any(axis=0))
    top, left = int(rows[0]), int(cols[0])
    ink = clean[top : rows[-1] + 1, left : cols[-1] + 1]
    height, width = ink.shape
    if width > MAX_ASPECT * max(height, 8):
        raise PreprocessError(f"the ink is {width / height:.0f} times wider than tall: more than a number of "
                              f"up to {MAX_DIGITS} digits")
    scale = INK_HEIGHT / max(height, 8)  # a flat mark (a minus, a dot) is not blown up to full height
    out_h, out_w = max(1, round(height * scale)), max(1, round(width * scale))
    small = np.asarray(Image.fromarray(ink, mode="F").resize((out_w, out_h), Image.Resampling.BILINEAR),
                       dtype=np.float32)
    strip = np.zeros((STRIP_HEIGHT, out_w + 2 * PAD), dtype=np.float32)
    y0 = (STRIP_HEIGHT - out_h) // 2
    strip[y0 : y0 + out_h, PAD : PAD + out_w] = np.clip(small, 0, 1)
    pixels = torch.from_numpy((strip - data.MEAN) / data.STD).unsqueeze(0)
    return Strip(pixels, ink, left, top, scale, factor)


def batch_strips(strips: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Strips ([1, STRIP_HEIGHT, w] each) padded with blank columns on the right to one batch
    [N, 1, STRIP_HEIGHT, max w], and each one's count of output columns (w / COLUMN, rounded up)."""
    widest = max(strip.shape[-1] for strip in strips)
    widest += -widest % COLUMN
    batch = torch.full((len(strips), 1, STRIP_HEIGHT, widest), BLANK_PIXEL)
    for row, strip in enumerate(strips):
        batch[row, :, :, : strip.shape[-1]] = strip
    return batch, torch.tensor([-(-strip.shape[-1] // COLUMN) for strip in strips])


BLANK_PIXEL = (0.0 - data.MEAN) / data.STD


def training_strips(images: torch.Tensor, labels: torch.Tensor, count: int, rng: np.random.Generator,
                    paper: float = 0.5, rotation: float = 0.0, elastic: float = 0.0,
                    elastic_sigma: float = 4.0) -> tuple[list[torch.Tensor], list[str]]:
    """``count`` fresh strips of random 1-8 digit numbers of these MNIST digits, and the numbers:
    gaps anywhere from clearly apart to overlapping, some on scan-like paper read back
    through :func:`~tinydigits.preprocess.ink_map` (a share ``paper`` of them), the rest as
    clean ink or pad strokes. ``rotation`` (degrees) and ``elastic`` (Simard's alpha) distort
    each digit first, as the digit models' augmentation does (off: the same strips as before)."""
    strips, numbers = [], []
    while len(strips) < count:
        length = int(rng.integers(1, 9))
        picks = rng.choice(len(labels), length)
        digits = images[picks]
        if rotation or elastic:
            generator = torch.Generator().manual_seed(int(rng.integers(2**62)))
            warped = random_affine(digits[:, None].float() / 255, degrees=rotation, elastic=elastic,
                                   elastic_sigma=elastic_sigma, generator=generator)
            digits = (warped[:, 0] * 255).round().clamp(0, 255).to(torch.uint8)
        gaps = TOUCHING if rng.random() < 0.5 else (-0.05, 0.6)
        on_paper = rng.random() < paper
        image, _, _ = number_picture([digit.numpy() for digit in digits], rng, gaps=gaps,
                                     heights=(28, 64), pad_strokes=0.0 if on_paper else 1.0)
        try:
            if on_paper:
                if rng.random() < 0.3:  # saved as a file (encode); a PNG reads back the same pixels
                    fmt, options = _file_format(rng)
                    if fmt == "JPEG":
                        image = Image.open(io.BytesIO(_saved(image, fmt, options)))
                strip = number_strip(image)
            else:  # the pad's strokes as ink (what ink_map makes of them), with a little noise
                ink = 1 - np.asarray(image.convert("L"), dtype=np.float32) / 255
                ink = np.clip(ink + rng.normal(0, 0.03, ink.shape).astype(np.float32), 0, 1)
                strip = ink_strip(ink)
        except PreprocessError:
            continue
        strips.append(strip.pixels)
        numbers.append("".join(str(int(labels[i])) for i in picks))
    return strips, numbers
