"""Global pooling (global_avg_pool/spoc, global_max_pool/mac, gem): each kernel against its naive
twin on the edges and against PyTorch on a seeded random sweep, plus shapes, costs and errors."""

import numpy as np
import pytest

import naive
from maps import sample
from poolcli import ConfigError, Pipeline, ShapeError
from poolcli.stages import STAGES
from poolcli.stages.base import GLOBAL, ReceptiveField
from torch_oracle import needs_torch, torch

GLOBAL_TYPES = ["global_avg_pool", "global_max_pool", "gem"]


def stage(type, **params):
    return STAGES[type].model_validate({"type": type, **params})


def test_aliases_are_the_same_stages():
    assert STAGES["spoc"] is STAGES["global_avg_pool"]
    assert STAGES["mac"] is STAGES["global_max_pool"]
    pipe = Pipeline.from_config({"output": {"normalize": "none"}, "stages": [{"type": "mac"}]})
    np.testing.assert_array_equal(pipe(np.arange(8, dtype=np.float32).reshape(2, 2, 2)), [3, 7])


# --- against the naive references, on the edges --------------------------------------------------------

SHAPES = [(1, 1, 1), (3, 1, 1), (2, 1, 9), (2, 7, 1), (3, 5, 7), (1, 33, 17)]


