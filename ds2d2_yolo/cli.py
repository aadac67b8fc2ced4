"""The `ds2d2-yolo` command, in Ultralytics' grammar: `ds2d2-yolo [task] mode key=value ...`.

Modes:
    train: distil (or train) a detect/OBB student with `DS2D2Trainer`. DS2D2 keys (`distill`, `teacher`, `lambda_*`,
        ... see `cfg/ds2d2.yaml`) are ours; every other key goes to Ultralytics unchanged.
    amplifier: train the high-frequency amplifier of a teacher once and write `amplifier.pt` (reuse it with
        `amplifier=` in later runs).
    compare: train the same student with several methods and seeds on the user's data, then one table and plot.
    val, predict, export, track: passed to Ultralytics' own command unchanged.
    convert, slice, demo, visualize, prune, compress: this package's tools, each with its own keys.

Every user mistake (unknown key, bad value, missing teacher/model/data file) is reported as one line on stderr with
exit code 2 and no traceback, before any model is built or any run folder is created. Nothing here downloads: a
model or dataset that is not on disk is an error, not a download.

Bare dataset names `data=DIOR.yaml` and `data=DOTAv1.yaml` (also `DIOR`, `DOTAv1`) resolve to this package's copies
in `cfg/` (no `download:` key, the classes of the published splits) instead of Ultralytics' bundled yamls, unless a
file of that name exists in the working directory.
"""

from __future__ import annotations

import difflib
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable
from unittest import mock

import yaml

from ds2d2_yolo import __version__
from ds2d2_yolo.cfg import CFG_DIR
from ds2d2_yolo.config import (
    DATASET_YAMLS,
    DISW_MODES,
    SCHEMA,
    DS2D2ArgError,
    check_args,
    defaults,
    resolve_data,
    split_overrides,
)

# Ultralytics and this package's trainer and tools are imported inside the functions that need them (marked
# "lazy"): `ds2d2-yolo help`, `version` and one-line usage errors must not pay for them.

OWN_MODES = (
    "train",
    "amplifier",
    "prune",
    "compress",
    "demo",
    "compare",
    "convert",
    "slice",
    "visualize",
    "help",
    "version",
)
PASS_MODES = ("val", "predict", "export", "track")
DISTIL_TASKS = ("detect", "obb")
HELP_FLAGS = ("-h", "--help", "-help")
# Ultralytics' tasks: accepted positionally so pass-through modes keep Ultralytics' grammar; train and amplifier
# check for DISTIL_TASKS themselves.
TASKS = ("detect", "segment", "semantic", "depth", "classify", "pose", "obb")
# BaseTrainer.build_optimizer's names (matched case-insensitively there); checked here so a typo fails before the
# run folder is created rather than after the model is built.
OPTIMIZERS = ("SGD", "MuSGD", "Adam", "Adamax", "AdamW", "NAdam", "RAdam", "RMSprop", "auto")

