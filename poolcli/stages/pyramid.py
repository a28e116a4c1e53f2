"""Adaptive feature pooling across stages (PANet): several maps, of any sizes, adaptively
pooled to one grid and fused element-wise. The pooling is the adaptive pooling stages' own
(:mod:`poolcli.stages.pool`), so its bins, costs and receptive field are theirs.
"""

from __future__ import annotations

import math
from typing import ClassVar, Literal

import numpy as np
from pydantic import Field

from poolcli.config import pair
from poolcli.errors import ShapeError
from poolcli.stages.base import Stage, register_stage
from poolcli.stages.pool import AdaptiveAvgPool, AdaptiveMaxPool, AdaptivePool


@register_stage("pyramid_fuse")
class PyramidFuse(Stage):
    """Adaptive feature pooling (PANet, Liu et al. 2018), parameter-free: each map listed in
    ``from`` is adaptively max- or average-pooled to ``output_size`` (torch's bins, as
    ``adaptive_max_pool`` and ``adaptive_avg_pool``), then the pooled maps are fused
    element-wise by their maximum (NaN propagates), sum or mean. The maps may differ in size
    but must have the same number of channels.

    Examples
    --------
    >>> x = np.array([[1, 3, 2, 4], [5, 6, 1, 2], [0, 1, 3, 1], [2, 4, 5, 2]], np.float32)[None]
    >>> fuse = PyramidFuse(type="pyramid_fuse", output_size=1, pool="max", fuse="sum", **{"from": ["a", "b"]})
    >>> fuse(x, x[:, :2, :2])
    array([[[12.]]], dtype=float32)
    """

    summary = "PANet adaptive feature pooling: the maps in `from` adaptively pooled to output_size, fused max/sum/mean"
    inputs = "many"
    example: ClassVar[dict] = {"from": ["input", "input"], "output_size": 2, "pool": "max", "fuse": "sum"}
    output_size: pair(1) = Field(description="the common grid [h, w], or one int for both")
    pool: Literal["max", "avg"] = Field("max", description="adaptive max or average pooling of each map")
    fuse: Literal["max", "sum", "mean"] = Field(
        "max", description="element-wise maximum, sum or mean of the pooled maps"
    )

    @property
    def pooler(self) -> AdaptivePool:
        """The adaptive pooling stage applied to each input."""
        cls = AdaptiveMaxPool if self.pool == "max" else AdaptiveAvgPool
        return cls(type=cls.type_names[0], output_size=self.output_size)

    def output_shape(self, *shapes):
        pooled = {self.pooler.output_shape(self.expect_map(shape)) for shape in shapes}
        if len(pooled) != 1:
            listed = ", ".join(str(tuple(shape)) for shape in shapes)
            raise ShapeError(f"pyramid_fuse needs maps with the same number of channels, got {listed}")
        return pooled.pop()

    def macs(self, *shapes):
        fused = math.prod(self.output_shape(*shapes))
        extra = fused if self.fuse == "mean" else 0  # the division
        return sum(self.pooler.macs(shape) for shape in shapes) + (len(shapes) - 1) * fused + extra

    def receptive_field(self, rf, *shapes):
        return self.pooler.receptive_field(rf, shapes[0])  # the first input's field

    def __call__(self, *xs):
        pooler = self.pooler
        pooled = np.stack([pooler(x) for x in xs])
        if self.fuse == "max":
            return np.maximum.reduce(pooled)  # np.maximum propagates NaN, as torch.max does
        with np.errstate(invalid="ignore"):  # inf + -inf is NaN, silently, as in torch
            total = pooled.sum(axis=0, dtype=np.float64)
        return (total if self.fuse == "sum" else total / len(xs)).astype(np.float32)
