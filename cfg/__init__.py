"""Configuration files shipped with ds2d2-yolo (DS2D2 defaults, dataset and model yamls)."""

from __future__ import annotations

from pathlib import Path

CFG_DIR = Path(__file__).resolve().parent
