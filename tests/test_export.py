"""Edge exports: the in-place DFL decode matches Ultralytics' decode, in PyTorch and in the exported ONNX graph."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from conftest import save_checkpoint
from ultralytics.nn.modules.block import DFL
from ultralytics.nn.tasks import OBBModel

from ds2d2_yolo.tools.export import dfl_decode, export_to, use_fast_dfl


@pytest.mark.parametrize("bins", [16, 8])
def test_dfl_decode_matches_ultralytics(bins):
    """The expected distance per side equals DFL.forward (transpose, softmax, 1x1 conv) on random logits."""
    torch.manual_seed(0)
    dfl = DFL(bins)
    x = torch.randn(2, 4 * bins, 37) * 4
    np.testing.assert_allclose(dfl_decode(x, dfl.conv.weight, bins), dfl(x), rtol=1e-5, atol=1e-5)


def test_use_fast_dfl_patches_instances_only(tiny_models):
    """The patched model predicts what the original does; the DFL class and other models keep Ultralytics' forward."""
    torch.manual_seed(0)
    model = OBBModel(str(tiny_models["obb_student"]), nc=3, verbose=False).eval()
    fast = copy.deepcopy(model)
    assert use_fast_dfl(fast) == 1
    assert "forward" in vars(fast.model[-1].dfl) and "forward" not in vars(model.model[-1].dfl)
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        a, b = model(x)[0], fast(x)[0]
    np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-4)
    assert DFL(16).forward.__func__ is DFL.forward


def test_use_fast_dfl_without_dfl():
    """YOLO26 heads regress boxes directly (reg_max=1): nothing to change."""
    model = OBBModel("yolo26n-obb.yaml", nc=3, verbose=False)
    assert use_fast_dfl(model) == 0


def test_fast_decode_onnx_matches_ultralytics_graph(tiny_models, tmp_path):
    """The exported graph normalises over the bins where they lie (no Transpose, no Softmax) and gives Ultralytics'
    outputs; fast_dfl=False keeps Ultralytics' graph, and the .pt on disk is unchanged by either export."""
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    model = OBBModel(str(tiny_models["obb_student"]), nc=3, verbose=False)
    pt = save_checkpoint(model, tmp_path / "student.pt", {0: "a", 1: "b", 2: "c"}, "obb")
    before = pt.read_bytes()
    kw = {"imgsz": 64, "batch": 1, "device": "cpu"}
    fast = export_to(pt, "onnx", tmp_path / "fast.onnx", **kw)
    ul = export_to(pt, "onnx", tmp_path / "ul.onnx", fast_dfl=False, **kw)
    assert pt.read_bytes() == before

    def decode_ops(path):
        g = onnx.load(str(path)).graph
        made_by = {o: n.op_type for n in g.node for o in n.output}
        softmax = [made_by.get(n.input[0]) for n in g.node if n.op_type == "Softmax"]
        return softmax, [made_by.get(n.input[0]) for n in g.node if n.op_type == "Exp"]

    assert decode_ops(ul) == (["Transpose"], [])
    assert decode_ops(fast) == ([], ["Sub"])  # the largest logit is subtracted before the exponential
    x = np.random.default_rng(0).random((1, 3, 64, 64), dtype=np.float32)
    out = {}
    for name, path in (("fast", fast), ("ul", ul)):
        s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        out[name] = s.run(None, {s.get_inputs()[0].name: x})[0]
    assert out["fast"].shape == out["ul"].shape
    np.testing.assert_allclose(out["fast"], out["ul"], rtol=1e-4, atol=1e-4)
