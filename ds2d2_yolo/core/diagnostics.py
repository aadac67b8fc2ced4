"""Gradient diagnostics and balancing of the distillation terms: pure tensor functions plus a CSV/plot writer.

Loss values do not tell how hard a term pulls on the student: two terms of equal value can have gradients that
differ tenfold, and a term can pull against the detection loss. These functions measure, on the parameters that the
detection loss and the distillation terms share (the student's backbone and neck), each term's gradient norm
relative to the detection loss's and the cosine between them, and turn such ratios into loss weights.
"""

from __future__ import annotations

import csv
import math
import statistics
from collections.abc import Sequence
from pathlib import Path

import torch


def _flat(grads: Sequence[torch.Tensor | None], params: Sequence[torch.Tensor]) -> torch.Tensor:
    """One flat fp32 vector of gradients, zeros where a parameter got none."""
    return torch.cat([(g if g is not None else torch.zeros_like(p)).float().reshape(-1) for g, p in zip(grads, params)])


def grad_stats(
    det: torch.Tensor, terms: dict[str, torch.Tensor], params: Sequence[torch.Tensor]
) -> dict[str, dict[str, float]]:
    """Each term's gradient norm relative to the detection loss's, and their cosine, on `params`.

    The graph is kept (`retain_graph`), so the caller can still call `backward()` on the same losses.

    Args:
        det (torch.Tensor): The detection loss as it is back-propagated (a scalar).
        terms (dict[str, torch.Tensor]): Distillation terms as they are added to the loss (scalars).
        params (Sequence[torch.Tensor]): Parameters that both reach (e.g. the student's backbone and neck).

    Returns:
        (dict[str, dict[str, float]]): term -> {"ratio": |g_term| / |g_det|, "cos": cos(g_term, g_det)}; a term
            without a gradient path (switched off) is left out.
    """
    g_det = _flat(torch.autograd.grad(det, params, retain_graph=True, allow_unused=True), params)
    n_det = g_det.norm()
    out = {}
    for name, v in terms.items():
        if not v.requires_grad:
            continue
        g = _flat(torch.autograd.grad(v, params, retain_graph=True, allow_unused=True), params)
        n = g.norm()
        out[name] = {
            "ratio": float(n / n_det) if n_det > 0 else math.inf,
            "cos": float(g @ g_det / (n * n_det)) if n > 0 and n_det > 0 else 0.0,
        }
    return out


def feature_distance(student: Sequence[torch.Tensor], teacher: Sequence[torch.Tensor]) -> list[float]:
    """Per level, the mean squared distance of adapted student features to the teacher's, relative to the teacher's
    mean square (0 is a perfect match, 1 is as far as all-zero features)."""
    return [
        float(((s.detach().float() - t.float()) ** 2).mean() / (t.float() ** 2).mean().clamp_min(1e-12))
        for s, t in zip(student, teacher)
    ]


def balanced_weights(
    weights: dict[str, float], ratios: dict[str, Sequence[float]], target: float, cap: float = 1e3
) -> dict[str, float]:
    """Rescale each term's weight so that its gradient norm becomes `target` times the detection loss's.

    Args:
        weights (dict[str, float]): term -> the loss weight the ratios were measured with.
        ratios (dict[str, Sequence[float]]): term -> measured |g_term| / |g_det| at those weights (averaged here).
        target (float): The wanted ratio for every term.
        cap (float): Largest factor by which a weight may grow (a term with a vanishing gradient would explode).

    Returns:
        (dict[str, float]): term -> new weight; terms without a finite positive measurement keep their weight.
    """
    out = dict(weights)
    for name, rs in ratios.items():
        rs = [r for r in rs if math.isfinite(r) and r > 0]
        if name in out and rs:
            out[name] = out[name] * min(target / statistics.fmean(rs), cap)
    return out


class DiagnosticsLog:
    """Rows of diagnostics appended to a CSV as they arrive, and a plot of the whole file on demand."""

    def __init__(self, path: str | Path) -> None:
        """Append to `path` (its header is taken from the first row written)."""
        self.path = Path(path)

    def write(self, row: dict[str, float | int | str]) -> None:
        """Append one row; a new column after the header was written is an error, not a silent drop."""
        new = not self.path.exists()
        if not new:
            with open(self.path, newline="") as f:
                header = next(csv.reader(f), [])
            extra = set(row) - set(header)
            if extra:
                raise ValueError(f"diagnostics columns {sorted(extra)} are not in {self.path}'s header")
        with open(self.path, "a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(row) if new else header)
            if new:
                w.writeheader()
            w.writerow(row)

    def rows(self) -> list[dict[str, float]]:
        """Every row written so far, numbers as floats (empty cells as NaN)."""
        if not self.path.exists():
            return []
        with open(self.path, newline="") as f:
            return [{k: float(v) if v not in ("", None) else math.nan for k, v in r.items()} for r in csv.DictReader(f)]

    def plot(self, out: str | Path, *others: DiagnosticsLog) -> Path | None:
        """Plot every `*/ratio`, `*/cos`, `dist/*` and `cross/*` column of this log (and `others`) against the step.

        Returns:
            (Path | None): The written image, or None when there is nothing to plot yet.
        """
        rows = self.rows() + [r for o in others for r in o.rows()]
        if not rows:
            return None
        import matplotlib  # the core stays pure torch: plotting is the only thing that needs it

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        cols = list(dict.fromkeys(c for r in rows for c in r))
        panels = [
            ("gradient norm / detection", [c for c in cols if c.endswith("/ratio")]),
            ("cosine with detection", [c for c in cols if c.endswith("/cos")]),
            ("adapted-student distance to teacher", [c for c in cols if c.startswith("dist/")]),
            ("cross-head mAP50", [c for c in cols if c.startswith("cross/")]),
        ]
        panels = [p for p in panels if p[1]]
        fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.5), squeeze=False)
        for ax, (title, names) in zip(axes[0], panels):
            for c in names:
                pts = sorted((r["step"], r[c]) for r in rows if math.isfinite(r.get(c, math.nan)))
                if pts:
                    label = c.rsplit("/", 1)[0] if c.endswith(("/ratio", "/cos")) else c.split("/", 1)[1]
                    ax.plot(*zip(*pts), marker=".", label=label)
            ax.set_title(title, fontsize=9)
            ax.set_xlabel("step")
            ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out, dpi=110)
        plt.close(fig)
        return Path(out)
