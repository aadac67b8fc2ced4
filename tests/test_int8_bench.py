"""The INT8 benchmark's settings parser (benchmarks/int8_drop.py): ONNX Runtime enums by name, bad names stop."""

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
