"""A run saves its work inside a shard as it goes: progress moves per image, and a killed run
redoes at most a chunk's worth of images (CHUNK_IMAGES or CHUNK_SECONDS of work), whatever
--shard-size is, while the finished folder holds the same files, byte for byte, as an
uninterrupted run."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from PIL import Image

from poolcli import Pipeline
from poolcli import runner
from poolcli.runner import run
from processes import cli, cli_process

SAMPLES = Path(__file__).parent.parent / "sample_images"
DESCRIPTOR = {"input": {"resize": {"longest": 40}}, "stages": [{"type": "max_pool", "kernel_size": 2}, {"type": "gem"}]}
MAPS = {"input": {"color": "gray", "resize": {"size": [16, 12]}}, "stages": [{"type": "avg_pool", "kernel_size": 2}]}
FLOAT16 = {**DESCRIPTOR, "output": {"dtype": "float16"}}


def make_images(folder: Path, count: int, size=(24, 18)) -> Path:
    """``count`` crops of a real photo, with a broken image among them (a failure row)."""
    folder.mkdir(parents=True)
    photo = Image.open(SAMPLES / "chelsea.png").convert("RGB")
    for i in range(count):
        x, y = (i * 7) % (photo.width - size[0]), (i * 5) % (photo.height - size[1])
        photo.crop((x, y, x + size[0] + i % 3, y + size[1])).save(folder / f"img{i:05d}.png", compress_level=1)
    (folder / "img00004b.jpg").write_text("not a jpeg")  # sorts among the first images
    return folder


def files(out: Path) -> dict[str, bytes]:
    """Every file of a run folder but the shards' stats (which hold their time) and the lock."""
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*"))
            if p.is_file() and p.parent.name != "stats" and p.name != ".lock"}


class Interrupt:
    """A progress callback that stops the run (as Ctrl-C does) once ``at`` images are done."""

    def __init__(self, at: int):
        self.at, self.calls = at, []

    def __call__(self, done, total):
        self.calls.append(done)
        if done >= self.at:
            raise KeyboardInterrupt


@pytest.mark.parametrize("config", [DESCRIPTOR, MAPS, FLOAT16], ids=["descriptors", "maps", "float16"])
def test_an_interrupted_shard_keeps_its_chunks_and_ends_byte_identical(tmp_path, monkeypatch, config):
    monkeypatch.setattr(runner, "CHUNK_IMAGES", 3)
    images = make_images(tmp_path / "images", 20)
    reference = tmp_path / "reference"
    run(Pipeline.from_config(config), [str(images)], reference, shard_size=100)
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        run(Pipeline.from_config(config), [str(images)], out, shard_size=100, progress=Interrupt(12))
    chunks = sorted(p.name for p in (out / ".partial" / "part-00000").glob("chunk-*.json"))
    assert chunks == [f"chunk-{a:012d}-{a + 3:012d}.json" for a in (0, 3, 6, 9)]
    assert not (out / "stats" / "part-00000.json").exists()

    done = []
    summary = run(Pipeline.from_config(config), [str(images)], out, shard_size=100, progress=lambda d, t: done.append(d))
    assert summary.processed == 21 - 12  # the 12 images of the saved chunks are not redone
    assert done == list(range(12, 22))
    assert (summary.written, summary.failed) == (20, 1)
    assert files(out) == files(reference)  # no .partial left, every byte the same
    assert ".partial" not in {p.name for p in out.iterdir()}


def test_a_chunk_is_saved_after_chunk_seconds_of_work(tmp_path, monkeypatch):
    monkeypatch.setattr(runner, "CHUNK_SECONDS", 0.0)  # every image is half a minute of work
    images = make_images(tmp_path / "images", 5)
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        run(Pipeline.from_config(DESCRIPTOR), [str(images)], out, shard_size=100, progress=Interrupt(3))
    assert len(list((out / ".partial" / "part-00000").glob("chunk-*.json"))) == 3


def test_progress_moves_per_image_whatever_the_shard_size(tmp_path):
    images = make_images(tmp_path / "images", 9)
    done = []
    run(Pipeline.from_config(DESCRIPTOR), [str(images)], tmp_path / "out", shard_size=10_000,
        progress=lambda d, total: done.append((d, total)))
    assert done == [(d, 10) for d in range(11)]


def test_chunks_of_another_run_are_removed_by_overwrite(tmp_path, monkeypatch):
    monkeypatch.setattr(runner, "CHUNK_IMAGES", 2)
    images = make_images(tmp_path / "images", 8)
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        run(Pipeline.from_config(DESCRIPTOR), [str(images)], out, shard_size=100, progress=Interrupt(5))
    assert (out / ".partial").is_dir()
    summary = run(Pipeline.from_config(MAPS), [str(images)], out, shard_size=100, overwrite=True)
    assert summary.processed == 9 and not (out / ".partial").exists()


def test_a_killed_real_run_redoes_at_most_one_chunk(tmp_path):
    """SIGKILL in the middle of a real run's only shard (the default 10,000 images a shard):
    the same command again computes only what the saved chunks do not hold, and the folder
    ends with every byte of an uninterrupted run."""
    images = make_images(tmp_path / "images", 1500, size=(8, 6))
    config = tmp_path / "spoc.yaml"
    config.write_text("stages: [{type: spoc}]\n")
    reference = tmp_path / "reference"
    done = cli("run", config, images, "-o", reference, "--no-progress")
    assert done.returncode == 3, done.stderr
    out = tmp_path / "out"
    process = cli_process("run", config, images, "-o", out, "--no-progress")
    chunks = out / ".partial" / "part-00000"
    deadline = time.monotonic() + 120
    while process.is_alive() and time.monotonic() < deadline and not any(chunks.glob("chunk-*.json")):
        time.sleep(0.002)
    process.kill()
    process.join(60)
    assert not (out / "stats" / "part-00000.json").exists(), "the run ended before it could be killed"
    saved = runner.CHUNK_IMAGES * len(list(chunks.glob("chunk-*.json")))
    assert saved >= runner.CHUNK_IMAGES
    resumed = cli("run", config, images, "-o", out, "--no-progress", "--json")
    assert resumed.returncode == 3, resumed.stderr
    assert json.loads(resumed.stdout)["processed"] == 1501 - saved
    assert files(out) == files(reference)
