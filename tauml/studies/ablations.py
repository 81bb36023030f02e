"""The scans of notebook 04: unfreeze epoch, GPT blocks and training-set size, beside the paper's claims.

    records = run_ablations("demo")                  # {kind: {task: [record, ...]}}, from the scan store
    ablation_claims_rows(records, epochs=20)         # the paper's ablation claims beside this run

Every point is cached in the preset's scan store (:mod:`tauml.pipeline.scan`): a second call costs nothing.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from tauml.config import STRATEGIES, TASKS, Preset, get_preset
from tauml.evaluation.metrics import misid_statistical_error
from tauml.evaluation.tasks import HEADLINE, METRIC_HIGHER_IS_BETTER
from tauml.evaluation.verdicts import BETTER, WORSE, Summary, compare, verdict_of
from tauml.evaluation.verdicts import summarize as verdict_summary
from tauml.pipeline.scan import ScanStore, build_scan, run_scan, summarize

SCAN_KINDS: tuple[str, ...] = ("unfreeze", "blocks", "train_size")
#: The setting each scan varies.
SCAN_AXIS: dict[str, str] = {"unfreeze": "unfreeze_epoch", "blocks": "n_gpt_blocks", "train_size": "train_size"}

Records = dict[str, dict[str, list[dict[str, Any]]]]

#: The tasks notebook 04 scans (its configuration cell's default; ``tauml prepare`` runs the same scans in advance).
#: The points themselves are the preset's ScanConfig.
NOTEBOOK_TASKS: tuple[str, ...] = TASKS


def run_ablations(preset: str | Preset, tasks: Sequence[str] = TASKS, kinds: Sequence[str] = SCAN_KINDS,
                  strategies: Sequence[str] = STRATEGIES, workers: int | None = None,
                  progress: bool = True) -> Records:
    """Every point of the scans ``kinds`` for ``tasks`` (the preset's ScanConfig: seeds, unfreeze fractions,
    training sizes), run once each in parallel and kept in the preset's scan store.

    Returns ``{kind: {task: [record, ...]}}``.  Points shared by several scans (the block scan's deepest point,
    the unfreeze scan's base point, the training-size scan at the ablation size) are trained once; points
    already in the store cost nothing, so a second call, or a widened scan, trains only what is new.
    """

    p = get_preset(preset)
    plan = {kind: {task: build_scan(p, kind, task, strategies=strategies) for task in tasks} for kind in kinds}
    every = [config for by_task in plan.values() for points in by_task.values() for config in points]
    store = ScanStore.for_preset(p)
    records = run_scan(every, store, progress=progress, workers=workers)
    by_point = {store.key(c): r for c, r in zip(every, records)}
    return {kind: {task: [by_point[store.key(c)] for c in points] for task, points in by_task.items()}
            for kind, by_task in plan.items()}


def _counting_error(points: Sequence[Mapping[str, Any]], metric: str, mean: float) -> float:
    """The counting error of a mean mis-ID rate on the shared test set (0 for other metrics)."""
    n_background = next((p["metrics"].get("n_background") for p in points if "n_background" in p["metrics"]), None)
    return misid_statistical_error(mean, n_background) if metric == "misid_at_80" and n_background else 0.0


def _summaries(points: Sequence[Mapping[str, Any]], by: str, metric: str,
               strategy: str | None = None) -> dict[Any, Summary]:
    """The metric's summary over seeds for each value of ``by`` (one strategy), counting error included."""
    rows = [r for r in summarize(points, by, metric) if strategy is None or r["strategy"] == strategy]
    return {r[by]: verdict_summary(r["values"], _counting_error(points, metric, r["mean"])) for r in rows}


def _agreement(verdicts: Sequence[str]) -> str:
    """``yes`` when every comparison the claim needs is significant in its favour, ``no`` when one goes
    significantly against it, else ``not significant``."""
    if any(v == WORSE for v in verdicts):
        return "no"
    if verdicts and all(v == BETTER for v in verdicts):
        return "yes"
    return "not significant"


def ablation_claims_rows(records: Records, epochs: int) -> list[dict[str, Any]]:
    """The core paper's ablation claims (its Section 3.4 and Fig. 4) beside the scans of this run, each with a
    verdict from the seed spread (:mod:`tauml.evaluation.verdicts`).

    * unfreezing after about half of the epochs beats unfreezing at once and never: both comparisons must be
      significant;
    * using all pretrained GPT blocks is best: all blocks significantly better than one block, and no block
      count significantly better than all;
    * the gain of fine-tuning over training from scratch shrinks as the training set grows: the relative gain at
      the smallest size exceeds the one at the largest beyond their combined uncertainty (the stricter Welch
      threshold of the two comparisons).

    The table is one family of tests (:mod:`tauml.evaluation.verdicts`): each comparison is made at
    ``1 - 0.05 / m`` for the ``m`` comparisons of the table (the demo: 15).
    """
    rows = []
    unfreeze = {task: _summaries(records["unfreeze"][task], "unfreeze_epoch", HEADLINE[task][0], "fine_tuning")
                for task in records.get("unfreeze", {})}
    blocks = {task: _summaries(records["blocks"][task], "n_gpt_blocks", HEADLINE[task][0])
              for task in records.get("blocks", {})}
    half_of = {task: min(by_epoch, key=lambda e: abs(e - epochs / 2)) for task, by_epoch in unfreeze.items()}
    # the table is one family of tests: half-way against at once and never, every block count against all blocks,
    # and the shrinking gain, per task
    family = max(1, sum(sum(1 for e in (0, epochs) if e in unfreeze[t] and e != half_of[t]) for t in unfreeze)
                 + sum(len(by_blocks) - 1 for by_blocks in blocks.values())
                 + len(records.get("train_size", {})))
    for task, by_epoch in unfreeze.items():
        metric, higher = HEADLINE[task]
        half = half_of[task]
        best = (max if higher else min)(by_epoch, key=lambda e: by_epoch[e].mean)
        versus = {e: compare(by_epoch[half], by_epoch[e], higher, comparisons=family)
                  for e in (0, epochs) if e in by_epoch and e != half}
        rows.append({"claim": f"{task}: unfreezing at about half of the epochs beats at once and never",
                     "paper": "yes", "this run": f"best mean at epoch {best} of {epochs}; epoch {half} "
                     + ", ".join(f"vs {e}: {c.text()}" for e, c in versus.items()),
                     "agrees": _agreement([c.verdict for c in versus.values()])})
    for task, by_blocks in blocks.items():
        metric, higher = HEADLINE[task]
        most, fewest = max(by_blocks), min(by_blocks)
        best = (max if higher else min)(by_blocks, key=lambda b: by_blocks[b].mean)
        against_fewest = (compare(by_blocks[most], by_blocks[fewest], higher, comparisons=family).verdict
                          if fewest != most else BETTER)
        beaten = [b for b in by_blocks if b != most
                  and compare(by_blocks[b], by_blocks[most], higher, comparisons=family).verdict == BETTER]
        agrees = "no" if beaten else _agreement([against_fewest])
        rows.append({"claim": f"{task}: using all pretrained GPT blocks is best", "paper": "yes",
                     "this run": f"best mean with {best} of {most} blocks; {most} vs {fewest}: {against_fewest}",
                     "agrees": agrees})
    for task in records.get("train_size", {}):
        metric, _ = HEADLINE[task]
        higher = METRIC_HIGHER_IS_BETTER[metric]
        points = records["train_size"][task]
        tuned = _summaries(points, "train_size", metric, "fine_tuning")
        scratch = _summaries(points, "train_size", metric, "from_scratch")
        sizes = sorted(set(tuned) & set(scratch))
        if len(sizes) < 2:
            continue
        small, large = (compare(tuned[n], scratch[n], higher, comparisons=family) for n in (sizes[0], sizes[-1]))
        gain = [(c.relative, c.relative_uncertainty) for c in (small, large)]
        sigma = math.hypot(gain[0][1], gain[1][1])
        difference = gain[0][0] - gain[1][0]
        verdict = verdict_of(difference, sigma, k=max(small.threshold, large.threshold))  # the stricter test
        rows.append({"claim": f"{task}: the gain of fine-tuning over from scratch shrinks with more labelled jets",
                     "paper": "yes", "this run": f"{gain[0][0]:+.1%} ± {gain[0][1]:.1%} at {sizes[0]}, "
                     f"{gain[1][0]:+.1%} ± {gain[1][1]:.1%} at {sizes[-1]}",
                     "agrees": _agreement([verdict])})
    return rows
