"""Reliability battery: bad input fails early in one line, odd data trains, NaN terms are skipped, kills resume,
checkpoints export without the package, DDP keeps our keys and stays in sync, and runs are deterministic.

Everything runs on CPU with the tiny models of conftest.py; the cases and what they prove are listed in
docs/RELIABILITY.md.
"""

from __future__ import annotations

import ast
import csv
import io
import json
import logging
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from copy import deepcopy
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import torch
import yaml
from conftest import REPO, V8_TEACHER, save_checkpoint, tiny_yaml, train_overrides
from ultralytics.models.yolo.obb import OBBTrainer

from ds2d2_yolo import DS2D2Trainer
from ds2d2_yolo.config import REFERENCE, DS2D2ArgError, check_args
from ds2d2_yolo.integration.amplifier import save_amplifier
from ds2d2_yolo.integration.checkpoint import atomic_save
from ds2d2_yolo.integration.hooks import detection_head, freeze, head_features
from ds2d2_yolo.integration.teacher import fingerprint
from ds2d2_yolo.integration.trainer import LOCK_NAME
from ds2d2_yolo.integration.wrapper import DS2D2Model
from ds2d2_yolo.tools.synthetic import CLASSES

DS2D2_COLS = ("train/ex_low", "train/ex_high", "train/im_full", "train/im_high")


class StopRun(Exception):
    """Raised from a callback to end a training run early, once the test has seen what it needs."""


# ----------------------------------------------------------------------------------------------------------------
# helpers
def read_results(save_dir: Path) -> list[dict[str, float]]:
    """Rows of a run's results.csv as floats."""
    with open(save_dir / "results.csv") as f:
        return [{k.strip(): float(v) for k, v in row.items()} for row in csv.DictReader(f)]


@contextmanager
def ultralytics_log() -> Iterator[list[str]]:
    """Collect the messages of Ultralytics' LOGGER (it does not propagate to the root logger, so caplog misses it)."""
    from ultralytics.utils import LOGGER

    messages: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            messages.append(record.getMessage())

    handler = Collect(logging.DEBUG)
    LOGGER.addHandler(handler)
    try:
        yield messages
    finally:
        LOGGER.removeHandler(handler)


def all_finite(tensors: Any) -> bool:
    """True when every floating tensor in a state_dict / iterable is finite."""
    values = tensors.values() if isinstance(tensors, dict) else tensors
    return all(bool(torch.isfinite(v).all()) for v in values if isinstance(v, torch.Tensor) and v.is_floating_point())


def obb_kw(tiny_models: dict[str, Path], data: Path, **kw) -> dict[str, Any]:
    """Student, data and teacher keys of the tiny OBB setup, with DS2D2's reference settings, so that every part
    these tests exercise (both streams, the amplifier and its file, the 1x1 adapters) is in the run."""
    return {
        "model": str(tiny_models["obb_student"]),
        "data": str(data),
        "teacher": str(tiny_models["obb_teacher"]),
        **REFERENCE,
        **kw,
    }


def teacher_model(tiny_models: dict[str, Path], task: str = "obb") -> torch.nn.Module:
    """A fresh in-memory copy of a tiny teacher."""
    return torch.load(tiny_models[f"{task}_teacher"], weights_only=False)["model"].float()


def stop_after(trainer: DS2D2Trainer, steps: int) -> list[dict[str, float]]:
    """Record each optimizer step's loss items and end the run (StopRun) after `steps` steps."""
    seen: list[dict[str, float]] = []

    def on_train_batch_end(tr: DS2D2Trainer) -> None:
        seen.append({k: float(v) for k, v in tr.loss_items.items()})
        if len(seen) >= steps:
            raise StopRun

    trainer.add_callback("on_train_batch_end", on_train_batch_end)
    return seen


# ----------------------------------------------------------------------------------------------------------------
# shared runs
@pytest.fixture(scope="module")
def obb_run(tmp_path_factory, tiny_models, synth_obb) -> dict[str, Path]:
    """A finished 2-epoch OBB distillation run, plus a copy of its last.pt taken after epoch 1 (not stripped)."""
    tmp = tmp_path_factory.mktemp("obb_run")
    trainer = DS2D2Trainer(overrides=train_overrides(tmp, epochs=2, **obb_kw(tiny_models, synth_obb)))
    mid = tmp / "mid_last.pt"

    def on_model_save(tr: DS2D2Trainer) -> None:
        if tr.epoch == 0:
            shutil.copy(tr.last, mid)

    trainer.add_callback("on_model_save", on_model_save)
    trainer.train()
    return {"best": trainer.best, "last": trainer.last, "mid_last": mid, "amplifier": trainer.save_dir / "amplifier.pt"}


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory, tiny_models) -> dict[str, Path]:
    """Teacher and amplifier files that must be refused, each for a different reason."""
    from ultralytics.nn.tasks import OBBModel

    tmp = tmp_path_factory.mktemp("bad")
    out = {"missing": tmp / "no_such_teacher.pt", "garbage": tmp / "garbage.pt", "yaml": tmp / "teacher.yaml"}
    out["garbage"].write_bytes(b"\x00\xffnot a checkpoint\x01" * 64)
    out["yaml"].write_text(Path(tiny_models["obb_student"]).read_text())
    out["dict"], out["tensor"] = tmp / "dict.pt", tmp / "tensor.pt"
    torch.save({"weights": {"a": 1.0}, "epoch": 3}, out["dict"])
    torch.save(torch.ones(3, 3), out["tensor"])
    torch.manual_seed(1)
    four = OBBModel(str(tiny_yaml(tmp, "yolov8-obb.yaml", 0.125, nc=4)), nc=4, verbose=False)
    out["nc4"] = save_checkpoint(four, tmp / "teacher-nc4.pt", {i: f"c{i}" for i in range(4)}, "obb")
    out["names"] = save_checkpoint(
        teacher_model(tiny_models), tmp / "teacher-names.pt", {0: "vehicle", 1: "ship", 2: "harbor"}, "obb"
    )
    # An amplifier trained for another teacher: different weights, hence a different fingerprint.
    other = OBBModel(str(tiny_yaml(tmp, "yolov8-obb.yaml", 0.125)), nc=3, verbose=False)
    out["amplifier"] = save_amplifier(
        freeze(deepcopy(detection_head(other))), tmp / "amplifier-other.pt", fingerprint(other), check_args({}), 1
    )
    return out


# ----------------------------------------------------------------------------------------------------------------
# bad input: one line, DS2D2ArgError, nothing created
BAD_TEACHERS = {
    "missing": ("teacher", "missing", ("not found", "no_such_teacher.pt")),
    "garbage": ("teacher", "garbage", ("not a readable Ultralytics checkpoint",)),
    "plain_dict": ("teacher", "dict", ("not a readable Ultralytics checkpoint",)),
    "tensor": ("teacher", "tensor", ("not a readable Ultralytics checkpoint",)),
    "yaml": ("teacher", "yaml", ("not a .pt checkpoint",)),
    "class_count": ("teacher", "nc4", ("teacher has 4 classes but the data has 3",)),
    "class_names": ("teacher", "names", ("class names differ", "plane")),
    "amplifier_other_teacher": ("amplifier", "amplifier", ("another teacher", "fingerprint mismatch")),
}


@pytest.mark.parametrize("case", list(BAD_TEACHERS))
def test_bad_teacher_or_amplifier_fails_before_training(case, tmp_path, tiny_models, synth_obb, bad_files):
    """A missing, unreadable, non-checkpoint or mismatched teacher/amplifier raises a one-line DS2D2ArgError
    naming the problem, and leaves no run folder behind."""
    key, file, expected = BAD_TEACHERS[case]
    project = tmp_path / "proj"
    overrides = train_overrides(project, **obb_kw(tiny_models, synth_obb, **{key: str(bad_files[file])}))
    with pytest.raises(DS2D2ArgError) as err:
        DS2D2Trainer(overrides=overrides)
    msg = str(err.value)
    assert "\n" not in msg and all(s in msg for s in expected), msg
    assert not any(project.rglob("*")), sorted(project.rglob("*"))


