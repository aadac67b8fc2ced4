"""The `ds2d2-yolo` command, in Ultralytics' grammar: `ds2d2-yolo [task] mode key=value ...`."""

from __future__ import annotations

import sys
from typing import Any

from ds2d2_yolo.config import DS2D2ArgError, check_args, defaults, split_overrides

OWN_MODES = ("train", "amplifier", "demo", "benchmark", "convert", "slice", "visualize", "help")
PASS_MODES = ("val", "predict", "export", "track")
TASKS = ("detect", "obb")

# Keys of our subcommands other than train (they never reach Ultralytics).
SUBCOMMAND_KEYS = {
    "convert": {"format": "dota", "src": None, "dst": None, "tile": 1024, "gap": 200, "skip_difficult": False},
    "slice": {
        "model": None,
        "source": None,
        "tile": 1024,
        "overlap": 0.2,
        "conf": 0.25,
        "iou": 0.7,
        "imgsz": None,
        "device": None,
        "save": "sliced.png",
    },
    "visualize": {"model": None, "teacher": None, "source": None, "imgsz": 640, "wavelet": "haar", "out": "bands.png"},
    "demo": {"out": "runs/ds2d2-demo", "epochs": None, "seed": 0},
    "benchmark": {"track": "synthetic", "out": "runs/ds2d2-benchmark", "seeds": 3, "epochs": None, "methods": None},
}


class UsageError(Exception):
    """A command-line mistake: reported as one line with exit code 2."""


def usage() -> str:
    """Return the help text listing modes and every DS2D2 key with its default."""
    lines = [
        "Usage: ds2d2-yolo [detect|obb] MODE key=value ...",
        "",
        "Modes:",
        "  train       distil (or train) a student; every non-DS2D2 key goes to Ultralytics unchanged",
        "  amplifier   train the high-frequency amplifier for a teacher and write amplifier.pt",
        "  demo        offline end-to-end demo on generated aerial data (ds2d2 vs none)",
        "  benchmark   compare none/native/cwd/mgd/ds2d2 (track=synthetic|dota)",
        "  convert     dataset conversion: format=dota|dior|dior-r src=... dst=... [tile= gap=]",
        "  slice       sliced prediction on a large image: model=... source=... tile=1024 overlap=0.2",
        "  visualize   DWT bands and DISW maps of teacher and student: teacher=... model=... source=...",
        "  val predict export track   passed to Ultralytics unchanged",
        "",
        "DS2D2 keys (train, amplifier) and defaults (cfg/ds2d2.yaml):",
    ]
    lines += [f"  {k}={'' if v is None else v}" for k, v in defaults().items()]
    lines += ["", "Example: ds2d2-yolo obb train model=yolov8n-obb.yaml data=DOTAv1.yaml teacher=t.pt distill=ds2d2"]
    return "\n".join(lines)


def parse(argv: list[str]) -> tuple[str | None, str, dict[str, Any]]:
    """Split argv into (task, mode, key=value dict), with Ultralytics' value typing.

    Raises:
        UsageError: On a malformed argument or an unknown mode.
    """
    from ultralytics.cfg import merge_equals_args, smart_value

    task, mode, kv = None, None, {}
    for a in merge_equals_args(list(argv)):
        if "=" in a:
            k, v = a.split("=", 1)
            if not k or v == "":
                raise UsageError(f"'{a}' is missing a {'key' if not k else 'value'}; write key=value, e.g. epochs=10")
            kv[k] = smart_value(v)
        elif a in TASKS and task is None and mode is None:
            task = a
        elif a in (*OWN_MODES, *PASS_MODES) and mode is None:
            mode = a
        elif a in {"-h", "--help"}:
            mode = "help"
        else:
            modes = ", ".join(OWN_MODES + PASS_MODES)
            raise UsageError(f"unknown argument '{a}'; expected a mode ({modes}) or key=value")
    return task, mode or "help", kv


