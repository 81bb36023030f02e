"""Jet embeddings of a real (tiny, randomly initialised) GPT, separation scores with known answers, t-SNE,
and the embedding figures."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch

from tauml.config import GPTConfig, HeadConfig
from tauml.data import DataError
from tauml.evaluation.embeddings import (
    chance_level,
    embedding_scores,
    jet_embeddings,
    knn_accuracy,
    silhouette,
    tsne,
)
from tauml.models.gpt import GPT, PAD_ID, START_ID, STOP_ID

N_CODES = 20
GPT_CONFIG = GPTConfig(n_layer=3, n_head=2, n_embd=16, ffn_dim=32, vocab_size=3 + N_CODES, max_len=12)


def _gpt(seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(GPT_CONFIG).eval()


def _jets(n_constituents: list[int], width: int = 10, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """[START, codes..., STOP, PAD...] rows of the given multiplicities, padded to ``width``."""
    g = torch.Generator().manual_seed(seed)
    tokens = torch.full((len(n_constituents), width), PAD_ID, dtype=torch.long)
    mask = torch.zeros_like(tokens, dtype=torch.bool)
    for row, n in enumerate(n_constituents):
        tokens[row, 0] = START_ID
        tokens[row, 1:n + 1] = 3 + torch.randint(0, N_CODES, (n,), generator=g)
        tokens[row, n + 1] = STOP_ID
        mask[row, :n + 2] = True
    return tokens, mask


def _clusters(n_per_class: tuple[int, ...], dim: int = 8, separation: float = 20.0, seed: int = 0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(len(n_per_class), dim)) * separation
    x = np.concatenate([rng.normal(size=(n, dim)) + centers[c] for c, n in enumerate(n_per_class)])
    y = np.concatenate([np.full(n, c) for c, n in enumerate(n_per_class)])
    return x, y


# ----------------------------------------------------------------------------------------------------------
# jet_embeddings
# ----------------------------------------------------------------------------------------------------------


def test_embeddings_are_the_mean_over_constituents_of_each_block():
    model = _gpt()
    multiplicities = [1, 3, 5, 8]
    tokens, mask = _jets(multiplicities)
    out = jet_embeddings(model, tokens, mask)
    assert sorted(out) == [1, 2, 3]
    assert all(v.shape == (4, 16) and v.dtype == np.float32 for v in out.values())
    for row, n in enumerate(multiplicities):  # each jet alone, with no padding at all
        alone = model.hidden_states(tokens[row:row + 1, :n + 2], mask[row:row + 1, :n + 2])
        for block, states in enumerate(alone, start=1):
            expected = states[0, 1:n + 1].mean(dim=0).detach().numpy()  # constituents: START and STOP left out
            np.testing.assert_allclose(out[block][row], expected, atol=1e-5)
    # the blocks differ (the test above would also pass if every block returned the same)
    assert not np.allclose(out[1], out[3])
    assert set(jet_embeddings(model, tokens, mask, n_blocks=2)) == {1, 2}


def test_padding_changes_nothing():
    model = _gpt()
    tokens, mask = _jets([2, 4, 7], width=10)
    reference = jet_embeddings(model, tokens, mask)
    # more PAD slots
    wide_tokens = torch.cat([tokens, torch.full((3, 6), PAD_ID)], dim=1)
    wide_mask = torch.cat([mask, torch.zeros(3, 6, dtype=torch.bool)], dim=1)
    wide = jet_embeddings(model, wide_tokens, wide_mask)
    # garbage code tokens in the padded slots (the mask says they are not there)
    noisy_tokens = torch.where(wide_mask, wide_tokens, torch.full_like(wide_tokens, 3 + 7))
    noisy = jet_embeddings(model, noisy_tokens, wide_mask)
    for block in reference:
        np.testing.assert_allclose(wide[block], reference[block], atol=1e-6)
        np.testing.assert_allclose(noisy[block], reference[block], atol=1e-5)


def test_stop_pooling_batches_and_mode():
    model = _gpt()
    multiplicities = [1, 6, 3, 2, 8]
    tokens, mask = _jets(multiplicities)
    model.train()
    stop = jet_embeddings(model, tokens, mask, pooling="stop", batch_size=2)
    assert model.training  # the mode is restored
    states = _gpt().hidden_states(tokens, mask)
    for row, n in enumerate(multiplicities):
        np.testing.assert_allclose(stop[3][row], states[-1][row, n + 1].detach().numpy(), atol=1e-5)
    np.testing.assert_allclose(jet_embeddings(model, tokens, mask, batch_size=2)[2],
                               jet_embeddings(model, tokens, mask, batch_size=512)[2], atol=1e-6)
    assert not np.allclose(stop[3], jet_embeddings(model, tokens, mask)[3])


def test_embeddings_of_a_tau_model_use_its_blocks():
    from tauml.models.tau import build_tau_model

    model = build_tau_model("dm", "from_scratch", GPT_CONFIG, HeadConfig(n_heads=2, ffn_ratio=2), n_gpt_blocks=2)
    tokens, mask = _jets([2, 5])
    out = jet_embeddings(model, tokens, mask)
    assert sorted(out) == [1, 2]
    np.testing.assert_allclose(out[2], jet_embeddings(model.backbone, tokens, mask, n_blocks=2)[2])


def test_bad_inputs_name_the_problem():
    model = _gpt()
    tokens, mask = _jets([2, 3])
    with pytest.raises(TypeError, match="boolean"):
        jet_embeddings(model, tokens, mask.int())
    broken = tokens.clone()
    broken[0, 0] = 5
    with pytest.raises(DataError, match="START"):
        jet_embeddings(model, broken, mask)
    empty_tokens, empty_mask = _jets([0, 3])
    with pytest.raises(DataError, match="no constituent"):
        jet_embeddings(model, empty_tokens, empty_mask)
    with pytest.raises(ValueError, match="n_blocks"):
        jet_embeddings(model, tokens, mask, n_blocks=4)
    with pytest.raises(ValueError, match="pooling"):
        jet_embeddings(model, tokens, mask, pooling="max")


# ----------------------------------------------------------------------------------------------------------
# Scores with known answers
# ----------------------------------------------------------------------------------------------------------


def test_separated_clusters_score_perfectly():
    x, y = _clusters((300, 200, 100))
    assert knn_accuracy(x, y) == 1.0
    assert silhouette(x, y) > 0.9
    assert silhouette(x, y, metric="cosine") > 0.9


def test_labels_independent_of_embeddings_score_chance():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(3000, 8))
    y = rng.choice(3, size=3000, p=(0.5, 0.3, 0.2))
    chance = chance_level(y)
    assert chance == pytest.approx(0.5, abs=0.03)
    # the prediction is independent of the test jet's label, so the accuracy is sum_c P(predict c) p_c: at most
    # the largest fraction (always the majority) and at least sum_c p_c^2 (guessing with the class fractions)
    fractions = np.bincount(y) / len(y)
    accuracy = knn_accuracy(x, y)
    assert np.sum(fractions**2) - 0.04 < accuracy < chance + 0.04
    assert abs(silhouette(x, y)) < 0.05


def test_chance_level_and_score_rows():
    assert chance_level(np.array([0, 0, 0, 1])) == 0.75
    x_random = np.random.default_rng(0).normal(size=(600, 8))
    x_clustered, y = _clusters((300, 200, 100))
    rows = embedding_scores({"untrained": {1: x_random}, "fine_tuned": {1: x_random, 2: x_clustered}}, y)
    assert [(r["model"], r["block"]) for r in rows] == [("untrained", 1), ("fine_tuned", 1), ("fine_tuned", 2)]
    assert all(r["chance"] == 0.5 and r["n_jets"] == 600 for r in rows)
    assert rows[2]["knn_accuracy"] == 1.0 and rows[2]["silhouette"] > 0.9
    assert rows[0]["knn_accuracy"] < 0.6 and abs(rows[0]["silhouette"]) < 0.1
    with pytest.raises(ValueError, match="one entry per jet"):
        knn_accuracy(x_random[:10], y)
    with pytest.raises(ValueError, match="single class"):
        silhouette(x_random, np.zeros(600))


def test_tsne_shape_determinism_and_clusters():
    x, y = _clusters((60, 50, 40), dim=12)
    first = tsne(x, perplexity=15, seed=3)
    assert first.shape == (150, 2) and np.all(np.isfinite(first))
    np.testing.assert_array_equal(first, tsne(x, perplexity=15, seed=3))
    assert knn_accuracy(first, y, k=5) == 1.0  # the clusters survive the map
    with pytest.raises(ValueError, match="perplexity"):
        tsne(x[:10], perplexity=30)


# ----------------------------------------------------------------------------------------------------------
# Figures
# ----------------------------------------------------------------------------------------------------------


def test_embedding_figures():
    from tauml.data.truth import REDUCED_DM_LATEX
    from tauml.plots.embeddings import plot_embedding_scores, plot_tsne, plot_tsne_grid

    rng = np.random.default_rng(0)
    points = rng.normal(size=(120, 2))
    dm = np.arange(120) % 6
    fig = plot_tsne(points, dm, kind="dm")
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == list(REDUCED_DM_LATEX)
    plt.close(fig)
    fig = plot_tsne(points, dm % 2, kind="tau")
    assert len(fig.axes[0].collections) == 2
    plt.close(fig)
    with pytest.raises(ValueError, match="not 'tau' classes"):
        plot_tsne(points, dm, kind="tau")
    maps = {m: {1: points, 2: points, 3: points} for m in ("untrained", "pretrained", "fine_tuned")}
    fig = plot_tsne_grid(maps, dm)
    assert len(fig.axes) == 9 and fig.axes[0].get_ylabel() == "Untrained" and fig.axes[6].get_ylabel() == "Fine-tuned"
    plt.close(fig)
    rows = [{"model": m, "block": b, "knn_accuracy": 0.5 + 0.1 * b, "silhouette": 0.05 * b, "chance": 0.4,
             "n_jets": 120} for m in ("untrained", "pretrained") for b in (1, 2, 3)]
    fig = plot_embedding_scores(rows)
    knn_ax, sil_ax = fig.axes[:2]
    assert len(knn_ax.patches) == 6 and len(sil_ax.patches) == 6
    assert knn_ax.get_ylabel() == "kNN accuracy" and sil_ax.get_xlabel() == "GPT block"
    plt.close(fig)
