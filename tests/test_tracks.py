"""Research tracks (benchmarks/tracks.py on ds2d2_yolo.tools.compare): the table's statistics against an independent
computation, resumable grids, tuning folders."""

from __future__ import annotations

import json
import statistics
import subprocess

import cv2
import numpy as np
import pytest
import tracks
import tune_defaults

from ds2d2_yolo.config import DS2D2ArgError, defaults
from ds2d2_yolo.tools import compare
from ds2d2_yolo.tools.demo import read_results as read_csv


def _record(method: str, seed: int, m50: float, m95: float, step: float = 1.0, rss: float = 100.0) -> dict:
    return {"method": method, "seed": seed, "mAP50": m50, "mAP50-95": m95, "s_per_step": step, "peak_rss_mb": rss}


def _rows(table: str, method: str) -> list[list[str]]:
    """Cells of every row of `method`, one per table of the report, in order."""
    lines = [x for x in table.splitlines() if x.startswith(f"| {method} |")]
    return [[c.strip() for c in x.strip("|").split("|")] for x in lines]


def _row(table: str, method: str) -> list[str]:
    """Cells of the method's row in the main table, the first of the report."""
    return _rows(table, method)[0]


def _paired(table: str, method: str) -> list[str]:
    """Cells of the method's row in the paired-difference table, the last table of the report."""
    return _rows(table, method)[-1]


