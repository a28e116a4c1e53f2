"""The config's weights: file (safetensors) and the conv stage's trained-network parameters:
tensor names for filters and bias, four-number and ONNX auto_pad padding, the fused residual."""

import numpy as np
import pytest
import safetensors.numpy
import yaml

import layers
import naive
from onnx_oracle import needs_onnx, run_node
from poolcli import Pipeline
from poolcli.errors import ConfigError, ShapeError
from torch_oracle import F, needs_torch, torch


def write(tmp_path, tensors, stages, **top):
    safetensors.numpy.save_file(tensors, str(tmp_path / "weights.safetensors"))
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump({"weights": "weights.safetensors", "stages": stages, **top}))
    return path


def close(a, b):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_conv_reads_filters_and_bias_by_tensor_name(tmp_path, rng):
    w = rng.standard_normal((5, 3, 3, 3)).astype(np.float32)
    b = rng.standard_normal(5).astype(np.float16)  # cast to float32 on load
    path = write(tmp_path, {"conv1.weight": w, "conv1.bias": b},
                 [{"type": "conv", "filters": "conv1.weight", "bias": "conv1.bias", "stride": 2, "padding": 1}])
    x = rng.standard_normal((3, 11, 10)).astype(np.float32)
    close(Pipeline.from_yaml(path)(x), naive.conv2d(x, w, b.astype(np.float32), stride=2, padding=1))


@pytest.mark.parametrize("stage, match", [
    ({"filters": "conv1.weigth"}, r"pipeline\.yaml:\d+: stages\[0\] \(conv 'c'\)\.filters: no tensor 'conv1\.weigth' in "
                                  r"weights\.safetensors \(did you mean 'conv1\.weight'\?\)"),
    ({"filters": "conv1.weight", "bias": "conv9.bias"}, r"bias: no tensor 'conv9\.bias' in weights\.safetensors"),
    ({"filters": "conv1.bias"}, r"filters: weights \(tensor 'conv1\.bias'\) must have shape \(O, C/groups, kh, kw\), "
                                r"got shape \(4,\)"),
    ({"filters": "conv1.weight", "bias": "conv1.weight"}, r"bias: bias \(tensor 'conv1\.weight'\) must have shape \(O,\)"),
    ({"filters": "conv1.weight", "bias": "short"}, r"bias has 3 values, but filters 'conv1\.weight' give 4 output"),
    ({"filters": "bad"}, r"filters: weights \(tensor 'bad' in weights\.safetensors\) contain NaN or infinity"),
    ({"filters": "flags"}, r"weights: tensor 'flags' in weights\.safetensors is BOOL, not numbers"),
])
def test_tensor_errors(tmp_path, stage, match):
    tensors = {"conv1.weight": np.ones((4, 1, 3, 3), np.float32), "conv1.bias": np.zeros(4, np.float32),
               "short": np.zeros(3, np.float32), "bad": np.full((1, 1, 1, 1), np.nan, np.float32),
               "flags": np.ones((1, 1, 1, 1), bool)}
    path = write(tmp_path, tensors, [{"type": "conv", "name": "c", **stage}])
    with pytest.raises(ConfigError, match=match):
        Pipeline.from_yaml(path)


def test_a_tensor_name_without_a_weights_file_says_so():
    with pytest.raises(ConfigError, match=r"filters: unknown filter bank 'conv1\.weight' .*or the name of a tensor of "
                                          r"the config's weights: file"):
        Pipeline.from_config({"stages": [{"type": "conv", "filters": "conv1.weight"}]})


def test_weights_file_errors(tmp_path):
    with pytest.raises(ConfigError, match=r"weights: file not found: .*nothing\.safetensors"):
        Pipeline.from_config({"weights": "nothing.safetensors", "stages": [{"type": "gem"}]}, tmp_path)
    (tmp_path / "junk.safetensors").write_bytes(b"\xff" * 100)
    with pytest.raises(ConfigError, match=r"weights: cannot read .*junk\.safetensors as safetensors"):
        Pipeline.from_config({"weights": "junk.safetensors", "stages": [{"type": "gem"}]}, tmp_path)


def test_a_bank_name_stays_a_bank_with_a_weights_file(tmp_path, rng):
    path = write(tmp_path, {"sobel2": np.ones((1, 1, 1, 1), np.float32)}, [{"type": "conv", "filters": "sobel"}],
                 input={"color": "gray"})
    x = rng.standard_normal((1, 6, 7)).astype(np.float32)
    assert Pipeline.from_yaml(path)(x).shape == (2, 4, 5)


