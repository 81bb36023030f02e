"""Figures of the embedding study: t-SNE maps coloured by decay mode or by tau vs quark/gluon jet, a grid of
maps (one row per model: untrained, pretrained, fine-tuned; one column per GPT block) and the separation
scores (kNN accuracy and silhouette per model and block, with the chance level).

Inputs come from :mod:`tauml.evaluation.embeddings` (:func:`~tauml.evaluation.embeddings.tsne`,
:func:`~tauml.evaluation.embeddings.embedding_scores`).  Every function returns the figure.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib.pyplot as plt
import numpy as np

from tauml.data.truth import REDUCED_DM_LATEX
from tauml.plots import COLORS, label

#: Colour and label of each model of the embedding study.
MODEL_COLORS: dict[str, str] = {"untrained": COLORS["deepset"], "pretrained": COLORS["fixed_backbone"],
                                "fine_tuned": COLORS["fine_tuning"]}
MODEL_LABELS: dict[str, str] = {"untrained": "Untrained", "pretrained": "Pretrained", "fine_tuned": "Fine-tuned"}
#: What the labels of a map mean: decay-mode classes 0..5, or 1 = tau jet, 0 = quark/gluon jet.
LABEL_KINDS: tuple[str, ...] = ("dm", "tau")


def _classes(kind: str) -> list[tuple[int, str, str]]:
    """(label value, legend text, colour) of each class."""
    if kind == "dm":
        return [(i, name, f"C{i}") for i, name in enumerate(REDUCED_DM_LATEX)]
    if kind == "tau":
        return [(1, r"$\tau_h$ jets", COLORS["tau"]), (0, "Quark/gluon jets", COLORS["qq"])]
    raise ValueError(f"kind={kind!r}; choose from {', '.join(LABEL_KINDS)}")


def scatter_tsne(ax: plt.Axes, points: np.ndarray, labels: np.ndarray, kind: str, size: float) -> None:
    points = np.asarray(points)
    labels = np.asarray(labels).ravel()
    if points.ndim != 2 or points.shape[1] != 2 or len(points) != len(labels):
        raise ValueError(f"points must be (n_jets, 2) with one label per jet; got {points.shape} and {labels.shape}")
    known = [value for value, _, _ in _classes(kind)]
    unknown = sorted(set(np.unique(labels).tolist()) - set(known))
    if unknown:
        raise ValueError(f"labels {unknown} are not {kind!r} classes ({known}); drop those jets or pick another kind")
    for value, text, color in _classes(kind):
        chosen = labels == value
        if chosen.any():
            ax.scatter(points[chosen, 0], points[chosen, 1], s=size, color=color, label=text, alpha=0.7,
                       linewidths=0, rasterized=True)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.minorticks_off()


def plot_tsne(points: np.ndarray, labels: np.ndarray, kind: str = "dm", ax: plt.Axes | None = None,
              title: str = "", size: float = 6.0, text: str = "") -> plt.Figure:
    """One t-SNE map ``points`` (n_jets, 2) coloured by ``labels``: ``kind="dm"`` for the reduced decay mode
    (0..5), ``kind="tau"`` for tau (1) vs quark/gluon (0) jets.  ``title`` (e.g. "Fine-tuned, block 3") is written
    in the top-left corner; the legend sits to the right of the map."""
    if ax is None:
        _, ax = plt.subplots(figsize=(6.5, 6.0))
    scatter_tsne(ax, points, labels, kind, size)
    ax.set_xlabel("t-SNE 1")
    ax.set_ylabel("t-SNE 2")
    ax.legend(fontsize="small", markerscale=2.5, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    if title:
        ax.text(0.03, 0.97, title, transform=ax.transAxes, va="top", fontsize="small")
    label(ax, text)
    return ax.figure


def plot_tsne_grid(maps: Mapping[str, Mapping[int, np.ndarray] | np.ndarray], labels: np.ndarray,
                   kind: str = "dm", size: float = 4.0, text: str = "") -> plt.Figure:
    """A grid of t-SNE maps: one row per model (e.g. ``untrained``, ``pretrained``, ``fine_tuned``) and one
    column per GPT block.  ``maps[model]`` is ``{block: (n_jets, 2)}`` or a single (n_jets, 2) map."""
    if not maps:
        raise ValueError("no t-SNE maps to draw")
    rows = {model: (value if isinstance(value, Mapping) else {0: value}) for model, value in maps.items()}
    blocks = sorted({block for value in rows.values() for block in value})
    fig, axes = plt.subplots(len(rows), len(blocks), figsize=(3.6 * len(blocks), 3.4 * len(rows)),
                             squeeze=False, layout="constrained")
    for r, (model, by_block) in enumerate(rows.items()):
        for c, block in enumerate(blocks):
            ax = axes[r, c]
            if block not in by_block:
                ax.set_axis_off()
                continue
            scatter_tsne(ax, by_block[block], labels, kind, size)
            if r == 0 and block > 0:
                ax.set_title(f"GPT block {block}", fontsize="medium")
            if c == 0:
                ax.set_ylabel(MODEL_LABELS.get(model, model), fontsize="medium")
    handles, names = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, names, loc="outside lower center", ncols=min(len(names), 6), fontsize="small",
               markerscale=3)
    if text:
        fig.suptitle(text, fontsize="medium")
    return fig


def plot_embedding_scores(rows: Sequence[Mapping[str, Any]], text: str = "") -> plt.Figure:
    """Two panels of grouped bars, x = GPT block, one bar per model: kNN accuracy with the chance level
    (largest class fraction, dashed) and the silhouette coefficient; from
    :func:`tauml.evaluation.embeddings.embedding_scores`."""
    if not rows:
        raise ValueError("no score rows to plot: run tauml.evaluation.embeddings.embedding_scores first")
    models = list(dict.fromkeys(r["model"] for r in rows))
    blocks = sorted({int(r["block"]) for r in rows})
    width = 0.8 / len(models)
    fig, (kax, sax) = plt.subplots(1, 2, figsize=(12.0, 5.0), layout="constrained")
    for m, model in enumerate(models):
        by_block = {int(r["block"]): r for r in rows if r["model"] == model}
        x = np.array([b for b in blocks if b in by_block], dtype=float)
        offset = (m - (len(models) - 1) / 2) * width
        style = {"color": MODEL_COLORS.get(model, COLORS.get(model, f"C{m}")),
                 "label": MODEL_LABELS.get(model, model), "width": width}
        kax.bar(x + offset, [by_block[int(b)]["knn_accuracy"] for b in x], **style)
        sax.bar(x + offset, [by_block[int(b)]["silhouette"] for b in x], **style)
    kax.axhline(rows[0]["chance"], color=COLORS["reference"], linestyle="--", linewidth=1,
                label="Chance (largest class)")
    kax.set_ylim(0.0, 1.4)  # room for the legend above the bars
    kax.set_ylabel("kNN accuracy")
    sax.axhline(0.0, color="grey", linewidth=1)
    sax.set_ylabel("Silhouette coefficient")
    for ax in (kax, sax):
        ax.set_xticks(blocks)
        ax.minorticks_off()
        ax.set_xlabel("GPT block")
    kax.legend(fontsize="x-small", loc="upper left", ncols=1)
    label(kax, text)
    return fig
