"""INT8 accuracy drop of every trained run of a regime folder: ONNX FP32 against ONNX Runtime static INT8.

Each run's final weights (`runs/<method>-s<seed>/weights/last.pt`, the final EMA) are exported to ONNX at the
training size, quantized with `ds2d2_yolo.tools.quantize.quantize_onnx` (calibrated on training images) and both files
are validated with Ultralytics' `val` on the regime's split. One record per run goes to `int8.jsonl` beside the
regime's `results.jsonl` (resumable: finished runs are skipped), and the table to `int8.md`.

`--split` validates on another split of the same regime (e.g. the tune split, to choose quantization settings without
looking at the report images) and `--set` replaces quantization settings; either writes `int8-<split>[-<tag>].jsonl`.
`--runtime openvino` quantizes with Ultralytics' OpenVINO INT8 export instead (NNCF, calibrated on the whole training
split) and writes `int8-openvino[...].jsonl`; the FP32 reference stays the ONNX export.

Examples:
    python benchmarks/int8_drop.py runs/regimes/r3-prune50/dota-report
    python benchmarks/int8_drop.py runs/regimes/r3-prune50/dota-report --split tune --tag percentile \
        --set '{"calibrate_method": "Percentile"}'
    python benchmarks/int8_drop.py runs/regimes/r3-prune50/dota-report --runtime openvino
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

from ds2d2_yolo.tools.compare import _pm, _stats, git_commit
from ds2d2_yolo.tools.export import export_to
from ds2d2_yolo.tools.prune import validate
from ds2d2_yolo.tools.quantize import (
    INSTALL_HINT,
    export_openvino_int8,
    openvino_available,
    quantize_onnx,
    require_ort_quantization,
    split_images,
)

# quantize_static keywords whose values are ONNX Runtime enums, given by member name in --set.
ENUM_OPTIONS = {
    "calibrate_method": "CalibrationMethod",
    "quant_format": "QuantFormat",
    "activation_type": "QuantType",
    "weight_type": "QuantType",
}


def quantize_options(text: str) -> dict[str, Any]:
    """`--set` JSON as quantize_static keywords, enum members given by name (e.g. {"calibrate_method": "Percentile"}).

    `float_stem` (true/false) and `pad_channels` (an int) are quantize_onnx's own keywords and pass through;
    `own_options` takes them out.

    Raises:
        SystemExit: On a member name ONNX Runtime does not have, listing the ones it has.
    """
    ortq = require_ort_quantization()
    options = json.loads(text)
    for key, enum_name in ENUM_OPTIONS.items():
        if key in options:
            enum = getattr(ortq, enum_name)
            if options[key] not in enum.__members__:
                raise SystemExit(f"--set {key}={options[key]!r} is unknown; choose from {', '.join(enum.__members__)}")
            options[key] = enum[options[key]]
    return options


def own_options(options: dict[str, Any] | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split quantize_onnx's own keywords (`float_stem`, `pad_channels`) from the quantize_static keywords of
    `options`; the caller's dict is not changed."""
    options = dict(options or {})
    return options, {k: options.pop(k) for k in ("float_stem", "pad_channels") if k in options}


def int8_record(
    weights: Path,
    data: Path,
    imgsz: int,
    calib: int,
    work: Path,
    options: dict[str, Any] | None = None,
    runtime: str = "onnx",
) -> dict[str, float]:
    """Export, quantize (with `options` replacing quantize_onnx's settings) and validate one run's weights; mAPs of
    both files and the INT8 change.

    `runtime="openvino"` quantizes with Ultralytics' OpenVINO INT8 export (NNCF, every training image; `calib` and
    `options` do not apply) instead of ONNX Runtime.
    """
    work.mkdir(parents=True, exist_ok=True)
    fp32 = export_to(weights, "onnx", work / "fp32.onnx", imgsz=imgsz, device="cpu", batch=1)
    if runtime == "openvino":
        int8 = export_openvino_int8(weights, work / "int8", data, imgsz=imgsz, device="cpu", batch=1)
    else:
        options, own = own_options(options)
        images = split_images(data, "train", calib)
        int8 = quantize_onnx(fp32, work / "int8.onnx", images, imgsz, options=options, **own)
    a = validate(fp32, str(data), imgsz, 1, "cpu", work / "val-fp32")
    b = validate(int8, str(data), imgsz, 1, "cpu", work / "val-int8")
    return {
        "fp32_mAP50": a["mAP50"],
        "fp32_mAP50-95": a["mAP50-95"],
        "int8_mAP50": b["mAP50"],
        "int8_mAP50-95": b["mAP50-95"],
        "d50": b["mAP50"] - a["mAP50"],
        "d95": b["mAP50-95"] - a["mAP50-95"],
    }


