"""End to end, as a user does it: export a torchvision ResNet-18, ``poolcli import`` it, append
GeM to the generated YAML, ``poolcli run`` it on sample_images/, and get the descriptors that
onnxruntime's features plus GeM give."""

import subprocess
import sys
from pathlib import Path

import numpy as np

from tests import onnx_models as M

torch = M.torch()
M.onnx()
M.ort()

SAMPLES = Path(__file__).resolve().parent.parent / "sample_images"


def _poolcli(*args, cwd):
    result = subprocess.run([sys.executable, "-m", "poolcli", *map(str, args)], capture_output=True, text=True, cwd=cwd)
    assert result.returncode == 0, result.stderr
    return result


def test_import_then_run_with_gem_matches_onnxruntime(tmp_path):
    import poolcli

    tv = M.torchvision()
    torch.manual_seed(0)
    trunk = torch.nn.Sequential(*list(tv.models.resnet18(weights=None).children())[:-2]).eval()
    onnx_bytes = M.export_torch(trunk, (3, 96, 128), 17, dynamic=False)
    (tmp_path / "resnet18.onnx").write_bytes(onnx_bytes)

    result = _poolcli("import", "resnet18.onnx", "-o", "trunk", cwd=tmp_path)
    assert "resnet18.onnx (opset 17)" in result.stdout
    config = tmp_path / "trunk" / "pipeline.yaml"
    text = config.read_text()
    assert text.startswith("# Imported from resnet18.onnx") and "input.mean and input.std" in text
    assert "resize: {size: [96, 128]}" in text
    config.write_text(text.replace("output:\n", "  - {type: gem, name: head, p: 3}\noutput:\n"))

    _poolcli("run", config, SAMPLES, "-o", tmp_path / "run", cwd=tmp_path)
    vectors, meta = poolcli.read_descriptors(tmp_path / "run")
    pipe = poolcli.Pipeline.from_yaml(config)
    assert len(vectors) >= 5
    for vector, path in zip(vectors, meta.column("path").to_pylist()):
        image = poolcli.load_image(path, pipe.config.input)
        features = M.run_onnxruntime(onnx_bytes, image)
        gem = np.mean(np.maximum(features.astype(np.float64), 1e-6) ** 3, axis=(1, 2)) ** (1 / 3)
        M.assert_close(vector, gem, path)
