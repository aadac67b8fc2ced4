"""Offline end-to-end demo: generated aerial scenes, a tiny teacher, then one student with DS2D2 and one without.

`ds2d2-yolo demo` (or `run_demo()`) runs the whole pipeline on a CPU in minutes and downloads nothing:

1. generate a synthetic OBB dataset (`ds2d2_yolo.tools.synthetic`): a large training split for the teacher, a small
   one for the student (the teacher has seen far more scenes than the student will), and a shared validation split;
2. train a tiny YOLOv8-OBB teacher with plain Ultralytics, or reuse `out/teacher/weights/best.pt`;
3. train a smaller student twice from scratch with identical settings and seed: `distill=ds2d2` (at the
   package's defaults) and `distill=none`;
4. print and write a markdown table (`out/demo.md`) and a plot (`out/demo.png`).

One short run on one seed shows that the pipeline works end to end; it is not evidence that one method beats
another. `ds2d2-yolo compare` runs the controlled comparison on your own data (several seeds, paired by seed), and
docs/results.md reports the research tracks' results on held-out data.

Examples:
    >>> from ds2d2_yolo.tools.demo import run_demo
    >>> results = run_demo("runs/ds2d2-demo")
    >>> results["ds2d2"]["mAP50"], results["none"]["mAP50"]
"""

from __future__ import annotations

import csv
import json
import math
import time
from pathlib import Path
from typing import Any

import matplotlib
import matplotlib.pyplot as plt
import yaml
from ultralytics import YOLO

from ds2d2_yolo.integration.trainer import DS2D2Trainer
from ds2d2_yolo.methods import REGISTRY
from ds2d2_yolo.tools.models import scaled_model_yaml
from ds2d2_yolo.tools.synthetic import make_dataset

DISCLAIMER = (
    "A short run on one seed demonstrates the pipeline; it is not evidence that one method beats another. "
    "See `ds2d2-yolo compare` for the controlled comparison (several seeds, paired by seed) and docs/results.md "
    "for the measured results (held-out data)."
)
LOSS_COLUMNS = REGISTRY["ds2d2"].loss_names
METHODS = ("none", "ds2d2")
# Shared by the teacher and both students. With a few hundred optimizer steps from scratch at 128 px, mosaic delays
# learning until it is switched off (a width-0.125 student scored 0.08 mAP50 with it, 0.22 without, in 240 steps), and
# AdamW at 0.005 learns faster than at 0.002 (0.30 vs 0.22) on this budget.
TRAIN_SETTINGS = {"optimizer": "AdamW", "lr0": 0.005, "mosaic": 0.0}
TEACHER_BATCH = 16
# The students also take an optimizer step every batch (nbs = batch): at Ultralytics' nbs=64, 64 images at batch 8 give
# one step an epoch after warm-up, and the none student reached 0.355 mAP50 where it reaches 0.521 this way (seed 0).
# The DS2D2 weights are set from measured gradient ratios (balance=grad): the shipped weights fit the DOTA teacher's
# features, and on this tiny teacher's the explicit low band alone outweighed the detection loss (ex_low 3-13 against
# about 7), which left the ds2d2 student at 0.488 (0.108 at nbs=64) where balance=grad gives 0.524.
STUDENT_SETTINGS = {"ds2d2": {"balance": "grad"}}


def _log(msg: str) -> None:
    """Print a demo step so it stands out between Ultralytics' training logs."""
    print(f"\n[ds2d2 demo] {msg}", flush=True)


def make_demo_data(root: Path, imgsz: int, n_teacher: int, n_train: int, n_val: int, seed: int) -> dict[str, Path]:
    """Generate the demo's splits and return data yamls for the teacher and the students (same validation split).

    Args:
        root (Path): Folder for the generated datasets.
        imgsz (int): Image side in pixels.
        n_teacher (int): Training images for the teacher.
        n_train (int): Training images for the students (different scenes from the teacher's).
        n_val (int): Shared validation images.
        seed (int): Base seed; the teacher's scenes use another stream, so no student image is a teacher image.

    Returns:
        (dict[str, Path]): "teacher" and "student" data yamls.
    """
    student = make_dataset(root / "student", n_train=n_train, n_val=n_val, imgsz=imgsz, task="obb", seed=seed)
    teacher_set = make_dataset(root / "teacher", n_train=n_teacher, n_val=0, imgsz=imgsz, task="obb", seed=seed + 1000)
    cfg = yaml.safe_load(student.read_text(encoding="utf-8"))
    # The teacher is validated on the students' split, so the table compares all three on the same scenes.
    cfg["path"] = str(root.resolve())
    cfg["train"] = str(Path(yaml.safe_load(teacher_set.read_text(encoding="utf-8"))["path"]) / "images" / "train")
    cfg["val"] = str(Path(cfg["val"]) if Path(cfg["val"]).is_absolute() else student.parent / cfg["val"])
    teacher_yaml = root / "teacher.yaml"
    teacher_yaml.write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")
    return {"teacher": teacher_yaml, "student": student}


