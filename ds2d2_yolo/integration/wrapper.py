"""The distillation wrapper: student + adapters trained together, frozen teacher and amplifier kept aside."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from ultralytics.utils import LOGGER

from ds2d2_yolo.core.connectors import Adapter
from ds2d2_yolo.core.diagnostics import feature_distance, grad_stats
from ds2d2_yolo.core.disw import resolve_disw_mode
from ds2d2_yolo.core.dwt import DWT2d
from ds2d2_yolo.integration.hooks import capture_head_inputs, detection_head, head_features, match_channels
from ds2d2_yolo.integration.kd import amplifier_kd
from ds2d2_yolo.methods import REGISTRY


class DS2D2Model(nn.Module):
    """Training-time wrapper for feature distillation into an Ultralytics detection or OBB student.

    Trainable: the student and the per-level adapters (and the MGD generators). Frozen and hidden from
    `parameters()`, `state_dict()`, EMA copies and pickles: the teacher and the high-frequency amplifier, so they
    never reach the optimizer, the EMA or a checkpoint. `loss()` returns the student's YOLO loss with the
    distillation total appended, and one logged item per term.

    Attributes:
        student (nn.Module): The student being trained.
        adapters (nn.ModuleList): 1x1 conv per level, student to teacher channels.
        generators (nn.ModuleList): MGD generation blocks (empty unless method is "mgd").
        method (str): A feature method of `ds2d2_yolo.methods.REGISTRY` ("ds2d2", "cwd", "mgd").
        impl (FeatureMethod): That method, which computes the terms.
        cfg (dict): Validated DS2D2 arguments.
    """

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module,
        cfg: dict[str, Any],
        amplifier: nn.Module | None = None,
    ) -> None:
        """Build adapters from the channel widths of both heads and check that the levels line up.

        Args:
            student (nn.Module): Ultralytics DetectionModel/OBBModel to train.
            teacher (nn.Module): Frozen teacher of the same task (converted to channels-last in place).
            cfg (dict): Validated DS2D2 arguments (`ds2d2_yolo.config.check_args`).
            amplifier (nn.Module | None): Trained high-frequency amplifier head (required when implicit_high is on;
                converted to channels-last in place).
        """
        super().__init__()
        self.student = student
        self.method = cfg["distill"]
        self.cfg = dict(cfg)
        self.teacher_channels = int(teacher.yaml.get("channels", 3))
        for m in (teacher, amplifier):
            if m is not None:
                # The frozen modules only infer and pass input gradients: channels-last convolutions do the same
                # maths (to float rounding) and took 8 % off a DS2D2 step on CPU (the step-cost benchmark's `@nchw`
                # rows).
                m.to(memory_format=torch.channels_last)
        self._hide("teacher", teacher)
        self._hide("amplifier", amplifier)
        self.skipped: dict[str, int] = {}

        s_head, t_head = detection_head(student), detection_head(teacher)
        if s_head.nl != t_head.nl or not torch.equal(s_head.stride.cpu(), t_head.stride.cpu()):
            raise ValueError(
                f"teacher head reads strides {t_head.stride.tolist()} but the student's reads "
                f"{s_head.stride.tolist()}; pick a teacher whose head uses the same levels (P3/P4/P5)"
            )
        s_ch, t_ch = self._level_channels(student), self._level_channels(teacher)
        self.adapters = nn.ModuleList(Adapter(cs, ct, cfg["projector"]) for cs, ct in zip(s_ch, t_ch))
        self.impl = REGISTRY[self.method]
        extra = self.impl.connectors(s_ch, t_ch, cfg)
        unknown = set(extra) - {"generators", "adapters_im"}
        if unknown:
            raise TypeError(f"method '{self.method}' returned connectors the wrapper does not know: {sorted(unknown)}")
        self.generators = extra.get("generators", nn.ModuleList())  # MGD's generation blocks
        self.adapters_im = extra.get("adapters_im", nn.ModuleList())  # DS2D2's implicit-stream adapters (per_stream)
        self.kd_scale = 1.0  # warm-up factor on the distillation total, set by the trainer each step
        self.diagnose_next = False  # the trainer asks for gradient diagnostics on the next training step
        self.diagnostics: dict[str, float] | None = None
        self.dwt = DWT2d(cfg["wavelet"], cfg["wave_mode"])
        task = "obb" if s_head.__class__.__name__.startswith("OBB") else "detect"
        self.disw_mode = resolve_disw_mode(cfg["disw"], task)

    # ----------------------------------------------------------------------------------------------------------
    # The attributes Ultralytics reads or sets on `trainer.model` and on its EMA copy; they all belong to the student.
    # Each is spelled out, so an attribute Ultralytics starts to read in a new version fails loudly instead of being
    # silently answered by the student, and the attribute names of Ultralytics' own DistillationModel (its student,
    # teacher and projector) never appear here, so its distillation branches do not fire on this wrapper.
    def _hide(self, name: str, value: nn.Module | None) -> None:
        """Keep a frozen module out of `_modules`, so parameters(), state_dict(), EMA and pickles never see it."""
        object.__setattr__(self, name, value)

    def set_amplifier(self, amplifier: nn.Module) -> None:
        """Use a (fused, frozen) high-frequency amplifier trained after the wrapper was built."""
        self._hide("amplifier", amplifier.to(memory_format=torch.channels_last).eval())

    @property
    def teacher_head(self) -> nn.Module:
        """The frozen teacher's detection head, which the implicit stream runs on the adapted student features."""
        return detection_head(self.teacher)

    # The methods reach Ultralytics' heads through the wrapper, so the registry imports nothing of Ultralytics.
    head_kd = staticmethod(amplifier_kd)

    @property
    def model(self) -> nn.Sequential:
        """The student's layers (Ultralytics reads `model.model[-1]` for the head)."""
        return self.student.model

    @property
    def names(self) -> dict[int, str]:
        """Class names."""
        return self.student.names

    @names.setter
    def names(self, value: dict[int, str]) -> None:
        self.student.names = value

    @property
    def nc(self) -> int:
        """Number of classes."""
        return self.student.nc

    @nc.setter
    def nc(self, value: int) -> None:
        self.student.nc = value

    @property
    def args(self) -> Any:
        """Training arguments (hyperparameters for the student's loss)."""
        return self.student.args

    @args.setter
    def args(self, value: Any) -> None:
        self.student.args = value

    @property
    def stride(self) -> torch.Tensor:
        """Strides of the detection levels."""
        return self.student.stride

    @stride.setter
    def stride(self, value: torch.Tensor) -> None:
        self.student.stride = value

    @property
    def yaml(self) -> dict:
        """The student's model configuration."""
        return self.student.yaml

    @yaml.setter
    def yaml(self, value: dict) -> None:
        self.student.yaml = value

    @property
    def class_weights(self) -> torch.Tensor | None:
        """Per-class loss weights, set by the trainer."""
        return getattr(self.student, "class_weights", None)

    @class_weights.setter
    def class_weights(self, value: torch.Tensor | None) -> None:
        self.student.class_weights = value

    @property
    def criterion(self) -> Any:
        """The student's detection loss."""
        return self.student.criterion

    @criterion.setter
    def criterion(self, value: Any) -> None:
        self.student.criterion = value

    @property
    def end2end(self) -> bool:
        """Whether the student's head decodes without NMS (YOLO26); the validator sets it."""
        return getattr(self.student, "end2end", False)

    @end2end.setter
    def end2end(self, value: bool) -> None:
        if hasattr(self.student, "end2end"):
            self.student.end2end = value

    @property
    def task(self) -> str:
        """The student's task, "detect" or "obb"."""
        return getattr(self.student, "task", "detect")

    def set_head_attr(self, **kwargs: Any) -> None:
        """Set head attributes (max_det, ...) on the student."""
        self.student.set_head_attr(**kwargs)

    def info(self, *args: Any, **kwargs: Any) -> Any:
        """The student's model summary."""
        return self.student.info(*args, **kwargs)

    def __getstate__(self) -> dict:
        """Drop the teacher and the amplifier from pickles and deepcopies (EMA, checkpoints, DDP files)."""
        state = self.__dict__.copy()
        state["teacher"] = None
        state["amplifier"] = None
        return state

    def _apply(self, fn, recurse: bool = True):
        """Move the hidden teacher and amplifier with the wrapper (`.to(device)`)."""
        super()._apply(fn, recurse)
        for name in ("teacher", "amplifier"):
            m = self.__dict__.get(name)
            if m is not None:
                m._apply(fn)
        return self

    def train(self, mode: bool = True):
        """Set train mode on the student and adapters; the teacher and amplifier always stay in eval mode."""
        super().train(mode)
        for name in ("teacher", "amplifier"):
            m = self.__dict__.get(name)
            if m is not None:
                m.eval()
        return self

    @staticmethod
    def _level_channels(model: nn.Module) -> list[int]:
        """Channels of each head input, found with one tiny forward pass (robust to any head layout)."""
        ch = int(model.yaml.get("channels", 3))
        s = int(max(detection_head(model).stride.max().item(), 32)) * 2
        p = next(model.parameters())
        was_training = model.training
        model.eval()
        with torch.no_grad():
            feats = head_features(model, torch.zeros(1, ch, s, s, device=p.device, dtype=p.dtype))
        model.train(was_training)
        return [f.shape[1] for f in feats]

    # ----------------------------------------------------------------------------------------------------------
    def forward(self, x, *args, **kwargs):
        """Return the loss for a batch dict, otherwise the student's predictions."""
        if isinstance(x, dict):
            return self.loss(x, *args, **kwargs)
        return self.student(x, *args, **kwargs)

    def fuse(self, *args, **kwargs):
        """Fuse and return the student: the wrapper is training-only."""
        return self.student.fuse(*args, **kwargs)

    def init_criterion(self):
        """Build the student's detection criterion."""
        return self.student.init_criterion()

    @property
    def loss_names(self) -> tuple[str, ...]:
        """Names of the distillation terms logged for this method."""
        return self.impl.loss_names

    def loss(self, batch: dict, preds: Any = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Student YOLO loss plus the distillation terms.

        Args:
            batch (dict): Ultralytics batch (img, cls, bboxes, batch_idx).
            preds (Any): Student predictions, used in validation only.

        Returns:
            (tuple): Loss vector with the distillation total appended (scaled by batch size like Ultralytics' own
                terms) and a dict of detached items, one per term.
        """
        device = batch["img"].device
        if not self.training:
            if preds is None:
                preds = self.student(batch["img"])
            loss, items = self.student.loss(batch, preds)
            zero = torch.zeros(1, device=device)
            return torch.cat([loss, zero]), {**items, **{k: zero[0] for k in self.loss_names}}

        store: dict = {}
        with capture_head_inputs(self.student, store, "s"):
            preds = self.student(batch["img"])
        loss, items = self.student.loss(batch, preds)
        with torch.no_grad():
            t_feats = head_features(self.teacher, match_channels(batch["img"], self.teacher_channels))

        with torch.autocast(device_type=device.type, enabled=False):  # spectral maths and KD in fp32
            terms = self.distill_terms(store["s"], t_feats, batch)
        total = torch.zeros(1, device=device)
        for k, v in terms.items():
            if not torch.isfinite(v):
                self._skip(k, v)
                v = terms[k] = torch.zeros((), device=device)
            total = total + v
            items[k] = v.detach().reshape(())  # at the term's weight, before the warm-up factor
        bs = batch["img"].shape[0]
        if self.diagnose_next:
            self.diagnose_next = False
            self.diagnostics = self.measure(loss.sum(), {k: v * bs for k, v in terms.items()}, store["s"], t_feats)
        return torch.cat([loss, total * bs * self.kd_scale]), items

    def shared_parameters(self) -> list[nn.Parameter]:
        """The student's trainable parameters before its head: the ones both the detection loss and KD reach."""
        return [p for p in self.student.model[:-1].parameters() if p.requires_grad]

    def measure(
        self, det: torch.Tensor, terms: dict[str, torch.Tensor], s_feats: list[torch.Tensor], t_feats: list
    ) -> dict[str, float]:
        """Gradient ratios and cosines of every term against the detection loss, and per-level feature distances.

        Args:
            det (torch.Tensor): Detection loss as back-propagated.
            terms (dict[str, torch.Tensor]): Distillation terms as added to the loss (before the warm-up factor).
            s_feats (list[torch.Tensor]): Student head inputs.
            t_feats (list): Teacher head inputs.

        Returns:
            (dict[str, float]): Flat columns: `<term>/ratio`, `<term>/cos`, `dist/P<i>` (explicit adapters) and,
                with per-stream adapters, `dist_im/P<i>`.
        """
        out: dict[str, float] = {}
        for k, v in grad_stats(det, terms, self.shared_parameters()).items():
            out[f"{k}/ratio"], out[f"{k}/cos"] = v["ratio"], v["cos"]
        levels = [f"P{int(math.log2(s))}" for s in detection_head(self.student).stride.tolist()]
        with torch.no_grad():
            t = [f.float() for f in t_feats]
            for name, adapters in (("dist", self.adapters), ("dist_im", self.adapters_im)):
                if len(adapters):
                    d = feature_distance([a(f.float()) for a, f in zip(adapters, s_feats)], t)
                    out.update({f"{name}/{lv}": x for lv, x in zip(levels, d)})
        return out

    def _skip(self, name: str, value: torch.Tensor) -> None:
        n = self.skipped[name] = self.skipped.get(name, 0) + 1
        if n <= 3 or n % 100 == 0:
            LOGGER.warning(f"DS2D2: non-finite '{name}' ({value.item()}) skipped for this step ({n} so far)")

    def distill_terms(
        self, s_feats: list[torch.Tensor], t_feats: list[torch.Tensor], batch: dict
    ) -> dict[str, torch.Tensor]:
        """Weighted distillation terms for one batch, computed in fp32.

        Args:
            s_feats (list[torch.Tensor]): Student head inputs, one per level (with gradient).
            t_feats (list[torch.Tensor]): Teacher head inputs (no gradient).
            batch (dict): The batch (image size and ground-truth boxes for DISW).

        Returns:
            (dict[str, torch.Tensor]): Term name -> weighted scalar.
        """
        s_ad = [a(f.float()) for a, f in zip(self.adapters, s_feats)]
        return self.impl.terms(self, s_feats, s_ad, [f.float() for f in t_feats], batch)

    # ----------------------------------------------------------------------------------------------------------
    def connector_state(self) -> dict[str, torch.Tensor]:
        """State of the trainable non-student parts (adapters, generators), as plain tensors."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("student.")}

    def load_connector_state(self, state: dict[str, torch.Tensor]) -> None:
        """Load adapters and generators saved by `connector_state`, strictly."""
        missing = set(self.connector_state()) ^ set(state)
        if missing:
            raise KeyError(f"connector state does not match this model: {sorted(missing)[:5]}")
        self.load_state_dict(state, strict=False)
