"""Training the VQ-VAE tokenizer, and measuring how well its tokens keep the constituents.

:func:`train_tokenizer` is resumable: after every epoch it writes ``state.pt`` (weights, optimiser,
scheduler, random-number states, history) and, when the validation loss improved, the best tokenizer to
``tokenizer.pt``; calling it again with the same ``out_dir`` continues after the last finished epoch and
ends with the same weights as an uninterrupted run.  Losses count real constituents only.

:func:`tokenization_metrics` sends jets through tokens and back and reports resolutions, accuracies,
confusion matrices and the codebook usage.  See docs/tokenizer.md.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tauml.cache import write_json
from tauml.config import FeatureConfig, TokenizerConfig, to_dict
from tauml.data.features import (
    CHARGE_INDEX,
    CONTINUOUS_FEATURES,
    FEATURE_NAMES,
    PID_FEATURES,
    JetArrays,
    constituent_arrays,
)
from tauml.models import CheckpointError
from tauml.models.checkpoints import load_tokenizer, save_tokenizer
from tauml.models.vqvae import Tokenizer, code_counts, perplexity, utilisation
from tauml.training import common

#: Linear warm-up over this fraction of all steps, then cosine decay to MIN_LR_FRACTION x lr (OmniJet-alpha
#: warms up over its first 4 of 100 epochs and ends at 0.3 x the peak).
WARMUP_FRACTION = 0.04
MIN_LR_FRACTION = 0.1
EVAL_BATCH_SIZE = 1024
#: Training batches are formed within groups of this many batches of similar jet length (see _epoch_batches).
BUCKET_BATCHES = 16

JetsLike = JetArrays | tuple[np.ndarray, np.ndarray]


def train_tokenizer(
    train: JetsLike,
    val: JetsLike,
    config: TokenizerConfig,
    features: FeatureConfig,
    out_dir: str | Path,
    progress: bool = True,
    device: str = "auto",
    max_epochs_this_call: int | None = None,
) -> Tokenizer:
    """Train a tokenizer on ``train`` jets, pick the epoch with the lowest loss on ``val``; return it frozen.

    ``train``/``val``: :class:`JetArrays` or ``(features (N, P, 10), mask (N, P) bool)``.  Only the first
    ``config.train_jets`` training jets are used when it is positive.  ``out_dir`` receives ``tokenizer.pt``
    (best epoch), ``state.pt`` (resume point) and ``history.json`` (one entry per epoch).
    ``max_epochs_this_call`` stops after that many epochs in this call (call again to continue).
    """
    config.validate()
    features.validate()
    common.limit_threads()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    train_x, train_mask = constituent_arrays(train, "train")
    val_x, val_mask = constituent_arrays(val, "val")
    if config.train_jets > 0:
        train_x, train_mask = train_x[:config.train_jets], train_mask[:config.train_jets]
    run = {"tokenizer_config": to_dict(config), "feature_config": to_dict(features),
           "train": _fingerprint(train_x, train_mask), "val": _fingerprint(val_x, val_mask)}

    state_path, best_path = out_dir / "state.pt", out_dir / "tokenizer.pt"
    state = common.load_training_state(state_path) if state_path.exists() else None
    if state is not None and state["run"] != run:
        raise CheckpointError(f"{out_dir} holds a tokenizer training with other settings or data "
                              f"({state['run']}); use another out_dir or delete {state_path}")
    if state is not None and state["epoch"] >= config.epochs:
        return load_tokenizer(best_path, device=common.select_device(device))

    torch_device = common.select_device(device)
    common.seed_everything(config.seed)
    tokenizer = Tokenizer(config, features).to(torch_device)
    optimizer = _make_optimizer(tokenizer, config)
    batch_size = min(config.batch_size, len(train_x))
    train_counts = train_mask.sum(1)
    steps_per_epoch = len(train_x) // batch_size  # drop_last: k-means and dead-code statistics see full batches
    total_steps = steps_per_epoch * config.epochs
    scheduler = common.make_cosine_scheduler(optimizer, total_steps, math.ceil(WARMUP_FRACTION * total_steps),
                                             MIN_LR_FRACTION)
    history: list[dict[str, Any]] = []
    best_loss, start_epoch = math.inf, 0
    if state is not None:
        tokenizer.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        common.set_rng_state(state["rng"])
        history, best_loss, start_epoch = state["history"], state["best_loss"], state["epoch"]

    if not bool(tokenizer.vqvae.quantizer.initialised):  # k-means on a random batch, not a bucket of short jets
        first = common.epoch_permutation(len(train_x), config.seed, 0)[:batch_size]
        tokenizer.vqvae.initialise_codebook(*_batch(train_x, train_mask, first, torch_device))

    stop_epoch = config.epochs if max_epochs_this_call is None else min(config.epochs,
                                                                        start_epoch + max_epochs_this_call)
    for epoch in range(start_epoch, stop_epoch):
        started = time.perf_counter()
        tokenizer.train()
        replaced_before = tokenizer.vqvae.quantizer.replaced_count
        sums = {"loss": 0.0, "continuous": 0.0, "categorical": 0.0, "vq": 0.0}
        bar = common.progress(_epoch_batches(train_counts, batch_size, config.seed, epoch),
                              total=steps_per_epoch, desc=f"tokenizer epoch {epoch + 1}/{config.epochs}",
                              **({} if progress else {"disable": True}))
        for step, index in enumerate(bar, start=1):
            out = train_step(tokenizer, optimizer, *_batch(train_x, train_mask, index, torch_device), config.grad_clip)
            scheduler.step()
            sums["loss"] += float(out.loss.detach())
            for key, value in out.parts.items():
                sums[key] += float(value)
            bar.set_postfix(loss=f"{sums['loss'] / step:.4f}", refresh=False)
        metrics = evaluate(tokenizer, val_x, val_mask)
        entry = {"epoch": epoch + 1, **{f"train_{k}": v / max(1, steps_per_epoch) for k, v in sums.items()},
                 **{f"val_{k}": v for k, v in metrics.items()},
                 "codes_replaced": tokenizer.vqvae.quantizer.replaced_count - replaced_before,
                 "lr": optimizer.param_groups[0]["lr"], "seconds": time.perf_counter() - started}
        history.append(entry)
        if progress:
            print(_summary(entry))
        if not math.isfinite(metrics["loss"]):
            raise FloatingPointError(f"the tokenizer's validation loss is {metrics['loss']} after epoch {epoch + 1}: "
                                     "training diverged; lower lr or lower grad_clip")
        if metrics["loss"] < best_loss:
            best_loss = metrics["loss"]
            tokenizer.metadata = {"epochs": config.epochs, "best_epoch": epoch + 1, "val_loss": best_loss,
                                  "utilisation": metrics["utilisation"], "perplexity": metrics["perplexity"],
                                  "n_train": len(train_x)}
            save_tokenizer(tokenizer, best_path)
        write_json(out_dir / "history.json", history)
        common.save_training_state(state_path, model=tokenizer.state_dict(), optimizer=optimizer.state_dict(),
                                   scheduler=scheduler.state_dict(), rng=common.rng_state(), epoch=epoch + 1,
                                   history=history, best_loss=best_loss, run=run)
    return load_tokenizer(best_path, device=torch_device)


def _epoch_batches(counts: np.ndarray, batch_size: int, seed: int, epoch: int) -> list[np.ndarray]:
    """The training batches of ``epoch`` (:func:`common.bucketed_batches`, last partial batch dropped): on
    JetClass-like jets (128 slots, ~45 used) cutting each batch after its longest jet saves about a third of
    the time, without changing what a batch computes."""
    return common.bucketed_batches(counts, batch_size, seed, epoch, BUCKET_BATCHES, drop_last=True)


def train_step(tokenizer: Tokenizer, optimizer: torch.optim.Optimizer, x: torch.Tensor, mask: torch.Tensor,
               grad_clip: float):
    """One optimisation step on a batch ``x`` (n_jets, n_slots, n_features) with boolean ``mask``; returns the
    forward output (``.loss``, ``.parts``).  Gradients are clipped to norm ``grad_clip``."""
    out = tokenizer(x, mask)
    optimizer.zero_grad(set_to_none=True)
    out.loss.backward()
    torch.nn.utils.clip_grad_norm_(tokenizer.parameters(), grad_clip)
    optimizer.step()
    return out


def _make_optimizer(tokenizer: Tokenizer, config: TokenizerConfig) -> torch.optim.AdamW:
    """AdamW with weight decay on the weight matrices only (not on biases, LayerNorms or the codebook)."""
    decay, no_decay = [], []
    for name, parameter in tokenizer.named_parameters():
        (decay if parameter.ndim >= 2 and not name.endswith("codebook") else no_decay).append(parameter)
    return torch.optim.AdamW([{"params": decay, "weight_decay": config.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=config.lr)


def _summary(entry: dict[str, Any]) -> str:
    resolution = ", ".join(f"{name} {entry['val_resolution'][name]:.3f}" for name in entry["val_resolution"])
    return (f"epoch {entry['epoch']}: train loss {entry['train_loss']:.4f}, val loss {entry['val_loss']:.4f}, "
            f"utilisation {entry['val_utilisation']:.2f}, perplexity {entry['val_perplexity']:.1f}, "
            f"resolution (std) {resolution}, charge acc {entry['val_charge_accuracy']:.3f}, "
            f"pid acc {entry['val_pid_accuracy']:.3f}")


# ----------------------------------------------------------------------------------------------------------
# Inputs
# ----------------------------------------------------------------------------------------------------------


def _fingerprint(x: np.ndarray, mask: np.ndarray) -> list[float]:
    """Jets, real constituents and the sum of their features: tells a resumed run that its data changed."""
    return [len(x), int(mask.sum()), round(float(x[mask].sum(dtype=np.float64)), 3)]


def _batch(x: np.ndarray, mask: np.ndarray, index: np.ndarray,
           device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch on ``device``, cut after its last real slot (padding changes nothing, so this only saves time)."""
    m = mask[index]
    used = np.flatnonzero(m.any(0))
    width = int(used.max()) + 1 if len(used) else 1
    return torch.from_numpy(x[index, :width]).to(device), torch.from_numpy(m[:, :width]).to(device)


