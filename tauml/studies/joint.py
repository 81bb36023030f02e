"""The joint analysis of notebook 06 (Vigl, Hartman, Heinrich, arXiv:2401.13536): event classifiers from three jet
representations and four strategies, against the training-set size, beside the paper's claims.

    records = run_study("demo")                     # {case: [scan record, ...]} (cached, resumable)
    rejection_table(records["hh4b"])                # Table II: rejection at 90 % signal efficiency
    efficiency_table(records["hh4b"])               # Table III: data efficiency against S+HLF frozen
    drift_table("demo", "hh4b", records["hh4b"])     # Table IV: the learned scalar as a jet tagger
    claims_rows(records)                            # the paper's claims, each with its verdict
    significance_rows("demo", "zh_tautau", records["zh_tautau"])   # pyhf: Z0 and the 95 % CL limit

Every training is a point of the joint scan store (:mod:`tauml.pipeline.joint`), so a second call costs nothing and a
larger grid (more sizes, seeds, models) trains only what is new.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from tauml.config import JointConfig, Preset, get_preset
from tauml.data.events import CASES
from tauml.evaluation.joint import event_metrics
from tauml.evaluation.significance import binned_templates, expected_sensitivity
from tauml.evaluation.verdicts import BETTER, NO_DIFFERENCE, UNDETERMINED, WORSE, compare, summarize
from tauml.models.joint import REPRESENTATION_LABELS
from tauml.pipeline import joint
from tauml.pipeline.scan import data_efficiency

Records = dict[str, list[dict[str, Any]]]

# Notebook 06's grid.  Its configuration cell takes these as defaults: change them here, not twice.
NOTEBOOK_CASES: tuple[str, ...] = ("zh_tautau", "hh4b")
#: Training events per point: a fivefold range, so the data efficiency has two ends to interpolate between.
NOTEBOOK_TRAIN_SIZES: tuple[int, ...] = (100, 500)
NOTEBOOK_SEEDS: tuple[int, ...] = (1, 2, 3)
#: (representation, strategy) of the notebook: the paper's Table II grid (three representations x frozen, finetuned,
#: from scratch) and the foundation initialisation of S+HLF (Table V); ``tauml joint --all`` adds V-only foundation.
NOTEBOOK_MODELS: tuple[tuple[str, str], ...] = (
    *((rep, strategy) for strategy in ("frozen", "finetuned", "from_scratch") for rep in ("s_hlf", "v_hlf", "v")),
    ("s_hlf", "foundation"),
)
#: Every model `tauml joint --all` trains: the notebook's grid and the foundation initialisation of V-only too.
ALL_MODELS: tuple[tuple[str, str], ...] = (*NOTEBOOK_MODELS, ("v", "foundation"))
NOTEBOOK_JET_MODEL = "gpt"
#: Integrated luminosity of the binned fits [fb^-1]: the LHC Run 2 (139) and CLIC's 380 GeV stage (1000).
LUMINOSITY: dict[str, float] = {"hh4b": 139.0, "zh_tautau": 1000.0}
#: The X -> HH -> b bbar b bbar signal is normalised to this cross section [fb] (the three masses equally), so the
#: 95 % CL limit on mu is a limit on sigma x BR in fb; Pythia's own value for its H2 model is recorded, not used.
HH4B_SIGNAL_FB = 1.0
#: The paper's numbers (Tables II-IV and the text of section VI).
PAPER_TABLE_II = {("s_hlf", "frozen"): "350 ± 10", ("v_hlf", "frozen"): "390 ± 10", ("v", "frozen"): "170 ± 20",
                  ("s_hlf", "finetuned"): "550 ± 20", ("v_hlf", "finetuned"): "640 ± 40", ("v", "finetuned"): "680 ± 20",
                  ("s_hlf", "from_scratch"): "540 ± 10", ("v_hlf", "from_scratch"): "540 ± 50",
                  ("v", "from_scratch"): "590 ± 10"}
PAPER_TABLE_III = {("s_hlf", "frozen"): "1", ("v_hlf", "frozen"): "14", ("v", "frozen"): "/",
                   ("s_hlf", "finetuned"): "53", ("v_hlf", "finetuned"): "67", ("v", "finetuned"): "14",
                   ("s_hlf", "from_scratch"): "1.7", ("v_hlf", "from_scratch"): "1.7", ("v", "from_scratch"): "2.8"}
PAPER_TABLE_IV = {"frozen": "151.93 (100 %)", "finetuned": "96.28 (63 %)", "from_scratch": "66.53 (44 %)",
                  "foundation": "119.67 (79 %, JetClass init)"}


def sample_rows(preset: str | Preset, cases: Sequence[str] = NOTEBOOK_CASES) -> list[dict[str, Any]]:
    """One row per generated sample of ``cases``: events generated, the share that passes the event selection
    (at least two jets), Pythia's cross section in fb and the generation speed (events per CPU second)."""
    data = joint.joint_dataset(preset)
    rows = []
    for case in cases:
        events = joint.case_events(preset, case)
        for sample in CASES[case]["signal"] + CASES[case]["background"]:
            info = data.manifest["samples"][sample]
            selected = sum(int((part.sample == sample).sum()) for part in events.values())
            rows.append({"case": case, "sample": sample, "generated": info["events"],
                         "selected (≥ 2 jets)": f"{selected / info['events']:.0%}",
                         "σ (Pythia) [fb]": f"{info['sigma_fb']:.3g}",
                         "events / CPU s": f"{info['events_per_cpu_second']:.0f}"})
    return rows


