"""poolcli bench and poolcli warmup, the kernel cache folder, and start-up without numba."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import poolcli.kernels
from poolcli.cli import app
from poolcli.kernels import cache_dir_for

REPO = Path(__file__).resolve().parent.parent
GABOR_GEM = REPO / "configs" / "gabor_gem.yaml"
PHOTO = REPO / "sample_images" / "chelsea.png"


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


# --- bench ---------------------------------------------------------------------------------------


def test_bench_times_every_needed_stage_and_shares_sum_to_one():
    result = invoke("bench", GABOR_GEM, "--size", 40, 48, "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["input"] == [3, 213, 256]  # a 40x48 image, resized as a run resizes it (longest 256)
    assert [s["name"] for s in data["stages"]] == ["gabor", "pool", "gem"]
    assert [s["out_shape"] for s in data["stages"]] == [[48, 213, 256], [48, 106, 128], [48]]
    assert all(s["seconds"] > 0 for s in data["stages"]) and data["pipeline_seconds"] > 0
    assert abs(sum(s["share"] for s in data["stages"]) - 1) < 1e-9


def test_bench_with_an_image_times_its_loading_first(tmp_path):
    result = invoke("bench", GABOR_GEM, "--image", PHOTO, "--json", "--threads", 1)
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["stages"][0]["name"] == "load" and data["threads"] == 1
    assert data["input"] == [3, 170, 256]  # chelsea.png is 451 x 300; resize longest 256


def test_bench_gives_the_spread_of_its_calls_and_warns_when_they_disagree(monkeypatch):
    from poolcli import bench as bench_module

    data = json.loads(invoke("bench", GABOR_GEM, "--size", 32, 32, "--json").stdout)
    for row in data["stages"]:
        assert 0 < row["low_seconds"] <= row["seconds"] <= row["high_seconds"]
    assert data["pipeline_low_seconds"] <= data["pipeline_seconds"] <= data["pipeline_high_seconds"]
    steady = invoke("bench", GABOR_GEM, "--size", 32, 32)
    assert "range" in steady.stdout
    monkeypatch.setattr(bench_module, "DISAGREE", 0.5)  # every row's spread now counts as disagreeing
    noisy = invoke("bench", GABOR_GEM, "--size", 32, 32)
    assert "warning: the times of gabor, pool, gem, the pipeline call vary more than 2x" in noisy.stderr


@pytest.mark.parametrize("call_seconds, line", [
    (0.015, "one pipeline call: 15.00 ms (the stages plus 5.00 ms of the pipeline's own work)"),
    (0.008, "one pipeline call: 8.00 ms, 2.00 ms less than its stages timed one by one (each timed alone, "
            "and the times vary from call to call)"),  # never "the stages plus -2.00 ms"
])
def test_bench_says_how_a_pipeline_call_compares_with_its_stages(monkeypatch, call_seconds, line):
    from poolcli import bench as bench_module

    stages = [bench_module.StageTime("a", "max_pool", (3, 8, 8), 0.004, 0.004, 0.004),
              bench_module.StageTime("b", "gem", (3,), 0.006, 0.006, 0.006)]
    timed = bench_module.BenchResult((3, 16, 16), None, stages,
                                     bench_module.StageTime("pipeline", "", (3,), call_seconds, call_seconds, call_seconds), 1)
    monkeypatch.setattr(bench_module, "bench", lambda *args, **kwargs: timed)
    result = invoke("bench", GABOR_GEM, "--size", 16, 16)
    assert result.exit_code == 0 and line in " ".join(result.stdout.split()), result.stdout


def test_bench_percentiles():
    from poolcli.bench import median_time

    calls = iter([5, 1, 2, 3, 4, 6, 7, 8, 9, 10, 100] + [1] * 100)
    import time as time_module

    clock = [0.0]

    def fake_counter():
        return clock[0]

    def call():
        clock[0] += next(calls)

    real = time_module.perf_counter
    time_module.perf_counter = fake_counter
    try:
        median, low, high = median_time(call, repeats=11, min_seconds=0)
    finally:
        time_module.perf_counter = real
    assert (median, low, high) == (6, 2, 10)


def test_bench_table_names_each_stage():
    result = invoke("bench", GABOR_GEM, "--size", 32, 32)
    assert result.exit_code == 0, result.output
    for word in ("gabor", "pool", "gem", "total", "share", "one pipeline call"):
        assert word in result.stdout


def test_size_is_an_images_size_resized_as_a_run_resizes_it(tmp_path):
    """inspect --size, bench --size and --image answer for the same input: the config's resize
    applies to all three, as it does in a run."""
    from PIL import Image

    photo = tmp_path / "photo.png"
    Image.open(PHOTO).convert("RGB").resize((400, 300)).save(photo)
    by_size = invoke("inspect", GABOR_GEM, "--size", 300, 400, "--json")
    by_image = invoke("inspect", GABOR_GEM, "--image", photo, "--json")
    assert json.loads(by_size.stdout)["input"] == json.loads(by_image.stdout)["input"] == [3, 192, 256]
    assert json.loads(by_size.stdout)["image_size"] == [300, 400]
    table = invoke("inspect", GABOR_GEM, "--size", 300, 400)
    assert "a 300x400 image is resized to 192x256 by input.resize" in table.stderr
    assert "gabor-gem on a 3x192x256 input" in table.stdout
    timed = json.loads(invoke("bench", GABOR_GEM, "--size", 300, 400, "--json").stdout)
    assert timed["input"] == [3, 192, 256]
    assert "before the config's input.resize" in " ".join(invoke("inspect", "--help").stdout.split())


def test_bench_skips_stages_the_output_does_not_need(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("stages:\n  - {type: max_pool, kernel_size: 2, name: unused}\n"
                      "  - {type: gem, from: input, name: g}\n")
    data = json.loads(invoke("bench", config, "--size", 8, 8, "--json").stdout)
    assert [s["name"] for s in data["stages"]] == ["g"]


@pytest.mark.parametrize("args, message", [
    (["--size", 4, 4], "stage 'gabor'"),  # a 15x15 kernel with reflect padding on a 4x4 map
    (["--size", 32, 32, "--threads", 0], "--threads must be between 1 and"),
])
def test_bench_errors_are_one_line(tmp_path, args, message):
    import yaml

    config = yaml.safe_load(GABOR_GEM.read_text())
    del config["input"]["resize"]  # --size is then the map's size
    path = tmp_path / "gabor_gem.yaml"
    path.write_text(yaml.safe_dump(config))
    result = invoke("bench", path, *args)
    assert result.exit_code == 1
    assert message in result.output and "Traceback" not in result.output


# --- warmup -------------------------------------------------------------------------------------


def warmup_in_fresh_process(config, cache):
    env = {**os.environ, "POOLCLI_CACHE_DIR": str(cache)}  # the first choice: a user's own cannot win
    done = subprocess.run([sys.executable, "-m", "poolcli", "warmup", str(config), "--no-progress"],
                          capture_output=True, text=True, env=env, cwd=REPO)
    assert done.returncode == 0, done.stderr
    return done.stderr


def test_warmup_compiles_once_then_loads_from_the_cache(tmp_path):
    config = tmp_path / "gem.yaml"
    config.write_text("stages: [{type: gem, p: 3}]\n")
    first = warmup_in_fresh_process(config, tmp_path / "cache")
    assert "compiled the kernels of" in first and str(tmp_path / "cache") in first
    assert any((tmp_path / "cache").rglob("*.nbi"))
    second = warmup_in_fresh_process(config, tmp_path / "cache")
    assert "are ready: loaded from" in second


def test_a_warm_run_loads_its_kernels_without_numbas_registries(tmp_path):
    """Numba's registries of implementations (a fifth of a second) load only when something is
    compiled, and then without scipy.linalg; a run whose kernels are cached gives the same numbers
    without them."""
    config = tmp_path / "pool_gem.yaml"
    config.write_text("stages: [{type: max_pool, kernel_size: 2}, {type: conv, filters: sobel}, {type: gem}]\n")
    code = (
        "import json, sys, numpy as np, poolcli\n"
        f"pipe = poolcli.Pipeline.from_yaml({str(config)!r})\n"
        "y = pipe(np.linspace(-1, 1, 3 * 32 * 32, dtype=np.float32).reshape(3, 32, 32))\n"
        "print(json.dumps([y.tolist(), 'numba.np.arraymath' in sys.modules, 'scipy.linalg' in sys.modules]))\n"
    )
    env = {**os.environ, "POOLCLI_CACHE_DIR": str(tmp_path / "cache")}

    def fresh_process():
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=REPO)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    cold_values, cold_registries, cold_scipy = fresh_process()
    warm_values, warm_registries, warm_scipy = fresh_process()
    assert cold_registries and not cold_scipy  # it compiled
    assert not warm_registries and not warm_scipy
    assert warm_values == cold_values


def test_a_first_run_says_it_compiles_and_how_many(tmp_path):
    """A machine's first run of a config compiles its kernels, tens of seconds without output
    otherwise: the run says so when it starts compiling, and its summary counts them."""
    config = tmp_path / "spoc.yaml"
    config.write_text("stages: [{type: spoc}]\n")
    env = {**os.environ, "POOLCLI_CACHE_DIR": str(tmp_path / "cache")}

    def run(out):
        command = [sys.executable, "-m", "poolcli", "run", str(config), str(REPO / "sample_images" / "camera.png"),
                   "-o", str(tmp_path / out)]
        done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO)
        assert done.returncode == 0, done.stderr
        return done.stderr

    first, second = run("first"), run("second")
    assert first.startswith("compiling kernels: the first run of this config") and "`poolcli warmup CONFIG`" in first
    assert "1 kernel compiled (cached for later runs)" in first
    assert "compil" not in second and "wrote 1 descriptor of length 3 " in second


def test_every_command_that_compiles_says_so(tmp_path):
    """search (with an image query), show, bench and eval compile on a cold cache too: each says
    so, as run does, and says nothing of it once the kernels are cached."""
    config = tmp_path / "spoc.yaml"
    config.write_text("stages: [{type: max_pool, kernel_size: 2}, {type: spoc}]\n")
    photo, other = REPO / "sample_images" / "camera.png", REPO / "sample_images" / "coins.png"

    def command(cache, *args, code=0):
        env = {**os.environ, "POOLCLI_CACHE_DIR": str(tmp_path / cache)}
        done = subprocess.run([sys.executable, "-m", "poolcli", *map(str, args)], capture_output=True, text=True,
                              env=env, cwd=REPO)
        assert done.returncode == code, done.stderr
        return done.stderr

    command("run", "run", config, photo, other, "-o", tmp_path / "out")
    commands = {
        "search": ["search", tmp_path / "out", photo],
        "show": ["show", config, photo, "-o", tmp_path / "pictures"],
        "bench": ["bench", config, "--size", 16, 16],
        "eval": ["eval", config, photo, other, "--no-progress"],
    }
    for name, args in commands.items():
        cold, warm = command(name, *args), command(name, *args)
        assert "compiling kernels: the first" in cold and f"later runs of poolcli {poolcli.__version__} on this machine" in cold, name
        assert "compiling" not in warm, name


def test_warmup_without_a_config_runs_every_stage_type():
    result = invoke("warmup", "--no-progress")
    assert result.exit_code == 0, result.output
    assert "every stage's kernels" in result.output


def test_warmup_bad_config_is_one_line(tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text("stages: [{type: max_pool, kernel_size: 0}]\n")
    result = invoke("warmup", config)
    assert result.exit_code == 1 and "kernel_size" in result.output and "Traceback" not in result.output


# --- where compiled kernels go --------------------------------------------------------------------


@pytest.fixture
def read_only(monkeypatch):
    """Make os.access say no for the given folders (the tests run as root, who may write anywhere)."""
    denied = set()
    real = os.access

    def access(path, mode, *args, **kwargs):
        if any(Path(path) == d or d in Path(path).parents for d in denied) and mode & os.W_OK:
            return False
        return real(path, mode, *args, **kwargs)

    monkeypatch.setattr(os, "access", access)
    return denied


def test_kernels_are_cached_in_the_user_cache_folder_per_version_and_machine(tmp_path):
    chosen = cache_dir_for({"XDG_CACHE_HOME": str(tmp_path / "xdg")}, "x86_64-cpu-1234")
    assert chosen == str(tmp_path / "xdg" / "poolcli" / poolcli.__version__ / "x86_64-cpu-1234")
    assert Path(chosen).is_dir()
    assert cache_dir_for({"NUMBA_CACHE_DIR": str(tmp_path / "n")}, "t") == str(tmp_path / "n" / "poolcli" / poolcli.__version__ / "t")
    assert cache_dir_for({"POOLCLI_CACHE_DIR": str(tmp_path / "p"), "NUMBA_CACHE_DIR": str(tmp_path / "n")}, "t") \
        == str(tmp_path / "p" / "poolcli" / poolcli.__version__ / "t")


def test_this_process_caches_poolclis_kernels_outside_the_package():
    from poolcli.kernels import CACHE_DIR, conv

    package = Path(poolcli.kernels.__file__).parent
    assert Path(conv.conv_planes.stats.cache_path) == Path(CACHE_DIR)
    assert package not in Path(CACHE_DIR).parents and not any(package.rglob("*.nbi"))
    assert poolcli.__version__ in Path(CACHE_DIR).parts


def test_unusable_cache_folder_falls_back_to_the_temporary_folder(tmp_path, read_only, monkeypatch):
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("")  # a cache "folder" below a file cannot be created
    monkeypatch.setattr(poolcli.kernels.tempfile, "gettempdir", lambda: str(tmp_path / "tmp"))
    chosen = cache_dir_for({"XDG_CACHE_HOME": str(not_a_folder)}, "t")
    assert chosen.startswith(str(tmp_path / "tmp" / "poolcli-"))
    read_only.add(tmp_path / "tmp")
    read_only.add(tmp_path / "xdg")
    assert "poolcli-kernels-" in cache_dir_for({"XDG_CACHE_HOME": str(tmp_path / "xdg")}, "t")


def test_two_installs_share_one_cache_and_neither_gets_files(tmp_path):
    """A kernel compiled by one copy of poolcli loads from the cache in another copy of the same
    version (a different path, newer file times): the cache is per version and machine, not per
    install, and nothing is written beside either copy's sources."""
    import shutil

    copies = [tmp_path / "a", tmp_path / "b"]
    for copy in copies:
        shutil.copytree(REPO / "poolcli", copy / "poolcli", ignore=shutil.ignore_patterns("__pycache__"))
    code = ("import poolcli, numpy as np\n"
            "from poolcli.warmup import compiled_so_far\n"
            "pipe = poolcli.Pipeline.from_config({'stages': [{'type': 'spoc'}]})\n"
            "pipe(np.ones((2, 3, 3), np.float32))\n"
            "print(poolcli.__file__, compiled_so_far())")
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache"), "PYTHONDONTWRITEBYTECODE": "1"}
    env.pop("NUMBA_CACHE_DIR", None)
    env.pop("POOLCLI_CACHE_DIR", None)
    outputs = []
    for copy in copies:
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=copy)
        assert done.returncode == 0, done.stderr
        outputs.append(done.stdout.split())
    assert outputs[0][0].startswith(str(copies[0])) and outputs[1][0].startswith(str(copies[1]))
    assert [o[1] for o in outputs] == ["1", "0"]  # compiled once, loaded by the other copy
    for copy in copies:
        assert sorted(p.name for p in copy.rglob("*") if p.name == "__pycache__" or p.suffix in (".nbi", ".nbc")) == []
    assert any((tmp_path / "cache" / "poolcli" / poolcli.__version__).rglob("*.nbi"))


