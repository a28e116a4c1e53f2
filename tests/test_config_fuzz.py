"""Config fuzzing (issue 6): random documents, mutated shipped configs and hostile YAML always
end, quickly, in exit 0 or in exit 1 with one clear line; never a traceback, never an
'internal error', never a hang."""

from __future__ import annotations

import copy
import math
import signal
import tempfile
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from poolcli.cli import app
from poolcli.stages import STAGES

CONFIGS = sorted((Path(__file__).parent.parent / "configs").glob("*.yaml"))
SHIPPED = {path.name: yaml.safe_load(path.read_text()) for path in CONFIGS}
SECONDS_PER_DOCUMENT = 20  # far above what any document takes; only a hang reaches it

runner = CliRunner()

fuzz = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@contextmanager
def no_hang(seconds: float):
    """Fail the test (instead of waiting forever) if the block takes longer than ``seconds``."""

    def hang(signum, frame):
        raise AssertionError(f"hung for more than {seconds} s")

    previous = signal.signal(signal.SIGALRM, hang)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def check_document(data: bytes, commands=(("validate",), ("inspect", "--size", "40", "30"))) -> list[int]:
    """Run each command on a config file holding ``data``; each must end in exit 0, or in exit 1
    with exactly one line on stderr that is not an internal error. Returns the exit codes."""
    codes = []
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "fuzz.yaml"
        path.write_bytes(data)
        for command in commands:
            with no_hang(SECONDS_PER_DOCUMENT):
                result = runner.invoke(app, [command[0], str(path), *command[1:]])
            assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
            assert result.exit_code in (0, 1), (result.exit_code, result.stderr)
            if result.exit_code == 1:
                lines = result.stderr.splitlines()
                assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
                assert "internal error" not in lines[0] and "Traceback" not in lines[0], lines[0]
            codes.append(result.exit_code)
            if result.exit_code:
                break  # the later commands read the same config
    return codes


# --- random documents --------------------------------------------------------------------------------

KEYS = sorted({"name", "input", "stages", "output", "type", "from", "color", "resize", "longest", "shortest", "size",
               "interpolation", "alpha", "mean", "std", "normalize", "dtype"}
              | {field.alias or name for cls in STAGES.values() for name, field in cls.model_fields.items()})
WORDS = sorted(set(STAGES) | {"rgb", "gray", "l2", "none", "float16", "same", "valid", "max", "avg", "mean", "each",
                               "gabor", "sobel", "random", "reflect", "eval", "train", "cross", "top_left", "input"})

scalars = st.one_of(
    st.none(), st.booleans(),
    st.integers(-3, 40), st.integers(), st.sampled_from([0, -1, 2**31, 2**63, 10**30, -(10**30)]),
    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([1e-45, 1e308, 0.5, 3.0]),
    st.sampled_from(WORDS), st.sampled_from(KEYS), st.text(max_size=12),
)
values = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=5),
        st.dictionaries(st.one_of(st.sampled_from(KEYS), st.text(max_size=8)), children, max_size=5),
    ),
    max_leaves=25,
)
stage_like = st.fixed_dictionaries({"type": st.sampled_from(sorted(STAGES))},
                                   optional={k: values for k in ("kernel_size", "stride", "padding", "output_size",
                                                                 "levels", "p", "filters", "name", "from", "mode",
                                                                 "sigma", "orientations", "scale_factor", "size")})
documents = st.one_of(
    values,
    st.fixed_dictionaries({"stages": st.lists(st.one_of(stage_like, values), max_size=4)},
                          optional={"input": values, "output": values, "name": values}),
)


@fuzz
@given(documents)
def test_random_documents(document):
    check_document(yaml.safe_dump(document, allow_unicode=True).encode("utf-8"))


# --- shipped configs, mutated ------------------------------------------------------------------------------


def paths_in(node, prefix=()):
    """Every place in a parsed document: (path, value)."""
    yield prefix, node
    if isinstance(node, dict):
        for key, value in node.items():
            yield from paths_in(value, prefix + (key,))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from paths_in(value, prefix + (index,))


def nested(depth: int):
    value = 1
    for _ in range(depth):
        value = [value]
    return value


