"""Peak memory of ``poolcli run`` at 100 and at 2,000 images: it must not grow with the count.

    python benchmarks/memory.py [--config configs/retrieval.yaml] [--counts 100 2000]

The inputs are the end-to-end benchmark's one-megapixel JPEGs (see end_to_end.py), hard-linked
as many times as needed into folders of exactly N files. Each run is a fresh process with its
default shard size (10,000) and threads; its peak resident set (``ru_maxrss`` from ``wait4``)
is reported with the time it took. The largest count runs once more with ``--shard-size 100``:
what little a run keeps per image (its metadata row and descriptor until the shard is written)
is then bounded by the shard, not the run.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import machine, table
from end_to_end import default_config, make_photos, poolcli_command


def linked_folder(photos: Path, folder: Path, count: int) -> Path:
    """``count`` files in ``folder``, hard links to the photos (copies where links fail)."""
    if folder.exists():
        shutil.rmtree(folder)
    sources = sorted(photos.glob("*.jpg"))
    for index in range(count):
        target = folder / f"{index // 500:02d}" / f"img_{index:05d}.jpg"
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(sources[index % len(sources)], target)
        except OSError:
            shutil.copy(sources[index % len(sources)], target)
    return folder


def peak_run(command: list[str]) -> tuple[float, float]:
    """(peak resident MiB, seconds) of one command run to completion."""
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(command)} failed: {process.stderr.read().decode()[-500:]}")
    process.stderr.close()
    return usage.ru_maxrss / 1024, seconds  # ru_maxrss is in KiB on Linux


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, default=None)
    parser.add_argument("--counts", type=int, nargs="+", default=[100, 2000])
    parser.add_argument("--photos", type=Path, default=Path(tempfile.gettempdir()) / "poolcli-bench" / "photos-200")
    parser.add_argument("--shard-size", type=int, default=100, help="the extra run's shard size (0: none)")
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args(argv)
    config = args.config or default_config()
    photos = make_photos(args.photos)
    work = Path(tempfile.mkdtemp(prefix="poolcli-memory-"))
    rows = []
    try:
        runs = [(count, []) for count in args.counts]
        if args.shard_size:
            runs.append((max(args.counts), ["--shard-size", str(args.shard_size)]))
        for count, extra in runs:
            folder = work / f"in{count}"
            if not folder.exists():
                linked_folder(photos, folder, count)
            mib, seconds = peak_run([*poolcli_command(), "run", str(config), str(folder), "-o",
                                     str(work / f"out{count}{len(extra)}"), "--no-progress", *extra])
            rows.append([f"{count} images" + (f", {' '.join(extra)}" if extra else ""), f"{mib:.0f}", f"{seconds:.1f}",
                         f"{count / seconds:.1f}"])
            print(f"  {rows[-1][0]}: {mib:.0f} MiB, {seconds:.1f} s", file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"# {machine()}; {config.name}", file=sys.stderr)
    print(table(["poolcli run " + config.name, "peak RSS MiB", "seconds", "images/s"], rows, args.markdown))
    return 0


if __name__ == "__main__":
    sys.exit(main())
