"""Kernel for fractional max pooling (Graham 2014), = torch ``fractional_max_pool2d``.

The window starts along each axis come from one sample ``u`` in [0, 1) per channel and axis,
with torch's interval generation, in float32 as torch computes it for float32 maps: with
``alpha = (size - k) / (out - 1)``, window ``i`` starts at ``int((i + u) * alpha) - int(u * alpha)``
and the last one at ``size - k``. The samples are drawn by the caller, never here.
"""

import numpy as np
from numba import njit, prange


@njit(cache=True, nogil=True)
def _window_starts(sample, size, out_size, kernel, starts):
    """Fill ``starts`` (``out_size`` int64) with torch's window starts along one axis; every
    step in float32 (``sample`` is float32), truncated towards zero as torch's ``static_cast<int>``."""
    if out_size > 1:
        alpha = np.float32(size - kernel) / np.float32(out_size - 1)
        offset = np.int64(sample * alpha)
        for i in range(out_size - 1):
            starts[i] = np.int64((np.float32(i) + sample) * alpha) - offset
    starts[out_size - 1] = size - kernel


@njit(cache=True, nogil=True)
def _max_row(plane, top, col_starts, kernel, out_row):
    """One output row: the maximum of the ``kernel`` windows at row ``top`` and each column start.
    torch's rule: a tap wins if it is greater or NaN, so NaN propagates."""
    out_row[:] = -np.inf
    for r in range(top, top + kernel[0]):
        row = plane[r]
        for kj in range(kernel[1]):
            for j in range(out_row.size):
                v = row[col_starts[j] + kj]
                out_row[j] = v if (v > out_row[j]) | np.isnan(v) else out_row[j]  # branch-free select


@njit(parallel=True, cache=True, nogil=True)
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
    for task in prange(c * oh):
        k, i = task // oh, task % oh
        _max_row(x[k], row_starts[k, i], col_starts[k], kernel, out[k, i])
    return out
