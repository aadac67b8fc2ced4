"""Structured channel pruning of Ultralytics YOLO detect/OBB models with Torch-Pruning, saved as plain checkpoints.

Torch-Pruning traces the model and removes whole channels together with every layer that depends on them. Three
things in Ultralytics' models need care, and this module handles exactly those:

- `C2f` (and `C3k2`, which inherits it) splits the output of `cv1` with `chunk`, which Torch-Pruning 1.6 cannot
  index. While pruning, `cv1` is held as two convolutions (one per half); afterwards the halves, pruned by the same
  count, are concatenated back into one `cv1` and `c` is updated, so the module stays Ultralytics' own class.
- The head's output convolutions (boxes, classes, OBB angles, and the one-to-one copies of end-to-end heads) and the
  DFL define the output format, so they keep their channels; the head's inner convolutions are pruned.
- Attention (`C2PSA`, `C3k2` with attention) reshapes channels into heads, so its convolutions are left whole.

The result loads, validates, predicts and exports with plain Ultralytics: no class of this package or of
Torch-Pruning is in the file.
"""

from __future__ import annotations

import json
import types
from copy import deepcopy
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from ultralytics import YOLO
from ultralytics import __version__ as ULTRALYTICS_VERSION
from ultralytics.cfg import get_save_dir
from ultralytics.nn.modules import C2f, Conv, Detect
from ultralytics.nn.tasks import DetectionModel, guess_model_task, load_checkpoint
from ultralytics.utils import LOGGER, IterableSimpleNamespace
from ultralytics.utils.torch_utils import get_flops

IMPORTANCES = ("l1", "l2", "random")
PRUNE_TASKS = ("detect", "obb")
INSTALL_HINT = 'pip install -e ".[compress]"'


def require_torch_pruning() -> types.ModuleType:
    """Import Torch-Pruning, or fail in one line with the install command.

    Returns:
        (module): The `torch_pruning` package.

    Raises:
        ImportError: When torch-pruning is not installed.
    """
    try:
        import torch_pruning  # optional: pip install -e .[compress]
    except ImportError:
        raise ImportError(f"pruning needs torch-pruning, which is not installed: {INSTALL_HINT}") from None
    return torch_pruning


# ------------------------------------------------------------------------------------------------------------------
# C2f split and merge


def _slice_conv(conv: Conv, rows: slice) -> Conv:
    """Return a copy of an Ultralytics Conv that keeps only the output channels in `rows` (conv, bias and BN)."""
    new = deepcopy(conv)
    c = new.conv
    c.weight = nn.Parameter(conv.conv.weight.data[rows].clone())
    if c.bias is not None:
        c.bias = nn.Parameter(conv.conv.bias.data[rows].clone())
    c.out_channels = c.weight.shape[0]
    bn = getattr(new, "bn", None)
    if isinstance(bn, nn.BatchNorm2d):
        src = conv.bn
        bn.weight = nn.Parameter(src.weight.data[rows].clone())
        bn.bias = nn.Parameter(src.bias.data[rows].clone())
        bn.running_mean = src.running_mean[rows].clone()
        bn.running_var = src.running_var[rows].clone()
        bn.num_features = c.out_channels
    return new


def _cat_convs(a: Conv, b: Conv) -> Conv:
    """Return one Ultralytics Conv whose output channels are those of `a` followed by those of `b`."""
    new = deepcopy(a)
    c = new.conv
    c.weight = nn.Parameter(torch.cat([a.conv.weight.data, b.conv.weight.data]))
    if c.bias is not None:
        c.bias = nn.Parameter(torch.cat([a.conv.bias.data, b.conv.bias.data]))
    c.out_channels = c.weight.shape[0]
    if isinstance(getattr(new, "bn", None), nn.BatchNorm2d):
        bn = new.bn
        bn.weight = nn.Parameter(torch.cat([a.bn.weight.data, b.bn.weight.data]))
        bn.bias = nn.Parameter(torch.cat([a.bn.bias.data, b.bn.bias.data]))
        bn.running_mean = torch.cat([a.bn.running_mean, b.bn.running_mean])
        bn.running_var = torch.cat([a.bn.running_var, b.bn.running_var])
        bn.num_features = c.out_channels
    return new


