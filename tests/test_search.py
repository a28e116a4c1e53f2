"""poolcli search and index: blockwise exact cosine search against a brute-force NumPy
computation, the faiss index against exact search, the command's output and its errors."""

import json
import subprocess
import sys
import tracemalloc

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from poolcli.cli import app
from poolcli.errors import OutputError, PoolcliError
from poolcli.io.output import metadata_schema, part_name, save_json, save_npy
from poolcli.retrieval.search import DescriptorSet, _block_top_k, exact_search, search

runner = CliRunner()


def fake_run(folder, vectors, shard_size, complete=True):
    """A descriptors run folder holding ``vectors`` (key i = row i), without running a pipeline."""
    for sub in ("descriptors", "metadata", "stats"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    n = len(vectors)
    for shard, first in enumerate(range(0, n, shard_size)):
        rows = range(first, min(n, first + shard_size))
        save_npy(folder / "descriptors" / part_name(shard, ".npy"), vectors[first : rows.stop])
        table = pa.Table.from_pylist([
            {"key": k, "path": f"/img/{k:07d}.png", "width": 1, "height": 1, "mode": "RGB", "exif_orientation": 1,
             "sha256": "", "shard": shard, "row": k - first} for k in rows], schema=metadata_schema("descriptors"))
        pq.write_table(table, folder / "metadata" / part_name(shard, ".parquet"))
        save_json(folder / "stats" / part_name(shard, ".json"), {"shard": shard, "written": len(rows)})
    save_json(folder / "manifest.json", {"kind": "descriptors", "dim": vectors.shape[1], "dtype": str(vectors.dtype),
                                         "shard_size": shard_size, "inputs": n, "complete": complete,
                                         "config_sha256": "c", "input_list_sha256": "i"})
    return folder


def brute_force(database, queries, k):
    """Cosine similarity of every pair in float64, sorted: (scores, rows)."""
    db = database.astype(np.float64)
    db /= np.maximum(np.linalg.norm(db, axis=1, keepdims=True), 1e-12)
    q = queries.astype(np.float64)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    scores = q @ db.T
    rows = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, rows, axis=1), rows


def assert_same_neighbours(got_scores, got_rows, want_scores, want_rows, tol=1e-5):
    """Rows equal wherever the reference's scores are not tied within float32 rounding."""
    np.testing.assert_allclose(got_scores, want_scores, atol=tol)
    for q in range(len(want_rows)):
        for j in range(want_rows.shape[1]):
            if got_rows[q, j] != want_rows[q, j]:
                others = np.abs(want_scores[q] - want_scores[q, j])
                assert np.sum(others < tol) > 1, f"query {q} rank {j}: row {got_rows[q, j]} != {want_rows[q, j]}"


@pytest.mark.parametrize("shard_size, budget", [(1000, 2**30), (333, 20_000), (97, 1)])
def test_exact_search_equals_brute_force(tmp_path, rng, shard_size, budget):
    database = rng.standard_normal((3000, 24)).astype(np.float32)
    queries = np.concatenate([rng.standard_normal((5, 24)), database[[7, 2999]] * 3]).astype(np.float32)
    descriptors = DescriptorSet(fake_run(tmp_path, database, shard_size))
    scores, rows = exact_search(descriptors, queries, k=10, budget=budget)
    assert scores.shape == rows.shape == (7, 10)
    assert_same_neighbours(scores, rows, *brute_force(database, queries, 10))
    assert rows[5, 0] == 7 and rows[6, 0] == 2999 and scores[5, 0] == pytest.approx(1, abs=1e-6)


def test_ties_go_to_the_lower_row_across_blocks(tmp_path, rng):
    base = rng.standard_normal((1, 8)).astype(np.float32)
    database = rng.standard_normal((50, 8)).astype(np.float32)
    duplicates = [3, 17, 18, 40, 49]  # the same vector, in several blocks and shards
    database[duplicates] = base
    descriptors = DescriptorSet(fake_run(tmp_path, database, 11))
    for budget in (1, 2**30):
        scores, rows = exact_search(descriptors, base * 2, k=3, budget=budget)
        assert rows[0].tolist() == [3, 17, 18]
    scores, rows = _block_top_k(np.array([[1, 5, 5, 5, 2], [5, 5, 5, 5, 5]], np.float32), 2)
    assert sorted(rows[0].tolist()) == [1, 2] and sorted(rows[1].tolist()) == [0, 1]


def test_k_beyond_the_rows_and_nan_rows(tmp_path, rng):
    database = rng.standard_normal((4, 3)).astype(np.float32)
    database[1] = np.nan
    scores, rows = exact_search(DescriptorSet(fake_run(tmp_path, database, 3)), database[[0]], k=10)
    assert rows.shape == (1, 4) and rows[0, 0] == 0 and rows[0, -1] == 1 and scores[0, -1] == -np.inf


