"""Detection-style pooling: CenterNet center pooling, CornerNet corner pooling.

Both are parameter-free. Center pooling either samples each window's centre or adds the
maxima of the row and the column through each pixel; corner pooling adds two directional
running maxima. The kernels live in :mod:`poolcli.kernels.detection` and are imported only
when a stage runs.
"""

from __future__ import annotations

import math
from typing import ClassVar, Literal

import numpy as np
from pydantic import Field, model_validator

from poolcli.config import pair
from poolcli.stages.base import GLOBAL, Stage, kernel_module, register_stage
from poolcli.stages.geometry import Window

kernels = kernel_module("detection")


def _contiguous(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x, dtype=np.float32)


@register_stage("center_pool")
class CenterPool(Stage):
    """Center pooling. ``mode: window`` keeps the value at each window's centre, ``(k - 1) // 2``
    after the window's start along each axis (floor-mode windows, no padding): a strided
    subsampling that stays aligned with the windows of a pooling stage of the same size.
    ``mode: cross`` is CenterNet's center pooling: ``max(x[i, :]) + max(x[:, j])``, the maxima
    of the row and of the column through each pixel (same shape as the input); NaN propagates.

    Examples
    --------
    >>> x = np.array([[1, 3, 2, 4], [5, 6, 1, 2], [0, 1, 3, 1], [2, 4, 5, 2]], np.float32)[None]
    >>> CenterPool(type="center_pool", kernel_size=3, stride=1)(x)
    array([[[6., 1.],
            [1., 3.]]], dtype=float32)
    >>> CenterPool(type="center_pool", mode="cross")(x)[0, 0]
    array([ 9., 10.,  9.,  8.], dtype=float32)
    """

    summary = "window: the value at each window's centre (kernel_size, stride); cross: row max + column max (CenterNet)"
    example: ClassVar[dict] = {"mode": "cross"}
    mode: Literal["window", "cross"] = Field(
        "window", description="window: each window's centre value; cross: max of the row + max of the column"
    )
    kernel_size: pair(1) | None = Field(None, description="mode window: window size, an int or [kh, kw]")
    stride: pair(1) | None = Field(
        None, description="mode window: step between windows, an int or [sh, sw]; default kernel_size"
    )

    @model_validator(mode="after")
    def _window_parameters_match_the_mode(self):
        if self.mode == "window" and self.kernel_size is None:
            raise ValueError("mode window needs kernel_size (an int or [kh, kw]), or use mode: cross")
        if self.mode == "cross" and (self.kernel_size is not None or self.stride is not None):
            raise ValueError("kernel_size and stride belong to mode window; mode cross pools whole rows and columns")
        return self

    @property
    def window(self) -> Window:
        return Window.of(self.kernel_size, self.stride)

    def output_shape(self, shape):
        channels, height, width = self.expect_map(shape)
        if self.mode == "cross":
            return (channels, height, width)
        return (channels, *self.window.output_hw(height, width))

    def macs(self, shape):
        if self.mode == "window":
            return 0  # a copy
        return 3 * math.prod(self.expect_map(shape))  # row maxima, column maxima, one add

    def receptive_field(self, rf, shape):
        if self.mode == "cross":
            return GLOBAL  # the row and the column through a pixel span the whole map
        return rf.through((1, 1), self.window.stride)

    def __call__(self, x):
        x = _contiguous(x)
        if self.mode == "cross":
            return kernels.center_cross(x)
        w = self.window
        return kernels.center_window(x, w.kernel, w.stride, w.output_hw(*x.shape[1:]))


Corner = Literal["top_left", "bottom_right", "top_right", "bottom_left"]


@register_stage("corner_pool")
class CornerPool(Stage):
    """Corner pooling (CornerNet, Law & Deng 2018), parameter-free. ``top_left`` is
    ``max(x[i:, j]) + max(x[i, j:])``: CornerNet's TopPool (every row from ``i`` down) plus its
    LeftPool (every column from ``j`` rightwards), since an object's top-left corner sees the
    object below it and to its right. ``bottom_right`` mirrors it (``max(x[:i+1, j]) +
    max(x[i, :j+1])``), ``top_right`` is TopPool + RightPool (``max(x[i, :j+1])``) and
    ``bottom_left`` BottomPool + LeftPool. With ``cascade`` (CenterNet's cascade corner pooling,
    parameter-free), ``top_left`` is ``Top(x + Left(x)) + Left(x + Top(x))`` and the other
    corners mirror it.

    Maxima follow ``torch.max``: a NaN propagates to every position whose row or column run
    reaches it (as through torch ``cummax``); ``inf + -inf`` gives NaN.

    Examples
    --------
    >>> x = np.array([[1, 3, 2, 4], [5, 6, 1, 2], [0, 1, 3, 1], [2, 4, 5, 2]], np.float32)[None]
    >>> CornerPool(type="corner_pool", corner="top_left")(x)
    array([[[ 9., 10.,  9.,  8.],
            [11., 12.,  7.,  4.],
            [ 5.,  7.,  8.,  3.],
            [ 7.,  9., 10.,  4.]]], dtype=float32)
    """

    summary = "CornerNet corner pooling: directional running maxima down/up plus right/left, added (corner, cascade)"
    example: ClassVar[dict] = {"corner": "top_left"}
    corner: Corner = Field(
        "top_left",
        description="top_left: max over the rows below + the columns to the right; the others mirror it",
    )
    cascade: bool = Field(
        False, strict=True, description="CenterNet's cascade: top_left = Top(x + Left(x)) + Left(x + Top(x))"
    )

    def output_shape(self, shape):
        return tuple(self.expect_map(shape))

    def macs(self, shape):
        size = math.prod(self.expect_map(shape))
        # two scans and an add; cascaded: four scans, three adds
        return (7 if self.cascade else 3) * size

    def receptive_field(self, rf, shape):
        return GLOBAL  # the top-left output of top_left sees the whole map, and so on

    def __call__(self, x):
        vertical, horizontal = self.corner.split("_")
        # TopPool looks down from each row, LeftPool right from each column.
        return kernels.corner_pool(_contiguous(x), vertical == "top", horizontal == "left", self.cascade)
