"""Arrays that stages hold: weights, biases, constants.

A stage parameter that takes an array accepts an inline number or list, the path of a ``.npy``
file (relative to the config's folder, read without pickle), or the name of a tensor in the
config's ``weights:`` safetensors file (:class:`poolcli.config.WeightsFile`, which validation
receives in its context). Every array comes out float32, C-contiguous and read-only.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import numpy as np
from pydantic import BeforeValidator, ValidationInfo, field_validator


@dataclass(frozen=True, eq=False)
class HeldArray:
    """An array a stage holds (weights read from a file). Compares by value, so that stages
    compare as pydantic models do (``==`` on bare arrays is element-wise)."""

    array: np.ndarray

    def __eq__(self, other):
        return isinstance(other, HeldArray) and np.array_equal(self.array, other.array)

    __hash__ = None


def is_npy(value: str) -> bool:
    return value.lower().endswith(".npy")


def _frozen(array: np.ndarray) -> np.ndarray:
    array = np.ascontiguousarray(array, dtype=np.float32)
    array.setflags(write=False)
    return array


def _check_shape(array: np.ndarray, what: str, where: str, ndim: int | None, expected: str | None) -> None:
    if array.size == 0 or (ndim is not None and array.ndim != ndim):
        raise ValueError(f"{what}{where} must have shape {expected or f'of {ndim} dimensions'}, got shape {array.shape}")


def read_npy(value: str, info: ValidationInfo, what: str, ndim: int | None = None,
             expected: str | None = None) -> np.ndarray:
    """The float32 array in ``.npy`` file ``value`` (relative to the config folder), with
    ``ndim`` dimensions (any where None) and finite values; ValueError otherwise."""
    path = Path(value).expanduser()
    if not path.is_absolute():
        path = Path((info.context or {}).get("base_dir", ".")) / path
    try:
        array = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise ValueError(f"file not found: {path}") from None
    except (OSError, ValueError) as exc:  # ValueError: not a .npy, or a pickled object array
        raise ValueError(f"cannot read {path} as .npy: {exc}") from None
    if array.dtype.kind not in "biuf":
        raise ValueError(f"{what} in {path} must be numbers, got dtype {array.dtype}")
    _check_shape(array, what, f" in {path}", ndim, expected)
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{what} in {path} contain NaN or infinity")
    return _frozen(array)


def weights_file(info: ValidationInfo):
    """The config's :class:`poolcli.config.WeightsFile`, or None where it has no ``weights:``."""
    return (info.context or {}).get("weights")


def read_tensor(name: str, info: ValidationInfo, what: str, ndim: int | None = None,
                expected: str | None = None) -> np.ndarray:
    """Tensor ``name`` of the config's weights file, float32; ValueError (with "did you mean")
    where there is no such tensor or its shape is wrong."""
    weights = weights_file(info)
    if weights is None:
        raise ValueError(f"'{name}' is not a .npy path, and the config has no weights: file to hold a tensor of "
                         "that name")
    array = weights.get(name)
    if array is None:
        guess = difflib.get_close_matches(name, weights.names, n=1)
        hint = f" (did you mean '{guess[0]}'?)" if guess else ""
        raise ValueError(f"no tensor '{name}' in {weights.label}{hint}")
    _check_shape(array, what, f" (tensor '{name}')", ndim, expected)
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{what} (tensor '{name}' in {weights.label}) contain NaN or infinity")
    return array


def stage_array(value, info: ValidationInfo, what: str, ndim: int | None = None,
                expected: str | None = None, max_ndim: int | None = None) -> np.ndarray:
    """The float32 array a parameter gives: an inline number or (nested) list, a ``.npy`` path or a
    tensor name. ``ndim`` (where not None) is required of files and tensors; an inline number is
    (1,) and an inline list must have ``ndim`` dimensions too; ``max_ndim`` is the most any may have."""
    array = _stage_array(value, info, what, ndim, expected)
    if max_ndim is not None and array.ndim > max_ndim:
        raise ValueError(f"{what} must have at most {max_ndim} dimensions (C, H, W), got shape {array.shape}")
    return array


def array_check(*fields: str, ndim: int | None = None, expected: str | None = None, max_ndim: int | None = None):
    """A field validator that reads each of ``fields`` (when given) with :func:`stage_array`, so that a
    missing tensor or a wrong shape is reported at the field (``stages[3] (conv 'x').bias: ...``);
    the model's own validator then reads it again (cheap: the weights file keeps what it read)."""

    def check(cls, value, info: ValidationInfo):
        if value is not None and value is not False:
            stage_array(value, info, info.field_name, ndim, expected, max_ndim)
        return value

    return field_validator(*fields)(check)


def _stage_array(value, info, what, ndim, expected) -> np.ndarray:
    if isinstance(value, str):
        if is_npy(value):
            return read_npy(value, info, what, ndim, expected)
        return read_tensor(value, info, what, ndim, expected)
    if isinstance(value, bool):
        raise ValueError(f"{what} must be numbers, got {value}")
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be a number, a list of numbers (rectangular), a .npy path or a tensor "
                         f"name, got {value!r}") from None
    if array.ndim == 0:
        array = array.reshape(1)
    _check_shape(array, what, "", ndim, expected)
    if not all(math.isfinite(v) for v in array.ravel()):
        raise ValueError(f"{what} must be finite, got {value!r}")
    return _frozen(array)


def _not_bool(value):
    if isinstance(value, bool):
        raise ValueError(f"{str(value).lower()} gives no values: give a number, a list, a .npy path or a tensor name")
    return value


#: The type of a parameter that takes an array: a number, a (nested) list, a .npy path or a tensor name.
ArrayValue = Annotated[float | list | str, BeforeValidator(_not_bool)]
