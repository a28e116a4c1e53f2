"""Max unpooling with the indices of a max_pool stage."""

from __future__ import annotations

import difflib
import math
from typing import ClassVar

import numpy as np
from pydantic import Field, PrivateAttr

from poolcli.config import pair
from poolcli.errors import ConfigError, ShapeError
from poolcli.stages.base import ReceptiveField, Stage, kernel_module, register_stage
from poolcli.stages.pool import MaxPool

kernels = kernel_module("unpool")


def _axis_reach(size: int, out: int, kernel: int, stride: int, pad: int, dilation: int):
    """Per window along one axis: whether a tap lies inside ``[0, size)``, the last such tap,
    and the first tap ``>= 0`` (where torch's argmax starts, used when no tap is inside)."""
    taps = np.arange(out)[:, None] * stride - pad + np.arange(kernel)[None, :] * dilation
    inside = (taps >= 0) & (taps < size)
    last = np.where(inside, taps, -1).max(axis=1)
    first = np.where(taps >= 0, taps, np.iinfo(np.int64).max).min(axis=1)
    return inside.any(axis=1), last, first


def max_argmax_index(pool: MaxPool, height: int, width: int) -> int:
    """The largest flat index ``r * width + s`` that ``pool``'s argmax can take on some
    ``height x width`` map: in a window with taps inside the map, its last row and column
    inside; in one without, torch's starting index.

    >>> max_argmax_index(MaxPool(type="max_pool", kernel_size=2), 5, 5)  # row 3, column 3
    18
    """
    w = pool.window
    oh, ow = w.output_hw(height, width)
    rows_in, last_r, first_r = _axis_reach(height, oh, w.kernel[0], w.stride[0], w.padding[0], w.dilation[0])
    cols_in, last_s, first_s = _axis_reach(width, ow, w.kernel[1], w.stride[1], w.padding[1], w.dilation[1])
    reach = []
    if rows_in.any() and cols_in.any():
        reach.append(last_r[rows_in].max() * width + last_s[cols_in].max())
    if not rows_in.all():  # windows (i, any j) with no tap inside
        reach.append(first_r[~rows_in].max() * width + first_s.max())
    if not cols_in.all():
        reach.append(first_r.max() * width + first_s[~cols_in].max())
    return int(max(reach))


