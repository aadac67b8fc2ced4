"""Masked generative distillation (MGD) on the adapted head inputs, a baseline on DS2D2's hooks and adapters."""

from __future__ import annotations

from torch import nn

from ds2d2_yolo.core.connectors import MGDGenerator
from ds2d2_yolo.core.losses import mgd_loss
from ds2d2_yolo.methods.base import FeatureMethod


class MGD(FeatureMethod):
    """Randomly masked student features regenerated into the teacher's by a small generator per level."""

    name = "mgd"
    help = "masked generative distillation (mgd_alpha, mgd_mask_ratio)"
    weights = {"mgd": "mgd_alpha"}

    def connectors(self, s_ch, t_ch, cfg):
        """One generation block per level, on the teacher's channels."""
        return {"generators": nn.ModuleList(MGDGenerator(c, cfg["mgd_mask_ratio"]) for c in t_ch)}

    def terms(self, model, s_feats, s_ad, t_feats, batch):
        """The weighted MGD term."""
        loss = sum(mgd_loss(g(s), t) for g, s, t in zip(model.generators, s_ad, t_feats))
        return {"mgd": model.cfg["mgd_alpha"] * loss}
