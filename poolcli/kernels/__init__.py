"""Private Numba kernels, one module per operator family, mirroring ``poolcli.stages`` (and
``vecmath``: the exp and log that vectorise, which GeM, Lp and SoftPool inline).

Importing this package decides where Numba caches poolcli's kernels, before any kernel module
is imported (and so before any kernel is compiled or loaded): in the user's cache folder, one
folder per poolcli version and per machine, never inside the installed package. Files that pip
did not install survive ``pip uninstall``, and a half-empty ``site-packages/poolcli/`` left
behind shadows the next install (an editable one included) as a namespace package. A kernel
is found in the cache by the content of its source file, not by the file's path or time, so
every install of one poolcli version on one machine shares its compiled kernels, and only the
machine's first run compiles (``poolcli warmup`` does it ahead).
"""

import hashlib
import os
import platform
import sys
import tempfile
from pathlib import Path

from poolcli import __version__


def _writable(folder: Path) -> bool:
    """Whether files can be created in ``folder`` (created if missing)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    return os.access(folder, os.W_OK | os.X_OK)


def user_cache_folder(environ) -> Path | None:
    """The user's cache folder, as the platform names it (None without a home directory)."""
    if sys.platform == "win32" and environ.get("LOCALAPPDATA"):
        return Path(environ["LOCALAPPDATA"])
    if environ.get("XDG_CACHE_HOME"):
        return Path(environ["XDG_CACHE_HOME"])
    try:
        home = Path.home()
    except RuntimeError:  # no home directory at all
        return None
    return home / "Library" / "Caches" if sys.platform == "darwin" else home / ".cache"


def machine_tag() -> str:
    """What compiled code depends on besides the sources: the CPU (its name and the features
    LLVM compiles for) and the Numba version, as a folder name."""
    import llvmlite.binding as llvm

    cpu = llvm.get_host_cpu_name()
    features = hashlib.sha256(llvm.get_host_cpu_features().flatten().encode()).hexdigest()[:8]
    numba_version = _numba_version()
    return f"{platform.machine() or 'cpu'}-{cpu}-{features}-numba{numba_version}"


def _numba_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("numba")
    except PackageNotFoundError:
        return "unknown"


def cache_dir_for(environ, tag: str) -> str:
    """The folder of poolcli's compiled kernels: ``POOLCLI_CACHE_DIR``, or ``NUMBA_CACHE_DIR``,
    or the user's cache folder, with ``poolcli/VERSION/TAG`` below; where none of them can be
    written, the same below the temporary folder (a read-only home), and failing that a new
    temporary folder of this process's own."""
    below = Path("poolcli") / __version__ / tag
    bases = [environ.get("POOLCLI_CACHE_DIR"), environ.get("NUMBA_CACHE_DIR")]
    if not any(bases):
        bases.append(user_cache_folder(environ))
    user = getattr(os, "getuid", lambda: "user")()
    bases.append(Path(tempfile.gettempdir()) / f"poolcli-{user}")
    for base in bases:
        if base and _writable(Path(base) / below):
            return str(Path(base) / below)
    return tempfile.mkdtemp(prefix="poolcli-kernels-")


_source_hashes: dict = {}


def _source_stamp(path: str):
    """The content of every kernel module beside ``path``, hashed once per process: the cache's
    test of freshness, the same for every copy of the files whatever their path or time. All of
    them, not the kernel's own file alone: a kernel compiles in the functions it calls from its
    siblings (the conv epilogues take elementwise's activations), and Numba checks only the
    kernel's own file, so an edit of a sibling would leave cached kernels with its old code."""
    folder = os.path.dirname(os.path.abspath(path))
    if folder not in _source_hashes:
        digest = hashlib.sha256()
        for name in sorted(os.listdir(folder)):
            if name.endswith(".py"):
                with open(os.path.join(folder, name), "rb") as f:
                    digest.update(name.encode() + b"\0" + hashlib.sha256(f.read()).digest())
        _source_hashes[folder] = digest.hexdigest()
    return _source_hashes[folder]


def _use_kernel_cache_folder() -> str:
    """Make Numba cache the functions of poolcli's kernel modules in :func:`cache_dir_for`'s
    folder (every other function where Numba would put it); returns the folder."""
    from numba.core import caching

    folder = cache_dir_for(os.environ, machine_tag())
    package = os.path.dirname(os.path.abspath(__file__))
    impl = getattr(caching, "CacheImpl", None) or getattr(caching, "_CacheImpl")

    class PoolcliCacheLocator(caching._CacheLocator):
        def __init__(self, py_func, py_file):
            self._py_file, self._lineno = py_file, py_func.__code__.co_firstlineno

        def get_cache_path(self):
            return folder

        def get_source_stamp(self):
            return _source_stamp(self._py_file)

        def get_disambiguator(self):
            # The source's hash as well: two copies of a file that differ (two checkouts of one
            # version) keep their own entries instead of overwriting each other's.
            return f"{self._lineno}-{_source_stamp(self._py_file)[:12]}"

        @classmethod
        def from_function(cls, py_func, py_file):
            if os.path.dirname(os.path.abspath(py_file)) != package:
                return None  # not a poolcli kernel: Numba's own locators decide
            return cls(py_func, py_file)

    if not any(c.__name__ == "PoolcliCacheLocator" for c in impl._locator_classes):
        impl._locator_classes.insert(0, PoolcliCacheLocator)
    return folder


