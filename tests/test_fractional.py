"""fractional_max_pool: the kernel against its naive twin on the edges, against PyTorch's
fractional_max_pool2d given the same samples on a seeded sweep, the seeded draws, and the
config and shape errors users see."""

import numpy as np
import pytest

import naive
from maps import sample
from poolcli import ConfigError, Pipeline, ShapeError
from poolcli.stages import STAGES
from poolcli.stages.base import ReceptiveField
from torch_oracle import F, needs_torch, torch

WORKED = np.array([[1, 3, 2, 4], [5, 6, 1, 2], [0, 1, 3, 1], [2, 4, 5, 2]], np.float32)[None]
BELOW_ONE = float(np.nextafter(np.float32(1), np.float32(0)))  # the largest float32 sample


def stage(**params):
    return STAGES["fractional_max_pool"].model_validate({"type": "fractional_max_pool", **params})


def torch_samples(samples):
    """Our (C, 2) rows of (u_h, u_w) as torch's _random_samples: (1, C, 2) rows of (u_w, u_h)."""
    return torch.from_numpy(np.ascontiguousarray(samples[:, ::-1]))[None]


# --- the worked example ------------------------------------------------------------------------------


def test_worked_example():
    pipe = Pipeline.from_config(
        {"stages": [{"type": "fractional_max_pool", "kernel_size": 1, "output_size": 3, "samples": [0.2, 0.5]}]}
    )
    # alpha = (4 - 1) / 2 = 1.5: rows 0, int(1.2 * 1.5) = 1, 3; columns 0, int(1.5 * 1.5) - int(0.75) = 2, 3
    np.testing.assert_array_equal(pipe(WORKED), [[[1, 2, 4], [5, 1, 2], [2, 5, 2]]])
    # 2x2 windows to 2x2 on a 4x4 map start at 0 and 2 whatever the samples: max pooling
    np.testing.assert_array_equal(stage(kernel_size=2, output_size=2, seed=7)(WORKED), [[[6, 4], [4, 5]]])


# --- the window starts -------------------------------------------------------------------------------


def test_starts_are_computed_in_float32_as_torch_does():
    # Found by search: here float64 arithmetic would start window 5 at 7; torch (float32) at 8.
    u = 0.5384615063667297  # a float32 value
    assert naive.fractional_starts(u, 15, 10, 2) == [0, 2, 3, 5, 6, 8, 9, 10, 12, 13]
    alpha = (15 - 2) / 9
    assert int((5 + u) * alpha) - int(u * alpha) == 7
    x = np.arange(15 * 15, dtype=np.float32).reshape(1, 15, 15)  # increasing: a window's max is its last tap
    out = stage(kernel_size=2, output_size=10, samples=[u, u])(x)
    np.testing.assert_array_equal(out[0, 5], x[0, 9, [1, 3, 4, 6, 7, 9, 10, 11, 13, 14]])  # rows 8 and 9


# --- kernel against the naive reference --------------------------------------------------------------

EDGES = [  # (shape, kernel_size, output_size)
    ((1, 1, 1), 1, 1),
    ((2, 1, 1), 1, 1),
    ((2, 5, 7), [5, 7], 1),  # kernel = map
    ((1, 5, 7), [5, 7], [1, 1]),
    ((2, 7, 9), 1, [7, 9]),  # every pixel
    ((2, 7, 9), 2, [6, 8]),  # stride-1 max pooling
    ((3, 9, 11), 2, [5, 6]),
    ((2, 13, 6), [3, 2], [4, 3]),
    ((1, 17, 5), [1, 3], [11, 2]),
    ((2, 31, 23), 3, [20, 15]),
]
SAMPLES = [[0.0, 0.0], [0.5, 0.5], [BELOW_ONE, BELOW_ONE], [0.13, 0.87]]


@pytest.mark.parametrize("specials", [False, True])
@pytest.mark.parametrize("samples", SAMPLES)
@pytest.mark.parametrize("shape, kernel_size, output_size", EDGES)
def test_matches_naive(shape, kernel_size, output_size, samples, specials, rng):
    x = sample(rng, shape, specials)
    out = stage(kernel_size=kernel_size, output_size=output_size, samples=samples)(x)
    np.testing.assert_array_equal(out, naive.fractional_max_pool(x, kernel_size, output_size, [samples] * shape[0]))