def _check_ultralytics_keys(kv: dict[str, Any]) -> None:
    """Reject unknown or mistyped Ultralytics keys in one line, before any model is built."""
    from ultralytics.cfg import DEFAULT_CFG_DICT, check_cfg

    unknown = [k for k in kv if k not in DEFAULT_CFG_DICT]
    if unknown:
        import difflib

        k = unknown[0]
        close = difflib.get_close_matches(k, [*DEFAULT_CFG_DICT, *defaults()], n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else "; see 'ds2d2-yolo help' and 'yolo cfg'"
        raise UsageError(f"unknown key '{k}'{hint}")
    try:
        check_cfg(dict(kv))
    except (TypeError, ValueError) as e:
        raise UsageError(str(e).strip().splitlines()[0]) from None


def _own_keys(mode: str, kv: dict[str, Any]) -> dict[str, Any]:
    spec = SUBCOMMAND_KEYS[mode]
    unknown = [k for k in kv if k not in spec]
    if unknown:
        raise UsageError(f"unknown key '{unknown[0]}' for {mode}; valid keys: {', '.join(spec)}")
    return {**spec, **kv}


def run(argv: list[str]) -> int:
    """Run one command; return its exit code."""
    task, mode, kv = parse(argv)
    if mode == "help":
        print(usage())
        return 0
    if task:
        kv.setdefault("task", task)
    if mode == "train":
        ul, mine = split_overrides(kv)
        cfg = check_args(mine)
        _check_ultralytics_keys(ul)
        if cfg["distill"] != "none" and not cfg["teacher"]:
            raise DS2D2ArgError(f"distill={cfg['distill']} needs teacher=path/to/teacher.pt (or use distill=none)")
        from ds2d2_yolo.trainer import DS2D2Trainer

        DS2D2Trainer(overrides={**ul, **mine}).train()
        return 0
    if mode == "amplifier":
        ul, mine = split_overrides(kv)
        cfg = check_args({**mine, "distill": "ds2d2"})
        _check_ultralytics_keys(ul)
        if not cfg["teacher"]:
            raise DS2D2ArgError("amplifier needs teacher=path/to/teacher.pt")
        from ds2d2_yolo.trainer import build_amplifier_file

        path = build_amplifier_file({**ul, **mine})
        print(f"amplifier written to {path}")
        return 0
    if mode in PASS_MODES:
        ours = [k for k in kv if k in defaults()]
        if ours:
            raise UsageError(f"'{ours[0]}' is a DS2D2 training key and has no meaning for {mode}; remove it")
        _check_ultralytics_keys({k: v for k, v in kv.items()})
        from ultralytics.cfg import entrypoint

        entrypoint(" ".join([mode, *(f"{k}={v}" for k, v in kv.items())]))
        return 0
    kv.pop("task", None)
    args = _own_keys(mode, kv)
    if mode == "demo":
        from ds2d2_yolo.demo import run_demo

        run_demo(**args)
    elif mode == "benchmark":
        from ds2d2_yolo.benchmark import run_benchmark

        run_benchmark(**args)
    elif mode == "convert":
        from ds2d2_yolo.dataprep import run_convert

        run_convert(**args)
    elif mode == "slice":
        from ds2d2_yolo.sliced import run_slice

        run_slice(**args)
    elif mode == "visualize":
        from ds2d2_yolo.visualize import run_visualize

        run_visualize(**args)
    return 0


def entrypoint(argv: list[str] | None = None) -> int:
    """Console-script entry point: one-line errors with exit code 2 for user mistakes, no traceback."""
    argv = sys.argv[1:] if argv is None else argv
    try:
        code = run(argv)
    except (UsageError, DS2D2ArgError) as e:
        print(f"ds2d2-yolo: error: {e}", file=sys.stderr)
        code = 2
    except FileNotFoundError as e:
        print(f"ds2d2-yolo: error: {e}", file=sys.stderr)
        code = 2
    return code


def main() -> None:
    """`python -m ds2d2_yolo` entry."""
    sys.exit(entrypoint())


if __name__ == "__main__":
    main()
