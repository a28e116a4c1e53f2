"""The output folder of a run (SPEC section 5): layout, shards, resume, refusal, failures."""

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

import poolcli
from poolcli import OutputError, Pipeline, PoolcliError
from poolcli.runner import run

SAMPLES = Path(__file__).parent.parent / "sample_images"
DESCRIPTOR = {"input": {"resize": {"longest": 48}}, "stages": [{"type": "max_pool", "kernel_size": 2}, {"type": "gem"}]}
MAPS = {"input": {"color": "gray", "resize": {"size": [16, 12]}}, "stages": [{"type": "avg_pool", "kernel_size": 2}]}


@pytest.fixture
def images(tmp_path):
    """Seven small real-photo crops in two folders, plus a text file to skip and a broken image."""
    folder = tmp_path / "images"
    (folder / "sub").mkdir(parents=True)
    photo = Image.open(sorted(SAMPLES.glob("*.*g"))[0]).convert("RGB")
    for i in range(7):
        crop = photo.crop((i * 5, i * 3, i * 5 + 40 + i, i * 3 + 30))
        crop.save(folder / ("sub" if i % 2 else ".") / f"img{i}.png")
    (folder / "notes.txt").write_text("not an image")
    (folder / "broken.jpg").write_text("not a jpeg either")
    return folder


def test_descriptor_run_writes_the_spec_layout(tmp_path, images):
    out = tmp_path / "out"
    summary = run(Pipeline.from_config(DESCRIPTOR), [str(images)], out, shard_size=3)
    assert (summary.written, summary.failed, summary.skipped, summary.shards) == (7, 1, 1, 3)
    assert summary.skipped_files == [str(images / "notes.txt")]
    assert summary.to_dict()["skipped_files"] == [str(images / "notes.txt")]  # run --json's
    names = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert names == [
        "descriptors/part-00000.npy", "descriptors/part-00001.npy", "descriptors/part-00002.npy",
        "failures/part-00000.parquet",
        "manifest.json",
        "metadata/part-00000.parquet", "metadata/part-00001.parquet", "metadata/part-00002.parquet",
        "pipeline.yaml",
        "stats/part-00000.json", "stats/part-00001.json", "stats/part-00002.json",
    ]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["kind"] == "descriptors" and manifest["dim"] == 3 and manifest["complete"]
    assert manifest["counts"] == {"inputs": 8, "written": 7, "failed": 1, "skipped": 1, "shards": 3}
    vectors, meta = poolcli.read_descriptors(out)
    assert vectors.shape == (7, 3) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1, rtol=1e-5)
    assert meta.column("key").to_pylist() == [1, 2, 3, 4, 5, 6, 7]  # key 0 is broken.jpg
    paths = meta.column("path").to_pylist()
    assert paths == sorted(paths)
    failures = pq.read_table(out / "failures" / "part-00000.parquet").to_pylist()
    assert [(f["key"], Path(f["path"]).name, f["stage"]) for f in failures] == [(0, "broken.jpg", "load")]
    # row i of a shard's metadata describes row i of its descriptors
    pipe = Pipeline.from_config(DESCRIPTOR)
    for row, vector in zip(meta.to_pylist(), vectors):
        np.testing.assert_allclose(vector, pipe(poolcli.load_image(row["path"], pipe.config.input)), rtol=1e-5)


def test_maps_run_writes_one_file_per_image(tmp_path, images):
    out = tmp_path / "out"
    summary = run(Pipeline.from_config(MAPS), [str(images)], out, shard_size=4)
    assert summary.written == 7 and summary.map_shape == [1, 8, 6]
    meta = pq.read_table(out / "metadata" / "part-00000.parquet").to_pylist()
    assert meta[0]["map_file"] == "maps/img0.png.npy"
    assert (out / "maps" / "sub" / "img1.png.npy").exists()
    assert np.load(out / "maps" / "sub" / "img1.png.npy").shape == (1, 8, 6)
    assert not (out / "descriptors").exists()
    with pytest.raises(OutputError, match="feature maps, not descriptors"):
        poolcli.read_descriptors(out)


