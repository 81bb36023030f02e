"""Jet embeddings of the GPT backbone and how well they separate classes: kNN accuracy, silhouette, t-SNE.

The core paper (section 3.3, Fig. 6) compares t-SNE maps of the jet embeddings of an untrained, a pretrained
and a fine-tuned backbone, coloured by decay mode.  Here the same maps come with two numbers that say what the
eye sees, so that the comparison does not rest on a picture:

* :func:`knn_accuracy`: accuracy of a k-nearest-neighbour classifier of the labels from the embeddings
  (seeded train/test split, standardised features); compare it with the chance level, the largest class
  fraction.
* :func:`silhouette`: the mean silhouette coefficient of the labels in embedding space (-1..1; 0 = classes
  not separated, 1 = compact, well-separated classes).

Embeddings are computed per GPT block by :func:`jet_embeddings`; see docs/studies.md.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from tauml.data import DataError
from tauml.models.gpt import PAD_ID, START_ID, STOP_ID

#: Pooling of the per-token hidden states into one vector per jet.
POOLINGS: tuple[str, ...] = ("mean", "stop")


def _token_ids() -> tuple[int, int, int]:

    return PAD_ID, START_ID, STOP_ID


def jet_embeddings(backbone: nn.Module, tokens: np.ndarray | torch.Tensor, token_mask: np.ndarray | torch.Tensor,
                   n_blocks: int | None = None, pooling: str = "mean",
                   batch_size: int = 512) -> dict[int, np.ndarray]:
    """One embedding per jet after each of the first ``n_blocks`` GPT blocks: ``{block: (n_jets, n_embd)}``,
    blocks numbered 1..n_blocks, float32.

    ``backbone`` is a :class:`tauml.models.gpt.GPT` or a :class:`tauml.models.tau.TauModel` (whose backbone and
    ``n_gpt_blocks`` are then used).  ``tokens`` (n_jets, T) and the boolean ``token_mask`` follow
    docs/conventions.md: ``[START, codes..., STOP, PAD...]``, True on the real positions.  The hidden states are
    the backbone's normalised outputs (:meth:`GPT.hidden_states`), computed in eval mode under ``no_grad`` in
    batches of ``batch_size`` jets; the model's training mode is restored afterwards.

    ``pooling="mean"`` averages the hidden states of the constituent positions only, START and STOP excluded:
    under causal attention START sees nothing but itself, so its state is the same for every jet and would
    only add a multiplicity-dependent offset; STOP is the one position that sees the whole jet, and is
    available alone as ``pooling="stop"``.  Padding never enters either pooling, so appending PAD slots leaves
    the embeddings unchanged.  A jet without constituents has no mean embedding (DataError).
    """
    if pooling not in POOLINGS:
        raise ValueError(f"pooling={pooling!r}; choose from {', '.join(POOLINGS)}")
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be positive")
    if hasattr(backbone, "backbone") and hasattr(backbone, "n_gpt_blocks"):  # a TauModel
        n_blocks = backbone.n_gpt_blocks if n_blocks is None else n_blocks
        backbone = backbone.backbone
    n_blocks = len(backbone.blocks) if n_blocks is None else n_blocks
    if not 1 <= n_blocks <= len(backbone.blocks):
        raise ValueError(f"n_blocks={n_blocks} must lie in 1..{len(backbone.blocks)} (the backbone's blocks)")
    tokens_t, mask_t = _check_tokens(tokens, token_mask)
    device = next(backbone.parameters()).device
    was_training = backbone.training
    backbone.eval()
    outputs: dict[int, list[np.ndarray]] = {block: [] for block in range(1, n_blocks + 1)}
    try:
        with torch.no_grad():
            for start in range(0, len(tokens_t), batch_size):
                mask = mask_t[start:start + batch_size]
                length = int(mask.sum(dim=1).max())  # trailing PAD columns change nothing: drop them
                mask = mask[:, :length].to(device)
                batch_tokens = tokens_t[start:start + batch_size, :length].to(device)
                hidden = backbone.hidden_states(batch_tokens, mask, n_blocks=n_blocks)
                weights = _pooling_weights(mask, pooling)
                for block, states in enumerate(hidden, start=1):
                    pooled = torch.einsum("bt,btc->bc", weights, states.float())
                    outputs[block].append(pooled.cpu().numpy())
    finally:
        backbone.train(was_training)
    return {block: np.concatenate(parts).astype(np.float32) for block, parts in outputs.items()}


def _check_tokens(tokens: Any, token_mask: Any) -> tuple[torch.Tensor, torch.Tensor]:
    _, start_id, stop_id = _token_ids()
    tokens = torch.as_tensor(np.asarray(tokens) if not isinstance(tokens, torch.Tensor) else tokens).long().cpu()
    mask = torch.as_tensor(np.asarray(token_mask) if not isinstance(token_mask, torch.Tensor) else token_mask).cpu()
    if mask.dtype != torch.bool:
        raise TypeError(f"token_mask must be boolean (True = real token), got {mask.dtype}")
    if tokens.ndim != 2 or tokens.shape != mask.shape:
        raise ValueError(f"tokens {tuple(tokens.shape)} and token_mask {tuple(mask.shape)} must both be (n_jets, T)")
    if len(tokens) == 0:
        raise DataError("no jets to embed: tokens has 0 rows")
    n_real = mask.sum(dim=1)
    if bool((mask[:, 1:] & ~mask[:, :-1]).any()):
        raise DataError("token_mask has a real token after a padded one; real tokens must come first in a row")
    if bool((n_real < 3).any()):
        bad = torch.nonzero(n_real < 3).flatten()[:5].tolist()
        raise DataError(f"jets {bad} have no constituent token (fewer than 3 real positions [START, code, STOP]); "
                        f"drop empty jets before embedding them")
    stop_tokens = tokens[torch.arange(len(tokens)), n_real - 1]
    if bool((tokens[:, 0] != start_id).any()) or bool((stop_tokens != stop_id).any()):
        raise DataError(f"every jet must read [START={start_id}, codes..., STOP={stop_id}, PAD...] "
                        f"(docs/conventions.md); tokenize with tauml's tokenizer")
    return tokens, mask


def _pooling_weights(mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """(B, T) weights summing to 1 per jet: uniform over constituents (mean) or one-hot on STOP (stop)."""
    n_real = mask.sum(dim=1)
    positions = torch.arange(mask.shape[1], device=mask.device)[None, :]
    if pooling == "stop":
        return (positions == (n_real - 1)[:, None]).float()
    constituents = mask & (positions >= 1) & (positions < (n_real - 1)[:, None])
    return constituents.float() / constituents.sum(dim=1, keepdim=True).float()


# ----------------------------------------------------------------------------------------------------------
# Scores
# ----------------------------------------------------------------------------------------------------------


def _inputs(embeddings: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(embeddings, dtype=np.float64)
    y = np.asarray(labels).ravel()
    if x.ndim != 2:
        raise ValueError(f"embeddings must be (n_jets, n_features), got shape {x.shape}")
    if len(x) != len(y):
        raise ValueError(f"embeddings ({len(x)}) and labels ({len(y)}) must have one entry per jet")
    if not np.all(np.isfinite(x)):
        raise ValueError("embeddings hold NaN or infinite values")
    if len(np.unique(y)) < 2:
        raise ValueError("the labels hold a single class; a separation score needs at least two")
    return x, y


def _standardize(train: np.ndarray, *others: np.ndarray) -> list[np.ndarray]:
    mean = train.mean(axis=0)
    std = train.std(axis=0)
    std = np.where(std > 0, std, 1.0)
    return [(a - mean) / std for a in (train, *others)]


def chance_level(labels: np.ndarray) -> float:
    """The accuracy of always guessing the most frequent class: the largest class fraction."""
    _, counts = np.unique(np.asarray(labels).ravel(), return_counts=True)
    return float(counts.max() / counts.sum())


def knn_accuracy(embeddings: np.ndarray, labels: np.ndarray, k: int = 15, seed: int = 0,
                 test_fraction: float = 0.3) -> float:
    """Test accuracy of a k-nearest-neighbour classifier (Euclidean, majority vote) of ``labels`` from
    ``embeddings`` (n_jets, n_features).

    The jets are split ``test_fraction`` / rest by ``seed`` (stratified by label when every class has at least
    two jets); the features are standardised with the training part's mean and standard deviation.
    """
    from sklearn.model_selection import train_test_split  # (local: scikit-learn is slow to import)
    from sklearn.neighbors import KNeighborsClassifier

    x, y = _inputs(embeddings, labels)
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction={test_fraction} must lie in (0, 1)")
    _, counts = np.unique(y, return_counts=True)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=test_fraction, random_state=seed, stratify=y if counts.min() >= 2 else None)
    if not 1 <= k <= len(x_train):
        raise ValueError(f"k={k} must lie in 1..{len(x_train)} (the training jets of the split)")
    x_train, x_test = _standardize(x_train, x_test)
    classifier = KNeighborsClassifier(n_neighbors=k).fit(x_train, y_train)
    return float(np.mean(classifier.predict(x_test) == y_test))


def silhouette(embeddings: np.ndarray, labels: np.ndarray, sample_size: int = 2000, seed: int = 0,
               metric: str = "euclidean") -> float:
    """Mean silhouette coefficient of ``labels`` in the standardised embedding space (-1..1).

    Euclidean distance by default, on the same standardised features as :func:`knn_accuracy` (each dimension
    counts equally); ``metric="cosine"`` measures angles instead.  At most ``sample_size`` jets, drawn with
    ``seed``, enter (the score is quadratic in the number of jets).
    """
    from sklearn.metrics import silhouette_score  # (local: scikit-learn is slow to import)

    x, y = _inputs(embeddings, labels)
    (x,) = _standardize(x)
    if sample_size < 2:
        raise ValueError(f"sample_size={sample_size} must be at least 2")
    if len(x) > sample_size:
        chosen = np.random.default_rng(seed).choice(len(x), size=sample_size, replace=False)
        x, y = x[chosen], y[chosen]
        if len(np.unique(y)) < 2:
            raise ValueError("the sampled jets hold a single class; increase sample_size")
    return float(silhouette_score(x, y, metric=metric))


def tsne(embeddings: np.ndarray, perplexity: float = 30.0, seed: int = 0) -> np.ndarray:
    """A 2-d t-SNE map (n_jets, 2) of the standardised embeddings, reproducible with ``seed``.

    Uses openTSNE when it is installed (faster on many jets), else scikit-learn's ``TSNE`` (PCA
    initialisation, Barnes-Hut); both are seeded.  ``perplexity`` must be smaller than the number of jets.
    """
    x = np.asarray(embeddings, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"embeddings must be (n_jets, n_features), got shape {x.shape}")
    if not 0 < perplexity < len(x):
        raise ValueError(f"perplexity={perplexity} must lie in (0, {len(x)}) (the number of jets)")
    (x,) = _standardize(x)
    try:
        from openTSNE import TSNE as OpenTSNE  # (local: optional dependency)
    except ImportError:
        from sklearn.manifold import TSNE
        from threadpoolctl import threadpool_limits

        mapper = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed)
        with threadpool_limits(limits=1):  # 4x faster than two threads on a busy 2-core machine, same result
            return mapper.fit_transform(x).astype(np.float32)
    return np.asarray(OpenTSNE(n_components=2, perplexity=perplexity, random_state=seed,
                               n_jobs=1).fit(x), dtype=np.float32)


def embedding_scores(embeddings_by_model: Mapping[str, Mapping[int, np.ndarray]], labels: np.ndarray,
                     k: int = 15, seed: int = 0, sample_size: int = 2000) -> list[dict[str, Any]]:
    """kNN accuracy and silhouette for every model and block: rows ``{"model", "block", "knn_accuracy",
    "silhouette", "chance", "n_jets"}``, ``chance`` being the largest class fraction.

    ``embeddings_by_model`` maps a model name (e.g. ``"untrained"``, ``"pretrained"``, ``"fine_tuned"``) to
    :func:`jet_embeddings` output; every array must have one row per entry of ``labels``.
    """
    labels = np.asarray(labels).ravel()
    chance = chance_level(labels)
    rows = []
    for model, blocks in embeddings_by_model.items():
        for block, embeddings in sorted(blocks.items()):
            rows.append({
                "model": model, "block": int(block),
                "knn_accuracy": knn_accuracy(embeddings, labels, k=k, seed=seed),
                "silhouette": silhouette(embeddings, labels, sample_size=sample_size, seed=seed),
                "chance": chance, "n_jets": len(labels),
            })
    return rows
