"""Density-independent scale weight (DISW): the per-level spatial weight map of the DS2D2 explicit stream.

Every ground-truth box spreads a total mass of exactly 1 over the band-grid cells it covers, on top of a background
of 1, so small boxes get large per-cell weight and crowded regions add up. Both rules are computed for the whole
batch at once (no Python loop over boxes):

- "hbb", the reference rule on axis-aligned boxes (the hull for rotated ones), with a 2-D difference array;
- "obb", the rotated rule (cells whose centre lies in the rotated rectangle, always including the cell holding the
  box centre), with one ragged gather over each box's candidate window.

`score_weights` is an alternative map that needs no boxes: the teacher's own confidence, as Ultralytics' feature
distillation weights its imitation. It is not the reference's DISW: it puts almost all of the weight on what the
teacher detects instead of keeping every background cell at weight 1.
"""

from __future__ import annotations

import torch

DISW_MODES = ("hbb", "obb")
SCORE_MODE = "score"  # the teacher-confidence map of `score_weights`, chosen with disw=score
_MAX_CANDIDATES = 1 << 22  # candidate cells per obb pass; larger batches run in chunks to bound memory


def resolve_disw_mode(mode: str, task: str) -> str:
    """The DISW rule a `disw=` value means for a task: `auto` is the rotated rule for OBB and box ranges for detect."""
    return ("obb" if task == "obb" else "hbb") if mode == "auto" else mode


def xywhr_to_xyxy_hull(boxes: torch.Tensor) -> torch.Tensor:
    """Return the axis-aligned hull (x1, y1, x2, y2) of rotated boxes (cx, cy, w, h, angle in radians).

    Args:
        boxes (torch.Tensor): (..., 5) rotated boxes.

    Returns:
        (torch.Tensor): (..., 4) enclosing axis-aligned boxes, same dtype and device.
    """
    if boxes.shape[-1] != 5:
        raise ValueError(f"xywhr_to_xyxy_hull expects (..., 5) xywhr boxes, got shape {tuple(boxes.shape)}")
    cx, cy, w, h, r = boxes.unbind(-1)
    cos, sin = torch.cos(r).abs(), torch.sin(r).abs()
    ex, ey = (w * cos + h * sin) / 2, (w * sin + h * cos) / 2  # half extents of the rotated rectangle
    return torch.stack((cx - ex, cy - ey, cx + ex, cy + ey), -1)


def _check(
    boxes: torch.Tensor, batch_idx: torch.Tensor, batch_size: int, input_hw: tuple[int, int], band_hw: tuple[int, int]
) -> None:
    """Validate the DISW arguments, raising one-line ValueErrors that say what was expected."""
    if boxes.ndim != 2 or boxes.shape[1] not in {4, 5}:
        raise ValueError(f"DISW boxes must be (M, 4) xyxy or (M, 5) xywhr in input pixels, got {tuple(boxes.shape)}")
    if batch_idx.ndim != 1 or batch_idx.shape[0] != boxes.shape[0]:
        raise ValueError(f"DISW batch_idx must be (M,) with M={boxes.shape[0]} boxes, got {tuple(batch_idx.shape)}")
    if int(batch_size) < 1:
        raise ValueError(f"DISW batch_size must be >= 1, got {batch_size}")
    for name, hw in (("input_hw", input_hw), ("band_hw", band_hw)):
        if len(hw) != 2 or min(hw) <= 0:
            raise ValueError(f"DISW {name} must be a positive (height, width), got {tuple(hw)}")


def _hbb(boxes: torch.Tensor, b: torch.Tensor, out: torch.Tensor, scale: tuple[float, float]) -> None:
    """Add the reference (axis-aligned) rule into `out` (B, h, w) via a difference array and two cumsums."""
    bsz, h, w = out.shape
    s_h, s_w = scale
    x1, y1, x2, y2 = boxes.unbind(-1)
    # Reference range: floor of the low edge to ceil of the high edge, inclusive, clamped into the grid.
    c0, c1 = torch.floor(x1 * s_w).clamp(min=0), torch.ceil(x2 * s_w).clamp(max=w - 1)
    r0, r1 = torch.floor(y1 * s_h).clamp(min=0), torch.ceil(y2 * s_h).clamp(max=h - 1)
    valid = (c0 <= c1) & (r0 <= r1)  # False for boxes off the grid, inverted boxes and NaNs: they add nothing
    zero = torch.zeros_like(c0)
    c0, c1, r0, r1 = (torch.where(valid, t, zero).long() for t in (c0, c1, r0, r1))
    area = ((c1 - c0 + 1) * (r1 - r0 + 1)).to(out.dtype)
    v = valid.to(out.dtype) / area
    diff = out.new_zeros(bsz, h + 1, w + 1)
    stride = (h + 1) * (w + 1)
    for rr, cc, sign in ((r0, c0, 1.0), (r0, c1 + 1, -1.0), (r1 + 1, c0, -1.0), (r1 + 1, c1 + 1, 1.0)):
        diff.view(-1).index_add_(0, b * stride + rr * (w + 1) + cc, v * sign)
    out += diff.cumsum(1).cumsum(2)[:, :h, :w]


