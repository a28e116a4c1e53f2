"""Real ``poolcli`` processes for the fault tests: started cheaply, killed at will, and run
without root's power to ignore file permissions.

``cli_process`` starts the real command-line entry point in a child forked from a
``multiprocessing`` fork server that has already imported poolcli, numba and pyarrow, so that a
child reaches its first write in about a second instead of three or four: that is what lets
a test kill twenty runs at random moments in reasonable time. The server never runs a
kernel, so no OpenMP thread exists when it forks.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

import poolcli

PRELOAD = ["poolcli.cli", "poolcli.runner", "poolcli.pipeline", "poolcli.io.images", "poolcli.io.output",
           "poolcli.kernels.pool", "poolcli.kernels.global_pool", "numba", "pyarrow.parquet"]

_context = None


def _cli_main(args: list[str]) -> None:
    sys.argv = ["poolcli", *args]
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    from poolcli.cli import main

    main()


def cli_process(*args) -> multiprocessing.Process:
    """A started ``poolcli ARGS`` process (output discarded); ``.kill()`` sends SIGKILL."""
    global _context
    if _context is None:
        _context = multiprocessing.get_context("forkserver")
        _context.set_forkserver_preload(PRELOAD)
    process = _context.Process(target=_cli_main, args=([str(a) for a in args],))
    process.start()
    return process


def cli(*args, timeout: float = 120, **kwargs) -> subprocess.CompletedProcess:
    """``python -m poolcli ARGS`` to the end, output captured as text."""
    return subprocess.run([sys.executable, "-m", "poolcli", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, **kwargs)


# --- running without root's file powers -------------------------------------------------------

_PR_CAPBSET_DROP = 24
_CAP_DAC_OVERRIDE, _CAP_DAC_READ_SEARCH = 1, 2


def _drop_file_capabilities() -> None:
    """In the child before exec: remove the capabilities that let root read and write any file,
    so that the program it runs (as root still) obeys file permissions like any user."""
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (_CAP_DAC_OVERRIDE, _CAP_DAC_READ_SEARCH):
        if libc.prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            os._exit(99)


def permissions_apply() -> str | None:
    """None if a :func:`cli_obeying_permissions` process is refused a file with mode 000;
    else the reason it is not (to skip with)."""
    if sys.platform != "linux":
        return "needs Linux to run a process that obeys file permissions"
    if os.geteuid() != 0:
        return None
    probe = Path(os.environ.get("TMPDIR", "/tmp")) / f"poolcli-perm-probe-{os.getpid()}"
    probe.write_text("x")
    probe.chmod(0)
    try:
        result = subprocess.run(["cat", str(probe)], capture_output=True, preexec_fn=_drop_file_capabilities)
    finally:
        probe.unlink()
    if result.returncode == 99:
        return "running as root and cannot drop CAP_DAC_OVERRIDE (no CAP_SETPCAP here)"
    if result.returncode == 0:
        return "running as root and file permissions still do not apply after dropping CAP_DAC_OVERRIDE"
    return None


def cli_obeying_permissions(*args, timeout: float = 120) -> subprocess.CompletedProcess:
    """:func:`cli`, in a process for which ``chmod`` means what it says even when the tests
    run as root (root ignores file permissions otherwise)."""
    preexec = _drop_file_capabilities if os.geteuid() == 0 else None
    return cli(*args, timeout=timeout, preexec_fn=preexec)


# --- what a run folder holds ---------------------------------------------------------------------


def assert_same_rows(out, expected_out) -> None:
    """``out`` holds exactly the descriptors and metadata of ``expected_out``."""
    got, meta = poolcli.read_descriptors(out)
    expected, expected_meta = poolcli.read_descriptors(expected_out)
    np.testing.assert_array_equal(got, expected)
    assert meta.equals(expected_meta)


def assert_nothing_half_written(out, expected_out) -> None:
    """After a run stopped at any moment: no temporary file is left that looks like a result,
    every shard marked complete has all of its files, and the complete shards hold exactly the
    rows the same shards of an uninterrupted run hold."""
    import json

    import pyarrow.parquet as pq

    out, expected_out = Path(out), Path(expected_out)
    for stats_file in sorted((out / "stats").glob("part-*.json")):
        stats = json.loads(stats_file.read_text())
        expected = json.loads((expected_out / "stats" / stats_file.name).read_text())
        assert {k: stats[k] for k in ("first_key", "end_key", "written", "failed")} == \
               {k: expected[k] for k in ("first_key", "end_key", "written", "failed")}
        for folder, suffix in (("descriptors", ".npy"), ("metadata", ".parquet"), ("failures", ".parquet")):
            name = stats_file.stem + suffix
            if (expected_out / folder / name).exists():
                assert (out / folder / name).exists(), f"{folder}/{name} missing from a complete shard"
        if (expected_out / "descriptors" / (stats_file.stem + ".npy")).exists():
            np.testing.assert_array_equal(np.load(out / "descriptors" / (stats_file.stem + ".npy")),
                                          np.load(expected_out / "descriptors" / (stats_file.stem + ".npy")))
            assert pq.read_table(out / "metadata" / (stats_file.stem + ".parquet")).equals(
                pq.read_table(expected_out / "metadata" / (stats_file.stem + ".parquet")))
    if (out / "manifest.json").exists():
        json.loads((out / "manifest.json").read_text())  # whole, never half a file