def _split_forward(self: C2f, x: torch.Tensor) -> torch.Tensor:
    """C2f's forward with `cv1` held as two halves: the same maths, no `chunk` for Torch-Pruning to trace."""
    y = [self.cv1a(x), self.cv1b(x)]
    y.extend(m(y[-1]) for m in self.m)
    return self.cv2(torch.cat(y, 1))


def split_c2f(model: nn.Module) -> list[C2f]:
    """Hold the `cv1` of every C2f-style block (C2f, C3k2, ...) as two convolutions, one per chunk.

    The module keeps its class; only its instance gets the halves and a forward that uses them.

    Args:
        model (nn.Module): The model, changed in place.

    Returns:
        (list[C2f]): The blocks that were split, for `merge_c2f`.
    """
    blocks = [m for m in model.modules() if isinstance(m, C2f) and type(m).forward is C2f.forward]
    for m in blocks:
        c = m.cv1.conv.out_channels // 2
        m.cv1a, m.cv1b = _slice_conv(m.cv1, slice(0, c)), _slice_conv(m.cv1, slice(c, 2 * c))
        del m.cv1
        m.forward = types.MethodType(_split_forward, m)
    return blocks


def merge_c2f(blocks: list[C2f]) -> None:
    """Concatenate the halves made by `split_c2f` back into one `cv1` and set the block's hidden width `c`.

    Raises:
        RuntimeError: When the two halves of a block were pruned to different widths (C2f's chunk needs equal ones).
    """
    for m in blocks:
        ca, cb = m.cv1a.conv.out_channels, m.cv1b.conv.out_channels
        if ca != cb:
            raise RuntimeError(f"C2f halves pruned unequally ({ca} vs {cb} channels); C2f.chunk needs equal halves")
        m.cv1 = _cat_convs(m.cv1a, m.cv1b)
        del m.cv1a, m.cv1b, m.forward  # back to the class's own forward
        m.c = ca


# ------------------------------------------------------------------------------------------------------------------
# Pruning


def head_outputs(head: Detect) -> list[nn.Module]:
    """The head's output convolutions (last layer of every branch, one-to-one copies included) and its DFL."""
    out = [head.dfl]
    for name, branches in vars(head)["_modules"].items():
        if name.startswith(("cv", "one2one_cv")) and isinstance(branches, nn.ModuleList):
            out += [b[-1] if isinstance(b, nn.Sequential) else b for b in branches]
    return out


def _attention_layers(model: nn.Module) -> list[nn.Module]:
    """Convolutions inside multi-head attention: their channels are reshaped into heads, so they are kept."""
    return [c for m in model.modules() if hasattr(m, "num_heads") for c in m.modules() if isinstance(c, nn.Conv2d)]


def _trace_forward(model: DetectionModel, x: torch.Tensor) -> list[torch.Tensor]:
    """Run the model up to the head, then every head branch on the same features (no detach, no decoding).

    Ultralytics' training forward detaches the features fed to an end-to-end head's one-to-one branch, which would
    hide from the tracer that those branches consume backbone channels.
    """
    y = []
    for m in model.model:
        if m.f != -1:
            x = y[m.f] if isinstance(m.f, int) else [x if j == -1 else y[j] for j in m.f]
        if isinstance(m, Detect):
            outs = [m.forward_head(x, **m.one2many)]
            if getattr(m, "one2one_cv2", None) is not None:
                outs.append(m.forward_head(x, **m.one2one))
            return [v for d in outs for k, v in d.items() if k != "feats"]
        x = m(x)
        y.append(x if m.i in model.save else None)
    raise ValueError("model has no Detect head")


def _importance(tp: types.ModuleType, name: str) -> Any:
    """Torch-Pruning importance for `l1`/`l2` (filter magnitude, as in its YOLOv8 example) or `random`."""
    if name == "random":
        return tp.importance.RandomImportance()
    return tp.importance.MagnitudeImportance(p=1 if name == "l1" else 2)


