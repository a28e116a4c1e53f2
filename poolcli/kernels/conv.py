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

import numpy as np
from numba import njit, prange

from poolcli.kernels import FASTMATH

OUT_BLOCK = 8  # output channels per task
TAPS = 4  # taps per pass over a span
NARROW_TAPS = 8  # taps per pass of the kernel for few output channels per group
PLANE_ROWS = 16  # rows of a polyphase plane per task of pad_planes
SPAN = 512  # output positions per task: OUT_BLOCK rows of them stay in L1 cache
ROW = SPAN + 16  # accumulator row length: rows 2 KiB apart would alias in the L1 cache
VECTOR = 16  # float32 per cache line (64 bytes), and per AVX-512 vector

PADDING_MODES = ("zeros", "reflect", "replicate", "circular")


# --- the polyphase padded input ----------------------------------------------------------------


@njit(cache=True, error_model="numpy", nogil=True)
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
            for px in range(sw):
                start = ((k * sh + py) * sw + px) * plane + i * cols
                _pad_row(out[start : start + cols], x[k, r] if r >= 0 else x[k, 0], r >= 0, px, sw, left, w,
                         padded_w, mode)
    return out


@njit(cache=True, error_model="numpy", nogil=True)
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


# --- preparing the weights and offsets (Python) -----------------------------------------------


def narrow(weight_shape, groups: int) -> bool:
    """Whether :func:`conv_planes_narrow` suits: fewer output channels per group than half a block."""
    return weight_shape[0] // groups < OUT_BLOCK // 2 + 1


def pack_weights(weight: np.ndarray, groups: int) -> np.ndarray:
    """The weights (O, C/groups, kh, kw) in the layout of the kernel :func:`conv2d` picks: for
    :func:`conv_planes`, float32 (groups, blocks, chunks, OUT_BLOCK, TAPS), each group's output
    channels in blocks and its taps, in (c, ky, kx) order, in chunks, zeros filling both; for
    :func:`conv_planes_narrow`, (groups, per_group, chunks * NARROW_TAPS)."""
    out_c, per_channel, kh, kw = weight.shape
    per_group = out_c // groups
    taps = per_channel * kh * kw
    if narrow(weight.shape, groups):
        padded = np.zeros((groups, per_group, -(-taps // NARROW_TAPS) * NARROW_TAPS), np.float32)
        padded[:, :, :taps] = weight.reshape(groups, per_group, taps)
        return padded
    blocks, chunks = -(-per_group // OUT_BLOCK), -(-taps // TAPS)
    padded = np.zeros((groups, blocks * OUT_BLOCK, chunks * TAPS), np.float32)
    padded[:, :per_group, :taps] = weight.reshape(groups, per_group, taps)
    return np.ascontiguousarray(padded.reshape(groups, blocks, OUT_BLOCK, chunks, TAPS).transpose(0, 1, 3, 2, 4))


def tap_offsets(weight_shape, groups: int, stride, dilation, rows: int, cols: int) -> np.ndarray:
    """int64 (groups, chunks * TAPS or NARROW_TAPS): the flat index in :func:`pad_planes` output
    that output position 0 reads for each tap of each group; the last chunk's missing taps read
    the zeros at :func:`zero_start`."""
    _, per_channel, kh, kw = weight_shape
    (sh, sw), (dh, dw) = stride, dilation
    c, ky, kx = (a.ravel() for a in np.meshgrid(np.arange(per_channel), np.arange(kh), np.arange(kw), indexing="ij"))
    y, x = ky * dh, kx * dw
    offset = ((c * sh + y % sh) * sw + x % sw) * (rows * cols) + (y // sh) * cols + x // sw
    group_start = np.arange(groups) * (per_channel * sh * sw * rows * cols)
    offsets = group_start[:, None] + offset[None, :]
    chunk = NARROW_TAPS if narrow(weight_shape, groups) else TAPS
    missing = -(-offset.size // chunk) * chunk - offset.size
    zeros = np.full((groups, missing), zero_start(groups * per_channel, stride, rows, cols))
    return np.ascontiguousarray(np.concatenate([offsets, zeros], axis=1), dtype=np.int64)


def zero_start(channels: int, stride, rows: int, cols: int) -> int:
    """Where the zeros that padding taps read begin in :func:`pad_planes` output."""
    return channels * stride[0] * stride[1] * rows * cols + cols


def conv2d(x, packed, weight_shape, bias, pads, mode, stride, dilation, groups, out_hw, offsets=None):
    """Grouped 2-D convolution of a float32 (C, H, W) map, = torch conv2d after padding ``x``
    by ``pads`` (top, bottom, left, right) in ``mode`` (torch's name); ``packed`` is
    :func:`pack_weights` of the (O, C/groups, kh, kw) weights, ``offsets`` :func:`tap_offsets`
    for this map's size (computed when None). Returns float32 (O, H', W')."""
    (top, bottom, left, right), (sh, sw) = pads, stride
    rows, cols = plane_size(x.shape, pads, stride)
    positions = out_hw[0] * cols  # the zeros a padding tap reads: one per output position
    planes = pad_planes(x, (top, bottom, left, right), PADDING_MODES.index(mode), (sh, sw), rows, cols, positions)
    if offsets is None:
        offsets = tap_offsets(weight_shape, groups, stride, dilation, rows, cols)
    kernel = conv_planes_narrow if narrow(weight_shape, groups) else conv_planes
    return kernel(planes, packed, offsets, bias, weight_shape[0], out_hw[0], out_hw[1], cols)


def plane_size(shape, pads, stride) -> tuple[int, int]:
    """(rows, cols) of each polyphase plane of a (C, H, W) map padded by ``pads``."""
    top, bottom, left, right = pads
    return -(-(shape[1] + top + bottom) // stride[0]), -(-(shape[2] + left + right) // stride[1])
