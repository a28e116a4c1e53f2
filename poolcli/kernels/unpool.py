"""Kernel for max unpooling, = torch ``max_unpool2d``: a scatter of pooled values to the flat
argmax positions a max pooling recorded."""

import numpy as np
from numba import njit, prange


@njit(parallel=True, cache=True, error_model="numpy", nogil=True)
def max_unpool(x, indices, out_hw):
    """(C, h, w) values and int64 (C, h, w) flat positions -> (C, H, W): zeros, with
    ``x[c, i, j]`` written at flat position ``indices[c, i, j]`` of plane ``c`` (``r * W + s``).

    Writes go in row-major order, so where positions repeat (overlapping windows sharing a
    maximum) the later one wins, as in torch's CPU loop run on one thread (with several threads
    torch races there). Every position must lie in ``[0, H * W)``: the caller checks it.
    """
    c = x.shape[0]
    n = x.shape[1] * x.shape[2]
    oh, ow = out_hw
    values = x.reshape(c, n)
    positions = indices.reshape(c, n)
    out = np.zeros((c, oh * ow), np.float32)
    # A scatter may write anywhere in its plane: one task per channel, so that no two tasks
    # write the same plane and the row-major order of writes holds.
    for k in prange(c):
        plane = out[k]
        for p in range(n):
            plane[positions[k, p]] = values[k, p]
    return out.reshape(c, oh, ow)