def test_nan_propagates_and_infinities_are_values():
    x = np.zeros((1, 4, 4), np.float32)
    x[0, 0, 0], x[0, 3, 3], x[0, 0, 3] = np.nan, np.inf, -np.inf
    out = stage(kernel_size=2, output_size=2, samples=[0.3, 0.3])(x)
    np.testing.assert_array_equal(out, [[[np.nan, 0], [0, np.inf]]])
    minus = np.full((1, 3, 3), -np.inf, np.float32)
    np.testing.assert_array_equal(stage(kernel_size=2, output_size=2)(minus), np.full((1, 2, 2), -np.inf))


def test_seeded_samples_match_naive_channel_by_channel(rng):
    x = sample(rng, (5, 19, 14), specials=True)
    pool = stage(kernel_size=[2, 3], output_ratio=[0.6, 0.5], seed=11)
    samples = np.random.default_rng(11).random((5, 2), dtype=np.float32)  # one (u_h, u_w) per channel
    np.testing.assert_array_equal(pool.channel_samples(5), samples)
    np.testing.assert_array_equal(pool(x), naive.fractional_max_pool(x, [2, 3], [11, 7], samples))


# --- seeds ------------------------------------------------------------------------------------------------


def test_same_seed_same_output_different_seeds_differ(rng):
    x = sample(rng, (4, 40, 40))
    outputs = {seed: stage(kernel_size=2, output_ratio=0.7, seed=seed)(x) for seed in (0, 1, 2)}
    np.testing.assert_array_equal(outputs[0], stage(kernel_size=2, output_ratio=0.7, seed=0)(x))
    np.testing.assert_array_equal(outputs[0], stage(kernel_size=2, output_ratio=0.7)(x))  # seed 0 by default
    assert not np.array_equal(outputs[0], outputs[1]) and not np.array_equal(outputs[1], outputs[2])


def test_seed_draws_per_channel_samples_share():
    x = np.tile(np.arange(30 * 30, dtype=np.float32).reshape(1, 30, 30) % 17, (3, 1, 1))  # equal channels
    seeded = stage(kernel_size=2, output_size=20, seed=3)(x)
    assert not np.array_equal(seeded[0], seeded[1])  # each channel has its own windows
    shared = stage(kernel_size=2, output_size=20, samples=[0.25, 0.75])(x)
    np.testing.assert_array_equal(shared[0], shared[1])
    np.testing.assert_array_equal(shared[0], shared[2])


# --- against PyTorch -----------------------------------------------------------------------------------------


@needs_torch
def test_matches_torch_sweep():
    rng = np.random.default_rng(21)
    for case in range(300):
        shape = (int(rng.integers(1, 4)), int(rng.integers(1, 40)), int(rng.integers(1, 40)))
        kernel = [int(k) for k in rng.integers(1, 5, 2)]
        if rng.integers(2):
            size = dict(output_size=[int(rng.integers(1, 30)) for _ in range(2)])
            torch_size = dict(output_size=size["output_size"])
        else:
            ratio = [float(r) for r in rng.uniform(0.05, 0.95, 2)]
            size, torch_size = dict(output_ratio=ratio), dict(output_ratio=ratio)
        if rng.integers(2):
            pool = stage(kernel_size=kernel, **size, seed=int(rng.integers(0, 1000)))
        else:
            pool = stage(kernel_size=kernel, **size, samples=[float(u) for u in rng.random(2, dtype=np.float32)])
        x = sample(rng, shape, specials=case % 3 == 0)
        samples = pool.channel_samples(shape[0])
        message = f"{shape} {pool}"
        try:
            expected = F.fractional_max_pool2d(
                torch.from_numpy(x)[None], kernel, **torch_size, _random_samples=torch_samples(samples)
            )[0].numpy()
        except RuntimeError:
            expected = None
        try:
            actual = pool(x)
        except ShapeError:
            actual = None
        if expected is not None and expected.size == 0:
            expected = None  # a ratio giving 0 rows: torch returns an empty map, poolcli a shape error
        assert (actual is None) == (expected is None), message
        if actual is not None:
            np.testing.assert_array_equal(actual, expected, err_msg=message)


# --- shapes, costs, errors ----------------------------------------------------------------------------------


