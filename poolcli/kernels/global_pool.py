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


@njit(parallel=True, cache=True, nogil=True, fastmath=FASTMATH)
def gem(x, p, eps):
    """(C, H, W) -> (C,): ``mean(max(x, eps) ** p) ** (1 / p)`` per channel (NaN propagates)."""
    c, h, w = x.shape
    out = np.empty(c, np.float32)
    for k in prange(c):
        acc = 0.0
        for i in range(h):
            for j in range(w):
                v = x[k, i, j]
                if v < eps:  # False for NaN: NaN stays NaN, as with torch.clamp
                    v = eps
                acc += np.float64(v) ** p
        out[k] = (acc / (h * w)) ** (1.0 / p)
    return out
