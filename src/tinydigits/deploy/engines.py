"""Running a model through an inference engine: PyTorch on weights files, ``torch.jit`` on
TorchScript archives, ONNX Runtime and OpenVINO on ONNX files (fp32 or int8; a weights file
is exported to ONNX once and cached by its hash); and comparing an exported file with the
PyTorch model it came from.

``auto`` picks the fastest engine installed for the job, as measured here on 2 cores
(docs/BENCHMARKS.md): OpenVINO for batches (1.2-2.2x ONNX Runtime's throughput on an
AVX-512 host; 0.8-0.9x on an AVX2-only EPYC), ONNX Runtime
for single pictures (the lowest batch-1 latency), PyTorch when neither is installed or the
model runs on a GPU.

A number reader (:data:`tinydigits.models.READERS`) runs on the same engines: its engine maps
a batch of strips [N, 1, 32, W] (W a multiple of :data:`tinydigits.strips.COLUMN`, any from
one call to the next) to log-probabilities [N, 11, W / COLUMN], and says ``task == "number"`` so that
:func:`tinydigits.read.read_number` reads with it.
"""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import threading
import warnings
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..data import MNIST
from ..errors import first_line, require
from ..evaluate import evaluate_log_probs, predict_log_probs
from ..io import WeightsError, file_sha256
from ..models import REGISTRY, get_spec, model_with_conv_shapes
from ..runtime import cache_dir, package_version, resolve_threads, select_device
from ..sequence import greedy_decode
from ..strips import COLUMN, STRIP_HEIGHT, batch_strips, number_set, number_strip
from ..weights import load_model
from . import ExportError
from .export import FP32_TOLERANCE, MODEL_KEY, ExportResult, export_onnx

BACKENDS = ("auto", "torch", "torchscript", "onnxruntime", "openvino")
# Normalized images [N, 1, 28, 28] -> [N, 10]; a reader's strips [N, 1, 32, W] -> [N, 11, W / COLUMN].
LogProbs = Callable[[torch.Tensor], torch.Tensor]


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def _threads(threads: int | None) -> int:
    """``threads``, else $TINYDIGITS_THREADS, else the cores other work leaves free (the engines'
    own default, every core, collapses on a busy machine as torch's does)."""
    return resolve_threads(threads)


