"""The pipeline: tracing without kernels, applying stages, the graph, normalisation."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import naive
from poolcli import ConfigError, Pipeline, ShapeError

ROOT = Path(__file__).resolve().parent.parent


def test_trace_equals_the_real_output_shapes(rng):
    pipe = Pipeline.from_config({"output": {"normalize": "none"}, "stages": [
        {"type": "max_pool", "kernel_size": 3, "stride": 2, "padding": 1, "name": "a"},
        {"type": "avg_pool", "kernel_size": 2, "ceil_mode": True},
        {"type": "spp", "levels": [1, 2]},
    ]})
    x = rng.standard_normal((3, 37, 21)).astype(np.float32)
    records = pipe.trace(x.shape)
    assert [r.out_shape for r in records] == [(3, 19, 11), (3, 10, 6), (15,)]
    assert pipe(x).shape == records[-1].out_shape
    assert records[0].receptive_field.size == (3, 3)
    assert str(records[1].receptive_field) == "5x5"  # 3 + (2 - 1) * 2


def test_building_and_tracing_import_no_kernel():
    """Every stage type is built and traced (as inspect does) without importing numba."""
    code = (
        "import sys, poolcli\n"
        "from poolcli.stages import STAGES\n"
        "for name, cls in STAGES.items():\n"
        "    if hasattr(cls, 'example_call'):  # needs an earlier stage (max_unpool): in the pipeline below\n"
        "        continue\n"
        "    stage = cls.model_validate({'type': name, **cls.example})\n"
        "    stage.output_shape(*[(1, 16, 16)] * (2 if cls.inputs == 'many' else 1))\n"
        "p = poolcli.Pipeline.from_config({'stages': [{'type': 'conv', 'filters': 'gabor'}, {'type': 'max_pool', 'kernel_size': 2, 'name': 'p'}, {'type': 'max_unpool', 'indices': 'p'}, {'type': 'gem'}]})\n"
        "p.trace((3, 64, 64))\n"
        "assert 'numba' not in sys.modules, 'building or tracing imported numba'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_a_window_that_does_not_fit_names_the_stage():
    pipe = Pipeline.from_config({"stages": [{"type": "max_pool", "kernel_size": 3, "name": "pool1"}, {"type": "gem"}]})
    with pytest.raises(ShapeError, match="stage 'pool1' \\(max_pool\\)") as info:
        pipe(np.ones((1, 2, 2), np.float32))
    assert info.value.stage == "pool1"


def test_gem_then_l2(rng):
    x = rng.random((4, 9, 7)).astype(np.float32)
    pipe = Pipeline.from_config({"stages": [{"type": "gem", "p": 3}]})
    expected = naive.gem(x, 3.0)
    np.testing.assert_allclose(pipe(x), expected / np.linalg.norm(expected), rtol=1e-5)


def test_mean_std_and_no_normalisation(rng):
    x = rng.random((3, 5, 5)).astype(np.float32)
    pipe = Pipeline.from_config({
        "input": {"mean": [0.5, 0.25, 0.0], "std": [2.0, 1.0, 0.5]},
        "stages": [{"type": "spoc"}],
        "output": {"normalize": "none"},
    })
    mean, std = np.array([0.5, 0.25, 0.0]), np.array([2.0, 1.0, 0.5])
    expected = (x.mean(axis=(1, 2)) - mean) / std
    np.testing.assert_allclose(pipe(x), expected, rtol=1e-5, atol=1e-6)


def test_the_input_is_not_modified(rng):
    x = rng.standard_normal((3, 8, 8)).astype(np.float32)
    before = x.copy()
    pipe = Pipeline.from_config({"input": {"mean": [0.1], "std": [2]}, "stages": [{"type": "activation", "fn": "relu"}, {"type": "mac"}]})
    pipe(x)
    np.testing.assert_array_equal(x, before)


def test_two_dimensional_input_is_one_channel():
    pipe = Pipeline.from_config({"stages": [{"type": "mac"}], "output": {"normalize": "none"}})
    np.testing.assert_array_equal(pipe(np.arange(6, dtype=np.float32).reshape(2, 3)), [5.0])


def test_branches_and_concat(rng):
    x = rng.random((2, 6, 6)).astype(np.float32)
    pipe = Pipeline.from_config({"output": {"normalize": "none"}, "stages": [
        {"type": "gem", "name": "g", "p": 2},
        {"type": "mac", "from": "input", "name": "m"},
        {"type": "concat", "from": ["m", "g"]},
    ]})
    np.testing.assert_allclose(pipe(x), np.concatenate([naive.global_max_pool(x), naive.gem(x, 2.0)]), rtol=1e-5)


def test_stages_the_output_does_not_need_are_skipped(rng, monkeypatch):
    from poolcli.stages.global_pool import GlobalAvgPool

    def fail(self, x):
        raise AssertionError("a dead branch ran")

    monkeypatch.setattr(GlobalAvgPool, "__call__", fail)
    pipe = Pipeline.from_config({"stages": [{"type": "spoc", "from": "input"}, {"type": "mac", "from": "input"}]})
    assert pipe(np.ones((1, 3, 3), np.float32)).shape == (1,)


def test_small_stages_run_on_one_thread_and_the_count_is_restored(monkeypatch):
    import numba

    from poolcli.pipeline import SERIAL_WORK
    from poolcli.stages.global_pool import GlobalAvgPool

    seen = []
    average = GlobalAvgPool.__call__

    def spy(self, x):
        seen.append(numba.get_num_threads())
        return average(self, x)

    monkeypatch.setattr(GlobalAvgPool, "__call__", spy)
    pipe = Pipeline.from_config({"stages": [{"type": "spoc"}]})
    threads = numba.get_num_threads()
    small, large = np.ones((4, 8, 8), np.float32), np.ones((16, 256, 256), np.float32)
    assert small.size < SERIAL_WORK <= large.size  # spoc's cost: one addition per value
    pipe(small)
    pipe(large)
    pipe(small)
    assert seen == [1, threads, 1]
    assert numba.get_num_threads() == threads


def test_maps_are_not_normalised_by_default_and_l2_per_position(rng):
    x = rng.random((3, 4, 5)).astype(np.float32)
    plain = Pipeline.from_config({"stages": [{"type": "activation", "fn": "abs"}]})
    assert plain.kind == "maps" and plain.normalize == "none"
    np.testing.assert_allclose(plain(x), x)
    l2 = Pipeline.from_config({"stages": [{"type": "activation", "fn": "abs"}], "output": {"normalize": "l2"}})
    np.testing.assert_allclose(np.linalg.norm(l2(x), axis=0), np.ones((4, 5)), rtol=1e-5)


def test_zero_descriptor_stays_zero():
    pipe = Pipeline.from_config({"stages": [{"type": "spoc"}]})
    np.testing.assert_array_equal(pipe(np.zeros((2, 3, 3), np.float32)), [0.0, 0.0])


# --- what the Python API takes ------------------------------------------------------------------


PHOTO = __import__("pathlib").Path(__file__).parent.parent / "sample_images" / "chelsea.png"


def test_an_image_read_with_pillow_gets_a_clear_error():
    from PIL import Image

    pipe = Pipeline.from_config({"stages": [{"type": "max_pool", "kernel_size": 2}, {"type": "gem"}]})
    pixels = np.asarray(Image.open(PHOTO).convert("RGB"))  # (300, 451, 3) uint8
    with pytest.raises(ShapeError, match=r"the input is uint8 .*pass x / 255 \(as poolcli.load_image scales 8-bit"):
        pipe(pixels)
    with pytest.raises(ShapeError, match=r"shape \(300, 451, 3\): that is \(H, W, C\).*x.transpose\(2, 0, 1\)"):
        pipe(pixels / 255)
    with pytest.raises(ShapeError, match="the input is uint16"):
        pipe(np.zeros((3, 8, 8), np.uint16))


def test_the_documented_rule_gives_what_a_run_computes():
    from PIL import Image

    import poolcli

    pipe = Pipeline.from_config({"stages": [{"type": "max_pool", "kernel_size": 2}, {"type": "gem"}]})
    pixels = np.asarray(Image.open(PHOTO).convert("RGB"))
    np.testing.assert_array_equal(pipe((pixels / 255).transpose(2, 0, 1)), pipe(poolcli.load_image(PHOTO)))
    small = np.arange(3 * 4 * 4).reshape(3, 4, 4)  # other integers and nested lists: values as they are
    np.testing.assert_array_equal(pipe(small), pipe(small.astype(np.float32)))
    np.testing.assert_array_equal(pipe(small.tolist()), pipe(small.astype(np.float32)))


def test_maps_of_many_channels_and_narrow_maps_are_not_taken_for_images(rng):
    pipe = Pipeline.from_config({"stages": [{"type": "gem"}]})
    for shape in [(64, 4, 4), (5, 7, 3), (16, 8, 3), (3, 300, 451)]:
        assert pipe(rng.random(shape, dtype=np.float32)).shape == (shape[0],)


@pytest.mark.parametrize("config, out_shape", [
    ({"stages": [{"type": "max_pool", "kernel_size": 2}, {"type": "gem"}]}, (3,)),
    ({"stages": [{"type": "max_pool", "kernel_size": 2}]}, (3, 4, 5)),
])
def test_a_batch_gives_stacked_outputs(rng, config, out_shape):
    pipe = Pipeline.from_config(config)
    batch = rng.random((4, 3, 8, 10), dtype=np.float32)
    expected = np.stack([pipe(x) for x in batch])
    assert expected.shape == (4, *out_shape)
    np.testing.assert_array_equal(pipe(batch), expected)
    np.testing.assert_array_equal(pipe(list(batch)), expected)
    np.testing.assert_array_equal(pipe(tuple(batch)), expected)


def test_a_batch_of_sizes_stacks_descriptors_and_refuses_maps(rng):
    maps = [rng.random((3, 8, 10), dtype=np.float32), rng.random((3, 12, 6), dtype=np.float32)]
    descriptors = Pipeline.from_config({"stages": [{"type": "gem"}]})(maps)
    assert descriptors.shape == (2, 3)
    with pytest.raises(ShapeError, match="the batch's outputs have different shapes"):
        Pipeline.from_config({"stages": [{"type": "max_pool", "kernel_size": 2}]})(maps)
    with pytest.raises(ShapeError, match="an empty list"):
        Pipeline.from_config({"stages": [{"type": "gem"}]})([])


@pytest.mark.parametrize("later_use", [False, True])
def test_a_conv_writes_over_a_spent_residual_and_never_one_still_needed(later_use):
    """A conv whose residual no later stage reads may write its output over it (one map less
    in memory); the output is the float64 loop's, and a residual that a later stage still
    reads is left intact."""
    from poolcli.pipeline import Pipeline

    stages = [
        {"type": "conv", "name": "a", "filters": "random", "out_channels": 16, "kernel_size": 1, "seed": 1},
        {"type": "conv", "name": "b", "filters": "random", "out_channels": 16, "kernel_size": 3, "padding": "same",
         "seed": 2, "activation": "relu"},
        {"type": "conv", "name": "c", "filters": "random", "out_channels": 16, "kernel_size": 1, "seed": 3,
         "residual": "a", "activation": "relu"},
    ]
    if later_use:
        stages.append({"type": "add", "name": "d", "from": ["c", "a"]})
    pipeline = Pipeline.from_config({"stages": stages})
    assert (pipeline._residual_reusers == frozenset()) == later_use
    x = np.random.default_rng(0).standard_normal((8, 20, 21)).astype(np.float32)
    weights = [node.stage.weights(c) for node, c in zip(pipeline.nodes, (8, 16, 16))]
    a = naive.conv2d(x, weights[0])
    b = np.maximum(naive.conv2d(a, weights[1], padding=(1, 1, 1, 1)), 0)
    expected = np.maximum(naive.conv2d(b, weights[2]) + a, 0)
    if later_use:
        expected = expected + a
    np.testing.assert_allclose(pipeline(x), expected, rtol=1e-4, atol=1e-4)
    every = pipeline.outputs(x)  # every map is the caller's: none written over
    np.testing.assert_allclose(every["a"], a, rtol=1e-4, atol=1e-4)


def test_from_yaml_takes_a_shipped_configs_name(tmp_path, monkeypatch):
    """The Python API takes a shipped config by name, from any folder, as the commands do."""
    monkeypatch.chdir(tmp_path)
    by_name = Pipeline.from_yaml("retrieval")
    assert by_name.config.base_dir.resolve() == (ROOT / "poolcli" / "configs").resolve()  # its .npy files are found
    x = np.random.default_rng(0).random((3, 64, 80), dtype=np.float32)
    np.testing.assert_array_equal(by_name(x), Pipeline.from_yaml(ROOT / "configs" / "retrieval.yaml")(x))
    assert Pipeline.from_yaml("gabor_gem.yaml").trace((3, 32, 32))[-1].out_shape == (48,)
    (tmp_path / "gabor_gem.yaml").write_text("stages: [{type: spoc}]\n")  # a file of that name wins
    assert Pipeline.from_yaml("gabor_gem.yaml").trace((3, 32, 32))[-1].out_shape == (3,)
    with pytest.raises(ConfigError, match=r"nor a shipped config named 'retrievl' \(did you mean 'retrieval'\?"):
        Pipeline.from_yaml("retrievl")
