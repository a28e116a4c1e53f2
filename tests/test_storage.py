"""Inputs and OUT as fsspec URLs (issue 7), on fsspec's in-memory filesystem: listing, the atomic
write of a temporary key then a move, runs and resumes, and the errors a user can meet.
S3 itself, served by moto, is tested in test_scale_out.py."""

import json
import uuid
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

import poolcli
from poolcli import Pipeline, PoolcliError
from poolcli.io.inputs import collect_inputs
from poolcli.io.output import RunFolder
from poolcli.io.storage import RemotePath, as_path, is_url, local_path, read_parquet
from poolcli.runner import run

fsspec = pytest.importorskip("fsspec")

SAMPLES = Path(__file__).parent.parent / "sample_images"
DESCRIPTOR = {"input": {"resize": {"longest": 32}}, "stages": [{"type": "max_pool", "kernel_size": 2}, {"type": "gem"}]}
MAPS = {"input": {"color": "gray", "resize": {"size": [16, 12]}}, "stages": [{"type": "avg_pool", "kernel_size": 2}]}


@pytest.fixture
def bucket(tmp_path):
    """The same small tree of real images on local disk and under a fresh memory:// prefix:
    (local folder, URL of the folder)."""
    memory = fsspec.filesystem("memory")
    root = f"/{uuid.uuid4().hex}"
    local = tmp_path / "images"
    names = ["b.png", "sub/a.png", "sub/c.jpg", "sub/deeper/d.png", "notes.txt", "broken.jpg"]
    photos = sorted(SAMPLES.glob("*.png"))
    for i, name in enumerate(names):
        data = photos[i].read_bytes() if name.endswith(("png", "c.jpg")) else b"not an image"
        (local / name).parent.mkdir(parents=True, exist_ok=True)
        (local / name).write_bytes(data)
        memory.pipe_file(f"{root}/images/{name}", data)
    yield local, f"memory://{root}/images"
    memory.rm(root, recursive=True)


def _without_paths(table):
    return table.drop(["path"])


def test_urls_and_paths_are_told_apart():
    assert is_url("s3://bucket/key") and is_url("gs://b/k") and is_url("memory://x")
    assert not is_url("/data/images") and not is_url("C:\\images") and not is_url("file:///data")
    assert local_path("file:///data/my%20images") == "/data/my images"
    assert as_path("file:///data") == Path("/data") and isinstance(as_path("memory://x/y"), RemotePath)
    with pytest.raises(PoolcliError, match="file:///data/images"):
        local_path("file://otherhost/data")


def test_listing_a_url_follows_the_local_rules(bucket):
    local, url = bucket
    remote = collect_inputs([url])
    here = collect_inputs([str(local)])
    assert [f[len(remote.root):] for f in remote.files] == [f[len(here.root):] for f in here.files]
    assert remote.skipped == here.skipped == 1
    assert remote.root == url and remote.relative(len(remote) - 1) == "sub/deeper/d.png"
    assert collect_inputs([url + "/sub/*.png"]).files == (url + "/sub/a.png",)
    assert collect_inputs([url + "/**/*.png"]).files == tuple(f"{url}/{n}" for n in ("b.png", "sub/a.png", "sub/deeper/d.png"))
    assert collect_inputs([url + "/notes.txt"]).files == (url + "/notes.txt",)  # named: taken whatever it is
    assert len(collect_inputs([url], exclude=url + "/sub")) == 2  # OUT inside the inputs is not read
    with pytest.raises(PoolcliError, match="input not found: memory://"):
        collect_inputs([url + "/absent"])
    with pytest.raises(PoolcliError, match="no file matches"):
        collect_inputs([url + "/*.nothing"])
    with pytest.raises(PoolcliError, match="inputs mix local paths and URLs"):
        collect_inputs([url, str(local)])


