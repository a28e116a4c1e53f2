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
    """BatchNormalization right after a Conv whose output nothing else reads: folded into the
    conv's weights and bias, ``w' = w * s``, ``b' = (b - mean) * s + beta``,
    ``s = gamma / sqrt(var + eps)`` (in float64)."""
    done = 0
    for bn in list(graph.nodes):
        if bn.op != "BatchNormalization" or bn.attr("training_mode", 0) or any(bn.outputs[1:]):
            continue
        conv = graph.producer(bn.inputs[0])
        if conv is None or conv.op != "Conv" or graph.only_user(bn.inputs[0]) is not bn:
            continue
        params = [graph.const(v) for v in bn.inputs[1:5]]
        w = graph.const(conv.inputs[1])
        b = graph.const(conv.inputs[2]) if len(conv.inputs) > 2 and conv.inputs[2] else None
        if w is None or any(p is None for p in params) or (len(conv.inputs) > 2 and conv.inputs[2] and b is None):
            continue
        gamma, beta, mean, var = (np.asarray(p, np.float64).reshape(-1) for p in params)
        if not len(gamma) == len(beta) == len(mean) == len(var) == w.shape[0]:
            continue
        scale = gamma / np.sqrt(var + float(bn.attr("epsilon", 1e-5)))
        new_w = (w.astype(np.float64) * scale.reshape(-1, *([1] * (w.ndim - 1)))).astype(np.float32)
        bias = np.zeros(w.shape[0]) if b is None else b.astype(np.float64)
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


def fuse_bias(stages: list[Stage], graph: Graph) -> int:
    """``add`` of a constant per output channel right after a conv, transposed conv or linear
    without a nonlinearity (ConvNeXt's channels-last Linear is MatMul then Add; paddle2onnx
    writes ConvTranspose's bias as an Add): into its bias."""
    done = 0
    for add in list(stages):
        if add.type != "add" or "value" not in add.params or len(add.inputs) != 1 or "activation" in add.params:
            continue
        before = next((s for s in stages if s.output == add.inputs[0]), None)
        if (before is None or before.type not in ("conv", "conv_transpose", "linear") or "activation" in before.params
                or before.residual or _single_user(stages, graph, before.output) is not add):
            continue
        if before.type == "conv_transpose":  # filters (C_in, O / groups, kh, kw)
            out = before.params["filters"].array.shape[1] * before.params.get("groups", 1)
        else:
            out = (before.params["filters"] if before.type == "conv" else before.params["weight"]).array.shape[0]
        value = add.params["value"]
        array = np.full(out, value, np.float32) if isinstance(value, float) else value.array.reshape(-1)
        if array.size != out:
            continue
        old = before.params.get("bias")
        bias = array if not isinstance(old, Weight) else old.array + array
        before.params["bias"] = Weight(np.ascontiguousarray(bias, dtype=np.float32))
        _replace(stages, add, before)
        done += 1
    return done


def fuse_scale(stages: list[Stage], graph: Graph) -> int:
    """``mul`` by a constant per output channel right after a conv or linear without a
    nonlinearity (ConvNeXt's layer scale): into its weights and bias."""
    done = 0
    for mul in list(stages):
        if mul.type != "mul" or "value" not in mul.params or len(mul.inputs) != 1 or "activation" in mul.params:
            continue
        before = next((s for s in stages if s.output == mul.inputs[0]), None)
        if (before is None or before.type not in ("conv", "linear") or "activation" in before.params
                or before.residual or _single_user(stages, graph, before.output) is not mul):
            continue
        key = "filters" if before.type == "conv" else "weight"
        weight = before.params[key].array
        value = mul.params["value"]
        scale = np.full(weight.shape[0], value, np.float32) if isinstance(value, float) else value.array
        if scale.size != weight.shape[0] or (scale.ndim == 3 and scale.shape[1:] != (1, 1)):
            continue
        scale = scale.reshape(-1).astype(np.float64)
        before.params[key] = Weight((weight * scale.reshape(-1, *([1] * (weight.ndim - 1)))).astype(np.float32))
        bias = before.params.get("bias")
        if isinstance(bias, Weight):
            before.params["bias"] = Weight((bias.array * scale).astype(np.float32))
        _replace(stages, mul, before)
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


STAGE_REWRITES = (fuse_bias, fuse_scale, fuse_residual, fuse_activation, merge_global_pool)