replacements = st.one_of(
    scalars,
    st.sampled_from([10**9, 10**18, 2**64, -(2**64), 1e30, -1e30, math.inf, -math.inf, math.nan, "", " ", "\x00",
                     [], {}, [None], [1, 2, 3, 4], {"type": "gem"}]),
    st.integers(20, 200).map(nested),
    values,
)


@st.composite
def mutated_configs(draw):
    name = draw(st.sampled_from(sorted(SHIPPED)))
    document = copy.deepcopy(SHIPPED[name])
    for _ in range(draw(st.integers(1, 3))):
        places = [path for path, _ in paths_in(document) if path]
        path = draw(st.sampled_from(places))
        parent = document
        for part in path[:-1]:
            parent = parent[part]
        action = draw(st.sampled_from(["replace", "replace", "delete", "add_key", "duplicate"]))
        if action == "replace":
            parent[path[-1]] = draw(replacements)
        elif action == "delete":
            del parent[path[-1]]
        elif action == "add_key" and isinstance(parent, dict):
            parent[draw(st.sampled_from(KEYS))] = draw(replacements)
        elif action == "duplicate" and isinstance(parent, list):
            parent.append(copy.deepcopy(parent[path[-1]]))
    return document


@fuzz
@given(mutated_configs())
def test_mutated_shipped_configs(document):
    check_document(yaml.safe_dump(document, allow_unicode=True).encode("utf-8"))


# --- mutated text and bytes --------------------------------------------------------------------------------


@st.composite
def mutated_texts(draw):
    name = draw(st.sampled_from(sorted(SHIPPED)))
    data = bytearray((Path(__file__).parent.parent / "configs" / name).read_bytes())
    for _ in range(draw(st.integers(1, 6))):
        at = draw(st.integers(0, len(data)))
        action = draw(st.sampled_from(["flip", "insert", "delete", "yaml"]))
        if action == "flip" and at < len(data):
            data[at] = draw(st.integers(0, 255))
        elif action == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=4))
        elif action == "delete":
            del data[at : at + draw(st.integers(1, 20))]
        else:
            data[at:at] = draw(st.sampled_from([b"&a ", b"*a", b"<<: *a\n", b"!!binary ", b"!!set ", b"!!timestamp ",
                                                b"!!python/object:os.system ", b"? ", b"- ", b": ", b"{", b"]", b"\t",
                                                b"\xef\xbb\xbf", b"\r", b"\x85", b"%YAML 1.1\n", b"---\n", b"...\n"]))
    return bytes(data)


@fuzz
@given(mutated_texts())
def test_mutated_config_text_and_bytes(data):
    check_document(data)


# --- hostile YAML, by name -------------------------------------------------------------------------------


def billion_laughs(levels: int = 9) -> bytes:
    lines = ["a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    for i in range(1, levels + 1):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]")
    return "\n".join(lines).encode()


