"""Windowed and adaptive pooling: max, average and Lp pooling over sliding windows, adaptive
max and average pooling, and spatial pyramid pooling (SPP).

Window geometry (output sizes, padding and ceil-mode rules) comes from
:mod:`poolcli.stages.geometry`; the kernels live in :mod:`poolcli.kernels.pool` and are imported
only when a stage runs.
"""

from __future__ import annotations

import functools
import math
from typing import Annotated, Any, ClassVar, Literal

import numpy as np
from pydantic import BeforeValidator, Field, WithJsonSchema, field_validator, model_validator

from poolcli.config import PositiveInt, padding_spec, pair
from poolcli.stages.base import GLOBAL, Stage, kernel_module, register_stage
from poolcli.errors import ShapeError
from poolcli.layout import is_channels_last, pixels
from poolcli.stages.geometry import Window, adaptive_bins, axis_padding, pooled_size

kernels = kernel_module("pool")
layout_kernels = kernel_module("channels_last")


def _contiguous(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x, dtype=np.float32)


# --- sliding windows -----------------------------------------------------------------------------


class WindowPool(Stage):
    """A pooling stage over sliding windows: its shapes, costs and receptive field follow from
    :attr:`window`. Subclasses add ``padding`` and ``dilation`` where they take them."""

    kernel_size: pair(1) = Field(description="window size: an int or [kh, kw]")
    stride: pair(1) | None = Field(None, description="step between windows: an int or [sh, sw]; default kernel_size")
    ceil_mode: bool = Field(
        False,
        strict=True,
        description="round the output size up (a last window that starts inside the input or the left padding)",
    )

    @property
    def window(self) -> Window:
        # Stages without a padding or dilation parameter have torch's defaults for them; ONNX's
        # pads (four numbers, same_upper, same_lower) are in pads(), the window has the top and left.
        padding = getattr(self, "padding", (0, 0))
        if isinstance(padding, str):
            padding = (0, 0)
        return Window.of(self.kernel_size, self.stride, padding[:2], getattr(self, "dilation", (1, 1)), self.ceil_mode)

    @model_validator(mode="after")
    def _padding_fits(self):
        padding = getattr(self, "padding", (0, 0))
        if isinstance(padding, str):
            return self
        if len(padding) == 4:  # ONNX's pads: each smaller than the window
            for axis, before, after, span in zip("hw", padding[:2], padding[2:], self.window.effective):
                if max(before, after) >= span:
                    raise ValueError(f"padding must be smaller than the (dilated) kernel on each side, got {max(before, after)} "
                                     f"for a kernel of {span} along {axis}")
            return self
        message = self.window.check_padding()
        if message:
            raise ValueError(message)
        return self

    def pads(self, height: int, width: int) -> tuple[int, int, int, int]:
        """(top, bottom, left, right) for a map of ``height x width``: torch's symmetric padding,
        ONNX's four pads, or its same_upper / same_lower."""
        padding = getattr(self, "padding", (0, 0))
        window = self.window
        (top, bottom), (left, right) = (
            axis_padding(padding, axis, size, window.kernel[axis], window.stride[axis], window.dilation[axis])
            for axis, size in ((0, height), (1, width))
        )
        return top, bottom, left, right

    def out_hw(self, height: int, width: int) -> tuple[int, int]:
        """The output (H', W'); ShapeError where the window cannot fit."""
        padding = getattr(self, "padding", (0, 0))
        if not (isinstance(padding, str) or len(padding) == 4):
            return self.window.output_hw(height, width)
        top, bottom, left, right = self.pads(height, width)
        window = self.window
        ceil_mode = self.ceil_mode and not isinstance(padding, str)  # auto_pad fixes the output size
        sizes = tuple(
            pooled_size(n, span, s, before, ceil_mode, after)
            for n, span, s, before, after in zip((height, width), window.effective, window.stride, (top, left),
                                                 (bottom, right))
        )
        if min(sizes) < 1:
            raise ShapeError(f"a {window.kernel[0]}x{window.kernel[1]} window does not fit a {height}x{width} map "
                             f"padded by {top},{bottom} (rows) and {left},{right} (columns)")
        return sizes

    def output_shape(self, shape):
        channels, height, width = self.expect_map(shape)
        return (channels, *self.out_hw(height, width))

    def macs(self, shape):
        kh, kw = self.kernel_size
        return math.prod(self.output_shape(shape)) * kh * kw

    def receptive_field(self, rf, shape):
        return rf.through(self.window.effective, self.window.stride)


