"""Exports (ONNX fp32/int8, TorchScript; the number reader's ONNX), BatchNorm folding, and the
export/eval/view/diagram commands."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import torch
from cli_helpers import one_line_error
from click.testing import CliRunner
from torch import nn

import tinydigits
from tinydigits import data
from tinydigits.cli import main
from tinydigits.deploy import ExportError
from tinydigits.deploy.engines import check_reader_export, compare_with_torch, predict_log_probs_file
from tinydigits.deploy.export import MODEL_KEY, check_format, export_model, export_onnx, export_torchscript
from tinydigits.deploy.fold import ChannelAffine, fold_batchnorm
from tinydigits.errors import ConfigError
from tinydigits.evaluate import evaluate_log_probs, predict_log_probs
from tinydigits.models import MODELS as DIGIT_MODELS
from tinydigits.weights import pretrained_path, shipped_models

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

MODELS = shipped_models("digit")  # the weights the tests check exports of
TOLERANCE = 1e-4  # max |log-prob difference| accepted between an fp32 export and PyTorch
SUBSET = 300  # test images for the randomly initialised models in the folding test


def _random_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Fixed random BatchNorm statistics and affine parameters, about half the scales negative,
    so folding is checked on the hard case and not only on a trained model's values."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                n = module.num_features
                module.running_mean.copy_(torch.randn(n, generator=generator))
                module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
                module.weight.copy_(torch.randn(n, generator=generator))
                module.bias.copy_(torch.randn(n, generator=generator))
    return model.eval()


def _model(name: str) -> nn.Module:
    """The weights shipped with the package."""
    return tinydigits.load_model(name, pretrained=True)


@pytest.fixture(scope="module")
def test_set(mnist: data.MNIST) -> tuple[torch.Tensor, torch.Tensor]:
    return data.normalize(mnist.test_images), mnist.test_labels


@pytest.fixture(scope="module")
def medium_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_onnx(_model("medium"), tmp_path_factory.mktemp("onnx") / "medium.onnx")


# ------------------------------------------------------------------ BatchNorm folding


@pytest.mark.parametrize("name", MODELS)
def test_fold_batchnorm_is_exact_with_negative_scales(name: str, test_set) -> None:
    model = _random_bn(tinydigits.build_model(name), seed=1)
    folded = fold_batchnorm(model)
    assert not any(isinstance(m, (nn.BatchNorm2d, nn.Dropout)) for m in folded.modules())
    # Negative scales in front of a max pool must stay as an explicit per-channel Mul.
    assert any(isinstance(m, ChannelAffine) and m.scale is not None for m in folded.modules())
    images = test_set[0][:SUBSET]
    torch.testing.assert_close(predict_log_probs(folded, images), predict_log_probs(model, images),
                               rtol=1e-5, atol=1e-5)


def test_fold_batchnorm_pretrained_medium_full_test_set(test_set) -> None:
    model = tinydigits.load_model("medium", pretrained=True)
    folded = fold_batchnorm(model)
    images = test_set[0]
    expected, got = predict_log_probs(model, images), predict_log_probs(folded, images)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert torch.equal(got.argmax(1), expected.argmax(1))
    assert sum(p.numel() for p in folded.parameters()) < tinydigits.count_parameters(model)


# ------------------------------------------------------------------------- ONNX


@pytest.mark.parametrize("name", MODELS)
def test_onnx_matches_pytorch(name: str, test_set, tmp_path: Path, medium_onnx: Path) -> None:
    model = _model(name)
    path = medium_onnx if name == "medium" else export_onnx(model, tmp_path / f"{name}.onnx")
    images, labels = test_set
    check = compare_with_torch(model, path, images, labels)
    assert check.count == len(images)
    assert check.prediction_mismatches == 0
    assert check.max_abs_diff <= TOLERANCE
    assert check.accuracy == check.reference_accuracy
    # One self-contained file: no external-data sidecar beside it.
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]


def test_onnx_batch_dimension_is_dynamic(medium_onnx: Path, test_set) -> None:
    model = _model("medium")
    for batch in (1, 37):
        images = test_set[0][:batch]
        got = predict_log_probs_file(medium_onnx, images, batch_size=batch)
        assert got.shape == (batch, 10)
        torch.testing.assert_close(got, predict_log_probs(model, images), rtol=0, atol=TOLERANCE)


@pytest.mark.slow
@pytest.mark.parametrize("name", MODELS)
def test_int8_is_small_and_accurate(name: str, tmp_path: Path, test_set) -> None:
    out = tmp_path / f"{name}-int8.onnx"
    args = ["export", "--model", name, "--int8", "--no-verify", "-o", str(out)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    # A byte a parameter (four in fp32) plus the graph and its scales, 2-3 KB whatever the model.
    parameters = DIGIT_MODELS[name].parameters
    assert out.stat().st_size <= parameters + 3_500, (out.stat().st_size, parameters)
    images, labels = test_set
    int8 = evaluate_log_probs(predict_log_probs_file(out, images), labels).accuracy
    fp32 = tinydigits.evaluate(_model(name), images, labels).accuracy
    # Static int8 quantization costs these weights 0.0-0.12 points (measured on the shipped files).
    assert int8 >= fp32 - 0.2, (int8, fp32)


# ------------------------------------------------------------------- TorchScript


@pytest.mark.slow
@pytest.mark.parametrize("name", MODELS)
def test_torchscript_matches_pytorch(name: str, tmp_path: Path, test_set) -> None:
    model = _model(name)
    path = export_torchscript(model, tmp_path / f"{name}.pt")
    check = compare_with_torch(model, path, test_set[0])
    assert check.prediction_mismatches == 0 and check.max_abs_diff <= TOLERANCE


def test_torchscript_loads_without_tinydigits(tmp_path: Path) -> None:
    path = export_torchscript(_model("small"), tmp_path / "small.pt")
    code = (
        "import sys, torch\n"
        "sys.modules['tinydigits'] = None  # any import of the package would now fail\n"
        f"m = torch.jit.load({str(path)!r})\n"
        "for n in (1, 37):\n"
        "    assert tuple(m(torch.zeros(n, 1, 28, 28)).shape) == (n, 10)\n"
        "print('ok')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "TINYDIGITS_THREADS": "1"}, check=False)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr


# ---------------------------------------------------------------------- commands


def test_eval_backend_onnxruntime(medium_onnx: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(main, ["eval", "--model", "medium", "--weights", str(medium_onnx),
                                  "--backend", "onnxruntime", "--json"])
    assert result.exit_code == 0, result.output
    onnx_figures = json.loads(result.output)
    result = runner.invoke(main, ["eval", "--model", "medium", "--weights",
                                  str(pretrained_path("medium")), "--backend", "torch", "--json"])
    torch_figures = json.loads(result.output)
    assert onnx_figures["backend"] == "onnxruntime" and onnx_figures["count"] == 10_000
    assert onnx_figures["accuracy"] == torch_figures["accuracy"]
    assert onnx_figures["confusion"] == torch_figures["confusion"]
    # An ONNX file under the torch backend is a one-line error, not a pickle traceback.
    assert "onnxruntime" in one_line_error(
        runner.invoke(main, ["eval", "--model", "medium", "--weights", str(medium_onnx),
                             "--backend", "torch"]))


@pytest.mark.slow
def test_export_command_torchscript_verifies(tmp_path: Path, test_set) -> None:
    out = tmp_path / "m.pt"
    result = CliRunner().invoke(main, ["export", "--model", "medium", "--format", "torchscript",
                                       "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "0 predictions differ" in result.output and out.is_file()
    # TorchScript runs code from the file, so eval loads it only when asked to explicitly.
    refused = CliRunner().invoke(main, ["eval", "--model", "medium", "--weights", str(out)])
    assert refused.exit_code == 1 and "--backend torchscript" in refused.output
    result = CliRunner().invoke(main, ["eval", "--model", "medium", "--weights", str(out),
                                       "--backend", "torchscript", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["accuracy"] == tinydigits.evaluate(_model("medium"), *test_set).accuracy


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--format", "torchscript", "--int8", "-o", "{tmp}/m.pt"], "--int8 is only supported"),
        (["--weights", "{tmp}/missing.safetensors", "-o", "{tmp}/m.onnx"], "no such weights file"),
        (["--format", "torchscript", "-o", "{tmp}/file.txt/m.pt"], "is not a directory"),
        (["--format", "torchscript", "-o", "/proc/m.pt"], "/proc/m.pt"),
    ],
)
def test_export_errors_are_one_line(args: list[str], message: str, tmp_path: Path) -> None:
    (tmp_path / "file.txt").write_text("not a directory")
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    result = CliRunner().invoke(main, ["export", "--model", "medium", "--no-verify", *args])
    assert message in one_line_error(result)


# ------------------------------------------------------------------ the number reader


def test_a_reader_exports_to_onnx_with_dynamic_batch_and_width(tmp_path: Path) -> None:
    import onnx

    model = _random_bn(tinydigits.build_model("reader"), seed=2)
    result = export_model(model, tmp_path / "reader.onnx")
    proto = onnx.load(str(result.path))
    named = {prop.key: prop.value for prop in proto.metadata_props}
    assert named == {MODEL_KEY: "reader"}  # found by its shapes

    def dims(value) -> list:
        return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]

    assert dims(proto.graph.input[0]) == ["batch", 1, 32, "width"]
    assert dims(proto.graph.output[0]) == ["batch", 11, "columns"]
    generator = torch.Generator().manual_seed(0)
    strips = [torch.randn(1, 32, width, generator=generator) for width in (4, 30, 52, 203, 1000)]
    check = check_reader_export(model, result, strips)  # raises beyond 1e-4 or on another reading
    assert check.count == 10 and check.prediction_mismatches == 0 and check.max_abs_diff <= TOLERANCE


@pytest.mark.parametrize(("fmt", "int8"), [("torchscript", False), ("onnx", True), ("c", False),
                                           ("web", False)])
def test_a_reader_exports_as_fp32_onnx_only(fmt: str, int8: bool, tmp_path: Path) -> None:
    asked = "--int8" if int8 else f"--format {fmt}"
    with pytest.raises(ConfigError) as raised:
        check_format(fmt, int8, "reader-small")
    assert str(raised.value) == (f"{asked} is for the digit models ({', '.join(DIGIT_MODELS)}); a number "
                                 "reader (reader, reader-small) exports as fp32 ONNX only: --format onnx "
                                 "without --int8")
    assert check_format("onnx", False, "reader") == "onnx"
    reader = tinydigits.build_model("reader")
    if fmt in ("torchscript", "onnx"):  # the library refuses the module too, before any work
        with pytest.raises(ConfigError, match=asked):
            export_model(reader, tmp_path / "r", fmt, int8=int8, calibration_images=torch.zeros(1, 1, 28, 28))
    assert not list(tmp_path.iterdir())


def test_unknown_format_is_an_export_error_in_the_library() -> None:
    # The CLI's --format is a click.Choice; the Python API checks the name itself.
    with pytest.raises(ExportError, match="unknown format 'keras'"):
        check_format("keras")


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz's dot is not installed")
def test_diagram_writes_svg_and_png(tmp_path: Path) -> None:
    runner = CliRunner()
    for name in MODELS:
        svg = tmp_path / f"{name}.svg"
        assert runner.invoke(main, ["diagram", "--model", name, "-o", str(svg)]).exit_code == 0
        root = ET.parse(svg).getroot()
        assert root.tag.endswith("svg")
        assert "28 x 28" in svg.read_text() and "log_softmax" in svg.read_text()
    png = tmp_path / "medium.png"
    assert runner.invoke(main, ["diagram", "--model", "medium", "-o", str(png)]).exit_code == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "svg or .png" in one_line_error(runner.invoke(main, ["diagram", "--model", "small",
                                                                  "-o", str(tmp_path / "x.gif")]))


@pytest.mark.slow
def test_view_serves_the_model_until_stopped() -> None:
    pytest.importorskip("netron")
    proc = subprocess.Popen(
        [sys.executable, "-m", "tinydigits", "view", "--model", "medium", "--no-browser", "--port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "TINYDIGITS_THREADS": "1"},
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # blocks until the server is up (or the process dies)
        assert "http://127.0.0.1:" in line, (line, proc.stderr.read() if proc.poll() is not None else "")
        url = line.split("http://", 1)[1].split()[0]
        deadline = time.monotonic() + 20
        while True:
            try:
                with urllib.request.urlopen(f"http://{url}/", timeout=5) as response:
                    assert response.status == 200 and b"<html" in response.read().lower()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        assert proc.poll() is None  # still serving
    finally:
        proc.terminate()
        proc.wait(timeout=20)
