"""The `ds2d2-yolo` command: end to end in subprocesses on tiny models, one-line errors, help, convert, examples."""

from __future__ import annotations

import csv
import importlib.util
import math
import os
import py_compile
import re
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml
from conftest import REPO, train_overrides
from ds2d2_yolo.cfg import CFG_DIR

from ds2d2_yolo.cli import UsageError, entrypoint, resolve_data, usage, user_errors
from ds2d2_yolo.config import REFERENCE, SCHEMA, DS2D2ArgError, check_args, defaults, render_cfg
from ds2d2_yolo.core.connectors import PROJECTORS
from ds2d2_yolo.core.disw import DISW_MODES as DISW_RULES
from ds2d2_yolo.core.disw import SCORE_MODE
from ds2d2_yolo.core.dwt import MODES

DS2D2_COLS = ("train/ex_low", "train/ex_high", "train/im_full", "train/im_high")
EXAMPLES = ("distill_dota_obb.py", "distill_dior_detect.py", "export_onnx.py")


def cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run `python -m ds2d2_yolo ARGS` in a fresh interpreter, offline."""
    env = {**os.environ, "YOLO_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "ds2d2_yolo", *args], capture_output=True, text=True, cwd=cwd or REPO, env=env
    )


def kv_args(**kw) -> list[str]:
    return [f"{k}={v}" for k, v in kw.items()]


def fast_args(tmp: Path, name: str, **kw) -> list[str]:
    """The conftest training overrides as command-line key=value words."""
    return kv_args(**train_overrides(tmp, name=name, **kw))


def read_results(save_dir: Path) -> list[dict[str, float]]:
    with open(save_dir / "results.csv") as f:
        return [{k.strip(): float(v) for k, v in row.items()} for row in csv.DictReader(f)]


def fmt_default(v) -> str:
    return "" if v is None else str(v).lower() if isinstance(v, bool) else str(v)


# ------------------------------------------------------------------------------------------------------------------
# End to end: amplifier -> train (ds2d2 reusing it, and none) -> val pass-through


@pytest.fixture(scope="module")
def amplifier_run(tmp_path_factory, tiny_models, synth_obb) -> Path:
    """`ds2d2-yolo obb amplifier` on the tiny OBB teacher; returns the written amplifier.pt."""
    tmp = tmp_path_factory.mktemp("cli_amp")
    r = cli("obb", "amplifier", f"teacher={tiny_models['obb_teacher']}", f"data={synth_obb}", *fast_args(tmp, "amp"))
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    path = tmp / "amp" / "amplifier.pt"
    assert path.is_file() and f"amplifier written to {path}" in r.stdout
    return path


@pytest.fixture(scope="module")
def ds2d2_run(tmp_path_factory, tiny_models, synth_obb, amplifier_run) -> Path:
    """`ds2d2-yolo obb train distill=ds2d2` with the reference's settings for one epoch at 64 px, reusing the
    amplifier; returns the run folder."""
    tmp = tmp_path_factory.mktemp("cli_train")
    r = cli(
        "obb",
        "train",
        f"model={tiny_models['obb_student']}",
        f"data={synth_obb}",
        f"teacher={tiny_models['obb_teacher']}",
        f"amplifier={amplifier_run}",
        "distill=ds2d2",
        *(f"{k}={v}" for k, v in REFERENCE.items()),  # both streams, so the given amplifier is in use
        *fast_args(tmp, "ds2d2"),
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "Traceback" not in r.stderr
    return tmp / "ds2d2"


def test_amplifier_mode_writes_loadable_file(amplifier_run, tiny_models, synth_obb):
    """The file loads for the same teacher and wavelet (fingerprint and format checked) and holds a head."""
    import torch

    from ds2d2_yolo.config import check_args
    from ds2d2_yolo.integration.amplifier import load_amplifier
    from ds2d2_yolo.integration.teacher import load_teacher
    from ds2d2_yolo.tools.synthetic import CLASSES

    teacher = load_teacher(tiny_models["obb_teacher"], "obb", dict(enumerate(CLASSES)))
    head = load_amplifier(amplifier_run, teacher.head, teacher.fingerprint, check_args({}))
    assert isinstance(head, torch.nn.Module) and not any(p.requires_grad for p in head.parameters())
    state = torch.load(amplifier_run, map_location="cpu", weights_only=True)
    assert state["teacher_fingerprint"] == teacher.fingerprint and state["epochs"] == 1


def test_train_ds2d2(ds2d2_run):
    """DS2D2 columns are logged and finite; weights are written; the given amplifier is used, not retrained."""
    rows = read_results(ds2d2_run)
    assert len(rows) == 1
    for col in DS2D2_COLS:
        assert col in rows[0] and math.isfinite(rows[0][col]) and rows[0][col] > 0, (col, rows[0])
    assert (ds2d2_run / "weights" / "best.pt").is_file()
    assert not (ds2d2_run / "amplifier.pt").exists()  # amplifier= was honoured


def test_train_none(tmp_path, tiny_models, synth_obb):
    """distill=none needs no teacher and logs no distillation terms."""
    r = cli(
        "obb",
        "train",
        f"model={tiny_models['obb_student']}",
        f"data={synth_obb}",
        "distill=none",
        *fast_args(tmp_path, "plain"),
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    rows = read_results(tmp_path / "plain")
    assert len(rows) == 1 and not any(c.split("/")[-1] in {"ex_low", "im_full"} for c in rows[0])
    assert (tmp_path / "plain" / "weights" / "best.pt").is_file()


def test_val_pass_through(ds2d2_run, synth_obb, tmp_path):
    """`val` goes to Ultralytics unchanged and validates the distilled best.pt as a plain checkpoint."""
    best = ds2d2_run / "weights" / "best.pt"
    r = cli(
        "obb", "val", f"model={best}", f"data={synth_obb}", "imgsz=64", "batch=4", "device=cpu", "plots=False",
        f"project={tmp_path}", "name=val",
    )  # fmt: skip
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert re.search(r"^\s+all\s+4\s+\d+", r.stdout, re.M), r.stdout[-2000:]  # Ultralytics' metrics table, 4 images
    assert (tmp_path / "val").is_dir()


# ------------------------------------------------------------------------------------------------------------------
# Help


def test_help_lists_every_key_with_default():
    """`python -m ds2d2_yolo help` prints each key of cfg/ds2d2.yaml as key=default."""
    r = cli("help")
    assert r.returncode == 0 and r.stderr == ""
    cfg = yaml.safe_load((CFG_DIR / "ds2d2.yaml").read_text())
    assert len(cfg) >= 20
    for k, v in cfg.items():
        assert re.search(rf"^\s+{k}={re.escape(fmt_default(v))}(\s|$)", r.stdout, re.M), (k, v)
    for mode in ("train", "amplifier", "convert", "val"):
        assert mode in r.stdout


def test_shipped_cfg_is_the_schema_written_out():
    """cfg/ds2d2.yaml holds exactly the schema's defaults, with each key's help as its comment, so the file, the
    defaults and `help` cannot drift apart (`python -m ds2d2_yolo.config` rewrites the file)."""
    text = (CFG_DIR / "ds2d2.yaml").read_text()
    assert text == render_cfg()
    assert yaml.safe_load(text) == defaults()
    for k, key in SCHEMA.items():
        assert re.search(rf"^{k}:[^#\n]*# {re.escape(key.help)}$", text, re.M), k


def test_choices_follow_what_the_code_supports():
    """Every DWT padding mode the core implements and every DISW rule it knows is accepted, and nothing else."""
    for mode in MODES:
        assert check_args({"wave_mode": mode})["wave_mode"] == mode
    for rule in (*DISW_RULES, SCORE_MODE, "auto", "none"):
        assert check_args({"disw": rule})["disw"] == rule
    for kind in PROJECTORS:
        assert check_args({"projector": kind.upper()})["projector"] == kind
    for bad in ({"wave_mode": "mirror"}, {"disw": "circle"}, {"projector": "deep"}):
        with pytest.raises(DS2D2ArgError, match="is unknown; choose one of"):
            check_args(bad)


@pytest.mark.parametrize(
    "argv,mode", [(["--help"], None), (["-h"], None), ([], None), (["obb", "train", "--help"], "train")]
)
def test_help_flags(argv, mode, capsys):
    assert entrypoint(argv) == 0
    assert capsys.readouterr().out.strip() == usage(mode).strip()  # a mode's help lists that mode's keys


# ------------------------------------------------------------------------------------------------------------------
# User mistakes: one line, exit 2, no traceback, nothing created


def _mistakes(m: dict[str, Path], data: Path, project: Path) -> list[tuple[list[str], tuple[str, ...]]]:
    base = [f"model={m['obb_student']}", f"data={data}", f"teacher={m['obb_teacher']}", f"project={project}"]
    return [
        (["obb", "train", *base, "epochs=abc"], ("epochs=abc", "int")),
        (["obb", "train", *base, "lamda_exl=0.5"], ("'lamda_exl'", "lambda_exl", "distill, teacher")),
        (["obb", "train", *base, "distill=kd"], ("distill=kd", "ds2d2, cwd, mgd, native, pseudo, none")),
        (["obb", "train", *base, "disw=rotated"], ("disw=rotated", "auto, hbb, obb, score, none")),
        (["obb", "train", *base, "wave_mode=edge"], ("wave_mode=edge", "zero, constant, symmetric")),
        (["obb", "train", *base, "lambda_exl=-1"], ("lambda_exl=-1", ">= 0")),
        (["obb", "train", *base, "explicit=maybe"], ("explicit=maybe", "explicit=true")),
        (["obb", "train", *base, "optimizer=adan"], ("optimizer=adan", "AdamW")),
        (["obb", "train", *base, "amplifier=nope.pt"], ("nope.pt", "not found")),
        (["obb", "train", *base[:2], f"project={project}"], ("teacher=", "distill=none")),
        (["obb", "train", *base[:2], "teacher=missing.pt", f"project={project}"], ("missing.pt", "not found")),
        (["obb", "train", *base[1:], "model=missing.pt"], ("missing.pt", "not found")),
        (["obb", "train", *base[1:], "model=missing.yaml"], ("missing.yaml",)),
        (["obb", "train", base[0], *base[2:], "data=missing.yaml"], ("missing.yaml",)),
        (["segment", "train", *base], ("segment", "detect and obb")),
        (["obb", "trian", *base], ("'trian'", "train")),
        (["obb", "train", "val", *base], ("two modes",)),
        (["obb", "train", *base, "epochs="], ("epochs=", "value")),
        (["obb", "amplifier", *base[1:2], f"project={project}"], ("teacher=",)),
        (["obb", "val", f"model={m['obb_teacher']}", "lambda_exl=0.1"], ("lambda_exl", "remove it")),
        (["obb", "predict", f"model={m['obb_teacher']}"], ("source=",)),
        (["obb", "val", "model=missing.pt"], ("missing.pt", "not found")),
        (["convert", "src=.", "dst=out", "tile=abc"], ("tile=abc", "whole number")),
        (["convert", "src=.", "dst=out", "format=voc"], ("format=voc", "dota, dior, dior-r")),
        (["convert", "src=.", "dst=out", "size=3"], ("'size'", "format, src, dst")),
        (["convert", "src=."], ("dst=",)),
        (["convert", "src=no_such_dir", "dst=out"], ("no_such_dir", "not found")),
        (["benchmark", "track=dota"], ("ds2d2-yolo compare", "benchmarks/")),
        (["obb", "compare", *base, "methods=none,kd"], ("'kd' is unknown", "ds2d2")),
        (["compare", *base[1:]], ("model=",)),
    ]


def test_mistakes_one_line_exit_2(tmp_path, tiny_models, synth_obb, capsys, monkeypatch):
    """Every mistake: exit 2, one stderr line naming the key/value and the choices or the fix, no run folder."""
    monkeypatch.chdir(tmp_path)
    project = tmp_path / "runs"
    for argv, needles in _mistakes(tiny_models, synth_obb, project):
        code = entrypoint(argv)
        err = capsys.readouterr().err
        lines = err.strip().splitlines()
        assert code == 2, (argv, err)
        assert len(lines) == 1 and lines[0].startswith("ds2d2-yolo: error: "), (argv, err)
        for n in needles:
            assert n in lines[0], (argv, n, lines[0])
        assert not project.exists() and not (tmp_path / "runs").exists() and not (tmp_path / "out").exists(), argv


def test_mistake_in_subprocess_has_no_traceback(tmp_path, tiny_models, synth_obb):
    """The real console path: exit status 2, exactly one stderr line, no traceback, nothing written."""
    r = cli(
        "obb", "train", f"model={tiny_models['obb_student']}", f"data={synth_obb}", "distill=ds2d2",
        f"teacher={tmp_path / 'no_teacher.pt'}", f"project={tmp_path / 'runs'}",
    )  # fmt: skip
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr and "no_teacher.pt" in r.stderr, r.stderr
    assert not (tmp_path / "runs").exists()


def test_trainer_construction_error_is_one_line(tmp_path, tiny_models, synth_obb, capsys):
    """A mistake only the trainer can see (a detect teacher for an OBB student) is still one line and exit 2."""
    argv = [
        "obb", "train", f"model={tiny_models['obb_student']}", f"data={synth_obb}",
        f"teacher={tiny_models['detect_teacher']}", f"project={tmp_path / 'runs'}", "device=cpu",
    ]  # fmt: skip
    assert entrypoint(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'detect' model" in err[0] and "obb" in err[0], err
    assert not any((tmp_path / "runs").glob("*/args.yaml"))  # the trainer checks the teacher before the run folder


def test_user_errors_context():
    """Ultralytics' FileNotFoundError and SyntaxError become one-line UsageErrors; other errors pass untouched."""
    with pytest.raises(UsageError, match=r"^'x' is not a valid YOLO argument$"):
        with user_errors():
            raise SyntaxError("\x1b[31m'x' is not a valid YOLO argument\x1b[0m\nmore help\n")
    with pytest.raises(RuntimeError):
        with user_errors():
            raise RuntimeError("a bug keeps its traceback")


