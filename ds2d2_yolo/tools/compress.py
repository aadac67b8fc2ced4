"""The edge compression pipeline: prune a trained model, distil it back, export FP32 and INT8, and validate each stage.

`ds2d2-yolo compress model=teacher.pt data=... ratio=0.5 distill=ds2d2 epochs=...` writes into runs/compress/NAME:

- `pruned.pt`, `distil/` (the DS2D2 training run, teacher = the original model), `student.onnx`, `student-int8.onnx`,
  `student_int8_openvino_model/`, plus `teacher.onnx` as the latency reference;
- `table.md`, `results.csv` and `results.json`: per stage, params, GFLOPs, file MB, mAP50, mAP50-95 (Ultralytics' own
  `val` on the same split for every file) and CPU latency at batch 1 in the runtime the file ships with;
- `accuracy_latency.png`: mAP50-95 against latency.

A stage that fails stops the pipeline with one line naming it (the traceback goes to `error.txt`); the files and rows
of the stages before it stay.
"""

from __future__ import annotations

import csv
import json
import shutil
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import matplotlib
import matplotlib.pyplot as plt
import yaml
from ultralytics.cfg import DEFAULT_CFG_DICT, check_cfg
from ultralytics.utils import LOGGER, TQDM
from ultralytics.utils.files import increment_path

from ds2d2_yolo.config import check_args, split_overrides
from ds2d2_yolo.integration.trainer import DS2D2Trainer
from ds2d2_yolo.tools.export import export_to
from ds2d2_yolo.tools.latency import measure_latency, runtime_of
from ds2d2_yolo.tools.prune import (
    IMPORTANCES,
    load_detect_model,
    model_stats,
    prune_model,
    require_torch_pruning,
    save_pruned,
    validate,
)
from ds2d2_yolo.tools.quantize import (
    INSTALL_HINT,
    export_openvino_int8,
    openvino_available,
    quantize_onnx,
    require_ort_quantization,
    split_images,
)

INT8_FORMATS = ("onnx", "openvino")
# Training keys the pipeline sets itself; a cfg= file may not override them.
PIPELINE_KEYS = ("model", "data", "epochs", "imgsz", "batch", "workers", "device", "seed", "project", "name", "resume")
COLUMNS = ("stage", "file", "runtime", "precision", "params", "GFLOPs", "MB", "mAP50", "mAP50-95", "ms")


class StageError(RuntimeError):
    """A pipeline stage failed; the message names it and where the earlier results are."""


def int8_formats(value: str | None) -> list[str]:
    """Parse `int8=onnx,openvino` (or `none`) into a list of formats.

    Raises:
        ValueError: On an unknown format.
    """
    names = [s.strip().lower() for s in str(value or "").split(",") if s.strip()]
    names = [] if names in (["none"], ["false"]) else names
    bad = [n for n in names if n not in INT8_FORMATS]
    if bad:
        raise ValueError(f"'int8={value}': '{bad[0]}' is unknown; choose from {', '.join(INT8_FORMATS)} or none")
    return names


def train_keys(cfg: str | dict | None) -> dict[str, Any]:
    """Extra training keys (Ultralytics and DS2D2) from a `cfg=` yaml file or a dict, checked before any work.

    Raises:
        FileNotFoundError: When the yaml does not exist.
        ValueError: When it is not a mapping or holds an invalid key or value.
    """
    if not cfg:
        return {}
    if isinstance(cfg, dict):
        keys = dict(cfg)
    else:
        path = Path(str(cfg))
        if not path.is_file():
            raise FileNotFoundError(f"cfg file '{path}' not found; pass cfg=path/to/train_overrides.yaml")
        keys = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        if not isinstance(keys, dict):
            raise ValueError(f"cfg file '{path}' must be a mapping of key: value")

    ul, mine = split_overrides(keys)
    check_args(mine)
    for k in ul:
        if k in PIPELINE_KEYS:
            raise ValueError(f"cfg: '{k}' is set by compress itself; pass it as {k}=... to compress, or leave it out")
        if k not in DEFAULT_CFG_DICT:
            raise ValueError(f"cfg: unknown key '{k}'; DS2D2 and Ultralytics training keys only (see 'yolo cfg')")
    check_cfg(dict(ul))
    return keys


