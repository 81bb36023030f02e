"""The GPT backbone: causality, padding, the masked loss, checkpoints, pretraining with resume, generation."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tauml.config import ConfigError, FeatureConfig, GPTConfig, PretrainConfig
from tauml.data import DataError
from tauml.evaluation.generation import OBSERVABLES, jet_observables, unigram_perplexity
from tauml.models import CheckpointError
from tauml.models.checkpoints import load_backbone, read_backbone_metadata, save_backbone, verify_backbone
from tauml.models.gpt import (
    CODE_OFFSET,
    GPT,
    PAD_ID,
    START_ID,
    STOP_ID,
    KVCache,
    _decode_step,
    _init_weights,
    generate,
    generate_jets,
    next_token_loss,
)
from tauml.plots.generation import plot_generated_vs_real, plot_training_curves
from tauml.training import pretrain as pretrain_module
from tauml.training.pretrain import evaluate, pretrain

CODEBOOK = 20
VOCAB = CODEBOOK + CODE_OFFSET
TINY = GPTConfig(n_layer=3, n_head=2, n_embd=16, ffn_dim=32, vocab_size=VOCAB, max_len=14)


def tiny_model(seed: int = 0, **changes) -> GPT:
    torch.manual_seed(seed)
    return GPT(replace(TINY, **changes)).eval()


def sequences(codes: list[list[int]], length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token sequences [START, c+3..., STOP, PAD...] of ``length`` positions, as the tokenizer writes them."""
    tokens = torch.full((len(codes), length), PAD_ID, dtype=torch.long)
    for row, jet in enumerate(codes):
        seq = [START_ID, *(c + CODE_OFFSET for c in jet), STOP_ID]
        tokens[row, : len(seq)] = torch.tensor(seq)
    return tokens, tokens != PAD_ID


def toy_jets(n: int, seed: int, max_codes: int = 12) -> tuple[torch.Tensor, torch.Tensor]:
    """A structured toy language: a random first code, then each code is the previous one + 3 (mod 20)."""
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, max_codes + 1, (n,), generator=generator).tolist()
    firsts = torch.randint(0, CODEBOOK, (n,), generator=generator).tolist()
    return sequences([[(f + 3 * j) % CODEBOOK for j in range(length)] for f, length in zip(firsts, lengths)],
                     max_codes + 2)


def test_token_convention_matches_the_tokenizer():
    assert (PAD_ID, START_ID, STOP_ID, CODE_OFFSET) == (0, 1, 2, 3)
    vqvae = pytest.importorskip("tauml.models.vqvae")
    assert (vqvae.PAD_ID, vqvae.START_ID, vqvae.STOP_ID, vqvae.CODE_OFFSET) == (PAD_ID, START_ID, STOP_ID, CODE_OFFSET)


# ---------------------------------------------------------------------------------------------- the module


def test_causal_a_position_ignores_later_tokens():
    model = tiny_model()
    tokens, mask = sequences([[4, 7, 1, 9, 12, 3, 5]], 10)
    reference = model.logits(model(tokens, mask))
    for t in range(1, 8):
        changed = tokens.clone()
        changed[0, t + 1: 9] = torch.randint(CODE_OFFSET, VOCAB, (8 - t,), generator=torch.Generator().manual_seed(t))
        out = model.logits(model(changed, mask))
        assert torch.allclose(out[0, : t + 1], reference[0, : t + 1], atol=1e-6)
        assert not torch.allclose(out[0, t + 1: 9], reference[0, t + 1: 9], atol=1e-4)  # later positions do change


def test_padding_changes_no_real_output_nor_the_loss():
    model = tiny_model()
    tokens, mask = sequences([[4, 7, 1], [2, 9, 11, 5, 6, 0]], 9)
    hidden = model(tokens, mask)
    loss, count = next_token_loss(model, tokens, mask)
    padded_tokens, padded_mask = sequences([[4, 7, 1], [2, 9, 11, 5, 6, 0]], 16)
    garbage = padded_tokens.clone()
    garbage[~padded_mask] = torch.randint(0, VOCAB, (int((~padded_mask).sum()),),
                                          generator=torch.Generator().manual_seed(1))
    for tokens_more in (padded_tokens, garbage):
        hidden_more = model(tokens_more, padded_mask)
        assert torch.allclose(hidden_more[:, :9][mask], hidden[mask], atol=1e-6)
    loss_more, count_more = next_token_loss(model, padded_tokens, padded_mask)
    assert count_more == count == 3 + 1 + 6 + 1
    assert torch.allclose(loss_more, loss, atol=1e-6)