@pytest.mark.parametrize(
    "student,teacher,message",
    [("obb", "detect", "is a 'detect' model but the student is 'obb'"), ("detect", "obb", "is a 'obb' model")],
    ids=["detect_teacher_obb_student", "obb_teacher_detect_student"],
)
def test_wrong_teacher_task(student, teacher, message, tmp_path, tiny_models, synth_obb, synth_det):
    """A detect teacher for an OBB student (and the reverse) is refused before the run folder exists."""
    data = synth_obb if student == "obb" else synth_det
    overrides = train_overrides(
        tmp_path / "proj",
        model=str(tiny_models[f"{student}_student"]),
        data=str(data),
        teacher=str(tiny_models[f"{teacher}_teacher"]),
    )
    with pytest.raises(DS2D2ArgError, match=message) as err:
        DS2D2Trainer(overrides=overrides)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "proj").exists()


@pytest.mark.parametrize(
    "key,value,named",
    [
        ("lambda_exl", -0.5, "lambda_exl=-0.5"),
        ("lambda_imh", float("nan"), "lambda_imh=nan"),
        ("box_kd", "inf", "box_kd=inf"),
        ("wavelet", "morlet-x", "wavelet=morlet-x"),
        ("disw", "diagonal", "disw=diagonal"),
        ("distill", "kd", "distill=kd"),
        ("cwd_tau", 0, "cwd_tau=0"),
    ],
)
def test_bad_values_fail_before_training(key, value, named, tmp_path, tiny_models, synth_obb):
    """A negative or NaN weight, an unknown wavelet, DISW mode or method: one line naming key and value."""
    project = tmp_path / "proj"
    with pytest.raises(DS2D2ArgError) as err:
        DS2D2Trainer(overrides=train_overrides(project, **obb_kw(tiny_models, synth_obb, **{key: value})))
    assert "\n" not in str(err.value) and named in str(err.value), str(err.value)
    assert not project.exists()


def test_obb_disw_on_detect_fails_before_training(tmp_path, tiny_models, synth_det):
    """The rotated DISW rule needs oriented boxes: on a detect model it is refused before the run folder exists."""
    project = tmp_path / "proj"
    kw = dict(model=str(tiny_models["detect_student"]), data=str(synth_det), teacher=str(tiny_models["detect_teacher"]))
    with pytest.raises(DS2D2ArgError, match="disw=obb") as err:
        DS2D2Trainer(overrides=train_overrides(project, **kw, distill="ds2d2", disw="obb"))
    assert "\n" not in str(err.value)
    assert not project.exists()


def test_compile_is_disabled_for_feature_distillation(tmp_path, tiny_models, synth_obb):
    """compile=True would run the student twice a step (model(img), then our loss): it is turned off, with a warning."""
    with ultralytics_log() as log:
        trainer = DS2D2Trainer(overrides=train_overrides(tmp_path, **obb_kw(tiny_models, synth_obb), compile=True))
    assert trainer.args.compile is False
    assert any("'compile' is not supported with distill=ds2d2" in m for m in log)


@pytest.mark.parametrize(
    "extra,named",
    [
        ({"teacher": "missing"}, "no_such_teacher.pt"),
        ({"teacher": "garbage"}, "garbage.pt"),
        ({"lambda_exh": "nan"}, "lambda_exh"),
        ({"wavelet": "nope"}, "wavelet=nope"),
    ],
    ids=["missing_teacher", "garbage_teacher", "nan_weight", "unknown_wavelet"],
)
def test_cli_bad_input_exit_code_2(extra, named, tmp_path, tiny_models, synth_obb, bad_files, capfd):
    """The CLI reports the same mistakes as one stderr line with exit code 2, and creates nothing."""
    from ds2d2_yolo.cli import entrypoint

    kv = {**obb_kw(tiny_models, synth_obb), **extra}
    if kv["teacher"] in bad_files:
        kv["teacher"] = str(bad_files[kv["teacher"]])
    project = tmp_path / "proj"
    argv = ["obb", "train", *(f"{k}={v}" for k, v in kv.items())]
    argv += [f"project={project}", "name=cli", "epochs=1", "imgsz=64", "device=cpu", "workers=0"]
    code = entrypoint(argv)
    err = capfd.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and err.startswith("ds2d2-yolo: error:") and named in err, err
    assert not project.exists()


# ----------------------------------------------------------------------------------------------------------------
# inputs that are not errors
def test_class_order_is_mapped_and_trains(tmp_path, tiny_models, synth_obb):
    """Same classes in another order: the teacher's scores are read through an explicit class map, and it trains."""
    names = {0: "Plane", 1: "vehicle", 2: "SHIP"}  # case differs too: names match after normalisation
    teacher = save_checkpoint(teacher_model(tiny_models), tmp_path / "teacher-perm.pt", names, "obb")
    with ultralytics_log() as log:
        trainer = DS2D2Trainer(
            overrides=train_overrides(tmp_path, **obb_kw(tiny_models, synth_obb, teacher=str(teacher)))
        )
        trainer.train()
    assert trainer.teacher.class_map.tolist() == [1, 2, 0]  # data (vehicle, ship, plane) -> teacher index
    assert any("mapping data->teacher classes 0->1, 1->2, 2->0" in m for m in log)
    row = read_results(trainer.save_dir)[-1]
    assert all(math.isfinite(row[c]) and row[c] != 0 for c in DS2D2_COLS), row
    assert not any("non-finite" in m for m in log)

    # Both sides of an amplifier go through one teacher-class head: features equal to the teacher's must give zero
    # KD. Reading the teacher side through the data->teacher map would compare a class with another one. An
    # untrained head scores every class alike, so give each class its own logit offset first.
    model = trainer.model
    with torch.no_grad():
        for head in (detection_head(model.teacher), model.amplifier):
            for branch in head.cv3:
                branch[-1].bias.add_(torch.tensor([0.0, 2.0, 4.0]))
    batch = trainer.preprocess_batch(next(iter(trainer.train_loader)))
    t_feats = head_features(model.teacher, batch["img"])
    model.adapters = torch.nn.ModuleList(torch.nn.Identity() for _ in t_feats)
    terms = model.distill_terms(t_feats, t_feats, batch)
    assert all(abs(float(v)) < 1e-5 for v in terms.values()), terms


def test_amplifier_reused_without_retraining(tmp_path, tiny_models, synth_obb, obb_run):
    """amplifier.pt written by a first run is accepted by a second run for the same teacher: no retraining."""
    amp_file = obb_run["amplifier"]
    saved = torch.load(amp_file, weights_only=True)
    kw = obb_kw(tiny_models, synth_obb, amplifier=amp_file)
    trainer = DS2D2Trainer(overrides={**train_overrides(tmp_path, **kw), "amp_epochs": saved["epochs"] + 4})
    steps = stop_after(trainer, 1)
    with ultralytics_log() as log, pytest.raises(StopRun):
        trainer.train()
    assert not any("training the high-frequency amplifier" in m for m in log)
    assert not (trainer.save_dir / "amplifier.pt").exists()
    # The run keeps the file's (unfused) head for its checkpoints; the model uses a BatchNorm-folded copy of it.
    assert trainer.model.amplifier is not None
    assert all(torch.equal(v, saved["state_dict"][k]) for k, v in trainer._amplifier.state_dict().items())
    assert math.isfinite(steps[0]["im_high"]) and steps[0]["im_high"] != 0
    # Checkpoints record the epochs the file was trained for, not this run's (unused) amp_epochs.
    assert trainer._ds2d2_state(trainer.ema.ema)["amplifier"]["epochs"] == saved["epochs"]


def test_corrupt_empty_and_missing_labels_train(tmp_path, tiny_models, synth_obb):
    """A corrupt label file is dropped and empty/missing ones are background, as Ultralytics does; DS2D2 trains."""
    src = Path(synth_obb).parent
    root = tmp_path / "data"
    shutil.copytree(src, root, ignore=shutil.ignore_patterns("*.cache"))
    cfg = yaml.safe_load((root / "data.yaml").read_text())
    (root / "data.yaml").write_text(yaml.safe_dump({**cfg, "path": str(root)}))
    labels = sorted((root / "labels" / "train").glob("*.txt"))
    assert all(p.stat().st_size for p in (labels[0], labels[1], labels[3]))
    labels[0].write_text("0 0.5 0.5 not-a-number\n")  # corrupt: Ultralytics skips the image with a warning
    labels[1].write_text("")  # empty: a background image
    labels[3].unlink()  # no label file: a background image too

    trainer = DS2D2Trainer(overrides=train_overrides(tmp_path, **obb_kw(tiny_models, root / "data.yaml")))
    trainer.train()
    ds = trainer.train_loader.dataset
    assert len(ds.labels) == len(labels) - 1  # only the corrupt one is dropped
    assert sum(len(lb["cls"]) == 0 for lb in ds.labels) == 3  # the emptied, the missing and the generated empty
    row = read_results(trainer.save_dir)[-1]
    assert all(math.isfinite(row[c]) for c in DS2D2_COLS), row


