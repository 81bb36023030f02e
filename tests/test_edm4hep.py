"""EDM4hep files (FCC-ee Delphes, both podio layouts) -> Fu(tau)ure-schema jets."""

from __future__ import annotations

import warnings
from pathlib import Path

import awkward as ak
import numpy as np
import pytest
import uproot
from helpers import REAL_DATA, real_file

from tauml.data.edm4hep import (
    DM_UNRESOLVED,
    GEN_RECO_JET_DR,
    TAU_GEN_JET_DR,
    _event_taus,  # the EDM4hep record -> truth step, on a hand-made record
    candidate_pdg,
    detect_layout,
    podio_collection_id,
    read_edm4hep_taus,
)
from tauml.data.features import jet_arrays
from tauml.data.jets import delta_r
from tauml.data.readers import read_fuure
from tauml.data.schema import CANDIDATE_PDG_CODES, FUURE_COLUMNS, DataError, validate_fuure
from tauml.data.truth import decay_mode_from_products, last_copy_taus, tau_decay_products

SPRING2021 = REAL_DATA / "test_FCC_Spring2021.root"  # pre-EDM4hep-1.0, e+e- -> ZH at 240 GeV, 100 events
WW_V1 = REAL_DATA / "p8_ee_WW_ecm240_edm4hep.root"  # EDM4hep 1.x, e+e- -> WW at 240 GeV, 10 events

pytestmark = pytest.mark.real_data


@pytest.fixture(scope="module")
def spring() -> ak.Array:
    return read_edm4hep_taus(real_file(SPRING2021))


@pytest.fixture(scope="module")
def ww() -> ak.Array:
    return read_edm4hep_taus(real_file(WW_V1))


def _p4(record: ak.Array) -> np.ndarray:
    """(px, py, pz, E) from {x, y, z, tau} records (flat)."""
    x, y, z, m = (ak.to_numpy(record[k]).astype(np.float64) for k in ("x", "y", "z", "tau"))
    return np.stack([x, y, z, np.sqrt(x**2 + y**2 + z**2 + m**2)], axis=-1)


def _eta_phi(p4: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return np.arcsinh(p4[:, 2] / np.hypot(p4[:, 0], p4[:, 1])), np.arctan2(p4[:, 1], p4[:, 0])


# ---------------------------------------------------------------------------------------------------------
# Pure functions
# ---------------------------------------------------------------------------------------------------------


def test_candidate_pdg_mapping():
    pdg = [11, -13, 22, -211, 321, 2212, 2112, 130, 310, 0, 0, 0, 0, 0, 0]
    charge = [-1, 1, 0, -1, 1, 1, 0, 0, 0, 1, -1, 1, 0, 0, 0]
    mass = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0.000511, 0.1057, 0.13957, 0, 0, 0.4976]
    photon = [False] * 12 + [True, False, False]
    expected = [11, 13, 22, 211, 211, 211, 130, 130, 130, 11, 13, 211, 22, 130, 130]
    np.testing.assert_array_equal(candidate_pdg(pdg, charge, mass, photon), expected)
    assert candidate_pdg(pdg, charge).dtype == np.int32
    # without mass or cluster information untyped candidates are charged / neutral hadrons
    np.testing.assert_array_equal(candidate_pdg([0, 0], [1, 0]), [211, 130])
    assert set(candidate_pdg(pdg, charge, mass, photon)) <= set(CANDIDATE_PDG_CODES)


def test_taus_from_an_edm4hep_record():
    """Z -> tau- tau+; tau- -> nu pi- (contiguous daughters), tau+ -> daughters 5 and 7 (not contiguous)."""
    pdg = np.array([23, 15, -15, 16, -211, -16, 22, 211])
    lists = [[1, 2], [3, 4], [5, 7], [], [], [], [], []]
    begin = np.cumsum([0] + [len(x) for x in lists[:-1]])
    record = {
        "pdg": pdg, "daughters_begin": begin, "daughters_end": begin + [len(x) for x in lists],
        "daughters": np.array([d for x in lists for d in x]),
        "px": np.arange(8.0), "py": np.ones(8), "pz": np.zeros(8), "E": np.arange(8.0) + 2,
        "vx": np.arange(8.0) / 10, "vy": np.zeros(8), "vz": np.zeros(8),
    }
    taus, unresolved = _event_taus(record)
    assert [t.decay_mode for t in taus] == [0, DM_UNRESOLVED] and unresolved == 1
    np.testing.assert_array_equal(taus[0].vis, [4.0, 1.0, 0.0, 6.0])  # the pi-; the neutrino is invisible
    np.testing.assert_array_equal(taus[0].p4, [1.0, 1.0, 0.0, 3.0])
    assert taus[0].charge == -1 and taus[1].charge == 1
    assert taus[0].vertex[0] == pytest.approx(0.3)  # production vertex of its first daughter, mm


