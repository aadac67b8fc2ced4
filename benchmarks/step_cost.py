"""Training-step cost of `distill=ds2d2` against Ultralytics' native `distill_model=`, interleaved in one run.

Both wrappers get the same teacher, the same freshly built student (same seed), the same optimizer and the same
real batches; their steps alternate (ABBA order) so machine load drifts hit both equally. Peak memory is measured
per method in child processes (one method each, run alternately): the peak-RSS mark is reset after the models and
batches are built, so the figure is the peak while training steps run.

    python benchmarks/step_cost.py --data runs/bench/report.yaml --teacher ../shared/weights/yolov8n-obb-dota.pt

`--methods` adds the comparison's other rows (`ds2d2_yolo.tools.compare.METHODS`: cwd, mgd, the DS2D2 ablations),
which shows what each DS2D2 stream costs: `ds2d2-explicit` runs no head passes, `ds2d2-implicit` no DWT losses. A
`@nchw` suffix (e.g. `ds2d2@nchw`) runs a method with its frozen teacher and amplifier in PyTorch's default layout
instead of the channels-last one the wrapper stores them in, which shows what that layout saves.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from copy import deepcopy
from pathlib import Path

import torch
from ultralytics.cfg import get_cfg
from ultralytics.data import build_dataloader, build_yolo_dataset
from ultralytics.data.utils import check_det_dataset
from ultralytics.nn.distill_model import DistillationModel
from ultralytics.nn.tasks import OBBModel

from ds2d2_yolo.config import check_args
from ds2d2_yolo.integration.hooks import detection_head, freeze
from ds2d2_yolo.integration.teacher import load_teacher
from ds2d2_yolo.integration.wrapper import DS2D2Model
from ds2d2_yolo.tools.compare import METHODS
from ds2d2_yolo.tools.models import scaled_model_yaml

NCHW = "@nchw"  # method suffix: the frozen modules in the default memory layout


def _batches(data: str, imgsz: int, batch: int, n: int) -> list[dict]:
    """`n` training batches of the data's train split (cycled over a small split), images as floats in [0, 1]."""
    args = get_cfg(overrides=dict(imgsz=imgsz, task="obb"))
    d = check_det_dataset(data)
    ds = build_yolo_dataset(args, d["train"], batch, d, mode="train", stride=32)
    out: list[dict] = []
    while len(out) < n:  # cycle over a small split
        for b in build_dataloader(ds, batch, 0, shuffle=False):
            b["img"] = b["img"].float() / 255
            out.append(b)
            if len(out) == n:
                break
    return out


def check_methods(methods: str) -> list[str]:
    """Split a comma-separated method list and check it names comparison rows, native among them."""
    names = [m.strip() for m in methods.split(",") if m.strip()]
    bad = [m for m in names if m.removesuffix(NCHW) not in METHODS]
    if bad:
        raise ValueError(f"method '{bad[0]}' is unknown; choose from {', '.join(METHODS)}")
    plain = [m for m in names if m.endswith(NCHW) and m.removesuffix(NCHW) in ("native", "none")]
    if plain:
        raise ValueError(f"'{plain[0]}': {NCHW} applies to this package's wrappers only; drop it for native and none")
    if "native" not in names:
        raise ValueError(f"--methods {methods} lacks 'native', the reference every ratio is taken against; add it")
    return list(dict.fromkeys(names))


def build(method: str, student_yaml: str, teacher: str, imgsz: int, nc: int) -> torch.nn.Module:
    """A training-mode wrapper for a comparison row ("native", "none", "cwd", "ds2d2", ...) on a seeded student."""
    if method.endswith(NCHW):
        model = build(method.removesuffix(NCHW), student_yaml, teacher, imgsz, nc)
        for m in (model.teacher, model.amplifier):
            if m is not None:
                m.to(memory_format=torch.contiguous_format)
        return model
    torch.manual_seed(0)
    student = OBBModel(student_yaml, nc=nc, verbose=False)
    student.args = get_cfg(overrides=dict(imgsz=imgsz, task="obb"))
    if method == "none":
        return student.train()
    t = load_teacher(teacher, "obb", getattr(torch.load(teacher, weights_only=False)["model"], "names", {}))
    if method == "native":
        return DistillationModel(teacher_model=t.model, student_model=student).train()
    cfg = check_args(METHODS[method])
    amp = None
    if cfg["distill"] == "ds2d2" and cfg["implicit_high"]:
        amp = freeze(deepcopy(detection_head(t.model)))  # an amplifier costs the same trained or not
    return DS2D2Model(student, t.model, cfg, amplifier=amp).train()


