"""The command line: real processes on the real data, and clear one-line errors."""

import fractions
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from cli_helpers import one_line_error
from click.testing import CliRunner
from PIL import Image
from safetensors.torch import load_file

from tinydigits.cli import main
from tinydigits.io import file_sha256, save_weights
from tinydigits.models import build_model
from tinydigits.recipes import get_recipe
from tinydigits.train import train
from tinydigits.weights import pretrained_path

RESULTS = Path(__file__).parents[1] / "results"

# 10,000 training images and 1,000 for validation: an epoch of a few seconds, long enough for
# the resume tests to interrupt the second one.
SHORT = ["--model", "ultrasmall", "--subset", "11000", "--val-size", "1000", "--batch-size", "100",
         "--no-progress"]


def run_cli(*args: str, **kwargs) -> subprocess.CompletedProcess:
    # One thread unless a test says otherwise: runs compared bit for bit need the same count.
    kwargs["env"] = {"TINYDIGITS_THREADS": "1", **kwargs.get("env", os.environ)}
    return subprocess.run([sys.executable, "-m", "tinydigits", *args],
                          capture_output=True, text=True, timeout=300, **kwargs)


@pytest.mark.parametrize(("args", "code", "message"), [
    (["train", "--model", "large"], 2, "Invalid value for '--model'"),
    (["train", "--optimizer", "rmsprop"], 1, "invalid recipe value(s): optimizer='rmsprop'"),
    (["train", "--epochs", "0"], 1, "invalid recipe value(s): epochs=0"),
    (["train", "--model", "reader-small", "--batch-by-width", "--strip-reuse", "1"], 1,
     "invalid recipe value(s): batch_by_width=True (batches of one width are drawn from a pool of reused "
     "strips: give --strip-reuse 2 or more, or --no-batch-by-width)"),
    (["train", "--model", "small", "--distill", "0.5", "--teacher", ""], 1,
     "invalid recipe value(s): teacher='' (--distill needs --teacher)"),
    (["train", "--epochs", "3", "--clean-epochs", "5"], 1,
     "invalid recipe value(s): clean_epochs=5 (--clean-epochs is from 0 to --epochs)"),
    (["train", "--model", "reader-small", "--batch-size", "1", "--lr", "-1"], 1,  # a hint, and the help
     "invalid recipe value(s): lr=-1.0, strip_reuse=2 (--strip-reuse is from 1 to --batch-size; see "
     "`tinydigits train --help`)"),
    (["train", "--lr", "fast"], 2, "'fast' is not a valid float"),
    (["train", "--threads", "0"], 2, "Invalid value for '--threads'"),
    (["train", "--resume", "somewhere", "--lr", "0.1"], 2, "cannot be combined"),
    (["train", "--resume", "no-such-run"], 1, "no checkpoint here; nothing to resume"),
    (["eval", "--model", "medium", "--weights", "missing.safetensors"], 1, "no such weights file"),
    (["summary", "--model", "tiny"], 2, "Invalid value for '--model'"),
    (["train", "--device", "gpu0"], 1, "unknown device 'gpu0'"),
    (["eval", "--model", "medium", "--weights", "x.pth", "--backend", "tpu"], 2,
     "Invalid value for '--backend'"),
    (["export", "--model", "medium", "--format", "tflite"], 2, "Invalid value for '--format'"),
])
def test_bad_arguments_give_one_clear_line(args, code, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, args)
    assert result.exit_code == code, result.output
    assert message in result.output
    assert "Traceback" not in result.output
    error_lines = [line for line in result.output.splitlines() if line.startswith("Error")]
    assert len(error_lines) == 1


def test_eval_rejects_weights_of_another_model_and_corrupt_files(tmp_path):
    small = save_weights(build_model("small"), tmp_path / "small.safetensors", {})
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"\x80\x02garbage")
    for weights, message in [(small, "not medium weights"), (corrupt, "cannot load")]:
        result = CliRunner().invoke(main, ["eval", "--model", "medium", "--weights", str(weights)])
        assert result.exit_code == 1 and message in result.output, result.output


def test_summary_and_models():
    result = CliRunner().invoke(main, ["summary", "--model", "small", "--json"])
    assert result.exit_code == 0
    assert json.loads(result.output)["total_parameters"] == 5616
    listing = CliRunner().invoke(main, ["models"]).output
    assert "7,632" in listing and "5,616" in listing and "4,464" in listing


