"""YAML -> validated config objects.

Every error is one line that names the place, ``stages[2] (max_pool 'pool1').kernel_size:
must be >= 1, got 0 (line 12)``. The top level (``input``, ``output``) is validated here; each
stage's parameters are validated by its own model in :mod:`poolcli.stages`, through
:func:`validate_model`, so that every message has the same form.
"""

from __future__ import annotations

import difflib
import math
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, WithJsonSchema, model_validator

from poolcli.errors import ConfigError


class Model(BaseModel):
    """Base of every config model: immutable, unknown keys are errors."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)


# --- small types shared by the stage models ------------------------------------------------


def _plain_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def pair(minimum: int = 0):
    """An int or ``[h, w]`` pair of ints, each ``>= minimum``, normalised to a tuple."""

    def parse(value: Any) -> tuple[int, int]:
        if _plain_int(value):
            value = (value, value)
        elif isinstance(value, (list, tuple)) and len(value) == 2 and all(map(_plain_int, value)):
            value = tuple(value)
        else:
            raise ValueError(f"must be an integer or a pair [h, w] of integers, got {value!r}")
        if min(value) < minimum:
            raise ValueError(f"must be >= {minimum}, got {min(value)}")
        return value

    schema = {
        "oneOf": [
            {"type": "integer", "minimum": minimum},
            {"type": "array", "items": {"type": "integer", "minimum": minimum}, "minItems": 2, "maxItems": 2},
        ]
    }
    return Annotated[tuple[int, int], BeforeValidator(parse), WithJsonSchema(schema)]


def padding_spec(words: tuple[str, ...] = ()):
    """Padding: an int, ``[ph, pw]`` or four ints ``[top, left, bottom, right]`` (ONNX ``pads``
    order), each >= 0, normalised to a tuple of 2 or 4; or one of ``words`` (``same``, ...)."""

    def parse(value: Any):
        if isinstance(value, str):
            if value in words:
                return value
            choices = ", ".join(f"'{w}'" for w in words)
            raise ValueError(f"must be an integer, a pair [ph, pw], four numbers [top, left, bottom, right]"
                             f"{' or one of ' + choices if words else ''}, got {value!r}")
        if _plain_int(value):
            value = (value, value)
        elif isinstance(value, (list, tuple)) and len(value) in (2, 4) and all(map(_plain_int, value)):
            value = tuple(value)
        else:
            raise ValueError(f"must be an integer, a pair [ph, pw] or four numbers [top, left, bottom, right], "
                             f"got {value!r}")
        if min(value) < 0:
            raise ValueError(f"must be >= 0, got {min(value)}")
        return value

    numbers = [
        {"type": "integer", "minimum": 0},
        {"type": "array", "items": {"type": "integer", "minimum": 0}, "minItems": 2, "maxItems": 2},
        {"type": "array", "items": {"type": "integer", "minimum": 0}, "minItems": 4, "maxItems": 4},
    ]
    schema = {"oneOf": numbers + ([{"enum": list(words)}] if words else [])}
    label = "int, [h, w] or [top, left, bottom, right]" + "".join(f" | {w}" for w in words)
    return Annotated[tuple[int, ...] | str, BeforeValidator(parse), WithJsonSchema(schema), label]


PositiveInt = Annotated[int, Field(ge=1, strict=True)]


# --- the top level -------------------------------------------------------------------------


class Resize(Model):
    """Exactly one of ``longest``, ``shortest`` or ``size: [H, W]``."""

    longest: PositiveInt | None = None
    shortest: PositiveInt | None = None
    size: pair(1) | None = None

    @model_validator(mode="after")
    def _exactly_one(self):
        given = [k for k in ("longest", "shortest", "size") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of longest, shortest or size, got {given or 'none'}")
        return self

    def target(self, height: int, width: int) -> tuple[int, int]:
        """The (H, W) an image of ``height x width`` is resized to (aspect kept for longest/shortest)."""
        if self.size is not None:
            return self.size
        side = max(height, width) if self.longest is not None else min(height, width)
        scale = (self.longest or self.shortest) / side
        return max(1, round(height * scale)), max(1, round(width * scale))


class InputConfig(Model):
    color: Literal["rgb", "gray"] = "rgb"
    resize: Resize | None = None
    interpolation: Literal["nearest", "bilinear", "bicubic", "lanczos", "box"] = "bilinear"
    alpha: Literal["white", "black"] = "white"
    # reduced: shrink on load (JPEG DCT scaling, whole-block reduce) where resize shrinks; full:
    # every pixel decoded, as a plain Pillow pipeline does, for results equal to one
    decode: Literal["reduced", "full"] = "reduced"
    mean: list[float] | None = None
    std: list[float] | None = None

    @property
    def channels(self) -> int:
        return 3 if self.color == "rgb" else 1

    @model_validator(mode="after")
    def _mean_std(self):
        if (self.mean is None) != (self.std is None):
            raise ValueError("mean and std go together: give both or neither")
        if self.mean is not None:
            for key in ("mean", "std"):
                if len(getattr(self, key)) not in (1, self.channels):
                    raise ValueError(
                        f"{key} needs 1 or {self.channels} values for color {self.color}, "
                        f"got {len(getattr(self, key))}"
                    )
            if any(s <= 0 for s in self.std):
                raise ValueError("std values must be > 0")
        return self


class OutputConfig(Model):
    normalize: Literal["l2", "none"] | None = None  # None: l2 for descriptors, none for maps
    dtype: Literal["float32", "float16"] = "float32"


def _scale(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"each scale must be a number > 0, got {value!r}")
    return float(value)


Scale = Annotated[float, BeforeValidator(_scale), WithJsonSchema({"type": "number", "exclusiveMinimum": 0})]


class PipelineConfig(Model):
    """The whole config. ``stages`` stay raw dicts here: each is validated by its stage model."""

    name: str | None = None
    input: InputConfig = InputConfig()
    stages: list[dict[str, Any]] = Field(min_length=1)
    output: OutputConfig = OutputConfig()
    multiscale: Annotated[list[Scale], Field(min_length=1)] | None = Field(
        None, description="run the pipeline at each of these scales of the input and combine the descriptors"
    )
    weights: str | None = Field(
        None, description="a safetensors file (relative to the config's folder) whose tensors stages name: "
        "conv filters: conv1.weight"
    )
    base_dir: Path = Field(default=Path("."), exclude=True)  # relative paths resolve here

    @model_validator(mode="before")
    @classmethod
    def _stages_are_mappings(cls, data):
        if isinstance(data, dict):
            stages = data.get("stages")
            if isinstance(stages, list):
                for i, stage in enumerate(stages):
                    if not isinstance(stage, dict):
                        got = shorten(repr(stage), 80)
                        raise ConfigError(f"stages[{i}]: must be a mapping like {{type: max_pool}}, got {got}")
        return data


# --- the weights file ------------------------------------------------------------------------


class WeightsFile:
    """The tensors of a config's ``weights:`` safetensors file, each read on first use and cast
    to float32 (the file holds no code: safetensors has no pickle). ``label`` is the name as the
    config gives it, for messages.

    >>> import tempfile, numpy as np, safetensors.numpy
    >>> path = Path(tempfile.mkdtemp()) / "w.safetensors"
    >>> safetensors.numpy.save_file({"conv1.weight": np.ones((2, 1, 3, 3), np.float16)}, str(path))
    >>> weights = WeightsFile(path, "w.safetensors")
    >>> weights.names, weights.get("conv1.weight").dtype, weights.get("conv2.weight")
    (['conv1.weight'], dtype('float32'), None)
    """

    def __init__(self, path: Path, label: str):
        from safetensors import SafetensorError, safe_open

        self.path, self.label = Path(path), label
        if not self.path.is_file():
            raise ConfigError(f"weights: file not found: {self.path}", loc=("weights",))
        try:
            self._file = safe_open(str(self.path), framework="numpy")
            self.names = sorted(self._file.keys())
        except (SafetensorError, OSError, ValueError) as exc:
            raise ConfigError(f"weights: cannot read {self.path} as safetensors: {exc}", loc=("weights",)) from None
        self._read: dict[str, Any] = {}

    def get(self, name: str):
        """Tensor ``name`` as a read-only float32 array, or None where the file has none of that name;
        ConfigError for a tensor that is not numbers."""
        import numpy as np

        if name in self._read:
            return self._read[name]
        if name not in self.names:
            return None
        dtype = self._file.get_slice(name).get_dtype()
        if dtype == "BOOL":
            raise ConfigError(f"weights: tensor '{name}' in {self.label} is {dtype}, not numbers", loc=("weights",))
        try:
            array = self._file.get_tensor(name)
        except Exception as exc:  # noqa: BLE001  (safetensors raises its own errors and TypeError for bfloat16)
            raise ConfigError(f"weights: cannot read tensor '{name}' of {self.label} ({dtype}): {exc}",
                              loc=("weights",)) from None
        array = np.ascontiguousarray(array, dtype=np.float32)
        array.setflags(write=False)
        self._read[name] = array
        return array


def open_weights(config: "PipelineConfig") -> WeightsFile | None:
    """The config's weights file, opened (its header read), or None without ``weights:``."""
    if config.weights is None:
        return None
    path = Path(config.weights).expanduser()
    return WeightsFile(path if path.is_absolute() else config.base_dir / path, config.weights)


