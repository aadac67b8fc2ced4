"""Cross-head evaluation: the mAP of a detection head reading features other than its own model's.

It answers two questions the loss values cannot: does the high-frequency amplifier detect objects from HF(teacher
neck) maps, and does the student's neck, through its adapters, already speak the teacher head's language (the
implicit stream's goal)? Both are scored with Ultralytics' own validator metrics on the run's validation loader.
"""

from __future__ import annotations

from copy import copy
from types import SimpleNamespace
from typing import Any, Callable

import torch
from torch import nn


def head_map(
    trainer: Any,
    features: Callable[[torch.Tensor], list[torch.Tensor]],
    head: nn.Module,
    class_map: torch.Tensor | None = None,
    max_batches: int | None = None,
) -> dict[str, float]:
    """Score `head` on `features(img)` over the trainer's validation loader with Ultralytics' metrics.

    Args:
        trainer (Any): An Ultralytics detection/OBB trainer after `_setup_train` (validator and test loader built).
        features (Callable): Image batch -> the head's input features, one tensor per level.
        head (nn.Module): A Detect/OBB head (its one-to-many branch is decoded, then NMS as in validation).
        class_map (torch.Tensor | None): Data class i -> head class (a teacher head in another class order).
        max_batches (int | None): Stop after this many validation batches (None: all).

    Returns:
        (dict[str, float]): "mAP50" and "mAP50-95" of the boxes.
    """
    v = type(trainer.validator)(trainer.test_loader, save_dir=trainer.save_dir, args=copy(trainer.validator.args))
    v.args.plots, v.args.save_json, v.args.save_txt = False, False, False
    v.training, v.device, v.data = True, trainer.device, trainer.data
    v.init_metrics(SimpleNamespace(names=trainer.data["names"], end2end=False))
    nc = len(trainer.data["names"])
    rows = None if class_map is None else torch.cat([torch.arange(4), 4 + class_map.cpu().long()])
    was_training = head.training
    head.eval()
    try:
        with torch.no_grad():
            for i, batch in enumerate(v.dataloader):
                if max_batches is not None and i >= max_batches:
                    break
                batch = v.preprocess(batch)
                feats = [f.float() for f in features(batch["img"].float())]
                preds = head._inference(head.forward_head(feats, **head.one2many))
                if rows is not None:
                    # Keep the box rows, take the data's classes in the data's order, then any extra rows (angle).
                    preds = torch.cat([preds[:, rows.to(preds.device)], preds[:, 4 + head.nc :]], 1)
                elif head.nc != nc:
                    raise ValueError(f"head predicts {head.nc} classes but the data has {nc}; pass a class_map")
                v.update_metrics(v.postprocess(preds), batch)
        stats = v.get_stats()
    finally:
        head.train(was_training)
    return {
        "mAP50": float(stats.get("metrics/mAP50(B)", 0.0)),
        "mAP50-95": float(stats.get("metrics/mAP50-95(B)", 0.0)),
    }
