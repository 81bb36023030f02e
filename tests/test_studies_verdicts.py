"""The claims tables of notebooks 03, 04 and 06 state a verdict only where the seed spread supports it."""

from __future__ import annotations

from dataclasses import replace

from tauml.config import get_preset
from tauml.pipeline.finetuning import FinetuneResult
from tauml.studies import ablations, finetuning


def _result(task: str, model: str, seed: int, **metrics: float) -> FinetuneResult:
    config = replace(get_preset("demo").finetune, task=task, strategy=model, seed=seed)
    return FinetuneResult(config=config, history={}, best_epoch=0, metrics=metrics,
                          reference={"resolution": 0.03, "median": 1.0, "accuracy": 0.7})


def _results(values: dict[str, list[float]], task: str = "reg", metric: str = "resolution"):
    return {task: {m: [_result(task, m, s + 1, **{metric: v}) for s, v in enumerate(vs)] for m, vs in values.items()}}


def _row(rows, text):
    return next(r for r in rows if text in r["claim"])


def test_a_clear_gain_agrees_and_a_gain_inside_the_noise_does_not():
    clear = _results({"fine_tuning": [0.020, 0.021, 0.019], "from_scratch": [0.030, 0.031, 0.029]})
    row = _row(finetuning.claims_rows(clear), "narrows the pT resolution vs from scratch")
    assert row["verdict"] == "better" and row["agrees"] == "yes"
    noisy = _results({"fine_tuning": [0.020, 0.030, 0.025], "from_scratch": [0.026, 0.022, 0.029]})
    row = _row(finetuning.claims_rows(noisy), "narrows the pT resolution vs from scratch")
    assert row["verdict"] == "no significant difference" and row["agrees"] == "not significant"
    reverse = _results({"fine_tuning": [0.030, 0.031, 0.029], "from_scratch": [0.020, 0.021, 0.019]})
    assert _row(finetuning.claims_rows(reverse), "vs from scratch")["agrees"] == "no"


def test_the_counting_error_of_the_mis_id_rate_enters_the_verdict():
    def misid(values, n_background):
        return {"id": {m: [_result("id", m, s + 1, misid_at_80=v, n_background=n_background)
                           for s, v in enumerate(vs)] for m, vs in values.items()}}
    values = {"fine_tuning": [0.010, 0.010, 0.010], "from_scratch": [0.012, 0.012, 0.012]}
    few = _row(finetuning.claims_rows(misid(values, 500)), "lowers the mis-ID")
    many = _row(finetuning.claims_rows(misid(values, 5_000_000)), "lowers the mis-ID")
    assert few["agrees"] == "not significant" and many["agrees"] == "yes"


def test_the_fixed_backbone_is_worst_only_beyond_the_noise():
    worst = _results({"from_scratch": [0.025, 0.026, 0.024], "fixed_backbone": [0.035, 0.036, 0.034],
                      "fine_tuning": [0.020, 0.021, 0.019]})
    assert _row(finetuning.claims_rows(worst), "fixed backbone is the worst")["agrees"] == "yes"
    tied = _results({"from_scratch": [0.025, 0.030, 0.035], "fixed_backbone": [0.031, 0.029, 0.033],
                     "fine_tuning": [0.020, 0.021, 0.019]})
    assert _row(finetuning.claims_rows(tied), "fixed backbone is the worst")["agrees"] == "not significant"


def test_beating_the_reference_needs_the_seed_spread():
    lines = finetuning.beats_reference(_results({"fine_tuning": [0.020, 0.021, 0.019]}))
    assert lines == ["reg: fine_tuning beats reco-jet pT (resolution 0.02 ± 0.001 (3 seeds) vs 0.03)"]


def _point(task, strategy, metric, value, seed, **setting):
    config = {"task": task, "strategy": strategy, "seed": seed, "unfreeze_epoch": 10, "n_gpt_blocks": 3,
              "train_size": 2000, **setting}
    return {"config": config, "metrics": {metric: value}}


def test_ablation_claims_use_the_seed_spread():
    unfreeze = [_point("reg", "fine_tuning", "resolution", v + 0.0001 * s, s, unfreeze_epoch=e)
                for e, v in ((0, 0.030), (10, 0.020), (20, 0.031)) for s in (1, 2, 3)]
    blocks = [_point("reg", "fine_tuning", "resolution", v + 0.004 * (s - 2), s, n_gpt_blocks=b)
              for b, v in ((1, 0.022), (2, 0.021), (3, 0.020)) for s in (1, 2, 3)]
    sizes = [_point("reg", strategy, "resolution", v * (1 + 0.01 * (s - 2)), s, train_size=n)
             for strategy, by_size in (("fine_tuning", {250: 0.020, 2000: 0.018}),
                                       ("from_scratch", {250: 0.040, 2000: 0.019}))
             for n, v in by_size.items() for s in (1, 2, 3)]
    rows = ablations.ablation_claims_rows({"unfreeze": {"reg": unfreeze}, "blocks": {"reg": blocks},
                                           "train_size": {"reg": sizes}}, epochs=20)
    assert _row(rows, "unfreezing at about half")["agrees"] == "yes"
    assert _row(rows, "all pretrained GPT blocks")["agrees"] == "not significant"  # 0.004 spread, 0.001 steps
    assert _row(rows, "shrinks with more labelled jets")["agrees"] == "yes"  # +50 % at 250, +5 % at 2000


