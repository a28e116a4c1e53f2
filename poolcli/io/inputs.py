"""Turning the command line's files, folders, globs, tar shards and file lists into one sorted
list of inputs.

Local paths are walked with os and glob; fsspec URLs (``s3://bucket/prefix``) are listed through
:mod:`poolcli.io.storage`, with the same rules. A ``.tar`` given as an input (by name, by a
glob or in a file list) is a shard whose image members are inputs (:mod:`poolcli.io.tars`),
each named ``SHARD.tar/MEMBER``; tar files met while walking a folder are not opened."""

from __future__ import annotations

import glob
import hashlib
import os
import posixpath
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from poolcli.errors import PoolcliError
from poolcli.io.storage import RemotePath, as_path, is_url, local_path
from poolcli.io.tars import TarMember, is_tar, list_members

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".avif", ".heic",
                              ".heif", ".npy"})


@dataclass(frozen=True)
class InputList:
    """Inputs in processing order: ``path(key)`` is the input with that key.

    ``root`` is the common folder of all inputs (maps are written relative to it; a tar
    member counts as in its shard's folder) and ``skipped_files`` are the files in walked
    folders and the members of tar shards (``SHARD.tar/MEMBER``) that are not images (nor
    named as inputs themselves), sorted; ``skipped`` is how many. A :meth:`part` holds the keys ``first`` to
    ``first + len(files) - 1`` only: what one shard's task is sent. ``members`` is None when
    no input is a tar member, else, for each input, its :class:`TarMember` or None.
    """

    files: tuple[str, ...]
    root: str
    skipped_files: tuple[str, ...] = ()
    first: int = 0
    members: tuple[TarMember | None, ...] | None = None

    def __len__(self) -> int:
        return len(self.files)

    @property
    def skipped(self) -> int:
        return len(self.skipped_files)

    def sha256(self) -> str:
        """Identity of the list, to refuse resuming a run over different inputs."""
        digest = hashlib.sha256()
        for path in self.files:
            digest.update(path.encode("utf-8", "surrogateescape") + b"\0")
        return digest.hexdigest()

    def path(self, key: int) -> str:
        return self.files[key - self.first]

    def source(self, key: int) -> str | TarMember:
        """What to decode for ``key``: its path, or its member of a tar shard."""
        member = self.members[key - self.first] if self.members is not None else None
        return member if member is not None else self.files[key - self.first]

    def part(self, first: int, end: int) -> InputList:
        """The inputs with keys ``[first, end)``, keeping their keys."""
        members = self.members[first - self.first:end - self.first] if self.members is not None else None
        return InputList(self.files[first - self.first:end - self.first], self.root, (), first, members)

    def relative(self, key: int) -> str:
        if is_url(self.root):
            return self.path(key)[len(self.root):].lstrip("/")
        return os.path.relpath(self.path(key), self.root)


def read_file_list(source: str) -> list[str]:
    """The paths or URLs listed in the file ``source``, one a line (``-``: standard input);
    blank lines are left out."""
    try:
        if source == "-":
            text = sys.stdin.read()
        else:
            text = as_path(local_path(source)).read_bytes().decode("utf-8", "surrogateescape")
    except OSError as exc:
        raise PoolcliError(f"cannot read the file list {source}: {exc.strerror or exc}") from None
    return [line.rstrip("\r") for line in text.split("\n") if line.strip()]


