"""Pipeline: builds stages from a config, traces shapes and costs, applies stages to a map.

Stages form a small graph: each takes the previous stage's output, or with ``from`` the output
of any earlier stage (or ``input``). Only the stages the last one depends on are computed, and
each intermediate map is dropped as soon as its last consumer has run.
"""

from __future__ import annotations

import copy
import functools
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from poolcli.heap import keep_freed_memory
from poolcli.layout import is_channels_last
from poolcli.config import PipelineConfig, line_of, load_config, open_weights, read_config_file
from poolcli.errors import ConfigError, ShapeError
from poolcli.stages import STAGES, ReceptiveField, Stage, build_stage
from poolcli.stages.global_pool import GeMPool
from poolcli.stages.resample import Upsample
from poolcli.stages.rmac import RMAC
from poolcli.stages.whiten import Whiten


@dataclass(frozen=True)
class Node:
    """A stage in the graph: its unique name and the names of the maps it reads."""

    name: str
    stage: Stage
    inputs: tuple[str, ...]


@dataclass(frozen=True)
class TraceRecord:
    """What ``inspect`` prints for one stage."""

    name: str
    type: str
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    params: int
    macs: int
    receptive_field: ReceptiveField
    out_bytes: int


class Pipeline:
    """A validated, ready-to-run pipeline.

    Examples
    --------
    >>> pipe = Pipeline.from_config({"stages": [{"type": "max_pool", "kernel_size": 2}, {"type": "gem"}]})
    >>> [r.out_shape for r in pipe.trace((3, 8, 8))]
    [(3, 4, 4), (3,)]
    """

    def __init__(self, config: PipelineConfig, text: str | None = None, source: str | None = None):
        self.config = config
        self.text = text  # the YAML as given, when built from a file
        self.source = source
        self.included: list[tuple[str, str]] = []  # (path, text) of each config an include stage read
        self.weights_files: list[Path] = []  # the weights file of the config and of each config it includes
        self.nodes = _build_nodes(config, (Path(source).resolve(),) if source else (), self.included,
                                  self.weights_files)
        self._needed = _needed(self.nodes)
        self._last_use = _last_use(self.nodes, self._needed)
        _plan_layouts(self.nodes, self._needed)
        self._gates = _foldable_gates(self.nodes, self._needed)
        self._fits: dict[tuple[int, ...], tuple] = {}  # input shapes traced without error -> _fit's costs
        keep_freed_memory()  # the maps of one image reuse the memory of the last one's
        if config.multiscale and self.kind != "descriptors":
            raise ConfigError(
                "multiscale: applies to pipelines that end in a descriptor; this one writes feature maps",
                loc=("multiscale",),
            )

    # --- construction ---------------------------------------------------------------------

    @classmethod
    def from_config(cls, data: dict[str, Any], base_dir: str | Path = ".") -> "Pipeline":
        """Build from a mapping with the YAML's schema; relative paths resolve against ``base_dir``."""
        return cls(load_config(copy.deepcopy(data), base_dir))

    @classmethod
    def from_yaml(cls, path: str | Path) -> "Pipeline":
        """Build from a YAML file, or from the name of a config shipped with poolcli
        (``"retrieval"``, as the commands take it; a file of that name here wins); errors carry
        the YAML line where it can be found."""
        from poolcli.shipped import find_config

        path = find_config(path)
        data, text = read_config_file(path)
        try:
            return cls(load_config(data, path.parent), text=text, source=str(path))
        except ConfigError as exc:
            line = line_of(text, exc.loc) if exc.loc else None
            place = f"{path}:{line}" if line else str(path)
            raise ConfigError(f"{place}: {exc}", loc=exc.loc) from None

    # --- shapes -----------------------------------------------------------------------------

    @property
    def input_channels(self) -> int:
        return self.config.input.channels

    @property
    def final(self) -> Node:
        return self.nodes[-1]

    @property
    def needed(self) -> frozenset[str]:
        """Names of the stages the last one depends on: a call computes only these."""
        return frozenset(self._needed)

    @functools.cached_property
    def kind(self) -> str:
        """``descriptors`` when the last stage gives a vector, else ``maps`` (independent of size)."""
        ranks = {"input": 3}
        for node in self.nodes:
            rank = node.stage.output_rank(*(ranks[n] for n in node.inputs))
            ranks[node.name] = rank
        return "descriptors" if ranks[self.final.name] == 1 else "maps"

    @functools.cached_property
    def normalize(self) -> str:
        return self.config.output.normalize or ("l2" if self.kind == "descriptors" else "none")

    @property
    def multiscale_power(self) -> float:
        """The power ``p`` of the multi-scale mean, as cnnimageretrieval-pytorch picks it: the
        GeM ``p`` when the descriptor is one GeM pooling, neither regional (rmac) nor whitened;
        else 1, the plain mean."""
        stages = [node.stage for node in self.nodes if node.name in self._needed]
        powers = {stage.p for stage in stages if isinstance(stage, GeMPool)}
        plain = not any(isinstance(stage, (RMAC, Whiten)) for stage in stages)
        return powers.pop() if len(powers) == 1 and plain else 1.0

    def trace(self, shape: tuple[int, ...]) -> list[TraceRecord]:
        """One record per stage for an input of ``shape`` ((C, H, W), or (H, W) for C = input
        channels); raises :class:`ShapeError` naming the first stage that cannot fit. Runs no kernel.

        With ``multiscale``, the stages are traced at every scale: the records of a scale other
        than 1 follow a ``rescale`` record and carry ``@scale`` in their names, and a last
        ``multiscale`` record combines the descriptors."""
        return self._trace_scales(shape)[0]

    def _trace_scales(self, shape: tuple[int, ...]) -> tuple[list[TraceRecord], tuple[tuple[int, ...], ...]]:
        """:meth:`trace`'s records, and each stage's multiply-adds at each scale (one scale
        without ``multiscale``)."""
        shape = tuple(int(s) for s in shape)
        if len(shape) == 2:
            shape = (self.input_channels, *shape)
        if len(shape) != 3 or min(shape) < 1:
            raise ShapeError(f"an input shape is (C, H, W) with every size >= 1, got {shape}")
        if not self.config.multiscale:
            records = self._trace_at(shape, ReceptiveField())
            return records, (tuple(record.macs for record in records),)
        records, lengths, costs = [], {}, []
        for scale in self.config.multiscale:
            suffix, rf, scaled = "", ReceptiveField(), shape
            if scale != 1:
                suffix = f"@{scale:g}"
                resize = _rescale(scale)
                try:
                    scaled = resize.output_shape(shape)
                except ShapeError as exc:
                    raise ShapeError(f"multiscale {scale:g}: {exc}", stage="multiscale") from None
                rf = resize.receptive_field(rf, shape)
                records.append(TraceRecord("input" + suffix, "rescale", shape, scaled, 0, resize.macs(shape), rf,
                                           4 * math.prod(scaled)))
            stages = self._trace_at(scaled, rf, suffix)
            records.extend(stages)
            lengths[scale] = records[-1].out_shape
            costs.append(tuple(record.macs for record in stages))
        first = self.config.multiscale[0]
        for scale, length in lengths.items():
            if length != lengths[first]:
                raise ShapeError(
                    f"multiscale: the descriptor has length {lengths[first][0]} at scale {first:g} but "
                    f"{length[0]} at scale {scale:g}; every scale must give the same length",
                    stage="multiscale",
                )
        out = lengths[first]
        records.append(TraceRecord("multiscale", "multiscale", tuple(lengths.values()), out, 0,
                                   3 * len(lengths) * out[0], records[-1].receptive_field, 4 * out[0]))
        return records, tuple(costs)

    def _trace_at(self, shape: tuple[int, int, int], field: ReceptiveField, suffix: str = "") -> list[TraceRecord]:
        shapes = {"input": shape}
        fields = {"input": field}
        records = []
        for node in self.nodes:
            ins = [shapes[n] for n in node.inputs]
            stage = node.stage
            try:
                out = tuple(stage.output_shape(*ins))
                _check_output_size(out)
                params, macs = stage.params(*ins), stage.macs(*ins)
                rf = stage.receptive_field(fields[node.inputs[0]], *ins)
            except ShapeError as exc:
                at = f" at scale {suffix[1:]}" if suffix else ""
                raise ShapeError(f"stage '{node.name}' ({stage.type}){at}: {exc}", stage=node.name) from None
            shapes[node.name], fields[node.name] = out, rf
            records.append(TraceRecord(node.name + suffix, stage.type, ins[0] if len(ins) == 1 else tuple(ins), out,
                                       params, macs, rf, 4 * math.prod(out)))
        return records

    def output_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        return self.trace(shape)[-1].out_shape

    def probe_shapes(self) -> list[tuple[int, int, int]]:
        """Input shapes that stand for every image a run may give: the one shape a fixed resize
        gives, else square, landscape and portrait ones of the size ``input.resize`` leads to
        (a typical photo's sizes without a resize)."""
        channels, resize = self.input_channels, self.config.input.resize
        if resize is not None and resize.size is not None:
            return [(channels, *resize.size)]
        sizes = [(512, 512), (480, 640), (640, 480), (256, 1024), (1024, 256), (1536, 2048), (2048, 1536)]
        if resize is not None:
            sizes = list(dict.fromkeys(resize.target(h, w) for h, w in sizes))
        return [(channels, h, w) for h, w in sizes]

    def check_shapes(self) -> set[tuple[int, ...]]:
        """Check the rules of shape that hold whatever the image's size (a stage given a vector
        where it needs a map, channels that do not match, a whitening of another length); return
        the output shapes of :meth:`probe_shapes`, several where the output follows the image's
        size (a ``flatten`` without a fixed resize).

        Raises :class:`ConfigError` naming the stage when no input shape fits the config, which
        then could not run on any image; a problem only some sizes have (a 3x3 window on a 2x2
        map) is not an error here: ``inspect`` shows it, and a run records such images as
        failures."""
        shapes, first_error = set(), None
        for shape in self.probe_shapes():
            try:
                shapes.add(self.output_shape(shape))
            except ShapeError as exc:
                first_error = first_error or exc
        if not shapes:
            names = [node.name for node in self.nodes]
            loc = ("stages", names.index(first_error.stage)) if first_error.stage in names else ()
            message = f"{first_error} (whatever the image's size: no image can run through this config)"
            if self.text is not None:
                line = line_of(self.text, loc) if loc else None
                message = f"{self.source}:{line}: {message}" if line else f"{self.source}: {message}"
            raise ConfigError(message, loc=loc)
        return shapes

    # --- running ----------------------------------------------------------------------------

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """Apply mean/std, every needed stage and the output normalisation to a (C, H, W) map
        (or (H, W): one channel), or to a batch: an (N, C, H, W) array or a list of arrays,
        whose outputs are stacked, (N, D) descriptors or (N, C', H', W') maps (maps of a list
        must then share one shape).

        Values are taken as they are, cast to float32: decode files with :func:`poolcli.load_image`
        (8-bit images / 255) for what a run computes. uint8 and uint16 arrays, the pixels of an
        image read some other way, are refused rather than taken as 0-255 or 0-65535; so is an
        (H, W, C) array, as ``np.asarray(Image.open(path))`` gives.

        With ``multiscale`` (as cnnimageretrieval-pytorch's ``extract_ms``): the standardised
        input is resized by each scale (bilinear, = torch ``interpolate``), each scale's
        descriptor is computed and normalised, and they are combined by the power mean
        ``(mean_s y_s^p)^(1/p)`` (:attr:`multiscale_power`; powers of negative entries keep
        their sign), then normalised.

        Raises :class:`ShapeError` naming the stage if the map does not fit; the input is not
        modified."""
        batch = _batch(x)
        if batch is not None:
            return _stack([self(item) for item in batch])
        x = _as_map(x)
        costs = self._fits.get(x.shape)
        if costs is None:
            costs = self._fit(x.shape)  # every shape problem is found here, before any kernel runs
        if not self.config.multiscale:
            return self._normalize(self._run(x, costs[0])[self.final.name])
        power = self.multiscale_power
        total = None
        for scale, scale_costs in zip(self.config.multiscale, costs):
            y = self._normalize(self._run(x, scale_costs, scale=scale)[self.final.name])
            y = _signed_power(y.astype(np.float64), power)
            total = y if total is None else total + y
        combined = _signed_power(total / len(self.config.multiscale), 1.0 / power)
        return self._normalize(combined.astype(np.float32))

    def _fit(self, shape: tuple[int, int, int]) -> tuple[tuple[int, ...] | None, ...]:
        """:meth:`trace` an input shape, giving each stage's multiply-adds at each scale, which
        decide how many threads a stage runs on (None for a scale where no needed stage is
        small: all run on the caller's threads). Once per input shape: a run's images share few
        sizes, and tracing a long pipeline costs as much as running it on a small map."""
        costs = tuple(scale if any(_small(scale[step[0]]) for step in self._steps) else None
                      for scale in self._trace_scales(shape)[1])
        if len(self._fits) < 4096:
            self._fits[shape] = costs
        return costs

    def outputs(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """Every stage's output by name (``input``: the standardised input), before the output
        normalisation: what ``poolcli show`` draws. At scale 1 only, even with ``multiscale``."""
        x = _as_map(x)
        costs = tuple(record.macs for record in self._trace_at(x.shape, ReceptiveField()))
        return self._run(x, costs, keep_all=True)

    def _run(self, x: np.ndarray, costs: tuple[int, ...] | None, scale: float = 1.0,
             keep_all: bool = False) -> dict[str, np.ndarray]:
        """The needed stages' outputs (every stage's with ``keep_all``) for a contiguous float32
        map; ``costs``: each stage's multiply-adds, or None when no stage is small. This is the
        path of every image, and between two stages every step of Python runs with cold caches
        (the stage before has just streamed a map through them): each step here is worth its
        cost (a GeM of 512x32x32 takes 50 us, the Python around it 10-20 us)."""
        if self._mean_std is not None:
            x = self._standardize(x)
        if scale != 1:
            x = _rescale(scale)(x)
        values = {"input": x}
        threads = None if costs is None else _StageThreads()
        reusers = frozenset() if keep_all else self._residual_reusers  # every map is the caller's with keep_all
        gates = frozenset() if keep_all else self._gates
        try:
            for index, name, stage, inputs, done in self._every_step if keep_all else self._steps:
                if threads is not None:
                    threads.fit(costs[index])
                args = [values[used] for used in inputs]
                if index in gates and (gated := _gated(*args)) is not None:
                    values[name] = gated  # for the 1x1 conv that reads it: no product of the whole map
                    for used in done:
                        del values[used]
                    continue
                more = {}
                if isinstance(args[0], Gated):
                    more["gate"] = args[0].gate
                    args[0] = args[0].map
                if index in reusers and _unshared(values[inputs[1]]):
                    out = stage(*args, into_residual=True, **more)
                else:
                    out = stage(*args, **more)
                values[name] = out if _settled(out) else np.ascontiguousarray(out, dtype=np.float32)
                del out  # the map's one holder is values
                for used in done:
                    del values[used]
        finally:
            if threads is not None:
                threads.restore()
        return values

    @functools.cached_property
    def _steps(self) -> list[tuple[int, str, Stage, tuple[str, ...], tuple[str, ...]]]:
        """The needed stages in order: (index in nodes, name, stage, input names, names of the
        maps no later stage reads, freed right after it runs)."""
        return [(index, node.name, node.stage, node.inputs, tuple(self._last_use.get(node.name, ())))
                for index, node in enumerate(self.nodes) if node.name in self._needed]

    @functools.cached_property
    def _residual_reusers(self) -> frozenset[int]:
        """The needed conv stages that may write their output over their residual: a stage's
        map (not the caller's input) that no later stage reads. ResNet-50 at 768x1024 holds one
        map of 50 MB less so."""
        from poolcli.stages.conv import Conv

        return frozenset(index for index, _, stage, inputs, done in self._steps
                         if isinstance(stage, Conv) and len(inputs) == 2 and inputs[1] != "input"
                         and inputs[1] != inputs[0] and inputs[1] in done)

    @functools.cached_property
    def _every_step(self) -> list[tuple[int, str, Stage, tuple[str, ...], tuple[str, ...]]]:
        """Every stage in order, as :attr:`_steps`, freeing nothing."""
        return [(index, node.name, node.stage, node.inputs, ()) for index, node in enumerate(self.nodes)]

    def _standardize(self, x: np.ndarray) -> np.ndarray:
        mean, std = self._mean_std
        if len(mean) not in (1, x.shape[0]):
            raise ShapeError(f"input.mean has {len(mean)} values but the map has {x.shape[0]} channels")
        return np.ascontiguousarray((x - mean) / std, dtype=np.float32)

    @functools.cached_property
    def _mean_std(self) -> tuple[np.ndarray, np.ndarray] | None:
        """input.mean and input.std as (C, 1, 1) float32 arrays, or None (no standardisation)."""
        mean, std = self.config.input.mean, self.config.input.std
        if mean is None:
            return None
        return np.asarray(mean, np.float32).reshape(-1, 1, 1), np.asarray(std, np.float32).reshape(-1, 1, 1)

    def _normalize(self, y: np.ndarray) -> np.ndarray:
        if self.normalize != "l2":
            return y
        # Vectors: y / max(||y||, eps) as torch.nn.functional.normalize; maps: per position.
        axis = 0
        norm = np.sqrt(np.sum(np.square(y, dtype=np.float64), axis=axis, keepdims=True))
        return (y / np.maximum(norm, 1e-12)).astype(np.float32)


#: Below this many multiply-adds or comparisons a stage's kernels run on one thread, where a
#: parallel launch (about 10 microseconds on an idle machine) would cost more than it saves.
#: Above it two threads halve the time even of bandwidth-bound stages: GeM of 512x32x32 (1M)
#: takes 0.14 ms on one thread and 0.07 ms on two; SPP 1,2,4 of 256x64x64 0.44 and 0.22 ms.
#: While another process keeps a core busy the median stays so, but a launch now and then waits
#: for the scheduler (GeM's mean 0.52 ms on two threads, torch's 2.0 ms; measured with
#: timing loops beside a busy ``python -c "while True: pass"``). torch has the same kind of rule
#: (its GRAIN_SIZE).
SERIAL_WORK = 500_000


def _small(work: int) -> bool:
    """Whether a stage of ``work`` runs on one thread (below :data:`SERIAL_WORK`)."""
    return work < SERIAL_WORK


class _StageThreads:
    """The kernels' threads over one pipeline call: one thread for a stage whose work (multiply-
    adds or comparisons, as ``Stage.macs`` counts them) is below :data:`SERIAL_WORK`, the
    caller's number for the others, switched only where that changes and restored at the end
    (switching costs 15 us; a pipeline of small stages would pay it at every stage). Nothing is
    imported or asked of Numba until a small stage comes."""

    def __init__(self):
        self.saved = None  # the caller's number of threads, while one thread is set
        self.single = False  # the caller runs kernels on one thread anyway

    def fit(self, work: int) -> None:
        """Set the threads for a stage of ``work``."""
        if not _small(work):
            self.restore()
        elif self.saved is None and not self.single:
            import poolcli.kernels  # noqa: F401  (sets Numba's cache folder before numba is imported)
            import numba

            threads = numba.get_num_threads()
            if threads == 1:
                self.single = True
            else:
                numba.set_num_threads(1)
                self.saved = threads

    def restore(self) -> None:
        """Give the caller back its number of threads, if one thread is set."""
        if self.saved is not None:
            import numba

            numba.set_num_threads(self.saved)
            self.saved = None


def _as_map(x: np.ndarray) -> np.ndarray:
    """``x`` as a contiguous float32 (C, H, W) map, or a clear error for what it cannot be."""
    x = np.asarray(x)
    if x.dtype in (np.uint8, np.uint16):
        bits = 8 * x.dtype.itemsize
        raise ShapeError(
            f"the input is {x.dtype} (an image's {bits}-bit pixels?): a pipeline takes values as they are, and "
            f"decoded images are in [0, 1]; pass x / {2 ** bits - 1} (as poolcli.load_image scales {bits}-bit "
            "images), or x.astype(np.float32) to keep the values"
        )
    if x.ndim == 2:
        x = x[None]
    if x.ndim != 3:
        raise ShapeError(f"the input must be (C, H, W) or (H, W), got shape {x.shape}")
    # An image's size, then 1 to 4 colours: (H, W, C). Maps of 16 or more channels and rows
    # are at least 16 pixels wide in practice, the width this takes for colours.
    if x.shape[2] in (1, 3, 4) and min(x.shape[:2]) >= 16:
        raise ShapeError(
            f"the input has shape {x.shape}: that is (H, W, C), as np.asarray(Image.open(path)) gives, and a "
            "pipeline takes (C, H, W); pass x.transpose(2, 0, 1), or read the file with poolcli.load_image"
        )
    return np.ascontiguousarray(x, dtype=np.float32)


def _batch(x) -> list | None:
    """The items of a batch, an (N, C, H, W) array or a list or tuple of arrays; None for one map."""
    if isinstance(x, (list, tuple)):
        if x and all(isinstance(item, np.ndarray) for item in x):
            return list(x)
        if not x:
            raise ShapeError("the input is an empty list: give a map, or a list of at least one")
        return None  # nested lists of numbers: one map
    if isinstance(x, np.ndarray) and x.ndim == 4:
        return list(x)
    return None


def _stack(outputs: list[np.ndarray]) -> np.ndarray:
    shapes = sorted({y.shape for y in outputs})
    if len(shapes) > 1:
        raise ShapeError(f"the batch's outputs have different shapes ({', '.join(map(str, shapes[:3]))}): "
                         "call the pipeline on each map, or resize the maps to one size")
    return np.stack(outputs)


def _rescale(scale: float) -> Upsample:
    """The multi-scale resize: bilinear by ``scale``, = torch ``interpolate`` (align_corners
    false), as cirtorch's ``extract_ms`` resizes."""
    return Upsample(type="upsample", scale_factor=scale, mode="bilinear")


def _signed_power(y: np.ndarray, power: float) -> np.ndarray:
    """``sign(y) * |y| ** power``: ``y ** power`` wherever that is defined (y >= 0)."""
    return y if power == 1 else np.sign(y) * np.abs(y) ** power


#: No stage output may hold more values than this (16 GiB of float32): a config that asks for
#: more (an output_size or scale_factor of a billion) gets a shape error, not a hang or a crash.
MAX_OUTPUT_VALUES = 2**32


def _check_output_size(shape: tuple[int, ...]) -> None:
    values = math.prod(shape)
    if values > MAX_OUTPUT_VALUES:
        raise ShapeError(f"its output {'x'.join(map(str, shape))} would hold {values:.3g} values, more than the "
                         f"limit of {MAX_OUTPUT_VALUES} (16 GiB)")


#: The stage type that puts another config's stages in place (handled here, not a registered stage).
INCLUDE = "include"
MAX_INCLUDE_DEPTH = 8


def _build_nodes(config: PipelineConfig, included: tuple[Path, ...] = (), reads: list | None = None,
                 weights: list | None = None) -> list[Node]:
    """The config's stages as graph nodes; ``reads`` collects (path, text) of every included
    config, ``weights`` the path of every weights file opened (this config's and theirs)."""
    nodes: list[Node] = []
    names = {"input"}
    earlier: dict[str, tuple[Stage, tuple[str, ...]]] = {}  # grown as stages are built: linear, not quadratic
    context = {"base_dir": config.base_dir, "weights": open_weights(config)}
    if context["weights"] is not None and weights is not None:
        weights.append(context["weights"].path)
    for index, raw in enumerate(config.stages):
        if raw.get("type") == INCLUDE:
            added = _include(raw, index, config, nodes, names, included, reads, weights)
        else:
            stage = build_stage(raw, index, context)
            name = stage.name or f"{stage.type}{index}"
            where = f"stages[{index}] ({stage.type} '{name}')"
            inputs = _inputs_of(stage, nodes, names, where, index)
            try:
                inputs += stage.link(earlier)
            except ValueError as exc:
                raise ConfigError(f"{where}: {exc}", loc=("stages", index)) from None
            added = [Node(name, stage, inputs)]
        for node in added:
            if node.name in names:
                raise ConfigError(f"stages[{index}] ({node.stage.type} '{node.name}').name: '{node.name}' is already "
                                  "used by an earlier stage", loc=("stages", index, "name"))
            nodes.append(node)
            earlier[node.name] = (node.stage, node.inputs)
            names.add(node.name)
    return nodes


def _include(raw: dict, index: int, config: PipelineConfig, nodes: list[Node], names: set[str],
             included: tuple[Path, ...], reads: list | None, weights: list | None = None) -> list[Node]:
    """The stages of the config that ``{type: include, config: PATH}`` names, taking this
    stage's input where theirs take ``input``; with ``name``, their last stage is known by it.
    Only the stages (and the files they reference) are taken: the including config's ``input``
    and ``output`` sections apply."""
    where = f"stages[{index}] (include)"
    unknown = sorted(set(raw) - {"type", "config", "name", "from"})
    if unknown:
        raise ConfigError(f"{where}.{unknown[0]}: unknown key; include takes config, name and from",
                          loc=("stages", index, unknown[0]))
    target, alias, source = raw.get("config"), raw.get("name"), raw.get("from")
    if not isinstance(target, str) or not target:
        raise ConfigError(f"{where}.config: required: the path of a config file whose stages go here",
                          loc=("stages", index, "config"))
    if alias is not None and not isinstance(alias, str):
        raise ConfigError(f"{where}.name: must be a string, got {alias!r}", loc=("stages", index, "name"))
    if source is not None and (not isinstance(source, str) or source not in names):
        known = ", ".join(sorted(names))
        raise ConfigError(f"{where}.from: no earlier stage is named {source!r} (earlier: {known})",
                          loc=("stages", index, "from"))
    path = Path(target).expanduser()
    path = (path if path.is_absolute() else Path(config.base_dir) / path).resolve()
    if path in included or len(included) >= MAX_INCLUDE_DEPTH:
        chain = " -> ".join(p.name for p in (*included, path))
        raise ConfigError(f"{where}.config: includes nest too deep or in a circle ({chain})", loc=("stages", index, "config"))
    data, text = read_config_file(path)
    if reads is not None:
        reads.append((str(path), text))
    try:
        inner = _build_nodes(load_config(data, path.parent), (*included, path), reads, weights)
    except ConfigError as exc:
        line = line_of(text, exc.loc) if exc.loc else None
        place = f"{path}:{line}" if line else str(path)
        raise ConfigError(f"{where}: {place}: {exc}", loc=("stages", index, "config")) from None
    start = source or (nodes[-1].name if nodes else "input")
    inner = [Node(n.name, n.stage, tuple(start if i == "input" else i for i in n.inputs)) for n in inner]
    if alias is not None:
        last = inner[-1]
        if any(last.name in n.inputs for n in inner):
            raise ConfigError(f"{where}.name: the included config's last stage '{last.name}' is read by others "
                              "in it and cannot be renamed", loc=("stages", index, "name"))
        inner[-1] = Node(alias, last.stage, last.inputs)
    return inner


def _inputs_of(stage: Stage, nodes: list[Node], names: set[str], where: str, index: int) -> tuple[str, ...]:
    loc = ("stages", index, "from")
    source = stage.from_
    many = stage.takes_many()
    if source is None:
        if many:
            raise ConfigError(f"{where}.from: {stage.type} takes a list of earlier stages, e.g. from: [a, b]", loc=loc)
        return (nodes[-1].name if nodes else "input",)
    listed = [source] if isinstance(source, str) else list(source)
    if many and (isinstance(source, str) or len(listed) < 1):
        raise ConfigError(f"{where}.from: {stage.type} takes a list of earlier stages, e.g. from: [a, b]", loc=loc)
    if not many and len(listed) != 1:
        raise ConfigError(f"{where}.from: {stage.type} takes one input, got {len(listed)}", loc=loc)
    for name in listed:
        if name not in names:
            known = ", ".join(sorted(names)) or "input"
            raise ConfigError(f"{where}.from: no earlier stage is named '{name}' (earlier: {known})", loc=loc)
    return tuple(listed)


def _needed(nodes: list[Node]) -> set[str]:
    """Names of the stages the last stage depends on."""
    by_name = {n.name: n for n in nodes}
    needed, todo = set(), [nodes[-1].name]
    while todo:
        name = todo.pop()
        if name in needed or name == "input":
            continue
        needed.add(name)
        todo.extend(by_name[name].inputs)
    return needed


def _readers(nodes: list[Node], needed: set[str]) -> dict[str, list[tuple[Node, int]]]:
    """For each map, the needed stages that read it and where among their inputs."""
    readers: dict[str, list[tuple[Node, int]]] = {}
    for node in nodes:
        if node.name in needed:
            for position, name in enumerate(node.inputs):
                readers.setdefault(name, []).append((node, position))
    return readers


def _plan_layouts(nodes: list[Node], needed: set[str]) -> None:
    """Let the convs that can hand on channels-last maps do so where every reader of their
    output takes one as fast as a plain map (:mod:`poolcli.kernels.channels_last`): the 1x1 and
    depthwise convs of mobile blocks, read by a depthwise conv, a 1x1 conv (as its input, or as
    the residual of a 1x1 conv that hands on such a map itself), the global mean of a
    squeeze-excitation or its product with the gate (whose readers take it in turn); a 1x1 conv
    only where some reader gains by it. The last stage's output is always a plain map."""
    from poolcli.stages.arithmetic import Mul
    from poolcli.stages.conv import Conv
    from poolcli.stages.pool import AdaptiveAvgPool

    readers = _readers(nodes, needed)

    @functools.lru_cache(maxsize=None)
    def taken(name: str) -> bool:
        return name != nodes[-1].name and name in readers and all(map(reads, *zip(*readers[name])))

    def reads(node: Node, position: int) -> bool:
        stage = node.stage
        if isinstance(stage, Conv):  # a 1x1 conv adds a channels-last residual into its own such output
            return stage.pointwise or stage.depthwise if position == 0 else stage.pointwise and hands_on(node.name)
        if isinstance(stage, AdaptiveAvgPool):
            return tuple(stage.output_size) == (1, 1)
        return isinstance(stage, Mul) and stage.activation.fn == "none" and taken(node.name)

    @functools.lru_cache(maxsize=None)
    def hands_on(name: str) -> bool:
        stage = by_name[name].stage
        gain = stage.depthwise or stage.pointwise and any(gains(*reader) for reader in readers.get(name, ()))
        return gain and stage.activation.kernel_arguments is not None and taken(name)

    def gains(node: Node, position: int) -> bool:
        """Whether a reader gains by channels-last: not a 1x1 conv that writes a plain map (it
        reads pixel rows a little slower than a plain map: ConvNeXt's 1x1 pairs gain nothing)."""
        stage = node.stage
        return not isinstance(stage, Conv) or stage.depthwise or hands_on(node.name)

    by_name = {node.name: node for node in nodes}
    for node in nodes:
        if node.name in needed and isinstance(node.stage, Conv) and (node.stage.depthwise or node.stage.pointwise):
            node.stage.hand_on_pixels(hands_on(node.name))


class Gated(NamedTuple):
    """A squeeze-excitation's product ``map * gate`` left undone: the one 1x1 conv that reads
    it multiplies its weights by the (C,) gate instead (:func:`_foldable_gates`)."""

    map: np.ndarray
    gate: np.ndarray


def _gated(a: np.ndarray, b: np.ndarray) -> Gated | None:
    """``a * b`` as a :class:`Gated` where one is a (C, H, W) map and the other its (C, 1, 1) gate."""
    for map_, gate in ((a, b), (b, a)):
        if map_.ndim == 3 and gate.shape == (map_.shape[0], 1, 1) and map_.shape[1:] != (1, 1):
            return Gated(map_, gate.reshape(-1))
    return None


def _foldable_gates(nodes: list[Node], needed: set[str]) -> frozenset[int]:
    """The squeeze-excitation products (``mul`` of two earlier maps, no activation) whose one
    reader is a 1x1 conv of stride 1 without padding or groups: that conv scales its weights by
    the gate (``W diag(g) x = W (g x)``), and the product of the whole map is never made: a
    pass over the block's widest map less (EfficientNet-B0's 16 products took 2.2-2.7 ms of its
    40 at 448x448 on 2 threads; their folding 0.2 ms of its 1x1 convs' time)."""
    from poolcli.stages.arithmetic import Mul
    from poolcli.stages.conv import Conv

    readers = _readers(nodes, needed)
    folded = set()
    for index, node in enumerate(nodes):
        found = readers.get(node.name, [])
        if (node.name in needed and node.name != nodes[-1].name and isinstance(node.stage, Mul)
                and node.stage.activation.fn == "none" and len(node.inputs) == 2 and node.stage.value is None
                and len(found) == 1 and found[0][1] == 0 and isinstance(found[0][0].stage, Conv)
                and found[0][0].stage.pointwise):
            folded.add(index)
    return frozenset(folded)


def _settled(x: np.ndarray) -> bool:
    """Whether a stage's output is kept as it is: float32, C-contiguous or channels-last."""
    return x.dtype == np.float32 and (x.flags.c_contiguous or is_channels_last(x))


def _unshared(x: np.ndarray) -> bool:
    """Whether ``x`` owns its memory and only the pipeline's map of values holds it (no view of
    another map, no reference kept by a stage): it may then be overwritten."""
    return x.flags.owndata and x.flags.writeable and sys.getrefcount(x) <= 3  # the dict, the argument, the call's


def _last_use(nodes: list[Node], needed: set[str]) -> dict[str, list[str]]:
    """For each stage, the maps that can be freed once it has run."""
    last: dict[str, str] = {}
    for node in nodes:
        if node.name in needed:
            for name in node.inputs:
                last[name] = node.name
    freed: dict[str, list[str]] = {}
    for name, user in last.items():
        freed.setdefault(user, []).append(name)
    return freed


def json_schema() -> dict:
    """The config's JSON Schema, with one sub-schema per stage type (for editor completion)."""
    schema = PipelineConfig.model_json_schema(by_alias=True)
    schema["properties"].pop("base_dir", None)
    variants = []
    for name, cls in sorted(STAGES.items()):
        sub = cls.model_json_schema(by_alias=True)
        sub["properties"]["type"] = {"const": name, "description": cls.summary}
        sub["required"] = sorted(set(sub.get("required", [])) | {"type"})
        sub["title"] = name
        sub["additionalProperties"] = False
        schema.setdefault("$defs", {}).update(sub.pop("$defs", {}))
        variants.append(sub)
    variants.append({
        "title": INCLUDE, "type": "object", "additionalProperties": False, "required": ["type", "config"],
        "properties": {
            "type": {"const": INCLUDE, "description": "the stages of another config file, in place (e.g. an imported trunk)"},
            "config": {"type": "string", "description": "path of the config, relative to this config's folder"},
            "name": {"type": "string", "description": "a name for the included config's last stage"},
            "from": {"type": "string", "description": "earlier stage (or 'input') whose output the included stages take"},
        },
    })
    schema["properties"]["stages"] = {"type": "array", "minItems": 1, "items": {"oneOf": variants}}
    schema["title"] = "poolcli pipeline config"
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    return schema
