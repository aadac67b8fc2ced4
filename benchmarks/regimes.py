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
from pathlib import Path

from ds2d2_yolo.cfg import CFG_DIR

from ds2d2_yolo.benchmark import run_benchmark

REGIMES = {
    "r1": {"epochs": 60, "extra": {"nbs": 16}, "student": None},
    "r2": {"epochs": 60, "extra": {"nbs": 16}, "student": "yolov8n-obb.yaml"},
    "r3-prune25": {"epochs": 30, "extra": {"nbs": 16}, "student": "prune25"},
    "r3-prune50": {"epochs": 30, "extra": {"nbs": 16}, "student": "prune50"},
}


def main() -> None:
    """Run one regime's grid on one split and print its table."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("regime", choices=list(REGIMES))
    ap.add_argument("--split", default="tune", choices=["tune", "report"])
    ap.add_argument("--methods", default="none,ds2d2")
    ap.add_argument("--seeds", default="3,4,5")
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--out", default="runs/regimes")
    ap.add_argument("--config", default="", help="name of the DS2D2 settings given with --set (stored per record)")
    ap.add_argument("--set", default="{}", help="extra keys as JSON, e.g. '{\"kd_warmup\": 5}'")
    ap.add_argument("--val-every", type=int, default=10, help="validate every N epochs and on each of the last 5")
    ap.add_argument("--pruned", default="runs/regimes/pruned", help="folder with prune25.pt and prune50.pt")
    a = ap.parse_args()
    reg = REGIMES[a.regime]
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


if __name__ == "__main__":
    main()
