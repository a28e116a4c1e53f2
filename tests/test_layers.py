"""batch_norm, layer_norm, softmax, linear, slice and the arithmetic stages, against
tests/naive.py, torch and onnxruntime; their config and shape errors."""

import numpy as np
import pytest

import layers
import naive
from onnx_oracle import needs_onnx, run_node
from poolcli import Pipeline
from poolcli.errors import ConfigError, ShapeError
from torch_oracle import F, needs_torch, torch

SHAPES = [(1, 1, 1), (3, 1, 1), (5, 7, 3), (4, 13, 11)]


def close(a, b, rtol=1e-5, atol=1e-6):
    np.testing.assert_allclose(a, b, rtol=rtol, atol=atol)


def _stats(rng, c):
    return {"weight": rng.standard_normal(c), "bias": rng.standard_normal(c), "mean": rng.standard_normal(c),
            "var": rng.random(c) + 0.1}


# --- batch_norm -----------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [*SHAPES, (6,)])
def test_batch_norm_equals_naive(shape, rng):
    x = rng.standard_normal(shape).astype(np.float32)
    stats = _stats(rng, shape[0])
    stage = layers.stage("batch_norm", {k: v for k, v in stats.items()}, eps=1e-3, **{k: k for k in stats})
    close(stage(x), naive.batch_norm(x, **stats, eps=1e-3) if len(shape) == 3 else
          naive.batch_norm(x[:, None, None], **stats, eps=1e-3)[:, 0, 0])


@needs_torch
def test_batch_norm_equals_torch(rng):
    x = rng.standard_normal((8, 9, 10)).astype(np.float32)
    s = {k: v.astype(np.float32) for k, v in _stats(rng, 8).items()}
    stage = layers.stage("batch_norm", s, **{k: k for k in s})
    t = {k: torch.from_numpy(v) for k, v in s.items()}
    want = F.batch_norm(torch.from_numpy(x)[None], t["mean"], t["var"], t["weight"], t["bias"], training=False)
    close(stage(x), want[0].numpy())


@needs_onnx
def test_batch_norm_equals_onnxruntime(rng):
    x = rng.standard_normal((6, 5, 7)).astype(np.float32)
    s = {k: v.astype(np.float32) for k, v in _stats(rng, 6).items()}
    want = run_node("BatchNormalization", [x[None]], {k: s[k] for k in ("weight", "bias", "mean", "var")},
                    epsilon=1e-4)[0]
    close(layers.stage("batch_norm", s, eps=1e-4, **{k: k for k in s})(x), want)


def test_batch_norm_takes_inline_lists():
    stage = layers.stage("batch_norm", weight=[1, 2], bias=[0, 1], mean=[0, 1], var=[1, 4], eps=0)
    close(stage(np.full((2, 1, 2), 3, np.float32)), [[[3, 3]], [[3, 3]]])


# --- layer_norm, softmax --------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [*SHAPES, (7,), (9, 13, 21)])  # the last: several blocks of positions, one partial
@pytest.mark.parametrize("affine", [True, False])
def test_layer_norm_equals_naive(shape, affine, rng):
    x = (rng.standard_normal(shape) * 3 + 1).astype(np.float32)
    w, b = rng.standard_normal(shape[0]), rng.standard_normal(shape[0])
    params = {"weight": "w", "bias": "b"} if affine else {}
    stage = layers.stage("layer_norm", {"w": w, "b": b}, eps=1e-6, **params)
    want = naive.layer_norm(x, w.astype(np.float32), b.astype(np.float32), 1e-6) if affine else \
        naive.layer_norm(x, eps=1e-6)
    close(stage(x), want, atol=1e-5)


