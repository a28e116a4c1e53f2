"""Windowed and adaptive pooling (max_pool, avg_pool, lp_pool, adaptive_avg_pool,
adaptive_max_pool, spp): each kernel against its naive twin on the edges, against PyTorch on a
seeded random sweep, and the config and shape errors users see."""

import numpy as np
import pytest

import naive
from maps import sample
from poolcli import ConfigError, Pipeline, ShapeError
from poolcli.stages import STAGES
from poolcli.stages.base import GLOBAL, ReceptiveField
from torch_oracle import F, needs_torch, run, torch

WORKED = np.array([[1, 3, 2, 4], [5, 6, 1, 2], [0, 1, 3, 1], [2, 4, 5, 2]], np.float32)[None]
POOL_TYPES = ["max_pool", "avg_pool", "lp_pool", "adaptive_avg_pool", "adaptive_max_pool", "spp"]


def stage(type, **params):
    return STAGES[type].model_validate({"type": type, **params})


def assert_sums_close(actual, expected, x):
    """Float32 sums: 1e-5 relative, plus an absolute slack for sums that cancel to near zero."""
    finite = np.abs(x[np.isfinite(x)])
    scale = float(finite.max()) if finite.size else 1.0
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-5 * scale)


# --- the spec's worked example ---------------------------------------------------------------------


def test_worked_example_max_pool_2x2_stride_2():
    out = Pipeline.from_config({"stages": [{"type": "max_pool", "kernel_size": 2, "stride": 2}]})(WORKED)
    np.testing.assert_array_equal(out, [[[6, 4], [4, 5]]])


def test_worked_example_other_stages():
    np.testing.assert_allclose(stage("avg_pool", kernel_size=2)(WORKED), [[[3.75, 2.25], [1.75, 2.75]]])
    np.testing.assert_array_equal(stage("adaptive_max_pool", output_size=1)(WORKED), [[[6]]])
    np.testing.assert_allclose(stage("lp_pool", p=1, kernel_size=4)(WORKED), [[[42]]])
    np.testing.assert_array_equal(stage("spp", levels=[2, 1])(WORKED), [6, 4, 4, 5, 6])


# --- kernels against the naive references, on the edges -------------------------------------------

MAX_EDGES = [  # (shape, params)
    ((1, 1, 1), dict(kernel_size=1)),
    ((2, 1, 1), dict(kernel_size=1, stride=3)),
    ((2, 5, 7), dict(kernel_size=[5, 7])),  # kernel = map
    ((1, 5, 7), dict(kernel_size=[5, 7], padding=[2, 3])),
    ((2, 7, 9), dict(kernel_size=3, stride=2, padding=1)),
    ((2, 7, 9), dict(kernel_size=3, stride=2, padding=1, ceil_mode=True)),
    ((1, 6, 6), dict(kernel_size=2, ceil_mode=True)),  # ceil adds nothing: 6 is a multiple
    ((1, 6, 7), dict(kernel_size=[2, 3], stride=[3, 2], ceil_mode=True)),
    ((2, 9, 11), dict(kernel_size=3, dilation=2, padding=2)),
    ((2, 9, 11), dict(kernel_size=[2, 3], dilation=[3, 2], stride=[2, 3], padding=[1, 2], ceil_mode=True)),
    ((1, 1, 3), dict(kernel_size=2, stride=1, padding=1, dilation=2)),  # windows with no tap inside: -inf
    ((1, 3, 3), dict(kernel_size=3, stride=1, padding=2, dilation=2)),  # padding torch refuses (see test below)
    ((3, 13, 5), dict(kernel_size=[4, 1], stride=[1, 2])),
    # column stride 2 over 2 or 3 columns has its own loops
    ((2, 8, 10), dict(kernel_size=2)),
    ((2, 9, 11), dict(kernel_size=[3, 2], stride=2, ceil_mode=True)),
    ((1, 5, 9), dict(kernel_size=[1, 3], stride=[1, 2], padding=[0, 1])),
]


@pytest.mark.parametrize("values", ["normal", "ties", "specials"])
@pytest.mark.parametrize("shape, params", MAX_EDGES)
def test_max_pool_matches_naive(shape, params, values, rng):
    x = sample(rng, shape, specials=values == "specials", ties=values == "ties")
    pool = stage("max_pool", **params)
    expected, expected_indices = naive.max_pool(x, **params, return_indices=True)
    out, indices = pool.pool_with_indices(x)
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_array_equal(indices, expected_indices)
    np.testing.assert_array_equal(pool(x), expected)


