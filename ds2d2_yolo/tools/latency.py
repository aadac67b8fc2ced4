"""CPU latency of a model file at batch 1, in the runtime it ships with (PyTorch, ONNX Runtime or OpenVINO)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ultralytics.nn.tasks import load_checkpoint

PT_SUFFIXES = (".pt",)


def runtime_of(path: str | Path) -> str:
    """The runtime a model file ships with: "torch" (.pt), "onnxruntime" (.onnx) or "openvino" (an _openvino_model)."""
    p = Path(path)
    if p.suffix in PT_SUFFIXES:
        return "torch"
    if p.suffix == ".onnx":
        return "onnxruntime"
    if p.suffix == ".xml" or (p.is_dir() and any(p.glob("*.xml"))):
        return "openvino"
    raise ValueError(f"'{path}' is not a .pt, .onnx or OpenVINO model")


def _torch_runner(path: Path, x: np.ndarray, threads: int | None) -> Callable[[], Any]:
    if threads:
        torch.set_num_threads(threads)
    model = load_checkpoint(str(path))[0].float().fuse().eval()
    t = torch.from_numpy(x)

    def run() -> Any:
        with torch.inference_mode():
            return model(t)

    return run


def _ort_runner(path: Path, x: np.ndarray, threads: int | None) -> Callable[[], Any]:
    import onnxruntime as ort  # optional: pip install -e .[compress]

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    feed = {session.get_inputs()[0].name: x}
    return lambda: session.run(None, feed)


def _openvino_runner(path: Path, x: np.ndarray, threads: int | None) -> Callable[[], Any]:
    import openvino as ov  # optional: pip install -e .[compress]

    xml = path if path.suffix == ".xml" else next(path.glob("*.xml"))
    config = {"PERFORMANCE_HINT": "LATENCY", **({"INFERENCE_NUM_THREADS": threads} if threads else {})}
    compiled = ov.Core().compile_model(str(xml), "CPU", config)
    request = compiled.create_infer_request()
    return lambda: request.infer({0: x})


def measure_latency(
    path: str | Path,
    imgsz: int = 640,
    runs: int = 50,
    warmup: int = 5,
    threads: int | None = None,
    progress: Callable[[Iterable], Iterable] | None = None,
) -> dict[str, Any]:
    """Median wall time of one batch-1 forward pass on the CPU.

    Args:
        path (str | Path): Model file (.pt, .onnx, or an OpenVINO folder/.xml).
        imgsz (int): Square input size.
        runs (int): Timed runs (the median is reported).
        warmup (int): Untimed runs first (allocations, kernel selection).
        threads (int | None): CPU threads for the runtime; None keeps the runtime's default.
        progress (Callable | None): Wraps the timed-run iterator (a progress bar).

    Returns:
        (dict): "runtime", "ms" (median), "ms_p10", "ms_p90", "runs".
    """
    path = Path(path)
    runtime = runtime_of(path)
    x = np.random.default_rng(0).random((1, 3, imgsz, imgsz), dtype=np.float32)
    run = {"torch": _torch_runner, "onnxruntime": _ort_runner, "openvino": _openvino_runner}[runtime](path, x, threads)
    for _ in range(warmup):
        run()
    times = []
    for _ in progress(range(runs)) if progress else range(runs):
        t0 = time.perf_counter()
        run()
        times.append((time.perf_counter() - t0) * 1e3)
    p10, p50, p90 = np.percentile(times, [10, 50, 90])
    return {"runtime": runtime, "ms": float(p50), "ms_p10": float(p10), "ms_p90": float(p90), "runs": runs}
