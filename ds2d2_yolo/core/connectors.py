"""Student-side connectors: the per-level width adapter (projector) and the MGD generation block.

Both are training-only parameters of the student side: they go into the optimizer and the EMA and are dropped
from the exported student.
"""

from __future__ import annotations

import torch
import torch.nn as nn

PROJECTORS = ("linear", "mlp")


class Adapter(nn.Module):
    """Per-level projection of student features (C_s channels) to the teacher's width (C_t).

    It is the phi of DS2D2's explicit stream and also feeds the teacher head on the implicit path.

    - "linear" (the reference's connector): one 1x1 convolution without bias, in PyTorch's default Conv2d
      initialisation (Kaiming-uniform with a = sqrt(5)).
    - "mlp": 1x1 conv - ReLU - 1x1 conv, both with bias, the projector of Ultralytics' feature distillation. The
      hidden non-linearity lets the projector absorb part of the mismatch, so imitation pulls the student less
      rigidly towards the teacher's exact features.

    Attributes:
        conv (nn.Module): The projection (a Conv2d, or a Sequential for "mlp").

    Examples:
        >>> Adapter(64, 128)(torch.randn(2, 64, 20, 20)).shape
        torch.Size([2, 128, 20, 20])
        >>> Adapter(64, 128, "mlp")(torch.randn(2, 64, 20, 20)).shape
        torch.Size([2, 128, 20, 20])
    """

    def __init__(self, c_s: int, c_t: int, kind: str = "linear"):
        """Create the projection.

        Args:
            c_s (int): Student channels.
            c_t (int): Teacher channels.
            kind (str): "linear" or "mlp".
        """
        super().__init__()
        if kind not in PROJECTORS:
            raise ValueError(f"unknown projector {kind!r}: use one of {', '.join(PROJECTORS)}")
        if kind == "linear":
            self.conv = nn.Conv2d(c_s, c_t, 1, bias=False)
        else:
            self.conv = nn.Sequential(nn.Conv2d(c_s, c_t, 1), nn.ReLU(inplace=True), nn.Conv2d(c_t, c_t, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Project (N, C_s, H, W) features to (N, C_t, H, W)."""
        return self.conv(x)


class MGDGenerator(nn.Module):
    """Masked Generative Distillation block (Yang et al. 2022): mask aligned student features, then regenerate.

    In training mode each spatial position is dropped (zeroed across all channels) with probability `mask_ratio`,
    independently per image, and conv3x3-ReLU-conv3x3 has to generate the teacher's features from what is left.
    In eval mode nothing is masked, so the block is deterministic outside training.

    Attributes:
        mask_ratio (float): Probability of dropping a position (MGD's lambda; 0.65 for detection in the paper).
        generation (nn.Sequential): conv3x3 - ReLU - conv3x3 on C_t channels (with bias, as in MGD).

    Examples:
        >>> gen = MGDGenerator(128, 0.65)
        >>> gen(torch.randn(2, 128, 20, 20), generator=torch.Generator().manual_seed(0)).shape
        torch.Size([2, 128, 20, 20])
    """

    def __init__(self, channels: int, mask_ratio: float = 0.65):
        """Create the generation block.

        Args:
            channels (int): Teacher channels C_t (the input is already adapted to them).
            mask_ratio (float): Probability in [0, 1) of dropping each spatial position during training.
        """
        super().__init__()
        if not 0.0 <= float(mask_ratio) < 1.0:
            raise ValueError(f"MGD mask_ratio must be in [0, 1), got {mask_ratio}")
        self.mask_ratio = float(mask_ratio)
        self.generation = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, 3, padding=1),
        )

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Mask (training only) and generate.

        Args:
            x (torch.Tensor): (N, C_t, H, W) aligned student features.
            generator (torch.Generator | None): Random source for the mask, on `x`'s device; None uses the global one.

        Returns:
            (torch.Tensor): (N, C_t, H, W) generated features.
        """
        if self.training and self.mask_ratio > 0:
            n, _, h, w = x.shape
            keep = torch.rand(n, 1, h, w, generator=generator, device=x.device) >= self.mask_ratio
            x = x * keep.to(x.dtype)
        return self.generation(x)