def test_max_pool_all_minus_infinity_and_nan_windows():
    x = np.full((1, 3, 4), -np.inf, np.float32)
    x[0, 2, 3] = np.nan
    x[0, 0, 3] = np.nan
    out, indices = stage("max_pool", kernel_size=2, ceil_mode=True).pool_with_indices(x)
    np.testing.assert_array_equal(out, [[[-np.inf, np.nan], [-np.inf, np.nan]]])
    np.testing.assert_array_equal(indices, [[[0, 3], [8, 11]]])  # first tap when nothing wins


AVG_EDGES = [
    ((1, 1, 1), dict(kernel_size=1)),
    ((2, 5, 7), dict(kernel_size=[5, 7])),
    ((1, 5, 7), dict(kernel_size=[5, 7], padding=[2, 3])),
    ((1, 5, 7), dict(kernel_size=[5, 7], padding=[2, 3], count_include_pad=False)),
    ((2, 7, 9), dict(kernel_size=3, stride=2, padding=1, ceil_mode=True)),
    ((2, 7, 9), dict(kernel_size=3, stride=2, padding=1, ceil_mode=True, count_include_pad=False)),
    ((2, 8, 9), dict(kernel_size=[4, 3], stride=[3, 2], padding=[2, 1], ceil_mode=True)),
    ((1, 6, 7), dict(kernel_size=[2, 3], stride=[3, 2], ceil_mode=True)),
    ((2, 7, 9), dict(kernel_size=3, padding=1, ceil_mode=True, divisor_override=2)),
    ((3, 13, 5), dict(kernel_size=[4, 1], stride=[1, 2])),
    # column stride 2 over 2 or 3 columns has its own loops
    ((2, 8, 10), dict(kernel_size=2)),
    ((2, 9, 11), dict(kernel_size=[3, 2], stride=2, ceil_mode=True)),
    ((1, 5, 9), dict(kernel_size=[1, 3], stride=[1, 2], padding=[0, 1])),
]


@pytest.mark.parametrize("specials", [False, True])
@pytest.mark.parametrize("shape, params", AVG_EDGES)
def test_avg_pool_matches_naive(shape, params, specials, rng):
    x = sample(rng, shape, specials=specials)
    assert_sums_close(stage("avg_pool", **params)(x), naive.avg_pool(x, **params), x)


LP_EDGES = [
    ((1, 1, 1), dict(kernel_size=1)),
    ((2, 5, 7), dict(kernel_size=[5, 7], p=3)),
    ((2, 7, 9), dict(kernel_size=3, stride=2, ceil_mode=True)),
    ((2, 7, 9), dict(kernel_size=[2, 4], stride=[1, 3], ceil_mode=True, p=1.5)),
    ((1, 6, 7), dict(kernel_size=2, p=1)),
    ((1, 4, 4), dict(kernel_size=2, p=0.5)),
    ((1, 4, 4), dict(kernel_size=2, p=60)),  # |x|^60 overflows float32, not float64
]


@pytest.mark.parametrize("specials", [False, True])
@pytest.mark.parametrize("shape, params", LP_EDGES)
def test_lp_pool_matches_naive(shape, params, specials, rng):
    x = sample(rng, shape, specials=specials) * 3
    assert_sums_close(stage("lp_pool", **params)(x), naive.lp_pool(x, **{"p": 2.0, **params}), np.abs(x))