def test_podio_collection_ids_match_the_v1_file():
    with uproot.open(real_file(WW_V1)) as file:
        tree = file["events"]
        track_ids = set(ak.flatten(tree["_ReconstructedParticles_tracks/_ReconstructedParticles_tracks.collectionID"]
                                   .array()).tolist())
        cluster_ids = set(ak.flatten(tree["_ReconstructedParticles_clusters/"
                                          "_ReconstructedParticles_clusters.collectionID"].array()).tolist())
    assert track_ids == {podio_collection_id("EFlowTrack")}
    assert cluster_ids == {podio_collection_id("EFlowPhoton"), podio_collection_id("EFlowNeutralHadron")}
    assert podio_collection_id("") == 0  # MurmurHash3_x86_32("", seed 0)


def test_layout_detection_and_errors(tmp_path):
    with uproot.open(real_file(SPRING2021)) as file:
        assert detect_layout(file["events"]) == "pre-edm4hep1"
    with uproot.open(real_file(WW_V1)) as file:
        assert detect_layout(file["events"]) == "edm4hep1"
    with pytest.raises(DataError, match="pre-edm4hep1 layout, not edm4hep1"):
        read_edm4hep_taus(SPRING2021, layout="edm4hep1")
    with pytest.raises(DataError, match="layout="):
        read_edm4hep_taus(SPRING2021, layout="v2")
    with pytest.raises(DataError, match="does not exist"):
        read_edm4hep_taus(tmp_path / "missing.root")
    junk = tmp_path / "junk.root"
    junk.write_text("not ROOT")
    with pytest.raises(DataError, match="not a readable ROOT file"):
        read_edm4hep_taus(junk)
    jetclass = REAL_DATA / "JetClassII_example.root"
    if jetclass.exists():
        with pytest.raises(DataError, match="no 'events' tree"):
            read_edm4hep_taus(jetclass)
    with pytest.raises(DataError, match="no collection 'PandoraPFOs'"):
        read_edm4hep_taus(SPRING2021, reco_collection="PandoraPFOs")


# ---------------------------------------------------------------------------------------------------------
# The output: schema, taus, jets
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("sample", ["spring", "ww"])
def test_output_passes_the_schema_and_features(sample, request, tmp_path):
    jets = request.getfixturevalue(sample)
    assert len(jets) > 0
    assert set(FUURE_COLUMNS) | {"event_number", "reco_jet_index"} <= set(jets.fields)
    validate_fuure(jets)
    arrays = jet_arrays(jets, lifetime=True)
    np.testing.assert_array_equal(arrays.mask.sum(axis=1), np.minimum(ak.to_numpy(ak.num(jets.reco_cand_p4s)), 16))
    assert set(np.unique(ak.flatten(jets.reco_cand_pdg))) <= set(CANDIDATE_PDG_CODES)
    # written as a Fu(tau)ure file, it reads back unchanged
    path = tmp_path / "jets.parquet"
    ak.to_parquet(jets, path, row_group_size=1024)
    assert ak.array_equal(read_fuure(path), jets)


def test_spring2021_tau_jets(spring):
    decay_mode = ak.to_numpy(spring.gen_jet_tau_decaymode)
    taus = spring[decay_mode >= 0]
    # the file's last-copy hadronic taus, counted independently from the raw MC record
    with uproot.open(SPRING2021) as file:
        pdg = file["events"]["Particle/Particle.PDG"].array()
    assert ak.sum(ak.any(abs(pdg) == 15, axis=1)) == 21
    n_events_with_tau_jets = len(np.unique(ak.to_numpy(taus.event_number)))
    assert 15 <= len(taus) <= 22 and n_events_with_tau_jets >= 10
    assert set(decay_mode[decay_mode >= 0]) <= set(range(16)) and -1 in decay_mode
    assert {0, 1, 10} <= set(decay_mode)  # the common modes are all there
    vis, full = _p4(taus.gen_jet_tau_p4s), _p4(taus.gen_jet_full_tau_p4s)
    assert np.all(vis[:, 3] <= full[:, 3] + 1e-9)
    assert np.all(np.hypot(vis[:, 0], vis[:, 1]) <= np.hypot(full[:, 0], full[:, 1]) + 1e-9)
    np.testing.assert_allclose(ak.to_numpy(taus.gen_jet_tau_vis_energy), vis[:, 3], rtol=1e-6)
    assert set(ak.to_numpy(taus.gen_jet_tau_charge)) == {-1, 1}
    # the visible tau lies within dR 0.4 of its gen jet, the gen jet within 0.3 of the reco jet
    tau_eta, tau_phi = _eta_phi(vis)
    gen_eta, gen_phi = _eta_phi(_p4(taus.gen_jet_p4s))
    assert np.all(delta_r(tau_eta, tau_phi, gen_eta, gen_phi) < TAU_GEN_JET_DR)
    # background rows carry zeros
    background = spring[decay_mode < 0]
    assert np.all(_p4(background.gen_jet_tau_p4s) == 0)
    assert np.all(ak.to_numpy(background.gen_jet_tau_charge) == 0)


