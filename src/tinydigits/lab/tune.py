"""Hyper-parameter search over the recipe with Optuna, scored on the validation split only.

A study lives in an Optuna storage: by default a local SQLite file, or any storage URL
(for example ``postgresql://user@host/db``), so several processes or machines can run
``tinydigits tune`` against the same study at once; each takes the next trial. The test
set is never evaluated here.
"""

from __future__ import annotations

import json
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from .. import data
from ..errors import ConfigError, first_line, require
from ..io import write_text
from ..models import get_spec
from ..recipes import Recipe, get_recipe
from ..train import check_recipe, train
from .commands import tinydigits_line


def default_storage(model_name: str) -> str:
    return f"sqlite:///runs/tune/{get_spec(model_name).name}.db"


# scheme://user:PASSWORD@host...: the password runs to the last @ (SQLAlchemy's rule is the
# first, but hiding too much is the safe side).
_PASSWORD = re.compile(r"^(?P<head>[\w+.-]+://[^:/@]*:)(?P<password>.*)@")


def redact(url: str) -> str:
    """A storage URL fit to print: its password, if any, replaced by ``***``."""
    return _PASSWORD.sub(r"\g<head>***@", url, count=1)


def _storage_error(storage: str, err: BaseException) -> str:
    """The first line of a storage error, with the URL's password hidden should the driver echo it."""
    text = first_line(err)
    found = _PASSWORD.match(storage)
    password = found["password"] if found else ""
    for form in {password, unquote(password)} - {""}:
        text = text.replace(form, "***")
    return text


# The recipe fields `suggest_recipe` searches.
SEARCHED_FIELDS = ("lr", "weight_decay", "batch_size", "warmup", "dropout", "rotation", "elastic",
                   "translate", "scale", "label_smoothing")


def suggest_recipe(trial: Any, base: Recipe) -> Recipe:
    """The search space: around the default recipe, wide enough to find a better one."""
    return base.replace(
        lr=trial.suggest_float("lr", 0.02, 0.4, log=True),
        weight_decay=trial.suggest_float("weight_decay", 1e-5, 3e-3, log=True),
        batch_size=trial.suggest_categorical("batch_size", [64, 128, 256]),
        warmup=trial.suggest_float("warmup", 0.1, 0.4),
        dropout=trial.suggest_float("dropout", 0.0, 0.1),
        rotation=trial.suggest_float("rotation", 0.0, 15.0),
        elastic=trial.suggest_float("elastic", 0.0, 30.0),
        translate=trial.suggest_float("translate", 0.0, 0.15),
        scale=trial.suggest_float("scale", 0.0, 0.15),
        label_smoothing=trial.suggest_float("label_smoothing", 0.0, 0.1),
    )


