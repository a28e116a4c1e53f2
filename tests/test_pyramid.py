"""pyramid_fuse: the worked map by hand, the stage against its naive twin (adaptive pooling of
each map, then an element-wise fusion) on maps of different sizes, against torch adaptive pooling
and max/sum/mean on a seeded sweep, through a pipeline, and the errors users see."""

import numpy as np
import pytest

import naive
from maps import sample
from poolcli import ConfigError, Pipeline, ShapeError
from poolcli.stages import STAGES
from poolcli.stages.base import ReceptiveField
from torch_oracle import F, needs_torch, torch

WORKED = np.array([[1, 3, 2, 4], [5, 6, 1, 2], [0, 1, 3, 1], [2, 4, 5, 2]], np.float32)[None]
VARIANTS = [(pool, fuse) for pool in ("max", "avg") for fuse in ("max", "sum", "mean")]


def stage(**params):
    return STAGES["pyramid_fuse"].model_validate({"type": "pyramid_fuse", "from": ["a", "b"], **params})


def assert_fused(actual, expected, xs, message=""):
    """Sums to float32 rounding, with slack for sums that cancel; NaN where expected."""
    np.testing.assert_array_equal(np.isnan(actual), np.isnan(expected), err_msg=message)
    finite = np.concatenate([np.abs(x[np.isfinite(x)]) for x in xs])
    scale = float(finite.max()) if finite.size else 1.0
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-5 * scale * len(xs), err_msg=message)


def test_worked_map_by_hand():
    max_2x2 = np.array([[6, 4], [4, 5]], np.float32)
    np.testing.assert_array_equal(stage(output_size=2, fuse="sum")(WORKED, WORKED)[0], 2 * max_2x2)
    np.testing.assert_array_equal(stage(output_size=2, fuse="mean")(WORKED, WORKED)[0], max_2x2)
    # the top-left quarter [[1, 3], [5, 6]] pooled to 2x2 is itself; fused by max with the map's 2x2 maxima
    np.testing.assert_array_equal(stage(output_size=2)(WORKED, WORKED[:, :2, :2])[0], [[6, 4], [5, 6]])
    # averages: the map's 1x1 mean is 2.625; the quarter's 3.75
    np.testing.assert_array_equal(
        stage(output_size=1, pool="avg", fuse="mean")(WORKED, WORKED[:, :2, :2])[0], [[(2.625 + 3.75) / 2]]
    )


@pytest.mark.parametrize("specials", [False, True])
@pytest.mark.parametrize("pool, fuse", VARIANTS)
def test_matches_naive(pool, fuse, specials, rng):
    cases = [  # (shapes of the inputs, output_size)
        ([(2, 1, 1)], 1),
        ([(2, 1, 1), (2, 3, 5)], [2, 3]),  # a 1x1 map pooled to 2x3 repeats its pixel
        ([(3, 8, 8), (3, 4, 4), (3, 2, 2)], 4),  # an FPN-like pyramid
        ([(1, 7, 5), (1, 13, 9)], [3, 4]),  # overlapping bins
        ([(2, 5, 7), (2, 5, 7)], [5, 7]),  # identity pooling
    ]
    for shapes, output_size in cases:
        xs = [sample(rng, shape, specials=specials) for shape in shapes]
        out = STAGES["pyramid_fuse"].model_validate(
            {"type": "pyramid_fuse", "from": ["a"] * len(xs), "output_size": output_size, "pool": pool, "fuse": fuse}
        )(*xs)
        expected = naive.pyramid_fuse(xs, output_size, pool, fuse)
        if pool == fuse == "max":
            np.testing.assert_array_equal(out, expected)
        else:
            assert_fused(out, expected, xs, f"{shapes} {output_size}")


@needs_torch
def test_matches_torch_sweep():
    rng = np.random.default_rng(41)
    for case in range(60):
        pool, fuse = VARIANTS[case % 6]
        channels = int(rng.integers(1, 4))
        count = int(rng.integers(1, 4))
        shapes = [(channels, int(rng.integers(1, 25)), int(rng.integers(1, 25))) for _ in range(count)]
        output_size = [int(v) for v in rng.integers(1, 9, 2)]
        xs = [sample(rng, shape, specials=case % 5 == 0) for shape in shapes]
        adaptive = F.adaptive_max_pool2d if pool == "max" else F.adaptive_avg_pool2d
        pooled = torch.stack([adaptive(torch.from_numpy(x)[None], output_size)[0] for x in xs])
        expected = {"max": lambda p: p.max(0)[0], "sum": lambda p: p.sum(0), "mean": lambda p: p.mean(0)}[fuse](pooled)
        out = STAGES["pyramid_fuse"].model_validate(
            {"type": "pyramid_fuse", "from": ["a"] * len(xs), "output_size": output_size, "pool": pool, "fuse": fuse}
        )(*xs)
        if pool == fuse == "max":
            np.testing.assert_array_equal(out, expected.numpy(), err_msg=f"{shapes} {output_size}")
        else:
            assert_fused(out, expected.numpy(), xs, f"{shapes} {output_size} {pool} {fuse}")