MEMORY_SCRIPT = """
import json, resource, sys
from copy import deepcopy
import torch
from ultralytics.nn.tasks import OBBModel, load_checkpoint
from ds2d2_yolo.integration.hooks import freeze
from ds2d2_yolo.config import REFERENCE, check_args
from ds2d2_yolo.integration.wrapper import DS2D2Model
from ds2d2_yolo.core.disw import disw_weights
from ds2d2_yolo.integration.hooks import capture_head_inputs, detection_head, head_features

torch.set_num_threads(1)
peak = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB
torch.manual_seed(0)
student = OBBModel(sys.argv[1], nc=3, verbose=False)
teacher = load_checkpoint(sys.argv[2])[0].float().eval()
for p in teacher.parameters():
    p.requires_grad_(False)
model = DS2D2Model(student, teacher, check_args(REFERENCE), amplifier=freeze(deepcopy(detection_head(teacher)))).train()
imgsz = 256
img = torch.rand(2, 3, imgsz, imgsz)

def boxes(n, size):
    g = torch.Generator().manual_seed(n)
    xy = torch.rand(n, 2, generator=g) * 0.2 + 0.4  # one dense cluster of small boxes
    wh = (torch.rand(n, 2, generator=g) * 6 + 2) / size  # 2..8 px
    return torch.cat([xy, wh, torch.rand(n, 1, generator=g) * 3.14], 1)

def step(n, mode):
    model.disw_mode = mode
    batch = {"img": img, "bboxes": boxes(n, imgsz), "batch_idx": torch.zeros(n), "cls": torch.zeros(n, 1)}
    store = {}
    with capture_head_inputs(student, store, "s"):
        student(img)
    with torch.no_grad():
        t_feats = head_features(teacher, img)
    terms = model.distill_terms(store["s"], t_feats, batch)
    sum(terms.values()).backward()
    params = [*student.parameters(), *model.adapters.parameters()]
    grads_ok = all(bool(torch.isfinite(p.grad).all()) for p in params if p.grad is not None)
    model.zero_grad(set_to_none=True)
    return {k: float(v.detach()) for k, v in terms.items()}, grads_ok

out = {"empty": {m: step(0, m) for m in ("obb", "hbb")}}
for m in ("obb", "hbb"):
    step(1, m)  # warm-up at the same shapes: the peak now holds everything that does not scale with boxes
p0 = peak()
out["crowded"] = {m: step(2000, m) for m in ("obb", "hbb")}
out["terms_growth"] = peak() - p0

H, grid = 4096, (256, 256)  # a 4096 px input: the finest band grid is 256 x 256
scale = torch.tensor([H, H, H, H, 1.0])
for m in ("obb", "hbb"):
    disw_weights(boxes(1, H) * scale, torch.zeros(1), 1, (H, H), grid, m)
p0 = peak()
maps = {m: disw_weights(boxes(2000, H) * scale, torch.zeros(2000), 1, (H, H), grid, m) for m in ("obb", "hbb")}
out["disw_growth"] = peak() - p0
out["disw_mass"] = {m: float(w.double().sum() - w.numel()) for m, w in maps.items()}
print(json.dumps(out))
"""


def test_2000_boxes_finite_and_memory_bounded(tiny_models):
    """2,000 small crowded boxes on one image: every distillation term and gradient is finite, and DISW memory
    grows with the number of boxes, not boxes x grid cells.

    Peak RSS is read in a fresh interpreter (ru_maxrss only grows, so in this process earlier tests would hide
    any growth), after a 1-box warm-up at the same shapes. The bound, 32 MiB, is 1/16 of what one dense per-box
    float32 map on the 256 x 256 band grid would take (2000 x 65536 x 4 B = 524 MB), the allocation a naive DISW
    (one mask per box) makes; the O(boxes) work DISW does needs well under 1 MiB.
    """
    code = subprocess.run(
        [sys.executable, "-c", MEMORY_SCRIPT, str(tiny_models["obb_student"]), str(tiny_models["obb_teacher"])],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )
    assert code.returncode == 0, code.stderr[-3000:]
    out = json.loads(code.stdout.strip().splitlines()[-1])
    for case in ("empty", "crowded"):
        for mode, (terms, grads_ok) in out[case].items():
            assert grads_ok and all(math.isfinite(v) for v in terms.values()), (case, mode, terms)
            assert terms["ex_low"] > 0 and terms["im_full"] > 0, (case, mode, terms)
    bound = 32 * 2**20
    assert out["terms_growth"] < bound, out["terms_growth"]
    assert out["disw_growth"] < bound, out["disw_growth"]
    assert out["disw_mass"] == pytest.approx({"obb": 2000.0, "hbb": 2000.0}, abs=1e-3)  # each box adds mass 1


# ----------------------------------------------------------------------------------------------------------------
# non-finite terms
def test_non_finite_terms_are_skipped(tmp_path, tiny_models, synth_obb, monkeypatch):
    """NaN/Inf distillation terms injected during a real run are logged, counted and skipped: the student, its EMA
    and the checkpoints stay finite, and the other steps still distil."""
    original = DS2D2Model.distill_terms
    calls = {"n": 0}

    def poisoned(self, s_feats, t_feats, batch):
        terms = original(self, s_feats, t_feats, batch)
        calls["n"] += 1
        if calls["n"] % 2:  # steps 1 and 3: the term keeps its graph, so a NaN would reach every gradient
            terms["ex_high"] = terms["ex_high"] * float("nan")
        if calls["n"] == 3:
            terms["im_full"] = terms["im_full"] + float("inf")
        return terms

    monkeypatch.setattr(DS2D2Model, "distill_terms", poisoned)
    trainer = DS2D2Trainer(overrides=train_overrides(tmp_path, batch=2, **obb_kw(tiny_models, synth_obb)))
    seen: dict[str, Any] = {}
    trainer.add_callback("on_train_start", lambda tr: seen.update(student=deepcopy(tr.model.student.state_dict())))
    with ultralytics_log() as log:
        trainer.train()

    assert calls["n"] == 4
    assert trainer.model.skipped == {"ex_high": 2, "im_full": 1}
    warnings = [m for m in log if "non-finite" in m]
    assert len(warnings) == 3 and all("skipped for this step" in m for m in warnings), warnings
    assert any("'ex_high' (nan)" in m for m in warnings) and any("'im_full' (inf)" in m for m in warnings)
    live = trainer.model.student.state_dict()
    assert all_finite(live) and all_finite(trainer.ema.ema.state_dict())
    assert any(not torch.equal(v, live[k]) for k, v in seen["student"].items() if v.is_floating_point())
    last, best = (torch.load(path, weights_only=False) for path in (trainer.last, trainer.best))
    assert all_finite(last["model"].state_dict()) and all_finite(last["ds2d2"]["connectors"])
    assert all_finite(best["model"].state_dict())  # best.pt carries the student only (no connectors)
    row = read_results(trainer.save_dir)[-1]
    assert all(math.isfinite(row[c]) for c in DS2D2_COLS) and row["train/ex_high"] > 0, row


def test_nan_epoch_recovers_student_and_connectors_from_last_pt(tmp_path, tiny_models, synth_obb):
    """A NaN epoch in a real DS2D2 run goes through Ultralytics' own recovery: the live student and the connectors
    come back exactly as last.pt holds them, the EMA is again the wrapper, and the run finishes."""
    trainer = DS2D2Trainer(overrides=train_overrides(tmp_path, epochs=3, **obb_kw(tiny_models, synth_obb)))
    seen: dict[str, Any] = {}

    def poison(tr):
        if tr.epoch == 1 and "poisoned" not in seen:  # not the start epoch: last.pt of epoch 0 exists
            seen["poisoned"] = True  # once: Ultralytics trains the recovered epoch again
            tr.loss = torch.tensor(float("nan"))
            with torch.no_grad():
                tr.model.adapters[0].conv.weight.add_(1.0)

    trainer.add_callback("on_train_epoch_end", poison)
    original = trainer._handle_nan_recovery

    def spy(epoch):
        before = torch.load(trainer.last, weights_only=False) if trainer.last.exists() else None
        recovered = original(epoch)
        if recovered:
            seen.update(
                ckpt=before,
                student={k: v.clone() for k, v in trainer.model.student.state_dict().items()},
                connectors={k: v.clone() for k, v in trainer.model.connector_state().items()},
                ema=trainer.ema.ema,
                model=trainer.model,
            )
        return recovered

    trainer._handle_nan_recovery = spy
    trainer.train()

    assert "ckpt" in seen, "the NaN epoch was not recovered"
    saved = seen["ckpt"]["ema"].float().state_dict()
    assert all(torch.equal(seen["student"][k], v) for k, v in saved.items())
    assert all(torch.equal(seen["connectors"][k], v) for k, v in seen["ckpt"]["ds2d2"]["connectors"].items())
    assert isinstance(seen["model"], DS2D2Model) and isinstance(seen["ema"], DS2D2Model)
    assert seen["ema"].student is not seen["model"].student
    assert torch.load(trainer.last, weights_only=False)["epoch"] == -1  # stripped at the end of a finished run


