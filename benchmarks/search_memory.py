"""Peak memory and time of exact search on a synthetic run of 1,000,000 x 256 descriptors.

    python benchmarks/search_memory.py make /tmp/million     # writes the run folder (1 GB)
    python benchmarks/search_memory.py search /tmp/million   # measures one query batch
    python benchmarks/search_memory.py check /tmp/million    # the same neighbours as faiss IndexFlatIP

``search`` runs in a fresh process so that its peak resident memory (``ru_maxrss``) is the
search's own: it reports that, the peak of NumPy's allocations (``tracemalloc``), and what a
full N x Q score matrix and the database would take.
"""

from __future__ import annotations

import json
import resource
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np

ROWS, DIM, SHARD, QUERIES, K = 1_000_000, 256, 100_000, 100, 10


def make(folder: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from poolcli.io.output import metadata_schema, part_name, save_json, save_npy

    rng = np.random.default_rng(0)
    for sub in ("descriptors", "metadata", "stats"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    for shard, first in enumerate(range(0, ROWS, SHARD)):
        block = rng.standard_normal((SHARD, DIM), dtype=np.float32)
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        save_npy(folder / "descriptors" / part_name(shard, ".npy"), block)
        keys = np.arange(first, first + SHARD)
        table = pa.table({"key": keys, "path": [f"/images/{k:07d}.jpg" for k in keys], "width": np.full(SHARD, 640, np.int32),
                          "height": np.full(SHARD, 480, np.int32), "mode": ["RGB"] * SHARD,
                          "exif_orientation": np.ones(SHARD, np.int16), "sha256": [""] * SHARD,
                          "shard": np.full(SHARD, shard, np.int32), "row": np.arange(SHARD, dtype=np.int32)},
                         schema=metadata_schema("descriptors"))
        pq.write_table(table, folder / "metadata" / part_name(shard, ".parquet"))
        save_json(folder / "stats" / part_name(shard, ".json"), {"shard": shard, "written": SHARD})
    save_json(folder / "manifest.json", {"kind": "descriptors", "dim": DIM, "dtype": "float32", "shard_size": SHARD,
                                         "inputs": ROWS, "complete": True, "config_sha256": "synthetic",
                                         "input_list_sha256": "synthetic"})
    print(f"wrote {ROWS} x {DIM} descriptors to {folder}")


def queries() -> np.ndarray:
    return np.random.default_rng(1).standard_normal((QUERIES, DIM), dtype=np.float32)


def search(folder: Path) -> None:
    from poolcli.retrieval.search import SCORE_BUDGET, DescriptorSet, exact_search

    descriptors = DescriptorSet(folder)
    q = queries()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    tracemalloc.start()
    started = time.perf_counter()
    scores, rows = exact_search(descriptors, q, K)
    seconds = time.perf_counter() - started
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    np.save(folder / "exact_rows.npy", rows)
    mib = 2**20
    print(json.dumps({
        "rows": descriptors.rows, "dim": DIM, "queries": QUERIES, "k": K, "seconds": round(seconds, 2),
        "score_budget_mib": SCORE_BUDGET / mib,
        "tracemalloc_peak_mib": round(peak / mib, 1),
        "max_rss_before_mib": round(before / 1024, 1), "max_rss_after_mib": round(after / 1024, 1),
        "full_score_matrix_mib": round(ROWS * QUERIES * 4 / mib, 1),
        "database_mib": round(ROWS * DIM * 4 / mib, 1),
    }, indent=2))


def check(folder: Path) -> None:
    import faiss

    from poolcli.retrieval.search import DescriptorSet, normalize_rows

    index = faiss.IndexFlatIP(DIM)
    for _, block in DescriptorSet(folder).blocks(SHARD):
        index.add(normalize_rows(block))
    _, faiss_rows = index.search(normalize_rows(queries()), K)
    exact_rows = np.load(folder / "exact_rows.npy")
    print(f"faiss IndexFlatIP and exact search agree on {np.mean(faiss_rows == exact_rows):.4%} of the {faiss_rows.size} neighbours")


if __name__ == "__main__":
    {"make": make, "search": search, "check": check}[sys.argv[1]](Path(sys.argv[2]))
