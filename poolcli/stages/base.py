"""The stage protocol and the registry that maps a config ``type`` to a stage class.

A stage is a small immutable model that holds validated parameters and calls a kernel:

- ``output_shape(shape)``: pure arithmetic, raises :class:`ShapeError` where the stage cannot
  fit; ``inspect`` uses it and no kernel runs;
- ``__call__(x)``: float32 C-contiguous in, float32 out; the input is never modified;
- ``params(shape)``, ``macs(shape)``, ``receptive_field(rf, shape)``: the costs ``inspect``
  prints.

Multi-input stages (``inputs = "many"``) take several shapes and arrays instead of one.
Kernels come from a :func:`kernel_module`, imported on first use, so that building and tracing
a pipeline never imports numba.
"""

from __future__ import annotations

import difflib
import importlib
import math
import re
import types
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
from pydantic import Field

from poolcli.config import Model, validate_model
from poolcli.errors import ConfigError, ShapeError

STAGES: dict[str, type["Stage"]] = {}
# ``include`` is no stage (the pipeline puts another config's stages in its place), but a config
# names it as a type: `poolcli stages` lists it and a misspelt type may mean it.
INCLUDE_SUMMARY = "the stages of another config file, in place: a pooling head on an imported trunk"


class _LazyModule(types.ModuleType):
    """A module imported on first use of one of its names, whose names it then copies in: each
    later use is a plain module attribute. (An ``import`` inside ``__call__`` costs 5 us a call
    right after a kernel has streamed a map through the caches: a tenth of a GeM.)"""

    def __getattr__(self, name: str):
        if name.startswith("__"):  # doctest and inspect probe for __wrapped__ and the like
            raise AttributeError(name)
        module = importlib.import_module(self.__name__)
        self.__dict__.update(module.__dict__)
        return getattr(module, name)

    def __reduce__(self):  # pickled by name, as a module is: another process imports its own
        return _LazyModule, (self.__name__,)


def kernel_module(name: str) -> types.ModuleType:
    """``poolcli.kernels.<name>``, imported when a stage first calls one of its kernels.

    >>> kernel_module("pool").max_pool.__module__
    'poolcli.kernels.pool'
    >>> import pickle; pickle.loads(pickle.dumps(kernel_module("pool"))).avg_pool.__name__
    'avg_pool'
    """
    return _LazyModule(f"poolcli.kernels.{name}")


def register_stage(*names: str):
    """Class decorator: make a stage class available under each of ``names`` (first = canonical)."""

    def register(cls):
        for name in names:
            if name in STAGES:
                raise RuntimeError(f"stage type {name!r} registered twice")
            STAGES[name] = cls
        cls.type_names = names
        return cls

    return register


@dataclass(frozen=True)
class ReceptiveField:
    """Receptive field of one output position: ``size`` input pixels, ``jump`` between
    neighbouring outputs; ``size=None`` means the whole input (after a global stage)."""

    size: tuple[int, int] | None = (1, 1)
    jump: tuple[int, int] = (1, 1)

    def through(self, span: tuple[int, int], stride: tuple[int, int]) -> "ReceptiveField":
        """After a window of ``span`` (dilated kernel) and ``stride``."""
        if self.size is None:
            return self
        size = tuple(r + (k - 1) * j for r, k, j in zip(self.size, span, self.jump))
        return ReceptiveField(size, tuple(j * s for j, s in zip(self.jump, stride)))

    def __str__(self) -> str:
        return "global" if self.size is None else f"{self.size[0]}x{self.size[1]}"


GLOBAL = ReceptiveField(None)


class Stage(Model):
    """Base of every stage model. ``name`` and ``from`` are accepted by every stage."""

    type: str
    name: str | None = Field(None, description="unique name; default <type><index>")
    from_: str | list[str] | None = Field(
        None, alias="from", description="earlier stage(s) (or 'input') whose output this stage takes"
    )

    type_names: ClassVar[tuple[str, ...]] = ()
    inputs: ClassVar[int | str] = 1  # 1, or "many" for stages that take a list
    summary: ClassVar[str] = ""  # one line for `poolcli stages`
    makes_vector: ClassVar[bool] = False  # True for map -> vector stages
    example: ClassVar[dict] = {}  # parameters of the worked example `poolcli stages TYPE` shows

    def takes_many(self) -> bool:
        """Whether ``from`` lists several inputs (``inputs = "many"``); the arithmetic stages
        take one input with a ``value`` and several without."""
        return self.inputs == "many"

    def output_rank(self, *ranks: int) -> int:
        """Rank of the output (3 for a map, 1 for a vector) given the inputs' ranks."""
        return 1 if self.makes_vector else ranks[0]

    # --- shapes and costs (pure arithmetic) --------------------------------------------------

    def output_shape(self, *shapes: tuple[int, ...]) -> tuple[int, ...]:
        raise NotImplementedError

    def params(self, *shapes) -> int:
        """Number of learned or fixed weights the stage holds."""
        return 0

    def macs(self, *shapes) -> int:
        """Multiply-adds (or comparisons) to compute the output, for ``inspect``."""
        return math.prod(self.output_shape(*shapes))

    def receptive_field(self, rf: ReceptiveField, *shapes) -> ReceptiveField:
        """The receptive field after this stage, given the one of its (first) input."""
        return rf

    def link(self, earlier: dict[str, tuple["Stage", tuple[str, ...]]]) -> tuple[str, ...]:
        """Called once when the pipeline is built, with every earlier stage by name (its stage
        and input names). Returns the names of extra maps to pass after the stage's inputs;
        raises ValueError for a bad reference. Most stages need nothing (``max_unpool`` uses
        this to find its ``max_pool``)."""
        return ()

    # --- helpers for subclasses ---------------------------------------------------------------

    def expect_map(self, shape) -> tuple[int, int, int]:
        if len(shape) != 3:
            raise ShapeError(f"{self.type} needs a (C, H, W) feature map, got a vector of length {shape[0]}")
        return shape

    def expect_vector(self, shape) -> tuple[int]:
        if len(shape) != 1:
            raise ShapeError(f"{self.type} needs a vector, got a feature map of shape {tuple(shape)}")
        return shape

    def __call__(self, *xs: np.ndarray) -> np.ndarray:
        raise NotImplementedError


