"""The embedding study of notebook 05 (the core paper's section 3.3 and Fig. 6), as library functions.

The paper compares t-SNE maps of the jet embeddings of three backbones — untrained, pretrained on pp jets,
fine-tuned to the decay-mode task — coloured by decay mode, and reads from them that pretraining gives the
embedding space some decay-mode structure and fine-tuning more.  Here:

* :func:`embedding_models` builds the three backbones of a preset (the fine-tuned one is the backbone of the
  cached fine-tuning that notebook 03 runs, so it is usually free);
* :func:`study_jets` draws tau jets (``z`` test sample, decay-mode labels) and quark jets (``qq`` test sample),
  never seen in training, and tokenizes them;
* :func:`embed_all` embeds them after every GPT block of every model (:func:`tauml.evaluation.embeddings.jet_embeddings`);
* :func:`tsne_maps`, :func:`separation_scores`, :func:`score_table` and :func:`claim_reading` turn the
  embeddings into maps, numbers and a reading of the paper's claim computed from those numbers.

Labels come in two *kinds* (:data:`tauml.plots.embeddings.LABEL_KINDS`): ``"dm"``, the reduced decay mode 0..5
(-1 for quark jets, which are left out of every decay-mode map and score) and ``"tau"``, 1 for a tau jet and 0
for a quark jet.  Nothing is written to disk here beyond what :func:`tauml.pipeline.finetune` caches.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import torch

from tauml import pipeline
from tauml.config import FinetuneConfig, Preset, get_preset
from tauml.data import DataError
from tauml.data.features import JetArrays
from tauml.evaluation.embeddings import embedding_scores, jet_embeddings, tsne
from tauml.evaluation.verdicts import BETTER, WORSE, compare, threshold, verdict_of
from tauml.models.checkpoints import load_backbone
from tauml.models.gpt import GPT
from tauml.pipeline.finetuning import MODEL_FILE, build_model, finetune, load_model_state, resolve
from tauml.plots.embeddings import MODEL_LABELS, scatter_tsne

#: The three levels of training, in the order of the paper's Fig. 6 (keys of tauml.plots.embeddings.MODEL_LABELS).
MODELS: tuple[str, ...] = ("untrained", "pretrained", "fine_tuned")
#: What a label kind means, for tables and text.
KIND_NAMES: dict[str, str] = {"dm": "decay mode (tau jets)", "tau": "tau vs quark jet"}
#: Key of one t-SNE map: (model, GPT block, label kind, perplexity).
MapKey = tuple[str, int, str, float]

# Notebook 05's fine-tuned models: its configuration cell's defaults; ``tauml prepare`` trains them in advance (with
# the preset's fine-tuning settings these are trainings of notebook 03 too, cached once).
#: The task of the fine-tuned backbone (decay modes, as the paper's Fig. 6).
NOTEBOOK_TASK = "dm"
#: The training seed of the maps.
NOTEBOOK_SEED = 1
#: The seeds of the verdicts.
NOTEBOOK_SEEDS: tuple[int, ...] = (1, 2, 3)
#: The labellings whose claim readings notebook 05 states together (one family of tests).
CLAIM_KINDS: tuple[str, ...] = ("dm", "tau")


def embedding_models(preset: str | Preset = "demo", task: str = "dm", seed: int = 1,
                     progress: bool = True) -> dict[str, Any]:
    """The three backbones of the paper's Fig. 6 as :class:`tauml.models.gpt.GPT` in eval mode:

    * ``"untrained"``: a GPT of the preset's configuration (``pipeline.gpt_config``) with random weights drawn
      from ``seed`` (the global torch random state is left untouched);
    * ``"pretrained"``: the preset's pretrained backbone (``pipeline.backbone_checkpoint``);
    * ``"fine_tuned"``: the backbone of the preset's fine-tuning model for ``task`` (strategy ``fine_tuning``,
      the preset's other fine-tuning settings, ``seed``): :func:`tauml.pipeline.finetune` trains it
      once and caches it, and its best state (``model.pt``) is loaded here.
    """

    p = get_preset(preset)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        untrained = GPT(pipeline.gpt_config(p)).eval()
    pretrained = load_backbone(pipeline.backbone_checkpoint(p, progress=progress))
    config = finetuning_config(p, task, seed)
    result = finetune(p, config, progress=progress)
    if result.folder is None or not (result.folder / MODEL_FILE).exists():
        raise DataError(f"the fine-tuning of {task!r} (seed {seed}) has no saved model: it stopped before its "
                        f"last epoch; call tauml.pipeline.finetune again to finish it")
    model = build_model(p, config)
    model.load_state_dict(load_model_state(result.folder))
    return {"untrained": untrained, "pretrained": pretrained, "fine_tuned": model.backbone.eval()}


def finetuning_config(preset: str | Preset = "demo", task: str = "dm", seed: int = 1) -> FinetuneConfig:
    """The fine-tuning whose backbone is the ``"fine_tuned"`` model of :func:`embedding_models`: strategy
    ``fine_tuning`` for ``task`` with ``seed`` and the preset's other fine-tuning settings (resolved)."""
    p = get_preset(preset)
    return resolve(p, replace(p.finetune, task=task, strategy="fine_tuning", seed=seed))


