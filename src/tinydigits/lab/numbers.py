"""How well ``tinydigits read`` reads whole numbers, measured on the frozen number sets.

The sets (:func:`tinydigits.strips.number_set`) are seeded and were fixed before any choice
about the number reader was made: 1,000 pictures each of 2-8 digit numbers made of MNIST
**test** digits, one set with gaps of 15-50% of the digits' height, one whose neighbours
touch (decided from the ink: fewer 8-connected ink groups than digits, neighbours' boxes
overlapping by up to 25% of the height). Every reader is scored on the same pictures.
"""

from __future__ import annotations

import io
import json
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .. import data
from ..io import write_text
from ..markdown import GeneratedBlock, markdown_table
from ..models import get_spec
from ..preprocess import PreprocessError
from ..read import DIGIT_WEIGHT, TOUCHING_SHARE, draw_boxes, read_number
from ..runtime import cpu_name, provenance
from ..sequence import edit_distance, run_reader
from ..strips import (
    APART,
    SET_KINDS,
    SET_SIZE,
    TOUCHING,
    NumberPicture,
    encode,
    number_picture,
    number_set,
    number_strip,
)
from .commands import tinydigits_line

__all__ = ["README_BLOCK", "measure", "number_picture", "number_pictures", "readme_table", "render_markdown",
           "save_examples", "score", "write_report"]

# The touching set's pictures by how far the neighbours' ink boxes overlap at most.
OVERLAP_BINS = ((-1.0, 0.0, "touching, boxes apart"), (0.0, 0.1, "overlap 0-10%"),
                (0.1, 0.2, "overlap 10-20%"), (0.2, 1.0, "overlap 20-25%"))


def number_pictures(mnist: data.MNIST, count: int, seed: int, touching: bool = False) -> list[NumberPicture]:
    """``count`` seeded pictures of 2-6 digit numbers of MNIST test digits, apart or with the
    touching set's gaps (not checked from the ink): quick pictures for tests and examples;
    the figures come from the frozen sets."""
    rng = np.random.default_rng([seed, int(touching)])
    pictures = []
    for _ in range(count):
        picks = rng.choice(len(mnist.test_labels), int(rng.integers(2, 7)), replace=False)
        image, overlap, groups = number_picture([mnist.test_images[i].numpy() for i in picks], rng,
                                                gaps=TOUCHING if touching else APART)
        payload, fmt = encode(image, rng)
        pictures.append(NumberPicture(payload, "".join(str(int(mnist.test_labels[i])) for i in picks), fmt,
                                      overlap, groups))
    return pictures


def _overlap_bin(overlap: float) -> str:
    return next(label for lo, hi, label in OVERLAP_BINS if lo <= overlap < hi)


def score(pictures: list[NumberPicture], model: Any, method: str, digit_model: Any = "medium",
          digit_weight: float = DIGIT_WEIGHT, touching_share: float = TOUCHING_SHARE) -> dict[str, Any]:
    """One reader's figures on a set (``digit_model``: the sequence method's second opinion, as
    :func:`~tinydigits.read.read_number` takes it; ``None``: the reader alone): counts of exact
    numbers, right digit counts, character errors (edit distance), per number length and per
    overlap bin, the first misses, and the time per picture."""
    figures: dict[str, Any] = {"pictures": len(pictures), "exact": 0, "right_count": 0, "char_errors": 0,
                               "chars": 0, "by_length": {}, "by_overlap": {}, "failures": []}
    started = time.perf_counter()
    for picture in pictures:
        try:
            got = read_number(picture.data, model, method, digit_model, digit_weight, touching_share).number
        except PreprocessError as err:
            got = f"error: {err}"
        exact = got == picture.number
        figures["exact"] += exact
        figures["right_count"] += len(got) == len(picture.number) and got.isdigit()
        figures["char_errors"] += edit_distance(picture.number, got if got.isdigit() else "")
        figures["chars"] += len(picture.number)
        groups = (("by_length", str(len(picture.number))), ("by_overlap", _overlap_bin(picture.overlap)))
        for key, value in groups:
            counts = figures[key].setdefault(value, [0, 0])
            counts[0] += 1
            counts[1] += exact
        if not exact and len(figures["failures"]) < 8:
            figures["failures"].append(f"{picture.number} -> {got}")
    figures["ms_per_picture"] = round(1000 * (time.perf_counter() - started) / len(pictures), 2)
    if method == "sequence":  # the model alone on the 6-digit numbers' strips, one at a time
        figures["model_ms_6_digits"] = _model_milliseconds(model, [p for p in pictures if len(p.number) == 6])
    figures["by_length"] = dict(sorted(figures["by_length"].items(), key=lambda item: int(item[0])))
    return figures


def _model_milliseconds(model: Any, pictures: list[NumberPicture]) -> float:
    """The median time of the reader's forward pass and decoding on these pictures' strips."""
    times = []
    for picture in pictures:
        strip = number_strip(picture.data).pixels
        run_reader(model, [strip])  # warm: the first call of a width may plan its kernels
        started = time.perf_counter()
        run_reader(model, [strip])
        times.append(time.perf_counter() - started)
    return round(1000 * statistics.median(times), 3) if times else 0.0


