"""`ds2d2-yolo compare`: an end-to-end comparison on tiny data, resuming it, and one-line mistakes before any folder."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import pytest
import torch
import yaml

from ds2d2_yolo.cli import entrypoint
from ds2d2_yolo.config import defaults
from ds2d2_yolo.tools import compare
from ds2d2_yolo.tools.demo import read_results as read_csv

# The conftest training overrides that compare passes through to every run (the rest it sets itself).
FAST = (
    "imgsz=64", "batch=4", "workers=0", "device=cpu", "amp=False", "amp_epochs=1", "mosaic=0.0", "warmup_epochs=0",
    "nbs=4",
)  # fmt: skip


def _argv(m: dict[str, Path], data: Path, project: Path, *extra: str) -> list[str]:
    return [
        "obb", "compare", f"model={m['obb_student']}", f"data={data}", f"teacher={m['obb_teacher']}",
        f"project={project}", "methods=none,ds2d2", "seeds=1", "epochs=1", *FAST, *extra,
    ]  # fmt: skip


@pytest.mark.slow
def test_compare_end_to_end_and_resume(tmp_path, tiny_models, synth_obb, caplog, monkeypatch):
    """One seed of none and ds2d2: a record each, the table paired against none, the plot and the logs; rerunning
    into the same folder trains nothing and rebuilds the same table, and another setting is another run."""
    project = tmp_path / "runs"
    assert entrypoint(_argv(tiny_models, synth_obb, project)) == 0
    out = project / "compare"
    assert any(m.startswith("Results saved to") and str(out) in m for m in caplog.messages), caplog.messages
    recs = compare.read_results(out / "results.jsonl")
    assert [(r["method"], r["seed"], r["epochs"]) for r in recs] == [("none", 0, 1), ("ds2d2", 0, 1)]
    assert all(r["s_per_step"] > 0 and r["peak_rss_mb"] > 0 and r["settings"]["imgsz"] == 64 for r in recs)
    assert all(r["machine"]["cpu"] and r["machine"]["torch"] == torch.__version__ for r in recs)
    assert recs[1]["args"]["distill"] == "ds2d2" and recs[1]["args"]["lambda_exl"] == defaults()["lambda_exl"]
    distilled = read_csv(out / "ds2d2-s0" / "results.csv")[-1]
    assert distilled["train/ex_low"] > 0 and distilled["train/ex_high"] > 0  # the DS2D2 run really distilled
    assert (out / "none-s0" / "weights" / "last.pt").is_file() and (out / "none-s0.log").is_file()
    table = (out / "table.md").read_text()
    assert table.startswith(f"Student `{tiny_models['obb_student'].name}` on `{synth_obb.name}`, 1 epoch; teacher")
    assert "| none | 0 |" in table and "| ds2d2 | 0 |" in table and "Difference to `none` on the same seeds" in table
    img = cv2.imread(str(out / "plot.png"))
    assert img is not None and img.shape[0] > 100
    assert set(json.loads((out / "teacher.json").read_text())) == {"mAP50", "mAP50-95"}
    args = yaml.safe_load((out / "args.yaml").read_text())
    assert args["model"] == str(tiny_models["obb_student"].resolve()) and args["methods"] == "none,ds2d2"

    def no_training(*a, **k):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(compare.subprocess, "run", no_training)
    caplog.clear()
    assert entrypoint(_argv(tiny_models, synth_obb, project, "exist_ok=True")[1:]) == 0  # the task word left out
    assert sum("already; skipped" in m for m in caplog.messages) == 2, caplog.messages
    assert (out / "table.md").read_text() == table and len(compare.read_results(out / "results.jsonl")) == 2
    assert not (project / "compare-2").exists()
    with pytest.raises(AssertionError, match="trained again"):  # another learning rate is another run
        entrypoint(_argv(tiny_models, synth_obb, project, "exist_ok=True", "lr0=0.02"))


@pytest.mark.parametrize(
    "extra, needles",
    [
        (["methods=none,kd"], ("'kd' is unknown", "ds2d2-explicit")),
        (["methods=none,ds2d2", "seeds=abc"], ("seeds=abc", "seeds=0,3,4")),
        (["distill=cwd"], ("'distill'", "methods=")),
        (["seed=3"], ("'seed'", "seeds=")),
        (["lambda_exl=-1"], ("lambda_exl=-1", ">= 0")),
        (["lamda_exl=0.1"], ("'lamda_exl'", "lambda_exl")),
        (["teacher=missing.pt"], ("missing.pt", "not found")),
        (["data=missing.yaml"], ("missing.yaml",)),
        (["epochs=0"], ("epochs=0", ">= 1")),
    ],
)
def test_compare_mistakes_one_line_no_folder(extra, needles, tmp_path, tiny_models, synth_obb, capsys, monkeypatch):
    """A bad method, seed list, key or file fails in one line with exit 2, before any run folder or training."""
    monkeypatch.setattr(compare.subprocess, "run", lambda *a, **k: pytest.fail("trained despite the mistake"))
    monkeypatch.chdir(tmp_path)
    project = tmp_path / "runs"
    code = entrypoint(_argv(tiny_models, synth_obb, project, *extra))
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("ds2d2-yolo: error: "), lines
    assert all(n in lines[0] for n in needles), (needles, lines[0])
    assert not project.exists()


def test_compare_needs_a_teacher_and_a_task_it_distils(tmp_path, tiny_models, synth_obb, capsys):
    """Every method but none needs teacher=; methods=none alone does not; compare distils detect and obb only."""
    project = tmp_path / "runs"
    base = [f"model={tiny_models['obb_student']}", f"data={synth_obb}", f"project={project}"]
    assert entrypoint(["compare", *base, "methods=none,cwd"]) == 2
    assert "'cwd' needs teacher=" in capsys.readouterr().err
    assert entrypoint(["segment", "compare", *base, "methods=none"]) == 2
    assert "detect and obb" in capsys.readouterr().err
    plan = compare.plan_compare(tiny_models["obb_student"], synth_obb, methods="none", project=project, imgsz=64)
    assert plan.names == ["none"] and "teacher" not in plan.run_overrides("none", 0) and not project.exists()


def test_plan_folders_increment_and_refuse_another_model(tmp_path, tiny_models, synth_obb):
    """Folders number like Ultralytics' (compare, compare-2); a reused folder must have compared the same inputs."""
    kw = dict(teacher=tiny_models["obb_teacher"], project=tmp_path, seeds="0,2")
    plan = compare.plan_compare(tiny_models["obb_student"], synth_obb, **kw)
    assert plan.save_dir == tmp_path / "compare" and plan.seeds == [0, 2] and plan.task == "obb"
    assert plan.run_overrides("ds2d2", 2)["name"] == "ds2d2-s2" and plan.epochs == 100
    plan.save_dir.mkdir()
    (plan.save_dir / "args.yaml").write_text(yaml.safe_dump(plan.inputs))
    assert compare.plan_compare(tiny_models["obb_student"], synth_obb, **kw).save_dir == tmp_path / "compare-2"
    again = compare.plan_compare(tiny_models["obb_student"], synth_obb, exist_ok=True, **kw)
    assert again.save_dir == plan.save_dir
    with pytest.raises(ValueError, match="compared model=.*another name="):
        compare.plan_compare(tiny_models["detect_student"], synth_obb, exist_ok=True, task="obb", **kw)


