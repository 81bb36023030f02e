"""The tokenization study of notebook 01 (the core paper's Figs. 2 and 3), as library functions.

The notebook computes :func:`tauml.evaluation.tokenization.tokenization_metrics` for pp jets (the tokenizer's own
domain) and for e+e- tau and quark jets (out of domain) and reads them here:

* :func:`study_jets` draws the jets: pp validation jets (never trained on) and the e+e- test samples;
* :func:`neutral_hadron_rows` follows the neutral hadrons through the tokenizer (the paper: "neutral and
  charged hadrons are often confused");
* :func:`utilisation_at_size` gives the pp codebook utilisation on as many constituents as another sample has,
  so that utilisations of samples of different sizes can be compared;
* :func:`variant_tokenizers` and :func:`compare_variant` train (or load) tokenizers with changed settings and
  set them beside the preset's;
* :func:`reading` writes the reading of the numbers as Markdown, computed from them.

``metrics`` arguments map a dataset name (``"pp"``, ``"tau"``, ``"qq"``) to what ``tokenization_metrics``
returns.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np

from tauml import pipeline
from tauml.config import Preset, get_preset
from tauml.data.features import PID_NAMES, JetArrays
from tauml.evaluation.tokenization import RESIDUAL_NAMES, RESIDUALS, codes_for_fraction, resolution_rows
from tauml.plots.tokenization import dataset_name

NEUTRAL_HADRON = PID_NAMES.index("neutral hadron")

#: The tokenizers notebook 01 compares with the preset's, by name -> changed TokenizerConfig settings (its
#: configuration cell's default; ``tauml prepare`` trains them in advance).
NOTEBOOK_VARIANTS: dict[str, dict[str, Any]] = {"codebook 128": {"codebook_size": 128},
                                                "MSE on categories": {"categorical_loss": "mse"},
                                                "trained on e+e- jets": {"train_on": "ee"}}


def study_jets(preset: str | Preset, n_jets: int, ee_samples: Mapping[str, str]) -> dict[str, JetArrays]:
    """At most ``n_jets`` jets per dataset: ``"pp"`` = the tokenizer's validation jets, and for each
    ``name: sample`` of ``ee_samples`` the e+e- test jets of ``sample`` (``"tau"`` keeps tau-matched jets only)."""

    p = get_preset(preset)
    split = pipeline.pp_split(p, p.tokenizer.val_fraction, p.tokenizer.seed)
    jets = {"pp": split.val.subset(slice(0, n_jets))}
    for name, sample in ee_samples.items():
        ee = pipeline.sample_jets(p, sample, "test")
        if name == "tau":
            ee = ee.subset(ee.is_tau == 1)
        jets[name] = ee.subset(slice(0, n_jets))
    return jets


def neutral_hadron_rows(metrics: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per dataset: how many input neutral hadrons there are, the fraction reconstructed as neutral hadrons,
    as electrons and as charged hadrons, and their median input mass [GeV] (NaN where there are none)."""
    rows = {}
    for name, m in metrics.items():
        row = m["pid_confusion"][NEUTRAL_HADRON]
        n = max(int(row.sum()), 1)
        is_neutral = m["input"]["pid"] == NEUTRAL_HADRON
        rows[name] = {"dataset": name, "neutral hadrons": int(row.sum()),
                      "kept as neutral hadron": row[NEUTRAL_HADRON] / n,
                      **{f"→ {PID_NAMES[k]}": row[k] / n for k in (0, 3)},
                      "median input mass [GeV]": float(np.median(m["input"]["mass"][is_neutral]))
                      if is_neutral.any() else float("nan")}
    return rows


def utilisation_at_size(token_frequency: np.ndarray, n_constituents: int, seed: int = 1) -> float:
    """Fraction of the codebook used by ``n_constituents`` constituents drawn without replacement from a sample
    with code counts ``token_frequency`` (utilisation grows with the sample size, so compare at equal size)."""
    codes = np.repeat(np.arange(len(token_frequency)), token_frequency)
    drawn = np.random.default_rng(seed).choice(codes, size=min(len(codes), n_constituents), replace=False)
    return len(np.unique(drawn)) / len(token_frequency)


