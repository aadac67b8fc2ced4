"""DS2D2Trainer: Ultralytics' detection/OBB trainer with DS2D2 (or a baseline) distillation wired in."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import socket
import tempfile
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from copy import deepcopy
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
from ultralytics.cfg import DEFAULT_CFG, get_save_dir
from ultralytics.data.utils import check_det_dataset
from ultralytics.engine import trainer as ultralytics_trainer
from ultralytics.models.yolo.detect import DetectionTrainer
from ultralytics.models.yolo.obb import OBBTrainer
from ultralytics.nn.tasks import DetectionModel, OBBModel, guess_model_task, yaml_model_load
from ultralytics.utils import LOCAL_RANK, LOGGER, RANK, TQDM
from ultralytics.utils.files import get_latest_run
from ultralytics.utils.patches import torch_load
from ultralytics.utils.torch_utils import (
    ModelEMA,
    parse_device,
    select_device,
    strip_optimizer,
    unwrap_model,
)

from ds2d2_yolo import __version__
from ds2d2_yolo.config import DS2D2ArgError, check_args, resolve_data, split_overrides, warn_args
from ds2d2_yolo.core.diagnostics import DiagnosticsLog, balanced_weights
from ds2d2_yolo.core.dwt import DWT2d
from ds2d2_yolo.core.schedule import KDSchedule
from ds2d2_yolo.integration.amplifier import (
    amplifier_from_state,
    amplifier_state,
    hf_features,
    load_amplifier,
    save_amplifier,
    train_amplifier,
)
from ds2d2_yolo.integration.checkpoint import atomic_save, atomic_write, signals_deferred
from ds2d2_yolo.integration.hooks import detection_head, head_features, match_channels
from ds2d2_yolo.integration.probe import head_map
from ds2d2_yolo.integration.pseudo import pseudo_dataset
from ds2d2_yolo.integration.results_plot import plot_results
from ds2d2_yolo.integration.teacher import (
    Teacher,
    check_levels,
    fuse_frozen,
    load_checkpoint_safely,
    load_teacher,
    read_teacher,
    safe_loading,
    torch_load_safely,
)
from ds2d2_yolo.integration.wrapper import DS2D2Model
from ds2d2_yolo.methods import feature_methods, term_weights

LOCK_NAME = ".ds2d2.lock"  # in the run folder while a process trains into it: "<pid> <host>"
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def resume_path(overrides: dict[str, Any]) -> str | None:
    """Return the checkpoint a resume names: `resume=path`, else `model=path.pt` with `resume=True`.

    `yolo train resume model=last.pt` continues that file. Ultralytics' trainer, given `resume=True`, would take the
    newest last.pt under the working directory instead, which may be another run.

    Args:
        overrides (dict): Trainer overrides.

    Returns:
        (str | None): The named checkpoint, or None when no resume is asked for or none is named.
    """
    resume = overrides.get("resume")
    if not resume:
        return None
    if isinstance(resume, (str, Path)) and not isinstance(resume, bool):
        return str(resume)
    model = overrides.get("model")
    return str(model) if isinstance(model, (str, Path)) and str(model).endswith(".pt") else None


def _yaml_task(model: str | Path) -> str:
    """The task of a model yaml, read from its head as Ultralytics' `Model` does (not from the file name)."""
    try:
        return guess_model_task(yaml_model_load(str(model)))
    except Exception:  # an unreadable yaml is reported where Ultralytics builds the model
        return guess_model_task(str(model))


def resolve_task(overrides: dict[str, Any]) -> str:
    """Return the task the student model implies ("detect" or "obb"), the way Ultralytics finds it.

    A checkpoint is read (restricted, see `safe_loading`) and a yaml is parsed: its head decides, whatever its name.

    Args:
        overrides (dict): Trainer overrides (model, task, resume).

    Returns:
        (str): The task.

    Raises:
        DS2D2ArgError: For tasks other than detect and obb, and for a checkpoint the restricted load refuses.
    """
    task = overrides.get("task")
    if not task:
        named = resume_path(overrides)
        model = named or overrides.get("model")
        if isinstance(model, torch.nn.Module):
            task = guess_model_task(model)
        elif model and str(model).endswith(".pt") and Path(model).is_file():
            task = guess_model_task(load_checkpoint_safely(model, "resume checkpoint" if named else "model")[0])
        elif model and str(model).endswith((".yaml", ".yml")):
            task = _yaml_task(model)
        else:
            task = guess_model_task(model) if model else "detect"
    if task not in {"detect", "obb"}:
        raise DS2D2ArgError(f"task '{task}' is not supported; DS2D2 distils detect and obb models")
    return task


class CarriedArgs:
    """A no-op callback that carries the DS2D2 keys into Ultralytics' DDP worker script.

    Ultralytics rebuilds each DDP worker's trainer from `vars(trainer.args)` and the pickled callbacks; our keys
    cannot live in `trainer.args` (Ultralytics' validators reject unknown keys), so they ride in the callbacks.
    """

    def __init__(self, args: dict[str, Any]) -> None:
        """Store a copy of the validated DS2D2 arguments."""
        self.args = dict(args)

    def __call__(self, trainer: Any) -> None:
        """Do nothing: this callback only carries data."""


