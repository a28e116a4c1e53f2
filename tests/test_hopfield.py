"""Hopfield pooling: the kernel against its naive twin and against the update written with
PyTorch, its limits in beta, stability for large scores, shapes, costs and errors."""

import math

import numpy as np
import pytest

import naive
from poolcli import ConfigError, Pipeline
from poolcli.stages import STAGES
from poolcli.stages.base import GLOBAL, ReceptiveField
from torch_oracle import needs_torch, torch


def hopfield(**params):
    return STAGES["hopfield_pool"].model_validate({"type": "hopfield_pool", **params})


def torch_hopfield(x, beta, steps, query):
    """``xi = X^T softmax(beta X xi)`` with torch, in float64, X (N x C) the map's positions."""
    X = torch.from_numpy(x).double().reshape(x.shape[0], -1).T
    xi = X.mean(dim=0) if query == "mean" else X.amax(dim=0)
    for _ in range(steps):
        xi = X.T @ torch.softmax(beta * (X @ xi), dim=0)
    return xi.float().numpy()


SHAPES = [(1, 1, 1), (3, 1, 1), (1, 4, 4), (2, 1, 9), (2, 7, 1), (5, 3, 4), (8, 13, 11), (16, 6, 5)]


@pytest.mark.parametrize("query", ["mean", "max"])
@pytest.mark.parametrize("beta, steps", [(None, 1), (0.3, 2), (2.0, 3)])
@pytest.mark.parametrize("shape", SHAPES)
def test_matches_naive(shape, beta, steps, query, rng):
    x = rng.standard_normal(shape).astype(np.float32)
    out = hopfield(beta=beta, steps=steps, query=query)(x)
    np.testing.assert_allclose(out, naive.hopfield_pool(x, beta, steps, query), rtol=1e-5, atol=1e-6)


@needs_torch
def test_matches_torch_sweep():
    rng = np.random.default_rng(5)
    for _ in range(60):
        shape = (int(rng.integers(1, 17)), int(rng.integers(1, 20)), int(rng.integers(1, 20)))
        beta, steps = float(rng.uniform(0.05, 4.0)), int(rng.integers(1, 5))
        query = str(rng.choice(["mean", "max"]))
        x = (rng.standard_normal(shape) * rng.uniform(0.1, 3.0)).astype(np.float32)
        np.testing.assert_allclose(hopfield(beta=beta, steps=steps, query=query)(x),
                                   torch_hopfield(x, beta, steps, query), rtol=1e-5, atol=1e-6,
                                   err_msg=f"{shape} beta={beta} steps={steps} query={query}")


def test_default_beta_is_one_over_sqrt_c(rng):
    x = rng.standard_normal((9, 5, 6)).astype(np.float32)
    np.testing.assert_array_equal(hopfield()(x), hopfield(beta=1 / 3)(x))
    assert hopfield().inverse_temperature(16) == 0.25 and hopfield(beta=2.0).inverse_temperature(16) == 2.0


def test_small_beta_gives_the_mean_and_large_beta_the_closest_pattern(rng):
    x = rng.standard_normal((4, 6, 7)).astype(np.float32)
    np.testing.assert_allclose(hopfield(beta=1e-9)(x), x.mean(axis=(1, 2)), rtol=1e-5, atol=1e-6)
    patterns = x.reshape(4, -1).T
    closest = patterns[np.argmax(patterns @ patterns.mean(axis=0))]
    np.testing.assert_allclose(hopfield(beta=1e4)(x), closest, rtol=1e-6)


def test_max_query_starts_from_the_channel_maxima():
    # Patterns (1, 0), (0, 1), (2, -2). The max query (2, 1) scores them 2, 1, 2: the first and
    # the last share the weight. The mean query (1, -1/3) scores the last highest.
    x = np.array([[1, 0, 2], [0, 1, -2]], np.float32)[:, None, :]
    np.testing.assert_allclose(hopfield(beta=50.0, query="max")(x), [1.5, -1.0], atol=1e-6)
    np.testing.assert_allclose(hopfield(beta=50.0, query="mean")(x), [2.0, -2.0], atol=1e-6)


def test_large_scores_stay_finite(rng):
    # beta * X xi reaches ~1e6: an unstabilised exp overflows; subtracting the max does not.
    x = (rng.standard_normal((3, 8, 8)) * 1000).astype(np.float32)
    out = hopfield(beta=1.0, steps=2)(x)
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out, naive.hopfield_pool(x, 1.0, 2), rtol=1e-5)


def test_steps_move_towards_a_fixed_point(rng):
    x = rng.standard_normal((6, 8, 8)).astype(np.float32)
    far, near = hopfield(beta=2.0, steps=40)(x), hopfield(beta=2.0, steps=41)(x)
    np.testing.assert_allclose(far, near, atol=1e-5)
    assert not np.allclose(hopfield(beta=2.0, steps=1)(x), far, atol=1e-3)


def test_nan_propagates():
    x = np.ones((2, 3, 3), np.float32)
    x[0, 1, 1] = np.nan
    assert np.isnan(hopfield()(x)).all() and np.isnan(hopfield(query="max")(x)).all()


# --- shapes, costs, errors ----------------------------------------------------------------------------


def test_shape_costs_and_trace():
    stage = hopfield(steps=3)
    assert stage.output_shape((5, 4, 6)) == (5,)
    assert stage.macs((5, 4, 6)) == 120 + 2 * 3 * 120
    assert stage.receptive_field(ReceptiveField(), (5, 4, 6)) == GLOBAL
    pipe = Pipeline.from_config({"stages": [{"type": "hopfield_pool", "beta": None}]})
    assert pipe.kind == "descriptors" and pipe.trace((3, 8, 8))[-1].out_shape == (3,)


@pytest.mark.parametrize("raw, message", [
    ({"beta": 0}, r"stages\[0\] \(hopfield_pool\)\.beta: must be > 0"),
    ({"beta": float("inf")}, r"\.beta: input should be a finite number"),
    ({"steps": 0}, r"stages\[0\] \(hopfield_pool\)\.steps: must be >= 1, got 0"),
    ({"steps": 10**9}, r"\.steps: must be <= 1000, got 1000000000"),  # a run that would not end
    ({"steps": 1.5}, r"\.steps: input should be a valid integer"),
    ({"query": "min"}, r"\.query: must be one of 'mean' or 'max', got 'min'"),
    ({"temperature": 1}, r"unknown key 'temperature'"),
])
def test_config_errors(raw, message):
    with pytest.raises(ConfigError, match=message):
        Pipeline.from_config({"stages": [{"type": "hopfield_pool", **raw}]})
