"""`distill=pseudo`: train on the ground truth plus the teacher's confident detections, the simplest transfer.

It is the reference for how much a teacher has to give on a dataset: the student sees every object the teacher finds
with confidence >= `pseudo_conf` that the ground truth does not already hold. The merged labels are written once per
(teacher, training split, confidence, image size) into a dataset folder of links to the original images, and the
run trains on it with `distill=none`; validation stays on the original split.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from ultralytics import YOLO
from ultralytics.data.utils import IMG_FORMATS, check_det_dataset, img2label_paths
from ultralytics.utils import LOGGER, TQDM
from ultralytics.utils.metrics import batch_probiou, box_iou
from ultralytics.utils.ops import xyxyxyxy2xywhr

OVERLAP_IOU = 0.5  # a detection overlapping a ground-truth object this much is that object, not a new one


def train_images(data: dict[str, Any]) -> list[Path]:
    """Every training image of a checked Ultralytics data dict (folders, image lists in .txt files, or lists)."""
    items = data["train"] if isinstance(data["train"], list) else [data["train"]]
    out: list[Path] = []
    for item in map(Path, items):
        if item.is_dir():
            out += sorted(p for p in item.rglob("*") if p.suffix[1:].lower() in IMG_FORMATS)
        elif item.suffix == ".txt":
            root = item.parent
            for line in item.read_text().splitlines():
                if line.strip():
                    p = Path(line.strip())
                    out.append(p if p.is_absolute() else (root / p).resolve())
        elif item.is_file():
            out.append(item)
    return out


def _read_labels(path: Path) -> list[list[float]]:
    if not path.is_file():
        return []
    return [[float(x) for x in line.split()] for line in path.read_text().splitlines() if line.strip()]


def new_objects(gt: list[list[float]], det: np.ndarray, obb: bool) -> np.ndarray:
    """The detections (class + normalised geometry rows, in label format) that overlap no ground-truth object.

    Args:
        gt (list[list[float]]): Ground-truth label rows (cls x1 y1 ... x4 y4 for OBB, cls xc yc w h for detect).
        det (np.ndarray): Detection rows in the same format.
        obb (bool): Whether the rows are oriented boxes.

    Returns:
        (np.ndarray): The rows of `det` whose best IoU (ProbIoU for OBB) with any ground-truth object is below 0.5.
    """
    if not len(det) or not gt:
        return det
    g = torch.tensor([r[1:] for r in gt], dtype=torch.float32)
    d = torch.from_numpy(det[:, 1:]).float()
    if obb:
        iou = batch_probiou(xyxyxyxy2xywhr(d.view(-1, 8)), xyxyxyxy2xywhr(g.view(-1, 8)))
    else:

        def xyxy(b: torch.Tensor) -> torch.Tensor:
            return torch.cat([b[:, :2] - b[:, 2:] / 2, b[:, :2] + b[:, 2:] / 2], 1)

        iou = box_iou(xyxy(d), xyxy(g))
    return det[(iou.max(1).values < OVERLAP_IOU).numpy()]


def pseudo_dataset(
    data: str | Path,
    teacher: str | Path,
    class_map: torch.Tensor | None,
    fingerprint: str,
    conf: float,
    imgsz: int,
    out_root: str | Path,
    device: str | None = None,
) -> Path:
    """Write (or reuse) the merged ground-truth + pseudo-label training set and return its data yaml.

    Args:
        data (str | Path): The user's data yaml.
        teacher (str | Path): The teacher checkpoint.
        class_map (torch.Tensor | None): Data class i -> teacher class (None when identical).
        fingerprint (str): The teacher's fingerprint (part of the cache key).
        conf (float): Minimum teacher confidence of a pseudo-label.
        imgsz (int): Inference size for the teacher.
        out_root (str | Path): Folder under which the dataset is written (a subfolder per cache key).
        device (str | None): Inference device.

    Returns:
        (Path): The data yaml of the merged set (train: merged; val/test: the original splits).
    """
    info = check_det_dataset(str(data))
    key = hashlib.sha256(
        json.dumps([str(Path(str(data)).resolve()), fingerprint, conf, imgsz], sort_keys=True).encode()
    ).hexdigest()[:12]
    root = Path(out_root) / f"pseudo-{key}"
    out_yaml = root / "data.yaml"
    if (root / ".done").is_file() and out_yaml.is_file():
        return out_yaml
    images = train_images(info)
    if not images:
        raise FileNotFoundError(f"no training images found for data={data}")
    to_data = None if class_map is None else {int(t): i for i, t in enumerate(class_map.tolist())}
    model = YOLO(str(teacher))
    obb = model.task == "obb"
    added = 0
    (root / "images" / "train").mkdir(parents=True, exist_ok=True)
    (root / "labels" / "train").mkdir(parents=True, exist_ok=True)
    for i, (img, lbl) in enumerate(TQDM(list(zip(images, img2label_paths(images))), desc="DS2D2 pseudo-labels")):
        name = f"{i:06d}_{img.name}"  # unique even when two source folders share file names
        link = root / "images" / "train" / name
        if not link.exists():
            os.symlink(img.resolve(), link)
        gt = _read_labels(Path(lbl))
        r = model.predict(str(img), imgsz=imgsz, conf=conf, device=device, verbose=False)[0]
        if obb:
            geo, cls = r.obb.xyxyxyxyn.reshape(-1, 8).cpu().numpy(), r.obb.cls.cpu().numpy()
        else:
            geo, cls = r.boxes.xywhn.cpu().numpy(), r.boxes.cls.cpu().numpy()
        if to_data is not None:
            keep = np.array([int(c) in to_data for c in cls], dtype=bool)
            geo, cls = geo[keep], np.array([to_data[int(c)] for c in cls[keep]])
        det = np.concatenate([cls.reshape(-1, 1), geo], 1) if len(cls) else np.zeros((0, 9 if obb else 5))
        new = new_objects(gt, det, obb)
        added += len(new)
        rows = [" ".join(f"{v:.6g}" for v in r) for r in [*gt, *new.tolist()]]
        (root / "labels" / "train" / f"{Path(name).stem}.txt").write_text("\n".join(rows) + ("\n" if rows else ""))
    cfg = {"path": str(root.resolve()), "train": "images/train", "names": info["names"]}
    for split in ("val", "test"):
        if info.get(split):
            cfg[split] = info[split]
    out_yaml.write_text(yaml.safe_dump(cfg, sort_keys=False))
    (root / ".done").write_text(json.dumps({"images": len(images), "pseudo_labels": added, "conf": conf}))
    LOGGER.info(f"DS2D2 pseudo: {added} teacher detections (conf >= {conf}) added to {len(images)} images -> {root}")
    return out_yaml
