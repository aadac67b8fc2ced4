"""Prepare DOTA-v1.0 and distil a small oriented-box (OBB) student from a large OBB teacher with DS2D2.

Expected input: the official DOTA-v1.0 train and val archives, obtained from the dataset's authors (nothing here
downloads them), extracted into one folder:

    DOTA/
        train/images/P0000.png ...      train/labelTxt/P0000.txt ...
        val/images/P0003.png ...        val/labelTxt/P0003.txt ...

Each labelTxt line is `x1 y1 x2 y2 x3 y3 x4 y4 class difficult` in pixels (optional `imagesource:` and `gsd:` header
lines are ignored).

Steps:
    1. Cut the large scenes into 1024 px tiles with 200 px overlap and write YOLO-OBB labels and `data.yaml` under
       `--out` (skipped when `--out/data.yaml` already exists).
    2. Distil: the student (default `yolov8n-obb.yaml`, trained from scratch) learns from the teacher, which must be
       an Ultralytics OBB checkpoint trained on the DOTA-v1.0 classes (e.g. Ultralytics' yolov8m-obb.pt, which you
       download yourself). The high-frequency amplifier is trained first (`amp_epochs`) and saved beside the run.

The result, `runs/obb/<name>/weights/best.pt`, is a plain Ultralytics checkpoint: it validates, predicts and exports
without this package. Predict on whole scenes with `ds2d2-yolo slice model=best.pt source=P0001.png tile=1024`.

Usage:
    python examples/distill_dota_obb.py --dota path/to/DOTA --teacher yolov8m-obb.pt --epochs 100 --device 0

Command-line equivalent:
    ds2d2-yolo convert format=dota src=path/to/DOTA dst=../datasets/DOTAv1 tile=1024 gap=200
    ds2d2-yolo obb train model=yolov8n-obb.yaml data=../datasets/DOTAv1/data.yaml teacher=yolov8m-obb.pt epochs=100
"""

from __future__ import annotations

import argparse
from pathlib import Path


def prepare(dota: Path, out: Path, tile: int, gap: int) -> Path:
    """Tile DOTA into `out` once and return its data.yaml."""
    from ds2d2_yolo.tools.dataprep import run_convert

    data_yaml = out / "data.yaml"
    if data_yaml.is_file():
        print(f"{data_yaml} exists: skipping conversion")
        return data_yaml
    return Path(run_convert(format="dota", src=dota, dst=out, tile=tile, gap=gap)["yaml"])


def main() -> None:
    """Parse the arguments, prepare DOTA, then distil the student."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dota", type=Path, required=True, help="folder holding train/ and val/ (images/, labelTxt/)")
    p.add_argument("--out", type=Path, default=Path("../datasets/DOTAv1"), help="prepared dataset root")
    p.add_argument("--teacher", required=True, help="Ultralytics OBB .pt trained on DOTA-v1.0 classes")
    p.add_argument("--student", default="yolov8n-obb.yaml", help="student model yaml (or .pt to fine-tune)")
    p.add_argument("--tile", type=int, default=1024)
    p.add_argument("--gap", type=int, default=200)
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--imgsz", type=int, default=1024)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--device", default=None, help="e.g. 0, 0,1 or cpu")
    p.add_argument("--name", default="ds2d2-dota")
    a = p.parse_args()

    data_yaml = prepare(a.dota, a.out, a.tile, a.gap)

    from ds2d2_yolo import DS2D2Trainer

    trainer = DS2D2Trainer(
        overrides=dict(
            model=a.student,
            data=str(data_yaml),
            teacher=a.teacher,
            distill="ds2d2",  # every DS2D2 key of cfg/ds2d2.yaml can be set here, e.g. lambda_imh=0.5
            epochs=a.epochs,
            imgsz=a.imgsz,
            batch=a.batch,
            device=a.device,
            name=a.name,
        )
    )
    trainer.train()
    print(f"distilled student: {trainer.best}")


if __name__ == "__main__":
    main()
