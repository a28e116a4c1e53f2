"""Reading an ONNX file, refusing hostile ones before anything is allocated.

Every size a file claims (a dimension, a tensor's bytes, an external-data range, a nesting depth)
is checked against the file itself and against fixed limits, in Python integers, before NumPy or
protobuf is asked to allocate it. Nothing is ever unpickled: tensors are read with
``numpy.frombuffer`` from the file's bytes.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from poolcli.errors import ModelError

#: Larger model files are refused: protobuf cannot hold more than 2 GiB in one message.
MAX_FILE_BYTES = 2**31 - 1
#: A tensor with more elements than this is refused (2^31: 8 GiB of float32).
MAX_ELEMENTS = 2**31
#: Any one dimension larger than this is refused.
MAX_DIM = 2**31
#: Graphs nested in attributes (If, Loop, Scan bodies) deeper than this are refused.
MAX_NESTING = 16
#: A model with more nodes than this, over every graph, is refused (ResNet-152: 500).
MAX_NODES = 200_000

MIN_OPSET, MAX_OPSET = 7, 21

# ONNX TensorProto.DataType -> (NumPy dtype, the typed field that holds it when not raw)
_DTYPES = {
    1: (np.float32, "float_data"),
    2: (np.uint8, "int32_data"),
    3: (np.int8, "int32_data"),
    4: (np.uint16, "int32_data"),
    5: (np.int16, "int32_data"),
    6: (np.int32, "int32_data"),
    7: (np.int64, "int64_data"),
    9: (np.bool_, "int32_data"),
    10: (np.float16, "int32_data"),
    11: (np.float64, "double_data"),
    12: (np.uint32, "uint64_data"),
    13: (np.uint64, "uint64_data"),
}


def onnx_module():
    """The ``onnx`` package, or a one-line error saying how to install it."""
    try:
        import onnx
    except ImportError:
        raise ModelError('importing ONNX models needs the onnx package: pip install "poolcli[onnx]"') from None
    return onnx


def read_model(path: str | Path):
    """The parsed ``onnx.ModelProto`` of ``path``, checked by :func:`check_model`."""
    onnx = onnx_module()
    path = Path(path)
    try:
        size = os.path.getsize(path)
        if size > MAX_FILE_BYTES:
            raise ModelError(f"{path}: {size} bytes, larger than an ONNX file can be (2 GiB)")
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise ModelError(f"cannot read {path}: {exc.strerror or exc}") from None
    if not data:
        raise ModelError(f"{path}: empty file, not an ONNX model")
    model = onnx.ModelProto()
    try:
        _parse(model, data)
    except Exception as exc:  # protobuf's DecodeError, RecursionError (nesting), ValueError
        raise ModelError(f"{path}: not a valid ONNX file (truncated, malformed or nested too deeply: "
                         f"{' '.join(str(exc).split()) or type(exc).__name__})") from None
    check_model(model, path)
    return model


def _parse(model, data: bytes) -> None:
    model.ParseFromString(data)


def check_model(model, path: Path) -> None:
    """Refuse a model whose claims do not hold: no graph, an opset poolcli does not read,
    graphs nested too deeply or too many nodes, dimensions or tensors too large, tensor data
    shorter or longer than its dims say, external data missing or outside the model's folder."""
    if not model.HasField("graph"):
        raise ModelError(f"{path}: no graph in the file; not an ONNX model (or a truncated one)")
    opset = model_opset(model, path)
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise ModelError(f"{path}: opset {opset}; poolcli imports opsets {MIN_OPSET} to {MAX_OPSET} "
                         "(re-export with opset_version=17)")
    nodes = 0
    stack = [(model.graph, 0)]
    while stack:  # iterative: a deep nesting must not exhaust Python's stack either
        graph, depth = stack.pop()
        if depth > MAX_NESTING:
            raise ModelError(f"{path}: graphs nested more than {MAX_NESTING} deep in node attributes; refused")
        nodes += len(graph.node)
        if nodes > MAX_NODES:
            raise ModelError(f"{path}: more than {MAX_NODES} nodes; refused")
        for tensor in graph.initializer:
            check_tensor(tensor, path)
        for info in [*graph.input, *graph.output, *graph.value_info]:
            _check_value_info(info, path)
        for node in graph.node:
            for attr in node.attribute:
                if attr.HasField("t"):
                    check_tensor(attr.t, path, f"node '{node.name}' ({node.op_type})")
                for tensor in attr.tensors:
                    check_tensor(tensor, path, f"node '{node.name}' ({node.op_type})")
                if attr.HasField("g"):
                    stack.append((attr.g, depth + 1))
                stack.extend((g, depth + 1) for g in attr.graphs)


