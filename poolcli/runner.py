"""``poolcli run``: a pipeline over many inputs, written shard by shard into an output folder.

Inputs are decoded and run through the pipeline by a pool of threads, one image per thread, a
few images ahead of this thread, which writes the results in order. Pillow and the kernels
release the GIL, so with one worker per core and one kernel thread per worker the cores stay
busy with no thread waiting on another: decoding one image overlaps computing the next, and
no parallel kernel waits for a core that a decoding thread holds. Where Numba's threading
layer does not allow kernels on several threads at once (its fallback, workqueue, when neither
OpenMP nor TBB is installed), the workers only decode and the kernels run in this thread with
Numba's own threads, as ``--workers`` and ``--threads`` say. Shard ``i`` holds
keys ``[i*S, (i+1)*S)``; a shard is only ever written whole, so a killed run resumes at the
first incomplete shard and yields exactly the rows of an uninterrupted run. Within a shard,
what is computed is saved as a chunk every :data:`CHUNK_IMAGES` images or
:data:`CHUNK_SECONDS` seconds (:meth:`RunFolder.save_chunk`), and a resumed shard starts after
its last chunk: a killed run loses at most that much work, whatever the shard size.

:func:`process_shard` is the one implementation of a shard: the local engine calls it for each
pending shard in turn, ``--engine ray`` (:mod:`poolcli.ray_engine`) calls it in one Ray task
per shard.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from poolcli import __version__
from poolcli.errors import ConfigError, ImageError, PoolcliError, ShapeError
from poolcli.io.inputs import InputList, collect_inputs
from poolcli.io.output import RunFolder
from poolcli.io.tars import TarMember
from poolcli.pipeline import Pipeline

DEFAULT_MAX_PIXELS = 89_478_485  # Pillow's own limit
# A shard's work is saved after this many images or seconds, whichever comes first: a killed
# run redoes at most that (and the few images being decoded), at the cost of one small file
# per chunk, removed when the shard is written.
CHUNK_IMAGES = 256
CHUNK_SECONDS = 30.0


@dataclass
class RunSummary:
    out: str
    kind: str
    inputs: int
    written: int = 0
    failed: int = 0
    skipped: int = 0  # non-image files in the folders walked, and members of tar shards
    skipped_files: list[str] = field(default_factory=list)  # their paths, sorted
    shards: int = 0
    shards_resumed: int = 0
    processed: int = 0  # inputs handled by this call (the others were in complete shards)
    dim: int | None = None
    map_shape: list[int] | str | None = None
    seconds: float = 0.0
    parallelism: str | None = None  # how the cores were split, where the run measured it
    failures: list[dict] = field(default_factory=list)  # of this session, for the CLI to show

    def to_dict(self) -> dict:
        data = asdict(self)
        data.pop("failures")
        return data


@dataclass
class _Decoded:
    key: int
    array: np.ndarray | None = None
    info: object = None
    error: str | None = None  # the file could not be decoded
    output: np.ndarray | None = None  # the pipeline's output, when the worker ran it
    failure: tuple[str, str] | None = None  # (stage, message) when the worker's pipeline failed
    sample: dict | None = None  # a tar member's url, caption and sample_key (its .json)


def run(
    pipeline: Pipeline,
    inputs: list[str],
    out: str | Path,
    *,
    shard_size: int = 10_000,
    workers: int | None = None,
    threads: int | None = None,
    overwrite: bool = False,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    progress: Callable[[int, int], None] | None = None,
    engine: str = "local",
    address: str | None = None,
    listed: list[str] = (),
) -> RunSummary:
    """Run ``pipeline`` over ``inputs`` into the folder ``out`` (its layout: :mod:`poolcli.io.output`).

    ``inputs`` and ``out`` may be fsspec URLs (``s3://bucket/prefix``); ``listed`` are files
    named one by one (``--files-from``), taken without being looked up. ``engine="ray"`` runs
    each pending shard as a task on the Ray cluster at ``address`` (a new local instance when
    None); ``threads`` and ``workers`` are then per task (default 1 and 2).

    ``progress(done, total)`` is called as images are processed (as shards complete, with
    Ray). Failures are recorded, not raised; a :class:`PoolcliError` is raised for problems
    with the run itself.
    """
    if engine not in ("local", "ray"):
        raise PoolcliError(f"--engine must be local or ray, got {engine!r}")
    if address is not None and engine != "ray":
        raise PoolcliError("--address is for --engine ray")
    if shard_size < 1:
        raise PoolcliError(f"--shard-size must be >= 1, got {shard_size}")
    if max_pixels < 1:
        raise PoolcliError(f"--max-pixels must be >= 1, got {max_pixels}")
    if engine == "ray":  # before OUT is touched: a missing Ray leaves no folder behind
        from poolcli.ray_engine import _import_ray

        _import_ray()
    started = time.perf_counter()
    listing = collect_inputs(inputs, exclude=out, listed=listed)
    folder = RunFolder(out)
    with folder.lock():  # a second run into the same folder is refused, not interleaved
        return _run_locked(pipeline, listing, folder, started, shard_size, workers, threads, overwrite, max_pixels,
                           progress, engine, address)


def _run_locked(pipeline, listing, folder, started, shard_size, workers, threads, overwrite, max_pixels, progress,
                engine, address):
    manifest = _manifest(pipeline, listing, shard_size)
    old = folder.open(manifest, _config_text(pipeline), overwrite)
    if old is not None:
        manifest.update({k: old.get(k) for k in ("dim", "map_shape")})

    n_shards = -(-len(listing) // shard_size)
    summary = RunSummary(str(folder.path), pipeline.kind, len(listing), skipped=listing.skipped,
                         skipped_files=list(listing.skipped_files), shards=n_shards)
    done_stats = {i: s for i in range(n_shards) if (s := folder.shard_stats(i)) is not None}
    summary.shards_resumed = len(done_stats)
    pending = [i for i in range(n_shards) if i not in done_stats]
    folder.remove_chunks()  # those of shards that were complete already
    keys = [k for i in pending
            for k in range(folder.resume_key(i, i * shard_size), min(len(listing), (i + 1) * shard_size))]
    if engine == "ray":
        from poolcli.ray_engine import run_shards

        run_shards(pipeline, listing, folder, manifest, pending, done_stats, summary, address=address,
                   threads=threads, workers=workers, max_pixels=max_pixels, progress=progress)
    else:
        _run_local(pipeline, listing, folder, manifest, pending, keys, done_stats, summary, threads=threads,
                   workers=workers, max_pixels=max_pixels, progress=progress)

    folder.remove_chunks()
    summary.processed = len(keys)
    summary.written = sum(s["written"] for s in done_stats.values())
    summary.failed = sum(s["failed"] for s in done_stats.values())
    for stats in done_stats.values():  # each shard's own, so that parallel shards never race on the manifest
        manifest["map_shape"] = merge_map_shapes(manifest.get("map_shape"), stats.get("map_shape"))
    summary.dim, summary.map_shape = manifest.get("dim"), manifest.get("map_shape")
    summary.seconds = round(time.perf_counter() - started, 3)
    manifest.update(complete=True, counts={
        "inputs": len(listing), "written": summary.written, "failed": summary.failed,
        "skipped": listing.skipped, "shards": n_shards,
    })
    folder.save_manifest(manifest)
    return summary


def _run_local(pipeline, listing, folder, manifest, pending, keys, done_stats, summary, *, threads, workers,
               max_pixels, progress) -> None:
    """The shards one after the other in this process, decoding ahead across shard boundaries."""
    _configure_pillow(max_pixels)
    shard_size = manifest["shard_size"]
    done = len(listing) - len(keys)  # in complete shards, or in saved chunks
    if progress:
        progress(done, len(listing))

    def one_done() -> None:
        nonlocal done
        done += 1
        progress(done, len(listing))
    side_by_side = kernels_threadsafe()  # an image per worker, its kernels on its own threads
    if side_by_side and threads is None and workers is None:
        plan = _plan_parallelism(pipeline, listing, keys, max_pixels)
        if plan is not None:
            summary.parallelism = plan.describe()
            side_by_side, threads = plan.workers > 1, plan.threads
    if side_by_side:
        threads = threads or 1
        _set_threads(threads)  # checks the value; each worker sets it for itself
        workers = workers or max(1, usable_cores() // threads)
        decoded = DecodeAhead(listing, keys, pipeline, max_pixels, workers, compute_threads=threads)
    else:
        _set_threads(threads)
        decoded = DecodeAhead(listing, keys, pipeline, max_pixels, workers)
    try:
        for shard in pending:
            end = min(len(listing), (shard + 1) * shard_size)
            stats, failures = process_shard(pipeline, listing, folder, manifest, shard, shard * shard_size, end, decoded,
                                            on_image=one_done if progress else None)
            done_stats[shard] = stats
            summary.failures.extend(failures)
    except BaseException:  # Ctrl-C, a full disk: stop now, not once a worker's kernel has compiled
        decoded.close(wait=False)
        raise
    decoded.close()


PLAN_MIN_IMAGES = 16  # images per core from which a run measures how to split the cores (a few images' time)


def _plan_parallelism(pipeline, listing: InputList, keys: list[int], max_pixels: int):
    """:func:`poolcli.bench.plan_parallelism` on the run's first image, for runs long enough to
    repay the measurement; None for a short run, a machine of one core, or a first image that
    does not decode or run (the run then reports it as usual)."""
    from poolcli.bench import plan_parallelism
    from poolcli.io.images import decode

    cores = usable_cores()
    if cores < 2 or len(keys) < PLAN_MIN_IMAGES * cores:
        return None
    try:
        x, _ = decode(listing.source(keys[0]), pipeline.config.input, max_pixels)
        return plan_parallelism(pipeline, x, cores)
    except (PoolcliError, ArithmeticError, ValueError, RuntimeError, IndexError):
        return None


def merge_map_shapes(a, b):
    """The map shape of a run from two parts of it: the shape they share, or "varies"."""
    if a is None or b is None:
        return a if b is None else b
    return a if a == b else "varies"


def process_shard(pipeline, listing: InputList, folder: RunFolder, manifest: dict, shard: int, first: int,
                  end: int, decoded: Iterator[_Decoded], node: str | None = None,
                  on_image: Callable[[], None] | None = None) -> tuple[dict, list[dict]]:
    """Run ``pipeline`` over keys ``[first, end)`` and write the shard whole, stats last;
    returns its stats and this call's failure rows.

    The chunks a killed attempt saved of the shard are taken back, and ``decoded`` yields the
    other keys in order, from ``folder.resume_key(shard, first)``; the work is saved again
    as a chunk every :data:`CHUNK_IMAGES` images or :data:`CHUNK_SECONDS` seconds, and the
    chunks are removed once the shard is written. What a killed attempt left of the shard's
    own files is removed first. When the descriptor length is not known yet, the first
    descriptor fixes it in ``manifest``, which is saved at once (before this shard can look
    complete, so that a resumed run agrees); the shard's map shape goes into its stats
    instead, since shards may run in parallel. ``node`` (a Ray node id) is recorded in the
    stats; ``on_image()`` is called after each image.
    """
    started = time.perf_counter()
    kind, dtype = manifest["kind"], np.dtype(manifest["dtype"])
    folder.clear_shard(shard)
    saved_vectors, rows, saved_failures, start = folder.load_chunks(shard, first)
    vectors, failures = [], []  # since the last chunk
    failures_here = []  # this call's, for the caller to show
    map_shape = None
    for row in rows:
        if "map_file" in row:
            map_shape = merge_map_shapes(map_shape, row.pop("_map_shape"))
    chunk_start, chunk_time = start, time.perf_counter()

    def fail(key, stage, error):
        failure = {"key": key, "path": listing.path(key), "stage": stage, "error": error}
        failures.append(failure)
        failures_here.append(failure)

    for key in range(start, end):
        item = next(decoded)
        if item.key != key:
            raise PoolcliError(f"internal error: shard {shard} expected input {key}, was given {item.key}")
        _process_item(pipeline, listing, folder, manifest, shard, item, len(rows), rows, vectors, fail, dtype, kind)
        if kind == "maps" and rows and rows[-1]["key"] == key:
            map_shape = merge_map_shapes(map_shape, rows[-1]["_map_shape"])
        now = time.perf_counter()
        if key + 1 < end and (key + 1 - chunk_start >= CHUNK_IMAGES or now - chunk_time >= CHUNK_SECONDS):
            chunk_rows = [r for r in rows if r["key"] >= chunk_start]
            stacked = np.stack(vectors) if vectors else None
            folder.save_chunk(shard, chunk_start, key + 1, stacked, chunk_rows, failures)
            if stacked is not None:
                saved_vectors.append(stacked)
            saved_failures.extend(failures)
            vectors, failures = [], []
            chunk_start, chunk_time = key + 1, now
        if on_image is not None:
            on_image()

    for row in rows:
        row.pop("_map_shape", None)
    parts = saved_vectors + ([np.stack(vectors)] if vectors else [])
    stacked = np.concatenate(parts) if parts else None
    all_failures = saved_failures + failures
    stats = {
        "shard": shard, "first_key": first, "end_key": end, "written": len(rows), "failed": len(all_failures),
        "seconds": round(time.perf_counter() - started, 3), "poolcli_version": __version__,
    }
    if map_shape is not None:
        stats["map_shape"] = map_shape
    if node is not None:
        stats["node"] = node
    folder.write_shard(shard, kind, stacked, rows, all_failures, stats)
    folder.remove_chunks(shard)
    return stats, failures_here


def _process_item(pipeline, listing, folder, manifest, shard, item, row_number, rows, vectors, fail, dtype, kind):
    """One input of a shard: a metadata row (and its descriptor or map file), or a failure."""
    key = item.key
    if item.error is not None:
        fail(key, "load", item.error)
        return
    if item.output is None and item.failure is None:  # decoded only: compute here
        y, failure = apply_pipeline(pipeline, item.array)
    else:
        y, failure = item.output, item.failure
    if failure is not None:
        fail(key, *failure)
        return
    row = {
        "key": key, "path": listing.path(key), "width": item.info.width, "height": item.info.height,
        "mode": item.info.mode, "exif_orientation": item.info.exif_orientation, "sha256": item.info.sha256,
        "shard": shard, "row": row_number, **(item.sample or {}),
    }
    if kind == "descriptors":
        if manifest.get("dim") is None:
            manifest["dim"] = int(y.shape[0])
            folder.save_manifest(manifest)
        if y.shape[0] != manifest["dim"]:
            fail(key, pipeline.final.name, f"descriptor length {y.shape[0]} differs from the run's {manifest['dim']}")
            return
        vectors.append(y.astype(dtype, copy=False))
    else:
        row["map_file"] = folder.write_map(listing.relative(key), y.astype(dtype, copy=False))
        row["_map_shape"] = list(y.shape)  # "varies" in the stats when maps follow each image's size
    rows.append(row)


def apply_pipeline(pipeline: Pipeline, array: np.ndarray) -> tuple[np.ndarray | None, tuple[str, str] | None]:
    """``(pipeline(array), None)``, or ``(None, (stage, message))`` for an image the pipeline
    cannot take: a failure row, not an error of the run."""
    try:
        return pipeline(array), None
    except ShapeError as exc:
        return None, (exc.stage or "pipeline", str(exc))
    except PoolcliError as exc:
        return None, ("pipeline", str(exc))
    except (ArithmeticError, ValueError, RuntimeError, IndexError) as exc:  # a kernel's own error
        return None, ("pipeline", f"{type(exc).__name__}: {exc}")


def usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def kernels_threadsafe() -> bool:
    """Whether kernels may run on several threads at once: Numba's threading layer is OpenMP or
    TBB (its workqueue fallback aborts when two threads launch parallel kernels together)."""
    import poolcli.kernels  # noqa: F401  (before numba: it sets Numba's cache folder and vector width)
    import numba

    try:
        from numba.np.ufunc import parallel

        parallel._launch_threads()  # chooses and starts the threading layer, as a first kernel would
        return numba.threading_layer() in ("omp", "tbb")
    except Exception:  # noqa: BLE001 (a private function: any surprise means "not known safe")
        return False


class DecodeAhead:
    """Decode ``keys`` in order on a thread pool, a bounded number of images ahead; with
    ``compute_threads``, each worker also runs the pipeline on its image, its kernels on that
    many threads, and hands over the output (or the failure) instead of the array."""

    def __init__(self, listing: InputList, keys: list[int], pipeline: Pipeline, max_pixels: int, workers: int | None,
                 compute_threads: int | None = None):
        from poolcli.io.images import decode

        self._decode, self._listing, self._input, self._max_pixels = decode, listing, pipeline.config.input, max_pixels
        self._pipeline = pipeline if compute_threads else None
        workers = workers or min(4, os.cpu_count() or 1)
        if workers < 1:
            raise PoolcliError(f"--workers must be >= 1, got {workers}")
        start = (lambda: _set_threads(compute_threads)) if compute_threads else None  # per thread in Numba
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="poolcli-worker", initializer=start)
        self._keys = iter(keys)
        self._queue: deque = deque()
        for _ in range(2 * workers):
            self._submit()

    def _submit(self) -> None:
        key = next(self._keys, None)
        if key is not None:
            self._queue.append(self._pool.submit(self._one, key))

    def _one(self, key: int) -> _Decoded:
        source = self._listing.source(key)
        try:
            array, info = self._decode(source, self._input, self._max_pixels)
        except ImageError as exc:
            return _Decoded(key, error=str(exc))
        sample = source.sample_metadata() if isinstance(source, TarMember) else None
        if self._pipeline is None:
            return _Decoded(key, array, info, sample=sample)
        output, failure = apply_pipeline(self._pipeline, array)
        return _Decoded(key, info=info, output=output, failure=failure, sample=sample)

    def __next__(self) -> _Decoded:
        item = self._queue.popleft().result()
        self._submit()
        return item

    def close(self, wait: bool = True) -> None:
        """Stop the workers; with ``wait``, once the image each one holds is done."""
        self._pool.shutdown(wait=wait, cancel_futures=True)


def _manifest(pipeline: Pipeline, listing: InputList, shard_size: int) -> dict:
    return {
        "poolcli_version": __version__,
        "kind": pipeline.kind,
        "name": pipeline.config.name,
        "dim": _fixed_dim(pipeline),
        "map_shape": None,
        "dtype": pipeline.config.output.dtype,
        "normalize": pipeline.normalize,
        "config_sha256": _config_sha256(pipeline),
        "weights_sha256": weights_sha256(pipeline),
        "decode": pipeline.config.input.decode,  # reduced: shrunk on load; full: every pixel decoded
        "input_list_sha256": listing.sha256(),
        "shard_size": shard_size,
        "inputs": len(listing),
        "input_root": listing.root,
        "config_dir": str(Path(pipeline.config.base_dir).resolve()),  # where pipeline.yaml's relative paths point
        "complete": False,
    }


def _fixed_dim(pipeline: Pipeline) -> int | None:
    """The descriptor length when the config fixes it whatever the image size (None for maps,
    or when it follows the size, as ``flatten`` does: then the first image sets it)."""
    if pipeline.kind != "descriptors":
        return None
    try:
        lengths = {pipeline.output_shape((pipeline.input_channels, h, w))[0] for h, w in ((512, 512), (384, 640))}
    except ShapeError:
        return None
    return lengths.pop() if len(lengths) == 1 else None


def _config_text(pipeline: Pipeline) -> str:
    if pipeline.text is not None:
        return pipeline.text
    return json.dumps(pipeline.config.model_dump(mode="json", by_alias=True, exclude={"base_dir"}), indent=2) + "\n"


def _config_sha256(pipeline: Pipeline) -> str:
    """The digest of the config and of each config it includes: a run's identity changes with any of them."""
    digest = hashlib.sha256(_config_text(pipeline).encode("utf-8"))
    for path, text in pipeline.included:
        digest.update(f"\0include {path}\0{text}".encode("utf-8"))
    return digest.hexdigest()


def weights_sha256(pipeline: Pipeline) -> str | None:
    """The sha256 of the weights file the config names (what ``sha256sum`` prints), or of the
    digests of each, in order, where it and the configs it includes name several; None without
    one. Part of a run's identity: the same config over other weights is another run."""
    digests = [_file_sha256(path) for path in pipeline.weights_files]
    if not digests:
        return None
    if len(digests) == 1:
        return digests[0]
    return hashlib.sha256("\n".join(digests).encode("ascii")).hexdigest()


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    except OSError as exc:
        raise ConfigError(f"weights: cannot read {path}: {exc.strerror or exc}", loc=("weights",)) from None
    return digest.hexdigest()


def _configure_pillow(max_pixels: int) -> None:
    """poolcli checks ``max_pixels`` itself from each header: Pillow's own guard must neither
    warn below it nor refuse first above it. Done once, before the decoding threads start."""
    import warnings

    from PIL import Image

    warnings.simplefilter("ignore", Image.DecompressionBombWarning)
    # Pillow warns about damage it decodes around ("Corrupt EXIF data"): the image is written
    # or is a failure row either way, and stderr is for poolcli's own lines.
    warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL\.")
    if Image.MAX_IMAGE_PIXELS is not None and Image.MAX_IMAGE_PIXELS < max_pixels:
        Image.MAX_IMAGE_PIXELS = max_pixels


def _set_threads(threads: int | None) -> None:
    from poolcli.kernels import set_threads

    set_threads(threads)
