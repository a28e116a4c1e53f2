"""Strip pooling (Hou et al. 2020), parameter-free: each row and each column reduced to one
value, broadcast back over the map and added, or used to gate the input. The kernel lives in
:mod:`poolcli.kernels.strip` and is imported only when the stage runs.
"""

from __future__ import annotations

import math
from typing import ClassVar, Literal

import numpy as np
from pydantic import Field

from poolcli.stages.base import GLOBAL, Stage, kernel_module, register_stage

kernels = kernel_module("strip")


@register_stage("strip_pool")
class StripPool(Stage):
    """Strip pooling (Hou et al. 2020) without its learned convolutions: ``r`` = the mean (or
    maximum) of each row, (C, H, 1), ``q`` = that of each column, (C, 1, W); ``fuse: add``
    gives ``r + q`` broadcast to (C, H, W), ``fuse: gate`` gives ``x * sigmoid(r + q)`` (a
    stable sigmoid). Maxima propagate NaN; with ``reduce: max, fuse: add`` this is
    ``center_pool`` in mode cross.

    Examples
    --------
    >>> x = np.array([[1, 3, 2, 4], [5, 6, 1, 2], [0, 1, 3, 1], [2, 4, 5, 2]], np.float32)[None]
    >>> StripPool(type="strip_pool", reduce="avg", fuse="add")(x)[0, :2]
    array([[4.5 , 6.  , 5.25, 4.75],
           [5.5 , 7.  , 6.25, 5.75]], dtype=float32)
    """

    summary = "strip pooling: row mean/max + column mean/max broadcast, added or gating x (reduce, fuse)"
    example: ClassVar[dict] = {"reduce": "avg", "fuse": "add"}
    reduce: Literal["avg", "max"] = Field("avg", description="how each row and column is reduced: mean or maximum")
    fuse: Literal["add", "gate"] = Field("add", description="add: r + q; gate: x * sigmoid(r + q)")

    def output_shape(self, shape):
        return tuple(self.expect_map(shape))

    def macs(self, shape):
        size = math.prod(self.expect_map(shape))
        # row and column reductions, the add; gating adds a sigmoid and a product
        return (5 if self.fuse == "gate" else 3) * size

    def receptive_field(self, rf, shape):
        return GLOBAL  # the row and the column through a pixel span the whole map

    def __call__(self, x):
        return kernels.strip_pool(np.ascontiguousarray(x, dtype=np.float32), self.reduce == "max", self.fuse == "gate")
