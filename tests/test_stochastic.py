"""stochastic_pool: both modes against the naive twin on the edges, the draw rule on chosen u,
the empirical frequencies of train mode against a_i / sum a, seeds, and the errors users see."""

import math

import numpy as np
import pytest

import naive
from maps import FLOOR_WINDOWS as EDGES
from maps import sample
from poolcli import ConfigError, Pipeline, ShapeError
from poolcli.stages import STAGES
from poolcli.stages.base import ReceptiveField

WORKED = np.array([[1, 3, 2, 4], [5, 6, 1, 2], [0, 1, 3, 1], [2, 4, 5, 2]], np.float32)[None]


def stage(**params):
    return STAGES["stochastic_pool"].model_validate({"type": "stochastic_pool", **params})


def test_worked_example():
    pipe = Pipeline.from_config({"stages": [{"type": "stochastic_pool", "kernel_size": 2}]})
    # window [[1, 3], [5, 6]]: (1 + 9 + 25 + 36) / (1 + 3 + 5 + 6) = 71 / 15
    np.testing.assert_allclose(pipe(WORKED), [[[71 / 15, 25 / 9], [21 / 7, 39 / 11]]], rtol=1e-6)


# --- both modes against the naive reference ---------------------------------------------------------

@pytest.mark.parametrize("specials", [False, True])
@pytest.mark.parametrize("shape, kernel_size, stride", EDGES)
def test_eval_matches_naive(shape, kernel_size, stride, specials, rng):
    x = sample(rng, shape, specials)
    out = stage(kernel_size=kernel_size, stride=stride)(x)
    # float64 sums (the kernel may reassociate them), rounded to float32 once
    np.testing.assert_allclose(out, naive.stochastic_pool(x, kernel_size, stride), rtol=1e-6)


@pytest.mark.parametrize("specials", [False, True])
@pytest.mark.parametrize("shape, kernel_size, stride", EDGES)
def test_train_matches_naive(shape, kernel_size, stride, specials, rng):
    x = sample(rng, shape, specials)
    pool = stage(kernel_size=kernel_size, stride=stride, mode="train", seed=5)
    out = pool(x)
    u = np.random.default_rng(5).random(out.shape)  # one u per output, drawn in Python
    np.testing.assert_array_equal(pool.draws(out.shape), u)
    np.testing.assert_array_equal(out, naive.stochastic_pool(x, kernel_size, stride, "train", u))


def test_special_windows():
    x = np.array([[[-1, -2, 0, 0, np.nan, 5, np.inf, 2, np.inf, np.nan, -np.inf, 3]]], np.float32)
    # all negative or zero: 0; a NaN: NaN; a +inf: +inf; NaN beats +inf; -inf counts as 0
    for mode in ("eval", "train"):
        out = stage(kernel_size=[1, 2], mode=mode)(x)
        np.testing.assert_array_equal(out, [[[0, 0, np.nan, np.inf, np.nan, 3]]])
        assert not np.signbit(out[0, 0, :2]).any()  # +0, not -0


def test_eval_does_not_overflow():
    big = np.full((1, 2, 2), 3e38, np.float32)  # a^2 overflows float32, not float64
    np.testing.assert_array_equal(stage(kernel_size=2)(big), big[:, :1, :1])


def test_train_draw_inverts_the_cumulative_sum():
    from poolcli.kernels.stochastic import stochastic_pool_train

    x = np.array([[[0, -1, 1, 2, 0, 3, 4]]], np.float32)  # one window, a = 0 0 1 2 0 3 4, sum 10
    cases = {0.0: 1, 0.1: 1, 0.1000001: 2, 0.3: 2, 0.30001: 3, 0.6: 3, 0.6001: 4, 0.99999: 4}
    for u, chosen in cases.items():
        out = stochastic_pool_train(x, np.array([[[u]]]), (1, 7), (1, 7))
        assert out[0, 0, 0] == chosen, u  # the first a > 0 whose running sum reaches u * 10


