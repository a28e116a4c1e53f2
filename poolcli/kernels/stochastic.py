"""Kernels for stochastic pooling (Zeiler & Fergus 2013) over floor-mode windows (no padding,
every window inside the map).

Activations are clamped at 0, ``a = max(x, 0)`` (NaN stays NaN), and each window is a
multinomial over its elements with probabilities ``a_i / sum a``. Sums run in float64, so
that no float32 activation overflows them. Special windows: all zero gives 0; a NaN gives NaN;
otherwise a +inf takes all the probability and gives +inf. The random draws come from the
caller, one ``u`` in [0, 1) per output.
"""

import numpy as np
from numba import njit, prange

from poolcli.kernels import FASTMATH


@njit(cache=True, error_model="numpy", nogil=True, inline="always")
def _clamp(v):
    """``max(v, 0)`` that keeps NaN (``NaN <= 0`` is false), as torch's clamp."""
    return 0.0 if v <= 0 else v


@njit(cache=True, error_model="numpy", nogil=True, fastmath=FASTMATH)
def _eval_row(plane, i, kernel, stride, out_row):
    """Output row ``i``: ``sum a^2 / sum a`` per window, the expected value of the draw. Taps
    one at a time across the row, so that the column loop vectorises."""
    ow = out_row.size
    sums = np.zeros(ow)
    squares = np.zeros(ow)
    top = i * stride[0]
    for r in range(top, top + kernel[0]):
        row = plane[r]
        for kj in range(kernel[1]):
            taps = row[kj:]
            for j in range(ow):
                a = np.float64(_clamp(taps[j * stride[1]]))
                sums[j] += a
                squares[j] += a * a
    for j in range(ow):
        total = sums[j]
        if total == 0.0:
            out_row[j] = 0.0
        elif total == np.inf:
            out_row[j] = np.inf
        else:  # NaN stays NaN
            out_row[j] = squares[j] / total


@njit(parallel=True, cache=True, error_model="numpy", nogil=True, fastmath=FASTMATH)
def stochastic_pool_eval(x, kernel, stride, out_hw):
    """(C, H, W) -> (C, H', W'): the probability-weighted average ``sum a^2 / sum a`` of each
    window (0 for an all-zero window), the test-time rule of Zeiler & Fergus."""
    c = x.shape[0]
    oh, ow = out_hw
    out = np.empty((c, oh, ow), np.float32)
    for task in prange(c * oh):
        k, i = task // oh, task % oh
        _eval_row(x[k], i, kernel, stride, out[k, i])
    return out


@njit(cache=True, error_model="numpy", nogil=True, inline="always")  # called, the train kernel ran 1.2 times slower
def _draw(plane, top, left, kernel, u):
    """One window's draw: the first element, row-major, with ``a > 0`` whose running sum of
    ``a`` reaches ``u * sum a``. The running sum repeats the total's additions in the same
    order, so it ends exactly at the total and, with ``u < 1``, always reaches the threshold;
    requiring ``a > 0`` keeps a zero (probability 0) from being picked even when ``u = 0``."""
    total = 0.0
    for r in range(top, top + kernel[0]):
        for s in range(left, left + kernel[1]):
            total += np.float64(_clamp(plane[r, s]))
    if total == 0.0 or total == np.inf or np.isnan(total):
        return total  # all zero; a +inf takes all the probability; NaN propagates
    threshold = u * total
    running = 0.0
    for r in range(top, top + kernel[0]):
        for s in range(left, left + kernel[1]):
            a = np.float64(_clamp(plane[r, s]))
            running += a
            if a > 0 and running >= threshold:
                return a
    return np.nan  # unreachable: the running sum ends at the total (see above)


@njit(parallel=True, cache=True, error_model="numpy", nogil=True)
def stochastic_pool_train(x, u, kernel, stride):
    """(C, H, W) -> (C, H', W'): per window, the element drawn with probability ``a_i / sum a``
    by inverting the cumulative sum at ``u[c, i, j] * sum a`` (``u``: float64 (C, H', W') in
    [0, 1)). No fast-math: the running sum must repeat the total's additions exactly."""
    c, oh, ow = u.shape
    out = np.empty((c, oh, ow), np.float32)
    for task in prange(c * oh):
        k, i = task // oh, task % oh
        for j in range(ow):
            out[k, i, j] = _draw(x[k], i * stride[0], j * stride[1], kernel, u[k, i, j])
    return out