def test_trace():
    pipe = Pipeline.from_config({"stages": [
        {"type": "fractional_max_pool", "kernel_size": 2, "output_ratio": 0.7},
        {"type": "fractional_max_pool", "kernel_size": [3, 1], "output_size": [5, 9], "samples": [0.1, 0.9]},
    ]})
    first, second = pipe.trace((3, 20, 30))
    assert first.out_shape == (3, 14, 21) and second.out_shape == (3, 5, 9)
    assert first.macs == 3 * 14 * 21 * 4 and second.macs == 3 * 5 * 9 * 3
    # steps: ceil((20 - 2) / 13) = 2, ceil((30 - 2) / 20) = 2; then ceil(11 / 4) = 3, ceil(20 / 8) = 3
    assert first.receptive_field == ReceptiveField((2, 2), (2, 2))
    assert second.receptive_field == ReceptiveField((2 + 2 * 2, 2), (6, 6))


@pytest.mark.parametrize("shape, params, message", [
    ((1, 4, 4), dict(kernel_size=2, output_size=4), r"4x4 windows of 2x2 need a map of at least 5x5, got 4x4"),
    ((1, 9, 3), dict(kernel_size=[1, 3], output_size=[9, 2]), r"9x2 windows of 1x3 need a map of at least 9x4, got 9x3"),
    ((1, 3, 9), dict(kernel_size=1, output_ratio=0.3), r"output_ratio \[0.3, 0.3\] of a 3x9 map gives 0x2: no output"),
])
def test_shape_errors(shape, params, message):
    pipe = Pipeline.from_config({"stages": [{"type": "fractional_max_pool", "name": "f", **params}]})
    with pytest.raises(ShapeError, match=r"stage 'f' \(fractional_max_pool\): " + message):
        pipe.trace(shape)
    with pytest.raises(ShapeError, match=message):
        pipe(np.zeros(shape, np.float32))


@pytest.mark.parametrize("params, message", [
    ({"kernel_size": 2}, r"stages\[0\] \(fractional_max_pool\): give exactly one of output_size or output_ratio, got neither"),
    ({"kernel_size": 2, "output_size": 3, "output_ratio": 0.5}, r"got output_size and output_ratio"),
    ({"output_size": 3}, r"\.kernel_size: is required"),
    ({"kernel_size": 0, "output_size": 3}, r"\.kernel_size: must be >= 1, got 0"),
    ({"kernel_size": 2, "output_size": [3, 0]}, r"\.output_size: must be >= 1, got 0"),
    ({"kernel_size": 2, "output_ratio": 1}, r"\.output_ratio: must be a number in \(0, 1\) or a pair"),
    ({"kernel_size": 2, "output_ratio": [0.5, 0]}, r"\.output_ratio: must be a number in \(0, 1\)"),
    ({"kernel_size": 2, "output_ratio": [0.5]}, r"\.output_ratio: must be .* got \[0.5\]"),
    ({"kernel_size": 2, "output_ratio": "half"}, r"\.output_ratio: must be"),
    ({"kernel_size": 2, "output_size": 3, "samples": [0.5, 1.0]}, r"\.samples: must be a pair \[u_h, u_w\] of numbers in \[0, 1\)"),
    ({"kernel_size": 2, "output_size": 3, "samples": [0.5, 0.99999999]}, r"\.samples: .*\(as float32\)"),
    ({"kernel_size": 2, "output_size": 3, "samples": [-0.1, 0.5]}, r"\.samples: must be"),
    ({"kernel_size": 2, "output_size": 3, "samples": [0.5]}, r"\.samples: must be"),
    ({"kernel_size": 2, "output_size": 3, "samples": [0.5, 0.5], "seed": 1}, r"give seed or samples, not both"),
    ({"kernel_size": 2, "output_size": 3, "seed": -1}, r"\.seed: must be >= 0, got -1"),
    ({"kernel_size": 2, "output_size": 3, "seed": 1.5}, r"\.seed: input should be a valid integer"),
    ({"kernel_size": 2, "output_size": 3, "stride": 2}, r"unknown key 'stride'"),
    ({"kernel_size": 2, "output_size": 3, "sample": [0.5, 0.5]}, r"unknown key 'sample' \(did you mean 'samples'\?\)"),
])
def test_config_errors(params, message):
    with pytest.raises(ConfigError, match=message):
        Pipeline.from_config({"stages": [{"type": "fractional_max_pool", **params}]})


def test_defaults():
    pool = stage(kernel_size=[2, 3], output_ratio=0.5)
    assert pool.seed == 0 and pool.samples is None and pool.output_size is None
    assert pool.output_ratio == (0.5, 0.5)
    assert stage(kernel_size=2, output_size=3, samples=[0, 0.5]).samples == (0.0, 0.5)