@pytest.mark.slow
def test_train_then_eval_end_to_end(tmp_path):
    run_dir = tmp_path / "run"
    trained = run_cli("train", *SHORT, "--epochs", "2", "--run-dir", str(run_dir))
    assert trained.returncode == 0, trained.stderr
    assert "epoch  2/2" in trained.stdout and "final test accuracy" in trained.stdout
    test_accuracy = json.loads((run_dir / "test.json").read_text())["accuracy"]

    # --backend torch: the same kernels as training's own evaluation, so the same count exactly (a
    # 2-epoch model's closest answers are ~1e-4 apart, near where other engines' last bits fall).
    evaluated = run_cli("eval", "--model", "ultrasmall", "--backend", "torch", "--weights",
                        str(run_dir / "final.safetensors"), "--json")
    assert evaluated.returncode == 0, evaluated.stderr
    report = json.loads(evaluated.stdout)
    assert report["accuracy"] == test_accuracy
    assert report["count"] == 10_000 and sum(map(sum, report["confusion"])) == 10_000
    text = run_cli("eval", "--model", "ultrasmall", "--backend", "torch", "--weights",
                   str(run_dir / "final.safetensors"))
    assert "confusion matrix" in text.stdout and f"{test_accuracy:.2f}%" in text.stdout


RESUME_ARGS = [*SHORT, "--epochs", "2", "--seed", "5"]


@pytest.fixture(scope="module")
def uninterrupted_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("whole") / "run"
    whole = run_cli("train", *RESUME_ARGS, "--run-dir", str(run_dir))
    assert whole.returncode == 0, whole.stderr
    return run_dir


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL])
def test_interrupted_cli_run_resumes_to_the_same_weights(tmp_path, sig, uninterrupted_run):
    cut_dir = tmp_path / "cut"
    process = subprocess.Popen([sys.executable, "-m", "tinydigits", "train", *RESUME_ARGS,
                                "--run-dir", str(cut_dir)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "TINYDIGITS_THREADS": "1"})  # as run_cli's runs
    # Interrupt as soon as the first epoch is on disk, in the middle of the second.
    deadline = time.monotonic() + 240
    while not (cut_dir / "checkpoint.pt").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert process.poll() is None, "the run ended before the signal: make SHORT's epochs longer"
    process.send_signal(sig)
    _, stderr = process.communicate(timeout=60)
    if sig == signal.SIGINT:
        assert process.returncode == 130
        assert f"tinydigits train --resume {cut_dir}" in stderr
        assert "Traceback" not in stderr
    else:
        assert process.returncode == -signal.SIGKILL
    assert not (cut_dir / "final.safetensors").exists()

    resumed = run_cli("train", "--resume", str(cut_dir), "--no-progress")
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming" in resumed.stdout and "after epoch 1 of 2" in resumed.stdout
    a = load_file(uninterrupted_run / "final.safetensors")
    b = load_file(cut_dir / "final.safetensors")
    assert all((a[k] == b[k]).all() for k in a)


def test_weights_of_another_model_name_the_model_and_the_fix(tmp_path):
    # Metadata naming the model, as published weights and run files have, and none at all.
    named = save_weights(build_model("small"), tmp_path / "named.safetensors", {"model": "small"})
    bare = save_weights(build_model("small"), tmp_path / "bare.safetensors", {})
    for weights, backend in [(named, "auto"), (named, "torch"), (bare, "auto"), (bare, "torch")]:
        args = ["eval", "--model", "medium", "--weights", str(weights), "--backend", backend]
        line = one_line_error(CliRunner().invoke(main, args))
        assert line.endswith("use --model small"), line
        assert ("so says the file's metadata" in line) == (weights == named), line


def test_a_file_that_is_not_weights_is_named_so_without_unsafe_advice(tmp_path):
    photo = tmp_path / "photo.jpg"
    Image.new("RGB", (64, 48), "white").save(photo)
    result = CliRunner().invoke(main, ["predict", "--weights", str(photo), str(photo)])
    line = one_line_error(result)
    assert line == (f"Error: {photo}: not a weights file; give a .safetensors file, a PyTorch .pt/.pth "
                    "state_dict, an .onnx export or (with --backend torchscript) a TorchScript one")
    # A real pickle holding an object: refused, and torch's advice to unpickle it anyway is not passed on.
    pickled = tmp_path / "objects.pt"
    torch.save({"weights": torch.zeros(2), "ratio": fractions.Fraction(1, 3)}, pickled)
    for backend in ("auto", "torch"):
        args = ["eval", "--model", "small", "--weights", str(pickled), "--backend", backend]
        line = one_line_error(CliRunner().invoke(main, args))
        assert "it holds more than tensors (Unsupported global: GLOBAL fractions.Fraction" in line, line
        assert "weights_only" not in line and "trusted source" not in line


