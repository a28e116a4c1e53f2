"""Graph rewrites, each a separate function, run in :data:`GRAPH_REWRITES` order on the ONNX
graph and :data:`STAGE_REWRITES` order on the converted stages. Each returns how many places it
changed. A rewrite never fuses away a pinned value (a graph output or a ``--until`` name)."""

from __future__ import annotations

import numpy as np

from poolcli.importer.graph import Graph, Node
from poolcli.importer.ops import Stage, Weight


def _const_scalar(graph: Graph, value: str) -> float | None:
    c = graph.const(value)
    if c is None or c.size != 1 or not np.issubdtype(c.dtype, np.number):
        return None
    return float(c.reshape(()))


def _close(a: float | None, b: float) -> bool:
    return a is not None and abs(a - b) <= 1e-6 * max(1.0, abs(b))


def _other(node: Node, value: str) -> str:
    a, b = node.inputs[:2]
    return b if a == value else a


def _fresh(graph: Graph, base: str) -> str:
    name, k = base, 1
    taken = graph.values()
    while name in taken:
        name, k = f"{base}_{k}", k + 1
    return name


# --- on the ONNX graph ---------------------------------------------------------------------------


def remove_identities(graph: Graph) -> int:
    """Identity and Dropout (in inference: identity) go; their readers read their input."""
    done = 0
    for n in list(graph.nodes):
        if n.op == "Identity" or (n.op == "Dropout" and not any(graph.consumers(o) for o in n.outputs[1:] if o)):
            if n.inputs[0] in graph.consts:
                graph.consts[n.outputs[0]] = graph.consts[n.inputs[0]]
            graph.remove(n)
            graph.replace_uses(n.outputs[0], n.inputs[0])
            done += 1
    return done


def fold_batch_norm(graph: Graph) -> int:
    """BatchNormalization right after a Conv or ConvTranspose whose output nothing else reads:
    folded into its weights and bias, ``w' = w * s``, ``b' = (b - mean) * s + beta``,
    ``s = gamma / sqrt(var + eps)`` per output channel (in float64)."""
    done = 0
    for bn in list(graph.nodes):
        if bn.op != "BatchNormalization" or bn.attr("training_mode", 0) or any(bn.outputs[1:]):
            continue
        conv = graph.producer(bn.inputs[0])
        if conv is None or conv.op not in ("Conv", "ConvTranspose") or graph.only_user(bn.inputs[0]) is not bn:
            continue
        params = [graph.const(v) for v in bn.inputs[1:5]]
        w = graph.const(conv.inputs[1])
        b = graph.const(conv.inputs[2]) if len(conv.inputs) > 2 and conv.inputs[2] else None
        if w is None or w.ndim < 3 or any(p is None for p in params) or (len(conv.inputs) > 2 and conv.inputs[2] and b is None):
            continue
        groups = int(conv.attr("group", 1))
        outputs = w.shape[0] if conv.op == "Conv" else w.shape[1] * groups
        gamma, beta, mean, var = (np.asarray(p, np.float64).reshape(-1) for p in params)
        if not len(gamma) == len(beta) == len(mean) == len(var) == outputs or (b is not None and b.size != outputs):
            continue
        scale = gamma / np.sqrt(var + float(bn.attr("epsilon", 1e-5)))
        new_w = _scale_outputs(w, scale, conv.op == "ConvTranspose", groups)
        bias = np.zeros(outputs) if b is None else b.astype(np.float64).reshape(-1)
        new_b = ((bias - mean) * scale + beta).astype(np.float32)
        w_name, b_name = _fresh(graph, conv.name + ".weight"), _fresh(graph, conv.name + ".bias")
        graph.consts[w_name], graph.consts[b_name] = new_w, new_b
        conv.inputs = [conv.inputs[0], w_name, b_name]
        old = conv.outputs[0]
        conv.outputs = [bn.outputs[0]]
        graph.remove(bn)
        graph.aliases[old] = bn.outputs[0]
        done += 1
    return done


