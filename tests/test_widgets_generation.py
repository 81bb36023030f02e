"""The generation widget, driven headless: real (tiny, randomly initialised) GPT and tokenizer, no mocks."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch

from tauml.config import GPTConfig, TokenizerConfig
from tauml.evaluation.generation import (
    OBSERVABLES,
    generation_distances,
    jet_observables,
    observable_distances,
)
from tauml.models import CheckpointError
from tauml.models.gpt import CODE_OFFSET, GPT
from tauml.models.vqvae import Tokenizer
from tauml.plots.generation import plot_observable_comparison, plot_observable_grid
from tauml.widgets.generation import DECODED, GENERATED, REAL, GenerationPanel, generation_panel

CODEBOOK = 16
SLOTS = 10


@pytest.fixture(scope="module")
def parts() -> tuple[GPT, Tokenizer, np.ndarray, np.ndarray]:
    """A tiny GPT and tokenizer (random weights: they still produce valid jets) and 60 toy 'real' jets."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=16, ffn_dim=32, vocab_size=CODEBOOK + CODE_OFFSET,
                          max_len=SLOTS + 2)).eval()
    tokenizer = Tokenizer(TokenizerConfig(codebook_size=CODEBOOK, hidden_dim=16, n_blocks=1, n_heads=2)).freeze()
    rng = np.random.default_rng(1)
    n = 60
    mask = np.arange(SLOTS)[None, :] < rng.integers(2, SLOTS + 1, n)[:, None]
    features = np.zeros((n, SLOTS, 10), np.float32)
    features[..., 0] = rng.normal(1.0, 1.0, (n, SLOTS))
    features[..., 2:4] = rng.normal(0.0, 0.5, (n, SLOTS, 2))
    features[np.arange(n)[:, None], np.arange(SLOTS)[None, :], 5 + rng.integers(0, 5, (n, SLOTS))] = 1.0
    features[~mask] = 0.0
    return model, tokenizer, features, mask


def legend_texts(panel: GenerationPanel) -> list[str]:
    assert panel.figure is not None
    return [text.get_text() for text in panel.figure.axes[0].get_legend().get_texts()]


def test_click_generates_and_redraws_with_the_widget_settings(parts):
    panel = generation_panel(*parts, n_jets=100, generate_now=False)
    assert panel.result is None and panel.figure is None and panel.summary.value == ""
    panel.button.click()
    first = panel.result
    assert first is not None and first["settings"]["n_jets"] == 100
    assert first["features"].shape == (100, SLOTS, 10) and first["mask"].dtype == bool
    assert np.all(first["mask"].sum(axis=1) >= 1)  # every generated jet has a constituent
    assert len(panel.figure.axes) == 12  # six observables, each with a ratio panel
    assert legend_texts(panel) == [f"{REAL} (60)", f"{DECODED} (60)", f"{GENERATED} (100)"]
    assert "100 jets" in panel.summary.value and "T = 1.00" in panel.summary.value
    assert set(first["distances"]) == {REAL, DECODED}

    figure, summary = panel.figure, panel.summary.value
    panel.n_jets.value = 300
    panel.temperature.value = 0.5
    panel.top_k.value = 5
    panel.seed.value = 7
    panel.button.click()
    assert panel.result["settings"] == {"n_jets": 300, "temperature": 0.5, "top_k": 5, "seed": 7, "max_len": SLOTS}
    assert panel.figure is not figure and panel.summary.value != summary
    assert legend_texts(panel)[-1] == f"{GENERATED} (300)"
    assert "300 jets" in panel.summary.value and "T = 0.50, top-k 5, seed 7" in panel.summary.value
    assert not panel.button.disabled


def test_the_seed_makes_generation_reproducible(parts):
    panel = generation_panel(*parts, n_jets=100, seed=3)
    again = generation_panel(*parts, n_jets=100, seed=3)
    assert np.array_equal(panel.result["features"], again.result["features"])
    panel.button.click()  # same settings, same jets
    assert np.array_equal(panel.result["features"], again.result["features"])
    panel.seed.value = 4
    panel.button.click()
    assert not np.array_equal(panel.result["mask"], again.result["mask"])