class DS2D2Trainer(DetectionTrainer):
    """Ultralytics trainer with DS2D2 distillation, for detection and oriented-box (OBB) students.

    One public name serves both tasks: constructing `DS2D2Trainer` returns a `DS2D2OBBTrainer` when the model is
    an OBB model, as Ultralytics picks a trainer from the model's task. DS2D2 keys (`teacher`, `distill`,
    `lambda_*`, ...) are taken out of the overrides and validated before anything is built; everything else goes
    to Ultralytics unchanged.

    Examples:
        >>> from ds2d2_yolo import DS2D2Trainer
        >>> DS2D2Trainer(overrides=dict(model="yolov8n-obb.yaml", data="DOTAv1.yaml", teacher="teacher.pt")).train()
        >>> YOLO("yolov8n-obb.yaml").train(trainer=DS2D2Trainer, data="DOTAv1.yaml", teacher="teacher.pt")
    """

    def __new__(cls, cfg=DEFAULT_CFG, overrides: dict | None = None, _callbacks: dict | None = None):
        """Dispatch to the OBB variant when the student is an OBB model."""
        if cls is DS2D2Trainer and resolve_task(split_overrides(overrides)[0]) == "obb":
            cls = DS2D2OBBTrainer
        return super().__new__(cls)

    def __init__(self, cfg=DEFAULT_CFG, overrides: dict | None = None, _callbacks: dict | None = None):
        """Validate DS2D2 arguments and load the teacher before any model or dataloader is built.

        Args:
            cfg (str | dict): Ultralytics configuration.
            overrides (dict | None): Ultralytics and DS2D2 keys together.
            _callbacks (dict | None): Ultralytics callbacks.
        """
        overrides, mine = split_overrides(overrides)
        if "data" in overrides:
            overrides["data"] = resolve_data(overrides["data"])  # our DIOR/DOTAv1 yamls, never Ultralytics' downloads
        carried = next((cb for cbs in (_callbacks or {}).values() for cb in cbs if isinstance(cb, CarriedArgs)), None)
        if carried is not None and not mine:
            mine = dict(carried.args)  # a DDP worker: the parent's DS2D2 keys arrive through the pickled callbacks
        self.ds2d2 = check_args(mine)
        self.teacher: Teacher | None = None
        self._resume_state: dict | None = None
        self._amplifier = None
        self._lock: Path | None = None
        self._wrapper: DS2D2Model | None = None  # set while Ultralytics is shown the plain student (_plain_student)
        if overrides.get("resume"):
            # Name the file now, so Ultralytics resumes exactly it (never "the latest run"), and read it before the
            # run folder, the teacher or the data are touched: a finished or foreign file costs nothing.
            overrides["resume"] = self._resume_file(overrides)
            self._check_resumable(overrides["resume"], mine)
        elif carried is None and RANK in {-1, 0}:
            for msg in warn_args(self.ds2d2):
                LOGGER.warning(f"DS2D2: {msg}")
        if self.ds2d2["distill"] == "native":
            if not self.ds2d2["teacher"]:
                raise DS2D2ArgError("distill=native needs a teacher; pass teacher=path/to/teacher.pt")
            overrides["distill_model"] = self.ds2d2["teacher"]
        if self.ds2d2["distill"] == "pseudo" and not overrides.get("resume"):
            overrides["data"] = self._pseudo_data(overrides)
        early_task, early_teacher = None, None
        if self.ds2d2["distill"] in feature_methods() and not overrides.get("resume"):
            # Check the teacher before Ultralytics creates the run folder and checks (or downloads) the dataset, so
            # a bad teacher path costs nothing and leaves nothing behind. Only the class names wait for the data.
            early_task = "obb" if isinstance(self, OBBTrainer) else resolve_task(overrides)
            early_teacher = read_teacher(self.ds2d2["teacher"], early_task)
            if self.ds2d2["distill"] == "ds2d2" and early_task == "detect" and self.ds2d2["disw"] == "obb":
                raise DS2D2ArgError("'disw=obb' needs oriented boxes but this is a detect model; use disw=hbb or auto")
            student = _student_model(overrides.get("model"), early_task)
            if student is not None:
                check_levels(early_teacher, student, self.ds2d2["teacher"])
        try:
            super().__init__(cfg, overrides, _callbacks)
            self._setup_distillation(mine, early_teacher if early_task == self.args.task else None)
            self._check_amplifier_path()
        except BaseException:
            self._abandon()
            raise
        if self.ds2d2["distill"] in feature_methods() and self.args.compile:
            # The compiled step calls model(img) and then loss(batch, preds); our loss needs the head inputs of its
            # own forward, so it would run the student twice. Ultralytics disables compile for distill_model too.
            LOGGER.warning(f"DS2D2: 'compile' is not supported with distill={self.ds2d2['distill']}; disabling it")
            self.args.compile = False
        for cbs in self.callbacks.values():
            cbs[:] = [cb for cb in cbs if not isinstance(cb, CarriedArgs)]
        self.add_callback("on_pretrain_routine_start", CarriedArgs(self.ds2d2))
        LOGGER.info(f"DS2D2 {__version__}: distill={self.ds2d2['distill']} teacher={self.ds2d2['teacher']}")

    def _pseudo_data(self, overrides: dict[str, Any]) -> str:
        """Write (or reuse) the ground-truth + teacher pseudo-label training set for `distill=pseudo`; its yaml."""
        if not self.ds2d2["teacher"]:
            raise DS2D2ArgError("distill=pseudo needs a teacher; pass teacher=path/to/teacher.pt")
        if not overrides.get("data"):
            raise DS2D2ArgError("distill=pseudo needs data=; pass data=path/to/data.yaml")
        task = "obb" if isinstance(self, OBBTrainer) else resolve_task(overrides)
        model = read_teacher(self.ds2d2["teacher"], task)
        names = check_det_dataset(str(overrides["data"]))["names"]
        teacher = load_teacher(self.ds2d2["teacher"], task, names, model=model)
        imgsz = overrides.get("imgsz") or DEFAULT_CFG.imgsz
        out = Path(overrides.get("project") or "runs") / "pseudo"
        return str(
            pseudo_dataset(
                overrides["data"],
                self.ds2d2["teacher"],
                teacher.class_map,
                teacher.fingerprint,
                self.ds2d2["pseudo_conf"],
                int(imgsz if isinstance(imgsz, int) else max(imgsz)),
                out,
                device=overrides.get("device"),
            )
        )

    # ------------------------------------------------------------------------------------------------------------
    def _setup_distillation(self, given: dict[str, Any], teacher_model: torch.nn.Module | None) -> None:
        """Restore a resumed run's DS2D2 state, then load the teacher (checked against the data) and the amplifier.

        Args:
            given (dict): The DS2D2 keys the user passed.
            teacher_model (nn.Module | None): The teacher already read and task-checked, or None to read it here.
        """
        if self.ds2d2["distill"] not in feature_methods():
            return
        self.teacher = load_teacher(self.ds2d2["teacher"], self.args.task, self.data["names"], model=teacher_model)
        saved_fp = (self._resume_state or {}).get("teacher_fingerprint")
        if saved_fp and saved_fp != self.teacher.fingerprint:
            # A moved teacher may be passed on resume, a different one may not: the adapters were fitted to it.
            raise DS2D2ArgError(
                f"teacher '{self.ds2d2['teacher']}' is not the teacher this run was distilled from (fingerprint "
                "mismatch); resume with the original teacher= file or start a new run"
            )
        if self._resume_state and self._resume_state.get("amplifier"):
            self._amplifier = amplifier_from_state(
                self.teacher.head, self._resume_state["amplifier"], self.teacher.fingerprint, self.ds2d2, "last.pt"
            )
        elif self.ds2d2["distill"] == "ds2d2" and self.ds2d2["implicit_high"] and self.ds2d2["amplifier"]:
            self._amplifier = load_amplifier(
                self.ds2d2["amplifier"], self.teacher.head, self.teacher.fingerprint, self.ds2d2
            )

    def _discard_new_run_dir(self) -> None:
        """Remove the run folder a run that failed its checks created, if it holds only args.yaml and the lock."""
        if getattr(self, "resume", False) or RANK not in {-1, 0}:
            return  # a resumed run's folder holds the user's checkpoints
        save_dir = getattr(self, "save_dir", None) or (self._lock.parent if self._lock else None)
        if save_dir is None or not Path(save_dir).is_dir():
            return
        save_dir = Path(save_dir)
        if {p.relative_to(save_dir).as_posix() for p in save_dir.rglob("*")} <= {"args.yaml", "weights", LOCK_NAME}:
            shutil.rmtree(save_dir, ignore_errors=True)
            for d in getattr(self, "_created_dirs", []):  # the project folders made for it, deepest first, if empty
                try:
                    d.rmdir()
                except OSError:
                    break

    def _abandon(self) -> None:
        """Undo what a run that stopped before training left: its lock, and a run folder with nothing of the user's."""
        self._discard_new_run_dir()
        self._release_lock()

    # ------------------------------------------------------------------------------------------------------------
    # Resume: the named checkpoint, next to it, and only when there is something left to train
    @staticmethod
    def _resume_file(overrides: dict[str, Any]) -> str:
        """The checkpoint to resume: the one named, else (a bare `resume=True`) the newest last.pt, as Ultralytics."""
        path = resume_path(overrides)
        if path is None:
            path = get_latest_run()
            if not path:
                raise DS2D2ArgError("resume found no last.pt under the working directory; pass resume=path/to/last.pt")
            LOGGER.info(f"DS2D2: resume names no checkpoint; resuming the newest one, {path}")
        if not Path(path).is_file():
            raise DS2D2ArgError(f"resume checkpoint '{path}' not found; pass resume=runs/<task>/<name>/weights/last.pt")
        return str(path)

    def _check_resumable(self, path: str, given: dict[str, Any]) -> None:
        """Read the checkpoint to resume (restricted load), refuse a finished run, and restore its DS2D2 settings."""
        try:
            ckpt = torch_load_safely(path, "resume checkpoint")
        except DS2D2ArgError:
            raise
        except Exception as e:
            msg = _ANSI.sub("", str(e)).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise DS2D2ArgError(f"resume checkpoint '{path}' is unreadable ({msg}); pass a last.pt") from None
        if not isinstance(ckpt, dict) or not isinstance(ckpt.get("ema") or ckpt.get("model"), torch.nn.Module):
            raise DS2D2ArgError(f"'{path}' is not an Ultralytics training checkpoint; pass a last.pt to resume=")
        epochs = (ckpt.get("train_args") or {}).get("epochs")
        start = int(ckpt.get("epoch", -1)) + 1
        if start <= 0 or (epochs and start >= int(epochs)):
            raise DS2D2ArgError(
                f"'{path}' is a finished run (trained to {epochs} epochs): nothing to resume; start a new run, e.g. "
                f"model={path} to fine-tune from it"
            )
        self._restore_resume_state(given, path, ckpt)

    def _restore_resume_state(self, given: dict[str, Any], path: str, ckpt: dict[str, Any]) -> None:
        """Take the distillation settings from the checkpoint being resumed; only a moved teacher path may change."""
        state = ckpt.get("ds2d2")
        if not state:
            if self.ds2d2["distill"] in feature_methods():
                raise DS2D2ArgError(
                    f"'{path}' holds no DS2D2 state to resume; start a new run or resume a DS2D2 last.pt"
                )
            return
        cfg = dict(state["args"])
        if given.get("teacher"):
            cfg["teacher"] = given["teacher"]
        ignored = [k for k in given if k != "teacher" and str(given[k]) != str(cfg.get(k))]
        if ignored:
            LOGGER.warning(f"DS2D2 resume ignores {ignored}, using the checkpoint's distillation settings")
        self.ds2d2 = check_args(cfg)
        self._resume_state = state

    def check_resume(self, overrides):
        """Ultralytics' resume (restricted load), writing next to the checkpoint; then the device and the run lock.

        Called by Ultralytics first thing, before it creates the run folder, so everything refused here leaves nothing.
        """
        with safe_loading():
            super().check_resume(overrides)
        if self.resume and "save_dir" not in overrides:  # a DDP worker is handed its parent's save_dir
            # The checkpoint's own train_args name the folder it was first written in; a copied or moved run must
            # write beside the file that was named.
            last = Path(self.args.resume).resolve()
            self.args.save_dir = str(last.parent.parent if last.parent.name == "weights" else last.parent)
        self._check_device()
        if RANK == -1:  # DDP workers train into the folder their parent holds
            self._take_lock()

    def _check_device(self) -> None:
        """Refuse a device this machine does not have (Ultralytics raises a multi-line ValueError)."""
        try:
            select_device(parse_device(self.args.device), verbose=False)
        except ValueError as e:
            why = _ANSI.sub("", str(e)).split(".")[0] if torch.cuda.is_available() else "torch sees no CUDA GPU here"
            raise DS2D2ArgError(f"device={self.args.device} is not available ({why}); pass device=cpu") from None

    def _take_lock(self) -> None:
        """Hold the run folder with a lock file (pid and host), refusing a folder a live process trains into."""
        save_dir = get_save_dir(self.args)
        self.args.save_dir = str(save_dir)  # Ultralytics' own get_save_dir returns it unchanged
        lock = save_dir / LOCK_NAME
        self._created_dirs = [d for d in save_dir.parents if not d.exists()]
        try:
            save_dir.mkdir(parents=True, exist_ok=True)
            take_lock(lock)
        except OSError as e:
            raise DS2D2ArgError(
                f"cannot write the run folder '{save_dir}' ({e.strerror or e}); pass project= a folder you can write"
            ) from None
        self._lock = lock
        weakref.finalize(self, release_lock, lock)  # released at exit even when train() is never called
        stale = [*save_dir.glob(".*.tmp"), *(save_dir / "weights").glob(".*.tmp")]
        for f in stale:  # temporaries of a killed writer; nobody else writes here while we hold the lock
            f.unlink(missing_ok=True)
        if stale:
            LOGGER.info(f"DS2D2: removed {len(stale)} temporary file(s) an interrupted run left in {save_dir}")

    def _release_lock(self) -> None:
        """Release the run folder's lock, if this process holds it."""
        if self._lock is not None:
            release_lock(self._lock)
            self._lock = None

    def _check_amplifier_path(self) -> None:
        """Fail now, not after the amplifier has trained, when amplifier.pt cannot be written in the run folder."""
        if self.teacher is None or self._amplifier is not None or RANK not in {-1, 0}:
            return
        if not (self.ds2d2["distill"] == "ds2d2" and self.ds2d2["implicit_high"]):
            return
        path = Path(self.save_dir) / "amplifier.pt"
        try:
            if path.is_dir():
                raise IsADirectoryError(21, "it is a folder")
            os.close((probe := tempfile.mkstemp(prefix=".amplifier.pt.", suffix=".tmp", dir=path.parent))[0])
            os.unlink(probe[1])
        except OSError as e:
            raise DS2D2ArgError(
                f"cannot write the amplifier to '{path}' ({e.strerror or e}); remove it, or pass project=/name= for "
                "another run folder"
            ) from None

    def train(self):
        """Ultralytics' training; a setup failure reported in one line removes the empty run folder; always unlock."""
        try:
            super().train()
        except DS2D2ArgError:
            self._discard_new_run_dir()
            raise
        finally:
            self._release_lock()

    def get_dataset(self):
        """Ultralytics' dataset check, with its failures (missing data=, yaml or folders) reported in one line."""
        if not self.args.data:
            raise DS2D2ArgError("no data= given; pass data=path/to/data.yaml (or data=DOTAv1.yaml / data=DIOR.yaml)")
        try:
            return super().get_dataset()
        except RuntimeError as e:
            cause = e.__cause__ or e
            msg = _ANSI.sub("", str(cause)).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
            raise DS2D2ArgError(f"data={self.args.data}: {msg}") from None

    def build_dataset(self, img_path, mode: str = "train", batch=None):
        """Ultralytics' dataset, with a folder of no images, or of no valid labels, reported in one line."""
        try:
            return super().build_dataset(img_path, mode, batch)
        except (FileNotFoundError, RuntimeError, ValueError) as e:
            chain = []
            while e is not None:
                chain.append(_ANSI.sub("", str(e)))
                e = e.__cause__
            text = "\n".join(chain)
            if "OBB dataset requires equal numbers of boxes and segments" in text:
                raise DS2D2ArgError(
                    f"the {mode} labels in {img_path} are detect boxes ('cls xc yc w h') but the model is OBB; OBB "
                    "labels are 'cls x1 y1 x2 y2 x3 y3 x4 y4' (ds2d2-yolo convert writes them), or train a detect model"
                ) from None
            if "No valid images" in text:
                issues = [
                    ln.split("ignoring corrupt image/label:", 1)[1].strip()
                    for ln in text.splitlines()
                    if "ignoring corrupt" in ln
                ]
                example = f" (e.g. {issues[0]})" if issues else ""
                raise DS2D2ArgError(
                    f"no {mode} image in {img_path} has a valid label file{example}; OBB labels are "
                    "'cls x1 y1 x2 y2 x3 y3 x4 y4' and detect labels 'cls xc yc w h', all normalised to 0-1"
                ) from None
            if "No images found" in text or "does not exist" in text:
                raise DS2D2ArgError(
                    f"no {mode} images found in {img_path}; put the images there or fix '{mode}:' in the data yaml"
                ) from None
            raise

    def resume_training(self, ckpt):
        """Ultralytics' resume, then drop results.csv rows of epochs the checkpoint does not hold (a crash after a
        row was written but before its checkpoint would otherwise log that epoch twice)."""
        super().resume_training(ckpt)
        if ckpt is None or not self.resume or RANK not in {-1, 0} or not self.csv.is_file():
            return
        lines = self.csv.read_text(encoding="utf-8").splitlines(keepends=True)

        def epoch(line: str) -> float:
            try:
                return float(line.split(",", 1)[0])
            except ValueError:
                return float("inf")

        keep = lines[:1] + [ln for ln in lines[1:] if ln.strip() and epoch(ln) <= self.start_epoch]
        if len(keep) < len(lines):
            atomic_write(self.csv, lambda tmp: tmp.write_text("".join(keep), encoding="utf-8"))
            LOGGER.info(
                f"DS2D2: dropped {len(lines) - len(keep)} results.csv row(s) after epoch {self.start_epoch}, the "
                "last one the resumed checkpoint holds"
            )

    def label_loss_items(self, loss_items=None, prefix: str = "train"):
        """Ultralytics' labelled loss items, less the validation columns of the distillation terms (always 0 there)."""
        items = super().label_loss_items(loss_items, prefix)
        model = unwrap_model(self.model) if isinstance(self.model, torch.nn.Module) else None
        if prefix != "val" or not isinstance(model, DS2D2Model):
            return items
        kd = {f"val/{k}" for k in model.loss_names}
        if loss_items is None:
            return [k for k in items if k not in kd]
        return {k: v for k, v in items.items() if k not in kd}

    def plot_metrics(self):
        """results.png as Ultralytics draws it, with the distillation terms beside its loss curves."""
        model = unwrap_model(self.model) if isinstance(self.model, torch.nn.Module) else None
        terms = tuple(model.loss_names) if isinstance(model, DS2D2Model) else ()
        plot_results(self.csv, terms=terms, on_plot=self.on_plot)

    def setup_model(self):
        """Build or load the student as Ultralytics does (restricted load), then wrap it for feature distillation."""
        with safe_loading():
            ckpt = super().setup_model()
        if self.teacher is not None and not isinstance(self.model, DS2D2Model):
            amp = None if self._amplifier is None else fuse_frozen(deepcopy(self._amplifier))
            self.model = DS2D2Model(self.model, self.teacher.model, self.ds2d2, amplifier=amp)
            if self._resume_state:
                self.model.load_connector_state(self._resume_state["connectors"])
        return ckpt

    def get_model(self, cfg=None, weights=None, verbose: bool = True):
        """Build the student from `cfg` as Ultralytics does, except that a pruned `weights` model is trained as is.

        Ultralytics rebuilds a .pt from the yaml it carries and copies only the tensors whose shapes fit, which for a
        pruned model (`ds2d2-yolo prune`) would silently train the unpruned architecture from mostly random weights.
        """
        if isinstance(weights, torch.nn.Module):
            built = super().get_model(cfg=cfg, weights=None, verbose=False).state_dict()
            given = weights.state_dict()
            if any(k in built and built[k].shape != v.shape for k, v in given.items()):
                nc = getattr(weights.model[-1], "nc", None)
                if nc != self.data["nc"]:
                    raise DS2D2ArgError(
                        f"the pruned model has {nc} classes but data has {self.data['nc']}; a pruned model keeps its "
                        "head, so prune a model trained on this dataset"
                    )
                model = self.set_model_names_for_load(deepcopy(weights).float().requires_grad_(True))
                n = sum(p.numel() for p in model.parameters())
                LOGGER.info(f"DS2D2: training the pruned architecture of the given weights as is ({n:,} parameters)")
                return model
        return super().get_model(cfg=cfg, weights=weights, verbose=verbose)

    def _setup_train(self):
        """Ultralytics' setup, then the high-frequency amplifier when it is needed and not given."""
        super()._setup_train()
        model = unwrap_model(self.model)
        if isinstance(model, DS2D2Model) and model.method == "ds2d2" and self.ds2d2["implicit_high"]:
            if model.amplifier is None:
                self._amplifier = self._build_amplifier()  # unfused: its state is what amplifier.pt and last.pt keep
                model.set_amplifier(fuse_frozen(deepcopy(self._amplifier)).to(self.device))
        if isinstance(model, DS2D2Model):
            # Set up here, not in __init__: the schedule counts the train loader's batches and the resumed start epoch,
            # and every DDP worker runs this setup itself.
            self.schedule = KDSchedule.from_args(self.ds2d2, len(self.train_loader))
            self._step = self.start_epoch * len(self.train_loader)
            self._balance_ratios: dict[str, list[float]] = {}
            self.diagnostics = DiagnosticsLog(self.save_dir / "diagnostics.csv")
            for event, fn in (
                ("on_train_batch_start", DS2D2Trainer._kd_batch_start),
                ("on_train_batch_end", DS2D2Trainer._kd_batch_end),
                ("on_fit_epoch_end", DS2D2Trainer._kd_epoch_end),
            ):
                if fn not in self.callbacks[event]:
                    self.add_callback(event, fn)

    # ------------------------------------------------------------------------------------------------------------
    # Warm-up, gradient balancing and diagnostics (the schedule in `KDSchedule`, the measurements in the wrapper)
    def _kd_batch_start(self) -> None:
        """Set this step's warm-up factor; ask the wrapper to measure gradients when the schedule says so."""
        model, step = unwrap_model(self.model), self._step
        if step == self.schedule.balance_step:
            self._rebalance(model)
        model.kd_scale = self.schedule.scale(step)
        model.diagnose_next = self.schedule.measures(step)

    def _kd_batch_end(self) -> None:
        """Collect the wrapper's measurements of this step (balancing ratios, diagnostics rows)."""
        model, step = unwrap_model(self.model), self._step
        self._step += 1
        d, model.diagnostics = model.diagnostics, None
        if d is None:
            return
        if self.schedule.measures_for_balance(step):
            for k, v in d.items():
                if k.endswith("/ratio"):
                    self._balance_ratios.setdefault(k[: -len("/ratio")], []).append(v)
        if self.ds2d2["diagnose"] and step % self.ds2d2["diagnose"] == 0 and RANK in {-1, 0}:
            self.diagnostics.write({"epoch": self.epoch + 1, "step": step, "kd_scale": model.kd_scale, **d})

    def _kd_epoch_end(self) -> None:
        """With diagnostics on: the cross-head mAP of this epoch's EMA student and the plot."""
        if not self.ds2d2["diagnose"] or RANK not in {-1, 0} or self.epoch >= self.epochs:
            return  # final_eval re-runs this callback one epoch past the end, for best.pt's metrics
        ema, head = self.ema.ema, detection_head(unwrap_model(self.model).teacher)
        adapters = ema.adapters_im if len(ema.adapters_im) else ema.adapters
        m = head_map(
            self,
            lambda img: [a(f) for a, f in zip(adapters, head_features(ema.student, img))],
            head,
            self.teacher.class_map,
        )
        log = DiagnosticsLog(self.save_dir / "diagnostics_epochs.csv")
        log.write(
            {"epoch": self.epoch + 1, "step": self._step, "cross/mAP50": m["mAP50"], "cross/mAP50-95": m["mAP50-95"]}
        )
        self.diagnostics.plot(self.save_dir / "diagnostics.png", log)

    def _rebalance(self, model: DS2D2Model) -> None:
        """Set each term's weight from the gradient ratios measured before this step (`balance=grad`)."""
        keys = {k: v for k, v in term_weights().items() if k in self._balance_ratios}
        old = {t: self.ds2d2[k] for t, k in keys.items()}
        new = balanced_weights(old, self._balance_ratios, self.ds2d2["balance_ratio"])
        if RANK != -1:
            shared = [new if RANK == 0 else None]
            torch.distributed.broadcast_object_list(shared, 0)  # every rank must train with rank 0's weights
            new = shared[0]
        for t, k in keys.items():
            self.ds2d2[k] = model.cfg[k] = float(new[t])  # saved in last.pt's DS2D2 args, so resume keeps them
        ratios = {t: sum(v) / len(v) for t, v in self._balance_ratios.items()}
        if RANK in {-1, 0}:
            record = {"step": self._step, "measured_ratio": ratios, "old": old, "new": new}
            (self.save_dir / "balance.json").write_text(json.dumps(record, indent=1))
            pairs = ", ".join(f"{keys[t]} {old[t]:.4g} -> {new[t]:.4g} (ratio {ratios[t]:.3g})" for t in keys)
            LOGGER.info(f"DS2D2 balance=grad at step {self._step}: {pairs or 'no term measured'}")

    def _build_amplifier(self):
        """Train the amplifier on rank 0 (saving `amplifier.pt` beside the run) and share it with other ranks."""
        path = self.save_dir / "amplifier.pt"
        if RANK in {-1, 0}:
            epochs = self.ds2d2["amp_epochs"]
            LOGGER.info(f"DS2D2: training the high-frequency amplifier for {epochs} epochs -> {path}")
            head = train_amplifier(
                self.teacher.model,
                self.teacher.head,
                lambda: (self.preprocess_batch(b) for b in self.train_loader),
                self.args,
                epochs,
                self.ds2d2["wavelet"],
                self.ds2d2["wave_mode"],
                class_map=self.teacher.class_map,
                progress=lambda it, desc: TQDM(it, desc=desc, total=len(self.train_loader)),
            )
            self.amplifier_report = self._amplifier_report(head)
            save_amplifier(head, path, self.teacher.fingerprint, self.ds2d2, epochs)
            r = self.amplifier_report
            LOGGER.info(
                f"DS2D2 amplifier: loss {r['train_loss']:.4g} with batch statistics, {r['eval_loss']:.4g} frozen; "
                f"mAP50 {r['mAP50']:.3f} on HF(teacher) features (teacher head on its own features: "
                f"{r['teacher_mAP50']:.3f}); saved to {path}"
            )
        if RANK != -1:
            torch.distributed.barrier()
            if RANK != 0:
                head = load_amplifier(path, self.teacher.head, self.teacher.fingerprint, self.ds2d2)
        return head

    def _amplifier_report(self, head: torch.nn.Module) -> dict[str, float]:
        """How well the trained amplifier fits: its train/frozen losses and its mAP on HF(teacher) validation maps."""
        teacher, dwt = self.teacher.model, DWT2d(self.ds2d2["wavelet"], self.ds2d2["wave_mode"]).to(self.device)
        ch = int(teacher.yaml.get("channels", 3))
        amp = deepcopy(head).to(self.device)
        cmap = self.teacher.class_map
        hf = head_map(self, lambda img: hf_features(head_features(teacher, match_channels(img, ch)), dwt), amp, cmap)
        own = deepcopy(self.teacher.head).to(self.device)
        raw = head_map(self, lambda img: head_features(teacher, match_channels(img, ch)), own, cmap)
        report = {
            "train_loss": float(getattr(head, "train_loss", float("nan"))),
            "eval_loss": float(getattr(head, "eval_loss", float("nan"))),
            "mAP50": hf["mAP50"],
            "mAP50-95": hf["mAP50-95"],
            "teacher_mAP50": raw["mAP50"],
            "teacher_mAP50-95": raw["mAP50-95"],
        }
        (self.save_dir / "amplifier.json").write_text(json.dumps(report, indent=1))
        return report

    # ------------------------------------------------------------------------------------------------------------
    def _ds2d2_state(self, ema: DS2D2Model) -> dict[str, Any]:
        """Everything needed to continue distillation, as plain Python and tensors (no package classes)."""
        amp = self._amplifier
        return {
            "version": __version__,
            "args": dict(self.ds2d2),
            "teacher_fingerprint": self.teacher.fingerprint,
            "connectors": {k: v.detach().cpu().clone() for k, v in ema.connector_state().items()},
            "amplifier": None
            if amp is None
            # A loaded amplifier keeps the epochs it was trained for, whatever this run's amp_epochs says.
            else amplifier_state(
                amp, self.teacher.fingerprint, self.ds2d2, getattr(amp, "trained_epochs", self.ds2d2["amp_epochs"])
            ),
        }

    @contextmanager
    def _plain_student(self) -> Iterator[DS2D2Model | None]:
        """Show Ultralytics the student where it reads `self.model` and `self.ema.ema`, so its own save and NaN
        recovery handle a plain DetectionModel/OBBModel; yields the wrapper (None when there is none)."""
        wrapper = unwrap_model(self.model)
        if not isinstance(wrapper, DS2D2Model):
            yield None
            return
        model, ema = self.model, self.ema.ema if self.ema else None
        self._wrapper, self.model = wrapper, wrapper.student
        if ema is not None:
            self.ema.ema = ema.student
        try:
            yield wrapper
        finally:
            self.model, self._wrapper = model, None
            if ema is not None and self.ema.ema is ema.student:  # NaN recovery builds a new EMA of the wrapper
                self.ema.ema = ema

    def save_model(self):
        """Ultralytics' own save_model on the student, written atomically, with the DS2D2 state added.

        Ultralytics writes into a hidden staging folder beside the weights; each file is then read back, given its
        "ds2d2" key and renamed into place (`atomic_save`), so an interrupted save leaves the previous file, never a
        half one. The student (EMA) sits under "ema" exactly as Ultralytics saves it, so every file loads, validates
        and exports where this package is not installed. last.pt (and `save_period` files) carry the state resume
        needs as plain tensors and dicts; best.pt, which nothing resumes from, carries only the DS2D2 arguments.
        """
        ema = self.ema.ema
        state = self._ds2d2_state(ema) if isinstance(ema, DS2D2Model) else self._ds2d2_record()
        real = self.wdir, self.last, self.best
        stage = self.wdir / ".saving"
        with signals_deferred():
            shutil.rmtree(stage, ignore_errors=True)
            self.wdir, self.last, self.best = stage, stage / real[1].name, stage / real[2].name
            try:
                with self._plain_student():
                    super().save_model()
            finally:
                self.wdir, self.last, self.best = real
            ckpt = torch_load(stage / real[1].name, map_location="cpu")  # written a moment ago by this process
            atomic_save({**ckpt, "ds2d2": state}, self.last)
            if (stage / real[2].name).exists():
                atomic_save({**ckpt, "ds2d2": self._ds2d2_record()}, self.best)
            for f in stage.glob("epoch*.pt"):
                atomic_save({**ckpt, "ds2d2": state}, self.wdir / f.name)
            shutil.rmtree(stage, ignore_errors=True)
        return True

    def _ds2d2_record(self) -> dict[str, Any]:
        """The DS2D2 arguments a run was made with, without the state only resume needs (adapters, amplifier)."""
        return {"version": __version__, "args": dict(self.ds2d2)}

    def _load_checkpoint_state(self, ckpt):
        """Load optimizer/scaler/EMA state; the EMA holds a plain student plus the saved connectors."""
        model = self._wrapper or unwrap_model(self.model)
        if not isinstance(model, DS2D2Model):
            return super()._load_checkpoint_state(ckpt)
        super()._load_checkpoint_state({**ckpt, "ema": None})
        if self._wrapper is not None:
            model.load_connector_state(ckpt["ds2d2"]["connectors"])  # NaN recovery: the live connectors too
        if self.ema and ckpt.get("ema"):
            self.ema = ModelEMA(model)
            self.ema.ema.student.load_state_dict(ckpt["ema"].float().state_dict())
            self.ema.ema.load_connector_state(ckpt["ds2d2"]["connectors"])
            self.ema.updates = ckpt["updates"]

    def _handle_nan_recovery(self, epoch):
        """Ultralytics' NaN recovery on the student; the connectors come back from last.pt's DS2D2 state."""
        with self._plain_student():
            return super()._handle_nan_recovery(epoch)

    def final_eval(self):
        """Ultralytics' final_eval, with last.pt/best.pt stripped atomically (`strip_atomic`)."""
        with atomic_strip():
            super().final_eval()


