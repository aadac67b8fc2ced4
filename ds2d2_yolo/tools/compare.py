"""Compare distillation methods on your own data: one student, the same settings, several seeds, one table.

`ds2d2-yolo compare model=student.yaml data=data.yaml teacher=teacher.pt methods=none,ds2d2 seeds=3 epochs=50`
trains every (method, seed) in a process of its own (so its peak RSS is its own), with every setting but the method's
keys the same, and writes into an Ultralytics-style run folder (`runs/<task>/compare`, then `compare-2`, ...;
`project=`, `name=` and `exist_ok=` as in `train`):

- `results.jsonl`: one record per finished run, appended as soon as it ends (mAP50, mAP50-95, seconds per step, peak
  RSS, optimizer updates, the resolved method settings, the commit, every training key);
- `table.md`: mean ± std over seeds per method, gap closure to the teacher, a per-seed table and each method's
  difference to `none` paired seed by seed; `plot.png`: the same means as bars, the teacher as lines;
- `args.yaml`, `teacher.json` (the teacher validated on the same split), and each run's own Ultralytics folder
  `<method>-s<seed>/` with its log `<method>-s<seed>.log`.

Running the same command again with `exist_ok=True` continues that folder: every run results.jsonl already holds with
the same settings is skipped, and the table and plot are rebuilt from all records. The research tracks in the
repository's `benchmarks/` folder are built on the same runner. One child run is
`python -m ds2d2_yolo.tools.compare '<json spec>'`.
"""

from __future__ import annotations

import csv
import json
import math
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib
import matplotlib.pyplot as plt
import torch
import ultralytics
import yaml
from ultralytics import YOLO
from ultralytics.cfg import DEFAULT_CFG_DICT, get_save_dir
from ultralytics.utils import LOGGER, IterableSimpleNamespace, colorstr

from ds2d2_yolo.config import REFERENCE, check_args, resolve_data, split_overrides, warn_args
from ds2d2_yolo.integration.trainer import DS2D2Trainer, resolve_task
from ds2d2_yolo.methods import distill_methods

# Rows a comparison can run: every method with its defaults (in the table's order), then DS2D2's ablations.
METHODS: dict[str, dict[str, Any]] = {
    **{m: {"distill": m} for m in ("none", "native", "cwd", "mgd", "ds2d2", "pseudo") if m in distill_methods()},
    "ds2d2-reference": {"distill": "ds2d2", **REFERENCE},
    # The reference's streams one at a time (what each costs and brings).
    "ds2d2-explicit": {"distill": "ds2d2", **REFERENCE, "implicit_full": False, "implicit_high": False},
    "ds2d2-implicit": {"distill": "ds2d2", **REFERENCE, "explicit": False},
    "ds2d2-nodisw": {"distill": "ds2d2", "disw": "none"},
    "ds2d2-db2": {"distill": "ds2d2", "wavelet": "db2"},
}
# Keys a comparison sets itself for every run; given among the training keys they would contradict it.
OWN_KEYS = {
    "distill": "the method is set per run by methods=, e.g. methods=none,ds2d2",
    "seed": "the seeds are set by seeds=, e.g. seeds=3 (0, 1, 2) or seeds=0,3",
    "resume": "a comparison resumes by itself: rerun the same command with exist_ok=True into the same folder",
}
# Keys that say where a run writes and how much it prints, not what it trains: a record that differs only in these is
# still the planned run.
OUTPUT_KEYS = ("name", "exist_ok", "verbose", "plots")
# The comparison's defaults under the user's keys: every epoch but the last unvalidated (Ultralytics always validates
# the final one), no plots, quiet logs.
RUN_DEFAULTS = {"val": False, "plots": False, "verbose": False}


# ------------------------------------------------------------------------------------------------------------------
# One run (child side) and its record