# ----------------------------------------------------------------------------------------------------------------
# interruption
KILL_SCRIPT = """
import json, sys, time
from pathlib import Path
from ds2d2_yolo import DS2D2Trainer

overrides, progress = json.loads(sys.argv[1]), Path(sys.argv[2])
trainer = DS2D2Trainer(overrides=overrides)

def on_train_batch_end(tr):
    if tr.epoch == 1:  # inside the second epoch, after its first optimizer step
        progress.write_text("mid_epoch")
        time.sleep(600)  # the test kills this process here

trainer.add_callback("on_train_batch_end", on_train_batch_end)
trainer.train()
"""


def wait_for(progress: Path, text: str, proc: subprocess.Popen, log: Path, timeout: float = 240) -> None:
    """Poll until a child process writes `text` to `progress`; fail with its log if it exits or times out."""
    deadline = time.monotonic() + timeout
    while not (progress.exists() and progress.read_text() == text):
        assert proc.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline, f"never reached '{text}': {log.read_text()[-3000:]}"
        time.sleep(0.1)


def test_sigkill_mid_epoch_then_resume(tmp_path, tiny_models, synth_obb):
    """SIGKILL in the middle of the second epoch loses only that epoch: last.pt is the complete, unstripped
    checkpoint of epoch 1 (index 0), and resume continues from epoch 2 with the saved adapters and amplifier (and
    refuses a different teacher)."""
    overrides = train_overrides(tmp_path, epochs=2, **obb_kw(tiny_models, synth_obb))
    progress, log = tmp_path / "progress", tmp_path / "child.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-c", KILL_SCRIPT, json.dumps(overrides), str(progress)],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=REPO,
        )
    try:
        wait_for(progress, "mid_epoch", proc, log)
    finally:
        proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL

    weights = tmp_path / "run" / "weights"
    assert sorted(p.name for p in weights.iterdir()) == ["best.pt", "last.pt"]  # no stray temporary files
    lock = tmp_path / "run" / LOCK_NAME
    assert int(lock.read_text().split()[0]) == proc.pid  # the killed run's lock stays: stale, taken over below
    last = weights / "last.pt"
    ckpt = torch.load(last, weights_only=False)
    assert ckpt["epoch"] == 0 and ckpt["optimizer"] is not None  # epoch 0 finished, epoch 1 lost
    state = ckpt["ds2d2"]
    assert state["amplifier"] is not None and state["connectors"] and all_finite(ckpt["ema"].state_dict())

    # Another teacher (same classes, other weights) is refused on resume: the adapters were fitted to the first.
    from ultralytics.nn.tasks import OBBModel

    torch.manual_seed(2)
    other = OBBModel(str(tiny_yaml(tmp_path, "yolov8-obb.yaml", 0.125)), nc=3, verbose=False)
    other_pt = save_checkpoint(other, tmp_path / "other-teacher.pt", dict(enumerate(CLASSES)), "obb")
    with pytest.raises(DS2D2ArgError, match="not the teacher this run was distilled from"):
        DS2D2Trainer(overrides=dict(resume=str(last), teacher=str(other_pt)))
    assert last.is_file()  # a refused resume leaves the run alone

    # A crash after epoch 2's results row but before its checkpoint: resume must not log epoch 2 twice.
    with open(tmp_path / "run" / "results.csv", "a") as f:
        f.write("2," + ",".join(["0.5"] * (len(read_results(tmp_path / "run")[0]) - 1)) + "\n")
    resumed = DS2D2Trainer(overrides=dict(resume=str(last)))
    seen = {}

    def on_train_start(tr: DS2D2Trainer) -> None:
        seen["start"] = tr.start_epoch
        seen["connectors"] = all(
            torch.equal(v.float(), state["connectors"][k].float()) for k, v in tr.model.connector_state().items()
        )
        seen["amplifier"] = all(
            torch.equal(v, state["amplifier"]["state_dict"][k]) for k, v in tr._amplifier.state_dict().items()
        )

    resumed.add_callback("on_train_start", on_train_start)
    with ultralytics_log() as messages:
        resumed.train()
    assert seen == {"start": 1, "connectors": True, "amplifier": True}
    assert not any("training the high-frequency amplifier" in m for m in messages)
    assert resumed.ds2d2 == state["args"]
    assert [int(r["epoch"]) for r in read_results(resumed.save_dir)] == [1, 2]
    assert any("dropped 1 results.csv row(s)" in m for m in messages)
    stripped = [m for m in messages if m.startswith("Optimizer stripped from")]
    assert [m.split()[3].rstrip(",") for m in stripped] == [str(last), str(weights / "best.pt")], stripped
    assert not lock.exists()  # released when training ends


WRITER_KILL_SCRIPT = """
import sys, time
from pathlib import Path
import torch
import torch.serialization as serialization
from ds2d2_yolo.integration.checkpoint import atomic_save

path, progress = Path(sys.argv[1]), Path(sys.argv[2])
real_save = serialization._save

class StallAfterFirstTensor:
    def __init__(self, zip_file):
        self.zip_file = zip_file

    def write_record(self, name, data, n):
        self.zip_file.write_record(name, data, n)
        if name.startswith("data/"):  # one tensor is on disk, the next is not: the file is half-written
            progress.write_text("writing")
            time.sleep(600)  # the test kills this process here

    def __getattr__(self, name):
        return getattr(self.zip_file, name)

serialization._save = lambda obj, zip_file, *args: real_save(obj, StallAfterFirstTensor(zip_file), *args)
atomic_save({"epoch": 2, "a": torch.ones(500_000), "b": torch.ones(500_000)}, path)
"""


def test_sigkill_inside_checkpoint_writer(tmp_path):
    """SIGKILL while atomic_save is half-way through writing last.pt (one tensor written, the next not) leaves the
    previous last.pt byte-identical and loadable; only a hidden temporary file is left, never a truncated last.pt."""
    last = tmp_path / "last.pt"
    atomic_save({"epoch": 1, "w": torch.arange(10.0)}, last)
    before = last.read_bytes()
    progress, log = tmp_path / "progress", tmp_path / "child.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-c", WRITER_KILL_SCRIPT, str(last), str(progress)],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=REPO,
        )
    try:
        wait_for(progress, "writing", proc, log, timeout=120)
    finally:
        proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL
    assert last.read_bytes() == before and torch.load(last, weights_only=True)["epoch"] == 1
    temps = [p for p in tmp_path.iterdir() if p.name.startswith(".last.pt.") and p.name.endswith(".tmp")]
    assert len(temps) == 1 and 0 < temps[0].stat().st_size < 4_000_000  # the kill landed half-way through the write


class PicklingCrash:
    """An object whose pickling raises (the first `fail` times), so torch.save fails midway through a checkpoint."""

    calls = 0

    def __init__(self, error: type[BaseException], fail: int = 1_000_000) -> None:
        self.error, self.fail = error, fail

    def __reduce__(self):
        PicklingCrash.calls += 1
        if PicklingCrash.calls <= self.fail:
            raise self.error("crash while pickling")
        return (str, ("recovered",))


