"""Readers for Fu(tau)ure parquet files and JetClass / JetClass-II ROOT and parquet files."""

from __future__ import annotations

from pathlib import Path

import awkward as ak
import numpy as np
import pytest
import uproot
from helpers import real_file

from tauml.data.features import jet_arrays
from tauml.data.readers import (
    JETCLASS_DEFAULT_BRANCHES,
    fuure_num_row_groups,
    iter_fuure,
    jetclass_files,
    read_fuure,
    read_jetclass,
    read_jetclass_dir,
)
from tauml.data.schema import FUURE_COLUMNS, FUURE_ROW_GROUP_SIZE, JETCLASS_LABELS, DataError

N_JETS = 2500  # three row groups of 1024


# ---------------------------------------------------------------------------------------------------------
# Fu(tau)ure files written here in the exact schema
# ---------------------------------------------------------------------------------------------------------


def _fuure_jets(n: int = N_JETS, seed: int = 7, energy_field: bool = False) -> ak.Array:
    """Jets in the Fu(tau)ure schema: 1-12 candidates with masses of the candidate type, 30% taus."""
    rng = np.random.default_rng(seed)
    counts = rng.integers(1, 13, n)
    total = int(counts.sum())
    pdg = rng.choice([11, 13, 22, 211, 130], total, p=[0.05, 0.05, 0.4, 0.4, 0.1])
    mass = np.select([pdg == 11, pdg == 13, pdg == 211, pdg == 130], [0.000511, 0.1057, 0.1396, 0.4976], 0.0)
    charge = np.where(np.isin(pdg, (11, 13, 211)), rng.choice([-1, 1], total), 0)
    px, py, pz = rng.normal(0, 8, (3, total))

    def p4(x, y, z, m):
        if energy_field:
            return ak.zip({"x": x, "y": y, "z": z, "t": np.sqrt(x**2 + y**2 + z**2 + m**2)})
        return ak.zip({"x": x, "y": y, "z": z, "tau": m})

    jet_sums = [np.add.reduceat(v, np.concatenate([[0], np.cumsum(counts)[:-1]])) for v in (px, py, pz)]
    decay_mode = np.where(rng.random(n) < 0.3, rng.choice([0, 1, 2, 10, 11, 15], n), -1)
    vis_scale = np.where(decay_mode >= 0, rng.uniform(0.5, 1.0, n), 0.0)
    columns = {
        "reco_cand_p4s": ak.unflatten(p4(px, py, pz, mass), counts),
        "reco_cand_charge": ak.unflatten(charge.astype(np.int32), counts),
        "reco_cand_pdg": ak.unflatten(pdg.astype(np.int32), counts),
        "reco_cand_dxy": ak.unflatten(np.where(charge != 0, rng.normal(0, 0.05, total), 0).astype(np.float32), counts),
        "reco_cand_dz": ak.unflatten(np.where(charge != 0, rng.normal(0, 0.05, total), 0).astype(np.float32), counts),
        "reco_cand_dxy_err": ak.unflatten(np.full(total, 0.01, np.float32), counts),
        "reco_cand_dz_err": ak.unflatten(np.full(total, 0.02, np.float32), counts),
        "reco_jet_p4s": p4(*jet_sums, np.full(n, 1.0)),
        "gen_jet_p4s": p4(*(0.98 * v for v in jet_sums), np.full(n, 1.0)),
        "gen_jet_tau_p4s": p4(*(vis_scale * v for v in jet_sums), np.where(decay_mode >= 0, 0.8, 0.0)),
        "gen_jet_tau_decaymode": decay_mode.astype(np.int32),
    }
    return ak.zip(columns, depth_limit=1)


@pytest.fixture(scope="module")
def fuure_file(tmp_path_factory) -> tuple[Path, ak.Array]:
    jets = _fuure_jets()
    path = tmp_path_factory.mktemp("fuure") / "z_test.parquet"
    ak.to_parquet(jets, path, row_group_size=FUURE_ROW_GROUP_SIZE)
    return path, jets