class _NotStripped(Exception):
    """strip_optimizer could not read the file (it logs why): nothing is written."""


class _DropStripLog(logging.Filter):
    """Drop Ultralytics' "Optimizer stripped from ... saved as <temporary file>" line; _strip_atomic logs its own."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Optimizer stripped from")


def _strip_atomic(path: Path, updates: dict | None = None) -> dict:
    """`strip_optimizer` into a temporary file renamed over `path` (`atomic_write`); logs the final file's name."""

    def write(tmp: Path) -> dict:
        quiet = _DropStripLog()
        LOGGER.addFilter(quiet)
        try:
            ckpt = strip_optimizer(path, s=str(tmp), updates=updates)
        finally:
            LOGGER.removeFilter(quiet)
        if not ckpt:
            raise _NotStripped
        return ckpt

    try:
        ckpt = atomic_write(path, write)
    except _NotStripped:
        return {}
    LOGGER.info(f"Optimizer stripped from {path}, {path.stat().st_size / 1e6:.1f}MB")
    return ckpt


@contextmanager
def atomic_strip() -> Iterator[None]:
    """Within the block, Ultralytics' trainer strips checkpoints in place through `_strip_atomic`.

    Its `final_eval` calls `strip_optimizer`, which rewrites last.pt/best.pt in place: an interruption there would
    leave a half file. Swapping the one name its module looks up keeps the rest of `final_eval` Ultralytics' own.
    """
    original = ultralytics_trainer.strip_optimizer

    def strip(f: str | Path = "best.pt", s: str = "", updates: dict | None = None) -> dict:
        return original(f, s, updates) if s else _strip_atomic(Path(f), updates)

    ultralytics_trainer.strip_optimizer = strip
    try:
        yield
    finally:
        ultralytics_trainer.strip_optimizer = original