@register_stage("max_unpool")
class MaxUnpool(Stage):
    """Max unpooling, = torch ``max_unpool2d`` of this stage's input with the indices of the
    ``max_pool`` stage named by ``indices``: a map of zeros with each input value written at
    the flat position ``r * W + s`` where that max_pool found the maximum of the window (``W``:
    the max_pool input's width, as torch records it). Where windows overlap and share a
    maximum, the later write in row-major order wins (torch's CPU loop on one thread; with
    several threads torch races there). The input must have the pooled shape.

    The pipeline passes the max_pool's input as a second map, and the indices are recomputed
    from it. Without ``output_size`` the output has torch's default size ``(h - 1) * stride -
    2 * padding + kernel`` per axis (the max_pool's window); ``output_size`` must lie strictly
    between that default minus and plus the stride (torch's rule). A size too small for some
    of the positions max_pool can record (an odd map pooled 2x2: give ``output_size`` = the
    max_pool's input size) is a shape error for every image of that size, where torch fails
    only for the images whose maxima land there. The worked example max-pools the map 2x2 in
    a stage named p and unpools the result to the map's size.

    Examples
    --------
    >>> x = np.array([[1, 3, 2, 4], [5, 6, 1, 2], [0, 1, 3, 1], [2, 4, 5, 2]], np.float32)[None]
    >>> pool = MaxPool(type="max_pool", kernel_size=2, name="p")
    >>> unpool = MaxUnpool(type="max_unpool", indices="p")
    >>> unpool.link({"p": (pool, ("input",))})  # the pipeline does this: pass p's input too
    ('input',)
    >>> unpool(pool(x), x)
    array([[[0., 0., 0., 4.],
            [0., 6., 0., 0.],
            [0., 0., 0., 0.],
            [0., 4., 5., 0.]]], dtype=float32)
    """

    summary = "max unpooling: values written at the argmax positions of an earlier max_pool (indices) = torch max_unpool2d"
    example: ClassVar[dict] = {"indices": "p"}
    indices: str = Field(description="the name of an earlier max_pool stage whose argmax positions place the values")
    output_size: pair(1) | None = Field(
        None, description="output [h, w] or one int for both; default torch's (h - 1) * stride - 2 * padding + kernel"
    )
    _pool: MaxPool | None = PrivateAttr(None)

    @classmethod
    def example_call(cls, params: dict, x: np.ndarray) -> tuple[dict, "MaxUnpool", tuple[np.ndarray, np.ndarray]]:
        """The example on ``x`` (see :func:`poolcli.explain.example_call`): ``x`` max-pooled 2x2 by
        a stage named ``params["indices"]``, then unpooled to ``x``'s size (``output_size``, so
        that odd sizes fit too). The parameters, the linked stage and its inputs (pooled map, x)."""
        params = {**params, "output_size": list(x.shape[1:])}
        pool = MaxPool(type="max_pool", name=params["indices"], kernel_size=2)
        stage = cls.model_validate(params)
        stage.link({params["indices"]: (pool, ("input",))})
        return params, stage, (pool(x), x)

    def link(self, earlier):
        found = earlier.get(self.indices)
        if found is None:
            pools = [name for name, (stage, _) in earlier.items() if isinstance(stage, MaxPool)]
            guess = difflib.get_close_matches(self.indices, pools, n=1)
            hint = (
                f"did you mean '{guess[0]}'?" if guess
                else f"earlier max_pool stages: {', '.join(pools)}" if pools
                else "there is no earlier max_pool stage"
            )
            raise ValueError(f"indices: no earlier stage is named '{self.indices}' ({hint})")
        stage, inputs = found
        if not isinstance(stage, MaxPool):
            raise ValueError(
                f"indices: '{self.indices}' is a {stage.type} stage; give the name of a max_pool stage, "
                "whose argmax positions max_unpool uses"
            )
        self._pool = stage
        return (inputs[0],)

    @property
    def pool(self) -> MaxPool:
        """The linked max_pool stage."""
        if self._pool is None:
            raise ConfigError(f"max_unpool: not linked to its max_pool '{self.indices}' (build it in a Pipeline)")
        return self._pool

    def out_hw(self, pooled_hw, pool_hw) -> tuple[int, int]:
        """The output (H, W) for a pooled map of ``pooled_hw`` from a max_pool input of ``pool_hw``;
        :class:`ShapeError` where torch refuses it or where a recorded position would not fit."""
        w = self.pool.window
        default = [(n - 1) * s - 2 * p + k for n, s, p, k in zip(pooled_hw, w.stride, w.padding, w.kernel)]
        if self.output_size is None:
            size = tuple(default)
        else:
            size = self.output_size
            for axis, n, d, s in zip("hw", size, default, w.stride):
                if not d - s < n < d + s:
                    raise ShapeError(
                        f"output_size {size[0]}x{size[1]}: {axis} must lie strictly between {d - s} and {d + s} "
                        f"(the default {d}, minus and plus the stride {s}), as in torch"
                    )
        if min(size) < 1:
            raise ShapeError(f"torch's default output size here, {size[0]}x{size[1]}, is empty")
        reach = max_argmax_index(self.pool, *pool_hw)
        if reach >= size[0] * size[1]:
            height, width = pool_hw
            raise ShapeError(
                f"max_pool '{self.indices}' on a {height}x{width} map can record position {reach} "
                f"(row {reach // width}, column {reach % width}), beyond a {size[0]}x{size[1]} output: "
                f"set output_size, e.g. [{height}, {width}]"
            )
        return size

    def output_shape(self, shape, pool_shape):
        self.expect_map(shape)
        pooled = self.pool.output_shape(self.expect_map(pool_shape))
        if tuple(shape) != tuple(pooled):
            raise ShapeError(
                f"its input has shape {tuple(shape)}, but max_pool '{self.indices}' pools its "
                f"{tuple(pool_shape)} input to {pooled}: max_unpool takes a map of the pooled shape"
            )
        return (shape[0], *self.out_hw(shape[1:], pool_shape[1:]))

    def macs(self, shape, pool_shape):
        return self.pool.macs(pool_shape) + math.prod(shape)  # max pooling again, then one write per value

    def receptive_field(self, rf, shape, pool_shape):
        # An output pixel holds one input value: the same field, with the max_pool input's spacing.
        if rf.size is None:
            return rf
        return ReceptiveField(rf.size, tuple(max(1, j // s) for j, s in zip(rf.jump, self.pool.window.stride)))

    def __call__(self, x, pool_input):
        x = np.ascontiguousarray(x, dtype=np.float32)
        out_hw = self.output_shape(x.shape, pool_input.shape)[1:]
        _, indices = self.pool.pool_with_indices(pool_input)
        return kernels.max_unpool(x, indices, out_hw)
