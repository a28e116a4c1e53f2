"""R-MAC: the region grid and the descriptor against a PyTorch port of cnnimageretrieval-pytorch's
``rmac`` (cirtorch/layers/functional.py), and the kernel against its naive twin, plus shapes,
costs and errors."""

import math

import numpy as np
import pytest

import naive
from poolcli import ConfigError, Pipeline
from poolcli.stages import STAGES
from poolcli.stages.base import GLOBAL, ReceptiveField
from poolcli.stages.rmac import rmac_regions
from torch_oracle import F, needs_torch, torch


def rmac(**params):
    return STAGES["rmac"].model_validate({"type": "rmac", **params})


# --- cirtorch's rmac, ported to this test -------------------------------------------------------------
# Its float steps are float32 torch tensors (torch.Tensor) mixed with Python numbers; the port keeps
# every one of those operations, so that floor() and min() see the same float32 values.


def cirtorch_regions(H, W, L):
    """(top, left, side) of each region cirtorch's ``rmac`` pools after the whole map, in its order."""
    w = min(W, H)
    steps = torch.Tensor([2, 3, 4, 5, 6, 7])  # candidate region counts along the long side
    b = (max(H, W) - w) / (steps - 1)
    _, idx = torch.min(torch.abs(((w**2 - w * b) / w**2) - 0.4), 0)  # overlap closest to 0.4
    Wd = idx.item() + 1 if H < W else 0
    Hd = idx.item() + 1 if H > W else 0

    def centres(length, wl, wl2, n):
        b = 0 if n == 1 else (length - wl) / (n - 1)
        return (torch.floor(wl2 + torch.Tensor(range(n)) * b) - wl2).tolist()

    regions = []
    for l in range(1, L + 1):
        wl = math.floor(2 * w / (l + 1))
        wl2 = math.floor(wl / 2 - 1)
        for i in centres(H, wl, wl2, l + Hd):
            for j in centres(W, wl, wl2, l + Wd):
                if wl != 0:
                    regions.append((int(i), int(j), wl))
    return regions


def cirtorch_rmac(x, L=3, eps=1e-6):
    """(C, H, W) NumPy -> (C,): cirtorch's rmac, float32 torch throughout."""
    t = torch.from_numpy(x)[None]

    def normalised_mac(region):
        v = F.max_pool2d(region, (region.size(-2), region.size(-1)))
        return v / (torch.norm(v, p=2, dim=1, keepdim=True) + eps).expand_as(v)

    v = normalised_mac(t)
    for top, left, side in cirtorch_regions(x.shape[1], x.shape[2], L):
        v += normalised_mac(t[:, :, top : top + side, left : left + side])
    return v.reshape(-1).numpy()


# --- the grid ---------------------------------------------------------------------------------------

SIZES = [(h, w) for h in range(1, 25) for w in range(1, 25)] + [
    (2, 32), (2, 63), (3, 33), (4, 64),  # float64 arithmetic would start a region one pixel off
    (100, 144), (144, 100),  # two region counts equally close to overlap 0.4 in exact arithmetic
    (480, 640), (640, 480), (768, 1024), (1, 1000), (1000, 1), (37, 1024), (2047, 2048),
] + [tuple(int(v) for v in size) for size in np.random.default_rng(3).integers(1, 2000, (60, 2))]


def grid(height, width, levels):
    """The stage's regions after the whole map, as (top, left, side)."""
    whole, *regions = rmac_regions(height, width, levels)
    assert whole == (0, 0, height, width)
    assert all(h == w for _, _, h, w in regions)
    return [(top, left, side) for top, left, side, _ in regions]


@needs_torch
def test_grid_matches_cirtorch():
    # A level's regions do not depend on the number of levels: 4 levels cover levels 1..4.
    for height, width in SIZES:
        assert grid(height, width, 4) == cirtorch_regions(height, width, 4), (height, width)


def test_grid_matches_naive_and_fits_the_map():
    for height, width in SIZES:
        regions = grid(height, width, 4)
        assert regions == naive.rmac_grid(height, width, 4), (height, width)
        for top, left, side in regions:
            assert 0 <= top and top + side <= height and 0 <= left and left + side <= width, (height, width)


def test_grid_levels_are_prefixes():
    assert rmac_regions(30, 40, 2) == rmac_regions(30, 40, 4)[: len(rmac_regions(30, 40, 2))]


@pytest.mark.parametrize("height, width, counts", [
    (4, 4, [1, 4, 9]),  # square: l x l regions at level l
    (30, 40, [2, 6, 12]),  # W > H: one extra region along W (Wd = 1)
    (40, 30, [2, 6, 12]),  # H > W: along H
    (10, 40, [6, 14, 24]),  # a long map: Wd = 5
    (1, 1, [1, 0, 0]),  # levels 2, 3 have regions of side floor(2/3) = 0: none
])
def test_grid_region_counts(height, width, counts):
    per_level = [len(rmac_regions(height, width, l)) - len(rmac_regions(height, width, l - 1)) for l in (1, 2, 3)]
    assert per_level == counts


def test_grid_square_4x4_regions():
    # level 1: the map; level 2: side 2 at 0 and 2; level 3: side 2 at 0, 1, 2
    assert grid(4, 4, 3) == [(0, 0, 4)] + [(t, l, 2) for t in (0, 2) for l in (0, 2)] + [
        (t, l, 2) for t in (0, 1, 2) for l in (0, 1, 2)
    ]


