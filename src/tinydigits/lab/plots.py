"""Pictures to look at: training curves, the confusion matrix, the misclassified digits.

matplotlib is an optional extra (``pip install tinydigits[plots]``); it is imported
only here, with the non-interactive Agg backend so plotting works on a headless machine.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from .. import data
from ..errors import ConfigError, require
from ..evaluate import evaluate_log_probs, predict_log_probs
from ..io import atomic_write
from ..models import get_spec
from ..weights import get_weights
from .reproduce import load_results, results_path


def _pyplot() -> Any:
    matplotlib = require("matplotlib", "plots", "plotting")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(figure: Any, output: str | Path) -> Path:
    plt = _pyplot()
    path = atomic_write(output, lambda tmp: figure.savefig(tmp, format="png", dpi=120,
                                                           bbox_inches="tight"))
    plt.close(figure)
    return path


def plot_training_curves(history: list[dict[str, Any]], title: str, output: str | Path) -> Path:
    """Loss and accuracy per epoch, train and validation (when the run had a validation
    split), from a run's metrics."""
    plt = _pyplot()
    epochs = [h["epoch"] for h in history]
    figure, (loss_axis, accuracy_axis) = plt.subplots(1, 2, figsize=(10, 3.8))
    for axis, metric, label in ((loss_axis, "loss", "NLL loss"), (accuracy_axis, "accuracy", "accuracy (%)")):
        axis.plot(epochs, [h[f"train_{metric}"] for h in history], marker="o", label="train (augmented)")
        if history[0].get(f"val_{metric}") is not None:
            axis.plot(epochs, [h[f"val_{metric}"] for h in history], marker="o", label="validation")
        axis.set_xlabel("epoch")
        axis.set_ylabel(label)
        axis.grid(alpha=0.3)
        axis.legend()
    loss_axis.set_yscale("log")
    lowest = min(min(h["train_accuracy"], h.get("val_accuracy") or 100) for h in history)
    accuracy_axis.set_ylim(lowest - 0.5, 100.2)
    figure.suptitle(title)
    return _save(figure, output)


def plot_shipped_curves(name: str, results_root: str | Path, output: str | Path) -> Path:
    """The training curves of the run whose final weights ship in the package."""
    meta = get_weights(name).meta
    seed, kind = meta.seed, "full" if meta.recipe.val_size == 0 else "default"
    results = load_results(name, kind, results_root)
    if results is None:  # outside the checkout, say, where results/ is not
        raise ConfigError(f"{results_path(name, kind, results_root)}: no such file, so the shipped weights' "
                          f"run (seed {seed}) is not in {results_root}; run this in the tinydigits checkout "
                          "or give --results-dir the checkout's results folder")
    runs = {run["seed"]: run for run in results.get("runs", [])}
    if seed not in runs:
        raise ConfigError(f"{name}: the shipped weights' run (seed {seed}) is not in {results_root}; "
                         "run tinydigits reproduce and publish first")
    recipe = "default recipe on all 60,000 training images" if kind == "full" else "default recipe"
    title = f"{get_spec(name).title}, shipped weights (seed {seed}): {recipe}"
    return plot_training_curves(runs[seed]["history"], title, output)


def plot_confusion_matrix(confusion: list[list[int]], title: str, output: str | Path) -> Path:
    """Counts of true (rows) against predicted (columns) digits; the diagonal is dimmed so
    the errors stand out."""
    plt = _pyplot()
    counts = torch.tensor(confusion)
    errors = counts.clone().fill_diagonal_(0)
    figure, axis = plt.subplots(figsize=(6.4, 5.6))
    image = axis.imshow(errors.numpy(), cmap="Reds")
    figure.colorbar(image, ax=axis, label="misclassified test images")
    for true in range(10):
        for predicted in range(10):
            value = int(counts[true, predicted])
            if value:
                on_dark = errors[true, predicted] > errors.max() / 2
                axis.text(predicted, true, str(value), ha="center", va="center", fontsize=8,
                          color="white" if on_dark else ("gray" if true == predicted else "black"))
    axis.set_xticks(range(10))
    axis.set_yticks(range(10))
    axis.set_xlabel("predicted digit")
    axis.set_ylabel("true digit")
    axis.set_title(title)
    return _save(figure, output)


def plot_misclassified(
    images: torch.Tensor, labels: torch.Tensor, predicted: torch.Tensor, title: str,
    output: str | Path, limit: int = 100, columns: int = 10,
) -> Path:
    """A grid of misclassified digits (uint8 [N, 28, 28]), each titled 'true -> predicted'."""
    plt = _pyplot()
    wrong = (predicted != labels).nonzero().flatten()[:limit].tolist()
    rows = max(1, -(-len(wrong) // columns))
    figure, axes = plt.subplots(rows, columns, figsize=(columns * 1.1, rows * 1.3), squeeze=False)
    for axis in axes.flat:
        axis.axis("off")
    for axis, index in zip(axes.flat, wrong, strict=False):
        axis.imshow(images[index].numpy(), cmap="gray_r")
        axis.set_title(f"{int(labels[index])} → {int(predicted[index])}", fontsize=9, color="crimson")
    figure.suptitle(f"{title}: {len(wrong)} shown of {int((predicted != labels).sum())} misclassified "
                    "(true → predicted)")
    return _save(figure, output)


def write_report(
    model: torch.nn.Module, name: str, mnist: data.MNIST, output_dir: str | Path
) -> dict[str, Any]:
    """Evaluate ``model`` on the test set; write <name>-confusion.png and <name>-misclassified.png."""
    output_dir = Path(output_dir)
    log_probs = predict_log_probs(model, data.normalize(mnist.test_images))
    result = evaluate_log_probs(log_probs, mnist.test_labels)
    title = f"{name}: test accuracy {result.accuracy:.2f}%"
    return {
        "accuracy": result.accuracy,
        "errors": result.count - sum(result.confusion[d][d] for d in range(10)),
        "confusion": plot_confusion_matrix(result.confusion, title, output_dir / f"{name}-confusion.png"),
        "misclassified": plot_misclassified(mnist.test_images, mnist.test_labels, log_probs.argmax(dim=1),
                                            name, output_dir / f"{name}-misclassified.png"),
    }
