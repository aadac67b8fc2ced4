"""DS2D2Trainer end to end: real Ultralytics training loops on tiny models, synthetic and real DOTA data."""

from __future__ import annotations

import csv
import math
import subprocess
import sys
import textwrap
from copy import deepcopy
from pathlib import Path

import pytest
import torch
from conftest import V8_TEACHER, Y26_TEACHER, need_shared, train_overrides

from ds2d2_yolo import DS2D2Trainer
from ds2d2_yolo.config import REFERENCE
from ds2d2_yolo.integration.teacher import fingerprint


def read_results(save_dir: Path) -> list[dict[str, float]]:
    with open(save_dir / "results.csv") as f:
        return [{k.strip(): float(v) for k, v in row.items()} for row in csv.DictReader(f)]


def assert_terms(row: dict, cfg: dict) -> None:
    """The columns of the terms a run has on are finite and non-zero; those of the streams it has off are 0."""
    on = {"ex_low": cfg["explicit"], "ex_high": cfg["explicit"]}
    on |= {"im_full": cfg["implicit_full"], "im_high": cfg["implicit_high"]}
    for term, enabled in on.items():
        v = row[f"train/{term}"]
        assert (math.isfinite(v) and v != 0) if enabled else v == 0, (term, v)


def run_training(tmp: Path, **kw) -> DS2D2Trainer:
    trainer = DS2D2Trainer(overrides=train_overrides(tmp, **kw))
    trainer.train()
    return trainer


@pytest.mark.parametrize("task", ["obb", "detect"])
def test_train_end_to_end(task, tmp_path, tiny_models, synth_obb, synth_det):
    """Training with the reference's full method runs for detect and OBB; every DS2D2 column is finite and non-zero;
    teacher untouched."""
    teacher_path = tiny_models[f"{task}_teacher"]
    data = synth_obb if task == "obb" else synth_det
    seen = {}

    trainer = DS2D2Trainer(
        overrides=train_overrides(
            tmp_path,
            model=str(tiny_models[f"{task}_student"]),
            data=str(data),
            teacher=str(teacher_path),
            epochs=2,
            **REFERENCE,
        )
    )
    assert type(trainer).__name__ == ("DS2D2OBBTrainer" if task == "obb" else "DS2D2Trainer")

    def on_train_start(tr):
        m = tr.model
        seen["teacher_fp"] = fingerprint(m.teacher)
        seen["adapters"] = deepcopy(m.adapters.state_dict())
        seen["student"] = deepcopy(m.student.state_dict())
        opt_ids = {id(p) for g in tr.optimizer.param_groups for p in g["params"]}
        seen["teacher_in_opt"] = any(id(p) in opt_ids for p in m.teacher.parameters())
        seen["amp_in_opt"] = any(id(p) in opt_ids for p in m.amplifier.parameters())
        seen["adapters_in_opt"] = all(id(p) in opt_ids for p in m.adapters.parameters())
        seen["ema_has_teacher"] = tr.ema.ema.teacher is not None

    def on_train_epoch_end(tr):
        seen["teacher_training"] = tr.model.teacher.training or tr.model.amplifier.training

    trainer.add_callback("on_train_start", on_train_start)
    trainer.add_callback("on_train_epoch_end", on_train_epoch_end)
    trainer.train()

    rows = read_results(trainer.save_dir)
    assert len(rows) == 2
    assert all(trainer.ds2d2[k] for k in ("explicit", "implicit_full", "implicit_high"))  # all four terms on
    for row in rows:
        assert_terms(row, trainer.ds2d2)
    assert not seen["teacher_in_opt"] and not seen["amp_in_opt"] and seen["adapters_in_opt"]
    assert not seen["ema_has_teacher"] and not seen["teacher_training"]
    m = trainer.model
    assert fingerprint(m.teacher) == seen["teacher_fp"]  # bit-identical teacher
    assert trainer.teacher.fingerprint == fingerprint(torch.load(teacher_path, weights_only=False)["model"].float())
    assert any(not torch.equal(v, m.adapters.state_dict()[k]) for k, v in seen["adapters"].items())
    assert any(not torch.equal(v, m.student.state_dict()[k]) for k, v in seen["student"].items())
    assert (trainer.save_dir / "amplifier.pt").is_file()

    ckpt = torch.load(trainer.best, weights_only=False)
    assert type(ckpt["model"]).__module__ == "ultralytics.nn.tasks"
    assert "teacher" not in str(list(ckpt["model"].state_dict())[:5])
    assert "connectors" not in ckpt["ds2d2"]  # best.pt is the plain student; the resume state lives in last.pt
    last = torch.load(trainer.last, weights_only=False)
    assert set(last["ds2d2"]["connectors"]) >= {k for k in m.state_dict() if k.startswith("adapters.")}
    # Written by Ultralytics' own save_model: its keys (git, modelopt included) and no staging folder left behind.
    assert {"git", "modelopt", "train_args", "train_results"} <= set(last) and set(last) - set(ckpt) == set()
    assert sorted(p.name for p in trainer.wdir.iterdir()) == ["best.pt", "last.pt"]


