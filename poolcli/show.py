"""``poolcli show``: pictures of what each stage keeps and throws away.

One PNG per stage (and the input, in colour): its channels as a grid, each channel stretched
to its own 1st..99th percentile so that faint structure is visible, and labelled with what it
is (the colour it comes from, the filter that made it: ``G gabor 45° wl4``) and the values that
its black and white stand for; vectors as bar charts. Plus ``overview.png``: one row per stage
with its first channels, captioned alike, and the input in colour, to follow an image through
the whole pipeline. Tiny maps are enlarged with nearest-neighbour (every value stays a visible
square), large ones reduced, so every tile lands between ``MIN_TILE`` and ``MAX_TILE`` pixels.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont, ImageOps

from poolcli.errors import OutputError
from poolcli.io.images import load_image
from poolcli.pipeline import Pipeline

MIN_TILE, MAX_TILE = 96, 256  # longest side of one channel's tile, in pixels
GRID_COLUMNS = 8
OVERVIEW_CHANNELS, OVERVIEW_HEIGHT = 6, 128
BACKGROUND, INK, MUTED = (255, 255, 255), (20, 20, 20), (110, 110, 110)
BAR_POSITIVE, BAR_NEGATIVE = (52, 101, 164), (204, 0, 0)


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def value_range(channel: np.ndarray) -> tuple[float, float] | None:
    """The values :func:`stretch` maps to black and white: the 1st and 99th percentiles (the
    extremes of a small map); None when no value is finite.

    >>> value_range(np.array([[0.0, 1.0], [2.0, 3.0]], np.float32))
    (0.0, 3.0)
    """
    finite = channel[np.isfinite(channel)]
    if finite.size == 0:
        return None
    low, high = np.percentile(finite, [1, 99]) if finite.size > 16 else (finite.min(), finite.max())
    return float(low), float(high)


def stretch(channel: np.ndarray) -> np.ndarray:
    """uint8 image of one channel, its 1st..99th percentile mapped to 0..255 (NaN: black).

    >>> stretch(np.array([[0.0, 1.0], [2.0, 3.0]], np.float32)).tolist()
    [[0, 85], [170, 255]]
    """
    span = value_range(channel)
    if span is None:
        return np.zeros(channel.shape, np.uint8)
    low, high = span
    if high <= low:  # a constant channel: mid grey, not noise
        return np.full(channel.shape, 128, np.uint8)
    scaled = (np.nan_to_num(channel, nan=low, posinf=high, neginf=low) - low) / (high - low)
    return np.round(np.clip(scaled, 0, 1) * 255).astype(np.uint8)


def _tile(channel: np.ndarray, longest: int) -> Image.Image:
    image = Image.fromarray(stretch(channel), "L")
    scale = longest / max(image.size)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    image = image.resize(size, Image.Resampling.NEAREST if scale >= 1 else Image.Resampling.BOX)
    return ImageOps.expand(image, border=1, fill=160)  # a frame: white values stay visible on white


def _tile_side(height: int, width: int) -> int:
    return int(np.clip(max(height, width), MIN_TILE, MAX_TILE))


def _scale_text(span: tuple[float, float] | None) -> str:
    if span is None:
        return "no finite value"
    low, high = span
    return f"{low:.3g}" if high <= low else f"{low:.3g} .. {high:.3g}"


def caption(c: int, channel: np.ndarray, labels: list[str] | None) -> tuple[str, str]:
    """The two lines under channel ``c``'s tile: its name (``c3 R gabor 45°``, from ``labels``
    where they say what it is), and the values its black and white stand for.

    >>> caption(1, np.array([[0.0, 0.5], [1.0, 2.0]], np.float32), ["R", "G", "B"])
    ('c1 G', '0 .. 2')
    """
    name = f"c{c}" + (f" {labels[c]}" if labels and c < len(labels) and labels[c] else "")
    return name, _scale_text(value_range(channel))


def _colour_range(array: np.ndarray) -> tuple[float, float] | None:
    """The values a colour picture's black and white stand for (the channels stretched alike)."""
    finite = array[np.isfinite(array)]
    return (float(finite.min()), float(finite.max())) if finite.size else None


