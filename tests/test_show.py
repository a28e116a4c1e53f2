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


def shapes_of(pipeline, shape=(3, 64, 64)):
    shapes = {r.name: r.out_shape for r in pipeline.trace(shape)}
    shapes["input"] = shape
    return shapes


def test_channels_are_labelled_with_their_colour_and_filter():
    from poolcli.show import channel_labels

    pipe = Pipeline.from_yaml(ROOT / "configs" / "gabor_gem.yaml")  # gabor: 8 orientations x 2 wavelengths, each
    labels = channel_labels(pipe, shapes_of(pipe))
    assert labels["input"] == ["R", "G", "B"] and len(labels["gabor"]) == 48
    assert labels["gabor"][:2] == ["R gabor 0° wl4", "R gabor 22.5° wl4"]
    assert labels["gabor"][8] == "R gabor 0° wl8" and labels["gabor"][16] == "G gabor 0° wl4"
    assert labels["pool"] == labels["gabor"]  # pooling keeps the channels
    assert "gem" not in labels
    # the order is the one the conv computes: channel-major, then the gabor bank's own order
    from poolcli.stages.filters import make_bank

    gabor = pipe.nodes[0].stage
    bank = make_bank("gabor", gabor.kernel, gabor._bank_params())
    assert len(bank) * 3 == len(labels["gabor"])
    sobel = Pipeline.from_config(CONFIG)
    assert channel_labels(sobel, shapes_of(sobel))["edges"] == [f"{c} sobel {a}" for c in "RGB" for a in "xy"]
    mixed = Pipeline.from_config({"stages": [
        {"type": "conv", "filters": "random", "out_channels": 4, "seed": 0, "padding": "same", "name": "r"},
        {"type": "concat", "from": ["r", "input"], "name": "both"}]})
    labels = channel_labels(mixed, shapes_of(mixed))
    assert labels["r"] == [] and labels["both"] == []  # random filters have no names; nor has a part of concat
    named = Pipeline.from_config({"stages": [
        {"type": "conv", "filters": "log", "sigma": 2, "padding": "same", "name": "l"},
        {"type": "concat", "from": ["l", "input"], "name": "both"}]})
    assert channel_labels(named, shapes_of(named))["both"] == ["log", "R", "G", "B"]


def test_each_tile_says_its_value_scale_and_the_input_is_in_colour(tmp_path):
    from poolcli.show import value_range

    assert value_range(np.array([[np.nan, -2.0], [5.0, np.inf]], np.float32)) == (-2.0, 5.0)
    assert value_range(np.full((2, 2), np.nan, np.float32)) is None
    written = show(Pipeline.from_config(CONFIG), ROOT / "sample_images" / "chelsea.png", tmp_path / "out")
    picture = np.asarray(Image.open(written[0])).astype(int)
    colourful = np.abs(picture[..., 0] - picture[..., 2]) > 40  # the cat's orange: red far above blue
    assert colourful.sum() > 1000
    overview = np.asarray(Image.open(written[-1])).astype(int)
    assert (np.abs(overview[..., 0] - overview[..., 2]) > 40).sum() > 1000  # its input row too
    gray = np.asarray(Image.open(written[1])).astype(int)  # a map's grid stays grey
    assert (np.abs(gray[..., 0] - gray[..., 2]) > 40).sum() == 0


def test_the_overview_captions_each_tile_with_what_it_is_and_its_value_scale(tmp_path, monkeypatch):
    """Every tile of overview.png is captioned as in its stage's own picture: the channel's
    name (colour and filter) and the values of its black and white; the input, in colour, with
    the range of its values."""
    from PIL import ImageDraw

    from poolcli import load_image
    from poolcli.show import _scale_text, value_range

    drawn = []
    original = ImageDraw.ImageDraw.text

    def text(self, xy, words, *args, **kwargs):
        drawn.append(words)
        return original(self, xy, words, *args, **kwargs)

    monkeypatch.setattr(ImageDraw.ImageDraw, "text", text)
    pipe = Pipeline.from_config(CONFIG)
    image = ROOT / "sample_images" / "chelsea.png"
    show(pipe, image, tmp_path / "out")
    overview = drawn[max(i for i, words in enumerate(drawn) if words.startswith("input (input) ")):]  # drawn last
    x = pipe.outputs(load_image(image, pipe.config.input))
    assert overview[1:3] == ["RGB in colour", _scale_text((float(x["input"].min()), float(x["input"].max())))]
    edges = next(i for i, words in enumerate(overview) if words.startswith("edges (conv) 6x"))
    assert overview[edges + 1:edges + 5] == [
        "c0 R sobel x", _scale_text(value_range(x["edges"][0])), "c1 R sobel y", _scale_text(value_range(x["edges"][1]))]
    pool = next(i for i, words in enumerate(overview) if words.startswith("pool (max_pool) "))
    assert overview[pool + 11:pool + 13] == ["c5 B sobel y", _scale_text(value_range(x["pool"][5]))]