def model_opset(model, path: Path | str = "model") -> int:
    versions = [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")]
    if not versions:
        raise ModelError(f"{path}: no ONNX opset is declared; not an ONNX model (or a truncated one)")
    return int(versions[0])


def _check_value_info(info, path: Path) -> None:
    if not info.type.HasField("tensor_type"):
        return
    for dim in info.type.tensor_type.shape.dim:
        if dim.HasField("dim_value") and not 0 <= dim.dim_value <= MAX_DIM:
            raise ModelError(f"{path}: value '{info.name}' claims a dimension of {dim.dim_value}; refused")


def tensor_size(tensor, path: Path, where: str = "") -> int:
    """The element count a tensor claims, checked against the limits (in Python ints)."""
    label = f"tensor '{tensor.name}'" + (f" of {where}" if where else "")
    count = 1
    for d in tensor.dims:
        if not 0 <= d <= MAX_DIM:
            raise ModelError(f"{path}: {label} claims a dimension of {d}; refused")
        count *= d
        if count > MAX_ELEMENTS:
            raise ModelError(f"{path}: {label} claims {count:,}+ elements (dims {list(tensor.dims)}); refused")
    return count


def check_tensor(tensor, path: Path, where: str = "") -> None:
    """Refuse a tensor whose data does not hold what its dims claim (checked without reading it)."""
    label = f"tensor '{tensor.name}'" + (f" of {where}" if where else "")
    count = tensor_size(tensor, path, where)
    if tensor.data_type not in _DTYPES:
        return  # refused when read, if a stage needs it (strings, bfloat16...)
    dtype, field = _DTYPES[tensor.data_type]
    if tensor.data_location == 1:  # EXTERNAL
        info = external_info(tensor, path, label)
        need = count * np.dtype(dtype).itemsize
        if info["length"] is not None and info["length"] != need:
            raise ModelError(f"{path}: {label} claims {info['length']} bytes of external data; its dims need {need}")
        if info["offset"] + need > info["file_size"]:
            raise ModelError(f"{path}: {label} claims bytes {info['offset']}..{info['offset'] + need} of "
                             f"{info['location']}, which holds {info['file_size']}; truncated or wrong file")
        return
    if tensor.HasField("raw_data") or not len(getattr(tensor, field)):
        have = len(tensor.raw_data)
        need = count * np.dtype(dtype).itemsize
        if have != need:
            raise ModelError(f"{path}: {label} holds {have} bytes but its dims {list(tensor.dims)} need {need}; "
                             "truncated or malformed file")
    elif len(getattr(tensor, field)) != count:
        raise ModelError(f"{path}: {label} holds {len(getattr(tensor, field))} values but its dims "
                         f"{list(tensor.dims)} need {count}; malformed file")


def external_info(tensor, path: Path, label: str) -> dict:
    """Where a tensor's external data lies: a file in the model's folder (never outside it)."""
    entries = {e.key: e.value for e in tensor.external_data}
    location = entries.get("location", "")
    if not location or os.path.isabs(location) or ".." in Path(location).parts:
        raise ModelError(f"{path}: {label} keeps its data in {location!r}, not a file beside the model; refused")
    file = Path(path).parent / location
    try:
        offset = int(entries.get("offset", 0))
        length = int(entries["length"]) if "length" in entries else None
    except ValueError:
        raise ModelError(f"{path}: {label} has a malformed external-data offset or length") from None
    if offset < 0 or (length is not None and length < 0):
        raise ModelError(f"{path}: {label} has a negative external-data offset or length")
    try:
        file_size = os.path.getsize(file)
    except OSError:
        raise ModelError(f"{path}: {label} keeps its data in {location}, which is missing beside the model "
                         f"(copy it into {Path(path).parent or '.'})") from None
    return {"location": location, "file": file, "offset": offset, "length": length, "file_size": file_size}


def tensor_array(tensor, path: Path, where: str = "") -> np.ndarray:
    """A checked tensor as a NumPy array (a copy: the model's bytes may be freed)."""
    label = f"tensor '{tensor.name}'" + (f" of {where}" if where else "")
    check_tensor(tensor, path, where)
    if tensor.data_type not in _DTYPES:
        raise ModelError(f"{path}: {label} has ONNX data type {tensor.data_type}, which poolcli does not read")
    dtype, field = _DTYPES[tensor.data_type]
    shape = tuple(tensor.dims)
    count = int(np.prod(shape, dtype=np.int64)) if shape else 1
    if tensor.data_location == 1:
        info = external_info(tensor, path, label)
        with open(info["file"], "rb") as f:
            f.seek(info["offset"])
            raw = f.read(count * np.dtype(dtype).itemsize)
        return np.frombuffer(raw, dtype=np.dtype(dtype).newbyteorder("<")).reshape(shape).astype(dtype)
    if tensor.HasField("raw_data") or not len(getattr(tensor, field)):
        return np.frombuffer(tensor.raw_data, dtype=np.dtype(dtype).newbyteorder("<")).reshape(shape).astype(dtype)
    values = np.asarray(getattr(tensor, field))
    if tensor.data_type == 10:  # float16 bits stored in int32_data
        values = values.astype(np.uint16).view(np.float16)
    return values.astype(dtype).reshape(shape)
