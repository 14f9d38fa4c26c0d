"""The measurements of ``tinydigits bench``: training and inference speed, memory and FLOPs.

Every number in the report comes from a measurement taken by the same run. Training
throughput is measured on three rungs, all on the same model, batch 128:

(a) reference-style: a torch ``Dataset`` rotating each image with PIL and converting it to
    a normalized tensor, a shuffling ``DataLoader`` (num_workers=0), SGD; the way the
    reference notebooks train (torchvision's RandomRotation + ToTensor + Normalize, written out);
(b) :func:`tinydigits.train.train_one_epoch` with the model in NCHW (contiguous) layout:
    in-memory tensors, batched :func:`tinydigits.augment.random_affine`;
(c) the same with the model in channels_last, which is what ``tinydigits train`` runs.

Peak memory is measured in fresh subprocesses (``python -m tinydigits.lab.bench.child
train|infer``) so that no measurement inherits another's peak.
"""

from __future__ import annotations

import copy
import importlib.metadata
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from ... import data
from ...augment import random_affine
from ...deploy.engines import onnx_session, openvino_model
from ...deploy.export import calibration_subset, export_onnx, export_onnx_int8, export_torchscript
from ...deploy.fold import fold_batchnorm
from ...errors import ConfigError, TinyDigitsError, require
from ...evaluate import evaluate, evaluate_log_probs
from ...models import MODELS, build_model, get_spec
from ...optim import make_optimizer, make_schedule
from ...recipes import RECIPE_KINDS, Recipe, get_recipe
from ...runtime import cpu_name, load_average, peak_rss_kib, resolve_threads, select_device, set_threads
from ...train import BACKGROUND, ensemble_log_probs, load_teachers, train, train_one_epoch
from ...weights import get_weights, load_model
from ..commands import python_module_argv

CHILD_MODULE = "tinydigits.lab.bench.child"

__all__ = [
    "BATCH", "FULL", "QUICK", "ReferenceStyleDataset", "Settings", "count_flops", "machine_info",
    "matmul_peak", "run_benchmark",
]

BATCH = 128
TARGET_ACCURACY = 99.40  # percent, final test accuracy of MNIST-Medium
REFERENCE_ROTATION = 5.0  # degrees: the notebooks' RandomRotation where the recipe sets none
Log = Callable[[str], None]


@dataclass(frozen=True)
class Settings:
    """How much to measure: :data:`FULL` for the report, :data:`QUICK` for smoke tests."""

    windows: int = 5  # timed windows per training figure; the median is reported
    window_batches: int = 40  # batches of 128 per window
    warmup_windows: int = 1
    infer_images: int = 10_000  # test images for inference throughput and accuracy
    infer_batch_sizes: tuple[int, ...] = (1000, 10_000)
    infer_repeats: int = 5  # timed passes over the images per batch size; the median is reported
    latency_calls: int = 2000
    latency_warmup: int = 200
    matmul_size: int = 2048
    calibration_images: int = 2000  # for the int8 export, as `tinydigits export --int8`
    tta_train_images: int | None = None  # None: all; else a subset, for smoke tests only
    tta_epochs: int | None = None  # None: the recipes' own


FULL = Settings()
QUICK = Settings(windows=2, window_batches=2, infer_images=1000, infer_batch_sizes=(250, 1000),
                 infer_repeats=1, latency_calls=20, latency_warmup=5, matmul_size=256,
                 calibration_images=200, tta_train_images=2500, tta_epochs=1)


def _sync(device: torch.device) -> None:
    # CUDA runs asynchronously: without this a timer would measure only the kernel launches.
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ------------------------------------------------------------------------ machine


def machine_info(device: torch.device, threads: int) -> dict[str, Any]:
    """What the figures depend on: CPU, cores, library versions, threads, the GPU if used."""
    versions = {}
    for module in ("onnxruntime", "openvino"):
        try:
            versions[module] = importlib.metadata.version(module)
        except importlib.metadata.PackageNotFoundError:
            versions[module] = None
    return {
        "cpu": cpu_name(),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        # On a GPU, TF32 (if allowed) makes "float32" convolutions and matmuls faster and less exact.
        "tf32": {"matmul": torch.backends.cuda.matmul.allow_tf32, "cudnn": torch.backends.cudnn.allow_tf32}
        if device.type == "cuda" else None,
        "device": str(device),
        "threads": threads,
        "torch": torch.__version__,
        **versions,
        "python": platform.python_version(),
        "platform": platform.platform(),
        # Other work on the machine skews every figure; the load average shows whether there was any.
        "load_average": [round(x, 2) for x in average] if (average := load_average()) else None,
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }


