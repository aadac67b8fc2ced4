"""Sliced prediction: tile grid, cross-tile merge, tiling with a stand-in model, and the real DOTA teacher."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from ds2d2_yolo.tools.sliced import merge_tile_predictions, sliced_predict, tile_windows

SHARED = Path(__file__).resolve().parents[2] / "shared"
TEACHER = SHARED / "weights" / "yolov8n-obb-dota.pt"
P1888 = SHARED / "data" / "dota-devkit-example" / "images" / "P1888.png"
P1478 = SHARED / "data" / "dota-devkit-yolo-demo" / "images" / "P1478__1__853___962.png"


def _corners(boxes: np.ndarray) -> np.ndarray:
    """(N, 4, 2) corners of xyxy or xywhr boxes."""
    from ultralytics.utils.ops import xywhr2xyxyxyxy

    boxes = np.asarray(boxes, dtype=np.float32)
    if boxes.shape[-1] == 5:
        return np.asarray(xywhr2xyxyxyxy(boxes), dtype=np.float32).reshape(-1, 4, 2)
    x0, y0, x1, y1 = boxes.T
    return np.stack([x0, y0, x1, y0, x1, y1, x0, y1], 1).reshape(-1, 4, 2)


def _iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Exact polygon IoU between two sets of xyxy or xywhr boxes."""
    ca, cb = _corners(a), _corners(b)
    out = np.zeros((len(ca), len(cb)))
    for i, p in enumerate(ca):
        for j, q in enumerate(cb):
            inter, _ = cv2.intersectConvexConvex(p, q)
            union = cv2.contourArea(p) + cv2.contourArea(q) - inter
            out[i, j] = inter / union if union > 0 else 0.0
    return out


# ---------------------------------------------------------------------------------------------------------------------
# Tile grid
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("hw", [(557, 712), (1903, 1599), (1024, 1024), (300, 2000)])
@pytest.mark.parametrize("tile,overlap", [(512, 0.25), (1024, 0.2), (640, 0.0)])
def test_tile_windows_cover_image(hw, tile, overlap):
    h, w = hw
    win = tile_windows(h, w, tile, overlap)
    assert (win[:, :2] >= 0).all() and (win[:, 2] <= w).all() and (win[:, 3] <= h).all()
    assert ((win[:, 2] - win[:, 0]) == min(tile, w)).all() and ((win[:, 3] - win[:, 1]) == min(tile, h)).all()
    covered = np.zeros((h, w), dtype=bool)
    for x0, y0, x1, y1 in win:
        covered[y0:y1, x0:x1] = True
    assert covered.all()
    xs = np.unique(win[:, 0])
    if len(xs) > 1:  # neighbours overlap by at least the requested fraction
        assert (np.diff(xs) <= round(tile * (1 - overlap))).all()


def test_tile_windows_small_image_and_errors():
    np.testing.assert_array_equal(tile_windows(300, 200, 1024), [[0, 0, 200, 300]])
    with pytest.raises(ValueError):
        tile_windows(100, 100, 64, overlap=1.0)
    with pytest.raises(ValueError):
        tile_windows(100, 100, 0)


# ---------------------------------------------------------------------------------------------------------------------
# Merge of per-tile predictions (pure function)
# ---------------------------------------------------------------------------------------------------------------------

WINDOWS = np.array([[0, 0, 512, 512], [384, 0, 896, 512]])  # image 896x512, shared strip x in [384, 512]


def _tile(boxes, conf, cls):
    return {"boxes": np.array(boxes, np.float32), "conf": np.array(conf, np.float32), "cls": np.array(cls)}


def test_merge_hbb_duplicates_classes_and_partials():
    preds = [
        _tile(
            [[400, 100, 480, 160], [300, 200, 450, 260], [10, 10, 40, 40]],  # A in the strip, D whole, E
            [0.9, 0.8, 0.7],
            [0, 2, 0],
        ),
        _tile(
            [
                [17, 101, 97, 161],  # A again, 1 px off
                [16, 100, 96, 160],  # same place, other class: kept
                [216, 300, 266, 340],  # C, only here
                [0, 200, 66, 260],  # D cut by the tile's left border (x = 384 in the image)
            ],
            [0.85, 0.6, 0.75, 0.95],
            [0, 1, 0, 2],
        ),
    ]
    out = merge_tile_predictions(preds, WINDOWS, obb=False, iou=0.7)
    assert out["boxes"].shape == (5, 4) and out["boxes"].dtype == np.float32
    assert (np.diff(out["conf"]) <= 0).all()
    got = {(int(c), tuple(np.round(b).astype(int))) for b, c in zip(out["boxes"], out["cls"])}
    assert got == {
        (0, (400, 100, 480, 160)),  # the higher-confidence copy of A, in image coordinates
        (1, (400, 100, 480, 160)),
        (0, (600, 300, 650, 340)),
        (2, (300, 200, 450, 260)),  # whole D kept although its cut copy had the higher confidence
        (0, (10, 10, 40, 40)),
    }
    # Without the partial-box rule the cut copy of D survives NMS (IoU 0.44 with the whole box)
    out = merge_tile_predictions(preds, WINDOWS, obb=False, iou=0.7, cut_ios=None)
    assert len(out["conf"]) == 6


