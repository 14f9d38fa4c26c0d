"""Training recipes as plain data: one default (tuned) and one reference recipe per model.

The reference recipes are those of the original notebooks: SGD with momentum 0.9 at a
constant learning rate for 19 epochs. The defaults were tuned on the validation split
only; see the README for how.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from .errors import ConfigError

# Fields one kind of model trains with and the other would ignore, with the values that leave
# them out: the digit models' shift, zoom, dropout and distillation (a reader's strips have
# their own per-digit scale and jitter; rotation and elastic distortion it applies to each
# digit); the reader's strips.
_DIGIT_ONLY = {"dropout": 0.0, "translate": 0.0, "scale": 0.0, "label_smoothing": 0.0, "clean_epochs": 0,
               "distill": 0.0, "temperature": 4.0, "teacher": "", "teacher_augmented": False}
_READER_ONLY = {"epoch_size": 0, "strip_reuse": 1, "strip_paper": 0.5, "batch_by_width": False}

# What to do about a value that is wrong only beside another one.
_FIXES = {
    "batch_by_width": "batches of one width are drawn from a pool of reused strips: give --strip-reuse 2 "
                      "or more, or --no-batch-by-width",
    "teacher": "--distill needs --teacher",
    "clean_epochs": "--clean-epochs is from 0 to --epochs",
    "strip_reuse": "--strip-reuse is from 1 to --batch-size",
}


@dataclass(frozen=True)
class Recipe:
    """Everything that decides how a model is trained, besides the architecture."""

    optimizer: str = "sgd"  # "sgd" or "adamw"
    lr: float = 0.05  # the peak learning rate under "onecycle"
    momentum: float = 0.9  # SGD, constant schedule; one-cycle cycles it 0.95 -> 0.85 -> 0.95
    nesterov: bool = False
    weight_decay: float = 0.0
    schedule: str = "constant"  # "constant" or "onecycle"
    warmup: float = 0.2  # fraction of the steps spent rising to the peak under "onecycle"
    batch_size: int = 128
    epochs: int = 15
    dropout: float = 0.1
    rotation: float = 0.0  # degrees, uniform in [-rotation, rotation]
    translate: float = 0.0  # fraction of the image size
    scale: float = 0.0  # relative zoom, uniform in [1 - scale, 1 + scale]
    elastic: float = 0.0  # elastic distortion strength (Simard's alpha, pixels); 0 = off
    elastic_sigma: float = 4.0  # smoothness of the elastic field (Gaussian sigma, pixels)
    label_smoothing: float = 0.0
    # The last `clean_epochs` epochs train on the images as they are, no augmentation, so the
    # model (and its batch-norm statistics) ends on the distribution it is evaluated on.
    clean_epochs: int = 0
    # Knowledge distillation (Hinton et al. 2015): the loss mixes in, with weight `distill`, the
    # KL divergence to a teacher's temperature-softened answers. The teacher is the ensemble of
    # the weights files in the folder `teacher`, run once on the un-augmented training images,
    # or with `teacher_augmented` on each augmented batch (a teacher forward pass per step).
    distill: float = 0.0
    temperature: float = 4.0
    teacher: str = ""
    teacher_augmented: bool = False
    seed: int = 0
    val_size: int = 5000
    # The number reader's data is made on the fly: an epoch is this many fresh strips (0: the
    # digit models, whose epoch is one pass over their training images).
    epoch_size: int = 0
    # Each fresh strip is trained on this many times on average (drawn from a pool of recent
    # ones): making a strip costs about 6x a training step on it.
    strip_reuse: int = 1
    strip_paper: float = 0.5  # the share of fresh strips drawn on scan-like paper (the rest: clean ink)
    # Batches of strips of about the same width (the pool's nearest to a random one's), so few
    # blank columns pad them out to the widest: with strip_reuse > 1 only.
    batch_by_width: bool = False

    def __post_init__(self) -> None:
        # Catch a bad value here, in one line, not as a crash deep in the training loop.
        checks = {
            "optimizer": self.optimizer in ("sgd", "adamw"),
            "schedule": self.schedule in ("constant", "onecycle"),
            "lr": self.lr > 0,
            "momentum": 0 <= self.momentum < 1,
            "weight_decay": self.weight_decay >= 0,
            "warmup": 0 < self.warmup < 1,
            "batch_size": self.batch_size >= 1,
            "epochs": self.epochs >= 1,
            "dropout": 0 <= self.dropout < 1,
            "rotation": 0 <= self.rotation <= 180,
            "translate": 0 <= self.translate < 1,
            "scale": 0 <= self.scale < 1,
            "elastic": 0 <= self.elastic <= 100,
            "elastic_sigma": 0.5 <= self.elastic_sigma <= 14,
            "label_smoothing": 0 <= self.label_smoothing < 1,
            "clean_epochs": 0 <= self.clean_epochs <= self.epochs,
            "distill": 0 <= self.distill <= 1,
            "temperature": 0 < self.temperature <= 100,
            "teacher": bool(self.teacher) or self.distill == 0,
            "val_size": 0 <= self.val_size < 60_000,
            "epoch_size": self.epoch_size >= 0,
            "strip_reuse": 1 <= self.strip_reuse <= self.batch_size,
            "strip_paper": 0 <= self.strip_paper <= 1,
            "batch_by_width": not self.batch_by_width or self.strip_reuse > 1,
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            values = ", ".join(f"{name}={getattr(self, name)!r}" for name in bad)
            fixes = [_FIXES[name] for name in bad if name in _FIXES]
            if not all(name in _FIXES for name in bad):
                fixes.append("see `tinydigits train --help`")
            raise ConfigError(f"invalid recipe value(s): {values} ({'; '.join(fixes)})")

    def unused_by(self, task: str) -> list[str]:
        """The fields set here that training a model of ``task`` would ignore: the digit models'
        shift, zoom, dropout and distillation for a number reader (its strips get their own
        per-digit scale, slant, thickness and jitter); the strip fields for a digit model."""
        ignored = _DIGIT_ONLY if task == "number" else _READER_ONLY
        return [name for name, off in ignored.items() if getattr(self, name) != off]

    def replace(self, **changes: Any) -> Recipe:
        """A copy with some fields changed; unknown names raise a clear error."""
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise ConfigError(f"unknown recipe field(s): {', '.join(sorted(unknown))}")
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Recipe:
        return cls().replace(**values)


_REFERENCE = Recipe(optimizer="sgd", momentum=0.9, schedule="constant", epochs=19)

REFERENCE_RECIPES: dict[str, Recipe] = {
    "medium": _REFERENCE.replace(lr=0.04104, batch_size=128, dropout=0.1),
    "small": _REFERENCE.replace(lr=0.061005, batch_size=32, dropout=0.02, rotation=5.0),
    "ultrasmall": _REFERENCE.replace(lr=0.025, batch_size=64, dropout=0.02, rotation=5.0),
}

# Tuned on the validation split (see README, "How the default recipe was chosen"):
# one-cycle SGD with Nesterov momentum, weight decay, no dropout, and mild random
# rotation, shift and zoom. Dropout hurt at every setting tried: with augmentation
# and 15 epochs these models underfit rather than overfit.
_TUNED = Recipe(
    optimizer="sgd", lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4,
    schedule="onecycle", warmup=0.2, batch_size=128, epochs=15, dropout=0.0,
    rotation=8.0, translate=0.08, scale=0.08,
)

# Per model, from the experiments in results/ablation/ (README, "Recipe experiments over
# seeds"): a change is kept when its mean final-epoch validation accuracy over at least 3 seeds
# beats the recipe's by more than 0.05 point, the noise level. Medium: distillation from three
# `wide` teachers (117k parameters each) on each augmented batch for 19 epochs, +0.053, kept;
# not kept: 19 epochs alone -0.07, plus elastic distortion -0.15, distillation from the shipped
# three lower on its first seeds, from the wide teachers for 15 epochs +0.047. Small: 19 epochs
# with elastic distortion (alpha 20, sigma 4), +0.07, then distillation from three Mediums run
# on each augmented batch, +0.15 more. Not kept for Small: batch 64, 2 clean final epochs,
# weight decay 1e-4, the same teacher run once on the clean images, an Optuna screening study's
# best trial, the three wide teachers instead of the Mediums (-0.16), 0.8 of the loss from the
# Mediums instead of half (-0.19), 0.3 (-0.18), temperature 2 instead of 4 (-0.08), half the
# affine augmentation (-0.18 on seed 0).
# UltraSmall: Small's distillation recipe (19 epochs, elastic, three Mediums on each augmented
# batch) gave 99.04 ± 0.05, and the three Mediums alone on its own recipe 99.05 ± 0.02 (2.2x the
# time), against its 99.04 ± 0.04: not kept; like Nano it underfits (train accuracy 98.9 against
# 99.0-99.1 on validation), and Nano's recipe (19 epochs, half the augmentation) gave 99.13 ±
# 0.13, kept; on that recipe, the three Mediums 99.05 ± 0.08, a quarter of the augmentation 99.08
# ± 0.05 (Nano: 98.96 ± 0.02, no change), batch 64 99.17 ± 0.06 (+0.03), weight decay 1e-4
# 99.03 ± 0.05, a peak learning rate of 0.2 98.99 ± 0.02 and of 0.05 99.05 ± 0.04, warmup 0.1
# 99.04 ± 0.12 and label smoothing 0.1 99.05 ± 0.05, not kept. Nano
# (designed here, under 2,000 parameters; its layout beat a wider two-block one by 0.5 point and a
# one-conv-at-28x28 one by 0.1 on seed 0's validation) underfits (train accuracy below
# validation), so 19 epochs, the reference's budget: 98.87 ± 0.06 against 98.73 ± 0.15 over 3
# seeds, kept; then half the augmentation (rotation 4°, shifts and scaling 4%): 98.96 ± 0.07
# against 98.87 ± 0.06, kept; weight decay 1e-4 instead: 98.88 ± 0.25, not kept; distillation from
# the three Mediums on the augmented batch was lower on seed 0 (98.56 against 98.62) and not run
# further.
# For the models too small to fit the augmented images (Nano and UltraSmall: train accuracy
# below validation, and less augmentation helped; Small, whose train accuracy is below too,
# did worse with it).
_UNDERFITTING = _TUNED.replace(epochs=19, rotation=4.0, translate=0.04, scale=0.04)
DEFAULT_RECIPES: dict[str, Recipe] = {
    "medium": _TUNED.replace(epochs=19, distill=0.5, teacher="results/teachers/wide-e15",
                             teacher_augmented=True),
    "small": _TUNED.replace(epochs=19, elastic=20.0, distill=0.5, teacher="results/teachers/medium-e19",
                            teacher_augmented=True),
    "ultrasmall": _UNDERFITTING,
    "nano": _UNDERFITTING,
    # A teacher for Medium, trained on the 55,000 images only so that validation stays unseen
    # by its students: `_TUNED`, Medium's recipe before it distilled from them, not tuned for `wide`.
    "wide": _TUNED,
}

# Once the default recipe is chosen on the validation split, nothing is left to select, so
# the final models train on all 60,000 training images: the default recipe without a split.
FULL_DATA_RECIPES: dict[str, Recipe] = {name: r.replace(val_size=0) for name, r in DEFAULT_RECIPES.items()}

# The number readers train with AdamW on strips made on the fly (tinydigits.sequence.train_reader).
# The first reader (a column every 4 pixels; epoch_size 12,800, each strip used once, half on
# paper; commit 5475c5e, seed 0) read 91.3% / 82.3% of the validation sets (separate / touching)
# exactly and was still learning when its 30 minutes ran out: making strips took ~85% of the
# time, so strips are now used twice and fewer are drawn on paper (the costliest kind), for
# twice the training steps in the same time. A third of its misses on touching numbers were
# repeated digits merged ("2116" -> "216"), hence a column every 2 pixels now.
_FIRST_READER = Recipe(optimizer="adamw", lr=3e-3, weight_decay=1e-4, schedule="onecycle", warmup=0.1,
                       batch_size=32, epochs=12, dropout=0.0, epoch_size=24_000, strip_reuse=2,
                       strip_paper=0.3)
# Chosen on validation over seeds 0-2 of reader-small (mean of the two exact rates, final
# epoch; results/readers-ablation): batches of about one width, 87.78 +- 0.42 against 87.67
# +- 0.93, with half the compute a step (23 min a run, three side by side on 2 cores, against
# 60 min for the runs before, which also saved and re-read PNG strips); then 18 epochs
# instead of 12 in part of the time saved: 89.72 +- 0.75. 70% of the strips on paper instead
# of 30%: 86.39 +- 0.79, not kept. The same recipe took `reader` from 89.11 +- 0.67
# (results/readers-ablation/first-recipe) to 90.78 +- 0.54.
_READER = _FIRST_READER.replace(batch_by_width=True, epochs=18)
# `reader` then trained 30 epochs instead of 18: 92.06 +- 0.95 against 90.78 +- 0.54 (seeds 0-2;
# 69 minutes a run, three side by side on 2 cores: 23 minutes of the machine a seed). Each
# digit rotated (8 degrees) and distorted (alpha 20) before it joins a strip: 89.28 +- 0.82,
# touching numbers the worse (results/readers-ablation/augment), not kept.
# 36 epochs: 92.39 +- 0.67, past the rule, but 32-40 minutes of the machine a seed, over the
# 30 a reader may take: not kept (results/readers-ablation/epochs36).
# Each strip used 4 times and 45 epochs, more and cheaper steps within 30 minutes (29 a seed):
# 91.94 +- 1.17, not kept (results/readers-ablation/reuse4).
DEFAULT_RECIPES.update({"reader": _READER.replace(epochs=30), "reader-small": _READER})

RECIPE_KINDS = {"default": DEFAULT_RECIPES, "full": FULL_DATA_RECIPES, "reference": REFERENCE_RECIPES}


def get_recipe(model: str, kind: str = "default") -> Recipe:
    """The ``default`` (tuned), ``full`` (default on all 60k training images) or ``reference``
    recipe for a model."""
    table = RECIPE_KINDS.get(kind)
    if table is None:
        raise ConfigError(f"unknown recipe {kind!r}; choose one of: {', '.join(RECIPE_KINDS)}")
    if model not in table:
        raise ConfigError(f"no recipe for model {model!r}; choose one of: {', '.join(table)}")
    return table[model]
