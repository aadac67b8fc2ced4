"""Amplifier knowledge distillation: decode a head's raw outputs and compare student and teacher predictions."""

from __future__ import annotations

import torch
from torch import nn
from ultralytics.utils.tal import dist2bbox, dist2rbox, make_anchors

from ds2d2_yolo.core.losses import box_kd_hbb, box_kd_obb, quality_focal_kd


def decode_head(head: nn.Module, out: dict[str, torch.Tensor], feats: list[torch.Tensor]) -> torch.Tensor:
    """Decode a head's raw `forward_head` output to boxes in input pixels.

    Args:
        head (nn.Module): The Detect/OBB head that produced `out` (gives strides, DFL and the box parametrisation).
        out (dict): Raw outputs with "boxes" (B, 4*reg_max, A) and, for OBB, "angle" (B, 1, A).
        feats (list[torch.Tensor]): The head inputs, used for the anchor grid.

    Returns:
        (torch.Tensor): (B, A, 4) xyxy boxes for Detect, (B, A, 5) xywhr boxes for OBB.
    """
    anchors, strides = make_anchors(feats, head.stride, 0.5)  # (A, 2), (A, 1) in grid units
    anchors, strides = anchors.T.unsqueeze(0), strides.T.unsqueeze(0)
    dist = head.dfl(out["boxes"])  # (B, 4, A); identity when reg_max == 1
    if "angle" in out:
        xywh = dist2rbox(dist, out["angle"], anchors, dim=1) * strides
        return torch.cat([xywh, out["angle"]], 1).transpose(1, 2)
    return (dist2bbox(dist, anchors, xywh=False, dim=1) * strides).transpose(1, 2)


def amplifier_kd(
    head: nn.Module,
    student_out: dict[str, torch.Tensor],
    teacher_out: dict[str, torch.Tensor],
    feats: list[torch.Tensor],
    beta: float = 1.0,
    box_weight: float = 1.0,
) -> torch.Tensor:
    """Class and box KD between one head's outputs on student and on teacher features (docs/method.md, implicit stream).

    Classification KD is the quality-focal form over every anchor and class; box KD is GIoU (Detect) or ProbIoU
    (OBB, angle included) between decoded boxes, weighted per anchor by the teacher's max class score. YOLO has no
    ignore region, so all anchors count, and both sums are divided by the teacher's soft positive count
    sum_a max_c sigma(z_t), the analogue of Ultralytics' `target_scores_sum` (clamped at 1). Both outputs come from
    the same head, so their class channels already correspond: a data->teacher class map must not be applied here.

    Args:
        head (nn.Module): Head used for both outputs (decoding).
        student_out (dict): `forward_head` output on (adapted) student features.
        teacher_out (dict): `forward_head` output on teacher features (detached here).
        feats (list[torch.Tensor]): Feature maps defining the anchor grid.
        beta (float): Quality-focal exponent.
        box_weight (float): Weight of the box term relative to the class term.

    Returns:
        (torch.Tensor): Scalar loss, fp32.
    """
    zs = student_out["scores"].float()
    zt = teacher_out["scores"].detach().float()
    w = zt.sigmoid().amax(1)  # (B, A)
    norm = w.sum().clamp(min=1.0)
    loss = quality_focal_kd(zs, zt, beta).sum() / norm
    if box_weight > 0:
        bs = decode_head(head, {k: v.float() for k, v in student_out.items() if k != "feats"}, feats)
        with torch.no_grad():
            bt = decode_head(head, {k: v.detach().float() for k, v in teacher_out.items() if k != "feats"}, feats)
        fn = box_kd_obb if bs.shape[-1] == 5 else box_kd_hbb
        per_anchor = fn(bs.reshape(-1, bs.shape[-1]), bt.reshape(-1, bt.shape[-1]), w.reshape(-1))
        loss = loss + box_weight * per_anchor.sum() / norm
    return loss
