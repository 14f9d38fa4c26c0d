"""Tests for tinydigits.analysis.

Every receptive-field, shape and MAC number asserted below was worked out by
hand (the arithmetic is in the comments) so the tests do not just replay the
recursion that the code under test implements.
"""

from __future__ import annotations

import json

import pytest
from torch import nn

from tinydigits.analysis import LayerInfo, ModelSummary, receptive_field_step, summarize
from tinydigits.models import build_model, count_parameters

MODEL_NAMES = ("medium", "small", "ultrasmall")


@pytest.fixture(scope="module")
def summaries() -> dict[str, ModelSummary]:
    return {name: summarize(build_model(name), name) for name in MODEL_NAMES}


def _layer(summary: ModelSummary, name: str) -> LayerInfo:
    matches = [layer for layer in summary.layers if layer.name == name]
    assert len(matches) == 1, name
    return matches[0]


# --- receptive_field_step --------------------------------------------------


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        # input pixel, 3x3 stride 1: 1 + (3-1)*1 = 3, jump 1*1 = 1
        ((1, 1, 3, 1), (3, 1)),
        # rf 5 jump 1, maxpool 2 stride 2: 5 + (2-1)*1 = 6, jump 1*2 = 2
        ((5, 1, 2, 2), (6, 2)),
        # rf 6 jump 2, 3x3: 6 + 2*2 = 10, jump stays 2
        ((6, 2, 3, 1), (10, 2)),
        # 1x1 conv changes nothing: 7 + 0*4 = 7, jump 4
        ((7, 4, 1, 1), (7, 4)),
        # dilation 2 on 3x3 -> k_eff = 2*(3-1)+1 = 5: 1 + 4*1 = 5
        ((1, 1, 3, 1, 2), (5, 1)),
        # dilation 2, rf 6 jump 2: k_eff 5 -> 6 + 4*2 = 14, jump 2
        ((6, 2, 3, 1, 2), (14, 2)),
        # stride + dilation: k_eff = 3*(3-1)+1 = 7 -> 3 + 6*2 = 15, jump 2*2 = 4
        ((3, 2, 3, 2, 3), (15, 4)),
        # strided 3x3 at jump 4: 27 + 2*4 = 35, jump 4*2 = 8
        ((27, 4, 3, 2), (35, 8)),
    ],
)
def test_receptive_field_step(args: tuple[int, ...], expected: tuple[int, int]) -> None:
    assert receptive_field_step(*args) == expected


def test_receptive_field_step_rejects_nonpositive() -> None:
    with pytest.raises(ValueError):
        receptive_field_step(1, 1, 0, 1)
    with pytest.raises(ValueError):
        receptive_field_step(1, 1, 3, 1, dilation=0)


# --- receptive fields of the three models, by hand -------------------------


def test_medium_receptive_fields(summaries: dict[str, ModelSummary]) -> None:
    s = summaries["medium"]
    # (layer, rf, jump) with rf_out = rf + (k-1)*jump, jump_out = jump*stride
    expected = [
        ("conv1.0", 3, 1),  # 1 + 2*1
        ("conv1.2", 3, 1),  # BatchNorm keeps it
        ("conv1.4", 5, 1),  # 3 + 2*1
        ("conv1.7", 6, 2),  # maxpool 2: 5 + 1*1, jump 2
        ("conv1.9", 6, 2),  # 1x1 conv keeps it
        ("conv2.0", 10, 2),  # 6 + 2*2
        ("conv2.4", 14, 2),  # 10 + 2*2
        ("conv2.7", 16, 4),  # maxpool 2: 14 + 1*2, jump 4
        ("conv3.0", 24, 4),  # 16 + 2*4 (padding 0 does not change the RF)
        ("conv3.4", 32, 4),  # 24 + 2*4
        ("conv3.7", 36, 8),  # maxpool 2: 32 + 1*4, jump 8
        ("conv3.8", 36, 8),  # dropout keeps it
    ]
    for name, rf, jump in expected:
        layer = _layer(s, name)
        assert (layer.receptive_field, layer.jump) == (rf, jump), name
    assert s.max_receptive_field == 36


def test_small_receptive_fields(summaries: dict[str, ModelSummary]) -> None:
    s = summaries["small"]
    expected = [
        ("conv1.0", 3, 1),  # 1 + 2
        ("conv1.4", 5, 1),  # 3 + 2
        ("conv1.8", 7, 1),  # 5 + 2
        ("conv1.11", 8, 2),  # maxpool 2: 7 + 1, jump 2
        ("conv1.13", 8, 2),  # 1x1
        ("conv2.0", 12, 2),  # 8 + 2*2
        ("conv2.4", 16, 2),  # 12 + 2*2
        ("conv2.8", 20, 4),  # 3x3 stride 2: 16 + 2*2, jump 4
        ("conv2.11", 20, 4),  # dropout
    ]
    for name, rf, jump in expected:
        layer = _layer(s, name)
        assert (layer.receptive_field, layer.jump) == (rf, jump), name
    assert s.max_receptive_field == 20