def tune(
    model_name: str,
    trials: int,
    *,
    storage: str | None = None,
    study_name: str | None = None,
    subset: int | None = None,
    mnist: data.MNIST | None = None,
    data_dir: str | Path | None = None,
    runs_root: str | Path = "runs/tune",
    device: str | None = None,
    threads: int | None = None,
    log: Callable[[str], None] = print,
    **recipe_changes: Any,
) -> Any:
    """Run ``trials`` more trials of the study (created on first use; 0 only opens it); returns it.
    ``recipe_changes`` fix recipe fields outside the search space (e.g. ``epochs``, ``val_size``);
    ``subset`` trains on the first ``subset`` training images only."""
    optuna = require("optuna", "tune", "tuning")
    model_name = get_spec(model_name).name
    if get_spec(model_name).task != "digit":
        raise ConfigError(f"tune searches the digit models' recipe fields; {model_name} is not a digit model")
    base = get_recipe(model_name).replace(**recipe_changes)
    check_recipe(model_name, base)  # before the study or a run folder is made
    storage = storage or default_storage(model_name)
    if storage.startswith("sqlite:///"):
        Path(storage.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    study_name = study_name or f"tinydigits-{model_name}"
    if base.val_size <= 0:
        raise ConfigError("tuning scores validation accuracy, so it needs val_size > 0")
    if subset is not None and subset <= base.val_size:
        raise ConfigError(f"--subset {subset} leaves nothing to train on after the {base.val_size}-image "
                          "validation split; give a smaller --val-size")
    if trials == 0:  # only read the study, e.g. to export it
        try:
            return optuna.load_study(study_name=study_name, storage=storage)
        except KeyError:
            raise ConfigError(f"no study {study_name!r} in {redact(storage)!r}; give --study-name, or run "
                              "some trials first") from None
        except Exception as err:
            raise ConfigError(f"cannot open Optuna storage {redact(storage)!r}: "
                              f"{_storage_error(storage, err)}") from None
    try:
        try:
            study = optuna.create_study(study_name=study_name, storage=storage, direction="maximize")
            # The worker that creates the study makes the base recipe its first trial, so the
            # study shows what, if anything, beats it.
            study.enqueue_trial({name: getattr(base, name) for name in SEARCHED_FIELDS})
        except optuna.exceptions.DuplicatedStudyError:
            study = optuna.load_study(study_name=study_name, storage=storage)
    except Exception as err:  # sqlalchemy and optuna raise many types for a bad URL
        raise ConfigError(f"cannot open Optuna storage {redact(storage)!r}: "
                          f"{_storage_error(storage, err)}") from None
    mnist = mnist if mnist is not None else data.load_mnist(data_dir)

    def objective(trial: Any) -> float:
        recipe = suggest_recipe(trial, base)
        # A fresh directory per trial, so another storage's study of the same name never collides.
        Path(runs_root).mkdir(parents=True, exist_ok=True)
        run_dir = Path(tempfile.mkdtemp(prefix=f"{study_name}-trial{trial.number:04d}-", dir=runs_root))
        trial.set_user_attr("run_dir", str(run_dir))
        trial.set_user_attr("recipe", recipe.to_dict())
        trial.set_user_attr("subset", subset)  # for the command that trains the same again
        result = train(model_name, recipe, mnist=mnist, run_dir=run_dir, device=device, threads=threads,
                       evaluate_test=False, progress=False, log=lambda line: None, subset=subset)
        accuracy = result.final["val_accuracy"]
        log(f"trial {trial.number}: validation accuracy {accuracy:.2f}% with {trial.params}")
        return accuracy

    study.optimize(objective, n_trials=trials)
    return study


def recipe_command(model_name: str, recipe: dict[str, Any], subset: int | None = None) -> str:
    """The ``tinydigits train`` command that trains what a trial trained: its recipe (the
    fields that differ from the model's default recipe, as options) on the same ``subset``
    of the training images."""
    default = get_recipe(model_name).to_dict()
    changed = {key: value for key, value in recipe.items() if value != default.get(key)}
    return tinydigits_line("train", {"model": model_name, **changed, "subset": subset})


def export_trials(study: Any, model_name: str, path: str | Path) -> Path:
    """Write every trial of ``study`` to a JSON file small enough to commit, so that a search
    can be inspected without its database: each trial's state, validation accuracy, searched
    values and the ``tinydigits train`` command for its recipe, best first. The storage URL
    is left out (it may hold a password)."""
    trials = []
    for trial in study.trials:
        recipe = trial.user_attrs.get("recipe")
        trials.append({
            "number": trial.number,
            "state": trial.state.name.lower(),
            "val_accuracy": trial.value,
            "params": trial.params,
            "seconds": round(trial.duration.total_seconds(), 1) if trial.duration else None,
            "command": recipe_command(model_name, recipe, trial.user_attrs.get("subset")) if recipe else None,
        })
    trials.sort(key=lambda t: (t["val_accuracy"] is None, -(t["val_accuracy"] or 0), t["number"]))
    document = {"study": study.study_name, "model": model_name, "direction": study.direction.name.lower(),
                "trials": trials}
    return write_text(path, json.dumps(document, indent=1) + "\n")
