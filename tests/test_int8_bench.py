"""The INT8 benchmark's settings parser and record names (benchmarks/int8_drop.py)."""

from __future__ import annotations

import pytest

ortq = pytest.importorskip("onnxruntime.quantization")
int8_drop = pytest.importorskip("int8_drop")


def test_quantize_options_maps_enum_names():
    """Enum-valued keys become ONNX Runtime's members; other keys pass through unchanged."""
    opts = int8_drop.quantize_options(
        '{"calibrate_method": "Percentile", "quant_format": "QOperator", "activation_type": "QInt8", '
        '"reduce_range": false, "extra_options": {"CalibPercentile": 99.9}}'
    )
    assert opts["calibrate_method"] is ortq.CalibrationMethod.Percentile
    assert opts["quant_format"] is ortq.QuantFormat.QOperator
    assert opts["activation_type"] is ortq.QuantType.QInt8
    assert opts["reduce_range"] is False and opts["extra_options"] == {"CalibPercentile": 99.9}
    assert int8_drop.quantize_options("{}") == {}


def test_quantize_options_unknown_member_names_the_choices():
    """A misspelt member stops with one line that lists the members there are."""
    with pytest.raises(SystemExit, match=r"calibrate_method='Entropi' is unknown; choose from .*Entropy"):
        int8_drop.quantize_options('{"calibrate_method": "Entropi"}')


def test_own_options_split_quantize_onnx_keywords():
    """`float_stem` and `pad_channels` leave the quantize_static keywords; the caller's dict is not changed."""
    opts = {"float_stem": False, "pad_channels": 0, "reduce_range": False}
    assert int8_drop.own_options(opts) == ({"reduce_range": False}, {"float_stem": False, "pad_channels": 0})
    assert opts == {"float_stem": False, "pad_channels": 0, "reduce_range": False}
    assert int8_drop.own_options(None) == ({}, {})


def test_int8_compare_pairs_runs_and_refuses_different_fp32(tmp_path):
    """Records pair by folder, method, seed and split; the paired difference agrees with a hand computation, runs
    without a partner and records of other tags are left out, and a pair whose FP32 mAP differs stops the table."""
    import json

    int8_compare = pytest.importorskip("int8_compare")

    def write(path, recs):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps(r) + "\n" for r in recs))

    def rec(seed, fp, d50, d95=0.0):
        return {"method": "none", "seed": seed, "split": "tune", "fp32_mAP50": fp, "d50": d50, "d95": d95}

    write(tmp_path / "a" / "int8.jsonl", [rec(0, 0.3, -0.02), rec(1, 0.4, -0.01), rec(2, 0.5, 0.0)])
    write(tmp_path / "a" / "int8-tune-x.jsonl", [rec(0, 0.3, -0.01), rec(1, 0.4, -0.02)])
    write(tmp_path / "b" / "int8-tune.jsonl", [rec(0, 0.2, -0.03)])
    write(tmp_path / "b" / "int8-tune-x.jsonl", [rec(0, 0.2, 0.01)])
    write(tmp_path / "b" / "int8-tune-other.jsonl", [rec(0, 0.2, 0.05)])  # another tag: neither side
    before, after = int8_compare.load(tmp_path, "x")
    row = int8_compare.compare_table(before, after, "x").splitlines()[2].split(" | ")
    diffs = [0.01, -0.01, 0.04]
    mean, std = sum(diffs) / 3, (sum((d - sum(diffs) / 3) ** 2 for d in diffs) / 2) ** 0.5
    assert row[1] == "3" and row[6] == f"{mean:+.4f} ± {std:.4f}" and row[7] == "2/3"
    write(tmp_path / "b" / "int8-tune-x.jsonl", [rec(0, 0.25, 0.01)])
    with pytest.raises(SystemExit, match="not a pair"):
        int8_compare.compare_table(*int8_compare.load(tmp_path, "x"), "x")


def test_record_stem_keeps_earlier_names():
    """Record files of the ONNX Runtime route keep the names committed records use; OpenVINO's are told apart."""
    assert int8_drop.record_stem("onnx", "report", "report", "") == "int8"
    assert int8_drop.record_stem("onnx", "tune", "report", "") == "int8-tune"
    assert int8_drop.record_stem("onnx", "tune", "report", "calib107") == "int8-tune-calib107"
    assert int8_drop.record_stem("onnx", "report", "report", "w8") == "int8-report-w8"
    assert int8_drop.record_stem("openvino", "report", "report", "") == "int8-openvino"
    assert int8_drop.record_stem("openvino", "tune", "report", "") == "int8-openvino-tune"
