"""Files on disk: atomic writes, weights (safetensors with JSON metadata), state dicts and
training checkpoints.

Weights are safetensors files with JSON metadata. Reference ``.pth`` files
(pickled state_dicts, often saved on a CUDA machine) load with
``weights_only=True`` onto the CPU, so no arbitrary object is ever unpickled.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from .errors import TinyDigitsError, first_line


class WeightsError(TinyDigitsError):
    """A weights or checkpoint file that cannot be used; the message is one line."""


def _umask() -> int:
    umask = os.umask(0)  # the only way to read it is to set it
    os.umask(umask)
    return umask


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` on a temporary file beside ``path``, flush it to disk, then rename it
    into place, so a crash, kill or power cut mid-write never leaves a half-written file
    under the real name."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        with open(tmp, "rb+") as written:
            os.fsync(written.fileno())  # durable before it becomes visible under the final name
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes files private; these are ordinary outputs
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_text(path: str | Path, text: str) -> Path:
    """Write a UTF-8 text file atomically."""
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def file_sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def save_weights(model: nn.Module, path: str | Path, metadata: dict[str, Any]) -> Path:
    """Write a model's state_dict as safetensors; metadata values are stored as JSON."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    meta = {key: json.dumps(value) for key, value in metadata.items()}
    return atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=meta))


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The JSON metadata of a safetensors weights file."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            raw = f.metadata() or {}
    except (SafetensorError, OSError) as err:
        raise WeightsError(f"{path}: not a readable safetensors file ({err})") from None
    return {key: json.loads(value) for key, value in raw.items()}


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state_dict from ``.safetensors`` or a pickled ``.pt``/``.pth`` file, onto the CPU."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: no such weights file")
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path), device="cpu")
        except (SafetensorError, OSError) as err:
            raise WeightsError(f"{path}: not a readable safetensors file ({err})") from None
    with open(path, "rb") as file:
        head = file.read(4)
    # torch.save writes a zip archive, or a pickle (protocol 2 and up) in the legacy format.
    # Anything else (a photo given as --weights) would only get torch's advice to unpickle
    # with weights_only=False, the unsafe way, so it is named for what it is not.
    if not (head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"):
        raise WeightsError(f"{path}: not a weights file; give a .safetensors file, a PyTorch .pt/.pth "
                           "state_dict, an .onnx export or (with --backend torchscript) a TorchScript one")
    try:
        # map_location moves tensors saved on a GPU to the CPU; weights_only refuses
        # anything that is not plain tensors and containers.
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for corrupt or unsafe pickles
        reason = first_line(err)
        if "WeightsUnpickler error:" in str(err):  # torch's advice around it is to unpickle unsafely
            reason = first_line(str(err).split("WeightsUnpickler error:", 1)[1]).split(". ")[0].rstrip(".")
        if reason.startswith("Unsupported global"):
            raise WeightsError(f"{path}: cannot load as a PyTorch state_dict: it holds more than tensors "
                               f"({reason}), and unpickling those could run code from the file; "
                               "save the model's state_dict() instead") from None
        raise WeightsError(f"{path}: cannot load as a PyTorch state_dict ({reason})") from None
    for key in ("state_dict", "model_state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError(f"{path}: does not hold a state_dict of tensors")
    # DataParallel prefixes every key with "module."
    return {k.removeprefix("module."): v for k, v in obj.items()}


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    """Write a training checkpoint (tensors, numbers, strings and containers only)."""
    return atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: no checkpoint here; nothing to resume")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise WeightsError(f"{path}: corrupt checkpoint ({type(err).__name__})") from None
