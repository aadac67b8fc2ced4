"""DISW against plain per-box loops, hand-worked rotated cases, edge cases and argument checks."""

from __future__ import annotations

import math

import pytest
import torch

from ds2d2_yolo.core.disw import disw_weights, score_weights, xywhr_to_xyxy_hull


def loop_hbb(boxes, batch_idx, batch_size, input_hw, band_hw):
    """The reference rule, one box at a time."""
    h, w = band_hw
    s_h, s_w = h / input_hw[0], w / input_hw[1]
    out = torch.ones(batch_size, 1, h, w, dtype=torch.float64)
    for (x1, y1, x2, y2), b in zip(boxes.tolist(), batch_idx.long().tolist()):
        c0, c1 = max(0, math.floor(x1 * s_w)), min(w - 1, math.ceil(x2 * s_w))
        r0, r1 = max(0, math.floor(y1 * s_h)), min(h - 1, math.ceil(y2 * s_h))
        if c0 > c1 or r0 > r1:
            continue
        out[b, 0, r0 : r1 + 1, c0 : c1 + 1] += 1.0 / ((c1 - c0 + 1) * (r1 - r0 + 1))
    return out.float()


def loop_obb(boxes, batch_idx, batch_size, input_hw, band_hw):
    """The rotated rule, one box and one cell at a time."""
    h, w = band_hw
    s_h, s_w = h / input_hw[0], w / input_hw[1]
    out = torch.ones(batch_size, 1, h, w, dtype=torch.float64)
    for (cx, cy, bw, bh, r), b in zip(boxes.tolist(), batch_idx.long().tolist()):
        cells = set()
        for i in range(h):
            for j in range(w):
                dx, dy = (j + 0.5) / s_w - cx, (i + 0.5) / s_h - cy
                u, v = dx * math.cos(r) + dy * math.sin(r), -dx * math.sin(r) + dy * math.cos(r)
                if abs(u) <= bw / 2 and abs(v) <= bh / 2:
                    cells.add((i, j))
        cells.add((min(max(math.floor(cy * s_h), 0), h - 1), min(max(math.floor(cx * s_w), 0), w - 1)))
        for i, j in cells:
            out[b, 0, i, j] += 1.0 / len(cells)
    return out.float()


def random_xyxy(n: int, size: float, gen: torch.Generator) -> torch.Tensor:
    xy = torch.rand(n, 2, generator=gen) * size
    wh = torch.rand(n, 2, generator=gen) ** 2 * size / 3
    return torch.cat((xy, xy + wh), 1)


def random_xywhr(n: int, size: float, gen: torch.Generator) -> torch.Tensor:
    return torch.cat(
        (
            torch.rand(n, 2, generator=gen) * size,
            torch.rand(n, 2, generator=gen) ** 2 * size / 3 + 0.5,
            (torch.rand(n, 1, generator=gen) - 0.5) * math.pi,
        ),
        1,
    )


@pytest.mark.parametrize("band_hw,input_hw", [((40, 40), (640, 640)), ((10, 20), (320, 640)), ((7, 5), (52, 36))])
def test_hbb_matches_loop_on_random_batches(band_hw, input_hw):
    gen = torch.Generator().manual_seed(1)
    boxes = random_xyxy(200, max(input_hw), gen)
    bidx = torch.randint(0, 4, (200,), generator=gen).float()  # Ultralytics keeps batch_idx as float
    out = disw_weights(boxes, bidx, 4, input_hw, band_hw)
    assert out.shape == (4, 1, *band_hw) and out.dtype == torch.float32
    torch.testing.assert_close(out, loop_hbb(boxes, bidx, 4, input_hw, band_hw), atol=1e-5, rtol=0)


def test_hbb_edge_cases_match_loop():
    boxes = torch.tensor(
        [
            [10.0, 10.0, 30.0, 30.0],
            [12.0, 12.0, 28.0, 28.0],  # overlaps the first
            [0.0, 0.0, 8.0, 8.0],  # at the top-left border
            [60.0, 60.0, 64.0, 64.0],  # at the bottom-right border
            [-50.0, -20.0, 200.0, 300.0],  # larger than the image
            [33.0, 33.0, 33.0, 33.0],  # zero size
            [40.0, 8.0, 40.1, 8.2],  # tiny
            [100.0, 10.0, 120.0, 20.0],  # entirely off the grid: skipped
            [40.0, 40.0, 10.0, 10.0],  # inverted: skipped
        ]
    )
    bidx = torch.tensor([0, 0, 0, 1, 1, 1, 0, 0, 1])
    out = disw_weights(boxes, bidx, 2, (64, 64), (8, 8))
    torch.testing.assert_close(out, loop_hbb(boxes, bidx, 2, (64, 64), (8, 8)), atol=1e-6, rtol=0)
    # Mass: every box that intersects the grid adds exactly 1.
    torch.testing.assert_close((out - 1).sum((1, 2, 3)), torch.tensor([4.0, 3.0]), atol=1e-5, rtol=0)