def test_atomic_save_crash_keeps_previous_file(tmp_path, monkeypatch):
    """A crash while a checkpoint is being written leaves the previous file byte-identical and no temporary file
    behind, for errors and KeyboardInterrupt alike; and when Ultralytics' patched torch.save retries after a
    transient RuntimeError, the retry writes a clean file instead of appending to the failed attempt."""
    import ds2d2_yolo.integration.checkpoint as checkpoint_module

    path = tmp_path / "last.pt"
    atomic_save({"epoch": 1, "w": torch.arange(10.0)}, path)
    before = path.read_bytes()
    temps: list[str] = []
    real_mkstemp = checkpoint_module.tempfile.mkstemp

    def mkstemp(*args, **kwargs):
        fd, name = real_mkstemp(*args, **kwargs)
        temps.append(name)
        return fd, name

    monkeypatch.setattr(checkpoint_module.tempfile, "mkstemp", mkstemp)
    for error in (ValueError, KeyboardInterrupt):
        with pytest.raises(error):
            atomic_save({"epoch": 2, "w": torch.zeros(100_000), "z": PicklingCrash(error)}, path)
        assert path.read_bytes() == before
        assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]
    assert len(temps) == 2 and all(Path(t).parent == tmp_path for t in temps)
    assert torch.load(path, weights_only=True)["epoch"] == 1

    PicklingCrash.calls = 0
    atomic_save({"epoch": 3, "w": torch.arange(100_000.0), "z": PicklingCrash(RuntimeError, fail=1)}, path)
    assert PicklingCrash.calls == 2  # failed once, retried once by ultralytics.utils.patches.torch_save
    ckpt = torch.load(path, weights_only=False)
    assert ckpt["epoch"] == 3 and ckpt["z"] == "recovered" and torch.equal(ckpt["w"], torch.arange(100_000.0))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]


# ----------------------------------------------------------------------------------------------------------------
# multi-GPU readiness (run on CPU)
def test_ddp_script_carries_ds2d2_keys(tmp_path, tiny_models, synth_obb):
    """Ultralytics' generated DDP worker script rebuilds the trainer with our (non-default) DS2D2 keys intact."""
    pytest.importorskip("cloudpickle", minversion="3.1.1")  # else generate_ddp_file would try to pip install it
    from ultralytics.utils import DEFAULT_CFG_DICT
    from ultralytics.utils.dist import ddp_cleanup, generate_ddp_file
    from ultralytics.utils.patches import torch_load

    from ds2d2_yolo.integration.trainer import CarriedArgs

    custom = dict(lambda_exl=0.123, lambda_imh=0.0, wavelet="db2", disw="hbb", amp_epochs=2, implicit_full=False)
    trainer = DS2D2Trainer(overrides=train_overrides(tmp_path, **obb_kw(tiny_models, synth_obb, **custom)))
    file = generate_ddp_file(trainer)
    try:
        calls = [
            node
            for node in ast.walk(ast.parse(Path(file).read_text()))
            if isinstance(node, ast.Call) and ast.unparse(node.func) == "state['trainer']"
        ]
        assert len(calls) == 1
        kw = {k.arg: ast.unparse(k.value) for k in calls[0].keywords}
        assert kw == {"cfg": "cfg", "overrides": "state['args']", "_callbacks": "state['callbacks']"}

        state = torch_load(Path(file).with_suffix(".pt"), map_location="cpu")
        assert not any(k in state["args"] for k in custom)  # our keys are not Ultralytics args...
        cfg = DEFAULT_CFG_DICT.copy()
        cfg.update(save_dir="")  # exactly as the generated script does
        worker = state["trainer"](cfg=cfg, overrides=state["args"], _callbacks=state["callbacks"])
        worker.model = state["model"]
    finally:
        ddp_cleanup(trainer, file)
    assert not Path(file).exists() and not Path(file).with_suffix(".pt").exists()
    assert type(worker) is type(trainer)
    assert worker.ds2d2 == trainer.ds2d2 and worker.ds2d2["lambda_exl"] == 0.123  # ...they ride in the callbacks
    assert {k: worker.ds2d2[k] for k in custom} == custom
    carried = [cb for cbs in worker.callbacks.values() for cb in cbs if isinstance(cb, CarriedArgs)]
    assert len(carried) == 1 and carried[0].args == trainer.ds2d2
    assert worker.teacher.fingerprint == trainer.teacher.fingerprint


def _ddp_worker(rank: int, world: int, port: int, student_yaml: str, teacher_pt: str, out_dir: str) -> None:
    """One DDP rank: wrap the tiny student, take 3 SGD steps on this rank's own batch, save gathered parameters."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel
    from ultralytics.cfg import get_cfg
    from ultralytics.nn.tasks import OBBModel, load_checkpoint

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.manual_seed(rank)  # different initial weights per rank: DDP must start them from rank 0's
        student = OBBModel(student_yaml, nc=3, verbose=False)
        student.args = get_cfg()  # loss hyperparameters, as the trainer sets them
        teacher = load_checkpoint(teacher_pt)[0].float().eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
        amp = freeze(deepcopy(detection_head(teacher)))
        model = DS2D2Model(student, teacher, check_args({}), amplifier=amp).train()
        ddp = DistributedDataParallel(model, find_unused_parameters=True)
        initial = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
        g = torch.Generator().manual_seed(100 + rank)  # different data per rank
        n = 6
        batch = {
            "img": torch.rand(2, 3, 64, 64, generator=g),
            "cls": torch.randint(0, 3, (n, 1), generator=g).float(),
            "bboxes": torch.cat(
                (
                    torch.rand(n, 2, generator=g) * 0.6 + 0.2,  # centres
                    torch.rand(n, 2, generator=g) * 0.2 + 0.05,  # sizes
                    torch.rand(n, 1, generator=g),  # angles
                ),
                1,
            ),
            "batch_idx": (torch.arange(n) >= n // 2).float(),
        }
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        items = {}
        for _ in range(3):
            loss, items = ddp(batch)
            opt.zero_grad()
            loss.sum().backward()
            opt.step()
        final = torch.cat([p.detach().flatten() for p in model.parameters()])
        gathered = [torch.empty_like(final) for _ in range(world)]
        dist.all_gather(gathered, final)
        n_student = sum(1 for _ in student.parameters())
        torch.save(
            {
                "initial": initial,
                "gathered": gathered,
                "items": {k: float(v) for k, v in items.items()},
                "n_params": (n_student, sum(1 for _ in model.adapters.parameters()), sum(1 for _ in ddp.parameters())),
            },
            Path(out_dir) / f"rank{rank}.pt",
        )
    finally:
        dist.destroy_process_group()


def test_ddp_gloo_two_ranks_stay_in_sync(tmp_path, tiny_models):
    """DS2D2Model trains under DistributedDataParallel (gloo, 2 CPU processes, find_unused_parameters=True):
    after 3 steps on different data per rank, student and adapter parameters are identical across ranks and moved."""
    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    args = (2, port, str(tiny_models["obb_student"]), str(tiny_models["obb_teacher"]), str(tmp_path))
    mp.spawn(_ddp_worker, args=args, nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    n_student, n_adapters, n_ddp = r0["n_params"]
    assert n_adapters > 0 and n_ddp == n_student + n_adapters  # adapters train with the student; teacher stays out
    assert torch.equal(r0["initial"], r1["initial"])  # DDP broadcast rank 0's weights over rank 1's own init
    assert torch.equal(r0["gathered"][0], r0["gathered"][1]) and torch.equal(r1["gathered"][0], r0["gathered"][0])
    assert not torch.equal(r0["gathered"][0], r0["initial"])
    assert all(math.isfinite(v) for v in r0["items"].values())
    assert r0["items"]["box_loss"] != r1["items"]["box_loss"]  # the ranks really saw different batches


# ----------------------------------------------------------------------------------------------------------------
# export
EXPORT_SCRIPT = """
import json, sys
sys.modules["ds2d2_yolo"] = None  # any import of the package now fails
from copy import deepcopy
import numpy as np, onnx, onnxruntime as ort, torch
from onnx import numpy_helper
from ultralytics import YOLO
from ultralytics.nn.tasks import OBBModel
from ultralytics.utils.patches import torch_load

out = {}
for path in sys.argv[1:]:
    ckpt = torch_load(path, map_location="cpu")
    student = (ckpt.get("ema") or ckpt["model"]).float().eval()
    plain = OBBModel(student.yaml, nc=len(student.names), verbose=False)  # the student architecture with nothing added
    same_keys = list(student.state_dict()) == list(plain.state_dict())
    f = YOLO(path).export(format="onnx", imgsz=64, simplify=False, opset=17, device="cpu", verbose=False)
    graph = onnx.load(f).graph
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    fused = deepcopy(student).fuse().eval()
    sd = {k: v.numpy() for k, v in fused.state_dict().items() if v.is_floating_point() and v.numel()}
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = fused(x)[0].numpy()
    got = ort.InferenceSession(f, providers=["CPUExecutionProvider"]).run(None, {graph.input[0].name: x.numpy()})[0]
    out[path] = {
        "same_keys": same_keys,
        "ds2d2_key": "ds2d2" in ckpt,
        "optimizer": ckpt.get("optimizer") is not None,
        "init_names_equal": sorted(inits) == sorted(sd),
        "init_values_equal": all(k in inits and np.array_equal(inits[k], v) for k, v in sd.items()),
        "n_init": int(sum(v.size for v in inits.values())),
        "n_student": int(sum(v.size for v in sd.values())),
        "shape": [list(ref.shape), list(got.shape)],
        "max_abs": float(np.abs(ref - got).max()),
        "max_ref": float(np.abs(ref).max()),
    }
