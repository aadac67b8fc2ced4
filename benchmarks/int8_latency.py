"""CPU latency of the edge files: the FP32 teacher against pruned students in FP32 and INT8, batch 1.

Every model is exported to ONNX at `--imgsz` with Ultralytics, each student is quantized with
`ds2d2_yolo.tools.quantize.quantize_onnx` (static QDQ, calibrated on `--calib` training images of `--data`), and with
`--openvino` also through Ultralytics' own OpenVINO INT8 export (NNCF). The files are timed in rounds, every file once
per round in the same order, so that drifting machine load reaches all of them; a row gives the range of the round
medians and the ratio to the teacher within each round. The CPU's model and its INT8 instructions are printed, since
INT8 speed depends on them (VNNI, AMX). `--ort-variants` adds ONNX Runtime quantization settings other than the
shipped one, and `--profile` prints where each ONNX file spends its time, by operator type (ONNX Runtime's profiler,
one thread).

Every file is exported with this package's DFL decode (`ds2d2_yolo.tools.export`, the same function in a faster graph);
the teacher is also exported as Ultralytics exports it, the baseline a user has, and `--ultralytics-decode` adds each
student's INT8 file with Ultralytics' decode too. Ratios are given to both teacher files.

Examples:
    python benchmarks/int8_latency.py --teacher ../shared/weights/yolov8n-obb-dota.pt \
        --student runs/regimes/pruned/prune50.pt --data runs/regimes/r3-prune50/report.yaml --ort-variants --profile
"""

from __future__ import annotations

import argparse
import json
import os
from collections import Counter
from pathlib import Path

import numpy as np
from int8_drop import own_options, quantize_options

from ds2d2_yolo.tools.compare import cpu_model, git_commit
from ds2d2_yolo.tools.export import export_to
from ds2d2_yolo.tools.latency import measure_latency
from ds2d2_yolo.tools.quantize import export_openvino_int8, openvino_available, quantize_onnx, split_images

INT8_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8")
TEACHER, TEACHER_UL = "teacher FP32", "teacher FP32 (Ultralytics export)"


# ONNX Runtime quantization settings compared with the shipped one: label -> `--set`-style JSON (int8_drop's parser).
ORT_VARIANTS = {
    "first layer in INT8": '{"float_stem": false}',
    "narrow convolutions not widened": '{"pad_channels": 0}',
    "Conv only": '{"op_types_to_quantize": ["Conv"]}',
    "QOperator": '{"quant_format": "QOperator"}',
    "8-bit weights": '{"reduce_range": false}',
    "s8 activations": '{"activation_type": "QInt8", "reduce_range": false}',
}