def _box_metrics(metrics: Any) -> dict[str, float]:
    """mAP50 and mAP50-95 from an Ultralytics metrics dict or a `*Metrics` object."""
    if hasattr(metrics, "box"):
        return {"mAP50": float(metrics.box.map50), "mAP50-95": float(metrics.box.map)}
    metrics = dict(metrics or {})
    return {
        "mAP50": float(metrics.get("metrics/mAP50(B)", math.nan)),
        "mAP50-95": float(metrics.get("metrics/mAP50-95(B)", math.nan)),
    }


def train_teacher(
    data: Path, out: Path, imgsz: int, epochs: int, seed: int, width: float, val_data: Path
) -> dict[str, Any]:
    """Train the demo teacher with plain Ultralytics, or reuse `out/teacher/weights/best.pt` when it exists.

    Args:
        data (Path): Teacher data yaml.
        out (Path): Demo output folder; the run goes to `out/teacher`.
        imgsz (int): Image size.
        epochs (int): Training epochs.
        seed (int): Training seed.
        width (float): Width multiple of the teacher (depth 0.33).
        val_data (Path): Data yaml whose validation split the teacher is scored on (the students' split).

    Returns:
        (dict): "weights" (Path), "mAP50", "mAP50-95", "train_s" (NaN when reused without a record) and "reused".
    """
    weights = out / "teacher" / "weights" / "best.pt"
    record = out / "teacher" / "demo_teacher.json"
    if weights.is_file():
        _log(f"reusing the teacher {weights} (delete it to train a new one)")
        train_s = json.loads(record.read_text())["train_s"] if record.is_file() else math.nan
    else:
        _log(f"training the teacher (YOLOv8-OBB, width {width}) for {epochs} epochs")
        (out / "models").mkdir(parents=True, exist_ok=True)
        cfg = scaled_model_yaml("yolov8-obb.yaml", depth=0.33, width=width, nc=3, out=out / "models")
        t0 = time.perf_counter()
        yolo = YOLO(str(cfg))
        yolo.train(
            data=str(data),
            epochs=epochs,
            imgsz=imgsz,
            batch=TEACHER_BATCH,
            workers=0,
            device="cpu",
            seed=seed,
            deterministic=True,
            **TRAIN_SETTINGS,
            val=False,  # only the final epoch is validated: the teacher needs no model selection here
            plots=False,  # Ultralytics' plots fetch a font from the internet
            amp=False,
            project=str(out),
            name="teacher",
            exist_ok=True,
            verbose=False,
        )
        train_s = time.perf_counter() - t0
        record.write_text(json.dumps({"train_s": train_s}))
        # Its final validation already ran on the students' split (teacher.yaml points there) at the same size.
        return {"weights": weights, **_box_metrics(yolo.trainer.metrics), "train_s": train_s, "reused": False}
    # A reused teacher is scored again: the split may have been regenerated with other settings since.
    metrics = YOLO(str(weights)).val(
        data=str(val_data), imgsz=imgsz, batch=TEACHER_BATCH, workers=0, device="cpu", plots=False, verbose=False
    )
    return {"weights": weights, **_box_metrics(metrics), "train_s": float(train_s), "reused": True}


def train_student(method: str, overrides: dict[str, Any]) -> dict[str, Any]:
    """Train one student with `DS2D2Trainer` and return its final metrics, wall time and per-epoch losses.

    Args:
        method (str): Value of `distill` ("ds2d2" or "none").
        overrides (dict): Every other trainer key (shared by both methods).

    Returns:
        (dict): "mAP50", "mAP50-95", "train_s", "save_dir" (Path) and "epochs" (list of results.csv rows).
    """
    _log(f"training the student with distill={method} for {overrides['epochs']} epochs")
    trainer = DS2D2Trainer(overrides={**overrides, "distill": method, "name": method})
    t0 = time.perf_counter()
    trainer.train()
    train_s = time.perf_counter() - t0
    return {
        **_box_metrics(trainer.metrics),
        "train_s": train_s,
        "save_dir": Path(trainer.save_dir),
        "epochs": read_results(Path(trainer.save_dir) / "results.csv"),
    }