class _Refuse:
    """An import finder that makes the named modules look absent."""

    def __init__(self, *names: str):
        self.names = names

    def find_spec(self, name, path=None, target=None):
        if name in self.names:
            raise ModuleNotFoundError(f"{name} is not imported while Numba starts", name=name)
        return None


def _start_numba() -> None:
    """Set Numba up so that a run whose kernels are all in the cache never loads Numba's
    registries of implementations, and a run that compiles loads them without scipy.linalg.

    Before it compiles or loads its first function, Numba imports every implementation it has
    (its registries: a fifth of a second, about a third of a one-image run's start). Loading a
    function from the cache needs none of them, only the memory runtime, so a cached kernel is
    loaded without them (:func:`_load_cached`), and they load when something is compiled.

    One of them (``numba.np.arraymath``) imports scipy.linalg, when scipy is installed, only to
    learn that BLAS is there for ``np.correlate`` and ``np.convolve``. That import takes about a
    second. poolcli's kernels use neither function, so scipy.linalg is made to look absent while
    the registries load (:func:`_guarded_refresh`): those two functions then use Numba's own
    loop in this process (same results), and anything else that needs scipy.linalg later
    imports it as usual. Nothing is done if scipy.linalg is already imported.
    """
    from numba.core import caching, config
    from numba.core.registry import cpu_target

    created = "_toplevel_target_context" in vars(cpu_target)  # a cached_property: reading it creates it
    if not created and config.CPU_FEATURES is None and config.CPU_NAME is None:
        config.CPU_FEATURES = _wide_vector_features()  # read once, when the line below creates the codegen
    context = cpu_target.target_context
    context.refresh = _guarded_refresh(context.refresh)
    cache = caching.Cache
    if all(hasattr(cache, name) for name in ("load_overload", "_load_overload", "_guard_against_spurious_io_errors")):
        cache.load_overload = _load_cached(cache.load_overload)
    else:  # a Numba whose cache works otherwise: load the registries now, as before
        context.refresh()


def _guarded_refresh(refresh):
    """Numba's ``refresh`` (which loads its registries), with scipy.linalg made to look absent."""

    def guarded_refresh():
        refuse = None if "scipy.linalg" in sys.modules else _Refuse("scipy.linalg", "scipy.linalg.cython_blas")
        if refuse is not None:
            sys.meta_path.insert(0, refuse)
        try:
            refresh()
        finally:
            if refuse is not None:
                sys.meta_path.remove(refuse)

    return guarded_refresh


def _load_cached(numba_load_overload):
    """Numba's ``Cache.load_overload`` for poolcli's kernels without its first step, loading
    every registry: only the memory runtime is started (other functions load as Numba loads
    them). Should a kernel's loading fail even so, Numba's own ``load_overload`` loads it."""

    def load_overload(self, sig, target_context):
        if not getattr(self._py_func, "__module__", "").startswith(__name__ + "."):
            return numba_load_overload(self, sig, target_context)
        from numba.core.runtime import rtsys

        try:
            rtsys.initialize(target_context)
            with self._guard_against_spurious_io_errors():
                return self._load_overload(sig, target_context)
        except Exception:
            return numba_load_overload(self, sig, target_context)

    return load_overload


def wide_vectors() -> bool:
    """Whether the kernels compile for 512-bit vectors: :func:`_start_numba` asked for them
    (:func:`_wide_vector_features`), or a user's NUMBA_CPU_FEATURES does."""
    from numba.core import config

    return config.CPU_FEATURES is not None and "-prefer-256-bit" in config.CPU_FEATURES


def _wide_vector_features() -> str | None:
    """The host's CPU features, less LLVM's preference for 256-bit vectors, on CPUs with AVX-512
    (None elsewhere: Numba's default). LLVM prefers 256 bits there because 512-bit instructions
    can lower the clock of short bursts; poolcli's kernels are long vectorised loops, and its
    convolutions run 5-20% faster with 512-bit vectors (benchmarks/kernels.py). Only decided
    when nothing compiled with Numba yet in this process and NUMBA_CPU_NAME and
    NUMBA_CPU_FEATURES are not set."""
    import llvmlite.binding as llvm

    features = llvm.get_host_cpu_features()
    return features.flatten() + ",-prefer-256-bit" if features.get("avx512f") else None


_start_numba()
CACHE_DIR = _use_kernel_cache_folder()

# Fast-math flags that keep NaN and inf semantics (no "nnan"/"ninf"): pooling pads with -inf
# and must propagate NaN, yet reductions may still be vectorised and reassociated.
FASTMATH = {"nsz", "arcp", "contract", "afn", "reassoc"}
# Every kernel also takes error_model="numpy": a float division by zero gives inf or NaN, as in
# NumPy, instead of raising. Numba already compiles prange bodies so; outside them Python's
# model checks every divisor, which keeps a loop with a division from vectorising (the roots of
# GeM's 512 channel means took 10 us instead of 2.6).


def set_threads(threads: int | None) -> None:
    """Run the kernels on ``threads`` threads (None: leave Numba's default, every core)."""
    if threads is None:
        return
    import numba

    from poolcli.errors import PoolcliError

    if not 1 <= threads <= numba.config.NUMBA_NUM_THREADS:
        raise PoolcliError(f"--threads must be between 1 and {numba.config.NUMBA_NUM_THREADS}, got {threads}")
    numba.set_num_threads(threads)
