"""Whole-dataset preparation behind `ds2d2-yolo convert`: a source folder in, a YOLO dataset and its yaml out."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ultralytics.utils import LOGGER

from ds2d2_yolo.tools.dataprep.common import (
    DIOR_CLASSES,
    DOTA_V1_CLASSES,
    check_val_fraction,
    list_images,
    new_stats,
    out_dirs,
    split_off_val,
    write_data_yaml,
)
from ds2d2_yolo.tools.dataprep.dior import convert_dior_r, convert_dior_voc
from ds2d2_yolo.tools.dataprep.dota import convert_dota, tile_dota


def prepare_dior(
    src_dir: str | Path,
    dst_dir: str | Path,
    oriented: bool = False,
    *,
    classes: Sequence[str] | dict[int, str] = DIOR_CLASSES,
    skip_difficult: bool = False,
    unknown: str = "error",
    val: float = 0.2,
    seed: int = 0,
) -> dict[str, Any]:
    """Turn an extracted DIOR (or DIOR-R) folder into an Ultralytics dataset with `data.yaml`.

    Expected input (the official archives extracted side by side): `Annotations/Horizontal Bounding Boxes/*.xml`
    (DIOR) or `Annotations/Oriented Bounding Boxes/*.xml` (DIOR-R), or plain `Annotations/*.xml`; images in any
    `JPEGImage*` folders (e.g. `JPEGImages-trainval`, `JPEGImages-test`); and optionally `ImageSets/Main/{train,val,
    test}.txt` id lists. Without id lists every annotated image goes to one `all` split. Without a val list, a share
    `val` of the train (or `all`) images is split off as val, whole images, seeded (`split_off_val`).

    Args:
        src_dir (str | Path): Extracted DIOR root.
        dst_dir (str | Path): Output dataset root (`images/{split}`, `labels/{split}`, `data.yaml`).
        oriented (bool): Read the oriented (DIOR-R) annotations and write OBB labels instead of detect labels.
        classes (Sequence[str] | dict[int, str]): Class names in index order.
        skip_difficult (bool): Drop objects flagged difficult.
        unknown (str): 'error' raises on a class name not in `classes`, 'skip' drops and counts it.
        val (float): Share of the images split off for val when there is no val list; 0 validates on train.
        seed (int): Seed of that split.

    Returns:
        (dict[str, Any]): Per-split converter stats plus `yaml` (path of the written data.yaml) and `val_source`.
    """
    val = check_val_fraction(val)
    src, dst = Path(src_dir), Path(dst_dir)
    ann = src / "Annotations"
    sub = ann / ("Oriented Bounding Boxes" if oriented else "Horizontal Bounding Boxes")
    ann = sub if sub.is_dir() else ann
    if not ann.is_dir():
        raise FileNotFoundError(f"{ann} not found: expected DIOR's Annotations folder under {src}")
    images = {p.stem: p for d in sorted(src.glob("JPEGImage*")) if d.is_dir() for p in list_images(d)}
    id_lists = {s: src / "ImageSets" / "Main" / f"{s}.txt" for s in ("train", "val", "test")}
    splits = {s: f.read_text().split() for s, f in id_lists.items() if f.is_file()}
    if not splits:
        splits = {"all": sorted(p.stem for p in ann.glob("*.xml"))}
    base = "train" if "train" in splits else next(iter(splits))
    if "val" in splits:
        val_source = f"{id_lists['val']}"
    else:
        # Only train images are split; a test list stays the held-out test set.
        train_ids, val_ids = split_off_val(splits[base], val if base in ("train", "all") else 0, seed)
        if val_ids:
            splits.pop(base)
            splits = {"train": train_ids, "val": val_ids, **splits}
            val_source = (
                f"{len(val_ids)} of {len(train_ids) + len(val_ids)} {base} images split off (val={val}, seed={seed})"
            )
        else:
            val_source = f"none: validating on the {base} images (val={val}, {len(splits[base])} image(s))"

    convert = convert_dior_r if oriented else convert_dior_voc
    result: dict[str, Any] = {}
    for split, ids in splits.items():
        im_dst, lb_dst = out_dirs(dst, split)
        xmls = [ann / f"{i}.xml" for i in ids]
        missing = [x for x in xmls if not x.is_file()]
        if missing:
            raise FileNotFoundError(f"{len(missing)} annotation(s) of split '{split}' missing, e.g. {missing[0]}")
        stats = new_stats(degenerate=0, missing_images=0)
        for x in xmls:
            s = convert(x, lb_dst, classes, skip_difficult=skip_difficult, unknown=unknown)
            for k, v in s.items():
                stats[k] = stats[k] + v if isinstance(v, int) else v
            image = images.get(x.stem)
            if image is None:
                stats["missing_images"] += 1
            else:
                shutil.copy2(image, im_dst / image.name)
        result[split] = stats
    train = "images/train" if "train" in splits else f"images/{next(iter(splits))}"
    test = "images/test" if "test" in splits else None
    val_dir = "images/val" if "val" in splits else train
    result["yaml"] = write_data_yaml(dst / "data.yaml", dst.resolve(), train, val_dir, classes, test=test)
    result["val_source"] = val_source
    return result


def run_convert(
    format: str = "dota",
    src: str | Path | None = None,
    dst: str | Path | None = None,
    tile: int = 1024,
    gap: int = 200,
    skip_difficult: bool = False,
    val: float = 0.2,
    val_src: str | Path | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Convert a whole dataset for training; the `ds2d2-yolo convert` subcommand.

    Formats:
        dota: `src` is a DOTA split folder (`images/`, `labelTxt/`) or a root holding `train/`, `val/` (and `test/`)
            such folders. With `tile > 0` images are cut into tiles (`tile_dota`), with `tile=0` converted whole
            (`convert_dota`). Writes `dst/data.yaml`.
        dior / dior-r: `src` is the extracted DIOR root (see `prepare_dior`); `tile` and `gap` are unused (DIOR
            images are 800 px).

    Validation images: a `val/` folder of `src` (DOTA) or a val id list (DIOR) when there is one; else the DOTA split
    folder `val_src`; else a share `val` of the train images, whole images, seeded (`split_off_val`); `val=0` validates
    on the train images. The log line "val: ..." and the result's `val_source` say which.

    Args:
        format (str): 'dota', 'dior' or 'dior-r'.
        src (str | Path): Source dataset folder.
        dst (str | Path): Output dataset root.
        tile (int): DOTA tile size; 0 disables tiling.
        gap (int): DOTA tile overlap in pixels.
        skip_difficult (bool): Drop objects flagged difficult.
        val (float): Share of the train images split off for validation when the source has none.
        val_src (str | Path, optional): DOTA only: a DOTA split folder (`images/`, `labelTxt/`) to convert as val.
        seed (int): Seed of the val split.

    Returns:
        (dict[str, Any]): Stats per split, `yaml` (the data YAML path) and `val_source` (where val came from).
    """
    if src is None or dst is None:
        raise ValueError("convert needs src=... and dst=...")
    val = check_val_fraction(val)
    fmt = str(format).lower().replace("_", "-")
    if fmt in {"dior", "dior-r", "diorr"}:
        if val_src:
            raise ValueError("val_src= is for format=dota; DIOR takes val from ImageSets/Main/val.txt or val=")
        result = prepare_dior(src, dst, oriented=fmt != "dior", skip_difficult=skip_difficult, val=val, seed=seed)
    elif fmt == "dota":
        src, dst = Path(src), Path(dst)
        split_dirs = {s: src / s for s in ("train", "val", "test") if (src / s / "images").is_dir()}
        if not any(s in split_dirs for s in ("train", "val")):
            split_dirs = {"train": src, **split_dirs}
        with tempfile.TemporaryDirectory(prefix="ds2d2_val_split_") as tmp:
            if "val" in split_dirs:
                val_source = str(split_dirs["val"])
            elif val_src:
                if not (Path(val_src) / "images").is_dir():
                    raise FileNotFoundError(
                        f"val_src={val_src}: no images/ folder; pass a DOTA folder (images/, labelTxt/)"
                    )
                split_dirs["val"], val_source = Path(val_src), f"val_src={val_src}"
            else:
                val_source = _split_dota_folder(split_dirs, Path(tmp), val, seed)
            result = {}
            for split, folder in split_dirs.items():
                if tile and int(tile) > 0:
                    result[split] = tile_dota(
                        folder, dst, int(tile), int(gap), skip_difficult=skip_difficult, split=split
                    )
                else:
                    result[split] = convert_dota(folder, dst, skip_difficult=skip_difficult, split=split)
        train = "images/train"
        val_dir = "images/val" if "val" in split_dirs else train
        test = "images/test" if "test" in split_dirs else None
        names = [n.replace("-", " ") for n in DOTA_V1_CLASSES]  # Ultralytics' spelling, as official checkpoints
        result["yaml"] = write_data_yaml(dst / "data.yaml", dst.resolve(), train, val_dir, names, test=test)
        result["val_source"] = val_source
    else:
        raise ValueError(f"format must be 'dota', 'dior' or 'dior-r', not {format!r}")
    for split, stats in result.items():
        if split != "val_source":
            LOGGER.info(f"{split}: {stats}")
    LOGGER.info(f"val: {result['val_source']}")
    return result


