"""Kernels for resampling = torch ``interpolate`` (``align_corners=False``): nearest and
bilinear, with ATen's source-index rules reproduced in float32 as ATen's CPU kernels compute
them.

``scales`` are torch's per-axis float32 scales (``compute_scales_value``: ``1 / scale_factor``
when a scale factor was given, else ``in / out``), computed by the caller. Along an axis whose
output size equals its input size, torch copies (whatever the scale factor); nearest also
halves the index when the output is exactly twice the input. Bilinear multiplies every tap by
its weight, even a zero one, so an infinite neighbour gives NaN exactly where torch's does.
"""

import numpy as np
from numba import njit, prange


@njit(cache=True, error_model="numpy", nogil=True)
def _nearest_sources(in_size, out_size, scale):
    """ATen's ``nearest_idx``: the input index each output index copies."""
    sources = np.empty(out_size, np.int64)
    for o in range(out_size):
        if out_size == in_size:
            sources[o] = o
        elif out_size == 2 * in_size:
            sources[o] = o >> 1
        else:
            sources[o] = min(int(np.floor(np.float32(o) * scale)), in_size - 1)
    return sources


@njit(cache=True, error_model="numpy", nogil=True)
def _linear_sources(in_size, out_size, scale):
    """ATen's ``compute_source_index_and_lambda`` (``align_corners=False``), in float32: for
    each output index, its two input indices and their weights."""
    first = np.empty(out_size, np.int64)
    second = np.empty(out_size, np.int64)
    first_weight = np.empty(out_size, np.float32)
    second_weight = np.empty(out_size, np.float32)
    zero, one = np.float32(0), np.float32(1)
    for o in range(out_size):
        if out_size == in_size:
            index, following, weight = o, o, zero
        else:
            # ATen's scale * (o + 0.5) - 0.5 is compiled to a fused multiply-add (one rounding):
            # in float64 the product and the difference are exact, so rounding once to
            # float32 gives the same source index and weights.
            source = np.float32(np.float64(scale) * (o + 0.5) - 0.5)
            source = max(source, zero)  # OpenCV's rule: clamp before the left edge
            index = min(int(np.floor(source)), in_size - 1)
            following = index + 1 if index < in_size - 1 else index
            weight = min(max(source - np.float32(index), zero), one)
        first[o], second[o] = index, following
        first_weight[o] = one - weight
        second_weight[o] = weight
    return first, second, first_weight, second_weight


@njit(parallel=True, cache=True, error_model="numpy", nogil=True)
def upsample_nearest(x, out_hw, scales):
    """(C, H, W) -> (C, H', W'): each output copies its nearest-rule source; = torch
    ``interpolate(mode="nearest")``."""
    c, h, w = x.shape
    oh, ow = out_hw
    rows = _nearest_sources(h, oh, scales[0])
    cols = _nearest_sources(w, ow, scales[1])
    out = np.empty((c, oh, ow), np.float32)
    for task in prange(c * oh):
        k, i = task // oh, task % oh
        row, target = x[k, rows[i]], out[k, i]
        for j in range(ow):
            target[j] = row[cols[j]]
    return out


@njit(parallel=True, cache=True, error_model="numpy", nogil=True)
def upsample_bilinear(x, out_hw, scales):
    """(C, H, W) -> (C, H', W'): = torch ``interpolate(mode="bilinear", align_corners=False)``.

    Evaluated in torch's order, in float32: along the row first,
    ``t = x[r, s0] * u0 + x[r, s1] * u1`` for each of the two source rows, then
    ``t0 * v0 + t1 * v1``."""
    c, h, w = x.shape
    oh, ow = out_hw
    top, bottom, top_weight, bottom_weight = _linear_sources(h, oh, scales[0])
    left, right, left_weight, right_weight = _linear_sources(w, ow, scales[1])
    out = np.empty((c, oh, ow), np.float32)
    for task in prange(c * oh):
        k, i = task // oh, task % oh
        upper, lower, target = x[k, top[i]], x[k, bottom[i]], out[k, i]
        v0, v1 = top_weight[i], bottom_weight[i]
        for j in range(ow):
            s0, s1, u0, u1 = left[j], right[j], left_weight[j], right_weight[j]
            t0 = upper[s0] * u0 + upper[s1] * u1
            t1 = lower[s0] * u0 + lower[s1] * u1
            target[j] = t0 * v0 + t1 * v1
    return out
