"""Classifying pictures of handwritten digits: files in, one result per file out.

Every file is preprocessed with :func:`tinydigits.preprocess.to_mnist` and classified
on its own, so a bad file gives an error result and the rest of the batch carries on.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import nn

from .data import normalize
from .errors import ConfigError
from .evaluate import predict_log_probs
from .preprocess import WORK_SIDE, PreprocessError, Source, fit_to_mnist, ink_map, load_image, remove_specks
from .segment import MAX_DIGITS, digit_groups

__all__ = ["IMAGE_SUFFIXES", "Classifier", "Prediction", "classify", "digit_log_probs", "expand_paths",
           "predict_files", "predict_image"]

# What a directory expands to; a file named explicitly is tried whatever its name.
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff",
                            ".pgm", ".ppm", ".pbm", ".pnm", ".jfif", ".mpo"})


@dataclass(frozen=True)
class Prediction:
    """The result for one file: a digit with its probabilities, or a one-line error."""

    file: str
    digit: int | None = None
    probability: float | None = None
    top_k: list[tuple[int, float]] = field(default_factory=list)
    error: str | None = None
    image: torch.Tensor | None = None  # the uint8 [28, 28] input the model saw
    preprocessed: str | None = None  # where that input was saved as PNG, if it was
    separate_digits: int = 1  # how many separate digits the picture seems to hold (see segment.py)

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self) -> dict[str, Any]:
        if self.error is not None:
            return {"file": self.file, "error": self.error}
        out: dict[str, Any] = {"file": self.file, "digit": self.digit, "probability": self.probability,
                               "top_k": [[d, p] for d, p in self.top_k]}
        if self.preprocessed is not None:
            out["preprocessed"] = self.preprocessed
        if self.separate_digits > 1:
            out["separate_digits"] = self.separate_digits
            out["warning"] = self.warning
        return out

    @property
    def warning(self) -> str | None:
        """Set when the picture looks like a number of several digits, which ``read`` reads."""
        if self.separate_digits <= 1:
            return None
        if self.separate_digits > MAX_DIGITS:
            return "the picture holds many separate marks, not one digit"
        return (f"the picture holds {self.separate_digits} separate digits; "
                "`tinydigits read` reads whole numbers")


# A model, or any engine that maps normalized images [N, 1, 28, 28] to log-probabilities [N, 10]
# (tinydigits.deploy.engines builds ONNX Runtime and OpenVINO ones).
Classifier = nn.Module | Callable[[torch.Tensor], torch.Tensor]


@torch.no_grad()
def digit_log_probs(model: Classifier, images: torch.Tensor) -> torch.Tensor:
    """A digit model's log-probabilities [N, 10] (the models output them) for uint8 images [N, 28, 28]."""
    inputs = normalize(images)
    return predict_log_probs(model, inputs) if isinstance(model, nn.Module) else model(inputs)


def classify(model: Classifier, images: torch.Tensor, top_k: int = 3) -> list[list[tuple[int, float]]]:
    """The ``top_k`` (digit, probability) pairs, most likely first, for uint8 images [N, 28, 28]."""
    if not 1 <= top_k <= 10:
        raise ConfigError(f"top_k must be between 1 and 10, got {top_k}")
    probs = digit_log_probs(model, images).exp()
    values, digits = probs.topk(top_k, dim=1)
    return [[(int(d), round(float(p), 6)) for d, p in zip(row_d, row_p, strict=True)]
            for row_d, row_p in zip(digits, values, strict=True)]


def predict_image(model: Classifier, source: Image.Image | Source, top_k: int = 3) -> Prediction:
    """Classify one picture (PIL image, path, bytes or file object); raises PreprocessError."""
    picture = source if isinstance(source, Image.Image) else load_image(source, reduce_to=WORK_SIDE)
    ink = ink_map(picture)
    image = fit_to_mnist(remove_specks(ink))  # to_mnist, sharing the ink map with the count below
    try:
        separate = len(digit_groups(ink))
    except PreprocessError:  # far too many marks to count: certainly not one digit
        separate = MAX_DIGITS + 1
    ranked = classify(model, image[None], top_k)[0]
    name = str(source) if isinstance(source, (str, Path)) else "<image>"
    return Prediction(name, ranked[0][0], ranked[0][1], ranked, image=image, separate_digits=separate)


def expand_paths(paths: Iterable[str | Path]) -> Iterator[tuple[str, str | None]]:
    """``(file, None)`` for each file to classify, directories expanded to their image files
    (sorted, not recursive, hidden files skipped); ``(dir, error)`` for a directory without any."""
    for path in map(Path, paths):
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES
                           and not p.name.startswith(".") and p.is_file())
            if not found:
                yield str(path), "directory holds no image files (" + ", ".join(sorted(IMAGE_SUFFIXES)) + ")"
            for p in found:
                yield str(p), None
        else:
            yield str(path), None


def _save_png(image: torch.Tensor, directory: Path, name: str, used: set[str]) -> Path:
    """Save as ``<file name>.png``, e.g. ``seven.jpg.png``; repeated names get ``-2``, ``-3``..."""
    stem, n = f"{name}.png", 1
    while stem in used:
        n += 1
        stem = f"{name}-{n}.png"
    used.add(stem)
    target = directory / stem
    Image.fromarray(image.numpy(), mode="L").save(target)
    return target


def predict_files(model: Classifier, paths: Iterable[str | Path], top_k: int = 3,
                  save_dir: str | Path | None = None) -> Iterator[Prediction]:
    """One :class:`Prediction` per file, in order; a bad file yields an error result and
    the batch goes on. With ``save_dir`` each 28x28 input is also saved there as PNG."""
    if not 1 <= top_k <= 10:
        raise ConfigError(f"top_k must be between 1 and 10, got {top_k}")
    if save_dir is not None:
        save_dir = Path(save_dir)
        save_dir.mkdir(parents=True, exist_ok=True)
    used: set[str] = set()
    for file, error in expand_paths(paths):
        if error is not None:
            yield Prediction(file, error=error)
            continue
        try:
            result = predict_image(model, file, top_k)
        except PreprocessError as err:
            yield Prediction(file, error=str(err))
            continue
        except Exception as err:  # an unforeseen picture must not stop the batch
            yield Prediction(file, error=f"cannot process this image ({type(err).__name__}: {err})")
            continue
        saved = None
        if save_dir is not None and result.image is not None:
            try:
                saved = str(_save_png(result.image, save_dir, Path(file).name, used))
            except OSError as err:
                yield Prediction(file, error=f"cannot save the preprocessed image ({err.strerror or err})")
                continue
        yield Prediction(file, result.digit, result.probability, result.top_k,
                         image=result.image, preprocessed=saved, separate_digits=result.separate_digits)
