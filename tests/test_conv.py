"""The conv stage: the kernel against tests/naive.py and PyTorch, every built-in bank, shapes,
costs, and config errors."""

import math

import numpy as np
import pytest

import naive
import poolcli
from poolcli.errors import ConfigError, ShapeError
from poolcli.stages.filters import BANKS, gabor_sigma, make_bank
from torch_oracle import needs_torch, torch


def build(params, base_dir="."):
    """The conv stage of a one-stage pipeline built from ``params``."""
    return poolcli.Pipeline.from_config({"stages": [{"type": "conv", **params}]}, base_dir=base_dir).nodes[0].stage


def save(folder, name, array):
    np.save(folder / name, np.asarray(array))
    return name


def close(ours, ref):
    """Equal to float32 rounding, relative to the magnitude of the result."""
    ref = np.asarray(ref)
    assert ours.shape == ref.shape
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-5 * max(1.0, float(np.abs(ref).max())))


def normal(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


# --- the kernel against the naive loops, with explicit .npy weights ---------------------------

# (input shape, output channels, kernel (kh, kw), stage parameters)
WEIGHT_CASES = [
    ((3, 7, 9), 5, (3, 3), {}),  # odd sizes; 5 outputs = a block of 4 and one left over
    ((2, 1, 1), 3, (1, 1), {}),  # 1x1 map
    ((2, 1, 1), 6, (3, 3), {"padding": 1}),  # 1x1 map, only padding around it
    ((1, 1, 1), 2, (3, 3), {"padding": 1, "padding_mode": "replicate"}),
    ((1, 1, 1), 2, (3, 3), {"padding": 1, "padding_mode": "circular"}),
    ((2, 5, 4), 7, (5, 4), {}),  # kernel = map: one output position
    ((3, 11, 10), 6, (3, 2), {"stride": [2, 3]}),
    ((2, 12, 9), 4, (3, 3), {"dilation": [2, 3], "padding": [2, 1]}),
    ((6, 8, 7), 6, (3, 3), {"groups": 2, "padding": 1}),
    ((6, 8, 7), 9, (2, 3), {"groups": 3, "stride": 2}),
    ((4, 6, 6), 8, (3, 3), {"groups": 4, "padding": "same"}),  # depthwise, 2 outputs per channel
    ((2, 6, 7), 5, (3, 3), {"padding": [2, 1], "padding_mode": "reflect"}),
    ((2, 6, 7), 5, (4, 3), {"padding": [3, 2], "padding_mode": "replicate", "stride": [1, 2]}),
    ((2, 5, 6), 5, (3, 3), {"padding": [5, 6], "padding_mode": "circular"}),  # padding = map size
    ((2, 9, 8), 5, (4, 2), {"padding": "same", "dilation": [1, 3], "padding_mode": "reflect"}),  # odd total
    ((2, 9, 8), 4, (3, 3), {"padding": "same", "padding_mode": "circular"}),
    ((2, 9, 8), 5, (3, 3), {"padding": "valid", "stride": 2}),
    ((2, 7, 7), 3, (3, 3), {"stride": 3, "padding": 1, "padding_mode": "reflect"}),  # last column unused
    ((1, 3, 1100), 5, (3, 3), {"padding": 1}),  # wider than one column tile of the kernel
    ((1, 3, 1100), 6, (2, 3), {"stride": 3, "dilation": 2}),
    # The register-blocked kernel: blocks of 8 outputs and a partial one, taps in fours and a
    # remainder, output rows that straddle its spans of 512 positions, every stride phase.
    ((3, 33, 41), 11, (3, 5), {"stride": [2, 3], "dilation": [2, 1], "padding": [3, 2], "padding_mode": "reflect"}),
    ((6, 25, 90), 24, (3, 3), {"groups": 2, "padding": 1, "padding_mode": "circular"}),  # 12 outputs per group
    ((2, 40, 300), 17, (1, 1), {"stride": [3, 1]}),  # 2 taps: no whole chunk
    ((5, 21, 29), 10, (2, 2), {"groups": 5, "stride": 2, "padding": 1, "padding_mode": "replicate"}),  # 1 input, 4 taps
    ((3, 16, 64), 9, (1, 1), {}),  # 1024 positions: whole spans only, none partial
]


@pytest.mark.parametrize("shape, out_channels, kernel, params", WEIGHT_CASES, ids=map(str, range(len(WEIGHT_CASES))))
def test_npy_weights_equal_naive(tmp_path, shape, out_channels, kernel, params):
    groups = params.get("groups", 1)
    weight = normal((out_channels, shape[0] // groups, *kernel), seed=1)
    bias = normal(out_channels, seed=2)
    x = normal(shape)
    before = x.copy()
    stage = build({"filters": save(tmp_path, "w.npy", weight), "bias": bias.tolist(), **params}, tmp_path)
    ours = stage(x)
    close(ours, naive.conv2d(x, weight, bias, **params))
    assert ours.dtype == np.float32 and ours.shape == stage.output_shape(shape)
    np.testing.assert_array_equal(x, before)


def test_bias_from_npy_and_no_bias(tmp_path):
    weight, bias, x = normal((3, 2, 3, 3), 1), normal(3, 2), normal((2, 6, 5))
    with_bias = build({"filters": save(tmp_path, "w.npy", weight), "bias": save(tmp_path, "b.npy", bias)}, tmp_path)
    without = build({"filters": "w.npy"}, tmp_path)
    close(with_bias(x), naive.conv2d(x, weight, bias))
    close(without(x), naive.conv2d(x, weight))


def test_random_weights_equal_their_formula_and_naive():
    x = normal((4, 7, 6))
    stage = build({"filters": "random", "out_channels": 6, "groups": 2, "seed": 7, "kernel_size": [3, 2], "padding": 1})
    weight = np.random.default_rng(7).normal(0.0, math.sqrt(2 / (2 * 3 * 2)), (6, 2, 3, 2)).astype(np.float32)
    np.testing.assert_array_equal(stage.weights(4), weight)
    close(stage(x), naive.conv2d(x, weight, groups=2, padding=1))


# --- every built-in bank, both channel modes, against the naive loops ---------------------------

BANK_PARAMS = {
    "identity": {"kernel_size": 3},
    "box": {},
    "gaussian": {"sigma": 0.8},
    "sobel": {},
    "scharr": {},
    "prewitt": {},
    "laplacian": {},
    "log": {"sigma": 0.7},
    "gabor": {"orientations": 3, "wavelengths": [3.0, 5.0], "phase": "both", "kernel_size": 7},
}
GEOMETRIES = [
    {},
    {"padding": "same", "padding_mode": "reflect"},
    {"stride": 2, "padding": 2, "padding_mode": "replicate"},
]


def test_every_2d_bank_is_tested():
    assert set(BANK_PARAMS) == {name for name, bank in BANKS.items() if not bank.full}


@pytest.mark.parametrize("channels", ["mean", "each"])
@pytest.mark.parametrize("geometry", range(len(GEOMETRIES)))
@pytest.mark.parametrize("bank", sorted(BANK_PARAMS))
def test_bank_equals_naive(bank, geometry, channels):
    x = normal((3, 9, 8), seed=len(bank))
    stage = build({"filters": bank, "channels": channels, **BANK_PARAMS[bank], **GEOMETRIES[geometry]})
    close(stage(x), naive.conv_bank(x, stage.bank(), channels, **GEOMETRIES[geometry]))


def test_bank_with_bias_and_activation():
    x = normal((2, 6, 6))
    stage = build({"filters": "sobel", "channels": "each", "bias": [1, -1, 0.5, 0], "activation": "relu"})
    expected = naive.conv_bank(x, stage.bank(), "each") + np.array([1, -1, 0.5, 0])[:, None, None]
    close(stage(x), np.maximum(expected, 0))


ACTIVATIONS = {
    "relu": lambda v: np.maximum(v, 0),
    "abs": np.abs,
    "square": np.square,
    "sigmoid": lambda v: 1 / (1 + np.exp(-v)),
    "tanh": np.tanh,
}


@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
def test_activation_applies_to_the_output(activation):
    x = normal((3, 6, 7))
    stage = build({"filters": "random", "out_channels": 3, "activation": activation})
    close(stage(x), ACTIVATIONS[activation](naive.conv2d(x, stage.weights(3))))


# --- PyTorch, the oracle users trust: a seeded random sweep -------------------------------------

TORCH_MODES = ("zeros", "reflect", "replicate", "circular")


def sweep_case(seed):
    """Stage parameters and input shape of one random case: random weights with groups, or a
    2-D bank with channels mean or each; any stride, dilation, padding and padding mode."""
    rng = np.random.default_rng(seed)
    kernel = [int(k) for k in rng.integers(1, 6, 2)]
    params = {
        "stride": [int(s) for s in rng.integers(1, 4, 2)],
        "dilation": [int(d) for d in rng.choice([1, 1, 2, 3], 2)],
        "padding_mode": str(rng.choice(TORCH_MODES)),
        "activation": str(rng.choice(["none", "none", *ACTIVATIONS])),
    }
    padding = int(rng.integers(5))
    params["padding"] = [[int(p) for p in rng.integers(0, 4, 2)], int(rng.integers(4)), "same", "valid"][padding % 4]
    if params["padding"] == "same":
        params["stride"] = [1, 1]
    channels = int(rng.integers(1, 7))
    if rng.random() < 0.6:
        groups = int(rng.choice([g for g in range(1, channels + 1) if channels % g == 0]))
        out_channels = groups * int(rng.integers(1, 4))
        params.update(filters="random", out_channels=out_channels, groups=groups, kernel_size=kernel, seed=seed)
    else:
        bank = str(rng.choice(["identity", "box", "gaussian", "sobel", "laplacian", "log", "gabor"]))
        params.update(filters=bank, channels=str(rng.choice(["mean", "each"])))
        if not BANKS[bank].fixed:
            params["kernel_size"] = [max(k, BANKS[bank].min_size) for k in kernel]
        if bank == "gabor":
            params.update(orientations=int(rng.integers(1, 5)), wavelengths=[2.0 + 4 * rng.random()],
                          phase=str(rng.choice(["even", "odd", "both"])))
    params["bias"] = bool(rng.random() < 0.5)  # a flag here: the test gives one value per output
    return params, (channels, *(int(s) for s in rng.integers(1, 22, 2)))


def torch_reference(stage, params, x):
    """nn.Conv2d with the stage's weights: the 2-D banks as torch users would write them (a conv
    on the channel mean, or a depthwise conv), then torch's activation."""
    channels = x.shape[0]
    if params["filters"] == "random":
        weight, groups, source = stage.weights(channels), stage.groups, x
    elif params["channels"] == "mean":
        weight, groups, source = stage.bank()[:, None], 1, x.mean(axis=0, keepdims=True)
    else:
        weight, groups, source = np.tile(stage.bank()[:, None], (channels, 1, 1, 1)), channels, x
    out_c, per_group, kh, kw = weight.shape
    bias = params["bias"] or None
    module = torch.nn.Conv2d(per_group * groups, out_c, (kh, kw), stride=params["stride"], padding=params["padding"],
                             dilation=params["dilation"], groups=groups, bias=bias is not None,
                             padding_mode=params["padding_mode"])
    with torch.no_grad():
        module.weight.copy_(torch.from_numpy(np.array(weight)))
        if bias is not None:
            module.bias.copy_(torch.tensor(bias))
        out = module(torch.from_numpy(np.ascontiguousarray(source, dtype=np.float32))[None])
    activation = {"none": lambda t: t, "relu": torch.relu, "abs": torch.abs, "square": torch.square,
                  "sigmoid": torch.sigmoid, "tanh": torch.tanh}[params["activation"]]
    return activation(out)[0].numpy()


@needs_torch
@pytest.mark.parametrize("seed", range(150))
def test_equals_torch_conv2d(seed):
    params, shape = sweep_case(seed)
    x = normal(shape, seed)
    if params["bias"]:
        unbiased = build({**params, "bias": False})
        outputs = params.get("out_channels") or len(unbiased.bank()) * (shape[0] if params["channels"] == "each" else 1)
        params["bias"] = np.linspace(-1, 1, outputs).round(3).tolist()
    stage = build(params)
    try:
        ref = torch_reference(stage, params, x)
    except RuntimeError:  # the kernel does not fit, or the padding mode refuses the padding
        with pytest.raises(ShapeError):
            stage.output_shape(shape)
        return
    close(stage(x), ref)


def test_sweep_covers_the_parameters():
    cases = [sweep_case(seed)[0] for seed in range(150)]
    assert {c["padding_mode"] for c in cases} == set(TORCH_MODES)
    assert {str(c["padding"]) for c in cases} >= {"same", "valid"}
    assert any(c.get("groups", 1) > 1 for c in cases) and any(c.get("channels") == "each" for c in cases)
    assert any(max(c["dilation"]) > 1 and max(c["stride"]) > 1 for c in cases)


@needs_torch
@pytest.mark.parametrize("mode", TORCH_MODES)
def test_large_map_equals_torch(mode):
    x = normal((3, 61, 700), 3)
    params = {"filters": "random", "out_channels": 9, "kernel_size": 5, "padding": 2, "padding_mode": mode,
              "stride": [1, 2], "activation": "none", "dilation": [1, 1], "bias": False}
    stage = build(params)
    close(stage(x), torch_reference(stage, params, x))


def same_specials_and_close(ours, ref):
    """NaN and infinities where ``ref`` has them (with their signs), the rest equal to rounding."""
    np.testing.assert_array_equal(np.isnan(ours), np.isnan(ref))
    np.testing.assert_array_equal(np.isposinf(ours), np.isposinf(ref))
    np.testing.assert_array_equal(np.isneginf(ours), np.isneginf(ref))
    finite = np.isfinite(ref)
    close(ours[finite], ref[finite])


@needs_torch
@pytest.mark.parametrize("out_channels", [10, 2, 32])  # the blocked kernel, the narrow one, the product
@pytest.mark.parametrize("taps", [(3, 3), (2, 3), (1, 1), (3, 4)])
def test_infinities_and_nans_spread_as_in_torch(taps, out_channels):
    # Missing taps of the kernel's last chunk must not be multiplied by zero: 0 * inf is NaN.
    x = normal((3, 12, 14), 5)
    x[0, 3, 4], x[1, 7, 9], x[2, 10, 2], x[0, 0, 13] = np.inf, -np.inf, np.nan, np.inf
    params = {"filters": "random", "out_channels": out_channels, "kernel_size": list(taps), "padding": 1, "stride": [1, 1],
              "padding_mode": "zeros", "dilation": [1, 1], "activation": "none", "bias": False}
    stage = build(params)
    same_specials_and_close(stage(x), torch_reference(stage, params, x))


# --- the banks themselves -------------------------------------------------------------------------


def edge_images(size=8):
    vertical = np.zeros((1, size, size), np.float32)
    vertical[:, :, size // 2 :] = 1  # dark on the left, bright on the right
    return vertical, np.ascontiguousarray(vertical.transpose(0, 2, 1))


@pytest.mark.parametrize("bank", ["sobel", "scharr", "prewitt"])
def test_x_filter_sees_vertical_edges_and_y_horizontal(bank):
    vertical, horizontal = edge_images()
    stage = build({"filters": bank})
    on_vertical, on_horizontal = stage(vertical), stage(horizontal)
    assert on_vertical[0].min() >= 0 and on_vertical[0].max() > 0  # x: positive across the edge
    np.testing.assert_array_equal(on_vertical[1], 0)  # y: blind to it
    np.testing.assert_array_equal(on_horizontal[0], 0)
    assert on_horizontal[1].max() > 0
    np.testing.assert_array_equal(stage.bank()[1], stage.bank()[0].T)


def test_fixed_banks_are_the_textbook_matrices():
    np.testing.assert_array_equal(make_bank("sobel", (3, 3))[0], [[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]])
    np.testing.assert_array_equal(make_bank("scharr", (3, 3))[0], [[-3, 0, 3], [-10, 0, 10], [-3, 0, 3]])
    np.testing.assert_array_equal(make_bank("prewitt", (3, 3))[0], [[-1, 0, 1]] * 3)
    np.testing.assert_array_equal(make_bank("laplacian", (3, 3))[0], [[0, 1, 0], [1, -4, 1], [0, 1, 0]])


@pytest.mark.parametrize("sigma", [0.5, 1.0, 2.5])
def test_gaussian_sums_to_one_with_its_default_size(sigma):
    bank = build({"filters": "gaussian", "sigma": sigma}).bank()
    size = 2 * math.ceil(3 * sigma) + 1
    assert bank.shape == (1, size, size)
    assert abs(float(bank.sum(dtype=np.float64)) - 1) < 1e-6
    g, c = bank[0], size // 2
    assert g[c, c] == g.max()
    np.testing.assert_allclose(g[c, c + 1] / g[c, c], math.exp(-1 / (2 * sigma**2)), rtol=1e-6)
    np.testing.assert_allclose(g, g.T, rtol=1e-6)


def test_box_is_the_mean():
    x = normal((1, 5, 5))
    out = build({"filters": "box", "kernel_size": [3, 5]})(x)
    np.testing.assert_allclose(out[0, :, 0], [x[0, i : i + 3].mean() for i in range(3)], rtol=1e-5)


@pytest.mark.parametrize("kernel", [1, 2, 3, 4, [2, 5]])
@pytest.mark.parametrize("mode", TORCH_MODES)
def test_identity_with_same_padding_returns_the_input(kernel, mode):
    x = normal((2, 6, 7))
    odd = all(k % 2 for k in np.atleast_1d(kernel))  # an even kernel has no centre tap once dilated
    stage = build({"filters": "identity", "kernel_size": kernel, "padding": "same", "padding_mode": mode,
                   "dilation": 2 if odd else 1, "channels": "each"})
    np.testing.assert_array_equal(stage(x), x)


def test_log_is_zero_mean_with_a_negative_centre():
    bank = build({"filters": "log", "sigma": 1.4}).bank()[0]
    assert bank.shape == (11, 11)
    assert abs(float(bank.sum(dtype=np.float64))) < 1e-6
    assert bank[5, 5] == bank.min() < 0
    np.testing.assert_allclose(bank, bank.T, atol=1e-9)
    flat = np.full((1, 13, 13), 3.0, np.float32)
    np.testing.assert_allclose(build({"filters": "log", "sigma": 1.4})(flat), 0, atol=1e-5)


def test_laplacian_is_zero_mean():
    assert make_bank("laplacian", (3, 3)).sum() == 0


def test_gabor_bank_order_norms_and_means():
    stage = build({"filters": "gabor", "orientations": 4, "wavelengths": [4.0, 6.0], "phase": "both"})
    bank = stage.bank().astype(np.float64)
    size = 2 * math.ceil(3 * gabor_sigma(6.0, 1.0)) + 1
    assert bank.shape == (2 * 4 * 2, size, size)
    np.testing.assert_allclose(bank.sum(axis=(1, 2)), 0, atol=1e-6)
    np.testing.assert_allclose(np.sqrt((bank**2).sum(axis=(1, 2))), 1, rtol=1e-6)
    even, odd = bank[0::2], bank[1::2]
    np.testing.assert_allclose(even, even[:, ::-1, ::-1], atol=1e-6)  # cosine: symmetric
    np.testing.assert_allclose(odd, -odd[:, ::-1, ::-1], atol=1e-6)  # sine: antisymmetric
    # Filter (wavelength 6, orientation k = 1, odd), recomputed from the documented formula.
    y, x = np.mgrid[:size, :size] - (size - 1) / 2
    sigma, theta = gabor_sigma(6.0, 1.0), math.pi / 4
    f = np.exp(-(x**2 + y**2) / (2 * sigma**2)) * np.sin(2 * math.pi * (x * math.cos(theta) + y * math.sin(theta)) / 6)
    f -= f.mean()
    np.testing.assert_allclose(bank[(1 * 4 + 1) * 2 + 1], f / np.linalg.norm(f), atol=1e-6)


def test_gabor_orientation_zero_prefers_stripes_across_the_width():
    size = 32
    stripes = np.cos(2 * math.pi * np.arange(size) / 8.0).astype(np.float32)
    across_width = np.broadcast_to(stripes[None, :], (1, size, size)).copy()
    across_height = np.ascontiguousarray(across_width.transpose(0, 2, 1))
    stage = build({"filters": "gabor", "orientations": 2, "wavelengths": [8.0]})  # theta 0 and pi/2
    energy = lambda y: np.abs(y).mean(axis=(1, 2))  # noqa: E731
    theta0, theta90 = energy(stage(across_width)), energy(stage(across_height))
    assert theta0[0] > 10 * theta0[1] and theta90[1] > 10 * theta90[0]


def test_gabor_defaults():
    stage = build({"filters": "gabor"})
    assert stage.bank().shape == (16, 29, 29)  # 8 orientations x wavelengths [4, 8], even
    assert stage.output_shape((3, 64, 64)) == (16, 36, 36)


def test_random_is_seeded_and_he_scaled():
    params = {"filters": "random", "out_channels": 64}
    first, again = build(params).weights(32), build(params).weights(32)
    other = build({**params, "seed": 1}).weights(32)
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)
    assert first.shape == (64, 32, 3, 3) and first.dtype == np.float32
    assert abs(first.std() / math.sqrt(2 / (32 * 9)) - 1) < 0.03 and abs(first.mean()) < 0.01


def test_banks_are_built_once():
    stage = build({"filters": "gabor"})
    assert stage.bank() is stage.bank() and not stage.bank().flags.writeable


# --- shapes, costs and shape errors -------------------------------------------------------------------


def test_output_shapes_per_mode(tmp_path):
    assert build({"filters": "sobel"}).output_shape((3, 10, 9)) == (2, 8, 7)
    assert build({"filters": "sobel", "channels": "each", "padding": 1}).output_shape((3, 10, 9)) == (6, 10, 9)
    assert build({"filters": "random", "out_channels": 5, "stride": 2}).output_shape((3, 10, 9)) == (5, 4, 4)
    assert build({"filters": "gaussian", "padding": "same"}).output_shape((1, 4, 4)) == (1, 4, 4)
    weights = save(tmp_path, "w.npy", np.zeros((6, 2, 1, 3)))
    assert build({"filters": weights, "groups": 2}, tmp_path).output_shape((4, 5, 5)) == (6, 5, 3)


def test_trace_reports_params_macs_and_receptive_field():
    pipe = poolcli.Pipeline.from_config({"stages": [
        {"type": "conv", "filters": "random", "out_channels": 8, "stride": 2, "padding": 1, "bias": [0] * 8},
        {"type": "conv", "filters": "sobel", "dilation": 2, "padding": "same"},
    ]})
    first, second = pipe.trace((3, 16, 16))
    assert first.out_shape == (8, 8, 8) and first.params == 8 * 3 * 9 + 8 and first.macs == 8 * 8 * 8 * 27
    assert str(first.receptive_field) == "3x3" and first.receptive_field.jump == (2, 2)
    assert second.out_shape == (2, 8, 8) and second.params == 18
    assert second.macs == 2 * 8 * 8 * 9 + 8 * 8 * 8  # the filters on the channel mean, and the mean
    assert str(second.receptive_field) == "11x11"  # 3 + (5 - 1) * 2


@pytest.mark.parametrize("params, shape, match", [
    ({"filters": "gaussian", "sigma": 1.0}, (1, 6, 6), "7x7 kernel .* does not fit a 6x6 map"),
    ({"filters": "gaussian", "padding": "same", "padding_mode": "reflect"}, (1, 3, 9), "reflect padding must be small"),
    ({"filters": "box", "padding": 4, "padding_mode": "circular"}, (1, 9, 3), "circular padding must be at most"),
    ({"filters": "random", "out_channels": 2, "groups": 2}, (3, 5, 5), "groups 2 must divide the map's 3 channels"),
    ({"filters": "sobel", "channels": "each", "bias": [1, 2]}, (3, 5, 5), "bias has 2 values, but the conv gives 6"),
])
def test_shape_errors(params, shape, match):
    with pytest.raises(ShapeError, match=match):
        build(params).output_shape(shape)


def test_npy_weights_name_both_channel_counts(tmp_path):
    stage = build({"filters": save(tmp_path, "w.npy", np.ones((4, 3, 3, 3)))}, tmp_path)
    with pytest.raises(ShapeError, match="take 3 input channels .* the map has 4"):
        stage.output_shape((4, 8, 8))
    with pytest.raises(ShapeError, match="stage 'conv0' .*take 3 input channels"):
        poolcli.Pipeline.from_config({"stages": [{"type": "conv", "filters": "w.npy"}]}, tmp_path)(np.ones((1, 8, 8)))


# --- config errors ----------------------------------------------------------------------------------


@pytest.mark.parametrize("params, match", [
    ({"filters": "sobl"}, r"stages\[0\] \(conv\)\.filters: unknown filter bank 'sobl' \(did you mean 'sobel'\?\)"),
    ({"filters": "edges"}, r"unknown filter bank 'edges' \(built-in: identity, box, gaussian"),
    ({"filters": "missing.npy"}, r"filters: file not found: .*missing\.npy"),
    ({"filters": "sobel", "bias": [1, 2, 3]}, r"bias has 3 values, but filters 'sobel' give 2 output channels"),
    ({"filters": "gabor", "orientations": 2, "bias": [0]}, r"bias has 1 values, but filters 'gabor' give 4"),
    ({"filters": "random", "out_channels": 4, "bias": [0] * 5}, r"bias has 5 values, but filters 'random' give 4"),
    ({"filters": "sobel", "bias": True}, r"bias: true gives no values"),
    ({"filters": "sobel", "bias": []}, r"bias: the list is empty"),
    ({"filters": "sobel", "bias": "b.npy"}, r"bias: file not found"),
    ({"filters": "sobel", "padding": "same", "stride": 2}, r"padding: 'same' needs stride 1 \(as in torch\)"),
    ({"filters": "sobel", "padding": "full"}, r"padding: must be an integer, a pair \[ph, pw\], four numbers "
                                              r"\[top, left, bottom, right\] or one of 'same', 'valid', 'same_upper'"),
    ({"filters": "sobel", "padding": [1, 2, 3]}, r"padding: must be an integer, a pair \[ph, pw\] or four numbers"),
    ({"filters": "sobel", "padding": -1}, r"padding: must be >= 0"),
    ({"filters": "sobel", "sigma": 2}, r"sigma: applies to filters gaussian, log only, not 'sobel'"),
    ({"filters": "gaussian", "orientations": 4}, r"orientations: applies to filters gabor only"),
    ({"filters": "sobel", "kernel_size": 5}, r"kernel_size: sobel filters are 3x3 only"),
    ({"filters": "gabor", "kernel_size": 2}, r"kernel_size: gabor filters need a kernel of at least 3"),
    ({"filters": "gabor", "wavelengths": [4, 1.5]}, r"wavelengths: each wavelength must be >= 2 pixels"),
    ({"filters": "gabor", "wavelengths": []}, r"wavelengths: list should have at least 1 item"),
    ({"filters": "gabor", "phase": "quadrature"}, r"phase: must be one of 'even', 'odd' or 'both'"),
    ({"filters": "sobel", "groups": 2}, r"groups: applies to random and .npy weights; sobel is a 2-D bank"),
    ({"filters": "random"}, r"filters random needs out_channels"),
    ({"filters": "random", "out_channels": 3, "groups": 2}, r"groups: must divide the 3 output channels"),
    ({"filters": "random", "out_channels": 3, "channels": "each"}, r"channels: applies to 2-D banks only"),
    ({"filters": "sobel", "channels": "all"}, r"channels: must be one of 'mean' or 'each'"),
    ({"filters": "sobel", "activation": "sine"}, r"activation.fn: must be one of 'none', 'relu'"),
    ({"filters": "sobel", "activation": {"fn": "relu", "alpha": 1}}, r"activation: alpha applies to leaky_relu, elu, "
                                                                     r"hard_sigmoid only, not relu"),
    ({"filters": "sobel", "residual": "nowhere"}, r"residual: no earlier stage is named 'nowhere'"),
    ({"filters": "sobel", "sigmaa": 1}, r"unknown key 'sigmaa' \(did you mean 'sigma'\?\)"),
    ({"filters": "random", "out_channels": 0}, r"out_channels: must be >= 1"),
])
def test_config_errors(tmp_path, params, match):
    with pytest.raises(ConfigError, match=match):
        build(params, tmp_path)


@pytest.mark.parametrize("array, extra, match", [
    (np.ones((3, 3)), {}, r"filters: weights in .*w\.npy must have shape \(O, C/groups, kh, kw\), got shape \(3, 3\)"),
    (np.ones((2, 1, 3)), {}, r"got shape \(2, 1, 3\)"),
    (np.array([[[[np.nan]]]]), {}, r"filters: weights in .* contain NaN or infinity"),
    (np.array([[[["a"]]]]), {}, r"filters: weights in .* must be numbers, got dtype <U1"),
    (np.ones((2, 1, 3, 3)), {"kernel_size": 5}, r"kernel_size: must match the weights' 3x3, got 5x5"),
    (np.ones((3, 1, 3, 3)), {"groups": 2}, r"groups: must divide the 3 output channels"),
    (np.ones((2, 1, 3, 3)), {"bias": [1, 2, 3]}, r"bias has 3 values, but filters 'w.npy' give 2 output channels"),
    (np.ones((2, 1, 3, 3)), {"bias": "b.npy"}, r"bias: bias in .*b\.npy must have shape \(O,\), got shape \(2, 1\)"),
])
def test_npy_config_errors(tmp_path, array, extra, match):
    save(tmp_path, "w.npy", array)
    save(tmp_path, "b.npy", np.ones((2, 1)))
    with pytest.raises(ConfigError, match=match):
        build({"filters": "w.npy", **extra}, tmp_path)


def test_pickled_npy_is_refused(tmp_path):
    np.save(tmp_path / "w.npy", np.array([{"evil": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ConfigError, match=r"filters: cannot read .*w\.npy as \.npy"):
        build({"filters": "w.npy"}, tmp_path)


def test_relative_paths_resolve_against_the_config_folder(tmp_path, monkeypatch):
    folder = tmp_path / "configs"
    folder.mkdir()
    weight, bias = normal((2, 1, 3, 3), 1), normal(2, 2)
    save(folder, "w.npy", weight)
    save(folder, "b.npy", bias)
    (folder / "conv.yaml").write_text("stages:\n  - {type: conv, filters: w.npy, bias: b.npy, padding: same}\n")
    monkeypatch.chdir(tmp_path)
    pipe = poolcli.Pipeline.from_yaml(folder / "conv.yaml")
    x = normal((1, 5, 6))
    close(pipe(x), naive.conv2d(x, weight, bias, padding="same"))


def test_stages_from_the_same_file_are_equal(tmp_path):
    save(tmp_path, "w.npy", np.ones((2, 1, 3, 3)))
    assert build({"filters": "w.npy"}, tmp_path) == build({"filters": "w.npy"}, tmp_path)
    assert build({"filters": "sobel"}) != build({"filters": "scharr"})




# --- every method of the kernels ------------------------------------------------------------------

# (C, H, W), O, kernel, stride, dilation, groups, pads (top, bottom, left, right), padding mode
METHOD_CASES = [
    ((20, 17, 23), 24, (3, 3), (1, 1), (1, 1), 1, (1, 1, 1, 1), "zeros"),
    ((8, 30, 19), 40, (7, 7), (2, 2), (1, 1), 1, (3, 3, 3, 3), "zeros"),
    ((12, 21, 26), 18, (3, 2), (2, 1), (2, 1), 1, (2, 0, 1, 3), "reflect"),
    ((32, 15, 15), 48, (1, 1), (1, 1), (1, 1), 1, (0, 0, 0, 0), "zeros"),
    ((32, 15, 16), 20, (1, 1), (2, 2), (1, 1), 1, (0, 0, 0, 0), "zeros"),
    ((36, 14, 11), 36, (3, 3), (1, 1), (1, 1), 2, (1, 1, 1, 1), "replicate"),
    ((16, 19, 13), 16, (3, 3), (2, 2), (1, 1), 16, (1, 1, 1, 1), "circular"),
    ((6, 40, 41), 300, (3, 3), (1, 1), (1, 1), 1, (1, 1, 1, 1), "zeros"),  # several tiles and channel parts
    ((16, 9, 10), 272, (3, 3), (1, 1), (1, 1), 1, (1, 1, 1, 1), "zeros"),  # one tile: channel parts per tap
    ((16, 30, 33), 24, (3, 3), (2, 2), (2, 2), 1, (2, 2, 2, 2), "zeros"),  # a product per tap, strided, dilated
    # depthwise: strided, dilated with two outputs per channel, asymmetric pads, several bands of rows
    ((24, 37, 29), 24, (3, 3), (2, 2), (1, 1), 24, (1, 1, 1, 1), "zeros"),
    ((10, 23, 30), 20, (5, 5), (1, 1), (2, 2), 10, (4, 4, 4, 4), "reflect"),
    ((8, 16, 17), 8, (3, 3), (2, 2), (1, 1), 8, (0, 1, 0, 1), "zeros"),
    ((4, 700, 8), 4, (3, 3), (1, 1), (1, 1), 4, (1, 1, 1, 1), "replicate"),
    ((6, 12, 13), 6, (7, 7), (1, 1), (1, 1), 6, (3, 3, 3, 3), "circular"),
    # 3x3 stride 1 (F(4x4, 3x3) too): a map in many blocks of tile rows; asymmetric reflected pads
    # and a last tile cut on both sides; a 1x1 output; padding that enlarges the map
    ((64, 70, 61), 64, (3, 3), (1, 1), (1, 1), 1, (1, 1, 1, 1), "zeros"),
    ((20, 13, 18), 24, (3, 3), (1, 1), (1, 1), 1, (0, 2, 1, 0), "reflect"),
    ((5, 3, 3), 7, (3, 3), (1, 1), (1, 1), 1, (0, 0, 0, 0), "zeros"),
    ((9, 6, 7), 11, (3, 3), (1, 1), (1, 1), 1, (2, 3, 2, 2), "replicate"),
]


@pytest.mark.parametrize("case", range(len(METHOD_CASES)))
@pytest.mark.parametrize("threads", [1, 2])
def test_every_method_equals_naive_with_residual_and_activation(case, threads):
    """Each way the kernels compute a convolution (a product for 1x1, im2col products in tiles
    and channel parts, a product per tap, the blocked and the narrow direct kernels, F(4x4, 3x3)), forced on the same weights,
    with a residual and an activation in its epilogue, equals the float64 loop."""
    import numba

    from poolcli.kernels import conv as kernels
    from poolcli.kernels.elementwise import ACTIVATIONS

    shape, out_c, kernel, stride, dilation, groups, pads, mode = METHOD_CASES[case]
    rng = np.random.default_rng(case)
    x = rng.standard_normal(shape).astype(np.float32)
    weight = rng.standard_normal((out_c, shape[0] // groups, *kernel)).astype(np.float32)
    bias = rng.standard_normal(out_c).astype(np.float32)
    ref = naive.conv2d(x, weight, bias, stride=stride, padding=pads, padding_mode=mode, dilation=dilation, groups=groups)
    residual = rng.standard_normal(ref.shape).astype(np.float32)
    expected = np.maximum(ref + residual, 0)
    methods = kernels.methods(weight.shape, groups, pads, stride, dilation)
    assert {"direct", "narrow"} <= set(methods)
    assert ("winograd" in methods) == (kernel == (3, 3) and stride == dilation == (1, 1) and groups == 1)
    saved = numba.get_num_threads()
    numba.set_num_threads(threads)
    try:
        for method in methods:
            prepared = kernels.prepare(weight, bias, groups, pads, method)
            relu = (ACTIVATIONS.index("relu"), np.float32(0), np.float32(0))
            out = kernels.convolve(x.copy(), prepared, pads, mode, stride, dilation, ref.shape[1:], residual=residual,
                                   activation=relu, threads=threads)
            close(out, expected)
            # Written over a residual that is no longer needed: the same result, in that buffer
            # where the method's epilogue adds it.
            spent = residual.copy()
            out = kernels.convolve(x.copy(), prepared, pads, mode, stride, dilation, ref.shape[1:], residual=spent,
                                   activation=relu, threads=threads, into_residual=True)
            close(out, expected)
            assert (out is spent) == (method in ("pointwise", "gemm", "shifted", "depthwise", "winograd"))
    finally:
        numba.set_num_threads(saved)


@pytest.mark.parametrize("method", ["pointwise", "depthwise"])
def test_a_residual_that_is_the_input_is_never_written_over(method):
    """The 1x1 and depthwise kernels read their input as they write: a residual that is the
    input itself is left alone, and the result is still right."""
    from poolcli.kernels import conv as kernels
    from poolcli.kernels.elementwise import ACTIVATIONS

    rng = np.random.default_rng(1)
    x = rng.standard_normal((16, 12, 13)).astype(np.float32)
    groups, weight = (1, rng.standard_normal((16, 16, 1, 1))) if method == "pointwise" else (16, rng.standard_normal((16, 1, 3, 3)))
    weight = weight.astype(np.float32)
    pads = (0, 0, 0, 0) if method == "pointwise" else (1, 1, 1, 1)
    expected = np.maximum(naive.conv2d(x, weight, None, padding=pads, groups=groups) + x, 0)
    before = x.copy()
    prepared = kernels.prepare(weight, None, groups, pads, method)
    out = kernels.convolve(x, prepared, pads, "zeros", (1, 1), (1, 1), x.shape[1:], residual=x,
                           activation=(ACTIVATIONS.index("relu"), np.float32(0), np.float32(0)), into_residual=True)
    close(out, expected)
    assert out is not x and np.array_equal(x, before)


@pytest.mark.parametrize("shape", [(32, 1, 1), (24, 2, 3)])
def test_a_1x1_conv_on_a_few_pixels_is_one_numpy_product(tmp_path, shape):
    """A squeeze-and-excitation block's 1x1 convs (8 output channels: the direct kernel's by
    their shape) run as one product on a map of a few pixels, with the bias, the residual and the
    activation; on a large map they keep the direct kernel."""
    rng = np.random.default_rng(9)
    weight = rng.standard_normal((8, shape[0], 1, 1)).astype(np.float32)
    bias = rng.standard_normal(8).astype(np.float32)
    pipeline = poolcli.Pipeline.from_config({"stages": [
        {"type": "conv", "filters": save(tmp_path, "w.npy", weight), "bias": save(tmp_path, "b.npy", bias),
         "activation": "silu", "name": "fc"},
        {"type": "conv", "filters": save(tmp_path, "w2.npy", np.eye(8, dtype=np.float32)[:, :, None, None]),
         "residual": "fc", "activation": "hard_sigmoid"}]}, base_dir=tmp_path)
    first, second = pipeline.nodes[0].stage, pipeline.nodes[1].stage
    x = rng.standard_normal(shape).astype(np.float32)
    assert first._plan(x.shape)[2].method == "pointwise"
    fc = naive.conv2d(x, weight, bias)
    fc = fc / (1 + np.exp(-fc))
    close(first(x), fc)
    y = second(fc.astype(np.float32), fc.astype(np.float32))
    close(y, np.clip(0.2 * (2 * fc) + 0.5, 0, 1))
    large = rng.standard_normal((shape[0], 64, 64)).astype(np.float32)
    assert first._plan(large.shape)[2].method == kernels_methods(weight.shape)
    big = naive.conv2d(large, weight, bias)
    close(first(large), big / (1 + np.exp(-big)))


def kernels_methods(weight_shape):
    from poolcli.kernels import conv as kernels

    return kernels.methods(weight_shape, 1, (0, 0, 0, 0))[0]


def test_the_products_are_tried_where_numpy_has_openblas():
    from poolcli.kernels import blas
    from poolcli.kernels import conv as kernels

    assert blas.sgemm() is not None, "NumPy's wheels ship OpenBLAS: its sgemm must be found"
    assert kernels.methods((64, 64, 3, 3), 1, (1, 1, 1, 1))[0] == "shifted"  # a product per tap
    # Few input channels: im2col, or the direct kernel where 512-bit vectors make it faster.
    assert kernels.methods((64, 3, 7, 7), 1, (3, 3, 3, 3))[0] == ("direct" if kernels.products_min_channels() else "gemm")
    assert kernels.methods((32, 32, 3, 3), 1, (1, 1, 1, 1))[0] == ("direct" if kernels.products_min_channels() > 32 else "shifted")
    assert {"gemm", "shifted"} <= set(kernels.methods((64, 3, 7, 7), 1, (3, 3, 3, 3)))
    assert kernels.methods((64, 64, 1, 1), 1, (0, 0, 0, 0))[0] == "pointwise"
    assert kernels.methods((96, 16, 1, 1), 1, (0, 0, 0, 0))[0] == "pointwise"  # few input channels too
    assert kernels.methods((32, 1, 3, 3), 32, (1, 1, 1, 1))[0] == "depthwise"
    assert kernels.methods((64, 1, 5, 5), 32, (2, 2, 2, 2))[0] == "depthwise"  # two outputs per channel
    assert kernels.methods((32, 2, 3, 3), 16, (1, 1, 1, 1))[0] == "narrow"


def test_blas_threads_come_back_after_a_convolution():
    from poolcli.kernels import blas

    get, put = blas._thread_count()
    before = get()
    with blas.one_thread():
        assert get() == 1
        with blas.one_thread():
            assert get() == 1
        assert get() == 1
    assert get() == before
