"""Side-by-side benchmark of distillation methods: a real DOTA-mini track and a fast synthetic track.

Protocol (docs/results.md): the same student, epochs, image size, augmentation and seeds for every method; whole
source images held out for reporting and a separate tuning split; mAP50, mAP50-95, gap closure
(method - none) / (teacher - none), seconds per training step and peak RSS, mean and spread over seeds.

Every run is a separate process (so peak RSS is its own) and is appended to `results.jsonl` as soon as it ends, so a
long grid can be interrupted and continued; the table and plot are rebuilt from whatever runs exist.
"""

from __future__ import annotations

import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ds2d2_yolo.config import check_args, split_overrides
from ds2d2_yolo.methods import distill_methods

# Grid rows: every method with its defaults (in the table's order), then DS2D2's ablations.
METHODS: dict[str, dict[str, Any]] = {
    **{m: {"distill": m} for m in ("none", "native", "cwd", "mgd", "ds2d2", "pseudo") if m in distill_methods()},
    "ds2d2-explicit": {"distill": "ds2d2", "implicit_full": False, "implicit_high": False},
    "ds2d2-implicit": {"distill": "ds2d2", "explicit": False},
    "ds2d2-nodisw": {"distill": "ds2d2", "disw": "none"},
    "ds2d2-db2": {"distill": "ds2d2", "wavelet": "db2"},
}