def test_train_frequencies_match_the_probabilities():
    # 20000 identical 2x3 windows, each drawn once with its own u: each count is
    # Binomial(n, p_i), p_i = a_i / sum a. Accept |count - n p_i| <= 5 sd: a correct kernel
    # fails that for a given i with probability 2 * Phi(-5) < 6e-7 (under 3e-6 for all four),
    # and the seed is fixed, so the test is deterministic. Wrong rules are far off: picking
    # uniformly among the positives moves the smallest count by about 40 sd, the maximum
    # (p = 0.45 -> 1) by about 160 sd.
    window = np.array([[0.5, -2.0, 1.0], [0.0, 2.5, 1.5]], np.float32)  # a = 0.5 0 1 0 2.5 1.5
    x = np.tile(window, (4, 50, 100))  # (4, 100, 300): 4 * 50 * 100 = 20000 windows
    out = stage(kernel_size=[2, 3], mode="train", seed=2013)(x)
    n = out.size
    assert set(np.unique(out)) == {0.5, 1.0, 2.5, 1.5}  # never a zero or a negative
    for value in (0.5, 1.0, 2.5, 1.5):
        p = value / 5.5
        count = int(np.sum(out == value))
        assert abs(count - n * p) <= 5 * math.sqrt(n * p * (1 - p)), (value, count, n * p)


# --- seeds ----------------------------------------------------------------------------------------


def test_same_seed_same_output_different_seeds_differ(rng):
    x = np.abs(sample(rng, (3, 30, 30)))
    outputs = {seed: stage(kernel_size=3, mode="train", seed=seed)(x) for seed in (0, 1)}
    np.testing.assert_array_equal(outputs[0], stage(kernel_size=3, mode="train", seed=0)(x))
    np.testing.assert_array_equal(outputs[0], stage(kernel_size=3, mode="train")(x))  # seed 0 by default
    assert not np.array_equal(outputs[0], outputs[1])
    # eval mode has no randomness
    np.testing.assert_array_equal(stage(kernel_size=3, seed=1)(x), stage(kernel_size=3, seed=2)(x))


# --- shapes, costs, errors -----------------------------------------------------------------------------


def test_trace_and_shape_errors():
    pipe = Pipeline.from_config({"stages": [{"type": "stochastic_pool", "name": "s", "kernel_size": 3, "stride": 2}]})
    (record,) = pipe.trace((2, 9, 10))
    assert record.out_shape == (2, 4, 4) and record.macs == 2 * 4 * 4 * 9
    assert record.receptive_field == ReceptiveField((3, 3), (2, 2))
    with pytest.raises(ShapeError, match=r"stage 's' \(stochastic_pool\): a 3x3 window .* does not fit a 2x5 map"):
        pipe.trace((1, 2, 5))
    with pytest.raises(ShapeError, match="stage 's'"):
        pipe(np.zeros((1, 2, 5), np.float32))


@pytest.mark.parametrize("params, message", [
    ({}, r"stages\[0\] \(stochastic_pool\)\.kernel_size: is required"),
    ({"kernel_size": 0}, r"\.kernel_size: must be >= 1, got 0"),
    ({"kernel_size": 2, "stride": [1, 0]}, r"\.stride: must be >= 1, got 0"),
    ({"kernel_size": 2, "mode": "test"}, r"\.mode: must be one of 'eval' or 'train', got 'test'"),
    ({"kernel_size": 2, "seed": -3}, r"\.seed: must be >= 0, got -3"),
    ({"kernel_size": 2, "seed": "1"}, r"\.seed: input should be a valid integer"),
    ({"kernel_size": 2, "ceil_mode": True}, r"unknown key 'ceil_mode'"),
    ({"kernel_size": 2, "padding": 1}, r"unknown key 'padding'"),
    ({"kernel_size": 2, "mod": "train"}, r"unknown key 'mod' \(did you mean 'mode'\?\)"),
])
def test_config_errors(params, message):
    with pytest.raises(ConfigError, match=message):
        Pipeline.from_config({"stages": [{"type": "stochastic_pool", **params}]})


def test_defaults():
    pool = stage(kernel_size=[2, 3])
    assert pool.mode == "eval" and pool.seed == 0 and pool.window.stride == (2, 3)
