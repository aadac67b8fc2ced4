"""Synthetic aerial scenes with dense, small, oriented objects in Ultralytics detect or OBB dataset format.

The generator exists to give DS2D2 a fast, repeatable regression track: a few hundred small images that a tiny student
learns in minutes on a CPU, with the properties that matter for remote-sensing distillation (small objects, arbitrary
orientation, dense clusters, textured clutter, empty background images). It has no dependency on Ultralytics.

Examples:
    >>> from ds2d2_yolo.tools.synthetic import make_dataset
    >>> data_yaml = make_dataset("/tmp/syn-obb", n_train=64, n_val=32, task="obb", seed=0)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import yaml

CLASSES = ("vehicle", "ship", "plane")
VEHICLE, SHIP, PLANE = range(3)

# Zone ids in the per-image placement mask; each class only lands on its own kind of ground
LAND, WATER, ROAD, APRON, PARKING = range(5)
_HOME = {VEHICLE: (PARKING, ROAD), SHIP: (WATER,), PLANE: (APRON,)}

_SHIFT = 4  # fixed-point bits for cv2 polygon drawing, so sub-pixel geometry survives on 6 px objects
_SCALE = 1 << _SHIFT
_EMPTY_FRACTION = 0.05
_CAR_COLOURS = ((235, 235, 232), (190, 192, 188), (40, 40, 46), (50, 45, 185), (165, 95, 40), (60, 170, 215))


@dataclass
class _Object:
    """One placed object: class, centre, heading (radians, full circle), length along heading, and cross width."""

    cls: int
    cx: float
    cy: float
    theta: float
    length: float
    width: float

    def corners(self) -> np.ndarray:
        """Return the (4, 2) corners of the labelled rotated rectangle in pixels, in drawing order."""
        return _to_image(_rect(self.length, self.width), self.cx, self.cy, self.theta)

    def cv_rect(self, pad: float) -> tuple:
        """Return an OpenCV RotatedRect tuple grown by `pad` pixels on each side, for intersection tests."""
        return (self.cx, self.cy), (self.length + 2 * pad, self.width + 2 * pad), math.degrees(self.theta)


def _rect(length: float, width: float, x0: float | None = None, x1: float | None = None) -> np.ndarray:
    """Return an axis-aligned rectangle in the local frame (x along heading), full length unless x0/x1 are given."""
    x0 = -length / 2 if x0 is None else x0
    x1 = length / 2 if x1 is None else x1
    return np.array([[x1, -width / 2], [x1, width / 2], [x0, width / 2], [x0, -width / 2]], dtype=np.float64)


def _to_image(pts: np.ndarray, cx: float, cy: float, theta: float) -> np.ndarray:
    """Rotate local-frame points by `theta` and translate them to (cx, cy)."""
    c, s = math.cos(theta), math.sin(theta)
    return pts @ np.array([[c, s], [-s, c]]) + (cx, cy)


def _fill(img: np.ndarray, polys: list[np.ndarray], colour, mask: np.ndarray | None = None, value: int = 0) -> None:
    """Fill anti-aliased polygons given in float pixel coordinates, optionally also into a placement mask."""
    pts = [np.round(p * _SCALE).astype(np.int32) for p in polys]
    cv2.fillPoly(img, pts, tuple(float(v) for v in colour), lineType=cv2.LINE_AA, shift=_SHIFT)
    if mask is not None:
        cv2.fillPoly(mask, pts, value, lineType=cv2.LINE_8, shift=_SHIFT)


def _line(img: np.ndarray, p0, p1, colour, thickness: int, mask: np.ndarray | None = None, value: int = 0) -> None:
    """Draw an anti-aliased line given in float pixel coordinates, optionally also into a placement mask."""
    a = tuple(int(round(v * _SCALE)) for v in p0)
    b = tuple(int(round(v * _SCALE)) for v in p1)
    cv2.line(img, a, b, tuple(float(v) for v in colour), thickness, cv2.LINE_AA, _SHIFT)
    if mask is not None:
        cv2.line(mask, a, b, value, thickness, cv2.LINE_8, _SHIFT)


def _jitter(rng: np.random.Generator, colour, amount: float) -> np.ndarray:
    """Return `colour` with independent uniform per-channel jitter of +-amount."""
    return np.clip(np.asarray(colour, dtype=np.float64) + rng.uniform(-amount, amount, 3), 0, 255)


def _smooth_field(rng: np.random.Generator, size: int, cells: int, amplitude: float, channels: int = 3) -> np.ndarray:
    """Return a smooth random field in [-amplitude, amplitude] by bicubic upsampling of a coarse noise grid."""
    grid = rng.uniform(-amplitude, amplitude, (cells, cells, channels)).astype(np.float32)
    field = cv2.resize(grid, (size, size), interpolation=cv2.INTER_CUBIC)
    return field.reshape(size, size, channels)


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Paint land: a low-frequency colour field, agricultural patches with crop rows, and mid-frequency texture."""
    base = _jitter(rng, rng.choice([(70, 110, 95), (85, 120, 125), (75, 105, 110), (95, 125, 140)]), 12)
    img = np.empty((size, size, 3), np.float32)
    img[:] = base
    img += _smooth_field(rng, size, 4, 22)
    palette = ((55, 120, 75), (80, 135, 110), (95, 140, 160), (120, 160, 180), (60, 95, 90), (105, 150, 150))
    for _ in range(rng.integers(3, 8)):
        colour = _jitter(rng, palette[rng.integers(len(palette))], 10)
        w, h = rng.uniform(0.15, 0.5, 2) * size
        cx, cy = rng.uniform(0, size, 2)
        theta = rng.uniform(0, math.pi)
        poly = _to_image(_rect(w, h), cx, cy, theta)
        patch = img.copy()
        _fill(patch, [poly], colour)
        if rng.random() < 0.5:  # crop rows give oriented high-frequency clutter that is not an object
            step = rng.uniform(3, 7)
            u, v = np.array([math.cos(theta), math.sin(theta)]), np.array([-math.sin(theta), math.cos(theta)])
            clip = np.zeros((size, size), np.uint8)
            cv2.fillPoly(clip, [np.round(poly).astype(np.int32)], 1)
            rows = patch.copy()
            for t in np.arange(-h / 2, h / 2, step):
                p = np.array([cx, cy]) + t * v
                _line(rows, p - u * w / 2, p + u * w / 2, colour * 0.85, 1)
            patch[clip > 0] = rows[clip > 0]
        alpha = rng.uniform(0.5, 0.85)
        img = img * (1 - alpha) + patch * alpha
    return img + _smooth_field(rng, size, max(size // 8, 2), 9, 1)


def _zones(rng: np.random.Generator, img: np.ndarray, present: set[int]) -> tuple[np.ndarray, dict[int, list[float]]]:
    """Draw water, roads, aprons and parking lots, returning the zone mask and each zone's dominant directions.

    Zones are drawn for the classes present, and sometimes without them, so the detector also sees empty harbours and
    lots (hard negatives) instead of learning "water means ship".
    """
    size = img.shape[0]
    mask = np.zeros((size, size), np.uint8)
    dirs: dict[int, list[float]] = {WATER: [], ROAD: [], APRON: [], PARKING: []}
    centre = np.array([size / 2, size / 2])
    big = 3 * size

    if SHIP in present or rng.random() < 0.2:  # coast: a half-plane of water with a few piers
        alpha = rng.uniform(0, 2 * math.pi)
        n = np.array([math.cos(alpha), math.sin(alpha)])
        t = np.array([-n[1], n[0]])
        p = centre + n * rng.uniform(-0.15, 0.2) * size
        water = np.array([p - t * big, p + t * big, p + t * big + n * big, p - t * big + n * big])
        _fill(img, [water], _jitter(rng, (105, 80, 35), 15), mask, WATER)
        img[mask == WATER] += _smooth_field(rng, size, 6, 8)[mask == WATER]
        dirs[WATER] += [alpha + math.pi / 2, alpha]
        for _ in range(rng.integers(0, 3)):
            q = p + t * rng.uniform(-0.4, 0.4) * size
            _line(img, q - n * 4, q + n * rng.uniform(0.1, 0.3) * size, (165, 168, 170), int(rng.integers(2, 4)))

    for _ in range(rng.integers(1 if VEHICLE in present else 0, 3)):  # roads cross the whole image
        alpha = rng.uniform(0, math.pi)
        u = np.array([math.cos(alpha), math.sin(alpha)])
        p = centre + rng.uniform(-0.35, 0.35, 2) * size
        _line(img, p - u * big, p + u * big, _jitter(rng, (100, 102, 104), 10), int(rng.integers(8, 14)), mask, ROAD)
        dirs[ROAD].append(alpha)

    if PLANE in present or rng.random() < 0.15:  # apron: large concrete slab with taxi-lines
        alpha = rng.uniform(0, math.pi)
        w, h = rng.uniform(0.45, 0.8) * size, rng.uniform(0.35, 0.6) * size
        c = centre + rng.uniform(-0.25, 0.25, 2) * size
        _fill(img, [_to_image(_rect(w, h), *c, alpha)], _jitter(rng, (128, 132, 134), 8), mask, APRON)
        for k in (-0.25, 0.25):
            a, b = _to_image(np.array([[-w / 2, k * h], [w / 2, k * h]]), *c, alpha)
            _line(img, a, b, (70, 185, 215), 1)
        dirs[APRON].append(alpha)

    for _ in range(rng.integers(1 if VEHICLE in present else 0, 3)):  # parking lots: dark asphalt
        alpha = rng.uniform(0, math.pi)
        w, h = rng.uniform(0.2, 0.4) * size, rng.uniform(0.12, 0.25) * size
        c = centre + rng.uniform(-0.3, 0.3, 2) * size
        _fill(img, [_to_image(_rect(w, h), *c, alpha)], _jitter(rng, (78, 80, 84), 8), mask, PARKING)
        dirs[PARKING].append(alpha)
    return mask, dirs


def _buildings(rng: np.random.Generator, img: np.ndarray, mask: np.ndarray) -> None:
    """Add rooftops with cast shadows on land: compact, object-sized clutter that must not be detected."""
    size = img.shape[0]
    land = np.flatnonzero(mask == LAND)
    if not len(land):
        return
    n = int(rng.integers(0, max(1, round(8 * (size / 256) ** 2)) + 1))  # rooftops keep their pixel size, so thin out
    for i in rng.choice(land, size=n, replace=True):
        cy, cx = divmod(int(i), size)
        w, h = rng.uniform(10, 28, 2)
        theta = rng.uniform(0, math.pi)
        roof = _to_image(_rect(w, h), cx, cy, theta)
        _fill(img, [roof + 3], (45, 50, 50))
        _fill(img, [roof], _jitter(rng, rng.choice([(150, 150, 150), (70, 80, 150), (120, 130, 140)]), 15))


def _shapes(obj: _Object, rng: np.random.Generator) -> list[tuple[list[np.ndarray], np.ndarray]]:
    """Return the (polygons, BGR colour) layers that draw one object, bottom layer first, in image pixels."""
    L, W = obj.length, obj.width
    if obj.cls == VEHICLE:
        body = _jitter(rng, _CAR_COLOURS[rng.integers(len(_CAR_COLOURS))], 12)
        cut = 0.18 * W  # chamfered corners read as a car body rather than a box
        hull = np.array(
            [[L / 2, -W / 2 + cut], [L / 2, W / 2 - cut], [L / 2 - cut, W / 2], [-L / 2 + cut, W / 2],
             [-L / 2, W / 2 - cut], [-L / 2, -W / 2 + cut], [-L / 2 + cut, -W / 2], [L / 2 - cut, -W / 2]]
        )  # fmt: skip
        # A pale windshield on dark cars keeps the stripe visible
        glass = np.array((30, 32, 38) if body.mean() > 70 else (110, 115, 120), float)
        layers = [
            ([hull], body),
            ([_rect(L, 0.8 * W, 0.1 * L, 0.27 * L)], glass),
            ([_rect(L, 0.7 * W, -0.4 * L, -0.3 * L)], glass * 0.6 + body * 0.4),
        ]
    elif obj.cls == SHIP:
        hull = np.array([[-L / 2, -W / 2], [L / 4, -W / 2], [L / 2, 0], [L / 4, W / 2], [-L / 2, W / 2]])
        white = _jitter(rng, (232, 236, 238), 14)
        layers = [([hull], white), ([_rect(L, 0.6 * W, -0.42 * L, -0.16 * L)], _jitter(rng, (150, 155, 160), 20))]
        if L > 24:  # larger vessels carry deck cargo, which separates them from pale piers
            layers.append(([_rect(L, 0.55 * W, -0.08 * L, 0.22 * L)], _jitter(rng, (60, 90, 170), 30)))
    else:
        S, f = W, 0.11 * L
        fuselage = np.array(
            [[L / 2, 0], [0.36 * L, f / 2], [-0.44 * L, f / 2], [-L / 2, f / 5],
             [-L / 2, -f / 5], [-0.44 * L, -f / 2], [0.36 * L, -f / 2]]
        )  # fmt: skip
        wings = [
            np.array([[0.14 * L, s * f / 2], [-0.1 * L, s * S / 2], [-0.2 * L, s * S / 2], [-0.12 * L, s * f / 2]])
            for s in (1, -1)
        ]
        tail = [
            np.array([[-0.33 * L, s * f / 2], [-0.45 * L, s * 0.19 * S], [-0.5 * L, s * 0.19 * S], [-0.45 * L, 0]])
            for s in (1, -1)
        ]
        body = _jitter(rng, (228, 230, 232), 14)
        layers = [([fuselage, *wings, *tail], body), ([_rect(L, 0.5 * f, -0.5 * L, -0.38 * L)], body * 0.8)]
    return [([_to_image(p, obj.cx, obj.cy, obj.theta) for p in polys], colour) for polys, colour in layers]


def _size(rng: np.random.Generator, cls: int) -> tuple[float, float]:
    """Sample (length, cross width) in pixels for one cluster of class `cls`."""
    if cls == VEHICLE:
        length = rng.uniform(6, 14)
        return length, length * rng.uniform(0.45, 0.55)
    if cls == SHIP:
        length = rng.uniform(12, 40)
        return length, length * rng.uniform(0.2, 0.3)
    length = rng.uniform(16, 40)
    return length, length * rng.uniform(0.85, 1.05)


def _fits(obj: _Object, placed: list[_Object], mask: np.ndarray, homes: tuple[int, ...], pad: float) -> bool:
    """Return True if `obj` lies inside the image, centred on its home ground, and clear of every placed object."""
    size = mask.shape[0]
    corners = obj.corners()
    if corners.min() < 1 or corners.max() > size - 1:
        return False
    if mask[int(obj.cy), int(obj.cx)] not in homes:
        return False
    radius = math.hypot(obj.length, obj.width) / 2 + pad
    rect = obj.cv_rect(pad)
    for other in placed:
        # Centre distance rejects most pairs cheaply; the exact rotated-rectangle test handles close neighbours
        if math.hypot(obj.cx - other.cx, obj.cy - other.cy) > radius + math.hypot(other.length, other.width) / 2:
            continue
        if cv2.rotatedRectangleIntersection(rect, other.cv_rect(0))[0] != cv2.INTERSECT_NONE:
            return False
    return True


def _place(
    rng: np.random.Generator, counts: dict[int, int], mask: np.ndarray, dirs: dict[int, list[float]]
) -> list[_Object]:
    """Place objects in clusters (parking rows, harbour lines, apron rows) with rejection sampling against overlap.

    A cluster lays members along a row direction taken from its zone, either side by side (parking, moored boats,
    parked aircraft) or nose to tail (traffic, ships along a pier); parking rows are sometimes doubled back to back.
    """
    placed: list[_Object] = []
    for cls in (PLANE, SHIP, VEHICLE):  # big objects first, so small ones fill the gaps instead of blocking them
        target, homes = counts.get(cls, 0), _HOME[cls]
        pixels = np.flatnonzero(np.isin(mask, homes))
        have, attempts = 0, 0
        while have < target and attempts < 4 * target + 8 and len(pixels):
            attempts += 1
            cy, cx = divmod(int(pixels[rng.integers(len(pixels))]), mask.shape[1])
            zone = int(mask[cy, cx])
            row = rng.choice(dirs[zone]) + rng.normal(0, 0.05) if dirs[zone] and rng.random() < 0.85 else None
            if row is None:  # a loose object in random orientation
                row, n_members, side_by_side = rng.uniform(0, math.pi), 1, False
            else:
                hi = {VEHICLE: 10, SHIP: 6, PLANE: 4}[cls]
                n_members = int(rng.integers(2, hi + 1))
                side_by_side = zone != ROAD and rng.random() < (0.5 if cls == SHIP else 0.85)
            length, width = _size(rng, cls)
            gap = rng.uniform(1.5, 3.5) if cls == VEHICLE else rng.uniform(2, 8)
            heading = row + (math.pi / 2 if side_by_side else 0) + (math.pi if rng.random() < 0.5 else 0)
            step = (width if side_by_side else length) + gap
            ranks = [0.0, 1.0] if cls == VEHICLE and side_by_side and rng.random() < 0.5 else [0.0]
            u = np.array([math.cos(row), math.sin(row)])
            v = np.array([-u[1], u[0]])
            for r in ranks:
                for k in range(n_members):
                    if have >= target:
                        break
                    if rng.random() < 0.15:  # empty slots keep rows from looking perfectly regular
                        continue
                    scale = rng.uniform(0.92, 1.08)
                    p = np.array([cx, cy]) + u * k * step + v * r * (length + gap) + rng.normal(0, 0.4, 2)
                    theta = heading + r * math.pi + rng.normal(0, 0.06)
                    obj = _Object(cls, float(p[0]), float(p[1]), theta, length * scale, width * scale)
                    if _fits(obj, placed, mask, homes, pad=1.0):
                        placed.append(obj)
                        have += 1
    return placed


def _render(rng: np.random.Generator, size: int, n_objects: int) -> tuple[np.ndarray, list[_Object], list[np.ndarray]]:
    """Render one scene with about `n_objects` objects; returns the BGR image, objects, and each object's outline."""
    counts: dict[int, int] = {}
    if n_objects:
        share = rng.dirichlet((2.5, 1.0, 0.6))
        counts = dict(enumerate(rng.multinomial(n_objects, share).tolist()))
    img = _background(rng, size)
    mask, dirs = _zones(rng, img, {c for c, n in counts.items() if n})
    _buildings(rng, img, mask)
    objects = _place(rng, counts, mask, dirs)
    outlines = []
    for obj in objects:
        layers = _shapes(obj, rng)
        for polys, colour in layers:
            _fill(img, polys, colour)
        outlines.append(np.concatenate(layers[0][0]))
    img = cv2.GaussianBlur(img, (3, 3), 0.6)  # optics: no object edge is perfectly sharp from orbit
    img += rng.normal(0, rng.uniform(2, 5), img.shape).astype(np.float32)
    return np.clip(np.round(img), 0, 255).astype(np.uint8), objects, outlines


def _label_lines(objects: list[_Object], outlines: list[np.ndarray], size: int, task: str) -> list[str]:
    """Format normalised Ultralytics labels: rotated-rectangle corners for OBB, the tight drawn hull for detect."""
    lines = []
    for obj, outline in zip(objects, outlines):
        if task == "obb":
            values = np.clip(obj.corners() / size, 0, 1).ravel()
        else:
            (x0, y0), (x1, y1) = np.clip(outline.min(0) / size, 0, 1), np.clip(outline.max(0) / size, 0, 1)
            values = np.array([(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0])
        lines.append(f"{obj.cls} " + " ".join(f"{v:.6f}" for v in values))
    return lines


def make_dataset(
    root: str | Path,
    n_train: int = 64,
    n_val: int = 32,
    imgsz: int = 256,
    task: str = "obb",
    seed: int = 0,
    density: tuple[int, int] = (8, 30),
    channels: int = 3,
) -> Path:
    """Write a synthetic aerial dataset in Ultralytics format and return its data.yaml path.

    Each image is a textured aerial-like scene (colour fields, crop patches, roads, water, aprons, rooftops) holding
    small oriented vehicles, ships and planes, often in rows and clusters. About 5% of images in each split hold no
    objects and get an empty label file, which Ultralytics treats as background. Output is byte-identical for the same
    arguments. Previously generated files under `root` (names starting `syn_`) and label caches are replaced.

    Args:
        root (str | Path): Dataset directory; `images/{train,val}`, `labels/{train,val}` and `data.yaml` go here.
        n_train (int): Number of training images.
        n_val (int): Number of validation images.
        imgsz (int): Square image side in pixels; object sizes are in pixels, so larger images are sparser.
        task (str): "obb" for `cls x1 y1 ... x4 y4` corner labels, "detect" for `cls xc yc w h` labels.
        seed (int): Random seed; each image draws from its own stream, so split sizes do not change other images.
        density (tuple[int, int]): Inclusive range of objects requested per non-empty image; rejection of overlapping
            or off-ground placements can leave fewer.
        channels (int): 3 for BGR colour PNGs, 1 for grayscale PNGs (also recorded as `channels` in data.yaml).

    Returns:
        (Path): Path to the written data.yaml.
    """
    if task not in {"obb", "detect"}:
        raise ValueError(f"task must be 'obb' or 'detect', got {task!r}")
    if channels not in {1, 3}:
        raise ValueError(f"channels must be 1 or 3, got {channels!r}")
    lo, hi = int(density[0]), int(density[1])
    if not 0 <= lo <= hi:
        raise ValueError(f"density must be (min, max) with 0 <= min <= max, got {density!r}")
    root = Path(root).resolve()
    for split_id, (split, n) in enumerate((("train", n_train), ("val", n_val))):
        img_dir, lbl_dir = root / "images" / split, root / "labels" / split
        img_dir.mkdir(parents=True, exist_ok=True)
        lbl_dir.mkdir(parents=True, exist_ok=True)
        for f in [*img_dir.glob("syn_*.png"), *lbl_dir.glob("syn_*.txt"), *lbl_dir.parent.glob(f"{split}*.cache")]:
            f.unlink()  # stale images from a larger earlier run, or a label cache Ultralytics might trust
        n_empty = max(1, round(_EMPTY_FRACTION * n)) if n >= 4 else 0
        empty = set(np.random.default_rng((seed, split_id)).permutation(n)[:n_empty].tolist())
        for i in range(n):
            rng = np.random.default_rng((seed, split_id, i))
            img, objects, outlines = _render(rng, imgsz, 0 if i in empty else int(rng.integers(lo, hi + 1)))
            if channels == 1:
                img = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
            stem = f"syn_{split}_{i:05d}"
            cv2.imwrite(str(img_dir / f"{stem}.png"), img)
            lines = _label_lines(objects, outlines, imgsz, task)
            (lbl_dir / f"{stem}.txt").write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")
    data = {
        "path": str(root),
        "train": "images/train",
        "val": "images/val",
        "names": dict(enumerate(CLASSES)),
        "channels": channels,
    }
    data_yaml = root / "data.yaml"
    data_yaml.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return data_yaml


__all__ = ["CLASSES", "make_dataset"]
