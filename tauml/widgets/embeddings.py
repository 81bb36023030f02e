"""The embedding explorer of notebook 05: a t-SNE map of any model, GPT block and colouring, on demand.

``embedding_explorer(embeddings_by_model, labels)`` returns an ipywidgets box with four dropdowns — ``model``
(untrained / pretrained / fine-tuned), ``block`` (GPT block), ``kind`` (colouring: decay mode of the tau jets,
or tau vs quark jet) and ``perplexity`` — a ``status`` line with the separation scores of the choice (kNN
accuracy against its chance level, silhouette), and an ``output`` with the map.

A map is computed the first time its (model, block, kind, perplexity) is chosen (t-SNE: seconds for a few
thousand jets) and kept in ``maps``, so going back to a choice shows it at once; ``n_computed`` counts the
t-SNE runs.  Maps already computed elsewhere (:func:`tauml.studies.embeddings.tsne_maps`) can be passed in as
``maps``.  Tests drive the controls headless by setting ``.value``.
"""

from __future__ import annotations

import html
import time
from collections.abc import Mapping, Sequence
from typing import Any

import ipywidgets as widgets
import numpy as np

from tauml.evaluation.embeddings import chance_level, knn_accuracy, silhouette, tsne
from tauml.plots.embeddings import LABEL_KINDS, MODEL_LABELS, plot_tsne
from tauml.studies.embeddings import (
    KIND_NAMES,
    MODELS,
    MapKey,
    check_embeddings,
    kind_labels,
    labelled,
)
from tauml.widgets.common import show

#: Perplexities offered (only those below the number of jets of every colouring are kept).
PERPLEXITIES: tuple[float, ...] = (5.0, 15.0, 30.0, 50.0)


