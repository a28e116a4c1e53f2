"""configs/retrieval.yaml: its fixed weights are what the script writes, and its descriptor is
exactly mirror-invariant and unchanged by brightness offsets."""

import importlib.util
from pathlib import Path

import numpy as np

from poolcli import Pipeline, load_image

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "configs" / "retrieval.yaml"
_spec = importlib.util.spec_from_file_location("make_retrieval_weights", ROOT / "scripts" / "make_retrieval_weights.py")
make_retrieval_weights = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(make_retrieval_weights)


def test_shipped_weights_are_the_scripts():
    folder = ROOT / "configs" / "retrieval"
    for width in (4, 2):
        for part in ("sym", "anti"):
            np.testing.assert_array_equal(np.load(folder / f"edges_fold{width}_{part}.npy"),
                                          make_retrieval_weights.fold(6, width, part))
            np.testing.assert_array_equal(np.load(folder / f"blobs_fold{width}_{part}.npy"),
                                          make_retrieval_weights.fold(1, width, part, 200.0))


def test_folds_are_orthonormal():
    for width in (4, 2):
        rows = np.concatenate([make_retrieval_weights.FOLDS[width][0], make_retrieval_weights.FOLDS[width][1]])
        np.testing.assert_allclose(rows @ rows.T, np.eye(width), atol=1e-12)


def test_descriptor_is_mirror_invariant_and_ignores_brightness_offsets():
    pipe = Pipeline.from_yaml(CONFIG)
    x = load_image(ROOT / "sample_images" / "chelsea.png", pipe.config.input)
    y = pipe(x)
    assert y.shape == (140,) and abs(np.linalg.norm(y) - 1) < 1e-6
    np.testing.assert_allclose(pipe(np.ascontiguousarray(x[:, :, ::-1])), y, atol=1e-6)
    np.testing.assert_allclose(pipe(x + np.float32(0.25)), y, atol=1e-5)
