"""The command line: Typer's CliRunner for the quick commands, real subprocesses for runs."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

import poolcli
from poolcli.cli import app

ROOT = Path(__file__).parent.parent
SAMPLES = ROOT / "sample_images"
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))
runner = CliRunner()


def cli(*args, **kwargs):
    return subprocess.run([sys.executable, "-m", "poolcli", *map(str, args)], capture_output=True, text=True, **kwargs)


def test_version():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.stdout.strip() == f"poolcli {poolcli.__version__}"


def test_stages_lists_every_type():
    from poolcli.stages import STAGES

    result = runner.invoke(app, ["stages"])
    assert result.exit_code == 0
    listed = {line.split()[0] for line in result.stdout.splitlines() if line and not line.startswith("`")}
    assert listed == {cls.type_names[0] for cls in STAGES.values()} | {"include"}


def test_stages_type_shows_the_spec_example():
    result = runner.invoke(app, ["stages", "max_pool"])
    assert result.exit_code == 0
    assert "kernel_size" in result.stdout and "[[6., 4.]," in result.stdout and "[4., 5.]]" in result.stdout


def test_stages_unknown_type():
    result = runner.invoke(app, ["stages", "max_pol"])
    assert result.exit_code == 1 and "did you mean 'max_pool'" in result.stderr


@pytest.mark.parametrize(
    "text, message",
    [
        ("stages: [{type: nopool}]", "unknown stage type 'nopool'"),
        ("stages: [{type: max_pool, kernal_size: 2}]", "unknown key 'kernal_size' (did you mean 'kernel_size'?)"),
        ("stages: [{type: max_pool, kernel_size: 0}]", "kernel_size: must be >= 1, got 0"),
        ("stages: [{type: max_pool, kernel_size: 2}", "invalid YAML"),
        ("name: empty", "'stages' is required"),
    ],
)
def test_bad_config_exits_1_with_one_line(tmp_path, text, message):
    config = tmp_path / "bad.yaml"
    config.write_text(text)
    for command in (["validate", config], ["inspect", config], ["run", config, SAMPLES, "-o", tmp_path / "out"]):
        result = cli(*command)
        assert result.returncode == 1, result.stderr
        assert result.stderr.count("\n") == 1 and message in result.stderr and "Traceback" not in result.stderr
        assert result.stdout == ""
    assert not (tmp_path / "out").exists()


def test_usage_error_exits_2(tmp_path):
    assert runner.invoke(app, ["run"]).exit_code == 2
    assert runner.invoke(app, ["inspect", str(CONFIGS[0]), "--size", "3"]).exit_code == 2


def test_schema_is_json():
    result = runner.invoke(app, ["schema"])
    assert result.exit_code == 0
    assert json.loads(result.stdout)["properties"]["stages"]["type"] == "array"


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.name)
def test_inspect_and_validate_shipped_configs(config):
    assert runner.invoke(app, ["validate", str(config)]).exit_code == 0
    result = runner.invoke(app, ["inspect", str(config), "--size", "300", "200"])
    assert result.exit_code == 0, result.output
    assert "output:" in result.stdout and "receptive field" in result.stdout
    data = json.loads(runner.invoke(app, ["inspect", str(config), "--size", "300", "200", "--json"]).stdout)
    resize = poolcli.Pipeline.from_yaml(config).config.input.resize
    assert data["input"][1:] == (list(resize.target(300, 200)) if resize else [300, 200]) and len(data["stages"]) >= 1
    assert data["image_size"] == [300, 200]


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.name)
def test_run_every_shipped_config_on_the_sample_images(tmp_path, config):
    out = tmp_path / "out"
    result = cli("run", config, SAMPLES, "-o", out, "--json", "--no-progress")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    n_images = len([p for p in SAMPLES.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg")])
    assert summary["written"] == n_images and summary["failed"] == 0 and summary["skipped"] == 1  # SOURCES.md
    assert (out / "pipeline.yaml").read_text() == config.read_text()
    assert (out / "stats" / "part-00000.json").exists()
    meta = pq.read_table(out / "metadata" / "part-00000.parquet").to_pylist()
    for row in meta:  # inspect --image promises the shape the run wrote
        traced = json.loads(runner.invoke(app, ["inspect", str(config), "--image", row["path"], "--json"]).stdout)
        if summary["kind"] == "maps":
            assert list(np.load(out / row["map_file"]).shape) == traced["output_shape"]
        else:
            assert [summary["dim"]] == traced["output_shape"]
    if summary["kind"] == "descriptors":
        vectors, table = poolcli.read_descriptors(out)
        assert vectors.shape == (n_images, summary["dim"]) and table.num_rows == n_images
    # the same command again resumes: nothing to do, same result
    again = cli("run", config, SAMPLES, "-o", out, "--json", "--no-progress")
    assert again.returncode == 0 and json.loads(again.stdout)["shards_resumed"] == 1


def test_run_names_the_files_it_skips(tmp_path):
    """The summary line names the first few non-image files and counts the rest; --verbose lists
    each one; --json gives them all as skipped_files."""
    photos = tmp_path / "photos"
    (photos / "sub").mkdir(parents=True)
    (photos / "cat.png").write_bytes((SAMPLES / "chelsea.png").read_bytes())
    others = ["README", "notes.txt", "sub/a.json", "sub/b.json", "z.csv"]
    for name in others:
        (photos / name).write_text("no image\n")
    config = ROOT / "configs" / "gabor_gem.yaml"
    done = cli("run", config, "photos", "-o", "out", "--no-progress", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert ("wrote 1 descriptor of length 48 to out in " in done.stderr
            and "5 non-image files skipped (photos/README, photos/notes.txt, photos/sub/a.json and 2 more: "
            "--verbose lists them)" in done.stderr), done.stderr
    verbose = cli("run", config, "photos", "-o", "out2", "--no-progress", "--verbose", cwd=tmp_path)
    assert "5 non-image files skipped (listed below)" in verbose.stderr
    assert [line for line in verbose.stderr.splitlines() if line.startswith("  skipped: ")] == [
        f"  skipped: photos/{name}" for name in sorted(others)]
    summary = json.loads(cli("run", config, "photos", "-o", "out3", "--json", cwd=tmp_path).stdout)
    assert summary["skipped"] == 5 and summary["skipped_files"] == [str(photos / name) for name in sorted(others)]
    (photos / "z.csv").unlink()
    (photos / "sub" / "b.json").unlink()
    few = cli("run", config, "photos", "-o", "out4", "--no-progress", cwd=tmp_path)
    assert "3 non-image files skipped (photos/README, photos/notes.txt, photos/sub/a.json)" in few.stderr, few.stderr


def test_verbose_lists_every_failure(tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(12):
        (photos / f"broken{i:02d}.png").write_bytes(b"not a png")
    config = ROOT / "configs" / "gabor_gem.yaml"
    brief = cli("run", config, photos, "-o", tmp_path / "out", "--no-progress")
    failed = [line for line in brief.stderr.splitlines() if line.startswith("  failed: ")]
    assert brief.returncode == 3 and len(failed) == 10
    assert f"  ... and 2 more: see {tmp_path / 'out'}/failures/ (or run again with --verbose)" in brief.stderr
    verbose = cli("run", config, photos, "-o", tmp_path / "out2", "--no-progress", "--verbose")
    failed = [line for line in verbose.stderr.splitlines() if line.startswith("  failed: ")]
    assert verbose.returncode == 3 and len(failed) == 12 and "more: see" not in verbose.stderr


def test_a_first_runs_images_per_second_leaves_its_compiling_out():
    from poolcli.cli import _report_run
    from poolcli.runner import RunSummary

    class Lines:
        def __init__(self):
            self.lines = []

        def print(self, text, **_):
            self.lines.append(text)

    summary = RunSummary("out", "descriptors", 20, written=20, processed=20, dim=48, seconds=12.0)
    console = Lines()
    _report_run(console, summary, compiled=3, compile_seconds=10.0)
    assert console.lines == ["wrote 20 descriptors of length 48 to out in 12.0 s (10.0 images/s, 10.0 s of compiling "
                             "not counted); 3 kernels compiled (cached for later runs)"]
    console = Lines()
    _report_run(console, summary)
    assert console.lines == ["wrote 20 descriptors of length 48 to out in 12.0 s (1.7 images/s)"]


def test_run_summary_prints_paths_as_they_are(tmp_path):
    # a log or pipe gets plain lines: brackets and colons in paths are not read as Rich markup
    folder = tmp_path / "in [x] :smile:"
    folder.mkdir()
    (folder / "bad [red]1[bold].png").write_bytes(b"not a png")
    out = tmp_path / "out [red] :smile:"
    result = cli("run", ROOT / "configs" / "gabor_gem.yaml", folder, "-o", out)
    assert result.returncode == 3, result.stderr
    assert f"to {out} in " in result.stderr
    assert f"  failed: {folder / 'bad [red]1[bold].png'} [load]: " in result.stderr


def test_run_refuses_another_config_in_the_same_folder(tmp_path):
    out = tmp_path / "out"
    assert cli("run", CONFIGS[0], SAMPLES / "camera.png", "-o", out).returncode == 0
    result = cli("run", CONFIGS[1], SAMPLES / "camera.png", "-o", out)
    assert result.returncode == 1 and "--overwrite" in result.stderr
    assert cli("run", CONFIGS[1], SAMPLES / "camera.png", "-o", out, "--overwrite").returncode == 0


# --- validate: rules of shape that hold whatever the image's size ------------------------------------


@pytest.mark.parametrize("stages, line, message", [
    ("  - {type: gem}\n  - {type: gem}\n", 3, "stage 'gem1' (gem): gem needs a (C, H, W) feature map, got a vector"),
    ("  - {type: spoc}\n  - {type: max_pool, kernel_size: 2}\n", 3, "stage 'max_pool1' (max_pool)"),
    ("  - {type: max_pool, kernel_size: 2, name: a}\n  - {type: gem, from: input, name: b}\n"
     "  - {type: concat, from: [a, b]}\n", 4, "stage 'concat2' (concat)"),
])
def test_validate_refuses_what_no_image_can_run(tmp_path, stages, line, message):
    config = tmp_path / "c.yaml"
    config.write_text("stages:\n" + stages)
    result = runner.invoke(app, ["validate", str(config)])
    assert result.exit_code == 1
    assert result.stderr.startswith(f"error: {config}:{line}: {message}")
    assert "whatever the image's size" in result.stderr and len(result.stderr.splitlines()) == 1


def test_validate_accepts_what_only_some_sizes_cannot_run(tmp_path):
    config = tmp_path / "c.yaml"  # a 600x600 window fits a 640x480 image and not a 256x1024 one
    config.write_text("stages:\n  - {type: max_pool, kernel_size: 600}\n  - {type: gem}\n")
    result = runner.invoke(app, ["validate", str(config)])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == f"{config}: valid (2 stages, writes descriptors of length 3)"


def test_a_length_that_follows_the_image_size_is_said_so(tmp_path):
    config = tmp_path / "flat.yaml"
    config.write_text("input: {resize: {longest: 64}}\nstages:\n  - {type: max_pool, kernel_size: 8}\n  - {type: flatten}\n")
    result = runner.invoke(app, ["validate", str(config)])
    assert result.exit_code == 0 and "descriptors whose length depends on the image's size" in result.stdout
    table = runner.invoke(app, ["inspect", str(config)])
    assert "output: descriptor of length 192 (float32, L2-normalised) for a 64x64 input: the length depends" in table.stdout
    assert json.loads(runner.invoke(app, ["inspect", str(config), "--json"]).stdout)["length_depends_on_size"] is True
    fixed = tmp_path / "fixed.yaml"
    fixed.write_text("input: {resize: {size: [32, 48]}}\nstages:\n  - {type: max_pool, kernel_size: 8}\n"
                     "  - {type: flatten}\n")
    result = runner.invoke(app, ["validate", str(fixed)])
    assert result.stdout.strip() == f"{fixed}: valid (2 stages, writes descriptors of length 72)"
    assert json.loads(runner.invoke(app, ["inspect", str(fixed), "--json"]).stdout)["length_depends_on_size"] is False


@pytest.mark.parametrize("command", ["inspect", "bench"])
def test_an_image_that_cannot_be_read_is_named(tmp_path, command):
    for image, reason in [(tmp_path / "nope.jpg", "No such file"), (tmp_path / "notes.jpg", "")]:
        if reason == "":
            image.write_text("not a jpeg\n")
        result = runner.invoke(app, [command, str(ROOT / "configs" / "gabor_gem.yaml"), "--image", str(image)])
        assert result.exit_code == 1 and len(result.stderr.splitlines()) == 1, result.output
        assert result.stderr.startswith(f"error: --image {image}: ") and reason in result.stderr


def test_index_on_a_maps_run_says_index_needs_descriptors(tmp_path):
    config = tmp_path / "maps.yaml"
    config.write_text("input: {resize: {size: [16, 16]}}\nstages: [{type: max_pool, kernel_size: 2}]\n")
    assert cli("run", config, SAMPLES / "camera.png", "-o", tmp_path / "out", "--no-progress").returncode == 0
    result = runner.invoke(app, ["index", str(tmp_path / "out")])
    assert result.exit_code == 1 and "holds feature maps, not descriptors" in result.stderr
    assert "index needs descriptors" in result.stderr and "search" not in result.stderr


def test_validate_says_one_stage(tmp_path):
    config = tmp_path / "one.yaml"
    config.write_text("stages: [{type: max_pool, kernel_size: 2}]\n")
    assert runner.invoke(app, ["validate", str(config)]).stdout.strip() == f"{config}: valid (1 stage, writes feature maps)"


# --- shipped configs, by name, from anywhere ---------------------------------------------------------


def test_a_shipped_config_runs_by_name_from_any_folder(tmp_path):
    """`poolcli run retrieval photos/ -o out` in a folder that holds neither the config nor
    its .npy weights: the shipped config and its files come from the package."""
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("camera.png", "coins.png"):
        (photos / name).write_bytes((SAMPLES / name).read_bytes())
    done = cli("run", "retrieval", "photos/", "-o", "out", "--no-progress", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "wrote 2 descriptors of length 140 to out" in done.stderr
    vectors, _ = poolcli.read_descriptors(tmp_path / "out")
    reference = poolcli.Pipeline.from_yaml(ROOT / "configs" / "retrieval.yaml")
    expected = reference(poolcli.load_image(SAMPLES / "camera.png", reference.config.input))
    np.testing.assert_array_equal(vectors[0], expected)


def test_every_command_takes_a_shipped_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert runner.invoke(app, ["validate", "gabor_gem"]).stdout.strip() == "gabor_gem: valid (3 stages, writes descriptors of length 48)"
    assert runner.invoke(app, ["validate", "gabor_gem.yaml"]).exit_code == 0
    assert json.loads(runner.invoke(app, ["inspect", "spp_edges", "--json"]).stdout)["output_shape"] == [126]
    (tmp_path / "gabor_gem.yaml").write_text("stages: [{type: spoc}]\n")  # a file of that name wins
    assert "length 3" in runner.invoke(app, ["validate", "gabor_gem.yaml"]).stdout


def test_an_unknown_name_suggests_the_nearest(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["inspect", "retrievl"])
    assert result.exit_code == 1 and len(result.stderr.splitlines()) == 1
    assert "no config file retrievl, nor a shipped config named 'retrievl' (did you mean 'retrieval'?" in result.stderr


def test_configs_lists_prints_and_copies_the_shipped_configs(tmp_path):
    listed = runner.invoke(app, ["configs"]).stdout.splitlines()
    assert [line.split()[0] for line in listed] == sorted(p.stem for p in CONFIGS)
    assert "retrieval            General-purpose retrieval descriptor for near-duplicates and copies" in listed
    assert runner.invoke(app, ["configs", "gabor_gem"]).stdout == (ROOT / "configs" / "gabor_gem.yaml").read_text()
    copied = runner.invoke(app, ["configs", "retrieval", "-o", str(tmp_path / "mine")])
    assert copied.exit_code == 0, copied.output
    assert copied.stdout.strip() == str(tmp_path / "mine" / "retrieval.yaml")
    assert sorted(p.name for p in (tmp_path / "mine" / "retrieval").iterdir()) == \
        sorted(p.name for p in (ROOT / "configs" / "retrieval").iterdir())
    assert runner.invoke(app, ["validate", str(tmp_path / "mine" / "retrieval.yaml")]).exit_code == 0
    again = runner.invoke(app, ["configs", "retrieval", "-o", str(tmp_path / "mine")])
    assert again.exit_code == 1 and "exists already" in again.stderr


def test_shipped_configs_and_their_files_are_package_data():
    """pyproject's package-data globs take every shipped file into a wheel."""
    import fnmatch

    tomllib = pytest.importorskip("tomllib")  # Python 3.11 and later

    globs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["poolcli"]
    package = ROOT / "poolcli"
    shipped = [p.relative_to(package).as_posix() for p in (package / "configs").rglob("*") if p.is_file()]
    assert shipped and all(any(fnmatch.fnmatch(f, g) and f.count("/") == g.count("/") for g in globs) for f in shipped)