def record_stem(runtime: str, split: str, own: str, tag: str) -> str:
    """Name of a record file (without `.jsonl`): `int8` for the shipped ONNX Runtime route on the regime's own split,
    else `int8-[openvino-][<split>-][<tag>]`; the split is named whenever a tag is, as the earlier records are."""
    route = "" if runtime == "onnx" else runtime
    return "-".join(x for x in ("int8", route, split if split != own or tag else "", tag) if x)


def int8_table(records: list[dict]) -> str:
    """Per method: seeds, FP32 and INT8 mAP50 means, and the INT8 change (mean ± std, worst seed)."""

    def pm(v: list[float]) -> str:
        return _pm(*_stats(v), signed=True)

    by: dict[str, list[dict]] = {}
    for r in records:
        by.setdefault(r["method"], []).append(r)
    lines = [
        "| method | seeds | FP32 mAP50 | INT8 mAP50 | Δ mAP50 (INT8 − FP32) | worst Δ mAP50 | Δ mAP50-95 |",
        "|---|---|---|---|---|---|---|",
    ]
    for m, rs in sorted(by.items(), key=lambda kv: (kv[0] != "none", kv[0])):
        rs = sorted(rs, key=lambda r: r["seed"])
        lines.append(
            f"| {m} | {','.join(str(r['seed']) for r in rs)} | {statistics.fmean(r['fp32_mAP50'] for r in rs):.3f} | "
            f"{statistics.fmean(r['int8_mAP50'] for r in rs):.3f} | {pm([r['d50'] for r in rs])} | "
            f"{min(r['d50'] for r in rs):+.3f} | {pm([r['d95'] for r in rs])} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    """Quantize every finished run of one regime folder that int8.jsonl does not hold yet, then write the table."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folder", type=Path, help="a regime/split folder holding results.jsonl and runs/")
    ap.add_argument("--calib", type=int, default=64, help="calibration images from the training split")
    ap.add_argument("--split", default="", help="validate on this split of the regime instead (e.g. tune)")
    ap.add_argument("--set", default="{}", help="quantize_static keywords as JSON (see the examples)")
    ap.add_argument("--methods", default="", help="comma-separated methods to quantize; all when empty")
    ap.add_argument("--tag", default="", help="name of the --set settings, in the record file's name")
    ap.add_argument("--runtime", default="onnx", choices=("onnx", "openvino"), help="the INT8 route (see above)")
    ap.add_argument("--report", action="store_true", help="only rebuild the table from the records")
    a = ap.parse_args()
    own = a.folder.name.split("-")[1]  # dota-report -> report; dota-report-<config> (regimes.py --config) too
    split = a.split or own
    options = quantize_options(a.set)
    if options and not a.tag:
        raise SystemExit("--set needs --tag, the name its records are kept under")
    if options and a.runtime == "openvino":
        raise SystemExit("--set holds ONNX Runtime settings; it does not apply with --runtime openvino")
    if a.runtime == "openvino" and not openvino_available():
        raise SystemExit(f"--runtime openvino needs openvino and nncf: {INSTALL_HINT}")
    stem = record_stem(a.runtime, split, own, a.tag)
    out = a.folder / f"{stem}.jsonl"
    commit = git_commit()
    done = [json.loads(x) for x in out.read_text().splitlines()] if out.exists() else []
    if not a.report:
        data = a.folder.parent / f"{split}.yaml"
        if not data.is_file():
            raise SystemExit(f"{data} not found: run the regime first (benchmarks/regimes.py)")
        for line in (a.folder / "results.jsonl").read_text().splitlines():
            r = json.loads(line)
            if any(d["method"] == r["method"] and d["seed"] == r["seed"] for d in done):
                continue
            if a.methods and r["method"] not in a.methods.split(","):
                continue
            weights = a.folder / "runs" / f"{r['method']}-s{r['seed']}" / "weights" / "last.pt"
            if not weights.is_file():
                print(f"[int8] {weights} missing; skipped")
                continue
            imgsz = int(r["settings"]["imgsz"])
            calib = a.calib if a.runtime == "onnx" else "train"
            rec = {"method": r["method"], "seed": r["seed"], "imgsz": imgsz, "calib": calib, "split": split}
            rec.update(commit=commit, train_commit=r["commit"], options=a.set, runtime=a.runtime)
            work = a.folder / stem / f"{r['method']}-s{r['seed']}"
            rec.update(int8_record(weights, data, imgsz, a.calib, work, options, a.runtime))
            print(f"[int8] {r['method']} seed {r['seed']}: Δ mAP50 {rec['d50']:+.4f}", flush=True)
            with open(out, "a") as f:
                f.write(json.dumps(rec) + "\n")
            done.append(rec)
    table = int8_table(done) if done else "no records\n"
    (a.folder / f"{stem}.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
