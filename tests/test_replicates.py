"""Replicates of a regime (benchmarks/replicates.py): rerun spread and pooled paired differences, checked by hand."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

replicates = pytest.importorskip("replicates")


def write(folder: Path, rows: list[tuple[str, int, float, float]], lr0: float = 0.002) -> Path:
    folder.mkdir(parents=True)
    lines = [
        json.dumps(
            {
                "method": m,
                "seed": s,
                "mAP50_last5": a,
                "mAP50-95_last5": b,
                "settings": {"lr0": lr0, "seed": s, "name": f"{m}-s{s}"},
                "args": {"distill": m},
            }
        )
        for m, s, a, b in rows
    ]
    lines.append(json.dumps({"method": "ds2d2", "seed": 0, "config": "x3", "mAP50_last5": 9.0, "mAP50-95_last5": 9}))
    (folder / "results.jsonl").write_text("\n".join(lines) + "\n")
    return folder


def test_rerun_and_pooled_tables(tmp_path):
    """The rerun spread and the pooled paired difference agree with a hand computation; tagged rows are left out."""
    a = write(tmp_path / "a", [("none", 0, 0.30, 0.10), ("none", 1, 0.20, 0.10), ("ds2d2", 0, 0.35, 0.12)])
    b = write(tmp_path / "b", [("none", 0, 0.26, 0.11), ("ds2d2", 0, 0.41, 0.15), ("ds2d2", 1, 0.5, 0.2)])
    reps = [replicates.load(a), replicates.load(b)]
    replicates.check_same_settings(reps, [a, b])
    rerun = replicates.rerun_table(reps)
    # none: seed 0 moves by -0.04 (seed 1 has no rerun); ds2d2 seed 0 moves by +0.06.
    assert "| none | 1 | 0.040 | 0.040 | -0.040 | 0 |" in rerun
    assert "| ds2d2 | 1 | 0.060 | 0.060 | +0.060 | 0 |" in rerun
    paired = replicates.paired_table(reps)
    # Pairs: replicate 1 seed 0 (+0.05; +0.02), replicate 2 seed 0 (+0.15; +0.04): means +0.10 and +0.03.
    assert "| ds2d2 | +0.050 (seeds 0) | +0.150 (seeds 0) | +0.100 ± 0.071 | +0.030 ± 0.014 | 2/2 |" in paired


def test_exact_reproductions_pool_once(tmp_path):
    """A third replicate that reproduces the first's seed 0 to the digit is counted as reproduced and pooled once."""
    a = write(tmp_path / "a", [("none", 0, 0.30, 0.10), ("ds2d2", 0, 0.35, 0.12)])
    b = write(tmp_path / "b", [("none", 0, 0.26, 0.11), ("ds2d2", 0, 0.41, 0.15)])
    c = write(tmp_path / "c", [("none", 0, 0.30, 0.10), ("ds2d2", 0, 0.35, 0.12)])
    reps = [replicates.load(f) for f in (a, b, c)]
    assert "| none | 2 | 0.020 | 0.040 | -0.020 ± 0.028 | 1 |" in replicates.rerun_table(reps)
    # Pooled over the two distinct pairs only (+0.05 and +0.15), though replicate 3 shows its own +0.05.
    paired = replicates.paired_table(reps)
    assert "| ds2d2 | +0.050 (seeds 0) | +0.150 (seeds 0) | +0.050 (seeds 0) | +0.100 ± 0.071 |" in paired
    assert "| 2/2 |" in paired


def test_replicates_with_other_settings_stop(tmp_path):
    """A method and seed trained with other settings in the second folder is not a replicate: one line, stop."""
    a = write(tmp_path / "a", [("none", 0, 0.3, 0.1)])
    b = write(tmp_path / "b", [("none", 0, 0.3, 0.1)], lr0=0.01)
    with pytest.raises(SystemExit, match="none seed 0 trained with other settings"):
        replicates.check_same_settings([replicates.load(a), replicates.load(b)], [a, b])