def run_one(spec: dict[str, Any]) -> dict[str, Any]:
    """Train one (method, seed) in this process and return its record.

    Args:
        spec (dict): "method" (a row name), "seed", "overrides" (the `DS2D2Trainer` overrides, `epochs` included) and
            optionally "val_every" (validate every N epochs and on each of the last 5; 0: the final epoch only).

    Returns:
        (dict): The run's record, as results.jsonl keeps it.
    """
    commit = git_commit()  # at the start: the checkout may move on while a long run trains
    steps: list[float] = []
    t0 = [0.0]
    trainer = DS2D2Trainer(overrides=spec["overrides"])

    def start(_):
        t0[0] = time.perf_counter()

    def end(_):
        steps.append(time.perf_counter() - t0[0])

    trainer.add_callback("on_train_batch_start", start)
    trainer.add_callback("on_train_batch_end", end)
    every, epochs = int(spec.get("val_every", 0)), int(spec["overrides"]["epochs"])
    # Validate every `every` epochs for the curve, and on each of the last 5 for the plateau mean; results.csv repeats
    # the last metrics on the other epochs, so only these rows are read back.
    validated = {e for e in range(1, epochs + 1) if every and (e % every == 0 or e > epochs - 5)} | {epochs}
    if every:

        def schedule(tr):
            tr.args.val = tr.epoch + 1 in validated

        trainer.add_callback("on_train_epoch_end", schedule)
    t = time.perf_counter()
    trainer.train()
    m = trainer.metrics
    warm = steps[min(len(steps) - 1, 3) :]  # the first steps include lazy initialisation
    curve = [c for c in validation_curve(Path(trainer.save_dir) / "results.csv") if c["epoch"] in validated]
    last5 = [c for c in curve if c["epoch"] > epochs - 5] if every else []
    return {
        "method": spec["method"],
        "seed": spec["seed"],
        "mAP50": float(m.get("metrics/mAP50(B)", float("nan"))),
        "mAP50-95": float(m.get("metrics/mAP50-95(B)", float("nan"))),
        "s_per_step": statistics.median(warm) if warm else float("nan"),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "train_s": time.perf_counter() - t,
        "epochs": spec["overrides"]["epochs"],
        "threads": torch.get_num_threads(),  # timings depend on it, and so can float summation order
        # Reruns of one seed on another CPU differ by float rounding, which training amplifies.
        "machine": {"cpu": cpu_model(), "torch": torch.__version__, "ultralytics": ultralytics.__version__},
        # The resolved method settings (cfg/ds2d2.yaml under the overrides), so a record still says what it ran
        # after the shipped defaults change.
        "args": record_args(trainer.ds2d2),
        "nbs": int(trainer.args.nbs),
        "batch": int(trainer.args.batch),
        "optimizer_updates": optimizer_updates(trainer),
        "mAP50_last5": statistics.fmean(c["mAP50"] for c in last5) if last5 else float("nan"),
        "mAP50-95_last5": statistics.fmean(c["mAP50-95"] for c in last5) if last5 else float("nan"),
        "curve": curve,
        "commit": commit,
        "settings": record_settings(spec["overrides"]),
    }


def train_run(spec: dict[str, Any], log: Path) -> dict[str, Any] | None:
    """Train one (method, seed) in a child process, so its peak RSS and its failures are its own.

    Args:
        spec (dict): The run, as `run_one` takes it.
        log (Path): File for the child's output (the last 20,000 characters of stdout and of stderr).

    Returns:
        (dict | None): The run's record, or None when the run failed (its log says why).
    """
    proc = subprocess.run(
        [sys.executable, "-m", "ds2d2_yolo.tools.compare", json.dumps(spec)], capture_output=True, text=True
    )
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text(proc.stdout[-20000:] + proc.stderr[-20000:])
    lines = [x for x in proc.stdout.splitlines() if x.startswith("{")]
    return None if proc.returncode or not lines else json.loads(lines[-1])


def optimizer_updates(trainer: Any) -> int:
    """Optimizer steps the run took: Ultralytics accumulates gradients to `nbs` images before each step."""
    accumulate = max(round(trainer.args.nbs / trainer.batch_size), 1)
    return int(trainer.epochs * math.ceil(len(trainer.train_loader) / accumulate))


