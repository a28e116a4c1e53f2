"""Channels-last maps between the convs of mobile blocks: the depthwise conv on pixels, the 1x1
convs that read and write pixel rows, the squeeze-excitation's mean, and the pipeline handing
such maps only to the stages that take them; each against the naive loops, and a whole block
against the same pipeline with plain maps and against torch."""

import numpy as np
import pytest

from naive import activation as naive_activation
from naive import conv2d as naive_conv2d
from poolcli import Pipeline
from poolcli.kernels import channels_last as layout
from poolcli.kernels import conv as kernels
from poolcli.stages.elementwise import Activation
from torch_oracle import F, needs_torch, run


def _pixels_of(x: np.ndarray) -> np.ndarray:
    """``x`` (C, H, W) laid out channels-last: the same values, a view of an (H, W, C) array."""
    return layout.as_map(np.ascontiguousarray(x.transpose(1, 2, 0)))


def _activation(fn: str, **arguments):
    stage = Activation(fn=fn, **arguments)
    return stage.kernel_arguments, stage


def test_the_layout_is_told_apart():
    x = np.random.default_rng(0).standard_normal((5, 4, 3)).astype(np.float32)
    assert not layout.is_channels_last(x)
    assert layout.is_channels_last(_pixels_of(x))
    np.testing.assert_array_equal(_pixels_of(x), x)
    assert not layout.is_channels_last(_pixels_of(x[:1]))  # one channel: plain either way
    assert not layout.is_channels_last(x.transpose(0, 2, 1))  # another view is not


@pytest.mark.parametrize("kernel, stride, dilation, pads, fn", [
    (3, 1, 1, (1, 1, 1, 1), "clip"), (3, 2, 1, (1, 1, 1, 1), "relu"), (3, 2, 1, (0, 1, 0, 1), "hard_swish"),
    (5, 1, 1, (2, 2, 2, 2), "silu"), (5, 2, 1, (2, 2, 2, 2), "none"), (7, 1, 1, (3, 3, 3, 3), "none"),
    (3, 1, 2, (2, 2, 2, 2), "relu"), ((2, 4), (1, 2), 1, (0, 1, 2, 1), "none"), (3, 1, 1, (0, 0, 0, 0), "none"),
])
def test_the_depthwise_conv_on_pixels_is_the_naive_conv(kernel, stride, dilation, pads, fn):
    """Every output channel from its own input channel, with the taps outside the map left out
    (zero padding), the bias and the activation: the naive grouped conv, on maps whose borders
    take the per-tap path and whose inside takes the one-expression path."""
    rng = np.random.default_rng(1)
    kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
    channels, h, w = 37, 11, 13  # not a multiple of the vector width
    x = rng.standard_normal((channels, h, w)).astype(np.float32)
    weight = rng.standard_normal((channels, 1, kh, kw)).astype(np.float32)
    bias = rng.standard_normal(channels).astype(np.float32)
    stride = (stride, stride) if isinstance(stride, int) else stride
    padded = np.pad(x, ((0, 0), (pads[0], pads[1]), (pads[2], pads[3])))
    expected = naive_conv2d(padded, weight, bias, stride=stride, dilation=dilation, groups=channels)
    arguments, stage = _activation(fn)
    expected = naive_activation(expected, fn) if fn != "none" else expected
    prepared = kernels.prepare(weight, bias, channels, pads, "depthwise")
    out = kernels.convolve(_pixels_of(x), prepared, pads, "zeros", stride, (dilation, dilation), expected.shape[1:],
                           activation=arguments)
    assert layout.is_channels_last(out) and out.shape == expected.shape
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


