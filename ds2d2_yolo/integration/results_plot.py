"""results.png for a distillation run: Ultralytics' curves with the distillation terms beside its training losses."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib
import matplotlib.pyplot as plt
import polars as pl


def results_columns(columns: list[str], terms: tuple[str, ...] = ()) -> tuple[list[str], list[str]]:
    """The two rows of results.png: training losses and distillation terms; metrics and validation losses."""
    top = [c for c in columns if c.startswith("train/") and ("loss" in c or c[len("train/") :] in terms)]
    bottom = [c for c in columns if c.startswith("metrics/")] + [c for c in columns if c.startswith("val/")]
    return top, [c for c in bottom if "loss" in c or c.startswith("metrics/")]


def plot_results(
    csv: str | Path, terms: tuple[str, ...] = (), on_plot: Any = None, out: str | Path | None = None
) -> Path | None:
    """Draw results.png like Ultralytics' `plot_results`, with the distillation terms' training columns added.

    Ultralytics plots only the columns named "*loss*" and "metrics/*", which leaves out `train/ex_low` and the other
    terms. Here the first row holds every training loss and term, the second the metrics and validation losses.

    Args:
        csv (str | Path): A results.csv.
        terms (tuple[str, ...]): Distillation term names (`train/<term>` columns).
        on_plot (Callable | None): Called with the written path, as Ultralytics' trainer expects.
        out (str | Path | None): Output file; None writes results.png beside the csv.

    Returns:
        (Path | None): The written file, or None when the csv has no rows.
    """
    matplotlib.use("Agg")

    csv = Path(csv)
    data = pl.read_csv(csv.read_bytes(), infer_schema_length=None)
    if not len(data):
        return None
    cols = data.columns
    top, bottom = results_columns(cols, terms)
    n = max(len(top), len(bottom), 1)
    fig, ax = plt.subplots(2, n, figsize=(2.6 * n + 1, 6), tight_layout=True, squeeze=False)
    x = data[cols[0]].to_numpy()
    for row, names in enumerate((top, bottom)):
        for i in range(n):
            a = ax[row, i]
            if i >= len(names):
                a.set_visible(False)
                continue
            y = data[names[i]].to_numpy().astype(float)
            a.plot(x, y, marker=".", label="results", linewidth=2, markersize=8)
            a.set_title(names[i], fontsize=10 if names[i][len("train/") :] in terms else 12)
    ax[0, 0].legend()
    path = Path(out) if out else csv.with_name("results.png")
    fig.savefig(path, dpi=200)
    plt.close(fig)
    if on_plot:
        on_plot(path)
    return path
