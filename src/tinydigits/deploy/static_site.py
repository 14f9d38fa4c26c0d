"""The web demo as a static site: the page, its scripts and the models' weights, so a
visitor's browser runs the models and any static file host can serve it.

The models run on a few plain JavaScript kernels (``engine.js``: fp32 conv, ReLU,
per-channel affine, max pool, global average pool, log-softmax) from a small JSON file per
model written here at export time: BatchNorm folded away (:mod:`tinydigits.deploy.fold` for
the digit models; into the convolution before it for the number reader), each tensor as
base64 little-endian float32. No third-party runtime, no download at export time: ONNX
Runtime Web (14 MB of WebAssembly to run models of 23-36 KB) was dropped once the kernels
gave PyTorch's digit on all 10,000 MNIST test images (tests/test_static_site.py).

"A number" mode runs the number reader (:class:`tinydigits.models.NumberReader`, the shipped
one unless the export is given another): ``read.js`` makes the strip as
:func:`tinydigits.strips.number_strip` does, the kernels give its per-column
log-probabilities, and greedy decoding and the digits' boxes follow
:mod:`tinydigits.sequence`. Its fp32 parameters (75k, 402 KB as base64) are most of the
site's bytes.

A service worker (``sw.js``, written with the list of the site's files and a version made
of their hash) keeps the site working offline after the first visit, and a web app manifest
makes it installable on a phone.

A site folder holds ``tinydigits-site.json``, the list of the files an export wrote; a new
export replaces exactly those and refuses a folder holding anything else, so a user's
files are never overwritten or deleted.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from ..io import WeightsError, atomic_write, write_text
from ..models import DEFAULT_READER, NumberReader, get_spec
from ..runtime import package_version
from ..weights import get_weights, load_model
from . import ExportError
from .export import ensure_directory
from .fold import ChannelAffine, fold_batchnorm

ENGINE = "tinydigits JavaScript kernels (engine.js)"
WEIGHTS_FORMAT = "tinydigits-js-1"
MANIFEST = "tinydigits-site.json"  # what marks a folder as a site export, and lists its files
PAGE_FILES = {"index.html": "index.html", "static/style.css": "style.css"}
# The page's scripts, in its order; a site ships them as one file (a first visit's requests
# cost more than their bytes), the server as they are.
SCRIPTS = ("preprocess.js", "engine.js", "read.js", "app.js")
BUNDLE = "static/tinydigits.js"
SERVICE_WORKER = "sw.js"
WEB_MANIFEST = "manifest.webmanifest"
ICON = "static/icon.svg"
# The app's icon: a white 7 on the page's dark blue, as SVG (any size, a few hundred bytes).
ICON_SVG = ('<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 512 512">'
            '<rect width="512" height="512" rx="96" fill="#1d3557"/>'
            '<path d="M150 130h212l-110 262" fill="none" stroke="#fff" stroke-width="56" '
            'stroke-linecap="round" stroke-linejoin="round"/></svg>\n')


def web_manifest() -> bytes:
    """The web app manifest: what a phone needs to install the page as an app."""
    document = {"name": "tinydigits: draw a digit", "short_name": "tinydigits",
                "description": "Tiny convolutional networks read handwritten digits and numbers, "
                               "in the browser.",
                "start_url": "./", "scope": "./", "display": "standalone",
                "background_color": "#ffffff", "theme_color": "#1d3557",
                "icons": [{"src": ICON, "sizes": "any", "type": "image/svg+xml", "purpose": "any"}]}
    return (json.dumps(document, indent=2) + "\n").encode()


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
                    weights_sizes: Mapping[str, int], reader: dict[str, Any] | None = None) -> dict[str, Any]:
    """``models.json``, what the page reads first, on a static host and from ``tinydigits serve``:
    the digit models, the default one, the number reader that "A number" mode runs (``reader``,
    its :func:`model_info`; None: the page reads numbers with the digit models instead), and
    where inference can run ("server": the API; "browser": the page's JavaScript kernels, each
    model's weights at ``models/<name>.json``)."""

    def with_weights(info: dict[str, Any]) -> dict[str, Any]:
        name = info["name"]
        if name not in weights_sizes:
            return info
        return {**info, "weights": f"models/{name}.json", "weights_bytes": weights_sizes[name]}

    return {
        "inference": inference,
        "default": default,
        "models": [with_weights(info) for info in infos],
        "reader": None if reader is None else with_weights(reader),
        "engine": ENGINE if "browser" in inference else None,
    }


@dataclass(frozen=True)
class SiteExport:
    directory: Path
    files: dict[str, int]  # path inside the site -> bytes

    @property
    def total_bytes(self) -> int:
        return sum(self.files.values())


def _floats(tensor: torch.Tensor) -> str:
    values = tensor.detach().to(torch.float32).contiguous().numpy().astype("<f4")
    return base64.b64encode(values.tobytes()).decode()


def _pair(value: int | tuple[int, ...]) -> int | list[int]:
    """A kernel size, stride or padding as the engine reads it: one number when square."""
    rows, cols = (value, value) if isinstance(value, int) else value
    return rows if rows == cols else [rows, cols]


@torch.no_grad()
def _fold_into_convs(layers: list[nn.Module]) -> list[nn.Module]:
    """``layers`` (eval mode) with each BatchNorm that directly follows a convolution folded
    into it (``w * s``, ``b * s + t`` per output channel); any other BatchNorm as a
    :class:`ChannelAffine`. The number reader's order is Conv -> BN -> ReLU, so unlike the
    digit models' (:mod:`tinydigits.deploy.fold`) every BN folds away."""
    out: list[nn.Module] = []
    for layer in layers:
        if isinstance(layer, nn.BatchNorm2d):
            std = torch.sqrt(layer.running_var + layer.eps)
            weight = layer.weight if layer.weight is not None else torch.ones_like(std)
            bias = layer.bias if layer.bias is not None else torch.zeros_like(std)
            scale = weight / std
            shift = bias - layer.running_mean * scale
            if out and isinstance(out[-1], nn.Conv2d):
                conv = copy.deepcopy(out[-1])
                conv_bias = conv.bias if conv.bias is not None else torch.zeros(conv.out_channels)
                conv.weight.copy_(conv.weight * scale.view(-1, 1, 1, 1))
                conv.bias = nn.Parameter(conv_bias * scale + shift, requires_grad=False)
                out[-1] = conv
            else:
                out.append(ChannelAffine(scale, shift))
        else:
            out.append(layer)
    return out


def browser_model(model: nn.Module, name: str) -> dict[str, Any]:
    """The document the page's engine runs: ``model`` with BatchNorm folded away, as a list of
    layers (conv, relu, affine, maxpool, gap; then log-softmax over the channels at each
    position), the tensors as base64 float32. A digit model ends in 10 values; a number reader
    in 11 per column (task "number", input of any width). A layer the kernels do not have is
    an :class:`ExportError`."""
    model = model.eval()
    if isinstance(model, NumberReader):
        folded = _fold_into_convs([*model.features, *model.columns])
    else:
        folded = list(fold_batchnorm(model).layers)
    layers: list[dict[str, Any]] = []
    for layer in folded:
        if (isinstance(layer, nn.Conv2d) and isinstance(layer.padding, tuple) and layer.groups == 1
                and layer.dilation == (1, 1) and layer.padding_mode == "zeros"):
            bias = layer.bias if layer.bias is not None else torch.zeros(layer.out_channels)
            layers.append({"op": "conv", "in": layer.in_channels, "out": layer.out_channels,
                           "kernel": _pair(layer.kernel_size), "stride": _pair(layer.stride),
                           "padding": _pair(layer.padding), "weight": _floats(layer.weight),
                           "bias": _floats(bias)})
        elif isinstance(layer, nn.ReLU):
            layers.append({"op": "relu"})
        elif isinstance(layer, ChannelAffine):
            layers.append({"op": "affine", "scale": None if layer.scale is None else _floats(layer.scale),
                           "shift": None if layer.shift is None else _floats(layer.shift)})
        elif (isinstance(layer, nn.MaxPool2d) and layer.padding in (0, (0, 0)) and not layer.ceil_mode
              and layer.dilation in (1, (1, 1))):
            layers.append({"op": "maxpool", "kernel": _pair(layer.kernel_size),
                           "stride": _pair(layer.stride if layer.stride is not None else layer.kernel_size)})
        elif isinstance(layer, nn.AdaptiveAvgPool2d) and layer.output_size in (1, (1, 1)):
            layers.append({"op": "gap"})
        else:
            raise ExportError(f"{name}: the browser engine has no kernel for {layer}")
    spec = get_spec(name)
    return {"format": WEIGHTS_FORMAT, "model": name, "task": spec.task, "input": list(spec.input_shape),
            "output": "log_softmax", "layers": layers}


def browser_model_bytes(model: nn.Module, name: str) -> bytes:
    """``models/<name>.json`` of the site: :func:`browser_model`, compact."""
    return (json.dumps(browser_model(model, name), separators=(",", ":")) + "\n").encode()


def site_page(page: bytes) -> bytes:
    """The page as a site serves it: its scripts as the one bundle."""
    tags = "".join(f'<script src="static/{name}" defer></script>\n' for name in SCRIPTS).encode()
    if tags not in page:
        raise ExportError("the page template has changed: its script tags are not where the site export "
                          "expects them")
    return page.replace(tags, f'<script src="{BUNDLE}" defer></script>\n'.encode())


def site_bundle(scripts: list[bytes], first_read: Mapping[str, bytes]) -> bytes:
    """The page's scripts as one file, after a line that hands app.js the JSON files of
    ``first_read`` (path -> contents): what the page reads before anything else (models.json
    and the default model's weights), so that it reads without waiting for a fetch."""
    documents = {path: json.loads(payload) for path, payload in first_read.items()}
    line = "window.tinydigitsFirstRead = " + json.dumps(documents, separators=(",", ":")) + ";\n"
    return line.encode() + b"\n".join(scripts)


def service_worker(files: Mapping[str, bytes]) -> bytes:
    """``sw.js``: the page's service worker, told the site's files (cached at install) and a
    version made of their contents (a new export is a new cache; the old one is deleted)."""
    digest = hashlib.sha256()
    for path in sorted(files):
        digest.update(path.encode() + b"\0" + hashlib.sha256(files[path]).digest())
    template = resources.files("tinydigits.deploy").joinpath("web", "sw.js").read_text()
    listed = ["./", *sorted(files)]
    return (template.replace('"__VERSION__"', json.dumps(digest.hexdigest()[:16]))
            .replace('["__FILES__"]', json.dumps(listed))).encode()


# The only paths an export writes; a manifest naming anything else is not ours (a hostile
# one could otherwise name files outside the folder for a re-export to delete).
_SITE_PATH = re.compile(r"index\.html|models\.json|sw\.js|manifest\.webmanifest|static/[a-z]+\.(?:js|css|svg)"
                        r"|ort/[A-Za-z0-9._-]+"  # ort/, .onnx: older exports
                        r"|models/[a-z0-9-]+\.(?:onnx|json)")
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


def export_site(directory: str | Path, models: Mapping[str, nn.Module], *,
                pretrained: bool = True) -> SiteExport:
    """Write the static site of ``models`` (name -> module; the first digit model is the
    default) into ``directory`` (created; a previous export is replaced). A number reader among
    them is the one "A number" mode runs; without one, the shipped default reader is added.
    ``pretrained``: the modules hold the shipped weights, whose accuracy the page shows."""
    directory = Path(directory)
    digits = {name: model for name, model in models.items() if get_spec(name).task == "digit"}
    readers = {name: model for name, model in models.items() if get_spec(name).task == "number"}
    if not digits or len(readers) > 1:
        raise ExportError("a site runs one or more digit models and at most one number reader; got "
                          f"{', '.join(models) or 'none'}")
    ensure_directory(directory)
    previous = previous_files(directory)
    reader_pretrained = pretrained if readers else True
    if not readers:
        readers = {DEFAULT_READER: load_model(DEFAULT_READER, pretrained=True)}
    reader_name = next(iter(readers))
    web = resources.files("tinydigits.deploy").joinpath("web")
    contents: dict[str, bytes] = {path: web.joinpath(name).read_bytes() for path, name in PAGE_FILES.items()}
    contents["index.html"] = site_page(contents["index.html"])
    contents[WEB_MANIFEST] = web_manifest()
    contents[ICON] = ICON_SVG.encode()
    for name, model in {**digits, **readers}.items():
        contents[f"models/{name}.json"] = browser_model_bytes(model, name)
    sizes = {name: len(contents[f"models/{name}.json"]) for name in (*digits, reader_name)}
    infos = [model_info(name, pretrained) for name in digits]
    document = models_document(infos, next(iter(digits)), ["browser"], sizes,
                               reader=model_info(reader_name, reader_pretrained))
    contents["models.json"] = (json.dumps(document, indent=2) + "\n").encode()
    first_read = ["models.json", f"models/{next(iter(digits))}.json"]  # the default model's weights
    contents[BUNDLE] = site_bundle([web.joinpath(name).read_bytes() for name in SCRIPTS],
                                   {path: contents[path] for path in first_read})
    contents[SERVICE_WORKER] = service_worker(contents)
    files = {path: len(payload) for path, payload in sorted(contents.items())}
    try:
        # Listed before they are written, so an export killed half-way can be run again.
        _write_manifest(directory, {**dict.fromkeys(previous, 0), **files})
        for relative, payload in contents.items():
            atomic_write(directory / relative, lambda tmp, payload=payload: tmp.write_bytes(payload))
        for stale in sorted(previous - set(contents)):  # only files an export wrote
            (directory / stale).unlink(missing_ok=True)
        for folder in (directory / "ort",):  # left empty by an export of an older version
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
        for leftover in directory.rglob(".*.tmp"):  # of an export that was killed
            leftover.unlink(missing_ok=True)
        _write_manifest(directory, files)
    except OSError as err:
        raise ExportError(f"{directory}: cannot write ({err.strerror or err})") from None
    return SiteExport(directory, files)
