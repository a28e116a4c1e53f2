"""Property tests for every registered stage (issue 6): random shapes (1x1 maps, kernels equal to
the map), random parameters and random values (NaN, +-inf, denormals, -0, huge and tiny
numbers) against the slow references of ``tests/naive.py``, and against PyTorch where it has the
operator. Examples are drawn deterministically (the ``ci`` profile of ``conftest.py``)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

import naive
from poolcli.errors import ShapeError
from poolcli.stages import STAGES
from torch_oracle import F, needs_torch, torch

EXAMPLES = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SPECIALS = [math.nan, math.inf, -math.inf, 0.0, -0.0, 1e-40, -1e-40, 1.4e-45, 1e-30, -1e-30]


@st.composite
def maps(draw, channels=(1, 3), side=(1, 9), magnitude=100.0, specials=True, shape=None):
    """A float32 (C, H, W) map: values in [-magnitude, magnitude] (denormals and -0 included),
    and in half of the maps a few NaN, infinities, denormals and tiny or huge values."""
    if shape is None:
        shape = (draw(st.integers(*channels)), draw(st.integers(*side)), draw(st.integers(*side)))
    bound = float(np.float32(magnitude))
    x = draw(arrays(np.float32, shape, elements=st.floats(-bound, bound, width=32)))
    if specials and draw(st.booleans()):
        flat = x.reshape(-1)
        huge = [magnitude * 1e3, -magnitude * 1e3] if magnitude <= 1e30 else [3e38, -3e38]
        for _ in range(draw(st.integers(1, max(1, flat.size // 4)))):
            flat[draw(st.integers(0, flat.size - 1))] = draw(st.sampled_from(SPECIALS + huge))
    return x


def stage(type_, **params):
    return STAGES[type_].model_validate({"type": type_, **params})


def scale(*xs) -> float:
    """The largest finite magnitude in the inputs (1 if none): the absolute slack of sums."""
    finite = [np.abs(x[np.isfinite(x)]) for x in xs]
    return max([float(f.max()) for f in finite if f.size] + [1.0])


def assert_close(actual, expected, rtol, atol=0.0):
    """Same NaN and infinity positions, finite values within rtol and atol."""
    actual, expected = np.asarray(actual), np.asarray(expected, np.float32)
    assert actual.shape == expected.shape and actual.dtype == np.float32
    np.testing.assert_array_equal(np.isnan(actual), np.isnan(expected))
    np.testing.assert_array_equal(np.isposinf(actual), np.isposinf(expected))
    np.testing.assert_array_equal(np.isneginf(actual), np.isneginf(expected))
    finite = np.isfinite(expected)
    np.testing.assert_allclose(actual[finite], expected[finite], rtol=rtol, atol=atol)


def torch_or_none(function, *args, **kwargs):
    """torch's result as NumPy, or None where torch refuses the parameters."""
    try:
        out = function(*args, **kwargs)
    except RuntimeError:
        return None
    return (out[0] if isinstance(out, tuple) else out)[0].numpy()


def tensor(x):
    return torch.from_numpy(np.ascontiguousarray(x))[None]