def test_float16_output(tmp_path, images):
    config = {**DESCRIPTOR, "output": {"dtype": "float16"}}
    run(Pipeline.from_config(config), [str(images)], tmp_path / "out")
    vectors, _ = poolcli.read_descriptors(tmp_path / "out")
    assert vectors.dtype == np.float16 and vectors.shape == (7, 3)


def test_resume_redoes_only_incomplete_shards(tmp_path, images):
    out = tmp_path / "out"
    pipe = Pipeline.from_config(DESCRIPTOR)
    run(pipe, [str(images)], out, shard_size=3)
    first, meta = poolcli.read_descriptors(out)
    kept = (out / "descriptors" / "part-00000.npy").stat().st_mtime_ns
    (out / "stats" / "part-00001.json").unlink()  # as if killed while writing shard 1
    (out / "metadata" / "part-00001.parquet").unlink()
    summary = run(pipe, [str(images)], out, shard_size=3)
    assert summary.shards_resumed == 2
    assert (out / "descriptors" / "part-00000.npy").stat().st_mtime_ns == kept
    again, meta_again = poolcli.read_descriptors(out)
    np.testing.assert_array_equal(first, again)
    assert meta.equals(meta_again)


def test_another_run_in_the_same_folder_is_refused(tmp_path, images):
    out = tmp_path / "out"
    run(Pipeline.from_config(DESCRIPTOR), [str(images)], out)
    other = {**DESCRIPTOR, "stages": [{"type": "mac"}]}
    with pytest.raises(OutputError, match="holds another run \\(different config\\)"):
        run(Pipeline.from_config(other), [str(images)], out)
    with pytest.raises(OutputError, match="different input list"):
        run(Pipeline.from_config(DESCRIPTOR), [str(images / "sub")], out)
    (out / "mine.txt").write_text("user data")
    summary = run(Pipeline.from_config(other), [str(images)], out, overwrite=True)
    assert summary.written == 7 and (out / "mine.txt").read_text() == "user data"
    assert poolcli.read_descriptors(out)[0].shape == (7, 3)


def test_output_inside_an_input_folder_is_not_read(tmp_path, images):
    out = images / "out"
    run(Pipeline.from_config(DESCRIPTOR), [str(images)], out)
    summary = run(Pipeline.from_config(DESCRIPTOR), [str(images)], out)
    assert summary.inputs == 8 and summary.shards_resumed == 1


def test_shape_failures_name_the_stage(tmp_path, images):
    config = {"stages": [{"type": "max_pool", "kernel_size": 35, "name": "big"}, {"type": "gem"}]}
    summary = run(Pipeline.from_config(config), [str(images)], tmp_path / "out")
    stages = {f["stage"] for f in summary.failures}
    assert stages == {"load", "big"}
    assert summary.written + summary.failed == 8


def test_bad_inputs_and_options(tmp_path, images):
    pipe = Pipeline.from_config(DESCRIPTOR)
    with pytest.raises(PoolcliError, match="input not found"):
        run(pipe, [str(tmp_path / "absent")], tmp_path / "out")
    with pytest.raises(PoolcliError, match="no file matches"):
        run(pipe, [str(tmp_path / "*.nothing")], tmp_path / "out")
    with pytest.raises(PoolcliError, match="--shard-size must be >= 1"):
        run(pipe, [str(images)], tmp_path / "out", shard_size=0)
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match="is not a folder"):
        run(pipe, [str(images)], tmp_path / "file")


def test_globs_and_files(tmp_path, images):
    summary = run(Pipeline.from_config(DESCRIPTOR), [str(images / "sub" / "*.png"), str(images / "img0.png")], tmp_path / "out")
    assert summary.inputs == 4 and summary.written == 4


def test_a_descriptor_of_another_length_is_a_failure_row(tmp_path, images):
    """The config fixes the length (3 channels here): a 1-channel .npy cannot join the run."""
    np.save(images / "a_first.npy", np.ones((1, 40, 40), np.float32))
    summary = run(Pipeline.from_config(DESCRIPTOR), [str(images)], tmp_path / "out")
    assert summary.dim == 3
    odd = [f for f in summary.failures if f["path"].endswith("a_first.npy")]
    assert len(odd) == 1 and "descriptor length 1 differs from the run's 3" in odd[0]["error"]
    assert summary.written == 7
