"""Figures for slides: one mplhep style set once, labelled axes with units, and saving.

Every plotting function in ``tauml.plots.*`` takes an optional ``ax`` (or ``axes``), returns the figure,
and leaves styling to :func:`set_style`, which the notebooks call once in their first cell.  Figures are
written to ``$TAUML_RESULTS_DIR/figures`` by :func:`save` when that variable is set (``make demo`` sets it).
"""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib.pyplot as plt
import mplhep as hep
import numpy as np

#: One colour per strategy / model, the same in every figure.
COLORS: dict[str, str] = {
    "from_scratch": "#5790fc",
    "fixed_backbone": "#f89c20",
    "fine_tuning": "#e42536",
    "part": "#964a8b",
    "deepset": "#9c9ca1",
    "reference": "#000000",
    "pp": "#5790fc",
    "tau": "#e42536",
    "qq": "#f89c20",
    "generated": "#e42536",
    "real": "#5790fc",
}
STRATEGY_LABELS: dict[str, str] = {
    "from_scratch": "From scratch",
    "fixed_backbone": "Fixed backbone",
    "fine_tuning": "Fine-tuning",
    "part": "ParticleTransformer",
    "deepset": "DeepSet",
    "reference": "No learning",
}


def set_style() -> None:
    """Use the mplhep ROOT-like style for every later figure (call once per session)."""
    hep.style.use("ROOT")
    plt.rcParams.update({"figure.figsize": (7.0, 5.5), "savefig.bbox": "tight", "legend.frameon": False,
                         "axes.titlesize": "medium", "legend.fontsize": "small", "legend.loc": "best"})


def label(ax: plt.Axes, text: str = "", sqrt_s: str = "") -> None:
    """The experiment-style label on top of an axis: 'tauml Simulation' on the left and, in a smaller font
    so that it never runs into it, a free text on the right (e.g. the sample or the task)."""
    hep.label.exp_label(exp="tauml", text="", data=False, rlabel="", ax=ax, loc=0)
    if text or sqrt_s:
        ax.text(1.0, 1.012, text or sqrt_s, transform=ax.transAxes, ha="right", va="bottom", fontsize="x-small")


def save(fig: plt.Figure, name: str) -> Path | None:
    """Write ``fig`` as PNG to ``$TAUML_RESULTS_DIR/figures/<name>.png`` when that variable is set."""
    results = os.environ.get("TAUML_RESULTS_DIR")
    if not results:
        return None
    path = Path(results) / "figures" / f"{name}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


def ratio_axes(figsize: tuple[float, float] = (7.0, 6.5)) -> tuple[plt.Figure, plt.Axes, plt.Axes]:
    """A main panel and a ratio panel below it, sharing x."""
    fig, (ax, rax) = plt.subplots(2, 1, figsize=figsize, sharex=True,
                                  gridspec_kw={"height_ratios": (3, 1), "hspace": 0.05})
    return fig, ax, rax


def ratio_with_errors(num: np.ndarray, den: np.ndarray, num_var: np.ndarray | None = None,
                      den_var: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """num / den and its uncertainty from Poisson-like variances (NaN where den is 0)."""
    num_var = num if num_var is None else num_var
    den_var = den if den_var is None else den_var
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(den > 0, num / den, np.nan)
        err = ratio * np.sqrt(np.where(num > 0, num_var / num**2, 0) + np.where(den > 0, den_var / den**2, 0))
    return ratio, err
