"""Dataset preparation: DOTA / DIOR / DIOR-R / HRSC annotations to Ultralytics YOLO labels, and DOTA tiling.

All functions are pure library code (no argument parsing) so the CLI, notebooks and tests share one implementation.

Output layouts follow Ultralytics conventions:

- detect labels: one `cls xc yc w h` row per object, normalised to [0, 1];
- OBB labels: one `cls x1 y1 x2 y2 x3 y3 x4 y4` row per object, normalised to [0, 1];
- a dataset folder holds `images/[split/]` and `labels/[split/]` with matching file stems.

Class names are matched case-insensitively and ignoring '-', '_' and spaces, so DOTA's `storage-tank`, DIOR's
`storagetank` and a model's `storage tank` all resolve to the same index.

Unknown class names: every converter takes `unknown="error"` (default: raise `ValueError` naming the file and the
class, so a wrong class list never silently drops data) or `unknown="skip"` (drop the object and count it in the
returned stats under `unknown`, e.g. DOTA-v1.5 `container-crane` when converting with the 15 DOTA-v1.0 classes).
"""

from __future__ import annotations

import os
import random
import shutil
import tempfile
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image
from ultralytics.data.split_dota import get_windows
from ultralytics.data.utils import exif_size
from ultralytics.utils import LOGGER, YAML
from ultralytics.utils.ops import xywhr2xyxyxyxy
from ultralytics.utils.patches import imread, imwrite

DOTA_V1_CLASSES: tuple[str, ...] = (
    "plane",
    "ship",
    "storage-tank",
    "baseball-diamond",
    "tennis-court",
    "basketball-court",
    "ground-track-field",
    "harbor",
    "bridge",
    "large-vehicle",
    "small-vehicle",
    "helicopter",
    "roundabout",
    "soccer-ball-field",
    "swimming-pool",
)

DIOR_CLASSES: tuple[str, ...] = (
    "airplane",
    "airport",
    "baseballfield",
    "basketballcourt",
    "bridge",
    "chimney",
    "dam",
    "Expressway-Service-area",
    "Expressway-toll-station",
    "golffield",
    "groundtrackfield",
    "harbor",
    "overpass",
    "ship",
    "stadium",
    "storagetank",
    "tenniscourt",
    "trainstation",
    "vehicle",
    "windmill",
)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def normalize_class_name(name: str) -> str:
    """Return the matching key of a class name: lower case without '-', '_' or whitespace.

    Args:
        name (str): Class name as written in an annotation or a class list.

    Returns:
        (str): Canonical key, e.g. 'Expressway-Service-area' -> 'expresswayservicearea'.
    """
    return "".join(ch for ch in name.lower() if ch not in "-_ \t")


def class_index_map(classes: Sequence[str] | dict[int, str]) -> dict[str, int]:
    """Build the lookup from canonical class key to class index.

    Args:
        classes (Sequence[str] | dict[int, str]): Class names in index order, or an Ultralytics-style `names` dict.

    Returns:
        (dict[str, int]): Canonical key -> class index.

    Raises:
        ValueError: If two class names collapse to the same canonical key (they could not be told apart).
    """
    items = sorted(classes.items()) if isinstance(classes, dict) else enumerate(classes)
    lookup: dict[str, int] = {}
    for i, name in items:
        key = normalize_class_name(str(name))
        if key in lookup:
            raise ValueError(f"class names {classes!r} are ambiguous: '{name}' matches index {lookup[key]} and {i}")
        lookup[key] = int(i)
    return lookup


def _class_names(classes: Sequence[str] | dict[int, str]) -> list[str]:
    """Return class names as a list in index order."""
    if isinstance(classes, dict):
        return [str(classes[i]) for i in sorted(classes)]
    return [str(c) for c in classes]


def _check_unknown(unknown: str) -> None:
    """Validate the `unknown` policy argument."""
    if unknown not in {"error", "skip"}:
        raise ValueError(f"unknown must be 'error' or 'skip', not {unknown!r}")


def _lookup_class(lookup: dict[str, int], name: str, unknown: str, source: Path | str, stats: dict) -> int | None:
    """Resolve a class name to its index under the `unknown` policy; None means skip the object."""
    idx = lookup.get(normalize_class_name(name))
    if idx is None:
        if unknown == "error":
            raise ValueError(
                f"{source}: class '{name}' is not in the class list {sorted(lookup)}; pass the dataset's classes "
                "or unknown='skip' to drop such objects"
            )
        stats["unknown"] = stats.get("unknown", 0) + 1
        seen = stats.setdefault("unknown_names", [])
        if name not in seen:
            seen.append(name)
    return idx


