"""Errors poolcli raises. The library raises these and never prints or exits; ``cli.py``
turns each into one line on stderr and an exit code."""


class PoolcliError(Exception):
    """Base class: a problem poolcli can explain in one line."""


class ConfigError(PoolcliError):
    """The config is invalid: the message names the place (``stages[2].kernel_size``).

    ``loc`` is that place as a path (``("stages", 2, "kernel_size")``), used to find the YAML
    line."""

    def __init__(self, message, loc=()):
        super().__init__(message)
        self.loc = tuple(loc)


class ShapeError(PoolcliError):
    """A stage cannot be applied to a map of the given shape (a 3x3 window on a 2x2 map)."""

    def __init__(self, message, stage=None):
        super().__init__(message)
        self.stage = stage


class ImageError(PoolcliError):
    """An input cannot be read or decoded."""


class OutputError(PoolcliError):
    """The output folder cannot be used (different config, unwritable, ...)."""


class ModelError(PoolcliError):
    """A model file cannot be imported: unreadable, hostile, or using an op, attribute or shape
    that poolcli cannot compute exactly (the message names the node and the op)."""