print(json.dumps(out))
"""


def test_checkpoints_export_to_onnx_without_package(obb_run):
    """best.pt, the final last.pt and a mid-training last.pt (optimizer and "ds2d2" state still in it) export to
    ONNX where ds2d2_yolo cannot be imported; onnxruntime matches PyTorch and the ONNX weights are exactly the
    (fused) student's: no adapter, teacher or amplifier tensor rides along."""
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    paths = [str(obb_run[k]) for k in ("best", "last", "mid_last")]
    code = subprocess.run([sys.executable, "-c", EXPORT_SCRIPT, *paths], capture_output=True, text=True, timeout=300)
    assert code.returncode == 0, code.stderr[-3000:]
    out = json.loads(code.stdout.strip().splitlines()[-1])
    assert out[paths[2]]["ds2d2_key"] and out[paths[2]]["optimizer"]  # really the unstripped mid-training file
    for path, r in out.items():
        assert r["same_keys"] and r["init_names_equal"] and r["init_values_equal"], (path, r)
        assert r["n_init"] == r["n_student"], (path, r)
        assert r["shape"][0] == r["shape"][1], (path, r)
        assert r["max_abs"] <= 1e-4 * max(1.0, r["max_ref"]) + 1e-4, (path, r)


# ----------------------------------------------------------------------------------------------------------------
# determinism
def test_same_seed_same_losses(tmp_path, tiny_models, synth_obb):
    """Two runs with the same seed on CPU log the same per-step losses (YOLO and DS2D2 terms) for the first steps,
    amplifier training included."""
    runs = []
    for i in range(2):
        trainer = DS2D2Trainer(
            overrides=train_overrides(tmp_path / str(i), batch=2, seed=7, **obb_kw(tiny_models, synth_obb))
        )
        steps = stop_after(trainer, 3)
        with pytest.raises(StopRun):
            trainer.train()
        runs.append(steps)
    assert len(runs[0]) == 3 and set(runs[0][0]) >= {"box_loss", "ex_low", "ex_high", "im_full", "im_high"}
    for a, b in zip(*runs):
        assert a.keys() == b.keys()
        assert all(abs(a[k] - b[k]) <= 1e-6 for k in a), (a, b)
    assert runs[0][0] != runs[0][2]  # the losses do move between steps: the comparison is not vacuous


# ----------------------------------------------------------------------------------------------------------------
# resume: the named checkpoint, next to it, and only when something is left to train
def test_resume_continues_the_named_checkpoint(tmp_path, obb_run, monkeypatch, capfd):
    """`resume model=X` (and resume=X) continues exactly X, also when a newer run exists, and writes beside X even in
    a copied run folder; a finished run, or a missing file, is one line before the teacher or the data are read."""
    from ds2d2_yolo.cli import entrypoint

    monkeypatch.chdir(tmp_path)  # Ultralytics' resume=True would take the newest last.pt under here
    named = tmp_path / "copy" / "weights" / "last.pt"  # a copy of the run: its train_args name the original folder
    named.parent.mkdir(parents=True)
    shutil.copy(obb_run["mid_last"], named)
    time.sleep(0.05)
    decoy = tmp_path / "runs" / "newer" / "weights" / "last.pt"
    decoy.parent.mkdir(parents=True)
    shutil.copy(obb_run["mid_last"], decoy)
    original = Path(torch.load(named, weights_only=False)["train_args"]["save_dir"])
    before = {p: p.stat().st_mtime_ns for p in original.rglob("*")}
    for overrides in (dict(model=str(named), resume=True), dict(resume=str(named))):
        trainer = DS2D2Trainer(overrides=overrides)
        assert trainer.args.resume == str(named) and trainer.resume
        assert trainer.save_dir == named.parent.parent and trainer.last == named
        trainer._release_lock()
    assert {p: p.stat().st_mtime_ns for p in original.rglob("*")} == before  # the original folder is untouched
    assert not (decoy.parent.parent / "args.yaml").exists()

    def never(*args, **kwargs):
        raise AssertionError("read before the resume was checked")

    monkeypatch.setattr("ds2d2_yolo.integration.trainer.load_teacher", never)
    monkeypatch.setattr(DS2D2Trainer, "get_dataset", never)
    for overrides, message in (
        (dict(resume=str(obb_run["last"])), "nothing to resume"),  # final last.pt, optimizer stripped
        (dict(model=str(obb_run["best"]), resume=True), "nothing to resume"),
        (dict(resume=str(tmp_path / "gone" / "last.pt")), "not found"),  # never "the newest run" instead
    ):
        with pytest.raises(DS2D2ArgError, match=message) as err:
            DS2D2Trainer(overrides=overrides)
        assert "\n" not in str(err.value)
    assert entrypoint(["train", "resume", f"model={obb_run['last']}"]) == 2
    err = capfd.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "nothing to resume" in err, err


def test_run_folder_lock(tmp_path, tiny_models, synth_obb):
    """A run folder held by a live process is refused in one line, before anything in it is touched; a lock whose
    process is gone is taken over."""
    run = tmp_path / "run"
    (run / "weights").mkdir(parents=True)
    (run / "results.csv").write_text("epoch,time\n1,2\n")
    lock = run / LOCK_NAME
    lock.write_text(f"{os.getppid()} {socket.gethostname()}\n")  # pytest's parent: alive, and not this process
    overrides = train_overrides(tmp_path, **obb_kw(tiny_models, synth_obb))  # project=tmp_path name=run exist_ok
    with pytest.raises(DS2D2ArgError, match=f"in use by process {os.getppid()}") as err:
        DS2D2Trainer(overrides=overrides)
    assert "\n" not in str(err.value)
    assert (run / "results.csv").read_text() == "epoch,time\n1,2\n" and not (run / "args.yaml").exists()
    assert lock.read_text().split()[0] == str(os.getppid())

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    lock.write_text(f"{gone.pid} {socket.gethostname()}\n")
    trainer = DS2D2Trainer(overrides=overrides)
    assert lock.read_text().split()[0] == str(os.getpid())
    trainer._release_lock()
    assert not lock.exists()


def _save_forever(folder: str, started: Any) -> None:
    """Child process: write last.pt, best.pt and a stripped final.pt in a loop, counting the rounds it starts."""
    from ds2d2_yolo.integration.trainer import _strip_atomic

    torch.set_num_threads(1)
    out = Path(folder)
    # Megabytes per file: the write is a long C call, during which Python cannot act on SIGINT but SIGTERM kills.
    ckpt = {"epoch": 0, "model": None, "ema": torch.nn.Linear(300, 300), "optimizer": {"m": torch.rand(2_000_000)}}
    while True:
        started.value += 1
        ckpt["epoch"] += 1
        atomic_save(ckpt, out / "last.pt")
        atomic_save(ckpt, out / "best.pt")
        atomic_save(ckpt, out / "final.pt")
        _strip_atomic(out / "final.pt")


def test_sigint_then_sigterm_during_saves(tmp_path):
    """SIGINT and then SIGTERM, landing while checkpoints are written and stripped, repeated: every file is whole
    and loads, and no temporary file is left (the signals wait until the file is in place)."""
    import multiprocessing
    import random

    ctx, rng = multiprocessing.get_context("fork"), random.Random(0)
    for trial in range(12):
        folder = tmp_path / str(trial)
        folder.mkdir()
        started = ctx.Value("i", 0)
        proc = ctx.Process(target=_save_forever, args=(str(folder), started))
        proc.start()
        deadline = time.monotonic() + 60
        while started.value < 2 + trial % 3:
            assert proc.is_alive() and time.monotonic() < deadline
            time.sleep(0.001)
        time.sleep(rng.uniform(0, 0.01))
        os.kill(proc.pid, signal.SIGINT)
        time.sleep(rng.uniform(0, 0.003))  # an impatient SIGTERM, while Python still waits to act on the SIGINT
        if proc.is_alive():
            os.kill(proc.pid, signal.SIGTERM)
        proc.join(30)
        assert proc.exitcode is not None
        assert sorted(p.name for p in folder.iterdir()) == ["best.pt", "final.pt", "last.pt"], trial
        epochs = [torch.load(folder / f, weights_only=False)["epoch"] for f in ("last.pt", "best.pt", "final.pt")]
        assert epochs[0] >= epochs[1] >= 1 and epochs[2] in (-1, epochs[1], epochs[1] - 1), (trial, epochs)


