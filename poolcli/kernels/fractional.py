"""Kernel for fractional max pooling (Graham 2014), = torch ``fractional_max_pool2d``.

The window starts along each axis come from one sample ``u`` in [0, 1) per channel and axis,
with torch's interval generation, in float32 as torch computes it for float32 maps: with
``alpha = (size - k) / (out - 1)``, window ``i`` starts at ``int((i + u) * alpha) - int(u * alpha)``
and the last one at ``size - k``. The samples are drawn by the caller, never here.
"""

import numpy as np
from numba import njit, prange

ROWS = 8  # output rows per parallel task: their row buffer is allocated once


@njit(cache=True, error_model="numpy", nogil=True)
def _window_starts(sample, size, out_size, kernel, starts):
    """Fill ``starts`` (``out_size`` int64) with torch's window starts along one axis; every
    step in float32 (``sample`` is float32), truncated towards zero as torch's ``static_cast<int>``."""
    if out_size > 1:
        alpha = np.float32(size - kernel) / np.float32(out_size - 1)
        offset = np.int64(sample * alpha)
        for i in range(out_size - 1):
            starts[i] = np.int64((np.float32(i) + sample) * alpha) - offset
    starts[out_size - 1] = size - kernel


@njit(cache=True, error_model="numpy", nogil=True, inline="always")  # called, the kernel ran 1.9 times slower
def _max_row(plane, top, col_starts, kernel, column_max, window_max, out_row):
    """One output row: the maximum of the ``kernel`` windows at row ``top`` and each column start.
    The window rows' column maxima first, then their maxima over ``kernel[1]`` consecutive columns
    (both contiguous, vectorised), then one load per window. torch's rule: a tap wins if it is
    greater or NaN, so NaN propagates."""
    column_max[:] = plane[top]
    for r in range(top + 1, top + kernel[0]):
        row = plane[r]
        for s in range(column_max.size):
            v = row[s]
            column_max[s] = v if (v > column_max[s]) | np.isnan(v) else column_max[s]  # branch-free select
    starts = column_max.size - kernel[1] + 1  # the columns a window can start at
    window_max[:starts] = column_max[:starts]
    for kj in range(1, kernel[1]):
        taps = column_max[kj:]
        for s in range(starts):
            v = taps[s]
            window_max[s] = v if (v > window_max[s]) | np.isnan(v) else window_max[s]
    for j in range(out_row.size):
        out_row[j] = window_max[col_starts[j]]


@njit(parallel=True, cache=True, error_model="numpy", nogil=True)
def fractional_max_pool(x, samples, kernel, out_hw):
    """(C, H, W) -> (C, H', W'): the maximum of each fractional window; = torch
    ``fractional_max_pool2d`` with ``_random_samples[0, c] = (samples[c, 1], samples[c, 0])``.

    ``samples`` is a float32 (C, 2) array of ``(u_h, u_w)`` in [0, 1), one pair per channel;
    the caller has checked ``H' + kh - 1 <= H`` and ``W' + kw - 1 <= W`` (torch's rule), so every
    window lies inside the map.
    """
    c, h, w = x.shape
    oh, ow = out_hw
    row_starts = np.empty((c, oh), np.int64)
    col_starts = np.empty((c, ow), np.int64)
    for k in prange(c):
        _window_starts(samples[k, 0], h, oh, kernel[0], row_starts[k])
        _window_starts(samples[k, 1], w, ow, kernel[1], col_starts[k])
    out = np.empty((c, oh, ow), np.float32)
    blocks = (oh + ROWS - 1) // ROWS
    for task in prange(c * blocks):
        k, first = task // blocks, task % blocks * ROWS
        column_max, window_max = np.empty(w, np.float32), np.empty(w, np.float32)
        for i in range(first, min(oh, first + ROWS)):
            _max_row(x[k], row_starts[k, i], col_starts[k], kernel, column_max, window_max, out[k, i])
    return out
