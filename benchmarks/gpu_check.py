"""One prepared device check for DS2D2: CUDA tests, a 2-epoch AMP run, mixed-precision parity and the step cost.

Sections, each recorded in `gpu_check.json` and `gpu_check.md` under `--out`:

1. env: device, torch, CUDA and cuDNN versions, and which packages came from the staged wheels.
2. cuda_tests + train: the tests whose name holds "cuda", then a 2-epoch `distill=ds2d2` OBB run with the reference's
   full method (yolov8n-obb-dota teacher, dota8 tiles, `amp=True` on CUDA); every KD term finite and non-zero, best.pt
   reloaded and validated on CPU.
3. parity: one fixed batch; every DS2D2 term and its gradient on the student's neck under autocast fp16 and bf16
   against fp32 (TF32 off), relative differences (target <= 1e-2 on the terms).
4. step_cost: `step_cost.py`'s builds, interleaved steps with CUDA synchronisation, for none, native, ds2d2,
   ds2d2-reference, ds2d2-explicit and ds2d2-implicit; peak CUDA memory per method (peak RSS on CPU). Targets:
   DS2D2 <= 1.3x native time and <= 1.2x memory.
5. throughput (full mode on CUDA only, within the time budget): R1 DOTA-mini runs (ds2d2, several seeds) as parallel
   processes on the one GPU, extrapolated to full-length R1 seed-runs per minute.

The exit code is 0 when sections 1-3 ran and passed (the device, the tests, finite non-zero terms, best.pt reloaded,
finite fp16/bf16 terms and gradients). The parity, time and memory targets are reported in the record's "targets" as
met or missed; they apply to CUDA, and a CPU run reports its numbers without judging them.

    python benchmarks/stage_gpu_check.py                        # here: wheels, samples and teacher -> .gpu_stage/
    python3 benchmarks/gpu_check.py --device 0 --out "$OUT"     # on the GPU machine (carry .gpu_stage)
    python benchmarks/gpu_check.py --device cpu --quick --out runs/gpu_check   # the same code path on CPU

Where Ultralytics, PyWavelets or this package cannot be imported (the GPU machine has PyTorch but none of these), the
staged wheels and this checkout are installed into a temporary folder without any index, and the script restarts
itself with that folder on PYTHONPATH.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import datetime
from importlib.util import find_spec
from pathlib import Path
from typing import Any, Callable

import torch

REPO = Path(__file__).resolve().parents[1]
STAGE = REPO / ".gpu_stage"
SITE_ENV = "DS2D2_GPU_CHECK_SITE"  # set once the staged packages are installed, so a restart cannot loop
TERMS = ("ex_low", "ex_high", "im_full", "im_high")
BENCH_METHODS = ["none", "native", "ds2d2", "ds2d2-reference", "ds2d2-explicit", "ds2d2-implicit"]
TARGETS = {"parity_term_rel": 1e-2, "time_vs_native": 1.3, "memory_vs_native": 1.2}
THROUGHPUT_EPOCHS = 5  # per run: enough for a steady epoch time after the first

# Sizes per mode. "smoke" is the test's: the quick CPU path with the smallest images and fewest steps.
PROFILES: dict[str, dict[str, Any]] = {
    "cuda": dict(
        train=dict(imgsz=640, batch=4, amp_epochs=3),
        parity=dict(imgsz=640, batch=4),
        bench=[
            dict(data="dota-mini", imgsz=320, batch=16, steps=30, warmup=5),
            dict(data="dota-mini", imgsz=640, batch=16, steps=20, warmup=5),
        ],
        throughput=True,
    ),
    "cuda-quick": dict(
        train=dict(imgsz=640, batch=4, amp_epochs=1),
        parity=dict(imgsz=640, batch=4),
        bench=[dict(data="dota8", imgsz=640, batch=4, steps=20, warmup=5)],
        throughput=False,
    ),
    "cpu": dict(
        train=dict(imgsz=320, batch=4, amp_epochs=1),
        parity=dict(imgsz=320, batch=4),
        bench=[dict(data="dota-mini", imgsz=320, batch=16, steps=8, warmup=2)],
        throughput=False,
    ),
    "cpu-quick": dict(
        train=dict(imgsz=128, batch=4, amp_epochs=1),
        parity=dict(imgsz=128, batch=4),
        bench=[dict(data="dota8", imgsz=128, batch=4, steps=5, warmup=1)],
        throughput=False,
    ),
    "smoke": dict(
        train=dict(imgsz=64, batch=4, amp_epochs=1),
        parity=dict(imgsz=64, batch=2),
        bench=[dict(data="dota8", imgsz=64, batch=2, steps=3, warmup=1)],
        throughput=False,
        rss=False,  # one child process per method costs more than the whole rest of the smoke run
    ),
}


# ----------------------------------------------------------------------------------------------------------------
# Bootstrap: packages from the staged wheels, samples from ../shared or the stage
def _missing_packages() -> list[str]:
    mods = {"ultralytics": "ultralytics", "pywt": "pywavelets", "thop": "ultralytics-thop", "ds2d2_yolo": "ds2d2-yolo"}
    missing = [name for mod, name in mods.items() if find_spec(mod) is None]
    if "ds2d2-yolo" not in missing and find_spec("ds2d2_yolo.cfg") is None:
        missing.append("ds2d2-yolo")  # a bare checkout on sys.path lacks the cfg/ -> ds2d2_yolo.cfg mapping
    return missing


def ensure_packages(stage: Path) -> list[str]:
    """Install what is missing from the staged wheels (no index), then restart this script with them on the path.

    Args:
        stage (Path): The staging folder (`wheels/` inside it).

    Returns:
        (list[str]): The packages the restarted process got from the stage (empty when nothing was missing).
    """
    if os.environ.get(SITE_ENV):
        still = _missing_packages()
        if still:
            raise SystemExit(f"gpu_check: {still} still missing after installing from {stage}/wheels")
        return os.environ.get("DS2D2_GPU_CHECK_INSTALLED", "").split(",")
    missing = _missing_packages()
    if not missing:
        return []
    site = Path(tempfile.gettempdir()) / "ds2d2-gpu-check-site"
    shutil.rmtree(site, ignore_errors=True)
    wanted = {"ultralytics": "ultralytics-", "pywavelets": "pywavelets-", "ultralytics-thop": "ultralytics_thop-"}
    wheels = []
    for name in missing:
        if name == "ds2d2-yolo":
            continue
        found = sorted((stage / "wheels").glob(f"{wanted[name]}*.whl"))
        if len(found) != 1:
            raise SystemExit(
                f"gpu_check: {name} is not importable and {stage}/wheels holds {len(found)} wheels for it; "
                "run `python benchmarks/stage_gpu_check.py` where pip works and carry the folder"
            )
        wheels.append(str(found[0]))
    if wheels:
        cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile"]
        subprocess.run([*cmd, "--target", str(site), *wheels], check=True)
    if "ds2d2-yolo" in missing:
        # What a non-editable install lays out (setup.cfg maps cfg/ to ds2d2_yolo.cfg), without needing a build.
        shutil.copytree(REPO / "ds2d2_yolo", site / "ds2d2_yolo", ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copytree(REPO / "cfg", site / "ds2d2_yolo" / "cfg", ignore=shutil.ignore_patterns("__pycache__"))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(site), env.get("PYTHONPATH", "")) if p)
    env[SITE_ENV] = str(site)
    env["DS2D2_GPU_CHECK_INSTALLED"] = ",".join(missing)
    print(f"gpu_check: installed {missing} from {stage} into {site}; restarting", flush=True)
    os.execve(sys.executable, [sys.executable, *sys.argv], env)
    return missing  # not reached


def shared_root(stage: Path) -> Path:
    """The real samples and teacher: ../shared beside the checkout (the tracks' folder), else the staged copy."""
    from tracks import shared_data  # after the bootstrap: the tracks import Ultralytics and this package

    beside = shared_data().parent
    for root in (beside, stage / "shared"):
        if (root / "data" / "dota8").is_dir() and (root / "weights" / "yolov8n-obb-dota.pt").is_file():
            return root
    raise SystemExit(f"gpu_check: no DOTA samples in {beside} or {stage / 'shared'}; stage them first")


def results_columns(path: Path) -> dict[str, list[float]]:
    """results.csv as column -> values, as `BaseTrainer.read_results_csv` returns it through polars."""
    import csv

    try:
        with open(path, newline="") as f:
            rows = [{k.strip(): float(v) for k, v in r.items() if k} for r in csv.DictReader(f)]
    except (OSError, ValueError):
        return {}
    return {k: [r[k] for r in rows] for k in (rows[0] if rows else {})}


def patch_polars_free_results() -> bool:
    """Let Ultralytics' trainer read results.csv without polars when polars is missing (it is not staged: 54 MB).

    `BaseTrainer.read_results_csv` imports polars outside its try block, so every checkpoint save would fail.

    Returns:
        (bool): Whether the fallback was installed.
    """
    if find_spec("polars") is not None:
        return False
    from ultralytics.engine.trainer import BaseTrainer

    BaseTrainer.read_results_csv = lambda self: results_columns(self.csv)
    return True


# ----------------------------------------------------------------------------------------------------------------
# Helpers
def sync(device: torch.device) -> None:
    """Wait for queued CUDA work, so wall-clock times cover the kernels and not just their launch."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def to_device(batch: dict, device: torch.device) -> dict:
    """A batch dict with its tensors on `device`."""
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


def rel(a: float, b: float) -> float:
    """|a - b| / |b| (inf when b is 0 and a is not)."""
    return abs(a - b) / abs(b) if b else (0.0 if a == b else math.inf)


def finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


@contextmanager
def strict_fp32(device: torch.device):
    """Turn TF32 off for an fp32 reference (cuDNN convolutions use TF32 by default on Ampere and later)."""
    old = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = old


def student_yaml(work: Path) -> str:
    """The benchmark student: yolov8-obb at depth 0.33, width 0.125, 15 DOTA classes."""
    from ds2d2_yolo.tools.models import scaled_model_yaml

    return str(scaled_model_yaml("yolov8-obb.yaml", 0.33, 0.125, nc=15, out=work / "student-obb.yaml"))


def dota8_yaml(shared: Path, work: Path) -> str:
    """dota8's data yaml pointed at its real location."""
    import yaml

    root = shared / "data" / "dota8"
    cfg = yaml.safe_load((root / "dota8.yaml").read_text())
    cfg["path"] = str(root)
    p = work / "dota8.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return str(p)


# ----------------------------------------------------------------------------------------------------------------
# Sections
def section_env(device: torch.device, installed: list[str], polars_patched: bool, stage: Path) -> dict:
    """Device, versions and provenance."""
    from importlib.metadata import PackageNotFoundError, version

    import ultralytics

    import ds2d2_yolo

    try:
        pywt_version = version("pywavelets")  # pywt.__version__ of the 1.9.0 wheel still says 1.8.0
    except PackageNotFoundError:
        import pywt

        pywt_version = pywt.__version__
    out = {
        "status": "pass",
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_name(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "cuda_available": torch.cuda.is_available(),
        "bf16_supported": torch.cuda.is_bf16_supported() if device.type == "cuda" else None,
        "python": platform.python_version(),
        "ultralytics": ultralytics.__version__,
        "pywavelets": pywt_version,
        "ds2d2_yolo": ds2d2_yolo.__version__,
        "cpu_threads": torch.get_num_threads(),
        "installed_from_stage": [p for p in installed if p],
        "polars_fallback": polars_patched,
        "commit": _commit(stage),
    }
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        out.update(capability=f"{p.major}.{p.minor}", memory_gb=round(p.total_memory / 2**30, 1))
    print(
        f"gpu_check: device {out['device']} ({out['device_name']}), torch {out['torch']}, CUDA {out['cuda']}, "
        f"cuDNN {out['cudnn']}, Ultralytics {out['ultralytics']}, PyWavelets {out['pywavelets']}",
        flush=True,
    )
    return out


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} ({os.cpu_count()} cores)"
    except OSError:
        pass
    return platform.processor() or "cpu"


def _commit(stage: Path) -> str:
    """This checkout's commit; on a copy without .git, the one recorded when the stage was made."""
    try:
        r = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "-uno"], cwd=REPO, capture_output=True, text=True)
        return r.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        manifest = stage / "MANIFEST.json"
        if manifest.is_file():
            return json.loads(manifest.read_text()).get("commit", "unknown") + " (from the stage)"
        return "unknown"


