"""Stochastic pooling (Zeiler & Fergus 2013)."""

from __future__ import annotations

from typing import ClassVar, Literal

import numpy as np
from pydantic import Field

from poolcli.stages.base import kernel_module, register_stage
from poolcli.stages.pool import WindowPool

kernels = kernel_module("stochastic")


@register_stage("stochastic_pool")
class StochasticPool(WindowPool):
    """Stochastic pooling (Zeiler & Fergus 2013) over floor-mode windows: activations are
    clamped at 0, ``a = max(x, 0)``, and each window is a multinomial over its elements with
    probabilities ``p_i = a_i / sum a``.

    - ``eval``: the expected value, ``sum p_i a_i = sum a^2 / sum a``;
    - ``train``: one draw per window: with ``u`` uniform in [0, 1), the first element in
      row-major order (with ``a > 0``) whose running sum of ``a`` reaches ``u * sum a``. The
      ``u`` come from ``numpy.random.default_rng(seed).random((C, H', W'))``, so a seed gives
      the same draws on every run.

    An all-zero window gives 0; a window with a NaN gives NaN; otherwise a +inf takes all the
    probability and gives +inf (``inf / inf`` would be NaN). Sums run in float64.

    Examples
    --------
    >>> x = np.array([[1, 3, 2, 4], [5, 6, 1, 2], [0, 1, 3, 1], [2, 4, 5, 2]], np.float32)[None]
    >>> StochasticPool(type="stochastic_pool", kernel_size=2)(x)  # (1 + 9 + 25 + 36) / 15 = 4.7333
    array([[[4.733333 , 2.7777777],
            [3.       , 3.5454545]]], dtype=float32)
    >>> StochasticPool(type="stochastic_pool", kernel_size=2, mode="train", seed=0)(x)
    array([[[6., 4.],
            [1., 3.]]], dtype=float32)
    """

    summary = "Zeiler & Fergus stochastic pooling of max(x, 0): eval sum a^2 / sum a, or a seeded draw (train)"
    example: ClassVar[dict] = {"kernel_size": 2, "mode": "eval"}
    ceil_mode: ClassVar[bool] = False  # floor-mode windows only
    mode: Literal["eval", "train"] = Field(
        "eval", description="eval: the expected value sum a^2 / sum a; train: one seeded draw per window"
    )
    seed: int = Field(0, ge=0, strict=True, description="train: the draws come from numpy.random.default_rng(seed)")

    def draws(self, out_shape: tuple[int, int, int]) -> np.ndarray:
        """The float64 ``u`` in [0, 1), one per output, that train mode uses."""
        return np.random.default_rng(self.seed).random(out_shape)

    def __call__(self, x):
        x = np.ascontiguousarray(x, dtype=np.float32)
        w = self.window
        out_hw = w.output_hw(*x.shape[1:])
        if self.mode == "eval":
            return kernels.stochastic_pool_eval(x, w.kernel, w.stride, out_hw)
        return kernels.stochastic_pool_train(x, self.draws((x.shape[0], *out_hw)), w.kernel, w.stride)
