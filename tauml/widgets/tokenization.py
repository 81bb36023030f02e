"""A widget to compare tokenizers on in-domain and out-of-domain jets.

``tokenization_explorer(preset)`` returns an ipywidgets container with two dropdowns (a cached tokenizer, a
dataset), a short text summary and an :class:`~ipywidgets.Output` with the per-feature resolution panels and
the particle-type confusion of the choice.  Metrics (:func:`tauml.evaluation.tokenization.tokenization_metrics`) are computed
the first time a (tokenizer, dataset) pair is chosen and kept in the widget, so switching back is instant.

The builder is plain library code (after iminuit's ``ipywidget.py``); tests drive it headless by setting
``.value`` under the Agg backend.
"""

from __future__ import annotations

import html
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import ipywidgets as widgets
import matplotlib.pyplot as plt
import numpy as np

from tauml import pipeline
from tauml.config import Preset, get_preset
from tauml.data.features import JetArrays
from tauml.evaluation.tokenization import RESIDUAL_NAMES, RESIDUALS, codes_for_fraction, tokenization_metrics
from tauml.models.checkpoints import load_tokenizer
from tauml.plots.tokenization import (
    PID_LABELS,
    dataset_name,
    dataset_short,
    plot_category_confusion,
    plot_resolution,
)
from tauml.widgets.common import show

Jets = JetArrays | tuple[np.ndarray, np.ndarray]


def default_datasets(preset: str | Preset = "demo", n_jets: int = 3000) -> dict[str, JetArrays]:
    """The study's three datasets: pp validation jets (in domain, never seen in the tokenizer training), and the
    test jets of the e+e- samples ``z`` (tau jets) and ``qq`` (quark jets), each cut to its first ``n_jets``."""

    p = get_preset(preset) if isinstance(preset, str) else preset
    jets = {"pp": pipeline.pp_split(p, p.tokenizer.val_fraction, p.tokenizer.seed).val,
            "tau": pipeline.sample_jets(p, "z", "test"),
            "qq": pipeline.sample_jets(p, "qq", "test")}
    return {name: j.subset(slice(0, n_jets)) for name, j in jets.items()}


def default_tokenizers(preset: str | Preset = "demo") -> dict[str, Path]:
    """The tokenizers already trained on the preset's data (:func:`tauml.pipeline.cached_tokenizers`)."""

    return pipeline.cached_tokenizers(preset)


