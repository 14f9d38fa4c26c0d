"""The ``tinydigits`` command line: a thin layer over the library, ``deploy`` and ``lab``.

Commands parse options and print; the work is done by the functions they call, imported
inside each command so that ``tinydigits --help`` stays quick.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from . import data
from .deploy.engines import BACKENDS
from .deploy.export import FORMATS
from .errors import TinyDigitsError, require
from .lab import DEFAULT_SEEDS
from .models import DEFAULT_READER, MODELS, READERS, REGISTRY, get_spec
from .read import DIGIT_WEIGHT, METHODS, TOUCHING_SHARE
from .runtime import package_version, set_threads
from .weights import get_weights, load_model, pretrained_path, shipped_models

MODEL_CHOICE = click.Choice(list(MODELS), case_sensitive=False)  # the digit models
ANY_MODEL_CHOICE = click.Choice(list(REGISTRY), case_sensitive=False)  # and the number readers
RECIPE_CHOICE = click.Choice(["default", "full", "reference"], case_sensitive=False)


def friendly_errors(command: Callable[..., Any]) -> Callable[..., Any]:
    """Turn the errors tinydigits raises on purpose into one ``Error: ...`` line and exit
    code 1; anything else is a bug and keeps its traceback."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except TinyDigitsError as err:
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
    help="CPU threads for torch (default: $TINYDIGITS_THREADS, else the cores other work leaves free).",
)
device_option = click.option("--device", default=None, help="cpu, cuda, cuda:N (default: CUDA if present).")
results_dir_option = click.option(
    "--results-dir", type=click.Path(file_okay=False, path_type=Path), default=Path("results"),
    show_default=True, help="Where results/<model>.json files are.",
)
models_or_all_option = click.option(
    "--model", "model_names", type=click.Choice([*REGISTRY, "all"], case_sensitive=False),
    default="all", show_default=True, help="A model, or all the digit models.",
)


def model_names_from(value: str) -> list[str]:
    """The models a ``--model`` option names, ``all`` meaning every one."""
    return list(MODELS) if value == "all" else [value]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="tinydigits")
def main() -> None:
    """Very small, very accurate CNNs for handwritten digits (MNIST)."""


@main.command()
@click.option("--model", "model_name", type=ANY_MODEL_CHOICE, default="medium", show_default=True)
@click.option("--recipe", "recipe_kind", type=RECIPE_CHOICE,
              default="default", show_default=True,
              help="default: the tuned recipe; full: the same on all 60,000 training images (no "
                   "validation split); reference: the original one.")
@recipe_options
@click.option("--subset", type=click.IntRange(min=2), default=None,
              help="Train on the first N training images only, the validation split taken from them "
                   "(as `tinydigits tune --subset` trains its trials).")
@click.option("--run-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where to write the run (default: runs/<model>-seed<seed>-<time>).")
@click.option("--resume", "resume_dir", type=click.Path(file_okay=False, path_type=Path),
              default=None, help="Continue the interrupted run in this directory.")
@click.option("--progress/--no-progress", default=True,
              help="Show a progress bar per epoch (on a terminal; never in a log).")
@data_dir_option
@device_option
@threads_option
@friendly_errors
def train(model_name: str, recipe_kind: str, subset: int | None, run_dir: Path | None,
          resume_dir: Path | None, progress: bool, data_dir: Path | None, device: str | None,
          threads: int | None, **overrides: Any) -> None:
    """Train a model and report its final-epoch test accuracy."""
    from .recipes import get_recipe
    from .train import train as run_training

    changes = {key: value for key, value in overrides.items() if value is not None}
    if resume_dir and (changes or subset is not None):
        raise click.UsageError("--resume continues a run with its saved recipe and subset; "
                               "recipe options and --subset cannot be combined with it")
    recipe = get_recipe(model_name, recipe_kind).replace(**changes)
    try:
        run_training(model_name, recipe, data_dir=data_dir,
                     run_dir=resume_dir or run_dir, resume=resume_dir is not None,
                     device=device, threads=threads, progress=progress, log=click.echo, subset=subset)
    except KeyboardInterrupt:
        where = resume_dir or run_dir or "the run directory printed above"
        click.echo(f"\ninterrupted; the last finished epoch is saved. Continue with: "
                   f"tinydigits train --resume {where}", err=True)
        raise SystemExit(130) from None


BACKEND_HELP = ("auto: the fastest engine installed (OpenVINO for batches, ONNX Runtime for single pictures "
                "and int8 files, else PyTorch); torch; onnxruntime (ONNX files, fp32 or int8) or openvino "
                "(fp32 ONNX files), or either on a weights file through its cached ONNX export; "
                "torchscript (runs the file's code: only files you trust).")


def backend_option(default: str = "auto") -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    return click.option("--backend", type=click.Choice(BACKENDS, case_sensitive=False), default=default,
                        show_default=True, help=BACKEND_HELP)


@main.command(name="eval")
@click.option("--model", "model_name", type=MODEL_CHOICE, required=True)
@click.option("--weights", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="A .safetensors file or a reference .pt/.pth state_dict, a TorchScript export or an ONNX "
                   "file (default: the pretrained weights shipped for --model).")
