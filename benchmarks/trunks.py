"""Imported conv trunks: poolcli against onnxruntime and PyTorch, on one image, in the same process.

    python benchmarks/trunks.py                         # the seven trunks, a table on stdout
    python benchmarks/trunks.py --only resnet --size 224 224
    python benchmarks/trunks.py --end-to-end            # also 200 photos through ResNet-50 + GeM
    python benchmarks/trunks.py --memory                # peak memory: ResNet-50 + GeM on one 768x1024 photo
    python benchmarks/trunks.py --markdown              # the tables as Markdown (README)

Each trunk is a torchvision model with random weights (nothing can be downloaded), cut before
its classifier (``features``, or a ResNet's children up to ``layer4``), exported with
``torch.onnx.export`` (opset 17) at the benchmark's size, imported with ``poolcli import`` and
built as a pipeline. One float32 image ``(3, H, W)`` goes through poolcli (``Pipeline``),
onnxruntime (``intra_op_num_threads=2``, one inter-op thread, its threads not left spinning
after a run: they slowed whichever contender ran next) and PyTorch
(``torch.set_num_threads(2)`` right before each call), called once untimed each and then
timed alternately, ``--rounds`` rounds in a new random order per round; the table gives
medians, poolcli's speed as a ratio of each (their time / poolcli's: above 1 is faster) and
the largest difference of poolcli's output from onnxruntime's relative to the output's largest
value (poolcli promises at most 1e-3 for an imported model).

``--end-to-end`` runs ``poolcli run`` on 200 JPEG photographs (``end_to_end.make_photos``)
with the imported ResNet-50 and GeM on top (an ``include`` of the imported pipeline), against
a script doing the same with onnxruntime: the same decode and resize (``poolcli.load_image``
with the config's input section, in the same number of threads), the trunk in onnxruntime,
GeM and the L2 normalisation in NumPy. Images per second, start-up excluded on both sides.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

import numpy as np

from common import REPO, TORCH_THREADS, alternate, geometric_mean, import_torch, machine, median_ms, table, versions

TRUNKS = ("resnet18", "resnet50", "vgg16", "mobilenet_v2", "mobilenet_v3_large", "efficientnet_b0", "convnext_tiny")
OPSET = 17


def torchvision():
    """torchvision's model classes beside the CPU build of torch (its compiled operators are not needed)."""
    sys.modules.setdefault("torchvision._meta_registrations", types.ModuleType("torchvision._meta_registrations"))
    import torchvision as tv

    return tv


def trunk(name: str):
    """The torchvision model ``name`` with random weights, without its pooling and classifier."""
    import torch

    torch.manual_seed(0)
    model = getattr(torchvision().models, name)(weights=None).eval()
    if name.startswith("resnet"):
        return torch.nn.Sequential(*list(model.children())[:-2]).eval()
    return model.features.eval()


def export(model, size: tuple[int, int], path: Path) -> Path:
    import torch

    x = torch.zeros(1, 3, *size)
    with torch.no_grad():
        torch.onnx.export(model, x, str(path), opset_version=OPSET, dynamo=False,
                          input_names=["image"], output_names=["features"])
    return path


def import_model(onnx_path: Path, folder: Path) -> Path:
    """``poolcli import`` of the file; the folder of the written pipeline."""
    from poolcli.importer import import_onnx

    import_onnx(onnx_path, folder)
    return folder / "pipeline.yaml"


