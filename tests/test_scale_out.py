"""Issue 7: ``poolcli run --engine ray`` and OUT/inputs on S3.

- The Ray engine on a local Ray instance writes the bytes the local engine writes (descriptors,
  metadata, failures, maps, manifest), also when the first descriptor fixes the length; a
  worker killed mid-shard is retried; a driver killed mid-run resumes, skipping finished shards.
- A two-node cluster (``ray start --head`` + ``ray start --address``) in a network namespace
  of its own, so on loopback only, runs a job across both nodes (tests/two_nodes.py).
- S3 served by moto's server mode on loopback: a full run, a resume, ``search`` over the
  result, and the Ray engine reading and writing the bucket.

One Ray instance (2 CPUs) and one S3 server serve the whole module. Without ray, or without
moto and s3fs, their tests skip.
"""

import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import poolcli
from poolcli import Pipeline, PoolcliError
from poolcli.runner import run

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "sample_images"
DESCRIPTOR = {
    "input": {"resize": {"longest": 64}},
    "stages": [{"type": "conv", "filters": "sobel", "padding": "same", "activation": "abs"},
               {"type": "max_pool", "kernel_size": 2}, {"type": "gem"}],
}
MAPS = {"input": {"color": "gray"}, "stages": [{"type": "avg_pool", "kernel_size": 4}]}  # maps follow the image size
KILL_NAME = "kill-worker-here.png"  # decoding this file kills the Ray worker, once (see ray_instance)
ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Fourteen real-photo crops of several sizes in two folders, a broken file, a text file."""
    folder = tmp_path_factory.mktemp("images")
    (folder / "sub").mkdir()
    photos = [Image.open(p).convert("RGB") for p in sorted(SAMPLES.glob("*.png"))[:4]]
    for i in range(14):
        photo = photos[i % len(photos)]
        crop = photo.crop((i * 7, i * 5, i * 7 + 60 + 8 * (i % 3), i * 5 + 48))
        crop.save(folder / ("sub" if i % 2 else ".") / f"img{i:02d}.png")
    (folder / "broken.jpg").write_text("not a jpeg")
    (folder / "notes.txt").write_text("not an image")
    return folder


@pytest.fixture(scope="module")
def config_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("config") / "descriptor.yaml"
    path.write_text(json.dumps(DESCRIPTOR))  # JSON is YAML
    return path


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """moto's S3 server on 127.0.0.1, with this process's AWS settings pointing at it (the Ray
    instance started after it inherits them). None when moto or s3fs is missing."""
    try:
        import s3fs  # noqa: F401
        from moto.server import ThreadedMotoServer
    except ImportError:
        yield None
        return
    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield env
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        server.stop()


@pytest.fixture(scope="module")
def ray_instance(s3, tmp_path_factory):
    """A local Ray instance with 2 CPUs, on loopback, connected in this process; its address
    for other drivers. Its workers carry a hook that kills the worker decoding KILL_NAME, the
    first time only (a marker file records that it happened)."""
    ray = pytest.importorskip("ray")
    marker = tmp_path_factory.mktemp("kill") / "killed"

    def kill_once_hook():  # runs in each new worker of this driver's job
        import os
        import signal

        import poolcli.io.images as images

        decode = images.decode

        def decode_or_die(path, *args, **kwargs):
            target = os.environ["POOLCLI_TEST_KILL_MARKER"]
            if str(path).endswith("kill-worker-here.png") and not os.path.exists(target):
                open(target, "w").close()
                os.kill(os.getpid(), signal.SIGKILL)
            return decode(path, *args, **kwargs)

        images.decode = decode_or_die

    saved = {k: os.environ.get(k) for k in ENV}
    os.environ.update(ENV)
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="ERROR",
             runtime_env={"worker_process_setup_hook": kill_once_hook,
                          "env_vars": {"POOLCLI_TEST_KILL_MARKER": str(marker)}})
    try:
        yield ray.get_runtime_context().gcs_address, marker
    finally:
        ray.shutdown()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _files(out: Path) -> dict[str, bytes]:
    """Every file of a run folder but its stats (timings, node) and lock, by relative path."""
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*"))
            if p.is_file() and p.parent.name != "stats" and p.name != ".lock"}


def _same_run(ray_out: Path, local_out: Path) -> None:
    ray_files, local_files = _files(ray_out), _files(local_out)
    assert sorted(ray_files) == sorted(local_files)
    for name in local_files:
        assert ray_files[name] == local_files[name], f"{name} differs"
    stats = sorted((ray_out / "stats").glob("*.json"))
    assert [p.name for p in stats] == sorted(p.name for p in (local_out / "stats").glob("*.json"))


def _cli(*args, env=None, **kwargs):
    return subprocess.run([sys.executable, "-m", "poolcli", *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, **kwargs)


# --- the Ray engine ------------------------------------------------------------------------------


@pytest.mark.parametrize("config", [DESCRIPTOR, MAPS], ids=["descriptors", "maps"])
def test_ray_engine_writes_the_bytes_the_local_engine_writes(tmp_path, images, ray_instance, config):
    pipe = Pipeline.from_config(config)
    local = run(pipe, [str(images)], tmp_path / "local", shard_size=3)
    seen = []
    remote = run(pipe, [str(images)], tmp_path / "ray", shard_size=3, engine="ray",
                 progress=lambda done, total: seen.append((done, total)))
    _same_run(tmp_path / "ray", tmp_path / "local")
    assert (remote.written, remote.failed, remote.skipped, remote.shards) == (local.written, local.failed, 1, 5)
    assert remote.failures == local.failures and remote.map_shape == local.map_shape
    assert seen[0] == (0, 5) and seen[-1] == (5, 5) and [d for d, _ in seen] == sorted(d for d, _ in seen)
    stats = json.loads((tmp_path / "ray" / "stats" / "part-00000.json").read_text())
    assert len(stats["node"]) == 56  # the Ray node that wrote it


def test_the_first_descriptor_fixes_the_length_as_in_a_local_run(tmp_path, images, ray_instance):
    """flatten over maps of the image's size: the length is the first descriptor's, whatever
    shard finishes first, and the other sizes are failure rows."""
    config = {"input": {"color": "gray"}, "stages": [{"type": "max_pool", "kernel_size": 16}, {"type": "flatten"}]}
    pipe = Pipeline.from_config(config)
    local = run(pipe, [str(images)], tmp_path / "local", shard_size=1)
    remote = run(pipe, [str(images)], tmp_path / "ray", shard_size=1, engine="ray")
    assert local.dim == remote.dim and local.failed > 1  # broken.jpg, and the other sizes
    assert remote.failures == local.failures
    _same_run(tmp_path / "ray", tmp_path / "local")


def test_a_worker_killed_mid_shard_is_retried_without_duplicate_rows(tmp_path, images, ray_instance):
    _, marker = ray_instance
    folder = tmp_path / "inputs"
    folder.mkdir()
    for i, source in enumerate(sorted(images.glob("*.png"))[:6]):
        name = KILL_NAME if i == 4 else source.name
        (folder / name).write_bytes(source.read_bytes())
    pipe = Pipeline.from_config(DESCRIPTOR)
    local = run(pipe, [str(folder)], tmp_path / "local", shard_size=2)
    assert not marker.exists()
    remote = run(pipe, [str(folder)], tmp_path / "ray", shard_size=2, engine="ray")
    assert marker.exists()  # a worker did die while decoding KILL_NAME
    assert (remote.written, remote.failed) == (6, 0)
    _same_run(tmp_path / "ray", tmp_path / "local")


DRIVER = """
import os, signal, sys
import poolcli
from poolcli.runner import run

