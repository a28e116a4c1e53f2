"""R-MAC regional maximum activations (Tolias et al. 2016), with the region grid of
cnnimageretrieval-pytorch (Radenovic et al.), so that descriptors match that code's ``rmac``.

The grid is pure arithmetic on (H, W) and lives here; the kernel in :mod:`poolcli.kernels.rmac`
takes the regions as an array.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import ClassVar

import numpy as np
from pydantic import Field

from poolcli.config import PositiveInt
from poolcli.stages.base import GLOBAL, Stage, kernel_module, register_stage

kernels = kernel_module("rmac")

_OVERLAP = np.float32(0.4)  # the overlap wanted between neighbouring regions
_STEPS = np.arange(2, 8, dtype=np.float32)  # candidate numbers of regions along the long side


def _extra_regions(height: int, width: int) -> tuple[int, int]:
    """(Hd, Wd): regions added along the long side at every level, in float32 as cirtorch's
    torch code computes them (``int / tensor`` is ``tensor.reciprocal() * int`` in torch)."""
    if height == width:
        return 0, 0
    w = min(height, width)
    b = (np.float32(1) / (_STEPS - np.float32(1))) * np.float32(max(height, width) - w)
    overlap = (np.float32(w * w) - b * np.float32(w)) / np.float32(w * w)
    extra = int(np.argmin(np.abs(overlap - _OVERLAP))) + 1  # argmin takes the first of ties, as torch.min
    return (extra, 0) if height > width else (0, extra)


def _centres(size: int, wl: int, wl2: int, count: int) -> list[int]:
    """``count`` region starts along an axis of ``size``: ``floor(wl2 + i * b) - wl2`` with
    ``b = (size - wl) / (count - 1)``, in float32 like cirtorch."""
    b = 0.0 if count == 1 else (size - wl) / (count - 1)
    steps = np.arange(count, dtype=np.float32) * np.float32(b) + np.float32(wl2)
    return [int(v) - wl2 for v in np.floor(steps)]


@lru_cache(maxsize=256)
def rmac_regions(height: int, width: int, levels: int) -> tuple[tuple[int, int, int, int], ...]:
    """The R-MAC regions of an ``height x width`` map as ``(top, left, height, width)``, the
    whole map first, then level by level, row-major within a level (cirtorch's order).

    Examples
    --------
    >>> rmac_regions(4, 4, 2)
    ((0, 0, 4, 4), (0, 0, 4, 4), (0, 0, 2, 2), (0, 2, 2, 2), (2, 0, 2, 2), (2, 2, 2, 2))
    >>> len(rmac_regions(30, 40, 3))  # Wd = 1: levels of 1x2, 2x3 and 3x4 regions
    21
    """
    w = min(height, width)
    extra_h, extra_w = _extra_regions(height, width)
    regions = [(0, 0, height, width)]
    for level in range(1, levels + 1):
        wl = math.floor(2 * w / (level + 1))
        if wl == 0:  # a map too small for this level's regions, and for every later level's
            break
        wl2 = math.floor(wl / 2 - 1)
        for top in _centres(height, wl, wl2, level + extra_h):
            for left in _centres(width, wl, wl2, level + extra_w):
                regions.append((top, left, wl, wl))
    return tuple(regions)


@register_stage("rmac")
class RMAC(Stage):
    """Regional maximum activations of convolutions, R-MAC (Tolias et al. 2016), with the
    region grid of cnnimageretrieval-pytorch: ``sum over regions R of m_R / (||m_R|| + eps)``,
    where ``m_R`` is the (C,) max of region ``R`` per channel and the whole map is the first
    region.

    The grid, for a map of ``H x W`` with short side ``w = min(H, W)``: level ``l = 1 ..
    levels`` has square regions of side ``wl = floor(2w / (l + 1))`` (none when 0); along the
    short side ``l`` regions, along the long side ``l + d``, where ``d`` (0 for a square map)
    is the ``s - 1`` among ``s = 2..7`` that brings the overlap ``(w^2 - w*b) / w^2``, with
    ``b = (max(H, W) - w) / (s - 1)``, closest to 0.4. The ``n`` regions along an axis of
    length ``L`` start at ``floor(wl2 + i * (L - wl) / (n - 1)) - wl2``, ``wl2 = floor(wl/2 -
    1)``, evenly from the start to the end of the axis (all at 0 when ``n = 1``).

    Examples
    --------
    >>> x = np.zeros((2, 4, 4), np.float32)
    >>> x[0, 0, 0], x[1, 3, 3] = 3, 4  # one bright corner per channel
    >>> RMAC(type="rmac", levels=2)(x).round(4)  # (3, 4)/5 twice, then 2x2 regions: (1, 0), (0, 1)
    array([2.2, 2.6], dtype=float32)
    """

    summary = "R-MAC: sum of L2-normalised region maxima on cirtorch's grid (levels, eps): (C,H,W) -> (C,)"
    makes_vector = True
    example: ClassVar[dict] = {"levels": 3}
    levels: PositiveInt = Field(3, le=32, description="region scales: level l has regions of side floor(2*min(H, W)/(l+1))")
    eps: float = Field(1e-6, gt=0, allow_inf_nan=False, description="added to each region's L2 norm before dividing")

    def output_shape(self, shape):
        return (self.expect_map(shape)[0],)

    def macs(self, shape):
        channels, height, width = self.expect_map(shape)
        regions = rmac_regions(height, width, self.levels)
        area = sum(h * w for _, _, h, w in regions)
        return channels * area + 3 * channels * len(regions)  # the maxima, then a square, a divide and an add each

    def receptive_field(self, rf, shape):
        return GLOBAL

    def __call__(self, x):
        x = np.ascontiguousarray(x, dtype=np.float32)
        regions = np.array(rmac_regions(x.shape[1], x.shape[2], self.levels), np.int64)
        return kernels.rmac(x, regions, np.float64(self.eps))
