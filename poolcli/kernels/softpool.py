"""Kernel for SoftPool (Stergiou et al. 2021) over floor-mode windows: ``sum softmax(a) * a``.

Computed stably in float64: with ``m`` the window's maximum, ``sum e^(a - m) a / sum e^(a - m)``;
the largest weight is 1, so nothing overflows whatever the values. Infinities follow the
limits of the formula: a NaN gives NaN; else a +inf takes all the weight and gives +inf; a -inf
gets weight 0 (its ``0 * -inf`` term is left out); a window of -inf only gives -inf (equal
values give that value).
"""

import numpy as np
from numba import njit, prange

from poolcli.kernels import FASTMATH


@njit(cache=True, nogil=True, fastmath=FASTMATH)
def _soft_row(plane, i, kernel, stride, out_row):
    """Output row ``i``: the window maxima first, then the weighted sums, one tap at a time
    across the row so that the column loops vectorise."""
    ow = out_row.size
    top = i * stride[0]
    peak = np.full(ow, -np.inf)
    for r in range(top, top + kernel[0]):
        for kj in range(kernel[1]):
            taps = plane[r, kj:]
            for j in range(ow):
                v = np.float64(taps[j * stride[1]])
                peak[j] = v if (v > peak[j]) | np.isnan(v) else peak[j]
    weighted = np.zeros(ow)
    weights = np.zeros(ow)
    for r in range(top, top + kernel[0]):
        for kj in range(kernel[1]):
            taps = plane[r, kj:]
            for j in range(ow):
                v = np.float64(taps[j * stride[1]])
                e = np.exp(v - peak[j])
                weighted[j] += e * v if v != -np.inf else 0.0
                weights[j] += e
    for j in range(ow):
        m = peak[j]
        # NaN, +inf and an all -inf window are their own answers (the sums hold NaN there).
        out_row[j] = weighted[j] / weights[j] if np.isfinite(m) else m


@njit(parallel=True, cache=True, nogil=True, fastmath=FASTMATH)
def soft_pool(x, kernel, stride, out_hw):
    """(C, H, W) -> (C, H', W'): ``sum softmax(a) * a`` over each window."""
    c = x.shape[0]
    oh, ow = out_hw
    out = np.empty((c, oh, ow), np.float32)
    for task in prange(c * oh):
        k, i = task // oh, task % oh
        _soft_row(x[k], i, kernel, stride, out[k, i])
    return out