class TokenizationExplorer(widgets.VBox):
    """The widget :func:`tokenization_explorer` returns; its controls are attributes, for scripts and tests.

    ``tokenizer_choice`` and ``dataset_choice``: dropdowns; ``summary``: an HTML text with the key numbers;
    ``output``: the resolution figure and the particle-type confusion.  ``metrics(tokenizer, dataset)`` returns
    the (cached) :func:`tokenization_metrics` of a pair; ``computed`` counts the pairs evaluated so far and
    ``figures`` holds the last figures drawn (closed after display).
    """

    def __init__(self, tokenizers: Mapping[str, Any], datasets: Mapping[str, Jets], *, reference: str | None = None,
                 tokenizer: str | None = None, dataset: str | None = None, text: str = "") -> None:
        if not tokenizers:
            raise ValueError("no tokenizers to explore: train one first (tauml.pipeline.tokenizer(preset)) or "
                             "pass tokenizers={'name': Tokenizer or path}")
        if not datasets:
            raise ValueError("no datasets to explore: pass datasets={'name': JetArrays or (features, mask)}")
        for name, choices, value in (("tokenizer", tokenizers, tokenizer), ("dataset", datasets, dataset)):
            if value is not None and value not in choices:
                raise ValueError(f"{name}={value!r} is not among the choices {list(choices)}")
        if reference is not None and reference not in datasets:
            raise ValueError(f"reference={reference!r} is not among the datasets {list(datasets)}")
        self._tokenizers = dict(tokenizers)
        self._datasets = dict(datasets)
        self._loaded: dict[str, Any] = {}
        self._metrics: dict[tuple[str, str], dict[str, Any]] = {}
        self._seconds: dict[tuple[str, str], float] = {}
        self.reference = next(iter(datasets)) if reference is None else reference
        self.text = text
        self.computed = 0
        self.figures: list[plt.Figure] = []
        self.tokenizer_choice = widgets.Dropdown(options=list(tokenizers), value=tokenizer or next(iter(tokenizers)),
                                                 description="Tokenizer", style={"description_width": "initial"})
        self.dataset_choice = widgets.Dropdown(options=[(dataset_name(n), n) for n in datasets],
                                               value=dataset or next(iter(datasets)), description="Jets",
                                               style={"description_width": "initial"})
        self.summary = widgets.HTML()
        self.output = widgets.Output()
        super().__init__([widgets.HBox([self.tokenizer_choice, self.dataset_choice]), self.summary, self.output])
        self.tokenizer_choice.observe(self._on_change, names="value")
        self.dataset_choice.observe(self._on_change, names="value")
        self.update()

    def tokenizer(self, name: str) -> Any:
        """The tokenizer called ``name`` (a checkpoint path is loaded, frozen, on first use)."""
        if name not in self._loaded:
            value = self._tokenizers[name]
            if isinstance(value, (str, Path)):

                value = load_tokenizer(value)
            self._loaded[name] = value
        return self._loaded[name]

    def metrics(self, tokenizer: str, dataset: str) -> dict[str, Any]:
        """:func:`tokenization_metrics` of ``tokenizer`` on ``dataset``, computed once and then kept."""
        key = (tokenizer, dataset)
        if key not in self._metrics:
            started = time.perf_counter()
            self._metrics[key] = tokenization_metrics(self.tokenizer(tokenizer), self._datasets[dataset])
            self._seconds[key] = time.perf_counter() - started
            self.computed += 1
        return self._metrics[key]

    def _on_change(self, _change: Any) -> None:
        self.update()

    def update(self) -> None:
        """Redraw the summary and the figures for the current choice."""
        tok, data = self.tokenizer_choice.value, self.dataset_choice.value
        self.summary.value = f"<i>evaluating {html.escape(tok)} on {html.escape(dataset_name(data))} …</i>"
        chosen = self.metrics(tok, data)
        shown = {data: chosen}
        if data != self.reference:  # the same tokenizer in domain, for comparison
            shown[self.reference] = self.metrics(tok, self.reference)
        text = self.text or tok
        resolution = plot_resolution(shown, text=text, linestyles={self.reference: "--"} if len(shown) > 1 else None)
        confusion = plot_category_confusion(chosen["pid_confusion"], PID_LABELS, "particle type",
                                            text=dataset_short(data))
        self.figures = [resolution, confusion]
        self.summary.value = self._summary_html(tok, data, chosen)
        show(self.output, resolution, confusion)

    def _summary_html(self, tok: str, data: str, m: Mapping[str, Any]) -> str:
        iqr = ", ".join(f"{RESIDUAL_NAMES[q]} {m['resolution'][q]['iqr']:.3g}" for q in RESIDUALS)
        return (f"<b>{html.escape(tok)}</b> on <b>{html.escape(dataset_name(data))}</b> "
                f"({m['n_constituents']} constituents, {self._seconds[(tok, data)]:.1f} s): "
                f"particle-type accuracy {m['pid_accuracy']:.3f}, charge accuracy {m['charge_accuracy']:.3f}, "
                f"codebook utilisation {m['utilisation']:.2f}, perplexity {m['perplexity']:.0f} "
                f"({codes_for_fraction(m['token_frequency'])} codes carry 90 %).<br>"
                f"IQR of reconstructed − input: {html.escape(iqr)}.")


def tokenization_explorer(preset: str | Preset = "demo", *, tokenizers: Mapping[str, Any] | None = None,
                          datasets: Mapping[str, Jets] | None = None, n_jets: int = 3000, tokenizer: str | None = None,
                          dataset: str | None = None, text: str = "") -> TokenizationExplorer:
    """A widget comparing tokenizers on in-domain and out-of-domain jets, redrawn when a dropdown changes.

    ``tokenizers`` maps a name to a :class:`~tauml.models.vqvae.Tokenizer` or a checkpoint path (default: every
    tokenizer cached for ``preset``, named by how its settings differ, e.g. ``"preset"``,
    ``"codebook_size=128"``).  ``datasets`` maps a name to :class:`~tauml.data.features.JetArrays` or a
    ``(features, mask)`` tuple (default: :func:`default_datasets`, the first ``n_jets`` of pp validation, tau
    and quark jets); the first dataset is drawn dashed beside any other as the in-domain reference.
    ``tokenizer`` and ``dataset`` pick the first choice.
    """
    if tokenizers is None:
        tokenizers = default_tokenizers(preset)
    if datasets is None:
        datasets = default_datasets(preset, n_jets)
    return TokenizationExplorer(tokenizers, datasets, tokenizer=tokenizer, dataset=dataset, text=text)
