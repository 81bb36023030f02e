"""What a network is compared with: the no-learning references of the tau tasks, and the arrays the plots need.

* visible-pT regression: the reco-jet pT itself (:func:`tauml.evaluation.metrics.reco_pt_reference`);
* decay modes: counting charged and neutral candidates (:func:`tauml.evaluation.metrics.counting_decay_modes`);
* identification has no such reference here; what a network must beat there is random guessing
  (:data:`RANDOM_GUESSING_ID`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tauml.data.features import JetArrays
from tauml.evaluation.metrics import (
    confusion_matrix,
    counting_decay_modes,
    decay_mode_metrics,
    id_metrics,
    pt_from_log_ratio,
    reco_pt_reference,
    response_metrics,
)

#: Tau identification has no no-learning reference in tauml; the floor is random guessing.  A score that does not
#: depend on the jet passes the same fraction of quark jets as of tau jets at every cut: a mis-ID rate of 0.8 at
#: 80 % tau efficiency, and an AUC of 0.5.
RANDOM_GUESSING_ID: dict[str, float] = {"misid_at_80": 0.8, "auc": 0.5}
#: The sentence the tables and the fine-tuning panel show in place of an identification reference.
NO_ID_REFERENCE = ("no-learning reference: none for identification — random guessing gives mis-ID = 0.8 at 80 % "
                   "efficiency (AUC 0.5)")


def no_learning_reference(task: str, jets: JetArrays) -> dict[str, Any]:
    """What needs no training: the reco-jet pT as the visible-pT estimate, and counting candidates for the decay
    mode.  (Tau identification has no such reference here.)"""
    taus = jets.is_tau == 1
    if task == "reg":
        return reco_pt_reference(jets.jet_pt[taus], jets.gen_vis_pt[taus])
    if task == "dm":
        return _counting_reference(counting_decay_modes(jets.features[taus], jets.mask[taus]), jets.dm[taus])
    return {}


def _counting_reference(counted: np.ndarray, true: np.ndarray) -> dict[str, Any]:
    return {"accuracy": float(np.mean(counted == true)), "confusion": confusion_matrix(true, counted, 6)}


def prediction_arrays(task: str, predictions: np.ndarray, jets: JetArrays) -> dict[str, np.ndarray]:
    """The arrays the plots need, for the test jets."""
    out = {"is_tau": jets.is_tau, "jet_pt": jets.jet_pt}
    taus = jets.is_tau == 1
    if task == "id":
        out["score"] = predictions
    elif task == "reg":
        out["pred_pt"] = pt_from_log_ratio(predictions[taus], jets.jet_pt[taus])
        out["vis_pt"] = jets.gen_vis_pt[taus]
        out["reco_pt"] = jets.jet_pt[taus]
    else:
        out["probs"] = predictions[taus]
        out["dm"] = jets.dm[taus]
        out["counting"] = counting_decay_modes(jets.features[taus], jets.mask[taus])
    return {k: np.asarray(v) for k, v in out.items()}


def metrics_from_predictions(task: str, arrays: dict[str, np.ndarray]) -> dict[str, Any]:
    """:func:`tauml.evaluation.metrics.evaluate_task`'s metrics from :func:`prediction_arrays` (the same numbers):
    what an evaluation that runs chunk by chunk computes from the concatenated arrays of its chunks."""
    if task == "id":
        return id_metrics(arrays["score"], arrays["is_tau"])
    if task == "reg":
        return response_metrics(arrays["pred_pt"], arrays["vis_pt"])
    if task == "dm":
        return decay_mode_metrics(arrays["probs"], arrays["dm"])
    raise ValueError(f"unknown task {task!r}; choose from id, reg, dm")


def reference_from_predictions(task: str, arrays: dict[str, np.ndarray]) -> dict[str, Any]:
    """:func:`no_learning_reference` from :func:`prediction_arrays` (the same numbers)."""
    if task == "reg":
        return reco_pt_reference(arrays["reco_pt"], arrays["vis_pt"])
    if task == "dm":
        return _counting_reference(arrays["counting"], arrays["dm"])
    return {}
