"""Activations against naive Python and torch, including NaN and inf."""

import numpy as np
import pytest

import naive
from poolcli import Pipeline
from poolcli.stages.elementwise import apply_activation
from torch_oracle import needs_torch, torch

FNS = ["none", "relu", "abs", "square", "sigmoid", "tanh", "sign_sqrt"]
SPECIAL = np.array([0.0, -0.0, 1e-40, -1e-40, 3.5, -2.25, 80.0, -80.0, np.inf, -np.inf, np.nan], np.float32)


@pytest.mark.parametrize("fn", FNS)
@pytest.mark.parametrize("shape", [(1, 1, 1), (3, 7, 5), (2, 130, 129)])
def test_equals_naive(fn, shape, rng):
    x = (rng.standard_normal(shape) * 4).astype(np.float32)
    np.testing.assert_allclose(apply_activation(x, fn), naive.activation(x, fn), rtol=2e-6, atol=1e-7)


@pytest.mark.parametrize("fn", FNS)
def test_special_values(fn):
    with np.errstate(all="ignore"):
        np.testing.assert_allclose(apply_activation(SPECIAL, fn), naive.activation(SPECIAL, fn), rtol=2e-6, atol=1e-30)


@needs_torch
@pytest.mark.parametrize("fn, reference", [
    ("relu", lambda t: torch.relu(t)), ("abs", lambda t: t.abs()), ("square", lambda t: t * t),
    ("sigmoid", lambda t: torch.sigmoid(t)), ("tanh", lambda t: torch.tanh(t)),
    ("sign_sqrt", lambda t: t.sign() * t.abs().sqrt()),
])
def test_equals_torch(fn, reference, rng):
    x = np.concatenate([(rng.standard_normal(5000) * 5).astype(np.float32), SPECIAL]).reshape(1, 1, -1)
    np.testing.assert_allclose(apply_activation(x, fn), reference(torch.from_numpy(x)).numpy(), rtol=2e-6, atol=1e-7)


def test_inplace_changes_only_the_given_array(rng):
    x = rng.standard_normal((2, 3, 4)).astype(np.float32)
    copy = x.copy()
    y = apply_activation(x, "relu")
    np.testing.assert_array_equal(x, copy)
    z = apply_activation(x, "relu", inplace=True)
    assert z is x
    np.testing.assert_array_equal(x, y)


def test_activation_works_on_vectors():
    pipe = Pipeline.from_config({"stages": [{"type": "mac"}, {"type": "activation", "fn": "sign_sqrt"}],
                                 "output": {"normalize": "none"}})
    np.testing.assert_allclose(pipe(np.full((2, 2, 2), 4.0, np.float32)), [2.0, 2.0])
