"""Shared pieces of dataset preparation: class lists and name matching, image lookup, validation splits and the
dataset yaml."""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from PIL import Image
from ultralytics.data.utils import exif_size
from ultralytics.utils import YAML

DOTA_V1_CLASSES: tuple[str, ...] = (
    "plane",
    "ship",
    "storage-tank",
    "baseball-diamond",
    "tennis-court",
    "basketball-court",
    "ground-track-field",
    "harbor",
    "bridge",
    "large-vehicle",
    "small-vehicle",
    "helicopter",
    "roundabout",
    "soccer-ball-field",
    "swimming-pool",
)

DIOR_CLASSES: tuple[str, ...] = (
    "airplane",
    "airport",
    "baseballfield",
    "basketballcourt",
    "bridge",
    "chimney",
    "dam",
    "Expressway-Service-area",
    "Expressway-toll-station",
    "golffield",
    "groundtrackfield",
    "harbor",
    "overpass",
    "ship",
    "stadium",
    "storagetank",
    "tenniscourt",
    "trainstation",
    "vehicle",
    "windmill",
)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def normalize_class_name(name: str) -> str:
    """Return the matching key of a class name: lower case without '-', '_' or whitespace.

    Args:
        name (str): Class name as written in an annotation or a class list.

    Returns:
        (str): Canonical key, e.g. 'Expressway-Service-area' -> 'expresswayservicearea'.
    """
    return "".join(ch for ch in name.lower() if ch not in "-_ \t")


def class_index_map(classes: Sequence[str] | dict[int, str]) -> dict[str, int]:
    """Build the lookup from canonical class key to class index.

    Args:
        classes (Sequence[str] | dict[int, str]): Class names in index order, or an Ultralytics-style `names` dict.

    Returns:
        (dict[str, int]): Canonical key -> class index.

    Raises:
        ValueError: If two class names collapse to the same canonical key (they could not be told apart).
    """
    items = sorted(classes.items()) if isinstance(classes, dict) else enumerate(classes)
    lookup: dict[str, int] = {}
    for i, name in items:
        key = normalize_class_name(str(name))
        if key in lookup:
            raise ValueError(f"class names {classes!r} are ambiguous: '{name}' matches index {lookup[key]} and {i}")
        lookup[key] = int(i)
    return lookup


def _class_names(classes: Sequence[str] | dict[int, str]) -> list[str]:
    """Return class names as a list in index order."""
    if isinstance(classes, dict):
        return [str(classes[i]) for i in sorted(classes)]
    return [str(c) for c in classes]


def check_unknown(unknown: str) -> None:
    """Validate the `unknown` policy argument."""
    if unknown not in {"error", "skip"}:
        raise ValueError(f"unknown must be 'error' or 'skip', not {unknown!r}")


def lookup_class(lookup: dict[str, int], name: str, unknown: str, source: Path | str, stats: dict) -> int | None:
    """Resolve a class name to its index under the `unknown` policy; None means skip the object."""
    idx = lookup.get(normalize_class_name(name))
    if idx is None:
        if unknown == "error":
            raise ValueError(
                f"{source}: class '{name}' is not in the class list {sorted(lookup)}; pass the dataset's classes "
                "or unknown='skip' to drop such objects"
            )
        stats["unknown"] = stats.get("unknown", 0) + 1
        seen = stats.setdefault("unknown_names", [])
        if name not in seen:
            seen.append(name)
    return idx


def fmt_floats(values: Iterable[float]) -> str:
    """Format normalised coordinates; 8 significant digits keep sub-millipixel precision on 20k-px DOTA images."""
    return " ".join(f"{v:.8g}" for v in values)


def image_size(path: Path) -> tuple[int, int]:
    """Return (width, height) of an image without decoding its pixels when PIL can read the header."""
    with Image.open(path) as im:
        return exif_size(im)  # EXIF-rotated size, as the Ultralytics loader sees the image


def find_image(folder: Path, stem: str) -> Path | None:
    """Find an image with the given stem in a folder, trying the usual suffixes."""
    for suffix in IMAGE_SUFFIXES:
        for candidate in (folder / f"{stem}{suffix}", folder / f"{stem}{suffix.upper()}"):
            if candidate.is_file():
                return candidate
    return None


def list_images(folder: Path) -> list[Path]:
    """List image files of a folder (non-recursive), sorted by name."""
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def split_off_val(stems: Iterable[str], fraction: float, seed: int = 0) -> tuple[list[str], list[str]]:
    """Split whole images into train and val, reproducibly: tiles of one scene never land on both sides.

    Args:
        stems (Iterable[str]): Image names (stems).
        fraction (float): Share of the images for val, in [0, 1); rounded, at least 1 image and at most all but one.
        seed (int): Seed of the draw.

    Returns:
        (tuple[list[str], list[str]]): Sorted train and val stems; val is empty for `fraction=0` or under 2 images.
    """
    stems = sorted(set(stems))
    if fraction <= 0 or len(stems) < 2:
        return stems, []
    k = min(max(1, round(fraction * len(stems))), len(stems) - 1)
    val = set(random.Random(seed).sample(stems, k))
    return [x for x in stems if x not in val], sorted(val)


def check_val_fraction(val: float) -> float:
    """Validate a val fraction key (one line naming the fix)."""
    val = float(val)
    if not 0 <= val < 1:
        raise ValueError(f"val={val} must be a fraction in [0, 1), e.g. val=0.2 (0 validates on the train images)")
    return val


def write_data_yaml(
    path: str | Path,
    root: str | Path,
    train: str,
    val: str,
    names: Sequence[str] | dict[int, str],
    *,
    test: str | None = None,
) -> Path:
    """Write an Ultralytics dataset YAML.

    Args:
        path (str | Path): YAML file to write (parent folders are created).
        root (str | Path): Dataset root (`path:` key); relative roots resolve as Ultralytics does (cwd, then its
            datasets dir).
        train (str): Train images, relative to `root` (e.g. 'images/train').
        val (str): Validation images, relative to `root`.
        names (Sequence[str] | dict[int, str]): Class names in index order.
        test (str, optional): Test images, relative to `root`.

    Returns:
        (Path): The written file.
    """
    path = Path(path)
    data: dict[str, Any] = {"path": str(root), "train": str(train), "val": str(val)}
    if test:
        data["test"] = str(test)
    data["names"] = dict(enumerate(_class_names(names)))
    YAML.save(path, data)
    return path


def out_dirs(dst_dir: str | Path, split: str | None) -> tuple[Path, Path]:
    """Create and return the Ultralytics images/ and labels/ output folders (with a split subfolder if given)."""
    dst = Path(dst_dir)
    im_dir, lb_dir = dst / "images", dst / "labels"
    if split:
        im_dir, lb_dir = im_dir / split, lb_dir / split
    im_dir.mkdir(parents=True, exist_ok=True)
    lb_dir.mkdir(parents=True, exist_ok=True)
    return im_dir, lb_dir


def new_stats(**extra: int) -> dict[str, Any]:
    """Return a fresh stats dict with the counters every converter reports."""
    return {"images": 0, "objects": 0, "written": 0, "difficult_skipped": 0, "unknown": 0, **extra}
