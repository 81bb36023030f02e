"""Event generation end to end on real Pythia events: schemas, truth, determinism, resume, refusals."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace

import awkward as ak
import numpy as np
import pyarrow.parquet as pq
import pytest
import uproot

from tauml.cli import main
from tauml.config import ConfigError, GenerationConfig
from tauml.data.features import jet_arrays
from tauml.data.generate import ChunkTask, chunk_tasks, generate, run_chunk
from tauml.data.readers import read_fuure, read_jetclass
from tauml.data.schema import (
    FUURE_COLUMNS,
    FUURE_EXTRA_COLUMNS,
    FUURE_ROW_GROUP_SIZE,
    JETCLASS_JET_BRANCHES,
    JETCLASS_LABELS,
    JETCLASS_PARTICLE_BRANCHES,
    DataError,
)


def test_every_sample_is_written_in_its_schema(tiny_dataset):
    for sample in ("z", "zh", "qq"):
        for split in ("train", "test"):
            path = tiny_dataset.fuure(sample, split)
            jets = read_fuure(path)
            assert set(FUURE_COLUMNS) | set(FUURE_EXTRA_COLUMNS) <= set(jets.fields)
            assert jets.reco_cand_p4s.fields == ["x", "y", "z", "tau"]
            meta = pq.ParquetFile(path).metadata
            assert all(meta.row_group(i).num_rows <= FUURE_ROW_GROUP_SIZE for i in range(meta.num_row_groups))
            assert len(jets) > 0
    for sample in ("ZJetsToNuNu", "TTBar"):
        for path in tiny_dataset.jetclass(sample):
            tree = uproot.open(path)["tree"]
            assert set(JETCLASS_PARTICLE_BRANCHES + JETCLASS_JET_BRANCHES + JETCLASS_LABELS) <= set(tree.keys())
    manifest = tiny_dataset.manifest
    assert manifest["samples"]["z"]["events"] == 200
    assert manifest["samples"]["z"]["events_per_cpu_second"] > 0


def test_tau_jets_carry_consistent_truth(tiny_dataset):
    jets = read_fuure(tiny_dataset.fuure("z", "train"))
    dm = ak.to_numpy(jets.gen_jet_tau_decaymode)
    assert np.all((dm >= 0) & (dm <= 15))  # signal samples keep tau-matched jets only; no leptonic taus
    vis_e = ak.to_numpy(jets.gen_jet_tau_vis_energy)
    tau = jets.gen_jet_full_tau_p4s
    tau_e = ak.to_numpy(np.sqrt(tau.x**2 + tau.y**2 + tau.z**2 + tau.tau**2))
    assert np.all(vis_e <= tau_e * (1 + 1e-5))  # neutrinos take a share
    assert np.allclose(ak.to_numpy(tau.tau), 1.777, atol=0.01)
    # the tau flies: its decay vertex is displaced, by ~ c tau * gamma = 87 um * E / m
    r = np.hypot(ak.to_numpy(jets.gen_jet_tau_decay_vertex_x), ak.to_numpy(jets.gen_jet_tau_decay_vertex_y))
    assert 0.2 < np.median(r) < 10.0
    # the reco jet is the sum of its candidates, and candidates are pT-descending
    cand = jets.reco_cand_p4s
    for axis in ("x", "y", "z"):
        np.testing.assert_allclose(ak.to_numpy(ak.sum(cand[axis], axis=1)), ak.to_numpy(jets.reco_jet_p4s[axis]),
                                   rtol=1e-4, atol=1e-3)
    pt = np.hypot(cand.x, cand.y)
    assert ak.all(pt[:, :-1] >= pt[:, 1:])
    pdg = np.unique(ak.to_numpy(ak.flatten(jets.reco_cand_pdg)))
    assert set(pdg) <= {11, 13, 22, 130, 211}
    background = read_fuure(tiny_dataset.fuure("qq", "train"))
    assert np.all(ak.to_numpy(background.gen_jet_tau_decaymode) == -1)
    arrays = jet_arrays(jets)
    assert np.all(arrays.is_tau == 1) and np.all(np.isfinite(arrays.log_pt_ratio))
    assert np.median(arrays.jet_pt / arrays.gen_vis_pt) == pytest.approx(1.0, abs=0.05)


def test_train_test_split_is_by_event(tiny_dataset):
    train = set(read_fuure(tiny_dataset.fuure("qq", "train")).event_number.to_list())
    test = set(read_fuure(tiny_dataset.fuure("qq", "test")).event_number.to_list())
    assert train and test and not train & test
    events = read_fuure(tiny_dataset.fuure_events("qq", "train"), columns=["event_number"])
    assert train <= set(events.event_number.to_list())


def test_pp_jets_pass_the_jetclass_selection(tiny_dataset):
    for sample, label in (("ZJetsToNuNu", "label_QCD"), ("TTBar", "label_Tbqq")):
        jets = ak.concatenate([read_jetclass(p) for p in tiny_dataset.jetclass(sample)])
        pt = ak.to_numpy(jets.jet_pt)
        assert len(jets) > 0 and np.all((pt > 500) & (pt < 1000)) and np.all(np.abs(ak.to_numpy(jets.jet_eta)) < 2)
        assert np.all(ak.to_numpy(jets[label]) == 1)
        assert np.all(ak.to_numpy(jets.jet_nparticles) == ak.to_numpy(ak.num(jets.part_px)))
    tops = ak.concatenate([read_jetclass(p) for p in tiny_dataset.jetclass("TTBar")])
    assert 120 < np.median(ak.to_numpy(tops.jet_sdmass)) < 220  # top jets carry the top mass
    tau = ak.to_numpy(tops.jet_tau3) / np.maximum(ak.to_numpy(tops.jet_tau2), 1e-9)
    assert np.all((tau >= 0) & (tau <= 1.5))


def test_same_seed_same_events_other_seed_other_events(tmp_path):
    config = GenerationConfig(events={"zh": 40}, seed=5, chunk_events=40)
    task = ChunkTask("zh", 0, 40, 0)
    for name, cfg in (("a", config), ("b", config), ("c", replace(config, seed=6))):
        run_chunk(task, cfg, str(tmp_path / name))
    read = {n: ak.from_parquet(tmp_path / n / "chunks" / "zh" / "jets_00000.parquet") for n in "abc"}
    assert ak.array_equal(read["a"], read["b"])
    assert not ak.array_equal(read["a"], read["c"])


def test_an_interrupted_run_resumes_to_the_same_result(tmp_path):
    config = GenerationConfig(events={"qq": 90, "zh": 30}, seed=2, chunk_events=30)
    full = generate(config, tmp_path / "full", workers=1, progress=False)
    # an interrupted run: only the first chunk finished, no merged files yet
    partial = tmp_path / "partial"
    generate(replace(config, events={"qq": 30}), tmp_path / "scratch", workers=1, progress=False)
    partial.mkdir()
    (partial / ".tauml-generation.json").write_text((full.root / ".tauml-generation.json").read_text())
    first = chunk_tasks(config)[0]
    run_chunk(first, config, str(partial))
    resumed = generate(config, partial, workers=1, progress=False)
    for sample in ("qq", "zh"):
        assert ak.array_equal(read_fuure(full.fuure(sample)), read_fuure(resumed.fuure(sample)))
    assert resumed.manifest["samples"]["qq"]["events"] == 90


def test_chunks_generated_on_a_two_worker_dask_cluster_equal_the_local_ones(tmp_path):
    pytest.importorskip("dask.distributed")
    config = GenerationConfig(events={"qq": 60, "TTBar": 40}, seed=4, chunk_events=20)
    local = generate(config, tmp_path / "local", workers=1, progress=False)
    # one chunk done before: the dask run resumes from it and generates only the others
    first = chunk_tasks(config)[0]
    (tmp_path / "dask").mkdir()
    (tmp_path / "dask" / ".tauml-generation.json").write_text((local.root / ".tauml-generation.json").read_text())
    run_chunk(first, config, str(tmp_path / "dask"))
    done_first = (tmp_path / "dask" / "chunks" / first.sample / f"done_{first.chunk:05d}.json").stat().st_mtime_ns
    on_dask = generate(config, tmp_path / "dask", progress=False, scheduler="local:2")
    assert on_dask.manifest["workers"] == "dask local:2"
    assert (tmp_path / "dask" / "chunks" / first.sample / f"done_{first.chunk:05d}.json").stat().st_mtime_ns == \
        done_first
    for split in ("train", "test"):
        assert ak.array_equal(read_fuure(local.fuure("qq", split)), read_fuure(on_dask.fuure("qq", split)))
    for a, b in zip(local.jetclass("TTBar"), on_dask.jetclass("TTBar"), strict=True):
        assert ak.array_equal(read_jetclass(a), read_jetclass(b))


def test_refuses_to_write_into_a_foreign_or_different_folder(tmp_path):
    mine = tmp_path / "notes"
    mine.mkdir()
    (mine / "thesis.tex").write_text("my work")
    config = GenerationConfig(events={"zh": 10}, chunk_events=10)
    with pytest.raises(DataError, match="not empty"):
        generate(config, mine, workers=1, progress=False)
    assert (mine / "thesis.tex").read_text() == "my work"
    done = generate(config, tmp_path / "data", workers=1, progress=False)
    with pytest.raises(DataError, match="another configuration"):
        generate(replace(config, seed=9), done.root, workers=1, progress=False)
    shutil.rmtree(done.root)


def test_bad_generation_settings_are_refused():
    with pytest.raises(ConfigError, match="unknown sample 'ww'"):
        GenerationConfig(events={"ww": 10}).validate()
    with pytest.raises(ConfigError, match="positive integer"):
        GenerationConfig(events={"z": 0}).validate()
    with pytest.raises(ConfigError, match="empty"):
        GenerationConfig(events={}).validate()


def test_command_line_generates_one_sample(tmp_path, capsys):
    assert main(["generate", "--sample", "zh", "--events", "20", "--seed", "4", "--out", str(tmp_path / "d"),
                 "--quiet", "--workers", "1"]) == 0
    out = capsys.readouterr().out
    assert "zh" in out and "events/s/core" in out
    manifest = json.loads((tmp_path / "d" / "manifest.json").read_text())
    assert manifest["config"]["events"] == {"zh": 20} and manifest["config"]["seed"] == 4
    assert main(["generate", "--events", "20"]) == 2
    assert "--events needs --sample" in capsys.readouterr().err
