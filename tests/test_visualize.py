"""Band visualiser: PNG layout, box sources, a DISW map raised exactly where the boxes are, and the confidence map."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ds2d2_yolo.config import DS2D2ArgError
from ds2d2_yolo.tools.visualize import COLUMNS, band_maps, load_model, read_label_boxes, run_visualize


def first_image(data_yaml: Path) -> Path:
    """A validation image of the synthetic set that has objects (its label file is not empty)."""
    root = data_yaml.parent
    for img in sorted((root / "images" / "val").glob("*.png")):
        if (root / "labels" / "val" / f"{img.stem}.txt").read_text().strip():
            return img
    raise AssertionError("no labelled image in the synthetic set")


def layout(png: Path) -> dict:
    """The layout JSON that run_visualize writes into the PNG's Description chunk."""
    with Image.open(png) as im:
        return json.loads(im.text["Description"])


def test_visualize_png_layout(tmp_path, tiny_models, synth_obb):
    """One row per head level, six panels each; the boxes come from the image's YOLO label file."""
    img = first_image(synth_obb)
    out = run_visualize(
        tiny_models["obb_teacher"], tiny_models["obb_teacher"], img, imgsz=64, out=tmp_path / "bands.png"
    )
    assert out == tmp_path / "bands.png" and out.is_file()
    meta = layout(out)
    assert meta["rows"] == 3 and meta["levels"] == ["P3", "P4", "P5"]
    assert meta["columns"] == list(COLUMNS) and meta["panels"] == 18
    assert meta["input"] == [64, 64] and meta["boxes"] > 0 and "labels/" in meta["box_source"]
    with Image.open(out) as im:
        w, h = im.size
    assert w > h > 300  # six columns side by side, three rows


def test_visualize_student_yaml_and_teacher_boxes(tmp_path, tiny_models, synth_obb):
    """A student given as a model yaml (different width) and boxes from the teacher's predictions both work."""
    out = run_visualize(
        tiny_models["obb_student"], tiny_models["obb_teacher"], first_image(synth_obb), imgsz=50,
        out=tmp_path / "b.png", boxes="teacher", conf=0.0,
    )  # fmt: skip
    meta = layout(out)
    assert meta["panels"] == 18 and meta["input"] == [64, 64] and "teacher predictions" in meta["box_source"]


def test_disw_panel_follows_boxes(tmp_path, tiny_models):
    """The DISW map is 1 on the background and above 1 in the cells under the labelled boxes, at every level."""
    from ds2d2_yolo.tools.synthetic import make_dataset
    from ds2d2_yolo.tools.visualize import _corners_to_xywhr

    sparse = make_dataset(tmp_path / "sparse", n_train=0, n_val=3, imgsz=128, density=(3, 5), seed=1)
    img = first_image(sparse)
    corners, label_file = read_label_boxes(img, (128, 128))
    assert Path(label_file).parent.parent.name == "labels" and len(corners)
    xywhr = _corners_to_xywhr(corners)
    teacher = load_model(tiny_models["obb_teacher"])
    student = load_model(tiny_models["obb_student"])
    levels = band_maps(student, teacher, torch.rand(1, 3, 128, 128), xywhr)
    assert [lv.name for lv in levels] == ["P3", "P4", "P5"]
    for lv in levels:
        h, w = lv.disw.shape
        assert lv.teacher_ll.shape == lv.student_ll.shape == lv.teacher_high.shape == lv.student_high.shape == (h, w)
        assert lv.student_channels < lv.teacher_channels
        assert np.isfinite(lv.teacher_high).all() and np.isfinite(lv.student_high).all()
        assert lv.disw.min() >= 1.0 - 1e-6
        assert lv.disw.sum() - h * w == pytest.approx(len(xywhr), rel=1e-4)  # each box adds a mass of 1
        # The cell under every box centre is raised.
        cx = np.clip((xywhr[:, 0].numpy() * w / 128).astype(int), 0, w - 1)
        cy = np.clip((xywhr[:, 1].numpy() * h / 128).astype(int), 0, h - 1)
        assert (lv.disw[cy, cx] > 1.0).all()
    # On the finest grid the map is non-uniform: raised under the boxes, exactly 1 on the background.
    p3 = levels[0].disw
    assert p3.max() > 1.0 and (p3 == 1.0).sum() > p3.size // 2


def test_visualize_explicit_boxes_and_errors(tmp_path, tiny_models, synth_obb):
    """Explicit xyxy boxes are accepted; missing files and bad values fail with one-line, typed errors."""
    img = first_image(synth_obb)
    t = tiny_models["obb_teacher"]
    out = run_visualize(t, t, img, imgsz=64, out=tmp_path / "e.png", boxes=np.array([[10, 10, 30, 20]]))
    assert layout(out)["boxes"] == 1 and layout(out)["box_source"] == "1 given"
    with pytest.raises(FileNotFoundError):
        run_visualize(t, t, tmp_path / "missing.png", out=tmp_path / "x.png")
    with pytest.raises(FileNotFoundError):
        run_visualize(None, t, img, out=tmp_path / "x.png")
    with pytest.raises(DS2D2ArgError):
        run_visualize(t, t, img, wavelet="nope", out=tmp_path / "x.png")
    with pytest.raises(DS2D2ArgError):
        run_visualize(t, t, img, boxes="somewhere", out=tmp_path / "x.png")
    with pytest.raises(DS2D2ArgError, match="disw=boxes"):
        run_visualize(t, t, img, disw="boxes", out=tmp_path / "x.png")
    alone = tmp_path / "alone.png"
    Image.fromarray(np.zeros((40, 60, 3), np.uint8)).save(alone)
    with pytest.raises(FileNotFoundError):
        run_visualize(t, t, alone, boxes="labels", out=tmp_path / "x.png")


def test_weight_panel_follows_disw(tmp_path, tiny_models, synth_obb):
    """By default the panel shows what training weights by, the teacher's confidence on each feature grid; it equals
    the class probabilities of the teacher's own eval-mode output, and `disw=obb` switches back to the box map."""
    from ds2d2_yolo.config import defaults

    teacher = load_model(tiny_models["obb_teacher"])
    student = load_model(tiny_models["obb_student"])
    img = torch.rand(1, 3, 96, 64, generator=torch.Generator().manual_seed(0))
    levels = band_maps(student, teacher, img, torch.zeros(0, 5), disw_mode="score")
    with torch.no_grad():
        pred = teacher(img)[0]  # (1, 4 + nc + 1, A): boxes, class probabilities, angle
    nc = int(teacher.yaml["nc"])
    conf = pred[0, 4 : 4 + nc].amax(0)
    start = 0
    for lv, stride in zip(levels, (8, 16, 32)):
        h, w = 96 // stride, 64 // stride
        assert lv.disw.shape == (h, w) and lv.teacher_ll.shape == ((h + 1) // 2, (w + 1) // 2)
        expect = conf[start : start + h * w].reshape(h, w)
        start += h * w
        np.testing.assert_allclose(lv.disw, (expect / expect.mean()).numpy(), rtol=1e-4, atol=1e-6)
        assert lv.disw_mode == "score"
    assert start == pred.shape[-1]

    t = tiny_models["obb_teacher"]
    image = first_image(synth_obb)
    out = run_visualize(t, t, image, imgsz=64, out=tmp_path / "default.png")
    assert defaults()["disw"] == "score" and layout(out)["disw"] == "score"
    assert layout(run_visualize(t, t, image, imgsz=64, out=tmp_path / "obb.png", disw="obb"))["disw"] == "obb"
