"""Distillation losses and connectors: values against independent references, zeros, gradients, half precision."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from ds2d2_yolo.core.connectors import Adapter, MGDGenerator
from ds2d2_yolo.core.losses import (
    band_mse,
    bbox_iou_xyxy,
    box_kd_hbb,
    box_kd_obb,
    cwd_loss,
    explicit_band_loss,
    mgd_loss,
    probiou,
    quality_focal_kd,
)


def _xyxy(n: int, gen: torch.Generator) -> torch.Tensor:
    xy = torch.rand(n, 2, generator=gen) * 50
    return torch.cat((xy, xy + torch.rand(n, 2, generator=gen) * 30 + 1), 1)


def _xywhr(n: int, gen: torch.Generator) -> torch.Tensor:
    return torch.cat(
        (
            torch.rand(n, 2, generator=gen) * 100,
            torch.rand(n, 2, generator=gen) * 40 + 1,
            (torch.rand(n, 1, generator=gen) - 0.5) * math.pi,
        ),
        1,
    )


def _cases(gen: torch.Generator) -> dict:
    """Each loss as (fn, student, teacher) with the student a perturbed teacher."""
    w = torch.rand(2, 1, 5, 6, generator=gen) + 1
    f4, f5 = torch.randn(2, 4, 5, 6, generator=gen), torch.randn(2, 4, 3, 5, 6, generator=gen)
    bh, bo = _xyxy(16, gen), _xywhr(16, gen)
    bw = torch.rand(16, generator=gen)
    return {
        "band_mse4": (lambda s, t: band_mse(s, t, w), f4),
        "band_mse5": (lambda s, t: band_mse(s, t, w), f5),
        "qfl": (lambda s, t: quality_focal_kd(s, t).sum(), torch.randn(3, 8, 10, generator=gen)),
        "hbb": (lambda s, t: box_kd_hbb(s, t, bw).sum(), bh),
        "ciou": (lambda s, t: box_kd_hbb(s, t, bw, kind="ciou").sum(), bh),
        "obb": (lambda s, t: box_kd_obb(s, t, bw).sum(), bo),
        "cwd": (lambda s, t: cwd_loss(s, t, tau=2.0), f4),
        "mgd": (lambda s, t: mgd_loss(s, t), f4),
    }


def test_zero_when_student_equals_teacher():
    for name, (fn, t) in _cases(torch.Generator().manual_seed(0)).items():
        assert fn(t.clone(), t).abs().item() < 1e-6, name


def test_gradients_reach_only_the_student():
    gen = torch.Generator().manual_seed(1)
    for name, (fn, t) in _cases(gen).items():
        teacher = t.clone().requires_grad_(True)
        student = (t + 0.5 * torch.rand(t.shape, generator=gen)).requires_grad_(True)
        loss = fn(student, teacher)
        assert loss.item() > 0, name
        loss.backward()
        assert teacher.grad is None, name
        assert student.grad is not None and torch.isfinite(student.grad).all() and student.grad.abs().sum() > 0, name


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs_are_finite_and_fp32(dtype):
    gen = torch.Generator().manual_seed(2)
    for name, (fn, t) in _cases(gen).items():
        s = (t + 0.3 * torch.rand(t.shape, generator=gen)).to(dtype)
        loss = fn(s, t.to(dtype))
        assert loss.dtype == torch.float32 and torch.isfinite(loss), name
        torch.testing.assert_close(loss, fn(s.float(), t.to(dtype).float()), msg=name)


def test_band_mse_and_explicit_values():
    gen = torch.Generator().manual_seed(3)
    s, t = torch.randn(2, 3, 2, 4, 5, generator=gen).unbind(2)
    hs, ht = torch.randn(2, 2, 3, 3, 4, 5, generator=gen).unbind(0)
    w = torch.rand(2, 1, 4, 5, generator=gen)
    low, high = explicit_band_loss(s, hs, t, ht, w)
    torch.testing.assert_close(low, sum(((s - t) ** 2 * w)[n, c].sum() for n in range(2) for c in range(3)) / s.numel())
    manual = sum((hs[:, :, b] - ht[:, :, b]) ** 2 * w for b in range(3)).sum() / hs.numel()
    torch.testing.assert_close(high, manual)
    with pytest.raises(ValueError, match="weight"):
        band_mse(s, t, w[:, :, :3])


def test_quality_focal_kd_formula():
    zs, zt = torch.tensor([0.3, -2.0, 4.0]), torch.tensor([1.0, -1.0, -3.0])
    ps, pt = torch.sigmoid(zs), torch.sigmoid(zt)
    bce = -(pt * torch.log(ps) + (1 - pt) * torch.log(1 - ps))
    torch.testing.assert_close(quality_focal_kd(zs, zt, beta=2.0), bce * (ps - pt).abs() ** 2)
    # As in Quality Focal Loss (and the reference), the modulating factor is differentiated on the student side too.
    z = zs.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(quality_focal_kd(z, zt).sum(), z)
    p = torch.sigmoid(z)
    (manual,) = torch.autograd.grad((-(pt * torch.log(p) + (1 - pt) * torch.log(1 - p)) * (p - pt).abs()).sum(), z)
    torch.testing.assert_close(grad, manual)
    assert quality_focal_kd(zs.view(3, 1), zt.view(3, 1)).shape == (3, 1)


@pytest.mark.parametrize("beta", [0.0, 0.5])
def test_quality_focal_kd_small_beta_saturated_gradient_is_finite(beta):
    """With beta < 1 the factor |p_s - p_t|^beta has an infinite slope at 0, which saturated logits hit exactly."""
    z = torch.tensor([20.0, 18.0, 0.3], requires_grad=True)
    zt = torch.tensor([20.0, 25.0, 1.0])
    loss = quality_focal_kd(z, zt, beta=beta)
    (grad,) = torch.autograd.grad(loss.sum(), z)
    assert torch.isfinite(grad).all(), grad
    ps, pt = torch.sigmoid(z[2].detach()), torch.sigmoid(zt[2])
    bce = -(pt * torch.log(ps) + (1 - pt) * torch.log(1 - ps))
    torch.testing.assert_close(loss[2], bce * (ps - pt).abs() ** beta)  # away from 0 the formula is unchanged


def test_iou_family_matches_torchvision():
    ops = pytest.importorskip("torchvision.ops")
    gen = torch.Generator().manual_seed(4)
    a, b = _xyxy(64, gen), _xyxy(64, gen)
    b[:8] = a[:8] + 2.0  # overlapping pairs too, not only far-apart ones
    ref = {
        "iou": ops.box_iou,
        "giou": ops.generalized_box_iou,
        "diou": ops.distance_box_iou,
        "ciou": ops.complete_box_iou,
    }
    for kind, fn in ref.items():
        torch.testing.assert_close(bbox_iou_xyxy(a, b, kind), fn(a, b).diagonal(), atol=1e-5, rtol=0, msg=kind)
    w = torch.rand(64, generator=gen)
    torch.testing.assert_close(
        box_kd_hbb(a, b, w), w * (1 - ops.generalized_box_iou(a, b).diagonal()), atol=1e-5, rtol=0
    )
    with pytest.raises(ValueError, match="giou"):
        bbox_iou_xyxy(a, b, "wiou")


def test_probiou_matches_ultralytics():
    metrics = pytest.importorskip("ultralytics.utils.metrics")
    gen = torch.Generator().manual_seed(5)
    a = _xywhr(500, gen)
    b = a + torch.randn(500, 5, generator=gen) * torch.tensor([6.0, 6.0, 4.0, 4.0, 0.4])
    b[:, 2:4] = b[:, 2:4].abs() + 0.5
    for dtype in (torch.float64, torch.float32):
        ours = probiou(a.to(dtype), b.to(dtype))
        torch.testing.assert_close(ours, metrics.probiou(a.to(dtype), b.to(dtype)).squeeze(-1), atol=2e-5, rtol=0)
    w = torch.rand(500, generator=gen)
    ref = w * (1 - metrics.probiou(a, b).squeeze(-1))
    torch.testing.assert_close(box_kd_obb(b, a, w), ref, atol=2e-5, rtol=0)
    # The angle matters: a long box turned by 90 degrees is a different box.
    turned = a.clone()
    turned[:, 4] += math.pi / 2
    long = a[:, 2] > 2 * a[:, 3]
    assert (probiou(a, turned)[long] < 0.9).all()


def test_cwd_matches_loop():
    gen = torch.Generator().manual_seed(6)
    s, t = torch.randn(2, 2, 3, 4, 5, generator=gen).unbind(0)
    tau = 1.7
    total = 0.0
    for n in range(2):
        for c in range(3):
            p = torch.softmax(t[n, c].flatten() / tau, 0)
            q = torch.softmax(s[n, c].flatten() / tau, 0)
            total += sum(p[i] * math.log(p[i] / q[i]) for i in range(20))
    torch.testing.assert_close(cwd_loss(s, t, tau), total * tau**2 / 6)


def test_mgd_loss_value():
    gen = torch.Generator().manual_seed(7)
    g, t = torch.randn(2, 3, 4, 5, 6, generator=gen).unbind(0)
    torch.testing.assert_close(mgd_loss(g, t), F.mse_loss(g, t, reduction="sum") / 3)


def test_adapter():
    ad = Adapter(8, 16)
    assert ad(torch.randn(2, 8, 5, 5)).shape == (2, 16, 5, 5)
    assert ad.conv.bias is None and ad.conv.kernel_size == (1, 1)


def test_mlp_projector_is_conv_relu_conv_with_bias():
    """projector=mlp computes W2 relu(W1 x + b1) + b2 per position, checked against a matrix product."""
    torch.manual_seed(0)
    ad = Adapter(8, 16, "mlp")
    c1, c2 = ad.conv[0], ad.conv[2]
    assert c1.kernel_size == c2.kernel_size == (1, 1) and c1.bias is not None and c2.bias is not None
    x = torch.randn(2, 8, 5, 5)
    flat = x.permute(0, 2, 3, 1).reshape(-1, 8)
    hidden = (flat @ c1.weight.view(16, 8).T + c1.bias).relu()
    want = (hidden @ c2.weight.view(16, 16).T + c2.bias).view(2, 5, 5, 16).permute(0, 3, 1, 2)
    torch.testing.assert_close(ad(x), want)
    with pytest.raises(ValueError, match="unknown projector 'deep'"):
        Adapter(8, 16, "deep")


def test_mgd_generator_masks_in_training_only():
    torch.manual_seed(0)
    gen_block = MGDGenerator(4, mask_ratio=0.65)
    x = torch.ones(8, 4, 16, 16)
    gen_block.generation = torch.nn.Identity()  # look at the masked input directly
    out = gen_block(x, generator=torch.Generator().manual_seed(1))
    assert ((out == 0).all(1) | (out == 1).all(1)).all()  # whole positions are dropped, across channels
    assert abs((out[:, 0] == 0).float().mean().item() - 0.65) < 0.05
    again = gen_block(x, generator=torch.Generator().manual_seed(1))
    assert torch.equal(out, again)  # reproducible with a seeded generator
    gen_block.eval()
    assert torch.equal(gen_block(x), x)
    with pytest.raises(ValueError):
        MGDGenerator(4, mask_ratio=1.0)
    full = MGDGenerator(4)
    assert full(torch.randn(2, 4, 6, 6)).shape == (2, 4, 6, 6)
