"""Train a model over several seeds and record the outcome in ``results/<model>[-reference].json``.

The results files are the project's published figures: each seed's final-epoch test and
validation accuracy, wall time, per-epoch history and the command that reproduces it, plus
mean, standard deviation, min and max. They are written after every seed, so a long
reproduction that stops part-way keeps what it finished and carries on where it stopped.
"""

from __future__ import annotations

import json
import platform
import shutil
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from .. import data
from ..errors import ConfigError
from ..io import write_text
from ..models import get_spec
from ..recipes import Recipe, get_recipe
from ..runtime import provenance, select_device
from ..strips import SET_KINDS
from ..train import check_recipe, train
from . import DEFAULT_SEEDS
from .commands import tinydigits_line

RESULTS_DIR = Path("results")


def results_path(model_name: str, recipe_kind: str = "default", root: str | Path = RESULTS_DIR) -> Path:
    suffix = "" if recipe_kind == "default" else f"-{recipe_kind}"
    return Path(root) / f"{get_spec(model_name).name}{suffix}.json"


def load_results(model_name: str, recipe_kind: str = "default",
                 root: str | Path = RESULTS_DIR) -> dict[str, Any] | None:
    """The results file's contents, or None when there is none."""
    path = results_path(model_name, recipe_kind, root)
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ConfigError(f"{path}: not valid JSON ({err}); fix or delete it") from None


def seed_statistics(values: list[float]) -> dict[str, float]:
    """Mean, sample standard deviation, min and max, rounded for publication."""
    return {
        "mean": round(statistics.fmean(values), 4),
        "std": round(statistics.stdev(values), 4) if len(values) > 1 else 0.0,
        "min": round(min(values), 4),
        "max": round(max(values), 4),
    }


def seed_command(model_name: str, recipe_kind: str, seed: int, changes: dict[str, Any] | None = None) -> str:
    return tinydigits_line("train", {"model": model_name, "recipe": recipe_kind, **(changes or {}),
                                     "seed": seed})


def _same_recipe(saved: Any, recipe: Recipe) -> bool:
    """Whether a recorded recipe is ``recipe``. A field added to Recipe after the record was
    written is missing from it and reads as its default, which keeps the old behaviour."""
    try:
        return Recipe.from_dict(saved) == recipe
    except (ConfigError, TypeError, AttributeError):
        return False


def _saved_config(run_dir: Path) -> dict[str, Any]:
    try:
        config = json.loads((run_dir / "config.json").read_text())
        return config if isinstance(config, dict) else {}
    except (OSError, ValueError):
        return {}


def _saved_recipe(run_dir: Path) -> dict[str, Any] | None:
    return _saved_config(run_dir).get("recipe")


def _trained_by(run_dir: Path) -> dict[str, str]:
    """The code that started the run, from its config.json (a resumed run is credited to it),
    else the code running now."""
    config = _saved_config(run_dir)
    return {key: config.get(key, value) for key, value in provenance().items()}


def _prepare_run_dir(run_dir: Path, recipe: Recipe) -> bool:
    """Make ``run_dir`` ready for this seed; True when it holds a run to resume."""
    if not run_dir.exists():
        return False
    if not (run_dir / "checkpoint.pt").exists():
        # Stopped before its first epoch was saved: nothing in it is worth keeping.
        shutil.rmtree(run_dir)
        return False
    if not _same_recipe(_saved_recipe(run_dir), recipe):
        raise ConfigError(f"{run_dir}: holds a run with another recipe; "
                         "move it away or use another --runs-dir")
    return True  # a run stopped part-way (Ctrl-C, a kill) continues from its last saved epoch