# --- validation with one-line messages -------------------------------------------------------


def _describe(error: dict, model: type[BaseModel]) -> tuple[tuple, str]:
    """(location, message) for one pydantic error."""
    loc = tuple(error["loc"])
    kind, ctx, value = error["type"], error.get("ctx", {}), error.get("input")
    if kind == "extra_forbidden":
        key = loc[-1]
        known = list(_fields_at(model, loc[:-1]))
        guess = difflib.get_close_matches(str(key), known, n=1)
        hint = f" (did you mean '{guess[0]}'?)" if guess else f" (known keys: {', '.join(known)})"
        return loc[:-1], f"unknown key '{key}'{hint}"
    if kind == "missing":
        return loc, "is required"
    if kind in ("greater_than_equal", "greater_than", "less_than_equal", "less_than"):
        op = {"greater_than_equal": ">=", "greater_than": ">", "less_than_equal": "<=", "less_than": "<"}[kind]
        bound = next(iter(ctx.values()))
        return loc, f"must be {op} {bound}, got {value!r}"
    if kind == "literal_error":
        return loc, f"must be one of {ctx.get('expected')}, got {value!r}"
    if kind in ("too_short", "too_long"):
        return loc, error["msg"].replace("List", "list").lower() + f", got {value!r}"
    if kind == "value_error" or kind == "assertion_error":
        return loc, str(ctx.get("error", error["msg"]))
    return loc, f"{error['msg'].lower()}, got {value!r}"


