"""The accuracy regimes on the real DOTA-mini track, each resumable run by run from its own results.jsonl.

- r1: the width-0.125 student from scratch, with `nbs` equal to the batch (an optimizer step every batch).
- r2: positive control, the teacher's own architecture (yolov8n-obb) from scratch, same settings as r1.
- r3-prune25 / r3-prune50: the teacher pruned by 25 % / 50 % of its channels (`ds2d2-yolo prune`), trained back.

Examples:
    python benchmarks/regimes.py r1 --split tune --methods none,ds2d2 --seeds 3,4,5
    python benchmarks/regimes.py r1 --split report --methods none,ds2d2 --seeds 0,1,2,3,4
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from ds2d2_yolo.cfg import CFG_DIR
from tracks import VAL_SPLITS, results_folder, run_benchmark

from ds2d2_yolo.tools.compare import read_results, row_label

REGIMES = {
    "r1": {"epochs": 60, "extra": {"nbs": 16}, "student": None},
    "r2": {"epochs": 60, "extra": {"nbs": 16}, "student": "yolov8n-obb.yaml"},
    "r3-prune25": {"epochs": 30, "extra": {"nbs": 16}, "student": "prune25"},
    "r3-prune50": {"epochs": 30, "extra": {"nbs": 16}, "student": "prune50"},
}


def final_and_plateau(record: dict) -> dict[str, float]:
    """The last epoch's validation (the final EMA, not a checkpoint chosen on the validation images) and the mean of
    the last five validations, for both metrics."""
    curve = sorted(record.get("curve", []), key=lambda c: c["epoch"])
    last = curve[-1] if curve else {"mAP50": record["mAP50"], "mAP50-95": record["mAP50-95"]}
    return {
        "final50": last["mAP50"],
        "final95": last["mAP50-95"],
        "last5_50": record.get("mAP50_last5", float("nan")),
        "last5_95": record.get("mAP50-95_last5", float("nan")),
    }


def regime_table(folder: Path, reference: str = "none") -> str:
    """A markdown table of one regime/split folder: per row, the seeds, final and last-5 means, and the paired
    difference to `reference` on the same seeds (mean ± std, seeds ahead)."""
    by: dict[str, dict[int, dict]] = {}
    for r in read_results(folder / "results.jsonl"):
        by.setdefault(row_label(r), {})[r["seed"]] = final_and_plateau(r)

    def pm(v: list[float], signed: bool = False) -> str:
        if not v:
            return "—"
        m = statistics.fmean(v)
        txt = f"{m:+.3f}" if signed else f"{m:.3f}"
        return f"{txt} ± {statistics.stdev(v):.3f}" if len(v) > 1 else txt

    tfile = folder / "teacher.json"
    teacher50 = json.loads(tfile.read_text())["mAP50"] if tfile.exists() else float("nan")
    lines = [
        "| row | seeds | final mAP50 | final mAP50-95 | last-5 mAP50 | last-5 mAP50-95 | Δ last-5 mAP50 vs "
        f"{reference} | Δ last-5 mAP50-95 vs {reference} | seeds ahead (mAP50) | gap closure (last-5 mAP50) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    base = by.get(reference, {})
    for row, seeds in sorted(by.items(), key=lambda kv: (kv[0] != reference, kv[0])):
        ss = sorted(seeds)
        col = {k: [seeds[s][k] for s in ss] for k in ("final50", "final95", "last5_50", "last5_95")}
        common = [s for s in ss if s in base] if row != reference else []
        d50 = [seeds[s]["last5_50"] - base[s]["last5_50"] for s in common]
        d95 = [seeds[s]["last5_95"] - base[s]["last5_95"] for s in common]
        ahead = f"{sum(d > 0 for d in d50)}/{len(d50)}" if d50 else "—"
        # Gap closure on the paired seeds: the mean gain over the mean distance from `reference` to the teacher.
        span = teacher50 - statistics.fmean(base[s]["last5_50"] for s in common) if common else float("nan")
        gap = f"{100 * statistics.fmean(d50) / span:.0f} %" if d50 and span > 0 else "—"
        lines.append(
            f"| {row} | {','.join(map(str, ss))} | {pm(col['final50'])} | {pm(col['final95'])} | "
            f"{pm(col['last5_50'])} | {pm(col['last5_95'])} | {pm(d50, True)} | {pm(d95, True)} | {ahead} | {gap} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    """Run one regime's grid on one split and print its table."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("regime", choices=list(REGIMES))
    ap.add_argument("--split", default="tune", choices=list(VAL_SPLITS))
    ap.add_argument("--methods", default="none,ds2d2")
    ap.add_argument("--seeds", default="3,4,5")
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--out", default="runs/regimes")
    ap.add_argument("--config", default="", help="name of the DS2D2 settings given with --set (stored per record)")
    ap.add_argument("--set", default="{}", help="extra keys as JSON, e.g. '{\"kd_warmup\": 5}'")
    ap.add_argument("--val-every", type=int, default=10, help="validate every N epochs and on each of the last 5")
    ap.add_argument("--report", action="store_true", help="only rebuild regime.md from the records, train nothing")
    ap.add_argument("--pruned", default="runs/regimes/pruned", help="folder with prune25.pt and prune50.pt")
    a = ap.parse_args()
    reg = REGIMES[a.regime]
    folder = results_folder(Path(a.out) / a.regime, "dota", a.split, a.config)
    if a.report:
        (folder / "regime.md").write_text(regime_table(folder))
        print(regime_table(folder))
        return
    student = reg["student"]
    if student and student.startswith("prune"):
        student = str(Path(a.pruned) / f"{student}.pt")
        if not Path(student).is_file():
            raise SystemExit(f"{student} not found; make it with `ds2d2-yolo prune` first (see docs/results.md)")
    elif student:
        student = str(CFG_DIR.parent / student) if (CFG_DIR.parent / student).is_file() else student
    run_benchmark(
        "dota",
        Path(a.out) / a.regime,
        seeds=[int(s) for s in a.seeds.split(",")],
        epochs=a.epochs or reg["epochs"],
        methods=a.methods,
        split=a.split,
        extra={**reg["extra"], **json.loads(a.set)},
        tag=a.config,
        val_every=a.val_every,
        student=student,
        config=a.config,
    )
    (folder / "regime.md").write_text(regime_table(folder))
    print(regime_table(folder))


if __name__ == "__main__":
    main()
