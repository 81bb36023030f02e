"""A panel to generate jets with the pretrained backbone and compare them with real jets.

``generation_panel(model, tokenizer, real_features, real_mask)`` returns an ipywidgets container: a
temperature slider, the number of jets, top-k and the random seed, a *Generate* button, a short text summary
and an :class:`~ipywidgets.Output` with the comparison figure.  Each click samples token sequences with
:func:`tauml.models.gpt.generate_jets`, decodes them with the tokenizer, and redraws multiplicity, jet mass,
constituent pT, Δη, Δφ and particle types of the generated jets against the real ones, and against the real
jets after a round trip through the tokenizer (real -> tokens -> decoded).  The last comparison isolates the
GPT: what it cannot reproduce there is not the tokenizer's fault.

The builder is plain library code (after iminuit's ``ipywidget.py``); tests drive it headless by setting
``.value`` and calling ``.click()`` under the Agg backend.
"""

from __future__ import annotations

import html
import time
from typing import Any

import ipywidgets as widgets
import matplotlib.pyplot as plt
import numpy as np
from IPython.display import clear_output, display

from tauml.evaluation.generation import jet_observables, observable_distances
from tauml.models import CheckpointError
from tauml.models.gpt import GPT, generate_jets
from tauml.plots.generation import plot_observable_grid

REAL = "Real jets"
DECODED = "Real via tokens"
GENERATED = "Generated"
#: Choices of the number-of-jets selector; a few hundred jets take seconds on a laptop.
N_JETS_CHOICES: tuple[int, ...] = (100, 300, 1000, 3000)
#: Choices of the top-k selector (None = sample from every allowed token); only those below the vocabulary are offered.
TOP_K_CHOICES: tuple[int | None, ...] = (None, 1, 5, 20, 50, 100, 200)


