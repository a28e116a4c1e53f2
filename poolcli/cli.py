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
    config: Path = typer.Argument(..., metavar="CONFIG", help="Pipeline config (YAML)."),
    inputs: Optional[List[str]] = typer.Argument(None, metavar="INPUT", help="Image files, folders (walked recursively), globs and tar shards (.tar: each image member an input); or fsspec URLs (s3://bucket/prefix)."),
    out: str = typer.Option(..., "-o", "--out", metavar="OUT", help="Output folder, or an fsspec URL (s3://bucket/out)."),
    files_from: Optional[str] = typer.Option(None, "--files-from", metavar="FILE", help="Also the files listed in FILE, one path or URL a line ('-': standard input); a listed file that is missing is a failure row."),
    shard_size: int = typer.Option(10_000, "--shard-size", help="Images per output shard."),
    workers: Optional[int] = typer.Option(None, "--workers", help="Threads that each decode an image and run the pipeline on it [default: cores / --threads; with --engine ray: 2 decoding threads per task]."),
    threads: Optional[int] = typer.Option(None, "--threads", help="Kernel threads per image [default: 1; with --engine ray: per task, 1]."),
    engine: _Engine = typer.Option(_Engine.local, "--engine", help="local: this process; ray: one task per shard on a Ray cluster."),
    address: Optional[str] = typer.Option(None, "--address", metavar="ADDR", help="With --engine ray: the cluster's address (host:port) [default: start a local Ray instance]."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a different run in OUT (default: resume the same run)."),
    max_pixels: int = typer.Option(89_478_485, "--max-pixels", help="Larger images are recorded as failures."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON on stdout."),
    no_progress: bool = typer.Option(False, "--no-progress", help="No progress bar."),
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
    _report_run(err, summary, compiled.count if compiled else 0)
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

        self.bar = Progress(TextColumn(self.unit), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                            console=self.console, transient=True)
        self.bar.start()
        return self

    def __call__(self, done: int, total: int) -> None:
        if self.task is None:
            self.task = self.bar.add_task(self.unit, total=total)
        self.bar.update(self.task, completed=done)

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.stop()


def _compile_watch(console):
    """Says so on stderr when kernels start compiling (a machine's first run of a config, which is
    otherwise silent for tens of seconds), and counts them."""
    from poolcli.warmup import CompileWatch

    return CompileWatch(lambda: console.print(
        "compiling kernels: the first run of this config on this machine takes tens of seconds "
        "(they are cached for later runs; `poolcli warmup CONFIG` compiles ahead)", markup=False, emoji=False))


def _report_run(console, summary, compiled: int = 0) -> None:
    plural = "" if summary.written == 1 else "s"
    if summary.kind == "descriptors":
        what = f"{summary.written} descriptor{plural}" + (f" of length {summary.dim}" if summary.dim else "")
    else:
        shape = summary.map_shape
        what = f"{summary.written} feature map{plural}" + (
            f" of shape {_shape(shape)}" if isinstance(shape, list) else " (their size follows each image's)" if shape else ""
        )
    if summary.processed == 0:
        line = f"nothing to do: {summary.out} already holds {what}"
    else:
        rate = summary.processed / summary.seconds if summary.seconds else 0.0
        line = f"wrote {what} to {summary.out} in {summary.seconds:.1f} s ({rate:.1f} images/s)"
    extras = [f"{summary.failed} failed"] if summary.failed else []
    if summary.skipped:
        extras.append(f"{summary.skipped} non-image file{'s' if summary.skipped > 1 else ''} skipped")
    if summary.shards_resumed and summary.processed:
        extras.append(f"resumed: {summary.shards_resumed} of {summary.shards} shards were already complete")
    if compiled:
        extras.append(f"{compiled} kernel{'s' if compiled > 1 else ''} compiled (cached for later runs)")
    console.print(line + ("; " + ", ".join(extras) if extras else ""), markup=False, emoji=False)
    for failure in summary.failures[:10]:
        console.print(f"  failed: {failure['path']} [{failure['stage']}]: {failure['error']}", style="yellow",
                      markup=False, emoji=False)
    if len(summary.failures) > 10:
        console.print(f"  ... and {len(summary.failures) - 10} more: see {summary.out}/failures/", markup=False,
                      emoji=False)


# --- inspect ------------------------------------------------------------------------------------


@app.command()
@cli_errors
def inspect(
    config: Path = typer.Argument(..., metavar="CONFIG", help="Pipeline config (YAML)."),
    size: Optional[Tuple[int, int]] = typer.Option(None, "--size", help="Input height and width.", metavar="H W"),
    image: Optional[Path] = typer.Option(None, "--image", help="Take the input size from this image (after resize)."),
    as_json: bool = typer.Option(False, "--json", help="Print the table as JSON."),
) -> None:
    """Show each stage's output shape, parameters, multiply-adds and receptive field. Runs no kernel."""
    pipeline = _load(config)
    shape, note = _input_shape(pipeline, size, image)
    records = pipeline.trace(shape)
    final = records[-1].out_shape
    if as_json:
        print(json.dumps({
            "input": list(shape),
            "stages": [
                {"name": r.name, "type": r.type, "in_shape": _listify(r.in_shape), "out_shape": list(r.out_shape),
                 "params": r.params, "macs": r.macs, "receptive_field": str(r.receptive_field), "out_bytes": r.out_bytes}
                for r in records
            ],
            "kind": pipeline.kind, "output_shape": list(final), "normalize": pipeline.normalize,
        }, indent=2))
        return
    if note:
        _stderr().print(note)
    _print_trace(pipeline, shape, records)


def _listify(shape):
    return [list(s) for s in shape] if shape and isinstance(shape[0], tuple) else list(shape)


def _input_shape(pipeline, size, image) -> tuple[tuple[int, int, int], str | None]:
    channels = pipeline.input_channels
    if size is not None and image is not None:
        raise PoolcliError("give --size or --image, not both")
    if size is not None:
        return (channels, *size), None
    if image is not None:
        from poolcli.io.images import probe_shape

        return probe_shape(image, pipeline.config.input), None
    resize = pipeline.config.input.resize
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


def _print_trace(pipeline, shape, records) -> None:
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
        out.print(f"output: descriptor of length {final[0]} ({pipeline.config.output.dtype}{norm})")
    else:
        out.print(f"output: feature map {_shape(final)} ({pipeline.config.output.dtype})")


# --- show -----------------------------------------------------------------------------------------


@app.command()
@cli_errors
def show(
    config: Path = typer.Argument(..., metavar="CONFIG", help="Pipeline config (YAML)."),
    image: Path = typer.Argument(..., metavar="IMAGE", help="The image to follow through the pipeline."),
    out: Path = typer.Option(..., "-o", "--out", metavar="DIR", help="Folder for the PNGs."),
    max_channels: int = typer.Option(64, "--max-channels", min=1, help="Channels drawn per stage."),
) -> None:
    """Draw each stage's output for one image: one PNG per stage and an overview."""
    from poolcli.show import show as draw

    for path in draw(_load(config), image, out, max_channels):
        print(path)


# --- warmup, bench ----------------------------------------------------------------------------------


@app.command()
@cli_errors
def warmup(
    config: Optional[Path] = typer.Argument(None, metavar="[CONFIG]", help="Pipeline config (YAML) [default: every stage type]."),
    size: Optional[Tuple[int, int]] = typer.Option(None, "--size", help="Input height and width.", metavar="H W"),
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
    config: Path = typer.Argument(..., metavar="CONFIG", help="Pipeline config (YAML)."),
    size: Optional[Tuple[int, int]] = typer.Option(None, "--size", help="Input height and width.", metavar="H W"),
    image: Optional[Path] = typer.Option(None, "--image", help="Time on this image, its decoding included."),
    threads: Optional[int] = typer.Option(None, "--threads", help="Kernel threads [default: all cores]."),
    as_json: bool = typer.Option(False, "--json", help="Print the timings as JSON."),
) -> None:
    """Time each stage of a config on one input: where the time goes."""
    from poolcli.bench import bench as time_stages

    pipeline = _load(config)
    shape, note = _input_shape(pipeline, size, None) if image is None else (None, None)
    result = time_stages(pipeline, shape, image, threads=threads)
    rows = ([result.load] if result.load else []) + result.stages
    total = sum(r.seconds for r in rows)
    if as_json:
        print(json.dumps({
            "input": list(result.input_shape), "threads": result.threads,
            "stages": [{"name": r.name, "type": r.type, "out_shape": list(r.out_shape), "seconds": r.seconds,
                        "share": r.seconds / total} for r in rows],
            "pipeline_seconds": result.pipeline.seconds,
        }, indent=2))
        return
    if note:
        _stderr().print(note)
    from rich.table import Table

    table = Table(title=f"{pipeline.config.name or pipeline.source} on a {_shape(result.input_shape)} input, "
                  f"{result.threads} kernel thread{'s' if result.threads > 1 else ''}", title_justify="left")
    for column in ("stage", "type", "output", "time", "share"):
        table.add_column(column, justify="right" if column in ("time", "share") else "left")
    for r in rows:
        table.add_row(r.name, r.type, _shape(r.out_shape), _duration(r.seconds), f"{100 * r.seconds / total:.1f}%")
    table.add_section()
    table.add_row("total", "", "", _duration(total), "100.0%")
    out = _stdout()
    out.print(table)
    out.print(f"one pipeline call: {_duration(result.pipeline.seconds)} (the stages plus "
              f"{_duration(max(0.0, result.pipeline.seconds - result.stage_total))} of the pipeline's own work)")


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
def validate(config: Path = typer.Argument(..., metavar="CONFIG", help="Pipeline config (YAML).")) -> None:
    """Check a config: exit 0 if valid, else one line saying what is wrong."""
    pipeline = _load(config)
    kinds = {"descriptors": "descriptors", "maps": "feature maps"}
    print(f"{config}: valid ({len(pipeline.nodes)} stages, writes {kinds[pipeline.kind]})")


@app.command()
@cli_errors
def schema() -> None:
    """Print the config's JSON Schema (for editor completion of YAML)."""
    from poolcli.pipeline import json_schema

    print(json.dumps(json_schema(), indent=2))


# --- retrieval ---------------------------------------------------------------------------------------


@app.command("fit-whiten")
@cli_errors
def fit_whiten(
    out: str = typer.Argument(..., metavar="OUT", help="A descriptors run folder to learn from, or its fsspec URL."),
    path: str = typer.Option(..., "-o", "--out", metavar="FILE", help="The .npz to write (mean m, projection P), or its URL."),
    dims: Optional[int] = typer.Option(None, "--dims", min=1, help="Components kept [default: every direction that varies]."),
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
    keys: List[int] = typer.Option([], "--key", metavar="N", help="Use row N of OUT (its input key) as a query; repeatable."),
    k: int = typer.Option(10, "-k", min=1, help="Neighbours per query."),
    exact: bool = typer.Option(False, "--exact", help="Exact search even where OUT has a faiss index."),
    as_json: bool = typer.Option(False, "--json", help="Print a list with one object per query."),
) -> None:
    """Find the descriptors in OUT nearest (cosine) to query images or rows."""
    from poolcli.retrieval.search import search as run_search

    results, note = run_search(out, queries or [], keys, k, use_index=not exact)
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
            print(f"  {rank:>4}  {hit.score:.4f}  {hit.key:>{width}}  {hit.path}")


@app.command()
@cli_errors
def index(
    out: str = typer.Argument(..., metavar="OUT", help="A descriptors run folder, or its fsspec URL (s3://bucket/out)."),
    kind: str = typer.Option("flat", "--kind", help="flat (exact inner product) or hnsw (approximate)."),
) -> None:
    """Write a faiss index of OUT's descriptors to OUT/index/ (needs poolcli[faiss])."""
    from poolcli.retrieval.index import build_index

    summary = build_index(out, kind)
    _stderr().print(f"indexed {summary.rows} descriptors of length {summary.dim} ({summary.kind})", markup=False)
    print(summary.path)


@app.command("eval")
@cli_errors
def eval_(
    config: Path = typer.Argument(..., metavar="CONFIG", help="Pipeline config (YAML) that writes descriptors."),
    images: List[str] = typer.Argument(..., metavar="IMAGES", help="Photographs: files, folders and globs."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
    no_progress: bool = typer.Option(False, "--no-progress", help="No progress bar."),
) -> None:
    """Copy-detection benchmark: find each image from transformed copies, among the images and their quadrants."""
    from poolcli.retrieval.evaluate import evaluate

    err = _stderr()
    with _progress(err, enabled=not no_progress and sys.stderr.isatty()) as progress:
        report = evaluate(config, images, progress=progress)
    if as_json:
        print(json.dumps(report.to_dict(), indent=2))
        return
    _print_eval(report)


def _print_eval(report) -> None:
    from rich.table import Table

    table = Table(title=f"{report.config}: {report.images} images, {report.database} database items "
                        "(images and their quadrants)", title_justify="left")
    table.add_column("transform")
    for column in ("R@1", "R@5", "mAP", "baseline R@1", "baseline R@5", "baseline mAP"):
        table.add_column(column, justify="right")
    for row in [*report.transforms, None, report.overall]:
        if row is None:
            table.add_section()
            continue
        ours, base = row.config, row.baseline
        table.add_row(row.transform, *(f"{v:.3f}" for v in (ours.recall_at_1, ours.recall_at_5, ours.map,
                                                              base.recall_at_1, base.recall_at_5, base.map)))
    _stdout().print(table)
    print("baseline: a 16x16 grey thumbnail, compared by cosine like the config's descriptors")


def main() -> None:
    app(prog_name="poolcli")
