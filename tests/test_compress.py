"""Edge compression: Torch-Pruning on Ultralytics models, distilling the pruned model back, INT8, the pipeline."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import V8_TEACHER, Y26_TEACHER, need_shared, save_checkpoint, train_overrides
from ultralytics.nn.modules import C2f
from ultralytics.nn.tasks import ClassificationModel, DetectionModel, OBBModel, load_checkpoint

from ds2d2_yolo.cli import entrypoint
from ds2d2_yolo.tools.prune import head_outputs, prune_model, run_prune

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


def test_run_prune_report(tmp_path, tiny_models, synth_obb):
    """run_prune writes runs/<task>/prune*/weights/pruned.pt and reports params, GFLOPs and mAP before fine-tuning."""
    report = run_prune(str(tiny_models["obb_teacher"]), ratio=0.5, data=str(synth_obb), imgsz=64, project=str(tmp_path))
    assert Path(report["file"]) == tmp_path / "prune" / "weights" / "pruned.pt"
    assert report["pruned"]["params"] < report["teacher"]["params"] / 2
    assert report["pruned"]["GFLOPs"] < report["teacher"]["GFLOPs"]
    assert 0 <= report["pruned"]["mAP50"] <= 1 and "mAP50-95" in report["teacher"]
    assert json.loads((tmp_path / "prune" / "results.json").read_text())["pruned"] == report["pruned"]


@pytest.fixture(scope="module")
def compressed(tmp_path_factory, tiny_models, synth_obb) -> Path:
    """One whole `compress` run on the tiny OBB teacher (64 px, 1 epoch of DS2D2)."""
    from ds2d2_yolo.tools.compress import run_compress
    from ds2d2_yolo.tools.quantize import openvino_available

    project = tmp_path_factory.mktemp("compress")
    train = dict(amp_epochs=1, plots=False, mosaic=0.0, warmup_epochs=0, nbs=4, deterministic=True)
    result = run_compress(
        str(tiny_models["obb_teacher"]),
        str(synth_obb),
        imgsz=64,
        epochs=1,
        batch=4,
        runs=3,
        calib=4,
        int8="onnx,openvino" if openvino_available() else "onnx",
        project=str(project),
        name="tiny",
        cfg=train,
    )
    return Path(result["save_dir"])


def test_compress_outputs(compressed):
    """Every stage has a row (Ultralytics val + latency in its own runtime), the table, csv, json and plot exist."""
    from ds2d2_yolo.tools.quantize import openvino_available

    rows = json.loads((compressed / "results.json").read_text())["rows"]
    stages = ["teacher", "teacher-onnx", "pruned", "distilled", "onnx", "int8-onnx"]
    assert [r["stage"] for r in rows] == stages + (["int8-openvino"] if openvino_available() else [])
    by = {r["stage"]: r for r in rows}
    assert by["teacher"]["runtime"] == "torch" and by["onnx"]["runtime"] == "onnxruntime"
    assert by["int8-onnx"]["precision"] == "int8" and by["int8-onnx"]["MB"] < by["onnx"]["MB"]
    assert by["pruned"]["params"] == by["int8-onnx"]["params"] < by["teacher"]["params"] / 2
    assert all(r["ms"] > 0 and 0 <= r["mAP50"] <= 1 and r["GFLOPs"] > 0 for r in rows)
    table = (compressed / "table.md").read_text()
    assert all(f"| {s} |" in table for s in stages)
    assert (compressed / "results.csv").read_text().count("\n") == len(rows) + 1
    assert (compressed / "accuracy_latency.png").stat().st_size > 0
    for f in ("pruned.pt", "distil/weights/best.pt", "student.onnx", "student-int8.onnx", "teacher.onnx"):
        assert (compressed / f).is_file(), f


def test_compress_exports_use_fast_decode(compressed):
    """The pipeline's ONNX files normalise the DFL bins where they lie: no Softmax after a Transpose, but an
    exponential of the logits less their largest."""
    onnx = pytest.importorskip("onnx")
    for f in ("teacher.onnx", "student.onnx", "student-int8.onnx"):
        g = onnx.load(str(compressed / f)).graph
        made_by = {o: n.op_type for n in g.node for o in n.output}
        assert not any(n.op_type == "Softmax" for n in g.node), f
        assert [made_by.get(n.input[0]) for n in g.node if n.op_type == "Exp"] == ["Sub"], f


def test_pruned_file_is_plain(compressed, synth_obb):
    """pruned.pt loads, validates, predicts and exports, and the distilled best.pt loads and predicts, where
    ds2d2_yolo and torch_pruning cannot be imported: no class of either is in the pickles."""
    img = next((Path(synth_obb).parent / "images" / "val").glob("*.png"))
    code = BLOCK_IMPORTS + textwrap.dedent(
        f"""
        from ultralytics import YOLO
        m = YOLO({str(compressed / "pruned.pt")!r})
        r = m.predict({str(img)!r}, imgsz=64, device="cpu", verbose=False)
        v = m.val(data={str(synth_obb)!r}, imgsz=64, batch=4, device="cpu", plots=False, verbose=False,
                  project={str(compressed / "plain")!r})
        out = m.export(format="onnx", imgsz=64, device="cpu")
        best = YOLO({str(compressed / "distil" / "weights" / "best.pt")!r})
        rb = best.predict({str(img)!r}, imgsz=64, device="cpu", verbose=False)
        print("PLAIN", type(m.model).__name__, type(best.model).__name__, len(r), len(rb), float(v.box.map50), out)
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    line = next(x for x in out.stdout.splitlines() if x.startswith("PLAIN "))
    _, kind, kind_best, n, n_best, map50, onnx_file = line.split()
    assert (kind, kind_best, n, n_best) == ("OBBModel", "OBBModel", "1", "1") and Path(onnx_file).is_file()
    assert 0 <= float(map50) <= 1


