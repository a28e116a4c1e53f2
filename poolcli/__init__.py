"""poolcli: image feature extraction with Numba-jitted convolution and pooling pipelines.

>>> import poolcli
>>> pipe = poolcli.Pipeline.from_config({"stages": [{"type": "gem", "p": 3}]})
>>> pipe.trace((3, 32, 32))[-1].out_shape
(3,)
"""

__version__ = "0.1.0"

from poolcli.errors import ConfigError, ImageError, OutputError, PoolcliError, ShapeError  # noqa: E402


def load_image(path, input_config=None, max_pixels=89_478_485):
    """Decode an image file (or ``.npy``) into float32 (C, H, W) as a run does: EXIF
    orientation, mode conversion, alpha compositing and resize, from ``input_config``
    (``pipe.config.input``; defaults when None)."""
    from poolcli.io.images import load_image as _load

    return _load(path, input_config, max_pixels)


def read_descriptors(out):
    """All descriptor shards of a run folder: an ``[N, D]`` array and the pyarrow metadata
    table, row i of one describing row i of the other."""
    from poolcli.io.output import read_descriptors as _read

    return _read(out)


def __getattr__(name):
    # Pipeline pulls in pydantic and yaml: imported on first use, so `poolcli --help` stays fast.
    if name == "Pipeline":
        from poolcli.pipeline import Pipeline

        return Pipeline
    raise AttributeError(f"module 'poolcli' has no attribute {name!r}")


__all__ = [
    "ConfigError",
    "ImageError",
    "OutputError",
    "Pipeline",
    "PoolcliError",
    "ShapeError",
    "__version__",
    "load_image",
    "read_descriptors",
]
