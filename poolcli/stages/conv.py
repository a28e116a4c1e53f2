"""Convolution: the ``conv`` stage, with built-in filter banks (:mod:`poolcli.stages.filters`)
or weights from a ``.npy`` file."""

from __future__ import annotations

import difflib
import math
from typing import ClassVar, Literal

import numpy as np
from pydantic import Field, PrivateAttr, ValidationInfo, field_validator, model_validator

from poolcli.config import PositiveInt, padding_spec, pair
from poolcli.errors import ShapeError
from poolcli.layout import is_channels_last
from poolcli.stages.arrays import ArrayValue, HeldArray, array_check, is_npy, stage_array, weights_file
from poolcli.stages.base import ReceptiveField, Stage, kernel_module, register_stage
from poolcli.stages.elementwise import ACTIVATION_FIELD, ActivationValue
from poolcli.stages.filters import BANKS, check_bank_size, default_kernel_size, make_bank
from poolcli.stages.geometry import Window, axis_padding, pooled_size

kernels = kernel_module("conv")


def _is_weights(filters: str) -> bool:
    """Whether ``filters`` names weights (a .npy file or a tensor of the weights file), not a bank."""
    return filters not in BANKS


def read_filters(value: str, info: ValidationInfo) -> np.ndarray:
    """The weights (O, C/groups, kh, kw) a .npy path or tensor name gives."""
    return stage_array(value, info, "weights", ndim=4, expected="(O, C/groups, kh, kw)")


def _banks_reading(param: str) -> str:
    return ", ".join(name for name, bank in BANKS.items() if param in bank.params)


class DerivedCache(dict):
    """Values a stage derives from its parameters (packed weights), kept between calls. Not part
    of the stage's value: every cache equals every other, so stages still compare by parameters."""

    def __eq__(self, other):
        return isinstance(other, DerivedCache)

    __hash__ = None