def _fmt(values: Iterable[float]) -> str:
    """Format normalised coordinates; 8 significant digits keep sub-millipixel precision on 20k-px DOTA images."""
    return " ".join(f"{v:.8g}" for v in values)


def _image_size(path: Path) -> tuple[int, int]:
    """Return (width, height) of an image without decoding its pixels when PIL can read the header."""
    with Image.open(path) as im:
        return exif_size(im)  # EXIF-rotated size, as the Ultralytics loader sees the image


def _find_image(folder: Path, stem: str) -> Path | None:
    """Find an image with the given stem in a folder, trying the usual suffixes."""
    for suffix in IMAGE_SUFFIXES:
        for candidate in (folder / f"{stem}{suffix}", folder / f"{stem}{suffix.upper()}"):
            if candidate.is_file():
                return candidate
    return None


def _list_images(folder: Path) -> list[Path]:
    """List image files of a folder (non-recursive), sorted by name."""
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def split_off_val(stems: Iterable[str], fraction: float, seed: int = 0) -> tuple[list[str], list[str]]:
    """Split whole images into train and val, reproducibly: tiles of one scene never land on both sides.

    Args:
        stems (Iterable[str]): Image names (stems).
        fraction (float): Share of the images for val, in [0, 1); rounded, at least 1 image and at most all but one.
        seed (int): Seed of the draw.

    Returns:
        (tuple[list[str], list[str]]): Sorted train and val stems; val is empty for `fraction=0` or under 2 images.
    """
    stems = sorted(set(stems))
    if fraction <= 0 or len(stems) < 2:
        return stems, []
    k = min(max(1, round(fraction * len(stems))), len(stems) - 1)
    val = set(random.Random(seed).sample(stems, k))
    return [x for x in stems if x not in val], sorted(val)


def _check_val_fraction(val: float) -> float:
    """Validate a val fraction key (one line naming the fix)."""
    val = float(val)
    if not 0 <= val < 1:
        raise ValueError(f"val={val} must be a fraction in [0, 1), e.g. val=0.2 (0 validates on the train images)")
    return val


# ---------------------------------------------------------------------------------------------------------------------
# DOTA
# ---------------------------------------------------------------------------------------------------------------------


def _parse_dota_lines(lines: Iterable[str]) -> tuple[list[dict[str, Any]], int]:
    """Parse DOTA labelTxt lines into objects, returning them with the number of malformed lines skipped."""
    objects, skipped = [], 0
    for line in lines:
        parts = line.split()
        if not parts:
            continue
        if ":" in parts[0] and len(parts) <= 2:  # `imagesource:GoogleEarth`, `gsd:0.13`, `gsd:null` header lines
            continue
        if len(parts) < 9:
            skipped += 1
            continue
        try:
            coords = np.array([float(v) for v in parts[:8]], dtype=np.float64)
            # DOTA-v1.0 test-style lines have no difficult field; devkit patches also use 2 for "cut by the border"
            difficult = int(float(parts[9])) if len(parts) > 9 else 0
        except ValueError:
            skipped += 1
            continue
        if not np.isfinite(coords).all():
            skipped += 1
            continue
        objects.append({"poly": coords.reshape(4, 2), "name": parts[8], "difficult": difficult})
    return objects, skipped


def parse_dota_label(path: str | Path) -> list[dict[str, Any]]:
    """Read a DOTA labelTxt file.

    The optional `imagesource:` / `gsd:` header lines are ignored; every other line is `x1 y1 x2 y2 x3 y3 x4 y4 class
    difficult` in pixels (the difficult field may be missing). Blank lines are ignored and malformed lines (too few
    fields, non-numeric coordinates) are skipped with one warning per file, never an exception.

    Args:
        path (str | Path): labelTxt file.

    Returns:
        (list[dict[str, Any]]): One dict per object with keys `poly` (np.ndarray of shape (4, 2), float64 pixels, in
            file order), `name` (str, as written) and `difficult` (int, 0 when absent).
    """
    path = Path(path)
    with open(path, encoding="utf-8-sig", errors="replace") as f:
        objects, skipped = _parse_dota_lines(f.read().splitlines())
    if skipped:
        LOGGER.warning(f"{path}: skipped {skipped} malformed DOTA label line(s)")
    return objects


