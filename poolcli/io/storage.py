"""Where inputs and outputs live: local paths, or fsspec URLs (``s3://bucket/prefix``, ``gs://...``).

A local path stays a :class:`pathlib.Path` and goes through os and pathlib, as it always has
(``file:///a/b`` is the local path ``/a/b``). Any other URL becomes a :class:`RemotePath`: the
few pathlib methods poolcli's input walking and output folder use, over fsspec, with the
errors pathlib would raise (``FileNotFoundError``, other ``OSError``). fsspec and the
filesystem for the URL's scheme (s3fs for ``s3://``) are imported on first use, and a missing
one is a one-line :class:`PoolcliError` saying what to install.

Object stores have no rename: :meth:`RemotePath.write_atomic` writes a temporary key beside
the target and then moves it (copy, delete), so a reader never sees a part-written object
under a final name.
"""

from __future__ import annotations

import fnmatch
import os
import posixpath
import re
import secrets
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from urllib.parse import unquote, urlsplit

from poolcli.errors import PoolcliError

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+://")
# Filesystems whose "folders" are only key prefixes: nothing to create, and creating the
# top-level one would create a bucket.
_OBJECT_STORES = {"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "adl", "oss"}
INSTALL_HINT = {"s3": "pip install 'poolcli[s3]'", "s3a": "pip install 'poolcli[s3]'", "gs": "pip install gcsfs",
                "gcs": "pip install gcsfs", "az": "pip install adlfs", "abfs": "pip install adlfs"}


def is_url(location) -> bool:
    """True for a URL other than ``file://`` (which names a local path)."""
    if isinstance(location, RemotePath):
        return True
    return isinstance(location, str) and bool(_URL.match(location)) and not location.lower().startswith("file://")


def local_path(location: str) -> str:
    """``file:///a/b`` as ``/a/b``; anything else unchanged."""
    if not (isinstance(location, str) and location.lower().startswith("file://")):
        return location
    parts = urlsplit(location)
    if parts.netloc not in ("", "localhost"):
        raise PoolcliError(f"{location}: a file:// URL names a path on this machine, as in file:///data/images")
    return unquote(parts.path)


def as_path(location) -> Path | RemotePath:
    """A :class:`Path` for a local path or ``file://`` URL, a :class:`RemotePath` for any other URL."""
    if isinstance(location, (Path, RemotePath)):
        return location
    location = local_path(str(location))
    return RemotePath(location) if is_url(location) else Path(location)


def read_bytes(location) -> bytes:
    """The bytes of one input file, local or remote.

    A file that is missing or forbidden raises ``OSError`` (it becomes that input's failure
    row); any other problem with remote storage (the network, throttling) raises
    :class:`PoolcliError`: it says nothing about the file, so it must not become a failure row.
    """
    path = as_path(location)
    if isinstance(path, Path):
        return path.read_bytes()
    try:
        return path.read_bytes()
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError):
        raise
    except OSError as exc:
        raise PoolcliError(f"cannot read {path}: {exc}") from None


def readable(path: Path | RemotePath):
    """What numpy and pyarrow read: a local path itself, a remote file's bytes."""
    if isinstance(path, RemotePath):
        import io

        return io.BytesIO(path.read_bytes())
    return path


