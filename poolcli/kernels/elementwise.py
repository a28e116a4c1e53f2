"""Element-wise activation kernels. ``code`` selects the function (see ``ACTIVATIONS``)."""

import numpy as np
from numba import njit, prange

from poolcli.kernels import FASTMATH

# The order is the code passed to the kernel; poolcli.stages.elementwise keeps the names.
ACTIVATIONS = ("none", "relu", "abs", "square", "sigmoid", "tanh", "sign_sqrt")


@njit(cache=True, error_model="numpy", inline="always")
def _apply(v, code):
    if code == 1:
        if v > 0 or v != v:  # relu keeps NaN, as torch does
            return v
        return 0.0
    if code == 2:
        return abs(v)
    if code == 3:
        return v * v
    if code == 4:
        if v >= 0:
            return 1 / (1 + np.exp(-v))
        e = np.exp(v)
        return e / (1 + e)
    if code == 5:
        return np.tanh(v)
    if code == 6:
        return np.sign(v) * np.sqrt(abs(v))
    return v


@njit(parallel=True, cache=True, error_model="numpy", nogil=True, fastmath=FASTMATH)
def activate(x, code):
    """A new float32 array: ``fn(x)`` element-wise. Works on any C-contiguous shape."""
    flat = x.reshape(-1)
    out = np.empty_like(flat)
    n = flat.size
    block = 16384
    for b in prange((n + block - 1) // block):
        for i in range(b * block, min(n, (b + 1) * block)):
            out[i] = _apply(flat[i], code)
    return out.reshape(x.shape)


@njit(parallel=True, cache=True, error_model="numpy", nogil=True, fastmath=FASTMATH)
def activate_inplace(x, code):
    """``x[...] = fn(x)``, for arrays a kernel has just produced."""
    flat = x.reshape(-1)
    n = flat.size
    block = 16384
    for b in prange((n + block - 1) // block):
        for i in range(b * block, min(n, (b + 1) * block)):
            flat[i] = _apply(flat[i], code)
