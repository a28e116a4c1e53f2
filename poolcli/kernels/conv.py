"""Kernel for 2-D convolution (cross-correlation, as torch conv2d): direct, on a map that the
stage has already padded, so the kernel itself is a "valid" convolution with no edge cases.

Each parallel task computes one output row for a block of up to ``BLOCK`` output channels of
one group: every input value loaded serves ``BLOCK`` multiply-adds, and the innermost loop runs
along contiguous output columns so that it vectorises. For that to hold with a column stride
``sw``, the input comes split into its ``sw`` column phases (``xs[c, y, p, j]`` is padded
column ``j * sw + p``), so a tap reads a contiguous run of one phase. Columns go in tiles of
``TILE`` so the accumulator rows stay in L1 cache on wide maps. Loops index from 0 over slices,
which spares Numba's negative-index checks. Accumulation is in float32, as torch's.
"""

import numpy as np
from numba import njit, prange

from poolcli.kernels import FASTMATH

BLOCK = 4
TILE = 512


@njit(cache=True, nogil=True, fastmath=FASTMATH)
def _block_row(out, xs, weight, o, c0, oy, x0, x1, sh, sw, dh, dw):
    """``out[o:o+4, oy, x0:x1] +=`` the correlation of input channels ``c0 ...`` with ``weight[o:o+4]``."""
    _, cg, kh, kw = weight.shape
    n = x1 - x0
    r0, r1 = out[o, oy, x0:x1], out[o + 1, oy, x0:x1]
    r2, r3 = out[o + 2, oy, x0:x1], out[o + 3, oy, x0:x1]
    for ci in range(cg):
        for ky in range(kh):
            phases = xs[c0 + ci, oy * sh + ky * dh]
            for kx in range(kw):
                w0 = weight[o, ci, ky, kx]
                w1 = weight[o + 1, ci, ky, kx]
                w2 = weight[o + 2, ci, ky, kx]
                w3 = weight[o + 3, ci, ky, kx]
                column = kx * dw + x0 * sw
                start = column // sw
                src = phases[column % sw, start : start + n]
                for t in range(n):
                    v = src[t]
                    r0[t] += w0 * v
                    r1[t] += w1 * v
                    r2[t] += w2 * v
                    r3[t] += w3 * v


@njit(cache=True, nogil=True, fastmath=FASTMATH)
def _single_row(out, xs, weight, o, c0, oy, x0, x1, sh, sw, dh, dw):
    """``out[o, oy, x0:x1] +=`` the correlation of input channels ``c0 ...`` with ``weight[o]``."""
    _, cg, kh, kw = weight.shape
    n = x1 - x0
    r = out[o, oy, x0:x1]
    for ci in range(cg):
        for ky in range(kh):
            phases = xs[c0 + ci, oy * sh + ky * dh]
            for kx in range(kw):
                w = weight[o, ci, ky, kx]
                column = kx * dw + x0 * sw
                start = column // sw
                src = phases[column % sw, start : start + n]
                for t in range(n):
                    r[t] += w * src[t]


@njit(parallel=True, cache=True, nogil=True, fastmath=FASTMATH)
def conv2d(xs, weight, bias, sh, sw, dh, dw, groups, out_h, out_w):
    """Valid grouped convolution of a padded map split into column phases.

    Parameters
    ----------
    xs : float32 (C, Hp, sw, ceil(Wp / sw)), C-contiguous
        The padded input, ``xs[c, y, p, j] = padded[c, y, j * sw + p]``.
    weight : float32 (O, C/groups, kh, kw), C-contiguous
    bias : float32 (O,)
    sh, sw, dh, dw : int
        Stride and dilation.
    groups : int
        Output channel ``o`` reads input channels ``[g * C/groups, (g + 1) * C/groups)`` with
        ``g = o // (O / groups)``.
    out_h, out_w : int
        Output size (the caller's shape arithmetic, which fits inside the padded map).

    Returns
    -------
    float32 (O, out_h, out_w)
    """
    out_c, cg, _, _ = weight.shape
    per_group = out_c // groups
    blocks = (per_group + BLOCK - 1) // BLOCK
    out = np.empty((out_c, out_h, out_w), np.float32)
    for task in prange(groups * blocks * out_h):
        oy = task % out_h
        g = task // out_h // blocks
        o0 = g * per_group + (task // out_h % blocks) * BLOCK
        o1 = min(o0 + BLOCK, (g + 1) * per_group)
        for o in range(o0, o1):
            out[o, oy, :] = bias[o]
        for x0 in range(0, out_w, TILE):
            x1 = min(x0 + TILE, out_w)
            if o1 - o0 == BLOCK:
                _block_row(out, xs, weight, o0, g * cg, oy, x0, x1, sh, sw, dh, dw)
            else:
                for o in range(o0, o1):
                    _single_row(out, xs, weight, o, g * cg, oy, x0, x1, sh, sw, dh, dw)
    return out
