"""Amplifier recalibration, gradient diagnostics and balancing, per-stream adapters, cross-head mAP."""

from __future__ import annotations

import csv
import json
import math

import pytest
import torch
from conftest import train_overrides

from ds2d2_yolo.config import REFERENCE, DS2D2ArgError, check_args
from ds2d2_yolo.core.diagnostics import DiagnosticsLog, balanced_weights, feature_distance, grad_stats
from ds2d2_yolo.core.schedule import KDSchedule
from ds2d2_yolo.integration.amplifier import amplifier_loss, recalibrate_bn, train_amplifier
from ds2d2_yolo.integration.hooks import detection_head, head_features
from ds2d2_yolo.integration.probe import head_map
from ds2d2_yolo.integration.trainer import DS2D2Trainer

WEIGHTS = "/work/shared/weights/yolov8n-obb-dota.pt"


def test_grad_stats_match_closed_form():
    """Ratios and cosines agree with gradients worked out by hand for linear losses."""
    w = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    det = (w * torch.tensor([3.0, 0.0])).sum()  # gradient (3, 0)
    a = (w * torch.tensor([0.0, 4.0])).sum()  # (0, 4): orthogonal, 4/3 as long
    b = (w * torch.tensor([-6.0, 0.0])).sum()  # (-6, 0): opposite, twice as long
    frozen = torch.tensor(1.0)  # a switched-off term has no gradient path and is left out
    out = grad_stats(det, {"a": a, "b": b, "off": frozen}, [w])
    assert set(out) == {"a", "b"}
    assert out["a"]["ratio"] == pytest.approx(4 / 3) and out["a"]["cos"] == pytest.approx(0.0, abs=1e-7)
    assert out["b"]["ratio"] == pytest.approx(2.0) and out["b"]["cos"] == pytest.approx(-1.0)
    det.backward()  # the graph was kept for the real backward pass
    assert torch.equal(w.grad, torch.tensor([3.0, 0.0]))


def test_feature_distance_and_balanced_weights():
    t = torch.ones(1, 2, 3, 3)
    assert feature_distance([t.clone(), torch.zeros_like(t)], [t, t]) == [0.0, 1.0]
    new = balanced_weights({"a": 0.5, "b": 1.0, "c": 2.0}, {"a": [2.0, 6.0], "b": [0.0], "c": [1e-9]}, 0.25, cap=100)
    assert new["a"] == pytest.approx(0.5 * 0.25 / 4.0)  # the mean ratio 4 becomes 0.25
    assert new["b"] == 1.0  # nothing usable measured: unchanged
    assert new["c"] == pytest.approx(200.0)  # growth is capped


def test_schedule_ramp_and_balance_window():
    s = KDSchedule.from_args({**check_args({"kd_warmup": 2, "balance": "grad", "balance_steps": 3}), "diagnose": 0}, 5)
    assert (s.warmup, s.balance_step) == (10, 10)
    assert [s.scale(i) for i in (0, 4, 9, 10, 50)] == pytest.approx([1 / 11, 5 / 11, 10 / 11, 1, 1])
    assert [i for i in range(20) if s.measures(i)] == [7, 8, 9]
    assert KDSchedule(diagnose=4).measures(8) and not KDSchedule(diagnose=4).measures(9)
    assert KDSchedule().scale(0) == 1.0 and KDSchedule().balance_step is None


@pytest.mark.parametrize(
    "kv,words",
    [
        ({"adapters": "both"}, ("adapters=both", "shared")),
        ({"balance": "loss"}, ("balance=loss", "grad")),
        ({"diagnose": 2.5}, ("diagnose=2.5", "whole number")),
        ({"balance": "grad", "balance_ratio": 0}, ("balance_ratio > 0",)),
        ({"kd_warmup": -1}, ("kd_warmup=-1",)),
        ({"pseudo_conf": 1.5}, ("pseudo_conf=1.5", "(0, 1)")),
    ],
)
def test_new_keys_are_checked(kv, words):
    with pytest.raises(DS2D2ArgError) as e:
        check_args(kv)
    assert all(w in str(e.value) for w in words) and "\n" not in str(e.value)


def test_diagnostics_log_refuses_unknown_column(tmp_path):
    log = DiagnosticsLog(tmp_path / "d.csv")
    log.write({"step": 0, "a/ratio": 1.0})
    log.write({"step": 1, "a/ratio": 2.0})
    with pytest.raises(ValueError, match="not in"):
        log.write({"step": 2, "b/ratio": 1.0})
    assert [r["a/ratio"] for r in log.rows()] == [1.0, 2.0]
    assert log.plot(tmp_path / "d.png").is_file()


def _real_setup(dota8_yaml, tmp_path):
    """The real DOTA teacher as teacher and student on dota8 at 320 px, after `_setup_train` (loaders, validator)."""
    kw = dict(model=WEIGHTS, data=str(dota8_yaml), teacher=WEIGHTS, distill="ds2d2", implicit_high=False)
    tr = DS2D2Trainer(overrides=train_overrides(tmp_path, **kw, imgsz=320, batch=4))
    tr._setup_train()
    return tr