# Keys of our subcommands other than train: {mode: {key: (default, type, choices or None)}}. They never reach
# Ultralytics. `type` None means "any value, passed as given".
SUBCOMMAND_KEYS: dict[str, dict[str, tuple[Any, Any, tuple | None]]] = {
    "convert": {
        "format": ("dota", str, ("dota", "dior", "dior-r")),
        "src": (None, str, None),
        "dst": (None, str, None),
        "tile": (1024, int, None),
        "gap": (200, int, None),
        "skip_difficult": (False, bool, None),
        "val": (0.2, float, None),
        "val_src": (None, str, None),
        "seed": (0, int, None),
    },
    "slice": {
        "model": (None, str, None),
        "source": (None, str, None),
        "tile": (1024, int, None),
        "overlap": (0.2, float, None),
        "conf": (0.25, float, None),
        "iou": (0.7, float, None),
        "imgsz": (None, int, None),
        "device": (None, None, None),
        "save": ("auto", str, None),
        "project": (None, str, None),
        "name": (None, str, None),
    },
    "visualize": {
        "model": (None, str, None),
        "teacher": (None, str, None),
        "source": (None, str, None),
        "imgsz": (640, int, None),
        "wavelet": ("haar", str, None),
        "out": ("auto", str, None),
        "boxes": ("auto", str, ("auto", "labels", "teacher")),
        "conf": (0.25, float, None),
        "project": (None, str, None),
        "name": (None, str, None),
        "disw": (defaults()["disw"], str, DISW_MODES),
    },
    "demo": {"out": ("runs/ds2d2-demo", str, None), "epochs": (None, int, None), "seed": (0, int, None)},
    # Its own keys only: every other key is a training key, checked as train checks it and given to every run.
    "compare": {
        "model": (None, str, None),
        "data": (None, str, None),
        "teacher": (None, str, None),
        "methods": ("none,ds2d2", str, None),
        "seeds": (3, None, None),  # a count or the seeds themselves: compare.seed_list reads both
        "epochs": (100, int, None),
        "val_every": (0, int, None),
        "project": (None, str, None),
        "name": (None, str, None),
        "exist_ok": (False, bool, None),
    },
    "prune": {
        "model": (None, str, None),
        "ratio": (0.5, float, None),
        "importance": ("l2", str, ("l1", "l2", "random")),
        "data": (None, str, None),
        "imgsz": (None, int, None),
        "batch": (1, int, None),
        "device": ("cpu", None, None),
        "project": (None, str, None),
        "name": (None, str, None),
        "exist_ok": (False, bool, None),
        "seed": (0, int, None),
    },
    "compress": {
        "model": (None, str, None),
        "data": (None, str, None),
        "ratio": (0.5, float, None),
        "importance": ("l2", str, ("l1", "l2", "random")),
        "distill": ("ds2d2", str, None),
        "epochs": (10, int, None),
        "imgsz": (None, int, None),
        "batch": (16, int, None),
        "workers": (0, int, None),
        "device": ("cpu", None, None),
        "amplifier": (None, str, None),
        "int8": ("onnx,openvino", str, None),
        "calib": (64, int, None),
        "runs": (50, int, None),
        "threads": (None, int, None),
        "project": ("runs/compress", str, None),
        "name": ("exp", str, None),
        "exist_ok": (False, bool, None),
        "seed": (0, int, None),
        "cfg": (None, str, None),
    },
}
REQUIRED_KEYS = {
    "convert": ("src", "dst"),
    "slice": ("model", "source"),
    "visualize": ("model", "teacher", "source"),
    "prune": ("model",),
    "compress": ("model", "data"),
    "compare": ("model", "data"),
}

MODE_HELP = {
    "train": "distil (or train) a detect/OBB student; every non-DS2D2 key goes to Ultralytics unchanged",
    "amplifier": "train the high-frequency amplifier of teacher= on data= once and write amplifier.pt",
    "convert": "prepare a dataset: format=dota|dior|dior-r src=... dst=... (DOTA: tile= gap=; val=0.2 or val_src=)",
    "slice": "sliced prediction on one large image: model=... source=... tile=1024 overlap=0.2",
    "visualize": "DWT bands and weight maps of teacher and student: teacher=... model=... source=... (disw=)",
    "prune": "prune a trained detect/OBB .pt with Torch-Pruning: model=... ratio=0.5 importance=l2 (data= for mAP)",
    "compress": "prune -> distil -> FP32/INT8 export -> validate: model=... data=... ratio=0.5 distill=ds2d2 epochs=",
    "demo": "offline end-to-end demo on generated aerial data (ds2d2 vs none)",
    "compare": "train one student with each of methods= for each of seeds= on your data; table.md, plot.png",
    "val predict export track": "passed to Ultralytics unchanged (model=... required; nothing is downloaded)",
    "help, version": "this text; the package and Ultralytics versions",
}

# Modes this command no longer has (Ultralytics' own `benchmark` is export-format speed, not a method comparison).
RETIRED_MODES = {
    "benchmark": "'benchmark' is not a ds2d2-yolo mode: compare methods on your own data with 'ds2d2-yolo compare' "
    "(see 'ds2d2-yolo compare help'); the DOTA-mini and synthetic research tracks live in the repository's "
    "benchmarks/ folder (python benchmarks/tracks.py)",
}
COMPARE_NOTES = [
    "",
    "Every other key is a training key (Ultralytics' or DS2D2's, as 'ds2d2-yolo train help' lists them), the same for",
    "every run; methods= and seeds= set distill= and seed= per run. A task may come first: ds2d2-yolo obb compare ...",
    "seeds=3 runs seeds 0, 1, 2; seeds=0,3 runs those two. val_every=N also validates every N epochs and each of the",
    "last 5 (the records' curve and last-5 means). Writes runs/<task>/compare (compare-2, ...): results.jsonl,",
    "table.md, plot.png, one run folder and log per method and seed. Rerun with exist_ok=True into the same folder to",
    "continue it: runs already recorded with the same settings are skipped.",
]

