"""Physics metrics of the three tau tasks and their no-learning references (numpy and scikit-learn only).

Definitions follow ml-tau-en-reg (reference section D) and are written out in ``docs/tasks.md``:

* identification: ROC as tau efficiency (true-positive rate) vs mis-identification probability
  (false-positive rate), AUC, and P_misID at 80% efficiency;
* regression: response r = pT_pred / pT_vis, scale = median(r), resolution = IQR(r) / median(r),
  also in bins of visible pT;
* decay mode: row-normalised confusion matrix, accuracy, macro F1, and the one-vs-rest AUC averaged with
  the true-class fractions as weights.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from sklearn.metrics import roc_auc_score
from sklearn.metrics import roc_curve as _sk_roc_curve

from tauml.data.features import CHARGE_INDEX, PID_FEATURES
from tauml.data.schema import CANDIDATE_PDG_CODES
from tauml.data.truth import REDUCED_DM_NAMES

if TYPE_CHECKING:
    from tauml.data.features import JetArrays

#: Edges of the visible-pT bins of the response plots in GeV (ml-tau-en-reg, regression.yaml).
RESPONSE_PT_BINS: tuple[float, ...] = (10, 20, 30, 40, 50, 60, 70, 80, 90, 100, 125, 150, 175, 200)
#: The efficiency grid onto which ROC curves of several runs are interpolated (reference: step 0.01).
EFFICIENCY_GRID: np.ndarray = np.linspace(0.0, 1.0, 101)
N_DECAY_MODES = len(REDUCED_DM_NAMES)


def _binary_inputs(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    scores = np.asarray(scores, dtype=np.float64).ravel()
    labels = np.asarray(labels).ravel()
    if scores.shape != labels.shape:
        raise ValueError(f"scores ({scores.size}) and labels ({labels.size}) must have one entry per jet")
    if not np.all(np.isin(labels, (0, 1))):
        raise ValueError("labels must be 0 (background) or 1 (tau)")
    if labels.min(initial=1) == labels.max(initial=0) or labels.size == 0:
        raise ValueError("a ROC curve needs both tau (1) and background (0) jets; the labels hold only one class")
    if not np.all(np.isfinite(scores)):
        raise ValueError(f"{int((~np.isfinite(scores)).sum())} scores are NaN or infinite")
    return scores, labels.astype(np.int64)


# ----------------------------------------------------------------------------------------------------------
# Identification
# ----------------------------------------------------------------------------------------------------------


def roc_curve(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(efficiency, misid, thresholds)``: tau efficiency (TPR) and mis-ID probability (FPR) of the cut
    ``score >= threshold``, one point per distinct score, thresholds decreasing."""
    scores, labels = _binary_inputs(scores, labels)
    misid, efficiency, thresholds = _sk_roc_curve(labels, scores, drop_intermediate=False)
    return efficiency, misid, thresholds


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve (probability that a tau jet scores above a background jet)."""
    scores, labels = _binary_inputs(scores, labels)
    return float(roc_auc_score(labels, scores))


def misid_on_grid(scores: np.ndarray, labels: np.ndarray, grid: np.ndarray = EFFICIENCY_GRID) -> np.ndarray:
    """P_misID interpolated linearly onto tau efficiencies ``grid`` (reference D.2: FPR(TPR) on 0..1).

    Where several ROC points share one efficiency (background jets passing at a fixed signal count) the
    lowest mis-ID is kept, i.e. the tightest cut that reaches that efficiency; this makes FPR(TPR) a function.
    """
    efficiency, misid, _ = roc_curve(scores, labels)
    unique_eff, first = np.unique(efficiency, return_index=True)  # misid is non-decreasing: first = lowest
    return np.interp(np.asarray(grid, dtype=np.float64), unique_eff, misid[first])


def misid_at_efficiency(scores: np.ndarray, labels: np.ndarray, efficiency: float = 0.8) -> float:
    """P_misID at a tau efficiency (default 80%, the core paper's working point), see :func:`misid_on_grid`."""
    if not 0.0 <= efficiency <= 1.0:
        raise ValueError(f"efficiency={efficiency} must lie in [0, 1]")
    return float(misid_on_grid(scores, labels, np.array([efficiency]))[0])


def misid_statistical_error(misid: float, n_background: int) -> float:
    """Statistical uncertainty of a mis-ID rate measured on ``n_background`` background jets.

    The number of passing background jets k = misid x n_background is Poisson-distributed; its error is
    sqrt(k), taken as at least one jet so that a rate of zero is not quoted as exact:
    sqrt(max(k, 1)) / n_background.  A measured 0.005 on 600 jets is 3 jets: 0.005 ± 0.003.
    """
    if n_background <= 0:
        raise ValueError(f"n_background={n_background}: no background jets to measure a mis-ID rate on")
    return float(np.sqrt(max(misid * n_background, 1.0)) / n_background)


def mean_std_over_runs(values: Sequence[Any], ddof: int = 0) -> tuple[Any, Any]:
    """Mean and standard deviation over runs (axis 0): numbers give floats, curves give arrays.

    ``ddof=0`` as numpy's default (and the reference's bands); NaN entries are ignored.
    """
    stacked = np.asarray(values, dtype=np.float64)
    if stacked.shape[0] == 0:
        raise ValueError("no runs to average")
    with warnings.catch_warnings():  # an all-NaN column gives NaN, which is what we want
        warnings.simplefilter("ignore", RuntimeWarning)
        mean = np.nanmean(stacked, axis=0)
        std = np.nanstd(stacked, axis=0, ddof=ddof)
    if np.ndim(mean) == 0:
        return float(mean), float(std)
    return mean, std


# ----------------------------------------------------------------------------------------------------------
# Regression
# ----------------------------------------------------------------------------------------------------------


def pt_from_log_ratio(log_ratio: np.ndarray, jet_pt: np.ndarray) -> np.ndarray:
    """Predicted visible pT in GeV from the regression output ln(pT_vis / pT_jet) and the reco-jet pT [GeV]."""
    return np.exp(np.asarray(log_ratio, dtype=np.float64)) * np.asarray(jet_pt, dtype=np.float64)


def response(pred_pt: np.ndarray, true_pt: np.ndarray) -> np.ndarray:
    """r = pT_pred / pT_vis (both GeV), per jet."""
    pred_pt = np.asarray(pred_pt, dtype=np.float64).ravel()
    true_pt = np.asarray(true_pt, dtype=np.float64).ravel()
    if pred_pt.shape != true_pt.shape:
        raise ValueError(f"pred_pt ({pred_pt.size}) and true_pt ({true_pt.size}) must have one entry per jet")
    if np.any(true_pt <= 0):
        raise ValueError("true_pt must be positive (visible tau pT in GeV); select tau jets only")
    return pred_pt / true_pt


def _response_summary(r: np.ndarray) -> dict[str, float]:
    r = r[np.isfinite(r)]
    if r.size == 0:
        nan = float("nan")
        return {"n": 0, "median": nan, "q25": nan, "q75": nan, "iqr": nan, "resolution": nan, "mean": nan,
                "std": nan}
    q25, median, q75 = np.percentile(r, [25, 50, 75])
    return {"n": int(r.size), "median": float(median), "q25": float(q25), "q75": float(q75),
            "iqr": float(q75 - q25), "resolution": float((q75 - q25) / median), "mean": float(r.mean()),
            "std": float(r.std())}


def response_metrics(pred_pt: np.ndarray, true_pt: np.ndarray) -> dict[str, float]:
    """Response summary: n, median (the scale), q25, q75, IQR = q75 - q25, resolution = IQR / median,
    mean and std of r = pT_pred / pT_vis.  Non-finite responses are left out."""
    return _response_summary(response(pred_pt, true_pt))


def binned_response(
    pred_pt: np.ndarray, true_pt: np.ndarray, bins: Sequence[float] = RESPONSE_PT_BINS
) -> dict[str, np.ndarray]:
    """:func:`response_metrics` in bins of visible pT (GeV): arrays ``edges``, ``centers``, ``n``, ``median``,
    ``q25``, ``q75``, ``iqr``, ``resolution``, ``mean``, ``std`` (NaN for empty bins)."""
    edges = np.asarray(bins, dtype=np.float64)
    if edges.ndim != 1 or edges.size < 2 or np.any(np.diff(edges) <= 0):
        raise ValueError("bins must be at least two increasing edges in GeV")
    r = response(pred_pt, true_pt)
    true_pt = np.asarray(true_pt, dtype=np.float64).ravel()
    index = np.digitize(true_pt, edges) - 1
    rows = [_response_summary(r[index == i]) for i in range(edges.size - 1)]
    out = {key: np.array([row[key] for row in rows]) for key in rows[0]}
    out["edges"] = edges
    out["centers"] = 0.5 * (edges[1:] + edges[:-1])
    return out


def reco_pt_reference(jet_pt: np.ndarray, vis_pt: np.ndarray) -> dict[str, float]:
    """No-learning reference: the response of the reco-jet pT itself, pT_jet / pT_vis (both GeV)."""
    return response_metrics(jet_pt, vis_pt)


# ----------------------------------------------------------------------------------------------------------
# Decay mode
# ----------------------------------------------------------------------------------------------------------


def _class_inputs(true: np.ndarray, pred: np.ndarray, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    true = np.asarray(true).ravel().astype(np.int64)
    pred = np.asarray(pred).ravel().astype(np.int64)
    if true.shape != pred.shape:
        raise ValueError(f"true ({true.size}) and pred ({pred.size}) must have one entry per jet")
    for name, values in (("true", true), ("pred", pred)):
        if values.size and (values.min() < 0 or values.max() >= n_classes):
            raise ValueError(f"{name} classes must lie in 0..{n_classes - 1}; background jets (-1) must be removed")
    return true, pred


def confusion_matrix(
    true: np.ndarray, pred: np.ndarray, n_classes: int = N_DECAY_MODES, normalize: str | None = "true"
) -> np.ndarray:
    """``matrix[i, j]`` = jets of true class i predicted as class j.

    ``normalize``: ``"true"`` (rows sum to 1, the reference's choice), ``"pred"`` (columns), ``"all"``, or
    ``None`` (counts).  A row (column) without jets stays zero, as scikit-learn.
    """
    true, pred = _class_inputs(true, pred, n_classes)
    counts = np.bincount(true * n_classes + pred, minlength=n_classes * n_classes).reshape(n_classes, n_classes)
    counts = counts.astype(np.float64)
    if normalize is None:
        return counts
    if normalize == "true":
        total = counts.sum(axis=1, keepdims=True)
    elif normalize == "pred":
        total = counts.sum(axis=0, keepdims=True)
    elif normalize == "all":
        total = np.array(counts.sum())
    else:
        raise ValueError(f"normalize={normalize!r}; choose 'true', 'pred', 'all' or None")
    return np.divide(counts, total, out=np.zeros_like(counts), where=total > 0)


def accuracy(true: np.ndarray, pred: np.ndarray) -> float:
    """Fraction of jets whose class is predicted correctly."""
    true = np.asarray(true).ravel()
    pred = np.asarray(pred).ravel()
    if true.shape != pred.shape or true.size == 0:
        raise ValueError("true and pred must be non-empty and have one entry per jet")
    return float(np.mean(true == pred))


def per_class_scores(true: np.ndarray, pred: np.ndarray, n_classes: int = N_DECAY_MODES) -> dict[str, np.ndarray]:
    """Per-class precision, recall and F1 (NaN where undefined: no true and no predicted jet of the class)."""
    counts = confusion_matrix(true, pred, n_classes, normalize=None)
    tp = np.diag(counts)
    predicted, actual = counts.sum(axis=0), counts.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(predicted > 0, tp / predicted, 0.0)
        recall = np.where(actual > 0, tp / actual, np.nan)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    f1 = np.where(actual > 0, f1, np.nan)
    precision = np.where(actual + predicted > 0, precision, np.nan)
    return {"precision": precision, "recall": recall, "f1": f1}


def macro_f1(true: np.ndarray, pred: np.ndarray, n_classes: int = N_DECAY_MODES) -> float:
    """Unweighted mean of the per-class F1 over the classes present in the truth."""
    return float(np.nanmean(per_class_scores(true, pred, n_classes)["f1"]))


def weighted_ovr_auc(probs: np.ndarray, true: np.ndarray, names: Sequence[str] = REDUCED_DM_NAMES) -> dict[str, Any]:
    """One-vs-rest AUC per class on the class probabilities, averaged with the true-class fractions as weights.

    Returns ``weighted_auc``, ``per_class_auc`` (NaN for skipped classes), ``weights`` and ``skipped`` (class
    names) with a ``note`` saying which classes were left out because they are absent from the truth (or are
    all of it, where one-vs-rest is undefined).
    """
    probs = np.asarray(probs, dtype=np.float64)
    true = np.asarray(true).ravel().astype(np.int64)
    if probs.ndim != 2 or probs.shape[0] != true.size:
        raise ValueError(f"probs must be (n_jets, n_classes) with n_jets = {true.size}; got {probs.shape}")
    n_classes = probs.shape[1]
    _class_inputs(true, true, n_classes)
    fractions = np.bincount(true, minlength=n_classes) / max(true.size, 1)
    per_class = np.full(n_classes, np.nan)
    skipped = []
    for c in range(n_classes):
        if 0.0 < fractions[c] < 1.0:
            per_class[c] = roc_auc_score(true == c, probs[:, c])
        else:
            skipped.append(names[c] if c < len(names) else str(c))
    used = np.isfinite(per_class)
    if not used.any():
        raise ValueError("one-vs-rest AUC needs at least two decay-mode classes in the truth")
    weights = np.where(used, fractions, 0.0)
    weighted = float(np.sum(weights * np.nan_to_num(per_class)) / weights.sum())
    note = f"classes absent from the truth, skipped: {', '.join(skipped)}" if skipped else ""
    return {"weighted_auc": weighted, "per_class_auc": per_class, "weights": weights / weights.sum(),
            "skipped": skipped, "note": note}


def decay_mode_from_counting(pdg: np.ndarray, charge: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """No-learning decay-mode reference from counting the jet's candidates (rule in ``docs/tasks.md``).

    ``pdg`` ``(n_jets, n_candidates)`` candidate types (11, 13, 22, 211, 130; the sign is ignored),
    ``charge`` the candidate charges, ``mask`` boolean (True = real candidate).  Charged prongs are the
    candidates with a nonzero charge (charged hadrons, electrons and muons); photons estimate the pi0s.
    1 charged: 0 photons -> h± (0), 1-2 -> h±π0 (1), >=3 -> h±≥2π0 (2); 3 charged: 0 photons -> 3h (3),
    >=1 -> 3h≥1π0 (4); any other number of charged candidates -> rare (5).
    """
    pdg = np.abs(np.asarray(pdg)).astype(np.int64)
    charge = np.asarray(charge)
    mask = np.asarray(mask)
    if mask.dtype != bool:
        raise TypeError(f"mask must be boolean (True = real candidate), got {mask.dtype}")
    if pdg.shape != mask.shape or charge.shape != mask.shape:
        raise ValueError(f"pdg {pdg.shape}, charge {charge.shape} and mask {mask.shape} must have the same shape")
    unknown = mask & ~np.isin(pdg, CANDIDATE_PDG_CODES)
    if unknown.any():
        raise ValueError(f"candidate pdg codes {np.unique(pdg[unknown]).tolist()} are not among {CANDIDATE_PDG_CODES}")
    n_charged = np.sum(mask & (charge != 0), axis=1)
    n_photons = np.sum(mask & (pdg == 22), axis=1)
    one_prong = np.select([n_photons == 0, n_photons <= 2], [0, 1], 2)
    three_prong = np.where(n_photons == 0, 3, 4)
    return np.select([n_charged == 1, n_charged == 3], [one_prong, three_prong], 5).astype(np.int64)


def candidates_from_features(features: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Candidate pdg codes and charges back from the 10 per-constituent features (0 where padded)."""

    pid = np.argmax(features[..., PID_FEATURES], axis=-1)
    pdg = np.where(mask, np.asarray(CANDIDATE_PDG_CODES)[pid], 0)
    charge = np.where(mask, np.rint(features[..., CHARGE_INDEX]), 0).astype(np.int64)
    return pdg, charge


def counting_decay_modes(features: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The no-learning decay mode of each jet from its 10 per-constituent features and boolean mask:
    :func:`decay_mode_from_counting` on :func:`candidates_from_features`."""
    return decay_mode_from_counting(*candidates_from_features(features, mask), mask)


# ----------------------------------------------------------------------------------------------------------
# Headline numbers per task
# ----------------------------------------------------------------------------------------------------------


def evaluate_task(task: str, outputs: np.ndarray, arrays: JetArrays) -> dict[str, Any]:
    """Headline metrics of ``task`` for predictions ``outputs`` on the jets of ``arrays`` (one row per jet).

    ``outputs``: id, the tau probability (n_jets,); reg, the predicted ln(pT_vis / pT_jet) (n_jets,) (only
    tau jets are used); dm, class probabilities (n_jets, 6) (only tau jets are used).
    id: ``auc``, ``misid_at_80``, its statistical error ``misid_at_80_stat`` and the number of background
    jets ``n_background``; reg: ``median``, ``iqr``, ``resolution``, ``mean``, ``std``, ``n`` of the
    response; dm: ``accuracy``, ``weighted_auc``, ``macro_f1``, ``confusion`` (row-normalised), ``note``.
    """
    outputs = np.asarray(outputs)
    if outputs.shape[0] != len(arrays):
        raise ValueError(f"outputs have {outputs.shape[0]} rows but there are {len(arrays)} jets")
    taus = np.asarray(arrays.is_tau) == 1
    if task == "id":
        return id_metrics(outputs.reshape(len(arrays)), arrays.is_tau)
    if task == "reg":
        return response_metrics(pt_from_log_ratio(outputs.reshape(len(arrays))[taus], arrays.jet_pt[taus]),
                                arrays.gen_vis_pt[taus])
    if task == "dm":
        return decay_mode_metrics(outputs[taus], np.asarray(arrays.dm)[taus])
    raise ValueError(f"unknown task {task!r}; choose from id, reg, dm")


def id_metrics(scores: np.ndarray, is_tau: np.ndarray) -> dict[str, Any]:
    """Identification's headline numbers from the tau scores and truth of every jet (:func:`evaluate_task`)."""
    misid = misid_at_efficiency(scores, is_tau, 0.8)
    n_background = int((np.asarray(is_tau) != 1).sum())
    return {"auc": auc(scores, is_tau), "misid_at_80": misid,
            "misid_at_80_stat": misid_statistical_error(misid, n_background), "n_background": n_background}


def decay_mode_metrics(probs: np.ndarray, true: np.ndarray) -> dict[str, Any]:
    """Decay-mode classification's headline numbers from the class probabilities and true modes of the tau jets."""
    pred = probs.argmax(axis=1)
    auc_result = weighted_ovr_auc(probs, true)
    return {"accuracy": accuracy(true, pred), "weighted_auc": auc_result["weighted_auc"],
            "macro_f1": macro_f1(true, pred, probs.shape[1]),
            "confusion": confusion_matrix(true, pred, probs.shape[1]), "note": auc_result["note"]}
