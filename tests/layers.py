"""Building stages that hold arrays, for the tests of trained-network layers: the arrays are
given in memory, as tensors of a weights file would be."""

import numpy as np

from poolcli.stages import build_stage


class Tensors:
    """A weights file in memory: ``names``, ``label`` and ``get`` as :class:`poolcli.config.WeightsFile`."""

    label = "weights.safetensors"

    def __init__(self, arrays: dict):
        self.arrays = {name: np.ascontiguousarray(a, np.float32) for name, a in arrays.items()}
        self.names = sorted(self.arrays)

    def get(self, name):
        return self.arrays.get(name)


def stage(kind: str, tensors: dict | None = None, **params):
    """The stage of type ``kind`` with ``params``; a parameter may name a tensor of ``tensors``."""
    context = {"base_dir": ".", "weights": Tensors(tensors or {})}
    return build_stage({"type": kind, **params}, 0, context)
