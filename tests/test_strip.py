"""strip_pool: the worked map by hand, the kernel against its naive twin on the edges (1x1 maps,
single rows and columns, NaN and inf), against the torch formula on a seeded sweep, and the
config errors users see."""

import numpy as np
import pytest

import naive
from maps import sample
from poolcli import ConfigError, Pipeline, ShapeError
from poolcli.stages import STAGES
from poolcli.stages.base import GLOBAL
from torch_oracle import needs_torch, torch

WORKED = np.array([[1, 3, 2, 4], [5, 6, 1, 2], [0, 1, 3, 1], [2, 4, 5, 2]], np.float32)[None]
VARIANTS = [(reduce, fuse) for reduce in ("avg", "max") for fuse in ("add", "gate")]


def stage(**params):
    return STAGES["strip_pool"].model_validate({"type": "strip_pool", **params})


def test_worked_map_by_hand():
    row_mean = np.array([2.5, 3.5, 1.25, 3.25], np.float32)[:, None]
    column_mean = np.array([2, 3.5, 2.75, 2.25], np.float32)[None, :]
    np.testing.assert_array_equal(stage()(WORKED)[0], row_mean + column_mean)
    row_max = np.array([4, 6, 3, 5], np.float32)[:, None]
    column_max = np.array([5, 6, 5, 4], np.float32)[None, :]
    np.testing.assert_array_equal(stage(reduce="max")(WORKED)[0], row_max + column_max)
    gated = stage(reduce="max", fuse="gate")(WORKED)[0]
    np.testing.assert_allclose(gated, WORKED[0] / (1 + np.exp(-(row_max + column_max))), rtol=1e-6)


def test_max_add_is_center_cross(rng):
    x = sample(rng, (2, 7, 5), specials=True)
    cross = STAGES["center_pool"].model_validate({"type": "center_pool", "mode": "cross"})
    np.testing.assert_array_equal(stage(reduce="max")(x), cross(x))


@pytest.mark.parametrize("specials", [False, True])
@pytest.mark.parametrize("reduce, fuse", VARIANTS)
def test_matches_naive(reduce, fuse, specials, rng):
    for shape in [(1, 1, 1), (2, 1, 7), (2, 7, 1), (3, 5, 9), (1, 16, 3)]:
        x = sample(rng, shape, specials=specials)
        out, expected = stage(reduce=reduce, fuse=fuse)(x), naive.strip_pool(x, reduce, fuse)
        np.testing.assert_array_equal(np.isnan(out), np.isnan(expected), err_msg=f"{shape}")
        if reduce == "max" and fuse == "add":
            np.testing.assert_array_equal(out, expected)
        else:
            np.testing.assert_allclose(out, expected, rtol=2e-6, atol=1e-6, err_msg=f"{shape}")


def test_gate_is_stable_for_large_strips():
    x = np.array([[[200, -300], [-500, 400]]], np.float32)
    # every max strip sum is 400 or more: the gate is 1, never inf / inf
    np.testing.assert_array_equal(stage(reduce="max", fuse="gate")(x), x)
    # every one is -400 or less: the gate is 0
    np.testing.assert_array_equal(stage(reduce="max", fuse="gate")(-np.abs(x) - 200), np.zeros_like(x))


@needs_torch
def test_matches_torch_formula_sweep():
    rng = np.random.default_rng(21)
    for case in range(60):
        shape = (int(rng.integers(1, 4)), int(rng.integers(1, 40)), int(rng.integers(1, 40)))
        reduce, fuse = VARIANTS[case % 4]
        x = sample(rng, shape, specials=case % 5 == 0)
        t = torch.from_numpy(x)
        if reduce == "avg":
            r, q = t.mean(-1, keepdim=True), t.mean(-2, keepdim=True)
        else:
            r, q = t.amax(-1, keepdim=True), t.amax(-2, keepdim=True)
        expected = (r + q if fuse == "add" else t * torch.sigmoid(r + q)).numpy()
        out = stage(reduce=reduce, fuse=fuse)(x)
        message = f"{shape} {reduce} {fuse}"
        np.testing.assert_array_equal(np.isnan(out), np.isnan(expected), err_msg=message)
        np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5, err_msg=message)


def test_trace():
    pipe = Pipeline.from_config({"stages": [{"type": "strip_pool"}, {"type": "strip_pool", "fuse": "gate"}]})
    records = pipe.trace((3, 7, 5))
    assert [r.out_shape for r in records] == [(3, 7, 5)] * 2
    assert [r.macs for r in records] == [3 * 105, 5 * 105]
    assert records[0].receptive_field == GLOBAL
    with pytest.raises(ShapeError, match=r"needs a \(C, H, W\) feature map"):
        stage().output_shape((4,))


def test_input_not_modified(rng):
    x = sample(rng, (2, 5, 6))
    before = x.copy()
    out = stage(fuse="gate")(x)
    assert out.dtype == np.float32 and out.shape == x.shape
    np.testing.assert_array_equal(x, before)


@pytest.mark.parametrize("raw, message", [
    ({"type": "strip_pool", "reduce": "mean"}, r"stages\[0\] \(strip_pool\)\.reduce: must be one of 'avg' or 'max'"),
    ({"type": "strip_pool", "fuse": "mul"}, r"\.fuse: must be one of 'add' or 'gate', got 'mul'"),
    ({"type": "strip_pool", "kernel_size": 3}, r"unknown key 'kernel_size'"),
])
def test_config_errors(raw, message):
    with pytest.raises(ConfigError, match=message):
        Pipeline.from_config({"stages": [raw]})
