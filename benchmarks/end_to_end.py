"""End to end: ``poolcli run`` against a PyTorch script doing the same work, in images per second.

    python benchmarks/end_to_end.py                            # configs/retrieval.yaml if present, else gabor_gem
    python benchmarks/end_to_end.py --config configs/gabor_gem.yaml --rounds 3
    python benchmarks/end_to_end.py --phone                    # only the phone-sized case

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

The phone-sized case (also run alone with ``--phone``) is ``--phone-photos`` JPEGs of 4032 x 3024
at quality 90, as a phone writes them: the sample photographs blown up, with a sensor's noise
added (which is what makes such files 3 to 5 MB), every third stored sideways with EXIF
orientation 6. It reports ``poolcli run CONFIG`` (default threads and workers) in images per
second and its peak resident memory, beside the shrink-on-load decode floor measured in the same
run, alternately: a bare loop on two threads that only decodes each file with Pillow at reduced
size (``Image.draft``, the JPEG DCT scaling) and resizes it to the config's input size.
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
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from common import REPO, TORCH_THREADS, machine, table, versions

PHOTOS = 200
PHOTO_SIZE = (1200, 840)  # width, height: about one megapixel
PHONE_PHOTOS = 96
PHONE_SIZE = (4032, 3024)  # width, height as the sensor stores it: 12 megapixels
FLOOR_THREADS = 2


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


def make_phone_photos(folder: Path, count: int = PHONE_PHOTOS) -> Path:
    """``count`` phone-sized JPEGs (quality 90) in ``folder`` (kept between runs): crops of the
    sample photographs resized to 4032 x 3024, plus Gaussian noise of a sensor (sigma 8 of 255,
    one field drawn once and shifted per photo); every third is stored turned a quarter, with
    EXIF orientation 6 saying how to show it upright."""
    from PIL import Image

    done = folder.parent / f"{folder.name}.complete"
    if done.exists() and len(list(folder.glob("*.jpg"))) == count:
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    sources = []
    for path in sorted((REPO / "sample_images").iterdir()):
        if path.suffix.lower() in (".png", ".jpg"):
            with Image.open(path) as image:
                sources.append(image.convert("RGB"))
    rng = np.random.default_rng(2025)
    width, height = PHONE_SIZE
    noise = np.round(rng.standard_normal((height + 64, width + 64, 3), dtype=np.float32) * 8).astype(np.int16)
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: turn 90 degrees clockwise to show
    for index in range(count):
        source = sources[index % len(sources)]
        sideways = index % 3 == 2
        upright_size = (height, width) if sideways else (width, height)
        aspect = upright_size[0] / upright_size[1]
        crop_w = min(source.width, round(source.height * aspect))
        crop_h = min(source.height, round(crop_w / aspect))
        left = int(rng.integers(source.width - crop_w + 1))
        top = int(rng.integers(source.height - crop_h + 1))
        picture = source.crop((left, top, left + crop_w, top + crop_h)).resize(upright_size, Image.Resampling.BICUBIC)
        if sideways:  # the sensor's landscape pixels; the viewer turns them upright
            picture = picture.transpose(Image.Transpose.ROTATE_90)
        dy, dx = (int(v) for v in rng.integers(64, size=2))
        pixels = np.asarray(picture, np.int16) + noise[dy:dy + height, dx:dx + width]
        stored = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
        stored.save(folder / f"IMG_{index:04d}.jpg", quality=90, **({"exif": exif} if sideways else {}))
    done.write_text("ok\n")
    return folder


def decode_floor(files: list[Path], size: tuple[int, int], threads: int = FLOOR_THREADS) -> float:
    """Seconds for the bare shrink-on-load loop over ``files`` on ``threads`` threads: open,
    ``Image.draft`` to the target (the JPEG DCT scaling), decode, resize to ``size`` (H, W)."""
    from PIL import Image

    height, width = size

    def one(path):
        with Image.open(path) as image:
            image.draft("RGB", (width, height))
            return image.convert("RGB").resize((width, height), Image.Resampling.BOX)

    started = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        for _ in pool.map(one, files):
            pass
    return time.perf_counter() - started


def phone_case(config: Path, photos: Path, rounds: int, extra: list[str]) -> list[list[str]]:
    """Rows of the phone-sized case: the floor and poolcli, timed alternately."""
    from poolcli.pipeline import Pipeline

    resize = Pipeline.from_yaml(config).config.input.resize
    files = sorted(photos.glob("*.jpg"))
    size = resize.target(PHONE_SIZE[1], PHONE_SIZE[0]) if resize is not None else (PHONE_SIZE[1], PHONE_SIZE[0])
    work = Path(tempfile.mkdtemp(prefix="poolcli-phone-"))
    try:
        run_poolcli(config, photos, work / "out", extra)  # untimed: kernels compiled or loaded, files cached
        floors, runs = [], []
        for _ in range(rounds):
            floors.append(decode_floor(files, size))
            runs.append(run_poolcli(config, photos, work / "out", extra))
            print(f"  phone {config.name}: floor {floors[-1]:.2f} s, poolcli {runs[-1]}", file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    floor = statistics.median(floors)
    seconds = statistics.median(r["seconds"] for r in runs)
    peak = max(r["peak_mib"] for r in runs)
    name = f"{len(files)} JPEGs {PHONE_SIZE[0]}x{PHONE_SIZE[1]}"
    return [[f"{name}: decode floor ({FLOOR_THREADS} threads)", f"{len(files) / floor:.1f}", f"{floor:.2f}", "", "1.00x"],
            [f"{name}: poolcli {config.name}", f"{runs[0]['images'] / seconds:.1f}", f"{seconds:.2f}", f"{peak:.0f}",
             f"{floor / seconds:.2f}x"]]


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
                  "decode": spec.decode,
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
    """One ``poolcli run``: its own seconds, the process's wall time and peak resident MiB."""
    started = time.perf_counter()
    process = subprocess.Popen([*poolcli_command(), "run", str(config), str(photos), "-o", str(out), "--overwrite",
                                "--no-progress", "--json", *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    stdout, stderr = process.stdout.read(), process.stderr.read()
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - started
    if process.returncode != 0:
        raise SystemExit(f"poolcli run failed ({process.returncode}): {stderr.decode().strip()}")
    summary = json.loads(stdout)
    return {"seconds": summary["seconds"], "wall": round(wall, 3), "images": summary["written"],
            "peak_mib": round(usage.ru_maxrss / 1024)}  # ru_maxrss is in KiB on Linux


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
    parser.add_argument("--phone", action="store_true", help="only the phone-sized case")
    parser.add_argument("--no-phone", action="store_true", help="no phone-sized case")
    parser.add_argument("--phone-photos", type=int, default=PHONE_PHOTOS, help="how many phone-sized JPEGs")
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args(argv)
    configs = args.config or [default_config()]
    if not args.phone:
        main_table(args, configs)
    if not args.no_phone:
        phone = make_phone_photos(Path(tempfile.gettempdir()) / "poolcli-bench" / f"phone-{args.phone_photos}",
                                  args.phone_photos)
        print(f"# {machine()}; {versions()}; phone-sized JPEGs in {phone}", file=sys.stderr)
        rows = [row for config in configs for row in phone_case(config, phone, args.rounds, args.poolcli_args.split())]
        print(table(["phone-sized photos", "images/s", "seconds", "peak RSS MiB", "vs floor"], rows, args.markdown))
    return 0


def main_table(args, configs: list[Path]) -> None:
    """The one-megapixel photos, poolcli against the torch script."""
    photos = make_photos(args.photos)
    print(f"# {machine()}; {versions()}; {PHOTOS} JPEGs {PHOTO_SIZE[0]}x{PHOTO_SIZE[1]} in {photos}", file=sys.stderr)
    rows = []
    for config in configs:
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


if __name__ == "__main__":
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    sys.exit(main())
