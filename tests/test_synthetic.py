"""Tests for the synthetic aerial dataset generator: determinism, label geometry, visibility, Ultralytics loading."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from ds2d2_yolo.tools.synthetic import CLASSES, make_dataset

os.environ.setdefault("YOLO_OFFLINE", "1")

N_TRAIN, N_VAL, IMGSZ = 20, 8, 192


def _files(root: Path) -> dict[str, bytes]:
    """Map every generated image and label (relative path) to its bytes."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("syn_*"))}


def _labels(root: Path, split: str = "train") -> dict[str, np.ndarray]:
    """Read every label file of a split as a float array of shape (n, columns)."""
    out = {}
    for p in sorted((root / "labels" / split).glob("*.txt")):
        rows = [list(map(float, line.split())) for line in p.read_text().splitlines()]
        out[p.stem] = np.array(rows, dtype=np.float64) if rows else np.zeros((0, 0))
    return out


@pytest.fixture(scope="module")
def obb(tmp_path_factory) -> Path:
    """An OBB dataset shared by the tests in this module."""
    return make_dataset(tmp_path_factory.mktemp("obb"), n_train=N_TRAIN, n_val=N_VAL, imgsz=IMGSZ, seed=3)


def test_layout_and_yaml(obb: Path):
    """data.yaml records an absolute root, split folders and the class names; every image has a label file."""
    data = yaml.safe_load(obb.read_text())
    root = Path(data["path"])
    assert root.is_absolute() and root == obb.parent
    assert (data["train"], data["val"], data["names"], data["channels"]) == (
        "images/train",
        "images/val",
        dict(enumerate(CLASSES)),
        3,
    )
    for split, n in (("train", N_TRAIN), ("val", N_VAL)):
        images = sorted(p.stem for p in (root / "images" / split).glob("*.png"))
        labels = sorted(p.stem for p in (root / "labels" / split).glob("*.txt"))
        assert len(images) == n and images == labels


def test_deterministic(obb: Path, tmp_path: Path):
    """Same arguments give byte-identical files (also when rerun in place); another seed gives other images."""
    root = obb.parent
    again = make_dataset(tmp_path / "a", n_train=N_TRAIN, n_val=N_VAL, imgsz=IMGSZ, seed=3)
    assert _files(again.parent) == _files(root)
    other = make_dataset(tmp_path / "b", n_train=2, n_val=0, imgsz=IMGSZ, seed=4)
    assert _files(other.parent)["images/train/syn_train_00000.png"] != _files(root)["images/train/syn_train_00000.png"]
    make_dataset(tmp_path / "b", n_train=1, n_val=0, imgsz=IMGSZ, seed=4)  # a smaller rerun leaves no stale files
    assert len(list((tmp_path / "b" / "images" / "train").iterdir())) == 1


def test_obb_labels_are_rectangles_in_range(obb: Path):
    """Each OBB row is a class id and 4 normalised corners forming a right-angled rectangle; some images are empty."""
    labels = {**_labels(obb.parent, "train"), **{f"v{k}": v for k, v in _labels(obb.parent, "val").items()}}
    nonempty = [lb for lb in labels.values() if len(lb)]
    assert sum(len(lb) == 0 for lb in labels.values()) >= 2  # at least one empty image per split
    assert np.mean([len(lb) for lb in nonempty]) >= 8  # dense scenes
    rows = np.concatenate(nonempty)
    assert rows.shape[1] == 9
    assert set(np.unique(rows[:, 0]).astype(int)) <= set(range(len(CLASSES)))
    assert len(np.unique(rows[:, 0])) == len(CLASSES)
    xy = rows[:, 1:]
    assert xy.min() >= 0 and xy.max() <= 1
    corners = xy.reshape(-1, 4, 2) * IMGSZ
    edges = np.roll(corners, -1, axis=1) - corners
    nxt = np.roll(edges, -1, axis=1)
    cos = np.abs((edges * nxt).sum(-1)) / (np.linalg.norm(edges, axis=-1) * np.linalg.norm(nxt, axis=-1))
    assert cos.max() < 1e-3
    sides = np.linalg.norm(edges, axis=-1)
    assert sides.min() > 2 and sides.max() < 47  # small objects: vehicle widths ~3 px up to plane spans ~45 px