# ------------------------------------------------------------------------------------------------------------------
# Bare dataset names


def test_resolve_data(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in ("DOTAv1.yaml", "DOTAv1", "DIOR.yaml", "DIOR"):
        stem = name.removesuffix(".yaml")
        assert resolve_data(name) == str(CFG_DIR / f"{stem}.yaml")
        assert "download" not in yaml.safe_load(Path(resolve_data(name)).read_text())
    for name in ("coco8.yaml", "sub/DOTAv1.yaml", str(tmp_path / "DIOR.yaml"), None):
        assert resolve_data(name) == name
    (tmp_path / "DOTAv1.yaml").write_text("path: mine\n")
    assert resolve_data("DOTAv1.yaml") == "DOTAv1.yaml"  # a file in the working directory is the user's own


def test_bare_dataset_name_uses_our_yaml(tmp_path, tiny_models, capsys, monkeypatch):
    """`data=DOTAv1.yaml` reads cfg/DOTAv1.yaml: a missing dataset names our file and the convert command."""
    from ultralytics.data.utils import check_det_dataset

    monkeypatch.chdir(tmp_path)
    try:
        check_det_dataset(str(CFG_DIR / "DOTAv1.yaml"), autodownload=False)
        pytest.skip("a prepared DOTAv1 dataset exists on this machine")
    except FileNotFoundError:
        pass
    argv = ["obb", "train", f"model={tiny_models['obb_student']}", "data=DOTAv1.yaml", "distill=none"]
    assert entrypoint([*argv, f"project={tmp_path / 'runs'}"]) == 2
    err = capsys.readouterr().err
    assert str(CFG_DIR / "DOTAv1.yaml") in err and "ds2d2-yolo convert format=dota" in err, err
    assert not (tmp_path / "runs").exists()


# ------------------------------------------------------------------------------------------------------------------
# convert


def test_convert_dota(tmp_path, capsys):
    """A made-up DOTA folder (one 300x200 image, three polygons) converts whole and tiled."""
    src = tmp_path / "dota"
    (src / "images").mkdir(parents=True)
    (src / "labelTxt").mkdir()
    img = np.random.default_rng(0).integers(0, 255, (200, 300, 3), dtype=np.uint8)
    cv2.imwrite(str(src / "images" / "P9001.png"), img)
    (src / "labelTxt" / "P9001.txt").write_text(
        "imagesource:made-up\ngsd:0.5\n"
        "30 20 90 20 90 50 30 50 plane 0\n"
        "200 100 220 110 215 120 195 110 small-vehicle 1\n"
        "150 150 170 150 170 170 150 170 ship 0\n"
    )
    assert entrypoint(["convert", "format=dota", f"src={src}", f"dst={tmp_path / 'whole'}", "tile=0"]) == 0
    lines = (tmp_path / "whole" / "labels" / "train" / "P9001.txt").read_text().split("\n")
    rows = [list(map(float, s.split())) for s in lines if s.strip()]
    assert [int(r[0]) for r in rows] == [0, 10, 1]  # DOTA-v1.0 class order: plane 0, ship 1, small vehicle 10
    np.testing.assert_allclose(rows[0][1:], [0.1, 0.1, 0.3, 0.1, 0.3, 0.25, 0.1, 0.25], atol=1e-6)
    data = yaml.safe_load((tmp_path / "whole" / "data.yaml").read_text())
    assert len(data["names"]) == 15

    argv = ["convert", f"src={src}", f"dst={tmp_path / 'tiled'}", "tile=128", "gap=28", "skip_difficult=true"]
    assert entrypoint(argv) == 0
    labels = sorted((tmp_path / "tiled" / "labels" / "train").glob("*.txt"))
    assert len(labels) > 1 and all(p.stem.startswith("P9001__128__") for p in labels)
    classes = [int(s.split()[0]) for p in labels for s in p.read_text().splitlines() if s.strip()]
    assert 0 in classes and 1 in classes and 10 not in classes  # the difficult vehicle was skipped
    capsys.readouterr()


# ------------------------------------------------------------------------------------------------------------------
# Examples


@pytest.mark.parametrize("name", EXAMPLES)
def test_example_compiles_and_is_inert_on_import(name, tmp_path, monkeypatch):
    """Each example compiles, documents its data layout, and does nothing when imported (work starts in main)."""
    path = REPO / "examples" / name
    py_compile.compile(str(path), cfile=str(tmp_path / "x.pyc"), doraise=True)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["x"])  # an accidental top-level argparse would exit on missing arguments
    spec = importlib.util.spec_from_file_location(f"example_{path.stem}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert callable(mod.main) and len(mod.__doc__) > 200
    assert list(tmp_path.iterdir()) == [tmp_path / "x.pyc"]