# --- start-up -------------------------------------------------------------------------------------


@pytest.mark.parametrize("args", [["--help"], ["inspect", str(GABOR_GEM)], ["stages"], ["validate", str(GABOR_GEM)]])
def test_commands_that_run_no_kernel_import_no_numba(args):
    code = ("import sys, runpy; sys.argv = ['poolcli', *sys.argv[1:]]\n"
            "try:\n    runpy.run_module('poolcli', run_name='__main__')\nexcept SystemExit:\n    pass\n"
            "heavy = [m for m in ('numba', 'pyarrow', 'torch', 'scipy') if m in sys.modules]\n"
            "print('HEAVY', heavy, file=sys.stderr)")
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=REPO)
    assert "HEAVY []" in done.stderr, done.stderr[-2000:]


def test_help_imports_neither_numpy_nor_pydantic():
    code = ("import sys, runpy; sys.argv = ['poolcli', '--help']\n"
            "try:\n    runpy.run_module('poolcli', run_name='__main__')\nexcept SystemExit:\n    pass\n"
            "print('HEAVY', [m for m in ('numpy', 'pydantic', 'yaml', 'rich') if m in sys.modules], file=sys.stderr)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert "HEAVY []" in done.stderr, done.stderr[-2000:]
    assert "warmup" in done.stdout and "bench" in done.stdout


def test_kernels_equal_after_loading_from_the_cache():
    # The cache holds machine code: a second process must compute exactly what the first did.
    code = ("import numpy as np, poolcli\n"
            "pipe = poolcli.Pipeline.from_yaml('configs/gabor_gem.yaml')\n"
            "x = np.random.default_rng(0).random((3, 40, 52), np.float32)\n"
            "print(' '.join(f'{v:.9e}' for v in pipe(x)))")
    runs = [subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO) for _ in range(2)]
    assert runs[0].returncode == 0, runs[0].stderr
    assert runs[0].stdout == runs[1].stdout
    values = np.array(runs[0].stdout.split(), float)
    assert values.shape == (48,) and abs(np.linalg.norm(values) - 1) < 1e-5