def test_the_embedding_claim_reads_every_seed():
    from tauml.studies import embeddings

    def scores(untrained, pretrained, fine_tuned):
        rows = [{"model": m, "block": 3, "knn_accuracy": v, "silhouette": 0.0, "chance": 0.4, "n_jets": 10_000}
                for m, v in (("untrained", untrained), ("pretrained", pretrained), ("fine_tuned", fine_tuned))]
        return {"dm": rows}

    by_seed = {1: scores(0.50, 0.52, 0.80), 2: scores(0.53, 0.50, 0.79), 3: scores(0.51, 0.53, 0.81)}
    reading = embeddings.claim_reading_over_seeds(by_seed, kind="dm")
    assert [r["step"] for r in reading] == ["untrained -> pretrained", "pretrained -> fine_tuned"]
    assert [r["verdict"] for r in reading] == ["no significant difference", "better"]
    assert reading[1]["seeds"] == 3 and "(3 seeds)" in reading[1]["kNN after"]


def test_a_reference_model_with_zero_mis_id_does_not_break_the_table():
    zero = {"id": {m: [_result("id", m, s + 1, misid_at_80=v, n_background=1857) for s, v in enumerate(vs)]
                   for m, vs in {"part": [0.0, 0.001, 0.0], "fine_tuning": [0.0, 0.0, 0.0]}.items()}}
    row = _row(finetuning.claims_rows(zero), "ParT lowers the mis-ID")
    assert "inf" in row["this run"] and row["agrees"] in ("no", "not significant")


def test_pair_comparisons_are_the_comparisons_of_the_claims():
    values = {"from_scratch": [0.025, 0.026, 0.024], "fixed_backbone": [0.035, 0.036, 0.034],
              "fine_tuning": [0.020, 0.021, 0.019], "part": [0.022, 0.023, 0.021]}
    pairs = finetuning.pair_comparisons(_results(values))
    assert all(c.comparisons == 4 for c in pairs.values())
    assert list(pairs) == [("reg", "fine_tuning", "from_scratch"), ("reg", "fine_tuning", "part"),
                     ("reg", "fixed_backbone", "from_scratch"), ("reg", "fixed_backbone", "fine_tuning")]
    # without the fixed backbone only the paper's claims are compared
    del values["fixed_backbone"]
    assert len(finetuning.pair_comparisons(_results(values))) == 2


def test_the_claims_table_is_one_family_of_tests():
    # fine-tuning 4 standard errors better than from scratch (three seeds each, nu = 4): alone (k = 2.78) it is
    # a finding; in a table of four comparisons (with ParT and the fixed backbone, k = 4.31) it is not
    tuned = [0.0200, 0.0210, 0.0220]  # standard error 0.001 / sqrt(3) each: sigma = 0.001 * sqrt(2 / 3)
    scratch = [x + 4.0 * 0.001 * (2 / 3) ** 0.5 for x in tuned]
    alone = _results({"fine_tuning": tuned, "from_scratch": scratch})
    assert _row(finetuning.claims_rows(alone), "vs from scratch")["verdict"] == "better"
    table = _results({"fine_tuning": tuned, "from_scratch": scratch, "part": [0.021, 0.022, 0.023],
                      "fixed_backbone": [0.021, 0.022, 0.023]})
    assert len(finetuning.pair_comparisons(table)) == 4
    assert _row(finetuning.claims_rows(table), "vs from scratch")["verdict"] == "no significant difference"


def _joint_records(frozen: list[float], finetuned: list[float], drift: list[float] | None) -> list[dict]:
    """S+HLF frozen and finetuned at 100 and 500 events, one record per seed (the store's layout)."""
    records = []
    for strategy, rejections in (("frozen", frozen), ("finetuned", finetuned)):
        for n in (100, 500):
            for seed, value in enumerate(rejections, start=1):
                metrics = {"rejection": value * (0.5 if n == 100 else 1.0)}
                if strategy == "finetuned" and drift is not None:
                    metrics["scalar_rejection_ratio"] = drift[seed - 1]
                records.append({"config": {"case": "hh4b", "representation": "s_hlf", "strategy": strategy,
                                           "train_size": n, "seed": seed}, "metrics": metrics})
    return records


def test_the_joint_claims_are_one_family_and_the_drift_follows_the_rule():
    from tauml.studies import joint

    # finetuned 3.2 standard errors above frozen (three seeds each, nu = 4): a finding as the table's only test
    # (k = t_0.975(4) = 2.78), not as one of two, the drift being the second (k = t_(1 - 0.05/4)(4) = 3.50)
    frozen = [5.0, 5.1, 5.2]
    finetuned = [x + 3.2 * 0.1 * (2 / 3) ** 0.5 for x in frozen]
    claim = "S+HLF: finetuned rejects more background than frozen"
    alone = joint.claims_rows({"hh4b": _joint_records(frozen, finetuned, None)})
    assert _row(alone, claim)["verdict"] == "better" and not [r for r in alone if "drift" in r["claim"]]
    rows = joint.claims_rows({"hh4b": _joint_records(frozen, finetuned, [0.70, 0.72, 0.74])})
    assert _row(rows, claim)["verdict"] == "no significant difference"
    drift = _row(rows, "drift")
    assert drift["verdict"] == "below 100 %" and drift["agrees"] == "yes"
    # a drift within its seed spread of 100 % is not a finding
    rows = joint.claims_rows({"hh4b": _joint_records(frozen, finetuned, [0.80, 1.05, 1.10])})
    assert _row(rows, "drift")["verdict"] == "not significantly below"
