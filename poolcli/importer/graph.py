"""The ONNX graph as the importer sees it: nodes in topological order, constants as NumPy
arrays, and each value's shape for one or two probe input sizes.

A model whose input height and width are dynamic is traced at two probe sizes: shapes are then
concrete at each, shape arithmetic (Shape, Gather, Concat...) folds to constants at each, and a
folded value that differs between the two depends on the input size (a stage cannot hold it).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from poolcli.errors import ModelError
from poolcli.importer.load import model_opset, onnx_module, tensor_array

#: Probe (H, W) sizes for a model whose input size is dynamic: multiples of 64, not square.
PROBES = ((256, 320), (320, 384))
#: A constant folded at import may hold at most this many elements (a ConstantOfShape of 2^40
#: is refused, not allocated).
MAX_FOLDED = 2**24


@dataclass
class Node:
    name: str
    op: str
    inputs: list[str]
    outputs: list[str]
    attrs: dict = field(default_factory=dict)
    domain: str = ""
    proto: object = field(default=None, repr=False, compare=False)  # the NodeProto, for shape inference

    def attr(self, key, default=None):
        return self.attrs.get(key, default)

    def __str__(self) -> str:
        return f"node '{self.name}' ({self.op})"


class Graph:
    """Nodes in topological order; ``consts``: initializers, Constant outputs and folded
    values; ``shapes[k][value]``: the value's shape (batch included) at probe ``k``."""

    def __init__(self, nodes, consts, input_name, input_dims, outputs, opset, source):
        self.nodes: list[Node] = nodes
        self.consts: dict[str, np.ndarray] = consts
        self.input = input_name
        self.input_dims = input_dims  # ONNX dims, None where dynamic
        self.outputs: list[str] = outputs
        self.opset = opset
        self.source = source
        self.shapes: list[dict[str, tuple[int, ...]]] = []
        self.size_dependent: set[str] = set()
        self.aliases: dict[str, str] = {}  # a value removed by a rewrite -> the value it equals
        self.pinned: set[str] = set(outputs)  # values a rewrite must not fuse away
        self.layouts: dict[str, str] = {}  # set by ops.convert: nchw, nhwc or vec per value
        self.onnx_node_count = len(nodes)

    # --- queries ---------------------------------------------------------------------------

    def producer(self, value: str) -> Node | None:
        return self._producers().get(value)

    def consumers(self, value: str) -> list[Node]:
        return [n for n in self.nodes if value in n.inputs]

    def only_user(self, value: str) -> Node | None:
        """The one node reading ``value``, when exactly one does and it is not pinned."""
        if value in self.pinned:
            return None
        users = self.consumers(value)
        if len(users) != 1 or users[0].inputs.count(value) != 1:
            return None
        return users[0]

    def const(self, value: str) -> np.ndarray | None:
        return self.consts.get(value) if value else None

    def shape(self, value: str, probe: int = 0) -> tuple[int, ...] | None:
        if not self.shapes:
            return None
        shapes = self.shapes[probe]
        return shapes[value] if value in shapes else shapes.get(self.resolve(value))

    def same_shape(self, a: str, b: str) -> bool:
        """``a`` and ``b`` have the same known shape at every probe."""
        return all(self.map_shape(a, k) is not None and self.map_shape(a, k) == self.map_shape(b, k)
                   for k in range(len(self.shapes)))

    def map_shape(self, value: str, probe: int = 0) -> tuple[int, ...] | None:
        """The shape as poolcli sees it: a channels-last value's channels first."""
        shape = self.shape(value, probe)
        if shape is not None and len(shape) == 4 and self.layouts.get(value) == "nhwc":
            return (shape[0], shape[3], shape[1], shape[2])
        return shape

    def resolve(self, value: str) -> str:
        seen = 0
        while value in self.aliases and seen < 10_000:
            value, seen = self.aliases[value], seen + 1
        return value

    def values(self) -> set[str]:
        names = {self.input, *self.consts}
        for n in self.nodes:
            names.update(n.outputs)
        return names

    def _producers(self) -> dict[str, Node]:
        return {o: n for n in self.nodes for o in n.outputs if o}

    # --- edits -------------------------------------------------------------------------------

    def replace_uses(self, old: str, new: str) -> None:
        """Every reader of ``old`` reads ``new`` instead; ``old`` stays findable as an alias."""
        for n in self.nodes:
            n.inputs = [new if v == old else v for v in n.inputs]
        self.outputs = [new if v == old else v for v in self.outputs]
        if old in self.pinned:
            self.pinned.add(new)
        self.aliases[old] = new

    def remove(self, *nodes: Node) -> None:
        gone = {id(n) for n in nodes}
        self.nodes = [n for n in self.nodes if id(n) not in gone]


