"""``poolcli run --engine ray``: the pending shards of a run as Ray tasks.

The driver (this process) lists the inputs, opens OUT and finds the pending shards exactly as a
local run does (:func:`poolcli.runner.run`). Each pending shard then becomes one Ray task that
calls :func:`poolcli.runner.process_shard`, the local engine's own code, on whichever node it
lands, and writes the shard straight into OUT: OUT and the inputs must be where every node can
reach them (a bucket URL, or a folder every node mounts).

- A task reserves ``threads`` CPUs and runs the kernels on that many Numba threads, so the
  tasks on a node never ask for more cores than it has.
- Each worker process compiles (or loads from Numba's cache) the pipeline's kernels once,
  before its first shard, one worker per node at a time, so that a fresh node compiles each
  kernel once rather than once per core; workers are reused for later shards.
- A task whose worker or node dies, or that raises (a storage hiccup), is retried up to
  :data:`MAX_RETRIES` times. A retry rewrites the same shard under the same names, whole
  files renamed into place and the stats last, so it never duplicates rows.
- Progress counts shards completed across the cluster.
- Members of tar shards travel in the task's input list with their offsets
  (:class:`poolcli.io.tars.TarMember`): a task reads only its own members' bytes, by seek or
  ranged request, whichever tar shards they lie in.

Ray is imported here only, when ``--engine ray`` is asked for.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections import deque

from poolcli.errors import OutputError, PoolcliError
from poolcli.io.storage import is_url

MAX_RETRIES = 3
DEFAULT_WORKERS = 2  # decoding threads per task: one decodes while the other waits on storage
RAY_INSTALL = "pip install 'poolcli[ray]'"

_warm: set[str] = set()  # the pipelines (config sha256) this worker process has compiled


def run_shards(pipeline, listing, folder, manifest, pending, done_stats, summary, *, address, threads, workers,
               max_pixels, progress) -> None:
    """Run the ``pending`` shards on Ray; each completed shard's stats go into ``done_stats``
    and its failure rows into ``summary.failures``."""
    ray = _import_ray()
    threads = 1 if threads is None else threads
    workers = DEFAULT_WORKERS if workers is None else workers
    if threads < 1:
        raise PoolcliError(f"--threads must be >= 1, got {threads}")
    if workers < 1:
        raise PoolcliError(f"--workers must be >= 1, got {workers}")
    n_shards = summary.shards
    if progress:
        progress(len(done_stats), n_shards)
    if not pending:
        return
    started_here = _connect(ray, address)
    try:
        _check_threads(ray, threads)
        task = ray.remote(_shard_task).options(
            name="poolcli-shard", num_cpus=threads, max_retries=MAX_RETRIES, retry_exceptions=True,
            scheduling_strategy="SPREAD",  # shards are independent: use every node from the start
        )
        pipeline_ref = ray.put(pipeline)
        out = str(folder.path) if is_url(folder.path) else os.path.abspath(folder.path)
        shard_size = manifest["shard_size"]

        def submit(shard):
            first, end = shard * shard_size, min(len(listing), (shard + 1) * shard_size)
            return task.remote(pipeline_ref, listing.part(first, end), out, dict(manifest), shard, threads, workers,
                               max_pixels)

        def record(shard, result):
            stats, failures, dim = result
            done_stats[shard] = stats
            summary.failures.extend(failures)
            manifest["dim"] = dim
            if progress:
                progress(len(done_stats), n_shards)

        queue = deque(pending)
        # When the config does not fix the descriptor length, the first descriptor in key order
        # does, as in a local run: shards run one at a time until one has written a row.
        while queue and manifest["kind"] == "descriptors" and manifest.get("dim") is None:
            shard = queue.popleft()
            record(shard, _result(ray, submit(shard), shard))
        window = max(2, 2 * int(ray.cluster_resources().get("CPU", 1)) // threads)
        running: dict = {}
        try:
            while queue or running:
                while queue and len(running) < window:
                    shard = queue.popleft()
                    running[submit(shard)] = shard
                ready, _ = ray.wait(list(running), num_returns=1)
                shard = running.pop(ready[0])
                record(shard, _result(ray, ready[0], shard))
        finally:
            for ref in running:  # after a failure or Ctrl-C: what still runs is not wanted
                ray.cancel(ref)
    finally:
        if started_here:
            ray.shutdown()
    summary.failures.sort(key=lambda failure: failure["key"])  # they arrive in completion order
    for shard in pending:
        if folder.shard_stats(shard) is None:
            node = done_stats[shard].get("node", "?")
            raise OutputError(
                f"shard {shard} was written on Ray node {node}, but {folder.path} does not show it here: "
                "OUT must be storage every node shares (a bucket URL such as s3://bucket/out, or a shared folder)"
            )


def _import_ray():
    try:
        import ray
    except ImportError:
        raise PoolcliError(f"--engine ray needs Ray, which is not installed: {RAY_INSTALL}") from None
    return ray


def _connect(ray, address: str | None) -> bool:
    """Connect to the cluster at ``address``, or start a local Ray instance; True when this call
    did (and so must shut it down). An existing connection (the Python API's caller) is used
    as it is."""
    if ray.is_initialized():
        return False
    options = {"logging_level": logging.WARNING}
    if address is None:
        # A local instance serves this process only: it listens on the loopback address, not on
        # the machine's network address.
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        options.update(address="local", include_dashboard=False)
    else:
        options.update(address=address)
    try:
        ray.init(**options)
    except (ConnectionError, ValueError, RuntimeError) as exc:
        where = f"the Ray cluster at {address}" if address else "a local Ray instance"
        raise PoolcliError(f"cannot connect to {where}: {' '.join(str(exc).split())}") from None
    return True


def _check_threads(ray, threads: int) -> None:
    """A task asking for more CPUs than any node has would wait forever: refuse it now."""
    largest = max((int(n["Resources"].get("CPU", 0)) for n in ray.nodes() if n.get("Alive")), default=0)
    if threads > largest:
        raise PoolcliError(f"--threads {threads}: no node of the Ray cluster has {threads} CPUs (the largest has {largest})")


def _result(ray, ref, shard: int):
    """A task's result; its final failure as one PoolcliError line."""
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as exc:  # the task raised, on every try
        cause = getattr(exc, "cause", None)
        if isinstance(cause, PoolcliError):
            raise cause from None
        reason = f"{type(cause).__name__}: {cause}" if cause is not None else str(exc).splitlines()[0]
    except ray.exceptions.RayError as exc:  # its worker or node died on every try, ...
        reason = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    raise PoolcliError(f"shard {shard} failed after {MAX_RETRIES} retries on the Ray cluster: {' '.join(reason.split())}")


# --- in the worker -------------------------------------------------------------------------------


def _shard_task(pipeline, part, out: str, manifest: dict, shard: int, threads: int, workers: int, max_pixels: int):
    """One shard, in a Ray worker: the local engine's code, on ``threads`` kernel threads."""
    import ray

    from poolcli.io.output import RunFolder
    from poolcli.runner import DecodeAhead, _configure_pillow, process_shard

    node = ray.get_runtime_context().get_node_id()
    for where, what in ((part.root, "input folder"), (out, "output folder")):
        if not is_url(where) and not os.path.isdir(where):
            raise PoolcliError(
                f"the {what} {where} does not exist on Ray node {node}: inputs and OUT must be on storage every "
                "node reaches (a bucket URL, or a folder every node mounts)"
            )
    _set_task_threads(threads)
    _configure_pillow(max_pixels)
    _warm_once(pipeline, manifest["config_sha256"])
    first, end = part.first, part.first + len(part)
    folder = RunFolder(out)
    # After a killed run, or a retry of this task, the chunks saved of the shard are kept.
    decoded = DecodeAhead(part, list(range(folder.resume_key(shard, first), end)), pipeline, max_pixels, workers)
    try:
        stats, failures = process_shard(pipeline, part, folder, manifest, shard, first, end, decoded, node=node)
    finally:
        decoded.close()
    return stats, failures, manifest.get("dim")


def _set_task_threads(threads: int) -> None:
    import numba

    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))