def test_loss_counts_real_targets_only_by_hand():
    model = tiny_model()
    tokens, mask = sequences([[5], [8, 2, 3]], 6)  # [S, 8, E, P, P, P] and [S, 11, 5, 6, E, P]
    loss, count = next_token_loss(model, tokens, mask)
    log_probs = torch.log_softmax(model.logits(model(tokens[:, :-1], mask[:, :-1])), dim=-1)
    by_hand = [-log_probs[0, 0, 8], -log_probs[0, 1, STOP_ID],
               -log_probs[1, 0, 11], -log_probs[1, 1, 5], -log_probs[1, 2, 6], -log_probs[1, 3, STOP_ID]]
    assert count == 6
    assert torch.allclose(loss, torch.stack(by_hand).mean(), atol=1e-6)
    with_padding = F.cross_entropy(model.logits(model(tokens[:, :-1], mask[:, :-1])).transpose(1, 2), tokens[:, 1:])
    assert not torch.allclose(loss, with_padding, atol=1e-3)  # the reference's loss (padding included) differs


def test_loss_refuses_float_masks_and_empty_batches():
    model = tiny_model()
    tokens, mask = sequences([[5]], 4)
    with pytest.raises(TypeError, match="boolean"):
        next_token_loss(model, tokens, mask.float())
    with pytest.raises(ValueError, match="no real target"):
        next_token_loss(model, tokens, torch.zeros_like(mask))


def test_incremental_decoding_equals_the_full_forward_pass():
    model = tiny_model()
    tokens, mask = sequences([[4, 7, 1, 9, 12], [3, 3, 19, 0, 1]], 7)
    full = model.logits(model(tokens, mask))
    cache = KVCache(model, 2, 7)
    for t in range(6):
        step = _decode_step(model, tokens[:, t], cache)
        assert torch.allclose(step, full[:, t], atol=1e-5)


# ----------------------------------------------------------------------------------------------- checkpoints


@pytest.fixture
def checkpoint(tmp_path):
    """A saved 3-block backbone whose tensors could not come from the initialisation (all ~U(-1, 1))."""
    model = tiny_model(seed=3)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.uniform_(-1.0, 1.0)
    path = save_backbone(model, tmp_path / "backbone.pt", {"tokenizer": "abc123", "val_loss": torch.tensor(1.5)})
    return path, model


@pytest.mark.parametrize("k", [1, 2, 3, None])
def test_load_first_k_blocks_equal_to_the_checkpoint(checkpoint, k):
    path, original = checkpoint
    model = load_backbone(path, n_blocks=k, vocab_size=VOCAB, n_embd=16)
    expected_blocks = 3 if k is None else k
    assert len(model.blocks) == expected_blocks and not model.training
    saved = torch.load(path, weights_only=True)["state_dict"]
    loaded = model.state_dict()
    expected_names = {n for n in saved if not n.startswith("blocks.") or int(n.split(".")[1]) < expected_blocks}
    assert set(loaded) == expected_names
    for name, tensor in loaded.items():
        assert torch.equal(tensor, saved[name]), name
    tokens, mask = sequences([[4, 7, 1, 9]], 8)
    for mine, theirs in zip(model.hidden_states(tokens, mask), original.hidden_states(tokens, mask)):
        assert torch.equal(mine, theirs)


def test_metadata_is_stored_as_plain_data(checkpoint):
    path, _ = checkpoint
    info = read_backbone_metadata(path)
    assert info["format"] == "tauml-backbone" and info["vocab_size"] == VOCAB
    assert info["gpt_config"]["n_embd"] == 16
    assert info["metadata"] == {"tokenizer": "abc123", "val_loss": 1.5}