def test_seed_list():
    assert compare.seed_list(3) == [0, 1, 2]
    assert compare.seed_list("0,3,3") == [0, 3] and compare.seed_list((4, 1)) == [4, 1]
    for bad in (0, -1, True, "", "a,1", "1.5", (1.5,), (-1,)):
        with pytest.raises(ValueError, match="must be a count"):
            compare.seed_list(bad)


def test_is_done_checks_the_training_keys_when_given():
    """With settings, a record is the planned run only under the same training keys; where it wrote does not count."""
    args = compare.record_args(defaults() | {"distill": "none"})
    settings = {"imgsz": 64, "lr0": 0.01, "name": "none-s0", "verbose": False, "classes": (0, 1)}
    rec = {"method": "none", "seed": 0, "epochs": 1, "args": args, "settings": json.loads(json.dumps(settings))}
    assert compare.is_done(rec, "none", 0, 1, args, settings)
    assert compare.is_done(rec, "none", 0, 1, args, settings | {"verbose": True, "plots": True, "exist_ok": True})
    assert not compare.is_done(rec, "none", 0, 1, args, settings | {"lr0": 0.02})
    assert not compare.is_done(rec, "none", 0, 1, args, settings | {"device": 0})
    assert compare.is_done(rec, "none", 0, 1, args)  # the research tracks leave the keys unchecked


def test_compare_help_lists_its_keys_and_rows(capsys):
    for argv in (["compare", "help"], ["obb", "compare", "--help"]):
        assert entrypoint(argv) == 0
        out = capsys.readouterr().out
        assert out.startswith("Usage: ds2d2-yolo compare") and "seeds=3" in out and "methods=none,ds2d2" in out
        assert all(m in out for m in compare.METHODS) and "exist_ok=True" in out


def test_benchmark_mode_points_at_compare_and_the_tracks(capsys):
    assert entrypoint(["benchmark", "track=dota"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "ds2d2-yolo compare" in line and "benchmarks/" in line


def test_every_ds2d2_row_distils():
    """Each DS2D2 row of a comparison has a stream on: an ablation that switched everything off would silently be
    `none` with extra cost."""
    from ds2d2_yolo.config import check_args

    for name, row in compare.METHODS.items():
        if row["distill"] == "ds2d2":
            cfg = check_args(row)
            assert cfg["explicit"] or cfg["implicit_full"] or cfg["implicit_high"], name
    assert check_args(compare.METHODS["ds2d2-implicit"])["implicit_high"]
    assert check_args(compare.METHODS["ds2d2-explicit"])["projector"] == "linear"
