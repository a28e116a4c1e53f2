"""center_pool and corner_pool: the SPEC's worked map checked by hand, the kernels against their
naive twins on the edges (1x1 maps, single rows and columns, kernel = map, NaN and inf), against
PyTorch formulas (amax for center cross, cummax on flipped tensors for corner pooling), and the
config and shape errors users see."""

import numpy as np
import pytest

import naive
import maps
from poolcli import ConfigError, Pipeline, ShapeError
from poolcli.stages import STAGES
from poolcli.stages.base import GLOBAL, ReceptiveField
from torch_oracle import needs_torch, torch

WORKED = np.array([[1, 3, 2, 4], [5, 6, 1, 2], [0, 1, 3, 1], [2, 4, 5, 2]], np.float32)[None]
CORNERS = ["top_left", "bottom_right", "top_right", "bottom_left"]
EDGE_SHAPES = [(1, 1, 1), (2, 1, 7), (2, 7, 1), (3, 5, 9), (1, 13, 4), (2, 6, 6)]


def sample(rng, shape, specials=False, ties=False):
    return maps.sample(rng, shape, specials, ties, every=15)



def stage(type, **params):
    return STAGES[type].model_validate({"type": type, **params})


# --- the SPEC's worked map, by hand -----------------------------------------------------------------


def test_center_cross_on_the_worked_map():
    # row maxima 4, 6, 3, 5; column maxima 5, 6, 5, 4
    expected = [[9, 10, 9, 8], [11, 12, 11, 10], [8, 9, 8, 7], [10, 11, 10, 9]]
    np.testing.assert_array_equal(stage("center_pool", mode="cross")(WORKED)[0], expected)


def test_center_window_on_the_worked_map():
    np.testing.assert_array_equal(stage("center_pool", kernel_size=2)(WORKED)[0], [[1, 2], [0, 3]])  # offset 0
    np.testing.assert_array_equal(stage("center_pool", kernel_size=3, stride=1)(WORKED)[0], [[6, 1], [1, 3]])
    np.testing.assert_array_equal(stage("center_pool", kernel_size=4)(WORKED)[0], [[6]])  # offset 1: x[1, 1]
    np.testing.assert_array_equal(stage("center_pool", kernel_size=[1, 3], stride=[2, 1])(WORKED)[0], [[3, 2], [1, 3]])


def test_corner_pools_on_the_worked_map():
    # Top (max of the rows below) + Left (max of the columns to the right), position included
    top_left = [[9, 10, 9, 8], [11, 12, 7, 4], [5, 7, 8, 3], [7, 9, 10, 4]]
    # Bottom (max of the rows above) + Right (max of the columns to the left)
    bottom_right = [[2, 6, 5, 8], [10, 12, 8, 10], [5, 7, 6, 7], [7, 10, 10, 9]]
    # Top(x + Left(x)) + Left(x + Top(x))
    cascade_top_left = [[20, 21, 18, 16], [23, 24, 16, 8], [15, 17, 18, 7], [17, 19, 20, 8]]
    np.testing.assert_array_equal(stage("corner_pool", corner="top_left")(WORKED)[0], top_left)
    np.testing.assert_array_equal(stage("corner_pool", corner="bottom_right")(WORKED)[0], bottom_right)
    np.testing.assert_array_equal(stage("corner_pool", corner="top_left", cascade=True)(WORKED)[0], cascade_top_left)
    for corner in CORNERS:
        for cascade in (False, True):
            np.testing.assert_array_equal(
                stage("corner_pool", corner=corner, cascade=cascade)(WORKED), naive.corner_pool(WORKED, corner, cascade)
            )


def test_corner_pools_mirror_each_other():
    x = sample(np.random.default_rng(7), (2, 5, 8))
    top_left = stage("corner_pool", corner="top_left", cascade=True)
    for corner, flip in [("bottom_right", (1, 2)), ("top_right", (2,)), ("bottom_left", (1,))]:
        mirrored = np.flip(top_left(np.flip(x, flip).copy()), flip)
        np.testing.assert_array_equal(stage("corner_pool", corner=corner, cascade=True)(x), mirrored)


