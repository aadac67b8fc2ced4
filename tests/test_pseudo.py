"""`distill=pseudo`: ground truth plus the teacher's confident detections that the ground truth lacks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import train_overrides

from ds2d2_yolo.config import DS2D2ArgError
from ds2d2_yolo.integration.pseudo import new_objects
from ds2d2_yolo.integration.trainer import DS2D2Trainer

WEIGHTS = "/work/shared/weights/yolov8n-obb-dota.pt"


def test_new_objects_drops_what_the_ground_truth_holds():
    gt = [[0, 0.5, 0.5, 0.2, 0.2]]
    det = np.array([[0, 0.51, 0.5, 0.2, 0.2], [1, 0.1, 0.1, 0.05, 0.05]])  # a duplicate and a new object
    assert new_objects(gt, det, obb=False).tolist() == [det[1].tolist()]
    square = [0.4, 0.4, 0.6, 0.4, 0.6, 0.6, 0.4, 0.6]
    far = [0.0, 0.0, 0.1, 0.0, 0.1, 0.1, 0.0, 0.1]
    odet = np.array([[3, *square], [3, *far]])
    assert new_objects([[3, *square]], odet, obb=True).tolist() == [odet[1].tolist()]
    assert new_objects([], odet, obb=True) is odet  # nothing to overlap: every detection is new


def test_pseudo_needs_a_teacher(tiny_models, synth_obb, tmp_path):
    kw = train_overrides(tmp_path, model=str(tiny_models["obb_student"]), data=str(synth_obb), distill="pseudo")
    with pytest.raises(DS2D2ArgError, match="distill=pseudo needs a teacher"):
        DS2D2Trainer(overrides=kw)


def test_pseudo_dataset_merges_teacher_detections(dota8_yaml, tmp_path):
    """The real teacher adds its confident detections to dota8's labels (never fewer rows than the ground truth),
    the student trains on the merged set, validation stays on the original split, and a rerun reuses the set."""
    kw = train_overrides(tmp_path, model=WEIGHTS, data=str(dota8_yaml), teacher=WEIGHTS, distill="pseudo", imgsz=320)
    tr = DS2D2Trainer(overrides=kw)
    merged = yaml.safe_load(Path(tr.args.data).read_text())
    original = yaml.safe_load(Path(dota8_yaml).read_text())
    root = Path(merged["path"])
    assert Path(merged["val"]) == Path(original["path"]) / original["val"]
    src = sorted((Path(original["path"]) / "labels" / "train").glob("*.txt"))
    out = sorted((root / "labels" / "train").glob("*.txt"))
    assert len(out) == len(src) == 4
    gt_rows = sum(1 for p in src for line in p.read_text().splitlines() if line.strip())
    rows = [line for p in out for line in p.read_text().splitlines()]
    added = json.loads((root / ".done").read_text())["pseudo_labels"]
    assert len(rows) == gt_rows + added and all(len(r.split()) == 9 for r in rows)
    assert all(0 <= int(r.split()[0]) < 15 for r in rows)
    stamp = out[0].stat().st_mtime_ns
    DS2D2Trainer(overrides={**kw, "name": "again"})
    assert out[0].stat().st_mtime_ns == stamp  # reused, not rewritten