_ANSI = re.compile(r"\x1b\[[0-9;]*m")


class UsageError(Exception):
    """A command-line mistake: reported as one line on stderr with exit code 2."""


# ------------------------------------------------------------------------------------------------------------------
# Help


def _fmt(v: Any) -> str:
    """Format a value the way it would be typed on the command line."""
    if v is None:
        return ""
    if isinstance(v, bool):
        return str(v).lower()
    return str(v)


def key_docs() -> dict[str, str]:
    """Return the one-line description of each DS2D2 key, from the schema (`config.SCHEMA`)."""
    return {k: key.help for k, key in SCHEMA.items()}


# DS2D2 keys the amplifier mode reads (the others only matter for distillation).
AMPLIFIER_KEYS = ("teacher", "amp_epochs", "wavelet", "wave_mode")
# How to get a student smaller than a nano teacher: Ultralytics' scales stop at n (the shipped teacher's own size).
STUDENT_HINT = [
    "A student smaller than a nano teacher (Ultralytics' smallest scale is n): write a narrower yaml once, e.g.",
    '  python -c "from ds2d2_yolo.tools.models import scaled_model_yaml as s; '
    "s('yolov8-obb.yaml', width=0.125, out='student-obb.yaml')\"",
    "and pass model=student-obb.yaml (width 0.125 is half of n's 0.25; depth=, max_channels= scale too).",
]
TRAIN_EXAMPLES = [
    "  ds2d2-yolo obb amplifier teacher=teacher.pt data=DOTAv1.yaml imgsz=1024 amp_epochs=3",
    "  ds2d2-yolo obb train model=student-obb.yaml data=DOTAv1.yaml teacher=teacher.pt amplifier=amplifier.pt",
    "  ds2d2-yolo detect train model=yolov8n.yaml data=DIOR.yaml teacher=yolov8s-dior.pt distill=ds2d2",
    "  ds2d2-yolo train resume model=runs/obb/train/weights/last.pt",
]


def _ds2d2_key_lines(keys: list[str] | None = None) -> list[str]:
    """One line per DS2D2 key: key=default and its help."""
    docs = key_docs()
    return [
        f"  {k + '=' + _fmt(v):<25} {docs.get(k, '')}".rstrip()
        for k, v in defaults().items()
        if keys is None or k in keys
    ]


def mode_usage(mode: str) -> str:
    """Return the help of one mode: what it does and every key it takes, with the defaults."""
    lines = []
    if mode in ("train", "amplifier"):
        lines += [f"Usage: ds2d2-yolo [detect|obb] {mode} key=value ...", "", MODE_HELP[mode], ""]
        keys = None if mode == "train" else list(AMPLIFIER_KEYS)
        lines += ["DS2D2 keys with their defaults (cfg/ds2d2.yaml):", *_ds2d2_key_lines(keys), ""]
        ul = "model, data, epochs, imgsz, batch, device, project, name, resume" if mode == "train" else "data, imgsz"
        lines.append(f"Every other key goes to Ultralytics unchanged ({ul}, ...; see 'yolo cfg').")
        if mode == "train":
            lines += [
                "resume continues exactly the checkpoint named (resume=path or resume model=path), writing beside it.",
                "",
                *STUDENT_HINT,
                "",
                "Examples:",
                *TRAIN_EXAMPLES[1:],
            ]
        else:
            lines += ["", "Example:", TRAIN_EXAMPLES[0]]
    elif mode in SUBCOMMAND_KEYS:
        required = REQUIRED_KEYS.get(mode, ())
        lines += [
            f"Usage: ds2d2-yolo {mode} key=value ...",
            "",
            MODE_HELP.get(mode, ""),
            "",
            "Keys with their defaults:",
        ]
        for k, (d, _, choices) in SUBCOMMAND_KEYS[mode].items():
            note = "required" if k in required else (" | ".join(choices) if choices else "")
            lines.append(f"  {k + '=' + _fmt(d):<25} {note}".rstrip())
        if mode == "compare":
            from ds2d2_yolo.tools.compare import METHODS  # imports Ultralytics: only for this mode's help

            lines += [*COMPARE_NOTES, f"methods= rows: {', '.join(METHODS)}", "", "Example:"]
            lines.append(
                "  ds2d2-yolo compare model=student-obb.yaml data=DOTAv1.yaml teacher=teacher.pt methods=none,ds2d2 "
                "seeds=3 epochs=50 imgsz=1024"
            )
    elif mode in PASS_MODES:
        lines += [
            f"Usage: ds2d2-yolo [task] {mode} model=... key=value ...",
            "",
            f"Passed to Ultralytics' own '{mode}' unchanged, after checking that model= (and source=) are local files:",
            f"nothing is downloaded. Its keys are Ultralytics' (see 'yolo {mode} help' and 'yolo cfg').",
        ]
    else:
        return usage()
    return "\n".join(lines)


