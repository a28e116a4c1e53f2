"""3x3 stride-1 convolution by Winograd's minimal filtering, F(4x4, 3x3).

Each 4x4 tile of the output is computed from the 6x6 tile of the padded input under it:
``Y = Aᵀ [Σ_c (G g G ᵀ) ⊙ (Bᵀ d B)] A``. The weights ``G g Gᵀ`` are transformed once
(:func:`transform_weights`, 36 matrices (O, C)), each input tile once per channel, and the sum
over channels becomes 36 matrix products (O, C) x (C, tiles) by BLAS: 36 multiply-adds per
4x4 outputs and channel pair instead of 144, 4x fewer. The transforms cost a few operations
per input and output value.

The interpolation points are 0, 1, -1, 1/2, -2 and infinity (Barabasz, Anderson, Soodhalter
and Gregg, "Error analysis and improving the accuracy of Winograd convolution for deep neural
networks", 2020): in float32 a layer of 256 channels differed from a float64 convolution by
4e-6 of its largest value, against 1.1e-5 with the points 0, ±1, ±2 of Lavin and Gray, and
3e-7 for a direct convolution.
"""

import numpy as np
from numba import njit, prange

from poolcli.kernels import FASTMATH
from poolcli.kernels.elementwise import activate_row

POINTS = (0.0, 1.0, -1.0, 0.5, -2.0)  # and infinity
M, R = 4, 3  # output tile, kernel
N = M + R - 1  # input tile


def _matrices(points=POINTS):
    """Aᵀ (M, N), G (N, R) and Bᵀ (N, N) of Toom-Cook for ``points`` and infinity, float64:
    Aᵀ evaluates at the points, G scales the kernel's by the Lagrange denominators, and Bᵀ is
    what makes ``y = Aᵀ [(G g) ⊙ (Bᵀ d)]`` the correlation ``y_i = Σ_k g_k d_(i+k)``."""
    p = np.array(points, np.float64)
    at, g = np.zeros((M, N)), np.zeros((N, R))
    for j, pj in enumerate(p):
        at[:, j] = pj ** np.arange(M)
        g[j] = pj ** np.arange(R) / np.prod([pj - q for q in p if q != pj])
    at[M - 1, N - 1] = g[N - 1, R - 1] = 1
    # Bᵀ from  Σ_j Aᵀ[i, j] G[j, k] Bᵀ[j, s] = [s == i + k]  for every i, k, s.
    equations, targets = [], []
    for i in range(M):
        for k in range(R):
            for s in range(N):
                row = np.zeros((N, N))
                row[:, s] = at[i] * g[:, k]
                equations.append(row.ravel())
                targets.append(float(s == i + k))
    bt = np.linalg.lstsq(np.array(equations), np.array(targets), rcond=None)[0].reshape(N, N)
    bt[np.abs(bt) < 1e-12] = 0
    return at, g, bt


A_T64, G64, B_T64 = _matrices()
# The transforms' coefficients as float32 (a Python float would make Numba compute in float64).
F0_125, F0_25, F0_5, F1_5, F2, F2_5, F4, F8 = (np.float32(v) for v in (0.125, 0.25, 0.5, 1.5, 2, 2.5, 4, 8))


def transform_weights(weight: np.ndarray) -> np.ndarray:
    """(O, C, 3, 3) -> float32 (36, O, C): ``G g Gᵀ`` of each kernel, in float64 then rounded,
    the 36 values of a 6x6 tile first."""
    u = np.einsum("ir,ocrs,js->ijoc", G64, weight.astype(np.float64), G64)
    return np.ascontiguousarray(u.reshape(N * N, *weight.shape[:2]), dtype=np.float32)


