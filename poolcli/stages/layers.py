"""Layers of trained networks beside conv: ``batch_norm``, ``layer_norm``, ``softmax``, ``linear``
and ``slice`` (ONNX Split and Slice over channels). NumPy, each one or two passes over a map,
as fast as a kernel would be; layer_norm over a map's channels is a kernel (:mod:`poolcli.kernels.norm`)."""

from __future__ import annotations

import math
from typing import ClassVar, Literal

import numpy as np
from pydantic import Field, PrivateAttr, ValidationInfo, field_validator, model_validator

from poolcli.errors import ShapeError
from poolcli.stages.arrays import ArrayValue, HeldArray, array_check, stage_array
from poolcli.stages.base import Stage, kernel_module, register_stage
from poolcli.stages.elementwise import ACTIVATION_FIELD, ActivationValue

norm_kernels = kernel_module("norm")


def _per_channel(shape) -> tuple[int, ...]:
    """The shape a per-channel vector takes to broadcast against a map (C, 1, 1) or a vector (D,)."""
    return (-1, 1, 1) if len(shape) == 3 else (-1,)


def _tiled(params: dict, x: np.ndarray, keys) -> dict:
    """An example's per-channel lists of one value, repeated for every channel of ``x``."""
    return {**params, **{k: params[k] * x.shape[0] for k in keys if isinstance(params.get(k), list)}}


@register_stage("batch_norm")
class BatchNorm(Stage):
    """Batch normalisation in inference, = torch ``batch_norm`` in eval mode and ONNX
    BatchNormalization: ``(x - mean) / sqrt(var + eps) * weight + bias`` per channel of a map
    (or per element of a vector). ``weight``, ``bias``, ``mean`` and ``var`` are lists of C
    numbers, ``.npy`` paths or tensor names; it runs as ``x * scale + shift`` with ``scale`` and
    ``shift`` computed once, in float64.

    Examples
    --------
    >>> BatchNorm(type="batch_norm", weight=[2], bias=[1], mean=[3], var=[4], eps=0)(np.array([[[5.0]]], np.float32))
    array([[[3.]]], dtype=float32)
    """

    summary = "inference batch normalisation per channel: (x - mean) / sqrt(var + eps) * weight + bias"
    example: ClassVar[dict] = {"weight": [2.0], "bias": [0.5], "mean": [3.0], "var": [4.0]}

    weight: ArrayValue = Field(description="per-channel scale (gamma): C numbers, a .npy path or a tensor name")
    bias: ArrayValue = Field(description="per-channel shift (beta)")
    mean: ArrayValue = Field(description="running mean")
    var: ArrayValue = Field(description="running variance")
    eps: float = Field(1e-5, ge=0, description="added to var")

    _scale: HeldArray | None = PrivateAttr(None)
    _shift: HeldArray | None = PrivateAttr(None)

    _check_arrays = array_check("weight", "bias", "mean", "var", ndim=1, expected="(C,)")

    @model_validator(mode="after")
    def _hold_arrays(self, info: ValidationInfo):
        arrays = {k: stage_array(getattr(self, k), info, k, ndim=1, expected="(C,)")
                  for k in ("weight", "bias", "mean", "var")}
        sizes = {k: a.size for k, a in arrays.items()}
        if len(set(sizes.values())) != 1:
            raise ValueError("weight, bias, mean and var need one value per channel each, got "
                             + ", ".join(f"{k} {n}" for k, n in sizes.items()))
        denominator = arrays["var"].astype(np.float64) + self.eps
        if np.any(denominator <= 0):
            raise ValueError(f"var + eps must be > 0, got {denominator.min()}")
        scale = arrays["weight"] / np.sqrt(denominator)
        shift = arrays["bias"] - arrays["mean"] * scale
        self._scale, self._shift = HeldArray(_frozen(scale)), HeldArray(_frozen(shift))
        return self

    @classmethod
    def example_call(cls, params: dict, x: np.ndarray):
        """The example on ``x`` (see :func:`poolcli.explain.example_call`), its values repeated per channel."""
        params = _tiled(params, x, ("weight", "bias", "mean", "var"))
        return params, cls.model_validate(params), (x,)

    def output_shape(self, shape):
        if shape[0] != self._scale.array.size:
            raise ShapeError(f"the statistics are for {self._scale.array.size} channels, the input has {shape[0]}")
        return tuple(shape)

    def params(self, shape):
        return 4 * shape[0]

    def __call__(self, x):
        view = _per_channel(x.shape)
        out = np.multiply(x, self._scale.array.reshape(view))
        out += self._shift.array.reshape(view)
        return out


