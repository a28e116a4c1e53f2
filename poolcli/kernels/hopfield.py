"""Kernel for Hopfield pooling: the modern Hopfield update ``xi = X^T softmax(beta X xi)`` over
the map's positions as patterns, in float64."""

import numpy as np
from numba import njit, prange

from poolcli.kernels import FASTMATH


@njit(cache=True, error_model="numpy", nogil=True)
def _channel_max(row):
    """Max of one channel's values; NaN propagates."""
    best = -np.inf
    for v in row:
        if v > best or np.isnan(v):
            best = v
            if np.isnan(v):
                break
    return best


@njit(cache=True, error_model="numpy", nogil=True, fastmath=FASTMATH)
def _softmax_inplace(scores):
    """``scores`` -> softmax(scores), stably: the largest score is subtracted first."""
    top = scores.max()
    total = 0.0
    for p in range(scores.size):
        scores[p] = np.exp(scores[p] - top)
        total += scores[p]
    for p in range(scores.size):
        scores[p] /= total


@njit(parallel=True, cache=True, error_model="numpy", nogil=True, fastmath=FASTMATH)
def hopfield_pool(x, beta, steps, query_max):
    """(C, H, W) C-contiguous -> (C,): ``steps`` updates ``xi = X^T softmax(beta X xi)`` where
    the rows of X (N x C) are the map's positions; xi starts at the mean pattern, or at the
    max per channel when ``query_max``."""
    c = x.shape[0]
    n = x.shape[1] * x.shape[2]
    patterns = x.reshape(c, n)  # patterns[:, p] is position p's pattern
    xi = np.empty(c, np.float64)
    for k in prange(c):
        if query_max:
            xi[k] = _channel_max(patterns[k])
        else:
            acc = 0.0
            for p in range(n):
                acc += patterns[k, p]
            xi[k] = acc / n
    scores = np.empty(n, np.float64)
    for _ in range(steps):
        for p in prange(n):
            acc = 0.0
            for k in range(c):
                acc += patterns[k, p] * xi[k]
            scores[p] = beta * acc
        _softmax_inplace(scores)
        retrieved = np.empty(c, np.float64)
        for k in prange(c):
            acc = 0.0
            for p in range(n):
                acc += patterns[k, p] * scores[p]
            retrieved[k] = acc
        xi = retrieved
    return xi.astype(np.float32)