@pytest.mark.parametrize("task", ["obb", "detect"])
def test_defaults_distil_detect_and_obb(task, tmp_path, tiny_models, synth_obb, synth_det):
    """The shipped defaults (explicit stream, mlp projector, confidence weights) train on both heads: the explicit
    columns are non-zero, the implicit ones 0, no amplifier is trained, and last.pt holds the two-layer projectors."""
    trainer = run_training(
        tmp_path,
        model=str(tiny_models[f"{task}_student"]),
        data=str(synth_obb if task == "obb" else synth_det),
        teacher=str(tiny_models[f"{task}_teacher"]),
    )
    assert_terms(read_results(trainer.save_dir)[-1], trainer.ds2d2)
    assert not (trainer.save_dir / "amplifier.pt").exists()
    connectors = torch.load(trainer.last, weights_only=False)["ds2d2"]["connectors"]
    assert {"adapters.0.conv.0.bias", "adapters.0.conv.2.weight"} <= set(connectors)


def _tiny_ds2d2(tiny_models, synth_obb, cfg=None):
    """A DS2D2 wrapper on the tiny OBB student and teacher (DS2D2 settings `cfg` over the reference's), with a
    one-epoch amplifier and one real batch."""
    from ultralytics.data import build_dataloader, build_yolo_dataset
    from ultralytics.data.utils import check_det_dataset
    from ultralytics.nn.tasks import OBBModel, load_checkpoint

    from ds2d2_yolo.config import check_args
    from ds2d2_yolo.integration.amplifier import train_amplifier
    from ds2d2_yolo.integration.wrapper import DS2D2Model

    student = OBBModel(str(tiny_models["obb_student"]), nc=3, verbose=False)
    teacher = load_checkpoint(str(tiny_models["obb_teacher"]))[0].float().eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    from ultralytics.cfg import get_cfg

    args = get_cfg(overrides=dict(imgsz=64, task="obb", mosaic=0.0))
    data = check_det_dataset(str(synth_obb))
    ds = build_yolo_dataset(args, data["train"], 4, data, mode="train", stride=32)
    batch = next(iter(build_dataloader(ds, 4, 0, shuffle=False)))
    batch["img"] = batch["img"].float() / 255
    amp = train_amplifier(teacher, deepcopy(teacher.model[-1]), lambda: [batch], args, epochs=1)
    model = DS2D2Model(student, teacher, check_args({**REFERENCE, **(cfg or {})}), amplifier=amp).train()
    return model, student, teacher, amp, batch


def _terms(model, batch):
    from ds2d2_yolo.integration.hooks import capture_head_inputs, head_features

    store = {}
    with capture_head_inputs(model.student, store, "s"):
        model.student(batch["img"])
    return model.distill_terms(store["s"], head_features(model.teacher, batch["img"]), batch)


@pytest.mark.parametrize("cfg", [{}, {"disw": "score", "projector": "mlp"}], ids=["reference", "reference-score-mlp"])
def test_distill_loss_moves_student_and_adapters_only(cfg, tmp_path, tiny_models, synth_obb):
    """Backward through the DS2D2 terms alone: student neck and adapters get gradient; teacher, amplifier and the
    student's own head get none (the student head learns from the ground truth only)."""
    model, student, teacher, amp, batch = _tiny_ds2d2(tiny_models, synth_obb, cfg)
    terms = _terms(model, batch)
    assert set(terms) == {"ex_low", "ex_high", "im_full", "im_high"}
    sum(terms.values()).backward()

    head = student.model[-1]
    neck_grads = [p.grad for n, p in student.named_parameters() if not n.startswith(f"model.{len(student.model) - 1}.")]
    assert any(g is not None and g.abs().sum() > 0 for g in neck_grads)
    assert all(p.grad is None for p in head.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.adapters.parameters())
    assert all(p.grad is None for p in teacher.parameters())
    assert all(p.grad is None for p in amp.parameters())


