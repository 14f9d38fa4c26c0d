"""The weights shipped inside the package, one file per model, and how they are chosen.

Each ``weights/<model>.safetensors`` carries its own metadata (parameters, recipe, seed,
epochs, validation and test accuracy, the command that trained it); ``weights/manifest.json``
adds what a file cannot hold about itself: its size and SHA-256, checked before loading.
Both are written by :func:`publish` from a ``results/<model>.json``, never by hand.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import data
from .checkpoint import WeightsError, atomic_write, load_model, read_metadata, save_weights
from .evaluate import evaluate
from .models import count_parameters, get_spec

PRETRAINED_DIR = Path(__file__).parent / "weights"


@dataclass(frozen=True)
class Weights:
    """One shipped weights file and what is known about it."""

    model: str
    path: Path
    sha256: str
    file_bytes: int
    meta: dict[str, Any]

    @property
    def test_accuracy(self) -> float:
        return self._field("test_accuracy")

    @property
    def val_accuracy(self) -> float:
        return self._field("val_accuracy")

    def _field(self, key: str) -> Any:
        if key not in self.meta:
            raise WeightsError(f"{self.path}: its metadata has no {key!r}; ship it with `tinydigits publish`")
        return self.meta[key]

    def verify(self) -> Path:
        """The file's path once its SHA-256 matches the manifest; a damaged file raises."""
        if not self.path.is_file():
            raise WeightsError(f"{self.path}: shipped weights file is missing")
        actual = file_sha256(self.path)
        if actual != self.sha256:
            raise WeightsError(f"{self.path}: SHA-256 {actual[:12]}... does not match the manifest's "
                               f"{self.sha256[:12]}...; the file is damaged, reinstall tinydigits")
        return self.path


def file_sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _read_manifest(weights_dir: Path) -> dict[str, Any]:
    path = weights_dir / "manifest.json"
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise WeightsError(f"{path}: not valid JSON ({err})") from None


def get_weights(name: str, weights_dir: str | Path = PRETRAINED_DIR) -> Weights:
    """The shipped weights of model ``name`` (not yet verified; see :meth:`Weights.verify`)."""
    name = get_spec(name).name
    weights_dir = Path(weights_dir)
    entry = _read_manifest(weights_dir).get(name)
    if entry is None:
        raise WeightsError(f"no pretrained weights shipped for {name!r} "
                           f"(see {weights_dir / 'manifest.json'})")
    path = weights_dir / entry["file"]
    return Weights(model=name, path=path, sha256=entry["sha256"], file_bytes=entry["bytes"],
                   meta=read_metadata(path) if path.is_file() else {})


def pick_seed(results: dict[str, Any]) -> dict[str, Any]:
    """The run to ship: highest final-epoch validation accuracy, lowest seed on a tie.
    Test accuracy plays no part in the choice."""
    return max(results["runs"], key=lambda run: (run["val_accuracy"], -run["seed"]))


def publish(
    results: dict[str, Any],
    *,
    mnist: data.MNIST,
    weights_dir: str | Path = PRETRAINED_DIR,
) -> Weights:
    """Copy the final weights of the best-validation run in ``results`` into ``weights_dir``
    with full metadata, and record their size and SHA-256 in the manifest."""
    name = results["model"]
    run = pick_seed(results)
    weights_dir = Path(weights_dir)
    model = load_model(name, Path(run["run_dir"]) / "final.safetensors")
    # Measured again through the public loading path, so the recorded figure is exactly
    # what a user of the shipped file gets.
    test = evaluate(model, data.normalize(mnist.test_images), mnist.test_labels)
    meta = {
        "model": name,
        "parameters": count_parameters(model),
        "recipe": {**results["recipe"], "seed": run["seed"]},
        "seed": run["seed"],
        "epochs": run["epochs"],
        "val_accuracy": run["val_accuracy"],
        "test_accuracy": round(test.accuracy, 4),
        "test_loss": round(test.loss, 6),
        "chosen_by": f"highest final-epoch validation accuracy among {len(results['runs'])} seeds",
        "command": run["command"],
    }
    path = save_weights(model, weights_dir / f"{name}.safetensors", meta)
    manifest = _read_manifest(weights_dir)
    manifest[name] = {"file": path.name, "bytes": path.stat().st_size, "sha256": file_sha256(path)}
    text = json.dumps(dict(sorted(manifest.items())), indent=2) + "\n"
    atomic_write(weights_dir / "manifest.json", lambda tmp: tmp.write_text(text))
    return get_weights(name, weights_dir)
