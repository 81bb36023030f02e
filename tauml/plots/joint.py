"""Figures of the joint analysis (notebook 06): background rejection against the training-set size for each
representation and strategy (the paper's Figs. 4 and 6), and the event classifier's output for signal and
background.  Inputs are the rows of :func:`tauml.studies.joint.summary_rows` (mean ± std over seeds)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib.pyplot as plt
import numpy as np

from tauml.plots import closes_own_figure, label

#: One colour per strategy, one line style per representation.
STRATEGY_COLORS = {"frozen": "#1f77b4", "finetuned": "#d62728", "from_scratch": "#2ca02c", "foundation": "#9467bd"}
REPRESENTATION_STYLES = {"s_hlf": "-", "v_hlf": "--", "v": ":"}
REPRESENTATION_LABELS = {"s_hlf": "S+HLF", "v_hlf": "V+HLF", "v": "V-only"}
METRIC_LABELS = {"rejection": r"Background rejection $1/\varepsilon_B$ at $\varepsilon_S = 90\%$",
                 "auc": "AUC", "sic": r"SIC $\varepsilon_S/\sqrt{\varepsilon_B}$ at $\varepsilon_S = 90\%$",
                 "max_sic": "maximal SIC", "weighted_rejection": r"Rejection at $\varepsilon_S = 90\%$ (weighted)"}
CASE_LABELS = {"hh4b": r"pp 13 TeV, $X\to HH\to b\bar{b}b\bar{b}$ vs QCD",
               "zh_tautau": r"$e^+e^-$ 380 GeV, $ZH, H\to\tau\tau$ vs $Z/\gamma^*\to\tau\tau$, ZZ, $q\bar{q}$"}


@closes_own_figure
def plot_train_size(rows: Sequence[Mapping[str, Any]], metric: str = "rejection", case: str = "",
                    ax: plt.Axes | None = None) -> plt.Figure:
    """``metric`` (mean ± std over seeds) against the number of training events, one line per model."""
    if not rows:
        raise ValueError("no rows to plot: train some points first (tauml.studies.joint.run_study)")
    if ax is None:
        _, ax = plt.subplots(figsize=(7.0, 5.5))
    models: dict[tuple[str, str], list[tuple[float, float, float]]] = {}
    for row in rows:
        models.setdefault((row["representation"], row["strategy"]), []).append((row["train_size"], row["mean"],
                                                                                 row["std"]))
    for (rep, strategy), points in models.items():
        n, mean, std = (np.asarray(v, float) for v in zip(*sorted(points)))
        ax.errorbar(n, mean, yerr=std, color=STRATEGY_COLORS.get(strategy), ls=REPRESENTATION_STYLES.get(rep, "-"),
                    marker="o", capsize=3, label=f"{REPRESENTATION_LABELS.get(rep, rep)} ({strategy})")
    ax.set_xscale("log")
    if metric in ("rejection", "weighted_rejection"):
        ax.set_yscale("log")
    ax.set_xlabel("Training events")
    ax.set_ylabel(METRIC_LABELS.get(metric, metric))
    ax.legend(fontsize="x-small", ncol=2)
    label(ax, CASE_LABELS.get(case, case))
    return ax.figure


@closes_own_figure
def plot_scores(scores: np.ndarray, labels: np.ndarray, weights: np.ndarray | None = None, title: str = "",
                ax: plt.Axes | None = None) -> plt.Figure:
    """The event classifier's output for signal and background, each normalised to unit area."""
    if ax is None:
        _, ax = plt.subplots(figsize=(7.0, 5.0))
    bins = np.linspace(0.0, 1.0, 26)
    for value, name, color in ((1, "signal", "#d62728"), (0, "background", "#1f77b4")):
        sel = labels == value
        ax.hist(scores[sel], bins=bins, weights=None if weights is None else weights[sel], density=True,
                histtype="step", lw=2, color=color, label=name)
    ax.set_yscale("log")
    ax.set_xlabel("Event classifier output (signal probability)")
    ax.set_ylabel("Normalised events / 0.04")
    ax.legend(fontsize="small")
    label(ax, title)
    return ax.figure


__all__ = ["plot_scores", "plot_train_size"]
