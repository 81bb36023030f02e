"""What a network is compared with: the no-learning references of the tau tasks, and the arrays the plots need.

* visible-pT regression: the reco-jet pT itself (:func:`tauml.evaluation.metrics.reco_pt_reference`);
* decay modes: counting charged and neutral candidates (:func:`tauml.evaluation.metrics.counting_decay_modes`);
* identification has no such reference here.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tauml.data.features import JetArrays
from tauml.evaluation.metrics import confusion_matrix, counting_decay_modes, reco_pt_reference


def no_learning_reference(task: str, jets: JetArrays) -> dict[str, Any]:
    """What needs no training: the reco-jet pT as the visible-pT estimate, and counting candidates for the decay
    mode.  (Tau identification has no such reference here.)"""
    taus = jets.is_tau == 1
    if task == "reg":
        return reco_pt_reference(jets.jet_pt[taus], jets.gen_vis_pt[taus])
    if task == "dm":
        counted = counting_decay_modes(jets.features[taus], jets.mask[taus])
        true = jets.dm[taus]
        return {"accuracy": float(np.mean(counted == true)), "confusion": confusion_matrix(true, counted, 6)}
    return {}


def prediction_arrays(task: str, predictions: np.ndarray, jets: JetArrays) -> dict[str, np.ndarray]:
    """The arrays the plots need, for the test jets."""
    out = {"is_tau": jets.is_tau, "jet_pt": jets.jet_pt}
    taus = jets.is_tau == 1
    if task == "id":
        out["score"] = predictions
    elif task == "reg":
        out["pred_pt"] = np.exp(predictions[taus]) * jets.jet_pt[taus]
        out["vis_pt"] = jets.gen_vis_pt[taus]
        out["reco_pt"] = jets.jet_pt[taus]
    else:
        out["probs"] = predictions[taus]
        out["dm"] = jets.dm[taus]
        out["counting"] = counting_decay_modes(jets.features[taus], jets.mask[taus])
    return {k: np.asarray(v) for k, v in out.items()}

