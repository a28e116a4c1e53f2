"""Multi-scale descriptors (top-level ``multiscale``): against a direct NumPy computation and
against cnnimageretrieval-pytorch's extract_ms written in PyTorch."""

import numpy as np
import pytest

from poolcli import Pipeline
from poolcli.errors import ConfigError, ShapeError
from poolcli.retrieval.whitening import learn_whitening, save_whitening
from torch_oracle import F, needs_torch, torch

SCALES = [1, 0.7071, 0.5]


def bilinear(x, scale):
    """torch interpolate(scale_factor=scale, mode='bilinear', align_corners=False), written out:
    output size floor(L * s), source coordinate (o + 0.5) / s - 0.5 clamped at 0."""
    def weights(size):
        out = int(np.floor(size * scale))
        src = np.maximum((np.arange(out) + 0.5) * np.float32(1 / scale) - 0.5, 0)
        low = np.minimum(np.floor(src).astype(int), size - 1)
        high = np.minimum(low + 1, size - 1)
        frac = src - low
        matrix = np.zeros((out, size))
        np.add.at(matrix, (np.arange(out), low), 1 - frac)
        np.add.at(matrix, (np.arange(out), high), frac)
        return matrix

    if scale == 1:
        return x.astype(np.float64)
    return np.einsum("oh,chw,pw->cop", weights(x.shape[1]), x.astype(np.float64), weights(x.shape[2]))


def gem(x, p):
    return np.mean(np.maximum(x, 1e-6) ** p, axis=(1, 2)) ** (1 / p)


def l2n(v):
    return v / np.linalg.norm(v)


def test_gem_pipeline_is_the_power_mean_with_gems_p(rng):
    x = rng.random((3, 37, 29), dtype=np.float32)
    pipe = Pipeline.from_config({"stages": [{"type": "gem", "p": 3}], "multiscale": SCALES})
    assert pipe.multiscale_power == 3
    per_scale = [l2n(gem(bilinear(x, s), 3)) for s in SCALES]
    expected = l2n(np.mean([v**3 for v in per_scale], axis=0) ** (1 / 3))
    np.testing.assert_allclose(pipe(x), expected, rtol=1e-5)


def test_mean_when_not_a_plain_gem(rng, tmp_path):
    x = rng.standard_normal((2, 24, 30)).astype(np.float32)
    stages = [{"type": "spp", "levels": [1, 2]}]
    pipe = Pipeline.from_config({"stages": stages, "multiscale": [1, 0.5], "input": {"mean": [0.5], "std": [2.0]}})
    assert pipe.multiscale_power == 1
    standard = (x - 0.5) / 2  # mean and std come first, then the resize (as torchvision's Normalize, then interpolate)
    single = Pipeline.from_config({"stages": stages})
    expected = l2n(np.mean([single(bilinear(standard, s).astype(np.float32)) for s in (1, 0.5)], axis=0))
    np.testing.assert_allclose(pipe(x), expected, rtol=1e-5, atol=1e-7)
    # Regional or whitened GeM: the mean too, as cirtorch's test.py chooses msp.
    assert Pipeline.from_config({"stages": [{"type": "rmac"}], "multiscale": SCALES}).multiscale_power == 1
    save_whitening(tmp_path / "w.npz", *learn_whitening(rng.standard_normal((20, 2))))
    whitened = {"stages": [{"type": "gem", "p": 4}, {"type": "whiten", "file": "w.npz"}], "multiscale": SCALES}
    assert Pipeline.from_config(whitened, base_dir=tmp_path).multiscale_power == 1
    two_gems = {"stages": [{"type": "gem", "name": "a", "p": 2}, {"type": "gem", "name": "b", "p": 3, "from": "input"},
                           {"type": "concat", "from": ["a", "b"]}], "multiscale": SCALES}
    assert Pipeline.from_config(two_gems).multiscale_power == 1


def test_negative_entries_keep_their_sign(rng):
    x = rng.standard_normal((1, 16, 16)).astype(np.float32)
    stages = [{"type": "adaptive_avg_pool", "output_size": 2}, {"type": "flatten"}, {"type": "gem", "p": 3, "from": "input"},
              {"type": "concat", "name": "both", "from": ["flatten1", "gem2"]}]
    pipe = Pipeline.from_config({"stages": stages, "multiscale": [1, 0.5]})
    assert pipe.multiscale_power == 3
    single = Pipeline.from_config({"stages": stages})
    ys = [single(bilinear(x, s).astype(np.float32)).astype(np.float64) for s in (1, 0.5)]
    mean = np.mean([np.sign(y) * np.abs(y) ** 3 for y in ys], axis=0)
    expected = l2n(np.sign(mean) * np.abs(mean) ** (1 / 3))
    assert (expected < 0).any()
    np.testing.assert_allclose(pipe(x), expected, rtol=1e-5, atol=1e-7)


