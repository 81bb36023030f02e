"""The embedding study (tauml.studies.embeddings) and its explorer widget, driven headless.

Inputs are constructed embeddings with known structure — Gaussian clusters, one per class, with a chosen
separation — so that what the scores, verdicts and maps must show is known in advance.  The pipeline test runs
the real three backbones of the tiny preset.
"""

from __future__ import annotations

import math
from dataclasses import replace

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch

from tauml.studies import embeddings as embedding_study
from tauml.studies.embeddings import (
    claim_reading,
    kind_labels,
    knn_standard_error,
    labelled,
    score_table,
    separation_scores,
    tsne_maps,
)
from tauml.widgets.embeddings import EmbeddingExplorer, embedding_explorer

N_TAU, N_QUARK, DIM = 60, 30, 8


def clusters(separation: float, labels: np.ndarray, seed: int) -> np.ndarray:
    """One Gaussian blob (unit width) per label value, centres ``separation`` apart along their own axis."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(len(labels), DIM))
    x[np.arange(len(labels)), labels % DIM] += separation
    return x.astype(np.float32)


@pytest.fixture(scope="module")
def study() -> tuple[dict[str, dict[int, np.ndarray]], dict[str, np.ndarray]]:
    """60 tau jets of 3 decay modes and 30 quark jets (dm = -1): the untrained model carries no structure,
    the pretrained one weak and the fine-tuned one well-separated decay-mode clusters; two blocks each."""
    dm = np.concatenate([np.arange(N_TAU) % 3, np.full(N_QUARK, -1)])
    is_tau = (dm >= 0).astype(np.int64)
    classes = np.where(dm >= 0, dm, 3)  # quark jets form a fourth blob wherever structure exists
    embeddings = {
        "untrained": {b: np.random.default_rng(b).normal(size=(len(dm), DIM)).astype(np.float32) for b in (1, 2)},
        "pretrained": {b: clusters(1.0, classes, seed=10 + b) for b in (1, 2)},
        "fine_tuned": {b: clusters(12.0, classes, seed=20 + b) for b in (1, 2)},
    }
    return embeddings, {"dm": dm, "tau": is_tau}


def image_outputs(panel: EmbeddingExplorer) -> list[dict]:
    return [o for o in panel.output.outputs if "image/png" in o["data"]]


# ----------------------------------------------------------------------------------------------------------
# the widget
# ----------------------------------------------------------------------------------------------------------


def test_explorer_draws_lazily_and_memoises_each_choice(study):
    embeddings, labels = study
    open_before = set(plt.get_fignums())  # figures other tests left open are not this panel's
    panel = embedding_explorer(embeddings, labels, perplexities=(5, 10), perplexity=10)
    assert panel.choice == ("fine_tuned", 2, "dm", 10.0)  # opens on the fine-tuned model's last block
    assert panel.n_computed == 1 and len(image_outputs(panel)) == 1 and len(panel.output.outputs) == 1
    assert panel.maps[panel.choice].shape == (N_TAU, 2)  # decay-mode maps hold the tau jets only
    legend = [t.get_text() for t in panel.figure.axes[0].get_legend().get_texts()]
    assert len(legend) == 3  # the three decay modes present, no quark jets
    assert "computed in" in panel.status.value and "kNN accuracy 1.000" in panel.status.value
    first_map, first_image = panel.maps[panel.choice], image_outputs(panel)[0]["data"]["image/png"]

    panel.kind.value = "tau"
    assert panel.n_computed == 2 and panel.maps[panel.choice].shape == (N_TAU + N_QUARK, 2)
    assert "tau vs quark" in panel.status.value
    assert image_outputs(panel)[0]["data"]["image/png"] != first_image

    panel.kind.value = "dm"  # back to a choice already made: no new t-SNE, the same map
    assert panel.n_computed == 2 and "from memory" in panel.status.value
    assert panel.maps[panel.choice] is first_map

    panel.perplexity.value = 5.0
    panel.block.value = 1
    panel.model.value = "untrained"
    assert panel.n_computed == 5 and len(panel.maps) == 5
    assert panel.choice == ("untrained", 1, "dm", 5.0)
    assert set(panel.scores) == {("fine_tuned", 2, "dm"), ("fine_tuned", 2, "tau"), ("fine_tuned", 1, "dm"),
                                 ("untrained", 1, "dm")}
    knn_untrained, _ = panel.scores[("untrained", 1, "dm")]
    assert knn_untrained < 0.7  # noise: near chance (1/3), far from the fine-tuned model's 1.0
    assert len(panel.output.outputs) == 1  # one figure at a time, replaced in one update
    assert set(plt.get_fignums()) <= open_before  # every figure the panel drew was closed


def test_explorer_uses_maps_computed_elsewhere(study):
    embeddings, labels = study
    maps = tsne_maps(embeddings, labels, kinds=("dm",), perplexity=10, seed=0)
    panel = embedding_explorer(embeddings, labels, perplexities=(5, 10), perplexity=10, maps=maps)
    assert panel.n_computed == 0 and "from memory" in panel.status.value
    drawn = panel.figure.axes[0].collections
    points = np.concatenate([c.get_offsets() for c in drawn])
    expected = maps[("fine_tuned", 2, "dm", 10.0)]
    assert np.allclose(np.sort(points, axis=0), np.sort(expected, axis=0))
    # the same map computed by the widget itself is the same (seeded)
    fresh = EmbeddingExplorer(embeddings, labels, perplexities=(10,), draw_now=False)
    assert fresh.n_computed == 0 and fresh.output.outputs == ()
    assert np.allclose(fresh.tsne_map(("fine_tuned", 2, "dm", 10.0)), expected)


def test_explorer_refuses_inputs_that_do_not_fit(study):
    embeddings, labels = study
    with pytest.raises(ValueError, match="one row per jet"):
        embedding_explorer(embeddings, {"dm": labels["dm"][:-1]})
    with pytest.raises(ValueError, match="perplexity"):
        embedding_explorer(embeddings, labels, perplexities=(N_TAU, 500))
    with pytest.raises(ValueError, match="same GPT blocks"):
        embedding_explorer({**embeddings, "extra": {1: embeddings["untrained"][1]}}, labels)
    with pytest.raises(ValueError, match="unknown"):
        embedding_explorer(embeddings, {**labels, "flavour": labels["tau"]})
    with pytest.raises(ValueError, match="no embeddings"):
        embedding_explorer({}, labels)


# ----------------------------------------------------------------------------------------------------------
# the library
# ----------------------------------------------------------------------------------------------------------


def test_decay_mode_scores_and_maps_use_the_tau_jets_only(study):
    embeddings, labels = study
    assert labelled(labels, "dm").sum() == N_TAU and np.all(kind_labels(labels, "dm") >= 0)
    scores = separation_scores(embeddings, labels, k=5)
    assert {r["n_jets"] for r in scores["dm"]} == {N_TAU} and {r["n_jets"] for r in scores["tau"]} == {N_TAU + N_QUARK}
    assert scores["dm"][0]["chance"] == pytest.approx(1 / 3) and scores["tau"][0]["chance"] == pytest.approx(2 / 3)
    by_model = {(r["model"], r["block"]): r for r in scores["dm"]}
    assert by_model[("fine_tuned", 2)]["knn_accuracy"] == 1.0 and by_model[("fine_tuned", 2)]["silhouette"] > 0.2
    assert abs(by_model[("untrained", 2)]["silhouette"]) < 0.1
    table = score_table(scores)
    assert len(table) == 3 * 2 + 1 and table[-1]["kNN dm"] == pytest.approx(1 / 3)
    assert set(table[0]) == {"model", "block", "kNN dm", "silhouette dm", "kNN tau", "silhouette tau"}
    maps = tsne_maps(embeddings, labels, perplexity=10, seed=3)
    assert set(maps) == {(m, 2, kind, 10.0) for m in embeddings for kind in ("dm", "tau")}
    assert maps[("untrained", 2, "dm", 10.0)].shape == (N_TAU, 2)
    assert np.array_equal(maps[("pretrained", 2, "tau", 10.0)],
                          tsne_maps(embeddings, labels, kinds=("tau",), perplexity=10, seed=3)[("pretrained", 2, "tau", 10.0)])


def test_claim_reading_follows_the_numbers(study):
    embeddings, labels = study
    reading = claim_reading(separation_scores(embeddings, labels, k=5), kind="dm")
    assert [r["step"] for r in reading] == ["untrained -> pretrained", "pretrained -> fine_tuned"]
    assert reading[1]["verdict"] == "better" and reading[1]["block"] == 2
    # the same embeddings twice: no change; swapped: worse
    same = {"untrained": embeddings["fine_tuned"], "pretrained": embeddings["fine_tuned"],
            "fine_tuned": embeddings["untrained"]}
    verdicts = [r["verdict"] for r in claim_reading(separation_scores(same, labels, k=5), kind="dm")]
    assert verdicts == ["no clear change", "worse"]
    with pytest.raises(ValueError, match="no 'dm' scores"):
        claim_reading(separation_scores(embeddings, labels, k=5), kind="dm", block=7)


def test_knn_standard_error_is_binomial_on_the_test_jets():
    assert knn_standard_error(0.5, 100) == pytest.approx(math.sqrt(0.25 / 30))
    assert knn_standard_error(1.0, 100) == 0.0
    assert knn_standard_error(0.8, 1200) == pytest.approx(math.sqrt(0.16 / 360))


def test_model_maps_figure_has_a_row_per_colouring_and_a_column_per_model(study):
    embeddings, labels = study
    maps = tsne_maps(embeddings, labels, perplexity=10)
    fig = embedding_study.plot_model_maps(maps, labels)
    axes = np.array(fig.axes).reshape(2, 3)
    assert [ax.get_legend() is not None for ax in axes.ravel()] == [False, False, True] * 2
    assert axes[0, 0].get_ylabel().startswith("decay mode") and axes[1, 0].get_ylabel() == "tau vs quark jet"
    assert [ax.get_title() for ax in axes[0]] == ["Untrained", "Pretrained", "Fine-tuned"]
    assert [len(ax.collections) for ax in axes[:, 0]] == [3, 2]  # one scatter per class present
    with pytest.raises(ValueError, match="no t-SNE map"):
        embedding_study.plot_model_maps(maps, labels, block=1)
    plt.close(fig)


def test_embed_all_gives_every_model_and_block(study):
    from tauml.config import GPTConfig
    from tauml.models.gpt import CODE_OFFSET, GPT, START_ID, STOP_ID

    torch.manual_seed(0)
    config = GPTConfig(n_layer=2, n_head=2, n_embd=8, ffn_dim=16, vocab_size=10 + CODE_OFFSET, max_len=8)
    models = {"a": GPT(config), "b": GPT(config)}
    tokens = np.array([[START_ID, 3, 4, STOP_ID, 0, 0], [START_ID, 5, 6, 7, 8, STOP_ID]])
    mask = tokens > 0
    out = embedding_study.embed_all(models, tokens, mask)
    assert set(out) == {"a", "b"} and all(set(blocks) == {1, 2} for blocks in out.values())
    assert out["a"][2].shape == (2, 8) and not np.allclose(out["a"][2], out["b"][2])
    with pytest.raises(ValueError, match="no models"):
        embedding_study.embed_all({}, tokens, mask)


@pytest.mark.slow
def test_the_three_backbones_of_the_tiny_preset(tiny_preset, tiny_dataset):
    from tauml import pipeline
    from tauml.models.gpt import GPT
    from tauml.pipeline.finetuning import finetune, resolve

    models = embedding_study.embedding_models(tiny_preset, task="dm", seed=1, progress=False)
    assert list(models) == ["untrained", "pretrained", "fine_tuned"]
    assert all(isinstance(m, GPT) and not m.training for m in models.values())
    pretrained_state = torch.load(pipeline.backbone_checkpoint(tiny_preset), weights_only=False)["state_dict"]
    assert torch.equal(models["pretrained"].wte.weight, pretrained_state["wte.weight"])
    assert not torch.equal(models["untrained"].wte.weight, pretrained_state["wte.weight"])
    again = embedding_study.embedding_models(tiny_preset, task="dm", seed=1, progress=False)
    assert torch.equal(again["untrained"].wte.weight, models["untrained"].wte.weight)  # seeded
    assert torch.equal(again["fine_tuned"].wte.weight, models["fine_tuned"].wte.weight)  # the cached training
    config = resolve(tiny_preset, replace(tiny_preset.finetune, task="dm", strategy="fine_tuning", seed=1))
    result = finetune(tiny_preset, config, progress=False)
    saved = torch.load(result.folder / "model.pt", weights_only=True)
    assert all(torch.equal(tensor, saved[f"backbone.{name}"])
               for name, tensor in models["fine_tuned"].state_dict().items())
    if result.best_epoch >= config.unfreeze_epoch:  # the best epoch trained the backbone: it moved
        assert not torch.equal(models["fine_tuned"].wte.weight, pretrained_state["wte.weight"])

    jets = embedding_study.study_jets(tiny_preset, n_jets=25, seed=2)
    n_quark = len(jets) - jets.n_tau
    assert jets.n_tau == 25 and 0 < n_quark <= 25
    assert np.all(jets.is_tau[:jets.n_tau] == 1) and np.all(jets.is_tau[jets.n_tau:] == 0)
    assert np.all((jets.dm[:jets.n_tau] >= 0) & (jets.dm[:jets.n_tau] <= 5)) and np.all(jets.dm[jets.n_tau:] == -1)
    assert np.all(jets.jet_pt > pipeline.min_jet_pt(tiny_preset, "dm"))
    embeddings = embedding_study.embed_all(models, jets.tokens, jets.mask)
    assert all(e.shape == (len(jets), tiny_preset.gpt.n_embd) and np.all(np.isfinite(e))
               for blocks in embeddings.values() for e in blocks.values())
    with pytest.raises(ValueError, match="n_jets"):
        embedding_study.study_jets(tiny_preset, n_jets=0)
