"""Figures and tables of the tokenization study (notebooks/01_tokenization, the core paper's Figs. 2 and 3).

Most functions take the output of :func:`tauml.evaluation.tokenization.tokenization_metrics` (one dict per dataset or per
tokenizer, keyed by a name).  Names ``pp``, ``tau`` and ``qq`` get the colours of :data:`tauml.plots.COLORS`
and the labels of :data:`DATASET_LABELS`; any other name is used as its own label.  Every function returns
the figure (or table rows) and takes an optional ``ax`` / ``axes``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib.pyplot as plt
import mplhep as hep
import numpy as np
from matplotlib.lines import Line2D

from tauml.config import FeatureConfig
from tauml.data.features import PID_NAMES, inverse_transform
from tauml.evaluation.tokenization import RESIDUALS, codes_for_fraction
from tauml.plots import COLORS, label

Metrics = Mapping[str, Any]

DATASET_LABELS: dict[str, str] = {
    "pp": "pp jets (in domain)",
    "tau": r"$\tau$ jets, $e^+e^-$ (out of domain)",
    "qq": r"quark jets, $e^+e^-$ (out of domain)",
}
#: Short legend labels, for the top right corner of a panel.
DATASET_SHORT: dict[str, str] = {"pp": "pp jets", "tau": r"$\tau$ jets", "qq": r"$q\bar{q}$ jets"}
#: The same in plain text, for tables, dropdowns and HTML.
DATASET_NAMES: dict[str, str] = {
    "pp": "pp jets (in domain)",
    "tau": "τ jets, e⁺e⁻ (out of domain)",
    "qq": "quark jets, e⁺e⁻ (out of domain)",
}
#: The reconstructed-minus-input quantities drawn, in the order of the panels.
RESIDUAL_LABELS: dict[str, str] = {
    "pt_relative": r"$p_T^\mathrm{reco}\,/\,p_T^\mathrm{in} - 1$",
    "pt": r"$p_T^\mathrm{reco} - p_T^\mathrm{in}$ [GeV]",
    "mass": r"$m^\mathrm{reco} - m^\mathrm{in}$ [GeV]",
    "deta": r"$\Delta\eta^\mathrm{reco} - \Delta\eta^\mathrm{in}$",
    "dphi": r"$\Delta\phi^\mathrm{reco} - \Delta\phi^\mathrm{in}$ [rad]",
}
#: Plain-text names of the residuals, for tables.
#: Histogram ranges of the residual panels (the tails beyond them still count in the normalisation).
RESIDUAL_RANGES: dict[str, tuple[float, float]] = {
    "pt_relative": (-1.0, 2.0), "pt": (-20.0, 20.0), "mass": (-0.6, 0.6), "deta": (-0.3, 0.3), "dphi": (-0.3, 0.3),
}
CHARGE_LABELS: tuple[str, ...] = ("$-1$", "$0$", "$+1$")
PID_LABELS: tuple[str, ...] = ("e", r"$\mu$", r"$\gamma$", r"$h^\pm$", r"$h^0$")
PID_COLORS: tuple[str, ...] = ("#5790fc", "#964a8b", "#f89c20", "#e42536", "#9c9ca1")


def dataset_label(name: str) -> str:
    """The legend label of a dataset name (LaTeX for matplotlib)."""
    return DATASET_LABELS.get(name, name)


def dataset_short(name: str) -> str:
    """A short label of a dataset name (LaTeX for matplotlib), for the text beside the experiment label."""
    return DATASET_SHORT.get(name, name)


def dataset_name(name: str) -> str:
    """The plain-text label of a dataset name."""
    return DATASET_NAMES.get(name, name)


def _color(name: str, index: int) -> str:
    return COLORS.get(name, f"C{index}")


# ----------------------------------------------------------------------------------------------------------
# Numbers
# ----------------------------------------------------------------------------------------------------------


# ----------------------------------------------------------------------------------------------------------
# Figures
# ----------------------------------------------------------------------------------------------------------


def plot_training_history(history: Sequence[Mapping[str, Any]], axes: Sequence[plt.Axes] | None = None,
                          text: str = "") -> plt.Figure:
    """Tokenizer training per epoch (``history.json`` of a tokenizer), four panels: training and validation
    loss, codebook utilisation and perplexity on the validation jets, and dead codes replaced."""
    if axes is None:
        fig, grid = plt.subplots(2, 2, figsize=(14.0, 11.5), gridspec_kw={"wspace": 0.3, "hspace": 0.35})
        axes = grid.ravel()
    fig = axes[0].figure
    epochs = [h["epoch"] for h in history]
    loss, util, ppl, dead = axes[:4]
    loss.plot(epochs, [h["train_loss"] for h in history], "o-", color=COLORS["pp"], label="training")
    loss.plot(epochs, [h["val_loss"] for h in history], "s--", color=COLORS["tau"], label="validation")
    loss.set_yscale("log")
    loss.set_ylabel("Loss (reconstruction + VQ)")
    loss.legend()
    util.plot(epochs, [h["val_utilisation"] for h in history], "o-", color="black")
    util.set_ylim(0.0, 1.05)
    util.set_ylabel("Codebook utilisation")
    ppl.plot(epochs, [h["val_perplexity"] for h in history], "o-", color="black")
    ppl.set_ylim(0.0, None)
    ppl.set_ylabel("Codebook perplexity")
    dead.plot(epochs, [h.get("codes_replaced", np.nan) for h in history], "o-", color="black")
    dead.set_ylim(0.0, None)
    dead.set_ylabel("Dead codes replaced")
    for ax in axes[:4]:
        ax.set_xlabel("Epoch")
        label(ax, text)
    return fig


def plot_resolution(metrics: Mapping[str, Metrics], quantities: Sequence[str] = RESIDUALS, bins: int = 60,
                    axes: Sequence[plt.Axes] | None = None, text: str = "", log: bool = True,
                    linestyles: Mapping[str, str] | None = None) -> plt.Figure:
    """Reconstructed minus input per feature (the core paper's Fig. 2), one panel per quantity, one normalised
    histogram per entry of ``metrics``; each panel's legend gives the IQRs, the figure's legend the names.
    Entries outside the range still count in the normalisation, so each histogram is the fraction of all
    constituents per bin."""
    if axes is None:
        cols = 2 if len(quantities) > 1 else 1
        rows = int(np.ceil(len(quantities) / cols))
        fig, axes = plt.subplots(rows, cols, figsize=(7.0 * cols, 5.5 * rows + 0.8), squeeze=False,
                                 gridspec_kw={"hspace": 0.45, "wspace": 0.28})
        axes = axes.ravel()
    fig = axes[0].figure
    linestyles = linestyles or {}
    handles = []
    for ax, quantity in zip(axes, quantities):
        edges = np.linspace(*RESIDUAL_RANGES[quantity], bins + 1)
        peak, floor = 0.0, np.inf
        for i, (name, m) in enumerate(metrics.items()):
            values = np.asarray(m["residuals"][quantity])
            counts, _ = np.histogram(values, bins=edges)
            total = max(len(values), 1)
            fractions = counts / total
            peak = max(peak, float(fractions.max(initial=0.0)))
            floor = min(floor, float(fractions[fractions > 0].min(initial=np.inf)))
            hep.histplot(fractions, edges, ax=ax, color=_color(name, i), yerr=np.sqrt(counts) / total,
                         linestyle=linestyles.get(name, "-"), label=f"IQR {m['resolution'][quantity]['iqr']:.3g}")
        ax.set_xlabel(RESIDUAL_LABELS[quantity])
        ax.set_ylabel("Fraction of constituents")
        ax.set_xlim(edges[0], edges[-1])
        if log and peak > 0:
            ax.set_yscale("log")
            floor = min(floor, peak) / 2
            ax.set_ylim(floor, peak * (peak / floor) ** 0.6)  # the upper third stays free for the legend
        elif peak > 0:
            ax.set_ylim(0.0, 1.5 * peak)
        ax.legend(fontsize="x-small", loc="upper right")
        label(ax, text)
        handles = ax.get_legend_handles_labels()[0]
    for ax in axes[len(quantities):]:
        ax.set_visible(False)
    fig.legend(handles, [dataset_label(n) for n in metrics], loc="upper center", ncol=min(len(metrics), 3),
               fontsize="small", bbox_to_anchor=(0.5, 1.0 + 0.25 / fig.get_figheight()))
    return fig


def plot_category_confusion(counts: np.ndarray, labels: Sequence[str], what: str, ax: plt.Axes | None = None,
                            text: str = "") -> plt.Figure:
    """Row-normalised confusion matrix (``counts[input, reconstructed]``) of a categorical feature, the core
    paper's Fig. 3: input class on x, reconstructed class on y, the fraction and (small) the count in each
    cell; a class absent from the input is left blank."""
    counts = np.asarray(counts, dtype=np.float64)
    n = len(counts)
    if counts.shape != (n, n) or len(labels) != n:
        raise ValueError(f"counts {counts.shape} must be square and match {len(labels)} labels")
    if ax is None:
        _, ax = plt.subplots(figsize=(7.5, 6.5))
    fig = ax.figure
    totals = counts.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        fractions = np.where(totals > 0, counts / totals, np.nan)
    mesh = ax.pcolormesh(np.arange(n + 1), np.arange(n + 1), fractions.T, cmap="Blues", vmin=0.0, vmax=1.0)
    for true in range(n):
        for reco in range(n):
            value = fractions[true, reco]
            if np.isnan(value):
                continue
            ax.text(true + 0.5, reco + 0.5, f"{value:.2f}\n({int(counts[true, reco])})", ha="center", va="center",
                    fontsize="xx-small", color="white" if value > 0.6 else "black")
    ticks = np.arange(n) + 0.5
    ax.set_xticks(ticks, labels)
    ax.set_yticks(ticks, labels)
    ax.minorticks_off()
    ax.set_xlabel(f"Input {what}")
    ax.set_ylabel(f"Reconstructed {what}")
    fig.colorbar(mesh, ax=ax, label="Fraction of input class")
    label(ax, text)
    return fig


def plot_token_frequency(metrics: Mapping[str, Metrics], ax: plt.Axes | None = None, text: str = "",
                         fraction: float = 0.9) -> plt.Figure:
    """Code usage sorted from the most to the least frequent code (log y), one line per entry; the legend gives
    utilisation, perplexity and how many codes carry ``fraction`` of the constituents (dotted line)."""
    if ax is None:
        _, ax = plt.subplots(figsize=(9.0, 6.5))
    fig = ax.figure
    for i, (name, m) in enumerate(metrics.items()):
        counts = np.sort(np.asarray(m["token_frequency"], dtype=np.float64))[::-1]
        share = counts / max(counts.sum(), 1.0)
        rank = np.arange(1, len(counts) + 1)
        used = share > 0
        color = _color(name, i)
        n_codes = codes_for_fraction(counts, fraction)
        ax.step(rank[used], share[used], where="mid", color=color,
                label=(f"{dataset_label(name)}: utilisation {m['utilisation']:.2f}, perplexity "
                       f"{m['perplexity']:.0f},\n{n_codes} codes carry {fraction:.0%}"))
        ax.axvline(n_codes, ymax=0.58, color=color, linestyle=":", linewidth=1.5)  # below the legend
    ax.set_yscale("log")
    ax.set_xlim(0, None)
    bottom, top = ax.get_ylim()
    ax.set_ylim(bottom, top * (top / bottom) ** 0.7)  # the upper part stays free for the legend
    ax.set_xlabel("Code rank (most frequent first)")
    ax.set_ylabel("Fraction of constituents")
    ax.legend(fontsize="xx-small", loc="upper right")
    label(ax, text)
    return fig


def plot_jet_before_after(features: np.ndarray, mask: np.ndarray, reconstructed: np.ndarray,
                          reconstructed_mask: np.ndarray, feature_config: FeatureConfig | None = None,
                          axes: Sequence[plt.Axes] | None = None, text: str = "") -> plt.Figure:
    """One jet in the (Δη, Δφ) plane before (left) and after (right) tokenization: marker area proportional to
    the constituent pT (same scale in both panels), colour by particle type.  ``features`` and
    ``reconstructed`` are ``(P, 10)`` transformed features with their boolean ``(P,)`` masks."""
    before = inverse_transform(np.asarray(features)[np.asarray(mask)], feature_config)
    after = inverse_transform(np.asarray(reconstructed)[np.asarray(reconstructed_mask)], feature_config)
    if axes is None:
        fig, axes = plt.subplots(1, 2, figsize=(16.0, 8.0), sharex=True, sharey=True, gridspec_kw={"wspace": 0.08})
    fig = axes[0].figure
    scale = 600.0 / max(float(before["pt"].max(initial=0.0)), float(after["pt"].max(initial=0.0)), 1e-9)
    everything = np.concatenate([before["deta"], before["dphi"], after["deta"], after["dphi"]])
    half_width = 1.15 * max(float(np.abs(everything).max(initial=0.0)), 0.02)
    for ax, values, title in ((axes[0], before, "Input"), (axes[1], after, "Reconstructed from tokens")):
        colors = [PID_COLORS[p] for p in values["pid"]]
        ax.scatter(values["deta"], values["dphi"], s=scale * values["pt"], c=colors, alpha=0.7,
                   edgecolors="black", linewidths=0.5)
        ax.set_xlim(-half_width, half_width)
        ax.set_ylim(-half_width, half_width)
        ax.set_xlabel(r"$\Delta\eta$ to the jet axis")
        ax.axhline(0.0, color="grey", linewidth=0.5)
        ax.axvline(0.0, color="grey", linewidth=0.5)
        ax.set_aspect("equal")
        ax.text(0.04, 0.96, title, transform=ax.transAxes, ha="left", va="top", fontsize="small")
        label(ax, text)
    axes[0].set_ylabel(r"$\Delta\phi$ to the jet axis [rad]")
    handles = [Line2D([], [], marker="o", linestyle="", color=c, markeredgecolor="black", label=n)
               for n, c in zip(PID_NAMES, PID_COLORS)]
    axes[1].legend(handles=handles, fontsize="x-small", loc="upper left", bbox_to_anchor=(1.02, 1.0),
                   title=r"area $\propto p_T$", title_fontsize="x-small")
    return fig
