"""poolcli import of graphs built with onnx.helper: what torch does not export (paddle2onnx's
unfolded BatchNormalization, Clip with constant inputs, HardSigmoid alpha 0.2, asymmetric floor
Resize with scales, ConvTranspose with output_padding, squeeze-excitation gates) and every op of
the table at the attributes models use, each compared with onnxruntime."""

import numpy as np
import pytest

from tests import onnx_models as M

onnx = M.onnx()
M.ort()
h = onnx.helper
SIZES = ((16, 16), (12, 20))


def _rng():
    return np.random.default_rng(0)


def const(name, array):
    return h.make_node("Constant", [], [name], name=name, value=onnx.numpy_helper.from_array(np.asarray(array)))


def check(tmp_path, nodes, weights, opset=17, sizes=SIZES, hw=("H", "W"), channels=3, until=()):
    model = M.make_model(nodes, weights, opset=opset, hw=hw, channels=channels)
    pipe = M.check_against_onnxruntime(model, tmp_path, sizes, until=until, channels=channels)
    return pipe, (tmp_path / "out" / "pipeline.yaml").read_text()


def stem(rng, c=8):
    """A 3x3 conv from the image to ``c`` channels, output 'x'."""
    return ([h.make_node("Conv", ["image", "stem_w", "stem_b"], ["x"], name="stem", pads=[1, 1, 1, 1])],
            {"stem_w": M.rand(rng, c, 3, 3, 3), "stem_b": M.rand(rng, c)})


@pytest.mark.parametrize("opset", list(range(11, 22)))
def test_every_opset_from_11_to_21(tmp_path, opset):
    _, text = check(tmp_path, M.conv_relu(opset).graph.node, {"w": M.rand(_rng(), 8, 3, 3, 3), "b": M.rand(_rng(), 8)},
                    opset=opset)
    assert f"(opset {opset})" in text and "activation: relu" in text