def test_a_model_around_a_loaded_backbone_is_not_reinitialised(checkpoint):
    path, _ = checkpoint
    backbone = load_backbone(path, n_blocks=2)
    tau_model = torch.nn.ModuleDict({"backbone": backbone, "head": torch.nn.Linear(16, 3)})
    tau_model["head"].apply(_init_weights)  # initialising the new head only keeps the pretrained weights
    assert verify_backbone(tau_model, path, prefix="backbone.") == len(backbone.state_dict())
    tau_model.apply(_init_weights)  # the reference's pitfall H.1: re-initialising everything after loading
    with pytest.raises(CheckpointError, match="differs from"):
        verify_backbone(tau_model, path, prefix="backbone.")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"vocab_size": 515}, r"vocab_size=23 .*but vocab_size=515 is expected"),
        ({"n_embd": 64}, r"n_embd=16, but n_embd=64 is expected"),
        ({"n_blocks": 4}, r"n_blocks=4 asked for, but .* has 3 pretrained blocks"),
        ({"n_blocks": 0}, r"n_blocks=0 asked for"),
    ],
)
def test_load_refuses_what_does_not_fit(checkpoint, kwargs, message):
    with pytest.raises(CheckpointError, match=message):
        load_backbone(checkpoint[0], **kwargs)


def test_load_refuses_missing_corrupt_and_foreign_files(checkpoint, tmp_path):
    path, _ = checkpoint
    with pytest.raises(CheckpointError, match="no backbone checkpoint"):
        load_backbone(tmp_path / "absent.pt")
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="cannot read"):
        load_backbone(truncated)
    payload = torch.load(path, weights_only=True)
    for name, change, message in [
        ("format.pt", {"format": "lightning"}, "not a tauml backbone"),
        ("version.pt", {"version": 999}, "format version 999"),
        ("shape.pt", {"state_dict": {**payload["state_dict"], "wte.weight": torch.zeros(23, 8)}}, "does not fit"),
    ]:
        torch.save({**payload, **change}, tmp_path / name)
        with pytest.raises(CheckpointError, match=message):
            load_backbone(tmp_path / name)
    state = dict(payload["state_dict"])
    del state["blocks.0.mlp.fc.weight"]
    torch.save({**payload, "state_dict": state}, tmp_path / "missing_key.pt")
    with pytest.raises(CheckpointError, match=r"Missing key.*blocks\.0\.mlp\.fc\.weight"):
        load_backbone(tmp_path / "missing_key.pt")


# ---------------------------------------------------------------------------------------------- pretraining


def small_run(tmp_path, name: str, epochs: int = 2, n_train: int = 512, **changes):
    train = toy_jets(n_train, seed=1)
    val = toy_jets(128, seed=2)
    config = PretrainConfig(epochs=epochs, batch_size=64, lr=3e-3, warmup_steps=5, device="cpu", seed=7)
    config = replace(config, **changes)
    return train, val, config, tmp_path / name


def test_resume_after_an_interruption_gives_the_same_weights(tmp_path):
    gpt_config = replace(TINY, dropout=0.1)  # dropout draws random numbers: the resumed RNG state matters
    train, val, config, straight_dir = small_run(tmp_path, "straight")
    _, straight = pretrain(*train, *val, gpt_config, config, straight_dir, progress=True)

    class Interrupted(Exception):
        pass

    def interrupt(epoch, record):
        raise Interrupted

    interrupted_dir = tmp_path / "interrupted"
    with pytest.raises(Interrupted):
        pretrain(*train, *val, gpt_config, config, interrupted_dir, progress=False, on_epoch_end=interrupt)
    assert torch.load(interrupted_dir / "training_state.pt", weights_only=True)["epoch"] == 1
    seen = []
    _, resumed = pretrain(*train, *val, gpt_config, config, interrupted_dir, progress=False,
                          on_epoch_end=lambda epoch, record: seen.append(epoch))
    assert seen == [1]  # only the second epoch ran again
    for key in ("train_loss", "val_loss", "val_perplexity"):
        assert [e[key] for e in resumed["epochs"]] == [e[key] for e in straight["epochs"]]
    final = {d: torch.load(tmp_path / d / "training_state.pt", weights_only=True)["model"]
             for d in ("straight", "interrupted")}
    for name, tensor in final["straight"].items():
        assert torch.equal(tensor, final["interrupted"][name]), name
    best = {d: torch.load(tmp_path / d / "backbone.pt", weights_only=True)["state_dict"]
            for d in ("straight", "interrupted")}
    assert all(torch.equal(t, best["interrupted"][n]) for n, t in best["straight"].items())


