"""onnxruntime as the oracle for ONNX semantics: ``run_node`` builds a one-node graph with
``onnx.helper`` and runs it; ``needs_onnx`` skips where onnx or onnxruntime is absent
(pip install onnx onnxruntime to run those tests)."""

import numpy as np
import pytest

try:
    import onnx
    import onnxruntime
    from onnx import TensorProto, helper, numpy_helper
except ImportError:
    onnx = onnxruntime = helper = numpy_helper = TensorProto = None

needs_onnx = pytest.mark.skipif(onnxruntime is None, reason="onnx and onnxruntime are not installed")


def run_node(op: str, inputs: list, constants: dict | None = None, opset: int = 17, outputs: int = 1,
             **attributes):
    """The output of one ONNX node ``op`` with ``attributes`` (a list of ``outputs`` arrays where
    it has several): ``inputs`` are float32 arrays fed as graph inputs, in order; ``constants``
    (name -> array) are initializers named after them, in the node's input list (a value of None
    leaves an optional input out)."""
    constants = constants or {}
    feeds = {f"x{i}": np.ascontiguousarray(a, np.float32) for i, a in enumerate(inputs)}
    names = [*feeds, *(n if a is not None else "" for n, a in constants.items())]
    graph_inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, a.shape) for n, a in feeds.items()]
    initializers = [numpy_helper.from_array(np.asarray(a), n) for n, a in constants.items() if a is not None]
    results = [f"y{i}" for i in range(outputs)]
    node = helper.make_node(op, names, results, **attributes)
    graph = helper.make_graph([node], "one", graph_inputs,
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in results],
                              initializer=initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    values = session.run(None, feeds)
    return values if outputs > 1 else values[0]
