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


def run_node(op: str, inputs: list, constants: dict | None = None, opset: int = 17, **attributes) -> np.ndarray:
    """The output of one ONNX node ``op`` with ``attributes``: ``inputs`` are float32 arrays fed
    as graph inputs, in order; ``constants`` (name -> array) are initializers named after them,
    in the node's input list (a name of "" leaves an optional input out)."""
    constants = constants or {}
    feeds = {f"x{i}": np.ascontiguousarray(a, np.float32) for i, a in enumerate(inputs)}
    names = [*feeds, *constants]
    graph_inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, a.shape) for n, a in feeds.items()]
    initializers = [numpy_helper.from_array(np.asarray(a), n) for n, a in constants.items() if n]
    node = helper.make_node(op, names, ["y"], **attributes)
    graph = helper.make_graph([node], "one", graph_inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              initializer=initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)[0]
