"""poolcli duplicates: groups of near-duplicates over a whole run, checked against every pair's
cosine similarity computed directly from the run's descriptors."""

import itertools
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps
from typer.testing import CliRunner

import poolcli
from poolcli.cli import app
from poolcli.retrieval.duplicates import choose_threshold, find_duplicates

SAMPLES = Path(__file__).parent.parent / "sample_images"
runner = CliRunner()


@pytest.fixture(scope="module")
def photos_run(tmp_path_factory):
    """The sample photos, with a byte copy of one, a half-size copy of another and a mirrored
    copy of a third, run through the shipped retrieval config."""
    folder = tmp_path_factory.mktemp("dup")
    photos = folder / "photos"
    photos.mkdir()
    originals = sorted(SAMPLES.glob("*.png"))
    for path in originals:
        shutil.copy(path, photos / path.name)
    shutil.copy(originals[0], photos / f"zz_copy_{originals[0].name}")
    small = Image.open(originals[1]).convert("RGB")
    small.resize((small.width // 2, small.height // 2)).save(photos / f"zz_small_{originals[1].name}")
    ImageOps.mirror(Image.open(originals[2]).convert("RGB")).save(photos / f"zz_mirror_{originals[2].name}")
    out = folder / "out"
    result = runner.invoke(app, ["run", "retrieval", str(photos), "-o", str(out), "--no-progress"])
    assert result.exit_code == 0, result.output
    planted = {frozenset({p.name, f"zz_{kind}_{p.name}"}) for p, kind in zip(originals, ("copy", "small", "mirror"))}
    return out, planted


def all_pairs(out, threshold):
    vectors, metadata = poolcli.read_descriptors(out)
    keys = metadata.column("key").to_pylist()
    scores = vectors.astype(np.float64) @ vectors.astype(np.float64).T
    return {(keys[i], keys[j]): scores[i, j] for i, j in itertools.combinations(range(len(keys)), 2)
            if scores[i, j] >= threshold - 1e-6}


def test_the_planted_copies_and_nothing_else_with_the_chosen_threshold(photos_run):
    out, planted = photos_run
    result = runner.invoke(app, ["duplicates", str(out), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    groups = {frozenset(Path(m["path"]).name for m in g["members"]) for g in data["groups"]}
    assert groups == planted
    assert data["threshold_chosen"].startswith("halfway from") and 0.9 < data["threshold"] < 1
    expected = all_pairs(out, data["threshold"])
    found = {(p["a"], p["b"]): p["score"] for g in data["groups"] for p in g["pairs"]}
    assert found.keys() == expected.keys()
    for pair, score in found.items():
        assert score == pytest.approx(expected[pair], abs=1e-5)
    assert f"3 groups of duplicates, 6 of {data['rows']} inputs" in result.stderr


def test_a_given_threshold_gives_every_pair_above_it(photos_run):
    out, _ = photos_run
    report = find_duplicates(out, threshold=0.85, k=50)
    expected = all_pairs(out, 0.85)
    found = {(p.a, p.b) for g in report.groups for p in g.pairs}
    assert found == set(expected) and report.chosen is None
    members = [key for g in report.groups for key, _ in g.members]
    assert len(members) == len(set(members)) == len({k for pair in expected for k in pair})  # components


def test_the_table_lists_groups_and_scores(photos_run):
    out, _ = photos_run
    result = runner.invoke(app, ["duplicates", str(out)])
    lines = result.stdout.splitlines()
    assert lines[0] == "group 1: 2 inputs" and lines[1].split()[1].endswith("camera.png")
    assert lines[3].startswith("  score 1.0000  0 ~ ")


def test_choose_threshold_is_halfway_from_the_background_to_one():
    rng = np.random.default_rng(0)
    background = rng.uniform(0.3, 0.7, (200, 9))
    ranked = -np.sort(-background, axis=1)
    ranked[:10, 0] = 0.999  # ten rows have a duplicate
    threshold, how = choose_threshold(ranked)
    assert threshold == pytest.approx((np.percentile(ranked[:, 1:], 99) + 1) / 2)
    assert 0.84 < threshold < 0.86 and "99th percentile" in how


@pytest.mark.parametrize("args, message", [
    (["--threshold", "1.5"], "--threshold is a cosine similarity, between -1 and 1"),
])
def test_errors_are_one_line(photos_run, args, message):
    out, _ = photos_run
    result = runner.invoke(app, ["duplicates", str(out), *args])
    assert result.exit_code == 1 and message in result.stderr and len(result.stderr.splitlines()) == 1


def test_a_maps_run_is_refused(tmp_path):
    out = tmp_path / "maps"
    assert runner.invoke(app, ["run", "vgg_maps", str(SAMPLES / "camera.png"), "-o", str(out), "--no-progress"]).exit_code == 0
    result = runner.invoke(app, ["duplicates", str(out)])
    assert result.exit_code == 1 and "duplicates needs descriptors" in result.stderr
