"""Built-in filter banks of the ``conv`` stage, in pure NumPy.

A 2-D bank is a float32 array ``(F, kh, kw)`` of F filters that the stage applies to the channel
mean or to each channel; ``random`` gives full weights ``(O, C/groups, kh, kw)`` on the input
channels. Filters are applied as PyTorch applies weights: by cross-correlation, so ``sobel``'s
x filter gives a positive response where the image gets brighter to the right.

Every filter is centred on ``((kh - 1) / 2, (kw - 1) / 2)``; ``identity`` puts its delta at
``((kh - 1) // 2, (kw - 1) // 2)``, so that with ``padding: same`` it returns its input for any
kernel size (and any dilation of an odd size). Offsets are ``y`` down the rows and ``x`` along the columns (the width).

Examples
--------
>>> make_bank("sobel", (3, 3))[0]
array([[-1.,  0.,  1.],
       [-2.,  0.,  2.],
       [-1.,  0.,  1.]], dtype=float32)
>>> make_bank("gabor", (15, 15), (("orientations", 4), ("wavelengths", (4.0,)), ("phase", "both"),
...                                 ("bandwidth", 1.0))).shape
(8, 15, 15)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable

import numpy as np


def _offsets(kernel: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(y, x) offsets of each tap from the kernel centre, as two (kh, kw) float64 grids."""
    kh, kw = kernel
    y = np.arange(kh) - (kh - 1) / 2
    x = np.arange(kw) - (kw - 1) / 2
    return np.meshgrid(y, x, indexing="ij")


def gaussian_size(sigma: float) -> int:
    """Default kernel size for a Gaussian envelope: ``2 * ceil(3 * sigma) + 1`` (3 sigma each side).

    >>> gaussian_size(1.0), gaussian_size(1.5)
    (7, 11)
    """
    if not math.isfinite(3 * sigma):
        raise ValueError(f"sigma {sigma:g} is too large for any kernel")
    return 2 * math.ceil(3 * sigma) + 1


def gabor_sigma(wavelength: float, bandwidth: float) -> float:
    """Envelope sigma of a Gabor filter with a half-response spatial-frequency ``bandwidth`` in
    octaves (the rule of scikit-image's ``gabor_kernel``): about ``0.562 * wavelength`` for one octave.

    >>> round(gabor_sigma(8.0, 1.0), 3)
    4.497
    """
    b = 2.0**bandwidth
    return wavelength / math.pi * math.sqrt(math.log(2) / 2) * (b + 1) / (b - 1)


# --- the banks ----------------------------------------------------------------------------------


def identity(kernel):
    """One centred delta: the output is the input (shifted by the padding)."""
    bank = np.zeros((1, *kernel))
    bank[0, (kernel[0] - 1) // 2, (kernel[1] - 1) // 2] = 1.0
    return bank


def box(kernel):
    """One mean filter: every tap ``1 / (kh * kw)``."""
    return np.full((1, *kernel), 1.0 / (kernel[0] * kernel[1]))


def gaussian(kernel, sigma):
    """One isotropic Gaussian ``exp(-(x^2 + y^2) / (2 sigma^2))``, scaled to sum to 1."""
    y, x = _offsets(kernel)
    g = np.exp(-(x * x + y * y) / (2 * sigma * sigma))
    return (g / g.sum())[None]


def _x_and_y(derivative_along_x) -> np.ndarray:
    """The x filter (derivative along the width) and its transpose, the y filter."""
    fx = np.array(derivative_along_x, np.float64)
    return np.stack([fx, fx.T])


def sobel(kernel):
    """Sobel x ``[[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]]`` and y (its transpose), unscaled."""
    return _x_and_y([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]])


def scharr(kernel):
    """Scharr x ``[[-3, 0, 3], [-10, 0, 10], [-3, 0, 3]]`` and y (its transpose), unscaled."""
    return _x_and_y([[-3, 0, 3], [-10, 0, 10], [-3, 0, 3]])


def prewitt(kernel):
    """Prewitt x ``[[-1, 0, 1], [-1, 0, 1], [-1, 0, 1]]`` and y (its transpose), unscaled."""
    return _x_and_y([[-1, 0, 1], [-1, 0, 1], [-1, 0, 1]])


def laplacian(kernel):
    """The 4-neighbour Laplacian ``[[0, 1, 0], [1, -4, 1], [0, 1, 0]]``."""
    return np.array([[[0, 1, 0], [1, -4, 1], [0, 1, 0]]], np.float64)


def log(kernel, sigma):
    """Laplacian of Gaussian ``(r^2 - 2 sigma^2) / (2 pi sigma^6) * exp(-r^2 / (2 sigma^2))``
    (negative at the centre), less its mean over the kernel so that flat regions give exactly 0."""
    y, x = _offsets(kernel)
    r2 = x * x + y * y
    f = (r2 - 2 * sigma**2) / (2 * math.pi * sigma**6) * np.exp(-r2 / (2 * sigma**2))
    return (f - f.mean())[None]


PHASES = {"even": ("even",), "odd": ("odd",), "both": ("even", "odd")}