def _dota_objects(
    label_file: Path | None,
    lookup: dict[str, int],
    unknown: str,
    skip_difficult: bool,
    stats: dict[str, Any],
) -> tuple[np.ndarray, np.ndarray]:
    """Load one DOTA label file as (N, 4, 2) pixel polygons and (N,) class indices, updating stats."""
    polys, cls = [], []
    if label_file is not None and label_file.is_file():
        with open(label_file, encoding="utf-8-sig", errors="replace") as f:
            objects, skipped = _parse_dota_lines(f.read().splitlines())
        if skipped:
            LOGGER.warning(f"{label_file}: skipped {skipped} malformed DOTA label line(s)")
        stats["malformed_lines"] += skipped
        for obj in objects:
            stats["objects"] += 1
            if obj["difficult"] and skip_difficult:
                stats["difficult_skipped"] += 1
                continue
            idx = _lookup_class(lookup, obj["name"], unknown, label_file, stats)
            if idx is None:
                continue
            polys.append(obj["poly"])
            cls.append(idx)
    if not polys:
        return np.zeros((0, 4, 2), dtype=np.float64), np.zeros(0, dtype=np.int64)
    return np.stack(polys), np.array(cls, dtype=np.int64)


def _dota_dirs(src_dir: str | Path) -> tuple[Path, Path]:
    """Return the images and labelTxt folders of a DOTA split folder; only images/ is required (test has no labels)."""
    src = Path(src_dir)
    images, labels = src / "images", src / "labelTxt"
    if not images.is_dir():
        raise FileNotFoundError(f"{images} not found: a DOTA folder holds images/ and labelTxt/")
    if not labels.is_dir():
        LOGGER.warning(f"{labels} not found: every image of {src} is treated as a background image")
    return images, labels


def _out_dirs(dst_dir: str | Path, split: str | None) -> tuple[Path, Path]:
    """Create and return the Ultralytics images/ and labels/ output folders (with a split subfolder if given)."""
    dst = Path(dst_dir)
    im_dir, lb_dir = dst / "images", dst / "labels"
    if split:
        im_dir, lb_dir = im_dir / split, lb_dir / split
    im_dir.mkdir(parents=True, exist_ok=True)
    lb_dir.mkdir(parents=True, exist_ok=True)
    return im_dir, lb_dir


def _new_stats(**extra: int) -> dict[str, Any]:
    """Return a fresh stats dict with the counters every converter reports."""
    return {"images": 0, "objects": 0, "written": 0, "difficult_skipped": 0, "unknown": 0, **extra}


def convert_dota(
    src_dir: str | Path,
    dst_dir: str | Path,
    classes: Sequence[str] | dict[int, str] = DOTA_V1_CLASSES,
    skip_difficult: bool = False,
    *,
    split: str | None = None,
    unknown: str = "error",
    clip: bool = True,
    copy_images: bool = True,
) -> dict[str, Any]:
    """Convert a DOTA folder (`images/`, `labelTxt/`) to the Ultralytics YOLO-OBB layout without tiling.

    Args:
        src_dir (str | Path): DOTA split folder holding `images/` and `labelTxt/`.
        dst_dir (str | Path): Output dataset root; `images/[split/]` and `labels/[split/]` are created inside.
        classes (Sequence[str] | dict[int, str]): Class names in index order.
        skip_difficult (bool): Drop objects flagged difficult (non-zero difficult field).
        split (str, optional): Subfolder name (e.g. 'train') under `images/` and `labels/`.
        unknown (str): 'error' raises on a class name not in `classes`, 'skip' drops and counts it.
        clip (bool): Clip normalised corners to [0, 1]; DOTA polygons sometimes run past the image border and the
            Ultralytics label check rejects a whole image whose box exceeds the border by more than 1%.
        copy_images (bool): Copy the images next to the labels; False writes labels only (place images yourself).

    Returns:
        (dict[str, Any]): Stats: `images`, `objects` (parsed), `written` (label rows), `difficult_skipped`,
            `unknown`, `malformed_lines`, `missing_labels` (images without labelTxt, written as empty labels),
            `labels_without_image` (labelTxt files ignored because their image is absent).
    """
    _check_unknown(unknown)
    im_src, lb_src = _dota_dirs(src_dir)
    im_dst, lb_dst = _out_dirs(dst_dir, split)
    lookup = class_index_map(classes)
    stats = _new_stats(malformed_lines=0, missing_labels=0, labels_without_image=0)

    images = _list_images(im_src)
    stems = {p.stem for p in images}
    label_files = lb_src.glob("*.txt") if lb_src.is_dir() else []
    stats["labels_without_image"] = sum(1 for p in label_files if p.stem not in stems)
    for im_file in images:
        label_file = lb_src / f"{im_file.stem}.txt"
        if not label_file.is_file():
            stats["missing_labels"] += 1
        w, h = _image_size(im_file)
        polys, cls = _dota_objects(label_file, lookup, unknown, skip_difficult, stats)
        norm = polys / np.array([w, h], dtype=np.float64)
        if clip:
            norm = norm.clip(0.0, 1.0)
        rows = [f"{c} {_fmt(p.reshape(-1))}" for c, p in zip(cls.tolist(), norm)]
        (lb_dst / f"{im_file.stem}.txt").write_text("".join(f"{r}\n" for r in rows), encoding="utf-8")
        stats["written"] += len(rows)
        stats["images"] += 1
        if copy_images:
            shutil.copy2(im_file, im_dst / im_file.name)
    return stats


