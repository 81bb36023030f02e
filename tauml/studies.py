"""The comparison of notebook 03: every task, every strategy and the baselines, beside the paper's claims.

    results = run_comparison("demo")                 # {task: {model: [FinetuneResult per seed]}}
    headline_rows(results)                           # a table: mean ± std of each task's headline metric
    claims_rows(results)                             # the core paper's claims beside what this run shows
    figures = comparison_figures(results)            # loss curves, ROC, response, resolution, confusion

Every training is cached (``tauml.training.finetune``), so a second call costs nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import matplotlib.pyplot as plt
import numpy as np

from tauml.config import BASELINES, STRATEGIES, TASKS, Preset, get_preset
from tauml.metrics import misid_statistical_error
from tauml.training.finetune import FinetuneResult, finetune_many

Results = dict[str, dict[str, list[FinetuneResult]]]

#: The headline metric of each task, and whether larger is better.
HEADLINE: dict[str, tuple[str, bool]] = {"id": ("misid_at_80", False), "reg": ("resolution", False),
                                         "dm": ("weighted_auc", True)}
#: Readable names of the metrics.
METRIC_LABELS: dict[str, str] = {
    "misid_at_80": "mis-ID at 80 % τ efficiency", "auc": "AUC", "resolution": "pT resolution IQR/median",
    "median": "pT scale (median response)", "iqr": "IQR of the response", "weighted_auc": "weighted one-vs-rest AUC",
    "accuracy": "accuracy", "macro_f1": "macro F1",
}


def run_comparison(preset: str | Preset, tasks: Sequence[str] = TASKS,
                   models: Sequence[str] = STRATEGIES + BASELINES, seeds: Sequence[int] = (1,),
                   progress: bool = True, workers: int | None = None, **settings: Any) -> Results:
    """Train (or load) every (task, model, seed), in parallel worker processes; ``settings`` override the
    preset's FinetuneConfig (e.g. ``train_size=2000``, ``unfreeze_epoch=10``)."""

    p = get_preset(preset)
    jobs = [(task, model, seed) for task in tasks for model in models for seed in seeds]
    configs = [replace(p.finetune, task=task, strategy=model, seed=seed, **settings) for task, model, seed in jobs]
    results: Results = {task: {model: [] for model in models} for task in tasks}
    for (task, model, _), result in zip(jobs, finetune_many(p, configs, workers=workers, progress=progress)):
        results[task][model].append(result)
    return results


def _mean_std(values: list[float]) -> tuple[float, float]:
    return float(np.mean(values)), float(np.std(values))


def headline_rows(results: Results) -> list[dict[str, Any]]:
    """One row per (task, model) with mean ± std of the task's metrics, then the no-learning reference."""
    rows = []
    for task, by_model in results.items():
        reference = None
        for model, runs in by_model.items():
            if not runs:
                continue
            keys = {"id": ("misid_at_80", "auc"), "reg": ("resolution", "median"), "dm": ("weighted_auc", "accuracy")}
            row: dict[str, Any] = {"task": task, "model": model}
            for key in keys[task]:
                mean, std = _mean_std([r.metrics[key] for r in runs])
                row[METRIC_LABELS[key]] = f"{mean:.4g} ± {std:.2g}" if len(runs) > 1 else f"{mean:.4g}"
                if key == "misid_at_80" and "n_background" in runs[0].metrics:
                    # the seeds share one test set: the counting error is that of the mean rate
                    n_background = runs[0].metrics["n_background"]
                    stat = misid_statistical_error(mean, n_background)
                    seeds = " (seeds)" if len(runs) > 1 else ""
                    row[METRIC_LABELS[key]] += f"{seeds} ± {stat:.2g} (stat., {n_background} background jets)"
            row["trainable parameters"] = runs[0].n_trainable_parameters
            rows.append(row)
            reference = runs[0].reference
        if reference and task == "reg":
            rows.append({"task": task, "model": "reco-jet pT (no learning)",
                         METRIC_LABELS["resolution"]: f"{reference['resolution']:.4g}",
                         METRIC_LABELS["median"]: f"{reference['median']:.4g}", "trainable parameters": 0})
        if reference and task == "dm":
            rows.append({"task": task, "model": "counting candidates (no learning)",
                         METRIC_LABELS["weighted_auc"]: "—",
                         METRIC_LABELS["accuracy"]: f"{reference['accuracy']:.4g}", "trainable parameters": 0})
    return rows


def beats_reference(results: Results) -> list[str]:
    """Sentences saying, for reg and dm, which models beat the no-learning reference and which do not."""
    lines = []
    for task, key, ref_key, better in (("reg", "resolution", "resolution", "smaller"),
                                       ("dm", "accuracy", "accuracy", "larger")):
        if task not in results:
            continue
        for model, runs in results[task].items():
            if not runs:
                continue
            value = float(np.mean([r.metrics[key] for r in runs]))
            ref = runs[0].reference[ref_key]
            ok = value < ref if better == "smaller" else value > ref
            what = "reco-jet pT" if task == "reg" else "counting candidates"
            lines.append(f"{task}: {model} {'beats' if ok else 'does NOT beat'} {what} "
                         f"({key} {value:.4g} vs {ref:.4g})")
    return lines


