"""The importer's steps one by one: constant folding, each graph rewrite and each stage rewrite,
on small graphs built with onnx.helper (what each leaves, and where each must not apply)."""

import numpy as np
import pytest

from tests import onnx_models as M

onnx = M.onnx()
h = onnx.helper

from poolcli.importer import prune  # noqa: E402
from poolcli.importer import rewrites as R  # noqa: E402
from poolcli.importer.graph import build_graph, fold_constants, infer_shapes  # noqa: E402
from poolcli.importer.ops import convert  # noqa: E402


def graph_of(model, tmp_path, targets=None, fold=True):
    path = M.save(model, tmp_path / "m.onnx")
    g = build_graph(model, path)
    targets = targets or [g.outputs[0]]
    g.pinned.update(targets)
    prune(g, targets)
    infer_shapes(g, model)
    if fold:
        fold_constants(g)
    return g


def ops(g):
    return [n.op for n in g.nodes]


def const(name, array):
    return h.make_node("Constant", [], [name], name=name, value=onnx.numpy_helper.from_array(np.asarray(array)))


# --- folding -------------------------------------------------------------------------------------


def test_flatten_by_shape_arithmetic_folds_to_a_constant(tmp_path):
    """``x.view(x.size(0), -1)`` as torch exports it: Shape, Gather, Unsqueeze, Concat, Reshape."""
    nodes = [h.make_node("GlobalAveragePool", ["image"], ["p"], name="gap"),
             h.make_node("Shape", ["p"], ["s"], name="shape"),
             const("zero", np.array(0, np.int64)),
             h.make_node("Gather", ["s", "zero"], ["n"], name="gather", axis=0),
             const("axes", np.array([0], np.int64)),
             h.make_node("Unsqueeze", ["n", "axes"], ["n1"], name="unsq"),
             const("minus", np.array([-1], np.int64)),
             h.make_node("Concat", ["n1", "minus"], ["target"], name="concat", axis=0),
             h.make_node("Reshape", ["p", "target"], ["out"], name="reshape")]
    g = graph_of(M.make_model(nodes, {}, opset=13), tmp_path)
    assert ops(g) == ["GlobalAveragePool", "Reshape"]
    np.testing.assert_array_equal(g.consts["target"], [1, -1])
    stages = convert(g)
    assert [s.type for s in stages] == ["adaptive_avg_pool", "flatten"]


def test_a_size_that_depends_on_the_input_is_not_folded(tmp_path):
    nodes = [h.make_node("Shape", ["image"], ["s"], name="shape"),
             h.make_node("Relu", ["image"], ["out"], name="relu")]
    g = graph_of(M.make_model(nodes, {}, output="s"), tmp_path, targets=["s"])
    assert "s" in g.size_dependent and "s" not in g.consts


def test_a_fixed_input_folds_its_shape(tmp_path):
    nodes = [h.make_node("Shape", ["image"], ["s"], name="shape"),
             h.make_node("ConstantOfShape", ["s"], ["z"], name="zeros"),
             h.make_node("Add", ["image", "z"], ["out"], name="add")]
    g = graph_of(M.make_model(nodes, {}, hw=(4, 6)), tmp_path)
    assert ops(g) == ["Add"] and g.consts["z"].shape == (1, 3, 4, 6)


def test_constant_of_a_huge_shape_is_refused(tmp_path):
    from poolcli.errors import ModelError

    nodes = [const("s", np.array([1, 2**20, 2**20], np.int64)),
             h.make_node("ConstantOfShape", ["s"], ["z"], name="zeros"),
             h.make_node("Add", ["image", "z"], ["out"], name="add")]
    with pytest.raises(ModelError, match="'zeros' \\(ConstantOfShape\\).*refused"):
        graph_of(M.make_model(nodes, {}), tmp_path)


# --- graph rewrites ------------------------------------------------------------------------------


def test_identity_and_dropout_go(tmp_path):
    nodes = [h.make_node("Identity", ["image"], ["a"], name="id"),
             h.make_node("Dropout", ["a"], ["b"], name="drop"),
             h.make_node("Relu", ["b"], ["out"], name="relu")]
    g = graph_of(M.make_model(nodes, {}), tmp_path)
    assert R.remove_identities(g) == 2
    assert ops(g) == ["Relu"] and g.nodes[0].inputs == ["image"]
    assert g.resolve("b") == "image"