def test_score_weighted_bands_equal_ultralytics_imitation(tiny_models, synth_obb):
    """With disw=score, an mlp projector and lambda_exl:lambda_exh = 1:3, the explicit stream is exactly
    Ultralytics' score-weighted feature imitation (its `loss_sl2`, at dis = 4 * lambda_exl) on the same projections:
    the orthonormal Haar bands split the weighted error without changing it."""
    from ultralytics.nn.distill_model import DistillationModel

    from ds2d2_yolo.integration.hooks import capture_head_inputs, head_features

    cfg = {"disw": "score", "projector": "mlp", "lambda_exl": 0.5, "lambda_exh": 1.5, "implicit_high": False}
    model, student, teacher, _, batch = _tiny_ds2d2(tiny_models, synth_obb, cfg)
    with torch.no_grad():
        store = {}
        with capture_head_inputs(student, store, "s"):
            student(batch["img"])
        t_feats = [f.float() for f in head_features(teacher, batch["img"])]
        got = model.distill_terms(store["s"], t_feats, batch)
        head = teacher.model[-1]
        scores = head.forward_head(t_feats, **head.one2many)["scores"]
        parts = scores.split([f.shape[-2] * f.shape[-1] for f in t_feats], dim=-1)
        conf = tuple(p.sigmoid().max(dim=1, keepdim=True).values for p in parts)
        want = sum(
            DistillationModel.loss_sl2(None, a(s.float()), t, i, conf)
            for i, (a, s, t) in enumerate(zip(model.adapters, store["s"], t_feats))
        )
    assert all(f.shape[-1] % 2 == 0 and f.shape[-2] % 2 == 0 for f in t_feats)  # no DWT padding on these levels
    torch.testing.assert_close(got["ex_low"] + got["ex_high"], 4 * 0.5 * want)
    assert float(got["ex_low"]) > 0 and float(got["ex_high"]) > 0


