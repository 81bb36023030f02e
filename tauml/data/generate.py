"""Generate the embedded datasets: Pythia 8 events -> detector response -> fastjet jets -> truth -> files.

``generate(config, out_dir)`` produces, in ``out_dir``:

* ``fuure/{z,zh,qq}_{train,test}.parquet``: e+e- jets in the Fu(tau)ure per-jet schema (row groups of 1024),
* ``fuure/{z,zh,qq}_{train,test}_events.parquet``: one row per event, to rebuild events from their jets,
* ``jetclass/<Sample>_<NNN>.root``: pp jets in the JetClass ROOT schema (TTree ``tree``),
* ``manifest.json``: the configuration, the counts and the measured speed.

Work is split in chunks of ``config.chunk_events`` events; each chunk has its own Pythia seed and detector
random stream (so results do not depend on the number of workers), runs in a worker process, and is
written as soon as it is done: an interrupted run resumes with the chunks that are missing.  The chunks run in a
local process pool, or on dask (``scheduler="local"``, ``"local:N"`` or a cluster's address, or
``$TAUML_DASK_SCHEDULER``; :func:`tauml.utils.dask_client`), chunk by chunk, with the same result.
``generate_cached(config)`` keeps the result in the cache, named by the configuration's hash.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import shutil
import time
import warnings
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

import awkward as ak
import numpy as np

from tauml.cache import (
    DATA_FORMAT_VERSION,
    atomic_path,
    cache_path,
    clear_entry,
    entry_problem,
    file_record,
    locked,
    read_entry,
    read_json,
    write_json,
)
from tauml.config import EE_EVENT_SAMPLES, EE_SAMPLES, EVENT_SAMPLES, GenerationConfig, config_hash, to_dict
from tauml.data import jets as jetlib
from tauml.data.detector import Candidates, simulate_ee, simulate_pp
from tauml.data.pythia import SAMPLE_INDEX, GenEvents, generate_batch, pythia_seed
from tauml.data.schema import FUURE_ROW_GROUP_SIZE, JETCLASS_LABELS, JETCLASS_TREE, DataError
from tauml.data.truth import DM_LEPTONIC, decay_mode_from_products, last_copy_taus, tau_decay_products
from tauml.utils import dask_client, dask_scheduler, die_with_parent, parallel_workers, releases_memory
from tauml.utils import progress as progress_bar

#: Reco and generator jets below this pT are not written (GeV); the tau tasks select 5 to 20 GeV and above.
EE_MIN_JET_PT = 1.0
TAU_GEN_JET_DR = 0.4
GEN_RECO_JET_DR = 0.3
SIGNAL_SAMPLES = ("z", "zh")
PP_JET_PT_RANGE = (500.0, 1000.0)
PP_JET_ETA_MAX = 2.0
#: The joint analysis's event samples (docs/joint.md): e+e- reco jets above 5 GeV; pp anti-kT R = 0.8 jets with
#: pT > 200 GeV and |eta| < 2.4 (the CMS AK8 selection of the paper's dataset); a jet is H -> b bbar when the Higgs
#: and both its b quarks lie within Delta R < 0.8 of the jet axis.
EVENT_EE_MIN_JET_PT = 5.0
EVENT_PP_MIN_JET_PT = 200.0
EVENT_PP_JET_ETA_MAX = 2.4
HIGGS_BB_DR = 0.8
TOP_PARTON_DR = 0.8

MANIFEST = "manifest.json"
STATE = ".tauml-generation.json"


# -------------------------------------------------------------------------------------------------------
# helpers on flat arrays
# -------------------------------------------------------------------------------------------------------


def _jagged(offsets: np.ndarray, **columns: np.ndarray) -> ak.Array:
    counts = np.diff(offsets)
    return ak.zip({k: ak.unflatten(v, counts) for k, v in columns.items()})


def _fuure_p4(px, py, pz, e) -> dict[str, np.ndarray]:
    mass = np.sqrt(np.clip(e**2 - px**2 - py**2 - pz**2, 0.0, None))
    return {"x": px, "y": py, "z": pz, "tau": mass}


def _p4_record(px, py, pz, e, counts: np.ndarray | None = None) -> ak.Array:
    fields = {k: np.asarray(v, np.float32) for k, v in _fuure_p4(px, py, pz, e).items()}
    if counts is not None:
        fields = {k: ak.unflatten(v, counts) for k, v in fields.items()}
    return ak.zip(fields, with_name="Momentum4D")


def _flatten_jets(jets: ak.Array, index: ak.Array, offsets: np.ndarray):
    """Flatten events x jets -> jets, with the event of each jet and the global constituent indices."""
    jets_per_event = ak.to_numpy(ak.num(jets, axis=1))
    jet_event = np.repeat(np.arange(len(jets_per_event)), jets_per_event)
    flat_jets = {k: ak.to_numpy(ak.flatten(jets[k])).astype(np.float64) for k in ("px", "py", "pz", "E")}
    per_jet = ak.flatten(index, axis=1)
    n_constituents = ak.to_numpy(ak.num(per_jet, axis=1))
    local = ak.to_numpy(ak.flatten(per_jet)).astype(np.int64)
    constituent_jet = np.repeat(np.arange(len(n_constituents)), n_constituents)
    global_index = local + offsets[jet_event[constituent_jet]]
    return flat_jets, jet_event, jets_per_event, n_constituents, global_index


def _jet_constituents(rows: np.ndarray, n_constituents: np.ndarray, global_index: np.ndarray,
                      candidates: Candidates) -> tuple[np.ndarray, np.ndarray]:
    """The candidate indices of the jets ``rows`` (as :func:`_flatten_jets` gives them), pT-descending within
    each jet, and the number per jet."""
    starts = np.concatenate([[0], np.cumsum(n_constituents)])
    take = np.concatenate([global_index[starts[r]:starts[r + 1]] for r in rows]) if len(rows) else np.zeros(0, int)
    counts = n_constituents[rows]
    jet_of = np.repeat(np.arange(len(rows)), counts)
    pt = np.hypot(candidates.px[take], candidates.py[take])
    return take[np.lexsort((-pt, jet_of))], counts


def _eta_phi(px, py, pz):
    pt = np.hypot(px, py)
    return np.clip(np.arcsinh(pz / np.maximum(pt, 1e-9)), -1e3, 1e3), np.arctan2(py, px)


# -------------------------------------------------------------------------------------------------------
# e+e-: one chunk
# -------------------------------------------------------------------------------------------------------


@dataclass
class TauTruth:
    """Hadronic taus of a batch, flat, with the event of each."""

    event: np.ndarray
    vis: np.ndarray  # (n, 4) px py pz E
    full: np.ndarray  # (n, 4)
    decay_mode: np.ndarray
    charge: np.ndarray
    decay_vertex: np.ndarray  # (n, 3) mm
    n_leptonic: int = 0
    codes_all: list[int] = field(default_factory=list)


def find_taus(gen: GenEvents, rule: str = "descendants") -> TauTruth:
    """All hadronic taus in ``gen`` with their visible 4-vector and decay mode (leptonic ones are counted)."""
    rows = []
    codes = []
    n_leptonic = 0
    for ev in range(gen.n_events):
        s = gen.event(ev)
        pdg, d1, d2 = gen.pdg[s], gen.daughter1[s], gen.daughter2[s]
        for i in last_copy_taus(pdg, d1, d2):
            products = tau_decay_products(i, pdg, d1, d2, rule=rule)
            code = decay_mode_from_products(pdg[products])
            codes.append(code)
            if code == DM_LEPTONIC:
                n_leptonic += 1
                continue
            visible = [j for j in products if abs(int(pdg[j])) not in (12, 14, 16)]
            g = s.start
            vis = [sum(getattr(gen, k)[g + j] for j in visible) for k in ("px", "py", "pz", "e")]
            full = [getattr(gen, k)[g + i] for k in ("px", "py", "pz", "e")]
            first = g + products[0]
            rows.append((ev, *vis, *full, code, -np.sign(pdg[i]), gen.vx[first], gen.vy[first], gen.vz[first]))
    table = np.array(rows, dtype=np.float64).reshape(-1, 14)
    return TauTruth(
        event=table[:, 0].astype(np.int64), vis=table[:, 1:5], full=table[:, 5:9],
        decay_mode=table[:, 9].astype(np.int64), charge=table[:, 10].astype(np.int64),
        decay_vertex=table[:, 11:14], n_leptonic=n_leptonic, codes_all=codes,
    )


def process_ee(gen: GenEvents, candidates: Candidates, sample: str, first_event_number: int,
               all_jets: bool = False) -> tuple[ak.Array, ak.Array]:
    """Jets, truth and matching for a batch of e+e- events.  Returns (per-jet records, per-event records).

    ``all_jets`` (the joint analysis's event samples) keeps every reco jet above :data:`EVENT_EE_MIN_JET_PT`,
    tau-matched or not, instead of the tau-matched (signal) or gen-matched (background) jets only."""
    n_events = gen.n_events
    # reco jets on the particle-flow candidates
    cand = _jagged(candidates.offsets, px=candidates.px, py=candidates.py, pz=candidates.pz, E=candidates.e)
    reco_jets, reco_index = jetlib.cluster(cand, "ee_genkt", jetlib.EE_JET_R, jetlib.EE_JET_P, EE_MIN_JET_PT)
    rj, rj_event, rj_per_event, rj_n, rj_cands = _flatten_jets(reco_jets, reco_index, candidates.offsets)

    # generator jets on stable visible particles; those holding an electron or a muon are removed
    visible = (gen.status > 0) & ~np.isin(np.abs(gen.pdg), (12, 14, 16))
    vis_idx = np.flatnonzero(visible)
    vis_event = np.repeat(np.arange(n_events), np.diff(gen.offsets))[vis_idx]
    vis_offsets = np.concatenate([[0], np.cumsum(np.bincount(vis_event, minlength=n_events))])
    gen_particles = _jagged(vis_offsets, px=gen.px[vis_idx], py=gen.py[vis_idx], pz=gen.pz[vis_idx], E=gen.e[vis_idx])
    gen_jets, gen_index = jetlib.cluster(gen_particles, "ee_genkt", jetlib.EE_JET_R, jetlib.EE_JET_P, EE_MIN_JET_PT)
    gj, gj_event, _gj_per_event, gj_n, gj_parts = _flatten_jets(gen_jets, gen_index, vis_offsets)
    lepton = np.isin(np.abs(gen.pdg[vis_idx][gj_parts]), (11, 13))
    gj_has_lepton = np.bincount(np.repeat(np.arange(len(gj_n)), gj_n), weights=lepton, minlength=len(gj_n)) > 0
    clean = ~gj_has_lepton

    taus = find_taus(gen)
    # tau -> clean gen jet (dR < 0.4), one to one
    gj_eta, gj_phi = _eta_phi(gj["px"], gj["py"], gj["pz"])
    tau_eta, tau_phi = _eta_phi(taus.vis[:, 0], taus.vis[:, 1], taus.vis[:, 2])
    clean_idx = np.flatnonzero(clean)
    clean_counts = np.bincount(gj_event[clean_idx], minlength=n_events)
    tau_counts = np.bincount(taus.event, minlength=n_events)
    tau_to_clean = ak.to_numpy(ak.flatten(jetlib.match(
        ak.unflatten(tau_eta, tau_counts), ak.unflatten(tau_phi, tau_counts),
        ak.unflatten(gj_eta[clean_idx], clean_counts), ak.unflatten(gj_phi[clean_idx], clean_counts),
        TAU_GEN_JET_DR)))
    clean_offsets = np.concatenate([[0], np.cumsum(clean_counts)])
    gen_jet_tau = np.full(len(gj_n), -1, np.int64)  # tau index per gen jet
    matched = tau_to_clean >= 0
    gen_jet_tau[clean_idx[clean_offsets[taus.event[matched]] + tau_to_clean[matched]]] = np.flatnonzero(matched)

    # clean gen jet -> reco jet (dR < 0.3), one to one
    rj_eta, rj_phi = _eta_phi(rj["px"], rj["py"], rj["pz"])
    clean_to_reco = ak.to_numpy(ak.flatten(jetlib.match(
        ak.unflatten(gj_eta[clean_idx], clean_counts), ak.unflatten(gj_phi[clean_idx], clean_counts),
        ak.unflatten(rj_eta, rj_per_event), ak.unflatten(rj_phi, rj_per_event), GEN_RECO_JET_DR)))
    rj_offsets = np.concatenate([[0], np.cumsum(rj_per_event)])
    reco_gen = np.full(len(rj_n), -1, np.int64)
    ok = clean_to_reco >= 0
    reco_gen[rj_offsets[gj_event[clean_idx[ok]]] + clean_to_reco[ok]] = clean_idx[ok]

    # rows: reco jets matched to a clean gen jet; signal samples keep the tau-matched ones only
    keep = reco_gen >= 0
    reco_tau = np.where(keep, gen_jet_tau[np.maximum(reco_gen, 0)], -1)
    if all_jets:
        keep = np.hypot(rj["px"], rj["py"]) > EVENT_EE_MIN_JET_PT
        if sample == "ee_qq":  # as for qq: a tau from a heavy-flavour decay inside a b or c jet is no tau jet
            reco_tau[:] = -1
    elif sample in SIGNAL_SAMPLES:
        keep &= reco_tau >= 0
    else:
        # background by definition: a tau from a heavy-flavour decay inside a b or c jet is not a tau jet
        reco_tau[:] = -1
    rows = np.flatnonzero(keep)

    take, counts = _jet_constituents(rows, rj_n, rj_cands, candidates)

    c = candidates
    tau_i = reco_tau[rows]
    has_tau = tau_i >= 0
    ti = np.maximum(tau_i, 0)
    zeros4 = np.zeros((len(rows), 4))
    vis = np.where(has_tau[:, None], taus.vis[ti] if len(taus.vis) else zeros4, 0.0)
    full = np.where(has_tau[:, None], taus.full[ti] if len(taus.full) else zeros4, 0.0)
    vertex = np.where(has_tau[:, None], taus.decay_vertex[ti] if len(taus.decay_vertex) else zeros4[:, :3], 0.0)
    gjr = reco_gen[rows]
    local_jet_index = rows - rj_offsets[rj_event[rows]]
    jets = ak.Array({
        "reco_cand_p4s": _p4_record(c.px[take], c.py[take], c.pz[take], c.e[take], counts),
        "reco_cand_charge": ak.unflatten(c.charge[take].astype(np.float32), counts),
        "reco_cand_pdg": ak.unflatten(c.pdg[take].astype(np.int32), counts),
        "reco_cand_dxy": ak.unflatten(c.dxy[take].astype(np.float32), counts),
        "reco_cand_dz": ak.unflatten(c.dz[take].astype(np.float32), counts),
        "reco_cand_dxy_err": ak.unflatten(c.dxy_err[take].astype(np.float32), counts),
        "reco_cand_dz_err": ak.unflatten(c.dz_err[take].astype(np.float32), counts),
        "reco_jet_p4s": _p4_record(rj["px"][rows], rj["py"][rows], rj["pz"][rows], rj["E"][rows]),
        # a reco jet without a gen jet (all_jets only) gets a zero gen-jet 4-vector
        "gen_jet_p4s": _p4_record(*(np.where(gjr >= 0, gj[k][np.maximum(gjr, 0)], 0.0) for k in ("px", "py", "pz", "E"))),
        "gen_jet_tau_p4s": _p4_record(vis[:, 0], vis[:, 1], vis[:, 2], vis[:, 3]),
        "gen_jet_tau_decaymode": np.where(has_tau, taus.decay_mode[ti] if len(taus.decay_mode) else -1, -1)
        .astype(np.int64),
        "event_number": (first_event_number + rj_event[rows]).astype(np.int64),
        "reco_jet_index": local_jet_index.astype(np.int32),
        "gen_jet_tau_vis_energy": vis[:, 3].astype(np.float32),
        "gen_jet_tau_charge": np.where(has_tau, taus.charge[ti] if len(taus.charge) else 0, 0).astype(np.int32),
        "gen_jet_full_tau_p4s": _p4_record(full[:, 0], full[:, 1], full[:, 2], full[:, 3]),
        "gen_jet_tau_decay_vertex_x": vertex[:, 0].astype(np.float32),
        "gen_jet_tau_decay_vertex_y": vertex[:, 1].astype(np.float32),
        "gen_jet_tau_decay_vertex_z": vertex[:, 2].astype(np.float32),
    })

    # one row per event: all reco jets, the visible sum, the number of hadronic taus
    # summed per event with bincount: reduceat fails when the last events have no candidate at all
    cand_event = np.repeat(np.arange(n_events), np.diff(c.offsets))
    cand_sum = [np.bincount(cand_event, weights=getattr(c, k), minlength=n_events) for k in ("px", "py", "pz", "e")]
    events = ak.Array({
        "event_number": (first_event_number + np.arange(n_events)).astype(np.int64),
        "reco_jet_p4s": _p4_record(rj["px"], rj["py"], rj["pz"], rj["E"], rj_per_event),
        "reco_visible_p4": _p4_record(*cand_sum),
        "n_reco_cands": np.diff(c.offsets).astype(np.int32),
        "n_gen_hadronic_taus": np.bincount(taus.event, minlength=n_events).astype(np.int32),
        "n_gen_leptonic_taus": _leptonic_per_event(gen).astype(np.int32),
    })
    return jets, events


def _leptonic_per_event(gen: GenEvents) -> np.ndarray:
    out = np.zeros(gen.n_events, np.int64)
    for ev in range(gen.n_events):
        s = gen.event(ev)
        pdg, d1, d2 = gen.pdg[s], gen.daughter1[s], gen.daughter2[s]
        for i in last_copy_taus(pdg, d1, d2):
            if decay_mode_from_products(pdg[tau_decay_products(i, pdg, d1, d2)]) == DM_LEPTONIC:
                out[ev] += 1
    return out


# -------------------------------------------------------------------------------------------------------
# pp: one chunk
# -------------------------------------------------------------------------------------------------------


def _hadronic_top_partons(gen: GenEvents) -> list[list[np.ndarray]]:
    """Per event, for each top quark: the (eta, phi) of its b quark and of the two quarks of its W."""
    result = []
    for ev in range(gen.n_events):
        s = gen.event(ev)
        pdg, d1, d2 = gen.pdg[s], gen.daughter1[s], gen.daughter2[s]
        px, py, pz = gen.px[s], gen.py[s], gen.pz[s]
        tops = []
        for i in np.flatnonzero(np.abs(pdg) == 6):
            children = list(range(d1[i], d2[i] + 1)) if d2[i] >= d1[i] > 0 else ([d1[i]] if d1[i] > 0 else [])
            if not children or any(abs(pdg[c]) == 6 for c in children):
                continue  # not the last copy
            b = [c for c in children if abs(pdg[c]) == 5]
            w = [c for c in children if abs(pdg[c]) == 24]
            if not b or not w:
                continue
            w_i = w[0]
            while True:  # follow the W to its last copy
                wc = list(range(d1[w_i], d2[w_i] + 1)) if d2[w_i] >= d1[w_i] > 0 else [d1[w_i]]
                nxt = [c for c in wc if abs(pdg[c]) == 24]
                if not nxt:
                    break
                w_i = nxt[0]
            quarks = [c for c in wc if 1 <= abs(pdg[c]) <= 5]
            if len(quarks) != 2:
                continue
            partons = [b[0], *quarks]
            eta, phi = _eta_phi(px[partons], py[partons], pz[partons])
            tops.append(np.stack([eta, phi], axis=1))
        result.append(tops)
    return result


def _softdrop_and_nsubjettiness(constituents: ak.Array) -> dict[str, np.ndarray]:
    """Soft-drop mass (beta 0, z_cut 0.1, R0 0.8, C/A) and N-subjettiness tau_1..4 (exclusive-kT axes, beta 1)."""
    import fastjet  # (local: heavy, only in generation workers)

    n_jets = len(constituents)
    out = {"jet_sdmass": np.zeros(n_jets, np.float32)}
    out.update({f"jet_tau{n}": np.zeros(n_jets, np.float32) for n in range(1, 5)})
    if n_jets == 0:
        return out
    inputs = ak.zip({k: ak.values_astype(constituents[k], np.float64) for k in ("px", "py", "pz", "E")})
    ca = fastjet.ClusterSequence(inputs, fastjet.JetDefinition(fastjet.cambridge_algorithm, 0.8))
    with warnings.catch_warnings():  # fastjet warns about exclusive jets for every algorithm; C/A is fine
        warnings.simplefilter("ignore", UserWarning)
        groomed = ca.exclusive_jets_softdrop_grooming(njets=1, beta=0.0, symmetry_cut=0.1, R0=0.8)
    out["jet_sdmass"] = np.nan_to_num(ak.to_numpy(groomed.msoftdrop)).astype(np.float32)
    counts = ak.to_numpy(ak.num(inputs, axis=1))
    jet_of = np.repeat(np.arange(n_jets), counts)
    px, py, pz = (ak.to_numpy(ak.flatten(inputs[k])) for k in ("px", "py", "pz"))
    pt = np.hypot(px, py)
    eta, phi = _eta_phi(px, py, pz)
    norm = np.bincount(jet_of, weights=pt, minlength=n_jets) * 0.8
    for n in range(1, 5):
        enough = counts >= n
        if not np.any(enough):
            continue
        sel = np.flatnonzero(enough)
        sequence = fastjet.ClusterSequence(inputs[sel], fastjet.JetDefinition(fastjet.kt_algorithm, 0.8))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            axes = sequence.exclusive_jets(n_jets=n)
        a_eta, a_phi = (np.asarray(ak.to_numpy(v)).reshape(len(sel), n) for v in _eta_phi_ak(axes))
        full_eta = np.zeros((n_jets, n))
        full_phi = np.zeros((n_jets, n))
        full_eta[sel], full_phi[sel] = a_eta, a_phi
        dr = jetlib.delta_r(eta[:, None], phi[:, None], full_eta[jet_of], full_phi[jet_of]).min(axis=1)
        tau = np.bincount(jet_of, weights=pt * dr, minlength=n_jets) / np.maximum(norm, 1e-9)
        out[f"jet_tau{n}"] = np.where(enough, tau, 0.0).astype(np.float32)
    return out


def _eta_phi_ak(p4: ak.Array) -> tuple[ak.Array, ak.Array]:
    pt = np.hypot(p4.px, p4.py)
    return np.arcsinh(p4.pz / (pt + 1e-12)), np.arctan2(p4.py, p4.px)


def process_pp(gen: GenEvents, candidates: Candidates, sample: str) -> dict[str, np.ndarray | ak.Array]:
    """JetClass-schema branches for the selected jets of a batch of pp events."""
    c = candidates
    cand = _jagged(c.offsets, px=c.px, py=c.py, pz=c.pz, E=c.e)
    jets, index = jetlib.cluster(cand, "antikt", jetlib.PP_JET_R, 0.0, PP_JET_PT_RANGE[0])
    j, j_event, _, j_n, j_cands = _flatten_jets(jets, index, c.offsets)
    pt = np.hypot(j["px"], j["py"])
    eta, phi = _eta_phi(j["px"], j["py"], j["pz"])
    keep = (pt > PP_JET_PT_RANGE[0]) & (pt < PP_JET_PT_RANGE[1]) & (np.abs(eta) < PP_JET_ETA_MAX)
    if sample == "TTBar":
        tops = _hadronic_top_partons(gen)
        contained = np.zeros(len(pt), bool)
        for k in np.flatnonzero(keep):
            for partons in tops[j_event[k]]:
                if np.all(jetlib.delta_r(partons[:, 0], partons[:, 1], eta[k], phi[k]) < TOP_PARTON_DR):
                    contained[k] = True
        keep &= contained
    rows = np.flatnonzero(keep)
    branches = _jetclass_branches(c, j, j_n, j_cands, rows, pt, eta, phi)
    for label in JETCLASS_LABELS:
        value = {"ZJetsToNuNu": "label_QCD", "TTBar": "label_Tbqq"}[sample] == label
        branches[label] = np.full(len(rows), value, dtype=_label_dtype(label))
    return branches


def _label_dtype(label: str) -> type:
    return np.float32 if label == "label_QCD" else (np.bool_ if label in (
        "label_Hbb", "label_Hcc", "label_Hgg", "label_H4q", "label_Hqql") else np.int32)


def _jetclass_branches(c: Candidates, j: dict[str, np.ndarray], j_n: np.ndarray, j_cands: np.ndarray,
                       rows: np.ndarray, pt: np.ndarray, eta: np.ndarray, phi: np.ndarray) -> dict:
    """The JetClass-schema particle and jet branches (labels aside) of the jets ``rows``."""
    take, counts = _jet_constituents(rows, j_n, j_cands, c)
    ceta, cphi = _eta_phi(c.px[take], c.py[take], c.pz[take])
    deta = ceta - np.repeat(eta[rows], counts)
    dphi = (cphi - np.repeat(phi[rows], counts) + np.pi) % (2 * np.pi) - np.pi

    def jag(values, dtype):
        return ak.unflatten(np.asarray(values).astype(dtype), counts)

    branches: dict[str, np.ndarray | ak.Array] = {
        "part_px": jag(c.px[take], np.float32), "part_py": jag(c.py[take], np.float32),
        "part_pz": jag(c.pz[take], np.float32), "part_energy": jag(c.e[take], np.float32),
        "part_deta": jag(deta, np.float32), "part_dphi": jag(dphi, np.float32),
        "part_d0val": jag(c.dxy[take], np.float32), "part_d0err": jag(c.dxy_err[take], np.float32),
        "part_dzval": jag(c.dz[take], np.float32), "part_dzerr": jag(c.dz_err[take], np.float32),
        "part_charge": jag(c.charge[take], np.float32),
        "part_isChargedHadron": jag(c.pdg[take] == 211, np.int32),
        "part_isNeutralHadron": jag(c.pdg[take] == 130, np.int32),
        "part_isPhoton": jag(c.pdg[take] == 22, np.int32),
        "part_isElectron": jag(c.pdg[take] == 11, np.int32),
        "part_isMuon": jag(c.pdg[take] == 13, np.int32),
        "jet_pt": pt[rows].astype(np.float32), "jet_eta": eta[rows].astype(np.float32),
        "jet_phi": phi[rows].astype(np.float32), "jet_energy": j["E"][rows].astype(np.float32),
        "jet_nparticles": counts.astype(np.float32),
    }
    shape = _softdrop_and_nsubjettiness(ak.zip({
        "px": branches["part_px"], "py": branches["part_py"], "pz": branches["part_pz"],
        "E": branches["part_energy"]}))
    branches.update(shape)
    return branches


def _higgs_to_bb(gen: GenEvents) -> list[list[np.ndarray]]:
    """Per event, for each Higgs boson (last copy) decaying to b bbar: the (eta, phi) of the Higgs and its two b's."""
    result = []
    for ev in range(gen.n_events):
        s = gen.event(ev)
        pdg, d1, d2 = gen.pdg[s], gen.daughter1[s], gen.daughter2[s]
        px, py, pz = gen.px[s], gen.py[s], gen.pz[s]
        found = []
        for i in np.flatnonzero(pdg == 25):
            children = list(range(d1[i], d2[i] + 1)) if d2[i] >= d1[i] > 0 else ([d1[i]] if d1[i] > 0 else [])
            b = [k for k in children if abs(pdg[k]) == 5]
            if len(b) == 2 and len(children) == 2:
                eta, phi = _eta_phi(px[[i, *b]], py[[i, *b]], pz[[i, *b]])
                found.append(np.stack([eta, phi], axis=1))
        result.append(found)
    return result


def process_pp_events(gen: GenEvents, candidates: Candidates, sample: str, first_event_number: int) -> ak.Array:
    """The joint analysis's pp jets (one row per jet, JetClass schema plus ``event_number`` and ``jet_index``):
    every anti-kT R = 0.8 jet with pT > 200 GeV and |eta| < 2.4; ``label_Hbb`` from the truth (H and both b's
    within Delta R < 0.8), ``label_QCD`` for every other jet."""
    c = candidates
    cand = _jagged(c.offsets, px=c.px, py=c.py, pz=c.pz, E=c.e)
    jets, index = jetlib.cluster(cand, "antikt", jetlib.PP_JET_R, 0.0, EVENT_PP_MIN_JET_PT)
    j, j_event, j_per_event, j_n, j_cands = _flatten_jets(jets, index, c.offsets)
    pt = np.hypot(j["px"], j["py"])
    eta, phi = _eta_phi(j["px"], j["py"], j["pz"])
    rows = np.flatnonzero((pt > EVENT_PP_MIN_JET_PT) & (np.abs(eta) < EVENT_PP_JET_ETA_MAX))
    higgs = _higgs_to_bb(gen)
    is_hbb = np.zeros(len(pt), bool)
    for k in rows:
        for h in higgs[j_event[k]]:
            if np.all(jetlib.delta_r(h[:, 0], h[:, 1], eta[k], phi[k]) < HIGGS_BB_DR):
                is_hbb[k] = True
    branches = _jetclass_branches(c, j, j_n, j_cands, rows, pt, eta, phi) if len(rows) else None
    if branches is None:
        return ak.Array([])
    for label in JETCLASS_LABELS:
        value = is_hbb[rows] if label == "label_Hbb" else (~is_hbb[rows] if label == "label_QCD" else False)
        branches[label] = np.broadcast_to(value, len(rows)).astype(_label_dtype(label))
    offsets = np.concatenate([[0], np.cumsum(j_per_event)])
    branches["event_number"] = (first_event_number + j_event[rows]).astype(np.int64)
    branches["jet_index"] = (rows - offsets[j_event[rows]]).astype(np.int32)
    return ak.zip(branches, depth_limit=1)


def write_jetclass(path: Path, branches: dict[str, np.ndarray | ak.Array]) -> None:
    """Write JetClass-schema branches to ``path`` (TTree ``tree``), atomically.

    uproot stores the jagged ``part_*`` branches as C-style arrays with one counter branch ``npart``
    (the real files use ``std::vector`` branches without a counter); the reader ignores the counter.
    """
    import uproot  # (local: only where ROOT files are written)

    particles = ak.zip({k[len("part_"):]: v for k, v in branches.items() if k.startswith("part_")})
    flat = {k: np.asarray(v) for k, v in branches.items() if not k.startswith("part_")}
    types = {"part": particles.type.content, **{k: v.dtype for k, v in flat.items()}}
    with atomic_path(path) as tmp, uproot.recreate(tmp) as f:
        tree = f.mktree(JETCLASS_TREE, types)  # a TTree, as the real files (not an RNTuple)
        if len(particles):
            tree.extend({"part": particles, **flat})


# -------------------------------------------------------------------------------------------------------
# chunks, workers, merging
# -------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ChunkTask:
    sample: str
    chunk: int
    n_events: int
    first_event: int


def chunk_tasks(config: GenerationConfig) -> list[ChunkTask]:
    tasks = []
    for sample, n in config.events.items():
        for chunk in range(math.ceil(n / config.chunk_events)):
            first = chunk * config.chunk_events
            tasks.append(ChunkTask(sample, chunk, min(config.chunk_events, n - first), first))
    return tasks


def _chunk_paths(out_dir: Path, task: ChunkTask) -> dict[str, Path]:
    if task.sample in EVENT_SAMPLES:  # one file per chunk, read as they are (no merging)
        return {"jets": out_dir / "events" / f"{task.sample}_{task.chunk:03d}.parquet",
                "done": out_dir / "chunks" / task.sample / f"done_{task.chunk:05d}.json"}
    if task.sample in EE_SAMPLES:
        base = out_dir / "chunks" / task.sample
        return {"jets": base / f"jets_{task.chunk:05d}.parquet", "events": base / f"events_{task.chunk:05d}.parquet",
                "done": base / f"done_{task.chunk:05d}.json"}
    return {"root": out_dir / "jetclass" / f"{task.sample}_{task.chunk:03d}.root",
            "done": out_dir / "chunks" / task.sample / f"done_{task.chunk:05d}.json"}


def run_chunk(task: ChunkTask, config: GenerationConfig, out_dir: str) -> dict:
    """Generate, simulate, cluster and write one chunk (runs in a worker process)."""
    paths = _chunk_paths(Path(out_dir), task)
    start = time.perf_counter()
    gen = generate_batch(task.sample, task.n_events, pythia_seed(config.seed, task.sample, task.chunk),
                         config.ee_sqrt_s, config.pp_sqrt_s)
    t_gen = time.perf_counter() - start
    rng = np.random.default_rng([config.seed, SAMPLE_INDEX[task.sample], task.chunk, 20260])
    sigma = {}
    if task.sample in EVENT_SAMPLES:
        if task.sample in EE_EVENT_SAMPLES:
            jets, _ = process_ee(gen, simulate_ee(gen, config.ee_detector, rng), task.sample, task.first_event,
                                 all_jets=True)
        else:
            jets = process_pp_events(gen, simulate_pp(gen, config.pp_detector, rng), task.sample, task.first_event)
        with atomic_path(paths["jets"]) as tmp:
            ak.to_parquet(jets, tmp, row_group_size=FUURE_ROW_GROUP_SIZE)
        n_jets = len(jets)
        sigma = {"sigma_fb": gen.sigma_fb, "sigma_error_fb": gen.sigma_error_fb}
    elif task.sample in EE_SAMPLES:
        candidates = simulate_ee(gen, config.ee_detector, rng)
        jets, events = process_ee(gen, candidates, task.sample, task.first_event)
        for key, array in (("jets", jets), ("events", events)):
            with atomic_path(paths[key]) as tmp:
                ak.to_parquet(array, tmp, row_group_size=FUURE_ROW_GROUP_SIZE)
        n_jets = len(jets)
    else:
        candidates = simulate_pp(gen, config.pp_detector, rng)
        branches = process_pp(gen, candidates, task.sample)
        write_jetclass(paths["root"], branches)
        n_jets = len(branches["jet_pt"])
    stats = {"sample": task.sample, "chunk": task.chunk, "events": task.n_events, "jets": n_jets,
             "seconds_generator": t_gen, "seconds_total": time.perf_counter() - start, **sigma}
    write_json(paths["done"], stats)
    return stats


@dataclass
class GeneratedData:
    """Where a generated dataset lives and what it holds."""

    root: Path
    manifest: dict

    def fuure(self, sample: str, split: str = "train") -> Path:
        """Path of ``{sample}_{split}.parquet`` (sample z, zh or qq; split train or test)."""
        path = self.root / "fuure" / f"{sample}_{split}.parquet"
        if not path.exists():
            raise DataError(f"{path} does not exist: sample {sample!r} was not generated in {self.root}")
        return path

    def fuure_events(self, sample: str, split: str = "train") -> Path:
        return self.root / "fuure" / f"{sample}_{split}_events.parquet"

    def events(self, sample: str) -> list[Path]:
        """The per-chunk jet files of one event sample of the joint analysis (``ee_zh`` ... ``qcd_multijet``)."""
        files = sorted((self.root / "events").glob(f"{sample}_*.parquet"))
        if not files:
            raise DataError(f"no {sample}_*.parquet files in {self.root / 'events'}: {sample!r} was not generated")
        return files

    def jetclass(self, sample: str) -> list[Path]:
        """The ROOT files of one JetClass-like sample."""
        files = sorted((self.root / "jetclass").glob(f"{sample}_*.root"))
        if not files:
            raise DataError(f"no {sample}_*.root files in {self.root / 'jetclass'}: {sample!r} was not generated")
        return files


def _check_out_dir(out_dir: Path, config: GenerationConfig) -> None:
    """Refuse to write into a folder that holds something else: nothing a user wrote is overwritten."""
    state = out_dir / STATE
    wanted = {"config": to_dict(config), "format_version": DATA_FORMAT_VERSION}
    if out_dir.exists() and not out_dir.is_dir():
        raise DataError(f"{out_dir} is a file, not a folder — give a new or empty folder as the output")
    if state.exists():
        found = read_entry(state)
        if found is None:
            raise DataError(f"{out_dir / STATE} is corrupt — delete the folder {out_dir} to generate its data again")
        if found != wanted:
            raise DataError(
                f"{out_dir} holds data generated with another configuration; choose an empty folder or "
                f"delete {out_dir} to regenerate"
            )
        return
    if out_dir.exists() and any(not (f.name == ".lock" or STATE in f.name) for f in out_dir.iterdir()):
        raise DataError(f"{out_dir} is not empty and was not written by tauml generate; choose an empty folder")
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(state, wanted)


def _data_files(out_dir: Path) -> list[str]:
    """The files a finished dataset consists of, relative to ``out_dir`` (what its manifest vouches for)."""
    files = (sorted((out_dir / "fuure").glob("*.parquet")) + sorted((out_dir / "jetclass").glob("*.root"))
             + sorted((out_dir / "events").glob("*.parquet")))
    return [str(f.relative_to(out_dir)) for f in files]


def _verified(out_dir: Path) -> GeneratedData | None:
    """The finished dataset in ``out_dir`` when its manifest vouches for every file; else None after clearing the
    generated files (not the folder's lock and state) with one line saying why, so that it is generated again."""
    manifest_path = out_dir / MANIFEST
    if not manifest_path.exists():
        return None
    problem = entry_problem(manifest_path)
    if problem is None:
        manifest = read_json(manifest_path)
        if "files" not in manifest:  # written before manifests vouched for their files: record them now
            manifest["files"] = {name: file_record(out_dir / name) for name in _data_files(out_dir)}
            write_json(manifest_path, manifest)
        return GeneratedData(out_dir, manifest)
    clear_entry(out_dir, problem, keep=(".lock", STATE))
    return None


def _chunk_done(out_dir: Path, task: ChunkTask) -> bool:
    """Whether a chunk is finished: its done file is readable and, for e+e- chunks, its files are there."""
    paths = _chunk_paths(out_dir, task)
    if read_entry(paths["done"]) is None:
        return False
    return all(path.is_file() for key, path in paths.items() if key != "done")


def generate(config: GenerationConfig, out_dir: str | os.PathLike[str], workers: int | None = None,
             progress: bool = True, scheduler: str | None = None) -> GeneratedData:
    """Generate (or finish generating) the dataset of ``config`` in ``out_dir``; see the module docstring.

    Two runs into the same folder are serialised by a lock (the second finds the first one's result); a
    finished dataset whose files no longer match its manifest (truncated, replaced, deleted) is generated again.
    ``scheduler`` (or ``$TAUML_DASK_SCHEDULER``): run the chunks on dask (:func:`tauml.utils.dask_client`:
    ``"local"``, ``"local:N"`` or a scheduler's address, whose workers must see ``out_dir``) instead of a local
    process pool of ``workers``; the chunks are the same either way (each has its own seed).
    """
    config.validate()
    out_dir = Path(out_dir)
    _check_out_dir(out_dir, config)
    with locked(out_dir):
        return (_verified(out_dir) or _copied_from_cache(config, out_dir)
                or _generate(config, out_dir, workers, progress, dask_scheduler(scheduler)))


def _copied_from_cache(config: GenerationConfig, out_dir: Path) -> GeneratedData | None:
    """The dataset of ``config`` copied into ``out_dir`` from tauml's cache, where it was generated before and
    verifies (the same events: each chunk has its own seed); None when the cache has no such dataset."""
    cached = cache_path("data", config_hash(config, DATA_FORMAT_VERSION), create=False)
    if cached.resolve() == out_dir.resolve() or entry_problem(cached / MANIFEST) is not None:
        return None
    names = list(read_json(cached / MANIFEST).get("files", {}))
    for name in [*names, MANIFEST]:  # the manifest last: a folder without it is unfinished
        (out_dir / name).parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(out_dir / name) as tmp:
            shutil.copy2(cached / name, tmp)
    return _verified(out_dir)


@releases_memory
def _generate(config: GenerationConfig, out_dir: Path, workers: int | None, progress: bool,
              scheduler: str | None = None) -> GeneratedData:
    _check_out_dir(out_dir, config)  # writes the state file again if a rebuild cleared the folder
    tasks = chunk_tasks(config)
    todo = [t for t in tasks if not _chunk_done(out_dir, t)]
    # slowest samples first so that the workers finish together
    todo.sort(key=lambda t: (t.sample not in ("z", "TTBar", "ZJetsToNuNu"), t.sample, t.chunk))
    # a generation worker holds Pythia, a chunk and its jets: ~0.5 GB measured
    workers = parallel_workers(len(todo), workers, worker_memory=0.6e9, parent_memory=0.6e9)
    start = time.perf_counter()

    bar = progress_bar(total=sum(t.n_events for t in tasks), initial=sum(t.n_events for t in tasks) - sum(
        t.n_events for t in todo), desc="generating events", unit="ev", disable=not progress or None, leave=True)
    try:
        if scheduler and todo:
            with dask_client(scheduler) as client:
                from dask.distributed import as_completed

                futures = {client.submit(run_chunk, task, config, str(out_dir), pure=False): task for task in todo}
                for future in as_completed(futures):
                    future.result()  # a failed chunk raises here; the finished ones are kept (resumable)
                    task = futures[future]
                    bar.update(task.n_events)
                    bar.set_postfix_str(f"{task.sample} chunk {task.chunk}")
            workers = f"dask {scheduler}"
        elif workers == 1 or len(todo) <= 1:
            for task in todo:
                run_chunk(task, config, str(out_dir))
                bar.update(task.n_events)
        else:
            context = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=die_with_parent) as pool:
                pending = {pool.submit(run_chunk, task, config, str(out_dir)): task for task in todo}
                while pending:
                    done, _ = wait(pending, return_when=FIRST_COMPLETED)
                    for future in done:
                        task = pending.pop(future)
                        future.result()
                        bar.update(task.n_events)
                        bar.set_postfix_str(f"{task.sample} chunk {task.chunk}")
    finally:
        bar.close()
    manifest = _merge(out_dir, config, tasks)
    manifest["seconds_wall"] = time.perf_counter() - start
    manifest["workers"] = workers
    manifest["files"] = {name: file_record(out_dir / name) for name in _data_files(out_dir)}
    write_json(out_dir / MANIFEST, manifest)  # last: a folder without it is unfinished and resumes
    for t in tasks:  # the merged e+e- chunks are no longer needed (only after the manifest vouches for the merge)
        if t.sample in EE_SAMPLES:
            for key in ("jets", "events"):
                _chunk_paths(out_dir, t)[key].unlink(missing_ok=True)
    return GeneratedData(out_dir, manifest)


