"""ds2d2-yolo: Dual-Stream Spectral Decoupling Distillation (DS2D2) for Ultralytics YOLO, detect and OBB."""

from __future__ import annotations

import importlib
import os

# Nothing in this package may reach the network: keep Ultralytics' online checks and downloads off.
os.environ.setdefault("YOLO_OFFLINE", "1")

__version__ = "0.1.0"

_LAZY = {
    "DWT2d": "ds2d2_yolo.core.dwt",
    "high_frequency": "ds2d2_yolo.core.dwt",
    "disw_weights": "ds2d2_yolo.core.disw",
    "DS2D2Trainer": "ds2d2_yolo.integration.trainer",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str):
    """Import public names lazily so `import ds2d2_yolo` stays light (no Ultralytics import for the spectral core)."""
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'ds2d2_yolo' has no attribute '{name}'")
