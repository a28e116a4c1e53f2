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
        # Each output reads 1 (nearest) or 2 (bilinear) neighbours per axis; neighbouring
        # outputs are L / size input pixels apart, rounded to a whole jump of at least 1.
        if rf.size is None:
            return rf
        sizes = shape[1:]
        taps = 1 if self.mode == "nearest" else 2
        size = tuple(r + (taps - 1) * j for r, j in zip(rf.size, rf.jump))
        jump = tuple(max(1, round(j * n / m)) for j, n, m in zip(rf.jump, sizes, self.out_hw(*sizes)))
        return ReceptiveField(size, jump)

    def __call__(self, x):
        x = np.ascontiguousarray(x, dtype=np.float32)
        kernel = kernels.upsample_nearest if self.mode == "nearest" else kernels.upsample_bilinear
        return kernel(x, self.out_hw(*x.shape[1:]), self.scales(*x.shape[1:]))
