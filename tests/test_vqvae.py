"""The VQ-VAE tokenizer: token convention, padding, permutations, freezing, quantizer, checkpoints, training."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import real_file
from torch import nn

from tauml.cache import MODEL_FORMAT_VERSION
from tauml.config import FeatureConfig, TokenizerConfig
from tauml.data import DataError
from tauml.data.features import FEATURE_NAMES, jet_arrays
from tauml.evaluation.tokenization import tokenization_metrics
from tauml.models import CheckpointError
from tauml.models.checkpoints import check_compatible, load_tokenizer, save_tokenizer
from tauml.models.vqvae import (
    CODE_OFFSET,
    PAD_ID,
    START_ID,
    STOP_ID,
    NormFormerBlock,
    Tokenizer,
    VectorQuantizer,
    attention_mask,
    code_counts,
    perplexity,
    utilisation,
)
from tauml.training.tokenizer import evaluate, train_tokenizer

TINY = TokenizerConfig(codebook_size=16, latent_dim=4, hidden_dim=16, n_blocks=1, n_heads=2, dropout=0.0,
                       epochs=3, batch_size=32, lr=3e-3, dead_code_patience=5, kmeans_iterations=5,
                       train_jets=0, seed=7)
MASSES = np.array([0.000511, 0.1057, 0.0, 0.1396, 0.4976])  # GeV, by particle type


def structured_jets(n_jets: int, slots: int = 12, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Jets whose features follow docs/conventions.md and are correlated as real ones: pT-ordered, charge set by
    the particle type, mass hypothesis by particle type, angles narrowing with pT."""
    rng = np.random.default_rng(seed)
    counts = rng.integers(1, slots + 1, n_jets)
    mask = np.arange(slots)[None, :] < counts[:, None]
    pid = rng.choice(5, size=(n_jets, slots), p=[0.05, 0.05, 0.4, 0.35, 0.15])
    charged = np.isin(pid, (0, 1, 3))
    charge = np.where(charged, rng.choice([-1.0, 1.0], size=pid.shape), 0.0)
    log_pt = -np.sort(-rng.normal(1.0, 1.2, size=(n_jets, slots)), axis=1)
    width = 0.6 * np.exp(-0.3 * log_pt)
    features = np.zeros((n_jets, slots, 10), np.float32)
    features[..., 0] = log_pt
    features[..., 1] = MASSES[pid] * 5.0
    features[..., 2] = np.clip(rng.normal(0.0, width), -3, 3)
    features[..., 3] = np.clip(rng.normal(0.0, width), -3, 3)
    features[..., 4] = charge
    features[..., 5:] = np.eye(5)[pid]
    features[~mask] = 0.0
    return features, mask


def initialised_tokenizer(config: TokenizerConfig = TINY, seed: int = 0) -> Tokenizer:
    """A tokenizer whose codebook went through the k-means initialisation on structured jets."""
    tokenizer = Tokenizer(config)
    x, m = structured_jets(64, seed=seed)
    tokenizer.train()
    tokenizer(torch.from_numpy(x), torch.from_numpy(m))
    return tokenizer.eval()


def state_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ----------------------------------------------------------------------------------------------------------
# token convention
# ----------------------------------------------------------------------------------------------------------


def test_token_convention_positions_and_vocab() -> None:
    assert (PAD_ID, START_ID, STOP_ID, CODE_OFFSET) == (0, 1, 2, 3)
    tokenizer = initialised_tokenizer()
    assert tokenizer.vocab_size == TINY.codebook_size + 3
    x, m = structured_jets(20, slots=8, seed=3)
    tokens, token_mask = tokenizer.tokenize(x, m)
    codes = tokenizer.encode(x, m)
    assert tokens.shape == token_mask.shape == (20, 10) and tokens.dtype == torch.long
    assert token_mask.dtype == torch.bool
    for row, n in enumerate(m.sum(1)):
        assert tokens[row, 0] == START_ID
        assert torch.equal(tokens[row, 1:n + 1], codes[row, :n] + CODE_OFFSET)
        assert tokens[row, n + 1] == STOP_ID
        assert torch.all(tokens[row, n + 2:] == PAD_ID)
        assert token_mask[row].tolist() == [True] * (n + 2) + [False] * (8 - n)
        assert torch.all(codes[row, n:] == -1)
    inner = tokens[:, 1:-1][torch.from_numpy(m)]
    assert int(inner.min()) >= CODE_OFFSET and int(inner.max()) < tokenizer.vocab_size