@st.composite
def windows(draw, x, padding=True, dilation=True):
    """kernel_size, stride, padding, dilation and ceil_mode that fit the map ``x``, kernels as
    large as the map included."""
    _, height, width = x.shape
    d = (draw(st.integers(1, 2)), draw(st.integers(1, 2))) if dilation else (1, 1)
    k = tuple(draw(st.integers(1, max(1, (size - 1) // di + 1) + 1)) for size, di in zip((height, width), d))
    params = {"kernel_size": list(k), "ceil_mode": draw(st.booleans())}
    if draw(st.booleans()):
        params["stride"] = [draw(st.integers(1, 3)), draw(st.integers(1, 3))]
    if padding:
        params["padding"] = [draw(st.integers(0, ((ki - 1) * di + 1) // 2)) for ki, di in zip(k, d)]
    if dilation:
        params["dilation"] = list(d)
    return params


def build(type_, x, params):
    """The stage, or an assumption failure where the window does not fit the map."""
    s = stage(type_, **params)
    try:
        s.output_shape(x.shape)
    except ShapeError:
        assume(False)
    return s


# --- windowed pooling -------------------------------------------------------------------------------


@EXAMPLES
@given(st.data())
def test_max_pool(data):
    x = data.draw(maps(magnitude=3e38))
    params = data.draw(windows(x))
    s = build("max_pool", x, params)
    expected, expected_indices = naive.max_pool(x, **params, return_indices=True)
    out, indices = s.pool_with_indices(x)
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_array_equal(indices, expected_indices)
    if torch is not None:
        reference = torch_or_none(F.max_pool2d, tensor(x), **params)
        if reference is not None:
            np.testing.assert_array_equal(out, reference)


@EXAMPLES
@given(st.data())
def test_avg_pool(data):
    x = data.draw(maps(magnitude=1e30))
    params = data.draw(windows(x, dilation=False))
    params["count_include_pad"] = data.draw(st.booleans())
    if data.draw(st.booleans()):
        params["divisor_override"] = data.draw(st.integers(1, 6))
    out = build("avg_pool", x, params)(x)
    assert_close(out, naive.avg_pool(x, **params), rtol=1e-5, atol=1e-6 * scale(x))
    if torch is not None:
        reference = torch_or_none(F.avg_pool2d, tensor(x), **params)
        if reference is not None:
            assert_close(out, reference, rtol=1e-5, atol=1e-6 * scale(x))


@EXAMPLES
@given(st.data())
def test_lp_pool(data):
    x = data.draw(maps(magnitude=1e3))
    params = data.draw(windows(x, padding=False, dilation=False))
    params["p"] = data.draw(st.sampled_from([0.5, 1.0, 1.5, 2.0, 3.0, 4.5]))
    out = build("lp_pool", x, params)(x)
    expected = naive.lp_pool(x, **params)
    assert_close(out, expected, rtol=2e-5, atol=1e-6 * scale(x))
    if torch is not None and np.isfinite(x).all() and not params["ceil_mode"]:
        nonnegative = np.abs(x)
        reference = torch_or_none(F.lp_pool2d, tensor(nonnegative), params["p"], params["kernel_size"],
                                  params.get("stride"))
        if reference is not None:
            assert_close(build("lp_pool", x, params)(nonnegative), reference, rtol=1e-3, atol=1e-5 * scale(x))


@EXAMPLES
@given(maps(magnitude=1e30), st.data())
def test_adaptive_pools(x, data):
    size = [data.draw(st.one_of(st.none(), st.integers(1, 12))) for _ in range(2)]
    h, w = (n if n is not None else full for n, full in zip(size, x.shape[1:]))
    out_max = stage("adaptive_max_pool", output_size=size)(x)
    out_avg = stage("adaptive_avg_pool", output_size=size)(x)
    np.testing.assert_array_equal(out_max, naive.adaptive_pool(x, size, "max"))
    assert_close(out_avg, naive.adaptive_pool(x, size, "avg"), rtol=1e-5, atol=1e-6 * scale(x))
    if torch is not None:
        np.testing.assert_array_equal(out_max, torch_or_none(F.adaptive_max_pool2d, tensor(x), (h, w)))
        assert_close(out_avg, torch_or_none(F.adaptive_avg_pool2d, tensor(x), (h, w)), rtol=1e-5,
                     atol=1e-6 * scale(x))


@EXAMPLES
@given(maps(magnitude=1e30), st.lists(st.integers(1, 6), min_size=1, max_size=3), st.sampled_from(["max", "avg"]))
def test_spp(x, levels, pool):
    out = stage("spp", levels=levels, pool=pool)(x)
    expected = naive.spp(x, levels, pool)
    if pool == "max":
        np.testing.assert_array_equal(out, expected)
    else:
        assert_close(out, expected, rtol=1e-5, atol=1e-6 * scale(x))


@EXAMPLES
@given(st.data())
def test_fractional_max_pool(data):
    x = data.draw(maps(magnitude=3e38))
    _, height, width = x.shape
    k = [data.draw(st.integers(1, height)), data.draw(st.integers(1, width))]
    size = [data.draw(st.integers(1, height - k[0] + 1)), data.draw(st.integers(1, width - k[1] + 1))]
    samples = [data.draw(st.floats(0, float(np.nextafter(np.float32(1), np.float32(0))), width=32)) for _ in range(2)]
    out = stage("fractional_max_pool", kernel_size=k, output_size=size, samples=samples)(x)
    per_channel = np.tile(np.array(samples, np.float32), (x.shape[0], 1))
    np.testing.assert_array_equal(out, naive.fractional_max_pool(x, k, size, per_channel))
    if torch is not None:
        torch_samples = torch.from_numpy(np.ascontiguousarray(per_channel[:, ::-1]))[None]
        reference = torch_or_none(F.fractional_max_pool2d, tensor(x), k, output_size=size,
                                  _random_samples=torch_samples)
        np.testing.assert_array_equal(out, reference)


@EXAMPLES
@given(st.data())
def test_stochastic_pool(data):
    x = data.draw(maps(magnitude=1e15))
    params = data.draw(windows(x, padding=False, dilation=False))
    params.pop("ceil_mode")
    mode = data.draw(st.sampled_from(["eval", "train"]))
    s = build("stochastic_pool", x, {**params, "mode": mode, "seed": data.draw(st.integers(0, 99))})
    out = s(x)
    u = s.draws(out.shape) if mode == "train" else None
    expected = naive.stochastic_pool(x, params["kernel_size"], params.get("stride"), mode, u)
    assert_close(out, expected, rtol=1e-5)


@EXAMPLES
@given(st.data())
def test_soft_pool(data):
    x = data.draw(maps(magnitude=1e15))
    params = data.draw(windows(x, padding=False, dilation=False))
    params.pop("ceil_mode")
    out = build("soft_pool", x, params)(x)
    assert_close(out, naive.soft_pool(x, params["kernel_size"], params.get("stride")), rtol=2e-5,
                 atol=1e-6 * scale(x))


# --- detection, strips, unpooling, resampling, fusion -------------------------------------------------------


@EXAMPLES
@given(st.data())
def test_center_pool(data):
    x = data.draw(maps(magnitude=1e37))
    if data.draw(st.booleans()):
        np.testing.assert_array_equal(stage("center_pool", mode="cross")(x), naive.center_pool(x, "cross"))
        return
    params = data.draw(windows(x, padding=False, dilation=False))
    params.pop("ceil_mode")
    out = build("center_pool", x, {"mode": "window", **params})(x)
    np.testing.assert_array_equal(out, naive.center_pool(x, "window", params["kernel_size"], params.get("stride")))


@EXAMPLES
@given(maps(magnitude=1e37), st.sampled_from(["top_left", "bottom_right", "top_right", "bottom_left"]), st.booleans())
def test_corner_pool(x, corner, cascade):
    out = stage("corner_pool", corner=corner, cascade=cascade)(x)
    np.testing.assert_array_equal(out, naive.corner_pool(x, corner, cascade))


@EXAMPLES
@given(maps(magnitude=1e30), st.sampled_from(["avg", "max"]), st.sampled_from(["add", "gate"]))
def test_strip_pool(x, reduce, fuse):
    out = stage("strip_pool", reduce=reduce, fuse=fuse)(x)
    assert_close(out, naive.strip_pool(x, reduce, fuse), rtol=2e-5, atol=1e-6 * scale(x))


@EXAMPLES
@given(st.data())
def test_max_unpool(data):
    from poolcli.stages.pool import MaxPool

    pool_input = data.draw(maps(side=(2, 9), magnitude=3e38))
    params = data.draw(windows(pool_input))
    pool = build("max_pool", pool_input, {**params, "name": "p"})
    pooled_shape = pool.output_shape(pool_input.shape)
    y = data.draw(maps(shape=pooled_shape, magnitude=3e38))
    unpool = stage("max_unpool", indices="p", output_size=list(pool_input.shape[1:]))
    unpool.link({"p": (pool, ("input",))})
    try:
        out_hw = unpool.output_shape(y.shape, pool_input.shape)[1:]
    except ShapeError:
        assume(False)
    out = unpool(y, pool_input)
    _, indices = naive.max_pool(pool_input, **params, return_indices=True)
    np.testing.assert_array_equal(out, naive.max_unpool(y, indices, out_hw))
    assert isinstance(pool, MaxPool)


@EXAMPLES
@given(st.data())
def test_upsample(data):
    x = data.draw(maps(magnitude=1e30))
    mode = data.draw(st.sampled_from(["nearest", "bilinear"]))
    if data.draw(st.booleans()):
        params = {"size": [data.draw(st.integers(1, 15)), data.draw(st.integers(1, 15))]}
    else:
        params = {"scale_factor": data.draw(st.one_of(st.integers(1, 3), st.sampled_from([0.5, 1.5, 2.5, 0.75])))}
    s = build("upsample", x, {**params, "mode": mode})
    out = s(x)
    assert_close(out, naive.upsample(x, mode=mode, **params), rtol=1e-5, atol=1e-6 * scale(x))
    if torch is not None:
        reference = torch_or_none(F.interpolate, tensor(x), mode=mode, **params)
        if reference is not None:
            assert_close(out, reference, rtol=1e-5, atol=1e-6 * scale(x))


@EXAMPLES
@given(st.data())
def test_pyramid_fuse(data):
    channels = data.draw(st.integers(1, 3))
    xs = [data.draw(maps(channels=(channels, channels), magnitude=1e30)) for _ in range(data.draw(st.integers(1, 3)))]
    size = [data.draw(st.integers(1, 6)), data.draw(st.integers(1, 6))]
    pool, fuse = data.draw(st.sampled_from(["max", "avg"])), data.draw(st.sampled_from(["max", "sum", "mean"]))
    out = stage("pyramid_fuse", **{"from": ["a"]}, output_size=size, pool=pool, fuse=fuse)(*xs)
    assert_close(out, naive.pyramid_fuse(xs, size, pool, fuse), rtol=2e-5, atol=1e-6 * scale(*xs))


@EXAMPLES
@given(st.data())
def test_concat(data):
    height, width = data.draw(st.integers(1, 6)), data.draw(st.integers(1, 6))
    xs = [data.draw(maps(shape=(data.draw(st.integers(1, 3)), height, width), magnitude=3e38)) for _ in range(3)]
    np.testing.assert_array_equal(stage("concat", **{"from": ["a"]})(*xs), np.concatenate(xs))
    vectors = [x.reshape(-1) for x in xs]
    np.testing.assert_array_equal(stage("concat", **{"from": ["a"]})(*vectors), np.concatenate(vectors))


# --- convolution and activations ----------------------------------------------------------------------


@st.composite
def conv_cases(draw):
    x = draw(maps(magnitude=1e3))
    channels, height, width = x.shape
    bank = draw(st.sampled_from(["random", "random", "sobel", "laplacian", "box", "gaussian", "identity"]))
    params = {"filters": bank}
    if bank == "random":
        groups = draw(st.sampled_from([g for g in (1, 2, 3) if channels % g == 0]))
        params.update(out_channels=groups * draw(st.integers(1, 2)), seed=draw(st.integers(0, 9)), groups=groups)
    else:
        params["channels"] = draw(st.sampled_from(["mean", "each"]))
    if bank in ("random", "box", "identity"):
        params["kernel_size"] = [draw(st.integers(1, height + 1)), draw(st.integers(1, width + 1))]
    elif bank == "gaussian":
        params["sigma"] = draw(st.sampled_from([0.3, 0.5, 1.0]))
    params["dilation"] = [draw(st.integers(1, 2)), draw(st.integers(1, 2))]
    padding = draw(st.sampled_from(["int", "pair", "same", "valid"]))
    if padding == "same":
        params["padding"] = "same"
    else:
        params["stride"] = [draw(st.integers(1, 3)), draw(st.integers(1, 3))]
        if padding != "valid":
            params["padding"] = [draw(st.integers(0, 3)), draw(st.integers(0, 3))]
    params["padding_mode"] = draw(st.sampled_from(["zeros", "reflect", "replicate", "circular"]))
    params["activation"] = draw(st.sampled_from(["none", "relu", "abs", "square", "sigmoid", "tanh"]))
    if draw(st.booleans()):
        params["bias"] = "bias"  # filled in once the output channels are known
    return x, params


@EXAMPLES
@given(conv_cases())
def test_conv(case):
    x, params = case
    bias = params.pop("bias", None)
    s = build("conv", x, params)
    out_channels = s.output_shape(x.shape)[0]
    if bias:
        params["bias"] = [float(v) for v in np.linspace(-1, 1, out_channels)]
        s = build("conv", x, params)
    out = s(x)
    geometry = dict(stride=tuple(params.get("stride", (1, 1))), padding=_naive_padding(params.get("padding", 0)),
                    padding_mode=params["padding_mode"], dilation=tuple(params["dilation"]))
    if params["filters"] == "random":
        expected = naive.conv2d(x, s.weights(x.shape[0]), params.get("bias"), groups=params["groups"], **geometry)
    else:
        expected = naive.conv_bank(x, s.bank(), params["channels"], **geometry)
        if params.get("bias"):
            expected = expected + np.asarray(params["bias"])[:, None, None]
    expected = naive.activation(expected.astype(np.float32), params["activation"])
    weights = np.abs(s.weights(x.shape[0] if s.groups_for(x.shape[0]) > 1 or params["filters"] == "random" else 1))
    taps = float(weights.sum(axis=(1, 2, 3)).max()) if weights.size else 1.0
    tolerance = 1e-5 * scale(x) * max(taps, 1.0)
    if params["activation"] == "square":
        tolerance *= 2 * scale(x) * max(taps, 1.0)
    assert_close(out, expected, rtol=1e-4, atol=tolerance)


def _naive_padding(padding):
    if isinstance(padding, str):
        return padding
    return tuple(padding) if isinstance(padding, list) else padding


@EXAMPLES
@given(maps(magnitude=1e30), st.sampled_from(["relu", "abs", "square", "sigmoid", "tanh", "sign_sqrt"]))
def test_activation(x, fn):
    out = stage("activation", fn=fn)(x)
    assert_close(out, naive.activation(x, fn), rtol=2e-6, atol=1e-37)
    if torch is not None and fn != "sign_sqrt":
        reference = getattr(torch, fn)(torch.from_numpy(x)).numpy()
        assert_close(out, reference, rtol=2e-6, atol=1e-37)


# --- global pooling --------------------------------------------------------------------------------


@EXAMPLES
@given(maps(magnitude=1e30))
def test_global_avg_and_max_pool(x):
    for name in ("global_avg_pool", "spoc"):
        assert_close(stage(name)(x), naive.global_avg_pool(x), rtol=1e-5, atol=1e-6 * scale(x))
    for name in ("global_max_pool", "mac"):
        np.testing.assert_array_equal(stage(name)(x), naive.global_max_pool(x))
    if torch is not None:
        t = torch.from_numpy(x)
        assert_close(stage("spoc")(x), t.mean(dim=(1, 2)).numpy(), rtol=1e-5, atol=1e-6 * scale(x))
        np.testing.assert_array_equal(stage("mac")(x), t.amax(dim=(1, 2)).numpy())


@EXAMPLES
@given(maps(magnitude=1e3), st.sampled_from([1.0, 2.0, 3.0, 4.5]), st.sampled_from([1e-6, 1e-3, 0.5]))
def test_gem(x, p, eps):
    out = stage("gem", p=p, eps=eps)(x)
    assert_close(out, naive.gem(x, p, eps), rtol=2e-5)
    if torch is not None:
        t = torch.from_numpy(x)[None]
        reference = F.avg_pool2d(t.clamp(min=eps).pow(p), (x.shape[1], x.shape[2])).pow(1.0 / p).reshape(-1).numpy()
        assert_close(out, reference, rtol=1e-4)


@EXAMPLES
@given(maps(magnitude=1e15), st.integers(1, 4))
def test_rmac(x, levels):
    assert_close(stage("rmac", levels=levels)(x), naive.rmac(x, levels), rtol=1e-5, atol=1e-6)


@EXAMPLES
@given(maps(magnitude=10.0), st.one_of(st.none(), st.sampled_from([0.1, 1.0, 5.0])), st.integers(1, 3),
       st.sampled_from(["mean", "max"]))
def test_hopfield_pool(x, beta, steps, query):
    s = stage("hopfield_pool", beta=beta, steps=steps, query=query)
    assert_close(s(x), naive.hopfield_pool(x, beta, steps, query), rtol=1e-4, atol=1e-5 * scale(x))


@EXAMPLES
@given(maps(magnitude=3e38))
def test_flatten(x):
    np.testing.assert_array_equal(stage("flatten")(x), x.reshape(-1))


@EXAMPLES
@given(st.data())
def test_whiten(data):
    from poolcli.stages.whiten import Whiten

    dim = data.draw(st.integers(1, 8))
    x = data.draw(maps(shape=(1, 1, dim), magnitude=1e15)).reshape(-1)
    mean = data.draw(arrays(np.float64, dim, elements=st.floats(-1, 1)))
    projection = data.draw(arrays(np.float64, (data.draw(st.integers(1, dim)), dim), elements=st.floats(-2, 2)))
    out = Whiten.from_arrays(mean, projection)(x)
    expected = naive.whiten(x, mean, projection)
    assert_close(out, expected, rtol=1e-5, atol=1e-6)


# --- layers of trained networks -------------------------------------------------------------------


@EXAMPLES
@given(maps(magnitude=1e15), st.sampled_from(["leaky_relu", "elu", "clip", "hard_sigmoid", "hard_swish", "silu", "gelu",
                                               "gelu_tanh", "erf", "exp", "softplus", "prelu"]))
def test_trained_network_activations(x, fn):
    params = {"clip": {"min": -1.0, "max": 2.0}, "prelu": {"slope": 0.3}, "leaky_relu": {"alpha": 0.2}}.get(fn, {})
    with np.errstate(all="ignore"):
        out = stage("activation", fn=fn, **params)(x)
    assert_close(out, naive.activation(x, fn, **params), rtol=3e-6, atol=1e-37)


@EXAMPLES
@given(st.data(), st.sampled_from([("add", "+"), ("sub", "-"), ("mul", "*"), ("div", "/")]))
def test_arithmetic(data, op):
    x = data.draw(maps(magnitude=1e15))
    c = x.shape[0]
    other_shape = data.draw(st.sampled_from([x.shape, (c, 1, 1), (1, *x.shape[1:]), (1, 1, 1), (1,)]))
    y = data.draw(maps(shape=other_shape, magnitude=1e15)) if len(other_shape) == 3 else \
        data.draw(arrays(np.float32, other_shape, elements=st.floats(-100, 100, width=32)))
    name, symbol = op
    with np.errstate(all="ignore"):
        two = stage(name, **{"from": ["a", "b"]})(x, y) if len(other_shape) == 3 else None
        one = stage(name, value=y.tolist())(x) if np.isfinite(y).all() else None
        if two is not None:
            np.testing.assert_array_equal(two, naive.arithmetic(symbol, x, y))
        if one is not None:
            np.testing.assert_array_equal(one, naive.arithmetic(symbol, x, y))


@EXAMPLES
@given(maps(magnitude=1e4, specials=False), st.floats(1e-6, 1e-2))
def test_batch_and_layer_norm(x, eps):
    c = x.shape[0]
    stats = {"weight": np.linspace(-2, 2, c), "bias": np.linspace(1, -1, c), "mean": np.linspace(-5, 5, c),
             "var": np.linspace(0.5, 3, c)}
    out = stage("batch_norm", eps=eps, **{k: v.tolist() for k, v in stats.items()})(x)
    assert_close(out, naive.batch_norm(x, **stats, eps=eps), rtol=1e-5, atol=1e-5 * scale(x))
    out = stage("layer_norm", eps=eps, weight=stats["weight"].tolist(), bias=stats["bias"].tolist())(x)
    assert_close(out, naive.layer_norm(x, stats["weight"], stats["bias"], eps), rtol=1e-4, atol=1e-4)


@EXAMPLES
@given(maps(channels=(1, 6), magnitude=1e3, specials=False))
def test_softmax(x):
    assert_close(stage("softmax")(x), naive.softmax(x), rtol=1e-5, atol=1e-7)


@EXAMPLES
@given(st.data())
def test_linear_and_slice(data):
    length = data.draw(st.integers(1, 40))
    x = data.draw(arrays(np.float32, length, elements=st.floats(-1e3, 1e3, width=32)))
    weight = data.draw(arrays(np.float32, (data.draw(st.integers(1, 9)), length), elements=st.floats(-2, 2, width=32)))
    out = stage("linear", weight=weight.tolist())(x)
    assert_close(out, naive.linear(x, weight), rtol=1e-4, atol=1e-4 * scale(x) * length)
    start, end = data.draw(st.integers(-length, length - 1)), data.draw(st.none() | st.integers(-length, length))
    if len(x[start:end]):
        np.testing.assert_array_equal(stage("slice", start=start, end=end)(x), x[start:end])


@EXAMPLES
@given(st.data())
def test_resize(data):
    x = data.draw(maps(magnitude=1e6))
    mode = data.draw(st.sampled_from(["nearest", "linear"]))
    coordinate_mode = data.draw(st.sampled_from(["half_pixel", "asymmetric", "align_corners", "pytorch_half_pixel",
                                                 "half_pixel_symmetric", "tf_half_pixel_for_nn"]))
    nearest_mode = data.draw(st.sampled_from(["round_prefer_floor", "round_prefer_ceil", "floor", "ceil"]))
    size = [data.draw(st.integers(1, 12)), data.draw(st.integers(1, 12))]
    s = stage("resize", size=size, mode=mode, coordinate_mode=coordinate_mode, nearest_mode=nearest_mode)
    out = s(x)
    expected = naive.resize(x, size, s._scales(*x.shape[1:]), mode, coordinate_mode, nearest_mode)
    if mode == "nearest":
        np.testing.assert_array_equal(out, expected.astype(np.float32))
    else:
        finite = np.isfinite(x).all()
        assume(finite)
        assert_close(out, expected, rtol=1e-5, atol=1e-5 * scale(x))


@EXAMPLES
@given(st.data())
def test_conv_transpose(data):
    x = data.draw(maps(channels=(1, 4), side=(1, 6), magnitude=1e3, specials=False))
    groups = data.draw(st.sampled_from([g for g in (1, 2, 4) if x.shape[0] % g == 0]))
    kernel = (data.draw(st.integers(1, 4)), data.draw(st.integers(1, 4)))
    stride, dilation = data.draw(st.integers(1, 3)), data.draw(st.integers(1, 2))
    output_padding = data.draw(st.integers(0, max(stride, dilation) - 1))
    padding = [data.draw(st.integers(0, k - 1)) for k in (*kernel, *kernel)]
    weight = np.random.default_rng(data.draw(st.integers(0, 1000))).standard_normal(
        (x.shape[0], data.draw(st.integers(1, 3)), *kernel)).astype(np.float32)
    s = stage("conv_transpose", filters=weight.tolist(), stride=stride, dilation=dilation, padding=padding,
              output_padding=output_padding, groups=groups)
    try:
        shape = s.output_shape(x.shape)
    except ShapeError:
        return
    expected = naive.conv_transpose2d(x, weight, None, stride, padding, output_padding, dilation, groups)
    assert shape == expected.shape
    assert_close(s(x), expected, rtol=1e-4, atol=1e-4 * scale(x) * float(np.abs(weight).sum()))


# --- every registered stage is covered -------------------------------------------------------------

COVERED = {
    "activation", "adaptive_avg_pool", "adaptive_max_pool", "avg_pool", "center_pool", "concat", "conv",
    "corner_pool", "flatten", "fractional_max_pool", "gem", "global_avg_pool", "global_max_pool", "hopfield_pool",
    "lp_pool", "mac", "max_pool", "max_unpool", "pyramid_fuse", "rmac", "soft_pool", "spoc", "spp",
    "stochastic_pool", "strip_pool", "upsample", "whiten",
    "add", "sub", "mul", "div", "batch_norm", "layer_norm", "softmax", "linear", "slice", "resize", "conv_transpose",
}


def test_every_registered_stage_has_a_property_test():
    assert set(STAGES) <= COVERED, f"add a property test for {sorted(set(STAGES) - COVERED)}"


# --- large maps against PyTorch ------------------------------------------------------------------------


@needs_torch
@settings(max_examples=8, deadline=None)
@given(st.data())
def test_large_maps_against_torch(data):
    """Maps of up to 3 x 384 x 384 (too large for the loops of naive.py) against torch."""
    shape = (data.draw(st.integers(1, 3)), data.draw(st.integers(100, 384)), data.draw(st.integers(100, 384)))
    x = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1))).standard_normal(shape).astype(np.float32)
    x.reshape(-1)[:: data.draw(st.integers(500, 5000))] = np.nan
    params = data.draw(windows(x))
    max_out = build("max_pool", x, params)(x)
    reference = torch_or_none(F.max_pool2d, tensor(x), **params)
    if reference is not None:
        np.testing.assert_array_equal(max_out, reference)
    params.pop("dilation")
    params["padding"] = [min(p, k // 2) for p, k in zip(params["padding"], params["kernel_size"])]
    assert_close(build("avg_pool", x, params)(x), F.avg_pool2d(tensor(x), **params)[0].numpy(), rtol=1e-5, atol=1e-5)
    size = (data.draw(st.integers(1, 50)), data.draw(st.integers(1, 50)))
    np.testing.assert_array_equal(stage("adaptive_max_pool", output_size=list(size))(x),
                                  F.adaptive_max_pool2d(tensor(x), size)[0].numpy())
    finite = np.nan_to_num(x, nan=0.5)
    weights = stage("conv", filters="random", out_channels=4, kernel_size=5, seed=1, padding=2)
    assert_close(weights(finite), F.conv2d(tensor(finite), torch.from_numpy(weights.weights(shape[0])), padding=2)[0].numpy(),
                 rtol=1e-4, atol=1e-4)