def test_channels_last_frozen_modules_change_nothing_but_layout(tiny_models, synth_obb):
    """The wrapper stores the frozen teacher and amplifier channels-last; their outputs, the terms and the adapters'
    gradients match those computed with the same modules in the default layout."""
    from ds2d2_yolo.integration.hooks import detection_head, head_features

    model, _, teacher, amp, batch = _tiny_ds2d2(tiny_models, synth_obb)
    convs = [m.weight for net in (teacher, amp) for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(w.is_contiguous(memory_format=torch.channels_last) for w in convs)
    assert not all(w.is_contiguous() for w in convs)  # a real layout change (1x1 kernels are both)
    head = detection_head(teacher)
    results = []
    for fmt in (torch.channels_last, torch.contiguous_format):
        teacher.to(memory_format=fmt)
        amp.to(memory_format=fmt)
        with torch.no_grad():
            feats = head_features(teacher, batch["img"])
            outs = [
                *feats,
                *head.forward_head(feats, **head.one2many).values(),
                *amp.forward_head(feats, **amp.one2many).values(),
            ]
        model.zero_grad(set_to_none=True)
        terms = _terms(model, batch)
        sum(terms.values()).backward()
        grads = [p.grad.clone() for p in model.adapters.parameters()]
        results.append((outs, {k: v.item() for k, v in terms.items()}, grads))
    (o_cl, t_cl, g_cl), (o_ref, t_ref, g_ref) = results

    def close(a, b, rel):
        return (a - b).abs().max() <= rel * b.abs().max()

    assert all(close(a, b, 1e-5) for a, b in zip(o_cl, o_ref) if torch.is_tensor(a))
    assert t_cl["ex_low"] == pytest.approx(t_ref["ex_low"], rel=1e-5)
    assert t_cl["ex_high"] == pytest.approx(t_ref["ex_high"], rel=1e-5)
    # The untrained head's class prior (Ultralytics' bias_init, -5 to -8 here) dominates both sides' logits, so the
    # quality-focal gap |sigma(z_s) - sigma(z_t)| is a difference of near-equal numbers and magnifies their rounding.
    assert t_cl["im_full"] == pytest.approx(t_ref["im_full"], rel=5e-2)
    assert t_cl["im_high"] == pytest.approx(t_ref["im_high"], rel=5e-2)
    assert all(close(a, b, 1e-3) for a, b in zip(g_cl, g_ref))


def test_best_pt_loads_without_package(tmp_path, tiny_models, synth_obb):
    """best.pt is a plain Ultralytics checkpoint: it loads and predicts where ds2d2_yolo cannot be imported."""
    trainer = run_training(
        tmp_path,
        model=str(tiny_models["obb_student"]),
        data=str(synth_obb),
        teacher=str(tiny_models["obb_teacher"]),
    )
    img = next((Path(synth_obb).parent / "images" / "val").glob("*.png"))
    code = textwrap.dedent(
        f"""
        import sys
        sys.modules["ds2d2_yolo"] = None  # any import of the package now fails
        from ultralytics import YOLO
        m = YOLO({str(trainer.best)!r})
        r = m.predict({str(img)!r}, imgsz=64, device="cpu", verbose=False)
        print(type(m.model).__module__, type(m.model).__name__, len(r))
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[-3:] == ["ultralytics.nn.tasks", "OBBModel", "1"]


def test_resume_continues_distillation(tmp_path, tiny_models, synth_obb):
    """A run stopped after epoch 1 resumes from last.pt with the saved adapters and amplifier, not fresh ones."""

    class Crash(Exception):
        pass

    kw = dict(model=str(tiny_models["obb_student"]), data=str(synth_obb), teacher=str(tiny_models["obb_teacher"]))
    trainer = DS2D2Trainer(overrides=train_overrides(tmp_path, epochs=2, **kw, **REFERENCE))

    def crash(tr):
        raise Crash

    trainer.add_callback("on_fit_epoch_end", crash)
    with pytest.raises(Crash):
        trainer.train()
    last = trainer.last
    saved = torch.load(last, weights_only=False)
    assert saved["epoch"] == 0 and saved["ds2d2"]["amplifier"] is not None

    resumed = DS2D2Trainer(overrides=dict(resume=str(last)))
    seen = {}

    def on_train_start(tr):
        m = tr.model
        seen["start"] = tr.start_epoch
        seen["connectors"] = all(
            torch.equal(v.float(), saved["ds2d2"]["connectors"][k].float()) for k, v in m.connector_state().items()
        )
        seen["amplifier"] = all(
            torch.equal(v, saved["ds2d2"]["amplifier"]["state_dict"][k]) for k, v in tr._amplifier.state_dict().items()
        )

    resumed.add_callback("on_train_start", on_train_start)
    resumed.train()
    assert seen == {"start": 1, "connectors": True, "amplifier": True}
    rows = read_results(resumed.save_dir)
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert all(r["train/im_high"] != 0 for r in rows)


@pytest.mark.parametrize("teacher", [V8_TEACHER, Y26_TEACHER], ids=["yolov8n-obb", "yolo26n-obb"])
def test_real_dota_teachers(teacher, tmp_path, dota8_yaml):
    """The real DOTA teachers (v8 and end-to-end YOLO26, wider than the student) distil on the real dota8 tiles."""
    need_shared(teacher)
    from ds2d2_yolo.tools.models import scaled_model_yaml

    student = scaled_model_yaml("yolov8-obb.yaml", depth=0.33, width=0.0625, nc=15, out=tmp_path / "s-obb.yaml")
    trainer = run_training(
        tmp_path, model=str(student), data=str(dota8_yaml), teacher=str(teacher), imgsz=128, **REFERENCE
    )
    assert_terms(read_results(trainer.save_dir)[-1], trainer.ds2d2)


@pytest.mark.parametrize(
    "case",
    [
        dict(imgsz=96, rect=True),  # P5 is 3x3 (odd band padding), rect batches
        dict(imgsz=64, multi_scale=0.5, channels=1),  # random input sizes, grayscale data with an RGB teacher
        dict(imgsz=96, rect=True, **REFERENCE),  # DISW and both amplifiers on the same odd grids
    ],
    ids=["odd-rect", "multiscale-gray", "odd-rect-reference"],
)
def test_batches_that_must_work(case, tmp_path, tiny_models):
    """Odd feature sizes, rect batches, multi_scale, grayscale and images without boxes all distil finitely."""
    from ds2d2_yolo.tools.synthetic import make_dataset

    channels = case.pop("channels", 3)
    root = tmp_path / "data"
    data = make_dataset(root, n_train=8, n_val=4, imgsz=case["imgsz"], task="obb", seed=3, channels=channels)
    empty = [p for p in (tmp_path / "data" / "labels" / "train").glob("*.txt") if not p.read_text().strip()]
    assert empty, "the dataset must contain images without boxes"
    trainer = run_training(
        tmp_path, model=str(tiny_models["obb_student"]), data=str(data), teacher=str(tiny_models["obb_teacher"]), **case
    )
    assert trainer.model.student.yaml.get("channels", 3) == channels
    assert_terms(read_results(trainer.save_dir)[-1], trainer.ds2d2)


def test_resume_distill_none(tmp_path, tiny_models, synth_obb):
    """A distill=none run records its method, so resume=last.pt continues it without asking for a teacher."""

    class Crash(Exception):
        pass

    trainer = DS2D2Trainer(
        overrides=train_overrides(tmp_path, model=str(tiny_models["obb_student"]), data=str(synth_obb), distill="none")
        | {"epochs": 2}
    )

    def crash(tr):
        raise Crash

    trainer.add_callback("on_fit_epoch_end", crash)
    with pytest.raises(Crash):
        trainer.train()
    assert torch.load(trainer.last, weights_only=False)["ds2d2"]["args"]["distill"] == "none"
    resumed = DS2D2Trainer(overrides=dict(resume=str(trainer.last)))
    assert resumed.ds2d2["distill"] == "none" and resumed.teacher is None
    resumed.train()
    assert [int(r["epoch"]) for r in read_results(resumed.save_dir)] == [1, 2]
