"""DOTA: labelTxt parsing and conversion to Ultralytics OBB labels, and tiling of large scenes into windows."""

from __future__ import annotations

import shutil
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from ultralytics.data.split_dota import get_windows
from ultralytics.utils import LOGGER
from ultralytics.utils.patches import imread, imwrite

from ds2d2_yolo.tools.dataprep.common import (
    DOTA_V1_CLASSES,
    check_unknown,
    class_index_map,
    fmt_floats,
    image_size,
    list_images,
    lookup_class,
    new_stats,
    out_dirs,
)


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
            idx = lookup_class(lookup, obj["name"], unknown, label_file, stats)
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
    check_unknown(unknown)
    im_src, lb_src = _dota_dirs(src_dir)
    im_dst, lb_dst = out_dirs(dst_dir, split)
    lookup = class_index_map(classes)
    stats = new_stats(malformed_lines=0, missing_labels=0, labels_without_image=0)

    images = list_images(im_src)
    stems = {p.stem for p in images}
    label_files = lb_src.glob("*.txt") if lb_src.is_dir() else []
    stats["labels_without_image"] = sum(1 for p in label_files if p.stem not in stems)
    for im_file in images:
        label_file = lb_src / f"{im_file.stem}.txt"
        if not label_file.is_file():
            stats["missing_labels"] += 1
        w, h = image_size(im_file)
        polys, cls = _dota_objects(label_file, lookup, unknown, skip_difficult, stats)
        norm = polys / np.array([w, h], dtype=np.float64)
        if clip:
            norm = norm.clip(0.0, 1.0)
        rows = [f"{c} {fmt_floats(p.reshape(-1))}" for c, p in zip(cls.tolist(), norm)]
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
    check_unknown(unknown)
    if not 0.0 < iof_thr <= 1.0:
        raise ValueError(f"iof_thr must be in (0, 1], not {iof_thr}")
    im_src, lb_src = _dota_dirs(src_dir)
    im_dst, lb_dst = out_dirs(dst_dir, split)
    lookup = class_index_map(classes)
    stats = new_stats(tiles=0, background_tiles=0, cut=0, malformed_lines=0, degenerate=0, lost=0)
    crop_sizes = [int(tile / r) for r in rates]
    gaps = [int(gap / r) for r in rates]

    for im_file in list_images(im_src):
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
                rows.append(f"{cls[i]} {fmt_floats(norm.reshape(-1))}")
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