def test_unfolded_batch_norm(tmp_path):
    """paddle2onnx leaves BatchNormalization after a Relu (and on the image itself)."""
    rng = _rng()
    bn = {f"{p}{i}": (np.abs(M.rand(rng, c)) + 0.5 if p == "v" else M.rand(rng, c))
          for i, c in ((0, 3), (1, 8)) for p in "gbmv"}
    nodes = [h.make_node("BatchNormalization", ["image", "g0", "b0", "m0", "v0"], ["n"], name="bn0", epsilon=1e-3),
             h.make_node("Conv", ["n", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             h.make_node("Relu", ["c"], ["r"], name="relu"),
             h.make_node("BatchNormalization", ["r", "g1", "b1", "m1", "v1"], ["out"], name="bn1")]
    _, text = check(tmp_path, nodes, {**bn, "w": M.rand(rng, 8, 3, 3, 3)})
    assert text.count("type: batch_norm") == 2


@pytest.mark.parametrize("opset", [10, 13])
def test_clip_bounds_as_attributes_or_constant_inputs(tmp_path, opset):
    rng = _rng()
    nodes, w = stem(rng)
    if opset < 11:
        nodes += [h.make_node("Clip", ["x"], ["out"], name="relu6", min=0.0, max=0.5)]
    else:
        nodes += [const("lo", np.array(0.0, np.float32)), const("hi", np.array(0.5, np.float32)),
                  h.make_node("Clip", ["x", "lo", "hi"], ["out"], name="relu6")]
    _, text = check(tmp_path, nodes, w, opset=opset)
    assert "fn: clip, min: 0.0, max: 0.5" in text


def test_clip_with_only_a_max(tmp_path):
    rng = _rng()
    nodes, w = stem(rng)
    nodes += [const("hi", np.array(0.25, np.float32)), h.make_node("Clip", ["x", "", "hi"], ["out"], name="clip")]
    check(tmp_path, nodes, w)


def test_squeeze_excitation_with_paddles_hard_sigmoid(tmp_path):
    """GlobalAveragePool, 1x1 conv, Relu, 1x1 conv, HardSigmoid(alpha 0.2), Mul with the map."""
    rng = _rng()
    nodes, w = stem(rng)
    nodes += [h.make_node("GlobalAveragePool", ["x"], ["p"], name="se_pool"),
              h.make_node("Conv", ["p", "w1", "b1"], ["s1"], name="se_reduce"),
              h.make_node("Relu", ["s1"], ["s2"], name="se_relu"),
              h.make_node("Conv", ["s2", "w2", "b2"], ["s3"], name="se_expand"),
              h.make_node("HardSigmoid", ["s3"], ["gate"], name="se_gate", alpha=0.2, beta=0.5),
              h.make_node("Mul", ["x", "gate"], ["y"], name="se_mul"),
              h.make_node("HardSwish", ["y"], ["out"], name="hswish")]
    w.update({"w1": M.rand(rng, 2, 8, 1, 1), "b1": M.rand(rng, 2), "w2": M.rand(rng, 8, 2, 1, 1), "b2": M.rand(rng, 8)})
    _, text = check(tmp_path, nodes, w, opset=14)
    assert "fn: hard_sigmoid, alpha: 0.2, beta: 0.5" in text and "from: [" in text


def test_se_with_reduce_mean_keepdims(tmp_path):
    rng = _rng()
    nodes, w = stem(rng)
    nodes += [h.make_node("ReduceMean", ["x"], ["p"], name="mean", axes=[2, 3], keepdims=1),
              h.make_node("Sigmoid", ["p"], ["g"], name="sig"),
              h.make_node("Mul", ["x", "g"], ["out"], name="gate")]
    check(tmp_path, nodes, w, opset=13)


@pytest.mark.parametrize("attrs", [
    dict(mode="nearest", coordinate_transformation_mode="asymmetric", nearest_mode="floor"),
    dict(mode="nearest"),
    dict(mode="linear"),
    dict(mode="linear", coordinate_transformation_mode="align_corners"),
    dict(mode="linear", coordinate_transformation_mode="pytorch_half_pixel"),
    dict(mode="linear", coordinate_transformation_mode="asymmetric"),
])
def test_resize_with_scales(tmp_path, attrs):
    rng = _rng()
    nodes, w = stem(rng)
    nodes += [const("scales", np.array([1, 1, 2, 1.5], np.float32)),
              h.make_node("Resize", ["x", "", "scales"], ["out"], name="resize", **attrs)]
    check(tmp_path, nodes, w, opset=13)


def test_resize_to_sizes(tmp_path):
    rng = _rng()
    nodes, w = stem(rng)
    nodes += [const("sizes", np.array([1, 8, 20, 30], np.int64)),
              h.make_node("Resize", ["x", "", "", "sizes"], ["out"], name="resize", mode="linear")]
    check(tmp_path, nodes, w, opset=13)


def test_resize_opset_11_with_an_empty_roi(tmp_path):
    rng = _rng()
    nodes, w = stem(rng)
    nodes += [const("roi", np.array([], np.float32)), const("scales", np.array([1, 1, 2, 2], np.float32)),
              h.make_node("Resize", ["x", "roi", "scales"], ["out"], name="resize", mode="nearest",
                          coordinate_transformation_mode="asymmetric", nearest_mode="floor")]
    check(tmp_path, nodes, w, opset=11)


def test_conv_transpose_with_output_padding(tmp_path):
    rng = _rng()
    nodes, w = stem(rng)
    nodes += [h.make_node("ConvTranspose", ["x", "tw", "tb"], ["out"], name="up", strides=[2, 2],
                          pads=[1, 1, 1, 1], output_padding=[1, 1])]
    w.update({"tw": M.rand(rng, 8, 4, 3, 3), "tb": M.rand(rng, 4)})
    _, text = check(tmp_path, nodes, w)
    assert "type: conv_transpose" in text and "output_padding: 1" in text


def test_grouped_conv_transpose_with_relu(tmp_path):
    rng = _rng()
    nodes, w = stem(rng)
    nodes += [h.make_node("ConvTranspose", ["x", "tw"], ["t"], name="up", strides=[2, 2], group=2),
              h.make_node("Relu", ["t"], ["out"], name="relu")]
    w.update({"tw": M.rand(rng, 8, 2, 2, 2)})
    check(tmp_path, nodes, w)


@pytest.mark.parametrize("attrs", [
    dict(strides=[2, 2], auto_pad="SAME_UPPER"),
    dict(strides=[2, 2], auto_pad="SAME_LOWER"),
    dict(dilations=[2, 2], pads=[2, 2, 2, 2]),
    dict(group=4, pads=[0, 1, 2, 1]),
    dict(auto_pad="VALID", strides=[1, 2]),
])
def test_conv_attributes(tmp_path, attrs):
    rng = _rng()
    nodes, w = stem(rng)
    groups = attrs.get("group", 1)
    nodes += [h.make_node("Conv", ["x", "w"], ["out"], name="conv", kernel_shape=[3, 3], **attrs)]
    w["w"] = M.rand(rng, 8, 8 // groups, 3, 3)
    check(tmp_path, nodes, w)


@pytest.mark.parametrize("op,attrs", [
    ("MaxPool", dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])),
    ("MaxPool", dict(kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1)),
    ("MaxPool", dict(kernel_shape=[2, 2], strides=[2, 2], auto_pad="SAME_UPPER")),
    ("MaxPool", dict(kernel_shape=[3, 3], pads=[0, 0, 1, 2])),
    ("AveragePool", dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])),
    ("AveragePool", dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], count_include_pad=1)),
    ("AveragePool", dict(kernel_shape=[2, 2], strides=[2, 2], ceil_mode=1)),
])
def test_pools(tmp_path, op, attrs):
    rng = _rng()
    nodes, w = stem(rng)
    nodes += [h.make_node(op, ["x"], ["out"], name="pool", **attrs)]
    check(tmp_path, nodes, w, opset=19 if attrs.get("ceil_mode") else 17)


