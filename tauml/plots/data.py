"""Figures of the datasets (notebooks/00_data): spectra, multiplicities, jet masses, decay modes, responses.

Histograms are ``hist.Hist`` objects with named axes whose labels carry units; every function returns the
figure and takes an optional ``ax``.
"""

from __future__ import annotations

from collections.abc import Mapping

import hist
import matplotlib.pyplot as plt
import mplhep as hep
import numpy as np

from tauml.data.features import PID_NAMES, JetArrays, inverse_transform
from tauml.data.truth import PDG_REDUCED_FRACTIONS, REDUCED_DM_LATEX
from tauml.plots import COLORS, label


def _ax(ax: plt.Axes | None) -> tuple[plt.Figure, plt.Axes]:
    if ax is None:
        _, ax = plt.subplots()
    return ax.figure, ax


def _color(name: str, i: int) -> str:
    return COLORS.get(name, f"C{i}")


def _density_plot(ax: plt.Axes, histograms: Mapping[str, hist.Hist]) -> None:
    for i, (name, h) in enumerate(histograms.items()):
        total = h.sum()
        if total > 0:
            hep.histplot(h / total, ax=ax, label=name, color=_color(name, i), yerr=np.sqrt(h.values()) / total)
    ax.set_ylabel("Fraction of jets" if "jets" not in ax.get_xlabel() else "Fraction")
    ax.legend()


def plot_multiplicity(samples: Mapping[str, JetArrays], ax: plt.Axes | None = None, text: str = "") -> plt.Figure:
    """Number of constituents per jet (after padding/truncation), normalised per sample."""
    fig, ax = _ax(ax)
    maximum = max(int(a.mask.shape[1]) for a in samples.values())
    histograms = {name: hist.Hist(hist.axis.Integer(0, maximum + 1, name="n", label="Constituents per jet"))
                  .fill(a.n_constituents) for name, a in samples.items()}
    _density_plot(ax, histograms)
    ax.set_xlabel("Constituents per jet")
    label(ax, text)
    return fig


def plot_constituent_pt(samples: Mapping[str, JetArrays], ax: plt.Axes | None = None, text: str = "") -> plt.Figure:
    """Constituent transverse momentum spectra (log axes)."""
    fig, ax = _ax(ax)
    axis = hist.axis.Regular(40, 0.1, 1000, transform=hist.axis.transform.log, name="pt",
                             label=r"Constituent $p_T$ [GeV]")
    histograms = {name: hist.Hist(axis).fill(inverse_transform(a.features[a.mask])["pt"])
                  for name, a in samples.items()}
    _density_plot(ax, histograms)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(r"Constituent $p_T$ [GeV]")
    ax.set_ylabel("Fraction of constituents")
    label(ax, text)
    return fig


def jet_mass(arrays: JetArrays) -> np.ndarray:
    """Invariant mass of the jet 4-vectors in GeV."""
    p = arrays.jet_p4.astype(np.float64)
    return np.sqrt(np.clip(p[:, 3] ** 2 - (p[:, :3] ** 2).sum(axis=1), 0.0, None))


def plot_jet_mass(samples: Mapping[str, JetArrays], bins: tuple[int, float, float] = (50, 0.0, 5.0),
                  ax: plt.Axes | None = None, text: str = "") -> plt.Figure:
    """Jet mass per sample, normalised."""
    fig, ax = _ax(ax)
    axis = hist.axis.Regular(*bins, name="m", label=r"Jet mass [GeV]")
    histograms = {name: hist.Hist(axis).fill(jet_mass(a)) for name, a in samples.items()}
    _density_plot(ax, histograms)
    ax.set_xlabel("Jet mass [GeV]")
    label(ax, text)
    return fig


def plot_jet_pt(samples: Mapping[str, JetArrays], ax: plt.Axes | None = None, text: str = "",
                bins: tuple[int, float, float] = (40, 0.0, 200.0)) -> plt.Figure:
    """Reco-jet transverse momentum per sample, normalised."""
    fig, ax = _ax(ax)
    axis = hist.axis.Regular(*bins, name="pt", label=r"Reco-jet $p_T$ [GeV]")
    _density_plot(ax, {name: hist.Hist(axis).fill(a.jet_pt) for name, a in samples.items()})
    ax.set_xlabel(r"Reco-jet $p_T$ [GeV]")
    label(ax, text)
    return fig