# --- run: images computed on the worker threads ---------------------------------------------------


@pytest.fixture
def mixed_inputs(tmp_path):
    """Photos of several sizes, one too small for gabor_gem's 15x15 reflect padding, one broken."""
    from PIL import Image

    folder = tmp_path / "in"
    folder.mkdir()
    with Image.open(PHOTO) as photo:
        photo = photo.convert("RGB")
        for i, size in enumerate([(451, 300), (120, 90), (64, 200), (300, 301), (45, 30), (200, 200), (96, 64)]):
            photo.resize(size).save(folder / f"p{i}.png")
    Image.new("RGB", (5, 5)).save(folder / "tiny.png")  # resized to 256 longest: fits; 5x5 -> 256x256
    (folder / "broken.jpg").write_bytes(b"not a jpeg")
    return folder


def read_run(out):
    from poolcli import read_descriptors

    vectors, metadata = read_descriptors(out)
    import pyarrow.parquet as pq

    failures = pq.read_table(next((Path(out) / "failures").glob("*.parquet"))).to_pylist()
    return vectors, metadata.column("key").to_pylist(), sorted((f["key"], f["stage"]) for f in failures)


@pytest.mark.parametrize("options", [{"workers": 3}, {"workers": 2, "threads": 2}, {"threads_safe": False}])
def test_run_gives_the_same_rows_however_images_are_spread(tmp_path, mixed_inputs, monkeypatch, options):
    import poolcli.runner as runner
    from poolcli import Pipeline

    config = tmp_path / "c.yaml"
    config.write_text("input: {resize: {longest: 64}}\nstages:\n"
                      "  - {type: conv, filters: gabor, orientations: 2, wavelengths: [4], kernel_size: 9,"
                      " channels: each, padding: same, padding_mode: reflect, activation: abs}\n"
                      "  - {type: max_pool, kernel_size: 2}\n  - {type: gem, p: 3}\n")
    pipe = Pipeline.from_yaml(config)
    reference = runner.run(pipe, [str(mixed_inputs)], tmp_path / "one", workers=1, threads=1, shard_size=4)
    if options.pop("threads_safe", True) is False:
        monkeypatch.setattr(runner, "kernels_threadsafe", lambda: False)  # Numba's workqueue layer
    summary = runner.run(Pipeline.from_yaml(config), [str(mixed_inputs)], tmp_path / "many", shard_size=4, **options)
    assert (summary.written, summary.failed) == (reference.written, reference.failed) == (8, 1)
    ours, theirs = read_run(tmp_path / "many"), read_run(tmp_path / "one")
    np.testing.assert_array_equal(ours[0], theirs[0])  # bit for bit: each image is computed whole by one thread
    assert ours[1:] == theirs[1:]


