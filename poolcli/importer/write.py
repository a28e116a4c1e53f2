"""Stages -> ``pipeline.yaml`` (flow style, one stage a line, ``from`` only where needed) and
``weights.safetensors``, written to a temporary folder beside DIR and renamed at the end."""

from __future__ import annotations

import heapq
import os
import secrets
import shutil
from pathlib import Path

import numpy as np
import yaml

from poolcli.errors import ModelError
from poolcli.importer.graph import Graph
from poolcli.importer.ops import Stage, Weight

WEIGHTS = "weights.safetensors"
CONFIG = "pipeline.yaml"


def order(stages: list[Stage], graph: Graph, targets: list[str]) -> list[Stage]:
    """The stages needed for ``targets``, each after what it reads (the conv of a fused
    residual after the residual's producer), in the ONNX order where free, the last target's
    stage last."""
    producer = {s.output: s for s in stages}
    targets = [graph.resolve(t) for t in targets]
    for t in targets:
        if t == graph.input:
            raise ModelError(f"--until {t}: that is the model's input; name a value computed from it")
        if t not in producer:
            raise ModelError(f"--until {t}: no stage computes it (it is folded into a constant at import)")
    needed, todo = set(), list(targets)
    while todo:
        s = producer.get(todo.pop())
        if s is not None and id(s) not in needed:
            needed.add(id(s))
            todo.extend(s.reads)
    kept = [s for s in stages if id(s) in needed]
    index = {id(s): i for i, s in enumerate(kept)}
    final = producer[targets[-1]]
    waiting = {id(s): 0 for s in kept}
    users: dict[int, list[Stage]] = {}
    for s in kept:
        for v in set(s.reads):
            if v in producer and id(producer[v]) in needed:
                waiting[id(s)] += 1
                users.setdefault(id(producer[v]), []).append(s)
    heap = [(index[id(s)], id(s), s) for s in kept if waiting[id(s)] == 0]
    heapq.heapify(heap)
    out, held = [], None
    while heap or held is not None:
        if not heap:
            heap, held = [(0, id(held), held)], None
        _, _, s = heapq.heappop(heap)
        if s is final and heap:
            held = s
            continue
        out.append(s)
        for u in users.get(id(s), ()):
            waiting[id(u)] -= 1
            if waiting[id(u)] == 0:
                heapq.heappush(heap, (index[id(u)], id(u), u))
    if out[-1] is not final:
        raise ModelError(f"--until {targets[-1]}: another --until value is computed from it; give it last")
    return out


def render(stages: list[Stage], graph: Graph, header: list[str], name: str, input_section: dict):
    """(YAML text, {tensor name: float32 array})."""
    from poolcli.stages.filters import BANKS

    names: dict[str, str] = {graph.input: "input"}
    used = {"input"}
    for s in stages:
        base, k = s.name, 1
        while s.name in used:
            s.name, k = f"{base}_{k}", k + 1
        used.add(s.name)
        names[s.output] = s.name
    tensors: dict[str, np.ndarray] = {}

    def tensor(w: Weight, stage: Stage, key: str) -> str:
        array = np.ascontiguousarray(w.array, dtype=np.float32)
        candidates = []
        if w.origin and not w.origin.startswith("onnx::") and not w.origin.endswith(".npy") \
                and w.origin not in BANKS and w.origin.isprintable():
            candidates.append(w.origin)
        candidates.append(f"{stage.name}.{key}")
        for candidate in candidates:
            base, k = candidate, 1
            while candidate in tensors and not (tensors[candidate].shape == array.shape
                                                and np.array_equal(tensors[candidate], array)):
                candidate, k = f"{base}_{k}", k + 1
            tensors[candidate] = array
            return candidate

    def value(v, stage: Stage, key: str):
        if isinstance(v, Weight):
            if v.array.size == 1 and v.array.ndim <= 1:
                return float(v.array.reshape(()))
            return tensor(v, stage, key)
        if isinstance(v, dict):
            return {k: value(x, stage, f"{key}.{k}") for k, x in v.items()}
        if isinstance(v, (np.floating, np.integer)):
            return v.item()
        if isinstance(v, tuple):
            return list(v)
        return v

    lines = []
    previous = "input"
    for s in stages:
        entry = {"type": s.type, "name": s.name}
        sources = [names[v] for v in s.inputs]
        if len(sources) != 1 or sources[0] != previous:
            entry["from"] = sources[0] if len(sources) == 1 else sources
        for key, v in s.params.items():
            entry[key] = value(v, s, key)
        if s.residual:
            entry["residual"] = names[s.residual]
        lines.append("  - " + yaml.safe_dump(entry, default_flow_style=True, sort_keys=False, width=10**9).strip())
        previous = s.name
    def flow(v) -> str:
        return yaml.safe_dump([v], default_flow_style=True, sort_keys=False, width=10**9).strip()[1:-1]

    top = [f"name: {flow(name)}", "input:", *(f"  {k}: {flow(v)}" for k, v in input_section.items())]
    text = "\n".join([*("# " + h for h in header), *top, f"weights: {WEIGHTS}", "stages:", *lines,
                      "output:", "  normalize: none", ""])
    return text, tensors


