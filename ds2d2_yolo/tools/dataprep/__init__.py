"""Dataset preparation: DOTA / DIOR / DIOR-R / HRSC annotations to Ultralytics YOLO labels, and DOTA tiling.

All functions are pure library code (no argument parsing) so the CLI, notebooks and tests share one implementation.

Output layouts follow Ultralytics conventions:

- detect labels: one `cls xc yc w h` row per object, normalised to [0, 1];
- OBB labels: one `cls x1 y1 x2 y2 x3 y3 x4 y4` row per object, normalised to [0, 1];
- a dataset folder holds `images/[split/]` and `labels/[split/]` with matching file stems.

Class names are matched case-insensitively and ignoring '-', '_' and spaces, so DOTA's `storage-tank`, DIOR's
`storagetank` and a model's `storage tank` all resolve to the same index.

Unknown class names: every converter takes `unknown="error"` (default: raise `ValueError` naming the file and the
class, so a wrong class list never silently drops data) or `unknown="skip"` (drop the object and count it in the
returned stats under `unknown`, e.g. DOTA-v1.5 `container-crane` when converting with the 15 DOTA-v1.0 classes).
"""

from __future__ import annotations

from ds2d2_yolo.tools.dataprep.common import (
    DIOR_CLASSES,
    DOTA_V1_CLASSES,
    IMAGE_SUFFIXES,
    class_index_map,
    normalize_class_name,
    split_off_val,
    write_data_yaml,
)
from ds2d2_yolo.tools.dataprep.convert import prepare_dior, run_convert
from ds2d2_yolo.tools.dataprep.dior import convert_dior_r, convert_dior_voc
from ds2d2_yolo.tools.dataprep.dota import clip_polygon_to_window, convert_dota, parse_dota_label, tile_dota

__all__ = [
    "DIOR_CLASSES",
    "DOTA_V1_CLASSES",
    "IMAGE_SUFFIXES",
    "class_index_map",
    "normalize_class_name",
    "split_off_val",
    "write_data_yaml",
    "clip_polygon_to_window",
    "convert_dota",
    "parse_dota_label",
    "tile_dota",
    "convert_dior_r",
    "convert_dior_voc",
    "prepare_dior",
    "run_convert",
]