def test_a_depthwise_conv_of_other_padding_or_with_a_residual_reads_a_plain_copy():
    """Reflect padding and a residual are the per-channel kernel's: the channels-last map is
    copied into a plain one, and the result is plain and right."""
    rng = np.random.default_rng(2)
    x = rng.standard_normal((8, 9, 10)).astype(np.float32)
    weight = rng.standard_normal((8, 1, 3, 3)).astype(np.float32)
    residual = rng.standard_normal((8, 9, 10)).astype(np.float32)
    prepared = kernels.prepare(weight, None, 8, (1, 1, 1, 1), "depthwise")
    reflect = kernels.convolve(_pixels_of(x), prepared, (1, 1, 1, 1), "reflect", (1, 1), (1, 1), (9, 10))
    expected = naive_conv2d(np.pad(x, ((0, 0), (1, 1), (1, 1)), mode="reflect"), weight, groups=8)
    assert reflect.flags.c_contiguous
    np.testing.assert_allclose(reflect, expected, rtol=1e-5, atol=1e-5)
    added = kernels.convolve(_pixels_of(x), prepared, (1, 1, 1, 1), "zeros", (1, 1), (1, 1), (9, 10), residual=residual)
    expected = naive_conv2d(np.pad(x, ((0, 0), (1, 1), (1, 1))), weight, groups=8) + residual
    np.testing.assert_allclose(added, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("out_c, channels, size", [(96, 16, (30, 31)), (24, 144, (28, 28)), (300, 40, (9, 7)),
                                                   (16, 300, (20, 20))])
@pytest.mark.parametrize("source", ["plain", "pixels"])
@pytest.mark.parametrize("residual", [False, True])
def test_1x1_convs_read_and_write_pixel_rows(out_c, channels, size, source, residual):
    """A 1x1 conv of a plain or channels-last map, into a plain map or pixel rows, with a bias, a
    residual (of the output's layout) and an activation: the naive conv each way. The shapes
    cover one task, several tiles, and the channel split of few tiles on many channels."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((channels, *size)).astype(np.float32)
    weight = rng.standard_normal((out_c, channels, 1, 1)).astype(np.float32)
    bias = rng.standard_normal(out_c).astype(np.float32)
    extra = rng.standard_normal((out_c, *size)).astype(np.float32)
    expected = naive_activation(naive_conv2d(x, weight, bias) + (extra if residual else 0), "clip", min=0.0, max=6.0)
    arguments, _ = _activation("clip", min=0, max=6)
    prepared = kernels.prepare(weight, bias, 1, (0, 0, 0, 0), "pointwise")
    given = _pixels_of(x) if source == "pixels" else x
    plain = kernels.convolve(given, prepared, (0, 0, 0, 0), "zeros", (1, 1), (1, 1), size,
                             residual=extra if residual else None, activation=arguments, threads=2)
    rows = kernels.convolve(given, prepared, (0, 0, 0, 0), "zeros", (1, 1), (1, 1), size,
                            residual=_pixels_of(extra) if residual else None, activation=arguments, threads=2,
                            to_pixels=True)
    assert plain.flags.c_contiguous and layout.is_channels_last(rows)
    np.testing.assert_allclose(plain, expected, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(rows, expected, rtol=1e-4, atol=1e-4)


def test_a_plain_residual_keeps_the_output_plain():
    """Pixel rows are asked for, but the residual is a plain map: the output is plain (the
    epilogue adds the residual where it lies), and right."""
    rng = np.random.default_rng(4)
    x = _pixels_of(rng.standard_normal((32, 16, 16)).astype(np.float32))
    weight = rng.standard_normal((48, 32, 1, 1)).astype(np.float32)
    extra = rng.standard_normal((48, 16, 16)).astype(np.float32)
    prepared = kernels.prepare(weight, None, 1, (0, 0, 0, 0), "pointwise")
    out = kernels.convolve(x, prepared, (0, 0, 0, 0), "zeros", (1, 1), (1, 1), (16, 16), residual=extra, threads=2,
                           to_pixels=True)
    assert out.flags.c_contiguous
    np.testing.assert_allclose(out, naive_conv2d(np.asarray(x), weight) + extra, rtol=1e-4, atol=1e-4)


def test_the_mean_of_pixels_is_the_mean_of_each_channel():
    rng = np.random.default_rng(5)
    x = (rng.standard_normal((40, 37, 29)) * 100 + 1000).astype(np.float32)  # a large mean: float32 sums drift
    mean = layout.mean_pixels(np.ascontiguousarray(x.transpose(1, 2, 0)))
    assert mean.shape == (40, 1, 1)
    np.testing.assert_allclose(mean[:, 0, 0], x.astype(np.float64).mean(axis=(1, 2)), rtol=1e-6)


def test_an_activation_in_place_on_pixels_changes_the_map_itself():
    x = _pixels_of(np.random.default_rng(6).standard_normal((6, 5, 4)).astype(np.float32))
    expected = np.maximum(np.asarray(x), 0)
    out = Activation(fn="relu").apply(x, inplace=True)
    assert out is x
    np.testing.assert_array_equal(x, expected)


# --- in a pipeline ------------------------------------------------------------------------------


def _mobile_block(tmp_path, residual=True):
    """A stem conv, then an inverted residual block with squeeze-excitation (MobileNetV3's): 1x1
    expansion, depthwise 3x3, global mean, two 1x1 convs on it, the gate's product, 1x1
    projection with the block's input added; then a global mean, as a descriptor."""
    rng = np.random.default_rng(7)
    tensors = {"stem": (16, 3, 3, 3), "expand": (64, 16, 1, 1), "dw": (64, 1, 3, 3), "fc1": (16, 64, 1, 1),
               "fc2": (64, 16, 1, 1), "project": (16, 64, 1, 1)}
    for name, shape in tensors.items():
        np.save(tmp_path / f"{name}.npy", (rng.standard_normal(shape) / np.sqrt(np.prod(shape[1:]))).astype(np.float32))
        np.save(tmp_path / f"{name}.bias.npy", rng.standard_normal(shape[0]).astype(np.float32) * 0.1)

    def conv(name, **more):
        return {"type": "conv", "name": name, "filters": str(tmp_path / f"{name}.npy"),
                "bias": str(tmp_path / f"{name}.bias.npy"), **more}

    stages = [conv("stem", stride=2, padding=1, activation="hard_swish"), conv("expand", activation="relu"),
              conv("dw", padding=1, groups=64, activation="hard_swish"),
              {"type": "adaptive_avg_pool", "name": "squeeze", "output_size": 1},
              conv("fc1", activation="relu"), conv("fc2", activation={"fn": "hard_sigmoid", "alpha": 1 / 6, "beta": 0.5}),
              {"type": "mul", "name": "gate", "from": ["dw", "fc2"]},
              conv("project", **({"residual": "stem"} if residual else {})),
              {"type": "global_avg_pool", "name": "pooled"}]
    return {"stages": stages}, {name: np.load(tmp_path / f"{name}.npy") for name in tensors}, \
        {name: np.load(tmp_path / f"{name}.bias.npy") for name in tensors}


def _plain(pipeline: Pipeline) -> Pipeline:
    """The pipeline with plain maps only, and every product of a gate made."""
    for node in pipeline.nodes:
        if hasattr(node.stage, "hand_on_pixels"):
            node.stage.hand_on_pixels(False)
    pipeline._gates = frozenset()
    return pipeline


def test_the_pipeline_hands_pixels_only_to_stages_that_take_them(tmp_path):
    config, _, _ = _mobile_block(tmp_path)
    pipeline = Pipeline.from_config(config)
    handing = {node.name for node in pipeline.nodes if getattr(node.stage, "_to_pixels", False)}
    # The expansion feeds the depthwise conv, which feeds the squeeze and the gate's product (read
    # by the projection); fc1 and fc2 may (their 1x1 maps are plain either way). The stem is a
    # 3x3 conv, and the projection feeds the descriptor's mean, which takes plain maps only.
    assert handing == {"expand", "dw", "fc1", "fc2"}
    x = np.random.default_rng(8).random((3, 40, 36), np.float32)
    maps = pipeline.outputs(x)
    assert layout.is_channels_last(maps["expand"]) and layout.is_channels_last(maps["dw"])
    assert layout.is_channels_last(maps["gate"])
    assert maps["stem"].flags.c_contiguous and maps["project"].flags.c_contiguous


@pytest.mark.parametrize("residual", [True, False])
def test_a_mobile_block_gives_what_plain_maps_give(tmp_path, residual):
    config, _, _ = _mobile_block(tmp_path, residual)
    x = np.random.default_rng(9).random((3, 57, 45), np.float32)
    fast, plain = Pipeline.from_config(config), _plain(Pipeline.from_config(config))
    np.testing.assert_allclose(fast(x), plain(x), rtol=1e-5, atol=1e-6)
    for name, value in fast.outputs(x).items():
        np.testing.assert_allclose(value, plain.outputs(x)[name], rtol=1e-5, atol=1e-5, err_msg=name)


@needs_torch
def test_a_mobile_block_is_torchs(tmp_path):
    import torch

    config, weights, biases = _mobile_block(tmp_path)
    x = np.random.default_rng(10).random((3, 64, 48), np.float32)
    pipeline = Pipeline.from_config({**config, "output": {"normalize": "none"}})

    def reference(t):
        w = {k: torch.from_numpy(v) for k, v in weights.items()}
        b = {k: torch.from_numpy(v) for k, v in biases.items()}
        stem = F.hardswish(F.conv2d(t, w["stem"], b["stem"], stride=2, padding=1))
        y = F.relu(F.conv2d(stem, w["expand"], b["expand"]))
        y = F.hardswish(F.conv2d(y, w["dw"], b["dw"], padding=1, groups=64))
        s = F.relu(F.conv2d(y.mean(dim=(2, 3), keepdim=True), w["fc1"], b["fc1"]))
        s = F.hardsigmoid(F.conv2d(s, w["fc2"], b["fc2"]))
        y = F.conv2d(y * s, w["project"], b["project"]) + stem
        return y.mean(dim=(2, 3))

    np.testing.assert_allclose(pipeline(x), run(reference, x), rtol=1e-4, atol=1e-5)


def test_a_1x1_conv_read_by_a_1x1_conv_that_writes_a_plain_map_keeps_its_map_plain(tmp_path):
    """ConvNeXt's pair of 1x1 convs: the second writes a plain map (its reader is a mean), so
    the first gains nothing by pixel rows, and hands on a plain map."""
    config, _, _ = _mobile_block(tmp_path)
    stages = {stage["name"]: stage for stage in config["stages"]}
    pair = {"stages": [stages["stem"], stages["expand"], {**stages["project"], "residual": None},
                       {"type": "global_avg_pool", "name": "pooled"}]}
    pipeline = Pipeline.from_config(pair)
    assert not any(getattr(node.stage, "_to_pixels", False) for node in pipeline.nodes)


def test_the_gates_product_is_folded_into_the_projection_it_feeds(tmp_path):
    """The squeeze-excitation's product, read by the 1x1 projection alone, is never made: the
    projection scales its weights by the gate. Read by another stage as well, it is made."""
    config, _, _ = _mobile_block(tmp_path)
    names = [node.name for node in Pipeline.from_config(config).nodes]
    assert Pipeline.from_config(config)._gates == {names.index("gate")}
    also = {"stages": [*config["stages"], {"type": "add", "name": "both", "from": ["pooled", "pooled"]},
                       {"type": "global_avg_pool", "name": "other", "from": "gate"},
                       {"type": "add", "name": "end", "from": ["both", "other"]}]}
    assert Pipeline.from_config(also)._gates == frozenset()


@pytest.mark.parametrize("method", ["pointwise", "direct", "gemm"])
@pytest.mark.parametrize("to_pixels", [False, True])
def test_a_gated_1x1_conv_is_the_conv_of_the_gated_map(method, to_pixels):
    rng = np.random.default_rng(11)
    x = rng.standard_normal((40, 12, 14)).astype(np.float32)
    gate = rng.random(40).astype(np.float32)
    weight = rng.standard_normal((24, 40, 1, 1)).astype(np.float32)
    bias = rng.standard_normal(24).astype(np.float32)
    prepared = kernels.prepare(weight, bias, 1, (0, 0, 0, 0), method)
    out = kernels.convolve(_pixels_of(x), prepared, (0, 0, 0, 0), "zeros", (1, 1), (1, 1), (12, 14), threads=2,
                           to_pixels=to_pixels, gate=gate)
    np.testing.assert_allclose(out, naive_conv2d(x * gate[:, None, None], weight, bias), rtol=1e-4, atol=1e-4)