def variant_tokenizers(preset: str | Preset, variants: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """``{"preset": the preset's tokenizer, name: tokenizer with the TokenizerConfig fields of variants[name]
    changed}``; each is trained on first use, then loaded from the cache."""

    p = get_preset(preset)
    tokenizers = {"preset": pipeline.tokenizer(p)}
    for name, changes in variants.items():
        tokenizers[name] = pipeline.tokenizer(dataclasses.replace(p, tokenizer=dataclasses.replace(p.tokenizer,
                                                                                                   **changes)))
    return tokenizers


def compare_variant(preset_metrics: Mapping[str, Any], variant_metrics: Mapping[str, Any], variant: str,
                    dataset: str) -> str:
    """Two lines saying which of the preset's tokenizer and ``variant`` keeps the categories better (sum of the
    particle-type and charge accuracies) and in how many residuals the preset has the smaller IQR."""

    a, b = preset_metrics, variant_metrics
    categories = [f"{what} {a[key]:.3f} (preset) vs {b[key]:.3f}"
                  for what, key in (("particle type", "pid_accuracy"), ("charge", "charge_accuracy"))]
    continuous = [f"{RESIDUAL_NAMES[q]} {a['resolution'][q]['iqr']:.3g} vs {b['resolution'][q]['iqr']:.3g}"
                  for q in RESIDUALS]
    preset_finer = sum(a["resolution"][q]["iqr"] < b["resolution"][q]["iqr"] for q in RESIDUALS)
    better = "preset" if a["pid_accuracy"] + a["charge_accuracy"] > b["pid_accuracy"] + b["charge_accuracy"] \
        else variant
    return (f"{dataset_name(dataset)}\n      accuracies: {', '.join(categories)} -> {better} better on the categories"
            f"\n      IQRs: {', '.join(continuous)} -> preset finer in {preset_finer} of {len(RESIDUALS)}")


def _relative_angle(m: Mapping[str, Any], name: str) -> float:

    return float(np.mean([r["IQR / input IQR"] for r in resolution_rows({name: m}, ("deta", "dphi"))]))


def reading(metrics: Mapping[str, Mapping[str, Any]], neutral: Mapping[str, Mapping[str, Any]],
            codebook_size: int) -> str:
    """The reading of the study as Markdown bullets: each out-of-domain dataset against pp (pT, angles,
    categories), the fate of neutral hadrons, and how concentrated the code usage is."""

    pp = metrics["pp"]
    pp_pt = pp["resolution"]["pt_relative"]
    lines = []
    for name, m in metrics.items():
        if name == "pp":
            continue
        pt = m["resolution"]["pt_relative"]
        lines.append(
            f"* **{dataset_name(name)} against pp**: the IQR of pT_reco/pT - 1 is {pt['iqr']:.3f} against "
            f"{pp_pt['iqr']:.3f} ({'worse' if pt['iqr'] > pp_pt['iqr'] else 'better'} than in domain; the std, "
            f"sensitive to tails, {pt['std']:.3f} against {pp_pt['std']:.3f}); the angular IQR is "
            f"{m['resolution']['deta']['iqr']:.3f} against {pp['resolution']['deta']['iqr']:.3f} in absolute terms "
            f"but {_relative_angle(m, name):.2f} against {_relative_angle(pp, 'pp'):.2f} of the input's own angular "
            f"spread; particle type {m['pid_accuracy']:.3f} against {pp['pid_accuracy']:.3f}, charge "
            f"{m['charge_accuracy']:.3f} against {pp['charge_accuracy']:.3f}.")
    if "tau" in neutral:
        lines.append(
            f"* **Neutral hadrons**: kept as neutral hadrons in {neutral['pp']['kept as neutral hadron']:.0%} of pp "
            f"cases, {neutral['tau']['kept as neutral hadron']:.0%} in tau jets (there "
            f"{neutral['tau']['→ charged hadron']:.0%} become charged hadrons and {neutral['tau']['→ electron']:.0%} "
            f"electrons); their input mass is {neutral['pp']['median input mass [GeV]']:.3f} GeV in pp and "
            f"{neutral['tau']['median input mass [GeV]']:.3f} GeV in tau jets (median).")
    perplexities = ", ".join(f"{n} {m['perplexity']:.0f}" for n, m in metrics.items())
    last = "tau" if "tau" in metrics else "pp"
    lines.append(
        f"* **Mode collapse**: perplexities {perplexities} of {codebook_size} codes; "
        f"{codes_for_fraction(metrics[last]['token_frequency'])} codes carry 90 % of the constituents of the "
        f"{dataset_name(last)}.")
    return "\n".join(lines)