def _frozen(array) -> np.ndarray:
    array = np.ascontiguousarray(array, np.float32)
    array.setflags(write=False)
    return array


@register_stage("layer_norm")
class LayerNorm(Stage):
    """Layer normalisation over channels: at each position of a map, ``(x - mean) / sqrt(var +
    eps) * weight + bias`` with the mean and (biased) variance of its C values (ConvNeXt's
    LayerNorm2d; torch ``layer_norm`` over the last axis of the channels-last map; ONNX
    LayerNormalization between two Transposes); over the whole vector for a vector. Statistics
    in float64.

    Examples
    --------
    >>> LayerNorm(type="layer_norm", eps=0)(np.array([1, 3], np.float32))
    array([-1.,  1.], dtype=float32)
    """

    summary = "layer normalisation over the channels at each position (or over a vector), then weight and bias"
    example: ClassVar[dict] = {"weight": [2.0], "bias": [0.5]}

    weight: ArrayValue | None = Field(None, description="per-channel scale: C numbers, a .npy path or a tensor name; "
                                                        "default 1")
    bias: ArrayValue | None = Field(None, description="per-channel shift; default 0")
    eps: float = Field(1e-5, ge=0, description="added to the variance")

    _weight: HeldArray | None = PrivateAttr(None)
    _bias: HeldArray | None = PrivateAttr(None)

    _check_arrays = array_check("weight", "bias", ndim=1, expected="(C,)")

    @model_validator(mode="after")
    def _hold_arrays(self, info: ValidationInfo):
        for key in ("weight", "bias"):
            if getattr(self, key) is not None:
                setattr(self, f"_{key}", HeldArray(stage_array(getattr(self, key), info, key, ndim=1, expected="(C,)")))
        if self._weight is not None and self._bias is not None and self._weight.array.size != self._bias.array.size:
            raise ValueError(f"weight has {self._weight.array.size} values, bias {self._bias.array.size}")
        return self

    @classmethod
    def example_call(cls, params: dict, x: np.ndarray):
        """The example on ``x`` (see :func:`poolcli.explain.example_call`), its values repeated per channel:
        with one channel, every position normalises to 0, then the bias."""
        params = _tiled(params, x, ("weight", "bias"))
        return params, cls.model_validate(params), (x,)

    def output_shape(self, shape):
        for held in (self._weight, self._bias):
            if held is not None and held.array.size != shape[0]:
                raise ShapeError(f"weight and bias have {held.array.size} values, the input {shape[0]} channels")
        return tuple(shape)

    def params(self, shape):
        return shape[0] * ((self._weight is not None) + (self._bias is not None))

    def macs(self, shape):
        return 4 * math.prod(shape)

    def __call__(self, x):
        if x.ndim == 3:
            channels = x.shape[0]
            weight = np.ones(channels) if self._weight is None else self._weight.array.astype(np.float64)
            bias = np.zeros(channels) if self._bias is None else self._bias.array.astype(np.float64)
            return norm_kernels.layer_norm(np.require(x, np.float32, "CW"), weight, bias, float(self.eps))
        x64 = x.astype(np.float64)
        mean = x64.mean(axis=0)
        centred = x64 - mean
        var = np.mean(np.square(centred), axis=0)
        out = centred / np.sqrt(var + self.eps)
        view = _per_channel(x.shape)
        if self._weight is not None:
            out *= self._weight.array.reshape(view)
        if self._bias is not None:
            out += self._bias.array.reshape(view)
        return out.astype(np.float32)


@register_stage("softmax")
class Softmax(Stage):
    """Softmax over the channels at each position of a map, over the elements of a vector:
    ``exp(x - max) / sum(exp(x - max))`` (= torch ``softmax`` over dim 0 of the unbatched tensor;
    ONNX Softmax over axis 1). Stable: the maximum is subtracted first.

    Examples
    --------
    >>> Softmax(type="softmax")(np.array([0, 0, np.log(2)], np.float32))
    array([0.25, 0.25, 0.5 ], dtype=float32)
    """

    summary = "softmax over the channels at each position, or over a vector"

    def output_shape(self, shape):
        return tuple(shape)

    def macs(self, shape):
        return 3 * math.prod(shape)

    def __call__(self, x):
        e = np.exp(x - x.max(axis=0))
        e /= e.sum(axis=0, dtype=np.float64).astype(np.float32)
        return e


