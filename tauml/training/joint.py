"""Training the joint analysis's models: event tensors and a model in, the best model out (no presets, no caches).

* :func:`train_event_model`: an :class:`~tauml.models.joint.EventModel` with one of the four strategies.  The
  frozen strategy computes every jet's representation once with the jet model in eval mode and trains only phi and
  rho (Adam, as the paper's frozen heads); the others train the whole chain from the constituents (RAdam with the
  paper's betas and eps, a 5-step warm-up, flat to 70 % of the steps, then linear decay to 0).
* :func:`train_jet_tagger`: the pretext tagger (H -> b bbar against QCD jets) on single jets, same optimiser.

Loss: binary cross entropy on logits with ``pos_weight`` = background / signal of the training set (the paper
hard-codes its ratio, 13.76).  The epoch of lowest validation loss is kept (the paper's checkpoint choice).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from tauml.config import JointConfig
from tauml.models.joint import EventModel, JetEncoder
from tauml.training import common
from tauml.utils import progress as progress_bar

#: The paper's warm-up length in optimiser steps and the fraction of steps after which the LR decays linearly.
WARMUP_STEPS = 5
FLAT_FRACTION = 0.7


@dataclass
class EventTensors:
    """The events of one split as CPU tensors.  Jets are flat and contiguous per event (``jet_event`` ascending);
    ``jet_inputs`` are the jet model's inputs (tokens or candidates), ``hlf`` the raw high-level features."""

    jet_inputs: dict[str, torch.Tensor]
    jet_event: np.ndarray
    hlf: torch.Tensor
    labels: torch.Tensor
    jet_labels: torch.Tensor

    def __post_init__(self) -> None:
        if len(self.jet_event) and np.any(np.diff(self.jet_event) < 0):
            raise ValueError("jets must be grouped by event (jet_event ascending)")
        counts = np.bincount(self.jet_event, minlength=len(self.labels))
        self.starts = np.concatenate([[0], np.cumsum(counts)])
        self.max_jets = int(counts.max()) if len(counts) else 0

    def __len__(self) -> int:
        return len(self.labels)

    def jet_rows(self, events: np.ndarray) -> tuple[np.ndarray, torch.Tensor]:
        """The jet rows of ``events`` and their mask ``(B, max_jets)`` (True = a real jet)."""
        counts = self.starts[events + 1] - self.starts[events]
        rows = np.concatenate([np.arange(self.starts[e], self.starts[e + 1]) for e in events])
        mask = torch.as_tensor(np.arange(self.max_jets)[None, :] < counts[:, None])
        return rows, mask

    def batch(self, events: np.ndarray, device: torch.device) -> tuple[dict[str, torch.Tensor], torch.Tensor,
                                                                        torch.Tensor, torch.Tensor]:
        """(jet inputs of the real jets, jet mask, padded HLFs ``(B, J, n_hlf)``, event labels) on ``device``."""
        rows, mask = self.jet_rows(events)
        inputs = jet_inputs_of(self.jet_inputs, rows)
        hlf = torch.zeros((len(events), self.max_jets, self.hlf.shape[1]))
        hlf[mask] = self.hlf[rows]
        return ({k: v.to(device) for k, v in inputs.items()}, mask.to(device), hlf.to(device),
                self.labels[events].to(device))


def jet_inputs_of(jet_inputs: dict[str, torch.Tensor], rows: np.ndarray) -> dict[str, torch.Tensor]:
    """The inputs of the jets ``rows``, trimmed to their longest real sequence."""
    idx = torch.as_tensor(rows)
    out = {k: v[idx] for k, v in jet_inputs.items()}
    mask_name = "token_mask" if "token_mask" in out else "mask"
    width = max(1, int(out[mask_name].sum(1).max())) if len(rows) else 1
    return {k: v[:, :width] for k, v in out.items()}


