"""The research tracks: a real DOTA-mini track and a fast synthetic one, each run as a grid of (method, seed) runs.

Protocol (docs/results.md): the same student, epochs, image size, augmentation and seeds for every method; whole
source images held out for reporting and a separate tuning split; mAP50, mAP50-95, gap closure
(method - none) / (teacher - none), seconds per training step and peak RSS, mean and spread over seeds.

Every run is a separate process (`ds2d2_yolo.tools.compare`, so peak RSS is its own) and is appended to
`results.jsonl` as soon as it ends, so a long grid can be interrupted and continued; the table and plot are rebuilt
from whatever runs exist. The real track reads the DOTA samples from ../shared/data next to this repository (or
$DS2D2_SHARED_DATA); their licence keeps them out of it.

Examples:
    python benchmarks/tracks.py --track synthetic --seeds 3 --methods none,ds2d2
    python benchmarks/tracks.py --track dota --split tune --methods none,ds2d2 --seeds 3,4 --against ds2d2
    python benchmarks/tracks.py --track dota --split report --out docs/benchmarks --report   # the table alone
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from ultralytics import YOLO
from ultralytics.utils.patches import imread

from ds2d2_yolo.config import check_args, split_overrides
from ds2d2_yolo.tools.compare import (
    METHODS,
    is_done,
    method_names,
    read_results,
    record_args,
    row_label,
    teacher_map,
    train_run,
    write_table,
)
from ds2d2_yolo.tools.dataprep import DOTA_V1_CLASSES, tile_dota, write_data_yaml
from ds2d2_yolo.tools.models import scaled_model_yaml
from ds2d2_yolo.tools.synthetic import make_dataset

# Real track (../shared/data): whole images per split, never mixed. The report split holds dense scenes with
# hundreds of objects (P0706 ships, P0005 and P1888 vehicles); tuning uses P0004 (vehicles) and dota8's val tiles.
# The tune split has too few objects (24 of its 82 tiles hold any) to resolve gains of a few hundredths, so the "fold"
# split also holds one training image out: P1478 (295 vehicles) is validated on, with the tune images, and trained on
# only by the other splits. Defaults are chosen on "tune" or "fold", never on "report".
REAL_SPLITS = {
    "report": ["dota-devkit-example/P0706", "dota-devkit-yolo-demo/P0005", "dota-devkit-example/P1888"],
    "tune": ["dota-devkit-yolo-demo/P0004", "dota8/val/*"],
    "train": [
        "dota-devkit-example/P0075",
        "dota-devkit-example/P0168",
        "dota-devkit-example/P0770",
        "dota-devkit-example/P1088",
        "dota-devkit-yolo-demo/P0003",
        "dota-devkit-yolo-demo/P1478__1__853___962",
        "dota8/train/*",
    ],
}
FOLD_HELD_OUT = "dota-devkit-yolo-demo/P1478__1__853___962"
REAL_SPLITS["fold"] = [FOLD_HELD_OUT, *REAL_SPLITS["tune"]]
REAL_SPLITS["train-fold"] = [x for x in REAL_SPLITS["train"] if x != FOLD_HELD_OUT]
# Each validation split and the split it trains on.
TRAIN_OF = {"report": "train", "tune": "train", "fold": "train-fold"}
VAL_SPLITS = tuple(TRAIN_OF)

TRACKS: dict[str, dict[str, Any]] = {
    # 320-px tiles at native resolution, AdamW lr0=0.002, batch 16, 100 epochs: the earlier protocol (docs/results.md).
    "dota": {"imgsz": 320, "batch": 16, "epochs": 100, "optimizer": "AdamW", "lr0": 0.002, "width": 0.125},
    # Minutes per run: small generated scenes, a teacher trained on 6x more scenes than the student sees.
    # Calibrated so `none` clearly learns (~0.3 mAP50 at 30 epochs); width 0.0625, batch 16 or mosaic stayed at 0.
    "synthetic": {
        "imgsz": 128,
        "batch": 8,
        "epochs": 30,
        "optimizer": "AdamW",
        "lr0": 0.005,
        "width": 0.125,
        "mosaic": 0.0,
    },
}


def shared_data() -> Path:
    """The real samples folder, ../shared/data next to the repository (or $DS2D2_SHARED_DATA)."""
    env = os.environ.get("DS2D2_SHARED_DATA")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data"


def _stage_split(items: list[str], stage: Path) -> Path:
    """Link a split's source images and write DOTA labelTxt files for them (dota8 tiles are converted back)."""
    root = shared_data()
    (stage / "images").mkdir(parents=True, exist_ok=True)
    (stage / "labelTxt").mkdir(parents=True, exist_ok=True)
    for item in items:
        if item.startswith("dota8/"):
            split = item.split("/")[1]
            for im in sorted((root / "dota8" / "images" / split).glob("*.jpg")):
                h, w = imread(str(im)).shape[:2]
                rows = []
                for line in (root / "dota8" / "labels" / split / f"{im.stem}.txt").read_text().split("\n"):
                    v = line.split()
                    if len(v) == 9:
                        xy = [float(x) * (w if i % 2 == 0 else h) for i, x in enumerate(v[1:])]
                        rows.append(" ".join(f"{x:.1f}" for x in xy) + f" {DOTA_V1_CLASSES[int(v[0])]} 0")
                (stage / "labelTxt" / f"{im.stem}.txt").write_text("\n".join(rows) + "\n")
                _link(im, stage / "images" / im.name)
        else:
            folder, stem = item.split("/")
            src = next((root / folder / "images").glob(f"{stem}.*"))
            _link(src, stage / "images" / src.name)
            _link(root / folder / "labelTxt" / f"{stem}.txt", stage / "labelTxt" / f"{stem}.txt")
    return stage


