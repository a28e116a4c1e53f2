"""The PyTorch side of the end-to-end benchmark: a plain PyTorch script doing a run's work.

    python benchmarks/torch_pipeline.py PLAN.json FOLDER -o OUT.npy [--threads 2] [--workers 0]

It does not import poolcli. ``PLAN.json`` (written by ``end_to_end.py`` from a poolcli config)
lists the input rules and the stages as torch operations, with their weights in ``.npy`` files
beside it. For each image of FOLDER, in sorted order, it does what a poolcli run does: Pillow
decode (at reduced size, ``Image.draft``, where the config shrinks JPEGs on load), EXIF
orientation, 8-bit / 255 as float32, the same resize (Pillow's filter on each
float channel, clipped to [0, 1]), the stages with torch.nn.functional, the L2 normalisation;
then it saves the descriptors as one float32 ``[N, D]`` array. ``--workers N`` decodes N images
ahead on threads (0, the default, is the usual sequential loop). The last line on stdout is
JSON: images, seconds of the loop, images per second.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif"}
RESAMPLE = {"nearest": Image.Resampling.NEAREST, "bilinear": Image.Resampling.BILINEAR,
            "bicubic": Image.Resampling.BICUBIC, "lanczos": Image.Resampling.LANCZOS, "box": Image.Resampling.BOX}
ACTIVATIONS = {"none": lambda t: t, "relu": torch.relu, "abs": torch.abs, "square": torch.square,
               "sigmoid": torch.sigmoid, "tanh": torch.tanh,
               "sign_sqrt": lambda t: torch.sign(t) * torch.sqrt(torch.abs(t))}


def target_size(height: int, width: int, resize: dict) -> tuple[int, int]:
    if "size" in resize:
        return tuple(resize["size"])
    side = max(height, width) if "longest" in resize else min(height, width)
    scale = resize.get("longest", resize.get("shortest")) / side
    return max(1, round(height * scale)), max(1, round(width * scale))


def load(path: Path, spec: dict) -> torch.Tensor:
    with Image.open(path) as image:
        turned = image.getexif().get(0x0112, 1) in (5, 6, 7, 8)  # EXIF orientations that swap the sides
        upright = image.size[::-1] if turned else image.size
        target = target_size(upright[1], upright[0], spec["resize"]) if spec.get("resize") else None
        if spec.get("decode") == "reduced" and target and image.format == "JPEG":
            # decoded at the largest DCT scale that leaves the target size, as poolcli's shrink on load
            image.draft("RGB", target[::-1] if not turned else target)
        image = ImageOps.exif_transpose(image).convert("RGB")
        pixels = np.asarray(image, np.float32) / np.float32(255)  # (H, W, 3)
    planes = np.moveaxis(pixels, 2, 0)
    if spec["color"] == "gray":
        planes = (np.float32(0.299) * planes[0] + np.float32(0.587) * planes[1] + np.float32(0.114) * planes[2])[None]
    if target:
        height, width = target
        if (height, width) != planes.shape[1:]:
            resample = RESAMPLE[spec["interpolation"]]
            planes = np.stack([np.asarray(Image.fromarray(np.ascontiguousarray(p)).resize((width, height), resample))
                               for p in planes])
            np.clip(planes, 0.0, 1.0, out=planes)
    x = torch.from_numpy(np.ascontiguousarray(planes, np.float32))
    if spec.get("mean") is not None:
        x = (x - torch.tensor(spec["mean"]).view(-1, 1, 1)) / torch.tensor(spec["std"]).view(-1, 1, 1)
    return x


def apply(node: dict, inputs: list[torch.Tensor], weights: dict) -> torch.Tensor:
    op, x = node["op"], inputs[0]
    if op == "conv":
        if node["channel_mean"]:
            x = x.mean(dim=1, keepdim=True)
        top, bottom, left, right = node["pads"]
        if any(node["pads"]):
            mode = "constant" if node["padding_mode"] == "zeros" else node["padding_mode"]
            x = F.pad(x, (left, right, top, bottom), mode=mode)
        groups = x.shape[1] if node["groups"] == "channels" else node["groups"]
        weight = weights[node["weight"]]
        if node.get("repeat"):  # a 2-D bank applied to each channel: depthwise
            weight = weight.repeat(x.shape[1], 1, 1, 1)
        out = F.conv2d(x, weight, weights.get(node.get("bias")), stride=node["stride"], dilation=node["dilation"],
                       groups=groups)
        return ACTIVATIONS[node["activation"]](out)
    if op == "activation":
        return ACTIVATIONS[node["fn"]](x)
    if op == "max_pool":
        return F.max_pool2d(x, node["kernel"], node["stride"], node["padding"], node["dilation"], node["ceil_mode"])
    if op == "avg_pool":
        return F.avg_pool2d(x, node["kernel"], node["stride"], node["padding"], node["ceil_mode"],
                            node["count_include_pad"], node["divisor_override"])
    if op in ("adaptive_avg_pool", "adaptive_max_pool"):
        size = tuple(s if s is not None else x.shape[2 + i] for i, s in enumerate(node["output_size"]))
        pool = F.adaptive_avg_pool2d if op == "adaptive_avg_pool" else F.adaptive_max_pool2d
        return pool(x, size)
    if op == "gem":
        return x.clamp(min=node["eps"]).pow(node["p"]).mean(dim=(-2, -1)).pow(1.0 / node["p"])
    if op == "global_avg_pool":
        return x.mean(dim=(-2, -1))
    if op == "global_max_pool":
        return x.amax(dim=(-2, -1))
    if op == "spp":
        pool = F.adaptive_max_pool2d if node["pool"] == "max" else F.adaptive_avg_pool2d
        return torch.cat([pool(x, n).flatten(1) for n in node["levels"]], dim=1)
    if op == "flatten":
        return x.flatten(1)
    if op == "concat":
        return torch.cat(inputs, dim=1)
    raise SystemExit(f"torch_pipeline: unsupported op {op!r}")


def describe(x: torch.Tensor, plan: dict, weights: dict) -> np.ndarray:
    values = {"input": x[None]}
    for node in plan["nodes"]:
        values[node["name"]] = apply(node, [values[n] for n in node["inputs"]], weights)
    y = values[plan["output"]][0]
    if plan["normalize"] == "l2":
        y = F.normalize(y, dim=0)
    return y.numpy()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="A PyTorch script doing a poolcli run's work.")
    parser.add_argument("plan", type=Path)
    parser.add_argument("folder", type=Path)
    parser.add_argument("-o", "--out", type=Path, required=True)
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument("--workers", type=int, default=0, help="decoding threads (0: decode in the loop)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    plan = json.loads(args.plan.read_text())
    weights = {name: torch.from_numpy(np.load(args.plan.parent / name)) for name in plan["arrays"]}
    files = sorted(p for p in args.folder.rglob("*") if p.suffix.lower() in SUFFIXES)
    started = time.perf_counter()
    rows = []
    with torch.no_grad():
        if args.workers:
            with ThreadPoolExecutor(args.workers) as pool:
                for x in pool.map(lambda p: load(p, plan["input"]), files):
                    rows.append(describe(x, plan, weights))
        else:
            for path in files:
                rows.append(describe(load(path, plan["input"]), plan, weights))
    np.save(args.out, np.stack(rows).astype(np.float32))
    seconds = time.perf_counter() - started
    print(json.dumps({"images": len(files), "seconds": round(seconds, 3), "images_per_s": round(len(files) / seconds, 2)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
