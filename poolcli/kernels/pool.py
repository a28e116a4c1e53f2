"""Kernels for windowed and adaptive pooling: max, average, Lp, adaptive max and average.

Every kernel takes a float32 C-contiguous (C, H, W) map and computes one output row per
``prange`` iteration (channel x output row), writing only that row. Windows are clipped to the
input rather than padding a copy of the map. Along a row, the sliding-window kernels loop over
the output columns for one kernel tap at a time: the input row is read contiguously (or with
the stride), the columns are independent, so the loops vectorise, and each output still sees
its taps in PyTorch's row-major order (the same sums, the same NaN and argmax winners).

Window arguments are ``(h, w)`` tuples of ints; output sizes are computed by the caller
(:mod:`poolcli.stages.geometry`). A dilated window may have no tap inside the input: its
maximum is -inf, as in torch.
"""

import numpy as np
from numba import njit, prange

from poolcli.kernels import FASTMATH


@njit(cache=True, nogil=True)
def _columns(offset, out_size, stride, size):
    """The output columns ``[lo, hi)`` whose tap ``j * stride + offset`` lies in ``[0, size)``."""
    lo = 0 if offset >= 0 else (stride - 1 - offset) // stride
    hi = min(out_size, (size - 1 - offset) // stride + 1)
    return lo, max(lo, hi)


@njit(cache=True, nogil=True)
def _first_tap(start, dilation):
    """The first in-bounds tap of a window starting at ``start`` (torch's initial argmax)."""
    while start < 0:
        start += dilation
    return start


@njit(cache=True, nogil=True)
def _max_row(plane, i, kernel, stride, padding, dilation, out_row, index_row):
    """Output row ``i`` of max pooling over one (H, W) plane; ``index_row`` is None or receives
    the flat argmax ``h * W + w``. torch's rule: a tap wins if it is greater or NaN, so a NaN
    always propagates and the last NaN in row-major order gives the index."""
    h, w = plane.shape
    top = i * stride[0] - padding[0]
    step = stride[1]
    out_row[:] = -np.inf
    if index_row is not None:
        first_row = _first_tap(top, dilation[0]) * w
        for j in range(out_row.size):
            index_row[j] = first_row + _first_tap(j * step - padding[1], dilation[1])
    for ki in range(kernel[0]):
        r = top + ki * dilation[0]
        if r < 0 or r >= h:
            continue
        for kj in range(kernel[1]):
            offset = kj * dilation[1] - padding[1]
            lo, hi = _columns(offset, out_row.size, step, w)
            # Zero-based views and branch-free selects let the loop vectorise.
            taps = plane[r, lo * step + offset :]
            best = out_row[lo:hi]
            if index_row is not None:
                chosen = index_row[lo:hi]
                first = r * w + lo * step + offset
            for n in range(hi - lo):
                v = taps[n * step]
                wins = (v > best[n]) | np.isnan(v)
                best[n] = v if wins else best[n]
                if index_row is not None:
                    chosen[n] = first + n * step if wins else chosen[n]


@njit(parallel=True, cache=True, nogil=True)
def max_pool(x, kernel, stride, padding, dilation, out_hw, indices):
    """(C, H, W) -> (C, H', W'): the maximum of each window, padding acting as -inf; = torch
    ``max_pool2d``.

    ``indices`` is None, or an int64 (C, H', W') array that receives the flat index
    ``h * W + w`` of each maximum in its input plane (torch's ``return_indices``).
    """
    c = x.shape[0]
    oh, ow = out_hw
    out = np.empty((c, oh, ow), np.float32)
    for task in prange(c * oh):
        k, i = task // oh, task % oh
        if indices is None:
            _max_row(x[k], i, kernel, stride, padding, dilation, out[k, i], None)
        else:
            _max_row(x[k], i, kernel, stride, padding, dilation, out[k, i], indices[k, i])
    return out


@njit(cache=True, nogil=True, fastmath=FASTMATH)
def _sum_row(plane, i, kernel, stride, padding, out_row):
    """Output row ``i`` of window sums over one (H, W) plane, in-bounds taps only (no
    dilation); accumulates in ``out_row``'s dtype."""
    h, w = plane.shape
    top = i * stride[0] - padding[0]
    out_row[:] = 0
    step = stride[1]
    for r in range(max(top, 0), min(top + kernel[0], h)):
        for kj in range(kernel[1]):
            offset = kj - padding[1]
            lo, hi = _columns(offset, out_row.size, step, w)
            taps = plane[r, lo * step + offset :]  # zero-based views vectorise
            sums = out_row[lo:hi]
            for n in range(hi - lo):
                sums[n] += taps[n * step]


@njit(cache=True, nogil=True)
def _window_counts(size, out_size, kernel, stride, padding, count_include_pad):
    """Per output position along one axis, torch's avg_pool2d divisor factor: the window clipped
    to the padded input (``count_include_pad``; in ceil mode it still stops at the padding), or
    to the input itself."""
    counts = np.empty(out_size, np.int64)
    for j in range(out_size):
        start = j * stride - padding
        end = min(start + kernel, size + padding)
        if not count_include_pad:
            start, end = max(start, 0), min(end, size)
        counts[j] = end - start
    return counts


@njit(parallel=True, cache=True, nogil=True, fastmath=FASTMATH)
def avg_pool(x, kernel, stride, padding, out_hw, count_include_pad, divisor_override):
    """(C, H, W) -> (C, H', W'): each window's sum over its in-bounds taps, divided by torch's
    divisor (``divisor_override`` when > 0); = torch ``avg_pool2d``."""
    c, h, w = x.shape
    oh, ow = out_hw
    if divisor_override > 0:
        divisors = np.full((oh, ow), np.float32(divisor_override))
    else:
        row_counts = _window_counts(h, oh, kernel[0], stride[0], padding[0], count_include_pad)
        col_counts = _window_counts(w, ow, kernel[1], stride[1], padding[1], count_include_pad)
        divisors = np.outer(row_counts, col_counts).astype(np.float32)  # float32 rows divide fast
    out = np.empty((c, oh, ow), np.float32)
    for task in prange(c * oh):
        k, i = task // oh, task % oh
        sums = out[k, i]
        _sum_row(x[k], i, kernel, stride, padding, sums)
        divisor = divisors[i]
        for j in range(ow):
            sums[j] /= divisor[j]
    return out


@njit(parallel=True, cache=True, nogil=True, fastmath=FASTMATH)
def lp_pool(x, p, kernel, stride, out_hw):
    """(C, H, W) -> (C, H', W'): ``(sum |x| ** p) ** (1 / p)`` over the in-bounds taps of each
    window (no padding), in float64 so that large ``p`` does not overflow.

    Each ``|x| ** p`` is computed once into a float64 copy of the map, since overlapping
    windows would otherwise raise the same value to the power several times.
    """
    c, h, w = x.shape
    oh, ow = out_hw
    powered = np.empty((c, h, w), np.float64)
    for task in prange(c * h):
        k, r = task // h, task % h
        for j in range(w):
            v = np.float64(abs(x[k, r, j]))
            powered[k, r, j] = v * v if p == 2.0 else v**p
    sums = np.empty((c, oh, ow), np.float64)
    out = np.empty((c, oh, ow), np.float32)
    for task in prange(c * oh):
        k, i = task // oh, task % oh
        _sum_row(powered[k], i, kernel, stride, (0, 0), sums[k, i])
        for j in range(ow):
            out[k, i, j] = sums[k, i, j] ** (1.0 / p)
    return out


@njit(parallel=True, cache=True, nogil=True, fastmath=FASTMATH)
def adaptive_avg_pool(x, row_bins, col_bins):
    """(C, H, W) -> (C, n_h, n_w): the mean of each bin, accumulated in float64; = torch
    ``adaptive_avg_pool2d``. ``row_bins`` and ``col_bins`` are int64 ``(n, 2)`` arrays of
    ``[start, end)`` (torch's bins, :func:`poolcli.stages.geometry.adaptive_bins`).

    Each output row first sums its bin's rows column by column (contiguous, vectorised), then
    each bin sums its columns of that: bins that overlap share the first step."""
    c, h, w = x.shape
    oh, ow = row_bins.shape[0], col_bins.shape[0]
    out = np.empty((c, oh, ow), np.float32)
    for task in prange(c * oh):
        k, i = task // oh, task % oh
        top, bottom = row_bins[i, 0], row_bins[i, 1]
        column_sums = np.zeros(w, np.float64)
        for r in range(top, bottom):
            row = x[k, r]
            for s in range(w):
                column_sums[s] += row[s]
        for j in range(ow):
            left, right = col_bins[j, 0], col_bins[j, 1]
            out[k, i, j] = column_sums[left:right].sum() / ((bottom - top) * (right - left))
    return out


@njit(parallel=True, cache=True, nogil=True)
def adaptive_max_pool(x, row_bins, col_bins):
    """(C, H, W) -> (C, n_h, n_w): the maximum of each bin, NaN propagating; = torch
    ``adaptive_max_pool2d``. Bins as in :func:`adaptive_avg_pool`, and computed the same way:
    column maxima over the bin's rows, then the maximum of each bin's columns."""
    c, h, w = x.shape
    oh, ow = row_bins.shape[0], col_bins.shape[0]
    out = np.empty((c, oh, ow), np.float32)
    for task in prange(c * oh):
        k, i = task // oh, task % oh
        column_max = np.full(w, -np.inf, np.float32)
        for r in range(row_bins[i, 0], row_bins[i, 1]):
            row = x[k, r]
            for s in range(w):
                v = row[s]
                column_max[s] = v if (v > column_max[s]) | np.isnan(v) else column_max[s]
        for j in range(ow):
            best = np.float32(-np.inf)
            for v in column_max[col_bins[j, 0] : col_bins[j, 1]]:
                if v > best or np.isnan(v):
                    best = v
            out[k, i, j] = best
    return out
