"""Convert DIOR (Pascal VOC XML) to YOLO and distil a small horizontal-box (detect) student with DS2D2.

Expected input: DIOR obtained from its authors (nothing here downloads it), the archives extracted side by side:

    DIOR/
        Annotations/Horizontal Bounding Boxes/00001.xml ...   (or Annotations/*.xml)
        JPEGImages-trainval/00001.jpg ...
        JPEGImages-test/11726.jpg ...
        ImageSets/Main/train.txt, val.txt, test.txt            (image ids, one a line)

Steps:
    1. Convert the VOC boxes to YOLO `cls xc yc w h` labels in DIOR's 20-class order and write `data.yaml` under
       `--out` (skipped when it already exists). Without ImageSets every image goes to one `all` split.
    2. Distil: the teacher must be an Ultralytics detect checkpoint trained on DIOR's 20 classes (train one first,
       e.g. `yolo detect train model=yolov8m.pt data=<out>/data.yaml imgsz=800`); the student is trained from its yaml.

DIOR images are 800 x 800 px, so no tiling is needed and `imgsz=800` keeps native resolution. The result,
`runs/detect/<name>/weights/best.pt`, is a plain Ultralytics checkpoint.

Usage:
    python examples/distill_dior_detect.py --dior path/to/DIOR --teacher dior-yolov8m.pt --epochs 100 --device 0

Command-line equivalent:
    ds2d2-yolo convert format=dior src=path/to/DIOR dst=../datasets/DIOR
    ds2d2-yolo detect train model=yolov8n.yaml data=../datasets/DIOR/data.yaml teacher=dior-yolov8m.pt imgsz=800
"""

from __future__ import annotations

import argparse
from pathlib import Path


def main() -> None:
    """Parse the arguments, convert DIOR, then distil the student."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dior", type=Path, required=True, help="extracted DIOR root (Annotations/, JPEGImages-*/)")
    p.add_argument("--out", type=Path, default=Path("../datasets/DIOR"), help="prepared dataset root")
    p.add_argument("--teacher", required=True, help="Ultralytics detect .pt trained on DIOR's 20 classes")
    p.add_argument("--student", default="yolov8n.yaml", help="student model yaml (or .pt to fine-tune)")
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--imgsz", type=int, default=800)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--device", default=None, help="e.g. 0, 0,1 or cpu")
    p.add_argument("--name", default="ds2d2-dior")
    a = p.parse_args()

    data_yaml = a.out / "data.yaml"
    if not data_yaml.is_file():
        from ds2d2_yolo.tools.dataprep import run_convert

        data_yaml = Path(run_convert(format="dior", src=a.dior, dst=a.out)["yaml"])

    from ds2d2_yolo import DS2D2Trainer

    trainer = DS2D2Trainer(
        overrides=dict(
            model=a.student,
            data=str(data_yaml),
            teacher=a.teacher,
            distill="ds2d2",  # disw=auto uses the reference (horizontal-box) rule for detect students
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