def _convex_area(poly: np.ndarray) -> float:
    """Area of the convex hull of a polygon; annotators' corner order is not guaranteed, the hull is order-free."""
    return float(cv2.contourArea(cv2.convexHull(poly.astype(np.float32))))


def clip_polygon_to_window(poly: np.ndarray, window: Sequence[float]) -> tuple[float, np.ndarray | None]:
    """Intersect an object polygon with an axis-aligned window.

    Args:
        poly (np.ndarray): Object corners, shape (4, 2) or (K, 2), pixels.
        window (Sequence[float]): Window as (x0, y0, x1, y1) in the same pixels.

    Returns:
        (tuple[float, np.ndarray | None]): Intersection area and its polygon of shape (M, 2) (None when empty). The
            object is taken as the convex hull of its corners.
    """
    x0, y0, x1, y1 = (float(v) for v in window)
    rect = np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], dtype=np.float32)
    hull = cv2.convexHull(poly.astype(np.float32))
    area, inter = cv2.intersectConvexConvex(hull, rect)
    if area <= 0 or inter is None:
        return 0.0, None
    return float(area), inter.reshape(-1, 2).astype(np.float64)


def tile_dota(
    src_dir: str | Path,
    dst_dir: str | Path,
    tile: int = 1024,
    gap: int = 200,
    rates: Sequence[float] = (1.0,),
    *,
    classes: Sequence[str] | dict[int, str] = DOTA_V1_CLASSES,
    iof_thr: float = 0.7,
    skip_difficult: bool = False,
    split: str | None = None,
    unknown: str = "error",
    background: bool = True,
    im_rate_thr: float = 0.6,
    suffix: str = ".jpg",
) -> dict[str, Any]:
    """Cut large DOTA images into overlapping tiles with YOLO-OBB labels.

    Windows come from `ultralytics.data.split_dota.get_windows` (same grid and the same tile naming
    `{stem}__{size}__{x0}___{y0}` as Ultralytics' DOTA split, so its merge tooling recognises the tiles). Object
    assignment is reimplemented with OpenCV instead of `bbox_iof`, which needs shapely, and so that cut objects are
    clipped: an object goes to a tile when the area of its part inside the tile divided by its own area (IoF) is at
    least `iof_thr`. Objects entirely inside a tile keep their exact corners; cut objects are replaced by the
    minimum-area rectangle of their visible part, with corners clamped to the tile, so every label lies in [0, 1].

    As in Ultralytics, a rate r uses windows of `tile / r` pixels with gap `gap / r` and does not resize the pixels
    (training resizes each tile to `imgsz` anyway).

    Args:
        src_dir (str | Path): DOTA split folder holding `images/` and `labelTxt/` (labelTxt may lack files: test set).
        dst_dir (str | Path): Output dataset root; `images/[split/]` and `labels/[split/]` are created inside.
        tile (int): Tile size in pixels at rate 1.
        gap (int): Overlap between neighbouring tiles in pixels at rate 1.
        rates (Sequence[float]): Scale rates; each adds a grid of windows of size `tile / rate`.
        classes (Sequence[str] | dict[int, str]): Class names in index order.
        iof_thr (float): Minimum fraction of an object's area inside a tile for it to be labelled there.
        skip_difficult (bool): Drop objects flagged difficult; by default they are kept like any other object.
        split (str, optional): Subfolder name (e.g. 'train') under `images/` and `labels/`.
        unknown (str): 'error' raises on a class name not in `classes`, 'skip' drops and counts it.
        background (bool): Also save tiles without any object (Ultralytics treats them as background images).
        im_rate_thr (float): Drop windows whose image content is at most this fraction of the window area.
        suffix (str): Tile image suffix; '.jpg' matches Ultralytics' DOTA split, '.png' is lossless.

    Returns:
        (dict[str, Any]): Stats: `images`, `objects` (parsed), `tiles` (saved), `background_tiles`, `written` (label
            rows over all tiles), `cut` (rows of objects cut by a tile border), `difficult_skipped`, `unknown`,
            `malformed_lines`, `degenerate` (zero-area polygons dropped), `lost` (objects assigned to no tile).
    """
    _check_unknown(unknown)
    if not 0.0 < iof_thr <= 1.0:
        raise ValueError(f"iof_thr must be in (0, 1], not {iof_thr}")
    im_src, lb_src = _dota_dirs(src_dir)
    im_dst, lb_dst = _out_dirs(dst_dir, split)
    lookup = class_index_map(classes)
    stats = _new_stats(tiles=0, background_tiles=0, cut=0, malformed_lines=0, degenerate=0, lost=0)
    crop_sizes = [int(tile / r) for r in rates]
    gaps = [int(gap / r) for r in rates]

    for im_file in _list_images(im_src):
        im = imread(str(im_file))
        if im is None:
            raise OSError(f"cannot read image {im_file}")
        h, w = im.shape[:2]
        stats["images"] += 1
        polys, cls = _dota_objects(lb_src / f"{im_file.stem}.txt", lookup, unknown, skip_difficult, stats)
        areas = np.array([_convex_area(p) for p in polys])
        valid = areas > 1e-6  # devkit patches contain zero-area lines (all corners on one edge): no usable box
        stats["degenerate"] += int((~valid).sum())
        polys, cls, areas = polys[valid], cls[valid], areas[valid]
        lo, hi = polys.min(1), polys.max(1)  # (N, 2) axis-aligned hulls, to skip polygon maths for clear cases
        assigned = np.zeros(len(polys), dtype=bool)

        for window in get_windows((h, w), crop_sizes, gaps, im_rate_thr=im_rate_thr):
            x0, y0, x1, y1 = window.tolist()
            x1, y1 = min(x1, w), min(y1, h)  # windows may overhang small images; the crop is the real extent
            pw, ph = x1 - x0, y1 - y0
            inside = (lo[:, 0] >= x0) & (lo[:, 1] >= y0) & (hi[:, 0] <= x1) & (hi[:, 1] <= y1)
            touch = (hi[:, 0] > x0) & (hi[:, 1] > y0) & (lo[:, 0] < x1) & (lo[:, 1] < y1) & ~inside
            rows = []
            for i in np.flatnonzero(inside | touch):
                if inside[i]:
                    pts, was_cut = polys[i], False
                else:
                    area, inter = clip_polygon_to_window(polys[i], (x0, y0, x1, y1))
                    if inter is None or area / areas[i] < iof_thr:
                        continue
                    pts = cv2.boxPoints(cv2.minAreaRect(inter.astype(np.float32))).astype(np.float64)
                    pts = pts.clip([x0, y0], [x1, y1])  # the rectangle of a clipped polygon may overhang the tile
                    was_cut = True
                assigned[i] = True
                norm = ((pts - [x0, y0]) / [pw, ph]).clip(0.0, 1.0)
                rows.append(f"{cls[i]} {_fmt(norm.reshape(-1))}")
                stats["cut"] += was_cut
            if not rows and not background:
                continue
            name = f"{im_file.stem}__{window[2] - window[0]}__{x0}___{y0}"
            imwrite(str(im_dst / f"{name}{suffix}"), im[y0:y1, x0:x1])
            stats["tiles"] += 1
            if rows:
                (lb_dst / f"{name}.txt").write_text("".join(f"{r}\n" for r in rows), encoding="utf-8")
                stats["written"] += len(rows)
            else:
                stats["background_tiles"] += 1
        stats["lost"] += int((~assigned).sum())
    return stats