def test_objects_visible_at_labels(obb: Path):
    """Pixels inside each labelled rectangle differ from the ring of background around it."""
    root, diffs = obb.parent, []
    for stem, lb in _labels(root).items():
        img = cv2.imread(str(root / "images" / "train" / f"{stem}.png")).astype(np.float64)
        for row in lb:
            inside = np.zeros(img.shape[:2], np.uint8)
            cv2.fillPoly(inside, [np.round(row[1:].reshape(4, 2) * IMGSZ).astype(np.int32)], 1)
            ring = cv2.dilate(inside, np.ones((5, 5), np.uint8)) - inside
            diffs.append(np.abs(img[inside > 0].mean(0) - img[ring > 0].mean(0)).mean())
    diffs = np.array(diffs)
    assert len(diffs) > 50
    assert np.median(diffs) > 25 and np.mean(diffs > 8) > 0.95


def test_detect_labels_match_obb(obb: Path, tmp_path: Path):
    """task='detect' draws the same images, with axis-aligned boxes inside the hull of the OBB rectangles."""
    det = make_dataset(tmp_path, n_train=N_TRAIN, n_val=0, imgsz=IMGSZ, seed=3, task="detect")
    a, b = obb.parent / "images" / "train", det.parent / "images" / "train"
    assert all((a / p.name).read_bytes() == p.read_bytes() for p in b.glob("*.png"))
    obb_lb, det_lb = _labels(obb.parent), _labels(det.parent)
    for stem, boxes in det_lb.items():
        assert len(boxes) == len(obb_lb[stem])
        if not len(boxes):
            continue
        assert boxes.shape[1] == 5 and boxes[:, 1:].min() >= 0 and boxes[:, 1:].max() <= 1 and boxes[:, 3:].min() > 0
        xy = obb_lb[stem][:, 1:].reshape(-1, 4, 2)
        tol = 1.5 / IMGSZ  # anti-aliased drawn outline vs exact rectangle
        assert (boxes[:, 1] - boxes[:, 3] / 2 >= xy[..., 0].min(1) - tol).all()
        assert (boxes[:, 1] + boxes[:, 3] / 2 <= xy[..., 0].max(1) + tol).all()
        assert (boxes[:, 2] - boxes[:, 4] / 2 >= xy[..., 1].min(1) - tol).all()
        assert (boxes[:, 2] + boxes[:, 4] / 2 <= xy[..., 1].max(1) + tol).all()


def test_grayscale(tmp_path: Path):
    """channels=1 writes single-channel PNGs and records it in data.yaml."""
    data = make_dataset(tmp_path, n_train=2, n_val=1, imgsz=96, seed=0, channels=1, density=(2, 4))
    img = cv2.imread(str(tmp_path / "images" / "train" / "syn_train_00000.png"), cv2.IMREAD_UNCHANGED)
    assert img.ndim == 2 and img.shape == (96, 96) and img.dtype == np.uint8
    assert yaml.safe_load(data.read_text())["channels"] == 1


def test_bad_arguments(tmp_path: Path):
    """Unknown task or channel count fails before anything is written."""
    with pytest.raises(ValueError, match="task"):
        make_dataset(tmp_path / "x", task="segment")
    with pytest.raises(ValueError, match="channels"):
        make_dataset(tmp_path / "x", channels=4)
    assert not (tmp_path / "x").exists()


def test_loads_in_ultralytics(obb: Path, monkeypatch):
    """check_det_dataset accepts data.yaml and a YOLODataset reads every instance, empty images as background."""
    from ultralytics.cfg import get_cfg
    from ultralytics.data import build as ul_build
    from ultralytics.data import utils as ul_utils

    monkeypatch.setattr(ul_utils, "check_font", lambda *a, **k: None)  # it would try to fetch Arial.ttf
    data = ul_utils.check_det_dataset(str(obb))
    assert data["nc"] == len(CLASSES) and Path(data["train"]).is_dir()
    cfg = get_cfg(overrides={"task": "obb", "imgsz": IMGSZ, "cache": False, "workers": 0})
    ds = ul_build.build_yolo_dataset(cfg, data["val"], batch=2, data=data, mode="val")
    expected = _labels(obb.parent, "val")
    got = {Path(lb["im_file"]).stem: len(lb["cls"]) for lb in ds.labels}
    assert got == {k: len(v) for k, v in expected.items()}
    assert 0 in got.values()
    item = ds[0]
    assert item["img"].shape[0] == 3 and len(item["cls"]) == got[Path(item["im_file"]).stem]
    assert item["bboxes"].shape[-1] == 5  # xywhr: the OBB path is taken