def test_a_run_on_urls_writes_what_a_local_run_writes(tmp_path, bucket):
    local, url = bucket
    out = url.replace("/images", "/out")
    pipe = Pipeline.from_config(DESCRIPTOR)
    remote = run(pipe, [url], out, shard_size=2)
    here = run(pipe, [str(local)], tmp_path / "out", shard_size=2)
    assert (remote.written, remote.failed, remote.skipped, remote.shards) == (here.written, here.failed, 1, 3)
    memory = fsspec.filesystem("memory")
    key = out.split("://")[1]
    names = sorted(p[len(key) + 1:] for p in memory.find(key))
    assert names == sorted(p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*")
                           if p.is_file() and p.name != ".lock")
    for shard in range(3):
        part = f"descriptors/part-{shard:05d}.npy"
        assert memory.cat_file(f"{key}/{part}") == (tmp_path / "out" / part).read_bytes()
    vectors, meta = poolcli.read_descriptors(out)
    local_vectors, local_meta = poolcli.read_descriptors(tmp_path / "out")
    np.testing.assert_array_equal(vectors, local_vectors)
    assert _without_paths(meta).equals(_without_paths(local_meta))
    assert meta.column("path").to_pylist()[0] == url + "/b.png"
    manifest = json.loads(memory.cat_file(f"{key}/manifest.json"))
    assert manifest["complete"] and manifest["input_root"] == url

    # resume: a shard without its stats is redone, the others are kept
    memory.rm_file(f"{key}/stats/part-00001.json")
    again = run(pipe, [url], out, shard_size=2)
    assert (again.shards_resumed, again.processed) == (2, 2)
    np.testing.assert_array_equal(poolcli.read_descriptors(out)[0], vectors)
    assert not [p for p in memory.find(key) if p.endswith(".tmp")]


def test_parquet_on_a_url_reads_as_the_same_file_on_disk(tmp_path, bucket):
    _, url = bucket
    out = url.replace("/images", "/out")
    run(Pipeline.from_config(DESCRIPTOR), [url], out, shard_size=2)
    part = "/metadata/part-00001.parquet"
    (tmp_path / "part.parquet").write_bytes(RemotePath(out + part).read_bytes())
    whole = pq.read_table(tmp_path / "part.parquet")
    assert whole.num_rows == 2
    assert read_parquet(RemotePath(out + part)).equals(whole)
    assert read_parquet(tmp_path / "part.parquet").equals(whole)
    assert read_parquet(RemotePath(out + part), ["key", "path"]).equals(whole.select(["key", "path"]))


def test_maps_on_urls(bucket):
    _, url = bucket
    out = url.replace("/images", "/maps")
    summary = run(Pipeline.from_config(MAPS), [url], out, shard_size=3)
    assert summary.written == 4 and summary.map_shape == [1, 8, 6]
    meta = pq.read_table(RemotePath(out + "/metadata/part-00000.parquet").open()).to_pylist()
    assert meta[1]["map_file"] == "maps/sub/a.png.npy"
    stored = np.load(RemotePath(out + "/maps/sub/a.png.npy").open(), allow_pickle=False)
    assert stored.shape == (1, 8, 6) and stored.dtype == np.float32


def test_a_failed_move_leaves_neither_the_object_nor_a_temporary(bucket, monkeypatch):
    _, url = bucket
    target = RemotePath(url + "/out/x.json")

    def broken_move(*args, **kwargs):
        raise RuntimeError("SlowDown: please reduce your request rate")  # as botocore raises: not an OSError

    monkeypatch.setattr(target.fs, "mv", broken_move)
    with pytest.raises(OSError, match="RuntimeError: SlowDown: please reduce"):
        target.write_atomic(b"{}")
    assert not target.exists() and not (target.parent.rglob(".*.tmp"))


