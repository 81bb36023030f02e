"""Next-token pretraining streamed from token shards: :func:`pretrain_streaming`, the out-of-core twin of
:func:`tauml.training.pretrain.pretrain`.

The same model, optimiser, schedule, loss and files (``backbone.pt``, ``history.json``, ``training_state.pt``; the
same resume after an interruption) as the in-memory pretraining, but the jets are never all in memory: batches
come from memory-mapped shards through a ``DataLoader`` (:mod:`tauml.training.streaming`: a reproducible shuffle
across shards from (seed, epoch), each data-parallel rank its slice of every global batch, padding per batch),
and validation and the unigram reference are accumulated batch by batch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from tauml.cache import write_json
from tauml.config import ConfigError, GPTConfig, PretrainConfig, config_hash, to_dict
from tauml.data import DataError
from tauml.models.checkpoints import load_backbone, save_backbone
from tauml.models.gpt import GPT, PAD_ID, START_ID, next_token_loss
from tauml.training import common, distributed, engine
from tauml.training.pretrain import (
    BACKBONE_FILE,
    HISTORY_FILE,
    STATE_FILE,
    EpochCallback,
    _make_optimizer,
    finished_backbone,
)
from tauml.training.streaming import (
    EVAL_BATCH,
    EpochPlan,
    ShardPart,
    TokenBatch,
    iter_part_batches,
    loader,
    n_jets,
)
from tauml.utils import usable_cores


def pretrain_streaming(
    train: Sequence[ShardPart],
    val: Sequence[ShardPart],
    gpt_config: GPTConfig,
    config: PretrainConfig,
    out_dir: str | Path,
    progress: bool = True,
    metadata: dict[str, Any] | None = None,
    on_epoch_end: EpochCallback | None = None,
    max_epochs_this_call: int | None = None,
    workers: int | None = None,
) -> tuple[GPT, dict[str, Any]]:
    """Pretrain a GPT by next-token prediction on the jets of token-shard parts; return the best model and history.

    ``train``/``val``: :class:`~tauml.training.streaming.ShardPart` lists (:func:`~tauml.training.streaming.split_parts`).
    ``workers``: DataLoader worker processes (default: none on CPU, where they would take the training's cores;
    up to 4 on CUDA, with pinned memory).  Everything else as :func:`tauml.training.pretrain.pretrain`.
    """
    config.validate()
    gpt_config.validate()
    if gpt_config.vocab_size <= 3:
        raise ConfigError(f"gpt_config.vocab_size={gpt_config.vocab_size}: set it to the tokenizer's vocabulary")
    if config.mpm_weight or config.ntp_weight != 1.0:
        raise ConfigError("streaming pretraining trains next-token prediction alone (ntp_weight=1, mpm_weight=0)")
    if not n_jets(train) or not n_jets(val):
        raise DataError(f"streaming pretraining needs training and validation jets; got {n_jets(train)} and "
                        f"{n_jets(val)} (give more or larger files)")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    run_key = config_hash(gpt_config, replace(common.placement_free(config), device="any"),
                          [p.identity() for p in train], [p.identity() for p in val], "streaming")
    finished = finished_backbone(out_dir, run_key, config.epochs)
    if finished is not None:
        return finished

    common.limit_threads()
    device = common.select_device(config.device)
    if workers is None:
        workers = 0 if device.type != "cuda" else min(4, max(0, len(usable_cores()) - 1))
    common.seed_everything(config.seed)
    model = GPT(gpt_config).to(device)
    optimizer = _make_optimizer(model, config)
    steps_per_epoch = math.ceil(n_jets(train) / config.batch_size)
    scheduler = common.make_cosine_scheduler(
        optimizer, config.epochs * steps_per_epoch, config.warmup_steps, config.min_lr_fraction
    )
    info = {"unigram_perplexity": unigram_perplexity_stream(train, val, gpt_config.vocab_size),
            "n_train_jets": n_jets(train), "n_val_jets": n_jets(val), "n_shards": len(train), "streaming": True,
            "n_parameters": sum(p.numel() for p in model.parameters()),
            "gpt_config": to_dict(gpt_config), "pretrain_config": to_dict(config)}

    def batches(epoch: int):
        plan = EpochPlan(train, config.batch_size, config.seed, epoch)
        parallel = distributed.world_size() > 1
        return loader(plan, distributed.rank() if parallel else 0, distributed.world_size() if parallel else 1,
                      workers=workers, pin_memory=device.type == "cuda")

    def step(batch: TokenBatch) -> tuple[torch.Tensor, int]:
        batch = batch.to(device)
        _check_batch(batch, gpt_config.vocab_size)
        with engine.autocast(device, config.bf16):
            return next_token_loss(model, batch.tokens, batch.mask)

    def validate(model: GPT) -> dict[str, float]:
        val_result = evaluate_stream(model, val, config.batch_size, bf16=config.bf16)
        return {"val_loss": val_result["loss"], "val_perplexity": val_result["perplexity"]}

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
                f"(unigram {info['unigram_perplexity']:.1f}), {record['tokens_per_s']:.0f} tokens/s (streamed)")

    trainer = engine.Trainer(
        model, optimizer, scheduler, step=step, validate=validate, epochs=config.epochs, folder=out_dir,
        batches=batches, run=run_key, seed=config.seed, state_file=STATE_FILE, name="pretraining", info=info,
        grad_clip=config.grad_clip, unit="tokens", save=save, describe=describe, progress=progress, presharded=True,
    )
    callbacks = [] if on_epoch_end is None else [lambda epoch, record, history: on_epoch_end(epoch, record)]
    history = trainer.fit(max_epochs_this_call, callbacks)
    if len(history["epochs"]) < config.epochs:
        return model, history
    return load_backbone(out_dir / BACKBONE_FILE), history


def _check_batch(batch: TokenBatch, vocab_size: int) -> None:
    """The cheap checks of :func:`tauml.training.pretrain._check_sequences`, per batch (shards were verified)."""
    if bool((batch.tokens[:, 0] != START_ID).any()) or int(batch.tokens.max()) >= vocab_size:
        raise DataError(f"a streamed batch holds sequences that do not start with START or ids beyond the vocabulary "
                        f"0..{vocab_size - 1}: were the shards made with another tokenizer? Delete them to rebuild")


@torch.no_grad()
def evaluate_stream(model: GPT, parts: Sequence[ShardPart], batch_size: int = EVAL_BATCH,
                    bf16: bool = False) -> dict[str, float]:
    """Next-token loss (nats per real target token) and perplexity on every jet of ``parts``, accumulated per batch."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    loss_sum, n_targets = 0.0, 0
    try:
        for batch in iter_part_batches(parts, batch_size):
            batch = batch.to(device)
            with engine.autocast(device, bf16):
                loss, count = next_token_loss(model, batch.tokens, batch.mask)
            loss_sum += float(loss) * count
            n_targets += count
    finally:
        model.train(was_training)
    if not n_targets:
        raise DataError("no validation targets in the streamed parts")
    loss = loss_sum / n_targets
    return {"loss": loss, "perplexity": math.exp(loss), "n_targets": n_targets}


def unigram_perplexity_stream(train: Sequence[ShardPart], val: Sequence[ShardPart], vocab_size: int) -> float:
    """:func:`tauml.evaluation.generation.unigram_perplexity`, accumulated shard by shard (same number)."""
    counts = torch.zeros(vocab_size, dtype=torch.float64)
    for batch in iter_part_batches(train, EVAL_BATCH):
        counts += torch.bincount(batch.tokens[:, 1:][batch.mask[:, 1:]], minlength=vocab_size).double()
    counts[[PAD_ID, START_ID]] = 0.0
    possible = torch.ones(vocab_size, dtype=torch.float64)
    possible[[PAD_ID, START_ID]] = 0.0
    log_p = torch.log((counts + possible) / (counts.sum() + possible.sum()))
    nll, n = 0.0, 0
    for batch in iter_part_batches(val, EVAL_BATCH):
        targets = batch.tokens[:, 1:][batch.mask[:, 1:]]
        nll -= float(log_p[targets].sum())
        n += len(targets)
    return math.exp(nll / n)
