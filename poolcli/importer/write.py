"""Stages -> ``pipeline.yaml`` (flow style, one stage a line, ``from`` only where needed) and
``weights.safetensors``, written to a temporary folder beside DIR and renamed at the end."""

from __future__ import annotations

import heapq
import os
import shutil
import tempfile
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
    then move them into ``out``; on any error ``out`` is as it was."""
    from safetensors.numpy import save_file

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ModelError(f"-o {out}: exists and is not a folder")
    parent = out.parent if str(out.parent) else Path(".")
    try:
        parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.import-", dir=parent))
    except OSError as exc:
        raise ModelError(f"-o {out}: cannot write there: {exc.strerror or exc}") from None
    try:
        save_file(tensors, str(tmp / WEIGHTS))
        (tmp / CONFIG).write_text(text, encoding="utf-8")
        check(tmp)
        if not out.exists():
            os.rename(tmp, out)
            return
        os.replace(tmp / WEIGHTS, out / WEIGHTS)
        os.replace(tmp / CONFIG, out / CONFIG)
    except OSError as exc:
        raise ModelError(f"-o {out}: cannot write there: {exc.strerror or exc}") from None
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
