"""poolcli eval: the copy-detection benchmark's transforms, ranks and scores, and the command."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from poolcli.cli import app
from poolcli.errors import PoolcliError
from poolcli.retrieval.evaluate import TRANSFORMS, evaluate, evaluate_many, open_rgb, quadrants, ranks, score, thumbnail

runner = CliRunner()
SAMPLES = Path(__file__).resolve().parent.parent / "sample_images"
PHOTOS = [str(SAMPLES / name) for name in ("chelsea.png", "coins.png", "astronaut.jpg")]
# A descriptor equal to the baseline's: the grey image box-resized to 16x16, as a vector (decoded in full, as the
# baseline is: shrinking on load reduces by whole blocks first, which rounds a little differently).
THUMBNAIL_CONFIG = "input: {color: gray, resize: {size: [16, 16]}, interpolation: box, decode: full}\nstages:\n  - {type: flatten}\n"


def test_ranks_count_ties_against_the_true_item():
    database = np.array([[1, 0], [0, 1], [1, 1], [1, 0]], np.float32)
    queries = np.array([[1, 0.1], [0, 1], [1, 0]], np.float32)
    # Query 0 is closest to row 0, then 3 (the same vector: a tie), then 2; query 2 ties rows 0 and 3.
    assert ranks(queries, database, np.array([2, 1, 0])).tolist() == [3, 1, 2]
    expected = []
    for q, t in zip(queries, [2, 1, 0]):
        cos = database @ q / np.linalg.norm(database, axis=1) / np.linalg.norm(q)
        expected.append(int(np.sum(cos >= cos[t])))
    assert expected == [3, 1, 2]


def test_scores_from_ranks():
    result = score(np.array([1, 2, 5, 6]))
    assert (result.queries, result.recall_at_1, result.recall_at_5) == (4, 0.25, 0.75)
    assert result.map == pytest.approx((1 + 1 / 2 + 1 / 5 + 1 / 6) / 4)


def test_transforms_and_quadrants():
    image = open_rgb(PHOTOS[0])  # 451 x 300
    out = {name: apply(image) for name, (_, apply) in TRANSFORMS.items()}
    assert out["central_crop"].size == (338, 225) and out["downscale"].size == (113, 75)
    assert out["aspect"].size == (586, 300)
    for name in ("jpeg", "brightness", "contrast", "rotation", "mirror", "blur"):
        assert out[name].size == image.size and out[name].mode == image.mode
    np.testing.assert_array_equal(np.asarray(out["mirror"]), np.asarray(image)[:, ::-1])
    assert np.asarray(out["brightness"]).mean() > np.asarray(image).mean()
    assert np.asarray(out["contrast"]).std() < np.asarray(image).std()
    assert [q.size for q in quadrants(image)] == [(225, 150), (226, 150), (225, 150), (226, 150)]
    assert thumbnail(image).shape == (256,)


def test_alpha_and_grey_inputs(tmp_path):
    assert open_rgb(str(SAMPLES / "coins.png")).mode == "L"
    rgba = open_rgb(str(SAMPLES / "horse.png"))
    assert rgba.mode == "RGB" and np.asarray(rgba)[0, 0].tolist() == [255, 255, 255]
    (tmp_path / "bad.png").write_text("not an image")
    with pytest.raises(PoolcliError, match="bad.png: cannot read it as an image"):
        open_rgb(str(tmp_path / "bad.png"))


def test_a_thumbnail_config_scores_as_the_baseline(tmp_path):
    config = tmp_path / "thumb.yaml"
    config.write_text(THUMBNAIL_CONFIG)
    report = evaluate(config, PHOTOS)
    assert report.images == 3 and report.database == 15
    assert [t.transform for t in report.transforms] == list(TRANSFORMS)
    assert report.overall.config.queries == 27 and report.overall.baseline.queries == 27
    for row in [*report.transforms, report.overall]:
        assert row.config == row.baseline, row.transform
    mirror = next(t for t in report.transforms if t.transform == "mirror")
    assert mirror.baseline.recall_at_1 < 1  # a thumbnail is not mirror-invariant


def test_eval_command(tmp_path):
    config = tmp_path / "thumb.yaml"
    config.write_text(THUMBNAIL_CONFIG)
    result = runner.invoke(app, ["eval", str(config), *PHOTOS[:2], "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["images"] == 2 and data["database"] == 10 and len(data["transforms"]) == len(TRANSFORMS)
    assert set(data["overall"]["config"]) == {"queries", "recall_at_1", "recall_at_5", "map"}
    table = runner.invoke(app, ["eval", str(config), *PHOTOS[:2]])
    assert table.exit_code == 0 and "central_crop" in table.stdout and "overall" in table.stdout
    assert "baseline: a 16x16 grey thumbnail" in table.stdout


def test_eval_errors(tmp_path):
    maps = tmp_path / "maps.yaml"
    maps.write_text("stages:\n  - {type: max_pool, kernel_size: 2}\n")
    result = runner.invoke(app, ["eval", str(maps), PHOTOS[0]])
    assert result.exit_code == 1 and "eval needs a config that ends in a descriptor" in result.stderr
    np.save(tmp_path / "a.npy", np.zeros((3, 4, 4), np.float32))
    config = tmp_path / "thumb.yaml"
    config.write_text(THUMBNAIL_CONFIG)
    result = runner.invoke(app, ["eval", str(config), str(tmp_path / "a.npy")])
    assert result.exit_code == 1 and "eval needs image files to transform" in result.stderr
    Image.new("RGB", (1, 1)).save(tmp_path / "tiny.png")
    small = tmp_path / "small.yaml"
    small.write_text("stages:\n  - {type: max_pool, kernel_size: 3}\n  - {type: gem}\n")
    result = runner.invoke(app, ["eval", str(small), str(tmp_path / "tiny.png")])
    assert result.exit_code == 1 and "max_pool" in result.stderr and "Traceback" not in result.output


def test_several_configs_score_as_each_alone_and_print_side_by_side(tmp_path):
    thumb = tmp_path / "thumb.yaml"
    thumb.write_text(THUMBNAIL_CONFIG)
    mean = tmp_path / "mean.yml"
    mean.write_text("input: {resize: {size: [24, 24]}}\nstages:\n  - {type: adaptive_avg_pool, output_size: 2}\n"
                    "  - {type: flatten}\n")
    together = evaluate_many([thumb, mean], PHOTOS[:2])
    assert [r.config for r in together] == [str(thumb), str(mean)]
    for config, report in zip([thumb, mean], together):
        assert report == evaluate(config, PHOTOS[:2])
    assert together[0].overall.config != together[1].overall.config  # two configs, two scores
    result = runner.invoke(app, ["eval", str(thumb), str(mean), *PHOTOS[:2]])
    assert result.exit_code == 0, result.output
    header = next(line for line in result.stdout.splitlines() if "transform" in line)
    assert "thumb.yaml R@1" in result.stdout and "mean.yml R@1" in result.stdout and "baseline R@1" in result.stdout
    assert header.index("thumb.yaml") < header.index("mean.yml") < header.index("baseline")
    data = json.loads(runner.invoke(app, ["eval", str(thumb), str(mean), *PHOTOS[:2], "--json"]).stdout)
    assert [d["config"] for d in data] == [str(thumb), str(mean)]
    missing = runner.invoke(app, ["eval", str(thumb), str(mean)])
    assert missing.exit_code == 2 and "give the images" in missing.output