@dataclass
class StudyJets:
    """Tokenized jets of the study: the tau jets first, then the quark jets.

    ``dm`` is the reduced decay mode 0..5 of a tau jet and -1 for a quark jet; ``is_tau`` is 1 or 0;
    ``jet_pt`` is the reco-jet pT in GeV.
    """

    tokens: np.ndarray
    mask: np.ndarray
    dm: np.ndarray
    is_tau: np.ndarray
    jet_pt: np.ndarray

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def n_tau(self) -> int:
        return int(self.is_tau.sum())

    @property
    def labels(self) -> dict[str, np.ndarray]:
        """``{"dm": decay mode (-1 = quark jet), "tau": 1/0}``, one entry per jet."""
        return {"dm": self.dm, "tau": self.is_tau}


def study_jets(preset: str | Preset = "demo", n_jets: int = 1200, seed: int = 1) -> StudyJets:
    """At most ``n_jets`` tau jets of the ``z`` test sample and at most ``n_jets`` quark jets of the ``qq`` test
    sample, drawn at random with ``seed``, tokenized with the preset's tokenizer.

    Both pass the decay-mode task's reco-jet pT selection (``pipeline.min_jet_pt(preset, "dm")``); tau jets are
    the jets matched to a hadronic tau, quark jets those that are not.  Test jets never enter any training.
    Fewer jets are returned where the samples hold fewer (the demo's test files hold about 1,300 of each).
    """

    if n_jets < 1:
        raise ValueError(f"n_jets={n_jets} must be positive (jets of each kind)")
    rng = np.random.default_rng(seed)
    parts = []
    for sample, tau in (("z", 1), ("qq", 0)):
        jets = pipeline.sample_jets(preset, sample, "test")
        chosen = np.flatnonzero((jets.jet_pt > pipeline.min_jet_pt(preset, "dm")) & (jets.is_tau == tau)
                                & (jets.n_constituents > 0))
        if len(chosen) == 0:
            raise DataError(f"the {sample!r} test sample holds no {'tau' if tau else 'quark'} jet passing the "
                            f"selection; generate more events (tauml generate --sample {sample})")
        if len(chosen) > n_jets:
            chosen = np.sort(rng.choice(chosen, size=n_jets, replace=False))
        parts.append(jets.subset(chosen))
    jets = JetArrays.concatenate(parts)
    tokens, mask = pipeline.tokens(preset, jets, f"embedding-study/{n_jets}/{seed}")
    is_tau = np.asarray(jets.is_tau, dtype=np.int64)
    return StudyJets(tokens=tokens, mask=mask, dm=np.where(is_tau == 1, jets.dm, -1).astype(np.int64),
                     is_tau=is_tau, jet_pt=np.asarray(jets.jet_pt))