def prune_model(model: DetectionModel, ratio: float, importance: str = "l2", seed: int = 0) -> DetectionModel:
    """Remove `ratio` of the channels of every prunable layer group of a detect/OBB model.

    Args:
        model (DetectionModel): An Ultralytics detect or OBB model (not changed; a pruned copy is returned).
        ratio (float): Fraction of channels to remove per group, in (0, 1).
        importance (str): Channel ranking: "l1" or "l2" filter magnitude, or "random".
        seed (int): Seed for `importance="random"`.

    Returns:
        (DetectionModel): The pruned model in float32, eval mode, with Ultralytics' own module classes.
    """
    tp = require_torch_pruning()
    if not 0 < ratio < 1:
        raise ValueError(f"ratio={ratio} must be between 0 and 1 (the fraction of channels removed)")
    if importance not in IMPORTANCES:
        raise ValueError(f"importance={importance} is unknown; choose one of {', '.join(IMPORTANCES)}")
    model = deepcopy(model).float().eval()
    for p in model.parameters():
        p.requires_grad_(True)  # the tracer follows autograd
    head = model.model[-1]
    blocks = split_c2f(model)
    stride = int(max(model.stride.max(), 32)) if hasattr(model, "stride") else 32
    example = torch.zeros(1, int(model.yaml.get("channels", 3)), 2 * stride, 2 * stride)  # any size traces alike
    keep = [*head_outputs(head), *_attention_layers(model)]
    torch.manual_seed(seed)
    pruner = tp.pruner.BasePruner(
        model,
        example,
        importance=_importance(tp, importance),
        pruning_ratio=ratio,
        ignored_layers=keep,
        forward_fn=_trace_forward,
    )
    _couple_halves(pruner, blocks)
    pruner.step()
    merge_c2f(blocks)
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def _couple_halves(pruner: Any, blocks: list[C2f]) -> None:
    """Keep both halves of a split block when one of them cannot be pruned (it feeds attention, for instance).

    Torch-Pruning's local pruning removes the same fraction from every group, so two halves of equal width that are
    both pruned end up equal; a half that no group may prune must keep its partner whole too.
    """
    graph = pruner.DG
    ignored = set(pruner.ignored_layers)

    def prunable(conv: nn.Conv2d) -> bool:
        group = graph.get_pruning_group(conv, graph.get_pruner_of_module(conv).prune_out_channels, [0])
        return not any(
            graph.is_out_channel_pruning_fn(dep.handler) and dep.target.module in ignored for dep, _ in group
        )

    for m in blocks:
        if not (prunable(m.cv1a.conv) and prunable(m.cv1b.conv)):
            pruner.ignored_layers += [*m.cv1a.modules(), *m.cv1b.modules()]


# ------------------------------------------------------------------------------------------------------------------
# Files and reports


def model_stats(model: nn.Module, imgsz: int = 640) -> dict[str, float]:
    """Parameter count and GFLOPs at `imgsz` (Ultralytics' own counter)."""
    return {"params": sum(p.numel() for p in model.parameters()), "GFLOPs": round(get_flops(model, imgsz), 3)}


def load_detect_model(path: str | Path) -> tuple[DetectionModel, dict]:
    """Load an Ultralytics .pt and check it is a detect or OBB model.

    Returns:
        (tuple): The model (float32) and the checkpoint dict.

    Raises:
        FileNotFoundError: When the file does not exist.
        ValueError: When it is not a detect/OBB checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model file '{path}' not found; pass model=path/to/trained.pt")
    if path.suffix != ".pt":
        raise ValueError(f"model '{path}' is not a .pt checkpoint; pass a trained Ultralytics .pt")
    model, ckpt = load_checkpoint(str(path))
    task = guess_model_task(model)
    if task not in PRUNE_TASKS or not isinstance(model.model[-1], Detect):
        raise ValueError(f"model '{path}' is a {task} model; pruning supports {' and '.join(PRUNE_TASKS)} models")
    return model.float(), ckpt


def check_prune_args(args: dict[str, Any]) -> None:
    """Check the keys of `prune` before any work: Torch-Pruning installed, ratio, importance, a detect/OBB .pt.

    Raises:
        ImportError, ValueError, FileNotFoundError: With the fix, in one line.
    """
    require_torch_pruning()
    if not 0 < float(args["ratio"]) < 1:
        raise ValueError(f"ratio={args['ratio']} must be between 0 and 1 (the fraction of channels removed)")
    if args["importance"] not in IMPORTANCES:
        raise ValueError(f"importance={args['importance']} is unknown; choose one of {', '.join(IMPORTANCES)}")
    load_detect_model(args["model"])


def save_pruned(model: DetectionModel, path: str | Path, source: dict, info: dict[str, Any]) -> Path:
    """Save a pruned model as Ultralytics saves a trained one (a plain checkpoint dict, half precision).

    Args:
        model (DetectionModel): The pruned model.
        path (str | Path): Destination .pt.
        source (dict): The checkpoint the model was pruned from (its train_args are kept).
        info (dict): What was done (ratio, importance, source file), stored as plain data under "pruned".

    Returns:
        (Path): The written file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    snapshot = deepcopy(model).half()
    snapshot.criterion = None
    ckpt = {
        "date": datetime.now().astimezone().isoformat(),
        "version": ULTRALYTICS_VERSION,
        "license": "AGPL-3.0 (https://ultralytics.com/license)",
        "docs": "https://docs.ultralytics.com",
        "epoch": -1,
        "best_fitness": None,
        "model": snapshot,
        "ema": None,
        "updates": None,
        "optimizer": None,
        "train_args": dict(source.get("train_args") or {}),
        "pruned": dict(info),
    }
    torch.save(ckpt, path)
    return path