def validation_curve(path: Path) -> list[dict[str, float]]:
    """The epochs Ultralytics validated (results.csv rows with a metric), as epoch, mAP50, mAP50-95."""
    if not path.exists():
        return []
    out = []
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            row = {k.strip(): v.strip() for k, v in row.items() if k}
            m50, m95 = row.get("metrics/mAP50(B)"), row.get("metrics/mAP50-95(B)")
            try:
                out.append({"epoch": int(float(row["epoch"])), "mAP50": float(m50), "mAP50-95": float(m95)})
            except (KeyError, TypeError, ValueError):
                continue
    return out


def cpu_model() -> str:
    """The CPU's model name (Linux /proc/cpuinfo), else what the platform module knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_commit() -> str:
    """The commit of the checkout this package runs from, with `+dirty` when tracked files differ from it.

    "unknown" for an installed copy (no checkout of its own, even inside some other repository's folder).
    """
    root = Path(__file__).resolve().parents[2]
    try:
        top = subprocess.check_output(
            ["git", "rev-parse", "--show-toplevel"], cwd=root, text=True, stderr=subprocess.DEVNULL
        )
        if Path(top.strip()).resolve() != root:
            return "unknown"
        head = subprocess.check_output(["git", "rev-parse", "HEAD"], cwd=root, text=True, stderr=subprocess.DEVNULL)
        dirty = subprocess.check_output(["git", "status", "--porcelain", "-uno"], cwd=root, text=True)
        return head.strip() + ("+dirty" if dirty.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def record_args(ds2d2: dict[str, Any]) -> dict[str, Any]:
    """The resolved DS2D2 settings a run record keeps: everything but the machine paths."""
    return {k: v for k, v in ds2d2.items() if k not in ("teacher", "amplifier")}


def record_settings(overrides: dict[str, Any]) -> dict[str, Any]:
    """The training keys a run record keeps: every override but the machine paths of the model, data and teacher."""
    return {k: v for k, v in overrides.items() if k not in ("model", "data", "teacher", "project")}


def _method_args(args: dict[str, Any]) -> dict[str, Any]:
    """The settings that change what a method trains (a `none` run does not depend on DS2D2's weights)."""
    d = args["distill"]
    if d in ("none", "native"):
        return {"distill": d}
    if d in ("cwd", "mgd"):
        return {k: v for k, v in args.items() if k == "distill" or k.startswith(f"{d}_")}
    return {k: v for k, v in args.items() if not k.startswith(("cwd_", "mgd_"))}


def _trained_settings(settings: dict[str, Any]) -> dict[str, Any]:
    """Settings without the keys that only say where a run writes and how much it prints."""
    return {k: v for k, v in settings.items() if k not in OUTPUT_KEYS}


def is_done(
    record: dict[str, Any],
    method: str,
    seed: int,
    epochs: int,
    args: dict[str, Any],
    settings: dict[str, Any] | None = None,
) -> bool:
    """Whether a results.jsonl record is the planned run, so that run can be skipped.

    Args:
        record (dict): One finished run's record.
        method (str): Planned row (a METHODS key, e.g. "ds2d2-db2").
        seed (int): Planned seed.
        epochs (int): Planned epochs.
        args (dict): Planned resolved DS2D2 settings, as `record_args` gives them.
        settings (dict | None): Planned training keys, as `record_settings` gives them; None leaves them unchecked
            (the research tracks, whose records span machines and worker counts).

    Returns:
        (bool): True when method, seed and epochs match, the settings that matter to the method do too, and so do the
            training keys when given.
    """
    if (record["method"], record["seed"], record["epochs"]) != (method, seed, epochs):
        return False
    if settings is not None:
        # Through JSON as the record went, so a tuple and the list it was saved as compare equal.
        planned = json.loads(json.dumps(_trained_settings(settings)))
        if _trained_settings(record.get("settings", {})) != planned:
            return False
    if "args" in record:
        return _method_args(record["args"]) == _method_args(args)
    # Records from before `args` existed: an untagged one ran the defaults of its folder, but one tagged with a
    # config came from a merged sweep and cannot say which of its configurations this run would repeat.
    return "config" not in record


def teacher_map(
    teacher: str | Path,
    data: str | Path,
    imgsz: int,
    project: Path,
    device: Any = "cpu",
    batch: int = 16,
    name: str | None = None,
) -> dict[str, float]:
    """Validate the teacher on the same split and image size the students are reported on."""
    r = YOLO(str(teacher)).val(
        data=str(data),
        imgsz=imgsz,
        batch=batch,
        plots=False,
        device=device,
        verbose=False,
        project=str(project),
        name=name,
    )
    return {"mAP50": float(r.box.map50), "mAP50-95": float(r.box.map)}


# ------------------------------------------------------------------------------------------------------------------
# Table and plot


def read_results(path: Path) -> list[dict[str, Any]]:
    """The run records of a results.jsonl file, in the order they finished (none when it does not exist)."""
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.exists() else []


def row_label(record: dict[str, Any]) -> str:
    """A record's table row: its method, plus its `config` tag where one marks a variant (e.g. `ds2d2 (x3)`)."""
    return f"{record['method']} ({record['config']})" if record.get("config") else record["method"]


def _stats(v: list[float]) -> tuple[float, float]:
    """Mean and sample std of the finite values; the std is NaN below two values (one seed has no spread)."""
    v = [x for x in v if not math.isnan(x)]
    if not v:
        return float("nan"), float("nan")
    return statistics.fmean(v), (statistics.stdev(v) if len(v) > 1 else float("nan"))


def _pm(mean: float, std: float, signed: bool = False) -> str:
    """Mean ± std, or the mean alone where there is no spread to show (a single seed); `signed` prints the sign."""
    m = f"{mean:+.3f}" if signed else f"{mean:.3f}"
    return f"{m} ± {std:.3f}" if math.isfinite(std) else m


def write_table(
    folder: Path, heading: str, against: Sequence[str] = (), title: str = "", logs: Path | None = None
) -> Path:
    """Rebuild `table.md` and `plot.png` from results.jsonl: mean ± std over seeds per method (and config tag).

    Args:
        folder (Path): Folder holding results.jsonl (and teacher.json); the table and plot are written there.
        heading (str): The table's first words, before the teacher's mAP (e.g. "Track `dota`, split `report`").
        against (Sequence[str]): Row labels (e.g. `ds2d2 (x1)`) to pair every other row with, seed by seed, in a
            table of their own after the one against `none`: the comparison a default is chosen by.
        title (str): The plot's title.
        logs (Path | None): Where failed runs leave their logs, for the note written when no run has finished
            (default: `folder`).

    Returns:
        (Path): The written `table.md`.

    Raises:
        ValueError: When a row in `against` has no runs.
    """
    rows = read_results(folder / "results.jsonl")
    table = folder / "table.md"
    if not rows:  # every run failed, or none has finished: say so rather than print an empty table
        msg = f"No finished runs in {folder / 'results.jsonl'} yet; a failed run leaves its log in {logs or folder}."
        table.write_text(f"{msg}\n")
        print(msg)
        return table
    teacher = json.loads((folder / "teacher.json").read_text()) if (folder / "teacher.json").exists() else {}
    by: dict[str, list[dict]] = {}
    for r in rows:
        by.setdefault(row_label(r), []).append(r)
    missing = [a for a in against if a not in by]
    if missing:
        raise ValueError(
            f"against='{missing[0]}' has no runs in {folder / 'results.jsonl'}; choose from {', '.join(sorted(by))}"
        )
    none50 = _stats([r["mAP50"] for r in by.get("none", [])])[0]
    lines = [
        f"{heading}; teacher mAP50 {teacher.get('mAP50', float('nan')):.3f}, "
        f"mAP50-95 {teacher.get('mAP50-95', float('nan')):.3f}.",
        "",
        "| method | seeds | mAP50 | mAP50-95 | gap closure (mAP50) | s/step | peak RSS (MB) |",
        "|---|---|---|---|---|---|---|",
    ]
    rank = {m: i for i, m in enumerate(METHODS)}
    order = sorted(by, key=lambda k: (rank.get(by[k][0]["method"], len(rank)), k))
    for m in order:
        rs = sorted(by[m], key=lambda r: r["seed"])
        a50, s50 = _stats([r["mAP50"] for r in rs])
        a95, s95 = _stats([r["mAP50-95"] for r in rs])
        sp, ss = _stats([r["s_per_step"] for r in rs])
        mem, _ = _stats([r["peak_rss_mb"] for r in rs])
        span = teacher.get("mAP50", float("nan")) - none50
        gap = (a50 - none50) / span if m != "none" and math.isfinite(span) and span != 0 else None  # else undefined
        lines.append(
            f"| {m} | {','.join(str(r['seed']) for r in rs)} | {_pm(a50, s50)} | {_pm(a95, s95)} | "
            f"{'—' if gap is None else f'{100 * gap:.1f} %'} | {_pm(sp, ss)} | {mem:.0f} |"
        )
    lines += [
        "",
        "± is the standard deviation over seeds (none shown for a single seed); gap closure = (method − none) / "
        "(teacher − none) on mAP50.",
        "",
        *_per_seed_lines(by, order, against),
    ]
    table.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    _plot(by, order, teacher, folder / "plot.png", title)
    return table


def _per_seed_lines(by: dict[str, list[dict]], order: list[str], against: Sequence[str] = ()) -> list[str]:
    """Per-seed mAP table, then each method's difference to `none` (and to each row in `against`) paired by seed.

    Pairing by seed removes the part of the spread that every method shares on a seed (the same initial student,
    the same augmentation draws), so it resolves smaller differences than comparing means does.
    """
    seeds = sorted({r["seed"] for m in order for r in by[m]})
    val = {m: {r["seed"]: r for r in by[m]} for m in order}
    lines = [
        "Per seed, mAP50 (mAP50-95):",
        "",
        f"| seed | {' | '.join(order)} |",
        f"|---|{'---|' * len(order)}",
    ]
    for s in seeds:
        cells = [f"{val[m][s]['mAP50']:.3f} ({val[m][s]['mAP50-95']:.3f})" if s in val[m] else "—" for m in order]
        lines.append(f"| {s} | {' | '.join(cells)} |")
    for ref in dict.fromkeys(["none", *against]):
        if ref in val:
            lines += _paired_lines(val, order, seeds, ref)
    return lines


def _paired_lines(val: dict[str, dict[int, dict]], order: list[str], seeds: list[int], ref: str) -> list[str]:
    """Every other row's mAP difference to row `ref` over the seeds both ran: mean ± std, and seeds ahead."""
    lines = [
        "",
        f"Difference to `{ref}` on the same seeds (mean ± std of the per-seed differences):",
        "",
        f"| method | paired seeds | mAP50 − {ref} | mAP50-95 − {ref} | seeds ahead of {ref} (mAP50) |",
        "|---|---|---|---|---|",
    ]
    base = val[ref]
    for m in (m for m in order if m != ref):
        common = [
            s for s in seeds if s in val[m] and s in base and math.isfinite(val[m][s]["mAP50"] - base[s]["mAP50"])
        ]
        d50, d95 = ([val[m][s][k] - base[s][k] for s in common] for k in ("mAP50", "mAP50-95"))
        if d50:
            lines.append(
                f"| {m} | {','.join(map(str, common))} | {_pm(*_stats(d50), signed=True)} | "
                f"{_pm(*_stats(d95), signed=True)} | {sum(x > 0 for x in d50)}/{len(d50)} |"
            )
    return lines


def _plot(by: dict, order: list[str], teacher: dict, path: Path, title: str) -> None:
    """Bars of each row's mean mAP50 and mAP50-95 with the spread over seeds, the teacher's as dashed lines."""
    matplotlib.use("Agg")

    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(order)), 4))
    x = range(len(order))
    for k, (key, off) in enumerate((("mAP50", -0.2), ("mAP50-95", 0.2))):
        means = [_stats([r[key] for r in by[m]])[0] for m in order]
        stds = [_stats([r[key] for r in by[m]])[1] for m in order]
        stds = [s if math.isfinite(s) else 0.0 for s in stds]
        ax.bar([i + off for i in x], means, 0.4, yerr=stds, capsize=3, label=key, color=f"C{k}")
        if teacher:
            ax.axhline(teacher[key], color=f"C{k}", ls="--", lw=1, label=f"teacher {key}")
    ax.set_xticks(list(x), order, rotation=30, ha="right")
    ax.set_ylabel("mAP")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ------------------------------------------------------------------------------------------------------------------