def split_rows(preset: str | Preset, cases: Sequence[str] = NOTEBOOK_CASES) -> list[dict[str, Any]]:
    """Per case and split (train, val, test): events, signal events and jets."""
    return [{"case": case, "split": name, "events": len(e), "signal events": int(e.label.sum()), "jets": len(e.jets)}
            for case in cases for name, e in joint.case_events(preset, case).items()]


def study_points(case: str, models: Sequence[tuple[str, str]] = NOTEBOOK_MODELS,
                 train_sizes: Sequence[int] = NOTEBOOK_TRAIN_SIZES, seeds: Sequence[int] = NOTEBOOK_SEEDS,
                 jet_model: str = NOTEBOOK_JET_MODEL, **settings: Any) -> list[JointConfig]:
    """The points of one case: every model at every size and seed (``settings`` override JointConfig's)."""
    points = [JointConfig(case=case, representation=rep, strategy=strategy, jet_model=jet_model, train_size=int(n),
                          seed=seed, **settings)
              for seed in seeds for n in sorted(train_sizes) for rep, strategy in models]
    for point in points:
        point.validate()
    return points


def run_study(preset: str | Preset = "demo", cases: Sequence[str] = NOTEBOOK_CASES,
              models: Sequence[tuple[str, str]] = NOTEBOOK_MODELS, train_sizes: Sequence[int] = NOTEBOOK_TRAIN_SIZES,
              seeds: Sequence[int] = NOTEBOOK_SEEDS, jet_model: str = NOTEBOOK_JET_MODEL, progress: bool = True,
              workers: int | None = None, **settings: Any) -> Records:
    """Train (or read) every point of every case; ``{case: [record, ...]}``, each record with its
    ``test_scores``."""
    p = get_preset(preset)
    out = {}
    for case in cases:
        points = study_points(case, models, train_sizes, seeds, jet_model, **settings)
        out[case] = joint.run_points(p, points, progress=progress, workers=workers)
    return out


def _model(record: Mapping[str, Any]) -> tuple[str, str]:
    return record["config"]["representation"], record["config"]["strategy"]


def values(records: Iterable[Mapping[str, Any]], representation: str, strategy: str, train_size: int,
           metric: str = "rejection") -> list[float]:
    """The metric of every seed of one model at one size."""
    return [float(r["metrics"][metric]) for r in records if _model(r) == (representation, strategy)
            and r["config"]["train_size"] == train_size and metric in r["metrics"]]


def summary_rows(records: Sequence[Mapping[str, Any]], metric: str = "rejection") -> list[dict[str, Any]]:
    """Mean ± sample std over seeds of ``metric`` per model and training size."""
    groups: dict[tuple[str, str, int], list[float]] = {}
    for r in records:
        if metric in r["metrics"]:
            groups.setdefault((*_model(r), r["config"]["train_size"]), []).append(float(r["metrics"][metric]))
    rows = []
    for (rep, strategy, n), vals in groups.items():
        s = summarize(vals)
        rows.append({"case": records[0]["config"]["case"], "representation": rep, "strategy": strategy,
                     "train_size": n, "metric": metric, "mean": s.mean, "std": s.std, "n": s.n, "values": vals})
    return sorted(rows, key=lambda r: (r["strategy"], r["representation"], r["train_size"]))


