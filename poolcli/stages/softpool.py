"""SoftPool (Stergiou et al. 2021)."""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from poolcli.stages.base import kernel_module, register_stage
from poolcli.stages.pool import WindowPool

kernels = kernel_module("softpool")


@register_stage("soft_pool")
class SoftPool(WindowPool):
    """SoftPool (Stergiou et al. 2021) over floor-mode windows: ``sum softmax(a) * a`` per
    window and channel, the softmax-weighted mean, between the window's mean and its maximum.

    Computed stably in float64 as ``sum e^(a - m) a / sum e^(a - m)`` with ``m`` the window's
    maximum, so huge values do not overflow. Infinities follow the limits of the formula: a
    NaN in the window gives NaN; otherwise a +inf takes all the weight and gives +inf; a -inf
    gets weight 0; a window of -inf only gives -inf.

    Examples
    --------
    >>> x = np.array([[1, 3, 2, 4], [5, 6, 1, 2], [0, 1, 3, 1], [2, 4, 5, 2]], np.float32)[None]
    >>> SoftPool(type="soft_pool", kernel_size=2)(x)
    array([[[5.6132207, 3.476922 ],
            [3.5900958, 4.590096 ]]], dtype=float32)
    >>> SoftPool(type="soft_pool", kernel_size=[1, 2])(np.array([[[3e38, 3e38, 7, -np.inf]]], np.float32))
    array([[[3.e+38, 7.e+00]]], dtype=float32)
    """

    summary = "SoftPool: softmax-weighted mean sum(softmax(a) * a) over sliding windows (kernel_size, stride)"
    example: ClassVar[dict] = {"kernel_size": 2}
    ceil_mode: ClassVar[bool] = False  # floor-mode windows only

    def macs(self, shape):
        return 2 * super().macs(shape)  # a maximum pass, then an exponential and two sums per tap

    def __call__(self, x):
        x = np.ascontiguousarray(x, dtype=np.float32)
        w = self.window
        return kernels.soft_pool(x, w.kernel, w.stride, w.output_hw(*x.shape[1:]))
