"""exp and log written out in float64 arithmetic, which LLVM vectorises, for kernels that take
one per element: libm's ``exp``, ``log`` and ``pow`` do not vectorise, and there is no vector
maths library here. tests/test_vecmath.py checks them against NumPy's: the log to 2e-15
relative, exp to 3e-14 (the rounding of ``k ln 2`` for ``|k|`` up to 1075), 4e-15 for
``|y| < 100``.

"""

import numpy as np
from numba import njit

from poolcli.kernels import FASTMATH

LN2 = float(np.log(2.0))
SQRT2 = float(np.sqrt(2.0))
POW2 = 2.0 ** np.arange(-1074, 1024, dtype=np.float64)  # POW2[k + 1074] == 2.0 ** k, exactly

#: exp_near's domain: ``e ** y`` for y in [EXP_LOW, EXP_HIGH]
EXP_LOW, EXP_HIGH = -740.0, 705.0


@njit(cache=True, error_model="numpy", nogil=True, fastmath=FASTMATH, inline="always")
def _log(e, m):
    """``ln(m * 2 ** e)`` for m in [1, 2): the exponent times ln 2, plus ``2 atanh(s)`` of the
    mantissa brought into [0.7, 1.4) (``s = (m-1)/(m+1)``, ``|s| < 0.172``), its series to s ** 17."""
    big = m > SQRT2
    m = m * 0.5 if big else m
    e = e + 1 if big else e
    s = (m - 1.0) / (m + 1.0)
    z = s * s
    series = 1 / 9 + z * (1 / 11 + z * (1 / 13 + z * (1 / 15 + z / 17)))
    return e * LN2 + 2.0 * s * (1.0 + z * (1 / 3 + z * (1 / 5 + z * (1 / 7 + z * series))))


@njit(cache=True, error_model="numpy", nogil=True, fastmath=FASTMATH, inline="always")
def log_bits(bits):
    """The natural log of a positive normal float32 given its bits (an int64), to 2e-15
    relative."""
    return _log(((bits >> 23) & 0xFF) - 127, 1.0 + (bits & 0x7FFFFF) * (1.0 / 8388608.0))


@njit(cache=True, error_model="numpy", nogil=True, fastmath=FASTMATH, inline="always")
def log_bits64(bits):
    """The natural log of a positive normal float64 given its bits (an int64), to 2e-15
    relative."""
    return _log(((bits >> 52) & 0x7FF) - 1023, 1.0 + (bits & 0xFFFFFFFFFFFFF) * (1.0 / 4503599627370496.0))


@njit(cache=True, error_model="numpy", nogil=True, fastmath=FASTMATH, inline="always")
def exp_near(y):
    """``e ** y`` for y in [:data:`EXP_LOW`, :data:`EXP_HIGH`] (the caller keeps it there:
    outside, the table index is wrong), to 3e-14 relative (results below 2.2e-308, subnormal,
    to 1e-321): ``2 ** k`` (a table) times the Taylor series of ``e ** r``, ``y = k ln 2 + r``,
    ``|r| <= 0.35``, to r ** 13."""
    k = np.floor(y * (1.0 / LN2) + 0.5)
    r = y - k * LN2
    tail = 1 / 720 + r * (1 / 5040 + r * (1 / 40320 + r * (1 / 362880 + r * (1 / 3628800 + r * (
        1 / 39916800 + r * (1 / 479001600 + r / 6227020800))))))
    series = 1.0 + r * (1.0 + r * (1 / 2 + r * (1 / 6 + r * (1 / 24 + r * (1 / 120 + r * tail)))))
    return series * POW2[np.int64(k) + 1074]


@njit(cache=True, error_model="numpy", nogil=True, inline="always")
def root_range(p):
    """The values whose ``p``-th root :func:`roots` takes through exp and log: ``[low, high)``,
    where ``ln(v) / p`` stays in exp_near's domain and v is a normal float64."""
    return np.exp(max(EXP_LOW * p, -708.0)), np.exp(min(EXP_HIGH * p, 700.0))


@njit(cache=True, error_model="numpy", nogil=True, fastmath=FASTMATH, inline="always")
def roots(values, p, low, high, out):
    """``out[j] = values[j] ** (1 / p)`` for float64 ``values >= 0`` (or NaN, inf): through
    :func:`log_bits64` and :func:`exp_near`, which vectorise, when every value is 0 or in
    ``[low, high)`` (:func:`root_range`), else ``pow`` for all (25 ns a call, ten times more).
    3e-14 relative for roots within 1e-40 to 1e40; beyond, the log's error grows with the
    exponent, to 3e-12 near float64's ends."""
    odd = 0
    for v in values:
        odd += not (v == 0.0 or low <= v < high)  # NaN and inf are odd
    if odd:
        for j in range(values.size):
            out[j] = values[j] ** (1.0 / p)
    else:
        bits = values.view(np.int64)
        for j in range(values.size):
            y = log_bits64(bits[j]) / p  # a value of 0 (bits 0) may leave exp's domain:
            root = exp_near(y if y > EXP_LOW else EXP_LOW)  # clamped, then not taken
            out[j] = root if values[j] != 0 else 0.0
