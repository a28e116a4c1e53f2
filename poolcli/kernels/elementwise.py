"""Element-wise activation kernels. ``code`` selects the function (see ``ACTIVATIONS``);
``alpha`` and ``beta`` are its parameters (clip: min and max).

:func:`activate_row` is what every kernel applies, the convolutions' epilogues included: the
activations of conv trunks (relu, clip as relu6, hard_sigmoid, hard_swish, sigmoid, silu and gelu)
in loops of selects that LLVM vectorises, and NaN kept by their form, not by a test per value
(:func:`_apply`, the rest, tests and branches per value and runs 5 to 10 times slower).
"""

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


@njit(cache=True, error_model="numpy", nogil=True, fastmath=FASTMATH, inline="always")
def _clip(v, low, high):
    """``v`` within [low, high], NaN kept (both comparisons are false for it)."""
    return low if v < low else (high if v > high else v)


EXP_FLOOR = np.float32(-87.0)  # e ** y below it is subnormal in float32: taken as 0
BLOCK = 256  # values per pass of _sigmoid_rows


@njit(cache=True, error_model="numpy", nogil=True, fastmath=FASTMATH, inline="always")
def _exp_split(y):
    """``e ** y`` of a float32 ``y`` in [EXP_FLOOR, 0] as ``(p, bits)``: ``p`` a polynomial in the
    remainder of ``y`` by ``ln 2``, ``bits`` the int32 whose float32 reading is ``2 ** k``, so
    that ``e ** y = p * 2 ** k`` (the caller reads ``bits`` back as float32 in a second pass)."""
    k = np.floor(y * np.float32(1.4426950408889634) + np.float32(0.5))
    r = y - k * np.float32(0.693145751953125) - k * np.float32(1.428606765330187e-06)  # ln 2 in two parts
    p = np.float32(1 / 720) + r * np.float32(1 / 5040)
    p = np.float32(1 / 120) + r * p
    p = np.float32(1 / 24) + r * p
    p = np.float32(1 / 6) + r * p
    p = np.float32(0.5) + r * p
    p = np.float32(1.0) + r * p
    return np.float32(1.0) + r * p, (np.int32(k) + 127) << 23


@njit(cache=True, error_model="numpy", nogil=True, fastmath=FASTMATH)
def _sigmoid_rows(row, silu):
    """``row[:] = sigmoid(row)`` (or ``row * sigmoid(row)`` with ``silu``) in float32, to 3e-7
    relative, in passes that vectorise on AVX2 as on AVX-512: ``e ** -|v|`` as ``2 ** k`` times
    a polynomial in the remainder, ``2 ** k`` made from its bits in an int32 array read back as
    float32 (a table lookup, a gather, keeps LLVM from vectorising). NaN kept; values whose
    ``e ** -|v|`` would be subnormal give 0 (or 1) exactly, as torch's float32 does near them."""
    poly = np.empty(BLOCK, np.float32)
    bits = np.empty(BLOCK, np.int32)
    scale = bits.view(np.float32)
    for start in range(0, row.size, BLOCK):
        part = row[start : start + BLOCK]
        n = part.size
        for t in range(n):
            y = -abs(part[t])
            y = y if y > EXP_FLOOR else EXP_FLOOR  # NaN too: a valid exponent, put back below
            poly[t], bits[t] = _exp_split(y)
        for t in range(n):
            v = part[t]
            e = poly[t] * scale[t] if -abs(v) > EXP_FLOOR else np.float32(0.0)
            sig = np.float32(1.0) / (np.float32(1.0) + e)
            sig = sig if v >= 0 else e * sig
            sig = v * sig if silu else sig
            part[t] = sig if v == v else v