# The comparison on the user's own data


def method_names(methods: str | Sequence[str] | None) -> list[str]:
    """The methods a grid runs: a comma-separated string or a list as given; every method for None or an empty list."""
    return methods.split(",") if isinstance(methods, str) else list(methods or METHODS)


def seed_list(seeds: int | str | Sequence[int]) -> list[int]:
    """The seeds of a comparison: a count N (seeds 0 to N-1) or the seeds themselves (a list or "0,3,4").

    Raises:
        ValueError: On anything else, or no seed at all.
    """
    text = ",".join(map(str, seeds)) if isinstance(seeds, Sequence) and not isinstance(seeds, str) else seeds
    hint = f"'seeds={text}' must be a count (seeds=3 runs seeds 0, 1, 2) or the seeds themselves (seeds=0,3,4)"
    if isinstance(seeds, int) and not isinstance(seeds, bool):
        if seeds < 1:
            raise ValueError(hint)
        return list(range(seeds))
    if isinstance(seeds, str):
        parts = [s.strip() for s in seeds.split(",") if s.strip()]
        if not all(p.isdigit() for p in parts):
            raise ValueError(hint)
        out = [int(p) for p in parts]
    elif isinstance(seeds, Sequence):
        out = list(seeds)
        if not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in out):
            raise ValueError(hint)
    else:
        raise ValueError(hint)
    if not out:
        raise ValueError(hint)
    return list(dict.fromkeys(out))


