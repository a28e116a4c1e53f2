"""Kernels for detection-style pooling: CenterNet center pooling (window centres; row plus
column maxima) and CornerNet corner pooling (directional running maxima, optionally cascaded).

Every maximum follows ``torch.max``: a NaN wins, so it propagates along a running maximum as
it does through torch's ``cummax``. Corner pooling is two running-maximum scans per channel,
O(H * W): along each row (parallel over channel x row) and down or up the columns (parallel
over channels, the columns of a row updated together so that the loop vectorises).
"""

import numpy as np
from numba import njit, prange


@njit(cache=True, error_model="numpy", nogil=True, inline="always")
def _max(a, b):
    """``max(a, b)``, NaN propagating from either side."""
    return a if (a > b) | np.isnan(a) else b


@njit(parallel=True, cache=True, error_model="numpy", nogil=True)
def center_window(x, kernel, stride, out_hw):
    """(C, H, W) -> (C, H', W'): the value at each window's centre, ``(k - 1) // 2`` after its
    start along each axis; floor-mode windows (``out_hw`` from the caller)."""
    c = x.shape[0]
    oh, ow = out_hw
    top, left = (kernel[0] - 1) // 2, (kernel[1] - 1) // 2
    out = np.empty((c, oh, ow), np.float32)
    for task in prange(c * oh):
        k, i = task // oh, task % oh
        row = x[k, i * stride[0] + top]
        for j in range(ow):
            out[k, i, j] = row[j * stride[1] + left]
    return out


@njit(parallel=True, cache=True, error_model="numpy", nogil=True)
def center_cross(x):
    """(C, H, W) -> (C, H, W): ``max(x[i, :]) + max(x[:, j])`` at every ``(i, j)``."""
    c, h, w = x.shape
    row_max = np.empty((c, h), np.float32)
    for task in prange(c * h):
        k, i = task // h, task % h
        best = np.float32(-np.inf)
        for v in x[k, i]:
            best = _max(v, best)
        row_max[k, i] = best
    column_max = np.full((c, w), -np.inf, np.float32)
    for k in prange(c):
        best = column_max[k]
        for i in range(h):
            row = x[k, i]
            for j in range(w):
                best[j] = _max(row[j], best[j])
    out = np.empty((c, h, w), np.float32)
    for task in prange(c * h):
        k, i = task // h, task % h
        across, down, target = row_max[k, i], column_max[k], out[k, i]
        for j in range(w):
            target[j] = across + down[j]
    return out


@njit(cache=True, error_model="numpy", nogil=True)
def _scan_row(row, out_row, from_right, accumulate):
    """The running maximum along one row, started at its right end (``out[j] = max(row[j:])``)
    or its left end (``max(row[:j + 1])``); written to ``out_row`` or added to it."""
    w = row.size
    best = np.float32(-np.inf)
    for n in range(w):
        j = w - 1 - n if from_right else n
        best = _max(row[j], best)
        if accumulate:
            out_row[j] += best
        else:
            out_row[j] = best


@njit(cache=True, error_model="numpy", nogil=True)
def _scan_columns(plane, out, from_bottom, accumulate):
    """The running maximum down every column of one (H, W) plane, started at the bottom row
    (``out[i, j] = max(plane[i:, j])``) or the top row (``max(plane[:i + 1, j])``); written to
    ``out`` or added to it. Whole rows at a time, so the inner loop vectorises."""
    h, w = plane.shape
    best = np.full(w, -np.inf, np.float32)
    for n in range(h):
        i = h - 1 - n if from_bottom else n
        row, target = plane[i], out[i]
        for j in range(w):
            best[j] = _max(row[j], best[j])
        if accumulate:
            for j in range(w):
                target[j] += best[j]
        else:
            for j in range(w):
                target[j] = best[j]


@njit(parallel=True, cache=True, error_model="numpy", nogil=True)
def corner_pool(x, from_bottom, from_right, cascade):
    """(C, H, W) -> (C, H, W): ``V(x) + H(x)``, or with ``cascade`` ``V(x + H(x)) + H(x + V(x))``.

    ``V`` is the running maximum along each column, over the rows below a position
    (``from_bottom``, CornerNet's TopPool) or above it (BottomPool); ``H`` the one along each
    row, over the columns to its right (``from_right``, LeftPool) or left (RightPool). Each
    position counts itself.
    """
    c, h, w = x.shape
    out = np.empty((c, h, w), np.float32)
    if not cascade:
        for task in prange(c * h):
            k, i = task // h, task % h
            _scan_row(x[k, i], out[k, i], from_right, False)
        for k in prange(c):
            _scan_columns(x[k], out[k], from_bottom, True)
        return out
    mixed = np.empty((c, h, w), np.float32)
    for task in prange(c * h):
        k, i = task // h, task % h
        _scan_row(x[k, i], mixed[k, i], from_right, False)
        row, target = x[k, i], mixed[k, i]
        for j in range(w):
            target[j] += row[j]  # x + H(x)
    for k in prange(c):
        _scan_columns(mixed[k], out[k], from_bottom, False)  # V(x + H(x))
        _scan_columns(x[k], mixed[k], from_bottom, False)  # x + H(x) is used: reuse it for V(x)
        plane, target = x[k], mixed[k]
        for i in range(h):
            for j in range(w):
                target[i, j] += plane[i, j]  # x + V(x)
    for task in prange(c * h):
        k, i = task // h, task % h
        _scan_row(mixed[k, i], out[k, i], from_right, True)  # + H(x + V(x))
    return out