def test_write_report_statistics(tmp_path):
    """Means, sample std over seeds and gap closure agree with numpy; methods keep METHODS order; PNG is written."""
    none, ds = [0.20, 0.30, 0.25], [0.40, 0.38, 0.45]
    rows = [_record("ds2d2", s, v, v / 2, step=2.0 + s) for s, v in enumerate(ds)]
    rows += [_record("none", s, v, v / 3) for s, v in enumerate(none)]
    rows += [_record("ds2d2-db2", 0, 0.5, 0.25)]
    (tmp_path / "results.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    (tmp_path / "teacher.json").write_text(json.dumps({"mAP50": 0.8, "mAP50-95": 0.5}))
    table = tracks.write_report(tmp_path, "synthetic", "report").read_text()

    assert table.index("| none |") < table.index("| ds2d2 |")
    r = _row(table, "ds2d2")
    assert r[1] == "0,1,2"
    assert r[2] == f"{np.mean(ds):.3f} ± {np.std(ds, ddof=1):.3f}"
    assert r[3] == f"{np.mean(ds) / 2:.3f} ± {np.std(np.array(ds) / 2, ddof=1):.3f}"
    gap = (np.mean(ds) - np.mean(none)) / (0.8 - np.mean(none))
    assert r[4] == f"{100 * gap:.1f} %"
    assert r[5] == f"{3.0:.3f} ± {1.0:.3f}"
    assert _row(table, "none")[4] == "—"
    assert _row(table, "ds2d2-db2")[1:4] == ["0", "0.500", "0.250"]  # one seed: no spread is claimed
    img = cv2.imread(str(tmp_path / "plot.png"))
    assert img is not None and img.shape[0] > 100


def test_write_report_per_seed_and_paired(tmp_path):
    """Per-seed cells and the paired difference to none use only the seeds both methods ran, checked against numpy."""
    none = {0: 0.20, 1: 0.30, 2: 0.25, 3: 0.5}
    cwd = {1: 0.36, 2: 0.21, 3: float("nan"), 4: 0.9}  # a failed metric on seed 3; seed 4 has no `none` run
    rows = [_record("none", s, v, v / 2) for s, v in none.items()]
    rows += [_record("cwd", s, v, v / 4) for s, v in cwd.items()]
    (tmp_path / "results.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    table = tracks.write_report(tmp_path, "dota", "report").read_text()

    seed0 = next(x for x in table.splitlines() if x.startswith("| 0 |"))
    assert seed0 == "| 0 | 0.200 (0.100) | — |"
    assert "| 4 | — | 0.900 (0.225) |" in table
    cells = _paired(table, "cwd")
    d50 = np.array([cwd[1] - none[1], cwd[2] - none[2]])
    d95 = np.array([cwd[1] / 4 - none[1] / 2, cwd[2] / 4 - none[2] / 2])
    assert cells[1] == "1,2"
    assert cells[2] == f"{d50.mean():+.3f} ± {d50.std(ddof=1):.3f}"
    assert cells[3] == f"{d95.mean():+.3f} ± {d95.std(ddof=1):.3f}"
    assert cells[4] == "1/2"


def test_write_report_separates_config_tags(tmp_path):
    """Records tagged with a config get their own rows, in METHODS order, each paired with the untagged none."""
    none = [0.20, 0.30, 0.25]
    rows = [_record("none", s, v, v / 2) for s, v in enumerate(none)]
    rows += [{**_record("ds2d2", s, v + 0.1, v / 2), "config": "x1"} for s, v in enumerate(none)]
    rows += [{**_record("ds2d2", s, v - 0.05, v / 2), "config": "x3"} for s, v in enumerate(none)]
    rows += [_record("cwd", 0, 0.4, 0.2)]
    (tmp_path / "results.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    table = tracks.write_report(tmp_path, "dota", "report").read_text()

    assert table.index("| none |") < table.index("| cwd |") < table.index("| ds2d2 (x1) |")
    assert table.index("| ds2d2 (x1) |") < table.index("| ds2d2 (x3) |")
    assert "| ds2d2 |" not in table
    assert _row(table, "ds2d2 (x1)")[2] == f"{np.mean(none) + 0.1:.3f} ± {np.std(none, ddof=1):.3f}"
    assert _paired(table, "ds2d2 (x3)")[2:5] == ["-0.050 ± 0.000", "+0.000 ± 0.000", "0/3"]


def test_write_report_pairs_against_a_chosen_row(tmp_path):
    """`against` adds a table pairing every other row with the chosen one; a label without runs fails first."""
    none, x1, x3 = [0.20, 0.30, 0.25], [0.31, 0.38, 0.33], [0.29, 0.40, 0.30]
    rows = [_record("none", s, v, v / 2) for s, v in enumerate(none)]
    rows += [{**_record("ds2d2", s, v, v / 2), "config": "x1"} for s, v in enumerate(x1)]
    rows += [{**_record("ds2d2", s, v, v / 3), "config": "x3"} for s, v in enumerate(x3)]
    (tmp_path / "results.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    with pytest.raises(ValueError, match=r"against='ds2d2 \(x7\)' has no runs"):
        tracks.write_report(tmp_path, "dota", "tune", against=["ds2d2 (x7)"])
    assert not (tmp_path / "table.md").exists()

    table = tracks.write_report(tmp_path, "dota", "tune", against=["ds2d2 (x1)"]).read_text()
    ref_table = table[table.index("Difference to `ds2d2 (x1)`") :]
    assert "| method | paired seeds | mAP50 − ds2d2 (x1) | mAP50-95 − ds2d2 (x1) |" in ref_table
    assert "| ds2d2 (x1) |" not in ref_table  # a row is not paired with itself
    d50 = np.array(x3) - np.array(x1)
    d95 = np.array(x3) / 3 - np.array(x1) / 2
    assert _paired(table, "ds2d2 (x3)")[1:5] == [
        "0,1,2",
        f"{d50.mean():+.3f} ± {d50.std(ddof=1):.3f}",
        f"{d95.mean():+.3f} ± {d95.std(ddof=1):.3f}",
        f"{int((d50 > 0).sum())}/3",
    ]
    d_none = np.array(none) - np.array(x1)
    assert _paired(table, "none")[2] == f"{d_none.mean():+.3f} ± {d_none.std(ddof=1):.3f}"
    # The table against `none` is unchanged by the extra one.
    d_x3 = np.array(x3) - np.array(none)
    assert _rows(table, "ds2d2 (x3)")[-2][2] == f"{d_x3.mean():+.3f} ± {d_x3.std(ddof=1):.3f}"


def test_write_report_ignores_nan_runs(tmp_path):
    """A run whose metric is NaN does not poison the mean of the others."""
    rows = [_record("none", 0, 0.2, 0.1), _record("none", 1, float("nan"), float("nan")), _record("none", 2, 0.4, 0.2)]
    (tmp_path / "results.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    table = tracks.write_report(tmp_path, "dota", "tune").read_text()
    assert _row(table, "none")[2] == f"0.300 ± {statistics.stdev([0.2, 0.4]):.3f}"


def test_run_benchmark_rejects_bad_input_first(tmp_path):
    with pytest.raises(ValueError, match="method 'bogus' is unknown"):
        tracks.run_benchmark("synthetic", tmp_path, methods="none,bogus")
    with pytest.raises(ValueError, match="track 'coco' is unknown"):
        tracks.run_benchmark("coco", tmp_path)
    with pytest.raises(DS2D2ArgError, match="'beta=-1' must be finite and >= 0"):
        tracks.run_benchmark("synthetic", tmp_path, methods="ds2d2", extra={"beta": -1})
    with pytest.raises(ValueError, match="against='cwd' is not a row of this benchmark; choose from none"):
        tracks.run_benchmark("synthetic", tmp_path, methods="none", against="cwd")
    with pytest.raises(ValueError, match="split 'fold' exists on the real track only"):
        tracks.run_benchmark("synthetic", tmp_path, methods="none", split="fold")
    assert not any(tmp_path.iterdir())


def test_real_splits_validate_on_images_their_training_never_sees():
    for val, train in tracks.TRAIN_OF.items():
        assert not set(tracks.REAL_SPLITS[val]) & set(tracks.REAL_SPLITS[train]), val
    # The fold trains on everything the others train on except its held-out image, so its choices transfer.
    assert set(tracks.REAL_SPLITS["train"]) - set(tracks.REAL_SPLITS["train-fold"]) == {tracks.FOLD_HELD_OUT}
    assert not set(tracks.REAL_SPLITS["report"]) & (set(tracks.REAL_SPLITS["fold"]) | set(tracks.REAL_SPLITS["tune"]))


def test_run_benchmark_pairs_against_rows_that_finished(tmp_path, monkeypatch, capsys):
    """`against` adds the paired table for a row that ran; a row whose every run failed is named and left out."""
    monkeypatch.setattr(tracks, "prepare_synthetic", lambda out, imgsz: {"report": "d.yaml", "teacher": "t.pt"})
    monkeypatch.setattr(tracks, "teacher_map", lambda *a: {"mAP50": 0.9, "mAP50-95": 0.6})
    score = {("none", 0): 0.20, ("none", 1): 0.30, ("cwd", 0): 0.25, ("cwd", 1): 0.26}

    def child(cmd, **kw):  # stands in for the training subprocess: `mgd` fails, the others print their record
        spec = json.loads(cmd[-1])
        m, s = spec["method"], spec["seed"]
        if m == "mgd":
            return subprocess.CompletedProcess(cmd, 1, "", "boom")
        rec = {"method": m, "seed": s, "mAP50": score[m, s], "mAP50-95": score[m, s] / 2, "s_per_step": 1.0}
        rec |= {"peak_rss_mb": 1.0, "epochs": spec["overrides"]["epochs"], "args": {}}
        return subprocess.CompletedProcess(cmd, 0, json.dumps(rec) + "\n", "")

    monkeypatch.setattr(compare.subprocess, "run", child)
    table = tracks.run_benchmark("synthetic", tmp_path, seeds=2, methods="none,cwd,mgd", against="cwd,mgd")
    text = table.read_text()
    assert "against='mgd' has no finished runs" in capsys.readouterr().out
    assert "Difference to `mgd`" not in text and "Difference to `none`" in text
    ref = text.split("Difference to `cwd`")[1]
    d = np.array([0.20, 0.30]) - np.array([0.25, 0.26])
    assert f"| none | 0,1 | {d.mean():+.3f} ± {d.std(ddof=1):.3f} |" in ref


@pytest.mark.slow
def test_run_benchmark_grid_resumes_and_tags(tmp_path, monkeypatch, synth_obb, tiny_models):
    """Real child runs write one record each, into the tagged tuning folder; a rerun trains nothing new."""
    monkeypatch.setitem(
        tracks.TRACKS,
        "synthetic",
        {"imgsz": 64, "batch": 4, "epochs": 1, "optimizer": "AdamW", "lr0": 0.005, "width": 0.0625, "mosaic": 0.0},
    )
    monkeypatch.setattr(
        tracks,
        "prepare_synthetic",
        lambda out, imgsz: {"report": synth_obb, "tune": synth_obb, "teacher": tiny_models["obb_teacher"]},
    )
    kw = dict(seeds=[7], methods="none,ds2d2", split="tune", extra={"amp_epochs": 1}, tag="trial")
    table = tracks.run_benchmark("synthetic", tmp_path, **kw).read_text()
    folder = tmp_path / "synthetic-tune-trial"
    recs = [json.loads(x) for x in (folder / "results.jsonl").read_text().splitlines()]
    assert [(r["method"], r["seed"], r["epochs"]) for r in recs] == [("none", 7, 1), ("ds2d2", 7, 1)]
    assert all(np.isfinite(r["mAP50"]) and r["s_per_step"] > 0 and r["peak_rss_mb"] > 0 for r in recs)
    distilled = read_csv(folder / "runs" / "ds2d2-s7" / "results.csv")[-1]
    assert distilled["train/ex_low"] > 0 and distilled["train/ex_high"] > 0  # the DS2D2 run really distilled
    # Each record says what it ran: the shipped defaults under the run's overrides, without machine paths.
    assert recs[1]["args"]["distill"] == "ds2d2" and recs[1]["args"]["amp_epochs"] == 1
    assert recs[1]["args"]["lambda_exl"] == defaults()["lambda_exl"] and "teacher" not in recs[1]["args"]
    assert recs[0]["args"]["distill"] == "none"

    def no_training(*a, **k):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(compare.subprocess, "run", no_training)
    assert tracks.run_benchmark("synthetic", tmp_path, **kw).read_text() == table
    # Other DS2D2 weights are another run: `none` (which ignores them) is still done, DS2D2 trains again.
    kw["extra"] = {"amp_epochs": 1, "lambda_exl": 0.7}
    with pytest.raises(AssertionError, match="trained again"):
        tracks.run_benchmark("synthetic", tmp_path, **kw)


def test_is_done_compares_the_settings_that_matter():
    """A record is the planned run only with the same method, seed, epochs and method settings."""
    shipped = compare.record_args(defaults() | {"distill": "ds2d2"})
    rec = {"method": "ds2d2", "seed": 0, "epochs": 100, "args": shipped}
    assert compare.is_done(rec, "ds2d2", 0, 100, dict(shipped))
    assert not compare.is_done(rec, "ds2d2", 1, 100, shipped)
    assert not compare.is_done(rec, "ds2d2", 0, 50, shipped)
    assert not compare.is_done(rec, "ds2d2", 0, 100, shipped | {"lambda_exl": 3 * shipped["lambda_exl"]})
    assert compare.is_done(rec, "ds2d2", 0, 100, shipped | {"mgd_alpha": 1.0})  # another method's key
    none = compare.record_args(defaults() | {"distill": "none"})
    rec_none = {"method": "none", "seed": 0, "epochs": 100, "args": none}
    assert compare.is_done(rec_none, "none", 0, 100, none | {"lambda_imf": 9.0, "beta": 2.0})
    cwd = compare.record_args(defaults() | {"distill": "cwd"})
    rec_cwd = {"method": "cwd", "seed": 0, "epochs": 100, "args": cwd}
    assert not compare.is_done(rec_cwd, "cwd", 0, 100, cwd | {"cwd_tau": 4.0})
    # Records from before `args`: untagged ones ran their folder's settings; tagged ones from a merge cannot say.
    legacy = {"method": "ds2d2", "seed": 0, "epochs": 100}
    assert compare.is_done(legacy, "ds2d2", 0, 100, shipped)
    assert not compare.is_done(legacy | {"config": "x3"}, "ds2d2", 0, 100, shipped)


def test_write_report_without_runs_says_so(tmp_path):
    """A grid whose runs all failed gets a sentence pointing at the logs, not an empty table."""
    (tmp_path / "results.jsonl").write_text("")
    text = tracks.write_report(tmp_path, "synthetic", "tune").read_text()
    assert text.startswith("No finished runs") and str(tmp_path / "runs") in text and "|" not in text


def test_write_report_gap_undefined_when_teacher_equals_none(tmp_path):
    """No gap to close (teacher no better than none) prints a dash instead of dividing by zero."""
    rows = [_record("none", 0, 0.0, 0.0), _record("ds2d2", 0, 0.0, 0.0)]
    (tmp_path / "results.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    (tmp_path / "teacher.json").write_text(json.dumps({"mAP50": 0.0, "mAP50-95": 0.0}))
    assert _row(tracks.write_report(tmp_path, "synthetic", "tune").read_text(), "ds2d2")[4] == "—"


def test_tuning_summary_pairs_seeds(tmp_path):
    """The sweep gathers each configuration into its own row, paired with `none` only over seeds both have."""
    runs = {"none": {3: 0.30, 4: 0.40}, "x3": {3: 0.35, 4: 0.38, 5: 0.50}}
    for name, by_seed in runs.items():
        folder = tmp_path / f"synthetic-tune-{name}"
        folder.mkdir()
        method = "none" if name == "none" else "ds2d2"
        lines = [json.dumps(_record(method, s, v, v / 2)) for s, v in by_seed.items()]
        (folder / "results.jsonl").write_text("\n".join(lines) + "\n")
    (tmp_path / "synthetic-tune-x3" / "teacher.json").write_text(json.dumps({"mAP50": 0.8, "mAP50-95": 0.5}))
    table = tune_defaults.summary(tmp_path, "synthetic", list(tune_defaults.CONFIGS))
    row = _row(table, "ds2d2 (x3)")
    assert row[1] == "3,4,5"
    assert row[2] == f"{np.mean([0.35, 0.38, 0.50]):.3f} ± {np.std([0.35, 0.38, 0.50], ddof=1):.3f}"
    d50 = np.array([0.05, -0.02])
    assert _paired(table, "ds2d2 (x3)")[1:3] == [
        "3,4",
        f"{d50.mean():+.3f} ± {d50.std(ddof=1):.3f}",
    ]
    assert "(default)" not in table  # configurations without runs are left out
    assert "teacher mAP50 0.800" in table
    merged = [json.loads(x) for x in (tmp_path / "synthetic-tune-summary" / "results.jsonl").read_text().splitlines()]
    assert sorted((r["method"], r.get("config"), r["seed"]) for r in merged)[:2] == [
        ("ds2d2", "x3", 3),
        ("ds2d2", "x3", 4),
    ]
    assert (tmp_path / "synthetic-tune-summary" / "plot.png").exists()

    table = tune_defaults.summary(tmp_path, "synthetic", list(tune_defaults.CONFIGS), against=["x3"])
    assert _paired(table, "none")[1:3] == ["3,4", f"{-d50.mean():+.3f} ± {d50.std(ddof=1):.3f}"]
