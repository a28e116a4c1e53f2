"""Learned PCA whitening of descriptors: the ``whiten`` stage (vector -> vector).

The whitening is read from a ``.npz`` file holding the mean ``m`` ``(D, 1)`` and the projection
``P`` ``(K, D)`` as cnnimageretrieval-pytorch stores them (``Lw = {'m': m, 'P': P}``); ``poolcli
fit-whiten`` writes one (:mod:`poolcli.retrieval.whitening`). The stage L2-normalises its input,
as the descriptors the whitening was learnt from are (cirtorch learns and applies it to its
network's normalised output), then computes cirtorch's
``whitenapply``: ``y = P[:dims] @ (x - m)``, then ``y / (||y|| + 1e-6)``.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import numpy as np
from pydantic import Field, PrivateAttr, ValidationInfo, field_validator, model_validator

from poolcli.config import PositiveInt
from poolcli.errors import ShapeError
from poolcli.io.storage import as_path, is_url, local_path, readable
from poolcli.stages.base import Stage, register_stage
from poolcli.stages.arrays import HeldArray

#: Added to the norm before dividing, as cirtorch's ``whitenapply`` does.
NORM_EPS = 1e-6


def read_whitening(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """``(m, P)`` from a whitening ``.npz`` (a path or an fsspec URL): ``m`` as float64 ``(D,)``,
    ``P`` as float64 ``(K, D)``.

    Raises ValueError with a one-line reason for a missing, unreadable or inconsistent file
    (PoolcliError for a URL whose filesystem is not installed)."""
    path = as_path(path)
    try:
        with np.load(readable(path), allow_pickle=False) as data:
            missing = [k for k in ("m", "P") if k not in data.files]
            if missing:
                raise ValueError(
                    f"{path} holds no {' or '.join(missing)}: a whitening file has the mean 'm' and the "
                    "projection 'P' (poolcli fit-whiten writes one)"
                )
            mean, projection = data["m"], data["P"]
    except FileNotFoundError:
        raise ValueError(f"file not found: {path}") from None
    except (OSError, ValueError, EOFError) as exc:  # not a zip, a pickled array, a truncated file
        if str(exc).startswith(str(path)):
            raise
        raise ValueError(f"cannot read {path} as a whitening .npz: {exc}") from None
    for key, array in (("m", mean), ("P", projection)):
        if array.dtype.kind not in "biuf":
            raise ValueError(f"{key} in {path} must be numbers, got dtype {array.dtype}")
        if not np.all(np.isfinite(array)):
            raise ValueError(f"{key} in {path} contains NaN or infinity")
    if mean.ndim == 2 and mean.shape[1] == 1:
        mean = mean[:, 0]  # cirtorch keeps m as a column
    if mean.ndim != 1 or mean.size == 0:
        raise ValueError(f"m in {path} must have shape (D, 1) or (D,), got {mean.shape}")
    if projection.ndim != 2 or projection.shape[1] != mean.size or projection.shape[0] == 0:
        raise ValueError(f"P in {path} must have shape (K, {mean.size}) to match m, got {projection.shape}")
    return np.ascontiguousarray(mean, np.float64), np.ascontiguousarray(projection, np.float64)


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Rows (or one vector) divided by their L2 norm (at least 1e-12, as torch's normalize), float64."""
    x = np.asarray(x, np.float64)
    return x / np.maximum(np.sqrt(np.sum(x * x, axis=-1, keepdims=True)), 1e-12)


def whiten(x: np.ndarray, mean: np.ndarray, projection: np.ndarray) -> np.ndarray:
    """The ``whiten`` stage on one descriptor ``(D,)`` or on rows ``(N, D)``: each is
    L2-normalised, then cirtorch's ``whitenapply``: ``P @ (x - m)``, divided by its L2 norm +
    1e-6; float32 out (computed in float64)."""
    y = (l2_normalize(x) - mean) @ projection.T
    norm = np.sqrt(np.sum(y * y, axis=-1, keepdims=True))
    return (y / (norm + NORM_EPS)).astype(np.float32)