def read_parquet(path: Path | RemotePath, columns: list[str] | None = None):
    """The table in a Parquet file, read at once on this thread.

    A remote file's bytes are copied into memory pyarrow owns: a Python file object or bytes
    handed to pyarrow are released by whichever of its threads drops the last reference, and
    one doing so while the interpreter exits takes the GIL from a finished Python and aborts
    the process ("terminate called without an active exception")."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if isinstance(path, RemotePath):
        data = path.read_bytes()
        buffer = pa.allocate_buffer(len(data))
        memoryview(buffer).cast("B")[:] = data
        path = pa.BufferReader(buffer)
    with pq.ParquetFile(path) as parquet:
        return parquet.read(columns=columns, use_threads=False)


def remove_tree(path: Path | RemotePath) -> None:
    """Remove a folder and everything under it, if it exists."""
    if isinstance(path, RemotePath):
        path.remove_tree()
    else:
        import shutil

        shutil.rmtree(path, ignore_errors=True)


def _filesystem(url: str):
    """``(fsspec filesystem, path within it)`` for ``url``; a clear error when a package is missing."""
    scheme = url.split("://", 1)[0].lower()
    hint = INSTALL_HINT.get(scheme, "pip install fsspec and the fsspec filesystem for it")
    try:
        import fsspec.core
    except ImportError:
        raise PoolcliError(f"{url}: URLs need fsspec: {hint}") from None
    try:
        # No listings cache: other processes (the cluster's workers) write the same folder.
        return fsspec.core.url_to_fs(url, use_listings_cache=False)
    except ImportError as exc:
        raise PoolcliError(f"{url}: {exc} ({hint})") from None
    except ValueError as exc:  # an unknown scheme
        raise PoolcliError(f"{url}: {exc}") from None


class RemotePath:
    """A file or folder named by an fsspec URL, with the part of pathlib's interface poolcli uses.

    Examples
    --------
    >>> out = RemotePath("memory://doctest/out")
    >>> (out / "stats" / "part-00000.json").write_atomic(b"{}")
    >>> [p.name for p in (out / "stats").glob("part-*.json")]
    ['part-00000.json']
    >>> (out / "stats" / "part-00000.json").read_text()
    '{}'
    >>> out.remove_tree()
    """

    def __init__(self, url: str, _fs=None, _key: str | None = None):
        if _fs is None:
            _fs, _key = _filesystem(url)
        self.fs = _fs
        self.key = _key.rstrip("/") or _key

    def _child(self, key: str) -> RemotePath:
        return RemotePath("", self.fs, key)

    def __str__(self) -> str:
        return self.fs.unstrip_protocol(self.key)

    def __repr__(self) -> str:
        return f"RemotePath({str(self)!r})"

    def __eq__(self, other) -> bool:
        return isinstance(other, RemotePath) and str(self) == str(other)

    def __hash__(self) -> int:
        return hash(str(self))

    def __lt__(self, other: RemotePath) -> bool:
        return str(self) < str(other)

    def __truediv__(self, name: str) -> RemotePath:
        return self._child(posixpath.join(self.key, str(name)))

    @property
    def name(self) -> str:
        return posixpath.basename(self.key)

    @property
    def stem(self) -> str:
        return PurePosixPath(self.name).stem

    @property
    def parent(self) -> RemotePath:
        return self._child(posixpath.dirname(self.key))

    def with_name(self, name: str) -> RemotePath:
        return self.parent / name

    def relative_to(self, other: RemotePath) -> PurePosixPath:
        return PurePosixPath(self.key).relative_to(other.key)

    def as_posix(self) -> str:
        return str(self)

    @contextmanager
    def _errors(self):
        """Storage errors as pathlib's: ``OSError`` (``FileNotFoundError`` kept), one line."""
        try:
            yield
        except OSError:
            raise
        except Exception as exc:  # botocore, aiohttp, ...: still an OSError to the caller
            message = " ".join(str(exc).split())
            raise OSError(f"{type(exc).__name__}: {message}" if message else type(exc).__name__) from exc

    # --- reading -------------------------------------------------------------------------------

    def exists(self) -> bool:
        with self._errors():
            return self.fs.exists(self.key)

    def is_dir(self) -> bool:
        with self._errors():
            return self.fs.isdir(self.key)

    def read_bytes(self) -> bytes:
        with self._errors():
            return self.fs.cat_file(self.key)

    def read_text(self, encoding: str = "utf-8") -> str:
        return self.read_bytes().decode(encoding)

    def open(self, mode: str = "rb"):
        with self._errors():
            return self.fs.open(self.key, mode)

    def glob(self, pattern: str) -> list[RemotePath]:
        """The files and folders directly in this folder whose names match ``pattern``, sorted."""
        with self._errors():
            found = self.fs.glob(posixpath.join(self.key, pattern))
        return [self._child(key) for key in sorted(found)]

    def matches(self) -> list[RemotePath]:
        """What this URL matches as a glob pattern (``*``, ``?``, ``[...]``, ``**``), sorted."""
        with self._errors():
            found = self.fs.glob(self.key)
        return [self._child(key) for key in sorted(found)]

    def files(self) -> list[RemotePath]:
        """Every file under this folder, at any depth, sorted."""
        with self._errors():
            found = self.fs.find(self.key)
        return [self._child(key) for key in sorted(found)]

    def rglob(self, pattern: str) -> list[RemotePath]:
        return [path for path in self.files() if fnmatch.fnmatchcase(path.name, pattern)]

    # --- writing -------------------------------------------------------------------------------

    @property
    def _object_store(self) -> bool:
        return bool(_OBJECT_STORES.intersection(_protocols(self.fs)))

    def mkdir(self, parents: bool = False, exist_ok: bool = False) -> None:
        if not self._object_store:
            with self._errors():
                self.fs.makedirs(self.key, exist_ok=True)

    def write_atomic(self, data: bytes) -> None:
        """Write ``data`` to a temporary key beside this one, then move it here."""
        tmp = self.with_name(f".{self.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
        with self._errors():
            try:
                self.fs.pipe_file(tmp.key, data)
                if self._object_store:  # one server-side copy and one delete: no listing, as mv does
                    self.fs.cp_file(tmp.key, self.key)
                    self.fs.rm_file(tmp.key)
                else:
                    self.fs.mv(tmp.key, self.key)
            except BaseException:
                try:
                    self.fs.rm_file(tmp.key)
                except Exception:  # already gone, or the store is unreachable: the next run removes it
                    pass
                raise

    def unlink(self, missing_ok: bool = False) -> None:
        with self._errors():
            try:
                self.fs.rm_file(self.key)
            except FileNotFoundError:
                if not missing_ok:
                    raise

    def remove_tree(self) -> None:
        with self._errors():
            if self.fs.exists(self.key):
                self.fs.rm(self.key, recursive=True)


def _protocols(fs) -> set[str]:
    protocol = fs.protocol
    return {protocol} if isinstance(protocol, str) else set(protocol)