def test_quantize_options_replace_defaults(compressed, synth_obb, tmp_path):
    """`options` reach quantize_static: by default SiLU is quantized too (a QuantizeLinear after its Sigmoid); with
    only Conv quantized none is, and both files still run in ONNX Runtime with the FP32 file's outputs' shapes."""
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from ds2d2_yolo.tools.quantize import quantize_onnx, split_images

    images = split_images(synth_obb, "train", 4)
    default = quantize_onnx(compressed / "student.onnx", tmp_path / "all.onnx", images, 64)
    conv = quantize_onnx(
        compressed / "student.onnx", tmp_path / "conv.onnx", images, 64, options={"op_types_to_quantize": ["Conv"]}
    )

    def quantized_sigmoids(path: Path) -> int:
        graph = onnx.load(str(path)).graph
        made_by = {o: n.op_type for n in graph.node for o in n.output}
        return sum(n.op_type == "QuantizeLinear" and made_by.get(n.input[0]) == "Sigmoid" for n in graph.node)

    assert quantized_sigmoids(default) > 0 and quantized_sigmoids(conv) == 0
    x = {"images": np.random.rand(1, 3, 64, 64).astype(np.float32)}
    shapes = [
        [o.shape for o in ort.InferenceSession(str(f), providers=["CPUExecutionProvider"]).run(None, x)]
        for f in (compressed / "student.onnx", default, conv)
    ]
    assert shapes[0] == shapes[1] == shapes[2]


def test_quantize_ranges_are_mean_of_per_image_extremes(compressed, synth_obb, tmp_path):
    """An activation's INT8 scale is (mean of per-image max − mean of per-image min) / 255, computed here from the FP32
    file's own outputs image by image, and differs from the scale the extremes over all images give."""
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from onnx import numpy_helper

    from ds2d2_yolo.tools.quantize import letterbox_tensor, quantize_onnx, split_images

    images = split_images(synth_obb, "train", 4)
    src = compressed / "student.onnx"
    graph = onnx.load(str(quantize_onnx(src, tmp_path / "q.onnx", images, 64))).graph
    init = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    q = next(n for n in graph.node if n.op_type == "QuantizeLinear" and n.input[0] == "/model.0/act/Mul_output_0")
    fp32 = onnx.load(str(src))
    fp32.graph.output.append(onnx.ValueInfoProto(name=q.input[0]))
    sess = ort.InferenceSession(fp32.SerializeToString(), providers=["CPUExecutionProvider"])
    acts = [sess.run([q.input[0]], {"images": letterbox_tensor(f, 64)})[0] for f in images]
    lo, hi = min(np.mean([a.min() for a in acts]), 0.0), max(np.mean([a.max() for a in acts]), 0.0)
    extremes = (max(a.max() for a in acts) - min(min(a.min() for a in acts), 0.0)) / 255
    assert float(init[q.input[1]]) == pytest.approx((hi - lo) / 255, rel=1e-5)
    assert abs(extremes - (hi - lo) / 255) > 1e-3 * extremes