@needs_torch
def test_layer_norm_equals_torch_over_channels_last(rng):
    x = rng.standard_normal((12, 7, 9)).astype(np.float32)
    w, b = rng.standard_normal(12).astype(np.float32), rng.standard_normal(12).astype(np.float32)
    channels_last = torch.from_numpy(x).permute(1, 2, 0)
    want = F.layer_norm(channels_last, (12,), torch.from_numpy(w), torch.from_numpy(b), 1e-6).permute(2, 0, 1)
    close(layers.stage("layer_norm", {"w": w, "b": b}, weight="w", bias="b", eps=1e-6)(x), want.numpy(), atol=1e-5)


@needs_onnx
def test_layer_norm_equals_onnxruntime_between_transposes(rng):
    x = rng.standard_normal((10, 6, 5)).astype(np.float32)
    w, b = rng.standard_normal(10).astype(np.float32), rng.standard_normal(10).astype(np.float32)
    want = run_node("LayerNormalization", [x.transpose(1, 2, 0)[None]], {"w": w, "b": b}, axis=-1, epsilon=1e-6)
    close(layers.stage("layer_norm", {"w": w, "b": b}, weight="w", bias="b", eps=1e-6)(x),
          want[0].transpose(2, 0, 1), atol=1e-5)


@pytest.mark.parametrize("shape", [*SHAPES, (9,)])
def test_softmax_equals_naive(shape, rng):
    x = (rng.standard_normal(shape) * 30).astype(np.float32)  # large: the maximum must come off first
    close(layers.stage("softmax")(x), naive.softmax(x))


@needs_torch
def test_softmax_equals_torch(rng):
    x = (rng.standard_normal((7, 5, 6)) * 4).astype(np.float32)
    close(layers.stage("softmax")(x), torch.softmax(torch.from_numpy(x), dim=0).numpy())


@needs_onnx
def test_softmax_equals_onnxruntime(rng):
    x = (rng.standard_normal((7, 5, 6)) * 4).astype(np.float32)
    close(layers.stage("softmax")(x), run_node("Softmax", [x[None]], axis=1)[0])


# --- linear, slice --------------------------------------------------------------------------------


@pytest.mark.parametrize("inputs, outputs", [(1, 1), (7, 3), (130, 17)])
@pytest.mark.parametrize("bias", [True, False])
def test_linear_equals_naive(inputs, outputs, bias, rng):
    w = rng.standard_normal((outputs, inputs)).astype(np.float32)
    b = rng.standard_normal(outputs).astype(np.float32)
    x = rng.standard_normal(inputs).astype(np.float32)
    stage = layers.stage("linear", {"w": w, "b": b}, weight="w", bias="b" if bias else False)
    close(stage(x), naive.linear(x, w, b if bias else None), atol=1e-5)


@needs_torch
def test_linear_equals_torch(rng):
    w, b = rng.standard_normal((10, 20)).astype(np.float32), rng.standard_normal(10).astype(np.float32)
    x = rng.standard_normal(20).astype(np.float32)
    want = F.linear(torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(b)).numpy()
    close(layers.stage("linear", {"w": w, "b": b}, weight="w", bias="b", activation="gelu")(x),
          F.gelu(torch.from_numpy(want)).numpy(), atol=1e-5)


@pytest.mark.parametrize("start, end", [(0, 1), (1, None), (-2, None), (0, -1), (2, 5), (-5, -3), (3, 100)])
@pytest.mark.parametrize("vector", [False, True])
def test_slice_is_python_slicing(start, end, vector, rng):
    x = rng.standard_normal((5,) if vector else (5, 3, 2)).astype(np.float32)
    stage = layers.stage("slice", start=start, end=end)
    np.testing.assert_array_equal(stage(x), x[start:end])
    assert stage.output_shape(x.shape) == x[start:end].shape


@needs_onnx
def test_slices_equal_onnx_split(rng):
    x = rng.standard_normal((6, 4, 3)).astype(np.float32)
    first, second = run_node("Split", [x[None]], {"split": np.array([2, 4], np.int64)}, outputs=2, axis=1)
    np.testing.assert_array_equal(layers.stage("slice", start=0, end=2)(x), first[0])
    np.testing.assert_array_equal(layers.stage("slice", start=2)(x), second[0])


