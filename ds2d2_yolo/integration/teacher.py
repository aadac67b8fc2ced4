"""Loading, checking and fingerprinting the frozen teacher."""

from __future__ import annotations

import copy
import hashlib
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from ultralytics.nn import tasks
from ultralytics.nn.modules import Conv, Conv2, DWConv, RepConv
from ultralytics.nn.modules.block import RepVGGDW
from ultralytics.nn.modules.head import OBB, Detect
from ultralytics.nn.tasks import guess_model_task, load_checkpoint, torch_safe_load
from ultralytics.utils import LOGGER
from ultralytics.utils.torch_utils import fuse_conv_and_bn

from ds2d2_yolo.config import DS2D2ArgError
from ds2d2_yolo.integration.hooks import detection_head, freeze

# Set to 1 to load teacher, resume, student and visualize checkpoints with a full (unrestricted) unpickle: only for
# files you trust, since unpickling can run any code the file names.
UNSAFE_LOAD_ENV = "DS2D2_UNSAFE_LOAD"


@dataclass
class Teacher:
    """A loaded, frozen teacher and what distillation needs to know about it.

    Attributes:
        model (nn.Module): The teacher detection model, eval mode, no gradients.
        path (str): Where it was loaded from.
        class_map (torch.Tensor | None): For each student class, the teacher's class index; None when identical.
        fingerprint (str): sha256 of the teacher's weights as saved, used to match cached amplifiers.
        head (nn.Module): An unfused copy of the teacher's head (BatchNorm intact), the template amplifiers start from.
    """

    model: nn.Module
    path: str
    class_map: torch.Tensor | None
    fingerprint: str
    head: nn.Module


def unsafe_load_allowed() -> bool:
    """Return True when the user opted out of restricted loading with `DS2D2_UNSAFE_LOAD=1`."""
    return os.environ.get(UNSAFE_LOAD_ENV, "").strip().lower() in {"1", "true", "yes", "on"}


@contextmanager
def safe_loading() -> Iterator[None]:
    """Load every Ultralytics checkpoint in this block the way `ULTRALYTICS_SAFE_LOAD=1` does, unless opted out.

    Ultralytics' default unpickles with `weights_only=False`, which runs whatever code a file names. Its restricted
    mode (`torch.load(weights_only=True)` with an allow-list of Ultralytics and torch classes) refuses such a file
    before anything in it runs. Ultralytics reads the flag at call time from `ultralytics.nn.tasks.SAFE_LOAD`, so it is
    switched on for this block only, and the user's other Ultralytics calls keep their own setting.
    """
    if unsafe_load_allowed() or not tasks._SafeLoad.SUPPORTED:  # torch < 2.6 has no restricted load
        yield
        return
    saved = tasks.SAFE_LOAD
    tasks.SAFE_LOAD = True
    try:
        yield
    finally:
        tasks.SAFE_LOAD = saved


def refused_global(e: BaseException) -> str | None:
    """The global a restricted load refused (e.g. 'builtins.exec'), found in the exception chain, or None."""
    while e is not None:
        m = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
        if m:
            return m.group(1)
        e = e.__cause__ or e.__context__
    return None


def unsafe_file_error(what: str, path: str | Path, name: str) -> DS2D2ArgError:
    """The one-line error for a file that a restricted load refused because it names code to run."""
    return DS2D2ArgError(
        f"{what} '{path}' was not loaded: it references '{name}', which is outside Ultralytics' checkpoint format and "
        f"could run code; use a checkpoint saved by Ultralytics, or set {UNSAFE_LOAD_ENV}=1 if you trust this file"
    )


def load_checkpoint_safely(path: str | Path, what: str) -> tuple[nn.Module, dict[str, Any]]:
    """Ultralytics' `load_checkpoint` (model fp32 on CPU, checkpoint dict) inside `safe_loading`.

    Args:
        path (str | Path): A local `.pt` file.
        what (str): What the file is for ("teacher", "resume", ...), for the error message.

    Returns:
        (tuple[nn.Module, dict]): The model and the checkpoint.

    Raises:
        DS2D2ArgError: When the restricted load refuses the file; other load errors propagate unchanged.
    """
    try:
        with safe_loading():
            return load_checkpoint(str(path), device="cpu")
    except Exception as e:
        name = refused_global(e)
        if name:
            raise unsafe_file_error(what, path, name) from None
        raise


