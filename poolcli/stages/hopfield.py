"""Hopfield pooling: attention of the map's positions to a query pattern."""

from __future__ import annotations

import math
from typing import ClassVar, Literal

import numpy as np
from pydantic import Field

from poolcli.config import PositiveInt
from poolcli.stages.base import GLOBAL, Stage, kernel_module, register_stage

kernels = kernel_module("hopfield")


@register_stage("hopfield_pool")
class HopfieldPool(Stage):
    """Hopfield pooling (Ramsauer et al. 2021): the ``N = H*W`` positions of the map are stored
    patterns ``X`` (N x C); the state ``xi`` (C,) starts at their mean (or per-channel max) and
    each step retrieves ``xi = X^T softmax(beta * X xi)``, the modern Hopfield update. The
    softmax is computed stably (the largest score subtracted first), in float64.

    A small ``beta`` gives nearly the mean of the patterns; a large one, the pattern most
    similar to the query.

    Examples
    --------
    >>> x = np.array([[[1, 0], [0, 0]], [[0, 0], [0, 1]]], np.float32)  # 4 patterns of 2 channels
    >>> HopfieldPool(type="hopfield_pool", beta=1e-6)(x).round(4)  # nearly the mean pattern
    array([0.25, 0.25], dtype=float32)
    >>> HopfieldPool(type="hopfield_pool", beta=100.0, query="max")(x).round(4)  # ties: (1, 0) and (0, 1)
    array([0.5, 0.5], dtype=float32)
    """

    summary = "Hopfield retrieval xi = X^T softmax(beta X xi) from the mean/max pattern (beta, steps, query): (C,H,W) -> (C,)"
    makes_vector = True
    example: ClassVar[dict] = {"beta": 0.5, "steps": 1, "query": "mean"}
    beta: float | None = Field(
        None, gt=0, allow_inf_nan=False, description="inverse temperature of the softmax; null: 1/sqrt(C)"
    )
    steps: PositiveInt = Field(1, le=1000, description="number of update steps, at most 1000 (a few reach the fixed point)")
    query: Literal["mean", "max"] = Field("mean", description="the first state: the mean pattern or the max per channel")

    def inverse_temperature(self, channels: int) -> float:
        """``beta``, or ``1 / sqrt(C)`` when it is not given."""
        return self.beta if self.beta is not None else 1.0 / math.sqrt(channels)

    def output_shape(self, shape):
        return (self.expect_map(shape)[0],)

    def macs(self, shape):
        size = math.prod(self.expect_map(shape))
        return size + 2 * self.steps * size  # the query, then a score and a weighted sum per element and step

    def receptive_field(self, rf, shape):
        return GLOBAL

    def __call__(self, x):
        x = np.ascontiguousarray(x, dtype=np.float32)
        beta = self.inverse_temperature(x.shape[0])
        return kernels.hopfield_pool(x, np.float64(beta), self.steps, self.query == "max")