@pytest.mark.parametrize("sample", ["spring", "ww"])
def test_jets_are_sums_of_their_candidates(sample, request):
    jets = request.getfixturevalue(sample)
    cands = jets.reco_cand_p4s
    sums = np.stack([ak.to_numpy(ak.sum(c, axis=1)) for c in (cands.x, cands.y, cands.z)], axis=1)
    energy = ak.to_numpy(ak.sum(np.sqrt(cands.x**2 + cands.y**2 + cands.z**2 + cands.tau**2), axis=1))
    np.testing.assert_allclose(_p4(jets.reco_jet_p4s), np.column_stack([sums, energy]), rtol=1e-9, atol=1e-9)
    pt = np.hypot(cands.x, cands.y)
    assert ak.all(pt[:, :-1] >= pt[:, 1:])  # pT-descending
    reco_eta, reco_phi = _eta_phi(_p4(jets.reco_jet_p4s))
    gen_eta, gen_phi = _eta_phi(_p4(jets.gen_jet_p4s))
    assert np.all(delta_r(reco_eta, reco_phi, gen_eta, gen_phi) < GEN_RECO_JET_DR)


@pytest.mark.parametrize(("sample", "path"), [("spring", SPRING2021), ("ww", WW_V1)])
def test_every_reco_particle_is_in_at_most_one_jet(sample, path, request):
    jets = request.getfixturevalue(sample)
    with uproot.open(real_file(path)) as file:
        n_reco = ak.to_numpy(ak.num(file["events"]["ReconstructedParticles/ReconstructedParticles.charge"].array()))
    events = ak.to_numpy(jets.event_number)
    for event in np.unique(events):
        in_event = jets[events == event]
        indices = ak.to_numpy(ak.flatten(in_event.reco_cand_index))
        assert len(indices) == len(np.unique(indices)), f"event {event}: a particle is in two jets"
        assert indices.min() >= 0 and indices.max() < n_reco[event]
        reco_jets = ak.to_numpy(in_event.reco_jet_index)
        assert len(reco_jets) == len(np.unique(reco_jets))
    assert ak.sum(ak.num(jets.reco_cand_index)) <= n_reco.sum()


def test_impact_parameters_only_for_tracks(spring, ww):
    for jets in (spring, ww):
        charge = ak.to_numpy(ak.flatten(jets.reco_cand_charge))
        dxy, dxy_err = (ak.to_numpy(ak.flatten(jets[k])) for k in ("reco_cand_dxy", "reco_cand_dxy_err"))
        dz_err = ak.to_numpy(ak.flatten(jets.reco_cand_dz_err))
        assert np.all(dxy[charge == 0] == 0) and np.all(dxy_err[charge == 0] == 0)
        assert np.all(dxy_err[charge != 0] > 0) and np.all(dz_err[charge != 0] > 0)
        assert np.median(np.abs(dxy[charge != 0])) < 0.5  # mm: prompt tracks


def test_candidate_types_per_layout(spring, ww):
    # Spring2021 (pre-1.0, type 0): EFlowNeutralHadron is empty in this file, so every neutral is a photon
    spring_pdg = set(ak.to_numpy(ak.flatten(spring.reco_cand_pdg)))
    assert {22, 211} <= spring_pdg and 130 not in spring_pdg
    ww_pdg = set(ak.to_numpy(ak.flatten(ww.reco_cand_pdg)))
    assert {22, 130, 211} <= ww_pdg
    # masses follow the candidate type (charged hadrons carry the pion hypothesis)
    for jets in (spring, ww):
        pdg = ak.to_numpy(ak.flatten(jets.reco_cand_pdg))
        mass = ak.to_numpy(ak.flatten(jets.reco_cand_p4s.tau))
        np.testing.assert_allclose(mass[pdg == 211], 0.13957, atol=1e-4)
        assert np.all(mass[pdg == 22] < 0.02)


def test_chunks_and_max_events_give_the_same_rows(spring):
    chunked = read_edm4hep_taus(SPRING2021, chunk_events=7)
    assert ak.array_equal(chunked, spring)
    first = read_edm4hep_taus(SPRING2021, max_events=30)
    assert ak.max(first.event_number) < 30
    assert ak.array_equal(first, spring[ak.to_numpy(spring.event_number) < 30])