def test_one_scale_of_one_is_the_plain_pipeline(rng):
    x = rng.random((3, 20, 20), dtype=np.float32)
    stages = [{"type": "max_pool", "kernel_size": 2}, {"type": "gem"}]
    np.testing.assert_array_equal(Pipeline.from_config({"stages": stages, "multiscale": [1]})(x),
                                  Pipeline.from_config({"stages": stages})(x))


@needs_torch
@pytest.mark.parametrize("shape", [(3, 64, 48), (3, 31, 57)])
def test_equals_cirtorch_extract_ms_in_torch(rng, shape):
    """cirtorch: v += net(interpolate(input, scale_factor=s, bilinear)).pow(msp); v /= len(ms);
    v = v.pow(1/msp); v /= v.norm(), with net = GeM(p) then L2N."""
    x = rng.random(shape, dtype=np.float32)
    p = 3.0

    def net(t):
        pooled = F.avg_pool2d(t.clamp(min=1e-6).pow(p), (t.size(-2), t.size(-1))).pow(1.0 / p)
        return F.normalize(pooled.squeeze(-1).squeeze(-1), dim=1)

    image = torch.from_numpy(x)[None]
    v = torch.zeros(shape[0], dtype=torch.float32)
    for s in SCALES:
        t = image.clone() if s == 1 else F.interpolate(image, scale_factor=s, mode="bilinear", align_corners=False)
        v += net(t).pow(p).squeeze()
    v /= len(SCALES)
    v = v.pow(1.0 / p)
    v /= v.norm()
    pipe = Pipeline.from_config({"stages": [{"type": "gem", "p": p}], "multiscale": SCALES})
    np.testing.assert_allclose(pipe(x), v.numpy(), rtol=1e-5)


def test_trace_covers_every_scale():
    pipe = Pipeline.from_config({"stages": [{"type": "max_pool", "name": "pool", "kernel_size": 2}, {"type": "gem"}],
                                 "multiscale": SCALES})
    records = pipe.trace((3, 40, 30))
    assert [r.name for r in records] == ["pool", "gem1", "input@0.7071", "pool@0.7071", "gem1@0.7071",
                                         "input@0.5", "pool@0.5", "gem1@0.5", "multiscale"]
    assert records[2].type == "rescale" and records[2].out_shape == (3, 28, 21)
    assert records[6].out_shape == (3, 10, 7)
    assert records[-1].out_shape == (3,) and pipe.output_shape((3, 40, 30)) == (3,)
    with pytest.raises(ShapeError, match=r"stage 'pool' \(max_pool\) at scale 0.5: "):
        pipe.trace((3, 3, 3))


def test_lengths_must_agree_and_maps_are_refused():
    pipe = Pipeline.from_config({"stages": [{"type": "flatten"}], "multiscale": [1, 0.5]})
    with pytest.raises(ShapeError, match="multiscale: the descriptor has length 48 at scale 1 but 12 at scale 0.5"):
        pipe.trace((3, 4, 4))
    with pytest.raises(ConfigError, match="multiscale: applies to pipelines that end in a descriptor"):
        Pipeline.from_config({"stages": [{"type": "max_pool", "kernel_size": 2}], "multiscale": [1, 0.5]})
    with pytest.raises(ShapeError, match="multiscale 0.1: .*turns a 3x3 map into 0x0"):
        Pipeline.from_config({"stages": [{"type": "gem"}], "multiscale": [1, 0.1]}).trace((3, 3, 3))


@pytest.mark.parametrize("value, message", [
    ([], "multiscale: list should have at least 1 item"),
    ([1, 0], r"multiscale\[1\]: each scale must be a number > 0, got 0"),
    ([1, True], r"multiscale\[1\]: each scale must be a number > 0, got True"),
    (0.5, "multiscale: input should be a valid list"),
])
def test_bad_scales(value, message):
    with pytest.raises(ConfigError, match=message):
        Pipeline.from_config({"stages": [{"type": "gem"}], "multiscale": value})


def test_a_run_writes_multiscale_descriptors(tmp_path, rng):
    from poolcli import read_descriptors
    from poolcli.runner import run

    for i in range(3):
        np.save(tmp_path / f"{i}.npy", rng.random((3, 20, 24), dtype=np.float32))
    pipe = Pipeline.from_config({"stages": [{"type": "gem"}], "multiscale": SCALES})
    summary = run(pipe, [str(tmp_path / f"{i}.npy") for i in range(3)], tmp_path / "out")
    assert summary.written == 3 and summary.dim == 3
    vectors, _ = read_descriptors(tmp_path / "out")
    np.testing.assert_array_equal(vectors[1], pipe(np.load(tmp_path / "1.npy")))
