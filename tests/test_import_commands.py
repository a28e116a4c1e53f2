"""Every command on an imported network, as a user runs them: a torchvision ResNet-18 trunk
(random weights, random BatchNorm statistics) exported with dynamic height and width,
``poolcli import``-ed, and pooling heads put on it by configs of their own that include the
generated pipeline (ImageNet's mean and std). Real ``python -m poolcli`` processes throughout:
``inspect`` (the whole net: shapes, parameters, multiply-adds, receptive field, each checked
against torch), ``show``, ``bench``, ``warmup``, ``run`` (local, and on Ray where it is
installed), ``multiscale``, ``fit-whiten`` with the ``whiten`` stage, ``search`` and ``eval``
of three heads in one table. What ``run`` writes is compared with onnxruntime's features of the
same input plus the head computed here in NumPy."""

import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import yaml

from tests import onnx_models as M

torch = M.torch()
M.onnx()
M.ort()

SAMPLES = Path(__file__).resolve().parent.parent / "sample_images"
SIZE = (64, 96)  # input.resize of the heads' configs: (H, W)
MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
IMAGES = ["astronaut.jpg", "chelsea.png", "coins.png", "horse.png"]
OTHERS = ["camera.png", "cell.png", "clock_motion.png", "hubble_deep_field.jpg", "ihc.jpg", "text.png"]
HEADS = {"mac": {"type": "mac"}, "spoc": {"type": "spoc"}, "gem": {"type": "gem", "p": 3}}
#: run's descriptors against onnxruntime's features plus the head: float32 rounding, far
#: inside SPEC's 1e-3 of the largest value.
TOLERANCE = 1e-4


def poolcli(*args, cwd, ok=True, timeout=600):
    result = subprocess.run([sys.executable, "-m", "poolcli", *map(str, args)], capture_output=True, text=True,
                            cwd=cwd, timeout=timeout)
    if ok:
        assert result.returncode == 0, f"poolcli {' '.join(map(str, args))}: {result.stderr}"
    return result


@dataclass
class Net:
    root: Path
    trunk: object  # the torch module
    onnx_bytes: bytes


def head_config(root: Path, name: str, stages: list, **top) -> Path:
    """``root/NAME.yaml``: the imported trunk by include, then ``stages``."""
    path = root / f"{name}.yaml"
    config = {"input": {"resize": {"size": list(SIZE)}, "mean": MEAN, "std": STD},
              "stages": [{"type": "include", "config": "trunk/pipeline.yaml", "name": "trunk"}, *stages], **top}
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def net(tmp_path_factory):
    root = tmp_path_factory.mktemp("imported")
    tv = M.torchvision()
    torch.manual_seed(0)
    trunk = torch.nn.Sequential(*list(tv.models.resnet18(weights=None).children())[:-2])
    trunk = M.randomize_batch_norms(trunk).eval()
    onnx_bytes = M.export_torch(trunk, (3, *SIZE), 17)  # dynamic H and W: multiscale runs other sizes
    (root / "resnet18.onnx").write_bytes(onnx_bytes)
    result = poolcli("import", "resnet18.onnx", "-o", "trunk", cwd=root)
    assert "resnet18.onnx (opset 17)" in result.stdout
    for name, stage in HEADS.items():
        head_config(root, name, [stage])
    for folder, names in (("images", IMAGES), ("others", OTHERS)):
        (root / folder).mkdir()
        for name in names:
            shutil.copy(SAMPLES / name, root / folder / name)
    return Net(root, trunk, onnx_bytes)


# --- the reference: onnxruntime's features, the head in NumPy -----------------------------------------


def standardised(path) -> np.ndarray:
    """The image as a run feeds it to the first stage: decoded, resized, ImageNet-standardised."""
    import poolcli

    config = poolcli.Pipeline.from_config({"input": {"resize": {"size": list(SIZE)}}, "stages": [{"type": "mac"}]})
    x = poolcli.load_image(path, config.config.input)
    return ((x - np.float32(MEAN).reshape(3, 1, 1)) / np.float32(STD).reshape(3, 1, 1)).astype(np.float32)


def pooled(features: np.ndarray, head: str) -> np.ndarray:
    f = features.astype(np.float64)
    if head == "mac":
        return f.max(axis=(1, 2))
    if head == "spoc":
        return f.mean(axis=(1, 2))
    return np.mean(np.maximum(f, 1e-6) ** 3, axis=(1, 2)) ** (1 / 3)


def l2(y: np.ndarray) -> np.ndarray:
    return y / max(np.linalg.norm(y), 1e-12)


