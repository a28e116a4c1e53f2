"""Kernel for R-MAC: the max of each region per channel, each region's max vector L2-normalised,
and the normalised vectors summed. The region grid is computed in Python (``stages.rmac``)."""

import numpy as np
from numba import njit, prange


@njit(cache=True, error_model="numpy", nogil=True)
def _region_max(plane, top, left, height, width):
    """Max of ``plane[top:top + height, left:left + width]``; NaN propagates."""
    best = -np.inf
    for i in range(top, top + height):
        for j in range(left, left + width):
            v = plane[i, j]
            if v > best or np.isnan(v):
                best = v
                if np.isnan(v):
                    return best
    return best


@njit(parallel=True, cache=True, error_model="numpy", nogil=True)
def rmac(x, regions, eps):
    """(C, H, W), regions int64 (R, 4) of (top, left, height, width) -> (C,):
    ``sum_r m_r / (||m_r|| + eps)`` with ``m_r`` the (C,) max of region r, in float64."""
    c = x.shape[0]
    count = regions.shape[0]
    maxima = np.empty((c, count), np.float64)
    for k in prange(c):
        for r in range(count):
            maxima[k, r] = _region_max(x[k], regions[r, 0], regions[r, 1], regions[r, 2], regions[r, 3])
    scale = np.empty(count, np.float64)
    for r in prange(count):
        total = 0.0
        for k in range(c):
            total += maxima[k, r] * maxima[k, r]
        scale[r] = 1.0 / (np.sqrt(total) + eps)
    out = np.empty(c, np.float32)
    for k in prange(c):
        acc = 0.0
        for r in range(count):
            acc += maxima[k, r] * scale[r]
        out[k] = acc
    return out