def die_after_two_shards(done, total):
    if done >= 2:
        os.kill(os.getpid(), signal.SIGKILL)

run(poolcli.Pipeline.from_yaml(sys.argv[1]), [sys.argv[2]], sys.argv[3], shard_size=1, engine="ray",
    address=sys.argv[4], progress=die_after_two_shards)
"""


def test_a_killed_driver_resumes_skipping_finished_shards(tmp_path, images, config_file, ray_instance):
    address, _ = ray_instance
    out = tmp_path / "out"
    killed = subprocess.run([sys.executable, "-c", DRIVER, str(config_file), str(images), str(out), address],
                            capture_output=True, text=True, env={**os.environ, **ENV})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    time.sleep(1)  # the killed job's tasks are stopped by Ray
    finished = {p.name: p.stat().st_mtime_ns for p in (out / "stats").glob("*.json")}
    assert 2 <= len(finished) < 15
    again = _cli("run", config_file, images, "-o", out, "--engine", "ray", "--address", address, "--shard-size", 1,
                 "--json", "--no-progress", env=ENV)
    assert again.returncode == 3, again.stderr  # broken.jpg is a failure row
    summary = json.loads(again.stdout)
    assert summary["shards_resumed"] >= len(finished) and summary["processed"] == 15 - summary["shards_resumed"]
    assert {p.name: p.stat().st_mtime_ns for p in (out / "stats").glob("*.json") if p.name in finished} == finished
    run(Pipeline.from_yaml(config_file), [str(images)], tmp_path / "local", shard_size=1)
    _same_run(out, tmp_path / "local")


def test_ray_engine_refusals(tmp_path, images, ray_instance, monkeypatch):
    pipe = Pipeline.from_config(DESCRIPTOR)
    with pytest.raises(PoolcliError, match="--threads 64: no node of the Ray cluster has 64 CPUs"):
        run(pipe, [str(images)], tmp_path / "out", engine="ray", threads=64)
    with pytest.raises(PoolcliError, match="--address is for --engine ray"):
        run(pipe, [str(images)], tmp_path / "out", address="127.0.0.1:1")
    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    with pytest.raises(PoolcliError, match=r"--engine ray needs Ray, which is not installed: pip install 'poolcli\[ray\]'"):
        run(pipe, [str(images)], tmp_path / "out", engine="ray")


def test_a_task_failing_on_every_try_stops_the_run_with_its_reason(tmp_path, ray_instance):
    """As on a node that does not mount the inputs: the task raises on each of its tries, and
    the run stops with the task's own one-line reason."""
    from poolcli.io.inputs import InputList
    from poolcli.io.output import RunFolder
    from poolcli.ray_engine import run_shards
    from poolcli.runner import RunSummary, _config_text, _manifest

    pipe = Pipeline.from_config(DESCRIPTOR)
    missing = tmp_path / "not-mounted"
    listing = InputList((str(missing / "a.png"),), str(missing))
    folder = RunFolder(tmp_path / "out")
    manifest = _manifest(pipe, listing, 1)
    folder.open(manifest, _config_text(pipe), overwrite=False)
    summary = RunSummary(str(folder.path), pipe.kind, 1, shards=1)
    with pytest.raises(PoolcliError, match=r"the input folder .*not-mounted does not exist on Ray node [0-9a-f]{56}: "):
        run_shards(pipe, listing, folder, manifest, [0], {}, summary, address=None, threads=None, workers=None,
                   max_pixels=10**8, progress=None)
    assert not (tmp_path / "out" / "stats" / "part-00000.json").exists()


