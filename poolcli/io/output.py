"""The output folder of a run (manifest, descriptor or map files, metadata, failures, stats):
atomic writes, shards, resume.

Every file is written under a temporary name in its final folder and renamed into place, so a
killed run never leaves a file that looks complete. A shard is complete when its
``stats/part-NNNNN.json`` exists; it is written after the shard's other files.

While a shard is being computed, what is done of it is saved every few hundred images (or
every half minute) as a chunk in ``OUT/.partial/part-NNNNN/``, so that a killed run redoes
little of it, whatever the shard size. A resumed shard takes its chunks back and goes on; the
shard is then written whole as before and its chunks removed, so a finished folder holds the
same files, and the same bytes, as an uninterrupted run.
"""

from __future__ import annotations

import errno
import io
import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable

import numpy as np

from poolcli.errors import OutputError
from poolcli.io.storage import RemotePath, as_path, read_parquet, readable, remove_tree
from poolcli.io.tars import SAMPLE_FIELDS

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

FOLDERS = ("descriptors", "maps", "metadata", "failures", "stats")
FILES = ("manifest.json", "pipeline.yaml")
PARTIAL = ".partial"  # chunks of the shards being computed; gone once the run is complete
LOCK_FILE = ".lock"  # held by the run writing the folder, removed when it ends
# What identifies a run: resuming needs all of these to match.
IDENTITY = ("kind", "config_sha256", "weights_sha256", "input_list_sha256", "shard_size", "dtype")


def part_name(shard: int, suffix: str) -> str:
    return f"part-{shard:05d}{suffix}"


# --- atomic writes -----------------------------------------------------------------------------


def atomic_write(path: str | Path, write: Callable[[Any], None]) -> None:
    """Write ``path`` through ``write(file)`` to a temporary name beside it, then rename."""
    path = as_path(path)
    if isinstance(path, RemotePath):  # object storage: a temporary key, then a move
        buffer = io.BytesIO()
        write(buffer)
        path.write_atomic(buffer.getvalue())
        return
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def save_npy(path: str | Path, array: np.ndarray) -> None:
    atomic_write(path, lambda f: np.save(f, array, allow_pickle=False))


def save_json(path: str | Path, data: dict) -> None:
    atomic_write(path, lambda f: f.write(json.dumps(data, indent=2, sort_keys=True).encode() + b"\n"))


def printable(text: str) -> str:
    """``text`` as valid UTF-8: the bytes of a file name that are not UTF-8 (which Python keeps
    as surrogate escapes) written as ``\\xNN``, as ``ls -b`` shows them.

    >>> printable(os.fsdecode(b"caf\\xe9.png"))
    'caf\\\\xe9.png'
    """
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def save_parquet(path: str | Path, rows: list[dict], schema) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{k: printable(v) if isinstance(v, str) else v for k, v in row.items()} for row in rows]
    table = pa.Table.from_pylist(rows, schema=schema)
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    atomic_write(path, lambda f: f.write(buffer.getvalue()))


def metadata_schema(kind: str):
    import pyarrow as pa

    fields = [
        ("key", pa.int64()), ("path", pa.string()), ("width", pa.int32()), ("height", pa.int32()),
        ("mode", pa.string()), ("exif_orientation", pa.int16()), ("sha256", pa.string()),
        ("shard", pa.int32()), ("row", pa.int32()),
    ]
    if kind == "maps":
        fields.append(("map_file", pa.string()))
    fields += [(column, pa.string()) for column, _ in SAMPLE_FIELDS]  # a tar member's .json; else null
    return pa.schema(fields)


def failures_schema():
    import pyarrow as pa

    return pa.schema([("key", pa.int64()), ("path", pa.string()), ("stage", pa.string()), ("error", pa.string())])


# --- the folder --------------------------------------------------------------------------------


