"""The number reader: CTC decoding, reading a picture, scoring, and training on the fly.

The reader (:class:`tinydigits.models.NumberReader`) gives, for every 2 columns of a strip
(:mod:`tinydigits.strips`), log-probabilities of the 10 digits and a blank. Greedy decoding
takes the best class per column, merges runs of one class and drops blanks (Graves et al.
2006); each digit's columns give its place in the picture, so ``read`` can still draw boxes.
"""

from __future__ import annotations

import itertools
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from scipy import ndimage

from . import data
from .errors import ConfigError
from .models import build_model, count_parameters
from .optim import make_optimizer, make_schedule
from .preprocess import PreprocessError, Source
from .recipes import Recipe
from .run import Run, RunResult
from .runtime import set_threads
from .segment import INK
from .strips import (
    COLUMN,
    PAD,
    SET_SIZE,
    NumberPicture,
    Strip,
    batch_strips,
    number_set,
    number_strip,
    training_strips,
)

BLANK = 10
VAL_COUNT = 300  # pictures of each kind the reader is validated on after every epoch
POOL_BATCHES = 64  # with strip_reuse > 1, batches are drawn from the last 64 batches' worth of strips


@dataclass(frozen=True)
class Span:
    """One decoded digit: its class, probability (the best of its columns'), columns, and the
    log-probabilities of the 10 digits in that surest column (what
    :func:`tinydigits.read.read_number` weighs against a digit model's)."""

    digit: int
    probability: float
    first: int
    last: int
    scores: tuple[float, ...]


def greedy_decode(log_probs: torch.Tensor) -> list[Span]:
    """The digits of one strip's output ([11, T] log-probabilities), left to right."""
    # Columns are compared by log-probability: near-certain ones all round to 1.0 in float32
    # probabilities, and which of them is the surest would then depend on the engine.
    values, best = log_probs.max(dim=0)
    digit_scores = log_probs[:BLANK].T.tolist()
    spans: list[Span] = []
    surest = 0.0  # the log-probability of the last span's surest column
    previous = BLANK
    for column, (label, value) in enumerate(zip(best.tolist(), values.tolist(), strict=True)):
        if label != BLANK and label == previous:
            last = spans[-1]
            if value > surest:
                surest = value
                spans[-1] = Span(label, math.exp(value), last.first, column, tuple(digit_scores[column]))
            else:
                spans[-1] = replace(last, last=column)
        elif label != BLANK:
            surest = value
            spans.append(Span(label, math.exp(value), column, column, tuple(digit_scores[column])))
        previous = label
    return spans


def run_reader(model: Any, strips: list[torch.Tensor]) -> list[list[Span]]:
    """Each strip's decoded digits. ``model``: a reader, or an engine that maps a batch of strips
    [N, 1, 32, W] to log-probabilities [N, 11, W / 2]."""
    batch, lengths = batch_strips(strips)
    if isinstance(model, torch.nn.Module):
        model.eval()
    with torch.no_grad():
        out = model(batch)
    return [greedy_decode(out[row, :, : int(length)]) for row, length in enumerate(lengths)]


def read_picture(image: Image.Image | Source, model: Any) -> tuple[Strip, list[Span]]:
    """A picture's strip and the digits the reader finds in it."""
    strip = number_strip(image)
    return strip, run_reader(model, [strip.pixels])[0]


@dataclass(frozen=True)
class DigitBox:
    """Where :func:`digit_boxes` put one decoded digit: its box in the picture's pixels, its ink
    (cropped from the strip's ink map), and whether that ink stands alone: no 8-connected
    stroke crosses the box's left or right edge into a neighbour's."""

    x: int
    y: int
    width: int
    height: int
    ink: np.ndarray
    alone: bool


