"""Exact architectures: parameter counts, shapes, the reference state_dict layout."""

import pytest
import torch

from tinydigits.models import MODELS, build_model, count_parameters, get_spec


@pytest.mark.parametrize(("name", "parameters"), [
    ("medium", 7_632), ("small", 5_616), ("ultrasmall", 4_464),
])
def test_exact_parameter_counts(name, parameters):
    assert count_parameters(build_model(name)) == parameters == MODELS[name].parameters


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("batch", [1, 7])
def test_output_is_log_probabilities(name, batch):
    model = build_model(name).eval()
    out = model(torch.randn(batch, 1, 28, 28))
    assert out.shape == (batch, 10)
    torch.testing.assert_close(out.exp().sum(dim=1), torch.ones(batch))


# Parameter keys and shapes the reference implementation's state_dicts use.
REFERENCE_KEYS = {
    "medium": {
        "conv1.0.weight": (8, 1, 3, 3), "conv1.2.weight": (8,), "conv1.4.weight": (8, 8, 3, 3),
        "conv1.6.weight": (8,), "conv1.9.weight": (8, 8, 1, 1), "conv1.9.bias": (8,),
        "conv2.0.weight": (8, 8, 3, 3), "conv2.2.weight": (8,), "conv2.4.weight": (16, 8, 3, 3),
        "conv2.6.weight": (16,), "conv2.9.weight": (16, 16, 1, 1), "conv2.9.bias": (16,),
        "conv3.0.weight": (16, 16, 3, 3), "conv3.2.weight": (16,),
        "conv3.4.weight": (16, 16, 3, 3), "conv3.6.weight": (16,),
        "gap_linear.1.weight": (10, 16, 1, 1),
    },
    "small": {"conv1.13.weight": (8, 8, 1, 1), "conv1.13.bias": (8,), "conv2.8.weight": (16, 16, 3, 3),
              "gap_linear.1.weight": (10, 16, 1, 1)},
    "ultrasmall": {"conv1.17.weight": (8, 8, 1, 1), "conv1.17.bias": (8,), "conv1.12.weight": (8, 8, 3, 3),
                   "conv2.8.weight": (16, 8, 3, 3), "gap_linear.1.weight": (10, 16, 1, 1)},
}


@pytest.mark.parametrize("name", list(REFERENCE_KEYS))
def test_reference_state_dict_layout(name):
    state = build_model(name).state_dict()
    for key, shape in REFERENCE_KEYS[name].items():
        assert tuple(state[key].shape) == shape, key
    assert "conv3.0.weight" not in state or name == "medium"
    # 3x3 convs have no bias; only the 1x1 transitions do.
    biases = sorted(k for k in state if k.endswith(".bias") and state[k].ndim == 1
                    and k.replace(".bias", ".running_mean") not in state)
    assert biases == sorted(k for k in REFERENCE_KEYS[name] if k.endswith(".bias"))


def test_dropout_is_configurable():
    model = build_model("medium", dropout=0.3)
    rates = {m.p for m in model.modules() if isinstance(m, torch.nn.Dropout)}
    assert rates == {0.3}


def test_unknown_model_is_a_clear_error():
    with pytest.raises(ValueError, match=r"unknown model 'large'.*medium, small, ultrasmall"):
        get_spec("large")


def test_the_wide_teacher_is_medium_at_four_times_the_channels():
    """A teacher trains like a digit model but is not one of the shipped ones: the commands that
    offer MODELS (eval, export, tables, the web page) leave it out."""
    from tinydigits.models import REGISTRY, TEACHERS

    assert list(TEACHERS) == ["wide"] and "wide" not in MODELS and REGISTRY["wide"].task == "digit"
    wide, medium = build_model("wide").state_dict(), build_model("medium").state_dict()
    assert wide.keys() == medium.keys()  # the same layers, so the same layout
    assert all(wide[k].shape[0] == 4 * medium[k].shape[0] for k in wide
               if k.endswith(".weight") and not k.startswith("gap_linear"))
    assert REGISTRY["wide"].parameters == 117_312
