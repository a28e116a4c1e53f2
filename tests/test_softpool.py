"""soft_pool: the kernel against its naive twin on the edges, against the formula (also where
a naive exponential overflows), its infinities, and the errors users see."""

import numpy as np
import pytest

import naive
from maps import FLOOR_WINDOWS as EDGES
from maps import sample
from poolcli import ConfigError, Pipeline, ShapeError
from poolcli.stages import STAGES
from poolcli.stages.base import ReceptiveField
from torch_oracle import needs_torch, torch

WORKED = np.array([[1, 3, 2, 4], [5, 6, 1, 2], [0, 1, 3, 1], [2, 4, 5, 2]], np.float32)[None]


def stage(**params):
    return STAGES["soft_pool"].model_validate({"type": "soft_pool", **params})


def softmax_mean(values):
    """The definition, in float64: sum softmax(a) * a."""
    a = np.asarray(values, np.float64)
    weights = np.exp(a) / np.exp(a).sum()
    return float(np.sum(weights * a))


def test_worked_example():
    out = Pipeline.from_config({"stages": [{"type": "soft_pool", "kernel_size": 2}]})(WORKED)
    expected = [[softmax_mean([1, 3, 5, 6]), softmax_mean([2, 4, 1, 2])],
                [softmax_mean([0, 1, 2, 4]), softmax_mean([3, 1, 5, 2])]]
    np.testing.assert_allclose(out[0], expected, rtol=1e-6)


# --- kernel against the naive reference and the formula --------------------------------------------

@pytest.mark.parametrize("specials", [False, True])
@pytest.mark.parametrize("shape, kernel_size, stride", EDGES)
def test_matches_naive(shape, kernel_size, stride, specials, rng):
    x = sample(rng, shape, specials)
    out = stage(kernel_size=kernel_size, stride=stride)(x)
    # both in float64 (the kernel may reassociate its sums), rounded to float32 once; NaN == NaN
    np.testing.assert_allclose(out, naive.soft_pool(x, kernel_size, stride), rtol=1e-6, atol=1e-30)


def test_matches_the_formula_and_lies_between_mean_and_max(rng):
    x = sample(rng, (3, 12, 12))
    out = stage(kernel_size=3)(x)
    windows = x.reshape(3, 4, 3, 4, 3).transpose(0, 1, 3, 2, 4).reshape(3, 4, 4, 9)
    expected = np.apply_along_axis(softmax_mean, -1, windows)
    np.testing.assert_allclose(out, expected, rtol=1e-6)
    assert np.all(out <= windows.max(-1)) and np.all(out >= windows.mean(-1, dtype=np.float64) - 1e-6)


@needs_torch
def test_matches_torch_softmax(rng):
    x = sample(rng, (4, 10, 14))
    t = torch.from_numpy(x.astype(np.float64))[None]
    windows = t.unfold(2, 2, 2).unfold(3, 2, 2).reshape(1, 4, 5, 7, 4)  # (.., 2x2 window flattened)
    expected = (torch.softmax(windows, -1) * windows).sum(-1)[0].numpy()
    np.testing.assert_allclose(stage(kernel_size=2)(x), expected, rtol=1e-6)


def test_huge_values_are_stable():
    # e^(3e38) overflows anything: the stable form weighs by e^(a - max) instead.
    x = np.array([[[3e38, 3e38, 1e38, 3.4e38, -3e38, -3.4e38, -3e38, -3e38]]], np.float32)
    out = stage(kernel_size=[1, 2])(x)
    np.testing.assert_array_equal(out, x[:, :, [0, 3, 4, 6]])  # equal values; the max wins; -3e38 wins
    assert np.isfinite(out).all()
    near = np.array([[[1e30, 1e30 + 2e23]]], np.float32)  # a few float32 steps apart: ~2e23
    assert near[0, 0, 0] != near[0, 0, 1]
    np.testing.assert_array_equal(stage(kernel_size=[1, 2])(near), near[:, :, 1:])  # weights 1 and e^-2e23
    small = np.array([[[1.0, 1.5]]], np.float32) * np.float32(1e-3)  # near-equal weights: near the mean
    np.testing.assert_allclose(stage(kernel_size=[1, 2])(small), [[[softmax_mean(small[0, 0])]]], rtol=1e-6)


def test_infinities_follow_the_limits():
    x = np.array([[[np.inf, 1, np.nan, np.inf, -np.inf, 4, -np.inf, -np.inf, np.inf, -np.inf]]], np.float32)
    # +inf takes all the weight; NaN beats +inf; a -inf gets weight 0; only -inf gives -inf
    np.testing.assert_array_equal(stage(kernel_size=[1, 2])(x), [[[np.inf, np.nan, 4, -np.inf, np.inf]]])


def test_constant_windows_give_the_constant(rng):
    x = np.repeat(np.repeat(sample(rng, (2, 5, 5)), 2, axis=1), 2, axis=2)  # 2x2 blocks of one value
    np.testing.assert_array_equal(stage(kernel_size=2)(x), x[:, ::2, ::2])


# --- shapes, costs, errors ----------------------------------------------------------------------------


def test_trace_and_shape_errors():
    pipe = Pipeline.from_config({"stages": [{"type": "soft_pool", "name": "s", "kernel_size": [2, 3], "stride": 1}]})
    (record,) = pipe.trace((2, 6, 8))
    assert record.out_shape == (2, 5, 6) and record.macs == 2 * (2 * 5 * 6 * 6)
    assert record.receptive_field == ReceptiveField((2, 3), (1, 1))
    with pytest.raises(ShapeError, match=r"stage 's' \(soft_pool\): a 2x3 window .* does not fit a 1x8 map"):
        pipe(np.zeros((1, 1, 8), np.float32))


@pytest.mark.parametrize("params, message", [
    ({}, r"stages\[0\] \(soft_pool\)\.kernel_size: is required"),
    ({"kernel_size": [2, 0]}, r"\.kernel_size: must be >= 1, got 0"),
    ({"kernel_size": 2, "stride": 0}, r"\.stride: must be >= 1, got 0"),
    ({"kernel_size": 2, "ceil_mode": True}, r"unknown key 'ceil_mode'"),
    ({"kernel_size": 2, "padding": 1}, r"unknown key 'padding'"),
    ({"kernel_size": 2, "strides": 1}, r"unknown key 'strides' \(did you mean 'stride'\?\)"),
])
def test_config_errors(params, message):
    with pytest.raises(ConfigError, match=message):
        Pipeline.from_config({"stages": [{"type": "soft_pool", **params}]})