# -------------------------------------------------------------------------- limit


def count_flops(model_name: str, batch: int = 16) -> dict[str, float]:
    """FLOPs per image of a forward pass and of a training step (forward + backward), as
    counted by ``torch.utils.flop_counter.FlopCounterMode`` (convolutions and matmuls)."""
    from torch.utils.flop_counter import FlopCounterMode

    model = build_model(model_name, dropout=0.0)
    images, targets = torch.zeros(batch, 1, 28, 28), torch.zeros(batch, dtype=torch.long)
    model.eval()
    with FlopCounterMode(display=False) as forward, torch.no_grad():
        model(images)
    model.train()
    with FlopCounterMode(display=False) as step:
        F.nll_loss(model(images), targets).backward()
    return {"forward": forward.get_total_flops() / batch, "train_step": step.get_total_flops() / batch}


def matmul_peak(size: int, device: torch.device, repeats: int = 10) -> dict[str, Any]:
    """The measured (not theoretical) float32 peak: the best of ``repeats`` size x size matmuls."""
    a, b = torch.randn(size, size, device=device), torch.randn(size, size, device=device)
    out = torch.mm(a, b)  # warm-up, and the output buffer
    _sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b, out=out)
        _sync(device)
        times.append(time.perf_counter() - start)
    return {"size": size, "repeats": repeats, "gflop_per_s": 2 * size**3 / min(times) / 1e9,
            "median_gflop_per_s": 2 * size**3 / statistics.median(times) / 1e9}


# -------------------------------------------------------------- training throughput


