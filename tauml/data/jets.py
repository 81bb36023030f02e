"""Jet clustering with fastjet (many events in one call) and one-to-one angular matching.

* e+e-: generalised kT for e+e- (``ee_genkt_algorithm``), p = -1, R = 0.4, as the Fu(tau)ure ntuples.
* pp: anti-kT, R = 0.8, as JetClass.

Jets come back sorted by pT, descending, with the indices of their constituents in the input.
"""

from __future__ import annotations

import awkward as ak
import fastjet
import numba
import numpy as np

from tauml.utils import quiet_stdout

EE_JET_R = 0.4
EE_JET_P = -1.0
PP_JET_R = 0.8
_banner_printed = False


def cluster(
    particles: ak.Array,
    algorithm: str = "ee_genkt",
    radius: float = EE_JET_R,
    p: float = EE_JET_P,
    min_pt: float = 0.0,
) -> tuple[ak.Array, ak.Array]:
    """Cluster ``particles`` (events x var x {px, py, pz, E}, GeV) into jets.

    Returns ``(jets, constituent_index)``: jets as events x var x {px, py, pz, E} sorted by pT (descending),
    and for each jet the indices of its constituents in the event's particle list.
    """
    if algorithm == "ee_genkt":
        definition = fastjet.JetDefinition(fastjet.ee_genkt_algorithm, radius, p)
    elif algorithm == "antikt":
        definition = fastjet.JetDefinition(fastjet.antikt_algorithm, radius)
    else:
        raise ValueError(f"algorithm={algorithm!r} must be 'ee_genkt' or 'antikt'")
    inputs = ak.zip({k: ak.values_astype(particles[k], np.float64) for k in ("px", "py", "pz", "E")})
    if ak.sum(ak.num(inputs, axis=1)) == 0:
        empty = ak.Array([[] for _ in range(len(inputs))])
        return ak.zip({k: ak.values_astype(empty, np.float64) for k in ("px", "py", "pz", "E")}), \
            ak.Array([[] for _ in range(len(inputs))])
    global _banner_printed
    if not _banner_printed:  # FastJet prints its banner once per process, from C++: keep notebooks clean
        with quiet_stdout():
            fastjet.ClusterSequence(inputs[:1], definition).inclusive_jets()
        _banner_printed = True
    sequence = fastjet.ClusterSequence(inputs, definition)
    jets = sequence.inclusive_jets(min_pt=min_pt)
    index = sequence.constituent_index(min_pt=min_pt)
    order = ak.argsort(np.hypot(jets.px, jets.py), axis=1, ascending=False)
    jets = ak.zip({k: jets[k][order] for k in ("px", "py", "pz", "E")})
    return jets, index[order]


def eta_phi(px: ak.Array, py: ak.Array, pz: ak.Array) -> tuple[ak.Array, ak.Array]:
    """Pseudorapidity and azimuth; a particle along the beam gets |eta| = 1e3 instead of infinity."""
    pt = np.hypot(px, py)
    eta = np.arcsinh(pz / np.maximum(pt, 1e-9))
    return np.minimum(np.maximum(eta, -1e3), 1e3), np.arctan2(py, px)


def delta_r(eta1: np.ndarray, phi1: np.ndarray, eta2: np.ndarray, phi2: np.ndarray) -> np.ndarray:
    dphi = (phi1 - phi2 + np.pi) % (2 * np.pi) - np.pi
    return np.hypot(eta1 - eta2, dphi)


def match(
    eta_a: ak.Array, phi_a: ak.Array, eta_b: ak.Array, phi_b: ak.Array, max_dr: float
) -> ak.Array:
    """One-to-one matching of objects a to objects b in each event, within ``max_dr`` in (eta, phi).

    Pairs are taken greedily in order of increasing Delta R, so each b is used at most once.  Returns,
    for each a, the index of its b in the event, or -1.
    """
    counts_a = ak.to_numpy(ak.num(eta_a, axis=1))
    counts_b = ak.to_numpy(ak.num(eta_b, axis=1))
    flat = [ak.to_numpy(ak.flatten(x)).astype(np.float64) for x in (eta_a, phi_a, eta_b, phi_b)]
    result = _greedy_match(counts_a, counts_b, *flat, float(max_dr))
    return ak.unflatten(result, counts_a)


@numba.njit(cache=True)
def _greedy_match(counts_a, counts_b, eta_a, phi_a, eta_b, phi_b, max_dr):  # pragma: no cover - compiled
    out = np.full(len(eta_a), -1, dtype=np.int64)
    start_a = 0
    start_b = 0
    for event in range(len(counts_a)):
        na = counts_a[event]
        nb = counts_b[event]
        if na > 0 and nb > 0:
            dr = np.empty((na, nb))
            for i in range(na):
                for j in range(nb):
                    dphi = (phi_a[start_a + i] - phi_b[start_b + j] + np.pi) % (2 * np.pi) - np.pi
                    dr[i, j] = np.sqrt((eta_a[start_a + i] - eta_b[start_b + j]) ** 2 + dphi**2)
            used_a = np.zeros(na, dtype=np.bool_)
            used_b = np.zeros(nb, dtype=np.bool_)
            order = np.argsort(dr.ravel())
            for k in order:
                i = k // nb
                j = k % nb
                if dr[i, j] >= max_dr:
                    break
                if not used_a[i] and not used_b[j]:
                    used_a[i] = True
                    used_b[j] = True
                    out[start_a + i] = j
        start_a += na
        start_b += nb
    return out
