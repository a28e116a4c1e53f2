"""What ``poolcli stages`` prints: the catalogue, and one stage explained with a worked
example computed live on the 4x4 map of the docs."""

from __future__ import annotations

import json
import inspect
import textwrap
import types
import typing

import numpy as np

from poolcli.errors import ConfigError
from poolcli.stages import STAGES, Stage
from poolcli.stages.base import INCLUDE_SUMMARY, suggest_type

# The docs' worked-example map: max pooling 2x2, stride 2 gives [[6, 4], [4, 5]].
WORKED_MAP = np.array([[1, 3, 2, 4], [5, 6, 1, 2], [0, 1, 3, 1], [2, 4, 5, 2]], np.float32)[None]

_COMMON = ("type", "name", "from_")


def stage_list() -> list[str]:
    """One line per stage type (aliases shown beside their canonical name)."""
    seen, lines = set(), []
    width = max(len(n) for n in STAGES)
    for name, cls in sorted(STAGES.items()):
        if cls in seen:
            continue
        seen.add(cls)
        aliases = [n for n in cls.type_names if n != name]
        label = name + (f" ({', '.join(aliases)})" if aliases else "")
        lines.append(f"{label:<{width + 8}} {cls.summary}")
    lines.append(f"{'include':<{width + 8}} {INCLUDE_SUMMARY}")
    lines.append("")
    lines.append("`poolcli stages TYPE` explains one, with a worked example.")
    return lines


def _lookup(stage_type: str):
    cls = STAGES.get(stage_type)
    if cls is None:
        guess = suggest_type(stage_type, {"include": INCLUDE_SUMMARY})
        hint = f"did you mean '{guess}'?" if guess else "`poolcli stages` lists them"
        raise ConfigError(f"unknown stage type {stage_type!r} ({hint})")
    return cls


def _intro(cls) -> str:
    doc = inspect.cleandoc(cls.__doc__ or "")
    return doc.split("\n\nExamples")[0].strip()


def type_label(annotation) -> str:
    """A parameter's type as a user writes it in YAML.

    >>> from typing import Literal, Optional
    >>> type_label(Optional[tuple[int, int]]), type_label(Literal["avg", "max"]), type_label(list[float])
    ('int or [h, w], or null', 'avg | max', 'list of float')
    """
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is type(None):
        return "null"
    if origin is typing.Annotated:
        return type_label(args[0])
    if origin is typing.Literal:
        return " | ".join(str(a).lower() if isinstance(a, bool) else str(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return ", or ".join(type_label(a) for a in args)
    if origin is tuple:
        return "int or [h, w]" if args == (int, int) else "[" + ", ".join(type_label(a) for a in args) + "]"
    if origin is list:
        return "list of " + type_label(args[0])
    return getattr(annotation, "__name__", str(annotation))


def yaml_value(value) -> str:
    """A default as it would be written in YAML: null, true, [2, 2], even.

    >>> yaml_value(None), yaml_value(False), yaml_value((1, 1)), yaml_value("even"), yaml_value(1e-06)
    ('null', 'false', '[1, 1]', 'even', '1e-06')
    """
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(yaml_value(v) for v in value) + "]"
    if value is None or isinstance(value, bool):
        return json.dumps(value)
    return str(value)


def _parameters(cls) -> list[str]:
    lines = []
    for name, field in cls.model_fields.items():
        if name in _COMMON:
            continue
        # A text among an Annotated type's metadata is its label (config.padding_spec's).
        annotation = next((m for m in field.metadata if isinstance(m, str)), None) or type_label(field.annotation)
        default = "required" if field.is_required() else f"default {yaml_value(field.default)}"
        lines.append(f"  {field.alias or name}: {default}  [{annotation}]")
        if field.description:
            lines.extend("      " + line for line in textwrap.wrap(field.description, 88))
    lines.append("  name, from: accepted by every stage (name: the stage's own, unique; from: the earlier stage, or "
                 "input, whose output it takes instead of the previous stage's)")
    return lines


def _grid(array: np.ndarray) -> str:
    return np.array2string(array, precision=4, suppress_small=True, separator=", ", max_line_width=100)


def example_call(stage_type: str, x: np.ndarray) -> tuple[dict, Stage, tuple[np.ndarray, ...]]:
    """(parameters, stage, inputs) of the stage's example (its ``example`` parameters) on the map
    ``x``: the inputs are ``x``, twice for a multi-input stage. A stage that takes something
    else (max_unpool: an earlier max_pool's output and input) has a classmethod
    ``example_call(params, x)`` that returns all three."""
    cls = _lookup(stage_type)
    params = {"type": stage_type, **getattr(cls, "example", {})}
    if hasattr(cls, "example_call"):
        return cls.example_call(params, x)
    return params, cls.model_validate(params), ((x, x) if cls.inputs == "many" else (x,))


def worked_example(stage_type: str) -> tuple[dict, np.ndarray, np.ndarray]:
    """(parameters, input, output) of the stage's worked example on the 4x4 map."""
    x = WORKED_MAP.copy()
    params, stage, inputs = example_call(stage_type, x)
    return params, x, stage(*inputs)


INCLUDE_HELP = "include: " + INCLUDE_SUMMARY + """

Puts the stages of the config file `config` here, as if they were written out: their first
stage takes this stage's input (the previous stage's output, or `from`), and with `name` the
included config's last stage is known by that name. Only the stages are taken (with the files
they reference, relative to their own folder): this config's input and output sections apply.

Parameters:
  config  path of the config file, relative to this config's folder (required)
  name    a name for the included config's last stage
  from    an earlier stage (or input) whose output the included stages take

Example: GeM on an imported ResNet-50 trunk, with ImageNet's normalisation:
  input: {resize: {size: [512, 512]}, mean: [0.485, 0.456, 0.406], std: [0.229, 0.224, 0.225]}
  stages:
    - {type: include, config: resnet50/pipeline.yaml, name: trunk}
    - {type: gem, p: 3}"""


def describe_stage(stage_type: str) -> str:
    if stage_type == "include":
        return INCLUDE_HELP
    cls = _lookup(stage_type)
    params, x, y = worked_example(stage_type)
    shown = ", ".join(f"{k}: {v}" for k, v in params.items())
    lines = [f"{stage_type}: {cls.summary}", "", _intro(cls), "", "Parameters:", *_parameters(cls), ""]
    lines.append(f"Worked example: {{{shown}}}")
    lines.append("  input (1x4x4):" if cls.inputs == 1 else "  input (1x4x4), given twice:")
    lines.extend("    " + line for line in _grid(x[0]).splitlines())
    label = "x".join(map(str, y.shape))
    lines.append(f"  output ({label}):")
    lines.extend("    " + line for line in _grid(y[0] if y.ndim == 3 and y.shape[0] == 1 else y).splitlines())
    return "\n".join(lines)
