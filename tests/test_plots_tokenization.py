"""Numbers and figures of the tokenization study (tauml.plots.tokenization)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pytest

from tauml.evaluation import tokenization as te
from tauml.plots import tokenization as tp


def fake_metrics(seed: int, width: float) -> dict:
    """The parts of a tokenization_metrics result the figures read, with known spreads."""
    rng = np.random.default_rng(seed)
    residuals = {q: rng.normal(0.0, width, 4000) for q in te.RESIDUALS}
    resolution = {q: {"mean": float(r.mean()), "std": float(r.std()),
                      "iqr": float(np.subtract(*np.percentile(r, [75, 25])))} for q, r in residuals.items()}
    return {"residuals": residuals, "resolution": resolution, "n_constituents": 4000,
            "input": {"deta": rng.normal(0.0, 2 * width, 4000), "dphi": rng.normal(0.0, 4 * width, 4000)},
            "pid_accuracy": 0.9, "charge_accuracy": 0.95, "utilisation": 0.5, "perplexity": 10.0,
            "token_frequency": np.array([50, 30, 10, 5, 5, 0, 0, 0])}


def test_codes_for_fraction_counts_the_most_frequent_codes():
    counts = np.array([5, 0, 50, 10, 30, 5])
    assert te.codes_for_fraction(counts, 0.5) == 1
    assert te.codes_for_fraction(counts, 0.8) == 2  # 50 + 30
    assert te.codes_for_fraction(counts, 0.9) == 3
    assert te.codes_for_fraction(counts, 1.0) == 5  # every used code, not the unused one
    assert te.codes_for_fraction(np.zeros(4), 0.9) == 0


def test_resolution_rows_relate_angular_iqr_to_the_input_spread():
    rows = te.resolution_rows({"pp": fake_metrics(1, 0.1)})
    assert [r["quantity"] for r in rows] == [te.RESIDUAL_NAMES[q] for q in te.RESIDUALS]
    by_name = {r["quantity"]: r for r in rows}
    assert by_name["Δη"]["IQR / input IQR"] == pytest.approx(0.5, rel=0.1)
    assert by_name["Δφ [rad]"]["IQR / input IQR"] == pytest.approx(0.25, rel=0.1)
    assert by_name["mass [GeV]"]["IQR / input IQR"] == "–"
    assert by_name["mass [GeV]"]["IQR"] == pytest.approx(1.349 * 0.1, rel=0.1)  # Gaussian IQR = 1.349 sigma


def test_resolution_figure_has_a_panel_per_feature_and_a_shared_legend():
    fig = tp.plot_resolution({"pp": fake_metrics(1, 0.05), "tau": fake_metrics(2, 0.1)}, text="test")
    assert len(fig.axes) == 4
    assert [t.get_text() for t in fig.legends[0].get_texts()] == [tp.dataset_label("pp"), tp.dataset_label("tau")]
    assert [ax.get_xlabel() for ax in fig.axes] == [tp.RESIDUAL_LABELS[q] for q in te.RESIDUALS]
    plt.close(fig)


def test_confusion_is_row_normalised_and_refuses_mismatched_labels():
    counts = np.array([[8, 2, 0], [0, 0, 0], [1, 0, 3]])
    fig = tp.plot_category_confusion(counts, tp.CHARGE_LABELS, "charge [e]")
    ax = fig.axes[0]
    cells = [t.get_text() for t in ax.texts if "\n(" in t.get_text()]  # not the experiment label
    assert "0.80\n(8)" in cells and "0.75\n(3)" in cells
    assert len(cells) == 6  # the empty input class (charge 0) is left blank
    assert ax.get_xlabel() == "Input charge [e]"
    plt.close(fig)
    with pytest.raises(ValueError, match="match 5 labels"):
        tp.plot_category_confusion(counts, tp.PID_LABELS, "particle type")