# --- building ----------------------------------------------------------------------------------


def build_graph(model, path: Path) -> Graph:
    """A :class:`Graph` of a checked model: its one image input, nodes sorted (a cycle is an
    error), every input of every node defined."""
    onnx = onnx_module()
    g = model.graph
    opset = model_opset(model, path)
    consts = {t.name: tensor_array(t, path) for t in g.initializer}
    inputs = [i for i in g.input if i.name not in consts]
    if len(inputs) != 1:
        names = ", ".join(i.name for i in inputs) or "none"
        raise ModelError(f"{path}: poolcli imports models with one image input, this one has {len(inputs)} ({names})")
    info = inputs[0]
    dims = _dims(info)
    if info.type.tensor_type.elem_type not in (1, 0):
        raise ModelError(f"{path}: input '{info.name}' is not float32 (ONNX type {info.type.tensor_type.elem_type})")
    if dims is None or len(dims) != 4:
        raise ModelError(f"{path}: input '{info.name}' has shape {dims}; poolcli feeds images as (1, C, H, W)")
    if dims[0] not in (None, 1):
        raise ModelError(f"{path}: input '{info.name}' has batch size {dims[0]}; export with batch 1 or a dynamic batch")
    if dims[1] not in (1, 3):
        raise ModelError(f"{path}: input '{info.name}' has {dims[1]} channels; poolcli reads images as 3 (rgb) "
                         "or 1 (gray)")
    nodes, seen = [], set()
    for i, proto in enumerate(g.node):
        name = proto.name or f"{proto.op_type}_{i}"
        base, k = name, 1
        while name in seen or name == "input":
            name, k = f"{base}_{k}", k + 1
        seen.add(name)
        attrs = {a.name: _attr(a, onnx, path, name) for a in proto.attribute}
        nodes.append(Node(name, proto.op_type, list(proto.input), list(proto.output), attrs, proto.domain, proto))
    outputs = [o.name for o in g.output]
    if not outputs:
        raise ModelError(f"{path}: the graph has no output")
    graph = Graph(_sorted(nodes, {info.name, *consts}, path), consts, info.name, dims, outputs, opset, path)
    graph.original_consts = set(consts)
    defined = graph.values()
    for o in outputs:
        if o not in defined:
            raise ModelError(f"{path}: graph output '{o}' is computed by no node (truncated or malformed file)")
    for n in list(graph.nodes):
        if n.op == "Constant" and n.domain in ("", "ai.onnx"):
            graph.consts[n.outputs[0]] = _constant_value(n, path)
            graph.remove(n)
    return graph


def _dims(info) -> list[int | None] | None:
    t = info.type.tensor_type
    if not t.HasField("shape"):
        return None
    return [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]


def _attr(a, onnx, path, node):
    if a.type == onnx.AttributeProto.TENSOR:
        return tensor_array(a.t, path, f"node '{node}'")
    if a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS):
        return "<graph>"
    if a.type == onnx.AttributeProto.TENSORS:
        return [tensor_array(t, path, f"node '{node}'") for t in a.tensors]
    value = onnx.helper.get_attribute_value(a)
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    elif isinstance(value, list):
        value = [v.decode("utf-8", "replace") if isinstance(v, bytes) else v for v in value]
    return value


def _constant_value(n: Node, path) -> np.ndarray:
    for key, dtype in (("value", None), ("value_float", np.float32), ("value_floats", np.float32),
                       ("value_int", np.int64), ("value_ints", np.int64)):
        if key in n.attrs:
            value = n.attrs[key]
            return value if dtype is None else np.asarray(value, dtype=dtype)
    raise ModelError(f"{path}: {n}: a Constant without a numeric value ({', '.join(n.attrs) or 'none'})")


