"""Check what ``poolcli import`` promises by doing it as a new user would (a script, not a
test; minutes, not seconds):

1. A torchvision ResNet-50 trunk exported at 512x512 (the README's three lines of torch),
   ``poolcli import``-ed, GeM appended by a config of the user's own that includes the
   imported pipeline (ImageNet's mean and std), ``poolcli run`` on ``sample_images/``: its
   descriptors against onnxruntime's features of the same input plus GeM.
2. Every family the importer reads (torchvision ResNet-18/50, VGG16, MobileNetV2,
   MobileNetV3-Large, EfficientNet-B0, ConvNeXt-Tiny; the YOLOv8 twin with C2f, SPPF and its
   Resize/Concat neck; a paddle2onnx-style graph with its ConvTranspose/Resize/Concat neck;
   the paddle2onnx file in tests/data; Ultralytics' YOLOv8n where ultralytics is installed),
   exported with dynamic height and width, imported, GeM appended by editing the generated
   pipeline.yaml, run on ``sample_images/`` at two input sizes (one not square): the same
   comparison.

Weights are random (``--pretrained`` downloads torchvision's ImageNet weights for the
ResNet-50), BatchNorm statistics too. Prints, for each, the largest relative difference over
the images: max |ours - onnxruntime's| / max |onnxruntime's| of each descriptor (SPEC: at most
1e-3). Exit status 1 when one is over.

    python tests/verify_import.py [--work DIR] [--only resnet50_512,vgg16,...] [--opset 17]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "sample_images"
MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
SIZES = ((224, 224), (192, 288))
LIMIT = 1e-3


def poolcli(*args, cwd) -> str:
    result = subprocess.run([sys.executable, "-m", "poolcli", *map(str, args)], capture_output=True, text=True,
                            cwd=cwd)
    if result.returncode != 0:
        raise SystemExit(f"poolcli {' '.join(map(str, args))} failed: {result.stderr.strip()}")
    return result.stdout + result.stderr


def gem(features, p=3.0):
    import numpy as np

    f = np.maximum(features.astype(np.float64), 1e-6)
    y = np.mean(f ** p, axis=(1, 2)) ** (1 / p)
    return y / max(np.linalg.norm(y), 1e-12)


def compare(onnx_bytes: bytes, out: Path, size, standardise: bool) -> tuple[float, int]:
    """(largest relative difference, images) of the run in ``out`` against onnxruntime + GeM."""
    import numpy as np

    import poolcli
    from tests import onnx_models as M

    vectors, meta = poolcli.read_descriptors(out)
    config = poolcli.Pipeline.from_config({"input": {"resize": {"size": list(size)}}, "stages": [{"type": "mac"}]})
    worst = 0.0
    for vector, path in zip(vectors, meta.column("path").to_pylist()):
        x = poolcli.load_image(path, config.config.input)
        if standardise:
            x = (x - np.float32(MEAN).reshape(3, 1, 1)) / np.float32(STD).reshape(3, 1, 1)
        theirs = gem(M.run_onnxruntime(onnx_bytes, x.astype(np.float32)))
        worst = max(worst, float(np.abs(vector.astype(np.float64) - theirs).max() / np.abs(theirs).max()))
    return worst, len(vectors)


def resnet50_512(work: Path, opset: int, pretrained: bool) -> list[tuple]:
    """Done-when 1: the README's way, a config of one's own on top of the imported trunk."""
    import torch
    import yaml

    from tests import onnx_models as M

    tv = M.torchvision()
    torch.manual_seed(0)
    model = tv.models.resnet50(weights="IMAGENET1K_V2" if pretrained else None).eval()
    trunk = torch.nn.Sequential(*list(model.children())[:-2])
    if not pretrained:
        M.randomize_batch_norms(trunk)
    folder = work / "resnet50_512"
    folder.mkdir(parents=True, exist_ok=True)
    onnx_path = folder / "resnet50.onnx"
    torch.onnx.export(trunk.eval(), torch.zeros(1, 3, 512, 512), str(onnx_path), opset_version=opset, dynamo=False)
    line = poolcli("import", onnx_path.name, "-o", "resnet50", cwd=folder).strip()
    config = {"input": {"resize": {"size": [512, 512]}, "mean": MEAN, "std": STD},
              "stages": [{"type": "include", "config": "resnet50/pipeline.yaml", "name": "trunk"},
                         {"type": "gem", "p": 3}]}
    (folder / "resnet50_gem.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    start = time.perf_counter()
    poolcli("run", "resnet50_gem.yaml", SAMPLES, "-o", "out", "--overwrite", cwd=folder)
    seconds = time.perf_counter() - start
    worst, n = compare(onnx_path.read_bytes(), folder / "out", (512, 512), standardise=True)
    return [("resnet50 at 512x512 (include + GeM)", "512x512", n, worst, f"{line.split(': ', 1)[-1].split(',')[0]}; "
             f"run {seconds:.1f} s")]


def families(opset: int):
    """name -> a function giving the ONNX bytes (dynamic height and width) and whether the
    model wants ImageNet's mean and std."""
    import numpy as np

    from tests import onnx_models as M
    from tests import test_import_torch as T
    from tests.test_import_paddle import MODEL, paddle_style

    def torch_family(name):
        def make():
            return T.exported(name, opset), True
        return make

    table = {name: torch_family(name) for name in T.FAMILIES}
    table["paddle_style"] = lambda: (paddle_style(opset, np.random.default_rng(0)).SerializeToString(), False)
    table["paddle2onnx_file"] = lambda: (MODEL.read_bytes(), False)

    def ultralytics_yolov8n():
        import os

        os.environ.setdefault("YOLO_OFFLINE", "1")
        import torch
        import ultralytics

        torch.manual_seed(0)
        model = ultralytics.YOLO("yolov8n.yaml").model.eval()
        return M.export_torch(model, (3, 64, 64), opset, output_names=("output0",)), False

    try:
        import ultralytics  # noqa: F401

        table["ultralytics_yolov8n"] = ultralytics_yolov8n
    except ImportError:
        pass
    return table


