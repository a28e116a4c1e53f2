"""Searching a run's descriptors: exact cosine k-nearest neighbours, block by block.

The descriptor shards (local files, or objects under an fsspec URL) are read a block of rows at a time; each block is
normalised and scored against the (normalised) queries, and only the best ``k`` of each query
are kept between blocks. Memory is therefore bounded by one block (its rows and its queries x
rows scores, sized together to :data:`SCORE_BUDGET` bytes), whatever the number of rows: no
N x N or N x Q matrix is ever formed. Ties are broken by the lower row, so results are deterministic.

Rows are numbered as :func:`poolcli.read_descriptors` returns them (complete shards in order):
that is also the id of each vector in a faiss index built by :mod:`poolcli.retrieval.index`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from poolcli.errors import OutputError, PoolcliError
from poolcli.io.storage import read_parquet

#: Bytes for one block: its rows, their normalised copy, their scores and the bookkeeping.
SCORE_BUDGET = 64 * 2**20


@dataclass(frozen=True)
class Hit:
    key: int
    path: str
    score: float
    is_query: bool = False  # the query itself: the row of a --key query, or a query image's own file


@dataclass
class QueryResult:
    """One query's hits, best first. ``query`` is the image path as given, or the path of row
    ``key`` for a ``--key`` query (``key`` is None for images)."""

    query: str
    key: int | None
    hits: list[Hit] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"query": self.query, "key": self.key,
                "results": [{"key": h.key, "path": h.path, "score": h.score, "is_query": h.is_query}
                            for h in self.hits]}


@dataclass(frozen=True)
class Shard:
    number: int
    start: int  # its first row in the run's numbering
    rows: int
    vectors: Path  # or a RemotePath, as OUT is
    metadata: Path


class DescriptorSet:
    """The complete descriptor shards of a run folder, read lazily."""

    def __init__(self, out: str | Path, use: str = "search"):  # use: the command, for its message
        from poolcli.io.output import RunFolder, part_name

        folder = RunFolder(out)
        self.path = folder.path
        manifest = folder.read_manifest()
        if manifest is None:
            raise OutputError(f"{out}: no manifest.json; is this a poolcli output folder?")
        if manifest.get("kind") != "descriptors":
            raise OutputError(f"{out} holds feature maps, not descriptors (kind: {manifest.get('kind')}); {use} needs descriptors")
        self.manifest = manifest
        self.shards: list[Shard] = []
        start = 0
        for stats_file in sorted((self.path / "stats").glob("part-*.json")):
            number = int(stats_file.stem.split("-")[1])
            npy = self.path / "descriptors" / part_name(number, ".npy")
            if not npy.exists():
                continue  # a shard whose every input failed
            with npy.open("rb") as f:
                rows = _npy_header(f, npy)[0][0]
            self.shards.append(Shard(number, start, rows, npy, self.path / "metadata" / part_name(number, ".parquet")))
            start += rows
        self.rows = start
        self.dim = manifest.get("dim")
        if self.dim is None and self.shards:
            with self.shards[0].vectors.open("rb") as f:
                self.dim = _npy_header(f, self.shards[0].vectors)[0][1]

    @property
    def complete(self) -> bool:
        return bool(self.manifest.get("complete"))

    def signature(self) -> dict:
        """What identifies these descriptors (a faiss index built from others is stale)."""
        signature = {"config_sha256": self.manifest.get("config_sha256"),
                     "input_list_sha256": self.manifest.get("input_list_sha256"),
                     "shards": [[s.number, s.rows] for s in self.shards]}
        if self.manifest.get("weights_sha256"):  # only where there are weights: older indexes stay valid
            signature["weights_sha256"] = self.manifest["weights_sha256"]
        return signature

    def blocks(self, block_rows: int) -> Iterator[tuple[int, np.ndarray]]:
        """``(first row, float32 rows)`` blocks of at most ``block_rows`` rows, in row order.

        Each block is read from its file into a buffer of its own (not memory-mapped), so that
        the process holds one block of the database at a time."""
        for shard in self.shards:
            with shard.vectors.open("rb") as f:
                shape, dtype = _npy_header(f, shard.vectors)
                for begin in range(0, shard.rows, block_rows):
                    count = min(block_rows, shard.rows - begin)
                    yield shard.start + begin, _read_rows(f, shard.vectors, count, shape[1], dtype)

    def key_path(self, rows: np.ndarray) -> tuple[np.ndarray, list[str]]:
        """The key and path of each of ``rows`` (reading only the metadata of their shards)."""
        rows = np.asarray(rows, np.int64)
        keys = np.zeros(len(rows), np.int64)
        paths = [""] * len(rows)
        starts = np.array([s.start for s in self.shards], np.int64)
        which = np.searchsorted(starts, rows, side="right") - 1
        for index in np.unique(which):
            shard = self.shards[index]
            table = read_parquet(shard.metadata, ["key", "path"])
            at = np.nonzero(which == index)[0]
            local = rows[at] - shard.start
            shard_keys = table.column("key").to_numpy()
            shard_paths = table.column("path").to_pylist()
            for i, row in zip(at, local):
                keys[i], paths[i] = shard_keys[row], shard_paths[row]
        return keys, paths

    def by_key(self, key: int) -> tuple[np.ndarray, str]:
        """The descriptor and path of the input with ``key``."""
        shard_size = int(self.manifest.get("shard_size") or 1)
        for shard in self.shards:
            if shard.number != key // shard_size:
                continue
            table = read_parquet(shard.metadata, ["key", "path", "row"])
            found = np.nonzero(table.column("key").to_numpy() == key)[0]
            if len(found):
                row = int(table.column("row")[int(found[0])].as_py())
                with shard.vectors.open("rb") as f:
                    (_, dim), dtype = _npy_header(f, shard.vectors)
                    f.seek(f.tell() + row * dim * dtype.itemsize)
                    vector = _read_rows(f, shard.vectors, 1, dim, dtype)[0]
                return vector, table.column("path")[int(found[0])].as_py()
        if 0 <= key < int(self.manifest.get("inputs") or 0):
            raise PoolcliError(f"--key {key}: that input has no descriptor in {self.path} (it failed, or its shard is not written yet)")
        raise PoolcliError(f"--key {key}: {self.path} has keys 0 to {int(self.manifest.get('inputs') or 0) - 1}")


    def key_of_path(self, path: str) -> int:
        """The key of the input at ``path``: the path as the run recorded it, or the same file
        named another way (relative, through a symlink), or the one path that ends with it."""
        wanted = _resolved(path)
        same, ending = [], []
        for shard in self.shards:
            table = read_parquet(shard.metadata, ["key", "path"])
            for key, recorded in zip(table.column("key").to_pylist(), table.column("path").to_pylist()):
                if recorded == path:
                    return int(key)
                if wanted is not None and _resolved(recorded) == wanted:
                    same.append(int(key))
                elif recorded.endswith("/" + path.lstrip("/")):
                    ending.append(int(key))
        if same or len(ending) == 1:
            return (same or ending)[0]
        if ending:
            raise PoolcliError(f"--key {path}: {len(ending)} inputs of {self.path} end with that path; give more of it")
        raise PoolcliError(f"--key {path}: no input of {self.path} has that path (give a path or a row number)")


def _resolved(path: str) -> str | None:
    """A local path made absolute, symlinks followed; None for a URL."""
    from poolcli.io.storage import is_url

    return None if is_url(path) else os.path.realpath(path)


def _npy_header(f, path) -> tuple[tuple[int, int], np.dtype]:
    """Shape and dtype of the C-ordered (N, D) array in the .npy file ``f``, left at its data."""
    version = np.lib.format.read_magic(f)
    read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, fortran_order, dtype = read_header(f)
    if fortran_order or len(shape) != 2:
        raise OutputError(f"{path}: expected a C-ordered (N, D) array, got shape {shape}")
    return (int(shape[0]), int(shape[1])), dtype


def _read_rows(f, path, count: int, dim: int, dtype: np.dtype) -> np.ndarray:
    """The next ``count`` rows of ``f`` as float32, in a buffer of their own."""
    data = f.read(count * dim * dtype.itemsize)
    if len(data) != count * dim * dtype.itemsize:
        raise OutputError(f"{path}: the file is shorter than its header says")
    return np.frombuffer(data, dtype=dtype).reshape(count, dim).astype(np.float32, copy=False)


def normalize_rows(x: np.ndarray) -> np.ndarray:
    """Rows divided by their L2 norm (at least 1e-12), float32: a zero row stays zero."""
    x = np.asarray(x, np.float32)
    norms = np.sqrt(np.einsum("ij,ij->i", x, x, dtype=np.float64)).astype(np.float32)
    return x / np.maximum(norms, np.float32(1e-12))[:, None]


def exact_search(descriptors: DescriptorSet, queries: np.ndarray, k: int,
                 budget: int = SCORE_BUDGET) -> tuple[np.ndarray, np.ndarray]:
    """Exact cosine k-NN: ``(scores, rows)``, each ``(Q, min(k, N))``, best first; ties go to
    the lower row. NaN scores (from NaN descriptors) rank last."""
    queries = normalize_rows(queries)
    n_queries = len(queries)
    k = min(k, descriptors.rows)
    best_scores = np.full((n_queries, k), -np.inf, np.float32)
    best_rows = np.full((n_queries, k), np.iinfo(np.int64).max, np.int64)
    # Per row of a block: the row read and its normalised copy (8 bytes per entry), and its
    # scores with their partition, masks and counts (15 bytes per query).
    block_rows = max(k, 1024, budget // (8 * queries.shape[1] + 15 * n_queries))
    for start, block in descriptors.blocks(block_rows):
        scores = queries @ normalize_rows(block).T
        scores[np.isnan(scores)] = -np.inf
        top_scores, top_rows = _block_top_k(scores, k)
        merged_scores = np.concatenate([best_scores, top_scores], axis=1)
        merged_rows = np.concatenate([best_rows, top_rows + start], axis=1)
        order = np.lexsort((merged_rows, -merged_scores), axis=1)[:, :k]
        best_scores = np.take_along_axis(merged_scores, order, axis=1)
        best_rows = np.take_along_axis(merged_rows, order, axis=1)
    return best_scores, best_rows


def _block_top_k(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` best columns of each row of ``scores`` (ties: the lower column), unsorted."""
    n = scores.shape[1]
    k = min(k, n)
    if k == n:
        return scores, np.broadcast_to(np.arange(n), scores.shape)
    threshold = np.partition(scores, n - k, axis=1)[:, n - k : n - k + 1]  # each row's k-th best
    above = scores > threshold
    tied = scores == threshold
    wanted = k - above.sum(axis=1, keepdims=True)
    keep = above | (tied & (np.cumsum(tied, axis=1, dtype=np.int32) <= wanted))
    rows, cols = np.nonzero(keep)  # exactly k per row, in row-major order
    cols = cols.reshape(len(scores), k)
    return np.take_along_axis(scores, cols, axis=1), cols


