"""The ``poolcli`` command: parse options, call the library, print.

Results go to stdout, progress and messages to stderr. This is the one place that exits:
:func:`cli_errors` turns every :class:`PoolcliError` into one red line and exit code 1.
Heavy imports (numba, pyarrow, pydantic) happen inside the commands.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import sys
from enum import Enum
from pathlib import Path
from typing import List, Optional, Tuple

import typer

from poolcli import __version__
from poolcli.errors import PoolcliError

EXIT_FAILURES = 3
SIZE_HELP = ("An image's height and width, before the config's input.resize, which is applied as a run applies "
             "it [default: the size the resize gives, else 512x512].")
CONFIG_HELP = "Pipeline config: a YAML file, or the name of a config shipped with poolcli (`poolcli configs` lists them)."

app = typer.Typer(
    name="poolcli",
    help="Image feature extraction: convolution and pooling pipelines from YAML, written as "
    "retrieval descriptors or feature maps.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


class _PlainConsole:
    """stderr when it is not a terminal (a log file, a pipe): the lines Rich would print there,
    without importing Rich (40 ms of a one-image run) and without reading ``[brackets]`` or
    ``:codes:`` in paths as Rich markup or emoji."""

    def print(self, *objects, **_ignored) -> None:
        print(*objects, file=sys.stderr)


def _stderr():
    if not sys.stderr.isatty():
        return _PlainConsole()
    from rich.console import Console

    return Console(stderr=True, highlight=False, soft_wrap=True)


def _stdout():
    from rich.console import Console

    return Console(highlight=False, soft_wrap=True, markup=False, width=None if sys.stdout.isatty() else 200)


def error_line(message: str) -> None:
    from rich.text import Text

    _stderr().print(Text("error: ", style="bold red") + Text(" ".join(str(message).split())))


def cli_errors(command):
    """Run ``command``; a library error becomes one line on stderr and exit 1, never a traceback."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except PoolcliError as exc:
            error_line(str(exc))
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            error_line("interrupted; run the same command again to resume")
            raise typer.Exit(130) from None
        except MemoryError:
            error_line("out of memory; try a smaller input.resize, --max-pixels or --shard-size")
            raise typer.Exit(1) from None
        except (typer.Exit, typer.Abort, typer.BadParameter):  # a usage error: Typer prints it, exit 2
            raise
        except BrokenPipeError:  # `poolcli schema | head`: the reader left, nothing to report
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            raise typer.Exit(0) from None
        except Exception as exc:  # a bug: still one line, with what to report
            error_line(f"internal error ({type(exc).__name__}: {exc}); please report it with the command you ran")
            raise typer.Exit(1) from None

    return wrapper


def _version(value: bool) -> None:
    if value:
        print(f"poolcli {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
) -> None:
    pass


def _load(config: Path):
    from poolcli.pipeline import Pipeline

    return Pipeline.from_yaml(config)


# --- run --------------------------------------------------------------------------------------


class _Engine(str, Enum):
    local = "local"
    ray = "ray"


