"""Element-wise arithmetic with NumPy broadcasting: ``add``, ``sub``, ``mul``, ``div``, of two earlier
outputs or of one and a constant (residual adds, squeeze-excitation gates, layer scale)."""

from __future__ import annotations

from typing import ClassVar

import numpy as np
from pydantic import Field, PrivateAttr, ValidationInfo, model_validator

from poolcli.errors import ShapeError
from poolcli.stages.arrays import ArrayValue, HeldArray, array_check, stage_array
from poolcli.stages.base import Stage, register_stage
from poolcli.stages.elementwise import ACTIVATION_FIELD, ActivationValue


class Arithmetic(Stage):
    """Base of the four arithmetic stages: ``op`` is the NumPy ufunc, ``symbol`` its sign."""

    value: ArrayValue | None = Field(
        None, description="a constant instead of a second input: a number, a list, a .npy path or a tensor name, "
        "broadcast as NumPy does (a map against (C, 1, 1), (1, H, W), (C, H, W) or (1,); a vector against (D,) or (1,))"
    )
    activation: ActivationValue = ACTIVATION_FIELD

    op: ClassVar[np.ufunc]
    symbol: ClassVar[str]
    many: ClassVar[bool] = False  # more than two inputs (add: ONNX Sum)

    _value: HeldArray | None = PrivateAttr(None)

    _check_value = array_check("value", max_ndim=3)

    @model_validator(mode="after")
    def _inputs_fit(self, info: ValidationInfo):
        listed = self.from_ if isinstance(self.from_, list) else None
        if self.value is not None:
            if listed is not None and len(listed) != 1:
                raise ValueError(f"value is the second operand: give one input in from (or none), got {len(listed)}")
            self._value = HeldArray(stage_array(self.value, info, "value"))
        elif listed is not None and (len(listed) < 2 or (len(listed) > 2 and not self.many)):
            wanted = "two or more" if self.many else "two"
            raise ValueError(f"{self.type} takes {wanted} inputs in from (or one and a value), got {len(listed)}")
        elif self.from_ is not None and listed is None:
            raise ValueError(f"{self.type} of one input needs value (a constant); or give two inputs, from: [a, b]")
        return self

    def takes_many(self) -> bool:
        return self.value is None

    def output_shape(self, *shapes):
        shapes = [tuple(s) for s in shapes]
        if self._value is not None:
            value = self._value.array.shape
            if len(value) > len(shapes[0]):
                raise ShapeError(f"a value of shape {value} does not broadcast against the input {shapes[0]}: "
                                 "it has more dimensions")
            shapes.append(value)
        elif len({len(s) for s in shapes}) != 1:
            raise ShapeError(f"cannot {self.type} maps and vectors: " + ", ".join(map(str, shapes)))
        try:
            out = tuple(int(n) for n in np.broadcast_shapes(*shapes))
        except ValueError:
            raise ShapeError(f"shapes {' and '.join(map(str, shapes))} do not broadcast (NumPy's rules)") from None
        self.activation.check_shape(out)
        return out

    def __call__(self, *xs):
        operands = (*xs, self._value.array) if self._value is not None else xs
        with np.errstate(all="ignore"):  # x / 0 is inf, as in torch and onnxruntime
            out = self.op(operands[0], operands[1], dtype=np.float32)
            for more in operands[2:]:
                self.op(out, more, out=out)
        return self.activation.apply(out, inplace=True)


_DOC = """{verb} element-wise, with NumPy broadcasting: ``a {symbol} b`` of two earlier outputs
    (``from: [a, b]``{more}), or ``x {symbol} value`` of one input and a constant (a number, a
    list, a ``.npy`` path or a tensor of the ``weights:`` file). A map broadcasts against
    (C, 1, 1), (1, H, W), (C, H, W) or (1,) shapes, a vector against (D,) or (1,); two inputs
    have the same rank. ``activation`` is applied to the result.
"""


@register_stage("add")
class Add(Arithmetic):
    __doc__ = _DOC.format(verb="Sum", symbol="+", more=", or more: ONNX Sum") + """
    Examples
    --------
    >>> Add(type="add", value=[1.0, -1.0], activation="relu")(np.array([0.5, 0.5], np.float32))
    array([1.5, 0. ], dtype=float32)
    """

    summary = "a + b (or several, or a constant) with NumPy broadcasting: residuals, biases"
    example: ClassVar[dict] = {"value": -2.5, "activation": "relu"}
    op, symbol, many = np.add, "+", True


@register_stage("sub")
class Sub(Arithmetic):
    __doc__ = _DOC.format(verb="Difference", symbol="-", more="") + """
    Examples
    --------
    >>> Sub(type="sub", value=2)(np.array([0.5, 3], np.float32))
    array([-1.5,  1. ], dtype=float32)
    """

    summary = "a - b (or a constant) with NumPy broadcasting"
    example: ClassVar[dict] = {"value": 3}
    op, symbol = np.subtract, "-"


@register_stage("mul")
class Mul(Arithmetic):
    __doc__ = _DOC.format(verb="Product", symbol="*", more="") + """
    A squeeze-excitation gate ``x * hard_sigmoid(g)`` is two stages: the activation on the
    gate, then ``mul`` of the map and the (C, 1, 1) gate.

    Examples
    --------
    >>> Mul(type="mul", value=[[[2.0]], [[0.5]]])(np.ones((2, 1, 2), np.float32))
    array([[[2. , 2. ]],
    <BLANKLINE>
           [[0.5, 0.5]]], dtype=float32)
    """

    summary = "a * b (or a constant) with NumPy broadcasting: gates, layer scale"
    example: ClassVar[dict] = {"value": 0.5}
    op, symbol = np.multiply, "*"


@register_stage("div")
class Div(Arithmetic):
    __doc__ = _DOC.format(verb="Quotient", symbol="/", more="") + """
    Division by zero gives inf (or NaN for 0 / 0), as in torch.

    Examples
    --------
    >>> Div(type="div", value=4)(np.array([1, -2], np.float32))
    array([ 0.25, -0.5 ], dtype=float32)
    """

    summary = "a / b (or a constant) with NumPy broadcasting"
    example: ClassVar[dict] = {"value": 2}
    op, symbol = np.divide, "/"
