"""poolcli: image feature extraction with Numba-jitted convolution and pooling pipelines.

>>> import poolcli
>>> pipe = poolcli.Pipeline.from_config({"stages": [{"type": "gem", "p": 3}]})
>>> pipe.trace((3, 32, 32))[-1].out_shape
(3,)
"""

__version__ = "0.1.0"

from poolcli.errors import ConfigError, ImageError, OutputError, PoolcliError, ShapeError  # noqa: E402
from poolcli.pipeline import Pipeline  # noqa: E402


def load_image(path, input_config=None):
    """Decode an image file (or ``.npy``) into float32 (C, H, W) as a run does: EXIF
    orientation, mode conversion, alpha compositing, resize, all from ``input_config``."""
    from poolcli.io.images import load_image as _load

    return _load(path, input_config)


def read_descriptors(out):
    """All descriptor shards of a run folder as one ``[N, D]`` array, with its metadata table."""
    from poolcli.io.output import read_descriptors as _read

    return _read(out)


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
