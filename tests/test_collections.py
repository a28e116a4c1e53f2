"""Collections: webdataset tar shards as inputs, and ``run --files-from``.

Shards are real tar files written by :mod:`tarfile` in img2dataset's layout (``KEY.jpg`` beside
``KEY.json`` and ``KEY.txt``); every comparison is against the same files in a folder.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from fixtures import SAMPLE_IMAGES, photo
from poolcli import read_descriptors
from poolcli.errors import PoolcliError
from poolcli.io.inputs import IMAGE_EXTENSIONS, collect_inputs
from poolcli.io.tars import list_members
from poolcli.pipeline import Pipeline
from poolcli.runner import run
from processes import cli

CONFIG = Path(__file__).resolve().parent.parent / "configs" / "retrieval.yaml"
SOURCES = sorted(p for p in SAMPLE_IMAGES.iterdir() if p.suffix in (".png", ".jpg"))[:6]


def sample_json(key: str, source: Path) -> bytes:
    return json.dumps({"url": f"https://example.org/{source.name}", "caption": f"a photo of {source.stem}",
                       "key": key, "status": "success"}).encode()


def add_bytes(archive: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    archive.addfile(info, io.BytesIO(data))


def write_shard(path: Path, sources=SOURCES, folder: Path | None = None, first: int = 0, extra=()) -> Path:
    """A webdataset shard of ``sources`` (and the same image files in ``folder``, if given)."""
    with tarfile.open(path, "w") as archive:
        for index, source in enumerate(sources, first):
            key = f"{index:09d}"
            name = key + source.suffix
            archive.add(source, arcname=name)
            add_bytes(archive, key + ".json", sample_json(key, source))
            add_bytes(archive, key + ".txt", f"a photo of {source.stem}".encode())
            if folder is not None:
                folder.mkdir(exist_ok=True)
                (folder / name).write_bytes(source.read_bytes())
        for name, data in extra:
            add_bytes(archive, name, data)
    return path


def metadata(out: Path) -> list[dict]:
    return [row for part in sorted((out / "metadata").glob("*.parquet")) for row in pq.read_table(part).to_pylist()]


def failures(out: Path) -> list[dict]:
    return [row for part in sorted((out / "failures").glob("*.parquet")) for row in pq.read_table(part).to_pylist()]


@pytest.fixture(scope="module")
def pipeline():
    return Pipeline.from_yaml(CONFIG)


def test_a_shard_gives_the_descriptors_of_its_files_in_a_folder(tmp_path, pipeline):
    shard = write_shard(tmp_path / "00000.tar", folder=tmp_path / "folder", extra=[("README.md", b"# about\n")])
    from_tar = run(pipeline, [str(shard)], tmp_path / "out_tar")
    from_folder = run(pipeline, [str(tmp_path / "folder")], tmp_path / "out_folder")
    ours, theirs = read_descriptors(tmp_path / "out_tar")[0], read_descriptors(tmp_path / "out_folder")[0]
    np.testing.assert_array_equal(ours, theirs)
    assert (from_tar.written, from_tar.failed) == (6, 0)
    assert from_tar.skipped == 1  # README.md; each image's .json and .txt belong to its sample
    assert from_tar.skipped_files == [f"{shard}/README.md"]  # named as a member input is
    rows, folder_rows = metadata(tmp_path / "out_tar"), metadata(tmp_path / "out_folder")
    assert [row["path"] for row in rows] == [f"{shard}/{index:09d}{s.suffix}" for index, s in enumerate(SOURCES)]
    assert rows[2]["url"] == f"https://example.org/{SOURCES[2].name}"
    assert rows[2]["caption"] == f"a photo of {SOURCES[2].stem}" and rows[2]["sample_key"] == "000000002"
    assert all(row["url"] is None and row["caption"] is None for row in folder_rows)  # new columns: null
    same = ("key", "width", "height", "mode", "exif_orientation", "sha256", "shard", "row")
    assert [[r[c] for c in same] for r in rows] == [[r[c] for c in same] for r in folder_rows]
    schema = pq.read_schema(next((tmp_path / "out_tar" / "metadata").glob("*.parquet")))
    assert schema.names == ["key", "path", "width", "height", "mode", "exif_orientation", "sha256", "shard", "row",
                            "url", "caption", "sample_key"]


def test_shards_globs_and_folders_make_one_sorted_list(tmp_path):
    write_shard(tmp_path / "b.tar", SOURCES[:2])
    write_shard(tmp_path / "a.tar", SOURCES[2:4], first=2)
    photo().save(tmp_path / "c.png")
    listing = collect_inputs([str(tmp_path / "*.tar"), str(tmp_path / "c.png")])
    assert [os.path.relpath(f, tmp_path) for f in listing.files] == [
        f"a.tar/000000002{SOURCES[2].suffix}", f"a.tar/000000003{SOURCES[3].suffix}",
        f"b.tar/000000000{SOURCES[0].suffix}", f"b.tar/000000001{SOURCES[1].suffix}", "c.png"]
    assert listing.root == str(tmp_path) and listing.relative(0) == f"a.tar/000000002{SOURCES[2].suffix}"
    assert listing.part(3, 5).source(4) == str(tmp_path / "c.png")
    assert listing.part(3, 5).source(3).name == f"000000001{SOURCES[1].suffix}"


def test_list_members_names_the_members_it_skips(tmp_path):
    shard = write_shard(tmp_path / "s.tar", SOURCES[:2], extra=[("notes/b.md", b"b"), ("a.csv", b"a,b\n")])
    members, skipped = list_members(str(shard), IMAGE_EXTENSIONS)
    assert [m.name for m in members] == [f"00000000{i}{s.suffix}" for i, s in enumerate(SOURCES[:2])]
    assert skipped == [f"{shard}/notes/b.md", f"{shard}/a.csv"]  # in archive order; sidecars are not skipped
    listing = collect_inputs([str(shard), str(shard)])  # named twice: each skipped member once
    assert listing.skipped_files == (f"{shard}/a.csv", f"{shard}/notes/b.md")


def test_a_file_named_as_an_input_is_not_skipped_by_its_folders_walk(tmp_path):
    photo().save(tmp_path / "c.png")
    (tmp_path / "notes.txt").write_text("not an image\n")
    assert collect_inputs([str(tmp_path)]).skipped_files == (str(tmp_path / "notes.txt"),)
    listing = collect_inputs([str(tmp_path), str(tmp_path / "notes.txt")])  # named: an input (a failure row)
    assert listing.files == (str(tmp_path / "c.png"), str(tmp_path / "notes.txt")) and listing.skipped_files == ()


def test_a_tar_in_a_walked_folder_is_not_opened(tmp_path):
    write_shard(tmp_path / "shard.tar", SOURCES[:2])
    photo().save(tmp_path / "c.png")
    listing = collect_inputs([str(tmp_path)])
    assert listing.files == (str(tmp_path / "c.png"),) and listing.skipped == 1


def test_broken_members_and_truncated_shards_are_failure_rows(tmp_path, pipeline):
    """A member that is no image, one cut short, and the shard that ends there: three failure
    rows, every other member written."""
    whole = write_shard(tmp_path / "whole.tar", SOURCES[:3], extra=[("000000009.jpg", b"not a JPEG at all\n")])
    data = whole.read_bytes()
    with tarfile.open(whole) as archive:
        last = archive.getmember(f"000000002{SOURCES[2].suffix}")
    cut = tmp_path / "cut.tar"
    cut.write_bytes(data[:last.offset_data + last.size // 2])  # inside the third image's bytes
    summary = run(pipeline, [str(whole), str(cut)], tmp_path / "out")
    assert (summary.written, summary.failed) == (3 + 2, 2 + 1)
    reasons = {os.path.relpath(row["path"], tmp_path): row["error"] for row in failures(tmp_path / "out")}
    assert reasons == {
        "whole.tar/000000009.jpg": "cannot identify image file: not PNG, JPEG, BMP, TIFF, WebP, GIF, AVIF, HEIC or .npy "
                                   "content",
        f"cut.tar/000000002{SOURCES[2].suffix}": f"truncated tar: 000000002{SOURCES[2].suffix} has {last.size // 2} "
                                                 f"of its {last.size} bytes in the shard",
        "cut.tar": f"truncated tar: cannot read past member 000000002{SOURCES[2].suffix}: unexpected end of data",
    }


def test_a_shard_that_ends_without_its_end_blocks(tmp_path, pipeline):
    whole = write_shard(tmp_path / "whole.tar", SOURCES[:2])
    with tarfile.open(whole) as archive:
        last = archive.getmember("000000001.txt")
    cut = tmp_path / "cut.tar"
    cut.write_bytes(whole.read_bytes()[:last.offset_data + 512])  # after the last member's (padded) data
    summary = run(pipeline, [str(cut)], tmp_path / "out")
    assert (summary.written, summary.failed) == (2, 1)
    assert [(row["path"], row["error"]) for row in failures(tmp_path / "out")] == [
        (str(cut), "truncated tar: it ends after member 000000001.txt without its end-of-archive blocks; members may "
                   "be missing")]


def test_a_shard_cut_inside_a_header_and_a_file_that_is_no_tar(tmp_path, pipeline):
    whole = write_shard(tmp_path / "whole.tar", SOURCES[:2])
    with tarfile.open(whole) as archive:
        second = archive.getmember(f"000000001{SOURCES[1].suffix}")
    (tmp_path / "cut.tar").write_bytes(whole.read_bytes()[:second.offset + 100])  # in the second image's header
    (tmp_path / "notes.tar").write_text("these are notes, not an archive\n")
    summary = run(pipeline, [str(tmp_path / "cut.tar"), str(tmp_path / "notes.tar")], tmp_path / "out")
    assert (summary.written, summary.failed) == (1, 2)  # cut.tar's first image is whole; notes.tar has none
    reasons = {os.path.relpath(row["path"], tmp_path): row["error"] for row in failures(tmp_path / "out")}
    assert reasons["cut.tar"].startswith("truncated tar: ")
    assert reasons["notes.tar"].startswith("not a tar archive: ")


def test_members_are_read_in_place_never_extracted(tmp_path, pipeline, monkeypatch):
    shard = write_shard(tmp_path / "shard.tar", SOURCES[:3])
    for method in ("extract", "extractall", "extractfile"):
        monkeypatch.setattr(tarfile.TarFile, method, lambda *a, **k: pytest.fail("a member was extracted"))
    before = set(tmp_path.rglob("*"))
    run(pipeline, [str(shard)], tmp_path / "out")
    assert {p for p in set(tmp_path.rglob("*")) - before if not p.is_relative_to(tmp_path / "out")} == set()


def test_shards_resume_and_split_into_output_shards_as_files_do(tmp_path, pipeline):
    shard = write_shard(tmp_path / "shard.tar", SOURCES)
    whole = run(pipeline, [str(shard)], tmp_path / "one")
    split = run(pipeline, [str(shard)], tmp_path / "three", shard_size=2)
    assert split.shards == 3
    np.testing.assert_array_equal(read_descriptors(tmp_path / "one")[0], read_descriptors(tmp_path / "three")[0])
    (tmp_path / "three" / "stats" / "part-00001.json").unlink()  # as if killed while writing shard 1
    resumed = run(pipeline, [str(shard)], tmp_path / "three", shard_size=2)
    assert (resumed.shards_resumed, resumed.processed, resumed.written) == (2, 2, whole.written)
    assert metadata(tmp_path / "three") == [dict(row, shard=row["key"] // 2, row=row["key"] % 2)
                                            for row in metadata(tmp_path / "one")]


def test_a_shard_at_an_fsspec_url(tmp_path, pipeline):
    fsspec = pytest.importorskip("fsspec")
    shard = write_shard(tmp_path / "00000.tar", SOURCES[:3], folder=tmp_path / "folder")
    memory = fsspec.filesystem("memory")
    memory.pipe("/photos-shards/00000.tar", shard.read_bytes())
    try:
        summary = run(pipeline, ["memory://photos-shards/00000.tar"], tmp_path / "out")
        run(pipeline, [str(tmp_path / "folder")], tmp_path / "out_folder")
    finally:
        memory.rm("/photos-shards", recursive=True)
    assert summary.written == 3
    np.testing.assert_array_equal(read_descriptors(tmp_path / "out")[0], read_descriptors(tmp_path / "out_folder")[0])
    path = metadata(tmp_path / "out")[0]["path"]  # fsspec writes memory:// URLs with a third slash
    assert path.startswith("memory://") and path.endswith(f"/photos-shards/00000.tar/000000000{SOURCES[0].suffix}")
    assert metadata(tmp_path / "out")[0]["caption"] == f"a photo of {SOURCES[0].stem}"


def test_a_missing_shard_is_an_error_of_the_run(tmp_path):
    with pytest.raises(PoolcliError, match="input not found: .*missing.tar"):
        collect_inputs([str(tmp_path / "missing.tar")], listed=[])
    with pytest.raises(PoolcliError, match="input not found: .*missing.tar"):
        collect_inputs([], listed=[str(tmp_path / "missing.tar")])


# --- run --files-from, through the real command ------------------------------------------------


def test_files_from_a_file_and_from_stdin(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for index, source in enumerate(SOURCES[:3]):
        Image.open(source).save(folder / f"{index}.png")
    shard = write_shard(tmp_path / "shard.tar", SOURCES[3:5], first=3)
    lines = [str(folder / "2.png"), "", str(folder / "0.png"), str(shard), str(folder / "gone.png")]
    (tmp_path / "list.txt").write_text("\n".join(lines) + "\n")

    from_file = cli("run", CONFIG, "--files-from", tmp_path / "list.txt", "-o", tmp_path / "out", "--no-progress",
                    "--json")
    assert from_file.returncode == 3, from_file.stderr  # the missing file is a failure row
    rows = metadata(tmp_path / "out")
    assert [os.path.relpath(r["path"], tmp_path) for r in rows] == [
        "photos/0.png", "photos/2.png", f"shard.tar/000000003{SOURCES[3].suffix}", f"shard.tar/000000004{SOURCES[4].suffix}"]
    assert [(os.path.relpath(f["path"], tmp_path), f["error"].split(":")[0]) for f in failures(tmp_path / "out")] == [
        ("photos/gone.png", "cannot read file")]

    from_stdin = cli("run", CONFIG, str(folder / "1.png"), "--files-from", "-", "-o", tmp_path / "out_stdin",
                     "--no-progress", input="\n".join(lines) + "\n")
    assert from_stdin.returncode == 3, from_stdin.stderr
    assert [os.path.relpath(r["path"], tmp_path) for r in metadata(tmp_path / "out_stdin")][:3] == [
        "photos/0.png", "photos/1.png", "photos/2.png"]
    rerun = cli("run", CONFIG, "--files-from", tmp_path / "list.txt", "-o", tmp_path / "out", "--no-progress", "--json")
    assert json.loads(rerun.stdout)["shards_resumed"] == 1  # the same list resumes


def test_run_needs_inputs_or_a_file_list(tmp_path):
    done = cli("run", CONFIG, "-o", tmp_path / "out")
    assert done.returncode == 2 and "give at least one INPUT, or --files-from FILE" in done.stderr
    done = cli("run", CONFIG, "--files-from", tmp_path / "none.txt", "-o", tmp_path / "out")
    assert done.returncode == 1 and "cannot read the file list" in done.stderr


def test_ray_runs_shards_of_tar_members_as_the_local_engine_does(tmp_path, pipeline):
    ray = pytest.importorskip("ray")
    shard = write_shard(tmp_path / "00000.tar", SOURCES[:5], extra=[("000000009.jpg", b"not a JPEG\n")])
    run(pipeline, [str(shard)], tmp_path / "local", shard_size=2)
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="ERROR")
    try:
        summary = run(pipeline, [str(shard)], tmp_path / "ray", shard_size=2, engine="ray")
    finally:
        ray.shutdown()
    assert (summary.shards, summary.written, summary.failed) == (3, 5, 1)
    np.testing.assert_array_equal(read_descriptors(tmp_path / "ray")[0], read_descriptors(tmp_path / "local")[0])
    assert metadata(tmp_path / "ray") == metadata(tmp_path / "local")
    assert failures(tmp_path / "ray") == failures(tmp_path / "local")
