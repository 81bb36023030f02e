"""Generator-level tau truth: hadronic taus, their visible 4-vector and their decay mode.

The rules, with their sources, are written down in ``docs/truth.md``.  In short:

* A *hadronic tau* is the last copy of a tau lepton in the event record whose decay products contain no
  electron or muon.
* Its *visible 4-vector* is the sum of its decay products except the neutrinos.
* Its *decay mode* counts charged hadrons (h) and neutral hadrons (pi0, K0, K0S, K0L, n) among its
  descendants, descending through short-lived intermediate hadrons (rho, a1, omega, eta, K* ...):
  code = 5 * (n_charged - 1) + min(n_neutral, 4) for 1, 2 and 3 prongs (0..14, as the Fu(tau)ure ntuples),
  15 = rare (any other visible particle, e.g. a photon from eta -> gamma gamma or omega -> pi0 gamma,
  or more than three prongs), 16 = leptonic, -1 = no tau.
  ``rule="direct"`` instead counts only the tau's direct daughters, mapping every other particle to rare,
  which is the rule of the Fu(tau)ure ntupelizer (ml-tau-en-reg); both are available for comparison.
* The six reduced classes are [h+-, h+- pi0, h+- >=2pi0, h+-h-+h+-, h+-h-+h+- >=1pi0, rare]
  (``reduce_decay_mode``), following ml-tau-en-reg's ``get_reduced_decaymodes``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

#: Decay-mode code of a leptonic tau decay (dropped from the datasets) and of a jet with no tau.
DM_LEPTONIC = 16
DM_RARE = 15
DM_NONE = -1

#: Names of the six reduced decay-mode classes, index = class.
REDUCED_DM_NAMES: tuple[str, ...] = ("h±", "h±π0", "h±≥2π0", "h±h∓h±", "h±h∓h±≥1π0", "rare")
#: The same as LaTeX for plot labels.
REDUCED_DM_LATEX: tuple[str, ...] = (
    r"$h^\pm$",
    r"$h^\pm\pi^0$",
    r"$h^\pm{\geq}2\pi^0$",
    r"$h^\pm h^\mp h^\pm$",
    r"$h^\pm h^\mp h^\pm{\geq}1\pi^0$",
    "rare",
)

#: Reduced-class fractions among hadronic tau decays from the PDG 2024 branching fractions (docs/truth.md):
#: h 11.51 %, h pi0 25.93 %, h 2pi0 9.48 % + h >=3pi0 ~1.2 %, 3h 9.80 %, 3h >=1pi0 ~4.8 %, each divided by the
#: hadronic total 100 - 17.82 (e) - 17.39 (mu) = 64.79 %; "rare" is the remainder (K0, eta, omega modes...).
PDG_REDUCED_FRACTIONS: tuple[float, ...] = (0.1777, 0.4002, 0.1648, 0.1513, 0.0741, 0.0319)

NEUTRINOS = frozenset({12, 14, 16})
LEPTONS = frozenset({11, 13})
#: Hadrons at which the descent stops: they leave the detector or decay far from the tau (c tau > 1 cm), or
#: are the pi0, which the classification counts as such.
CHARGED_HADRONS = frozenset({211, 321, 2212, 3112, 3222, 3312, 3334})
NEUTRAL_HADRONS = frozenset({111, 130, 310, 311, 2112, 3122, 3322})
STOP_AT = CHARGED_HADRONS | NEUTRAL_HADRONS | NEUTRINOS | LEPTONS | {22}

# Full code -> reduced class index, as ml-tau-en-reg's get_reduced_decaymodes: 0->0, 1->1, 2,3,4->2,
# 5->10(3), 6..9->11(4), 10->10(3), 11..14->11(4), 15->15(5), -1 -> 15 (5).
_REDUCED = {0: 0, 1: 1, 2: 2, 3: 2, 4: 2, 5: 3, 6: 4, 7: 4, 8: 4, 9: 4, 10: 3, 11: 4, 12: 4, 13: 4, 14: 4, 15: 5}


def decay_mode_from_products(pdg_ids: Sequence[int]) -> int:
    """Decay-mode code (0..16) from the PDG ids of a tau's decay products (neutrinos included or not).

    The products must already be resolved to the particles the rule counts (see :func:`tau_decay_products`).
    Particles outside {neutrinos, e, mu, charged hadrons, neutral hadrons} make the decay rare (15).
    """
    n_charged = n_neutral = 0
    rare = False
    for pdg in pdg_ids:
        a = abs(int(pdg))
        if a in NEUTRINOS:
            continue
        if a in LEPTONS:
            return DM_LEPTONIC
        if a in CHARGED_HADRONS:
            n_charged += 1
        elif a in NEUTRAL_HADRONS:
            n_neutral += 1
        else:
            rare = True
    if rare or n_charged not in (1, 2, 3):
        return DM_RARE
    return 5 * (n_charged - 1) + min(n_neutral, 4)


def reduce_decay_mode(code: int | np.ndarray) -> int | np.ndarray:
    """Map decay-mode codes (-1..15) to the six reduced classes 0..5; background (-1) maps to -1.

    Leptonic decays (16) have no class and raise ``ValueError``.
    """
    arr = np.asarray(code)
    if np.any(arr == DM_LEPTONIC):
        raise ValueError("leptonic tau decays (code 16) have no reduced hadronic class; drop them first")
    if np.any((arr < -1) | (arr > 15)):
        raise ValueError(f"decay-mode codes must lie in -1..15, got {np.unique(arr[(arr < -1) | (arr > 15)])}")
    lut = np.array([_REDUCED[i] for i in range(16)] + [-1])  # index -1 -> last entry
    out = lut[arr]
    return int(out) if np.ndim(code) == 0 else out


def tau_decay_products(
    index: int,
    pdg: np.ndarray,
    daughter1: np.ndarray,
    daughter2: np.ndarray,
    rule: str = "descendants",
) -> list[int]:
    """Indices of the decay products of the particle at ``index`` in a Pythia-style event record.

    ``rule="descendants"`` descends through intermediate hadrons until it reaches a particle in
    :data:`STOP_AT` or a particle with no daughters; ``rule="direct"`` returns the direct daughters.
    Daughters follow Pythia's convention: the range ``daughter1..daughter2`` (or the single
    ``daughter1`` when ``daughter2`` is 0 or smaller than ``daughter1``).
    """
    if rule not in ("descendants", "direct"):
        raise ValueError(f"rule={rule!r} must be 'descendants' or 'direct'")
    products: list[int] = []
    stack = _daughters(index, daughter1, daughter2)
    while stack:
        i = stack.pop()
        children = _daughters(i, daughter1, daughter2)
        if rule == "direct" or abs(int(pdg[i])) in STOP_AT or not children:
            products.append(i)
        else:
            stack.extend(children)
    return sorted(products)


def _daughters(i: int, daughter1: np.ndarray, daughter2: np.ndarray) -> list[int]:
    d1, d2 = int(daughter1[i]), int(daughter2[i])
    if d1 <= 0:
        return []
    if d2 < d1:
        return [d1]
    return list(range(d1, d2 + 1))


def last_copy_taus(pdg: np.ndarray, daughter1: np.ndarray, daughter2: np.ndarray) -> list[int]:
    """Indices of the last copies of tau leptons: taus none of whose daughters is a tau."""
    taus = []
    for i in np.flatnonzero(np.abs(pdg) == 15):
        children = _daughters(int(i), daughter1, daughter2)
        if children and not any(abs(int(pdg[c])) == 15 for c in children):
            taus.append(int(i))
    return taus
