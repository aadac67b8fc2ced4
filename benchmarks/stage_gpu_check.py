"""Stage what `gpu_check.py` needs on the offline GPU machine into `.gpu_stage/` (git-ignored; never commit it).

The GPU machine has PyTorch, torchvision, NumPy, OpenCV (headless), Matplotlib, Pillow, PyYAML, Requests, psutil,
SciPy and pytest, but no package registry and no ../shared. This script, run where pip reaches PyPI, gathers:

- wheels/: Ultralytics, PyWavelets and ultralytics-thop at the versions installed here, for the GPU machine's
  Python (3.12, manylinux x86-64), without dependencies. Not staged: polars (a 54 MB wheel, over the transfer
  budget; gpu_check reads results.csv with the csv module instead) and ultralytics-platform (not imported by
  training or validation).
- shared/: the dota8 tiles, the yolov8n-obb-dota teacher and, unless --quick, the DOTA devkit samples the full
  mode cuts into DOTA-mini (step cost at 320 px batch 16, throughput), with their MANIFEST and PROVENANCE files.
- MANIFEST.json: commit, versions and sizes (the device copy of the checkout may carry no .git).

    python benchmarks/stage_gpu_check.py            # about 36 MB
    python benchmarks/stage_gpu_check.py --quick    # about 14 MB, for `gpu_check.py --quick`
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from datetime import datetime
from importlib.metadata import version
from pathlib import Path

from tracks import shared_data

REPO = Path(__file__).resolve().parents[1]
LIMIT_MB = 64  # the device call's whole working tree, this folder included
WHEELS = ("ultralytics", "pywavelets", "ultralytics-thop")
# pip matches each manylinux tag exactly; these cover the wheels of the staged packages.
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")
QUICK_DATA = ("dota8",)
FULL_DATA = ("dota8", "dota-devkit-example", "dota-devkit-yolo-demo")
TEACHER = "yolov8n-obb-dota.pt"


def _copy_tree(src: Path, dst: Path) -> None:
    """Copy files only (the sources are read-only; their modes must not make the stage read-only too)."""
    for f in sorted(src.rglob("*")):
        if f.is_file() and not f.name.endswith(".cache"):
            (dst / f.relative_to(src)).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(f, dst / f.relative_to(src))


def _size_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20


def _tree_mb() -> float:
    """Size of what else travels: tracked files plus untracked files git does not ignore."""
    r = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO, capture_output=True
    )
    files = [REPO / f for f in r.stdout.decode().split("\0") if f]
    return sum(f.stat().st_size for f in files if f.is_file()) / 2**20


def stage(out: Path, shared: Path, quick: bool, python_version: str) -> dict:
    """Fill `out` with wheels, samples and the teacher; return the manifest written to `out/MANIFEST.json`."""
    wheels = out / "wheels"
    shutil.rmtree(wheels, ignore_errors=True)  # one version of each: two stop the install
    pins = [f"{n}=={version(n)}" for n in WHEELS]
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "-d", str(wheels)]
    cmd += ["--python-version", python_version, "--implementation", "cp"]
    for p in PLATFORMS:
        cmd += ["--platform", p]
    subprocess.run([*cmd, *pins], check=True)

    dst = out / "shared"
    shutil.rmtree(dst, ignore_errors=True)
    for name in QUICK_DATA if quick else FULL_DATA:
        _copy_tree(shared / "data" / name, dst / "data" / name)
    for f in ("data/MANIFEST.md", f"weights/{TEACHER}", "weights/PROVENANCE.md"):
        if (shared / f).is_file():
            (dst / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(shared / f, dst / f)
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    manifest = {
        "date": datetime.now().astimezone().isoformat(timespec="seconds"),
        "commit": commit or "unknown",
        "quick_only": quick,
        "python_version": python_version,
        "pins": pins,
        "wheels": sorted(f.name for f in wheels.glob("*.whl")),
        "data": list(QUICK_DATA if quick else FULL_DATA),
        "stage_mb": round(_size_mb(out), 1),
        "tree_mb": round(_tree_mb(), 1),
    }
    (out / "MANIFEST.json").write_text(json.dumps(manifest, indent=1))
    return manifest


def main() -> None:
    """Stage, then check the whole transfer fits the device call's limit."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(REPO / ".gpu_stage"))
    p.add_argument("--shared", default=str(shared_data().parent), help="the real samples and teachers")
    p.add_argument("--quick", action="store_true", help="dota8 only (enough for gpu_check.py --quick)")
    p.add_argument("--python-version", default="3.12", help="the GPU machine's Python, for PyWavelets' wheel")
    a = p.parse_args()
    shared = Path(a.shared)
    if not (shared / "weights" / TEACHER).is_file():
        raise SystemExit(f"{shared / 'weights' / TEACHER} not found; pass --shared")
    m = stage(Path(a.out), shared, a.quick, a.python_version)
    total = m["stage_mb"] + m["tree_mb"]
    print(json.dumps(m, indent=1))
    print(f"stage {m['stage_mb']} MB + working tree {m['tree_mb']} MB = {total:.1f} MB (limit {LIMIT_MB} MB)")
    if total > LIMIT_MB:
        raise SystemExit(f"over the {LIMIT_MB} MB a device call carries; stage with --quick")


if __name__ == "__main__":
    main()