def test_read_fuure_round_trip_and_row_groups(fuure_file):
    path, jets = fuure_file
    assert fuure_num_row_groups(path) == 3
    read = read_fuure(path)
    assert read.fields == list(FUURE_COLUMNS)
    assert ak.array_equal(read, jets)
    assert ak.array_equal(read_fuure(path, row_groups=[1]), jets[1024:2048])
    assert ak.array_equal(read_fuure(path, max_jets=1500), jets[:1500])
    assert len(read_fuure(path, max_jets=0)) == 0


def test_iter_fuure_streams_row_groups(fuure_file):
    path, jets = fuure_file
    batches = list(iter_fuure(path))
    assert [len(b) for b in batches] == [1024, 1024, N_JETS - 2048]
    assert ak.array_equal(ak.concatenate(batches), jets)
    pairs = list(iter_fuure(path, columns=["reco_jet_p4s", "gen_jet_tau_decaymode"], batch_row_groups=2))
    assert [len(b) for b in pairs] == [2048, N_JETS - 2048]
    assert pairs[0].fields == ["reco_jet_p4s", "gen_jet_tau_decaymode"]
    with pytest.raises(DataError, match="batch_row_groups"):
        next(iter_fuure(path, batch_row_groups=0))


def test_fuure_energy_variant_gives_the_same_features(fuure_file, tmp_path):
    path, _ = fuure_file
    with_t = tmp_path / "t.parquet"
    ak.to_parquet(_fuure_jets(energy_field=True), with_t, row_group_size=FUURE_ROW_GROUP_SIZE)
    read = read_fuure(with_t)
    assert read.reco_cand_p4s.fields == ["x", "y", "z", "t"]
    from_mass, from_energy = jet_arrays(read_fuure(path)), jet_arrays(read)
    np.testing.assert_allclose(from_energy.features, from_mass.features, atol=2e-4)
    np.testing.assert_array_equal(from_energy.mask, from_mass.mask)
    np.testing.assert_array_equal(from_energy.dm, from_mass.dm)
    np.testing.assert_allclose(from_energy.log_pt_ratio, from_mass.log_pt_ratio, rtol=1e-6)


def test_fuure_columns_and_errors(fuure_file, tmp_path):
    path, jets = fuure_file
    only = read_fuure(path, columns=["gen_jet_tau_decaymode"])
    assert only.fields == ["gen_jet_tau_decaymode"]
    np.testing.assert_array_equal(ak.to_numpy(only.gen_jet_tau_decaymode), ak.to_numpy(jets.gen_jet_tau_decaymode))
    with pytest.raises(DataError, match=r"no column.*reco_cand_mass"):
        read_fuure(path, columns=["reco_cand_mass"])
    with pytest.raises(DataError, match="row groups"):
        read_fuure(path, row_groups=[3])
    with pytest.raises(DataError, match=r"does not exist.*tauml generate.*tauml fetch"):
        read_fuure(tmp_path / "missing.parquet")