# --- the descriptor ---------------------------------------------------------------------------------

EDGE_SHAPES = [(1, 1, 1), (3, 1, 1), (2, 3, 3), (4, 1, 7), (4, 7, 1), (3, 2, 3), (3, 4, 4), (5, 9, 6), (5, 6, 9),
               (2, 16, 16), (3, 30, 40), (3, 40, 30), (1, 5, 64)]


@needs_torch
@pytest.mark.parametrize("levels", [1, 2, 3, 4])
@pytest.mark.parametrize("shape", EDGE_SHAPES)
def test_matches_cirtorch(shape, levels, rng):
    x = rng.standard_normal(shape).astype(np.float32)
    np.testing.assert_allclose(rmac(levels=levels)(x), cirtorch_rmac(x, levels), rtol=1e-5, atol=2e-6)


@needs_torch
def test_matches_cirtorch_sweep():
    rng = np.random.default_rng(7)
    for _ in range(30):
        shape = (int(rng.integers(1, 9)), int(rng.integers(1, 48)), int(rng.integers(1, 48)))
        levels, eps = int(rng.integers(1, 5)), float(rng.choice([1e-6, 1e-3, 0.5]))
        x = (rng.standard_normal(shape) + rng.uniform(-1, 1)).astype(np.float32)
        np.testing.assert_allclose(rmac(levels=levels, eps=eps)(x), cirtorch_rmac(x, levels, eps), rtol=1e-5,
                                   atol=2e-6, err_msg=f"{shape} levels={levels} eps={eps}")


@pytest.mark.parametrize("levels", [1, 3, 4])
@pytest.mark.parametrize("shape", EDGE_SHAPES)
def test_matches_naive(shape, levels, rng):
    x = rng.standard_normal(shape).astype(np.float32)
    np.testing.assert_allclose(rmac(levels=levels)(x), naive.rmac(x, levels), rtol=1e-6, atol=1e-6)


def test_nan_propagates_to_every_channel_of_its_regions(rng):
    x = rng.standard_normal((3, 8, 8)).astype(np.float32)
    x[1, 0, 0] = np.nan  # in the whole map's max, so in a normalised vector of every channel
    out = rmac()(x)
    assert np.isnan(out).all()
    np.testing.assert_array_equal(out, naive.rmac(x))


def test_a_1x1_map_is_its_sign_twice():
    # Regions: the whole map and level 1's 1x1 region; the other levels have none.
    x = np.array([2.0, -3.0, 0.0], np.float32)[:, None, None]
    norm = math.sqrt(13) + 1e-6
    np.testing.assert_allclose(rmac(levels=3)(x), [4 / norm, -6 / norm, 0.0], rtol=1e-6)


def test_zero_map_gives_zeros_thanks_to_eps():
    np.testing.assert_array_equal(rmac()(np.zeros((4, 5, 6), np.float32)), np.zeros(4, np.float32))


def test_one_channel_counts_regions():
    # Each normalised 1-channel max is max / (|max| + eps), about 1: the sum counts the regions.
    x = np.arange(1, 1 + 40 * 30, dtype=np.float32).reshape(1, 30, 40)
    np.testing.assert_allclose(rmac(levels=3)(x), [len(rmac_regions(30, 40, 3))], rtol=1e-5)


# --- shapes, costs, errors ----------------------------------------------------------------------------


def test_shape_costs_and_trace():
    stage = rmac(levels=2)
    assert stage.output_shape((5, 30, 40)) == (5,)
    assert stage.receptive_field(ReceptiveField(), (5, 30, 40)) == GLOBAL
    regions = rmac_regions(30, 40, 2)
    area = sum(h * w for _, _, h, w in regions)
    assert stage.macs((5, 30, 40)) == 5 * area + 3 * 5 * len(regions)
    pipe = Pipeline.from_config({"stages": [{"type": "max_pool", "kernel_size": 2}, {"type": "rmac"}]})
    assert pipe.kind == "descriptors" and pipe.trace((3, 60, 80))[-1].out_shape == (3,)


def test_pipeline_output_is_l2_normalised(rng):
    x = rng.standard_normal((6, 12, 9)).astype(np.float32)
    out = Pipeline.from_config({"stages": [{"type": "rmac"}]})(x)
    np.testing.assert_allclose(np.linalg.norm(out), 1.0, rtol=1e-6)
    np.testing.assert_allclose(out, naive.rmac(x) / np.linalg.norm(naive.rmac(x)), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("raw, message", [
    ({"type": "rmac", "levels": 0}, r"stages\[0\] \(rmac\)\.levels: must be >= 1, got 0"),
    ({"type": "rmac", "levels": 1.5}, r"stages\[0\] \(rmac\)\.levels: input should be a valid integer"),
    ({"type": "rmac", "eps": 0}, r"stages\[0\] \(rmac\)\.eps: must be > 0"),
    ({"type": "rmac", "eps": float("nan")}, r"\.eps: input should be a finite number"),
    ({"type": "rmac", "level": 2}, r"unknown key 'level' \(did you mean 'levels'\?\)"),
])
def test_config_errors(raw, message):
    with pytest.raises(ConfigError, match=message):
        Pipeline.from_config({"stages": [raw]})
