"""Next-token training steps that do not compute padding: the batch is split into groups of similar length.

A pretraining batch of jets is padded to its longest jet, so a batch of JetClass-like multiplicities (mean
about 54 of up to 128 constituents) spends about half of the GPT's work on padding.
:func:`length_grouped_loss_and_backward` sorts the jets by length, splits them into a few groups of
near-equal length, trims each group to its own longest jet and runs forward and backward group by group,
each group's mean loss scaled by its share of the batch's real targets.  The gradients accumulated in the
parameters' ``.grad`` are then those of :func:`tauml.models.gpt.next_token_loss` on the whole batch (the
mean over all real targets) up to float rounding, and so is the returned loss; the optimiser step that
follows is unchanged.  Peak memory also drops: only one group's activations are alive at a time.

Why the result is the same: a jet's loss depends on that jet only (attention never crosses rows), and the
loss is a mean over real targets, so ``mean = sum_g (n_g / n) * mean_g`` with ``n_g`` the real targets of
group ``g``; the gradient is linear in the same way.  Trimming a group to its longest jet removes only
padding positions, which a real position never attends to (causal mask, real tokens first).

How the groups are chosen (:func:`length_groups`): with the jets sorted by input length ``l_1 <= ... <= l_B``
(input positions = real tokens - 1), a group is a run of consecutive jets and costs

    n_jets * (L + L**2 / quadratic_scale) + group_overhead          (in units of one position's linear layers)

with ``L`` the longest input in the group: the linear layers (qkv, projection, MLP) cost the same per position,
attention grows with the length (``quadratic_scale`` is the length at which one position's attention would
cost as much as its linear layers) and every group pays a fixed price (more, smaller kernels; more gradient
accumulation).  The head and the loss are computed on real targets only (``next_token_loss``) and do not
depend on the grouping.  A small dynamic programme over the sorted lengths finds the split of least total
cost with at most ``max_groups`` groups (``max_groups`` vectorised steps over a ``(B + 1)^2`` cost table,
about a millisecond for a batch of 256).

The defaults were measured on this project's 2-CPU machine with the paper's GPT (width 256, 8 heads,
3 blocks, vocabulary 8195), torch 2.13: a position's forward+backward takes ~0.15 ms of one thread and
attention adds only ~L/1000 of that (hence ``quadratic_scale`` 1024); a group costs almost nothing extra,
and smaller groups even help the head, whose ``(targets x vocabulary)`` logits then stay in cache: 64 jets of
60 tokens ran 14% faster in 8 groups than in one.  So up to 8 groups, with a small overhead of 16 positions
to keep near-equal lengths together.  On a GPU, where each kernel launch costs more, a larger
``group_overhead`` (fewer groups) fits better.

Caveat, oversubscribed CPUs: each group issues its own ~150 kernels, most of them multi-threaded.  When other
processes compete for the same cores, every multi-threaded kernel can wait a scheduler time slice for its
second thread, whatever its size: on the shared 2-CPU machine, with busy neighbours and 2 torch threads,
a group cost ~1.5 s (batch 64: plain 3.2 s, 2 groups 3.8 s, 4 groups 6.2 s, 8 groups 11.8 s), while with
1 torch thread nothing waits and 8 groups took 1.1 s against the plain step's 2.0 s.  On such a machine
use 1 thread (or ``max_groups`` 2); on dedicated cores the defaults hold (2 threads, quiet moment: plain
1.03 s, 8 groups 0.60 s).

On attention masks: within a group trimmed to its longest jet, the shorter jets are still padded, so the
model's boolean mask (causal and padding) stays.  For real positions it equals the plain causal mask
(a real query at position t sees keys 0..t, all real because real tokens come first, and padded positions
never feed a real one), so ``scaled_dot_product_attention(..., is_causal=True)`` without a mask would give
the same loss and gradients.  It would not be faster on CPU: with the boolean mask torch 2.13 already runs
its flash-attention kernel, and ``is_causal=True`` timed the same within a few percent on these shapes
(``benchmarks/bench_pretrain_reference.py`` prints both); attention is ~5% of a grouped step.

Use it in a training loop in place of ``loss, count = next_token_loss(...); loss.backward()``::

    optimizer.zero_grad(set_to_none=True)
    loss, count = length_grouped_loss_and_backward(model, tokens, mask)
    torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext

import numpy as np
import torch

from tauml.models.gpt import GPT, next_token_loss

#: Length (input positions) at which one position's attention would cost as much as its linear layers,
#: measured on CPU with the paper's GPT (width 256, 8 heads, 3 blocks); see the module docstring.
DEFAULT_QUADRATIC_SCALE = 1024.0
#: Fixed cost of one more group, in positions (one position's linear layers), as above.
DEFAULT_GROUP_OVERHEAD = 16.0
#: At most this many groups per batch by default.
DEFAULT_MAX_GROUPS = 8


def length_groups(
    lengths: np.ndarray | torch.Tensor,
    max_groups: int = DEFAULT_MAX_GROUPS,
    quadratic_scale: float = DEFAULT_QUADRATIC_SCALE,
    group_overhead: float = DEFAULT_GROUP_OVERHEAD,
) -> list[np.ndarray]:
    """Split rows into at most ``max_groups`` groups of similar length with the least total cost.

    ``lengths`` holds each row's number of input positions (real tokens - 1).  Returns the groups as index
    arrays into ``lengths``, from the shortest rows to the longest, each sorted by length (stable).  The cost
    model and the dynamic programme are described in the module docstring; ``max_groups=1`` gives one group
    of all rows in their original order.
    """
    lengths = np.asarray(lengths.cpu() if isinstance(lengths, torch.Tensor) else lengths, dtype=np.int64)
    if lengths.ndim != 1 or len(lengths) == 0:
        raise ValueError(f"lengths must be a non-empty 1-d array, got shape {lengths.shape}")
    if max_groups < 1:
        raise ValueError(f"max_groups={max_groups} must be at least 1")
    if quadratic_scale <= 0 or group_overhead < 0:
        raise ValueError("quadratic_scale must be positive and group_overhead non-negative")
    if max_groups == 1:
        return [np.arange(len(lengths))]
    order = np.argsort(lengths, kind="stable")
    sorted_lengths = lengths[order].astype(np.float64)
    n = len(sorted_lengths)
    per_row = sorted_lengths + sorted_lengths**2 / quadratic_scale  # cost of one row padded to l_j
    # cost[i, j]: rows i..j-1 (sorted) as one group = (j - i) * per_row[j - 1] + overhead; inf unless i < j
    i, j = np.arange(n + 1)[:, None], np.arange(n + 1)[None, :]
    cost = np.where(i < j, (j - i) * per_row[np.maximum(j - 1, 0)] + group_overhead, np.inf)
    # best[j]: least cost of the first j sorted rows in g groups (g = 1, 2, ...); choices[g][j]: its last start
    best = np.full(n + 1, np.inf)
    best[0] = 0.0
    choices, totals = [], []
    for _ in range(min(max_groups, n)):
        candidates = best[:, None] + cost
        choices.append(np.argmin(candidates, axis=0))
        best = candidates[choices[-1], np.arange(n + 1)]
        totals.append(best[n])
    n_groups = 1 + int(np.argmin(totals))  # the first (fewest groups) among equal costs
    bounds = [n]
    for g in range(n_groups - 1, -1, -1):
        bounds.append(int(choices[g][bounds[-1]]))
    bounds = bounds[::-1]
    return [order[a:b] for a, b in itertools.pairwise(bounds) if b > a]


def length_grouped_loss_and_backward(
    model: GPT,
    tokens: torch.Tensor,
    mask: torch.Tensor,
    max_groups: int = DEFAULT_MAX_GROUPS,
    quadratic_scale: float = DEFAULT_QUADRATIC_SCALE,
    group_overhead: float = DEFAULT_GROUP_OVERHEAD,
    autocast: Callable[[], AbstractContextManager] | None = None,
) -> tuple[torch.Tensor, int]:
    """Next-token loss of a batch and its backward pass, computed in groups of similar length.

    ``tokens`` int ``(B, T)`` and ``mask`` bool ``(B, T)`` as for :func:`~tauml.models.gpt.next_token_loss`
    (real tokens first in every row; the batch need not be trimmed).  The gradients of the batch's mean loss
    over real targets are *accumulated* into the parameters' ``.grad`` (as ``loss.backward()`` does: zero
    them before); they equal those of ``next_token_loss(model, tokens, mask)[0].backward()`` up to float
    rounding.  With one group (``max_groups=1``, or when the cost model prefers it) this is exactly that
    plain path on the batch trimmed to its longest row, rows in their original order.

    ``autocast`` is an optional zero-argument factory of the context the forward passes run in, e.g.
    ``lambda: torch.autocast("cuda", dtype=torch.bfloat16)``; backward runs outside it.

    Returns ``(loss, n_targets)``: the batch's mean loss (detached, float32) and its number of real targets.
    """
    if mask.dtype != torch.bool:
        raise TypeError(f"mask must be boolean (True = real token), got {mask.dtype}")
    if tokens.shape != mask.shape or tokens.ndim != 2:
        raise ValueError(f"tokens {tuple(tokens.shape)} and mask {tuple(mask.shape)} must be the same (B, T)")
    if bool((mask[:, 1:] & ~mask[:, :-1]).any()):
        raise ValueError("mask has a real token after a padded one; real tokens must come first in a row")
    context = autocast if autocast is not None else nullcontext
    n_real = mask.sum(dim=1)
    inputs = (n_real - 1).clamp(min=0).cpu().numpy()  # input positions per row (all but the last real token)
    groups = length_groups(inputs, max_groups, quadratic_scale, group_overhead)
    if len(groups) == 1:
        length = int(n_real.max())
        with context():
            loss, count = next_token_loss(model, tokens[:, :length], mask[:, :length])
        loss.backward()
        return loss.detach().float(), count

    n_targets = int(inputs.sum())
    if n_targets == 0:
        raise ValueError("no real target token in this batch: every row needs at least [START, STOP]")
    total = torch.zeros((), dtype=torch.float32, device=tokens.device)
    for group in groups:
        if int(inputs[group].sum()) == 0:  # rows without a target (fewer than 2 real tokens) add nothing
            continue
        index = torch.as_tensor(group, device=tokens.device)
        length = 1 + int(inputs[group].max())
        with context():
            loss, count = next_token_loss(model, tokens[index, :length], mask[index, :length])
        (loss * (count / n_targets)).backward()
        total += loss.detach().float() * (count / n_targets)
    return total, n_targets
