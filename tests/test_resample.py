"""upsample: the kernels against their naive twins (torch's index rules written out) on the
edges, against torch ``interpolate`` on a broad seeded sweep of sizes, scale factors (below 1,
non-integer, per axis) and sizes, and the config and shape errors users see."""

import numpy as np
import pytest

import naive
from maps import sample
from poolcli import ConfigError, Pipeline, ShapeError
from poolcli.stages import STAGES
from poolcli.stages.base import ReceptiveField
from torch_oracle import F, needs_torch, torch

WORKED = np.array([[1, 3, 2, 4], [5, 6, 1, 2], [0, 1, 3, 1], [2, 4, 5, 2]], np.float32)[None]


def stage(**params):
    return STAGES["upsample"].model_validate({"type": "upsample", **params})


def assert_interpolated(actual, expected, x, mode, message=""):
    """nearest: exact; bilinear: the same NaN and infinities, finite values within a few float32
    ulps of the largest input (the four products may be summed in another order)."""
    assert actual.shape == expected.shape, message
    if mode == "nearest":
        np.testing.assert_array_equal(actual, expected, err_msg=message)
        return
    finite = np.isfinite(expected)
    np.testing.assert_array_equal(np.isnan(actual), np.isnan(expected), err_msg=message)
    np.testing.assert_array_equal(actual[~finite], expected[~finite], err_msg=message)
    scale = np.abs(x[np.isfinite(x)]).max(initial=1.0)
    np.testing.assert_allclose(actual[finite], expected[finite], rtol=0, atol=1e-6 * scale, err_msg=message)


# --- by hand ------------------------------------------------------------------------------------------


def test_worked_map():
    nearest = stage(scale_factor=2)(WORKED)[0]
    np.testing.assert_array_equal(nearest, np.repeat(np.repeat(WORKED[0], 2, 0), 2, 1))
    bilinear = stage(scale_factor=2, mode="bilinear")(WORKED)[0]
    # the first output row reads row 0 only (its source -0.25 is clamped to 0); the second
    # 0.75 of row 0 and 0.25 of row 1; the corners copy the input's
    np.testing.assert_array_equal(bilinear[0], [1, 1.5, 2.5, 2.75, 2.25, 2.5, 3.5, 4])
    np.testing.assert_array_equal(bilinear[1, 0], 0.75 * 1 + 0.25 * 5)
    assert bilinear[-1, -1] == 2 and bilinear[0, -1] == 4
    np.testing.assert_array_equal(stage(size=[2, 2], mode="bilinear")(WORKED)[0], [[3.75, 2.25], [1.75, 2.75]])
    np.testing.assert_array_equal(stage(scale_factor=0.5)(WORKED)[0], [[1, 2], [0, 3]])


def test_torch_index_rules():
    ramp = np.arange(5, dtype=np.float32)[None, None]
    # out == in: a copy, whatever the scale factor (floor(5 * 1.1) = 5)
    np.testing.assert_array_equal(stage(scale_factor=[1, 1.1])(ramp)[0, 0], ramp[0, 0])
    np.testing.assert_array_equal(stage(scale_factor=[1, 1.1], mode="bilinear")(ramp)[0, 0], ramp[0, 0])
    # out == 2 * in: index o >> 1 (floor(8 / 2.1) would be 3, not 4)
    assert stage(scale_factor=[1, 2.1])(ramp)[0, 0, 8] == 4
    # else floor(o * scale) in float32, scale = 1 / scale_factor: 3 -> 7 samples 0 0 0 1 1 2 2
    np.testing.assert_array_equal(stage(scale_factor=[1, 7 / 3])(ramp[..., :3])[0, 0], [0, 0, 0, 1, 1, 2, 2])
    # the output size is floor(L * scale_factor) in double precision: 100 * 0.29 = 28.999...
    assert stage(scale_factor=0.29).output_shape((1, 100, 10)) == (1, 28, 2)


# --- against the naive references, on the edges ----------------------------------------------------

