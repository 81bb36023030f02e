"""Backbone inputs (tokens / continuous) and pretraining objectives (next-token, masked particle, both).

Model level on a toy language (fast), then the cached pipeline on the tiny preset: every variant pretrains,
resumes and fine-tunes with the three strategies; the defaults reproduce today's model.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from tauml.config import ConfigError, GPTConfig, PretrainConfig, config_hash
from tauml.data.features import N_FEATURES
from tauml.models import CheckpointError
from tauml.models.checkpoints import load_backbone
from tauml.models.gpt import (
    CODE_OFFSET,
    GPT,
    PAD_ID,
    START_ID,
    STOP_ID,
    MaskedParticleHead,
    choose_masked,
    generate,
    masked_particle_loss,
    next_token_loss,
    token_aligned_features,
)
from tauml.training.pretrain import pretrain

CODEBOOK = 20
VOCAB = CODEBOOK + CODE_OFFSET
TINY = GPTConfig(n_layer=2, n_head=2, n_embd=16, ffn_dim=32, vocab_size=VOCAB, max_len=14)


def toy(n: int, seed: int, max_codes: int = 12) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Tokens of a structured toy language (each code = previous + 3 mod 20) and features that carry the code."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, max_codes + 1, (n,), generator=g)
    firsts = torch.randint(0, CODEBOOK, (n,), generator=g)
    tokens = torch.full((n, max_codes + 2), PAD_ID, dtype=torch.long)
    features = torch.zeros(n, max_codes, N_FEATURES)
    mask = torch.arange(max_codes)[None] < lengths[:, None]
    for row in range(n):
        codes = [(int(firsts[row]) + 3 * j) % CODEBOOK for j in range(int(lengths[row]))]
        tokens[row, :len(codes) + 2] = torch.tensor([START_ID, *(c + CODE_OFFSET for c in codes), STOP_ID])
        angle = 2 * torch.pi * torch.tensor(codes, dtype=torch.float32) / CODEBOOK
        features[row, :len(codes), 0] = torch.tensor(codes, dtype=torch.float32) / CODEBOOK
        features[row, :len(codes), 2], features[row, :len(codes), 3] = torch.cos(angle), torch.sin(angle)
        features[row, :len(codes), 1] = 0.1 * torch.randn(len(codes), generator=g)  # noise
    return tokens, tokens != PAD_ID, token_aligned_features(features, mask)


# ---- model level ----------------------------------------------------------------------------------------


def test_default_settings_keep_every_cache_key_and_todays_model():
    assert config_hash(GPTConfig()) == config_hash(replace(GPTConfig(), inputs="tokens"))
    assert config_hash(PretrainConfig()) == config_hash(replace(PretrainConfig(), ntp_weight=1.0, mpm_weight=0.0))
    assert config_hash(GPTConfig()) != config_hash(replace(GPTConfig(), inputs="continuous"))
    assert config_hash(PretrainConfig()) != config_hash(replace(PretrainConfig(), mpm_weight=1.0))
    torch.manual_seed(0)
    model = GPT(TINY)
    assert sorted(model.state_dict()) == sorted(
        ["wte.weight", "ln_f.weight", "ln_f.bias", "lm_head.weight",
         *(f"blocks.{i}.{n}" for i in range(2) for n in (
             "ln1.weight", "ln1.bias", "attn.qkv.weight", "attn.proj.weight", "attn.proj.bias", "ln2.weight",
             "ln2.bias", "mlp.fc.weight", "mlp.fc.bias", "mlp.out.weight", "mlp.out.bias"))])
    assert model.wte.weight.shape == (VOCAB, 16)


def test_bad_settings_are_refused():
    with pytest.raises(ConfigError, match="inputs="):
        replace(GPTConfig(), inputs="pixels").validate()
    with pytest.raises(ConfigError, match="not both 0"):
        replace(PretrainConfig(), ntp_weight=0.0).validate()
    with pytest.raises(ConfigError, match="mask_fraction"):
        replace(PretrainConfig(), mask_fraction=1.0).validate()


def test_continuous_backbone_reads_the_features_and_needs_them():
    tokens, mask, features = toy(8, seed=1)
    model = GPT(replace(TINY, inputs="continuous")).eval()
    assert model.wte.weight.shape == (CODE_OFFSET, 16)  # START, STOP, PAD only
    with pytest.raises(ValueError, match="continuous features"):
        model(tokens, mask)
    out = model(tokens, mask, features=features)
    changed = features.clone()
    changed[:, 1:, 0] += 0.5
    assert not torch.allclose(out, model(tokens, mask, features=changed))
    # the token ids of the constituents are not read: only the features are
    other = torch.where(tokens >= CODE_OFFSET, CODE_OFFSET + (tokens - CODE_OFFSET + 1) % CODEBOOK, tokens)
    assert torch.allclose(out, model(other, mask, features=features))
    loss, n = next_token_loss(model, tokens, mask, features)
    assert n == int(mask[:, 1:].sum()) and torch.isfinite(loss)


def test_masking_hides_constituents_only_at_least_one_per_jet():
    tokens, mask, _ = toy(200, seed=2)
    masked = choose_masked(tokens, mask, 0.3, torch.Generator().manual_seed(0))
    assert masked.dtype == torch.bool
    assert not bool((masked & (tokens < CODE_OFFSET)).any())  # never START, STOP, PAD
    n = (tokens >= CODE_OFFSET).sum(1)
    assert torch.equal(masked.sum(1), torch.clamp(torch.round(0.3 * n.double()).long(), min=1))
    again = choose_masked(tokens, mask, 0.3, torch.Generator().manual_seed(0))
    assert torch.equal(masked, again)
    assert not torch.equal(masked, choose_masked(tokens, mask, 0.3, torch.Generator().manual_seed(1)))


def test_masked_particle_loss_targets_the_hidden_token_ids_and_never_sees_them():
    tokens, mask, features = toy(16, seed=3)
    for inputs in ("tokens", "continuous"):
        torch.manual_seed(0)
        model, head = GPT(replace(TINY, inputs=inputs)).eval(), MaskedParticleHead(replace(TINY, inputs=inputs))
        masked = choose_masked(tokens, mask, 0.25, torch.Generator().manual_seed(0))
        feats = features if inputs == "continuous" else None
        loss, n = masked_particle_loss(model, head, tokens, mask, masked, feats)
        assert n == int(masked.sum())
        hidden = model(tokens, mask & ~masked, features=feats, causal=False)
        logits = head(hidden, mask, masked)
        assert torch.allclose(loss, torch.nn.functional.cross_entropy(logits, tokens[masked]))
        # what sits at a hidden position cannot change the predictions: it is left out of the attention
        scrambled = tokens.clone()
        scrambled[masked] = CODE_OFFSET + (tokens[masked] - CODE_OFFSET + 7) % CODEBOOK
        scrambled_features = features.clone()
        scrambled_features[masked] = 5.0
        feats2 = scrambled_features if inputs == "continuous" else None
        hidden2 = model(scrambled, mask & ~masked, features=feats2, causal=False)
        assert torch.allclose(logits, head(hidden2, mask, masked), atol=1e-6)
        unmasked = mask & ~masked  # ... whereas a visible constituent does
        changed = scrambled.clone()
        first = unmasked & (tokens >= CODE_OFFSET)
        changed[first] = CODE_OFFSET + (tokens[first] - CODE_OFFSET + 7) % CODEBOOK
        changed_features = scrambled_features.clone()
        changed_features[first] = -5.0
        feats3 = changed_features if inputs == "continuous" else None
        hidden3 = model(changed, mask & ~masked, features=feats3, causal=False)
        assert not torch.allclose(logits, head(hidden3, mask, masked), atol=1e-6)


def test_bidirectional_pass_sees_later_constituents_the_causal_one_does_not():
    tokens, mask, _ = toy(4, seed=4)
    model = GPT(TINY).eval()
    later = tokens.clone()
    later[:, 3] = torch.where(mask[:, 3] & (tokens[:, 3] >= CODE_OFFSET),
                              CODE_OFFSET + (tokens[:, 3] - CODE_OFFSET + 5) % CODEBOOK, tokens[:, 3])
    rows = (later != tokens).any(1)
    assert bool(rows.any())
    assert torch.allclose(model(tokens, mask)[rows, :3], model(later, mask)[rows, :3])
    assert not torch.allclose(model(tokens, mask, causal=False)[rows, :3], model(later, mask, causal=False)[rows, :3])


@pytest.mark.parametrize("inputs,ntp,mpm", [("continuous", 1.0, 0.0), ("continuous", 1.0, 1.0),
                                            ("tokens", 0.0, 1.0)])
def test_each_variant_pretrains_beyond_chance_and_resumes_bit_identically(tmp_path, inputs, ntp, mpm):
    train, val = toy(384, seed=1), toy(96, seed=2)
    gpt_config = replace(TINY, inputs=inputs, dropout=0.1)
    config = PretrainConfig(epochs=5, batch_size=64, lr=5e-3, warmup_steps=5, device="cpu", seed=7,
                            ntp_weight=ntp, mpm_weight=mpm)
    features = {"train_features": train[2], "val_features": val[2]} if inputs == "continuous" else {}
    _, straight = pretrain(*train[:2], *val[:2], gpt_config, config, tmp_path / "a", progress=False, **features)

    class Interrupted(Exception):
        pass

    def interrupt(epoch, record):
        raise Interrupted

    with pytest.raises(Interrupted):  # after the first epoch
        pretrain(*train[:2], *val[:2], gpt_config, config, tmp_path / "b", progress=False, on_epoch_end=interrupt,
                 **features)
    _, resumed = pretrain(*train[:2], *val[:2], gpt_config, config, tmp_path / "b", progress=False, **features)
    assert [e["val_loss"] for e in resumed["epochs"]] == [e["val_loss"] for e in straight["epochs"]]
    a, b = (torch.load(tmp_path / d / "training_state.pt", weights_only=True)["model"] for d in "ab")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    last = resumed["epochs"][-1]
    if ntp:
        assert last["val_perplexity"] < 0.8 * resumed["unigram_perplexity"]
    if mpm:
        assert any(k.startswith("head.mask_vectors") for k in a)  # the head trains with the backbone
        assert "train_mpm_loss" in last and np.isfinite(last["val_mpm_loss"])
        if inputs == "tokens":  # the hidden code is the gap in the visible ones: learnt within a few epochs
            assert last["val_mpm_accuracy"] > 1.5 / CODEBOOK
    loaded = load_backbone(tmp_path / "b" / "backbone.pt")
    assert loaded.config.inputs == inputs and loaded.next_token_trained == (ntp > 0)
    if not ntp:
        with pytest.raises(ValueError, match="without next-token prediction"):
            generate(loaded, 2, max_len=4)
    with pytest.raises(CheckpointError, match="pretrained on inputs"):
        load_backbone(tmp_path / "b" / "backbone.pt", inputs="tokens" if inputs == "continuous" else "continuous")


def test_pretrain_refuses_missing_or_misshapen_features(tmp_path):
    from tauml.data import DataError

    train, val = toy(64, seed=1), toy(32, seed=2)
    config = PretrainConfig(epochs=1, batch_size=32, device="cpu")
    with pytest.raises(DataError, match="needs the training features"):
        pretrain(*train[:2], *val[:2], replace(TINY, inputs="continuous"), config, tmp_path / "a", progress=False)
    with pytest.raises(DataError, match="must be"):
        pretrain(*train[:2], *val[:2], replace(TINY, inputs="continuous"), config, tmp_path / "b", progress=False,
                 train_features=train[2][:, :, :3], val_features=val[2])
    with pytest.raises(DataError, match="reads tokens"):
        pretrain(*train[:2], *val[:2], TINY, config, tmp_path / "c", progress=False, train_features=train[2],
                 val_features=val[2])


def test_continuous_generation_decodes_each_step_with_the_tokenizer():
    class CodeDecoder:  # decodes a code into the toy features (code / 20 in feature 0), as a tokenizer would
        def reconstruct(self, tokens, token_mask):
            n = (tokens >= CODE_OFFSET).sum(1)
            slots = tokens.shape[1] - 2
            mask = torch.arange(slots)[None] < n[:, None]
            features = torch.zeros(len(tokens), slots, N_FEATURES)
            features[..., 0] = torch.where(mask, (tokens[:, 1:-1] - CODE_OFFSET).float() / CODEBOOK, 0.0)
            return features, mask

    model = GPT(replace(TINY, inputs="continuous")).eval()
    with pytest.raises(ValueError, match="tokenizer"):
        generate(model, 3, max_len=5)
    tokens, mask = generate(model, 6, max_len=5, seed=3, tokenizer=CodeDecoder())
    again, _ = generate(model, 6, max_len=5, seed=3, tokenizer=CodeDecoder())
    assert torch.equal(tokens, again)
    assert bool((tokens[:, 0] == START_ID).all())
    n = mask.sum(1)
    assert bool((tokens[torch.arange(6), n - 1] == STOP_ID).all()) and bool((n >= 3).all())


# ---- the pipeline on the tiny preset ------------------------------------------------------------------


VARIANTS = {"continuous": ("continuous", 1.0, 0.0), "continuous+mpm": ("continuous", 1.0, 1.0),
            "tokens+mpm": ("tokens", 1.0, 1.0)}


@pytest.mark.parametrize("name", list(VARIANTS))
def test_each_variant_pretrains_and_fine_tunes_through_the_pipeline(tiny_preset, tiny_dataset, name):
    from tauml import pipeline
    from tauml.pipeline.finetuning import finetune
    from tauml.studies.beyond_tokens import variant_preset

    inputs, ntp, mpm = VARIANTS[name]
    preset = variant_preset(tiny_preset, inputs=inputs, ntp_weight=ntp, mpm_weight=mpm)
    assert pipeline.backbone_key(preset) != pipeline.backbone_key(tiny_preset)
    checkpoint = pipeline.backbone_checkpoint(preset, progress=False)
    assert load_backbone(checkpoint).config.inputs == inputs
    results = {}
    for strategy in ("from_scratch", "fixed_backbone", "fine_tuning"):
        config = replace(preset.finetune, task="reg", strategy=strategy, epochs=2, unfreeze_epoch=1)
        results[strategy] = finetune(preset, config, progress=False)
        assert np.isfinite(results[strategy].metrics["resolution"])
    assert results["fixed_backbone"].metrics != results["fine_tuning"].metrics


def test_a_continuous_fine_tuning_resumes_to_the_same_numbers(tiny_preset, tiny_dataset, tmp_path):
    from tauml.pipeline.finetuning import finetune
    from tauml.studies.beyond_tokens import variant_preset

    preset = variant_preset(tiny_preset, inputs="continuous", mpm_weight=1.0)
    config = replace(preset.finetune, task="id", strategy="fine_tuning", epochs=3, unfreeze_epoch=1, seed=7)
    whole = finetune(preset, config, progress=False, folder=tmp_path / "whole")
    partial = finetune(preset, config, progress=False, folder=tmp_path / "resumed", max_epochs_this_call=1)
    assert partial.metrics == {} and len(partial.history["val_loss"]) == 1
    resumed = finetune(preset, config, progress=False, folder=tmp_path / "resumed")
    assert resumed.history["val_loss"] == whole.history["val_loss"] and resumed.metrics == whole.metrics


def test_a_backbone_is_fine_tuned_on_the_inputs_it_was_pretrained_on(tiny_preset, tiny_dataset):
    from tauml import pipeline
    from tauml.models.tau import build_tau_model
    from tauml.studies.beyond_tokens import variant_preset

    preset = variant_preset(tiny_preset, inputs="continuous")
    checkpoint = pipeline.backbone_checkpoint(preset, progress=False)
    with pytest.raises(CheckpointError, match="pretrained on inputs='continuous'"):
        build_tau_model("id", "fine_tuning", pipeline.gpt_config(tiny_preset), tiny_preset.head,
                        pretrained=checkpoint)


def test_backbone_panel_headless(tiny_preset, tiny_dataset):
    from tauml.widgets import backbone_panel

    panel = backbone_panel(tiny_preset)
    panel.pretrain_epochs.value = 2
    panel.objective.value = "masked particle modelling"
    assert not panel.mpm_weight.disabled
    panel.objective.value = "next-token prediction"
    assert panel.mpm_weight.disabled
    panel.inputs.value = "continuous"
    panel.pretrain_button.click()
    assert panel.variant is not None and panel.variant.gpt.inputs == "continuous"
    assert "backbone ready" in panel.status.value
    assert panel.summary_output.outputs  # the backbone's numbers are on screen
    fine = panel.finetune
    assert fine is not None and fine.preset.gpt.inputs == "continuous"
    fine.task.value, fine.strategy.value, fine.epochs.value, fine.unfreeze_epoch.value = "dm", "fine_tuning", 2, 1
    fine.train_button.click()
    assert fine.last_result is not None and fine.last_result.metrics["accuracy"] > 0


def test_scaling_curves_pretrain_one_backbone_per_point(tiny_preset, tiny_dataset):
    from tauml import pipeline
    from tauml.studies.beyond_tokens import run_scaling, scaling_is_prepared, scaling_presets, scaling_rows

    jets = scaling_presets(tiny_preset, "jets", (40, 80))
    assert [p.pretrain.train_jets for p in jets.values()] == [40, 80]
    assert len({pipeline.backbone_key(p) for p in jets.values()}) == 2
    widths = scaling_presets(tiny_preset, "width", (8, 16))
    assert [(p.gpt.n_embd, p.gpt.ffn_dim) for p in widths.values()] == [(8, 32), (16, 64)]
    with pytest.raises(ValueError, match="kind"):
        scaling_presets(tiny_preset, "depth")
    assert not scaling_is_prepared(tiny_preset, "width", (8, 16))
    curve = run_scaling(tiny_preset, "width", (8, 16), tasks=("reg",), seeds=(1, 2), progress=False, workers=1,
                        train_size=60, epochs=2, unfreeze_epoch=1)
    assert scaling_is_prepared(tiny_preset, "width", (8, 16))
    assert set(curve["reg"]) == {8, 16} and all(len(v) == 2 and np.all(np.isfinite(v)) for v in curve["reg"].values())
    rows = scaling_rows(curve, "width")
    assert [r["width"] for r in rows] == [8, 16, "16 vs 8"]
    assert any(word in rows[-1]["resolution"] for word in ("better", "worse", "no significant difference"))