def reference_row(preset: str | Preset, case: str, jet_model: str = NOTEBOOK_JET_MODEL) -> dict[str, Any]:
    """The no-learning reference: the test events ranked by their expected number of pretext-tagged jets."""
    test = joint.test_events(preset, case)
    m = event_metrics(joint.pretext_event_scores(preset, case, jet_model), test.label)
    return {"model": "sum of pretext-tagger probabilities (no event-level learning)", "rejection": m["rejection"],
            "auc": m["auc"], "sic": m["sic"]}


def _largest(records: Sequence[Mapping[str, Any]]) -> int:
    return max(r["config"]["train_size"] for r in records)


def _models_in(records: Sequence[Mapping[str, Any]]) -> list[tuple[str, str]]:
    return list(dict.fromkeys(_model(r) for r in records))


def rejection_table(records: Sequence[Mapping[str, Any]], metric: str = "rejection",
                    train_size: int | None = None) -> list[dict[str, Any]]:
    """Table II: ``metric`` (mean ± std over seeds) per strategy (rows) and representation (columns) at
    ``train_size`` (default: the largest), with the paper's value beside each."""
    n = train_size or _largest(records)
    rows = []
    for strategy in dict.fromkeys(s for _, s in _models_in(records)):
        row: dict[str, Any] = {"strategy": strategy}
        for rep in ("s_hlf", "v_hlf", "v"):
            vals = values(records, rep, strategy, n, metric)
            if vals:
                s = summarize(vals)
                row[REPRESENTATION_LABELS[rep]] = f"{s.mean:.3g} ± {s.std:.2g}"
                if (rep, strategy) in PAPER_TABLE_II and metric == "rejection":
                    row[f"{REPRESENTATION_LABELS[rep]} (paper)"] = PAPER_TABLE_II[(rep, strategy)]
        rows.append(row)
    return rows


def efficiency_rows(records: Sequence[Mapping[str, Any]], metric: str = "rejection") -> list[dict[str, Any]]:
    """Data efficiency of every model against S+HLF frozen (the paper's Table III definition: the ratio of the
    training events S+HLF frozen needs to reach its own largest-size performance to those the model needs;
    :func:`tauml.pipeline.scan.data_efficiency`, interpolated in ln(size), never extrapolated)."""
    flat = [{"config": {"task": r["config"]["case"], "strategy": f"{r['config']['representation']}/"
                        f"{r['config']['strategy']}", "train_size": r["config"]["train_size"],
                        "seed": r["config"]["seed"]}, "metrics": {metric: r["metrics"][metric]}}
            for r in records if metric in r["metrics"]]
    return data_efficiency(flat, metric, reference_strategy="s_hlf/frozen", higher_is_better=True)


def _efficiency_text(row: Mapping[str, Any]) -> str:
    if row["efficiency"] is not None:
        return f"{row['efficiency']:.3g}"
    low, high = row["efficiency_range"]
    if row["status"] == "beyond_largest":
        return f"< {high:.3g}"
    if math.isinf(high):
        return f"≥ {low:.3g}"
    return f"{low:.3g} – {high:.3g}"


def efficiency_table(records: Sequence[Mapping[str, Any]], metric: str = "rejection") -> list[dict[str, Any]]:
    """Table III: the data efficiency (or the range the scanned sizes allow) per strategy and representation."""
    by_model = {tuple(r["strategy"].split("/")): r for r in efficiency_rows(records, metric)}
    rows = []
    for strategy in dict.fromkeys(s for _, s in _models_in(records)):
        row: dict[str, Any] = {"strategy": strategy}
        for rep in ("s_hlf", "v_hlf", "v"):
            if (rep, strategy) in by_model:
                row[REPRESENTATION_LABELS[rep]] = _efficiency_text(by_model[(rep, strategy)])
                if (rep, strategy) in PAPER_TABLE_III:
                    row[f"{REPRESENTATION_LABELS[rep]} (paper)"] = PAPER_TABLE_III[(rep, strategy)]
        rows.append(row)
    return rows


