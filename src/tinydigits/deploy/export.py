"""Writing exported models: ONNX (fp32, or int8 after BatchNorm folding) and TorchScript.

The number readers export as fp32 ONNX only, with dynamic batch and width axes; the other
formats are for the digit classifiers. Every file is written atomically;
:mod:`tinydigits.deploy.engines` runs the files and checks them against PyTorch
(``check_export``).
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import os
import tempfile
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..data import normalize
from ..errors import ConfigError, require
from ..io import atomic_write
from ..models import MODELS, READERS, NumberReader, conv_shapes, get_spec, model_with_conv_shapes
from ..strips import COLUMN
from . import ExportError
from .fold import fold_batchnorm

FORMATS = ("onnx", "torchscript")
INPUT_NAME = "images"
OUTPUT_NAME = "log_probs"
OPSET = 18
FP32_TOLERANCE = 1e-4  # largest |log-prob difference| an fp32 export may show against PyTorch
MODEL_KEY = "tinydigits.model"  # the metadata_props entry naming the model a file holds


# ------------------------------------------------------------------------ exporting


def _dummy_input(model: nn.Module, batch: int = 2) -> torch.Tensor:
    """An input of the shape ``model`` takes: a 28x28 digit, or a reader's strip (any width
    that is a multiple of :data:`~tinydigits.strips.COLUMN`; 64 here)."""
    return torch.zeros(batch, 1, 32, 64) if isinstance(model, NumberReader) else torch.zeros(batch, 1, 28, 28)


def refuse_reader(model: str | nn.Module, fmt: str, int8: bool = False) -> None:
    """A one-line error for a number reader (a registry name or a module) in any format but
    fp32 ONNX, the only one written and checked for readers; nothing for a digit model."""
    if isinstance(model, nn.Module):
        reader = isinstance(model, NumberReader)
    else:
        reader = get_spec(model).task == "number"
    if not reader or (fmt.lower() == "onnx" and not int8):
        return
    asked = "--int8" if int8 else f"--format {fmt.lower()}"
    raise ConfigError(f"{asked} is for the digit models ({', '.join(MODELS)}); a number reader "
                      f"({', '.join(READERS)}) exports as fp32 ONNX only: --format onnx without --int8")


def ensure_directory(directory: Path, subject: Path | None = None) -> None:
    """Create ``directory`` if needed; one-line errors, about ``subject`` (default: the
    directory itself), when it cannot be created or written."""
    prefix = f"{subject}: {directory}" if subject is not None else f"{directory}:"
    if directory.exists() and not directory.is_dir():
        raise ExportError(f"{prefix} is not a directory")
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ExportError(f"{prefix} cannot create the directory ({err.strerror or err})") from None
    if not os.access(directory, os.W_OK | os.X_OK):
        raise ExportError(f"{prefix} directory is not writable")


def _check_writable(path: Path) -> None:
    """Fail early, with one line, on an output path that cannot be written."""
    if path.is_dir():
        raise ExportError(f"{path}: is a directory; give a file name")
    ensure_directory(path.parent, path)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence the exporter's and quantizer's chatter (warnings about torchvision not being
    installed, advice to pre-process), which would bury the command's own output."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        logging.disable(logging.WARNING)
        try:
            yield
        finally:
            logging.disable(logging.NOTSET)


def _compact_onnx(model: Any) -> None:
    """Drop doc strings and exporter metadata (stack traces, source locations), which would
    otherwise be most of the bytes of a model this small; the graph itself is untouched."""
    del model.metadata_props[:]
    model.doc_string = ""
    graph = model.graph
    graph.doc_string = ""
    del graph.metadata_props[:]
    for node in graph.node:
        node.doc_string = ""
        del node.metadata_props[:]
    for value in [*graph.input, *graph.output, *graph.value_info, *graph.initializer]:
        value.doc_string = ""
        if hasattr(value, "metadata_props"):
            del value.metadata_props[:]
    del graph.value_info[:]  # shape annotations of intermediates: optional, recomputed by runtimes


# Attributes at their ONNX default values, which the quantizer and the exporter spell out:
# (op types or None for any op, attribute name) -> a test of its value.
_DEFAULT_ATTRIBUTES: dict[str, Callable[[Any], bool]] = {
    "auto_pad": lambda a: a.s == b"NOTSET",
    "dilations": lambda a: all(value == 1 for value in a.ints),
    "strides": lambda a: all(value == 1 for value in a.ints),
    "pads": lambda a: all(value == 0 for value in a.ints),
    "group": lambda a: a.i == 1,
    "ceil_mode": lambda a: a.i == 0,
    "storage_order": lambda a: a.i == 0,
}
_REDUCE_DEFAULTS: dict[str, Callable[[Any], bool]] = {
    "keepdims": lambda a: a.i == 1,
    "noop_with_empty_axes": lambda a: a.i == 0,
}
_POOL_OPS = {"Conv", "QLinearConv", "ConvInteger", "MaxPool", "AveragePool"}


def _is_default_attribute(node: Any, attribute: Any) -> bool:
    if node.domain not in ("", "ai.onnx", "com.microsoft"):
        return False
    if node.op_type in _POOL_OPS and attribute.name in _DEFAULT_ATTRIBUTES:
        return _DEFAULT_ATTRIBUTES[attribute.name](attribute)
    if node.op_type.startswith("Reduce") and attribute.name in _REDUCE_DEFAULTS:
        return _REDUCE_DEFAULTS[attribute.name](attribute)
    return False


def _scalar_weight_zero_points(model: Any) -> None:
    """Store a per-channel weight zero point that is all zeros (symmetric int8 weights) as one
    scalar zero, which QLinearConv broadcasts over the output channels: the same model."""
    from onnx import numpy_helper

    graph = model.graph
    tensors = {tensor.name: tensor for tensor in graph.initializer}
    for node in graph.node:
        if node.op_type != "QLinearConv" or len(node.input) < 6:
            continue
        tensor = tensors.get(node.input[5])
        if tensor is None or len(tensor.dims) != 1:
            continue
        values = numpy_helper.to_array(tensor)
        if values.any():
            continue
        name = f"{tensor.name}_scalar"
        if name not in tensors:
            tensors[name] = numpy_helper.from_array(np.zeros((), dtype=values.dtype), name)
            graph.initializer.append(tensors[name])
        node.input[5] = name
    used = {name for node in graph.node for name in node.input}
    keep = [tensor for tensor in graph.initializer if tensor.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep)


def _shrink_onnx(model: Any) -> None:
    """Merge identical constant tensors and give every internal tensor a short name.

    At a few thousand int8 weights the names the quantizer makes up
    (``layers.13.weight_zero_point`` and the like, each stored once as an initializer and
    again at every use) and its many identical zero points cost more bytes than the
    weights themselves. Graph inputs and outputs keep their names."""
    _scalar_weight_zero_points(model)
    model.producer_name = model.producer_version = ""
    graph = model.graph
    graph.name = "g"  # the checker wants a name; its text is not used
    renames: dict[str, str] = {}
    seen: dict[tuple[int, tuple[int, ...], bytes], str] = {}
    keep = []
    for tensor in graph.initializer:
        key = (tensor.data_type, tuple(tensor.dims), tensor.SerializeToString().replace(
            tensor.name.encode(), b""))
        if key in seen:
            renames[tensor.name] = seen[key]
        else:
            seen[key] = tensor.name
            keep.append(tensor)
    del graph.initializer[:]
    graph.initializer.extend(keep)

    public = {value.name for value in [*graph.input, *graph.output]}
    short: dict[str, str] = {}

    def rename(name: str) -> str:
        name = renames.get(name, name)
        if not name or name in public:
            return name
        if name not in short:
            short[name] = np.base_repr(len(short), 36).lower()
        return short[name]

    for tensor in graph.initializer:
        tensor.name = rename(tensor.name)
    for node in graph.node:
        node.name = ""
        # Attributes spelled out at their default values (the quantizer copies them all).
        defaults = [a for a in node.attribute if _is_default_attribute(node, a)]
        for attribute in defaults:
            node.attribute.remove(attribute)
        node.input[:] = [rename(name) for name in node.input]
        node.output[:] = [rename(name) for name in node.output]


def onnx_proto(model: nn.Module) -> Any:
    """The ONNX ModelProto of an eval-mode model, batch dimension dynamic (and a number
    reader's width: ``images`` [batch, 1, 32, width] -> ``log_probs`` [batch, 11, columns]),
    all weights inline."""
    require("onnx", "export", "ONNX export")
    require("onnxscript", "export", "ONNX export")  # torch's ONNX exporter runs on it
    model = copy.deepcopy(model).cpu().eval()
    dynamic: dict[int, Any] = {0: torch.export.Dim("batch", min=1)}
    reader = isinstance(model, NumberReader)
    if reader:
        # A multiple of COLUMN, as strips.batch_strips pads them: the poolings along the width
        # then leave no remainder, which the exporter would otherwise have to guard against.
        dynamic[3] = COLUMN * torch.export.Dim("columns", min=1)
    with _quiet(), tempfile.TemporaryDirectory() as tmp:
        program = torch.onnx.export(
            model, (_dummy_input(model),), dynamo=True, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
            dynamic_shapes=(dynamic,), opset_version=OPSET, external_data=False, verbose=False,
        )
        assert program is not None
        # Saving and reloading gives a plain ModelProto with every tensor stored inline.
        path = Path(tmp) / "model.onnx"
        program.save(str(path), external_data=False)
        import onnx

        proto = onnx.load(str(path))
    _compact_onnx(proto)
    if reader:  # readable names for the exporter's symbols ("2*columns", "s63")
        proto.graph.input[0].type.tensor_type.shape.dim[3].dim_param = "width"
        proto.graph.output[0].type.tensor_type.shape.dim[2].dim_param = "columns"
    return proto


def _write(path: Path, write: Callable[[Path], None]) -> Path:
    try:
        return atomic_write(path, write)
    except OSError as err:
        raise ExportError(f"{path}: cannot write ({err.strerror or err})") from None


def _write_onnx(proto: Any, path: Path, model_name: str | None) -> Path:
    import onnx

    if model_name is not None:  # so an engine can tell a file of another model from the one asked for
        onnx.helper.set_model_props(proto, {MODEL_KEY: model_name})
    onnx.checker.check_model(proto)
    return _write(path, lambda tmp: tmp.write_bytes(proto.SerializeToString()))


def _model_name(model: nn.Module, model_name: str | None) -> str | None:
    """The registry name to record in an export: as given, else the model whose
    convolutions ``model`` has (None for a model not in the registry)."""
    return model_name if model_name is not None else model_with_conv_shapes(conv_shapes(model))


def export_onnx(model: nn.Module, path: str | Path, *, model_name: str | None = None) -> Path:
    """Write ``model`` as one self-contained ONNX file (no external ``.data`` file) whose
    input ``images`` [N, 1, 28, 28] has a dynamic batch size N; output ``log_probs`` [N, 10].
    A number reader's input is [N, 1, 32, W], W a multiple of :data:`~tinydigits.strips.COLUMN`,
    output [N, 11, W / COLUMN], both N and W dynamic. The file's metadata names the model
    (``model_name``, by default found from its shapes)."""
    path = Path(path)
    _check_writable(path)
    return _write_onnx(onnx_proto(model), path, _model_name(model, model_name))


def export_torchscript(model: nn.Module, path: str | Path) -> Path:
    """Write a traced TorchScript archive, loadable with ``torch.jit.load`` alone (no tinydigits)."""
    refuse_reader(model, "torchscript")
    path = Path(path)
    _check_writable(path)
    model = copy.deepcopy(model).cpu().eval()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # torch.jit is deprecated in favour of torch.export
        traced = torch.jit.trace(model, _dummy_input(model))
        return _write(path, lambda tmp: torch.jit.save(traced, str(tmp)))


class _Calibration:
    """ONNX Runtime's CalibrationDataReader protocol over a tensor of normalized images."""

    def __init__(self, images: torch.Tensor, batch_size: int = 200) -> None:
        self._batches: Iterator[np.ndarray] = iter(
            [images[i : i + batch_size].numpy() for i in range(0, len(images), batch_size)]
        )

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._batches, None)
        return None if batch is None else {INPUT_NAME: batch}

    def rewind(self) -> None:  # pragma: no cover - only some calibrators call it
        raise NotImplementedError


