"""The pictures: training curves, confusion matrix and misclassified digits, as real PNGs."""

from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from tinydigits import data
from tinydigits.cli import main
from tinydigits.lab.plots import plot_misclassified, plot_training_curves, write_report

pytest.importorskip("matplotlib")


def assert_png(path: Path, min_width: int = 300) -> None:
    with Image.open(path) as image:
        assert image.format == "PNG" and image.width >= min_width


def test_training_curves_from_a_history(tmp_path):
    history = [{"epoch": e, "train_loss": 1 / e, "val_loss": 1.2 / e, "train_accuracy": 95 + e / 3,
                "val_accuracy": 96 + e / 4} for e in range(1, 6)]
    assert_png(plot_training_curves(history, "test run", tmp_path / "curves.png"))
    # A run on all 60k images has no validation figures: train curves only.
    full = [{**h, "val_loss": None, "val_accuracy": None} for h in history]
    assert_png(plot_training_curves(full, "all the data", tmp_path / "full.png"))


@pytest.mark.slow
def test_report_writes_confusion_and_misclassified_grid(tmp_path, mnist):
    result = CliRunner().invoke(main, ["report", "--model", "ultrasmall", "--output-dir", str(tmp_path),
                                       "--threads", "1"])
    assert result.exit_code == 0, result.output
    assert "misclassified" in result.output
    assert_png(tmp_path / "ultrasmall-confusion.png")
    assert_png(tmp_path / "ultrasmall-misclassified.png")


def test_report_counts_errors_from_the_evaluation(tmp_path, mnist):
    subset = data.MNIST(mnist.train_images[:0], mnist.train_labels[:0],
                        mnist.test_images[:300], mnist.test_labels[:300])

    class AlwaysSeven(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.anchor = torch.nn.Parameter(torch.zeros(1))  # so it has a device

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.log_softmax(torch.eye(10)[7].expand(len(x), 10) * 5, dim=1)

    written = write_report(AlwaysSeven(), "seven", subset, tmp_path)
    sevens = int((subset.test_labels == 7).sum())
    assert written["errors"] == 300 - sevens
    assert written["accuracy"] == pytest.approx(sevens / 3)


def test_misclassified_grid_with_no_errors_still_renders(tmp_path, mnist):
    labels = mnist.test_labels[:20]
    assert_png(plot_misclassified(mnist.test_images[:20], labels, labels, "perfect", tmp_path / "none.png"),
               min_width=100)


def test_curves_command_needs_the_shipped_run_in_results(tmp_path):
    result = CliRunner().invoke(main, ["curves", "--model", "small", "--results-dir", str(tmp_path),
                                       "--output-dir", str(tmp_path)])
    assert result.exit_code == 1
    assert "is not in" in result.output and len(result.output.strip().splitlines()) == 1


def test_curves_outside_the_checkout_name_the_results_file_and_the_option(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no results/ here
    result = CliRunner().invoke(main, ["curves", "--model", "medium"])
    assert result.exit_code == 1
    [line] = result.output.strip().splitlines()
    assert line.startswith("Error: results/medium-full.json: no such file"), line
    assert line.endswith("run this in the tinydigits checkout or give --results-dir the checkout's "
                         "results folder"), line
    assert not (tmp_path / "docs").exists()
