"""DIOR (Pascal VOC), DIOR-R and HRSC2016 XML annotations to Ultralytics detect or OBB labels."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from ultralytics.utils.ops import xywhr2xyxyxyxy

from ds2d2_yolo.tools.dataprep.common import (
    DIOR_CLASSES,
    check_unknown,
    class_index_map,
    find_image,
    fmt_floats,
    image_size,
    lookup_class,
    new_stats,
)


def _xml_files(xml_path_or_dir: str | Path) -> list[Path]:
    """Return the XML file itself or the sorted *.xml files of a folder."""
    p = Path(xml_path_or_dir)
    if p.is_dir():
        return sorted(p.glob("*.xml"))
    if p.is_file():
        return [p]
    raise FileNotFoundError(f"{p} is neither an XML file nor a folder")


def _text(node: ET.Element | None, tag: str, default: str | None = None) -> str | None:
    """Return the stripped text of a child element, or `default` when absent or empty."""
    child = node.find(tag) if node is not None else None
    if child is None or child.text is None or not child.text.strip():
        return default
    return child.text.strip()


def _float(node: ET.Element, tag: str) -> float:
    """Return a required float child of an XML element."""
    value = _text(node, tag)
    if value is None:
        raise ValueError(f"missing <{tag}>")
    return float(value)


def _xml_image_size(root: ET.Element, xml_file: Path, images_dir: Path | None, stem: str) -> tuple[int, int]:
    """Image (width, height) from VOC `<size>` or HRSC `Img_Size*`, else from the image file itself."""
    size = root.find("size")
    w = _text(size, "width") if size is not None else _text(root, "Img_SizeWidth")
    h = _text(size, "height") if size is not None else _text(root, "Img_SizeHeight")
    if w is not None and h is not None and float(w) > 0 and float(h) > 0:
        return int(float(w)), int(float(h))
    # Some VOC exports write <width>0</width>; the image is then the only reliable source
    filename = _text(root, "filename")
    for folder in [f for f in (images_dir, xml_file.parent) if f is not None]:
        candidate = folder / filename if filename else None
        image = candidate if candidate is not None and candidate.is_file() else find_image(folder, stem)
        if image is not None:
            return image_size(image)
    raise ValueError(f"{xml_file}: no image size in the XML and no image found; pass images_dir")


def _xml_stem(root: ET.Element, xml_file: Path) -> str:
    """Label file stem: the annotated image's stem (`<filename>`), falling back to the XML's own stem."""
    filename = _text(root, "filename")
    return Path(filename).stem if filename else xml_file.stem


def _object_polygon(obj: ET.Element) -> np.ndarray:
    """Corners (4, 2) of a DIOR-R / roLabelImg / VOC object, in pixels."""
    rb = obj.find("robndbox")
    if rb is not None and rb.find("x_left_top") is not None:  # DIOR-R: the four corners
        keys = ("left_top", "right_top", "right_bottom", "left_bottom")
        return np.array([[_float(rb, f"x_{k}"), _float(rb, f"y_{k}")] for k in keys], dtype=np.float64)
    if rb is not None and rb.find("cx") is not None:  # roLabelImg: centre, size and angle in radians
        xywhr = np.array([[_float(rb, t) for t in ("cx", "cy", "w", "h", "angle")]], dtype=np.float64)
        return np.asarray(xywhr2xyxyxyxy(xywhr), dtype=np.float64).reshape(4, 2)
    bb = obj.find("bndbox")
    if bb is not None:  # horizontal box in an oriented file (roLabelImg mixes both)
        x0, y0, x1, y1 = (_float(bb, t) for t in ("xmin", "ymin", "xmax", "ymax"))
        return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], dtype=np.float64)
    raise ValueError("object has neither <robndbox> nor <bndbox>")


def _hrsc_objects(root: ET.Element) -> list[tuple[str, int, np.ndarray]]:
    """HRSC2016 objects as ('ship', difficult, corners); `mbox_*` is the rotated box, angle in radians."""
    out = []
    for obj in root.iter("HRSC_Object"):
        xywhr = np.array([[_float(obj, t) for t in ("mbox_cx", "mbox_cy", "mbox_w", "mbox_h", "mbox_ang")]])
        corners = np.asarray(xywhr2xyxyxyxy(xywhr), dtype=np.float64).reshape(4, 2)
        out.append(("ship", int(float(_text(obj, "difficult", "0"))), corners))
    return out


def _convert_xml(
    xml_path_or_dir: str | Path,
    dst_labels_dir: str | Path,
    classes: Sequence[str] | dict[int, str],
    oriented: bool,
    images_dir: str | Path | None,
    skip_difficult: bool,
    unknown: str,
    clip: bool,
) -> dict[str, Any]:
    """Shared XML conversion loop of the DIOR (detect) and DIOR-R/HRSC (OBB) converters."""
    check_unknown(unknown)
    lookup = class_index_map(classes)
    dst = Path(dst_labels_dir)
    dst.mkdir(parents=True, exist_ok=True)
    images_dir = Path(images_dir) if images_dir is not None else None
    stats = new_stats(degenerate=0)
    for xml_file in _xml_files(xml_path_or_dir):
        root = ET.parse(xml_file).getroot()
        stem = _xml_stem(root, xml_file) if root.tag != "HRSC_Image" else _text(root, "Img_FileName", xml_file.stem)
        w, h = _xml_image_size(root, xml_file, images_dir, stem)
        if root.tag == "HRSC_Image":
            objects = _hrsc_objects(root)
        else:
            objects = []
            for obj in root.iter("object"):
                name = _text(obj, "name", "")
                difficult = int(float(_text(obj, "difficult", "0")))
                try:
                    objects.append((name, difficult, _object_polygon(obj) if oriented else obj.find("bndbox")))
                except ValueError as e:
                    raise ValueError(f"{xml_file}: {e}") from e
        rows = []
        for name, difficult, geom in objects:
            stats["objects"] += 1
            if difficult and skip_difficult:
                stats["difficult_skipped"] += 1
                continue
            idx = lookup_class(lookup, name, unknown, xml_file, stats)
            if idx is None:
                continue
            if oriented:
                norm = geom / np.array([w, h], dtype=np.float64)
                rows.append(f"{idx} {fmt_floats((norm.clip(0.0, 1.0) if clip else norm).reshape(-1))}")
            else:
                if geom is None:
                    raise ValueError(f"{xml_file}: object '{name}' has no <bndbox>")
                x0, y0, x1, y1 = (_float(geom, t) for t in ("xmin", "ymin", "xmax", "ymax"))
                if clip:
                    x0, x1 = min(max(x0, 0.0), w), min(max(x1, 0.0), w)
                    y0, y1 = min(max(y0, 0.0), h), min(max(y1, 0.0), h)
                if x1 <= x0 or y1 <= y0:
                    stats["degenerate"] += 1
                    continue
                rows.append(f"{idx} {fmt_floats(((x0 + x1) / 2 / w, (y0 + y1) / 2 / h, (x1 - x0) / w, (y1 - y0) / h))}")
        (dst / f"{stem}.txt").write_text("".join(f"{r}\n" for r in rows), encoding="utf-8")
        stats["written"] += len(rows)
        stats["images"] += 1
    return stats


def convert_dior_voc(
    xml_path_or_dir: str | Path,
    dst_labels_dir: str | Path,
    classes: Sequence[str] | dict[int, str] = DIOR_CLASSES,
    *,
    images_dir: str | Path | None = None,
    skip_difficult: bool = False,
    unknown: str = "error",
    clip: bool = True,
) -> dict[str, Any]:
    """Convert Pascal VOC XML with horizontal `<bndbox>` boxes (DIOR, any VOC export) to YOLO detect labels.

    Coordinates are used as written (no VOC 1-based shift; DIOR and most remote-sensing exports are 0-based). Each
    label file is named after the annotated image (`<filename>` stem, else the XML stem).

    Args:
        xml_path_or_dir (str | Path): One XML file or a folder of them (e.g. `Annotations/Horizontal Bounding Boxes`).
        dst_labels_dir (str | Path): Output folder for `*.txt` labels (`cls xc yc w h`, normalised).
        classes (Sequence[str] | dict[int, str]): Class names in index order.
        images_dir (str | Path, optional): Where to read image sizes when the XML `<size>` is missing or zero
            (defaults to the XML's folder).
        skip_difficult (bool): Drop objects with `<difficult>1</difficult>`.
        unknown (str): 'error' raises on a class name not in `classes`, 'skip' drops and counts it.
        clip (bool): Clip boxes to the image before normalising.

    Returns:
        (dict[str, Any]): Stats: `images`, `objects`, `written`, `difficult_skipped`, `unknown`, `degenerate`.
    """
    return _convert_xml(xml_path_or_dir, dst_labels_dir, classes, False, images_dir, skip_difficult, unknown, clip)


def convert_dior_r(
    xml_path_or_dir: str | Path,
    dst_labels_dir: str | Path,
    classes: Sequence[str] | dict[int, str] = DIOR_CLASSES,
    *,
    images_dir: str | Path | None = None,
    skip_difficult: bool = False,
    unknown: str = "error",
    clip: bool = True,
) -> dict[str, Any]:
    """Convert oriented-box XML (DIOR-R, roLabelImg, HRSC2016) to YOLO-OBB labels.

    Supported object encodings: DIOR-R `<robndbox>` with the four corners `x_left_top ... y_left_bottom` (the
    `<angle>` element is redundant and ignored); roLabelImg `<robndbox>` with `cx cy w h angle` (radians); plain
    `<bndbox>` objects; and HRSC2016 `HRSC_Image` files (`mbox_cx mbox_cy mbox_w mbox_h mbox_ang`, radians), whose
    objects are all named 'ship' (HRSC level-1 task), so pass e.g. `classes=["ship"]` for them.

    Args:
        xml_path_or_dir (str | Path): One XML file or a folder of them (e.g. `Annotations/Oriented Bounding Boxes`).
        dst_labels_dir (str | Path): Output folder for `*.txt` labels (`cls x1 y1 ... x4 y4`, normalised).
        classes (Sequence[str] | dict[int, str]): Class names in index order.
        images_dir (str | Path, optional): Where to read image sizes when the XML has none (defaults to the XML's
            folder).
        skip_difficult (bool): Drop objects flagged difficult.
        unknown (str): 'error' raises on a class name not in `classes`, 'skip' drops and counts it.
        clip (bool): Clip normalised corners to [0, 1].

    Returns:
        (dict[str, Any]): Stats: `images`, `objects`, `written`, `difficult_skipped`, `unknown`, `degenerate`.
    """
    return _convert_xml(xml_path_or_dir, dst_labels_dir, classes, True, images_dir, skip_difficult, unknown, clip)
