"""The resize stage: ONNX Resize, against a naive loop over its definition and onnxruntime
single-node graphs, over every coordinate and rounding mode, sizes and scales, up and down."""

import itertools

import numpy as np
import pytest

import layers
import naive
from onnx_oracle import needs_onnx, run_node
from poolcli import Pipeline
from poolcli.errors import ConfigError, ShapeError

COORDINATE_MODES = ["half_pixel", "asymmetric", "align_corners", "pytorch_half_pixel", "half_pixel_symmetric",
                    "tf_half_pixel_for_nn"]
NEAREST_MODES = ["round_prefer_floor", "round_prefer_ceil", "floor", "ceil"]
# (input H, W, and the resize: ("scale", sh, sw) or ("size", H, W))
GEOMETRIES = [
    ((5, 4), ("scale", 2.0, 2.0)), ((3, 7), ("scale", 1.5, 0.5)), ((8, 9), ("scale", 0.25, 3.0)),
    ((1, 1), ("scale", 3.0, 2.0)), ((6, 5), ("size", 13, 3)), ((4, 4), ("size", 1, 1)), ((7, 3), ("size", 7, 10)),
    ((5, 6), ("scale", 0.6, 1.7)),
]


def _stage(geometry, **params):
    kind, a, b = geometry
    return layers.stage("resize", **({"scale_factor": [a, b]} if kind == "scale" else {"size": [a, b]}), **params)


def _scales(stage, shape):
    return stage._scales(*shape[1:])


CASES = [("nearest", c, n) for c, n in itertools.product(COORDINATE_MODES, NEAREST_MODES)] + \
        [("linear", c, "round_prefer_floor") for c in COORDINATE_MODES]


@pytest.mark.parametrize("mode, coordinate_mode, nearest_mode", CASES)
@pytest.mark.parametrize("size, geometry", GEOMETRIES)
def test_equals_naive(mode, coordinate_mode, nearest_mode, size, geometry, rng):
    x = rng.standard_normal((2, *size)).astype(np.float32)
    stage = _stage(geometry, mode=mode, coordinate_mode=coordinate_mode, nearest_mode=nearest_mode)
    y = stage(x)
    assert y.shape == stage.output_shape(x.shape)
    want = naive.resize(x, y.shape[1:], _scales(stage, x.shape), mode, coordinate_mode, nearest_mode)
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-6)


@needs_onnx
@pytest.mark.parametrize("mode, coordinate_mode, nearest_mode", CASES)
@pytest.mark.parametrize("size, geometry", GEOMETRIES)
def test_equals_onnxruntime(mode, coordinate_mode, nearest_mode, size, geometry, rng):
    x = rng.standard_normal((3, *size)).astype(np.float32)
    kind, a, b = geometry
    if kind == "scale":
        inputs = {"roi": None, "scales": np.array([1, 1, a, b], np.float32)}
    else:
        inputs = {"roi": None, "scales": None, "sizes": np.array([1, 3, a, b], np.int64)}
    opset = 19 if coordinate_mode == "half_pixel_symmetric" else 13
    want = run_node("Resize", [x[None]], inputs, opset=opset, mode=mode, coordinate_transformation_mode=coordinate_mode,
                    nearest_mode=nearest_mode)[0]
    got = _stage(geometry, mode=mode, coordinate_mode=coordinate_mode, nearest_mode=nearest_mode)(x)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@needs_onnx
def test_paddle_style_asymmetric_floor_and_yolo_style_nearest_on_a_large_map(rng):
    x = rng.standard_normal((16, 40, 33)).astype(np.float32)
    scales = {"roi": None, "scales": np.array([1, 1, 2, 2], np.float32)}
    for params, attributes in [
        ({"coordinate_mode": "asymmetric", "nearest_mode": "floor"},
         {"coordinate_transformation_mode": "asymmetric", "nearest_mode": "floor"}),
        ({}, {}),
    ]:
        want = run_node("Resize", [x[None]], scales, opset=13, mode="nearest", **attributes)[0]
        np.testing.assert_array_equal(layers.stage("resize", scale_factor=2, **params)(x), want)


def test_nearest_2x_asymmetric_floor_repeats_each_pixel(rng):
    x = rng.standard_normal((2, 3, 5)).astype(np.float32)
    y = layers.stage("resize", scale_factor=2, coordinate_mode="asymmetric", nearest_mode="floor")(x)
    np.testing.assert_array_equal(y, x.repeat(2, axis=1).repeat(2, axis=2))


def test_errors():
    with pytest.raises(ConfigError, match=r"stages\[0\] \(resize\): give exactly one of size or scale_factor"):
        Pipeline.from_config({"stages": [{"type": "resize"}]})
    with pytest.raises(ConfigError, match=r"coordinate_mode: must be one of 'half_pixel'"):
        Pipeline.from_config({"stages": [{"type": "resize", "size": 4, "coordinate_mode": "tf_crop_and_resize"}]})
    with pytest.raises(ConfigError, match=r"mode: must be one of 'nearest' or 'linear', got 'cubic'"):
        Pipeline.from_config({"stages": [{"type": "resize", "size": 4, "mode": "cubic"}]})
    pipe = Pipeline.from_config({"stages": [{"type": "resize", "scale_factor": 0.1}]})
    with pytest.raises(ShapeError, match=r"scale_factor \[0.1, 0.1\] gives an empty output for a 5x20 map"):
        pipe.trace((3, 5, 20))
