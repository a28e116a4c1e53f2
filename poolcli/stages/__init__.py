"""Stages: one module per operator family. Importing this package fills the registry
(``STAGES``); no module here imports numba at import time."""

from poolcli.stages import combine, conv, elementwise, global_pool, pool  # noqa: F401  (registers)
from poolcli.stages.base import STAGES, ReceptiveField, Stage, build_stage, register_stage

__all__ = ["STAGES", "ReceptiveField", "Stage", "build_stage", "register_stage"]
