"""The method registry: names come from one place, and a new method is one class plus a registry entry."""

from __future__ import annotations

import csv

import pytest
from conftest import train_overrides

from ds2d2_yolo import methods
from ds2d2_yolo.config import DS2D2ArgError, check_args
from ds2d2_yolo.integration.trainer import DS2D2Trainer
from ds2d2_yolo.methods import FeatureMethod, register


class L2(FeatureMethod):
    """Plain MSE between adapted student and teacher features (a method written for this test)."""

    name = "l2test"
    help = "mean squared error on adapted features"
    weights = {"l2": "cwd_weight"}

    def terms(self, model, s_feats, s_ad, t_feats, batch):
        return {"l2": model.cfg["cwd_weight"] * sum(((s - t) ** 2).mean() for s, t in zip(s_ad, t_feats))}


@pytest.fixture
def l2_registered():
    yield register(L2())
    methods.REGISTRY.pop("l2test")


def test_registry_is_the_source_of_names():
    assert methods.feature_methods() == ("ds2d2", "cwd", "mgd")
    assert set(methods.distill_methods()) == {"ds2d2", "cwd", "mgd", "native", "pseudo", "none"}
    assert methods.term_weights()["im_full"] == "lambda_imf" and methods.term_weights()["mgd"] == "mgd_alpha"
    with pytest.raises(DS2D2ArgError, match="l2test"):
        check_args({"distill": "l2test"})
    with pytest.raises(ValueError, match="already registered"):
        register(methods.REGISTRY["cwd"])


def test_a_registered_method_trains_and_logs_its_term(l2_registered, tiny_models, synth_obb, tmp_path):
    """One class and one `register` call: the method is accepted by the checks, trains through the wrapper, logs its
    term as a results.csv column, and its adapters are part of the saved connector state."""
    assert check_args({"distill": "l2test"})["distill"] == "l2test"
    kw = train_overrides(tmp_path, model=str(tiny_models["obb_student"]), data=str(synth_obb))
    tr = DS2D2Trainer(overrides={**kw, "teacher": str(tiny_models["obb_teacher"]), "distill": "l2test"})
    tr.train()
    rows = list(csv.DictReader(open(tr.save_dir / "results.csv")))
    col = next(k for k in rows[0] if k.strip() == "train/l2")
    assert float(rows[-1][col]) > 0
    assert tr.model.loss_names == ("l2",) and any(k.startswith("adapters.") for k in tr.model.connector_state())