@pytest.mark.parametrize("op,attrs", [
    ("LeakyRelu", dict(alpha=0.1)), ("Elu", dict(alpha=0.7)), ("Tanh", {}), ("Sigmoid", {}), ("Erf", {}),
    ("HardSigmoid", dict(alpha=1 / 6)), ("HardSwish", {}), ("Softplus", {}), ("Abs", {}), ("Exp", {}),
])
def test_activations(tmp_path, op, attrs):
    rng = _rng()
    nodes, w = stem(rng)
    nodes += [h.make_node(op, ["x"], ["out"], name="act", **attrs)]
    _, text = check(tmp_path, nodes, w, opset=14)
    assert "activation:" in text  # fused into the conv


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu_op_of_opset_20(tmp_path, approximate):
    rng = _rng()
    nodes, w = stem(rng)
    nodes += [h.make_node("Gelu", ["x"], ["out"], name="gelu", approximate=approximate)]
    check(tmp_path, nodes, w, opset=20)


@pytest.mark.parametrize("slope_shape", [(8, 1, 1), (1,)])
def test_prelu(tmp_path, slope_shape):
    rng = _rng()
    nodes, w = stem(rng)
    nodes += [h.make_node("PRelu", ["x", "slope"], ["out"], name="prelu")]
    w["slope"] = M.rand(rng, *slope_shape)
    check(tmp_path, nodes, w)


@pytest.mark.parametrize("op", ["Add", "Sub", "Mul", "Div"])
@pytest.mark.parametrize("shape", [(1, 8, 1, 1), (8, 1, 1), (1,), ()])
def test_arithmetic_with_a_constant(tmp_path, op, shape):
    rng = _rng()
    nodes, w = stem(rng)
    c = M.rand(rng, *shape) if shape else np.array(0.75, np.float32)
    if op == "Div":
        c = np.abs(c) + 0.5
    nodes += [h.make_node(op, ["x", "c"], ["out"], name="op")]
    check(tmp_path, nodes, {**w, "c": c})


def test_constant_over_height_and_width(tmp_path):
    """A (1, H, W) constant needs a fixed input size."""
    rng = _rng()
    nodes, w = stem(rng)
    nodes += [h.make_node("Mul", ["x", "c"], ["out"], name="op")]
    check(tmp_path, nodes, {**w, "c": M.rand(rng, 1, 1, 12, 20)}, hw=(12, 20), sizes=((12, 20),))


@pytest.mark.parametrize("op", ["Sub", "Add", "Mul"])
def test_constant_first(tmp_path, op):
    rng = _rng()
    nodes, w = stem(rng)
    nodes += [h.make_node(op, ["c", "x"], ["out"], name="op")]
    check(tmp_path, nodes, {**w, "c": M.rand(rng, 1, 8, 1, 1)})


def test_two_maps_broadcast_and_sum(tmp_path):
    rng = _rng()
    nodes, w = stem(rng)
    nodes += [h.make_node("GlobalMaxPool", ["x"], ["g"], name="gmp"),
              h.make_node("Div", ["x", "g"], ["d"], name="div"),
              h.make_node("Sub", ["d", "x"], ["s"], name="sub"),
              h.make_node("Sum", ["s", "x", "d"], ["out"], name="sum")]
    check(tmp_path, nodes, w)


def test_split_slice_and_concat(tmp_path):
    rng = _rng()
    nodes, w = stem(rng)
    nodes += [h.make_node("Split", ["x"], ["a", "b"], name="split", axis=1, split=[3, 5]),
              const("st", np.array([1], np.int64)), const("en", np.array([2**62], np.int64)),
              const("ax", np.array([1], np.int64)),
              h.make_node("Slice", ["b", "st", "en", "ax"], ["bs"], name="slice"),
              h.make_node("Concat", ["bs", "a", "x"], ["out"], name="cat", axis=1)]
    _, text = check(tmp_path, nodes, w, opset=11)
    assert "type: slice" in text and "start: 1, end: 5" in text