@njit(cache=True, error_model="numpy", nogil=True, fastmath=FASTMATH)
def _gelu_rows(row):
    """``row[:] = gelu(row) = row / 2 * erfc(-row / sqrt 2)``, to 1.5e-6 relative (where
    ``|gelu| > 1e-3``; measured on a million values of 4 N(0, 1) against ``math.erfc``), in
    float32 passes that vectorise (libm's erfc, 13 ns a value, does not; with the exponent in
    float64, 1.2 ns a value against 0.6). ``erfc(z)`` of ``z = |v| / sqrt 2`` is Numerical
    Recipes' Chebyshev fit ``t exp(-z^2 + P(t))``, ``t = 1 / (1 + z / 2)``, 1.2e-7 relative
    everywhere in exact arithmetic, the exp as in :func:`_sigmoid_rows`; then
    ``v / 2 * (2 - erfc(z))`` for ``v >= 0`` and ``v / 2 * erfc(z)`` below, so the far negative
    tail keeps its digits (``1 + erf`` would cancel them). NaN kept; ``|v| >= 12.7`` (erfc
    below 1e-36) takes erfc as 0."""
    poly = np.empty(BLOCK, np.float32)
    bits = np.empty(BLOCK, np.int32)
    scale = bits.view(np.float32)
    for start in range(0, row.size, BLOCK):
        part = row[start : start + BLOCK]
        n = part.size
        for t in range(n):
            z = abs(part[t]) * np.float32(0.7071067811865476)
            z = z if z < np.float32(9.0) else np.float32(9.0)  # NaN too: a valid exponent, put back below
            q = np.float32(1.0) / (np.float32(1.0) + np.float32(0.5) * z)
            a = -z * z + np.float32(-1.26551223) + q * (np.float32(1.00002368) + q * (np.float32(0.37409196) + q * (
                np.float32(0.09678418) + q * (np.float32(-0.18628806) + q * (np.float32(0.27886807) + q * (
                    np.float32(-1.13520398) + q * (np.float32(1.48851587) + q * (np.float32(-0.82215223) + q * np.float32(
                        0.17087277)))))))))
            e, bits[t] = _exp_split(a)
            poly[t] = q * e
        for t in range(n):
            v = part[t]
            e = poly[t] * scale[t] if abs(v) < np.float32(12.7) else np.float32(0.0)
            g = np.float32(0.5) * v * (np.float32(2.0) - e) if v >= 0 else np.float32(0.5) * v * e
            part[t] = g if v == v else v


@njit(cache=True, error_model="numpy", nogil=True, fastmath=FASTMATH, inline="always")
def activate_row(row, code, alpha, beta):
    """``row[:] = fn(row)`` for a 1-D float32 array, = :func:`_apply` on each value."""
    if code == 0:
        return
    if code == 1:
        for t in range(row.size):
            v = row[t]
            row[t] = 0.0 if v <= 0 else v  # NaN kept
    elif code == 9:
        for t in range(row.size):
            row[t] = _clip(row[t], alpha, beta)
    elif code == 10:
        for t in range(row.size):
            row[t] = _clip(alpha * row[t] + beta, 0.0, 1.0)
    elif code == 11:
        for t in range(row.size):
            v = row[t]
            row[t] = v * _clip(v + 3.0, 0.0, 6.0) / 6
    elif code == 4 or code == 12:
        _sigmoid_rows(row, code == 12)
    elif code == 13:
        _gelu_rows(row)
    else:
        for t in range(row.size):
            row[t] = _apply(row[t], code, alpha, beta)


@njit(parallel=True, cache=True, error_model="numpy", nogil=True, fastmath=FASTMATH)
def activate(x, code, alpha, beta):
    """A new float32 array: ``fn(x)`` element-wise. Works on any C-contiguous shape."""
    flat = x.reshape(-1)
    out = np.empty_like(flat)
    n = flat.size
    block = 16384
    for b in prange((n + block - 1) // block):
        out[b * block : (b + 1) * block] = flat[b * block : (b + 1) * block]
        activate_row(out[b * block : (b + 1) * block], code, alpha, beta)
    return out.reshape(x.shape)


@njit(cache=True, error_model="numpy", nogil=True, fastmath=FASTMATH)
def activate_serial(flat, code, alpha, beta):
    """``flat[:] = fn(flat)`` on the calling thread: for a few values, where launching threads
    would cost more than the work."""
    activate_row(flat, code, alpha, beta)


@njit(parallel=True, cache=True, error_model="numpy", nogil=True, fastmath=FASTMATH)
def activate_inplace(x, code, alpha, beta):
    """``x[...] = fn(x)``, for arrays a kernel has just produced."""
    flat = x.reshape(-1)
    n = flat.size
    block = 16384
    for b in prange((n + block - 1) // block):
        activate_row(flat[b * block : (b + 1) * block], code, alpha, beta)
