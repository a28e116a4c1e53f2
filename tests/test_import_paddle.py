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