def check_compress_args(args: dict[str, Any]) -> None:
    """Check every key of `compress` before any file is written (the data yaml is checked by the caller).

    Raises:
        ValueError, FileNotFoundError, ImportError: With the fix, in one line.
    """
    require_torch_pruning()
    load_detect_model(args["model"])
    if not 0 < float(args["ratio"]) < 1:
        raise ValueError(f"ratio={args['ratio']} must be between 0 and 1 (the fraction of channels removed)")
    if args["importance"] not in IMPORTANCES:
        raise ValueError(f"importance={args['importance']} is unknown; choose one of {', '.join(IMPORTANCES)}")
    if int(args["epochs"]) < 1:
        raise ValueError(f"epochs={args['epochs']} must be at least 1 (the distil stage trains the pruned model)")
    check_args({"distill": args["distill"], "teacher": args["model"], "amplifier": args.get("amplifier")})
    formats = int8_formats(args["int8"])
    if "onnx" in formats:
        require_ort_quantization()
    train_keys(args.get("cfg"))


def _size_mb(path: Path) -> float:
    """File size, or the total of a folder (an OpenVINO model), in MB."""
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    return round(sum(p.stat().st_size for p in files) / 1e6, 3)


class Pipeline:
    """Runs the stages in order, each with its own progress bar, and rewrites the report after every stage."""

    def __init__(self, save_dir: Path, data: str, imgsz: int, runs: int, threads: int | None, batch: int) -> None:
        """Record where to write and how every file is measured."""
        self.save_dir, self.data, self.imgsz, self.runs, self.threads = save_dir, data, imgsz, runs, threads
        self.batch = batch
        self.rows: list[dict[str, Any]] = []
        self.skipped: dict[str, str] = {}
        self.stages = 0

    def stage(self, name: str, steps: list[tuple[str, Callable[[], Any]]]) -> list[Any]:
        """Run one stage's steps under a progress bar; a failing step stops the pipeline with a StageError."""
        self.stages += 1
        out = []
        bar = TQDM(total=len(steps), desc=f"compress {self.stages} {name}")
        try:
            for label, fn in steps:
                bar.set_description(f"compress {self.stages} {name}: {label}")
                out.append(fn())
                bar.update(1)
        except Exception as e:
            (self.save_dir / "error.txt").write_text(traceback.format_exc(), encoding="utf-8")
            self.write()
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise StageError(
                f"compress stage '{name}' failed: {first} (traceback in {self.save_dir / 'error.txt'}; earlier "
                f"stages' results are kept in {self.save_dir})"
            ) from e
        finally:
            bar.close()
        self.write()
        return out

    def measure(self, stage: str, path: Path, stats: dict[str, Any], precision: str = "fp32") -> dict[str, Any]:
        """Validate and time one model file and append its row."""
        val_dir = self.save_dir / "val" / stage
        maps = validate(path, self.data, self.imgsz, 1, "cpu", val_dir)
        lat = measure_latency(path, self.imgsz, self.runs, threads=self.threads)
        row = {
            "stage": stage,
            "file": str(path.relative_to(self.save_dir) if path.is_relative_to(self.save_dir) else path),
            "runtime": runtime_of(path),
            "precision": precision,
            "params": stats["params"],
            "GFLOPs": stats["GFLOPs"],
            "MB": _size_mb(path),
            "mAP50": round(maps["mAP50"], 4),
            "mAP50-95": round(maps["mAP50-95"], 4),
            "ms": round(lat["ms"], 2),
        }
        self.rows.append(row)
        return row

    def write(self) -> None:
        """Write table.md, results.csv, results.json and the accuracy-latency plot from the rows so far."""
        d = self.save_dir
        (d / "results.json").write_text(
            json.dumps({"imgsz": self.imgsz, "rows": self.rows, "skipped": self.skipped}, indent=1), encoding="utf-8"
        )
        with open(d / "results.csv", "w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=COLUMNS)
            w.writeheader()
            w.writerows(self.rows)
        lines = [
            f"CPU latency at batch 1, imgsz {self.imgsz}, median of {self.runs} runs, in each file's own runtime.",
            "",
            "| " + " | ".join(COLUMNS) + " |",
            "|" + "---|" * len(COLUMNS),
        ]
        lines += [
            "| " + " | ".join(f"{r[c]:,}" if c == "params" else str(r[c]) for c in COLUMNS) + " |" for r in self.rows
        ]
        lines += [f"\n{k} skipped: {v}" for k, v in self.skipped.items()]
        (d / "table.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
        if self.rows:
            plot_accuracy_latency(self.rows, d / "accuracy_latency.png")


def plot_accuracy_latency(rows: list[dict[str, Any]], path: Path) -> Path:
    """Scatter mAP50-95 against CPU latency, one labelled point per stage."""
    matplotlib.use("Agg")

    fig, ax = plt.subplots(figsize=(6, 4), tight_layout=True)
    markers = {"torch": "o", "onnxruntime": "s", "openvino": "^"}
    for r in rows:
        ax.scatter(r["ms"], r["mAP50-95"], marker=markers.get(r["runtime"], "o"), s=40)
        ax.annotate(r["stage"], (r["ms"], r["mAP50-95"]), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xlabel("CPU latency, batch 1 (ms)")
    ax.set_ylabel("mAP50-95")
    ax.set_title("accuracy vs latency (o torch, s onnxruntime, ^ openvino)", fontsize=9)
    ax.grid(alpha=0.3)
    fig.savefig(path, dpi=150)
    plt.close(fig)
    return path


def run_compress(
    model: str,
    data: str,
    ratio: float = 0.5,
    importance: str = "l2",
    distill: str = "ds2d2",
    epochs: int = 10,
    imgsz: int | None = None,
    batch: int = 16,
    workers: int = 0,
    device: Any = "cpu",
    amplifier: str | None = None,
    int8: str = "onnx,openvino",
    calib: int = 64,
    runs: int = 50,
    threads: int | None = None,
    project: str = "runs/compress",
    name: str = "exp",
    exist_ok: bool = False,
    seed: int = 0,
    cfg: str | dict | None = None,
) -> dict[str, Any]:
    """Prune -> distil (teacher = the original model) -> export FP32 ONNX and INT8 -> validate and time every file.

    Args:
        model (str): Trained detect/OBB .pt (the teacher).
        data (str): Dataset yaml: training split for distillation and INT8 calibration, val split for every mAP.
        ratio (float): Fraction of channels pruned per layer group.
        importance (str): Pruning importance: "l1", "l2" or "random".
        distill (str): Recovery method for the pruned model: ds2d2, cwd, mgd, native or none.
        epochs (int): Distillation epochs.
        imgsz (int | None): Training, export, validation and latency size (default: the teacher's training size).
        batch (int): Training batch size.
        workers (int): Dataloader workers.
        device (Any): Training device (validation and latency always run on the CPU).
        amplifier (str | None): A DS2D2 amplifier.pt for this teacher, to skip training one.
        int8 (str): INT8 routes, "onnx,openvino", one of them, or "none".
        calib (int): Number of training-split images for ONNX Runtime calibration.
        runs (int): Timed runs per latency (median reported).
        threads (int | None): CPU threads for latency; None keeps each runtime's default.
        project (str): Parent folder of the run.
        name (str): Run folder name (incremented if it exists, unless exist_ok).
        exist_ok (bool): Reuse an existing run folder.
        seed (int): Seed for training and random importance.
        cfg (str | dict | None): Extra training keys (Ultralytics or DS2D2), as a yaml file or a dict.

    Returns:
        (dict): "save_dir", "rows" (one per measured file) and "skipped".

    Raises:
        StageError: When a stage fails (after writing the report of the stages before it).
    """
    args = dict(locals())

    check_compress_args(args)
    formats = int8_formats(int8)
    extra = train_keys(cfg)
    teacher, ckpt = load_detect_model(model)
    trained = teacher.args.get("imgsz", 640) if isinstance(teacher.args, dict) else 640
    imgsz = int(imgsz or (max(trained) if isinstance(trained, (list, tuple)) else trained))
    save_dir = increment_path(Path(project) / name, exist_ok=exist_ok, mkdir=True)
    (save_dir / "args.yaml").write_text(yaml.safe_dump({**args, "imgsz": imgsz}, sort_keys=False), encoding="utf-8")
    p = Pipeline(save_dir, str(data), imgsz, runs, threads, batch)
    teacher_stats = model_stats(teacher, imgsz)
    export_kw = dict(imgsz=imgsz, device="cpu", batch=1)

    teacher_onnx = save_dir / "teacher.onnx"
    p.stage(
        "teacher",
        [
            ("val+latency (torch)", lambda: p.measure("teacher", Path(model), teacher_stats)),
            ("export onnx", lambda: export_to(model, "onnx", teacher_onnx, **export_kw)),
            ("val+latency (onnxruntime)", lambda: p.measure("teacher-onnx", teacher_onnx, teacher_stats)),
        ],
    )

    pruned_pt = save_dir / "pruned.pt"
    state: dict[str, Any] = {}

    def prune() -> None:
        state["pruned"] = prune_model(teacher, ratio, importance, seed=seed)
        save_pruned(state["pruned"], pruned_pt, ckpt, {"source": str(model), "ratio": ratio, "importance": importance})

    p.stage(
        "prune",
        [
            ("prune", prune),
            ("val+latency", lambda: p.measure("pruned", pruned_pt, model_stats(state["pruned"], imgsz))),
        ],
    )
    student_stats = model_stats(state["pruned"], imgsz)

    def distil() -> Path:
        overrides = dict(
            model=str(pruned_pt),
            data=str(data),
            epochs=epochs,
            imgsz=imgsz,
            batch=batch,
            workers=workers,
            device=device,
            seed=seed,
            project=str(save_dir.resolve()),  # Ultralytics puts a relative project under runs/<task>/
            name="distil",
            exist_ok=True,
            distill=distill,
            **({"teacher": str(model)} if distill != "none" else {}),
            **({"amplifier": amplifier} if amplifier else {}),
        )
        overrides = {**extra, **overrides}
        trainer = DS2D2Trainer(overrides=overrides)
        trainer.train()
        state["best"] = Path(trainer.best if Path(trainer.best).exists() else trainer.last)
        return state["best"]

    p.stage(
        "distil",
        [
            (f"train {distill}", distil),
            ("val+latency", lambda: p.measure("distilled", state["best"], student_stats)),
        ],
    )

    student_onnx = save_dir / "student.onnx"
    p.stage(
        "export",
        [
            ("export onnx", lambda: export_to(state["best"], "onnx", student_onnx, **export_kw)),
            ("val+latency", lambda: p.measure("onnx", student_onnx, student_stats)),
        ],
    )

    if "onnx" in formats:
        int8_onnx = save_dir / "student-int8.onnx"
        p.stage(
            "int8-onnx",
            [
                (
                    "calibrate+quantize",
                    lambda: quantize_onnx(student_onnx, int8_onnx, split_images(data, "train", calib), imgsz),
                ),
                ("val+latency", lambda: p.measure("int8-onnx", int8_onnx, student_stats, "int8")),
            ],
        )
    if "openvino" in formats:
        if not openvino_available():
            p.skipped["int8-openvino"] = f"openvino and nncf are not installed ({INSTALL_HINT})"
            LOGGER.warning(f"compress: int8-openvino skipped: {p.skipped['int8-openvino']}")
            p.write()
        else:
            ov_dir = save_dir / "student_int8_openvino_model"

            def openvino() -> Path:
                out = export_openvino_int8(state["best"], save_dir / "student", data, **export_kw)
                if out != ov_dir:
                    shutil.rmtree(ov_dir, ignore_errors=True)
                    shutil.move(str(out), ov_dir)
                return ov_dir

            p.stage(
                "int8-openvino",
                [
                    ("calibrate+quantize (NNCF)", openvino),
                    ("val+latency", lambda: p.measure("int8-openvino", ov_dir, student_stats, "int8")),
                ],
            )
    LOGGER.info(f"compress: {len(p.rows)} files measured. Results saved to {save_dir}")
    LOGGER.info((save_dir / "table.md").read_text(encoding="utf-8"))
    return {"save_dir": str(save_dir), "rows": p.rows, "skipped": p.skipped}
