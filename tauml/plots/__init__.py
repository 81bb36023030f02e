"""Figures for slides: one mplhep style set once, labelled axes with units, and saving.

Every plotting function in ``tauml.plots.*`` takes an optional ``ax`` (or ``axes``), returns the figure,
and leaves styling to :func:`set_style`, which the notebooks call once in their first cell.  Figures are
written to ``$TAUML_RESULTS_DIR/figures`` by :func:`save` when that variable is set (``make demo`` sets it).
"""

from __future__ import annotations

import functools
import inspect
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import mplhep as hep
import numpy as np
from matplotlib._pylab_helpers import Gcf

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


#: Whether mplhep's experiment label takes ``scilocator_adjust`` (mplhep >= 1).
_SCILOCATOR = "scilocator_adjust" in inspect.signature(hep.label.exp_label).parameters


def _in_pyplot(fig: plt.Figure) -> bool:
    """Whether pyplot holds ``fig`` (made with plt.subplots and not closed)."""
    return any(manager.canvas.figure is fig for manager in Gcf.get_all_fig_managers())


def label(ax: plt.Axes, text: str = "", sqrt_s: str = "", above: bool = False) -> None:
    """The experiment-style label on top of an axis: 'tauml Simulation' on the left and, in a smaller font
    so that it never runs into it, a free text on the right (e.g. the sample or the task).  ``above`` puts the
    text on a line of its own above the label, for axes too narrow to hold both side by side (e.g. beside a
    colour bar)."""
    extra = {}
    if _in_pyplot(ax.figure):
        plt.sca(ax)  # mplhep measures the y axis's offset text on plt.gca(): make that this axis
    elif _SCILOCATOR:  # a figure outside pyplot (e.g. drawn by a widget in a thread): plt.gca() would open one
        extra["scilocator_adjust"] = False
    hep.label.exp_label(exp="tauml", text="", data=False, rlabel="", ax=ax, loc=0, **extra)
    if (text or sqrt_s) and above:  # 38 points up: clear of the label's large font (34 points high)
        ax.annotate(text or sqrt_s, xy=(1.0, 1.0), xycoords="axes fraction", xytext=(0, 38),
                    textcoords="offset points", ha="right", va="bottom", fontsize="x-small")
    elif text or sqrt_s:
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


def closes_own_figure(plot: Callable[..., plt.Figure]) -> Callable[..., plt.Figure]:
    """Decorate a plotting function with an ``ax`` argument: a figure it makes itself (no ``ax`` given) is closed
    for pyplot once drawn, so that a notebook shows it with ``display(fig)`` exactly once (Jupyter's inline
    backend shows again, at the end of a cell, every figure pyplot still holds).  It still saves and displays."""
    signature = inspect.signature(plot)

    @functools.wraps(plot)
    def wrapper(*args: Any, **kwargs: Any) -> plt.Figure:
        own = signature.bind(*args, **kwargs).arguments.get("ax") is None
        fig = plot(*args, **kwargs)
        if own:
            plt.close(fig)
        return fig

    return wrapper
