"""Micro-benchmark of the spectral core: DISW against per-box loops, DWT2d against pytorch_wavelets.

Run `python benchmarks/core_speed.py`; it prints a markdown table (median of repeated timings after warm-up, with
torch's default thread count). pytorch_wavelets is optional (`pip install -e '.[bench]'`).
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
import platform
import statistics
import time
import warnings
from typing import Callable

import torch

from ds2d2_yolo.core.disw import disw_weights, xywhr_to_xyxy_hull
from ds2d2_yolo.core.dwt import DWT2d

INPUT = 640
LEVELS = (40, 20, 10)  # band grids of P3/P4/P5 (strides 8/16/32) at 640 px after one DWT level
DWT_SHAPES = ((16, 64, 80, 80), (16, 128, 40, 40), (16, 256, 20, 20))


def median_ms(fn: Callable[[], object], reps: int, warmup: int = 2) -> float:
    """Return the median wall time of `fn()` in milliseconds over `reps` runs after `warmup` runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def make_boxes(batch: int = 16, per_image: int = 300, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Return DOTA-like rotated boxes (batch * per_image, 5) in input pixels and their batch indices."""
    g = torch.Generator().manual_seed(seed)
    n = batch * per_image
    wh = torch.exp(torch.empty(n, 2).uniform_(math.log(4), math.log(96), generator=g))  # log-uniform 4-96 px
    xy = torch.rand(n, 2, generator=g) * INPUT
    angle = (torch.rand(n, 1, generator=g) - 0.5) * math.pi
    return torch.cat((xy, wh, angle), 1), torch.arange(batch).repeat_interleave(per_image)


def loop_hbb(boxes: torch.Tensor, batch_idx: torch.Tensor, batch: int, band: int) -> torch.Tensor:
    """Reference-style DISW: one Python iteration per xyxy box (the rule as the authors' code loops it)."""
    s = band / INPUT
    out = torch.ones(batch, 1, band, band)
    for (x1, y1, x2, y2), b in zip(boxes.tolist(), batch_idx.tolist()):
        c0, c1 = max(0, math.floor(x1 * s)), min(band - 1, math.ceil(x2 * s))
        r0, r1 = max(0, math.floor(y1 * s)), min(band - 1, math.ceil(y2 * s))
        if c0 <= c1 and r0 <= r1:
            out[b, 0, r0 : r1 + 1, c0 : c1 + 1] += 1.0 / ((c1 - c0 + 1) * (r1 - r0 + 1))
    return out


def loop_obb(boxes: torch.Tensor, batch_idx: torch.Tensor, batch: int, band: int) -> torch.Tensor:
    """Rotated DISW with one Python iteration per box, vectorised over that box's hull window only."""
    s = band / INPUT
    out = torch.ones(batch, 1, band, band, dtype=torch.float64)
    hulls = xywhr_to_xyxy_hull(boxes.double()).tolist()
    for (cx, cy, w, h, r), (x1, y1, x2, y2), b in zip(boxes.double().tolist(), hulls, batch_idx.tolist()):
        ci, cj = min(max(math.floor(cy * s), 0), band - 1), min(max(math.floor(cx * s), 0), band - 1)
        i0, i1 = min(max(math.ceil(y1 * s - 0.5), 0), ci), max(min(math.floor(y2 * s - 0.5), band - 1), ci)
        j0, j1 = min(max(math.ceil(x1 * s - 0.5), 0), cj), max(min(math.floor(x2 * s - 0.5), band - 1), cj)
        ii, jj = torch.meshgrid(
            torch.arange(i0, i1 + 1, dtype=torch.float64), torch.arange(j0, j1 + 1, dtype=torch.float64), indexing="ij"
        )
        dx, dy = (jj + 0.5) / s - cx, (ii + 0.5) / s - cy
        u, v = dx * math.cos(r) + dy * math.sin(r), dy * math.cos(r) - dx * math.sin(r)
        cover = (u.abs() <= w / 2) & (v.abs() <= h / 2)
        cover[ci - i0, cj - j0] = True
        out[b, 0, i0 : i1 + 1, j0 : j1 + 1] += cover / cover.sum()
    return out.float()


def bench_disw(reps: int) -> list[tuple[str, ...]]:
    """Time DISW (3 levels, batch 16 x 300 boxes, 640 px) vectorised vs per-box loops."""
    boxes, bidx = make_boxes()
    xyxy = xywhr_to_xyxy_hull(boxes)
    rows = []
    for mode, loop, inp in (("hbb", loop_hbb, xyxy), ("obb", loop_obb, boxes)):

        def vec(mode=mode, inp=inp):
            return [disw_weights(inp, bidx, 16, (INPUT, INPUT), (g, g), mode) for g in LEVELS]

        def ref(loop=loop, inp=inp):
            return [loop(inp, bidx, 16, g) for g in LEVELS]

        t_vec = median_ms(vec, reps)
        t_ref = median_ms(ref, max(3, reps // 10), warmup=1)
        diff = max((a - b).abs().max().item() for a, b in zip(vec(), ref()))
        speedup = t_ref / t_vec
        target = "≥100×, ≤5 ms" if mode == "hbb" else "≥100×"
        met = speedup >= 100 and (t_vec <= 5 or mode == "obb")
        rows.append(
            (
                f"DISW {mode}, 16×300 boxes, levels {'/'.join(map(str, LEVELS))}",
                f"{t_vec:.2f}",
                f"{t_ref:.1f} (per-box loop)",
                f"{speedup:.0f}×",
                f"{diff:.1e}",
                target,
                "yes" if met else "**no**",
            )
        )
    return rows


def bench_dwt(reps: int) -> list[tuple[str, ...]]:
    """Time Haar/zero DWT forward+backward against pytorch_wavelets' DWTForward(J=1)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pytorch_wavelets imports the deprecated pkg_resources
            from pytorch_wavelets import DWTForward
    except ImportError:
        DWTForward = None
    ours = DWT2d("haar", "zero")
    ref = DWTForward(J=1, wave="haar", mode="zero") if DWTForward else None
    rows = []
    for shape in DWT_SHAPES:
        x = torch.randn(shape, requires_grad=True)

        def run_ours(x=x):
            ll, high = ours(x)
            (ll.sum() + high.sum()).backward()

        t_ours = median_ms(run_ours, reps)
        name = f"DWT haar/zero fwd+bwd {tuple(shape)} fp32"
        if ref is None:
            rows.append(
                (name, f"{t_ours:.2f}", "not installed (pip install -e '.[bench]')", "-", "-", "≥1×, ≤1e-5", "-")
            )
            continue

        def run_ref(x=x):
            ll, (high,) = ref(x)
            (ll.sum() + high.sum()).backward()

        t_ref = median_ms(run_ref, reps)
        with torch.no_grad():
            (ll, high), (ll_r, (high_r,)) = ours(x), ref(x)
            diff = max((ll - ll_r).abs().max().item(), (high - high_r).abs().max().item())
        speedup = t_ref / t_ours
        met = speedup >= 1 and diff <= 1e-5
        rows.append(
            (
                name,
                f"{t_ours:.2f}",
                f"{t_ref:.2f} (pytorch_wavelets)",
                f"{speedup:.2f}×",
                f"{diff:.1e}",
                "≥1×, ≤1e-5",
                "yes" if met else "**no**",
            )
        )
    return rows


def main(argv: list[str] | None = None) -> str:
    """Run both benchmarks and print (and return) the markdown report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=20, help="timed repetitions per measurement (median reported)")
    args = parser.parse_args(argv)
    rows = bench_disw(args.reps) + bench_dwt(args.reps)
    header = ("Benchmark", "ours (ms)", "reference (ms)", "speedup", "max abs diff", "target", "met")
    lines = [
        f"{datetime.date.today().isoformat()} · torch {torch.__version__} · {torch.get_num_threads()} threads · "
        f"{os.cpu_count()} CPU cores ({platform.machine()}) · Python {platform.python_version()}",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
        *("| " + " | ".join(r) + " |" for r in rows),
    ]
    report = "\n".join(lines)
    print(report)
    return report


if __name__ == "__main__":
    main()
