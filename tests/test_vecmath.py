"""The exp and log that GeM and SoftPool take per element, against NumPy's (libm's)."""

import numpy as np

from poolcli.kernels.vecmath import EXP_HIGH, EXP_LOW, exp_near, log_bits, log_bits64


def test_exp_near_is_libm_exp_over_its_domain():
    y = np.concatenate([np.linspace(EXP_LOW, EXP_HIGH, 100_001), [-1e-300, 0.0, 1e-300]])
    ours, exact = np.array([exp_near(v) for v in y]), np.exp(y)
    normal = exact >= np.finfo(np.float64).tiny
    np.testing.assert_allclose(ours[normal], exact[normal], rtol=3e-14, atol=0)
    near = np.abs(y) < 100
    np.testing.assert_allclose(ours[near], exact[near], rtol=4e-15, atol=0)
    np.testing.assert_allclose(ours[~normal], exact[~normal], rtol=0, atol=1e-321)


def test_log_bits_is_libm_log_for_every_normal_float32_exponent(rng):
    exponents = rng.integers(-126, 128, 20_000)
    values = (rng.uniform(1, 2, exponents.size) * 2.0 ** exponents).astype(np.float32)
    near_one = (1 + rng.uniform(-0.01, 0.01, 5_000)).astype(np.float32)
    edges = np.array([1.0, np.finfo(np.float32).tiny, np.finfo(np.float32).max, np.nextafter(1, 2)], np.float32)
    values = np.concatenate([values, near_one, edges])
    ours = np.array([log_bits(b) for b in values.view(np.int32).astype(np.int64)])
    exact = np.log(values.astype(np.float64))
    np.testing.assert_allclose(ours, exact, rtol=2e-15, atol=1e-300)


def test_log_bits64_is_libm_log_for_every_normal_float64_exponent(rng):
    exponents = rng.integers(-1022, 1024, 20_000)
    values = rng.uniform(1, 2, exponents.size) * 2.0 ** exponents.astype(np.float64)
    edges = np.array([1.0, np.finfo(np.float64).tiny, np.finfo(np.float64).max, np.nextafter(1, 2)])
    values = np.concatenate([values, 1 + rng.uniform(-0.01, 0.01, 5_000), edges])
    ours = np.array([log_bits64(b) for b in values.view(np.int64)])
    np.testing.assert_allclose(ours, np.log(values), rtol=2e-15, atol=1e-300)
