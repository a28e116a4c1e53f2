"""PCA whitening: learning (fit-whiten) against cirtorch's pcawhitenlearn written out in NumPy,
the ``whiten`` stage against its whitenapply, the file format, and the errors."""

import json
import subprocess
import sys

import numpy as np
import pytest
from typer.testing import CliRunner

from poolcli import Pipeline, read_descriptors
from poolcli.cli import app
from poolcli.errors import ConfigError, PoolcliError, ShapeError
from poolcli.retrieval.whitening import fit_whitening, learn_whitening, save_whitening
from poolcli.stages.whiten import Whiten, read_whitening

runner = CliRunner()


def cirtorch_pcawhitenlearn(X):
    """cnnimageretrieval-pytorch's pcawhitenlearn, as written there: X is (D, N), columns are
    descriptors; m (D, 1), P (D, D)."""
    N = X.shape[1]
    m = X.mean(axis=1, keepdims=True)
    Xc = X - m
    Xcov = np.dot(Xc, Xc.T)
    Xcov = (Xcov + Xcov.T) / (2 * N)
    eigval, eigvec = np.linalg.eig(Xcov)
    order = eigval.argsort()[::-1]
    eigval = eigval[order]
    eigvec = eigvec[:, order]
    P = np.dot(np.linalg.inv(np.sqrt(np.diag(eigval))), eigvec.T)
    return m, P


def cirtorch_whitenapply(X, m, P, dimensions=None):
    """cnnimageretrieval-pytorch's whitenapply: X (D, N) columns."""
    if not dimensions:
        dimensions = P.shape[0]
    X = np.dot(P[:dimensions, :], X - m)
    return X / (np.linalg.norm(X, ord=2, axis=0, keepdims=True) + 1e-6)


