"""Pretraining step time of tauml's GPT against the reference OmniJet-alpha backbone, side by side in one run.

At the paper's configuration (vocabulary 8195, width 256, 8 heads, 3 blocks, tauml's FFN 1024 from
``get_preset("paper").gpt``) on random token batches with JetClass-like multiplicities (log-normal, median 50,
sigma 0.4, clipped to 1..128 constituents: mean about 54 of 128 slots), batch 64, 2 torch threads, AdamW
(lr 1e-3, weight decay 1e-2) and gradient clipping at 5 for all three, forward + backward + optimiser step:

* ``reference``: OmniJet-alpha's ``BackboneModel`` (``gabbro/models/gpt_model.py``) imported from a checkout,
  with the generative head of ``gabbro/models/backbone.py`` (``NextTokenPredictionHead``, one Linear(256, vocab)
  with bias; built as that Linear when ``backbone.py`` cannot be imported, it needs ``lightning``) and the loss
  of its ``BackboneNextTokenPredictionLightning.model_step``: cross entropy over all B x 128 positions, as its
  data loader pads every input to ``pad_length`` 128.  Its settings (``example_experiment_generative.yaml``):
  ``embedding_dim`` 256, ``n_heads`` 8, ``n_GPT_blocks`` 3, ``max_sequence_len`` 128, ``attention_dropout`` 0.0,
  ``return_embeddings`` True; the block's own defaults otherwise (post-LN, FFN ``mlp_factor`` 4 = 1024 with
  ReLU, no MLP dropout, q/k/v without bias, explicit masked softmax attention).  Vocabulary 8195 as tauml
  (the reference's own is 8194: one token fewer, the speed does not depend on it).
* ``tauml plain``: :class:`tauml.models.gpt.GPT`, the batch trimmed to its longest jet, one
  ``next_token_loss(...).backward()`` (the step of ``tauml.training.pretrain``).
* ``tauml grouped``: the same model and batch through
  :func:`tauml.training.packing.length_grouped_loss_and_backward` (groups of similar length, no padding beyond
  each group's longest jet).  It starts from the plain model's weights, and the loss of every step is compared
  with the plain one's (they follow the same trajectory up to float rounding).

The three steps are interleaved (rotating order) so that other processes on the machine slow all of them
alike; the medians over the timed steps are reported (wall clock, and the process's CPU time, which other
processes disturb less with one thread), with their ratios.  Then each step's matrix-multiply work, the rate
it reached and this machine's float32 matmul peak (the floor a step cannot go below without less work), and
SDPA's forward+backward with the model's boolean mask and with ``is_causal=True`` on the grouped shapes.
No assertions: it reports.  On a 2-core machine shared with other jobs, ``--threads 1`` gives steadier numbers:
with 2 threads and busy neighbours every multi-threaded kernel may wait a time slice, which hits the grouped
step (more, smaller kernels) hardest (see ``tauml/training/packing.py``).

    git --git-dir=<omnijet_alpha mirror> archive HEAD | tar -x -C /tmp/omnijet_alpha
    .venv/bin/python benchmarks/bench_pretrain_reference.py --reference /tmp/omnijet_alpha [--steps 10]

The reference needs ``vector`` and ``awkward`` (imported by ``gpt_model.py``), both installed with tauml's
dependencies; nothing else of it is imported unless ``lightning`` happens to be installed.  Without
``--reference`` (or when its import fails) the tauml half still runs.
"""

from __future__ import annotations

import argparse
import copy
import importlib
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tauml.config import get_preset
from tauml.models.gpt import (
    CODE_OFFSET,
    GPT,
    PAD_ID,
    START_ID,
    STOP_ID,
    causal_attention_mask,
    next_token_loss,
)
from tauml.training.packing import DEFAULT_MAX_GROUPS, length_grouped_loss_and_backward, length_groups

CODEBOOK = 8192
SLOTS = 128  # constituents per jet, as the reference's pad_length


