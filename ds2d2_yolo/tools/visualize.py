"""Band visualiser: what DS2D2 compares at each head level, for one image, as a PNG grid.

For every level feeding the detection head (P3/P4/P5) one row shows the input with the boxes used, the teacher's LL
band and high-frequency energy, the student's LL band and high-frequency energy, and the level's weight map (the
explicit stream's `disw=` weights: by default the teacher's confidence, or the box-based DISW), all on the same image
extent. Teacher and student have different channel counts, so each band is shown as its energy per
cell, the root mean square over channels (and over LH, HL, HH for the high bands), which makes the two comparable in
shape though not in scale; every panel has its own colour scale.

Examples:
    >>> from ds2d2_yolo.tools.visualize import run_visualize
    >>> run_visualize("student.pt", "teacher.pt", "images/val/scene.png", imgsz=640)  # runs/obb/visualize/bands.png
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.ticker import FuncFormatter
from torch import nn
from ultralytics import YOLO
from ultralytics.data.utils import img2label_paths
from ultralytics.nn.tasks import guess_model_task
from ultralytics.utils import LOGGER, SETTINGS, colorstr
from ultralytics.utils.files import increment_path
from ultralytics.utils.nms import non_max_suppression
from ultralytics.utils.ops import xywhr2xyxyxyxy, xyxyxyxy2xywhr

from ds2d2_yolo.config import DS2D2ArgError, check_disw, check_wavelet, defaults
from ds2d2_yolo.core.disw import SCORE_MODE, disw_weights, resolve_disw_mode, score_weights
from ds2d2_yolo.core.dwt import DWT2d
from ds2d2_yolo.integration.hooks import detection_head, freeze, head_features, match_channels
from ds2d2_yolo.integration.teacher import refused_global, safe_loading, unsafe_file_error

AUTO = "auto"  # an output path chosen like Ultralytics' predict: runs/<task>/<mode>, <mode>2, ...
COLUMNS = ("input", "teacher LL", "teacher LH+HL+HH", "student LL", "student LH+HL+HH", "weights")
BOX_SOURCES = ("auto", "labels", "teacher")
PAD_VALUE = 114  # Ultralytics' letterbox grey, so the padded border looks to the models as it does in training


@dataclass
class LevelMaps:
    """Per-cell maps of one head level, as float32 numpy arrays: the bands on the wavelet grid (h, w).

    Attributes:
        name (str): Level name, e.g. "P3".
        stride (int): Stride of the feature map the bands come from.
        teacher_ll (np.ndarray): RMS over teacher channels of the LL band.
        teacher_high (np.ndarray): RMS over teacher channels and the LH, HL, HH bands.
        student_ll (np.ndarray): RMS over student channels of the LL band.
        student_high (np.ndarray): RMS over student channels and the LH, HL, HH bands.
        disw (np.ndarray): The explicit stream's weights: DISW on the band grid (1 on background, each box adds a
            total of 1), the teacher's confidence on the feature grid (mean 1 over the image), or ones for "none".
        disw_mode (str): The rule that made `disw`: "hbb", "obb", "score" or "none".
        teacher_channels (int): Channels of the teacher's feature at this level.
        student_channels (int): Channels of the student's feature at this level.
    """

    name: str
    stride: int
    teacher_ll: np.ndarray
    teacher_high: np.ndarray
    student_ll: np.ndarray
    student_high: np.ndarray
    disw: np.ndarray
    teacher_channels: int
    student_channels: int
    disw_mode: str = "obb"


def load_model(weights: str | Path | nn.Module) -> nn.Module:
    """Load an Ultralytics detect/OBB model (a .pt checkpoint or a model yaml) in fp32 eval mode, without gradients.

    Args:
        weights (str | Path | nn.Module): Checkpoint or yaml path, or an already built Ultralytics model.

    Returns:
        (nn.Module): The model.

    Raises:
        FileNotFoundError: When the file does not exist.
        DS2D2ArgError: When the restricted load refuses the file (see `ds2d2_yolo.integration.teacher.safe_loading`).
    """
    if isinstance(weights, nn.Module):
        model = weights
    else:
        if weights in (None, "") or not Path(weights).is_file():
            raise FileNotFoundError(f"model file '{weights}' not found; pass a trained Ultralytics .pt (or a yaml)")
        model = load_yolo(weights).model

    detection_head(model)  # fail early, with the reason, on classify/segment-free models without a Detect head
    return freeze(model.float())


def load_yolo(weights: str | Path, what: str = "model") -> Any:
    """`YOLO(weights)` with checkpoints loaded the restricted way (`ULTRALYTICS_SAFE_LOAD`), unless opted out.

    Raises:
        DS2D2ArgError: When the restricted load refuses the file because it references code.
    """
    try:
        with safe_loading():
            return YOLO(str(weights))
    except Exception as e:
        name = refused_global(e)
        if name:
            raise unsafe_file_error(what, weights, name) from None
        raise


def run_dir(task: str, mode: str, project: str | Path | None = None, name: str | None = None) -> Path:
    """A new output folder as Ultralytics' predict makes one: `<runs_dir>/<task>/<mode>`, then `<mode>2`, ...

    Args:
        task (str): "detect" or "obb".
        mode (str): The command, e.g. "slice" or "visualize".
        project (str | Path | None): Parent folder; None is Ultralytics' `runs_dir` setting plus the task.
        name (str | None): Folder name; None is the mode.

    Returns:
        (Path): The created folder.
    """
    root = Path(project) if project else Path(SETTINGS["runs_dir"]) / task
    return increment_path(root / (name or mode), exist_ok=False, sep="", mkdir=True)


def letterbox(img: np.ndarray, size: int) -> tuple[np.ndarray, float, tuple[float, float]]:
    """Resize an image to fit a `size` square, keeping its aspect ratio, and pad it centred with grey.

    Args:
        img (np.ndarray): HxWx3 image.
        size (int): Side of the square output.

    Returns:
        (tuple): The padded image, the scale applied, and the (left, top) padding in pixels.
    """
    h, w = img.shape[:2]
    r = min(size / h, size / w)
    nw, nh = max(1, round(w * r)), max(1, round(h * r))
    resized = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_LINEAR if r > 1 else cv2.INTER_AREA)
    left, top = (size - nw) // 2, (size - nh) // 2
    out = np.full((size, size, 3), PAD_VALUE, dtype=np.uint8)
    out[top : top + nh, left : left + nw] = resized
    return out, r, (float(left), float(top))


def read_label_boxes(source: Path, img_hw: tuple[int, int]) -> tuple[np.ndarray, str] | None:
    """Read the ground-truth boxes of an image as (N, 8) corners in image pixels, if a label file exists.

    Looks for the Ultralytics layout first (`.../images/...` -> `.../labels/....txt`: normalised `cls x1 y1 ... x4 y4`
    or `cls xc yc w h`), then the DOTA layout (`.../images/...` -> `.../labelTxt/....txt`: pixel corners, class name,
    difficulty).

    Args:
        source (Path): Image path.
        img_hw (tuple[int, int]): Image (height, width).

    Returns:
        (tuple | None): (corners (N, 8) float32, the label file's path) or None when no label file exists.
    """
    h, w = img_hw
    yolo = Path(img2label_paths([str(source)])[0])
    if yolo.is_file() and yolo != source:
        rows = []
        for line in yolo.read_text(encoding="utf-8").splitlines():
            v = [float(x) for x in line.split()[1:]]
            if len(v) == 8:
                rows.append([x * (w if i % 2 == 0 else h) for i, x in enumerate(v)])
            elif len(v) >= 4:  # detect label (cx, cy, w, h); extra columns (segments) are ignored
                cx, cy, bw, bh = v[0] * w, v[1] * h, v[2] * w, v[3] * h
                x1, y1, x2, y2 = cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2
                rows.append([x1, y1, x2, y1, x2, y2, x1, y2])
        return np.asarray(rows, np.float32).reshape(-1, 8), str(yolo)
    parts = source.parts
    if "images" in parts:
        i = len(parts) - 1 - parts[::-1].index("images")
        dota = Path(*parts[:i], "labelTxt", *parts[i + 1 :]).with_suffix(".txt")
        if dota.is_file():
            rows = []
            for line in dota.read_text(encoding="utf-8").splitlines():
                v = line.split()
                if len(v) >= 9:
                    try:
                        rows.append([float(x) for x in v[:8]])
                    except ValueError:
                        continue  # header lines (imagesource:, gsd:)
            return np.asarray(rows, np.float32).reshape(-1, 8), str(dota)
    return None


def predict_boxes(model: nn.Module, img: torch.Tensor, conf: float = 0.25, iou: float = 0.7) -> torch.Tensor:
    """Return a model's detections on a preprocessed image as (N, 5) xywhr boxes in input pixels.

    Args:
        model (nn.Module): Ultralytics detect/OBB model in eval mode.
        img (torch.Tensor): (1, C, H, W) input in [0, 1].
        conf (float): Confidence threshold.
        iou (float): NMS IoU threshold.

    Returns:
        (torch.Tensor): Rotated boxes (cx, cy, w, h, angle in radians); angle 0 for a detect model.
    """
    obb = type(detection_head(model)).__name__.startswith("OBB")
    with torch.no_grad():
        preds = model(img)
    det = non_max_suppression(
        preds,
        conf,
        iou,
        nc=len(getattr(model, "names", {}) or {}) if obb else 0,
        end2end=getattr(model, "end2end", False),
        rotated=obb,
    )[0]
    if obb:
        return torch.cat([det[:, :4], det[:, -1:]], 1).float()  # rows are (x, y, w, h, conf, cls, angle)
    xyxy = det[:, :4].float()
    return torch.cat([(xyxy[:, :2] + xyxy[:, 2:]) / 2, xyxy[:, 2:] - xyxy[:, :2], xyxy.new_zeros(len(xyxy), 1)], 1)


def _corners_to_xywhr(corners: np.ndarray) -> torch.Tensor:
    """(N, 8) corners -> (N, 5) xywhr (the minimum-area rotated rectangle of each quadrilateral)."""
    if not len(corners):
        return torch.zeros(0, 5)
    return torch.as_tensor(xyxyxyxy2xywhr(corners.astype(np.float32)), dtype=torch.float32).reshape(-1, 5)


def _short(label_file: Path) -> str:
    """A label path from its `labels`/`labelTxt` folder on, e.g. 'labels/val/scene.txt', for titles."""
    parts = label_file.parts
    for i in range(len(parts) - 1, -1, -1):
        if parts[i] in {"labels", "labelTxt"}:
            return "/".join(parts[i:])
    return label_file.name


def _label(weights: str | Path | nn.Module) -> str:
    """A short name for titles: a module's yaml, a file name, or `run/best.pt` for Ultralytics run weights."""
    if isinstance(weights, nn.Module):
        return str(getattr(weights, "yaml", {}).get("yaml_file", type(weights).__name__))
    p = Path(str(weights))
    return f"{p.parent.parent.name}/{p.name}" if p.name in {"best.pt", "last.pt"} else p.name


def _rms(band: torch.Tensor) -> np.ndarray:
    """Root mean square over every axis but the last two: (1, C, h, w) or (1, C, 3, h, w) -> (h, w)."""
    return band[0].float().pow(2).flatten(0, -3).mean(0).sqrt().cpu().numpy()


def band_maps(
    student: nn.Module,
    teacher: nn.Module,
    img: torch.Tensor,
    boxes: torch.Tensor,
    wavelet: str = "haar",
    wave_mode: str = "zero",
    disw_mode: str = "auto",
) -> list[LevelMaps]:
    """Compute the per-level band energies of teacher and student and the explicit stream's weight map.

    Args:
        student (nn.Module): Student detect/OBB model (eval mode).
        teacher (nn.Module): Teacher detect/OBB model (eval mode), reading the same strides as the student.
        img (torch.Tensor): (1, C, H, W) input in [0, 1], H and W multiples of the largest stride.
        boxes (torch.Tensor): (N, 5) xywhr boxes in input pixels.
        wavelet (str): PyWavelets wavelet name.
        wave_mode (str): Signal-extension mode of the DWT.
        disw_mode (str): "auto" (rotated rule for an OBB teacher, box hulls otherwise), "hbb", "obb", "score" (the
            teacher's confidence, as training weights the explicit stream with `disw=score`) or "none".

    Returns:
        (list[LevelMaps]): One entry per head level.
    """
    t_head, s_head = detection_head(teacher), detection_head(student)
    if t_head.nl != s_head.nl or not torch.equal(t_head.stride.cpu(), s_head.stride.cpu()):
        raise DS2D2ArgError(
            f"teacher head reads strides {t_head.stride.tolist()} but the model's reads {s_head.stride.tolist()}; "
            "compare models whose heads use the same levels"
        )
    disw_mode = resolve_disw_mode(disw_mode, "obb" if type(t_head).__name__.startswith("OBB") else "detect")
    dwt = DWT2d(wavelet, wave_mode)
    with torch.no_grad():
        t_feats = head_features(teacher, match_channels(img, int(teacher.yaml.get("channels", 3))))
        s_feats = head_features(student, match_channels(img, int(student.yaml.get("channels", 3))))
        if disw_mode == SCORE_MODE:
            scores = t_head.forward_head(t_feats, **t_head.one2many)["scores"]
            conf_maps = score_weights(scores, [tuple(f.shape[-2:]) for f in t_feats])
        levels = []
        for i, (ft, fs) in enumerate(zip(t_feats, s_feats)):
            ll_t, hi_t = dwt(ft)
            ll_s, hi_s = dwt(fs)
            band_hw = tuple(ll_t.shape[-2:])
            if disw_mode == SCORE_MODE:
                w = conf_maps[i]
            elif disw_mode == "none":
                w = torch.ones(1, 1, *band_hw)
            else:
                w = disw_weights(boxes.float(), torch.zeros(len(boxes)), 1, tuple(img.shape[-2:]), band_hw, disw_mode)
            stride = int(t_head.stride[i])
            levels.append(
                LevelMaps(
                    name=f"P{int(round(math.log2(stride)))}",
                    stride=stride,
                    teacher_ll=_rms(ll_t),
                    teacher_high=_rms(hi_t),
                    student_ll=_rms(ll_s),
                    student_high=_rms(hi_s),
                    disw=w[0, 0].cpu().numpy(),
                    teacher_channels=int(ft.shape[1]),
                    student_channels=int(fs.shape[1]),
                    disw_mode=disw_mode,
                )
            )
    return levels


def _panel(
    fig: Any, ax: Any, data: np.ndarray, extent: list[float], title: str, cmap: str, vmin: float | None = None
) -> None:
    """Draw one map with its own colour scale and a colour bar.

    Feature maps are scaled from their minimum to their 99.5th percentile, so a few extreme cells (often the padding
    edge) do not wash out the rest; a fixed `vmin` (DISW's background weight 1, or 0 for confidence) scales up to the
    true maximum.
    """
    lo = float(np.min(data)) if vmin is None else vmin
    hi = float(np.percentile(data, 99.5)) if vmin is None else float(np.max(data))
    if hi <= lo:  # a flat map (e.g. DISW without boxes) still gets a valid scale
        hi = lo + max(abs(lo) * 1e-3, 1e-6)
    im = ax.imshow(data, cmap=cmap, vmin=lo, vmax=hi, extent=extent, interpolation="nearest")
    ax.set_title(title, fontsize=8)
    ax.set_xticks([])
    ax.set_yticks([])
    cb = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02)
    cb.ax.tick_params(labelsize=6)
    # Each tick carries its own exponent: matplotlib's shared scale label ("1e-3") sits above the bar, on the title.
    cb.ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.3g}"))


