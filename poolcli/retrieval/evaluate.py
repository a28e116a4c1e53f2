"""A copy-detection benchmark (``poolcli eval``): does a config find an image from a modified copy?

The database holds every image and, as hard negatives, each image's four quadrants as separate
items. The queries are copies of every image under each of :data:`TRANSFORMS`; the one right
answer for a query is its original (its own quadrants count as wrong). For each transform and
overall: recall@1 and recall@5 (the original is first, or in the first five) and mAP (with one
relevant item, the mean of 1 / its rank; ties with it are counted against it). A baseline, a
16x16 grey thumbnail compared by cosine, is scored the same way.

Every item is written to a file and read back through :func:`poolcli.load_image` with the
config's ``input`` section, exactly as ``poolcli run`` would read it.
"""

from __future__ import annotations

import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from poolcli.errors import ImageError, PoolcliError

THUMBNAIL = 16


def _central_crop(image):
    w, h = image.size
    cw, ch = max(1, round(w * 0.75)), max(1, round(h * 0.75))
    left, top = (w - cw) // 2, (h - ch) // 2
    return image.crop((left, top, left + cw, top + ch))


def _downscale(image):
    from PIL import Image

    w, h = image.size
    return image.resize((max(1, round(w / 4)), max(1, round(h / 4))), Image.Resampling.BILINEAR)


def _jpeg(image):
    import io

    from PIL import Image

    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=10)
    buffer.seek(0)
    with Image.open(buffer) as decoded:
        return decoded.convert(image.mode)


def _brightness(image):
    from PIL import ImageEnhance

    return ImageEnhance.Brightness(image).enhance(1.4)


def _contrast(image):
    from PIL import ImageEnhance

    return ImageEnhance.Contrast(image).enhance(0.5)


def _rotation(image):
    from PIL import Image

    return image.rotate(5, resample=Image.Resampling.BILINEAR, expand=False)


def _mirror(image):
    from PIL import ImageOps

    return ImageOps.mirror(image)


def _blur(image):
    from PIL import ImageFilter

    return image.filter(ImageFilter.GaussianBlur(radius=max(1.0, 0.01 * max(image.size))))


def _aspect(image):
    from PIL import Image

    w, h = image.size
    return image.resize((max(1, round(w * 1.3)), h), Image.Resampling.BILINEAR)


#: The query transforms, in report order: name -> (what it does, function on a PIL image).
TRANSFORMS: dict[str, tuple[str, Callable]] = {
    "central_crop": ("the central 75% of each side (56% of the area)", _central_crop),
    "downscale": ("a quarter of each side, bilinear", _downscale),
    "jpeg": ("JPEG at quality 10", _jpeg),
    "brightness": ("brightness x1.4 (Pillow ImageEnhance, highlights clip)", _brightness),
    "contrast": ("contrast x0.5 (Pillow ImageEnhance)", _contrast),
    "rotation": ("rotated 5 degrees, same size, black corners", _rotation),
    "mirror": ("flipped left to right", _mirror),
    "blur": ("Gaussian blur, radius 1% of the longest side", _blur),
    "aspect": ("width stretched x1.3", _aspect),
}


@dataclass
class Scores:
    """Recall@1, recall@5 and mAP over ``queries`` queries."""

    queries: int
    recall_at_1: float
    recall_at_5: float
    map: float


@dataclass
class TransformResult:
    transform: str
    description: str
    config: Scores
    baseline: Scores