def _same_file(path: Any) -> str | None:
    """A path as a comparison folder's args.yaml records it: absolute where it names a file, else as given."""
    if path is None:
        return None
    p = Path(str(path))
    return str(p.resolve()) if p.exists() else str(path)


@dataclass
class ComparePlan:
    """A checked comparison: what `run_plan` trains, where, and how to tell the runs it can skip.

    Attributes:
        save_dir (Path): The comparison's run folder (not created yet).
        task (str): "detect" or "obb".
        names (list[str]): Rows (METHODS keys), in the order given.
        seeds (list[int]): Seeds, each run for every row.
        epochs (int): Epochs per run.
        val_every (int): Validate every N epochs and on each of the last 5 (0: the final epoch only).
        inputs (dict): model, data and teacher, as args.yaml records them.
        overrides (dict): Per row, the `DS2D2Trainer` overrides without the seed and the run folder's name.
        planned (dict): Per row, the resolved DS2D2 settings its records must hold to count as done.
        args (dict): What args.yaml records: the inputs and every key of the comparison.
    """

    save_dir: Path
    task: str
    names: list[str]
    seeds: list[int]
    epochs: int
    val_every: int
    inputs: dict[str, str | None]
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    planned: dict[str, dict[str, Any]] = field(default_factory=dict)
    args: dict[str, Any] = field(default_factory=dict)

    def run_overrides(self, name: str, seed: int) -> dict[str, Any]:
        """The trainer overrides of one (row, seed) run: the row's, with the seed and a run folder of its own."""
        return {**self.overrides[name], "seed": seed, "name": f"{name}-s{seed}"}