def reproduce(
    model_name: str,
    *,
    recipe_kind: str = "default",
    seeds: int = DEFAULT_SEEDS,
    results_root: str | Path = RESULTS_DIR,
    runs_root: str | Path = "runs/reproduce",
    mnist: data.MNIST | None = None,
    device: str | None = None,
    threads: int | None = None,
    progress: bool = False,
    log: Callable[[str], None] = print,
    **recipe_changes: Any,
) -> dict[str, Any]:
    """Train seeds 0..seeds-1 with the model's ``recipe_kind`` recipe; return the results.

    ``recipe_changes`` override recipe fields (the results file records the recipe used).
    Seeds already recorded with the same recipe are kept, not retrained. A recorded seed
    whose recipe differs (the recipe was changed since) makes the whole file start over.
    """
    model_name = get_spec(model_name).name
    recipe = get_recipe(model_name, recipe_kind).replace(**recipe_changes)
    check_recipe(model_name, recipe)  # before any seed trains, not at the first one that is not resumed
    path = results_path(model_name, recipe_kind, results_root)
    previous = load_results(model_name, recipe_kind, results_root) or {}
    runs: list[dict[str, Any]] = []
    if _same_recipe(previous.get("recipe"), recipe.replace(seed=0)):
        runs = [run for run in previous.get("runs", []) if run["seed"] < seeds]

    def write_results() -> dict[str, Any]:
        results = {
            "model": model_name,
            "recipe_kind": recipe_kind,
            "recipe": recipe.replace(seed=0).to_dict(),
            "seeds": len(runs),
            "test_accuracy": seed_statistics([run["test_accuracy"] for run in runs]),
            # None when the runs trained on all 60k images (no validation split).
            "val_accuracy": (seed_statistics([run["val_accuracy"] for run in runs])
                             if recipe.val_size else None),
            "machine": {"platform": platform.platform(), "torch": torch.__version__,
                        "device": str(select_device(device)), "threads": torch.get_num_threads()},
            "command": tinydigits_line("reproduce", {"model": model_name, "recipe": recipe_kind,
                                                     **recipe_changes, "seeds": seeds}),
            "runs": runs,
        }
        if runs and "test_sets" in runs[0]:  # a number reader: each frozen set's figures over seeds
            results["test_sets"] = {
                kind: {metric: seed_statistics([run["test_sets"][kind][metric] for run in runs])
                       for metric in figures}
                for kind, figures in runs[0]["test_sets"].items()}
        write_text(path, json.dumps(results, indent=2) + "\n")
        summary = results["test_accuracy"]
        log(f"{model_name} {recipe_kind}: {len(runs)} seed(s), test accuracy "
            f"{summary['mean']:.2f}% +- {summary['std']:.2f} -> {path}")
        return results

    if runs and runs != previous.get("runs"):
        write_results()  # fewer seeds asked for than were recorded
    for seed in range(seeds):
        if any(run["seed"] == seed for run in runs):
            log(f"{model_name} {recipe_kind} seed {seed}: already in {path}")
            continue
        if mnist is None:
            mnist = data.load_mnist()
        run_dir = Path(runs_root) / f"{model_name}-{recipe_kind}-seed{seed}"
        resume = _prepare_run_dir(run_dir, recipe.replace(seed=seed))
        result = train(model_name, recipe.replace(seed=seed), mnist=mnist, run_dir=run_dir,
                       resume=resume, device=device, threads=threads, progress=progress, log=log)
        assert result.test is not None  # train() evaluates the test set by default
        runs.append({
            "seed": seed,
            "test_accuracy": round(result.test["accuracy"], 4),
            "val_accuracy": result.final["val_accuracy"],
            "epochs": len(result.history),
            "train_seconds": round(result.seconds, 1),
            "command": seed_command(model_name, recipe_kind, seed, recipe_changes),
            "run_dir": str(run_dir),
            **_trained_by(run_dir),  # the code that trained this seed
            "history": result.history,
            **({"test_sets": {kind: result.test[kind] for kind in SET_KINDS}}
               if "touching" in result.test else {}),
        })
        runs.sort(key=lambda run: run["seed"])
        write_results()
    return load_results(model_name, recipe_kind, results_root) or {}