def stage_label(raw: dict) -> str:
    """`` (max_pool 'pool1')`` for messages."""
    name = raw.get("name")
    return f" ({raw.get('type')} {name!r})" if name is not None else f" ({raw.get('type')})"


def build_stage(raw: dict[str, Any], index: int, context: dict | None = None) -> Stage:
    """Validate one raw stage mapping with its registered model."""
    where = ("stages", index)
    kind = raw.get("type")
    if kind is None:
        raise ConfigError(f"stages[{index}]: 'type' is required (see `poolcli stages`)", loc=where)
    cls = STAGES.get(kind) if isinstance(kind, str) else None
    if cls is None:
        guess = suggest_type(str(kind), {"include": INCLUDE_SUMMARY})
        hint = f"did you mean '{guess}'?" if guess else "see `poolcli stages` for the list"
        raise ConfigError(f"stages[{index}].type: unknown stage type {kind!r} ({hint})", loc=where + ("type",))
    try:
        return validate_model(cls, raw, where, stage_label(raw), context=context)
    except ValueError as exc:  # raised by a stage's own checks outside pydantic
        raise ConfigError(f"stages[{index}]{stage_label(raw)}: {exc}", loc=where) from None


# --- "did you mean" for a stage type -----------------------------------------------------------

# Words users write for what the names and summaries say otherwise ("global_mean_pool").
_SYNONYMS = {"mean": ("avg",), "average": ("avg", "mean"), "avg": ("mean",), "maximum": ("max",), "max": ("maximum",),
             "sum": ("add",), "normalize": ("norm",), "normalise": ("norm",), "pooling": ("pool",)}


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


def _similarity(word: str, other: str) -> float:
    """1 for the same word, the edit similarity of a near miss ("pol", "pool"), else 0."""
    if word == other:
        return 1.0
    ratio = difflib.SequenceMatcher(None, word, other).ratio()
    return ratio if ratio >= 0.8 else 0.0


def suggest_type(kind: str, extra: dict[str, str] | None = None) -> str | None:
    """The registered stage type that ``kind`` most likely means, or None.

    Both how ``kind`` is spelt and what its words say count: each word of ``kind`` is looked
    up among each type's names and aliases (fully) and the words of its one-line summary (half),
    rare words weighing more than ``pool``, so that an invented name finds the stage it
    describes, not the one with the fewest letters changed. ``extra`` adds names (with their
    summaries) that are not registered stages, such as ``include``.

    >>> suggest_type("gem_pool"), suggest_type("global_mean_pool"), suggest_type("maxpool")
    ('gem', 'global_avg_pool', 'max_pool')
    >>> suggest_type("spco"), suggest_type("xyzzy")
    ('spoc', None)
    """
    entries = [(name, cls.type_names, cls.summary) for name, cls in STAGES.items()]
    entries += [(name, (name,), summary) for name, summary in (extra or {}).items()]
    vocabulary = {}  # name -> (name words, summary words) of the stage it belongs to
    for name, names, summary in entries:
        words = {w for n in names for w in (*_words(n), n.replace("_", ""))}
        vocabulary[name] = (words, set(_words(summary)) - words)
    asked = _words(kind)
    if not asked:
        return None

    def match(word: str, name: str) -> float:
        name_words, summary_words = vocabulary[name]
        forms = (word, *_SYNONYMS.get(word, ()))
        return max(max((_similarity(f, w) for f in forms for w in name_words), default=0.0),
                   0.5 * max((_similarity(f, w) for f in forms for w in summary_words), default=0.0))

    classes = {tuple(sorted(names)): name for name, names, _ in entries}  # an alias and its type count once
    weights = []
    for word in asked:
        found = sum(1 for name in classes.values() if match(word, name) > 0)
        weights.append(math.log((len(classes) + 1) / (found + 1)) + 0.1)
    compact = "".join(asked)
    best, best_score = None, 0.0
    for name in vocabulary:
        meaning = sum(w * match(word, name) for w, word in zip(weights, asked)) / sum(weights)
        spelling = difflib.SequenceMatcher(None, compact, name.replace("_", "")).ratio()
        if meaning < 0.5 and spelling < 0.6:
            continue
        score = meaning + 0.5 * spelling
        if score > best_score:
            best, best_score = name, score
    return best
