"""Map -> vector pooling: global average (SPoC), global max (MAC), GeM, flatten."""

from __future__ import annotations

import math

import numpy as np
from pydantic import Field

from poolcli.stages.base import GLOBAL, Stage, kernel_module, register_stage

kernels = kernel_module("global_pool")


class GlobalStage(Stage):
    """A map -> (C,) reduction over the whole map."""

    makes_vector = True

    def output_shape(self, shape):
        return (self.expect_map(shape)[0],)

    def macs(self, shape):
        return math.prod(shape)

    def receptive_field(self, rf, shape):
        return GLOBAL


@register_stage("global_avg_pool", "spoc")
class GlobalAvgPool(GlobalStage):
    """Mean per channel (SPoC, Babenko & Lempitsky 2015).

    Examples
    --------
    >>> GlobalAvgPool(type="global_avg_pool")(np.arange(8, dtype=np.float32).reshape(2, 2, 2))
    array([1.5, 5.5], dtype=float32)
    """

    summary = "mean per channel (alias spoc): (C,H,W) -> (C,)"

    def __call__(self, x):
        return kernels.global_avg_pool(x)


@register_stage("global_max_pool", "mac")
class GlobalMaxPool(GlobalStage):
    """Max per channel (MAC, Tolias et al. 2016); NaN propagates.

    Examples
    --------
    >>> GlobalMaxPool(type="mac")(np.arange(8, dtype=np.float32).reshape(2, 2, 2))
    array([3., 7.], dtype=float32)
    """

    summary = "max per channel (alias mac): (C,H,W) -> (C,)"

    def __call__(self, x):
        return kernels.global_max_pool(x)


@register_stage("gem")
class GeMPool(GlobalStage):
    """Generalized-mean pooling per channel: ``mean(clamp(x, eps) ** p) ** (1 / p)``
    (Radenovic et al. 2018). p = 1 is average pooling, large p tends to max pooling.

    Examples
    --------
    >>> GeMPool(type="gem", p=1.0)(np.ones((2, 3, 3), np.float32))
    array([1., 1.], dtype=float32)
    """

    summary = "generalized mean per channel, mean(clamp(x, eps)^p)^(1/p): (C,H,W) -> (C,)"
    p: float = Field(3.0, gt=0, allow_inf_nan=False, description="the power; 1 = average, large = max")
    eps: float = Field(1e-6, gt=0, description="values are clamped to at least eps before the power")

    def macs(self, shape):
        return 2 * math.prod(shape)

    def __call__(self, x):
        return kernels.gem(x, np.float64(self.p), np.float32(self.eps))


@register_stage("flatten")
class Flatten(Stage):
    """The whole (C, H, W) map as one vector of length C*H*W, channel-major.

    Examples
    --------
    >>> Flatten(type="flatten")(np.arange(4, dtype=np.float32).reshape(1, 2, 2))
    array([0., 1., 2., 3.], dtype=float32)
    """

    summary = "the map as one vector of length C*H*W (fixed-size maps only)"
    makes_vector = True

    def output_shape(self, shape):
        return (math.prod(self.expect_map(shape)),)

    def macs(self, shape):
        return 0

    def receptive_field(self, rf, shape):
        return GLOBAL

    def __call__(self, x):
        return np.ascontiguousarray(x).reshape(-1).copy()
