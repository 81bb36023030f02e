"""Features and targets from hand-made jets in both schemas, and the refusal of bad input."""

from __future__ import annotations

import awkward as ak
import numpy as np
import pytest

from tauml.config import FeatureConfig
from tauml.data.features import FEATURE_NAMES, inverse_transform, jet_arrays
from tauml.data.schema import DataError


def fuure_jet(cands, tau_pt=40.0, dm=1):
    """One Fu(tau)ure row from candidates (px, py, pz, mass, pdg, charge); the jet is their sum."""
    px, py, pz, m = (np.array([c[i] for c in cands], float) for i in range(4))
    e = np.sqrt(px**2 + py**2 + pz**2 + m**2)
    jet = {"x": px.sum(), "y": py.sum(), "z": pz.sum(), "tau": np.sqrt(max(e.sum() ** 2 - px.sum() ** 2
                                                                          - py.sum() ** 2 - pz.sum() ** 2, 0))}
    return {
        "reco_cand_p4s": [{"x": a, "y": b, "z": c, "tau": d} for a, b, c, d in zip(px, py, pz, m)],
        "reco_cand_charge": [float(c[5]) for c in cands], "reco_cand_pdg": [c[4] for c in cands],
        "reco_cand_dxy": [0.1] * len(cands), "reco_cand_dz": [0.0] * len(cands),
        "reco_cand_dxy_err": [0.01] * len(cands), "reco_cand_dz_err": [0.01] * len(cands),
        "reco_jet_p4s": jet, "gen_jet_p4s": jet,
        "gen_jet_tau_p4s": {"x": tau_pt, "y": 0.0, "z": 0.0, "tau": 1.0},
        "gen_jet_tau_decaymode": dm,
    }


PION = (30.0, 0.0, 0.0, 0.13957, 211, -1)
PHOTON = (10.0, 1.0, 0.5, 0.0, 22, 0)


def test_features_follow_the_documented_transforms():
    arrays = jet_arrays(ak.Array([fuure_jet([PHOTON, PION])]))
    assert arrays.features.shape == (1, 16, len(FEATURE_NAMES))
    assert arrays.mask[0].tolist() == [True, True] + [False] * 14
    first, second = arrays.features[0, 0], arrays.features[0, 1]
    assert first[0] == pytest.approx(np.log(30.0) - 1.8)  # the pion is harder: it comes first
    assert first[1] == pytest.approx(0.13957 * 5)
    assert first[4] == -1 and first[5:].tolist() == [0, 0, 0, 1, 0]
    assert second[5:].tolist() == [0, 0, 1, 0, 0] and second[4] == 0
    # signed angles to the jet axis, times 3: the photon sits at +phi and +eta of the axis
    assert second[2] > 0 and second[3] > 0
    assert first[3] < 0  # the pion at phi = 0 is below the axis, which the photon pulls up
    assert np.all(arrays.features[0, 2:] == 0)
    physical = inverse_transform(arrays.features[0, :2])
    assert physical["pt"][0] == pytest.approx(30.0, rel=1e-5)
    assert physical["pid"].tolist() == [3, 2]
    jet_pt = np.hypot(40.0, 1.0)
    assert arrays.log_pt_ratio[0] == pytest.approx(np.log(40.0 / jet_pt), rel=1e-5)
    assert arrays.is_tau[0] == 1 and arrays.dm[0] == 1


def test_padding_truncates_to_the_hardest_constituents():
    cands = [(float(k), 0.1 * k, 0.0, 0.0, 22, 0) for k in range(1, 21)]
    arrays = jet_arrays(ak.Array([fuure_jet(cands)]), max_constituents=4)
    pt = inverse_transform(arrays.features[0])["pt"]
    assert arrays.mask.sum() == 4
    np.testing.assert_allclose(pt, [np.hypot(k, 0.1 * k) for k in (20, 19, 18, 17)], rtol=1e-5)


def test_background_jets_have_no_regression_or_decay_mode_target():
    arrays = jet_arrays(ak.Array([fuure_jet([PION], dm=-1), fuure_jet([PION], dm=10)]))
    assert arrays.is_tau.tolist() == [0, 1] and arrays.dm.tolist() == [-1, 3]
    assert np.isnan(arrays.log_pt_ratio[0]) and np.isfinite(arrays.log_pt_ratio[1])


def test_jetclass_records_give_the_same_feature_layout():
    jets = ak.Array([{
        "part_px": [100.0, 50.0], "part_py": [0.0, 5.0], "part_pz": [10.0, 0.0],
        "part_energy": [100.6, 50.3], "part_charge": [1.0, 0.0],
        "part_isChargedHadron": [1, 0], "part_isNeutralHadron": [0, 0], "part_isPhoton": [0, 1],
        "part_isElectron": [0, 0], "part_isMuon": [0, 0],
    }])
    arrays = jet_arrays(jets)
    assert arrays.features.shape == (1, 128, 10)
    assert arrays.features[0, 0, 5:].tolist() == [0, 0, 0, 1, 0]
    assert arrays.features[0, 1, 5:].tolist() == [0, 0, 1, 0, 0]
    assert arrays.is_tau[0] == 0 and arrays.dm[0] == -1


def test_lifetime_features_are_optional_and_bounded():
    arrays = jet_arrays(ak.Array([fuure_jet([PION, PHOTON])]), lifetime=True)
    assert arrays.lifetime.shape == (1, 16, 4)
    assert arrays.lifetime[0, 0, 0] == pytest.approx(np.tanh(0.1))
    assert jet_arrays(ak.Array([fuure_jet([PION])])).lifetime is None


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda j: {**j, "reco_cand_p4s": [{"x": float("nan"), "y": 0.0, "z": 0.0, "tau": 0.0}]},
         "NaN or infinite"),
        (lambda j: {**j, "reco_cand_pdg": [321]}, "holds codes"),
        (lambda j: {k: v for k, v in j.items() if k != "reco_jet_p4s"}, "lacks the column"),
        (lambda j: {**j, "gen_jet_tau_decaymode": 16}, "leptonic"),
    ],
)
def test_bad_input_is_refused_with_a_clear_message(mutate, message):
    with pytest.raises(DataError, match=message):
        jet_arrays(ak.Array([mutate(fuure_jet([PION]))]))


def test_empty_jets_are_refused():
    empty = {k: ([] if k.startswith("reco_cand") else v) for k, v in fuure_jet([PION]).items()}
    with pytest.raises(DataError, match="1 jets have no constituents"):
        jet_arrays(ak.Array([fuure_jet([PION]), empty]))


def test_no_jets_and_unknown_schema_are_refused():
    with pytest.raises(DataError, match="no jets"):
        jet_arrays(ak.Array([fuure_jet([PION])])[:0])
    with pytest.raises(DataError, match="neither"):
        jet_arrays(ak.Array([{"pt": 1.0}]))


def test_feature_settings_are_applied():
    arrays = jet_arrays(ak.Array([fuure_jet([PION])]), FeatureConfig(log_pt_shift=0.0, mass_scale=1.0))
    assert arrays.features[0, 0, 0] == pytest.approx(np.log(30.0))
    assert arrays.features[0, 0, 1] == pytest.approx(0.13957)