# --- kernels against the naive references, on the edges -------------------------------------------


@pytest.mark.parametrize("specials", [False, True])
@pytest.mark.parametrize("cascade", [False, True])
@pytest.mark.parametrize("corner", CORNERS)
def test_corner_pool_matches_naive(corner, cascade, specials, rng):
    for shape in EDGE_SHAPES:
        x = sample(rng, shape, specials=specials, ties=not specials)
        np.testing.assert_array_equal(
            stage("corner_pool", corner=corner, cascade=cascade)(x),
            naive.corner_pool(x, corner, cascade),
            err_msg=f"{shape}",
        )


def test_corner_pool_propagates_nan_along_its_runs():
    x = np.zeros((1, 4, 5), np.float32)
    x[0, 2, 3] = np.nan
    out = stage("corner_pool", corner="top_left")(x)[0]
    # Top reaches the NaN from rows 0-2 of column 3, Left from columns 0-3 of row 2
    nan = np.zeros((4, 5), bool)
    nan[:3, 3] = True
    nan[2, :4] = True
    np.testing.assert_array_equal(np.isnan(out), nan)


@pytest.mark.parametrize("specials", [False, True])
def test_center_cross_matches_naive(specials, rng):
    for shape in EDGE_SHAPES:
        x = sample(rng, shape, specials=specials)
        np.testing.assert_array_equal(stage("center_pool", mode="cross")(x), naive.center_pool(x, "cross"))


CENTER_WINDOWS = [  # (shape, params)
    ((1, 1, 1), dict(kernel_size=1)),
    ((2, 5, 7), dict(kernel_size=[5, 7])),  # kernel = map
    ((2, 6, 8), dict(kernel_size=[6, 8])),  # even kernel = map: offset (k - 1) // 2
    ((3, 7, 9), dict(kernel_size=3, stride=2)),  # a partial last window is dropped
    ((2, 9, 5), dict(kernel_size=[2, 3], stride=[4, 1])),  # stride beyond the kernel
    ((1, 11, 13), dict(kernel_size=4)),
    ((2, 1, 9), dict(kernel_size=[1, 2], stride=[1, 3])),
]


@pytest.mark.parametrize("shape, params", CENTER_WINDOWS)
def test_center_window_matches_naive(shape, params, rng):
    x = sample(rng, shape, specials=True)
    pool = stage("center_pool", **params)
    out = pool(x)
    assert out.shape == pool.output_shape(shape)
    np.testing.assert_array_equal(out, naive.center_pool(x, "window", **params))


# --- against PyTorch formulas ------------------------------------------------------------------------


def torch_corner(x, corner, cascade):
    """CornerNet's pools as torch cummax on flipped tensors (cummax propagates NaN)."""
    t = torch.from_numpy(x)
    vertical, horizontal = corner.split("_")

    def V(y):
        return y.flip(-2).cummax(-2)[0].flip(-2) if vertical == "top" else y.cummax(-2)[0]

    def Hz(y):
        return y.flip(-1).cummax(-1)[0].flip(-1) if horizontal == "left" else y.cummax(-1)[0]

    out = V(t + Hz(t)) + Hz(t + V(t)) if cascade else V(t) + Hz(t)
    return out.numpy()


@needs_torch
def test_corner_pool_matches_torch_sweep():
    rng = np.random.default_rng(11)
    for case in range(80):
        shape = (int(rng.integers(1, 4)), int(rng.integers(1, 30)), int(rng.integers(1, 30)))
        x = sample(rng, shape, specials=case % 3 == 0, ties=case % 3 == 1)
        corner, cascade = CORNERS[case % 4], bool(case % 8 >= 4)
        np.testing.assert_array_equal(
            stage("corner_pool", corner=corner, cascade=cascade)(x),
            torch_corner(x, corner, cascade),
            err_msg=f"{shape} {corner} {cascade}",
        )