def encode_jets(encoder: JetEncoder, jet_inputs: dict[str, torch.Tensor], device: torch.device,
                batch_size: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    """(V, S) of every jet with the jet model in eval mode, without gradients (CPU tensors)."""
    n = len(next(iter(jet_inputs.values())))
    was_training = encoder.training
    encoder.eval()
    vs, ss = [], []
    with torch.no_grad():
        for rows in common.batches(n, batch_size):
            v, s = encoder(**{k: t.to(device) for k, t in jet_inputs_of(jet_inputs, rows).items()})
            vs.append(v.float().cpu())
            ss.append(s.float().cpu())
    encoder.train(was_training)
    return torch.cat(vs), torch.cat(ss)


def _pos_weight(labels: torch.Tensor) -> torch.Tensor:
    n_signal = float(labels.sum())
    if n_signal == 0 or n_signal == len(labels):
        raise ValueError(f"the training set has {int(n_signal)} signal of {len(labels)}: both classes are needed")
    return torch.tensor((len(labels) - n_signal) / n_signal)


def _schedule(total_steps: int):
    def factor(step: int) -> float:
        if step < WARMUP_STEPS:
            return (step + 1) / WARMUP_STEPS
        flat_until = FLAT_FRACTION * total_steps
        if step < flat_until:
            return 1.0
        return max(0.0, (total_steps - step) / max(1.0, total_steps - flat_until))
    return factor


class Lookahead:
    """Lookahead (Zhang, Lucas, Hinton, Ba 2019, arXiv:1907.08610) around an optimiser's steps: every ``k`` steps
    the slow weights move a fraction ``alpha`` towards the fast ones, and the fast weights restart from them.

    The paper's optimiser is ``Lookahead(RAdam, k=6, alpha=0.5)`` from ``torch_optimizer``; torch has no Lookahead,
    so this is the algorithm itself (its eq. 1-2): call :meth:`step` after every ``optimizer.step()``.  The inner
    optimiser and its learning-rate schedule are untouched, so a scheduler works as without Lookahead.
    """

    def __init__(self, parameters: Any, k: int = 6, alpha: float = 0.5) -> None:
        if k < 1 or not 0.0 < alpha <= 1.0:
            raise ValueError(f"Lookahead needs k >= 1 and 0 < alpha <= 1, got k={k}, alpha={alpha}")
        self.parameters = [p for p in parameters if p.requires_grad]
        self.slow = [p.detach().clone() for p in self.parameters]
        self.k, self.alpha, self.steps = k, alpha, 0

    @torch.no_grad()
    def step(self) -> None:
        self.steps += 1
        if self.steps % self.k:
            return
        for fast, slow in zip(self.parameters, self.slow, strict=True):
            slow.add_(fast - slow, alpha=self.alpha)
            fast.copy_(slow)


def _e2e_optimizer(parameters: Any, lr: float, total_steps: int):
    optimizer = torch.optim.RAdam(parameters, lr=lr, betas=(0.95, 0.999), eps=1e-5)
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, _schedule(total_steps))


@dataclass
class TrainedEventModel:
    model: EventModel
    history: dict[str, list[float]]
    best_epoch: int
    seconds: float


def train_event_model(model: EventModel, strategy: str, train: EventTensors, val: EventTensors, config: JointConfig,
                      device: torch.device, progress: bool = True) -> TrainedEventModel:
    """Train ``model`` with ``strategy`` (the jet model must already hold its starting weights) and return it with
    the weights of its best epoch."""
    import time

    start = time.perf_counter()
    common.seed_everything(config.seed)
    frozen = strategy == "frozen"
    model.encoder.set_trainable(not frozen)
    model.to(device)
    pos_weight = _pos_weight(train.labels).to(device)
    epochs = config.epochs_frozen if frozen else config.epochs_e2e
    if frozen:  # the jet model's outputs never change: compute them once
        cached = {}
        for name, data in (("train", train), ("val", val)):
            v, s = encode_jets(model.encoder, data.jet_inputs, device)
            with torch.no_grad():
                cached[name] = model.jet_features(v.to(device), s.to(device), data.hlf.to(device)).cpu()
        optimizer = torch.optim.Adam([p for n, p in model.named_parameters() if not n.startswith("encoder.")],
                                     lr=config.lr_frozen)
        scheduler = None
    else:
        steps = epochs * math.ceil(len(train) / config.batch_size)
        optimizer, scheduler = _e2e_optimizer(model.parameters(), config.lr_e2e, steps)
    lookahead = Lookahead(model.parameters(), config.lookahead_k, 0.5) if config.lookahead_k and not frozen else None

    def loss_of(data: EventTensors, events: np.ndarray, name: str) -> tuple[torch.Tensor, int]:
        if frozen:
            rows, mask = data.jet_rows(events)
            per_jet = torch.zeros((len(events), data.max_jets, cached[name].shape[1]))
            per_jet[mask] = cached[name][rows]
            logits = model.head(per_jet.to(device), mask.to(device))
            labels = data.labels[events].to(device)
        else:
            inputs, mask, hlf, labels = data.batch(events, device)
            logits = model(inputs, mask, hlf)
        return F.binary_cross_entropy_with_logits(logits, labels, pos_weight=pos_weight), len(events)

    def val_loss() -> float:
        model.eval()
        with torch.no_grad():
            return sum(float(loss) * n for loss, n in (loss_of(val, ev, "val") for ev in
                                                       common.batches(len(val), 1024))) / len(val)

    # the starting point competes too (best_epoch -1): a warm-started model is never returned worse than it began
    history: dict[str, list[float]] = {"train_loss": [], "val_loss": [], "start_val_loss": [val_loss()]}
    best = (history["start_val_loss"][0], -1, copy.deepcopy(model.state_dict()))
    bar = progress_bar(total=epochs, desc=f"{strategy} {model.representation}", unit="epoch",
                       disable=not progress or None, leave=False)
    for epoch in range(epochs):
        model.train()
        total, count = 0.0, 0
        for events in common.batches(len(train), config.batch_size, common.epoch_permutation(len(train), config.seed,
                                                                                             epoch)):
            loss, n = loss_of(train, events, "train")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            if lookahead is not None:
                lookahead.step()
            total, count = total + float(loss.detach()) * n, count + n
        history["train_loss"].append(total / count)
        history["val_loss"].append(val_loss())
        if history["val_loss"][-1] < best[0]:
            best = (history["val_loss"][-1], epoch, copy.deepcopy(model.state_dict()))
        bar.update()
    bar.close()
    model.load_state_dict(best[2])
    model.eval()
    return TrainedEventModel(model=model, history=history, best_epoch=best[1], seconds=time.perf_counter() - start)