def test_quantize_keeps_stem_float_and_quantizes_head_activations(compressed, synth_obb, tmp_path):
    """The first layer runs in float on the image (no QuantizeLinear on the input, float weights), and every SiLU of
    the head's inner convolutions is quantized; with `float_stem=False` the image is quantized and the first
    convolution takes dequantized weights."""
    onnx = pytest.importorskip("onnx")
    from ds2d2_yolo.tools.quantize import last_layer, quantize_onnx, split_images

    images = split_images(synth_obb, "train", 4)
    src = compressed / "student.onnx"
    stem_float_model = onnx.load(str(quantize_onnx(src, tmp_path / "a.onnx", images, 64)))
    stem_float = stem_float_model.graph
    stem_int8 = onnx.load(str(quantize_onnx(src, tmp_path / "b.onnx", images, 64, float_stem=False))).graph

    def first_conv(graph):
        return next(n for n in graph.node if n.op_type == "Conv" and n.name.startswith("/model.0/"))

    made_by = {o: n.op_type for n in stem_float.node for o in n.output}
    assert first_conv(stem_float).input[0] == "images" and first_conv(stem_float).input[1] not in made_by
    assert not any(n.op_type == "QuantizeLinear" and n.input[0] == "images" for n in stem_float.node)
    assert made_by[first_conv(stem_float).output[0]] == "Conv"
    made_by_b = {o: n.op_type for n in stem_int8.node for o in n.output}
    assert made_by_b[first_conv(stem_int8).input[0]] == "DequantizeLinear"
    assert made_by_b[first_conv(stem_int8).input[1]] == "DequantizeLinear"

    head = last_layer(stem_float_model)
    quantized = {n.input[0] for n in stem_float.node if n.op_type == "QuantizeLinear"}
    head_silu = [n for n in stem_float.node if n.name.startswith(f"/model.{head}/") and n.name.endswith("/act/Mul")]
    assert head_silu and all(n.output[0] in quantized for n in head_silu)
    outputs = [n for n in stem_float.node if n.op_type == "Conv" and n.name.startswith(f"/model.{head}/")]
    assert any(n.input[1] not in made_by for n in outputs)  # the output convolutions keep float weights


