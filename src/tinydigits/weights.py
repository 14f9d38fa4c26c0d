"""The weights shipped inside the package, their typed metadata, and loading a model.

Each ``pretrained/<model>.safetensors`` carries its own metadata (parameters, recipe, seed,
epochs, validation and test accuracy, the command that trained it, the code that did);
``pretrained/manifest.json`` adds what a file cannot hold about itself: its size and
SHA-256, checked before loading. Both are written by ``tinydigits publish``, never by hand.
"""

from __future__ import annotations

import json
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from .errors import ConfigError
from .io import WeightsError, file_sha256, load_state_dict, read_metadata
from .models import REGISTRY, build_model, count_parameters, get_spec, model_with_conv_shapes
from .recipes import Recipe
from .runtime import UNKNOWN

PRETRAINED_DIR = Path(__file__).parent / "pretrained"


@dataclass(frozen=True)
class WeightsMeta:
    """What a published weights file says about itself, parsed and checked once."""

    model: str
    parameters: int
    recipe: Recipe
    seed: int
    epochs: int
    val_accuracy: float | None  # None: trained on all 60,000 images, no validation split
    # Digit models: test-set accuracy and loss. Number readers: the mean exact-number rate of
    # the frozen test sets, no loss, and each set's figures in test_metrics.
    test_accuracy: float
    test_loss: float | None
    chosen_by: str
    command: str
    # Which code published the file; "unknown" for files published before this was recorded.
    package_version: str = UNKNOWN
    git_commit: str = UNKNOWN
    test_metrics: dict[str, Any] = field(default_factory=dict)  # task-specific figures

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str | Path = "metadata") -> WeightsMeta:
        """Parse a file's metadata; a missing or mistyped field raises one clear line."""
        required = [f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING]
        missing = [name for name in required if name not in values]
        if missing:
            raise WeightsError(f"{source}: metadata lacks {', '.join(missing)}; "
                               "publish it with `tinydigits publish`")
        known = {f.name for f in fields(cls)}
        try:
            kwargs = {key: value for key, value in values.items() if key in known}
            meta = cls(**{**kwargs, "recipe": Recipe.from_dict(values["recipe"])})
        except (TypeError, ValueError) as err:
            raise WeightsError(f"{source}: malformed metadata ({err})") from None
        for f in fields(cls):
            kind = {"int": int, "float": (int, float), "str": str, "dict[str, Any]": dict,
                    "float | None": (int, float, type(None))}.get(str(f.type))
            if kind is not None and not isinstance(getattr(meta, f.name), kind):
                raise WeightsError(f"{source}: metadata field {f.name} should be {f.type}, "
                                   f"got {getattr(meta, f.name)!r}")
        return meta

    def to_dict(self) -> dict[str, Any]:
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        return {**values, "recipe": self.recipe.to_dict()}


@dataclass(frozen=True)
class Weights:
    """One shipped weights file: where it is, its checked size and hash, and its metadata."""

    model: str
    path: Path
    sha256: str
    file_bytes: int
    meta: WeightsMeta

    @property
    def test_accuracy(self) -> float:
        return self.meta.test_accuracy

    @property
    def val_accuracy(self) -> float | None:
        return self.meta.val_accuracy

    def verify(self) -> Path:
        """The file's path once its SHA-256 matches the manifest; a damaged file raises."""
        if not self.path.is_file():
            raise WeightsError(f"{self.path}: shipped weights file is missing; reinstall tinydigits")
        actual = file_sha256(self.path)
        if actual != self.sha256:
            raise WeightsError(f"{self.path}: SHA-256 {actual[:12]}... does not match the manifest's "
                               f"{self.sha256[:12]}...; the file is damaged, reinstall tinydigits")
        return self.path


def read_manifest(weights_dir: str | Path = PRETRAINED_DIR) -> dict[str, Any]:
    """``manifest.json`` of a weights directory: model name -> file, bytes, sha256."""
    path = Path(weights_dir) / "manifest.json"
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise WeightsError(f"{path}: not valid JSON ({err})") from None


def shipped_models(task: str | None = None, weights_dir: str | Path = PRETRAINED_DIR) -> list[str]:
    """The registered models whose weights ship with the package, in registry order (of one
    ``task`` if given): a model lands in the registry before its weights are trained."""
    shipped = read_manifest(weights_dir)
    return [name for name, spec in REGISTRY.items() if name in shipped and task in (None, spec.task)]


def get_weights(name: str, weights_dir: str | Path = PRETRAINED_DIR) -> Weights:
    """The shipped weights of model ``name`` and their metadata (the hash is checked on
    loading; see :meth:`Weights.verify`)."""
    name = get_spec(name).name
    weights_dir = Path(weights_dir)
    entry = read_manifest(weights_dir).get(name)
    if entry is None:
        raise WeightsError(f"no pretrained weights shipped for {name!r} "
                           f"(see {weights_dir / 'manifest.json'})")
    path = weights_dir / entry["file"]
    if not path.is_file():
        raise WeightsError(f"{path}: shipped weights file is missing; reinstall tinydigits")
    return Weights(model=name, path=path, sha256=entry["sha256"], file_bytes=entry["bytes"],
                   meta=WeightsMeta.from_dict(read_metadata(path), path))


def pretrained_path(name: str) -> Path:
    """The weights file shipped inside the package for model ``name``, its SHA-256 checked."""
    return get_weights(name).verify()


def load_model(
    name: str,
    weights: str | Path | None = None,
    device: str | torch.device = "cpu",
    *,
    pretrained: bool = False,
) -> torch.nn.Module:
    """Build model ``name``; load ``weights`` (a file) or, with ``pretrained``, the weights
    shipped with the package. Loading is strict; the model is returned in eval mode."""
    if pretrained and weights is not None:
        raise ConfigError("give either weights or pretrained=True, not both")
    if pretrained:
        weights = pretrained_path(name)
    model = build_model(name)
    if weights is not None:
        named = _named_model(weights)
        if named is not None and named != get_spec(name).name:
            raise WeightsError(f"{weights}: {named} weights (so says the file's metadata), not {name}; "
                               f"use --model {named}")
        state = load_state_dict(weights)
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as err:
            missing = set(model.state_dict()) ^ set(state)
            detail = f"keys differ: {sorted(missing)[:4]}" if missing else "tensor shapes differ"
            other = model_with_conv_shapes(_conv_shapes(state))
            fix = f"; they fit {other}: use --model {other}" if other else ""
            raise WeightsError(
                f"{weights}: not {name} weights ({detail}; "
                f"{name} has {count_parameters(model)} parameters){fix}"
            ) from err
    return model.to(device).eval()


def _named_model(weights: str | Path) -> str | None:
    """The model a safetensors file's metadata names (published weights and run files say)."""
    if Path(weights).suffix != ".safetensors" or not Path(weights).is_file():
        return None
    try:
        named = read_metadata(weights).get("model")
    except (WeightsError, ValueError):  # other tools' metadata (e.g. {"format": "pt"}) is not ours
        return None
    return named if named in REGISTRY else None


def _conv_shapes(state: dict[str, torch.Tensor]) -> tuple[tuple[int, ...], ...]:
    """The convolution weight shapes of a state_dict (its 4-D tensors), in the order they run:
    keys sorted with their numbers as numbers (conv1.2 before conv1.10)."""
    def order(key: str) -> list[tuple[int, int | str]]:
        return [(0, int(part)) if part.isdigit() else (1, part) for part in key.split(".")]

    return tuple(tuple(state[key].shape) for key in sorted(state, key=order) if state[key].dim() == 4)
