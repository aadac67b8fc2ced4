"""The offline demo, shrunk to seconds: every step runs, the table and plot are written, the numbers are sane."""

from __future__ import annotations

import math

from ds2d2_yolo.tools.demo import DISCLAIMER, read_results, run_demo, train_teacher


def test_demo_tiny(tmp_path):
    """Teacher and both students train; demo.md/demo.png are written; a rerun reuses the teacher."""
    kw = dict(epochs=1, imgsz=64, n_teacher=8, n_train=8, n_val=4, teacher_epochs=1, batch=8)
    out = tmp_path / "demo"
    results = run_demo(out, **kw)

    assert set(results) == {"teacher", "none", "ds2d2"}
    for name, r in results.items():
        for key in ("mAP50", "mAP50-95"):
            assert math.isfinite(r[key]) and 0.0 <= r[key] <= 1.0, (name, key, r[key])
        assert math.isfinite(r["train_s"]) and r["train_s"] > 0, name
    assert (out / "teacher" / "weights" / "best.pt").is_file()
    distilled = read_results(out / "ds2d2" / "results.csv")[-1]
    assert distilled["train/ex_low"] > 0 and distilled["train/ex_high"] > 0  # the DS2D2 run really distilled
    assert "train/ex_low" not in read_results(out / "none" / "results.csv")[-1]

    text = (out / "demo.md").read_text()
    assert "| model | mAP50 | mAP50-95 | train time (s) |" in text
    assert all(f"distill={m}" in text for m in ("none", "ds2d2")) and DISCLAIMER in text
    png = out / "demo.png"
    assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # A rerun's teacher step (the students would only train again) reuses the saved teacher and scores it afresh.
    mtime = (out / "teacher" / "weights" / "best.pt").stat().st_mtime_ns
    data = out / "data"
    again = train_teacher(
        data / "teacher.yaml", out, kw["imgsz"], kw["teacher_epochs"], 0, 0.25, data / "student" / "data.yaml"
    )
    assert again["reused"] and (out / "teacher" / "weights" / "best.pt").stat().st_mtime_ns == mtime
    assert again["train_s"] == results["teacher"]["train_s"]  # the recorded time is reported again
    assert again["mAP50"] == results["teacher"]["mAP50"]  # the same weights on the same split