def test_top_k_one_is_greedy_every_jet_is_the_same(parts):
    panel = generation_panel(*parts, n_jets=100, top_k=1, seed=0)
    greedy = panel.result["features"]
    assert np.all(greedy == greedy[:1])  # greedy decoding: one sequence, whatever the random numbers
    panel.seed.value = 5
    panel.button.click()
    assert np.array_equal(panel.result["features"], greedy)
    panel.top_k.value = None
    panel.button.click()
    assert not np.all(panel.result["features"] == panel.result["features"][:1])


def test_without_the_decoded_reference(parts):
    panel = generation_panel(*parts, n_jets=100, decoded_reference=False)
    assert legend_texts(panel) == [f"{REAL} (60)", f"{GENERATED} (100)"]
    assert set(panel.result["distances"]) == {REAL}


def test_bad_input_is_refused(parts):
    model, tokenizer, features, mask = parts
    other = Tokenizer(TokenizerConfig(codebook_size=CODEBOOK + 1, hidden_dim=16, n_blocks=1, n_heads=2))
    with pytest.raises(CheckpointError, match="vocab_size=20 but the backbone 19"):
        generation_panel(model, other, features, mask)
    with pytest.raises(ValueError, match="boolean"):
        generation_panel(model, tokenizer, features, mask.astype(int))
    with pytest.raises(ValueError, match="top_k=19"):
        generation_panel(model, tokenizer, features, mask, top_k=19)


# ------------------------------------------------------------------ the plotting helpers the widget draws with


def test_observable_distances_by_hand():
    reference = {name: np.array([1.0, 2.0, 3.0, 4.0]) for name in OBSERVABLES}
    reference["pid_fractions"] = np.array([0.5, 0.5, 0.0, 0.0, 0.0])
    shifted = {name: values + 2.0 for name, values in reference.items() if name != "pid_fractions"}
    shifted["pid_fractions"] = np.array([0.0, 0.5, 0.5, 0.0, 0.0])
    distances = observable_distances(shifted, reference)
    assert distances == pytest.approx({**dict.fromkeys(OBSERVABLES, 2.0), "pid_fractions": 0.5})
    assert observable_distances(reference, reference) == pytest.approx(dict.fromkeys(distances, 0.0))


def test_generation_distances_split_the_real_jets_into_halves(parts):
    _, _, features, mask = parts
    half = len(mask) // 2
    # a perfect tokenizer (decoded = real) and a generator that returns the first half of the real jets
    d = generation_distances((features, mask), (features, mask), (features[:half], mask[:half]))
    assert d["tokenizer: decoded B vs real A"] == d["perfect: real B vs real A"]
    assert d["GPT: generated vs decoded A"] == pytest.approx(dict.fromkeys(d["perfect: real B vs real A"], 0.0))
    assert d["both: generated vs real A"] == pytest.approx(dict.fromkeys(d["perfect: real B vs real A"], 0.0))
    assert d["perfect: real B vs real A"]["multiplicity"] > 0  # two different halves are not identical
    # generated jets beyond half the real ones are not used
    more = generation_distances((features, mask), (features, mask), (features, mask))
    assert more["GPT: generated vs decoded A"] == d["GPT: generated vs decoded A"]


def test_comparison_figures_draw_every_sample_with_ratios_to_the_reference(parts):
    _, _, features, mask = parts
    samples = {"A": jet_observables(features, mask), "B": jet_observables(features[:30], mask[:30])}
    figures = plot_observable_comparison(samples, reference="A", text="test")
    assert set(figures) == {*OBSERVABLES, "pid_fractions"}
    ax, rax = figures["multiplicity"].axes
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["A (60)", "B (30)"]
    ratio = rax.lines[0].get_ydata()  # B / A per multiplicity bin
    counts_a, counts_b = (np.histogram(m.sum(axis=1), np.arange(13))[0] for m in (mask, mask[:30]))
    with np.errstate(divide="ignore", invalid="ignore"):
        expected = (counts_b / 30) / (counts_a / 60)
    both = np.isfinite(ratio) & np.isfinite(expected)
    assert both.sum() >= 5 and np.allclose(ratio[both], expected[both])
    grid = plot_observable_grid(samples)
    assert len(grid.axes) == 12
    with pytest.raises(ValueError, match="reference='C'"):
        plot_observable_grid(samples, reference="C")
    for figure in (*figures.values(), grid):
        plt.close(figure)