def usage(mode: str | None = None) -> str:
    """Return the help text: modes, every DS2D2 key with its default and meaning, and the subcommands' keys.

    Args:
        mode (str | None): A mode whose help alone is wanted (`ds2d2-yolo train help`).
    """
    if mode:
        return mode_usage(mode)
    lines = ["Usage: ds2d2-yolo [detect|obb] MODE key=value ...", "", "Modes:"]
    lines += [f"  {m:<25} {h}" for m, h in MODE_HELP.items()]
    lines += ["", "DS2D2 keys (train, amplifier) with their defaults (cfg/ds2d2.yaml):", *_ds2d2_key_lines()]
    lines += ["", "Keys of the other modes, with their defaults ('ds2d2-yolo MODE help' for one mode):"]
    for m, spec in SUBCOMMAND_KEYS.items():
        lines.append(f"  {m:<10} " + " ".join(f"{k}={_fmt(d)}" for k, (d, _, _) in spec.items()))
    lines += [
        "",
        "Any other key is an Ultralytics key (see 'yolo cfg'). data=DIOR.yaml and data=DOTAv1.yaml name this",
        f"package's dataset files in {CFG_DIR} (prepare the images with 'ds2d2-yolo convert').",
        "",
        *STUDENT_HINT,
        "",
        "Examples:",
        *TRAIN_EXAMPLES,
        "  ds2d2-yolo obb val model=runs/obb/train/weights/best.pt data=DOTAv1.yaml",
    ]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------------------------
# Parsing


def parse(argv: list[str]) -> tuple[str | None, str, dict[str, Any], dict[str, str]]:
    """Split argv into (task, mode, typed key=value dict, raw key=value strings), with Ultralytics' value typing.

    Bare boolean keys (`show`, `explicit`) mean `key=True`, as in Ultralytics' grammar.

    Raises:
        UsageError: On a malformed argument, an unknown word, or two modes.
    """
    words = [a for a in argv if a not in TASKS]
    if not words or "help" in words or any(a in HELP_FLAGS for a in argv):
        # Before importing Ultralytics, so help is instant; `ds2d2-yolo train help` asks for one mode's keys.
        topic = next((a for a in words if a in (*OWN_MODES, *PASS_MODES) and a not in ("help", "version")), None)
        return None, "help", ({"topic": topic} if topic else {}), {}
    from ultralytics.cfg import DEFAULT_CFG_DICT, merge_equals_args, smart_value  # lazy: not needed for help

    bool_keys = {k for k, v in {**DEFAULT_CFG_DICT, **defaults()}.items() if isinstance(v, bool)}
    task, mode, kv, raw = None, None, {}, {}
    for a in merge_equals_args(list(argv)):
        if "=" in a:
            k, v = a.split("=", 1)
            k = k.lstrip("-")  # Ultralytics accepts --key=value too
            if not k or v == "":
                what = "key" if not k else "value"
                raise UsageError(f"'{a}' is missing a {what}; write key=value, e.g. epochs=10")
            kv[k], raw[k] = smart_value(v), v
        elif a in TASKS and task is None and mode is None:
            task = a
        elif a in (*OWN_MODES, *PASS_MODES):
            if mode is not None:
                raise UsageError(f"two modes given ('{mode}' and '{a}'); give one, e.g. ds2d2-yolo obb train ...")
            mode = a
        elif a in bool_keys:
            kv[a], raw[a] = True, "True"
        elif a in RETIRED_MODES:
            raise UsageError(RETIRED_MODES[a])
        else:
            modes = ", ".join(OWN_MODES + PASS_MODES)
            raise UsageError(f"unknown argument '{a}'; expected [task] mode key=value ..., modes: {modes}")
    return task, mode or "help", kv, raw