def _obb(boxes: torch.Tensor, b: torch.Tensor, out: torch.Tensor, scale: tuple[float, float]) -> None:
    """Add the rotated rule into `out` (B, h, w): test each box's candidate cells, always keep its centre cell."""
    bsz, h, w = out.shape
    s_h, s_w = scale
    cell_h, cell_w = 1 / s_h, 1 / s_w  # cell size in input pixels
    keep = torch.isfinite(boxes).all(1)  # NaN/inf boxes cannot be placed: skip them
    boxes, b = boxes[keep], b[keep]
    if not len(boxes):
        return
    cx, cy, bw, bh, r = boxes.unbind(-1)
    hx1, hy1, hx2, hy2 = xywhr_to_xyxy_hull(boxes).unbind(-1)
    ccol = torch.floor(cx * s_w).clamp(0, w - 1)
    crow = torch.floor(cy * s_h).clamp(0, h - 1)
    # Candidate window: cells whose centre (i + 0.5) / s can fall inside the hull, widened by a hair against
    # rounding in the hull, clamped into the grid, then stretched to contain the (clamped) centre cell.
    tol = 1e-6
    col0 = torch.minimum(torch.ceil(hx1 * s_w - 0.5 - tol).clamp(0, w - 1), ccol)
    col1 = torch.maximum(torch.floor(hx2 * s_w - 0.5 + tol).clamp(0, w - 1), ccol)
    row0 = torch.minimum(torch.ceil(hy1 * s_h - 0.5 - tol).clamp(0, h - 1), crow)
    row1 = torch.maximum(torch.floor(hy2 * s_h - 0.5 + tol).clamp(0, h - 1), crow)
    n_cand = ((row1 - row0 + 1) * (col1 - col0 + 1)).long()
    # One row of per-box parameters, so each pass needs a single gather to give every candidate its box's values.
    params = torch.stack(
        (cx, cy, bw / 2, bh / 2, torch.cos(r), torch.sin(r), col0, row0, col1 - col0 + 1, ccol, crow, b.to(cx.dtype)), 1
    )
    ends = n_cand.cumsum(0)
    flat = out.view(-1)
    start = 0
    while start < len(boxes):  # usually one pass; several only when the windows hold millions of cells
        before = int(ends[start - 1]) if start else 0
        stop = max(int(torch.searchsorted(ends, before + _MAX_CANDIDATES, right=True)), start + 1)
        counts = n_cand[start:stop]
        box = torch.repeat_interleave(torch.arange(stop - start, device=out.device), counts)
        first = (ends[start:stop] - counts - before).to(out.dtype)  # index of each box's first candidate
        q = params[start:stop].index_select(0, box)
        pcx, pcy, half_w, half_h, cos, sin, c0, r0, kw, pcc, pcr, pb = q.t().contiguous().unbind(0)
        k = torch.arange(len(box), device=out.device, dtype=out.dtype) - first.index_select(0, box)
        dr = torch.floor((k + 0.5) / kw)  # small integers held exactly in floating point
        col, row = c0 + k - dr * kw, r0 + dr
        dx, dy = (col + 0.5) * cell_w - pcx, (row + 0.5) * cell_h - pcy
        inside = ((dx * cos + dy * sin).abs() <= half_w) & ((dy * cos - dx * sin).abs() <= half_h)  # box frame
        covered = (inside | ((col == pcc) & (row == pcr))).to(out.dtype)
        area = torch.zeros(stop - start, dtype=out.dtype, device=out.device).index_add_(0, box, covered)
        flat.index_add_(0, ((pb * h + row) * w + col).long(), covered / area.index_select(0, box))
        start = stop