def test_fuure_truncated_and_foreign_files(fuure_file, tmp_path):
    path, _ = fuure_file
    truncated = tmp_path / "truncated.parquet"
    truncated.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(DataError, match=r"truncated\.parquet.*not a readable parquet"):
        read_fuure(truncated)
    text = tmp_path / "notes.parquet"
    text.write_text("these are not jets\n")
    with pytest.raises(DataError, match=r"notes\.parquet"):
        fuure_num_row_groups(text)
    with pytest.raises(DataError, match="folder"):
        read_fuure(tmp_path)
    damaged = tmp_path / "damaged.parquet"  # intact footer, corrupt (zstd-compressed) data pages
    content = bytearray(path.read_bytes())
    for position in np.random.default_rng(0).integers(1000, len(content) // 2, 50):
        content[position] ^= 0xFF
    damaged.write_bytes(bytes(content))
    with pytest.raises(DataError, match=r"damaged\.parquet.*corrupt"):
        read_fuure(damaged)


def test_fuure_missing_column_and_bad_vectors(tmp_path):
    jets = _fuure_jets(100)
    lacking = tmp_path / "lacking.parquet"
    ak.to_parquet(jets[[f for f in jets.fields if f != "reco_cand_pdg"]], lacking)
    with pytest.raises(DataError, match="reco_cand_pdg"):
        read_fuure(lacking)
    bad = tmp_path / "bad.parquet"
    renamed = ak.zip({"px": jets.reco_jet_p4s.x, "py": jets.reco_jet_p4s.y, "pz": jets.reco_jet_p4s.z,
                      "e": jets.reco_jet_p4s.tau})
    ak.to_parquet(ak.with_field(jets, renamed, "reco_jet_p4s"), bad)
    with pytest.raises(DataError, match=r"reco_jet_p4s.*x, y, z"):
        read_fuure(bad)


# ---------------------------------------------------------------------------------------------------------
# JetClass
# ---------------------------------------------------------------------------------------------------------


def test_jetclass2_root_and_parquet_read_identically():
    from_root = read_jetclass(real_file("JetClassII_example.root"))
    from_parquet = read_jetclass(real_file("JetClassII_example.parquet"))
    assert len(from_root) == 100
    assert from_root.fields == from_parquet.fields
    assert str(from_root.type) == str(from_parquet.type)
    assert ak.array_equal(from_root, from_parquet, dtype_exact=True)
    for field in from_root.fields:  # field by field, as flat numpy
        a, b = from_root[field], from_parquet[field]
        if a.ndim > 1:
            a, b = ak.flatten(a), ak.flatten(b)
        np.testing.assert_array_equal(ak.to_numpy(a), ak.to_numpy(b), err_msg=field)
    assert "label_QCD" not in from_root.fields and "jet_label" in from_root.fields  # JetClass-II
    assert set(from_root.fields) <= set(JETCLASS_DEFAULT_BRANCHES)


def test_jetclass2_dtypes_and_features():
    jets = read_jetclass(real_file("JetClassII_example.root"))
    assert ak.flatten(jets.part_charge).layout.dtype == np.float32
    assert ak.flatten(jets.part_isPhoton).layout.dtype == np.bool_
    assert jets.jet_label.layout.dtype == np.int32
    np.testing.assert_array_equal(ak.to_numpy(ak.num(jets.part_px)), ak.to_numpy(jets.jet_nparticles))
    arrays = jet_arrays(jets)
    assert arrays.mask.sum() == ak.sum(ak.num(jets.part_px))
    np.testing.assert_array_equal(arrays.features[arrays.mask][:, 5:].sum(axis=1), 1.0)


def test_jetclass_max_jets_and_branches():
    root, parquet = real_file("JetClassII_example.root"), real_file("JetClassII_example.parquet")
    for path in (root, parquet):
        first = read_jetclass(path, max_jets=7)
        assert len(first) == 7
        assert ak.array_equal(first, read_jetclass(path)[:7])
        two = read_jetclass(path, branches=["jet_pt", "part_charge"])
        assert two.fields == ["jet_pt", "part_charge"]
        with pytest.raises(DataError, match=r"no branch.*part_mass"):
            read_jetclass(path, branches=["part_mass"])


def _v1_jets(n: int, seed: int) -> dict[str, ak.Array]:
    """A JetClass v1-style file's content: int32 flags, float32 charge, one-hot labels of mixed types."""
    rng = np.random.default_rng(seed)
    counts = rng.integers(2, 20, n)
    total = int(counts.sum())
    kind = rng.integers(0, 5, total)
    particle = {
        "px": rng.normal(0, 20, total).astype(np.float32), "py": rng.normal(0, 20, total).astype(np.float32),
        "pz": rng.normal(0, 20, total).astype(np.float32), "energy": rng.uniform(60, 90, total).astype(np.float32),
        "charge": np.where(kind < 2, 0, 1).astype(np.float32),
        "isPhoton": (kind == 0).astype(np.int32), "isNeutralHadron": (kind == 1).astype(np.int32),
        "isChargedHadron": (kind == 2).astype(np.int32), "isElectron": (kind == 3).astype(np.int32),
        "isMuon": (kind == 4).astype(np.int32),
    }
    content = {"part": ak.unflatten(ak.zip(particle), counts)}
    content["jet_pt"] = rng.uniform(500, 1000, n).astype(np.float32)
    for i, label in enumerate(JETCLASS_LABELS):
        value = np.full(n, 1 if i == 0 else 0)
        content[label] = value.astype(np.float32 if i == 0 else np.bool_ if i < 6 else np.int32)
    return content


def _write_root(path: Path, content: dict, tree: str = "tree") -> None:
    """A ROOT TTree (uproot adds a counter branch `n<name>` for each jagged record)."""
    with uproot.recreate(path) as file:
        file.mktree(tree, {k: v.type if isinstance(v, ak.Array) else v.dtype for k, v in content.items()})
        file[tree].extend(content)


def test_jetclass_v1_root_with_counter_branches(tmp_path):
    path = tmp_path / "ZJetsToNuNu_000.root"
    _write_root(path, _v1_jets(30, seed=1))
    with uproot.open(path) as file:
        assert "npart" in file["tree"].keys()  # uproot's counter branch for the jagged particles
    jets = read_jetclass(path)
    assert "npart" not in jets.fields
    assert jets.fields[:2] == ["part_px", "part_py"] and "label_Tbl" in jets.fields
    assert ak.flatten(jets.part_isMuon).layout.dtype == np.bool_
    assert ak.flatten(jets.part_charge).layout.dtype == np.float32
    assert {jets[label].layout.dtype for label in JETCLASS_LABELS} == {np.dtype(np.int32)}
    assert ak.all(jets.label_QCD == 1) and not ak.any(jets.label_Hbb)
    assert jet_arrays(jets).mask.sum() == ak.sum(ak.num(jets.part_px))


def test_jetclass_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        read_jetclass(tmp_path / "HToBB_000.root")
    other_tree = tmp_path / "other.root"
    _write_root(other_tree, {"x": np.arange(3.0)}, tree="events")
    with pytest.raises(DataError, match="no TTree 'tree'"):
        read_jetclass(other_tree)
    lacking = tmp_path / "lacking.root"
    content = _v1_jets(5, seed=2)
    content["part"] = content["part"][[f for f in content["part"].fields if f != "isMuon"]]
    _write_root(lacking, content)
    with pytest.raises(DataError, match="part_isMuon"):
        read_jetclass(lacking)
    good = tmp_path / "good.root"
    _write_root(good, _v1_jets(200, seed=3))
    truncated = tmp_path / "truncated.root"
    truncated.write_bytes(good.read_bytes()[:2000])
    with pytest.raises(DataError, match=r"truncated\.root"):
        read_jetclass(truncated)


def test_read_jetclass_dir(tmp_path):
    for name, n, seed in (("HToBB_000.root", 30, 1), ("HToBB_001.root", 30, 2), ("TTBar_100.root", 25, 3)):
        _write_root(tmp_path / name, _v1_jets(n, seed))
    (tmp_path / "README.txt").write_text("not a jet file")
    (tmp_path / "Unknown_000.root").write_bytes(b"")
    files = jetclass_files(tmp_path)
    assert list(files) == ["HToBB", "TTBar"]
    assert [f.name for f in files["HToBB"]] == ["HToBB_000.root", "HToBB_001.root"]

    jets = read_jetclass_dir(tmp_path)
    assert len(jets) == 85
    assert ak.to_list(jets.sample[[0, 59, 60]]) == ["HToBB", "HToBB", "TTBar"]
    capped = read_jetclass_dir(tmp_path, max_jets_per_sample=40)
    assert ak.to_list(capped.sample).count("HToBB") == 40 and ak.to_list(capped.sample).count("TTBar") == 25
    assert ak.array_equal(capped[30:40].part_px, read_jetclass(tmp_path / "HToBB_001.root", max_jets=10).part_px)
    only = read_jetclass_dir(tmp_path, samples=["TTBar"])
    assert set(ak.to_list(only.sample)) == {"TTBar"}
    with pytest.raises(DataError, match=r"unknown JetClass sample.*Hbb"):
        read_jetclass_dir(tmp_path, samples=["Hbb"])
    with pytest.raises(DataError, match="no JetClass files"):
        read_jetclass_dir(tmp_path, samples=["WToQQ"])
    with pytest.raises(DataError, match="does not exist"):
        read_jetclass_dir(tmp_path / "nowhere")