def plot_levels(
    image_rgb: np.ndarray, boxes: torch.Tensor, levels: list[LevelMaps], box_note: str, path: Path, title: str
) -> dict[str, Any]:
    """Draw the grid (one row per level, the `COLUMNS` across) and save it as a PNG with its layout in the metadata.

    Args:
        image_rgb (np.ndarray): The letterboxed input, HxWx3 RGB uint8.
        boxes (torch.Tensor): (N, 5) xywhr boxes in input pixels, outlined on the input panels.
        levels (list[LevelMaps]): Output of `band_maps`.
        box_note (str): Where the boxes came from, for the figure title.
        path (Path): Output PNG.
        title (str): Figure title.

    Returns:
        (dict): The layout written into the PNG's "Description" text chunk: rows, columns, panels, levels, input
            (height, width), boxes (count) and box_source.
    """
    matplotlib.use("Agg")  # files only; also works without a display

    shown = image_rgb.copy()
    if len(boxes):
        corners = xywhr2xyxyxyxy(boxes.float()).cpu().numpy().reshape(-1, 4, 2)
        thick = max(1, round(image_rgb.shape[0] / 640))
        cv2.polylines(shown, [np.round(c).astype(np.int32) for c in corners], True, (0, 255, 255), thick, cv2.LINE_AA)
    h, w = image_rgb.shape[:2]
    extent = [0, w, h, 0]  # every map spans the input, so cells line up with the image panel
    nrow, ncol = len(levels), len(COLUMNS)
    fig, axes = plt.subplots(nrow, ncol, figsize=(2.7 * ncol, 2.55 * nrow + 0.5), squeeze=False)
    for r, lv in enumerate(levels):
        gh, gw = lv.teacher_ll.shape
        ax = axes[r, 0]
        ax.imshow(shown, extent=extent)
        ax.set_title(f"{lv.name} (stride {lv.stride}): bands {gh}x{gw}", fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
        fig.colorbar(matplotlib.cm.ScalarMappable(cmap="gray"), ax=ax, fraction=0.046, pad=0.02).ax.set_visible(False)
        _panel(fig, axes[r, 1], lv.teacher_ll, extent, f"teacher LL ({lv.teacher_channels} ch, RMS)", "viridis")
        _panel(fig, axes[r, 2], lv.teacher_high, extent, f"teacher LH+HL+HH ({lv.teacher_channels} ch)", "magma")
        _panel(fig, axes[r, 3], lv.student_ll, extent, f"student LL ({lv.student_channels} ch, RMS)", "viridis")
        _panel(fig, axes[r, 4], lv.student_high, extent, f"student LH+HL+HH ({lv.student_channels} ch)", "magma")
        name = "confidence" if lv.disw_mode == SCORE_MODE else "DISW" if lv.disw_mode in {"hbb", "obb"} else "weights"
        vmin = 0.0 if lv.disw_mode == SCORE_MODE else 1.0
        _panel(fig, axes[r, 5], lv.disw, extent, f"{name} {lv.name}, max {lv.disw.max():.2f}", "inferno", vmin=vmin)
    fig.suptitle(f"{title}\nboxes: {box_note}; each panel has its own colour scale", fontsize=9)
    fig.tight_layout()
    layout = {
        "rows": nrow,
        "columns": list(COLUMNS),
        "panels": nrow * ncol,
        "levels": [lv.name for lv in levels],
        "input": [h, w],
        "boxes": len(boxes),
        "box_source": box_note,
        "disw": levels[0].disw_mode if levels else "",
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100, metadata={"Description": json.dumps(layout)})
    plt.close(fig)
    return layout


def run_visualize(
    model: str | Path | nn.Module | None,
    teacher: str | Path | nn.Module | None,
    source: str | Path | None,
    imgsz: int = 640,
    wavelet: str = "haar",
    out: str | Path | None = AUTO,
    boxes: str | np.ndarray | torch.Tensor | None = None,
    conf: float = 0.25,
    project: str | Path | None = None,
    name: str | None = None,
    disw: str | None = None,
) -> Path:
    """Write a PNG of the DWT bands of teacher and student features and the weight map, per head level, for one image.

    Args:
        model (str | Path | nn.Module): The student: an Ultralytics .pt (or model yaml), e.g. a distilled best.pt.
        teacher (str | Path | nn.Module): The teacher .pt, of the same task and head levels.
        source (str | Path): Image file.
        imgsz (int): Square input size; rounded up to a multiple of the models' largest stride (32).
        wavelet (str): Discrete PyWavelets wavelet, as in training (`wavelet=`).
        out (str | Path | None): Output PNG; "auto" (or None) is `bands.png` in a new `runs/<task>/visualize*` folder.
        boxes (str | np.ndarray | torch.Tensor | None): Boxes to draw, and to weight by with a box-based `disw`.
            None or "auto": the image's label file
            (Ultralytics `images/`->`labels/`, or DOTA `labelTxt/`) when one exists, else the teacher's predictions;
            "labels": the label file only; "teacher": the teacher's predictions; or an array of boxes in original
            image pixels, (N, 4) xyxy, (N, 5) xywhr (radians) or (N, 8) corners.
        conf (float): Confidence threshold for the teacher's predictions.
        project (str | Path | None): With `out="auto"`, the parent of the new folder (default `runs/<task>`).
        name (str | None): With `out="auto"`, the new folder's name (default "visualize").
        disw (str | None): The weights to show, as training's `disw=` key; None is training's default.

    Returns:
        (Path): The written PNG. Its "Description" PNG text chunk holds the layout as JSON.

    Raises:
        FileNotFoundError: Missing model, teacher, image or (with boxes="labels") label file.
        DS2D2ArgError: Bad wavelet, image size, box source or weight rule.
    """
    if teacher in (None, ""):
        raise FileNotFoundError("visualize needs teacher=path/to/teacher.pt")
    if model in (None, ""):
        raise FileNotFoundError("visualize needs model=path/to/student.pt (pass the teacher again to see it alone)")
    if source in (None, "") or not Path(source).is_file():
        raise FileNotFoundError(f"visualize: image '{source}' not found; pass source=path/to/image")
    check_wavelet(wavelet)
    disw = check_disw(defaults()["disw"] if disw in (None, "") else disw)
    if isinstance(boxes, str) and boxes.lower() not in BOX_SOURCES:
        raise DS2D2ArgError(f"'boxes={boxes}' is unknown; choose one of {', '.join(BOX_SOURCES)} or pass an array")
    if int(imgsz) < 1:
        raise DS2D2ArgError(f"'imgsz={imgsz}' must be a positive image size, e.g. imgsz=640")
    t_model, s_model = load_model(teacher), load_model(model)
    if out in (None, "", AUTO):
        out = run_dir(guess_model_task(t_model), "visualize", project, name) / "bands.png"
    source, out = Path(source), Path(out)

    stride = int(max(detection_head(t_model).stride.max().item(), detection_head(s_model).stride.max().item(), 32))
    size = int(math.ceil(int(imgsz) / stride) * stride)
    bgr = cv2.imread(str(source), cv2.IMREAD_COLOR)
    if bgr is None:
        raise FileNotFoundError(f"visualize: '{source}' is not a readable image")
    padded, r, (left, top) = letterbox(bgr, size)
    rgb = padded[..., ::-1].copy()
    img = torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255  # Ultralytics models read RGB in [0, 1]

    mode = boxes.lower() if isinstance(boxes, str) else ("auto" if boxes is None else "array")
    xywhr, note = torch.zeros(0, 5), ""
    if mode == "array":
        b = torch.as_tensor(np.asarray(boxes, dtype=np.float32)).reshape(len(boxes), -1)
        if b.shape[1] == 4:
            b = torch.stack([b[:, 0], b[:, 1], b[:, 2], b[:, 1], b[:, 2], b[:, 3], b[:, 0], b[:, 3]], 1)
        if b.shape[1] == 8:
            xywhr = _corners_to_xywhr(b.numpy())
        elif b.shape[1] == 5:
            xywhr = b.clone()
        else:
            raise DS2D2ArgError(f"boxes must be (N, 4) xyxy, (N, 5) xywhr or (N, 8) corners, got {tuple(b.shape)}")
        xywhr[:, :4] *= r
        xywhr[:, 0] += left
        xywhr[:, 1] += top
        note = f"{len(xywhr)} given"
    else:
        found = read_label_boxes(source, bgr.shape[:2]) if mode in {"auto", "labels"} else None
        if found is not None:
            corners, label_file = found
            corners = corners * r + np.tile(np.array([left, top], np.float32), 4)
            xywhr = _corners_to_xywhr(corners)
            note = f"{len(xywhr)} from {_short(Path(label_file))}"
        elif mode == "labels":
            raise FileNotFoundError(f"visualize: no label file found for '{source}' (labels/ or labelTxt/)")
        else:
            xywhr = predict_boxes(t_model, img, conf=conf)
            note = f"{len(xywhr)} teacher predictions (conf >= {conf})"
    levels = band_maps(s_model, t_model, img, xywhr, wavelet=wavelet, disw_mode=disw)
    names = [_label(m) for m in (model, teacher)]
    title = f"{source.name} at {size}x{size}, wavelet {wavelet}: student {names[0]} vs teacher {names[1]}"
    plot_levels(rgb, xywhr, levels, note, out, title)

    LOGGER.info(f"DS2D2 bands of {len(levels)} levels ({note}); Results saved to {colorstr('bold', out.parent)}")
    return out


__all__ = ["band_maps", "run_visualize"]