def is_torchscript_file(path: str | Path) -> bool:
    """True for a TorchScript archive (a zip holding ``constants.pkl``/``code/``), not a state_dict."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError):
        return False
    return any(name.endswith("/constants.pkl") or "/code/" in name for name in names)


@dataclass(frozen=True)
class OnnxGraph:
    """What an ONNX file says about itself before an engine runs it."""

    model: str | None  # the model its metadata names (tinydigits' exports do), else None
    conv_shapes: tuple[tuple[int, ...], ...] | None  # None: no convolution weights to read
    quantized: bool  # int8: quantize/dequantize or quantized operators in the graph
    # ONNX Runtime's own int8 operators (QLinearConv, com.microsoft.QLinearAdd, ...), which
    # `tinydigits export --int8` writes and OpenVINO cannot compile.
    ort_int8_ops: tuple[str, ...]


def read_onnx_graph(path: str | Path) -> OnnxGraph | None:
    """The facts :func:`open_exported` checks in an ONNX file, or None when the onnx package
    is not installed or cannot parse the file (the engine then says what is wrong with it).
    The files are tens of kilobytes, so reading one is cheap."""
    if not _installed("onnx"):
        return None
    import onnx

    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception:  # protobuf's DecodeError and friends: not an ONNX file
        return None
    graph = proto.graph
    named = {prop.key: prop.value for prop in proto.metadata_props}.get(MODEL_KEY)
    weights = {tensor.name: tuple(tensor.dims) for tensor in graph.initializer}
    # The weight is input 1 of Conv and ConvInteger, input 3 of QLinearConv.
    convs = [node.input[3 if node.op_type == "QLinearConv" else 1] for node in graph.node
             if node.op_type in ("Conv", "ConvInteger", "QLinearConv")]
    shapes = tuple(weights[name] for name in convs) if convs and all(n in weights for n in convs) else None
    ops = {(node.domain, node.op_type) for node in graph.node}
    ort_int8 = sorted(f"{domain}.{op}" if domain else op for domain, op in ops
                      if op.startswith("QLinear") or domain == "com.microsoft")
    quantized = bool(ort_int8) or any(op in ("QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear",
                                             "ConvInteger", "MatMulInteger") for _, op in ops)
    return OnnxGraph(named if named in REGISTRY else None, shapes, quantized, tuple(ort_int8))


def check_onnx_model(path: str | Path, model_name: str, graph: OnnxGraph | None) -> None:
    """Raise unless the ONNX file holds ``model_name``: as its metadata says, else as the
    shapes of its convolutions tell (a file that says neither is let through)."""
    expected = get_spec(model_name).name
    if graph is None:
        return
    if graph.model is not None:
        found, how = graph.model, "so says its metadata"
    elif graph.conv_shapes is not None:
        found, how = model_with_conv_shapes(graph.conv_shapes), "by its convolutions' shapes"
        if found is None:
            raise ExportError(f"{path}: not a {expected} model (its convolutions' shapes are none of "
                              f"{', '.join(REGISTRY)}'s)")
    else:
        return
    if found != expected:
        raise ExportError(f"{path}: a {found} model ({how}), not {expected}; use --model {found}")


def onnx_session(path: str | Path, threads: int | None = None) -> Any:
    """An ONNX Runtime CPU session on ``path`` with ``threads`` intra-op threads (default:
    $TINYDIGITS_THREADS, else the free cores) and no inter-op parallelism."""
    ort = require("onnxruntime", "export", "the onnxruntime backend")
    options = ort.SessionOptions()
    options.intra_op_num_threads = _threads(threads)
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as err:  # onnxruntime raises its own Fail/InvalidGraph/... types
        raise ExportError(f"{path}: not a usable ONNX model ({first_line(err)})") from None


def openvino_model(path: str | Path, threads: int | None = None, precision: str = "f32") -> Any:
    """An OpenVINO model compiled for the CPU from an ONNX file, with the settings that measured
    fastest here: the LATENCY hint (one stream; THROUGHPUT's several streams halve the speed
    of these tiny models on 2 cores) and ``threads`` inference threads (default as
    ``onnx_session``). ``precision`` stays f32 unless asked: on CPUs with AMX, OpenVINO's own
    default is bf16, about twice as fast here but a few test predictions differ from PyTorch's."""
    ov = require("openvino", "openvino", "the openvino backend")
    config: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": precision}
    config["INFERENCE_NUM_THREADS"] = _threads(threads)
    try:
        return ov.Core().compile_model(str(path), "CPU", config)
    except Exception as err:  # OpenVINO raises RuntimeError/its own types for unreadable models
        # Its messages open with a chain of source locations; the reason is the last line.
        lines = [line.strip(" -") for line in str(err).splitlines() if line.strip()]
        reason = lines[-1] if lines else type(err).__name__
        raise ExportError(f"{path}: not a model OpenVINO can compile ({reason[:200]})") from None


def _openvino_engine(path: Path, batch_size: int, threads: int | None) -> LogProbs:
    compiled = openvino_model(path, threads)
    local = threading.local()  # an infer request serves one thread at a time (the server has several)

    def run(images: torch.Tensor) -> torch.Tensor:
        if not hasattr(local, "request"):
            local.request = compiled.create_infer_request()
        images = images.detach().cpu().float().contiguous().numpy()
        # share_inputs: no copy of the batch going in; .copy(): the request reuses its output buffer
        outputs = [torch.from_numpy(local.request.infer({0: images[i : i + batch_size]}, share_inputs=True)[0]
                                    .copy()) for i in range(0, len(images), batch_size)]
        return torch.cat(outputs)

    return run