@pytest.mark.parametrize("p", [0.01, 0.5, 1.5, 2.5, 3.0, 7.5, 7.95, 8.5])
def test_lp_pool_powers_by_exp_and_log_match_pow(p):
    """Other p than 1 and 2 take exp(p ln |v|) below p = 7.94, except in a row with a subnormal,
    inf or NaN, and their roots exp(ln(sum) / p) where that stays in range: rows of each kind,
    zeros and float32's extremes among them."""
    tiny, big = np.finfo(np.float32).tiny, np.finfo(np.float32).max
    rows = [
        [0.0, -0.0, 1.0, -2.5, tiny, -tiny, 1e-30, 3e-20],  # zeros and the smallest normal
        [1e20, -3e30, big, 7.0, 0.25, -0.5, 1e-3, 2.0],  # float32's largest
        [1e-40, 2.0, 3.0, -4.0, 5.0, 6.0, 7.0, 8.0],  # a subnormal: pow for this row
        [np.inf, 1.0, 2.0, np.nan, 1.0, 1.0, -np.inf, 1.0],  # inf and NaN: pow
    ]
    x = np.array([rows], np.float32)
    ours = stage("lp_pool", p=p, kernel_size=[1, 2])(x)
    np.testing.assert_allclose(ours, naive.lp_pool(x, p=p, kernel_size=[1, 2]), rtol=2e-7, atol=0)

ADAPTIVE_EDGES = [
    ((1, 1, 1), 1),
    ((1, 1, 1), [3, 2]),  # larger than the map: bins repeat pixels
    ((2, 5, 7), [5, 7]),  # identity
    ((2, 5, 7), [2, 3]),
    ((2, 7, 5), [3, None]),
    ((1, 10, 9), [4, 4]),  # overlapping bins
    ((3, 6, 13), [None, 5]),
]


@pytest.mark.parametrize("specials", [False, True])
@pytest.mark.parametrize("shape, output_size", ADAPTIVE_EDGES)
def test_adaptive_pools_match_naive(shape, output_size, specials, rng):
    x = sample(rng, shape, specials=specials)
    np.testing.assert_array_equal(
        stage("adaptive_max_pool", output_size=output_size)(x), naive.adaptive_pool(x, output_size, "max")
    )
    assert_sums_close(
        stage("adaptive_avg_pool", output_size=output_size)(x), naive.adaptive_pool(x, output_size, "avg"), x
    )


@pytest.mark.parametrize("pool", ["max", "avg"])
@pytest.mark.parametrize("shape, levels", [
    ((1, 1, 1), [1, 2]), ((3, 7, 5), [1, 2, 4]), ((2, 9, 12), [3, 1, 6]),
    # coarse bin rows made of the finest level's (overlapping ones: max only), or only some of them
    ((2, 16, 24), [1, 2, 4, 8]), ((3, 12, 10), [4, 2, 1]), ((2, 7, 9), [2, 4]), ((2, 6, 6), [4, 3]),
])
def test_spp_matches_naive(shape, levels, pool, rng):
    x = sample(rng, shape, specials=pool == "max")
    out = stage("spp", levels=levels, pool=pool)(x)
    assert out.shape == (shape[0] * sum(n * n for n in levels),)
    assert_sums_close(out, naive.spp(x, levels, pool), x)


def test_spp_layout_is_levels_then_channel_major():
    x = np.arange(2 * 4 * 4, dtype=np.float32).reshape(2, 4, 4)
    out = stage("spp", levels=[1, 2])(x)
    # level 1: channel maxima; level 2: channel 0's 2x2 grid, then channel 1's
    np.testing.assert_array_equal(out, [15, 31, 5, 7, 13, 15, 21, 23, 29, 31])


# --- against PyTorch, on a seeded random sweep ------------------------------------------------------

CASES = 150


