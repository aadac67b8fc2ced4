"""Tests for scaled-down model yamls: offline builds for detect and OBB, scaling of parameters and head channels."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import yaml

os.environ.setdefault("YOLO_OFFLINE", "1")

from ultralytics import YOLO  # noqa: E402
from ultralytics.nn.tasks import DetectionModel, OBBModel, guess_model_scale, guess_model_task  # noqa: E402
from ultralytics.utils.ops import make_divisible  # noqa: E402

from ds2d2_yolo.tools.models import scaled_model_yaml  # noqa: E402


def _params(model: torch.nn.Module) -> int:
    """Count parameters."""
    return sum(p.numel() for p in model.parameters())


def _head_in(model: torch.nn.Module) -> list[int]:
    """Input channels of the detection head per level, read from its box branch."""
    return [branch[0].conv.in_channels for branch in model.model[-1].cv2]


@pytest.mark.parametrize(
    "base, cls, task",
    [
        ("yolov8-obb.yaml", OBBModel, "obb"),
        ("yolov8.yaml", DetectionModel, "detect"),
        ("yolo26-obb.yaml", OBBModel, "obb"),
        ("yolo26.yaml", DetectionModel, "detect"),
    ],
)
def test_builds_offline(base: str, cls: type, task: str, tmp_path: Path):
    """The yaml builds through YOLO() and the task model class, with the requested nc and the right task."""
    path = scaled_model_yaml(base, width=0.125, nc=3, out=tmp_path)
    assert path.parent == tmp_path and path.suffix == ".yaml"
    assert guess_model_scale(path) == "n" and ("-obb" in path.stem) == (task == "obb")
    model = cls(path, verbose=False)
    assert model.yaml["nc"] == 3 and model.model[-1].nc == 3
    assert _head_in(model) == [make_divisible(c * 0.125, 8) for c in (256, 512, 1024)]
    yolo = YOLO(path)
    assert yolo.task == task and _params(yolo.model) == _params(model)
    if task == "obb":
        assert guess_model_task(str(path)) == "obb"  # from the file name alone
    model.eval()
    with torch.no_grad():
        model(torch.zeros(1, 3, 64, 64))


def test_width_depth_and_max_channels_scale(tmp_path: Path):
    """Narrower or shallower yamls have fewer parameters; max_channels caps the deepest level before the width gain."""
    wide = OBBModel(scaled_model_yaml("yolov8-obb.yaml", width=0.25, out=tmp_path), verbose=False)
    thin = OBBModel(scaled_model_yaml("yolov8-obb.yaml", width=0.125, out=tmp_path), verbose=False)
    capped = OBBModel(scaled_model_yaml("yolov8-obb.yaml", width=0.25, max_channels=256, out=tmp_path), verbose=False)
    deep = OBBModel(scaled_model_yaml("yolov8-obb.yaml", depth=0.67, width=0.125, out=tmp_path), verbose=False)
    assert _params(thin) < _params(wide) and _params(capped) < _params(wide) and _params(thin) < _params(deep)
    assert _head_in(wide) == [64, 128, 256]
    assert _head_in(thin) == [32, 64, 128]
    assert _head_in(capped) == [64, 64, 64]


def test_yaml_contents(tmp_path: Path):
    """The yaml carries the scaling, class count and base layers; `scales` appears only when max_channels bites."""
    path = scaled_model_yaml("yolo11m-obb.yaml", depth=0.5, width=0.25, nc=5, out=tmp_path / "sub" / "student.yaml")
    assert path == tmp_path / "sub" / "student.yaml"
    d = yaml.safe_load(path.read_text())
    assert (d["depth_multiple"], d["width_multiple"], d["max_channels"]) == (0.5, 0.25, 1024) and "scales" not in d
    assert d["nc"] == 5 and d["head"][-1][2] == "OBB"
    capped = scaled_model_yaml("yolo11m-obb.yaml", max_channels=512, out=tmp_path)
    assert capped.name == "yolo11m-obb-d0p33-w0p125-c512.yaml"  # the base's scale letter survives in name and table
    assert yaml.safe_load(capped.read_text())["scales"] == {"m": [0.33, 0.125, 512]}
    default = scaled_model_yaml()
    assert default.name == "yolov8n-obb-d0p33-w0p125.yaml" and default.is_file()
    with pytest.raises(ValueError, match="positive"):
        scaled_model_yaml(width=0)
