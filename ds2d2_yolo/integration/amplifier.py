"""The high-frequency knowledge amplifier: a copy of the teacher head trained on HF(teacher neck), cached to a file."""

from __future__ import annotations

import copy
import itertools
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from ds2d2_yolo.config import DS2D2ArgError
from ds2d2_yolo.core.dwt import DWT2d, high_frequency
from ds2d2_yolo.integration.checkpoint import atomic_save
from ds2d2_yolo.integration.hooks import freeze, head_features, match_channels

FORMAT = "ds2d2-amplifier/1"
CALIB_BATCHES = 32  # batches of the BatchNorm recalibration pass after amplifier training
CHECK_BATCHES = 8  # batches on which the frozen amplifier's loss is compared with its train-mode loss


def hf_features(feats: list[torch.Tensor], dwt: DWT2d) -> list[torch.Tensor]:
    """HF(F): the sum of the three detail bands of each level, upsampled back to the level's size."""
    return [high_frequency(dwt(f.float())[1], f.shape[-2:]) for f in feats]


def train_amplifier(
    teacher: nn.Module,
    head: nn.Module,
    batches: Callable[[], Iterable[dict]],
    hyp: Any,
    epochs: int,
    wavelet: str = "haar",
    wave_mode: str = "zero",
    class_map: torch.Tensor | None = None,
    lr: float = 1e-3,
    log: Callable[[str], None] | None = None,
    progress: Callable[[Iterable, str], Iterable] | None = None,
) -> nn.Module:
    """Train a high-frequency amplifier head on HF(frozen teacher neck) with the teacher's own YOLO loss.

    The head starts as a copy of the teacher's; the backbone and neck stay frozen, so only the head learns to read
    high-frequency maps. Training uses batch statistics; afterwards the BatchNorm running statistics are recomputed
    as a cumulative average over one no-grad pass (`recalibrate_bn`): with Ultralytics' BatchNorm momentum of 0.03
    and a few dozen steps, the running statistics would otherwise still be mostly the teacher's, and the frozen
    amplifier would not be the function that was trained.

    Args:
        teacher (nn.Module): Frozen teacher (eval mode).
        head (nn.Module): Unfused copy of the teacher's head to start from (copied again here).
        batches (Callable): Returns an iterable of preprocessed Ultralytics batches for one epoch.
        hyp (Any): Hyperparameter namespace for the detection loss (box, cls, dfl, ...), e.g. trainer args.
        epochs (int): Number of passes over `batches()`.
        wavelet (str): DWT wavelet, as used during distillation.
        wave_mode (str): DWT padding mode.
        class_map (torch.Tensor | None): Student class i -> teacher class; labels are mapped to the teacher's order.
        lr (float): AdamW learning rate.
        log (Callable | None): Progress logger.
        progress (Callable | None): Wraps an epoch's batches in a progress bar, given a description.

    Returns:
        (nn.Module): The trained head, frozen and in eval mode, with `train_loss` and `eval_loss` (the mean loss on
            `CHECK_BATCHES` training batches with batch statistics, and frozen with the recalibrated running
            statistics).
    """
    device = next(teacher.parameters()).device
    head = copy.deepcopy(head).to(device).train()
    for p in head.parameters():
        p.requires_grad_(True)
    for p in head.dfl.parameters():
        p.requires_grad_(False)  # DFL is a fixed integral, as in Ultralytics
    dwt = DWT2d(wavelet, wave_mode).to(device)
    criterion = _criterion(teacher, hyp)
    opt = torch.optim.AdamW([p for p in head.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
    ch = int(teacher.yaml.get("channels", 3))
    inverse = None if class_map is None else class_map.to(device)
    teacher.eval()

    def inputs(batch: dict) -> tuple[list[torch.Tensor], dict]:
        with torch.no_grad():
            hf = hf_features(head_features(teacher, match_channels(batch["img"].float(), ch)), dwt)
        if inverse is not None:
            batch = {**batch, "cls": inverse[batch["cls"].long().view(-1)].view_as(batch["cls"]).to(batch["cls"])}
        return hf, batch

    for epoch in range(epochs):
        head.train()
        total, n = 0.0, 0
        desc = f"DS2D2 amplifier {epoch + 1}/{epochs}"
        bar = progress(batches(), desc) if progress else batches()
        for batch in bar:
            hf, batch = inputs(batch)
            loss, _ = criterion(head(hf), batch)
            loss = loss.sum()
            if not torch.isfinite(loss):
                continue
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(head.parameters(), 10.0)
            opt.step()
            total, n = total + loss.item() / batch["img"].shape[0], n + 1
            if hasattr(bar, "set_postfix_str"):
                bar.set_postfix_str(f"loss {total / n:.4g}")
        if log:
            log(f"DS2D2 amplifier epoch {epoch + 1}/{epochs}: loss {total / max(n, 1):.4g} ({n} batches)")
    if epochs:
        # A bounded number of batches, passing over a small dataset several times: BatchNorm statistics settle within
        # a few hundred images, and a full extra pass over a large dataset would cost as much as an epoch.
        def stream(n: int) -> Iterable[dict]:
            return itertools.islice(itertools.chain.from_iterable(batches() for _ in range(n)), n)

        recalibrate_bn(head, (inputs(b)[0] for b in stream(CALIB_BATCHES)))
        check = [inputs(b) for b in stream(CHECK_BATCHES)]
        head.train_loss = amplifier_loss(head, criterion, check, train_mode=True)
        head.eval_loss = amplifier_loss(head, criterion, check, train_mode=False)
    head.trained_epochs = int(epochs)  # travels with the head, so checkpoints record how it was made
    return freeze(head)


def _criterion(teacher: nn.Module, hyp: Any) -> Any:
    """The teacher's own detection loss, built with the run's hyperparameters (box, cls, dfl, ...)."""
    saved_args = getattr(teacher, "args", None)
    teacher.args = hyp
    try:
        criterion = teacher.init_criterion()
    finally:
        teacher.args = saved_args
    criterion.class_weights = None
    return criterion


def recalibrate_bn(head: nn.Module, inputs: Iterable[list[torch.Tensor]]) -> int:
    """Recompute every BatchNorm's running statistics as the cumulative average over `inputs` (no gradients).

    Args:
        head (nn.Module): The head whose BatchNorm layers are recalibrated (its weights do not change).
        inputs (Iterable[list[torch.Tensor]]): Head inputs, one list of level features per batch.

    Returns:
        (int): The number of batches seen.
    """
    bns = [m for m in head.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average: every batch counts equally
    was_training, n = head.training, 0
    head.train()
    try:
        with torch.no_grad():
            for x in inputs:
                head(x)
                n += 1
    finally:
        for m, mom in zip(bns, momenta):
            m.momentum = mom
        head.train(was_training)
    return n


def amplifier_loss(head: nn.Module, criterion: Any, batches: list[tuple[list[torch.Tensor], dict]], train_mode: bool):
    """Mean per-image detection loss of `head` over cached (HF features, batch) pairs, without updating anything.

    With `train_mode` the BatchNorm layers normalise with each batch's own statistics (as in training); otherwise with
    their running statistics (as the frozen amplifier does). Running statistics are left as they were.
    """
    if not batches:
        return float("nan")
    bns = [m for m in head.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [(m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone()) for m in bns]
    was_training = head.training
    head.train(train_mode)
    total, n = 0.0, 0
    try:
        with torch.no_grad():
            for hf, batch in batches:
                out = head(hf)
                if not train_mode:
                    out = out[1]  # eval mode returns (decoded, raw); the loss reads the raw dict
                total += criterion(out, batch)[0].sum().item()
                n += batch["img"].shape[0]
    finally:
        for m, (rm, rv, nb) in zip(bns, saved):
            m.running_mean.copy_(rm)
            m.running_var.copy_(rv)
            m.num_batches_tracked.copy_(nb)
        head.train(was_training)
    return total / max(n, 1)


def amplifier_state(head: nn.Module, fingerprint: str, cfg: dict, epochs: int) -> dict[str, Any]:
    """The amplifier as plain tensors plus what it must match (teacher fingerprint, wavelet), for files and last.pt."""
    return {
        "format": FORMAT,
        "state_dict": {k: v.detach().cpu() for k, v in head.state_dict().items()},
        "teacher_fingerprint": fingerprint,
        "wavelet": cfg["wavelet"],
        "wave_mode": cfg["wave_mode"],
        "epochs": int(epochs),
    }


def save_amplifier(head: nn.Module, path: str | Path, fingerprint: str, cfg: dict, epochs: int) -> Path:
    """Write an amplifier file (`amplifier_state`), readable by `load_amplifier`."""
    atomic_save(amplifier_state(head, fingerprint, cfg, epochs), path)
    return Path(path)


def amplifier_from_state(template: nn.Module, state: dict, fingerprint: str, cfg: dict, source: str) -> nn.Module:
    """Rebuild an amplifier head from saved state, after checking it was made for this teacher and wavelet."""
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise DS2D2ArgError(f"amplifier '{source}' is not a DS2D2 amplifier file; omit amplifier= to train one")
    if state.get("teacher_fingerprint") != fingerprint:
        raise DS2D2ArgError(
            f"amplifier '{source}' was trained for another teacher (fingerprint mismatch); omit amplifier= to train "
            "one for this teacher"
        )
    for k in ("wavelet", "wave_mode"):
        if state.get(k) != cfg[k]:
            raise DS2D2ArgError(
                f"amplifier '{source}' was trained with {k}={state.get(k)} but this run uses {k}={cfg[k]}; "
                "omit amplifier= to train a matching one"
            )
    head = copy.deepcopy(template)
    head.load_state_dict(state["state_dict"])
    head.trained_epochs = int(state.get("epochs", 0))
    return freeze(head)


def load_amplifier(path: str | Path, template: nn.Module, fingerprint: str, cfg: dict) -> nn.Module:
    """Load and check an amplifier file written by `save_amplifier`."""
    p = Path(path)
    if not p.is_file():
        raise DS2D2ArgError(f"amplifier file '{path}' not found; omit amplifier= to train one automatically")
    try:
        state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception:
        raise DS2D2ArgError(f"amplifier '{path}' is unreadable; omit amplifier= to train one automatically") from None
    return amplifier_from_state(template, state, fingerprint, cfg, str(path))
