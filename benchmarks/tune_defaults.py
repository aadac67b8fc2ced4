"""Choose the DS2D2 defaults on the tuning split, never on the images the benchmark reports.

Each configuration is a set of DS2D2 overrides trained with the track's own protocol (`tracks.py`: same student,
epochs, augmentation) on the track's tuning split, with seeds the report grid does not use. Results go to
`<out>/<track>-tune-<config>/results.jsonl`, so the sweep can be interrupted and continued; the summary
(`<out>/<track>-tune-summary/`: the merged records, the benchmark's table and plot) pairs every configuration with
`none` seed by seed, and with each configuration named by `--against` (the current default, say).

Usage:
    python benchmarks/tune_defaults.py                          # synthetic track, every configuration, seeds 3 and 4
    python benchmarks/tune_defaults.py --configs none,default,x3 --seeds 3,4,5
    python benchmarks/tune_defaults.py --track dota --configs none,default,x3 --seeds 3
    python benchmarks/tune_defaults.py --track dota --summary-only --against x1   # also pair every config with x1
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from tracks import run_benchmark, write_report

from ds2d2_yolo.tools.compare import read_results, row_label

# The magnitude-balanced weights exl 0.1, exh 0.2, imf 0.25, imh 0.1: what cfg/ds2d2.yaml ships (real tuning split).
BASE = {"lambda_exl": 0.1, "lambda_exh": 0.2, "lambda_imf": 0.25, "lambda_imh": 0.1}


def scaled(k: float, **kw) -> dict:
    """All four DS2D2 weights times k, then any explicit overrides."""
    return {**{n: v * k for n, v in BASE.items()}, **kw}


# "default" runs whatever cfg/ds2d2.yaml ships, so its meaning moves with the shipped weights: the synthetic `default`
# records are x1 (what shipped then); the real-track runs made as `default` when x3 shipped are filed under x3.
CONFIGS: dict[str, tuple[str, dict]] = {
    "none": ("none", {}),
    "default": ("ds2d2", {}),
    "x0.3": ("ds2d2", scaled(0.3)),
    "x1": ("ds2d2", scaled(1)),
    "x3": ("ds2d2", scaled(3)),
    "x10": ("ds2d2", scaled(10)),
    "implicit-heavy": ("ds2d2", scaled(1, lambda_imf=1.0, lambda_imh=0.5)),
    "explicit-heavy": ("ds2d2", scaled(1, lambda_exl=0.5, lambda_exh=1.0)),
    "beta0.5": ("ds2d2", {"beta": 0.5}),
    "beta2": ("ds2d2", {"beta": 2.0}),
    "disw-hbb": ("ds2d2", {"disw": "hbb"}),
    "amp10": ("ds2d2", {"amp_epochs": 10}),
    # The reference's 24 amplifier epochs: 3 epochs of the 107 DOTA-mini training tiles are only 21 optimizer steps.
    "amp24": ("ds2d2", {"amp_epochs": 24}),
    # x1 again, in its own folder: what float rounding alone (another CPU, the channels-last wrapper) does to a run.
    "x1-rerun": ("ds2d2", scaled(1)),
    "x3-beta2": ("ds2d2", scaled(3, beta=2.0)),
}


def label(name: str) -> str:
    """The summary table's row for a configuration: `none`, or its DS2D2 record tagged with the name."""
    method = CONFIGS[name][0]
    return row_label({"method": method, "config": None if method == "none" else name})


def summary(out: Path, track: str, names: list[str], against: list[str] | None = None) -> str:
    """Gather the configurations' records into `<out>/<track>-tune-summary/` and rebuild the benchmark report there.

    Each DS2D2 record is tagged with its configuration, so the report gives it its own row (e.g. `ds2d2 (x1)`) and
    pairs it with `none` seed by seed, over the seeds both ran; and with each configuration in `against` likewise.
    """
    merged = out / f"{track}-tune-summary"
    merged.mkdir(parents=True, exist_ok=True)
    records = []
    for name in names:
        folder = out / f"{track}-tune-{name}"
        for r in read_results(folder / "results.jsonl"):
            records.append(r if r["method"] == "none" else {"config": name, **r})
        if (folder / "teacher.json").exists():  # every configuration scores on the same split with the same teacher
            shutil.copyfile(folder / "teacher.json", merged / "teacher.json")
    (merged / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return write_report(merged, track, "tune", [label(n) for n in against or []]).read_text()


def main() -> None:
    """Run the requested configurations on the tuning split, then print and write the summary table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--track", default="synthetic", choices=("synthetic", "dota"))
    ap.add_argument("--configs", default=",".join(CONFIGS))
    ap.add_argument("--seeds", default="3,4", help="comma-separated; the report grid uses 0, 1, 2")
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--out", default="runs/bench")
    ap.add_argument("--summary-only", action="store_true")
    ap.add_argument("--against", default="", help="comma-separated configs to pair every other one with, e.g. x1")
    a = ap.parse_args()
    names = a.configs.split(",")
    against = [n for n in a.against.split(",") if n]
    unknown = [n for n in names + against if n not in CONFIGS]
    if unknown:
        raise SystemExit(f"unknown config '{unknown[0]}'; choose from {', '.join(CONFIGS)}")
    if not a.summary_only:
        for name in names:
            method, extra = CONFIGS[name]
            seeds = [int(s) for s in a.seeds.split(",")]
            run_benchmark(a.track, a.out, seeds, a.epochs, method, split="tune", extra=extra, tag=name)
    summary(Path(a.out).resolve(), a.track, list(CONFIGS), against)  # prints the table as it writes it


if __name__ == "__main__":
    main()
