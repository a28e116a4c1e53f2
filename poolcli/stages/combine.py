"""Stages that combine the outputs of several earlier stages."""

from __future__ import annotations

import numpy as np

from poolcli.errors import ShapeError
from poolcli.stages.base import Stage, register_stage


@register_stage("concat")
class Concat(Stage):
    """Join earlier outputs: maps along channels (same H and W), vectors end to end.

    Examples
    --------
    >>> Concat(type="concat", **{"from": ["a", "b"]})(np.ones(2, np.float32), np.zeros(1, np.float32))
    array([1., 1., 0.], dtype=float32)
    """

    summary = "joins the outputs listed in `from`: maps along channels, vectors end to end"
    inputs = "many"

    def output_shape(self, *shapes):
        ranks = {len(s) for s in shapes}
        if len(ranks) != 1:
            raise ShapeError("cannot concatenate maps with vectors: " + ", ".join(str(tuple(s)) for s in shapes))
        if len(shapes[0]) == 3 and len({tuple(s[1:]) for s in shapes}) != 1:
            raise ShapeError("maps must have the same H and W to be joined, got " + ", ".join(str(tuple(s)) for s in shapes))
        return (sum(s[0] for s in shapes), *shapes[0][1:])

    def macs(self, *shapes):
        return 0

    def receptive_field(self, rf, *shapes):
        return rf

    def __call__(self, *xs):
        return np.concatenate(xs, axis=0)