def embed_all(models: Mapping[str, Any], tokens: np.ndarray, mask: np.ndarray,
              pooling: str = "mean") -> dict[str, dict[int, np.ndarray]]:
    """``{model: {block: (n_jets, n_embd)}}``: :func:`tauml.evaluation.embeddings.jet_embeddings` of every model."""

    if not models:
        raise ValueError("no models to embed with: pass e.g. embedding_models(preset)")
    return {name: jet_embeddings(model, tokens, mask, pooling=pooling) for name, model in models.items()}


# ----------------------------------------------------------------------------------------------------------
# Label kinds: which jets a kind of label colours
# ----------------------------------------------------------------------------------------------------------


def labelled(labels: Mapping[str, np.ndarray], kind: str) -> np.ndarray:
    """Boolean mask of the jets that carry a label of ``kind`` (label >= 0; quark jets have no decay mode)."""
    if kind not in labels:
        raise ValueError(f"no {kind!r} labels; the labels hold {', '.join(labels) or 'nothing'}")
    return np.asarray(labels[kind]).ravel() >= 0


def kind_labels(labels: Mapping[str, np.ndarray], kind: str) -> np.ndarray:
    """The labels of ``kind`` of the jets that carry one (the order of :func:`tsne_maps` and the scores)."""
    return np.asarray(labels[kind]).ravel()[labelled(labels, kind)]


def check_embeddings(embeddings_by_model: Mapping[str, Mapping[int, np.ndarray]],
                  labels: Mapping[str, np.ndarray]) -> int:
    """The common number of jets; ValueError naming what does not fit."""
    if not embeddings_by_model or not all(embeddings_by_model.values()):
        raise ValueError("no embeddings: pass {model: {block: (n_jets, n_embd) array}}, e.g. from embed_all")
    if not labels:
        raise ValueError("no labels: pass {kind: array}, e.g. StudyJets.labels")
    sizes = {f"{model} block {block}": len(e) for model, blocks in embeddings_by_model.items()
             for block, e in blocks.items()}
    sizes.update({f"labels {kind!r}": len(np.asarray(y).ravel()) for kind, y in labels.items()})
    if len(set(sizes.values())) != 1:
        raise ValueError(f"embeddings and labels must hold one row per jet, the same jets everywhere: {sizes}")
    return next(iter(sizes.values()))


# ----------------------------------------------------------------------------------------------------------
# Maps and scores
# ----------------------------------------------------------------------------------------------------------


def tsne_maps(embeddings_by_model: Mapping[str, Mapping[int, np.ndarray]], labels: Mapping[str, np.ndarray],
              kinds: Sequence[str] = ("dm", "tau"), block: int | None = None, perplexity: float = 30.0,
              seed: int = 0) -> dict[MapKey, np.ndarray]:
    """t-SNE maps of one GPT block (the last by default) for every model and label kind:
    ``{(model, block, kind, perplexity): (n_labelled, 2)}``, each map of the jets labelled in that kind
    (:func:`labelled`; decay-mode maps hold the tau jets only, as the paper's Fig. 6).  scikit-learn takes
    ~5-10 s per map of 1,000-2,000 jets on one core (:func:`tauml.evaluation.embeddings.tsne`)."""
    check_embeddings(embeddings_by_model, labels)
    maps = {}
    for kind in kinds:
        chosen = labelled(labels, kind)
        for model, blocks in embeddings_by_model.items():
            b = max(blocks) if block is None else block
            if b not in blocks:
                raise ValueError(f"block {b} is not among the blocks of {model!r}: {sorted(blocks)}")
            maps[(model, int(b), kind, float(perplexity))] = tsne(blocks[b][chosen], perplexity=perplexity, seed=seed)
    return maps


def separation_scores(embeddings_by_model: Mapping[str, Mapping[int, np.ndarray]],
                      labels: Mapping[str, np.ndarray], k: int = 15, seed: int = 0) -> dict[str, list[dict]]:
    """kNN accuracy and silhouette of every model and block for every label kind, on the jets labelled in that
    kind: ``{kind: rows of tauml.evaluation.embeddings.embedding_scores}`` (each row with its ``chance`` level)."""

    check_embeddings(embeddings_by_model, labels)
    scores = {}
    for kind in labels:
        chosen = labelled(labels, kind)
        subset = {model: {block: e[chosen] for block, e in blocks.items()}
                  for model, blocks in embeddings_by_model.items()}
        scores[kind] = embedding_scores(subset, kind_labels(labels, kind), k=k, seed=seed)
    return scores