# ---------------------------------------------------------------------------------------------------------------------
# DIOR (Pascal VOC), DIOR-R and HRSC2016 XML
# ---------------------------------------------------------------------------------------------------------------------


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
        image = candidate if candidate is not None and candidate.is_file() else _find_image(folder, stem)
        if image is not None:
            return _image_size(image)
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
    _check_unknown(unknown)
    lookup = class_index_map(classes)
    dst = Path(dst_labels_dir)
    dst.mkdir(parents=True, exist_ok=True)
    images_dir = Path(images_dir) if images_dir is not None else None
    stats = _new_stats(degenerate=0)
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
            idx = _lookup_class(lookup, name, unknown, xml_file, stats)
            if idx is None:
                continue
            if oriented:
                norm = geom / np.array([w, h], dtype=np.float64)
                rows.append(f"{idx} {_fmt((norm.clip(0.0, 1.0) if clip else norm).reshape(-1))}")
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
                rows.append(f"{idx} {_fmt(((x0 + x1) / 2 / w, (y0 + y1) / 2 / h, (x1 - x0) / w, (y1 - y0) / h))}")
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


# ---------------------------------------------------------------------------------------------------------------------
# Dataset YAML
# ---------------------------------------------------------------------------------------------------------------------


def write_data_yaml(
    path: str | Path,
    root: str | Path,
    train: str,
    val: str,
    names: Sequence[str] | dict[int, str],
    *,
    test: str | None = None,
) -> Path:
    """Write an Ultralytics dataset YAML.

    Args:
        path (str | Path): YAML file to write (parent folders are created).
        root (str | Path): Dataset root (`path:` key); relative roots resolve as Ultralytics does (cwd, then its
            datasets dir).
        train (str): Train images, relative to `root` (e.g. 'images/train').
        val (str): Validation images, relative to `root`.
        names (Sequence[str] | dict[int, str]): Class names in index order.
        test (str, optional): Test images, relative to `root`.

    Returns:
        (Path): The written file.
    """
    path = Path(path)
    data: dict[str, Any] = {"path": str(root), "train": str(train), "val": str(val)}
    if test:
        data["test"] = str(test)
    data["names"] = dict(enumerate(_class_names(names)))
    YAML.save(path, data)
    return path