@pytest.mark.filterwarnings("ignore:invalid value encountered")  # naive: inf - inf
@pytest.mark.parametrize("specials", [False, True])
@pytest.mark.parametrize("shape", SHAPES)
def test_global_avg_and_max_match_naive(shape, specials, rng):
    x = sample(rng, shape, specials)
    np.testing.assert_allclose(stage("global_avg_pool")(x), naive.global_avg_pool(x), rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(stage("global_max_pool")(x), naive.global_max_pool(x))


@pytest.mark.parametrize("p", [1.0, 2.0, 3.0, 0.5, 7.5])
@pytest.mark.parametrize("specials", [False, True])
@pytest.mark.parametrize("shape", SHAPES)
def test_gem_matches_naive(shape, specials, p, rng):
    x = sample(rng, shape, specials)
    np.testing.assert_allclose(stage("gem", p=p)(x), naive.gem(x, p), rtol=1e-6, atol=1e-7)


def test_gem_eps_clamps_negative_and_zero_values():
    x = np.array([[[-5.0, 0.0], [-1.0, 0.0]]], np.float32)
    np.testing.assert_allclose(stage("gem", p=2.0, eps=0.5)(x), [0.5], rtol=1e-6)
    np.testing.assert_allclose(stage("gem", p=3.0, eps=1e-6)(x), [1e-6], rtol=1e-5)


@pytest.mark.parametrize("p", [2.0, 3.0])
def test_gem_powers_beyond_float32_range_are_summed_in_float64(p):
    # cubes of 1e13 overflow float32 and cubes of 1e-14 underflow it; float64 holds both
    x = np.array([[[1e13, 3e13], [-1.0, 2e13]], [[1e-14, 2e-14], [-5.0, 3e-14]]], np.float32)
    for eps in (1e-6, 1e-15):
        np.testing.assert_allclose(stage("gem", p=p, eps=eps)(x), naive.gem(x, p, eps), rtol=1e-6)


@pytest.mark.parametrize("p", [0.3, 2.5, 7.9, 8.5])  # 8.5: past exp's range, float64 pow instead
@pytest.mark.parametrize("eps", [1e-6, 1e-30, 1e-40])  # 1e-40: not a normal float32, pow instead
def test_gem_other_powers_over_every_magnitude(p, eps, rng):
    x = (10.0 ** rng.uniform(-38, 38, (3, 9, 70)) * rng.choice([-1, 1], (3, 9, 70))).astype(np.float32)
    x[1, 4, 5] = np.nan
    with np.errstate(over="ignore"):  # naive: large powers overflow to inf, as they should
        expected = naive.gem(x, p, eps)
    np.testing.assert_allclose(stage("gem", p=p, eps=eps)(x), expected, rtol=1e-6)


def test_gem_spans_average_to_max(rng):
    x = np.abs(sample(rng, (4, 9, 11))) + 0.1
    np.testing.assert_allclose(stage("gem", p=1.0)(x), stage("global_avg_pool")(x), rtol=1e-6)
    # mean(x^p)^(1/p) lies between max * N^(-1/p) and max
    big, top = stage("gem", p=200.0)(x), stage("global_max_pool")(x)
    assert np.all(big <= top * (1 + 1e-6)) and np.all(big >= top * (9 * 11) ** (-1 / 200) * (1 - 1e-6))


def test_nan_propagates_and_infinities_stay():
    x = np.zeros((4, 3, 3), np.float32)
    x[0, 2, 2] = np.nan
    x[1, 0, 0] = np.inf
    x[2] = -np.inf
    x[3, 1, 1] = -np.inf
    np.testing.assert_array_equal(stage("global_max_pool")(x), [np.nan, np.inf, -np.inf, 0])
    np.testing.assert_array_equal(stage("global_avg_pool")(x), [np.nan, np.inf, -np.inf, -np.inf])
    gem = stage("gem")(x)
    assert np.isnan(gem[0]) and gem[1] == np.inf
    np.testing.assert_allclose(gem[2:], [1e-6, 1e-6], rtol=1e-5)  # -inf and 0 clamp to eps


def test_mean_of_a_large_map_keeps_precision():
    # 4M equal values: a float32 running sum would drift by percents; float64 does not.
    x = np.full((1, 2048, 2048), 0.1, np.float32)
    np.testing.assert_allclose(stage("global_avg_pool")(x), [0.1], rtol=1e-6)
    np.testing.assert_allclose(stage("gem", p=3.0)(x), [0.1], rtol=1e-6)


# --- against PyTorch, on a seeded random sweep -----------------------------------------------------------

CASES = 150


@needs_torch
def test_global_pools_match_torch_sweep():
    rng = np.random.default_rng(11)
    for case in range(CASES):
        shape = (int(rng.integers(1, 5)), int(rng.integers(1, 40)), int(rng.integers(1, 40)))
        x = sample(rng, shape, specials=case % 4 == 0)
        t = torch.from_numpy(x)
        p = float(rng.uniform(0.5, 6.0))
        eps = float(rng.choice([1e-6, 1e-3, 0.1]))
        message = f"{shape} p={p} eps={eps}"
        np.testing.assert_allclose(stage("spoc")(x), t.mean(dim=(1, 2)).numpy(), rtol=1e-5, atol=1e-6, err_msg=message)
        np.testing.assert_array_equal(stage("mac")(x), t.amax(dim=(1, 2)).numpy(), err_msg=message)
        height, width = shape[1:]
        expected = torch.nn.functional.avg_pool2d(t[None].clamp(min=eps).pow(p), (height, width)).pow(1.0 / p)
        np.testing.assert_allclose(stage("gem", p=p, eps=eps)(x), expected.reshape(-1).numpy(), rtol=1e-5,
                                   err_msg=message)


# --- shapes, costs, errors ------------------------------------------------------------------------------


@pytest.mark.parametrize("type", GLOBAL_TYPES)
def test_contract(type, rng):
    x = sample(rng, (3, 6, 5))
    before = x.copy()
    pool = stage(type)
    out = pool(x)
    assert out.dtype == np.float32 and out.shape == pool.output_shape(x.shape) == (3,)
    np.testing.assert_array_equal(x, before)
    assert pool.makes_vector
    assert pool.receptive_field(ReceptiveField(), x.shape) == GLOBAL


def test_trace_and_costs():
    pipe = Pipeline.from_config({"stages": [{"type": "max_pool", "kernel_size": 2}, {"type": "gem", "p": 3}]})
    records = pipe.trace((3, 8, 10))
    assert records[-1].out_shape == (3,)
    assert records[-1].macs == 2 * 3 * 4 * 5  # a power and an add per element
    assert records[-1].receptive_field is GLOBAL
    assert pipe.kind == "descriptors"
    assert stage("spoc").macs((3, 8, 10)) == stage("mac").macs((3, 8, 10)) == 240


def test_global_pools_need_a_map():
    with pytest.raises(ShapeError, match=r"stage 'g' \(gem\): gem needs a \(C, H, W\) feature map"):
        Pipeline.from_config({"stages": [{"type": "spoc"}, {"type": "gem", "name": "g"}]}).trace((3, 4, 4))


@pytest.mark.parametrize("raw, message", [
    ({"type": "gem", "p": 0}, r"stages\[0\] \(gem\)\.p: must be > 0"),
    ({"type": "gem", "p": float("inf")}, r"\.p: input should be a finite number"),  # no max by GeM: use mac
    ({"type": "gem", "eps": -1}, r"\.eps: must be > 0"),
    ({"type": "gem", "q": 3}, r"unknown key 'q'"),
    ({"type": "spoc", "p": 3}, r"unknown key 'p'"),
    ({"type": "global_mean_pool"}, r"unknown stage type 'global_mean_pool' \(did you mean 'global_avg_pool'\?\)"),
])
def test_config_errors(raw, message):
    with pytest.raises(ConfigError, match=message):
        Pipeline.from_config({"stages": [raw]})