def tiles(out_h: int, out_w: int) -> tuple[int, int]:
    """Tile rows and tiles per row of an output of ``out_h x out_w``."""
    return -(-out_h // M), -(-out_w // M)


def plane_size(out_h: int, out_w: int) -> tuple[int, int]:
    """(rows, cols) of the padded input planes that :func:`winograd_planes` reads: every tile's
    6x6 input lies inside them (zeros past the padded map)."""
    th, tw = tiles(out_h, out_w)
    return M * th + R - 1, M * (tw + 1) + R - 1  # a tile of slack: the last tile reads one further


BLOCK_TILES = 112  # tiles per block of 64 x 64 channels: the products' columns
BLOCK_BYTES = 16 << 20  # a block's transformed inputs and products, at the most


def block_rows(channels: int, out_c: int, out_h: int, out_w: int) -> int:
    """Tile rows per block: about ``BLOCK_TILES`` tiles at 64 x 64 channels, more with more
    channels (in proportion to their geometric mean), within ``BLOCK_BYTES``. Measured on 2
    threads, side by side: 64 -> 64 at 112x112 best at 112 tiles (3.4 ms; the whole map 7.8),
    128 -> 128 at 56x56 at all 196 (2.5 ms; 56 tiles 3.5), 256 -> 256 at 56x56 from 112 (7.0 ms;
    42 tiles 9.0): the products of more channels want more columns."""
    th, tw = tiles(out_h, out_w)
    wanted = BLOCK_TILES * max(1.0, (channels * out_c) ** 0.5 / 64)
    per_row = N * N * (channels + out_c) * tw * 4
    return max(1, min(th, -(-int(wanted) // tw), BLOCK_BYTES // per_row))


# Not fused: Numba would fuse the three passes over the workers into one loop, as it cannot see
# that the products (by pointer) read what the first pass writes.
@njit(parallel={"fusion": False}, cache=True, error_model="numpy", nogil=True, fastmath=FASTMATH)
def winograd_planes(sgemm, planes, weights, bias, residual, code, alpha, beta, out, rows, cols, block, workers):
    """``out = act(conv3x3(x) + bias + residual)`` of the padded planes (C, rows, cols) (flat,
    :func:`plane_size`), by F(4x4, 3x3) with ``weights`` :func:`transform_weights`.

    The output's tile rows go in blocks of ``block``. Per block, three passes over every
    worker: each (channel, tile row) transformed into the block's ``inputs`` (36, C, tiles),
    the 36 products ``weights[e] @ inputs[e]`` by BLAS's ``sgemm`` into ``products`` (36, O,
    tiles), each (output channel, tile row) transformed back, with the bias, residual and
    activation, into ``out``."""
    taps, out_c, channels = weights.shape
    out_h, out_w = out.shape[1], out.shape[2]
    th, tw = (out_h + M - 1) // M, (out_w + M - 1) // M
    width = block * tw  # tiles of a block
    inputs = np.empty((taps, channels, width), np.float32)
    products = np.empty((taps, out_c, width), np.float32)
    with_residual = residual.size > 0
    # Each worker's scratch: a tile row's input rows after the transform down the columns, in
    # four phases (columns 4t + s), and its output's columns after the transform, then rows.
    phases = np.empty((workers, N, 4, tw + 1), np.float32)
    sides = np.empty((workers, M * N, tw), np.float32)
    lines = np.empty((workers, M, M * tw), np.float32)
    for first in range(0, th, block):
        count = min(block, th - first)
        n = count * tw
        tasks = channels * count
        for worker in prange(workers):
            phase = phases[worker]
            for task in range(worker, tasks, workers):
                c, r = task // count, task % count
                _input_row(planes, c * rows * cols + (first + r) * M * cols, cols, tw, phase, inputs, c, r * tw)
        parts = max(1, (2 * workers + taps - 1) // taps)  # split the channels where 36 products are too few
        share = (out_c + parts - 1) // parts
        for worker in prange(workers):
            for task in range(worker, taps * parts, workers):
                e, o0 = task // parts, task % parts * share
                m = min(share, out_c - o0)
                if m > 0:
                    sgemm(ROW_MAJOR, NO_TRANS, NO_TRANS, m, n, channels, np.float32(1), weights[e, o0:].ctypes.data,
                          channels, inputs[e].ctypes.data, width, np.float32(0), products[e, o0:].ctypes.data, width)
        tasks = out_c * count
        for worker in prange(workers):
            side, line = sides[worker], lines[worker]
            for task in range(worker, tasks, workers):
                o, r = task // count, task % count
                _output_row(products, o, r * tw, tw, first + r, side, line, out[o], bias[o],
                            residual[o] if with_residual else out[o], with_residual, code, alpha, beta)


ROW_MAJOR, NO_TRANS = 101, 111  # CBLAS's enums


@njit(cache=True, error_model="numpy", nogil=True, fastmath=FASTMATH, inline="always")
def _b(d0, d1, d2, d3, d4, d5):
    """Bᵀ d of six values (Bᵀ of :func:`_matrices`, whose tests hold these two to it)."""
    return (d0 - F1_5 * d1 - F2 * d2 + F1_5 * d3 + d4,
            -d1 + F0_5 * d2 + F2_5 * d3 + d4,
            d1 - F2_5 * d2 + F0_5 * d3 + d4,
            -F2 * d1 - d2 + F2 * d3 + d4,
            F0_5 * d1 - d2 - F0_5 * d3 + d4,
            d1 - F1_5 * d2 - F2 * d3 + F1_5 * d4 + d5)


@njit(cache=True, error_model="numpy", nogil=True, fastmath=FASTMATH, inline="always")
def _a(m0, m1, m2, m3, m4, m5):
    """Aᵀ m of six values."""
    plus, minus = m1 + m2, m1 - m2
    return (m0 + plus + m3 + m4, minus + F0_5 * m3 - F2 * m4, plus + F0_25 * m3 + F4 * m4,
            minus + F0_125 * m3 - F8 * m4 + m5)


@njit(cache=True, error_model="numpy", nogil=True, fastmath=FASTMATH, inline="always")
def _input_row(planes, start, cols, tw, phase, inputs, c, t0):
    """Bᵀ d B of the ``tw`` tiles of one tile row of one channel (its six plane rows from
    ``start``), into ``inputs[:, c, t0 : t0 + tw]``: down the columns of the six rows at once,
    into the four phases of each result row (its columns 4t + s), then across each row's tiles
    from its phases; each pass a loop along contiguous rows."""
    r0, r1, r2 = planes[start:], planes[start + cols :], planes[start + 2 * cols :]
    r3, r4, r5 = planes[start + 3 * cols :], planes[start + 4 * cols :], planes[start + 5 * cols :]
    for t in range(tw + 1):
        for s in range(4):
            x = 4 * t + s
            phase[0, s, t], phase[1, s, t], phase[2, s, t], phase[3, s, t], phase[4, s, t], phase[5, s, t] = _b(
                r0[x], r1[x], r2[x], r3[x], r4[x], r5[x])
    for i in range(N):
        q0, q1, q2, q3 = phase[i, 0], phase[i, 1], phase[i, 2], phase[i, 3]
        e = i * N
        v0, v1, v2 = inputs[e, c, t0:], inputs[e + 1, c, t0:], inputs[e + 2, c, t0:]
        v3, v4, v5 = inputs[e + 3, c, t0:], inputs[e + 4, c, t0:], inputs[e + 5, c, t0:]
        for t in range(tw):
            v0[t], v1[t], v2[t], v3[t], v4[t], v5[t] = _b(q0[t], q1[t], q2[t], q3[t], q0[t + 1], q1[t + 1])


@njit(cache=True, error_model="numpy", nogil=True, fastmath=FASTMATH, inline="always")
def _output_row(products, o, t0, tw, ty, side, line, out_plane, bias, residual_plane, with_residual, code, alpha,
                beta):
    """Aᵀ m A of the ``tw`` tiles of tile row ``ty`` of output channel ``o`` (their products at
    ``products[:, o, t0 : t0 + tw]``): down each tile column into ``side`` (M x N rows), then
    across into the four output rows, interleaved, plus ``bias`` and the residual, through
    the activation, into ``out_plane``."""
    out_h, out_w = out_plane.shape
    for j in range(N):
        m0, m1, m2 = products[j, o, t0:], products[N + j, o, t0:], products[2 * N + j, o, t0:]
        m3, m4, m5 = products[3 * N + j, o, t0:], products[4 * N + j, o, t0:], products[5 * N + j, o, t0:]
        s0, s1, s2, s3 = side[j], side[N + j], side[2 * N + j], side[3 * N + j]
        for t in range(tw):
            s0[t], s1[t], s2[t], s3[t] = _a(m0[t], m1[t], m2[t], m3[t], m4[t], m5[t])
    for a in range(M):
        y = ty * M + a
        if y >= out_h:
            break
        u0, u1, u2, u3, u4, u5 = side[a * N], side[a * N + 1], side[a * N + 2], side[a * N + 3], side[a * N + 4], \
            side[a * N + 5]
        row = line[a]
        for t in range(tw):
            y0, y1, y2, y3 = _a(u0[t], u1[t], u2[t], u3[t], u4[t], u5[t])
            row[4 * t], row[4 * t + 1], row[4 * t + 2], row[4 * t + 3] = y0 + bias, y1 + bias, y2 + bias, y3 + bias
        row = row[:out_w]
        if with_residual:
            r = residual_plane[y]
            for x in range(out_w):
                row[x] += r[x]
        activate_row(row, code, alpha, beta)
        out_plane[y] = row
