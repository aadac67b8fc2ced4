"""Pure distillation losses: DS2D2 explicit band MSE, amplifier class/box KD, and the CWD and MGD baselines.

Every function takes student and teacher tensors, detaches the teacher side (and any teacher-derived weight), and
computes in at least float32, so half-precision inputs under AMP give finite, full-precision losses. All of them are
zero when the student equals the teacher.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

IOU_KINDS = ("iou", "giou", "diou", "ciou")


def _f32(x: torch.Tensor) -> torch.Tensor:
    """Return `x` in float32, or unchanged if it is already float32/float64 (the losses never run below fp32)."""
    return x if x.dtype in {torch.float32, torch.float64} else x.float()


def _teacher(x: torch.Tensor) -> torch.Tensor:
    """Return a detached, at-least-float32 copy of a teacher-side tensor."""
    return _f32(x.detach())


def band_mse(student: torch.Tensor, teacher: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Return mean((student - teacher)^2 * weight) over all elements.

    Args:
        student (torch.Tensor): (N, C, h, w) band, or (N, C, 3, h, w) detail bands.
        teacher (torch.Tensor): Same shape as `student`; detached.
        weight (torch.Tensor): (N, 1, h, w) spatial weight (DISW) shared by channels (and bands); detached.

    Returns:
        (torch.Tensor): Scalar loss.
    """
    if student.shape != teacher.shape or student.ndim not in {4, 5}:
        raise ValueError(
            f"band_mse needs equal (N, C, h, w) or (N, C, 3, h, w) shapes, got {tuple(student.shape)} "
            f"and {tuple(teacher.shape)}"
        )
    n, h, w = student.shape[0], student.shape[-2], student.shape[-1]
    if weight.shape != (n, 1, h, w):
        raise ValueError(f"band_mse weight must be (N, 1, h, w) = {(n, 1, h, w)}, got {tuple(weight.shape)}")
    weight = _teacher(weight)
    if student.ndim == 5:
        weight = weight.unsqueeze(2)  # one map for all three detail bands
    return ((_f32(student) - _teacher(teacher)).pow(2) * weight).mean()