def test_memory_stays_bounded_by_the_block_not_the_database(tmp_path, rng):
    """100,000 x 32 rows in 4 shards and 64 queries: a full score matrix would be 25.6 MB, the
    float32 database 12.8 MB; the search allocates a few blocks of the 1 MB budget."""
    database = rng.standard_normal((100_000, 32)).astype(np.float32)
    descriptors = DescriptorSet(fake_run(tmp_path, database, 25_000))
    queries = rng.standard_normal((64, 32)).astype(np.float32)
    tracemalloc.start()
    exact_search(descriptors, queries, k=10, budget=2**20)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 6 * 2**20, f"peak {peak / 2**20:.1f} MiB"


def npy_run(tmp_path, rng, count=30, config_text="stages:\n  - {type: adaptive_avg_pool, output_size: 2}\n  - {type: flatten}\n"):
    inputs = tmp_path / "in"
    inputs.mkdir()
    for i in range(count):
        np.save(inputs / f"{i:03d}.npy", rng.random((3, 8, 8), dtype=np.float32))
    config = tmp_path / "pipe.yaml"
    config.write_text(config_text)
    out = tmp_path / "out"
    result = runner.invoke(app, ["run", str(config), str(inputs), "-o", str(out), "--no-progress", "--shard-size", "7"])
    assert result.exit_code == 0, result.output
    return inputs, out