def read_results(path: Path) -> list[dict[str, float]]:
    """Read an Ultralytics results.csv into one dict per epoch, keys stripped, values as floats."""
    if not path.is_file():
        return []
    with open(path, encoding="utf-8") as f:
        return [{k.strip(): float(v) for k, v in row.items() if k and v not in (None, "")} for row in csv.DictReader(f)]


def format_table(results: dict[str, dict[str, Any]], settings: str) -> str:
    """Return the demo's markdown table (mAP50, mAP50-95, training time per model) with its caption and caveat.

    Args:
        results (dict): Per model ("teacher", "none", "ds2d2"): "mAP50", "mAP50-95", "train_s", optional "reused".
        settings (str): One line describing data, models and budget.

    Returns:
        (str): Markdown text.
    """
    labels = {"teacher": "teacher", "none": "student, distill=none", "ds2d2": "student, distill=ds2d2"}
    lines = [
        "| model | mAP50 | mAP50-95 | train time (s) |",
        "|---|---|---|---|",
    ]
    for key, r in results.items():
        t = r["train_s"]
        if not math.isfinite(t):
            time_s = "reused"
        else:
            time_s = f"{t:.0f}" + (" (earlier run, reused)" if r.get("reused") else "")
        lines.append(f"| {labels.get(key, key)} | {r['mAP50']:.3f} | {r['mAP50-95']:.3f} | {time_s} |")
    return "\n".join(
        [
            "# DS2D2 demo",
            "",
            settings,
            "",
            *lines,
            "",
            "All models are scored on the same validation split.",
            "",
            f"**{DISCLAIMER}**",
            "",
        ]
    )