def digit_boxes(strip: Strip, spans: list[Span]) -> list[DigitBox]:
    """Each digit's box in the picture's pixels and its ink: the ink columns between the
    midpoints to its neighbours' columns, cropped to the ink there."""
    if not spans:
        return []
    # Each span's centre, in columns of the strip's ink.
    centres = [((span.first + span.last + 1) / 2 * COLUMN - PAD) / strip.scale for span in spans]
    height, width = strip.ink.shape
    edges = [0, *(round((a + b) / 2) for a, b in itertools.pairwise(centres)), width]
    # Each stroke's first and last column, to tell a digit whose ink touches a neighbour's.
    labels, _ = ndimage.label(strip.ink > INK, structure=np.ones((3, 3)))
    strokes = [(cols.start, cols.stop) for _, cols in ndimage.find_objects(labels)]
    boxes = []
    for a, b in itertools.pairwise(edges):
        a = min(max(a, 0), width - 1)
        b = min(max(b, a + 1), width)  # at least one column, after a is clamped
        alone = all(a <= start and stop <= b for start, stop in strokes if start < b and stop > a)
        piece = strip.ink[:, a:b]
        rows, cols = np.flatnonzero(piece.max(axis=1) > 0.2), np.flatnonzero(piece.max(axis=0) > 0.2)
        if rows.size == 0 or cols.size == 0:  # no ink there: the whole slice
            rows, cols = np.arange(height), np.arange(b - a)
        ink = piece[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
        f = strip.factor
        x, y = int((strip.left + a + cols[0]) * f), int((strip.top + rows[0]) * f)
        size = int((cols[-1] - cols[0] + 1) * f), int((rows[-1] - rows[0] + 1) * f)
        boxes.append(DigitBox(x, y, *size, ink, alone))
    return boxes


# ------------------------------------------------------------------ scoring


@dataclass(frozen=True)
class NumberScore:
    """How a reader did on a set of number pictures."""

    pictures: int
    exact: int
    right_count: int
    char_errors: int  # edit distance, summed
    chars: int  # digits in the truth, summed
    failures: list[str]

    @property
    def exact_rate(self) -> float:
        return 100.0 * self.exact / self.pictures

    @property
    def count_rate(self) -> float:
        return 100.0 * self.right_count / self.pictures

    @property
    def cer(self) -> float:
        return 100.0 * self.char_errors / self.chars


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance: insertions, deletions and substitutions."""
    row = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        previous, row[0] = row[0], i
        for j, cb in enumerate(b, 1):
            previous, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, previous + (ca != cb))
    return row[-1]


def score_readings(truths: list[str], readings: list[str]) -> NumberScore:
    exact = right_count = errors = 0
    failures = []
    for truth, got in zip(truths, readings, strict=True):
        exact += got == truth
        right_count += len(got) == len(truth) and got.isdigit()
        errors += edit_distance(truth, got if got.isdigit() else "")
        if got != truth and len(failures) < 8:
            failures.append(f"{truth} -> {got}")
    return NumberScore(len(truths), exact, right_count, errors, sum(map(len, truths)), failures)


def picture_strips(pictures: list[NumberPicture]) -> list[torch.Tensor | None]:
    """Each picture's strip pixels, or None where preprocessing refused it."""
    strips: list[torch.Tensor | None] = []
    for picture in pictures:
        try:
            strips.append(number_strip(picture.data).pixels)
        except PreprocessError:
            strips.append(None)
    return strips


def read_strips(model: Any, strips: list[torch.Tensor | None], batch: int = 64) -> list[str]:
    """The number read from each strip ("" for a refused picture), in batches of similar width."""
    order = sorted((i for i, s in enumerate(strips) if s is not None), key=lambda i: strips[i].shape[-1])
    readings = [""] * len(strips)
    for start in range(0, len(order), batch):
        chunk = order[start : start + batch]
        for index, spans in zip(chunk, run_reader(model, [strips[i] for i in chunk]), strict=True):
            readings[index] = "".join(str(span.digit) for span in spans)
    return readings


def test_figures(model: Any, mnist: data.MNIST, count: int = SET_SIZE) -> dict[str, Any]:
    """A reader's figures on the frozen test sets (their first ``count`` pictures): per set
    exact-number %, right-count % and character error rate %, and as ``accuracy`` the mean of
    the two exact-number rates."""
    figures: dict[str, Any] = {}
    for kind in ("separate", "touching"):
        pictures = number_set(kind, "test", count, mnist=mnist)
        score = score_readings([p.number for p in pictures], read_strips(model, picture_strips(pictures)))
        figures[kind] = {"exact": round(score.exact_rate, 4), "right_count": round(score.count_rate, 4),
                         "cer": round(score.cer, 4)}
    figures["accuracy"] = round((figures["separate"]["exact"] + figures["touching"]["exact"]) / 2, 4)
    return figures


# ------------------------------------------------------------------ training


def _ctc_loss(model: torch.nn.Module, strips: list[torch.Tensor], numbers: list[str]) -> torch.Tensor:
    batch, lengths = batch_strips(strips)
    log_probs = model(batch).permute(2, 0, 1)  # [T, N, 11], as CTCLoss takes them
    targets = torch.tensor([int(c) for number in numbers for c in number])
    target_lengths = torch.tensor([len(number) for number in numbers])
    return F.ctc_loss(log_probs, targets, lengths, target_lengths, blank=BLANK, zero_infinity=True)


def batch_from_pool(widths: list[int], size: int, rng: np.random.Generator, by_width: bool) -> np.ndarray:
    """Which ``size`` of a pool of strips of these widths make the next batch: drawn at random,
    or with ``by_width`` the nearest in width to a random one (ties in random order), so the
    batch is padded with few blank columns: half the compute of a random batch, whose widest
    strip is about twice the mean."""
    if not by_width:
        return rng.choice(len(widths), size, replace=False)
    width = widths[int(rng.integers(len(widths)))]
    distance = np.abs(np.asarray(widths) - width) + rng.random(len(widths))
    return np.argsort(distance, kind="stable")[:size]


def train_reader(model_name: str, recipe: Recipe, *, run_dir: Path, resume: bool = False,
                 threads: int | None = None, data_dir: str | Path | None = None, evaluate_test: bool = True,
                 log: Callable[[str], None] = print, val_count: int | None = None) -> RunResult:
    """Train a number reader on strips made on the fly from the 55,000 MNIST training digits;
    validate each epoch on the seeded validation sets (made of the 5,000 held-out digits);
    at the end, score the frozen test sets. ``val_count``: pictures of each kind to validate on
    (default :data:`VAL_COUNT`). The run directory is kept as ``train`` keeps it
    (:class:`tinydigits.run.Run`); with ``resume`` the saved recipe wins over ``recipe``."""
    state: dict[str, Any] = {}
    if resume:
        run, state = Run.resume(run_dir, log=log, needs=("numpy_rng",))
        recipe = run.recipe
    if recipe.val_size != 5000:
        raise ConfigError("the number reader holds out the 5,000 validation digits its sets are made of "
                          "(recipe val_size=5000)")
    if recipe.epoch_size < recipe.batch_size:
        raise ConfigError(f"epoch_size {recipe.epoch_size} is below one batch ({recipe.batch_size})")
    threads = set_threads(threads)
    mnist = data.load_mnist(data_dir)
    train_x, train_y, _, _ = data.split_train_val(mnist.train_images, mnist.train_labels, 5000, seed=0)
    torch.manual_seed(recipe.seed)
    # channels_last, as train() does: a step on a [32, 1, 32, 160] batch took 48 ms against
    # 71 ms in NCHW (1 thread, AMD EPYC).
    model = build_model(model_name).to(memory_format=torch.channels_last)
    steps_per_epoch = recipe.epoch_size // recipe.batch_size
    optimizer = make_optimizer(model.parameters(), recipe)
    schedule = make_schedule(optimizer, recipe, steps_per_epoch)
    rng = np.random.default_rng(recipe.seed)
    # With strip_reuse > 1, batches are drawn from a pool of recent strips: part of the state a
    # resumed run needs to give the same weights as an uninterrupted one.
    pool: deque[tuple[torch.Tensor, str]] = deque(maxlen=POOL_BATCHES * recipe.batch_size)
    if resume:
        Run.restore(state, model, optimizer, schedule)
        pool.extend(state.get("strip_pool", []))
        rng.bit_generator.state = state["numpy_rng"]
    else:
        run = Run.start(run_dir, model_name, recipe, config={
            "threads": threads, "torch": torch.__version__, "parameters": count_parameters(model),
            "teacher_sha256": {}})
        log(f"training {model_name} (seed {recipe.seed}), {threads} thread{'' if threads == 1 else 's'}; "
            f"run directory: {run_dir}")
    val_sets = {kind: number_set(kind, "val", val_count or VAL_COUNT, mnist)
                for kind in ("separate", "touching")}
    val_strips = {kind: picture_strips(pictures) for kind, pictures in val_sets.items()}

    strip_options = {"paper": recipe.strip_paper, "rotation": recipe.rotation, "elastic": recipe.elastic,
                     "elastic_sigma": recipe.elastic_sigma}

    def next_batch() -> tuple[list[torch.Tensor], list[str]]:
        """Fresh strips, or with strip_reuse > 1 a draw from the pool of recent ones that a
        share of fresh ones joins at every step."""
        if recipe.strip_reuse == 1:
            return training_strips(train_x, train_y, recipe.batch_size, rng, **strip_options)
        fresh = -(-recipe.batch_size // recipe.strip_reuse)
        while True:
            pool.extend(zip(*training_strips(train_x, train_y, fresh, rng, **strip_options), strict=True))
            if len(pool) >= recipe.batch_size:
                break
        chosen = batch_from_pool([strip.shape[-1] for strip, _ in pool], recipe.batch_size, rng,
                                 recipe.batch_by_width)
        picks = [pool[int(i)] for i in chosen]
        return [strip for strip, _ in picks], [number for _, number in picks]

    for epoch in run.epochs_left:
        epoch_start = time.perf_counter()
        model.train()
        loss_sum = 0.0
        for _ in range(steps_per_epoch):
            strips, numbers = next_batch()
            loss = _ctc_loss(model, strips, numbers)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            loss_sum += float(loss.detach())
        model.eval()
        scores = {kind: score_readings([p.number for p in pictures], read_strips(model, val_strips[kind]))
                  for kind, pictures in val_sets.items()}
        h = {
            "epoch": epoch, "train_loss": round(loss_sum / steps_per_epoch, 6),
            "val_separate_exact": round(scores["separate"].exact_rate, 4),
            "val_touching_exact": round(scores["touching"].exact_rate, 4),
            "val_accuracy": round((scores["separate"].exact_rate + scores["touching"].exact_rate) / 2, 4),
            "lr": optimizer.param_groups[0]["lr"], "seconds": round(time.perf_counter() - epoch_start, 3),
        }
        run.record(h)
        run.checkpoint(model, optimizer, schedule, numpy_rng=rng.bit_generator.state, strip_pool=list(pool))
        log(f"epoch {epoch:2d}/{recipe.epochs}  train loss {h['train_loss']:.4f}  val exact: separate "
            f"{h['val_separate_exact']:.2f}% touching {h['val_touching_exact']:.2f}%  lr {h['lr']:.5f}  "
            f"{h['seconds']:.1f}s")
    done = run.finish(model, (lambda: test_figures(model, mnist)) if evaluate_test else None)
    if done.test is not None:
        test = done.test
        log(f"final test: separate {test['separate']['exact']:.2f}% exact, touching "
            f"{test['touching']['exact']:.2f}% exact, after {recipe.epochs} epochs, {done.seconds:.0f}s; "
            f"run saved in {run_dir}")
    return done