def test_in_a_pipeline():
    pipe = Pipeline.from_config({"stages": [
        {"type": "max_pool", "kernel_size": 2, "name": "p2"},
        {"type": "max_pool", "kernel_size": 2, "name": "p4"},
        {"type": "pyramid_fuse", "from": ["input", "p2", "p4"], "output_size": [3, 2], "pool": "avg", "fuse": "mean"},
    ]})
    records = pipe.trace((2, 12, 8))
    assert [r.out_shape for r in records] == [(2, 6, 4), (2, 3, 2), (2, 3, 2)]
    assert records[2].in_shape == ((2, 12, 8), (2, 6, 4), (2, 3, 2))
    # adaptive taps: 12x8 -> 3x2 all 96; 6x4 -> 24; 3x2 -> 6; then two adds and a division per output
    assert records[2].macs == 2 * (96 + 24 + 6) + 3 * 12
    assert records[2].receptive_field == ReceptiveField((4, 4), (4, 4))  # the first input's bins
    x = np.random.default_rng(5).standard_normal((2, 12, 8)).astype(np.float32)
    p2 = naive.max_pool(x, 2)
    expected = naive.pyramid_fuse([x, p2, naive.max_pool(p2, 2)], [3, 2], "avg", "mean")
    np.testing.assert_allclose(pipe(x), expected, rtol=1e-6, atol=1e-6)


def test_shape_errors():
    pipe = Pipeline.from_config({"stages": [
        {"type": "conv", "filters": "sobel", "name": "edges"},
        {"type": "pyramid_fuse", "name": "fuse", "from": ["input", "edges"], "output_size": 2},
    ]})
    with pytest.raises(ShapeError, match=r"stage 'fuse' \(pyramid_fuse\): pyramid_fuse needs maps with the same "
                                         r"number of channels, got \(3, 8, 8\), \(2, 6, 6\)"):
        pipe.trace((3, 8, 8))
    with pytest.raises(ShapeError, match=r"pyramid_fuse needs a \(C, H, W\) feature map, got a vector of length 3"):
        stage(output_size=2).output_shape((3, 4, 4), (3,))


def test_inputs_not_modified(rng):
    xs = [sample(rng, (2, 5, 6)), sample(rng, (2, 3, 9))]
    before = [x.copy() for x in xs]
    out = stage(output_size=[2, 3], pool="avg", fuse="sum")(*xs)
    assert out.dtype == np.float32 and out.shape == (2, 2, 3)
    for x, b in zip(xs, before):
        np.testing.assert_array_equal(x, b)


ONE = {"type": "pyramid_fuse", "from": ["input"]}


@pytest.mark.parametrize("raw, message", [
    ({"type": "pyramid_fuse", "output_size": 2}, r"stages\[0\] \(pyramid_fuse 'pyramid_fuse0'\)\.from: .*a list"),
    ({**ONE, "from": "input", "output_size": 2}, r"\.from: pyramid_fuse takes a list of earlier stages"),
    ({**ONE, "from": ["input", "p9"], "output_size": 2}, r"\.from: no earlier stage is named 'p9'"),
    (ONE, r"\(pyramid_fuse\)\.output_size: is required"),
    ({**ONE, "output_size": 0}, r"\.output_size: must be >= 1, got 0"),
    ({**ONE, "output_size": [2, None]}, r"\.output_size: must be an integer or a pair"),
    ({**ONE, "output_size": 2, "pool": "mean"}, r"\.pool: must be one of 'max' or 'avg'"),
    ({**ONE, "output_size": 2, "fuse": "concat"}, r"\.fuse: must be one of 'max', 'sum' or 'mean'"),
])
def test_config_errors(raw, message):
    with pytest.raises(ConfigError, match=message):
        Pipeline.from_config({"stages": [raw]})
