"""The joint analysis's metrics (arXiv:2401.13536, section VI and appendix): scores and labels in, numbers out.

* background rejection 1 / eps_B at a signal efficiency eps_S (the paper's 90 %): the ROC's background efficiency
  is interpolated linearly onto a uniform grid of 10 000 signal efficiencies and read at index
  ``int(0.9 * 10000) - 1``, as the paper's public code (github.com/mvigl/Finetune_hep); where several ROC points
  share one signal efficiency the lowest background efficiency is kept (the tightest cut that reaches it);
* the significance improvement characteristic SIC = eps_S / sqrt(eps_B) at that point, and its maximum;
* AUC.

A background efficiency of zero (no background event passes in a finite test set) is replaced by that of one
event, 1 / n_background (weighted: the smallest background weight over the total), so a rejection is never
infinite but a lower bound; ``rejection_limited`` says when that happened.  Unweighted (every event counts one, the
paper's choice) by default; with ``weights`` (cross section per event) the physical ROC.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.metrics import roc_auc_score
from sklearn.metrics import roc_curve as _sk_roc_curve

#: The paper's grid of signal efficiencies and working point.
N_GRID = 10_000
WORKING_POINT = 0.9


def _inputs(scores: np.ndarray, labels: np.ndarray, weights: np.ndarray | None):
    scores = np.asarray(scores, dtype=np.float64).ravel()
    labels = np.asarray(labels).ravel()
    if scores.shape != labels.shape:
        raise ValueError(f"scores ({scores.size}) and labels ({labels.size}) must have one entry per event")
    if not np.all(np.isin(labels, (0, 1))):
        raise ValueError("labels must be 0 (background) or 1 (signal)")
    if labels.size == 0 or labels.min() == labels.max():
        raise ValueError("a ROC curve needs both signal (1) and background (0) events; the labels hold one class")
    if not np.all(np.isfinite(scores)):
        raise ValueError(f"{int((~np.isfinite(scores)).sum())} scores are NaN or infinite")
    if weights is not None:
        weights = np.asarray(weights, dtype=np.float64).ravel()
        if weights.shape != scores.shape or not np.all(np.isfinite(weights)) or np.any(weights <= 0):
            raise ValueError("weights must be positive and finite, one per event")
    return scores, labels.astype(np.int64), weights


def signal_background_efficiency(scores: np.ndarray, labels: np.ndarray,
                                 weights: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(eps_S, eps_B) of the cut ``score >= t`` for every distinct score, eps_S non-decreasing."""
    scores, labels, weights = _inputs(scores, labels, weights)
    eps_b, eps_s, _ = _sk_roc_curve(labels, scores, sample_weight=weights, drop_intermediate=False)
    return eps_s, eps_b


def _background_floor(labels: np.ndarray, weights: np.ndarray | None) -> float:
    background = labels == 0
    if weights is None:
        return 1.0 / int(background.sum())
    return float(weights[background].min() / weights[background].sum())


def background_efficiency_on_grid(scores: np.ndarray, labels: np.ndarray, weights: np.ndarray | None = None,
                                  n_grid: int = N_GRID) -> tuple[np.ndarray, np.ndarray]:
    """(signal-efficiency grid, eps_B on it): ``np.linspace(0, 1, n_grid)`` and the interpolated eps_B."""
    eps_s, eps_b = signal_background_efficiency(scores, labels, weights)
    unique_s, first = np.unique(eps_s, return_index=True)  # eps_B is non-decreasing: first = lowest
    grid = np.linspace(0.0, 1.0, n_grid)
    return grid, np.interp(grid, unique_s, eps_b[first])


def working_point_index(efficiency: float = WORKING_POINT, n_grid: int = N_GRID) -> int:
    """The grid index the paper reads a working point at: ``int(efficiency * n_grid) - 1``."""
    if not 0.0 < efficiency <= 1.0:
        raise ValueError(f"efficiency={efficiency} must lie in (0, 1]")
    return int(efficiency * n_grid) - 1


def event_metrics(scores: np.ndarray, labels: np.ndarray, weights: np.ndarray | None = None,
                  efficiency: float = WORKING_POINT) -> dict[str, Any]:
    """AUC, background rejection and SIC at ``efficiency``, the maximal SIC (over eps_S >= 0.1), the counts."""
    scores, labels, weights = _inputs(scores, labels, weights)
    grid, eps_b = background_efficiency_on_grid(scores, labels, weights)
    floor = _background_floor(labels, weights)
    i = working_point_index(efficiency)
    limited = bool(eps_b[i] < floor)
    eps_b_wp = max(float(eps_b[i]), floor)
    usable = grid >= 0.1
    sic = grid[usable] / np.sqrt(np.maximum(eps_b[usable], floor))
    return {
        "auc": float(roc_auc_score(labels, scores, sample_weight=weights)),
        "signal_efficiency": float(grid[i]),
        "background_efficiency": eps_b_wp,
        "rejection": 1.0 / eps_b_wp,
        "rejection_limited": limited,
        "sic": float(grid[i] / np.sqrt(eps_b_wp)),
        "max_sic": float(sic.max()),
        "n_signal": int((labels == 1).sum()),
        "n_background": int((labels == 0).sum()),
    }


def scalar_drift(scores: np.ndarray, jet_labels: np.ndarray, reference: dict[str, Any] | None = None,
                 sign_free: bool = False) -> dict[str, Any]:
    """How well a learned per-jet scalar still tags the pretext class (the paper's Table IV): its per-jet AUC and
    rejection at 90 % efficiency, and the ratio of that rejection to the pretext tagger's (``reference``).
    ``sign_free`` (from scratch: the scalar's sign is arbitrary) takes the better of S and -S."""
    scores = np.asarray(scores, dtype=np.float64)
    result = event_metrics(scores, jet_labels)
    if sign_free:
        flipped = event_metrics(-scores, jet_labels)
        if flipped["auc"] > result["auc"]:
            result = flipped
    out = {"jet_auc": result["auc"], "jet_rejection": result["rejection"]}
    if reference is not None:
        out["rejection_ratio"] = result["rejection"] / reference["jet_rejection"]
    return out


__all__ = ["N_GRID", "WORKING_POINT", "background_efficiency_on_grid", "event_metrics", "scalar_drift",
           "signal_background_efficiency", "working_point_index"]