def ort_session(path: Path, threads: int = TORCH_THREADS):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    # Its threads spin after each run, keeping both cores busy: whichever contender ran next
    # took up to 1.8x its time (MobileNetV2: poolcli 40 -> 70 ms, torch 44 -> 78), while
    # onnxruntime's own time is the same without the spinning (20 ms either way).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def compare_trunks(names: list[str], size: tuple[int, int], rounds: int, work: Path) -> list[list[str]]:
    from poolcli.kernels import set_threads
    from poolcli.pipeline import Pipeline

    torch = import_torch()
    rows, ratios_ort, ratios_torch = [], [], []
    x = np.random.default_rng(0).standard_normal((3, *size)).astype(np.float32)
    for name in names:
        model = trunk(name)
        onnx_path = export(model, size, work / f"{name}.onnx")
        started = time.perf_counter()
        pipeline = Pipeline.from_yaml(import_model(onnx_path, work / name))
        imported = time.perf_counter() - started
        session = ort_session(onnx_path)
        feed = {session.get_inputs()[0].name: x[None]}
        tensor = torch.from_numpy(x[None])
        set_threads(TORCH_THREADS)

        def run_torch():
            with torch.no_grad():
                return model(tensor)

        contenders = {"poolcli": lambda: pipeline(x), "onnxruntime": lambda: session.run(None, feed)[0],
                      "torch": run_torch}
        ours, reference = contenders["poolcli"](), contenders["onnxruntime"]()[0]
        contenders["torch"]()
        difference = float(np.max(np.abs(ours - reference)) / max(np.max(np.abs(reference)), 1e-30))
        times = alternate(contenders, rounds, before={"torch": lambda: torch.set_num_threads(TORCH_THREADS)})
        ms = {k: median_ms(v) for k, v in times.items()}
        ratios_ort.append(ms["onnxruntime"] / ms["poolcli"])
        ratios_torch.append(ms["torch"] / ms["poolcli"])
        rows.append([name, f"{ms['poolcli']:.1f}", f"{ms['onnxruntime']:.1f}", f"{ms['torch']:.1f}",
                     f"{ratios_ort[-1]:.2f}x", f"{ratios_torch[-1]:.2f}x", f"{difference:.1e}", f"{imported:.1f}"])
        print(f"  {name}: {', '.join(f'{k} {v:.1f} ms' for k, v in ms.items())}", file=sys.stderr)
    rows.append(["geometric mean", "", "", "", f"{geometric_mean(ratios_ort):.2f}x",
                 f"{geometric_mean(ratios_torch):.2f}x", "", ""])
    return rows


# --- end to end ---------------------------------------------------------------------------------

HEAD = """\
input:
  resize: {{size: [{h}, {w}]}}
  mean: [0.485, 0.456, 0.406]   # ImageNet's, as torchvision's weights expect
  std: [0.229, 0.224, 0.225]
stages:
  - {{type: include, config: resnet50/pipeline.yaml, name: trunk}}
  - {{type: gem, p: 3}}
"""

ORT_SCRIPT = """\
import json, sys, time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
import numpy as np
import onnxruntime as ort
from poolcli import load_image
from poolcli.pipeline import Pipeline

config, model, photos, out, workers = sys.argv[1], sys.argv[2], Path(sys.argv[3]), sys.argv[4], int(sys.argv[5])
section = Pipeline.from_yaml(config).config.input
mean = np.asarray(section.mean, np.float32)[:, None, None]
std = np.asarray(section.std, np.float32)[:, None, None]
options = ort.SessionOptions()
options.intra_op_num_threads = 2
options.inter_op_num_threads = 1
session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
name = session.get_inputs()[0].name
files = sorted(str(p) for p in photos.glob("*.jpg"))
started = time.perf_counter()
rows = []
with ThreadPoolExecutor(workers) as pool:
    for x in pool.map(lambda f: load_image(f, section), files):
        maps = session.run(None, {name: ((x - mean) / std)[None]})[0][0]
        gem = np.mean(np.maximum(maps, 1e-6).astype(np.float64) ** 3, axis=(1, 2)) ** (1 / 3)
        rows.append((gem / np.linalg.norm(gem)).astype(np.float32))
seconds = time.perf_counter() - started
np.save(out, np.stack(rows))
print(json.dumps({"seconds": seconds, "images": len(rows)}))
"""


def resnet50_gem(size: tuple[int, int], work: Path) -> tuple[Path, Path, Path]:
    """ResNet-50's trunk exported at ``size`` and imported into ``work/resnet50``, a config of
    it with GeM on top, and the onnxruntime script: (the ONNX file, the config, the script)."""
    tag = f"{size[0]}x{size[1]}"
    onnx_path = export(trunk("resnet50"), size, work / f"resnet50_{tag}.onnx")
    import_model(onnx_path, work / "resnet50")
    config = work / f"resnet50_gem_{tag}.yaml"
    config.write_text(HEAD.format(h=size[0], w=size[1]))
    script = work / "ort_gem.py"
    script.write_text(ORT_SCRIPT)
    return onnx_path, config, script


def end_to_end(size: tuple[int, int], rounds: int, work: Path, photos: Path) -> list[list[str]]:
    from end_to_end import make_photos, run_poolcli

    from poolcli import read_descriptors

    make_photos(photos)
    onnx_path, config, script = resnet50_gem(size, work)
    results: dict[str, list[dict]] = {"poolcli": [], "onnxruntime": []}
    for _ in range(rounds):
        results["poolcli"].append(run_poolcli(config, photos, work / "out", []))
        started = time.perf_counter()
        done = subprocess.run([sys.executable, str(script), str(config), str(onnx_path), str(photos),
                               str(work / "ort.npy"), "2"], capture_output=True, text=True, cwd=REPO)
        if done.returncode != 0:
            raise SystemExit(f"the onnxruntime script failed: {done.stderr.strip()[-2000:]}")
        summary = json.loads(done.stdout.strip().splitlines()[-1])
        results["onnxruntime"].append({**summary, "wall": time.perf_counter() - started})
    ours, _ = read_descriptors(work / "out")
    difference = float(np.max(np.abs(ours - np.load(work / "ort.npy"))))
    rate = {k: max(r["images"] / r["seconds"] for r in v) for k, v in results.items()}
    rows = [[k, f"{rate[k]:.2f}", f"{min(r['wall'] for r in results[k]):.1f}", f"{rate[k] / rate['onnxruntime']:.2f}x"]
            for k in results]
    rows.append(["largest difference from onnxruntime", f"{difference:.1e}", "", ""])
    return rows