class EmbeddingExplorer(widgets.VBox):
    """The widget :func:`embedding_explorer` returns (see the module docstring); controls are attributes.

    ``maps``: the memoised t-SNE maps ``{(model, block, kind, perplexity): (n_jets of the kind, 2)}``;
    ``scores``: memoised ``{(model, block, kind): (knn_accuracy, silhouette)}``; ``figure``: the last figure
    drawn (closed after it is shown); ``n_computed``: t-SNE runs so far.
    """

    def __init__(self, embeddings_by_model: Mapping[str, Mapping[int, np.ndarray]],
                 labels: Mapping[str, np.ndarray], *, perplexities: Sequence[float] = PERPLEXITIES,
                 perplexity: float = 30.0, model: str | None = None, block: int | None = None,
                 kind: str | None = None, seed: int = 0, maps: Mapping[MapKey, np.ndarray] | None = None,
                 draw_now: bool = True) -> None:

        check_embeddings(embeddings_by_model, labels)
        unknown = sorted(set(labels) - set(LABEL_KINDS))
        if unknown:
            raise ValueError(f"label kinds {unknown} are unknown; use {', '.join(LABEL_KINDS)}")
        block_sets = {name: sorted(blocks) for name, blocks in embeddings_by_model.items()}
        if len({tuple(b) for b in block_sets.values()}) != 1:
            raise ValueError(f"every model needs the same GPT blocks to be compared: {block_sets}")
        self.embeddings = {name: dict(blocks) for name, blocks in embeddings_by_model.items()}
        self.labels = {kind_: np.asarray(y).ravel() for kind_, y in labels.items()}
        self.seed = seed
        smallest = min(int(labelled(self.labels, k).sum()) for k in self.labels)
        usable = sorted({float(p) for p in perplexities if 0 < p < smallest})
        if not usable:
            raise ValueError(f"no perplexity of {list(perplexities)} is below the number of jets of every "
                             f"colouring ({smallest}): pass smaller perplexities or more jets")
        self.maps: dict[MapKey, np.ndarray] = dict(maps or {})
        self.scores: dict[tuple[str, int, str], tuple[float, float]] = {}
        self.n_computed = 0
        self.figure = None

        names = list(self.embeddings)
        ordered = [m for m in MODELS if m in names] + [m for m in names if m not in MODELS]
        blocks = block_sets[names[0]]
        style = {"description_width": "initial"}
        self.model = widgets.Dropdown(options=[(MODEL_LABELS.get(m, m), m) for m in ordered],
                                      value=ordered[-1] if model is None else model, description="Model",
                                      style=style)
        self.block = widgets.Dropdown(options=[(f"block {b}", b) for b in blocks],
                                      value=blocks[-1] if block is None else block, description="GPT block",
                                      style=style)
        kinds = [k for k in LABEL_KINDS if k in self.labels]
        self.kind = widgets.Dropdown(options=[(KIND_NAMES[k], k) for k in kinds],
                                     value=kinds[0] if kind is None else kind, description="Colour by",
                                     style=style)
        self.perplexity = widgets.Dropdown(options=[(f"{p:g}", p) for p in usable],
                                           value=min(usable, key=lambda p: abs(p - perplexity)),
                                           description="Perplexity", style=style)
        self.status = widgets.HTML()
        self.output = widgets.Output()
        for control in (self.model, self.block, self.kind, self.perplexity):
            control.observe(self._draw, names="value")
        super().__init__([widgets.HBox([self.model, self.block]), widgets.HBox([self.kind, self.perplexity]),
                          self.status, self.output])
        if draw_now:
            self._draw()

    @property
    def choice(self) -> MapKey:
        """The (model, block, kind, perplexity) the controls show."""
        return (self.model.value, int(self.block.value), self.kind.value, float(self.perplexity.value))

    def tsne_map(self, key: MapKey) -> np.ndarray:
        """The t-SNE map of ``key``, computed once (:func:`tauml.evaluation.embeddings.tsne`), then memoised."""
        if key not in self.maps:
            model, block, kind, perplexity = key
            chosen = labelled(self.labels, kind)
            self.maps[key] = tsne(self.embeddings[model][block][chosen], perplexity=perplexity, seed=self.seed)
            self.n_computed += 1
        return self.maps[key]

    def separation(self, model: str, block: int, kind: str) -> tuple[float, float]:
        """(kNN accuracy, silhouette) of the choice, memoised."""

        key = (model, block, kind)
        if key not in self.scores:
            x = self.embeddings[model][block][labelled(self.labels, kind)]
            y = kind_labels(self.labels, kind)
            self.scores[key] = (knn_accuracy(x, y, seed=self.seed), silhouette(x, y, seed=self.seed))
        return self.scores[key]

    def _draw(self, _change: Any = None) -> None:

        key = self.choice
        model, block, kind, perplexity = key
        cached = key in self.maps
        title = f"{MODEL_LABELS.get(model, model)}, block {block}"
        if not cached:
            self.status.value = f"computing the t-SNE map of {html.escape(title)} (perplexity {perplexity:g}) …"
        started = time.perf_counter()
        try:
            points = self.tsne_map(key)
            knn, sil = self.separation(model, block, kind)
        except Exception as err:  # shown to the user, not swallowed: the message says what to change
            self.status.value = f"<span style='color:#c00'>{type(err).__name__}: {html.escape(str(err))}</span>"
            raise
        y = kind_labels(self.labels, kind)
        self.figure = plot_tsne(points, y, kind=kind, title=title)
        show(self.output, self.figure)
        timing = "from memory" if cached else f"computed in {time.perf_counter() - started:.1f} s"
        self.status.value = (f"{html.escape(title)}, {KIND_NAMES[kind]}: {len(y):,} jets, t-SNE perplexity "
                             f"{perplexity:g} {timing} · kNN accuracy {knn:.3f} (chance {chance_level(y):.3f}), "
                             f"silhouette {sil:.3f}")


def embedding_explorer(embeddings_by_model: Mapping[str, Mapping[int, np.ndarray]],
                       labels: Mapping[str, np.ndarray], **options: Any) -> EmbeddingExplorer:
    """The explorer of ``{model: {block: (n_jets, n_embd)}}`` (e.g. :func:`tauml.studies.embeddings.embed_all`)
    coloured by ``labels`` ``{"dm": decay mode or -1, "tau": 1/0}`` (e.g. ``StudyJets.labels``); ``options``:
    ``perplexities``, ``perplexity``, ``model``, ``block``, ``kind``, ``seed``, ``maps``, ``draw_now``."""
    return EmbeddingExplorer(embeddings_by_model, labels, **options)