EDGES = [  # (shape, params)
    ((1, 1, 1), dict(scale_factor=3)),
    ((2, 1, 1), dict(size=[4, 5])),
    ((1, 1, 6), dict(size=[3, 1])),
    ((2, 5, 7), dict(size=[5, 7])),  # identity
    ((2, 5, 7), dict(scale_factor=2)),  # the doubling shortcut
    ((2, 5, 7), dict(scale_factor=[1.2, 1.1])),  # out == in with a scale factor
    ((1, 9, 8), dict(scale_factor=0.5)),
    ((2, 9, 11), dict(scale_factor=[0.34, 0.77])),  # downscaling, non-integer
    ((1, 7, 6), dict(scale_factor=[2.5, 1.7])),
    ((3, 4, 6), dict(size=[13, 1])),
    ((1, 10, 10), dict(size=[1, 1])),
]


@pytest.mark.parametrize("specials", [False, True])
@pytest.mark.parametrize("mode", ["nearest", "bilinear"])
@pytest.mark.parametrize("shape, params", EDGES)
def test_matches_naive(shape, params, mode, specials, rng):
    x = sample(rng, shape, specials=specials)
    out = stage(mode=mode, **params)(x)
    assert out.shape == stage(mode=mode, **params).output_shape(shape)
    assert_interpolated(out, naive.upsample(x, mode=mode, **params), x, mode)


def test_an_infinite_neighbour_with_weight_zero_gives_nan():
    # as in torch: bilinear multiplies every tap by its weight, 0 * inf included
    x = np.array([[[0, np.inf, 2, 3]]], np.float32)
    out = stage(size=[1, 4], mode="bilinear")(x)[0, 0]  # a copy along w, taps (o, o) with weights (1, 0)
    np.testing.assert_array_equal(np.isnan(out), [False, True, False, False])


# --- against PyTorch, on a broad seeded sweep --------------------------------------------------------


def _resize_case(rng):
    """A random map and resize: a size, one scale factor (integer, simple or arbitrary, below
    and above 1) or a pair of them."""
    shape = (int(rng.integers(1, 4)), int(rng.integers(1, 24)), int(rng.integers(1, 24)))
    kind = rng.integers(4)
    if kind == 0:
        params = dict(size=[int(v) for v in rng.integers(1, 48, 2)])
    elif kind == 1:
        params = dict(scale_factor=float(rng.choice([0.5, 1.5, 2, 3, 4, 2.1, 1.2, 0.3, 1 / 3, 0.75, 2.5])))
    elif kind == 2:
        params = dict(scale_factor=float(np.round(rng.uniform(0.1, 4), int(rng.integers(1, 4)))))
    else:
        params = dict(scale_factor=[float(np.round(rng.uniform(0.1, 4), 3)) for _ in range(2)])
    return shape, params


def _torch_interpolate(x, mode, params):
    args = {k: tuple(v) if isinstance(v, list) else v for k, v in params.items()}
    return F.interpolate(torch.from_numpy(x)[None], mode=mode, **args)[0].numpy()


@needs_torch
@pytest.mark.parametrize("mode", ["nearest", "bilinear"])
def test_matches_torch_sweep(mode):
    rng = np.random.default_rng(31 if mode == "nearest" else 32)
    fitted = 0
    for case in range(250):
        shape, params = _resize_case(rng)
        x = sample(rng, shape, specials=case % 4 == 0)
        message = f"{shape} {params} {mode}"
        try:
            expected = _torch_interpolate(x, mode, params)
        except RuntimeError:  # an empty output: ours refuses it too
            with pytest.raises(ShapeError, match="give a larger scale_factor or a size"):
                stage(mode=mode, **params).output_shape(shape)
            continue
        fitted += 1
        assert_interpolated(stage(mode=mode, **params)(x), expected, x, mode, message)
    assert fitted > 200


@needs_torch
def test_matches_torch_on_large_maps():
    # far from the origin a float32 source index is coarse: torch's rounding must be matched
    rng = np.random.default_rng(33)
    for shape, params in [((2, 300, 411), dict(scale_factor=[2.37, 0.61])), ((1, 999, 7), dict(size=[1234, 16]))]:
        x = sample(rng, shape)
        for mode in ("nearest", "bilinear"):
            assert_interpolated(stage(mode=mode, **params)(x), _torch_interpolate(x, mode, params), x, mode)