def score_table(scores: Mapping[str, Sequence[Mapping[str, Any]]]) -> list[dict[str, Any]]:
    """One row per model and block with the kNN accuracy and silhouette of every kind, then the chance levels."""
    table: dict[tuple[str, int], dict[str, Any]] = {}
    for kind, rows in scores.items():
        for row in rows:
            entry = table.setdefault((row["model"], row["block"]), {"model": row["model"], "block": row["block"]})
            entry[f"kNN {kind}"] = row["knn_accuracy"]
            entry[f"silhouette {kind}"] = row["silhouette"]
    chance = {"model": "chance (largest class)", "block": "—"}
    for kind, rows in scores.items():
        chance[f"kNN {kind}"] = rows[0]["chance"]
        chance[f"silhouette {kind}"] = 0.0
    return [*table.values(), chance]


def knn_standard_error(accuracy: float, n_jets: int, test_fraction: float = 0.3) -> float:
    """Binomial standard error of a kNN accuracy measured on the ``test_fraction`` of ``n_jets`` jets
    (:func:`tauml.evaluation.embeddings.knn_accuracy` tests on ceil(test_fraction x n_jets) jets)."""
    n_test = math.ceil(test_fraction * n_jets)
    return math.sqrt(max(accuracy * (1.0 - accuracy), 0.0) / n_test)


def claim_reading(scores: Mapping[str, Sequence[Mapping[str, Any]]], kind: str = "dm",
                  block: int | None = None, models: Sequence[str] = MODELS) -> list[dict[str, Any]]:
    """The paper's claim, step by step, from the numbers: for consecutive models (untrained -> pretrained ->
    fine-tuned) at ``block`` (the last by default), the change of kNN accuracy and silhouette, the combined
    binomial standard error of the two accuracies, and a verdict: ``"better"`` (kNN higher by more than 1.96
    standard errors: binomial errors of many test jets), ``"worse"`` (lower by as much) or ``"no clear change"``."""
    rows = {(r["model"], r["block"]): r for r in scores[kind]}
    block = max(b for _, b in rows) if block is None else block
    missing = [m for m in models if (m, block) not in rows]
    if missing:
        raise ValueError(f"no {kind!r} scores of {missing} at block {block}")
    reading = []
    for before, after in itertools.pairwise(models):
        a, b = rows[(before, block)], rows[(after, block)]
        error = math.hypot(knn_standard_error(a["knn_accuracy"], a["n_jets"]),
                           knn_standard_error(b["knn_accuracy"], b["n_jets"]))
        change = b["knn_accuracy"] - a["knn_accuracy"]
        k, _ = threshold((), (), (error,))  # binomial errors only: infinitely many degrees of freedom, k = 1.96
        verdict = {BETTER: "better", WORSE: "worse"}.get(verdict_of(change, error, k), "no clear change")
        reading.append({"step": f"{before} -> {after}", "block": block, "kNN before": a["knn_accuracy"],
                        "kNN after": b["knn_accuracy"], "kNN change": change, "standard error": error,
                        "silhouette change": b["silhouette"] - a["silhouette"], "verdict": verdict})
    return reading


def scores_over_seeds(preset: str | Preset, seeds: Sequence[int], jets: StudyJets, task: str = "dm",
                      pooling: str = "mean", progress: bool = True) -> dict[int, dict[str, list[dict]]]:
    """:func:`separation_scores` of the three models for each seed in ``seeds`` on the same ``jets``: the
    untrained backbone drawn from the seed, the fine-tuned one trained with it (cached, shared with notebooks
    03 and 04), and the kNN split drawn from it (the pretrained backbone is one).  ``{seed: scores}``."""
    out = {}
    for seed in seeds:
        models = embedding_models(preset, task=task, seed=seed, progress=progress)
        embeddings = embed_all(models, jets.tokens, jets.mask, pooling=pooling)
        out[seed] = separation_scores(embeddings, jets.labels, seed=seed)
    return out