def collect_inputs(inputs: list[str], exclude: str | Path | None = None, listed: Iterable[str] = ()) -> InputList:
    """Files, folders (walked recursively for image and ``.npy`` files), globs and tar shards,
    as sorted absolute paths without duplicates. Files named directly are taken whatever their
    extension (they are decoded by content). ``exclude`` (the output folder) is never walked.

    Inputs may also be fsspec URLs (all of them, then), listed the same way: a URL is taken
    as a folder when objects lie under it. A ``.tar`` input stands for its image members.

    ``listed`` (``run --files-from``) are files taken as they are named: not walked, not
    expanded as globs, not even looked up, so that one gone since the list was made is a
    failure row of the run rather than the end of it; a listed ``.tar`` is opened as a shard.

    Raises :class:`PoolcliError` for an input that does not exist or a glob that matches
    nothing.
    """
    inputs = [local_path(given) for given in inputs]
    listed = [local_path(given) for given in listed]
    if any(is_url(given) for given in inputs + listed):
        return _collect_urls(inputs, exclude, listed)
    # Compared by real path: OUT reached through a link, or named through one, is still OUT.
    excluded = os.path.realpath(exclude) if exclude is not None else None
    found: dict[str, TarMember | None] = {}
    skipped: set[str] = set()
    for given in listed:
        path = os.path.abspath(given)
        if is_tar(path):
            skipped.update(_add_shard(found, path))
        elif not _inside(os.path.realpath(path), excluded):
            found[path] = None
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
                found.update(dict.fromkeys(files))
                skipped.update(not_images)
            elif is_tar(path) and os.path.isfile(path):
                skipped.update(_add_shard(found, path))
            elif not _inside(os.path.realpath(path), excluded):
                found[path] = None
    if not found:
        raise PoolcliError("no image files found in " + ", ".join(inputs + listed))
    files = tuple(sorted(found))
    root = os.path.commonpath([os.path.dirname(_container(f, found[f])) for f in files])
    return InputList(files, root, tuple(sorted(skipped - found.keys())), members=_members(files, found))


def _add_shard(found: dict, shard: str) -> list[str]:
    """The image members of the tar ``shard`` into ``found``; returns the skipped members' paths."""
    members, skipped = list_members(shard, IMAGE_EXTENSIONS)
    found.update((member.path, member) for member in members)
    return skipped


def _container(path: str, member: TarMember | None) -> str:
    """Where an input lies: a tar member in its shard (whose folder is then the input's)."""
    return member.shard if member is not None else path


def _members(files: tuple[str, ...], found: dict) -> tuple | None:
    members = tuple(found[f] for f in files)
    return members if any(m is not None for m in members) else None


def _inside(path: str, folder: str | None, sep: str = os.sep) -> bool:
    return folder is not None and (path == folder or path.startswith(folder.rstrip(sep) + sep))


def _walk(folder: str, excluded: str | None) -> tuple[list[str], list[str]]:
    """The image files under ``folder``, and the other files (skipped)."""
    files, skipped = [], []
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
                skipped.append(os.path.join(parent, name))
    return files, skipped


def _collect_urls(inputs: list[str], exclude, listed: list[str]) -> InputList:
    if not all(is_url(given) for given in inputs + listed):
        raise PoolcliError("inputs mix local paths and URLs; give one kind: " + ", ".join(inputs + listed))
    excluded = str(RemotePath(str(exclude))) if exclude is not None and is_url(str(exclude)) else None
    found: dict[str, TarMember | None] = {}
    skipped: set[str] = set()
    try:
        for given in listed:
            if is_tar(given):
                skipped.update(_add_shard(found, str(RemotePath(given))))
            else:
                found[str(RemotePath(given))] = None
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
                            found[url] = None
                        else:
                            skipped.add(url)
                elif is_tar(str(path)):
                    skipped.update(_add_shard(found, str(path)))
                elif not _inside(str(path), excluded, "/"):
                    found[str(path)] = None
    except OSError as exc:
        raise PoolcliError(f"cannot list {', '.join(inputs + listed)}: {exc}") from None
    if not found:
        raise PoolcliError("no image files found in " + ", ".join(inputs + listed))
    files = tuple(sorted(found))
    scheme, _ = files[0].split("://", 1)
    if any(not f.startswith(scheme + "://") for f in files):
        raise PoolcliError("inputs on different kinds of storage; give URLs of one scheme: " + ", ".join(inputs + listed))
    keys = [_container(f, found[f]).split("://", 1)[1] for f in files]
    root = f"{scheme}://" + posixpath.commonpath([posixpath.dirname(k) for k in keys])
    return InputList(files, root, tuple(sorted(skipped - found.keys())), members=_members(files, found))