def test_the_products_docs_stand_alone():
    """README, docs/, the package's docstrings, comments and shipped configs, the benchmarks,
    `poolcli stages TYPE` and every --help never send a user to SPEC, a development file that
    does not ship."""
    from poolcli.stages import STAGES

    sources = [ROOT / "README.md", *(ROOT / "docs").glob("*.md"), *(ROOT / "benchmarks").glob("*.py"),
               *(p for p in (ROOT / "poolcli").rglob("*") if p.suffix in (".py", ".yaml", ".md"))]
    assert len(sources) > 50
    texts = {str(p.relative_to(ROOT)): p.read_text(encoding="utf-8") for p in sources}
    for name in sorted({cls.type_names[0] for cls in STAGES.values()}):
        texts[f"stages {name}"] = runner.invoke(app, ["stages", name]).stdout
    for command in [None, *(c.name or c.callback.__name__.replace("_", "-") for c in app.registered_commands)]:
        args = ([command] if command else []) + ["--help"]
        result = runner.invoke(app, args)
        assert result.exit_code == 0 and "Usage: " in result.stdout, args
        texts[" ".join(args)] = result.stdout
    assert [where for where, text in texts.items() if "SPEC" in text] == []


def test_help_shows_metavars_and_whole_descriptions():
    top = runner.invoke(app, ["--help"]).stdout
    assert "..." not in top.split("Commands:")[1]  # no description cut short
    assert "Run the pipeline over images and write descriptors or feature maps to OUT." in " ".join(top.split())
    for command in (c.name or c.callback.__name__.replace("_", "-") for c in app.registered_commands):
        text = runner.invoke(app, [command, "--help"]).stdout
        assert "<" not in text and "[[" not in text, (command, text)
    run_help = runner.invoke(app, ["run", "--help"]).stdout
    assert "--shard-size N" in run_help and "--engine local|ray" in run_help
    usage = {command: runner.invoke(app, [command, "--help"]).stdout.splitlines()[0] for command in ("run", "eval", "warmup")}
    assert usage == {"run": "Usage: poolcli run [OPTIONS] CONFIG [INPUT]...",  # as Click writes it: no {CONFIG}
                     "eval": "Usage: poolcli eval [OPTIONS] CONFIG... IMAGES...",
                     "warmup": "Usage: poolcli warmup [OPTIONS] [CONFIG]"}