def test_a_finished_run_returns_at_once_and_other_settings_are_refused(tmp_path, monkeypatch):
    train, val, config, out_dir = small_run(tmp_path, "run", epochs=1)
    model, history = pretrain(*train, *val, TINY, config, out_dir, progress=False)
    monkeypatch.setattr(pretrain_module, "next_token_loss", None)  # any training step would fail now
    again, history_again = pretrain(*train, *val, TINY, config, out_dir, progress=False)
    assert history_again == history
    assert all(torch.equal(t, again.state_dict()[n]) for n, t in model.state_dict().items())
    with pytest.raises(CheckpointError, match="other settings or data"):
        pretrain(*train, *val, TINY, replace(config, lr=1e-4), out_dir, progress=False)
    (out_dir / "backbone.pt").unlink()
    with pytest.raises(CheckpointError, match=r"backbone\.pt is gone"):
        pretrain(*train, *val, TINY, config, out_dir, progress=False)


def test_pretraining_learns_structure_beyond_the_unigram_baseline(tmp_path):
    train, val, config, out_dir = small_run(tmp_path, "learn", epochs=4, n_train=2000)
    model, history = pretrain(*train, *val, TINY, config, out_dir, progress=False, metadata={"tokenizer": "toy"})
    baseline = unigram_perplexity(*train, *val, vocab_size=VOCAB)
    assert history["unigram_perplexity"] == pytest.approx(baseline)
    assert baseline > 15  # codes are nearly uniform over 20, plus STOP
    result = evaluate(model, *val)
    assert result["perplexity"] == pytest.approx(math.exp(result["loss"]))
    assert result["perplexity"] < 0.5 * baseline  # the next code follows from the previous one
    assert result["loss"] == pytest.approx(history["best_val_loss"], rel=1e-5)
    assert evaluate(model, *val, batch_size=7)["loss"] == pytest.approx(result["loss"], rel=1e-5)
    info = read_backbone_metadata(out_dir / "backbone.pt")["metadata"]
    assert info["tokenizer"] == "toy" and info["epoch"] == history["best_epoch"]
    assert (out_dir / "history.json").is_file()
    record = history["epochs"][-1]
    assert record["tokens_per_s"] > 0 and record["jets_per_s"] > 0 and record["train_tokens"] == int(
        train[1][:, 1:].sum())


def test_unigram_perplexity_by_hand():
    train = sequences([[0, 0, 1]], 6)  # targets: code 3, 3, 4, STOP
    val = sequences([[1]], 3)  # targets: code 4, STOP
    # vocabulary of 6 ids, 4 possible targets (2, 3, 4, 5): p = (count + 1) / (4 + 4)
    p4, p_stop = 2 / 8, 2 / 8
    assert unigram_perplexity(*train, *val, vocab_size=6) == pytest.approx(math.exp(-(math.log(p4) + math.log(p_stop)) / 2))


def test_pretrain_refuses_bad_input(tmp_path):
    train, val, config, out_dir = small_run(tmp_path, "bad", epochs=1)
    with pytest.raises(ConfigError, match="vocab_size"):
        pretrain(*train, *val, replace(TINY, vocab_size=0), config, out_dir)
    with pytest.raises(DataError, match="boolean"):
        pretrain(train[0], train[1].int(), *val, TINY, config, out_dir)
    with pytest.raises(DataError, match="outside the vocabulary"):
        pretrain(*train, *val, replace(TINY, vocab_size=10), config, out_dir)
    no_start = train[0].clone()
    no_start[:, 0] = STOP_ID
    with pytest.raises(DataError, match="must begin with START"):
        pretrain(no_start, train[1], *val, TINY, config, out_dir)


# ------------------------------------------------------------------------------------------------ generation


def check_convention(tokens: torch.Tensor, mask: torch.Tensor, max_len: int) -> torch.Tensor:
    """Assert every row is [START, codes (>= 1)..., STOP, PAD...]; return the number of codes per jet."""
    assert tokens.shape[1] == max_len + 2 and torch.equal(mask, tokens != PAD_ID)
    lengths = mask.sum(dim=1)
    assert torch.equal(mask, torch.arange(max_len + 2) < lengths[:, None])  # no PAD inside a jet
    assert bool((tokens[:, 0] == START_ID).all())
    assert bool((tokens.gather(1, lengths[:, None] - 1) == STOP_ID).all())
    inner = tokens[:, 1:][mask[:, 1:] & (torch.arange(1, max_len + 2) < lengths[:, None] - 1)]
    assert bool((inner >= CODE_OFFSET).all())  # only codes between START and STOP
    assert bool((lengths >= 3).all())
    return lengths - 2


