"""The op table: ONNX op type -> a small converter that returns ordinary stage configs.

Each converter reads one node of the (folded, rewritten) graph and returns :class:`Stage`
records: a stage ``type``, its parameters (arrays as :class:`Weight`), the ONNX values it reads
and the one it writes. A converter raises :class:`Unsupported` for an attribute or shape poolcli
cannot compute exactly; :func:`convert` collects every such node and every op missing from the
table, and reports them all at once.

Values are tracked with a layout: ``nchw`` (a (C, H, W) map), ``nhwc`` (the same map after
ConvNeXt's Transpose to channels-last: its last axis is the channels) or ``vec`` (a (D,) vector).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from poolcli.errors import ModelError
from poolcli.importer.graph import Graph, Node


class Unsupported(Exception):
    """A node poolcli cannot compute exactly; the message says why."""


@dataclass
class Weight:
    """An array bound for the weights file; ``origin``: the initializer it came from unchanged."""

    array: np.ndarray
    origin: str | None = None


@dataclass
class Stage:
    type: str
    name: str
    inputs: list[str]
    output: str
    params: dict = field(default_factory=dict)
    residual: str | None = None  # the ONNX value of a fused residual add

    @property
    def reads(self) -> list[str]:
        return self.inputs + ([self.residual] if self.residual else [])


class Context:
    def __init__(self, graph: Graph):
        self.g = graph
        self.layouts: dict[str, str] = graph.layouts
        self.layouts[graph.input] = "nchw"

    def layout(self, value: str) -> str:
        if value not in self.layouts:  # a value a rewrite removed: its replacement's layout
            value = self.g.resolve(value)
        if value not in self.layouts:
            raise Unsupported(f"its input '{value}' is not a feature map or vector poolcli computes")
        return self.layouts[value]

    def shape(self, value: str) -> tuple[int, ...]:
        shape = self.g.shape(value)
        if shape is None:
            raise Unsupported(f"the shape of '{value}' is not known at import")
        return shape

    def channels(self, value: str) -> int:
        shape, layout = self.shape(value), self.layout(value)
        return shape[-1] if layout in ("nhwc", "vec") else shape[1]

    def const(self, node: Node, index: int, what: str, required: bool = True) -> np.ndarray | None:
        value = node.inputs[index] if index < len(node.inputs) else ""
        if not value:
            if required:
                raise Unsupported(f"its {what} is missing")
            return None
        array = self.g.const(value)
        if array is None:
            if value in self.g.size_dependent:
                raise Unsupported(f"its {what} depends on the input's height and width; export the model with a "
                                  "fixed input size (no dynamic axes)")
            raise Unsupported(f"its {what} ('{value}') is computed from the image, not a constant")
        return array

    def weight(self, node: Node, index: int, what: str) -> Weight:
        value = node.inputs[index]
        array = self.const(node, index, what)
        return Weight(np.asarray(array, dtype=np.float32), value if value in self.g.original_consts else None)


def _stage(node: Node, type_: str, inputs: list[str], **params) -> Stage:
    return Stage(type_, node.name, list(inputs), node.outputs[0], params)


def _pads(node: Node, auto_pad_ok: bool = True):
    """ONNX ``pads``/``auto_pad`` as a poolcli ``padding``: int, [ph, pw], 4 numbers or same_*."""
    auto = node.attr("auto_pad", "NOTSET")
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        if not auto_pad_ok:
            raise Unsupported(f"auto_pad {auto} is not supported here")
        return auto.lower()
    if auto == "VALID":
        return 0
    if auto not in ("NOTSET", ""):
        raise Unsupported(f"auto_pad {auto!r}")
    pads = list(node.attr("pads", [0, 0, 0, 0]))
    if len(pads) != 4:
        raise Unsupported(f"pads {pads}: only 2-D (4 numbers) is supported")
    if min(pads) < 0:
        raise Unsupported(f"negative pads {pads}")
    top, left, bottom, right = pads
    if top == bottom and left == right:
        return top if top == left else [top, left]
    return [top, left, bottom, right]


def _pair(values, name: str, default=1):
    values = list(values) if values is not None else [default, default]
    if len(values) != 2:
        raise Unsupported(f"{name} {values}: only 2-D is supported")
    return values[0] if values[0] == values[1] else values


def _map_input(cx: Context, node: Node, index: int = 0) -> str:
    value = node.inputs[index]
    if cx.layout(value) != "nchw" or len(cx.shape(value)) != 4:
        raise Unsupported(f"its input '{value}' is not a (N, C, H, W) feature map")
    return value


# --- convolutions ---------------------------------------------------------------------------


def conv(cx: Context, node: Node) -> list[Stage]:
    x = _map_input(cx, node)
    w = cx.weight(node, 1, "weight")
    if w.array.ndim != 4:
        raise Unsupported(f"a {w.array.ndim - 2}-D convolution; poolcli convolves 2-D maps")
    params = {"filters": w}
    if len(node.inputs) > 2 and node.inputs[2]:
        params["bias"] = cx.weight(node, 2, "bias")
    kernel = node.attr("kernel_shape")
    if kernel is not None and list(kernel) != list(w.array.shape[2:]):
        raise Unsupported(f"kernel_shape {list(kernel)} differs from its weight's {list(w.array.shape[2:])}")
    _add_window(params, node)
    groups = node.attr("group", 1)
    if groups != 1:
        params["groups"] = groups
    return [_stage(node, "conv", [x], **params)]


def _add_window(params: dict, node: Node) -> None:
    stride = _pair(node.attr("strides"), "strides")
    if stride != 1:
        params["stride"] = stride
    padding = _pads(node)
    if padding != 0:
        params["padding"] = padding
    dilation = _pair(node.attr("dilations"), "dilations")
    if dilation != 1:
        params["dilation"] = dilation


def conv_transpose(cx: Context, node: Node) -> list[Stage]:
    x = _map_input(cx, node)
    w = cx.weight(node, 1, "weight")
    if w.array.ndim != 4:
        raise Unsupported(f"a {w.array.ndim - 2}-D transposed convolution; poolcli convolves 2-D maps")
    if node.attr("output_shape") is not None:
        raise Unsupported("output_shape is given; export with pads and output_padding instead")
    if node.attr("auto_pad", "NOTSET") not in ("NOTSET", "VALID", ""):
        raise Unsupported(f"auto_pad {node.attr('auto_pad')}")
    params = {"filters": w}
    if len(node.inputs) > 2 and node.inputs[2]:
        params["bias"] = cx.weight(node, 2, "bias")
    _add_window(params, node)
    out_pad = _pair(node.attr("output_padding"), "output_padding", 0)
    if out_pad != 0:
        params["output_padding"] = out_pad
    groups = node.attr("group", 1)
    if groups != 1:
        params["groups"] = groups
    return [_stage(node, "conv_transpose", [x], **params)]


def batch_norm(cx: Context, node: Node) -> list[Stage]:
    x = _map_input(cx, node)
    if node.attr("training_mode", 0):
        raise Unsupported("training_mode=1 (batch statistics); export the model in eval mode")
    if any(o for o in node.outputs[1:]):
        raise Unsupported("its running-statistics outputs are used; export the model in eval mode")
    params = {key: cx.weight(node, i, key) for i, key in ((1, "weight"), (2, "bias"), (3, "mean"), (4, "var"))}
    params["eps"] = _float(node.attr("epsilon", 1e-5))
    return [_stage(node, "batch_norm", [x], **params)]


# --- activations ----------------------------------------------------------------------------


def _float(v) -> float:
    """A float32 attribute as the shortest decimal that reads back as the same float32."""
    return float(np.format_float_positional(np.float32(v), unique=True, trim="-"))


def _activation(fn: str, **extra):
    def run(cx: Context, node: Node) -> list[Stage]:
        x = node.inputs[0]
        cx.layout(x)
        params = {"fn": fn}
        for key, (attr, default) in extra.items():
            value = node.attr(attr, default)
            if value != default:
                params[key] = _float(value)
        return [_stage(node, "activation", [x], **params)]
    return run


def hard_sigmoid(cx: Context, node: Node) -> list[Stage]:
    x = node.inputs[0]
    cx.layout(x)
    return [_stage(node, "activation", [x], fn="hard_sigmoid", alpha=_float(node.attr("alpha", 0.2)),
                   beta=_float(node.attr("beta", 0.5)))]


def clip(cx: Context, node: Node) -> list[Stage]:
    x = node.inputs[0]
    cx.layout(x)
    if cx.g.opset < 11:
        low, high = node.attr("min"), node.attr("max")
    else:
        low = cx.const(node, 1, "min", required=False)
        high = cx.const(node, 2, "max", required=False)
    params = {"fn": "clip"}
    for key, v in (("min", low), ("max", high)):
        if v is not None:
            v = np.asarray(v).reshape(-1)
            if v.size != 1:
                raise Unsupported(f"its {key} is not one number")
            if math.isfinite(float(v[0])):
                params[key] = _float(v[0])
    return [_stage(node, "activation", [x], **params)]


def prelu(cx: Context, node: Node) -> list[Stage]:
    x = node.inputs[0]
    slope = cx.const(node, 1, "slope")
    return [_stage(node, "activation", [x], fn="prelu", slope=operand(cx, x, slope))]


def gelu(cx: Context, node: Node) -> list[Stage]:
    x = node.inputs[0]
    cx.layout(x)
    approx = node.attr("approximate", "none")
    if approx not in ("none", "tanh"):
        raise Unsupported(f"approximate={approx!r}")
    return [_stage(node, "activation", [x], fn="gelu" if approx == "none" else "gelu_tanh")]


def fused_activation(cx: Context, node: Node) -> list[Stage]:
    """The internal ``poolcli.Activation`` node a rewrite leaves (silu, gelu, hard_swish...)."""
    x = node.inputs[0]
    cx.layout(x)
    return [_stage(node, "activation", [x], **node.attrs)]


# --- element-wise arithmetic ------------------------------------------------------------------


def operand(cx: Context, x: str, c: np.ndarray):
    """A constant broadcast against ``x`` as a stage value: the ONNX batch axis dropped, a
    channels-last constant turned to channels-first, one number as a number."""
    shape, layout = cx.shape(x), cx.layout(x)
    c = np.asarray(c, dtype=np.float32)
    if c.ndim > len(shape):
        raise Unsupported(f"a constant of shape {list(c.shape)} broadcast against {list(shape)}")
    c = c.reshape((1,) * (len(shape) - c.ndim) + c.shape)
    if c.shape[0] != 1:
        raise Unsupported(f"a constant of shape {list(c.shape)} varies along the batch axis")
    try:
        if np.broadcast_shapes(shape, c.shape) != tuple(shape):
            raise Unsupported(f"a constant of shape {list(c.shape)} would enlarge the map {list(shape)}")
    except ValueError:
        raise Unsupported(f"a constant of shape {list(c.shape)} does not broadcast against {list(shape)}") from None
    c = c[0]
    if layout == "nhwc":
        c = c.transpose(2, 0, 1)
    if c.size == 1:
        return _float(c.reshape(()))
    return Weight(np.ascontiguousarray(c))


_BINARY = {"Add": "add", "Sub": "sub", "Mul": "mul", "Div": "div"}


def binary(cx: Context, node: Node) -> list[Stage]:
    kind = _BINARY[node.op]
    a, b = node.inputs[:2]
    ca, cb = cx.g.const(a), cx.g.const(b)
    if ca is None and cb is None:
        la, lb = cx.layout(a), cx.layout(b)
        if la != lb:
            raise Unsupported(f"its inputs '{a}' ({la}) and '{b}' ({lb}) are laid out differently")
        out = cx.shape(node.outputs[0]) if cx.g.shape(node.outputs[0]) else None
        if out is not None and out != cx.shape(a):
            if node.op in ("Add", "Mul") and out == cx.shape(b):
                a, b = b, a  # the larger map first: `a OP b` broadcasts b
            else:
                raise Unsupported(f"'{a}' {list(cx.shape(a))} broadcast to {list(out)}: poolcli broadcasts the "
                                  "second input only")
        return [_stage(node, kind, [a, b])]
    if cb is not None:
        return [_stage(node, kind, [a], value=operand(cx, a, cb))]
    if node.op in ("Add", "Mul"):
        return [_stage(node, kind, [b], value=operand(cx, b, ca))]
    if node.op == "Sub":  # c - x = (-1 * x) + c
        negate = Stage("mul", node.name + "/neg", [b], node.outputs[0] + "/neg", {"value": -1.0})
        return [negate, Stage("add", node.name, [negate.output], node.outputs[0], {"value": operand(cx, b, ca)})]
    raise Unsupported("a constant divided by a feature map")


def sum_(cx: Context, node: Node) -> list[Stage]:
    for v in node.inputs:
        if cx.g.const(v) is not None:
            raise Unsupported("a Sum with a constant input")
        cx.layout(v)
    if len(node.inputs) == 1:
        return [_stage(node, "activation", node.inputs, fn="none")]
    return [_stage(node, "add", node.inputs)]


# --- pooling ------------------------------------------------------------------------------------


def _window_pool(type_: str):
    def run(cx: Context, node: Node) -> list[Stage]:
        x = _map_input(cx, node)
        if any(node.outputs[1:]):
            raise Unsupported("its indices output is used")
        kernel = list(node.attr("kernel_shape", []))
        if len(kernel) != 2:
            raise Unsupported(f"kernel_shape {kernel}: only 2-D pooling is supported")
        params = {"kernel_size": kernel[0] if kernel[0] == kernel[1] else kernel}
        stride = _pair(node.attr("strides"), "strides")
        params["stride"] = stride
        padding = _pads(node)
        if padding != 0:
            params["padding"] = padding
        if node.attr("ceil_mode", 0):
            params["ceil_mode"] = True
        if type_ == "max_pool":
            dilation = _pair(node.attr("dilations"), "dilations")
            if dilation != 1:
                params["dilation"] = dilation
            if node.attr("storage_order", 0):
                pass  # only the indices output depends on it
        else:
            if node.attr("dilations") is not None and _pair(node.attr("dilations"), "dilations") != 1:
                raise Unsupported("a dilated average pool")
            params["count_include_pad"] = bool(node.attr("count_include_pad", 0))
        return [_stage(node, type_, [x], **params)]
    return run


def global_pool(type_: str):
    def run(cx: Context, node: Node) -> list[Stage]:
        x = _map_input(cx, node)
        return [_stage(node, type_, [x], output_size=1)]
    return run


def reduce_space(type_: str):
    """ReduceMean / ReduceMax over H and W: a 1x1 adaptive pool (keepdims) or a global pool."""
    def run(cx: Context, node: Node) -> list[Stage]:
        x = node.inputs[0]
        layout = cx.layout(x)
        if cx.g.opset >= 18 and len(node.inputs) > 1 and node.inputs[1]:
            axes = [int(a) for a in cx.const(node, 1, "axes").reshape(-1)]
        else:
            axes = node.attr("axes")
        if axes is None or layout == "vec":
            raise Unsupported("a reduction over other axes than height and width")
        axes = sorted(a % 4 for a in axes)
        spatial = [2, 3] if layout == "nchw" else [1, 2]
        if axes != spatial:
            raise Unsupported(f"a reduction over axes {axes}; poolcli reduces over height and width")
        if node.attr("keepdims", 1):
            if layout == "nhwc":
                raise Unsupported("a channels-last reduction that keeps its dims")
            return [_stage(node, "adaptive_" + type_, [x], output_size=1)]
        return [_stage(node, "global_" + type_, [x])]
    return run


# --- shape ops ---------------------------------------------------------------------------------


def concat(cx: Context, node: Node) -> list[Stage]:
    inputs = [v for v in node.inputs if v]
    layouts = {cx.layout(v) for v in inputs}
    for v in inputs:
        if cx.g.const(v) is not None:
            raise Unsupported("a Concat with a constant input")
    if len(layouts) != 1:
        raise Unsupported("a Concat of differently laid out inputs")
    layout = layouts.pop()
    rank = len(cx.shape(inputs[0]))
    axis = node.attr("axis") % rank
    if axis != {"nchw": 1, "nhwc": 3, "vec": 1}[layout]:
        raise Unsupported(f"a Concat along axis {axis}; poolcli concatenates channels")
    if layout == "nhwc":
        raise Unsupported("a channels-last Concat")
    if len(inputs) == 1:
        return [_stage(node, "activation", inputs, fn="none")]
    return [_stage(node, "concat", inputs)]


def split(cx: Context, node: Node) -> list[Stage]:
    x = node.inputs[0]
    layout = cx.layout(x)
    shape = cx.shape(x)
    axis = node.attr("axis", 0) % len(shape)
    if axis != (1 if layout in ("nchw", "vec") else 3):
        raise Unsupported(f"a Split along axis {axis}; poolcli splits channels")
    total = shape[axis]
    if cx.g.opset >= 13 and len(node.inputs) > 1 and node.inputs[1]:
        sizes = [int(s) for s in cx.const(node, 1, "split").reshape(-1)]
    elif node.attr("split") is not None:
        sizes = list(node.attr("split"))
    else:
        parts = node.attr("num_outputs", len(node.outputs))
        step = -(-total // parts)
        sizes = [min(step, total - i * step) for i in range(parts)]
    if sum(sizes) != total or len(sizes) != len(node.outputs):
        raise Unsupported(f"split sizes {sizes} do not cover {total} channels in {len(node.outputs)} outputs")
    stages, start = [], 0
    for i, (size, out) in enumerate(zip(sizes, node.outputs)):
        if out:
            stages.append(Stage("slice", f"{node.name}.{i}", [x], out, {"start": start, "end": start + size}))
        start += size
    if layout == "nhwc":
        raise Unsupported("a channels-last Split")
    return stages


def slice_(cx: Context, node: Node) -> list[Stage]:
    x = node.inputs[0]
    layout = cx.layout(x)
    shape = cx.shape(x)
    if cx.g.opset < 10:
        starts, ends, axes, steps = node.attr("starts"), node.attr("ends"), node.attr("axes"), None
    else:
        starts = cx.const(node, 1, "starts").reshape(-1).tolist()
        ends = cx.const(node, 2, "ends").reshape(-1).tolist()
        axes = cx.const(node, 3, "axes", required=False)
        steps = cx.const(node, 4, "steps", required=False)
        axes = None if axes is None else axes.reshape(-1).tolist()
        steps = None if steps is None else steps.reshape(-1).tolist()
    axes = list(range(len(starts))) if axes is None else [a % len(shape) for a in axes]
    steps = [1] * len(starts) if steps is None else steps
    channel_axis = 1 if layout in ("nchw", "vec") else 3
    start, end = 0, shape[channel_axis]
    for s, e, a, st in zip(starts, ends, axes, steps):
        length = shape[a]
        begin, stop, _ = slice(int(s), int(e), int(st)).indices(length)
        if (begin, stop) == (0, length) and st == 1:
            continue  # the whole axis
        if a != channel_axis:
            raise Unsupported(f"a Slice along axis {a}; poolcli slices channels")
        if st != 1:
            raise Unsupported(f"a Slice with step {st}")
        start, end = begin, max(stop, begin)
    if layout == "nhwc":
        raise Unsupported("a channels-last Slice")
    if end <= start:
        raise Unsupported("an empty Slice")
    return [_stage(node, "slice", [x], start=start, end=end)]


def transpose(cx: Context, node: Node) -> list[Stage]:
    x = node.inputs[0]
    layout = cx.layout(x)
    perm = list(node.attr("perm", []))
    if layout == "nchw" and perm == [0, 2, 3, 1]:
        cx.layouts[node.outputs[0]] = "nhwc"
    elif layout == "nhwc" and perm == [0, 3, 1, 2]:
        cx.layouts[node.outputs[0]] = "nchw"
    elif perm == list(range(len(perm))):
        cx.layouts[node.outputs[0]] = layout
    else:
        raise Unsupported(f"perm {perm} on a {layout} value; poolcli follows NCHW <-> NHWC only")
    cx.g.aliases[node.outputs[0]] = x
    return []


def flatten(cx: Context, node: Node) -> list[Stage]:
    x = node.inputs[0]
    layout = cx.layout(x)
    axis = node.attr("axis", 1) % max(len(cx.shape(x)), 1)
    if layout == "vec" and axis == 1:
        return _alias(cx, node, "vec")
    if axis != 1:
        raise Unsupported(f"a Flatten at axis {axis}; poolcli flattens everything but the batch")
    if layout == "nhwc" and cx.shape(x)[1:3] != (1, 1):
        raise Unsupported("a Flatten of a channels-last map")
    return [_stage(node, "flatten", [x])]


def _alias(cx: Context, node: Node, layout: str) -> list[Stage]:
    cx.layouts[node.outputs[0]] = layout
    cx.g.aliases[node.outputs[0]] = node.inputs[0]
    return []


def reshape(cx: Context, node: Node) -> list[Stage]:
    x = node.inputs[0]
    layout = cx.layout(x)
    target = [int(v) for v in cx.const(node, 1, "shape").reshape(-1)]
    shape = cx.shape(x)
    out = _reshaped(shape, target, node.attr("allowzero", 0))
    if out == tuple(shape):
        return _alias(cx, node, layout)
    if out is not None and len(out) == 2 and len(shape) == 4 and out[0] == 1:
        if layout == "nhwc" and shape[1:3] != (1, 1):
            raise Unsupported("a Reshape of a channels-last map to a vector")
        return [_stage(node, "flatten", [x])]
    raise Unsupported(f"a Reshape of {list(shape)} to {target}; poolcli reshapes a map to a vector only")


def _reshaped(shape, target, allowzero) -> tuple[int, ...] | None:
    dims = [shape[i] if d == 0 and not allowzero and i < len(shape) else d for i, d in enumerate(target)]
    total = int(np.prod(shape))
    if dims.count(-1) == 1:
        rest = int(np.prod([d for d in dims if d != -1]))
        if rest <= 0 or total % rest:
            return None
        dims[dims.index(-1)] = total // rest
    return tuple(dims) if int(np.prod(dims)) == total else None


def squeeze(cx: Context, node: Node) -> list[Stage]:
    x = node.inputs[0]
    layout = cx.layout(x)
    shape = cx.shape(x)
    out = cx.shape(node.outputs[0])
    if out == tuple(shape):
        return _alias(cx, node, layout)
    if len(shape) == 4 and len(out) == 2 and out[0] == 1:
        ok = shape[2:] == (1, 1) if layout == "nchw" else shape[1:3] == (1, 1)
        if ok:
            return [_stage(node, "flatten", [x])]
    raise Unsupported(f"a Squeeze of {list(shape)} to {list(out)}")


def identity(cx: Context, node: Node) -> list[Stage]:
    return _alias(cx, node, cx.layout(node.inputs[0]))


def cast(cx: Context, node: Node) -> list[Stage]:
    if node.attr("to") not in (1, 10, 11):
        raise Unsupported(f"a cast of a feature map to ONNX type {node.attr('to')}")
    return identity(cx, node)


def resize(cx: Context, node: Node) -> list[Stage]:
    x = _map_input(cx, node)
    opset = cx.g.opset
    mode = node.attr("mode", "nearest")
    if mode not in ("nearest", "linear", "bilinear"):
        raise Unsupported(f"mode {mode!r}; poolcli resizes nearest and linear")
    params = {"mode": "nearest" if mode == "nearest" else "linear"}
    if node.op == "Upsample" or opset < 11:
        scales = node.attr("scales") if node.op == "Upsample" and opset < 9 else cx.const(node, 1, "scales")
        sizes = None
        coord, nearest = "asymmetric", "floor"  # Upsample and Resize-10: asymmetric, floor
    else:
        scales = cx.const(node, 2, "scales", required=False) if len(node.inputs) > 2 else None
        sizes = cx.const(node, 3, "sizes", required=False) if len(node.inputs) > 3 else None
        coord = node.attr("coordinate_transformation_mode", "half_pixel")
        nearest = node.attr("nearest_mode", "round_prefer_floor")
        if node.attr("antialias", 0):
            raise Unsupported("antialias=1")
        if node.attr("axes") is not None and sorted(a % 4 for a in node.attr("axes")) != [0, 1, 2, 3]:
            axes = sorted(a % 4 for a in node.attr("axes"))
            if axes != [2, 3]:
                raise Unsupported(f"a resize over axes {axes}")
            scales = None if scales is None or scales.size == 0 else np.concatenate([[1, 1], scales])
            sizes = None if sizes is None or sizes.size == 0 else np.concatenate([cx.shape(x)[:2], sizes])
        if node.attr("keep_aspect_ratio_policy", "stretch") != "stretch" and sizes is not None:
            raise Unsupported(f"keep_aspect_ratio_policy {node.attr('keep_aspect_ratio_policy')!r}")
        if coord == "tf_crop_and_resize":
            raise Unsupported("coordinate_transformation_mode tf_crop_and_resize")
    if scales is not None and np.asarray(scales).size:
        scales = [float(s) for s in np.asarray(scales, dtype=np.float32).reshape(-1)]
        if len(scales) != 4 or scales[:2] != [1.0, 1.0]:
            raise Unsupported(f"scales {scales}: poolcli resizes height and width only")
        params["scale_factor"] = [_float(s) for s in scales[2:]]
    elif sizes is not None and np.asarray(sizes).size:
        sizes = [int(s) for s in np.asarray(sizes).reshape(-1)]
        if len(sizes) != 4 or tuple(sizes[:2]) != tuple(cx.shape(x)[:2]):
            raise Unsupported(f"sizes {sizes}: poolcli resizes height and width only")
        params["size"] = sizes[2:]
    else:
        raise Unsupported("neither scales nor sizes is given")
    if coord != "half_pixel":
        params["coordinate_mode"] = coord
    if params["mode"] == "nearest" and nearest != "round_prefer_floor":
        params["nearest_mode"] = nearest
    return [_stage(node, "resize", [x], **params)]


def layer_norm(cx: Context, node: Node) -> list[Stage]:
    x = node.inputs[0]
    layout = cx.layout(x)
    rank = len(cx.shape(x))
    axis = node.attr("axis", -1) % rank
    if axis != rank - 1 or layout == "nchw":
        raise Unsupported(f"a LayerNormalization over axes {axis}..{rank - 1} of a {layout} value; poolcli "
                          "normalises over channels (channels-last) or a vector")
    if any(node.outputs[1:]):
        raise Unsupported("its mean or inverse-std output is used")
    params = {"weight": cx.weight(node, 1, "scale")}
    if len(node.inputs) > 2 and node.inputs[2]:
        params["bias"] = cx.weight(node, 2, "bias")
    params["eps"] = _float(node.attr("epsilon", 1e-5))
    stage = _stage(node, "layer_norm", [x], **params)
    cx.layouts[node.outputs[0]] = layout
    return [stage]


def gemm(cx: Context, node: Node) -> list[Stage]:
    x = node.inputs[0]
    if cx.layout(x) != "vec":
        raise Unsupported(f"its input '{x}' is not a vector (add a Flatten before it)")
    if node.attr("transA", 0):
        raise Unsupported("transA=1")
    b = cx.const(node, 1, "weight").astype(np.float32)
    weight = b if node.attr("transB", 0) else b.T
    alpha, beta = node.attr("alpha", 1.0), node.attr("beta", 1.0)
    params = {"weight": Weight(np.ascontiguousarray(weight * np.float32(alpha)),
                               node.inputs[1] if node.attr("transB", 0) and alpha == 1.0 else None)}
    if len(node.inputs) > 2 and node.inputs[2]:
        c = cx.const(node, 2, "bias").astype(np.float32)
        out = weight.shape[0]
        if c.size == 1:
            c = np.full(out, c.reshape(()), np.float32)
        c = c.reshape(-1)
        if c.size != out:
            raise Unsupported(f"a bias of shape {list(c.shape)} for {out} outputs")
        origin = node.inputs[2] if beta == 1.0 and c.ndim == 1 and node.inputs[2] in cx.g.original_consts else None
        params["bias"] = Weight(c * np.float32(beta), origin)
    else:
        params["bias"] = False
    return [_stage(node, "linear", [x], **params)]


def matmul(cx: Context, node: Node) -> list[Stage]:
    x = node.inputs[0]
    layout = cx.layout(x)
    w = cx.const(node, 1, "weight")
    if w.ndim != 2:
        raise Unsupported(f"a MatMul with a weight of shape {list(w.shape)}")
    w = np.asarray(w, np.float32)
    if layout == "vec":
        return [_stage(node, "linear", [x], weight=Weight(np.ascontiguousarray(w.T)), bias=False)]
    if layout == "nhwc":  # channels-last Linear: a 1x1 conv over the channels
        cx.layouts[node.outputs[0]] = "nhwc"
        return [_stage(node, "conv", [x], filters=Weight(np.ascontiguousarray(w.T[:, :, None, None])))]
    raise Unsupported("a MatMul over a channels-first map's width")


def softmax(cx: Context, node: Node) -> list[Stage]:
    x = node.inputs[0]
    layout = cx.layout(x)
    rank = len(cx.shape(x))
    default = -1 if cx.g.opset >= 13 else 1
    axis = node.attr("axis", default) % rank
    if layout == "vec" and axis == 1:
        return [_stage(node, "softmax", [x])]
    if cx.g.opset >= 13 and ((layout == "nchw" and axis == 1) or (layout == "nhwc" and axis == 3)):
        return [_stage(node, "softmax", [x])]
    if cx.g.opset < 13 and layout == "nchw" and axis == 1 and cx.shape(x)[2:] == (1, 1):
        return [_stage(node, "softmax", [x])]
    raise Unsupported(f"a Softmax along axis {axis} of a {layout} value; poolcli takes it over channels")


OPS = {
    "Conv": conv,
    "ConvTranspose": conv_transpose,
    "BatchNormalization": batch_norm,
    "Relu": _activation("relu"),
    "LeakyRelu": _activation("leaky_relu", alpha=("alpha", 0.01)),
    "Elu": _activation("elu", alpha=("alpha", 1.0)),
    "PRelu": prelu,
    "Clip": clip,
    "Sigmoid": _activation("sigmoid"),
    "HardSigmoid": hard_sigmoid,
    "HardSwish": _activation("hard_swish"),
    "Tanh": _activation("tanh"),
    "Erf": _activation("erf"),
    "Exp": _activation("exp"),
    "Abs": _activation("abs"),
    "Softplus": _activation("softplus"),
    "Gelu": gelu,
    "Activation": fused_activation,
    "Add": binary,
    "Sub": binary,
    "Mul": binary,
    "Div": binary,
    "Sum": sum_,
    "MaxPool": _window_pool("max_pool"),
    "AveragePool": _window_pool("avg_pool"),
    "GlobalAveragePool": global_pool("adaptive_avg_pool"),
    "GlobalMaxPool": global_pool("adaptive_max_pool"),
    "ReduceMean": reduce_space("avg_pool"),
    "ReduceMax": reduce_space("max_pool"),
    "Concat": concat,
    "Split": split,
    "Slice": slice_,
    "Resize": resize,
    "Upsample": resize,
    "LayerNormalization": layer_norm,
    "Flatten": flatten,
    "Reshape": reshape,
    "Squeeze": squeeze,
    "Gemm": gemm,
    "MatMul": matmul,
    "Softmax": softmax,
    "Transpose": transpose,
    "Identity": identity,
    "Dropout": identity,
    "Cast": cast,
}


def convert(graph: Graph) -> list[Stage]:
    """Every node through the op table, in order; every node that cannot be converted is
    reported in one :class:`ModelError`."""
    cx = Context(graph)
    stages: list[Stage] = []
    problems: list[str] = []
    failed: set[str] = set()
    for node in graph.nodes:
        if node.op == "Dropout" and any(node.outputs[1:]) and graph.consumers(node.outputs[1]):
            problems.append(f"'{node.name}' (Dropout: its mask is used)")
            failed.update(node.outputs)
            continue
        if any(graph.resolve(v) in failed for v in node.inputs if v):
            failed.update(node.outputs)
            continue
        if all(o in graph.size_dependent for o in node.outputs if o):
            continue  # size arithmetic: its reader reports it
        converter = OPS.get(node.op) if node.domain in ("", "ai.onnx", "poolcli") else None
        if converter is None:
            op = node.op if node.domain in ("", "ai.onnx") else f"{node.domain}.{node.op}"
            problems.append(f"'{node.name}' ({op})")
            failed.update(node.outputs)
            continue
        try:
            made = converter(cx, node)
        except Unsupported as exc:
            problems.append(f"'{node.name}' ({node.op}: {exc})")
            failed.update(node.outputs)
            continue
        for stage in made:
            if stage.output not in cx.layouts:
                ref = stage.inputs[0]
                cx.layouts[stage.output] = _out_layout(cx, stage, ref)
        stages.extend(made)
    for stage in stages:
        stage.inputs = [graph.resolve(v) for v in stage.inputs]
    if problems:
        count = f"{len(problems)} node{'s' if len(problems) > 1 else ''}"
        raise ModelError(f"{graph.source}: {count} poolcli cannot import: " + "; ".join(problems))
    return stages


def _out_layout(cx: Context, stage: Stage, ref: str) -> str:
    if stage.type in ("flatten", "global_avg_pool", "global_max_pool", "linear"):
        return "vec"
    try:
        return cx.layout(ref)
    except Unsupported:
        return "nchw"