# ----------------------------------------------------------------------------------------------------------
# Evaluation
# ----------------------------------------------------------------------------------------------------------


@torch.no_grad()
def evaluate(tokenizer: Tokenizer, x: np.ndarray, mask: np.ndarray,
             batch_size: int = EVAL_BATCH_SIZE) -> dict[str, Any]:
    """Losses (means over real constituents), codebook utilisation and perplexity, the std of (decoded - input)
    of the continuous features in transformed units, and charge / particle-type accuracy, in eval mode."""
    was_training = tokenizer.training
    tokenizer.eval()
    device = tokenizer.device
    n_real, sums = 0, {"loss": 0.0, "continuous": 0.0, "categorical": 0.0, "vq": 0.0}
    counts = torch.zeros(tokenizer.codebook_size, dtype=torch.long)
    residual_sum = torch.zeros(4, dtype=torch.float64)
    residual_sq = torch.zeros(4, dtype=torch.float64)
    charge_right = pid_right = 0
    try:
        for start in range(0, len(x), batch_size):
            index = np.arange(start, min(start + batch_size, len(x)))
            xb, mb = _batch(x, mask, index, device)
            real = int(mb.sum())
            if real == 0:
                continue
            out = tokenizer(xb, mb)
            n_real += real
            sums["loss"] += float(out.loss) * real
            for key, value in out.parts.items():
                sums[key] += float(value) * real
            counts += code_counts(out.codes, tokenizer.codebook_size).cpu()
            decoded = tokenizer.vqvae.to_features(out.raw, mb)[mb].double().cpu()
            target = xb[mb].double().cpu()
            residual = decoded[:, CONTINUOUS_FEATURES] - target[:, CONTINUOUS_FEATURES]
            residual_sum += residual.sum(0)
            residual_sq += (residual**2).sum(0)
            charge_right += int((decoded[:, CHARGE_INDEX] == target[:, CHARGE_INDEX]).sum())
            pid_right += int((decoded[:, PID_FEATURES].argmax(1) == target[:, PID_FEATURES].argmax(1)).sum())
    finally:
        tokenizer.train(was_training)
    mean = residual_sum / max(1, n_real)
    std = torch.sqrt((residual_sq / max(1, n_real) - mean**2).clamp(min=0))
    names = FEATURE_NAMES[CONTINUOUS_FEATURES]
    return {**{k: v / max(1, n_real) for k, v in sums.items()},
            "utilisation": utilisation(counts), "perplexity": perplexity(counts),
            "resolution": {name: float(s) for name, s in zip(names, std)},
            "charge_accuracy": charge_right / max(1, n_real), "pid_accuracy": pid_right / max(1, n_real)}
