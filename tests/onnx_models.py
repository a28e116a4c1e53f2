"""Models for the import tests: ONNX graphs built with onnx.helper (what torch does not
export: unfolded BatchNormalization, Clip with constant inputs, paddle's HardSigmoid, ...), torch
modules exported with ``torch.onnx.export(..., dynamo=False)``, hostile files built byte by
byte, and the comparison with onnxruntime."""

from __future__ import annotations

import io
import sys
import types
from pathlib import Path

import numpy as np
import pytest


def onnx():
    return pytest.importorskip("onnx")


def ort():
    return pytest.importorskip("onnxruntime")


def torch():
    return pytest.importorskip("torch")


def torchvision():
    torch()
    # torchvision's meta registrations need a newer torch than the CPU build here; they are only
    # used for torch.compile.
    sys.modules.setdefault("torchvision._meta_registrations", types.ModuleType("torchvision._meta_registrations"))
    return pytest.importorskip("torchvision")


def randomize_batch_norms(module):
    """Random running statistics and affine parameters in every BatchNorm2d of ``module``:
    folding BatchNorm with mean 0, var 1 would test little."""
    t = torch()
    g = t.Generator().manual_seed(1)
    for m in module.modules():
        if isinstance(m, t.nn.BatchNorm2d):
            with t.no_grad():
                m.running_mean.copy_(t.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(t.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(t.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(t.randn(m.num_features, generator=g) * 0.1)
    return module


# --- onnx.helper graphs ---------------------------------------------------------------------


def rand(rng, *shape, scale=0.5):
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def make_model(nodes, initializers: dict, opset: int = 17, channels: int = 3, hw=("H", "W"),
               output: str = "out", input_name: str = "image"):
    """A model with one (1, channels, H, W) float input and one output, from helper nodes."""
    o = onnx()
    h = o.helper
    inits = [o.numpy_helper.from_array(np.asarray(v), k) for k, v in initializers.items()]
    graph = h.make_graph(
        nodes, "test",
        [h.make_tensor_value_info(input_name, o.TensorProto.FLOAT, [1, channels, *hw])],
        [h.make_tensor_value_info(output, o.TensorProto.FLOAT, None)],
        initializer=inits,
    )
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", opset)])
    model.ir_version = 7 if opset <= 15 else 8
    return model


def save(model, path: Path) -> Path:
    path.write_bytes(model.SerializeToString())
    return path


def conv_relu(opset: int = 17, rng=None):
    """Conv 3x3 (8 channels) then Relu: the smallest model that imports."""
    rng = rng or np.random.default_rng(0)
    h = onnx().helper
    nodes = [h.make_node("Conv", ["image", "w", "b"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             h.make_node("Relu", ["c"], ["out"], name="relu")]
    return make_model(nodes, {"w": rand(rng, 8, 3, 3, 3), "b": rand(rng, 8)}, opset)


# --- hostile files, byte by byte -------------------------------------------------------------


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def nested_subgraphs(depth: int, opset: int = 17) -> bytes:
    """A ModelProto whose graph holds an If node whose branch holds an If node ... ``depth`` deep."""
    graph = _field(1, _field(4, b"Relu") + _field(1, b"x") + _field(2, b"y"))
    for _ in range(depth):
        attr = _field(1, b"then_branch") + _field(6, graph) + _varint(20 << 3 | 0) + _varint(5)
        node = _field(1, b"cond") + _field(2, b"y") + _field(4, b"If") + _field(5, attr)
        graph = _field(1, node)
    opset_id = _field(1, b"") + _varint(2 << 3 | 0) + _varint(opset)
    return _varint(1 << 3 | 0) + _varint(8) + _field(8, opset_id) + _field(7, graph)


# --- running both ------------------------------------------------------------------------------


def run_onnxruntime(model_bytes: bytes, x: np.ndarray, output: str | None = None) -> np.ndarray:
    """onnxruntime's output for a (C, H, W) input (batch added), as (C, H, W) or (D,)."""
    rt = ort()
    options = rt.SessionOptions()
    options.intra_op_num_threads = 2
    session = rt.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    outputs = [output] if output else None
    return session.run(outputs, {name: x[None].astype(np.float32)})[0][0]


def assert_close(ours: np.ndarray, theirs: np.ndarray, what: str = "") -> None:
    """SPEC's promise: max abs difference <= 1e-3 of the output's largest absolute value."""
    assert ours.shape == theirs.shape, (what, ours.shape, theirs.shape)
    scale = float(np.abs(theirs).max())
    err = float(np.abs(ours.astype(np.float64) - theirs).max())
    assert err <= 1e-3 * max(scale, 1e-12), f"{what}: max abs difference {err:.3g}, largest value {scale:.3g}"


def export_torch(module, shape, opset: int, dynamic: bool = True, output_names=("out",)) -> bytes:
    """``torch.onnx.export(..., dynamo=False)`` of an eval-mode module, to bytes."""
    t = torch()
    import warnings

    buffer = io.BytesIO()
    x = t.randn(1, *shape)
    axes = {"image": {2: "H", 3: "W"}} if dynamic else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t.onnx.export(module.eval(), (x,), buffer, opset_version=opset, dynamo=False, input_names=["image"],
                      output_names=list(output_names), dynamic_axes=axes)
    return buffer.getvalue()


def import_bytes(model_bytes: bytes, folder: Path, until=()):
    """``poolcli import`` of ``model_bytes`` into ``folder/out``; the loaded Pipeline."""
    from poolcli.importer import import_onnx
    from poolcli.pipeline import Pipeline

    path = folder / "model.onnx"
    path.write_bytes(model_bytes)
    import_onnx(path, folder / "out", list(until))
    return Pipeline.from_yaml(folder / "out" / "pipeline.yaml")


def check_against_onnxruntime(model, folder: Path, sizes=((64, 64), (64, 96)), until=(), channels: int = 3,
                              seed: int = 0):
    """Import ``model`` (a ModelProto or bytes), run it through poolcli and onnxruntime at each
    (H, W) of ``sizes`` on random inputs, and hold them to SPEC's tolerance. Returns the
    Pipeline."""
    data = model if isinstance(model, bytes) else model.SerializeToString()
    pipe = import_bytes(data, folder, until)
    rng = np.random.default_rng(seed)
    for h, w in sizes:
        x = rng.standard_normal((channels, h, w)).astype(np.float32)
        theirs = run_onnxruntime(_with_outputs(data, until), x, until[-1] if until else None)
        ours = pipe(x)
        assert_close(ours, theirs, f"{h}x{w}")
    return pipe


def _with_outputs(data: bytes, until) -> bytes:
    """The model with ``until``'s values as graph outputs too (onnxruntime returns only those)."""
    if not until:
        return data
    o = onnx()
    model = o.load_from_string(data)
    have = {v.name for v in model.graph.output}
    for name in until:
        if name not in have:
            model.graph.output.append(o.helper.make_empty_tensor_value_info(name))
    return model.SerializeToString()
