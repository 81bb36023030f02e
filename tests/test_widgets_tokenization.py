"""The tokenization explorer, driven headless: real tiny tokenizers (one in memory, one from a checkpoint)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest
import torch

from tauml.config import TokenizerConfig
from tauml.evaluation.tokenization import tokenization_metrics
from tauml.models.checkpoints import save_tokenizer
from tauml.models.vqvae import Tokenizer
from tauml.widgets.tokenization import TokenizationExplorer, tokenization_explorer

SLOTS = 12


def toy_jets(seed: int, n: int, width: float) -> tuple[np.ndarray, np.ndarray]:
    """``n`` jets with valid features (real constituents first, charges -1/0/+1, one-hot particle types);
    ``width`` sets the spread of the angles, so two toy datasets differ as narrow and wide jets."""
    rng = np.random.default_rng(seed)
    mask = np.arange(SLOTS)[None, :] < rng.integers(1, SLOTS + 1, n)[:, None]
    features = np.zeros((n, SLOTS, 10), np.float32)
    features[..., 0] = rng.normal(0.5, 1.0, (n, SLOTS))
    features[..., 1] = rng.choice([0.0, 0.698], (n, SLOTS))
    features[..., 2:4] = rng.normal(0.0, width, (n, SLOTS, 2))
    features[..., 4] = rng.integers(-1, 2, (n, SLOTS))
    features[np.arange(n)[:, None], np.arange(SLOTS)[None, :], 5 + rng.integers(0, 5, (n, SLOTS))] = 1.0
    features[~mask] = 0.0
    return features, mask


def tiny_tokenizer(codebook_size: int, seed: int, jets: tuple[np.ndarray, np.ndarray]) -> Tokenizer:
    """A tiny tokenizer whose codebook is k-means of its (untrained) encoder's latents of ``jets``, frozen."""
    tokenizer = Tokenizer(TokenizerConfig(codebook_size=codebook_size, hidden_dim=16, n_blocks=1, n_heads=2,
                                          seed=seed, kmeans_iterations=5))
    tokenizer.vqvae.initialise_codebook(*(torch.from_numpy(a) for a in jets))
    return tokenizer.freeze()


@pytest.fixture(scope="module")
def choices(tmp_path_factory) -> tuple[dict, dict]:
    datasets = {"pp": toy_jets(1, 80, 1.0), "tau": toy_jets(2, 50, 0.1)}
    path = tmp_path_factory.mktemp("tokenizer") / "tokenizer.pt"
    save_tokenizer(tiny_tokenizer(32, 2, datasets["pp"]), path)
    tokenizers = {"small": tiny_tokenizer(8, 1, datasets["pp"]), "codebook_size=32": path}
    return tokenizers, datasets


def images(panel: TokenizationExplorer) -> list[bytes]:
    return [item["data"]["image/png"] for item in panel.output.outputs]


def test_first_choice_is_drawn_at_once(choices):
    tokenizers, datasets = choices
    panel = tokenization_explorer(tokenizers=tokenizers, datasets=datasets)
    assert isinstance(panel, TokenizationExplorer)
    assert panel.tokenizer_choice.value == "small" and panel.dataset_choice.value == "pp"
    assert list(panel.tokenizer_choice.options) == ["small", "codebook_size=32"]
    assert panel.computed == 1  # the in-domain dataset is its own reference
    assert len(images(panel)) == 2  # resolution panels and particle-type confusion
    assert len(panel.figures[0].axes) == 4 and len(panel.figures[0].legends) == 1
    expected = tokenization_metrics(tokenizers["small"], datasets["pp"])
    assert f"particle-type accuracy {expected['pid_accuracy']:.3f}" in panel.summary.value
    assert f"({expected['n_constituents']} constituents" in panel.summary.value


def test_changing_the_choices_redraws_and_caches(choices):
    tokenizers, datasets = choices
    panel = tokenization_explorer(tokenizers=tokenizers, datasets=datasets)
    first_summary, first_images = panel.summary.value, images(panel)

    panel.dataset_choice.value = "tau"
    assert panel.computed == 2
    assert "τ jets" in panel.summary.value and panel.summary.value != first_summary
    assert images(panel) != first_images and len(images(panel)) == 2
    # the tau jets beside the same tokenizer's in-domain reference, in every panel
    assert [t.get_text() for t in panel.figures[0].legends[0].get_texts()] == [
        r"$\tau$ jets, $e^+e^-$ (out of domain)", "pp jets (in domain)"]
    assert all(len(ax.get_legend().get_texts()) == 2 for ax in panel.figures[0].axes)

    panel.tokenizer_choice.value = "codebook_size=32"  # loaded from its checkpoint, evaluated on tau and pp
    assert panel.computed == 4
    assert "<b>codebook_size=32</b>" in panel.summary.value
    assert panel.tokenizer("codebook_size=32").codebook_size == 32 and panel.tokenizer("codebook_size=32").frozen

    panel.tokenizer_choice.value = "small"  # back to a pair seen before: nothing is recomputed
    panel.dataset_choice.value = "pp"
    assert panel.computed == 4
    assert panel.summary.value == first_summary and images(panel) == first_images


def test_metrics_are_those_of_the_chosen_tokenizer(choices):
    tokenizers, datasets = choices
    panel = tokenization_explorer(tokenizers=tokenizers, datasets=datasets, tokenizer="codebook_size=32",
                                  dataset="tau")
    assert panel.computed == 2
    small, large = panel.metrics("small", "tau"), panel.metrics("codebook_size=32", "tau")
    assert panel.computed == 3
    assert small["token_frequency"].shape == (8,) and large["token_frequency"].shape == (32,)
    direct = tokenization_metrics(panel.tokenizer("small"), datasets["tau"])
    assert small["perplexity"] == direct["perplexity"]
    assert np.array_equal(small["pid_confusion"], direct["pid_confusion"])
    assert small["perplexity"] != large["perplexity"]


def test_bad_choices_are_refused_with_the_fix(choices):
    tokenizers, datasets = choices
    with pytest.raises(ValueError, match="no tokenizers to explore"):
        TokenizationExplorer({}, datasets)
    with pytest.raises(ValueError, match="no datasets"):
        TokenizationExplorer(tokenizers, {})
    with pytest.raises(ValueError, match=r"dataset='zh' is not among the choices \['pp', 'tau'\]"):
        tokenization_explorer(tokenizers=tokenizers, datasets=datasets, dataset="zh")
    with pytest.raises(ValueError, match="tokenizer='paper'"):
        tokenization_explorer(tokenizers=tokenizers, datasets=datasets, tokenizer="paper")
