"""`poolcli show`: one readable PNG per stage plus an overview, for large and tiny images."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from poolcli import Pipeline
from poolcli.show import MIN_TILE, show, stretch

ROOT = Path(__file__).parent.parent
CONFIG = {"input": {"color": "rgb"}, "stages": [
    {"type": "conv", "name": "edges", "filters": "sobel", "channels": "each", "padding": 1, "activation": "abs"},
    {"type": "max_pool", "name": "pool", "kernel_size": 2},
    {"type": "gem", "name": "gem"},
]}


@pytest.mark.parametrize("size", [(640, 480), (5, 4)])
def test_one_png_per_stage_and_an_overview(tmp_path, size):
    photo = Image.open(ROOT / "sample_images" / "chelsea.png").convert("RGB").resize(size)
    photo.save(tmp_path / "photo.png")
    written = show(Pipeline.from_config(CONFIG), tmp_path / "photo.png", tmp_path / "out")
    assert [p.name for p in written] == ["00_input.png", "01_edges.png", "02_pool.png", "03_gem.png", "overview.png"]
    edges = Image.open(written[1])
    assert edges.mode == "RGB" and 400 <= edges.width <= 2400 and edges.height <= 1200
    # a 6-channel map: six tiles, each at least MIN_TILE wide, even for a 4x5 map
    assert edges.width >= 6 * MIN_TILE
    pixels = np.asarray(edges)
    assert pixels.std() > 10  # not blank
    overview = Image.open(written[-1])
    assert overview.height > 4 * 100


def test_stretch_is_per_channel_and_safe():
    assert stretch(np.full((3, 3), 7.0, np.float32)).tolist() == [[128] * 3] * 3
    assert stretch(np.array([[np.nan, 0.0], [1.0, np.inf]], np.float32)).tolist() == [[0, 0], [255, 255]]
    ramp = np.linspace(0, 1e-6, 100, dtype=np.float32).reshape(10, 10)  # faint structure is stretched
    assert stretch(ramp).max() == 255 and stretch(ramp).min() == 0


def test_show_command(tmp_path):
    result = subprocess.run([sys.executable, "-m", "poolcli", "show", str(ROOT / "configs" / "gabor_gem.yaml"),
                             str(ROOT / "sample_images" / "camera.png"), "-o", str(tmp_path / "pics")],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.split()
    assert lines[-1].endswith("overview.png") and all(Path(p).exists() for p in lines)
    grid = Image.open(tmp_path / "pics" / "01_gabor.png")
    assert grid.width <= 8 * 270  # at most 8 columns of tiles