def test_ultrasmall_receptive_fields(summaries: dict[str, ModelSummary]) -> None:
    s = summaries["ultrasmall"]
    expected = [
        ("conv1.0", 3, 1),  # 1 + 2
        ("conv1.4", 5, 1),  # 3 + 2
        ("conv1.8", 7, 1),  # 5 + 2
        ("conv1.12", 9, 2),  # 3x3 stride 2: 7 + 2*1, jump 2
        ("conv1.15", 11, 4),  # maxpool 2: 9 + 1*2, jump 4
        ("conv1.17", 11, 4),  # 1x1
        ("conv2.0", 19, 4),  # 11 + 2*4
        ("conv2.4", 27, 4),  # 19 + 2*4
        ("conv2.8", 35, 8),  # 3x3 stride 2: 27 + 2*4, jump 8
    ]
    for name, rf, jump in expected:
        layer = _layer(s, name)
        assert (layer.receptive_field, layer.jump) == (rf, jump), name
    assert s.max_receptive_field == 35


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_global_pooling_reports_whole_image(summaries: dict[str, ModelSummary], name: str) -> None:
    s = summaries[name]
    gap = _layer(s, "gap_linear.0")
    assert "global" in gap.kind
    assert gap.receptive_field == 28  # the whole 28x28 input
    assert gap.output_shape == (16, 1, 1)
    assert _layer(s, "gap_linear.1").receptive_field == 28
    # max_receptive_field is the conv stack's, not the global pool's.
    assert s.max_receptive_field == max(
        layer.receptive_field for layer in s.layers if "gap_linear" not in layer.name
    )


# --- parameters, shapes, MACs ----------------------------------------------


@pytest.mark.parametrize(
    ("name", "total"), [("medium", 7_632), ("small", 5_616), ("ultrasmall", 4_464)]
)
def test_parameters_sum_to_total(summaries: dict[str, ModelSummary], name: str, total: int) -> None:
    s = summaries[name]
    assert sum(layer.parameters for layer in s.layers) == total
    assert s.total_parameters == total
    assert count_parameters(build_model(name)) == total


def test_layer_parameter_counts(summaries: dict[str, ModelSummary]) -> None:
    s = summaries["medium"]
    assert _layer(s, "conv1.0").parameters == 1 * 8 * 3 * 3  # 72, no bias
    assert _layer(s, "conv1.2").parameters == 2 * 8  # BN weight + bias = 16
    assert _layer(s, "conv2.9").parameters == 16 * 16 + 16  # 1x1 with bias = 272
    assert _layer(s, "gap_linear.1").parameters == 16 * 10  # 160
    assert _layer(s, "conv1.7").parameters == 0  # maxpool


def test_output_shapes(summaries: dict[str, ModelSummary]) -> None:
    m = summaries["medium"]
    assert _layer(m, "conv1.0").output_shape == (8, 28, 28)  # padding 1 keeps 28
    assert _layer(m, "conv1.7").output_shape == (8, 14, 14)  # 28 / 2
    assert _layer(m, "conv2.7").output_shape == (16, 7, 7)  # 14 / 2
    assert _layer(m, "conv3.0").output_shape == (16, 5, 5)  # 7 - 2 (padding 0)
    assert _layer(m, "conv3.4").output_shape == (16, 3, 3)  # 5 - 2
    assert _layer(m, "conv3.7").output_shape == (16, 1, 1)  # floor(3 / 2)
    assert _layer(m, "gap_linear.1").output_shape == (10, 1, 1)

    sm = summaries["small"]
    # stride 2, padding 1 on 14: floor((14 + 2 - 3) / 2) + 1 = 7
    assert _layer(sm, "conv2.8").output_shape == (16, 7, 7)

    u = summaries["ultrasmall"]
    # stride 2, padding 1 on 28: floor((28 + 2 - 3) / 2) + 1 = 14
    assert _layer(u, "conv1.12").output_shape == (8, 14, 14)
    assert _layer(u, "conv1.15").output_shape == (8, 7, 7)  # maxpool 14 / 2
    # stride 2, padding 1 on 7: floor((7 + 2 - 3) / 2) + 1 = 4
    assert _layer(u, "conv2.8").output_shape == (16, 4, 4)