def plan_compare(
    model: str | Path,
    data: str | Path,
    teacher: str | Path | None = None,
    methods: str | Sequence[str] = "none,ds2d2",
    seeds: int | str | Sequence[int] = 3,
    epochs: int | None = None,
    project: str | Path | None = None,
    name: str | None = None,
    exist_ok: bool = False,
    val_every: int = 0,
    task: str | None = None,
    **train: Any,
) -> ComparePlan:
    """Check a comparison and plan it, creating nothing: every mistake that can be known before training fails here.

    Args:
        model (str | Path): Student model yaml or .pt, the same for every run.
        data (str | Path): Data yaml.
        teacher (str | Path | None): Teacher .pt; needed by every method but `none`.
        methods (str | Sequence[str]): Rows to run, comma-separated (METHODS keys).
        seeds (int | str | Sequence[int]): A count N (seeds 0 to N-1) or the seeds themselves.
        epochs (int | None): Epochs per run (Ultralytics' default when None).
        project (str | Path | None): Parent of the run folder (default `runs/<task>`, as Ultralytics has it).
        name (str | None): Run folder name (default `compare`, then `compare-2`, ...).
        exist_ok (bool): Reuse the folder, skipping the runs it already holds with the same settings.
        val_every (int): Validate every N epochs and on each of the last 5 (0: the final epoch only).
        task (str | None): "detect" or "obb" (default: the model's own).
        **train (Any): Further training keys for every run, Ultralytics' and DS2D2's (e.g. imgsz=640, lambda_exl=0.2).

    Returns:
        (ComparePlan): The checked plan, for `run_plan`.

    Raises:
        ValueError: On an unknown method, bad seeds or epochs, a missing teacher, a training key the comparison sets
            itself, a bad DS2D2 value (`DS2D2ArgError`), or a reused folder that compared another model, data or
            teacher.
    """
    names = list(dict.fromkeys(m.strip() for m in method_names(methods) if m.strip()))
    if not names:
        raise ValueError(f"'methods={methods}' names no method; choose from {', '.join(METHODS)}")
    bad = [m for m in names if m not in METHODS]
    if bad:
        raise ValueError(f"'methods={methods}': '{bad[0]}' is unknown; choose from {', '.join(METHODS)}")
    seeds = seed_list(seeds)
    epochs = int(DEFAULT_CFG_DICT["epochs"] if epochs is None else epochs)
    if epochs < 1:
        raise ValueError(f"'epochs={epochs}' must be a whole number >= 1")
    if isinstance(val_every, bool) or not isinstance(val_every, int) or val_every < 0:
        raise ValueError(f"'val_every={val_every}' must be a whole number >= 0 (0 validates the final epoch only)")
    given = [k for k in train if k in OWN_KEYS]
    if given:
        raise ValueError(f"'{given[0]}' is not a training key of compare: {OWN_KEYS[given[0]]}")
    needs = [m for m in names if METHODS[m]["distill"] != "none"]
    if needs and not teacher:
        raise ValueError(f"methods '{needs[0]}' needs teacher=path/to/teacher.pt (or methods=none alone)")
    data = resolve_data(str(data))
    # Every record names its task, so a rerun that leaves the task word out still matches the runs made with it.
    task = task or resolve_task({"model": str(model)})
    ul, mine = split_overrides(train)
    planned, overrides = {}, {}
    for n in names:
        # The row's own keys last: `ds2d2-explicit` stays explicit-only whatever DS2D2 keys are given for every row.
        cfg = check_args({**mine, "teacher": teacher, **METHODS[n]})
        warn_args(cfg)  # raises for settings no run could train with (amp_epochs=0 with an untrained amplifier)
        planned[n] = record_args(cfg)
        overrides[n] = {
            **RUN_DEFAULTS,
            **ul,
            **mine,
            "model": str(model),
            "data": str(data),
            **({"teacher": str(teacher)} if teacher and METHODS[n]["distill"] != "none" else {}),
            "epochs": epochs,
            "task": task,
            **METHODS[n],
        }
    save_dir = get_save_dir(
        IterableSimpleNamespace(task=task, mode="compare", project=project, name=name, exist_ok=exist_ok)
    )
    inputs = {"model": _same_file(model), "data": _same_file(data), "teacher": _same_file(teacher)}
    done = save_dir / "args.yaml"
    if done.is_file():
        before = yaml.safe_load(done.read_text()) or {}
        other = [k for k in inputs if before.get(k) != inputs[k]]
        if other:
            k = other[0]
            raise ValueError(
                f"{save_dir} compared {k}={before.get(k)}, not {k}={inputs[k]}; start a new comparison with another "
                "name= or without exist_ok=True"
            )
    for n in names:
        overrides[n]["project"] = str(save_dir)
        overrides[n]["exist_ok"] = True  # a failed run is trained again into its own folder
    args = {**inputs, "methods": ",".join(names), "seeds": seeds, "epochs": epochs, "val_every": val_every, **train}
    return ComparePlan(save_dir, task, names, seeds, epochs, val_every, inputs, overrides, planned, args)