def test_two_node_cluster_on_loopback(tmp_path, images, config_file):
    """``ray start --head`` and ``ray start --address`` in a network namespace of their own;
    the job's shards run on both nodes and write what the local engine writes."""
    pytest.importorskip("ray")
    if not sys.platform.startswith("linux"):
        pytest.skip("network namespaces are Linux's")
    try:
        subprocess.run(["unshare", "-n", "ip", "link", "set", "lo", "up"], check=True, capture_output=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        pytest.skip("cannot make a network namespace here (unshare -n and ip are needed, as root)")
    temp_dir = tempfile.mkdtemp(prefix="ray-", dir="/tmp")  # short: Ray's socket paths must fit in 107 bytes
    try:
        done = subprocess.run(["unshare", "-n", sys.executable, str(ROOT / "tests" / "two_nodes.py"), str(config_file),
                               str(images), str(tmp_path / "out"), temp_dir],
                              capture_output=True, text=True, timeout=300)
    finally:
        shutil.rmtree(temp_dir, ignore_errors=True)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["nodes"] == 2 and report["returncode"] == 3, report["stderr"][-3000:]
    nodes = {json.loads(p.read_text())["node"] for p in (tmp_path / "out" / "stats").glob("*.json")}
    assert len(nodes) == 2  # shards ran on both nodes
    run(Pipeline.from_yaml(config_file), [str(images)], tmp_path / "local", shard_size=1)
    _same_run(tmp_path / "out", tmp_path / "local")


# --- S3 ------------------------------------------------------------------------------------------


@pytest.fixture
def bucket(s3, images, request):
    """A fresh bucket holding the images under images/; its name."""
    if s3 is None:
        pytest.skip("S3 tests need moto (server mode) and s3fs: pip install 'poolcli[s3]' 'moto[server]'")
    import s3fs

    name = f"poolcli-{request.node.name.lower().replace('_', '-')[:40]}-{os.getpid()}"
    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    fs.mkdir(name)
    fs.put(str(images) + "/", f"{name}/images/", recursive=True)
    return name


def test_a_run_on_s3_resumes_and_is_searched(tmp_path, images, config_file, bucket):
    import s3fs

    inputs, out = f"s3://{bucket}/images", f"s3://{bucket}/out"
    pipe = Pipeline.from_yaml(config_file)
    summary = run(pipe, [inputs], out, shard_size=4)
    local = run(pipe, [str(images)], tmp_path / "local", shard_size=4)
    assert (summary.written, summary.failed, summary.skipped, summary.shards) == (14, 1, 1, 4)
    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    keys = sorted(k.split("/out/", 1)[1] for k in fs.find(f"{bucket}/out"))
    assert keys == sorted(_files(tmp_path / "local")) + [f"stats/part-0000{i}.json" for i in range(4)]
    for part in ("descriptors/part-00000.npy", "descriptors/part-00003.npy"):
        assert fs.cat_file(f"{bucket}/out/{part}") == (tmp_path / "local" / part).read_bytes()
    vectors, meta = poolcli.read_descriptors(out)
    np.testing.assert_array_equal(vectors, poolcli.read_descriptors(tmp_path / "local")[0])
    assert meta.column("path")[0].as_py() == f"s3://{bucket}/images/img00.png"

    # resume: as if killed while writing shard 2, then the same command again
    fs.rm_file(f"{bucket}/out/stats/part-00002.json")
    fs.rm_file(f"{bucket}/out/descriptors/part-00002.npy")
    again = _cli("run", config_file, inputs, "-o", out, "--shard-size", 4, "--json", "--no-progress")
    assert again.returncode == 3, again.stderr
    assert (json.loads(again.stdout)["shards_resumed"], json.loads(again.stdout)["processed"]) == (3, 4)
    np.testing.assert_array_equal(poolcli.read_descriptors(out)[0], vectors)
    assert not [k for k in fs.find(f"{bucket}/out") if k.endswith(".tmp")]

    found = _cli("search", out, images / "img00.png", "--key", 5, "-k", 3, "--json")
    assert found.returncode == 0, found.stderr
    results = json.loads(found.stdout)
    assert [r["results"][0]["path"] for r in results] == [f"s3://{bucket}/images/img00.png",
                                                         meta.column("path")[meta.column("key").to_pylist().index(5)].as_py()]
    assert results[0]["results"][0]["score"] == pytest.approx(1.0, abs=1e-5)


def test_whitening_and_an_index_on_s3(tmp_path, images, config_file, bucket):
    import s3fs

    out = f"s3://{bucket}/out"
    run(Pipeline.from_yaml(config_file), [f"s3://{bucket}/images"], out, shard_size=4)
    run(Pipeline.from_yaml(config_file), [str(images)], tmp_path / "local", shard_size=4)
    fs = s3fs.S3FileSystem(skip_instance_cache=True)

    learnt = _cli("fit-whiten", out, "-o", f"s3://{bucket}/whiten.npz", "--dims", 2)
    assert learnt.returncode == 0, learnt.stderr
    assert learnt.stdout.strip() == f"s3://{bucket}/whiten.npz"
    assert _cli("fit-whiten", tmp_path / "local", "-o", tmp_path / "whiten.npz", "--dims", 2).returncode == 0
    remote, local = np.load(io.BytesIO(fs.cat_file(f"{bucket}/whiten.npz"))), np.load(tmp_path / "whiten.npz")
    np.testing.assert_array_equal(remote["P"], local["P"])
    whitened = {"stages": [*DESCRIPTOR["stages"], {"type": "whiten", "file": f"s3://{bucket}/whiten.npz"}]}
    x = np.random.default_rng(0).random((3, 32, 40), np.float32)
    np.testing.assert_array_equal(Pipeline.from_config(whitened)(x), Pipeline.from_config(
        {"stages": [*DESCRIPTOR["stages"], {"type": "whiten", "file": str(tmp_path / "whiten.npz")}]})(x))

    pytest.importorskip("faiss")
    indexed = _cli("index", out)
    assert indexed.returncode == 0, indexed.stderr
    assert indexed.stdout.strip() == f"{out}/index/knn.index"
    assert {k.rsplit("/", 1)[1] for k in fs.find(f"{bucket}/out/index")} == {"knn.index", "index.json"}
    found = _cli("search", out, "--key", 5, "-k", 3, "--json")
    assert found.returncode == 0 and "using the faiss index s3://" in found.stderr, found.stderr
    hits = json.loads(found.stdout)[0]["results"]  # crops of the same photo may tie with row 5
    assert 5 in [hit["key"] for hit in hits] and hits[0]["score"] == pytest.approx(1.0, abs=1e-5)


def test_the_ray_engine_reads_and_writes_s3(tmp_path, images, config_file, bucket, ray_instance):
    address, _ = ray_instance
    inputs, out = f"s3://{bucket}/images", f"s3://{bucket}/out"
    done = _cli("run", config_file, inputs, "-o", out, "--engine", "ray", "--address", address, "--shard-size", 4,
                "--json", "--no-progress", env=ENV)
    assert done.returncode == 3, done.stderr
    assert json.loads(done.stdout)["written"] == 14
    local = tmp_path / "local"
    run(Pipeline.from_yaml(config_file), [inputs], local, shard_size=4)  # same inputs, so the same paths
    vectors, meta = poolcli.read_descriptors(out)
    local_vectors, local_meta = poolcli.read_descriptors(local)
    np.testing.assert_array_equal(vectors, local_vectors)
    assert meta.equals(local_meta)


def test_s3_errors_are_one_line(tmp_path, config_file, bucket):
    done = _cli("run", config_file, f"s3://{bucket}/absent", "-o", tmp_path / "out")
    assert done.returncode == 1 and done.stderr.startswith("error: input not found: s3://")
    done = _cli("run", config_file, f"s3://{bucket}/images", "-o", "s3://no-such-bucket-poolcli/out")
    assert done.returncode == 1 and done.stderr.count("\n") == 1 and "no-such-bucket-poolcli" in done.stderr, done.stderr