def _conv_bn(extra_user=False, rng=np.random.default_rng(1)):
    nodes = [h.make_node("Conv", ["image", "w", "b"], ["c"], name="conv"),
             h.make_node("BatchNormalization", ["c", "g", "beta", "mean", "var"], ["out"], name="bn", epsilon=1e-3)]
    if extra_user:
        nodes += [h.make_node("Relu", ["c"], ["r"], name="other")]
    weights = {"w": M.rand(rng, 4, 3, 1, 1), "b": M.rand(rng, 4), "g": M.rand(rng, 4), "beta": M.rand(rng, 4),
               "mean": M.rand(rng, 4), "var": np.abs(M.rand(rng, 4)) + 0.1}
    return M.make_model(nodes, weights), weights


def test_batch_norm_folds_into_the_conv_before_it(tmp_path):
    model, w = _conv_bn()
    g = graph_of(model, tmp_path)
    assert R.fold_batch_norm(g) == 1
    assert ops(g) == ["Conv"] and g.nodes[0].outputs == ["out"]
    conv = g.nodes[0]
    x = np.random.default_rng(2).standard_normal((3, 5)).astype(np.float32)  # 5 pixels of a 1x1 conv
    before = w["w"][:, :, 0, 0] @ x + w["b"][:, None]
    expected = (before - w["mean"][:, None]) / np.sqrt(w["var"][:, None] + 1e-3) * w["g"][:, None] + w["beta"][:, None]
    folded = g.consts[conv.inputs[1]][:, :, 0, 0] @ x + g.consts[conv.inputs[2]][:, None]
    np.testing.assert_allclose(folded, expected, rtol=1e-5, atol=1e-5)


def test_batch_norm_stays_when_the_conv_output_has_another_user(tmp_path):
    model, _ = _conv_bn(extra_user=True)
    path = M.save(model, tmp_path / "m.onnx")
    g = build_graph(model, path)
    infer_shapes(g, model)
    assert R.fold_batch_norm(g) == 0
    assert "BatchNormalization" in ops(g)


def test_batch_norm_stays_when_the_conv_output_is_pinned(tmp_path):
    model, _ = _conv_bn()
    g = graph_of(model, tmp_path)
    g.pinned.add("c")
    assert R.fold_batch_norm(g) == 0


def test_x_times_sigmoid_x_is_one_silu(tmp_path):
    nodes = [h.make_node("Sigmoid", ["image"], ["s"], name="sig"),
             h.make_node("Mul", ["image", "s"], ["out"], name="mul")]
    g = graph_of(M.make_model(nodes, {}), tmp_path)
    assert R.fuse_self_gates(g) == 1
    assert [(n.op, n.attrs) for n in g.nodes] == [("Activation", {"fn": "silu"})]


def test_x_times_sigmoid_of_something_else_stays(tmp_path):
    nodes = [h.make_node("Relu", ["image"], ["r"], name="relu"),
             h.make_node("Sigmoid", ["r"], ["s"], name="sig"),
             h.make_node("Mul", ["image", "s"], ["out"], name="mul")]
    g = graph_of(M.make_model(nodes, {}), tmp_path)
    assert R.fuse_self_gates(g) == 0


def test_x_times_torch_hard_sigmoid_is_hard_swish_but_paddles_is_not(tmp_path):
    for alpha, fused in ((1 / 6, 1), (0.2, 0)):
        nodes = [h.make_node("HardSigmoid", ["image"], ["s"], name="hs", alpha=alpha),
                 h.make_node("Mul", ["s", "image"], ["out"], name="mul")]
        g = graph_of(M.make_model(nodes, {}), tmp_path)
        assert R.fuse_self_gates(g) == fused


