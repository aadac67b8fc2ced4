"""DS2D2 arguments as data: every key's default and one line of help, splitting them from Ultralytics' keys, and
validation. `cfg/ds2d2.yaml` is this schema written out (`python -m ds2d2_yolo.config` rewrites it; a test keeps the
two equal), so the CLI's help, the defaults and the shipped file cannot drift apart."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ds2d2_yolo.cfg import CFG_DIR
from ds2d2_yolo.core import connectors, disw, dwt
from ds2d2_yolo.methods import distill_methods

# Choices derived from what the code supports, so validation and help list the same values.
DISW_MODES = ("auto", *disw.DISW_MODES, disw.SCORE_MODE, "none")
WAVE_MODES = dwt.MODES
ADAPTER_MODES = ("shared", "per_stream")
PROJECTORS = connectors.PROJECTORS
BALANCE_MODES = ("none", "grad")
WEIGHT_KEYS = (
    "lambda_exl",
    "lambda_exh",
    "lambda_imf",
    "lambda_imh",
    "beta",
    "box_kd",
    "cwd_tau",
    "cwd_weight",
    "mgd_alpha",
    "mgd_mask_ratio",
)
BOOL_KEYS = ("explicit", "implicit_full", "implicit_high")
# The full dual-stream method as the reference defines it (1x1 adapter, DISW, both amplifiers), at weights balanced
# by their logged magnitudes. The defaults keep only the explicit stream with the mlp projector and score weights,
# which the fold split selected (docs/results.md); `distill=ds2d2` with these keys, or the comparison row
# `ds2d2-reference`, runs the reference.
REFERENCE = {
    "projector": "linear",
    "disw": "auto",
    "lambda_exl": 0.1,
    "lambda_exh": 0.2,
    "implicit_full": True,
    "implicit_high": True,
}

# Dataset yamls shipped in cfg/ that shadow Ultralytics' bundled ones of the same name.
DATASET_YAMLS = ("DIOR.yaml", "DOTAv1.yaml")


@dataclass(frozen=True)
class Key:
    """One DS2D2 setting.

    Attributes:
        default (Any): Its value when the user gives none.
        help (str): One line for `ds2d2-yolo help` and for its comment in `cfg/ds2d2.yaml`.
        section (str | None): Where the key opens a group in `cfg/ds2d2.yaml`: None continues the previous group,
            "" starts a new one after a blank line, and any other text is also written above the key as a comment.
    """

    default: Any
    help: str
    section: str | None = None


# The opening comment of `cfg/ds2d2.yaml`, above every key.
CFG_HEADER = (
    "DS2D2 defaults. Every key can be overridden per run (CLI `key=value` or DS2D2Trainer overrides).\n"
    "Loss weights are relative to Ultralytics' own detection loss, which multiplies by the batch size; the\n"
    "DS2D2 terms are scaled the same way, so the ratios hold at any batch size. docs/results.md says how they\n"
    "were chosen."
)


SCHEMA: dict[str, Key] = {
    "distill": Key("ds2d2", " | ".join(distill_methods()), ""),
    "teacher": Key(
        None, "path to an Ultralytics .pt of the same task (detect or obb) and the same classes as the data"
    ),
    "amplifier": Key(
        None, "path to a cached high-frequency amplifier .pt; empty = train one before distillation (amplifier.pt)"
    ),
    "amp_epochs": Key(3, "high-frequency amplifier training epochs when no amplifier= is given"),
    "lambda_exl": Key(
        1.5,
        "weight of the low band (LL) term, ex_low (the reference: 0.1)",
        "Explicit stream: weighted MSE of the DWT bands of adapted student vs teacher features.",
    ),
    "lambda_exh": Key(4.5, "weight of the high bands (LH, HL, HH) term, ex_high (the reference: 0.2)"),
    "lambda_imf": Key(
        0.25,
        "weight of the full-frequency amplifier term (teacher head on adapted student), im_full",
        "Implicit stream (knowledge amplifiers): teacher head on adapted student features vs teacher features.",
    ),
    "lambda_imh": Key(0.1, "weight of the high-frequency amplifier term (head trained on HF(teacher neck)), im_high"),
    "beta": Key(1.0, "quality-focal exponent of the classification KD, |sigma(z_s) - sigma(z_t)|^beta"),
    "box_kd": Key(1.0, "weight of the box KD inside each amplifier term relative to its class KD"),
    "wavelet": Key("haar", "any discrete PyWavelets wavelet (haar, db2, sym4, bior2.2, ...)", ""),
    "wave_mode": Key("zero", "DWT padding: " + " | ".join(WAVE_MODES)),
    "disw": Key(
        "score",
        "auto (hbb for detect, obb for OBB) | hbb (reference rule, box hull for OBB) | obb (rotated rule) | "
        "score (teacher confidence, not the reference) | none",
    ),
    "adapters": Key("shared", "shared: one adapter per level for both streams | per_stream: one set per stream", ""),
    "projector": Key(
        "mlp", "linear: the reference's 1x1 conv adapter | mlp: 1x1 conv-ReLU-1x1 conv with bias (Ultralytics')"
    ),
    "kd_warmup": Key(0, "epochs over which the distillation total ramps linearly from 0 to its full weight (0 = off)"),
    "balance": Key(
        "none", "none | grad: rescale each term's weight after warm-up so its gradient is balance_ratio x detection's"
    ),
    "balance_ratio": Key(
        0.25, "with balance=grad, each term's gradient norm on the student's backbone+neck / the detection loss's"
    ),
    "balance_steps": Key(
        8, "with balance=grad, steps measured (the last ones before the warm-up ends) to set the weights"
    ),
    "diagnose": Key(0, "every N steps, log gradient ratios/cosines and feature distances to diagnostics.csv (0 = off)"),
    "explicit": Key(True, "explicit stream on/off", ""),
    "implicit_full": Key(False, "full-frequency amplifier on/off (the reference: on)"),
    "implicit_high": Key(False, "high-frequency amplifier on/off (the reference: on)"),
    "cwd_tau": Key(1.0, "CWD temperature", "Baselines sharing the same hooks and adapters."),
    "cwd_weight": Key(1.0, "CWD loss weight per level (tau^2 scaled)"),
    "mgd_alpha": Key(2.0e-5, "MGD loss weight"),
    "mgd_mask_ratio": Key(0.65, "MGD random mask ratio"),
    "pseudo_conf": Key(0.5, "distill=pseudo: minimum teacher confidence of a pseudo-label added to the ground truth"),
}


def render_cfg() -> str:
    """`cfg/ds2d2.yaml` as the schema writes it: each key with its default and its help as a comment."""
    lines = [f"# {x}" for x in CFG_HEADER.splitlines()]
    for k, key in SCHEMA.items():
        if key.section is not None:
            lines += ["", *(f"# {x}" for x in key.section.splitlines())]
        v = "" if key.default is None else yaml.safe_dump(key.default, default_flow_style=True).split("\n")[0]
        lines.append(f"{k}: {v}".rstrip() + f" # {key.help}")
    return "\n".join(lines) + "\n"


class DS2D2ArgError(ValueError):
    """A DS2D2 argument is unknown or has a bad value; the message is one line naming the key and the fix."""


def defaults() -> dict[str, Any]:
    """Return the DS2D2 defaults (the schema's, as `cfg/ds2d2.yaml` holds them) as a fresh dict."""
    return {k: key.default for k, key in SCHEMA.items()}


def split_overrides(overrides: dict[str, Any] | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split a mixed override dict into (Ultralytics keys, DS2D2 keys).

    Args:
        overrides (dict | None): Keys for Ultralytics and for DS2D2 together, as a user passes them.

    Returns:
        (tuple[dict, dict]): Ultralytics overrides (unchanged), and the DS2D2 keys found among them.
    """
    ours = set(defaults())
    overrides = dict(overrides or {})
    mine = {k: overrides.pop(k) for k in list(overrides) if k in ours}
    return overrides, mine


def _to_bool(key: str, v: Any) -> bool:
    if isinstance(v, bool):
        return v
    if isinstance(v, str) and v.lower() in {"true", "1", "yes", "on", "false", "0", "no", "off"}:
        return v.lower() in {"true", "1", "yes", "on"}
    if isinstance(v, (int, float)) and v in (0, 1):
        return bool(v)
    raise DS2D2ArgError(f"'{key}={v}' is not a boolean; use {key}=true or {key}=false")


def _to_float(key: str, v: Any) -> float:
    try:
        f = float(v)
    except (TypeError, ValueError):
        raise DS2D2ArgError(f"'{key}={v}' is not a number; give a finite value >= 0, e.g. {key}=0.5") from None
    if not math.isfinite(f) or f < 0:
        raise DS2D2ArgError(f"'{key}={v}' must be finite and >= 0; e.g. {key}=0.5")
    return f


def _to_count(key: str, v: Any) -> int:
    try:
        n = float(v)
    except (TypeError, ValueError):
        n = -1.0
    if not math.isfinite(n) or n < 0 or n % 1:
        raise DS2D2ArgError(f"'{key}={v}' must be a whole number >= 0, e.g. {key}=10")
    return int(n)


def check_args(args: dict[str, Any] | None) -> dict[str, Any]:
    """Merge DS2D2 keys over the defaults and validate them, before any model is built.

    Args:
        args (dict | None): DS2D2 keys given by the user (strings from the CLI are accepted).

    Returns:
        (dict): A complete, validated DS2D2 argument dict.

    Raises:
        DS2D2ArgError: On an unknown key or a bad value, with a one-line message naming the fix.
    """
    cfg = defaults()
    for k, v in (args or {}).items():
        if k not in cfg:
            raise DS2D2ArgError(f"unknown DS2D2 key '{k}'; valid keys are: {', '.join(cfg)}")
        cfg[k] = v
    cfg["distill"] = str(cfg["distill"]).lower()
    if cfg["distill"] not in distill_methods():
        raise DS2D2ArgError(f"'distill={cfg['distill']}' is unknown; choose one of {', '.join(distill_methods())}")
    for k in WEIGHT_KEYS:
        cfg[k] = _to_float(k, cfg[k])
    if cfg["cwd_tau"] == 0:  # the softmax temperature divides the logits: 0 makes every CWD step NaN
        raise DS2D2ArgError("'cwd_tau=0' must be > 0 (it divides the logits); e.g. cwd_tau=1")
    if cfg["mgd_mask_ratio"] >= 1:
        raise DS2D2ArgError(f"'mgd_mask_ratio={cfg['mgd_mask_ratio']}' must be in [0, 1), e.g. 0.65")
    for k in BOOL_KEYS:
        cfg[k] = _to_bool(k, cfg[k])
    try:
        n = float(cfg["amp_epochs"])
    except (TypeError, ValueError):
        n = -1.0
    if n < 0 or n % 1:
        raise DS2D2ArgError(f"'amp_epochs={cfg['amp_epochs']}' must be a whole number >= 0, e.g. amp_epochs=3")
    cfg["amp_epochs"] = int(n)
    for k in ("diagnose", "balance_steps"):
        cfg[k] = _to_count(k, cfg[k])
    cfg["kd_warmup"] = _to_float("kd_warmup", cfg["kd_warmup"])
    cfg["balance_ratio"] = _to_float("balance_ratio", cfg["balance_ratio"])
    for k, choices in (("adapters", ADAPTER_MODES), ("projector", PROJECTORS), ("balance", BALANCE_MODES)):
        cfg[k] = str(cfg[k]).lower()
        if cfg[k] not in choices:
            raise DS2D2ArgError(f"'{k}={cfg[k]}' is unknown; choose one of {', '.join(choices)}")
    cfg["pseudo_conf"] = _to_float("pseudo_conf", cfg["pseudo_conf"])
    if not 0 < cfg["pseudo_conf"] < 1:
        raise DS2D2ArgError(f"'pseudo_conf={cfg['pseudo_conf']}' must be in (0, 1), e.g. pseudo_conf=0.5")
    if cfg["balance"] == "grad" and (cfg["balance_ratio"] == 0 or cfg["balance_steps"] == 0):
        raise DS2D2ArgError("balance=grad needs balance_ratio > 0 and balance_steps >= 1, e.g. balance_ratio=0.25")
    cfg["wavelet"] = check_wavelet(cfg["wavelet"])
    if cfg["wave_mode"] not in WAVE_MODES:
        raise DS2D2ArgError(f"'wave_mode={cfg['wave_mode']}' is unknown; choose one of {', '.join(WAVE_MODES)}")
    cfg["disw"] = check_disw(cfg["disw"])
    for k in ("teacher", "amplifier"):
        cfg[k] = str(cfg[k]) if cfg[k] not in (None, "", "None", "none") else None
    return cfg


def check_wavelet(wave: Any) -> str:
    """The `wavelet=` value as a name, or a one-line DS2D2ArgError when PyWavelets has no discrete wavelet of it."""
    if not dwt.is_discrete_wavelet(str(wave)):
        raise DS2D2ArgError(
            f"'wavelet={wave}' is not a discrete PyWavelets wavelet; e.g. haar, db2, sym4, bior2.2 "
            "(see pywt.wavelist(kind='discrete'))"
        )
    return str(wave)


def check_disw(mode: Any) -> str:
    """The `disw=` value in lower case, or a one-line DS2D2ArgError naming the rules there are."""
    mode = str(mode).lower()
    if mode not in DISW_MODES:
        raise DS2D2ArgError(f"'disw={mode}' is unknown; choose one of {', '.join(DISW_MODES)}")
    return mode


def warn_args(cfg: dict[str, Any]) -> list[str]:
    """Check a validated DS2D2 argument dict for settings that are legal but almost surely a mistake.

    Called once per new run (not on resume, whose settings come from the checkpoint), after `check_args`.

    Args:
        cfg (dict): Output of `check_args`.

    Returns:
        (list[str]): One-line warnings: a loss weight far above any useful value, an `amplifier=` or `teacher=` that
            this method never reads.

    Raises:
        DS2D2ArgError: For `amp_epochs=0` when the amplifier would be trained: it would distil from an untrained head.
    """
    # Loss weights are relative to a detection loss of ~10 (cfg/ds2d2.yaml); past these bounds one term outweighs
    # it by orders of magnitude, which is a typo (1e3 for 1e-3) rather than a setting.
    bounds = {
        "lambda_exl": 100,
        "lambda_exh": 100,
        "lambda_imf": 100,
        "lambda_imh": 100,
        "box_kd": 100,
        "cwd_weight": 100,
        "mgd_alpha": 1,
        "beta": 10,
        "cwd_tau": 100,
    }
    out = [
        f"'{k}={cfg[k]:g}' is far above any useful value (> {v}); the distillation term will swamp the detection loss"
        for k, v in bounds.items()
        if k in cfg and cfg[k] > v
    ]
    method, high = cfg["distill"], cfg["distill"] == "ds2d2" and cfg["implicit_high"]
    if high and not cfg["amplifier"] and cfg["amp_epochs"] == 0:
        raise DS2D2ArgError(
            "'amp_epochs=0' would distil from an untrained amplifier; use amp_epochs>=1, "
            "amplifier=path/to/amplifier.pt, or implicit_high=false"
        )
    if cfg["amplifier"] and not high:
        why = "implicit_high=false" if method == "ds2d2" else f"distill={method}"
        out.append(f"'amplifier={cfg['amplifier']}' is ignored: {why} uses no high-frequency amplifier")
    if cfg["teacher"] and method == "none":
        out.append(f"'teacher={cfg['teacher']}' is ignored with distill=none (no distillation); set distill= to use it")
    return out


def resolve_data(data: Any) -> Any:
    """Map the bare names DIOR(.yaml) and DOTAv1(.yaml) to this package's `cfg/` copies.

    A path with a folder, or a file of that name in the working directory, is the user's own and is kept.

    Args:
        data (Any): The `data=` value.

    Returns:
        (Any): The path of our copy for a bare shipped name, else `data` unchanged.
    """
    if not isinstance(data, str) or not data:
        return data
    p = Path(data)
    if p.parent != Path(".") or p.exists():
        return data
    name = data if p.suffix in {".yaml", ".yml"} else f"{data}.yaml"
    return str(CFG_DIR / name) if name in DATASET_YAMLS and (CFG_DIR / name).is_file() else data


if __name__ == "__main__":
    (CFG_DIR / "ds2d2.yaml").write_text(render_cfg(), encoding="utf-8")
