"""Figures of the scans: metric vs unfreeze epoch, vs number of GPT blocks, vs training-set size, and the
data-efficiency bar chart.

The inputs are the rows of :func:`tauml.pipeline.scan.summarize` (mean ± std over seeds) and of
:func:`tauml.pipeline.scan.data_efficiency`.  One colour per strategy (:data:`tauml.plots.COLORS`); when rows of
several tasks are given, each task gets its own line style.  Every function returns the figure; a figure it
creates itself (no ``ax`` given) is closed for pyplot at once, so a notebook shows it with ``display(fig)`` exactly
once (Jupyter's inline backend shows only the figures pyplot still holds at the end of a cell).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib.pyplot as plt
import numpy as np

from tauml.plots import COLORS, STRATEGY_LABELS, closes_own_figure, label

#: Axis labels of the metrics a scan stores.
METRIC_LABELS: dict[str, str] = {
    "auc": "AUC",
    "misid_at_80": r"$P_\mathrm{misID}$ at $\varepsilon_\tau = 80\%$",
    "median": r"Response median $q_{50}$",
    "iqr": r"Response IQR $q_{75} - q_{25}$",
    "resolution": r"Resolution IQR$\,/\,q_{50}$",
    "accuracy": "Decay-mode accuracy",
    "weighted_auc": "Decay-mode AUC (weighted)",  # short: longer runs past the axis into the x label
    "macro_f1": "Decay-mode macro $F_1$",
    "best_val_loss": "Best validation loss",
    "final_val_loss": "Final validation loss",
    "final_train_loss": "Final training loss",
}
TASK_LABELS: dict[str, str] = {"id": "identification", "reg": "regression", "dm": "decay mode"}
_TASK_STYLES: tuple[str, ...] = ("-", "--", ":")


def metric_label(metric: str) -> str:
    return METRIC_LABELS.get(metric, metric)


def _axis(ax: plt.Axes | None) -> tuple[plt.Figure, plt.Axes]:
    if ax is None:
        _, ax = plt.subplots(figsize=(7.0, 5.5))
    return ax.figure, ax


def _lines(rows: Sequence[Mapping[str, Any]], by: str) -> dict[tuple[str, str], tuple[np.ndarray, ...]]:
    """(task, strategy) -> (x, mean, std) sorted by x."""
    if not rows:
        raise ValueError("no summary rows to plot: run tauml.pipeline.scan.summarize on the scan's records first")
    grouped: dict[tuple[str, str], list[tuple[float, float, float]]] = {}
    for row in rows:
        if by not in row:
            raise KeyError(f"the rows were not summarised by {by!r}: use summarize(records, by={by!r}, metric=...)")
        grouped.setdefault((row["task"], row["strategy"]), []).append((row[by], row["mean"], row["std"]))
    return {key: tuple(np.asarray(v, dtype=np.float64) for v in zip(*sorted(points)))
            for key, points in grouped.items()}


def _style(task: str, strategy: str, tasks: list[str], index: int) -> dict[str, Any]:
    name = STRATEGY_LABELS.get(strategy, strategy)
    if len(tasks) > 1:
        name = f"{name} ({TASK_LABELS.get(task, task)})"
    return {"color": COLORS.get(strategy, f"C{index}"), "label": name,
            "linestyle": _TASK_STYLES[tasks.index(task) % len(_TASK_STYLES)]}


def _plot_errorbars(ax: plt.Axes, rows: Sequence[Mapping[str, Any]], by: str) -> None:
    lines = _lines(rows, by)
    tasks = list(dict.fromkeys(task for task, _ in lines))
    for i, ((task, strategy), (x, mean, std)) in enumerate(lines.items()):
        style = _style(task, strategy, tasks, i)
        ax.errorbar(x, mean, yerr=std, marker="o", markersize=5, capsize=3, **style)


@closes_own_figure
def plot_unfreeze_scan(rows: Sequence[Mapping[str, Any]], epochs: int | None = None, ax: plt.Axes | None = None,
                       text: str = "") -> plt.Figure:
    """Metric vs the epoch at which the backbone is unfrozen (mean ± std over seeds), from
    ``summarize(records, by="unfreeze_epoch", metric=...)``.  With ``epochs``, the point unfreeze_epoch = epochs
    is marked as the never-unfrozen (fixed) backbone."""
    fig, ax = _axis(ax)
    _plot_errorbars(ax, rows, "unfreeze_epoch")
    if epochs is not None:
        ax.axvline(epochs, color="grey", linestyle=":", linewidth=1, label="Never unfrozen (= fixed backbone)")
    ax.set_xlabel("Epoch at which the backbone is unfrozen")
    ax.set_ylabel(metric_label(rows[0]["metric"]))
    ax.legend(fontsize="small", loc="best")
    label(ax, text)
    return fig


@closes_own_figure
def plot_block_scan(rows: Sequence[Mapping[str, Any]], ax: plt.Axes | None = None, text: str = "") -> plt.Figure:
    """Metric vs the number of pretrained GPT blocks used (mean ± std over seeds), from
    ``summarize(records, by="n_gpt_blocks", metric=...)``."""
    fig, ax = _axis(ax)
    _plot_errorbars(ax, rows, "n_gpt_blocks")
    blocks = sorted({int(r["n_gpt_blocks"]) for r in rows})
    ax.set_xticks(blocks)
    ax.minorticks_off()
    ax.set_xlim(blocks[0] - 0.5, blocks[-1] + 0.5)
    ax.set_xlabel("Number of GPT blocks used")
    ax.set_ylabel(metric_label(rows[0]["metric"]))
    ax.legend(fontsize="small")
    label(ax, text)
    return fig


@closes_own_figure
def plot_train_size_scan(rows: Sequence[Mapping[str, Any]], reference_value: float | None = None,
                         reference_label: str = STRATEGY_LABELS["reference"], ax: plt.Axes | None = None,
                         text: str = "") -> plt.Figure:
    """Data-efficiency curves: metric vs training-set size (log x), mean line with a ± std band per strategy,
    from ``summarize(records, by="train_size", metric=...)``.  ``reference_value`` draws a horizontal line,
    e.g. the no-learning reference of the task (the reco-jet resolution, chance accuracy)."""
    fig, ax = _axis(ax)
    lines = _lines(rows, "train_size")
    tasks = list(dict.fromkeys(task for task, _ in lines))
    for i, ((task, strategy), (x, mean, std)) in enumerate(lines.items()):
        style = _style(task, strategy, tasks, i)
        ax.plot(x, mean, marker="o", markersize=5, **style)
        ax.fill_between(x, mean - std, mean + std, color=style["color"], alpha=0.25, linewidth=0)
    if reference_value is not None:
        ax.axhline(reference_value, color=COLORS["reference"], linestyle="--", linewidth=1, label=reference_label)
    ax.set_xscale("log")
    sizes = sorted({int(r["train_size"]) for r in rows})
    ax.set_xticks(sizes, [f"{n:,}" for n in sizes])  # the scanned sizes, not crowded log-axis minor labels
    ax.minorticks_off()
    ax.set_xlabel("Number of labelled training jets")
    ax.set_ylabel(metric_label(rows[0]["metric"]))
    ax.legend(fontsize="small")
    label(ax, text)
    return fig


@closes_own_figure
def plot_data_efficiency(rows: Sequence[Mapping[str, Any]], ax: plt.Axes | None = None,
                         text: str = "") -> plt.Figure:
    """Bar chart of :func:`tauml.pipeline.scan.data_efficiency` (log y): one bar per strategy, its height the factor
    n_needed(reference) / n_needed(strategy).  Bounds are drawn hatched with an arrow: up for "at least"
    (reached at the smallest scanned size), down for "at most" (not reached within the scan)."""
    if not rows:
        raise ValueError("no data-efficiency rows to plot: run tauml.pipeline.scan.data_efficiency first")
    fig, ax = _axis(ax)
    tasks = list(dict.fromkeys(r["task"] for r in rows))
    names, heights = [], []
    for i, row in enumerate(rows):
        low, high = row["efficiency_range"]
        exact = row["efficiency"] is not None
        if exact:
            value, arrow = row["efficiency"], ""
        elif row["status"] == "beyond_largest":
            value, arrow = high, "v"  # the efficiency is below this
        else:
            value, arrow = low, "^"  # the efficiency is at least this
        heights.append(value)
        color = COLORS.get(row["strategy"], f"C{i}")
        ax.bar(i, value, color=color, alpha=0.85 if exact else 0.4, hatch="" if exact else "//", edgecolor=color)
        if arrow and value > 0 and np.isfinite(value):
            ax.plot(i, value, marker=arrow, color=color, markersize=10)
        prefix = "" if exact else ("≥" if arrow == "^" else "<")
        if value > 0 and np.isfinite(value):
            ax.annotate(f"{prefix}{value:.3g}", (i, value), textcoords="offset points",
                        xytext=(0, -16 if arrow == "v" else 6), ha="center", fontsize="small")
        name = STRATEGY_LABELS.get(row["strategy"], row["strategy"])
        names.append(name if len(tasks) == 1 else f"{name}\n({TASK_LABELS.get(row['task'], row['task'])})")
    ax.axhline(1.0, color="grey", linestyle=":", linewidth=1)
    ax.set_yscale("log")
    shown = [v for v in heights if v > 0 and np.isfinite(v)] + [1.0]
    ax.set_ylim(min(shown) / 3.0, max(shown) * 4.0)  # room for the value labels
    ax.set_xticks(range(len(rows)), names, rotation=15, ha="right", fontsize="x-small")
    ax.minorticks_off()
    reference = STRATEGY_LABELS.get(rows[0]["reference_strategy"], rows[0]["reference_strategy"])
    ax.set_ylabel("Data efficiency")
    ax.text(0.03, 0.96, f"relative to {reference}", transform=ax.transAxes, va="top", fontsize="small")
    label(ax, text)
    return fig