def step(model: torch.nn.Module, opt: torch.optim.Optimizer, batch: dict) -> float:
    """One forward/backward/optimizer step; returns its wall time.

    A plain student, Ultralytics' DistillationModel and `DS2D2Model` all take a training batch in `loss()`.
    """
    t = time.perf_counter()
    loss, _ = model.loss(batch)
    loss.sum().backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return time.perf_counter() - t


def _opt(model: torch.nn.Module) -> torch.optim.Optimizer:
    """The same plain SGD for every method, over what each one trains."""
    return torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-4, momentum=0.9)


def interleaved(methods: list[str], a: argparse.Namespace) -> dict[str, list[float]]:
    """Time alternating steps of each method on the same batches."""
    batches = _batches(a.data, a.imgsz, a.batch, a.steps)
    models = {m: build(m, a.student, a.teacher, a.imgsz, a.nc) for m in methods}
    opts = {m: _opt(models[m]) for m in methods}
    times: dict[str, list[float]] = {m: [] for m in methods}
    for i, b in enumerate(batches):
        order = methods if i % 2 == 0 else methods[::-1]
        for m in order:
            dt = step(models[m], opts[m], b)
            if i >= a.warmup:
                times[m].append(dt)
    return times


def peak_rss(method: str, a: argparse.Namespace) -> float:
    """Peak RSS (MB) of a child process that builds `method` and runs a few steps."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", method] + _argv(a)
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
    return float(out)


def _reset_peak() -> None:
    """Reset the kernel's peak-RSS mark (Linux: writing 5 to clear_refs resets VmHWM); no-op elsewhere."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def _peak_mb() -> float:
    """Peak RSS in MB since the last reset (VmHWM), or the process' lifetime peak where /proc is missing."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _argv(a: argparse.Namespace) -> list[str]:
    """The command-line words that rebuild `a` in a child process."""
    return [
        "--data",
        a.data,
        "--teacher",
        a.teacher,
        "--student",
        a.student,
        "--imgsz",
        str(a.imgsz),
        "--batch",
        str(a.batch),
        "--steps",
        str(a.steps),
        "--nc",
        str(a.nc),
        "--warmup",
        str(a.warmup),
        "--methods",
        a.methods,
    ]


def main(argv: list[str] | None = None) -> None:
    """Print the step-time and peak-memory table."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True)
    p.add_argument("--teacher", required=True)
    p.add_argument("--student", default=None, help="student yaml (default: yolov8-obb depth 0.33 width 0.125)")
    p.add_argument("--nc", type=int, default=15)
    p.add_argument("--imgsz", type=int, default=320)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--methods", default="native,ds2d2,none", help="comma-separated comparison rows, native included")
    p.add_argument("--rss-repeats", type=int, default=2, help="child processes per method for the peak memory")
    p.add_argument("--child", default=None)
    a = p.parse_args(argv)
    try:
        methods = check_methods(a.methods)
    except ValueError as e:
        p.error(str(e))  # exits with the one-line message before any model or data is loaded
    if a.student is None:
        a.student = str(
            scaled_model_yaml("yolov8-obb.yaml", 0.33, 0.125, nc=a.nc, out=Path("/tmp/ds2d2-student-obb.yaml"))
        )
    if a.child:
        model = build(a.child, a.student, a.teacher, a.imgsz, a.nc)
        opt = _opt(model)
        batches = _batches(a.data, a.imgsz, a.batch, min(a.steps, 4))
        _reset_peak()  # measure the training steps, not dataset scanning and imports
        for b in batches:
            step(model, opt, b)
        print(_peak_mb())
        return
    times = interleaved(methods, a)
    rss = {m: [] for m in methods}
    for i in range(max(1, a.rss_repeats)):
        for m in methods if i % 2 == 0 else methods[::-1]:
            rss[m].append(peak_rss(m, a))
    med = {m: statistics.median(v) for m, v in times.items()}
    mem = {m: max(v) for m, v in rss.items()}
    n = len(times["native"])
    print(f"\nbatch {a.batch}, imgsz {a.imgsz}, {n} timed steps each (interleaved), torch {torch.__version__}")
    print("| method | s/step (median) | vs native | peak RSS (MB) | vs native |")
    print("|---|---|---|---|---|")
    for m in methods:
        print(f"| {m} | {med[m]:.3f} | {med[m] / med['native']:.2f}x | {mem[m]:.0f} | {mem[m] / mem['native']:.2f}x |")
    print(json.dumps({"s_per_step": med, "peak_rss_mb": mem}))


if __name__ == "__main__":
    main()
