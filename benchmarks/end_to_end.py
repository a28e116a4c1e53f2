"""End to end: ``poolcli run`` against a PyTorch script doing the same work, in images per second.

    python benchmarks/end_to_end.py                            # configs/retrieval.yaml if present, else gabor_gem
    python benchmarks/end_to_end.py --config configs/gabor_gem.yaml --rounds 3

The input is a folder of 200 JPEG photographs of about one megapixel (1200 x 840), each a
mosaic of four random crops of the photographs in ``sample_images/`` with random flips, written
once into ``--photos`` (default: a folder in the system's temporary directory).

Each round runs, in fresh processes and alternately, ``poolcli run CONFIG PHOTOS -o OUT`` (its
default threads and decoding workers) and ``benchmarks/torch_pipeline.py`` with the config
translated into torch operations (Pillow decode, the same resize, the same stages, the same
L2-normalised output; ``torch.set_num_threads(2)``; a sequential loop, and optionally with
``--torch-workers`` decoding threads). Throughput is images / seconds of processing, start-up
excluded (poolcli's own ``seconds`` in ``--json``; the script's loop time); the wall time of
each whole process is shown too. The two outputs are compared: the largest difference between
poolcli's descriptors and torch's must be float32 rounding, or the two did not do the same work.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from common import REPO, TORCH_THREADS, machine, table, versions

PHOTOS = 200
PHOTO_SIZE = (1200, 840)  # width, height: about one megapixel


def make_photos(folder: Path, count: int = PHOTOS) -> Path:
    """``count`` JPEG mosaics of the sample photographs in ``folder`` (kept between runs)."""
    from PIL import Image

    done = folder.parent / f"{folder.name}.complete"  # beside it: poolcli would count a file inside as skipped
    if done.exists() and len(list(folder.glob("*.jpg"))) == count:
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    sources = []
    for path in sorted((REPO / "sample_images").iterdir()):
        if path.suffix.lower() in (".png", ".jpg"):
            with Image.open(path) as image:
                sources.append(image.convert("RGB"))
    rng = np.random.default_rng(2024)
    width, height = PHOTO_SIZE
    tile_w, tile_h = width // 2, height // 2
    for index in range(count):
        mosaic = Image.new("RGB", PHOTO_SIZE)
        for tile in range(4):
            source = sources[int(rng.integers(len(sources)))]
            scale = max(tile_w / source.width, tile_h / source.height) * float(rng.uniform(1.0, 1.6))
            grown = source.resize((max(tile_w, round(source.width * scale)), max(tile_h, round(source.height * scale))),
                                  Image.Resampling.BICUBIC)
            left = int(rng.integers(grown.width - tile_w + 1))
            top = int(rng.integers(grown.height - tile_h + 1))
            crop = grown.crop((left, top, left + tile_w, top + tile_h))
            if rng.random() < 0.5:
                crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            mosaic.paste(crop, ((tile % 2) * tile_w, (tile // 2) * tile_h))
        mosaic.save(folder / f"photo_{index:04d}.jpg", quality=90)
    done.write_text("ok\n")
    return folder


# --- the config as torch operations ----------------------------------------------------------------


class Unsupported(Exception):
    pass


def torch_plan(config: Path, folder: Path) -> Path:
    """Translate a poolcli config into ``plan.json`` (+ weight files) for torch_pipeline.py."""
    from poolcli.pipeline import Pipeline

    pipe = Pipeline.from_yaml(config)
    if getattr(pipe.config, "multiscale", None):
        raise Unsupported("multiscale configs")
    spec = pipe.config.input
    resize = spec.resize
    plan = {
        "input": {"color": spec.color, "interpolation": spec.interpolation, "mean": spec.mean, "std": spec.std,
                  "resize": None if resize is None else {k: v for k, v in resize.model_dump().items() if v is not None}},
        "nodes": [], "output": pipe.final.name, "normalize": pipe.normalize, "arrays": [],
    }
    in_shapes = {r.name: r.in_shape for r in pipe.trace((spec.channels, 512, 512))}

    def save(name, array):
        np.save(folder / name, np.ascontiguousarray(array, np.float32))
        plan["arrays"].append(name)
        return name

    for node in pipe.nodes:
        stage, kind = node.stage, node.stage.type
        entry = {"name": node.name, "inputs": list(node.inputs), "op": kind}
        if kind == "conv":
            channels = in_shapes[node.name][0]
            bank_each = not stage._full and stage.channels == "each"
            entry.update(channel_mean=not stage._full and stage.channels == "mean" and channels > 1,
                         repeat=bank_each, groups="channels" if bank_each else stage.groups_for(channels),
                         weight=save(f"{node.name}.weight.npy", stage.bank()[:, None] if bank_each else
                                     stage.weights(1 if not stage._full and stage.channels == "mean" else channels)),
                         bias=None if stage._bias is None else save(f"{node.name}.bias.npy", stage._bias.array),
                         pads=list(stage._pads(1 << 20, 1 << 20)), padding_mode=stage.padding_mode,
                         stride=list(stage.stride), dilation=list(stage.dilation), activation=stage.activation)
        elif kind == "activation":
            entry["fn"] = stage.fn
        elif kind in ("max_pool", "avg_pool"):
            w = stage.window
            entry.update(kernel=list(w.kernel), stride=list(w.stride), padding=list(w.padding), ceil_mode=w.ceil_mode)
            if kind == "max_pool":
                entry["dilation"] = list(w.dilation)
            else:
                entry.update(count_include_pad=stage.count_include_pad, divisor_override=stage.divisor_override)
        elif kind in ("adaptive_avg_pool", "adaptive_max_pool"):
            entry["output_size"] = list(stage.output_size)
        elif kind == "gem":
            entry.update(p=stage.p, eps=stage.eps)
        elif kind == "spp":
            entry.update(levels=list(stage.levels), pool=stage.pool)
        elif kind in ("spoc", "mac"):
            entry["op"] = {"spoc": "global_avg_pool", "mac": "global_max_pool"}[kind]
        elif kind not in ("global_avg_pool", "global_max_pool", "flatten", "concat"):
            raise Unsupported(f"stage type {kind}")
        plan["nodes"].append(entry)
    path = folder / "plan.json"
    path.write_text(json.dumps(plan, indent=1))
    return path


# --- running both ------------------------------------------------------------------------------------


def poolcli_command() -> list[str]:
    """The installed ``poolcli`` beside this interpreter (no shell shim in between)."""
    script = Path(sys.executable).parent / "poolcli"
    return [str(script)] if script.exists() else [sys.executable, "-m", "poolcli"]


def run_poolcli(config: Path, photos: Path, out: Path, extra: list[str]) -> dict:
    started = time.perf_counter()
    done = subprocess.run([*poolcli_command(), "run", str(config), str(photos), "-o", str(out), "--overwrite",
                           "--no-progress", "--json", *extra], capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"poolcli run failed ({done.returncode}): {done.stderr.strip()}")
    summary = json.loads(done.stdout)
    return {"seconds": summary["seconds"], "wall": wall, "images": summary["written"]}


def run_torch(plan: Path, photos: Path, out: Path, workers: int) -> dict:
    started = time.perf_counter()
    done = subprocess.run([sys.executable, str(Path(__file__).parent / "torch_pipeline.py"), str(plan), str(photos),
                           "-o", str(out), "--threads", str(TORCH_THREADS), "--workers", str(workers)],
                          capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"torch_pipeline.py failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    return {"seconds": summary["seconds"], "wall": wall, "images": summary["images"]}


def default_config() -> Path:
    retrieval = REPO / "configs" / "retrieval.yaml"
    return retrieval if retrieval.exists() else REPO / "configs" / "gabor_gem.yaml"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, action="append",
                        help="poolcli config (repeatable; default: configs/retrieval.yaml, else gabor_gem.yaml)")
    parser.add_argument("--photos", type=Path, default=Path(tempfile.gettempdir()) / "poolcli-bench" / "photos-200")
    parser.add_argument("--rounds", type=int, default=3, help="runs of each side (median)")
    parser.add_argument("--torch-workers", type=int, default=0,
                        help="also time the torch script with this many decoding threads")
    parser.add_argument("--poolcli-args", default="", help="extra arguments for poolcli run, e.g. '--workers 2'")
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args(argv)
    photos = make_photos(args.photos)
    print(f"# {machine()}; {versions()}; {PHOTOS} JPEGs {PHOTO_SIZE[0]}x{PHOTO_SIZE[1]} in {photos}", file=sys.stderr)
    rows = []
    for config in args.config or [default_config()]:
        work = Path(tempfile.mkdtemp(prefix="poolcli-e2e-"))
        try:
            plan = torch_plan(config, work)
        except Unsupported as exc:
            print(f"{config}: skipped, the torch script has no {exc}", file=sys.stderr)
            continue
        # Once untimed: compiles (or loads) poolcli's kernels, fills the page cache with the photos.
        run_poolcli(config, photos, work / "out", args.poolcli_args.split())
        contenders = {"poolcli": lambda: run_poolcli(config, photos, work / "out", args.poolcli_args.split()),
                      "torch": lambda: run_torch(plan, photos, work / "torch.npy", 0)}
        if args.torch_workers:
            contenders[f"torch, {args.torch_workers} decoding threads"] = \
                lambda: run_torch(plan, photos, work / "torch.npy", args.torch_workers)
        results = {name: [] for name in contenders}
        for _ in range(args.rounds):
            for name, call in contenders.items():
                results[name].append(call())
                print(f"  {config.name} {name}: {results[name][-1]}", file=sys.stderr, flush=True)
        from poolcli import read_descriptors

        ours, _ = read_descriptors(work / "out")
        difference = float(np.abs(ours - np.load(work / "torch.npy")).max())
        base = statistics.median(r["seconds"] for r in results["torch"])
        for name, runs in results.items():
            seconds = statistics.median(r["seconds"] for r in runs)
            wall = statistics.median(r["wall"] for r in runs)
            rows.append([f"{config.name}: {name}", f"{runs[0]['images'] / seconds:.1f}", f"{seconds:.2f}",
                         f"{wall:.2f}", f"{base / seconds:.2f}x"])
        rows.append([f"{config.name}: largest difference from torch", f"{difference:.1e}", "", "", ""])
        shutil.rmtree(work, ignore_errors=True)
    print(table(["run", "images/s", "seconds", "process wall s", "vs torch"], rows, args.markdown))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    sys.exit(main())