# ----------------------------------------------------------------------------------------------------------------
# restricted loading: a checkpoint that would run code is refused before it runs
class RunsCode:
    """Unpickles by calling exec: what a malicious checkpoint does."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('ran')",))


def test_checkpoints_that_run_code_are_refused(tmp_path, tiny_models, synth_obb, monkeypatch):
    """A teacher, a resume file and a visualize model that would run code when unpickled are refused in one line,
    and the code never runs; DS2D2_UNSAFE_LOAD=1 loads trusted files the old way (and then the code does run)."""
    from ds2d2_yolo.integration.teacher import read_teacher
    from ds2d2_yolo.tools.visualize import run_visualize

    marker = tmp_path / "ran"
    evil = tmp_path / "evil.pt"
    torch.save({"model": RunsCode(marker), "ema": None, "epoch": 0, "train_args": {"epochs": 3}}, evil)
    project = tmp_path / "proj"
    image = next((synth_obb.parent / "images" / "val").iterdir())
    cases = [
        lambda: DS2D2Trainer(overrides=train_overrides(project, **obb_kw(tiny_models, synth_obb, teacher=str(evil)))),
        lambda: DS2D2Trainer(overrides=dict(resume=str(evil))),
        lambda: run_visualize(evil, tiny_models["obb_teacher"], image, imgsz=64, out=tmp_path / "b.png"),
    ]
    for case in cases:
        with pytest.raises(DS2D2ArgError, match="was not loaded: it references 'exec'") as err:
            case()
        assert "\n" not in str(err.value) and "DS2D2_UNSAFE_LOAD=1" in str(err.value)
    assert not marker.exists() and not project.exists()
    # Restricted loading reads real Ultralytics checkpoints (a resumed DS2D2 last.pt is covered by the resume tests).
    if V8_TEACHER.exists():
        assert type(read_teacher(V8_TEACHER, "obb")).__name__ == "OBBModel"
    monkeypatch.setenv("DS2D2_UNSAFE_LOAD", "1")
    with pytest.raises(DS2D2ArgError):
        read_teacher(evil, "obb")  # not a model, once unpickled
    assert marker.read_text() == "ran"  # the opt-out really unpickles: the file above really runs code


# ----------------------------------------------------------------------------------------------------------------
# more bad input, before expensive work and with nothing left behind
def test_teacher_reading_other_levels_fails_early(tmp_path, tiny_models, synth_det):
    """A P2 teacher for a P3-P5 student is refused when the teacher is read: one line, no run folder."""
    from ultralytics.nn.tasks import DetectionModel

    p2 = DetectionModel(str(tiny_yaml(tmp_path, "yolov8-p2.yaml", 0.125)), nc=3, verbose=False)
    teacher = save_checkpoint(p2, tmp_path / "teacher-p2.pt", dict(enumerate(CLASSES)), "detect")
    project = tmp_path / "proj"
    kw = dict(model=str(tiny_models["detect_student"]), data=str(synth_det), teacher=str(teacher))
    with pytest.raises(DS2D2ArgError, match=r"reads levels P2/P3/P4/P5 .* the student reads P3/P4/P5") as err:
        DS2D2Trainer(overrides=train_overrides(project, **kw))
    assert "\n" not in str(err.value) and not project.exists()


def _copy_data(src_yaml: Path, dst: Path) -> tuple[Path, Path]:
    """Copy a synthetic dataset; return its data yaml and train labels folder."""
    shutil.copytree(src_yaml.parent, dst, ignore=shutil.ignore_patterns("*.cache"))
    cfg = yaml.safe_load((dst / "data.yaml").read_text())
    (dst / "data.yaml").write_text(yaml.safe_dump({**cfg, "path": str(dst)}))
    return dst / "data.yaml", dst / "labels" / "train"


def _corrupt(labels: Path, images: Path, case: str) -> None:
    if case == "invalid_labels":
        for f in labels.glob("*.txt"):
            f.write_text("0 0.5 0.5 not-a-number\n")
    elif case == "detect_labels_for_obb":
        for f in labels.glob("*.txt"):
            f.write_text("0 0.5 0.5 0.2 0.2\n")
    elif case == "empty_train_folder":
        for f in images.iterdir():
            f.unlink()


@pytest.mark.parametrize(
    "case,message",
    [
        ("invalid_labels", "has a valid label file (e.g. could not convert string to float"),
        ("detect_labels_for_obb", "are detect boxes ('cls xc yc w h') but the model is OBB"),
        ("empty_train_folder", "no train images found in"),
    ],
)
def test_bad_dataset_fails_in_setup_with_one_line(case, message, tmp_path, tiny_models, synth_obb):
    """Every label invalid, detect labels for an OBB model, or an empty train folder: one line during setup
    (before the amplifier or any epoch) naming the problem and the fix, and no run folder left behind."""
    data, labels = _copy_data(synth_obb, tmp_path / "data")
    _corrupt(labels, tmp_path / "data" / "images" / "train", case)
    project = tmp_path / "proj"
    trainer = DS2D2Trainer(overrides=train_overrides(project, **obb_kw(tiny_models, data)))
    with ultralytics_log() as log, pytest.raises(DS2D2ArgError) as err:
        trainer.train()
    assert message in str(err.value) and "\n" not in str(err.value), str(err.value)
    assert not any("training the high-frequency amplifier" in m for m in log)
    assert not project.exists(), sorted(project.rglob("*"))


def test_bad_setup_keys_fail_before_the_run_folder(tmp_path, tiny_models, synth_obb, capfd):
    """No data=, a GPU this machine lacks, an unwritable project= and an unwritable amplifier.pt: one line each
    (exit code 2 on the command line), and nothing left behind."""
    from ds2d2_yolo.cli import entrypoint

    project = tmp_path / "proj"
    kw = obb_kw(tiny_models, synth_obb)
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    cases = [
        (train_overrides(project, **{**kw, "data": None}), "no data= given"),
        (train_overrides(blocker / "runs", **kw), "cannot write the run folder"),  # a file where a folder must be
    ]
    if not torch.cuda.is_available():
        cases.append((train_overrides(project, **kw, device="0"), "device=0 is not available"))
    for overrides, message in cases:
        with pytest.raises(DS2D2ArgError, match=message) as err:
            DS2D2Trainer(overrides=overrides)
        assert "\n" not in str(err.value)
        assert not project.exists() and not (blocker / "runs").exists()

    (project / "run" / "amplifier.pt").mkdir(parents=True)  # the amplifier could be trained but not saved
    with pytest.raises(DS2D2ArgError, match="cannot write the amplifier to") as err:
        DS2D2Trainer(overrides=train_overrides(project, **kw))
    assert not (project / "run" / LOCK_NAME).exists()

    argv = ["obb", "train", *(f"{k}={v}" for k, v in kw.items()), f"project={blocker / 'runs'}", "imgsz=64"]
    assert entrypoint(argv) == 2
    err = capfd.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "cannot write the run folder" in err, err


def test_doubtful_settings_warn_or_refuse(tmp_path, tiny_models, synth_obb):
    """Settings that used to pass silently: a huge weight, an unused amplifier= or teacher=, and an untrained
    teacher warn; amp_epochs=0 (an untrained amplifier) is refused; an OBB yaml named without "obb" is OBB."""
    from ds2d2_yolo.config import warn_args
    from ds2d2_yolo.integration.teacher import read_teacher

    warned = warn_args(check_args({"lambda_exh": 1e30}))
    assert len(warned) == 1 and "lambda_exh=1e+30" in warned[0]
    assert warn_args(check_args({})) == []
    assert (
        "amplifier=a.pt' is ignored: implicit_high=false"
        in warn_args(check_args({"amplifier": "a.pt", "implicit_high": False}))[0]
    )
    assert "distill=cwd" in warn_args(check_args({"amplifier": "a.pt", "distill": "cwd"}))[0]
    assert "ignored with distill=none" in warn_args(check_args({"teacher": "t.pt", "distill": "none"}))[0]
    project = tmp_path / "proj"
    with pytest.raises(DS2D2ArgError, match="amp_epochs=0") as err:
        DS2D2Trainer(overrides=train_overrides(project, **obb_kw(tiny_models, synth_obb), amp_epochs=0))
    assert "implicit_high=false" in str(err.value) and not project.exists()

    with ultralytics_log() as log:
        read_teacher(tiny_models["obb_teacher"], "obb")  # built, never trained
    assert any("looks untrained" in m for m in log)
    if V8_TEACHER.exists():
        with ultralytics_log() as log:
            read_teacher(V8_TEACHER, "obb")
        assert not any("looks untrained" in m for m in log)

    plain_name = tmp_path / "student.yaml"  # an OBB head, but nothing in the name says so
    shutil.copy(tiny_models["obb_student"], plain_name)
    trainer = DS2D2Trainer(overrides=train_overrides(tmp_path, **obb_kw(tiny_models, synth_obb, model=str(plain_name))))
    assert trainer.args.task == "obb" and isinstance(trainer, OBBTrainer)
    trainer._release_lock()


def test_checkpoint_files_modes_sizes_and_columns(obb_run, tmp_path):
    """Checkpoints and amplifier.pt get Ultralytics' file mode (0666 less the umask, not mkstemp's 0600); best.pt is
    the plain student (no adapters or amplifier: those stay in last.pt); validation has no always-zero KD columns
    and results.png draws the KD terms."""
    from ds2d2_yolo.integration.results_plot import plot_results, results_columns

    mask = os.umask(0o022)
    os.umask(mask)
    for key in ("last", "best", "amplifier"):
        assert obb_run[key].stat().st_mode & 0o777 == 0o666 & ~mask, key
    last, best = (torch.load(obb_run[k], weights_only=False) for k in ("last", "best"))
    assert set(best["ds2d2"]) == {"version", "args"} and best["ds2d2"]["args"] == last["ds2d2"]["args"]
    assert last["ds2d2"]["amplifier"] is not None and last["ds2d2"]["connectors"]
    assert not [v for v in best["ds2d2"]["args"].values() if isinstance(v, torch.Tensor)]

    def serialized(obj: Any) -> int:
        buf = io.BytesIO()
        torch.save(obj, buf)
        return buf.tell()

    # The DS2D2 record costs best.pt under 4 kB over the plain student; last.pt carries adapters and amplifier.
    assert serialized(best) - serialized({k: v for k, v in best.items() if k != "ds2d2"}) < 4096
    assert obb_run["best"].stat().st_size < obb_run["last"].stat().st_size / 2

    header = (obb_run["last"].parent.parent / "results.csv").read_text().splitlines()[0].split(",")
    assert not [c for c in header if c.startswith("val/") and "loss" not in c], header
    top, bottom = results_columns(header, ("ex_low", "ex_high", "im_full", "im_high"))
    assert set(DS2D2_COLS) <= set(top) and "train/box_loss" in top and "metrics/mAP50(B)" in bottom
    out = plot_results(obb_run["last"].parent.parent / "results.csv", ("ex_low",), out=tmp_path / "results.png")
    assert out.stat().st_size > 10_000


# ----------------------------------------------------------------------------------------------------------------
# tools: outputs as Ultralytics' predict writes them, one mode's help, dataset preparation
def test_slice_and_visualize_write_run_folders(tmp_path, tiny_models, synth_obb):
    """slice and visualize write under <project>/<mode>, <mode>2, ... and say "Results saved to"; the colour bars
    of bands.png carry no shared scale label (it sat on the panel titles)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ds2d2_yolo.tools.sliced import run_slice
    from ds2d2_yolo.tools.visualize import _panel, run_visualize

    image = sorted((synth_obb.parent / "images" / "val").iterdir())[0]
    teacher = tiny_models["obb_teacher"]
    (tmp_path / "visualize").mkdir()  # an earlier run's folder: the next one is visualize2, as predict2
    with ultralytics_log() as log:
        bands = run_visualize(teacher, teacher, image, imgsz=64, project=tmp_path)
        s = run_slice(teacher, image, tile=64, project=tmp_path)["save"]
    assert bands == tmp_path / "visualize2" / "bands.png" and bands.is_file()
    assert s == tmp_path / "slice" / f"{image.stem}.png" and s.is_file()
    assert sum("Results saved to" in m for m in log) == 2

    fig, ax = plt.subplots()
    _panel(fig, ax, np.random.default_rng(0).random((8, 8)) * 1e-4, [0, 8, 8, 0], "title", "viridis")
    fig.canvas.draw()
    assert all(a.yaxis.get_offset_text().get_text() == "" for a in fig.axes)
    plt.close(fig)


