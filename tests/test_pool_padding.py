"""max_pool and avg_pool with ONNX's padding: four numbers [top, left, bottom, right] and
same_upper / same_lower, against tests/naive.py and onnxruntime MaxPool / AveragePool."""

import numpy as np
import pytest

import layers
import naive
from onnx_oracle import needs_onnx, run_node
from poolcli import Pipeline
from poolcli.errors import ConfigError

CASES = [  # (kernel, stride, padding, ceil_mode, size)
    (3, 2, [1, 0, 0, 1], False, (7, 8)), (3, 2, [0, 1, 2, 1], True, (7, 8)), (2, 1, [0, 0, 1, 1], False, (5, 4)),
    ((3, 2), (2, 1), [2, 1, 0, 0], False, (6, 5)), (5, 1, [2, 2, 2, 2], False, (9, 7)), (2, 2, [1, 1, 1, 1], True, (1, 1)),
    (3, 2, "same_upper", False, (7, 8)), (3, 2, "same_lower", False, (7, 8)), (2, 2, "same_upper", False, (5, 5)),
    (4, 3, "same_lower", False, (10, 1)), (2, 1, "same_upper", False, (3, 4)),
]


def _onnx_pads(padding, kernel, stride, size):
    if isinstance(padding, list):
        return padding
    kernel = (kernel, kernel) if isinstance(kernel, int) else kernel
    stride = (stride, stride) if isinstance(stride, int) else stride
    heads, tails = [], []
    for n, k, s in zip(size, kernel, stride):
        out = -(-n // s)
        total = max(0, (out - 1) * s + k - n)
        head = total // 2 if padding == "same_upper" else total - total // 2
        heads.append(head)
        tails.append(total - head)
    return [*heads, *tails]


@pytest.mark.parametrize("kind", ["max", "avg_in", "avg_pad"])
@pytest.mark.parametrize("kernel, stride, padding, ceil_mode, size", CASES)
def test_equals_naive(kind, kernel, stride, padding, ceil_mode, size, rng):
    x = rng.standard_normal((3, *size)).astype(np.float32)
    params = {"kernel_size": kernel, "stride": stride, "padding": padding, "ceil_mode": ceil_mode}
    if kind == "max":
        stage = layers.stage("max_pool", **params)
    else:
        stage = layers.stage("avg_pool", count_include_pad=kind == "avg_pad", **params)
    want = naive.onnx_pool(x, kind[:3], kernel, stride, _onnx_pads(padding, kernel, stride, size),
                           ceil_mode and not isinstance(padding, str), kind == "avg_pad")
    y = stage(x)
    assert y.shape == stage.output_shape(x.shape) == want.shape
    np.testing.assert_allclose(y, want, rtol=1e-6, atol=1e-6)


@needs_onnx
@pytest.mark.parametrize("kind", ["max", "avg_in", "avg_pad"])
@pytest.mark.parametrize("kernel, stride, padding, ceil_mode, size", [c for c in CASES if c[4] != (1, 1)])
def test_equals_onnxruntime(kind, kernel, stride, padding, ceil_mode, size, rng):
    x = rng.standard_normal((3, *size)).astype(np.float32)
    k = [kernel, kernel] if isinstance(kernel, int) else list(kernel)
    s = [stride, stride] if isinstance(stride, int) else list(stride)
    attributes = {"auto_pad": padding.upper()} if isinstance(padding, str) else {"pads": padding,
                                                                                 "ceil_mode": int(ceil_mode)}
    params = {"kernel_size": kernel, "stride": stride, "padding": padding, "ceil_mode": ceil_mode}
    if kind == "max":
        want = run_node("MaxPool", [x[None]], kernel_shape=k, strides=s, **attributes)[0]
        stage = layers.stage("max_pool", **params)
    else:
        want = run_node("AveragePool", [x[None]], kernel_shape=k, strides=s, count_include_pad=int(kind == "avg_pad"),
                        **attributes)[0]
        stage = layers.stage("avg_pool", count_include_pad=kind == "avg_pad", **params)
    np.testing.assert_allclose(stage(x), want, rtol=1e-6, atol=1e-6)


def test_symmetric_four_numbers_equal_the_pair(rng):
    x = rng.standard_normal((2, 9, 8)).astype(np.float32)
    for kind in ("max_pool", "avg_pool"):
        a = layers.stage(kind, kernel_size=3, stride=2, padding=[1, 0, 1, 0])(x)
        np.testing.assert_array_equal(a, layers.stage(kind, kernel_size=3, stride=2, padding=[1, 0])(x))


def test_errors():
    with pytest.raises(ConfigError, match=r"padding must be smaller than the \(dilated\) kernel on each side, got 3 for a "
                                          r"kernel of 3 along w"):
        Pipeline.from_config({"stages": [{"type": "max_pool", "kernel_size": 3, "padding": [0, 3, 0, 0]}]})
    with pytest.raises(ConfigError, match=r"padding: must be an integer, a pair \[ph, pw\], four numbers .* or one of "
                                          r"'same_upper', 'same_lower', got 'same'"):
        Pipeline.from_config({"stages": [{"type": "avg_pool", "kernel_size": 3, "padding": "same"}]})
