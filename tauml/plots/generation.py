"""Generated jets against real ones, and the backbone's pretraining curves.

:func:`jet_observables` turns constituent features (``docs/conventions.md``) back into physics: multiplicity,
jet mass and pT, constituent pT and angles, particle-type fractions.  :func:`plot_generated_vs_real` draws
each observable for real and generated jets, normalised to unit area, with a generated/real ratio panel.
"""

from __future__ import annotations

from typing import Any

import hist
import matplotlib.pyplot as plt
import mplhep as hep
import numpy as np

from tauml.config import FeatureConfig
from tauml.data.features import PID_NAMES
from tauml.evaluation.generation import OBSERVABLES, jet_observables
from tauml.plots import COLORS, label, ratio_axes, ratio_with_errors


def plot_generated_vs_real(
    real_features: Any, real_mask: Any, gen_features: Any, gen_mask: Any,
    feature_config: FeatureConfig | None = None, text: str = "",
) -> dict[str, plt.Figure]:
    """One figure per observable (normalised histograms with a generated/real ratio panel) and one of the
    particle-type fractions; returns ``{name: figure}`` with the names of :data:`OBSERVABLES` and
    ``"pid_fractions"``.  ``text`` goes on the right of the experiment label (e.g. the sample)."""
    real = jet_observables(real_features, real_mask, feature_config)
    generated = jet_observables(gen_features, gen_mask, feature_config)
    figures = {}
    for name, (axis_label, kind, log_bins) in OBSERVABLES.items():
        axis = _axis(name, axis_label, real[name], log_bins)
        h_real = hist.Hist(axis, storage=hist.storage.Weight()).fill(real[name])
        h_gen = hist.Hist(axis, storage=hist.storage.Weight()).fill(generated[name])
        fig, ax, rax = ratio_axes()
        unit = "jets" if kind == "jet" else "constituents"
        _compare(ax, rax, h_real, h_gen, f"Fraction of {unit}",
                 f"Real ({len(real[name])} {unit})", f"Generated ({len(generated[name])} {unit})")
        if log_bins:
            ax.set_xscale("log")
        label(ax, text)
        figures[name] = fig
    figures["pid_fractions"] = _plot_pid_fractions(real, generated, len(real["constituent_pt"]),
                                                   len(generated["constituent_pt"]), text)
    return figures


def plot_training_curves(history: dict[str, Any], unigram_perplexity: float | None = None) -> plt.Figure:
    """Training and validation loss (nats per token) and validation perplexity per epoch of a pretraining run
    (:func:`tauml.training.pretrain.pretrain`'s history), with the no-learning unigram perplexity as a line."""
    records = history["epochs"]
    if not records:
        raise ValueError("the history holds no finished epoch yet")
    unigram = history.get("unigram_perplexity") if unigram_perplexity is None else unigram_perplexity
    epochs = np.array([r["epoch"] for r in records]) + 1
    fig, (loss_ax, ppl_ax) = plt.subplots(1, 2, figsize=(13.0, 5.5))
    loss_ax.plot(epochs, [r["train_loss"] for r in records], "o-", color=COLORS["from_scratch"], label="Training")
    loss_ax.plot(epochs, [r["val_loss"] for r in records], "s-", color=COLORS["fine_tuning"], label="Validation")
    loss_ax.set(xlabel="Epoch", ylabel="Next-token loss [nats / token]")
    ppl_ax.plot(epochs, np.exp([r["train_loss"] for r in records]), "o-", color=COLORS["from_scratch"],
                label="Training")
    ppl_ax.plot(epochs, [r["val_perplexity"] for r in records], "s-", color=COLORS["fine_tuning"],
                label="Validation")
    if unigram is not None:
        loss_ax.axhline(np.log(unigram), color=COLORS["reference"], ls="--", label="Unigram (no learning)")
        ppl_ax.axhline(unigram, color=COLORS["reference"], ls="--", label="Unigram (no learning)")
    ppl_ax.set(xlabel="Epoch", ylabel="Perplexity", yscale="log")
    for ax in (loss_ax, ppl_ax):
        ax.xaxis.set_major_locator(plt.MaxNLocator(integer=True))
        ax.legend()
    fig.subplots_adjust(wspace=0.35)
    return fig


def _axis(name: str, axis_label: str, values: np.ndarray, log_bins: bool) -> hist.axis.AxesMixin:
    """Binning from the real jets: integers for the multiplicity, else 40 bins over their 0.5-99.5% range."""
    if name == "multiplicity":
        return hist.axis.Integer(0, int(values.max()) + 2, name=name, label=axis_label)
    if log_bins:
        low, high = np.percentile(values[values > 0], [0.5, 99.5])
        return hist.axis.Regular(40, low, high, transform=hist.axis.transform.log, name=name, label=axis_label)
    low, high = np.percentile(values, [0.5, 99.5])
    if name in ("deta", "dphi"):  # symmetric around the axis
        low, high = -max(abs(low), abs(high)), max(abs(low), abs(high))
    return hist.axis.Regular(40, low, high if high > low else low + 1.0, name=name, label=axis_label)