# --- padding: four numbers, same_upper, same_lower --------------------------------------------------


@pytest.mark.parametrize("padding, kernel, stride, dilation, size", [
    ([1, 0, 2, 3], 3, 1, 1, (7, 6)), ([0, 2, 1, 0], (2, 3), (2, 1), 1, (1, 1)), ([3, 1, 0, 2], 3, 2, 2, (9, 8)),
    ("same_upper", 3, 2, 1, (7, 8)), ("same_lower", 3, 2, 1, (7, 8)), ("same_upper", 2, 1, 1, (5, 4)),
    ("same_lower", 2, 1, 1, (5, 4)), ("same_upper", 4, 3, 2, (10, 1)), ("same_lower", (1, 4), (2, 3), 1, (1, 11)),
    ("same_upper", 1, 2, 1, (5, 5)),
])
def test_asymmetric_padding_equals_naive(padding, kernel, stride, dilation, size, rng):
    kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
    w = rng.standard_normal((3, 2, kh, kw)).astype(np.float32)
    x = rng.standard_normal((2, *size)).astype(np.float32)
    stage = _conv(w, padding=padding, stride=stride, dilation=dilation)
    top, bottom, left, right = _onnx_pads(padding, (kh, kw), stride, dilation, size)
    want = naive.conv2d(x, w, stride=stride, padding=(top, bottom, left, right), dilation=dilation)
    assert stage.output_shape(x.shape) == want.shape
    close(stage(x), want)


def _conv(w, **params):
    return layers.stage("conv", {"w": w}, filters="w", **params)