def _fields_at(model: type[BaseModel], loc: tuple) -> list[str]:
    """Field names (by alias) of the sub-model at ``loc`` (for "did you mean")."""
    for part in loc:
        field = model.model_fields.get(part) if isinstance(part, str) else None
        sub = getattr(field, "annotation", None) if field else None
        for candidate in getattr(sub, "__args__", (sub,)):
            if isinstance(candidate, type) and issubclass(candidate, BaseModel):
                model = candidate
                break
    return [f.alias or name for name, f in model.model_fields.items() if not f.exclude]


def format_loc(loc: tuple) -> str:
    """``("stages", 2, "kernel_size")`` -> ``stages[2].kernel_size``."""
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def validate_model(model: type[BaseModel], data: Any, where: tuple = (), label: str = "", context: dict | None = None):
    """Validate ``data`` with ``model``; raise a one-line :class:`ConfigError` naming the place.

    ``where`` is the location of ``data`` in the config (``("stages", 2)``) and ``label`` a
    description put right after it (``" (max_pool 'pool1')"``); ``context`` reaches the
    model's validators (``base_dir`` for relative file paths).
    """
    try:
        return model.model_validate(data, context=context)
    except ValidationError as exc:
        # A misspelt key also shows up as a missing one: name the misspelling, the cause.
        errors = sorted(exc.errors(include_url=False), key=lambda e: e["type"] != "extra_forbidden")
        error = errors[0]
        loc, message = _describe(error, model)
        loc = _plain(loc)
        head = format_loc(where) + label
        tail = format_loc(loc)
        place = f"{head}.{tail}" if head and tail else (head or tail or "config")
        # An unknown key is named by its mapping, and found on the key's own line.
        line_loc = _plain(tuple(error["loc"])) if error["type"] == "extra_forbidden" else loc
        raise ConfigError(f"{place}: {shorten(message)}", loc=where + line_loc) from None


def _plain(loc: tuple) -> tuple:
    """``loc`` without pydantic's own steps (validator functions, tuple items)."""
    return tuple(p for p in loc if not (isinstance(p, str) and p.startswith(("function-", "tuple["))))


