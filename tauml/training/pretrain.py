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

import contextlib
import hashlib
import math
import time
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
from tauml.training import common

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
) -> tuple[GPT, dict[str, Any]]:
    """Pretrain a GPT by next-token prediction; return the best model (lowest validation loss) and the history.

    ``*_tokens`` are int token ids ``(n_jets, L)``, ``*_mask`` boolean ``(n_jets, L)`` (True = real token).
    ``gpt_config.vocab_size`` must be the tokenizer's ``vocab_size``.  ``metadata`` (JSON-like, e.g. the
    tokenizer checkpoint's hash) is stored in ``backbone.pt``.  ``on_epoch_end`` may stop the run by raising
    (a notebook's interrupt does the same): calling :func:`pretrain` again resumes after the last finished epoch.
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
    state = _load_state(out_dir, run_key)
    if state is not None and state["epoch"] == config.epochs:
        if not (out_dir / BACKBONE_FILE).is_file():
            raise CheckpointError(f"the run in {out_dir} finished but its {BACKBONE_FILE} is gone: delete "
                                  f"{out_dir / STATE_FILE} to pretrain again")
        return load_backbone(out_dir / BACKBONE_FILE), state["history"]

    common.limit_threads()
    device = common.select_device(config.device)
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" and config.bf16
                else contextlib.nullcontext())
    common.seed_everything(config.seed)
    model = GPT(gpt_config).to(device)
    optimizer = _make_optimizer(model, config)
    steps_per_epoch = math.ceil(len(train_tokens) / config.batch_size)
    scheduler = common.make_cosine_scheduler(
        optimizer, config.epochs * steps_per_epoch, config.warmup_steps, config.min_lr_fraction
    )
    if state is None:
        history: dict[str, Any] = {
            "epochs": [], "best_epoch": None, "best_val_loss": None,
            "unigram_perplexity": unigram_perplexity(train_tokens, train_mask, val_tokens, val_mask,
                                                     gpt_config.vocab_size),
            "n_train_jets": len(train_tokens), "n_val_jets": len(val_tokens),
            "n_parameters": sum(p.numel() for p in model.parameters()),
            "gpt_config": to_dict(gpt_config), "pretrain_config": to_dict(config),
        }
        first_epoch = 0
    else:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        common.set_rng_state(state["rng"])
        history, first_epoch = state["history"], state["epoch"]

    train_tokens, train_mask = train_tokens.to(device), train_mask.to(device)
    for epoch in range(first_epoch, config.epochs):
        started = time.perf_counter()
        model.train()
        loss_sum, n_targets, n_jets = torch.zeros((), device=device), 0, 0
        order = torch.as_tensor(common.epoch_permutation(len(train_tokens), config.seed, epoch), device=device)
        bar = common.progress(total=steps_per_epoch, desc=f"epoch {epoch + 1}/{config.epochs}",
                              **({} if progress else {"disable": True}))
        for index in common.batches(len(order), config.batch_size, order):
            tokens, mask = _trim(train_tokens[index], train_mask[index])
            with autocast:
                loss, count = next_token_loss(model, tokens, mask)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if config.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            optimizer.step()
            scheduler.step()
            loss_sum += loss.detach().float() * count
            n_targets += count
            n_jets += len(index)
            bar.update()
            if bar.n % 10 == 0 or bar.n == steps_per_epoch:  # reading the loss waits for the device
                bar.set_postfix(loss=f"{float(loss.detach()):.3f}",
                                tokens_per_s=f"{n_targets / (time.perf_counter() - started):.0f}")
        bar.close()
        train_time = time.perf_counter() - started
        val = evaluate(model, val_tokens, val_mask, config.batch_size, bf16=config.bf16)
        previous_elapsed = history["epochs"][-1]["elapsed_s"] if history["epochs"] else 0.0
        record = {
            "epoch": epoch, "train_loss": float(loss_sum) / n_targets, "val_loss": val["loss"],
            "val_perplexity": val["perplexity"], "tokens_per_s": n_targets / train_time,
            "jets_per_s": n_jets / train_time, "train_time_s": train_time, "train_tokens": n_targets,
            "lr": scheduler.get_last_lr()[0],
            "elapsed_s": previous_elapsed + time.perf_counter() - started,
        }
        history["epochs"].append(record)
        if history["best_val_loss"] is None or val["loss"] < history["best_val_loss"]:
            history["best_epoch"], history["best_val_loss"] = epoch, val["loss"]
            save_backbone(model, out_dir / BACKBONE_FILE, {
                **(metadata or {}), "epoch": epoch, "epochs": config.epochs, "val_loss": val["loss"],
                "val_perplexity": val["perplexity"], "unigram_perplexity": history["unigram_perplexity"],
                "run_key": run_key,
            })
        common.save_training_state(
            out_dir / STATE_FILE, run_key=run_key, epoch=epoch + 1, model=model.state_dict(),
            optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(), rng=common.rng_state(),
            history=history,
        )
        write_json(out_dir / HISTORY_FILE, history)
        if progress:
            print(f"epoch {epoch + 1}/{config.epochs}: train loss {record['train_loss']:.4f}, "
                  f"val loss {val['loss']:.4f}, val perplexity {val['perplexity']:.1f} "
                  f"(unigram {history['unigram_perplexity']:.1f}), {record['tokens_per_s']:.0f} tokens/s")
        if on_epoch_end is not None:
            on_epoch_end(epoch, record)
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
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" and bf16
                else contextlib.nullcontext())
    was_training = model.training
    model.eval()
    order = torch.argsort(mask.sum(dim=1), stable=True)
    loss_sum, n_targets = 0.0, 0
    try:
        for index in common.batches(len(order), batch_size, order.numpy()):
            batch_tokens, batch_mask = _trim(tokens[index].to(device), mask[index].to(device))
            with autocast:
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
    """Names one run: configuration (the device aside) and the exact data."""
    digest = hashlib.sha256()
    for tokens in (train_tokens, val_tokens):
        digest.update(str(tuple(tokens.shape)).encode())
        digest.update(tokens.numpy().tobytes())
    return config_hash(gpt_config, replace(config, device="any"), digest.hexdigest())


def _load_state(out_dir: Path, run_key: str) -> dict[str, Any] | None:
    path = out_dir / STATE_FILE
    if not path.is_file():
        return None
    state = common.load_training_state(path)
    if state.get("run_key") != run_key:
        raise CheckpointError(
            f"{out_dir} holds a pretraining run with other settings or data (run {state.get('run_key')}, "
            f"this one {run_key}): use another out_dir (e.g. tauml.cache.cache_path('backbone', key)) or delete it"
        )
    return state