def test_search_command_json(tmp_path, rng):
    inputs, out = npy_run(tmp_path, rng)
    query = str(inputs / "004.npy")
    result = runner.invoke(app, ["search", str(out), query, "--key", "11", "-k", "3", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert [d["query"] for d in data] == [query, str(inputs / "011.npy")] and [d["key"] for d in data] == [None, 11]
    assert [len(d["results"]) for d in data] == [3, 3]
    first = data[0]["results"][0]
    assert first["key"] == 4 and first["path"] == query and first["score"] == pytest.approx(1, abs=1e-6)
    assert data[1]["results"][0]["key"] == 11
    vectors = np.stack([np.load(inputs / f"{i:03d}.npy").reshape(3, 2, 4, 2, 4).mean(axis=(2, 4)).reshape(-1)
                        for i in range(30)])
    want_scores, want_rows = brute_force(vectors, vectors[[4, 11]], 3)
    for d, scores, rows in zip(data, want_scores, want_rows):
        assert [r["key"] for r in d["results"]] == rows.tolist()
        np.testing.assert_allclose([r["score"] for r in d["results"]], scores, atol=1e-5)


def test_search_command_table(tmp_path, rng):
    inputs, out = npy_run(tmp_path, rng, count=9)
    result = runner.invoke(app, ["search", str(out), "--key", "2", "-k", "2"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == f"query: {inputs / '002.npy'} (key 2)"
    assert lines[1].split() == ["rank", "score", "key", "path"]
    assert lines[2].split() == ["1", "1.0000", "2", str(inputs / "002.npy"), "(the", "query", "itself)"]
    assert len(lines) == 4


def test_queries_use_the_config_folder_for_relative_paths(tmp_path, rng):
    from poolcli.retrieval.whitening import learn_whitening, save_whitening

    save_whitening(tmp_path / "w.npz", *learn_whitening(rng.standard_normal((40, 3))))
    inputs, out = npy_run(tmp_path, rng, count=8, config_text="stages:\n  - {type: gem}\n  - {type: whiten, file: w.npz}\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    result = subprocess.run([sys.executable, "-m", "poolcli", "search", out, inputs / "005.npy", "-k", "1", "--json"],
                            capture_output=True, text=True, cwd=elsewhere)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)[0]["results"][0]["key"] == 5


@pytest.mark.parametrize("args, message", [
    ([], "give at least one query"),
    (["--key", "99"], "--key 99: .* has keys 0 to 8"),
    (["-k", "0", "--key", "1"], "Invalid value for '-k'"),
    (["nothing.png"], "nothing.png"),
])
def test_search_errors(tmp_path, rng, args, message):
    _, out = npy_run(tmp_path, rng, count=9)
    result = runner.invoke(app, ["search", str(out), *args])
    assert result.exit_code in (1, 2) and __import__("re").search(message, result.stderr), result.stderr
    assert "Traceback" not in result.output


def test_search_refuses_maps_and_missing_folders(tmp_path, rng):
    with pytest.raises(OutputError, match="no manifest.json"):
        search(tmp_path / "none", keys=[0])
    _, out = npy_run(tmp_path, rng, count=3, config_text="stages:\n  - {type: max_pool, kernel_size: 2}\n")
    with pytest.raises(OutputError, match="holds feature maps, not descriptors"):
        search(out, keys=[0])


def test_query_of_another_length_is_refused(tmp_path, rng):
    inputs, out = npy_run(tmp_path, rng, count=3)
    np.save(tmp_path / "gray.npy", rng.random((1, 8, 8), dtype=np.float32))
    with pytest.raises(PoolcliError, match="its descriptor has length 4, the run's have length 12"):
        search(out, images=[str(tmp_path / "gray.npy")])


def test_incomplete_run_is_searched_with_a_note(tmp_path, rng):
    database = rng.standard_normal((20, 4)).astype(np.float32)
    results, note = search(fake_run(tmp_path, database, 8, complete=False), keys=[3], k=1)
    assert results[0].hits[0].key == 3 and "not complete" in note


# --- faiss -------------------------------------------------------------------------------------------


def test_flat_index_returns_the_exact_neighbours(tmp_path, rng):
    faiss = pytest.importorskip("faiss")
    database = rng.standard_normal((2000, 16)).astype(np.float32)
    out = fake_run(tmp_path, database, 300)
    result = runner.invoke(app, ["index", str(out)])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str(out / "index" / "knn.index")
    index = faiss.read_index(str(out / "index" / "knn.index"))  # as any faiss user loads it
    assert index.ntotal == 2000 and index.metric_type == faiss.METRIC_INNER_PRODUCT
    queries = rng.standard_normal((20, 16)).astype(np.float32)
    exact_scores, exact_rows = exact_search(DescriptorSet(out), queries, 10)
    q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    faiss_scores, faiss_rows = index.search(q, 10)
    assert_same_neighbours(faiss_scores, faiss_rows, exact_scores, exact_rows)
    results, note = search(out, keys=[5, 1999], k=10)
    assert "using the faiss index" in note and "(flat, exact)" in note
    assert [h.key for h in results[0].hits][:1] == [5] and [h.key for h in results[1].hits][:1] == [1999]
    exact_results, exact_note = search(out, keys=[5, 1999], k=10, use_index=False)
    assert exact_note is None
    assert [[h.key for h in r.hits] for r in results] == [[h.key for h in r.hits] for r in exact_results]


def test_hnsw_index_and_a_stale_index(tmp_path, rng):
    pytest.importorskip("faiss")
    database = rng.standard_normal((500, 8)).astype(np.float32)
    out = fake_run(tmp_path, database, 200)
    assert runner.invoke(app, ["index", str(out), "--kind", "hnsw"]).exit_code == 0
    info = json.loads((out / "index" / "index.json").read_text())
    assert info["kind"] == "hnsw" and info["rows"] == 500 and info["metric"] == "inner_product"
    results, note = search(out, keys=[42], k=5)
    assert "(hnsw, approximate)" in note and results[0].hits[0].key == 42
    fake_run(out, database[:450], 150)  # the run changed since the index was built
    results, note = search(out, keys=[42], k=5)
    assert "built from other descriptors: exact search" in note and results[0].hits[0].key == 42
    result = runner.invoke(app, ["index", str(out), "--kind", "ivf"])
    assert result.exit_code == 1 and "--kind must be one of flat, hnsw" in result.stderr


def test_read_descriptors_is_every_shard_in_the_search_numbering(tmp_path, rng):
    from poolcli import read_descriptors

    database = rng.standard_normal((25, 4)).astype(np.float32)
    out = fake_run(tmp_path, database, 10)
    vectors, metadata = read_descriptors(out)
    np.testing.assert_array_equal(vectors, database)
    assert metadata.column("key").to_pylist() == list(range(25))
    blocks = np.concatenate([block for _, block in DescriptorSet(out).blocks(7)])
    np.testing.assert_array_equal(blocks, vectors)
    keys, paths = DescriptorSet(out).key_path(np.array([24, 0, 13]))
    assert keys.tolist() == [24, 0, 13] and paths[0] == "/img/0000024.png"


def test_the_query_itself_is_marked_or_left_out(tmp_path, rng):
    inputs, out = npy_run(tmp_path, rng)
    query = str(inputs / "004.npy")
    data = json.loads(runner.invoke(app, ["search", str(out), query, "--key", "11", "-k", "3", "--json"]).stdout)
    assert [[r["is_query"] for r in d["results"]] for d in data] == [[True, False, False], [True, False, False]]
    skipped = json.loads(runner.invoke(app, ["search", str(out), query, "--key", "11", "-k", "3", "--json",
                                             "--skip-self"]).stdout)
    assert [[r["key"] for r in d["results"]] for d in skipped] == [[r["key"] for r in d["results"][1:]] for d in
                                                                   json.loads(runner.invoke(app, ["search", str(out), query, "--key", "11", "-k", "4", "--json"]).stdout)]
    assert all(len(d["results"]) == 3 and not any(r["is_query"] for r in d["results"]) for d in skipped)
    other = tmp_path / "copy.npy"  # the same values in a file that is not in OUT: not the query itself
    other.write_bytes((inputs / "004.npy").read_bytes())
    data = json.loads(runner.invoke(app, ["search", str(out), str(other), "-k", "1", "--json"]).stdout)
    assert data[0]["results"][0]["key"] == 4 and data[0]["results"][0]["is_query"] is False


def test_key_takes_a_path(tmp_path, rng, monkeypatch):
    inputs, out = npy_run(tmp_path, rng)
    by_number = json.loads(runner.invoke(app, ["search", str(out), "--key", "7", "-k", "2", "--json"]).stdout)
    monkeypatch.chdir(tmp_path)
    for path in (str(inputs / "007.npy"), "in/007.npy", "007.npy"):  # as recorded, relative, a unique ending
        result = runner.invoke(app, ["search", str(out), "--key", path, "-k", "2", "--json"])
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout) == by_number
    missing = runner.invoke(app, ["search", str(out), "--key", "nope.png"])
    assert missing.exit_code == 1 and "--key nope.png: no input of" in missing.stderr