def test_hbb_rotated_input_uses_hull():
    gen = torch.Generator().manual_seed(2)
    boxes = random_xywhr(100, 128, gen)
    bidx = torch.randint(0, 3, (100,), generator=gen)
    r = boxes[:, 4]
    ex = (boxes[:, 2] * r.cos().abs() + boxes[:, 3] * r.sin().abs()) / 2
    ey = (boxes[:, 2] * r.sin().abs() + boxes[:, 3] * r.cos().abs()) / 2
    hull = torch.stack((boxes[:, 0] - ex, boxes[:, 1] - ey, boxes[:, 0] + ex, boxes[:, 1] + ey), 1)
    torch.testing.assert_close(xywhr_to_xyxy_hull(boxes), hull)
    out = disw_weights(boxes, bidx, 3, (128, 128), (16, 16), mode="hbb")
    torch.testing.assert_close(out, loop_hbb(hull, bidx, 3, (128, 128), (16, 16)), atol=1e-5, rtol=0)


def test_obb_hand_worked_cases():
    # 8x8 grid on a 64-px input: cell (i, j) has its centre at (8j + 4, 8i + 4).
    s = 8 * math.sqrt(2)  # a 45-degree square of side 8*sqrt(2): a diamond reaching 8 px from its centre
    out = disw_weights(
        torch.tensor([[28.0, 28.0, s + 0.01, s + 0.01, math.pi / 4]]), torch.zeros(1), 1, (64, 64), (8, 8), "obb"
    )
    expected = torch.ones(8, 8)
    for i, j in ((2, 3), (3, 2), (3, 3), (3, 4), (4, 3)):  # centre cell and its 4 neighbours; diagonals lie outside
        expected[i, j] += 1 / 5
    torch.testing.assert_close(out[0, 0], expected)

    # A thin box at 30 degrees lying between cell centres covers none of them: only its centre cell gets +1.
    thin = torch.tensor([[40.0, 24.0, 6.0, 0.5, math.radians(30)]])
    out = disw_weights(thin, torch.zeros(1), 1, (64, 64), (8, 8), "obb")
    expected = torch.ones(8, 8)
    expected[3, 5] += 1
    torch.testing.assert_close(out[0, 0], expected)

    # A box whose centre lies off the image adds its mass to the nearest border cell.
    off = torch.tensor([[70.0, -3.0, 2.0, 2.0, 0.3]])
    out = disw_weights(off, torch.zeros(1), 1, (64, 64), (8, 8), "obb")
    expected = torch.ones(8, 8)
    expected[0, 7] += 1
    torch.testing.assert_close(out[0, 0], expected)


def test_obb_axis_aligned_box_covers_centres_inside():
    # Horizontal 20x10 box centred at (30, 30): cell centres 20, 28, 36 in x (inside |dx| <= 10) and 28 in y.
    out = disw_weights(torch.tensor([[30.0, 30.0, 20.0, 10.0, 0.0]]), torch.zeros(1), 1, (64, 64), (8, 8), "obb")
    expected = torch.ones(8, 8)
    expected[3, 2:5] += 1 / 3
    torch.testing.assert_close(out[0, 0], expected)


def test_obb_matches_loop_on_random_batches():
    gen = torch.Generator().manual_seed(3)
    boxes = random_xywhr(150, 96, gen)
    boxes[:5, :2] -= 20  # some centres off the image
    bidx = torch.randint(0, 3, (150,), generator=gen)
    for band_hw in ((12, 12), (6, 9)):
        out = disw_weights(boxes, bidx, 3, (96, 96), band_hw, "obb")
        torch.testing.assert_close(out, loop_obb(boxes, bidx, 3, (96, 96), band_hw), atol=1e-5, rtol=0)
        torch.testing.assert_close(
            (out - 1).sum((1, 2, 3)), torch.bincount(bidx, minlength=3).float(), atol=1e-4, rtol=0
        )