# ---------------------------------------------------------------------------------------------------------------------
# Whole-dataset preparation (used by `ds2d2-yolo convert`)
# ---------------------------------------------------------------------------------------------------------------------


def prepare_dior(
    src_dir: str | Path,
    dst_dir: str | Path,
    oriented: bool = False,
    *,
    classes: Sequence[str] | dict[int, str] = DIOR_CLASSES,
    skip_difficult: bool = False,
    unknown: str = "error",
    val: float = 0.2,
    seed: int = 0,
) -> dict[str, Any]:
    """Turn an extracted DIOR (or DIOR-R) folder into an Ultralytics dataset with `data.yaml`.

    Expected input (the official archives extracted side by side): `Annotations/Horizontal Bounding Boxes/*.xml`
    (DIOR) or `Annotations/Oriented Bounding Boxes/*.xml` (DIOR-R), or plain `Annotations/*.xml`; images in any
    `JPEGImage*` folders (e.g. `JPEGImages-trainval`, `JPEGImages-test`); and optionally `ImageSets/Main/{train,val,
    test}.txt` id lists. Without id lists every annotated image goes to one `all` split. Without a val list, a share
    `val` of the train (or `all`) images is split off as val, whole images, seeded (`split_off_val`).

    Args:
        src_dir (str | Path): Extracted DIOR root.
        dst_dir (str | Path): Output dataset root (`images/{split}`, `labels/{split}`, `data.yaml`).
        oriented (bool): Read the oriented (DIOR-R) annotations and write OBB labels instead of detect labels.
        classes (Sequence[str] | dict[int, str]): Class names in index order.
        skip_difficult (bool): Drop objects flagged difficult.
        unknown (str): 'error' raises on a class name not in `classes`, 'skip' drops and counts it.
        val (float): Share of the images split off for val when there is no val list; 0 validates on train.
        seed (int): Seed of that split.

    Returns:
        (dict[str, Any]): Per-split converter stats plus `yaml` (path of the written data.yaml) and `val_source`.
    """
    val = _check_val_fraction(val)
    src, dst = Path(src_dir), Path(dst_dir)
    ann = src / "Annotations"
    sub = ann / ("Oriented Bounding Boxes" if oriented else "Horizontal Bounding Boxes")
    ann = sub if sub.is_dir() else ann
    if not ann.is_dir():
        raise FileNotFoundError(f"{ann} not found: expected DIOR's Annotations folder under {src}")
    images = {p.stem: p for d in sorted(src.glob("JPEGImage*")) if d.is_dir() for p in _list_images(d)}
    id_lists = {s: src / "ImageSets" / "Main" / f"{s}.txt" for s in ("train", "val", "test")}
    splits = {s: f.read_text().split() for s, f in id_lists.items() if f.is_file()}
    if not splits:
        splits = {"all": sorted(p.stem for p in ann.glob("*.xml"))}
    base = "train" if "train" in splits else next(iter(splits))
    if "val" in splits:
        val_source = f"{id_lists['val']}"
    else:
        # Only train images are split; a test list stays the held-out test set.
        train_ids, val_ids = split_off_val(splits[base], val if base in ("train", "all") else 0, seed)
        if val_ids:
            splits.pop(base)
            splits = {"train": train_ids, "val": val_ids, **splits}
            val_source = (
                f"{len(val_ids)} of {len(train_ids) + len(val_ids)} {base} images split off (val={val}, seed={seed})"
            )
        else:
            val_source = f"none: validating on the {base} images (val={val}, {len(splits[base])} image(s))"

    convert = convert_dior_r if oriented else convert_dior_voc
    result: dict[str, Any] = {}
    for split, ids in splits.items():
        im_dst, lb_dst = _out_dirs(dst, split)
        xmls = [ann / f"{i}.xml" for i in ids]
        missing = [x for x in xmls if not x.is_file()]
        if missing:
            raise FileNotFoundError(f"{len(missing)} annotation(s) of split '{split}' missing, e.g. {missing[0]}")
        stats = _new_stats(degenerate=0, missing_images=0)
        for x in xmls:
            s = convert(x, lb_dst, classes, skip_difficult=skip_difficult, unknown=unknown)
            for k, v in s.items():
                stats[k] = stats[k] + v if isinstance(v, int) else v
            image = images.get(x.stem)
            if image is None:
                stats["missing_images"] += 1
            else:
                shutil.copy2(image, im_dst / image.name)
        result[split] = stats
    train = "images/train" if "train" in splits else f"images/{next(iter(splits))}"
    test = "images/test" if "test" in splits else None
    val_dir = "images/val" if "val" in splits else train
    result["yaml"] = write_data_yaml(dst / "data.yaml", dst.resolve(), train, val_dir, classes, test=test)
    result["val_source"] = val_source
    return result


