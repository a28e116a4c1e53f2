"""Turning the command line's files, folders and globs into one sorted list of inputs."""

from __future__ import annotations

import glob
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from poolcli.errors import PoolcliError

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".npy"})


@dataclass(frozen=True)
class InputList:
    """Inputs in processing order: ``files[key]`` is the input with that key.

    ``root`` is the common folder of all inputs (maps are written relative to it) and
    ``skipped`` counts the files in walked folders that are not images.
    """

    files: tuple[str, ...]
    root: str
    skipped: int

    def __len__(self) -> int:
        return len(self.files)

    def sha256(self) -> str:
        """Identity of the list, to refuse resuming a run over different inputs."""
        digest = hashlib.sha256()
        for path in self.files:
            digest.update(path.encode("utf-8", "surrogateescape") + b"\0")
        return digest.hexdigest()

    def relative(self, key: int) -> str:
        return os.path.relpath(self.files[key], self.root)


def collect_inputs(inputs: list[str], exclude: str | Path | None = None) -> InputList:
    """Files, folders (walked recursively for image and ``.npy`` files) and globs, as sorted
    absolute paths without duplicates. Files named directly are taken whatever their
    extension (they are decoded by content). ``exclude`` (the output folder) is never walked.

    Raises :class:`PoolcliError` for an input that does not exist or a glob that matches
    nothing.
    """
    excluded = os.path.abspath(exclude) if exclude is not None else None
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
            elif not _inside(path, excluded):
                found.add(path)
    if not found:
        raise PoolcliError("no image files found in " + ", ".join(inputs))
    files = tuple(sorted(found))
    root = os.path.commonpath([os.path.dirname(f) for f in files])
    return InputList(files, root, skipped)


def _inside(path: str, folder: str | None) -> bool:
    return folder is not None and (path == folder or path.startswith(folder.rstrip(os.sep) + os.sep))


def _walk(folder: str, excluded: str | None) -> tuple[list[str], int]:
    files, skipped = [], 0
    for parent, dirs, names in os.walk(folder):  # does not follow links to folders: no loops
        dirs[:] = [d for d in dirs if not _inside(os.path.join(parent, d), excluded)]
        for name in names:
            if os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS:
                files.append(os.path.join(parent, name))
            else:
                skipped += 1
    return files, skipped