# Real track (../shared/data): whole images per split, never mixed. The report split holds dense scenes with
# hundreds of objects (P0706 ships, P0005 and P1888 vehicles); tuning uses P0004 (vehicles) and dota8's val tiles.
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
    from ultralytics.utils.patches import imread

    from ds2d2_yolo.tools.dataprep import DOTA_V1_CLASSES

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
        (dict[str, Path]): Data yamls for "report" (train + report val) and "tune" (train + tune val).
    """
    from ds2d2_yolo.tools.dataprep import DOTA_V1_CLASSES, tile_dota, write_data_yaml

    if not shared_data().is_dir():
        raise FileNotFoundError(f"real track needs the DOTA samples in {shared_data()} (set DS2D2_SHARED_DATA)")
    ds = out / "dota-mini"
    done = ds / ".done"
    if not done.exists():
        for split, items in REAL_SPLITS.items():
            stage = _stage_split(items, out / "stage" / split)
            # Background tiles are kept only for validation: in training they add steps, not objects.
            tile_dota(stage, ds, tile=tile, gap=gap, split=split, suffix=".png", background=split != "train")
        done.touch()
    names = [n.replace("-", " ") for n in DOTA_V1_CLASSES]  # the teachers' spelling
    return {s: write_data_yaml(out / f"{s}.yaml", ds, "images/train", f"images/{s}", names) for s in ("report", "tune")}


def prepare_synthetic(out: Path, imgsz: int = 128, seed: int = 0) -> dict[str, Any]:
    """Generate the synthetic track and train (or reuse) its teacher.

    Returns:
        (dict): "report"/"tune" data yamls (student train split + val split) and the "teacher" checkpoint path.
    """
    from ultralytics import YOLO

    from ds2d2_yolo.tools.models import scaled_model_yaml
    from ds2d2_yolo.tools.synthetic import make_dataset

    def dataset(root: Path, **kw: Any) -> Path:
        # Regenerating replaces the files in place, which would pull them from under a concurrent run of the grid.
        mark = root / ".generated.json"
        if mark.exists() and json.loads(mark.read_text()) == kw and (root / "data.yaml").exists():
            return root / "data.yaml"
        path = make_dataset(root, **kw)
        mark.write_text(json.dumps(kw))
        return path

    out = out / "synthetic"
    teacher = out / "teacher" / "weights" / "best.pt"
    student_data = dataset(out / "student", n_train=64, n_val=200, imgsz=imgsz, seed=seed + 1)
    tune = dataset(out / "tune", n_train=64, n_val=100, imgsz=imgsz, seed=seed + 2)
    if not teacher.exists():
        big = dataset(out / "teacher-data", n_train=400, n_val=50, imgsz=imgsz, seed=seed + 3)
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
    import yaml

    cfg = yaml.safe_load(Path(student_data).read_text())
    tcfg = yaml.safe_load(Path(tune).read_text())
    cfg["val"] = str(Path(tcfg["path"]) / tcfg["val"])
    tune_yaml.write_text(yaml.safe_dump(cfg))
    return {"report": Path(student_data), "tune": tune_yaml, "teacher": teacher}


def _run_one(spec: dict[str, Any]) -> dict[str, Any]:
    """Train one (method, seed) in this process and return its measurements (child side)."""
    import torch

    from ds2d2_yolo.integration.trainer import DS2D2Trainer

    commit = git_commit()  # at the start: the checkout may move on while a long run trains
    steps: list[float] = []
    t0 = [0.0]
    trainer = DS2D2Trainer(overrides=spec["overrides"])

    def start(_):
        t0[0] = time.perf_counter()

    def end(_):
        steps.append(time.perf_counter() - t0[0])

    trainer.add_callback("on_train_batch_start", start)
    trainer.add_callback("on_train_batch_end", end)
    every, epochs = int(spec.get("val_every", 0)), int(spec["overrides"]["epochs"])
    # Validate every `every` epochs for the curve, and on each of the last 5 for the plateau mean; results.csv repeats
    # the last metrics on the other epochs, so only these rows are read back.
    validated = {e for e in range(1, epochs + 1) if every and (e % every == 0 or e > epochs - 5)} | {epochs}
    if every:

        def schedule(tr):
            tr.args.val = tr.epoch + 1 in validated

        trainer.add_callback("on_train_epoch_end", schedule)
    t = time.perf_counter()
    trainer.train()
    m = trainer.metrics
    warm = steps[min(len(steps) - 1, 3) :]  # the first steps include lazy initialisation
    curve = [c for c in validation_curve(Path(trainer.save_dir) / "results.csv") if c["epoch"] in validated]
    last5 = [c for c in curve if c["epoch"] > epochs - 5] if every else []
    return {
        "method": spec["method"],
        "seed": spec["seed"],
        "mAP50": float(m.get("metrics/mAP50(B)", float("nan"))),
        "mAP50-95": float(m.get("metrics/mAP50-95(B)", float("nan"))),
        "s_per_step": statistics.median(warm) if warm else float("nan"),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "train_s": time.perf_counter() - t,
        "epochs": spec["overrides"]["epochs"],
        "threads": torch.get_num_threads(),  # timings depend on it, and so can float summation order
        # The resolved method settings (cfg/ds2d2.yaml under the overrides), so a record still says what it ran
        # after the shipped defaults change.
        "args": record_args(trainer.ds2d2),
        "nbs": int(trainer.args.nbs),
        "batch": int(trainer.args.batch),
        "optimizer_updates": optimizer_updates(trainer),
        "mAP50_last5": statistics.fmean(c["mAP50"] for c in last5) if last5 else float("nan"),
        "mAP50-95_last5": statistics.fmean(c["mAP50-95"] for c in last5) if last5 else float("nan"),
        "curve": curve,
        "commit": commit,
        "settings": {k: v for k, v in spec["overrides"].items() if k not in ("model", "data", "teacher", "project")},
    }


def optimizer_updates(trainer: Any) -> int:
    """Optimizer steps the run took: Ultralytics accumulates gradients to `nbs` images before each step."""
    accumulate = max(round(trainer.args.nbs / trainer.batch_size), 1)
    return int(trainer.epochs * math.ceil(len(trainer.train_loader) / accumulate))


def validation_curve(csv: Path) -> list[dict[str, float]]:
    """The epochs Ultralytics validated (results.csv rows with a metric), as epoch, mAP50, mAP50-95."""
    import csv as _csv

    if not csv.exists():
        return []
    out = []
    with open(csv, newline="") as f:
        for row in _csv.DictReader(f):
            row = {k.strip(): v.strip() for k, v in row.items() if k}
            m50, m95 = row.get("metrics/mAP50(B)"), row.get("metrics/mAP50-95(B)")
            try:
                out.append({"epoch": int(float(row["epoch"])), "mAP50": float(m50), "mAP50-95": float(m95)})
            except (KeyError, TypeError, ValueError):
                continue
    return out


def git_commit() -> str:
    """The commit this code runs from, with `+dirty` when tracked files differ from it ("unknown" outside git)."""
    root = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.check_output(["git", "rev-parse", "HEAD"], cwd=root, text=True, stderr=subprocess.DEVNULL)
        dirty = subprocess.check_output(["git", "status", "--porcelain", "-uno"], cwd=root, text=True)
        return head.strip() + ("+dirty" if dirty.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


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


def record_args(ds2d2: dict[str, Any]) -> dict[str, Any]:
    """The resolved DS2D2 settings a run record keeps: everything but the machine paths."""
    return {k: v for k, v in ds2d2.items() if k not in ("teacher", "amplifier")}


def _method_args(args: dict[str, Any]) -> dict[str, Any]:
    """The settings that change what a method trains (a `none` run does not depend on DS2D2's weights)."""
    d = args["distill"]
    if d in ("none", "native"):
        return {"distill": d}
    if d in ("cwd", "mgd"):
        return {k: v for k, v in args.items() if k == "distill" or k.startswith(f"{d}_")}
    return {k: v for k, v in args.items() if not k.startswith(("cwd_", "mgd_"))}


def is_done(record: dict[str, Any], method: str, seed: int, epochs: int, args: dict[str, Any]) -> bool:
    """Whether a results.jsonl record is the planned run, so that run can be skipped.

    Args:
        record (dict): One finished run's record.
        method (str): Planned benchmark method (a METHODS key, e.g. "ds2d2-db2").
        seed (int): Planned seed.
        epochs (int): Planned epochs.
        args (dict): Planned resolved DS2D2 settings, as `record_args` gives them.

    Returns:
        (bool): True when method, seed and epochs match and the settings that matter to the method do too.
    """
    if (record["method"], record["seed"], record["epochs"]) != (method, seed, epochs):
        return False
    if "args" in record:
        return _method_args(record["args"]) == _method_args(args)
    # Records from before `args` existed: an untagged one ran the defaults of its folder, but one tagged with a
    # config came from a merged sweep and cannot say which of its configurations this run would repeat.
    return "config" not in record


def teacher_map(teacher: Path, data: Path, imgsz: int, project: Path) -> dict[str, float]:
    """Validate the teacher on the same split and image size the students are reported on."""
    from ultralytics import YOLO

    r = YOLO(str(teacher)).val(
        data=str(data), imgsz=imgsz, batch=16, plots=False, device="cpu", verbose=False, project=str(project)
    )
    return {"mAP50": float(r.box.map50), "mAP50-95": float(r.box.map)}


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
        split (str): "report" (held-out images) or "tune" (for choosing defaults).
        extra (dict | None): Extra overrides for every run (e.g. DS2D2 weights while tuning).
        tag (str): Suffix of the results folder, so each tuning configuration keeps its own records.
        against (str | Sequence[str]): Comma-separated rows (e.g. `ds2d2`) to pair every other row with, seed by
            seed, besides `none`; each must be a method of this grid or a row results.jsonl already holds.

    Returns:
        (Path): The markdown table file.
    """
    if track not in TRACKS:
        raise ValueError(f"track '{track}' is unknown; choose one of {', '.join(TRACKS)}")
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
    from ds2d2_yolo.tools.models import scaled_model_yaml

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
            proc = subprocess.run(
                [sys.executable, "-m", "ds2d2_yolo.benchmark", json.dumps(spec)], capture_output=True, text=True
            )
            (out / "runs").mkdir(exist_ok=True)
            (out / "runs" / f"{name}-s{seed}.log").write_text(proc.stdout[-20000:] + proc.stderr[-20000:])
            lines = [x for x in proc.stdout.splitlines() if x.startswith("{")]
            if proc.returncode or not lines:
                print(f"[benchmark] {name} seed {seed} failed; see {out / 'runs' / f'{name}-s{seed}.log'}")
                continue
            record = json.loads(lines[-1])
            if config:
                record["config"] = config
            with open(results, "a") as f:
                f.write(json.dumps(record) + "\n")
    done = {row_label(r) for r in read_results(results)}
    for a in (a for a in refs if a not in done):
        print(f"[benchmark] against='{a}' has no finished runs (see the logs in {out / 'runs'}); its table is left out")
    return write_report(out, track, split, against=[a for a in refs if a in done])


def method_names(methods: str | Sequence[str] | None) -> list[str]:
    """The methods a grid runs: a comma-separated string or a list as given; every method for None or an empty list."""
    return methods.split(",") if isinstance(methods, str) else list(methods or METHODS)


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


def read_results(path: Path) -> list[dict[str, Any]]:
    """The run records of a results.jsonl file, in the order they finished (none when it does not exist)."""
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.exists() else []


def _stats(v: list[float]) -> tuple[float, float]:
    """Mean and sample std of the finite values; the std is NaN below two values (one seed has no spread)."""
    v = [x for x in v if not math.isnan(x)]
    if not v:
        return float("nan"), float("nan")
    return statistics.fmean(v), (statistics.stdev(v) if len(v) > 1 else float("nan"))


def _pm(mean: float, std: float, signed: bool = False) -> str:
    """Mean ± std, or the mean alone where there is no spread to show (a single seed); `signed` prints the sign."""
    m = f"{mean:+.3f}" if signed else f"{mean:.3f}"
    return f"{m} ± {std:.3f}" if math.isfinite(std) else m


def row_label(record: dict[str, Any]) -> str:
    """A record's table row: its method, plus its `config` tag where one marks a variant (e.g. `ds2d2 (x3)`)."""
    return f"{record['method']} ({record['config']})" if record.get("config") else record["method"]


def write_report(out: Path, track: str, split: str, against: Sequence[str] = ()) -> Path:
    """Rebuild `table.md` and `plot.png` from results.jsonl: mean ± std over seeds per method (and config tag).

    Args:
        out (Path): Folder holding results.jsonl (and teacher.json); the table and plot are written there.
        track (str): Track name, for the table's heading.
        split (str): Split name, for the table's heading.
        against (Sequence[str]): Row labels (e.g. `ds2d2 (x1)`) to pair every other row with, seed by seed, in a
            table of their own after the one against `none`: the comparison a default is chosen by.

    Returns:
        (Path): The written `table.md`.
    """
    rows = read_results(out / "results.jsonl")
    table = out / "table.md"
    if not rows:  # every run failed, or none has finished: say so rather than print an empty table
        msg = f"No finished runs in {out / 'results.jsonl'} yet; a failed run leaves its log in {out / 'runs'}."
        table.write_text(f"{msg}\n")
        print(msg)
        return table
    teacher = json.loads((out / "teacher.json").read_text()) if (out / "teacher.json").exists() else {}
    by: dict[str, list[dict]] = {}
    for r in rows:
        by.setdefault(row_label(r), []).append(r)
    missing = [a for a in against if a not in by]
    if missing:
        raise ValueError(
            f"against='{missing[0]}' has no runs in {out / 'results.jsonl'}; choose from {', '.join(sorted(by))}"
        )
    none50 = _stats([r["mAP50"] for r in by.get("none", [])])[0]
    lines = [
        f"Track `{track}`, split `{split}`; teacher mAP50 {teacher.get('mAP50', float('nan')):.3f}, "
        f"mAP50-95 {teacher.get('mAP50-95', float('nan')):.3f}.",
        "",
        "| method | seeds | mAP50 | mAP50-95 | gap closure (mAP50) | s/step | peak RSS (MB) |",
        "|---|---|---|---|---|---|---|",
    ]
    rank = {m: i for i, m in enumerate(METHODS)}
    order = sorted(by, key=lambda k: (rank.get(by[k][0]["method"], len(rank)), k))
    for m in order:
        rs = sorted(by[m], key=lambda r: r["seed"])
        a50, s50 = _stats([r["mAP50"] for r in rs])
        a95, s95 = _stats([r["mAP50-95"] for r in rs])
        sp, ss = _stats([r["s_per_step"] for r in rs])
        mem, _ = _stats([r["peak_rss_mb"] for r in rs])
        span = teacher.get("mAP50", float("nan")) - none50
        gap = (a50 - none50) / span if m != "none" and math.isfinite(span) and span != 0 else None  # else undefined
        lines.append(
            f"| {m} | {','.join(str(r['seed']) for r in rs)} | {_pm(a50, s50)} | {_pm(a95, s95)} | "
            f"{'—' if gap is None else f'{100 * gap:.1f} %'} | {_pm(sp, ss)} | {mem:.0f} |"
        )
    lines += [
        "",
        "± is the standard deviation over seeds (none shown for a single seed); gap closure = (method − none) / "
        "(teacher − none) on mAP50.",
        "",
        *_per_seed_lines(by, order, against),
    ]
    table.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    _plot(by, order, teacher, out / "plot.png", f"{track} / {split}")
    return table


def _per_seed_lines(by: dict[str, list[dict]], order: list[str], against: Sequence[str] = ()) -> list[str]:
    """Per-seed mAP table, then each method's difference to `none` (and to each row in `against`) paired by seed.

    Pairing by seed removes the part of the spread that every method shares on a seed (the same initial student,
    the same augmentation draws), so it resolves smaller differences than comparing means does.
    """
    seeds = sorted({r["seed"] for m in order for r in by[m]})
    val = {m: {r["seed"]: r for r in by[m]} for m in order}
    lines = [
        "Per seed, mAP50 (mAP50-95):",
        "",
        f"| seed | {' | '.join(order)} |",
        f"|---|{'---|' * len(order)}",
    ]
    for s in seeds:
        cells = [f"{val[m][s]['mAP50']:.3f} ({val[m][s]['mAP50-95']:.3f})" if s in val[m] else "—" for m in order]
        lines.append(f"| {s} | {' | '.join(cells)} |")
    for ref in dict.fromkeys(["none", *against]):
        if ref in val:
            lines += _paired_lines(val, order, seeds, ref)
    return lines


def _paired_lines(val: dict[str, dict[int, dict]], order: list[str], seeds: list[int], ref: str) -> list[str]:
    """Every other row's mAP difference to row `ref` over the seeds both ran: mean ± std, and seeds ahead."""
    lines = [
        "",
        f"Difference to `{ref}` on the same seeds (mean ± std of the per-seed differences):",
        "",
        f"| method | paired seeds | mAP50 − {ref} | mAP50-95 − {ref} | seeds ahead of {ref} (mAP50) |",
        "|---|---|---|---|---|",
    ]
    base = val[ref]
    for m in (m for m in order if m != ref):
        common = [
            s for s in seeds if s in val[m] and s in base and math.isfinite(val[m][s]["mAP50"] - base[s]["mAP50"])
        ]
        d50, d95 = ([val[m][s][k] - base[s][k] for s in common] for k in ("mAP50", "mAP50-95"))
        if d50:
            lines.append(
                f"| {m} | {','.join(map(str, common))} | {_pm(*_stats(d50), signed=True)} | "
                f"{_pm(*_stats(d95), signed=True)} | {sum(x > 0 for x in d50)}/{len(d50)} |"
            )
    return lines


def _plot(by: dict, order: list[str], teacher: dict, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(order)), 4))
    x = range(len(order))
    for k, (key, off) in enumerate((("mAP50", -0.2), ("mAP50-95", 0.2))):
        means = [_stats([r[key] for r in by[m]])[0] for m in order]
        stds = [_stats([r[key] for r in by[m]])[1] for m in order]
        stds = [s if math.isfinite(s) else 0.0 for s in stds]
        ax.bar([i + off for i in x], means, 0.4, yerr=stds, capsize=3, label=key, color=f"C{k}")
        if teacher:
            ax.axhline(teacher[key], color=f"C{k}", ls="--", lw=1, label=f"teacher {key}")
    ax.set_xticks(list(x), order, rotation=30, ha="right")
    ax.set_ylabel("mAP")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    print(json.dumps(_run_one(json.loads(sys.argv[1]))), flush=True)