def predict_events(model: EventModel, data: EventTensors, device: torch.device, batch_size: int = 512) -> np.ndarray:
    """The signal probability (sigmoid of the logit) of every event."""
    model.eval()
    out = []
    with torch.no_grad():
        for events in common.batches(len(data), batch_size):
            inputs, mask, hlf, _ = data.batch(events, device)
            out.append(torch.sigmoid(model(inputs, mask, hlf)).float().cpu())
    return torch.cat(out).numpy()


def train_jet_tagger(encoder: JetEncoder, train_inputs: dict[str, torch.Tensor], train_labels: torch.Tensor,
                     val_inputs: dict[str, torch.Tensor], val_labels: torch.Tensor, epochs: int, lr: float,
                     batch_size: int, seed: int, device: torch.device, progress: bool = True) -> dict[str, list[float]]:
    """Train the pretext tagger: S (the encoder's log-odds) against the jet labels; keeps the best epoch."""
    common.seed_everything(seed)
    encoder.set_trainable(True)
    encoder.to(device)
    n = len(train_labels)
    optimizer, scheduler = _e2e_optimizer(encoder.parameters(), lr, epochs * math.ceil(n / batch_size))
    pos_weight = _pos_weight(train_labels.float()).to(device)
    history: dict[str, list[float]] = {"train_loss": [], "val_loss": []}
    best = (math.inf, copy.deepcopy(encoder.state_dict()))
    bar = progress_bar(total=epochs, desc="pretext tagger", unit="epoch", disable=not progress or None, leave=False)
    for epoch in range(epochs):
        encoder.train()
        total = 0.0
        for rows in common.batches(n, batch_size, common.epoch_permutation(n, seed, epoch)):
            _, s = encoder(**{k: v.to(device) for k, v in jet_inputs_of(train_inputs, rows).items()})
            loss = F.binary_cross_entropy_with_logits(s, train_labels[rows].float().to(device), pos_weight=pos_weight)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(encoder.parameters(), 5.0)
            optimizer.step()
            scheduler.step()
            total += float(loss.detach()) * len(rows)
        _, s_val = encode_jets(encoder, val_inputs, device)
        val_loss = float(F.binary_cross_entropy_with_logits(s_val, val_labels.float(), pos_weight=pos_weight.cpu()))
        history["train_loss"].append(total / n)
        history["val_loss"].append(val_loss)
        if val_loss < best[0]:
            best = (val_loss, copy.deepcopy(encoder.state_dict()))
        bar.update()
    bar.close()
    encoder.load_state_dict(best[1])
    encoder.eval()
    return history


__all__ = ["EventTensors", "TrainedEventModel", "encode_jets", "jet_inputs_of", "predict_events", "train_event_model",
           "train_jet_tagger"]