@register_stage("linear")
class Linear(Stage):
    """A fully connected layer on a vector, = torch ``linear``: ``weight @ x + bias`` with
    ``weight`` (O, I) and ``bias`` (O,) (ONNX Gemm with transB, or MatMul and Add), then
    ``activation``. Accumulated in float32, as torch does.

    Examples
    --------
    >>> Linear(type="linear", weight=[[1, 1], [1, -1]], bias=[0, 10])(np.array([2, 3], np.float32))
    array([5., 9.], dtype=float32)
    """

    summary = "fully connected layer on a vector: weight (O, I) @ x + bias, then an activation"
    makes_vector = True

    weight: ArrayValue = Field(description="(O, I): a nested list, a .npy path or a tensor name")
    bias: Literal[False] | ArrayValue = Field(False, description="(O,), or false")
    activation: ActivationValue = ACTIVATION_FIELD

    _weight: HeldArray | None = PrivateAttr(None)
    _bias: HeldArray | None = PrivateAttr(None)

    _check_weight = array_check("weight", ndim=2, expected="(O, I)")
    _check_bias = array_check("bias", ndim=1, expected="(O,)")

    @field_validator("bias", mode="before")
    @classmethod
    def _bias_not_true(cls, value):
        if value is True:
            raise ValueError("true gives no values: give O numbers, a .npy path or a tensor name, or false")
        return value

    @model_validator(mode="after")
    def _hold_arrays(self, info: ValidationInfo):
        weight = stage_array(self.weight, info, "weight", ndim=2, expected="(O, I)")
        self._weight = HeldArray(weight)
        if self.bias is not False:
            bias = stage_array(self.bias, info, "bias", ndim=1, expected="(O,)")
            if bias.size != weight.shape[0]:
                raise ValueError(f"bias has {bias.size} values, the weight {weight.shape[0]} outputs")
            self._bias = HeldArray(bias)
        return self

    @classmethod
    def example_call(cls, params: dict, x: np.ndarray):
        """The example on ``x`` (see :func:`poolcli.explain.example_call`): the input is the mean of
        each channel (a global average pooling); the first output sums them, the second alternates
        signs."""
        channels = x.shape[0]
        params = {**params, "weight": [[1.0] * channels, [(-1.0) ** c for c in range(channels)]], "bias": [0.5, 0.0]}
        vector = x.mean(axis=(1, 2), dtype=np.float64).astype(np.float32)
        return params, cls.model_validate(params), (vector,)

    def output_shape(self, shape):
        (length,) = self.expect_vector(shape)
        if length != self._weight.array.shape[1]:
            raise ShapeError(f"the weight takes vectors of length {self._weight.array.shape[1]}, got {length}")
        out = (self._weight.array.shape[0],)
        self.activation.check_shape(out)
        return out

    def params(self, shape):
        return self._weight.array.size + (0 if self._bias is None else self._bias.array.size)

    def macs(self, shape):
        return self._weight.array.size

    def __call__(self, x):
        out = self._weight.array @ x
        if self._bias is not None:
            out += self._bias.array
        return self.activation.apply(np.asarray(out, np.float32), inplace=True)


@register_stage("slice")
class Slice(Stage):
    """Channels ``start`` to ``end`` (exclusive) of a map, or elements of a vector, as Python's
    ``x[start:end]``: negative values count from the end, ``end`` omitted runs to the end. ONNX
    Split becomes one slice per output, ONNX Slice over the channel axis one slice.

    Examples
    --------
    >>> Slice(type="slice", start=1, end=-1)(np.arange(5, dtype=np.float32))
    array([1., 2., 3.], dtype=float32)
    """

    summary = "channels start..end of a map (elements of a vector), as Python's x[start:end]"
    example: ClassVar[dict] = {"start": 0, "end": 1}

    start: int = Field(0, strict=True, description="first channel; negative counts from the end")
    end: int | None = Field(None, strict=True, description="channel after the last (exclusive); negative counts from "
                                                           "the end; default the end")

    def _range(self, channels: int) -> range:
        return range(channels)[slice(self.start, self.end)]

    def output_shape(self, shape):
        taken = self._range(shape[0])
        if len(taken) == 0:
            raise ShapeError(f"start {self.start} and end {self.end} select nothing of {shape[0]} channels")
        return (len(taken), *shape[1:])

    def macs(self, shape):
        return 0

    def __call__(self, x):
        taken = self._range(x.shape[0])
        return x[taken.start : taken.stop].copy()
