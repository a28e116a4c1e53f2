"""Kernel for SoftPool (Stergiou et al. 2021) over floor-mode windows: ``sum softmax(a) * a``.

Computed stably in float64: with ``m`` the window's maximum, ``sum e^(a - m) a / sum e^(a - m)``;
the largest weight is 1, so nothing overflows whatever the values. The exponentials are
:func:`poolcli.kernels.vecmath.exp_near`'s (3e-14, and they vectorise), their argument kept at
``-740`` or above: a weight below ``e^-740`` is ``e^-740``, nothing beside the peak's 1.
Infinities follow the limits of the formula: a NaN gives NaN; else a +inf takes all the weight
and gives +inf; a -inf gets weight 0 (its ``0 * -inf`` term is left out); a window of -inf only
gives -inf (equal values give that value).
"""

import numpy as np
from numba import njit, prange

from poolcli.kernels import FASTMATH
from poolcli.kernels.vecmath import EXP_LOW, exp_near


ROWS = 8  # output rows per parallel task: their scratch rows are allocated once


@njit(cache=True, error_model="numpy", nogil=True, fastmath=FASTMATH, inline="always")
def _taps(plane, r, kj, step, ow, vals):
    """``vals[j]`` = the tap at row ``r``, column ``j * step + kj``, in float64: a contiguous row
    for the loops that follow (strides 1 and 2 written as literals, which vectorise)."""
    taps = plane[r, kj:]
    if step == 2:
        for j in range(ow):
            vals[j] = taps[2 * j]
    elif step == 1:
        for j in range(ow):
            vals[j] = taps[j]
    else:
        for j in range(ow):
            vals[j] = taps[j * step]


@njit(cache=True, error_model="numpy", nogil=True, fastmath=FASTMATH, inline="always")
def _soft_row(plane, i, kernel, stride, scratch, out_row):
    """Output row ``i``: the window maxima first, then the weighted sums, one tap at a time
    across the row (gathered into a contiguous row) so that the column loops vectorise.
    ``scratch``: four float64 rows of at least the output's width."""
    ow = out_row.size
    top = i * stride[0]
    vals, peak, weighted, weights = scratch[0, :ow], scratch[1, :ow], scratch[2, :ow], scratch[3, :ow]
    peak[:] = -np.inf
    for r in range(top, top + kernel[0]):
        for kj in range(kernel[1]):
            _taps(plane, r, kj, stride[1], ow, vals)
            for j in range(ow):
                v = vals[j]
                peak[j] = v if (v > peak[j]) | np.isnan(v) else peak[j]
    weighted[:] = 0.0
    weights[:] = 0.0
    for r in range(top, top + kernel[0]):
        for kj in range(kernel[1]):
            _taps(plane, r, kj, stride[1], ow, vals)
            for j in range(ow):
                v = vals[j]
                y = v - peak[j]
                e = exp_near(y if y > EXP_LOW else EXP_LOW)  # False for NaN: a NaN or inf window, its own answer
                weighted[j] += e * v if v != -np.inf else 0.0
                weights[j] += e
    for j in range(ow):
        m = peak[j]
        # NaN, +inf and an all -inf window are their own answers (the sums hold NaN there).
        out_row[j] = weighted[j] / weights[j] if np.isfinite(m) else m


@njit(parallel=True, cache=True, error_model="numpy", nogil=True, fastmath=FASTMATH)
def soft_pool(x, kernel, stride, out_hw):
    """(C, H, W) -> (C, H', W'): ``sum softmax(a) * a`` over each window."""
    c = x.shape[0]
    oh, ow = out_hw
    out = np.empty((c, oh, ow), np.float32)
    blocks = (oh + ROWS - 1) // ROWS
    for task in prange(c * blocks):
        k, first = task // blocks, task % blocks * ROWS
        scratch = np.empty((4, ow))
        for i in range(first, min(oh, first + ROWS)):
            _soft_row(x[k], i, kernel, stride, scratch, out[k, i])
    return out
