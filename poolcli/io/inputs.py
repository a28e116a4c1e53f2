"""Turning the command line's files, folders and globs into one sorted list of inputs.

Local paths are walked with os and glob; fsspec URLs (``s3://bucket/prefix``) are listed through
:mod:`poolcli.io.storage`, with the same rules."""

from __future__ import annotations

import glob
import hashlib
import os
import posixpath
from dataclasses import dataclass
from pathlib import Path

from poolcli.errors import PoolcliError
from poolcli.io.storage import RemotePath, is_url, local_path

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".avif", ".heic",
                              ".heif", ".npy"})


@dataclass(frozen=True)
class InputList:
    """Inputs in processing order: ``path(key)`` is the input with that key.

    ``root`` is the common folder of all inputs (maps are written relative to it) and
    ``skipped`` counts the files in walked folders that are not images. A :meth:`part` holds
    the keys ``first`` to ``first + len(files) - 1`` only: what one shard's task is sent.
    """

    files: tuple[str, ...]
    root: str
    skipped: int
    first: int = 0

    def __len__(self) -> int:
        return len(self.files)

    def sha256(self) -> str:
        """Identity of the list, to refuse resuming a run over different inputs."""
        digest = hashlib.sha256()
        for path in self.files:
            digest.update(path.encode("utf-8", "surrogateescape") + b"\0")
        return digest.hexdigest()

    def path(self, key: int) -> str:
        return self.files[key - self.first]

    def part(self, first: int, end: int) -> InputList:
        """The inputs with keys ``[first, end)``, keeping their keys."""
        return InputList(self.files[first - self.first:end - self.first], self.root, 0, first)

    def relative(self, key: int) -> str:
        if is_url(self.root):
            return self.path(key)[len(self.root):].lstrip("/")
        return os.path.relpath(self.path(key), self.root)


def collect_inputs(inputs: list[str], exclude: str | Path | None = None) -> InputList:
    """Files, folders (walked recursively for image and ``.npy`` files) and globs, as sorted
    absolute paths without duplicates. Files named directly are taken whatever their
    extension (they are decoded by content). ``exclude`` (the output folder) is never walked.

    Inputs may also be fsspec URLs (all of them, then), listed the same way: a URL is taken
    as a folder when objects lie under it.

    Raises :class:`PoolcliError` for an input that does not exist or a glob that matches
    nothing.
    """
    inputs = [local_path(given) for given in inputs]
    if any(is_url(given) for given in inputs):
        return _collect_urls(inputs, exclude)
    # Compared by real path: OUT reached through a link, or named through one, is still OUT.
    excluded = os.path.realpath(exclude) if exclude is not None else None
    found: set[str] = set()
    skipped = 0
    for given in inputs:
        if os.path.lexists(given):
            paths = [given]
        elif glob.has_magic(given):
            paths = sorted(glob.glob(given, recursive=True))
            if not paths:
                raise PoolcliError(f"no file matches {given!r}")
        else:
            raise PoolcliError(f"input not found: {given}")
        for path in paths:
            path = os.path.abspath(path)
            if os.path.isdir(path):
                files, not_images = _walk(path, excluded)
                found.update(files)
                skipped += not_images
            elif not _inside(os.path.realpath(path), excluded):
                found.add(path)
    if not found:
        raise PoolcliError("no image files found in " + ", ".join(inputs))
    files = tuple(sorted(found))
    root = os.path.commonpath([os.path.dirname(f) for f in files])
    return InputList(files, root, skipped)


def _inside(path: str, folder: str | None, sep: str = os.sep) -> bool:
    return folder is not None and (path == folder or path.startswith(folder.rstrip(sep) + sep))


def _walk(folder: str, excluded: str | None) -> tuple[list[str], int]:
    files, skipped = [], 0
    for parent, dirs, names in os.walk(folder):  # does not follow links to folders: no loops
        real_parent = os.path.realpath(parent)
        dirs[:] = [d for d in dirs if not _inside(os.path.join(real_parent, d), excluded)]
        for name in names:
            if os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS:
                path = os.path.join(parent, name)
                if excluded and os.path.islink(path) and _inside(os.path.realpath(path), excluded):
                    continue  # a link to a file in OUT: poolcli's own output
                files.append(path)
            else:
                skipped += 1
    return files, skipped


def _collect_urls(inputs: list[str], exclude) -> InputList:
    if not all(is_url(given) for given in inputs):
        raise PoolcliError("inputs mix local paths and URLs; give one kind: " + ", ".join(inputs))
    excluded = str(RemotePath(str(exclude))) if exclude is not None and is_url(str(exclude)) else None
    found: set[str] = set()
    skipped = 0
    try:
        for given in inputs:
            location = RemotePath(given)
            if glob.has_magic(given):
                paths = location.matches()
                if not paths:
                    raise PoolcliError(f"no file matches {given!r}")
            elif location.exists():
                paths = [location]
            else:
                raise PoolcliError(f"input not found: {given}")
            for path in paths:
                if path.is_dir():
                    for file in path.files():
                        url = str(file)
                        if _inside(url, excluded, "/"):
                            continue
                        if os.path.splitext(file.name)[1].lower() in IMAGE_EXTENSIONS:
                            found.add(url)
                        else:
                            skipped += 1
                elif not _inside(str(path), excluded, "/"):
                    found.add(str(path))
    except OSError as exc:
        raise PoolcliError(f"cannot list {', '.join(inputs)}: {exc}") from None
    if not found:
        raise PoolcliError("no image files found in " + ", ".join(inputs))
    files = tuple(sorted(found))
    scheme, _ = files[0].split("://", 1)
    if any(not f.startswith(scheme + "://") for f in files):
        raise PoolcliError("inputs on different kinds of storage; give URLs of one scheme: " + ", ".join(inputs))
    keys = [f.split("://", 1)[1] for f in files]
    root = f"{scheme}://" + posixpath.commonpath([posixpath.dirname(k) for k in keys])
    return InputList(files, root, skipped)