def disw_weights(
    boxes: torch.Tensor,
    batch_idx: torch.Tensor,
    batch_size: int,
    input_hw: tuple[int, int],
    band_hw: tuple[int, int],
    mode: str = "hbb",
) -> torch.Tensor:
    """Build the DISW map of one pyramid level on its wavelet-band grid.

    The map starts at 1 everywhere; each box adds 1/A to each of the A cells it covers (so its total mass is 1) and
    overlapping boxes add up. The grid scale is s = band size / input size per axis (`input_hw` is the padded network
    input the boxes live in).

    - "hbb" (reference rule): boxes (M, 4) xyxy, or (M, 5) xywhr reduced to their axis-aligned hull. Columns
      max(0, floor(x1 * s_w)) .. min(w - 1, ceil(x2 * s_w)) inclusive, rows likewise. A box whose range is empty
      after clamping (entirely off the grid, inverted, or NaN) is skipped and adds nothing.
    - "obb" (rotated rule): boxes (M, 5) xywhr. Covered cells are those whose centre ((i + 0.5) / s in input pixels)
      lies inside the rotated rectangle (boundary included), plus always the cell holding the box centre, clamped
      into the grid. Every finite box therefore adds mass 1, even a thin one that covers no cell centre or one lying
      off the grid (its nearest border cell); non-finite boxes are skipped.

    Args:
        boxes (torch.Tensor): (M, 4) xyxy or (M, 5) xywhr (angle in radians) boxes in input pixels.
        batch_idx (torch.Tensor): (M,) image index of each box in the batch (Ultralytics' `batch["batch_idx"]`).
        batch_size (int): Number of images B.
        input_hw (tuple[int, int]): (H, W) of the network input.
        band_hw (tuple[int, int]): (h, w) of the band grid for this level.
        mode (str): "hbb" or "obb".

    Returns:
        (torch.Tensor): (B, 1, h, w) float32 weights on the boxes' device.

    Examples:
        >>> boxes = torch.tensor([[0.0, 0.0, 16.0, 16.0]])
        >>> w = disw_weights(boxes, torch.zeros(1), 1, (64, 64), (8, 8))
        >>> round(float(w.sum()) - 64, 4)  # one box adds a mass of 1
        1.0
    """
    if mode not in DISW_MODES:
        raise ValueError(f"unknown DISW mode {mode!r}: use one of {', '.join(repr(m) for m in DISW_MODES)}")
    _check(boxes, batch_idx, batch_size, input_hw, band_hw)
    if mode == "obb" and boxes.shape[1] != 5:
        raise ValueError(f"DISW mode 'obb' needs (M, 5) xywhr boxes, got {tuple(boxes.shape)}; use mode='hbb' for xyxy")
    device = boxes.device
    h, w = int(band_hw[0]), int(band_hw[1])
    # float64 keeps the difference-array cumsum and the 1/A sums far below float32 resolution (MPS lacks float64).
    dtype = torch.float32 if device.type == "mps" else torch.float64
    out = torch.ones(int(batch_size), h, w, dtype=dtype, device=device)
    if boxes.shape[0]:
        b = batch_idx.to(device=device).long()
        if int(b.min()) < 0 or int(b.max()) >= batch_size:
            raise ValueError(
                f"DISW batch_idx values must lie in [0, {batch_size - 1}], got {int(b.min())}..{int(b.max())}"
            )
        scale = (h / float(input_hw[0]), w / float(input_hw[1]))
        boxes = boxes.detach().to(dtype)
        if mode == "hbb":
            _hbb(xywhr_to_xyxy_hull(boxes) if boxes.shape[1] == 5 else boxes, b, out, scale)
        else:
            _obb(boxes, b, out, scale)
    return out.float().unsqueeze(1)


def score_weights(scores: torch.Tensor, level_hw: list[tuple[int, int]]) -> list[torch.Tensor]:
    """Teacher-confidence weight maps, one per level, on the feature grids.

    Each anchor's weight is the teacher's highest class probability there, max_c sigma(z_t), divided by the level's
    mean over the batch, so a weighted element-mean equals sum(err * conf) / (C * sum(conf)): a confidence-weighted
    mean that does not depend on how many objects the batch holds. The explicit stream applies the square root of
    the map to both features before the DWT, so an orthonormal wavelet splits exactly this weighted error into bands.

    Args:
        scores (torch.Tensor): (B, nc, A) teacher class logits over all levels' anchors, level by level, row-major
            (the `scores` of an Ultralytics head's `forward_head`).
        level_hw (list[tuple[int, int]]): (H, W) of each level's feature map; their areas sum to A.

    Returns:
        (list[torch.Tensor]): One (B, 1, H, W) float32 map per level, detached, with mean 1.

    Examples:
        >>> w = score_weights(torch.zeros(2, 3, 80), [(8, 8), (4, 4)])
        >>> [tuple(x.shape) for x in w], float(w[0].mean())
        ([(2, 1, 8, 8), (2, 1, 4, 4)], 1.0)
    """
    if scores.ndim != 3:
        raise ValueError(f"score_weights needs (B, nc, A) scores, got {tuple(scores.shape)}")
    areas = [int(h) * int(w) for h, w in level_hw]
    if sum(areas) != scores.shape[-1]:
        raise ValueError(f"score_weights: the levels hold {sum(areas)} anchors but the scores have {scores.shape[-1]}")
    conf = scores.detach().float().sigmoid().amax(1)  # (B, A)
    out = []
    for part, (h, w) in zip(conf.split(areas, dim=-1), level_hw):
        m = part.reshape(-1, 1, int(h), int(w))
        out.append(m / m.mean().clamp(min=1e-12))
    return out
