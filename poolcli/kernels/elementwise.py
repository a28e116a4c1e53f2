"""Element-wise activation kernels. ``code`` selects the function (see ``ACTIVATIONS``);
``alpha`` and ``beta`` are its parameters (clip: min and max)."""

import math

import numpy as np
from numba import njit, prange

from poolcli.kernels import FASTMATH

# The order is the code passed to the kernel; poolcli.stages.elementwise keeps the names.
ACTIVATIONS = ("none", "relu", "abs", "square", "sigmoid", "tanh", "sign_sqrt", "leaky_relu", "elu", "clip",
               "hard_sigmoid", "hard_swish", "silu", "gelu", "gelu_tanh", "erf", "exp", "softplus")

_SQRT_2_OVER_PI = math.sqrt(2 / math.pi)
_SQRT_HALF = math.sqrt(0.5)


@njit(cache=True, error_model="numpy", inline="always")
def _sigmoid(v):
    if v >= 0:
        return 1 / (1 + np.exp(-v))
    e = np.exp(v)
    return e / (1 + e)


@njit(cache=True, error_model="numpy", inline="always")
def _apply(v, code, alpha, beta):
    if v != v:  # every function keeps NaN, as torch does
        return v
    if code == 1:
        return v if v > 0 else 0.0
    if code == 2:
        return abs(v)
    if code == 3:
        return v * v
    if code == 4:
        return _sigmoid(v)
    if code == 5:
        return np.tanh(v)
    if code == 6:
        return np.sign(v) * np.sqrt(abs(v))
    if code == 7:  # leaky_relu
        return v if v >= 0 else alpha * v
    if code == 8:  # elu
        return v if v > 0 else alpha * np.expm1(v)
    if code == 9:  # clip
        if v < alpha:
            return alpha
        if v > beta:
            return beta
        return v
    if code == 10:  # hard_sigmoid
        return max(0.0, min(1.0, alpha * v + beta))
    if code == 11:  # hard_swish, in torch's form: exact zero at -3
        return v * max(0.0, min(6.0, v + 3.0)) / 6
    if code == 12:  # silu
        return v * _sigmoid(v)
    if code == 13:  # gelu, exact; erfc(-t) = 1 + erf(t) without its cancellation for t < 0
        w = np.float64(v)
        return 0.5 * w * math.erfc(-w * _SQRT_HALF)
    if code == 14:  # gelu, tanh approximation; (1 + tanh(u)) / 2 = sigmoid(2 u), without the cancellation
        w = np.float64(v)
        return w * _sigmoid(2 * _SQRT_2_OVER_PI * (w + 0.044715 * w * w * w))
    if code == 15:
        return math.erf(v)
    if code == 16:
        return np.exp(v)
    if code == 17:  # softplus, log(1 + exp(v)) without overflow
        if v > 0:
            return v + np.log1p(np.exp(-v))
        return np.log1p(np.exp(v))
    return v


@njit(parallel=True, cache=True, error_model="numpy", nogil=True, fastmath=FASTMATH)
def activate(x, code, alpha, beta):
    """A new float32 array: ``fn(x)`` element-wise. Works on any C-contiguous shape."""
    flat = x.reshape(-1)
    out = np.empty_like(flat)
    n = flat.size
    block = 16384
    for b in prange((n + block - 1) // block):
        for i in range(b * block, min(n, (b + 1) * block)):
            out[i] = _apply(flat[i], code, alpha, beta)
    return out.reshape(x.shape)


@njit(parallel=True, cache=True, error_model="numpy", nogil=True, fastmath=FASTMATH)
def activate_inplace(x, code, alpha, beta):
    """``x[...] = fn(x)``, for arrays a kernel has just produced."""
    flat = x.reshape(-1)
    n = flat.size
    block = 16384
    for b in prange((n + block - 1) // block):
        for i in range(b * block, min(n, (b + 1) * block)):
            flat[i] = _apply(flat[i], code, alpha, beta)
