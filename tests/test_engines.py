"""Inference engines: OpenVINO gives PyTorch's predictions on all 10,000 test images, `auto`
picks the fastest engine installed for the job, exports of weights files are cached, and the
number reader reads as PyTorch does on every engine, at any width."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from cli_helpers import one_line_error
from click.testing import CliRunner

import tinydigits
from tinydigits import data
from tinydigits.cli import main
from tinydigits.deploy import ExportError
from tinydigits.deploy.engines import (
    auto_backend,
    cached_onnx,
    compare_reader,
    open_engine,
    read_onnx_graph,
    reader_check_strips,
)
from tinydigits.deploy.export import MODEL_KEY, export_onnx, export_torchscript
from tinydigits.evaluate import predict_log_probs
from tinydigits.io import save_weights
from tinydigits.models import DEFAULT_READER
from tinydigits.read import read_number
from tinydigits.strips import COLUMN, number_set
from tinydigits.weights import pretrained_path, shipped_models

pytest.importorskip("openvino")
pytest.importorskip("onnxruntime")


@pytest.fixture(autouse=True)
def fresh_cache(tmp_path, monkeypatch):
    """Cached exports go to a fresh cache per test (conftest keeps the MNIST files where they are)."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def test_inputs(mnist: data.MNIST) -> torch.Tensor:
    return data.normalize(mnist.test_images)


@pytest.mark.kernels
@pytest.mark.parametrize("name", shipped_models("digit"))
def test_openvino_gives_pytorchs_predictions_on_all_test_images(name, test_inputs):
    reference = predict_log_probs(tinydigits.load_model(name, pretrained=True), test_inputs)
    engine = open_engine(name, pretrained_path(name), "openvino")
    got = engine(test_inputs)
    assert engine.backend == "openvino" and got.shape == (10_000, 10)
    assert torch.equal(got.argmax(1), reference.argmax(1))
    assert float((got - reference).abs().max()) < 1e-4


@pytest.mark.kernels
def test_openvino_runs_an_exported_onnx_file_and_odd_batch_sizes(tmp_path, test_inputs):
    model = tinydigits.load_model("small", pretrained=True)
    path = export_onnx(model, tmp_path / "small.onnx")
    engine = open_engine("small", path, "openvino")
    reference = predict_log_probs(model, test_inputs[:1001])
    assert torch.allclose(engine(test_inputs[:1001]), reference, atol=1e-4)  # a batch of 1000, then one of 1
    assert engine(test_inputs[:0]).shape == (0, 10)


def test_auto_takes_openvino_for_batches_and_onnx_runtime_for_single_pictures(tmp_path):
    weights = pretrained_path("medium")
    assert auto_backend(weights, batch=True) == "openvino"
    assert auto_backend(weights, batch=False) == "onnxruntime"
    assert open_engine("medium", weights).backend == "openvino"
    assert open_engine("medium", weights, batch=False).backend == "onnxruntime"
    onnx_file = export_onnx(tinydigits.load_model("medium", pretrained=True), tmp_path / "m.onnx")
    assert open_engine("medium", onnx_file, "auto", batch=False).backend == "onnxruntime"
    script = export_torchscript(tinydigits.load_model("medium", pretrained=True), tmp_path / "m.pt")
    with pytest.raises(ExportError, match="TorchScript program"):  # never run implicitly
        open_engine("medium", script, "auto")


def test_a_weights_file_is_exported_once_and_cached_by_its_hash(tmp_path):
    weights = pretrained_path("ultrasmall")
    first = cached_onnx("ultrasmall", weights)
    assert first.is_relative_to(tmp_path / "cache" / "tinydigits")
    stamp = first.stat().st_mtime_ns
    assert cached_onnx("ultrasmall", weights) == first and first.stat().st_mtime_ns == stamp  # not rebuilt
    other = save_weights(tinydigits.load_model("ultrasmall"), tmp_path / "fresh.safetensors", {})
    assert cached_onnx("ultrasmall", other) != first  # other bytes, another export