def test_tokenize_refuses_bad_inputs() -> None:
    tokenizer = Tokenizer(TINY)
    x, m = structured_jets(4, slots=6)
    with pytest.raises(DataError, match="boolean"):
        tokenizer.tokenize(x, m.astype(np.int64))
    with pytest.raises(DataError, match="max_constituents, 10"):
        tokenizer.tokenize(x[..., :9], m)
    holes = m.copy()
    holes[0, :2] = [False, True]
    with pytest.raises(DataError, match="padded slot before a real constituent"):
        tokenizer.tokenize(x, holes)
    bad = x.copy()
    bad[0, 0, 2] = np.nan
    with pytest.raises(DataError, match="NaN"):
        tokenizer.tokenize(bad, m)


def test_reconstruct_round_trip_and_refusals() -> None:
    tokenizer = initialised_tokenizer()
    x, m = structured_jets(30, slots=8, seed=4)
    tokens, token_mask = tokenizer.tokenize(x, m)
    features, mask = tokenizer.reconstruct(tokens, token_mask)
    assert features.shape == (30, 8, 10) and features.dtype == torch.float32
    assert torch.equal(mask, torch.from_numpy(m))
    assert torch.all(features[~mask] == 0)
    real = features[mask]
    assert set(real[:, 4].unique().tolist()) <= {-1.0, 0.0, 1.0}
    assert torch.all(real[:, 5:].sum(1) == 1) and set(real[:, 5:].unique().tolist()) <= {0.0, 1.0}
    # decoding the same codes again through encode's latents gives the same features
    again, _ = tokenizer.reconstruct(tokens.clone(), token_mask.clone())
    assert torch.equal(features, again)

    def refused(tokens_: torch.Tensor, mask_: torch.Tensor, match: str) -> None:
        with pytest.raises(ValueError, match=match):
            tokenizer.reconstruct(tokens_, mask_)

    n = int(m[0].sum())
    t = tokens.clone()
    t[0, 1] = STOP_ID
    refused(t, token_mask, "not a code")
    t = tokens.clone()
    t[0, 1] = tokenizer.vocab_size
    refused(t, token_mask, "not a code")
    t = tokens.clone()
    t[0, 0] = tokens[0, 1]
    refused(t, token_mask, "START")
    t = tokens.clone()
    t[0, n + 1] = CODE_OFFSET
    refused(t, token_mask, "STOP")
    if n + 2 < tokens.shape[1]:
        t = tokens.clone()
        t[0, -1] = CODE_OFFSET
        refused(t, token_mask, "PAD")
    refused(tokens, token_mask.long(), "boolean")
    refused(tokens[:, :1], token_mask[:, :1], "max_constituents")


# ----------------------------------------------------------------------------------------------------------
# padding, permutations, the blocks
# ----------------------------------------------------------------------------------------------------------


def test_normformer_block_is_identity_at_init() -> None:
    torch.manual_seed(0)
    block = NormFormerBlock(16, 2, 0.0)
    x = torch.randn(3, 5, 16)
    mask = torch.tensor([[True] * 5, [True] * 2 + [False] * 3, [False] * 5])
    out = block(x, mask, attention_mask(mask))
    assert torch.equal(out, x.masked_fill(~mask[..., None], 0.0))