def test_generation_follows_the_token_convention_and_is_reproducible():
    model = tiny_model()
    tokens, mask = generate(model, 50, max_len=12, seed=4, batch_size=16)
    n_codes = check_convention(tokens, mask, 12)
    assert n_codes.min() >= 1 and n_codes.max() <= 12
    again, _ = generate(model, 50, max_len=12, seed=4, batch_size=16)
    other, _ = generate(model, 50, max_len=12, seed=5, batch_size=16)
    assert torch.equal(tokens, again) and not torch.equal(tokens, other)
    assert model.training is False


def steer(model: GPT, weights: dict[int, float]) -> GPT:
    """Make the next-token logits the same everywhere: hidden state all ones, logit of token t = width * w_t."""
    with torch.no_grad():
        model.ln_f.weight.zero_()
        model.ln_f.bias.fill_(1.0)
        model.lm_head.weight.zero_()
        for token, weight in weights.items():
            model.lm_head.weight[token] = weight
    return model


def test_generation_never_samples_pad_or_start_and_stops_after_one_code_at_the_earliest():
    eager_to_stop = steer(tiny_model(), {PAD_ID: 50.0, START_ID: 50.0, STOP_ID: 10.0})
    tokens, mask = generate(eager_to_stop, 40, max_len=8)
    assert torch.equal(check_convention(tokens, mask, 8), torch.ones(40, dtype=torch.long))
    never_stops = steer(tiny_model(), {PAD_ID: 50.0, START_ID: 50.0, STOP_ID: -10.0})
    tokens, mask = generate(never_stops, 40, max_len=8)
    assert torch.equal(check_convention(tokens, mask, 8), torch.full((40,), 8))  # closed with STOP at max_len


def test_temperature_and_top_k():
    preferred = CODE_OFFSET + 5
    model = steer(tiny_model(), {preferred: 0.1, STOP_ID: -0.2})  # code 5 is e^1.6 ~ 5x likelier than others
    share = {}
    for temperature in (0.1, 1.0, 10.0):
        tokens, mask = generate(model, 200, max_len=8, temperature=temperature, seed=1)
        codes = tokens[mask & (tokens >= CODE_OFFSET)]
        share[temperature] = float((codes == preferred).float().mean())
    assert share[0.1] > 0.99 and 0.15 < share[1.0] < 0.4 and share[10.0] < 0.1
    greedy = [generate(model, 20, max_len=8, top_k=1, seed=s)[0] for s in (1, 2)]
    assert torch.equal(greedy[0], greedy[1])  # top_k=1 is greedy: the seed no longer matters
    assert bool((greedy[0][:, 1:-1] == preferred).all()) and bool((greedy[0][:, -1] == STOP_ID).all())
    with pytest.raises(ValueError, match="temperature"):
        generate(model, 2, 4, temperature=0.0)


def test_top_k_samples_only_among_the_k_likeliest_allowed_tokens():
    model = tiny_model(seed=2)
    with torch.no_grad():
        model.lm_head.weight.mul_(200.0)  # distinct, position-dependent preferences
    k = 3
    tokens, mask = generate(model, 30, max_len=10, top_k=k, seed=0)
    logits = model.logits(model(tokens, mask)).detach()
    logits[..., [PAD_ID, START_ID]] = -torch.inf
    logits[:, 0, STOP_ID] = -torch.inf
    rank = (logits[:, :-1] > logits[:, :-1].gather(2, tokens[:, 1:, None])).sum(dim=2)
    sampled = mask[:, 1:] & (torch.arange(1, 12) < mask.sum(dim=1)[:, None] - 1)  # codes; STOP may be forced
    assert bool((rank[sampled] < k).all())
    assert len(set(tokens[mask].tolist())) > k  # the top k change from position to position