def plot_demo(results: dict[str, dict[str, Any]], ds2d2_epochs: list[dict[str, float]], path: Path) -> Path:
    """Plot mAP per model (left) and the per-epoch DS2D2 loss terms of the distilled student (right).

    Args:
        results (dict): Per model: "mAP50" and "mAP50-95".
        ds2d2_epochs (list[dict]): results.csv rows of the ds2d2 run (columns `train/ex_low`, ... when logged).
        path (Path): Output PNG.

    Returns:
        (Path): The written PNG.
    """
    matplotlib.use("Agg")  # files only; also keeps the demo working without a display

    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(10, 4.6))
    names = list(results)
    x = range(len(names))
    for k, (key, off) in enumerate((("mAP50", -0.2), ("mAP50-95", 0.2))):
        vals = [results[n][key] for n in names]
        bars = ax.bar([i + off for i in x], vals, 0.4, label=key, color=f"C{k}")
        ax.bar_label(bars, fmt="%.3f", fontsize=8)
    ax.set_xticks(list(x), names)
    ax.set_ylim(0, min(1.0, max(0.1, *(1.2 * results[n]["mAP50"] for n in names))))
    ax.set_ylabel("mAP on the shared validation split")
    ax.set_title("Detection quality (one seed)")
    ax.legend(fontsize=8)

    epochs = [r.get("epoch", i + 1) for i, r in enumerate(ds2d2_epochs)]
    drawn = False
    for name in LOSS_COLUMNS:
        vals = [r.get(f"train/{name}", math.nan) for r in ds2d2_epochs]
        if vals and any(math.isfinite(v) for v in vals):
            ax2.plot(epochs, vals, marker="o", ms=3, label=name)
            drawn = True
    if drawn:
        # The student's own detection loss on a second axis: the terms only matter relative to it.
        det = [sum(r.get(f"train/{k}_loss", 0.0) for k in ("box", "cls", "dfl", "angle")) for r in ds2d2_epochs]
        ax3 = ax2.twinx()
        ax3.plot(epochs, det, color="0.5", ls="--", lw=1, label="detection (box+cls+dfl+angle)")
        ax3.set_ylabel("detection loss", color="0.4")
        ax2.set_xlabel("epoch")
        ax2.set_ylabel("weighted loss term")
        lines = ax2.get_legend_handles_labels()
        extra = ax3.get_legend_handles_labels()
        ax2.legend(
            lines[0] + extra[0],
            lines[1] + extra[1],
            fontsize=7,
            ncol=3,
            loc="upper center",
            bbox_to_anchor=(0.5, -0.14),
        )
    else:
        ax2.text(0.5, 0.5, "no DS2D2 loss columns in results.csv", ha="center", va="center", transform=ax2.transAxes)
    ax2.set_title("DS2D2 terms per epoch (distill=ds2d2)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def run_demo(
    out: str | Path = "runs/ds2d2-demo",
    epochs: int | None = None,
    seed: int = 0,
    imgsz: int = 128,
    n_teacher: int = 320,
    n_train: int = 64,
    n_val: int = 200,
    teacher_epochs: int = 10,
    batch: int = 8,
    teacher_width: float = 0.25,
    student_width: float = 0.125,
) -> dict[str, dict[str, float]]:
    """Run the offline demo: data, teacher, students with `distill=ds2d2` and `distill=none`, table and plot.

    The defaults fit in about 6-8 minutes on 2 CPU cores; the other arguments exist to shrink the run (tests).

    Args:
        out (str | Path): Output folder: datasets, runs, `demo.md` and `demo.png`.
        epochs (int | None): Student epochs (None: 30).
        seed (int): Seed of the data generator and of every training run.
        imgsz (int): Image size (a multiple of 32).
        n_teacher (int): Teacher training images.
        n_train (int): Student training images.
        n_val (int): Validation images shared by all three models.
        teacher_epochs (int): Teacher epochs (only when no teacher is saved in `out` yet).
        batch (int): Batch size of the students (the teacher trains at 16).
        teacher_width (float): Teacher width multiple.
        student_width (float): Student width multiple.

    Returns:
        (dict[str, dict[str, float]]): Per model ("teacher", "none", "ds2d2"): "mAP50", "mAP50-95" and "train_s"
            (seconds; NaN for a reused teacher without a record).
    """
    epochs = 30 if epochs is None else int(epochs)
    if imgsz % 32:
        raise ValueError(f"imgsz={imgsz} must be a multiple of 32, e.g. 128")
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()

    _log(f"generating synthetic OBB scenes in {out / 'data'} ({n_teacher} teacher / {n_train} student / {n_val} val)")
    data = make_demo_data(out / "data", imgsz, n_teacher, n_train, n_val, seed)
    teacher = train_teacher(data["teacher"], out, imgsz, teacher_epochs, seed, teacher_width, data["student"])
    _log(f"teacher mAP50 {teacher['mAP50']:.3f} on the validation split")

    (out / "models").mkdir(exist_ok=True)
    student_yaml = scaled_model_yaml("yolov8-obb.yaml", depth=0.33, width=student_width, nc=3, out=out / "models")
    shared = dict(
        model=str(student_yaml),
        data=str(data["student"]),
        teacher=str(teacher["weights"]),
        epochs=epochs,
        imgsz=imgsz,
        batch=batch,
        workers=0,
        device="cpu",
        seed=seed,
        deterministic=True,
        **TRAIN_SETTINGS,
        val=False,  # validate the final epoch only: per-epoch validation would cost as much as training here
        plots=False,
        amp=False,
        nbs=batch,
        project=str(out),
        exist_ok=True,
        verbose=False,
    )
    runs = {m: train_student(m, {**shared, **STUDENT_SETTINGS.get(m, {})}) for m in METHODS}

    results = {"teacher": {k: teacher[k] for k in ("mAP50", "mAP50-95", "train_s", "reused")}}
    results.update({m: {k: runs[m][k] for k in ("mAP50", "mAP50-95", "train_s")} for m in ("none", "ds2d2")})
    settings = (
        f"Synthetic OBB scenes at {imgsz} px (vehicles, ships, planes): teacher YOLOv8-OBB width {teacher_width} "
        f"trained on {n_teacher} scenes; students width {student_width} from scratch on {n_train} other scenes, "
        f"{epochs} epochs, batch {batch} (an optimizer step every batch), seed {seed}; {n_val} shared validation "
        f"scenes. Every run: AdamW lr0 {TRAIN_SETTINGS['lr0']}, no mosaic"
        + "".join(f"; {m} with " + ", ".join(f"{k}={v}" for k, v in s.items()) for m, s in STUDENT_SETTINGS.items())
        + "."
    )
    text = format_table(results, settings)
    (out / "demo.md").write_text(text, encoding="utf-8")
    plot_demo(results, runs["ds2d2"]["epochs"], out / "demo.png")
    print("\n" + text)
    print(f"Table: {out / 'demo.md'}  Plot: {out / 'demo.png'}  Runs: {out}  ({time.perf_counter() - t_start:.0f} s)")
    return {k: {m: float(v) for m, v in r.items() if m != "reused"} for k, r in results.items()}


__all__ = ["run_demo"]
