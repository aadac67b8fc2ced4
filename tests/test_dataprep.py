"""Dataset converters on the real DOTA / DIOR-R / HRSC / VOC samples in ../shared/data (read only, never copied)."""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from pathlib import Path

import cv2
import numpy as np
import pytest

from ds2d2_yolo.tools import dataprep
from ds2d2_yolo.tools.dataprep import (
    DIOR_CLASSES,
    DOTA_V1_CLASSES,
    class_index_map,
    convert_dior_r,
    convert_dior_voc,
    convert_dota,
    dota,
    parse_dota_label,
    tile_dota,
    write_data_yaml,
)

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
REPO = Path(__file__).resolve().parents[1]
DOTA_EX = DATA / "dota-devkit-example"
DOTA_DEMO = DATA / "dota-devkit-yolo-demo"

needs_data = pytest.mark.skipif(
    not DATA.is_dir(), reason=f"real remote-sensing samples not found at {DATA} (they are not part of the repository)"
)


def _label_files() -> list[Path]:
    return sorted(p for d in (DOTA_EX, DOTA_DEMO) for p in d.glob("labelTxt*/*.txt"))


def _object_lines(path: Path) -> list[list[str]]:
    """Independent reading of a labelTxt file: every line with coordinates, class and difficult."""
    lines = path.read_text().splitlines()
    return [ln.split() for ln in lines if len(ln.split()) >= 10]


def _read_rows(path: Path) -> np.ndarray:
    text = path.read_text().strip()
    return np.array([r.split() for r in text.splitlines()], dtype=np.float64) if text else np.zeros((0, 9))


def _link_dota(tmp: Path, folder: Path, stems: list[str]) -> Path:
    """A DOTA folder of symlinks to a few real images, so a test converts only what it needs."""
    src = tmp / "src"
    for sub, suffix in (("images", ".png"), ("labelTxt", ".txt")):
        (src / sub).mkdir(parents=True)
        for s in stems:
            (src / sub / f"{s}{suffix}").symlink_to(folder / sub / f"{s}{suffix}")
    return src


def test_class_lists_and_name_matching():
    assert len(DOTA_V1_CLASSES) == 15 and len(DIOR_CLASSES) == 20
    dota, dior = class_index_map(DOTA_V1_CLASSES), class_index_map(DIOR_CLASSES)
    assert dota[dataprep.normalize_class_name("Storage Tank")] == 2
    assert dota[dataprep.normalize_class_name("small_vehicle")] == 10
    assert dior[dataprep.normalize_class_name("expressway service area")] == 7
    assert dior[dataprep.normalize_class_name("STORAGE-TANK")] == 15
    with pytest.raises(ValueError, match="ambiguous"):
        class_index_map(["storage-tank", "storage tank"])


def test_cfg_yamls_match_class_lists():
    from ultralytics.utils import YAML

    for name, classes in (("DIOR.yaml", DIOR_CLASSES), ("DOTAv1.yaml", DOTA_V1_CLASSES)):
        data = YAML.load(REPO / "cfg" / name)
        assert "download" not in data
        assert [dataprep.normalize_class_name(data["names"][i]) for i in range(len(classes))] == [
            dataprep.normalize_class_name(c) for c in classes
        ]


@needs_data
@pytest.mark.parametrize("path", _label_files() if DATA.is_dir() else [], ids=lambda p: f"{p.parent.name}/{p.name}")
def test_parse_dota_label_real(path):
    objects = parse_dota_label(path)
    lines = _object_lines(path)
    assert len(objects) == len(lines) > 0
    for obj, parts in zip(objects, lines):
        np.testing.assert_array_equal(obj["poly"].reshape(-1), np.array(parts[:8], dtype=np.float64))
        assert obj["name"] == parts[8] and obj["difficult"] == int(parts[9])


