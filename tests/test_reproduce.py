"""reproduce(): seeds -> a results file with per-seed figures and statistics, resumable."""

import json
import statistics

import pytest

from tinydigits import data
from tinydigits.lab.reproduce import load_results, reproduce, results_path, seed_statistics


@pytest.fixture(scope="module")
def small_mnist(mnist) -> data.MNIST:
    """A slice of the real data, so a seed trains in seconds."""
    return data.MNIST(mnist.train_images[:1200], mnist.train_labels[:1200],
                      mnist.test_images[:500], mnist.test_labels[:500])


QUICK = {"epochs": 1, "val_size": 200, "batch_size": 100}


def test_reproduce_writes_per_seed_results_and_statistics(tmp_path, small_mnist):
    lines: list[str] = []
    results = reproduce("ultrasmall", seeds=2, results_root=tmp_path / "results", runs_root=tmp_path / "runs",
                        mnist=small_mnist, threads=1, log=lines.append, **QUICK)

    path = results_path("ultrasmall", root=tmp_path / "results")
    assert json.loads(path.read_text()) == results
    assert [run["seed"] for run in results["runs"]] == [0, 1]
    for run in results["runs"]:
        assert run["epochs"] == 1 and len(run["history"]) == 1
        assert run["val_accuracy"] == run["history"][-1]["val_accuracy"]
        assert 0 < run["test_accuracy"] <= 100 and run["train_seconds"] > 0
        # The command repeats the run, recipe options included.
        assert run["command"] == ("tinydigits train --model ultrasmall --recipe default --epochs 1 "
                                  f"--val-size 200 --batch-size 100 --seed {run['seed']}")
        run_dir = tmp_path / "runs" / f"ultrasmall-default-seed{run['seed']}"
        test = json.loads((run_dir / "test.json").read_text())
        assert run["test_accuracy"] == round(test["accuracy"], 4)
    accuracies = [run["test_accuracy"] for run in results["runs"]]
    assert results["test_accuracy"]["mean"] == round(statistics.fmean(accuracies), 4)
    assert results["test_accuracy"]["std"] == round(statistics.stdev(accuracies), 4)
    assert results["recipe"]["epochs"] == 1 and results["seeds"] == 2

    # A second call with more seeds keeps the recorded ones and trains only the new seed.
    lines.clear()
    more = reproduce("ultrasmall", seeds=3, results_root=tmp_path / "results", runs_root=tmp_path / "runs",
                     mnist=small_mnist, threads=1, log=lines.append, **QUICK)
    assert [run["seed"] for run in more["runs"]] == [0, 1, 2]
    assert more["runs"][:2] == results["runs"]
    assert sum("already in" in line for line in lines) == 2


def test_reproduce_reference_recipe_goes_to_its_own_file(tmp_path, small_mnist):
    reproduce("ultrasmall", recipe_kind="reference", seeds=1, results_root=tmp_path,
              runs_root=tmp_path / "runs", mnist=small_mnist, threads=1, log=lambda line: None, **QUICK)
    results = load_results("ultrasmall", "reference", tmp_path)
    assert results["recipe_kind"] == "reference" and results["recipe"]["schedule"] == "constant"
    assert load_results("ultrasmall", "default", tmp_path) is None
    assert results_path("ultrasmall", "reference", tmp_path).name == "ultrasmall-reference.json"


def test_summarize_one_value_has_zero_spread():
    assert seed_statistics([99.5]) == {"mean": 99.5, "std": 0.0, "min": 99.5, "max": 99.5}


def test_corrupt_results_file_is_a_clear_error(tmp_path):
    path = results_path("medium", root=tmp_path)
    path.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_results("medium", root=tmp_path)


def test_partial_and_foreign_run_directories(tmp_path, small_mnist):
    kwargs = {"results_root": tmp_path / "results", "runs_root": tmp_path / "runs", "mnist": small_mnist,
              "threads": 1, "log": lambda line: None}
    # Killed before its first epoch was saved: only config.json exists; it is started afresh.
    partial = tmp_path / "runs" / "ultrasmall-default-seed0"
    partial.mkdir(parents=True)
    (partial / "config.json").write_text("{}")
    results = reproduce("ultrasmall", seeds=2, **kwargs, **QUICK)
    assert results["seeds"] == 2 and (partial / "checkpoint.pt").exists()

    # Asking for fewer seeds than recorded rewrites the file with just those.
    assert reproduce("ultrasmall", seeds=1, **kwargs, **QUICK)["seeds"] == 1

    # A run directory left by another recipe is never resumed as if it were this one.
    (tmp_path / "results" / "ultrasmall.json").unlink()
    with pytest.raises(ValueError, match="holds a run with another recipe"):
        reproduce("ultrasmall", seeds=1, **kwargs, **{**QUICK, "epochs": 2})


def test_full_data_runs_go_to_their_own_file_without_validation_figures(tmp_path, small_mnist):
    results = reproduce("ultrasmall", recipe_kind="full", seeds=2, results_root=tmp_path,
                        runs_root=tmp_path / "runs", mnist=small_mnist, threads=1, log=lambda line: None,
                        epochs=1, batch_size=100)
    assert (tmp_path / "ultrasmall-full.json").is_file() and results["recipe"]["val_size"] == 0
    assert results["val_accuracy"] is None
    assert [run["val_accuracy"] for run in results["runs"]] == [None, None]
    assert results["seeds"] == 2 and 0 < results["test_accuracy"]["mean"] <= 100
    assert results["command"] == ("tinydigits reproduce --model ultrasmall --recipe full --epochs 1 "
                                  "--batch-size 100 --seeds 2")


def test_a_recipe_field_added_later_keeps_recorded_seeds(tmp_path, small_mnist):
    kwargs = {"results_root": tmp_path, "runs_root": tmp_path / "runs", "mnist": small_mnist, "threads": 1,
              "log": lambda line: None}
    reproduce("ultrasmall", seeds=1, **kwargs, **QUICK)
    path = tmp_path / "ultrasmall.json"
    old = json.loads(path.read_text())
    del old["recipe"]["elastic"]  # as files written before the field existed
    path.write_text(json.dumps(old))
    assert reproduce("ultrasmall", seeds=1, **kwargs, **QUICK)["runs"] == old["runs"]  # not retrained


def test_recipe_options_never_overwrite_the_published_results(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from tinydigits.cli import main

    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["reproduce", "--model", "small", "--epochs", "19"])
    assert result.exit_code == 2 and "give it its own folder" in result.output
    assert not (tmp_path / "results").exists()