@pytest.mark.parametrize("half_first", [False, True])
def test_erf_gelu_is_one_gelu(tmp_path, half_first):
    nodes = [const("sqrt2", np.array(2 ** 0.5, np.float32)), const("one", np.array(1, np.float32)),
             const("half", np.array(0.5, np.float32)),
             h.make_node("Div", ["image", "sqrt2"], ["d"], name="div"),
             h.make_node("Erf", ["d"], ["e"], name="erf"),
             h.make_node("Add", ["e", "one"], ["a"], name="add")]
    if half_first:
        nodes += [h.make_node("Mul", ["image", "half"], ["hx"], name="half_x"),
                  h.make_node("Mul", ["hx", "a"], ["out"], name="mul")]
    else:
        nodes += [h.make_node("Mul", ["image", "a"], ["m"], name="mul"),
                  h.make_node("Mul", ["m", "half"], ["out"], name="mul_half")]
    g = graph_of(M.make_model(nodes, {}), tmp_path)
    assert R.fuse_gelu(g) == 1
    assert [(n.op, n.attrs, n.inputs, n.outputs) for n in g.nodes] == [("Activation", {"fn": "gelu"}, ["image"], ["out"])]


def test_erf_with_other_constants_is_not_gelu(tmp_path):
    nodes = [const("two", np.array(2.0, np.float32)), const("one", np.array(1, np.float32)),
             const("half", np.array(0.5, np.float32)),
             h.make_node("Div", ["image", "two"], ["d"], name="div"),
             h.make_node("Erf", ["d"], ["e"], name="erf"),
             h.make_node("Add", ["e", "one"], ["a"], name="add"),
             h.make_node("Mul", ["image", "a"], ["m"], name="mul"),
             h.make_node("Mul", ["m", "half"], ["out"], name="mul_half")]
    g = graph_of(M.make_model(nodes, {}), tmp_path)
    assert R.fuse_gelu(g) == 0


def test_decomposed_layer_norm_is_one_layer_norm(tmp_path):
    rng = np.random.default_rng(0)
    nodes = [h.make_node("Transpose", ["image"], ["t"], name="to_nhwc", perm=[0, 2, 3, 1]),
             h.make_node("ReduceMean", ["t"], ["mu"], name="mean", axes=[-1]),
             h.make_node("Sub", ["t", "mu"], ["d"], name="sub"),
             const("two", np.array(2.0, np.float32)),
             h.make_node("Pow", ["d", "two"], ["p"], name="pow"),
             h.make_node("ReduceMean", ["p"], ["v"], name="var", axes=[-1]),
             const("eps", np.array(1e-6, np.float32)),
             h.make_node("Add", ["v", "eps"], ["ve"], name="add_eps"),
             h.make_node("Sqrt", ["ve"], ["s"], name="sqrt"),
             h.make_node("Div", ["d", "s"], ["n"], name="div"),
             h.make_node("Mul", ["n", "gamma"], ["nw"], name="mul_w"),
             h.make_node("Add", ["nw", "beta"], ["ln"], name="add_b"),
             h.make_node("Transpose", ["ln"], ["out"], name="to_nchw", perm=[0, 3, 1, 2])]
    g = graph_of(M.make_model(nodes, {"gamma": M.rand(rng, 3), "beta": M.rand(rng, 3)}, opset=13), tmp_path)
    assert R.fuse_layer_norm(g) == 1
    assert ops(g) == ["Transpose", "LayerNormalization", "Transpose"]
    assert g.nodes[1].attrs["epsilon"] == pytest.approx(1e-6)
    stages = convert(g)
    assert [s.type for s in stages] == ["layer_norm"]
    assert stages[0].inputs == ["image"] and g.resolve("out") == "ln"


# --- stage rewrites --------------------------------------------------------------------------------


def _stages(nodes, weights, tmp_path, hw=("H", "W")):
    g = graph_of(M.make_model(nodes, weights, hw=hw), tmp_path)
    for rewrite in R.GRAPH_REWRITES:
        rewrite(g)
    return convert(g), g


