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
    decodes it; one of the two is required. ``threads``: kernel threads (default: every core).
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
    return BenchResult(tuple(x.shape), load, stages, whole, numba.get_num_threads())