def _first_line(e: BaseException) -> str:
    """The first non-empty line of an exception message, without terminal colours."""
    text = _ANSI.sub("", str(e)).strip()
    return text.splitlines()[0].strip() if text else type(e).__name__


@contextmanager
def user_errors(*extra: type[BaseException]) -> Iterator[None]:
    """Turn the exceptions by which Ultralytics and our tools report user mistakes into one-line UsageErrors.

    Ultralytics reports a missing file as FileNotFoundError and a bad key or data yaml as SyntaxError; only code run
    while setting up (never a training loop) is wrapped, so a real bug still shows its traceback.
    """
    try:
        yield
    except DS2D2ArgError:
        raise
    except (FileNotFoundError, SyntaxError, *extra) as e:
        raise UsageError(_first_line(e)) from None


def _check_ultralytics_keys(kv: dict[str, Any]) -> None:
    """Reject unknown or mistyped Ultralytics keys in one line, before any model is built."""
    from ultralytics.cfg import DEFAULT_CFG_DICT, check_cfg  # lazy: Ultralytics is heavy

    ours = list(defaults())
    unknown = [k for k in kv if k not in DEFAULT_CFG_DICT]
    if unknown:
        k = unknown[0]
        close = difflib.get_close_matches(k, [*DEFAULT_CFG_DICT, *ours], n=3)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise UsageError(f"unknown key '{k}'; {hint}DS2D2 keys: {', '.join(ours)}; Ultralytics keys: run 'yolo cfg'")
    try:
        check_cfg(dict(kv))
    except (TypeError, ValueError) as e:
        raise UsageError(_first_line(e)) from None
    opt = kv.get("optimizer")
    if opt is not None and str(opt).lower() not in {o.lower() for o in OPTIMIZERS}:
        raise UsageError(f"'optimizer={opt}' is unknown; choose one of {', '.join(OPTIMIZERS)}")


def _check_model(model: Any, mode: str) -> None:
    """Fail in one line when a weights file is not on disk (Ultralytics would try to download it) or a yaml is unknown.

    Raises:
        UsageError: With the fix.
    """
    # lazy: Ultralytics is heavy
    from ultralytics.utils import SETTINGS
    from ultralytics.utils.checks import check_model_file_from_stem

    if model is None or not isinstance(model, (str, Path)):
        raise UsageError(f"{mode} needs model=path/to/weights.pt (or a model yaml such as yolov8n-obb.yaml to train)")
    m = str(check_model_file_from_stem(str(model)))
    if "://" in m:
        raise UsageError(f"model '{model}' is a URL; this command never downloads: download it and pass the file")
    if m.endswith(".pt"):
        if not Path(m).is_file() and not (Path(SETTINGS["weights_dir"]) / m).is_file():
            hint = ", or a model yaml such as yolov8n-obb.yaml to train from scratch" if mode == "train" else ""
            raise UsageError(f"model file '{model}' not found (nothing is downloaded); pass a local .pt{hint}")
    elif m.endswith((".yaml", ".yml")):
        from ultralytics.nn.tasks import yaml_model_load  # lazy: Ultralytics is heavy

        try:
            yaml_model_load(m)
        except FileNotFoundError:
            raise UsageError(
                f"model yaml '{model}' not found; pass a file or an Ultralytics model name such as yolov8n-obb.yaml"
            ) from None