def l2n(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def correlated(rng, n, d):
    return rng.standard_normal((n, d)) @ rng.standard_normal((d, d)) + rng.standard_normal(d)


@pytest.mark.parametrize("n, d", [(50, 8), (400, 32), (9, 8)])
def test_learn_equals_cirtorch_up_to_the_sign_of_each_component(rng, n, d):
    x = correlated(rng, n, d)
    mean, projection = learn_whitening(x)
    m, P = cirtorch_pcawhitenlearn(x.T)
    np.testing.assert_allclose(mean, m[:, 0], rtol=1e-12, atol=1e-12)
    assert projection.shape == (d, d)
    signs = np.sign(np.sum(projection * P, axis=1))
    np.testing.assert_allclose(projection, P * signs[:, None], rtol=1e-6, atol=1e-8)
    # Whitened, the descriptors have the identity as covariance.
    white = (x - mean) @ projection.T
    np.testing.assert_allclose(white.T @ white / n, np.eye(d), atol=1e-8)


def test_learn_fixes_the_sign_and_keeps_the_strongest_first(rng):
    x = correlated(rng, 100, 6)
    mean, projection = learn_whitening(x, dims=3)
    assert projection.shape == (3, 6)
    assert np.all(projection[np.arange(3), np.argmax(np.abs(projection), axis=1)] > 0)
    variances = 1 / np.sum(projection**2, axis=1)
    assert np.all(np.diff(variances) <= 0)
    np.testing.assert_array_equal(learn_whitening(x[::-1].copy(), dims=3)[1].round(8), projection.round(8))


def test_learn_refuses_directions_without_variance(rng):
    x = correlated(rng, 5, 8)  # 5 descriptors span at most 4 directions
    assert learn_whitening(x)[1].shape == (4, 8)
    with pytest.raises(PoolcliError, match=r"dims 5: the 5 descriptors vary in only 4 of their 8 directions; give dims 4 or less \(learn from at least 9"):
        learn_whitening(x, dims=5)
    with pytest.raises(PoolcliError, match="all 3 descriptors are the same"):
        learn_whitening(np.ones((3, 4)))
    with pytest.raises(PoolcliError, match="at least 2 descriptors"):
        learn_whitening(np.ones((1, 4)))
    with pytest.raises(PoolcliError, match="NaN or infinity"):
        learn_whitening(np.array([[1.0, np.nan], [0.0, 1.0]]))


@pytest.mark.parametrize("dims", [None, 1, 5])
def test_stage_equals_cirtorch_whitenapply(rng, tmp_path, dims):
    x = correlated(rng, 60, 12)
    m, P = cirtorch_pcawhitenlearn(x.T)
    np.savez(tmp_path / "lw.npz", m=m, P=P)  # a cirtorch Lw, stored as it stores it
    pipe = Pipeline.from_config({"stages": [{"type": "flatten"}, {"type": "whiten", "file": "lw.npz", "dims": dims}],
                                 "output": {"normalize": "none"}}, base_dir=tmp_path)
    query = correlated(rng, 7, 12)
    got = np.stack([pipe(q.astype(np.float32).reshape(1, 3, 4)) for q in query])
    assert got.dtype == np.float32 and got.shape == (7, dims or 12)
    # The stage normalises its input first; the reference sees the same float32 values.
    expected = cirtorch_whitenapply(l2n(query.astype(np.float32).astype(np.float64)).T, m, P, dims).T
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_the_saved_file_is_cirtorchs_lw(rng, tmp_path):
    x = correlated(rng, 40, 5)
    mean, projection = learn_whitening(x, dims=3)
    save_whitening(tmp_path / "w.npz", mean, projection)
    with np.load(tmp_path / "w.npz") as data:
        assert sorted(data.files) == ["P", "m"]
        assert data["m"].shape == (5, 1) and data["P"].shape == (3, 5)
        np.testing.assert_array_equal(data["m"][:, 0], mean)
    m, P = read_whitening(tmp_path / "w.npz")
    np.testing.assert_array_equal(P, projection)


def test_file_resolves_against_the_config_folder(rng, tmp_path):
    folder = tmp_path / "cfg"
    folder.mkdir()
    save_whitening(folder / "w.npz", *learn_whitening(correlated(rng, 30, 3)))
    (folder / "pipe.yaml").write_text("stages:\n  - {type: gem}\n  - {type: whiten, file: w.npz, dims: 2}\n")
    pipe = Pipeline.from_yaml(folder / "pipe.yaml")
    assert pipe.kind == "descriptors" and pipe.trace((3, 8, 8))[-1].out_shape == (2,)
    assert pipe.trace((3, 8, 8))[-1].params == 2 * 3 + 3
    elsewhere = tmp_path / "elsewhere.yaml"  # a file:// URL is its absolute path, not under the config's folder
    elsewhere.write_text(f"stages:\n  - {{type: gem}}\n  - {{type: whiten, file: '{(folder / 'w.npz').as_uri()}', dims: 2}}\n")
    x = rng.random((3, 8, 8), dtype=np.float32)
    np.testing.assert_array_equal(Pipeline.from_yaml(elsewhere)(x), pipe(x))


@pytest.mark.parametrize("content, message", [
    (None, r"stages\[1\] \(whiten\)\.file: file not found: .*missing\.npz"),
    (b"not a zip", r"cannot read .*w\.npz as a whitening \.npz"),
    ({"mean": np.zeros(3)}, r"holds no m or P"),
    ({"m": np.zeros(3), "P": np.zeros((2, 4))}, r"P in .* must have shape \(K, 3\) to match m, got \(2, 4\)"),
    ({"m": np.zeros(3), "P": np.full((2, 3), np.nan)}, r"P in .* contains NaN or infinity"),
])
def test_bad_files_are_config_errors(tmp_path, content, message):
    name = "missing.npz" if content is None else "w.npz"
    if isinstance(content, bytes):
        (tmp_path / name).write_bytes(content)
    elif content is not None:
        np.savez(tmp_path / name, **content)
    with pytest.raises(ConfigError, match=message):
        Pipeline.from_config({"stages": [{"type": "gem"}, {"type": "whiten", "file": name}]}, base_dir=tmp_path)


def test_dims_and_length_mismatches(rng, tmp_path):
    save_whitening(tmp_path / "w.npz", *learn_whitening(correlated(rng, 30, 4), dims=2))
    with pytest.raises(ConfigError, match=r"whiten\)\: dims: w\.npz holds 2 components, got dims 3"):
        Pipeline.from_config({"stages": [{"type": "gem"}, {"type": "whiten", "file": "w.npz", "dims": 3}]}, base_dir=tmp_path)
    pipe = Pipeline.from_config({"stages": [{"type": "gem"}, {"type": "whiten", "file": "w.npz"}]}, base_dir=tmp_path)
    with pytest.raises(ShapeError, match=r"stage 'whiten1' \(whiten\): the whitening in w\.npz was learnt on descriptors of length 4, this one has length 3"):
        pipe.trace((3, 8, 8))
    with pytest.raises(ShapeError, match="needs a vector"):
        Pipeline.from_config({"stages": [{"type": "whiten", "file": "w.npz"}]}, base_dir=tmp_path).trace((4, 2, 2))


def test_from_arrays_example(rng):
    stage = Whiten.from_arrays(np.zeros(2), np.array([[0.0, 3.0], [4.0, 0.0]]))
    np.testing.assert_allclose(stage(np.array([1.0, 1.0], np.float32)), np.array([3, 4]) / (5 + 1e-6), rtol=1e-6)


def npy_inputs(folder, rng, count=40):
    folder.mkdir()
    for i in range(count):
        np.save(folder / f"{i:03d}.npy", rng.random((3, 6, 6), dtype=np.float32) * (1 + np.arange(3))[:, None, None])
    return folder


def test_fit_whiten_command_learns_from_a_run(rng, tmp_path):
    inputs = npy_inputs(tmp_path / "in", rng)
    config = tmp_path / "pipe.yaml"
    config.write_text("stages:\n  - {type: adaptive_avg_pool, output_size: 2}\n  - {type: flatten}\n")
    out = tmp_path / "out"
    assert runner.invoke(app, ["run", str(config), str(inputs), "-o", str(out), "--no-progress"]).exit_code == 0
    result = runner.invoke(app, ["fit-whiten", str(out), "-o", str(tmp_path / "w.npz"), "--dims", "6", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["descriptors"] == 40 and summary["dim"] == 12 and summary["dims"] == 6 and 0 < summary["variance"] < 1
    vectors, _ = read_descriptors(out)
    mean, projection = learn_whitening(l2n(vectors.astype(np.float64)), dims=6)
    m, P = read_whitening(tmp_path / "w.npz")
    np.testing.assert_allclose(m, mean, rtol=1e-12)
    np.testing.assert_allclose(P, projection, rtol=1e-9, atol=1e-12)
    # And the stage applies it to the run's own descriptors.
    (tmp_path / "white.yaml").write_text(config.read_text() + "  - {type: whiten, file: w.npz}\n")
    white = Pipeline.from_yaml(tmp_path / "white.yaml")
    x = np.load(inputs / "000.npy")
    expected = cirtorch_whitenapply(l2n(vectors[:1].astype(np.float64)).T, mean[:, None], projection).T[0]
    np.testing.assert_allclose(white(x), expected, rtol=1e-5, atol=1e-6)


def test_fit_whiten_errors(rng, tmp_path):
    result = runner.invoke(app, ["fit-whiten", str(tmp_path / "nothing"), "-o", str(tmp_path / "w.npz")])
    assert result.exit_code == 1 and "no manifest.json" in result.stderr
    inputs = npy_inputs(tmp_path / "in", rng, count=5)
    config = tmp_path / "pipe.yaml"
    config.write_text("stages:\n  - {type: adaptive_avg_pool, output_size: 2}\n  - {type: flatten}\n")
    assert runner.invoke(app, ["run", str(config), str(inputs), "-o", str(tmp_path / "out"), "--no-progress"]).exit_code == 0
    result = runner.invoke(app, ["fit-whiten", str(tmp_path / "out"), "-o", str(tmp_path / "w.npz"), "--dims", "12"])
    assert result.exit_code == 1 and "vary in only 4 of their 12 directions" in result.stderr
    assert not (tmp_path / "w.npz").exists()


def test_fit_whiten_in_a_subprocess(rng, tmp_path):
    inputs = npy_inputs(tmp_path / "in", rng, count=12)
    config = tmp_path / "pipe.yaml"
    config.write_text("stages:\n  - {type: gem}\n")
    run = subprocess.run([sys.executable, "-m", "poolcli", "run", config, inputs, "-o", tmp_path / "out"],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    fit = subprocess.run([sys.executable, "-m", "poolcli", "fit-whiten", tmp_path / "out", "-o", tmp_path / "w.npz"],
                         capture_output=True, text=True)
    assert fit.returncode == 0, fit.stderr
    assert "from 12 descriptors of length 3" in fit.stderr and "different images" in fit.stderr
    assert fit.stdout.strip() == str(tmp_path / "w.npz")
