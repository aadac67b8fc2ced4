"""Scaled-down Ultralytics model yamls: bundled architectures at arbitrary depth, width and channel cap.

Tiny students (e.g. width 0.125, 8-64 channels) train in minutes on a CPU, which makes distillation regression runs
cheap. The written yaml builds offline with `YOLO(path)`, `DetectionModel(path)` and `OBBModel(path)`.
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

import yaml
from ultralytics.nn.tasks import guess_model_scale, yaml_model_load

_FAMILY = re.compile(r"^(yolo(?:e-)?v?\d+)")  # mirrors Ultralytics' guess_model_scale: scale letter follows the version


def _tag(value: float) -> str:
    """Format a multiplier for a file name without dots, e.g. 0.125 -> '0p125', so suffix parsing stays intact."""
    return f"{value:g}".replace(".", "p")


def _dump(d: dict) -> str:
    """Serialise a model dict in Ultralytics' layout, one `[from, repeats, module, args]` layer per line."""
    text = ""
    for key, value in d.items():
        if key in {"backbone", "head"} and isinstance(value, list):
            rows = (yaml.safe_dump(layer, default_flow_style=True, width=1 << 16).strip() for layer in value)
            text += f"{key}:\n" + "".join(f"  - {row}\n" for row in rows)
        else:  # nested values flow-style (scales, kpt_shape), scalars plain
            flow = None if isinstance(value, (dict, list)) else False
            text += yaml.safe_dump({key: value}, sort_keys=False, default_flow_style=flow, width=1 << 16)
    return text


def scaled_model_yaml(
    base: str = "yolov8-obb.yaml",
    depth: float = 0.33,
    width: float = 0.125,
    max_channels: int = 1024,
    nc: int | None = None,
    out: str | Path | None = None,
) -> Path:
    """Write a bundled Ultralytics model yaml with custom depth/width/max_channels and return its path.

    The bundled `scales` table is dropped and top-level `depth_multiple`/`width_multiple`/`max_channels` are written,
    which parse_model uses when a yaml has no `scales`. parse_model ignores a top-level `max_channels`, though, so when
    the cap is below the widest layer of the base (i.e. it would change the model) a one-entry `scales` table with the
    same values is written too, keyed by the base's scale letter (default 'n'). The default file name carries that
    letter after the family version, e.g. `yolov8n-obb-d0p33-w0p125.yaml`, so Ultralytics' `guess_model_scale` picks the
    entry (a custom `out` name without it still builds, after a "no model scale passed" warning) and the family's
    size-dependent choices (C3k2 `c3k`, A2C2f residuals) stay at that size. The "-obb" part of the base name is kept,
    which is what `guess_model_task` looks for when it guesses a task from a file name.

    Args:
        base (str): Bundled model yaml name as Ultralytics resolves it, e.g. "yolov8-obb.yaml", "yolov8n-obb.yaml",
            "yolo26-obb.yaml", "yolo11.yaml"; a path to a yaml file also works.
        depth (float): Depth multiple applied to repeated blocks.
        width (float): Width multiple applied to channels (`make_divisible(min(c, max_channels) * width, 8)`).
        max_channels (int): Channel cap applied before the width multiple.
        nc (int | None): Number of classes to write into the yaml; None keeps the base's value.
        out (str | Path | None): Output file, or an existing directory to write the default name into; None writes
            into a fresh temporary directory.

    Returns:
        (Path): Path to the written yaml.

    Examples:
        >>> from ultralytics import YOLO
        >>> model = YOLO(scaled_model_yaml("yolo26-obb.yaml", width=0.125, nc=3))
    """
    if depth <= 0 or width <= 0 or max_channels <= 0:
        raise ValueError(f"depth, width and max_channels must be positive, got {depth}, {width}, {max_channels}")
    d = yaml_model_load(base)
    src = Path(d.pop("yaml_file"))
    letter = d.pop("scale", "") or guess_model_scale(base) or "n"
    for key in ("scales", "depth_multiple", "width_multiple", "max_channels"):
        d.pop(key, None)
    if nc is not None:
        d["nc"] = int(nc)
    # args[0] is the output channel count of every width-scaled layer in the detect/OBB families
    widest = max((x[3][0] for x in d["backbone"] + d["head"] if x[3] and isinstance(x[3][0], int)), default=0)
    scaling = {"depth_multiple": float(depth), "width_multiple": float(width), "max_channels": int(max_channels)}
    if max_channels < widest:
        scaling["scales"] = {letter: [float(depth), float(width), int(max_channels)]}
    d = {**scaling, **d}

    # Replace the base's scale letter (if any) by ours; yaml_file is the name as requested, e.g. "yolov8n-obb.yaml"
    stem = _FAMILY.sub(rf"\g<1>{letter}", re.sub(r"^(yolo(?:e-)?v?\d+)[nslmx]", r"\1", src.stem), count=1)
    name = f"{stem}-d{_tag(depth)}-w{_tag(width)}" + (f"-c{max_channels}" if max_channels != 1024 else "") + ".yaml"
    if out is None:
        path = Path(tempfile.mkdtemp(prefix="ds2d2_models_")) / name
    else:
        path = Path(out)
        if path.is_dir():
            path = path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    header = f"# Scaled from {src.name} by ds2d2_yolo.tools.models.scaled_model_yaml\n"
    if "scales" in d:
        header += "# max_channels only takes effect through `scales`, which parse_model prefers over the keys above\n"
    path.write_text(header + _dump(d), encoding="utf-8")
    return path


__all__ = ["scaled_model_yaml"]
