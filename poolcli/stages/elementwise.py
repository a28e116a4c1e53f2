"""Element-wise stages: activations."""

from __future__ import annotations

from typing import Literal

import numpy as np

from poolcli.stages.base import Stage, kernel_module, register_stage

kernels = kernel_module("elementwise")

Activation = Literal["none", "relu", "abs", "square", "sigmoid", "tanh", "sign_sqrt"]


def apply_activation(x: np.ndarray, fn: str, inplace: bool = False) -> np.ndarray:
    """``fn`` applied element-wise; ``inplace`` only for arrays the caller owns."""
    if fn == "none":
        return x if inplace else x.copy()
    code = kernels.ACTIVATIONS.index(fn)
    if inplace:
        kernels.activate_inplace(x, code)
        return x
    return kernels.activate(x, code)


@register_stage("activation")
class ActivationStage(Stage):
    """An element-wise function: relu, abs, square, sigmoid, tanh, or sign_sqrt
    (``sign(x) * sqrt(|x|)``, the power normalisation of retrieval descriptors).

    Examples
    --------
    >>> ActivationStage(type="activation", fn="relu")(np.array([-1, 2], np.float32))
    array([0., 2.], dtype=float32)
    """

    summary = "element-wise relu, abs, square, sigmoid, tanh or sign_sqrt; maps or vectors"
    fn: Activation = "relu"

    def output_shape(self, shape):
        return tuple(shape)

    def __call__(self, x):
        return apply_activation(x, self.fn)
