"""The Ultralytics surface this package relies on, pinned in one place so an upgrade fails loudly here.

Every name below is read, called, overridden or written by `ds2d2_yolo`; a change of name, signature, callback event
or checkpoint key in Ultralytics breaks one of these tests before it breaks a user's run.
"""

from __future__ import annotations

import inspect

import pytest
import torch
import ultralytics
from ultralytics.engine.trainer import BaseTrainer
from ultralytics.engine.validator import BaseValidator
from ultralytics.models.yolo.detect import DetectionTrainer, DetectionValidator
from ultralytics.models.yolo.obb import OBBTrainer, OBBValidator
from ultralytics.nn.modules.head import OBB, Detect
from ultralytics.nn.tasks import DetectionModel, OBBModel
from ultralytics.utils.callbacks.base import default_callbacks


def params(fn) -> list[str]:
    """Parameter names of a function or method, without `self`."""
    return [p for p in inspect.signature(fn).parameters if p != "self"]


def test_version_line():
    major, minor = (int(x) for x in ultralytics.__version__.split(".")[:2])
    assert (major, minor) == (8, 4), f"tested on the 8.4 line, found {ultralytics.__version__}"


@pytest.mark.parametrize(
    "name,args",
    [
        ("setup_model", []),
        ("_setup_train", []),
        ("save_model", []),
        ("final_eval", []),
        ("_handle_nan_recovery", ["epoch"]),
        ("_load_checkpoint_state", ["ckpt"]),
        ("get_model", ["cfg", "weights", "verbose"]),
        ("get_validator", []),
        ("read_results_csv", []),
        ("validate", []),
        ("_model_train", []),
        ("add_callback", ["event", "callback"]),
        ("run_callbacks", ["event"]),
    ],
)
def test_trainer_methods(name, args):
    """Trainer methods the DS2D2 trainer overrides or calls, with the parameters it passes."""
    fn = getattr(DetectionTrainer, name)
    assert params(fn)[: len(args)] == args
    assert issubclass(OBBTrainer, DetectionTrainer) and issubclass(DetectionTrainer, BaseTrainer)


def test_trainer_dataloader_and_preprocess():
    assert params(DetectionTrainer.get_dataloader)[:4] == ["dataset_path", "batch_size", "rank", "mode"]
    assert params(DetectionTrainer.preprocess_batch) == ["batch"]


def test_callback_events():
    """Events the trainer and the benchmark register callbacks on, in the order Ultralytics runs a step."""
    for event in (
        "on_pretrain_routine_start",
        "on_train_start",
        "on_train_epoch_end",
        "on_train_batch_start",
        "on_train_batch_end",
        "on_fit_epoch_end",
        "on_model_save",
    ):
        assert event in default_callbacks, event
    src = inspect.getsource(BaseTrainer._do_train)
    # The benchmark's validation schedule sets args.val in on_train_epoch_end, before the validation check reads it.
    assert src.index('run_callbacks("on_train_epoch_end")') < src.index("self.args.val or final_epoch")
    assert src.index('run_callbacks("on_train_batch_start")') < src.index('run_callbacks("on_train_batch_end")')


def test_checkpoint_keys_match_ultralytics():
    """The keys our save_model writes are the keys Ultralytics' own save_model writes, so best.pt/last.pt load as
    plain Ultralytics checkpoints."""
    src = inspect.getsource(BaseTrainer.save_model)
    for key in (
        "epoch",
        "best_fitness",
        "model",
        "ema",
        "updates",
        "optimizer",
        "scaler",
        "train_args",
        "train_metrics",
        "train_results",
        "date",
        "version",
    ):
        assert f'"{key}"' in src, key


def test_head_surface():
    """What the amplifiers, the cross-head probe and the level checks read on Detect/OBB heads."""
    assert params(Detect.forward_head) == ["x", "box_head", "cls_head"]
    assert params(OBB.forward_head) == ["x", "box_head", "cls_head", "angle_head"]
    for attr in ("one2many", "one2one", "end2end"):
        assert isinstance(inspect.getattr_static(Detect, attr), property), attr
    assert callable(Detect._inference) and callable(OBB._inference)
    m = OBBModel("yolov8n-obb.yaml", nc=3, verbose=False)
    head = m.model[-1]
    for attr in ("stride", "nl", "nc", "reg_max", "dfl", "f", "cv2", "cv3", "cv4"):
        assert hasattr(head, attr), attr
    assert set(head.one2many) == {"box_head", "cls_head", "angle_head"}
    x = [torch.zeros(1, c, s, s) for c, s in zip((64, 128, 256), (8, 4, 2))]
    out = head.forward_head(x, **head.one2many)
    assert {"boxes", "scores", "angle", "feats"} <= set(out)
    assert head._inference(out).shape[1] == 4 + 3 + 1  # boxes, classes, angle
    assert isinstance(DetectionModel("yolov8n.yaml", nc=3, verbose=False).model[-1], Detect)
    assert callable(m.init_criterion) and isinstance(m.yaml, dict)


