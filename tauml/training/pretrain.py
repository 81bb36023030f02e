"""Next-token pretraining of the GPT backbone on tokenized jets (OmniJet-alpha's generative pretraining).

:func:`pretrain` trains a :class:`~tauml.models.gpt.GPT` on sequences ``[START, codes..., STOP, PAD...]``
(``docs/conventions.md``) to predict each next token, with the loss counted on real targets only.  It
writes into ``out_dir``:

* ``backbone.pt``: the weights of the epoch with the lowest validation loss (:func:`tauml.models.gpt.save_backbone`),
* ``history.json``: per epoch the training and validation loss (nats per token), the validation
  perplexity, throughput (real tokens/s, jets/s), learning rate and elapsed time,
* ``training_state.pt``: everything needed to resume after the last finished epoch.

The objective is set by :class:`~tauml.config.PretrainConfig`: next-token prediction (the default), masked
particle modelling (``mpm_weight``: a fraction of each jet's constituents hidden, their token ids predicted by
:class:`~tauml.models.gpt.MaskedParticleHead` from a bidirectional pass), or their weighted sum (a causal pass
for the generative term and a bidirectional one for the masked term, as arXiv:2512.04149).  A continuous
backbone (``GPTConfig.inputs="continuous"``) also takes the constituent features aligned with the tokens
(:func:`tauml.models.gpt.token_aligned_features`).

Run it again with the same arguments after an interruption and it continues from the last finished epoch,
ending with the same weights as an uninterrupted run; run it after it finished and it returns at once.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tauml.cache import read_json, write_json
from tauml.config import ConfigError, GPTConfig, PretrainConfig, config_hash, to_dict
from tauml.data import DataError
from tauml.data.features import N_FEATURES
from tauml.evaluation.generation import unigram_perplexity
from tauml.models import CheckpointError
from tauml.models.checkpoints import load_backbone, save_backbone
from tauml.models.gpt import (
    GPT,
    PAD_ID,
    START_ID,
    MaskedParticleHead,
    choose_masked,
    masked_particle_loss,
    next_token_loss,
)
from tauml.training import common, engine

BACKBONE_FILE = "backbone.pt"
HISTORY_FILE = "history.json"
STATE_FILE = "training_state.pt"

#: ``on_epoch_end(epoch, record)`` is called after each epoch's state is saved (``epoch`` counts from 0).
EpochCallback = Callable[[int, dict[str, Any]], None]


class PretrainingModel(torch.nn.Module):
    """What trains when the objective includes masked particle modelling: the backbone and its MPM head (the
    head stays in the training state; ``backbone.pt`` holds the GPT alone)."""

    def __init__(self, gpt: GPT, head: MaskedParticleHead) -> None:
        super().__init__()
        self.gpt = gpt
        self.head = head


def objective_loss(model: GPT, head: MaskedParticleHead | None, tokens: torch.Tensor, mask: torch.Tensor,
                   features: torch.Tensor | None, config: PretrainConfig,
                   generator: torch.Generator | None = None) -> tuple[torch.Tensor, int, dict[str, torch.Tensor]]:
    """``ntp_weight`` x next-token loss (causal pass) + ``mpm_weight`` x masked-particle loss (bidirectional pass
    on the visible constituents); returns ``(loss, count, parts)`` with ``count`` the next-token targets (the
    masked constituents when there is no next-token term) and ``parts`` the two terms."""
    parts: dict[str, torch.Tensor] = {}
    loss, count = torch.zeros((), device=tokens.device), 0
    if config.ntp_weight > 0:
        ntp, count = next_token_loss(model, tokens, mask, features)
        parts["ntp_loss"] = ntp.detach()
        loss = loss + config.ntp_weight * ntp
    if config.mpm_weight > 0:
        if head is None:
            raise ValueError("mpm_weight > 0 needs a MaskedParticleHead")
        masked = choose_masked(tokens, mask, config.mask_fraction, generator)
        mpm, n_masked = masked_particle_loss(model, head, tokens, mask, masked, features)
        parts["mpm_loss"] = mpm.detach()
        loss = loss + config.mpm_weight * mpm
        count = count or n_masked
    return loss, count, parts


def finished_backbone(out_dir: Path, run_key: str, epochs: int) -> tuple[GPT, dict] | None:
    """The backbone and history of the pretraining run ``run_key`` in ``out_dir`` when it finished all ``epochs``
    (None when it did not); a finished run whose backbone file is gone is an error that says what to delete."""
    done = engine.finished_history(out_dir / STATE_FILE, run_key, epochs, "pretraining run")
    if done is None:
        return None
    if not (out_dir / BACKBONE_FILE).is_file():
        raise CheckpointError(f"the run in {out_dir} finished but its {BACKBONE_FILE} is gone: delete "
                              f"{out_dir / STATE_FILE} to pretrain again")
    return load_backbone(out_dir / BACKBONE_FILE), done


def pretrain(
    train_tokens: torch.Tensor | np.ndarray,
    train_mask: torch.Tensor | np.ndarray,
    val_tokens: torch.Tensor | np.ndarray,
    val_mask: torch.Tensor | np.ndarray,
    gpt_config: GPTConfig,
    config: PretrainConfig,
    out_dir: str | Path,
    progress: bool = True,
    metadata: dict[str, Any] | None = None,
    on_epoch_end: EpochCallback | None = None,
    max_epochs_this_call: int | None = None,
    train_features: torch.Tensor | np.ndarray | None = None,
    val_features: torch.Tensor | np.ndarray | None = None,
) -> tuple[GPT, dict[str, Any]]:
    """Pretrain a GPT by ``config``'s objective; return the best model (lowest validation loss) and the history.

    ``*_tokens`` are int token ids ``(n_jets, L)``, ``*_mask`` boolean ``(n_jets, L)`` (True = real token).
    ``gpt_config.vocab_size`` must be the tokenizer's ``vocab_size``.  ``metadata`` (JSON-like, e.g. the
    tokenizer checkpoint's hash) is stored in ``backbone.pt``.  ``on_epoch_end`` may stop the run by raising
    (a notebook's interrupt does the same), as does ``max_epochs_this_call``: calling :func:`pretrain` again
    resumes after the last finished epoch.  Under torchrun every process calls it with the same data and
    trains its slice of each batch (docs/training.md); only rank 0 writes.  ``*_features``
    ``(n_jets, L, N_FEATURES)`` are the inputs of a continuous backbone (``gpt_config.inputs="continuous"``),
    aligned with the tokens (:func:`tauml.models.gpt.token_aligned_features`).
    """
    config.validate()
    gpt_config.validate()
    if gpt_config.vocab_size <= 3:
        raise ConfigError(
            f"gpt_config.vocab_size={gpt_config.vocab_size}: set it to the tokenizer's vocabulary, "
            "replace(gpt_config, vocab_size=tokenizer.vocab_size)"
        )
    train_tokens, train_mask = _check_sequences(train_tokens, train_mask, gpt_config.vocab_size, "training")
    val_tokens, val_mask = _check_sequences(val_tokens, val_mask, gpt_config.vocab_size, "validation")
    continuous = gpt_config.inputs == "continuous"
    train_features = _check_features(train_features, train_tokens, continuous, "training")
    val_features = _check_features(val_features, val_tokens, continuous, "validation")
    if config.train_jets:
        train_tokens, train_mask = train_tokens[: config.train_jets], train_mask[: config.train_jets]
        train_features = None if train_features is None else train_features[: config.train_jets]

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    run_key = _run_key(train_tokens, val_tokens, gpt_config, config, train_features, val_features)
    finished = finished_backbone(out_dir, run_key, config.epochs)
    if finished is not None:
        return finished

    common.limit_threads()
    device = common.select_device(config.device)
    common.seed_everything(config.seed)
    model = GPT(gpt_config).to(device)
    head = MaskedParticleHead(gpt_config).to(device) if config.mpm_weight > 0 else None
    trained = model if head is None else PretrainingModel(model, head)
    optimizer = _make_optimizer(trained, config)
    steps_per_epoch = math.ceil(len(train_tokens) / config.batch_size)
    scheduler = common.make_cosine_scheduler(
        optimizer, config.epochs * steps_per_epoch, config.warmup_steps, config.min_lr_fraction
    )
    info = {"unigram_perplexity": unigram_perplexity(train_tokens, train_mask, val_tokens, val_mask,
                                                     gpt_config.vocab_size),
            "n_train_jets": len(train_tokens), "n_val_jets": len(val_tokens),
            "n_parameters": sum(p.numel() for p in model.parameters()),
            "gpt_config": to_dict(gpt_config), "pretrain_config": to_dict(config)}
    default_objective = config.ntp_weight == 1.0 and head is None
    if not default_objective:
        info["objective"] = {"ntp_weight": config.ntp_weight, "mpm_weight": config.mpm_weight,
                             "mask_fraction": config.mask_fraction}
    train_tokens, train_mask = train_tokens.to(device), train_mask.to(device)
    train_features = None if train_features is None else train_features.to(device)

    def step(index: np.ndarray) -> tuple:
        index = torch.as_tensor(index, device=device)
        tokens, mask = _trim(train_tokens[index], train_mask[index])
        features = None if train_features is None else train_features[index][:, :tokens.shape[1]]
        with engine.autocast(device, config.bf16):
            if default_objective:  # next-token prediction alone: exactly the step it always was
                return next_token_loss(model, tokens, mask, features)
            return objective_loss(model, head, tokens, mask, features, config)

    def validate(_: torch.nn.Module) -> dict[str, float]:
        record: dict[str, float] = {}
        if config.ntp_weight > 0:
            val = evaluate(model, val_tokens, val_mask, config.batch_size, bf16=config.bf16, features=val_features)
            record.update(val_loss=val["loss"], val_perplexity=val["perplexity"])
        if head is not None:
            masked = evaluate_masked(model, head, val_tokens, val_mask, config, val_features)
            ntp = record.get("val_loss")
            if ntp is not None:
                record["val_ntp_loss"] = ntp
            record.update(val_mpm_loss=masked["loss"], val_mpm_accuracy=masked["accuracy"],
                          val_loss=config.ntp_weight * (ntp or 0.0) + config.mpm_weight * masked["loss"])
        return record

    def save(history: dict[str, Any], improved: bool) -> None:
        if improved:
            best = history["epochs"][-1]
            objective = {} if default_objective else {"ntp_weight": config.ntp_weight,
                                                      "mpm_weight": config.mpm_weight}
            save_backbone(model, out_dir / BACKBONE_FILE, {
                **(metadata or {}), "epoch": best["epoch"], "epochs": config.epochs, "val_loss": best["val_loss"],
                "val_perplexity": best.get("val_perplexity"), "unigram_perplexity": history["unigram_perplexity"],
                "run_key": run_key, **objective,
            })
        write_json(out_dir / HISTORY_FILE, history)

    def describe(record: dict[str, Any]) -> str:
        text = f"epoch {record['epoch'] + 1}/{config.epochs}: train loss {record['train_loss']:.4f}, " \
               f"val loss {record['val_loss']:.4f}"
        if "val_perplexity" in record:
            text += f", val perplexity {record['val_perplexity']:.1f} (unigram {info['unigram_perplexity']:.1f})"
        if "val_mpm_accuracy" in record:
            text += f", masked-particle accuracy {record['val_mpm_accuracy']:.3f}"
        return text + f", {record['tokens_per_s']:.0f} tokens/s"

    trainer = engine.Trainer(
        trained, optimizer, scheduler, step=step, validate=validate, epochs=config.epochs, folder=out_dir,
        batches=lambda epoch: list(common.batches(len(train_tokens), config.batch_size,
                                                  common.epoch_permutation(len(train_tokens), config.seed, epoch))),
        run=run_key, seed=config.seed, state_file=STATE_FILE, name="pretraining", info=info,
        grad_clip=config.grad_clip, unit="tokens", save=save, describe=describe, progress=progress,
    )
    callbacks = [] if on_epoch_end is None else [lambda epoch, record, history: on_epoch_end(epoch, record)]
    history = trainer.fit(max_epochs_this_call, callbacks)
    if len(history["epochs"]) < config.epochs:
        return model, history
    return load_backbone(out_dir / BACKBONE_FILE), history


@torch.no_grad()
def evaluate(model: GPT, tokens: torch.Tensor | np.ndarray, mask: torch.Tensor | np.ndarray,
             batch_size: int = 256, bf16: bool = False,
             features: torch.Tensor | np.ndarray | None = None) -> dict[str, float]:
    """Next-token loss (nats per real target token) and perplexity ``exp(loss)`` of ``model`` on sequences.

    Every real target counts once, whatever the batching (jets are sorted by length so that padding is
    trimmed away).  ``bf16`` autocasts on CUDA only.
    """
    tokens, mask = torch.as_tensor(tokens), torch.as_tensor(mask)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    order = torch.argsort(mask.sum(dim=1), stable=True)
    loss_sum, n_targets = 0.0, 0
    try:
        for index in common.batches(len(order), batch_size, order.numpy()):
            batch_tokens, batch_mask = _trim(tokens[index].to(device), mask[index].to(device))
            batch_features = None if features is None else \
                torch.as_tensor(features)[index][:, :batch_tokens.shape[1]].to(device)
            with engine.autocast(device, bf16):
                loss, count = next_token_loss(model, batch_tokens, batch_mask, batch_features)
            loss_sum += float(loss) * count
            n_targets += count
    finally:
        model.train(was_training)
    loss = loss_sum / n_targets
    return {"loss": loss, "perplexity": math.exp(loss), "n_targets": n_targets}


@torch.no_grad()
def evaluate_masked(model: GPT, head: MaskedParticleHead, tokens: torch.Tensor | np.ndarray,
                    mask: torch.Tensor | np.ndarray, config: PretrainConfig,
                    features: torch.Tensor | np.ndarray | None = None) -> dict[str, float]:
    """Masked-particle loss (nats per hidden constituent) and top-1 accuracy on sequences, with the constituents
    hidden by a generator seeded from ``config.seed`` (the same ones every epoch)."""
    tokens, mask = torch.as_tensor(tokens), torch.as_tensor(mask)
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(config.seed)
    hidden = choose_masked(tokens, mask, config.mask_fraction, generator)
    states = model.training, head.training
    model.eval()
    head.eval()
    loss_sum, correct, count = 0.0, 0, 0
    try:
        for index in common.batches(len(tokens), config.batch_size, np.arange(len(tokens))):
            batch_tokens, batch_mask = _trim(tokens[index].to(device), mask[index].to(device))
            masked = hidden[index][:, :batch_tokens.shape[1]].to(device)
            batch_features = None if features is None else \
                torch.as_tensor(features)[index][:, :batch_tokens.shape[1]].to(device)
            with engine.autocast(device, config.bf16):
                states_hidden = model(batch_tokens, batch_mask & ~masked, features=batch_features, causal=False)
                logits = head(states_hidden, batch_mask, masked).float()
            targets = batch_tokens[masked]
            loss_sum += float(torch.nn.functional.cross_entropy(logits, targets, reduction="sum"))
            correct += int((logits.argmax(1) == targets).sum())
            count += len(targets)
    finally:
        model.train(states[0])
        head.train(states[1])
    return {"loss": loss_sum / count, "accuracy": correct / count, "n_masked": count}


def read_history(out_dir: str | Path) -> dict[str, Any]:
    """The ``history.json`` of a pretraining run."""
    path = Path(out_dir) / HISTORY_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no {HISTORY_FILE} in {out_dir}: run pretrain() with out_dir={out_dir} first")
    return read_json(path)


def _trim(tokens: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Cut a batch to its longest real sequence (real tokens come first in every row)."""
    length = int(mask.sum(dim=1).max())
    return tokens[:, :length], mask[:, :length]


def _make_optimizer(model: torch.nn.Module, config: PretrainConfig) -> torch.optim.AdamW:
    """AdamW with weight decay on the matrices of the linear layers only (not biases, LayerNorms, the token
    embedding, the MPM mask vectors)."""

    def embedding(name: str) -> bool:
        return name.startswith(("wte.", "gpt.wte.")) or name.endswith("mask_vectors")

    decay = [p for name, p in model.named_parameters() if p.ndim >= 2 and not embedding(name)]
    no_decay = [p for name, p in model.named_parameters() if p.ndim < 2 or embedding(name)]
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=config.lr,
    )