def _scale_outputs(w: np.ndarray, scale: np.ndarray, transposed: bool = False, groups: int = 1) -> np.ndarray:
    """Filters ``w`` with output channel ``o`` multiplied by ``scale[o]`` (float64, then
    float32). A conv's filters are (O, C / groups, kh, kw); a transposed conv's are
    (C, O / groups, kh, kw), output channel ``g * (O / groups) + j`` being group g's column j."""
    w = np.asarray(w, np.float64)
    if not transposed:
        return (w * scale.reshape(-1, *([1] * (w.ndim - 1)))).astype(np.float32)
    c, per_group = w.shape[:2]
    grouped = w.reshape(groups, c // groups, per_group, *w.shape[2:])
    grouped = grouped * scale.reshape(groups, 1, per_group, *([1] * (w.ndim - 2)))
    return grouped.reshape(w.shape).astype(np.float32)


def _activation_node(name: str, x: str, out: str, **attrs) -> Node:
    return Node(name, "Activation", [x], [out], attrs, domain="poolcli")


def fuse_self_gates(graph: Graph) -> int:
    """``x * sigmoid(x)`` as one silu, ``x * hard_sigmoid(x)`` (alpha 1/6, beta 1/2) as one
    hard_swish, where the gate is read by that Mul only."""
    done = 0
    for mul in list(graph.nodes):
        if mul.op != "Mul" or len(mul.inputs) != 2:
            continue
        for gate_value in mul.inputs:
            gate = graph.producer(gate_value)
            x = _other(mul, gate_value)
            if gate is None or gate.inputs[0] != x or x == gate_value or graph.only_user(gate_value) is not mul:
                continue
            if gate.op == "Sigmoid":
                fn = "silu"
            elif (gate.op == "HardSigmoid" and abs(gate.attr("alpha", 0.2) - 1 / 6) < 1e-7
                  and abs(gate.attr("beta", 0.5) - 0.5) < 1e-7):
                fn = "hard_swish"
            else:
                continue
            index = graph.nodes.index(gate)
            graph.remove(gate, mul)
            graph.nodes.insert(index, _activation_node(mul.name, x, mul.outputs[0], fn=fn))
            done += 1
            break
    return done


def fuse_gelu(graph: Graph) -> int:
    """torch's exact GELU, ``(x * (erf(x / sqrt 2) + 1)) * 0.5`` (or ``x * 0.5`` first), as one
    gelu."""
    done = 0
    for erf in list(graph.nodes):
        if erf.op != "Erf":
            continue
        div = graph.producer(erf.inputs[0])
        if div is None or graph.only_user(div.outputs[0]) is not erf:
            continue
        if div.op == "Div" and _close(_const_scalar(graph, div.inputs[1]), 2 ** 0.5):
            x = div.inputs[0]
        elif div.op == "Mul" and _close(_const_scalar(graph, div.inputs[1]), 2 ** -0.5):
            x = div.inputs[0]
        else:
            continue
        add = graph.only_user(erf.outputs[0])
        if add is None or add.op != "Add" or not _close(_const_scalar(graph, _other(add, erf.outputs[0])), 1.0):
            continue
        m1 = graph.only_user(add.outputs[0])
        if m1 is None or m1.op != "Mul":
            continue
        other = _other(m1, add.outputs[0])
        nodes = [div, erf, add, m1]
        if other == x:
            m2 = graph.only_user(m1.outputs[0])
            if m2 is None or m2.op != "Mul" or not _close(_const_scalar(graph, _other(m2, m1.outputs[0])), 0.5):
                continue
            nodes.append(m2)
            out = m2.outputs[0]
        else:
            half = graph.producer(other)
            if (half is None or half.op != "Mul" or x not in half.inputs or graph.only_user(other) is not m1
                    or not _close(_const_scalar(graph, _other(half, x)), 0.5)):
                continue
            nodes.append(half)
            out = m1.outputs[0]
        index = min(graph.nodes.index(n) for n in nodes)
        graph.remove(*nodes)
        graph.nodes.insert(index, _activation_node(erf.name, x, out, fn="gelu"))
        done += 1
    return done


def _mean_axes(graph: Graph, n: Node) -> list[int] | None:
    if len(n.inputs) > 1 and n.inputs[1]:
        c = graph.const(n.inputs[1])
        return None if c is None else [int(a) for a in c.reshape(-1)]
    return n.attr("axes")


def fuse_layer_norm(graph: Graph) -> int:
    """Layer norm as torch exports it below opset 17 (ReduceMean, Sub, Pow 2, ReduceMean, Add
    eps, Sqrt, Div, then Mul weight and Add bias) as one LayerNormalization over the last axis."""
    done = 0
    for pow_ in list(graph.nodes):
        if pow_.op != "Pow" or not _close(_const_scalar(graph, pow_.inputs[1]), 2.0):
            continue
        sub = graph.producer(pow_.inputs[0])
        if sub is None or sub.op != "Sub":
            continue
        x, mean = sub.inputs
        r1 = graph.producer(mean)
        if r1 is None or r1.op != "ReduceMean" or r1.inputs[0] != x or graph.only_user(mean) is not sub:
            continue
        rank = len(graph.shape(x) or ())
        if rank == 0 or [a % rank for a in (_mean_axes(graph, r1) or [])] != [rank - 1]:
            continue
        r2 = graph.only_user(pow_.outputs[0])
        if r2 is None or r2.op != "ReduceMean" or [a % rank for a in (_mean_axes(graph, r2) or [])] != [rank - 1]:
            continue
        add = graph.only_user(r2.outputs[0])
        eps = None if add is None or add.op != "Add" else _const_scalar(graph, _other(add, r2.outputs[0]))
        sqrt = graph.only_user(add.outputs[0]) if eps is not None else None
        if sqrt is None or sqrt.op != "Sqrt":
            continue
        div = graph.only_user(sqrt.outputs[0])
        users = graph.consumers(sub.outputs[0])
        if (div is None or div.op != "Div" or div.inputs != [sub.outputs[0], sqrt.outputs[0]]
                or sorted(id(u) for u in users) != sorted([id(pow_), id(div)]) or sub.outputs[0] in graph.pinned):
            continue
        nodes, out = [r1, sub, pow_, r2, add, sqrt, div], div.outputs[0]
        channels = graph.shape(x)[-1]
        weight = bias = None
        mul = graph.only_user(out)
        if mul is not None and mul.op == "Mul" and graph.const(_other(mul, out)) is not None:
            w = graph.const(_other(mul, out))
            if w.size == channels:
                weight, out = w.reshape(-1), mul.outputs[0]
                nodes.append(mul)
                add2 = graph.only_user(out)
                if add2 is not None and add2.op == "Add" and graph.const(_other(add2, out)) is not None:
                    b = graph.const(_other(add2, out))
                    if b.size == channels:
                        bias, out = b.reshape(-1), add2.outputs[0]
                        nodes.append(add2)
        w_name, b_name = _fresh(graph, r1.name + ".weight"), _fresh(graph, r1.name + ".bias")
        graph.consts[w_name] = np.ones(channels, np.float32) if weight is None else weight.astype(np.float32)
        graph.consts[b_name] = np.zeros(channels, np.float32) if bias is None else bias.astype(np.float32)
        index = min(graph.nodes.index(n) for n in nodes)
        graph.remove(*nodes)
        graph.nodes.insert(index, Node(r1.name, "LayerNormalization", [x, w_name, b_name], [out],
                                       {"axis": -1, "epsilon": eps}))
        done += 1
    return done


GRAPH_REWRITES = (remove_identities, fold_batch_norm, fuse_self_gates, fuse_gelu, fuse_layer_norm)


# --- on the converted stages ---------------------------------------------------------------------


def _users(stages: list[Stage], value: str) -> list[Stage]:
    return [s for s in stages if value in s.reads]


def _single_user(stages: list[Stage], graph: Graph, value: str) -> Stage | None:
    if value in graph.pinned or graph.resolve(value) in {graph.resolve(p) for p in graph.pinned}:
        return None
    users = _users(stages, value)
    if len(users) != 1 or users[0].reads.count(value) != 1:
        return None
    return users[0]


def _replace(stages: list[Stage], removed: Stage, by: Stage) -> None:
    """``by`` now writes what ``removed`` wrote; ``removed`` goes."""
    by.output = removed.output
    stages.remove(removed)


def _per_channel_constant(stage: Stage, layout: str) -> np.ndarray | None:
    """The constant operand of an arithmetic ``stage`` as one float64 number per channel of
    its input, when it is one, else None: one number (the same for every channel), a (C, 1, 1)
    constant of a map, a (D,) constant of a vector. A map's constant of ONNX shape (C,)
    broadcasts over the last axis, the width (it reaches the stage as (1, 1, C)): not per
    channel, even where the width equals C. (A channels-last value's constant reaches the
    stage channels first already.)"""
    value = stage.params.get("value")
    if isinstance(value, (int, float)):
        return None if isinstance(value, bool) else np.array([float(value)])
    if not isinstance(value, Weight):
        return None
    array = np.asarray(value.array, np.float64)
    if layout == "vec":
        return array.reshape(-1) if array.ndim == 1 else None
    if array.ndim == 3 and array.shape[1:] == (1, 1):
        return array.reshape(-1)
    return None


def _outputs(stage: Stage) -> int:
    if stage.type == "conv_transpose":  # filters (C_in, O / groups, kh, kw)
        return stage.params["filters"].array.shape[1] * stage.params.get("groups", 1)
    return (stage.params["filters"] if stage.type == "conv" else stage.params["weight"]).array.shape[0]


AFFINE = ("add", "sub", "mul", "div", "batch_norm")


def _affine(op: Stage, layout: str) -> tuple[np.ndarray, np.ndarray] | None:
    """``op`` as ``x * scale + shift`` with one float64 scale and shift per channel (or one
    for all), or None where it is not one: its constant varies over height or width, or a
    division by zero or a non-finite number."""
    if op.type == "batch_norm":
        arrays = {k: op.params.get(k) for k in ("weight", "bias", "mean", "var")}
        if not all(isinstance(a, Weight) for a in arrays.values()):
            return None
        w, b, mean, var = (np.asarray(a.array, np.float64).reshape(-1) for a in arrays.values())
        denominator = var + float(op.params.get("eps", 1e-5))
        if not w.size == b.size == mean.size == var.size or np.any(denominator <= 0):
            return None
        scale = w / np.sqrt(denominator)
        return scale, b - mean * scale
    c = _per_channel_constant(op, layout)
    if c is None:
        return None
    if op.type == "add":
        return np.ones(1), c
    if op.type == "sub":
        return np.ones(1), -c
    if op.type == "mul":
        return c, np.zeros(1)
    if not np.all(np.isfinite(c)) or np.any(c == 0):
        return None
    return 1.0 / c, np.zeros(1)


def fuse_affine(stages: list[Stage], graph: Graph) -> int:
    """``add``, ``sub``, ``mul`` or ``div`` of a constant per output channel, or a
    ``batch_norm``, right after a conv, transposed conv or linear without a nonlinearity whose
    output nothing else reads: into its weights and bias. ConvNeXt's channels-last Linear is
    MatMul then Add, and its layer scale a Mul; paddle2onnx writes ConvTranspose's bias as an
    Add and leaves the BatchNormalization after it. ``conv(x; w, b) * s + t`` is
    ``conv(x; w * s, b * s + t)``, ``s`` and ``t`` per output channel, in float64; a division
    by ``d`` is a product by ``1 / d`` (every ``d`` finite and nonzero). A constant that varies
    over height or width stays a stage of its own."""
    done = 0
    for op in list(stages):
        if op.type not in AFFINE or len(op.inputs) != 1 or "activation" in op.params:
            continue
        if op.type != "batch_norm" and "value" not in op.params:
            continue
        before = next((s for s in stages if s.output == op.inputs[0]), None)
        if (before is None or before.type not in ("conv", "conv_transpose", "linear") or "activation" in before.params
                or _single_user(stages, graph, before.output) is not op):
            continue
        out = _outputs(before)
        affine = _affine(op, "vec" if before.type == "linear" else "map")
        if affine is None or affine[0].size not in (1, out) or affine[1].size not in (1, out):
            continue
        scale, shift = (np.broadcast_to(a, (out,)).astype(np.float64) for a in affine)
        scaled = not np.all(scale == 1.0)
        if before.residual and scaled:  # (conv + r) * s is not conv * s + r
            continue
        old = before.params.get("bias")
        bias = np.asarray(old.array, np.float64).reshape(-1) if isinstance(old, Weight) else np.zeros(out)
        if scaled:
            key = "weight" if before.type == "linear" else "filters"
            before.params[key] = Weight(_scale_outputs(before.params[key].array, scale, before.type == "conv_transpose",
                                                       before.params.get("groups", 1)))
            bias = bias * scale
        if isinstance(old, Weight) or np.any(shift != 0):
            before.params["bias"] = Weight(np.ascontiguousarray(bias + shift, dtype=np.float32))
        _replace(stages, op, before)
        done += 1
    return done


def fuse_residual(stages: list[Stage], graph: Graph) -> int:
    """``add`` of two maps of equal shape, one of them a conv's output that nothing else reads
    and no nonlinearity follows inside the conv: the conv's ``residual``."""
    done = 0
    for add in list(stages):
        if add.type != "add" or len(add.inputs) != 2 or add.params:
            continue
        for mine, theirs in (add.inputs, add.inputs[::-1]):
            conv = next((s for s in stages if s.output == mine), None)
            if (conv is None or conv.type != "conv" or "activation" in conv.params or conv.residual
                    or _single_user(stages, graph, mine) is not add or not graph.same_shape(mine, theirs)
                    or mine == theirs):
                continue
            conv.residual = theirs
            _replace(stages, add, conv)
            done += 1
            break
    return done


ACTIVATED = ("conv", "conv_transpose", "linear", "add", "sub", "mul", "div")


def fuse_activation(stages: list[Stage], graph: Graph) -> int:
    """An ``activation`` stage right after a conv, linear or arithmetic stage whose output
    nothing else reads: the stage's ``activation``."""
    done = 0
    for act in list(stages):
        if act.type != "activation" or act.params.get("fn") == "none":
            continue
        before = next((s for s in stages if s.output == act.inputs[0]), None)
        if (before is None or before.type not in ACTIVATED or "activation" in before.params
                or _single_user(stages, graph, before.output) is not act):
            continue
        params = dict(act.params)
        before.params["activation"] = params["fn"] if len(params) == 1 else params
        _replace(stages, act, before)
        done += 1
    return done


def merge_global_pool(stages: list[Stage], graph: Graph) -> int:
    """A 1x1 adaptive pool followed by flatten: one global pool (a vector)."""
    done = 0
    for flat in list(stages):
        if flat.type != "flatten":
            continue
        pool = next((s for s in stages if s.output == flat.inputs[0]), None)
        if (pool is None or pool.type not in ("adaptive_avg_pool", "adaptive_max_pool")
                or _single_user(stages, graph, pool.output) is not flat):
            continue
        pool.type = pool.type.replace("adaptive_", "global_")
        pool.params = {}
        _replace(stages, flat, pool)
        done += 1
    return done


STAGE_REWRITES = (fuse_affine, fuse_residual, fuse_activation, merge_global_pool)