def run_plan(plan: ComparePlan) -> Path:
    """Train every planned run results.jsonl does not hold yet (seed by seed), then write the table and the plot.

    Args:
        plan (ComparePlan): From `plan_compare`.

    Returns:
        (Path): The comparison's run folder.
    """
    out = plan.save_dir
    out.mkdir(parents=True, exist_ok=True)
    # The latest call's keys; model, data and teacher are the folder's own (plan_compare refuses others).
    (out / "args.yaml").write_text(yaml.safe_dump(json.loads(json.dumps(plan.args)), sort_keys=False))
    results = out / "results.jsonl"
    teacher = plan.inputs["teacher"]
    if teacher and not (out / "teacher.json").exists():
        ul = split_overrides(plan.overrides[plan.names[0]])[0]
        batch = ul.get("batch", DEFAULT_CFG_DICT["batch"])
        score = teacher_map(
            teacher,
            plan.inputs["data"],
            ul.get("imgsz", DEFAULT_CFG_DICT["imgsz"]),
            out,
            device=ul.get("device"),
            batch=batch if isinstance(batch, int) and batch > 0 else DEFAULT_CFG_DICT["batch"],
            name="teacher-val",
        )
        (out / "teacher.json").write_text(json.dumps(score))
    records = read_results(results)
    # Seed-major order: an interrupted comparison still compares every method on the same seeds.
    for seed in plan.seeds:
        for name in plan.names:
            overrides = plan.run_overrides(name, seed)
            settings = record_settings(overrides)
            if any(is_done(r, name, seed, plan.epochs, plan.planned[name], settings) for r in records):
                LOGGER.info(f"compare: {name} seed {seed} is in {results} already; skipped")
                continue
            LOGGER.info(f"compare: {name} seed {seed} ({plan.epochs} epochs) -> {out / overrides['name']}")
            spec = {"method": name, "seed": seed, "overrides": overrides, "val_every": plan.val_every}
            log = out / f"{overrides['name']}.log"
            record = train_run(spec, log)
            if record is None:
                LOGGER.warning(f"compare: {name} seed {seed} failed; see {log}")
                continue
            with open(results, "a") as f:
                f.write(json.dumps(record) + "\n")
    model, data = Path(str(plan.inputs["model"])).name, Path(str(plan.inputs["data"])).name
    epochs = f"{plan.epochs} epoch{'' if plan.epochs == 1 else 's'}"
    write_table(out, f"Student `{model}` on `{data}`, {epochs}", title=f"{model} on {data}")
    LOGGER.info(f"Results saved to {colorstr('bold', out)}")
    return out


def run_compare(model: str | Path, data: str | Path, **kwargs: Any) -> Path:
    """Check, plan and run a comparison (`plan_compare`'s arguments); returns its run folder.

    Examples:
        >>> from ds2d2_yolo.tools.compare import run_compare
        >>> run_compare("yolov8n-obb.yaml", "data.yaml", teacher="teacher.pt", methods="none,ds2d2", seeds=3, epochs=50)
    """
    return run_plan(plan_compare(model, data, **kwargs))


if __name__ == "__main__":
    print(json.dumps(run_one(json.loads(sys.argv[1]))), flush=True)