def _check_sequences(tokens: Any, mask: Any, vocab_size: int, what: str) -> tuple[torch.Tensor, torch.Tensor]:
    tokens, mask = torch.as_tensor(tokens), torch.as_tensor(mask)
    if mask.dtype != torch.bool:
        raise DataError(f"the {what} token mask is {mask.dtype}; give a boolean mask (True = real token)")
    if tokens.is_floating_point() or tokens.ndim != 2 or tokens.shape != mask.shape:
        raise DataError(f"the {what} tokens must be integer ids (n_jets, length) with a mask of the same shape; "
                        f"got {tokens.dtype} {tuple(tokens.shape)} and mask {tuple(mask.shape)}")
    if len(tokens) == 0:
        raise DataError(f"no {what} sequences")
    tokens, mask = tokens.long().cpu(), mask.cpu()
    lengths = mask.sum(dim=1)
    if bool((torch.arange(mask.shape[1]) < lengths[:, None]).ne(mask).any()):
        raise DataError(f"the {what} token mask has a real token after a padded one; real tokens must come first")
    if bool((lengths < 2).any()):
        raise DataError(f"{int((lengths < 2).sum())} {what} sequences have fewer than 2 real tokens "
                        "([START, STOP] at least)")
    if bool((tokens[:, 0] != START_ID).any()):
        raise DataError(f"{what} sequences must begin with START (id {START_ID}); tokenize them with the Tokenizer")
    if bool((tokens[~mask] != PAD_ID).any()):
        raise DataError(f"{what} tokens at padded positions must be PAD (id {PAD_ID})")
    if int(tokens.max()) >= vocab_size or int(tokens.min()) < 0:
        raise DataError(f"{what} token ids lie in {int(tokens.min())}..{int(tokens.max())}, outside the "
                        f"vocabulary 0..{vocab_size - 1}: set gpt_config.vocab_size = tokenizer.vocab_size")
    return tokens, mask