@pytest.mark.parametrize("categorical_loss", ["cross_entropy", "mse"])
def test_padding_invariance(categorical_loss: str) -> None:
    config = replace(TINY, categorical_loss=categorical_loss)
    x, m = structured_jets(16, slots=8, seed=5)
    rng = np.random.default_rng(1)
    padded_x = np.concatenate([x, np.zeros((16, 5, 10), np.float32)], axis=1)
    padded_m = np.concatenate([m, np.zeros((16, 5), bool)], axis=1)
    garbage = rng.normal(0, 1e3, padded_x.shape).astype(np.float32)
    garbage[..., 0] = np.nan
    padded_x = np.where(padded_m[..., None], padded_x, garbage)
    outputs = []
    for features, mask in ((x, m), (padded_x, padded_m)):
        tokenizer = Tokenizer(config).train()  # training mode: k-means initialisation and dead-code counters run
        outputs.append((tokenizer(torch.from_numpy(features), torch.from_numpy(mask)), tokenizer))
    (plain, tok_plain), (padded, tok_padded) = outputs
    assert torch.equal(padded.codes[:, :8], plain.codes) and torch.all(padded.codes[:, 8:] == -1)
    assert torch.allclose(padded.loss, plain.loss, rtol=1e-5, atol=1e-6)
    assert torch.isfinite(padded.loss)
    for key in plain.parts:
        assert torch.allclose(padded.parts[key], plain.parts[key], rtol=1e-5, atol=1e-6)
    assert torch.allclose(tok_padded.vqvae.quantizer.codebook, tok_plain.vqvae.quantizer.codebook, atol=1e-5)
    tokens, token_mask = tok_plain.eval().tokenize(x, m)
    padded_tokens, padded_token_mask = tok_padded.eval().tokenize(padded_x, padded_m)
    assert torch.equal(padded_tokens[:, :10], tokens) and torch.all(padded_tokens[:, 10:] == PAD_ID)
    assert torch.equal(padded_token_mask[:, :10], token_mask) and not padded_token_mask[:, 10:].any()