def _padding_field():
    return Field(
        0,
        validate_default=True,
        description="an int or [ph, pw] on both sides (at most half the (dilated) kernel, as torch), or ONNX's "
        "[top, left, bottom, right] (each smaller than the kernel), same_upper or same_lower (output ceil(size / "
        "stride), the extra pad after or before)",
    )


PoolPadding = padding_spec(("same_upper", "same_lower"))


@register_stage("max_pool")
class MaxPool(WindowPool):
    """Max pooling over sliding windows, = torch ``max_pool2d``: padding acts as -inf and a NaN
    in a window makes its output NaN.

    Examples
    --------
    >>> x = np.array([[1, 3, 2, 4], [5, 6, 1, 2], [0, 1, 3, 1], [2, 4, 5, 2]], np.float32)[None]
    >>> MaxPool(type="max_pool", kernel_size=2)(x)
    array([[[6., 4.],
            [4., 5.]]], dtype=float32)
    """

    summary = "maximum over sliding windows (kernel_size, stride, padding, dilation, ceil_mode) = torch max_pool2d"
    example: ClassVar[dict] = {"kernel_size": 2, "stride": 2}
    padding: PoolPadding = _padding_field()
    dilation: pair(1) = Field(1, validate_default=True, description="spacing between kernel taps: an int or [dh, dw]")

    def pool_with_indices(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The pooled map and, for each output, the flat index ``h * W + w`` of its maximum in
        the input plane (int64, torch's ``return_indices``), as ``max_unpool`` needs them."""
        x = _contiguous(x)
        out_hw = self.out_hw(*x.shape[1:])
        indices = np.empty((x.shape[0], *out_hw), np.int64)
        return self._pool(x, out_hw, indices), indices

    def __call__(self, x):
        x = _contiguous(x)
        return self._pool(x, self.out_hw(*x.shape[1:]), None)

    def _pool(self, x, out_hw, indices):
        # The kernel takes the top and left padding; the output size sets the bottom and right.
        w = self.window
        top, _, left, _ = self.pads(*x.shape[1:])
        return kernels.max_pool(x, w.kernel, w.stride, (top, left), w.dilation, out_hw, indices)


@register_stage("avg_pool")
class AvgPool(WindowPool):
    """Average pooling over sliding windows, = torch ``avg_pool2d``, including its divisor
    rules: with ``count_include_pad`` the divisor counts padded taps (in ceil mode, not those of
    the window's part beyond the padding); without it, only in-bounds taps.

    Examples
    --------
    >>> x = np.array([[1, 3, 2, 4], [5, 6, 1, 2], [0, 1, 3, 1], [2, 4, 5, 2]], np.float32)[None]
    >>> AvgPool(type="avg_pool", kernel_size=2)(x)
    array([[[3.75, 2.25],
            [1.75, 2.75]]], dtype=float32)
    """

    summary = (
        "mean over sliding windows (kernel_size, stride, padding, ceil_mode, count_include_pad, "
        "divisor_override) = torch avg_pool2d"
    )
    example: ClassVar[dict] = {"kernel_size": 3, "stride": 1, "padding": 1, "count_include_pad": False}
    padding: PoolPadding = _padding_field()
    count_include_pad: bool = Field(True, strict=True, description="count padded taps in the divisor")
    divisor_override: PositiveInt | None = Field(None, description="divide every window sum by this instead")

    def __call__(self, x):
        x = _contiguous(x)
        w = self.window
        _, height, width = x.shape
        out_hw = self.out_hw(height, width)
        top, bottom, left, right = self.pads(height, width)
        if (top, left) == (bottom, right) or self.divisor_override:
            return kernels.avg_pool(x, w.kernel, w.stride, (top, left), out_hw, self.count_include_pad,
                                    self.divisor_override or 0)
        # Asymmetric pads (ONNX): the window sums, then ONNX's divisors (taps inside the input, or
        # inside the padded map with count_include_pad).
        sums = kernels.avg_pool(x, w.kernel, w.stride, (top, left), out_hw, True, 1)
        rows = _tap_counts(height, out_hw[0], w.kernel[0], w.stride[0], top, bottom, self.count_include_pad)
        cols = _tap_counts(width, out_hw[1], w.kernel[1], w.stride[1], left, right, self.count_include_pad)
        return sums / np.outer(rows, cols).astype(np.float32)


def _tap_counts(size: int, out: int, kernel: int, stride: int, before: int, after: int, include_pad: bool):
    """Per output along one axis: its window's taps inside ``[0, size)``, or inside the padded
    ``[-before, size + after)`` with ``include_pad``."""
    start = np.arange(out) * stride - before
    low, high = (-before, size + after) if include_pad else (0, size)
    return np.minimum(start + kernel, high) - np.maximum(start, low)


@register_stage("lp_pool")
class LpPool(WindowPool):
    """Lp pooling: ``(sum |x| ** p) ** (1 / p)`` over the in-bounds part of each window, the
    true p-norm. Equals torch ``lp_pool2d`` wherever that is defined (non-negative input, full
    windows); torch scales a partial ceil-mode window's mean by the full window size instead.

    Examples
    --------
    >>> x = np.array([[3, -4], [0, 0]], np.float32)[None]
    >>> LpPool(type="lp_pool", kernel_size=2)(x)
    array([[[5.]]], dtype=float32)
    """

    summary = "p-norm (sum |x|^p)^(1/p) over sliding windows (p, kernel_size, stride, ceil_mode)"
    example: ClassVar[dict] = {"p": 2, "kernel_size": 2}
    p: float = Field(2.0, gt=0, allow_inf_nan=False, description="the norm's power; 1 = sum of |x|, large = max of |x|")

    def macs(self, shape):
        return super().macs(shape) + math.prod(shape)  # plus one power per input element

    def __call__(self, x):
        x = _contiguous(x)
        w = self.window
        return kernels.lp_pool(x, np.float64(self.p), w.kernel, w.stride, w.output_hw(*x.shape[1:]))


# --- adaptive bins -------------------------------------------------------------------------------


def _output_size(value: Any) -> tuple[int | None, int | None]:
    def entry_ok(v):
        return v is None or (isinstance(v, int) and not isinstance(v, bool) and v >= 1)

    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return value, value
    if isinstance(value, (list, tuple)) and len(value) == 2 and all(map(entry_ok, value)):
        return tuple(value)
    raise ValueError(
        f"must be an integer >= 1 or a pair [h, w] of integers >= 1 or null (null keeps that size), got {value!r}"
    )


OutputSize = Annotated[
    tuple[int | None, int | None],
    BeforeValidator(_output_size),
    WithJsonSchema(
        {
            "oneOf": [
                {"type": "integer", "minimum": 1},
                {
                    "type": "array",
                    "items": {"oneOf": [{"type": "integer", "minimum": 1}, {"type": "null"}]},
                    "minItems": 2,
                    "maxItems": 2,
                },
            ]
        }
    ),
]


@functools.lru_cache(maxsize=256)
def _bins(size: int, bins: int) -> np.ndarray:
    """torch's adaptive bins along one axis as an int64 ``(bins, 2)`` array for the kernels,
    which only read it: one array per size, built once (building it took 20-40 us a call, 5%
    of adaptive pooling a 64x256x256 map). Shared, so never written to; it stays writable
    because a read-only array is another type to Numba, which would compile every kernel again."""
    return np.array(adaptive_bins(size, bins), np.int64).reshape(bins, 2)


@functools.lru_cache(maxsize=256)
def _bin_taps(size: int, bins: int) -> int:
    """The taps of all bins along one axis (bins overlap where ``size`` is not a multiple)."""
    return sum(end - start for start, end in adaptive_bins(size, bins))


def adaptive_pool(x: np.ndarray, out_hw: tuple[int, int], pool: str) -> np.ndarray:
    """``adaptive_max_pool`` or ``adaptive_avg_pool`` (``pool``: max, avg) of a (C, H, W) map."""
    if pool == "avg" and tuple(out_hw) == (1, 1) and is_channels_last(x):  # a squeeze-excitation's
        return layout_kernels.mean_pixels(pixels(x))
    x = _contiguous(x)
    kernel = kernels.adaptive_max_pool if pool == "max" else kernels.adaptive_avg_pool
    return kernel(x, _bins(x.shape[1], out_hw[0]), _bins(x.shape[2], out_hw[1]))


class AdaptivePool(Stage):
    """Adaptive pooling to a fixed ``output_size`` with torch's bins: bin ``i`` of ``n`` along an
    axis of length ``L`` spans ``[floor(i*L/n), ceil((i+1)*L/n))``."""

    output_size: OutputSize = Field(
        description="output [h, w], or one int for both; a null entry keeps that input size"
    )
    pool: ClassVar[str]

    def out_hw(self, height: int, width: int) -> tuple[int, int]:
        oh, ow = self.output_size
        return (height if oh is None else oh, width if ow is None else ow)

    def output_shape(self, shape):
        channels, height, width = self.expect_map(shape)
        return (channels, *self.out_hw(height, width))

    def macs(self, shape):
        channels, height, width = self.expect_map(shape)
        oh, ow = self.out_hw(height, width)
        return channels * _bin_taps(height, oh) * _bin_taps(width, ow)

    def receptive_field(self, rf, shape):
        # Bins vary in size and step; approximate with span ceil(L/n) and step floor(L/n)
        # (at least 1, so that later stages still grow the field when n > L).
        sizes = shape[1:]
        bins = self.out_hw(*sizes)
        span = tuple(-(-size // n) for size, n in zip(sizes, bins))
        step = tuple(max(1, size // n) for size, n in zip(sizes, bins))
        return rf.through(span, step)

    def __call__(self, x):
        return adaptive_pool(x, self.out_hw(*x.shape[1:]), self.pool)


@register_stage("adaptive_avg_pool")
class AdaptiveAvgPool(AdaptivePool):
    """Mean over each of ``output_size`` adaptive bins, = torch ``adaptive_avg_pool2d``.

    Examples
    --------
    >>> x = np.array([[1, 3, 2, 4], [5, 6, 1, 2], [0, 1, 3, 1], [2, 4, 5, 2]], np.float32)[None]
    >>> AdaptiveAvgPool(type="adaptive_avg_pool", output_size=[1, 2])(x)
    array([[[2.75, 2.5 ]]], dtype=float32)
    """

    summary = "mean over an output_size grid of torch's adaptive bins = torch adaptive_avg_pool2d"
    example: ClassVar[dict] = {"output_size": 3}  # bins [0, 2) [1, 3) [2, 4): they overlap
    pool = "avg"


@register_stage("adaptive_max_pool")
class AdaptiveMaxPool(AdaptivePool):
    """Maximum over each of ``output_size`` adaptive bins, = torch ``adaptive_max_pool2d``; NaN
    propagates.

    Examples
    --------
    >>> x = np.array([[1, 3, 2, 4], [5, 6, 1, 2], [0, 1, 3, 1], [2, 4, 5, 2]], np.float32)[None]
    >>> AdaptiveMaxPool(type="adaptive_max_pool", output_size=[2, None])(x)
    array([[[5., 6., 2., 4.],
            [2., 4., 5., 2.]]], dtype=float32)
    """

    summary = "maximum over an output_size grid of torch's adaptive bins = torch adaptive_max_pool2d"
    example: ClassVar[dict] = {"output_size": [1, 3]}
    pool = "max"


# --- spatial pyramid ------------------------------------------------------------------------------


@register_stage("spp")
class SpatialPyramidPool(Stage):
    """Spatial pyramid pooling (He et al. 2014): for each level ``n``, adaptive max or average
    pooling to ``n x n`` (torch's bins), flattened channel-major (``c*n*n + i*n + j``); the
    levels are joined in order into a vector of length ``C * sum(n ** 2)``.

    Examples
    --------
    >>> x = np.array([[1, 3, 2, 4], [5, 6, 1, 2], [0, 1, 3, 1], [2, 4, 5, 2]], np.float32)[None]
    >>> SpatialPyramidPool(type="spp", levels=[1, 2])(x)
    array([6., 6., 4., 4., 5.], dtype=float32)
    """

    summary = "spatial pyramid: adaptive max/avg pooling to n x n per level, joined: (C,H,W) -> (C*sum(n^2),)"
    makes_vector = True
    example: ClassVar[dict] = {"levels": [1, 2], "pool": "max"}
    levels: tuple[PositiveInt, ...] = Field(
        (1, 2, 4), json_schema_extra={"minItems": 1}, description="grid sizes n, in output order"
    )
    pool: Literal["max", "avg"] = Field("max", description="max or average pooling in each bin")

    @field_validator("levels")
    @classmethod
    def _some_levels(cls, levels):
        if not levels:
            raise ValueError("give at least one level, e.g. [1, 2, 4]")
        return levels

    def output_shape(self, shape):
        channels = self.expect_map(shape)[0]
        return (channels * sum(n * n for n in self.levels),)

    def macs(self, shape):
        channels, height, width = self.expect_map(shape)
        return sum(channels * _bin_taps(height, n) * _bin_taps(width, n) for n in self.levels)

    def receptive_field(self, rf, shape):
        return GLOBAL

    def __call__(self, x):
        x = _contiguous(x)
        return kernels.pyramid_pool(x, *_pyramid_plan(x.shape[1], x.shape[2], self.levels, self.pool == "max"))


@functools.lru_cache(maxsize=64)
def _pyramid_plan(height: int, width: int, levels: tuple[int, ...], take_max: bool) -> tuple:
    """The arguments of :func:`poolcli.kernels.pool.pyramid_pool` after the map, for one map
    size (a run's maps share few sizes; working them out costs as much as pooling a small
    map). The kernel only reads these arrays."""
    rows = np.concatenate([_bins(height, n) for n in levels])
    cols = np.concatenate([_bins(width, n) for n in levels])
    base = levels.index(max(levels))
    sources = pyramid_row_sources(height, levels, base, overlap=take_max)
    return rows, cols, np.array(levels, np.int64), take_max, sources, base


def pyramid_row_sources(height: int, levels: tuple[int, ...], base: int, overlap: bool) -> np.ndarray:
    """For each bin row of each level (concatenated in level order), the bin rows ``[p, q)`` of
    level ``base`` that together cover exactly its input rows, or ``[-1, -1]`` where none do:
    what lets :func:`poolcli.kernels.pool.pyramid_pool` read the map's rows once. Maxima may
    combine overlapping bins (``overlap``); sums may not, so there the base bins must also
    partition the rows.

    >>> pyramid_row_sources(8, (1, 2, 4), base=2, overlap=False).tolist()
    [[0, 4], [0, 2], [2, 4], [0, 1], [1, 2], [2, 3], [3, 4]]
    >>> pyramid_row_sources(6, (4, 3), base=0, overlap=False).tolist()  # no 4-bin edge at row 2
    [[0, 1], [1, 2], [2, 3], [3, 4], [0, 1], [-1, -1], [3, 4]]
    """
    fine = adaptive_bins(height, levels[base])
    first = {start: p for p, (start, _) in reversed(list(enumerate(fine)))}
    last = {end: p for p, (_, end) in enumerate(fine)}
    sources = []
    for n in levels:
        for top, bottom in adaptive_bins(height, n):
            p, q = first.get(top), last.get(bottom)
            ok = p is not None and q is not None and p <= q
            if ok and not overlap:
                ok = all(fine[t][1] == fine[t + 1][0] for t in range(p, q))
            sources.append([p, q + 1] if ok else [-1, -1])
    return np.array(sources, np.int64).reshape(-1, 2)