# --- memory ------------------------------------------------------------------------------------


def peak_memory(size: tuple[int, int], work: Path, photos: Path) -> list[list[str]]:
    """Peak resident MiB of ``poolcli run`` with the imported ResNet-50 + GeM on one photo of
    ``size`` (H, W), against the onnxruntime script on the same photo: each a fresh process,
    ``ru_maxrss`` from ``wait4`` (the interpreter and its libraries included on both sides)."""
    from end_to_end import make_photos, poolcli_command
    from PIL import Image

    make_photos(photos)
    one = work / "one-photo"
    one.mkdir(exist_ok=True)
    first = sorted(photos.glob("*.jpg"))[0]
    Image.open(first).convert("RGB").resize((size[1], size[0])).save(one / "photo.jpg", quality=95)
    onnx_path, config, script = resnet50_gem(size, work)
    ours = launched_peak_mib([*poolcli_command(), "run", str(config), str(one), "-o", str(work / "out-memory"),
                              "--overwrite", "--no-progress"])
    theirs = launched_peak_mib([sys.executable, str(script), str(config), str(onnx_path), str(one),
                                str(work / "ort-memory.npy"), "1"])
    return [["poolcli run", str(ours), f"{ours / theirs:.2f}x"],
            ["onnxruntime script", str(theirs), "1.00x"]]


LAUNCHER = """\
import os, subprocess, sys
process = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
stderr = process.stderr.read()
_, status, usage = os.wait4(process.pid, 0)
if os.waitstatus_to_exitcode(status) != 0:
    sys.exit(stderr.decode()[-2000:])
print(usage.ru_maxrss // 1024)
"""


def launched_peak_mib(command: list[str]) -> int:
    """The peak resident MiB of ``command``, started by a bare interpreter: a child's peak counts
    its parent's resident set at the fork (Linux carries it across exec), and this process holds
    torch."""
    done = subprocess.run([sys.executable, "-c", LAUNCHER, *command], capture_output=True, text=True, cwd=REPO)
    if done.returncode != 0:
        raise SystemExit(f"{command[0]} failed: {done.stderr.strip()[-2000:]}")
    return int(done.stdout.strip())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default="", help="trunks whose name contains this")
    parser.add_argument("--size", nargs=2, type=int, default=(448, 448), metavar=("H", "W"))
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--end-to-end", action="store_true", help="also 200 photos through ResNet-50 + GeM")
    parser.add_argument("--photos", type=Path, default=Path(tempfile.gettempdir()) / "poolcli-bench-photos")
    parser.add_argument("--memory", action="store_true",
                        help="only the peak memory of ResNet-50 + GeM on one 768x1024 photo, run against onnxruntime")
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args(argv)
    if import_torch() is None:
        raise SystemExit("this benchmark needs torch (pip install torch==2.13.0), onnx and onnxruntime")
    size = tuple(args.size)
    print(f"{machine()}; {versions()}; {TORCH_THREADS} threads each; one {size[0]}x{size[1]} image", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="poolcli-trunks-") as tmp:
        work = Path(tmp)
        if args.memory:
            rows = peak_memory((768, 1024), work, args.photos)
            print(table(["ResNet-50 + GeM, one 768x1024 photo", "peak MiB", "ratio"], rows, args.markdown))
            return 0
        names = [n for n in TRUNKS if args.only in n]
        rows = compare_trunks(names, size, args.rounds, work)
        print(table(["trunk", "poolcli ms", "onnxruntime ms", "torch ms", "vs onnxruntime", "vs torch",
                     "largest difference", "import s"], rows, args.markdown))
        if args.end_to_end:
            rows = end_to_end((512, 512), max(1, args.rounds // 3), work, args.photos)
            print()
            print(table(["200 photos, ResNet-50 + GeM at 512x512", "images/s", "wall s", "ratio"], rows, args.markdown))
    return 0


if __name__ == "__main__":
    sys.exit(main())
