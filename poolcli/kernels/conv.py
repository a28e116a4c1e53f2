"""Kernels for 2-D convolution (cross-correlation, as torch conv2d): direct and register-blocked.

The map is first padded (in any of torch's padding modes) and split into its ``sh x sw``
stride phases ("polyphase planes": plane ``(py, px)`` holds padded pixels ``(i * sh + py,
j * sw + px)``), one flat float32 array. In that layout every tap of every stride and dilation
reads, for consecutive output positions, consecutive elements: output ``(oy, ox)`` is position
``p = oy * cols + ox`` of a plane's grid, and tap ``(c, ky, kx)`` reads element ``p + offset``
of the flat array. A convolution is then, per output channel, a sum over taps of shifted runs
of one array, and the columns ``ox >= out_w`` of the grid (a few per row) are computed and
dropped rather than special-cased.

Each parallel task computes a span of ``SPAN`` positions for a block of ``OUT_BLOCK`` output
channels of one group. It walks the taps ``TAPS`` at a time: the innermost loop runs along the
span (it vectorises) and updates ``OUT_BLOCK`` accumulator rows with ``TAPS`` taps each, so every
accumulator load and store serves ``TAPS`` multiply-adds and every input load ``OUT_BLOCK``. The
weights come packed per (block, chunk of taps) by :func:`pack_weights`; a block's missing output
channels have zero weights and are not written, and the last chunk's missing taps have zero
weights and read a run of zeros kept after the planes (not a real tap: ``0 * inf`` would be a
NaN where torch has none). Consecutive tasks are the blocks of one span, so its input stays in
cache while every block reads it. Accumulation is in float32, as torch's.

The accumulator rows lie in one flat array, ``ROW`` apart, starting on cache lines. With those
constant offsets, and a pass over a whole span given the constant ``SPAN`` as its length, LLVM
proves that the rows do not overlap and vectorises the pass without run-time overlap checks
(12-16% faster than rows of a 2-D array and a length known at run time; the shorter pass over
a map's last span keeps the checks).
"""

import dataclasses
import functools
from dataclasses import dataclass

import numpy as np
from numba import njit, prange

from poolcli.kernels import FASTMATH, blas, channels_last, winograd
from poolcli.kernels.elementwise import activate_inplace, activate_row, activate_serial
from poolcli.layout import is_channels_last, pixels

OUT_BLOCK = 8  # output channels per task
TAPS = 4  # taps per pass over a span
NARROW_TAPS = 8  # taps per pass of the kernel for few output channels per group
PLANE_ROWS = 16  # rows of a polyphase plane per task of pad_planes
SPAN = 512  # output positions per task: OUT_BLOCK rows of them stay in L1 cache
ROW = SPAN + 16  # accumulator row length: rows 2 KiB apart would alias in the L1 cache
VECTOR = 16  # float32 per cache line (64 bytes), and per AVX-512 vector

PADDING_MODES = ("zeros", "reflect", "replicate", "circular")


# --- the polyphase padded input ----------------------------------------------------------------


@njit(cache=True, error_model="numpy", nogil=True, inline="always")
def _source(i, size, before, mode):
    """The index along an axis of ``size`` that padded index ``i`` reads (``before`` padding in
    front), or -1 where it is a zero; torch's padding modes (their pads never exceed the size)."""
    s = i - before
    if 0 <= s < size:
        return s
    if mode == 0:
        return -1
    if mode == 1:  # reflect: the edge is not repeated
        return -s if s < 0 else 2 * (size - 1) - s
    if mode == 2:  # replicate
        return 0 if s < 0 else size - 1
    return s + size if s < 0 else s - size  # circular


@njit(parallel=True, cache=True, error_model="numpy", nogil=True)
def pad_planes(x, pads, mode, stride, rows, cols, zeros):
    """(C, H, W) -> flat float32: for each channel, its ``sh * sw`` polyphase planes of ``rows x
    cols`` of the padded map (zeros past the padded size), then ``cols`` zeros of slack that the
    dropped columns of the last row may read, then ``zeros`` zeros for the taps that only fill a
    chunk (:func:`zero_start`).

    ``pads`` is (top, bottom, left, right), ``mode`` an index into ``PADDING_MODES``.
    """
    c, h, w = x.shape
    top, bottom, left, right = pads
    sh, sw = stride
    padded_h, padded_w = h + top + bottom, w + left + right
    plane = rows * cols
    out = np.empty(c * sh * sw * plane + cols + zeros, np.float32)
    out[c * sh * sw * plane :] = 0
    blocks = (rows + PLANE_ROWS - 1) // PLANE_ROWS
    for task in prange(c * sh * blocks):
        k, py, first_row = task // (sh * blocks), task // blocks % sh, task % blocks * PLANE_ROWS
        for i in range(first_row, min(rows, first_row + PLANE_ROWS)):
            y = i * sh + py
            r = _source(y, h, top, mode) if y < padded_h else -1
            if sw == 2 and mode == 0 and r >= 0:
                _split_row(out, (k * sh + py) * sw * plane + i * cols, plane, cols, x[k, r], left)
                continue
            for px in range(sw):
                start = ((k * sh + py) * sw + px) * plane + i * cols
                _pad_row(out[start : start + cols], x[k, r] if r >= 0 else x[k, 0], r >= 0, px, sw, left, w,
                         padded_w, mode)
    return out