def test_merge_keeps_objects_cut_by_the_image_border():
    # A small box on the image's top border inside a larger same-class box of the other tile is a real object
    preds = [_tile([[390, 0, 500, 100]], [0.8], [3]), _tile([[16, 0, 76, 50]], [0.9], [3])]
    assert len(merge_tile_predictions(preds, WINDOWS, obb=False, iou=0.7)["conf"]) == 2
    # ... while the same pair against an inner tile border is a tile artefact
    preds = [_tile([[390, 100, 500, 200]], [0.8], [3]), _tile([[0, 110, 60, 160]], [0.9], [3])]
    assert len(merge_tile_predictions(preds, WINDOWS, obb=False, iou=0.7)["conf"]) == 1


def test_merge_obb_duplicates_and_partials():
    a = [440.0, 130.0, 80.0, 30.0, 0.5]  # rotated object in the shared strip
    preds = [
        _tile([a, [200, 200, 150, 40, 0.0]], [0.9, 0.8], [5, 5]),  # ... and F, x in [125, 275]
        _tile(
            [
                [a[0] - 384 + 1.0, a[1] - 0.5, 79.0, 31.0, 0.52],  # A again, jittered
                [a[0] - 384, a[1], 80.0, 30.0, 0.5],  # same place, other class: kept
                [400, 400, 60, 20, 1.2],  # G, only here
            ],
            [0.7, 0.6, 0.5],
            [5, 9, 5],
        ),
    ]
    out = merge_tile_predictions(preds, WINDOWS, obb=True, iou=0.7)
    assert out["boxes"].shape == (4, 5)
    order = np.lexsort((out["boxes"][:, 0], out["cls"]))
    np.testing.assert_allclose(out["boxes"][order][:, :2], [[200, 200], [440, 130], [784, 400], [440, 130]], atol=1e-4)
    np.testing.assert_array_equal(out["cls"][order], [5, 5, 5, 9])
    np.testing.assert_allclose(out["conf"][order][1], 0.9)

    # a rotated box cut by tile 1's left border, inside a larger whole box from tile 0
    whole = [420.0, 300.0, 120.0, 40.0, 0.3]
    cut = [20.0, 300.0 - 16 * np.tan(0.3), 40.0, 40.0, 0.3]  # on the whole box's axis, 16 px left of its centre
    preds = [_tile([whole], [0.6], [1]), _tile([cut], [0.9], [1])]
    assert len(merge_tile_predictions(preds, WINDOWS, obb=True)["conf"]) == 1
    assert len(merge_tile_predictions(preds, WINDOWS, obb=True, cut_ios=None)["conf"]) == 2


def test_merge_empty_and_errors():
    for obb, nd in ((False, 4), (True, 5)):
        out = merge_tile_predictions([_tile(np.zeros((0, nd)), [], [])] * 2, WINDOWS, obb=obb)
        assert out["boxes"].shape == (0, nd) and out["conf"].shape == (0,) and out["cls"].shape == (0,)
    with pytest.raises(ValueError, match="windows"):
        merge_tile_predictions([_tile([[0, 0, 1, 1]], [1], [0])], WINDOWS, obb=False)


# ---------------------------------------------------------------------------------------------------------------------
# Tiling end to end with a stand-in model: it "detects" white shapes, so the truth is known exactly
# ---------------------------------------------------------------------------------------------------------------------


class BlobModel:
    """Minimal stand-in for `ultralytics.YOLO`: one detection per white blob of each tile."""

    def __init__(self, task: str):
        self.task = task
        self.names = {0: "blob"}
        self.calls: list[tuple[tuple[int, int], dict]] = []

    def predict(self, source, **kwargs):
        from ultralytics.engine.results import Results

        out = []
        for im in source if isinstance(source, list) else [source]:
            self.calls.append((im.shape[:2], kwargs))
            mask = (im[..., 0] > 127).astype(np.uint8)
            contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
            rows = []
            for c in contours:
                if self.task == "obb":
                    (cx, cy), (w, h), ang = cv2.minAreaRect(c)
                    rows.append([cx, cy, w + 1, h + 1, np.deg2rad(ang), 0.9, 0])
                else:
                    x, y, w, h = cv2.boundingRect(c)
                    rows.append([x, y, x + w, y + h, 0.9, 0])
            data = torch.tensor(rows, dtype=torch.float32).reshape(-1, 7 if self.task == "obb" else 6)
            out.append(Results(im, "", self.names, **{"obb" if self.task == "obb" else "boxes": data}))
        return out


def _blob_image(obb: bool) -> tuple[np.ndarray, np.ndarray]:
    """900x1300 image with 40-90 px shapes, several across tile borders; returns it and the true boxes."""
    rng = np.random.default_rng(0)
    im = np.zeros((900, 1300, 3), np.uint8)
    centres = [(395, 120), (700, 398), (305, 640), (1000, 300), (150, 820), (1250, 850), (620, 610), (960, 700)]
    truth = []
    for cx, cy in centres:
        w, h = rng.uniform(40, 90), rng.uniform(20, 40)
        ang = rng.uniform(0, np.pi / 2) if obb else 0.0
        pts = cv2.boxPoints(((cx, cy), (w, h), np.rad2deg(ang)))
        cv2.fillPoly(im, [np.round(pts).astype(np.int32)], (255, 255, 255))
        truth.append([cx, cy, w, h, ang] if obb else [*pts.min(0), *pts.max(0)])
    return im, np.array(truth, np.float32)