def test_mode_help_lists_that_modes_keys(capsys):
    """`ds2d2-yolo MODE help` prints that mode's keys (and how to make a student smaller than a nano teacher)."""
    from ds2d2_yolo.cli import SUBCOMMAND_KEYS, entrypoint

    assert entrypoint(["train", "help"]) == 0
    out = capsys.readouterr().out
    assert "lambda_exl=1.5" in out and "scaled_model_yaml" in out and "tile=" not in out
    for mode, spec in SUBCOMMAND_KEYS.items():
        assert entrypoint([mode, "help"]) == 0
        out = capsys.readouterr().out
        assert out.startswith(f"Usage: ds2d2-yolo {mode}") and all(f"  {k}=" in out for k in spec), mode
        assert "lambda_exl" not in out
    assert entrypoint(["amplifier", "help"]) == 0
    out = capsys.readouterr().out
    assert "amp_epochs=3" in out and "lambda_exl" not in out


def _dota_folder(root: Path, n: int) -> Path:
    """A DOTA split folder (images/, labelTxt/) of n small images, one plane each."""
    (root / "images").mkdir(parents=True)
    (root / "labelTxt").mkdir()
    for i in range(n):
        cv2.imwrite(str(root / "images" / f"P{i:04d}.png"), np.full((64, 64, 3), 40 * i % 255, np.uint8))
        (root / "labelTxt" / f"P{i:04d}.txt").write_text("10 10 40 10 40 30 10 30 plane 0\n")
    return root


def test_convert_without_val_folder_splits_whole_images(tmp_path):
    """convert of a source with no val folder splits off whole images for val (seeded) or takes val_src=, and says
    which; the dataset path of the README, cfg/DOTAv1.yaml and the missing-data hint is one."""
    from ds2d2_yolo.cfg import CFG_DIR

    from ds2d2_yolo.cli import UsageError, _check_data
    from ds2d2_yolo.tools.dataprep import run_convert

    src = _dota_folder(tmp_path / "DOTA", 5)
    with ultralytics_log() as log:
        res = run_convert("dota", src, tmp_path / "out", tile=0)
    data = yaml.safe_load((tmp_path / "out" / "data.yaml").read_text())
    assert data["val"] == "images/val" and data["train"] == "images/train"
    train = {p.stem for p in (tmp_path / "out" / "images" / "train").iterdir()}
    val = {p.stem for p in (tmp_path / "out" / "images" / "val").iterdir()}
    assert len(val) == 1 and len(train) == 4 and not train & val
    assert len(list((tmp_path / "out" / "labels" / "val").iterdir())) == 1
    assert "1 of 5 train images split off (val=0.2, seed=0)" in res["val_source"]
    assert any(m.startswith("val: 1 of 5") for m in log)
    again = run_convert("dota", src, tmp_path / "again", tile=0)
    assert again["val_source"] == res["val_source"]  # seeded: the same images every time

    other = _dota_folder(tmp_path / "DOTA-val", 2)
    res = run_convert("dota", src, tmp_path / "out2", tile=0, val_src=other)
    assert res["val_source"] == f"val_src={other}" and len(list((tmp_path / "out2" / "images" / "val").iterdir())) == 2
    assert len(list((tmp_path / "out2" / "images" / "train").iterdir())) == 5
    res = run_convert("dota", src, tmp_path / "out3", tile=0, val=0)
    assert (
        res["val_source"].startswith("none")
        and yaml.safe_load((tmp_path / "out3" / "data.yaml").read_text())["val"] == "images/train"
    )

    path = yaml.safe_load((CFG_DIR / "DOTAv1.yaml").read_text())["path"]
    with pytest.raises(UsageError) as err:
        _check_data(str(CFG_DIR / "DOTAv1.yaml"))
    assert f"dst={path}" in str(err.value)
    assert f"dst={path} " in (REPO / "README.md").read_text()