def _link(src: Path, dst: Path) -> None:
    if not dst.exists():
        dst.symlink_to(src.resolve())


def prepare_dota_mini(out: Path, tile: int = 320, gap: int = 64) -> dict[str, Path]:
    """Cut the real DOTA samples into tiles per split and write `report.yaml` and `tune.yaml`.

    Args:
        out (Path): Work folder (outside the repository's tracked files; the data's licence forbids committing it).
        tile (int): Tile size in pixels (native resolution).
        gap (int): Overlap between tiles.

    Returns:
        (dict[str, Path]): Data yamls for "report" (train + report val), "tune" (train + tune val) and "fold" (train
            without P1478 + P1478 and the tune images as val).
    """
    if not shared_data().is_dir():
        raise FileNotFoundError(f"real track needs the DOTA samples in {shared_data()} (set DS2D2_SHARED_DATA)")
    ds = out / "dota-mini"
    for split, items in REAL_SPLITS.items():
        # One marker per split; folders cut before the fold split existed carry one `.done` for the first three.
        done = ds / f".done-{split}"
        if done.exists() or (split in ("report", "tune", "train") and (ds / ".done").exists()):
            continue
        stage = _stage_split(items, out / "stage" / split)
        # Background tiles are kept only for validation: in training they add steps, not objects.
        tile_dota(stage, ds, tile=tile, gap=gap, split=split, suffix=".png", background=split in VAL_SPLITS)
        done.touch()
    names = [n.replace("-", " ") for n in DOTA_V1_CLASSES]  # the teachers' spelling
    return {s: write_data_yaml(out / f"{s}.yaml", ds, f"images/{t}", f"images/{s}", names) for s, t in TRAIN_OF.items()}


def _dataset(root: Path, **kw: Any) -> Path:
    """A generated dataset, reused when its marker says it was made with the same arguments."""
    # Regenerating replaces the files in place, which would pull them from under a concurrent run of the grid.
    mark = root / ".generated.json"
    if mark.exists() and json.loads(mark.read_text()) == kw and (root / "data.yaml").exists():
        return root / "data.yaml"
    path = make_dataset(root, **kw)
    mark.write_text(json.dumps(kw))
    return path


def prepare_synthetic(out: Path, imgsz: int = 128, seed: int = 0) -> dict[str, Any]:
    """Generate the synthetic track and train (or reuse) its teacher.

    Returns:
        (dict): "report"/"tune" data yamls (student train split + val split) and the "teacher" checkpoint path.
    """
    out = out / "synthetic"
    teacher = out / "teacher" / "weights" / "best.pt"
    student_data = _dataset(out / "student", n_train=64, n_val=200, imgsz=imgsz, seed=seed + 1)
    tune = _dataset(out / "tune", n_train=64, n_val=100, imgsz=imgsz, seed=seed + 2)
    if not teacher.exists():
        big = _dataset(out / "teacher-data", n_train=400, n_val=50, imgsz=imgsz, seed=seed + 3)
        cfg = scaled_model_yaml("yolov8-obb.yaml", 0.33, 0.25, nc=3, out=out / "teacher-obb.yaml")
        YOLO(str(cfg)).train(
            data=str(big),
            epochs=40,
            imgsz=imgsz,
            batch=16,
            workers=0,
            plots=False,
            device="cpu",
            seed=seed,
            optimizer="AdamW",
            lr0=0.002,
            project=str(out),
            name="teacher",
            exist_ok=True,
            verbose=False,
        )
    # The tune split reuses the student's training images with its own validation scenes.
    tune_yaml = out / "tune.yaml"
    cfg = yaml.safe_load(Path(student_data).read_text())
    tcfg = yaml.safe_load(Path(tune).read_text())
    cfg["val"] = str(Path(tcfg["path"]) / tcfg["val"])
    tune_yaml.write_text(yaml.safe_dump(cfg))
    return {"report": Path(student_data), "tune": tune_yaml, "teacher": teacher}


