"""NumPy's BLAS, for the convolutions that run as matrix products.

NumPy's wheels ship OpenBLAS. :func:`sgemm` finds its single-precision matrix product, which
the conv kernels call from Numba's threads, one task each (:func:`poolcli.kernels.conv.gemm_planes`):
every thread then multiplies its own tile, and only Numba's threads are busy. OpenBLAS would
otherwise spread each call over its own pool of a thread per core as well, and on a machine of
two cores two pools spinning against each other made a conv 10 to 50 times slower (measured:
64 -> 64 3x3 at 112x112, 7 ms for the product alone, 356 ms between Numba's copy kernels).
So while a convolution runs, :func:`one_thread` holds OpenBLAS to the calling thread, and gives
it back its count once no convolution runs (NumPy's other products keep their threads).

Where NumPy's BLAS is not an OpenBLAS this module finds (a build of NumPy against another BLAS,
macOS's Accelerate), :func:`sgemm` is None and the conv stages use their direct kernels.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import glob
import os
import threading

_lock = threading.Lock()
_depth = 0  # convolutions running now
_saved: int | None = None  # OpenBLAS's thread count before the first of them


@functools.lru_cache(maxsize=None)
def _library():
    """(the library, its symbol suffix) of NumPy's OpenBLAS, or None."""
    import numpy as np

    package = os.path.dirname(np.__file__)
    candidates = [*glob.glob(os.path.join(os.path.dirname(package), "numpy.libs", "*openblas*")),
                  *glob.glob(os.path.join(package, ".dylibs", "*openblas*"))]
    for path in candidates:
        try:
            lib = ctypes.CDLL(path)  # NumPy has loaded it already: the same library, not a second copy
        except OSError:
            continue
        for prefix, suffix in (("scipy_", "64_"), ("", "64_"), ("", "")):
            if hasattr(lib, f"{prefix}cblas_sgemm{suffix}") and hasattr(lib, f"{prefix}openblas_set_num_threads{suffix}"):
                return lib, prefix, suffix
    return None


@functools.lru_cache(maxsize=None)
def sgemm():
    """CBLAS's ``sgemm`` as a ctypes function Numba kernels take as an argument, or None."""
    found = _library()
    if found is None:
        return None
    lib, prefix, suffix = found
    integer = ctypes.c_int64 if suffix else ctypes.c_int  # the ILP64 builds carry a 64 suffix
    prototype = ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_int, ctypes.c_int, integer, integer, integer,
                                 ctypes.c_float, ctypes.c_void_p, integer, ctypes.c_void_p, integer, ctypes.c_float,
                                 ctypes.c_void_p, integer)
    return prototype((f"{prefix}cblas_sgemm{suffix}", lib))


def _thread_count():
    found = _library()
    lib, prefix, suffix = found
    get = getattr(lib, f"{prefix}openblas_get_num_threads{suffix}")
    put = getattr(lib, f"{prefix}openblas_set_num_threads{suffix}")
    get.restype, get.argtypes = ctypes.c_int, []
    put.restype, put.argtypes = None, [ctypes.c_int]
    return get, put


@contextlib.contextmanager
def one_thread():
    """OpenBLAS computes each call on its caller's thread while any convolution is inside."""
    global _depth, _saved
    get, put = _thread_count()
    with _lock:
        if _depth == 0:
            _saved = get()
            if _saved != 1:
                put(1)
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0 and _saved != 1:
                put(_saved)