def int8_onnx_proto(model: nn.Module, calibration_images: torch.Tensor) -> Any:
    """The int8 ONNX ModelProto: BatchNorm folded, then ONNX Runtime's post-training static
    quantization (per-channel int8 weights in 7 bits, uint8 activations) calibrated on
    ``calibration_images`` (normalized, [N, 1, 28, 28]; use training images, never test ones).
    The C export translates this same graph, so the two share every quantization parameter."""
    refuse_reader(model, "onnx", int8=True)
    require("onnxruntime", "export", "int8 export")
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    proto = onnx_proto(fold_batchnorm(model))
    reader = _Calibration(calibration_images.cpu().float())
    CalibrationDataReader.register(_Calibration)
    with tempfile.TemporaryDirectory() as tmp:
        fp32_path, int8_path = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        onnx.save(proto, str(fp32_path))
        with _quiet():
            quantize_static(
                str(fp32_path), str(int8_path), reader, quant_format=QuantFormat.QOperator,
                per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                # Activation ranges from the 0.001-99.999 percentiles: on the validation split this
                # lost less accuracy than min/max or entropy for all three models.
                calibrate_method=CalibrationMethod.Percentile,
                # 7-bit weights: without VNNI, ONNX Runtime's uint8 x int8 kernels add pairs of
                # products in int16 and saturate (UltraSmall fell from 99.26 to 98.53 on an AVX2
                # EPYC); with 7 bits no pair can, so CPUs with and without VNNI agree (99.23 there).
                reduce_range=True,
            )
        quantized = onnx.load(str(int8_path))
    _compact_onnx(quantized)
    _shrink_onnx(quantized)
    return quantized


