"""How hard each method's distillation pulls on the student, against the detection loss, on the same real batches.

For one student checkpoint (e.g. a pruned teacher) and its teacher, on training batches of the DOTA-mini track, this
prints per method and term the gradient norm on the student's backbone and neck relative to the detection loss's,
and their cosine: Ultralytics' native distillation (its score-weighted L2 at `dis`), DS2D2's four terms at the
shipped weights, CWD and MGD. Loss values cannot show this: the ratio says which loss steers the shared parameters.
The DS2D2 amplifier here is an untrained copy of the teacher head (training one takes minutes), so `im_high` is the
value at the start of the amplifier's training, not after it.

    python benchmarks/grad_compare.py --student runs/regimes/pruned/prune50.pt --batches 4
"""

from __future__ import annotations

import argparse
import json
import statistics
from copy import deepcopy
from pathlib import Path

import torch
from step_cost import _batches
from tracks import prepare_dota_mini, shared_data
from ultralytics.cfg import get_cfg
from ultralytics.nn.distill_model import DistillationModel

from ds2d2_yolo.config import check_args
from ds2d2_yolo.core.diagnostics import grad_stats
from ds2d2_yolo.integration.hooks import detection_head, freeze
from ds2d2_yolo.integration.teacher import load_teacher
from ds2d2_yolo.integration.wrapper import DS2D2Model


def _student(path: str, imgsz: int) -> torch.nn.Module:
    """The student checkpoint's model in fp32, trainable, with training arguments for its loss."""
    model = torch.load(path, weights_only=False)["model"].float()
    model.args = get_cfg(overrides=dict(imgsz=imgsz, task="obb"))
    for p in model.parameters():
        p.requires_grad_(True)
    return model.train()


def _shared(student: torch.nn.Module) -> list[torch.nn.Parameter]:
    """The parameters both the detection loss and every distillation loss reach: all layers before the head."""
    return [p for p in student.model[:-1].parameters() if p.requires_grad]


def native_terms(model: DistillationModel, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Detection loss and native distillation loss of one batch, both as Ultralytics back-propagates them."""
    loss, _ = model.loss(batch)
    return loss[:-1].sum(), {"native": loss[-1]}


def ds2d2_terms(model: DS2D2Model, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Detection loss and each distillation term of one batch at its weight, scaled as the wrapper back-propagates."""
    captured: dict[str, dict] = {}
    distill_terms = model.distill_terms

    def spy(*a, **k):
        captured["terms"] = distill_terms(*a, **k)
        return captured["terms"]

    model.distill_terms = spy
    try:
        loss, _ = model.loss(batch)
    finally:
        del model.distill_terms
    bs = batch["img"].shape[0]
    return loss[:-1].sum(), {k: v * bs for k, v in captured["terms"].items()}


def measure(model: torch.nn.Module, student: torch.nn.Module, batches: list[dict], fn) -> dict[str, dict[str, float]]:
    """Mean ratio and cosine per term over the batches."""
    rows: dict[str, dict[str, list[float]]] = {}
    for b in batches:
        det, terms = fn(model, b)
        for k, v in grad_stats(det, terms, _shared(student)).items():
            for m, x in v.items():
                rows.setdefault(k, {}).setdefault(m, []).append(x)
        model.zero_grad(set_to_none=True)
    return {k: {m: statistics.fmean(x) for m, x in v.items()} for k, v in rows.items()}


def main() -> None:
    """Measure every method on the same batches and print one markdown table (and JSON with --json)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--student", required=True, help="student .pt (e.g. a pruned teacher)")
    ap.add_argument("--teacher", default=str(shared_data().parent / "weights" / "yolov8n-obb-dota.pt"))
    ap.add_argument("--work", default="runs/grad_compare", help="where the DOTA-mini tiles are cut")
    ap.add_argument("--imgsz", type=int, default=320)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--batches", type=int, default=4)
    ap.add_argument("--json", default="", help="also write the numbers to this file")
    a = ap.parse_args()
    data = str(prepare_dota_mini(Path(a.work))["tune"])
    batches = _batches(data, a.imgsz, a.batch, a.batches)
    names = getattr(torch.load(a.teacher, weights_only=False)["model"], "names", {})
    out: dict[str, dict[str, dict[str, float]]] = {}
    for method in ("native", "ds2d2", "cwd", "mgd"):
        torch.manual_seed(0)  # the same projector/adapter initialisation for every method
        student = _student(a.student, a.imgsz)
        teacher = load_teacher(a.teacher, "obb", names).model
        if method == "native":
            model, fn = DistillationModel(teacher_model=teacher, student_model=student).train(), native_terms
        else:
            cfg = check_args({"distill": method})
            amp = None
            if method == "ds2d2":
                amp = freeze(deepcopy(detection_head(teacher)))
            model, fn = DS2D2Model(student, teacher, cfg, amplifier=amp).train(), ds2d2_terms
        out[method] = measure(model, student, batches, fn)
    lines = ["| method | term | ‖∇term‖ / ‖∇det‖ | cos(∇term, ∇det) |", "|---|---|---|---|"]
    for method, terms in out.items():
        for k, v in terms.items():
            lines.append(f"| {method} | {k} | {v['ratio']:.3f} | {v['cos']:+.3f} |")
    print("\n".join(lines))
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
