"""Kernels for windowed and adaptive pooling: max, average, Lp, adaptive max and average, and
spatial pyramids.

Every kernel takes a float32 C-contiguous (C, H, W) map and computes one output row per
``prange`` iteration (channel x output row), writing only that row. Windows are clipped to the
input rather than padding a copy of the map. The sliding-window kernels are separable: a row
buffer first receives the reduction of the window's input rows, column by column (contiguous
loads, independent columns: it vectorises and reads the map once per window row), then each
output reduces its window's columns of that buffer, whose padding holds the reduction's
identity (-inf, 0). Max pooling with indices keeps torch's exact tap order instead (see
:func:`_max_row`), since the argmax must be torch's.

Window arguments are ``(h, w)`` tuples of ints; output sizes are computed by the caller
(:mod:`poolcli.stages.geometry`). A dilated window may have no tap inside the input: its
maximum is -inf, as in torch.
"""

import numpy as np
from numba import njit, prange

from poolcli.kernels import FASTMATH
from poolcli.kernels.vecmath import EXP_HIGH, EXP_LOW, exp_near, log_bits, root_range, roots

ROWS = 8  # output rows per parallel task: their row buffer is allocated once


@njit(cache=True, error_model="numpy", nogil=True)
def _columns(offset, out_size, stride, size):
    """The output columns ``[lo, hi)`` whose tap ``j * stride + offset`` lies in ``[0, size)``."""
    lo = 0 if offset >= 0 else (stride - 1 - offset) // stride
    hi = min(out_size, (size - 1 - offset) // stride + 1)
    return lo, max(lo, hi)


@njit(cache=True, error_model="numpy", nogil=True)
def _first_tap(start, dilation):
    """The first in-bounds tap of a window starting at ``start`` (torch's initial argmax)."""
    while start < 0:
        start += dilation
    return start


@njit(cache=True, error_model="numpy", nogil=True, inline="always")
def _max_row(plane, i, kernel, stride, padding, dilation, out_row, index_row):
    """Output row ``i`` of max pooling over one (H, W) plane; ``index_row`` is None or receives
    the flat argmax ``h * W + w``. torch's rule: a tap wins if it is greater or NaN, so a NaN
    always propagates and the last NaN in row-major order gives the index."""
    h, w = plane.shape
    top = i * stride[0] - padding[0]
    step = stride[1]
    out_row[:] = -np.inf
    if index_row is not None:
        first_row = _first_tap(top, dilation[0]) * w
        for j in range(out_row.size):
            index_row[j] = first_row + _first_tap(j * step - padding[1], dilation[1])
    for ki in range(kernel[0]):
        r = top + ki * dilation[0]
        if r < 0 or r >= h:
            continue
        for kj in range(kernel[1]):
            offset = kj * dilation[1] - padding[1]
            lo, hi = _columns(offset, out_row.size, step, w)
            # Zero-based views and branch-free selects let the loop vectorise.
            taps = plane[r, lo * step + offset :]
            best = out_row[lo:hi]
            if index_row is not None:
                chosen = index_row[lo:hi]
                first = r * w + lo * step + offset
            for n in range(hi - lo):
                v = taps[n * step]
                wins = (v > best[n]) | np.isnan(v)
                best[n] = v if wins else best[n]
                if index_row is not None:
                    chosen[n] = first + n * step if wins else chosen[n]


@njit(cache=True, error_model="numpy", nogil=True)
def _buffer_size(width, out_size, kernel, stride, padding, dilation):
    """Length of a row buffer holding ``padding`` identity values, the ``width`` input columns,
    and identities up to the last column any window reads."""
    return max(padding + width, (out_size - 1) * stride + (kernel - 1) * dilation + 1)


@njit(cache=True, error_model="numpy", nogil=True, inline="always")
def _separable_max_row(plane, i, kernel, stride, padding, dilation, buffer, out_row):
    """Output row ``i`` of max pooling, without indices: the window rows' column maxima into
    ``buffer`` (its padding already -inf), then each output's maximum over its columns. A tap wins
    if it is greater or NaN, so NaN propagates; which equal tap wins cannot be seen in the value."""
    h, w = plane.shape
    columns = buffer[padding[1] : padding[1] + w]
    columns[:] = -np.inf
    top = i * stride[0] - padding[0]
    for ki in range(kernel[0]):
        r = top + ki * dilation[0]
        if r < 0 or r >= h:
            continue
        row = plane[r]
        for s in range(w):
            v = row[s]
            columns[s] = v if (v > columns[s]) | np.isnan(v) else columns[s]
    _max_columns(buffer, kernel[1], stride[1], dilation[1], out_row)


@njit(cache=True, error_model="numpy", nogil=True)
def _max_columns(buffer, kernel, step, dilation, out_row):
    """``out_row[j]`` = the maximum of ``buffer[j * step + kj * dilation]`` over ``kj < kernel``
    (greater or NaN wins). Strides 1 and 2 are written as literals, which vectorise (a variable
    stride does not); a helper of its own, so that the row pass before it is still inlined."""
    n = out_row.size
    if step == 2 and dilation == 1 and 2 <= kernel <= 3:
        for j in range(n):
            best, v = buffer[2 * j], buffer[2 * j + 1]
            out_row[j] = v if (v > best) | np.isnan(v) else best
        if kernel == 3:
            for j in range(n):
                best, v = out_row[j], buffer[2 * j + 2]
                out_row[j] = v if (v > best) | np.isnan(v) else best
        return
    for j in range(n):
        out_row[j] = buffer[j * step]
    for kj in range(1, kernel):
        taps = buffer[kj * dilation :]
        if step == 1:
            for j in range(n):
                v = taps[j]
                out_row[j] = v if (v > out_row[j]) | np.isnan(v) else out_row[j]
        else:
            for j in range(n):
                v = taps[j * step]
                out_row[j] = v if (v > out_row[j]) | np.isnan(v) else out_row[j]


@njit(parallel=True, cache=True, error_model="numpy", nogil=True)
def max_pool(x, kernel, stride, padding, dilation, out_hw, indices):
    """(C, H, W) -> (C, H', W'): the maximum of each window, padding acting as -inf; = torch
    ``max_pool2d``.

    ``indices`` is None, or an int64 (C, H', W') array that receives the flat index
    ``h * W + w`` of each maximum in its input plane (torch's ``return_indices``).
    """
    c, _, w = x.shape
    oh, ow = out_hw
    out = np.empty((c, oh, ow), np.float32)
    size = _buffer_size(w, ow, kernel[1], stride[1], padding[1], dilation[1])
    blocks = (oh + ROWS - 1) // ROWS
    for task in prange(c * blocks):
        k, first = task // blocks, task % blocks * ROWS
        buffer = np.full(size, -np.inf, np.float32)
        for i in range(first, min(oh, first + ROWS)):
            if indices is None:
                _separable_max_row(x[k], i, kernel, stride, padding, dilation, buffer, out[k, i])
            else:
                _max_row(x[k], i, kernel, stride, padding, dilation, out[k, i], indices[k, i])
    return out


@njit(cache=True, error_model="numpy", nogil=True, fastmath=FASTMATH, inline="always")
def _separable_sum_row(plane, i, kernel, stride, padding, term, p, buffer, sums):
    """``sums[j]`` = the sum over output ``j``'s in-bounds window taps of the value (``term``
    0), its absolute value (1), its square (2) or ``|v| ** p`` (3: ``pow``; 4: ``exp(p ln |v|)``
    of :mod:`poolcli.kernels.vecmath`, which vectorises, for p below :data:`EXP_POWERS`; a row
    with a subnormal, inf or NaN takes ``pow``), accumulated in ``buffer``'s dtype: the window
    rows' column sums into ``buffer`` (its padding already 0), then each output's sum over its
    columns."""
    h, w = plane.shape
    columns = buffer[padding[1] : padding[1] + w]
    columns[:] = 0
    top = i * stride[0] - padding[0]
    for r in range(max(top, 0), min(top + kernel[0], h)):
        row = plane[r]
        if term == 0:
            for s in range(w):
                columns[s] += row[s]
        elif term == 1:
            for s in range(w):
                columns[s] += abs(row[s])
        elif term == 2:
            for s in range(w):
                v = np.float64(row[s])
                columns[s] += v * v
        elif term == 4 and _normal_or_zero(row.view(np.int32)):
            magnitudes = row.view(np.int32)
            for s in range(w):
                a = np.int64(magnitudes[s]) & 0x7FFFFFFF  # the bits of |v|
                power = exp_near(p * log_bits(a))
                columns[s] += power if a != 0 else 0.0
        else:
            for s in range(w):
                columns[s] += np.float64(abs(row[s])) ** p
    _sum_columns(buffer, kernel[1], stride[1], sums)


#: Lp pooling takes exp and log for p below this: p ln |v| stays in exp_near's domain for every
#: float32 (ln |v| in [-88.1, 88.8])
EXP_POWERS = min(EXP_HIGH / 88.8, EXP_LOW / -88.1)


@njit(cache=True, error_model="numpy", nogil=True, inline="always")
def _normal_or_zero(bits):
    """Whether every float32 of a row (given its bits) is zero or normal: no subnormal, inf or
    NaN, whose bits :func:`poolcli.kernels.vecmath.log_bits` cannot take."""
    odd = 0
    for b in bits:
        a = b & 0x7FFFFFFF
        e = a >> 23
        odd += ((e == 0) & (a != 0)) | (e == 0xFF)
    return odd == 0


@njit(cache=True, error_model="numpy", nogil=True, fastmath=FASTMATH)
def _sum_columns(buffer, kernel, step, sums):
    """``sums[j]`` = the sum of ``buffer[j * step + kj]`` over ``kj < kernel``, as
    :func:`_max_columns` takes maxima."""
    n = sums.size
    if step == 2 and 2 <= kernel <= 3:
        if kernel == 2:
            for j in range(n):
                sums[j] = buffer[2 * j] + buffer[2 * j + 1]
        else:
            for j in range(n):
                sums[j] = buffer[2 * j] + buffer[2 * j + 1] + buffer[2 * j + 2]
        return
    for kj in range(kernel):
        taps = buffer[kj:]
        if kj == 0:
            for j in range(n):
                sums[j] = taps[j * step]
        elif step == 1:
            for j in range(n):
                sums[j] += taps[j]
        else:
            for j in range(n):
                sums[j] += taps[j * step]


@njit(cache=True, error_model="numpy", nogil=True)
def _window_counts(size, out_size, kernel, stride, padding, count_include_pad):
    """Per output position along one axis, torch's avg_pool2d divisor factor: the window clipped
    to the padded input (``count_include_pad``; in ceil mode it still stops at the padding), or
    to the input itself."""
    counts = np.empty(out_size, np.int64)
    for j in range(out_size):
        start = j * stride - padding
        end = min(start + kernel, size + padding)
        if not count_include_pad:
            start, end = max(start, 0), min(end, size)
        counts[j] = end - start
    return counts


@njit(parallel=True, cache=True, error_model="numpy", nogil=True, fastmath=FASTMATH)
def avg_pool(x, kernel, stride, padding, out_hw, count_include_pad, divisor_override):
    """(C, H, W) -> (C, H', W'): each window's sum over its in-bounds taps, divided by torch's
    divisor (``divisor_override`` when > 0); = torch ``avg_pool2d``."""
    c, h, w = x.shape
    oh, ow = out_hw
    if divisor_override > 0:
        divisors = np.full((oh, ow), np.float32(divisor_override))
    else:
        row_counts = _window_counts(h, oh, kernel[0], stride[0], padding[0], count_include_pad)
        col_counts = _window_counts(w, ow, kernel[1], stride[1], padding[1], count_include_pad)
        divisors = np.outer(row_counts, col_counts).astype(np.float32)  # float32 rows divide fast
    # Dividing by a power of two is multiplying by its exact reciprocal: same result, and a
    # division costs many multiplications (2x2 windows: divisor 4 everywhere inside the map).
    powers_of_two = True
    for d in divisors.ravel():
        powers_of_two &= (int(d) & (int(d) - 1)) == 0
    reciprocals = (1 / divisors).astype(np.float32)
    out = np.empty((c, oh, ow), np.float32)
    size = _buffer_size(w, ow, kernel[1], stride[1], padding[1], 1)
    blocks = (oh + ROWS - 1) // ROWS
    for task in prange(c * blocks):
        k, first = task // blocks, task % blocks * ROWS
        buffer = np.zeros(size, np.float32)
        for i in range(first, min(oh, first + ROWS)):
            sums = out[k, i]
            _separable_sum_row(x[k], i, kernel, stride, padding, 0, 0.0, buffer, sums)
            if powers_of_two:
                reciprocal = reciprocals[i]
                for j in range(ow):
                    sums[j] *= reciprocal[j]
            else:
                divisor = divisors[i]
                for j in range(ow):
                    sums[j] /= divisor[j]
    return out


@njit(parallel=True, cache=True, error_model="numpy", nogil=True, fastmath=FASTMATH)
def lp_pool(x, p, kernel, stride, out_hw):
    """(C, H, W) -> (C, H', W'): ``(sum |x| ** p) ** (1 / p)`` over the in-bounds taps of each
    window (no padding), in float64 so that large ``p`` does not overflow. p = 1 and 2, the
    usual norms, take no ``pow`` call, and other p below :data:`EXP_POWERS` exp and log that
    vectorise (3e-14 relative)."""
    c, h, w = x.shape
    oh, ow = out_hw
    term = 1 if p == 1.0 else 2 if p == 2.0 else 4 if p < EXP_POWERS else 3
    root_low, root_high = root_range(p)
    size = _buffer_size(w, ow, kernel[1], stride[1], 0, 1)
    out = np.empty((c, oh, ow), np.float32)
    blocks = (oh + ROWS - 1) // ROWS
    for task in prange(c * blocks):
        k, first = task // blocks, task % blocks * ROWS
        buffer, sums = np.zeros(size, np.float64), np.empty(ow, np.float64)
        for i in range(first, min(oh, first + ROWS)):
            _separable_sum_row(x[k], i, kernel, stride, (0, 0), term, p, buffer, sums)
            row = out[k, i]
            if p == 1.0:
                for j in range(ow):
                    row[j] = sums[j]
            elif p == 2.0:
                for j in range(ow):
                    row[j] = np.sqrt(sums[j])
            elif term == 4:
                roots(sums, p, root_low, root_high, row)
            else:
                for j in range(ow):
                    row[j] = sums[j] ** (1.0 / p)
    return out


@njit(parallel=True, cache=True, error_model="numpy", nogil=True, fastmath=FASTMATH)
def adaptive_avg_pool(x, row_bins, col_bins):
    """(C, H, W) -> (C, n_h, n_w): the mean of each bin, accumulated in float64; = torch
    ``adaptive_avg_pool2d``. ``row_bins`` and ``col_bins`` are int64 ``(n, 2)`` arrays of
    ``[start, end)`` (torch's bins, :func:`poolcli.stages.geometry.adaptive_bins`).

    Each output row first sums its bin's rows column by column (contiguous, vectorised), then
    each bin sums its columns of that: bins that overlap share the first step."""
    c, h, w = x.shape
    oh, ow = row_bins.shape[0], col_bins.shape[0]
    out = np.empty((c, oh, ow), np.float32)
    for task in prange(c * oh):
        k, i = task // oh, task % oh
        top, bottom = row_bins[i, 0], row_bins[i, 1]
        column_sums = np.zeros(w, np.float64)
        for r in range(top, bottom):
            row = x[k, r]
            for s in range(w):
                column_sums[s] += row[s]
        for j in range(ow):
            left, right = col_bins[j, 0], col_bins[j, 1]
            out[k, i, j] = column_sums[left:right].sum() / ((bottom - top) * (right - left))
    return out


@njit(parallel=True, cache=True, error_model="numpy", nogil=True)
def adaptive_max_pool(x, row_bins, col_bins):
    """(C, H, W) -> (C, n_h, n_w): the maximum of each bin, NaN propagating; = torch
    ``adaptive_max_pool2d``. Bins as in :func:`adaptive_avg_pool`, and computed the same way:
    column maxima over the bin's rows, then the maximum of each bin's columns."""
    c, h, w = x.shape
    oh, ow = row_bins.shape[0], col_bins.shape[0]
    out = np.empty((c, oh, ow), np.float32)
    for task in prange(c * oh):
        k, i = task // oh, task % oh
        column_max = np.full(w, -np.inf, np.float32)
        for r in range(row_bins[i, 0], row_bins[i, 1]):
            row = x[k, r]
            for s in range(w):
                v = row[s]
                column_max[s] = v if (v > column_max[s]) | np.isnan(v) else column_max[s]
        for j in range(ow):
            best = np.float32(-np.inf)
            for v in column_max[col_bins[j, 0] : col_bins[j, 1]]:
                if v > best or np.isnan(v):
                    best = v
            out[k, i, j] = best
    return out


@njit(parallel=True, cache=True, error_model="numpy", nogil=True, fastmath=FASTMATH)
def pyramid_pool(x, row_bins, col_bins, sizes, take_max, row_sources, base):
    """(C, H, W) -> (C * sum(n ** 2),): spatial pyramid pooling, every level in one pass over the
    map. Level ``l`` is adaptive max (``take_max``) or average pooling to ``n x n``, ``n =
    sizes[l]``, flattened channel-major after the levels before it; its bins are the next ``n``
    rows of ``row_bins`` and ``col_bins`` (int64 ``[start, end)``, torch's bins).

    One task per channel. Each bin row first reduces its rows column by column, then each bin
    its columns, as in :func:`adaptive_max_pool` and :func:`adaptive_avg_pool` (sums in float64,
    NaN propagating). The map's rows are read once: level ``base`` (the finest) reduces them,
    and a bin row of any level whose ``row_sources`` entry is ``[p, q)`` (not -1) combines the
    base level's bin rows ``p`` to ``q - 1``, which cover exactly its rows (for sums, without
    overlap: :func:`poolcli.stages.pool.pyramid_row_sources`). Only the other bin rows read the
    map again. (The loops are written out: a helper for "reduce one row into another" is not
    inlined well enough to keep up with them on maps a few dozen columns wide.)
    """
    c, h, w = x.shape
    starts = np.zeros(sizes.size + 1, np.int64)  # where each level's bins and outputs begin
    offsets = np.zeros(sizes.size + 1, np.int64)
    for level in range(sizes.size):
        starts[level + 1] = starts[level] + sizes[level]
        offsets[level + 1] = offsets[level] + c * sizes[level] * sizes[level]
    out = np.empty(offsets[-1], np.float32)
    fine = sizes[base]
    all_rows = row_bins.shape[0]
    for k in prange(c):
        plane = x[k]
        # reduced[b] is bin row b's column reduction: b < fine for the base level, and
        # fine + the bin row's place in row_bins for one that has to read the map itself
        reduced_max = np.empty((fine + all_rows if take_max else 0, w), np.float32)
        reduced_sums = np.empty((0 if take_max else fine + all_rows, w), np.float64)
        for b in range(fine + all_rows):
            if b < fine:
                top, bottom = row_bins[starts[base] + b, 0], row_bins[starts[base] + b, 1]
                first, last = -1, -1
            else:
                top, bottom = row_bins[b - fine, 0], row_bins[b - fine, 1]
                first, last = row_sources[b - fine, 0], row_sources[b - fine, 1]
            if take_max:
                acc = reduced_max[b]
                acc[:] = -np.inf
                if first >= 0:
                    for t in range(first, last):
                        row = reduced_max[t]
                        for s in range(w):
                            v = row[s]
                            acc[s] = v if (v > acc[s]) | np.isnan(v) else acc[s]
                else:
                    for r in range(top, bottom):
                        row = plane[r]
                        for s in range(w):
                            v = row[s]
                            acc[s] = v if (v > acc[s]) | np.isnan(v) else acc[s]
            else:
                acc64 = reduced_sums[b]
                acc64[:] = 0
                if first >= 0:
                    for t in range(first, last):
                        row64 = reduced_sums[t]
                        for s in range(w):
                            acc64[s] += row64[s]
                else:
                    for r in range(top, bottom):
                        row = plane[r]
                        for s in range(w):
                            acc64[s] += row[s]
        for level in range(sizes.size):
            n = sizes[level]
            block = out[offsets[level] + k * n * n :]
            for i in range(n):
                b = fine + starts[level] + i
                top, bottom = row_bins[b - fine, 0], row_bins[b - fine, 1]
                for j in range(n):
                    left, right = col_bins[starts[level] + j, 0], col_bins[starts[level] + j, 1]
                    if take_max:
                        best = np.float32(-np.inf)
                        for v in reduced_max[b, left:right]:
                            if v > best or np.isnan(v):
                                best = v
                        block[i * n + j] = best
                    else:
                        block[i * n + j] = reduced_sums[b, left:right].sum() / ((bottom - top) * (right - left))
    return out
