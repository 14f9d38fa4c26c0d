"""Running a model through an inference engine: PyTorch on weights files, ``torch.jit`` on
TorchScript archives, ONNX Runtime on ONNX files (fp32 or int8); and comparing an exported
file with the PyTorch model it came from.
"""

from __future__ import annotations

import copy
import os
import warnings
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import first_line, require
from ..evaluate import evaluate_log_probs, predict_log_probs
from ..io import WeightsError
from ..runtime import select_device
from ..weights import load_model
from . import ExportError

BACKENDS = ("torch", "torchscript", "onnxruntime")
LogProbs = Callable[[torch.Tensor], torch.Tensor]  # normalized images [N, 1, 28, 28] -> [N, 10]


def is_torchscript_file(path: str | Path) -> bool:
    """True for a TorchScript archive (a zip holding ``constants.pkl``/``code/``), not a state_dict."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError):
        return False
    return any(name.endswith("/constants.pkl") or "/code/" in name for name in names)


def onnx_session(path: str | Path, threads: int | None = None) -> Any:
    """An ONNX Runtime CPU session on ``path`` with ``threads`` intra-op threads (default:
    $TINYDIGITS_THREADS, else ONNX Runtime's choice) and no inter-op parallelism."""
    ort = require("onnxruntime", "export", "the onnxruntime backend")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or int(os.environ.get("TINYDIGITS_THREADS", "0") or 0)
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as err:  # onnxruntime raises its own Fail/InvalidGraph/... types
        raise ExportError(f"{path}: not a usable ONNX model ({first_line(err)})") from None


def _onnx_engine(path: Path, batch_size: int) -> LogProbs:
    session = onnx_session(path)
    name = session.get_inputs()[0].name

    def run(images: torch.Tensor) -> torch.Tensor:
        images = images.detach().cpu().float().contiguous()
        outputs = [torch.from_numpy(session.run(None, {name: images[i : i + batch_size].numpy()})[0])
                   for i in range(0, len(images), batch_size)]
        return torch.cat(outputs) if outputs else torch.empty(0, 10)

    return run


def _torchscript_engine(path: Path, batch_size: int) -> LogProbs:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # still the way to load TorchScript
            module = torch.jit.load(str(path), map_location="cpu")
    except Exception as err:
        raise ExportError(f"{path}: not a loadable TorchScript file ({first_line(err)})") from None
    return lambda images: predict_log_probs(module, images.detach().cpu().float(), batch_size)


def open_exported(path: str | Path, backend: str | None = None, batch_size: int = 1000) -> LogProbs:
    """Load an exported file for inference: ONNX through ONNX Runtime (``onnxruntime``), a
    TorchScript archive through ``torch.jit.load`` (``torchscript``); ``backend`` defaults to
    what the file is. A file that cannot be run fails here, before any image is read."""
    path = Path(path)
    if not path.is_file():
        raise ExportError(f"{path}: no such file")
    torchscript = is_torchscript_file(path)
    if backend is None:
        backend = "torchscript" if torchscript else "onnxruntime"
    if backend == "onnxruntime":
        if torchscript:
            raise ExportError(f"{path}: a TorchScript archive; use --backend torchscript")
        return _onnx_engine(path, batch_size)
    if backend == "torchscript":
        if not torchscript:
            raise ExportError(f"{path}: not a TorchScript archive; use --backend onnxruntime for ONNX")
        return _torchscript_engine(path, batch_size)
    raise ExportError(f"unknown backend {backend!r} for an exported file; choose torchscript or onnxruntime")


def open_engine(model_name: str, weights: str | Path, backend: str = "torch",
                device: str | None = None) -> LogProbs:
    """The model in ``weights`` ready to run on ``backend`` (one of :data:`BACKENDS`):
    ``torch`` loads a weights file (safetensors or a reference ``.pt``/``.pth`` state_dict);
    the others run an exported file. A bad file fails here, before any image is read."""
    weights = Path(weights)
    if backend not in BACKENDS:
        raise ExportError(f"unknown backend {backend!r}; choose one of: {', '.join(BACKENDS)}")
    if not weights.is_file():
        raise WeightsError(f"{weights}: no such weights file")
    if backend != "torch":
        return open_exported(weights, backend)
    if weights.suffix.lower() == ".onnx":
        raise ExportError(f"{weights}: an ONNX file; evaluate it with --backend onnxruntime")
    if is_torchscript_file(weights):
        # Loading TorchScript runs code from the file, so it is never done implicitly.
        raise ExportError(f"{weights}: a TorchScript program, not a state_dict; "
                          "evaluate it with --backend torchscript if you trust it")
    model = load_model(model_name, weights, device=select_device(device))
    return lambda images: predict_log_probs(model, images)


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