def test_widen_narrow_convs_keeps_outputs(compressed, synth_obb, tmp_path):
    """Narrow quantized convolutions get zero filters up to 16, through their consumers' weights or a Slice; the
    FP32 graph gives the original outputs, excluded nodes keep their filters, and INT8 with and without widening
    agrees with each other far closer than either agrees with FP32."""
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from onnx import numpy_helper

    from ds2d2_yolo.tools.quantize import (
        float_head_nodes,
        last_layer,
        quantize_onnx,
        split_images,
        stem_nodes,
        widen_narrow_convs,
    )

    src = compressed / "student.onnx"
    model = onnx.load(str(src))
    before = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    exclude = float_head_nodes(model, last_layer(model)) + stem_nodes(model)
    narrow = [n for n in model.graph.node if n.op_type == "Conv" and before[n.input[1]].shape[0] < 16]
    widened = widen_narrow_convs(model, 16, exclude)
    after = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    assert widened and set(widened) <= {n.name for n in narrow} - set(exclude)
    for n in narrow:
        w0, w1 = before[n.input[1]], after[n.input[1]]
        if n.name in widened:
            assert w1.shape[0] == 16 and not w1[w0.shape[0] :].any()
            np.testing.assert_array_equal(w1[: w0.shape[0], : w0.shape[1]], w0)
        elif n.name in exclude:  # its filters stay; only inputs of a widened producer join, with zero weights
            assert w1.shape[0] == w0.shape[0] and not w1[:, w0.shape[1] :].any()
            np.testing.assert_array_equal(w1[:, : w0.shape[1]], w0)
    slices = [n for n in model.graph.node if n.op_type == "Slice" and n.name.endswith("/narrow")]
    assert 0 < len(slices) < len(widened)  # both ways occur: through the consumers' weights and through a Slice
    onnx.checker.check_model(model)
    onnx.save(model, str(tmp_path / "wide.onnx"))

    x = {"images": np.random.default_rng(0).random((1, 3, 64, 64), dtype=np.float32)}

    def run(path: Path) -> np.ndarray:
        return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, x)[0]

    fp32 = run(src)
    np.testing.assert_allclose(run(tmp_path / "wide.onnx"), fp32, rtol=1e-4, atol=1e-4)
    images = split_images(synth_obb, "train", 4)
    wide8 = run(quantize_onnx(src, tmp_path / "wide8.onnx", images, 64))
    narrow8 = run(quantize_onnx(src, tmp_path / "narrow8.onnx", images, 64, pad_channels=0))
    assert np.abs(wide8 - narrow8).max() <= 1e-3 * max(1.0, np.abs(fp32).max())
    assert np.abs(wide8 - narrow8).max() < np.abs(narrow8 - fp32).max()


def test_compress_stage_failure_is_one_line(tmp_path, tiny_models, synth_obb, capsys, monkeypatch):
    """A failing stage stops the pipeline with one line naming it; what earlier stages wrote stays."""
    from ds2d2_yolo import DS2D2Trainer

    def broken(self):
        raise RuntimeError("simulated training failure\nsecond line")

    monkeypatch.setattr(DS2D2Trainer, "train", broken)
    argv = ["compress", f"model={tiny_models['obb_teacher']}", f"data={synth_obb}", "imgsz=64", "epochs=1"]
    argv += ["runs=2", "int8=onnx", f"project={tmp_path}", "name=fail"]
    assert entrypoint(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "stage 'distil' failed: simulated training failure" in err[0], err
    save_dir = tmp_path / "fail"
    rows = json.loads((save_dir / "results.json").read_text())["rows"]
    assert [r["stage"] for r in rows] == ["teacher", "teacher-onnx", "pruned"]
    assert (save_dir / "pruned.pt").is_file() and "second line" in (save_dir / "error.txt").read_text()


def test_compress_cli_mistakes_one_line(tmp_path, tiny_models, synth_obb, capsys):
    """compress checks its keys before any folder exists."""
    base = ["compress", f"model={tiny_models['obb_teacher']}", f"data={synth_obb}", f"project={tmp_path / 'runs'}"]
    cases = {
        "ratio=1": "between 0 and 1",
        "int8=tensorrt": "'tensorrt' is unknown",
        "distill=kd": "distill=kd",
        "epochs=0": "at least 1",
        f"cfg={tmp_path / 'none.yaml'}": "not found",
        f"data={tmp_path / 'none.yaml'}": "data=",
    }
    for arg, expected in cases.items():
        assert entrypoint([*base, arg]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and expected in err[0], (arg, err)
    assert not (tmp_path / "runs").exists()


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
        student = tr.model.student
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


@pytest.mark.parametrize(
    "teacher, ratio, params",
    [(V8_TEACHER, 0.25, 1_740_592), (V8_TEACHER, 0.5, 778_112), (Y26_TEACHER, 0.5, 901_656)],
    ids=["yolov8n-obb-0.25", "yolov8n-obb-0.5", "yolo26n-obb-0.5"],
)
def test_real_dota_teachers(teacher, ratio, params):
    """The real DOTA teachers (3.09 M and 2.65 M parameters) prune to fixed sizes; v8's are the R3 regime's."""
    model = load_checkpoint(str(need_shared(teacher)))[0]
    pruned = prune_model(model, ratio)
    assert n_params(pruned) == params
    with torch.no_grad():
        assert pruned(torch.rand(1, 3, 128, 128))[0].shape == model.float().eval()(torch.rand(1, 3, 128, 128))[0].shape
