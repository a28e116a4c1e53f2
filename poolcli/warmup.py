"""``poolcli warmup``: compile the kernels a config needs, ahead of its first run.

Numba compiles a kernel the first time it is called with new argument types and keeps the
machine code in its on-disk cache (see :mod:`poolcli.kernels`), so only a machine's first run
pays for compiling. Warming up runs the config's pipeline once on a small random map of its
input size, which compiles (or loads) exactly the kernels a run calls; without a config, every
stage type's worked example (``poolcli stages TYPE``) is run instead. Numba's own counters then
say how many kernels were compiled and how many came from the cache.
"""

from __future__ import annotations

import importlib
import pkgutil
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from poolcli.pipeline import Pipeline


@dataclass(frozen=True)
class WarmupResult:
    compiled: int  # kernel signatures compiled now (and written to the cache)
    loaded: int  # signatures loaded from the cache
    seconds: float
    cache_dir: str  # where the compiled kernels are kept


def _dispatchers() -> list:
    """Every jitted function of poolcli.kernels (importing a kernel module compiles nothing)."""
    import poolcli.kernels  # before numba: it sets Numba's cache folder and vector width

    from numba.core.dispatcher import Dispatcher

    found = []
    for module in pkgutil.iter_modules(poolcli.kernels.__path__):
        namespace = vars(importlib.import_module(f"poolcli.kernels.{module.name}"))
        found.extend(value for value in namespace.values() if isinstance(value, Dispatcher))
    return found


def _counts(dispatchers) -> tuple[int, int]:
    hits = sum(sum(d.stats.cache_hits.values()) for d in dispatchers)
    misses = sum(sum(d.stats.cache_misses.values()) for d in dispatchers)
    return hits, misses


def compiled_so_far() -> int:
    """Kernel signatures this process has compiled so far (not loaded from the cache), over the
    kernel modules it has imported (counting imports none)."""
    import sys

    from numba.core.dispatcher import Dispatcher

    modules = [module for name, module in list(sys.modules.items()) if name.startswith("poolcli.kernels.")]
    dispatchers = [value for module in modules for value in vars(module).values() if isinstance(value, Dispatcher)]
    return _counts(dispatchers)[1]


class CompileWatch:
    """Within the block, ``notify()`` is called once, when Numba starts compiling a kernel (the
    first run of a config on a machine: tens of seconds in which nothing else shows); after it,
    ``count`` is the number of kernel signatures compiled in the block and ``seconds`` the time
    spent compiling (Numba compiles one function at a time, whichever thread asks)."""

    def __init__(self, notify: Callable[[], None]):
        self.notify, self.count, self.seconds = notify, 0, 0.0

    def __enter__(self) -> "CompileWatch":
        import poolcli.kernels  # noqa: F401  (before numba: it sets Numba's cache folder)
        from numba.core import event

        watch = self

        class Notice(event.Listener):
            said, depth, since = False, 0, 0.0

            def on_start(self, ev):
                if not self.said:
                    self.said = True
                    watch.notify()
                if self.depth == 0:
                    self.since = time.perf_counter()
                self.depth += 1

            def on_end(self, ev):
                self.depth -= 1
                if self.depth == 0:
                    watch.seconds += time.perf_counter() - self.since

        self._listener, self._before = Notice(), compiled_so_far()
        event.register("numba:compile", self._listener)
        return self

    def __exit__(self, *exc) -> None:
        from numba.core import event

        event.unregister("numba:compile", self._listener)
        self.count = compiled_so_far() - self._before


def cache_dir() -> str:
    """The folder that holds poolcli's compiled kernels (one per poolcli version and machine)."""
    from poolcli.kernels import CACHE_DIR

    return CACHE_DIR


def warmup(pipeline: Pipeline | None, shape: tuple[int, int, int] | None = None,
           progress: Callable[[int, int, str], None] | None = None) -> WarmupResult:
    """Compile or load the kernels of ``pipeline`` (run once on a random map of ``shape``), or of
    every stage type when ``pipeline`` is None. ``progress(done, total, name)`` is called before
    each step."""
    from poolcli.explain import worked_example
    from poolcli.stages import STAGES

    started = time.perf_counter()
    dispatchers = _dispatchers()
    hits, misses = _counts(dispatchers)
    if pipeline is not None:
        steps = [(pipeline.config.name or "pipeline", lambda: pipeline(np.random.default_rng(0).random(shape, np.float32)))]
    else:
        names = sorted({cls.type_names[0] for cls in STAGES.values()})
        steps = [(name, lambda name=name: worked_example(name)) for name in names]
    for index, (name, step) in enumerate(steps):
        if progress:
            progress(index, len(steps), name)
        step()
    if progress:
        progress(len(steps), len(steps), "")
    new_hits, new_misses = _counts(dispatchers)
    return WarmupResult(new_misses - misses, new_hits - hits, time.perf_counter() - started, cache_dir())
