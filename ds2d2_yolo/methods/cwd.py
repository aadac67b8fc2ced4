"""Channel-wise distillation (CWD) on the adapted head inputs, a baseline on DS2D2's hooks and adapters."""

from __future__ import annotations

from ds2d2_yolo.core.losses import cwd_loss
from ds2d2_yolo.methods.base import FeatureMethod


class CWD(FeatureMethod):
    """KL divergence of per-channel spatial softmax maps (temperature `cwd_tau`), summed over levels."""

    name = "cwd"
    help = "channel-wise distillation (cwd_tau, cwd_weight)"
    weights = {"cwd": "cwd_weight"}

    def terms(self, model, s_feats, s_ad, t_feats, batch):
        """The weighted CWD term."""
        cfg = model.cfg
        return {"cwd": cfg["cwd_weight"] * sum(cwd_loss(s, t, cfg["cwd_tau"]) for s, t in zip(s_ad, t_feats))}
