"""Kernels for map -> vector pooling: mean, max and generalised mean per channel."""

import numpy as np
from numba import njit, prange

from poolcli.kernels import FASTMATH
from poolcli.kernels.vecmath import EXP_HIGH, EXP_LOW, exp_near, log_bits, root_range, roots


LANES = 64  # the mean's float64 partial sums: one per lane, 64 values apart


@njit(parallel=True, cache=True, error_model="numpy", nogil=True, fastmath=FASTMATH)
def global_avg_pool(x):
    """(C, H, W) -> (C,): mean per channel, accumulated in float64, in :data:`LANES` partial
    sums (a literal trip count: they stay in vector registers; a single sum vectorises less
    well, 1.5 times slower)."""
    c = x.shape[0]
    planes = x.reshape(c, -1)
    n = planes.shape[1]
    whole = n - n % LANES
    out = np.empty(c, np.float32)
    for k in prange(c):
        plane = planes[k]
        lanes = np.zeros(LANES, np.float64)
        for start in range(0, whole, LANES):
            block = plane[start : start + LANES]
            for i in range(LANES):
                lanes[i] += block[i]
        acc = lanes.sum()
        for v in plane[whole:]:
            acc += v
        out[k] = acc / n
    return out


@njit(parallel=True, cache=True, error_model="numpy", nogil=True)
def global_max_pool(x):
    """(C, H, W) -> (C,): max per channel; NaN propagates."""
    c, h, w = x.shape
    out = np.empty(c, np.float32)
    for k in prange(c):
        best = -np.inf
        for i in range(h):
            for j in range(w):
                v = x[k, i, j]
                if v > best or np.isnan(v):
                    best = v
                    if np.isnan(v):
                        break
            if np.isnan(best):
                break
        out[k] = best
    return out


@njit(cache=True, error_model="numpy", nogil=True, fastmath=FASTMATH)
def _power_sum64(plane, p, eps):
    """``sum(max(v, eps) ** p)`` over a flat plane, every step in float64 (NaN propagates)."""
    acc = 0.0
    for i in range(plane.size):
        v = plane[i]
        v = eps if v < eps else v  # False for NaN: NaN stays NaN, as with torch.clamp
        v64 = np.float64(v)
        acc += v64 if p == 1.0 else v64 * v64 if p == 2.0 else v64 * v64 * v64 if p == 3.0 else v64**p
    return acc


CHUNK = 1024  # GeM's float32 partial sums: values per chunk


@njit(cache=True, error_model="numpy", nogil=True, fastmath=FASTMATH, inline="always")  # called, it runs 6x slower
def _power_sum_exp(plane, bits, p, eps, ln_eps):
    """``sum(max(v, eps) ** p)`` as ``exp(p * ln v)`` in float64 (3e-14 relative). The caller
    has checked that eps is a normal float32 and that ``p * ln`` stays in ``exp_near``'s range;
    inf if the plane holds a NaN or +inf (their bits are not a number's)."""
    acc = 0.0
    specials = 0
    for i in range(plane.size):
        b = np.int64(bits[i])
        specials += ((b >> 23) & 0xFF) == 0xFF  # NaN or inf: integer bits, not folded away
        acc += exp_near(p * (ln_eps if plane[i] < eps else log_bits(b)))
    return acc if specials == 0 else np.inf


@njit(parallel=True, cache=True, error_model="numpy", nogil=True, fastmath=FASTMATH)
def gem(x, p, eps):
    """(C, H, W) -> (C,): ``mean(max(x, eps) ** p) ** (1 / p)`` per channel (NaN propagates),
    the mean in float64.

    The usual powers 2 and 3 are float32 products, summed in float32 over chunks of
    :data:`CHUNK` values (in vector lanes: each lane adds a few dozen values) and the chunks'
    sums in float64: about 1e-7 relative on random maps (the float32 result's own rounding), a
    few 1e-6 at worst, at the speed of reading the map (blocks of 64 values were 1.5 times
    slower: each block's sum across the vector lanes cost as much as adding the block). They
    stay normal numbers whenever ``eps >= 1e-12``; a channel whose sum is not finite (an inf or
    NaN in it, or powers past float32's range) is summed again in float64, which then decides.
    Any other p but 1 is ``exp(p * ln v)`` in float64 arithmetic (:func:`_power_sum_exp`, 3e-14
    relative, 8 times libm's ``pow``), where p and eps keep it in range; else, and for p = 1,
    a float64 ``pow`` per element. The roots of the means are taken together at the end
    (:func:`~poolcli.kernels.vecmath.roots`: a ``pow`` per channel took a fifth of the time)."""
    c = x.shape[0]
    planes = x.reshape(c, -1)
    n = planes.shape[1]
    means = np.empty(c, np.float64)
    fast = (p == 2.0 or p == 3.0) and eps >= 1e-12
    square = p == 2.0
    ln_eps = np.log(np.float64(eps)) if eps > 0 else -np.inf
    # any other p through exp and log, where eps is a normal float32 and p * ln v stays in range
    by_exp = not fast and p != 1.0 and eps >= 1.2e-38 and p * 88.8 < EXP_HIGH and p * ln_eps > EXP_LOW
    bits = planes.view(np.int32)
    for k in prange(c):
        plane = planes[k]
        acc = np.inf
        if by_exp:
            acc = _power_sum_exp(plane, bits[k], p, eps, ln_eps)
        if fast:
            acc = 0.0
            for start in range(0, n, CHUNK):
                chunk = plane[start : start + CHUNK]  # from 0: no negative-index checks, it vectorises
                part = np.float32(0)
                for i in range(chunk.size):
                    v = chunk[i]
                    v = eps if v < eps else v
                    part += v * v if square else v * v * v
                acc += part
        if not acc < np.inf:  # inf or NaN (np.isfinite is folded away under fast-math)
            acc = _power_sum64(plane, p, eps)
        means[k] = acc / n
    out = np.empty(c, np.float32)
    if p == 1.0:
        out[:] = means
    else:
        low, high = root_range(p)
        roots(means, p, low, high, out)
    return out
