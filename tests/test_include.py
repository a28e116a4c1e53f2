"""The include stage: another config's stages in place, so a pooling head goes on a trunk
(an imported network, say) without editing the trunk's file."""

import json

import numpy as np
import pytest

from poolcli.errors import ConfigError
from poolcli.pipeline import Pipeline, json_schema
from poolcli.runner import _config_sha256

TRUNK = """\
input: {resize: {size: [64, 64]}}
stages:
  - {type: conv, name: c1, filters: w.npy, padding: 1, activation: relu}
  - {type: max_pool, name: p1, kernel_size: 2}
  - {type: conv, name: c2, filters: identity, from: input}
  - {type: max_pool, name: p2, kernel_size: 2}
  - {type: concat, name: both, from: [p1, p2]}
"""


@pytest.fixture
def trunk(tmp_path):
    folder = tmp_path / "trunk"
    folder.mkdir()
    np.save(folder / "w.npy", np.random.default_rng(0).standard_normal((4, 3, 3, 3)).astype(np.float32))
    (folder / "pipeline.yaml").write_text(TRUNK)
    return folder / "pipeline.yaml"


def _write(tmp_path, text: str):
    path = tmp_path / "head.yaml"
    path.write_text(text)
    return path


def test_included_stages_compute_what_the_same_stages_written_out_compute(tmp_path, trunk):
    head = Pipeline.from_yaml(_write(tmp_path, "stages:\n  - {type: include, config: trunk/pipeline.yaml}\n"
                                               "  - {type: gem, p: 3}\n"))
    by_hand = Pipeline.from_config({"stages": [
        {"type": "conv", "name": "c1", "filters": str(trunk.parent / "w.npy"), "padding": 1, "activation": "relu"},
        {"type": "max_pool", "name": "p1", "kernel_size": 2},
        {"type": "conv", "name": "c2", "filters": "identity", "from": "input"},
        {"type": "max_pool", "name": "p2", "kernel_size": 2},
        {"type": "concat", "name": "both", "from": ["p1", "p2"]},
        {"type": "gem", "p": 3},
    ]})
    assert [n.name for n in head.nodes] == ["c1", "p1", "c2", "p2", "both", "gem1"]
    x = np.random.default_rng(1).random((3, 20, 18), dtype=np.float32)
    np.testing.assert_array_equal(head(x), by_hand(x))
    assert head.included == [(str(trunk.resolve()), TRUNK)]
    assert head.config.input.resize is None  # the including config's input section applies, not the trunk's


def test_include_takes_from_and_name(tmp_path, trunk):
    text = ("stages:\n  - {type: avg_pool, name: half, kernel_size: 2}\n"
            "  - {type: include, config: trunk/pipeline.yaml, name: features, from: input}\n"
            "  - {type: gem, from: features}\n  - {type: concat, from: [gem2, gem2]}\n")
    pipe = Pipeline.from_yaml(_write(tmp_path, text))
    by_name = {n.name: n.inputs for n in pipe.nodes}
    assert by_name["c1"] == ("input",) and by_name["c2"] == ("input",)  # the trunk's `input` is the include's
    assert by_name["features"] == ("p1", "p2") and by_name["gem2"] == ("features",)
    assert pipe.output_shape((3, 16, 16)) == (10,)  # (4 + 1 channels) twice


def test_include_errors(tmp_path, trunk):
    def error(text):
        with pytest.raises(ConfigError) as info:
            Pipeline.from_yaml(_write(tmp_path, text))
        return str(info.value)

    assert "stages[0] (include).config: required" in error("stages:\n  - {type: include}\n")
    assert "unknown key; include takes config, name and from" in error(
        "stages:\n  - {type: include, config: trunk/pipeline.yaml, stride: 2}\n")
    assert "cannot read config" in error("stages:\n  - {type: include, config: nope.yaml}\n")
    assert "'c1' is already used" in error(
        "stages:\n  - {type: max_pool, name: c1, kernel_size: 1}\n  - {type: include, config: trunk/pipeline.yaml}\n")
    assert "no earlier stage is named 'x'" in error("stages:\n  - {type: include, config: trunk/pipeline.yaml, from: x}\n")
    (tmp_path / "loop.yaml").write_text("stages:\n  - {type: include, config: head.yaml}\n")
    assert "in a circle (head.yaml -> loop.yaml -> head.yaml)" in error("stages:\n  - {type: include, config: loop.yaml}\n")
    broken = tmp_path / "trunk" / "broken.yaml"
    broken.write_text("stages:\n  - {type: max_pool, kernel_size: 2}\n  - {type: max_pool, kernel_size: 0}\n")
    message = error("stages:\n  - {type: include, config: trunk/broken.yaml}\n")
    assert f"head.yaml:2: stages[0] (include): {broken.resolve()}:3: stages[1] (max_pool).kernel_size" in message


def test_an_edited_trunk_changes_the_run_identity(tmp_path, trunk):
    head = _write(tmp_path, "stages:\n  - {type: include, config: trunk/pipeline.yaml}\n  - {type: gem}\n")
    before = _config_sha256(Pipeline.from_yaml(head))
    trunk.write_text(TRUNK.replace("kernel_size: 2}", "kernel_size: 3}"))
    assert _config_sha256(Pipeline.from_yaml(head)) != before


def test_include_is_in_the_schema():
    variants = {v["title"]: v for v in json_schema()["properties"]["stages"]["items"]["oneOf"]}
    assert variants["include"]["required"] == ["type", "config"]
    json.dumps(variants["include"])


def test_include_is_listed_and_explained_and_its_configs_match_the_schema(tmp_path, trunk):
    from poolcli.explain import describe_stage, stage_list

    assert any(line.startswith("include ") for line in stage_list())
    assert "- {type: include, config: resnet50/pipeline.yaml, name: trunk}" in describe_stage("include")
    jsonschema = pytest.importorskip("jsonschema")
    import yaml

    head = "stages:\n  - {type: include, config: trunk/pipeline.yaml, name: trunk}\n  - {type: gem}\n"
    jsonschema.validate(yaml.safe_load(head), json_schema())
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(yaml.safe_load(head.replace("name: trunk", "stride: 2")), json_schema())
