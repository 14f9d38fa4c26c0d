"""The command line: real processes on the real data, and clear one-line errors."""

import json
import signal
import subprocess
import sys
import time

import pytest
from click.testing import CliRunner
from safetensors.torch import load_file

from tinydigits.cli import main
from tinydigits.io import save_weights
from tinydigits.models import build_model

# Training on 5,000 images (the rest held out as validation) keeps a real run short.
SHORT = ["--model", "ultrasmall", "--val-size", "55000", "--batch-size", "100", "--no-progress"]


def run_cli(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tinydigits", *args],
                          capture_output=True, text=True, timeout=300, **kwargs)


@pytest.mark.parametrize(("args", "code", "message"), [
    (["train", "--model", "large"], 2, "Invalid value for '--model'"),
    (["train", "--optimizer", "rmsprop"], 1, "invalid recipe value(s): optimizer='rmsprop'"),
    (["train", "--epochs", "0"], 1, "invalid recipe value(s): epochs=0"),
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


def test_train_then_eval_end_to_end(tmp_path):
    run_dir = tmp_path / "run"
    trained = run_cli("train", *SHORT, "--epochs", "2", "--run-dir", str(run_dir))
    assert trained.returncode == 0, trained.stderr
    assert "epoch  2/2" in trained.stdout and "final test accuracy" in trained.stdout
    test_accuracy = json.loads((run_dir / "test.json").read_text())["accuracy"]

    evaluated = run_cli("eval", "--model", "ultrasmall", "--weights",
                        str(run_dir / "final.safetensors"), "--json")
    assert evaluated.returncode == 0, evaluated.stderr
    report = json.loads(evaluated.stdout)
    assert report["accuracy"] == test_accuracy
    assert report["count"] == 10_000 and sum(map(sum, report["confusion"])) == 10_000
    text = run_cli("eval", "--model", "ultrasmall", "--weights", str(run_dir / "final.safetensors"))
    assert "confusion matrix" in text.stdout and f"{test_accuracy:.2f}%" in text.stdout


RESUME_ARGS = [*SHORT, "--epochs", "2", "--seed", "5"]


@pytest.fixture(scope="module")
def uninterrupted_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("whole") / "run"
    whole = run_cli("train", *RESUME_ARGS, "--run-dir", str(run_dir))
    assert whole.returncode == 0, whole.stderr
    return run_dir


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL])
def test_interrupted_cli_run_resumes_to_the_same_weights(tmp_path, sig, uninterrupted_run):
    cut_dir = tmp_path / "cut"
    process = subprocess.Popen([sys.executable, "-m", "tinydigits", "train", *RESUME_ARGS,
                                "--run-dir", str(cut_dir)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # Interrupt as soon as the first epoch is on disk, in the middle of the second.
    deadline = time.monotonic() + 240
    while not (cut_dir / "checkpoint.pt").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
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