def test_parse_dota_label_malformed(tmp_path):
    f = tmp_path / "x.txt"
    f.write_text(
        "imagesource:GoogleEarth\ngsd:null\n\n"
        "1 2 3 4 5 6 7 8 plane 0\n"
        "1 2 3 4 5 6 plane 0\n"  # too few coordinates
        "1 2 3 x 5 6 7 8 ship 0\n"  # non-numeric coordinate
        "   \n"
        "10 20 30 20 30 40 10 40 small-vehicle\n"  # no difficult field: DOTA test style, kept as 0
        "1 2 3 4 5 6 7 8 ship 1\r\n"
        "1 2 3 4 5 6 7 8 ship nan?\n"  # unreadable difficult
    )
    objects = parse_dota_label(f)
    assert [o["name"] for o in objects] == ["plane", "small-vehicle", "ship"]
    assert [o["difficult"] for o in objects] == [0, 0, 1]
    assert objects[1]["poly"].shape == (4, 2)
    _, skipped = dota._parse_dota_lines(f.read_text().splitlines())
    assert skipped == 3


def _make_dota(tmp: Path, lines: list[str], size: tuple[int, int] = (200, 100)) -> Path:
    """A synthetic DOTA folder: one blank image of (w, h) and one labelTxt."""
    src = tmp / "dota"
    (src / "images").mkdir(parents=True)
    (src / "labelTxt").mkdir()
    cv2.imwrite(str(src / "images" / "a.png"), np.zeros((size[1], size[0], 3), np.uint8))
    (src / "labelTxt" / "a.txt").write_text("\n".join(lines) + "\n")
    return src


def test_convert_dota_unknown_malformed_and_clip(tmp_path):
    src = _make_dota(
        tmp_path,
        ["gsd:1", "10 10 50 10 50 40 10 40 plane 0", "0 0 9 0 9 9 0 9 container-crane 0", "garbage line", ""],
    )
    with pytest.raises(ValueError, match="container-crane"):
        convert_dota(src, tmp_path / "out")
    stats = convert_dota(src, tmp_path / "out", unknown="skip")
    assert stats["objects"] == 2 and stats["written"] == 1 and stats["unknown"] == 1 and stats["malformed_lines"] == 1
    rows = _read_rows(tmp_path / "out" / "labels" / "a.txt")
    np.testing.assert_allclose(rows[0, 1:], [0.05, 0.1, 0.25, 0.1, 0.25, 0.4, 0.05, 0.4])

    src = _make_dota(tmp_path / "b", ["-5 10 250 10 250 120 -5 120 ship 0"])
    convert_dota(src, tmp_path / "b" / "out", split="train")
    rows = _read_rows(tmp_path / "b" / "out" / "labels" / "train" / "a.txt")
    np.testing.assert_allclose(rows[0, 1:], [0, 0.1, 1, 0.1, 1, 1, 0, 1])  # clipped to the image
    assert (tmp_path / "b" / "out" / "images" / "train" / "a.png").is_file()


@needs_data
def test_convert_dota_real_roundtrip(tmp_path):
    from ultralytics.data.utils import verify_image_label

    for folder in (DOTA_EX, DOTA_DEMO):
        out = tmp_path / folder.name
        stats = convert_dota(folder, out)
        n_images = len(list((folder / "images").glob("*.png")))
        assert stats["images"] == n_images and stats["malformed_lines"] == 0 and stats["unknown"] == 0
        total = 0
        for im_file in sorted((folder / "images").glob("*.png")):
            h, w = cv2.imread(str(im_file)).shape[:2]
            src = parse_dota_label(folder / "labelTxt" / f"{im_file.stem}.txt")
            rows = _read_rows(out / "labels" / f"{im_file.stem}.txt")
            assert len(rows) == len(src)
            total += len(src)
            pixels = rows[:, 1:].reshape(-1, 4, 2) * [w, h]
            for obj, row, poly in zip(src, rows, pixels):
                assert int(row[0]) == DOTA_V1_CLASSES.index(obj["name"])
                expected = obj["poly"].clip(0, [w, h])  # convert clips corners past the border
                np.testing.assert_allclose(poly, expected, rtol=1e-6, atol=1e-3)
            # The Ultralytics loader must accept every converted label file
            lb_file = out / "labels" / f"{im_file.stem}.txt"
            res = verify_image_label((str(out / "images" / im_file.name), str(lb_file), "", False, 15, 0, 0, False))
            assert res[8] == 0, res[9]  # nc: corrupt count
        assert stats["objects"] == stats["written"] == total


