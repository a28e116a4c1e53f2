"""Element-wise stages: activations, and the activation that conv, conv_transpose, linear and the
arithmetic stages apply to their output (a name, or a mapping with the function's parameters)."""

from __future__ import annotations

import functools
from typing import Annotated, ClassVar, Literal

import numpy as np
from pydantic import BeforeValidator, Field, PrivateAttr, ValidationInfo, WithJsonSchema, model_validator

from poolcli.config import Model
from poolcli.errors import ShapeError
from poolcli.layout import is_channels_last, pixels
from poolcli.stages.arrays import ArrayValue, HeldArray, array_check, stage_array
from poolcli.stages.base import Stage, kernel_module, register_stage

kernels = kernel_module("elementwise")

ActivationName = Literal[
    "none", "relu", "abs", "square", "sigmoid", "tanh", "sign_sqrt", "leaky_relu", "elu", "clip", "hard_sigmoid",
    "hard_swish", "silu", "gelu", "gelu_tanh", "erf", "exp", "softplus", "prelu",
]

#: The parameters each function takes, and their defaults (ONNX's).
_PARAMS = {
    "leaky_relu": {"alpha": 0.01},
    "elu": {"alpha": 1.0},
    "clip": {"min": -np.inf, "max": np.inf},
    "hard_sigmoid": {"alpha": 0.2, "beta": 0.5},
    "prelu": {"slope": None},
}


class Activation(Model):
    """An element-wise function and its parameters: the ``activation`` of conv, linear and the
    arithmetic stages, and the keys of the ``activation`` stage (whose docstring has the table)."""

    fn: ActivationName = Field(description="the function (see `poolcli stages activation`)")
    alpha: float | None = Field(None, description="leaky_relu (0.01), elu (1.0), hard_sigmoid (0.2)")
    beta: float | None = Field(None, description="hard_sigmoid (0.5)")
    min: float | None = Field(None, description="clip: lower bound (default none)")
    max: float | None = Field(None, description="clip: upper bound (default none)")
    slope: ArrayValue | None = Field(
        None, description="prelu: the negative slope, a number, a list, a .npy path or a tensor name, broadcast "
        "against the input (one value, or (C, 1, 1) for a map)"
    )

    _slope: HeldArray | None = PrivateAttr(None)

    _check_slope = array_check("slope", max_ndim=3)

    @model_validator(mode="after")
    def _parameters_fit(self, info: ValidationInfo):
        taken = _PARAMS.get(self.fn, {})
        for key in ("alpha", "beta", "min", "max", "slope"):
            if getattr(self, key) is not None and key not in taken:
                users = ", ".join(fn for fn, params in _PARAMS.items() if key in params)
                raise ValueError(f"{key} applies to {users} only, not {self.fn}")
        if self.fn == "prelu":
            if self.slope is None:
                raise ValueError("prelu needs slope (a number, a list, a .npy path or a tensor name)")
            self._slope = HeldArray(stage_array(self.slope, info, "slope"))
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"clip needs min <= max, got min {self.min} and max {self.max}")
        return self

    @property
    def arguments(self) -> tuple[np.float32, np.float32]:
        """(alpha, beta) as the kernel takes them: clip's are its bounds."""
        defaults = _PARAMS.get(self.fn, {})
        if self.fn == "clip":
            return tuple(np.float32(defaults[k] if getattr(self, k) is None else getattr(self, k)) for k in ("min", "max"))
        alpha = self.alpha if self.alpha is not None else defaults.get("alpha", 0.0)
        beta = self.beta if self.beta is not None else defaults.get("beta", 0.0)
        return np.float32(alpha), np.float32(beta)

    @property
    def kernel_arguments(self) -> tuple[int, np.float32, np.float32] | None:
        """(code, alpha, beta) for a kernel that applies the function itself (a conv's epilogue),
        or None for prelu, whose slope is an array: the caller applies it after."""
        if self.fn == "prelu":
            return None
        return (kernels.ACTIVATIONS.index(self.fn), *self.arguments)

    def check_shape(self, shape: tuple[int, ...]) -> None:
        """ShapeError where prelu's slope does not broadcast to ``shape`` (keeping it)."""
        if self._slope is None:
            return
        slope = self._slope.array.shape
        if len(slope) > len(shape) or _broadcast(shape, slope) != tuple(shape):
            raise ShapeError(f"prelu slope of shape {slope} does not broadcast against the input {tuple(shape)}")

    def apply(self, x: np.ndarray, inplace: bool = False) -> np.ndarray:
        """``fn(x)``; ``inplace`` only for arrays the caller owns."""
        if self.fn == "none":
            return x if inplace else x.copy()
        if self.fn == "prelu":
            slope = self._slope.array
            if inplace:
                return np.multiply(x, slope, out=x, where=x < 0)
            return np.where(x < 0, x * slope, x).astype(np.float32)
        code = kernels.ACTIVATIONS.index(self.fn)
        if inplace:
            # A channels-last map's pixels are the same values, C-contiguous.
            kernels.activate_inplace(pixels(x) if is_channels_last(x) else x, code, *self.arguments)
            return x
        return kernels.activate(x, code, *self.arguments)