def run_convert(
    format: str = "dota",
    src: str | Path | None = None,
    dst: str | Path | None = None,
    tile: int = 1024,
    gap: int = 200,
    skip_difficult: bool = False,
    val: float = 0.2,
    val_src: str | Path | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Convert a whole dataset for training; the `ds2d2-yolo convert` subcommand.

    Formats:
        dota: `src` is a DOTA split folder (`images/`, `labelTxt/`) or a root holding `train/`, `val/` (and `test/`)
            such folders. With `tile > 0` images are cut into tiles (`tile_dota`), with `tile=0` converted whole
            (`convert_dota`). Writes `dst/data.yaml`.
        dior / dior-r: `src` is the extracted DIOR root (see `prepare_dior`); `tile` and `gap` are unused (DIOR
            images are 800 px).

    Validation images: a `val/` folder of `src` (DOTA) or a val id list (DIOR) when there is one; else the DOTA split
    folder `val_src`; else a share `val` of the train images, whole images, seeded (`split_off_val`); `val=0` validates
    on the train images. The log line "val: ..." and the result's `val_source` say which.

    Args:
        format (str): 'dota', 'dior' or 'dior-r'.
        src (str | Path): Source dataset folder.
        dst (str | Path): Output dataset root.
        tile (int): DOTA tile size; 0 disables tiling.
        gap (int): DOTA tile overlap in pixels.
        skip_difficult (bool): Drop objects flagged difficult.
        val (float): Share of the train images split off for validation when the source has none.
        val_src (str | Path, optional): DOTA only: a DOTA split folder (`images/`, `labelTxt/`) to convert as val.
        seed (int): Seed of the val split.

    Returns:
        (dict[str, Any]): Stats per split, `yaml` (the data YAML path) and `val_source` (where val came from).
    """
    if src is None or dst is None:
        raise ValueError("convert needs src=... and dst=...")
    val = _check_val_fraction(val)
    fmt = str(format).lower().replace("_", "-")
    if fmt in {"dior", "dior-r", "diorr"}:
        if val_src:
            raise ValueError("val_src= is for format=dota; DIOR takes val from ImageSets/Main/val.txt or val=")
        result = prepare_dior(src, dst, oriented=fmt != "dior", skip_difficult=skip_difficult, val=val, seed=seed)
    elif fmt == "dota":
        src, dst = Path(src), Path(dst)
        split_dirs = {s: src / s for s in ("train", "val", "test") if (src / s / "images").is_dir()}
        if not any(s in split_dirs for s in ("train", "val")):
            split_dirs = {"train": src, **split_dirs}
        with tempfile.TemporaryDirectory(prefix="ds2d2_val_split_") as tmp:
            if "val" in split_dirs:
                val_source = str(split_dirs["val"])
            elif val_src:
                if not (Path(val_src) / "images").is_dir():
                    raise FileNotFoundError(
                        f"val_src={val_src}: no images/ folder; pass a DOTA folder (images/, labelTxt/)"
                    )
                split_dirs["val"], val_source = Path(val_src), f"val_src={val_src}"
            else:
                val_source = _split_dota_folder(split_dirs, Path(tmp), val, seed)
            result = {}
            for split, folder in split_dirs.items():
                if tile and int(tile) > 0:
                    result[split] = tile_dota(
                        folder, dst, int(tile), int(gap), skip_difficult=skip_difficult, split=split
                    )
                else:
                    result[split] = convert_dota(folder, dst, skip_difficult=skip_difficult, split=split)
        train = "images/train"
        val_dir = "images/val" if "val" in split_dirs else train
        test = "images/test" if "test" in split_dirs else None
        names = [n.replace("-", " ") for n in DOTA_V1_CLASSES]  # Ultralytics' spelling, as official checkpoints
        result["yaml"] = write_data_yaml(dst / "data.yaml", dst.resolve(), train, val_dir, names, test=test)
        result["val_source"] = val_source
    else:
        raise ValueError(f"format must be 'dota', 'dior' or 'dior-r', not {format!r}")
    for split, stats in result.items():
        if split != "val_source":
            LOGGER.info(f"{split}: {stats}")
    LOGGER.info(f"val: {result['val_source']}")
    return result


def _split_dota_folder(split_dirs: dict[str, Path], tmp: Path, val: float, seed: int) -> str:
    """Split the DOTA train folder's images into train and val folders of links under `tmp` (updates `split_dirs`).

    Returns:
        (str): Where val comes from, for the log.
    """
    folder = split_dirs["train"]
    images = {p.stem: p for p in _list_images(folder / "images")}
    train, held = split_off_val(images, val, seed)
    if not held:
        return f"none: validating on the train images (val={val}, {len(images)} image(s))"
    for split, stems in (("train", train), ("val", held)):
        (tmp / split / "images").mkdir(parents=True)
        (tmp / split / "labelTxt").mkdir()
        for stem in stems:
            _link(images[stem], tmp / split / "images" / images[stem].name)
            label = folder / "labelTxt" / f"{stem}.txt"
            if label.is_file():
                _link(label, tmp / split / "labelTxt" / label.name)
        split_dirs[split] = tmp / split
    return f"{len(held)} of {len(images)} train images split off (val={val}, seed={seed}): {', '.join(held[:5])}"


def _link(src: Path, dst: Path) -> None:
    """Symlink `dst` to `src`, or copy where links are not allowed (Windows without developer mode)."""
    try:
        os.symlink(src.resolve(), dst)
    except OSError:
        shutil.copy2(src, dst)
