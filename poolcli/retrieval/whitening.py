"""Learning PCA whitening from a set of descriptors (``poolcli fit-whiten``).

Descriptors are L2-normalised before learning, whatever the run's ``output.normalize``, as
the ``whiten`` stage normalises its input. The method and the file are cnnimageretrieval-pytorch's (``pcawhitenlearn``, ``Lw = {'m': m,
'P': P}``): ``m`` is the mean descriptor, as a ``(D, 1)`` column, and the rows of ``P`` are the
covariance's eigenvectors, strongest first, each divided by the square root of its
eigenvalue, so that the projected descriptors have the identity as covariance. The ``whiten``
stage (:mod:`poolcli.stages.whiten`) applies it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from poolcli.errors import PoolcliError
from poolcli.stages.whiten import l2_normalize


@dataclass(frozen=True)
class WhiteningSummary:
    """What ``fit-whiten`` learnt: from ``descriptors`` vectors of length ``dim``, ``dims``
    components keeping ``variance`` (a fraction) of the total variance."""

    path: str
    descriptors: int
    dim: int
    dims: int
    variance: float


def learn_whitening(vectors: np.ndarray, dims: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """PCA whitening of the rows of ``vectors`` ``(N, D)``: ``(m, P)``, ``m`` float64 ``(D,)``,
    ``P`` float64 ``(dims, D)``, as cirtorch's ``pcawhitenlearn`` (which takes the transpose).

    Each eigenvector's sign is fixed so that its largest entry is positive (an eigen
    decomposition leaves it free). ``dims`` defaults to every direction in which the
    descriptors vary; asking for more is an error, since such a direction would be divided by
    a zero variance.

    Examples
    --------
    >>> x = np.array([[0.0, 0.0], [2.0, 0.0], [0.0, 1.0], [2.0, 1.0]])
    >>> m, P = learn_whitening(x)
    >>> m, P
    (array([1. , 0.5]), array([[1., 0.],
           [0., 2.]]))
    """
    x = np.asarray(vectors, np.float64)
    if x.ndim != 2 or x.shape[1] == 0:
        raise PoolcliError(f"whitening is learnt from descriptors (N, D), got an array of shape {x.shape}")
    n, d = x.shape
    if n < 2:
        raise PoolcliError(f"whitening needs at least 2 descriptors to learn from, got {n}")
    if not np.all(np.isfinite(x)):
        raise PoolcliError("the descriptors contain NaN or infinity: whitening cannot be learnt from them")
    mean = x.mean(axis=0)
    centred = x - mean
    covariance = centred.T @ centred
    covariance = (covariance + covariance.T) / (2 * n)
    eigval, eigvec = np.linalg.eigh(covariance)
    order = np.argsort(eigval, kind="stable")[::-1]
    eigval, eigvec = eigval[order], eigvec[:, order]
    # Directions with no variance (fewer descriptors than D, or constant entries) come out of
    # eigh as rounding noise around 0.
    varying = int(np.sum(eigval > max(eigval[0], 0.0) * max(n, d) * np.finfo(np.float64).eps))
    if varying == 0:
        raise PoolcliError(f"all {n} descriptors are the same: there is nothing to whiten")
    if dims is None:
        dims = varying
    elif dims > varying:
        more = f"(learn from at least {d + 1} descriptors to use all {d})" if n <= d else "(some entries are constant)"
        raise PoolcliError(
            f"dims {dims}: the {n} descriptors vary in only {varying} of their {d} directions; "
            f"give dims {varying} or less {more}"
        )
    elif dims < 1:
        raise PoolcliError(f"dims must be >= 1, got {dims}")
    eigval, eigvec = eigval[:dims], eigvec[:, :dims]
    signs = np.sign(eigvec[np.argmax(np.abs(eigvec), axis=0), np.arange(dims)])
    projection = (eigvec * signs).T / np.sqrt(eigval)[:, None]
    return mean, np.ascontiguousarray(projection)


def save_whitening(path: str | Path, mean: np.ndarray, projection: np.ndarray) -> None:
    """Write ``m`` (as a ``(D, 1)`` column, like cirtorch) and ``P`` to a ``.npz``, atomically."""
    from poolcli.io.output import atomic_write

    def write(f):
        np.savez(f, m=np.asarray(mean, np.float64).reshape(-1, 1), P=np.asarray(projection, np.float64))

    try:
        atomic_write(path, write)
    except OSError as exc:
        raise PoolcliError(f"cannot write {path}: {exc.strerror or exc}") from None


def fit_whitening(out: str | Path, path: str | Path, dims: int | None = None) -> WhiteningSummary:
    """Learn whitening from the descriptors of run folder ``out`` and write it to ``path``."""
    from poolcli.io.output import read_descriptors

    vectors, _ = read_descriptors(out)
    if len(vectors) == 0:
        raise PoolcliError(f"{out} holds no descriptors to learn whitening from")
    vectors = l2_normalize(vectors)
    mean, projection = learn_whitening(vectors, dims)
    total = float(np.sum(np.var(vectors, axis=0)))
    kept = float(np.sum(1.0 / np.sum(projection**2, axis=1)))  # row i of P is v_i / sqrt(lambda_i)
    save_whitening(path, mean, projection)
    return WhiteningSummary(str(path), len(vectors), vectors.shape[1], projection.shape[0], min(1.0, kept / total))