def test_residual_add_into_the_conv_before_it(tmp_path):
    rng = np.random.default_rng(0)
    nodes = [h.make_node("Conv", ["image", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             h.make_node("Add", ["c", "image"], ["a"], name="add"),
             h.make_node("Relu", ["a"], ["out"], name="relu")]
    stages, g = _stages(nodes, {"w": M.rand(rng, 3, 3, 3, 3)}, tmp_path)
    assert R.fuse_residual(stages, g) == 1 and R.fuse_activation(stages, g) == 1
    assert [(s.type, s.residual, s.params.get("activation"), s.output) for s in stages] == [("conv", "image", "relu", "out")]


def test_residual_not_fused_when_it_broadcasts(tmp_path):
    rng = np.random.default_rng(0)
    nodes = [h.make_node("Conv", ["image", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             h.make_node("GlobalAveragePool", ["image"], ["g"], name="gap"),
             h.make_node("Add", ["c", "g"], ["out"], name="add")]
    stages, g = _stages(nodes, {"w": M.rand(rng, 3, 3, 3, 3)}, tmp_path)
    assert R.fuse_residual(stages, g) == 0


def test_residual_not_fused_after_an_activation_or_with_another_user(tmp_path):
    rng = np.random.default_rng(0)
    nodes = [h.make_node("Conv", ["image", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             h.make_node("Relu", ["c"], ["r"], name="relu"),
             h.make_node("Add", ["r", "image"], ["a"], name="add"),
             h.make_node("Add", ["a", "c"], ["out"], name="add2")]
    stages, g = _stages(nodes, {"w": M.rand(rng, 3, 3, 3, 3)}, tmp_path)
    assert R.fuse_activation(stages, g) == 0  # the conv's output is read twice
    assert R.fuse_residual(stages, g) == 0


def test_channel_bias_add_into_the_conv(tmp_path):
    rng = np.random.default_rng(0)
    nodes = [h.make_node("Conv", ["image", "w", "b"], ["c"], name="conv"),
             h.make_node("Add", ["c", "bb"], ["out"], name="add")]
    w = {"w": M.rand(rng, 4, 3, 1, 1), "b": M.rand(rng, 4), "bb": M.rand(rng, 1, 4, 1, 1)}
    stages, g = _stages(nodes, w, tmp_path)
    assert R.fuse_affine(stages, g) == 1
    np.testing.assert_allclose(stages[0].params["bias"].array, w["b"] + w["bb"].reshape(-1))


def test_pool_then_flatten_is_a_global_pool(tmp_path):
    nodes = [h.make_node("GlobalMaxPool", ["image"], ["p"], name="gmp"),
             h.make_node("Flatten", ["p"], ["out"], name="flat")]
    stages, g = _stages(nodes, {}, tmp_path)
    assert R.merge_global_pool(stages, g) == 1
    assert [(s.type, s.params) for s in stages] == [("global_max_pool", {})]


def test_channels_last_matmul_is_a_1x1_conv(tmp_path):
    rng = np.random.default_rng(0)
    nodes = [h.make_node("Transpose", ["image"], ["t"], name="to_nhwc", perm=[0, 2, 3, 1]),
             h.make_node("MatMul", ["t", "w"], ["m"], name="linear"),
             h.make_node("Add", ["m", "b"], ["a"], name="bias"),
             h.make_node("Mul", ["a", "scale"], ["s"], name="scale"),
             h.make_node("Transpose", ["s"], ["out"], name="to_nchw", perm=[0, 3, 1, 2])]
    w = {"w": M.rand(rng, 3, 5), "b": M.rand(rng, 5), "scale": M.rand(rng, 5)}
    stages, g = _stages(nodes, w, tmp_path)
    assert [s.type for s in stages] == ["conv", "add", "mul"]
    np.testing.assert_array_equal(stages[0].params["filters"].array[:, :, 0, 0], w["w"].T)
    assert stages[2].params["value"].array.shape == (5, 1, 1)  # channels-last (5,) as a (C, 1, 1) map
    assert R.fuse_affine(stages, g) == 2  # the bias and the layer scale
    assert [s.type for s in stages] == ["conv"]
    np.testing.assert_allclose(stages[0].params["filters"].array[:, :, 0, 0], w["w"].T * w["scale"][:, None], rtol=1e-6)
    np.testing.assert_allclose(stages[0].params["bias"].array, w["b"] * w["scale"], rtol=1e-6)


def test_split_is_one_slice_per_output(tmp_path):
    rng = np.random.default_rng(0)
    nodes = [h.make_node("Conv", ["image", "w"], ["c"], name="conv"),
             const("sizes", np.array([2, 4], np.int64)),
             h.make_node("Split", ["c", "sizes"], ["a", "b"], name="split", axis=1),
             h.make_node("Concat", ["b", "a", "c"], ["out"], name="cat", axis=1)]
    stages, g = _stages(nodes, {"w": M.rand(rng, 6, 3, 1, 1)}, tmp_path)
    assert [(s.type, s.params) for s in stages[1:3]] == [("slice", {"start": 0, "end": 2}), ("slice", {"start": 2, "end": 6})]
    assert stages[3].type == "concat" and stages[3].inputs == ["b", "a", "c"]


# --- per-channel constants into the conv before them (compared with onnxruntime) ---------------------


def _imported(nodes, weights, tmp_path, hw=("H", "W"), sizes=((6, 8), (7, 5))):
    """The whole import of the graph, checked against onnxruntime at ``sizes``: its stages' types."""
    from poolcli.pipeline import Pipeline

    M.check_against_onnxruntime(M.make_model(nodes, weights, hw=hw), tmp_path, sizes)
    pipe = Pipeline.from_yaml(tmp_path / "out" / "pipeline.yaml")
    return [n.stage.type for n in pipe.nodes], (tmp_path / "out" / "pipeline.yaml").read_text()


def _stage_of(type_, value=None, layout_value=None):
    from poolcli.importer.ops import Stage, Weight

    params = {} if value is None else {"value": value if isinstance(value, float) else Weight(np.asarray(value, np.float32))}
    return Stage(type_, "s", ["x"], "y", params)


def test_per_channel_constant_reads_channels_only():
    c = np.arange(1, 5, dtype=np.float32)
    assert R._per_channel_constant(_stage_of("add", 2.5), "map").tolist() == [2.5]
    assert R._per_channel_constant(_stage_of("add", c.reshape(4, 1, 1)), "map").tolist() == [1, 2, 3, 4]
    assert R._per_channel_constant(_stage_of("add", c), "vec").tolist() == [1, 2, 3, 4]
    # ONNX (C,) against a map is (1, 1, C) here: along the width, whatever C and the width are
    assert R._per_channel_constant(_stage_of("add", c.reshape(1, 1, 4)), "map") is None
    assert R._per_channel_constant(_stage_of("add", c.reshape(1, 4, 1)), "map") is None  # along the height
    assert R._per_channel_constant(_stage_of("add", np.ones((4, 2, 1))), "map") is None
    assert R._per_channel_constant(_stage_of("add", np.ones((4, 1))), "vec") is None
    assert R._per_channel_constant(_stage_of("add"), "map") is None  # two maps: no constant


@pytest.mark.parametrize("op", ["Add", "Sub", "Mul", "Div"])
def test_per_channel_constant_folds_into_the_conv(tmp_path, op):
    rng = np.random.default_rng(3)
    c = M.rand(rng, 1, 4, 1, 1) + (2.0 if op == "Div" else 0.0)
    nodes = [h.make_node("Conv", ["image", "w", "b"], ["conv_out"], name="conv", pads=[1, 1, 1, 1]),
             h.make_node(op, ["conv_out", "c"], ["out"], name="op")]
    types, _ = _imported(nodes, {"w": M.rand(rng, 4, 3, 3, 3), "b": M.rand(rng, 4), "c": c}, tmp_path)
    assert types == ["conv"]


def test_scale_then_shift_then_activation_is_one_conv(tmp_path):
    """Conv (no bias), Mul (1, C, 1, 1), Add (C, 1, 1), Relu: one conv with a bias and relu."""
    rng = np.random.default_rng(4)
    nodes = [h.make_node("Conv", ["image", "w"], ["conv_out"], name="conv", strides=[2, 2]),
             h.make_node("Mul", ["conv_out", "s"], ["m"], name="scale"),
             h.make_node("Add", ["t", "m"], ["a"], name="shift"),  # the constant first
             h.make_node("Relu", ["a"], ["out"], name="relu")]
    weights = {"w": M.rand(rng, 5, 3, 2, 2), "s": M.rand(rng, 1, 5, 1, 1), "t": M.rand(rng, 5, 1, 1)}
    types, text = _imported(nodes, weights, tmp_path, sizes=((8, 8), (9, 6)))
    assert types == ["conv"] and "bias:" in text and "activation: relu" in text


@pytest.mark.parametrize("op", ["Add", "Mul"])
def test_a_constant_of_shape_c_is_along_the_width_even_where_the_width_is_c(tmp_path, op):
    """ONNX broadcasts a (C,) constant over a (N, C, H, W) map's last axis, the width. With a
    width of C it has as many numbers as the conv has outputs, but is no bias: it stays a
    stage, and the result is onnxruntime's."""
    rng = np.random.default_rng(5)
    nodes = [h.make_node("Conv", ["image", "w", "b"], ["conv_out"], name="conv"),
             h.make_node(op, ["conv_out", "c"], ["out"], name="op")]
    weights = {"w": M.rand(rng, 4, 3, 1, 1), "b": M.rand(rng, 4), "c": M.rand(rng, 4) + 1.0}
    types, _ = _imported(nodes, weights, tmp_path, hw=(5, 4), sizes=((5, 4),))
    assert types == ["conv", op.lower()]


def test_a_constant_of_shape_c_1_is_along_the_height_even_where_the_height_is_c(tmp_path):
    rng = np.random.default_rng(6)
    nodes = [h.make_node("Conv", ["image", "w", "b"], ["conv_out"], name="conv"),
             h.make_node("Add", ["conv_out", "c"], ["out"], name="op")]
    weights = {"w": M.rand(rng, 4, 3, 1, 1), "b": M.rand(rng, 4), "c": M.rand(rng, 4, 1)}
    types, _ = _imported(nodes, weights, tmp_path, hw=(4, 6), sizes=((4, 6),))
    assert types == ["conv", "add"]


def test_constant_not_folded_after_an_activation_or_into_a_conv_read_twice(tmp_path):
    rng = np.random.default_rng(7)
    nodes = [h.make_node("Conv", ["image", "w"], ["conv_out"], name="conv", pads=[1, 1, 1, 1]),
             h.make_node("Relu", ["conv_out"], ["r"], name="relu"),
             h.make_node("Mul", ["r", "s"], ["m"], name="after_relu"),
             h.make_node("Conv", ["m", "w2"], ["c2"], name="conv2"),
             h.make_node("Add", ["c2", "t"], ["a"], name="shift"),
             h.make_node("Add", ["a", "c2"], ["out"], name="reads_c2_again")]
    weights = {"w": M.rand(rng, 4, 3, 3, 3), "s": M.rand(rng, 4, 1, 1), "w2": M.rand(rng, 4, 4, 1, 1),
               "t": M.rand(rng, 4, 1, 1)}
    types, _ = _imported(nodes, weights, tmp_path)
    assert types.count("mul") == 1 and types.count("add") == 2


def test_division_by_a_zero_constant_is_not_folded(tmp_path):
    rng = np.random.default_rng(8)
    nodes = [h.make_node("Conv", ["image", "w"], ["c"], name="conv"),
             h.make_node("Div", ["c", "d"], ["out"], name="div")]
    d = np.array([1.0, 0.0, 2.0, 4.0], np.float32).reshape(4, 1, 1)
    stages, g = _stages(nodes, {"w": M.rand(rng, 4, 3, 1, 1), "d": d}, tmp_path)
    assert R.fuse_affine(stages, g) == 0 and [s.type for s in stages] == ["conv", "div"]


def test_vector_constants_fold_into_the_linear(tmp_path):
    """A Gemm head without bias, then Mul and Add by (D,) vectors: one linear."""
    rng = np.random.default_rng(9)
    nodes = [h.make_node("GlobalAveragePool", ["image"], ["p"], name="gap"),
             h.make_node("Flatten", ["p"], ["f"], name="flat"),
             h.make_node("Gemm", ["f", "w"], ["g"], name="fc", transB=1),
             h.make_node("Mul", ["g", "s"], ["m"], name="scale"),
             h.make_node("Add", ["m", "t"], ["out"], name="shift")]
    weights = {"w": M.rand(rng, 6, 3), "s": M.rand(rng, 6), "t": M.rand(rng, 6)}
    types, _ = _imported(nodes, weights, tmp_path)
    assert types == ["global_avg_pool", "linear"]


@pytest.mark.parametrize("groups", [1, 3])
def test_batch_norm_after_conv_transpose_folds_into_it(tmp_path, groups):
    rng = np.random.default_rng(10)
    nodes = [h.make_node("ConvTranspose", ["image", "tw", "tb"], ["t"], name="up", strides=[2, 2], pads=[1, 1, 1, 1],
                         output_padding=[1, 1], group=groups),
             h.make_node("BatchNormalization", ["t", "g", "beta", "mean", "var"], ["out"], name="bn", epsilon=1e-3)]
    weights = {"tw": M.rand(rng, 3, 6 // groups, 3, 3), "tb": M.rand(rng, 6), "g": M.rand(rng, 6) + 1,
               "beta": M.rand(rng, 6), "mean": M.rand(rng, 6), "var": np.abs(M.rand(rng, 6)) + 0.2}
    model = M.make_model(nodes, weights)
    g = graph_of(model, tmp_path)
    assert R.fold_batch_norm(g) == 1 and ops(g) == ["ConvTranspose"]
    from poolcli.pipeline import Pipeline

    M.check_against_onnxruntime(model, tmp_path, ((5, 7), (6, 6)))
    assert [n.stage.type for n in Pipeline.from_yaml(tmp_path / "out" / "pipeline.yaml").nodes] == ["conv_transpose"]


def test_paddles_conv_transpose_then_bias_add_then_batch_norm_is_one_stage(tmp_path):
    """paddle2onnx: ConvTranspose without bias, its bias as an Add of a (1, C, 1, 1) constant,
    then BatchNormalization, then Relu: one conv_transpose with bias and relu."""
    rng = np.random.default_rng(11)
    nodes = [h.make_node("ConvTranspose", ["image", "tw"], ["t"], name="up", strides=[2, 2], group=3),
             h.make_node("Add", ["t", "tb"], ["a"], name="bias"),
             h.make_node("BatchNormalization", ["a", "g", "beta", "mean", "var"], ["n"], name="bn"),
             h.make_node("Relu", ["n"], ["out"], name="relu")]
    weights = {"tw": M.rand(rng, 3, 2, 2, 2), "tb": M.rand(rng, 1, 6, 1, 1), "g": M.rand(rng, 6) + 1,
               "beta": M.rand(rng, 6), "mean": M.rand(rng, 6), "var": np.abs(M.rand(rng, 6)) + 0.2}
    types, text = _imported(nodes, weights, tmp_path)
    assert types == ["conv_transpose"] and "activation: relu" in text


def test_mul_into_a_grouped_conv_transpose(tmp_path):
    rng = np.random.default_rng(12)
    nodes = [h.make_node("ConvTranspose", ["image", "tw", "tb"], ["t"], name="up", strides=[2, 2], group=3),
             h.make_node("Mul", ["t", "s"], ["out"], name="scale")]
    weights = {"tw": M.rand(rng, 3, 2, 3, 3), "tb": M.rand(rng, 6), "s": M.rand(rng, 6, 1, 1)}
    types, _ = _imported(nodes, weights, tmp_path)
    assert types == ["conv_transpose"]


def test_unfolded_batch_norm_after_a_conv_with_another_reader_stays(tmp_path):
    rng = np.random.default_rng(13)
    nodes = [h.make_node("Conv", ["image", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             h.make_node("BatchNormalization", ["c", "g", "beta", "mean", "var"], ["n"], name="bn"),
             h.make_node("Add", ["n", "c"], ["out"], name="add")]
    weights = {"w": M.rand(rng, 4, 3, 3, 3), "g": M.rand(rng, 4), "beta": M.rand(rng, 4), "mean": M.rand(rng, 4),
               "var": np.abs(M.rand(rng, 4)) + 0.2}
    types, _ = _imported(nodes, weights, tmp_path)
    assert types == ["conv", "batch_norm", "add"]
