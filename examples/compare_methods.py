"""Train one student with each distillation method under identical settings and print a comparison table.

Methods: `none` (the student alone), `native` (Ultralytics' own `distill_model=` route), `cwd` and `mgd` (feature
distillation baselines sharing DS2D2's hooks and adapters) and `ds2d2`. Everything else (student, data, epochs,
image size, batch, seed, augmentation) is the same for every run, so differences come from the method.

Input: a dataset yaml for the student's task (e.g. one written by `ds2d2-yolo convert`, or the DOTA/DIOR yamls of
`cfg/`) and a teacher checkpoint of the same task trained on the same classes.

The defaults are deliberately small (10 epochs, 640 px, one seed) so a comparison finishes in reasonable time; a
single short run per method is noisy, so read small differences with care. For the full protocol (several seeds,
held-out images, gap closure to the teacher, seconds per step and memory) use `ds2d2-yolo benchmark`; for an
offline run on generated data use `ds2d2-yolo demo`.

Usage:
    python examples/compare_methods.py --data ../datasets/DOTAv1/data.yaml --teacher yolov8m-obb.pt \
        --student yolov8n-obb.yaml --epochs 10 --device 0
    python examples/compare_methods.py ... --methods none,ds2d2 --set lambda_imh=0.5   # a subset, a DS2D2 key
"""

from __future__ import annotations

import argparse
import time

from ds2d2_yolo.methods import distill_methods

METHODS = ("none", *(m for m in distill_methods() if m != "none"))  # none first: the others are compared with it


def parse_value(text: str):
    """Type a `key=value` value the way the ds2d2-yolo command does (numbers, booleans, None, strings)."""
    from ultralytics.cfg import smart_value

    return smart_value(text)


def run_one(method: str, common: dict, teacher: str) -> dict:
    """Train one method and return its final validation metrics and wall time."""
    from ds2d2_yolo import DS2D2Trainer

    overrides = {**common, "distill": method, "name": f"compare-{method}"}
    if method != "none":
        overrides["teacher"] = teacher
    t0 = time.time()
    trainer = DS2D2Trainer(overrides=overrides)
    trainer.train()
    metrics = {k.split("/")[-1].removesuffix("(B)"): v for k, v in (trainer.metrics or {}).items()}
    return {**metrics, "minutes": (time.time() - t0) / 60, "weights": str(trainer.best)}


def main() -> None:
    """Run every requested method, then print a markdown table."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="dataset yaml of the student's task")
    p.add_argument("--teacher", required=True, help="teacher .pt (same task and classes as the data)")
    p.add_argument("--student", default="yolov8n-obb.yaml", help="student model yaml, e.g. yolov8n.yaml for detect")
    p.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated subset of {','.join(METHODS)}")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--imgsz", type=int, default=640)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None, help="e.g. 0 or cpu")
    p.add_argument("--project", default=None, help="runs folder; default: Ultralytics' runs/<task>")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="more keys for every run")
    a = p.parse_args()

    methods = [m.strip() for m in a.methods.split(",") if m.strip()]
    bad = [m for m in methods if m not in METHODS]
    if bad:
        p.error(f"unknown method {bad[0]}; choose from {', '.join(METHODS)}")
    common = dict(
        model=a.student,
        data=a.data,
        epochs=a.epochs,
        imgsz=a.imgsz,
        batch=a.batch,
        seed=a.seed,
        deterministic=True,
        device=a.device,
        project=a.project,
        exist_ok=True,  # re-running overwrites compare-<method> instead of numbering new folders
    )
    for item in a.set:
        key, _, value = item.partition("=")
        common[key] = parse_value(value)

    results = {m: run_one(m, common, a.teacher) for m in methods}

    print(f"\n{a.student} on {a.data}, {a.epochs} epochs, imgsz {a.imgsz}, batch {a.batch}, seed {a.seed}")
    print("| method | mAP50 | mAP50-95 | minutes | weights |")
    print("|---|---:|---:|---:|---|")
    for m, r in results.items():
        print(f"| {m} | {r.get('mAP50', float('nan')):.4f} | {r.get('mAP50-95', float('nan')):.4f} "
              f"| {r['minutes']:.1f} | {r['weights']} |")  # fmt: skip


if __name__ == "__main__":
    main()