def channel_grid(array: np.ndarray, title: str, max_channels: int = 64,
                 labels: list[str] | None = None) -> Image.Image:
    """A (C, H, W) map as a grid of channel tiles under a title, each labelled with its name
    (``labels``, else ``c0``, ``c1``...) and the values its black and white stand for."""
    channels = min(array.shape[0], max_channels)
    side = _tile_side(*array.shape[1:])
    tiles = [_tile(array[c], side) for c in range(channels)]
    columns = min(GRID_COLUMNS, channels)
    rows = -(-channels // columns)
    cell_w, cell_h = max(t.width for t in tiles) + 8, max(t.height for t in tiles) + 36
    title_font, label_font = _font(16), _font(12)
    shown = "" if channels == array.shape[0] else f" (first {channels} of {array.shape[0]} channels)"
    canvas = Image.new("RGB", (max(columns * cell_w + 8, 420), rows * cell_h + 36), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    draw.text((8, 8), title + shown, fill=INK, font=title_font)
    for c, tile in enumerate(tiles):
        x, y = 8 + (c % columns) * cell_w, 36 + (c // columns) * cell_h
        canvas.paste(tile.convert("RGB"), (x, y))
        name, scale = caption(c, array[c], labels)
        draw.text((x, y + tile.height + 3), name, fill=INK, font=label_font)
        draw.text((x, y + tile.height + 17), scale, fill=MUTED, font=label_font)
    return canvas


def _rgb(array: np.ndarray, longest: int | None = None) -> Image.Image:
    """A 3-channel map as one colour image (the channels stretched alike, so colours keep their
    balance), at most 512 pixels long, or ``longest`` pixels long."""
    low, high = _colour_range(array) or (0.0, 0.0)
    scaled = (np.nan_to_num(array, nan=low) - low) / (high - low) if high > low else np.zeros_like(array)
    rgb = Image.fromarray(np.round(np.clip(scaled, 0, 1) * 255).astype(np.uint8).transpose(1, 2, 0), "RGB")
    if longest is not None:
        scale = longest / max(rgb.size)
    else:
        scale = min(512 / max(rgb.size), 1) if max(rgb.size) > 512 else max(1, MIN_TILE // max(rgb.size))
    return rgb.resize((max(1, round(rgb.width * scale)), max(1, round(rgb.height * scale))),
                      Image.Resampling.NEAREST if scale >= 1 else Image.Resampling.BOX)


def color_picture(array: np.ndarray, title: str, labels: list[str] | None = None) -> Image.Image:
    """A 3-channel input as one colour picture, then its channels as a labelled grid."""
    rgb = _rgb(array)
    grid = channel_grid(array, "its channels", labels=labels)
    canvas = Image.new("RGB", (max(rgb.width + 16, grid.width, 420), rgb.height + 44 + grid.height), BACKGROUND)
    ImageDraw.Draw(canvas).text((8, 8), title, fill=INK, font=_font(16))
    canvas.paste(rgb, (8, 36))
    canvas.paste(grid, (0, rgb.height + 44))
    return canvas


def bar_chart(vector: np.ndarray, title: str, height: int = 200) -> Image.Image:
    """A vector as bars (blue positive, red negative) around a zero line, with its range."""
    n = vector.size
    bar = int(np.clip(900 // max(n, 1), 1, 24))
    width = max(n * bar + 16, 420)
    canvas = Image.new("RGB", (width, height + 60), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    draw.text((8, 8), title, fill=INK, font=_font(16))
    finite = vector[np.isfinite(vector)]
    peak = float(np.max(np.abs(finite))) if finite.size else 0.0
    top, bottom = 36, 36 + height
    low_values = finite.size and finite.min() < 0
    zero = (top + bottom) // 2 if low_values else bottom
    for i, v in enumerate(np.nan_to_num(vector)):
        extent = 0 if peak == 0 else v / peak * (zero - top)
        y0, y1 = sorted((zero, zero - extent))
        draw.rectangle((8 + i * bar, y0, 8 + i * bar + max(bar - 1, 1) - 1, y1), fill=BAR_POSITIVE if v >= 0 else BAR_NEGATIVE)
    draw.line((8, zero, 8 + n * bar, zero), fill=MUTED)
    summary = f"{n} values, min {finite.min():.4g}, max {finite.max():.4g}" if finite.size else f"{n} values, none finite"
    draw.text((8, bottom + 6), summary, fill=MUTED, font=_font(12))
    return canvas


def _picture(name: str, kind: str, array: np.ndarray, max_channels: int, labels: list[str] | None = None) -> Image.Image:
    title = f"{name} ({kind}): {'x'.join(map(str, array.shape))}"
    if array.ndim == 1:
        return bar_chart(array, title)
    if kind == "input" and array.shape[0] == 3:
        return color_picture(array, title, labels)
    return channel_grid(array, title, max_channels, labels)


def overview(rows: list[tuple[str, np.ndarray, list[str] | None]]) -> Image.Image:
    """One row per stage (title, array, its channels' labels): the title, then its first channels
    at a common height, each captioned as in the stage's own picture (what it is, the values of
    its black and white), or its bars; the input, when it has three channels, in colour, with
    the values its black and white stand for."""
    strips = []
    font = _font(12)
    for number, (title, array, labels) in enumerate(rows):
        if array.ndim == 1:
            strips.append(bar_chart(array, title, height=OVERVIEW_HEIGHT - 40))
            continue
        h, w = array.shape[1:]
        longest = min(round(OVERVIEW_HEIGHT * max(h, w) / h), 4 * OVERVIEW_HEIGHT)  # rows share one height
        if number == 0 and array.shape[0] == 3:
            colours = "".join(labels) if labels else "3 channels"
            tiles = [ImageOps.expand(_rgb(array, longest), border=1, fill=160)]
            captions = [(f"{colours} in colour", _scale_text(_colour_range(array)))]
        else:
            shown = range(min(OVERVIEW_CHANNELS, array.shape[0]))
            tiles = [_tile(array[c], longest) for c in shown]
            captions = [caption(c, array[c], labels) for c in shown]
        more = 0 if number == 0 and array.shape[0] == 3 else array.shape[0] - len(tiles)
        widths = [max(tile.width, *(round(font.getlength(line)) for line in lines)) for tile, lines in zip(tiles, captions)]
        strip = Image.new("RGB", (max(sum(wd + 10 for wd in widths) + 16, 420), max(t.height for t in tiles) + 72),
                          BACKGROUND)
        draw = ImageDraw.Draw(strip)
        draw.text((8, 6), title + (f"  (+{more} more channels)" if more > 0 else ""), fill=INK, font=_font(14))
        x = 8
        for tile, (name, scale), width in zip(tiles, captions, widths):
            strip.paste(tile.convert("RGB"), (x, 32))
            draw.text((x, 32 + tile.height + 3), name, fill=INK, font=font)
            draw.text((x, 32 + tile.height + 17), scale, fill=MUTED, font=font)
            x += width + 10
        strips.append(strip)
    canvas = Image.new("RGB", (max(s.width for s in strips), sum(s.height + 4 for s in strips)), BACKGROUND)
    y = 0
    for strip in strips:
        canvas.paste(strip, (0, y))
        y += strip.height + 4
        ImageDraw.Draw(canvas).line((0, y - 2, canvas.width, y - 2), fill=(220, 220, 220))
    return canvas


# --- what each channel is ---------------------------------------------------------------------


def bank_labels(stage) -> list[str] | None:
    """What each filter of a conv stage's 2-D bank is, in the bank's order (None for random
    and .npy weights, which have no names)."""
    from poolcli.stages.filters import PHASES

    filters = stage.filters
    if filters == "gabor":
        phases = PHASES[stage.phase]
        return [f"gabor {180 * k / stage.orientations:.4g}°" + (f" wl{w:g}" if len(stage.wavelengths) > 1 else "")
                + (f" {p}" if len(phases) > 1 else "")
                for w in stage.wavelengths for k in range(stage.orientations) for p in phases]
    if filters in ("sobel", "scharr", "prewitt"):
        return [f"{filters} x", f"{filters} y"]
    if filters in ("identity", "box", "gaussian", "laplacian", "log"):
        return [filters]
    return None


def channel_labels(pipeline: Pipeline, shapes: dict[str, tuple[int, ...]]) -> dict[str, list[str]]:
    """For each map (by stage name, and ``input``), what its channels are: the colour they come
    from, the filter that made them, carried through the stages that keep channels as they are
    (pooling, activations) and joined by ``concat``. Channels nothing is known of are missing."""
    input_channels = shapes["input"][0]
    labels = {"input": ["R", "G", "B"] if input_channels == 3 and pipeline.config.input.color == "rgb"
              else ["grey"] if input_channels == 1 else []}
    for node in pipeline.nodes:
        shape = shapes[node.name]
        if len(shape) != 3:
            continue
        inputs = [labels.get(name, []) for name in node.inputs]
        stage, made = node.stage, None
        if stage.type == "conv":
            bank = bank_labels(stage)
            if bank is not None and stage.channels == "each" and inputs[0]:
                made = [f"{colour} {f}" for colour in inputs[0] for f in bank]
            elif bank is not None and stage.channels == "mean":
                made = bank
        elif stage.type == "concat":
            made = [label for part in inputs for label in part]
        elif len(inputs) == 1:
            made = inputs[0]
        labels[node.name] = made if made and len(made) == shape[0] else []
    return labels


def _file_name(index: int, name: str) -> str:
    return f"{index:02d}_{re.sub(r'[^A-Za-z0-9_.-]+', '_', name)}.png"


def show(pipeline: Pipeline, image_path: str | Path, out_dir: str | Path, max_channels: int = 64) -> list[Path]:
    """Write one PNG per stage (and the input) and ``overview.png`` into ``out_dir``."""
    x = load_image(image_path, pipeline.config.input)
    values = pipeline.outputs(x)
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create {out_dir}: {exc.strerror or exc}") from None
    entries = [("input", "input", values["input"])] + [(n.name, n.stage.type, values[n.name]) for n in pipeline.nodes]
    labels = channel_labels(pipeline, {name: array.shape for name, _, array in entries})
    written = []
    for index, (name, kind, array) in enumerate(entries):
        path = out_dir / _file_name(index, name)
        _picture(name, kind, array, max_channels, labels.get(name)).save(path)
        written.append(path)
    rows = [(f"{name} ({kind}) {'x'.join(map(str, a.shape))}", a, labels.get(name)) for name, kind, a in entries]
    overview(rows).save(out_dir / "overview.png")
    written.append(out_dir / "overview.png")
    return written