def _compare(ax: plt.Axes, rax: plt.Axes, h_real: hist.Hist, h_gen: hist.Hist, ylabel: str,
             real_label: str, gen_label: str) -> None:
    """Histograms of real and generated values as fractions per bin (of the entries in range), and
    generated/real with statistical errors."""
    (real, real_var), (gen, gen_var) = (_normalised(h) for h in (h_real, h_gen))
    hep.histplot(real, h_real.axes[0].edges, ax=ax, histtype="fill", alpha=0.35, color=COLORS["real"],
                 label=real_label)
    hep.histplot(gen, h_gen.axes[0].edges, yerr=np.sqrt(gen_var), ax=ax, histtype="step",
                 color=COLORS["generated"], lw=2, label=gen_label)
    ax.set_ylabel(ylabel)
    ax.set_xlabel("")
    ax.set_ylim(0.0, 1.5 * max(real.max(), gen.max(), 1e-9))
    ax.legend()
    ratio, error = ratio_with_errors(gen, real, gen_var, real_var)
    centers = h_real.axes[0].centers
    rax.errorbar(centers, ratio, yerr=error, fmt="o", ms=3, color=COLORS["generated"])
    rax.axhline(1.0, color=COLORS["real"], lw=1)
    rax.set_ylim(0.0, 2.0)
    rax.set_ylabel("Gen. / real")
    rax.set_xlabel(h_real.axes[0].label)


def _normalised(h: hist.Hist) -> tuple[np.ndarray, np.ndarray]:
    total = max(float(h.values().sum()), 1.0)
    return h.values() / total, h.variances() / total**2


def _plot_pid_fractions(real: dict[str, np.ndarray], generated: dict[str, np.ndarray], n_real: int, n_gen: int,
                        text: str) -> plt.Figure:
    fig, ax, rax = ratio_axes()
    positions = np.arange(len(PID_NAMES))
    width = 0.4
    ax.bar(positions - width / 2, real["pid_fractions"], width, color=COLORS["real"], label=f"Real ({n_real} constituents)")
    ax.bar(positions + width / 2, generated["pid_fractions"], width, color=COLORS["generated"],
           label=f"Generated ({n_gen} constituents)")
    ax.set_ylabel("Fraction of constituents")
    ax.set_ylim(0.0, 1.5 * max(real["pid_fractions"].max(), generated["pid_fractions"].max(), 1e-9))
    ax.legend()
    label(ax, text)
    real_counts, gen_counts = real["pid_fractions"] * n_real, generated["pid_fractions"] * n_gen
    ratio, error = ratio_with_errors(gen_counts / max(n_gen, 1), real_counts / max(n_real, 1),
                                     gen_counts / max(n_gen, 1) ** 2, real_counts / max(n_real, 1) ** 2)
    rax.errorbar(positions, ratio, yerr=error, fmt="o", color=COLORS["generated"])
    rax.axhline(1.0, color=COLORS["real"], lw=1)
    rax.set_ylim(0.0, 2.0)
    rax.set_ylabel("Gen. / real")
    rax.set_xticks(positions, [name.replace(" ", "\n") for name in PID_NAMES])
    rax.set_xlabel("Particle type")
    return fig


# ----------------------------------------------------------------------------------------------------------
# Several samples at once (real, real decoded through the tokenizer, generated) and distances between them
# ----------------------------------------------------------------------------------------------------------

#: The six panels of :func:`plot_observable_grid`.
GRID_OBSERVABLES: tuple[str, ...] = ("multiplicity", "jet_mass", "constituent_pt", "deta", "dphi", "pid_fractions")
_SAMPLE_COLORS = (COLORS["real"], COLORS["fixed_backbone"], COLORS["generated"], COLORS["part"], COLORS["deepset"])


def plot_observable_comparison(
    samples: dict[str, dict[str, np.ndarray]], reference: str | None = None, text: str = "",
    colors: dict[str, str] | None = None,
) -> dict[str, plt.Figure]:
    """One figure per observable (:data:`OBSERVABLES` and ``"pid_fractions"``) with every sample of ``samples``
    (label -> :func:`jet_observables`), normalised to unit area, and each sample's ratio to ``reference``
    (default: the first sample, drawn filled) in a lower panel.  Returns ``{observable: figure}``."""
    reference = _reference_name(samples, reference)
    figures = {}
    for name in (*OBSERVABLES, "pid_fractions"):
        fig, ax, rax = ratio_axes()
        _draw_observable(ax, rax, name, samples, reference, colors or {})
        label(ax, text)
        fig.align_ylabels([ax, rax])
        figures[name] = fig
    return figures