def test_frozen_amplifier_is_the_trained_function(dota8_yaml, tmp_path):
    """After training on the real teacher's HF maps, the frozen amplifier's loss on training batches is within 2 % of
    its train-mode loss, and its running statistics are those of HF maps; with the teacher's statistics left in
    place (what a momentum-0.03 update over a few steps mostly leaves), the gap is larger than 2 %."""
    tr = _real_setup(dota8_yaml, tmp_path)
    teacher, template = tr.teacher.model, tr.teacher.head
    batches = lambda: (tr.preprocess_batch(b) for b in tr.train_loader)  # noqa: E731
    head = train_amplifier(teacher, template, batches, tr.args, epochs=3)
    assert abs(head.eval_loss - head.train_loss) / head.train_loss < 0.02
    bn = next(m for m in head.modules() if isinstance(m, torch.nn.BatchNorm2d))
    bn_t = next(m for m in template.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert not torch.allclose(bn.running_var, bn_t.running_var)
    from ds2d2_yolo.core.dwt import DWT2d
    from ds2d2_yolo.integration.amplifier import _criterion, hf_features

    stale = head
    for m, mt in zip(stale.modules(), template.modules()):
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(mt.running_mean)
            m.running_var.copy_(mt.running_var)
    dwt, crit = DWT2d(), _criterion(teacher, tr.args)
    check = []
    for b in batches():
        with torch.no_grad():
            check.append((hf_features(head_features(teacher, b["img"].float()), dwt), b))
    gap = abs(amplifier_loss(stale, crit, check, False) - amplifier_loss(stale, crit, check, True))
    assert gap / amplifier_loss(stale, crit, check, True) > 0.02
    assert recalibrate_bn(stale, (hf for hf, _ in check)) == len(check)
    after = abs(amplifier_loss(stale, crit, check, False) - amplifier_loss(stale, crit, check, True))
    assert after < gap


def test_head_map_matches_ultralytics_val(dota8_yaml, tmp_path):
    """The teacher head scored on its own features by `head_map` agrees with `YOLO(teacher).val` on the same split:
    an independent computation of the same mAP."""
    from ultralytics import YOLO

    tr = _real_setup(dota8_yaml, tmp_path)
    teacher = tr.teacher.model
    m = head_map(tr, lambda img: head_features(teacher, img), detection_head(teacher), tr.teacher.class_map)
    ref = YOLO(WEIGHTS).val(data=str(dota8_yaml), imgsz=320, batch=8, device="cpu", plots=False, project=str(tmp_path))
    assert m["mAP50"] > 0.3
    assert m["mAP50"] == pytest.approx(ref.box.map50, abs=0.02)
    assert m["mAP50-95"] == pytest.approx(ref.box.map, abs=0.02)


def test_per_stream_adapters_take_only_their_stream(tiny_models, synth_obb, tmp_path):
    """With adapters=per_stream the explicit terms reach only `adapters` and the implicit ones only `adapters_im`."""
    kw = train_overrides(tmp_path, model=str(tiny_models["obb_student"]), data=str(synth_obb))
    kw.update(REFERENCE, teacher=str(tiny_models["obb_teacher"]), distill="ds2d2", adapters="per_stream", amp_epochs=1)
    tr = DS2D2Trainer(overrides=kw)
    tr._setup_train()
    model = tr.model.train()
    batch = tr.preprocess_batch(next(iter(tr.train_loader)))
    from ds2d2_yolo.integration.hooks import capture_head_inputs

    for terms, reached, untouched in (
        (("ex_low", "ex_high"), model.adapters, model.adapters_im),
        (("im_full", "im_high"), model.adapters_im, model.adapters),
    ):
        model.zero_grad(set_to_none=True)
        store = {}
        with capture_head_inputs(model.student, store, "s"):
            model.student(batch["img"])
        with torch.no_grad():
            t_feats = head_features(model.teacher, batch["img"])
        out = model.distill_terms(store["s"], t_feats, batch)
        sum(out[k] for k in terms).backward()
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in reached.parameters())
        assert all(p.grad is None for p in untouched.parameters())
    assert any(k.startswith("adapters_im.") for k in model.connector_state())


def test_warmup_balance_and_diagnostics_end_to_end(tiny_models, synth_obb, tmp_path):
    """A run with a KD warm-up, balance=grad and diagnose=1 logs finite ratios/cosines/distances every step, writes
    balance.json whose new weights are the ones resume would use (last.pt's DS2D2 args), and plots."""
    kw = train_overrides(tmp_path, model=str(tiny_models["obb_student"]), data=str(synth_obb), epochs=2)
    kw.update(REFERENCE, teacher=str(tiny_models["obb_teacher"]), distill="ds2d2", kd_warmup=1, balance="grad")
    kw.update(balance_steps=2, diagnose=1, adapters="per_stream")
    tr = DS2D2Trainer(overrides=kw)
    scales = []
    tr.add_callback("on_train_batch_end", lambda t: scales.append(t.model.kd_scale))
    tr.train()
    nb = len(tr.train_loader)
    assert scales[0] < scales[nb - 1] < 1.0 and scales[nb] == 1.0  # linear ramp over the first epoch
    rows = list(csv.DictReader(open(tr.save_dir / "diagnostics.csv")))
    assert len(rows) == 2 * nb
    for col in ("ex_low/ratio", "im_full/cos", "im_high/ratio", "dist/P3", "dist_im/P5"):
        assert all(math.isfinite(float(r[col])) for r in rows), col
    assert all(-1 <= float(r["im_full/cos"]) <= 1 for r in rows)
    bal = json.loads((tr.save_dir / "balance.json").read_text())
    assert bal["step"] == nb and set(bal["new"]) == {"ex_low", "ex_high", "im_full", "im_high"}
    saved = torch.load(tr.last, weights_only=False)["ds2d2"]["args"]
    assert saved["lambda_imf"] == pytest.approx(bal["new"]["im_full"]) != pytest.approx(bal["old"]["im_full"])
    epochs = list(csv.DictReader(open(tr.save_dir / "diagnostics_epochs.csv")))
    assert len(epochs) == 2 and all(0 <= float(r["cross/mAP50"]) <= 1 for r in epochs)
    assert (tr.save_dir / "diagnostics.png").is_file() and (tr.save_dir / "amplifier.json").is_file()
