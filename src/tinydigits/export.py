"""Exporting trained models: ONNX (fp32 or int8) and TorchScript, plus running the exports.

BatchNorm folding: every block here is Conv(no bias) -> ReLU -> BatchNorm -> Dropout, so
BatchNorm sits *after* the ReLU and cannot be folded into its own conv the usual way.
:func:`fold_batchnorm` removes it exactly instead:

* the BN scale ``s`` is split as ``|s| * sign(s)``; ``|s|`` moves back into the preceding
  conv through the ReLU (``relu(a*x) == a*relu(x)`` for ``a >= 0``);
* what is left, ``y = sign * z + t``, moves forward through Dropout (identity at eval),
  average pooling (any affine map commutes with an average) and max pooling (a shift
  commutes with max; ``sign`` does only where it is all +1, otherwise it is applied
  before the pool), into the next conv: ``sign`` always goes into its weights, ``t``
  into its bias when the conv has no padding. A padded conv would see the zero padding
  become ``t`` if ``t`` were folded in, so there ``t`` stays as a per-channel Add.

The folded network gives the same outputs as the original to float rounding.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import tempfile
import warnings
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .checkpoint import atomic_write
from .evaluate import evaluate_log_probs, predict_log_probs

__all__ = [
    "FORMATS",
    "ChannelAffine",
    "Comparison",
    "ExportError",
    "ExportResult",
    "FoldedNet",
    "calibration_subset",
    "check_format",
    "compare_with_torch",
    "export_model",
    "export_onnx",
    "export_onnx_int8",
    "export_torchscript",
    "fold_batchnorm",
    "is_torchscript_file",
    "predict_log_probs_file",
]

FORMATS = ("onnx", "torchscript")
INPUT_NAME = "images"
OUTPUT_NAME = "log_probs"
OPSET = 18


class ExportError(ValueError):
    """An export or exported file that cannot be used; the message is one line.

    A ValueError, so the command line's error handling prints it as ``Error: ...``."""


# ------------------------------------------------------------------ BatchNorm folding


