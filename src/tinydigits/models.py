"""The three reference CNNs, built layer for layer in the reference layout.

Each model is an ``nn.Sequential`` per conv block (``conv1``, ``conv2``,
``conv3``) plus ``gap_linear``, with ReLU, Dropout and MaxPool occupying
indices exactly as in the reference implementation, so a reference
state_dict loads with no key renaming.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .errors import ConfigError


def _conv3x3(c_in: int, c_out: int, *, stride: int = 1, padding: int = 1) -> list[nn.Module]:
    # Conv -> ReLU -> BatchNorm is the reference's order (BN after the activation).
    return [
        nn.Conv2d(c_in, c_out, 3, stride=stride, padding=padding, bias=False),
        nn.ReLU(),
        nn.BatchNorm2d(c_out),
    ]


def _transition(c_in: int, c_out: int) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, 1, bias=True)


class TinyDigitNet(nn.Module):
    """Conv blocks, then global average pooling, a 1x1 classifier and log-softmax."""

    def __init__(self, blocks: list[nn.Sequential], channels_out: int = 16) -> None:
        super().__init__()
        for index, block in enumerate(blocks, start=1):
            self.add_module(f"conv{index}", block)
        self.gap_linear = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Conv2d(channels_out, 10, 1, bias=False)
        )
        self.num_blocks = len(blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for index in range(1, self.num_blocks + 1):
            x = getattr(self, f"conv{index}")(x)
        x = self.gap_linear(x).flatten(1)
        return F.log_softmax(x, dim=1)


def mnist_medium(dropout: float = 0.1) -> TinyDigitNet:
    """MNIST-Medium: 3 conv blocks (28x28, 14x14, 7x7); the largest of the three."""
    return _medium_layout(dropout, 8, 16)


def mnist_wide(dropout: float = 0.0) -> TinyDigitNet:
    """MNIST-Medium's layout at four times the channels (32 and 64, about 117k parameters): a
    teacher for distilling the small models, not one of them."""
    return _medium_layout(dropout, 32, 64)


def _medium_layout(d: float, a: int, b: int) -> TinyDigitNet:
    return TinyDigitNet([
        nn.Sequential(
            *_conv3x3(1, a), nn.Dropout(d),
            *_conv3x3(a, a), nn.MaxPool2d(2), nn.Dropout(d),
            _transition(a, a),
        ),
        nn.Sequential(
            *_conv3x3(a, a), nn.Dropout(d),
            *_conv3x3(a, b), nn.MaxPool2d(2), nn.Dropout(d),
            _transition(b, b),
        ),
        nn.Sequential(
            *_conv3x3(b, b, padding=0), nn.Dropout(d),
            *_conv3x3(b, b, padding=0), nn.MaxPool2d(2), nn.Dropout(d),
        ),
    ], channels_out=b)


def mnist_small(dropout: float = 0.02) -> TinyDigitNet:
    """MNIST-Small: 2 conv blocks, the second ending in a stride-2 conv."""
    d = dropout
    return TinyDigitNet([
        nn.Sequential(
            *_conv3x3(1, 8), nn.Dropout(d),
            *_conv3x3(8, 8), nn.Dropout(d),
            *_conv3x3(8, 8), nn.MaxPool2d(2), nn.Dropout(d),
            _transition(8, 8),
        ),
        nn.Sequential(
            *_conv3x3(8, 8), nn.Dropout(d),
            *_conv3x3(8, 16), nn.Dropout(d),
            *_conv3x3(16, 16, stride=2), nn.Dropout(d),
        ),
    ])


def mnist_ultrasmall(dropout: float = 0.02) -> TinyDigitNet:
    """MNIST-UltraSmall: 2 conv blocks of mostly 8 channels; the smallest of the three."""
    d = dropout
    return TinyDigitNet([
        nn.Sequential(
            *_conv3x3(1, 8), nn.Dropout(d),
            *_conv3x3(8, 8), nn.Dropout(d),
            *_conv3x3(8, 8), nn.Dropout(d),
            *_conv3x3(8, 8, stride=2), nn.MaxPool2d(2), nn.Dropout(d),
            _transition(8, 8),
        ),
        nn.Sequential(
            *_conv3x3(8, 8), nn.Dropout(d),
            *_conv3x3(8, 8), nn.Dropout(d),
            *_conv3x3(8, 16, stride=2), nn.Dropout(d),
        ),
    ])


def mnist_nano(dropout: float = 0.0) -> TinyDigitNet:
    """MNIST-Nano: under 2,000 parameters, designed here. Narrow convs at 28x28, most of the
    depth at 14x14 and 7x7 so the last features see the whole digit (a 28-pixel receptive
    field) before global average pooling; no dense layer."""
    d = dropout
    return TinyDigitNet([
        nn.Sequential(
            *_conv3x3(1, 4), nn.Dropout(d),
            *_conv3x3(4, 6), nn.MaxPool2d(2), nn.Dropout(d),
        ),
        nn.Sequential(
            *_conv3x3(6, 8), nn.MaxPool2d(2), nn.Dropout(d),
        ),
        nn.Sequential(
            *_conv3x3(8, 8, padding=0), nn.Dropout(d),
            *_conv3x3(8, 8, padding=0), nn.Dropout(d),
        ),
    ], channels_out=8)


class NumberReader(nn.Module):
    """Reads a whole number from a strip of any width: conv blocks that halve the height four
    times and the width once, a convolution over the last 2 rows that collapses the height,
    ``context`` 1-D convolutions along the width, and per-column log-probabilities of the 10
    digits and the blank (index 10) for CTC. A column sees 28 pixels of the strip's width with
    one such convolution of 7 and 12 more with each further one (a digit is ~21 pixels apart).
    Input [N, 1, 32, W]; output [N, 11, W // 2]. A column every 2 pixels leaves two touching 1s
    room for the blank that CTC needs between repeats (at every 4 pixels the first reader
    dropped them)."""

    def __init__(self, widths: tuple[int, int, int] = (16, 32, 48), hidden: int = 64,
                 kernel: int = 7, context: int = 1) -> None:
        super().__init__()
        if context < 1:
            raise ConfigError(f"a number reader needs a convolution along the width; got context={context}")
        a, b, c = widths
        self.features = nn.Sequential(
            nn.Conv2d(1, a, 3, padding=1, bias=False), nn.BatchNorm2d(a), nn.ReLU(),
            nn.MaxPool2d(2),  # 16 x W/2
            nn.Conv2d(a, b, 3, padding=1, bias=False), nn.BatchNorm2d(b), nn.ReLU(),
            nn.MaxPool2d((2, 1)),  # 8 x W/2
            nn.Conv2d(b, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(),
            nn.MaxPool2d((2, 1)),  # 4 x W/2
            nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(),
            nn.MaxPool2d((2, 1)),  # 2 x W/2
        )
        self.columns = nn.Sequential(
            nn.Conv2d(c, hidden, (2, 1), bias=False), nn.BatchNorm2d(hidden), nn.ReLU(),  # 1 x W/2
            *(layer for _ in range(context) for layer in (
                nn.Conv2d(hidden, hidden, (1, kernel), padding=(0, kernel // 2), bias=False),
                nn.BatchNorm2d(hidden), nn.ReLU())),
            nn.Conv2d(hidden, 11, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.columns(self.features(x)).squeeze(2)
        return F.log_softmax(x, dim=1)


def number_reader(dropout: float = 0.0) -> NumberReader:
    """The number reader: 16-32-48-48 channels, 64 in the head (about 75k parameters)."""
    return NumberReader((16, 32, 48), 64)


def number_reader_small(dropout: float = 0.0) -> NumberReader:
    """The small number reader: 12-24-32-32 channels, 40 in the head (about 32k parameters).
    A second convolution along the width (``context=2``, 45k) did no better on validation."""
    return NumberReader((12, 24, 32), 40)


@dataclass(frozen=True)
class ModelSpec:
    """What the registry knows about a model besides how to build it."""

    name: str
    title: str
    builder: Callable[..., nn.Module]
    conv_blocks: int
    # The reference project's published accuracy: best epoch, picked on the test set, one seed.
    reference_accuracy: float | None
    # "digit": one 28x28 digit in, 10 log-probabilities out; "number": a strip of height
    # input_shape[1] and any width in, per-column log-probabilities of 10 digits + blank out.
    task: str = "digit"
    input_shape: tuple[int, int, int | None] = (1, 28, 28)
    classes: int = 10
    # Trained only to teach the others by distillation: not among MODELS (so not in the tables,
    # exports, benchmarks or the web page), and never shipped.
    teacher: bool = False

    @functools.cached_property
    def parameters(self) -> int:
        """Counted on a built model, so no document ever types it by hand."""
        return count_parameters(self.builder())

    @functools.cached_property
    def conv_shapes(self) -> tuple[tuple[int, ...], ...]:
        """The weight shapes of the convolutions in order: what tells the models apart in an
        exported graph, fp32 or int8, whose tensors have lost their names."""
        return conv_shapes(self.builder())


REGISTRY: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec("medium", "MNIST-Medium", mnist_medium, 3, 99.44),
        ModelSpec("small", "MNIST-Small", mnist_small, 2, 99.25),
        ModelSpec("ultrasmall", "MNIST-UltraSmall", mnist_ultrasmall, 2, 99.00),
        ModelSpec("nano", "MNIST-Nano", mnist_nano, 3, None),
        ModelSpec("wide", "MNIST-Medium x4 (a teacher)", mnist_wide, 3, None, teacher=True),
        ModelSpec("reader", "Number reader", number_reader, 4, None, "number", (1, 32, None), 11),
        ModelSpec("reader-small", "Number reader, small", number_reader_small, 4, None, "number",
                  (1, 32, None), 11),
    )
}
# The digit classifiers: what eval, export, the C export, the web page and the tables run.
MODELS: dict[str, ModelSpec] = {name: spec for name, spec in REGISTRY.items()
                                if spec.task == "digit" and not spec.teacher}
# The wider digit models that only teach the others.
TEACHERS: dict[str, ModelSpec] = {name: spec for name, spec in REGISTRY.items() if spec.teacher}
# The number readers: what `read` runs.
READERS: dict[str, ModelSpec] = {name: spec for name, spec in REGISTRY.items() if spec.task == "number"}
# The shipped reader that `read`, /api/read and the web page run when none is named.
DEFAULT_READER = "reader"


def get_spec(name: str) -> ModelSpec:
    """Look a model up by name; a clear error lists the known names."""
    try:
        return REGISTRY[name.lower()]
    except KeyError:
        raise ConfigError(f"unknown model {name!r}; choose one of: {', '.join(REGISTRY)}") from None


def build_model(name: str, dropout: float | None = None) -> TinyDigitNet:
    """Build a freshly initialised model by name (``medium``, ``small``, ``ultrasmall``)."""
    spec = get_spec(name)
    return spec.builder() if dropout is None else spec.builder(dropout)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def conv_shapes(model: nn.Module) -> tuple[tuple[int, ...], ...]:
    """The weight shapes of a model's convolutions, in the order they run."""
    return tuple(tuple(m.weight.shape) for m in model.modules() if isinstance(m, nn.Conv2d))


def model_with_conv_shapes(shapes: tuple[tuple[int, ...], ...]) -> str | None:
    """The name of the model whose convolutions have these weight shapes, or None."""
    return next((name for name, spec in REGISTRY.items() if spec.conv_shapes == shapes), None)
