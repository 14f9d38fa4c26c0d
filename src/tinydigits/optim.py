"""Optimizers and learning-rate schedules from a recipe: shared by the digit models' training
loop (:mod:`tinydigits.train`) and the number reader's (:mod:`tinydigits.sequence`)."""

from __future__ import annotations

from typing import Any

import torch

from .errors import ConfigError
from .recipes import Recipe

__all__ = ["make_optimizer", "make_schedule"]


def make_optimizer(params: Any, recipe: Recipe) -> torch.optim.Optimizer:
    if recipe.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=recipe.lr, momentum=recipe.momentum,
            nesterov=recipe.nesterov, weight_decay=recipe.weight_decay,
        )
    if recipe.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=recipe.lr, weight_decay=recipe.weight_decay)
    raise ConfigError(f"unknown optimizer {recipe.optimizer!r}; choose 'sgd' or 'adamw'")


def make_schedule(
    optimizer: torch.optim.Optimizer, recipe: Recipe, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LRScheduler:
    """Stepped once per batch."""
    if recipe.schedule == "constant":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    if recipe.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=recipe.lr, total_steps=recipe.epochs * steps_per_epoch,
            pct_start=recipe.warmup, cycle_momentum=recipe.optimizer == "sgd",
            # The usual one-cycle momentum: 0.95 falling to 0.85 as the LR peaks, then back.
            # It overrides recipe.momentum, which applies to the constant schedule.
            base_momentum=0.85, max_momentum=0.95,
        )
    raise ConfigError(f"unknown schedule {recipe.schedule!r}; choose 'constant' or 'onecycle'")