def op_profile(path: Path, imgsz: int, runs: int = 15) -> dict[str, float]:
    """Milliseconds per forward pass spent in each operator type of an ONNX file (one thread, batch 1), largest
    first, from ONNX Runtime's own profiler; the few warm-up passes are left out."""
    import onnxruntime as ort  # optional: pip install -e .[compress]

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.enable_profiling = True
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    feed = {session.get_inputs()[0].name: np.random.rand(1, 3, imgsz, imgsz).astype(np.float32)}
    warmup = 3
    for _ in range(warmup):
        session.run(None, feed)
    for _ in range(runs):
        session.run(None, feed)
    trace = Path(session.end_profiling())
    events = json.loads(trace.read_text())
    os.remove(trace)
    # Kernel events carry their op type; the first `warmup` passes are dropped by their order in the trace.
    kernels = [e for e in events if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time")]
    per_pass = len(kernels) // (warmup + runs)
    total: Counter[str] = Counter()
    for e in kernels[warmup * per_pass :]:
        total[e["args"]["op_name"]] += e["dur"] / 1000 / runs
    return dict(total.most_common())


def cpu_info() -> dict[str, str | list[str]]:
    """The CPU's model name and which of the INT8-relevant instruction sets it reports (Linux /proc/cpuinfo)."""
    info: dict[str, str | list[str]] = {"cpu": cpu_model(), "int8_flags": []}
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return info
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            flags = set(value.split())
            info["int8_flags"] = [f for f in INT8_FLAGS if f in flags]
            break
    return info


def build_files(a: argparse.Namespace, work: Path) -> dict[str, Path]:
    """Export the teacher and every student, and quantize the students; name -> file, teacher first."""
    kw = {"imgsz": a.imgsz, "batch": 1, "device": "cpu"}
    files = {
        TEACHER: export_to(a.teacher, "onnx", work / "teacher.onnx", **kw),
        TEACHER_UL: export_to(a.teacher, "onnx", work / "teacher-ul.onnx", fast_dfl=False, **kw),
    }
    calib = split_images(a.data, "train", a.calib)
    for s in a.student:
        tag = Path(s).stem
        fp32 = export_to(s, "onnx", work / f"{tag}.onnx", **kw)
        files[f"{tag} FP32"] = fp32
        files[f"{tag} INT8 (ORT)"] = quantize_onnx(fp32, work / f"{tag}-int8.onnx", calib, a.imgsz)
        if a.ultralytics_decode:
            ul = export_to(s, "onnx", work / f"{tag}-ul.onnx", fast_dfl=False, **kw)
            files[f"{tag} INT8 (ORT, Ultralytics decode)"] = quantize_onnx(
                ul, work / f"{tag}-ul-int8.onnx", calib, a.imgsz
            )
        for i, (label, text) in enumerate(ORT_VARIANTS.items() if a.ort_variants else ()):
            options, own = own_options(quantize_options(text))
            dst = work / f"{tag}-int8-v{i}.onnx"
            files[f"{tag} INT8 (ORT, {label})"] = quantize_onnx(fp32, dst, calib, a.imgsz, options=options, **own)
        if a.openvino:
            files[f"{tag} INT8 (OpenVINO)"] = export_openvino_int8(
                s, work / f"{tag}-ov", a.data, imgsz=a.imgsz, batch=1
            )
    return files


def main() -> None:
    """Export, quantize and time every file, then print and write the table."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--teacher", required=True, help="FP32 teacher .pt")
    ap.add_argument("--student", action="append", required=True, help="student .pt (repeatable)")
    ap.add_argument("--data", required=True, help="dataset yaml; its training images calibrate INT8")
    ap.add_argument("--imgsz", type=int, default=640)
    ap.add_argument("--calib", type=int, default=64, help="calibration images")
    ap.add_argument("--runs", type=int, default=25, help="timed runs per file and round (the median is kept)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", default="1,0", help="comma-separated thread counts; 0 = the runtime's default")
    ap.add_argument("--openvino", action="store_true", help="also time Ultralytics' OpenVINO INT8 export")
    ap.add_argument("--ort-variants", action="store_true", help="also time other ONNX Runtime INT8 settings")
    ap.add_argument("--profile", action="store_true", help="print each ONNX file's time by operator type")
    ap.add_argument(
        "--ultralytics-decode", action="store_true", help="also time each student's INT8 file with Ultralytics' decode"
    )
    ap.add_argument("--out", type=Path, default=Path("runs/int8-latency"))
    a = ap.parse_args()
    if a.openvino and not openvino_available():
        raise SystemExit('--openvino needs openvino and nncf: pip install -e ".[compress]"')
    a.out.mkdir(parents=True, exist_ok=True)
    files = build_files(a, a.out)
    cpu = cpu_info()
    ms: dict[tuple[str, int], list[float]] = {}
    for threads in (int(t) for t in a.threads.split(",")):
        for _ in range(a.rounds):
            for name, path in files.items():
                r = measure_latency(path, a.imgsz, a.runs, threads=threads or None)
                ms.setdefault((name, threads), []).append(r["ms"])
    lines = [
        f"CPU: {cpu['cpu']}; INT8 instructions: {', '.join(cpu['int8_flags']) or 'none of ' + ', '.join(INT8_FLAGS)}",
        f"imgsz {a.imgsz}, batch 1, median of {a.runs} runs per round, {a.rounds} rounds",
        "",
        f"| file | threads | ms (range of round medians) | ratio to {TEACHER} | ratio to {TEACHER_UL} |",
        "|---|---|---|---|---|",
    ]
    for (name, threads), v in ms.items():
        cells = []
        for ref in (TEACHER, TEACHER_UL):
            ratio = [x / y for x, y in zip(v, ms[(ref, threads)])]
            cells.append("—" if name == ref else f"{min(ratio):.2f}–{max(ratio):.2f}")
        lines.append(f"| {name} | {threads or 'all'} | {min(v):.1f}–{max(v):.1f} | {cells[0]} | {cells[1]} |")
    profiles = {n: op_profile(f, a.imgsz) for n, f in files.items() if a.profile and f.suffix == ".onnx"}
    if profiles:
        lines += [
            "",
            "Time by operator type, ONNX Runtime profiler, 1 thread (ms per pass; the five largest, then the rest):",
            "",
            "| file | total | largest operator types (ms) |",
            "|---|---|---|",
        ]
        for name, prof in profiles.items():
            top = list(prof.items())[:5]
            rest = sum(prof.values()) - sum(v for _, v in top)
            cells = ", ".join(f"{k} {v:.1f}" for k, v in top) + f", other {rest:.1f}"
            lines.append(f"| {name} | {sum(prof.values()):.1f} | {cells} |")
    table = "\n".join(lines) + "\n"
    record = {"commit": git_commit(), **cpu, "settings": {k: str(v) for k, v in vars(a).items()}}
    record["ms"] = {f"{n}@{t or 'all'}": v for (n, t), v in ms.items()}
    record["profile_ms"] = profiles
    (a.out / "latency.json").write_text(json.dumps(record, indent=1))
    (a.out / "latency.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
