"""Channels-last maps between the convolutions of a mobile block: its 1x1 expansion, its
depthwise conv, its squeeze-excitation and its 1x1 projection.

A (C, H, W) map may lie in memory as (H, W, C): the array a stage hands on is then the
transposed view ``hwc.transpose(2, 0, 1)``, the same (C, H, W) array to every reader (NumPy
and any stage that asks for a C-contiguous map read it as such, at the cost of a copy), with
the C values of each pixel side by side. A depthwise conv of such a map works on whole pixels:
each tap is one multiply-add of C contiguous values (vectors of 16 channels), with no padded
copy of the map and no short rows (a 14x14 map of 960 channels ran 4 times faster than the
per-channel kernel, a 112x112 map of 144 channels 1.5 times; measured on 2 threads). The 1x1
convs around it read and write that layout for free: BLAS multiplies a transposed operand as
fast as a plain one, so the expansion writes its product as (H'W', O) rows and the projection
reads them as the transposed matrix.

:func:`poolcli.layout.is_channels_last` tells the layout apart; the pipeline decides which convs hand on
channels-last maps (those whose every reader takes them, ``Pipeline._plan_layouts``).
"""

import numpy as np
from numba import njit, prange

from poolcli.kernels import FASTMATH
from poolcli.kernels.elementwise import activate_row
from poolcli.layout import as_map, is_channels_last, pixels

ROW_MAJOR, NO_TRANS, TRANS = 101, 111, 112  # CBLAS's enums
ACTIVATION_RUN = 2048  # values per call of the activation in a 1x1 conv's epilogue, about


# --- depthwise ------------------------------------------------------------------------------------


@njit(parallel=True, cache=True, error_model="numpy", nogil=True, fastmath=FASTMATH)
def depthwise_pixels(x, weight, bias, top, left, stride, dilation, code, alpha, beta, out):
    """``out[oy, ox, c] = act(sum_{ky, kx} weight[ky, kx, c] * x[oy * sh - top + ky * dh, ox * sw
    - left + kx * dw, c] + bias[c])``, taps outside the map left out (zero padding): a depthwise
    conv of an (H, W, C) map into an (H', W', C) one, a task per output row.

    The innermost loops run along a pixel's C channels. A 3x3 kernel wholly inside the map (all
    but the border pixels) is one expression of nine taps, the output written once; a row of a
    5x5 kernel inside the map is one expression of its five taps; other kernels and the border
    pixels take the taps one at a time, skipping those outside (a 7x7 row as one expression ran
    slower than this, 3.1 ms against 2.6 on 96 channels at 112x112). The activation runs over
    the whole output row at once."""
    h, w, channels = x.shape
    kh, kw, _ = weight.shape
    out_h, out_w, _ = out.shape
    sh, sw = stride
    dh, dw = dilation
    for oy in prange(out_h):
        row = out[oy]
        y0 = oy * sh - top
        rows_inside = y0 >= 0 and y0 + (kh - 1) * dh < h
        for ox in range(out_w):
            acc = row[ox]
            x0 = ox * sw - left
            inside = x0 >= 0 and x0 + (kw - 1) * dw < w
            if rows_inside and inside and kh == 3 and kw == 3:
                r0, r1, r2 = x[y0], x[y0 + dh], x[y0 + 2 * dh]
                a0, a1, a2 = r0[x0], r0[x0 + dw], r0[x0 + 2 * dw]
                b0, b1, b2 = r1[x0], r1[x0 + dw], r1[x0 + 2 * dw]
                c0, c1, c2 = r2[x0], r2[x0 + dw], r2[x0 + 2 * dw]
                w00, w01, w02 = weight[0, 0], weight[0, 1], weight[0, 2]
                w10, w11, w12 = weight[1, 0], weight[1, 1], weight[1, 2]
                w20, w21, w22 = weight[2, 0], weight[2, 1], weight[2, 2]
                for c in range(channels):
                    acc[c] = (bias[c] + w00[c] * a0[c] + w01[c] * a1[c] + w02[c] * a2[c]
                              + w10[c] * b0[c] + w11[c] * b1[c] + w12[c] * b2[c]
                              + w20[c] * c0[c] + w21[c] * c1[c] + w22[c] * c2[c])
                continue
            acc[:] = bias
            for ky in range(kh):
                y = y0 + ky * dh
                if y < 0 or y >= h:
                    continue
                _pixel_row(acc, x[y], weight[ky], x0, dw, w, inside)
        activate_row(row.reshape(-1), code, alpha, beta)
    return out