def explicit_band_loss(
    ll_s: torch.Tensor, high_s: torch.Tensor, ll_t: torch.Tensor, high_t: torch.Tensor, weight: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return the DS2D2 explicit-stream terms of one level: (low, high) DISW-weighted element-mean MSEs.

    Args:
        ll_s (torch.Tensor): Student LL band (N, C, h, w), after the adapter and the DWT.
        high_s (torch.Tensor): Student detail bands (N, C, 3, h, w).
        ll_t (torch.Tensor): Teacher LL band (N, C, h, w).
        high_t (torch.Tensor): Teacher detail bands (N, C, 3, h, w).
        weight (torch.Tensor): DISW map (N, 1, h, w).

    Returns:
        low (torch.Tensor): mean((LL_s - LL_t)^2 * W).
        high (torch.Tensor): mean((H_s - H_t)^2 * W) over channels, the three bands and cells.
    """
    return band_mse(ll_s, ll_t, weight), band_mse(high_s, high_t, weight)


def quality_focal_kd(student_logits: torch.Tensor, teacher_logits: torch.Tensor, beta: float = 1.0) -> torch.Tensor:
    """Return the elementwise quality-focal classification KD: BCE(z_s, sigma(z_t)) * |sigma(z_s) - sigma(z_t)|^beta.

    The modulating factor stays differentiable on the student side (as in Quality Focal Loss), and it makes the loss
    zero where the student matches the teacher (exactly for beta >= 1; below 1e-12**beta times the BCE otherwise).

    Args:
        student_logits (torch.Tensor): Student class logits, any shape.
        teacher_logits (torch.Tensor): Teacher class logits, same shape; detached.
        beta (float): Exponent of the modulating factor.

    Returns:
        (torch.Tensor): Unreduced loss of the input shape, at least float32; the caller sums and normalises it.
    """
    zs, pt = _f32(student_logits), _teacher(teacher_logits).sigmoid()
    bce = F.binary_cross_entropy_with_logits(zs, pt, reduction="none")
    gap = (zs.sigmoid() - pt).abs()
    if beta < 1:  # d|x|^beta/dx is infinite at x = 0, which saturated logits reach exactly in fp32
        gap = gap.clamp(min=1e-12)
    return bce * gap.pow(beta)


def _box_wh(boxes: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Split xyxy boxes into (x1, y1, x2, y2, w, h)."""
    x1, y1, x2, y2 = boxes.unbind(-1)
    return x1, y1, x2, y2, x2 - x1, y2 - y1


def bbox_iou_xyxy(a: torch.Tensor, b: torch.Tensor, kind: str = "giou", eps: float = 1e-7) -> torch.Tensor:
    """Return the IoU-family similarity of aligned pairs of xyxy boxes.

    Args:
        a (torch.Tensor): (M, 4) boxes.
        b (torch.Tensor): (M, 4) boxes, paired row by row with `a`.
        kind (str): "iou", "giou" (Rezatofighi 2019), "diou" or "ciou" (Zheng 2020).
        eps (float): Guard against empty unions and enclosing boxes.

    Returns:
        (torch.Tensor): (M,) similarities (1 for identical boxes).
    """
    if kind not in IOU_KINDS:
        raise ValueError(f"unknown IoU kind {kind!r}: use one of {', '.join(IOU_KINDS)}")
    if a.shape != b.shape or a.shape[-1] != 4:
        raise ValueError(f"bbox_iou_xyxy needs two (M, 4) xyxy tensors, got {tuple(a.shape)} and {tuple(b.shape)}")
    ax1, ay1, ax2, ay2, aw, ah = _box_wh(a)
    bx1, by1, bx2, by2, bw, bh = _box_wh(b)
    inter = (torch.minimum(ax2, bx2) - torch.maximum(ax1, bx1)).clamp(min=0) * (
        torch.minimum(ay2, by2) - torch.maximum(ay1, by1)
    ).clamp(min=0)
    union = aw * ah + bw * bh - inter + eps
    iou = inter / union
    if kind == "iou":
        return iou
    cw = torch.maximum(ax2, bx2) - torch.minimum(ax1, bx1)  # enclosing box
    ch = torch.maximum(ay2, by2) - torch.minimum(ay1, by1)
    if kind == "giou":
        c_area = cw * ch + eps
        return iou - (c_area - union) / c_area
    c2 = cw.pow(2) + ch.pow(2) + eps  # squared diagonal of the enclosing box
    rho2 = ((ax1 + ax2 - bx1 - bx2).pow(2) + (ay1 + ay2 - by1 - by2).pow(2)) / 4  # squared centre distance
    if kind == "diou":
        return iou - rho2 / c2
    v = (4 / math.pi**2) * (torch.atan(bw / (bh + eps)) - torch.atan(aw / (ah + eps))).pow(2)
    with torch.no_grad():  # CIoU's trade-off weight is a constant in the gradient (Zheng et al.)
        alpha = v / (v - iou + (1 + eps))
    return iou - (rho2 / c2 + v * alpha)


def box_kd_hbb(
    student_xyxy: torch.Tensor, teacher_xyxy: torch.Tensor, weight: torch.Tensor, kind: str = "giou"
) -> torch.Tensor:
    """Return weight * (1 - IoU-family(student, teacher)) per box pair.

    Args:
        student_xyxy (torch.Tensor): (M, 4) decoded student boxes.
        teacher_xyxy (torch.Tensor): (M, 4) decoded teacher boxes; detached.
        weight (torch.Tensor): (M,) per-pair weight (e.g. the teacher's max class score); detached.
        kind (str): IoU family member, see `bbox_iou_xyxy`.

    Returns:
        (torch.Tensor): (M,) unreduced loss.
    """
    iou = bbox_iou_xyxy(_f32(student_xyxy), _teacher(teacher_xyxy), kind)
    return _teacher(weight) * (1.0 - iou)


def probiou(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Return ProbIoU (Llerena et al. 2021) of aligned pairs of rotated boxes: 1 - Hellinger distance of Gaussians.

    Each box (cx, cy, w, h, angle) becomes a Gaussian with mean at its centre and covariance R diag(w^2, h^2) R^T / 12.
    With S = Sigma_a + Sigma_b and d the centre offset, the Bhattacharyya distance is
    B = d^T S^-1 d / 4 + ln(det S / (4 sqrt(det Sigma_a det Sigma_b))) / 2, and ProbIoU = 1 - sqrt(1 - exp(-B)).
    Unlike Ultralytics' `probiou`, identical boxes give exactly 1 (the guards cancel instead of flooring the
    distance at eps); elsewhere the two agree to ~1e-6.

    Args:
        a (torch.Tensor): (M, 5) xywhr boxes (angle in radians).
        b (torch.Tensor): (M, 5) xywhr boxes paired with `a`.
        eps (float): Guard for degenerate (zero-area) boxes.

    Returns:
        (torch.Tensor): (M,) similarities in [0, 1].
    """
    if a.shape != b.shape or a.shape[-1] != 5:
        raise ValueError(f"probiou needs two (M, 5) xywhr tensors, got {tuple(a.shape)} and {tuple(b.shape)}")

    def cov(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        vw, vh = x[..., 2].pow(2) / 12, x[..., 3].pow(2) / 12
        cos, sin = torch.cos(x[..., 4]), torch.sin(x[..., 4])
        return vw * cos.pow(2) + vh * sin.pow(2), vw * sin.pow(2) + vh * cos.pow(2), (vw - vh) * cos * sin

    xa, ya, xb, yb = a[..., 0], a[..., 1], b[..., 0], b[..., 1]
    (a1, b1, c1), (a2, b2, c2) = cov(a), cov(b)
    sa, sb, sc = a1 + a2, b1 + b2, c1 + c2  # S = [[sa, sc], [sc, sb]]
    det = (sa * sb - sc.pow(2)).clamp(min=0)  # rounding can push a thin box's determinant just below 0
    dx, dy = xa - xb, ya - yb
    maha = (sb * dx.pow(2) + sa * dy.pow(2) - 2 * sc * dx * dy) / (det + eps)
    root = 4 * ((a1 * b1 - c1.pow(2)).clamp(min=0) * (a2 * b2 - c2.pow(2)).clamp(min=0)).sqrt()
    bd = (0.25 * maha + 0.5 * (torch.log(det + eps) - torch.log(root + eps))).clamp(0, 100)
    # -expm1 is 1 - exp accurately near 0; eps^2 under the root keeps the gradient finite at B = 0.
    hd = (-torch.expm1(-bd) + eps**2).sqrt() - eps
    return 1.0 - hd


def box_kd_obb(student_xywhr: torch.Tensor, teacher_xywhr: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Return weight * (1 - ProbIoU(student, teacher)) per rotated box pair (angle included).

    Args:
        student_xywhr (torch.Tensor): (M, 5) decoded student boxes.
        teacher_xywhr (torch.Tensor): (M, 5) decoded teacher boxes; detached.
        weight (torch.Tensor): (M,) per-pair weight; detached.

    Returns:
        (torch.Tensor): (M,) unreduced loss.
    """
    return _teacher(weight) * (1.0 - probiou(_f32(student_xywhr), _teacher(teacher_xywhr)))


def cwd_loss(student: torch.Tensor, teacher: torch.Tensor, tau: float = 1.0) -> torch.Tensor:
    """Return channel-wise distillation (Shu et al. 2021): KL(teacher || student) of per-channel spatial softmaxes.

    Each channel's map is turned into a distribution over its h*w positions with temperature `tau`; the KL
    divergences are multiplied by tau^2 and averaged over the N*C channel maps.

    Args:
        student (torch.Tensor): (N, C, h, w) student features (already adapted to the teacher's width).
        teacher (torch.Tensor): (N, C, h, w) teacher features; detached.
        tau (float): Softmax temperature.

    Returns:
        (torch.Tensor): Scalar loss.
    """
    if student.shape != teacher.shape or student.ndim != 4:
        raise ValueError(
            f"cwd_loss needs equal (N, C, h, w) shapes, got {tuple(student.shape)}, {tuple(teacher.shape)}"
        )
    n, c = student.shape[:2]
    log_ps = F.log_softmax(_f32(student).reshape(n * c, -1) / tau, dim=1)
    log_pt = F.log_softmax(_teacher(teacher).reshape(n * c, -1) / tau, dim=1)
    kl = (log_pt.exp() * (log_pt - log_ps)).sum()
    return kl * tau**2 / (n * c)


def mgd_loss(generated: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Return the MGD feature loss (Yang et al. 2022): squared error summed over all elements, divided by N.

    Args:
        generated (torch.Tensor): (N, C, h, w) features generated from the masked student features.
        teacher (torch.Tensor): (N, C, h, w) teacher features; detached.

    Returns:
        (torch.Tensor): Scalar loss; the caller multiplies it by MGD's alpha.
    """
    if generated.shape != teacher.shape:
        raise ValueError(f"mgd_loss needs equal shapes, got {tuple(generated.shape)} and {tuple(teacher.shape)}")
    return (_f32(generated) - _teacher(teacher)).pow(2).sum() / generated.shape[0]
