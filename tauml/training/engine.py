"""The one training loop of tauml: the tokenizer, the pretraining and every fine-tuning run through it.

A training builds its data, model, optimiser and scheduler, defines three functions and hands them to a
:class:`Trainer`:

* ``step(index) -> (loss, count[, parts])``: the mean loss of the jets ``index`` (this rank's slice of one
  batch) over its ``count`` items (real tokens, jets, ...), and optionally a dict of extra numbers to
  average (``parts``).  The engine calls ``loss.backward()`` unless ``step_backward=True`` (a step that does
  its own backward, e.g. :func:`tauml.training.packing.length_grouped_loss_and_backward`, and returns the
  detached loss);
* ``batches(epoch) -> [index arrays]``: the global batches of an epoch, a function of (seed, epoch) only;
* ``validate(model) -> {"val_loss": ..., ...}``: the validation numbers of the epoch.

:meth:`Trainer.fit` then runs the epochs (:meth:`Trainer._train_epoch` for the batches), keeps the best
epoch by ``val_loss``, writes the resume state after every epoch and resumes from it, records one history
(docs/training.md), and under ``torchrun`` trains data-parallel (:mod:`tauml.training.distributed`).
"""

from __future__ import annotations

import contextlib
import math
import random
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tauml.cache import atomic_path
from tauml.models import CheckpointError
from tauml.training import distributed
from tauml.utils import progress as progress_bar

#: The layout of the resume states written by :meth:`Trainer.fit` (checked when one is read).
STATE_FORMAT = 2

#: ``callback(epoch, record, history)`` after every epoch (on every rank), once its state is saved; raise to stop.
EpochCallback = Callable[[int, dict[str, Any], dict[str, Any]], None]