def test_a_file_openvino_cannot_read_is_aone_line_error(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x08\x07 this is not a protobuf")
    with pytest.raises(ExportError, match="not a model OpenVINO can compile") as raised:
        open_engine("medium", bad, "openvino")
    assert "\n" not in str(raised.value)


@pytest.mark.kernels
def test_eval_defaults_to_the_shipped_weights_and_says_which_engine_ran():
    result = CliRunner().invoke(main, ["eval", "--model", "small", "--json"])
    assert result.exit_code == 0, result.output
    answer = json.loads(result.output)
    assert answer["backend"] == "openvino" and Path(answer["weights"]) == pretrained_path("small")
    assert answer["accuracy"] == pytest.approx(tinydigits.get_weights("small").test_accuracy, abs=1e-9)
    torch_run = json.loads(CliRunner().invoke(main, ["eval", "--model", "small", "--backend", "torch",
                                                     "--json"]).output)
    assert torch_run["backend"] == "torch" and torch_run["accuracy"] == answer["accuracy"]


def test_a_damaged_cache_file_is_exported_again():
    weights = pretrained_path("small")
    cached = cached_onnx("small", weights)
    cached.write_bytes(b"damaged")
    engine = open_engine("small", weights, "onnxruntime")
    assert engine(torch.zeros(1, 1, 28, 28)).shape == (1, 10) and cached.stat().st_size > 1000


def test_auto_falls_back_to_pytorch_without_a_writable_cache(tmp_path, monkeypatch):
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file where the cache folder would go")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocked))
    assert open_engine("small", pretrained_path("small")).backend == "torch"
    with pytest.raises(ExportError):  # asked for by name, the failure is reported
        open_engine("small", pretrained_path("small"), "openvino")


# ------------------------------------------------------------------ int8 files, and files of another model


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict[str, Path]:
    """medium.onnx and medium-int8.onnx as a user makes them, and both again without the
    metadata naming the model, as files exported before it was written."""
    import onnx

    folder = tmp_path_factory.mktemp("exported")
    files = {"fp32": folder / "medium.onnx", "int8": folder / "medium-int8.onnx"}
    for kind, path in list(files.items()):
        args = ["export", "--model", "medium", "--no-verify", "-o", str(path)]
        result = CliRunner().invoke(main, [*args, "--int8"] if kind == "int8" else args)
        assert result.exit_code == 0, result.output
        proto = onnx.load(str(path))
        assert {prop.key: prop.value for prop in proto.metadata_props} == {MODEL_KEY: "medium"}
        del proto.metadata_props[:]
        files[f"{kind}-bare"] = folder / f"bare-{path.name}"
        onnx.save(proto, str(files[f"{kind}-bare"]))
    return files


@pytest.mark.kernels
def test_auto_runs_int8_files_on_onnx_runtime_and_openvino_refuses_them_in_one_line(exported):
    int8 = exported["int8"]
    graph = read_onnx_graph(int8)
    assert graph is not None and graph.quantized and "QLinearConv" in graph.ort_int8_ops
    assert not read_onnx_graph(exported["fp32"]).quantized
    assert auto_backend(int8, batch=True) == auto_backend(int8, batch=False) == "onnxruntime"
    assert auto_backend(exported["fp32"], batch=True) == "openvino"  # fp32 files still go to the fastest
    result = CliRunner().invoke(main, ["eval", "--model", "medium", "--weights", str(int8), "--json"])
    assert result.exit_code == 0, result.output
    answer = json.loads(result.output)
    assert answer["backend"] == "onnxruntime" and answer["count"] == 10_000
    assert answer["accuracy"] >= tinydigits.get_weights("medium").test_accuracy - 0.2
    line = one_line_error(CliRunner().invoke(main, ["eval", "--model", "medium", "--weights", str(int8),
                                                     "--backend", "openvino"]))
    assert line == (f"Error: {int8}: an int8 file of ONNX Runtime's quantized operators (QLinearConv, "
                    "com.microsoft.QLinearAdd), which OpenVINO cannot compile; use --backend onnxruntime")
    # The help no longer says OpenVINO takes int8 files.
    help_text = " ".join(CliRunner().invoke(main, ["eval", "--help"]).output.split())
    assert "onnxruntime (ONNX files, fp32 or int8) or openvino (fp32 ONNX files)" in help_text
    assert "int8 files" in help_text.split("torch;")[0]  # auto's choice for them


@pytest.mark.parametrize("kind", ["fp32", "int8", "fp32-bare", "int8-bare"])
def test_an_onnx_file_of_another_model_is_refused(exported, kind):
    path = exported[kind]
    how = "by its convolutions' shapes" if kind.endswith("bare") else "so says its metadata"
    for backend in ("auto", "onnxruntime"):
        line = one_line_error(CliRunner().invoke(main, ["eval", "--model", "small", "--weights", str(path),
                                                         "--backend", backend]))
        assert line == f"Error: {path}: a medium model ({how}), not small; use --model medium"
    with pytest.raises(ExportError, match="not ultrasmall; use --model medium"):
        open_engine("ultrasmall", path, batch=False)
    assert open_engine("medium", path, batch=False)(torch.zeros(2, 1, 28, 28)).shape == (2, 10)


# ------------------------------------------------------------------ the number reader


@pytest.fixture(scope="module")
def reader_strips() -> list[torch.Tensor]:
    """The strips of 50 pictures of the touching test set, each its own width."""
    return reader_check_strips(50)


@pytest.mark.kernels
@pytest.mark.parametrize("backend", ["torch", "onnxruntime", "openvino"])
def test_reader_engines_read_as_pytorch_at_any_width(backend, reader_strips, mnist):
    model = tinydigits.load_model(DEFAULT_READER, pretrained=True)  # the one `read` and the server run
    engine = open_engine(DEFAULT_READER, pretrained_path(DEFAULT_READER), backend, batch=False)
    assert engine.backend == backend and engine.task == "number"
    assert len({strip.shape[-1] for strip in reader_strips}) > 20  # widths vary from call to call
    # Each strip alone at its own width, then all 50 in one padded batch.
    check = compare_reader(model, engine, reader_strips)
    assert check.count == 100 and check.prediction_mismatches == 0 and check.max_abs_diff <= 1e-4, check
    # Widths no picture above has: a single column, and past any 32-digit number's strip.
    generator = torch.Generator().manual_seed(0)
    odd = [torch.randn(1, 32, width, generator=generator) for width in (4, 8, 2000, 4096)]
    check = compare_reader(model, engine, odd)
    assert check.prediction_mismatches == 0 and check.max_abs_diff <= 1e-4, check
    assert engine(torch.zeros(0, 1, 32, 64)).shape == (0, 11, 64 // COLUMN)
    # read_number takes the engine for a reader (auto: the sequence method), boxes and all.
    picture = number_set("touching", count=1, mnist=mnist)[0]
    got, expected = read_number(picture.data, engine), read_number(picture.data, model)
    assert got.number == expected.number
    for mine, theirs in zip(got.digits, expected.digits, strict=True):
        assert (mine.x, mine.y, mine.width, mine.height) == (theirs.x, theirs.y, theirs.width, theirs.height)
        assert mine.probability == pytest.approx(theirs.probability, abs=1e-4)


def test_auto_runs_the_reader_on_onnx_runtime_and_torchscript_refuses_it(tmp_path):
    weights = pretrained_path("reader")
    assert open_engine("reader", weights, batch=False).backend == "onnxruntime"  # the fastest for one strip
    with pytest.raises(ExportError) as raised:
        open_engine("reader", weights, "torchscript")
    assert str(raised.value) == ("reader does not run on torchscript (readers export as ONNX only); "
                                 "choose --backend auto, torch, onnxruntime or openvino")


def test_an_exported_reader_names_itself_and_is_refused_as_a_digit_model(tmp_path):
    path = export_onnx(tinydigits.load_model("reader", pretrained=True), tmp_path / "reader.onnx")
    assert read_onnx_graph(path).model == "reader"
    with pytest.raises(ExportError) as raised:
        open_engine("medium", path, "onnxruntime")
    assert str(raised.value) == (f"{path}: a reader model (so says its metadata), not medium; "
                                 "use --model reader")
    assert open_engine("reader", path, "openvino")(torch.zeros(3, 1, 32, 40)).shape == (3, 11, 40 // COLUMN)