class ReferenceStyleDataset(torch.utils.data.Dataset):
    """MNIST as the reference notebooks feed it: per sample, a PIL image rotated by
    U(-degrees, degrees) (nearest neighbour, fill 0), then ToTensor and Normalize, written out."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, degrees: float = REFERENCE_ROTATION):
        self.images = images.numpy()
        self.labels = labels.tolist()
        self.degrees = degrees

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = Image.fromarray(self.images[index])
        angle = float(torch.empty(1).uniform_(-self.degrees, self.degrees))  # as torchvision draws it
        image = image.rotate(angle, resample=Image.Resampling.NEAREST, fillcolor=0)
        pixels = torch.from_numpy(np.array(image, dtype=np.uint8, copy=True)).unsqueeze(0)
        return (pixels.float().div(255) - data.MEAN) / data.STD, self.labels[index]


def _cycle(loader: torch.utils.data.DataLoader) -> Iterator[Any]:
    while True:
        yield from loader


def time_windows(run_window: Callable[[], int], device: torch.device, settings: Settings) -> dict[str, Any]:
    """Images/s of each timed window after the warm-up ones, and their median.
    ``run_window`` processes one window and returns how many images it saw."""
    for _ in range(settings.warmup_windows):
        run_window()
    rates = []
    for _ in range(settings.windows):
        _sync(device)
        start = time.perf_counter()
        count = run_window()
        _sync(device)
        rates.append(count / (time.perf_counter() - start))
    return {"images_per_s": statistics.median(rates), "windows": rates}


def _reference_recipe(name: str) -> Recipe:
    """The notebooks' recipe for a model; a model designed here (Nano) has no notebook, so its
    reference-style loop takes MNIST-Medium's (SGD with momentum 0.9: the optimizer, not its
    learning rate, sets the time a step takes)."""
    return get_recipe(name if name in RECIPE_KINDS["reference"] else "medium", "reference")


def _reference_window(name: str, images: torch.Tensor, labels: torch.Tensor, device: torch.device,
                      settings: Settings, pipeline_only: bool = False) -> Callable[[], int]:
    degrees = _reference_recipe(name).rotation or REFERENCE_ROTATION
    loader = torch.utils.data.DataLoader(ReferenceStyleDataset(images, labels, degrees), batch_size=BATCH,
                                         shuffle=True, num_workers=0)
    batches = _cycle(loader)
    # The trainer's model (dropout from the default recipe), so only the loop differs.
    model = build_model(name, dropout=get_recipe(name).dropout).to(device)
    optimizer = make_optimizer(model.parameters(), _reference_recipe(name))  # SGD, momentum 0.9

    def run() -> int:
        model.train()
        seen = correct = 0
        for _ in range(settings.window_batches):
            batch, targets = next(batches)
            seen += len(targets)
            if pipeline_only:
                continue
            batch, targets = batch.to(device), targets.to(device)
            optimizer.zero_grad()
            output = model(batch)
            loss = F.nll_loss(output, targets)
            loss.backward()
            optimizer.step()
            correct += output.argmax(dim=1).eq(targets).sum().item()  # per step, as the notebooks do
        return seen

    return run


def _trainer_window(name: str, images: torch.Tensor, labels: torch.Tensor, settings: Settings,
                    channels_last: bool = True, teachers: list[nn.Module] | None = None) -> Callable[[], int]:
    """One window = one ``train_one_epoch`` over ``images`` (already normalized, on the device);
    with ``teachers``, distilling their ensemble on each augmented batch as the recipe says."""
    recipe = get_recipe(name).replace(batch_size=BATCH, epochs=settings.warmup_windows + settings.windows)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    # For 1-channel input the batch's channels_last conversion in train_one_epoch changes nothing,
    # so a model kept contiguous runs the whole network in NCHW: rung (b).
    model = build_model(name, dropout=recipe.dropout).to(images.device, memory_format=layout)
    optimizer = make_optimizer(model.parameters(), recipe)
    schedule = make_schedule(optimizer, recipe, steps_per_epoch=-(-len(images) // BATCH))
    generator = torch.Generator(device=images.device).manual_seed(0)

    def teacher(batch: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        return ensemble_log_probs(teachers, batch)

    def run() -> int:
        train_one_epoch(model, optimizer, schedule, images, labels, recipe, generator,
                        teacher=teacher if teachers else None)
        return len(images)

    return run


def _augment_window(name: str, images: torch.Tensor, settings: Settings) -> Callable[[], int]:
    """The trainer's batched augmentation alone, on the same batches."""
    recipe = get_recipe(name)
    generator = torch.Generator(device=images.device).manual_seed(0)

    def run() -> int:
        for start in range(0, len(images), BATCH):
            random_affine(images[start : start + BATCH], degrees=recipe.rotation, translate=recipe.translate,
                          scale=recipe.scale, background=BACKGROUND, generator=generator)
        return len(images)

    return run


def training_throughput(name: str, mnist: data.MNIST, device: torch.device, settings: Settings,
                        log: Log) -> dict[str, Any]:
    """The ladder (a) -> (b) -> (c) for one model, plus each input pipeline alone."""
    count = settings.window_batches * BATCH
    raw_images, raw_labels = mnist.train_images[:count], mnist.train_labels[:count]
    images, labels = data.normalize(raw_images).to(device), raw_labels.to(device)
    rungs = {
        "reference": lambda: _reference_window(name, raw_images, raw_labels, device, settings),
        "tensors_nchw": lambda: _trainer_window(name, images, labels, settings, channels_last=False),
        "trainer": lambda: _trainer_window(name, images, labels, settings, channels_last=True),
        "reference_pipeline_only": lambda: _reference_window(name, raw_images, raw_labels, device, settings,
                                                             pipeline_only=True),
        "augmentation_only": lambda: _augment_window(name, images, settings),
    }
    recipe = get_recipe(name)
    if recipe.distill and recipe.teacher_augmented:  # a teacher pass per step: what it costs
        teachers, _ = load_teachers(recipe.teacher, device)  # in channels_last, as train loads them
        nchw = [copy.deepcopy(t).to(memory_format=torch.contiguous_format) for t in teachers]
        rungs["distill_nchw"] = lambda: _trainer_window(name, images, labels, settings, teachers=nchw)
        rungs["distill"] = lambda: _trainer_window(name, images, labels, settings, teachers=teachers)
    result: dict[str, Any] = {
        "rotation_reference": _reference_recipe(name).rotation or REFERENCE_ROTATION,
        "images_per_window": count,
    }
    if "distill" in rungs:
        result["teachers"] = len(teachers)
        result["epoch_images"] = len(mnist.train_images) - recipe.val_size
    for key, make in rungs.items():
        log(f"training throughput: {name} {key}")
        result[key] = time_windows(make(), device, settings)
    return result