def measure(readers: dict[str, tuple[str, Any, Any]], count: int = SET_SIZE,
            data_dir: str | Path | None = None, options: dict[str, Any] | None = None, split: str = "test",
            digit_weight: float = DIGIT_WEIGHT, touching_share: float = TOUCHING_SHARE) -> dict[str, Any]:
    """Each reader's figures on both frozen sets of ``split`` (``test``; ``val``, made of the
    validation digits, for choices). ``readers``: label -> (method, model, digit model or None)."""
    mnist = data.load_mnist(data_dir)
    report: dict[str, Any] = {"options": options or {}, "sets": {}, "cpu": cpu_name(), **provenance()}
    for kind in SET_KINDS:
        pictures = number_set(kind, split, count, mnist)
        report["sets"][kind] = {label: score(pictures, model, method, second, digit_weight, touching_share)
                                for label, (method, model, second) in readers.items()}
    return report


README_BLOCK = GeneratedBlock("reading-table", "tinydigits read-eval")
SET_TITLES = {"separate": "separate digits (gaps of 15-50% of their height)",
              "touching": "touching digits (fewer ink groups than digits)"}


def _rate(part: int, whole: int) -> str:
    return f"{100 * part / whole:.1f}%"


def readme_table(report: dict[str, Any]) -> str:
    """The table of both sets' figures per reader (docs/READING.md's and the README's)."""
    rows = []
    for kind, readers in report["sets"].items():
        for label, f in readers.items():
            rows.append([SET_TITLES[kind], label, f"{f['pictures']:,}", _rate(f["exact"], f["pictures"]),
                         _rate(f["right_count"], f["pictures"]), _rate(f["char_errors"], f["chars"]),
                         f"{f['ms_per_picture']:.0f}"])
    header = ["pictures of numbers", "read by", "pictures", "number read exactly", "right count of digits",
              "character error rate", "ms per picture"]
    return "\n".join(markdown_table(header, rows, left=2)) + "\n"


def _breakdown(report: dict[str, Any], key: str, title: str) -> list[str]:
    """Exact-number rate per length or per overlap bin, a column per set and reader."""
    columns = [(kind, label) for kind, readers in report["sets"].items() for label in readers
               if report["sets"][kind][label][key] and (key == "by_length" or kind == "touching")]
    values = list(dict.fromkeys(v for kind, label in columns for v in report["sets"][kind][label][key]))
    rows = []
    for value in values:
        row = [value]
        for kind, label in columns:
            n, exact = report["sets"][kind][label][key].get(value, [0, 0])
            row.append(f"{_rate(exact, n)} of {n}" if n else "")
        rows.append(row)
    header = [title, *(f"{kind}, {label}" for kind, label in columns)]
    return markdown_table(header, rows, left=1)


def render_markdown(report: dict[str, Any], output: str | Path) -> str:
    options = report["options"]
    first = next((f for f in report["sets"]["touching"].values() if "model_ms_6_digits" in f), None)
    reader = get_spec(options.get("reader", "reader"))  # reports before the option: the first reader
    digits = get_spec(options.get("model", "medium")).title
    lines = ["# Reading whole numbers", "", "Generated by:", "", "```bash",
             tinydigits_line("read-eval", {**options, "output": str(output)}), "```", "",
             readme_table(report).rstrip("\n"), "",
             f"Read by `tinydigits read --method sequence` with the {reader.title.lower()}, {digits} reading "
             f"each digit it finds again (`--digit-model none`: the reader alone), and by `--method segment` "
             f"with {digits}; milliseconds per "
             "picture include decoding and preprocessing, one picture at a time. "
             + " ".join(__doc__.split("\n\n", 1)[1].split()),
             "", *([f"The reader's forward pass and decoding on a 6-digit number's strip: "
                   f"{first['model_ms_6_digits']:.2f} ms (median, 1 thread)."] if first else []),
             f"Measured on {report.get('cpu', 'an unnamed CPU')}.",
             "", "Numbers read exactly, by length:", "", *_breakdown(report, "by_length", "digits"), "",
             "The touching set by how far neighbouring digits' ink boxes overlap:", "",
             *_breakdown(report, "by_overlap", "neighbours"), ""]
    for kind, readers in report["sets"].items():
        for label, figures in readers.items():
            if figures["failures"]:
                lines += [f"First misses, {kind}, {label} (expected -> read): "
                          + ", ".join(f"`{f}`" for f in figures["failures"]), ""]
    lines += [f"tinydigits {report['package_version']}, commit {report['git_commit']}."]
    return "\n".join(lines) + "\n"


def write_report(report: dict[str, Any], output: str | Path) -> Path:
    output = Path(output)
    write_text(output.with_name("reading.json"), json.dumps(report, indent=2) + "\n")
    return write_text(output, render_markdown(report, output))


def save_examples(model: Any, method: str, directory: str | Path, data_dir: str | Path | None = None,
                  per_set: int = 2, digit_model: Any = None) -> list[Path]:
    """The first pictures of each frozen set with the boxes ``read`` found, as PNG files."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    mnist = data.load_mnist(data_dir)
    saved = []
    for kind in SET_KINDS:
        for index, picture in enumerate(number_set(kind, "test", per_set, mnist)):
            image = Image.open(io.BytesIO(picture.data))
            path = directory / f"{kind}-{index}.png"
            draw_boxes(image, read_number(image, model, method, digit_model)).save(path)
            saved.append(path)
    return saved
