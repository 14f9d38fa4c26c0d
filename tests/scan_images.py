"""Seeded pictures that look like scans and phone photos of handwritten digits on paper.

Each is an MNIST test digit, upscaled to 100-400 px and drawn as dark ink on light,
tinted paper with gradient lighting, noise and blur, off-centre on a larger canvas,
sometimes rotated a few degrees or drawn with a thin pen, and saved as PNG, JPEG, BMP
or WebP; some store rotated or mirrored pixels with the EXIF Orientation tag that
undoes it, so only ``exif_transpose`` gets them upright.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFilter

FORMATS = ("PNG", "JPEG", "BMP", "WEBP")
SUFFIX = {"PNG": ".png", "JPEG": ".jpg", "BMP": ".bmp", "WEBP": ".webp"}
# stored = upright.transpose(op); EXIF orientation tag whose exif_transpose undoes it.
EXIF_STORAGE = (
    (Image.Transpose.ROTATE_90, 6),
    (Image.Transpose.ROTATE_270, 8),
    (Image.Transpose.ROTATE_180, 3),
    (Image.Transpose.FLIP_LEFT_RIGHT, 2),
)


@dataclass(frozen=True)
class ScanImage:
    data: bytes
    format: str
    suffix: str
    description: str


def scan_like(digit: np.ndarray, rng: np.random.Generator, fmt: str | None = None) -> ScanImage:
    """Encode one MNIST digit (uint8 [28, 28], white on black) as a scan-like picture."""
    size = int(rng.integers(100, 401))
    ink_img = Image.fromarray(digit).resize((size, size), Image.Resampling.BICUBIC)
    notes = [f"{size}px"]
    angle = 0.0
    if rng.random() < 0.5:
        angle = float(rng.uniform(-8, 8))
        ink_img = ink_img.rotate(angle, resample=Image.Resampling.BICUBIC, expand=True)
        notes.append(f"rot{angle:+.0f}")
    ink = np.asarray(ink_img, dtype=np.float32) / 255
    if rng.random() < 0.2:  # a thin pen: keep only the middle of the strokes
        ink = np.clip((ink - 0.75) / 0.15, 0, 1)
        notes.append("thin")
    else:  # real ink has crisper edges than upscaled MNIST
        ink = np.clip((ink - 0.2) / 0.5, 0, 1)
    ih, iw = ink.shape
    height = int(ih * rng.uniform(1.2, 1.7))
    width = int(iw * rng.uniform(1.2, 1.7))
    top = int(rng.integers(0, height - ih + 1))
    left = int(rng.integers(0, width - iw + 1))
    alpha = np.zeros((height, width), dtype=np.float32)
    alpha[top : top + ih, left : left + iw] = ink * rng.uniform(0.75, 1.0)

    paper = np.array([rng.uniform(190, 255) for _ in range(3)], dtype=np.float32)
    if rng.random() < 0.3:  # a strongly tinted sheet (yellow, pink, blue notepaper)
        paper[int(rng.integers(0, 3))] -= rng.uniform(30, 70)
    ink_colour = np.array([rng.uniform(0, 70) for _ in range(3)], dtype=np.float32)
    if rng.random() < 0.4:  # a blue ballpoint
        ink_colour[2] = rng.uniform(90, 160)
    pixels = paper * (1 - alpha[..., None]) + ink_colour * alpha[..., None]

    # Lighting: a linear gradient in a random direction and sometimes a vignette.
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    theta = rng.uniform(0, 2 * np.pi)
    ramp = (np.cos(theta) * xx / width + np.sin(theta) * yy / height) / 1.5 + 0.5
    light = 1.0 - rng.uniform(0.0, 0.35) * ramp
    if rng.random() < 0.4:
        r2 = ((xx / width - 0.5) ** 2 + (yy / height - 0.5) ** 2) * 2
        light *= 1.0 - rng.uniform(0.0, 0.25) * r2
    pixels = pixels * light[..., None]
    pixels += rng.normal(0, rng.uniform(0, 8), size=(height, width, 1)).astype(np.float32)
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), mode="RGB")
    blur = float(rng.uniform(0, 1.5)) * size / 250
    if blur > 0.3:
        image = image.filter(ImageFilter.GaussianBlur(blur))
    if rng.random() < 0.2:
        image = image.convert("L")
        notes.append("gray")

    fmt = fmt or str(rng.choice(FORMATS))
    exif = None
    if fmt != "BMP" and rng.random() < 0.3:
        op, tag = EXIF_STORAGE[int(rng.integers(0, len(EXIF_STORAGE)))]
        image = image.transpose(op)
        exif = Image.Exif()
        exif[0x0112] = tag
        notes.append(f"exif{tag}")
    options: dict = {}
    if fmt in ("JPEG", "WEBP"):
        options["quality"] = int(rng.integers(40, 96))
        notes.append(f"q{options['quality']}")
    if exif is not None:
        options["exif"] = exif
    if fmt == "PNG":
        options["compress_level"] = 1  # fast; the pixels are what matter
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return ScanImage(buffer.getvalue(), fmt, SUFFIX[fmt], " ".join(notes))