def plot_observable_grid(
    samples: dict[str, dict[str, np.ndarray]], reference: str | None = None, text: str = "",
    colors: dict[str, str] | None = None, names: tuple[str, ...] = GRID_OBSERVABLES,
) -> plt.Figure:
    """The observables ``names`` of every sample in one figure (three panels per row, each with a ratio panel
    to ``reference``): the compact view of :func:`plot_observable_comparison`, e.g. for a widget."""
    reference = _reference_name(samples, reference)
    n_rows = -(-len(names) // 3)
    with plt.rc_context({"font.size": 15, "xtick.major.size": 7, "ytick.major.size": 7, "xtick.minor.size": 4,
                         "ytick.minor.size": 4}):
        fig = plt.figure(figsize=(16.0, 5.5 * n_rows))
        outer = fig.add_gridspec(n_rows, 3, hspace=0.3, wspace=0.3)
        for index, name in enumerate(names):
            cell = outer[divmod(index, 3)].subgridspec(2, 1, height_ratios=(3, 1), hspace=0.05)
            ax = fig.add_subplot(cell[0])
            rax = fig.add_subplot(cell[1], sharex=ax)
            ax.tick_params(labelbottom=False)
            _draw_observable(ax, rax, name, samples, reference, colors or {}, legend=index == 0, short=True)
            fig.align_ylabels([ax, rax])
            if index == 0:
                label(ax)
            if index == min(2, len(names) - 1) and text:
                ax.set_title(text, loc="right", fontsize="medium")
    return fig


def _reference_name(samples: dict[str, dict[str, np.ndarray]], reference: str | None) -> str:
    if not samples:
        raise ValueError("samples is empty: give {label: jet_observables(features, mask)} for at least one sample")
    reference = next(iter(samples)) if reference is None else reference
    if reference not in samples:
        raise ValueError(f"reference={reference!r} is not one of the samples {list(samples)}")
    return reference


#: Particle-type symbols for small panels.
_PID_SYMBOLS = ("e", r"$\mu$", r"$\gamma$", r"h$^\pm$", r"h$^0$")


def _draw_observable(ax: plt.Axes, rax: plt.Axes, name: str, samples: dict[str, dict[str, np.ndarray]],
                     reference: str, colors: dict[str, str], legend: bool = True, short: bool = False) -> None:
    """One observable of every sample (fractions per bin, the reference filled) and the ratios to the reference;
    ``short``: particle types as symbols (for small panels)."""
    color = {key: colors.get(key, _SAMPLE_COLORS[i % len(_SAMPLE_COLORS)]) for i, key in enumerate(samples)}
    if name == "pid_fractions":
        edges = np.arange(len(PID_NAMES) + 1) - 0.5
        values = {}
        for key, obs in samples.items():
            n = len(obs["constituent_pt"])
            values[key] = (obs["pid_fractions"], obs["pid_fractions"] / max(n, 1), n)
        xlabel, ylabel = "Particle type", "Fraction of constituents"
    else:
        axis_label, kind, log_bins = OBSERVABLES[name]
        unit = "jets" if kind == "jet" else "constituents"
        if name == "multiplicity":  # integer-aligned bins (at most ~50) wide enough for every sample
            high = int(max(obs[name].max() for obs in samples.values())) + 2
            width = -(-high // 50)
            axis = hist.axis.Regular(-(-high // width), 0, width * -(-high // width), name=name, label=axis_label)
        else:
            axis = _axis(name, axis_label, samples[reference][name], log_bins)
        edges = axis.edges
        values = {}
        for key, obs in samples.items():
            fraction, variance = _normalised(hist.Hist(axis, storage=hist.storage.Weight()).fill(obs[name]))
            values[key] = (fraction, variance, len(obs[name]))
        xlabel, ylabel = axis_label, f"Fraction of {unit}"
        if log_bins:
            ax.set_xscale("log")
    for key, (fraction, variance, count) in values.items():
        if key == reference:
            hep.histplot(fraction, edges, ax=ax, histtype="fill", alpha=0.35, color=color[key],
                         label=f"{key} ({count})")
        else:
            hep.histplot(fraction, edges, yerr=np.sqrt(variance), ax=ax, histtype="step", lw=2, color=color[key],
                         label=f"{key} ({count})")
    ax.set_ylabel(ylabel)
    ax.set_xlabel("")
    ax.set_ylim(0.0, (1.3 + 0.2 * len(values)) * max(max(v[0].max() for v in values.values()), 1e-9))
    if legend:
        ax.legend(loc="upper right", fontsize="x-small")
    centers = 0.5 * (edges[1:] + edges[:-1])
    ref_fraction, ref_variance, _ = values[reference]
    for key, (fraction, variance, _) in values.items():
        if key != reference:
            ratio, error = ratio_with_errors(fraction, ref_fraction, variance, ref_variance)
            rax.errorbar(centers, ratio, yerr=error, fmt="o", ms=3, color=color[key])
    rax.axhline(1.0, color=color[reference], lw=1)
    rax.set_ylim(0.0, 2.0)
    rax.set_ylabel("Ratio", fontsize="small")
    rax.set_xlabel(xlabel)
    if name == "pid_fractions":
        names = _PID_SYMBOLS if short else [n.replace(" ", "\n") for n in PID_NAMES]
        rax.set_xticks(np.arange(len(PID_NAMES)), names, fontsize="small" if short else "x-small")
