"""The release step: ship one seed of a reproduction inside the package.

From a ``full`` reproduction (all 60,000 training images) that is seed 0: nothing is chosen.
From one with a validation split it is the best-validation seed.

Writes ``pretrained/<model>.safetensors`` with full metadata (see
:class:`tinydigits.weights.WeightsMeta`) and records its size and SHA-256 in
``pretrained/manifest.json``. The test set measures the chosen file again but chooses nothing.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any

from .. import data
from ..errors import ConfigError
from ..evaluate import evaluate
from ..io import file_sha256, save_weights, write_text
from ..models import count_parameters, get_spec
from ..recipes import Recipe
from ..runtime import UNKNOWN
from ..sequence import test_figures
from ..weights import PRETRAINED_DIR, Weights, WeightsMeta, get_weights, load_model, read_manifest


def pick_seed(results: dict[str, Any]) -> dict[str, Any]:
    """The run to ship: seed 0 of runs without a validation split (no selection at all),
    else the highest final-epoch validation accuracy, lowest seed on a tie.
    Test accuracy plays no part in the choice."""
    if results["recipe"].get("val_size") == 0:
        return min(results["runs"], key=lambda run: run["seed"])
    return max(results["runs"], key=lambda run: (run["val_accuracy"], -run["seed"]))


def how_chosen(results: dict[str, Any]) -> str:
    """The ``chosen_by`` line of the shipped file's metadata."""
    seeds = len(results["runs"])
    if results["recipe"].get("val_size") == 0:
        return (f"seed 0 of {seeds}, trained on all 60,000 training images (no validation split), "
                "final epoch: nothing selected")
    return f"highest final-epoch validation accuracy among {seeds} seed{'' if seeds == 1 else 's'}"


def publish(
    results: dict[str, Any],
    *,
    mnist: data.MNIST,
    weights_dir: str | Path = PRETRAINED_DIR,
) -> Weights:
    """Copy the final weights of the best-validation run in ``results`` into ``weights_dir``
    with full metadata, and record their size and SHA-256 in the manifest."""
    name = results["model"]
    run = pick_seed(results)
    weights_dir = Path(weights_dir)
    final = Path(run["run_dir"]) / "final.safetensors"
    if not final.is_file():  # run folders are not committed: a fresh clone has results, no runs
        again = f"{run['command']} --run-dir {shlex.quote(run['run_dir'])}"
        raise ConfigError(f"{final}: no such file; the {results.get('recipe_kind', 'default')} results "
                          f"record seed {run['seed']} of {name} as trained in {run['run_dir']}, which is not "
                          f"here: run publish where that folder is, or train it again: {again}")
    model = load_model(name, final)
    # Measured again through the public loading path, so the recorded figure is exactly
    # what a user of the shipped file gets.
    if get_spec(name).task == "number":  # the frozen test sets of numbers
        figures = test_figures(model, mnist)
        accuracy, loss = figures.pop("accuracy"), None
    else:
        test = evaluate(model, data.normalize(mnist.test_images), mnist.test_labels)
        figures, accuracy, loss = {}, test.accuracy, round(test.loss, 6)
    meta = WeightsMeta(
        model=name,
        parameters=count_parameters(model),
        recipe=Recipe.from_dict({**results["recipe"], "seed": run["seed"]}),
        seed=run["seed"],
        epochs=run["epochs"],
        val_accuracy=run["val_accuracy"],
        test_accuracy=round(accuracy, 4),
        test_loss=loss,
        test_metrics=figures,
        chosen_by=how_chosen(results),
        command=run["command"],
        # The code that trained the run, as reproduce recorded it.
        package_version=run.get("package_version", UNKNOWN),
        git_commit=run.get("git_commit", UNKNOWN),
    )
    path = save_weights(model, weights_dir / f"{name}.safetensors", meta.to_dict())
    manifest = read_manifest(weights_dir)
    manifest[name] = {"file": path.name, "bytes": path.stat().st_size, "sha256": file_sha256(path)}
    write_text(weights_dir / "manifest.json", json.dumps(dict(sorted(manifest.items())), indent=2) + "\n")
    return get_weights(name, weights_dir)
