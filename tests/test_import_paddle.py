"""A model written by paddle2onnx 2.1.0 (paddlepaddle 3.3.1), not by torch: an OCR-style
MobileNetV3 block and DB-style neck with random weights, kept in tests/data (78 KB) because
paddle is not a test dependency. What paddle2onnx writes and torch does not: BatchNormalization
left unfolded (after a ConvTranspose), HardSigmoid with alpha 0.2 in a squeeze-excitation gate,
hard swish as ``x * HardSigmoid(x)``, Clip with constant min/max inputs, Resize to sizes
computed by shape arithmetic, nearest with asymmetric coordinates and floor rounding, a
ConvTranspose bias as a separate Add, Identity nodes.

Made with ``paddle.onnx.export(net, path, input_spec=[InputSpec([1, 3, 64, 64], "float32",
"x")], opset_version=13)`` of::

    stem = ConvBN(3, 16, 3, stride 2, hardswish); dw = ConvBN(16, 16, 3, groups 16, relu)
    se = x * hardsigmoid(conv(relu(conv(avgpool(x)))), slope=0.2, offset=0.5)
    pw = ConvBN(16, 24, 1); down = ConvBN(24, 32, 3, stride 2, hardswish)
    u = relu(bn(Conv2DTranspose(32, 24, 2, stride 2)(down)))
    n = interpolate(down, size=[32, 32], mode="nearest")
    out = interpolate(clip(conv3x3(concat([u, pw, n])), 0, 6), size=[64, 64], mode="bilinear")
"""

from pathlib import Path

import numpy as np
import pytest

from tests import onnx_models as M

M.onnx()
M.ort()

MODEL = Path(__file__).parent / "data" / "paddle_ocr_like.onnx"


def test_paddle2onnx_model_matches_onnxruntime(tmp_path):
    pipe = M.check_against_onnxruntime(MODEL.read_bytes(), tmp_path, ((64, 64),))
    text = (tmp_path / "out" / "pipeline.yaml").read_text()
    # Every BatchNormalization folds: after a Conv at once, after the ConvTranspose once its
    # separate bias Add has gone into the ConvTranspose's bias.
    assert "type: batch_norm" not in text and "type: add" not in text
    transposed = next(line for line in text.splitlines() if "type: conv_transpose" in line)
    assert "bias: " in transposed and "activation: relu" in transposed
    assert "activation: {fn: hard_sigmoid, alpha: 0.2, beta: 0.5}" in text and "activation: hard_swish" in text
    assert "{fn: clip, min: 0.0, max: 6.0}" in text
    assert "coordinate_mode: asymmetric, nearest_mode: floor" in text
    assert "resize: {size: [64, 64]}" in text
    assert pipe.kind == "maps"


def test_paddle2onnx_model_on_a_photograph(tmp_path):
    """A real image (sample_images/astronaut.jpg, resized as the pipeline says) instead of noise."""
    import poolcli

    pipe = M.import_bytes(MODEL.read_bytes(), tmp_path)
    image = poolcli.load_image(Path(__file__).parent.parent / "sample_images" / "astronaut.jpg", pipe.config.input)
    M.assert_close(pipe(image), M.run_onnxruntime(MODEL.read_bytes(), image), "astronaut.jpg")


# --- the same idioms as onnx.helper graphs, at opsets 13 and 17 ---------------------------------------


