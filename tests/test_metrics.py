"""Physics metrics on constructed inputs with known answers, the no-learning references, and the plots."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pytest

from tauml.data.features import JetArrays
from tauml.evaluation.metrics import (
    accuracy,
    auc,
    binned_response,
    candidates_from_features,
    confusion_matrix,
    counting_decay_modes,
    decay_mode_from_counting,
    evaluate_task,
    macro_f1,
    mean_std_over_runs,
    misid_at_efficiency,
    misid_statistical_error,
    reco_pt_reference,
    response_metrics,
    roc_curve,
    weighted_ovr_auc,
)

# five taus and five background jets; cuts: eff 0.8 is first reached at score >= 0.6, where the
# background jet at 0.75 passes: P_misID = 1/5.  AUC = (5 + 5 + 4 + 4 + 3) / 25 = 0.84.
SIGNAL = [0.9, 0.8, 0.7, 0.6, 0.5]
BACKGROUND = [0.75, 0.55, 0.3, 0.2, 0.1]
SCORES = np.array(SIGNAL + BACKGROUND)
LABELS = np.array([1] * 5 + [0] * 5)


def test_perfect_separation() -> None:
    scores = np.array([0.9, 0.8, 0.2, 0.1])
    labels = np.array([1, 1, 0, 0])
    assert auc(scores, labels) == 1.0
    assert misid_at_efficiency(scores, labels, 0.8) == 0.0


def test_roc_and_misid_on_a_constructed_example() -> None:
    efficiency, misid, thresholds = roc_curve(SCORES, LABELS)
    assert np.all(np.diff(thresholds[1:]) < 0)
    assert efficiency[-1] == 1.0 and misid[-1] == 1.0
    assert auc(SCORES, LABELS) == pytest.approx(0.84)
    assert misid_at_efficiency(SCORES, LABELS, 0.8) == pytest.approx(0.2)
    # between (eff 0.4, misid 0) and (eff 0.6, misid 0.2): linear interpolation
    assert misid_at_efficiency(SCORES, LABELS, 0.5) == pytest.approx(0.1)
    assert misid_at_efficiency(SCORES, LABELS, 1.0) == pytest.approx(0.4)
    with pytest.raises(ValueError, match="both tau"):
        auc(SCORES[:5], LABELS[:5])


def test_mean_std_over_runs() -> None:
    assert mean_std_over_runs([1.0, 2.0, 3.0]) == pytest.approx((2.0, np.sqrt(2 / 3)))
    mean, std = mean_std_over_runs([[0.0, 1.0], [2.0, 1.0]])
    assert mean.tolist() == [1.0, 1.0] and std.tolist() == [1.0, 0.0]


def test_response_metrics_on_a_constructed_sample() -> None:
    true_pt = np.array([20.0, 40.0, 60.0, 80.0, 100.0])
    pred_pt = true_pt * np.array([0.8, 0.9, 1.0, 1.1, 1.2])
    m = response_metrics(pred_pt, true_pt)
    assert m["median"] == pytest.approx(1.0)
    assert (m["q25"], m["q75"]) == (pytest.approx(0.9), pytest.approx(1.1))
    assert m["iqr"] == pytest.approx(0.2) and m["resolution"] == pytest.approx(0.2)
    assert m["mean"] == pytest.approx(1.0) and m["std"] == pytest.approx(np.sqrt(0.02))
    # scale by 2: the resolution (IQR / median) stays, the median doubles
    assert response_metrics(2 * pred_pt, true_pt)["resolution"] == pytest.approx(0.2)


def test_binned_response_and_reco_reference() -> None:
    true_pt = np.array([15.0, 15.0, 15.0, 150.0, 150.0, 150.0, 500.0])
    pred_pt = true_pt * np.array([0.9, 1.0, 1.1, 1.0, 1.2, 1.4, 3.0])
    binned = binned_response(pred_pt, true_pt, bins=(10, 20, 100, 200))
    assert binned["n"].tolist() == [3, 0, 3]  # 500 GeV lies outside
    assert binned["median"][0] == pytest.approx(1.0) and binned["iqr"][0] == pytest.approx(0.1)
    assert np.isnan(binned["median"][1])
    assert binned["median"][2] == pytest.approx(1.2) and binned["resolution"][2] == pytest.approx(0.2 / 1.2)
    assert binned["centers"].tolist() == [15.0, 60.0, 150.0]
    assert reco_pt_reference(pred_pt[:3], true_pt[:3])["median"] == pytest.approx(1.0)


def test_confusion_accuracy_f1() -> None:
    true = np.array([0, 0, 1, 1, 1, 2])
    pred = np.array([0, 1, 1, 1, 2, 2])
    expected = np.array([[0.5, 0.5, 0.0], [0.0, 2 / 3, 1 / 3], [0.0, 0.0, 1.0]])
    np.testing.assert_allclose(confusion_matrix(true, pred, n_classes=3), expected)
    assert confusion_matrix(true, pred, n_classes=3, normalize=None).sum() == 6
    assert confusion_matrix(true, pred, n_classes=4)[3].tolist() == [0, 0, 0, 0]  # absent class: zero row
    assert accuracy(true, pred) == pytest.approx(4 / 6)
    # class 0: P 1, R 1/2; class 1: P 2/3, R 2/3; class 2: P 1/2, R 1 -> every F1 = 2/3
    assert macro_f1(true, pred, n_classes=3) == pytest.approx(2 / 3)
    # class 0: P 1/2, R 1 -> F1 2/3; class 1 never found: F1 0 -> mean 1/3
    assert macro_f1(np.array([0, 1]), np.array([0, 0]), n_classes=2) == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="background"):
        confusion_matrix(np.array([-1]), np.array([0]))


def test_weighted_one_vs_rest_auc() -> None:
    true = np.array([0, 0, 1, 1, 1])
    p0 = np.array([0.9, 0.4, 0.6, 0.1, 0.3])  # class 0 vs rest: 5 of 6 pairs ordered -> 5/6
    p1 = np.array([0.05, 0.5, 0.04, 0.8, 0.6])  # class 1 vs rest: 4 of 6 pairs -> 2/3
    probs = np.stack([p0, p1, 1 - p0 - p1], axis=1)
    result = weighted_ovr_auc(probs, true, names=("a", "b", "c"))
    np.testing.assert_allclose(result["per_class_auc"][:2], [5 / 6, 2 / 3])
    assert result["weighted_auc"] == pytest.approx(0.4 * 5 / 6 + 0.6 * 2 / 3)
    assert result["skipped"] == ["c"] and "c" in result["note"]


def test_decay_mode_from_counting() -> None:
    # candidates: (pdg, charge); rows: h, h + 2 photons, h + 3 photons, 3 h, 3 h + 1 photon, 2 h, e + 1 photon,
    # mu + neutral hadron; the last column is padding that must be ignored.
    rows = [
        [(211, 1)],
        [(211, -1), (22, 0), (22, 0)],
        [(211, 1), (22, 0), (22, 0), (22, 0)],
        [(211, 1), (211, -1), (211, 1)],
        [(211, 1), (211, -1), (211, 1), (22, 0)],
        [(211, 1), (211, -1)],
        [(11, -1), (22, 0)],
        [(13, 1), (130, 0)],
    ]
    width = 5
    pdg = np.zeros((len(rows), width), np.int64)
    charge = np.zeros((len(rows), width), np.int64)
    mask = np.zeros((len(rows), width), bool)
    for i, row in enumerate(rows):
        for j, (code, q) in enumerate(row):
            pdg[i, j], charge[i, j], mask[i, j] = code, q, True
    pdg[:, -1], charge[:, -1] = 211, 1  # padded slot holding a charged hadron
    assert decay_mode_from_counting(pdg, charge, mask).tolist() == [0, 1, 2, 3, 4, 5, 1, 0]
    with pytest.raises(ValueError, match="pdg codes"):
        decay_mode_from_counting(np.where(mask, 321, 0), charge, mask)


def _arrays() -> JetArrays:
    n = 6
    features = np.zeros((n, 3, 10), np.float32)
    features[:, 0, 4], features[:, 0, 8] = 1.0, 1.0  # one charged hadron each
    jet_pt = np.array([50.0, 40.0, 30.0, 20.0, 60.0, 80.0])
    jet_p4 = np.stack([jet_pt, np.zeros(n), np.zeros(n), jet_pt], axis=1).astype(np.float32)
    vis_pt = np.array([45.0, 40.0, 33.0, np.nan, np.nan, np.nan])
    return JetArrays(
        features=features, mask=np.array([[True, False, False]] * n), p4=np.zeros((n, 3, 4), np.float32),
        jet_p4=jet_p4, is_tau=np.array([1, 1, 1, 0, 0, 0]),
        log_pt_ratio=np.log(vis_pt / jet_pt).astype(np.float32), dm=np.array([0, 1, 1, -1, -1, -1]),
    )


def test_evaluate_task() -> None:
    arrays = _arrays()
    ident = evaluate_task("id", np.array([0.9, 0.8, 0.3, 0.4, 0.2, 0.1]), arrays)
    assert ident["auc"] == pytest.approx(8 / 9)
    # ROC points (efficiency, mis-ID): (2/3, 0) at the cut 0.8 and (1, 1/3) at 0.3; 80 % lies 40 % of the way
    assert ident["misid_at_80"] == pytest.approx(0.4 / 3)
    assert ident["n_background"] == 3
    assert ident["misid_at_80_stat"] == pytest.approx(misid_statistical_error(ident["misid_at_80"], 3))
    # perfect regression: the true log ratio for taus, garbage for background jets (ignored)
    reg = evaluate_task("reg", np.nan_to_num(arrays.log_pt_ratio, nan=5.0), arrays)
    assert reg["median"] == pytest.approx(1.0, rel=1e-5) and reg["iqr"] == pytest.approx(0.0, abs=1e-5)
    probs = np.full((6, 6), 0.1)
    probs[[0, 1, 2], [0, 1, 0]] = 0.5
    dm = evaluate_task("dm", probs, arrays)
    assert dm["accuracy"] == pytest.approx(2 / 3)
    assert dm["confusion"][1].tolist() == [0.5, 0.5, 0, 0, 0, 0]
    assert "rare" in dm["note"]
    pdg, charge = candidates_from_features(arrays.features, arrays.mask)
    assert pdg[:, 0].tolist() == [211] * 6 and pdg[:, 1].tolist() == [0] * 6 and charge[:, 0].tolist() == [1] * 6
    # one charged hadron and no photon: h± (0); add two photons to the first jet: h±π0 (1)
    assert counting_decay_modes(arrays.features, arrays.mask).tolist() == [0] * 6
    features, mask = arrays.features.copy(), arrays.mask.copy()
    features[0, 1:, 7], mask[0, 1:] = 1.0, True  # isPhoton
    assert counting_decay_modes(features, mask).tolist() == [1] + [0] * 5
    with pytest.raises(ValueError, match="rows"):
        evaluate_task("id", np.zeros(3), arrays)


def test_plots_render_with_labelled_axes() -> None:
    from tauml.plots.tau import (
        metrics_table,
        plot_confusion,
        plot_loss_curves,
        plot_resolution_vs_pt,
        plot_response,
        plot_roc,
    )

    rng = np.random.default_rng(1)
    labels = np.repeat([1, 0], 200)
    runs = [(rng.normal(labels, 1.0), labels) for _ in range(3)]
    figures = [plot_roc({"from_scratch": runs, "fine_tuning": runs[0]})]
    vis = rng.uniform(15, 190, 400)
    pred = vis * rng.normal(1.0, 0.1, 400)
    figures.append(plot_response({"fine_tuning": pred / vis}, reco_response=rng.normal(0.95, 0.1, 400)))
    figures.append(plot_resolution_vs_pt({"fine_tuning": [(pred, vis), (pred * 1.01, vis)], "reference": (vis, vis)}))
    figures.append(plot_confusion(np.eye(6)))
    figures.append(plot_loss_curves({"fine_tuning": [[1.0, 0.8, 0.7], [1.1, 0.9, 0.6]]}, unfreeze_epoch=1))
    for fig in figures:
        ax = fig.axes[0] if fig.axes[0].get_ylabel() else fig.axes[1]
        assert ax.get_ylabel()
        assert any(a.get_xlabel() for a in fig.axes)
        plt.close(fig)
    table = metrics_table({"fine_tuning": [{"auc": 0.9}, {"auc": 0.8}], "part": {"auc": 0.95}})
    assert "| Fine-tuning | 0.85 ± 0.05 |" in table and "| ParticleTransformer | 0.95 |" in table


def test_misid_statistical_error() -> None:
    # 3 of 600 background jets pass: sqrt(3) / 600
    assert misid_statistical_error(0.005, 600) == pytest.approx(np.sqrt(3) / 600)
    # none pass: at least one jet's worth of uncertainty, never an exact zero
    assert misid_statistical_error(0.0, 200) == pytest.approx(1 / 200)
    with pytest.raises(ValueError, match="no background jets"):
        misid_statistical_error(0.1, 0)


def test_headline_rows_quote_the_counting_error_of_the_misid() -> None:
    from types import SimpleNamespace

    from tauml.studies.finetuning import headline_rows

    def run(misid: float) -> SimpleNamespace:
        metrics = {"misid_at_80": misid, "auc": 0.98, "misid_at_80_stat": misid_statistical_error(misid, 600),
                   "n_background": 600}
        return SimpleNamespace(metrics=metrics, n_trainable_parameters=10, reference={})

    one, guessing = headline_rows({"id": {"fine_tuning": [run(0.005)]}})
    assert one["mis-ID at 80 % τ efficiency"] == "0.005 ± 0.0029 (stat., 600 background jets)"
    assert "random guessing" in guessing["model"] and guessing["mis-ID at 80 % τ efficiency"] == "0.8"  # the floor
    three, _ = headline_rows({"id": {"fine_tuning": [run(0.004), run(0.005), run(0.006)]}})
    # the sample standard deviation over seeds (ddof=1): 0.001
    assert three["mis-ID at 80 % τ efficiency"] == "0.005 ± 0.001 (seeds) ± 0.0029 (stat., 600 background jets)"
