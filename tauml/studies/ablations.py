"""The scans of notebook 04: unfreeze epoch, GPT blocks and training-set size, beside the paper's claims.

    records = run_ablations("demo")                  # {kind: {task: [record, ...]}}, from the scan store
    ablation_claims_rows(records, epochs=20)         # the paper's ablation claims beside this run

Every point is cached in the preset's scan store (:mod:`tauml.pipeline.scan`): a second call costs nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tauml.config import STRATEGIES, TASKS, Preset, get_preset
from tauml.evaluation.tasks import HEADLINE
from tauml.pipeline.scan import METRIC_HIGHER_IS_BETTER, ScanStore, build_scan, run_scan, summarize

SCAN_KINDS: tuple[str, ...] = ("unfreeze", "blocks", "train_size")
#: The setting each scan varies.
SCAN_AXIS: dict[str, str] = {"unfreeze": "unfreeze_epoch", "blocks": "n_gpt_blocks", "train_size": "train_size"}

Records = dict[str, dict[str, list[dict[str, Any]]]]


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


def ablation_claims_rows(records: Records, epochs: int) -> list[dict[str, Any]]:
    """The core paper's ablation claims (its Section 3.4 and Fig. 4) beside the scans of this run.

    Unfreezing after about half of the epochs beats unfreezing at once and never; all pretrained GPT blocks
    beat fewer; the gain of fine-tuning over training from scratch shrinks as the training set grows.
    """

    rows = []
    for task in records.get("unfreeze", {}):
        metric, higher = HEADLINE[task]
        means = {r["unfreeze_epoch"]: r["mean"] for r in summarize(records["unfreeze"][task], "unfreeze_epoch", metric)
                 if r["strategy"] == "fine_tuning"}
        best = (max if higher else min)(means, key=means.get)
        half = min(means, key=lambda e: abs(e - epochs / 2))
        beats = all((means[half] > means[e]) if higher else (means[half] < means[e]) for e in (0, epochs) if e in means)
        rows.append({"claim": f"{task}: unfreezing at about half of the epochs beats at once and never",
                     "paper": "yes", "this run": f"best at epoch {best} of {epochs}",
                     "agrees": "yes" if beats else "no"})
    for task in records.get("blocks", {}):
        metric, higher = HEADLINE[task]
        means = {r["n_gpt_blocks"]: r["mean"] for r in summarize(records["blocks"][task], "n_gpt_blocks", metric)}
        best = (max if higher else min)(means, key=means.get)
        rows.append({"claim": f"{task}: using all pretrained GPT blocks is best", "paper": "yes",
                     "this run": f"best with {best} of {max(means)} blocks",
                     "agrees": "yes" if best == max(means) else "no"})
    for task in records.get("train_size", {}):
        metric, _ = HEADLINE[task]
        higher = METRIC_HIGHER_IS_BETTER[metric]
        rows_t = summarize(records["train_size"][task], "train_size", metric)
        curve = {(r["strategy"], r["train_size"]): r["mean"] for r in rows_t}
        sizes = sorted({r["train_size"] for r in rows_t})
        if ("fine_tuning", sizes[0]) not in curve or ("from_scratch", sizes[0]) not in curve:
            continue
        small, large = (_relative_gain(curve[("fine_tuning", n)], curve[("from_scratch", n)], higher)
                        for n in (sizes[0], sizes[-1]))
        rows.append({"claim": f"{task}: the gain of fine-tuning over from scratch shrinks with more labelled jets",
                     "paper": "yes", "this run": f"{100 * small:+.1f} % at {sizes[0]}, {100 * large:+.1f} % at {sizes[-1]}",
                     "agrees": "yes" if small > large else "no"})
    return rows


def _relative_gain(value: float, reference: float, higher_is_better: bool) -> float:
    """How much better ``value`` is than ``reference``, relative (positive = better)."""
    return (value - reference) / abs(reference) if higher_is_better else (reference - value) / reference