@register_stage("conv")
class Conv(Stage):
    """2-D convolution, = torch ``conv2d`` (cross-correlation) with torch's padding modes,
    then an optional bias and activation.

    ``filters`` is a built-in bank or the path of a ``.npy`` file of weights
    ``(O, C/groups, kh, kw)`` (float, read without pickle, relative to the config's folder).

    Built-in banks (all float32; ``y`` runs down the rows, ``x`` along the width):

    ============= ======================================================================
    ``identity``  a centred delta; ``kernel_size`` 1 by default
    ``box``       the mean filter ``1 / (kh * kw)``; ``kernel_size`` 3
    ``gaussian``  ``exp(-(x^2 + y^2) / (2 sigma^2))`` summing to 1; ``sigma`` 1.0,
                  ``kernel_size`` ``2 * ceil(3 * sigma) + 1``
    ``sobel``     x ``[[-1,0,1],[-2,0,2],[-1,0,1]]`` (derivative along the width), then y,
                  its transpose; 3x3, unscaled, as in textbooks and OpenCV
    ``scharr``    x ``[[-3,0,3],[-10,0,10],[-3,0,3]]``, then y; 3x3
    ``prewitt``   x ``[[-1,0,1],[-1,0,1],[-1,0,1]]``, then y; 3x3
    ``laplacian`` ``[[0,1,0],[1,-4,1],[0,1,0]]``; 3x3
    ``log``       Laplacian of Gaussian (negative centre), less its mean (zero on flat
                  regions); ``sigma`` 1.0, ``kernel_size`` ``2 * ceil(3 * sigma) + 1``
    ``gabor``     for each of ``wavelengths`` ([4, 8] pixels), each of ``orientations`` (8)
                  angles ``theta = k pi / orientations`` and each ``phase`` (even: cos,
                  odd: sin, or both, in that order): a Gaussian envelope with the sigma of a
                  ``bandwidth``-octave filter (1.0: sigma = 0.56 wavelength) times the
                  carrier along ``x cos(theta) + y sin(theta)``; zero-mean, unit L2 norm;
                  ``kernel_size`` ``2 * ceil(3 * sigma) + 1`` for the longest wavelength.
                  Output ``(w * orientations + k) * phases + p``
    ``random``    He-normal weights ``(out_channels, C/groups, kh, kw)`` from
                  ``numpy.random.default_rng(seed).normal(0, sqrt(2 / fan_in), shape)``,
                  ``fan_in = C/groups * kh * kw``; ``kernel_size`` 3
    ============= ======================================================================

    A 2-D bank of F filters is applied with ``channels: mean`` (F outputs: each filter on the
    mean of the input channels) or ``channels: each`` (C * F outputs, output ``c * F + f`` is
    filter f on channel c). ``random`` and ``.npy`` weights span the input channels themselves
    and take ``groups`` as torch does. The output size is torch's:
    ``(H + pad_top + pad_bottom - dilation * (kh - 1) - 1) // stride + 1``.

    Examples
    --------
    >>> x = np.array([[1, 3, 2, 4], [5, 6, 1, 2], [0, 1, 3, 1], [2, 4, 5, 2]], np.float32)[None]
    >>> Conv(type="conv", filters="laplacian")(x)
    array([[[-14.,   9.],
            [  9.,  -4.]]], dtype=float32)
    >>> Conv(type="conv", filters="sobel", padding="same", padding_mode="replicate").output_shape((3, 4, 4))
    (2, 4, 4)
    """

    summary = "2-D convolution (= torch conv2d) with a built-in filter bank (sobel, gabor, ...) or .npy weights"
    example: ClassVar[dict] = {"filters": "sobel", "padding": 1}

    filters: str = Field(
        description="a built-in bank (" + ", ".join(BANKS) + "), the path of a .npy file of weights "
        "(O, C/groups, kh, kw), relative to the config's folder, or the name of such a tensor in the weights: file"
    )
    sigma: float = Field(1.0, gt=0, description="gaussian, log: standard deviation in pixels")
    orientations: PositiveInt = Field(8, description="gabor: angles k*pi/orientations, k = 0 .. orientations-1")
    wavelengths: list[float] = Field(
        [4.0, 8.0], min_length=1, description="gabor: carrier wavelengths in pixels, each >= 2 (the Nyquist limit)"
    )
    phase: Literal["even", "odd", "both"] = Field(
        "even", description="gabor: cosine (even, line detectors), sine (odd, edge detectors) or both, even first"
    )
    bandwidth: float = Field(
        1.0,
        gt=0,
        description="gabor: half-response bandwidth in octaves; sets each envelope's sigma (0.56 * wavelength for 1)",
    )
    out_channels: PositiveInt | None = Field(None, description="random: number of output channels (required)")
    seed: int = Field(0, ge=0, strict=True, description="random: seed of numpy.random.default_rng")
    kernel_size: pair(1) | None = Field(
        None,
        description="int or [kh, kw]; default per bank: identity 1, gaussian and log 2*ceil(3*sigma)+1, gabor from its "
        "longest wavelength, others 3 (sobel, scharr, prewitt, laplacian: 3 only; .npy: the file's)",
    )
    stride: pair(1) = Field((1, 1), description="int or [sh, sw]")
    padding: padding_spec(("same", "valid", "same_upper", "same_lower")) = Field(
        (0, 0), description="int, [ph, pw], [top, left, bottom, right], 'same' (output size = input size; stride 1 "
        "only, as torch), 'valid' (0), or 'same_upper' / 'same_lower' (output ceil(size / stride), the extra pad "
        "after or before, as ONNX's auto_pad)"
    )
    padding_mode: Literal["zeros", "reflect", "replicate", "circular"] = Field(
        "zeros", description="torch's: zeros, reflect (edge not repeated), replicate (edge repeated), circular (wraps)"
    )
    dilation: pair(1) = Field((1, 1), description="int or [dh, dw]: spacing between kernel taps")
    groups: PositiveInt = Field(1, description="random and .npy weights: input channels split in groups, as in torch")
    channels: Literal["mean", "each"] = Field(
        "mean", description="2-D banks: mean (each filter on the channel mean, F outputs) or each (C*F outputs, c*F+f)"
    )
    bias: Literal[False] | list[float] | str = Field(
        False, description="false, a list of one number per output channel, the path of a .npy vector or a tensor name"
    )
    residual: str | None = Field(
        None, description="the name of an earlier stage (or input) whose map, of the output's shape, is added before "
        "the activation: activation(conv(x) + bias + residual)"
    )
    activation: ActivationValue = ACTIVATION_FIELD

    _weights: HeldArray | None = PrivateAttr(None)  # .npy weights
    _bias: HeldArray | None = PrivateAttr(None)
    _derived: DerivedCache = PrivateAttr(default_factory=DerivedCache)
    _to_pixels: bool = PrivateAttr(False)  # hand on channels-last maps (Pipeline._plan_layouts)

    # --- validation -----------------------------------------------------------------------

    @field_validator("filters")
    @classmethod
    def _known_filters(cls, value: str, info: ValidationInfo) -> str:
        if is_npy(value) or (value not in BANKS and weights_file(info) is not None):
            read_filters(value, info)
        elif value not in BANKS:
            guess = difflib.get_close_matches(value, BANKS, n=1)
            hint = f"did you mean '{guess[0]}'?" if guess else "built-in: " + ", ".join(BANKS)
            raise ValueError(f"unknown filter bank '{value}' ({hint}); or give the path of a .npy file of weights, "
                             "or the name of a tensor of the config's weights: file")
        return value

    @field_validator("sigma", "orientations", "wavelengths", "phase", "bandwidth", "out_channels", "seed")
    @classmethod
    def _used_by_bank(cls, value, info: ValidationInfo):
        filters = info.data.get("filters")
        if filters is not None and info.field_name not in getattr(BANKS.get(filters), "params", ()):
            raise ValueError(f"applies to filters {_banks_reading(info.field_name)} only, not '{filters}'")
        if info.field_name == "wavelengths" and min(value) < 2:
            raise ValueError(f"each wavelength must be >= 2 pixels (the Nyquist limit), got {min(value)}")
        return value

    @field_validator("kernel_size")
    @classmethod
    def _kernel_fits_bank(cls, value, info: ValidationInfo):
        filters = info.data.get("filters")
        if filters is None or value is None:
            return value
        if _is_weights(filters):
            shape = read_filters(filters, info).shape[2:]
            if tuple(value) != shape:
                raise ValueError(
                    f"must match the weights' {shape[0]}x{shape[1]}, got {value[0]}x{value[1]}; or omit it"
                )
            return value
        bank = BANKS[filters]
        if bank.fixed and tuple(value) != (3, 3):
            raise ValueError(f"{filters} filters are 3x3 only, got {value[0]}x{value[1]}; omit kernel_size")
        if min(value) < bank.min_size:
            raise ValueError(f"{filters} filters need a kernel of at least {bank.min_size}, got {value[0]}x{value[1]}")
        return value

    @field_validator("padding")
    @classmethod
    def _same_needs_stride_one(cls, value, info: ValidationInfo):
        stride = info.data.get("stride")
        if value == "same" and stride is not None and tuple(stride) != (1, 1):
            raise ValueError(f"'same' needs stride 1 (as in torch), got stride {list(stride)}; give a number instead")
        return value

    @field_validator("groups")
    @classmethod
    def _groups_need_full_weights(cls, value, info: ValidationInfo):
        filters = info.data.get("filters")
        if filters is None or value == 1:
            return value
        if _is_weights(filters):
            out_channels = read_filters(filters, info).shape[0]
        elif BANKS[filters].full:
            out_channels = info.data.get("out_channels")
        else:
            raise ValueError(f"applies to random and .npy weights; {filters} is a 2-D bank: use channels: mean or each")
        if out_channels is not None and out_channels % value:
            raise ValueError(f"must divide the {out_channels} output channels, got {value}")
        return value

    @field_validator("channels")
    @classmethod
    def _channels_need_2d_bank(cls, value, info: ValidationInfo):
        filters = info.data.get("filters")
        if filters is not None and (_is_weights(filters) or BANKS[filters].full):
            raise ValueError("applies to 2-D banks only: random and .npy weights already span the input channels")
        return value

    @field_validator("bias", mode="before")
    @classmethod
    def _bias_not_true(cls, value):
        if value is True:
            raise ValueError("true gives no values: give a list of one number per output channel, a .npy path or "
                             "a tensor name")
        return value

    @field_validator("bias")
    @classmethod
    def _bias_values(cls, value, info: ValidationInfo):
        if isinstance(value, str):
            stage_array(value, info, "bias", ndim=1, expected="(O,)")
        elif isinstance(value, list):
            if not value:
                raise ValueError("the list is empty; give one number per output channel, or false")
            if not all(map(math.isfinite, value)):
                raise ValueError(f"values must be finite, got {value}")
        return value

    @model_validator(mode="after")
    def _hold_arrays(self, info: ValidationInfo):
        if not _is_weights(self.filters) and BANKS[self.filters].full and self.out_channels is None:
            raise ValueError(f"filters {self.filters} needs out_channels (the number of filters to draw)")
        if not _is_weights(self.filters):  # a bank too large to build is a config error, found now
            check_bank_size(self.filters, self.kernel, self._bank_params())
        if _is_weights(self.filters):
            self._weights = HeldArray(read_filters(self.filters, info))
        if isinstance(self.bias, str):
            self._bias = HeldArray(stage_array(self.bias, info, "bias", ndim=1, expected="(O,)"))
        elif self.bias is not False:
            self._bias = HeldArray(np.asarray(self.bias, np.float32))
        outputs = self._fixed_out_channels()
        if self._bias is not None and outputs is not None and self._bias.array.size != outputs:
            raise ValueError(
                f"bias has {self._bias.array.size} values, but filters '{self.filters}' give {outputs} output channels"
            )
        return self

    # --- the weights ---------------------------------------------------------------------------

    @property
    def _full(self) -> bool:
        """Full 4-D weights on the input channels (random, .npy), rather than a 2-D bank."""
        return _is_weights(self.filters) or BANKS[self.filters].full  # no private attribute: trace calls this often

    def _bank_params(self) -> tuple[tuple[str, object], ...]:
        values = ((p, getattr(self, p)) for p in BANKS[self.filters].params)
        return tuple((p, tuple(v) if isinstance(v, list) else v) for p, v in values)

    @property
    def kernel(self) -> tuple[int, int]:
        """(kh, kw) of the filters."""
        if self.kernel_size is not None:
            return tuple(self.kernel_size)
        if self._weights is not None:
            return self._weights.array.shape[2:]
        return default_kernel_size(self.filters, self._bank_params())

    def bank(self) -> np.ndarray:
        """The 2-D bank, float32 (F, kh, kw) (built once per set of parameters)."""
        return make_bank(self.filters, self.kernel, self._bank_params())

    def weights(self, in_channels: int) -> np.ndarray:
        """The weights applied to a map of ``in_channels`` channels, float32 (O, C', kh, kw), with
        the groups of :meth:`groups_for`. For a 2-D bank with ``channels: mean``, C' = 1: the
        filters read the channel mean."""
        if self._weights is not None:
            return self._weights.array
        if BANKS[self.filters].full:
            return make_bank(self.filters, self.kernel, self._bank_params(), in_channels // self.groups)
        bank = self.bank()[:, None]
        return bank if self.channels == "mean" else np.ascontiguousarray(np.tile(bank, (in_channels, 1, 1, 1)))

    def groups_for(self, in_channels: int) -> int:
        if self._full:
            return self.groups
        return in_channels if self.channels == "each" else 1

    def _fixed_out_channels(self) -> int | None:
        """Output channels where they do not depend on the input (all but ``channels: each``)."""
        if self._weights is not None:
            return self._weights.array.shape[0]
        if BANKS[self.filters].full:
            return self.out_channels
        return self.bank().shape[0] if self.channels == "mean" else None

    # --- shapes and costs ----------------------------------------------------------------------

    @property
    def _window(self) -> Window:
        return Window.of(self.kernel, self.stride, dilation=self.dilation)

    def _pads(self, height: int, width: int) -> tuple[int, int, int, int]:
        """(top, bottom, left, right); ShapeError where torch's padding mode refuses them."""
        per_axis = [
            axis_padding(self.padding, axis, size, k, s, d)
            for axis, size, k, s, d in zip((0, 1), (height, width), self.kernel, self.stride, self.dilation)
        ]
        for axis, size, pads in zip("hw", (height, width), per_axis):
            if self.padding_mode == "reflect" and max(pads) >= size:
                raise ShapeError(f"reflect padding must be smaller than the map: padding {max(pads)} along {axis}, "
                                 f"map {height}x{width}")
            if self.padding_mode == "circular" and max(pads) > size:
                raise ShapeError(f"circular padding must be at most the map size: padding {max(pads)} along {axis}, "
                                 f"map {height}x{width}")
        return (*per_axis[0], *per_axis[1])

    def _output_hw(self, height: int, width: int) -> tuple[int, int]:
        top, bottom, left, right = self._pads(height, width)
        window = self._window
        sizes = tuple(
            pooled_size(size + before + after, span, stride, 0, False)
            for size, before, after, span, stride in zip(
                (height, width), (top, left), (bottom, right), window.effective, window.stride
            )
        )
        if min(sizes) < 1:
            kh, kw = self.kernel
            eh, ew = window.effective
            raise ShapeError(f"a {kh}x{kw} kernel (dilated span {eh}x{ew}) does not fit a {height}x{width} map "
                             f"padded by {top},{bottom} (rows) and {left},{right} (columns)")
        return sizes

    def _out_channels(self, channels: int) -> int:
        if self._weights is not None:
            per_group = self._weights.array.shape[1]
            if channels != per_group * self.groups:
                raise ShapeError(f"the weights take {per_group * self.groups} input channels "
                                 f"({per_group} per group x {self.groups} groups), the map has {channels}")
        elif self._full and channels % self.groups:
            raise ShapeError(f"groups {self.groups} must divide the map's {channels} channels")
        outputs = self._fixed_out_channels()
        if outputs is None:  # channels: each
            outputs = channels * self.bank().shape[0]
        if self._bias is not None and self._bias.array.size != outputs:
            raise ShapeError(f"bias has {self._bias.array.size} values, but the conv gives {outputs} output channels")
        return outputs

    def link(self, earlier):
        if self.residual is None:
            return ()
        if self.residual != "input" and self.residual not in earlier:
            guess = difflib.get_close_matches(self.residual, [*earlier, "input"], n=1)
            hint = f" (did you mean '{guess[0]}'?)" if guess else ""
            raise ValueError(f"residual: no earlier stage is named '{self.residual}'{hint}")
        return (self.residual,)

    def output_shape(self, shape, residual=None):
        channels, height, width = self.expect_map(shape)
        out = self._derive(("shape", tuple(shape)),
                           lambda: (self._out_channels(channels), *self._output_hw(height, width)))
        if residual is not None and tuple(residual) != out:
            raise ShapeError(f"the residual '{self.residual}' has shape {tuple(residual)}, the conv's output {out}")
        self.activation.check_shape(out)
        return out

    def params(self, shape, residual=None):
        channels = self.expect_map(shape)[0]
        kh, kw = self.kernel
        held = self._fixed_out_channels() * (channels // self.groups) * kh * kw if self._full else self.bank().size
        return held + (0 if self._bias is None else self._bias.array.size)

    def macs(self, shape, residual=None):
        channels, height, width = self.expect_map(shape)
        out_c, out_h, out_w = self.output_shape(shape)
        per_output = self.kernel[0] * self.kernel[1] * (channels // self.groups if self._full else 1)
        mean = channels * height * width if not self._full and self.channels == "mean" and channels > 1 else 0
        return out_c * out_h * out_w * per_output + mean

    def receptive_field(self, rf, shape, residual=None):
        return rf.through(self._window.effective, self.stride)

    # --- layouts -------------------------------------------------------------------------------

    @property
    def pointwise(self) -> bool:
        """A 1x1 conv of weights, stride 1, no padding or groups: a matrix product that reads and
        writes channels-last maps as fast as plain ones."""
        return (self._weights is not None and self.groups == 1 and tuple(self.kernel) == (1, 1)
                and tuple(self.stride) == (1, 1) and self._pads(8, 8) == (0, 0, 0, 0))

    @property
    def depthwise(self) -> bool:
        """A conv of weights, one output per input channel, zero padding, no residual: it runs on
        the pixels of a channels-last map, and hands one on."""
        return (self._weights is not None and self.groups > 1 and self._weights.array.shape[:2] == (self.groups, 1)
                and self.padding_mode == "zeros" and self.residual is None)

    def hand_on_pixels(self, on: bool = True) -> None:
        """Let this conv hand on channels-last maps, where its method makes them (a 1x1 conv
        without residual, a depthwise conv of a channels-last map): every reader takes them."""
        self._to_pixels = on and self.activation.kernel_arguments is not None

    # --- applying ------------------------------------------------------------------------------

    def __call__(self, x, residual=None, into_residual=False, gate=None):
        """The conv of ``x``; ``into_residual``: the result may be written over ``residual``
        (the caller reads it no more); ``gate``: (C,) factors of the input's channels, the conv
        of ``gate * x`` (a squeeze-excitation's product, folded into a 1x1 conv's weights)."""
        plan = self._derived.get(("plan", x.shape))
        if plan is None:
            plan = self._derive(("plan", x.shape), lambda: self._plan(x.shape))
        out_hw, pads, prepared, offsets, mean = plan
        if mean:
            x = np.mean(x, axis=0, keepdims=True, dtype=np.float64).astype(np.float32)
        # Writable C-contiguous float32, so that Numba compiles the kernel once (it types
        # read-only arrays apart), unless channels-last (the 1x1 and depthwise kernels read it).
        if not is_channels_last(x):
            x = np.require(x, np.float32, "CW")
        fused = self.activation.kernel_arguments
        out = kernels.convolve(x, prepared, pads, self.padding_mode, self.stride, self.dilation, out_hw, offsets,
                               residual, fused, threads=_kernel_threads(),
                               into_residual=into_residual and fused is not None,
                               to_pixels=self._to_pixels and fused is not None, gate=gate)
        return out if fused is not None else self.activation.apply(out, inplace=True)

    def _plan(self, shape):
        """Everything a call on a map of ``shape`` needs besides the map, kept per shape (a
        stage of a 1x1 map spends more in Python than in its kernel): the output size, the
        pads, the prepared weights and their tap offsets, and whether the channels are
        averaged first."""
        out_c, out_h, out_w = self.output_shape(shape)
        pads = self._pads(*shape[1:])
        mean = not self._full and self.channels == "mean"
        prepared, offsets = self._prepared((1, *shape[1:]) if mean else tuple(shape), pads, out_c, (out_h, out_w))
        return (out_h, out_w), pads, prepared, offsets, mean

    def _prepared(self, shape, pads, out_c, out_hw):
        """The weights (``out_c`` outputs) in the layout of the method that computes them (per
        channel count and padding, and for some methods per output size) and, where that
        method reads taps, their offsets (per map size)."""
        channels = shape[0]  # 1 after the channel mean
        groups = self.groups_for(channels)

        def prepare(method):
            bias = None if self._bias is None else self._bias.array
            return kernels.prepare(self.weights(channels), bias, groups, pads, method)

        shape_of_weights = (out_c, channels // groups, *self.kernel)
        method = kernels.method_for_size(shape_of_weights, groups, pads, self.stride, self.dilation, out_hw)
        # Only the weights a map of this size needs: F(4x4, 3x3)'s are 4 times the size.
        prepared = self._derive((method, channels, pads), lambda: prepare(method))
        if prepared.method in ("pointwise", "depthwise", "winograd"):  # they read the map itself
            return prepared, None
        return prepared, prepared.tap_offsets(self.stride, self.dilation, *kernels.plane_size(shape, pads, self.stride))

    def _derive(self, key, compute):
        """``compute()``, kept under ``key`` between calls (sizes vary from image to image: the
        cache is emptied when it grows past 64 entries). A ShapeError is raised, never kept.
        Safe when a run computes images on several threads: at worst two compute the same value."""
        derived = self._derived
        value = derived.get(key)
        if value is None:
            value = compute()
            if len(derived) >= 64:
                derived.clear()
            derived[key] = value
        return value


@register_stage("conv_transpose")
class ConvTranspose(Stage):
    """Transposed 2-D convolution, = torch ``conv_transpose2d`` and ONNX ConvTranspose: each input
    pixel adds its weighted kernel into the output, ``stride`` apart, then the padding is cropped
    off; then an optional bias and activation.

    ``filters`` are weights ``(C_in, O/groups, kh, kw)`` (torch's and ONNX's layout): a ``.npy``
    path, a tensor of the weights file, or a nested list. The output size is ``(H - 1) * stride
    - pad_top - pad_bottom + dilation * (kh - 1) + output_padding + 1`` (``padding``: an int,
    ``[ph, pw]`` or four numbers ``[top, left, bottom, right]``, ONNX's ``pads``). It runs as
    the conv kernel on the input with ``stride - 1`` zeros between its pixels, and the flipped,
    transposed weights.

    Examples
    --------
    >>> x = np.array([[1, 2], [3, 4]], np.float32)[None]
    >>> ConvTranspose(type="conv_transpose", filters=[[[[1, 0], [0, -1]]]], stride=2)(x)[0]
    array([[ 1.,  0.,  2.,  0.],
           [ 0., -1.,  0., -2.],
           [ 3.,  0.,  4.,  0.],
           [ 0., -3.,  0., -4.]], dtype=float32)
    """

    summary = "transposed 2-D convolution (= torch conv_transpose2d, ONNX ConvTranspose): learnt upsampling"
    example: ClassVar[dict] = {"filters": [[[[1.0, 0.5], [0.5, 0.25]]]], "stride": 2}

    filters: ArrayValue = Field(description="weights (C_in, O/groups, kh, kw): a .npy path, a tensor name or a nested list")
    bias: Literal[False] | ArrayValue = Field(False, description="false, or O numbers (a list, a .npy path or a tensor)")
    stride: pair(1) = Field((1, 1), description="int or [sh, sw]")
    padding: padding_spec() = Field((0, 0), description="int, [ph, pw] or [top, left, bottom, right]: cropped off the "
                                                        "full output")
    output_padding: pair(0) = Field((0, 0), description="int or [h, w]: added at the bottom and right of the output; "
                                                        "less than the stride or the dilation")
    dilation: pair(1) = Field((1, 1), description="int or [dh, dw]: spacing between kernel taps")
    groups: PositiveInt = Field(1, description="input and output channels split in groups, as in torch")
    activation: ActivationValue = ACTIVATION_FIELD

    _weights: HeldArray | None = PrivateAttr(None)
    _bias: HeldArray | None = PrivateAttr(None)
    _derived: DerivedCache = PrivateAttr(default_factory=DerivedCache)

    _check_filters = array_check("filters", ndim=4, expected="(C_in, O/groups, kh, kw)")
    _check_bias = array_check("bias", ndim=1, expected="(O,)")

    @field_validator("bias", mode="before")
    @classmethod
    def _bias_not_true(cls, value):
        if value is True:
            raise ValueError("true gives no values: give one number per output channel, a .npy path or a tensor name")
        return value

    @model_validator(mode="after")
    def _hold_arrays(self, info: ValidationInfo):
        weights = stage_array(self.filters, info, "filters", ndim=4, expected="(C_in, O/groups, kh, kw)")
        if weights.shape[0] % self.groups:
            raise ValueError(f"groups {self.groups} must divide the weights' {weights.shape[0]} input channels")
        self._weights = HeldArray(weights)
        if self.bias is not False:
            bias = stage_array(self.bias, info, "bias", ndim=1, expected="(O,)")
            if bias.size != self.out_channels:
                raise ValueError(f"bias has {bias.size} values, the weights give {self.out_channels} output channels")
            self._bias = HeldArray(bias)
        for axis, extra, s, d in zip("hw", self.output_padding, self.stride, self.dilation):
            if extra >= max(s, d):
                raise ValueError(f"output_padding must be smaller than the stride or the dilation, got {extra} "
                                 f"along {axis} for stride {s} and dilation {d}")
        return self

    @classmethod
    def example_call(cls, params: dict, x: np.ndarray):
        """The example on ``x`` (see :func:`poolcli.explain.example_call`): its one filter for each
        input channel, summed into one output."""
        params = {**params, "filters": params["filters"] * x.shape[0]}
        return params, cls.model_validate(params), (x,)

    @property
    def out_channels(self) -> int:
        return self._weights.array.shape[1] * self.groups

    @property
    def kernel(self) -> tuple[int, int]:
        return self._weights.array.shape[2:]

    def _pads(self) -> tuple[int, int, int, int]:
        """(top, bottom, left, right) cropped off the full output."""
        (top, bottom), (left, right) = (axis_padding(self.padding, a, 0, 0) for a in (0, 1))
        return top, bottom, left, right

    def output_shape(self, shape):
        channels, height, width = self.expect_map(shape)
        if channels != self._weights.array.shape[0]:
            raise ShapeError(f"the weights take {self._weights.array.shape[0]} input channels, the map has {channels}")
        top, bottom, left, right = self._pads()
        sizes = tuple(
            (n - 1) * s - before - after + d * (k - 1) + extra + 1
            for n, s, before, after, d, k, extra in zip(
                (height, width), self.stride, (top, left), (bottom, right), self.dilation, self.kernel,
                self.output_padding)
        )
        if min(sizes) < 1:
            raise ShapeError(f"padding {top},{bottom} (rows) and {left},{right} (columns) crops away the whole "
                             f"output of a {height}x{width} map")
        out = (self.out_channels, *sizes)
        self.activation.check_shape(out)
        return out

    def params(self, shape):
        return self._weights.array.size + (0 if self._bias is None else self._bias.array.size)

    def macs(self, shape):
        _, height, width = self.expect_map(shape)
        return height * width * self._weights.array.size

    def receptive_field(self, rf, shape):
        # Approximate: an output reads ceil(span / stride) neighbouring inputs along each axis.
        if rf.size is None:
            return rf
        spans = Window.of(self.kernel, self.stride, dilation=self.dilation).effective
        size = tuple(r + (-(-e // s) - 1) * j for r, e, s, j in zip(rf.size, spans, self.stride, rf.jump))
        return ReceptiveField(size, tuple(max(1, j // s) for j, s in zip(rf.jump, self.stride)))

    def _conv_weights(self):
        """The weights of the equivalent convolution, (O, C_in/groups, kh, kw): each group's
        transposed and flipped, prepared for the kernel with the bias (built once)."""

        def build():
            w = self._weights.array
            c_in, per_group_out, kh, kw = w.shape
            per_group_in = c_in // self.groups
            grouped = w.reshape(self.groups, per_group_in, per_group_out, kh, kw)
            conv = grouped.transpose(0, 2, 1, 3, 4)[..., ::-1, ::-1].reshape(self.out_channels, per_group_in, kh, kw)
            conv = np.ascontiguousarray(conv, np.float32)
            bias = None if self._bias is None else self._bias.array
            return kernels.prepare(conv, bias, self.groups, (0, 0, 0, 0))

        cached = self._derived.get("weights")
        if cached is None:
            cached = self._derived["weights"] = build()
        return cached

    def __call__(self, x):
        out_c, out_h, out_w = self.output_shape(x.shape)
        c, h, w = x.shape
        (sh, sw), (dh, dw), (kh, kw) = self.stride, self.dilation, self.kernel
        top, bottom, left, right = self._pads()
        # Full padding of the dilated input: d * (k - 1) less the cropped padding; a negative
        # one crops the dilated input instead.
        before_h, after_h = dh * (kh - 1) - top, dh * (kh - 1) - bottom + self.output_padding[0]
        before_w, after_w = dw * (kw - 1) - left, dw * (kw - 1) - right + self.output_padding[1]
        rows, cols = (h - 1) * sh + 1, (w - 1) * sw + 1
        spread = np.zeros((c, rows + max(0, before_h) + max(0, after_h), cols + max(0, before_w) + max(0, after_w)),
                          np.float32)
        spread[:, max(0, before_h) : max(0, before_h) + rows : sh, max(0, before_w) : max(0, before_w) + cols : sw] = x
        spread = np.ascontiguousarray(spread[:, max(0, -before_h) : spread.shape[1] - max(0, -after_h),
                                             max(0, -before_w) : spread.shape[2] - max(0, -after_w)])
        fused = self.activation.kernel_arguments
        out = kernels.convolve(spread, self._conv_weights(), (0, 0, 0, 0), "zeros", (1, 1), self.dilation,
                               (out_h, out_w), activation=fused, threads=_kernel_threads())
        return out if fused is not None else self.activation.apply(out, inplace=True)


def _kernel_threads() -> int:
    """The threads Numba gives the calling thread: the convolution's products use as many."""
    import numba

    return numba.get_num_threads()
