"""The activations beyond relu..sign_sqrt (ONNX's catalogue) against naive Python, torch and
onnxruntime, their parameters and their errors."""

import numpy as np
import pytest

import naive
from onnx_oracle import needs_onnx, run_node
from poolcli import Pipeline
from poolcli.errors import ConfigError, ShapeError
from poolcli.stages import STAGES
from poolcli.stages.elementwise import apply_activation
from torch_oracle import F, needs_torch, torch

SPECIAL = np.array([0.0, -0.0, 1e-40, -1e-40, 3.5, -2.25, 3.0, -3.0, 6.0, 80.0, -80.0, 1e30, -1e30, np.inf, -np.inf,
                    np.nan], np.float32)

CASES = [  # (fn, parameters)
    ("leaky_relu", {}), ("leaky_relu", {"alpha": 0.3}), ("elu", {}), ("elu", {"alpha": 0.5}),
    ("clip", {"min": 0, "max": 6}), ("clip", {"min": -1.5}), ("clip", {"max": 0.25}), ("clip", {}),
    ("hard_sigmoid", {}), ("hard_sigmoid", {"alpha": 1 / 6, "beta": 0.5}), ("hard_swish", {}), ("silu", {}),
    ("gelu", {}), ("gelu_tanh", {}), ("erf", {}), ("exp", {}), ("softplus", {}),
    ("prelu", {"slope": 0.25}), ("prelu", {"slope": [[[0.1]], [[-0.5]], [[2.0]]]}),
]


def stage(fn, params):
    return STAGES["activation"].model_validate({"type": "activation", "fn": fn, **params})


@pytest.mark.parametrize("fn, params", CASES)
@pytest.mark.parametrize("shape", [(3, 1, 1), (3, 7, 5), (3, 130, 129)])
def test_equals_naive(fn, params, shape, rng):
    x = (rng.standard_normal(shape) * 4).astype(np.float32)
    np.testing.assert_allclose(stage(fn, params)(x), naive.activation(x, fn, **params), rtol=3e-6, atol=1e-7)


@pytest.mark.parametrize("fn, params", [case for case in CASES if not isinstance(case[1].get("slope"), list)])
def test_special_values(fn, params):
    with np.errstate(all="ignore"):
        got = stage(fn, params)(SPECIAL)
    np.testing.assert_allclose(got, naive.activation(SPECIAL, fn, **params), rtol=3e-6, atol=1e-30)


def test_activation_of_conv_takes_the_mapping_form(rng):
    x = rng.standard_normal((2, 9, 8)).astype(np.float32)
    pipe = Pipeline.from_config({"input": {"color": "gray"}, "stages": [
        {"type": "conv", "filters": "random", "out_channels": 4, "activation": {"fn": "clip", "min": 0, "max": 0.5}}]})
    conv = pipe.nodes[0].stage
    want = naive.activation(naive.conv2d(x, conv.weights(2)).astype(np.float32), "clip", min=0, max=0.5)
    np.testing.assert_allclose(conv(x), want, rtol=1e-5, atol=1e-5)


def test_inplace_prelu_writes_the_given_array(rng):
    x = rng.standard_normal((3, 4, 5)).astype(np.float32)
    want = naive.activation(x, "prelu", slope=[[[0.5]], [[1.0]], [[-2.0]]])
    act = stage("prelu", {"slope": [[[0.5]], [[1.0]], [[-2.0]]]})
    assert apply_activation(x, act, inplace=True) is x
    np.testing.assert_array_equal(x, want)


