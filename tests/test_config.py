"""Config validation: every problem is one line that names the place."""

import json
from pathlib import Path

import pytest

from poolcli import ConfigError, Pipeline
from poolcli.pipeline import json_schema

CONFIGS = sorted((Path(__file__).parent.parent / "configs").glob("*.yaml"))


def from_yaml(tmp_path, text):
    path = tmp_path / "pipe.yaml"
    path.write_text(text)
    return Pipeline.from_yaml(path)


@pytest.mark.parametrize(
    "text, message",
    [
        ("stages: [{type: max_pol, kernel_size: 2}]", r"pipe.yaml:1: stages\[0\].type: unknown stage type 'max_pol' \(did you mean 'max_pool'\?\)"),
        ("stages:\n  - type: gem\n  - {type: max_pool, kernel_sise: 2, name: pool1}",
         r"pipe.yaml:3: stages\[1\] \(max_pool 'pool1'\): unknown key 'kernel_sise' \(did you mean 'kernel_size'\?\)"),
        ("stages:\n  - type: max_pool\n    name: pool1\n    kernel_size: 2\n    strid: 2",  # the key's own line
         r"pipe.yaml:5: stages\[0\] \(max_pool 'pool1'\): unknown key 'strid' \(did you mean 'stride'\?\)"),
        ("input:\n  color: rgb\n  resise: {longest: 3}\nstages: [{type: gem}]",
         r"pipe.yaml:3: input: unknown key 'resise' \(did you mean 'resize'\?\)"),
        ("stages:\n  - {type: max_pool, name: pool1,\n     kernel_size: 0}",
         r"pipe.yaml:3: stages\[0\] \(max_pool 'pool1'\).kernel_size: must be >= 1, got 0"),
        ("stages: [{type: gem, p: 3]", r"invalid YAML \(line 1, column \d+\)"),
        ("name: nothing", r"'stages' is required"),
        ("stages: []", r"the list is empty"),
        ("", r"a config is a mapping with at least 'stages', got empty"),
        ("- {type: gem}", r"got a list"),
        ("stages: [{type: gem, p: abc}]", r"stages\[0\] \(gem\).p: .*got 'abc'"),
        ("stages: [{type: gem, p: -1}]", r"stages\[0\] \(gem\).p: must be > 0"),
        ("stages: [{p: 3}]", r"stages\[0\]: 'type' is required"),
        ("stages: [3]", r"stages\[0\]: must be a mapping"),
        ("input: {colour: rgb}\nstages: [{type: gem}]", r"pipe.yaml:1: input: unknown key 'colour' \(did you mean 'color'\?\)"),
        ("input: {color: cmyk}\nstages: [{type: gem}]", r"input.color: must be one of 'rgb' or 'gray', got 'cmyk'"),
        ("input: {resize: {longest: 0}}\nstages: [{type: gem}]", r"input.resize.longest: must be >= 1, got 0"),
        ("input: {resize: {longest: 5, shortest: 4}}\nstages: [{type: gem}]", r"give exactly one of longest, shortest or size"),
        ("input: {mean: [0.5]}\nstages: [{type: gem}]", r"mean and std go together"),
        ("input: {mean: [0.5, 0.5], std: [1, 1]}\nstages: [{type: gem}]", r"mean needs 1 or 3 values"),
        ("output: {normalize: l3}\nstages: [{type: gem}]", r"output.normalize: must be one of"),
        ("stages: [{type: gem, name: a}, {type: gem, name: a}]", r"stages\[1\] \(gem 'a'\).name: 'a' is already used"),
        ("stages: [{type: gem, from: nowhere}]", r"stages\[0\] \(gem 'gem0'\).from: no earlier stage is named 'nowhere'"),
        ("stages: [{type: gem, name: g}, {type: concat, from: g}]", r"concat takes a list of earlier stages"),
        ("stages: [{type: gem, name: g}, {type: gem, from: [g, g]}]", r"gem takes one input, got 2"),
        ("stages: [{type: max_pool, kernel_size: true}]", r"kernel_size: must be an integer or a pair"),
        ("stages: [{type: max_pool, kernel_size: [2, 2, 2]}]", r"kernel_size: must be an integer or a pair"),
    ],
)
def test_bad_config_is_one_clear_line(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message) as info:
        from_yaml(tmp_path, text)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("written, meant", [
    ("gem_pool", "gem"),  # what the words say, not the fewest letters changed (max_pool)
    ("global_mean_pool", "global_avg_pool"),  # mean: the summary's word; not global_max_pool
    ("global_average_pooling", "global_avg_pool"),
    ("generalized_mean", "gem"),  # from gem's summary alone
    ("adaptive_mean_pool", "adaptive_avg_pool"),
    ("whitening", "whiten"),
    ("sobel", "conv"),  # a filter bank the conv summary names
    ("relu", "activation"),
    ("maxpool", "max_pool"),  # misspellings still find their type
    ("max_pol", "max_pool"),
    ("spco", "spoc"),  # an alias
    ("includ", "include"),
])
def test_an_unknown_type_suggests_what_it_means(tmp_path, written, meant):
    with pytest.raises(ConfigError, match=rf"unknown stage type '{written}' \(did you mean '{meant}'\?\)"):
        from_yaml(tmp_path, f"stages:\n  - type: {written}\n")
    from poolcli.explain import describe_stage

    with pytest.raises(ConfigError, match=rf"did you mean '{meant}'\?"):  # `poolcli stages TYPE` suggests alike
        describe_stage(written)


def test_an_unknown_type_like_no_stage_suggests_none(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown stage type 'xyzzy' \(see `poolcli stages` for the list\)"):
        from_yaml(tmp_path, "stages: [{type: xyzzy}]")


def test_non_utf8_config(tmp_path):
    path = tmp_path / "pipe.yaml"
    path.write_bytes(b"stages: [{type: \xff}]")
    with pytest.raises(ConfigError, match="not UTF-8"):
        Pipeline.from_yaml(path)


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config"):
        Pipeline.from_yaml(tmp_path / "absent.yaml")


def test_yaml_is_loaded_safely(tmp_path):
    with pytest.raises(ConfigError, match="invalid YAML"):
        from_yaml(tmp_path, "stages: !!python/object/apply:os.system ['true']")


def test_from_config_takes_the_yaml_schema():
    pipe = Pipeline.from_config({"input": {"color": "gray"}, "stages": [{"type": "spoc"}]})
    assert pipe.input_channels == 1
    assert pipe.kind == "descriptors" and pipe.normalize == "l2"


def test_default_names_and_from():
    pipe = Pipeline.from_config({"stages": [
        {"type": "activation", "fn": "relu"},
        {"type": "gem", "name": "g"},
        {"type": "mac", "from": "input"},
        {"type": "concat", "from": ["g", "mac2"]},
    ]})
    assert [n.name for n in pipe.nodes] == ["activation0", "g", "mac2", "concat3"]
    assert [n.inputs for n in pipe.nodes] == [("input",), ("activation0",), ("input",), ("g", "mac2")]


def test_schema_describes_every_stage():
    from poolcli.stages import STAGES

    schema = json_schema()
    variants = schema["properties"]["stages"]["items"]["oneOf"]
    assert {v["properties"]["type"]["const"] for v in variants} == set(STAGES) | {"include"}
    json.dumps(schema)  # serialisable


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_configs_match_the_schema(path):
    jsonschema = pytest.importorskip("jsonschema")
    import yaml

    jsonschema.validate(yaml.safe_load(path.read_text()), json_schema())
    Pipeline.from_yaml(path)
