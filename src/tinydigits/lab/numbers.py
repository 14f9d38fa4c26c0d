"""How well ``tinydigits read`` reads whole numbers, measured on pictures made for it.

Each picture is a number of 2-6 MNIST **test** digits (never training digits) written left
to right on scan-like paper: each digit cropped to its ink and scaled alike (MNIST's 20x20
box to the same height, give or take 10%), gaps between digits from 15% to 50% of that
height (or, in the touching set, neighbours that touch or overlap a little), a slight slope
and jitter, then a tinted sheet, a lighting gradient, noise, blur, a small rotation, saved
as PNG or JPEG. Everything is seeded, so a figure can be reproduced exactly.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageFilter

from .. import data
from ..io import write_text
from ..markdown import GeneratedBlock, markdown_table
from ..models import get_spec
from ..predict import Classifier
from ..preprocess import PreprocessError
from ..read import draw_boxes, read_number
from ..runtime import provenance
from .commands import tinydigits_line

GAPS = (0.15, 0.5)  # gap between neighbours, in digit heights
TOUCHING_GAPS = (-0.10, -0.01)  # negative: the neighbours' boxes overlap, so their ink touches or nearly


@dataclass(frozen=True)
class NumberPicture:
    data: bytes
    number: str
    format: str


def _crop(digit: np.ndarray) -> np.ndarray:
    rows, cols = np.flatnonzero(digit.any(axis=1)), np.flatnonzero(digit.any(axis=0))
    return digit[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]


def number_picture(digits: list[np.ndarray], labels: list[int], rng: np.random.Generator,
                   touching: bool = False) -> NumberPicture:
    """A scan-like picture of MNIST digits (uint8 [28, 28] each, white on black) in a row."""
    height = int(rng.integers(50, 111))
    gaps = TOUCHING_GAPS if touching else GAPS
    slope = np.tan(np.radians(rng.uniform(-4, 4)))
    placed, x = [], int(0.6 * height)
    for digit in digits:
        ink = _crop(digit)
        # MNIST fitted each digit into a 20x20 box; one scale for that box keeps a flat 2 flat.
        scale = height * rng.uniform(0.9, 1.1) / 20
        size = (max(1, round(ink.shape[1] * scale)), max(1, round(ink.shape[0] * scale)))
        big = np.asarray(Image.fromarray(ink).resize(size, Image.Resampling.BICUBIC), dtype=np.float32) / 255
        placed.append((big, x))
        x += size[0] + round(rng.uniform(*gaps) * height)
    width = x + int(0.6 * height)
    canvas_height = int(2.2 * height)
    alpha = np.zeros((canvas_height, width), dtype=np.float32)
    for big, left in placed:
        top = int(0.5 * height + slope * left + rng.uniform(-0.05, 0.05) * height)
        top = min(max(top, 0), canvas_height - big.shape[0])
        region = alpha[top : top + big.shape[0], left : left + big.shape[1]]
        np.maximum(region, np.clip((big - 0.15) / 0.5, 0, 1), out=region)

    paper = np.array([rng.uniform(200, 255) for _ in range(3)], dtype=np.float32)
    if rng.random() < 0.3:  # tinted notepaper
        paper[int(rng.integers(0, 3))] -= rng.uniform(20, 60)
    ink_colour = np.array([rng.uniform(0, 70) for _ in range(3)], dtype=np.float32)
    if rng.random() < 0.4:  # a blue ballpoint
        ink_colour[2] = rng.uniform(90, 160)
    strength = alpha[..., None] * rng.uniform(0.8, 1.0)
    pixels = paper * (1 - strength) + ink_colour * strength
    ramp = np.linspace(0, 1, width, dtype=np.float32)[None, :] * np.cos(rng.uniform(0, 2 * np.pi))
    pixels = pixels * (1.0 - rng.uniform(0.0, 0.3) * (ramp[..., None] + 1) / 2)
    pixels += rng.normal(0, rng.uniform(0, 6), size=(*pixels.shape[:2], 1)).astype(np.float32)
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), mode="RGB")
    image = image.filter(ImageFilter.GaussianBlur(rng.uniform(0, 1.2) * height / 80))
    image = image.rotate(rng.uniform(-2, 2), resample=Image.Resampling.BICUBIC, expand=True,
                         fillcolor=tuple(int(v) for v in paper))
    fmt = "JPEG" if rng.random() < 0.5 else "PNG"
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **({"quality": int(rng.integers(75, 96))} if fmt == "JPEG" else {}))
    return NumberPicture(buffer.getvalue(), "".join(map(str, labels)), fmt)


def number_pictures(mnist: data.MNIST, count: int, seed: int, touching: bool = False) -> list[NumberPicture]:
    """``count`` seeded pictures of 2-6 digit numbers made of MNIST test digits."""
    rng = np.random.default_rng([seed, int(touching)])  # the two sets of one seed draw apart
    pictures = []
    for _ in range(count):
        picks = rng.choice(len(mnist.test_labels), int(rng.integers(2, 7)), replace=False)
        pictures.append(number_picture([mnist.test_images[i].numpy() for i in picks],
                                       [int(mnist.test_labels[i]) for i in picks], rng, touching))
    return pictures


@dataclass(frozen=True)
class ReadingScore:
    pictures: int
    exact: int  # the whole number read right
    right_count: int  # the right number of digits found
    failures: list[str]  # "expected -> got" for the first few misses

    @property
    def exact_rate(self) -> float:
        return 100.0 * self.exact / self.pictures

    @property
    def count_rate(self) -> float:
        return 100.0 * self.right_count / self.pictures


def score(model: Classifier, pictures: list[NumberPicture]) -> ReadingScore:
    exact = right_count = 0
    failures = []
    for picture in pictures:
        try:
            got = read_number(picture.data, model).number
        except PreprocessError as err:
            got = f"error: {err}"
        exact += got == picture.number
        right_count += len(got) == len(picture.number) and got.isdigit()
        if got != picture.number and len(failures) < 8:
            failures.append(f"{picture.number} -> {got}")
    return ReadingScore(len(pictures), exact, right_count, failures)


def measure(model: Classifier, count: int = 500, seed: int = 0, data_dir: str | Path | None = None,
            options: dict[str, Any] | None = None) -> dict[str, Any]:
    """Both sets' scores, as the report's raw figures."""
    mnist = data.load_mnist(data_dir)
    report: dict[str, Any] = {"options": options or {}, "sets": {}, **provenance()}
    for name, touching in (("separate", False), ("touching", True)):
        result = score(model, number_pictures(mnist, count, seed, touching))
        report["sets"][name] = {"pictures": result.pictures, "exact": result.exact,
                                "right_count": result.right_count, "failures": result.failures}
    return report


README_BLOCK = GeneratedBlock("reading-table", "tinydigits read-eval")
SET_TITLES = {"separate": "separate digits (gaps of 15-50% of their height)",
              "touching": "touching or slightly overlapping digits"}


def readme_table(report: dict[str, Any]) -> str:
    """The table of both sets' figures (docs/READING.md's and the README's)."""
    rows = []
    for name, figures in report["sets"].items():
        total = figures["pictures"]
        rows.append([SET_TITLES[name], f"{total:,}", f"{100 * figures['exact'] / total:.1f}%",
                     f"{100 * figures['right_count'] / total:.1f}%"])
    header = ["pictures of numbers", "pictures", "number read exactly", "right count of digits"]
    return "\n".join(markdown_table(header, rows, left=1)) + "\n"