def _sorted(nodes: list[Node], ready: set[str], path) -> list[Node]:
    """Kahn's sort, stable; a cycle or an undefined input is an error."""
    producers: dict[str, int] = {}
    for i, n in enumerate(nodes):
        for o in n.outputs:
            if o:
                if o in producers or o in ready:
                    raise ModelError(f"{path}: value '{o}' is defined twice ({n}); malformed file")
                producers[o] = i
    waiting = [0] * len(nodes)
    users: dict[int, list[int]] = {}
    for i, n in enumerate(nodes):
        for v in set(filter(None, n.inputs)):
            if v in ready:
                continue
            if v not in producers:
                raise ModelError(f"{path}: {n} reads '{v}', which no node, input or initializer defines "
                                 "(truncated or malformed file)")
            waiting[i] += 1
            users.setdefault(producers[v], []).append(i)
    import heapq

    heap = [i for i in range(len(nodes)) if waiting[i] == 0]
    heapq.heapify(heap)
    order = []
    while heap:
        i = heapq.heappop(heap)
        order.append(nodes[i])
        for u in users.get(i, ()):
            waiting[u] -= 1
            if waiting[u] == 0:
                heapq.heappush(heap, u)
    if len(order) != len(nodes):
        stuck = next(n for i, n in enumerate(nodes) if waiting[i])
        raise ModelError(f"{path}: the graph has a cycle (through {stuck}); refused")
    return order


# --- shapes --------------------------------------------------------------------------------


def probe_sizes(graph: Graph) -> list[tuple[int, int]]:
    h, w = graph.input_dims[2], graph.input_dims[3]
    if h is not None and w is not None:
        return [(h, w)]
    return [(h or ph, w or pw) for ph, pw in PROBES]


def infer_shapes(graph: Graph, model) -> None:
    """Each value's shape at each probe size, by onnx's shape inference over the graph's nodes,
    its small constants as initializers and its large ones as typed inputs (no weight is
    copied). Run again after :func:`fold_constants`, it sees the folded sizes as constants."""
    onnx = onnx_module()
    helper = onnx.helper
    from onnx import numpy_helper

    small, typed = [], []
    for name, value in graph.consts.items():
        if value.size <= 4096 and value.dtype != np.float16:
            small.append(numpy_helper.from_array(np.asarray(value), name))
        else:
            typed.append(helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(value.dtype),
                                                       list(value.shape)))
    protos = [n.proto for n in graph.nodes if n.proto is not None]
    outputs = [helper.make_empty_tensor_value_info(o) for o in graph.outputs]
    first = not graph.shapes
    for k, (h, w) in enumerate(probe_sizes(graph)):
        c = graph.input_dims[1]
        inputs = [helper.make_tensor_value_info(graph.input, onnx.TensorProto.FLOAT, [1, c, h, w]), *typed]
        probe = helper.make_model(helper.make_graph(protos, "probe", inputs, outputs, initializer=small),
                                  opset_imports=list(model.opset_import))
        probe.ir_version = model.ir_version
        try:
            inferred = onnx.shape_inference.infer_shapes(probe, check_type=False, strict_mode=False, data_prop=True)
        except Exception as exc:
            raise ModelError(f"{graph.source}: shape inference failed at input size {h}x{w}: "
                             f"{' '.join(str(exc).split())[:300]}") from None
        shapes = {graph.input: (1, c, h, w)}
        for name, value in graph.consts.items():
            shapes[name] = tuple(value.shape)
        for info in [*inferred.graph.value_info, *inferred.graph.output]:
            dims = _dims(info)
            if dims is not None and all(d is not None for d in dims):
                shapes.setdefault(info.name, tuple(dims))
        if first:
            graph.shapes.append(shapes)
        else:
            graph.shapes[k] = {**graph.shapes[k], **shapes}


# --- constant folding ------------------------------------------------------------------------