def thread_effect(name: str, mnist: data.MNIST, threads: int, settings: Settings, log: Log) -> dict[str, Any]:
    """The trainer's throughput at 1, 2 and ``threads`` CPU threads."""
    count = settings.window_batches * BATCH
    images, labels = data.normalize(mnist.train_images[:count]), mnist.train_labels[:count]
    rates = {}
    try:
        for n in sorted({1, 2, threads}):
            set_threads(n)
            log(f"training throughput: {name} trainer, {n} thread(s)")
            rates[str(n)] = time_windows(_trainer_window(name, images, labels, settings), torch.device("cpu"),
                                         settings)
    finally:
        set_threads(threads)
    return {"model": name, "by_threads": rates}


# ---------------------------------------------------------------- time to accuracy


def _smoke_slice(mnist: data.MNIST, recipe: Recipe, count: int | None) -> tuple[data.MNIST, Recipe]:
    """With ``count`` (smoke tests only), the first ``count`` training images and a validation split
    that fits them; else both unchanged."""
    if not count:
        return mnist, recipe
    sliced = data.MNIST(mnist.train_images[:count], mnist.train_labels[:count], mnist.test_images,
                        mnist.test_labels)
    return sliced, recipe.replace(val_size=min(recipe.val_size, count // 5))


def time_to_accuracy(mnist: data.MNIST, device: torch.device, threads: int, settings: Settings,
                     log: Log) -> dict[str, Any]:
    """MNIST-Medium trained to the end with the default and with the reference recipe, each a
    whole ``tinydigits.train.train`` call timed from outside."""
    result: dict[str, Any] = {"model": "medium", "target_accuracy": TARGET_ACCURACY}
    for kind in ("default", "reference"):
        run_data, recipe = _smoke_slice(mnist, get_recipe("medium", kind), settings.tta_train_images)
        recipe = recipe.replace(epochs=settings.tta_epochs or recipe.epochs)
        epochs = f"{recipe.epochs} epoch{'' if recipe.epochs == 1 else 's'}"
        log(f"time to accuracy: medium, {kind} recipe, {epochs}")
        with tempfile.TemporaryDirectory(prefix="tinydigits-bench-") as tmp:
            start = time.perf_counter()
            run = train("medium", recipe, mnist=run_data, run_dir=Path(tmp) / "run", device=str(device),
                        threads=threads, progress=False, log=lambda _line: None)
            wall = time.perf_counter() - start
        accuracy = run.test["accuracy"] if run.test else float("nan")
        result[kind] = {"epochs": recipe.epochs, "wall_s": wall, "train_s": run.seconds,
                        "test_accuracy": accuracy, "reached": accuracy >= TARGET_ACCURACY,
                        "recipe": recipe.to_dict()}
    result["reference_over_default"] = result["reference"]["wall_s"] / result["default"]["wall_s"]
    return result


# ----------------------------------------------------------------------- inference


@dataclass
class Backend:
    """One way of running a model: a batch in, log-probabilities out."""

    name: str
    run: Callable[[Any], Any]  # one batch (as ``prepare`` made it) -> log-probabilities
    prepare: Callable[[torch.Tensor], Any]  # normalized CPU images -> what ``run`` takes
    to_tensor: Callable[[Any], torch.Tensor]  # what ``run`` returns -> CPU tensor
    single: Callable[[], Any]  # one batch-1 call on a preallocated input


def _torch_backend(name: str, module: nn.Module, device: torch.device, first: torch.Tensor) -> Backend:
    module = module.to(device).eval()
    one = first.to(device)
    return Backend(name, module, lambda x: x.to(device), lambda y: y.float().cpu(), lambda: module(one))


def _ort_backend(name: str, path: Path, threads: int, first: torch.Tensor) -> Backend:
    import onnxruntime as ort

    session = onnx_session(path, threads)
    input_name, output_name = session.get_inputs()[0].name, session.get_outputs()[0].name
    # Batch 1 through IOBinding on preallocated buffers: no per-call allocation or dict building.
    one = ort.OrtValue.ortvalue_from_numpy(first.numpy().copy())
    out = ort.OrtValue.ortvalue_from_numpy(np.zeros((1, 10), dtype=np.float32))
    binding = session.io_binding()
    binding.bind_ortvalue_input(input_name, one)
    binding.bind_ortvalue_output(output_name, out)
    return Backend(name, lambda x: session.run([output_name], {input_name: x})[0], lambda x: x.numpy(),
                   torch.from_numpy, lambda: session.run_with_iobinding(binding))


def _openvino_backend(name: str, path: Path, threads: int, first: torch.Tensor,
                      precision: str = "f32") -> Backend:
    compiled = openvino_model(path, threads, precision)  # first: a missing openvino is a one-line error
    import openvino as ov

    batches, single = compiled.create_infer_request(), compiled.create_infer_request()
    single.set_input_tensor(ov.Tensor(first.numpy().copy()))  # batch 1 on a preallocated input
    # .copy(): the request reuses its output buffer, and the outputs of a pass are kept.
    return Backend(name, lambda x: batches.infer({0: x}, share_inputs=True)[0].copy(), lambda x: x.numpy(),
                   torch.from_numpy, single.infer)


def _has_bf16() -> bool:
    ov = require("openvino", "openvino", "the openvino backend")
    return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def inference_backends(name: str, mnist: data.MNIST, device: torch.device, threads: int,
                       settings: Settings, workdir: Path) -> tuple[list[Backend], list[dict[str, str]]]:
    """Every backend for the shipped weights of ``name``, and the ones skipped (with why)."""
    model = load_model(name, pretrained=True)  # on the CPU: folding and exporting work there
    first = data.normalize(mnist.test_images[:1])
    folded = fold_batchnorm(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit is deprecated in favour of torch.export
        scripted = torch.jit.load(str(export_torchscript(model, workdir / f"{name}.pt")), map_location=device)
        frozen = torch.jit.optimize_for_inference(torch.jit.freeze(scripted.eval()))
    skipped, onnx_backends = [], []
    if device.type != "cpu":
        skipped.append({"backend": "ONNX Runtime fp32 and int8", "why": "CPU-only, not run on a GPU"})
    else:
        try:
            fp32 = export_onnx(model, workdir / f"{name}.onnx")
            calibration = calibration_subset(mnist.train_images, settings.calibration_images)
            int8 = export_onnx_int8(model, workdir / f"{name}-int8.onnx", calibration)
            onnx_backends = [_ort_backend("ONNX Runtime fp32", fp32, threads, first),
                             _ort_backend("ONNX Runtime int8", int8, threads, first)]
        except TinyDigitsError as err:  # an export failed, or onnx is not installed
            skipped.append({"backend": "ONNX Runtime fp32 and int8", "why": str(err)})
        else:
            try:
                onnx_backends.append(_openvino_backend("OpenVINO fp32", fp32, threads, first))
            except TinyDigitsError as err:  # openvino is not installed
                skipped.append({"backend": "OpenVINO fp32", "why": str(err)})
            else:
                if _has_bf16():  # OpenVINO's default where the CPU has it: faster, not exact
                    try:
                        onnx_backends.append(_openvino_backend("OpenVINO bf16", fp32, threads, first, "bf16"))
                    except TinyDigitsError as err:  # e.g. its kernels capped below bf16 (ONEDNN_MAX_CPU_ISA)
                        skipped.append({"backend": "OpenVINO bf16", "why": str(err)})
                else:
                    skipped.append({"backend": "OpenVINO bf16", "why": "this CPU has no bf16 support"})
            skipped.append({"backend": "OpenVINO int8",
                            "why": "OpenVINO's ONNX reader does not take ONNX Runtime's QOperator int8 graph "
                                   "(per-channel QLinearConv, com.microsoft.QLinearAdd)"})
    # Moved to the device only now (Module.to works in place): folding and exporting need the CPU model.
    backends = [_torch_backend("PyTorch eager", model, device, first),
                _torch_backend("PyTorch eager, BatchNorm folded", folded, device, first),
                _torch_backend("TorchScript, frozen", frozen, device, first), *onnx_backends]
    return backends, skipped


@torch.inference_mode()
def measure_backend(backend: Backend, images: torch.Tensor, labels: torch.Tensor, device: torch.device,
                    settings: Settings, reference: torch.Tensor | None = None) -> dict[str, Any]:
    """Throughput over ``images`` at each batch size (with the accuracy of those outputs, and
    how many predictions differ from ``reference``), and batch-1 latency."""
    inputs = backend.prepare(images)  # on the device (or as numpy) before any timing
    by_batch = {}
    for batch in settings.infer_batch_sizes:
        batch = min(batch, len(images))

        def one_pass(batch: int = batch) -> list[Any]:
            return [backend.run(inputs[i : i + batch]) for i in range(0, len(images), batch)]

        outputs = one_pass()  # warm-up; its outputs are the ones checked
        _sync(device)
        log_probs = torch.cat([backend.to_tensor(o) for o in outputs])
        times = []
        for _ in range(settings.infer_repeats):
            start = time.perf_counter()
            one_pass()
            _sync(device)
            times.append(time.perf_counter() - start)
        by_batch[str(batch)] = {"images_per_s": len(images) / statistics.median(times),
                                "accuracy": evaluate_log_probs(log_probs, labels).accuracy,
                                "predictions": log_probs.argmax(1)}
    best = max(by_batch, key=lambda b: by_batch[b]["images_per_s"])
    predictions = by_batch[best]["predictions"]
    for figures in by_batch.values():
        del figures["predictions"]
    for _ in range(settings.latency_warmup):
        backend.single()
    _sync(device)
    latencies = []
    for _ in range(settings.latency_calls):
        start = time.perf_counter()
        backend.single()
        _sync(device)
        latencies.append((time.perf_counter() - start) * 1e6)
    return {"backend": backend.name, "by_batch": by_batch, "best_batch": int(best),
            "images_per_s": by_batch[best]["images_per_s"], "accuracy": by_batch[best]["accuracy"],
            "differs_from_pytorch": None if reference is None else int((predictions != reference).sum()),
            "predictions": predictions,
            "latency_us_median": statistics.median(latencies),
            "latency_us_p99": float(np.percentile(latencies, 99))}


def inference(name: str, mnist: data.MNIST, device: torch.device, threads: int, settings: Settings,
              log: Log) -> dict[str, Any]:
    images = data.normalize(mnist.test_images[: settings.infer_images])
    labels = mnist.test_labels[: settings.infer_images]
    with tempfile.TemporaryDirectory(prefix="tinydigits-bench-") as tmp:
        log(f"inference: {name}, exporting")
        backends, skipped = inference_backends(name, mnist, device, threads, settings, Path(tmp))
        rows = []
        reference = None  # the first backend's (PyTorch eager's) predictions
        for backend in backends:
            log(f"inference: {name}, {backend.name}")
            row = measure_backend(backend, images, labels, device, settings, reference)
            predictions = row.pop("predictions")
            reference = predictions if reference is None else reference
            rows.append(row)
    return {"images": len(images), "backends": rows, "skipped": skipped,
            "weights_sha256": get_weights(name).sha256}


# -------------------------------------------------------------------------- memory


def child_peak_memory(kind: str, name: str, device: str, threads: int, quick: bool,
                      data_dir: str | Path | None) -> dict[str, Any]:
    """Run in a fresh process (:mod:`tinydigits.lab.bench.child`): train one epoch, or run
    inference, and return the process's peak memory."""
    set_threads(threads)
    dev = select_device(device)
    after_imports = peak_rss_kib()
    mnist = data.load_mnist(data_dir)
    if kind == "train":
        mnist, recipe = _smoke_slice(mnist, get_recipe(name).replace(epochs=1),
                                     QUICK.tta_train_images if quick else None)
        with tempfile.TemporaryDirectory(prefix="tinydigits-bench-") as tmp:
            train(name, recipe, mnist=mnist, run_dir=Path(tmp) / "run", device=str(dev), threads=threads,
                  progress=False, log=lambda _line: None)
    elif kind == "infer":
        count = (QUICK if quick else FULL).infer_images
        evaluate(load_model(name, pretrained=True, device=dev), data.normalize(mnist.test_images[:count]),
                 mnist.test_labels[:count], batch_size=1000)
    else:
        raise ConfigError(f"unknown child kind {kind!r}; choose train or infer")
    result: dict[str, Any] = {"kind": kind, "model": name, "after_imports_kib": after_imports,
                              "peak_kib": peak_rss_kib()}
    if dev.type == "cuda":
        result["cuda_peak_allocated_bytes"] = torch.cuda.max_memory_allocated(dev)
    return result


def peak_memory(kind: str, name: str, device: torch.device, threads: int, quick: bool,
                data_dir: str | Path | None, log: Log) -> dict[str, Any]:
    """:func:`child_peak_memory` in a fresh ``python -m tinydigits.lab.bench.child`` process."""
    command = python_module_argv(CHILD_MODULE, [kind], {"model": name, "device": device, "threads": threads,
                                                         "quick": quick or None, "data_dir": data_dir})
    log(f"peak memory: {name} {kind} (subprocess)")
    proc = subprocess.run(command, capture_output=True, text=True, timeout=3600, check=False)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1][:300]
        raise TinyDigitsError(f"the {kind} memory measurement failed (exit {proc.returncode}): {last}; "
                              f"run {shlex.join(['python', *command[1:]])} to see all of it")
    return json.loads(lines[-1])


# ----------------------------------------------------------------------- one run


def run_benchmark(models: Sequence[str] | None = None, *, device: str | None = None,
                  threads: int | None = None, quick: bool = False, time_to_accuracy_too: bool = True,
                  data_dir: str | Path | None = None,
                  log: Log = lambda line: print(line, file=sys.stderr)) -> dict[str, Any]:
    """Every measurement, as one JSON-able dict (what :func:`write_report` writes)."""
    names = [get_spec(n).name for n in (models or MODELS)]
    threads = resolve_threads(threads)
    dev = select_device(device)
    before = torch.get_num_threads()
    try:
        set_threads(threads)
        return _measure_all(names, dev, threads, quick, time_to_accuracy_too, data_dir, log) | {
            "options": {"device": device, "time_to_accuracy": time_to_accuracy_too}}
    finally:
        torch.set_num_threads(before)  # a library call leaves the process as it found it


def _measure_all(names: list[str], dev: torch.device, threads: int, quick: bool, time_to_accuracy_too: bool,
                 data_dir: str | Path | None, log: Log) -> dict[str, Any]:
    settings = QUICK if quick else FULL
    mnist = data.load_mnist(data_dir)
    results: dict[str, Any] = {
        "machine": machine_info(dev, threads), "quick": quick, "models": names, "settings": asdict(settings),
    }
    results["flops"] = {name: count_flops(name) for name in names}
    # A GPU needs a much larger matmul than a CPU to approach its peak.
    size = settings.matmul_size if dev.type == "cpu" else max(settings.matmul_size, 8192)
    log(f"matmul peak ({size}x{size} float32)")
    results["peak"] = matmul_peak(size, dev)
    results["training"] = {name: training_throughput(name, mnist, dev, settings, log) for name in names}
    thread_model = "medium" if "medium" in names else names[0]
    # CPU threads only matter when the CPU does the arithmetic.
    results["threads"] = (thread_effect(thread_model, mnist, threads, settings, log)
                          if dev.type == "cpu" else None)
    results["time_to_accuracy"] = (time_to_accuracy(mnist, dev, threads, settings, log)
                                   if time_to_accuracy_too else None)
    results["inference"] = {name: inference(name, mnist, dev, threads, settings, log) for name in names}
    results["memory"] = {name: {kind: peak_memory(kind, name, dev, threads, quick, data_dir, log)
                                for kind in ("train", "infer")} for name in names}
    return results
