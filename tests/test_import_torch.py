"""poolcli import of the networks users bring, exported from torch with random weights
(``torch.onnx.export(..., dynamo=False)``) at opsets 13 and 17 with dynamic height and width,
and compared with onnxruntime on a square and a non-square input (SPEC section 7: max abs
difference at most 1e-3 of the output's largest absolute value).

torchvision's own definitions (their trunks up to the last conv stage) and small torch twins of
YOLOv8's blocks (Conv-BN-SiLU, C2f with chunk, SPPF, a neck with nearest Upsample and Concat).
Exports are cached per session: they cost more than the runs."""

import functools

import numpy as np
import pytest

from tests import onnx_models as M

torch = M.torch()
M.onnx()
M.ort()
nn = torch.nn

SIZES = ((64, 64), (64, 96))


# --- YOLOv8's blocks, as Ultralytics writes them ------------------------------------------------


class ConvBNSiLU(nn.Module):
    def __init__(self, c1, c2, k=1, s=1):
        super().__init__()
        self.conv = nn.Conv2d(c1, c2, k, s, k // 2, bias=False)
        self.bn = nn.BatchNorm2d(c2)
        self.act = nn.SiLU()

    def forward(self, x):
        return self.act(self.bn(self.conv(x)))


class Bottleneck(nn.Module):
    def __init__(self, c, shortcut=True):
        super().__init__()
        self.cv1, self.cv2 = ConvBNSiLU(c, c, 3), ConvBNSiLU(c, c, 3)
        self.add = shortcut

    def forward(self, x):
        return x + self.cv2(self.cv1(x)) if self.add else self.cv2(self.cv1(x))


class C2f(nn.Module):
    def __init__(self, c1, c2, n=1, shortcut=True):
        super().__init__()
        self.c = c2 // 2
        self.cv1 = ConvBNSiLU(c1, 2 * self.c, 1)
        self.cv2 = ConvBNSiLU((2 + n) * self.c, c2, 1)
        self.m = nn.ModuleList(Bottleneck(self.c, shortcut) for _ in range(n))

    def forward(self, x):
        y = list(self.cv1(x).chunk(2, 1))
        y.extend(m(y[-1]) for m in self.m)
        return self.cv2(torch.cat(y, 1))


class SPPF(nn.Module):
    def __init__(self, c1, c2, k=5):
        super().__init__()
        self.cv1 = ConvBNSiLU(c1, c1 // 2, 1)
        self.cv2 = ConvBNSiLU(c1 // 2 * 4, c2, 1)
        self.m = nn.MaxPool2d(k, 1, k // 2)

    def forward(self, x):
        y = [self.cv1(x)]
        y.extend(self.m(y[-1]) for _ in range(3))
        return self.cv2(torch.cat(y, 1))


class YoloTwin(nn.Module):
    """Stem, two C2f stages, SPPF, and a neck: nearest Upsample x2, Concat, C2f."""

    def __init__(self):
        super().__init__()
        self.stem = ConvBNSiLU(3, 8, 3, 2)
        self.down1 = ConvBNSiLU(8, 16, 3, 2)
        self.c2f1 = C2f(16, 16, 1, True)
        self.down2 = ConvBNSiLU(16, 32, 3, 2)
        self.c2f2 = C2f(32, 32, 2, True)
        self.sppf = SPPF(32, 32)
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.neck = C2f(48, 16, 1, False)

    def forward(self, x):
        p3 = self.c2f1(self.down1(self.stem(x)))
        p4 = self.sppf(self.c2f2(self.down2(p3)))
        return self.neck(torch.cat([self.up(p4), p3], 1))


# --- the families ------------------------------------------------------------------------------


_randomize_batch_norms = M.randomize_batch_norms


def _tv(name):
    tv = M.torchvision()
    return getattr(tv.models, name)(weights=None)


def _trunk(model):
    return nn.Sequential(*list(model.children())[:-2])


FAMILIES = {
    "resnet18": lambda: _trunk(_tv("resnet18")),
    "resnet50": lambda: _trunk(_tv("resnet50")),
    "vgg16": lambda: _tv("vgg16").features,
    "mobilenet_v2": lambda: _tv("mobilenet_v2").features,
    "mobilenet_v3_large": lambda: _tv("mobilenet_v3_large").features,
    "efficientnet_b0": lambda: _tv("efficientnet_b0").features,
    "convnext_tiny": lambda: _tv("convnext_tiny").features,
    "yolov8_twin": YoloTwin,
}


@functools.lru_cache(maxsize=None)
def exported(family: str, opset: int) -> bytes:
    torch.manual_seed(0)
    module = _randomize_batch_norms(FAMILIES[family]()).eval()
    return M.export_torch(module, (3, 64, 64), opset)


@pytest.mark.parametrize("opset", [13, 17])
@pytest.mark.parametrize("family", list(FAMILIES))
def test_family_matches_onnxruntime(tmp_path, family, opset):
    pipe = M.check_against_onnxruntime(exported(family, opset), tmp_path, SIZES)
    text = (tmp_path / "out" / "pipeline.yaml").read_text()
    assert "BatchNormalization" not in text and "batch_norm" not in text  # every BN folded
    if family.startswith(("resnet", "mobilenet", "convnext")):
        assert "residual:" in text
    if family == "yolov8_twin":  # its bottleneck adds after a SiLU: a separate add, not a residual
        assert "activation: silu" in text and "type: slice" in text and "type: resize" in text
        assert "type: add" in text and "residual:" not in text
    if family == "convnext_tiny":
        assert "type: layer_norm" in text and "gelu" in text
    assert pipe.kind == "maps"


def test_resnet18_with_its_head_is_a_vector(tmp_path):
    """The whole classifier: GlobalAveragePool, Flatten, Gemm; then Softmax."""
    model = nn.Sequential(_tv("resnet18"), nn.Softmax(dim=1)).eval()
    data = M.export_torch(model, (3, 64, 64), 13)
    pipe = M.check_against_onnxruntime(data, tmp_path, SIZES)
    text = (tmp_path / "out" / "pipeline.yaml").read_text()
    assert "type: global_avg_pool" in text and "type: linear" in text and "type: softmax" in text
    assert pipe.kind == "descriptors"


def test_fixed_input_size_is_written_as_input_resize(tmp_path):
    module = _randomize_batch_norms(YoloTwin()).eval()
    data = M.export_torch(module, (3, 64, 96), 17, dynamic=False)
    M.check_against_onnxruntime(data, tmp_path, ((64, 96),))
    text = (tmp_path / "out" / "pipeline.yaml").read_text()
    assert "  resize: {size: [64, 96]}" in text and "  color: rgb" in text


def test_until_keeps_only_what_it_needs(tmp_path):
    """--until a value inside the YOLO twin: the neck's input concat; the rest is dropped."""
    data = exported("yolov8_twin", 17)
    o = M.onnx()
    model = o.load_from_string(data)
    concat = next(n for n in model.graph.node if n.op_type == "Concat" and "Resize" in "".join(
        p.op_type for p in model.graph.node if p.output[0] in n.input))
    pipe = M.check_against_onnxruntime(data, tmp_path, SIZES, until=[concat.output[0]])
    assert pipe.nodes[-1].stage.type == "concat"
    text = (tmp_path / "out" / "pipeline.yaml").read_text()
    assert "/neck/" not in text


def test_ultralytics_yolov8n_through_its_neck(tmp_path, monkeypatch, request):
    """The real YOLOv8n (Ultralytics' own definition, random weights from yolov8n.yaml, no
    download), through its neck: the three maps its Detect head reads. Skipped where
    ultralytics is not installed (it is not a test dependency)."""
    monkeypatch.setenv("YOLO_OFFLINE", "1")
    monkeypatch.setenv("YOLO_CONFIG_DIR", str(tmp_path / "yolo_settings"))
    # Importing ultralytics patches PIL.Image.open and NumPy's and torch's print options for the
    # whole process: put them back after the test, or later doctests and runs see its changes.
    from PIL import Image

    monkeypatch.setattr(Image, "open", Image.open)
    printing = np.get_printoptions()
    request.addfinalizer(lambda: (np.set_printoptions(**printing), torch.set_printoptions(profile="default")))
    ultralytics = pytest.importorskip("ultralytics")
    torch.manual_seed(0)
    model = ultralytics.YOLO("yolov8n.yaml").model.eval()
    data = M.export_torch(model, (3, 64, 64), 17, output_names=("output0",))
    o = M.onnx()
    graph = o.load_from_string(data).graph
    head = [n for n in graph.node if n.op_type == "Conv" and n.name.endswith(("cv2.0.0/conv/Conv", "cv2.1.0/conv/Conv",
                                                                              "cv2.2.0/conv/Conv"))]
    until = [n.input[0] for n in head]
    assert len(until) == 3
    pipe = M.check_against_onnxruntime(data, tmp_path, ((64, 64), (64, 96)), until=until)
    text = (tmp_path / "out" / "pipeline.yaml").read_text()
    assert "type: resize" in text and "type: slice" in text and text.count("type: max_pool") == 3
    assert pipe.nodes[-1].name in text
