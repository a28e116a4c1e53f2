"""Throughput of ``poolcli run`` on this machine: the local engine, and the Ray engine with 1 and
2 worker processes (a local Ray instance with 1 or 2 CPUs, one kernel thread per task).

    python benchmarks/scale_out.py [--images 160] [--shard-size 8] [--repeats 3] [--config configs/gabor_gem.yaml]

The inputs are crops of the sample photographs written as PNG to a temporary folder. Each
setting runs once untimed (compiling or loading the kernels, starting Ray's workers), then
``--repeats`` times into fresh output folders; the table gives the median images/s. A Ray
instance's start-up is not timed: a cluster is started once and serves many runs. The machine
is shared and noisy: compare the numbers of one table, not across tables.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def make_images(folder: Path, count: int) -> None:
    from PIL import Image

    photos = [Image.open(p).convert("RGB") for p in sorted((REPO / "sample_images").glob("*.png"))]
    for i in range(count):
        photo = photos[i % len(photos)]
        w, h = photo.size
        side = min(w, h) * 3 // 4
        x, y = (i * 37) % (w - side + 1), (i * 23) % (h - side + 1)
        photo.crop((x, y, x + side, y + side)).save(folder / f"img{i:05d}.png", compress_level=1)


def timed_runs(pipeline, inputs: str, scratch: Path, repeats: int, **options) -> list[float]:
    from poolcli.runner import run

    seconds = []
    for attempt in range(repeats + 1):  # the first is the untimed warm-up
        out = scratch / f"out{attempt}"
        started = time.perf_counter()
        summary = run(pipeline, [inputs], out, **options)
        elapsed = time.perf_counter() - started
        shutil.rmtree(out)
        if attempt:
            seconds.append(elapsed)
        assert summary.written + summary.failed == summary.inputs
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=160)
    parser.add_argument("--shard-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--config", default=str(REPO / "configs" / "gabor_gem.yaml"))
    args = parser.parse_args()

    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # a local instance on loopback
    import ray

    from poolcli import Pipeline

    pipeline = Pipeline.from_yaml(args.config)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "images").mkdir()
        make_images(tmp / "images", args.images)
        inputs = str(tmp / "images")
        common = {"shard_size": args.shard_size}
        for threads in (1, 2):
            seconds = timed_runs(pipeline, inputs, tmp, args.repeats, threads=threads, **common)
            rows.append((f"local engine, 1 process, --threads {threads}", seconds))
        for cpus in (1, 2):
            ray.init(address="local", num_cpus=cpus, include_dashboard=False, logging_level="ERROR")
            try:
                seconds = timed_runs(pipeline, inputs, tmp, args.repeats, engine="ray", threads=1, **common)
            finally:
                ray.shutdown()
            rows.append((f"ray engine, {cpus} worker process{'es' if cpus > 1 else ''} x 1 thread", seconds))

    print(f"{args.images} images ({Path(args.config).name}), shard size {args.shard_size}, "
          f"{args.repeats} timed runs each; {cores} cores")
    print("| setting | median s | images/s | runs (s) |")
    print("| --- | ---: | ---: | --- |")
    for name, seconds in rows:
        median = statistics.median(seconds)
        print(f"| {name} | {median:.1f} | {args.images / median:.1f} | {', '.join(f'{s:.1f}' for s in seconds)} |")


if __name__ == "__main__":
    main()