# ---------------------------------------------------------------------------------------------------------
# Cross-check against coffea NanoEvents' own decoding of the relations
# ---------------------------------------------------------------------------------------------------------


def _coffea_events(path: Path, version: str):
    nanoevents = pytest.importorskip("coffea.nanoevents")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return nanoevents.NanoEventsFactory.from_root(
            {str(path): "events"}, schemaclass=nanoevents.FCC.get_schema(version), mode="eager"
        ).events()


def _coffea_d0(events, layout: str) -> list[list[float | None]]:
    """D0 of each reconstructed particle's first track's first state, navigated with coffea."""
    out = []
    for event in range(len(events)):
        rp = events.ReconstructedParticles[event]
        if layout == "pre":
            begin, end = ak.to_numpy(rp.tracks.begin), ak.to_numpy(rp.tracks.end)
            track_index = ak.to_numpy(events.ReconstructedParticlesidx1.index[event])
            state_begin = ak.to_numpy(events.EFlowTrack.trackStates.begin[event])
            d0 = ak.to_numpy(events.EFlowTrack_1.D0[event])
            out.append([float(d0[state_begin[track_index[b]]]) if e > b else None for b, e in zip(begin, end)])
        else:
            tracks = ak.to_list(rp.tracks_idx_EFlowTrack_index)
            d0 = ak.to_list(events.EFlowTrack.trackStates.D0[event])
            out.append([float(d0[int(t[0])][0]) if t else None for t in tracks])
    return out


@pytest.mark.parametrize(("path", "version", "layout", "sample"),
                         [(SPRING2021, "pre-edm4hep1", "pre", "spring"), (WW_V1, "latest", "v1", "ww")])
def test_candidates_agree_with_coffea(path, version, layout, sample, request):
    jets = request.getfixturevalue(sample)
    events = _coffea_events(real_file(path), version)
    d0 = _coffea_d0(events, layout)
    px, pz = ak.to_list(events.ReconstructedParticles.px), ak.to_list(events.ReconstructedParticles.pz)
    rows = zip(ak.to_list(jets.event_number), ak.to_list(jets.reco_cand_index), ak.to_list(jets.reco_cand_p4s),
               ak.to_list(jets.reco_cand_dxy))
    for event, index, cands, dxy in rows:
        np.testing.assert_allclose([c["x"] for c in cands], [px[event][i] for i in index], rtol=1e-6)
        np.testing.assert_allclose([c["z"] for c in cands], [pz[event][i] for i in index], rtol=1e-6)
        expected = [d0[event][i] if d0[event][i] is not None else 0.0 for i in index]
        np.testing.assert_allclose(dxy, expected, rtol=1e-6, atol=1e-9)


def test_tau_decays_agree_with_coffea(spring):
    """Decay mode and visible energy of every tau jet, recomputed from coffea's daughter lists."""
    events = _coffea_events(real_file(SPRING2021), "pre-edm4hep1")
    particles = events.Particle
    taus = spring[spring.gen_jet_tau_decaymode >= 0]
    for event in np.unique(ak.to_numpy(taus.event_number)):
        pdg = np.concatenate([[90], ak.to_numpy(particles.PDG[event])])  # index 0: Pythia-style placeholder
        begin, end = ak.to_numpy(particles.daughters.begin[event]), ak.to_numpy(particles.daughters.end[event])
        daughters = ak.to_numpy(events.Particleidx1.index[event])
        has = end > begin
        d1 = np.concatenate([[0], np.where(has, daughters[np.where(has, begin, 0)] + 1, 0)])
        d2 = np.concatenate([[0], np.where(has, daughters[np.where(has, end - 1, 0)] + 1, 0)])
        p = [ak.to_numpy(particles[k][event]).astype(np.float64) for k in ("px", "py", "pz", "mass")]
        energy = np.concatenate([[0], np.sqrt(p[0] ** 2 + p[1] ** 2 + p[2] ** 2 + p[3] ** 2)])
        expected = set()
        for tau in last_copy_taus(pdg, d1, d2):
            products = tau_decay_products(tau, pdg, d1, d2)
            visible = [i for i in products if abs(pdg[i]) not in (12, 14, 16)]
            expected.add((decay_mode_from_products(pdg[products]), round(float(energy[visible].sum()), 3)))
        in_event = taus[ak.to_numpy(taus.event_number) == event]
        for mode, vis_energy in zip(ak.to_list(in_event.gen_jet_tau_decaymode),
                                    ak.to_list(in_event.gen_jet_tau_vis_energy)):
            assert (mode, round(vis_energy, 3)) in expected, f"event {event}: {(mode, vis_energy)} not in {expected}"