def test_generate_jets_decodes_with_the_tokenizer():
    from tauml.config import TokenizerConfig
    from tauml.models.vqvae import Tokenizer

    tokenizer = Tokenizer(TokenizerConfig(codebook_size=CODEBOOK, hidden_dim=16, n_blocks=1, n_heads=2))
    model = tiny_model()
    features, mask = generate_jets(model, tokenizer, 12, max_len=9, seed=3)
    tokens, token_mask = generate(model, 12, max_len=9, seed=3)
    assert features.shape == (12, 9, 10) and features.dtype == np.float32 and mask.dtype == bool
    assert np.array_equal(mask.sum(axis=1), token_mask.sum(dim=1).numpy() - 2)
    assert np.array_equal(features, tokenizer.reconstruct(tokens, token_mask)[0].numpy())
    assert np.allclose(features[mask][:, 5:].sum(axis=1), 1.0) and np.all(features[~mask] == 0.0)
    other = Tokenizer(TokenizerConfig(codebook_size=CODEBOOK + 1, hidden_dim=16, n_blocks=1, n_heads=2))
    with pytest.raises(CheckpointError, match="vocab_size=24 but the backbone 23"):
        generate_jets(model, other, 2, max_len=4)


# ------------------------------------------------------------------------------------ generated-vs-real figures


def constituents(pt, deta, dphi, pid, n_slots=4) -> tuple[np.ndarray, np.ndarray]:
    """Transformed features of one jet from physical values (GeV, radians), padded to ``n_slots``."""
    config = FeatureConfig()
    features = np.zeros((1, n_slots, 10), np.float32)
    n = len(pt)
    features[0, :n, 0] = np.log(pt) - config.log_pt_shift
    features[0, :n, 2] = np.asarray(deta) * config.angle_scale
    features[0, :n, 3] = np.asarray(dphi) * config.angle_scale
    features[0, np.arange(n), 5 + np.asarray(pid)] = 1.0
    return features, np.arange(n_slots)[None, :] < n


def test_jet_observables_by_hand():
    features, mask = constituents([10.0, 20.0, 5.0], [0.1, -0.1, 0.0], [0.2, -0.1, 0.0], [2, 3, 2])
    observables = jet_observables(features, mask)
    pt, eta, phi = np.array([10.0, 20.0, 5.0]), np.array([0.1, -0.1, 0.0]), np.array([0.2, -0.1, 0.0])
    p = np.stack([pt * np.cos(phi), pt * np.sin(phi), pt * np.sinh(eta), pt * np.cosh(eta)]).sum(axis=1)
    assert observables["multiplicity"].tolist() == [3]
    assert observables["jet_mass"][0] == pytest.approx(np.sqrt(p[3] ** 2 - p[0] ** 2 - p[1] ** 2 - p[2] ** 2), rel=1e-4)
    assert observables["jet_pt"][0] == pytest.approx(np.hypot(p[0], p[1]), rel=1e-5)
    assert np.allclose(observables["constituent_pt"], pt, rtol=1e-5)
    assert np.allclose(observables["dphi"], phi, atol=1e-6)
    assert np.allclose(observables["pid_fractions"], [0, 0, 2 / 3, 1 / 3, 0])
    with pytest.raises(TypeError, match="boolean"):
        jet_observables(features, mask.astype(int))


def test_generated_vs_real_figures_and_training_curves():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rng = np.random.default_rng(0)
    n, slots = 300, 12
    features = np.zeros((n, slots, 10), np.float32)
    mask = np.arange(slots)[None, :] < rng.integers(2, slots + 1, n)[:, None]
    features[..., 0] = rng.normal(0.5, 1.0, (n, slots))
    features[..., 2:4] = rng.normal(0.0, 0.6, (n, slots, 2))
    features[np.arange(n)[:, None], np.arange(slots)[None, :], 5 + rng.integers(0, 5, (n, slots))] = 1.0
    features[~mask] = 0.0
    figures = plot_generated_vs_real(features, mask, features[:150], mask[:150], text="test")
    assert set(figures) == {*OBSERVABLES, "pid_fractions"}
    ratio_points = figures["jet_mass"].axes[1].lines[0].get_ydata()
    assert np.all(np.isfinite(ratio_points[ratio_points > 0]))
    history = {"epochs": [{"epoch": e, "train_loss": 3.0 - e, "val_loss": 3.1 - e, "val_perplexity": math.exp(3.1 - e)}
                          for e in range(3)], "unigram_perplexity": 25.0}
    curves = plot_training_curves(history)
    assert any(line.get_ydata()[0] == 25.0 for line in curves.axes[1].lines)  # the unigram baseline is drawn
    for figure in (*figures.values(), curves):
        plt.close(figure)