def _check_features(features: Any, tokens: torch.Tensor, continuous: bool, what: str) -> torch.Tensor | None:
    """The features of a continuous backbone as float32 ``(n_jets, L, N_FEATURES)``; None for a token backbone."""
    if not continuous:
        if features is not None:
            raise DataError(f"{what} features were given, but this backbone reads tokens (GPTConfig.inputs='tokens'): "
                            "pass none, or set inputs='continuous'")
        return None
    if features is None:
        raise DataError(f"a continuous backbone (GPTConfig.inputs='continuous') needs the {what} features: pass "
                        "them aligned with the tokens (tauml.models.gpt.token_aligned_features)")
    features = torch.as_tensor(features, dtype=torch.float32).cpu()
    if features.shape != (*tokens.shape, N_FEATURES):
        raise DataError(f"the {what} features {tuple(features.shape)} must be (n_jets, L, {N_FEATURES}) for tokens "
                        f"{tuple(tokens.shape)}: align them with tauml.models.gpt.token_aligned_features")
    if not bool(torch.isfinite(features).all()):
        raise DataError(f"the {what} features hold NaN or infinity: check the jets (tauml.data.features)")
    return features


def _run_key(train_tokens: torch.Tensor, val_tokens: torch.Tensor, gpt_config: GPTConfig,
             config: PretrainConfig, train_features: torch.Tensor | None = None,
             val_features: torch.Tensor | None = None) -> str:
    """Names one run: configuration (device and precision aside) and the exact data."""
    digest = hashlib.sha256()
    for tokens in (train_tokens, val_tokens):
        digest.update(str(tuple(tokens.shape)).encode())
        digest.update(tokens.numpy().tobytes())
    for features in (train_features, val_features):
        if features is not None:
            digest.update(features.numpy().tobytes())
    return config_hash(gpt_config, replace(common.placement_free(config), device="any"), digest.hexdigest())