@dataclass
class EvalReport:
    config: str
    images: int
    database: int
    transforms: list[TransformResult] = field(default_factory=list)
    overall: TransformResult | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def quadrants(image):
    """The four quadrants of a PIL image: top-left, top-right, bottom-left, bottom-right."""
    w, h = image.size
    mw, mh = max(1, w // 2), max(1, h // 2)
    boxes = [(0, 0, mw, mh), (mw, 0, w, mh), (0, mh, mw, h), (mw, mh, w, h)]
    return [image.crop(box) for box in boxes if box[2] > box[0] and box[3] > box[1]]


def thumbnail(image) -> np.ndarray:
    """The baseline descriptor: the image in grey, box-resized to 16x16, as a vector."""
    from PIL import Image

    grey = image.convert("L").resize((THUMBNAIL, THUMBNAIL), Image.Resampling.BOX)
    return np.asarray(grey, np.float32).reshape(-1) / 255


def open_rgb(path: str):
    """An input image as Pillow RGB or L: EXIF orientation applied, alpha over white."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image = ImageOps.exif_transpose(image)
            image.load()
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        raise ImageError(f"{path}: cannot read it as an image ({exc})") from None
    if image.mode == "L":
        return image
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


def ranks(queries: np.ndarray, database: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """The rank (1 = first) of each query's true database item by cosine similarity; items
    scoring the same as the true one count as ranked before it."""
    def unit(x):
        x = np.asarray(x, np.float64)
        return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)

    scores = unit(queries) @ unit(database).T
    true = scores[np.arange(len(queries)), truth]
    return np.sum(scores >= true[:, None], axis=1)


def score(rank: np.ndarray) -> Scores:
    return Scores(int(len(rank)), float(np.mean(rank <= 1)), float(np.mean(rank <= 5)), float(np.mean(1.0 / rank)))


def evaluate(config_path: str | Path, inputs: list[str], progress: Callable[[int, int], None] | None = None) -> EvalReport:
    """Run the benchmark for the config at ``config_path`` over the images ``inputs`` (files,
    folders, globs). ``progress(done, total)`` is called per image."""
    return evaluate_many([config_path], inputs, progress)[0]


def evaluate_many(config_paths: list[str | Path], inputs: list[str],
                  progress: Callable[[int, int], None] | None = None) -> list[EvalReport]:
    """:func:`evaluate` for several configs on the same images and the same transformed copies
    (each made and written once), one report per config in the order given: the way to compare
    pooling heads on one trunk."""
    from poolcli.io.images import load_image
    from poolcli.io.inputs import collect_inputs
    from poolcli.pipeline import Pipeline

    if not config_paths:
        raise PoolcliError("eval needs at least one config")
    pipelines = []
    for config_path in config_paths:
        pipeline = Pipeline.from_yaml(config_path)
        if pipeline.kind != "descriptors":
            raise PoolcliError(f"{config_path} writes feature maps; eval needs a config that ends in a descriptor")
        pipelines.append(pipeline)
    files = [f for f in collect_inputs(inputs).files]
    arrays = [f for f in files if f.lower().endswith(".npy")]
    if arrays:
        raise PoolcliError(f"eval needs image files to transform, got an array: {arrays[0]}")

    def describe(image, folder: Path, name: str) -> tuple[list[np.ndarray], np.ndarray]:
        path = folder / f"{name}.png"
        image.save(path, compress_level=1)
        ys = []
        for config_path, pipeline in zip(config_paths, pipelines):
            try:
                ys.append(pipeline(load_image(path, pipeline.config.input)))
            except PoolcliError as exc:
                where = f"{config_path}: " if len(pipelines) > 1 else ""
                raise PoolcliError(f"{where}{name}: {exc}") from None
        return ys, thumbnail(image)

    # Per config: its database and its queries per transform; the baseline's are shared.
    database = [[] for _ in pipelines]
    queries = [{t: [] for t in TRANSFORMS} for _ in pipelines]
    originals, base_database, base_queries = [], [], {t: [] for t in TRANSFORMS}
    with tempfile.TemporaryDirectory(prefix="poolcli-eval-") as tmp:
        folder = Path(tmp)
        for number, path in enumerate(files):
            image = open_rgb(path)
            label = Path(path).name
            originals.append(len(base_database))
            for name, item in [(label, image)] + [(f"{label} quadrant {q}", part) for q, part in enumerate(quadrants(image))]:
                ys, thumb = describe(item, folder, f"db{len(base_database)}")
                for rows, y in zip(database, ys):
                    rows.append(y)
                base_database.append(thumb)
            for transform, (_, apply) in TRANSFORMS.items():
                ys, thumb = describe(apply(image), folder, f"{label} {transform}")
                for per_transform, y in zip(queries, ys):
                    per_transform[transform].append(y)
                base_queries[transform].append(thumb)
            if progress:
                progress(number + 1, len(files))
    originals = np.array(originals)
    base_ranks = {t: ranks(np.stack(base_queries[t]), np.stack(base_database), originals) for t in TRANSFORMS}
    base_all = score(np.concatenate(list(base_ranks.values())))
    reports = []
    for config_path, rows, per_transform in zip(config_paths, database, queries):
        report = EvalReport(str(config_path), len(files), len(rows))
        all_ranks = []
        for transform, (description, _) in TRANSFORMS.items():
            rank = ranks(np.stack(per_transform[transform]), np.stack(rows), originals)
            report.transforms.append(TransformResult(transform, description, score(rank), score(base_ranks[transform])))
            all_ranks.append(rank)
        report.overall = TransformResult("overall", "every query", score(np.concatenate(all_ranks)), base_all)
        reports.append(report)
    return reports
