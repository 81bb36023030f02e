"""Generation quality: the unigram baseline of next-token prediction, and distances between jet samples.

* :func:`unigram_perplexity`: the no-learning reference of the backbone's perplexity;
* :func:`jet_observables`, :func:`observable_distances`, :func:`generation_distances`: jet-level observables
  (multiplicity, mass, constituent pT and angles, particle-type fractions) and their 1-d Wasserstein distances
  between real, decoded (tokenizer round trip) and generated jets.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from scipy.stats import wasserstein_distance

from tauml.config import FeatureConfig
from tauml.data.features import PID_NAMES, inverse_transform
from tauml.models.vqvae import PAD_ID, START_ID

#: name -> (axis label with units, per-jet or per-constituent, log-spaced bins)
OBSERVABLES: dict[str, tuple[str, str, bool]] = {
    "multiplicity": ("Number of constituents", "jet", False),
    "jet_mass": (r"Jet mass $m_\mathrm{jet}$ [GeV]", "jet", False),
    "jet_pt": (r"Jet $p_T$ [GeV]", "jet", False),
    "constituent_pt": (r"Constituent $p_T$ [GeV]", "constituent", True),
    "deta": (r"Constituent $\Delta\eta$ to the jet axis", "constituent", False),
    "dphi": (r"Constituent $\Delta\phi$ to the jet axis [rad]", "constituent", False),
}


#: The unit of each observable's distance (:func:`observable_distances`).
DISTANCE_UNITS: dict[str, str] = {
    "multiplicity": "constituents", "jet_mass": "GeV", "jet_pt": "GeV", "constituent_pt": "GeV",
    "deta": "–", "dphi": "rad", "pid_fractions": "fraction",
}


def unigram_perplexity(
    train_tokens: torch.Tensor, train_mask: torch.Tensor, val_tokens: torch.Tensor, val_mask: torch.Tensor,
    vocab_size: int | None = None,
) -> float:
    """Perplexity on the validation targets of the unigram distribution of the training targets.

    The no-learning baseline of next-token prediction: every target (codes and STOP) is predicted with the
    frequency it has among the training targets, with add-one smoothing over the ``vocab_size - 2`` tokens
    that can be targets (all but PAD and START).  ``vocab_size`` defaults to the largest token id + 1.
    """
    train_targets = torch.as_tensor(train_tokens)[:, 1:][torch.as_tensor(train_mask)[:, 1:]].long()
    val_targets = torch.as_tensor(val_tokens)[:, 1:][torch.as_tensor(val_mask)[:, 1:]].long()
    if len(train_targets) == 0 or len(val_targets) == 0:
        raise ValueError("no real target tokens in the training or the validation sequences")
    largest = int(max(train_targets.max(), val_targets.max()))
    vocab_size = largest + 1 if vocab_size is None else vocab_size
    if largest >= vocab_size:
        raise ValueError(f"token id {largest} does not fit vocab_size={vocab_size}")
    counts = torch.bincount(train_targets, minlength=vocab_size).double()
    counts[[PAD_ID, START_ID]] = 0.0
    possible = torch.ones(vocab_size, dtype=torch.float64)
    possible[[PAD_ID, START_ID]] = 0.0
    probabilities = (counts + possible) / (counts.sum() + possible.sum())
    return float(torch.exp(-torch.log(probabilities[val_targets]).mean()))


def jet_observables(features: Any, mask: Any, feature_config: FeatureConfig | None = None) -> dict[str, np.ndarray]:
    """Physics observables of jets given as transformed features ``(n_jets, P, 10)`` and a boolean mask ``(n_jets, P)``.

    Per jet: ``multiplicity``; ``jet_mass`` and ``jet_pt`` [GeV] of the constituent sum, each constituent
    placed at ``eta = deta``, ``phi = dphi`` around an axis at (0, 0) (a jet's mass and pT do not depend on
    where its axis points).  Per real constituent: ``constituent_pt`` [GeV], ``deta``, ``dphi`` [rad].
    ``pid_fractions``: the share of each particle type (``PID_NAMES``) among all constituents.
    """
    features, mask = numpy_array(features).astype(np.float64), numpy_array(mask)
    if mask.dtype != bool:
        raise TypeError(f"mask must be boolean (True = real constituent), got {mask.dtype}")
    if features.ndim != 3 or features.shape[:2] != mask.shape:
        raise ValueError(f"features {features.shape} must be (n_jets, P, 10) with mask (n_jets, P); got mask {mask.shape}")
    physical = inverse_transform(features, feature_config or FeatureConfig())
    pt, eta, phi = (np.where(mask, physical[k], 0.0) for k in ("pt", "deta", "dphi"))
    mass = np.where(mask, np.clip(physical["mass"], 0.0, None), 0.0)
    px, py, pz = pt * np.cos(phi), pt * np.sin(phi), pt * np.sinh(eta)
    energy = np.where(mask, np.sqrt(px**2 + py**2 + pz**2 + mass**2), 0.0)
    jet = [a.sum(axis=1) for a in (px, py, pz, energy)]
    jet_mass = np.sqrt(np.clip(jet[3] ** 2 - jet[0] ** 2 - jet[1] ** 2 - jet[2] ** 2, 0.0, None))
    pid = physical["pid"][mask]
    counts = np.bincount(pid, minlength=len(PID_NAMES)).astype(np.float64)
    return {
        "multiplicity": mask.sum(axis=1),
        "jet_mass": jet_mass,
        "jet_pt": np.hypot(jet[0], jet[1]),
        "constituent_pt": physical["pt"][mask],
        "deta": physical["deta"][mask],
        "dphi": physical["dphi"][mask],
        "pid_fractions": counts / max(counts.sum(), 1.0),
    }


def numpy_array(array: Any) -> np.ndarray:
    """A numpy array of a tensor (detached, on the CPU) or of anything array-like."""
    if hasattr(array, "detach"):
        return array.detach().cpu().numpy()
    return np.asarray(array)


def observable_distances(observables: dict[str, np.ndarray], reference: dict[str, np.ndarray]) -> dict[str, float]:
    """How far the distributions of two jet samples lie apart, per observable (both from :func:`jet_observables`).

    Per-jet and per-constituent observables: the Wasserstein-1 (earth mover's) distance, in the observable's
    units (:data:`DISTANCE_UNITS`): the average shift that turns one distribution into the other.  Particle
    types: the total-variation distance ``sum |f - f_ref| / 2`` of the type fractions (0 = equal, 1 = disjoint).
    Two finite samples of the same distribution are not at distance 0: compare with two halves of the real jets.
    """
    distances = {name: float(wasserstein_distance(observables[name], reference[name])) for name in OBSERVABLES}
    distances["pid_fractions"] = float(0.5 * np.abs(observables["pid_fractions"] - reference["pid_fractions"]).sum())
    return distances


def generation_distances(real: tuple[Any, Any], decoded: tuple[Any, Any], generated: tuple[Any, Any],
                         feature_config: FeatureConfig | None = None) -> dict[str, dict[str, float]]:
    """Where the distance between generated and real jets comes from, per observable (:func:`observable_distances`).

    ``real``, ``decoded`` (the same real jets after the tokenizer's round trip) and ``generated`` are
    ``(features, mask)`` pairs.  The real jets are cut into halves A and B; returns four sets of distances:
    ``"perfect: real B vs real A"`` (the floor set by finite samples), ``"tokenizer: decoded B vs real A"``,
    ``"GPT: generated vs decoded A"`` (at most as many generated jets as a half) and
    ``"both: generated vs real A"``.
    """
    real_features, real_mask = (numpy_array(a) for a in real)
    decoded_features, decoded_mask = (numpy_array(a) for a in decoded)
    half = len(real_mask) // 2
    a, b = slice(0, half), slice(half, 2 * half)
    n_generated = min(half, len(numpy_array(generated[1])))

    def observables(features: np.ndarray, mask: np.ndarray, part: slice) -> dict[str, np.ndarray]:
        return jet_observables(features[part], mask[part], feature_config)

    real_a, real_b = observables(real_features, real_mask, a), observables(real_features, real_mask, b)
    generated_obs = observables(numpy_array(generated[0]), numpy_array(generated[1]), slice(0, n_generated))
    return {
        "perfect: real B vs real A": observable_distances(real_b, real_a),
        "tokenizer: decoded B vs real A": observable_distances(observables(decoded_features, decoded_mask, b), real_a),
        "GPT: generated vs decoded A": observable_distances(generated_obs,
                                                            observables(decoded_features, decoded_mask, a)),
        "both: generated vs real A": observable_distances(generated_obs, real_a),
    }
