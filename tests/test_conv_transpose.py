"""conv_transpose against its definition (tests/naive.py), torch conv_transpose2d and onnxruntime
ConvTranspose: strides, asymmetric pads, output_padding, groups, dilation, 1x1 maps."""

import numpy as np
import pytest

import layers
import naive
from onnx_oracle import needs_onnx, run_node
from poolcli import Pipeline
from poolcli.errors import ConfigError, ShapeError
from torch_oracle import F, needs_torch, torch

CASES = [  # (C_in, O/groups, kernel, stride, padding, output_padding, dilation, groups, (H, W))
    (3, 2, (2, 2), 2, 0, 0, 1, 1, (5, 4)),
    (2, 3, (3, 3), 2, 1, 1, 1, 1, (4, 5)),
    (4, 1, (3, 2), (1, 2), (1, 0), (0, 1), 1, 2, (3, 3)),
    (2, 2, (3, 3), 3, [2, 1, 0, 3], 2, 1, 1, (2, 3)),
    (3, 2, (2, 3), 1, 0, 0, 2, 1, (4, 4)),
    (6, 2, (4, 4), 2, 1, 0, 1, 3, (1, 1)),
    (1, 1, (1, 1), 1, 0, 0, 1, 1, (1, 1)),
    (2, 4, (3, 3), 2, [0, 0, 2, 2], 1, 2, 2, (3, 2)),
]


def _stage(w, b, stride, padding, output_padding, dilation, groups):
    return layers.stage("conv_transpose", {"w": w, "b": b}, filters="w", bias="b", stride=stride, padding=padding,
                        output_padding=output_padding, dilation=dilation, groups=groups)


def _case(rng, c_in, per_group, kernel, groups, size):
    w = rng.standard_normal((c_in, per_group, *kernel)).astype(np.float32)
    b = rng.standard_normal(per_group * groups).astype(np.float32)
    x = rng.standard_normal((c_in, *size)).astype(np.float32)
    return w, b, x


@pytest.mark.parametrize("c_in, per_group, kernel, stride, padding, output_padding, dilation, groups, size", CASES)
def test_equals_naive(c_in, per_group, kernel, stride, padding, output_padding, dilation, groups, size, rng):
    w, b, x = _case(rng, c_in, per_group, kernel, groups, size)
    stage = _stage(w, b, stride, padding, output_padding, dilation, groups)
    want = naive.conv_transpose2d(x, w, b, stride, padding, output_padding, dilation, groups)
    assert stage.output_shape(x.shape) == want.shape
    np.testing.assert_allclose(stage(x), want, rtol=1e-5, atol=1e-5)


@needs_torch
@pytest.mark.parametrize("c_in, per_group, kernel, stride, padding, output_padding, dilation, groups, size",
                         [c for c in CASES if not (isinstance(c[4], list))])
def test_equals_torch(c_in, per_group, kernel, stride, padding, output_padding, dilation, groups, size, rng):
    w, b, x = _case(rng, c_in, per_group, kernel, groups, size)
    want = F.conv_transpose2d(torch.from_numpy(x)[None], torch.from_numpy(w), torch.from_numpy(b), stride=stride,
                              padding=padding, output_padding=output_padding, groups=groups, dilation=dilation)[0]
    np.testing.assert_allclose(_stage(w, b, stride, padding, output_padding, dilation, groups)(x), want.numpy(),
                               rtol=1e-5, atol=1e-5)


@needs_onnx
@pytest.mark.parametrize("c_in, per_group, kernel, stride, padding, output_padding, dilation, groups, size", CASES)
def test_equals_onnxruntime(c_in, per_group, kernel, stride, padding, output_padding, dilation, groups, size, rng):
    w, b, x = _case(rng, c_in, per_group, kernel, groups, size)
    pair = lambda v: [v, v] if isinstance(v, int) else list(v)  # noqa: E731
    pads = padding if isinstance(padding, list) else [*pair(padding), *pair(padding)]
    want = run_node("ConvTranspose", [x[None]], {"w": w, "b": b}, kernel_shape=list(kernel), strides=pair(stride),
                    pads=pads, output_padding=pair(output_padding), dilations=pair(dilation), group=groups)[0]
    np.testing.assert_allclose(_stage(w, b, stride, padding, output_padding, dilation, groups)(x), want,
                               rtol=1e-5, atol=1e-5)


def test_errors():
    w = [[[[1.0, 2.0]]]]
    with pytest.raises(ConfigError, match=r"output_padding must be smaller than the stride or the dilation, got 1 "
                                          r"along h for stride 1 and dilation 1"):
        Pipeline.from_config({"stages": [{"type": "conv_transpose", "filters": w, "output_padding": 1}]})
    with pytest.raises(ConfigError, match=r"filters: filters must have shape \(C_in, O/groups, kh, kw\)"):
        Pipeline.from_config({"stages": [{"type": "conv_transpose", "filters": [[1.0]]}]})
    with pytest.raises(ConfigError, match=r"bias has 2 values, the weights give 1 output channels"):
        Pipeline.from_config({"stages": [{"type": "conv_transpose", "filters": w, "bias": [1, 2]}]})
    with pytest.raises(ConfigError, match=r"groups 2 must divide the weights' 1 input channels"):
        Pipeline.from_config({"stages": [{"type": "conv_transpose", "filters": w, "groups": 2}]})
    pipe = Pipeline.from_config({"input": {"color": "gray"}, "stages": [
        {"type": "conv_transpose", "filters": w, "padding": [0, 3, 0, 3]}]})
    with pytest.raises(ShapeError, match=r"crops away the whole output of a 4x4 map"):
        pipe.trace((1, 4, 4))
    with pytest.raises(ShapeError, match=r"the weights take 1 input channels, the map has 3"):
        pipe.trace((3, 4, 4))