def section_cuda_tests(device: torch.device, work: Path) -> dict:
    """Run the tests whose name holds "cuda" (they skip without a GPU), from the files that mention CUDA."""
    import xml.etree.ElementTree as ET

    files = sorted(
        str(p.relative_to(REPO))
        for p in (REPO / "tests").glob("test_*.py")
        if p.name != "test_gpu_check.py" and "cuda" in p.read_text()  # that test runs this script
    )
    junit = work / "cuda_tests.xml"
    # -P: the tests import this package from where it is installed (the staged site), not from the bare checkout.
    py = [sys.executable, "-P"] if sys.version_info >= (3, 11) else [sys.executable]
    # `-o addopts=`: the ini's `-n auto` needs pytest-xdist, which the GPU machine may lack, and a handful of tests
    # gain nothing from starting workers.
    cmd = [*py, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts=", "-k", "cuda", f"--junitxml={junit}"]
    cmd += files
    t = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    tests = []
    if junit.is_file():
        for case in ET.parse(junit).getroot().iter("testcase"):
            outcome, reason = "passed", ""
            for tag in ("failure", "error", "skipped"):
                el = case.find(tag)
                if el is not None:
                    outcome, reason = tag if tag != "failure" else "failed", (el.get("message") or "")[:300]
            tests.append({"name": f"{case.get('classname')}::{case.get('name')}", "outcome": outcome, "reason": reason})
    n = {f"n_{k}": sum(x["outcome"] == k for x in tests) for k in ("passed", "skipped", "failed", "error")}
    bad = n["n_failed"] or n["n_error"] or not tests or proc.returncode not in (0, 5)
    if bad:
        status = "fail"
    elif device.type == "cuda":
        status = "pass" if n["n_passed"] and not n["n_skipped"] else "fail"  # on a GPU, a skip means CUDA was not seen
    else:
        status = "pass" if n["n_passed"] else "skip"  # CPU mode on a machine that has a GPU still runs them
    return {
        "status": status,
        "files": files,
        **n,
        "tests": tests,
        "returncode": proc.returncode,
        "wall_s": round(time.perf_counter() - t, 1),
        "output_tail": (proc.stdout + proc.stderr)[-1500:] if bad else "",
    }


def results_rows(path: Path) -> list[dict[str, float]]:
    import csv

    with open(path, newline="") as f:
        return [{k.strip(): float(v) for k, v in row.items() if k} for row in csv.DictReader(f)]


def section_train(device: torch.device, prof: dict, shared: Path, work: Path, keep: dict) -> dict:
    """A 2-epoch distill=ds2d2 OBB run on dota8 (AMP on CUDA), its KD terms, and best.pt validated on CPU.

    The trained wrapper is left in `keep["model"]` for the parity section.
    """
    from ultralytics import YOLO

    from ds2d2_yolo import DS2D2Trainer
    from ds2d2_yolo.config import REFERENCE

    data = dota8_yaml(shared, work)
    cuda = device.type == "cuda"
    overrides = dict(
        model=student_yaml(work),
        data=data,
        teacher=str(shared / "weights" / "yolov8n-obb-dota.pt"),
        distill="ds2d2",
        **REFERENCE,  # the full method, so both streams and the amplifier run on the device
        epochs=2,
        imgsz=prof["imgsz"],
        batch=prof["batch"],
        amp_epochs=prof["amp_epochs"],
        device=device.index if cuda else "cpu",
        amp=True,  # Ultralytics turns AMP off on CPU by itself
        workers=0,
        plots=False,
        val=True,
        project=str(work / "train"),
        name="ds2d2",
        exist_ok=True,
        verbose=False,
        seed=0,
        warmup_epochs=0,  # 4 tiles are one batch an epoch: no warm-up, one optimizer step per batch
        nbs=prof["batch"],
    )
    t = time.perf_counter()
    trainer = DS2D2Trainer(overrides=overrides)
    trainer.train()
    train_s = time.perf_counter() - t
    rows = results_rows(Path(trainer.save_dir) / "results.csv")
    terms = {k: [r.get(f"train/{k}", math.nan) for r in rows] for k in TERMS}
    terms_ok = len(rows) == 2 and all(finite(v) and v != 0 for vs in terms.values() for v in vs)
    skipped = dict(getattr(trainer.model, "skipped", {}))  # non-finite terms the wrapper replaced by 0
    amp_used, best = bool(trainer.amp), Path(trainer.best)
    keep["model"] = trainer.model
    del trainer  # its dataloaders and optimizer are not needed again

    t = time.perf_counter()
    model = YOLO(str(best))
    r = model.val(
        data=data,
        imgsz=prof["imgsz"],
        batch=4,
        device="cpu",
        workers=0,
        plots=False,
        verbose=False,
        project=str(work / "val"),
        name="best-cpu",
        exist_ok=True,
    )
    reload = {
        "device": "cpu",
        "task": model.task,
        "model_class": type(model.model).__name__,
        "mAP50": float(r.box.map50),
        "mAP50-95": float(r.box.map),
        "wall_s": round(time.perf_counter() - t, 1),
    }
    reload_ok = best.is_file() and model.task == "obb" and finite(reload["mAP50"]) and finite(reload["mAP50-95"])
    ok = terms_ok and reload_ok and not skipped
    return {
        "status": "pass" if ok else "fail",
        "epochs": len(rows),
        "imgsz": prof["imgsz"],
        "batch": prof["batch"],
        "amp": amp_used,
        "terms": terms,
        "terms_finite_nonzero": terms_ok,
        "nonfinite_skipped": skipped,
        "best_pt": str(best),
        "best_pt_reloaded": reload_ok,
        "reload": reload,
        "train_s": round(train_s, 1),
    }


def _neck_params(student: torch.nn.Module) -> list[torch.nn.Parameter]:
    """Parameters of the neck: the layers after the backbone and before the detection head."""
    start = len(student.yaml["backbone"])
    return [p for m in student.model[start:-1] for p in m.parameters() if p.requires_grad]


def section_parity(device: torch.device, prof: dict, shared: Path, work: Path, trained: Any = None) -> dict:
    """DS2D2 terms and their neck gradients under autocast fp16 and bf16 against fp32, on one fixed batch.

    Args:
        device (torch.device): Where to run.
        prof (dict): imgsz and batch.
        shared (Path): Samples and teacher.
        work (Path): Scratch folder.
        trained (DS2D2Model | None): The train section's wrapper (trained student, adapters and amplifier), the
            realistic case; without it, step_cost's seeded student with an untrained copy of the teacher head.
    """
    import step_cost  # after the bootstrap, like every import of Ultralytics and this package here

    if trained is not None:
        model, source = trained.to(device).train(), "the train section's wrapper (2 epochs, trained amplifier)"
    else:
        teacher = str(shared / "weights" / "yolov8n-obb-dota.pt")
        model = step_cost.build("ds2d2-reference", student_yaml(work), teacher, prof["imgsz"], 15).to(device)
        source = "step_cost's seeded student, untrained amplifier (the train section left no model)"
    batch = to_device(step_cost._batches(dota8_yaml(shared, work), prof["imgsz"], prof["batch"], 1)[0], device)
    neck = _neck_params(model.student)
    captured: dict[str, torch.Tensor] = {}
    distill_terms = model.distill_terms

    def spy(*args, **kwargs):
        out = distill_terms(*args, **kwargs)  # the live terms, before loss() detaches them into items
        captured.update(out)
        return out

    model.distill_terms = spy

    def run(dtype: torch.dtype | None) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
        captured.clear()
        model.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            model.loss(batch)
        vals, grads = {}, {}
        for k in TERMS:
            vals[k] = float(captured[k].detach())
            g = torch.autograd.grad(captured[k], neck, retain_graph=True, allow_unused=True)
            grads[k] = torch.cat([(x if x is not None else torch.zeros_like(p)).flatten() for x, p in zip(g, neck)])
        return vals, grads

    def compare(vals, grads) -> dict[str, Any]:
        term_rel = {k: rel(vals[k], ref_vals[k]) for k in TERMS}
        grad_rel, grad_cos = {}, {}
        for k in TERMS:
            a, b = grads[k].float(), ref_grads[k].float()
            nb = float(b.norm())
            grad_rel[k] = float((a - b).norm()) / nb if nb else math.inf
            grad_cos[k] = float(torch.nn.functional.cosine_similarity(a, b, dim=0)) if nb else math.nan
        ok = all(finite(v) for v in vals.values()) and all(bool(torch.isfinite(g).all()) for g in grads.values())
        return {
            "terms": vals,
            "term_rel": term_rel,
            "max_term_rel": max(term_rel.values()),
            "grad_rel": grad_rel,
            "grad_cos": grad_cos,
            "all_finite": ok,
        }

    with strict_fp32(device):
        ref_vals, ref_grads = run(None)
        # Control: the same fp32 pass again. Anything here is run-to-run noise (atomics), not precision.
        repeat = compare(*run(None))
    cpu = device.type == "cpu"
    out: dict[str, Any] = {
        "imgsz": prof["imgsz"],
        "batch": prof["batch"],
        "model": source,
        "reference": "fp32 (TF32 off)",
        "fp32": ref_vals,
        "fp32_repeat": {k: repeat[k] for k in ("max_term_rel", "grad_rel")},
        "neck_params": sum(p.numel() for p in neck),
        "target_term_rel": TARGETS["parity_term_rel"],
        # oneDNN's bf16 kernels are not the ones a GPU trains with: on CPU the target is reported, not applied.
        "target_applies": not cpu,
    }
    works, met = [], []
    for name, dtype in (("fp16", torch.float16), ("bf16", torch.bfloat16)):
        if cpu and dtype is torch.float16:
            out[name] = {"status": "skip", "reason": "fp16 autocast is a CUDA path; Ultralytics trains on CPU in fp32"}
            continue
        if not cpu and dtype is torch.bfloat16 and not torch.cuda.is_bf16_supported():
            out[name] = {"status": "skip", "reason": f"{torch.cuda.get_device_name(device)} has no bf16"}
            continue
        t = time.perf_counter()
        r = compare(*run(dtype))
        r["target_met"] = r["max_term_rel"] <= TARGETS["parity_term_rel"]
        r["status"] = "pass" if r["all_finite"] else "fail"
        r["wall_s"] = round(time.perf_counter() - t, 2)
        out[name] = r
        works.append(r["all_finite"])
        met.append(r["target_met"])
    del model.distill_terms  # the spy
    out["max_term_rel"] = max(
        (out[n]["max_term_rel"] for n in ("fp16", "bf16") if "max_term_rel" in out[n]), default=None
    )
    out["target_met"] = bool(met) and all(met)
    out["status"] = "pass" if works and all(works) else "fail"  # the target is reported in rec["targets"]
    return out


def _bench_data(cfg: dict, shared: Path, work: Path) -> str:
    if cfg["data"] == "dota8":
        return dota8_yaml(shared, work)
    from tracks import prepare_dota_mini

    os.environ["DS2D2_SHARED_DATA"] = str(shared / "data")
    return str(prepare_dota_mini(work / "dota-mini")["report"])


def section_step_cost(device: torch.device, prof: dict, shared: Path, work: Path) -> dict:
    """Interleaved step times and per-method peak memory for each bench configuration of the profile."""
    import step_cost

    teacher = str(shared / "weights" / "yolov8n-obb-dota.pt")
    student = student_yaml(work)
    cuda = device.type == "cuda"
    precisions = ["fp32", "amp-fp16"] if cuda else ["fp32"]
    configs = []
    for cfg in prof["bench"]:
        data = _bench_data(cfg, shared, work)
        # Batches stay on the host and go to the device one at a time, as in training: a resident stack of them
        # would add the same constant to every method's peak memory and pull the ratios towards 1.
        batches = step_cost._batches(data, cfg["imgsz"], cfg["batch"], cfg["steps"])
        models = {m: step_cost.build(m, student, teacher, cfg["imgsz"], 15).to(device) for m in BENCH_METHODS}
        times = {prec: _interleaved(device, prec, batches, cfg, models) for prec in precisions}
        del models
        gc.collect()
        for prec in precisions:
            row = dict(cfg, precision=prec, device=str(device))
            row["s_per_step"] = times[prec]
            if cuda:
                row["memory_kind"] = "torch.cuda.max_memory_allocated during the steps, one method alone (MB)"
                peaks = {m: _cuda_peak(device, prec, batches, m, cfg, student, teacher) for m in BENCH_METHODS}
                row["peak_mem_mb"] = {m: v[0] for m, v in peaks.items()}
                row["resident_mb"] = {m: v[1] for m, v in peaks.items()}  # weights and buffers before the first step
                row["tf32_convolutions"] = torch.backends.cudnn.allow_tf32  # PyTorch's default, as training runs
            elif prof.get("rss", True):
                row["memory_kind"] = "peak RSS of a child process running the steps (MB, step_cost)"
                a = argparse.Namespace(
                    data=data,
                    teacher=teacher,
                    student=student,
                    imgsz=cfg["imgsz"],
                    batch=cfg["batch"],
                    steps=cfg["steps"],
                    nc=15,
                    warmup=cfg["warmup"],
                    methods=",".join(BENCH_METHODS),
                )
                # A child's peak RSS is its own, so running them side by side changes only the wall time.
                with ThreadPoolExecutor(len(BENCH_METHODS)) as ex:
                    peaks = ex.map(step_cost.peak_rss, BENCH_METHODS, [a] * len(BENCH_METHODS))
                    row["peak_mem_mb"] = dict(zip(BENCH_METHODS, peaks))
            nat = row["s_per_step"]["native"]
            row["time_vs_native"] = {m: v / nat for m, v in row["s_per_step"].items()}
            if "peak_mem_mb" in row:
                row["memory_vs_native"] = {m: v / row["peak_mem_mb"]["native"] for m, v in row["peak_mem_mb"].items()}
            t_ok = row["time_vs_native"]["ds2d2"] <= TARGETS["time_vs_native"]
            m_ok = row.get("memory_vs_native", {}).get("ds2d2", math.inf) <= TARGETS["memory_vs_native"]
            row["target_met"] = {"time": t_ok, "memory": m_ok if "peak_mem_mb" in row else None}
            configs.append(row)
            print(
                f"gpu_check: step cost {cfg['data']} {cfg['imgsz']}px b{cfg['batch']} {prec}: "
                + ", ".join(f"{m} {v * 1e3:.1f} ms" for m, v in row["s_per_step"].items()),
                flush=True,
            )
        del batches
    return {"status": "measured", "configs": configs}  # targets: rec["targets"]


def _timed_step(device: torch.device, prec: str, model, opt, batch) -> float:
    import step_cost

    sync(device)
    t = time.perf_counter()
    with torch.autocast(device.type, dtype=torch.float16, enabled=prec == "amp-fp16"):
        step_cost.step(model, opt, batch)
    sync(device)
    return time.perf_counter() - t


def _interleaved(device: torch.device, prec: str, batches: list[dict], cfg: dict, models: dict) -> dict[str, float]:
    """Median s/step per method, steps alternating in ABBA order over the same batches (as step_cost does)."""
    import step_cost

    opts = {m: step_cost._opt(models[m]) for m in BENCH_METHODS}
    times: dict[str, list[float]] = {m: [] for m in BENCH_METHODS}
    for i, b in enumerate(batches):
        b = to_device(b, device)  # once per step index: every method gets the same tensors
        for m in BENCH_METHODS if i % 2 == 0 else BENCH_METHODS[::-1]:
            dt = _timed_step(device, prec, models[m], opts[m], b)
            if i >= cfg["warmup"]:
                times[m].append(dt)
    return {m: statistics.median(v) for m, v in times.items()}


def _cuda_peak(device, prec, batches, method, cfg, student, teacher) -> tuple[float, float]:
    """Peak allocated CUDA memory (MB) while one method alone runs 4 steps, and what it held before the first."""
    import step_cost

    gc.collect()  # the previous method's models may sit in reference cycles (hooks holding their features)
    torch.cuda.empty_cache()
    model = step_cost.build(method, student, teacher, cfg["imgsz"], 15).to(device)
    opt = step_cost._opt(model)
    resident = torch.cuda.memory_allocated(device) / 2**20
    torch.cuda.reset_peak_memory_stats(device)
    for b in batches[:4]:
        _timed_step(device, prec, model, opt, to_device(b, device))
    peak = torch.cuda.max_memory_allocated(device) / 2**20
    del model, opt
    return peak, resident


def section_throughput(device: torch.device, shared: Path, work: Path, deadline: float, waves: list[int]) -> dict:
    """R1 DOTA-mini seed-runs as parallel processes on the one GPU, as many waves as the time budget allows.

    Each run trains `THROUGHPUT_EPOCHS` epochs; results.csv's clock gives the steady epoch time, the rest of the wall
    time is the fixed part (start-up, amplifier fit, final validation), and the two extrapolate to a full R1 run.
    """
    from regimes import REGIMES
    from tracks import TRACKS, prepare_dota_mini, run_overrides

    os.environ["DS2D2_SHARED_DATA"] = str(shared / "data")
    data = prepare_dota_mini(work / "dota-mini")["tune"]
    cfg, epochs, full = TRACKS["dota"], THROUGHPUT_EPOCHS, int(REGIMES["r1"]["epochs"])
    student = student_yaml(work)
    out: dict[str, Any] = {
        "method": "ds2d2",
        "regime": "r1",
        "split": "tune",
        "epochs_per_run": epochs,
        "full_run_epochs": full,
        "waves": [],
    }
    prev: tuple[int, float] | None = None
    for k in waves:
        left = deadline - time.perf_counter()
        need = 90.0 if prev is None else prev[1] * max(1.0, k / prev[0])  # GPU-bound waves grow with their width
        if left < need:
            out["waves"].append({"parallel": k, "status": "skip", "reason": f"{left:.0f} s left, {need:.0f} s needed"})
            continue
        t = time.perf_counter()
        procs = []
        for seed in range(k):
            # The overrides tracks.run_benchmark gives an R1 run, on the GPU.
            teacher = shared / "weights" / "yolov8n-obb-dota.pt"
            overrides = run_overrides(cfg, "ds2d2", seed, epochs, student, data, teacher, work / "throughput" / f"p{k}")
            overrides.update(device=device.index if device.type == "cuda" else "cpu", **REGIMES["r1"]["extra"])
            spec = {"method": "ds2d2", "seed": seed, "overrides": overrides, "val_every": 0, "commit": "gpu_check"}
            cmd = [sys.executable, str(Path(__file__).resolve()), "--bench-child", json.dumps(spec)]
            procs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
        records, errors = [], []
        for p in procs:
            try:
                so, se = p.communicate(timeout=max(1.0, deadline + 30 - time.perf_counter()))
            except subprocess.TimeoutExpired:
                p.kill()  # past the budget: the wave's finished runs still count
                so, se = p.communicate()
                se += "\n(killed at the time budget)"
            lines = [x for x in so.splitlines() if x.startswith("{")]
            if p.returncode or not lines:
                errors.append(se[-600:])
                continue
            records.append(json.loads(lines[-1]))
        wall = time.perf_counter() - t
        wave: dict[str, Any] = {"parallel": k, "wall_s": round(wall, 1), "finished": len(records)}
        wave["failed"] = len(errors)
        if errors:
            wave["error_tail"] = errors[0]
        if records:
            per_epoch = []
            for r in records:
                csv = work / "throughput" / f"p{k}" / f"ds2d2-s{r['seed']}" / "results.csv"
                tt = [row["time"] for row in results_rows(csv)] if csv.is_file() else []
                if len(tt) >= 2:
                    per_epoch.append((tt[-1] - tt[0]) / (len(tt) - 1))  # cumulative seconds; epoch 1 left out
            epoch_s = statistics.median(per_epoch) if per_epoch else wall / epochs
            fixed = max(0.0, wall - epochs * epoch_s)
            run_s = fixed + full * epoch_s
            wave.update(
                s_per_epoch=round(epoch_s, 2),
                fixed_s=round(fixed, 1),
                est_full_run_s=round(run_s, 1),
                est_seed_runs_per_min=round(len(records) * 60 / run_s, 3),
                s_per_step=statistics.median(r["s_per_step"] for r in records),
            )
        wave["status"] = "measured" if records else "fail"
        prev = (k, wall)
        out["waves"].append(wave)
    measured = [w for w in out["waves"] if w.get("status") == "measured"]
    out["status"] = "measured" if measured else "skip"
    if measured:
        best = max(measured, key=lambda w: w["est_seed_runs_per_min"])
        out["best"] = {k: best[k] for k in ("parallel", "est_seed_runs_per_min", "est_full_run_s")}
    return out


def bench_child(spec: str) -> None:
    """One track run in this process (`compare.run_one`), with the polars fallback the stage may need."""
    patch_polars_free_results()
    from ds2d2_yolo.tools.compare import run_one

    print(json.dumps(run_one(json.loads(spec))), flush=True)


# ----------------------------------------------------------------------------------------------------------------
# Report
def _fmt(v: Any, spec: str = ".3g") -> str:
    return format(v, spec) if isinstance(v, (int, float)) and not isinstance(v, bool) else str(v)


def _note(name: str, s: dict) -> str:
    """One line on a section for the summary table."""
    if s.get("error") or s.get("reason"):
        return str(s.get("error") or s.get("reason"))[:160].replace("|", "/")
    if name == "env" and s:
        return f"{s.get('device_name')}; from the stage: {', '.join(s.get('installed_from_stage') or []) or 'nothing'}"
    if name == "cuda_tests" and "n_passed" in s:
        return f"{s['n_passed']} passed, {s['n_skipped']} skipped, {s['n_failed'] + s['n_error']} failed"
    if name == "train" and "terms" in s:
        return (
            f"terms finite and non-zero: {s['terms_finite_nonzero']}; best.pt validated on CPU: "
            f"{s['best_pt_reloaded']}; amp {s['amp']}"
        )
    if name == "parity" and "fp32" in s:
        got = [f"{p} {s[p]['max_term_rel']:.1e}" for p in ("fp16", "bf16") if "max_term_rel" in s.get(p, {})]
        return "worst term rel " + (", ".join(got) or "-")
    if name == "step_cost" and s.get("configs"):
        c = s["configs"][0]
        mem = c.get("memory_vs_native", {}).get("ds2d2")
        return f"ds2d2 {c['time_vs_native']['ds2d2']:.2f}x native time" + (f", {mem:.2f}x memory" if mem else "")
    if name == "throughput" and s.get("best"):
        return f"best: {s['best']['est_seed_runs_per_min']} seed-runs/min at {s['best']['parallel']} in parallel"
    return ""


def write_markdown(rec: dict, path: Path) -> None:
    """The human summary of the JSON record."""
    env = rec["env"]
    lines = [
        f"# DS2D2 device check: {env.get('device_name')} ({rec['mode']})",
        "",
        f"{rec['date']}, torch {env.get('torch')}, CUDA {env.get('cuda')}, cuDNN {env.get('cudnn')}, "
        f"Ultralytics {env.get('ultralytics')}, PyWavelets {env.get('pywavelets')}, commit {env.get('commit')}; "
        f"{rec['wall_s']:.0f} s in all. Overall: **{rec['status']}**.",
        "",
        "| section | status | note |",
        "|---|---|---|",
    ]
    for name in ("env", "cuda_tests", "train", "parity", "step_cost", "throughput"):
        s = rec.get(name, {})
        lines.append(f"| {name} | {s.get('status', '-')} | {_note(name, s)} |")
    tg = rec.get("targets")
    if tg:
        word = {True: "met", False: "missed", None: "not measured"}
        where = "CUDA" if tg["applies"] else "information only: the targets apply to CUDA"
        lines += [
            "",
            f"Targets ({where}): parity <= {TARGETS['parity_term_rel']:g} {word[tg['parity_term_rel']['met']]}, "
            f"ds2d2 time <= {TARGETS['time_vs_native']}x native {word[tg['time_vs_native']['met']]}, "
            f"memory <= {TARGETS['memory_vs_native']}x {word[tg['memory_vs_native']['met']]}.",
        ]
    ct = rec.get("cuda_tests", {})
    if "tests" in ct:
        lines += ["", "## CUDA tests", ""]
        lines += [f"- `{t['name']}`: {t['outcome']} {t['reason']}".rstrip() for t in ct["tests"]]
    tr = rec.get("train", {})
    if "terms" in tr:
        lines += [
            "",
            f"## 2-epoch ds2d2 run ({tr['imgsz']} px, batch {tr['batch']}, amp {tr['amp']}, {tr['train_s']} s)",
            "",
            "| term | epoch 1 | epoch 2 |",
            "|---|---|---|",
        ]
        lines += [f"| {k} | {_fmt(v[0], '.4g')} | {_fmt(v[-1], '.4g')} |" for k, v in tr["terms"].items()]
        r = tr["reload"]
        lines += [
            "",
            f"best.pt reloaded on {r['device']} as {r['model_class']}: mAP50 {r['mAP50']:.4f}, "
            f"mAP50-95 {r['mAP50-95']:.4f}; non-finite terms skipped: {tr['nonfinite_skipped'] or 'none'}.",
        ]
    pa = rec.get("parity", {})
    if "fp32" in pa:
        lines += ["", f"## Mixed-precision parity ({pa['imgsz']} px, batch {pa['batch']}, vs {pa['reference']})", ""]
        lines += ["| term | fp32 | fp16 rel | bf16 rel | fp16 grad rel | bf16 grad rel |", "|---|---|---|---|---|---|"]
        for k in TERMS:
            cells = [_fmt(pa["fp32"][k], ".5g")]
            for key in ("term_rel", "grad_rel"):
                for prec in ("fp16", "bf16"):
                    d = pa.get(prec, {})
                    cells.append(_fmt(d[key][k], ".2e") if key in d else d.get("status", "-"))
            lines.append(f"| {k} | " + " | ".join(cells) + " |")
        for prec in ("fp16", "bf16"):
            if pa.get(prec, {}).get("status") == "skip":
                lines.append(f"\n{prec} skipped: {pa[prec]['reason']}.")
        rp = pa["fp32_repeat"]
        lines.append(
            f"\nModel: {pa['model']}. Control, the fp32 pass repeated: max term rel {rp['max_term_rel']:.1e}, "
            f"max grad rel {max(rp['grad_rel'].values()):.1e}. Gradients: relative L2 difference of each term's "
            f"gradient on the student's neck ({pa['neck_params']} parameters)."
        )
        judged = "applies" if pa["target_applies"] else "reported only (CPU: bf16 must run and stay finite)"
        lines.append(
            f"Target: every term within {pa['target_term_rel']:g} (relative) of fp32, {judged}: "
            f"{'met' if pa['target_met'] else 'missed'} (worst {_fmt(pa['max_term_rel'], '.2e')})."
        )
    sc = rec.get("step_cost", {})
    for c in sc.get("configs", []):
        where = "CUDA" if c["device"].startswith("cuda") else "CPU (targets apply to CUDA; information only)"
        lines += [
            "",
            f"## Step cost on {where}: {c['data']}, {c['imgsz']} px, batch {c['batch']}, {c['precision']}, "
            f"{c['steps'] - c['warmup']} timed steps each, interleaved",
            "",
            "| method | s/step | vs native | peak memory (MB) | vs native |",
            "|---|---|---|---|---|",
        ]
        for m in BENCH_METHODS:
            mem = c.get("peak_mem_mb", {}).get(m)
            memr = c.get("memory_vs_native", {}).get(m)
            lines.append(
                f"| {m} | {c['s_per_step'][m]:.4f} | {c['time_vs_native'][m]:.2f}x | "
                f"{_fmt(mem, '.0f') if mem else '-'} | {f'{memr:.2f}x' if memr else '-'} |"
            )
        lines.append("")  # ends the table
        if "memory_kind" in c:
            lines.append(f"Memory: {c['memory_kind']}.")
        lines.append(
            f"Targets ds2d2 <= {TARGETS['time_vs_native']}x time, <= {TARGETS['memory_vs_native']}x memory: "
            f"time {'met' if c['target_met']['time'] else 'missed'}, memory "
            f"{ {True: 'met', False: 'missed', None: 'not measured'}[c['target_met']['memory']] }."
        )
    tp = rec.get("throughput", {})
    if tp.get("waves"):
        lines += [
            "",
            f"## Throughput: R1 {tp['method']} on DOTA-mini {tp['split']}, {tp['epochs_per_run']} epochs a run",
            "",
            f"| parallel | wall s | s/epoch | est. {tp['full_run_epochs']}-epoch run s | est. seed-runs/min |",
            "|---|---|---|---|---|",
        ]
        for w in tp["waves"]:
            if w.get("status") == "measured":
                lines.append(
                    f"| {w['parallel']} | {w['wall_s']} | {w['s_per_epoch']} | {w['est_full_run_s']} | "
                    f"{w['est_seed_runs_per_min']} |"
                )
            else:
                lines.append(
                    f"| {w['parallel']} | {w.get('status')}: {w.get('reason', w.get('error_tail', ''))[:80]} | | | |"
                )
    path.write_text("\n".join(lines) + "\n")


# ----------------------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    """Run the check and write gpu_check.json and gpu_check.md; return the exit code."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="0", help="CUDA index (0) or cpu")
    p.add_argument("--quick", action="store_true", help="small images, dota8 only, no throughput")
    p.add_argument("--smoke", action="store_true", help="the test's size: --quick with the smallest images and steps")
    p.add_argument("--out", default="runs/gpu_check", help="folder for gpu_check.json and gpu_check.md")
    p.add_argument("--work", default=None, help="scratch folder for runs and data (default: a temporary folder)")
    p.add_argument("--stage", default=str(STAGE), help="staged wheels, samples and teacher (stage_gpu_check.py)")
    p.add_argument("--budget-s", type=float, default=360.0, help="wall-clock budget; throughput uses what is left")
    p.add_argument("--parallel", default="1,4,8", help="throughput waves: seed-runs at once")
    p.add_argument("--skip", default="", help="comma-separated sections to leave out (e.g. throughput)")
    p.add_argument("--bench-child", default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.bench_child:
        bench_child(a.bench_child)
        return 0
    t0 = time.perf_counter()
    os.environ.setdefault("YOLO_OFFLINE", "1")  # no machine this runs on may reach the network
    stage = Path(a.stage).resolve()
    installed = ensure_packages(stage)
    polars_patched = patch_polars_free_results()
    if a.device == "cpu":
        device = torch.device("cpu")
    else:
        if not torch.cuda.is_available():
            raise SystemExit(f"gpu_check: --device {a.device} asked for CUDA but torch sees no GPU; use --device cpu")
        device = torch.device("cuda", int(a.device))
        torch.cuda.set_device(device)
    mode = ("cuda" if device.type == "cuda" else "cpu") + ("-quick" if a.quick or a.smoke else "")
    prof = PROFILES["smoke" if a.smoke else mode]
    shared = shared_root(stage)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(a.work) if a.work else Path(tempfile.mkdtemp(prefix="ds2d2-gpu-check-"))
    work.mkdir(parents=True, exist_ok=True)
    skip = {s.strip() for s in a.skip.split(",") if s.strip()}
    rec: dict[str, Any] = {
        "date": datetime.now().astimezone().isoformat(timespec="seconds"),
        "mode": mode + (" (smoke)" if a.smoke else ""),
        "argv": sys.argv[1:] if argv is None else argv,
        "shared": str(shared),
    }

    def run(name: str, fn: Callable[[], dict]) -> None:
        if name in skip:
            rec[name] = {"status": "skip", "reason": "--skip"}
            return
        t = time.perf_counter()
        print(f"gpu_check: {name} ...", flush=True)
        try:
            rec[name] = fn()
        except Exception as e:  # one broken section must not hide the others' results
            rec[name] = {"status": "error", "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}
        rec[name]["section_s"] = round(time.perf_counter() - t, 1)
        print(f"gpu_check: {name} {rec[name]['status']} ({rec[name]['section_s']} s)", flush=True)
        _save(rec, out, t0)  # a run cut off by its time limit still leaves what it finished

    run("env", lambda: section_env(device, installed, polars_patched, stage))
    run("cuda_tests", lambda: section_cuda_tests(device, work))
    keep: dict[str, Any] = {}
    run("train", lambda: section_train(device, prof["train"], shared, work, keep))
    run("parity", lambda: section_parity(device, prof["parity"], shared, work, keep.pop("model", None)))
    run("step_cost", lambda: section_step_cost(device, prof, shared, work))
    if prof["throughput"]:
        waves = [int(k) for k in a.parallel.split(",") if k.strip()]
        run("throughput", lambda: section_throughput(device, shared, work, t0 + a.budget_s, waves))
    else:
        rec["throughput"] = {"status": "skip", "reason": "only in full mode on CUDA (not --quick, not CPU)"}
    rec["targets"] = targets_summary(rec, device.type == "cuda")
    gate = ("env", "cuda_tests", "train", "parity")
    failed = [n for n in gate if rec[n]["status"] in ("fail", "error")]
    failed += [n for n in ("step_cost", "throughput") if rec[n]["status"] == "error"]
    rec["status"] = "fail" if failed else "pass"
    rec["failed"] = failed
    _save(rec, out, t0)
    if not a.work:
        shutil.rmtree(work, ignore_errors=True)
    print(f"gpu_check: {rec['status']} in {rec['wall_s']:.0f} s -> {out / 'gpu_check.json'}", flush=True)
    return 1 if failed else 0


def targets_summary(rec: dict, cuda: bool) -> dict[str, Any]:
    """Each target with whether it was met (None: not measured); they apply to CUDA, a CPU run only reports them."""
    pa, configs = rec.get("parity", {}), rec.get("step_cost", {}).get("configs", [])
    mem = [c["target_met"]["memory"] for c in configs if c["target_met"]["memory"] is not None]
    met = {
        "parity_term_rel": pa.get("target_met") if pa.get("max_term_rel") is not None else None,
        "time_vs_native": all(c["target_met"]["time"] for c in configs) if configs else None,
        "memory_vs_native": all(mem) if mem else None,
    }
    out: dict[str, Any] = {k: {"target": TARGETS[k], "met": v} for k, v in met.items()}
    out["applies"] = cuda
    return out


def _save(rec: dict, out: Path, t0: float) -> None:
    rec["wall_s"] = round(time.perf_counter() - t0, 1)
    rec.setdefault("status", "incomplete")
    (out / "gpu_check.json").write_text(json.dumps(rec, indent=1, default=str))
    write_markdown(rec, out / "gpu_check.md")


if __name__ == "__main__":
    sys.exit(main())