@njit(cache=True, error_model="numpy", nogil=True, inline="always")
def _pad_row(dst, row, inside, px, sw, left, w, padded_w, mode):
    """One row of a polyphase plane: padded columns ``j * sw + px`` of ``row`` (zeros for a row
    outside the map: ``inside`` False)."""
    cols = dst.size
    if not inside:
        dst[:] = 0
        return
    # Columns j whose padded column j * sw + px lies inside the map: [lo, hi).
    lo = min(cols, max(0, (left - px + sw - 1) // sw))
    hi = max(lo, min(cols, (left + w - px + sw - 1) // sw))
    first = lo * sw + px - left
    if sw == 1:  # a plain copy, which vectorises
        dst[lo:hi] = row[first : first + hi - lo]
    elif sw == 2:  # a constant stride, which vectorises as well (loads and shuffles: 3x faster)
        src = row[first:]
        for j in range(hi - lo):
            dst[lo + j] = src[2 * j]
    else:
        for j in range(hi - lo):
            dst[lo + j] = row[first + j * sw]
    for j in range(lo):
        s = _source(j * sw + px, w, left, mode)
        dst[j] = row[s] if s >= 0 else 0
    for j in range(hi, cols):
        col = j * sw + px
        s = _source(col, w, left, mode) if col < padded_w else -1
        dst[j] = row[s] if s >= 0 else 0


@njit(cache=True, error_model="numpy", nogil=True, inline="always")
def _split_row(planes, start, plane, cols, row, left):
    """A row padded by zeros (``left`` of them before it, as many as the planes' ``cols`` need
    after) into its two column phases, both in one pass: padded column ``2j`` goes to
    ``planes[start + j]``, ``2j + 1`` to ``planes[start + plane + j]``. Twice as fast as a pass
    per phase: each load serves both."""
    w = row.size
    even, odd = planes[start : start + cols], planes[start + plane : start + plane + cols]
    lo = min(cols, (left + 1) // 2)  # the columns j whose padded columns 2j and 2j + 1 both lie in the row
    hi = max(lo, min(cols, (left + w) // 2))
    src, e, o = row[2 * lo - left :], even[lo:], odd[lo:]
    for j in range(hi - lo):
        e[j] = src[2 * j]
        o[j] = src[2 * j + 1]
    for j in range(lo):
        _split_edge(even, odd, row, j, left)
    for j in range(hi, cols):
        _split_edge(even, odd, row, j, left)


@njit(cache=True, error_model="numpy", nogil=True, inline="always")
def _split_edge(even, odd, row, j, left):
    a, b = 2 * j - left, 2 * j + 1 - left
    even[j] = row[a] if 0 <= a < row.size else 0
    odd[j] = row[b] if 0 <= b < row.size else 0


# --- the convolution ----------------------------------------------------------------------------


@njit(cache=True, error_model="numpy", nogil=True)
def _aligned_zeros(size):
    """float32 zeros (size,) starting on a cache line. Numba aligns arrays to 32 bytes only: half
    the time every 64-byte vector load and store of an accumulator row (``ROW``, a multiple of
    ``VECTOR``) would then straddle two cache lines, and cost two (the kernels below ran 15-20%
    slower so)."""
    flat = np.zeros(size + VECTOR, np.float32)
    first = (VECTOR - flat.ctypes.data // 4 % VECTOR) % VECTOR
    return flat[first : first + size]


@njit(parallel=True, cache=True, error_model="numpy", nogil=True, fastmath=FASTMATH)
def conv_planes(planes, packed, offsets, bias, out_c, out_h, out_w, cols):
    """Valid grouped convolution of :func:`pad_planes` output.

    Parameters
    ----------
    planes : float32 (n,), from :func:`pad_planes`
    packed : float32 (groups, blocks, chunks, OUT_BLOCK, TAPS), from :func:`pack_weights`
    offsets : int64 (groups, chunks * TAPS)
        For each group and tap, the flat index in ``planes`` that output position 0 reads
        (:func:`tap_offsets`).
    bias : float32 (out_c,)
    out_c, out_h, out_w : int
    cols : int
        The planes' row length: output ``(oy, ox)`` is grid position ``oy * cols + ox``.

    Returns
    -------
    float32 (out_c, out_h, out_w)
    """
    groups, blocks, chunks = packed.shape[0], packed.shape[1], packed.shape[2]
    per_group = out_c // groups
    positions = out_h * cols
    spans = (positions + SPAN - 1) // SPAN
    out = np.empty((out_c, out_h, out_w), np.float32)
    for task in prange(groups * spans * blocks):
        b = task % blocks
        p0 = task // blocks % spans * SPAN
        g = task // blocks // spans
        n = min(SPAN, positions - p0)
        acc = _aligned_zeros(OUT_BLOCK * ROW)  # its rows, flat: row q starts at q * ROW
        for k in range(chunks):
            tap = offsets[g, k * TAPS :]
            s0 = planes[tap[0] + p0 :]
            s1 = planes[tap[1] + p0 :]
            s2 = planes[tap[2] + p0 :]
            s3 = planes[tap[3] + p0 :]
            # Spans are whole but the last: see the module docstring for the constant length.
            if n == SPAN:
                _accumulate_chunk(acc, packed[g, b, k], s0, s1, s2, s3, SPAN)
            else:
                _accumulate_chunk(acc, packed[g, b, k], s0, s1, s2, s3, n)
        for q in range(min(OUT_BLOCK, per_group - b * OUT_BLOCK)):  # the block's channels
            o = g * per_group + b * OUT_BLOCK + q
            _store_span(out[o], acc[q * ROW :], bias[o], p0, n, cols)
    return out


@njit(cache=True, error_model="numpy", nogil=True, inline="always")
def _store_span(out_plane, acc_row, bias, p0, n, cols):
    """Write the span of ``n`` grid positions from ``p0`` of one output channel, plus its bias:
    each output row's positions in the span, less the dropped columns ``ox >= out_w``."""
    out_w = out_plane.shape[1]
    oy = p0 // cols
    while oy * cols < p0 + n:
        first = max(p0, oy * cols)
        last = min(p0 + n, oy * cols + out_w)
        dst = out_plane[oy, first - oy * cols :]
        src = acc_row[first - p0 :]
        for t in range(last - first):
            dst[t] = src[t] + bias
        oy += 1


@njit(cache=True, error_model="numpy", nogil=True, fastmath=FASTMATH, inline="always")
def _accumulate_chunk(acc, w, s0, s1, s2, s3, n):
    """``acc[q * ROW + t] += sum_j w[q, j] * s_j[t]`` for ``t < n``: one pass of :func:`conv_planes`
    over a span, ``TAPS`` taps for ``OUT_BLOCK`` accumulator rows (the weights in registers)."""
    a0, a1, a2, a3 = acc[0 * ROW :], acc[1 * ROW :], acc[2 * ROW :], acc[3 * ROW :]
    a4, a5, a6, a7 = acc[4 * ROW :], acc[5 * ROW :], acc[6 * ROW :], acc[7 * ROW :]
    w00, w01, w02, w03 = w[0, 0], w[0, 1], w[0, 2], w[0, 3]
    w10, w11, w12, w13 = w[1, 0], w[1, 1], w[1, 2], w[1, 3]
    w20, w21, w22, w23 = w[2, 0], w[2, 1], w[2, 2], w[2, 3]
    w30, w31, w32, w33 = w[3, 0], w[3, 1], w[3, 2], w[3, 3]
    w40, w41, w42, w43 = w[4, 0], w[4, 1], w[4, 2], w[4, 3]
    w50, w51, w52, w53 = w[5, 0], w[5, 1], w[5, 2], w[5, 3]
    w60, w61, w62, w63 = w[6, 0], w[6, 1], w[6, 2], w[6, 3]
    w70, w71, w72, w73 = w[7, 0], w[7, 1], w[7, 2], w[7, 3]
    for t in range(n):
        v0, v1, v2, v3 = s0[t], s1[t], s2[t], s3[t]
        a0[t] += w00 * v0 + w01 * v1 + w02 * v2 + w03 * v3
        a1[t] += w10 * v0 + w11 * v1 + w12 * v2 + w13 * v3
        a2[t] += w20 * v0 + w21 * v1 + w22 * v2 + w23 * v3
        a3[t] += w30 * v0 + w31 * v1 + w32 * v2 + w33 * v3
        a4[t] += w40 * v0 + w41 * v1 + w42 * v2 + w43 * v3
        a5[t] += w50 * v0 + w51 * v1 + w52 * v2 + w53 * v3
        a6[t] += w60 * v0 + w61 * v1 + w62 * v2 + w63 * v3
        a7[t] += w70 * v0 + w71 * v1 + w72 * v2 + w73 * v3


@njit(parallel=True, cache=True, error_model="numpy", nogil=True, fastmath=FASTMATH)
def conv_planes_narrow(planes, packed, offsets, bias, out_c, out_h, out_w, cols):
    """:func:`conv_planes` for few output channels per group (a blocked task would mostly compute
    zeros): one task per output channel and span, ``NARROW_TAPS`` taps per pass over its
    accumulator row. Same arguments, but ``packed`` is (groups, per_group, chunks * NARROW_TAPS)
    from :func:`pack_narrow` and ``offsets`` has ``NARROW_TAPS``-long chunks."""
    groups, per_group = packed.shape[0], packed.shape[1]
    chunks = packed.shape[2] // NARROW_TAPS
    positions = out_h * cols
    spans = (positions + SPAN - 1) // SPAN
    out = np.empty((out_c, out_h, out_w), np.float32)
    for task in prange(groups * spans * per_group):
        q = task % per_group
        p0 = task // per_group % spans * SPAN
        g = task // per_group // spans
        n = min(SPAN, positions - p0)
        acc = _aligned_zeros(ROW)
        weights, tap = packed[g, q], offsets[g]
        for k in range(chunks):
            j = k * NARROW_TAPS
            w0, w1, w2, w3 = weights[j], weights[j + 1], weights[j + 2], weights[j + 3]
            w4, w5, w6, w7 = weights[j + 4], weights[j + 5], weights[j + 6], weights[j + 7]
            s0, s1 = planes[tap[j] + p0 :], planes[tap[j + 1] + p0 :]
            s2, s3 = planes[tap[j + 2] + p0 :], planes[tap[j + 3] + p0 :]
            s4, s5 = planes[tap[j + 4] + p0 :], planes[tap[j + 5] + p0 :]
            s6, s7 = planes[tap[j + 6] + p0 :], planes[tap[j + 7] + p0 :]
            for t in range(n):
                acc[t] += (w0 * s0[t] + w1 * s1[t] + w2 * s2[t] + w3 * s3[t]
                           + w4 * s4[t] + w5 * s5[t] + w6 * s6[t] + w7 * s7[t])
        o = g * per_group + q
        _store_span(out[o], acc, bias[o], p0, n, cols)
    return out


# --- depthwise --------------------------------------------------------------------------------

DEPTHWISE_GRID = 16384  # grid positions per task of depthwise, about (whole output rows)


@njit(parallel=True, cache=True, error_model="numpy", nogil=True, fastmath=FASTMATH)
def depthwise(x, weight, bias, pads, mode, stride, dilation, residual, code, alpha, beta, out):
    """``out[o] = act(sum_{ky, kx} weight[o, ky, kx] * padded(x)[o // m, oy * sh + ky * dh, ox * sw
    + kx * dw] + bias[o] + residual[o])``: a convolution of one input channel per group (depthwise,
    ``m = O / C`` outputs per channel), with its epilogue, in one pass over the map.

    A task is a band of output rows of one output channel. It pads the input rows the band
    reads (in ``mode``, an index into ``PADDING_MODES``) into polyphase planes of its own, as
    :func:`pad_planes` lays out a whole map, so that each tap reads a contiguous run for
    consecutive grid positions, rows after rows (runs of hundreds, where a row of a late
    layer's 14x14 map would be a loop of 14). Then, ``SPAN`` positions at a time, it sums the
    taps into an accumulator in L1 and hands it to :func:`_epilogue` (bias, ``residual`` (O, H',
    W'; empty for none), activation, the dropped columns left out). The map is read about once
    and the output written once: no padded copy of the whole map, no separate passes.
    """
    channels, h, w = x.shape
    out_c, kh, kw = weight.shape
    out_h, out_w = out.shape[1], out.shape[2]
    top, left = pads[0], pads[2]
    sh, sw = stride
    dh, dw = dilation
    per_channel = out_c // channels
    padded_w = w + pads[2] + pads[3]
    padded_h = h + pads[0] + pads[1]
    cols = (padded_w + sw - 1) // sw
    band = max(1, min(out_h, DEPTHWISE_GRID // cols))
    bands = (out_h + band - 1) // band
    rows = band + (kh - 1) * dh // sh + 1  # plane rows a band reads, at the most
    plane = rows * cols
    # Small maps: a task takes several channels, so that its buffers and launch serve more work.
    group = max(1, DEPTHWISE_GRID // (out_h * cols)) if bands == 1 else 1
    tasks = (out_c + group - 1) // group * bands
    with_residual = residual.size > 0
    for task in prange(tasks):
        planes = np.empty(sh * sw * plane + cols, np.float32)
        planes[sh * sw * plane :] = 0  # what the dropped columns of the last plane row read
        acc = _aligned_zeros(SPAN)
        r0 = task % bands * band
        r1 = min(out_h, r0 + band)
        positions = (r1 - r0) * cols
        for o in range(task // bands * group, min(out_c, (task // bands + 1) * group)):
            c = o // per_channel
            for py in range(sh):
                for i in range(rows):
                    y = (r0 + i) * sh + py
                    r = _source(y, h, top, mode) if y < padded_h else -1
                    if sw == 2 and mode == 0 and r >= 0:
                        _split_row(planes, py * sw * plane + i * cols, plane, cols, x[c, r], left)
                        continue
                    for px in range(sw):
                        start = (py * sw + px) * plane + i * cols
                        _pad_row(planes[start : start + cols], x[c, r] if r >= 0 else x[c, 0], r >= 0, px, sw, left,
                                 w, padded_w, mode)
            dst = out[o, r0:r1]
            extra = residual[o, r0:r1] if with_residual else dst
            for p0 in range(0, positions, SPAN):
                n = min(SPAN, positions - p0)
                if kh == 3 and kw == 3:
                    _depthwise_3x3(acc, n, planes, weight[o], dh, dw, sh, sw, plane, cols, p0)
                    _epilogue(dst, acc[:n], bias[o], extra, with_residual, p0, cols, code, alpha, beta)
                    continue
                acc[:] = 0
                for ky in range(kh):
                    _depthwise_row(acc, n, planes, weight[o, ky], ky * dh, dw, sh, sw, plane, cols, p0)
                _epilogue(dst, acc[:n], bias[o], extra, with_residual, p0, cols, code, alpha, beta)
    return out


@njit(cache=True, error_model="numpy", nogil=True, fastmath=FASTMATH, inline="always")
def _depthwise_3x3(acc, n, planes, taps, dh, dw, sh, sw, plane, cols, p0):
    """``acc[:n] = `` the nine taps ``taps`` (3, 3) from grid position ``p0``: the commonest
    depthwise kernel in one pass, the accumulator written once (5-10% faster than a pass per row)."""

    def start(ky, kx):
        y, col = ky * dh, kx * dw
        return ((y % sh) * sw + col % sw) * plane + (y // sh) * cols + col // sw + p0

    w00, w01, w02 = taps[0, 0], taps[0, 1], taps[0, 2]
    w10, w11, w12 = taps[1, 0], taps[1, 1], taps[1, 2]
    w20, w21, w22 = taps[2, 0], taps[2, 1], taps[2, 2]
    s00, s01, s02 = planes[start(0, 0) :], planes[start(0, 1) :], planes[start(0, 2) :]
    s10, s11, s12 = planes[start(1, 0) :], planes[start(1, 1) :], planes[start(1, 2) :]
    s20, s21, s22 = planes[start(2, 0) :], planes[start(2, 1) :], planes[start(2, 2) :]
    for t in range(n):
        acc[t] = (w00 * s00[t] + w01 * s01[t] + w02 * s02[t] + w10 * s10[t] + w11 * s11[t] + w12 * s12[t]
                  + w20 * s20[t] + w21 * s21[t] + w22 * s22[t])


@njit(cache=True, error_model="numpy", nogil=True, fastmath=FASTMATH, inline="always")
def _depthwise_row(acc, n, planes, taps, y, dw, sh, sw, plane, cols, p0):
    """``acc[:n] += sum_kx taps[kx] * (the run that tap (y, kx * dw) reads from grid position p0)``:
    one row of a depthwise kernel, its 3, 5 or 7 taps in one pass (each pass loads and stores
    the accumulator: a pass per tap made a 5x5 kernel load-bound), others a pass per tap."""
    kw = taps.size
    base = ((y % sh) * sw) * plane + (y // sh) * cols + p0

    def start(kx):
        col = kx * dw
        return base + (col % sw) * plane + col // sw

    if kw == 3:
        w0, w1, w2 = taps[0], taps[1], taps[2]
        s0, s1, s2 = planes[start(0):], planes[start(1):], planes[start(2):]
        for t in range(n):
            acc[t] += w0 * s0[t] + w1 * s1[t] + w2 * s2[t]
    elif kw == 5:
        w0, w1, w2, w3, w4 = taps[0], taps[1], taps[2], taps[3], taps[4]
        s0, s1, s2, s3, s4 = planes[start(0):], planes[start(1):], planes[start(2):], planes[start(3):], planes[start(4):]
        for t in range(n):
            acc[t] += w0 * s0[t] + w1 * s1[t] + w2 * s2[t] + w3 * s3[t] + w4 * s4[t]
    elif kw == 7:
        w0, w1, w2, w3, w4, w5, w6 = taps[0], taps[1], taps[2], taps[3], taps[4], taps[5], taps[6]
        s0, s1, s2, s3 = planes[start(0):], planes[start(1):], planes[start(2):], planes[start(3):]
        s4, s5, s6 = planes[start(4):], planes[start(5):], planes[start(6):]
        for t in range(n):
            acc[t] += w0 * s0[t] + w1 * s1[t] + w2 * s2[t] + w3 * s3[t] + w4 * s4[t] + w5 * s5[t] + w6 * s6[t]
    else:
        for kx in range(kw):
            tap, src = taps[kx], planes[start(kx):]
            for t in range(n):
                acc[t] += tap * src[t]


# --- as a matrix product -------------------------------------------------------------------------


@njit(parallel=True, cache=True, error_model="numpy", nogil=True, fastmath=FASTMATH)
def gemm_planes(sgemm, planes, matrix, offsets, bias, residual, code, alpha, beta, out, cols, tile, parts, gather,
                workers, pixel_rows):
    """``out[g * O_g + o] = act(sum_k matrix[g, o, k] * planes[offsets[g, k] + p] + bias + residual)``
    for each grid position ``p = oy * cols + ox`` with ``ox < out_w``: a grouped convolution as
    matrix products by BLAS's ``sgemm`` (:func:`poolcli.kernels.blas.sgemm`), called from each of
    Numba's threads on its own tasks, with its epilogue.

    A task is one group's rows ``[o0, o0 + O_g / parts)`` for grid positions ``[p0, p0 + tile)``.
    With ``gather`` it copies that tile's tap matrix (im2col: ``taps`` rows, each a contiguous run
    of ``planes``) into its worker's buffer, then multiplies; without, ``planes`` already is the
    (taps, positions) matrix (a 1x1 convolution's map), or with ``pixel_rows`` the (positions,
    taps) one (a channels-last map: BLAS reads it as the transposed operand), and ``offsets`` is
    unused. The product
    goes straight into ``out`` where the grid has no dropped columns (``cols == out_w``), else into
    the worker's tile of the grid; either way, while the tile is still in cache, the epilogue adds
    the bias and ``residual`` (O, out_h, out_w; empty for none), applies activation ``code`` (an
    index into ``ACTIVATIONS``, with ``alpha`` and ``beta``) and writes each output row's first
    ``out_w`` positions: no grid of the whole map, and no second pass over it.

    ``workers`` (Numba's threads) take every ``workers``-th task each, as the tasks are of one
    size (a kernel that asks Numba for its thread's id cannot be cached).
    """
    groups, per_group, taps = matrix.shape
    out_h, out_w = out.shape[1], out.shape[2]
    positions = out_h * cols
    tiles = (positions + tile - 1) // tile
    rows = (per_group + parts - 1) // parts
    tasks = groups * tiles * parts
    with_residual = residual.size > 0
    # In place where the grid has no dropped columns, unless out is the residual (it is read
    # by the epilogue after the product).
    in_place = cols == out_w and not (with_residual and residual.ctypes.data == out.ctypes.data)
    flat = out.reshape(out.shape[0], out_h * out_w)  # the grid itself where in_place
    images = np.empty((workers, taps * tile if gather else 1), np.float32)
    products = np.empty((workers, 1 if in_place else rows * tile), np.float32)
    for worker in prange(workers):
        image, product = images[worker], products[worker]
        for task in range(worker, tasks, workers):
            g, p0, o0, n, m = _task_span(task, parts, tiles, tile, rows, positions, per_group)
            if m <= 0:
                continue
            first = g * per_group + o0  # the task's first output channel
            if gather:
                for k in range(taps):
                    start = offsets[g, k] + p0
                    image[k * n : (k + 1) * n] = planes[start : start + n]
                b, ldb, trans_b = image.ctypes.data, n, NO_TRANS
            elif pixel_rows:
                b, ldb, trans_b = planes[p0 * taps :].ctypes.data, taps, TRANS
            else:
                b, ldb, trans_b = planes[p0:].ctypes.data, positions, NO_TRANS
            if in_place:
                c, ldc = flat[first, p0:].ctypes.data, positions
            else:
                c, ldc = product.ctypes.data, n
            sgemm(ROW_MAJOR, NO_TRANS, trans_b, m, n, taps, np.float32(1), matrix[g, o0:].ctypes.data, taps, b, ldb,
                  np.float32(0), c, ldc)
            _finish_task(out, flat, product, in_place, first, m, n, p0, bias, residual, with_residual, cols, code,
                         alpha, beta)


@njit(parallel=True, cache=True, error_model="numpy", nogil=True, fastmath=FASTMATH)
def shifted_planes(sgemm, planes, matrix, offsets, channel_stride, bias, residual, code, alpha, beta, out, cols, tile,
                   parts, workers):
    """The convolution of :func:`gemm_planes` without im2col: one product per tap ``t``, of the
    tap's weights ``matrix[g, t]`` (O/groups, C/groups) with the planes as they lie, each
    channel's run of the tile's positions shifted by the tap's offset (``offsets[g, t]``, the
    offset of the group's first channel; channel ``c`` starts ``c * channel_stride`` further),
    summed into the worker's product tile by BLAS (beta 1 after the first tap), then the same
    epilogue. Every tap reads the map where it lies, so nothing is copied: on convolutions of
    many channels, where im2col's copy of ``kh * kw`` times the tile costs as much as a third of
    the product, this is that much faster."""
    groups, kernel_taps, per_group, per_channel = matrix.shape
    out_h, out_w = out.shape[1], out.shape[2]
    positions = out_h * cols
    tiles = (positions + tile - 1) // tile
    rows = (per_group + parts - 1) // parts
    tasks = groups * tiles * parts
    with_residual = residual.size > 0
    flat = out.reshape(out.shape[0], out_h * out_w)
    products = np.empty((workers, rows * tile), np.float32)
    for worker in prange(workers):
        product = products[worker]
        for task in range(worker, tasks, workers):
            g, p0, o0, n, m = _task_span(task, parts, tiles, tile, rows, positions, per_group)
            if m <= 0:
                continue
            for t in range(kernel_taps):
                sgemm(ROW_MAJOR, NO_TRANS, NO_TRANS, m, n, per_channel, np.float32(1), matrix[g, t, o0:].ctypes.data,
                      per_channel, planes[offsets[g, t] + p0 :].ctypes.data, channel_stride,
                      np.float32(1 if t > 0 else 0), product.ctypes.data, n)
            _finish_task(out, flat, product, False, g * per_group + o0, m, n, p0, bias, residual, with_residual, cols,
                         code, alpha, beta)


@njit(cache=True, error_model="numpy", nogil=True, inline="always")
def _task_span(task, parts, tiles, tile, rows, positions, per_group):
    """Task ``task`` of :func:`gemm_planes` and :func:`shifted_planes`: its group ``g``, first
    grid position ``p0`` and first output channel ``o0`` of the group, and its ``n`` positions
    and ``m`` channels (none past the group's last: a task may have ``m <= 0``)."""
    i, j, g = task % parts, task // parts % tiles, task // parts // tiles
    p0, o0 = j * tile, i * rows
    return g, p0, o0, min(tile, positions - p0), min(rows, per_group - o0)


@njit(cache=True, error_model="numpy", nogil=True, fastmath=FASTMATH, inline="always")
def _finish_task(out, flat, product, in_place, first, m, n, p0, bias, residual, with_residual, cols, code, alpha,
                 beta):
    """The epilogue of a task's ``m`` output channels from ``first``, positions ``[p0, p0 + n)``:
    from the grid itself where the product went in place, else from the worker's product tile."""
    for q in range(m):
        o = first + q
        src = flat[o, p0 : p0 + n] if in_place else product[q * n : (q + 1) * n]
        _epilogue(out[o], src, bias[o], residual[o] if with_residual else out[o], with_residual, p0, cols, code,
                  alpha, beta, in_place)


@njit(cache=True, error_model="numpy", nogil=True, fastmath=FASTMATH, inline="always")
def _epilogue(out_plane, src, bias, residual_plane, with_residual, p0, cols, code, alpha, beta, in_place=False):
    """One output channel's positions ``[p0, p0 + src.size)`` of the grid: each output row's part
    of them less the dropped columns, plus ``bias`` and the residual, through the activation.
    ``src`` is the task's own tile of the product, or, ``in_place``, the very positions of
    ``out_plane`` (a product written in place, where the grid has no dropped columns).

    The bias and the residual go into ``src`` and the activation runs over all of it at once,
    then each row's part is copied out: an activation per output row (28 values of a 28x28 map)
    cost more in its set-up than in its work (sigmoid and SiLU, 5 ns a value against 0.4)."""
    out_w = out_plane.shape[1]
    n = src.size
    if with_residual:
        oy = p0 // cols
        while oy * cols < p0 + n:
            lo = max(p0, oy * cols)
            hi = min(p0 + n, oy * cols + out_w)
            if hi > lo:
                s, r = src[lo - p0 : hi - p0], residual_plane[oy, lo - oy * cols : hi - oy * cols]
                for t in range(hi - lo):
                    s[t] = s[t] + bias + r[t]
            oy += 1
    else:
        for t in range(n):
            src[t] += bias
    activate_row(src, code, alpha, beta)
    if in_place:
        return
    oy = p0 // cols
    while oy * cols < p0 + n:
        lo = max(p0, oy * cols)
        hi = min(p0 + n, oy * cols + out_w)
        if hi > lo:
            out_plane[oy, lo - oy * cols : hi - oy * cols] = src[lo - p0 : hi - p0]
        oy += 1


ROW_MAJOR, NO_TRANS, TRANS = 101, 111, 112  # CBLAS's enums


TILE = 256  # output positions per task of gemm_planes, at the least
MIN_ROWS = 128  # output channels per task, at the least, where tasks split a group's channels
TASK_MACS = 1 << 21  # multiply-adds per task, at the least, where the tile allows: a call of
# sgemm costs microseconds besides its work, which a product of few channels does not cover
TILE_BYTES = 384 << 10  # a task's tap matrix and product, at the most: they stay in the L2 cache


def split_tasks(groups: int, per_group: int, taps: int, positions: int, threads: int) -> tuple[int, int]:
    """(tile, parts) of :func:`gemm_planes`: output positions per task, and the parts each
    group's output channels are split into where there are too few tiles to keep every thread
    busy.

    Measured on 3x3 convs of ResNet's sizes and its 7x7 stem (2 threads), tiles of 128 to 512
    positions and tasks of all of a group's channels ran fastest, 82 to 89 GMAC/s; tasks of 16
    or 32 channels lost up to 2x. Products of few channels and taps (MobileNet's 1x1 convs of
    16 to 144 channels) take longer tiles, up to :data:`TASK_MACS` multiply-adds while the tile's
    matrices fit :data:`TILE_BYTES`, and as long as every thread still gets two tasks."""
    tile = TILE
    longest = min(TASK_MACS // max(1, per_group * taps), TILE_BYTES // (4 * (taps + per_group)),
                  -(-positions // (2 * threads)))
    tile = max(tile, longest)
    tiles = -(-positions // tile)
    tile = -(-(-(-positions // tiles)) // VECTOR) * VECTOR  # the same count of tiles, evened out
    return tile, channel_parts(groups, per_group, tiles, threads)


def channel_parts(groups: int, per_group: int, tiles: int, threads: int) -> int:
    """The parts each group's output channels are split into where there are too few tiles to
    keep every thread busy (each part :data:`MIN_ROWS` channels at the least)."""
    parts = 1
    while groups * tiles * parts < 2 * threads and per_group // (2 * parts) >= MIN_ROWS:
        parts *= 2
    return parts


def conv2d_gemm(x, matrix, bias, pads, mode, stride, out_hw, offsets, residual, activation, threads, out=None):
    """Grouped 2-D convolution as matrix products, with its epilogue: :func:`pad_planes`, then
    :func:`gemm_planes`. ``matrix`` is float32 (groups,
    O/groups, C/groups * kh * kw), the weights reshaped; ``offsets`` int64 (groups, at least the
    taps) from :func:`tap_offsets` (only the real taps are read); ``residual`` float32 (O, H',
    W') or empty; ``activation`` (code, alpha, beta)."""
    groups, per_group, taps = matrix.shape
    rows, cols = plane_size(x.shape, pads, stride)
    out_h, out_w = out_hw
    positions = out_h * cols
    planes = pad_planes(x, pads, PADDING_MODES.index(mode), stride, rows, cols, 0)
    out = np.empty((groups * per_group, out_h, out_w), np.float32) if out is None else out
    tile, parts = split_tasks(groups, per_group, taps, positions, threads)
    with blas.one_thread():
        gemm_planes(blas.sgemm(), planes, matrix, offsets, bias, residual, *activation, out, cols, tile, parts, True,
                    threads, False)
    return out


PRODUCT_TILE_BYTES = 1 << 22  # a task's product tile at the most, where no im2col tile shares the cache
LONGEST_TILE = 4096
SHORTEST_TILE = 64


def product_tile(per_group: int, positions: int, threads: int) -> int:
    """Output positions per task of :func:`shifted_planes` and of :func:`pointwise`: long tiles
    (their products are short in ``K``, and BLAS packs the weights anew for each call; measured
    on ResNet-50's layers, tiles of 1,000 to 3,000 positions ran 10-20% faster than 256), as
    long as the product tile of a group's channels fits :data:`PRODUCT_TILE_BYTES` (it stays in
    the L2 cache for the epilogue, and between taps) and every thread still gets a task. More
    tiles than threads are rounded down to a multiple of the threads (longer tiles, every thread
    as many): 5 tiles on 2 threads kept one thread idle for a fifth of ConvNeXt's 96 -> 384 at
    112x112 (7.4 ms; 4 tiles 6.0, 6 tiles 6.2, measured on 2 threads). A small map is split
    into tiles as short as :data:`SHORTEST_TILE` for every thread to get one: MobileNetV2's
    960 -> 160 at 14x14 was one task of 196 positions on one of two threads (0.64 ms; 2 tiles
    0.39)."""
    longest = max(TILE, min(LONGEST_TILE, PRODUCT_TILE_BYTES // (4 * per_group)))
    tiles = max(-(-positions // longest), min(threads, -(-positions // SHORTEST_TILE)))
    if tiles > threads:
        tiles = tiles // threads * threads
    return -(-(-(-positions // tiles)) // VECTOR) * VECTOR


def conv2d_shifted(x, matrix, bias, pads, mode, stride, out_hw, offsets, residual, activation, threads, out=None):
    """Grouped 2-D convolution as one matrix product per tap (:func:`shifted_planes`) with its
    epilogue; ``matrix`` is float32 (groups, kh * kw, O/groups, C/groups), ``offsets`` as for
    :func:`conv2d_gemm` (the first ``kh * kw`` of each group are its first channel's taps)."""
    groups, _, per_group, _ = matrix.shape
    rows, cols = plane_size(x.shape, pads, stride)
    out_h, out_w = out_hw
    positions = out_h * cols
    planes = pad_planes(x, pads, PADDING_MODES.index(mode), stride, rows, cols, 0)
    out = np.empty((groups * per_group, out_h, out_w), np.float32) if out is None else out
    tile = product_tile(per_group, positions, threads)
    parts = channel_parts(groups, per_group, -(-positions // tile), threads)
    with blas.one_thread():
        shifted_planes(blas.sgemm(), planes, matrix, offsets, stride[0] * stride[1] * rows * cols, bias, residual,
                       *activation, out, cols, tile, parts, threads)
    return out


def conv2d_winograd(x, weights, bias, pads, mode, out_hw, residual, activation, threads, out=None):
    """A 3x3 stride-1 convolution without groups by F(4x4, 3x3) (:mod:`poolcli.kernels.winograd`)
    with its epilogue; ``weights`` is :func:`winograd.transform_weights`'s (36, O, C)."""
    out_h, out_w = out_hw
    rows, cols = winograd.plane_size(out_h, out_w)
    planes = pad_planes(x, pads, PADDING_MODES.index(mode), (1, 1), rows, cols, 0)
    out = np.empty((weights.shape[1], out_h, out_w), np.float32) if out is None else out
    block = winograd.block_rows(x.shape[0], weights.shape[1], out_h, out_w)
    with blas.one_thread():
        winograd.winograd_planes(blas.sgemm(), planes, weights, bias, residual, *activation, out, rows, cols, block,
                                 threads)
    return out


def pointwise(x, matrix, bias, stride, residual, activation, threads, out=None):
    """A 1x1 convolution without padding or groups, ``matrix`` (1, O, C): the product with the
    map (every stride-th pixel) as a (C, H'W') matrix, by :func:`gemm_planes` with its epilogue.
    ``x`` may be channels-last (:mod:`~poolcli.kernels.channels_last`), read where it lies."""
    from_pixels = is_channels_last(x)
    if stride != (1, 1):
        x, from_pixels = np.ascontiguousarray(x[:, :: stride[0], :: stride[1]]), False
    channels, out_h, out_w = x.shape
    positions = out_h * out_w
    flat = pixels(x).reshape(-1) if from_pixels else x.reshape(-1)
    if _small_product(matrix.shape[1], channels, positions):  # one call, no threads
        columns = flat.reshape(positions, channels).T if from_pixels else flat.reshape(channels, positions)
        product = matrix[0] @ columns  # not into out, which may be the residual
        product += bias[:, None]
        if residual.size:
            product += residual.reshape(product.shape)
        activate_serial(product.reshape(-1), *activation)
        out = np.empty((matrix.shape[1], out_h, out_w), np.float32) if out is None else out
        out[...] = product.reshape(out.shape)
        return out
    tile = product_tile(matrix.shape[1], positions, threads)
    parts = channel_parts(1, matrix.shape[1], -(-positions // tile), threads)
    out = np.empty((matrix.shape[1], out_h, out_w), np.float32) if out is None else out
    with blas.one_thread():
        gemm_planes(blas.sgemm(), flat, matrix, NO_OFFSETS, bias, residual, *activation, out, out_w, tile,
                    parts, False, threads, from_pixels)
    return out


NO_OFFSETS = np.zeros((1, 1), np.int64)


# --- preparing the weights and offsets (Python) -----------------------------------------------


def narrow(weight_shape, groups: int) -> bool:
    """Whether :func:`conv_planes_narrow` suits: fewer output channels per group than half a block."""
    return weight_shape[0] // groups < OUT_BLOCK // 2 + 1


def pack_weights(weight: np.ndarray, groups: int, narrow_layout: bool | None = None) -> np.ndarray:
    """The weights (O, C/groups, kh, kw) in the layout of the kernel :func:`conv2d` picks: for
    :func:`conv_planes`, float32 (groups, blocks, chunks, OUT_BLOCK, TAPS), each group's output
    channels in blocks and its taps, in (c, ky, kx) order, in chunks, zeros filling both; for
    :func:`conv_planes_narrow`, (groups, per_group, chunks * NARROW_TAPS). ``narrow_layout``
    chooses the second (None: as :func:`narrow` says)."""
    out_c, per_channel, kh, kw = weight.shape
    per_group = out_c // groups
    taps = per_channel * kh * kw
    if narrow_layout is None:
        narrow_layout = narrow(weight.shape, groups)
    if narrow_layout:
        padded = np.zeros((groups, per_group, -(-taps // NARROW_TAPS) * NARROW_TAPS), np.float32)
        padded[:, :, :taps] = weight.reshape(groups, per_group, taps)
        return padded
    blocks, chunks = -(-per_group // OUT_BLOCK), -(-taps // TAPS)
    padded = np.zeros((groups, blocks * OUT_BLOCK, chunks * TAPS), np.float32)
    padded[:, :per_group, :taps] = weight.reshape(groups, per_group, taps)
    return np.ascontiguousarray(padded.reshape(groups, blocks, OUT_BLOCK, chunks, TAPS).transpose(0, 1, 3, 2, 4))


def tap_offsets(weight_shape, groups: int, stride, dilation, rows: int, cols: int, chunk: int | None = None) -> np.ndarray:
    """int64 (groups, chunks * TAPS or NARROW_TAPS): the flat index in :func:`pad_planes` output
    that output position 0 reads for each tap of each group; the last chunk's missing taps read
    the zeros at :func:`zero_start`. ``chunk``: the taps per chunk (None: as the kernel that
    :func:`narrow` picks reads them; 1 for :func:`gemm_planes`, which reads only real taps)."""
    _, per_channel, kh, kw = weight_shape
    (sh, sw), (dh, dw) = stride, dilation
    c, ky, kx = (a.ravel() for a in np.meshgrid(np.arange(per_channel), np.arange(kh), np.arange(kw), indexing="ij"))
    y, x = ky * dh, kx * dw
    offset = ((c * sh + y % sh) * sw + x % sw) * (rows * cols) + (y // sh) * cols + x // sw
    group_start = np.arange(groups) * (per_channel * sh * sw * rows * cols)
    offsets = group_start[:, None] + offset[None, :]
    if chunk is None:
        chunk = NARROW_TAPS if narrow(weight_shape, groups) else TAPS
    missing = -(-offset.size // chunk) * chunk - offset.size
    zeros = np.full((groups, missing), zero_start(groups * per_channel, stride, rows, cols))
    return np.ascontiguousarray(np.concatenate([offsets, zeros], axis=1), dtype=np.int64)


def zero_start(channels: int, stride, rows: int, cols: int) -> int:
    """Where the zeros that padding taps read begin in :func:`pad_planes` output."""
    return channels * stride[0] * stride[1] * rows * cols + cols


# --- choosing the method ------------------------------------------------------------------------

DEPTHWISE_MAX_PER_CHANNEL = 4  # outputs per input channel up to which a depthwise conv runs as one
GEMM_MIN_OUT = 16  # output channels per group from which BLAS's product beats the direct kernels
GEMM_MIN_TAPS = 16  # taps (C/groups * kh * kw) from which it does
SHIFTED_MIN_CHANNELS = 8  # input channels per group from which a product per tap beats im2col


@dataclass(frozen=True)
class Prepared:
    """A convolution's weights in the layout of the method that computes it: ``pointwise`` (a 1x1
    without padding or groups: one product), ``gemm`` (:func:`conv2d_gemm`: im2col), ``shifted``
    (:func:`conv2d_shifted`: a product per tap), ``depthwise``
    (:func:`depthwise`: one input channel per group), ``direct`` (:func:`conv_planes`) or
    ``narrow`` (:func:`conv_planes_narrow`, for few output channels per group), or ``winograd``
    (:func:`conv2d_winograd`: F(4x4, 3x3), 3x3 stride 1 only)."""

    method: str
    shape: tuple[int, int, int, int]  # the weights' (O, C/groups, kh, kw)
    groups: int
    data: np.ndarray  # pointwise: (1, O, C); gemm: (groups, O/groups, taps); shifted: (groups, kh * kw, O/groups,
    # C/groups); depthwise: (O, kh, kw); winograd: (36, O, C); else pack_weights's
    bias: np.ndarray  # float32 (O,)

    def gated(self, gate: np.ndarray, columns: bool) -> "Prepared":
        """A 1x1 conv's weights times a (C,) gate on its input channels: the conv of ``gate * x``;
        only its :attr:`columns` with ``columns`` (one pass over the weights, in their order)."""
        gate = gate.astype(np.float32)
        if columns:
            gated = dataclasses.replace(self)
            gated.__dict__["columns"] = self.columns * gate[:, None]
            return gated
        return dataclasses.replace(self, data=self.data * gate[None, None, :])

    @functools.cached_property
    def columns(self) -> np.ndarray:
        """A 1x1 conv's weights as :func:`channels_last.pointwise` reads them, (C, O)."""
        return np.ascontiguousarray(self.data[0].T)

    @functools.cached_property
    def pixel_taps(self) -> np.ndarray:
        """A depthwise conv's weights as :func:`channels_last.depthwise` reads them, (kh, kw, O)."""
        return np.ascontiguousarray(self.data.transpose(1, 2, 0))

    def tap_offsets(self, stride, dilation, rows: int, cols: int) -> np.ndarray:
        """:func:`tap_offsets` as this method reads them, for planes of ``rows x cols``."""
        chunk = {"gemm": 1, "shifted": 1, "direct": TAPS, "narrow": NARROW_TAPS}[self.method]
        return tap_offsets(self.shape, self.groups, stride, dilation, rows, cols, chunk)


def methods(weight_shape, groups: int, pads, stride=(1, 1), dilation=(1, 1)) -> list[str]:
    """The methods that can compute weights (O, C/groups, kh, kw) applied with ``pads``,
    ``stride`` and ``dilation``, the one :func:`prepare` picks first (the matrix products only
    where NumPy's OpenBLAS is found). ``winograd`` is never first: it wins on large maps only,
    which :func:`winograd_suits` decides per map size."""
    out_c, per_channel, kh, kw = weight_shape
    if per_channel == 1 and groups > 1 and out_c // groups <= DEPTHWISE_MAX_PER_CHANNEL:
        return ["depthwise", "narrow", "direct"]
    products = []
    if blas.sgemm() is not None:
        if _pointwise_shape(weight_shape, groups, pads):
            products.append("pointwise")
        products.append("gemm")
        products.insert(-1 if per_channel >= SHIFTED_MIN_CHANNELS else len(products), "shifted")
    direct = ["narrow", "direct"] if narrow(weight_shape, groups) else ["direct", "narrow"]
    few_channels = (kh, kw) != (1, 1) and per_channel < products_min_channels()
    if out_c // groups >= GEMM_MIN_OUT and per_channel * kh * kw >= GEMM_MIN_TAPS and not few_channels:
        found = products + direct
    else:
        found = direct + products
    if winograd_applies(weight_shape, groups, stride, dilation):
        found.append("winograd")
    return found


def _pointwise_shape(weight_shape, groups: int, pads) -> bool:
    """Whether :func:`pointwise` can compute the convolution: 1x1, no padding or groups."""
    return groups == 1 and tuple(weight_shape[2:]) == (1, 1) and tuple(pads) == (0, 0, 0, 0)


def winograd_applies(weight_shape, groups: int, stride, dilation) -> bool:
    """Whether F(4x4, 3x3) can compute the convolution: 3x3, stride 1, no dilation or groups,
    and BLAS's sgemm found."""
    return (groups == 1 and tuple(weight_shape[2:]) == (3, 3) and tuple(stride) == (1, 1)
            and tuple(dilation) == (1, 1) and blas.sgemm() is not None)


WINOGRAD_MIN_CHANNELS = 64  # input and output channels, at the least, for F(4x4, 3x3) to win
WINOGRAD_MIN_TILES = 40  # output tiles (4x4), at the least, up to 256 x 256 channels; more beyond
WINOGRAD_CHANNEL_PAIRS = 256 * 256


def method_for_size(weight_shape, groups: int, pads, stride, dilation, out_hw) -> str | None:
    """The method for weights (O, C/groups, kh, kw) on an output of ``out_hw``, where one beats
    the first of :func:`methods` (which go by the weights alone), else None (that one):
    F(4x4, 3x3) on large maps (:func:`winograd_suits`), and one NumPy product for a 1x1 conv on
    a map of a few pixels (a squeeze-and-excitation block's), where the direct kernel's launches
    cost 20 us to its work's 1."""
    if winograd_suits(weight_shape, groups, stride, dilation, out_hw):
        return "winograd"
    if (_pointwise_shape(weight_shape, groups, pads) and blas.sgemm() is not None
            and _small_product(weight_shape[0], weight_shape[1], out_hw[0] * out_hw[1])):
        return "pointwise"
    return None


SMALL_PRODUCT = 1 << 16  # multiply-adds of a 1x1 conv below which one NumPy product beats the kernels


def _small_product(out_c: int, channels: int, positions: int) -> bool:
    return out_c * channels * positions < SMALL_PRODUCT


def winograd_suits(weight_shape, groups: int, stride, dilation, out_hw) -> bool:
    """Whether F(4x4, 3x3) beats a product per tap on this output size: with many channels on
    both sides (its transforms cost per value, its saving per channel pair) and enough tiles
    (its 36 products have a column per tile). Its weights are 4 times the conv's, read once a
    call: past 256 x 256 channels it takes proportionally more tiles (512 -> 512: 160, maps of
    50x50), where those bytes buy the most (measured on 2 threads: 512 -> 512 at 28x28 gained
    7%, at 14x14 lost 5%; ResNet-50 at 768x1024 held 75 MB more for it)."""
    tile_rows, per_row = winograd.tiles(*out_hw)
    pairs = weight_shape[0] * weight_shape[1]
    return (winograd_applies(weight_shape, groups, stride, dilation)
            and tile_rows * per_row >= WINOGRAD_MIN_TILES * max(1.0, pairs / WINOGRAD_CHANNEL_PAIRS)
            and min(weight_shape[0], weight_shape[1]) >= WINOGRAD_MIN_CHANNELS)


@functools.lru_cache(maxsize=None)
def products_min_channels() -> int:
    """Input channels per group from which the matrix products beat the direct kernel on a
    conv larger than 1x1. With 512-bit vectors the direct kernel does twice the work per
    instruction and wins below 48 channels (measured on a Xeon, 2 threads: 32 -> 32 3x3 at
    224x224 4.6 ms against 5.8, 3 -> 64 7x7/2 at 512x512 6.9 against 8.4, 1 -> 24 15x15 14 against
    20; from 64 channels a product per tap wins, 256 -> 256 at 28x28 4.2 against 5.2). With
    256-bit vectors the products won from 16 channels (an AMD EPYC): no further limit."""
    from poolcli.kernels import wide_vectors

    return AVX512_PRODUCTS_MIN_CHANNELS if wide_vectors() else 0


AVX512_PRODUCTS_MIN_CHANNELS = 48


def prepare(weight: np.ndarray, bias: np.ndarray | None, groups: int, pads, method: str | None = None) -> Prepared:
    """Weights (O, C/groups, kh, kw) applied with ``pads``, in the layout of ``method`` (one of
    :func:`methods`; None: the first, the fastest)."""
    out_c, per_channel, kh, kw = weight.shape
    bias = np.zeros(out_c, np.float32) if bias is None else np.require(bias, np.float32, "CW")
    method = method or methods(weight.shape, groups, pads)[0]
    if method == "pointwise":
        data = weight.reshape(1, out_c, per_channel)
    elif method == "gemm":
        data = weight.reshape(groups, out_c // groups, per_channel * kh * kw)
    elif method == "shifted":
        data = weight.reshape(groups, out_c // groups, per_channel, kh * kw).transpose(0, 3, 1, 2)
    elif method == "depthwise":
        data = weight.reshape(out_c, kh, kw)
    elif method == "winograd":
        data = winograd.transform_weights(weight)
    elif method == "direct":
        data = pack_weights(weight, groups, narrow_layout=False)
    else:
        data = pack_weights(weight, groups, narrow_layout=True)
    return Prepared(method, weight.shape, groups, np.ascontiguousarray(data, np.float32), bias)


NO_RESIDUAL = np.zeros((0, 0, 0), np.float32)


def convolve(x, prepared: Prepared, pads, mode, stride, dilation, out_hw, offsets=None, residual=None,
             activation=None, threads=1, into_residual=False, to_pixels=False, gate=None):
    """``activation(conv(x) + bias + residual)`` of a writable C-contiguous float32 (C, H, W) map
    by :func:`prepare`'s weights, = torch conv2d after padding ``x`` by ``pads`` (top, bottom,
    left, right) in ``mode``. ``offsets``: :func:`tap_offsets` for this map's size (computed when
    None; the pointwise and depthwise methods need none). ``activation``: (code, alpha, beta), an index into
    ``ACTIVATIONS`` and its parameters (None: none). ``threads``: the calling thread's Numba
    threads (the matrix products split their work for as many). ``into_residual``: the result
    may be written over ``residual`` (a writable map no one reads afterwards), one map less in
    memory; the methods whose epilogue adds the residual do so.

    ``x`` may also be channels-last (:mod:`~poolcli.kernels.channels_last`): a 1x1 conv reads it
    where it lies, a depthwise conv of zero padding computes on its pixels and hands on a
    channels-last map, the others read a C-contiguous copy. ``to_pixels``: a 1x1 conv of stride 1
    hands on a channels-last map as well (its readers take one), where its residual, if any, is
    channels-last too. ``gate``: (C,) factors of the input channels, the conv of ``gate * x``
    (a 1x1 conv folds them into its weights)."""
    activation = (0, np.float32(0), np.float32(0)) if activation is None else activation
    rows = (prepared.method == "pointwise" and to_pixels and tuple(stride) == (1, 1)
            and not _small_product(*prepared.shape[:2], x.shape[1] * x.shape[2])
            and (residual is None or is_channels_last(residual)))
    if gate is not None:
        if prepared.method == "pointwise":
            prepared = prepared.gated(gate, columns=rows)
        else:
            x = np.ascontiguousarray(x * gate.astype(np.float32)[:, None, None])
    if rows:
        return channels_last.pointwise(x, prepared.columns, prepared.bias, residual, activation, threads)
    residual = NO_RESIDUAL if residual is None else np.require(residual, np.float32, "C")
    out = residual if into_residual and residual.size and residual.flags.writeable else None
    if out is not None and np.may_share_memory(out, x):  # the 1x1 and depthwise kernels read x as they write
        out = None
    if prepared.method == "pointwise":
        return pointwise(x, prepared.data, prepared.bias, stride, residual, activation, threads, out)
    if is_channels_last(x):
        if prepared.method == "depthwise" and depthwise_on_pixels(prepared, mode, residual):
            return channels_last.depthwise(x, prepared.pixel_taps, prepared.bias, pads, stride, dilation, out_hw, activation)
        x = np.ascontiguousarray(x)
    if prepared.method == "winograd":
        return conv2d_winograd(x, prepared.data, prepared.bias, pads, mode, out_hw, residual, activation, threads,
                               out)
    if prepared.method == "depthwise":
        out = np.empty((prepared.shape[0], *out_hw), np.float32) if out is None else out
        return depthwise(x, prepared.data, prepared.bias, tuple(pads), PADDING_MODES.index(mode),
                         stride, dilation, residual, *activation, out)
    if offsets is None:
        offsets = prepared.tap_offsets(stride, dilation, *plane_size(x.shape, pads, stride))
    if prepared.method == "shifted":
        return conv2d_shifted(x, prepared.data, prepared.bias, pads, mode, stride, out_hw, offsets, residual,
                              activation, threads, out)
    if prepared.method == "gemm":
        return conv2d_gemm(x, prepared.data, prepared.bias, pads, mode, stride, out_hw, offsets, residual, activation,
                           threads, out)
    out = conv2d(x, prepared.data, prepared.shape, prepared.bias, pads, mode, stride, dilation, prepared.groups,
                 out_hw, offsets, narrow_kernel=prepared.method == "narrow")
    if residual.size:
        np.add(out, residual, out=out)
    if activation[0] != 0:
        activate_inplace(out, *activation)
    return out


def depthwise_on_pixels(prepared: Prepared, mode: str, residual: np.ndarray) -> bool:
    """Whether :func:`channels_last.depthwise` computes the conv: one output per input channel,
    zero padding, no residual."""
    return prepared.shape[0] == prepared.groups and mode == "zeros" and not residual.size


def conv2d(x, packed, weight_shape, bias, pads, mode, stride, dilation, groups, out_hw, offsets=None,
           narrow_kernel=None):
    """Grouped 2-D convolution of a float32 (C, H, W) map, = torch conv2d after padding ``x``
    by ``pads`` (top, bottom, left, right) in ``mode`` (torch's name); ``packed`` is
    :func:`pack_weights` of the (O, C/groups, kh, kw) weights, ``offsets`` :func:`tap_offsets`
    for this map's size (computed when None), ``narrow_kernel`` the kernel (None: as :func:`narrow`
    says; ``packed`` and ``offsets`` must be laid out for it). Returns float32 (O, H', W')."""
    (top, bottom, left, right), (sh, sw) = pads, stride
    rows, cols = plane_size(x.shape, pads, stride)
    positions = out_hw[0] * cols  # the zeros a padding tap reads: one per output position
    planes = pad_planes(x, (top, bottom, left, right), PADDING_MODES.index(mode), (sh, sw), rows, cols, positions)
    if narrow_kernel is None:
        narrow_kernel = narrow(weight_shape, groups)
    if offsets is None:
        offsets = tap_offsets(weight_shape, groups, stride, dilation, rows, cols, NARROW_TAPS if narrow_kernel else TAPS)
    kernel = conv_planes_narrow if narrow_kernel else conv_planes
    return kernel(planes, packed, offsets, bias, weight_shape[0], out_hw[0], out_hw[1], cols)


def plane_size(shape, pads, stride) -> tuple[int, int]:
    """(rows, cols) of each polyphase plane of a (C, H, W) map padded by ``pads``."""
    top, bottom, left, right = pads
    return -(-(shape[1] + top + bottom) // stride[0]), -(-(shape[2] + left + right) // stride[1])