def _is_test(event_number: np.ndarray, test_fraction: float) -> np.ndarray:
    """A fixed pseudo-random 80/20 split by event number (Knuth's multiplicative hash)."""
    hashed = (event_number.astype(np.uint64) * np.uint64(2654435761)) % np.uint64(2**32)
    return hashed.astype(np.float64) / 2**32 < test_fraction


def _merge(out_dir: Path, config: GenerationConfig, tasks: list[ChunkTask]) -> dict:
    """Merge the e+e- chunks into shuffled train/test files; gather per-sample statistics."""
    samples: dict[str, dict] = {}
    for sample in config.events:
        stats = [read_json(_chunk_paths(out_dir, t)["done"]) for t in tasks if t.sample == sample]
        cpu = sum(s["seconds_total"] for s in stats)
        entry = {
            "events": sum(s["events"] for s in stats), "jets": sum(s["jets"] for s in stats),
            "cpu_seconds": cpu, "generator_cpu_seconds": sum(s["seconds_generator"] for s in stats),
        }
        entry["events_per_cpu_second"] = entry["events"] / cpu if cpu else None
        entry["jets_per_cpu_second"] = entry["jets"] / cpu if cpu else None
        if sample in EVENT_SAMPLES:
            entry["bytes"] = sum(p.stat().st_size for p in (out_dir / "events").glob(f"{sample}_*.parquet"))
            # each chunk's Pythia estimates the cross section; their event-weighted mean and its error
            n = np.array([s["events"] for s in stats], float)
            entry["sigma_fb"] = float(np.sum(n * [s["sigma_fb"] for s in stats]) / n.sum())
            entry["sigma_error_fb"] = float(np.sqrt(np.sum((n * [s["sigma_error_fb"] for s in stats]) ** 2)) / n.sum())
        elif sample in EE_SAMPLES:
            jet_parts = [ak.from_parquet(_chunk_paths(out_dir, t)["jets"]) for t in tasks if t.sample == sample]
            event_parts = [ak.from_parquet(_chunk_paths(out_dir, t)["events"]) for t in tasks if t.sample == sample]
            jets, events = ak.concatenate(jet_parts), ak.concatenate(event_parts)
            rng = np.random.default_rng([config.seed, SAMPLE_INDEX[sample], 777])
            for split in ("train", "test"):
                want_test = split == "test"
                jet_sel = _is_test(ak.to_numpy(jets.event_number), config.test_fraction) == want_test
                ev_sel = _is_test(ak.to_numpy(events.event_number), config.test_fraction) == want_test
                selected = jets[jet_sel]
                selected = selected[rng.permutation(len(selected))]
                for array, path in ((selected, out_dir / "fuure" / f"{sample}_{split}.parquet"),
                                    (events[ev_sel], out_dir / "fuure" / f"{sample}_{split}_events.parquet")):
                    with atomic_path(path) as tmp:
                        ak.to_parquet(array, tmp, row_group_size=FUURE_ROW_GROUP_SIZE)
                entry[f"jets_{split}"] = len(selected)
            entry["bytes"] = sum((out_dir / "fuure" / f"{sample}_{s}.parquet").stat().st_size for s in ("train", "test"))
        else:
            entry["bytes"] = sum(p.stat().st_size for p in (out_dir / "jetclass").glob(f"{sample}_*.root"))
        samples[sample] = entry
    return {"config": to_dict(config), "format_version": DATA_FORMAT_VERSION, "samples": samples,
            "hash": config_hash(config, DATA_FORMAT_VERSION)}


def generate_cached(config: GenerationConfig, workers: int | None = None, progress: bool = True,
                    scheduler: str | None = None) -> GeneratedData:
    """The dataset of ``config`` from tauml's cache, generated first if missing (see :mod:`tauml.cache`; ``workers``
    and ``scheduler`` as :func:`generate`)."""
    config.validate()
    folder = cache_path("data", config_hash(config, DATA_FORMAT_VERSION), create=False)
    if (folder / MANIFEST).exists() and entry_problem(folder / MANIFEST) is None:
        return GeneratedData(folder, read_json(folder / MANIFEST))
    folder.parent.mkdir(parents=True, exist_ok=True)
    with locked(folder.parent / f".{folder.name}-lock"):
        return generate(config, folder, workers, progress, scheduler)


__all__ = ["GeneratedData", "find_taus", "generate", "generate_cached", "process_ee", "process_pp", "process_pp_events",
           "run_chunk"]