def drift_table(preset: str | Preset, case: str, records: Sequence[Mapping[str, Any]],
                train_size: int | None = None) -> list[dict[str, Any]]:
    """Table IV: the S slot of the end-to-end S+HLF models as a per-jet tagger of the pretext class, against the
    pretext tagger itself (per-jet rejection at 90 % efficiency and its ratio; AUC)."""
    n = train_size or _largest(records)
    jet_model = records[0]["config"]["jet_model"]
    ref = joint.pretext_reference(preset, case, jet_model)
    rows = [{"S+HLF model": "frozen (the pretext tagger)", "jet rejection at 90 %": f"{ref['jet_rejection']:.3g}",
             "ratio": "100 %", "jet AUC": f"{ref['jet_auc']:.3f}", "paper": PAPER_TABLE_IV["frozen"]}]
    for strategy in ("finetuned", "from_scratch", "foundation"):
        rej = values(records, "s_hlf", strategy, n, "scalar_jet_rejection")
        if not rej:
            continue
        ratio = summarize(values(records, "s_hlf", strategy, n, "scalar_rejection_ratio"))
        auc = summarize(values(records, "s_hlf", strategy, n, "scalar_jet_auc"))
        s = summarize(rej)
        rows.append({"S+HLF model": strategy, "jet rejection at 90 %": f"{s.mean:.3g} ± {s.std:.2g}",
                     "ratio": f"{ratio.mean:.0%} ± {ratio.std:.0%}", "jet AUC": f"{auc.mean:.3f} ± {auc.std:.2g}",
                     "paper": PAPER_TABLE_IV[strategy]})
    return rows


def agreement(verdict: str) -> str:
    return {BETTER: "yes", WORSE: "no", NO_DIFFERENCE: "not significant", UNDETERMINED: "undetermined"}[verdict]


def _claim(rows: list[dict[str, Any]], case: str, recs: Sequence[Mapping[str, Any]], text: str, paper: str,
           a: tuple[str, str], b: tuple[str, str], n: int, metric: str = "rejection", comparisons: int = 1) -> None:
    """Append the verdict on "A rejects more background than B" at ``n`` training events (when both exist), as
    one of ``comparisons`` tests of the case's table."""
    va, vb = values(recs, *a, n, metric), values(recs, *b, n, metric)
    if not va or not vb:
        return
    c = compare(va, vb, higher_is_better=True, comparisons=comparisons)
    ratio = np.mean(va) / np.mean(vb)
    rows.append({"case": case, "claim": text, "paper": paper, "this run": f"×{ratio:.2f} "
                 f"({c.relative:+.0%} ± {c.relative_uncertainty:.0%}, n={n})", "verdict": c.verdict,
                 "agrees": agreement(c.verdict)})


def claims_rows(records: Records) -> list[dict[str, Any]]:
    """The paper's claims (section VI) beside this run, per case, each with its verdict
    (:mod:`tauml.evaluation.verdicts`) on the rejection at 90 % signal efficiency at the largest size."""
    rows = []
    for case, recs in records.items():
        n_max, n_min = _largest(recs), min(r["config"]["train_size"] for r in recs)
        models = _models_in(recs)
        claims = [(f"{REPRESENTATION_LABELS[rep]}: finetuned rejects more background than frozen", "×1.5–4",
                   (rep, "finetuned"), (rep, "frozen"), n_max)
                  for rep in ("s_hlf", "v_hlf", "v") if (rep, "finetuned") in models]
        claims += [("V+HLF frozen rejects more background than S+HLF frozen", "+14 %",
                    ("v_hlf", "frozen"), ("s_hlf", "frozen"), n_max),
                   ("finetuned beats from scratch at the smallest size (pretraining pays with little data)", "yes",
                    ("s_hlf", "finetuned"), ("s_hlf", "from_scratch"), n_min),
                   ("foundation init (pretrained GPT, no pretext step) beats from scratch",
                    "yes (Table V, JetClass init)", ("s_hlf", "foundation"), ("s_hlf", "from_scratch"), n_max)]
        claims = [c for c in claims if values(recs, *c[2], c[4]) and values(recs, *c[3], c[4])]  # both trained
        drift = values(recs, "s_hlf", "finetuned", n_max, "scalar_rejection_ratio")
        # the comparisons of the case's table, the drift's included, are one family of tests
        # (tauml.evaluation.verdicts)
        family = max(1, len(claims) + bool(drift))
        for text, paper, a, b, n in claims:
            _claim(rows, case, recs, text, paper, a, b, n, comparisons=family)
        if ("s_hlf", "from_scratch") in models and n_max > n_min:
            gap = [np.mean(values(recs, "s_hlf", "from_scratch", n)) / np.mean(values(recs, "s_hlf", "frozen", n))
                   for n in (n_min, n_max)]
            rows.append({"case": case, "claim": "from scratch catches up with S+HLF frozen as the data grow",
                         "paper": "surpasses it at ~10^5–10^6 events",
                         "this run": f"scratch/frozen ×{gap[0]:.2f} at n={n_min} → ×{gap[1]:.2f} at n={n_max}",
                         "verdict": "closer" if gap[1] > gap[0] else "not closer",
                         "agrees": "yes" if gap[1] > gap[0] else "no"})
        for row in efficiency_rows(recs):
            if row["strategy"] == "s_hlf/finetuned":
                rows.append({"case": case, "claim": "S+HLF finetuned needs less data than S+HLF frozen",
                             "paper": "×53 (up to ×70 over the models)", "this run": _efficiency_text(row),
                             "verdict": row["status"], "agrees": "yes" if row["efficiency_range"][0] > 1 else
                             ("no" if row["efficiency_range"][1] < 1 else "not determined")})
        if drift:  # the ratio to the pretext tagger's rejection against 100 % (no drift), by the same rule
            c = compare(drift, [1.0], higher_is_better=False, comparisons=family)
            rows.append({"case": case, "claim": "finetuning makes the learned scalar a worse pretext tagger (drift)",
                         "paper": "63 % of the pretext rejection", "this run": f"{c.a.mean:.0%} ± {c.a.std:.0%}",
                         "verdict": {BETTER: "below 100 %", WORSE: "above 100 %", UNDETERMINED: "undetermined"}.get(
                             c.verdict, "not significantly below"), "agrees": agreement(c.verdict)})
    return rows