@needs_torch
@pytest.mark.parametrize("fn, params, reference", [
    ("leaky_relu", {"alpha": 0.1}, lambda t: F.leaky_relu(t, 0.1)),
    ("elu", {"alpha": 0.7}, lambda t: F.elu(t, 0.7)),
    ("clip", {"min": 0, "max": 6}, lambda t: F.relu6(t)),
    ("hard_sigmoid", {"alpha": 1 / 6, "beta": 0.5}, lambda t: F.hardsigmoid(t)),
    ("hard_swish", {}, lambda t: F.hardswish(t)),
    ("silu", {}, lambda t: F.silu(t)),
    ("gelu", {}, lambda t: F.gelu(t)),
    ("gelu_tanh", {}, lambda t: F.gelu(t, approximate="tanh")),
    ("erf", {}, lambda t: torch.erf(t)),
    ("exp", {}, lambda t: torch.exp(t)),
    ("softplus", {}, lambda t: F.softplus(t, threshold=100)),
    ("prelu", {"slope": [[[0.1]], [[-0.5]], [[2.0]]]}, lambda t: F.prelu(t, torch.tensor([0.1, -0.5, 2.0]))),
])
def test_equals_torch(fn, params, reference, rng):
    x = (rng.standard_normal((3, 40, 50)) * 5).astype(np.float32)
    # atol: torch's float32 gelu loses digits in the far negative tail (-9.1e-7 at -5.1, for -8.66e-7)
    np.testing.assert_allclose(stage(fn, params)(x), reference(torch.from_numpy(x)[None])[0].numpy(),
                               rtol=2e-6, atol=1e-6)


@needs_onnx
@pytest.mark.parametrize("fn, params, op, attributes, constants", [
    ("hard_sigmoid", {}, "HardSigmoid", {}, {}),
    ("hard_sigmoid", {"alpha": 0.2, "beta": 0.5}, "HardSigmoid", {"alpha": 0.2}, {}),
    ("hard_swish", {}, "HardSwish", {}, {}),
    ("clip", {"min": 0, "max": 6}, "Clip", {}, {"lo": np.float32(0), "hi": np.float32(6)}),
    ("clip", {"max": 1.5}, "Clip", {}, {"lo": None, "hi": np.float32(1.5)}),
    ("leaky_relu", {"alpha": 0.2}, "LeakyRelu", {"alpha": 0.2}, {}),
    ("elu", {}, "Elu", {}, {}),
    ("softplus", {}, "Softplus", {}, {}),
    ("erf", {}, "Erf", {}, {}),
    ("gelu", {}, "Gelu", {}, {}),
    ("gelu_tanh", {}, "Gelu", {"approximate": "tanh"}, {}),
    ("prelu", {"slope": [[[0.1]], [[-0.5]], [[2.0]]]}, "PRelu", {}, {"slope": np.array([[[0.1]], [[-0.5]], [[2.0]]],
                                                                                       np.float32)}),
])
def test_equals_onnxruntime(fn, params, op, attributes, constants, rng):
    x = (rng.standard_normal((3, 17, 9)) * 5).astype(np.float32)
    opset = 20 if op == "Gelu" else 17
    want = run_node(op, [x[None]], constants, opset=opset, **attributes)[0]
    # atol: onnxruntime's float32 Gelu loses digits in the negative tail (-5.10e-6 at -4.5, for -5.137e-6)
    np.testing.assert_allclose(stage(fn, params)(x), want, rtol=2e-6, atol=1e-6)


@pytest.mark.parametrize("params, match", [
    ({"fn": "relu", "alpha": 0.1}, r"stages\[0\] \(activation\): alpha applies to leaky_relu, elu, hard_sigmoid only"),
    ({"fn": "clip", "beta": 0.1}, r"beta applies to hard_sigmoid only, not clip"),
    ({"fn": "relu", "min": 0}, r"min applies to clip only, not relu"),
    ({"fn": "clip", "min": 2, "max": 1}, r"clip needs min <= max, got min 2.0 and max 1.0"),
    ({"fn": "prelu"}, r"prelu needs slope"),
    ({"fn": "prelu", "slope": [[[[1.0]]]]}, r"slope must have at most 3 dimensions"),
    ({"fn": "prelu", "slope": [1, "a"]}, r"slope must be a number, a list of numbers"),
    ({"fn": "prelu", "slope": "s"}, r"'s' is not a \.npy path, and the config has no weights: file"),
    ({"fn": "swish"}, r"fn: must be one of 'none', 'relu'"),
])
def test_config_errors(params, match):
    with pytest.raises(ConfigError, match=match):
        Pipeline.from_config({"stages": [{"type": "activation", **params}]})


def test_a_slope_that_does_not_broadcast_is_a_shape_error():
    pipe = Pipeline.from_config({"stages": [{"type": "activation", "fn": "prelu", "slope": [[[1.0]], [[2.0]]]}]})
    with pytest.raises(ShapeError, match=r"prelu slope of shape \(2, 1, 1\) does not broadcast against the input "
                                         r"\(3, 4, 4\)"):
        pipe.trace((3, 4, 4))
