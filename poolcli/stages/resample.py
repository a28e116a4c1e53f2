"""Resampling, = torch ``interpolate`` with ``align_corners=False``: nearest and bilinear, up or
down, to a scale factor or a size. The kernels live in :mod:`poolcli.kernels.resample` and are
imported only when the stage runs.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, ClassVar, Literal

import numpy as np
from pydantic import BeforeValidator, Field, WithJsonSchema, model_validator

from poolcli.config import pair
from poolcli.errors import ShapeError
from poolcli.stages.base import ReceptiveField, Stage, kernel_module, register_stage

kernels = kernel_module("resample")


def _scale_factor(value: Any) -> tuple[float, float]:
    def positive(v):
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0

    if positive(value):
        return float(value), float(value)
    if isinstance(value, (list, tuple)) and len(value) == 2 and all(map(positive, value)):
        return float(value[0]), float(value[1])
    raise ValueError(f"must be a number > 0 or a pair [sh, sw] of numbers > 0, got {value!r}")


ScaleFactor = Annotated[
    tuple[float, float],
    BeforeValidator(_scale_factor),
    WithJsonSchema(
        {
            "oneOf": [
                {"type": "number", "exclusiveMinimum": 0},
                {"type": "array", "items": {"type": "number", "exclusiveMinimum": 0}, "minItems": 2, "maxItems": 2},
            ]
        }
    ),
]


def resampled_field(rf: ReceptiveField, sizes, out_sizes, taps: int) -> ReceptiveField:
    """The receptive field after a resampling that reads ``taps`` neighbours per axis (1 for
    nearest, 2 for linear); neighbouring outputs are L / size input pixels apart, rounded to a
    whole jump of at least 1."""
    if rf.size is None:
        return rf
    size = tuple(r + (taps - 1) * j for r, j in zip(rf.size, rf.jump))
    jump = tuple(max(1, round(j * n / m)) for j, n, m in zip(rf.jump, sizes, out_sizes))
    return ReceptiveField(size, jump)


@register_stage("upsample")
class Upsample(Stage):
    """Resampling to ``size`` or by ``scale_factor`` (below 1 shrinks), = torch ``interpolate``
    with ``align_corners=False`` and its defaults, including its rules: the output size is
    ``floor(L * scale_factor)``; nearest copies input ``min(floor(o * s), L - 1)`` with ``s =
    1 / scale_factor`` (or ``L / size``) in float32, bilinear reads ``s * (o + 0.5) - 0.5``
    clamped at 0; an axis whose size does not change is copied, and nearest halves the index
    when the size exactly doubles. No antialiasing, as in torch's default.

    Examples
    --------
    >>> x = np.array([[1, 3], [5, 7]], np.float32)[None]
    >>> Upsample(type="upsample", scale_factor=2, mode="bilinear")(x)[0]
    array([[1. , 1.5, 2.5, 3. ],
           [2. , 2.5, 3.5, 4. ],
           [4. , 4.5, 5.5, 6. ],
           [5. , 5.5, 6.5, 7. ]], dtype=float32)
    >>> Upsample(type="upsample", size=[1, 3])(x)[0]
    array([[1., 1., 3.]], dtype=float32)
    """

    summary = "resampling by scale_factor or to size, nearest or bilinear = torch interpolate (align_corners false)"
    example: ClassVar[dict] = {"scale_factor": 2, "mode": "bilinear"}
    scale_factor: ScaleFactor | None = Field(
        None, description="output = floor(input * scale_factor): a number > 0 or [sh, sw]; or give size"
    )
    size: pair(1) | None = Field(None, description="output [h, w], or one int for both; or give scale_factor")
    mode: Literal["nearest", "bilinear"] = Field("nearest", description="nearest or bilinear interpolation")

    @model_validator(mode="after")
    def _scale_factor_or_size(self):
        if (self.scale_factor is None) == (self.size is None):
            given = "both" if self.size is not None else "neither"
            raise ValueError(f"give exactly one of scale_factor or size, got {given}")
        return self

    def out_hw(self, height: int, width: int) -> tuple[int, int]:
        """torch's output size: ``size``, or ``floor(L * scale_factor)`` in double precision;
        :class:`ShapeError` if that is empty."""
        if self.size is not None:
            return self.size
        out = tuple(math.floor(float(n) * s) for n, s in zip((height, width), self.scale_factor))
        if min(out) < 1:
            sh, sw = self.scale_factor
            raise ShapeError(
                f"scale_factor [{sh:g}, {sw:g}] turns a {height}x{width} map into {out[0]}x{out[1]}; "
                "give a larger scale_factor or a size"
            )
        return out

    def scales(self, height: int, width: int) -> tuple[np.float32, np.float32]:
        """torch's float32 source-index scales (ATen ``compute_scales_value``): ``1 / scale_factor``
        when one was given, else ``L / size``."""
        if self.scale_factor is not None:
            return tuple(np.float32(1.0 / s) for s in self.scale_factor)
        return tuple(np.float32(n) / np.float32(m) for n, m in zip((height, width), self.size))

    def output_shape(self, shape):
        channels, height, width = self.expect_map(shape)
        return (channels, *self.out_hw(height, width))

    def macs(self, shape):
        if self.mode == "nearest":
            return 0  # a copy
        return 6 * math.prod(self.output_shape(shape))  # two 2-tap rows, then one 2-tap column

    def receptive_field(self, rf, shape):
        return resampled_field(rf, shape[1:], self.out_hw(*shape[1:]), 1 if self.mode == "nearest" else 2)

    def __call__(self, x):
        x = np.ascontiguousarray(x, dtype=np.float32)
        kernel = kernels.upsample_nearest if self.mode == "nearest" else kernels.upsample_bilinear
        return kernel(x, self.out_hw(*x.shape[1:]), self.scales(*x.shape[1:]))


#: ONNX Resize's coordinate_transformation_mode values poolcli computes (not tf_crop_and_resize).
CoordinateMode = Literal["half_pixel", "asymmetric", "align_corners", "pytorch_half_pixel", "half_pixel_symmetric",
                         "tf_half_pixel_for_nn"]
NearestMode = Literal["round_prefer_floor", "round_prefer_ceil", "floor", "ceil"]


def resize_coordinates(out_size: int, in_size: int, scale: np.float32, mode: str) -> np.ndarray:
    """float32 (out_size,): the input coordinate of each output index along one axis, in ONNX
    Resize's ``coordinate_transformation_mode`` and in float32 with onnxruntime's order of
    operations (so that ties round as it rounds them). ``scale`` is the axis's scale: given, or
    the output size over the input size.

    >>> resize_coordinates(4, 2, np.float32(2), "half_pixel")
    array([-0.25,  0.25,  0.75,  1.25], dtype=float32)
    >>> resize_coordinates(3, 2, np.float32(1.5), "align_corners")
    array([0. , 0.5, 1. ], dtype=float32)
    """
    i = np.arange(out_size, dtype=np.float32)
    half = np.float32(0.5)
    if scale == 1:  # onnxruntime copies such an axis (tf_half_pixel_for_nn would shift it half a pixel)
        return i
    if mode == "asymmetric":
        return i / scale
    if mode == "align_corners":
        if out_size == 1:
            return np.zeros(1, np.float32)
        return i * np.float32(in_size - 1) / np.float32(out_size - 1)
    if mode == "pytorch_half_pixel":
        return (i + half) / scale - half if out_size > 1 else np.zeros(1, np.float32)
    if mode == "tf_half_pixel_for_nn":
        return (i + half) / scale
    if mode == "half_pixel_symmetric":  # the offset in float32, the rest in float64, as onnxruntime
        adjustment = np.float32(out_size) / (scale * np.float32(in_size))
        offset = np.float32(in_size) / np.float32(2) * (np.float32(1) - adjustment)
        return (np.float64(offset) + (i + 0.5) / np.float64(scale) - 0.5).astype(np.float32)
    return (i + half) / scale - half  # half_pixel


def nearest_indices(coordinates: np.ndarray, in_size: int, mode: str) -> np.ndarray:
    """int64: the input index each coordinate reads in ONNX's ``nearest_mode``, clamped to the map.

    >>> nearest_indices(np.array([-0.5, 0.5, 1.5, 2.7], np.float32), 3, "round_prefer_floor")
    array([0, 0, 1, 2])
    """
    c = coordinates.astype(np.float64)  # exact: every float32 is a float64
    if mode == "floor":
        index = np.floor(c)
    elif mode == "ceil":
        index = np.ceil(c)
    elif mode == "round_prefer_ceil":
        index = np.floor(c + 0.5)
    else:  # round_prefer_floor: halves go down
        index = np.ceil(c - 0.5)
    return np.clip(index, 0, in_size - 1).astype(np.int64)


def linear_taps(coordinates: np.ndarray, in_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(first, second, weight of first, weight of second): the two input indices and float32
    weights of linear interpolation at each coordinate, clamped to the map as onnxruntime does
    (an index past the edge reads the edge)."""
    c = np.clip(coordinates, np.float32(0), np.float32(in_size - 1))
    first = np.minimum(c.astype(np.int64), in_size - 1)
    second = np.minimum(first + 1, in_size - 1)
    w_second = (c - first.astype(np.float32)).astype(np.float32)
    w_first = (np.float32(1) - w_second).astype(np.float32)
    return first, second, w_first, w_second


