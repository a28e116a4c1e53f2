"""Fractional max pooling (Graham 2014)."""

from __future__ import annotations

import math
from typing import Annotated, Any, ClassVar

import numpy as np
from pydantic import BeforeValidator, Field, WithJsonSchema, model_validator

from poolcli.config import pair
from poolcli.errors import ShapeError
from poolcli.stages.base import Stage, kernel_module, register_stage

kernels = kernel_module("fractional")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _two_numbers(value: Any) -> bool:
    return isinstance(value, (list, tuple)) and len(value) == 2 and all(map(_is_number, value))


def _ratio(value: Any) -> tuple[float, float]:
    if _is_number(value):
        value = (value, value)
    if not _two_numbers(value) or not all(0 < r < 1 for r in value):
        raise ValueError(f"must be a number in (0, 1) or a pair [rh, rw] of them, got {value!r}")
    return float(value[0]), float(value[1])


def _samples(value: Any) -> tuple[float, float]:
    # The kernel takes float32 samples, as torch does for a float32 map: check them as such
    # (0.99999999 is 1.0 in float32).
    if not _two_numbers(value) or not all(0 <= np.float32(u) < 1 for u in value):
        raise ValueError(f"must be a pair [u_h, u_w] of numbers in [0, 1) (as float32), got {value!r}")
    return float(value[0]), float(value[1])


Ratio = Annotated[
    tuple[float, float],
    BeforeValidator(_ratio),
    WithJsonSchema(
        {
            "oneOf": [
                {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1},
                {
                    "type": "array",
                    "items": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1},
                    "minItems": 2,
                    "maxItems": 2,
                },
            ]
        }
    ),
]
Samples = Annotated[
    tuple[float, float],
    BeforeValidator(_samples),
    WithJsonSchema(
        {"type": "array", "items": {"type": "number", "minimum": 0, "exclusiveMaximum": 1}, "minItems": 2, "maxItems": 2}
    ),
]


@register_stage("fractional_max_pool")
class FractionalMaxPool(Stage):
    """Fractional max pooling (Graham 2014), = torch ``fractional_max_pool2d`` given the same
    samples: ``kernel_size`` windows whose starts advance by a pseudo-random mix of
    ``floor(alpha)`` and ``ceil(alpha)``, ``alpha = (size - k) / (out - 1)``, so that the output
    has exactly ``output_size`` (or ``int(size * output_ratio)``) rows and columns. The starts
    along each axis follow from one sample ``u`` in [0, 1): window ``i`` starts at
    ``int((i + u) * alpha) - int(u * alpha)`` (float32 arithmetic, as torch), the last one at
    ``size - k``. ``samples: [u_h, u_w]`` gives every channel the same pair; otherwise each
    channel draws its own ``(u_h, u_w)`` from ``numpy.random.default_rng(seed)``. The map needs
    ``out + k - 1`` rows and columns at least (torch's rule). NaN propagates.

    Examples
    --------
    >>> x = np.array([[1, 3, 2, 4], [5, 6, 1, 2], [0, 1, 3, 1], [2, 4, 5, 2]], np.float32)[None]
    >>> pool = FractionalMaxPool(type="fractional_max_pool", kernel_size=1, output_size=3, samples=[0.2, 0.5])
    >>> pool(x)  # alpha = 1.5: rows 0, 1, 3 (u_h = 0.2) and columns 0, 2, 3 (u_w = 0.5)
    array([[[1., 2., 4.],
            [5., 1., 2.],
            [2., 5., 2.]]], dtype=float32)
    """

    summary = (
        "max over kernel_size windows at pseudo-random fractional steps to output_size or output_ratio "
        "(seed or samples) = torch fractional_max_pool2d"
    )
    example: ClassVar[dict] = {"kernel_size": 2, "output_ratio": 0.75, "seed": 0}
    kernel_size: pair(1) = Field(description="window size: an int or [kh, kw]")
    output_size: pair(1) | None = Field(None, description="output [h, w] or one int for both; or give output_ratio")
    output_ratio: Ratio | None = Field(
        None, description="output size as a fraction of the input's, in (0, 1): int(size * ratio); or give output_size"
    )
    seed: int = Field(
        0, ge=0, strict=True, description="each channel draws its (u_h, u_w) from numpy.random.default_rng(seed)"
    )
    samples: Samples | None = Field(
        None, description="[u_h, u_w] in [0, 1) for every channel, instead of drawing them with seed"
    )

    @model_validator(mode="after")
    def _one_size_one_source(self):
        given = [k for k in ("output_size", "output_ratio") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of output_size or output_ratio, got {' and '.join(given) or 'neither'}")
        if self.samples is not None and "seed" in self.model_fields_set:
            raise ValueError("give seed or samples, not both (samples fix the windows, seed draws them)")
        return self

    def out_hw(self, height: int, width: int) -> tuple[int, int]:
        """The output (H', W'), with torch's ``int(size * ratio)`` for ``output_ratio``;
        :class:`ShapeError` where the windows do not fit."""
        if self.output_size is not None:
            sizes = self.output_size
        else:
            sizes = (int(height * self.output_ratio[0]), int(width * self.output_ratio[1]))
        kh, kw = self.kernel_size
        if min(sizes) < 1:
            raise ShapeError(
                f"output_ratio {list(self.output_ratio)} of a {height}x{width} map gives {sizes[0]}x{sizes[1]}: "
                "no output"
            )
        if sizes[0] + kh - 1 > height or sizes[1] + kw - 1 > width:
            raise ShapeError(
                f"{sizes[0]}x{sizes[1]} windows of {kh}x{kw} need a map of at least "
                f"{sizes[0] + kh - 1}x{sizes[1] + kw - 1}, got {height}x{width}"
            )
        return sizes

    def output_shape(self, shape):
        channels, height, width = self.expect_map(shape)
        return (channels, *self.out_hw(height, width))

    def macs(self, shape):
        return math.prod(self.output_shape(shape)) * math.prod(self.kernel_size)

    def receptive_field(self, rf, shape):
        # Windows advance by floor(alpha) or ceil(alpha): report the larger step.
        sizes, outs = shape[1:], self.output_shape(shape)[1:]
        steps = tuple(max(1, -(-(n - k) // (m - 1))) if m > 1 else 1 for n, k, m in zip(sizes, self.kernel_size, outs))
        return rf.through(self.kernel_size, steps)

    def channel_samples(self, channels: int) -> np.ndarray:
        """The float32 (C, 2) array of ``(u_h, u_w)`` per channel that :meth:`__call__` uses."""
        if self.samples is not None:
            return np.tile(np.array(self.samples, np.float32), (channels, 1))
        return np.random.default_rng(self.seed).random((channels, 2), dtype=np.float32)

    def __call__(self, x):
        x = np.ascontiguousarray(x, dtype=np.float32)
        out_hw = self.out_hw(*x.shape[1:])
        return kernels.fractional_max_pool(x, self.channel_samples(x.shape[0]), self.kernel_size, out_hw)
