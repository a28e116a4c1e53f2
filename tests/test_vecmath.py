"""The exp and log that GeM, Lp and SoftPool take per element, and the roots of GeM and Lp,
against NumPy's (libm's)."""

import numpy as np
import pytest

from poolcli.kernels.vecmath import EXP_HIGH, EXP_LOW, exp_near, log_bits, log_bits64, root_range, roots


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


@pytest.mark.parametrize("p", [0.5, 1.0, 2.5, 3.0, 7.0, 40.0])
def test_roots_are_numpys_powers_in_range_and_out(rng, p):
    low, high = root_range(p)
    exponents = rng.uniform(np.log10(low), np.log10(high), 2_000)
    values = np.concatenate([10.0**exponents, rng.uniform(0, 2, 2_000), [0.0, low, np.nextafter(high, 0)]])
    out = np.empty_like(values)
    roots(values, p, low, high, out)  # every value in range: exp and log
    exact = np.power(values, 1 / p)
    np.testing.assert_allclose(out, exact, rtol=3e-12, atol=0)  # ln's error, times |ln v| / p
    middle = (exact > 1e-40) & (exact < 1e40)
    np.testing.assert_allclose(out[middle], exact[middle], rtol=3e-14, atol=0)
    for odd in (np.nan, np.inf, high, low / 2):  # one value out of range: pow for all
        values[7] = odd
        roots(values, p, low, high, out)
        np.testing.assert_allclose(out, np.power(values, 1 / p), rtol=4e-16, atol=0)
    single = np.empty(values.size, np.float32)  # the kernels' float32 outputs
    roots(values, p, low, high, single)
    np.testing.assert_allclose(single, np.power(values, 1 / p).astype(np.float32), rtol=1.2e-7, atol=0)
