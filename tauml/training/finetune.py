"""Training a tau model (or a supervised baseline) on one task: tensors and a model in, the best model out.

:func:`train_tau_model` is the loop every fine-tuning runs: AdamW with a cosine schedule stepped per batch (to
``min_lr_fraction`` x lr, as the reference), :func:`tauml.models.tau.apply_strategy` at the start of every epoch,
validation every epoch, the best epoch by validation loss.  It knows nothing of presets, caches or test sets:
:func:`tauml.pipeline.finetune` assembles the jets and the model, calls it, and evaluates the result.

It runs the training engine (:mod:`tauml.training.engine`): an interrupted training resumes after its last
finished epoch (``state.pt`` in ``folder``) with the same final weights as an uninterrupted one.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tauml.cache import atomic_path
from tauml.config import BASELINES, FinetuneConfig, identity_dict
from tauml.data.features import JetArrays
from tauml.models.gpt import token_aligned_features
from tauml.models.tau import apply_strategy
from tauml.training import common, engine
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

    def fingerprint(self) -> list[Any]:
        """Jets and the sums of every tensor: tells a resumed training that its data changed."""
        return [len(self), *(round(float(v.double().nansum()), 6) for v in (*self.tensors.values(),
                                                                          *self.targets.values()))]

    def batch(self, index: np.ndarray, device: torch.device) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        idx = torch.as_tensor(index)
        inputs = {k: v[idx] for k, v in self.tensors.items()}
        if "token_mask" in inputs:  # trim to the longest real sequence of the batch
            width = int(inputs["token_mask"].sum(1).max())
            inputs = {k: v[:, :width] for k, v in inputs.items()}
        elif "mask" in inputs:
            width = max(1, int(inputs["mask"].sum(1).max()))
            inputs = {k: (v[:, :width] if v.dim() >= 2 else v) for k, v in inputs.items()}
        return ({k: v.to(device) for k, v in inputs.items()},
                {k: v[idx].to(device) for k, v in self.targets.items()})


def tau_inputs(jets: JetArrays, tokens: tuple[np.ndarray, np.ndarray] | None = None,
               lifetime: bool = False, continuous: bool = False) -> TauInputs:
    """The inputs of ``jets``: ``tokens`` (ids and mask from the frozen tokenizer) for the tau models, or the
    candidates themselves (features, mask, four-momenta and, with ``lifetime``, impact parameters) for the
    baselines when ``tokens`` is None.  ``continuous`` adds the constituent features aligned with the tokens
    (``token_features``), the input of a continuous backbone: the same features the tokenizer reads."""
    targets = {"is_tau": torch.as_tensor(jets.is_tau, dtype=torch.long),
               "log_pt_ratio": torch.as_tensor(jets.log_pt_ratio, dtype=torch.float32),
               "dm": torch.as_tensor(jets.dm, dtype=torch.long)}
    if tokens is not None:
        tensors = {"tokens": torch.as_tensor(tokens[0]), "token_mask": torch.as_tensor(tokens[1])}
        if continuous:
            tensors["token_features"] = token_aligned_features(jets.features, jets.mask)
    else:
        tensors = {"features": torch.as_tensor(jets.features), "mask": torch.as_tensor(jets.mask),
                   "p4": torch.as_tensor(jets.p4)}
        if lifetime:
            if jets.lifetime is None:
                raise ValueError("lifetime=True, but these jets were built without their lifetime features: build "
                                 "them with jet_arrays(..., lifetime=True) (pipeline.tau_jets(..., lifetime=True))")
            tensors["lifetime"] = torch.as_tensor(jets.lifetime)
    return TauInputs(tensors, targets)


def forward(model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """The raw outputs of a tau model (token inputs) or a baseline (candidate inputs)."""
    if "tokens" in inputs:
        return model(inputs["tokens"], inputs["token_mask"], inputs.get("token_features"))
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
    the per-epoch history (:func:`epoch_lists`), the best epoch and the training time in seconds."""

    model: torch.nn.Module
    history: dict[str, list]
    best_epoch: int
    finished: bool
    seconds: float


#: The per-epoch entries of a fine-tuning history (:func:`epoch_lists`).
HISTORY_KEYS = ("train_loss", "val_loss", "lr", "backbone_trainable", "seconds")


def epoch_lists(history: dict[str, Any]) -> dict[str, list]:
    """A fine-tuning's history as one list per quantity (what results, scans and widgets keep)."""
    return {key: [record[key] for record in history["epochs"]] for key in HISTORY_KEYS}


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
    and ``model.pt`` (the best weights so far).  ``max_epochs_this_call`` stops after that many epochs (call
    again to continue); ``callback(epoch, record, history)`` is called after every epoch.  A state in
    ``folder`` of other settings or data is a :class:`~tauml.models.CheckpointError`.  Under torchrun every
    process calls it alike and trains its slice of each batch."""
    folder = Path(folder)
    optimizer = make_adamw(optimised_parameters(model), lr=config.lr, weight_decay=config.weight_decay)
    steps_per_epoch = math.ceil(len(train) / config.batch_size)
    scheduler = common.make_cosine_scheduler(optimizer, config.epochs * steps_per_epoch, 0, config.min_lr_fraction)

    def step(index: np.ndarray) -> tuple[torch.Tensor, int]:
        inputs, targets = train.batch(index, device)
        return task_loss(config.task, forward(model, inputs), targets, config), len(index)

    def save(history: dict[str, Any], improved: bool) -> None:
        if improved:
            with atomic_path(folder / MODEL_FILE) as tmp:
                torch.save(model.state_dict(), tmp)

    trainer = engine.Trainer(
        model, optimizer, scheduler, step=step, epochs=config.epochs, folder=folder, state_file=STATE_FILE,
        batches=lambda epoch: common.bucketed_batches(train.lengths, config.batch_size, config.seed, epoch),
        validate=lambda model: {"val_loss": evaluate_outputs(model, val, config, device)[0]},
        run={"config": identity_dict(common.placement_free(config)), "train": train.fingerprint(), "val": val.fingerprint()},
        seed=config.seed, name=f"fine-tuning ({config.task}, {config.strategy})", save=save, progress=progress,
        on_epoch_start=lambda epoch: {"backbone_trainable": set_epoch(model, config, epoch)},
    )
    callbacks = [] if callback is None else [lambda epoch, record, history: callback(epoch, record,
                                                                                  epoch_lists(history))]
    history = trainer.fit(max_epochs_this_call, callbacks)
    finished = len(history["epochs"]) >= config.epochs
    if finished:
        model.load_state_dict(torch.load(folder / MODEL_FILE, map_location=device, weights_only=True))
    best_epoch = -1 if history["best_epoch"] is None else history["best_epoch"]
    return TrainedModel(model=model, history=epoch_lists(history), best_epoch=best_epoch, finished=finished,
                        seconds=history["epochs"][-1]["elapsed_s"] if history["epochs"] else 0.0)