def _split_dota_folder(split_dirs: dict[str, Path], tmp: Path, val: float, seed: int) -> str:
    """Split the DOTA train folder's images into train and val folders of links under `tmp` (updates `split_dirs`).

    Returns:
        (str): Where val comes from, for the log.
    """
    folder = split_dirs["train"]
    images = {p.stem: p for p in list_images(folder / "images")}
    train, held = split_off_val(images, val, seed)
    if not held:
        return f"none: validating on the train images (val={val}, {len(images)} image(s))"
    for split, stems in (("train", train), ("val", held)):
        (tmp / split / "images").mkdir(parents=True)
        (tmp / split / "labelTxt").mkdir()
        for stem in stems:
            _link(images[stem], tmp / split / "images" / images[stem].name)
            label = folder / "labelTxt" / f"{stem}.txt"
            if label.is_file():
                _link(label, tmp / split / "labelTxt" / label.name)
        split_dirs[split] = tmp / split
    return f"{len(held)} of {len(images)} train images split off (val={val}, seed={seed}): {', '.join(held[:5])}"


def _link(src: Path, dst: Path) -> None:
    """Symlink `dst` to `src`, or copy where links are not allowed (Windows without developer mode)."""
    try:
        os.symlink(src.resolve(), dst)
    except OSError:
        shutil.copy2(src, dst)