@njit(cache=True, error_model="numpy", nogil=True, fastmath=FASTMATH, inline="always")
def _pixel_row(acc, src, taps, x0, dw, w, inside):
    """``acc += sum_kx taps[kx] * src[x0 + kx * dw]`` over the channels, the pixels outside the
    row (``inside`` False: some may be) left out."""
    kw, channels = taps.shape
    if inside and kw == 5:
        s0, s1, s2, s3, s4 = src[x0], src[x0 + dw], src[x0 + 2 * dw], src[x0 + 3 * dw], src[x0 + 4 * dw]
        t0, t1, t2, t3, t4 = taps[0], taps[1], taps[2], taps[3], taps[4]
        for c in range(channels):
            acc[c] += t0[c] * s0[c] + t1[c] * s1[c] + t2[c] * s2[c] + t3[c] * s3[c] + t4[c] * s4[c]
        return
    for kx in range(kw):
        x = x0 + kx * dw
        if x < 0 or x >= w:
            continue
        s, t = src[x], taps[kx]
        for c in range(channels):
            acc[c] += t[c] * s[c]


def depthwise(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, pads, stride, dilation, out_hw,
              activation) -> np.ndarray:
    """The depthwise conv (one output channel per input channel, zero padding) of a channels-last
    (C, H, W) map ``x`` by ``weight`` (kh, kw, C), as a channels-last (C, H', W') map."""
    out = np.empty((*out_hw, x.shape[0]), np.float32)
    depthwise_pixels(pixels(x), weight, bias, pads[0], pads[2], tuple(stride), tuple(dilation), *activation, out)
    return as_map(out)


# --- 1x1 convs as matrix products -----------------------------------------------------------------