def torch_load_safely(path: str | Path, what: str) -> Any:
    """Load a `.pt` as a plain object (no model rebuilding) inside `safe_loading`, e.g. a checkpoint to inspect.

    Raises:
        DS2D2ArgError: When the restricted load refuses the file; other load errors propagate unchanged.
    """
    try:
        with safe_loading():
            return torch_safe_load(str(path))[0]
    except Exception as e:
        name = refused_global(e)
        if name:
            raise unsafe_file_error(what, path, name) from None
        raise


def looks_untrained(model: nn.Module) -> bool:
    """True when every BatchNorm still holds its initial running statistics (mean 0, variance 1): it never saw data."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None]
    return bool(bns) and all(bool((m.running_mean == 0).all()) and bool((m.running_var == 1).all()) for m in bns)


def check_levels(teacher: nn.Module, student: nn.Module, path: str | Path) -> None:
    """Refuse a teacher whose head reads other pyramid levels than the student's (e.g. a P2 or P6 model).

    Raises:
        DS2D2ArgError: With both sets of strides and the fix.
    """
    t_head, s_head = detection_head(teacher), detection_head(student)
    t, s = t_head.stride.tolist(), s_head.stride.tolist()
    if t_head.nl != s_head.nl or [int(x) for x in t] != [int(x) for x in s]:
        levels = lambda strides: "/".join(f"P{int(x).bit_length() - 1}" for x in strides)  # noqa: E731
        raise DS2D2ArgError(
            f"teacher '{Path(path).name}' reads levels {levels(t)} (strides {[int(x) for x in t]}) but the student "
            f"reads {levels(s)} (strides {[int(x) for x in s]}); use a teacher and student with the same head levels"
        )


def fuse_frozen(module: nn.Module) -> nn.Module:
    """Fold BatchNorm into the preceding convolutions of a frozen module, in place.

    The teacher and the amplifier never train, so their BatchNorm layers are fixed affine maps: folding them removes
    a sixth of the distillation step's time on CPU. Unlike `model.fuse()`, this keeps both branches of end-to-end
    heads, because distillation reads the one-to-many branch.

    Args:
        module (nn.Module): A frozen model or head in eval mode.

    Returns:
        (nn.Module): The same module, fused.
    """
    for m in module.modules():
        if isinstance(m, (Conv, Conv2, DWConv)) and hasattr(m, "bn"):
            if isinstance(m, Conv2):
                m.fuse_convs()
            m.conv = fuse_conv_and_bn(m.conv, m.bn)
            delattr(m, "bn")
            m.forward = m.forward_fuse
        elif isinstance(m, RepConv):
            m.fuse_convs()
            m.forward = m.forward_fuse
        elif isinstance(m, RepVGGDW):
            m.fuse()
            m.forward = m.forward_fuse
    return freeze(module)


def fingerprint(model: nn.Module) -> str:
    """Return a sha256 over a model's state_dict (names, shapes and fp32 values), stable across devices."""
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        if isinstance(v, torch.Tensor):
            t = v.detach().cpu()
            h.update(str(tuple(t.shape)).encode())
            h.update((t.float() if t.is_floating_point() else t).contiguous().numpy().tobytes())
    return h.hexdigest()


def _norm(name: str) -> str:
    return re.sub(r"[\s_\-]+", "", str(name)).lower()


def class_mapping(teacher_names: dict | list, data_names: dict | list) -> torch.Tensor | None:
    """Map the data's classes onto the teacher's.

    Args:
        teacher_names (dict | list): Teacher class names by index.
        data_names (dict | list): Dataset (student) class names by index.

    Returns:
        (torch.Tensor | None): `map[i]` = teacher index of student class i, or None when the lists are identical.

    Raises:
        DS2D2ArgError: When the counts or the sets of names differ.
    """
    t = list(teacher_names.values()) if isinstance(teacher_names, dict) else list(teacher_names)
    d = list(data_names.values()) if isinstance(data_names, dict) else list(data_names)
    if [_norm(x) for x in t] == [_norm(x) for x in d]:
        return None
    if len(t) != len(d):
        raise DS2D2ArgError(
            f"teacher has {len(t)} classes but the data has {len(d)}; use a teacher trained on the same classes "
            f"(teacher: {t[:5]}{'...' if len(t) > 5 else ''}, data: {d[:5]}{'...' if len(d) > 5 else ''})"
        )
    tn = {_norm(x): i for i, x in enumerate(t)}
    missing = [x for x in d if _norm(x) not in tn]
    if missing or len(tn) != len(t):
        raise DS2D2ArgError(
            f"teacher class names differ from the data's: data classes {missing} are not in the teacher "
            f"{t}; use a teacher trained on the same classes or rename them in the data yaml"
        )
    return torch.tensor([tn[_norm(x)] for x in d], dtype=torch.long)