def _window_case(rng, dilation=True, padding=True):
    kernel = [int(k) for k in rng.integers(1, 6, 2)]
    params = dict(kernel_size=kernel, ceil_mode=bool(rng.integers(2)))
    if rng.integers(4):
        params["stride"] = [int(s) for s in rng.integers(1, 5, 2)]
    if dilation and rng.integers(2):
        params["dilation"] = [int(d) for d in rng.integers(1, 4, 2)]
    if padding and rng.integers(3):
        params["padding"] = [int(rng.integers(0, k // 2 + 1)) for k in kernel]  # torch's rule: <= k // 2
    shape = (int(rng.integers(1, 4)), int(rng.integers(1, 24)), int(rng.integers(1, 24)))
    return shape, params


def _torch_args(params):
    args = dict(params)
    args["stride"] = args.get("stride") or args["kernel_size"]
    return args


def _both_or_neither(ours, theirs):
    """Run both; they must agree on whether the window fits. The outputs, or None if it did not."""
    try:
        expected = theirs()
    except RuntimeError:
        expected = None
    try:
        actual = ours()
    except ShapeError:
        actual = None
    assert (actual is None) == (expected is None)
    return actual, expected


@needs_torch
def test_max_pool_matches_torch_sweep():
    rng = np.random.default_rng(1)
    for case in range(CASES):
        shape, params = _window_case(rng)
        x = sample(rng, shape, specials=case % 3 == 0, ties=case % 3 == 1)
        pool = stage("max_pool", **params)
        actual, expected = _both_or_neither(
            lambda: pool.pool_with_indices(x),
            lambda: F.max_pool2d(torch.from_numpy(x)[None], **_torch_args(params), return_indices=True),
        )
        if actual is not None:
            np.testing.assert_array_equal(actual[0], expected[0][0].numpy(), err_msg=f"{shape} {params}")
            np.testing.assert_array_equal(actual[1], expected[1][0].numpy(), err_msg=f"{shape} {params}")


@needs_torch
def test_avg_pool_matches_torch_sweep():
    rng = np.random.default_rng(2)
    for case in range(CASES):
        shape, params = _window_case(rng, dilation=False)
        params["count_include_pad"] = bool(rng.integers(2))
        if rng.integers(4) == 0:
            params["divisor_override"] = int(rng.integers(1, 10))
        x = sample(rng, shape, specials=case % 5 == 0)
        actual, expected = _both_or_neither(
            lambda: stage("avg_pool", **params)(x), lambda: run(F.avg_pool2d, x, **_torch_args(params))
        )
        if actual is not None:
            assert actual.shape == expected.shape, f"{shape} {params}"
            assert_sums_close(actual, expected, x)


@needs_torch
def test_lp_pool_matches_torch_on_full_windows_sweep():
    rng = np.random.default_rng(3)
    for _ in range(CASES):
        shape, params = _window_case(rng, dilation=False, padding=False)
        params["p"] = float(rng.choice([1.0, 2.0, 3.0, 1.5, 4.0]))
        x = np.abs(sample(rng, shape))  # torch's lp_pool2d is defined for non-negative input
        torch_args = _torch_args({k: v for k, v in params.items() if k != "p"})
        actual, expected = _both_or_neither(
            lambda: stage("lp_pool", **params)(x), lambda: run(F.lp_pool2d, x, params["p"], **torch_args)
        )
        if actual is not None:
            # In ceil mode torch scales a partial window's mean by the full window: compare the
            # full windows, which come first.
            full = stage("lp_pool", **{**params, "ceil_mode": False})
            try:
                _, rows, cols = full.output_shape(shape)
            except ShapeError:
                continue
            np.testing.assert_allclose(actual[:, :rows, :cols], expected[:, :rows, :cols], rtol=2e-5, atol=1e-6,
                                       err_msg=f"{shape} {params}")


@needs_torch
def test_adaptive_pools_match_torch_sweep():
    rng = np.random.default_rng(4)
    for case in range(CASES):
        shape = (int(rng.integers(1, 4)), int(rng.integers(1, 30)), int(rng.integers(1, 30)))
        output_size = [None if rng.integers(6) == 0 else int(rng.integers(1, 12)) for _ in range(2)]
        x = sample(rng, shape, specials=case % 3 == 0)
        t = torch.from_numpy(x)[None]
        message = f"{shape} {output_size}"
        np.testing.assert_array_equal(
            stage("adaptive_max_pool", output_size=output_size)(x),
            F.adaptive_max_pool2d(t, output_size)[0].numpy(),
            err_msg=message,
        )
        assert_sums_close(
            stage("adaptive_avg_pool", output_size=output_size)(x), F.adaptive_avg_pool2d(t, output_size)[0].numpy(), x
        )


@needs_torch
def test_spp_matches_torch_sweep():
    rng = np.random.default_rng(5)
    for case in range(CASES // 3):
        shape = (int(rng.integers(1, 5)), int(rng.integers(1, 40)), int(rng.integers(1, 40)))
        levels = [int(n) for n in rng.integers(1, 7, int(rng.integers(1, 4)))]
        pool = "max" if case % 2 else "avg"
        x = sample(rng, shape)
        fn = F.adaptive_max_pool2d if pool == "max" else F.adaptive_avg_pool2d
        expected = torch.cat([fn(torch.from_numpy(x)[None], n).reshape(-1) for n in levels]).numpy()
        assert_sums_close(stage("spp", levels=levels, pool=pool)(x), expected, x)


@needs_torch
def test_torch_refuses_padding_beyond_half_the_undilated_kernel():
    # poolcli's rule (SPEC section 3) bounds padding by half the *dilated* kernel; torch's own
    # check uses the undilated one, so this config runs here (checked against naive above) only.
    stage("max_pool", kernel_size=3, padding=2, dilation=2)
    with pytest.raises(RuntimeError, match="pad should be"):
        F.max_pool2d(torch.zeros(1, 1, 5, 5), 3, 1, 2, dilation=2)


# --- inputs are not modified, float32 out, the promised shape -----------------------------------------

CONTRACT = [
    ("max_pool", dict(kernel_size=3, stride=2, padding=1, dilation=2, ceil_mode=True)),
    ("avg_pool", dict(kernel_size=[3, 2], padding=1, ceil_mode=True, count_include_pad=False)),
    ("lp_pool", dict(kernel_size=2, p=3)),
    ("adaptive_avg_pool", dict(output_size=[3, None])),
    ("adaptive_max_pool", dict(output_size=4)),
    ("spp", dict(levels=[1, 3], pool="avg")),
]


def test_contract_covers_every_pool_stage():
    assert sorted(t for t, _ in CONTRACT) == sorted(POOL_TYPES)
    assert set(POOL_TYPES) <= set(STAGES)


@pytest.mark.parametrize("type, params", CONTRACT)
def test_stage_contract(type, params, rng):
    x = sample(rng, (3, 11, 8))
    before = x.copy()
    pool = stage(type, **params)
    out = pool(x)
    assert out.dtype == np.float32
    assert out.shape == pool.output_shape(x.shape)
    np.testing.assert_array_equal(x, before)
    assert out.flags.c_contiguous
    # non-contiguous or float64 input gives the same result
    np.testing.assert_array_equal(pool(np.asfortranarray(x.astype(np.float64))), out)


# --- costs and receptive fields (what inspect prints) -------------------------------------------------


def test_trace_costs_and_receptive_fields():
    pipe = Pipeline.from_config({"stages": [
        {"type": "max_pool", "kernel_size": 3, "stride": 2, "dilation": 2, "padding": 1},
        {"type": "avg_pool", "kernel_size": 2},
        {"type": "lp_pool", "kernel_size": [1, 3], "stride": 1},
        {"type": "adaptive_max_pool", "output_size": [4, None]},
        {"type": "spp", "levels": [1, 2]},
    ]})
    records = pipe.trace((2, 32, 40))
    assert [r.out_shape for r in records] == [(2, 15, 19), (2, 7, 9), (2, 7, 7), (2, 4, 7), (10,)]
    assert [r.macs for r in records[:2]] == [2 * 15 * 19 * 9, 2 * 7 * 9 * 4]
    assert records[2].macs == 2 * 7 * 7 * 3 + 2 * 7 * 9  # windows plus one power per input
    # adaptive 7 -> 4 bins [0,2) [1,4) [3,6) [5,7): 10 row taps; 7 -> 7 columns: 7 taps
    assert records[3].macs == 2 * 10 * 7
    assert records[4].macs == 2 * (4 * 7 + 4 * 8)  # level 1: all 4x7; level 2: 4 -> 2 + 2 rows, 7 -> 4 + 4 columns
    rfs = [r.receptive_field for r in records]
    assert rfs[0] == ReceptiveField((5, 5), (2, 2))
    assert rfs[1] == ReceptiveField((7, 7), (4, 4))
    assert rfs[2] == ReceptiveField((7, 15), (4, 4))
    assert rfs[3] == ReceptiveField((7 + 1 * 4, 15), (4, 4))  # 7 rows -> 4 bins: span 2, step 1
    assert rfs[4] == GLOBAL


def test_shape_error_names_the_stage():
    pipe = Pipeline.from_config({"stages": [{"type": "max_pool", "kernel_size": 3, "name": "p"}]})
    with pytest.raises(ShapeError, match=r"stage 'p' \(max_pool\): a 3x3 window .* does not fit a 2x2 map"):
        pipe.trace((1, 2, 2))
    with pytest.raises(ShapeError, match="stage 'p'"):
        pipe(np.zeros((1, 2, 2), np.float32))
    assert pipe.trace((1, 3, 3))[-1].out_shape == (1, 1, 1)


def test_pools_need_a_map():
    for type, params in CONTRACT:
        with pytest.raises(ShapeError, match="needs a \\(C, H, W\\) feature map"):
            stage(type, **params).output_shape((12,))


# --- config errors ------------------------------------------------------------------------------------


def build(*stages):
    return Pipeline.from_config({"stages": list(stages)})


@pytest.mark.parametrize("raw, message", [
    (
        {"type": "max_pool", "name": "pool1", "kernel_size": 0},
        r"stages\[0\] \(max_pool 'pool1'\)\.kernel_size: must be >= 1, got 0",
    ),
    ({"type": "max_pool"}, r"stages\[0\] \(max_pool\)\.kernel_size: is required"),
    ({"type": "max_pool", "kernel_size": [2, 2, 2]}, r"kernel_size: must be an integer or a pair"),
    ({"type": "max_pool", "kernel_size": 2, "stride": 0}, r"stride: must be >= 1, got 0"),
    ({"type": "max_pool", "kernel_size": 3, "padding": 2}, r"stages\[0\] \(max_pool\): padding must be at most half"),
    ({"type": "max_pool", "kernel_size": [3, 5], "padding": [1, 3]}, r"padding 3 for a kernel of 5 along w"),
    ({"type": "max_pool", "kernel_size": 2, "padding": -1}, r"padding: must be >= 0, got -1"),
    ({"type": "max_pool", "kernel_size": 2, "dilation": 0}, r"dilation: must be >= 1, got 0"),
    ({"type": "max_pool", "kernel_size": 2, "ceil_mode": "yes"}, r"ceil_mode: input should be a valid boolean"),
    ({"type": "avg_pool", "kernel_size": 4, "padding": 3}, r"\(avg_pool\): padding must be at most half"),
    ({"type": "avg_pool", "kernel_size": 2, "dilation": 2}, r"unknown key 'dilation'"),
    ({"type": "avg_pool", "kernel_size": 2, "divisor_override": 0}, r"divisor_override: must be >= 1, got 0"),
    ({"type": "lp_pool", "kernel_size": 2, "p": 0}, r"\.p: must be > 0"),
    ({"type": "lp_pool", "kernel_size": 2, "padding": 1}, r"unknown key 'padding'"),
    ({"type": "adaptive_avg_pool"}, r"output_size: is required"),
    ({"type": "adaptive_avg_pool", "output_size": 0}, r"output_size: must be an integer >= 1 or a pair"),
    ({"type": "adaptive_max_pool", "output_size": [2]}, r"output_size: must be .* got \[2\]"),
    ({"type": "adaptive_max_pool", "output_size": [2, 0]}, r"output_size: must be"),
    ({"type": "adaptive_max_pool", "output_size": "big"}, r"output_size: must be"),
    ({"type": "adaptive_max_pool", "output_size": None}, r"output_size: must be"),
    ({"type": "spp", "levels": []}, r"\(spp\)\.levels: give at least one level"),
    ({"type": "spp", "levels": [1, 0]}, r"levels\[1\]: must be >= 1, got 0"),
    ({"type": "spp", "pool": "mean"}, r"pool: must be one of 'max' or 'avg'"),
])
def test_config_errors(raw, message):
    with pytest.raises(ConfigError, match=message):
        build(raw)


def test_config_error_is_in_the_right_stage():
    expected = r"^stages\[1\] \(max_pool 'p'\): padding must be at most half the \(dilated\) kernel"
    with pytest.raises(ConfigError, match=expected):
        build({"type": "gem"}, {"type": "max_pool", "name": "p", "kernel_size": 2, "padding": 2})


def test_window_defaults():
    pool = stage("max_pool", kernel_size=[3, 2])
    assert pool.window.stride == (3, 2) and pool.window.padding == (0, 0) and pool.window.dilation == (1, 1)
    assert stage("avg_pool", kernel_size=2).padding == (0, 0)
    assert stage("spp").levels == (1, 2, 4) and stage("spp").pool == "max"
    assert stage("lp_pool", kernel_size=2).p == 2.0