def _headline(results: Results, task: str, model: str) -> float | None:
    runs = results.get(task, {}).get(model) or []
    return float(np.mean([r.metrics[HEADLINE[task][0]] for r in runs])) if runs else None


def claims_rows(results: Results) -> list[dict[str, Any]]:
    """The core paper's claims (arXiv:2503.19165; ``physics.md``) beside the numbers of this run.

    ``change`` is the relative improvement of the first model over the second (positive = better).
    """
    def improvement(task: str, a: str, b: str) -> float | None:
        va, vb = _headline(results, task, a), _headline(results, task, b)
        if va is None or vb is None or vb == 0:
            return None
        higher = HEADLINE[task][1]
        return (va - vb) / abs(vb) if higher else (vb - va) / vb

    claims = [
        ("reg", "fine_tuning", "from_scratch", "fine-tuning narrows the pT resolution vs from scratch", "~50 %"),
        ("id", "fine_tuning", "from_scratch", "fine-tuning lowers the mis-ID at 80 % vs from scratch", "~20 %"),
        ("dm", "fine_tuning", "from_scratch", "fine-tuning raises the decay-mode AUC vs from scratch", "> 0"),
        ("id", "part", "fine_tuning", "ParT lowers the mis-ID at 80 % vs fine-tuning", "~70 % (large samples)"),
        ("dm", "part", "fine_tuning", "ParT raises the decay-mode AUC vs fine-tuning", "~5 % (large samples)"),
        ("reg", "fine_tuning", "part", "fine-tuning narrows the pT resolution vs ParT", "~30 %"),
    ]
    rows = []
    for task, a, b, text, paper in claims:
        change = improvement(task, a, b)
        if change is None:
            continue
        rows.append({"claim": text, "paper": paper, "this run": f"{100 * change:+.1f} %",
                     "agrees in sign": "yes" if change > 0 else "no"})
    for task in results:
        values = {m: _headline(results, task, m) for m in STRATEGIES}
        if all(v is not None for v in values.values()):
            higher = HEADLINE[task][1]
            worst = (min if higher else max)(values, key=values.get)
            rows.append({"claim": f"{task}: the fixed backbone is the worst of the three strategies",
                         "paper": "yes", "this run": f"worst: {worst}",
                         "agrees in sign": "yes" if worst == "fixed_backbone" else "no"})
    return rows


def comparison_figures(results: Results, save_prefix: str | None = "03") -> dict[str, plt.Figure]:
    """The figures a reader of the paper expects, from a comparison's results."""
    from tauml.plots import save
    from tauml.plots import tau as tplots

    figures: dict[str, plt.Figure] = {}
    for task, by_model in results.items():
        models = {m: runs for m, runs in by_model.items() if runs}
        unfreeze = next((runs[0].config.unfreeze_epoch for m, runs in models.items() if m == "fine_tuning"), None)
        figures[f"{task}_val_loss"] = tplots.plot_loss_curves(
            {m: [r.history["val_loss"] for r in runs] for m, runs in models.items()},
            unfreeze_epoch=unfreeze, text=f"{task}: validation loss")
        if task == "id":
            figures["id_roc"] = tplots.plot_roc(
                {m: [(r.predictions["score"], r.predictions["is_tau"]) for r in runs] for m, runs in models.items()},
                text="τ identification")
        elif task == "reg":
            first = next(iter(models.values()))[0]
            reco = first.predictions["reco_pt"] / first.predictions["vis_pt"]
            figures["reg_response"] = tplots.plot_response(
                {m: runs[0].predictions["pred_pt"] / runs[0].predictions["vis_pt"] for m, runs in models.items()},
                reco_response=reco, text="visible τ pT")
            runs_by_model = {m: [(r.predictions["pred_pt"], r.predictions["vis_pt"]) for r in runs]
                             for m, runs in models.items()}
            runs_by_model["reference"] = [(first.predictions["reco_pt"], first.predictions["vis_pt"])]
            figures["reg_resolution_vs_pt"] = tplots.plot_resolution_vs_pt(runs_by_model, text="visible τ pT")
        elif task == "dm":
            from tauml.metrics import confusion_matrix

            for m in ("fine_tuning", "part"):
                if m in models:
                    r = models[m][0]
                    figures[f"dm_confusion_{m}"] = tplots.plot_confusion(
                        confusion_matrix(r.predictions["dm"], r.predictions["probs"].argmax(1), 6),
                        text=f"decay mode: {m}")
            first = next(iter(models.values()))[0]
            figures["dm_confusion_counting"] = tplots.plot_confusion(
                confusion_matrix(first.predictions["dm"], first.predictions["counting"], 6),
                text="decay mode: counting (no learning)")
    if save_prefix:
        for name, fig in figures.items():
            save(fig, f"{save_prefix}_{name}")
    return figures


# -----------------------------------------------------------------------------------------------------------
# Notebook 04: the scans
# -----------------------------------------------------------------------------------------------------------

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
    from tauml.scan import ScanStore, build_scan, run_scan

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
    from tauml.scan import METRIC_HIGHER_IS_BETTER, summarize

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
