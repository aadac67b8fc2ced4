"""Paired comparison of two INT8 settings over the same trained runs, from `int8_drop.py` records.

`int8_drop.py --tag TAG` keeps a setting's records in `int8-<split>-TAG.jsonl` beside the records of the setting it is
compared with (`int8.jsonl` or `int8-<split>.jsonl`, from the same script at another commit or without `--set`). This
reads every regime folder under `root`, pairs the two by (folder, method, seed, split), and prints, per split, each
setting's INT8 change (mean ± std, worst run) and their paired difference. The FP32 files are the same for both, so
the difference is the quantizer's alone; a run whose FP32 mAP50 differs between the two records is refused.

Examples:
    python benchmarks/int8_compare.py docs/benchmarks/int8-float-stem --tag float-stem
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path


def load(root: Path, tag: str) -> tuple[dict[tuple, dict], dict[tuple, dict]]:
    """Records of the compared setting (`...-<tag>.jsonl`) and of the untagged one (`int8.jsonl`, `int8-<split>.jsonl`),
    keyed by (folder, method, seed, split); records of other tags are left out."""
    before: dict[tuple, dict] = {}
    after: dict[tuple, dict] = {}
    for f in sorted(root.glob("*/int8*.jsonl")):
        for line in f.read_text().splitlines():
            r = json.loads(line)
            key = (f.parent.name, r["method"], r["seed"], r["split"])
            if f.stem.endswith(f"-{tag}"):
                after[key] = r
            elif f.stem in ("int8", f"int8-{r['split']}"):
                before[key] = r
    return before, after


def pm(v: list[float]) -> str:
    """Mean ± sample std (the mean alone for one value)."""
    return f"{statistics.fmean(v):+.4f} ± {statistics.stdev(v):.4f}" if len(v) > 1 else f"{v[0]:+.4f}"


def compare_table(before: dict[tuple, dict], after: dict[tuple, dict], tag: str) -> str:
    """One row per split: runs paired, each setting's INT8 change of mAP50, the paired difference and mAP50-95's.

    Raises:
        SystemExit: When a pair's FP32 mAP50 differs (the two records did not quantize the same file).
    """
    lines = [
        f"| split | runs | Δ mAP50 before | worst before | Δ mAP50 {tag} | worst {tag} | {tag} − before (mAP50) | "
        f"runs better | {tag} − before (mAP50-95) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for split in sorted({k[3] for k in after}, key=lambda s: (s != "tune", s)):
        keys = sorted(k for k in after if k[3] == split and k in before)
        if not keys:
            continue
        for k in keys:
            if abs(before[k]["fp32_mAP50"] - after[k]["fp32_mAP50"]) > 1e-9:
                raise SystemExit(f"{k}: the FP32 mAP50 differs between the two records; they are not a pair")
        b = [before[k]["d50"] for k in keys]
        a = [after[k]["d50"] for k in keys]
        diff = [y - x for x, y in zip(b, a)]
        diff95 = [after[k]["d95"] - before[k]["d95"] for k in keys]
        lines.append(
            f"| {split} | {len(keys)} | {pm(b)} | {min(b):+.4f} | {pm(a)} | {min(a):+.4f} | {pm(diff)} | "
            f"{sum(d > 0 for d in diff)}/{len(diff)} | {pm(diff95)} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    """Print the paired table and write it to `<root>/compare-<tag>.md`."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("root", type=Path, help="folder of regime folders holding int8*.jsonl records")
    ap.add_argument("--tag", required=True, help="the --tag of the compared setting's records")
    a = ap.parse_args()
    before, after = load(a.root, a.tag)
    if not after:
        raise SystemExit(f"no int8-*-{a.tag}.jsonl records under {a.root}")
    table = compare_table(before, after, a.tag)
    (a.root / f"compare-{a.tag}.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