def _check_data(data: Any) -> None:
    """Check the data yaml and its image folders now, so a missing dataset fails before the run folder exists.

    Raises:
        UsageError: With the fix (for our DIOR/DOTA yamls, the convert command that prepares the images).
    """
    from ultralytics.data.utils import check_det_dataset  # lazy: Ultralytics is heavy

    if data is None:
        raise UsageError("train needs data=path/to/data.yaml (or data=DOTAv1.yaml / data=DIOR.yaml)")
    try:
        check_det_dataset(str(data), autodownload=False)
    except (FileNotFoundError, SyntaxError, TypeError) as e:
        msg = f"data={data}: {_first_line(e)}"
        name = Path(str(data)).name
        if name in DATASET_YAMLS and str(Path(str(data)).parent) == str(CFG_DIR):
            # dst= is the `path:` of the shipped yaml, so the prepared folder is where the yaml looks
            fmt = {"DOTAv1.yaml": "dota src=path/to/DOTA dst=../datasets/DOTAv1"}.get(
                name, "dior src=path/to/DIOR dst=../datasets/DIOR"
            )
            msg += f"; prepare it first: ds2d2-yolo convert format={fmt} (see {data})"
        raise UsageError(msg) from None


def _check_file(key: str, path: Any, example: str | None = None) -> None:
    """Fail in one line when the file given for `key` does not exist."""
    if path is not None and not Path(str(path)).is_file():
        raise UsageError(f"{key} file '{path}' not found; pass {key}={example or f'path/to/{key}.pt'}")


def _load_cfg_file(kv: dict[str, Any]) -> dict[str, Any]:
    """Merge a `cfg=file.yaml` under the command-line keys, as Ultralytics does; the file may hold DS2D2 keys too."""
    if kv.get("cfg") is None:
        kv.pop("cfg", None)
        return kv

    path = Path(str(kv.pop("cfg")))
    if not path.is_file():
        raise UsageError(f"cfg file '{path}' not found; pass cfg=path/to/overrides.yaml")
    loaded = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(loaded, dict):
        raise UsageError(f"cfg file '{path}' must be a mapping of key: value")
    return {**{k: v for k, v in loaded.items() if k != "cfg"}, **kv}


