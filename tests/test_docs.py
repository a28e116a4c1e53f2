"""docs/pooling.md stays current: regenerated in memory it equals the committed page, every
registered stage type is on it, and the generator refuses a registered type without prose."""

import importlib.util
import re
from pathlib import Path

import numpy as np
import pytest

from poolcli.stages import STAGES

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("make_pooling_doc", ROOT / "scripts" / "make_pooling_doc.py")
make_pooling_doc = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(make_pooling_doc)

TEMPLATE = (ROOT / "docs" / "pooling.in.md").read_text(encoding="utf-8")
PAGE = (ROOT / "docs" / "pooling.md").read_text(encoding="utf-8")

# SPEC section 4: every operator the page must explain once it is registered.
SPEC_OPERATORS = [
    "conv", "activation", "max_pool", "avg_pool", "lp_pool", "adaptive_avg_pool", "adaptive_max_pool",
    "fractional_max_pool", "stochastic_pool", "soft_pool", "center_pool", "corner_pool", "strip_pool",
    "max_unpool", "upsample", "pyramid_fuse", "concat", "global_avg_pool", "global_max_pool", "gem", "spp",
    "rmac", "hopfield_pool", "flatten", "whiten",
    # the layers of trained networks (poolcli import)
    "batch_norm", "layer_norm", "softmax", "linear", "slice", "add", "sub", "mul", "div", "conv_transpose", "resize",
]


def section(page, stage_type):
    """The text of ``stage_type``'s section on the page."""
    start = page.index(f'<a id="{stage_type}"></a>')
    end = page.find("<a id=", start + 1)
    return page[start : end if end != -1 else len(page)]


def test_page_is_current():
    page, _ = make_pooling_doc.render(TEMPLATE)
    assert page == PAGE, "docs/pooling.md is stale: run python scripts/make_pooling_doc.py"


@pytest.mark.parametrize("name", sorted(STAGES))
def test_every_registered_type_has_a_heading(name):
    headings = [line for line in PAGE.splitlines() if line.startswith("### ")]
    assert any(f"`{name}`" in line for line in headings), f"{name} has no heading on docs/pooling.md"


def test_every_spec_operator_has_prose_in_the_template():
    sections = re.findall(r"<!-- stage: (\S+) -->", TEMPLATE)
    assert sorted(sections) == sorted(SPEC_OPERATORS)


@pytest.mark.parametrize("name", sorted({cls.type_names[0] for cls in STAGES.values()}))
def test_each_section_has_paper_parameters_and_example(name):
    text = section(PAGE, name)
    for part in ("**For:**", "**Computes:**", "**From:**", "**Parameters:**", "**Example:**", "output ("):
        assert part in text, f"{name}: no {part}"
    assert re.search(r"(19|20)\d\d, \*", text), f"{name}: no year and title in its references"


def test_examples_are_computed_by_poolcli():
    # The SPEC's worked example: max pooling 2x2, stride 2 gives [[6, 4], [4, 5]].
    assert "output (1, 2, 2):\n  6  4\n  4  5\n" in section(PAGE, "max_pool")
    assert "**Example:** `{type: max_pool, kernel_size: 2, stride: 2}`" in section(PAGE, "max_pool")
    _, _, y = make_pooling_doc.worked_example("gem")
    assert f"output (1,):\n  {y[0]:.4f}\n" in section(PAGE, "gem")


@pytest.mark.parametrize("keep_marker", [False, True])
def test_registered_type_without_prose_fails_loudly(keep_marker):
    start = TEMPLATE.index("<!-- stage: gem -->")
    end = TEMPLATE.index("<!-- stage:", start + 1)
    marker = "<!-- stage: gem -->\n" if keep_marker else ""
    with pytest.raises(make_pooling_doc.DocError, match=r"registered stage 'gem' has no prose"):
        make_pooling_doc.render(TEMPLATE[:start] + marker + TEMPLATE[end:])


@pytest.mark.parametrize("extra, message", [
    ("<!-- stage: spoc -->\nSum pooling.\n", r"section 'spoc' names an alias: use 'global_avg_pool'"),
    ("<!-- stage: gem -->\nGeM again.\n", r"stage 'gem' has two sections"),
])
def test_alias_and_repeated_sections_fail(extra, message):
    with pytest.raises(make_pooling_doc.DocError, match=message):
        make_pooling_doc.render(TEMPLATE + "\n" + extra)


def test_prose_of_a_stage_not_registered_yet_is_left_out():
    page, pending = make_pooling_doc.render(TEMPLATE + "\n<!-- stage: future_pool -->\nNot written yet.\n")
    assert "future_pool" in pending
    assert "future_pool" not in page and "Not written yet." not in page


def test_headings_inside_code_blocks_do_not_end_the_prose():
    extra = "## Later\n\n<!-- stage: future_pool -->\n```text\n# a comment\n```\n"
    assert make_pooling_doc.parse(extra)[-1] == ("stage", "```text\n# a comment\n```", "future_pool")


def test_number_format_is_fixed():
    assert make_pooling_doc.format_numbers(np.array([[1, -2], [30, 4]], np.float32)).tolist() == [
        [" 1", "-2"], ["30", " 4"]]
    assert make_pooling_doc.format_numbers(np.array([0.5, -0.00001, 14.999997, np.nan], np.float32)).tolist() == [
        " 0.5000", " 0.0000", "15.0000", "    nan"]
    assert make_pooling_doc.format_value({"type": "spp", "levels": (1, 2), "eps": 1e-6, "x": None, "b": True}) == (
        "{type: spp, levels: [1, 2], eps: 1e-06, x: null, b: true}")


def test_check_mode_reports_a_stale_page(tmp_path, monkeypatch, capsys):
    stale = tmp_path / "pooling.md"
    stale.write_text("old\n", encoding="utf-8")
    monkeypatch.setattr(make_pooling_doc, "ROOT", tmp_path)
    monkeypatch.setattr(make_pooling_doc, "PAGE", stale)
    assert make_pooling_doc.main(["--check"]) == 1
    assert "pooling.md is not current" in capsys.readouterr().err
    assert make_pooling_doc.main([]) == 0 and make_pooling_doc.main(["--check"]) == 0