@pytest.mark.parametrize("task", ["detect", "obb"])
def test_sliced_predict_blobs(task):
    obb = task == "obb"
    im, truth = _blob_image(obb)
    model = BlobModel(task)
    out = sliced_predict(model, im, tile=400, overlap=0.25, conf=0.3, iou=0.5)
    assert out["task"] == task and len(out["windows"]) == len(model.calls) == 12
    assert all(kw["imgsz"] == 400 and kw["conf"] == 0.3 and kw["iou"] == 0.5 for _, kw in model.calls)
    assert out["boxes"].shape == (len(truth), 5 if obb else 4)  # every shape once: duplicates and partials merged
    iou = _iou_matrix(truth, out["boxes"])
    assert (iou.max(1) > 0.85).all() and (iou.max(0) > 0.85).all()
    # cut_ios=None shows what the partial-box rule removes
    assert len(sliced_predict(model, im, tile=400, overlap=0.25, cut_ios=None)["conf"]) > len(truth)


def test_sliced_predict_path_gray_and_batch(tmp_path):
    im, truth = _blob_image(False)
    cv2.imwrite(str(tmp_path / "im.png"), im)
    model = BlobModel("detect")
    from_path = sliced_predict(model, tmp_path / "im.png", tile=400, overlap=0.25)
    gray = sliced_predict(model, im[..., 0], tile=400, overlap=0.25, batch=5)
    for out in (from_path, gray):
        assert _iou_matrix(truth, out["boxes"]).max(1).min() > 0.85
    with pytest.raises(ValueError, match="segment"):
        sliced_predict(type("M", (), {"task": "segment"})(), im)


# ---------------------------------------------------------------------------------------------------------------------
# Real DOTA teacher (skipped where the weights or images are absent)
# ---------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def teacher():
    if not TEACHER.is_file() or not P1888.is_file():
        pytest.skip(f"DOTA teacher {TEACHER} or the DOTA sample images are absent (not part of the repository)")
    from ultralytics import YOLO

    return YOLO(str(TEACHER))


def _full(model, im, imgsz):
    r = model.predict(im, imgsz=imgsz, conf=0.25, iou=0.7, verbose=False)[0].obb
    return {"boxes": r.xywhr.numpy(), "conf": r.conf.numpy(), "cls": r.cls.numpy().astype(np.int64)}


def _sorted(d):
    i = np.lexsort((d["boxes"][:, 1], d["boxes"][:, 0], -d["conf"]))
    return {k: d[k][i] for k in ("boxes", "conf", "cls")}


def test_single_tile_matches_plain_predict(teacher):
    crop = cv2.imread(str(P1478))[:640, 300:940]  # dense vehicles, exactly one 640 px tile
    sliced, full = _sorted(sliced_predict(teacher, crop, tile=640, overlap=0.2)), _sorted(_full(teacher, crop, 640))
    assert len(full["conf"]) > 20
    np.testing.assert_allclose(sliced["boxes"], full["boxes"], atol=1e-3)
    np.testing.assert_allclose(sliced["conf"], full["conf"], atol=1e-6)
    np.testing.assert_array_equal(sliced["cls"], full["cls"])

    # An image smaller than the tile is one tile too, resized to imgsz like a plain predict
    im = cv2.imread(str(P1888))
    sliced = sliced_predict(teacher, im, tile=1024)
    np.testing.assert_array_equal(sliced["windows"], [[0, 0, im.shape[1], im.shape[0]]])
    sliced, full = _sorted(sliced), _sorted(_full(teacher, im, 1024))
    np.testing.assert_allclose(sliced["boxes"], full["boxes"], atol=1e-3)


def test_sliced_matches_full_image_on_dota_vehicles(teacher):
    im = cv2.imread(str(P1888))  # 712x557, 64 annotated vehicles
    full = _full(teacher, im, 1024)
    sliced = sliced_predict(teacher, im, tile=512, overlap=0.25)
    assert len(sliced["windows"]) == 4
    hi = full["conf"] > 0.5
    assert hi.sum() > 30
    iou = _iou_matrix(full["boxes"][hi], sliced["boxes"])
    same = full["cls"][hi][:, None] == sliced["cls"][None]
    assert ((iou * same).max(1) > 0.5).mean() >= 0.9
    assert 0.8 * len(full["conf"]) <= len(sliced["conf"]) <= 1.2 * len(full["conf"])  # no pile of tile duplicates
    h, w = im.shape[:2]
    assert ((sliced["boxes"][:, 0] >= 0) & (sliced["boxes"][:, 0] <= w)).all()
    assert ((sliced["boxes"][:, 1] >= 0) & (sliced["boxes"][:, 1] <= h)).all()
