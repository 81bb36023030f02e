"""Training a tau model (or a supervised baseline) on one task: tensors and a model in, the best model out.

:func:`train_tau_model` is the loop every fine-tuning runs: AdamW with a cosine schedule stepped per batch (to
``min_lr_fraction`` x lr, as the reference), :func:`tauml.models.tau.apply_strategy` at the start of every epoch,
validation every epoch, the best epoch by validation loss.  It knows nothing of presets, caches or test sets:
:func:`tauml.pipeline.finetune` assembles the jets and the model, calls it, and evaluates the result.

An interrupted training resumes after its last finished epoch (``state.pt`` in ``folder``) with the same final
weights as an uninterrupted one.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tauml.config import BASELINES, FinetuneConfig, to_dict
from tauml.data.features import JetArrays
from tauml.models.tau import apply_strategy
from tauml.training import common
from tauml.training.common import make_adamw
from tauml.training.losses import task_loss

MODEL_FILE = "model.pt"
STATE_FILE = "state.pt"

#: ``callback(epoch, record, history)`` after every epoch (e.g. a live loss curve); raise to stop.
EpochCallback = Callable[[int, dict[str, Any], dict[str, list]], None]


@dataclass
class TauInputs:
    """Everything a model needs for a set of jets, as CPU tensors (tokens for tau models, candidates for baselines)."""

    tensors: dict[str, torch.Tensor]
    targets: dict[str, torch.Tensor]

    def __len__(self) -> int:
        return len(self.targets["is_tau"])

    @property
    def lengths(self) -> np.ndarray:
        """Real positions per jet (tokens for tau models, constituents for baselines), for length bucketing."""
        mask = self.tensors["token_mask"] if "token_mask" in self.tensors else self.tensors["mask"]
        return mask.sum(1).numpy()

    def batch(self, index: np.ndarray, device: torch.device) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        idx = torch.as_tensor(index)
        inputs = {k: v[idx] for k, v in self.tensors.items()}
        if "token_mask" in inputs:  # trim to the longest real sequence of the batch
            width = int(inputs["token_mask"].sum(1).max())
            inputs["tokens"], inputs["token_mask"] = inputs["tokens"][:, :width], inputs["token_mask"][:, :width]
        elif "mask" in inputs:
            width = max(1, int(inputs["mask"].sum(1).max()))
            inputs = {k: (v[:, :width] if v.dim() >= 2 else v) for k, v in inputs.items()}
        return ({k: v.to(device) for k, v in inputs.items()},
                {k: v[idx].to(device) for k, v in self.targets.items()})


def tau_inputs(jets: JetArrays, tokens: tuple[np.ndarray, np.ndarray] | None = None,
               lifetime: bool = False) -> TauInputs:
    """The inputs of ``jets``: ``tokens`` (ids and mask from the frozen tokenizer) for the tau models, or the
    candidates themselves (features, mask, four-momenta and, with ``lifetime``, impact parameters) for the
    baselines when ``tokens`` is None."""
    targets = {"is_tau": torch.as_tensor(jets.is_tau, dtype=torch.long),
               "log_pt_ratio": torch.as_tensor(jets.log_pt_ratio, dtype=torch.float32),
               "dm": torch.as_tensor(jets.dm, dtype=torch.long)}
    if tokens is not None:
        tensors = {"tokens": torch.as_tensor(tokens[0]), "token_mask": torch.as_tensor(tokens[1])}
    else:
        tensors = {"features": torch.as_tensor(jets.features), "mask": torch.as_tensor(jets.mask),
                   "p4": torch.as_tensor(jets.p4)}
        if lifetime:
            tensors["lifetime"] = torch.as_tensor(jets.lifetime)
    return TauInputs(tensors, targets)


def forward(model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """The raw outputs of a tau model (token inputs) or a baseline (candidate inputs)."""
    if "tokens" in inputs:
        return model(inputs["tokens"], inputs["token_mask"])
    return model(inputs["features"], inputs["mask"], inputs["p4"], inputs.get("lifetime"))


def set_epoch(model: torch.nn.Module, config: FinetuneConfig, epoch: int) -> bool:
    """Apply the strategy for ``epoch``; return whether the backbone (if any) trains."""
    if config.strategy in BASELINES:
        return True
    return apply_strategy(model, config.strategy, epoch, config.unfreeze_epoch)


@torch.no_grad()
def evaluate_outputs(model: torch.nn.Module, data: TauInputs, config: FinetuneConfig, device: torch.device,
                     batch_size: int = 1024) -> tuple[float, torch.Tensor]:
    """Mean loss over ``data`` (weighted by batch size) and the raw outputs, in eval mode."""
    model.eval()
    order = np.argsort(data.lengths, kind="stable")  # batches of similar length: little padding
    outputs = torch.empty(0)
    total, count = 0.0, 0
    for index in common.batches(len(data), batch_size, order):
        inputs, targets = data.batch(index, device)
        out = forward(model, inputs).float().cpu()
        total += float(task_loss(config.task, out, {k: v.cpu() for k, v in targets.items()}, config)) * len(index)
        count += len(index)
        if outputs.numel() == 0:
            outputs = torch.empty((len(data), *out.shape[1:]))
        outputs[torch.as_tensor(index)] = out
    return total / max(count, 1), outputs


def optimised_parameters(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    """What the optimiser holds: a tau model's head and the backbone parts it uses (frozen ones included: a
    frozen parameter has no gradient and is skipped by AdamW until the strategy unfreezes it); all of a
    baseline."""
    if hasattr(model, "backbone_parameters"):
        return [*model.head_parameters(), *model.backbone_parameters()]
    return list(model.parameters())


@dataclass
class TrainedModel:
    """The outcome of :func:`train_tau_model`: the model with its best epoch's weights (when ``finished``),
    the per-epoch history, the best epoch and the training time in seconds."""

    model: torch.nn.Module
    history: dict[str, list]
    best_epoch: int
    finished: bool
    seconds: float


def train_tau_model(
    model: torch.nn.Module,
    train: TauInputs,
    val: TauInputs,
    config: FinetuneConfig,
    folder: str | Path,
    device: torch.device,
    progress: bool = True,
    callback: EpochCallback | None = None,
    max_epochs_this_call: int | None = None,
) -> TrainedModel:
    """Train ``model`` (already on ``device``, initialised from ``config.seed``) on ``train``; keep the epoch
    with the lowest loss on ``val``.  ``folder`` receives ``state.pt`` after every epoch (the resume point)
    and ``model.pt`` (the best weights) at the end.  ``max_epochs_this_call`` stops after that many epochs
    (call again to continue); ``callback`` is called after every epoch."""
    folder = Path(folder)
    optimizer = make_adamw(optimised_parameters(model), lr=config.lr, weight_decay=config.weight_decay)
    steps_per_epoch = math.ceil(len(train) / config.batch_size)
    scheduler = common.make_cosine_scheduler(optimizer, config.epochs * steps_per_epoch, 0, config.min_lr_fraction)
    history: dict[str, list] = {"train_loss": [], "val_loss": [], "lr": [], "backbone_trainable": [], "seconds": []}
    best = {"epoch": -1, "val_loss": math.inf, "state": None}
    first_epoch = 0
    state_path = folder / STATE_FILE
    if state_path.exists():
        state = common.load_training_state(state_path)
        if state.get("config") == to_dict(config):
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            common.set_rng_state(state["rng"])
            history, best, first_epoch = state["history"], state["best"], state["epoch"]

    started = time.perf_counter() - sum(history["seconds"])
    bar = common.progress(range(first_epoch, config.epochs), desc=f"{config.task} {config.strategy}",
                          total=config.epochs, initial=first_epoch, disable=not progress or None, unit="epoch")
    stop = config.epochs if max_epochs_this_call is None else min(config.epochs, first_epoch + max_epochs_this_call)
    for epoch in bar:
        if epoch >= stop:
            break
        t0 = time.perf_counter()
        trainable = set_epoch(model, config, epoch)
        model.train()
        total, count = 0.0, 0
        for index in common.bucketed_batches(train.lengths, config.batch_size, config.seed, epoch):
            inputs, targets = train.batch(index, device)
            loss = task_loss(config.task, forward(model, inputs), targets, config)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            total += float(loss.detach()) * len(index)
            count += len(index)
        val_loss, _ = evaluate_outputs(model, val, config, device)
        record = {"epoch": epoch, "train_loss": total / count, "val_loss": val_loss,
                  "lr": scheduler.get_last_lr()[0], "backbone_trainable": trainable,
                  "seconds": time.perf_counter() - t0}
        for key in history:
            history[key].append(record[key])
        if val_loss < best["val_loss"]:
            best = {"epoch": epoch, "val_loss": val_loss,
                    "state": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}}
        common.save_training_state(state_path, config=to_dict(config), epoch=epoch + 1, model=model.state_dict(),
                                   optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(),
                                   rng=common.rng_state(), history=history, best=best)
        bar.set_postfix(train=f"{record['train_loss']:.4f}", val=f"{val_loss:.4f}", best=best["epoch"])
        if callback is not None:
            callback(epoch, record, history)
    bar.close()
    finished = len(history["val_loss"]) >= config.epochs
    if finished:
        model.load_state_dict(best["state"])
        torch.save(best["state"], folder / MODEL_FILE)
    return TrainedModel(model=model, history=history, best_epoch=int(best["epoch"]), finished=finished,
                        seconds=time.perf_counter() - started)