@backend_option()
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of text.")
@data_dir_option
@device_option
@threads_option
@friendly_errors
def evaluate_command(model_name: str, weights: Path | None, backend: str, as_json: bool,
                     data_dir: Path | None, device: str | None, threads: int | None) -> None:
    """Evaluate weights, or an exported model, on the 10,000 test images."""
    from .deploy.engines import open_engine
    from .evaluate import evaluate_log_probs

    set_threads(threads)
    weights = weights if weights is not None else pretrained_path(model_name)
    # Open what is evaluated before the data, so a bad file fails fast (and fetches nothing).
    engine = open_engine(model_name, weights, backend.lower(), device, threads=threads)
    mnist = data.load_mnist(data_dir)
    result = evaluate_log_probs(engine(data.normalize(mnist.test_images)), mnist.test_labels)
    if as_json:
        click.echo(json.dumps({"model": model_name, "weights": str(weights), "backend": engine.backend,
                               **result.to_dict()}))
        return
    click.echo(f"{model_name} {weights} ({engine.backend}): test accuracy {result.accuracy:.2f}% "
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

    result = summarize(build_model(model_name), name=model_name)
    click.echo(json.dumps(result.to_dict(), indent=2) if as_json else result.to_markdown())


@main.command(name="export")
@click.option("--model", "model_name", type=ANY_MODEL_CHOICE, default=None,
              help="The model (required, except for --format web: default the three digit models); "
                   "a number reader exports as fp32 ONNX only.")
@click.option("--weights", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Weights to export (default: the pretrained weights shipped with the package).")
@click.option("--format", "fmt", type=click.Choice([*FORMATS, "c", "web"], case_sensitive=False),
              default="onnx", show_default=True,
              help="onnx or torchscript (a file); c (a folder: integer-only C99 for microcontrollers); "
                   "web (a folder: the demo as a static site, the models running in the browser).")
@click.option("--int8", is_flag=True,
              help="ONNX: BatchNorm folded, static int8 quantization calibrated on training images "
                   "(the C export is always int8, with the same quantization).")
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True,
              help="The file to write (the folder, for --format c).")
@click.option("--verify/--no-verify", default=True, show_default=True,
              help="Run the export on the 10,000 test images and compare it with PyTorch "
                   "(--format c: compile verify.c with the host C compiler and run it).")
@data_dir_option
@threads_option
@friendly_errors
def export_command(model_name: str | None, weights: Path | None, fmt: str, int8: bool, output: Path,
                   verify: bool, data_dir: Path | None, threads: int | None) -> None:
    """Export a model to ONNX (fp32 or int8), TorchScript or integer-only C, or the web demo
    as a static site."""
    from .deploy.engines import check_export, check_reader_export, reader_check_strips
    from .deploy.export import calibration_subset, check_format, export_model, refuse_reader

    set_threads(threads)
    if model_name is not None:
        refuse_reader(model_name, fmt, int8)  # a number reader: fp32 ONNX only, refused before any work
    if fmt == "web":
        _export_web(model_name, weights, output, int8)
        return
    if model_name is None:
        raise click.UsageError(f"--model is required for --format {fmt}")
    if fmt == "c":
        _export_c(model_name, weights, output, verify, data_dir)
        return
    check_format(fmt, int8)  # before any slow work
    source = weights if weights is not None else pretrained_path(model_name)
    model = load_model(model_name, source)
    mnist = data.load_mnist(data_dir) if (int8 or verify) else None
    calibration = calibration_subset(mnist.train_images) if mnist is not None and int8 else None
    result = export_model(model, output, fmt, int8=int8, calibration_images=calibration,
                          model_name=model_name)
    kind = f"{fmt}{' int8' if int8 else ''}"
    click.echo(f"wrote {result.path} ({kind}): {result.size_bytes:,} bytes; "
               f"the fp32 weights file {source} is {source.stat().st_size:,} bytes")
    if mnist is None:
        return
    if get_spec(model_name).task == "number":
        checked = check_reader_export(model, result, reader_check_strips(mnist=mnist))
        click.echo(f"{checked.count // 2} pictures of the touching test set, each strip alone and all in "
                   f"one batch: {checked.prediction_mismatches} of {checked.count} readings differ from "
                   f"PyTorch's, max |log-prob difference| {checked.max_abs_diff:.2e}")
        return
    check = check_export(model, result, data.normalize(mnist.test_images), mnist.test_labels)
    click.echo(f"test accuracy {check.accuracy:.2f}% ({kind}) vs {check.reference_accuracy:.2f}% "
               f"(PyTorch fp32) on {check.count:,} images; {check.prediction_mismatches} predictions "
               f"differ, max |log-prob difference| {check.max_abs_diff:.2e}")


def _export_web(model_name: str | None, weights: Path | None, output: Path, int8: bool) -> None:
    from .deploy.static_site import export_site, previous_files

    if int8:
        raise click.UsageError("--int8 is not available for --format web: the site ships the fp32 models")
    if weights is not None and model_name is None:
        raise click.UsageError("--weights needs --model: which model are they?")
    names = [model_name] if model_name else shipped_models("digit")
    previous_files(output)  # a folder that will be refused is refused before anything is loaded
    models = {name: load_model(name, weights, pretrained=weights is None) for name in names}
    site = export_site(output, models, pretrained=weights is None)
    shipped = [path for path in site.files if path.startswith("models/")]  # the reader too
    weights_sizes = ", ".join(f"{path.removeprefix('models/')} {site.files[path]:,} B" for path in shipped)
    click.echo(f"wrote a static site of {len(site.files)} files, {site.total_bytes / 1e3:.0f} KB, "
               f"to {output} (model weights: {weights_sizes})")
    click.echo(f"try it on this machine: python -m http.server --bind 127.0.0.1 -d {output}  "
               "(or any static file host)")


def _export_c(model_name: str, weights: Path | None, output: Path, verify: bool,
              data_dir: Path | None) -> None:
    from .deploy.c_export import export_c, verify_c
    from .deploy.export import calibration_subset
    from .evaluate import evaluate
    from .io import file_sha256

    source = weights if weights is not None else pretrained_path(model_name)
    model = load_model(model_name, source)
    mnist = data.load_mnist(data_dir)
    provenance = f"From {source.name} (SHA-256 {file_sha256(source)[:16]}), tinydigits {package_version()}."
    result = export_c(model, model_name, output, calibration_subset(mnist.train_images), provenance)
    click.echo(f"wrote {result.header}, {result.source} and {result.verifier}: {result.table_bytes:,} bytes "
               f"of weight tables, {result.buffer_bytes:,} bytes of activation buffers")
    if not verify:
        return
    check = verify_c(result, mnist.test_images, mnist.test_labels)
    reference = evaluate(model, data.normalize(mnist.test_images), mnist.test_labels).accuracy
    click.echo(f"test accuracy {check.accuracy:.2f}% (C, integer-only) vs {reference:.2f}% (PyTorch fp32) "
               f"on {check.count:,} images; {check.images_per_second:,.0f} images/s on one core here")


@main.command()
@click.option("--model", "model_name", type=MODEL_CHOICE, required=True)
@click.option("--weights", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Weights to show (default: the pretrained weights shipped with the package).")
@click.option("--browser/--no-browser", default=True, show_default=True,
              help="Open a browser; without, print the URL and serve until Ctrl-C.")
@click.option("--port", type=click.IntRange(0, 65535), default=None,
              help="Local port (default: 8080 if free, else another; 0: any free port).")
@friendly_errors
def view(model_name: str, weights: Path | None, browser: bool, port: int | None) -> None:
    """Export to ONNX in a temporary directory and open it in Netron."""
    import logging
    import tempfile

    from .deploy.export import export_onnx

    netron = require("netron", "viz", "view")
    name = model_name
    model = load_model(name, weights, pretrained=weights is None)
    logging.getLogger("netron").setLevel(logging.WARNING)  # we print the URL ourselves
    with tempfile.TemporaryDirectory(prefix="tinydigits-view-") as tmp:
        path = export_onnx(model, Path(tmp) / f"{name}.onnx")
        try:
            host, bound = netron.start(str(path), address=("127.0.0.1", port), browse=browser)
        except OSError as err:
            raise click.ClickException(f"cannot serve on 127.0.0.1:{port}: {err.strerror or err}") from None
        click.echo(f"Netron is serving {name} at http://{host}:{bound} (Ctrl-C to stop)")
        try:
            netron.wait()  # returns after Ctrl-C, having stopped the server
        finally:
            netron.stop()


@main.command()
@click.option("--model", "model_name", type=MODEL_CHOICE, required=True)
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True,
              help="A .svg or .png file.")
@friendly_errors
def diagram(model_name: str, output: Path) -> None:
    """Draw the architecture with each layer's output shape (needs Graphviz's `dot`)."""
    from .lab.diagram import render_diagram

    click.echo(f"wrote {render_diagram(model_name, output)}")


@main.command()
@click.argument("sources", nargs=-1, required=True, metavar="IMAGE_OR_DIR...",
                type=click.Path(path_type=Path))
@click.option("--model", "model_name", type=MODEL_CHOICE, default="medium", show_default=True)
@click.option("--weights", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Weights file to load (default: the pretrained weights shipped for --model).")
@click.option("--top-k", type=click.IntRange(1, 10), default=3, show_default=True,
              help="How many of the most likely digits to list.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line per file.")
@click.option("--save-preprocessed", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Also save each 28x28 model input as a PNG in this directory.")
@backend_option()
@friendly_errors
def predict(sources: tuple[Path, ...], model_name: str, weights: Path | None, top_k: int, as_json: bool,
            save_preprocessed: Path | None, backend: str) -> None:
    """Classify pictures of handwritten digits (photos, scans, MNIST-style images).

    Directories are expanded to the image files inside them. A bad file gets one
    error line on stderr and the rest are still classified; the exit code is 1 if
    any file failed.
    """
    from .deploy.engines import open_engine
    from .predict import predict_files

    set_threads(None)
    engine = open_engine(model_name, weights if weights is not None else pretrained_path(model_name),
                         backend.lower(), batch=False)
    failed = 0
    for result in predict_files(engine, sources, top_k, save_dir=save_preprocessed):
        if result.warning:
            click.echo(f"Warning: {result.file}: {result.warning}", err=True)
        if not result.ok:
            failed += 1
            click.echo(f"Error: {result.file}: {result.error}", err=True)
            if as_json:
                click.echo(json.dumps(result.to_dict()))
        elif as_json:
            click.echo(json.dumps(result.to_dict()))
        else:
            ranked = ", ".join(f"{d} {p:.1%}" for d, p in result.top_k)
            click.echo(f"{result.file}: {result.digit} ({result.probability:.1%})  top-{top_k}: {ranked}")
    if failed:
        raise SystemExit(1)


@main.command(name="read")
@click.argument("sources", nargs=-1, required=True, metavar="IMAGE_OR_DIR...",
                type=click.Path(path_type=Path))
@click.option("--method", type=click.Choice(METHODS, case_sensitive=False), default="auto", show_default=True,
              help="sequence: a number reader reads the whole number (reads touching digits); segment: "
                   "the ink is cut into digits, each classified by a digit model; auto: sequence, or "
                   "segment when --model is a digit model.")
@click.option("--model", "model_name", type=ANY_MODEL_CHOICE, default=None,
              help=f"A number reader (sequence; default {DEFAULT_READER}) or a digit model (segment; default "
                   "medium).")
@click.option("--weights", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Weights file to load (default: the pretrained weights shipped for --model).")
@click.option("--digit-model", type=click.Choice([*MODELS, "none"], case_sensitive=False), default="medium",
              show_default=True,
              help="With --method sequence: the digit model that reads each digit the reader finds again "
                   "(none: the reader alone).")
@click.option("--json", "as_json", is_flag=True,
              help="One JSON object per line per file, with each digit's box.")
@click.option("--save-boxes", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Also save each picture with its digits' boxes drawn, as PNG in this directory.")
@backend_option()
@friendly_errors
def read_command(sources: tuple[Path, ...], method: str, model_name: str | None, weights: Path | None,
                 digit_model: str, as_json: bool, save_boxes: Path | None, backend: str) -> None:
    """Read whole numbers: the digits in each picture, left to right.

    Directories are expanded to the image files inside them. A bad file gets one
    error line on stderr and the rest are still read; the exit code is 1 if any failed.
    """
    from .deploy.engines import open_engine
    from .predict import expand_paths
    from .preprocess import PreprocessError, load_image
    from .read import draw_boxes, read_number

    set_threads(None)
    method = method.lower()
    if model_name is None:
        model_name = "medium" if method == "segment" else DEFAULT_READER
    if method == "auto":
        method = "sequence" if get_spec(model_name).task == "number" else "segment"
    if (get_spec(model_name).task == "number") != (method == "sequence"):
        needs = "a number reader" if method == "sequence" else "a digit model"
        raise click.UsageError(f"--method {method} reads with {needs}, not {model_name}")
    engine = open_engine(model_name, weights if weights is not None else pretrained_path(model_name),
                         backend.lower(), batch=False)
    digit_model = digit_model.lower()
    # One thread: a few 28x28 digits a picture, and a second pool's spinning threads would
    # take cores from the reader's.
    second = (open_engine(digit_model, pretrained_path(digit_model), backend.lower(), batch=False, threads=1)
              if method == "sequence" and digit_model != "none" else None)
    if save_boxes is not None:
        save_boxes.mkdir(parents=True, exist_ok=True)
    failed = 0
    saved: set[str] = set()
    for file, error in expand_paths(sources):
        try:
            if error is not None:
                raise PreprocessError(error)
            picture = load_image(file)
            reading = read_number(picture, engine, method, digit_model=second)
        except PreprocessError as err:
            message = str(err)
        except Exception as err:  # an unforeseen picture must not stop the batch (as predict)
            message = f"cannot process this image ({type(err).__name__}: {err})"
        else:
            message = None
            if save_boxes is not None:
                name, n = f"{Path(file).name}.png", 1
                while name in saved:  # the same file name in two folders
                    n += 1
                    name = f"{Path(file).name}-{n}.png"
                saved.add(name)
                try:
                    draw_boxes(picture, reading).save(save_boxes / name)
                except OSError as err:
                    message = f"cannot save the boxes picture ({err.strerror or err})"
        if message is not None:
            failed += 1
            click.echo(f"Error: {file}: {message}", err=True)
            if as_json:
                click.echo(json.dumps({"file": file, "error": message}))
            continue
        if as_json:
            click.echo(json.dumps({"file": file, **reading.to_dict()}))
        else:
            digits = "  ".join(f"{d.digit} {d.probability:.0%}" for d in reading.digits)
            click.echo(f"{file}: {reading.number}  ({digits})")
    if failed:
        raise SystemExit(1)


@main.command(name="read-eval")
@click.option("--count", type=click.IntRange(10, 100_000), default=1000, show_default=True,
              help="Pictures per frozen set (separate digits, touching digits); the first N of each.")
@click.option("--split", type=click.Choice(["test", "val"]), default="test", show_default=True,
              help="The frozen sets of MNIST test digits, or those of the validation digits (for choices).")
@click.option("--reader", "reader_name", type=click.Choice(list(READERS), case_sensitive=False),
              default=DEFAULT_READER, show_default=True, help="The number reader (--method sequence).")
@click.option("--model", "model_name", type=MODEL_CHOICE, default="medium", show_default=True,
              help="The digit model the segmenter classifies with (--method segment), and that reads "
                   "each digit the reader finds again (--method sequence).")
@click.option("--digit-weight", type=click.FloatRange(0, 10), default=DIGIT_WEIGHT, show_default=True,
              help="How much the digit model's log-probabilities count against the reader's (for choices "
                   "on --split val).")
@click.option("--touching-share", type=click.FloatRange(0, 1), default=TOUCHING_SHARE, show_default=True,
              help="The share of --digit-weight for a digit whose box a stroke crosses, as where digits "
                   "touch (for choices on --split val).")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path),
              default=Path("docs/READING.md"), show_default=True,
              help="The Markdown report; the raw figures go to reading.json beside it.")
@click.option("--save-boxes", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Also save the first few pictures of each set with the boxes read, as PNG.")
@click.option("--update-readme", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the table into this README, between its reading-table markers.")
@data_dir_option
@friendly_errors
def read_eval_command(count: int, split: str, reader_name: str, model_name: str, digit_weight: float,
                      touching_share: float, output: Path, save_boxes: Path | None,
                      update_readme: Path | None, data_dir: Path | None) -> None:
    """Measure `read`, both methods (the sequence reader also alone), on the frozen sets of
    numbers made of MNIST test digits (docs/READING.md)."""
    from .deploy.engines import open_engine
    from .lab.numbers import README_BLOCK, measure, readme_table, save_examples, write_report

    if update_readme is not None:  # before minutes of reading
        try:
            README_BLOCK.read(update_readme.read_text())
        except OSError as err:
            raise click.ClickException(f"{update_readme}: cannot read ({err.strerror or err})") from None
    set_threads(1)  # the figures' milliseconds: one picture at a time on one thread
    # Each engine on one thread too: two ONNX Runtime sessions of 2 threads each, their idle
    # threads spinning between calls, slowed each reading by ~5 ms on the 2 cores.
    reader = open_engine(reader_name, pretrained_path(reader_name), batch=False, threads=1)
    digits = open_engine(model_name, pretrained_path(model_name), batch=False, threads=1)
    readers = {f"sequence ({reader_name} + {model_name})": ("sequence", reader, digits),
               f"sequence ({reader_name} alone)": ("sequence", reader, None),
               f"segment ({model_name})": ("segment", digits, None)}
    options = {"count": count, **({"split": split} if split != "test" else {}), "reader": reader_name,
               "model": model_name,
               **({"digit_weight": digit_weight} if digit_weight != DIGIT_WEIGHT else {}),
               **({"touching_share": touching_share} if touching_share != TOUCHING_SHARE else {})}
    if split != "test" and (update_readme is not None or output == Path("docs/READING.md")):
        raise click.UsageError("--split val measures for choices: give it its own --output, "
                               "and no --update-readme")
    report = measure(readers, count, data_dir, options, split, digit_weight, touching_share)
    # Which shipped files were measured, so a test can tell figures of weights since replaced.
    report["weights_sha256"] = {name: get_weights(name).sha256 for name in (reader_name, model_name)}
    click.echo(f"wrote {write_report(report, output)} and {output.with_name('reading.json')}")
    for kind, figures_by_reader in report["sets"].items():
        for label, f in figures_by_reader.items():
            click.echo(f"{kind}, {label}: number exact {100 * f['exact'] / f['pictures']:.1f}%, digit count "
                       f"right {100 * f['right_count'] / f['pictures']:.1f}%, CER "
                       f"{100 * f['char_errors'] / f['chars']:.2f}% of {f['pictures']}")
    if save_boxes is not None:
        for path in save_examples(reader, "sequence", save_boxes, data_dir, digit_model=digits):
            click.echo(f"saved {path}")
    if update_readme is not None:
        changed = README_BLOCK.update(update_readme, readme_table(report))
        click.echo(f"{update_readme}: {'updated' if changed else 'already up to date'}", err=True)


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


@main.command()
@models_or_all_option
@click.option("--recipe", "recipe_kind", type=RECIPE_CHOICE,
              default="default", show_default=True)
@recipe_options
@click.option("--seeds", type=click.IntRange(min=1), default=DEFAULT_SEEDS, show_default=True,
              help="Train seeds 0..N-1; seeds already recorded with the same recipe are kept.")
@results_dir_option
@click.option("--runs-dir", type=click.Path(file_okay=False, path_type=Path),
              default=Path("runs/reproduce"), show_default=True)
@data_dir_option
@device_option
@threads_option
@friendly_errors
def reproduce(model_names: str, recipe_kind: str, seeds: int, results_dir: Path, runs_dir: Path,
              data_dir: Path | None, device: str | None, threads: int | None, **overrides: Any) -> None:
    """Train over several seeds and write results/<model>[-reference].json.

    Recipe options change the recipe (an experiment): give such runs their own --results-dir."""
    from .lab.reproduce import reproduce as run_seeds

    changes = {name: value for name, value in overrides.items() if value is not None}
    if "seed" in changes:
        raise click.UsageError("reproduce trains seeds 0..N-1; set how many with --seeds, not --seed")
    if changes and results_dir.resolve() == Path("results").resolve():
        # results/<model>.json holds the published figures of the recipe as it is in recipes.py.
        raise click.UsageError("recipe options make an experiment: give it its own folder, "
                               "e.g. --results-dir results/ablation/NAME")
    mnist = data.load_mnist(data_dir)
    for name in model_names_from(model_names):
        results = run_seeds(name, recipe_kind=recipe_kind, seeds=seeds, results_root=results_dir,
                            runs_root=runs_dir, mnist=mnist, device=device, threads=threads,
                            log=click.echo, **changes)
        summary = results["test_accuracy"]
        seeds = f"{results['seeds']} seed{'' if results['seeds'] == 1 else 's'}"
        click.echo(f"{name} ({recipe_kind} recipe, {seeds}): final-epoch test accuracy "
                   f"{summary['mean']:.2f}% +- {summary['std']:.2f} "
                   f"(min {summary['min']:.2f}, max {summary['max']:.2f})")


@main.command()
@models_or_all_option
@click.option("--recipe", "recipe_kind", type=click.Choice(["full", "default"], case_sensitive=False),
              default="full", show_default=True,
              help="full: seed 0 of results/<model>-full.json (all 60k images, nothing selected); "
                   "default: the best-validation seed of results/<model>.json.")
@results_dir_option
@data_dir_option
@friendly_errors
def publish(model_names: str, recipe_kind: str, results_dir: Path, data_dir: Path | None) -> None:
    """Ship one reproduced seed's weights in the package (see --recipe)."""
    from .lab.publish import pick_seed
    from .lab.publish import publish as publish_weights
    from .lab.reproduce import load_results, results_path

    mnist = data.load_mnist(data_dir)
    for name in model_names_from(model_names):
        results = load_results(name, recipe_kind, results_dir)
        if results is None:
            raise click.ClickException(f"{results_path(name, recipe_kind, results_dir)}: no such file; give "
                                       "--results-dir the checkout's results folder, or run: tinydigits "
                                       f"reproduce --model {name} --recipe {recipe_kind}")
        weights = publish_weights(results, mnist=mnist)
        val = "none" if weights.val_accuracy is None else f"{weights.val_accuracy:.2f}%"
        click.echo(f"{name}: shipped seed {pick_seed(results)['seed']} "
                   f"(validation {val}, test {weights.test_accuracy:.2f}%) "
                   f"-> {weights.path} sha256 {weights.sha256[:16]}...")


@main.command()
@results_dir_option
@click.option("--update-readme", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the table into this README, between its models-table markers.")
@click.option("--ablation", is_flag=True, help="The table of recipe experiments (results/ablation/*).")
@click.option("--readers", is_flag=True, help="The number readers' table (sizes, frozen test sets).")
@friendly_errors
def table(results_dir: Path, update_readme: Path | None, ablation: bool, readers: bool) -> None:
    """Print the Markdown models table, with --ablation the recipe experiments' table, or with
    --readers the number readers' (the README's tables are this output)."""
    from .lab.table import (
        ABLATION_BLOCK,
        READERS_BLOCK,
        README_BLOCK,
        ablation_table,
        models_table,
        readers_table,
    )

    if ablation and readers:
        raise click.UsageError("--ablation and --readers are two tables: ask for one")
    kind, block = ((ablation_table, ABLATION_BLOCK) if ablation else (readers_table, READERS_BLOCK) if readers
                   else (models_table, README_BLOCK))
    text = kind(results_dir)
    click.echo(text, nl=False)
    if update_readme is not None:
        changed = block.update(update_readme, text)
        click.echo(f"{update_readme}: {'updated' if changed else 'already up to date'}", err=True)


@main.command()
@click.option("--model", "model_name", type=MODEL_CHOICE, required=True)
@click.option("--weights", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Weights to evaluate (default: the pretrained weights shipped with the package).")
@click.option("--output-dir", type=click.Path(file_okay=False, path_type=Path), default=Path("docs/report"),
              show_default=True)
@data_dir_option
@threads_option
@friendly_errors
def report(model_name: str, weights: Path | None, output_dir: Path, data_dir: Path | None,
           threads: int | None) -> None:
    """Write the confusion matrix and the misclassified test digits as PNG files."""
    from .lab.plots import write_report

    set_threads(threads)
    name = model_name
    model = load_model(name, weights, pretrained=weights is None)
    written = write_report(model, name, data.load_mnist(data_dir), output_dir)
    click.echo(f"{name}: test accuracy {written['accuracy']:.2f}%, {written['errors']} misclassified")
    click.echo(f"wrote {written['confusion']}\nwrote {written['misclassified']}")


@main.command()
@models_or_all_option
@results_dir_option
@click.option("--output-dir", type=click.Path(file_okay=False, path_type=Path), default=Path("docs"),
              show_default=True)
@friendly_errors
def curves(model_names: str, results_dir: Path, output_dir: Path) -> None:
    """Plot the training curves of each shipped model's run, from results/<model>.json."""
    from .lab.plots import plot_shipped_curves

    for name in model_names_from(model_names):
        path = plot_shipped_curves(name, results_dir, output_dir / f"curves-{name}.png")
        click.echo(f"wrote {path}")


@main.command()
@click.option("--model", "model_name", type=MODEL_CHOICE, default="medium", show_default=True)
@click.option("--trials", type=click.IntRange(min=0), default=20, show_default=True,
              help="Trials this process runs (other workers on the same study add theirs); "
                   "0 runs none, e.g. to --export a study.")
@click.option("--storage", default=None,
              help="Optuna storage URL shared by all workers (default: sqlite:///runs/tune/<model>.db).")
@click.option("--study-name", default=None, help="Default: tinydigits-<model>.")
@click.option("--subset", type=click.IntRange(min=2), default=None,
              help="Train trials on the first N training images only (a quick trial of the set-up; "
                   "the validation split comes out of these, so give --val-size too).")
@click.option("--export", "export_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Afterwards write all the study's trials (every worker's) to this JSON file.")
@recipe_options
@data_dir_option
@device_option
@threads_option
@friendly_errors
def tune(model_name: str, trials: int, storage: str | None, study_name: str | None, subset: int | None,
         export_path: Path | None, data_dir: Path | None, device: str | None, threads: int | None,
         **overrides: Any) -> None:
    """Search recipe hyper-parameters with Optuna, scored on validation accuracy only.

    Recipe options fix fields the search leaves alone (e.g. --epochs); those it searches it sets."""
    from .lab.tune import export_trials, recipe_command
    from .lab.tune import tune as run_study

    name = model_name
    changes = {key: value for key, value in overrides.items() if value is not None}
    study = run_study(name, trials, storage=storage, study_name=study_name, subset=subset,
                      data_dir=data_dir, device=device, threads=threads, log=click.echo, **changes)
    finished = [trial for trial in study.trials if trial.value is not None]
    if finished:
        best = study.best_trial
        trials_run = f"{len(study.trials)} trial{'' if len(study.trials) == 1 else 's'}"
        click.echo(f"best of {trials_run}: #{best.number}, "
                   f"validation accuracy {best.value:.2f}%")
        command = recipe_command(name, best.user_attrs["recipe"], best.user_attrs.get("subset"))
        click.echo(f"train it with: {command}")
    else:
        click.echo(f"no finished trials yet in study {study.study_name!r}")
    if export_path is not None:
        click.echo(f"wrote {export_trials(study, name, export_path)}")


@main.command(name="serve")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on; the default is this machine only.")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True,
              help="Port to listen on (0: any free port).")
@click.option("--models", "model_names", type=MODEL_CHOICE, multiple=True,
              help="A model to serve; repeat for several (default: every shipped digit model).")
@click.option("--server-threads", type=click.IntRange(min=1), default=None,
              help="waitress worker threads, i.e. requests handled at once (default 8: drawings keep a free "
                   "thread while photos of numbers are read).")
@click.option("--in-browser", is_flag=True,
              help="Also let the page run the models in the visitor's browser (plain JavaScript), "
                   "switchable on the page.")
@backend_option()
@threads_option
@friendly_errors
def serve_command(host: str, port: int, model_names: tuple[str, ...], server_threads: int | None,
                  in_browser: bool, backend: str, threads: int | None) -> None:
    """Serve the web demo (draw a digit, see the models read it) and its JSON API with waitress."""
    for needed in ("flask", "waitress"):
        require(needed, "web", "the web demo")
    from .deploy import serve as web

    set_threads(threads)
    names = list(dict.fromkeys(model_names)) or None
    web.check_host(host, port)  # before any download
    try:
        web.serve(host, port, names, threads=server_threads or web.DEFAULT_SERVER_THREADS,
                  backend=backend.lower(), announce=click.echo, in_browser=in_browser)
    except OSError as err:
        raise click.ClickException(f"cannot serve on {host}:{port}: {err.strerror or err}") from None
    click.echo("stopped")


@main.command(name="loadtest")
@click.option("--clients", type=click.IntRange(min=1), default=20, show_default=True,
              help="Concurrent clients, each sending one request at a time.")
@click.option("--duration", type=click.FloatRange(min=0.1), default=20.0, show_default=True, help="Seconds.")
@click.option("--model", "model_name", type=MODEL_CHOICE, default="medium", show_default=True)
@click.option("--samples", type=click.IntRange(min=1), default=200, show_default=True,
              help="How many different drawn test digits to send.")
@click.option("--readers", type=click.IntRange(min=0), default=0, show_default=True,
              help="More clients posting 12 MP phone photos of numbers to /api/read during the load "
                   "(after a round of the drawings alone, to compare).")
@click.option("--server-threads", type=click.IntRange(min=1), default=4, show_default=True,
              help="waitress worker threads of the server started for the test.")
@click.option("--url", default=None, help="Load this running server instead of starting one "
                                          "(its memory is then not measured).")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the figures as Markdown to this file (e.g. docs/LOADTEST.md).")
@data_dir_option
@threads_option
@friendly_errors
def loadtest_command(clients: int, duration: float, model_name: str, samples: int, readers: int,
                     server_threads: int, url: str | None, output: Path | None, data_dir: Path | None,
                     threads: int | None) -> None:
    """Load-test the web demo: concurrent clients post drawn MNIST digits, every answer is checked.

    Starts `tinydigits serve` in a subprocess on a free loopback port (unless --url is
    given), reports median and 99th-percentile latency and the server's peak memory, and
    exits with 1 if any request failed or was answered wrongly."""
    from .io import write_text
    from .lab.loadtest import load_test

    set_threads(threads)  # for choosing the samples here; the server gets --threads too
    result = load_test(clients=clients, duration=duration, model=model_name, count=samples,
                       server_threads=server_threads, torch_threads=threads, url=url, data_dir=data_dir,
                       readers=readers)
    click.echo(result.summary())
    if output is not None:
        write_text(output, result.to_markdown(output))
        click.echo(f"wrote {output}")
    for example in result.examples:
        click.echo(f"problem: {example}", err=True)
    if not result.ok:
        raise SystemExit(1)


@main.command(name="mcu")
@click.option("--models", "model_names", type=MODEL_CHOICE, multiple=True,
              help="A model to measure; repeat for several (default: every digit model).")
@click.option("--qemu-images", type=click.IntRange(1, 10_000), default=1000, show_default=True,
              help="Test images to run on the emulated Cortex-M3.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path),
              default=Path("docs/MCU.md"), show_default=True,
              help="The Markdown report; the raw figures go to mcu.json beside it.")
@click.option("--update-readme", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the table into this README, between its mcu-table markers.")
@data_dir_option
@friendly_errors
def mcu_command(model_names: tuple[str, ...], qemu_images: int, output: Path, update_readme: Path | None,
                data_dir: Path | None) -> None:
    """The C export on Cortex-M: flash, RAM, accuracy, and a run on QEMU (writes docs/MCU.md)."""
    from .lab.mcu import README_BLOCK, measure, readme_table, write_report

    shipped = shipped_models("digit")
    names = list(dict.fromkeys(model_names)) or shipped
    if update_readme is not None:  # before minutes of measuring
        if set(names) != set(shipped):
            raise click.UsageError("--update-readme writes every shipped model's row: leave out --models")
        try:
            README_BLOCK.read(update_readme.read_text())
        except OSError as err:
            raise click.ClickException(f"{update_readme}: cannot read ({err.strerror or err})") from None
    report = measure(names, qemu_images, data_dir)
    click.echo(f"wrote {write_report(report, output)} and {output.with_name('mcu.json')}")
    if update_readme is not None:
        changed = README_BLOCK.update(update_readme, readme_table(report))
        click.echo(f"{update_readme}: {'updated' if changed else 'already up to date'}", err=True)


@main.command(name="bench")
@click.option("--models", "model_names", type=MODEL_CHOICE, multiple=True,
              help="A model to measure; repeat for several (default: every digit model).")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="CPU threads for torch and ONNX Runtime (default: $TINYDIGITS_THREADS, else 2).")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path),
              default=Path("docs/BENCHMARKS.md"), show_default=True,
              help="The Markdown report; the raw figures go to benchmarks.json beside it.")
@click.option("--quick", is_flag=True, help="Few, short windows on small subsets: a smoke test.")
@click.option("--update-readme", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the inference summary into this README, between its speed-table markers.")
@click.option("--time-to-accuracy/--no-time-to-accuracy", "time_to_accuracy", default=True, show_default=True,
              help="Train MNIST-Medium to the end with both recipes (about 8 minutes on 2 cores).")
@data_dir_option
@device_option
@friendly_errors
def bench_command(model_names: tuple[str, ...], threads: int | None, output: Path, quick: bool,
                  update_readme: Path | None, time_to_accuracy: bool, data_dir: Path | None,
                  device: str | None) -> None:
    """Measure training and inference speed here and write docs/BENCHMARKS.md (+ benchmarks.json)."""
    from .lab.bench import run_benchmark, write_report
    from .lab.bench.report import README_BLOCK, readme_table

    if update_readme is not None:  # before a quarter of an hour of measuring
        if quick or (model_names and set(model_names) != set(MODELS)) or (device or "cpu") != "cpu":
            raise click.UsageError("--update-readme takes a full CPU run of every model "
                                   "(no --quick, --models or --device)")
        try:
            README_BLOCK.read(update_readme.read_text())
        except OSError as err:
            raise click.ClickException(f"{update_readme}: cannot read ({err.strerror or err})") from None

    names = list(dict.fromkeys(model_names)) or None
    results = run_benchmark(names, device=device, threads=threads, quick=quick,
                            time_to_accuracy_too=time_to_accuracy, data_dir=data_dir,
                            log=lambda line: click.echo(f"bench: {line}", err=True))
    markdown, raw = write_report(results, output)
    click.echo(f"wrote {markdown} and {raw}")
    if update_readme is not None:
        changed = README_BLOCK.update(update_readme, readme_table(results))
        click.echo(f"{update_readme}: {'updated' if changed else 'already up to date'}", err=True)