@needs_torch
def test_center_cross_matches_torch_sweep():
    rng = np.random.default_rng(12)
    for case in range(40):
        shape = (int(rng.integers(1, 4)), int(rng.integers(1, 30)), int(rng.integers(1, 30)))
        x = sample(rng, shape, specials=case % 2 == 0)
        t = torch.from_numpy(x)
        expected = (t.amax(-1, keepdim=True) + t.amax(-2, keepdim=True)).numpy()
        np.testing.assert_array_equal(stage("center_pool", mode="cross")(x), expected, err_msg=f"{shape}")


# --- shapes, costs, receptive fields -------------------------------------------------------------


def test_trace_shapes_costs_and_receptive_fields():
    pipe = Pipeline.from_config({"stages": [
        {"type": "center_pool", "kernel_size": 3, "stride": 2},
        {"type": "center_pool", "mode": "cross"},
        {"type": "corner_pool", "from": "center_pool0"},
        {"type": "corner_pool", "corner": "bottom_left", "cascade": True, "from": "center_pool0"},
    ]})
    records = pipe.trace((2, 9, 12))
    assert [r.out_shape for r in records] == [(2, 4, 5)] * 4
    assert [r.macs for r in records] == [0, 3 * 40, 3 * 40, 7 * 40]
    assert records[0].receptive_field == ReceptiveField((1, 1), (2, 2))
    assert all(r.receptive_field == GLOBAL for r in records[1:])


def test_shape_errors():
    with pytest.raises(ShapeError, match=r"stage 'c' \(center_pool\): a 3x3 window .* does not fit a 2x5 map"):
        Pipeline.from_config({"stages": [{"type": "center_pool", "name": "c", "kernel_size": 3}]}).trace((1, 2, 5))
    for params in ({"mode": "cross"}, {"kernel_size": 1}):
        with pytest.raises(ShapeError, match=r"needs a \(C, H, W\) feature map"):
            stage("center_pool", **params).output_shape((4,))
    with pytest.raises(ShapeError, match=r"needs a \(C, H, W\) feature map"):
        stage("corner_pool").output_shape((4,))


def test_inputs_are_not_modified_and_any_layout_works(rng):
    x = sample(rng, (3, 6, 5), specials=True)
    before = x.copy()
    for pool in (stage("center_pool", kernel_size=2), stage("center_pool", mode="cross"),
                 stage("corner_pool", cascade=True)):
        out = pool(x)
        assert out.dtype == np.float32 and out.flags.c_contiguous
        np.testing.assert_array_equal(x, before)
        np.testing.assert_array_equal(pool(np.asfortranarray(x.astype(np.float64))), out)


# --- config errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize("raw, message", [
    ({"type": "center_pool"}, r"stages\[0\] \(center_pool\): mode window needs kernel_size"),
    (
        {"type": "center_pool", "mode": "cross", "kernel_size": 3},
        r"\(center_pool\): kernel_size and stride belong to mode window",
    ),
    ({"type": "center_pool", "mode": "cross", "stride": 2}, r"kernel_size and stride belong to mode window"),
    ({"type": "center_pool", "mode": "ring"}, r"center_pool\)\.mode: must be one of 'window' or 'cross', got 'ring'"),
    ({"type": "center_pool", "kernel_size": 0}, r"\(center_pool\)\.kernel_size: must be >= 1, got 0"),
    ({"type": "center_pool", "kernel_size": 2, "stride": [1, 0]}, r"stride: must be >= 1, got 0"),
    ({"type": "center_pool", "kernel_size": 2, "padding": 1}, r"unknown key 'padding'"),
    ({"type": "corner_pool", "name": "c", "corner": "top-left"}, r"\(corner_pool 'c'\)\.corner: must be one of"),
    ({"type": "corner_pool", "cascade": "yes"}, r"cascade: input should be a valid boolean"),
    ({"type": "corner_pool", "cascde": True}, r"unknown key 'cascde' \(did you mean 'cascade'\?\)"),
])
def test_config_errors(raw, message):
    with pytest.raises(ConfigError, match=message):
        Pipeline.from_config({"stages": [raw]})


def test_defaults():
    assert stage("center_pool", kernel_size=3).window.stride == (3, 3)
    assert stage("corner_pool").corner == "top_left" and stage("corner_pool").cascade is False
