"""The parametric detectors on hand-made generator events: each effect on, off, and its numbers."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from tauml.config import ConfigError, EEDetectorConfig, PPDetectorConfig
from tauml.data.detector import impact_parameters, simulate_ee, simulate_pp
from tauml.data.pythia import GenEvents

CHARGE = {22: 0.0, 211: 1.0, -211: -1.0, 11: -1.0, -11: 1.0, 13: -1.0, 130: 0.0, 2112: 0.0}
MASS = {22: 0.0, 211: 0.13957, -211: 0.13957, 11: 0.000511, -11: 0.000511, 13: 0.10566, 130: 0.4976, 2112: 0.9396}


def events(*particle_lists, vertex=(0.0, 0.0, 0.0)) -> GenEvents:
    """Final-state particles (pdg, px, py, pz) per event, all produced at ``vertex`` (mm)."""
    rows = [(ev, pdg, px, py, pz) for ev, plist in enumerate(particle_lists) for pdg, px, py, pz in plist]
    n = len(rows)
    pdg = np.array([r[1] for r in rows], np.int64)
    p = np.array([r[2:] for r in rows], float).reshape(n, 3)
    mass = np.array([MASS[c] for c in pdg])
    counts = np.bincount([r[0] for r in rows], minlength=len(particle_lists))
    return GenEvents(
        offsets=np.concatenate([[0], np.cumsum(counts)]), pdg=pdg, status=np.ones(n, np.int64),
        mother1=np.zeros(n, np.int64), daughter1=np.zeros(n, np.int64), daughter2=np.zeros(n, np.int64),
        px=p[:, 0], py=p[:, 1], pz=p[:, 2], e=np.sqrt((p**2).sum(1) + mass**2), m=mass,
        vx=np.full(n, vertex[0]), vy=np.full(n, vertex[1]), vz=np.full(n, vertex[2]),
        charge=np.array([CHARGE[c] for c in pdg]),
    )


IDEAL = EEDetectorConfig(realistic=False)
rng = np.random.default_rng


def test_ideal_photon_and_pion_give_one_candidate_each_with_the_right_type():
    gen = events([(22, 30.0, 0.0, 5.0), (211, 0.0, 20.0, 3.0)])
    c = simulate_ee(gen, IDEAL, rng(1))
    assert sorted(c.pdg.tolist()) == [22, 211]
    photon = c.pdg == 22
    assert c.e[photon][0] == pytest.approx(np.sqrt(30**2 + 5**2), rel=0.1)  # ECAL 15%/sqrt(E)
    pion = c.pdg == 211
    assert np.hypot(c.px[pion], c.py[pion])[0] == pytest.approx(np.hypot(0, 20), rel=0.01)  # tracker
    assert c.charge[pion][0] == 1.0 and c.charge[photon][0] == 0.0


def test_acceptance_and_thresholds():
    forward = events([(22, 1.0, 0.0, 20.0)])  # theta ~ 3 degrees, outside |cos theta| < 0.98
    assert len(simulate_ee(forward, IDEAL, rng(1)).px) == 0
    soft = events([(22, 0.2, 0.0, 0.0)])  # below the 0.5 GeV photon threshold
    assert len(simulate_ee(soft, IDEAL, rng(1)).px) == 0
    soft_muon = events([(13, 1.0, 0.0, 0.0)])  # below muon_p_min: seen as a charged hadron
    assert simulate_ee(soft_muon, IDEAL, rng(1)).pdg.tolist() == [211]


def test_pi0_photons_merge_only_with_the_realistic_detector():
    # two 20 GeV photons 5 mrad apart: 7.5 mm at the ECAL face, closer than the 20 mm merge distance
    pair = [(22, 20.0, 0.0, 0.0), (22, 20.0 * np.cos(0.005), 20.0 * np.sin(0.005), 0.0)]
    only_merging = replace(EEDetectorConfig(), conversions_on=False, fake_neutrals_on=False)
    n_ideal = [int((simulate_ee(events(pair), IDEAL, rng(s)).pdg == 22).sum()) for s in range(20)]
    n_real = [int((simulate_ee(events(pair), only_merging, rng(s)).pdg == 22).sum()) for s in range(20)]
    assert n_ideal == [2] * 20
    assert n_real == [1] * 20
    merged = simulate_ee(events(pair), only_merging, rng(0))
    assert merged.e[0] == pytest.approx(40.0, rel=0.1)  # the cluster carries both energies


def test_conversions_turn_photons_into_displaced_electron_pairs():
    always = replace(EEDetectorConfig(), conversion_probability=1.0, conversion_radius_max=100.0,
                     photon_merging_on=False, track_efficiency=1.0, lepton_id_on=False)
    gens = events(*[[(22, 40.0, 0.0, 0.0)]] * 50)
    c = simulate_ee(gens, always, rng(4))
    # probability capped at 0.5 per photon: about half the events hold an e+e- pair instead of a photon
    n_electrons = int((c.pdg == 11).sum())
    assert 30 < n_electrons < 70 and n_electrons % 2 == 0
    assert sorted(set(c.charge[c.pdg == 11].tolist())) == [-1.0, 1.0]
    assert int((c.pdg == 22).sum()) + n_electrons // 2 == 50


def test_fake_neutral_fragments_add_candidates_and_energy():
    fakes_only = replace(EEDetectorConfig(), fake_neutral_probability=1.0, conversions_on=False,
                         photon_merging_on=False, track_efficiency=1.0, track_tail_fraction=0.0,
                         lepton_id_on=False, neutral_confusion_on=False)
    gen = events(*[[(211, 50.0, 0.0, 0.0)]] * 30)
    c = simulate_ee(gen, fakes_only, rng(2))
    assert int((c.pdg == 211).sum()) == 30
    fragments = (c.pdg == 22) | (c.pdg == 130)
    assert 20 <= int(fragments.sum()) <= 30  # one per hadron unless below threshold
    assert c.e.sum() > 30 * 50.0  # double counting: the fragments add energy
    assert len(simulate_ee(gen, IDEAL, rng(2)).px) == 30


def test_lost_track_leaves_a_neutral_hadron_from_the_calorimeter():
    no_tracks = replace(EEDetectorConfig(), track_efficiency=0.0, fake_neutrals_on=False, conversions_on=False)
    c = simulate_ee(events([(211, 30.0, 0.0, 0.0)]), no_tracks, rng(0))
    assert c.pdg.tolist() == [130]


def test_impact_parameters_see_the_production_vertex():
    d0, z0 = impact_parameters(np.array([1.0]), np.array([0.0]), np.array([2.0]),
                               np.array([0.0]), np.array([10.0]), np.array([10.0]))
    assert d0[0] == pytest.approx(1.0) and z0[0] == pytest.approx(2.0)
    displaced = events(*[[(211, 0.0, 30.0, 0.0)]] * 200, vertex=(0.5, 0.0, 0.0))
    c = simulate_ee(displaced, IDEAL, rng(3))
    assert np.mean(c.dxy) == pytest.approx(0.5, abs=0.002)  # 5 um resolution, 200 tracks
    assert np.all(c.dxy_err > 0) and np.all(c.dz_err > 0)
    prompt = simulate_ee(events(*[[(211, 0.0, 30.0, 0.0)]] * 200), IDEAL, rng(3))
    assert abs(np.mean(prompt.dxy)) < 0.002


def test_same_generator_state_gives_the_same_candidates():
    gen = events(*[[(211, 5.0, 1.0, 2.0), (22, 10.0, 1.0, 0.0), (130, 8.0, -1.0, 1.0)]] * 20)
    a = simulate_ee(gen, EEDetectorConfig(), rng(11))
    b = simulate_ee(gen, EEDetectorConfig(), rng(11))
    c = simulate_ee(gen, EEDetectorConfig(), rng(12))
    np.testing.assert_array_equal(a.e, b.e)
    assert len(a.e) != len(c.e) or not np.array_equal(a.e, c.e)


def test_pp_detector_makes_towers_and_tracks():
    gen = events([(211, 100.0, 0.0, 0.0), (22, 50.0, 0.5, 0.0), (22, 50.0, 0.6, 0.0), (2112, 0.0, 60.0, 10.0)])
    c = simulate_pp(gen, PPDetectorConfig(realistic=False), rng(0))
    assert sorted(c.pdg.tolist()) == [22, 130, 211]  # two photons in one 0.02 x 0.02 tower
    assert c.e[c.pdg == 22][0] == pytest.approx(100.0, rel=0.05)


@pytest.mark.parametrize(("field", "value"), [("track_efficiency", 1.5), ("conversion_probability", -0.1),
                                              ("photon_merge_distance", -1.0)])
def test_impossible_detector_settings_are_refused(field, value):
    with pytest.raises(ConfigError, match=field):
        replace(EEDetectorConfig(), **{field: value}).validate()
