"""Kernels for strip pooling (Hou et al. 2020): a reduction over each row and each column,
broadcast back and added, optionally gating the input through a sigmoid.

The strips are float32, as torch's ``mean``/``amax`` give them (means are accumulated in
float64 and rounded once); maxima propagate NaN like ``torch.amax``.
"""

import numpy as np
from numba import njit, prange

from poolcli.kernels import FASTMATH


@njit(cache=True, error_model="numpy", nogil=True, inline="always")
def _max(a, b):
    """``max(a, b)``, NaN propagating from either side."""
    return a if (a > b) | np.isnan(a) else b


@njit(cache=True, error_model="numpy", nogil=True, inline="always")
def _sigmoid(v):
    """``1 / (1 + exp(-v))`` without overflow: ``exp`` only ever sees a non-positive number."""
    if v >= 0:
        return np.float32(1) / (np.float32(1) + np.exp(-v))
    e = np.exp(v)
    return e / (np.float32(1) + e)


@njit(parallel=True, cache=True, error_model="numpy", nogil=True, fastmath=FASTMATH)
def strip_pool(x, use_max, gate):
    """(C, H, W) -> (C, H, W): ``s = r[i] + q[j]`` with ``r`` the mean (``use_max``: maximum)
    of each row and ``q`` that of each column; the output is ``s``, or with ``gate``
    ``x * sigmoid(s)``."""
    c, h, w = x.shape
    row_strip = np.empty((c, h), np.float32)
    for task in prange(c * h):
        k, i = task // h, task % h
        if use_max:
            best = np.float32(-np.inf)
            for v in x[k, i]:
                best = _max(v, best)
            row_strip[k, i] = best
        else:
            total = 0.0
            for v in x[k, i]:
                total += v
            row_strip[k, i] = total / w
    column_strip = np.empty((c, w), np.float32)
    for k in prange(c):
        if use_max:
            best = np.full(w, -np.inf, np.float32)
            for i in range(h):
                row = x[k, i]
                for j in range(w):
                    best[j] = _max(row[j], best[j])
            column_strip[k] = best
        else:
            totals = np.zeros(w, np.float64)
            for i in range(h):
                row = x[k, i]
                for j in range(w):
                    totals[j] += row[j]
            for j in range(w):
                column_strip[k, j] = totals[j] / h
    out = np.empty((c, h, w), np.float32)
    for task in prange(c * h):
        k, i = task // h, task % h
        across, down, row, target = row_strip[k, i], column_strip[k], x[k, i], out[k, i]
        for j in range(w):
            s = across + down[j]
            target[j] = row[j] * _sigmoid(s) if gate else s
    return out
