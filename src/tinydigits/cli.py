"""The ``tinydigits`` command line: a thin layer over the library."""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from . import data
from .checkpoint import WeightsError
from .models import MODELS

MODEL_CHOICE = click.Choice(list(MODELS), case_sensitive=False)
EXPECTED_ERRORS = (data.DataError, WeightsError, ValueError)


def friendly_errors(command: Callable[..., Any]) -> Callable[..., Any]:
    """Turn the library's expected failures into one ``Error: ...`` line, not a traceback."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except EXPECTED_ERRORS as err:
            raise click.ClickException(str(err)) from None

    return wrapper


def recipe_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """One ``--field`` option per Recipe field, so every field is overridable and the
    list of options can never drift from the recipe."""
    from .recipes import Recipe

    for field in reversed(dataclasses.fields(Recipe)):
        flag = field.name.replace("_", "-")
        if field.type in ("bool", bool):
            decl = f"--{flag}/--no-{flag}"
            command = click.option(decl, field.name, default=None, help="Recipe override.")(command)
        else:
            kind = {"int": int, "float": float, "str": str}[str(field.type)]
            command = click.option(f"--{flag}", field.name, type=kind, default=None,
                                   help=f"Recipe override ({field.type!s}).")(command)
    return command


data_dir_option = click.option(
    "--data-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
    help="Where the MNIST IDX files are (default: $TINYDIGITS_DATA, else a per-user cache).",
)
threads_option = click.option(
    "--threads", type=click.IntRange(min=1), default=None,
    help="CPU threads for torch (default: $TINYDIGITS_THREADS, else torch's choice).",
)
device_option = click.option("--device", default=None, help="cpu, cuda, cuda:N (default: CUDA if present).")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="tinydigits")
def main() -> None:
    """Very small, very accurate CNNs for handwritten digits (MNIST)."""


@main.command()
@click.option("--model", "model_name", type=MODEL_CHOICE, default="medium", show_default=True)
@click.option("--recipe", "recipe_kind", type=click.Choice(["default", "reference"]),
              default="default", show_default=True,
              help="The tuned default recipe or the original reference one.")
@recipe_options
@click.option("--run-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where to write the run (default: runs/<model>-seed<seed>-<time>).")
@click.option("--resume", "resume_dir", type=click.Path(file_okay=False, path_type=Path),
              default=None, help="Continue the interrupted run in this directory.")
@click.option("--progress/--no-progress", default=True, help="Show a progress bar per epoch.")
@data_dir_option
@device_option
@threads_option
@friendly_errors
def train(model_name: str, recipe_kind: str, run_dir: Path | None, resume_dir: Path | None,
          progress: bool, data_dir: Path | None, device: str | None, threads: int | None,
          **overrides: Any) -> None:
    """Train a model and report its final-epoch test accuracy."""
    from .recipes import get_recipe
    from .train import train as run_training

    changes = {key: value for key, value in overrides.items() if value is not None}
    if resume_dir and changes:
        raise click.UsageError("--resume continues a run with its saved recipe; "
                               "recipe options cannot be combined with it")
    recipe = get_recipe(model_name.lower(), recipe_kind).replace(**changes)
    try:
        run_training(model_name.lower(), recipe, data_dir=data_dir,
                     run_dir=resume_dir or run_dir, resume=resume_dir is not None,
                     device=device, threads=threads, progress=progress, log=click.echo)
    except KeyboardInterrupt:
        where = resume_dir or run_dir or "the run directory printed above"
        click.echo(f"\ninterrupted; the last finished epoch is saved. Continue with: "
                   f"tinydigits train --resume {where}", err=True)
        raise SystemExit(130) from None


@main.command(name="eval")
@click.option("--model", "model_name", type=MODEL_CHOICE, required=True)
@click.option("--weights", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="A .safetensors file, or a reference .pt/.pth state_dict.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of text.")
@data_dir_option
@device_option
@threads_option
@friendly_errors
def evaluate_command(model_name: str, weights: Path, as_json: bool, data_dir: Path | None,
                     device: str | None, threads: int | None) -> None:
    """Evaluate weights on the 10,000 test images."""
    from .checkpoint import load_model
    from .evaluate import evaluate
    from .runtime import select_device, set_threads

    set_threads(threads)
    model = load_model(model_name.lower(), weights, device=select_device(device))
    mnist = data.load_mnist(data_dir)
    result = evaluate(model, data.normalize(mnist.test_images), mnist.test_labels)
    if as_json:
        click.echo(json.dumps({"model": model_name.lower(), "weights": str(weights),
                               **result.to_dict()}))
        return
    click.echo(f"{model_name.lower()} {weights}: test accuracy {result.accuracy:.2f}% "
               f"({result.count} images), loss {result.loss:.4f}")
    click.echo("per-class accuracy: " + "  ".join(
        f"{digit}: {acc:.2f}%" for digit, acc in enumerate(result.per_class_accuracy)))
    click.echo("confusion matrix (rows: true digit, columns: predicted):")
    click.echo("      " + "".join(f"{d:>6}" for d in range(10)))
    for digit, row in enumerate(result.confusion):
        click.echo(f"{digit:>6}" + "".join(f"{n:>6}" for n in row))


@main.command()
@click.option("--model", "model_name", type=MODEL_CHOICE, required=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def summary(model_name: str, as_json: bool) -> None:
    """Per layer: output shape, parameters, receptive field, jump and MACs."""
    from .analysis import summarize
    from .models import build_model

    result = summarize(build_model(model_name.lower()), name=model_name.lower())
    click.echo(json.dumps(result.to_dict(), indent=2) if as_json else result.to_markdown())


@main.command(name="models")
def list_models() -> None:
    """List the models with their parameter counts."""
    for spec in MODELS.values():
        click.echo(f"{spec.name:<11} {spec.title:<17} {spec.parameters:>6,} parameters  "
                   f"{spec.conv_blocks} conv blocks")


@main.group(name="data")
def data_group() -> None:
    """Get and check the MNIST files."""


@data_group.command()
@data_dir_option
@friendly_errors
def fetch(data_dir: Path | None) -> None:
    """Download any missing MNIST file and verify all four."""
    where = data.fetch_mnist(data_dir)
    mnist = data.load_mnist(where, fetch=False)
    click.echo(f"MNIST ready in {where}: {len(mnist.train_labels)} training and "
               f"{len(mnist.test_labels)} test images, SHA-256 verified")
