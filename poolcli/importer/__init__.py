"""``poolcli import``: an ONNX model -> a poolcli pipeline of ordinary stages and a
safetensors weights file. Writes configs; never runs a model. Needs the ``onnx`` package
(``pip install "poolcli[onnx]"``); the written pipeline runs without it.

The steps, each its own module: :mod:`.load` reads the file and refuses hostile ones,
:mod:`.graph` sorts the nodes, infers shapes and folds constants, :mod:`.rewrites` fuses
patterns, :mod:`.ops` converts each node to stages, :mod:`.write` writes the folder.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path

from poolcli.errors import ModelError


@dataclass(frozen=True)
class ImportSummary:
    model: Path
    out: Path
    opset: int
    nodes: int
    stages: int
    tensors: int
    seconds: float

    def line(self) -> str:
        return (f"{self.model} (opset {self.opset}): {_count(self.nodes, 'node')} -> {_count(self.stages, 'stage')}, "
                f"{_count(self.tensors, 'tensor')}, in {self.out} ({self.seconds:.1f} s)")


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def import_onnx(model: str | Path, out: str | Path, until: list[str] | tuple[str, ...] = ()) -> ImportSummary:
    """Convert ``model`` into ``out/pipeline.yaml`` and ``out/weights.safetensors``.

    ``until``: ONNX value names; only what they need is kept, the last is the output (default:
    the graph's first output). Raises :class:`ModelError` (one line) and leaves ``out`` as it
    was on any problem."""
    from poolcli.importer.graph import build_graph, did_you_mean, fold_constants, infer_shapes, probe_sizes
    from poolcli.importer.load import read_model
    from poolcli.importer.ops import convert
    from poolcli.importer.rewrites import GRAPH_REWRITES, STAGE_REWRITES
    from poolcli.importer.write import order, render, write_folder

    start = time.perf_counter()
    model, out = Path(model), Path(out)
    proto = read_model(model)
    graph = build_graph(proto, model)
    known = graph.values()
    for name in until:
        if name not in known:
            raise ModelError(f"--until {name}: no value of that name in {model.name}{did_you_mean(name, known)}")
        if name in graph.consts:
            raise ModelError(f"--until {name}: a constant of the model, not computed from the image")
    targets = list(until) or [graph.outputs[0]]
    graph.pinned.update(targets)
    prune(graph, targets)
    infer_shapes(graph, proto)
    for _ in range(8):  # sizes folded to constants: shapes that depend on them are known now
        if not fold_constants(graph):
            break
        infer_shapes(graph, proto)
    del proto
    for rewrite in GRAPH_REWRITES:
        rewrite(graph)
    prune(graph, targets)
    stages = convert(graph)
    for rewrite in STAGE_REWRITES:
        rewrite(stages, graph)
    stages = order(stages, graph, targets)

    header = [
        f"Imported from {model.name} by poolcli import (opset {graph.opset}): "
        f"{_count(graph.onnx_node_count, 'node')} -> {_count(len(stages), 'stage')}.",
        "ONNX does not record the input normalisation: set input.mean and input.std (e.g. ImageNet's",
        "mean [0.485, 0.456, 0.406] and std [0.229, 0.224, 0.225]) and input.resize as the model expects.",
    ]
    input_section = {"color": "rgb" if graph.input_dims[1] == 3 else "gray"}
    h, w = graph.input_dims[2:]
    if h is not None and w is not None:
        input_section["resize"] = {"size": [h, w]}
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", model.stem) or "model"
    text, tensors = render(stages, graph, header, name, input_section)
    probe = probe_sizes(graph)[0]

    def check(folder: Path) -> None:
        from poolcli.errors import PoolcliError
        from poolcli.pipeline import Pipeline

        try:
            Pipeline.from_yaml(folder / "pipeline.yaml").trace((graph.input_dims[1], *probe))
        except PoolcliError as exc:
            raise ModelError(f"{model.name}: the pipeline written does not load ({exc}); please report it") from None

    write_folder(out, text, tensors, check)
    return ImportSummary(model, out, graph.opset, graph.onnx_node_count, len(stages), len(tensors),
                         time.perf_counter() - start)


def prune(graph, targets: list[str]) -> None:
    """Keep only the nodes that the target values need."""
    needed = {graph.resolve(t) for t in targets}
    keep = []
    for node in reversed(graph.nodes):
        if any(o in needed for o in node.outputs):
            keep.append(node)
            needed.update(v for v in node.inputs if v)
    graph.nodes = keep[::-1]
