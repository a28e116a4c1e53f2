"""poolcli's stages against PyTorch on the CPU, on the same arrays, in the same process.

    python benchmarks/kernels.py                 # every case, a table on stdout
    python benchmarks/kernels.py --only conv     # the cases whose name contains "conv"
    python benchmarks/kernels.py --markdown      # the table as Markdown (README)

For each case the stage is built from its config as a one-stage pipeline (no output
normalisation), both sides are called once untimed (compiling poolcli's kernels, warming
torch), then poolcli, PyTorch (``torch.set_num_threads(2)`` right
before each call: running a Numba parallel kernel can reset torch's thread count) and, for
pooling, a NumPy copy of the input are timed alternately, ``--rounds`` times. Right before
each timed call, of either side, the input is read once (untimed), as a pipeline's stage finds
the map the stage before it just wrote: every side starts with the same cache, instead of one
starting after the copy has pushed the input out of the cache and the next after the first
has pulled it back in. The table gives
medians, the speedup (torch time / poolcli time) and, for pooling, poolcli's time over the copy
time: the memory-bandwidth bound, since a pool must at least read its input once (a copy reads
it and writes as much again, so it is a generous bound). Every case also checks that both sides
agree (``same``), so a fast wrong kernel cannot pass unseen.

Aims (issue 5): pooling >= 3x torch and <= 2x the copy; conv >= 0.7x torch; geometric mean of
the speedups >= 2.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from common import TORCH_THREADS, alternate, geometric_mean, import_torch, machine, median_ms, table, versions


@dataclass
class Case:
    name: str
    shape: tuple[int, int, int]
    stage: dict
    torch_op: Callable  # (F, x (1, C, H, W) tensor, stage) -> tensor
    pooling: bool = True
    extra: dict = field(default_factory=dict)


def _gem(F, x, stage):
    return x.clamp(min=stage.eps).pow(stage.p).mean(dim=(-2, -1)).pow(1.0 / stage.p)


def _spp(F, x, stage):
    import torch

    pool = F.adaptive_max_pool2d if stage.pool == "max" else F.adaptive_avg_pool2d
    return torch.cat([pool(x, n).flatten(1) for n in stage.levels], dim=1)


def _fractional(F, x, stage):
    import torch

    u = stage.channel_samples(x.shape[1])  # (C, 2) = (u_h, u_w); torch wants (u_w, u_h)
    samples = torch.from_numpy(np.ascontiguousarray(u[:, ::-1]))[None]
    out_hw = stage.out_hw(*x.shape[2:])
    return F.fractional_max_pool2d(x, stage.kernel_size, output_size=out_hw, _random_samples=samples)


def _conv(F, x, stage):
    import torch

    channels = x.shape[1]
    weight = torch.from_numpy(np.array(stage.weights(channels)))
    if stage.channels == "mean" and not stage._full:
        x = x.mean(dim=1, keepdim=True)
    return F.conv2d(x, weight, stride=stage.stride, padding=stage.padding, dilation=stage.dilation,
                    groups=stage.groups_for(x.shape[1]))


POOL_SHAPE = (64, 256, 256)

CASES = [
    Case("max 2x2/2", POOL_SHAPE, {"type": "max_pool", "kernel_size": 2}, lambda F, x, s: F.max_pool2d(x, 2)),
    Case("max 3x3/2 pad 1", POOL_SHAPE, {"type": "max_pool", "kernel_size": 3, "stride": 2, "padding": 1},
         lambda F, x, s: F.max_pool2d(x, 3, 2, 1)),
    Case("avg 2x2/2", POOL_SHAPE, {"type": "avg_pool", "kernel_size": 2}, lambda F, x, s: F.avg_pool2d(x, 2)),
    Case("avg 3x3/1 pad 1", POOL_SHAPE, {"type": "avg_pool", "kernel_size": 3, "stride": 1, "padding": 1},
         lambda F, x, s: F.avg_pool2d(x, 3, 1, 1)),
    Case("lp 2x2", POOL_SHAPE, {"type": "lp_pool", "p": 2, "kernel_size": 2}, lambda F, x, s: F.lp_pool2d(x, 2, 2)),
    Case("adaptive max 7x7", POOL_SHAPE, {"type": "adaptive_max_pool", "output_size": 7},
         lambda F, x, s: F.adaptive_max_pool2d(x, 7)),
    Case("adaptive avg 7x7", POOL_SHAPE, {"type": "adaptive_avg_pool", "output_size": 7},
         lambda F, x, s: F.adaptive_avg_pool2d(x, 7)),
    Case("gem p=3 512x32x32", (512, 32, 32), {"type": "gem", "p": 3}, _gem),
    Case("spp 1,2,4 256x64x64", (256, 64, 64), {"type": "spp", "levels": [1, 2, 4]}, _spp),
    Case("fractional max 2x2 ratio 0.7", POOL_SHAPE,
         {"type": "fractional_max_pool", "kernel_size": 2, "output_ratio": 0.7, "seed": 0}, _fractional),
    Case("conv 3->16 3x3 512x512", (3, 512, 512),
         {"type": "conv", "filters": "random", "out_channels": 16, "kernel_size": 3, "padding": 1}, _conv, pooling=False),
    Case("conv 64->64 3x3 128x128", (64, 128, 128),
         {"type": "conv", "filters": "random", "out_channels": 64, "kernel_size": 3, "padding": 1}, _conv, pooling=False),
    Case("conv 1->24 15x15 gabor 512x512", (1, 512, 512),
         {"type": "conv", "filters": "gabor", "orientations": 12, "wavelengths": [4, 8], "kernel_size": 15,
          "padding": 7}, _conv, pooling=False),
    Case("conv 3->64 7x7/2 512x512", (3, 512, 512),
         {"type": "conv", "filters": "random", "out_channels": 64, "kernel_size": 7, "stride": 2, "padding": 3},
         _conv, pooling=False),
]


def build(config: dict):
    """A one-stage pipeline without output normalisation: what a run calls, small stages on one
    thread included (Pipeline runs a stage of little work on one thread)."""
    from poolcli.pipeline import Pipeline

    return Pipeline.from_config({"stages": [config], "output": {"normalize": "none"}})


def agree(ours: np.ndarray, ref: np.ndarray) -> bool:
    ref = np.asarray(ref, np.float32).reshape(ours.shape) if ref.size == ours.size else ref
    if ours.shape != ref.shape:
        return False
    scale = max(1.0, float(np.nanmax(np.abs(ref))) if ref.size else 1.0)
    return bool(np.allclose(ours, ref, rtol=1e-4, atol=1e-5 * scale, equal_nan=True))


def run_case(case: Case, torch, rounds: int, budget_s: float) -> dict:
    x = np.random.default_rng(0).standard_normal(case.shape).astype(np.float32)
    pipeline = build(case.stage)
    stage = pipeline.nodes[0].stage
    contenders = {"poolcli": lambda: pipeline(x)}
    result = {"case": case.name, "pooling": case.pooling}
    if torch is not None:
        import torch.nn.functional as F

        xt = torch.from_numpy(x)[None]
        with torch.no_grad():
            torch.set_num_threads(TORCH_THREADS)
            ref = case.torch_op(F, xt, stage)[0].numpy()
        result["same"] = agree(pipeline(x), ref)

        def torch_call():
            with torch.no_grad():
                return case.torch_op(F, xt, stage)

        contenders["torch"] = torch_call
    if case.pooling:
        copy = np.empty_like(x)
        contenders["copy"] = lambda: np.copyto(copy, x)

    def prime():
        x.sum()  # read the input: the same cache for every side
        if torch is not None:
            torch.set_num_threads(TORCH_THREADS)

    before = {name: prime for name in contenders}
    for call in contenders.values():  # untimed: compile, warm caches
        call()
    times = alternate(contenders, rounds, before, budget_s)
    result.update({name: median_ms(samples) for name, samples in times.items()})
    result["rounds"] = len(times["poolcli"])
    return result


def report(results: list[dict], markdown: bool) -> str:
    rows = []
    speedups = []
    for r in results:
        speedup = r["torch"] / r["poolcli"] if "torch" in r else None
        if speedup:
            speedups.append(speedup)
        rows.append([
            r["case"], f"{r['poolcli']:.2f}", f"{r['torch']:.2f}" if "torch" in r else "-",
            f"{speedup:.2f}x" if speedup else "-",
            f"{r['poolcli'] / r['copy']:.2f}x" if "copy" in r else "",
            {True: "yes", False: "NO"}.get(r.get("same"), "-"),
        ])
    headers = ["case", "poolcli ms", "torch ms", "speedup", "vs copy", "same"]
    text = table(headers, rows, markdown)
    if speedups:
        text += f"\n\ngeometric mean speedup over {len(speedups)} cases: {geometric_mean(speedups):.2f}x"
    return text


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", help="run the cases whose name contains this text")
    parser.add_argument("--rounds", type=int, default=21, help="timed calls of each side per case (median)")
    parser.add_argument("--budget", type=float, default=20.0, help="seconds per case before fewer rounds suffice")
    parser.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    args = parser.parse_args(argv)
    torch = import_torch()
    cases = [c for c in CASES if not args.only or args.only in c.name]
    print(f"# {machine()}; {versions()}; torch threads {TORCH_THREADS}", file=sys.stderr)
    results = []
    for case in cases:
        results.append(run_case(case, torch, args.rounds, args.budget))
        r = results[-1]
        print(f"  {case.name}: poolcli {r['poolcli']:.2f} ms" + (f", torch {r['torch']:.2f} ms" if "torch" in r else ""),
              file=sys.stderr, flush=True)
    print(report(results, args.markdown))
    return 0 if all(r.get("same", True) for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