def reference(net: Net, path, head: str = "gem", scales=(1.0,)) -> np.ndarray:
    """onnxruntime's trunk plus ``head``, L2-normalised; with several scales, the input resized
    by each (bilinear, torch interpolate) and the descriptors combined by the power mean with
    GeM's p (cnnimageretrieval-pytorch's extract_ms), normalised again."""
    x = standardised(path)
    power = 3.0 if head == "gem" else 1.0
    total = 0.0
    for scale in scales:
        xs = x
        if scale != 1:
            xs = torch.nn.functional.interpolate(torch.from_numpy(x)[None], scale_factor=scale, mode="bilinear",
                                                 align_corners=False)[0].numpy()
        y = l2(pooled(M.run_onnxruntime(net.onnx_bytes, xs), head))
        total = total + np.sign(y) * np.abs(y) ** power
    y = total / len(scales)
    return l2(np.sign(y) * np.abs(y) ** (1 / power))


def relative_difference(ours: np.ndarray, theirs: np.ndarray) -> float:
    assert ours.shape == theirs.shape
    return float(np.abs(ours.astype(np.float64) - theirs).max() / np.abs(theirs).max())


def descriptors(out: Path):
    import poolcli

    vectors, meta = poolcli.read_descriptors(out)
    return vectors, meta.column("path").to_pylist()


def assert_matches_reference(net: Net, out: Path, head="gem", scales=(1.0,), count=len(IMAGES)):
    vectors, paths = descriptors(out)
    assert len(vectors) == count
    for vector, path in zip(vectors, paths):
        difference = relative_difference(vector, reference(net, path, head, scales))
        assert difference <= TOLERANCE, f"{Path(path).name}: relative difference {difference:.3g}"


# --- the torch side of inspect's numbers -------------------------------------------------------------


