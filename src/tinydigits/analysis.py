"""Per-layer model summary: output shapes, parameters, receptive field and MACs.

Receptive field (RF) and jump are computed from each layer's own geometry
(kernel size, stride, dilation) with the standard recursion

    k_eff    = dilation * (kernel - 1) + 1
    rf_out   = rf_in + (k_eff - 1) * jump_in
    jump_out = jump_in * stride

starting from rf = 1, jump = 1 at the input pixels. Padding does not change
either number (it only shifts *where* the field sits relative to the image),
so it does not enter the recursion. Values are not clipped to the image: a
field that hangs over the border into the zero padding is reported at its
full size, which is the convention these models are usually compared by.

MAC convention: only Conv2d and Linear layers are counted (one MAC per
weight use per output element; bias adds are not MACs). BatchNorm, ReLU,
pooling and Dropout count 0 MACs: they do a handful of elementwise ops, no
multiply-accumulates against weights, and BatchNorm folds into the preceding
conv at inference.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .errors import ConfigError
from .markdown import markdown_table

# Layers that act on each spatial position independently: they keep rf/jump.
_POINTWISE = (
    nn.BatchNorm2d,
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.GELU,
    nn.SiLU,
    nn.Sigmoid,
    nn.Tanh,
    nn.Dropout,
    nn.Dropout2d,
    nn.Identity,
)


@dataclass(frozen=True)
class LayerInfo:
    """One leaf module, as seen during a forward pass of a single image."""

    name: str  # state_dict-style path, e.g. "conv1.0"
    kind: str  # "Conv2d 3x3", "MaxPool2d 2", "AdaptiveAvgPool2d (global)", ...
    output_shape: tuple[int, ...]  # (C, H, W) for one image
    parameters: int
    receptive_field: int  # RF of one output unit, in input pixels
    jump: int  # input-pixel distance between adjacent output units
    macs: int  # multiply-accumulates for one image


@dataclass(frozen=True)
class ModelSummary:
    """Per-layer table plus totals for one model."""

    model: str
    layers: list[LayerInfo]
    total_parameters: int
    total_macs: int
    # RF reached by the conv stack before global pooling (the number usually compared).
    max_receptive_field: int

    def _global_start(self) -> int:
        """Index of the first layer whose units see the whole image (len(layers) if none)."""
        for index, layer in enumerate(self.layers):
            if "(global)" in layer.kind:
                return index
        return len(self.layers)

    def to_markdown(self) -> str:
        """A readable Markdown table followed by totals lines."""
        global_start = self._global_start()
        title = self.model or "model"
        rows = []
        for index, layer in enumerate(self.layers):
            # After global pooling the RF is the whole image; say so rather than imply a size.
            rf = f"global ({layer.receptive_field})" if index >= global_start else layer.receptive_field
            rows.append((layer.name, layer.kind, " x ".join(str(d) for d in layer.output_shape),
                         f"{layer.parameters:,}", rf, layer.jump, f"{layer.macs:,}"))
        header = ("Layer", "Kind", "Output (C x H x W)", "Params", "RF (px)", "Jump (px)", "MACs")
        lines = [f"### Model summary: {title}", "", *markdown_table(header, rows, left=3)]
        lines += [
            "",
            f"- Total parameters: {self.total_parameters:,}",
            f"- Total MACs (Conv2d/Linear only, one image): {self.total_macs:,}",
            f"- Max receptive field (before global pooling): {self.max_receptive_field} px",
        ]
        return "\n".join(lines) + "\n"

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dict (tuples become lists)."""
        return {
            "model": self.model,
            "layers": [
                {
                    "name": layer.name,
                    "kind": layer.kind,
                    "output_shape": list(layer.output_shape),
                    "parameters": layer.parameters,
                    "receptive_field": layer.receptive_field,
                    "jump": layer.jump,
                    "macs": layer.macs,
                }
                for layer in self.layers
            ],
            "total_parameters": self.total_parameters,
            "total_macs": self.total_macs,
            "max_receptive_field": self.max_receptive_field,
        }


def receptive_field_step(
    rf: int, jump: int, kernel: int, stride: int, dilation: int = 1
) -> tuple[int, int]:
    """Propagate (rf, jump) through one sliding-window layer along one axis."""
    if min(rf, jump, kernel, stride, dilation) < 1:
        raise ConfigError("rf, jump, kernel, stride and dilation must all be >= 1")
    k_eff = dilation * (kernel - 1) + 1
    return rf + (k_eff - 1) * jump, jump * stride


def _pair(value: int | tuple[int, ...]) -> tuple[int, int]:
    if isinstance(value, int):
        return value, value
    if len(value) == 1:
        return value[0], value[0]
    return int(value[0]), int(value[1])


def _hw(shape: tuple[int, ...]) -> tuple[int, int] | None:
    """Spatial size of a per-image (C, H, W) shape; None when it is not spatial."""
    return (shape[-2], shape[-1]) if len(shape) == 3 else None


@dataclass
class _Call:
    name: str
    module: nn.Module
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]