def fold_constants(graph: Graph) -> int:
    """Evaluate with NumPy every node whose inputs are all constant (and Shape of a value of
    known shape) at each probe; a value equal at every probe becomes a constant and its node
    goes; one that differs depends on the input size. Returns the number of nodes folded."""
    results = [dict() for _ in graph.shapes]
    for k, shapes in enumerate(graph.shapes):
        known = results[k]
        for n in graph.nodes:
            if n.op not in FOLD or n.domain not in ("", "ai.onnx"):
                continue
            args = []
            for v in n.inputs:
                if not v:
                    args.append(None)
                elif v in graph.consts:
                    args.append(graph.consts[v])
                elif v in known:
                    args.append(known[v])
                elif n.op in ("Shape", "Size") and shapes.get(v) is not None:
                    args.append(_ShapeOnly(shapes[v]))
                else:
                    break
            else:
                try:
                    out = FOLD[n.op](n, graph.opset, *args)
                except ModelError:
                    raise
                except Exception as exc:
                    raise ModelError(f"{n}: cannot be computed at import ({type(exc).__name__}: {exc})") from None
                outs = out if isinstance(out, tuple) else (out,)
                for name, value in zip(n.outputs, outs):
                    known[name] = np.asarray(value)
    folded = 0
    for n in list(graph.nodes):
        if not n.outputs or any(o not in results[0] for o in n.outputs):
            continue
        if all(all(_equal(r[o], results[0][o]) for r in results) for o in n.outputs):
            for o in n.outputs:
                graph.consts[o] = results[0][o]
            graph.remove(n)
            folded += 1
        else:
            graph.size_dependent.update(n.outputs)
    return folded


class _ShapeOnly:
    def __init__(self, shape):
        self.shape = shape


def _equal(a, b) -> bool:
    return a.shape == b.shape and a.dtype == b.dtype and np.array_equal(a, b)


def _ints(x) -> list[int]:
    return [int(v) for v in np.asarray(x).reshape(-1)]


def _axes(n: Node, opset: int, from_input_at: int, axes_input=None):
    if opset >= from_input_at:
        return None if axes_input is None else _ints(axes_input)
    value = n.attr("axes")
    return None if value is None else list(value)


def _check_count(n, shape):
    count = 1
    for d in shape:
        if d < 0:
            raise ModelError(f"{n}: a negative dimension {d} at import")
        count *= int(d)
        if count > MAX_FOLDED:
            raise ModelError(f"{n}: computes a constant of shape {list(shape)} at import; refused")


def _shape(n, opset, x):
    dims = list(x.shape)
    start, end = n.attr("start", 0), n.attr("end", None)
    return np.array(dims[start:end] if end is not None else dims[start:], dtype=np.int64)


def _size(n, opset, x):
    return np.array(int(np.prod(x.shape, dtype=np.int64)), dtype=np.int64)


def _gather(n, opset, data, indices):
    return np.take(data, indices.astype(np.int64), axis=n.attr("axis", 0))


def _unsqueeze(n, opset, data, axes=None):
    axes = _axes(n, opset, 13, axes)
    rank = data.ndim + len(axes)
    out = data
    for a in sorted(a % rank for a in axes):
        out = np.expand_dims(out, a)
    return out


def _squeeze(n, opset, data, axes=None):
    axes = _axes(n, opset, 13, axes)
    if axes is None:
        return np.squeeze(data)
    return np.squeeze(data, axis=tuple(a % data.ndim for a in axes))


def _concat(n, opset, *xs):
    return np.concatenate([x for x in xs if x is not None], axis=n.attr("axis", 0))


_ONNX_TO_NP = {1: np.float32, 2: np.uint8, 3: np.int8, 5: np.int16, 6: np.int32, 7: np.int64, 9: np.bool_,
               10: np.float16, 11: np.float64, 12: np.uint32, 13: np.uint64}


def _cast(n, opset, x):
    to = n.attr("to")
    if to not in _ONNX_TO_NP:
        raise ModelError(f"{n}: a cast to ONNX type {to}, which poolcli does not compute")
    return x.astype(_ONNX_TO_NP[to])


def _reshape(n, opset, data, shape=None):
    target = _ints(shape) if shape is not None else list(n.attr("shape"))
    if not n.attr("allowzero", 0):
        target = [data.shape[i] if d == 0 else d for i, d in enumerate(target)]
    _check_count(n, [d for d in target if d != -1])
    return data.reshape(target)