class RunFolder:
    """One run's output folder.

    Every method that writes raises :class:`OutputError` (one line, saying how to resume) when
    the operating system refuses the write: a full disk, a read-only folder, a lost mount."""

    def __init__(self, path: str | Path):
        self.path = as_path(path)  # a Path, or a RemotePath for an fsspec URL

    @contextmanager
    def writing(self):
        """Turn an ``OSError`` raised while writing the folder into one-line :class:`OutputError`."""
        try:
            yield
        except OSError as exc:
            reason = exc.strerror or str(exc)
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                hint = "free some space, then run the same command again to resume"
            else:
                hint = "once it is writable, run the same command again to resume"
            raise OutputError(f"cannot write to {self.path}: {reason}; {hint}") from None

    @contextmanager
    def lock(self):
        """Hold ``OUT/.lock`` while a run writes the folder: a second run into the same folder is
        refused rather than interleaved. The lock is the operating system's (``flock``), so it
        ends with the process however the process ends: a killed run leaves no stale lock (only
        its file, which the next run takes). A run that ends removes the file while it still
        holds the lock; a run that locked the removed file meanwhile sees that the file it holds
        is no longer ``OUT/.lock`` and locks the new one instead."""
        if self.path.exists() and not self.path.is_dir():
            raise OutputError(f"output {self.path} exists and is not a folder")
        if isinstance(self.path, RemotePath):  # object stores have no lock: nothing to hold
            yield
            return
        with self.writing():
            self.path.mkdir(parents=True, exist_ok=True)
        lock_path = self.path / LOCK_FILE
        while True:
            with self.writing():
                fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
            if not _try_lock(fd):
                holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
                os.close(fd)
                raise OutputError(
                    f"{self.path} is in use by another poolcli run{f' (process {holder})' if holder.isdigit() else ''}; "
                    "wait for it to finish, or choose another output folder"
                )
            if _same_file(fd, lock_path):
                break
            os.close(fd)  # the run that held it removed it as we locked it: lock the new one
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            yield
        finally:
            try:
                os.unlink(lock_path)  # still held: a run that opened it meanwhile retries
            except OSError:
                pass
            os.close(fd)  # releases the lock

    @property
    def manifest_path(self) -> Path:
        return self.path / "manifest.json"

    def read_manifest(self) -> dict | None:
        try:
            return json.loads(self.manifest_path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise OutputError(f"{self.manifest_path}: unreadable manifest ({exc}); use --overwrite to start again") from None

    def open(self, manifest: dict, config_text: str, overwrite: bool) -> dict | None:
        """Make the folder ready for ``manifest``'s run; return the existing manifest when
        resuming (None for a fresh run). A different run already there is refused unless
        ``overwrite``, which removes poolcli's files (and nothing else) first."""
        if self.path.exists() and not self.path.is_dir():
            raise OutputError(f"output {self.path} exists and is not a folder")
        old = self.read_manifest() if self.path.is_dir() else None
        if old is not None and overwrite:
            with self.writing():
                self.clear()
            old = None
        if old is not None:
            changed = [k for k in IDENTITY if old.get(k) != manifest.get(k)]
            if changed:
                what = ", ".join(k.replace("_sha256", "").replace("_", " ") for k in changed)
                raise OutputError(
                    f"{self.path} holds another run (different {what}); use --overwrite to replace it, or another folder"
                )
        with self.writing():
            self.path.mkdir(parents=True, exist_ok=True)
            unused = "maps" if manifest["kind"] == "descriptors" else "descriptors"
            for folder in FOLDERS:
                if folder != unused:
                    (self.path / folder).mkdir(exist_ok=True)
            self._remove_temporaries()
            atomic_write(self.path / "pipeline.yaml", lambda f: f.write(config_text.encode("utf-8")))
            if old is None:
                save_json(self.manifest_path, manifest)
        return old

    def clear(self) -> None:
        # The completion marks go first: a run killed while clearing leaves no shard that
        # looks complete without its data, and the manifest last, so the folder still says
        # whose it is.
        for folder in ("stats", PARTIAL, *(f for f in FOLDERS if f != "stats")):
            remove_tree(self.path / folder)
        for name in FILES:
            (self.path / name).unlink(missing_ok=True)

    def save_manifest(self, manifest: dict) -> None:
        with self.writing():
            save_json(self.manifest_path, manifest)

    def _remove_temporaries(self) -> None:
        """Temporary files left by a killed run: beside the manifest, and anywhere in poolcli's
        folders (the user's own folders in OUT are not walked, and each file is listed once)."""
        for tmp in self.path.glob(".*.tmp"):
            tmp.unlink(missing_ok=True)
        for folder in (self.path / f for f in (*FOLDERS, PARTIAL)):
            if folder.is_dir():
                for tmp in folder.rglob(".*.tmp"):
                    tmp.unlink(missing_ok=True)

    def shard_stats(self, shard: int) -> dict | None:
        """The stats of a complete shard, None if the shard is not complete."""
        try:
            return json.loads((self.path / "stats" / part_name(shard, ".json")).read_text())
        except (FileNotFoundError, ValueError):
            return None

    def clear_shard(self, shard: int) -> None:
        """Remove what a killed run may have left of an incomplete shard."""
        with self.writing():
            for folder, suffix in (("descriptors", ".npy"), ("metadata", ".parquet"), ("failures", ".parquet")):
                (self.path / folder / part_name(shard, suffix)).unlink(missing_ok=True)

    # --- chunks of a shard being computed ---------------------------------------------------

    def _partial(self, shard: int):
        return self.path / PARTIAL / part_name(shard, "")

    def _chunks(self, shard: int, first: int) -> list[tuple[int, int, Any]]:
        """The shard's saved chunks that follow each other from key ``first``:
        ``(first_key, end_key, json path)`` in key order. A chunk after a gap (which no run
        writes) is ignored; a chunk's ``.json`` is written after its ``.npy``."""
        folder = self._partial(shard)
        if not folder.is_dir():
            return []
        found = {}
        for path in folder.glob("chunk-*.json"):
            try:
                start, end = (int(n) for n in path.stem.split("-")[1:3])
            except ValueError:
                continue
            found[start] = (start, end, path)
        chunks, key = [], first
        while key in found:
            chunks.append(found[key])
            key = found[key][1]
        return chunks

    def resume_key(self, shard: int, first: int) -> int:
        """The first key of an incomplete shard that no saved chunk holds."""
        chunks = self._chunks(shard, first)
        return chunks[-1][1] if chunks else first

    def load_chunks(self, shard: int, first: int) -> tuple[list[np.ndarray], list[dict], list[dict], int]:
        """What the saved chunks of ``shard`` hold: descriptor arrays, metadata rows, failure
        rows, and the first key they do not hold."""
        vectors, rows, failures, key = [], [], [], first
        for start, end, path in self._chunks(shard, first):
            try:
                chunk = json.loads(path.read_text())
                if chunk["vectors"]:
                    array = np.load(readable(path.with_name(path.stem + ".npy")), allow_pickle=False)
                    if len(array) != chunk["vectors"]:
                        break
                    vectors.append(array)
            except (OSError, ValueError, KeyError):
                break  # unreadable: redo from here
            rows.extend(chunk["rows"])
            failures.extend(chunk["failures"])
            key = end
        return vectors, rows, failures, key

    def save_chunk(self, shard: int, first_key: int, end_key: int, vectors: np.ndarray | None,
                   rows: list[dict], failures: list[dict]) -> None:
        """Save keys ``[first_key, end_key)`` of an incomplete shard: its descriptors (if any),
        then its rows and failures, which mark the chunk saved."""
        folder = self._partial(shard)
        name = f"chunk-{first_key:012d}-{end_key:012d}"
        with self.writing():
            folder.mkdir(parents=True, exist_ok=True)
            if vectors is not None and len(vectors):
                save_npy(folder / f"{name}.npy", vectors)
            data = {"vectors": 0 if vectors is None else len(vectors), "rows": rows, "failures": failures}
            atomic_write(folder / f"{name}.json", lambda f: f.write(json.dumps(data).encode() + b"\n"))

    def remove_chunks(self, shard: int | None = None) -> None:
        """Remove a shard's saved chunks (once the shard is complete), or with None every
        chunk folder of a complete shard and the chunks folder itself once it is empty."""
        with self.writing():
            if shard is not None:
                remove_tree(self._partial(shard))
                return
            root = self.path / PARTIAL
            if not root.is_dir():
                return
            for folder in root.glob("part-*"):
                try:
                    number = int(folder.name.split("-")[1])
                except ValueError:
                    continue
                if self.shard_stats(number) is not None:
                    remove_tree(folder)
            if next(iter(root.glob("*")), None) is None:
                remove_tree(root)

    def write_map(self, relative: str, array: np.ndarray) -> str:
        """Write one image's map under maps/; returns its path relative to the folder."""
        target = self.path / "maps" / (printable(relative) + ".npy")  # map_file is stored as UTF-8 text
        with self.writing():
            target.parent.mkdir(parents=True, exist_ok=True)
            save_npy(target, array)
        return target.relative_to(self.path).as_posix()

    def write_shard(self, shard: int, kind: str, vectors: np.ndarray | None, rows: list[dict],
                    failures: list[dict], stats: dict) -> None:
        """The shard's descriptors, metadata and failures, then its stats (the completion mark).
        No empty part is written."""
        with self.writing():
            if vectors is not None and len(vectors):
                save_npy(self.path / "descriptors" / part_name(shard, ".npy"), vectors)
            if rows:
                save_parquet(self.path / "metadata" / part_name(shard, ".parquet"), rows, metadata_schema(kind))
            if failures:
                save_parquet(self.path / "failures" / part_name(shard, ".parquet"), failures, failures_schema())
            save_json(self.path / "stats" / part_name(shard, ".json"), stats)


def _same_file(fd: int, path: Path) -> bool:
    """Whether the open file ``fd`` is the file at ``path`` now."""
    try:
        here, there = os.fstat(fd), os.stat(path)
    except FileNotFoundError:
        return False
    return (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino)


def _try_lock(fd: int) -> bool:
    """Take the exclusive lock on ``fd`` without waiting; False if another process holds it.
    Where the file system cannot lock (some network mounts), the run goes on unlocked."""
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        else:
            import msvcrt

            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
    except (BlockingIOError, PermissionError):
        return False
    except OSError as exc:
        if exc.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
            return True
        if exc.errno in (errno.EAGAIN, errno.EACCES, errno.EDEADLK):
            return False
        raise
    return True


def read_descriptors(out: str | Path):
    """All complete descriptor shards of a run folder: an ``[N, D]`` array and the metadata
    table, row i of one describing row i of the other."""
    import pyarrow as pa

    folder = RunFolder(out)
    manifest = folder.read_manifest()
    if manifest is None:
        raise OutputError(f"{out}: no manifest.json; is this a poolcli output folder?")
    if manifest.get("kind") != "descriptors":
        raise OutputError(f"{out} holds feature maps, not descriptors (kind: {manifest.get('kind')})")
    vectors, tables = [], []
    shards = sorted((folder.path / "stats").glob("part-*.json"))
    for stats_file in shards:
        shard = int(stats_file.stem.split("-")[1])
        npy = folder.path / "descriptors" / part_name(shard, ".npy")
        if npy.exists():
            vectors.append(np.load(readable(npy), allow_pickle=False))
            tables.append(read_parquet(folder.path / "metadata" / part_name(shard, ".parquet")))
    dim = manifest.get("dim") or 0
    if not vectors:
        return np.zeros((0, dim), np.dtype(manifest.get("dtype", "float32"))), metadata_schema("descriptors").empty_table()
    return np.concatenate(vectors), pa.concat_tables(tables)
