"""Edge compression: Torch-Pruning on Ultralytics models, distilling the pruned model back, INT8, the pipeline."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import V8_TEACHER, need_shared, save_checkpoint, train_overrides
from ultralytics.nn.modules import C2f
from ultralytics.nn.tasks import ClassificationModel, DetectionModel, OBBModel, load_checkpoint

from ds2d2_yolo.cli import entrypoint
from ds2d2_yolo.prune import head_outputs, prune_model, run_prune

pytest.importorskip("torch_pruning")

# A subprocess preamble under which neither this package nor Torch-Pruning can be imported.
BLOCK_IMPORTS = """
import sys

class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("ds2d2_yolo", "torch_pruning"):
            raise ImportError(f"{name} is blocked in this process")

sys.meta_path.insert(0, Block())
"""


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(
    "base, cls",
    [
        ("yolov8n.yaml", DetectionModel),
        ("yolo11n.yaml", DetectionModel),
        ("yolo26n.yaml", DetectionModel),
        ("yolov8n-obb.yaml", OBBModel),
        ("yolo26n-obb.yaml", OBBModel),
    ],
)
def test_prune_architectures(base, cls):
    """v8/11/26, detect and OBB: smaller, same outputs, head outputs and DFL whole, only Ultralytics' classes."""
    torch.manual_seed(0)
    model = cls(base, nc=3, verbose=False).eval()
    pruned = prune_model(model, 0.5)
    assert n_params(pruned) < 0.6 * n_params(model)
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        a, b = model(x)[0], pruned(x)[0]
    assert a.shape == b.shape and torch.isfinite(b).all()
    outs0, outs1 = head_outputs(model.model[-1]), head_outputs(pruned.model[-1])
    assert [p.shape for p in outs0[0].parameters()] == [p.shape for p in outs1[0].parameters()]  # DFL
    assert [m.out_channels for m in outs0[1:]] == [m.out_channels for m in outs1[1:]]
    assert sum(m.in_channels for m in outs1[1:]) < sum(m.in_channels for m in outs0[1:])  # inner head convs pruned
    split = [m for m in pruned.modules() if isinstance(m, C2f)]
    assert split and all(m.cv1.conv.out_channels == 2 * m.c and "forward" not in vars(m) for m in split)
    assert any(m.c < m0.c for m, m0 in zip(split, (m for m in model.modules() if isinstance(m, C2f))))
    assert {type(m).__module__.split(".")[0] for m in pruned.modules()} <= {"torch", "ultralytics"}


def test_pruned_file_is_plain(tmp_path, tiny_models, synth_obb):
    """The saved file loads, validates, predicts and exports where ds2d2_yolo and torch_pruning cannot be imported."""
    report = run_prune(str(tiny_models["obb_teacher"]), ratio=0.5, data=str(synth_obb), project=str(tmp_path))
    path = Path(report["file"])
    assert path == tmp_path / "prune" / "weights" / "pruned.pt"
    assert report["pruned"]["params"] < report["teacher"]["params"] / 2
    assert report["pruned"]["GFLOPs"] < report["teacher"]["GFLOPs"]
    assert 0 <= report["pruned"]["mAP50"] <= 1 and "mAP50-95" in report["teacher"]
    assert json.loads((tmp_path / "prune" / "results.json").read_text())["pruned"] == report["pruned"]
    img = next((Path(synth_obb).parent / "images" / "val").glob("*.png"))
    code = BLOCK_IMPORTS + textwrap.dedent(
        f"""
        from ultralytics import YOLO
        m = YOLO({str(path)!r})
        r = m.predict({str(img)!r}, imgsz=64, device="cpu", verbose=False)
        v = m.val(data={str(synth_obb)!r}, imgsz=64, batch=4, device="cpu", plots=False, verbose=False,
                  project={str(tmp_path)!r}, name="plainval")
        f = m.export(format="onnx", imgsz=64, device="cpu")
        print(type(m.model).__name__, len(r), round(float(v.box.map50), 4), f)
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    kind, n_results, _, onnx_file = out.stdout.split()[-4:]
    assert (kind, n_results) == ("OBBModel", "1") and Path(onnx_file).is_file()


def test_prune_cli_mistakes_one_line(tmp_path, tiny_models, capsys):
    """Bad ratio, missing file and a classify model fail in one line, exit code 2, before any run folder exists."""
    classify = ClassificationModel("yolov8n-cls.yaml", nc=3, verbose=False)
    cls_pt = save_checkpoint(classify, tmp_path / "cls.pt", {}, "classify")
    cases = {
        "ratio=1.5": "between 0 and 1",
        "ratio=0": "between 0 and 1",
        f"model={tmp_path / 'missing.pt'}": "not found",
        f"model={cls_pt}": "classify model",
        "importance=taylor": "importance",
    }
    for arg, expected in cases.items():
        argv = ["prune", f"model={tiny_models['obb_teacher']}", arg, f"project={tmp_path / 'runs'}"]
        assert entrypoint(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and expected in err[0], (arg, err)
    assert not (tmp_path / "runs").exists()


def test_distil_trains_pruned_architecture_and_resumes(tmp_path, tiny_models, synth_obb):
    """train model=pruned.pt keeps the pruned shapes and starting weights (Ultralytics would rebuild the yaml)."""
    from ds2d2_yolo import DS2D2Trainer

    pruned_pt = Path(run_prune(str(tiny_models["obb_teacher"]), ratio=0.5, project=str(tmp_path))["file"])
    pruned = load_checkpoint(str(pruned_pt))[0].float()
    seen = {}

    class Crash(Exception):
        pass

    def on_train_start(tr):
        student = tr.model.student_model
        seen[tr.start_epoch] = (n_params(student), student.model[0].conv.weight.detach().clone())

    def crash(tr):
        raise Crash

    kw = dict(model=str(pruned_pt), data=str(synth_obb), teacher=str(tiny_models["obb_teacher"]), distill="ds2d2")
    trainer = DS2D2Trainer(overrides=train_overrides(tmp_path, epochs=2, **kw))
    trainer.add_callback("on_train_start", on_train_start)
    trainer.add_callback("on_fit_epoch_end", crash)
    with pytest.raises(Crash):
        trainer.train()
    assert seen[0][0] == n_params(pruned)
    assert torch.equal(seen[0][1], pruned.model[0].conv.weight)

    resumed = DS2D2Trainer(overrides=dict(resume=str(trainer.last)))
    resumed.add_callback("on_train_start", on_train_start)
    resumed.train()
    assert seen[1][0] == n_params(pruned)
    best = load_checkpoint(str(resumed.best))[0]
    assert n_params(best) == n_params(pruned)
    assert [p.shape for p in best.parameters()] == [p.shape for p in pruned.parameters()]


@pytest.mark.parametrize("ratio, params", [(0.25, 1_740_592), (0.5, 778_112)])
def test_real_yolov8n_obb_dota(ratio, params):
    """The real DOTA teacher (3.09 M parameters) prunes to the sizes the accuracy benchmark's R3 regime uses."""
    model = load_checkpoint(str(need_shared(V8_TEACHER)))[0]
    assert n_params(prune_model(model, ratio)) == params