def test_split_into_equal_parts_at_opset_18(tmp_path):
    rng = _rng()
    nodes, w = stem(rng)
    nodes += [h.make_node("Split", ["x"], ["a", "b"], name="split", axis=1, num_outputs=2),
              h.make_node("Mul", ["a", "b"], ["out"], name="mul")]
    check(tmp_path, nodes, w, opset=18)


@pytest.mark.parametrize("trans_b", [0, 1])
def test_gemm_head_and_softmax(tmp_path, trans_b):
    rng = _rng()
    nodes, w = stem(rng)
    nodes += [h.make_node("GlobalAveragePool", ["x"], ["p"], name="gap"),
              h.make_node("Flatten", ["p"], ["f"], name="flatten"),
              h.make_node("Gemm", ["f", "fw", "fb"], ["g"], name="fc", transB=trans_b, alpha=0.5, beta=2.0),
              h.make_node("Relu", ["g"], ["r"], name="relu"),
              h.make_node("MatMul", ["r", "mw"], ["m"], name="matmul"),
              h.make_node("Softmax", ["m"], ["out"], name="softmax", axis=1)]
    w.update({"fw": M.rand(rng, 6, 8) if trans_b else M.rand(rng, 8, 6), "fb": M.rand(rng, 6),
              "mw": M.rand(rng, 6, 5)})
    pipe, text = check(tmp_path, nodes, w, opset=13)
    assert pipe.kind == "descriptors" and "type: linear" in text


def test_softmax_over_channels_and_flatten_of_a_map(tmp_path):
    rng = _rng()
    nodes, w = stem(rng)
    nodes += [h.make_node("Softmax", ["x"], ["s"], name="softmax", axis=1),
              h.make_node("MaxPool", ["s"], ["p"], name="pool", kernel_shape=[4, 4], strides=[4, 4]),
              h.make_node("Flatten", ["p"], ["out"], name="flatten")]
    check(tmp_path, nodes, w, opset=13)


def test_layer_normalization_channels_last(tmp_path):
    rng = _rng()
    nodes, w = stem(rng)
    nodes += [h.make_node("Transpose", ["x"], ["t"], name="to_nhwc", perm=[0, 2, 3, 1]),
              h.make_node("LayerNormalization", ["t", "g", "b"], ["n"], name="ln", epsilon=1e-6),
              h.make_node("MatMul", ["n", "mw"], ["m"], name="pw"),
              h.make_node("Add", ["m", "mb"], ["a"], name="pw_bias"),
              h.make_node("Gelu", ["a"], ["ge"], name="gelu"),
              h.make_node("Mul", ["ge", "ls"], ["s"], name="layer_scale"),
              h.make_node("Transpose", ["s"], ["out"], name="to_nchw", perm=[0, 3, 1, 2])]
    w.update({"g": M.rand(rng, 8), "b": M.rand(rng, 8), "mw": M.rand(rng, 8, 6), "mb": M.rand(rng, 6),
              "ls": M.rand(rng, 6)})
    _, text = check(tmp_path, nodes, w, opset=20)
    assert "type: layer_norm" in text and "activation: gelu" in text


def test_identity_dropout_cast(tmp_path):
    rng = _rng()
    nodes, w = stem(rng)
    nodes += [h.make_node("Identity", ["x"], ["i"], name="id"),
              h.make_node("Dropout", ["i"], ["d"], name="drop"),
              h.make_node("Cast", ["d"], ["c"], name="cast", to=onnx.TensorProto.FLOAT),
              h.make_node("Relu", ["c"], ["out"], name="relu")]
    _, text = check(tmp_path, nodes, w)
    assert "Identity" not in text and "drop" not in text


def test_gray_input(tmp_path):
    rng = _rng()
    nodes = [h.make_node("Conv", ["image", "w"], ["out"], name="conv")]
    _, text = check(tmp_path, nodes, {"w": M.rand(rng, 4, 1, 3, 3)}, channels=1)
    assert "color: gray" in text


def test_until_two_values_keeps_both(tmp_path):
    rng = _rng()
    nodes, w = stem(rng)
    nodes += [h.make_node("Relu", ["x"], ["r"], name="relu"),
              h.make_node("MaxPool", ["r"], ["p"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
              h.make_node("Sigmoid", ["p"], ["out"], name="sig")]
    pipe, text = check(tmp_path, nodes, w, until=["x", "p"])
    assert pipe.nodes[-1].name == "pool" and "sig" not in text
    assert "activation: relu" not in text  # x is kept: the relu is not fused into the conv