@register_stage("whiten")
class Whiten(Stage):
    """Learned PCA whitening: the input ``x`` is L2-normalised (as the descriptors the
    whitening was learnt from are), then ``y = P[:dims] @ (x - m)`` and ``y / (||y|| + 1e-6)``,
    with the mean ``m`` and projection ``P`` read from ``file`` (a ``.npz`` as ``poolcli
    fit-whiten`` writes it, cnnimageretrieval-pytorch's ``Lw``). ``dims`` keeps the first
    (strongest) components. Learn the whitening on other images than the ones searched.

    Examples
    --------
    >>> stage = Whiten.from_arrays(np.array([0.6, 0.0]), np.array([[2.0, 0.0], [0.0, 0.5]]))
    >>> stage(np.array([3.0, 4.0], np.float32)).round(4)  # (0.6, 0.8): (2 * 0, 0.5 * 0.8), normalised
    array([0., 1.], dtype=float32)
    """

    summary = "learned PCA whitening from a .npz (file, dims), L2-normalised: (D,) -> (dims,)"
    file: str = Field(description="the .npz with mean m and projection P (poolcli fit-whiten writes it): a path, "
                                  "relative to the config's folder, or an fsspec URL")
    dims: PositiveInt | None = Field(None, description="components kept (the first, strongest); default all of P's rows")
    example: ClassVar[dict] = {"file": "whiten.npz", "dims": 2}

    _mean: HeldArray | None = PrivateAttr(None)
    _projection: HeldArray | None = PrivateAttr(None)

    @field_validator("file")
    @classmethod
    def _readable(cls, value: str, info: ValidationInfo) -> str:
        read_whitening(_resolve(value, info))
        return value

    @model_validator(mode="after")
    def _hold_arrays(self, info: ValidationInfo):
        mean, projection = read_whitening(_resolve(self.file, info))
        if self.dims is not None and self.dims > projection.shape[0]:
            raise ValueError(f"dims: {self.file} holds {projection.shape[0]} components, got dims {self.dims}")
        self._hold(mean, projection)
        return self

    def _hold(self, mean: np.ndarray, projection: np.ndarray) -> None:
        projection = np.ascontiguousarray(projection[: self.dims], np.float64)
        for array in (mean, projection):
            array.setflags(write=False)
        self._mean, self._projection = HeldArray(mean), HeldArray(projection)

    @classmethod
    def from_arrays(cls, mean, projection, dims: int | None = None, file: str = "(in memory)") -> "Whiten":
        """The stage with ``m`` and ``P`` given as arrays instead of read from a file."""
        stage = cls.model_construct(type="whiten", file=file, dims=dims)
        stage._hold(np.ascontiguousarray(np.ravel(mean), np.float64), np.asarray(projection, np.float64))
        return stage

    @classmethod
    def example_call(cls, params: dict, x: np.ndarray) -> tuple[dict, "Whiten", tuple[np.ndarray]]:
        """The example on map ``x`` (see :func:`poolcli.explain.example_call`): the whitening is
        learnt from the map's rows, L2-normalised (each of its C*H rows of W values is one
        descriptor), and applied to the first row. Returns the parameters, the stage and its
        input vector."""
        from poolcli.retrieval.whitening import learn_whitening

        rows = np.asarray(x, np.float32).reshape(-1, x.shape[-1])
        mean, projection = learn_whitening(l2_normalize(rows), dims=params.get("dims"))
        return params, cls.from_arrays(mean, projection, file=params["file"]), (rows[0].copy(),)

    @property
    def in_dim(self) -> int:
        return self._projection.array.shape[1]

    @property
    def out_dim(self) -> int:
        return self._projection.array.shape[0]

    def output_shape(self, shape):
        (length,) = self.expect_vector(shape)
        if length != self.in_dim:
            raise ShapeError(
                f"the whitening in {self.file} was learnt on descriptors of length {self.in_dim}, "
                f"this one has length {length}"
            )
        return (self.out_dim,)

    def params(self, shape):
        return self.out_dim * self.in_dim + self.in_dim

    def macs(self, shape):
        self.output_shape(shape)
        return self.out_dim * self.in_dim + 3 * self.out_dim

    def __call__(self, x):
        return whiten(x, self._mean.array, self._projection.array)


def _resolve(value: str, info: ValidationInfo) -> str | Path:
    value = local_path(value)  # file:///a/w.npz is the path /a/w.npz
    if is_url(value):
        return value
    path = Path(value).expanduser()
    if not path.is_absolute():
        path = Path((info.context or {}).get("base_dir", ".")) / path
    return path

