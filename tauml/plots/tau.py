"""Figures of the tau tasks: ROC curves, pT response, resolution vs pT, decay-mode confusion, loss curves.

Every function takes results keyed by a model name (a strategy ``from_scratch``, ``fixed_backbone``,
``fine_tuning``, or ``part``, ``deepset``, ``reference``), whose colour and label come from
:data:`tauml.plots.COLORS` and :data:`tauml.plots.STRATEGY_LABELS`.  Where a model has several runs
(seeds), the line is their mean and the band their standard deviation.  Returns the figure.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib.pyplot as plt
import numpy as np

from tauml.data.truth import REDUCED_DM_LATEX
from tauml.evaluation.metrics import (
    EFFICIENCY_GRID,
    RESPONSE_PT_BINS,
    binned_response,
    mean_std_over_runs,
    misid_on_grid,
)
from tauml.plots import COLORS, STRATEGY_LABELS, label

Run = tuple[np.ndarray, np.ndarray]


def _style(name: str, index: int) -> dict[str, Any]:
    color = COLORS.get(name, f"C{index}")
    return {"color": color, "label": STRATEGY_LABELS.get(name, name)}


def _runs(value: Run | Sequence[Run]) -> list[Run]:
    """One (a, b) pair or a list of them (one per seed)."""
    if isinstance(value, tuple) and len(value) == 2 and np.ndim(value[0]) == 1:
        return [value]
    return list(value)


def _axis(ax: plt.Axes | None, figsize: tuple[float, float] = (7.0, 5.5)) -> tuple[plt.Figure, plt.Axes]:
    if ax is None:
        _, ax = plt.subplots(figsize=figsize)
    return ax.figure, ax


def _band(ax: plt.Axes, x: np.ndarray, runs: list[np.ndarray], style: dict[str, Any], **kwargs: Any) -> None:
    mean, std = mean_std_over_runs(runs)
    ax.plot(x, mean, color=style["color"], label=style["label"], **kwargs)
    if len(runs) > 1:
        ax.fill_between(x, mean - std, mean + std, color=style["color"], alpha=0.25, linewidth=0)


def plot_roc(results: Mapping[str, Run | Sequence[Run]], ax: plt.Axes | None = None,
             text: str = "") -> plt.Figure:
    """P_misID (log) vs tau efficiency.  ``results[name]`` = ``(scores, labels)`` or a list of them per seed."""
    fig, ax = _axis(ax)
    for i, (name, value) in enumerate(results.items()):
        curves = [misid_on_grid(s, y, EFFICIENCY_GRID) for s, y in _runs(value)]
        curves = [np.where(c > 0, c, np.nan) for c in curves]  # log axis: no zeros
        _band(ax, EFFICIENCY_GRID, curves, _style(name, i))
    ax.set_yscale("log")
    ax.set_xlim(0.0, 1.0)
    ax.set_xlabel(r"$\tau_h$ identification efficiency $\varepsilon_\tau$")
    ax.set_ylabel(r"Mis-ID probability $P_\mathrm{misID}$")  # short: longer runs past the axis
    ax.axvline(0.8, color="grey", linestyle=":", linewidth=1)
    ax.legend(loc="upper left")
    label(ax, text)
    return fig


def plot_response(responses: Mapping[str, np.ndarray], reco_response: np.ndarray | None = None,
                  bins: np.ndarray | None = None, ax: plt.Axes | None = None, text: str = "") -> plt.Figure:
    """Distributions of r = pT_pred / pT_vis per model, with the reco-jet response pT_jet / pT_vis as reference.

    The legend gives each median and resolution IQR / median.
    """
    import mplhep as hep  # (local: the style module is set once in tauml.plots)

    fig, ax = _axis(ax)
    bins = np.linspace(0.7, 1.3, 121) if bins is None else np.asarray(bins)
    items = list(responses.items())
    if reco_response is not None:
        items.append(("reference", reco_response))
    for i, (name, r) in enumerate(items):
        r = np.asarray(r, dtype=np.float64)
        r = r[np.isfinite(r)]
        q25, q50, q75 = np.percentile(r, [25, 50, 75])
        style = _style(name, i)
        if name == "reference":
            style["label"] = "Reco jet"
        counts, _ = np.histogram(r, bins=bins)
        hep.histplot(counts / max(counts.sum(), 1), bins, ax=ax, color=style["color"],
                     label=f"{style['label']}: median {q50:.3f}, IQR/median {(q75 - q25) / q50:.3f}",
                     linestyle="--" if name == "reference" else "-")
    ax.set_xlabel(r"Response $p_T^\mathrm{pred}\,/\,p_T^\mathrm{vis}$")
    ax.set_ylabel("Fraction of jets / bin")
    ax.set_xlim(bins[0], bins[-1])
    ax.set_yscale("log")
    ax.set_ylim(1e-4, ax.get_ylim()[1] * 30)  # tails visible, room for the legend above the peak
    ax.legend(loc="upper left", fontsize="x-small")
    label(ax, text)
    return fig


def plot_resolution_vs_pt(results: Mapping[str, Run | Sequence[Run]], bins: Sequence[float] = RESPONSE_PT_BINS,
                          text: str = "") -> plt.Figure:
    """Resolution IQR/median (top) and scale median (bottom) of the response in bins of visible pT.

    ``results[name]`` = ``(pred_pt, vis_pt)`` in GeV, or a list of them per seed; use ``"reference"`` for
    the reco-jet pT.
    """
    fig, (ax, sax) = plt.subplots(2, 1, figsize=(7.0, 8.0), sharex=True,
                                  gridspec_kw={"height_ratios": (1, 1), "hspace": 0.06})
    centers = 0.5 * (np.asarray(bins[1:], float) + np.asarray(bins[:-1], float))
    for i, (name, value) in enumerate(results.items()):
        binned = [binned_response(p, t, bins) for p, t in _runs(value)]
        style = _style(name, i)
        if name == "reference":
            style["label"] = "Reco jet"
        _band(ax, centers, [b["resolution"] for b in binned], style, marker="o", markersize=4)
        _band(sax, centers, [b["median"] for b in binned], style, marker="o", markersize=4)
    # short labels (the definitions are in docs/tasks.md) so that the two panels' labels do not overlap
    ax.set_ylabel(r"Resolution IQR$\,/\,q_{50}$", loc="center")
    sax.set_ylabel(r"Scale $q_{50}$", loc="center")
    fig.align_ylabels((ax, sax))
    sax.axhline(1.0, color="grey", linestyle=":", linewidth=1)
    sax.set_xlabel(r"Visible $\tau_h$ $p_T$ [GeV]")
    ax.legend(fontsize="small")
    label(ax, text)
    return fig


def plot_confusion(matrix: np.ndarray, ax: plt.Axes | None = None, labels: Sequence[str] = REDUCED_DM_LATEX,
                   text: str = "") -> plt.Figure:
    """Row-normalised confusion matrix (``matrix[true, pred]``) drawn with the truth on the x axis."""
    matrix = np.asarray(matrix, dtype=np.float64)
    n = matrix.shape[0]
    fig, ax = _axis(ax, (7.5, 6.5))
    mesh = ax.pcolormesh(np.arange(n + 1), np.arange(n + 1), matrix.T, cmap="Blues", vmin=0.0, vmax=1.0)
    for true in range(n):
        for pred in range(n):
            value = matrix[true, pred]
            ax.text(true + 0.5, pred + 0.5, f"{value:.2f}", ha="center", va="center", fontsize="x-small",
                    color="white" if value > 0.6 else "black")
    ticks = np.arange(n) + 0.5
    ax.set_xticks(ticks, labels, rotation=45, ha="right", fontsize="small")
    ax.set_yticks(ticks, labels, fontsize="small")
    ax.minorticks_off()
    ax.set_xlabel("True decay mode")
    ax.set_ylabel("Predicted decay mode")
    fig.colorbar(mesh, ax=ax, label="Fraction of true class")
    label(ax, text, above=True)  # the colour bar leaves the axes too narrow for the text beside the label
    return fig


def plot_loss_curves(histories: Mapping[str, Sequence[Sequence[float]]], ax: plt.Axes | None = None,
                     unfreeze_epoch: int | None = None, ylabel: str = "Validation loss", text: str = "") -> plt.Figure:
    """Loss per epoch per strategy; ``histories[name]`` = one loss curve or a list of curves (one per seed)."""
    fig, ax = _axis(ax)
    for i, (name, curves) in enumerate(histories.items()):
        runs = [np.asarray(curves, float)] if np.ndim(curves) == 1 else [np.asarray(c, float) for c in curves]
        length = min(len(c) for c in runs)
        runs = [c[:length] for c in runs]
        _band(ax, np.arange(1, length + 1), runs, _style(name, i))
    if unfreeze_epoch is not None:
        ax.axvline(unfreeze_epoch + 0.5, color="grey", linestyle=":", linewidth=1, label="Backbone unfrozen")
    ax.set_xlabel("Epoch")
    ax.set_ylabel(ylabel)
    ax.legend()
    label(ax, text)
    return fig


def metrics_rows(results: Mapping[str, Sequence[Mapping[str, Any]] | Mapping[str, Any]],
                 keys: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """One row per model: ``{"model": label, key: (mean, std, n_runs), ...}`` over runs of numeric metrics."""
    rows = []
    for name, runs in results.items():
        runs = [runs] if isinstance(runs, Mapping) else list(runs)
        names = keys or [k for k, v in runs[0].items() if np.ndim(v) == 0 and isinstance(v, (int, float, np.number))]
        row: dict[str, Any] = {"model": STRATEGY_LABELS.get(name, name)}
        for key in names:
            mean, std = mean_std_over_runs([run[key] for run in runs])
            row[key] = (mean, std, len(runs))
        rows.append(row)
    return rows


def metrics_table(results: Mapping[str, Sequence[Mapping[str, Any]] | Mapping[str, Any]],
                  keys: Sequence[str] | None = None, digits: int = 4) -> str:
    """A markdown table of :func:`metrics_rows`: "mean ± std" where a model has several runs."""
    rows = metrics_rows(results, keys)
    if not rows:
        return ""
    columns = [c for c in rows[0] if c != "model"]

    def cell(value: tuple[float, float, int]) -> str:
        mean, std, n = value
        return f"{mean:.{digits}g} ± {std:.2g}" if n > 1 else f"{mean:.{digits}g}"

    lines = ["| model | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    lines += ["| " + row["model"] + " | " + " | ".join(cell(row[c]) for c in columns) + " |" for row in rows]
    return "\n".join(lines)