# --- shapes, costs, receptive field --------------------------------------------------------------------


def test_trace():
    pipe = Pipeline.from_config({"stages": [
        {"type": "max_pool", "kernel_size": 4},
        {"type": "upsample", "scale_factor": 2, "mode": "bilinear"},
        {"type": "upsample", "size": [3, 30]},
    ]})
    records = pipe.trace((1, 16, 24))
    assert [r.out_shape for r in records] == [(1, 4, 6), (1, 8, 12), (1, 3, 30)]
    assert [r.macs for r in records[1:]] == [6 * 96, 0]
    assert records[1].receptive_field == ReceptiveField((8, 8), (2, 2))  # two taps 4 apart; outputs 2 apart
    assert records[2].receptive_field == ReceptiveField((8, 8), (5, 1))  # 8 -> 3 rows: 2.67 rows apart


def test_shape_errors():
    pipe = Pipeline.from_config({"stages": [{"type": "upsample", "name": "up", "scale_factor": [0.25, 2]}]})
    expected = r"stage 'up' \(upsample\): scale_factor \[0.25, 2\] turns a 3x5 map into 0x10"
    with pytest.raises(ShapeError, match=expected):
        pipe.trace((1, 3, 5))
    assert pipe.trace((1, 4, 5))[-1].out_shape == (1, 1, 10)
    with pytest.raises(ShapeError, match=r"needs a \(C, H, W\) feature map"):
        stage(size=2).output_shape((3,))


def test_input_not_modified_and_any_layout(rng):
    x = sample(rng, (2, 5, 7))
    before = x.copy()
    for mode in ("nearest", "bilinear"):
        up = stage(scale_factor=[1.5, 0.7], mode=mode)
        out = up(x)
        assert out.dtype == np.float32 and out.flags.c_contiguous
        np.testing.assert_array_equal(x, before)
        np.testing.assert_array_equal(up(np.asfortranarray(x.astype(np.float64))), out)


# --- config errors ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("raw, message", [
    ({"type": "upsample"}, r"stages\[0\] \(upsample\): give exactly one of scale_factor or size, got neither"),
    ({"type": "upsample", "size": 4, "scale_factor": 2}, r"give exactly one of scale_factor or size, got both"),
    ({"type": "upsample", "scale_factor": 0}, r"\(upsample\)\.scale_factor: must be a number > 0 or a pair"),
    ({"type": "upsample", "scale_factor": -2}, r"scale_factor: must be a number > 0 .* got -2"),
    ({"type": "upsample", "scale_factor": [2, 3, 4]}, r"scale_factor: must be .* got \[2, 3, 4\]"),
    ({"type": "upsample", "scale_factor": "2"}, r"scale_factor: must be .* got '2'"),
    ({"type": "upsample", "scale_factor": True}, r"scale_factor: must be .* got True"),
    ({"type": "upsample", "scale_factor": float("inf")}, r"scale_factor: must be .* got inf"),
    ({"type": "upsample", "size": [0, 3]}, r"\.size: must be >= 1, got 0"),
    ({"type": "upsample", "size": 2.5}, r"\.size: must be an integer or a pair"),
    ({"type": "upsample", "size": 2, "mode": "bicubic"}, r"\.mode: must be one of 'nearest' or 'bilinear'"),
    ({"type": "upsample", "size": 2, "align_corners": True}, r"unknown key 'align_corners'"),
])
def test_config_errors(raw, message):
    with pytest.raises(ConfigError, match=message):
        Pipeline.from_config({"stages": [raw]})


def test_scale_factor_forms():
    assert stage(scale_factor=2).scale_factor == (2.0, 2.0)
    assert stage(scale_factor=[1.5, 3]).scale_factor == (1.5, 3.0)
    assert stage(size=7).size == (7, 7) and stage(size=7).mode == "nearest"