def run_overrides(
    cfg: dict[str, Any],
    method: str,
    seed: int,
    epochs: int,
    student: str | Path,
    data: str | Path,
    teacher: str | Path,
    project: Path,
) -> dict[str, Any]:
    """The trainer overrides of one (method, seed) run of a track: the same for every method but the method's keys.

    Args:
        cfg (dict): The track's settings (`TRACKS[track]`: imgsz, batch, optimizer, lr0, optional mosaic).
        method (str): The grid row (a METHODS key); its keys are added last.
        seed (int): The run's seed.
        epochs (int): Epochs.
        student (str | Path): Student model (yaml or .pt).
        data (str | Path): Data yaml.
        teacher (str | Path): Teacher checkpoint.
        project (Path): Folder of the run folders (`<method>-s<seed>`).

    Returns:
        (dict): Overrides for `DS2D2Trainer`, on the CPU; callers on another device replace `device`.
    """
    return dict(
        model=str(student),
        data=str(data),
        teacher=str(teacher),
        epochs=epochs,
        imgsz=cfg["imgsz"],
        batch=cfg["batch"],
        optimizer=cfg["optimizer"],
        lr0=cfg["lr0"],
        seed=seed,
        deterministic=True,
        workers=2,
        device="cpu",
        plots=False,
        val=False,
        project=str(project),
        name=f"{method}-s{seed}",
        exist_ok=True,
        verbose=False,
        mosaic=cfg.get("mosaic", 1.0),
        **METHODS[method],
    )


def run_benchmark(
    track: str = "synthetic",
    out: str | Path = "runs/ds2d2-benchmark",
    seeds: int | list[int] = 3,
    epochs: int | None = None,
    methods: str | list[str] | None = None,
    split: str = "report",
    extra: dict[str, Any] | None = None,
    tag: str = "",
    against: str | Sequence[str] = (),
    val_every: int = 0,
    student: str | Path | None = None,
    config: str = "",
) -> Path:
    """Run the grid (skipping runs results.jsonl already holds with the same settings), then write the table and plot.

    Args:
        track (str): "dota" (real DOTA-mini, needs ../shared/data) or "synthetic".
        out (str | Path): Output folder.
        seeds (int | list[int]): Seeds per method: a count (0..seeds-1) or the seeds themselves.
        epochs (int | None): Epochs per run (default per track).
        methods (str | list | None): Comma-separated subset of METHODS (default all).
        split (str): "report" (held-out images), or "tune" or "fold" (for choosing defaults).
        extra (dict | None): Extra overrides for every run (e.g. DS2D2 weights while tuning).
        tag (str): Suffix of the results folder, so each tuning configuration keeps its own records.
        against (str | Sequence[str]): Comma-separated rows (e.g. `ds2d2`) to pair every other row with, seed by
            seed, besides `none`; each must be a method of this grid or a row results.jsonl already holds.
        val_every (int): Validate every N epochs and on each of the last 5 (0: the final epoch only).
        student (str | Path | None): Student model (default: yolov8-obb at depth 0.33 and the track's width).
        config (str): Tag stored in every new record (`row_label` shows it), naming the settings given in `extra`.

    Returns:
        (Path): The markdown table file.
    """
    if track not in TRACKS:
        raise ValueError(f"track '{track}' is unknown; choose one of {', '.join(TRACKS)}")
    if track != "dota" and split == "fold":
        raise ValueError(f"split 'fold' exists on the real track only; use split='tune' on the {track} track")
    names = method_names(methods)
    bad = [m for m in names if m not in METHODS]
    if bad:
        raise ValueError(f"method '{bad[0]}' is unknown; choose from {', '.join(METHODS)}")
    # Each method's resolved settings, for the resume check; a bad DS2D2 key or value in `extra` fails here, before any
    # data or teacher work. The per-run overrides add only paths and Ultralytics keys, so these are the runs' settings.
    planned = {n: record_args(check_args(split_overrides({**METHODS[n], **(extra or {})})[1])) for n in names}
    cfg = TRACKS[track]
    epochs = int(epochs or cfg["epochs"])
    out = results_folder(out, track, split, tag)
    refs = check_against(out, names, against)  # before any data, teacher or training work
    results = out / "results.jsonl"
    out.mkdir(parents=True, exist_ok=True)
    if track == "dota":
        data = prepare_dota_mini(out.parent)
        teacher = shared_data().parent / "weights" / "yolov8n-obb-dota.pt"
        nc = 15
    else:
        data = prepare_synthetic(out.parent, cfg["imgsz"])
        teacher = data["teacher"]
        nc = 3
    if student is None:
        student = scaled_model_yaml("yolov8-obb.yaml", 0.33, cfg["width"], nc=nc, out=out / "student-obb.yaml")
    tfile = out / "teacher.json"
    if not tfile.exists():
        tfile.write_text(json.dumps(teacher_map(teacher, data[split], cfg["imgsz"], out / "runs")))
    records = read_results(results)
    # Seed-major order: a partial grid still compares every method on the same seeds.
    for seed in range(seeds) if isinstance(seeds, int) else seeds:
        for name in names:
            if any(is_done(r, name, seed, epochs, planned[name]) for r in records):
                continue
            overrides = run_overrides(cfg, name, seed, epochs, student, data[split], teacher, out / "runs")
            overrides.update(extra or {})  # the caller's keys override the track's (e.g. device=0 on a GPU)
            spec = {"method": name, "seed": seed, "overrides": overrides, "val_every": val_every}
            print(f"[benchmark] {track}/{split} {name} seed {seed} ({epochs} epochs)", flush=True)
            log = out / "runs" / f"{name}-s{seed}.log"
            record = train_run(spec, log)
            if record is None:
                print(f"[benchmark] {name} seed {seed} failed; see {log}")
                continue
            if config:
                record["config"] = config
            with open(results, "a") as f:
                f.write(json.dumps(record) + "\n")
    done = {row_label(r) for r in read_results(results)}
    for a in (a for a in refs if a not in done):
        print(f"[benchmark] against='{a}' has no finished runs (see the logs in {out / 'runs'}); its table is left out")
    return write_report(out, track, split, against=[a for a in refs if a in done])