def _constant_of_shape(n, opset, shape):
    dims = _ints(shape)
    _check_count(n, dims)
    value = n.attr("value")
    fill = np.zeros(1, np.float32) if value is None else np.asarray(value).reshape(-1)
    return np.full(dims, fill[0], dtype=fill.dtype)


def _range(n, opset, start, limit, delta):
    s, l, d = (np.asarray(v).reshape(()) for v in (start, limit, delta))
    if d == 0:
        raise ModelError(f"{n}: Range with a step of 0")
    count = max(int(np.ceil((float(l) - float(s)) / float(d))), 0)
    _check_count(n, [count])
    return np.arange(s, l, d, dtype=np.asarray(start).dtype)


def _slice(n, opset, data, starts=None, ends=None, axes=None, steps=None):
    if opset < 10:
        starts, ends, axes = n.attr("starts"), n.attr("ends"), n.attr("axes")
    starts, ends = _ints(starts), _ints(ends)
    axes = list(range(len(starts))) if axes is None else _ints(axes)
    steps = [1] * len(starts) if steps is None else _ints(steps)
    index = [slice(None)] * data.ndim
    for s, e, a, st in zip(starts, ends, axes, steps):
        if st == 0:
            raise ModelError(f"{n}: Slice with a step of 0")
        index[a % data.ndim] = slice(s, e, st)
    return data[tuple(index)]


def _binary(fn):
    def run(n, opset, a, b):
        return fn(a, b)
    return run


def _div(a, b):
    if np.issubdtype(a.dtype, np.integer):
        return (np.trunc(a / b)).astype(a.dtype)
    return (a / b).astype(a.dtype)


def _unary(fn):
    def run(n, opset, a):
        return fn(a).astype(a.dtype)
    return run


def _transpose(n, opset, x):
    perm = n.attr("perm")
    return np.transpose(x, perm) if perm is not None else x.T


def _expand(n, opset, x, shape):
    out = np.broadcast_shapes(x.shape, tuple(_ints(shape)))
    _check_count(n, out)
    return np.broadcast_to(x, out).copy()


def _tile(n, opset, x, repeats):
    reps = _ints(repeats)
    _check_count(n, [a * b for a, b in zip(x.shape, reps)])
    return np.tile(x, reps)


def _where(n, opset, c, a, b):
    return np.where(c, a, b)


def _reduce(fn):
    def run(n, opset, x, axes=None):
        axes = _axes(n, opset, 18 if n.op != "ReduceSum" else 13, axes)
        keep = bool(n.attr("keepdims", 1))
        return fn(x, axis=None if not axes else tuple(axes), keepdims=keep).astype(x.dtype)
    return run


def _identity(n, opset, x):
    return x


def _variadic(fn):
    def run(n, opset, *xs):
        out = xs[0]
        for x in xs[1:]:
            out = fn(out, x)
        return out
    return run


FOLD = {
    "Shape": _shape, "Size": _size, "Gather": _gather, "Unsqueeze": _unsqueeze, "Squeeze": _squeeze,
    "Concat": _concat, "Cast": _cast, "Reshape": _reshape, "ConstantOfShape": _constant_of_shape,
    "Range": _range, "Slice": _slice, "Add": _binary(np.add), "Sub": _binary(np.subtract),
    "Mul": _binary(np.multiply), "Div": _binary(_div), "Floor": _unary(np.floor), "Ceil": _unary(np.ceil),
    "Sqrt": _unary(np.sqrt), "Neg": _unary(np.negative), "Abs": _unary(np.abs), "Transpose": _transpose,
    "Expand": _expand, "Tile": _tile, "Where": _where, "Equal": _binary(np.equal), "Less": _binary(np.less),
    "Greater": _binary(np.greater), "Not": lambda n, o, x: np.logical_not(x), "Identity": _identity,
    "Min": _variadic(np.minimum), "Max": _variadic(np.maximum), "ReduceProd": _reduce(np.prod),
    "ReduceSum": _reduce(np.sum), "Flatten": lambda n, o, x: x.reshape(
        int(np.prod(x.shape[: n.attr("axis", 1)], dtype=np.int64)), -1),
}


def did_you_mean(name: str, known) -> str:
    guess = difflib.get_close_matches(name, list(known), n=1)
    return f" (did you mean '{guess[0]}'?)" if guess else ""