@pytest.mark.slow
def test_train_on_a_subset_records_it_says_it_and_resumes_with_it(tmp_path):
    args = ["--model", "ultrasmall", "--subset", "1200", "--val-size", "200", "--batch-size", "100",
            "--epochs", "2", "--seed", "3", "--threads", "1", "--no-progress"]
    whole = CliRunner().invoke(main, ["train", *args, "--run-dir", str(tmp_path / "whole")])
    assert whole.exit_code == 0, whole.output
    assert "(seed 3, first 1,200 training images) on cpu, 1 thread;" in whole.output
    assert "after 2 epochs," in whole.output
    assert json.loads((tmp_path / "whole" / "config.json").read_text())["subset"] == 1200
    # Stopped once epoch 1 is saved, as Ctrl-C would, then resumed: the subset comes from the checkpoint.
    def stop_after_epoch_1(line: str) -> None:
        if line.startswith("epoch  1/2"):
            raise KeyboardInterrupt

    recipe = get_recipe("ultrasmall").replace(val_size=200, batch_size=100, epochs=2, seed=3)
    with pytest.raises(KeyboardInterrupt):
        train("ultrasmall", recipe, run_dir=tmp_path / "cut", subset=1200, threads=1, progress=False,
              log=stop_after_epoch_1)
    resumed = CliRunner().invoke(main, ["train", "--resume", str(tmp_path / "cut"), "--no-progress",
                                        "--threads", "1"])
    assert resumed.exit_code == 0, resumed.output
    a, b = (load_file(tmp_path / run / "final.safetensors") for run in ("whole", "cut"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    refused = CliRunner().invoke(main, ["train", "--resume", str(tmp_path / "cut"), "--subset", "1200"])
    assert refused.exit_code == 2 and "cannot be combined" in refused.output


def test_one_epoch_and_one_thread_are_singular(tmp_path):
    result = CliRunner().invoke(main, ["train", "--model", "ultrasmall", "--subset", "600", "--val-size",
                                       "100", "--epochs", "1", "--threads", "1", "--no-progress",
                                       "--run-dir", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    assert "1 thread;" in result.output and "after 1 epoch," in result.output
    assert "1 threads" not in result.output and "1 epochs" not in result.output


def test_publish_in_a_fresh_clone_names_the_missing_run_and_how_to_make_it(tmp_path, monkeypatch):
    # A fresh clone: the committed results files, and no runs/ folder.
    (tmp_path / "results").mkdir()
    shutil.copy(RESULTS / "medium-full.json", tmp_path / "results")
    monkeypatch.chdir(tmp_path)
    shipped = file_sha256(pretrained_path("medium"))
    line = one_line_error(CliRunner().invoke(main, ["publish", "--model", "medium"]))
    run = json.loads((RESULTS / "medium-full.json").read_text())["runs"][0]
    assert line.startswith(f"Error: {run['run_dir']}/final.safetensors: no such file;"), line
    assert line.endswith(f"train it again: {run['command']} --run-dir {run['run_dir']}"), line
    assert file_sha256(pretrained_path("medium")) == shipped  # nothing was published
    # No results file at all (outside the checkout): its path and --results-dir.
    line = one_line_error(CliRunner().invoke(main, ["publish", "--model", "small"]))
    assert line.startswith("Error: results/small-full.json: no such file; give --results-dir"), line


@pytest.mark.parametrize("model, options, unused", [
    ("reader-small", ["--translate", "0.1", "--dropout", "0.2"],
     "dropout=0.2 (--dropout), translate=0.1 (--translate)"),
    ("reader-small", ["--temperature", "2", "--distill", "0.5", "--teacher", "results/teachers/medium-e19"],
     "distill=0.5 (--distill), temperature=2.0 (--temperature), teacher='results/teachers/medium-e19' "
     "(--teacher)"),
    ("ultrasmall", ["--strip-reuse", "2", "--epoch-size", "100"],
     "epoch_size=100 (--epoch-size), strip_reuse=2 (--strip-reuse)"),
])
def test_train_refuses_options_the_model_would_ignore(tmp_path, model, options, unused):
    """A number reader makes its own strips and has no dropout; a digit model makes no strips:
    an option the run would not use is one clear line, and no run folder is made."""
    run = tmp_path / "run"
    result = CliRunner().invoke(main, ["train", "--model", model, *options, "--run-dir", str(run)])
    assert result.exit_code != 0
    kind = "a number reader" if model.startswith("reader") else "a digit model"
    assert f"{model} is {kind}, whose training does not use {unused}; leave them out" in result.output
    assert len(result.output.strip().splitlines()) == 1 and not run.exists()


def test_reproduce_and_tune_refuse_such_options_before_any_run(tmp_path):
    from tinydigits.errors import ConfigError
    from tinydigits.lab.reproduce import reproduce
    from tinydigits.lab.tune import tune

    with pytest.raises(ConfigError, match=r"reader-small is a number reader, whose training does not use "
                                          r"dropout=0.2 \(--dropout\); leave them out"):
        reproduce("reader-small", seeds=2, results_root=tmp_path / "results", runs_root=tmp_path / "runs",
                  dropout=0.2)
    with pytest.raises(ConfigError, match="tune searches the digit models' recipe fields; reader is not"):
        tune("reader", 1, storage=f"sqlite:///{tmp_path}/db/reader.db", runs_root=tmp_path / "runs")
    with pytest.raises(ConfigError, match=r"does not use strip_reuse=2 \(--strip-reuse\)"):
        tune("ultrasmall", 1, storage=f"sqlite:///{tmp_path}/db/tune.db", runs_root=tmp_path / "runs",
             strip_reuse=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no results, runs or study
