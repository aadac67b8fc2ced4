"""Shared fixtures: tiny models, tiny teachers, small datasets (synthetic, and the real samples in ../shared)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("YOLO_OFFLINE", "1")
# Under pytest-xdist each worker gets an equal share of the cores (and passes it to the processes its tests start):
# N workers each running torch on every core would oversubscribe them and run slower than one.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1:
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // _WORKERS)))
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
DATA = SHARED / "data"
WEIGHTS = SHARED / "weights"
V8_TEACHER = WEIGHTS / "yolov8n-obb-dota.pt"
Y26_TEACHER = WEIGHTS / "yolo26n-obb-dota.pt"


def need_shared(path: Path) -> Path:
    """Skip the calling test, with the reason, when a file from ../shared is not present (a user's clone)."""
    if not path.exists():
        pytest.skip(f"{path} not present: real DOTA samples/teachers live in ../shared (CI has them, clones do not)")
    return path


def save_checkpoint(model: torch.nn.Module, path: Path, names: dict[int, str], task: str) -> Path:
    """Save a model as a minimal Ultralytics checkpoint, like a trained teacher file."""
    model.names = names
    model.args = {"imgsz": 64, "task": task}
    torch.save({"model": model, "train_args": {"task": task}, "epoch": -1}, path)
    return path


@pytest.fixture(scope="session")
def synth_obb(tmp_path_factory) -> Path:
    """A small synthetic OBB dataset (3 classes) at 64 px."""
    from ds2d2_yolo.tools.synthetic import make_dataset

    return make_dataset(tmp_path_factory.mktemp("synth_obb"), n_train=8, n_val=4, imgsz=64, task="obb", seed=0)


@pytest.fixture(scope="session")
def synth_det(tmp_path_factory) -> Path:
    """A small synthetic detect dataset (3 classes) at 64 px."""
    from ds2d2_yolo.tools.synthetic import make_dataset

    return make_dataset(tmp_path_factory.mktemp("synth_det"), n_train=8, n_val=4, imgsz=64, task="detect", seed=0)


def tiny_yaml(tmp: Path, base: str, width: float, nc: int = 3) -> Path:
    """Write a scaled-down Ultralytics model yaml."""
    from ds2d2_yolo.tools.models import scaled_model_yaml

    return scaled_model_yaml(base, depth=0.33, width=width, nc=nc, out=tmp / f"tiny-{width}-{base}")


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    """Student yamls (width 1/16) and teacher checkpoints (width 1/8, untrained) for detect and OBB, 3 classes."""
    from ultralytics.nn.tasks import DetectionModel, OBBModel

    from ds2d2_yolo.tools.synthetic import CLASSES

    tmp = tmp_path_factory.mktemp("models")
    names = dict(enumerate(CLASSES))
    out = {}
    for task, base, cls in (("obb", "yolov8-obb.yaml", OBBModel), ("detect", "yolov8.yaml", DetectionModel)):
        out[f"{task}_student"] = tiny_yaml(tmp, base, 0.0625)
        torch.manual_seed(0)
        teacher = cls(str(tiny_yaml(tmp, base, 0.125)), nc=3, verbose=False)
        out[f"{task}_teacher"] = save_checkpoint(teacher, tmp / f"teacher-{task}.pt", names, task)
    return out


@pytest.fixture(scope="session")
def dota8_yaml(tmp_path_factory) -> Path:
    """A data yaml pointing at the real dota8 tiles in ../shared (15 DOTA classes)."""
    import yaml

    root = need_shared(DATA / "dota8")
    cfg = yaml.safe_load((root / "dota8.yaml").read_text())
    cfg["path"] = str(root)
    p = tmp_path_factory.mktemp("dota8") / "dota8.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


def train_overrides(tmp: Path, **kw) -> dict:
    """Fast, offline, CPU training overrides for tests."""
    base = dict(
        epochs=1,
        imgsz=64,
        batch=4,
        workers=0,
        device="cpu",
        plots=False,
        val=True,
        amp=False,
        project=str(tmp),
        name="run",
        exist_ok=True,
        verbose=False,
        seed=0,
        deterministic=True,
        amp_epochs=1,
        mosaic=0.0,
        warmup_epochs=0,  # tiny runs have a handful of steps: no warm-up, one optimizer step per batch
        nbs=4,
    )
    return {**base, **kw}
