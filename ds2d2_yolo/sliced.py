"""Sliced (tiled) prediction of large remote-sensing images with an Ultralytics YOLO detect or OBB model.

Remote-sensing scenes (DOTA images reach 20000 px) are far larger than the training tiles, and resizing them to the
model's input size makes small objects vanish. `sliced_predict` runs the model on overlapping native-resolution tiles,
shifts every tile's boxes back to full-image coordinates and merges duplicates from the overlaps with class-aware NMS
(rotated, ProbIoU-based for OBB, as Ultralytics' own OBB NMS does).

Known limitation: an object cut by a tile border can be detected as a partial box in one tile and as a whole box in the
next; the two have low IoU and both survive the merge. An overlap larger than the biggest objects keeps every object
whole in at least one tile, which bounds but does not remove such partial duplicates.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch


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


def merge_tile_predictions(
    preds: Sequence[dict[str, Any]],
    offsets: Sequence[Sequence[float]] | np.ndarray,
    obb: bool,
    iou: float = 0.7,
) -> dict[str, np.ndarray]:
    """Shift per-tile predictions to image coordinates and merge duplicates with class-aware NMS.

    Args:
        preds (Sequence[dict[str, Any]]): One dict per tile with `boxes` (N, 4) xyxy or (N, 5) xywhr (radians) in tile
            pixels, `conf` (N,) and `cls` (N,); arrays or tensors.
        offsets (Sequence[Sequence[float]] | np.ndarray): Top-left corner (x0, y0) of each tile in the image.
        obb (bool): Whether boxes are rotated xywhr (rotated NMS with ProbIoU) rather than xyxy (torchvision NMS).
        iou (float): IoU threshold above which the lower-confidence box of a same-class pair is dropped.

    Returns:
        (dict[str, np.ndarray]): `boxes` (M, 4 or 5) float32 in image pixels, `conf` (M,) float32 and `cls` (M,) int64,
            sorted by decreasing confidence.
    """
    from torchvision.ops import batched_nms

    from ultralytics.utils.metrics import batch_probiou
    from ultralytics.utils.nms import TorchNMS

    if len(preds) != len(offsets):
        raise ValueError(f"got {len(preds)} tile predictions but {len(offsets)} offsets")
    ndim = 5 if obb else 4
    boxes, conf, cls = [], [], []
    for p, (x0, y0) in zip(preds, offsets):
        b = torch.as_tensor(np.asarray(p["boxes"], dtype=np.float32)).reshape(-1, ndim).clone()
        if obb:
            b[:, :2] += torch.tensor([x0, y0], dtype=b.dtype)
        else:
            b[:, :4] += torch.tensor([x0, y0, x0, y0], dtype=b.dtype)
        boxes.append(b)
        conf.append(torch.as_tensor(np.asarray(p["conf"], dtype=np.float32)).reshape(-1))
        cls.append(torch.as_tensor(np.asarray(p["cls"], dtype=np.float32)).reshape(-1))
    boxes = torch.cat(boxes) if boxes else torch.zeros((0, ndim))
    conf = torch.cat(conf) if conf else torch.zeros(0)
    cls = torch.cat(cls).long() if cls else torch.zeros(0, dtype=torch.long)

    if len(boxes) == 0:
        keep = torch.zeros(0, dtype=torch.long)
    elif obb:
        # Shift each class far beyond every box so one ProbIoU NMS never compares different classes
        span = float(boxes[:, :2].abs().max() + boxes[:, 2:4].max()) * 2 + 1
        shifted = boxes.clone()
        shifted[:, :2] += cls[:, None].float() * span
        keep = TorchNMS.fast_nms(shifted, conf, iou, iou_func=batch_probiou)
    else:
        keep = batched_nms(boxes, conf, cls, iou)
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
        from ultralytics.utils.patches import imread

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
    merged = merge_tile_predictions(preds, windows[:, :2], obb, iou if merge_iou is None else merge_iou)
    return {**merged, "task": task, "windows": windows}
