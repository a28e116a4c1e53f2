"""``poolcli bench``: where a pipeline's time goes, stage by stage.

Each stage is timed on its real input (the previous stages' outputs for one random map of the
requested size, or a decoded image), after one untimed call that compiles or loads its kernels.
Stages are timed one after another, each called until it has run ``repeats`` times and for at
least ``min_seconds``; the median call is reported, with the spread of the calls (their 10th
and 90th percentiles) to tell a steady time from a noisy one. The whole pipeline call is timed
the same way, so the gap between it and the sum of the stages is the pipeline's own overhead.
"""

from __future__ import annotations

import statistics
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from poolcli.pipeline import Pipeline


#: Calls of one stage whose 90th percentile is this many times their 10th disagree: the machine
#: was busy, or the stage's time depends on something else than its input.
DISAGREE = 2.0


@dataclass(frozen=True)
class StageTime:
    """The median time of one stage (or of loading the image, or of the whole pipeline call),
    and the 10th and 90th percentiles of its calls."""

    name: str
    type: str
    out_shape: tuple[int, ...]
    seconds: float
    low: float = 0.0
    high: float = 0.0

    @property
    def steady(self) -> bool:
        return self.high <= DISAGREE * self.low


@dataclass(frozen=True)
class BenchResult:
    input_shape: tuple[int, int, int]
    load: StageTime | None  # decoding and resizing the image, when one was given
    stages: list[StageTime]
    pipeline: StageTime  # one whole Pipeline call: the stages plus its own overhead
    threads: int
    parallelism: "Parallelism | None" = None  # how run would split the cores, measured (threads not given)

    @property
    def stage_total(self) -> float:
        return sum(s.seconds for s in self.stages)


def median_time(call: Callable[[], object], repeats: int, min_seconds: float) -> tuple[float, float, float]:
    """Median, 10th and 90th percentile seconds of ``call()``, run at least ``repeats`` times and
    for ``min_seconds`` (with fewer than 10 calls, the fastest and the slowest)."""
    times = []
    started = time.perf_counter()
    while len(times) < repeats or time.perf_counter() - started < min_seconds:
        t0 = time.perf_counter()
        call()
        times.append(time.perf_counter() - t0)
        if len(times) >= 1000:
            break
    times.sort()
    low, high = (times[0], times[-1]) if len(times) < 10 else (times[len(times) // 10], times[-1 - len(times) // 10])
    return statistics.median(times), low, high


def bench(pipeline: Pipeline, shape: tuple[int, int, int] | None = None, image: str | Path | None = None,
          threads: int | None = None, repeats: int = 5, min_seconds: float = 0.2, seed: int = 0) -> BenchResult:
    """Time ``pipeline`` on a random map of ``shape`` (C, H, W), or on ``image`` decoded as a run
    decodes it; one of the two is required. ``threads``: kernel threads (default: every core,
    and then how ``run`` would split the cores is measured as well, :func:`plan_parallelism`).
    Raises :class:`ShapeError` if the input does not fit."""
    from poolcli.io.images import decode
    from poolcli.kernels import set_threads  # before numba: it sets Numba's cache folder and vector width

    import numba

    set_threads(threads)
    load = None
    if image is not None:
        x, _ = decode(image, pipeline.config.input)
        seconds = median_time(lambda: decode(image, pipeline.config.input), repeats, min_seconds)
        load = StageTime("load", "decode + resize", tuple(x.shape), *seconds)
    else:
        x = np.random.default_rng(seed).random(shape, dtype=np.float32)
    pipeline.trace(x.shape)  # a shape problem is reported before anything runs
    values = pipeline.outputs(x)  # every stage's input; compiles or loads every kernel
    stages = []
    for node in pipeline.nodes:
        if node.name not in pipeline.needed:
            continue
        inputs = [values[name] for name in node.inputs]
        seconds = median_time(lambda: node.stage(*inputs), repeats, min_seconds)
        stages.append(StageTime(node.name, node.stage.type, tuple(values[node.name].shape), *seconds))
    out = pipeline(x)
    whole = StageTime("pipeline", "whole call", tuple(out.shape), *median_time(lambda: pipeline(x), repeats, min_seconds))
    used = numba.get_num_threads()
    parallelism = None
    if threads is None and used > 1:
        from poolcli.runner import kernels_threadsafe

        if kernels_threadsafe():
            parallelism = plan_parallelism(pipeline, x, used)
    return BenchResult(tuple(x.shape), load, stages, whole, used, parallelism)


# --- how a run splits the cores ------------------------------------------------------------------

#: One image on every core is chosen unless images side by side are this much faster: it holds
#: one image's maps instead of one per core, and finishes each image sooner.
SIDE_BY_SIDE_GAIN = 1.1


@dataclass(frozen=True)
class Parallelism:
    """How a run splits the cores: ``workers`` images at once, each on ``threads`` kernel
    threads, with the images per second measured both ways (``side_by_side``: an image per
    core; ``together``: one image on every core)."""

    workers: int
    threads: int
    side_by_side: float
    together: float

    def describe(self) -> str:
        if self.workers > 1:
            chosen = f"{self.workers} images at once, 1 kernel thread each"
            other = f"one image on {self.workers} threads: {self.together:.2f}"
            rate = self.side_by_side
        else:
            chosen = f"one image at a time on {self.threads} kernel threads"
            other = f"{self.threads} images at once: {self.side_by_side:.2f}"
            rate = self.together
        return f"{chosen} ({rate:.2f} images/s measured; {other})"


def plan_parallelism(pipeline: Pipeline, x: np.ndarray, cores: int, calls: int = 2) -> Parallelism:
    """Time ``pipeline`` on ``x`` both ways ``run`` can use ``cores`` cores (after a call that
    compiles or loads the kernels) and choose: images side by side, one per core on one kernel
    thread each, where that is :data:`SIDE_BY_SIDE_GAIN` faster than one image at a time on
    every core; else one image at a time. Kernels must be safe on several threads at once
    (:func:`poolcli.runner.kernels_threadsafe`)."""
    from concurrent.futures import ThreadPoolExecutor

    from poolcli.kernels import set_threads

    if cores <= 1:
        return Parallelism(1, 1, 0.0, 0.0)
    set_threads(cores)
    pipeline(x)
    started = time.perf_counter()
    for _ in range(calls):
        pipeline(x)
    together = calls / (time.perf_counter() - started)

    barrier = threading.Barrier(cores)

    def one_thread_calls(count: int) -> None:
        barrier.wait()  # every core's thread at once, never one thread taking two parts
        for _ in range(count):
            pipeline(x)

    with ThreadPoolExecutor(cores, initializer=set_threads, initargs=(1,)) as pool:
        list(pool.map(one_thread_calls, [1] * cores))  # each thread's first call: its buffers, its kernels
        started = time.perf_counter()
        list(pool.map(one_thread_calls, [calls] * cores))
        side_by_side = cores * calls / (time.perf_counter() - started)
    set_threads(cores)
    if side_by_side >= SIDE_BY_SIDE_GAIN * together:
        return Parallelism(cores, 1, side_by_side, together)
    return Parallelism(1, cores, side_by_side, together)