def test_storage_errors_are_one_line_and_never_failure_rows(bucket, monkeypatch):
    """A timeout says nothing about the image: the run stops (to be resumed). A file gone since
    the listing is that input's failure row, as on a local disk."""
    _, url = bucket
    out = url.replace("/images", "/out")
    pipe = Pipeline.from_config(DESCRIPTOR)
    memory = type(fsspec.filesystem("memory"))
    original = memory.cat_file

    def failing(error):
        def cat_file(self, path, *args, **kwargs):
            if path.endswith("/sub/a.png"):
                raise error
            return original(self, path, *args, **kwargs)
        return cat_file

    monkeypatch.setattr(memory, "cat_file", failing(TimeoutError("read timed out")))
    with pytest.raises(PoolcliError, match=r"cannot read memory://.*/sub/a.png: read timed out"):
        run(pipe, [url], out, shard_size=10)
    monkeypatch.setattr(memory, "cat_file", failing(FileNotFoundError("gone")))
    summary = run(pipe, [url], out, shard_size=10)
    assert [(Path(f["path"]).name, f["stage"]) for f in summary.failures] == [("broken.jpg", "load"), ("a.png", "load")]
    assert summary.written == 3


def test_a_missing_filesystem_package_says_what_to_install(monkeypatch):
    import fsspec.core

    def missing(url, **kwargs):
        raise ImportError("Install s3fs to access S3")

    monkeypatch.setattr(fsspec.core, "url_to_fs", missing)
    with pytest.raises(PoolcliError, match=r"s3://bucket/in: Install s3fs to access S3 \(pip install 'poolcli\[s3\]'\)"):
        collect_inputs(["s3://bucket/in"])
    with pytest.raises(PoolcliError, match=r"pip install 'poolcli\[s3\]'"):
        RunFolder("s3://bucket/out")


@pytest.mark.parametrize("where", ["local", "memory"])
def test_a_killed_runs_temporaries_are_removed_and_nothing_else(tmp_path, bucket, where):
    out = as_path(str(tmp_path / "out") if where == "local" else bucket[1].replace("/images", "/out"))
    pipe = Pipeline.from_config(DESCRIPTOR)
    run(pipe, [bucket[1] if where == "memory" else str(bucket[0])], str(out), shard_size=2)
    left = [out / ".manifest.json.1.tmp", out / "stats" / ".part-00000.json.1.tmp", out / "maps" / "a" / ".x.npy.1.tmp"]
    mine = out / "my-notes" / ".draft.tmp"
    for path in (*left, mine):
        path.parent.mkdir(parents=True, exist_ok=True)
        (path.write_atomic(b"x") if isinstance(path, RemotePath) else path.write_bytes(b"x"))
    again = run(pipe, [bucket[1] if where == "memory" else str(bucket[0])], str(out), shard_size=2)
    assert again.processed == 0
    assert [p.exists() for p in left] == [False, False, False] and mine.exists()


def test_chunks_of_a_shard_on_urls_resume_to_the_same_bytes(tmp_path, bucket, monkeypatch):
    """The chunks a shard saves as it goes work on object storage too, where Ray tasks write."""
    from poolcli import runner

    monkeypatch.setattr(runner, "CHUNK_IMAGES", 2)
    local, url = bucket
    out = url.replace("/images", "/chunked")
    pipe = Pipeline.from_config(DESCRIPTOR)
    reference = run(pipe, [str(local)], tmp_path / "reference", shard_size=100)

    def stop(done, total):
        if done >= 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run(pipe, [url], out, shard_size=100, progress=stop)
    memory = fsspec.filesystem("memory")
    key = out.split("://")[1]
    assert [p.rsplit("/", 1)[1] for p in sorted(memory.find(f"{key}/.partial"))] == [
        "chunk-000000000000-000000000002.json", "chunk-000000000000-000000000002.npy"]
    resumed = run(pipe, [url], out, shard_size=100)
    assert resumed.processed == 3 and (resumed.written, resumed.failed) == (reference.written, reference.failed)
    assert not memory.find(f"{key}/.partial")
    part = "descriptors/part-00000.npy"
    assert memory.cat_file(f"{key}/{part}") == (tmp_path / "reference" / part).read_bytes()