def validate(path: str | Path, data: str, imgsz: int, batch: int, device: Any, save_dir: Path) -> dict[str, float]:
    """mAP of a model file with Ultralytics' own `val` (any format `YOLO()` loads).

    Square letterboxed batches (`rect=False`) for every format: `YOLO.val` defaults .pt files to rectangular batches
    padded past `imgsz`, which fixed-size exports cannot take, and the stages must be compared on the same input.
    """
    kw = dict(data=data, imgsz=imgsz, batch=batch, device=device, rect=False, plots=False, verbose=False)
    m = YOLO(str(path), task=None).val(**kw, project=str(save_dir.parent), name=save_dir.name, exist_ok=True)
    return {"mAP50": float(m.box.map50), "mAP50-95": float(m.box.map)}


def run_prune(
    model: str,
    ratio: float = 0.5,
    importance: str = "l2",
    data: str | None = None,
    imgsz: int | None = None,
    batch: int = 1,
    device: Any = "cpu",
    project: str | None = None,
    name: str | None = None,
    exist_ok: bool = False,
    seed: int = 0,
) -> dict[str, Any]:
    """Prune a trained model, save it under runs/<task>/prune*/ and report params, GFLOPs and mAP before fine-tuning.

    Args:
        model (str): Trained detect/OBB .pt.
        ratio (float): Fraction of channels removed per layer group.
        importance (str): "l1", "l2" or "random".
        data (str | None): Dataset yaml; when given, both models are validated on its val split.
        imgsz (int | None): Image size for GFLOPs and validation (default: the model's training size).
        batch (int): Validation batch size.
        device (Any): Validation device.
        project (str | None): Parent folder (default runs/<task>).
        name (str | None): Run folder name (default prune, prune2, ...).
        exist_ok (bool): Reuse an existing run folder.
        seed (int): Seed for random importance.

    Returns:
        (dict): "file", "save_dir", and "teacher"/"pruned" rows with params, GFLOPs and (with data) mAP50, mAP50-95.
    """
    src, ckpt = load_detect_model(model)
    task = guess_model_task(src)
    trained = src.args.get("imgsz", 640) if isinstance(src.args, dict) else 640
    imgsz = int(imgsz or (max(trained) if isinstance(trained, (list, tuple)) else trained))
    pruned = prune_model(src, ratio, importance, seed=seed)
    args = IterableSimpleNamespace(task=task, mode="prune", project=project, name=name, exist_ok=exist_ok)
    save_dir = get_save_dir(args)
    info = {"source": str(model), "ratio": ratio, "importance": importance, "seed": seed}
    path = save_pruned(pruned, save_dir / "weights" / "pruned.pt", ckpt, info)
    rows = {"teacher": model_stats(src, imgsz), "pruned": model_stats(pruned, imgsz)}
    if data:
        rows["teacher"].update(validate(model, data, imgsz, batch, device, save_dir / "val-teacher"))
        rows["pruned"].update(validate(path, data, imgsz, batch, device, save_dir / "val-pruned"))
    report = {"file": str(path), "save_dir": str(save_dir), **info, "imgsz": imgsz, **rows}
    (save_dir / "results.json").write_text(json.dumps(report, indent=1))
    for k in ("teacher", "pruned"):
        r = rows[k]
        maps = f", mAP50 {r['mAP50']:.4f}, mAP50-95 {r['mAP50-95']:.4f}" if "mAP50" in r else ""
        LOGGER.info(f"{k:>8}: {r['params']:,} params, {r['GFLOPs']:.2f} GFLOPs at {imgsz}{maps}")
    LOGGER.info(f"Pruned by {ratio:g} ({importance}) before any fine-tuning. Results saved to {save_dir}")
    return report