def _onnx_engine(path: Path, batch_size: int, threads: int | None) -> LogProbs:
    session = onnx_session(path, threads)
    name = session.get_inputs()[0].name

    def run(images: torch.Tensor) -> torch.Tensor:
        images = images.detach().cpu().float().contiguous()
        outputs = [torch.from_numpy(session.run(None, {name: images[i : i + batch_size].numpy()})[0])
                   for i in range(0, len(images), batch_size)]
        return torch.cat(outputs)

    return run


def _empty_answer(images: torch.Tensor) -> torch.Tensor:
    """The log-probabilities of an empty batch: [0, 10], or [0, 11, W / COLUMN] for strips (32 rows)."""
    if images.dim() == 4 and images.shape[2] == STRIP_HEIGHT:
        return torch.empty(0, 11, images.shape[3] // COLUMN)
    return torch.empty(0, 10)


def _answering_empty(run: LogProbs) -> LogProbs:
    """``run``, with an empty batch answered here: OpenVINO refuses to run one."""
    return lambda images: run(images) if len(images) else _empty_answer(images)


def _torchscript_engine(path: Path, batch_size: int) -> LogProbs:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # still the way to load TorchScript
            module = torch.jit.load(str(path), map_location="cpu")
    except Exception as err:
        raise ExportError(f"{path}: not a loadable TorchScript file ({first_line(err)})") from None
    return lambda images: predict_log_probs(module, images.detach().cpu().float(), batch_size)


def open_exported(path: str | Path, backend: str | None = None, batch_size: int = 1000,
                  threads: int | None = None, model_name: str | None = None) -> LogProbs:
    """Load an exported file for inference: ONNX through ONNX Runtime (``onnxruntime``, the
    default) or OpenVINO (``openvino``; not int8 files), a TorchScript archive through
    ``torch.jit.load`` (``torchscript``); ``backend`` defaults to what the file is. With
    ``model_name``, an ONNX file of another model is refused. A file that cannot be run
    fails here, before any image is read."""
    path = Path(path)
    if not path.is_file():
        raise ExportError(f"{path}: no such file")
    torchscript = is_torchscript_file(path)
    if backend is None:
        backend = "torchscript" if torchscript else "onnxruntime"
    if backend in ("onnxruntime", "openvino"):
        if torchscript:
            raise ExportError(f"{path}: a TorchScript archive; use --backend torchscript")
        graph = read_onnx_graph(path)
        if backend == "openvino" and graph is not None and graph.ort_int8_ops:
            raise ExportError(f"{path}: an int8 file of ONNX Runtime's quantized operators "
                              f"({', '.join(graph.ort_int8_ops)}), which OpenVINO cannot compile; "
                              "use --backend onnxruntime")
        engine = _onnx_engine if backend == "onnxruntime" else _openvino_engine
        run = engine(path, batch_size, threads)  # an unreadable file fails here, saying why
        if model_name is not None:
            check_onnx_model(path, model_name, graph)
        return _answering_empty(run)
    if backend == "torchscript":
        if not torchscript:
            raise ExportError(f"{path}: not a TorchScript archive; use --backend auto, torch, onnxruntime "
                              "or openvino")
        return _answering_empty(_torchscript_engine(path, batch_size))
    raise ExportError(f"unknown backend {backend!r} for an exported file; "
                      "choose torchscript, onnxruntime or openvino")


def cached_onnx(model_name: str, weights: str | Path, rebuild: bool = False) -> Path:
    """The fp32 ONNX export of a weights file, made once and kept in the cache under a key of
    the file's SHA-256 and the versions that wrote it (so an edited file or an upgrade gets a
    new export; it is never rebuilt per request). ``rebuild`` replaces a cached file."""
    weights = Path(weights)
    source = f"{file_sha256(weights)} {package_version()} {torch.__version__}"
    key = hashlib.sha256(source.encode()).hexdigest()
    path = cache_dir() / "onnx" / f"{model_name}-{key[:16]}.onnx"
    if rebuild or not path.is_file():
        # atomic: a racing process writes the same
        export_onnx(load_model(model_name, weights), path, model_name=get_spec(model_name).name)
    return path


def _open_cached(model_name: str, weights: Path, backend: str, threads: int | None) -> LogProbs:
    try:
        return open_exported(cached_onnx(model_name, weights), backend, threads=threads)
    except ExportError:  # a damaged cache file: export once more
        return open_exported(cached_onnx(model_name, weights, rebuild=True), backend, threads=threads)


def auto_backend(weights: str | Path, batch: bool = True, device: str | None = None) -> str:
    """What ``auto`` runs ``weights`` on: see the module docstring. An exported ONNX file
    needs an ONNX engine, and an int8 one ONNX Runtime (OpenVINO cannot compile the
    quantized operators ONNX Runtime's quantizer writes); a weights file goes through one
    when the ONNX exporter is installed too; a TorchScript file is never run implicitly."""
    weights = Path(weights)
    if is_torchscript_file(weights):
        raise ExportError(f"{weights}: a TorchScript program; run it with --backend torchscript "
                          "if you trust it")
    is_onnx = weights.suffix.lower() == ".onnx"
    if is_onnx and (graph := read_onnx_graph(weights)) is not None and graph.quantized:
        if not _installed("onnxruntime"):
            raise ExportError(f"{weights}: an int8 ONNX file needs onnxruntime; "
                              "pip install 'tinydigits[export]'")
        return "onnxruntime"
    on_cpu = device is None or select_device(device).type == "cpu"
    exportable = is_onnx or (_installed("onnx") and _installed("onnxscript"))
    if on_cpu and exportable:
        for engine in (("openvino", "onnxruntime") if batch else ("onnxruntime", "openvino")):
            if _installed(engine):
                return engine
    if is_onnx:
        raise ExportError(f"{weights}: an ONNX file needs onnxruntime or openvino on the CPU; "
                          "pip install 'tinydigits[export]' or 'tinydigits[openvino]'")
    return "torch"


@dataclass(frozen=True)
class Engine:
    """A model ready to run: ``engine(images)`` gives log-probabilities; ``backend`` says how,
    ``task`` what it reads (``"digit"``, or ``"number"``: a reader's strips)."""

    backend: str
    run: LogProbs
    task: str = "digit"

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return self.run(images)


def open_engine(model_name: str, weights: str | Path, backend: str = "auto", device: str | None = None,
                *, batch: bool = True, threads: int | None = None) -> Engine:
    """The model in ``weights`` ready to run on ``backend`` (one of :data:`BACKENDS`;
    ``batch`` tells ``auto`` whether it will see batches or single pictures). ``torch``
    loads a weights file (safetensors or a reference ``.pt``/``.pth`` state_dict);
    ``onnxruntime`` and ``openvino`` run an ONNX file, or a weights file through its cached
    ONNX export; ``torchscript`` runs a TorchScript file. A number reader (``reader``,
    ``reader-small``) runs on all but ``torchscript``, its strips of any width. A bad file
    fails here, before any image is read."""
    weights = Path(weights)
    task = get_spec(model_name).task
    if backend not in BACKENDS:
        raise ExportError(f"unknown backend {backend!r}; choose one of: {', '.join(BACKENDS)}")
    if not weights.is_file():
        raise WeightsError(f"{weights}: no such weights file")
    automatic = backend == "auto"
    if automatic:
        backend = auto_backend(weights, batch, device)
    is_onnx, torchscript = weights.suffix.lower() == ".onnx", is_torchscript_file(weights)
    if backend in ("onnxruntime", "openvino") and not is_onnx and not torchscript:
        try:
            return Engine(backend, _open_cached(model_name, weights, backend, threads), task)
        except ExportError:
            if not automatic:
                raise
            backend = "torch"  # no usable cache (a read-only home, say): auto still works
    if backend == "torchscript" and task == "number":
        raise ExportError(f"{model_name} does not run on torchscript (readers export as ONNX only); "
                          "choose --backend auto, torch, onnxruntime or openvino")
    if backend != "torch":
        return Engine(backend, open_exported(weights, backend, threads=threads, model_name=model_name), task)
    if is_onnx:
        raise ExportError(f"{weights}: an ONNX file; evaluate it with --backend onnxruntime or openvino")
    if torchscript:
        # Loading TorchScript runs code from the file, so it is never done implicitly.
        raise ExportError(f"{weights}: a TorchScript program, not a state_dict; "
                          "evaluate it with --backend torchscript if you trust it")
    model = load_model(model_name, weights, device=select_device(device))
    return Engine("torch", _answering_empty(lambda images: predict_log_probs(model, images)), task)


def predict_log_probs_file(path: str | Path, images: torch.Tensor, backend: str | None = None,
                           batch_size: int = 1000) -> torch.Tensor:
    """Log-probabilities [N, 10] of normalized images from an exported file (see :func:`open_exported`)."""
    return open_exported(path, backend, batch_size)(images)


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


def check_export(model: nn.Module, result: ExportResult, images: torch.Tensor,
                 labels: torch.Tensor) -> Comparison:
    """Run the exported file and ``model`` on the same normalized images and compare them.
    An fp32 export must give the same predictions with log-probabilities within
    :data:`FP32_TOLERANCE`, or this raises; int8 is reported, not held to it."""
    check = compare_with_torch(model, result.path, images, labels)
    if not result.int8 and not check.ok(FP32_TOLERANCE):
        raise ExportError(f"{result.path}: does not match PyTorch within {FP32_TOLERANCE:g} "
                          f"({check.prediction_mismatches} predictions differ, max |log-prob difference| "
                          f"{check.max_abs_diff:.2e})")
    return check


def reader_check_strips(count: int = 50, mnist: MNIST | None = None,
                        data_dir: str | Path | None = None) -> list[torch.Tensor]:
    """The strips of the first ``count`` pictures of the touching test set
    (:func:`tinydigits.strips.number_set`, of ``mnist`` or the set in ``data_dir``), each its
    own width: what a reader's export is checked on."""
    pictures = number_set("touching", count=count, mnist=mnist, data_dir=data_dir)
    return [number_strip(picture.data).pixels for picture in pictures]


def compare_reader(model: nn.Module, engine: LogProbs, strips: list[torch.Tensor]) -> Comparison:
    """A number reader's engine (an export's, say) against the PyTorch ``model`` on the same
    strips: each strip alone, at its own width, then all of them in one padded batch. ``count``
    is the readings compared (twice the strips), ``prediction_mismatches`` those whose greedy
    decoding differs, ``max_abs_diff`` over each strip's own columns (not the padding)."""
    reference = copy.deepcopy(model).cpu().eval()
    worst, differ = 0.0, 0
    for group in [*([strip] for strip in strips), strips] if strips else []:
        batch, lengths = batch_strips(group)
        with torch.no_grad():
            expected = reference(batch)
        got = engine(batch)
        for row, length in enumerate(lengths.tolist()):
            mine, theirs = got[row, :, :length], expected[row, :, :length]
            worst = max(worst, float((mine - theirs).abs().max()))
            differ += [s.digit for s in greedy_decode(mine)] != [s.digit for s in greedy_decode(theirs)]
    return Comparison(count=2 * len(strips), max_abs_diff=worst, prediction_mismatches=differ)


def check_reader_export(model: nn.Module, result: ExportResult, strips: list[torch.Tensor]) -> Comparison:
    """:func:`compare_reader` on an exported file (run by ONNX Runtime), held to
    :data:`FP32_TOLERANCE` and the same readings, or this raises."""
    check = compare_reader(model, open_exported(result.path), strips)
    if not check.ok(FP32_TOLERANCE):
        raise ExportError(f"{result.path}: does not match PyTorch within {FP32_TOLERANCE:g} "
                          f"({check.prediction_mismatches} of {check.count} readings differ, max |log-prob "
                          f"difference| {check.max_abs_diff:.2e})")
    return check