def export_onnx_int8(model: nn.Module, path: str | Path, calibration_images: torch.Tensor, *,
                     model_name: str | None = None) -> Path:
    """Write the int8 ONNX model of :func:`int8_onnx_proto` (metadata as :func:`export_onnx`)."""
    path = Path(path)
    _check_writable(path)
    return _write_onnx(int8_onnx_proto(model, calibration_images), path, _model_name(model, model_name))


# --------------------------------------------------------------------- one call


@dataclass(frozen=True)
class ExportResult:
    path: Path
    format: str
    int8: bool
    size_bytes: int


def check_format(fmt: str, int8: bool = False, model_name: str | None = None) -> str:
    """The normalized format name; one-line errors for an unknown one, int8 TorchScript, and
    a number reader (``model_name``) in any format but fp32 ONNX."""
    fmt = fmt.lower()
    if model_name is not None:
        refuse_reader(model_name, fmt, int8)
    if fmt not in FORMATS:
        raise ExportError(f"unknown format {fmt!r}; choose one of: {', '.join(FORMATS)}")
    if int8 and fmt != "onnx":
        raise ExportError("--int8 is only supported with --format onnx (ONNX Runtime quantization)")
    return fmt


def export_model(
    model: nn.Module,
    path: str | Path,
    fmt: str = "onnx",
    *,
    int8: bool = False,
    calibration_images: torch.Tensor | None = None,
    model_name: str | None = None,
) -> ExportResult:
    """Export ``model`` in format ``fmt`` (``onnx`` or ``torchscript``); ``int8`` (ONNX only,
    digit models only) needs ``calibration_images``. ONNX files name the model in their
    metadata (``model_name``, by default found from the model's shapes)."""
    fmt = check_format(fmt, int8)
    refuse_reader(model, fmt, int8)
    if int8:
        if calibration_images is None:
            raise ExportError("int8 export needs calibration images")
        written = export_onnx_int8(model, path, calibration_images, model_name=model_name)
    elif fmt == "onnx":
        written = export_onnx(model, path, model_name=model_name)
    else:
        written = export_torchscript(model, path)
    return ExportResult(written, fmt, int8, written.stat().st_size)


def calibration_subset(train_images: torch.Tensor, count: int = 2000, seed: int = 0) -> torch.Tensor:
    """A fixed, seeded sample of ``count`` training images (uint8 [N, 28, 28]), normalized."""
    generator = torch.Generator().manual_seed(seed)
    index = torch.randperm(len(train_images), generator=generator)[:count]
    return normalize(train_images[index])