@needs_data
def test_convert_dota_skip_difficult(tmp_path):
    src = _link_dota(tmp_path, DOTA_DEMO, ["P0004", "P0005"])
    n_difficult = sum(
        o["difficult"] != 0 for s in ("P0004", "P0005") for o in parse_dota_label(src / "labelTxt" / f"{s}.txt")
    )
    assert n_difficult > 0
    keep = convert_dota(src, tmp_path / "keep", copy_images=False)
    drop = convert_dota(src, tmp_path / "drop", skip_difficult=True, copy_images=False)
    assert drop["difficult_skipped"] == n_difficult and keep["difficult_skipped"] == 0
    assert drop["written"] == keep["written"] - n_difficult
    assert not any((tmp_path / "drop" / "images").iterdir())


def _tile_rows(out: Path) -> dict[str, np.ndarray]:
    return {p.stem: _read_rows(p) for p in sorted((out / "labels").glob("*.txt"))}


@needs_data
@pytest.mark.parametrize("stem", ["P1088", "P0168"])
def test_tile_dota_real(tmp_path, stem):
    src = _link_dota(tmp_path, DOTA_EX, [stem])
    out = tmp_path / "tiles"
    stats = tile_dota(src, out, tile=512, gap=128, iof_thr=0.7)
    objs = parse_dota_label(src / "labelTxt" / f"{stem}.txt")
    polys = np.stack([o["poly"] for o in objs])
    cls = np.array([DOTA_V1_CLASSES.index(o["name"]) for o in objs])
    h, w = cv2.imread(str(src / "images" / f"{stem}.png")).shape[:2]
    assert stats["objects"] == len(objs) and stats["images"] == 1
    assert stats["tiles"] == len(list((out / "images").glob("*.jpg")))
    rows_by_tile = _tile_rows(out)
    assert sum(len(r) for r in rows_by_tile.values()) == stats["written"] > len(objs) * 0.9

    seen = set()
    n_cut = 0
    for name, rows in rows_by_tile.items():
        size, x0, y0 = (int(v) for v in name.split("__", 1)[1].replace("___", "__").split("__"))
        assert size == 512
        tile_im = cv2.imread(str(out / "images" / f"{name}.jpg"))
        ph, pw = tile_im.shape[:2]
        assert (pw, ph) == (min(512, w - x0), min(512, h - y0))
        assert rows[:, 1:].min() >= 0 and rows[:, 1:].max() <= 1
        pts = rows[:, 1:].reshape(-1, 4, 2) * [pw, ph] + [x0, y0]
        for c, p in zip(rows[:, 0].astype(int), pts):
            exact = np.abs(polys - p).max(axis=(1, 2)) < 1e-3
            if exact.any():  # an object wholly inside the tile keeps its exact corners
                i = int(np.flatnonzero(exact)[0])
            else:  # a cut object: its box covers the visible part of one same-class source object
                n_cut += 1
                overlap = []
                for j in np.flatnonzero(cls == c):
                    area, _ = dataprep.clip_polygon_to_window(polys[j], (x0, y0, x0 + pw, y0 + ph))
                    inter, _ = cv2.intersectConvexConvex(
                        p.astype(np.float32), cv2.convexHull(polys[j].astype(np.float32))
                    )
                    overlap.append((inter / max(cv2.contourArea(p.astype(np.float32)), 1e-9), area, j))
                frac, area, i = max(overlap)
                assert frac > 0.9 and area >= 0.7 * dota._convex_area(polys[i])
            assert cls[i] == c
            seen.add(i)
        # every object wholly inside this window is labelled in it
        inside = (polys.min(1) >= [x0, y0]).all(1) & (polys.max(1) <= [x0 + pw, y0 + ph]).all(1)
        assert inside.sum() <= len(rows)
    assert n_cut == stats["cut"]
    assert len(seen) == len(objs) - stats["lost"] - stats["degenerate"]


