"""Tar shards in the webdataset layout (img2dataset writes them): every image member an input.

A shard is listed once, when the inputs are collected: Python's tarfile reads each member's
header and seeks past its data (a local file, or an fsspec URL read through fsspec's file
object), and each image member becomes a :class:`TarMember` that knows where its bytes lie.
Decoding then reads exactly those bytes (a seek and a read, or one ranged request), in any
order and on any thread or node: nothing is extracted to disk and no tarfile object is shared.

A sample's files share a key, the member's name up to the first dot of its base name
(``00042/000420017.jpg`` and ``00042/000420017.json``); the ``.json`` beside an image (its url,
caption and key, as img2dataset writes them) is read with the image and carried into its
metadata row. Damage found while listing (the archive ends inside a header, or without its
end-of-archive blocks, or is no tar at all) becomes one extra input named after the shard,
whose decoding fails with the reason: a failure row, never a crash or a silently shorter run.
"""

from __future__ import annotations

import json
import os
import posixpath
import tarfile
from dataclasses import dataclass

from poolcli.errors import ImageError, PoolcliError
from poolcli.io.storage import RemotePath, as_path

#: Metadata columns taken from a sample's ``.json``: (column, the JSON key).
SAMPLE_FIELDS = (("url", "url"), ("caption", "caption"), ("sample_key", "key"))

_BLOCK = tarfile.BLOCKSIZE


def is_tar(path: str) -> bool:
    """A tar shard, by its name (``.tar``, any case): the inputs that are expanded into members."""
    return str(path).lower().endswith(".tar")


@dataclass(frozen=True)
class TarMember:
    """One member of a tar shard: ``size`` bytes at ``offset`` of the file ``shard`` (a path or
    URL). ``sidecar`` is the (offset, size) of the sample's ``.json``, if it has one. A member
    with a ``problem`` stands for damage found in the shard: reading it raises that reason."""

    shard: str
    name: str
    offset: int = 0
    size: int = 0
    sidecar: tuple[int, int] | None = None
    problem: str | None = None

    @property
    def path(self) -> str:
        """``SHARD.tar/MEMBER``: the path written in the metadata (the shard itself for damage)."""
        return f"{self.shard}/{self.name}" if self.name else self.shard

    def read(self) -> bytes:
        """The member's bytes. ImageError for a member cut short by a truncated shard; OSError
        when the shard cannot be read (it becomes the failure row's reason)."""
        if self.problem is not None:
            raise ImageError(self.problem)
        data = _read_range(self.shard, self.offset, self.size)
        if len(data) < self.size:
            raise ImageError(f"truncated tar: {self.name} has {len(data)} of its {self.size} bytes in the shard")
        return data

    def sample_metadata(self) -> dict:
        """:data:`SAMPLE_FIELDS` from the sample's ``.json`` (as strings), None where it has none,
        where the file is not a JSON object, or where it cannot be read."""
        values = dict.fromkeys(column for column, _ in SAMPLE_FIELDS)
        if self.sidecar is None:
            return values
        try:
            sample = json.loads(_read_range(self.shard, *self.sidecar))
        except (OSError, ValueError):  # a damaged .json costs its fields, not the image
            return values
        if isinstance(sample, dict):
            for column, key in SAMPLE_FIELDS:
                if sample.get(key) is not None:
                    values[column] = str(sample[key])
        return values


def _read_range(shard: str, offset: int, size: int) -> bytes:
    path = as_path(shard)
    if isinstance(path, RemotePath):
        with path._errors():
            return path.fs.cat_file(path.key, start=offset, end=offset + size)
    with open(path, "rb") as file:
        file.seek(offset)
        return file.read(size)


def list_members(shard: str, extensions: frozenset[str]) -> tuple[list[TarMember], list[str]]:
    """The members of ``shard`` whose extension is in ``extensions`` (the inputs), in archive
    order, and the paths (``SHARD.tar/MEMBER``, as the inputs') of the other members that are
    neither inputs nor a sidecar of one (the skipped), in archive order.
    Damage becomes a member with a ``problem``; a shard that cannot be opened at all raises
    PoolcliError, as a missing input does."""
    location = as_path(shard)
    try:
        file = location.open("rb")
    except FileNotFoundError:
        raise PoolcliError(f"input not found: {shard}") from None
    except OSError as exc:
        raise PoolcliError(f"cannot read {shard}: {exc}") from None
    entries: list[tarfile.TarInfo] = []
    problem = None
    with file:
        try:
            archive = tarfile.open(fileobj=file, mode="r:")  # plain tar only: no compression
        except tarfile.TarError as exc:
            return [TarMember(shard, "", problem=f"not a tar archive: {exc}")], []
        try:
            for info in archive:
                entries.append(info)
        except (tarfile.TarError, EOFError, OSError) as exc:
            problem = f"truncated tar: cannot read past {_last(entries)}: {exc}"
        if problem is None:
            problem = _check_end(file, archive.offset, _last(entries))
    files = [info for info in entries if info.isfile()]
    by_name = {info.name: info for info in files}
    sample_keys = {_sample_key(info.name) for info in files if _extension(info.name) in extensions}
    members, skipped = [], []
    for info in files:
        if _extension(info.name) in extensions:
            sidecar = by_name.get(_sample_key(info.name) + ".json")
            where = (sidecar.offset_data, sidecar.size) if sidecar is not None else None
            members.append(TarMember(shard, info.name, info.offset_data, info.size, where))
        elif _sample_key(info.name) not in sample_keys:
            skipped.append(TarMember(shard, info.name).path)
    if problem is not None:
        members.append(TarMember(shard, "", problem=problem))
    return members, skipped


def _check_end(file, end: int, last: str) -> str | None:
    """None if the archive goes on past its last member with an end-of-archive block (zeros),
    as every tar writer ends it; else why it looks truncated."""
    try:
        file.seek(end)
        block = file.read(_BLOCK)
    except OSError as exc:
        return f"truncated tar: cannot read past {last}: {exc}"
    if len(block) < _BLOCK or block.count(0) != _BLOCK:
        return f"truncated tar: it ends after {last} without its end-of-archive blocks; members may be missing"
    return None


def _last(entries: list[tarfile.TarInfo]) -> str:
    return f"member {entries[-1].name}" if entries else "its start"


def _extension(name: str) -> str:
    return os.path.splitext(name)[1].lower()


def _sample_key(name: str) -> str:
    """webdataset's key: the name up to the first dot of its base name."""
    folder, base = posixpath.split(name)
    return posixpath.join(folder, base.split(".", 1)[0])

