"""Data-parallel training on plain ``torch.distributed``, launched by ``torchrun`` (see docs/training.md).

Outside ``torchrun`` (no ``WORLD_SIZE`` > 1 in the environment) every function here is a no-op for one
process: rank 0 of a world of 1.  Under ``torchrun`` :func:`init` joins the process group (gloo for CPU
tensors, NCCL for CUDA ones; called by the training engine, the command line and the pipeline's cache
steps; the rank functions answer for one process until then), each rank trains on its slice of every global batch (:func:`shard`), and
:func:`all_reduce_gradients` makes every rank's gradient the one of the whole batch before the optimiser
steps, so all ranks keep identical weights.  Only rank 0 writes files (:func:`is_main`).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, nullcontext
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

#: How long a rank waits at a barrier (e.g. while rank 0 alone trains the tokenizer) before giving up.
TIMEOUT = timedelta(minutes=float(os.environ.get("TAUML_DIST_TIMEOUT_MIN", 24 * 60)))


def launched() -> bool:
    """Whether this process was started by ``torchrun`` (or another launcher) as one of several."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init() -> None:
    """Join the process group when launched as one of several processes (idempotent; a no-op otherwise)."""
    if not launched() or dist.is_initialized():
        return
    backend = os.environ.get("TAUML_DIST_BACKEND")
    if backend is None:
        backend = "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend=backend, timeout=TIMEOUT)


def close() -> None:
    """Leave the process group (at the end of a command run under ``torchrun``)."""
    if dist.is_initialized():
        dist.destroy_process_group()


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def is_main() -> bool:
    """Rank 0: the one process that writes files and prints."""
    return rank() == 0


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def local_cuda_device() -> torch.device:
    """This rank's GPU: ``cuda:LOCAL_RANK`` under torchrun, else the current one."""
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", torch.cuda.current_device())))


def shard(index: np.ndarray) -> np.ndarray:
    """This rank's slice of a global batch: every ``world_size``-th example from ``rank`` on."""
    return index[rank()::world_size()]


def all_reduce_gradients(parameters: Iterable[torch.nn.Parameter], count: int) -> None:
    """Replace every rank's gradients by the batch's: ``sum_r count_r * grad_r / sum_r count_r``.

    ``grad_r`` is the gradient of rank r's mean loss over its ``count_r`` items (tokens, jets, ...), so the
    result is the gradient of the mean over the whole global batch, as one process would compute it.  One
    all-reduce carries the weighted gradients, a has-a-gradient flag per parameter and the count: a parameter
    no rank computed a gradient for (frozen, unused) keeps ``grad = None``, as in one process, so AdamW
    skips it there too.
    """
    parameters = [p for p in parameters if p.requires_grad]
    if not parameters:
        return
    device, k = parameters[0].device, len(parameters)
    grads = [(p.grad.reshape(-1) if p.grad is not None else torch.zeros(p.numel(), device=device)) * count
             for p in parameters]
    flags = [float(p.grad is not None) for p in parameters]
    flat = torch.cat([*grads, torch.tensor([*flags, float(count)], dtype=grads[0].dtype, device=device)])
    dist.all_reduce(flat)
    total, has_grad, offset = flat[-1], (flat[-1 - k:-1] > 0).tolist(), 0
    for p, has in zip(parameters, has_grad):
        p.grad = flat[offset:offset + p.numel()].view_as(p) / total if has else None
        offset += p.numel()


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    """Elementwise sum over the ranks (a copy; the input when alone)."""
    if not dist.is_initialized():
        return values
    values = values.clone()
    dist.all_reduce(values)
    return values


def broadcast(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank (picklable plain data; the others pass anything)."""
    if not dist.is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def broadcast_buffers(model: torch.nn.Module) -> None:
    """Rank 0's buffers (e.g. running batch-norm statistics) on every rank, so that all evaluate alike."""
    if dist.is_initialized():
        for buffer in model.buffers():
            dist.broadcast(buffer, src=0)


def rank_seed(seed: int, epoch: int) -> int:
    """The seed of this rank's random numbers (dropout) in ``epoch`` of a data-parallel run."""
    return int(np.random.SeedSequence([seed, epoch, rank()]).generate_state(1)[0])


@contextmanager
def main_first() -> Iterator[None]:
    """Rank 0 runs the block first, the other ranks after it has finished: what rank 0 built into the cache
    (the tokenizer), they find there.  One process: just the block."""
    init()
    if not is_main():
        barrier()
    yield
    if is_main():
        barrier()


@contextmanager
def main_builds(folder: str | os.PathLike[str]) -> Iterator[Path]:
    """``tauml.cache.building(folder)`` for a cache entry that all ranks build together (a pretraining, a
    fine-tuning): rank 0 holds the entry's lock (another job building it waits), the others do not (they would
    wait for rank 0 while it waits for them), and all enter and leave the block together.  Inside it, what is
    decided from files is decided by rank 0 (:func:`broadcast`), and only rank 0 writes.  One process: just
    ``building(folder)``."""
    from tauml.cache import building  # (not at the top: an entry lock that also clears failed builds)

    init()
    with building(folder) if is_main() else nullcontext(Path(folder)) as path:
        barrier()
        yield path
        barrier()
