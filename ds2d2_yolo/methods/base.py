"""The interface every feature-distillation method implements, so the wrapper and trainer never branch on names."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class FeatureMethod:
    """A distillation method on the head-input features (the wrapper's hooks and adapters are shared by all).

    Subclasses set the class attributes and implement `terms`; registering one in `ds2d2_yolo.methods.REGISTRY`
    makes it a `distill=` choice everywhere (CLI, trainer, benchmark, help).

    Attributes:
        name (str): The `distill=` value.
        help (str): One line for `ds2d2-yolo help`.
        weights (dict[str, str]): Logged term -> the DS2D2 key of its loss weight (what `balance=grad` rescales).
    """

    name: str = ""
    help: str = ""
    weights: dict[str, str] = {}

    @property
    def loss_names(self) -> tuple[str, ...]:
        """The terms this method logs, in order."""
        return tuple(self.weights)

    def connectors(self, s_ch: list[int], t_ch: list[int], cfg: dict[str, Any]) -> dict[str, nn.ModuleList]:
        """Trainable modules besides the per-level adapters (trained with the student, saved in last.pt).

        Returns:
            (dict[str, nn.ModuleList]): Wrapper attribute -> modules; the wrapper creates each name it knows
                (`generators`, `adapters_im`) empty when a method does not return it.
        """
        return {}

    def terms(
        self, model: nn.Module, s_feats: list[torch.Tensor], s_ad: list[torch.Tensor], t_feats: list, batch: dict
    ) -> dict[str, torch.Tensor]:
        """Weighted distillation terms of one batch, in fp32.

        Args:
            model (nn.Module): The training wrapper, `DS2D2Model`: its connectors, teacher, amplifier, validated
                `cfg`, and the Ultralytics head access (`teacher_head`, `head_kd`). Methods take it as an argument
                rather than importing it, so the registry stays free of Ultralytics and the wrapper can import it.
            s_feats (list[torch.Tensor]): Student head inputs (with gradient).
            s_ad (list[torch.Tensor]): The same after the per-level adapters, in fp32.
            t_feats (list[torch.Tensor]): Teacher head inputs in fp32 (no gradient).
            batch (dict): The Ultralytics batch (image size and ground-truth boxes).

        Returns:
            (dict[str, torch.Tensor]): Term -> weighted scalar, one entry per `loss_names`.
        """
        raise NotImplementedError
