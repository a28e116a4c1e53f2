"""F(4x4, 3x3): its matrices, its hand-written transforms, its accuracy in float32, and the conv
stage choosing it on large maps, against the float64 loop and torch."""

import numpy as np
import pytest
from numba import njit

import poolcli
from naive import conv2d as naive_conv2d
from poolcli.kernels import winograd
from torch_oracle import F, needs_torch, run


def test_the_matrices_compute_the_correlation_exactly():
    """Aᵀ [(G g) ⊙ (Bᵀ d)] is the 1-D correlation of 6 values with 3 taps, for each of the four outputs."""
    rng = np.random.default_rng(0)
    for _ in range(20):
        d, g = rng.standard_normal(6), rng.standard_normal(3)
        y = winograd.A_T64 @ ((winograd.G64 @ g) * (winograd.B_T64 @ d))
        np.testing.assert_allclose(y, [d[i : i + 3] @ g for i in range(4)], rtol=0, atol=1e-12)


def test_the_written_out_transforms_equal_the_matrices():
    """The kernels' Bᵀ d and Aᵀ m, written out term by term, are the matrices'."""

    @njit
    def both(d, m):
        return (np.array(winograd._b(d[0], d[1], d[2], d[3], d[4], d[5])),
                np.array(winograd._a(m[0], m[1], m[2], m[3], m[4], m[5])))

    rng = np.random.default_rng(1)
    for _ in range(20):
        d, m = rng.standard_normal(6).astype(np.float32), rng.standard_normal(6).astype(np.float32)
        b, a = both(d, m)
        np.testing.assert_allclose(b, winograd.B_T64 @ d, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(a, winograd.A_T64 @ m, rtol=1e-6, atol=1e-6)


def test_float32_error_is_a_few_millionths_of_the_largest_output():
    """The accuracy that makes it a drop-in: 256 channels in float32 within 1e-5 of the float64
    convolution, relative to the output's largest value (the points 0, ±1, 1/2, -2 measured 4e-6)."""
    from poolcli.kernels import conv as kernels

    rng = np.random.default_rng(2)
    x = rng.standard_normal((256, 28, 28)).astype(np.float32)
    weight = (rng.standard_normal((64, 256, 3, 3)) / 48).astype(np.float32)
    ref = naive_conv2d(x, weight, padding=1)
    prepared = kernels.prepare(weight, None, 1, (1, 1, 1, 1), "winograd")
    out = kernels.convolve(x, prepared, (1, 1, 1, 1), "zeros", (1, 1), (1, 1), (28, 28))
    assert np.abs(out - ref).max() / np.abs(ref).max() < 1e-5


def large_conv(folder, rng, channels=64, out_c=96):
    weight = (rng.standard_normal((out_c, channels, 3, 3)) / np.sqrt(9 * channels)).astype(np.float32)
    bias = rng.standard_normal(out_c).astype(np.float32)
    np.save(folder / "w.npy", weight)
    np.save(folder / "b.npy", bias)
    pipeline = poolcli.Pipeline.from_config({"stages": [
        {"type": "conv", "filters": "w.npy", "bias": "b.npy", "padding": 1, "activation": "relu"}]}, base_dir=folder)
    return pipeline.nodes[0].stage, weight, bias


def test_the_conv_stage_takes_it_on_large_maps_only(tmp_path):
    from poolcli.kernels import conv as kernels

    stage, weight, bias = large_conv(tmp_path, np.random.default_rng(3))
    x = np.random.default_rng(4).standard_normal((64, 41, 37)).astype(np.float32)
    assert stage._plan(x.shape)[2].method == "winograd"
    expected = np.maximum(naive_conv2d(x, weight, bias, padding=1), 0)
    np.testing.assert_allclose(stage(x), expected, rtol=1e-4, atol=1e-5 * np.abs(expected).max())
    small = x[:, :12, :12].copy()  # 9 tiles: a product per tap
    assert stage._plan(small.shape)[2].method == "shifted"
    expected = np.maximum(naive_conv2d(small, weight, bias, padding=1), 0)
    np.testing.assert_allclose(stage(small), expected, rtol=1e-4, atol=1e-5 * np.abs(expected).max())
    assert not kernels.winograd_suits((64, 64, 3, 3), 1, (2, 2), (1, 1), (64, 64))  # strided
    # 512 x 512 channels: weights 4 times larger want 4 times the tiles
    assert kernels.winograd_suits((256, 256, 3, 3), 1, (1, 1), (1, 1), (28, 28))
    assert not kernels.winograd_suits((512, 512, 3, 3), 1, (1, 1), (1, 1), (28, 28))
    assert kernels.winograd_suits((512, 512, 3, 3), 1, (1, 1), (1, 1), (56, 56))
    assert not kernels.winograd_suits((64, 16, 3, 3), 1, (1, 1), (1, 1), (64, 64))  # few input channels


@needs_torch
def test_the_conv_stage_on_a_large_map_equals_torch(tmp_path):
    stage, weight, bias = large_conv(tmp_path, np.random.default_rng(5), channels=128, out_c=64)
    x = np.random.default_rng(6).standard_normal((128, 60, 52)).astype(np.float32)
    import torch

    expected = run(lambda t: F.relu(F.conv2d(t, torch.from_numpy(weight), torch.from_numpy(bias), padding=1)), x)
    np.testing.assert_allclose(stage(x), expected, rtol=1e-4, atol=1e-5 * np.abs(expected).max())


@pytest.mark.parametrize("threads", [1, 2])
def test_blocks_of_tile_rows_and_threads_give_the_same_result(threads):
    """Blocks of one tile row or of all of them, on one thread or two: the same products, so the
    same values to float32 rounding."""
    import numba

    from poolcli.kernels import blas
    from poolcli.kernels import conv as kernels

    rng = np.random.default_rng(7)
    x = rng.standard_normal((16, 30, 27)).astype(np.float32)
    weight = rng.standard_normal((24, 16, 3, 3)).astype(np.float32)
    u = winograd.transform_weights(weight)
    rows, cols = winograd.plane_size(30, 27)
    planes = kernels.pad_planes(x, (1, 1, 1, 1), 0, (1, 1), rows, cols, 0)
    expected = naive_conv2d(x, weight, padding=1)
    saved = numba.get_num_threads()
    numba.set_num_threads(threads)
    try:
        for block in (1, 3, 8):
            out = np.empty((24, 30, 27), np.float32)
            with blas.one_thread():
                winograd.winograd_planes(blas.sgemm(), planes, u, np.zeros(24, np.float32), kernels.NO_RESIDUAL, 0,
                                         np.float32(0), np.float32(0), out, rows, cols, block, threads)
            np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-5 * np.abs(expected).max())
    finally:
        numba.set_num_threads(saved)