def _student_model(model: Any, task: str) -> torch.nn.Module | None:
    """The student as far as its head levels go: a built yaml or a (restricted) loaded .pt; None if unknown yet."""
    if isinstance(model, torch.nn.Module):
        return model
    if not isinstance(model, (str, Path)):
        return None
    m = str(model)
    try:
        if m.endswith(".pt") and Path(m).is_file():
            return load_checkpoint_safely(m, "model")[0]
        if m.endswith((".yaml", ".yml")):
            return (OBBModel if task == "obb" else DetectionModel)(m, verbose=False)
    except DS2D2ArgError:
        raise
    except Exception:  # Ultralytics reports a bad model file itself, in its own words
        return None
    return None


def take_lock(lock: Path) -> None:
    """Create `lock` holding "<pid> <host>", taking over one whose process is gone or is this one.

    Raises:
        DS2D2ArgError: When another live process holds it.
        OSError: When the folder cannot be written.
    """
    me = f"{os.getpid()} {socket.gethostname()}\n"
    for _ in range(3):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            owner = _lock_owner(lock)
            if owner is not None and not _stale(*owner):
                pid, host = owner
                raise DS2D2ArgError(
                    f"run folder '{lock.parent}' is in use by process {pid} on {host}; wait for it to finish, pass "
                    f"another name= (or exist_ok=False), or delete {lock} if that run is gone"
                ) from None
            lock.unlink(missing_ok=True)  # stale: its process is gone
            continue
        with os.fdopen(fd, "w") as f:
            f.write(me)
        return
    raise DS2D2ArgError(f"run folder '{lock.parent}' is being taken by another process; retry")


