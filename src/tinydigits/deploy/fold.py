"""BatchNorm folding: every block here is Conv(no bias) -> ReLU -> BatchNorm -> Dropout, so
BatchNorm sits *after* the ReLU and cannot be folded into its own conv the usual way.
:func:`fold_batchnorm` removes it exactly instead:

* the BN scale ``s`` is split as ``|s| * sign(s)``; ``|s|`` moves back into the preceding
  conv through the ReLU (``relu(a*x) == a*relu(x)`` for ``a >= 0``);
* what is left, ``y = sign * z + t``, moves forward through Dropout (identity at eval),
  average pooling (any affine map commutes with an average) and max pooling (a shift
  commutes with max; ``sign`` does only where it is all +1, otherwise it is applied
  before the pool), into the next conv: ``sign`` always goes into its weights, ``t``
  into its bias when the conv has no padding. A padded conv would see the zero padding
  become ``t`` if ``t`` were folded in, so there ``t`` stays as a per-channel Add.

The folded network gives the same outputs as the original to float rounding.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from . import ExportError


class ChannelAffine(nn.Module):
    """``x * scale + shift`` per channel; either part may be absent (exports as Mul / Add)."""

    def __init__(self, scale: torch.Tensor | None, shift: torch.Tensor | None) -> None:
        super().__init__()
        self.scale = None if scale is None else nn.Parameter(scale.detach().clone(), requires_grad=False)
        self.shift = None if shift is None else nn.Parameter(shift.detach().clone(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.scale is not None:
            x = x * self.scale.view(1, -1, 1, 1)
        if self.shift is not None:
            x = x + self.shift.view(1, -1, 1, 1)
        return x


class FoldedNet(nn.Module):
    """A TinyDigitNet with BatchNorm and Dropout folded away: a layer chain, then log-softmax."""

    def __init__(self, layers: list[nn.Module]) -> None:
        super().__init__()
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.log_softmax(self.layers(x).flatten(1), dim=1)


def _flat_layers(model: nn.Module) -> list[nn.Module]:
    """The leaf modules of a TinyDigitNet in forward order (its blocks are plain Sequentials)."""
    if not hasattr(model, "num_blocks") or not hasattr(model, "gap_linear"):
        raise ExportError(f"cannot fold {type(model).__name__}: expected a tinydigits model")
    blocks = [getattr(model, f"conv{i}") for i in range(1, model.num_blocks + 1)] + [model.gap_linear]
    return [layer for block in blocks for layer in block]


def _is_unpadded(conv: nn.Conv2d) -> bool:
    return all(p == 0 for p in conv.padding) if isinstance(conv.padding, tuple) else conv.padding == 0


@torch.no_grad()
def fold_batchnorm(model: nn.Module) -> FoldedNet:
    """An equivalent eval-mode :class:`FoldedNet` without BatchNorm or Dropout layers.

    ``model`` is not modified. See the module docstring for why each step is exact."""
    out: list[nn.Module] = []
    # The affine map still to apply, y = sign * z + shift, or None.
    pending: tuple[torch.Tensor, torch.Tensor] | None = None

    def flush() -> None:
        nonlocal pending
        if pending is not None:
            sign, shift = pending
            out.append(ChannelAffine(None if bool((sign > 0).all()) else sign, shift))
            pending = None

    for layer in _flat_layers(model):
        if isinstance(layer, (nn.Dropout, nn.Dropout2d, nn.Identity)):
            continue
        if isinstance(layer, nn.BatchNorm2d):
            flush()
            assert layer.running_mean is not None and layer.running_var is not None
            std = torch.sqrt(layer.running_var + layer.eps)
            weight = layer.weight if layer.weight is not None else torch.ones_like(std)
            bias = layer.bias if layer.bias is not None else torch.zeros_like(std)
            scale = weight / std
            shift = bias - layer.running_mean * scale
            if len(out) >= 2 and isinstance(out[-1], nn.ReLU) and isinstance(out[-2], nn.Conv2d):
                conv = out[-2]
                conv.weight.mul_(scale.abs().view(-1, 1, 1, 1))
                if conv.bias is not None:
                    conv.bias.mul_(scale.abs())
                pending = (torch.where(scale < 0, -1.0, 1.0), shift)
            else:
                out.append(ChannelAffine(scale, shift))
        elif isinstance(layer, nn.MaxPool2d):
            if pending is not None and bool((pending[0] < 0).any()):
                # max does not commute with a negative scale: apply the sign first; the shift
                # (which does commute) moves on.
                out.append(ChannelAffine(pending[0], None))
                pending = (torch.ones_like(pending[0]), pending[1])
            out.append(copy.deepcopy(layer))
        elif isinstance(layer, nn.AdaptiveAvgPool2d):
            out.append(copy.deepcopy(layer))
        elif isinstance(layer, nn.Conv2d) and layer.groups == 1 and layer.padding_mode == "zeros":
            conv = nn.Conv2d(layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride,
                             layer.padding, layer.dilation, bias=True)
            weight = layer.weight.detach().clone()
            bias = layer.bias.detach().clone() if layer.bias is not None else torch.zeros(layer.out_channels)
            if pending is not None:
                sign, shift = pending
                weight.mul_(sign.view(1, -1, 1, 1))
                if _is_unpadded(layer):
                    bias += (weight * (sign * shift).view(1, -1, 1, 1)).sum(dim=(1, 2, 3))
                else:
                    out.append(ChannelAffine(None, sign * shift))
                pending = None
            conv.weight.copy_(weight)
            conv.bias.copy_(bias)
            out.append(conv)
        else:
            flush()
            out.append(copy.deepcopy(layer))
    flush()
    return FoldedNet(out).eval()