def _record_calls(model: nn.Module, x: torch.Tensor) -> list[_Call]:
    """Run one forward pass and log every leaf-module call in execution order."""
    calls: list[_Call] = []
    handles = []

    def make_hook(name: str):
        def hook(module: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
            # Drop the batch dimension: everything is reported per image.
            in_shape = tuple(inputs[0].shape[1:]) if inputs else ()
            out_shape = tuple(output.shape[1:]) if isinstance(output, torch.Tensor) else ()
            calls.append(_Call(name, module, in_shape, out_shape))

        return hook

    for name, module in model.named_modules():
        if name and not any(True for _ in module.children()):
            handles.append(module.register_forward_hook(make_hook(name)))
    was_training = model.training
    try:
        model.eval()  # eval: BatchNorm uses running stats, Dropout is off, batch of 1 is fine
        with torch.no_grad():
            model(x)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return calls


def _describe(module: nn.Module) -> str:
    if isinstance(module, nn.Conv2d):
        kh, kw = _pair(module.kernel_size)
        kind = f"Conv2d {kh}x{kw}"
        extras = []
        if _pair(module.stride) != (1, 1):
            extras.append(f"stride {module.stride[0]}")
        if _pair(module.dilation) != (1, 1):
            extras.append(f"dilation {module.dilation[0]}")
        if module.groups != 1:
            extras.append(f"groups {module.groups}")
        return f"{kind} ({', '.join(extras)})" if extras else kind
    if isinstance(module, (nn.MaxPool2d, nn.AvgPool2d)):
        kh, kw = _pair(module.kernel_size)
        size = str(kh) if kh == kw else f"{kh}x{kw}"
        kind = f"{type(module).__name__} {size}"
        stride = _pair(module.stride)
        return kind if stride == (kh, kw) else f"{kind} (stride {stride[0]})"
    return type(module).__name__


def summarize(
    model: nn.Module, name: str = "", input_size: tuple[int, int, int] = (1, 28, 28)
) -> ModelSummary:
    """Summarise ``model`` layer by layer for one ``input_size`` (C, H, W) image.

    Layers are the leaf modules in the order the forward pass calls them; the
    RF recursion assumes they form a single chain (true for these models).
    """
    param = next(model.parameters(), None)
    x = torch.zeros(
        (1, *input_size),
        device=param.device if param is not None else None,
        dtype=param.dtype if param is not None else None,
    )
    calls = _record_calls(model, x)

    image = max(input_size[1], input_size[2])
    rf_h = rf_w = 1
    jump_h = jump_w = 1
    is_global = False
    rf_before_global: int | None = None
    layers: list[LayerInfo] = []

    for call in calls:
        module = call.module
        kind = _describe(module)
        in_hw, out_hw = _hw(call.input_shape), _hw(call.output_shape)
        macs = 0

        if isinstance(module, nn.Conv2d):
            kh, kw = _pair(module.kernel_size)
            sh, sw = _pair(module.stride)
            dh, dw = _pair(module.dilation)
            rf_h, jump_h = receptive_field_step(rf_h, jump_h, kh, sh, dh)
            rf_w, jump_w = receptive_field_step(rf_w, jump_w, kw, sw, dw)
            c_out, h_out, w_out = call.output_shape
            macs = h_out * w_out * c_out * (module.in_channels // module.groups) * kh * kw
        elif isinstance(module, (nn.MaxPool2d, nn.AvgPool2d)):
            kh, kw = _pair(module.kernel_size)
            sh, sw = _pair(module.stride)
            # AvgPool2d has no dilation attribute; MaxPool2d may.
            dh, dw = _pair(getattr(module, "dilation", 1))
            rf_h, jump_h = receptive_field_step(rf_h, jump_h, kh, sh, dh)
            rf_w, jump_w = receptive_field_step(rf_w, jump_w, kw, sw, dw)
        elif isinstance(module, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)):
            if in_hw is None or out_hw is None:
                raise ConfigError(f"{call.name}: adaptive pooling needs a (C, H, W) input")
            if out_hw == (1, 1):
                # Global pooling: every output unit sees the whole image.
                is_global = True
                kind = f"{kind} (global)"
            elif in_hw[0] % out_hw[0] == 0 and in_hw[1] % out_hw[1] == 0:
                # Evenly divisible: identical to a pool with kernel = stride = in // out.
                kh, kw = in_hw[0] // out_hw[0], in_hw[1] // out_hw[1]
                rf_h, jump_h = receptive_field_step(rf_h, jump_h, kh, kh)
                rf_w, jump_w = receptive_field_step(rf_w, jump_w, kw, kw)
            else:
                raise NotImplementedError(
                    f"{call.name}: adaptive pooling {in_hw} -> {out_hw} has uneven windows"
                )
        elif isinstance(module, (nn.Flatten, nn.Linear)):
            if isinstance(module, nn.Linear):
                macs = module.in_features * module.out_features
                # Linear on a (.., features) tensor applies once per leading position.
                for dim in call.output_shape[:-1]:
                    macs *= dim
            if not is_global:
                # Flattening (or a Linear over features) mixes every spatial position.
                is_global = True
                kind = f"{kind} (global)"
        elif not isinstance(module, _POINTWISE) and in_hw != out_hw:
            # Unknown layer that changes the spatial size: refuse rather than guess.
            raise NotImplementedError(
                f"{call.name}: no receptive-field rule for {type(module).__name__}"
            )

        if is_global and rf_before_global is None:
            # The conv stack's reach, recorded before the global layer overwrites it.
            rf_before_global = max(rf_h, rf_w)
        if is_global:
            # Report "the whole image"; jump is carried over (there is one unit left).
            rf_h = rf_w = image

        layers.append(
            LayerInfo(
                name=call.name,
                kind=kind,
                output_shape=call.output_shape,
                parameters=sum(p.numel() for p in module.parameters(recurse=False)),
                receptive_field=max(rf_h, rf_w),
                jump=max(jump_h, jump_w),
                macs=macs,
            )
        )

    if rf_before_global is None:
        rf_before_global = max((layer.receptive_field for layer in layers), default=1)

    return ModelSummary(
        model=name,
        layers=layers,
        # Counted from the model itself so the test "per-layer sum == total" is meaningful.
        total_parameters=sum(p.numel() for p in model.parameters()),
        total_macs=sum(layer.macs for layer in layers),
        max_receptive_field=rf_before_global,
    )
