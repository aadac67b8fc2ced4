"""Replicates of one regime and split: the same methods, seeds and settings run again on another machine or commit.

A seed fixes the initialisation, the data order and the augmentation, but not the float rounding of another CPU, and
over a few hundred optimizer updates that difference grows. This script shows how far a rerun of the same seed moves
(per method: the mean and the largest |rerun − record|), and the difference of every method to `--reference`,
paired by seed within each replicate and pooled over all of them. Records pair by method and seed (untagged rows
only) and must hold the same settings; a pair whose settings differ stops the table. On the same kind of CPU a seed can
reproduce a run to the last digit: such a rerun is counted in "reproduced exactly", and a pair whose two runs both
reproduce a pair already pooled is pooled once, since it is the same measurement again.

Examples:
    python benchmarks/replicates.py docs/benchmarks/r3-prune50-report docs/benchmarks/r3-prune50-report-rerun
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from ds2d2_yolo.tools.compare import _pm, _stats, read_results

# Settings that name the run, not what it trained with.
NAMING = ("name", "project", "exist_ok", "verbose")


def load(folder: Path) -> dict[str, dict[int, dict]]:
    """Untagged records of a regime folder's results.jsonl: method -> seed -> record."""
    out: dict[str, dict[int, dict]] = {}
    for r in read_results(folder / "results.jsonl"):
        if not r.get("config"):
            out.setdefault(r["method"], {})[r["seed"]] = r
    return out


def trained_with(record: dict) -> dict:
    """What a record trained with: its settings without the run's name, and the method's arguments."""
    return {k: v for k, v in record.get("settings", {}).items() if k not in NAMING}, record.get("args", {})


def check_same_settings(replicates: list[dict[str, dict[int, dict]]], folders: list[Path]) -> None:
    """Stop when a method and seed present in two replicates trained with different settings."""
    first = replicates[0]
    for other, folder in zip(replicates[1:], folders[1:]):
        for method, seeds in other.items():
            for seed, rec in seeds.items():
                base = first.get(method, {}).get(seed)
                if base is not None and trained_with(base) != trained_with(rec):
                    raise SystemExit(
                        f"{folder}: {method} seed {seed} trained with other settings than in {folders[0]}; "
                        "replicates must differ only in machine or commit"
                    )


# What a run measured: equal in two records means the same trajectory, not a second sample.
MEASURED = ("mAP50", "mAP50-95", "mAP50_last5", "mAP50-95_last5", "curve")


def same_run(a: dict, b: dict) -> bool:
    """Whether two records measured the same values at every validation (a bit-for-bit reproduction)."""
    return all(a.get(k) == b.get(k) for k in MEASURED)


def pm(v: list[float]) -> str:
    """Signed mean ± sample std (the mean alone for one value, a dash for none), as compare's tables print them."""
    return _pm(*_stats(v), signed=True) if v else "—"


def rerun_table(replicates: list[dict[str, dict[int, dict]]], metric: str = "mAP50_last5") -> str:
    """Per method, how far each later replicate moves a seed against the first: mean and largest |Δ|, mean Δ, and
    how many reruns reproduced the record exactly."""
    lines = [
        "| method | seeds in both | mean |rerun − record| | largest |rerun − record| | mean rerun − record | "
        "reproduced exactly |",
        "|---|---|---|---|---|---|",
    ]
    first = replicates[0]
    for method in sorted(first):
        pairs = [
            (other[method][s], first[method][s])
            for other in replicates[1:]
            for s in sorted(first[method])
            if s in other.get(method, {})
        ]
        d = [rerun[metric] - record[metric] for rerun, record in pairs]
        if d:
            mean_abs = statistics.fmean(abs(x) for x in d)
            same = sum(same_run(rerun, record) for rerun, record in pairs)
            lines.append(f"| {method} | {len(d)} | {mean_abs:.3f} | {max(abs(x) for x in d):.3f} | {pm(d)} | {same} |")
    return "\n".join(lines) + "\n"


def paired_table(replicates: list[dict[str, dict[int, dict]]], reference: str = "none") -> str:
    """Per method, the difference to `reference` on the same seed of the same replicate: per replicate and pooled
    (mean ± std over every pair, pairs ahead), for last-5 mAP50 and mAP50-95. A pair both of whose runs reproduce an
    already pooled pair exactly is pooled once."""
    methods = sorted({m for r in replicates for m in r if m != reference})
    head = " | ".join(f"replicate {i + 1} Δ mAP50" for i in range(len(replicates)))
    lines = [
        f"| method | {head} | pooled Δ mAP50 | pooled Δ mAP50-95 | pairs ahead (mAP50) |",
        "|---" * (len(replicates) + 4) + "|",
    ]
    for m in methods:
        per, pooled = [], []
        for rep in replicates:
            common = sorted(set(rep.get(m, {})) & set(rep.get(reference, {})))
            d50 = [rep[m][s]["mAP50_last5"] - rep[reference][s]["mAP50_last5"] for s in common]
            per.append(pm(d50) + (f" (seeds {','.join(map(str, common))})" if d50 else ""))
            for s in common:
                run, ref = rep[m][s], rep[reference][s]
                if not any(same_run(run, r) and same_run(ref, f) for r, f in pooled):
                    pooled.append((run, ref))
        pooled50 = [run["mAP50_last5"] - ref["mAP50_last5"] for run, ref in pooled]
        pooled95 = [run["mAP50-95_last5"] - ref["mAP50-95_last5"] for run, ref in pooled]
        ahead = f"{sum(d > 0 for d in pooled50)}/{len(pooled50)}" if pooled50 else "—"
        lines.append(f"| {m} | {' | '.join(per)} | {pm(pooled50)} | {pm(pooled95)} | {ahead} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    """Print (and with --out write) the rerun and paired tables of the replicate folders given."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folders", nargs="+", type=Path, help="regime/split folders holding results.jsonl, first = record")
    ap.add_argument("--reference", default="none")
    ap.add_argument("--out", type=Path, default=None, help="also write the tables to this markdown file")
    a = ap.parse_args()
    if len(a.folders) < 2:
        raise SystemExit("give at least two replicate folders (the record first)")
    for f in a.folders:
        if not (f / "results.jsonl").is_file():
            raise SystemExit(f"{f / 'results.jsonl'} not found; give regime/split folders")
    reps = [load(f) for f in a.folders]
    check_same_settings(reps, a.folders)
    text = (
        f"Replicates: {', '.join(map(str, a.folders))} (last-5 mAP50)\n\n"
        + rerun_table(reps)
        + f"\nDifference to {a.reference}, paired by seed within each replicate:\n\n"
        + paired_table(reps, a.reference)
    )
    print(text)
    if a.out:
        a.out.write_text(text)


if __name__ == "__main__":
    main()