def jetclass_like_batches(n_batches: int, batch_size: int, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Token batches ``[START, codes..., STOP, PAD...]`` of width ``SLOTS + 2`` with JetClass-like multiplicities
    (log-normal, median 50, sigma 0.4, clipped to 1..128 constituents: mean about 54)."""
    rng = np.random.default_rng(seed)
    batches = []
    for _ in range(n_batches):
        counts = np.clip(np.round(rng.lognormal(np.log(50.0), 0.4, batch_size)), 1, SLOTS).astype(int)
        tokens = np.full((batch_size, SLOTS + 2), PAD_ID, dtype=np.int64)
        tokens[:, 0] = START_ID
        real = np.arange(SLOTS)[None, :] < counts[:, None]
        tokens[:, 1:-1] = np.where(real, rng.integers(0, CODEBOOK, (batch_size, SLOTS)) + CODE_OFFSET, PAD_ID)
        tokens[np.arange(batch_size), counts + 1] = STOP_ID
        tokens_t = torch.from_numpy(tokens)
        batches.append((tokens_t, tokens_t != PAD_ID))
    return batches


def matmul_gflop(width: int, ffn: int, layers: int, vocab: int, groups: list[tuple[int, int]], targets: int) -> float:
    """Matrix-multiply GFLOP of one forward+backward: ``groups`` of (jets, input length) through the blocks
    (6 FLOPs per weight and position: 2 forward, 4 backward; attention 12 * L^2 * width per jet and block) and
    the head on ``targets`` positions.  Memory-bound work (softmax, LayerNorm, optimiser) is not counted."""
    blocks = sum(6 * layers * (4 * width**2 + 2 * width * ffn) * n * length
                 + 12 * layers * n * length**2 * width for n, length in groups)
    return (blocks + 6 * width * vocab * targets) / 1e9


def matmul_peak(size: int = 2048, repeats: int = 5) -> float:
    """GFLOP/s of a large float32 matmul on this machine with the current threads (the practical ceiling)."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    started = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * size**3 * repeats / (time.perf_counter() - started) / 1e9


def import_reference(path: str | None) -> tuple[type | None, type | None, str]:
    """``(BackboneModel, NextTokenPredictionHead or None, message)`` from an omnijet_alpha checkout at ``path``."""
    if path is None:
        return None, None, "no --reference given: timing tauml only (see the docstring for the command line)"
    if not (Path(path) / "gabbro" / "models" / "gpt_model.py").is_file():
        return None, None, f"no gabbro/models/gpt_model.py under --reference {path}: timing tauml only"
    sys.path.insert(0, str(Path(path).resolve()))
    try:
        backbone = importlib.import_module("gabbro.models.gpt_model").BackboneModel
    except ImportError as err:
        return None, None, f"the reference's gpt_model.py does not import ({err}): timing tauml only"
    try:
        head = importlib.import_module("gabbro.models.backbone").NextTokenPredictionHead
        where = "head: gabbro.models.backbone.NextTokenPredictionHead"
    except ImportError as err:  # backbone.py needs lightning; its head is one Linear(embedding_dim, vocab_size)
        head = None
        where = f"head: Linear(256, vocab) with bias as NextTokenPredictionHead (backbone.py not importable: {err})"
    return backbone, head, f"reference: {Path(path) / 'gabbro/models/gpt_model.py'} BackboneModel; {where}"


def reference_step(backbone_class: type, head_class: type | None, vocab_size: int) -> Callable:
    """One training step of the reference: inputs and targets padded to 128, loss over all positions."""
    backbone = backbone_class(embedding_dim=256, attention_dropout=0.0, vocab_size=vocab_size,
                              max_sequence_len=SLOTS, n_heads=8, n_GPT_blocks=3, verbosity=False,
                              return_embeddings=True)
    head = head_class(256, vocab_size) if head_class is not None else nn.Linear(256, vocab_size)
    model = nn.ModuleDict({"module": backbone, "head": head}).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-2)
    criterion = nn.CrossEntropyLoss()

    def step(tokens: torch.Tensor, mask: torch.Tensor) -> float:
        inputs, targets, input_mask = tokens[:, :SLOTS], tokens[:, 1 : SLOTS + 1], mask[:, :SLOTS]
        logits = model["head"](model["module"](inputs, input_mask))
        loss = criterion(logits.reshape(-1, vocab_size), targets.reshape(-1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        optimizer.step()
        return float(loss.detach())

    return step


def tauml_steps(model: GPT, max_groups: int) -> tuple[Callable, Callable]:
    """The plain and the grouped training step, each on its own copy of ``model``."""
    plain_model, grouped_model = model, copy.deepcopy(model)
    plain_opt = torch.optim.AdamW(plain_model.parameters(), lr=1e-3, weight_decay=1e-2)
    grouped_opt = torch.optim.AdamW(grouped_model.parameters(), lr=1e-3, weight_decay=1e-2)

    def plain(tokens: torch.Tensor, mask: torch.Tensor) -> float:
        length = int(mask.sum(1).max())
        loss, _ = next_token_loss(plain_model, tokens[:, :length], mask[:, :length])
        plain_opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(plain_model.parameters(), 5.0)
        plain_opt.step()
        return float(loss.detach())

    def grouped(tokens: torch.Tensor, mask: torch.Tensor) -> float:
        grouped_opt.zero_grad(set_to_none=True)
        loss, _ = length_grouped_loss_and_backward(grouped_model, tokens, mask, max_groups=max_groups)
        torch.nn.utils.clip_grad_norm_(grouped_model.parameters(), 5.0)
        grouped_opt.step()
        return float(loss)

    return plain, grouped


def attention_times(shapes: list[tuple[int, int]], n_head: int, head_dim: int, repeats: int = 7) -> None:
    """SDPA forward+backward with the model's boolean mask (all real) vs ``is_causal=True``, per shape: the
    fastest of ``repeats`` (the least disturbed by other processes)."""
    for batch, length in shapes:
        q, k, v = (torch.randn(batch, n_head, length, head_dim, requires_grad=True) for _ in range(3))
        mask = causal_attention_mask(torch.ones(batch, length, dtype=torch.bool))
        timings = {}
        for name, kwargs in (("boolean mask", {"attn_mask": mask}), ("is_causal", {"is_causal": True})):
            seconds = []
            for _ in range(repeats + 1):
                started = time.perf_counter()
                F.scaled_dot_product_attention(q, k, v, **kwargs).sum().backward()
                seconds.append(time.perf_counter() - started)
            timings[name] = min(seconds[1:])
        print(f"  ({batch:3d} jets, {length:3d} positions): boolean mask {timings['boolean mask'] * 1e3:6.1f} ms, "
              f"is_causal {timings['is_causal'] * 1e3:6.1f} ms per block")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", default=None, help="path of an omnijet_alpha checkout (holds gabbro/)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps (median)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-groups", type=int, default=DEFAULT_MAX_GROUPS, help="at most this many length groups")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    vocab_size = CODEBOOK + CODE_OFFSET
    gpt_config = replace(get_preset("paper").gpt, vocab_size=vocab_size)

    backbone_class, head_class, message = import_reference(args.reference)
    print(message)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs (other processes slow every number below)")
    print(f"tauml GPT: {gpt_config}")
    batches = jetclass_like_batches(args.warmup + args.steps, args.batch, args.seed)
    counts = torch.cat([mask.sum(1) - 2 for _, mask in batches]).float()
    longest = [int(mask.sum(1).max()) for _, mask in batches]
    print(f"{len(batches)} batches of {args.batch}: constituents per jet mean {counts.mean():.1f} of {SLOTS} "
          f"slots (max {int(counts.max())}); trimmed batch length (tokens) median {int(np.median(longest))}")
    groups = [length_groups(mask.sum(1) - 1, args.max_groups) for _, mask in batches]
    sizes = [[(len(g), int((mask.sum(1) - 1)[torch.as_tensor(g)].max())) for g in gs]
             for gs, (_, mask) in zip(groups, batches)]
    print(f"groups of the first batch (jets, longest input): {sizes[0]}")
    positions = [sum(n * length for n, length in s) for s in sizes]
    real = [int((mask.sum(1) - 1).sum()) for _, mask in batches]
    print(f"input positions computed per batch (mean): reference {args.batch * SLOTS}, "
          f"plain {np.mean([args.batch * (n - 1) for n in longest]):.0f}, grouped {np.mean(positions):.0f}, "
          f"real {np.mean(real):.0f}")

    steps: dict[str, Callable] = {}
    if backbone_class is not None:
        steps["reference"] = reference_step(backbone_class, head_class, vocab_size)
    torch.manual_seed(args.seed)
    steps["tauml plain"], steps["tauml grouped"] = tauml_steps(GPT(gpt_config).train(), args.max_groups)

    names = list(steps)
    wall: dict[str, list[float]] = {name: [] for name in names}
    cpu: dict[str, list[float]] = {name: [] for name in names}
    losses: dict[str, list[float]] = {name: [] for name in names}
    for index, (tokens, mask) in enumerate(batches):
        shift = index % len(names)
        for name in names[shift:] + names[:shift]:
            started, started_cpu = time.perf_counter(), time.process_time()
            losses[name].append(steps[name](tokens, mask))
            wall[name].append(time.perf_counter() - started)
            cpu[name].append(time.process_time() - started_cpu)
        print(f"step {index + 1}/{len(batches)}{' (warm-up)' if index < args.warmup else ''}: " + ", ".join(
            f"{name} {wall[name][-1]:.2f} s" for name in names), flush=True)

    median = {name: statistics.median(wall[name][args.warmup:]) for name in names}
    median_cpu = {name: statistics.median(cpu[name][args.warmup:]) for name in names}
    print(f"\nseconds per step, median of {args.steps} after {args.warmup} warm-up (batch {args.batch}, "
          f"{args.threads} threads); wall clock, then the process's CPU time / {args.threads} threads:")
    for name in names:
        timed = wall[name][args.warmup:]
        line = (f"  {name:14s} {median[name]:6.3f} s (min {min(timed):.3f}, max {max(timed):.3f}), "
                f"CPU {median_cpu[name] / args.threads:6.3f} s")
        if "reference" in median:
            line += (f"  reference / this: {median['reference'] / median[name]:.2f}x wall, "
                     f"{median_cpu['reference'] / median_cpu[name]:.2f}x CPU")
        print(line)
    print(f"  grouped vs plain: {median['tauml plain'] / median['tauml grouped']:.2f}x wall, "
          f"{median_cpu['tauml plain'] / median_cpu['tauml grouped']:.2f}x CPU")
    width, ffn, layers = gpt_config.n_embd, gpt_config.ffn_dim, gpt_config.n_layer
    timed = range(args.warmup, len(batches))
    gflop = {
        "reference": np.mean([matmul_gflop(width, 4 * width, layers, vocab_size, [(args.batch, SLOTS)],
                                           args.batch * SLOTS) for _ in timed]),
        "tauml plain": np.mean([matmul_gflop(width, ffn, layers, vocab_size, [(args.batch, longest[i] - 1)], real[i])
                                for i in timed]),
        "tauml grouped": np.mean([matmul_gflop(width, ffn, layers, vocab_size, sizes[i], real[i]) for i in timed]),
    }
    peak = matmul_peak()
    print(f"matmul work per step (forward+backward, mean) and the rate reached at the median; "
          f"this machine's float32 matmul peak now: {peak:.0f} GFLOP/s")
    for name in names:
        print(f"  {name:14s} {gflop[name]:6.1f} GFLOP -> {gflop[name] / median[name]:5.1f} GFLOP/s "
              f"({gflop[name] / median[name] / peak:.0%} of peak); at the peak it would take "
              f"{gflop[name] / peak:.2f} s")
    difference = max(abs(a - b) / abs(b) for a, b in zip(losses["tauml grouped"], losses["tauml plain"]))
    print(f"tauml grouped vs plain loss, largest relative difference over {len(batches)} steps: {difference:.1e}")

    shapes = [(args.batch, longest[0] - 1)] + sizes[0]
    print(f"\nattention (SDPA) forward+backward, fastest of 7, {gpt_config.n_head} heads of "
          f"{gpt_config.n_embd // gpt_config.n_head}, the first batch's shapes (plain, then its groups):")
    attention_times(shapes, gpt_config.n_head, gpt_config.n_embd // gpt_config.n_head)


if __name__ == "__main__":
    main()