class ChannelAffine(nn.Module):
    """``x * scale + shift`` per channel; either part may be absent (exports as Mul / Add)."""

    def __init__(self, scale: torch.Tensor | None, shift: torch.Tensor | None) -> None:
        super().__init__()
        self.scale = None if scale is None else nn.Parameter(scale.detach().clone(), requires_grad=False)
        self.shift = None if shift is None else nn.Parameter(shift.detach().clone(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.scale is not None:
            x = x * self.scale.view(1, -1, 1, 1)
        if self.shift is not None:
            x = x + self.shift.view(1, -1, 1, 1)
        return x


class FoldedNet(nn.Module):
    """A TinyDigitNet with BatchNorm and Dropout folded away: a layer chain, then log-softmax."""

    def __init__(self, layers: list[nn.Module]) -> None:
        super().__init__()
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.log_softmax(self.layers(x).flatten(1), dim=1)


def _flat_layers(model: nn.Module) -> list[nn.Module]:
    """The leaf modules of a TinyDigitNet in forward order (its blocks are plain Sequentials)."""
    if not hasattr(model, "num_blocks") or not hasattr(model, "gap_linear"):
        raise ExportError(f"cannot fold {type(model).__name__}: expected a tinydigits model")
    blocks = [getattr(model, f"conv{i}") for i in range(1, model.num_blocks + 1)] + [model.gap_linear]
    return [layer for block in blocks for layer in block]


def _is_unpadded(conv: nn.Conv2d) -> bool:
    return all(p == 0 for p in conv.padding) if isinstance(conv.padding, tuple) else conv.padding == 0


@torch.no_grad()
def fold_batchnorm(model: nn.Module) -> FoldedNet:
    """An equivalent eval-mode :class:`FoldedNet` without BatchNorm or Dropout layers.

    ``model`` is not modified. See the module docstring for why each step is exact."""
    out: list[nn.Module] = []
    # The affine map still to apply, y = sign * z + shift, or None.
    pending: tuple[torch.Tensor, torch.Tensor] | None = None

    def flush() -> None:
        nonlocal pending
        if pending is not None:
            sign, shift = pending
            out.append(ChannelAffine(None if bool((sign > 0).all()) else sign, shift))
            pending = None

    for layer in _flat_layers(model):
        if isinstance(layer, (nn.Dropout, nn.Dropout2d, nn.Identity)):
            continue
        if isinstance(layer, nn.BatchNorm2d):
            flush()
            assert layer.running_mean is not None and layer.running_var is not None
            std = torch.sqrt(layer.running_var + layer.eps)
            weight = layer.weight if layer.weight is not None else torch.ones_like(std)
            bias = layer.bias if layer.bias is not None else torch.zeros_like(std)
            scale = weight / std
            shift = bias - layer.running_mean * scale
            if len(out) >= 2 and isinstance(out[-1], nn.ReLU) and isinstance(out[-2], nn.Conv2d):
                conv = out[-2]
                conv.weight.mul_(scale.abs().view(-1, 1, 1, 1))
                if conv.bias is not None:
                    conv.bias.mul_(scale.abs())
                pending = (torch.where(scale < 0, -1.0, 1.0), shift)
            else:
                out.append(ChannelAffine(scale, shift))
        elif isinstance(layer, nn.MaxPool2d):
            if pending is not None and bool((pending[0] < 0).any()):
                # max does not commute with a negative scale: apply the sign first; the shift
                # (which does commute) moves on.
                out.append(ChannelAffine(pending[0], None))
                pending = (torch.ones_like(pending[0]), pending[1])
            out.append(copy.deepcopy(layer))
        elif isinstance(layer, nn.AdaptiveAvgPool2d):
            out.append(copy.deepcopy(layer))
        elif isinstance(layer, nn.Conv2d) and layer.groups == 1 and layer.padding_mode == "zeros":
            conv = nn.Conv2d(layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride,
                             layer.padding, layer.dilation, bias=True)
            weight = layer.weight.detach().clone()
            bias = layer.bias.detach().clone() if layer.bias is not None else torch.zeros(layer.out_channels)
            if pending is not None:
                sign, shift = pending
                weight.mul_(sign.view(1, -1, 1, 1))
                if _is_unpadded(layer):
                    bias += (weight * (sign * shift).view(1, -1, 1, 1)).sum(dim=(1, 2, 3))
                else:
                    out.append(ChannelAffine(None, sign * shift))
                pending = None
            conv.weight.copy_(weight)
            conv.bias.copy_(bias)
            out.append(conv)
        else:
            flush()
            out.append(copy.deepcopy(layer))
    flush()
    return FoldedNet(out).eval()


# ------------------------------------------------------------------------ exporting


def _dummy_input(batch: int = 2) -> torch.Tensor:
    return torch.zeros(batch, 1, 28, 28)


def _check_writable(path: Path) -> None:
    """Fail early, with one line, on an output path that cannot be written."""
    if path.is_dir():
        raise ExportError(f"{path}: is a directory; give a file name")
    parent = path.parent
    if parent.exists() and not parent.is_dir():
        raise ExportError(f"{path}: {parent} is not a directory")
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ExportError(f"{path}: cannot create the directory ({err.strerror or err})") from None
    if not os.access(parent, os.W_OK):
        raise ExportError(f"{path}: directory {parent} is not writable")


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence the exporter's and quantizer's chatter (warnings about torchvision not being
    installed, advice to pre-process), which would bury the command's own output."""
    with warnings.catch_warnings():
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


def _onnx_proto(model: nn.Module) -> Any:
    """The ONNX ModelProto of an eval-mode model, batch dimension dynamic, all weights inline."""
    try:
        import onnx  # the exporter needs onnx and onnxscript
        import onnxscript  # noqa: F401
    except ImportError:
        raise ExportError("ONNX export needs onnx and onnxscript: pip install 'tinydigits[export]'") from None
    model = copy.deepcopy(model).cpu().eval()
    batch = torch.export.Dim("batch", min=1)
    with _quiet(), tempfile.TemporaryDirectory() as tmp:
        program = torch.onnx.export(
            model, (_dummy_input(),), dynamo=True, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
            dynamic_shapes=({0: batch},), opset_version=OPSET, external_data=False, verbose=False,
        )
        assert program is not None
        # Saving and reloading gives a plain ModelProto with every tensor stored inline.
        path = Path(tmp) / "model.onnx"
        program.save(str(path), external_data=False)
        import onnx

        proto = onnx.load(str(path))
    _compact_onnx(proto)
    return proto


def _write(path: Path, write: Callable[[Path], None]) -> Path:
    try:
        return atomic_write(path, write)
    except OSError as err:
        raise ExportError(f"{path}: cannot write ({err.strerror or err})") from None


def _write_onnx(proto: Any, path: Path) -> Path:
    import onnx

    onnx.checker.check_model(proto)
    return _write(path, lambda tmp: tmp.write_bytes(proto.SerializeToString()))


def export_onnx(model: nn.Module, path: str | Path) -> Path:
    """Write ``model`` as one self-contained ONNX file (no external ``.data`` file) whose
    input ``images`` [N, 1, 28, 28] has a dynamic batch size N; output ``log_probs`` [N, 10]."""
    path = Path(path)
    _check_writable(path)
    return _write_onnx(_onnx_proto(model), path)


def export_torchscript(model: nn.Module, path: str | Path) -> Path:
    """Write a traced TorchScript archive, loadable with ``torch.jit.load`` alone (no tinydigits)."""
    path = Path(path)
    _check_writable(path)
    model = copy.deepcopy(model).cpu().eval()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # torch.jit is deprecated in favour of torch.export
        traced = torch.jit.trace(model, _dummy_input())
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


def export_onnx_int8(model: nn.Module, path: str | Path, calibration_images: torch.Tensor) -> Path:
    """Write an int8 ONNX model: BatchNorm folded, then ONNX Runtime's post-training static
    quantization (per-channel int8 weights, uint8 activations) calibrated on
    ``calibration_images`` (normalized, [N, 1, 28, 28]; use training images, never test ones)."""
    try:
        from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    except ImportError:
        raise ExportError("int8 export needs onnxruntime: pip install 'tinydigits[export]'") from None
    import onnx

    path = Path(path)
    _check_writable(path)
    proto = _onnx_proto(fold_batchnorm(model))
    reader = _Calibration(calibration_images.cpu().float())
    CalibrationDataReader.register(_Calibration)
    with tempfile.TemporaryDirectory() as tmp:
        fp32_path, int8_path = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        onnx.save(proto, str(fp32_path))
        with _quiet():
            quantize_static(
                str(fp32_path), str(int8_path), reader, quant_format=QuantFormat.QOperator,
                per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
            )
        quantized = onnx.load(str(int8_path))
    _compact_onnx(quantized)
    _shrink_onnx(quantized)
    return _write_onnx(quantized, path)


# ------------------------------------------------------------------ running exports


def is_torchscript_file(path: str | Path) -> bool:
    """True for a TorchScript archive (a zip holding ``constants.pkl``/``code/``), not a state_dict."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError):
        return False
    return any(name.endswith("/constants.pkl") or "/code/" in name for name in names)


def _onnx_log_probs(path: Path, images: torch.Tensor, batch_size: int) -> torch.Tensor:
    try:
        import onnxruntime as ort
    except ImportError:
        raise ExportError("the onnxruntime backend needs onnxruntime: pip install 'tinydigits[export]'") \
            from None
    options = ort.SessionOptions()
    threads = int(os.environ.get("TINYDIGITS_THREADS", "0") or 0)
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as err:  # onnxruntime raises its own Fail/InvalidGraph/... types
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ExportError(f"{path}: not a usable ONNX model ({first})") from None
    name = session.get_inputs()[0].name
    outputs = [
        torch.from_numpy(session.run(None, {name: images[i : i + batch_size].numpy()})[0])
        for i in range(0, len(images), batch_size)
    ]
    return torch.cat(outputs) if outputs else torch.empty(0, 10)


def _torchscript_log_probs(path: Path, images: torch.Tensor, batch_size: int) -> torch.Tensor:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # still the way to load TorchScript
            module = torch.jit.load(str(path), map_location="cpu")
    except Exception as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ExportError(f"{path}: not a loadable TorchScript file ({first})") from None
    return predict_log_probs(module, images, batch_size)


def predict_log_probs_file(
    path: str | Path, images: torch.Tensor, backend: str | None = None, batch_size: int = 1000
) -> torch.Tensor:
    """Log-probabilities [N, 10] from an exported file: ONNX through ONNX Runtime, a
    TorchScript archive through ``torch.jit.load``. ``backend`` (``onnxruntime`` or ``torch``)
    defaults to what the file is."""
    path = Path(path)
    if not path.is_file():
        raise ExportError(f"{path}: no such file")
    images = images.detach().cpu().float().contiguous()
    torchscript = is_torchscript_file(path)
    if backend is None:
        backend = "torch" if torchscript else "onnxruntime"
    if backend == "onnxruntime":
        if torchscript:
            raise ExportError(f"{path}: a TorchScript archive; use --backend torch")
        return _onnx_log_probs(path, images, batch_size)
    if backend == "torch":
        if not torchscript:
            raise ExportError(f"{path}: not a TorchScript archive; use --backend onnxruntime for ONNX")
        return _torchscript_log_probs(path, images, batch_size)
    raise ExportError(f"unknown backend {backend!r}; choose torch or onnxruntime")


# --------------------------------------------------------------------- one call


@dataclass(frozen=True)
class ExportResult:
    path: Path
    format: str
    int8: bool
    size_bytes: int


def check_format(fmt: str, int8: bool = False) -> str:
    """The normalized format name; one-line errors for an unknown one or int8 TorchScript."""
    fmt = fmt.lower()
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
) -> ExportResult:
    """Export ``model`` in format ``fmt`` (``onnx`` or ``torchscript``); ``int8`` (ONNX only)
    needs ``calibration_images``."""
    fmt = check_format(fmt, int8)
    if int8:
        if calibration_images is None:
            raise ExportError("int8 export needs calibration images")
        written = export_onnx_int8(model, path, calibration_images)
    elif fmt == "onnx":
        written = export_onnx(model, path)
    else:
        written = export_torchscript(model, path)
    return ExportResult(written, fmt, int8, written.stat().st_size)


def calibration_subset(train_images: torch.Tensor, count: int = 2000, seed: int = 0) -> torch.Tensor:
    """A fixed, seeded sample of ``count`` training images (uint8 [N, 28, 28]), normalized."""
    from .data import normalize

    generator = torch.Generator().manual_seed(seed)
    index = torch.randperm(len(train_images), generator=generator)[:count]
    return normalize(train_images[index])


@dataclass(frozen=True)
class Comparison:
    """An exported file against the PyTorch model it came from, on the same images."""

    count: int
    max_abs_diff: float  # largest |log-prob difference| over all images and classes
    prediction_mismatches: int  # images whose argmax differs
    accuracy: float | None = None  # the export's, percent, when labels were given
    reference_accuracy: float | None = None  # the PyTorch model's

    def ok(self, tolerance: float = 1e-4) -> bool:
        return self.prediction_mismatches == 0 and self.max_abs_diff <= tolerance


def compare_with_torch(
    model: nn.Module,
    path: str | Path,
    images: torch.Tensor,
    labels: torch.Tensor | None = None,
    backend: str | None = None,
) -> Comparison:
    """Run the exported ``path`` and ``model`` on the same normalized images and compare;
    with ``labels``, also both accuracies."""
    exported = predict_log_probs_file(path, images, backend)
    reference = predict_log_probs(copy.deepcopy(model).cpu(), images.cpu())
    return Comparison(
        count=len(images),
        max_abs_diff=float((exported - reference).abs().max()) if len(images) else 0.0,
        prediction_mismatches=int((exported.argmax(1) != reference.argmax(1)).sum()),
        accuracy=None if labels is None else evaluate_log_probs(exported, labels).accuracy,
        reference_accuracy=None if labels is None else evaluate_log_probs(reference, labels).accuracy,
    )