def test_obb_chunked_path_matches(monkeypatch):
    import ds2d2_yolo.core.disw as disw

    gen = torch.Generator().manual_seed(4)
    boxes = random_xywhr(60, 64, gen)
    bidx = torch.randint(0, 2, (60,), generator=gen)
    ref = disw_weights(boxes, bidx, 2, (64, 64), (16, 16), "obb")
    monkeypatch.setattr(disw, "_MAX_CANDIDATES", 7)  # force many small passes
    torch.testing.assert_close(disw_weights(boxes, bidx, 2, (64, 64), (16, 16), "obb"), ref)


@pytest.mark.parametrize("mode", ["hbb", "obb"])
def test_empty_batch_is_all_ones(mode):
    out = disw_weights(torch.zeros(0, 5), torch.zeros(0), 3, (64, 64), (8, 4), mode)
    assert out.shape == (3, 1, 8, 4) and torch.equal(out, torch.ones(3, 1, 8, 4))


def test_half_input_and_grad_free():
    boxes = torch.tensor([[4.0, 4.0, 20.0, 12.0]], dtype=torch.float16, requires_grad=True)
    out = disw_weights(boxes, torch.zeros(1), 1, (32, 32), (4, 4))
    assert out.dtype == torch.float32 and not out.requires_grad
    torch.testing.assert_close(out, loop_hbb(boxes.detach().float(), torch.zeros(1), 1, (32, 32), (4, 4)))


def test_argument_errors():
    b4, one = torch.zeros(1, 4), torch.zeros(1)
    with pytest.raises(ValueError, match="'hbb', 'obb'"):
        disw_weights(b4, one, 1, (8, 8), (4, 4), mode="rbox")
    with pytest.raises(ValueError, match=r"\(M, 4\)"):
        disw_weights(torch.zeros(1, 3), one, 1, (8, 8), (4, 4))
    with pytest.raises(ValueError, match="batch_idx"):
        disw_weights(b4, torch.zeros(2), 1, (8, 8), (4, 4))
    with pytest.raises(ValueError, match="batch_idx values"):
        disw_weights(b4, torch.ones(1), 1, (8, 8), (4, 4))
    with pytest.raises(ValueError, match="xywhr"):
        disw_weights(b4, one, 1, (8, 8), (4, 4), mode="obb")
    with pytest.raises(ValueError, match="band_hw"):
        disw_weights(b4, one, 1, (8, 8), (0, 4))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    gen = torch.Generator().manual_seed(5)
    boxes, bidx = random_xywhr(300, 640, gen), torch.randint(0, 4, (300,), generator=gen)
    for mode in ("hbb", "obb"):
        ref = disw_weights(boxes, bidx, 4, (640, 640), (40, 40), mode)
        out = disw_weights(boxes.cuda(), bidx.cuda(), 4, (640, 640), (40, 40), mode)
        assert out.is_cuda
        torch.testing.assert_close(out.cpu(), ref)


def test_score_weights_match_a_direct_computation():
    """Each cell holds the teacher's top class probability divided by the level's batch mean."""
    gen = torch.Generator().manual_seed(3)
    scores = torch.randn(2, 4, 64 + 25, generator=gen) * 3
    maps = score_weights(scores, [(8, 8), (5, 5)])
    for lv, (start, (h, w)) in enumerate(((0, (8, 8)), (64, (5, 5)))):
        want = torch.zeros(2, 1, h, w)
        for b in range(2):
            for a in range(h * w):
                want[b, 0, a // w, a % w] = max(torch.sigmoid(scores[b, c, start + a]) for c in range(4))
        torch.testing.assert_close(maps[lv], want / want.mean())
    assert not any(m.requires_grad for m in score_weights(scores.requires_grad_(), [(8, 8), (5, 5)]))


def test_score_weights_argument_errors():
    with pytest.raises(ValueError, match="levels hold 89 anchors but the scores have 80"):
        score_weights(torch.zeros(1, 2, 80), [(8, 8), (5, 5)])
    with pytest.raises(ValueError, match=r"needs \(B, nc, A\) scores"):
        score_weights(torch.zeros(2, 64), [(8, 8)])