def write_folder(out: Path, text: str, tensors: dict, check) -> None:
    """Write both files into a temporary folder beside ``out``, call ``check(folder)`` on it,
    then move them into ``out``: the folder renamed to ``out`` where there is none, else each
    file renamed over its old self (the first put back if the second fails). Folders and files
    get the usual permissions (0o777 and 0o666 less the umask). On any error, ``out`` and the
    folders above it are as they were: nothing created is left behind."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ModelError(f"-o {out}: exists and is not a folder")
    parent = out.parent if str(out.parent) else Path(".")
    created: list[Path] = []  # the folders above ``out`` made here, outermost first
    done = False
    tmp = None
    try:
        created = _make_folders(parent)
        tmp = _make_temporary(parent, out.name)
        from safetensors.numpy import save

        # safetensors' save_file makes its files 0o600: the bytes are written here instead
        _write_bytes(tmp / WEIGHTS, save(tensors))
        _write_bytes(tmp / CONFIG, text.encode("utf-8"))
        check(tmp)
        if out.exists():
            _replace_files(tmp, out)
        else:
            os.rename(tmp, out)
            tmp = None
        _fsync(out)
        _fsync(parent)
        done = True
    except OSError as exc:
        raise ModelError(f"-o {out}: cannot write there: {exc.strerror or exc}") from None
    finally:
        if tmp is not None and tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
        if not done:
            for folder in reversed(created):
                try:
                    folder.rmdir()
                except OSError:
                    break


def _write_bytes(path: Path, data: bytes) -> None:
    """A new file (mode 0o666 less the umask) holding ``data``, flushed to the disk."""
    with open(path, "xb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _make_folders(folder: Path) -> list[Path]:
    """``mkdir -p folder``; the folders it made, outermost first."""
    missing = []
    while not folder.exists():
        missing.append(folder)
        if folder.parent == folder:
            break
        folder = folder.parent
    made = []
    for path in reversed(missing):
        try:
            path.mkdir()
        except FileExistsError:
            continue
        except OSError:
            for done in reversed(made):
                try:
                    done.rmdir()
                except OSError:
                    break
            raise
        made.append(path)
    return made


def _make_temporary(parent: Path, name: str) -> Path:
    """A new, empty folder ``.NAME.import-...`` in ``parent``, mode 0o777 less the umask (not
    mkdtemp's 0o700, which the renamed folder would keep)."""
    for _ in range(100):
        path = parent / f".{name}.import-{os.getpid()}-{secrets.token_hex(4)}"
        try:
            os.mkdir(path, 0o777)
            return path
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary name in {parent}")


def _replace_files(tmp: Path, out: Path) -> None:
    """Rename ``tmp``'s two files over ``out``'s; where the second fails, the first's old
    file goes back (kept meanwhile as a hard link, or a copy, in ``tmp``)."""
    kept = {}
    for name in (WEIGHTS, CONFIG):
        old = out / name
        if old.is_file():
            backup = tmp / f".old.{name}"
            try:
                os.link(old, backup)
            except OSError:
                shutil.copy2(old, backup)
            kept[name] = backup
    replaced = []
    try:
        for name in (WEIGHTS, CONFIG):
            os.replace(tmp / name, out / name)
            replaced.append(name)
    except BaseException:
        for name in replaced:
            try:
                if name in kept:
                    os.replace(kept[name], out / name)
                else:
                    (out / name).unlink()
            except OSError:
                pass
        raise


def _fsync(path: Path) -> None:
    """Flush ``path`` (a file, or a folder's entries) to the disk, where the system allows it."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
