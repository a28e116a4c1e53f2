"""Private Numba kernels, one module per operator family, mirroring ``poolcli.stages``.

Importing this package makes sure Numba's on-disk cache is writable before numba is imported:
where the package folder is read-only (a system install), kernels are cached in the user's
cache folder instead, so ``cache=True`` works everywhere.
"""

import os
import sys
from pathlib import Path


def _cache_dir() -> str | None:
    if os.environ.get("NUMBA_CACHE_DIR"):
        return None
    if os.access(Path(__file__).parent, os.W_OK):
        return None  # numba's default: __pycache__ beside the sources
    base = os.environ.get("XDG_CACHE_HOME") or (
        os.environ.get("LOCALAPPDATA") if sys.platform == "win32" else str(Path.home() / ".cache")
    )
    return str(Path(base) / "poolcli" / "numba")


_dir = _cache_dir()
if _dir:
    os.environ["NUMBA_CACHE_DIR"] = _dir

# Fast-math flags that keep NaN and inf semantics (no "nnan"/"ninf"): pooling pads with -inf
# and must propagate NaN, yet reductions may still be vectorised and reassociated.
FASTMATH = {"nsz", "arcp", "contract", "afn", "reassoc"}


def set_threads(threads: int | None) -> None:
    """Run the kernels on ``threads`` threads (None: leave Numba's default, every core)."""
    if threads is None:
        return
    import numba

    from poolcli.errors import PoolcliError

    if not 1 <= threads <= numba.config.NUMBA_NUM_THREADS:
        raise PoolcliError(f"--threads must be between 1 and {numba.config.NUMBA_NUM_THREADS}, got {threads}")
    numba.set_num_threads(threads)
