"""Edge exports: Ultralytics' exporter, writing where the pipeline says, with a faster DFL decode in the graph.

Ultralytics' DFL decode transposes the (B, 4, 16, A) bin logits to (B, 16, 4, A), takes the softmax over the bins
there and sums them with a 1x1 convolution. ONNX Runtime runs that softmax (not on the last axis, after a transpose)
at 4.5 to 6 ms per 640-px image on one CPU thread, a fifth of the whole INT8 forward pass of a 50 %-pruned
yolov8n-obb. Here the expectation over the bins is taken where they already lie, as the bin-weighted sum of the
exponentials over their plain sum (after subtracting each side's largest logit, so nothing overflows): elementwise
operations and two reductions along the bins, about half the cost of a softmax on that axis, and the same function
with the same output to float rounding. Only the exported graph changes: the weights, the .pt file and the outputs'
layout are Ultralytics' own, so `YOLO(file)` loads, validates and predicts the export as before."""

from __future__ import annotations

import types
from pathlib import Path
from typing import Any

import torch
from ultralytics import YOLO
from ultralytics.nn.modules.block import DFL


def dfl_decode(x: torch.Tensor, weight: torch.Tensor, bins: int) -> torch.Tensor:
    """Expected box-side distances from DFL logits, as `DFL.forward`, normalised over the bins where they lie.

    Args:
        x (torch.Tensor): Logits of shape (B, 4 * bins, A).
        weight (torch.Tensor): The DFL's fixed integral weights (bins values, any shape).
        bins (int): Bins per box side (reg_max).

    Returns:
        (torch.Tensor): Distances of shape (B, 4, A).
    """
    b, _, a = x.shape
    x = x.view(b, 4, bins, a)
    e = (x - x.amax(2, keepdim=True)).exp()
    return ((weight.reshape(1, 1, 1, bins) @ e) / e.sum(2, keepdim=True)).view(b, 4, a)


def _fast_forward(self: DFL, x: torch.Tensor) -> torch.Tensor:
    return dfl_decode(x, self.conv.weight, self.c1)


def use_fast_dfl(model: torch.nn.Module) -> int:
    """Give every DFL module of `model` the in-place decode (on the instances, so nothing global changes).

    Returns:
        (int): How many DFL modules were changed (0 for heads without DFL, e.g. YOLO26's reg_max=1).
    """
    n = 0
    for m in model.modules():
        if isinstance(m, DFL):
            m.forward = types.MethodType(_fast_forward, m)
            n += 1
    return n


def export_to(weights: str | Path, fmt: str, out: Path, fast_dfl: bool = True, **kw: Any) -> Path:
    """Export with Ultralytics, writing `out` (a file, or an OpenVINO folder) instead of beside the weights.

    The exporter names its output after the model's `pt_path`; pointing that into the run folder keeps exports of a
    read-only teacher possible and keeps every output of the pipeline in one place.

    Args:
        weights (str | Path): Ultralytics .pt file.
        fmt (str): Ultralytics export format ("onnx", "openvino", ...).
        out (Path): Where the export goes (its suffix is replaced by the exporter's).
        fast_dfl (bool): Export the DFL decode with `dfl_decode` (see the module docstring); False keeps
            Ultralytics' graph.
        **kw (Any): Ultralytics export arguments.

    Returns:
        (Path): The exported file or folder.
    """
    model = YOLO(str(weights))
    model.model.pt_path = str(out.with_suffix(".pt"))
    if fast_dfl:
        use_fast_dfl(model.model)
    return Path(model.export(format=fmt, **kw))