def render_markdown(report: dict[str, Any], output: str | Path) -> str:
    lines = ["# Reading whole numbers", "", "Generated by:", "", "```bash",
             tinydigits_line("read-eval", {**report["options"], "output": str(output)}), "```", "",
             readme_table(report).rstrip("\n"), "",
             f"Read by `tinydigits read` with {get_spec(report['options'].get('model', 'medium')).title}. "
             + __doc__.split("\n\n", 1)[1].strip().replace("\n", " "), ""]
    for name, figures in report["sets"].items():
        if figures["failures"]:
            lines += [f"First misses, {name} (expected -> read): " + ", ".join(f"`{f}`" for f in
                                                                               figures["failures"]), ""]
    lines += [f"tinydigits {report['package_version']}, commit {report['git_commit']}."]
    return "\n".join(lines) + "\n"


def write_report(report: dict[str, Any], output: str | Path) -> Path:
    output = Path(output)
    write_text(output.with_name("reading.json"), json.dumps(report, indent=2) + "\n")
    return write_text(output, render_markdown(report, output))


def save_examples(model: Classifier, directory: str | Path, seed: int = 0, data_dir: str | Path | None = None,
                  per_set: int = 2) -> list[Path]:
    """The first pictures of each set with the boxes ``read`` found, as PNG files."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    mnist = data.load_mnist(data_dir)
    saved = []
    for name, touching in (("separate", False), ("touching", True)):
        for index, picture in enumerate(number_pictures(mnist, per_set, seed, touching)):
            image = Image.open(io.BytesIO(picture.data))
            path = directory / f"{name}-{index}.png"
            draw_boxes(image, read_number(image, model)).save(path)
            saved.append(path)
    return saved