# --- add, sub, mul, div ---------------------------------------------------------------------------

BROADCASTS = [  # (a, b): shapes of the two operands
    ((3, 5, 4), (3, 5, 4)), ((3, 5, 4), (3, 1, 1)), ((3, 1, 1), (3, 5, 4)), ((3, 5, 4), (1, 5, 4)),
    ((1, 5, 4), (3, 1, 1)), ((3, 5, 4), (1, 1, 1)), ((1, 1, 1), (1, 1, 1)), ((6,), (6,)), ((6,), (1,)),
    ((2, 3, 1), (2, 1, 3)),
]


@pytest.mark.parametrize("op, symbol", [("add", "+"), ("sub", "-"), ("mul", "*"), ("div", "/")])
@pytest.mark.parametrize("a_shape, b_shape", BROADCASTS)
def test_two_inputs_equal_naive(op, symbol, a_shape, b_shape, rng):
    a = rng.standard_normal(a_shape).astype(np.float32)
    b = rng.standard_normal(b_shape).astype(np.float32)
    stage = layers.stage(op, **{"from": ["p", "q"]})
    assert stage.output_shape(a.shape, b.shape) == np.broadcast_shapes(a_shape, b_shape)
    np.testing.assert_array_equal(stage(a, b), naive.arithmetic(symbol, a, b))


@pytest.mark.parametrize("op, symbol", [("add", "+"), ("sub", "-"), ("mul", "*"), ("div", "/")])
@pytest.mark.parametrize("shape, value", [
    ((3, 5, 4), 2.5), ((3, 5, 4), [[[1.0]], [[2.0]], [[-3.0]]]), ((3, 5, 4), "c3"), ((3, 5, 4), "hw"),
    ((3, 5, 4), "chw"), ((1, 1, 1), [0.5]), ((4,), [1.0, 2.0, 3.0, 4.0]), ((4,), "one"),
])
def test_a_constant_equals_naive(op, symbol, shape, value, rng):
    tensors = {"c3": rng.standard_normal((3, 1, 1)), "hw": rng.standard_normal((1, 5, 4)),
               "chw": rng.standard_normal((3, 5, 4)), "one": rng.standard_normal(1)}
    x = rng.standard_normal(shape).astype(np.float32)
    stage = layers.stage(op, tensors, value=value)
    constant = tensors[value].astype(np.float32) if isinstance(value, str) else np.asarray(value, np.float32)
    np.testing.assert_array_equal(stage(x), naive.arithmetic(symbol, x, constant))


def test_add_sums_several_inputs_and_applies_its_activation(rng):
    xs = [rng.standard_normal((2, 3, 3)).astype(np.float32) for _ in range(3)]
    stage = layers.stage("add", activation="relu", **{"from": ["a", "b", "c"]})
    np.testing.assert_array_equal(stage(*xs), np.maximum(naive.arithmetic("+", *xs), 0))


def test_a_gate_in_a_pipeline(rng):
    """A squeeze-excitation gate: x * hard_sigmoid(conv(mean(x)))."""
    pipe = Pipeline.from_config({"stages": [
        {"type": "adaptive_avg_pool", "name": "squeeze", "output_size": 1},
        {"type": "conv", "name": "excite", "filters": "random", "out_channels": 3, "kernel_size": 1,
         "activation": {"fn": "hard_sigmoid", "alpha": 0.2, "beta": 0.5}},
        {"type": "mul", "from": ["input", "excite"]}]})
    x = rng.standard_normal((3, 6, 5)).astype(np.float32)
    squeeze = x.mean(axis=(1, 2), keepdims=True)
    gate = naive.activation(naive.conv2d(squeeze, pipe.nodes[1].stage.weights(3)).astype(np.float32), "hard_sigmoid")
    close(pipe(x), x * gate)


