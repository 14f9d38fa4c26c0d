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
    d = dropout
    return TinyDigitNet([
        nn.Sequential(
            *_conv3x3(1, 8), nn.Dropout(d),
            *_conv3x3(8, 8), nn.MaxPool2d(2), nn.Dropout(d),
            _transition(8, 8),
        ),
        nn.Sequential(
            *_conv3x3(8, 8), nn.Dropout(d),
            *_conv3x3(8, 16), nn.MaxPool2d(2), nn.Dropout(d),
            _transition(16, 16),
        ),
        nn.Sequential(
            *_conv3x3(16, 16, padding=0), nn.Dropout(d),
            *_conv3x3(16, 16, padding=0), nn.MaxPool2d(2), nn.Dropout(d),
        ),
    ])


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


@dataclass(frozen=True)
class ModelSpec:
    """What the registry knows about a model besides how to build it."""

    name: str
    title: str
    builder: Callable[..., TinyDigitNet]
    conv_blocks: int
    # The reference project's published accuracy: best epoch, picked on the test set, one seed.
    reference_accuracy: float

    @functools.cached_property
    def parameters(self) -> int:
        """Counted on a built model, so no document ever types it by hand."""
        return count_parameters(self.builder())

    @functools.cached_property
    def conv_shapes(self) -> tuple[tuple[int, ...], ...]:
        """The weight shapes of the convolutions in order: what tells the models apart in an
        exported graph, fp32 or int8, whose tensors have lost their names."""
        return conv_shapes(self.builder())


MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec("medium", "MNIST-Medium", mnist_medium, 3, 99.44),
        ModelSpec("small", "MNIST-Small", mnist_small, 2, 99.25),
        ModelSpec("ultrasmall", "MNIST-UltraSmall", mnist_ultrasmall, 2, 99.00),
    )
}


def get_spec(name: str) -> ModelSpec:
    """Look a model up by name; a clear error lists the known names."""
    try:
        return MODELS[name.lower()]
    except KeyError:
        raise ConfigError(f"unknown model {name!r}; choose one of: {', '.join(MODELS)}") from None


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
    return next((name for name, spec in MODELS.items() if spec.conv_shapes == shapes), None)