def family(work: Path, name: str, make, sizes) -> list[tuple]:
    """Done-when 2 for one family: GeM appended to the generated file, a run at each size."""
    import onnx

    folder = work / name
    folder.mkdir(parents=True, exist_ok=True)
    data, imagenet = make()
    if name == "ultralytics_yolov8n":  # through its neck: the three maps its Detect head reads
        graph = onnx.load_from_string(data).graph
        until = [n.input[0] for n in graph.node if n.op_type == "Conv" and n.name.endswith("cv2.0.0/conv/Conv")]
    else:
        until = []
    (folder / "model.onnx").write_bytes(data)
    args = [a for u in until for a in ("--until", u)]
    poolcli("import", "model.onnx", "-o", "net", *args, cwd=folder)
    import yaml

    generated = yaml.safe_load((folder / "net" / "pipeline.yaml").read_text())
    fixed = generated["input"].get("resize")
    rows = []
    for size in [tuple(fixed["size"])] if fixed else sizes:
        # the user's edit: their input size (and ImageNet's mean and std), GeM after the last stage
        config = dict(generated)
        config["input"] = {"color": "rgb", "resize": {"size": list(size)}, **({"mean": MEAN, "std": STD} if imagenet else {})}
        config["stages"] = [*generated["stages"], {"type": "gem", "p": 3}]
        config["output"] = {"normalize": "l2"}
        (folder / "net" / "gem.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        out = folder / f"out_{size[0]}x{size[1]}"
        start = time.perf_counter()
        poolcli("run", "net/gem.yaml", SAMPLES, "-o", out, "--overwrite", cwd=folder)
        seconds = time.perf_counter() - start
        worst, n = compare(_with_outputs(data, until), out, size, standardise=imagenet)
        rows.append((name, f"{size[0]}x{size[1]}", n, worst, f"run {seconds:.1f} s"))
    return rows


def _with_outputs(data: bytes, until) -> bytes:
    """The model with only the last ``until`` value as its output (what the pipeline ends with)."""
    if not until:
        return data
    import onnx

    model = onnx.load_from_string(data)
    del model.graph.output[:]
    model.graph.output.append(onnx.helper.make_empty_tensor_value_info(until[-1]))
    return model.SerializeToString()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, help="folder for the models and runs [default: a temporary one]")
    parser.add_argument("--only", help="comma-separated names (resnet50_512 and the families)")
    parser.add_argument("--opset", type=int, default=17)
    parser.add_argument("--pretrained", action="store_true", help="torchvision's ImageNet weights for the ResNet-50")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    work = args.work or Path(tempfile.mkdtemp(prefix="verify_import-"))
    only = set(args.only.split(",")) if args.only else None
    rows = []
    if only is None or "resnet50_512" in only:
        rows += resnet50_512(work, args.opset, args.pretrained)
        print(*_format(rows[-1]), sep="  ", flush=True)
    for name, make in families(args.opset).items():
        if only is None or name in only:
            for row in family(work, name, make, SIZES):
                rows.append(row)
                print(*_format(row), sep="  ", flush=True)
    worst = max(r[3] for r in rows)
    if args.json:
        print(json.dumps([dict(zip(("what", "size", "images", "max_relative_difference", "note"), r)) for r in rows],
                         indent=2))
    print(f"largest relative difference: {worst:.3g} (limit {LIMIT:g}); work folder {work}")
    return 0 if worst <= LIMIT else 1


def _format(row):
    name, size, n, worst, note = row
    return f"{name:<40}", f"{size:>8}", f"{n:>3} images", f"max rel diff {worst:.2e}", note


if __name__ == "__main__":
    sys.exit(main())