class GenerationPanel(widgets.VBox):
    """The widget :func:`generation_panel` returns; its controls are attributes, for scripts and tests.

    ``temperature``, ``n_jets``, ``top_k``, ``seed``: the sampling settings; ``button``: generates and redraws;
    ``summary``: an HTML text; ``output``: the figure.  After a generation, ``result`` holds the generated
    ``features`` and ``mask`` (numpy), ``seconds`` and ``jets_per_s``, the ``settings`` used and the
    ``distances`` per observable (:func:`tauml.evaluation.generation.observable_distances`) to the real and to the
    decoded real jets; ``figure`` is the last matplotlib figure drawn (closed after display).
    """

    def __init__(self, model: GPT, tokenizer: Any, real_features: Any, real_mask: Any, *, n_jets: int = 300,
                 temperature: float = 1.0, top_k: int | None = None, seed: int = 0, max_len: int | None = None,
                 decoded_reference: bool = True, text: str = "", generate_now: bool = True) -> None:
        if tokenizer.vocab_size != model.config.vocab_size:
            raise CheckpointError(
                f"the tokenizer has vocab_size={tokenizer.vocab_size} but the backbone {model.config.vocab_size}: "
                "give the tokenizer the backbone was pretrained on (pipeline.tokenizer(preset))"
            )
        if top_k is not None and not 1 <= top_k < model.config.vocab_size:
            raise ValueError(f"top_k={top_k} must lie in 1..{model.config.vocab_size - 1} (or None for all tokens)")
        if n_jets < 1:
            raise ValueError(f"n_jets={n_jets} must be at least 1")
        real_mask = np.asarray(real_mask)
        if real_mask.dtype != bool or real_mask.ndim != 2 or len(real_mask) < 2:
            raise ValueError(f"real_mask must be a boolean (n_jets, max_constituents) array with at least 2 jets; "
                             f"got {real_mask.dtype} {real_mask.shape}")
        self.model, self.tokenizer, self.text = model, tokenizer, text
        self.max_len = real_mask.shape[1] if max_len is None else max_len
        feature_config = tokenizer.feature_config
        self.references = {REAL: jet_observables(real_features, real_mask, feature_config)}
        if decoded_reference:
            decoded = tokenizer.reconstruct(*tokenizer.tokenize(real_features, real_mask))
            self.references[DECODED] = jet_observables(*decoded, feature_config)
        self.temperature = widgets.FloatSlider(value=temperature, min=0.1, max=3.0, step=0.05, description="Temperature",
                                               continuous_update=False, readout_format=".2f")
        self.n_jets = widgets.Dropdown(options=sorted({*N_JETS_CHOICES, n_jets}), value=n_jets, description="Jets")
        top_k_options = [(str(k), k) for k in sorted({*TOP_K_CHOICES, top_k} - {None}) if k < model.config.vocab_size]
        self.top_k = widgets.Dropdown(options=[("all", None), *top_k_options], value=top_k, description="Top-k")
        self.seed = widgets.BoundedIntText(value=seed, min=0, max=2**31 - 1, description="Seed")
        self.button = widgets.Button(description="Generate", button_style="primary", icon="play",
                                     tooltip="sample jets with these settings and compare them with the real jets")
        self.summary = widgets.HTML()
        self.output = widgets.Output()
        self.result: dict[str, Any] | None = None
        self.figure: plt.Figure | None = None
        self.button.on_click(self._on_click)
        super().__init__([widgets.HBox([self.temperature, self.n_jets]),
                          widgets.HBox([self.top_k, self.seed, self.button]), self.summary, self.output])
        if generate_now:
            self.generate()

    def settings(self) -> dict[str, Any]:
        return {"n_jets": int(self.n_jets.value), "temperature": float(self.temperature.value),
                "top_k": self.top_k.value, "seed": int(self.seed.value), "max_len": self.max_len}

    def generate(self) -> dict[str, Any]:
        """Sample jets with the current settings, redraw the comparison and the summary; returns :attr:`result`."""
        settings = self.settings()
        self.button.disabled = True
        try:
            started = time.perf_counter()
            features, mask = generate_jets(self.model, self.tokenizer, **settings)
            seconds = time.perf_counter() - started
            generated = jet_observables(features, mask, self.tokenizer.feature_config)
            self.result = {
                "features": features, "mask": mask, "seconds": seconds,
                "jets_per_s": settings["n_jets"] / max(seconds, 1e-9), "settings": settings,
                "observables": generated,
                "distances": {name: observable_distances(generated, obs) for name, obs in self.references.items()},
            }
            self.summary.value = self._summary_html()
            figure = plot_observable_grid({**self.references, GENERATED: generated}, reference=REAL,
                                          text=", ".join(filter(None, [self.text, _settings_text(settings)])))
            with self.output:
                clear_output(wait=True)
                display(figure)
            plt.close(figure)
            self.figure = figure
        finally:
            self.button.disabled = False
        return self.result

    def _on_click(self, _button: widgets.Button) -> None:
        with self.output:  # in a notebook, an error shows up in the panel instead of the kernel's log
            self.generate()

    def _summary_html(self) -> str:
        result = self.result
        assert result is not None
        settings, generated = result["settings"], result["observables"]
        multiplicity = {name: float(np.mean(obs["multiplicity"])) for name, obs in self.references.items()}
        at_limit = int(np.sum(generated["multiplicity"] >= self.max_len))
        lines = [
            f"<b>{settings['n_jets']} jets</b> in {result['seconds']:.2f} s ({result['jets_per_s']:.0f} jets/s); "
            f"{html.escape(_settings_text(settings))}.",
            "Mean multiplicity: generated {:.1f}, ".format(float(np.mean(generated["multiplicity"])))
            + ", ".join(f"{_plain_name(name)} {value:.1f}" for name, value in multiplicity.items())
            + f"; {at_limit} jets reached the limit of {self.max_len} constituents.",
        ]
        header = "".join(f"<th>to {_plain_name(name)}</th>" for name in self.references)
        rows = "".join(
            f"<tr><td>{observable}</td>"
            + "".join(f"<td>{result['distances'][name][observable]:.3g}</td>" for name in self.references)
            + "</tr>"
            for observable in ("multiplicity", "jet_mass", "constituent_pt", "deta", "dphi", "pid_fractions")
        )
        table = (f"<table><tr><th>distance of the generated jets</th>{header}</tr>{rows}</table>"
                 "<small>Wasserstein-1 in the observable's units (multiplicity in constituents, masses and pT in "
                 "GeV, angles in rad); particle types: total-variation distance.</small>")
        return "<br>".join(lines) + table


def generation_panel(model: GPT, tokenizer: Any, real_features: Any, real_mask: Any, *, n_jets: int = 300,
                     temperature: float = 1.0, top_k: int | None = None, seed: int = 0, max_len: int | None = None,
                     decoded_reference: bool = True, text: str = "", generate_now: bool = True) -> GenerationPanel:
    """A widget that generates jets with ``model`` and compares them with real jets, redrawn on each click.

    ``model`` is a pretrained backbone (:func:`tauml.models.checkpoints.load_backbone`), ``tokenizer`` the tokenizer it
    was pretrained on; ``real_features`` ``(n, P, 10)`` and the boolean ``real_mask`` ``(n, P)`` are the real
    jets to compare with (transformed features, ``docs/conventions.md``), e.g. the validation pp jets.
    ``n_jets``, ``temperature``, ``top_k`` (None = no restriction) and ``seed`` are the first settings; the same
    settings give the same jets.  ``max_len`` caps the constituents per generated jet (default: the real jets'
    ``P``).  ``decoded_reference`` also shows the real jets after tokenizing and decoding them.  The first
    generation runs at once unless ``generate_now`` is false.
    """
    return GenerationPanel(model, tokenizer, real_features, real_mask, n_jets=n_jets, temperature=temperature,
                           top_k=top_k, seed=seed, max_len=max_len, decoded_reference=decoded_reference, text=text,
                           generate_now=generate_now)


def _settings_text(settings: dict[str, Any]) -> str:
    top_k = "all" if settings["top_k"] is None else settings["top_k"]
    return f"T = {settings['temperature']:.2f}, top-k {top_k}, seed {settings['seed']}"


def _plain_name(name: str) -> str:
    return {DECODED: "real via tokens", REAL: "real"}.get(name, name)
