"""The readings of notebook 01 (tauml.studies.tokenization) on constructed metrics with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from tauml.data.features import PID_NAMES
from tauml.plots import tokenization as tp
from tauml.studies import tokenization as study

NH = study.NEUTRAL_HADRON


def metrics(pid_accuracy: float, pt_iqr: float, confusion_row: list[int], masses: list[float]) -> dict:
    """The parts of a tokenization_metrics result the study reads."""
    confusion = np.zeros((5, 5), int)
    confusion[NH] = confusion_row
    pid = np.array([NH] * len(masses) + [3])
    resolution = {q: {"mean": 0.0, "std": 2 * pt_iqr, "iqr": pt_iqr} for q in tp.RESIDUALS}
    residuals = {q: np.linspace(-pt_iqr, pt_iqr, 101) for q in tp.RESIDUALS}
    return {"pid_confusion": confusion, "pid_accuracy": pid_accuracy, "charge_accuracy": 1.0,
            "input": {"pid": pid, "mass": np.array([*masses, 0.14]), "deta": np.linspace(-1, 1, 101),
                      "dphi": np.linspace(-1, 1, 101)},
            "resolution": resolution, "residuals": residuals, "perplexity": 40.0,
            "token_frequency": np.array([90, 5, 5, 0])}


def test_neutral_hadron_rows_follow_the_confusion_row():
    rows = study.neutral_hadron_rows({"pp": metrics(0.99, 0.1, [0, 0, 0, 1, 3], [0.0, 0.0]),
                                      "tau": metrics(0.9, 0.2, [1, 0, 0, 3, 0], [0.4976, 0.4976])})
    assert rows["pp"]["neutral hadrons"] == 4 and rows["pp"]["kept as neutral hadron"] == pytest.approx(0.75)
    assert rows["tau"]["kept as neutral hadron"] == 0.0
    assert rows["tau"][f"→ {PID_NAMES[3]}"] == pytest.approx(0.75) and rows["tau"][f"→ {PID_NAMES[0]}"] == 0.25
    assert rows["tau"]["median input mass [GeV]"] == pytest.approx(0.4976)
    empty = study.neutral_hadron_rows({"qq": metrics(0.9, 0.2, [0, 0, 0, 0, 0], [])})
    assert empty["qq"]["neutral hadrons"] == 0 and np.isnan(empty["qq"]["median input mass [GeV]"])


def test_utilisation_at_size_draws_without_replacement():
    counts = np.array([3, 3, 3, 0])
    assert study.utilisation_at_size(counts, 100) == pytest.approx(0.75)  # every used code, capped at the sample
    assert study.utilisation_at_size(counts, 1) == pytest.approx(0.25)
    assert study.utilisation_at_size(counts, 7) == pytest.approx(0.75)  # 7 of 9 draws must hit all three codes
    assert study.utilisation_at_size(counts, 2, seed=5) == study.utilisation_at_size(counts, 2, seed=5)


def test_compare_variant_names_the_better_tokenizer():
    preset, variant = metrics(0.99, 0.1, [0] * 5, []), metrics(0.90, 0.2, [0] * 5, [])
    text = study.compare_variant(preset, variant, "MSE", "pp")
    assert "-> preset better on the categories" in text
    assert f"preset finer in {len(tp.RESIDUALS)} of {len(tp.RESIDUALS)}" in text
    text = study.compare_variant(variant, preset, "MSE", "pp")
    assert "-> MSE better on the categories" in text and "preset finer in 0 of" in text


def test_reading_compares_each_sample_with_pp():
    m = {"pp": metrics(0.99, 0.1, [0, 0, 0, 1, 3], [0.0]), "tau": metrics(0.9, 0.2, [1, 0, 0, 3, 0], [0.5])}
    text = study.reading(m, study.neutral_hadron_rows(m), codebook_size=4)
    assert "the IQR of pT_reco/pT - 1 is 0.200 against 0.100 (worse than in domain" in text
    assert "kept as neutral hadrons in 75% of pp cases, 0% in tau jets" in text
    assert "perplexities pp 40, tau 40 of 4 codes; 1 codes carry 90 %" in text  # 90 of 100 in one code