def embed(out: str | Path, images: list[str], descriptors: DescriptorSet) -> np.ndarray:
    """Descriptors of ``images`` computed with the run's own ``pipeline.yaml``."""
    from poolcli.config import load_config, parse_yaml, read_config_file
    from poolcli.io.images import load_image
    from poolcli.pipeline import Pipeline

    out = descriptors.path
    config = out / "pipeline.yaml"
    if not config.exists():
        raise OutputError(f"{out}: no pipeline.yaml to compute the queries' descriptors with")
    if isinstance(config, Path):
        data, text = read_config_file(config)
    else:  # OUT in object storage: the pipeline.yaml poolcli wrote there
        text = config.read_text()
        data = parse_yaml(text, str(config))
    # Relative paths in the config (weights, whitening) point to the folder of the config the run was given.
    base = Path(descriptors.manifest.get("config_dir") or (out if isinstance(out, Path) else "."))
    pipeline = Pipeline(load_config(data, base), text=text, source=str(config))
    vectors = []
    for path in images:
        try:
            y = pipeline(load_image(path, pipeline.config.input))
        except PoolcliError as exc:
            message = str(exc)
            raise type(exc)(message if str(path) in message else f"query {path}: {message}") from None
        if descriptors.dim is not None and y.shape[0] != descriptors.dim:
            raise PoolcliError(f"{path}: its descriptor has length {y.shape[0]}, the run's have length {descriptors.dim}")
        vectors.append(y)
    return np.stack(vectors).astype(np.float32)