def plot_visible_vs_jet_pt(taus: JetArrays, ax: plt.Axes | None = None, text: str = "") -> plt.Figure:
    """2D histogram of the reco-jet pT against the visible tau pT, with the diagonal."""
    fig, ax = _ax(ax)
    h = hist.Hist(hist.axis.Regular(40, 0, 200, name="vis", label=r"Visible $\tau$ $p_T$ [GeV]"),
                  hist.axis.Regular(40, 0, 200, name="jet", label=r"Reco-jet $p_T$ [GeV]"))
    h.fill(vis=taus.gen_vis_pt, jet=taus.jet_pt)
    hep.hist2dplot(h, ax=ax, norm="log", cbarextend=False)
    ax.plot([0, 200], [0, 200], color="white", linestyle="--", linewidth=1)
    label(ax, text)
    return fig


def plot_decay_mode_fractions(fractions: Mapping[str, np.ndarray], ax: plt.Axes | None = None,
                              text: str = "", pdg: bool = True) -> plt.Figure:
    """Reduced decay-mode fractions of samples as grouped bars, beside the PDG values."""
    fig, ax = _ax(ax)
    series = dict(fractions)
    if pdg:
        series["PDG 2024"] = np.asarray(PDG_REDUCED_FRACTIONS)
    width = 0.8 / len(series)
    x = np.arange(len(REDUCED_DM_LATEX))
    for i, (name, values) in enumerate(series.items()):
        color = "black" if name.startswith("PDG") else _color(name, i)
        ax.bar(x + (i - (len(series) - 1) / 2) * width, values, width=width, label=name, color=color,
               alpha=0.35 if name.startswith("PDG") else 0.85, edgecolor=color)
    ax.set_xticks(x, REDUCED_DM_LATEX, rotation=20)
    ax.set_ylabel("Fraction of hadronic taus")
    ax.set_xlabel("Decay mode")
    ax.legend()
    label(ax, text)
    return fig


def plot_response(responses: Mapping[str, np.ndarray], ax: plt.Axes | None = None, text: str = "",
                  bins: tuple[int, float, float] = (60, 0.7, 1.3)) -> plt.Figure:
    """Distributions of a pT response (e.g. reco-jet pT / visible tau pT) for several detector settings."""
    fig, ax = _ax(ax)
    axis = hist.axis.Regular(*bins, name="r", label=r"$p_T^{\mathrm{jet}}\,/\,p_T^{\tau,\mathrm{vis}}$")
    for i, (name, r) in enumerate(responses.items()):
        h = hist.Hist(axis).fill(r)
        q25, q50, q75 = np.percentile(r, [25, 50, 75])
        hep.histplot(h / h.sum(), ax=ax, color=_color(name, i),
                     label=f"{name}: median {q50:.3f}, IQR/median {(q75 - q25) / q50:.3f}")
    ax.set_xlabel(r"$p_T^{\mathrm{jet}}\,/\,p_T^{\tau,\mathrm{vis}}$")
    ax.set_ylabel("Fraction of tau jets")
    ax.set_yscale("log")
    ax.legend(fontsize="small")
    label(ax, text)
    return fig


def plot_pid_fractions(samples: Mapping[str, JetArrays], ax: plt.Axes | None = None, text: str = "") -> plt.Figure:
    """Fractions of the five candidate types among the constituents of each sample."""
    fig, ax = _ax(ax)
    width = 0.8 / len(samples)
    x = np.arange(len(PID_NAMES))
    for i, (name, a) in enumerate(samples.items()):
        pid = inverse_transform(a.features[a.mask])["pid"]
        fractions = np.bincount(pid, minlength=len(PID_NAMES)) / max(len(pid), 1)
        ax.bar(x + (i - (len(samples) - 1) / 2) * width, fractions, width=width, label=name, color=_color(name, i))
    ax.set_xticks(x, PID_NAMES, rotation=20)
    ax.set_ylabel("Fraction of constituents")
    ax.legend()
    label(ax, text)
    return fig