def paddle_style(opset: int, rng):
    """An OCR-style block and neck as paddle2onnx writes them, node by node: BatchNormalization
    left unfolded, hard swish (``x * HardSigmoid(x)`` with alpha 1/6 below opset 14, the
    HardSwish op above), a squeeze-excitation gate with paddle's HardSigmoid (alpha 0.2) and
    conv biases as separate Adds of reshaped constants, relu6 as Clip with constant min/max
    inputs, a ConvTranspose with output_padding and its bias as an Add then BatchNormalization,
    nearest Resize by scales with asymmetric coordinates and floor rounding, Concat, and a
    bilinear Resize by scales back to the input size."""
    o = M.onnx()
    h = o.helper

    def const(name, array):
        return h.make_node("Constant", [], [name], name=name, value=o.numpy_helper.from_array(np.asarray(array)))

    w, nodes = {}, []

    def bn(x, out, c, name):
        for p in "gbmv":
            w[f"{name}.{p}"] = np.abs(M.rand(rng, c)) + 0.5 if p in "gv" else M.rand(rng, c, scale=0.1)
        nodes.append(h.make_node("BatchNormalization", [x, *(f"{name}.{p}" for p in "gbmv")], [out], name=name,
                                 epsilon=1e-5, momentum=0.9))

    def conv(x, out, c_in, c_out, k, name, stride=1, groups=1, bias_add=False):
        w[f"{name}.w"] = M.rand(rng, c_out, c_in // groups, k, k, scale=(2 / (c_in // groups * k * k)) ** 0.5)
        nodes.append(h.make_node("Conv", [x, f"{name}.w"], [out + ("/conv" if bias_add else "")], name=name,
                                 pads=[k // 2] * 4, strides=[stride, stride], group=groups, dilations=[1, 1],
                                 kernel_shape=[k, k]))
        if bias_add:  # paddle2onnx: the bias reshaped to (1, C, 1, 1) and added
            w[f"{name}.b"] = M.rand(rng, c_out, scale=0.1)
            w[f"{name}.shape"] = np.array([1, c_out, 1, 1], np.int64)
            nodes.extend([h.make_node("Reshape", [f"{name}.b", f"{name}.shape"], [f"{name}.b4"], name=f"{name}.reshape"),
                          h.make_node("Add", [out + "/conv", f"{name}.b4"], [out], name=f"{name}.add")])

    def hard_swish(x, out, name):
        if opset >= 14:
            nodes.append(h.make_node("HardSwish", [x], [out], name=name))
        else:
            nodes.extend([h.make_node("HardSigmoid", [x], [f"{name}.gate"], name=f"{name}.hs", alpha=1 / 6, beta=0.5),
                          h.make_node("Mul", [f"{name}.gate", x], [out], name=name)])

    conv("image", "c0", 3, 16, 3, "stem", stride=2)
    bn("c0", "b0", 16, "stem.bn")
    hard_swish("b0", "x0", "stem.act")
    conv("x0", "c1", 16, 16, 3, "dw", groups=16)
    bn("c1", "b1", 16, "dw.bn")
    nodes.append(h.make_node("Relu", ["b1"], ["x1"], name="dw.relu"))
    nodes.append(h.make_node("GlobalAveragePool", ["x1"], ["se.pool"], name="se.pool"))
    conv("se.pool", "se.c1", 16, 4, 1, "se.conv1", bias_add=True)
    nodes.append(h.make_node("Relu", ["se.c1"], ["se.r"], name="se.relu"))
    conv("se.r", "se.c2", 4, 16, 1, "se.conv2", bias_add=True)
    nodes.append(h.make_node("HardSigmoid", ["se.c2"], ["se.gate"], name="se.hardsigmoid", alpha=0.2, beta=0.5))
    nodes.append(h.make_node("Mul", ["x1", "se.gate"], ["x2"], name="se.mul"))
    conv("x2", "c3", 16, 24, 1, "pw")
    bn("c3", "p", 24, "pw.bn")
    conv("p", "c4", 24, 32, 3, "down", stride=2)
    bn("c4", "b4", 32, "down.bn")
    nodes += [const("six", np.array(6.0, np.float32)), const("zero", np.array(0.0, np.float32)),
              h.make_node("Clip", ["b4", "zero", "six"], ["d"], name="down.relu6")]
    w["up.w"] = M.rand(rng, 32, 24, 3, 3, scale=0.1)
    nodes.append(h.make_node("ConvTranspose", ["d", "up.w"], ["t"], name="up", strides=[2, 2], pads=[1, 1, 1, 1],
                             output_padding=[1, 1], kernel_shape=[3, 3]))
    w["up.b"] = M.rand(rng, 1, 24, 1, 1, scale=0.1)
    nodes.append(h.make_node("Add", ["t", "up.b"], ["tb"], name="up.bias"))
    bn("tb", "tn", 24, "up.bn")
    nodes.append(h.make_node("Relu", ["tn"], ["u"], name="up.relu"))
    nodes += [const("roi", np.array([], np.float32)), const("x2scales", np.array([1, 1, 2, 2], np.float32)),
              h.make_node("Resize", ["d", "roi", "x2scales"], ["n"], name="nearest", mode="nearest",
                          coordinate_transformation_mode="asymmetric", nearest_mode="floor"),
              h.make_node("Concat", ["u", "p", "n"], ["cat"], name="concat", axis=1)]
    conv("cat", "head", 24 + 24 + 32, 8, 3, "head", bias_add=True)
    nodes += [h.make_node("Clip", ["head", "zero", "six"], ["hc"], name="head.clip"),
              h.make_node("Resize", ["hc", "roi", "x2scales"], ["out"], name="bilinear", mode="linear",
                          coordinate_transformation_mode="half_pixel")]
    return M.make_model(nodes, w, opset=opset)


@pytest.mark.parametrize("opset", [13, 17])
def test_paddle_style_graph_matches_onnxruntime(tmp_path, opset):
    model = paddle_style(opset, np.random.default_rng(opset))
    pipe = M.check_against_onnxruntime(model, tmp_path, ((64, 64), (48, 80)))
    text = (tmp_path / "out" / "pipeline.yaml").read_text()
    assert "type: batch_norm" not in text  # after each Conv, and after the ConvTranspose and its bias Add
    assert "activation: {fn: hard_sigmoid, alpha: 0.2, beta: 0.5}" in text and "activation: hard_swish" in text
    assert "{fn: clip, min: 0.0, max: 6.0}" in text and "type: conv_transpose" in text
    assert "coordinate_mode: asymmetric, nearest_mode: floor" in text and "mode: linear" in text
    assert "type: add" not in text  # every bias Add into its conv
    assert pipe.kind == "maps"
