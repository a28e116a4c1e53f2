"""The foundation issue's awkward folder, end to end through a real `poolcli run`."""

import json
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq

import poolcli
from fixtures import make_awkward_folder

CONFIG = """
input: {color: rgb}
stages:
  - {type: avg_pool, kernel_size: 2, ceil_mode: true}
  - {type: spp, levels: [1, 2], pool: avg}
"""
BROKEN = {"empty.png", "not_an_image.jpg", "truncated.png", "huge.png"}


def test_awkward_folder_runs_to_the_end(tmp_path):
    files = make_awkward_folder(tmp_path / "in")
    config = tmp_path / "rgb.yaml"
    config.write_text(CONFIG)
    out = tmp_path / "out"
    result = subprocess.run([sys.executable, "-m", "poolcli", "run", str(config), str(tmp_path / "in"), "-o", str(out),
                             "--json", "--no-progress"], capture_output=True, text=True)
    assert result.returncode == 3, result.stderr
    assert "Traceback" not in result.stderr
    summary = json.loads(result.stdout)
    images = [name for name in files if name != "notes.txt"]
    assert summary["skipped"] == 1 and summary["inputs"] == len(images)
    assert summary["failed"] == len(BROKEN) and summary["written"] == len(images) - len(BROKEN)

    failures = pq.read_table(out / "failures" / "part-00000.parquet").to_pylist()
    reasons = {row["path"].rsplit("/", 1)[-1]: row["error"] for row in failures}
    assert set(reasons) == BROKEN and {row["stage"] for row in failures} == {"load"}
    assert "empty file" in reasons["empty.png"]
    assert "cannot identify image" in reasons["not_an_image.jpg"]
    assert "truncated" in reasons["truncated.png"]
    assert "144000000 pixels" in reasons["huge.png"]
    for name in BROKEN:  # the reasons are readable one-liners naming the file's problem, not its path
        assert "\n" not in reasons[name] and len(reasons[name]) < 200

    vectors, meta = poolcli.read_descriptors(out)
    by_name = {path.rsplit("/", 1)[-1]: vector for path, vector in zip(meta.column("path").to_pylist(), vectors)}
    assert set(by_name) == set(images) - BROKEN
    assert np.isfinite(vectors).all()
    # the EXIF-rotated photo gives the descriptor of the same photo stored upright
    np.testing.assert_allclose(by_name["exif_rotated.jpg"], by_name["upright.jpg"], atol=2e-3)
    # and the 16-bit image that of its 8-bit twin
    np.testing.assert_allclose(by_name["gray16.png"], by_name["gray8.png"], atol=1e-3)
    orientation = {p.rsplit("/", 1)[-1]: o for p, o in zip(meta.column("path").to_pylist(), meta.column("exif_orientation").to_pylist())}
    assert orientation["exif_rotated.jpg"] == 6 and orientation["upright.jpg"] == 1