def shorten(message: str, limit: int = 300) -> str:
    """A message cut to ``limit`` characters: one that quotes a huge value stays one line."""
    return message if len(message) <= limit else message[: limit - 5] + " ..."


# --- YAML ------------------------------------------------------------------------------------


#: Larger config files are refused: YAML parsing in Python takes about 20 s per MiB.
MAX_CONFIG_BYTES = 256 * 1024
#: A config with more values than this, once its aliases are expanded, is refused: a real one
#: has hundreds, and "billion laughs" documents (aliases of aliases) expand to billions.
MAX_VALUES = 100_000
#: Lists and mappings nested deeper than this are refused (a real config nests 4 deep).
MAX_DEPTH = 50


def parse_yaml(text: str, source: str = "config") -> Any:
    """``yaml.safe_load`` with a one-line error that gives the line; documents that are too
    large once their aliases are expanded, too deep, or that contain themselves are refused
    before anything walks them."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{source}: invalid YAML{where}: {problem}") from None
    except RecursionError:
        raise ConfigError(f"{source}: invalid YAML: nested more than {MAX_DEPTH} levels deep") from None
    except ValueError as exc:  # a scalar PyYAML cannot convert: an integer of over 4300 digits
        raise ConfigError(f"{source}: invalid YAML: {' '.join(str(exc).split())}") from None
    _check_size(data, source)
    return data


def _check_size(data: Any, source: str) -> None:
    """Count the values of ``data`` as if its aliases were expanded, without expanding them
    (each shared list or mapping is counted once per use, from a memo), and find cycles."""
    counts: dict[int, int] = {}
    # Iterative depth-first walk: (node, depth, children counted yet).
    stack: list[tuple[Any, int, bool]] = [(data, 0, False)]
    open_nodes: set[int] = set()
    while stack:
        node, depth, done = stack.pop()
        if not isinstance(node, (list, dict)):
            continue
        key = id(node)
        children = list(node.values()) + list(node.keys()) if isinstance(node, dict) else node
        if done:
            open_nodes.discard(key)
            total = 1 + sum(counts.get(id(c), 1) for c in children)
            counts[key] = total
            if total > MAX_VALUES:
                raise ConfigError(f"{source}: more than {MAX_VALUES} values once its aliases are expanded; "
                                  "a config is far smaller")
            continue
        if key in counts:
            continue
        if key in open_nodes:
            raise ConfigError(f"{source}: an alias refers to a list or mapping that contains it; "
                              "a config cannot contain itself")
        if depth >= MAX_DEPTH:
            raise ConfigError(f"{source}: nested more than {MAX_DEPTH} levels deep; a config is far flatter")
        open_nodes.add(key)
        stack.append((node, depth, True))
        stack.extend((child, depth + 1, False) for child in children)


def line_of(text: str, loc: tuple) -> int | None:
    """The 1-based line in ``text`` of the value at ``loc`` (None where it cannot be found)."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return None
    line = None
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            matches = [(k, v) for k, v in node.value if k.value == part]
            if not matches:
                break
            key, node = matches[0]
            line = key.start_mark.line + 1
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            break
    return line


def read_config_file(path: str | Path) -> tuple[dict, str]:
    """The raw mapping and verbatim text of a config file."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            raw_bytes = f.read(MAX_CONFIG_BYTES + 1)  # /dev/zero and endless pipes end here too
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror or exc}") from None
    if len(raw_bytes) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path}: larger than {MAX_CONFIG_BYTES // 1024} KiB; a config is far smaller "
                          "(weights belong in .npy files)")
    try:
        text = raw_bytes.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    data = parse_yaml(text, str(path))
    if not isinstance(data, dict):
        kind = "empty" if data is None else f"a {type(data).__name__}"
        raise ConfigError(f"{path}: a config is a mapping with at least 'stages', got {kind}")
    return data, text


def load_config(data: dict, base_dir: str | Path = ".") -> PipelineConfig:
    """Validate the top level of a config mapping."""
    if not isinstance(data, dict):
        raise ConfigError(f"config: must be a mapping with at least 'stages', got {type(data).__name__}")
    if "stages" not in data:
        raise ConfigError("config: 'stages' is required: a list of stages such as [{type: gem}]")
    if isinstance(data.get("stages"), list) and not data["stages"]:
        raise ConfigError("stages: the list is empty; give at least one stage")
    return validate_model(PipelineConfig, {**data, "base_dir": Path(base_dir)})
