"""The high-frequency knowledge amplifier: a copy of the teacher head trained on HF(teacher neck), cached to a file."""

from __future__ import annotations

import copy
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from ds2d2_yolo.config import DS2D2ArgError
from ds2d2_yolo.distiller import match_channels
from ds2d2_yolo.dwt import DWT2d, high_frequency
from ds2d2_yolo.hooks import head_features

FORMAT = "ds2d2-amplifier/1"


def hf_features(feats: list[torch.Tensor], dwt: DWT2d) -> list[torch.Tensor]:
    """HF(F): the sum of the three detail bands of each level, upsampled back to the level's size."""
    return [high_frequency(dwt(f.float())[1], f.shape[-2:]) for f in feats]


def atomic_save(obj: Any, path: str | Path) -> None:
    """torch.save to a temporary file in the same folder, then rename, so a crash never leaves a half file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        # Save by path, not into an open file: Ultralytics replaces torch.save with a version that retries after a
        # RuntimeError, and each retry must start from an empty file instead of appending to the failed attempt.
        torch.save(obj, tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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
) -> nn.Module:
    """Train a high-frequency amplifier head on HF(frozen teacher neck) with the teacher's own YOLO loss.

    The head starts as a copy of the teacher's (DESIGN Part 2); the backbone and neck stay frozen, so only the
    head learns to read high-frequency maps. BatchNorm statistics adapt too, since HF maps are far smaller in
    magnitude than raw features.

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

    Returns:
        (nn.Module): The trained head, frozen and in eval mode.
    """
    device = next(teacher.parameters()).device
    head = copy.deepcopy(head).to(device).train()
    for p in head.parameters():
        p.requires_grad_(True)
    for p in head.dfl.parameters():
        p.requires_grad_(False)  # DFL is a fixed integral, as in Ultralytics
    dwt = DWT2d(wavelet, wave_mode).to(device)
    saved_args = getattr(teacher, "args", None)
    teacher.args = hyp
    try:
        criterion = teacher.init_criterion()
    finally:
        teacher.args = saved_args
    criterion.class_weights = None
    opt = torch.optim.AdamW([p for p in head.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
    ch = int(teacher.yaml.get("channels", 3))
    inverse = None if class_map is None else class_map.to(device)
    teacher.eval()
    for epoch in range(epochs):
        head.train()
        total, n = 0.0, 0
        for batch in batches():
            with torch.no_grad():
                feats = head_features(teacher, match_channels(batch["img"].float(), ch))
                hf = hf_features(feats, dwt)
            if inverse is not None:
                batch = {**batch, "cls": inverse[batch["cls"].long().view(-1)].view_as(batch["cls"]).to(batch["cls"])}
            loss, _ = criterion(head(hf), batch)
            loss = loss.sum()
            if not torch.isfinite(loss):
                continue
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(head.parameters(), 10.0)
            opt.step()
            total, n = total + loss.item() / batch["img"].shape[0], n + 1
        if log:
            log(f"DS2D2 amplifier epoch {epoch + 1}/{epochs}: loss {total / max(n, 1):.4g} ({n} batches)")
    head.trained_epochs = int(epochs)  # travels with the head, so checkpoints record how it was made
    return freeze(head)


def freeze(head: nn.Module) -> nn.Module:
    """Put a head in eval mode without gradients (and drop the last training step's .grad buffers)."""
    head.eval()
    for p in head.parameters():
        p.requires_grad_(False)
        p.grad = None
    return head


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