@dataclass
class Trainer:
    """What one training is: model, optimiser, per-batch scheduler, the three functions, and where it lives."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    step: Callable[[np.ndarray], tuple]
    batches: Callable[[int], Sequence[np.ndarray]]
    validate: Callable[[torch.nn.Module], dict[str, Any]]
    epochs: int
    folder: Path
    run: Any  #: plain data naming the run (settings, data fingerprint): a state of another run is refused
    seed: int
    state_file: str = "state.pt"
    name: str = "training"
    info: dict[str, Any] = field(default_factory=dict)  #: fixed entries of the history (sizes, settings)
    grad_clip: float = 0.0  #: clip the gradient norm to this (0: no clipping)
    step_backward: bool = False  #: step() ran backward itself
    unit: str = "jets"  #: what step()'s count counts: the history gets train_<unit> and <unit>_per_s
    on_epoch_start: Callable[[int], dict[str, Any] | None] | None = None  #: before the epoch; adds to its record
    save: Callable[[dict[str, Any], bool], None] | None = None  #: rank 0: write files (history, best if improved)
    describe: Callable[[dict[str, Any]], str] | None = None  #: the line printed after each epoch
    progress: bool = True
    data_parallel: bool = True  #: False: this process trains alone, even under torchrun (the tokenizer)
    #: True: ``batches(epoch)`` yields this rank's part of each batch already (e.g. a DataLoader over token shards,
    #: :mod:`tauml.training.streaming`), handed to ``step`` as they are; ``len()`` of each is its number of jets
    presharded: bool = False

    @property
    def state_path(self) -> Path:
        return Path(self.folder) / self.state_file

    def fit(self, max_epochs_this_call: int | None = None, callbacks: Sequence[EpochCallback] = ()) -> dict[str, Any]:
        """Train from the last finished epoch (or the start) to ``epochs``; return the history."""
        if self.data_parallel:
            distributed.init()
        parallel = self.data_parallel and distributed.world_size() > 1
        writer = not parallel or distributed.is_main()
        history = {"epochs": [], "best_epoch": None, "best_val_loss": None, **self.info}
        state = read_state(self.state_path, self.run, self.name)
        if state is not None:
            history = self._resume(state)
        first = len(history["epochs"])
        stop = self.epochs if max_epochs_this_call is None else min(self.epochs, first + max_epochs_this_call)
        for epoch in range(first, stop):
            started = time.perf_counter()
            record: dict[str, Any] = {"epoch": epoch, **((self.on_epoch_start or _nothing)(epoch) or {})}
            if parallel:  # every rank its own dropout; one process keeps its stream (bit-identical resumes)
                torch.manual_seed(distributed.rank_seed(self.seed, epoch))
            self.model.train()
            record.update(self._train_epoch(epoch, parallel))
            record["lr"] = self.optimizer.param_groups[0]["lr"]
            if parallel:  # rank 0 validates with its buffers, every rank gets the same numbers
                distributed.broadcast_buffers(self.model)
                record.update(distributed.broadcast(self.validate(self.model) if writer else None))
            else:
                record.update(self.validate(self.model))
            record["seconds"] = time.perf_counter() - started
            record["elapsed_s"] = (history["epochs"][-1]["elapsed_s"] if history["epochs"] else 0.0) + record["seconds"]
            best = history["best_val_loss"]
            improved = best is None or record["val_loss"] < best or math.isnan(best)
            if improved:
                history["best_epoch"], history["best_val_loss"] = epoch, record["val_loss"]
            history["epochs"].append(record)
            if writer:
                if self.save is not None:
                    self.save(history, improved)
                self._save_state(history)
                if self.progress and self.describe is not None:
                    print(self.describe(record))
            for callback in callbacks:
                callback(epoch, record, history)
        if parallel:
            distributed.barrier()  # rank 0's files are written before any rank reads them
        return history

    def _train_epoch(self, epoch: int, parallel: bool) -> dict[str, Any]:
        """One pass over the epoch's batches: step, backward, all-reduce, clip, optimiser and scheduler."""
        started, sums, count, jets = time.perf_counter(), {}, 0, 0
        batches = self.batches(epoch)
        bar = progress_bar(batches, desc=f"{self.name} epoch {epoch + 1}/{self.epochs}",
                           **({} if self.progress and distributed.is_main() else {"disable": True}))
        for index in bar:
            index = distributed.shard(index) if parallel and not self.presharded else index
            self.optimizer.zero_grad(set_to_none=True)
            loss, n, *parts = self.step(index) if len(index) else (torch.zeros(()), 0)
            if n and not self.step_backward:
                loss.backward()
            if parallel:
                distributed.all_reduce_gradients(self.model.parameters(), n)
            if self.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
            self.optimizer.step()
            self.scheduler.step()
            if n:  # float64 sums on the device: no wait for the device per step
                for key, value in {"loss": loss, **(parts[0] if parts else {})}.items():
                    sums[key] = sums.get(key, 0) + _float64(value) * n
            count, jets = count + n, jets + len(index)
            if not bar.disable and (bar.n % 10 == 9 or bar.n + 1 == len(batches)):
                bar.set_postfix(loss=f"{float(sums.get('loss', 0)) / max(count, 1):.4f}", refresh=False)
        seconds = time.perf_counter() - started
        totals = [float(v) for v in sums.values()] + [count, jets]
        if parallel:
            totals = distributed.all_reduce_sum(torch.tensor(totals, dtype=torch.float64)).tolist()
        *totals, count, jets = totals
        means = {f"train_{key}": total / max(count, 1) for key, total in zip(sums, totals)}
        return {**means, f"train_{self.unit}": int(count), "train_jets": int(jets), "train_time_s": seconds,
                f"{self.unit}_per_s": count / seconds, "jets_per_s": jets / seconds}

    def _resume(self, state: dict[str, Any]) -> dict[str, Any]:
        try:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
        except (RuntimeError, ValueError, KeyError) as err:
            raise CheckpointError(
                f"{self.folder} holds a {self.name} state that does not fit this model or optimiser "
                f"({str(err).splitlines()[0]}): use another folder or delete {self.state_path}"
            ) from err
        set_rng_state(state["rng"])
        return state["history"]

    def _save_state(self, history: dict[str, Any]) -> None:
        """The resume point after an epoch: tensors and plain data only (read back with ``weights_only=True``)."""
        state = {"format": STATE_FORMAT, "run": self.run, "epoch": len(history["epochs"]),
                 "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                 "scheduler": self.scheduler.state_dict(), "rng": rng_state(), "history": history}
        with atomic_path(self.state_path) as tmp:
            torch.save(state, tmp)


def _nothing(epoch: int) -> None:
    return None


def _float64(value: torch.Tensor | float) -> torch.Tensor:
    value = torch.as_tensor(value).detach()
    return value.double() if value.device.type != "mps" else value.cpu().double()  # MPS has no float64


def read_state(path: Path, run: Any, what: str = "training") -> dict[str, Any] | None:
    """The resume state at ``path`` (None when there is none), checked to belong to ``run``.

    Read with ``weights_only=True``: tensors and plain data only, so a crafted file cannot run code; anything
    else (a foreign or older file, a state of other settings or data) is a :class:`CheckpointError` that
    names the file to delete.
    """
    path = Path(path)
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(err))
        reason = (f"it holds the Python object {found[1]}, not only tensors and plain data" if found
                  else f"{type(err).__name__}: truncated, or not a torch file")
        raise CheckpointError(
            f"cannot read the {what} state {path} ({reason}); nothing in it was "
            f"run. It was written by an older tauml or not by tauml: delete {path} to start afresh"
        ) from err
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise CheckpointError(f"{path} is not a {what} state of this version of tauml: delete it to start afresh")
    if state["run"] != run:
        raise CheckpointError(f"{path.parent} holds a {what} with other settings or data (run {state['run']}): "
                              f"use another folder or delete {path}")
    return state


def finished_history(path: Path, run: Any, epochs: int, what: str = "training") -> dict[str, Any] | None:
    """The history of ``run`` when its state at ``path`` says all ``epochs`` are done, else None."""
    state = read_state(path, run, what)
    return state["history"] if state is not None and state["epoch"] >= epochs else None


def autocast(device: torch.device, bf16: bool) -> contextlib.AbstractContextManager:
    """The context a forward pass runs in: bfloat16 autocast on CUDA when ``bf16``, otherwise float32."""
    if bf16 and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def rng_state() -> dict[str, Any]:
    """The random-number states of torch, numpy and Python, as tensors and plain data (no pickled objects)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()  # noqa: NPY002 - the legacy global state
    version, internal, python_gauss = random.getstate()
    state = {"torch": torch.get_rng_state(),
             "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "gauss": float(gauss)},
             "python": {"version": version, "internal": list(internal), "gauss": python_gauss}}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))  # noqa: NPY002
    p = state["python"]
    random.setstate((p["version"], tuple(p["internal"]), p["gauss"]))
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