def torch_convs(trunk, size):
    """(output shape, multiply-adds) of every Conv2d of ``trunk`` on a (3, H, W) input."""
    records = []

    def hook(module, inputs, output):
        c, h, w = output.shape[1:]
        kh, kw = module.kernel_size
        records.append(((c, h, w), c * h * w * module.in_channels // module.groups * kh * kw))

    handles = [m.register_forward_hook(hook) for m in trunk.modules() if isinstance(m, torch.nn.Conv2d)]
    try:
        with torch.no_grad():
            trunk(torch.zeros(1, 3, *size))
    finally:
        for handle in handles:
            handle.remove()
    return records


def resnet_receptive_field(trunk) -> int:
    """The receptive field of a ResNet trunk's output along its longest path: the stem's 7x7
    conv and 3x3 max pool, then each basic block's two 3x3 convs (the shortcut is shorter):
    ``r += (k - 1) * jump; jump *= stride``."""
    layers = [(7, 2), (3, 2)]
    for stage in list(trunk.children())[4:]:
        for block in stage:
            layers += [(block.conv1.kernel_size[0], block.conv1.stride[0]), (block.conv2.kernel_size[0], 1)]
    field, jump = 1, 1
    for kernel, stride in layers:
        field, jump = field + (kernel - 1) * jump, jump * stride
    return field


# --- the commands ------------------------------------------------------------------------------------


def test_inspect_shows_the_whole_net(net):
    report = json.loads(poolcli("inspect", "gem.yaml", "--json", cwd=net.root).stdout)
    stages = report["stages"]
    convs = [s for s in stages if s["type"] == "conv"]
    expected = torch_convs(net.trunk, SIZE)
    assert len(convs) == len(expected) == 20
    assert sorted((tuple(s["out_shape"]), s["macs"]) for s in convs) == sorted(expected)
    # every BatchNorm folded: each conv holds its weights and one bias per output channel
    weights = sum(m.weight.numel() + m.out_channels for m in net.trunk.modules() if isinstance(m, torch.nn.Conv2d))
    assert sum(s["params"] for s in stages) == weights
    trunk = next(s for s in stages if s["name"] == "trunk")
    field = resnet_receptive_field(net.trunk)
    assert field == 435 and trunk["receptive_field"] == f"{field}x{field}"
    assert tuple(trunk["out_shape"]) == (512, 2, 3) and tuple(stages[-1]["out_shape"]) == (512,)
    assert [s["type"] for s in stages].count("max_pool") == 1 and stages[-1]["type"] == "gem"
    table = poolcli("inspect", "gem.yaml", cwd=net.root).stdout
    assert "435x435" in table and "total" in table and "descriptor of length 512" in table


def test_show_draws_every_stage_of_the_trained_net(net, tmp_path):
    from PIL import Image

    poolcli("show", "gem.yaml", net.root / "images" / "astronaut.jpg", "-o", tmp_path / "show", cwd=net.root)
    stages = json.loads(poolcli("inspect", "gem.yaml", "--json", cwd=net.root).stdout)["stages"]
    pngs = sorted(p.name for p in (tmp_path / "show").iterdir())
    assert len(pngs) == len(stages) + 2 and "overview.png" in pngs and pngs[0] == "00_input.png"
    assert any(name.endswith("_trunk.png") for name in pngs)
    for name in pngs:
        with Image.open(tmp_path / "show" / name) as image:
            pixels = np.asarray(image.convert("L"))
        assert pixels.min() < pixels.max(), name  # something drawn


def test_bench_and_warmup(net):
    poolcli("warmup", "gem.yaml", "--no-progress", cwd=net.root)
    report = json.loads(poolcli("bench", "gem.yaml", "--json", cwd=net.root).stdout)
    inspected = json.loads(poolcli("inspect", "gem.yaml", "--json", cwd=net.root).stdout)["stages"]
    assert [s["name"] for s in report["stages"]] == [s["name"] for s in inspected]
    assert all(s["seconds"] > 0 for s in report["stages"])  # each stage ran
    assert report["input"] == [3, *SIZE]


@pytest.mark.parametrize("head", list(HEADS))
def test_run_matches_onnxruntime_plus_the_head(net, tmp_path, head):
    poolcli("run", f"{head}.yaml", "images", "-o", tmp_path / "out", cwd=net.root)
    assert_matches_reference(net, tmp_path / "out", head)
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["dim"] == 512 and manifest["weights_sha256"]


def test_run_on_ray_writes_what_the_local_run_writes(net, tmp_path):
    pytest.importorskip("ray")
    poolcli("run", "gem.yaml", "images", "-o", tmp_path / "local", cwd=net.root)
    poolcli("run", "gem.yaml", "images", "-o", tmp_path / "ray", "--engine", "ray", "--shard-size", "2", cwd=net.root)
    local, local_paths = descriptors(tmp_path / "local")
    ray, ray_paths = descriptors(tmp_path / "ray")
    assert ray_paths == local_paths and np.array_equal(ray, local)
    assert_matches_reference(net, tmp_path / "ray")


def test_multiscale(net, tmp_path):
    head_config(net.root, "gem_ms", [HEADS["gem"]], multiscale=[1, 0.7071])
    report = json.loads(poolcli("inspect", "gem_ms.yaml", "--json", cwd=net.root).stdout)
    assert any(s["name"] == "trunk@0.7071" for s in report["stages"]) and report["stages"][-1]["type"] == "multiscale"
    poolcli("run", "gem_ms.yaml", "images", "-o", tmp_path / "out", cwd=net.root)
    assert_matches_reference(net, tmp_path / "out", "gem", scales=(1.0, 0.7071))


def test_whitening_learnt_on_other_images(net, tmp_path):
    poolcli("run", "gem.yaml", "others", "-o", tmp_path / "learn", cwd=net.root)
    poolcli("fit-whiten", tmp_path / "learn", "-o", net.root / "whiten.npz", "--dims", "4", cwd=net.root)
    head_config(net.root, "gem_whiten", [HEADS["gem"], {"type": "whiten", "file": "whiten.npz", "dims": 4}])
    poolcli("run", "gem_whiten.yaml", "images", "-o", tmp_path / "out", cwd=net.root)
    learnt = np.load(net.root / "whiten.npz")
    m, P = learnt["m"].reshape(-1), learnt["P"][:4]
    vectors, paths = descriptors(tmp_path / "out")
    assert vectors.shape == (len(IMAGES), 4)
    for vector, path in zip(vectors, paths):
        y = P @ (reference(net, path) - m)
        expected = l2(y / (np.linalg.norm(y) + 1e-6))
        assert relative_difference(vector, expected) <= 1e-3, Path(path).name  # whitening amplifies small differences


def test_search_ranks_as_the_reference_descriptors_do(net, tmp_path):
    poolcli("run", "gem.yaml", "images", "-o", tmp_path / "out", cwd=net.root)
    vectors, paths = descriptors(tmp_path / "out")
    expected = np.stack([reference(net, p) for p in paths])
    hits = json.loads(poolcli("search", tmp_path / "out", "--key", "0", "-k", str(len(IMAGES)), "--json",
                              cwd=net.root).stdout)[0]["results"]
    scores = expected @ expected[0]
    assert [h["key"] for h in hits] == list(np.argsort(-scores, kind="stable"))
    np.testing.assert_allclose([h["score"] for h in hits], np.sort(scores)[::-1], atol=1e-5)
    assert hits[0]["is_query"] and not any(h["is_query"] for h in hits[1:])
    # a query image embedded with OUT's pipeline.yaml (which includes the trunk) finds itself
    horse = net.root / "images" / "horse.png"
    hits = json.loads(poolcli("search", tmp_path / "out", horse, "-k", "1", "--json", cwd=net.root).stdout)[0]["results"]
    assert Path(hits[0]["path"]).name == "horse.png" and hits[0]["score"] == pytest.approx(1.0, abs=1e-5)


def test_eval_compares_three_heads_in_one_table(net):
    result = poolcli("eval", "mac.yaml", "spoc.yaml", "gem.yaml", "images", "--no-progress", cwd=net.root)
    lines = result.stdout.splitlines()
    header = next(line for line in lines if "transform" in line)
    for name in HEADS:
        assert f"{name}.yaml R@1" in header and f"{name}.yaml mAP" in header
    assert "baseline R@1" in header
    overall = next(line for line in lines if "overall" in line)
    numbers = [float(v) for v in overall.replace("│", " ").replace("*", " ").split()[1:]]
    assert len(numbers) == 2 * len(HEADS) + 2 and all(0 <= v <= 1 for v in numbers)
    assert f"{len(IMAGES)} images" in result.stdout