def test_layers_in_forward_order(summaries: dict[str, ModelSummary]) -> None:
    names = [layer.name for layer in summaries["medium"].layers]
    assert names[0] == "conv1.0"
    assert names[-2:] == ["gap_linear.0", "gap_linear.1"]
    assert len(names) == 10 + 10 + 9 + 2  # leaves in conv1, conv2, conv3, gap_linear


def test_conv_macs_by_hand(summaries: dict[str, ModelSummary]) -> None:
    m = summaries["medium"]
    # conv1.4: 28*28 outputs * 8 C_out * 8 C_in * 3*3 = 784 * 576 = 451,584
    assert _layer(m, "conv1.4").macs == 451_584
    # conv3.0: 5*5 * 16 * 16 * 9 = 25 * 2304 = 57,600
    assert _layer(m, "conv3.0").macs == 57_600
    # 1x1 transition conv2.9: 7*7 * 16 * 16 = 12,544 (bias adds are not MACs)
    assert _layer(m, "conv2.9").macs == 12_544
    # Only convs count: BN, ReLU, pooling, dropout are 0.
    for name in ("conv1.1", "conv1.2", "conv1.3", "conv1.7", "gap_linear.0"):
        assert _layer(m, name).macs == 0


@pytest.mark.parametrize(
    ("name", "macs"),
    [
        # 56,448 + 451,584 + 12,544 (conv1) + 112,896 + 225,792 + 12,544 (conv2)
        # + 57,600 + 20,736 (conv3) + 160 (classifier)
        ("medium", 950_304),
        # 56,448 + 2*451,584 + 12,544 + 112,896 + 225,792 + 112,896 + 160
        ("small", 1_423_904),
        # 56,448 + 2*451,584 + 112,896 + 3,136 + 2*28,224 + 18,432 + 160
        ("ultrasmall", 1_150_688),
    ],
)
def test_total_macs(summaries: dict[str, ModelSummary], name: str, macs: int) -> None:
    s = summaries[name]
    assert s.total_macs == macs
    assert sum(layer.macs for layer in s.layers) == macs


# --- a custom model with dilation, stride and AvgPool ----------------------


def test_custom_model_dilation_stride() -> None:
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, dilation=2, padding=2),  # k_eff 5: rf 5, jump 1; 28 -> 28
        nn.Conv2d(4, 4, 3, stride=2),  # rf 5 + 2 = 7, jump 2; floor(25/2)+1 = 13
        nn.AvgPool2d(2),  # rf 7 + 1*2 = 9, jump 4; floor(13/2) = 6
    )
    model.train()
    s = summarize(model, "custom")
    assert [layer.receptive_field for layer in s.layers] == [5, 7, 9]
    assert [layer.jump for layer in s.layers] == [1, 2, 4]
    assert [layer.output_shape for layer in s.layers] == [(4, 28, 28), (4, 13, 13), (4, 6, 6)]
    # conv 0: 28*28 * 4 * 1 * 9 = 28,224; conv 1: 13*13 * 4 * 4 * 9 = 24,336
    assert [layer.macs for layer in s.layers] == [28_224, 24_336, 0]
    assert s.max_receptive_field == 9  # no global pooling: the largest RF
    assert s.layers[0].kind == "Conv2d 3x3 (dilation 2)"
    assert s.layers[1].kind == "Conv2d 3x3 (stride 2)"
    assert model.training  # summarize restores the caller's mode
    assert not model[0]._forward_hooks  # hooks removed


def test_unknown_resizing_layer_is_refused() -> None:
    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.Upsample(scale_factor=2))
    with pytest.raises(NotImplementedError):
        summarize(model)


# --- rendering ---------------------------------------------------------------


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_to_markdown(summaries: dict[str, ModelSummary], name: str) -> None:
    s = summaries[name]
    text = s.to_markdown()
    for layer in s.layers:
        assert f"| {layer.name} |" in text
    assert f"Total parameters: {s.total_parameters:,}" in text
    assert f"{s.total_macs:,}" in text
    assert f"Max receptive field (before global pooling): {s.max_receptive_field} px" in text
    assert name in text


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_to_dict_is_json(summaries: dict[str, ModelSummary], name: str) -> None:
    s = summaries[name]
    data = json.loads(json.dumps(s.to_dict()))
    assert data["model"] == name
    assert data["total_parameters"] == s.total_parameters
    assert data["total_macs"] == s.total_macs
    assert data["max_receptive_field"] == s.max_receptive_field
    assert len(data["layers"]) == len(s.layers)
    assert data["layers"][0]["output_shape"] == [8, 28, 28]