@app.command()
@cli_errors
def run(
    config: Path = typer.Argument(..., metavar="CONFIG", help=CONFIG_HELP),
    inputs: Optional[List[str]] = typer.Argument(None, metavar="INPUT", help="Image files, folders (walked recursively), globs and tar shards (.tar: each image member an input); or fsspec URLs (s3://bucket/prefix)."),
    out: str = typer.Option(..., "-o", "--out", metavar="OUT", help="Output folder, or an fsspec URL (s3://bucket/out)."),
    files_from: Optional[str] = typer.Option(None, "--files-from", metavar="FILE", help="Also the files listed in FILE, one path or URL a line ('-': standard input); a listed file that is missing is a failure row."),
    shard_size: int = typer.Option(10_000, "--shard-size", metavar="N", help="Images per output shard."),
    workers: Optional[int] = typer.Option(None, "--workers", metavar="N", help="Threads that each decode an image and run the pipeline on it [default: cores / --threads; with --engine ray: 2 decoding threads per task]."),
    threads: Optional[int] = typer.Option(None, "--threads", metavar="N", help="Kernel threads per image [default: 1; with --engine ray: per task, 1]."),
    engine: _Engine = typer.Option(_Engine.local, "--engine", metavar="local|ray", help="local: this process; ray: one task per shard on a Ray cluster."),
    address: Optional[str] = typer.Option(None, "--address", metavar="ADDR", help="With --engine ray: the cluster's address (host:port) [default: start a local Ray instance]."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a different run in OUT (default: resume the same run)."),
    max_pixels: int = typer.Option(89_478_485, "--max-pixels", metavar="N", help="Larger images are recorded as failures."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON on stdout (skipped_files: the non-image files left out)."),
    no_progress: bool = typer.Option(False, "--no-progress", help="No progress bar."),
    verbose: bool = typer.Option(False, "-v", "--verbose", help="List every skipped non-image file and every failure, not only the first few."),
) -> None:
    """Run the pipeline over images and write descriptors or feature maps to OUT."""
    from poolcli.io.inputs import read_file_list
    from poolcli.runner import run as run_pipeline

    if not inputs and files_from is None:
        raise typer.BadParameter("give at least one INPUT, or --files-from FILE", param_hint="INPUT")
    listed = read_file_list(files_from) if files_from is not None else []
    pipeline = _load(config)
    err = _stderr()
    unit = "shards" if engine is _Engine.ray else "images"
    compiled = _compile_watch(err) if engine is _Engine.local else None  # Ray's tasks compile elsewhere
    with (_progress(err, enabled=not no_progress and sys.stderr.isatty(), unit=unit) as progress,
          compiled or contextlib.nullcontext()):
        summary = run_pipeline(
            pipeline, inputs or [], out, shard_size=shard_size, workers=workers, threads=threads,
            overwrite=overwrite, max_pixels=max_pixels, progress=progress, engine=engine.value, address=address,
            listed=listed,
        )
    _report_run(err, summary, compiled.count if compiled else 0, compiled.seconds if compiled else 0.0, verbose)
    if as_json:
        print(json.dumps(summary.to_dict(), indent=2))
    if summary.failed:
        raise typer.Exit(EXIT_FAILURES)


class _progress:
    """A Rich progress bar on stderr, or nothing; used as the runner's ``progress`` callback.
    ``unit`` is what it counts: images, or shards done across a Ray cluster."""

    def __init__(self, console, enabled: bool, unit: str = "images"):
        self.console, self.enabled, self.bar, self.task, self.unit = console, enabled, None, None, unit

    def __enter__(self):
        if not self.enabled:
            return None
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.bar = Progress(TextColumn(self.unit), BarColumn(), MofNCompleteColumn(), _rate_column(self.unit),
                            TimeRemainingColumn(), TextColumn("left"), console=self.console, transient=True)
        self.bar.start()
        return self

    def __call__(self, done: int, total: int) -> None:
        if self.task is None:  # what was done before (a resumed run's) does not count in the rate
            self.task = self.bar.add_task(self.unit, total=total, completed=done)
        self.bar.update(self.task, completed=done)

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.stop()


def _rate_column(unit: str):
    """A progress column: how many ``unit`` a second, over the last half minute."""
    from rich.progress import ProgressColumn
    from rich.text import Text

    class Rate(ProgressColumn):
        def render(self, task):
            speed = task.finished_speed or task.speed
            return Text(f"{speed:.1f} {unit}/s" if speed else f"- {unit}/s")

    return Rate()


def _compile_watch(console, what: str = "run of this config"):
    """Says so on stderr when kernels start compiling (a machine's first ``what``, which is
    otherwise silent for tens of seconds), and counts them. The cache is per poolcli version
    and machine (:mod:`poolcli.kernels`), which is what the line says."""
    from poolcli.warmup import CompileWatch

    return CompileWatch(lambda: console.print(
        f"compiling kernels: the first {what} on this machine takes tens of seconds (they are cached for "
        f"later runs of poolcli {__version__} on this machine; `poolcli warmup CONFIG` compiles ahead)",
        markup=False, emoji=False))


def _count(n: int, noun: str, plural: str | None = None) -> str:
    """``1 stage``, ``3 stages``.

    >>> _count(1, "stage"), _count(0, "file"), _count(2, "non-image file")
    ('1 stage', '0 files', '2 non-image files')
    """
    return f"{n} {noun if n == 1 else plural or noun + 's'}"


def _display_path(path: str) -> str:
    """A path as the user would type it: relative to the current folder when inside it."""
    if "://" in path or not os.path.isabs(path):
        return path
    try:
        relative = os.path.relpath(path)
    except ValueError:  # another drive (Windows)
        return path
    return path if relative.startswith("..") else relative


SHOWN_SKIPPED = 3  # skipped files named in the summary line without --verbose
SHOWN_FAILURES = 10


def _report_run(console, summary, compiled: int = 0, compile_seconds: float = 0.0, verbose: bool = False) -> None:
    if summary.kind == "descriptors":
        what = _count(summary.written, "descriptor") + (f" of length {summary.dim}" if summary.dim else "")
    else:
        shape = summary.map_shape
        what = _count(summary.written, "feature map") + (
            f" of shape {_shape(shape)}" if isinstance(shape, list) else " (their size follows each image's)" if shape else ""
        )
    if summary.processed == 0:
        line = f"nothing to do: {summary.out} already holds {what}"
    else:
        working = summary.seconds - compile_seconds  # a first run's compiling is not its speed
        rate = summary.processed / working if working > 0 else 0.0
        line = f"wrote {what} to {summary.out} in {summary.seconds:.1f} s ({rate:.1f} images/s" + (
            f", {compile_seconds:.1f} s of compiling not counted)" if compile_seconds >= 0.05 else ")")
    extras = [f"{summary.failed} failed"] if summary.failed else []
    if summary.skipped:
        extras.append(_count(summary.skipped, "non-image file") + " skipped" + _skipped_names(summary, verbose))
    if summary.shards_resumed and summary.processed:
        extras.append(f"resumed: {summary.shards_resumed} of {_count(summary.shards, 'shard')} "
                      f"{'was' if summary.shards_resumed == 1 else 'were'} already complete")
    if compiled:
        extras.append(_count(compiled, "kernel") + " compiled (cached for later runs)")
    console.print(line + ("; " + ", ".join(extras) if extras else ""), markup=False, emoji=False)
    if verbose:
        for path in summary.skipped_files:
            console.print(f"  skipped: {_display_path(path)}", markup=False, emoji=False)
    shown = summary.failures if verbose else summary.failures[:SHOWN_FAILURES]
    for failure in shown:
        console.print(f"  failed: {failure['path']} [{failure['stage']}]: {failure['error']}", style="yellow",
                      markup=False, emoji=False)
    if len(summary.failures) > len(shown):
        console.print(f"  ... and {len(summary.failures) - len(shown)} more: see {summary.out}/failures/ "
                      "(or run again with --verbose)", markup=False, emoji=False)
    if summary.parallelism:
        console.print(f"cores: {summary.parallelism}", markup=False, emoji=False)


def _skipped_names(summary, verbose: bool) -> str:
    """`` (notes.txt, README)`` for the summary line: the skipped files, the first few of them
    and how many more (which --verbose lists one a line)."""
    if verbose:
        return " (listed below)"
    names = [_display_path(path) for path in summary.skipped_files[:SHOWN_SKIPPED]]
    more = len(summary.skipped_files) - len(names)
    return f" ({', '.join(names)}" + (f" and {more} more: --verbose lists them)" if more else ")")


# --- inspect ------------------------------------------------------------------------------------


@app.command()
@cli_errors
def inspect(
    config: Path = typer.Argument(..., metavar="CONFIG", help=CONFIG_HELP),
    size: Optional[Tuple[int, int]] = typer.Option(None, "--size", help=SIZE_HELP, metavar="H W"),
    image: Optional[Path] = typer.Option(None, "--image", metavar="PATH", help="Take the input size from this image, resized by the config as a run resizes it."),
    as_json: bool = typer.Option(False, "--json", help="Print the table as JSON."),
) -> None:
    """Show each stage's output shape, parameters, multiply-adds and receptive field. Runs no kernel."""
    pipeline = _load(config)
    shape, note = _input_shape(pipeline, size, image)
    records = pipeline.trace(shape)
    final = records[-1].out_shape
    varies = _length_varies(pipeline)
    if as_json:
        print(json.dumps({
            "input": list(shape), "image_size": list(size) if size is not None else None,
            "stages": [
                {"name": r.name, "type": r.type, "in_shape": _listify(r.in_shape), "out_shape": list(r.out_shape),
                 "params": r.params, "macs": r.macs, "receptive_field": str(r.receptive_field), "out_bytes": r.out_bytes}
                for r in records
            ],
            "kind": pipeline.kind, "output_shape": list(final), "normalize": pipeline.normalize,
            "length_depends_on_size": varies,
        }, indent=2))
        return
    if note:
        _stderr().print(note)
    _print_trace(pipeline, shape, records, varies)


def _length_varies(pipeline) -> bool:
    """Whether a descriptors config's length follows the image's size (a flatten without a fixed
    resize): then no one length can be promised."""
    from poolcli.errors import ConfigError

    if pipeline.kind != "descriptors":
        return False
    try:
        return len(pipeline.check_shapes()) > 1
    except ConfigError:  # no typical size fits; the size asked for did: nothing to compare
        return False


def _listify(shape):
    return [list(s) for s in shape] if shape and isinstance(shape[0], tuple) else list(shape)


def _input_shape(pipeline, size, image) -> tuple[tuple[int, int, int], str | None]:
    channels = pipeline.input_channels
    if size is not None and image is not None:
        raise PoolcliError("give --size or --image, not both")
    resize = pipeline.config.input.resize
    if size is not None:  # an image's size: the config resizes it as a run does
        if min(size) < 1:
            raise PoolcliError(f"--size: height and width must be >= 1, got {size[0]} {size[1]}")
        if resize is None:
            return (channels, *size), None
        target = resize.target(*size)
        note = f"a {_shape(size)} image is resized to {_shape(target)} by input.resize" if tuple(target) != tuple(size) else None
        return (channels, *target), note
    if image is not None:
        from poolcli.errors import ImageError
        from poolcli.io.images import probe_shape

        try:
            return probe_shape(image, pipeline.config.input), None
        except ImageError as exc:
            raise ImageError(f"--image {image}: {exc}") from None
    if resize is not None and resize.size is not None:
        return (channels, *resize.size), None
    side = (resize.longest or resize.shortest) if resize is not None else 512
    return (channels, side, side), f"assuming a {side}x{side} input (use --size H W or --image PATH)"


def _human(n: float, unit: str = "") -> str:
    for suffix in ("", "K", "M", "G", "T"):
        if abs(n) < 1000 or suffix == "T":
            return f"{n:.0f}{suffix}{unit}" if suffix == "" else f"{n:.1f}{suffix}{unit}"
        n /= 1000


def _bytes(n: int) -> str:
    for suffix in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or suffix == "GiB":
            return f"{n:.0f} {suffix}" if suffix == "B" else f"{n:.1f} {suffix}"
        n /= 1024


def _shape(shape) -> str:
    return "x".join(map(str, shape))


def _print_trace(pipeline, shape, records, varies: bool = False) -> None:
    from rich.table import Table

    table = Table(title=f"{pipeline.config.name or pipeline.source} on a {_shape(shape)} input", title_justify="left")
    for column in ("stage", "type", "output", "params", "MACs", "receptive field", "output size"):
        table.add_column(column, justify="right" if column in ("params", "MACs", "output size") else "left")
    for r in records:
        table.add_row(r.name, r.type, _shape(r.out_shape), _human(r.params), _human(r.macs), str(r.receptive_field), _bytes(r.out_bytes))
    table.add_section()
    table.add_row("total", "", "", _human(sum(r.params for r in records)), _human(sum(r.macs for r in records)), "", "")
    out = _stdout()
    out.print(table)
    final = records[-1].out_shape
    if pipeline.kind == "descriptors":
        norm = ", L2-normalised" if pipeline.normalize == "l2" else ""
        out.print(f"output: descriptor of length {final[0]} ({pipeline.config.output.dtype}{norm})" + (
            f" for a {_shape(shape[1:])} input: the length depends on the image's size; set input.resize: "
            "{size: [H, W]} for one length" if varies else ""))
    else:
        out.print(f"output: feature map {_shape(final)} ({pipeline.config.output.dtype})")


# --- show -----------------------------------------------------------------------------------------


@app.command()
@cli_errors
def show(
    config: Path = typer.Argument(..., metavar="CONFIG", help=CONFIG_HELP),
    image: Path = typer.Argument(..., metavar="IMAGE", help="The image to follow through the pipeline."),
    out: Path = typer.Option(..., "-o", "--out", metavar="DIR", help="Folder for the PNGs."),
    max_channels: int = typer.Option(64, "--max-channels", min=1, metavar="N", help="Channels drawn per stage."),
) -> None:
    """Draw each stage's output for one image: one PNG per stage and an overview."""
    from poolcli.show import show as draw

    pipeline = _load(config)
    with _compile_watch(_stderr(), "use of this config"):
        paths = draw(pipeline, image, out, max_channels)
    for path in paths:
        print(path)


# --- warmup, bench ----------------------------------------------------------------------------------


@app.command()
@cli_errors
def warmup(
    config: Optional[Path] = typer.Argument(None, metavar="CONFIG", help=CONFIG_HELP[:-1] + " [default: every stage type]."),
    size: Optional[Tuple[int, int]] = typer.Option(None, "--size", help=SIZE_HELP, metavar="H W"),
    no_progress: bool = typer.Option(False, "--no-progress", help="No progress line."),
) -> None:
    """Compile the kernels a config needs (or every stage's) ahead of the first run."""
    from poolcli.warmup import warmup as compile_kernels

    pipeline = _load(config) if config is not None else None
    shape = _input_shape(pipeline, size, None)[0] if pipeline is not None else None
    err = _stderr()
    status = err.status("compiling kernels", spinner="dots") if not no_progress and sys.stderr.isatty() else None

    def progress(done: int, total: int, name: str) -> None:
        if status is not None and name:
            status.update(f"compiling kernels (first time only): {name} ({done + 1}/{total})")

    if status is not None:
        status.start()
    try:
        result = compile_kernels(pipeline, shape, progress)
    finally:
        if status is not None:
            status.stop()
    what = f"the kernels of {config}" if config is not None else "every stage's kernels"
    if result.compiled:
        err.print(f"compiled {what} in {result.seconds:.1f} s ({result.compiled} compiled, {result.loaded} "
                  f"already cached) into {result.cache_dir}")
    else:
        err.print(f"{what} are ready: loaded from {result.cache_dir} in {result.seconds:.1f} s")


@app.command()
@cli_errors
def bench(
    config: Path = typer.Argument(..., metavar="CONFIG", help=CONFIG_HELP),
    size: Optional[Tuple[int, int]] = typer.Option(None, "--size", help=SIZE_HELP, metavar="H W"),
    image: Optional[Path] = typer.Option(None, "--image", metavar="PATH", help="Time on this image, its decoding included."),
    threads: Optional[int] = typer.Option(None, "--threads", metavar="N", help="Kernel threads [default: all cores]."),
    as_json: bool = typer.Option(False, "--json", help="Print the timings as JSON."),
) -> None:
    """Time each stage of a config on one input: where the time goes."""
    from poolcli.bench import bench as time_stages

    pipeline = _load(config)
    shape, note = _input_shape(pipeline, size, None) if image is None else (None, None)
    from poolcli.errors import ImageError

    try:
        with _compile_watch(_stderr(), "use of this config"):  # compiled before timing: the times are the kernels'
            result = time_stages(pipeline, shape, image, threads=threads)
    except ImageError as exc:
        raise ImageError(f"--image {image}: {exc}") from None
    rows = ([result.load] if result.load else []) + result.stages
    total = sum(r.seconds for r in rows)
    if as_json:
        print(json.dumps({
            "input": list(result.input_shape), "threads": result.threads,
            "stages": [{"name": r.name, "type": r.type, "out_shape": list(r.out_shape), "seconds": r.seconds,
                        "low_seconds": r.low, "high_seconds": r.high, "share": r.seconds / total} for r in rows],
            "pipeline_seconds": result.pipeline.seconds,
            "pipeline_low_seconds": result.pipeline.low, "pipeline_high_seconds": result.pipeline.high,
            "run_parallelism": None if result.parallelism is None else {
                "workers": result.parallelism.workers, "threads": result.parallelism.threads,
                "images_per_second_side_by_side": result.parallelism.side_by_side,
                "images_per_second_together": result.parallelism.together},
        }, indent=2))
        return
    if note:
        _stderr().print(note)
    from rich.table import Table

    table = Table(title=f"{pipeline.config.name or pipeline.source} on a {_shape(result.input_shape)} input, "
                  f"{_count(result.threads, 'kernel thread')}", title_justify="left")
    for column in ("stage", "type", "output", "time", "range", "share"):
        table.add_column(column, justify="right" if column in ("time", "range", "share") else "left")
    for r in rows:
        table.add_row(r.name, r.type, _shape(r.out_shape), _duration(r.seconds), _spread(r),
                      f"{100 * r.seconds / total:.1f}%")
    table.add_section()
    table.add_row("total", "", "", _duration(total), "", "100.0%")
    out = _stdout()
    out.print(table)
    own = result.pipeline.seconds - result.stage_total
    if own >= 0:
        out.print(f"one pipeline call: {_duration(result.pipeline.seconds)} (the stages plus {_duration(own)} of the "
                  "pipeline's own work)")
    else:  # each stage timed alone has its input in cache; in a call it follows the stage that made it
        out.print(f"one pipeline call: {_duration(result.pipeline.seconds)}, {_duration(-own)} less than its stages "
                  "timed one by one (each timed alone, and the times vary from call to call)")
    if result.parallelism is not None:
        out.print(f"run would take {result.parallelism.describe()}", markup=False)
    noisy = [r.name for r in rows if not r.steady] + ([] if result.pipeline.steady else ["the pipeline call"])
    if noisy:
        _stderr().print(f"warning: the times of {', '.join(noisy)} vary more than 2x from call to call (see range): "
                        "the machine is busy; run bench again before trusting these numbers", markup=False)


def _spread(timed) -> str:
    """The 10th to 90th percentile of a bench row's calls."""
    return f"{timed.low * 1e3:.2f}-{_duration(timed.high)}" if timed.high < 1 else f"{timed.low:.2f}-{_duration(timed.high)}"


def _duration(seconds: float) -> str:
    return f"{seconds * 1e3:.2f} ms" if seconds < 1 else f"{seconds:.2f} s"


# --- stages, validate, schema ---------------------------------------------------------------------


@app.command()
@cli_errors
def stages(stage_type: Optional[str] = typer.Argument(None, metavar="TYPE", help="A stage type to explain.")) -> None:
    """List the stage types, or explain one with a worked example."""
    from poolcli.explain import describe_stage, stage_list

    out = _stdout()
    if stage_type is None:
        for line in stage_list():
            out.print(line)
        return
    out.print(describe_stage(stage_type))


@app.command()
@cli_errors
def validate(config: Path = typer.Argument(..., metavar="CONFIG", help=CONFIG_HELP)) -> None:
    """Check a config: exit 0 if valid, else one line saying what is wrong."""
    pipeline = _load(config)
    shapes = pipeline.check_shapes()
    print(f"{config}: valid ({_count(len(pipeline.nodes), 'stage')}, writes {_writes(pipeline, shapes)})")


def _writes(pipeline, shapes) -> str:
    """What a run of ``pipeline`` writes, given :meth:`Pipeline.check_shapes`'s output shapes."""
    if pipeline.kind == "maps":
        return "feature maps" + (f" of shape {_shape(next(iter(shapes)))}" if len(shapes) == 1 else "")
    if len(shapes) == 1:
        return f"descriptors of length {next(iter(shapes))[0]}"
    return ("descriptors whose length depends on the image's size (the first image fixes a run's, and images of "
            "other sizes fail); set input.resize: {size: [H, W]} for one length")


@app.command()
@cli_errors
def configs(
    name: Optional[str] = typer.Argument(None, metavar="NAME", help="A shipped config to print, or to copy with -o."),
    out: Optional[Path] = typer.Option(None, "-o", "--out", metavar="DIR", help="Copy NAME, with the files it references, into DIR, to edit it."),
) -> None:
    """List the configs shipped with poolcli, which every command takes by name; print or copy one."""
    from poolcli import shipped

    if name is None:
        if out is not None:
            raise PoolcliError("-o needs the NAME of the config to copy")
        table = [(n, shipped.description(shipped.FOLDER / f"{n}.yaml")) for n in shipped.names()]
        width = max(len(n) for n, _ in table)
        for n, text in table:
            print(f"{n:<{width}}  {text}")
        return
    path = shipped.find_config(name)
    if len(Path(name).parts) != 1 or path.parent != shipped.FOLDER:
        raise PoolcliError(f"'{name}' is not the name of a shipped config (`poolcli configs` lists them)")
    if out is None:
        print(path.read_text(encoding="utf-8"), end="")
        return
    copied = shipped.copy_config(name, out)
    _stderr().print(f"copied {path.stem} and the files it references into {out}: edit and run {copied}", markup=False)
    print(copied)


@app.command()
@cli_errors
def schema() -> None:
    """Print the config's JSON Schema (for editor completion of YAML)."""
    from poolcli.pipeline import json_schema

    print(json.dumps(json_schema(), indent=2))


@app.command("import")
@cli_errors
def import_(
    model: Path = typer.Argument(..., metavar="MODEL", help="An ONNX file (.onnx)."),
    out: Path = typer.Option(..., "-o", "--out", metavar="DIR", help="Folder to write pipeline.yaml and weights.safetensors into."),
    until: List[str] = typer.Option([], "--until", metavar="NAME", help="Keep only what this ONNX value needs (repeatable; the last is the output)."),
) -> None:
    """Convert a trained ONNX network into a pipeline of ordinary stages and a weights file."""
    from poolcli.importer import import_onnx

    print(import_onnx(model, out, until).line())


# --- retrieval ---------------------------------------------------------------------------------------


@app.command("fit-whiten")
@cli_errors
def fit_whiten(
    out: str = typer.Argument(..., metavar="OUT", help="A descriptors run folder to learn from, or its fsspec URL."),
    path: str = typer.Option(..., "-o", "--out", metavar="FILE", help="The .npz to write (mean m, projection P), or its URL."),
    dims: Optional[int] = typer.Option(None, "--dims", min=1, metavar="N", help="Components kept [default: every direction that varies]."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Learn PCA whitening from a run's descriptors, for the whiten stage."""
    from dataclasses import asdict

    from poolcli.retrieval.whitening import fit_whitening

    summary = fit_whitening(out, path, dims)
    _stderr().print(
        f"learnt whitening from {summary.descriptors} descriptors of length {summary.dim}: {summary.dims} "
        f"components, {summary.variance:.1%} of the variance; use it on descriptors of different images "
        "than these (whitening learnt on the searched set overfits it)"
    )
    print(json.dumps(asdict(summary), indent=2) if as_json else summary.path)


@app.command()
@cli_errors
def search(
    out: str = typer.Argument(..., metavar="OUT", help="A descriptors run folder, or its fsspec URL (s3://bucket/out)."),
    queries: Optional[List[str]] = typer.Argument(None, metavar="QUERY", help="Query images (embedded with OUT's pipeline.yaml)."),
    keys: List[str] = typer.Option([], "--key", metavar="N|PATH", help="Use input N of OUT (its key), or the input at PATH, as a query; repeatable."),
    k: int = typer.Option(10, "-k", min=1, metavar="K", help="Neighbours per query."),
    exact: bool = typer.Option(False, "--exact", help="Exact search even where OUT has a faiss index."),
    skip_self: bool = typer.Option(False, "--skip-self", help="Leave out the query itself (a --key's own row, a query image's own file in OUT) and give k others [default: mark it]."),
    as_json: bool = typer.Option(False, "--json", help="Print a list with one object per query."),
) -> None:
    """Find the descriptors in OUT nearest (cosine) to query images or inputs of OUT."""
    from poolcli.retrieval.search import search as run_search

    with _compile_watch(_stderr(), "search with images of this run's config") if queries else contextlib.nullcontext():
        results, note = run_search(out, queries or [], keys, k, use_index=not exact, skip_self=skip_self)
    if note:
        _stderr().print(note, markup=False)
    if as_json:
        print(json.dumps([r.to_dict() for r in results], indent=2))
        return
    for number, result in enumerate(results):
        label = f"{result.query} (key {result.key})" if result.key is not None else result.query
        print(("\n" if number else "") + f"query: {label}")
        width = max(len(str(h.key)) for h in result.hits) if result.hits else 3
        print(f"  rank  score   {'key':>{width}}  path")
        for rank, hit in enumerate(result.hits, 1):
            print(f"  {rank:>4}  {hit.score:.4f}  {hit.key:>{width}}  {hit.path}" + ("  (the query itself)" if hit.is_query else ""))


@app.command()
@cli_errors
def index(
    out: str = typer.Argument(..., metavar="OUT", help="A descriptors run folder, or its fsspec URL (s3://bucket/out)."),
    kind: str = typer.Option("flat", "--kind", metavar="flat|hnsw", help="flat (exact inner product) or hnsw (approximate)."),
) -> None:
    """Write a faiss index of OUT's descriptors to OUT/index/ (needs poolcli[faiss])."""
    from poolcli.retrieval.index import build_index

    summary = build_index(out, kind)
    _stderr().print(f"indexed {_count(summary.rows, 'descriptor')} of length {summary.dim} ({summary.kind})", markup=False)
    print(summary.path)


@app.command()
@cli_errors
def duplicates(
    out: str = typer.Argument(..., metavar="OUT", help="A descriptors run folder, or its fsspec URL."),
    threshold: Optional[float] = typer.Option(None, "--threshold", metavar="T", help="Cosine similarity at which two inputs are duplicates [default: chosen from the scores' distribution]."),
    k: int = typer.Option(10, "-k", min=1, metavar="K", help="Neighbours looked at per input."),
    exact: bool = typer.Option(False, "--exact", help="Exact search even where OUT has a faiss index."),
    as_json: bool = typer.Option(False, "--json", help="Print the groups as JSON."),
) -> None:
    """Groups of near-duplicate inputs over a whole run, with the score of each pair."""
    from poolcli.retrieval.duplicates import find_duplicates

    report = find_duplicates(out, threshold, k, use_index=not exact)
    err = _stderr()
    if report.note:
        err.print(report.note, markup=False)
    how = f"chosen from the scores: {report.chosen}; set it with --threshold" if report.chosen else "given"
    in_groups = sum(len(g.members) for g in report.groups)
    err.print(f"threshold {report.threshold:.4f} ({how}): {_count(len(report.groups), 'group')} "
              f"of duplicates, {in_groups} of {report.rows} inputs", markup=False)
    if as_json:
        print(json.dumps(report.to_dict(), indent=2))
        return
    for number, group in enumerate(report.groups, 1):
        print(("\n" if number > 1 else "") + f"group {number}: {len(group.members)} inputs")
        for key, path in group.members:
            print(f"  {key:>6}  {path}")
        for pair in group.pairs:
            print(f"  score {pair.score:.4f}  {pair.a} ~ {pair.b}")


@app.command("eval")
@cli_errors
def eval_(
    arguments: List[str] = typer.Argument(
        ..., metavar="CONFIG... IMAGES...",
        help="One or more pipeline configs (YAML files or names of shipped configs: the first argument and every "
        "one after it that ends in .yaml or .yml or names a shipped config), then the photographs: files, folders "
        "and globs.",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON (a list of reports for several configs)."),
    no_progress: bool = typer.Option(False, "--no-progress", help="No progress bar."),
) -> None:
    """Copy-detection benchmark: find each image from transformed copies, among the images and their quadrants.

    Several configs are scored on the same images and copies and shown side by side, e.g. pooling
    heads (MAC, GeM, R-MAC) on one trunk."""
    from poolcli.retrieval.evaluate import evaluate_many
    from poolcli.shipped import find_config

    configs, images = _configs_then_images(arguments)
    configs = [find_config(config) for config in configs]
    err = _stderr()
    with (_progress(err, enabled=not no_progress and sys.stderr.isatty()) as progress,
          _compile_watch(err, "evaluation of " + ("this config" if len(configs) == 1 else "these configs"))):
        reports = evaluate_many(configs, images, progress=progress)
    if as_json:
        payload = reports[0].to_dict() if len(reports) == 1 else [r.to_dict() for r in reports]
        print(json.dumps(payload, indent=2))
        return
    _print_eval(reports)


def _configs_then_images(arguments: list[str]) -> tuple[list[str], list[str]]:
    """The first argument and every one after it that ends in .yaml/.yml or names a shipped config
    (and is no file or folder here), then the rest."""
    from poolcli.shipped import names

    shipped = set(names())

    def is_config(argument: str) -> bool:
        return argument.lower().endswith((".yaml", ".yml")) or (argument in shipped and not Path(argument).exists())

    count = 1
    while count < len(arguments) and is_config(arguments[count]):
        count += 1
    if count == len(arguments):
        raise typer.BadParameter("give the images to evaluate on after the config(s)", param_hint="IMAGES")
    return arguments[:count], arguments[count:]


def _print_eval(reports) -> None:
    from rich.table import Table

    first = reports[0]
    names = [f"{Path(r.config).parent.name}/{Path(r.config).name}" if Path(r.config).name == "pipeline.yaml"
             else Path(r.config).name for r in reports]
    if len(reports) == 1:
        title = f"{first.config}: "
        columns = [("R@1", "recall_at_1"), ("R@5", "recall_at_5"), ("mAP", "map")]
    else:
        title = ""
        columns = [("R@1", "recall_at_1"), ("mAP", "map")]
    table = Table(title=f"{title}{first.images} images, {first.database} database items "
                        "(images and their quadrants)", title_justify="left")
    table.add_column("transform")
    for name in names if len(reports) > 1 else [""]:
        for label, _ in columns:
            table.add_column(f"{name} {label}".strip(), justify="right")
    for label, _ in columns:
        table.add_column(f"baseline {label}", justify="right")
    rows = [*zip(*(r.transforms for r in reports)), None, tuple(r.overall for r in reports)]
    for row in rows:
        if row is None:
            table.add_section()
            continue
        cells = [f"{getattr(result.config, attr):.3f}" for result in row for _, attr in columns]
        cells += [f"{getattr(row[0].baseline, attr):.3f}" for _, attr in columns]
        table.add_row(row[0].transform, *cells)
    _stdout().print(table)
    print("baseline: a 16x16 grey thumbnail, compared by cosine like the config's descriptors")


# `poolcli --help` shows each command's whole first sentence, not the first 45 characters of it.
for _command in app.registered_commands:
    _command.short_help = _command.short_help or " ".join(_command.callback.__doc__.split("\n\n")[0].split())


def _argument_type(self, ctx):
    """An argument's metavar (CONFIG, INPUT...) says what it takes: no Typer type label after it
    (``INPUT <list[str]>``, ``CONFIG <path>``)."""
    return None


def _usage_name(self) -> str:
    """An argument in the usage line as Click writes it: ``CONFIG`` when required, ``[INPUT]...``
    when not (this Typer writes a required one as ``{CONFIG}``)."""
    name = self.display_name_raw if self.required else f"[{self.display_name_raw}]"
    return name + ("..." if self.nargs != 1 and not name.endswith("...") else "")


if hasattr(typer.core, "TyperArgument"):
    typer.core.TyperArgument.display_type_rich = _argument_type
    if hasattr(typer.core.TyperArgument, "_usage_display_name") and hasattr(typer.core.TyperArgument, "display_name_raw"):
        typer.core.TyperArgument._usage_display_name = _usage_name


def main() -> None:
    try:
        app(prog_name="poolcli")
    except SystemExit as exc:
        if exc.code == 130:
            # Interrupted: the line is printed and every file poolcli writes is whole or absent.
            # A worker thread may be compiling a kernel for seconds more (compiling does not
            # stop for a signal), and Python's exit would wait for it: leave at once instead.
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(130)
        raise
