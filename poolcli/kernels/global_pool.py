"""Kernels for map -> vector pooling: mean, max and generalised mean per channel."""

import numpy as np
from numba import njit, prange

from poolcli.kernels import FASTMATH


@njit(parallel=True, cache=True, nogil=True, fastmath=FASTMATH)
def global_avg_pool(x):
    """(C, H, W) -> (C,): mean per channel, accumulated in float64."""
    c, h, w = x.shape
    out = np.empty(c, np.float32)
    for k in prange(c):
        acc = 0.0
        for i in range(h):
            for j in range(w):
                acc += x[k, i, j]
        out[k] = acc / (h * w)
    return out


@njit(parallel=True, cache=True, nogil=True)
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


@njit(cache=True, nogil=True, fastmath=FASTMATH)
def _power_sum64(plane, p, eps):
    """``sum(max(v, eps) ** p)`` over a flat plane, every step in float64 (NaN propagates)."""
    acc = 0.0
    for i in range(plane.size):
        v = plane[i]
        v = eps if v < eps else v  # False for NaN: NaN stays NaN, as with torch.clamp
        v64 = np.float64(v)
        acc += v64 if p == 1.0 else v64 * v64 if p == 2.0 else v64 * v64 * v64 if p == 3.0 else v64**p
    return acc


BLOCK = 64  # GeM's float32 partial sums: values per block


@njit(parallel=True, cache=True, nogil=True, fastmath=FASTMATH)
def gem(x, p, eps):
    """(C, H, W) -> (C,): ``mean(max(x, eps) ** p) ** (1 / p)`` per channel (NaN propagates),
    the mean in float64.

    The usual powers 2 and 3 are float32 products, summed in float32 over blocks of
    :data:`BLOCK` values and the blocks' sums in float64: under 1e-6 relative, far below the
    float32 result's own rounding, at the speed of reading the map (twice that of float64
    throughout). They stay normal numbers whenever ``eps >= 1e-12``; a channel whose sum is
    not finite (an inf or NaN in it, or powers past float32's range) is summed again in float64,
    which then decides. Any other p takes a float64 ``pow`` per element."""
    c = x.shape[0]
    planes = x.reshape(c, -1)
    n = planes.shape[1]
    out = np.empty(c, np.float32)
    fast = (p == 2.0 or p == 3.0) and eps >= 1e-12
    square = p == 2.0
    whole = n - n % BLOCK
    for k in prange(c):
        plane = planes[k]
        acc = np.inf
        if fast:
            acc = 0.0
            for start in range(0, whole, BLOCK):
                block = plane[start : start + BLOCK]
                part = np.float32(0)
                for i in range(BLOCK):  # a literal trip count: the block's sum vectorises
                    v = block[i]
                    v = eps if v < eps else v
                    part += v * v if square else v * v * v
                acc += part
            for v in plane[whole:]:
                v = eps if v < eps else v
                acc += np.float64(v * v if square else v * v * v)
        if not acc < np.inf:  # inf or NaN (np.isfinite is folded away under fast-math)
            acc = _power_sum64(plane, p, eps)
        out[k] = (acc / n) ** (1.0 / p)
    return out