def results_folder(out: str | Path, track: str, split: str, tag: str = "") -> Path:
    """The folder under `out` that holds one benchmark's records, table and runs: `<track>-<split>[-<tag>]`."""
    return Path(out).resolve() / (f"{track}-{split}-{tag}" if tag else f"{track}-{split}")


def check_against(folder: Path, names: Sequence[str], against: str | Sequence[str]) -> list[str]:
    """The rows to pair with (`against`, comma-separated), each a method of this grid or a row `folder` already holds.

    Raises:
        ValueError: On a row that neither this grid nor the folder's records have, naming the rows there are.
    """
    refs = [a for a in (against.split(",") if isinstance(against, str) else against) if a]
    known = {*names, *(row_label(r) for r in read_results(folder / "results.jsonl"))}
    unknown = [a for a in refs if a not in known]
    if unknown:
        raise ValueError(
            f"against='{unknown[0]}' is not a row of this benchmark; choose from {', '.join(sorted(known))}"
        )
    return refs


def write_report(out: Path, track: str, split: str, against: Sequence[str] = ()) -> Path:
    """Rebuild a track folder's `table.md` and `plot.png` from its results.jsonl (`compare.write_table`).

    Args:
        out (Path): Folder holding results.jsonl (and teacher.json); the table and plot are written there.
        track (str): Track name, for the table's heading.
        split (str): Split name, for the table's heading.
        against (Sequence[str]): Row labels (e.g. `ds2d2 (x1)`) to pair every other row with, seed by seed, in a
            table of their own after the one against `none`.

    Returns:
        (Path): The written `table.md`.
    """
    return write_table(out, f"Track `{track}`, split `{split}`", against, f"{track} / {split}", logs=out / "runs")


def main(argv: list[str] | None = None) -> None:
    """Run one track's grid on one split (or only rebuild its table) and print the table."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--track", default="synthetic", choices=list(TRACKS))
    ap.add_argument("--split", default="report", choices=list(VAL_SPLITS))
    ap.add_argument("--out", default="runs/ds2d2-benchmark", help="parent of the <track>-<split>[-<tag>] folder")
    ap.add_argument("--seeds", default="3", help="a count (3: seeds 0, 1, 2) or comma-separated seeds (3,4)")
    ap.add_argument("--epochs", type=int, default=None, help="epochs per run (default per track)")
    ap.add_argument("--methods", default=None, help=f"comma-separated rows (default all: {','.join(METHODS)})")
    ap.add_argument("--tag", default="", help="suffix of the results folder")
    ap.add_argument("--against", default="", help="comma-separated rows to pair every other row with, besides none")
    ap.add_argument("--report", action="store_true", help="only rebuild table.md and plot.png, train nothing")
    a = ap.parse_args(argv)
    if a.report:
        folder = results_folder(a.out, a.track, a.split, a.tag)
        write_report(folder, a.track, a.split, [x for x in a.against.split(",") if x])
        return
    seeds = int(a.seeds) if a.seeds.isdigit() else [int(s) for s in a.seeds.split(",") if s]
    run_benchmark(a.track, a.out, seeds, a.epochs, a.methods, a.split, tag=a.tag, against=a.against)


if __name__ == "__main__":
    main()
