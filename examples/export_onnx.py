"""Export a distilled student to ONNX, run it with onnxruntime and compare it with the PyTorch model.

Input: a student checkpoint written by DS2D2 training (`runs/<task>/<name>/weights/best.pt`, detect or OBB). It is a
plain Ultralytics checkpoint, so Ultralytics alone exports it; this package is not needed on the deployment side.
Optionally an image (`--source`, any size: it is resized to the square `--imgsz` input, which is enough for a
numerical comparison; use Ultralytics' predict for letterboxed inference).

What it does:
    1. `YOLO(weights).export(format="onnx", simplify=False)` writes `best.onnx` next to the weights (simplify=True
       also works once `pip install onnxslim` is done; this script never installs anything).
    2. Feeds the same input tensor to onnxruntime and to the fused PyTorch model and prints the largest absolute
       difference of the raw head output (boxes, class scores and, for OBB, angles); a few 1e-4 is normal float32
       noise, and the script exits with status 1 above `--tol`.

Needs: `pip install onnx onnxruntime` (included in this package's `[test]` extra).

Usage:
    python examples/export_onnx.py --weights runs/obb/ds2d2-dota/weights/best.pt --imgsz 1024 --source P0001.png

Command-line equivalent of the export alone:
    ds2d2-yolo export model=runs/obb/ds2d2-dota/weights/best.pt format=onnx imgsz=1024 simplify=False
"""

from __future__ import annotations

import argparse
import sys


def load_input(source: str | None, imgsz: int):
    """Return a (1, 3, imgsz, imgsz) float32 array in [0, 1], RGB: from an image, or seeded noise."""
    import numpy as np

    if source is None:
        return np.random.default_rng(0).random((1, 3, imgsz, imgsz), dtype=np.float32)
    import cv2

    img = cv2.imread(source)
    if img is None:
        raise FileNotFoundError(f"cannot read image {source}")
    img = cv2.resize(img, (imgsz, imgsz), interpolation=cv2.INTER_LINEAR)[:, :, ::-1]  # BGR -> RGB as Ultralytics
    return np.ascontiguousarray(img.transpose(2, 0, 1)[None], dtype=np.float32) / 255.0


def main() -> None:
    """Export, run both backends on one input and compare."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--weights", required=True, help="distilled student .pt")
    p.add_argument("--imgsz", type=int, default=640, help="square export/input size (a multiple of 32)")
    p.add_argument("--source", default=None, help="an image; default: random input")
    p.add_argument("--opset", type=int, default=None, help="ONNX opset; default: Ultralytics' choice")
    p.add_argument("--tol", type=float, default=1e-2, help="largest acceptable absolute difference")
    a = p.parse_args()

    import numpy as np
    import onnxruntime as ort
    import torch
    from ultralytics import YOLO

    onnx_path = YOLO(a.weights).export(format="onnx", imgsz=a.imgsz, simplify=False, opset=a.opset, device="cpu")
    print(f"exported {onnx_path}")

    x = load_input(a.source, a.imgsz)
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    onnx_out = session.run(None, {session.get_inputs()[0].name: x})[0]

    # The exporter fuses Conv+BN; do the same so both sides compute the same graph.
    model = YOLO(a.weights).model.float().fuse().eval()
    with torch.no_grad():
        torch_out = model(torch.from_numpy(x))
    torch_out = (torch_out[0] if isinstance(torch_out, (list, tuple)) else torch_out).numpy()

    if torch_out.shape != onnx_out.shape:
        sys.exit(f"output shapes differ: PyTorch {torch_out.shape}, ONNX {onnx_out.shape}")
    diff = float(np.abs(torch_out - onnx_out).max())
    print(f"output {tuple(onnx_out.shape)}; max |PyTorch - onnxruntime| = {diff:.3g} (tolerance {a.tol:g})")
    if not diff <= a.tol:
        sys.exit(1)


if __name__ == "__main__":
    main()
