"""Sliced (tiled) prediction of large remote-sensing images with an Ultralytics YOLO detect or OBB model.

Remote-sensing scenes (DOTA images reach 20000 px) are far larger than the training tiles, and resizing them to the
model's input size makes small objects vanish. `sliced_predict` runs the model on overlapping native-resolution tiles,
shifts every tile's boxes back to full-image coordinates and merges duplicates from the overlaps with class-aware NMS
(rotated, ProbIoU-based for OBB, as Ultralytics' own OBB NMS does).

An object cut by a tile border is often detected as a partial box in one tile and whole in the next; their IoU is low,
so NMS keeps both. The merge therefore also drops a box touching an inner tile border when it lies mostly inside a
larger same-class box from another tile. Choose an overlap larger than the biggest objects so each is whole somewhere.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torchvision.ops import batched_nms
from ultralytics.engine.results import Results
from ultralytics.utils import LOGGER, colorstr
from ultralytics.utils.metrics import batch_probiou
from ultralytics.utils.nms import TorchNMS
from ultralytics.utils.ops import xywhr2xyxyxyxy
from ultralytics.utils.patches import imread, imwrite

from ds2d2_yolo.tools.visualize import load_yolo, run_dir


def tile_windows(height: int, width: int, tile: int = 1024, overlap: float = 0.2) -> np.ndarray:
    """Compute overlapping tile windows covering an image.

    Tiles start every `tile * (1 - overlap)` pixels; the last tile of a row or column is moved back to end at the image
    border so every tile is full-size, and an axis shorter than `tile` is covered by one tile of the axis length.

    Args:
        height (int): Image height in pixels.
        width (int): Image width in pixels.
        tile (int): Tile size in pixels.
        overlap (float): Overlap between neighbouring tiles as a fraction of `tile`, in [0, 1).

    Returns:
        (np.ndarray): Windows of shape (N, 4) as int64 (x0, y0, x1, y1), row-major order.
    """
    if tile <= 0:
        raise ValueError(f"tile must be positive, not {tile}")
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"overlap is a fraction of the tile in [0, 1), not {overlap}")
    step = max(1, round(tile * (1.0 - overlap)))

    def starts(length: int) -> list[int]:
        if length <= tile:
            return [0]
        s = list(range(0, length - tile, step))
        return [*s, length - tile]  # the last tile flush with the border avoids a thin sliver tile

    windows = [
        (x, y, min(x + tile, width), min(y + tile, height)) for y in starts(int(height)) for x in starts(int(width))
    ]
    return np.array(windows, dtype=np.int64).reshape(-1, 4)


def _cut_partials(
    boxes: torch.Tensor,
    cls: torch.Tensor,
    tile_idx: torch.Tensor,
    windows: np.ndarray,
    obb: bool,
    ios_thr: float,
    margin: float,
) -> torch.Tensor:
    """Find partial boxes of objects cut by a tile border that lie inside a larger same-class box from another tile.

    Args:
        boxes (torch.Tensor): Image-pixel boxes (N, 4) xyxy or (N, 5) xywhr.
        cls (torch.Tensor): Class indices (N,).
        tile_idx (torch.Tensor): Index of the tile each box came from (N,).
        windows (np.ndarray): Tile windows (T, 4) as (x0, y0, x1, y1).
        obb (bool): Whether boxes are xywhr.
        ios_thr (float): Fraction of the partial box's area that must lie inside the larger box.
        margin (float): Distance in pixels to an inner tile edge within which a box counts as cut by it.

    Returns:
        (torch.Tensor): Boolean mask (N,), True for boxes to drop.
    """
    n = len(boxes)
    drop = torch.zeros(n, dtype=torch.bool)
    if n < 2 or len(windows) < 2:
        return drop
    if obb:
        corners = xywhr2xyxyxyxy(boxes).reshape(n, 4, 2)
        areas = boxes[:, 2] * boxes[:, 3]
    else:
        x0, y0, x1, y1 = boxes.unbind(1)
        corners = torch.stack([x0, y0, x1, y0, x1, y1, x0, y1], 1).reshape(n, 4, 2)
        areas = (x1 - x0) * (y1 - y0)
    lo, hi = corners.min(1).values, corners.max(1).values
    win = torch.as_tensor(windows, dtype=boxes.dtype)
    width, height = win[:, 2].max(), win[:, 3].max()
    w = win[tile_idx]
    # Only borders inside the image cut objects; the image border is a real end of the scene
    cut = (
        ((lo[:, 0] <= w[:, 0] + margin) & (w[:, 0] > 0))
        | ((lo[:, 1] <= w[:, 1] + margin) & (w[:, 1] > 0))
        | ((hi[:, 0] >= w[:, 2] - margin) & (w[:, 2] < width))
        | ((hi[:, 1] >= w[:, 3] - margin) & (w[:, 3] < height))
    )
    pts = corners.numpy().astype(np.float32)
    for i in sorted(torch.nonzero(cut).flatten().tolist(), key=lambda j: -float(areas[j])):
        cand = (
            (cls == cls[i])
            & (tile_idx != tile_idx[i])
            & (areas > areas[i])
            & ~drop
            & (lo[:, 0] < hi[i, 0])
            & (lo[:, 1] < hi[i, 1])
            & (hi[:, 0] > lo[i, 0])
            & (hi[:, 1] > lo[i, 1])
        )
        for k in torch.nonzero(cand).flatten().tolist():
            inter, _ = cv2.intersectConvexConvex(pts[i], pts[k])
            if inter >= ios_thr * float(areas[i]):
                drop[i] = True
                break
    return drop


def merge_tile_predictions(
    preds: Sequence[dict[str, Any]],
    windows: Sequence[Sequence[float]] | np.ndarray,
    obb: bool,
    iou: float = 0.7,
    cut_ios: float | None = 0.7,
    edge_margin: float = 2.0,
) -> dict[str, np.ndarray]:
    """Shift per-tile predictions to image coordinates and merge duplicates from tile overlaps.

    Two steps. Unless `cut_ios` is None, partial boxes are removed first: a box touching an inner tile border (within
    `edge_margin` px) whose area lies at least `cut_ios` inside a larger same-class box from another tile is the
    truncated view of an object that the other tile saw whole (their IoU is low, so NMS alone keeps both, or keeps the
    partial one when it is more confident). Then class-aware NMS removes the duplicates of objects seen whole by
    several tiles (torchvision NMS for xyxy; for xywhr Ultralytics' ProbIoU fast-NMS, as its OBB predictor uses).

    Args:
        preds (Sequence[dict[str, Any]]): One dict per tile with `boxes` (N, 4) xyxy or (N, 5) xywhr (radians) in tile
            pixels, `conf` (N,) and `cls` (N,); arrays or tensors.
        windows (Sequence[Sequence[float]] | np.ndarray): Window (x0, y0, x1, y1) of each tile in image pixels; the
            union of the windows is taken as the image extent.
        obb (bool): Whether boxes are rotated xywhr rather than xyxy.
        iou (float): IoU threshold above which the lower-confidence box of a same-class pair is dropped.
        cut_ios (float, optional): Containment threshold of the partial-box removal; None disables it.
        edge_margin (float): Distance in pixels to an inner tile border within which a box counts as cut.

    Returns:
        (dict[str, np.ndarray]): `boxes` (M, 4 or 5) float32 in image pixels, `conf` (M,) float32 and `cls` (M,) int64,
            sorted by decreasing confidence.
    """
    windows = np.asarray(windows, dtype=np.float64).reshape(-1, 4)
    if len(preds) != len(windows):
        raise ValueError(f"got {len(preds)} tile predictions but {len(windows)} windows")
    ndim = 5 if obb else 4
    boxes, conf, cls, tile_idx = [], [], [], []
    for t, (p, (x0, y0, _, _)) in enumerate(zip(preds, windows.tolist())):
        b = torch.as_tensor(np.asarray(p["boxes"], dtype=np.float32)).reshape(-1, ndim).clone()
        if obb:
            b[:, :2] += torch.tensor([x0, y0], dtype=b.dtype)
        else:
            b[:, :4] += torch.tensor([x0, y0, x0, y0], dtype=b.dtype)
        boxes.append(b)
        conf.append(torch.as_tensor(np.asarray(p["conf"], dtype=np.float32)).reshape(-1))
        cls.append(torch.as_tensor(np.asarray(p["cls"], dtype=np.float32)).reshape(-1).long())
        tile_idx.append(torch.full((len(b),), t, dtype=torch.long))
    boxes = torch.cat(boxes) if boxes else torch.zeros((0, ndim))
    conf = torch.cat(conf) if conf else torch.zeros(0)
    cls = torch.cat(cls) if cls else torch.zeros(0, dtype=torch.long)
    tile_idx = torch.cat(tile_idx) if tile_idx else torch.zeros(0, dtype=torch.long)

    # Partial boxes go first: NMS could otherwise keep a confident partial box and suppress the whole one
    cand = torch.arange(len(boxes))
    if cut_ios is not None and len(boxes):
        cand = cand[~_cut_partials(boxes, cls, tile_idx, windows, obb, cut_ios, edge_margin)]
    b, c, s = boxes[cand], cls[cand], conf[cand]
    if len(cand) == 0:
        keep = cand
    elif obb:
        # Shift each class far beyond every box so one ProbIoU NMS never compares different classes
        span = float(b[:, :2].abs().max() + b[:, 2:4].max()) * 2 + 1
        shifted = b.clone()
        shifted[:, :2] += c[:, None].float() * span
        keep = cand[TorchNMS.fast_nms(shifted, s, iou, iou_func=batch_probiou)]
    else:
        keep = cand[batched_nms(b, s, c, iou)]
    keep = keep[conf[keep].argsort(descending=True, stable=True)]
    return {"boxes": boxes[keep].numpy(), "conf": conf[keep].numpy(), "cls": cls[keep].numpy()}


def _tile_result(result: Any, obb: bool) -> dict[str, np.ndarray]:
    """Extract boxes, conf and cls arrays from one Ultralytics `Results` object."""
    r = result.obb if obb else result.boxes
    if r is None or len(r) == 0:
        return {"boxes": np.zeros((0, 5 if obb else 4), np.float32), "conf": np.zeros(0), "cls": np.zeros(0)}
    b = r.xywhr if obb else r.xyxy
    return {"boxes": b.cpu().numpy(), "conf": r.conf.cpu().numpy(), "cls": r.cls.cpu().numpy()}


def sliced_predict(
    model: Any,
    image: np.ndarray | str | Path,
    tile: int = 1024,
    overlap: float = 0.2,
    conf: float = 0.25,
    iou: float = 0.7,
    imgsz: int | None = None,
    device: str | int | None = None,
    *,
    merge_iou: float | None = None,
    cut_ios: float | None = 0.7,
    edge_margin: float = 2.0,
    max_det: int = 300,
    batch: int = 1,
) -> dict[str, Any]:
    """Predict on a large image tile by tile and merge the detections in full-image coordinates.

    Args:
        model (ultralytics.YOLO): Detect or OBB model; `model.task` selects xyxy or xywhr outputs.
        image (np.ndarray | str | Path): BGR HxWx3 (or HxW gray) array, or an image path.
        tile (int): Tile size in pixels. An image no larger than a tile is predicted as a single tile.
        overlap (float): Overlap of neighbouring tiles as a fraction of `tile`, in [0, 1); choose it larger than the
            largest expected object so every object is whole in some tile.
        conf (float): Confidence threshold per tile.
        iou (float): NMS IoU threshold inside each tile (the model's own NMS).
        imgsz (int, optional): Inference size per tile; None uses `tile`, i.e. native resolution.
        device (str | int, optional): Inference device, as for `YOLO.predict`.
        merge_iou (float, optional): IoU threshold of the cross-tile merge; None reuses `iou`.
        cut_ios (float, optional): Drop boxes cut by an inner tile border that lie at least this much inside a larger
            same-class box from another tile (see `merge_tile_predictions`); None keeps them.
        edge_margin (float): Distance in pixels to an inner tile border within which a box counts as cut.
        max_det (int): Maximum detections per tile (the merged image has no cap).
        batch (int): Tiles per forward pass. With 1 each tile is letterboxed exactly as a lone image would be.

    Returns:
        (dict[str, Any]): `boxes` (N, 4) xyxy or (N, 5) xywhr float32 image pixels, `conf` (N,) float32, `cls` (N,)
            int64 sorted by decreasing confidence, `task` ('detect' or 'obb') and `windows` (T, 4) tile windows.
    """
    task = getattr(model, "task", "detect")
    if task not in {"detect", "obb"}:
        raise ValueError(f"sliced_predict supports detect and obb models, not task '{task}'")
    obb = task == "obb"
    if isinstance(image, (str, Path)):
        path = image
        image = imread(str(path))
        if image is None:
            raise FileNotFoundError(f"cannot read image {path}")
    image = np.asarray(image)
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)  # Ultralytics predictors expect 3-channel BGR arrays
    h, w = image.shape[:2]
    windows = tile_windows(h, w, tile, overlap)
    kwargs = {"imgsz": imgsz or tile, "conf": conf, "iou": iou, "max_det": max_det, "verbose": False}
    if device is not None:
        kwargs["device"] = device

    preds = []
    for i in range(0, len(windows), max(1, batch)):
        # Contiguous copies: predictors may write into their input and slices of one array are not independent
        crops = [np.ascontiguousarray(image[y0:y1, x0:x1]) for x0, y0, x1, y1 in windows[i : i + batch].tolist()]
        results = model.predict(crops if len(crops) > 1 else crops[0], **kwargs)
        preds.extend(_tile_result(r, obb) for r in results)
    merge_iou = iou if merge_iou is None else merge_iou
    merged = merge_tile_predictions(preds, windows, obb, merge_iou, cut_ios=cut_ios, edge_margin=edge_margin)
    return {**merged, "task": task, "windows": windows}


def run_slice(
    model: str | Path | None = None,
    source: str | Path | None = None,
    tile: int = 1024,
    overlap: float = 0.2,
    conf: float = 0.25,
    iou: float = 0.7,
    imgsz: int | None = None,
    device: str | int | None = None,
    save: str | Path | None = "auto",
    project: str | Path | None = None,
    name: str | None = None,
) -> dict[str, Any]:
    """Sliced prediction on one large image with a drawn result; the `ds2d2-yolo slice` subcommand.

    Args:
        model (str | Path): Ultralytics detect or OBB weights (.pt) or model YAML.
        source (str | Path): Image path.
        tile (int): Tile size in pixels.
        overlap (float): Tile overlap as a fraction of `tile`.
        conf (float): Confidence threshold.
        iou (float): NMS IoU threshold.
        imgsz (int, optional): Inference size per tile; None uses `tile`.
        device (str | int, optional): Inference device.
        save (str | Path, optional): Where to write the image with drawn detections; "auto" is the source's name in a
            new `runs/<task>/slice*` folder, as Ultralytics' predict saves; None or '' skips drawing.
        project (str | Path, optional): With `save="auto"`, the parent of the new folder (default `runs/<task>`).
        name (str, optional): With `save="auto"`, the new folder's name (default "slice").

    Returns:
        (dict[str, Any]): The `sliced_predict` result, plus `save` (the written image path) when drawn.
    """
    if not model or not source:
        raise ValueError("slice needs model=... and source=...")
    yolo = load_yolo(model)
    image = imread(str(source))
    if image is None:
        raise FileNotFoundError(f"cannot read image {source}")
    out = sliced_predict(yolo, image, tile, overlap, conf, iou, imgsz, device)
    LOGGER.info(f"{source}: {len(out['conf'])} detections from {len(out['windows'])} tiles of {tile} px")
    if save:
        det = np.concatenate([out["boxes"], out["conf"][:, None], out["cls"][:, None].astype(np.float32)], axis=1)
        key = "obb" if out["task"] == "obb" else "boxes"
        # Results does the drawing so the picture matches Ultralytics' own predict output
        plotted = Results(image, str(source), yolo.names, **{key: torch.from_numpy(det)}).plot()
        if save == "auto":
            save = run_dir(out["task"], "slice", project, name) / f"{Path(source).stem}.png"
        Path(save).parent.mkdir(parents=True, exist_ok=True)
        imwrite(str(save), plotted)
        out["save"] = Path(save)
        LOGGER.info(f"Results saved to {colorstr('bold', Path(save).parent)}")
    return out
