"""Reading whole numbers: several handwritten digits in one picture, left to right.

The picture goes through the first steps of :func:`tinydigits.preprocess.to_mnist`
(grayscale, the paper's lighting fitted and removed, polarity made white-on-black), then:

1. ink pixels are grouped into 8-connected components, and specks far lighter than the
   strokes are dropped;
2. the fragments of one digit are merged: components whose columns overlap (a 5's flag
   above its body, a 7's separate bar, a stroke broken by a light pen) become one digit;
3. a group wider than the digits are tall holds digits that touch, and is cut: the
   candidate cuts are the columns where the vertical projection of the ink is lowest, and
   the cut kept is the one after which the model is most sure of both sides (the product
   of the two top probabilities), unless that product is no better than the square root of
   its confidence in the group as one wide digit; again on each side while still too wide;
4. the digits are ordered by their centres, left to right (a slight slope changes
   nothing), framed as MNIST (:func:`~tinydigits.preprocess.fit_to_mnist`) and classified
   in one batch.

    >>> from tinydigits import read_number
    >>> read_number("meter.jpg").number   # the shipped reader and MNIST-Medium; or read_number(path, model)
    '07431'
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw

from .errors import ConfigError
from .models import DEFAULT_READER, NumberReader
from .predict import Classifier, classify, digit_log_probs
from .preprocess import WORK_SIDE, PreprocessError, Source, fit_to_mnist, ink_map, load_image
from .segment import MAX_DIGITS, Piece, digit_groups
from .sequence import digit_boxes, read_picture

__all__ = ["Digit", "Reading", "draw_boxes", "read_number"]

WIDE = 1.2  # a group wider than this many digit heights holds touching digits
CUTS = 8  # candidate cuts tried per split
# The sequence method's second opinion: each digit the reader finds is also read by a digit
# model on its box, and the two log-probabilities added, the digit model's times DIGIT_WEIGHT.
# The reader finds digits in touching ink; the digit model, with a tenth of the parameters,
# tells single digits apart better. Where a stroke crosses the edge of a digit's box (most
# often digits that touch; sometimes a wide digit reaching past the midpoint to its
# neighbour), the box cuts through the stroke and the digit model sees part of it: there its
# opinion counts TOUCHING_SHARE as much. Both chosen on the validation sets (README, "Read
# whole numbers").
DIGIT_WEIGHT = 0.75
TOUCHING_SHARE = 0.4


@dataclass(frozen=True)
class Digit:
    """One digit read: its box in the picture's own pixels, the digit and its probability."""

    x: int
    y: int
    width: int
    height: int
    digit: int
    probability: float
    image: torch.Tensor  # the uint8 [28, 28] input the model saw

    def to_dict(self) -> dict[str, Any]:
        return {"box": {"x": self.x, "y": self.y, "width": self.width, "height": self.height},
                "digit": self.digit, "probability": self.probability}

    def __repr__(self) -> str:  # the digit, its probability and its box; not the 28x28 tensor
        return (f"Digit({self.digit}, probability={self.probability:.4f}, "
                f"box=(x={self.x}, y={self.y}, width={self.width}, height={self.height}))")


@dataclass(frozen=True)
class Reading:
    """The number in a picture, as a string of digits, and each digit read."""

    number: str
    digits: list[Digit]

    def to_dict(self) -> dict[str, Any]:
        return {"number": self.number, "digits": [digit.to_dict() for digit in self.digits]}

    def __repr__(self) -> str:  # concise, so print(read_number(...)) shows the reading
        return f"Reading(number={self.number!r}, digits={self.digits!r})"


def _confidence(model: Classifier, pieces: list[Piece]) -> list[float]:
    images = torch.stack([fit_to_mnist(piece.ink) for piece in pieces])
    return [ranked[0][1] for ranked in classify(model, images, top_k=1)]