def significance_rows(preset: str | Preset, case: str, records: Sequence[Mapping[str, Any]],
                      luminosity: float | None = None, train_size: int | None = None, seed: int | None = None,
                      ) -> list[dict[str, Any]]:
    """pyhf's expected discovery significance Z0 and 95 % CL upper limit on mu for every model at ``train_size``
    (default the largest) and ``seed`` (default the first), from a binned fit of its test-set output at
    ``luminosity`` [fb^-1] (default :data:`LUMINOSITY`).  Cross sections from Pythia; the X -> HH signal of ``hh4b``
    is normalised to :data:`HH4B_SIGNAL_FB`, so its mu_95 is a limit on sigma x BR in fb."""
    luminosity = luminosity or LUMINOSITY[case]
    n = train_size or _largest(records)
    seed = seed if seed is not None else min(r["config"]["seed"] for r in records)
    test = joint.test_events(preset, case)
    weights = test.weight.copy()
    if case == "hh4b":
        for sample in CASES[case]["signal"]:
            sel = test.sample == sample
            weights[sel] = HH4B_SIGNAL_FB / len(CASES[case]["signal"]) / max(int(sel.sum()), 1)
    sig, bkg = test.label == 1, test.label == 0
    rows = []
    for r in records:
        if r["config"]["train_size"] != n or r["config"]["seed"] != seed or r.get("test_scores") is None:
            continue
        scores = np.asarray(r["test_scores"], float)
        templates = binned_templates(scores[sig], weights[sig], scores[bkg], weights[bkg], luminosity)
        result = expected_sensitivity(templates)
        rep, strategy = _model(r)
        rows.append({"model": f"{REPRESENTATION_LABELS[rep]} {strategy}", "Z0 (expected)": round(result["z0"], 3),
                     "95 % CL limit on mu": round(result["mu_95"], 4), "signal events": round(result["signal_events"], 1),
                     "background events": round(result["background_events"], 1),
                     "luminosity [fb^-1]": luminosity})
    return rows


__all__ = [
    "ALL_MODELS",
    "HH4B_SIGNAL_FB",
    "LUMINOSITY",
    "NOTEBOOK_CASES",
    "NOTEBOOK_JET_MODEL",
    "NOTEBOOK_MODELS",
    "NOTEBOOK_SEEDS",
    "NOTEBOOK_TRAIN_SIZES",
    "claims_rows",
    "drift_table",
    "efficiency_rows",
    "efficiency_table",
    "reference_row",
    "rejection_table",
    "run_study",
    "significance_rows",
    "study_points",
    "summary_rows",
    "values",
]