def _broadcast(*shapes) -> tuple[int, ...] | None:
    try:
        return tuple(np.broadcast_shapes(*shapes))
    except ValueError:
        return None


@functools.lru_cache(maxsize=None)
def _named(fn: str) -> Activation:
    return Activation(fn=fn)


def _as_mapping(value):
    return {"fn": value} if isinstance(value, str) else value


#: An ``activation`` parameter: a name, or a mapping ``{fn: clip, min: 0, max: 6}``; always an
#: :class:`Activation` once validated.
ActivationValue = Annotated[
    Activation,
    BeforeValidator(_as_mapping),
    WithJsonSchema({"oneOf": [{"enum": list(ActivationName.__args__)},
                              {**Activation.model_json_schema(), "additionalProperties": False}]}),
    "a name, or {fn: NAME, alpha: .., beta: .., min: .., max: .., slope: ..}",
]

ACTIVATION_FIELD = Field(
    "none", validate_default=True, description="applied to the output: a name (relu, silu, hard_swish, ...) or a "
    "mapping with its parameters, {fn: clip, min: 0, max: 6} (see `poolcli stages activation`)"
)


def apply_activation(x: np.ndarray, fn: str | Activation, inplace: bool = False) -> np.ndarray:
    """``fn`` (a name or an :class:`Activation`) applied element-wise; ``inplace`` only for
    arrays the caller owns."""
    return (_named(fn) if isinstance(fn, str) else fn).apply(x, inplace)


@register_stage("activation")
class ActivationStage(Stage, Activation):
    """An element-wise function of a map or a vector, with its parameters as keys of the stage
    (``{type: activation, fn: clip, min: 0, max: 6}``).

    ================ ==========================================================================
    ``relu``         ``max(0, x)`` (NaN kept)
    ``abs``          ``|x|``; ``square``: ``x * x``; ``exp``, ``erf``, ``tanh``: as named
    ``sigmoid``      ``1 / (1 + exp(-x))``
    ``sign_sqrt``    ``sign(x) * sqrt(|x|)``, the power normalisation of retrieval descriptors
    ``leaky_relu``   ``x`` where ``x >= 0``, else ``alpha * x`` (alpha 0.01)
    ``elu``          ``x`` where ``x > 0``, else ``alpha * (exp(x) - 1)`` (alpha 1)
    ``clip``         ``x`` limited to ``[min, max]`` (either may be omitted); relu6 is 0..6
    ``hard_sigmoid`` ``max(0, min(1, alpha * x + beta))``, alpha 0.2 and beta 0.5 as ONNX
                     (torch's hardsigmoid is alpha 1/6)
    ``hard_swish``   ``x * max(0, min(1, x / 6 + 1 / 2))`` (= torch hardswish, ONNX HardSwish)
    ``silu``         ``x * sigmoid(x)`` (swish)
    ``gelu``         ``x / 2 * (1 + erf(x / sqrt(2)))``, exact (torch gelu)
    ``gelu_tanh``    ``x / 2 * (1 + tanh(sqrt(2 / pi) * (x + 0.044715 x^3)))`` (torch's tanh form)
    ``softplus``     ``log(1 + exp(x))``
    ``prelu``        ``x`` where ``x >= 0``, else ``slope * x``; ``slope`` broadcast against
                     the input as NumPy does: one value, (C, 1, 1) for a map, ...
    ================ ==========================================================================

    The same functions, as a name or a mapping ``{fn: hard_sigmoid, alpha: 0.2}``, are the
    ``activation`` of conv, conv_transpose, linear, add, sub, mul and div.

    Examples
    --------
    >>> ActivationStage(type="activation", fn="relu")(np.array([-1, 2], np.float32))
    array([0., 2.], dtype=float32)
    >>> ActivationStage(type="activation", fn="clip", min=0, max=6)(np.array([-1, 2, 9], np.float32))
    array([0., 2., 6.], dtype=float32)
    """

    summary = "element-wise relu, sigmoid, silu, gelu, hard_swish, clip, prelu, ...; maps or vectors"
    example: ClassVar[dict] = {"fn": "hard_sigmoid", "alpha": 0.2, "beta": -0.5}
    fn: ActivationName = Field("relu", description="the function: " + ", ".join(ActivationName.__args__[1:]))

    def output_shape(self, shape):
        self.check_shape(shape)
        return tuple(shape)

    def __call__(self, x):
        return self.apply(x)
