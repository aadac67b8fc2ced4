"""Capture of the detection head's input features (the neck levels P3/P4/P5) with picklable hooks."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn
from ultralytics.nn.modules.head import Detect


class HeadReached(Exception):
    """Raised by a stopping hook so a teacher forward ends at the head inputs instead of decoding predictions."""


class HeadInputHook:
    """Picklable forward pre-hook that stores the list of feature maps a detection head receives.

    Attributes:
        store (dict): Shared dict receiving the captured features under `key`.
        key (str): Key to store the features under.
        stop (bool): Raise `HeadReached` after capturing, skipping the head and its decoding.
    """

    def __init__(self, store: dict, key: str, stop: bool = False) -> None:
        """Initialize the hook with its target dict and key."""
        self.store = store
        self.key = key
        self.stop = stop

    def __call__(self, module: nn.Module, args: tuple) -> None:
        """Store the head inputs (a list of tensors, one per level) and optionally stop the forward pass."""
        self.store[self.key] = list(args[0])
        if self.stop:
            raise HeadReached


def detection_head(model: nn.Module) -> nn.Module:
    """Return the Detect/OBB head of an Ultralytics detection model (its last layer)."""
    head = model.model[-1]
    if not isinstance(head, Detect):
        raise TypeError(f"{type(model).__name__} has no Detect/OBB head as its last layer; DS2D2 needs one")
    return head


@contextmanager
def capture_head_inputs(model: nn.Module, store: dict, key: str, stop: bool = False) -> Iterator[dict]:
    """Register a head-input hook for the duration of a forward pass only.

    Registering per call keeps hooks out of every deepcopy (EMA) and every pickled checkpoint, so saved students
    never reference this package.

    Args:
        model (nn.Module): Ultralytics detection model.
        store (dict): Dict that receives the features under `key`.
        key (str): Key to use.
        stop (bool): Stop the forward at the head (the caller catches `HeadReached`).

    Yields:
        (dict): The `store` dict.
    """
    handle = detection_head(model).register_forward_pre_hook(HeadInputHook(store, key, stop))
    try:
        yield store
    finally:
        handle.remove()


def head_features(model: nn.Module, img: torch.Tensor) -> list[torch.Tensor]:
    """Run `model` up to its detection head and return the head's input features (no head, no decoding)."""
    store: dict = {}
    with capture_head_inputs(model, store, "x", stop=True):
        try:
            model(img)
        except HeadReached:
            pass
    return store["x"]


def match_channels(img: torch.Tensor, channels: int) -> torch.Tensor:
    """Adapt an image batch to a model's input channels (grey data for an RGB teacher, or the reverse)."""
    c = img.shape[1]
    if c == channels:
        return img
    if c == 1:
        return img.expand(-1, channels, -1, -1)
    if channels == 1:
        return img.mean(1, keepdim=True)
    raise ValueError(f"cannot feed {c}-channel images to a {channels}-channel teacher")


def freeze(module: nn.Module) -> nn.Module:
    """Put a teacher, amplifier or inspected model in eval mode without gradients, in place.

    Also drops any .grad buffers left by training (an amplifier's last step), so a frozen module holds no stale state.
    """
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
        p.grad = None
    return module
