"""DS2D2: the explicit stream (weighted wavelet bands) and the implicit stream (knowledge amplifiers)."""

from __future__ import annotations

import torch
from torch import nn

from ds2d2_yolo.core.connectors import Adapter
from ds2d2_yolo.core.disw import SCORE_MODE, disw_weights, score_weights
from ds2d2_yolo.core.dwt import high_frequency
from ds2d2_yolo.core.losses import explicit_band_loss
from ds2d2_yolo.methods.base import FeatureMethod


def boxes_px(batch: dict, hw: tuple[int, int]) -> torch.Tensor:
    """Ground-truth boxes of a batch in input pixels: xyxy (M, 4) for detect, xywhr (M, 5) for OBB."""
    b = batch["bboxes"].float()
    h, w = hw
    if b.shape[-1] == 5:
        return torch.cat([b[:, :4] * b.new_tensor([w, h, w, h]), b[:, 4:]], 1)
    xy, wh = b[:, :2] * b.new_tensor([w, h]), b[:, 2:4] * b.new_tensor([w, h])
    return torch.cat([xy - wh / 2, xy + wh / 2], 1)


class DS2D2(FeatureMethod):
    """Dual-stream spectral decoupling distillation (see docs/method.md for the mapping onto YOLO heads)."""

    name = "ds2d2"
    help = "DS2D2: explicit DWT-band stream + implicit amplifier stream"
    weights = {"ex_low": "lambda_exl", "ex_high": "lambda_exh", "im_full": "lambda_imf", "im_high": "lambda_imh"}

    def connectors(self, s_ch, t_ch, cfg):
        """With adapters=per_stream, a second set of adapters for the implicit stream."""
        if cfg.get("adapters", "shared") != "per_stream":
            return {}
        return {"adapters_im": nn.ModuleList(Adapter(cs, ct, cfg["projector"]) for cs, ct in zip(s_ch, t_ch))}

    def terms(self, model, s_feats, s_ad, t_feats, batch):
        """The four weighted DS2D2 terms (zero where a stream is switched off)."""
        cfg, dwt = model.cfg, model.dwt
        zero = s_ad[0].new_zeros(())
        out = dict.fromkeys(self.loss_names, zero)
        head = model.teacher_head
        t_head_out = None  # the teacher head on its own features, computed once for the score map and im_full
        if cfg["implicit_full"] or (cfg["explicit"] and model.disw_mode == SCORE_MODE):
            with torch.no_grad():
                t_head_out = head.forward_head(t_feats, **head.one2many)
        # DWT bands of the plain features, shared by the explicit stream (unless it weights by score) and im_high.
        need_plain = cfg["implicit_high"] or (cfg["explicit"] and model.disw_mode != SCORE_MODE)
        plain = [(dwt(fs), dwt(ft)) for fs, ft in zip(s_ad, t_feats)] if need_plain else []
        if cfg["explicit"]:
            bands = plain
            if model.disw_mode == SCORE_MODE:
                # Weighting the features by sqrt(w) before an orthonormal DWT splits the confidence-weighted error
                # itself into bands; weighting the bands afterwards would blur the map over each wavelet cell.
                roots = [m.sqrt() for m in score_weights(t_head_out["scores"], [f.shape[-2:] for f in t_feats])]
                bands = [(dwt(fs * r), dwt(ft * r)) for fs, ft, r in zip(s_ad, t_feats, roots)]
            n, band_hw = s_ad[0].shape[0], [tuple(b[0][0].shape[-2:]) for b in bands]
            if model.disw_mode in {SCORE_MODE, "none"}:  # score weights are already inside the bands
                maps = [s_ad[0].new_ones(n, 1, *hw) for hw in band_hw]
            else:
                img_hw = tuple(batch["img"].shape[-2:])
                boxes, bidx = boxes_px(batch, img_hw), batch["batch_idx"].view(-1).long()
                maps = [disw_weights(boxes, bidx, n, img_hw, hw, model.disw_mode) for hw in band_hw]
            lo_sum, hi_sum = zero, zero
            for ((ll_s, h_s), (ll_t, h_t)), w in zip(bands, maps):
                lo, hi = explicit_band_loss(ll_s, h_s, ll_t, h_t, w)
                lo_sum, hi_sum = lo_sum + lo, hi_sum + hi
            out["ex_low"], out["ex_high"] = cfg["lambda_exl"] * lo_sum, cfg["lambda_exh"] * hi_sum

        kd = dict(beta=cfg["beta"], box_weight=cfg["box_kd"])
        s_im = [a(f.float()) for a, f in zip(model.adapters_im, s_feats)] if len(model.adapters_im) else s_ad
        if cfg["implicit_full"]:
            s_out = head.forward_head(s_im, **head.one2many)
            out["im_full"] = cfg["lambda_imf"] * model.head_kd(head, s_out, t_head_out, t_feats, **kd)
        if cfg["implicit_high"]:
            amp = model.amplifier
            if amp is None:
                raise RuntimeError("implicit_high is on but no high-frequency amplifier was built or loaded")
            hi_s = [dwt(f)[1] for f in s_im] if s_im is not s_ad else [b[0][1] for b in plain]
            hi_t = [b[1][1] for b in plain]
            hf_s = [high_frequency(h, f.shape[-2:]) for h, f in zip(hi_s, s_im)]
            with torch.no_grad():
                hf_t = [high_frequency(h, f.shape[-2:]) for h, f in zip(hi_t, t_feats)]
                t_out = amp.forward_head(hf_t, **amp.one2many)
            s_out = amp.forward_head(hf_s, **amp.one2many)
            out["im_high"] = cfg["lambda_imh"] * model.head_kd(amp, s_out, t_out, t_feats, **kd)
        return out