def test_validator_surface():
    """The validator steps `probe.head_map` drives itself, and the metric keys it reads."""
    for name in ("init_metrics", "preprocess", "postprocess", "update_metrics", "get_stats"):
        assert callable(getattr(OBBValidator, name)), name
    assert issubclass(OBBValidator, DetectionValidator) and issubclass(DetectionValidator, BaseValidator)
    assert params(BaseValidator.__init__)[:4] == ["dataloader", "save_dir", "args", "_callbacks"]
    src = inspect.getsource(DetectionValidator.init_metrics)
    assert "model.names" in src and '"end2end"' in src


def test_loading_and_utilities():
    """Safe loading, checkpoint loading and the geometry helpers the package calls."""
    from ultralytics.nn import tasks
    from ultralytics.utils import ops
    from ultralytics.utils.metrics import batch_probiou, box_iou
    from ultralytics.utils.patches import torch_load
    from ultralytics.utils.tal import dist2bbox, dist2rbox, make_anchors

    assert hasattr(tasks, "SAFE_LOAD") and hasattr(tasks._SafeLoad, "SUPPORTED")
    assert callable(tasks.load_checkpoint) and callable(tasks.torch_safe_load) and callable(torch_load)
    for fn in (ops.xyxyxyxy2xywhr, ops.xywhr2xyxyxyxy, batch_probiou, box_iou, dist2bbox, dist2rbox, make_anchors):
        assert callable(fn)
    assert callable(tasks.guess_model_task) and callable(tasks.yaml_model_load)


def test_core_does_not_import_ultralytics():
    """The method's maths (`ds2d2_yolo.core`) is pure torch: importing every core module never loads Ultralytics."""
    import subprocess
    import sys

    code = (
        "import importlib, pkgutil, sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] == 'ultralytics':\n"
        "            raise ImportError('core imported ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "import ds2d2_yolo.core as core\n"
        "for m in pkgutil.iter_modules(core.__path__):\n"
        "    importlib.import_module('ds2d2_yolo.core.' + m.name)\n"
        "print(sorted(k for k in sys.modules if k.startswith('ds2d2_yolo.core.')))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "ds2d2_yolo.core.dwt" in r.stdout and "ds2d2_yolo.core.disw" in r.stdout


def test_save_and_final_eval_seams():
    """The trainer runs Ultralytics' own save_model and final_eval; it relies on where they write and what they call.

    save_model writes through `self.last`, `self.best` and `self.wdir` (redirected to a staging folder, then renamed
    into place with the DS2D2 state) and reads `self.ema.ema` and `unwrap_model(self.model)` (shown the plain
    student). final_eval strips through the module-level `strip_optimizer` name (swapped for an atomic version).
    """
    from ultralytics.engine import trainer as ultralytics_trainer

    save = inspect.getsource(BaseTrainer.save_model)
    for needle in ("self.last.write_bytes", "self.best.write_bytes", 'self.wdir / f"epoch', "self.ema.ema"):
        assert needle in save, needle
    final = inspect.getsource(BaseTrainer.final_eval)
    assert "strip_optimizer(self.last)" in final and "strip_optimizer(self.best" in final
    assert callable(ultralytics_trainer.strip_optimizer)
    nan = inspect.getsource(BaseTrainer._handle_nan_recovery)
    assert "self._load_checkpoint_state(ckpt)" in nan and "unwrap_model(self.model)" in nan


def test_wrapper_surface_covers_what_ultralytics_reads():
    """Every attribute Ultralytics copies onto the EMA is a property with a setter on the wrapper, and the wrapper has
    none of the attribute names that switch on Ultralytics' DistillationModel branches."""
    import re

    from ultralytics.nn.distill_model import DistillationModel

    from ds2d2_yolo.integration.wrapper import DS2D2Model

    src = inspect.getsource(BaseTrainer._do_train)
    include = re.search(r"update_attr\(self\.model, include=\[([^\]]*)\]", src)
    names = re.findall(r'"(\w+)"', include.group(1))
    assert {"yaml", "nc", "args", "names", "stride"} <= set(names)
    for name in names:
        prop = inspect.getattr_static(DS2D2Model, name, None)
        assert isinstance(prop, property) and prop.fset is not None, name
    for name in ("student_model", "teacher_model", "projector"):
        assert inspect.getattr_static(DS2D2Model, name, None) is None, name
    assert "__getattr__" not in vars(DS2D2Model) and "__setattr__" not in vars(DS2D2Model)
    for name in ("student_model", "projector"):
        assert name in inspect.getsource(BaseTrainer._handle_nan_recovery) + inspect.getsource(DistillationModel)