@needs_data
def test_tile_dota_difficult_and_background(tmp_path):
    src = _link_dota(tmp_path, DOTA_DEMO, ["P0005"])
    n_difficult = sum(o["difficult"] != 0 for o in parse_dota_label(src / "labelTxt" / "P0005.txt"))
    keep = tile_dota(src, tmp_path / "keep", tile=512, gap=128, suffix=".png")
    drop = tile_dota(src, tmp_path / "drop", tile=512, gap=128, skip_difficult=True, background=False, split="train")
    assert drop["difficult_skipped"] == n_difficult > 0
    assert drop["written"] < keep["written"]
    assert (tmp_path / "drop" / "labels" / "train").is_dir()
    n_img = len(list((tmp_path / "drop" / "images" / "train").iterdir()))
    assert n_img == len(list((tmp_path / "drop" / "labels" / "train").iterdir())) == drop["tiles"]
    assert drop["background_tiles"] == 0


@needs_data
def test_convert_dior_r_real(tmp_path):
    xml = DATA / "dior-r-sample" / "dior" / "Annotations" / "Oriented Bounding Boxes" / "00001.xml"
    stats = convert_dior_r(xml.parent, tmp_path / "labels")
    assert stats == {"images": 1, "objects": 1, "written": 1, "difficult_skipped": 0, "unknown": 0, "degenerate": 0}
    rows = _read_rows(tmp_path / "labels" / "00001.txt")
    rb = ET.parse(xml).getroot().find("object/robndbox")
    keys = ("left_top", "right_top", "right_bottom", "left_bottom")
    corners = [[float(rb.find(f"{a}_{k}").text) for a in "xy"] for k in keys]
    assert int(rows[0, 0]) == DIOR_CLASSES.index("golffield")
    np.testing.assert_allclose(rows[0, 1:].reshape(4, 2) * [800, 800], corners, atol=1e-3)

    # The horizontal-box converter refuses oriented annotations rather than guessing
    with pytest.raises(ValueError, match="bndbox"):
        convert_dior_voc(xml, tmp_path / "hbb")


@needs_data
def test_convert_hrsc_real(tmp_path):
    xml = DATA / "dior-r-sample" / "hrsc" / "FullDataSet" / "Annotations" / "100000006.xml"
    stats = convert_dior_r(xml, tmp_path, classes=["ship"], clip=False)
    assert stats["written"] == 1
    obj = ET.parse(xml).getroot().find("HRSC_Objects/HRSC_Object")
    cx, cy, bw, bh, ang = (float(obj.find(f"mbox_{k}").text) for k in ("cx", "cy", "w", "h", "ang"))
    pts = _read_rows(tmp_path / "100000006.txt")[0, 1:].reshape(4, 2) * [1172, 816]
    np.testing.assert_allclose(pts.mean(0), [cx, cy], atol=1e-3)
    sides = sorted(np.linalg.norm(pts - np.roll(pts, 1, 0), axis=1))
    np.testing.assert_allclose(sides, sorted([bh, bh, bw, bw]), rtol=1e-6)
    edge = pts[1] - pts[0] if abs(np.linalg.norm(pts[1] - pts[0]) - bw) < 1e-2 else pts[2] - pts[1]
    assert math.isclose(math.tan(math.atan2(edge[1], edge[0])), math.tan(ang), rel_tol=1e-4)
    # the horizontal hull agrees with HRSC's own horizontal box (within annotation rounding)
    hull = [pts[:, 0].min(), pts[:, 1].min(), pts[:, 0].max(), pts[:, 1].max()]
    hbb = [float(obj.find(k).text) for k in ("box_xmin", "box_ymin", "box_xmax", "box_ymax")]
    assert np.abs(np.subtract(hull, hbb)).max() < 60