def test_encoder_is_permutation_equivariant() -> None:
    tokenizer = initialised_tokenizer()
    for block in tokenizer.vqvae.encoder:  # leave the identity initialisation so that attention matters
        nn.init.normal_(block.norm_in.weight, 1.0, 0.1)
    x, m = structured_jets(10, slots=9, seed=6)
    x_t, m_t = torch.from_numpy(x), torch.from_numpy(m)
    permutation = torch.randperm(9, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        latents = tokenizer.vqvae.encode(x_t, m_t)
        permuted = tokenizer.vqvae.encode(x_t[:, permutation], m_t[:, permutation])
    assert torch.allclose(permuted, latents[:, permutation], atol=1e-5)
    codes = tokenizer.encode(x, m)
    assert torch.equal(tokenizer.encode(x_t[:, permutation], m_t[:, permutation]), codes[:, permutation])
    # attention does mix constituents: changing one constituent changes another's latent
    changed = x_t.clone()
    changed[:, 0, 0] += 3.0
    with torch.no_grad():
        other = tokenizer.vqvae.encode(changed, m_t)
    two_or_more = m_t.sum(1) >= 2
    assert not torch.allclose(other[two_or_more, 1], latents[two_or_more, 1])


# ----------------------------------------------------------------------------------------------------------
# freezing
# ----------------------------------------------------------------------------------------------------------


def test_frozen_tokenizer_never_changes() -> None:
    config = replace(TINY, dead_code_patience=1, dropout=0.2)
    tokenizer = initialised_tokenizer(config)
    with torch.no_grad():
        tokenizer.vqvae.quantizer.codebook[0] = 100.0  # a dead code, that an active replacement would renew
    tokenizer.freeze()
    before = {k: v.clone() for k, v in tokenizer.state_dict().items()}
    parent = nn.Module()
    parent.tokenizer = tokenizer
    parent.head = nn.Linear(config.latent_dim, 1)
    optimizer = torch.optim.AdamW(parent.parameters(), lr=1e-2, weight_decay=0.5)
    x, m = structured_jets(64, seed=8)
    x_t, m_t = torch.from_numpy(x), torch.from_numpy(m)
    head_before = parent.head.weight.clone()
    tokens_before = tokenizer.tokenize(x, m)[0]
    for _ in range(5):
        parent.train()
        assert not any(module.training for module in tokenizer.modules())
        assert parent.head.training
        out = parent.tokenizer(x_t, m_t)
        loss = parent.head(out.latents[m_t]).square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert not torch.equal(parent.head.weight, head_before)  # the head did learn
    assert all(not p.requires_grad for p in tokenizer.parameters())
    tokenizer.vqvae.train()  # even forced into training mode, the quantizer leaves the codebook alone
    tokenizer.vqvae(x_t, m_t)
    assert state_equal(tokenizer.state_dict(), before)
    assert torch.equal(tokenizer.tokenize(x, m)[0], tokens_before)
    parent.eval()
    tokenizer.train(True)
    assert not tokenizer.training


# ----------------------------------------------------------------------------------------------------------
# the quantizer
# ----------------------------------------------------------------------------------------------------------


def clustered_latents(n: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    centres = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    pick = torch.randint(4, (n,), generator=generator)
    return centres[pick] + 0.05 * torch.randn(n, 2, generator=generator)


def test_kmeans_init_ignores_padding_and_is_deterministic() -> None:
    real = clustered_latents(200).reshape(20, 10, 2)
    mask = torch.ones(20, 10, dtype=torch.bool)
    mask[:, 6:] = False
    z = real.clone()
    z[~mask] = 1e3  # padded latents far away must not pull codes
    codebooks = []
    for latents in (z, real.masked_fill(~mask[..., None], 0.0)):
        quantizer = VectorQuantizer(8, 2, beta=0.9, patience=100, kmeans_iterations=10, seed=3).train()
        quantizer(latents, mask)
        assert bool(quantizer.initialised)
        codebooks.append(quantizer.codebook.detach().clone())
    assert torch.equal(codebooks[0], codebooks[1])
    assert codebooks[0].abs().max() < 1.5
    # every cluster of the data has a code close to it
    centres = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    assert torch.cdist(centres, codebooks[0]).min(1).values.max() < 0.1
    # fewer real vectors than codes: sampled with replacement, all codes finite and near the data
    quantizer = VectorQuantizer(64, 2, beta=0.9, patience=100, kmeans_iterations=10, seed=3).train()
    quantizer(z, mask)
    assert torch.isfinite(quantizer.codebook).all() and quantizer.codebook.abs().max() < 1.5


def test_dead_code_replacement_after_patience() -> None:
    quantizer = VectorQuantizer(6, 2, beta=0.9, patience=3, kmeans_iterations=0, seed=0).train()
    with torch.no_grad():
        quantizer.codebook.copy_(torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0],
                                               [50.0, 50.0], [-50.0, 50.0]]))
        quantizer.initialised.fill_(True)
    z = clustered_latents(120).reshape(12, 10, 2)
    mask = torch.ones(12, 10, dtype=torch.bool)
    mask[:, 8:] = False
    z[~mask] = 50.0  # padding sits on code 4: it must not count as a use
    torch.manual_seed(0)
    quantizer.eval()
    for _ in range(10):  # evaluation counts nothing
        quantizer(z, mask)
    assert quantizer.steps_unused.tolist() == [0] * 6
    quantizer.train()
    for step in range(1, 3):
        _, codes, _ = quantizer(z, mask)
        assert set(codes[mask].tolist()) == {0, 1, 2, 3} and torch.all(codes[~mask] == -1)
        assert quantizer.steps_unused.tolist() == [0, 0, 0, 0, step, step]
    assert quantizer.codebook[4:].abs().max() == 50.0  # not before patience
    quantizer(z, mask)  # third unused step: replaced by real latents of this batch
    assert quantizer.codebook[4:].abs().max() < 1.5
    assert quantizer.steps_unused.tolist() == [0] * 6 and quantizer.replaced_count == 2


def test_vq_loss_and_straight_through_gradient() -> None:
    quantizer = VectorQuantizer(4, 2, beta=0.9, patience=100, kmeans_iterations=0, seed=0).train()
    with torch.no_grad():
        quantizer.codebook.copy_(torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]))
        quantizer.initialised.fill_(True)
    z = torch.tensor([[[0.1, 0.0], [0.9, 0.2], [7.0, 7.0]]], requires_grad=True)
    mask = torch.tensor([[True, True, False]])
    z_q, codes, vq_loss = quantizer(z, mask)
    assert codes.tolist() == [[0, 1, -1]]
    assert torch.equal(z_q[0, 2], torch.zeros(2))
    expected = ((0.1**2) + (0.1**2 + 0.2**2)) / 4  # mean over 2 real vectors x 2 dims; beta terms sum to 1
    assert vq_loss.item() == pytest.approx(expected, rel=1e-5)
    z_q.sum().backward()
    assert torch.equal(z.grad[0, :2], torch.ones(2, 2)) and torch.equal(z.grad[0, 2], torch.zeros(2))


