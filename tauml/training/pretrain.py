"""Next-token pretraining of the GPT backbone on tokenized jets (OmniJet-alpha's generative pretraining).

:func:`pretrain` trains a :class:`~tauml.models.gpt.GPT` on sequences ``[START, codes..., STOP, PAD...]``
(``docs/conventions.md``) to predict each next token, with the loss counted on real targets only.  It
writes into ``out_dir``:

* ``backbone.pt``: the weights of the epoch with the lowest validation loss (:func:`tauml.models.gpt.save_backbone`),
* ``history.json``: per epoch the training and validation loss (nats per token), the validation
  perplexity, throughput (real tokens/s, jets/s), learning rate and elapsed time,
* ``training_state.pt``: everything needed to resume after the last finished epoch.

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
from tauml.evaluation.generation import unigram_perplexity
from tauml.models import CheckpointError
from tauml.models.checkpoints import load_backbone, save_backbone
from tauml.models.gpt import GPT, PAD_ID, START_ID, next_token_loss
from tauml.training import common, engine

BACKBONE_FILE = "backbone.pt"
HISTORY_FILE = "history.json"
STATE_FILE = "training_state.pt"

#: ``on_epoch_end(epoch, record)`` is called after each epoch's state is saved (``epoch`` counts from 0).
EpochCallback = Callable[[int, dict[str, Any]], None]


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
) -> tuple[GPT, dict[str, Any]]:
    """Pretrain a GPT by next-token prediction; return the best model (lowest validation loss) and the history.

    ``*_tokens`` are int token ids ``(n_jets, L)``, ``*_mask`` boolean ``(n_jets, L)`` (True = real token).
    ``gpt_config.vocab_size`` must be the tokenizer's ``vocab_size``.  ``metadata`` (JSON-like, e.g. the
    tokenizer checkpoint's hash) is stored in ``backbone.pt``.  ``on_epoch_end`` may stop the run by raising
    (a notebook's interrupt does the same), as does ``max_epochs_this_call``: calling :func:`pretrain` again
    resumes after the last finished epoch.  Under torchrun every process calls it with the same data and
    trains its slice of each batch (docs/training.md); only rank 0 writes.
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
    if config.train_jets:
        train_tokens, train_mask = train_tokens[: config.train_jets], train_mask[: config.train_jets]

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    run_key = _run_key(train_tokens, val_tokens, gpt_config, config)
    done = engine.finished_history(out_dir / STATE_FILE, run_key, config.epochs, "pretraining run")
    if done is not None:
        if not (out_dir / BACKBONE_FILE).is_file():
            raise CheckpointError(f"the run in {out_dir} finished but its {BACKBONE_FILE} is gone: delete "
                                  f"{out_dir / STATE_FILE} to pretrain again")
        return load_backbone(out_dir / BACKBONE_FILE), done

    common.limit_threads()
    device = common.select_device(config.device)
    common.seed_everything(config.seed)
    model = GPT(gpt_config).to(device)
    optimizer = _make_optimizer(model, config)
    steps_per_epoch = math.ceil(len(train_tokens) / config.batch_size)
    scheduler = common.make_cosine_scheduler(
        optimizer, config.epochs * steps_per_epoch, config.warmup_steps, config.min_lr_fraction
    )
    info = {"unigram_perplexity": unigram_perplexity(train_tokens, train_mask, val_tokens, val_mask,
                                                     gpt_config.vocab_size),
            "n_train_jets": len(train_tokens), "n_val_jets": len(val_tokens),
            "n_parameters": sum(p.numel() for p in model.parameters()),
            "gpt_config": to_dict(gpt_config), "pretrain_config": to_dict(config)}
    train_tokens, train_mask = train_tokens.to(device), train_mask.to(device)

    def step(index: np.ndarray) -> tuple[torch.Tensor, int]:
        index = torch.as_tensor(index, device=device)
        tokens, mask = _trim(train_tokens[index], train_mask[index])
        with engine.autocast(device, config.bf16):
            return next_token_loss(model, tokens, mask)

    def validate(model: GPT) -> dict[str, float]:
        val = evaluate(model, val_tokens, val_mask, config.batch_size, bf16=config.bf16)
        return {"val_loss": val["loss"], "val_perplexity": val["perplexity"]}

    def save(history: dict[str, Any], improved: bool) -> None:
        if improved:
            best = history["epochs"][-1]
            save_backbone(model, out_dir / BACKBONE_FILE, {
                **(metadata or {}), "epoch": best["epoch"], "epochs": config.epochs, "val_loss": best["val_loss"],
                "val_perplexity": best["val_perplexity"], "unigram_perplexity": history["unigram_perplexity"],
                "run_key": run_key,
            })
        write_json(out_dir / HISTORY_FILE, history)

    def describe(record: dict[str, Any]) -> str:
        return (f"epoch {record['epoch'] + 1}/{config.epochs}: train loss {record['train_loss']:.4f}, "
                f"val loss {record['val_loss']:.4f}, val perplexity {record['val_perplexity']:.1f} "
                f"(unigram {info['unigram_perplexity']:.1f}), {record['tokens_per_s']:.0f} tokens/s")

    trainer = engine.Trainer(
        model, optimizer, scheduler, step=step, validate=validate, epochs=config.epochs, folder=out_dir,
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
             batch_size: int = 256, bf16: bool = False) -> dict[str, float]:
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
            with engine.autocast(device, bf16):
                loss, count = next_token_loss(model, batch_tokens, batch_mask)
            loss_sum += float(loss) * count
            n_targets += count
    finally:
        model.train(was_training)
    loss = loss_sum / n_targets
    return {"loss": loss, "perplexity": math.exp(loss), "n_targets": n_targets}


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


def _make_optimizer(model: GPT, config: PretrainConfig) -> torch.optim.AdamW:
    """AdamW with weight decay on the matrices of the linear layers only (not biases, LayerNorms, embedding)."""
    decay = [p for name, p in model.named_parameters() if p.ndim >= 2 and not name.startswith("wte.")]
    no_decay = [p for name, p in model.named_parameters() if p.ndim < 2 or name.startswith("wte.")]
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


def _run_key(train_tokens: torch.Tensor, val_tokens: torch.Tensor, gpt_config: GPTConfig,
             config: PretrainConfig) -> str:
    """Names one run: configuration (device and precision aside) and the exact data."""
    digest = hashlib.sha256()
    for tokens in (train_tokens, val_tokens):
        digest.update(str(tuple(tokens.shape)).encode())
        digest.update(tokens.numpy().tobytes())
    return config_hash(gpt_config, replace(common.placement_free(config), device="any"), digest.hexdigest())