@needs_data
def test_convert_voc_deepforest(tmp_path):
    trees = DATA / "deepforest-trees"
    with pytest.raises(ValueError, match="Alive|Dead"):
        convert_dior_voc(trees, tmp_path / "err", classes=["Tree"])
    stats = convert_dior_voc(trees, tmp_path / "skip", classes=["Tree"], unknown="skip")
    assert stats["images"] == 3 and stats["written"] == 279 + 61 and stats["unknown"] == 37
    stats = convert_dior_voc(trees, tmp_path / "all", classes=["Tree", "Alive", "Dead"])
    assert stats["written"] == stats["objects"] == 279 + 61 + 37

    for xml in sorted(trees.glob("*.xml")):
        root = ET.parse(xml).getroot()
        w, h = (int(root.find(f"size/{k}").text) for k in ("width", "height"))
        img_h, img_w = cv2.imread(str(xml.with_suffix(".png"))).shape[:2]  # <filename> may say .tif
        assert (w, h) == (img_w, img_h)
        rows = _read_rows(tmp_path / "all" / f"{xml.stem}.txt")
        objs = root.findall("object")
        assert len(rows) == len(objs)
        for row, obj in zip(rows, objs):
            assert int(row[0]) == ["Tree", "Alive", "Dead"].index(obj.find("name").text)
            xc, yc, bw, bh = row[1:] * [w, h, w, h]
            box = [float(obj.find(f"bndbox/{k}").text) for k in ("xmin", "ymin", "xmax", "ymax")]
            np.testing.assert_allclose([xc - bw / 2, yc - bh / 2, xc + bw / 2, yc + bh / 2], box, atol=1e-3)


def test_convert_voc_size_from_image(tmp_path):
    cv2.imwrite(str(tmp_path / "im.jpg"), np.zeros((50, 100, 3), np.uint8))
    (tmp_path / "im.xml").write_text(
        "<annotation><filename>im.jpg</filename><size><width>0</width><height>0</height></size>"
        "<object><name>vehicle</name><difficult>1</difficult><bndbox><xmin>10</xmin><ymin>5</ymin>"
        "<xmax>30</xmax><ymax>25</ymax></bndbox></object></annotation>"
    )
    convert_dior_voc(tmp_path / "im.xml", tmp_path / "labels")
    np.testing.assert_allclose(_read_rows(tmp_path / "labels" / "im.txt")[0], [18, 0.2, 0.3, 0.2, 0.4])
    assert convert_dior_voc(tmp_path, tmp_path / "l2", skip_difficult=True)["difficult_skipped"] == 1


def test_write_data_yaml(tmp_path):
    from ultralytics.utils import YAML

    p = write_data_yaml(tmp_path / "d" / "data.yaml", tmp_path, "images/train", "images/val", ["a", "b"])
    assert YAML.load(p) == {
        "path": str(tmp_path),
        "train": "images/train",
        "val": "images/val",
        "names": {0: "a", 1: "b"},
    }


@needs_data
def test_prepare_dior_r_sample(tmp_path):
    res = dataprep.run_convert("dior-r", DATA / "dior-r-sample" / "dior", tmp_path / "DIOR-R")
    assert res["all"]["written"] == 1 and res["all"]["missing_images"] == 0
    assert (tmp_path / "DIOR-R" / "images" / "all" / "00001.jpg").is_file()
    assert (tmp_path / "DIOR-R" / "labels" / "all" / "00001.txt").is_file()
    from ultralytics.utils import YAML

    data = YAML.load(res["yaml"])
    assert data["train"] == data["val"] == "images/all" and len(data["names"]) == 20