@needs_onnx
@pytest.mark.parametrize("op", ["Add", "Sub", "Mul", "Div"])
def test_equals_onnxruntime_with_a_batch_dimension(op, rng):
    a = rng.standard_normal((4, 6, 5)).astype(np.float32)
    b = rng.standard_normal((4, 1, 1)).astype(np.float32) + 2
    np.testing.assert_array_equal(layers.stage(op.lower(), {"b": b}, value="b")(a), run_node(op, [a[None]], {"b": b})[0])


# --- errors ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("stage, match", [
    ({"type": "sub", "from": ["input", "input", "input"]}, r"sub takes two inputs in from \(or one and a value\), got 3"),
    ({"type": "add", "from": "input"}, r"add of one input needs value"),
    ({"type": "mul", "from": ["input", "input"], "value": 2}, r"value is the second operand: give one input"),
    ({"type": "div"}, r"stages\[0\] \(div 'div0'\)\.from: div takes a list of earlier stages"),
    ({"type": "mul", "value": [[[[1.0]]]]}, r"value: value must have at most 3 dimensions"),
    ({"type": "add", "value": "c"}, r"value: 'c' is not a \.npy path, and the config has no weights: file"),
    ({"type": "batch_norm", "weight": [1, 2], "bias": [1], "mean": [0, 0], "var": [1, 1]},
     r"weight, bias, mean and var need one value per channel each, got weight 2, bias 1, mean 2, var 2"),
    ({"type": "batch_norm", "weight": [1], "bias": [1], "mean": [0], "var": [-1]}, r"var \+ eps must be > 0"),
    ({"type": "batch_norm", "weight": [[1]], "bias": [1], "mean": [0], "var": [1]},
     r"weight: weight must have shape \(C,\), got shape \(1, 1\)"),
    ({"type": "linear", "weight": [1, 2]}, r"weight must have shape \(O, I\), got shape \(2,\)"),
    ({"type": "linear", "weight": [[1, 2]], "bias": [1, 2]}, r"bias has 2 values, the weight 1 outputs"),
    ({"type": "linear", "weight": [[1, 2]], "bias": True}, r"bias: true gives no values"),
    ({"type": "layer_norm", "weight": [1, 2], "bias": [1]}, r"weight has 2 values, bias 1"),
    ({"type": "slice", "start": 1.5}, r"start: input should be a valid integer"),
])
def test_config_errors(stage, match):
    with pytest.raises(ConfigError, match=match):
        Pipeline.from_config({"stages": [stage]})


@pytest.mark.parametrize("stages, shape, match", [
    ([{"type": "add", "value": [1.0, 2.0]}], (3, 4, 5), r"shapes \(3, 4, 5\) and \(2,\) do not broadcast"),
    ([{"type": "global_avg_pool", "name": "v"}, {"type": "add", "from": ["v", "input"]}], (3, 4, 5),
     r"cannot add maps and vectors: \(3,\), \(3, 4, 5\)"),
    ([{"type": "global_avg_pool"}, {"type": "mul", "value": [[[1.0]], [[2.0]], [[3.0]]]}], (3, 4, 5),
     r"a value of shape \(3, 1, 1\) does not broadcast against the input \(3,\)"),
    ([{"type": "batch_norm", "weight": [1, 1], "bias": [0, 0], "mean": [0, 0], "var": [1, 1]}], (3, 4, 4),
     r"the statistics are for 2 channels, the input has 3"),
    ([{"type": "layer_norm", "weight": [1, 1]}], (3, 4, 4), r"weight and bias have 2 values, the input 3 channels"),
    ([{"type": "global_avg_pool"}, {"type": "linear", "weight": [[1, 2]]}], (3, 4, 4),
     r"the weight takes vectors of length 2, got 3"),
    ([{"type": "linear", "weight": [[1, 2]]}], (3, 4, 4), r"linear needs a vector"),
    ([{"type": "slice", "start": 3}], (3, 4, 4), r"start 3 and end None select nothing of 3 channels"),
])
def test_shape_errors(stages, shape, match):
    pipe = Pipeline.from_config({"stages": stages})
    with pytest.raises(ShapeError, match=match):
        pipe.trace(shape)