def test_utilisation_and_perplexity_count_real_constituents_only() -> None:
    codes = torch.tensor([[0, 1, 2, 3, -1, -1], [0, 1, 2, 3, -1, -1]])
    counts = code_counts(codes, 8)
    assert counts.tolist() == [2, 2, 2, 2, 0, 0, 0, 0]
    assert utilisation(counts) == 0.5
    assert perplexity(counts) == pytest.approx(4.0)
    assert perplexity(torch.tensor([5, 0, 0])) == pytest.approx(1.0)
    tokenizer = initialised_tokenizer()
    x, m = structured_jets(40, slots=8, seed=9)
    metrics = tokenization_metrics(tokenizer, (x, m))
    assert metrics["token_frequency"].sum() == m.sum() == metrics["n_constituents"]
    codes = tokenizer.encode(x, m)
    assert metrics["utilisation"] == pytest.approx(len(codes[codes >= 0].unique()) / TINY.codebook_size)
    # the same jets with much more padding give the same statistics
    padded_x = np.concatenate([x, np.zeros((40, 30, 10), np.float32)], axis=1)
    padded_m = np.concatenate([m, np.zeros((40, 30), bool)], axis=1)
    padded = evaluate(tokenizer, padded_x, padded_m)
    plain = evaluate(tokenizer, x, m)
    for key in ("utilisation", "perplexity", "charge_accuracy", "pid_accuracy"):
        assert padded[key] == pytest.approx(plain[key])
    assert padded["loss"] == pytest.approx(plain["loss"], rel=1e-5)


# ----------------------------------------------------------------------------------------------------------
# checkpoints
# ----------------------------------------------------------------------------------------------------------


def test_checkpoint_round_trip(tmp_path: Path) -> None:
    tokenizer = initialised_tokenizer()
    tokenizer.metadata = {"epochs": 3, "val_loss": 0.5, "utilisation": 0.75}
    path = tmp_path / "tok.pt"
    save_tokenizer(tokenizer, path)
    loaded = load_tokenizer(path)
    assert loaded.frozen and not loaded.training
    assert loaded.metadata == tokenizer.metadata and loaded.config == TINY
    assert state_equal(loaded.state_dict(), tokenizer.state_dict())
    x, m = structured_jets(25, seed=10)
    assert torch.equal(loaded.tokenize(x, m)[0], tokenizer.tokenize(x, m)[0])
    checkpoint = torch.load(path, weights_only=True)
    assert checkpoint["format"] == "tauml-tokenizer" and checkpoint["version"] == MODEL_FORMAT_VERSION
    assert checkpoint["feature_names"] == list(FEATURE_NAMES)
    check_compatible(loaded, FeatureConfig(max_constituents_tau=32), n_features=10,
                     vocab_size=TINY.codebook_size + 3, feature_names=FEATURE_NAMES)


