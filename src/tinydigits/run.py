"""A training run's directory, whatever the model trains on: what a run writes there, and how
an interrupted run picks up where it stopped.

    config.json         the model, resolved recipe, device, thread count and code version
    metrics.jsonl       one JSON line per epoch, the trainer's own metrics
    checkpoint.pt       written atomically after every epoch; :meth:`Run.resume` continues from it
    best.safetensors    (digit models) the weights with the best validation accuracy so far
    final.safetensors   the weights after the last epoch
    test.json           the final weights' test-set figures

The digit trainer (:func:`tinydigits.train.train`) and the number reader's
(:func:`tinydigits.sequence.train_reader`) differ in their data, loss and metrics only; both
keep their run here.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .io import WeightsError, load_checkpoint, save_checkpoint, save_weights
from .recipes import Recipe
from .runtime import provenance

__all__ = ["Run", "RunResult"]


@dataclass(frozen=True)
class RunResult:
    run_dir: Path
    history: list[dict[str, Any]]
    test: dict[str, Any] | None
    seconds: float

    @property
    def final(self) -> dict[str, Any]:
        return self.history[-1]


class Run:
    """One run directory: its recipe, the epochs done so far and the files written.

    Start one with :meth:`start` or :meth:`resume`; after each epoch a trainer calls
    :meth:`record` with its metrics and :meth:`checkpoint` with its state, and at the end
    :meth:`finish` with the final weights."""

    def __init__(self, directory: Path, model_name: str, recipe: Recipe, *, subset: int | None,
                 device: str, history: list[dict[str, Any]]) -> None:
        self.directory = directory
        self.model_name = model_name
        self.recipe = recipe
        self.subset = subset
        self.device = device
        self.history = history
        # Seconds of the epochs before a resume count towards the run's training time.
        self._started = time.perf_counter() - sum(h["seconds"] for h in history)

    @property
    def checkpoint_path(self) -> Path:
        return self.directory / "checkpoint.pt"

    @classmethod
    def start(cls, directory: Path, model_name: str, recipe: Recipe, *, config: dict[str, Any],
              subset: int | None = None, device: str = "cpu") -> Run:
        """A new run in ``directory`` (made here; it must not hold files yet). ``config``: what
        config.json records besides the model, recipe, subset, device and code version."""
        if (directory / "checkpoint.pt").exists():
            raise WeightsError(f"{directory}: already holds a run; resume it or pick another directory")
        if directory.exists() and any(directory.iterdir()):
            raise WeightsError(f"{directory}: already holds files; pick another run directory")
        directory.mkdir(parents=True, exist_ok=True)
        everything = {"model": model_name, "recipe": recipe.to_dict(), "subset": subset, "device": device,
                      **config, **provenance()}
        (directory / "config.json").write_text(json.dumps(everything, indent=2) + "\n")
        (directory / "metrics.jsonl").write_text("")
        return cls(directory, model_name, recipe, subset=subset, device=device, history=[])

    @classmethod
    def resume(cls, directory: Path, log: Callable[[str], None] = print,
               needs: tuple[str, ...] = ()) -> tuple[Run, dict[str, Any]]:
        """The interrupted run in ``directory`` and its last checkpoint's state (the trainer
        restores its own parts of it, ``needs`` naming them; :meth:`restore` the common ones)."""
        path = directory / "checkpoint.pt"
        state = load_checkpoint(path)
        try:
            recipe = Recipe.from_dict(state["recipe"])
            model_name, device, history = str(state["model"]), str(state["device"]), list(state["history"])
            subset = state.get("subset")  # checkpoints from before subsets were recorded had none
            missing = [key for key in ("model_state", "optimizer", "schedule", "torch_rng", *needs)
                       if key not in state]
            if missing:
                raise KeyError(missing[0])
        except (KeyError, TypeError, ValueError) as err:
            raise WeightsError(f"{path}: corrupt checkpoint ({err})") from None
        # Epochs logged after the last checkpoint (a kill mid-write) are redone, so drop them.
        (directory / "metrics.jsonl").write_text("".join(json.dumps(h) + "\n" for h in history))
        log(f"resuming {directory} after epoch {len(history)} of {recipe.epochs}")
        return cls(directory, model_name, recipe, subset=subset, device=device, history=history), state

    @staticmethod
    def restore(state: dict[str, Any], model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                schedule: torch.optim.lr_scheduler.LRScheduler) -> None:
        """Put the model, optimizer, schedule and torch's RNG back as a checkpoint saved them."""
        model.load_state_dict(state["model_state"])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        torch.set_rng_state(state["torch_rng"])

    @property
    def epochs_left(self) -> range:
        return range(len(self.history) + 1, self.recipe.epochs + 1)

    @property
    def seconds(self) -> float:
        """Training time so far, the epochs before any resume included."""
        return time.perf_counter() - self._started

    def weights_metadata(self, epoch: int) -> dict[str, Any]:
        return {"model": self.model_name, "recipe": self.recipe.to_dict(), "seed": self.recipe.seed,
                "epoch": epoch, "metrics": self.history[-1] if self.history else {}, **provenance()}

    def save_weights(self, model: torch.nn.Module, name: str, epoch: int) -> Path:
        return save_weights(model, self.directory / name, self.weights_metadata(epoch))

    def record(self, metrics: dict[str, Any]) -> None:
        """Add an epoch's metrics to the history and metrics.jsonl."""
        self.history.append(metrics)
        with open(self.directory / "metrics.jsonl", "a") as f:
            f.write(json.dumps(metrics) + "\n")

    def checkpoint(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                   schedule: torch.optim.lr_scheduler.LRScheduler, **state: Any) -> None:
        """Save what resuming after the last recorded epoch needs: the model, optimizer, schedule,
        torch's RNG and ``state``, the rest the trainer needs to go on exactly as it would have."""
        save_checkpoint(self.checkpoint_path, {
            "model": self.model_name, "recipe": self.recipe.to_dict(), "subset": self.subset,
            "device": self.device, "model_state": model.state_dict(), "optimizer": optimizer.state_dict(),
            "schedule": schedule.state_dict(), "torch_rng": torch.get_rng_state(), "history": self.history,
            **state,
        })

    def finish(self, model: torch.nn.Module, test: Callable[[], dict[str, Any]] | None) -> RunResult:
        """Save the final weights and, with ``test``, the test figures it gives (the training
        time and epochs added) in test.json."""
        seconds = self.seconds
        self.save_weights(model, "final.safetensors", self.recipe.epochs)
        figures = None
        if test is not None:
            figures = {**test(), "train_seconds": round(seconds, 2), "epochs": self.recipe.epochs}
            (self.directory / "test.json").write_text(json.dumps(figures, indent=2) + "\n")
        return RunResult(run_dir=self.directory, history=self.history, test=figures, seconds=seconds)
