"""Helpers shared by the speed benchmarks: alternating timings, thread settings, tables.

The machine these run on is shared and noisy, so every comparison times its contenders
alternately in the same process (one call of each per round) and reports medians; nothing here
is asserted by the test suite.
"""

from __future__ import annotations

import math
import os
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parent.parent
TORCH_THREADS = 2


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def import_torch():
    """torch, or None when it is not installed (the PyTorch columns are then left empty)."""
    try:
        import torch
    except ImportError:
        return None
    return torch


def alternate(contenders: dict[str, Callable[[], object]], rounds: int, before: dict[str, Callable] | None = None,
              budget_s: float | None = None) -> dict[str, list[float]]:
    """Seconds per call of each contender, timed alternately for ``rounds`` rounds (fewer when
    ``budget_s`` runs out, never fewer than 3). ``before[name]()`` runs untimed before each timed call of
    ``name`` (torch.set_num_threads: running a Numba parallel kernel can reset torch's threads).
    Each round takes the contenders in a new (seeded) random order: what ran just before a call
    changes its time (after a copy, the cache is full of lines that must be written back first), so
    a fixed order would favour whoever follows the kindest neighbour."""
    before = before or {}
    times: dict[str, list[float]] = {name: [] for name in contenders}
    shuffle = random.Random(0).sample
    started = time.perf_counter()
    for index in range(rounds):
        for name in shuffle(list(contenders), len(contenders)):
            call = contenders[name]
            if name in before:
                before[name]()
            t0 = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - t0)
        if budget_s is not None and index >= 2 and time.perf_counter() - started > budget_s:
            break
    return times


def median_ms(samples: list[float]) -> float:
    return 1e3 * statistics.median(samples)


def geometric_mean(values: list[float]) -> float:
    values = [v for v in values if v and v > 0]
    return math.exp(sum(map(math.log, values)) / len(values)) if values else float("nan")


def table(headers: list[str], rows: list[list[str]], markdown: bool = False) -> str:
    """A plain-text (or Markdown) table; the first column left-aligned, the others right-aligned."""
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]

    def line(cells):
        parts = [str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(cells, widths))]
        return ("| " + " | ".join(parts) + " |") if markdown else "  ".join(parts)

    rule = ("|" + "|".join("-" * (w + 1) + (":" if i else "-") for i, w in enumerate(widths)) + "|") if markdown \
        else "  ".join("-" * w for w in widths)
    return "\n".join([line(headers), rule, *map(line, rows)])


def machine() -> str:
    """One line describing where the numbers were taken."""
    import platform

    model = ""
    try:
        for text in Path("/proc/cpuinfo").read_text().splitlines():
            if text.startswith("model name"):
                model = text.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model or platform.processor() or platform.machine()}, {cores()} cores, Python {sys.version.split()[0]}"


def versions() -> str:
    import numba
    import numpy

    torch = import_torch()
    parts = [f"numpy {numpy.__version__}", f"numba {numba.__version__}"]
    parts.append(f"torch {torch.__version__}" if torch else "torch not installed")
    return ", ".join(parts)