def read_teacher(path: str | Path | None, task: str) -> nn.Module:
    """Load an Ultralytics teacher checkpoint, check its task and freeze it; needs no dataset, so it can run first.

    Args:
        path (str | Path | None): Path to a local Ultralytics `.pt` checkpoint.
        task (str): The student's task, "detect" or "obb".

    Returns:
        (nn.Module): The teacher model, fp32, eval mode, no gradients.

    Raises:
        DS2D2ArgError: Missing, unreadable or wrong-task teacher, with a one-line message naming the fix.
    """
    if path in (None, ""):
        raise DS2D2ArgError("distillation needs a teacher; pass teacher=path/to/teacher.pt (an Ultralytics checkpoint)")
    p = Path(path)
    if not p.is_file():
        raise DS2D2ArgError(f"teacher file '{path}' not found; pass teacher=path/to/teacher.pt")
    if p.suffix != ".pt":
        raise DS2D2ArgError(f"teacher '{path}' is not a .pt checkpoint; pass a trained Ultralytics .pt as teacher=")
    try:
        model, _ = load_checkpoint_safely(p, "teacher")
    except DS2D2ArgError:
        raise
    except Exception as e:
        msg = str(e).splitlines()[0][:160] if str(e) else type(e).__name__
        if "references types outside" in msg:  # the restricted loader's wording for bytes that are no checkpoint
            msg = "no Ultralytics model inside, or the file is empty or truncated"
        raise DS2D2ArgError(
            f"teacher '{path}' is not a readable Ultralytics checkpoint ({msg}); pass a .pt saved by Ultralytics"
        ) from None
    if not isinstance(model, nn.Module) or not hasattr(model, "model"):
        raise DS2D2ArgError(f"teacher '{path}' holds no Ultralytics model; pass a .pt saved by Ultralytics")

    head = model.model[-1]
    # The head decides: checkpoints written outside a training run may carry a default task="detect" in their args.
    if isinstance(head, OBB):
        t_task = "obb"
    elif isinstance(head, Detect) and not hasattr(head, "kpt_shape") and not hasattr(head, "nm"):
        t_task = "detect"  # plain Detect (pose and segment heads subclass it and carry kpt_shape / nm)
    else:
        t_task = guess_model_task(model)
    if t_task != task:
        hint = "an OBB teacher (e.g. yolov8n-obb.pt)" if task == "obb" else "a detect teacher (e.g. yolov8n.pt)"
        raise DS2D2ArgError(f"teacher '{p.name}' is a '{t_task}' model but the student is '{task}'; use {hint}")
    if looks_untrained(model):
        LOGGER.warning(
            f"DS2D2: teacher '{p.name}' looks untrained (every BatchNorm still has its initial statistics); "
            "distilling from it teaches noise: pass a trained teacher"
        )
    return freeze(model.float())


def load_teacher(
    path: str | Path | None, task: str, data_names: dict | list, model: nn.Module | None = None
) -> Teacher:
    """Load an Ultralytics teacher checkpoint, freeze it and check it against the student's task and data.

    Args:
        path (str | Path | None): Path to a local Ultralytics `.pt` checkpoint.
        task (str): The student's task, "detect" or "obb".
        data_names (dict | list): The dataset's class names.
        model (nn.Module | None): The teacher already returned by `read_teacher(path, task)`, to skip reading it again.

    Returns:
        (Teacher): The frozen teacher with its class map and fingerprint.

    Raises:
        DS2D2ArgError: Missing, unreadable or incompatible teacher, with a one-line message naming the fix.
    """
    if model is None:
        model = read_teacher(path, task)
    class_map = class_mapping(getattr(model, "names", {}), data_names)
    if class_map is not None:
        pairs = ", ".join(f"{i}->{int(j)}" for i, j in enumerate(class_map.tolist()) if i != j)
        LOGGER.info(f"DS2D2: teacher class order differs from the data; mapping data->teacher classes {pairs}")
    fp = fingerprint(model)
    template = copy.deepcopy(detection_head(model))
    return Teacher(
        model=fuse_frozen(model), path=str(Path(path).resolve()), class_map=class_map, fingerprint=fp, head=template
    )
