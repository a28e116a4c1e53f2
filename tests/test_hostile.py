"""A hostile folder through a real `poolcli run` (issue 6): every entry becomes a written row, a
failure row with a reason, or a skip; the run finishes; the inputs are not modified; nothing
is written outside OUT; and OUT is never read as input, however it is reached."""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

import poolcli
from hostile import make_hostile_folder
from poolcli import Pipeline
from poolcli.io.images import decode
from poolcli.io.output import printable
from poolcli.runner import run
from processes import cli, cli_obeying_permissions, permissions_apply

CONFIG = """
input: {color: rgb}
stages:
  - {type: avg_pool, kernel_size: 2, ceil_mode: true}
  - {type: spp, levels: [1, 2], pool: avg}
"""


def tree(folder: Path) -> dict[str, tuple]:
    """Every entry under ``folder``, links not followed: its type, mode, size, mtime and the
    hash of its bytes (or its link target)."""
    entries = {}
    for parent, dirs, names in os.walk(folder):
        for name in dirs + names:
            path = os.path.join(parent, name)
            info = os.lstat(path)
            if stat.S_ISLNK(info.st_mode):
                content = os.readlink(path)
            elif stat.S_ISREG(info.st_mode):
                with open(path, "rb") as f:  # root reads the mode-000 file as it is
                    content = hashlib.sha256(f.read()).hexdigest()
            else:
                content = None
            entries[os.path.relpath(path, folder)] = (stat.S_IFMT(info.st_mode), info.st_mode, info.st_size,
                                                      info.st_mtime_ns, content)
    return entries


def test_hostile_folder(tmp_path):
    inputs = tmp_path / "in"
    expected = make_hostile_folder(inputs)
    config = tmp_path / "config.yaml"
    config.write_text(CONFIG)
    out = tmp_path / "out"
    reason = permissions_apply()
    if reason:  # root reads a file of mode 000: it is then a good image like the others
        expected["unreadable.png"] = ("written",)
    before, around = tree(inputs), tree(tmp_path)

    run_cli = cli if reason else cli_obeying_permissions
    result = run_cli("run", config, inputs, "-o", out, "--json", "--no-progress", "--workers", 2, timeout=300)

    assert result.returncode == 3, result.stderr
    assert "Traceback" not in result.stderr and "internal error" not in result.stderr
    summary_line, *failure_lines = result.stderr.splitlines()  # no warning from Pillow in between
    assert summary_line.startswith("wrote ") and failure_lines
    assert all(line.startswith(("  failed: ", "  ... and ")) for line in failure_lines), result.stderr
    summary = json.loads(result.stdout)
    images = {name: outcome for name, outcome in expected.items() if outcome != ("skipped",)}
    assert summary["inputs"] == len(images) and summary["skipped"] == 1
    assert summary["written"] + summary["failed"] == len(images)

    failures = pq.read_table(out / "failures" / "part-00000.parquet").to_pylist()
    reasons = {os.path.relpath(row["path"], printable(str(inputs))): row["error"] for row in failures}
    _, meta = poolcli.read_descriptors(out)
    written = {os.path.relpath(p, printable(str(inputs))) for p in meta.column("path").to_pylist()}
    assert not set(reasons) & written
    for name, outcome in images.items():
        shown = printable(name)
        if outcome[0] == "written":
            assert shown in written, (name, reasons.get(shown))
        elif outcome[0] == "failed":
            assert shown in reasons, name
            assert outcome[1] in reasons[shown], (name, reasons[shown])
            assert "\n" not in reasons[shown] and len(reasons[shown]) < 300
        else:
            assert (shown in written) != (shown in reasons), name
    assert set(reasons) | written == {printable(name) for name in images}
    assert {row["stage"] for row in failures} == {"load"}

    assert tree(inputs) == before, "an input was modified"
    after = tree(tmp_path)
    outside = {k: v for k, v in after.items() if k != "out" and not k.startswith("out" + os.sep)}
    assert outside == around, "something was written outside OUT"


def test_every_hostile_file_decodes_or_fails_quickly(tmp_path):
    """The files one by one through the decoder a run uses, with its default limits: an
    ImageError or an array, and no file takes long (the slow JPEG is refused from its scan
    count, the bombs from their headers)."""
    expected = make_hostile_folder(tmp_path)
    for name, outcome in expected.items():
        path = tmp_path / name
        if outcome == ("skipped",) or name == "unreadable.png":
            continue
        try:
            array, _ = decode(path)
        except poolcli.ImageError as exc:
            assert outcome[0] in ("failed", "either"), (name, str(exc))
            if outcome[0] == "failed":
                assert outcome[1] in str(exc), (name, str(exc))
        else:
            assert outcome[0] in ("written", "either"), name
            assert array.dtype == np.float32 and np.isfinite(array).all()


# --- OUT is never read as input --------------------------------------------------------------------

DESCRIPTOR = {"stages": [{"type": "max_pool", "kernel_size": 2}, {"type": "gem"}]}


@pytest.fixture
def photos(tmp_path):
    from fixtures import photo

    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(3):
        photo().crop((i * 10, 0, i * 10 + 32, 24)).save(folder / f"p{i}.png")
    return folder


def test_out_inside_the_input_folder_reached_through_links(tmp_path, photos):
    """OUT inside the input folder is skipped when the input is named through a link to it,
    when OUT is named through a link, and when a link inside the input points into OUT."""
    os.symlink(photos, tmp_path / "via_link")
    out = photos / "out"
    os.symlink(out, tmp_path / "out_link")
    first = run(Pipeline.from_config(DESCRIPTOR), [str(tmp_path / "via_link")], out)
    assert first.inputs == 3
    os.symlink(out / "descriptors" / "part-00000.npy", photos / "z_link_into_out.npy")
    for given, out_name in ((tmp_path / "via_link", out), (photos, tmp_path / "out_link"),
                            (tmp_path / "via_link", tmp_path / "out_link")):
        summary = run(Pipeline.from_config(DESCRIPTOR), [str(given)], out_name, overwrite=True)
        assert summary.inputs == 3 and summary.written == 3, (given, out_name)
    with pytest.raises(poolcli.PoolcliError, match="no image files found"):  # every .npy there is OUT's
        run(Pipeline.from_config(DESCRIPTOR), [str(tmp_path / "via_link" / "**" / "*.npy")], tmp_path / "out_link")