@register_stage("resize")
class Resize(Stage):
    """Resampling as ONNX Resize computes it (opsets 11 to 21, 2-D spatial resizes), the oracle
    being onnxruntime: to ``size: [H, W]``, or by ``scale_factor: [sh, sw]`` to ``floor(H * sh)``
    by ``floor(W * sw)`` (scales in float32, as ONNX holds them). Each output index ``i`` maps to
    the input coordinate ``coordinate_mode`` gives, with the axis's scale ``s`` (given, or output
    over input size):

    ======================== ===========================================================
    ``half_pixel``           ``(i + 0.5) / s - 0.5`` (the default)
    ``pytorch_half_pixel``   the same, but 0 where the output has length 1
    ``align_corners``        ``i * (L_in - 1) / (L_out - 1)`` (0 for an output of 1)
    ``asymmetric``           ``i / s``
    ``tf_half_pixel_for_nn`` ``(i + 0.5) / s``
    ``half_pixel_symmetric`` ``half_pixel`` about the centre of the span the scale covers
    ======================== ===========================================================

    ``mode: nearest`` reads the input pixel that ``nearest_mode`` rounds the coordinate to
    (``round_prefer_floor``, the default: halves go down; ``round_prefer_ceil``; ``floor``;
    ``ceil``), clamped to the map; ``mode: linear`` interpolates between the two neighbours along
    each axis (coordinates clamped to the map). Coordinates are float32, as in onnxruntime, and
    an axis whose scale is 1 is copied, as onnxruntime does. torch's ``interpolate`` is the
    ``upsample`` stage.

    Examples
    --------
    >>> x = np.array([[1, 2], [3, 4]], np.float32)[None]
    >>> Resize(type="resize", scale_factor=2, coordinate_mode="asymmetric", nearest_mode="floor")(x)[0]
    array([[1., 1., 2., 2.],
           [1., 1., 2., 2.],
           [3., 3., 4., 4.],
           [3., 3., 4., 4.]], dtype=float32)
    """

    summary = "ONNX Resize: nearest or linear, to a size or by scales, every coordinate and rounding mode"
    example: ClassVar[dict] = {"scale_factor": 1.5, "mode": "linear"}

    mode: Literal["nearest", "linear"] = Field("nearest", description="nearest or linear (bilinear on a map)")
    scale_factor: ScaleFactor | None = Field(None, description="number or [sh, sw]: output floor(H * sh) by floor(W * sw)")
    size: pair(1) | None = Field(None, description="output [H, W] (or one int for both); instead of scale_factor")
    coordinate_mode: CoordinateMode = Field("half_pixel", description="ONNX's coordinate_transformation_mode")
    nearest_mode: NearestMode = Field("round_prefer_floor", description="mode nearest: how a coordinate rounds")

    @model_validator(mode="after")
    def _size_or_scale(self):
        if (self.size is None) == (self.scale_factor is None):
            raise ValueError("give exactly one of size or scale_factor")
        return self

    def _scales(self, height: int, width: int) -> tuple[np.float32, np.float32]:
        if self.scale_factor is not None:
            return tuple(np.float32(s) for s in self.scale_factor)
        return tuple(np.float32(o) / np.float32(n) for o, n in zip(self.size, (height, width)))

    def output_shape(self, shape):
        channels, height, width = self.expect_map(shape)
        if self.size is not None:
            return (channels, *self.size)
        out = tuple(int(s * np.float32(n)) for s, n in zip(self._scales(height, width), (height, width)))
        if min(out) < 1:
            raise ShapeError(f"scale_factor {list(self.scale_factor)} gives an empty output for a {height}x{width} map")
        return (channels, *out)

    def receptive_field(self, rf, shape):
        return resampled_field(rf, shape[1:], self.output_shape(shape)[1:], 1 if self.mode == "nearest" else 2)

    def macs(self, shape):
        return math.prod(self.output_shape(shape)) * (4 if self.mode == "linear" else 1)

    def __call__(self, x):
        _, height, width = x.shape
        _, out_h, out_w = self.output_shape(x.shape)
        sy, sx = self._scales(height, width)
        rows = resize_coordinates(out_h, height, sy, self.coordinate_mode)
        cols = resize_coordinates(out_w, width, sx, self.coordinate_mode)
        if self.mode == "nearest":
            iy = nearest_indices(rows, height, self.nearest_mode)
            ix = nearest_indices(cols, width, self.nearest_mode)
            return np.ascontiguousarray(x[:, iy][:, :, ix])
        y0, y1, wy0, wy1 = linear_taps(rows, height)
        x0, x1, wx0, wx1 = linear_taps(cols, width)
        along_w = x[:, :, x0] * wx0 + x[:, :, x1] * wx1
        return along_w[:, y0] * wy0[:, None] + along_w[:, y1] * wy1[:, None]
