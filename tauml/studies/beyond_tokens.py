"""Notebook 07: beyond the token bottleneck. Backbone inputs and pretraining objectives side by side.

The variants (:data:`NOTEBOOK_VARIANTS`) differ only in what the backbone reads and how it is pretrained:

* ``tokens``: OmniJet-alpha, token ids in, next-token prediction (the preset's backbone, with this study's
  pretraining budget);
* ``continuous``: the hybrid of arXiv:2512.04149, the constituent features in (the tokenizer's own inputs, one
  preprocessing), token ids still the next-token targets;
* ``continuous+MPM``: the same plus masked particle modelling (a bidirectional pass predicting the token ids of
  hidden constituents), the combined objective of arXiv:2512.04149.

Each is pretrained on the same pp jets with the same budget, fine-tuned on the three tau tasks with the same
settings and seeds, and set beside training from scratch, the ParticleTransformer and the no-learning
references::

    results = run_variants("demo")           # {task: {model: [FinetuneResult per seed]}}
    headline_rows(results)                   # mean ± std per task and model (studies.finetuning's table)
    claims_rows(results)                     # the successor paper's claims, with verdicts
    generation_rows("demo")                  # perplexity and generated-jet distances per variant
    scaling_rows("demo", "jets")             # headline metric vs pretraining jets (tauml prepare --steps scaling)

Every pretraining and fine-tuning is cached (``tauml.pipeline``), so a second call costs nothing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from tauml import pipeline
from tauml.config import TASKS, Preset, get_preset
from tauml.evaluation.generation import generation_distances
from tauml.evaluation.tasks import HEADLINE, METRIC_HIGHER_IS_BETTER
from tauml.evaluation.verdicts import compare, summarize
from tauml.models.checkpoints import load_backbone
from tauml.models.gpt import generate_jets
from tauml.pipeline.finetuning import finetune_many
from tauml.studies.finetuning import Results, agreement, model_comparison

#: The variants of notebook 07: name -> (inputs, ntp_weight, mpm_weight).
NOTEBOOK_VARIANTS: dict[str, tuple[str, float, float]] = {
    "tokens": ("tokens", 1.0, 0.0),
    "continuous": ("continuous", 1.0, 0.0),
    "continuous+MPM": ("continuous", 1.0, 1.0),
}
#: Pretraining epochs of every variant in this study: 3 (the demo backbone of notebook 02 has 8), so that the three
#: pretrainings fit the notebook's budget; all variants get the same budget.
NOTEBOOK_PRETRAIN_EPOCHS = 3
#: The references trained beside the variants (on the candidates, or the token backbone from scratch).
NOTEBOOK_REFERENCES: tuple[str, ...] = ("from_scratch", "part")
NOTEBOOK_TASKS: tuple[str, ...] = TASKS
#: Fine-tuning: 2,000 training jets (notebook 03's), 10 epochs with the backbone unfrozen at epoch 5 (03: 20 and 10).
NOTEBOOK_TRAIN_SIZE = 2000
NOTEBOOK_EPOCHS = 10
NOTEBOOK_UNFREEZE_EPOCH = NOTEBOOK_EPOCHS // 2
NOTEBOOK_SEEDS: tuple[int, ...] = (1, 2, 3)
#: Jets generated per variant for the generation-quality table (a continuous backbone decodes every step).
NOTEBOOK_GENERATED_JETS = 200
#: The scaling study (``tauml prepare --steps scaling``): pretraining jets and backbone widths, fixed backbone
#: strategy (what the pretraining alone gives), seeds.
SCALING_JETS: tuple[int, ...] = (1500, 3000, 6000)
SCALING_WIDTHS: tuple[int, ...] = (32, 64, 128)
SCALING_SEEDS: tuple[int, ...] = (1, 2, 3)
SCALING_STRATEGY = "fixed_backbone"


def variant_preset(preset: str | Preset, inputs: str = "tokens", ntp_weight: float = 1.0, mpm_weight: float = 0.0,
                   pretrain_epochs: int | None = None, train_jets: int | None = None,
                   n_embd: int | None = None) -> Preset:
    """``preset`` with the backbone reading ``inputs`` and pretrained with the objective ``ntp_weight`` x
    next-token + ``mpm_weight`` x masked particle; optionally another pretraining budget (epochs, jets) or width
    (``n_embd``; the feed-forward width scales along, 4 x)."""
    p = get_preset(preset)
    gpt = replace(p.gpt, inputs=inputs)
    if n_embd is not None:
        gpt = replace(gpt, n_embd=n_embd, ffn_dim=4 * n_embd)
    pretrain = replace(p.pretrain, ntp_weight=ntp_weight, mpm_weight=mpm_weight)
    if pretrain_epochs is not None:
        pretrain = replace(pretrain, epochs=pretrain_epochs)
    if train_jets is not None:
        pretrain = replace(pretrain, train_jets=train_jets)
    return replace(p, gpt=gpt, pretrain=pretrain).validate()


def variant_presets(preset: str | Preset, variants: Mapping[str, tuple[str, float, float]] = NOTEBOOK_VARIANTS,
                    pretrain_epochs: int | None = NOTEBOOK_PRETRAIN_EPOCHS) -> dict[str, Preset]:
    """One preset per variant (:func:`variant_preset`), all with the same pretraining budget."""
    return {name: variant_preset(preset, inputs, ntp, mpm, pretrain_epochs) for name, (inputs, ntp, mpm)
            in variants.items()}


def run_variants(preset: str | Preset, variants: Mapping[str, tuple[str, float, float]] = NOTEBOOK_VARIANTS,
                 tasks: Sequence[str] = NOTEBOOK_TASKS, references: Sequence[str] = NOTEBOOK_REFERENCES,
                 seeds: Sequence[int] = NOTEBOOK_SEEDS, pretrain_epochs: int | None = NOTEBOOK_PRETRAIN_EPOCHS,
                 strategy: str = "fine_tuning", progress: bool = True, workers: int | None = None,
                 **settings: Any) -> Results:
    """Pretrain every variant (cached), fine-tune it with ``strategy`` on every task and seed, and train the
    ``references`` (from scratch on the first variant's inputs, the baselines) with the same settings;
    ``settings`` override the preset's FinetuneConfig (e.g. ``train_size=2000, epochs=10``).  Returns
    ``{task: {name: [FinetuneResult per seed]}}`` with the variants' names and the references'."""
    presets = variant_presets(preset, variants, pretrain_epochs)
    results: Results = {task: {} for task in tasks}
    jobs = [(name, p, strategy) for name, p in presets.items()]
    first = next(iter(presets.values()))
    jobs += [(reference, first, reference) for reference in references]
    for name, p, model in jobs:
        if model in ("fixed_backbone", "fine_tuning"):
            pipeline.backbone_checkpoint(p, progress=progress)
        configs = [replace(p.finetune, task=task, strategy=model, seed=seed, **settings)
                   for task in tasks for seed in seeds]
        for config, result in zip(configs, finetune_many(p, configs, workers=workers, progress=progress)):
            results[config.task].setdefault(name, []).append(result)
    return results


def backbone_rows(preset: str | Preset, variants: Mapping[str, tuple[str, float, float]] = NOTEBOOK_VARIANTS,
                  pretrain_epochs: int | None = NOTEBOOK_PRETRAIN_EPOCHS) -> list[dict[str, Any]]:
    """Per variant: inputs, objective, parameters, pretraining time, and the last epoch's validation numbers
    (next-token perplexity beside the unigram reference; masked-particle accuracy where trained)."""
    rows = []
    for name, p in variant_presets(preset, variants, pretrain_epochs).items():
        history = pipeline.backbone_history(p)
        last = history["epochs"][-1]
        objective = " + ".join(term for term, weight in (("NTP", p.pretrain.ntp_weight), ("MPM", p.pretrain.mpm_weight))
                               if weight > 0)
        rows.append({"variant": name, "inputs": p.gpt.inputs, "objective": objective,
                     "parameters": history["n_parameters"], "epochs": len(history["epochs"]),
                     "pretraining time [s]": round(last["elapsed_s"], 1),
                     "val perplexity": last.get("val_perplexity", float("nan")),
                     "unigram perplexity": history["unigram_perplexity"],
                     "masked-particle accuracy": last.get("val_mpm_accuracy", float("nan"))})
    return rows


def generation_rows(preset: str | Preset, variants: Mapping[str, tuple[str, float, float]] = NOTEBOOK_VARIANTS,
                    pretrain_epochs: int | None = NOTEBOOK_PRETRAIN_EPOCHS, n_jets: int = NOTEBOOK_GENERATED_JETS,
                    seed: int = 0, observables: Sequence[str] = ("multiplicity", "jet_mass", "constituent_pt")
                    ) -> list[dict[str, Any]]:
    """Generated jets of every variant whose objective includes next-token prediction, against real pp jets
    (validation split): the Wasserstein-1 distance of each observable (:func:`generation_distances`, "both:
    generated vs real A"), beside the floor of two real halves and the tokenizer's round trip.  A variant without
    next-token prediction gets a row saying it cannot generate."""
    base = get_preset(preset)
    tokenizer = pipeline.tokenizer(base)
    split = pipeline.pp_split(base, base.pretrain.val_fraction, base.pretrain.seed)
    real = (split.val.features[: 2 * n_jets], split.val.mask[: 2 * n_jets])
    tokens, token_mask = pipeline.tokens(base, split.val, "pp/val")
    decoded = tokenizer.reconstruct(tokens[: 2 * n_jets], token_mask[: 2 * n_jets])
    max_len = int(split.val.mask.sum(1).max())
    rows = []
    floor = None
    for name, p in variant_presets(base, variants, pretrain_epochs).items():
        if p.pretrain.ntp_weight == 0:
            rows.append({"variant": name, **{o: "cannot generate (no next-token term)" for o in observables}})
            continue
        model = load_backbone(pipeline.backbone_checkpoint(p))
        generated = generate_jets(model, tokenizer, n_jets, max_len=max_len, seed=seed)
        distances = generation_distances(real, decoded, generated, base.features)
        floor = distances
        rows.append({"variant": name, **{o: distances["both: generated vs real A"][o] for o in observables}})
    if floor is not None:
        rows.append({"variant": "real half vs real half (floor)",
                     **{o: floor["perfect: real B vs real A"][o] for o in observables}})
        rows.append({"variant": "tokenizer round trip (no GPT)",
                     **{o: floor["tokenizer: decoded B vs real A"][o] for o in observables}})
    return rows


#: The successor paper's claims tested here: (task, model A, model B, the claim, the paper's statement).
SUCCESSOR_CLAIMS: tuple[tuple[str, str, str, str, str], ...] = tuple(
    (task, a, b, f"{task}: {text}", paper) for task in TASKS for a, b, text, paper in (
        ("continuous", "tokens", "continuous inputs (hybrid) beat token inputs", "yes (large gain, JetClass)"),
        ("continuous+MPM", "continuous", "adding MPM to NTP improves the fine-tuned model", "yes"),
        ("continuous+MPM", "from_scratch", "the best pretrained model beats training from scratch", "yes"),
    )
) + tuple((task, "continuous+MPM", "part", f"{task}: the best pretrained model reaches the ParticleTransformer",
           "close at small training sets") for task in TASKS)


def claims_rows(results: Results) -> list[dict[str, Any]]:
    """The claims of arXiv:2512.04149 beside this run (model A better than B on the task's headline metric),
    each with its verdict (:mod:`tauml.evaluation.verdicts`) and whether it agrees."""
    rows = []
    present = [claim for claim in SUCCESSOR_CLAIMS if model_comparison(results, *claim[:3]) is not None]
    for task, a, b, text, paper in present:  # the claims of the table are one family of tests
        c = model_comparison(results, task, a, b, comparisons=len(present))
        rows.append({"claim": text, "paper": paper, "this run": f"{c.relative:+.1%} ± {c.relative_uncertainty:.1%}",
                     "verdict": c.verdict, "agrees": agreement(c.verdict)})
    return rows


def gap_rows(results: Results, target: str = "part") -> list[dict[str, Any]]:
    """Per task and variant: the headline metric's gap to ``target`` (default the ParticleTransformer), relative
    to the target, its verdict, and whether the gap is closed: ``yes`` only when the model is better beyond the
    noise, ``no`` when it is worse beyond the noise, ``within the noise`` otherwise (a large seed spread shows
    no gap without showing that there is none)."""
    rows = []
    family = sum(1 for by_model in results.values() if target in by_model
                 for name, runs in by_model.items() if name != target and runs)  # the table's tests
    for task, by_model in results.items():
        metric, higher = HEADLINE[task]
        if target not in by_model:
            continue
        reference = [float(r.metrics[metric]) for r in by_model[target]]
        for name, runs in by_model.items():
            if name == target or not runs:
                continue
            c = compare([float(r.metrics[metric]) for r in runs], reference, higher, comparisons=family)
            rows.append({"task": task, "model": name, metric: summarize([float(r.metrics[metric]) for r in runs]).text(4),
                         target: summarize(reference).text(4), "gap": f"{c.relative:+.1%} ± {c.relative_uncertainty:.1%}",
                         "verdict vs " + target: c.verdict,
                         "gap closed": {"better": "yes", "worse": "no"}.get(c.verdict, "within the noise")})
    return rows


def headline_values(results: Results) -> dict[str, dict[str, list[float]]]:
    """``{task: {model: [headline metric per seed]}}``."""
    return {task: {m: [float(r.metrics[HEADLINE[task][0]]) for r in runs] for m, runs in by_model.items()}
            for task, by_model in results.items()}


# ----------------------------------------------------------------------------------------------------------
# Scaling curves (the review's open question): headline metric against pretraining jets and backbone width
# ----------------------------------------------------------------------------------------------------------


def scaling_presets(preset: str | Preset, kind: str, values: Sequence[int] | None = None,
                    variant: str = "continuous+MPM",
                    pretrain_epochs: int | None = NOTEBOOK_PRETRAIN_EPOCHS) -> dict[int, Preset]:
    """One variant preset per point: ``kind="jets"`` varies the pretraining jets (the preset's width),
    ``kind="width"`` the width ``n_embd`` (all pretraining jets)."""
    if kind not in ("jets", "width"):
        raise ValueError(f"kind={kind!r}; choose 'jets' or 'width'")
    inputs, ntp, mpm = NOTEBOOK_VARIANTS[variant]
    values = tuple(values or (SCALING_JETS if kind == "jets" else SCALING_WIDTHS))
    if kind == "jets":
        return {n: variant_preset(preset, inputs, ntp, mpm, pretrain_epochs, train_jets=n) for n in values}
    return {w: variant_preset(preset, inputs, ntp, mpm, pretrain_epochs, n_embd=w) for w in values}


def run_scaling(preset: str | Preset, kind: str, values: Sequence[int] | None = None,
                tasks: Sequence[str] = NOTEBOOK_TASKS, seeds: Sequence[int] = SCALING_SEEDS,
                strategy: str = SCALING_STRATEGY, variant: str = "continuous+MPM", progress: bool = True,
                workers: int | None = None, **settings: Any) -> dict[str, dict[int, list[float]]]:
    """Pretrain one backbone per point (:func:`scaling_presets`, cached) and fine-tune it on every task and seed;
    returns ``{task: {value: [headline metric per seed]}}``."""
    settings = {"train_size": NOTEBOOK_TRAIN_SIZE, "epochs": NOTEBOOK_EPOCHS,
                "unfreeze_epoch": NOTEBOOK_UNFREEZE_EPOCH, **settings}
    out: dict[str, dict[int, list[float]]] = {task: {} for task in tasks}
    for value, p in scaling_presets(preset, kind, values, variant).items():
        pipeline.backbone_checkpoint(p, progress=progress)
        configs = [replace(p.finetune, task=task, strategy=strategy, seed=seed, **settings)
                   for task in tasks for seed in seeds]
        for config, result in zip(configs, finetune_many(p, configs, workers=workers, progress=progress)):
            out[config.task].setdefault(value, []).append(float(result.metrics[HEADLINE[config.task][0]]))
    return out


def scaling_is_prepared(preset: str | Preset, kind: str, values: Sequence[int] | None = None,
                        variant: str = "continuous+MPM") -> bool:
    """Whether every backbone of a scaling curve is already in the cache (``tauml prepare --steps scaling``)."""
    return all((pipeline.backbone_dir(p) / "backbone.pt").is_file()
               for p in scaling_presets(preset, kind, values, variant).values())


def scaling_rows(curve: Mapping[str, Mapping[int, Sequence[float]]], kind: str) -> list[dict[str, Any]]:
    """A scaling curve as table rows: per task and point, the headline metric's mean ± std over seeds, and the
    verdict of the largest point against the smallest."""
    rows = []
    family = max(1, sum(1 for points in curve.values() if len(points) > 1))  # one test per task: one family
    for task, points in curve.items():
        metric, higher = HEADLINE[task]
        ordered = sorted(points)
        for value in ordered:
            rows.append({"task": task, kind: value, metric: summarize(points[value]).text(4)})
        if len(ordered) > 1:
            c = compare(points[ordered[-1]], points[ordered[0]], METRIC_HIGHER_IS_BETTER.get(metric, higher),
                        comparisons=family)
            rows.append({"task": task, kind: f"{ordered[-1]} vs {ordered[0]}", metric: c.text()})
    return rows


def mean_of(values: Sequence[float]) -> float:
    return float(np.mean(values))