def _split(piece: Piece, height: float, model: Classifier, budget: int) -> list[Piece]:
    """Cut a group of touching digits (step 3 above) into pieces no wider than WIDE heights."""
    if piece.width <= WIDE * height or budget <= 1:
        return [piece]
    margin = max(2, int(0.25 * height))  # no digit is narrower than a quarter of its height
    if piece.width <= 2 * margin:
        return [piece]
    projection = piece.ink.sum(axis=0)
    candidates: list[int] = []
    for column in np.argsort(projection[margin:-margin], kind="stable") + margin:
        if all(abs(int(column) - other) >= margin for other in candidates):
            candidates.append(int(column))
        if len(candidates) == CUTS:
            break
    halves = [(Piece(piece.ink[:, :c], piece.top, piece.left).crop(),
               Piece(piece.ink[:, c:], piece.top, piece.left + c).crop()) for c in candidates]
    *scores, whole = _confidence(model, [*(half for pair in halves for half in pair), piece])
    best = max(range(len(halves)), key=lambda k: scores[2 * k] * scores[2 * k + 1])
    # Cutting must win clearly (the square root favours the whole): a wide 0 or 6 cut in two
    # often reads as a confident 1 and something, which is how digits were invented.
    if scores[2 * best] * scores[2 * best + 1] <= whole ** 0.5:
        return [piece]  # one wide digit (a flat 2, a long-barred 7): the model reads it better whole
    left, right = halves[best]
    return [*_split(left, height, model, budget // 2), *_split(right, height, model, budget - budget // 2)]


@functools.cache
def _shipped(name: str) -> torch.nn.Module:
    from .weights import load_model

    return load_model(name, pretrained=True)


METHODS = ("auto", "sequence", "segment")


def is_reader(model: object) -> bool:
    """Whether ``model`` reads strips (a number reader, or an engine opened for one)."""
    return isinstance(model, NumberReader) or getattr(model, "task", None) == "number"


def resolve_method(method: str, model: object | None) -> str:
    """``auto``: the sequence reader, which reads touching digits (docs/READING.md), unless
    ``model`` is a digit classifier, which only the segmenter can use."""
    if method not in METHODS:
        raise ConfigError(f"unknown reading method {method!r}; choose one of: {', '.join(METHODS)}")
    if method == "auto":
        return "segment" if model is not None and not is_reader(model) else "sequence"
    if model is not None and is_reader(model) != (method == "sequence"):
        wanted = f"a number reader (such as {DEFAULT_READER})" if method == "sequence" else "a digit model"
        raise ConfigError(f"method {method!r} needs {wanted}")
    return method


def read_number(image: Image.Image | Source, model: Classifier | None = None,
                method: str = "auto", digit_model: Classifier | str | None = "medium",
                digit_weight: float = DIGIT_WEIGHT, touching_share: float = TOUCHING_SHARE) -> Reading:
    """The number in a picture of one or more handwritten digits (a PIL image, or a path,
    bytes or file that :func:`~tinydigits.preprocess.load_image` reads). ``method``:
    ``sequence`` reads the whole strip with a number reader (default: the shipped one), and
    ``digit_model`` (a digit model or the name of a shipped one; ``None``: the reader alone)
    reads each digit it finds again, its log-probabilities added times ``digit_weight`` (times
    ``touching_share`` of that for a digit whose box a stroke crosses, as where digits touch);
    ``segment`` cuts the ink into digits and classifies each with a digit model (default:
    the shipped MNIST-Medium); ``auto`` picks by the model given, the sequence reader when
    none is. Raises :class:`PreprocessError` for a blank picture, one that cannot be read,
    and one of more than :data:`~tinydigits.segment.MAX_DIGITS` digits."""
    method = resolve_method(method, model)
    if not isinstance(image, Image.Image):
        image = load_image(image)
    if method == "sequence":
        if isinstance(digit_model, str):
            digit_model = _shipped(digit_model)
        return _read_sequence(image, model if model is not None else _shipped(DEFAULT_READER), digit_model,
                              digit_weight, touching_share)
    model = model if model is not None else _shipped("medium")
    factor = max(1, math.ceil(max(image.size) / WORK_SIDE))  # what ink_map reduced the picture by
    groups = digit_groups(ink_map(image))
    height = float(np.median([group.height for group in groups]))
    pieces = [part for group in groups for part in _split(group, height, model, MAX_DIGITS)]
    if len(pieces) > MAX_DIGITS:
        raise PreprocessError(f"found {len(pieces)} digits; `read` reads numbers of up to {MAX_DIGITS}")
    pieces.sort(key=lambda piece: piece.left + piece.width / 2)
    images = torch.stack([fit_to_mnist(piece.ink) for piece in pieces])
    width, tall = image.size
    digits = []
    for piece, seen, ranked in zip(pieces, images, classify(model, images, top_k=1), strict=True):
        x, y = piece.left * factor, piece.top * factor
        digits.append(Digit(x, y, min(piece.width * factor, width - x), min(piece.height * factor, tall - y),
                            ranked[0][0], ranked[0][1], seen))
    return Reading("".join(str(d.digit) for d in digits), digits)


def _framed(ink: np.ndarray) -> torch.Tensor:
    """A digit's ink framed as MNIST; blank where the reader put a digit over a gap."""
    try:
        return fit_to_mnist(ink)
    except PreprocessError:
        return torch.zeros(28, 28, dtype=torch.uint8)


def _read_sequence(image: Image.Image, model: Classifier, digit_model: Classifier | None,
                   digit_weight: float, touching_share: float) -> Reading:
    strip, spans = read_picture(image, model)
    if not spans:
        raise PreprocessError("no digits found: the reader sees ink but reads no digit in it")
    if len(spans) > MAX_DIGITS:
        raise PreprocessError(f"found {len(spans)} digits; `read` reads numbers of up to {MAX_DIGITS}")
    boxes = digit_boxes(strip, spans)
    framed = torch.stack([_framed(box.ink) for box in boxes])
    # P(digit) = P(a digit, not a gap, in the span's surest column) x P(which | a digit), the
    # second the reader's and the digit model's opinions combined; alone, the reader's own.
    scores = torch.tensor([span.scores for span in spans], dtype=torch.float64)
    # (clamped: a float32 model's probabilities can sum to a hair over 1)
    a_digit = torch.logsumexp(scores, dim=1, keepdim=True).clamp(max=0.0)
    if digit_model is not None:
        weights = torch.tensor([[digit_weight * (1.0 if box.alone else touching_share)] for box in boxes],
                               dtype=torch.float64)
        scores = scores + weights * digit_log_probs(digit_model, framed).double()
    probabilities = a_digit.exp() * torch.softmax(scores, dim=1)
    # Boxes span whole working pixels, which can reach past the edge of a picture a few pixels wide.
    right, bottom = image.size
    digits = []
    for box, seen, row in zip(boxes, framed, probabilities, strict=True):
        digit = int(row.argmax())
        width, height = min(box.width, right - box.x), min(box.height, bottom - box.y)
        digits.append(Digit(box.x, box.y, width, height, digit, float(row[digit]), seen))
    return Reading("".join(str(d.digit) for d in digits), digits)


def _displayable(image: Image.Image) -> Image.Image:
    """An RGB copy that looks like the picture: 16-bit and float values scaled, not clipped;
    transparency over white."""
    if image.mode.startswith("I") or image.mode == "F":
        values = np.asarray(image, dtype=np.float32)
        image = Image.fromarray((255 * values / max(float(values.max()), 1.0)).astype(np.uint8), mode="L")
    if image.mode in ("RGBA", "LA", "PA", "P") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        backdrop = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(backdrop, rgba).convert("RGB")
    return image.convert("RGB")


def draw_boxes(image: Image.Image, reading: Reading) -> Image.Image:
    """A copy of ``image`` with each digit's box and its reading drawn on it."""
    picture = _displayable(image)
    draw = ImageDraw.Draw(picture)
    line = max(2, picture.height // 150)
    for digit in reading.digits:
        box = [digit.x, digit.y, digit.x + digit.width - 1, digit.y + digit.height - 1]  # inclusive corners
        draw.rectangle(box, outline=(220, 30, 30), width=line)
        draw.text((digit.x + line, max(0, digit.y - 12 - line)), f"{digit.digit} {digit.probability:.0%}",
                  fill=(220, 30, 30))
    return picture
