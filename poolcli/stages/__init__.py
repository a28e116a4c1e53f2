"""Stages: one module per operator family. Importing this package fills the registry
(``STAGES``); no module here imports numba at import time."""

from poolcli.stages import (  # noqa: F401  (importing a module registers its stages)
    arithmetic,
    combine,
    conv,
    detection,
    elementwise,
    fractional,
    global_pool,
    hopfield,
    layers,
    pool,
    pyramid,
    resample,
    rmac,
    softpool,
    stochastic,
    strip,
    unpool,
    whiten,
)
from poolcli.stages.base import STAGES, ReceptiveField, Stage, build_stage, register_stage

__all__ = ["STAGES", "ReceptiveField", "Stage", "build_stage", "register_stage"]
