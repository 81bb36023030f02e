"""What every tauml widget shares: putting figures and tables into an ``ipywidgets.Output`` in one update.

:func:`show` replaces an Output's content at once (no flicker in a notebook) and works the same without a
running kernel, so widgets can be tested headless: ``panel.plot_output.outputs`` holds what a user sees.
Figures are rendered to PNG and closed, so a notebook never accumulates open figures.
"""

from __future__ import annotations

import io
from typing import Any

import ipywidgets as widgets
import matplotlib.pyplot as plt
from IPython.core.interactiveshell import InteractiveShell
from IPython.display import Image


def in_kernel() -> bool:
    """Whether this code runs in a Jupyter kernel (where a panel can train in the background while the
    notebook stays usable); False in a plain Python process, a script or a test."""
    from IPython import get_ipython  # (local: optional, the 'notebooks' extra)

    shell = get_ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None


def figure_image(fig: plt.Figure, dpi: int = 90) -> Image:
    """A PNG image of ``fig`` (which is closed)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return Image(data=buffer.getvalue(), format="png")


def show(output: widgets.Output, *objects: Any) -> None:
    """Replace the content of ``output`` by ``objects`` (figures, IPython display objects, strings)."""
    fmt = InteractiveShell.instance().display_formatter.format
    items = []
    for obj in objects:
        if isinstance(obj, plt.Figure):
            obj = figure_image(obj)
        data, metadata = fmt(obj)
        items.append({"output_type": "display_data", "data": data, "metadata": metadata})
    output.outputs = tuple(items)
