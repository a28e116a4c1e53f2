"""faiss indexes of a run's descriptors (``poolcli index``), in ``OUT/index/``.

``OUT/index/knn.index`` is a plain faiss index (``faiss.read_index`` loads it, as autofaiss's
``knn.index``) over the L2-normalised descriptors with the inner-product metric, so its scores
are cosine similarities. Vector ``i`` is row ``i`` of :func:`poolcli.read_descriptors` (the
key and path of each row are in ``OUT/metadata/``). ``OUT/index/index.json`` records the kind
and the descriptors it was built from: ``search`` uses the index only while they are current.

Kinds: ``flat`` (``IndexFlatIP``: exact, the same neighbours as exact search) and ``hnsw``
(``IndexHNSWFlat``, inner product: approximate, fast on millions of rows).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from poolcli.errors import PoolcliError
from poolcli.retrieval.search import DescriptorSet, normalize_rows

KINDS = ("flat", "hnsw")
INDEX_FILE = "knn.index"
INFO_FILE = "index.json"
HNSW_NEIGHBOURS = 32  # faiss's M: links per vector
HNSW_EF_CONSTRUCTION = 80
HNSW_EF_SEARCH = 128
ADD_BATCH = 65_536


@dataclass(frozen=True)
class IndexSummary:
    path: str
    kind: str
    rows: int
    dim: int


def import_faiss():
    try:
        import faiss
    except ImportError:
        raise PoolcliError("faiss is not installed: pip install 'poolcli[faiss]' (or pip install faiss-cpu)") from None
    return faiss


def build_index(out: str | Path, kind: str = "flat") -> IndexSummary:
    """Write ``OUT/index/knn.index`` and ``index.json`` for the descriptors of run folder ``out``."""
    from poolcli.io.output import atomic_write, save_json
    from poolcli.io.storage import as_path

    if kind not in KINDS:
        raise PoolcliError(f"--kind must be one of {', '.join(KINDS)}, got {kind!r}")
    descriptors = DescriptorSet(out, use="index")  # a folder that cannot be indexed is said before faiss is missing
    if descriptors.rows == 0:
        raise PoolcliError(f"{out} holds no descriptors to index")
    faiss = import_faiss()
    dim = int(descriptors.dim)
    if kind == "flat":
        index = faiss.IndexFlatIP(dim)
    else:
        index = faiss.IndexHNSWFlat(dim, HNSW_NEIGHBOURS, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
        index.hnsw.efSearch = HNSW_EF_SEARCH
    for _, block in descriptors.blocks(ADD_BATCH):
        index.add(np.ascontiguousarray(normalize_rows(block)))
    folder = as_path(out) / "index"
    try:
        folder.mkdir(exist_ok=True)
        atomic_write(folder / INDEX_FILE, lambda f: f.write(faiss.serialize_index(index).tobytes()))
        save_json(folder / INFO_FILE, {"kind": kind, "metric": "inner_product", "normalized": True, "rows": descriptors.rows,
                                       "dim": dim, "faiss_version": faiss.__version__, "descriptors": descriptors.signature()})
    except OSError as exc:
        raise PoolcliError(f"cannot write to {folder}: {exc.strerror or exc}") from None
    return IndexSummary(str(folder / INDEX_FILE), kind, descriptors.rows, dim)


def search_index(descriptors: DescriptorSet, queries: np.ndarray, k: int):
    """``((scores, rows), note)`` from the faiss index of the run, or None when there is no
    index, it was built from other descriptors (rebuild it), or faiss is not installed; the
    note then says why exact search is used (None when silence is right: no index)."""
    folder = descriptors.path / "index"
    if not (folder / INDEX_FILE).exists():
        return None
    try:
        info = json.loads((folder / INFO_FILE).read_text())
    except (OSError, ValueError):
        return None, f"{folder} has no readable {INFO_FILE}: exact search (run poolcli index again)"
    if info.get("descriptors") != descriptors.signature():
        return None, f"the index in {folder} was built from other descriptors: exact search (run poolcli index again)"
    try:
        import faiss
    except ImportError:
        return None, "faiss is not installed: exact search (pip install 'poolcli[faiss]')"
    if isinstance(folder, Path):
        index = faiss.read_index(str(folder / INDEX_FILE))  # no copy of the file's bytes beside it
    else:  # an object in a bucket
        index = faiss.deserialize_index(np.frombuffer((folder / INDEX_FILE).read_bytes(), np.uint8))
    if info.get("kind") == "hnsw":
        index.hnsw.efSearch = max(HNSW_EF_SEARCH, k)
    scores, rows = index.search(np.ascontiguousarray(normalize_rows(queries)), min(k, descriptors.rows))
    exact = "exact" if info.get("kind") == "flat" else "approximate"
    return (scores, rows.astype(np.int64)), f"using the faiss index {folder / INDEX_FILE} ({info.get('kind')}, {exact})"