def test_checkpoint_refusals(tmp_path: Path) -> None:
    tokenizer = initialised_tokenizer()
    path = tmp_path / "tok.pt"
    save_tokenizer(tokenizer, path)
    with pytest.raises(CheckpointError, match="mass_scale"):
        check_compatible(tokenizer, FeatureConfig(mass_scale=1.0))
    with pytest.raises(CheckpointError, match="vocab_size=20"):
        check_compatible(tokenizer, vocab_size=20)
    with pytest.raises(CheckpointError, match="11 features"):
        check_compatible(tokenizer, n_features=11)
    with pytest.raises(CheckpointError, match="names and order"):
        check_compatible(tokenizer, feature_names=tuple(reversed(FEATURE_NAMES)))
    with pytest.raises(CheckpointError, match="no tokenizer checkpoint"):
        load_tokenizer(tmp_path / "missing.pt")
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(path.read_bytes()[: os.path.getsize(path) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        load_tokenizer(truncated)
    checkpoint = torch.load(path, weights_only=True)

    def refused(match: str, **changes) -> None:
        bad = tmp_path / "bad.pt"
        torch.save({**checkpoint, **changes}, bad)
        with pytest.raises(CheckpointError, match=match):
            load_tokenizer(bad)

    refused("not a tauml tokenizer", format="tauml-backbone")
    refused("version", version=MODEL_FORMAT_VERSION + 1)
    refused("token convention", token_convention={**checkpoint["token_convention"], "STOP_ID": 5})
    refused("trained on features", feature_names=list(FEATURE_NAMES[:9]))
    refused("do not fit", tokenizer_config={**checkpoint["tokenizer_config"], "codebook_size": 32})
    refused("do not fit", tokenizer_config={**checkpoint["tokenizer_config"], "unknown_setting": 1})


# ----------------------------------------------------------------------------------------------------------
# training
# ----------------------------------------------------------------------------------------------------------


def test_training_lowers_the_loss_and_writes_its_files(tmp_path: Path) -> None:
    train, val = structured_jets(384, seed=11), structured_jets(96, seed=12)
    config = replace(TINY, epochs=5, codebook_size=64, hidden_dim=32, lr=1e-2)
    untrained = evaluate(initialised_tokenizer(config), *val)
    tokenizer = train_tokenizer(train, val, config, FeatureConfig(), tmp_path, progress=False)
    assert tokenizer.frozen
    history = json.loads((tmp_path / "history.json").read_text())
    assert [entry["epoch"] for entry in history] == [1, 2, 3, 4, 5]
    last = history[-1]
    assert last["val_loss"] < 0.5 * untrained["loss"]
    assert last["val_continuous"] < 0.5 * untrained["continuous"]
    assert last["val_categorical"] < 0.5 * untrained["categorical"]
    assert last["train_loss"] < history[0]["train_loss"]
    assert last["val_pid_accuracy"] > 0.8 > untrained["pid_accuracy"]
    assert 0 < last["val_utilisation"] <= 1 and 1 <= last["val_perplexity"] <= 64
    assert set(last["val_resolution"]) == {"log_pt", "mass", "deta", "dphi"}
    best = min(history, key=lambda entry: entry["val_loss"])
    assert tokenizer.metadata["val_loss"] == pytest.approx(best["val_loss"])
    metrics = tokenization_metrics(tokenizer, val)
    assert metrics["pid_confusion"].shape == (5, 5) and metrics["charge_confusion"].shape == (3, 3)
    assert metrics["pid_confusion"].sum() == val[1].sum()
    assert metrics["pid_accuracy"] == pytest.approx(np.trace(metrics["pid_confusion"]) / val[1].sum())
    assert set(metrics["resolution"]["pt"]) == {"mean", "std", "iqr"}


def test_mse_variant_trains(tmp_path: Path) -> None:
    train, val = structured_jets(256, seed=13), structured_jets(64, seed=14)
    config = replace(TINY, epochs=2, categorical_loss="mse")
    tokenizer = train_tokenizer(train, val, config, FeatureConfig(), tmp_path, progress=False)
    assert tokenizer.vqvae.head.out_features == 10
    features, mask = tokenizer.reconstruct(*tokenizer.tokenize(*val))
    real = features[mask]
    assert set(real[:, 4].unique().tolist()) <= {-1.0, 0.0, 1.0} and torch.all(real[:, 5:].sum(1) == 1)


def test_resume_gives_the_same_weights(tmp_path: Path) -> None:
    train, val = structured_jets(200, seed=15), structured_jets(50, seed=16)
    config = replace(TINY, epochs=3, dropout=0.1, dead_code_patience=2)
    whole = train_tokenizer(train, val, config, FeatureConfig(), tmp_path / "whole", progress=False)
    for _ in range(2):
        train_tokenizer(train, val, config, FeatureConfig(), tmp_path / "parts", progress=False,
                        max_epochs_this_call=1)
        assert (tmp_path / "parts" / "state.pt").exists()
    parts = train_tokenizer(train, val, config, FeatureConfig(), tmp_path / "parts", progress=False)
    assert state_equal(parts.state_dict(), whole.state_dict())
    final = [torch.load(tmp_path / d / "state.pt", weights_only=True)["model"] for d in ("whole", "parts")]
    assert state_equal(*final)
    history = [json.loads((tmp_path / d / "history.json").read_text()) for d in ("whole", "parts")]
    assert [e["val_loss"] for e in history[0]] == [e["val_loss"] for e in history[1]]
    # a finished run comes back from its checkpoint without training again
    state_time = os.path.getmtime(tmp_path / "whole" / "state.pt")
    again = train_tokenizer(train, val, config, FeatureConfig(), tmp_path / "whole", progress=False)
    assert state_equal(again.state_dict(), whole.state_dict())
    assert os.path.getmtime(tmp_path / "whole" / "state.pt") == state_time
    with pytest.raises(CheckpointError, match="other settings or data"):
        train_tokenizer(train, val, replace(config, lr=1e-3), FeatureConfig(), tmp_path / "whole", progress=False)
    other_features = train[0].copy()
    other_features[..., 0] += 0.01
    other_train = (other_features, train[1])
    with pytest.raises(CheckpointError, match="other settings or data"):
        train_tokenizer(other_train, val, config, FeatureConfig(), tmp_path / "whole", progress=False)


def test_training_refuses_bad_targets(tmp_path: Path) -> None:
    x, m = structured_jets(64, seed=17)
    bad_charge = x.copy()
    bad_charge[0, 0, 4] = 2.0
    with pytest.raises(DataError, match="charges"):
        train_tokenizer((bad_charge, m), (x, m), TINY, FeatureConfig(), tmp_path, progress=False)
    bad_pid = x.copy()
    bad_pid[0, 0, 5:] = 1.0
    with pytest.raises(DataError, match="one-hot"):
        train_tokenizer((bad_pid, m), (x, m), TINY, FeatureConfig(), tmp_path, progress=False)


# ----------------------------------------------------------------------------------------------------------
# real jets
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.real_data
def test_real_jetclass_jets_tokenize_and_train(tmp_path: Path) -> None:
    path = real_file("JetClassII_example.root")
    uproot = pytest.importorskip("uproot")
    jets = jet_arrays(uproot.open(path)["tree"].arrays(), source=str(path))
    config = replace(TINY, codebook_size=32, epochs=2)
    tokenizer = train_tokenizer(jets.subset(slice(0, 80)), jets.subset(slice(80, 100)), config,
                                FeatureConfig(), tmp_path, progress=False)
    tokens, token_mask = tokenizer.tokenize(jets.features, jets.mask, batch_size=16)
    assert tokens.shape == (100, 130)
    assert torch.equal(token_mask.sum(1), torch.from_numpy(jets.n_constituents) + 2)
    features, mask = tokenizer.reconstruct(tokens, token_mask)
    assert torch.equal(mask, torch.from_numpy(jets.mask))
    assert torch.all(features[mask][:, 5:].sum(1) == 1) and torch.all(features[~mask] == 0)
    metrics = tokenization_metrics(tokenizer, jets)
    assert metrics["n_constituents"] == jets.mask.sum()
    assert np.isfinite(metrics["resolution"]["deta"]["std"])


def test_epoch_batches_are_full_distinct_and_reproducible() -> None:
    from tauml.training.tokenizer import _epoch_batches

    counts = np.random.default_rng(0).integers(1, 60, 1000)
    batches = _epoch_batches(counts, 32, seed=3, epoch=2)
    assert len(batches) == 1000 // 32 and all(len(b) == 32 for b in batches)
    jets = np.concatenate(batches)
    assert len(np.unique(jets)) == len(jets)
    assert all(np.array_equal(a, b) for a, b in zip(batches, _epoch_batches(counts, 32, seed=3, epoch=2)))
    other = _epoch_batches(counts, 32, seed=3, epoch=3)
    assert not all(np.array_equal(a, b) for a, b in zip(batches, other))
    # batches hold jets of similar length: much less padding than random batches
    spread = np.mean([np.ptp(counts[b]) for b in batches])
    assert spread < 0.5 * np.ptp(counts)