def gabor(kernel, orientations, wavelengths, phase, bandwidth):
    """Gabor filters: an isotropic Gaussian envelope (sigma from ``gabor_sigma``) times a
    carrier ``cos`` (even) or ``sin`` (odd) of ``2 pi u / wavelength``, where
    ``u = x cos(theta) + y sin(theta)`` and ``theta = k pi / orientations`` (theta 0 varies
    along the width, as sobel x; theta grows from the width axis towards the height axis).
    Each filter is made zero-mean over the kernel, then scaled to unit L2 norm.

    Order: ``index = (wavelength_index * orientations + k) * len(phases) + phase_index``, phases
    ``(even, odd)`` for ``both``.
    """
    y, x = _offsets(kernel)
    filters = []
    for wavelength in wavelengths:
        sigma = gabor_sigma(wavelength, bandwidth)
        envelope = np.exp(-(x * x + y * y) / (2 * sigma * sigma))
        for k in range(orientations):
            theta = math.pi * k / orientations
            angle = 2 * math.pi * (x * math.cos(theta) + y * math.sin(theta)) / wavelength
            for name in PHASES[phase]:
                f = envelope * (np.cos(angle) if name == "even" else np.sin(angle))
                f = f - f.mean()
                norm = np.sqrt(np.sum(f * f))
                filters.append(f / norm if norm > 0 else f)
    return np.stack(filters)


def random(kernel, in_channels, out_channels, seed):
    """He-normal weights ``(O, C/groups, kh, kw)``:
    ``numpy.random.default_rng(seed).normal(0, sqrt(2 / fan_in), shape)`` with
    ``fan_in = C/groups * kh * kw``, then cast to float32."""
    shape = (out_channels, in_channels, *kernel)
    std = math.sqrt(2.0 / (in_channels * kernel[0] * kernel[1]))
    return np.random.default_rng(seed).normal(0.0, std, shape)


# --- the registry --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Bank:
    """How to build one bank.

    ``params``: the stage parameters the bank reads (others are config errors with it);
    ``default_size``: the kernel size when ``kernel_size`` is omitted, from those parameters;
    ``fixed``: that size is the only one allowed; ``min_size``: smaller kernels are errors;
    ``full``: full 4-D weights on the input channels (else F 2-D filters); ``count``: the
    number of filters (or output channels), from the same parameters, without building them.
    """

    make: Callable[..., np.ndarray]
    params: tuple[str, ...] = ()
    default_size: Callable[..., int] = lambda **params: 3
    fixed: bool = False
    min_size: int = 1
    full: bool = False
    count: Callable[..., int] = lambda **params: 1


BANKS: dict[str, Bank] = {
    "identity": Bank(identity, default_size=lambda: 1),
    "box": Bank(box),
    "gaussian": Bank(gaussian, ("sigma",), default_size=gaussian_size),
    "sobel": Bank(sobel, fixed=True, count=lambda: 2),
    "scharr": Bank(scharr, fixed=True, count=lambda: 2),
    "prewitt": Bank(prewitt, fixed=True, count=lambda: 2),
    "laplacian": Bank(laplacian, fixed=True),
    "log": Bank(log, ("sigma",), default_size=gaussian_size, min_size=3),
    "gabor": Bank(
        gabor,
        ("orientations", "wavelengths", "phase", "bandwidth"),
        default_size=lambda orientations, wavelengths, phase, bandwidth: gaussian_size(
            gabor_sigma(max(wavelengths), bandwidth)
        ),
        min_size=3,
        count=lambda orientations, wavelengths, phase, bandwidth: orientations * len(wavelengths) * len(PHASES[phase]),
    ),
    "random": Bank(random, ("out_channels", "seed"), full=True, count=lambda out_channels, seed: out_channels),
}

#: The most values a bank may hold (256 MiB of float32). A kernel_size, sigma or wavelength so
#: large, or so many filters, that the bank would not fit is an error found before building it.
MAX_BANK_VALUES = 2**26


def check_bank_size(name: str, kernel: tuple[int, int], params: tuple[tuple[str, object], ...] = (),
                    in_channels: int = 1) -> None:
    """ValueError if bank ``name`` would hold more than :data:`MAX_BANK_VALUES` values."""
    bank = BANKS[name]
    filters = bank.count(**dict(params)) * (in_channels if bank.full else 1)
    values = filters * kernel[0] * kernel[1]
    if values > MAX_BANK_VALUES:
        raise ValueError(
            f"the {name} bank would hold {values:.3g} values ({filters} filters of {kernel[0]}x{kernel[1]}), more than "
            f"the limit of {MAX_BANK_VALUES}; give a smaller kernel_size, sigma or wavelength, or fewer filters"
        )


def default_kernel_size(name: str, params: tuple[tuple[str, object], ...] = ()) -> tuple[int, int]:
    """The kernel size bank ``name`` uses when ``kernel_size`` is omitted.

    >>> default_kernel_size("gaussian", (("sigma", 2.0),))
    (13, 13)
    """
    size = BANKS[name].default_size(**dict(params))
    return size, size


@lru_cache(maxsize=64)
def make_bank(name: str, kernel: tuple[int, int], params: tuple[tuple[str, object], ...] = (),
              in_channels: int | None = None) -> np.ndarray:
    """Bank ``name`` as a read-only float32 array, built once per set of arguments.

    ``params`` are the bank's parameters as ``(name, value)`` pairs (lists as tuples, so that
    the call can be cached); ``in_channels`` (C/groups) is for ``random`` only.
    """
    check_bank_size(name, kernel, params, in_channels or 1)
    bank = BANKS[name]
    extra = {"in_channels": in_channels} if bank.full else {}
    array = np.ascontiguousarray(bank.make(tuple(kernel), **extra, **dict(params)), dtype=np.float32)
    array.setflags(write=False)
    return array
