"""The comparison of notebook 03: every task, every strategy and the baselines, beside the paper's claims.

    results = run_comparison("demo")                 # {task: {model: [FinetuneResult per seed]}}
    headline_rows(results)                           # a table: mean ± std of each task's headline metric
    claims_rows(results)                             # the core paper's claims beside what this run shows
    figures = comparison_figures(results)            # loss curves, ROC, response, resolution, confusion

Every training is cached (``tauml.pipeline.finetuning``), so a second call costs nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import matplotlib.pyplot as plt
import numpy as np

from tauml.config import BASELINES, STRATEGIES, TASKS, Preset, get_preset
from tauml.evaluation.metrics import confusion_matrix, misid_statistical_error
from tauml.evaluation.references import RANDOM_GUESSING_ID
from tauml.evaluation.tasks import HEADLINE, METRIC_HIGHER_IS_BETTER, METRIC_LABELS
from tauml.evaluation.verdicts import (
    BETTER,
    NO_DIFFERENCE,
    UNDETERMINED,
    WORSE,
    Comparison,
    compare,
    summarize,
)
from tauml.pipeline.finetuning import FinetuneResult, finetune_many
from tauml.plots import save
from tauml.plots import tau as tplots

Results = dict[str, dict[str, list[FinetuneResult]]]

# Notebook 03's comparison.  Its configuration cell takes these as its defaults and ``tauml prepare`` trains exactly
# these models in advance (the same configurations, hence the same cache entries): change them here, not twice.
#: The tasks of notebook 03.
NOTEBOOK_TASKS: tuple[str, ...] = TASKS
#: The models of notebook 03: the three strategies and the two baselines.
NOTEBOOK_MODELS: tuple[str, ...] = STRATEGIES + BASELINES
#: Training jets per model: 2,000, the paper's low-data point.
NOTEBOOK_TRAIN_SIZE = 2000
#: Epochs per training.
NOTEBOOK_EPOCHS = 20
#: The epoch at which fine-tuning unfreezes the backbone: about half of the epochs, as the paper found best.
NOTEBOOK_UNFREEZE_EPOCH = NOTEBOOK_EPOCHS // 2
#: Seeds per model: three give mean ± std and verdicts; the tau models' seeds are shared with notebook 04.
NOTEBOOK_SEEDS: tuple[int, ...] = (1, 2, 3)


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
    """Mean and sample standard deviation (ddof=1, 0 for one seed) over seeds."""
    s = summarize(values)
    return s.mean, s.std


def headline_rows(results: Results) -> list[dict[str, Any]]:
    """One row per (task, model) with mean ± std over seeds (sample std) of the task's metrics, then the
    no-learning reference."""
    rows = []
    for task, by_model in results.items():
        reference = None  # the first model's (the same test jets for all), {} for identification
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
        if reference is not None and task == "id":  # no no-learning reference: the floor is random guessing
            rows.append({"task": task, "model": "random guessing (no no-learning reference for id)",
                         METRIC_LABELS["misid_at_80"]: f"{RANDOM_GUESSING_ID['misid_at_80']:.4g}",
                         METRIC_LABELS["auc"]: f"{RANDOM_GUESSING_ID['auc']:.4g}", "trainable parameters": 0})
    return rows


def _values(results: Results, task: str, model: str, metric: str) -> list[float]:
    return [float(r.metrics[metric]) for r in results.get(task, {}).get(model) or []]


def _counting_error(results: Results, task: str, model: str, metric: str) -> float:
    """The counting error of the mean mis-ID rate (the seeds share one test set); 0 for other metrics."""
    runs = results.get(task, {}).get(model) or []
    if metric != "misid_at_80" or not runs or "n_background" not in runs[0].metrics:
        return 0.0
    return misid_statistical_error(float(np.mean(_values(results, task, model, metric))),
                                   runs[0].metrics["n_background"])


def model_comparison(results: Results, task: str, a: str, b: str, metric: str | None = None,
                     comparisons: int = 1) -> Comparison | None:
    """Model ``a`` against model ``b`` on ``task``'s headline metric (or ``metric``), over their seeds, with the
    verdict rule of :mod:`tauml.evaluation.verdicts` as one of ``comparisons`` tests of a table; None when either
    model is missing."""
    metric = metric or HEADLINE[task][0]
    va, vb = _values(results, task, a, metric), _values(results, task, b, metric)
    if not va or not vb:
        return None
    return compare(va, vb, METRIC_HIGHER_IS_BETTER[metric], _counting_error(results, task, a, metric),
                   _counting_error(results, task, b, metric), comparisons=comparisons)


def beats_reference(results: Results) -> list[str]:
    """Sentences saying, for reg and dm, whether each model beats the no-learning reference beyond its seed
    spread (the reference itself needs no training and has no seed spread); the sentences are one family of
    tests (:mod:`tauml.evaluation.verdicts`)."""
    lines = []
    tasks = (("reg", "resolution", "reco-jet pT"), ("dm", "accuracy", "counting candidates"))
    family = sum(1 for task, _, _ in tasks for runs in results.get(task, {}).values() if runs)
    for task, key, what in tasks:
        if task not in results:
            continue
        for model, runs in results[task].items():
            if not runs:
                continue
            ref = float(runs[0].reference[key])
            c = compare(_values(results, task, model, key), [ref], METRIC_HIGHER_IS_BETTER[key], comparisons=family)
            word = {BETTER: "beats", WORSE: "is worse than", NO_DIFFERENCE: "does not significantly beat",
                    UNDETERMINED: "(one seed) compares with"}[c.verdict]
            lines.append(f"{task}: {model} {word} {what} ({key} {c.a.text(4)} vs {ref:.4g})")
    return lines


#: The core paper's claims that notebook 03 tests: (task, model A, model B, the claim, the paper's number).
PAPER_CLAIMS: tuple[tuple[str, str, str, str, str], ...] = (
    ("reg", "fine_tuning", "from_scratch", "fine-tuning narrows the pT resolution vs from scratch", "~50 %"),
    ("id", "fine_tuning", "from_scratch", "fine-tuning lowers the mis-ID at 80 % vs from scratch", "~20 %"),
    ("dm", "fine_tuning", "from_scratch", "fine-tuning raises the decay-mode AUC vs from scratch", "> 0"),
    ("id", "part", "fine_tuning", "ParT lowers the mis-ID at 80 % vs fine-tuning", "~70 % (large samples)"),
    ("dm", "part", "fine_tuning", "ParT raises the decay-mode AUC vs fine-tuning", "~5 % (large samples)"),
    ("reg", "fine_tuning", "part", "fine-tuning narrows the pT resolution vs ParT", "~30 %"),
)


def agreement(verdict: str) -> str:
    """Whether a verdict on "A is better than B" agrees with a paper that says it is: ``yes`` (better beyond
    the noise), ``no`` (worse beyond the noise), ``not significant`` or ``undetermined`` (one seed)."""
    return {BETTER: "yes", WORSE: "no", NO_DIFFERENCE: "not significant", UNDETERMINED: "undetermined"}[verdict]


def pair_comparisons(results: Results) -> dict[tuple[str, str, str], Comparison]:
    """Every comparison that :func:`claims_rows` makes from ``results``, keyed ``(task, model A, model B)``: the
    paper's claims, then the fixed backbone against the other two strategies on every task.  Together they are
    one family of tests (:mod:`tauml.evaluation.verdicts`): each is made as one of ``len(...)``."""

    def present(task: str, *models: str) -> bool:
        return all(_values(results, task, m, HEADLINE[task][0]) for m in models)

    pairs = [(task, a, b) for task, a, b, _, _ in PAPER_CLAIMS if present(task, a, b)]
    pairs += [(task, "fixed_backbone", m) for task in results if present(task, *STRATEGIES)
              for m in STRATEGIES if m != "fixed_backbone"]
    return {pair: model_comparison(results, *pair, comparisons=len(pairs)) for pair in pairs}


def claims_rows(results: Results) -> list[dict[str, Any]]:
    """The core paper's claims (arXiv:2503.19165, Section 3.3) beside this run, each with its verdict.

    ``this run`` is the relative improvement of A over B (positive = better) with its uncertainty and
    significance; ``verdict`` follows :mod:`tauml.evaluation.verdicts` (better / worse only beyond the Welch
    t-test threshold of the combined standard error of the seed means and the counting error, every comparison
    of the table one test of a family: :func:`pair_comparisons`); ``agrees`` says whether that verdict supports
    the paper's claim (``not significant`` when the run cannot tell).
    """
    rows = []
    comparisons = pair_comparisons(results)
    for task, a, b, text, paper in PAPER_CLAIMS:
        c = comparisons.get((task, a, b))
        if c is None:
            continue
        rows.append({"claim": text, "paper": paper, "this run": f"{c.relative:+.1%} ± {c.relative_uncertainty:.1%}",
                     "verdict": c.verdict, "agrees": agreement(c.verdict)})
    for task in results:
        if not all(_values(results, task, m, HEADLINE[task][0]) for m in STRATEGIES):
            continue
        versus = {m: comparisons[(task, "fixed_backbone", m)] for m in STRATEGIES if m != "fixed_backbone"}
        verdicts = {m: c.verdict for m, c in versus.items()}
        if all(v == WORSE for v in verdicts.values()):
            agrees, verdict = "yes", "worst beyond the noise"
        elif any(v == BETTER for v in verdicts.values()):
            agrees, verdict = "no", "better than " + ", ".join(m for m, v in verdicts.items() if v == BETTER)
        else:
            agrees = "undetermined" if UNDETERMINED in verdicts.values() else "not significant"
            verdict = "not worse than both beyond the noise"
        rows.append({"claim": f"{task}: the fixed backbone is the worst of the three strategies", "paper": "yes",
                     "this run": ", ".join(f"vs {m}: {c.relative:+.1%}" for m, c in versus.items()),
                     "verdict": verdict, "agrees": agrees})
    return rows


def comparison_figures(results: Results, save_prefix: str | None = "03") -> dict[str, plt.Figure]:
    """The figures a reader of the paper expects, from a comparison's results.

    Every figure is closed for pyplot once drawn (and saved): the notebook shows the ones it wants with
    ``display(fig)``, and Jupyter does not show all of them again at the end of the cell."""

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
    for name, fig in figures.items():
        if save_prefix:
            save(fig, f"{save_prefix}_{name}")
        plt.close(fig)  # still a Figure that display(fig) draws; pyplot (and Jupyter's inline backend) forgets it
    return figures