def claim_reading_over_seeds(scores_by_seed: Mapping[int, Mapping[str, Sequence[Mapping[str, Any]]]],
                             kind: str = "dm", block: int | None = None,
                             models: Sequence[str] = MODELS, comparisons: int | None = None) -> list[dict[str, Any]]:
    """The paper's claim step by step (untrained -> pretrained -> fine-tuned) from several seeds
    (:func:`scores_over_seeds`): the kNN accuracy of each model as mean ± std over seeds, and the verdict of
    :mod:`tauml.evaluation.verdicts` (the standard error of the seed means plus the binomial error of the
    accuracy on the test jets); ``better``/``worse`` only beyond the Welch t-test threshold of that uncertainty.

    The steps of both labellings of :data:`CLAIM_KINDS` (notebook 05 reads them together) are one family of
    tests: ``comparisons`` defaults to their number, ``len(CLAIM_KINDS) * (len(models) - 1)``."""
    comparisons = comparisons or len(CLAIM_KINDS) * max(len(models) - 1, 1)
    seeds = sorted(scores_by_seed)
    rows = {s: {(r["model"], r["block"]): r for r in scores_by_seed[s][kind]} for s in seeds}
    block = max(b for _, b in rows[seeds[0]]) if block is None else block
    reading = []
    for before, after in itertools.pairwise(models):
        knn = {m: [rows[s][(m, block)]["knn_accuracy"] for s in seeds] for m in (before, after)}
        sil = {m: [rows[s][(m, block)]["silhouette"] for s in seeds] for m in (before, after)}
        n_jets = rows[seeds[0]][(after, block)]["n_jets"]
        stat = {m: knn_standard_error(float(np.mean(knn[m])), n_jets) for m in knn}
        c = compare(knn[after], knn[before], higher_is_better=True, stat_a=stat[after], stat_b=stat[before],
                    comparisons=comparisons)
        reading.append({"step": f"{before} -> {after}", "block": block, "seeds": len(seeds),
                        "kNN before": c.b.text(3), "kNN after": c.a.text(3), "kNN change": c.difference,
                        "uncertainty": c.uncertainty,
                        "silhouette change": float(np.mean(sil[after]) - np.mean(sil[before])),
                        "verdict": c.verdict})
    return reading


def plot_model_maps(maps: Mapping[MapKey, np.ndarray], labels: Mapping[str, np.ndarray],
                    kinds: Sequence[str] = ("dm", "tau"), models: Sequence[str] | None = None,
                    block: int | None = None, perplexity: float | None = None, size: float = 3.0):
    """The paper's Fig. 6 and more: one column per model, one row per label kind, from :func:`tsne_maps`
    (one block and perplexity: the last block and the first perplexity in ``maps`` unless given).  The legend
    of each row sits to its right."""


    if not maps:
        raise ValueError("no t-SNE maps to draw: compute them with tsne_maps")
    models = list(dict.fromkeys(k[0] for k in maps)) if models is None else list(models)
    block = max(k[1] for k in maps) if block is None else block
    perplexity = next(k[3] for k in maps) if perplexity is None else perplexity
    fig, axes = plt.subplots(len(kinds), len(models), figsize=(3.4 * len(models) + 2.6, 3.4 * len(kinds)),
                             squeeze=False, layout="constrained")
    for r, kind in enumerate(kinds):
        for c, model in enumerate(models):
            key = (model, block, kind, float(perplexity))
            if key not in maps:
                raise ValueError(f"no t-SNE map {key}; the maps hold {sorted(maps)}")
            ax = axes[r, c]
            scatter_tsne(ax, maps[key], kind_labels(labels, kind), kind, size)
            if r == 0:
                ax.set_title(MODEL_LABELS.get(model, model), fontsize="medium")
            if c == 0:
                ax.set_ylabel(KIND_NAMES.get(kind, kind), fontsize="small")
            if c == len(models) - 1:
                ax.legend(fontsize="x-small", markerscale=3, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    fig.suptitle(f"t-SNE of the jet embeddings after GPT block {block} (perplexity {perplexity:g})",
                 fontsize="medium")
    return fig