def _onnx_pads(padding, kernel, stride, dilation, size):
    """(top, bottom, left, right) as ONNX computes them, written out from its spec."""
    if isinstance(padding, list):
        top, left, bottom, right = padding
        return top, bottom, left, right
    stride = (stride, stride) if isinstance(stride, int) else stride
    dilation = (dilation, dilation) if isinstance(dilation, int) else dilation
    pads = []
    for n, k, s, d in zip(size, kernel, stride, dilation):
        out = -(-n // s)
        total = max(0, (out - 1) * s + (k - 1) * d + 1 - n)
        head = total // 2 if padding == "same_upper" else (total + 1) // 2
        pads.append((head, total - head))
    return (*pads[0], *pads[1])


@needs_onnx
@pytest.mark.parametrize("padding, kernel, stride, dilation, groups, size", [
    ([1, 0, 2, 3], 3, 1, 1, 1, (7, 6)), ([3, 1, 0, 2], 3, 2, 2, 2, (9, 8)),
    ("same_upper", 3, 2, 1, 1, (7, 8)), ("same_lower", 3, 2, 1, 2, (7, 8)), ("same_upper", 2, 1, 1, 1, (5, 4)),
    ("same_lower", 2, 1, 1, 1, (5, 4)), ("same_upper", 4, 3, 1, 1, (10, 1)), ("same_lower", (1, 4), (2, 3), 1, 1, (1, 11)),
    ([0, 0, 0, 0], 3, 1, 3, 1, (9, 9)),  # onnxruntime refuses dilation with auto_pad
])
def test_padding_equals_onnxruntime(padding, kernel, stride, dilation, groups, size, rng):
    kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
    (sh, sw) = (stride, stride) if isinstance(stride, int) else stride
    w = rng.standard_normal((4, 4 // groups, kh, kw)).astype(np.float32)
    b = rng.standard_normal(4).astype(np.float32)
    x = rng.standard_normal((4, *size)).astype(np.float32)
    attributes = {"auto_pad": padding.upper()} if isinstance(padding, str) else {"pads": padding}
    want = run_node("Conv", [x[None]], {"w": w, "b": b}, kernel_shape=[kh, kw], strides=[sh, sw],
                    dilations=[dilation, dilation], group=groups, **attributes)[0]
    stage = layers.stage("conv", {"w": w, "b": b}, filters="w", bias="b", padding=padding, stride=stride,
                         dilation=dilation, groups=groups)
    close(stage(x), want)


@needs_torch
def test_four_number_padding_equals_torch_pad_then_conv(rng):
    w = rng.standard_normal((6, 3, 3, 2)).astype(np.float32)
    x = rng.standard_normal((3, 12, 9)).astype(np.float32)
    stage = _conv(w, padding=[2, 0, 1, 3], stride=[2, 1])
    t = F.pad(torch.from_numpy(x)[None], (0, 3, 2, 1))  # torch: (left, right, top, bottom)
    close(stage(x), F.conv2d(t, torch.from_numpy(w), stride=(2, 1))[0].numpy())


# --- the fused residual -----------------------------------------------------------------------------


def test_residual_is_added_before_the_activation(rng):
    b2 = rng.standard_normal(4).astype(np.float32)
    pipe = Pipeline.from_config({"stages": [
        {"type": "conv", "name": "a", "filters": "random", "out_channels": 4, "padding": 1, "seed": 3},
        {"type": "conv", "name": "b", "filters": "random", "out_channels": 4, "seed": 4, "kernel_size": 1},
        {"type": "conv", "name": "c", "from": "b", "filters": "random", "out_channels": 4, "seed": 5,
         "kernel_size": 1, "bias": b2.tolist(), "residual": "a", "activation": "relu"},
    ]})
    x = rng.standard_normal((3, 9, 7)).astype(np.float32)
    a = naive.conv2d(x, pipe.nodes[0].stage.weights(3), padding=1)
    b = naive.conv2d(a.astype(np.float32), pipe.nodes[1].stage.weights(4))
    c = naive.conv2d(b.astype(np.float32), pipe.nodes[2].stage.weights(4), b2)
    close(pipe(x), np.maximum(c + a, 0))
    assert pipe.nodes[2].inputs == ("b", "a")


def test_residual_from_the_input(rng):
    pipe = Pipeline.from_config({"stages": [
        {"type": "conv", "filters": "identity", "channels": "each", "bias": [1.0, 2.0, 3.0], "residual": "input"}]})
    x = rng.standard_normal((3, 5, 4)).astype(np.float32)
    close(pipe(x), 2 * x + np.array([1, 2, 3], np.float32)[:, None, None])


def test_residual_errors():
    with pytest.raises(ConfigError, match=r"stages\[1\] \(conv 'c'\): residual: no earlier stage is named 'aa' "
                                          r"\(did you mean 'a'\?\)"):
        Pipeline.from_config({"stages": [{"type": "max_pool", "name": "a", "kernel_size": 1},
                                         {"type": "conv", "name": "c", "filters": "sobel", "residual": "aa"}]})
    pipe = Pipeline.from_config({"stages": [{"type": "max_pool", "name": "a", "kernel_size": 1},
                                            {"type": "conv", "name": "c", "filters": "sobel", "residual": "a"}]})
    with pytest.raises(ShapeError, match=r"stage 'c' \(conv\): the residual 'a' has shape \(3, 8, 8\), the conv's "
                                         r"output \(2, 6, 6\)"):
        pipe.trace((3, 8, 8))


@pytest.mark.parametrize("channels, outputs, stride, size", [(1, 1, 1, (1, 1)), (7, 3, 2, (9, 8)), (64, 33, 1, (5, 7)),
                                                             (5, 16, (2, 3), (1, 10))])
def test_pointwise_conv_equals_naive(channels, outputs, stride, size, rng):
    """1x1 convs without padding take a matrix product instead of the conv kernel."""
    w = rng.standard_normal((outputs, channels, 1, 1)).astype(np.float32)
    b = rng.standard_normal(outputs).astype(np.float32)
    x = rng.standard_normal((channels, *size)).astype(np.float32)
    stage = layers.stage("conv", {"w": w, "b": b}, filters="w", bias="b", stride=stride, activation="relu")
    want = np.maximum(naive.conv2d(x, w, b, stride=stride), 0)
    assert stage.output_shape(x.shape) == want.shape
    close(stage(x), want)


# --- the weights are part of a run's identity ------------------------------------------------------


def _run_with_weights(tmp_path, rng):
    """A small run over three images of a conv (its filters in weights.safetensors) and GeM."""
    from processes import cli

    images = tmp_path / "images"
    images.mkdir()
    for i in range(3):
        np.save(images / f"{i}.npy", rng.random((3, 12, 10)).astype(np.float32))
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    path = write(tmp_path, {"conv1.weight": w},
                 [{"type": "conv", "filters": "conv1.weight", "padding": 1, "activation": "relu"}, {"type": "gem"}])
    result = cli("run", path, images, "-o", tmp_path / "out")
    assert result.returncode == 0, result.stderr
    return path, images, w


def _manifest(out):
    import json

    return json.loads((out / "manifest.json").read_text())


def test_the_manifest_records_the_weights_sha256(tmp_path, rng):
    import hashlib

    _run_with_weights(tmp_path, rng)
    digest = hashlib.sha256((tmp_path / "weights.safetensors").read_bytes()).hexdigest()
    assert _manifest(tmp_path / "out")["weights_sha256"] == digest


def test_a_run_without_weights_records_none(tmp_path, rng):
    from processes import cli

    np.save(tmp_path / "a.npy", rng.random((3, 8, 8)).astype(np.float32))
    path = tmp_path / "gem.yaml"
    path.write_text(yaml.safe_dump({"stages": [{"type": "gem"}]}))
    result = cli("run", path, tmp_path / "a.npy", "-o", tmp_path / "out")
    assert result.returncode == 0, result.stderr
    assert _manifest(tmp_path / "out")["weights_sha256"] is None


def test_resuming_with_other_weights_is_refused_and_overwrite_recomputes(tmp_path, rng):
    """The same config over a changed weights file is another run: OUT is left as it was
    (no descriptors of two weight files in one folder) until --overwrite, which recomputes."""
    import poolcli
    from processes import cli

    path, images, w = _run_with_weights(tmp_path, rng)
    before = {p.relative_to(tmp_path / "out"): p.read_bytes() for p in (tmp_path / "out").rglob("*") if p.is_file()}
    safetensors.numpy.save_file({"conv1.weight": w * 2 + 1}, str(tmp_path / "weights.safetensors"))

    result = cli("run", path, images, "-o", tmp_path / "out")
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "holds another run (different weights)" in result.stderr
    after = {p.relative_to(tmp_path / "out"): p.read_bytes() for p in (tmp_path / "out").rglob("*") if p.is_file()}
    assert after == before

    result = cli("run", path, images, "-o", tmp_path / "out", "--overwrite")
    assert result.returncode == 0, result.stderr
    vectors, meta = poolcli.read_descriptors(tmp_path / "out")
    pipe = Pipeline.from_yaml(path)
    for vector, name in zip(vectors, meta.column("path").to_pylist()):
        close(vector, pipe(np.load(name)))


def test_an_incomplete_run_with_other_weights_is_refused(tmp_path, rng):
    """A run killed half-way (the manifest not complete) resumes only over the same weights."""
    import json

    from processes import cli

    path, images, w = _run_with_weights(tmp_path, rng)
    manifest = _manifest(tmp_path / "out")
    manifest["complete"] = False
    (tmp_path / "out" / "manifest.json").write_text(json.dumps(manifest))
    safetensors.numpy.save_file({"conv1.weight": -w}, str(tmp_path / "weights.safetensors"))
    result = cli("run", path, images, "-o", tmp_path / "out")
    assert result.returncode == 1 and "different weights" in result.stderr


def test_the_weights_of_an_included_config_count(tmp_path, rng):
    """A head of one's own on an included trunk: changing the trunk's weights changes the run."""
    from processes import cli

    trunk = tmp_path / "trunk"
    trunk.mkdir()
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    write(trunk, {"conv1.weight": w}, [{"type": "conv", "filters": "conv1.weight", "padding": 1}])
    head = tmp_path / "head.yaml"
    head.write_text(yaml.safe_dump({"stages": [{"type": "include", "config": "trunk/pipeline.yaml"},
                                               {"type": "global_max_pool"}]}))
    np.save(tmp_path / "a.npy", rng.random((3, 8, 8)).astype(np.float32))
    result = cli("run", head, tmp_path / "a.npy", "-o", tmp_path / "out")
    assert result.returncode == 0, result.stderr
    first = _manifest(tmp_path / "out")["weights_sha256"]
    safetensors.numpy.save_file({"conv1.weight": w + 1}, str(trunk / "weights.safetensors"))
    result = cli("run", head, tmp_path / "a.npy", "-o", tmp_path / "out")
    assert result.returncode == 1 and "different weights" in result.stderr
    assert first is not None and _manifest(tmp_path / "out")["weights_sha256"] == first


def test_weights_sha256_of_several_files_depends_on_each(tmp_path, rng):
    from poolcli.runner import weights_sha256

    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        write(tmp_path / name, {"conv1.weight": np.ones((2, 3, 1, 1), np.float32)},
              [{"type": "conv", "filters": "conv1.weight"}])
    head = tmp_path / "head.yaml"
    head.write_text(yaml.safe_dump({"stages": [{"type": "include", "config": "a/pipeline.yaml", "name": "x"},
                                               {"type": "include", "config": "b/pipeline.yaml", "from": "input",
                                                "name": "y"},
                                               {"type": "concat", "from": ["x", "y"]}]}))
    pipe = Pipeline.from_yaml(head)
    assert len(pipe.weights_files) == 2
    before = weights_sha256(pipe)
    safetensors.numpy.save_file({"conv1.weight": np.full((2, 3, 1, 1), 2, np.float32)},
                                str(tmp_path / "b" / "weights.safetensors"))
    assert weights_sha256(Pipeline.from_yaml(head)) != before
