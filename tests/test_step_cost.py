"""Training-step cost (benchmarks/step_cost.py): every requested method gets a timed row, bad method lists stop
early."""

from __future__ import annotations

import json
import time

import pytest
import step_cost
import torch


def test_step_cost_rows_per_method(tiny_models, synth_obb, capsys):
    """A tiny interleaved run prints one row per method, native at 1.00x, and a JSON record with finite numbers."""
    methods = ["native", "ds2d2-explicit"]
    t0 = time.perf_counter()
    step_cost.main(
        [
            "--data", str(synth_obb),
            "--teacher", str(tiny_models["obb_teacher"]),
            "--student", str(tiny_models["obb_student"]),
            "--nc", "3", "--imgsz", "64", "--batch", "2", "--steps", "3", "--warmup", "1", "--rss-repeats", "1",
            "--methods", ",".join(methods),
        ]
    )  # fmt: skip
    out = capsys.readouterr().out.strip().splitlines()
    rec = json.loads(out[-1])
    assert list(rec["s_per_step"]) == methods and list(rec["peak_rss_mb"]) == methods
    # Bounded by the wall time of the whole call rather than a fixed limit, so a loaded machine cannot fail it.
    elapsed = time.perf_counter() - t0
    assert all(0 < v and 2 * v < elapsed for v in rec["s_per_step"].values())  # 2 timed steps per method
    assert all(v > 100 for v in rec["peak_rss_mb"].values())  # a process holding torch and models, in MB
    rows = [r for r in out if r.startswith("| ") and not r.startswith("| method")]
    assert [r.split(" | ")[0][2:] for r in rows] == methods
    assert "| 1.00x |" in rows[0]
    assert "2 timed steps each" in "\n".join(out)


def test_step_cost_models_follow_the_method(tiny_models):
    """DS2D2's defaults and the explicit-only ablation carry no amplifier; the reference's full DS2D2 does; CWD is a
    CWD wrapper; `@nchw` keeps the frozen modules in the default layout that the wrapper otherwise turns
    channels-last."""
    args = (str(tiny_models["obb_student"]), str(tiny_models["obb_teacher"]), 64, 3)
    assert step_cost.build("ds2d2-explicit", *args).amplifier is None
    assert step_cost.build("ds2d2", *args).amplifier is None
    assert step_cost.build("ds2d2-reference", *args).amplifier is not None
    assert step_cost.build("cwd", *args).method == "cwd"
    full, nchw = step_cost.build("ds2d2-reference", *args), step_cost.build("ds2d2-reference@nchw", *args)
    assert all(w.is_contiguous(memory_format=torch.channels_last) for w in _conv_weights(full))
    assert all(w.is_contiguous() for w in _conv_weights(nchw))
    assert not all(w.is_contiguous() for w in _conv_weights(full))  # the two layouts really differ


def _conv_weights(model):
    nets = (model.teacher, model.amplifier)
    return [c.weight for m in nets for c in m.modules() if isinstance(c, torch.nn.Conv2d)]


@pytest.mark.parametrize(
    "methods, msg",
    [
        ("native,ds2d3", "method 'ds2d3' is unknown"),
        ("ds2d2,none", "lacks 'native'"),
        ("native@nchw,ds2d2", "'native@nchw': @nchw applies to this package's wrappers only"),
    ],
)
def test_step_cost_bad_methods(methods, msg, capsys):
    """Unknown methods or a list without the reference exit with a one-line message before loading anything."""
    with pytest.raises(SystemExit):
        step_cost.main(["--data", "missing.yaml", "--teacher", "missing.pt", "--methods", methods])
    assert msg in capsys.readouterr().err