def search(out: str | Path, images: list[str] = (), keys: list[int | str] = (), k: int = 10,
           use_index: bool = True, skip_self: bool = False) -> tuple[list[QueryResult], str | None]:
    """Search run folder ``out`` for the ``k`` nearest descriptors (cosine) of each query: the
    images (embedded with the run's config) then the inputs with ``keys`` (a key, or an
    input's path). Uses the faiss index in ``OUT/index/`` when there is a current one and
    ``use_index``. A hit that is the query itself (a key's own row, or a query image's own
    file in OUT) is marked ``is_query``, or with ``skip_self`` left out for the next one.
    Returns the results, in query order, and a note on how the search was done (or None for
    exact search)."""
    if k < 1:
        raise PoolcliError(f"-k must be >= 1, got {k}")
    if not images and not keys:
        raise PoolcliError("give at least one query: image paths, or --key N")
    descriptors = DescriptorSet(out)
    if descriptors.rows == 0:
        raise PoolcliError(f"{out} holds no descriptors to search")
    queries, labels = [], []
    if images:
        queries.append(embed(out, list(images), descriptors))
        labels += [(str(p), None) for p in images]
    for key in keys:
        key = int(key) if isinstance(key, int) or str(key).isdigit() else descriptors.key_of_path(str(key))
        vector, path = descriptors.by_key(key)
        queries.append(vector[None])
        labels.append((path, key))
    queries = np.concatenate(queries)
    note = None
    if not descriptors.complete:
        note = f"{out}: the run is not complete; searching the {descriptors.rows} descriptors written so far"
    found, index_note = None, None
    if use_index:
        from poolcli.retrieval.index import search_index

        found, index_note = search_index(descriptors, queries, k + skip_self) or (None, None)
    scores, rows = found if found is not None else exact_search(descriptors, queries, k + skip_self)
    note = "; ".join(n for n in (note, index_note) if n) or None
    keys_found, paths = descriptors.key_path(rows[rows >= 0].reshape(-1))
    results, at = [], 0
    for (label, key), row_scores, row_ids in zip(labels, scores, rows):
        result = QueryResult(label, key)
        itself = _resolved(label) if key is None else None
        for score, row in zip(row_scores, row_ids):
            if row < 0:
                continue
            hit_key, hit_path = int(keys_found[at]), paths[at]
            at += 1
            is_query = hit_key == key if key is not None else itself is not None and _resolved(hit_path) == itself
            if not (is_query and skip_self):
                result.hits.append(Hit(hit_key, hit_path, float(score), is_query))
        del result.hits[k:]
        results.append(result)
    return results, note