HOSTILE = {
    "billion laughs as a key's value": billion_laughs() + b"\nstages: [{type: max_pool, kernel_size: *a9}]\n",
    "billion laughs as the stage list": billion_laughs() + b"\nstages: *a9\n",
    "billion laughs in an unknown key": billion_laughs() + b"\nstages: [{type: gem, extra: *a9}]\n",
    "billion laughs as a name": billion_laughs() + b"\nname: *a9\nstages: [{type: gem}]\n",
    "billion laughs as input.mean": billion_laughs() + b"\ninput: {mean: *a9, std: [1]}\nstages: [{type: gem}]\n",
    "a list that holds itself": b"stages: &s [{type: gem}, *s]\n",
    "a mapping that holds itself": b"stages: [&m {type: gem, from: *m}]\n",
    "merge keys": b"base: &b {type: max_pool, kernel_size: 2}\nstages: [{<<: *b, stride: 1}, {type: gem}]\n",
    "deep nesting, flow": b"stages: " + b"[" * 5000 + b"]" * 5000 + b"\n",
    "deep nesting, block": b"stages:\n" + b"".join(b"  " * i + b"- \n" for i in range(1, 600)),
    "deep mapping": b"stages: [{type: gem, p: " + b"{a: " * 3000 + b"1" + b"}" * 3000 + b"}]\n",
    "a 5000-digit integer": b"stages: [{type: max_pool, kernel_size: " + b"9" * 5000 + b"}]\n",
    "a 5000-digit float": b"stages: [{type: gem, p: 1." + b"9" * 5000 + b"}]\n",
    "1e999": b"stages: [{type: gem, p: 1e999}]\n",
    "nan": b"stages: [{type: gem, p: .nan}]\n",
    "python object tag": b"stages: !!python/object/apply:os.system ['true']\n",
    "binary tag": b"stages: [{type: conv, filters: !!binary aGVsbG8=}]\n",
    "set tag": b"stages: !!set {a, b}\n",
    "timestamp": b"name: 2001-12-14t21:59:43.10-05:00\nstages: [{type: gem, p: 2001-12-14}]\n",
    "non-UTF-8 bytes": b"stages: [{type: gem, name: caf\xe9}]\n",
    "UTF-16 with a BOM": "stages: [{type: gem}]\n".encode("utf-16"),
    "a NUL byte": b"stages: [{type: gem}]\x00\n",
    "tabs for indentation": b"stages:\n\t- type: gem\n",
    "two documents": b"stages: [{type: gem}]\n---\nstages: [{type: mac}]\n",
    "huge gaussian sigma": b"stages: [{type: conv, filters: gaussian, sigma: 1.0e+6}]\n",
    "huge gabor wavelength": b"stages: [{type: conv, filters: gabor, wavelengths: [1.0e+9]}]\n",
    "huge gabor bank": b"stages: [{type: conv, filters: gabor, orientations: 1000000000}]\n",
    "huge box kernel": b"stages: [{type: conv, filters: box, kernel_size: 1000000}]\n",
    "huge random bank": b"stages: [{type: conv, filters: random, out_channels: 1000000000000, kernel_size: 99999}]\n",
    "huge adaptive output": b"stages: [{type: adaptive_max_pool, output_size: 1000000000000}]\n",
    "huge spp levels": b"stages: [{type: spp, levels: [1000000000]}]\n",
    "huge upsample": b"stages: [{type: upsample, scale_factor: 1.0e+30}]\n",
    "huge upsample size": b"stages: [{type: upsample, size: [1000000000000, 1000000000000]}]\n",
    "huge unpool": b"stages: [{type: max_pool, kernel_size: 2, name: p}, "
                   b"{type: max_unpool, indices: p, output_size: [1000000000000, 1000000000000]}]\n",
    "huge pyramid": b"stages: [{type: gem, name: a}, {type: pyramid_fuse, from: [input], output_size: 99999999999}]\n",
    "huge fractional output": b"stages: [{type: fractional_max_pool, kernel_size: 2, output_size: 100000000000}]\n",
    "huge hopfield steps": b"stages: [{type: hopfield_pool, steps: 1000000000000}]\n",
    "huge rmac levels": b"stages: [{type: rmac, levels: 1000000000000}]\n",
    "huge kernel": b"stages: [{type: max_pool, kernel_size: 1000000000000000000000}]\n",
    "huge resize": b"input: {resize: {size: [1000000000000, 1000000000000]}}\nstages: [{type: gem}]\n",
    "1000 stages": b"stages: [" + b"{type: activation, fn: relu}, " * 1000 + b"{type: mac}]\n",
    "a 300 KiB config": b"stages: [" + b"{type: mac}, " * 25000 + b"]\n",
    "endless zeros": b"\x00" * (300 * 1024),
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_yaml(name):
    check_document(HOSTILE[name])


@fuzz
@given(st.sampled_from(sorted(HOSTILE)), st.integers(0, 2**31))
@example("deep nesting, flow", 0)
def test_hostile_yaml_mutated(name, seed):
    """The hostile documents with a few bytes changed: what their neighbours do too."""
    import random

    data = bytearray(HOSTILE[name])
    rng = random.Random(seed)
    for _ in range(rng.randint(1, 4)):
        at = rng.randrange(len(data))
        data[at] = rng.randrange(256)
    check_document(bytes(data), commands=(("validate",),))