def _distil_args(mode: str, task: str | None, kv: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Validate train/amplifier keys completely; return (Ultralytics keys, DS2D2 keys), nothing built yet."""
    if task and task not in DISTIL_TASKS:
        raise UsageError(f"task '{task}' is not supported by {mode}; DS2D2 distils {' and '.join(DISTIL_TASKS)} models")
    ul, mine = split_overrides(_load_cfg_file(kv))
    if task:
        ul.setdefault("task", task)
    if "data" in ul:
        ul["data"] = resolve_data(ul["data"])
    cfg = check_args({**mine, "distill": "ds2d2"} if mode == "amplifier" else mine)
    _check_ultralytics_keys(ul)
    resume = ul.get("resume")
    if mode == "train" and resume:
        # Ultralytics takes model, data and the DS2D2 state from the checkpoint being resumed.
        if isinstance(resume, str):
            _check_file("resume", resume, "runs/<task>/<name>/weights/last.pt")
        _check_file("teacher", cfg["teacher"])
        return ul, mine
    if cfg["distill"] != "none" and not cfg["teacher"]:
        hint = "" if mode == "amplifier" else " (or distill=none to train without a teacher)"
        raise UsageError(f"{mode} with distill={cfg['distill']} needs teacher=path/to/teacher.pt{hint}")
    if cfg["distill"] != "none":
        _check_file("teacher", cfg["teacher"])
        if not cfg["teacher"].endswith(".pt"):
            raise UsageError(f"teacher '{cfg['teacher']}' is not a .pt checkpoint; pass a trained Ultralytics .pt")
    if cfg["distill"] == "ds2d2" and mode == "train":
        _check_file("amplifier", cfg["amplifier"])
    _check_model(ul.get("model", cfg["teacher"] if mode == "amplifier" else None), mode)
    _check_data(ul.get("data"))
    return ul, mine


def _own_keys(mode: str, kv: dict[str, Any]) -> dict[str, Any]:
    """Validate a subcommand's keys against SUBCOMMAND_KEYS; return them merged over the defaults."""
    spec = SUBCOMMAND_KEYS[mode]
    args = {k: d for k, (d, _, _) in spec.items()}
    for k, v in kv.items():
        if k not in spec:
            raise UsageError(f"unknown key '{k}' for {mode}; valid keys: {', '.join(spec)}")
        _, typ, choices = spec[k]
        if v is None or typ is None:
            args[k] = v
            continue
        if typ is bool:
            if not isinstance(v, bool):
                raise UsageError(f"'{k}={v}' is not a boolean; use {k}=true or {k}=false")
        elif typ is int:
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v % 1:
                raise UsageError(f"'{k}={v}' must be a whole number, e.g. {k}={spec[k][0] or 10}")
            v = int(v)
        elif typ is float:
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise UsageError(f"'{k}={v}' must be a number, e.g. {k}={spec[k][0]}")
            v = float(v)
        else:
            v = str(v)
        if choices and str(v).lower() not in choices:
            raise UsageError(f"'{k}={v}' is unknown; choose one of {', '.join(choices)}")
        args[k] = str(v).lower() if choices else v
    missing = [k for k in REQUIRED_KEYS.get(mode, ()) if not args[k]]
    if missing:
        raise UsageError(f"{mode} needs {' and '.join(f'{k}=...' for k in missing)}; see 'ds2d2-yolo help'")
    return args


# ------------------------------------------------------------------------------------------------------------------
# Modes


def _train(task: str | None, kv: dict[str, Any]) -> None:
    ul, mine = _distil_args("train", task, kv)
    from ds2d2_yolo.integration.trainer import DS2D2Trainer  # lazy: imports Ultralytics

    with user_errors():
        trainer = DS2D2Trainer(overrides={**ul, **mine})
    trainer.train()


def _amplifier(task: str | None, kv: dict[str, Any]) -> None:
    ul, mine = _distil_args("amplifier", task, kv)
    from ds2d2_yolo.integration.trainer import build_amplifier_file  # lazy: imports Ultralytics

    path = build_amplifier_file({**ul, **mine})
    print(f"amplifier written to {path}; pass amplifier={path} to 'ds2d2-yolo train' with the same teacher")


def _pass_through(task: str | None, mode: str, kv: dict[str, Any], raw: dict[str, str]) -> None:
    """Hand the command to Ultralytics' own CLI after the checks that keep it offline and one-line on mistakes."""
    ours = [k for k in kv if k in defaults()]
    if ours:
        raise UsageError(f"'{ours[0]}' is a DS2D2 training key and has no meaning for {mode}; remove it")
    _check_ultralytics_keys(kv)
    _check_model(kv.get("model"), mode)
    if mode in {"predict", "track"} and kv.get("source") is None:
        raise UsageError(f"{mode} needs source=path/to/image_or_folder (Ultralytics' default is a download)")
    if "data" in kv:
        raw["data"] = resolve_data(raw["data"])

    import ultralytics.cfg  # lazy: Ultralytics is heavy

    # Ultralytics' entrypoint reads its module-level ARGV; a token list keeps values with spaces intact.
    tokens = ["ds2d2-yolo", *([task] if task else []), mode, *(f"{k}={v}" for k, v in raw.items())]
    with mock.patch.object(ultralytics.cfg, "ARGV", tokens), user_errors():
        ultralytics.cfg.entrypoint()


def _subcommand(mode: str, kv: dict[str, Any]) -> None:
    args = _own_keys(mode, kv)
    errors: tuple[type[BaseException], ...] = ()  # failures of a run that are reported in one line
    if mode == "convert":
        if not Path(args["src"]).is_dir():
            raise UsageError(f"convert: src folder '{args['src']}' not found")
        from ds2d2_yolo.tools.dataprep import run_convert as fn  # lazy: each tool imports Ultralytics
    elif mode == "slice":
        _check_model(args["model"], mode)
        if not Path(args["source"]).is_file():
            raise UsageError(f"slice: source image '{args['source']}' not found")
        from ds2d2_yolo.tools.sliced import run_slice as fn  # lazy: as above
    elif mode in ("prune", "compress"):
        if args["data"]:
            args["data"] = resolve_data(args["data"])
            _check_data(args["data"])
        with user_errors(ValueError, ImportError):
            # lazy: as above; inside user_errors, so a missing optional dependency is one line
            if mode == "prune":
                from ds2d2_yolo.tools.prune import check_prune_args as check
                from ds2d2_yolo.tools.prune import run_prune as fn
            else:
                from ds2d2_yolo.tools.compress import StageError
                from ds2d2_yolo.tools.compress import check_compress_args as check
                from ds2d2_yolo.tools.compress import run_compress as fn

                errors = (StageError,)
            check(args)
    elif mode == "demo":
        from ds2d2_yolo.tools.demo import run_demo as fn  # lazy: as above
    else:
        _check_model(args["model"], mode)
        _check_file("teacher", args["teacher"])
        if not Path(args["source"]).is_file():
            raise UsageError(f"visualize: source image '{args['source']}' not found")
        from ds2d2_yolo.tools.visualize import run_visualize as fn  # lazy: as above
    call: Callable[..., Any] = fn
    with user_errors(*errors):
        call(**args)


def _compare(task: str | None, kv: dict[str, Any]) -> None:
    """Compare methods on the user's data; every mistake that can be known then fails before the run folder exists."""
    if task and task not in DISTIL_TASKS:
        raise UsageError(f"task '{task}' is not supported by compare; DS2D2 distils {' and '.join(DISTIL_TASKS)}")
    kv = _load_cfg_file(kv)
    if "methods" in kv and kv["methods"] is None:
        kv["methods"] = "none"  # Ultralytics' value typing reads methods=none as None
    spec = SUBCOMMAND_KEYS["compare"]
    own = _own_keys("compare", {k: v for k, v in kv.items() if k in spec})
    train = {k: v for k, v in kv.items() if k not in spec}
    ul, mine = split_overrides(train)
    _check_ultralytics_keys(ul)
    own["data"] = resolve_data(own["data"])
    _check_model(own["model"], "compare")
    _check_data(own["data"])
    if own["teacher"]:
        _check_file("teacher", own["teacher"])
        if not str(own["teacher"]).endswith(".pt"):
            raise UsageError(f"teacher '{own['teacher']}' is not a .pt checkpoint; pass a trained Ultralytics .pt")
    _check_file("amplifier", mine.get("amplifier"))
    from ds2d2_yolo.tools.compare import plan_compare, run_plan  # lazy: imports Ultralytics

    with user_errors(ValueError):
        plan = plan_compare(**own, task=task, **train)
    with user_errors():
        run_plan(plan)


def run(argv: list[str]) -> int:
    """Run one command.

    Args:
        argv (list[str]): The arguments after the program name.

    Returns:
        (int): The exit code.

    Raises:
        UsageError: On a user mistake (also DS2D2ArgError), before any model is built where it can be known then.
    """
    task, mode, kv, raw = parse(argv)
    if mode == "help":
        print(usage(kv.get("topic")))
    elif mode == "version":
        from ultralytics import __version__ as ul_version  # lazy: Ultralytics is heavy

        print(f"ds2d2-yolo {__version__} (ultralytics {ul_version})")
    elif mode == "train":
        _train(task, kv)
    elif mode == "amplifier":
        _amplifier(task, kv)
    elif mode in PASS_MODES:
        _pass_through(task, mode, kv, raw)
    elif mode == "compare":
        _compare(task, kv)
    else:
        if task:
            raise UsageError(f"'{mode}' takes no task; write ds2d2-yolo {mode} key=value ...")
        _subcommand(mode, kv)
    return 0


def entrypoint(argv: list[str] | None = None) -> int:
    """Run the command in `argv` (default: sys.argv); user mistakes print one line and return exit code 2.

    Args:
        argv (list[str] | None): The arguments after the program name.

    Returns:
        (int): The exit code.
    """
    argv = sys.argv[1:] if argv is None else argv
    try:
        return run(argv)
    except (UsageError, DS2D2ArgError) as e:
        print(f"ds2d2-yolo: error: {_first_line(e)}", file=sys.stderr)
        return 2


def main() -> None:
    """Console-script and `python -m ds2d2_yolo` entry."""
    sys.exit(entrypoint())


if __name__ == "__main__":
    main()