def test_a_failing_image_on_a_worker_is_a_failure_row_naming_the_stage(tmp_path, mixed_inputs):
    import poolcli.runner as runner
    from poolcli import Pipeline

    config = tmp_path / "c.yaml"
    config.write_text("stages:\n  - {type: conv, filters: gaussian, sigma: 8, padding: same, padding_mode: reflect}\n"
                      "  - {type: gem}\n")  # a 49x49 reflect-padded kernel: maps under 25 pixels fail
    summary = runner.run(Pipeline.from_yaml(config), [str(mixed_inputs)], tmp_path / "out", workers=2)
    stages = {f["path"].rsplit("/", 1)[-1]: f["stage"] for f in summary.failures}
    assert stages == {"broken.jpg": "load", "tiny.png": "conv0"}


def test_bench_measures_how_run_would_split_the_cores(monkeypatch):
    """With every core (no --threads), bench times the pipeline as an image per core and as one
    image on every core, and names the faster way; with --threads it does not."""
    import poolcli.bench as bench_module

    from poolcli.pipeline import Pipeline

    pipeline = Pipeline.from_yaml(REPO / "configs" / "retrieval.yaml")
    x = np.random.default_rng(0).random((3, 64, 64), dtype=np.float32)
    plan = bench_module.plan_parallelism(pipeline, x, 2, calls=1)
    assert plan.side_by_side > 0 and plan.together > 0
    faster_apart = plan.side_by_side >= bench_module.SIDE_BY_SIDE_GAIN * plan.together
    assert (plan.workers, plan.threads) == ((2, 1) if faster_apart else (1, 2))
    assert ("2 images at once" if faster_apart else "one image at a time on 2") in plan.describe()
    assert bench_module.plan_parallelism(pipeline, x, 1) == bench_module.Parallelism(1, 1, 0.0, 0.0)

    from poolcli.runner import kernels_threadsafe

    if not kernels_threadsafe():
        return  # images are never side by side here: bench has nothing to measure
    monkeypatch.setattr(bench_module, "plan_parallelism", lambda *a, **k: bench_module.Parallelism(2, 1, 9.0, 4.0))
    monkeypatch.setattr("numba.get_num_threads", lambda: 2)
    result = CliRunner().invoke(app, ["bench", str(REPO / "configs" / "retrieval.yaml"), "--size", "64", "64", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["run_parallelism"] == {
        "workers": 2, "threads": 1, "images_per_second_side_by_side": 9.0, "images_per_second_together": 4.0}
    result = CliRunner().invoke(app, ["bench", str(REPO / "configs" / "retrieval.yaml"), "--size", "64", "64", "--threads", "1"])
    assert result.exit_code == 0 and "run would take" not in result.output


@pytest.mark.parametrize("together", [False, True])
def test_a_long_run_measures_how_to_split_the_cores_and_writes_the_same_bytes(tmp_path, monkeypatch, together):
    """A run long enough to repay it measures both ways of using the cores, says which it took,
    and writes what a run on one thread writes, either way."""
    import poolcli.bench as bench_module
    import poolcli.runner as runner

    from poolcli.pipeline import Pipeline
    from poolcli.runner import run

    if not runner.kernels_threadsafe():
        pytest.skip("kernels cannot run on several threads at once here: images are never side by side")
    chosen = bench_module.Parallelism(1, 2, 1.0, 2.0) if together else bench_module.Parallelism(2, 1, 2.0, 1.0)
    seen = []
    monkeypatch.setattr(runner, "usable_cores", lambda: 2)
    monkeypatch.setattr(bench_module, "plan_parallelism", lambda p, x, cores: seen.append((x.shape, cores)) or chosen)
    pipeline = Pipeline.from_yaml(REPO / "configs" / "retrieval.yaml")
    images = sorted(str(p) for p in (REPO / "sample_images").iterdir() if p.suffix != ".md")
    monkeypatch.setattr(runner, "PLAN_MIN_IMAGES", len(images) // 2)
    measured = run(pipeline, images, tmp_path / "measured")
    assert seen and seen[0][1] == 2 and measured.parallelism == chosen.describe()
    plain = run(pipeline, images, tmp_path / "plain", threads=1)  # threads given: nothing measured
    assert plain.parallelism is None and len(seen) == 1
    for a, b in zip(sorted((tmp_path / "measured").rglob("*.parquet")), sorted((tmp_path / "plain").rglob("*.parquet"))):
        assert a.relative_to(tmp_path / "measured") == b.relative_to(tmp_path / "plain")
        assert a.read_bytes() == b.read_bytes()
    monkeypatch.setattr(runner, "PLAN_MIN_IMAGES", len(images))  # too short a run: not measured
    assert run(pipeline, images, tmp_path / "short").parallelism is None and len(seen) == 1


def test_a_kernels_cache_stamp_covers_the_modules_it_calls(tmp_path):
    """A conv kernel compiles elementwise's activations into itself: editing elementwise.py must
    make the cached conv kernels stale, though Numba itself checks only conv.py."""
    import shutil

    from poolcli.kernels import _source_hashes, _source_stamp

    folder = tmp_path / "kernels"
    shutil.copytree(Path(poolcli.kernels.__file__).parent, folder, ignore=shutil.ignore_patterns("__pycache__"))
    before = _source_stamp(str(folder / "conv.py"))
    assert before == _source_stamp(str(folder / "elementwise.py"))
    (folder / "elementwise.py").write_text((folder / "elementwise.py").read_text() + "\n# an edit\n")
    _source_hashes.pop(str(folder))  # a new process
    assert _source_stamp(str(folder / "conv.py")) != before