@njit(parallel=True, cache=True, error_model="numpy", nogil=True, fastmath=FASTMATH)
def product_pixels(sgemm, x, from_pixels, columns, bias, residual, code, alpha, beta, out, tile, parts, workers):
    """``out[p, o] = act(sum_c x[c, p] * columns[c, o] + bias[o] + residual[p, o])``: a 1x1 conv
    into (P, O) rows by BLAS's ``sgemm``, a task per ``tile`` positions and ``O / parts`` output
    channels. ``x`` is the flat map, (C, P) or, with ``from_pixels``, (P, C); either way BLAS
    reads it in place (as the transposed operand where it is (C, P)). ``residual``: (P, O) rows,
    or empty for none. The epilogue runs over the task's block while it is in cache."""
    channels, out_c = columns.shape
    positions = out.shape[0]
    flat = out.reshape(-1)
    tiles = (positions + tile - 1) // tile
    width = (out_c + parts - 1) // parts
    with_residual = residual.size > 0
    for worker in prange(workers):
        for task in range(worker, tiles * parts, workers):
            p0, o0 = task // parts * tile, task % parts * width
            n, m = min(tile, positions - p0), min(width, out_c - o0)
            if m <= 0:
                continue
            if from_pixels:
                a, trans_a, lda = x[p0 * channels :].ctypes.data, NO_TRANS, channels
            else:
                a, trans_a, lda = x[p0:].ctypes.data, TRANS, positions
            sgemm(ROW_MAJOR, trans_a, NO_TRANS, n, m, channels, np.float32(1), a, lda, columns[:, o0:].ctypes.data,
                  out_c, np.float32(0), flat[p0 * out_c + o0 :].ctypes.data, out_c)
            # The activation over runs of whole rows where the task has them all (a call per row
            # of 96 values cost SiLU more in its set-up than its work: 1.3x the conv's time).
            run = 1 if m < out_c else max(1, ACTIVATION_RUN // out_c)
            for r0 in range(p0, p0 + n, run):
                r1 = min(p0 + n, r0 + run)
                if m < out_c:
                    extra = residual[r0, o0 : o0 + m] if with_residual else bias[o0 : o0 + m]
                    _bias_row(out[r0, o0 : o0 + m], bias[o0 : o0 + m], extra, with_residual)
                    activate_row(out[r0, o0 : o0 + m], code, alpha, beta)
                else:
                    _bias_rows(out[r0:r1], bias, residual[r0:r1] if with_residual else out[r0:r1], with_residual)
                    activate_row(flat[r0 * out_c : r1 * out_c], code, alpha, beta)


@njit(cache=True, error_model="numpy", nogil=True, fastmath=FASTMATH)
def _bias_rows(rows, bias, residual, with_residual):
    """``rows += bias (+ residual)`` for (n, O) rows: :func:`_bias_row` of each, in one call."""
    for t in range(rows.shape[0]):
        row = rows[t]
        if with_residual:
            extra = residual[t]
            for o in range(row.size):
                row[o] += bias[o] + extra[o]
        else:
            for o in range(row.size):
                row[o] += bias[o]


@njit(cache=True, error_model="numpy", nogil=True, fastmath=FASTMATH)
def _bias_row(row, bias, residual, with_residual):
    """``row += bias (+ residual)``. A function of its own, not inlined: as a loop in the body
    of :func:`product_pixels` the sum ran 10 times slower (LLVM did not vectorise it)."""
    if with_residual:
        for o in range(row.size):
            row[o] += bias[o] + residual[o]
    else:
        for o in range(row.size):
            row[o] += bias[o]


NO_ROWS = np.zeros((0, 0), np.float32)


def pointwise(x: np.ndarray, columns: np.ndarray, bias: np.ndarray, residual, activation, threads: int) -> np.ndarray:
    """A 1x1 conv (stride 1, no padding or groups) of ``x``, plain or channels-last, by weights
    ``columns`` (C, O), plus ``residual`` (channels-last, or None), as a channels-last map."""
    from poolcli.kernels import blas
    from poolcli.kernels.conv import channel_parts, product_tile

    channels, height, width = x.shape
    positions, out_c = height * width, columns.shape[1]
    from_pixels = is_channels_last(x)
    flat = pixels(x).reshape(-1) if from_pixels else x.reshape(-1)
    rows = NO_ROWS if residual is None else pixels(residual).reshape(positions, out_c)
    out = np.empty((height, width, out_c), np.float32)
    tile = product_tile(out_c, positions, threads)
    tiles = -(-positions // tile)
    # Whole rows per task where every thread has a tile: the epilogue then runs over runs of rows.
    parts = 1 if tiles >= threads else channel_parts(1, out_c, tiles, threads)
    with blas.one_thread():
        product_pixels(blas.sgemm(), flat, from_pixels, columns, bias, rows, *activation, out.reshape(positions, -1),
                       tile, parts, threads)
    return as_map(out)


# --- squeeze-excitation ---------------------------------------------------------------------------

MEAN_ROWS = 256  # pixels summed in float32 before their sum joins the float64 total


@njit(cache=True, error_model="numpy", nogil=True, fastmath=FASTMATH)
def mean_pixels(x):
    """The mean of each channel of an (H, W, C) map, (C, 1, 1): sums of ``MEAN_ROWS`` pixels in
    float32 (vectors along the channels) added up in float64."""
    h, w, channels = x.shape
    flat = x.reshape(h * w, channels)
    total = np.zeros(channels, np.float64)
    part = np.empty(channels, np.float32)
    for p0 in range(0, h * w, MEAN_ROWS):
        part[:] = 0
        for p in range(p0, min(h * w, p0 + MEAN_ROWS)):
            row = flat[p]
            for c in range(channels):
                part[c] += row[c]
        for c in range(channels):
            total[c] += part[c]
    out = np.empty((channels, 1, 1), np.float32)
    for c in range(channels):
        out[c, 0, 0] = total[c] / (h * w)
    return out