def _warm_once(pipeline, key: str) -> None:
    """Compile the pipeline's kernels (or load them from Numba's cache) once per worker process,
    on a made-up input, one worker per node at a time: the first compiles and fills the cache,
    the others then load from it."""
    if key in _warm:
        return
    _warm.add(key)
    shape = _warm_shape(pipeline)
    if shape is None:  # no small input fits this pipeline: the first image compiles instead
        return
    from poolcli.warmup import warmup

    with _node_lock(f"poolcli-warm-{key[:16]}.lock"):
        try:
            warmup(pipeline, shape)  # what `poolcli warmup CONFIG` does
        except (PoolcliError, ArithmeticError, ValueError, RuntimeError, IndexError):
            pass  # best effort: whatever did not compile here compiles on the first image


def _warm_shape(pipeline) -> tuple[int, int, int] | None:
    """The smallest of a few square inputs the pipeline accepts (the configured size if fixed)."""
    resize = pipeline.config.input.resize
    if resize is not None and resize.size is not None:
        sides = [tuple(resize.size)]
    else:
        sides = [(n, n) for n in (32, 64, 128, 256, 512)]
    for h, w in sides:
        shape = (pipeline.input_channels, h, w)
        try:
            pipeline.output_shape(shape)
        except PoolcliError:
            continue
        return shape
    return None


class _node_lock:
    """An exclusive lock shared by the processes of one machine (a no-op where flock is missing)."""

    def __init__(self, name: str):
        self.path = os.path.join(tempfile.gettempdir(), name)
        self.fd = None

    def __enter__(self):
        try:
            import fcntl

            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            fcntl.flock(self.fd, fcntl.LOCK_EX)
        except (ImportError, OSError):
            if self.fd is not None:
                os.close(self.fd)
            self.fd = None
        return self

    def __exit__(self, *exc):
        if self.fd is not None:
            os.close(self.fd)  # releases the lock