def _lock_owner(lock: Path) -> tuple[int, str] | None:
    """(pid, host) of a lock file, or None when it is unreadable (a lock older than a few seconds is then stale)."""
    try:
        pid, host = lock.read_text().split()[:2]
        return int(pid), host
    except (OSError, ValueError):
        try:
            young = (datetime.now().timestamp() - lock.stat().st_mtime) < 5  # its writer may still be writing
        except OSError:
            young = False
        return (-1, socket.gethostname()) if young else None


def _stale(pid: int, host: str) -> bool:
    """Whether a lock's process is gone (or is this process); a lock of another host is never stale."""
    if host != socket.gethostname():
        return False
    if pid == os.getpid():
        return True  # this process again (a notebook re-running a cell): its earlier trainer is done with the folder
    if pid < 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False  # alive, another user's
    try:  # a killed process its parent has not reaped yet is a zombie: gone for our purpose
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return False


def release_lock(lock: Path) -> None:
    """Remove `lock` if this process holds it."""
    try:
        if int(lock.read_text().split()[0]) == os.getpid():
            lock.unlink(missing_ok=True)
    except (OSError, ValueError, IndexError):
        pass


class DS2D2OBBTrainer(DS2D2Trainer, OBBTrainer):
    """DS2D2Trainer for oriented-box students (returned by `DS2D2Trainer(...)` when the model is OBB)."""


def build_amplifier_file(overrides: dict[str, Any]) -> Path:
    """Train the high-frequency amplifier for `teacher` on `data` and write `amplifier.pt` in a new run folder.

    Args:
        overrides (dict): `teacher`, `data` and any Ultralytics/DS2D2 keys (batch, imgsz, amp_epochs, ...).

    Returns:
        (Path): The amplifier file.
    """
    overrides = {**overrides, "distill": "ds2d2", "amplifier": None, "implicit_high": True}
    overrides.setdefault("model", overrides.get("teacher"))
    trainer = DS2D2Trainer(overrides=overrides)
    trainer.model = trainer.teacher.model.to(trainer.device)  # gives the dataloader its stride
    trainer.train_loader = trainer.get_dataloader(trainer.data["train"], trainer.batch_size, rank=LOCAL_RANK)
    # The validation loader and validator score the amplifier on HF(teacher) maps of the validation images.
    trainer.test_loader = trainer.get_dataloader(trainer.data["val"], trainer.batch_size * 2, rank=-1, mode="val")
    trainer.validator = trainer.get_validator()
    try:
        trainer._build_amplifier()
    finally:
        trainer._release_lock()
    return trainer.save_dir / "amplifier.pt"
