"""The configs shipped with poolcli, installed in the package with the files they reference:
every command that takes a CONFIG takes one of their names (``poolcli run retrieval photos/ -o
out``) as well as a path, from any folder."""

from __future__ import annotations

import difflib
import re
import shutil
from pathlib import Path

from poolcli.errors import ConfigError

FOLDER = Path(__file__).parent / "configs"


def names() -> list[str]:
    """The shipped configs' names, sorted."""
    return sorted(path.stem for path in FOLDER.glob("*.yaml"))


def find_config(config: str | Path) -> Path:
    """The YAML file that ``config`` names: a path to a file, or a shipped config's name (with
    or without ``.yaml``). A file of that name in the current folder wins over a shipped one."""
    path = Path(config)
    if path.exists() or len(path.parts) != 1:
        return path
    name = path.name[:-5] if path.name.endswith(".yaml") else path.name
    shipped = FOLDER / f"{name}.yaml"
    if shipped.is_file():
        return shipped
    guess = difflib.get_close_matches(name, names(), n=1)
    hint = f"did you mean '{guess[0]}'? " if guess else ""
    raise ConfigError(f"no config file {config}, nor a shipped config named '{name}' ({hint}`poolcli configs` "
                      f"lists them: {', '.join(names())})")


def description(path: Path) -> str:
    """A config's first sentence, from the comment at its top (its words in brackets left out)."""
    lines = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.startswith("#") or not line.strip("# "):
            break
        lines.append(line.lstrip("# ").strip())
    text = re.sub(r"\s*\([^)]*\)", "", " ".join(lines))
    return re.split(r"(?<=[A-Za-z0-9`])[.:](?:\s|$)", text, maxsplit=1)[0].strip()


def referenced_files(path: Path) -> list[Path]:
    """The files a config names by a path relative to its own folder (weights, whitening)."""
    from poolcli.config import read_config_file

    data, _ = read_config_file(path)
    found, todo = set(), [data]
    while todo:
        value = todo.pop()
        if isinstance(value, dict):
            todo.extend(value.values())
        elif isinstance(value, list):
            todo.extend(value)
        elif isinstance(value, str) and not Path(value).is_absolute() and (path.parent / value).is_file():
            found.add(Path(value))
    return sorted(found)


def copy_config(name: str, folder: str | Path) -> Path:
    """Copy a shipped config into ``folder`` with the files it references, where they keep the
    same relative paths, so that the copy runs as it is and can be edited. Returns its path;
    an existing file is never replaced."""
    source = find_config(name)
    folder = Path(folder)
    targets = [(source, folder / source.name)] + [(source.parent / f, folder / f) for f in referenced_files(source)]
    existing = [str(target) for _, target in targets if target.exists()]
    if existing:
        raise ConfigError(f"{existing[0]} exists already; copy into another folder")
    try:
        for src, target in targets:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, target)
    except OSError as exc:
        raise ConfigError(f"cannot copy the config into {folder}: {exc.strerror or exc}") from None
    return folder / source.name
