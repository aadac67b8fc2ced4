"""The prepared device check (benchmarks/gpu_check.py) runs end to end in its CPU mode, so it cannot rot unseen."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
import time

import pytest
import torch
from conftest import DATA, REPO, V8_TEACHER, need_shared

SCRIPT = REPO / "benchmarks" / "gpu_check.py"
SECTIONS = ("env", "cuda_tests", "train", "parity", "step_cost", "throughput")
TERMS = ("ex_low", "ex_high", "im_full", "im_high")
METHODS = ("none", "native", "ds2d2", "ds2d2-reference", "ds2d2-explicit", "ds2d2-implicit")


def _load_script():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """One CPU smoke run of the check (the quick path at the smallest size), its record and its scratch folder."""
    need_shared(V8_TEACHER)
    need_shared(DATA / "dota8")
    tmp = tmp_path_factory.mktemp("gpu_check")
    out, work = tmp / "out", tmp / "work"
    cmd = [sys.executable, str(SCRIPT), "--device", "cpu", "--smoke", "--out", str(out), "--work", str(work)]
    t = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    wall = time.perf_counter() - t
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    rec = json.loads((out / "gpu_check.json").read_text())
    return rec, out, work, wall


@pytest.mark.slow
def test_cpu_smoke_run_passes_every_section(smoke):
    """The JSON holds every section; the 2-epoch ds2d2 run logged all four KD terms finite and non-zero on both
    epochs and its best.pt reloaded and validated on CPU; the CUDA tests were found (and skipped, without CUDA)."""
    rec, out, _, wall = smoke
    assert rec["status"] == "pass" and rec["failed"] == []
    assert all(s in rec for s in SECTIONS)
    assert rec["env"]["device"] == "cpu" and rec["env"]["torch"] and rec["env"]["ultralytics"]
    assert rec["wall_s"] <= wall  # the record's own clock covers the whole run

    ct = rec["cuda_tests"]
    assert ct["n_passed"] + ct["n_skipped"] >= 2 and ct["n_failed"] == ct["n_error"] == 0
    assert all("cuda" in t["name"] for t in ct["tests"])
    if not torch.cuda.is_available():
        assert ct["status"] == "skip" and all(t["reason"] == "needs CUDA" for t in ct["tests"])

    tr = rec["train"]
    assert tr["status"] == "pass" and tr["epochs"] == 2 and not tr["nonfinite_skipped"]
    assert set(tr["terms"]) == set(TERMS)
    for k, vals in tr["terms"].items():
        assert len(vals) == 2 and all(math.isfinite(v) and v != 0 for v in vals), (k, vals)
    assert tr["best_pt_reloaded"] and tr["reload"]["device"] == "cpu" and tr["reload"]["task"] == "obb"
    assert math.isfinite(tr["reload"]["mAP50"]) and math.isfinite(tr["reload"]["mAP50-95"])

    assert rec["throughput"]["status"] == "skip"
    assert (out / "gpu_check.md").read_text().count("## ") >= 4


@pytest.mark.slow
def test_cpu_smoke_parity_and_step_cost(smoke):
    """bf16 autocast ran on CPU with finite terms and gradients, a repeated fp32 pass matches itself exactly, fp16 is
    skipped with a reason; every step-cost method has a positive time and native is the 1.00x reference."""
    rec = smoke[0]
    pa = rec["parity"]
    assert pa["status"] == "pass" and pa["target_applies"] is False and rec["targets"]["applies"] is False
    assert pa["fp16"]["status"] == "skip" and pa["fp16"]["reason"]
    bf = pa["bf16"]
    assert bf["all_finite"] and set(bf["term_rel"]) == set(TERMS) and set(bf["grad_rel"]) == set(TERMS)
    assert all(v != 0 for v in pa["fp32"].values())
    # bf16 really changed the arithmetic (a silent fp32 fallback would give zeros), yet stays near the reference.
    assert 0 < bf["max_term_rel"] < 0.5 and all(0 < v < 2 for v in bf["grad_rel"].values())
    assert pa["fp32_repeat"]["max_term_rel"] <= 1e-6

    (row,) = rec["step_cost"]["configs"]
    assert rec["step_cost"]["status"] == "measured" and row["device"] == "cpu"
    assert tuple(row["s_per_step"]) == METHODS and all(v > 0 for v in row["s_per_step"].values())
    assert row["time_vs_native"]["native"] == 1.0
    time_target = rec["targets"]["time_vs_native"]
    assert row["target_met"]["time"] == (row["time_vs_native"]["ds2d2"] <= time_target["target"]) == time_target["met"]
    assert rec["targets"]["parity_term_rel"]["met"] == (bf["max_term_rel"] <= 1e-2)


@pytest.mark.slow
def test_polars_free_results_match_polars(smoke):
    """The csv-module reader the check installs where polars is missing returns what Ultralytics reads via polars."""
    pl = pytest.importorskip("polars")
    csv = next(smoke[2].rglob("results.csv"))
    want = pl.read_csv(csv.read_bytes(), infer_schema_length=None).to_dict(as_series=False)
    got = _load_script().results_columns(csv)
    assert list(got) == [k.strip() for k in want]
    assert all(a == pytest.approx(b) for k in want for a, b in zip(got[k.strip()], want[k]))
