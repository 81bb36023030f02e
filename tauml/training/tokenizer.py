"""Training the VQ-VAE tokenizer, and measuring how well its tokens keep the constituents.

:func:`train_tokenizer` runs the training engine (:mod:`tauml.training.engine`): after every epoch it writes
``state.pt`` (the resume point) and, when the validation loss improved, the best tokenizer to
``tokenizer.pt``; calling it again with the same ``out_dir`` continues after the last finished epoch and
ends with the same weights as an uninterrupted run.  Losses count real constituents only.

:func:`tokenization_metrics` sends jets through tokens and back and reports resolutions, accuracies,
confusion matrices and the codebook usage.  See docs/tokenizer.md.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tauml.cache import write_json
from tauml.config import ConfigError, FeatureConfig, TokenizerConfig, to_dict
from tauml.data import DataError
from tauml.data.features import (
    CHARGE_INDEX,
    CONTINUOUS_FEATURES,
    FEATURE_NAMES,
    PID_FEATURES,
    JetArrays,
    constituent_arrays,
)
from tauml.models.checkpoints import load_tokenizer, save_tokenizer
from tauml.models.vqvae import Tokenizer, code_counts, perplexity, utilisation
from tauml.training import common, engine
from tauml.training.streaming import (
    EpochPlan,
    ShardBatches,
    ShardPart,
    iter_part_batches,
    loader,
    n_jets,
)
from tauml.utils import usable_cores

#: Linear warm-up over this fraction of all steps, then cosine decay to MIN_LR_FRACTION x lr (OmniJet-alpha
#: warms up over its first 4 of 100 epochs and ends at 0.3 x the peak).
WARMUP_FRACTION = 0.04
MIN_LR_FRACTION = 0.1
EVAL_BATCH_SIZE = 1024
#: Training batches are formed within groups of this many batches of similar jet length (see _epoch_batches).
BUCKET_BATCHES = 16
STATE_FILE = "state.pt"

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

    The tokenizer trains in float32 and in one process, even under torchrun (the pipeline trains it on rank 0
    while the others wait): k-means and the dead-code replacement draw from each batch, see docs/training.md.
    """
    config.validate()
    features.validate()
    train_x, train_mask = constituent_arrays(train, "train")
    val_x, val_mask = constituent_arrays(val, "val")
    if config.train_jets > 0:
        train_x, train_mask = train_x[:config.train_jets], train_mask[:config.train_jets]
    run = {"tokenizer_config": to_dict(config), "feature_config": to_dict(features),
           "train": _fingerprint(train_x, train_mask), "val": _fingerprint(val_x, val_mask)}
    batch_size = min(config.batch_size, len(train_x))
    train_counts = train_mask.sum(1)

    def first_batch(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        first = common.epoch_permutation(len(train_x), config.seed, 0)[:batch_size]
        return _batch(train_x, train_mask, first, device)

    def val_batches(device: torch.device):
        return (_batch(val_x, val_mask, np.arange(start, min(start + EVAL_BATCH_SIZE, len(val_x))), device)
                for start in range(0, len(val_x), EVAL_BATCH_SIZE))

    return _fit(config, features, out_dir, run, len(train_x), batch_size,
                batches=lambda epoch: _epoch_batches(train_counts, batch_size, config.seed, epoch),
                as_batch=lambda index, device: _batch(train_x, train_mask, index, device),
                first_batch=first_batch, val_batches=val_batches, progress=progress, device=device,
                max_epochs_this_call=max_epochs_this_call, presharded=False)


def train_tokenizer_streaming(
    train: Sequence[ShardPart],
    val: Sequence[ShardPart],
    config: TokenizerConfig,
    features: FeatureConfig,
    out_dir: str | Path,
    progress: bool = True,
    device: str = "auto",
    max_epochs_this_call: int | None = None,
    workers: int | None = None,
) -> Tokenizer:
    """:func:`train_tokenizer` on jets streamed from feature shards (:func:`tauml.data.shards.write_feature_shard`;
    the parts of :func:`tauml.training.streaming.split_parts`): memory does not grow with the number of jets.

    The same model, optimiser, schedule, losses, k-means start, files and resume as in memory.  The epochs differ
    only in their order: a reproducible shuffle across shards from (seed, epoch)
    (:class:`~tauml.training.streaming.EpochPlan`), batches of jets of similar length within groups of
    ``BUCKET_BATCHES`` batches, the last partial batch left out; validation accumulates batch by batch.
    ``workers``: DataLoader worker processes (default: none on CPU, up to 4 on CUDA with pinned memory).
    """
    config.validate()
    features.validate()
    if config.train_jets:
        raise ConfigError(f"train_jets={config.train_jets} limits the in-memory tokenizer training only; streamed, "
                          "give fewer files (pp_jets_per_sample) or set train_jets=0")
    n_train, n_val = n_jets(train), n_jets(val)
    if not n_train or not n_val:
        raise DataError(f"streamed tokenizer training needs training and validation jets; got {n_train} and {n_val} "
                        "(give more or larger files)")
    run = {"tokenizer_config": to_dict(config), "feature_config": to_dict(features), "streaming": True,
           "train": [p.identity() for p in train], "val": [p.identity() for p in val]}
    batch_size = min(config.batch_size, n_train)
    on_cuda = common.select_device(device).type == "cuda"
    if workers is None:
        workers = min(4, max(0, len(usable_cores()) - 1)) if on_cuda else 0

    def batches(epoch: int):
        plan = EpochPlan(train, batch_size, config.seed, epoch, bucket_batches=BUCKET_BATCHES, drop_last=True)
        return loader(plan, workers=workers, pin_memory=on_cuda)

    def first_batch(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        batch = ShardBatches(EpochPlan(train, batch_size, config.seed, 0))[0]  # a random batch, not bucketed
        return batch.tokens.to(device), batch.mask.to(device)

    def val_batches(device: torch.device):
        return ((b.tokens, b.mask) for b in iter_part_batches(val, EVAL_BATCH_SIZE))

    return _fit(config, features, out_dir, run, n_train, batch_size, batches=batches,
                as_batch=lambda batch, device: (batch.tokens.to(device), batch.mask.to(device)),
                first_batch=first_batch, val_batches=val_batches, progress=progress, device=device,
                max_epochs_this_call=max_epochs_this_call, presharded=True)


def _fit(config: TokenizerConfig, features: FeatureConfig, out_dir: str | Path, run: dict[str, Any], n_train: int,
         batch_size: int, batches: Callable[[int], Any], as_batch: Callable[[Any, torch.device], tuple],
         first_batch: Callable[[torch.device], tuple], val_batches: Callable[[torch.device], Iterable],
         progress: bool, device: str, max_epochs_this_call: int | None, presharded: bool) -> Tokenizer:
    """The training both entry points share: ``batches(epoch)`` the epoch's batches, ``as_batch(item, device)``
    one of them as ``(features, mask)`` tensors, ``first_batch`` the k-means start, ``val_batches`` validation."""
    common.limit_threads()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    best_path = out_dir / "tokenizer.pt"
    torch_device = common.select_device(device)
    if engine.finished_history(out_dir / STATE_FILE, run, config.epochs, "tokenizer training") is not None:
        return load_tokenizer(best_path, device=torch_device)

    common.seed_everything(config.seed)
    tokenizer = Tokenizer(config, features).to(torch_device)
    quantizer = tokenizer.vqvae.quantizer
    optimizer = _make_optimizer(tokenizer, config)
    total_steps = n_train // batch_size * config.epochs  # drop_last: k-means and dead codes see full batches
    scheduler = common.make_cosine_scheduler(optimizer, total_steps, math.ceil(WARMUP_FRACTION * total_steps),
                                             MIN_LR_FRACTION)
    replaced_before = [0]

    def start_epoch(epoch: int) -> None:
        if not bool(quantizer.initialised):  # k-means on a random batch, not a bucket of short jets
            tokenizer.vqvae.initialise_codebook(*first_batch(torch_device))
        replaced_before[0] = quantizer.replaced_count

    def step(item: Any) -> tuple[torch.Tensor, int, dict[str, Any]]:
        out = tokenizer(*as_batch(item, torch_device))
        return out.loss, 1, out.parts  # count 1: the history averages the (full) batches' mean losses

    def validate(model: Tokenizer) -> dict[str, Any]:
        metrics = evaluate_batches(tokenizer, val_batches(torch_device))
        if not math.isfinite(metrics["loss"]):
            raise FloatingPointError(f"the tokenizer's validation loss is {metrics['loss']}: training diverged; "
                                     "lower lr or lower grad_clip")
        return {**{f"val_{k}": v for k, v in metrics.items()},
                "codes_replaced": quantizer.replaced_count - replaced_before[0]}

    def save(history: dict[str, Any], improved: bool) -> None:
        if improved:
            best = history["epochs"][-1]
            tokenizer.metadata = {"epochs": config.epochs, "best_epoch": best["epoch"] + 1,
                                  "val_loss": best["val_loss"], "utilisation": best["val_utilisation"],
                                  "perplexity": best["val_perplexity"], "n_train": n_train}
            save_tokenizer(tokenizer, best_path)
        write_json(out_dir / "history.json", epoch_list(history))

    engine.Trainer(
        tokenizer, optimizer, scheduler, step=step, validate=validate, epochs=config.epochs, folder=out_dir,
        batches=batches, run=run, seed=config.seed, state_file=STATE_FILE, name="tokenizer training",
        grad_clip=config.grad_clip, unit="batches", on_epoch_start=start_epoch, save=save, progress=progress,
        data_parallel=False, presharded=presharded,
        describe=lambda record: _summary(epoch_list({"epochs": [record]})[0]),
    ).fit(max_epochs_this_call)
    return load_tokenizer(best_path, device=torch_device)


def epoch_list(history: dict[str, Any]) -> list[dict[str, Any]]:
    """The tokenizer's ``history.json``: the engine's epoch records, epochs counted from 1."""
    return [{**record, "epoch": record["epoch"] + 1} for record in history["epochs"]]


def _epoch_batches(counts: np.ndarray, batch_size: int, seed: int, epoch: int) -> list[np.ndarray]:
    """The training batches of ``epoch`` (:func:`common.bucketed_batches`, last partial batch dropped): on
    JetClass-like jets (128 slots, ~45 used) cutting each batch after its longest jet saves about a third of
    the time, without changing what a batch computes."""
    return common.bucketed_batches(counts, batch_size, seed, epoch, BUCKET_BATCHES, drop_last=True)


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
    device = tokenizer.device
    return evaluate_batches(tokenizer, (_batch(x, mask, np.arange(start, min(start + batch_size, len(x))), device)
                                        for start in range(0, len(x), batch_size)))


@torch.no_grad()
def evaluate_batches(tokenizer: Tokenizer, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> dict[str, Any]:
    """:func:`evaluate` accumulated over ``batches`` of ``(features, mask)`` (in memory or streamed from feature
    shards): the same numbers for the same jets, whatever the batches."""
    was_training = tokenizer.training
    tokenizer.eval()
    device = tokenizer.device
    n_real, sums = 0, {"loss": 0.0, "continuous": 0.0, "categorical": 0.0, "vq": 0.0}
    counts = torch.zeros(tokenizer.codebook_size, dtype=torch.long)
    residual_sum = torch.zeros(4, dtype=torch.float64)
    residual_sq = torch.zeros(4, dtype=torch.float64)
    charge_right = pid_right = 0
    try:
        for xb, mb in batches:
            xb, mb = xb.to(device), mb.to(device)
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
