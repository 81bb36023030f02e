"""Data sources: the released Fu(tau)ure and JetClass layouts as input to every step (tauml.data.sources, --data).

The folders are built from the tiny generated dataset (real Pythia events) in the released names: the Fu(tau)ure
files ``{z,zh,qq}_{train,test}.parquet`` with ``z_train`` split in two (``z_train_0``, ``z_train_1``), and the
JetClass files ``<Sample>_<NNN>.root`` in ``train_100M/`` and ``val_5M/`` folders as the archives unpack.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import replace
from pathlib import Path

import awkward as ak
import nbformat
import numpy as np
import pytest
from helpers import real_file

from tauml import pipeline
from tauml.config import PRESETS, ConfigError, with_data
from tauml.data.schema import DataError
from tauml.data.sources import NoDataFiles, resolve

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


def released_layout(data, folder: Path) -> Path:
    """Copy the generated dataset ``data`` into ``folder`` in the released names and folders; returns ``folder``."""
    fuure = folder / "fuure"
    fuure.mkdir(parents=True)
    for sample in ("z", "zh", "qq"):
        for split in ("train", "test"):
            source = data.fuure(sample, split)
            if (sample, split) == ("z", "train"):  # several files per sample and split
                jets = ak.from_parquet(source)
                half = len(jets) // 2
                ak.to_parquet(jets[:half], fuure / "z_train_0.parquet", row_group_size=1024)
                ak.to_parquet(jets[half:], fuure / "z_train_1.parquet", row_group_size=1024)
            else:
                shutil.copy2(source, fuure / f"{sample}_{split}.parquet")
    train = folder / "JetClass_Pythia_train_100M_part0" / "train_100M"
    val = folder / "JetClass_Pythia_val_5M" / "val_5M"
    train.mkdir(parents=True)
    val.mkdir(parents=True)
    for sample in ("ZJetsToNuNu", "TTBar"):
        for path in data.jetclass(sample):
            shutil.copy2(path, train / path.name)
        shutil.copy2(data.jetclass(sample)[0], val / f"{sample}_100.root")  # the validation files count from 100
    (folder / "README.txt").write_text("not data: ignored\n")
    return folder


@pytest.fixture(scope="module")
def released(tiny_dataset, tmp_path_factory) -> Path:
    return released_layout(tiny_dataset, tmp_path_factory.mktemp("released"))


def test_a_folder_resolves_into_files_per_sample_and_split(released):
    files = resolve(str(released))
    assert sorted(files.fuure) == [(s, p) for s in ("qq", "z", "zh") for p in ("test", "train")]
    assert [f.name for f in files.fuure_files("z", "train")] == ["z_train_0.parquet", "z_train_1.parquet"]
    assert {split for _, split in files.jetclass} == {"train", "val"}
    # pretraining reads the train_* files only; the val_* ones are found but not used
    assert all(f.parent.name == "train_100M" for f in files.jetclass_files("TTBar"))
    assert [f.name for f in files.jetclass[("TTBar", "val")]] == ["TTBar_100.root"]
    assert files.missing() == [] and files.check() is files
    rows = files.identity()
    assert len(rows) == len(files.all_files()) and all(len(r) == 3 and os.path.isabs(r[0]) for r in rows)
    assert [r[:3] for r in files.identity(hashes=True)] == rows
    assert all(len(r[3]) == 64 for r in files.identity(hashes=True))
    # a glob, and two folders joined by os.pathsep, give the same files
    pattern = str(released / "**" / "*.*")
    assert resolve(pattern).identity() == rows
    both = os.pathsep.join([str(released / "fuure"), str(released / "JetClass_Pythia_train_100M_part0")])
    assert resolve(both).fuure == files.fuure
    assert set(resolve(both).jetclass) == {("ZJetsToNuNu", "train"), ("TTBar", "train")}
    # a flat folder of JetClass files has no split, and all its files are used
    flat = resolve(str(released / "JetClass_Pythia_val_5M" / "val_5M"))
    assert [f.name for f in flat.jetclass_files("ZJetsToNuNu")] == ["ZJetsToNuNu_100.root"]


def test_the_jets_read_from_the_released_layout_are_the_generated_ones(tiny_preset, released):
    on_files = with_data(tiny_preset, released)
    generated = pipeline.sample_jets(tiny_preset, "z", "train")
    from_files = pipeline.sample_jets(on_files, "z", "train")  # z_train_0 + z_train_1
    assert len(from_files) == len(generated) and np.array_equal(from_files.features, generated.features)
    assert len(pipeline.tau_jets(on_files, "id", "test")) == len(pipeline.tau_jets(tiny_preset, "id", "test"))
    jets, labels = pipeline.pp_jets(on_files)
    expected, _ = pipeline.pp_jets(tiny_preset)
    assert np.array_equal(jets.features, expected.features) and set(labels) == {0, 1}
    # the same jets, but another identity: never the generated data's cached results
    assert pipeline.data_key(on_files) != pipeline.data_key(tiny_preset)
    assert pipeline.model_key(on_files) != pipeline.model_key(tiny_preset)


def test_pretrain_and_finetune_run_on_a_folder_in_the_released_layouts(tiny_preset, released, monkeypatch, capsys):
    from tauml.cli import main

    monkeypatch.setitem(PRESETS, "tiny", tiny_preset)
    assert main(["pretrain", "--preset", "tiny", "--data", str(released), "--quiet"]) == 0
    out = capsys.readouterr().out
    on_files = with_data(tiny_preset, released)
    assert str(pipeline.backbone_dir(on_files)) in out
    assert (pipeline.tokenizer_dir(on_files) / "done.json").exists()
    args = ["--preset", "tiny", "--data", str(released), "--task", "reg", "--strategy", "fine_tuning",
            "--unfreeze-epoch", "1", "--train-size", "60", "--seed", "1", "--quiet"]
    assert main(["finetune", *args]) == 0
    out = capsys.readouterr().out
    assert "resolution" in out
    folder = Path(out.split("results in ")[1].split()[0])
    assert (folder / "result.json").exists() and (folder / "model.pt").exists()
    # built under the files' keys: the same settings on the generated data name another folder
    from tauml.pipeline.finetuning import resolve as resolve_config

    config = resolve_config(tiny_preset, replace(tiny_preset.finetune, task="reg", strategy="fine_tuning",
                                                 unfreeze_epoch=1, train_size=60, seed=1))
    assert pipeline.finetune_dir(tiny_preset, config) != folder


def test_a_changed_file_changes_the_cache_keys(tiny_dataset, tiny_preset, tmp_path):
    folder = released_layout(tiny_dataset, tmp_path / "data")
    preset = with_data(tiny_preset, folder)
    keys = {name: getattr(pipeline, name)(preset) for name in
            ("data_key", "pp_data_key", "tau_data_key", "tokenizer_key", "backbone_key", "model_key")}
    assert keys["pp_data_key"] == pipeline.pp_data_key(preset)  # stable while nothing changes

    def later(path: Path) -> None:  # rewrite the file: same content, new modification time
        stat = path.stat()
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))

    later(folder / "JetClass_Pythia_train_100M_part0" / "train_100M" / "TTBar_000.root")
    after_pp = {name: getattr(pipeline, name)(preset) for name in keys}
    assert all(after_pp[k] != keys[k] for k in ("data_key", "pp_data_key", "tokenizer_key", "backbone_key",
                                                "model_key"))
    assert after_pp["tau_data_key"] == keys["tau_data_key"]
    # a JetClass file pretraining does not read (val_5M) leaves the tokenizer's key alone
    later(folder / "JetClass_Pythia_val_5M" / "val_5M" / "TTBar_100.root")
    assert pipeline.tokenizer_key(preset) == after_pp["tokenizer_key"]
    assert pipeline.data_key(preset) != after_pp["data_key"]
    # a Fu(tau)ure file changes the tau models' keys, not the tokenizer's (it is trained on pp jets only)
    later(folder / "fuure" / "qq_test.parquet")
    after_ee = {name: getattr(pipeline, name)(preset) for name in keys}
    assert after_ee["tokenizer_key"] == after_pp["tokenizer_key"]
    assert after_ee["tau_data_key"] != after_pp["tau_data_key"] and after_ee["model_key"] != after_pp["model_key"]
    # an added file and a removed one, too
    shutil.copy2(folder / "fuure" / "z_test.parquet", folder / "fuure" / "z_test_7.parquet")
    added = pipeline.model_key(preset)
    assert added != after_ee["model_key"]
    (folder / "fuure" / "z_test_7.parquet").unlink()
    assert pipeline.model_key(preset) == after_ee["model_key"]
    # and the jets in memory follow the file: a rewritten file is read again
    before = len(pipeline.sample_jets(preset, "zh", "test"))
    jets = ak.from_parquet(folder / "fuure" / "zh_test.parquet")
    ak.to_parquet(jets[: len(jets) // 2], folder / "fuure" / "zh_test.parquet", row_group_size=1024)
    assert len(pipeline.sample_jets(preset, "zh", "test")) == len(jets) // 2 < before


def test_wrong_layouts_give_clear_errors(tiny_dataset, tiny_preset, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(NoDataFiles, match=r"no data files in .*empty.*z,zh,qq\}_\{train,test\}\.parquet.*"
                                          r"<Sample>_<NNN>\.root.*--data generated"):
        resolve(str(empty))
    (empty / "JetClass_Pythia_val_5M.tar").write_bytes(b"not unpacked")
    with pytest.raises(NoDataFiles, match="--extract"):
        resolve(str(empty))
    with pytest.raises(ConfigError, match="does not exist"):
        with_data(tiny_preset, tmp_path / "nowhere")
    with pytest.raises(ConfigError, match="matches no file"):
        with_data(tiny_preset, str(tmp_path / "*.nothing"))

    folder = released_layout(tiny_dataset, tmp_path / "data")
    preset = with_data(tiny_preset, folder)
    (folder / "fuure" / "qq_test.parquet").unlink()  # a missing sample: named, with the fix
    with pytest.raises(DataError, match=r"no Fu\(tau\)ure file for sample 'qq', split 'test'.*qq_test\.parquet.*"
                                        r"tauml fetch qq_test\.parquet"):
        pipeline.tau_jets(preset, "id", "test")
    assert resolve(str(folder)).missing() == ["qq_test.parquet"]
    with pytest.raises(DataError, match=r"no JetClass file of class 'ZJetsToNuNu'.*ZJetsToNuNu_000\.root.*--extract"):
        pipeline.pp_jets(with_data(tiny_preset, folder / "fuure"))
    pipeline.model_key(with_data(tiny_preset, folder / "fuure"))  # the baselines need no pp jets: a key all the same

    # a file named like a released one but of another schema
    wrong = tmp_path / "wrong"
    wrong.mkdir()
    ak.to_parquet(ak.Array({"pt": [1.0, 2.0]}), wrong / "z_train.parquet")
    with pytest.raises(DataError, match=r"z_train\.parquet is named like a Fu\(tau\)ure file but lacks the "
                                        r"column\(s\) reco_cand_p4s"):
        pipeline.data_files(with_data(tiny_preset, wrong))
    (wrong / "z_train.parquet").unlink()
    (wrong / "TTBar_000.root").write_text("this is not ROOT")
    with pytest.raises(DataError, match=r"TTBar_000\.root is not a readable ROOT file"):
        pipeline.data_files(with_data(tiny_preset, wrong))
    # the same file twice
    twice = released_layout(tiny_dataset, tmp_path / "twice")
    shutil.copytree(twice / "JetClass_Pythia_train_100M_part0", twice / "copy")
    with pytest.raises(DataError, match="the same file twice"):
        resolve(str(twice))


def test_paper_without_data_stops_at_once_with_the_way_out(monkeypatch, tmp_path, capsys):
    from tauml.cli import main

    monkeypatch.setenv("TAUML_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("TAUML_DATA_DIR", str(tmp_path / "downloads"))
    for command in (["pretrain"], ["train-tokenizer"], ["finetune", "--task", "id", "--strategy", "part"],
                    ["scan", "--task", "id", "--kind", "unfreeze"]):
        assert main([*command, "--preset", "paper"]) == 2
        err = capsys.readouterr().err
        for phrase in ("tauml fetch", "z_train.parquet", "<Sample>_<NNN>.root", "--data generated", "core-hours"):
            assert phrase in err, (command, phrase)
    assert not (tmp_path / "cache" / "data").exists()  # nothing generated, nothing started
    with pytest.raises(DataError, match=r"--data generated \(about \d+ core-hours"):
        pipeline.dataset("paper")


def test_paper_reads_what_tauml_fetch_stored(tiny_dataset, monkeypatch, tmp_path):
    downloads = released_layout(tiny_dataset, tmp_path / "downloads")
    monkeypatch.setenv("TAUML_DATA_DIR", str(downloads))
    files = pipeline.data_files("paper")
    assert files.source == "files" and files.root == downloads and files.missing() == []


def _config_cell(name: str) -> str:
    nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    return next(c.source for c in nb.cells if c.cell_type == "code" and "PRESET = " in c.source)


@pytest.mark.parametrize("name", ["00_data", "01_tokenization", "02_pretraining", "03_finetuning", "04_ablations",
                                  "05_embeddings"])
def test_notebook_configuration_cells_take_a_folder(name, tiny_preset, released, monkeypatch):
    """The configuration cell, run as the notebook runs it: TAUML_DATA (its DATA setting) reaches the preset the
    notebook passes on; without it PRESET stays the preset's name (unchanged behaviour)."""
    monkeypatch.setitem(PRESETS, "tiny", tiny_preset)
    monkeypatch.setenv("TAUML_PRESET", "tiny")
    monkeypatch.delenv("TAUML_DATA", raising=False)
    cell = _config_cell(name)
    plain: dict = {}
    exec(cell, plain)
    assert plain["DATA"] is None and plain["PRESET"] == "tiny"
    monkeypatch.setenv("TAUML_DATA", str(released))
    namespace: dict = {}
    exec(cell, namespace)
    assert namespace["PRESET"] == with_data(tiny_preset, str(released))
    if name == "03_finetuning":  # what the notebook then calls reads the folder
        jets = pipeline.tau_jets(namespace["PRESET"], "reg", "train")
        assert len(jets) == len(pipeline.tau_jets("tiny", "reg", "train"))


def test_real_jetclass_files_in_the_released_names(tiny_dataset, tmp_path):
    """JetClass-II's published example file (100 real jets) in a val_5M folder: resolved, checked, counted, read."""
    example = real_file("JetClassII_example.root")
    val = tmp_path / "val_5M"
    val.mkdir()
    shutil.copy2(example, val / "ZJetsToNuNu_100.root")
    shutil.copy2(real_file("JetClassII_example.parquet"), val / "TTBar_100.parquet")
    files = resolve(str(tmp_path)).check()
    assert files.manifest["samples"] == {"TTBar": {"events": None, "jets": 100, "bytes": (val / "TTBar_100.parquet")
                                                  .stat().st_size},
                                         "ZJetsToNuNu": {"events": None, "jets": 100,
                                                         "bytes": example.stat().st_size}}
    preset = with_data(replace(PRESETS["demo"], pp_jets_per_sample=60), tmp_path)
    jets, labels = pipeline.pp_jets(preset)
    assert len(jets) == 120 and np.bincount(labels).tolist() == [60, 60]
    assert pipeline.pp_data_key(preset) != pipeline.pp_data_key(with_data("demo", tmp_path))


def test_generated_data_keep_their_cache_keys():
    """The data sources leave the generated data's keys as they were (the caches built before stay valid)."""
    from tauml.cache import DATA_FORMAT_VERSION, MODEL_FORMAT_VERSION
    from tauml.config import config_hash, get_preset

    demo = get_preset("demo")
    assert pipeline.data_key(demo) == config_hash(demo.generation, DATA_FORMAT_VERSION)
    assert pipeline.pp_data_key(demo) == pipeline.data_key(demo) and pipeline.tau_data_key(demo) is None
    assert pipeline.tokenizer_key(demo) == config_hash(pipeline.data_key(demo), demo.features, demo.tokenizer,
                                                       MODEL_FORMAT_VERSION)
    assert pipeline.model_key(demo) == config_hash(pipeline.backbone_key(demo), demo.head, demo.part, demo.deepset)
    assert pipeline.tokenizer_key(with_data("demo", "generated")) == pipeline.tokenizer_key("demo")
    # a cap on the pp jets is a new key
    assert pipeline.pp_data_key(replace(demo, pp_jets_per_sample=1000)) != pipeline.pp_data_key(demo)


def test_a_folder_tauml_generated_names_the_cached_results_of_that_generated_data(tiny_preset, tiny_dataset,
                                                                                  tmp_path):
    """`tauml generate --out DIR` of a dataset in the cache copies it (verified); --data DIR is then that
    generated dataset, read from DIR under the same keys; once a file changes it is other data."""
    from tauml.data.generate import generate

    out = generate(tiny_preset.generation, tmp_path / "copy", progress=False)
    assert out.root == tmp_path / "copy" and not (out.root / "chunks").exists()  # copied, not generated
    assert set(out.manifest["files"]) == set(tiny_dataset.manifest["files"])
    on_files = with_data(tiny_preset, str(out.root))
    assert resolve(str(out.root)).generated_key == pipeline.data_key(tiny_preset)
    assert pipeline.data_key(on_files) == pipeline.data_key(tiny_preset)
    assert pipeline.tokenizer_key(on_files) == pipeline.tokenizer_key(tiny_preset)
    assert pipeline.tau_data_key(on_files) is None and pipeline.model_key(on_files) == pipeline.model_key(tiny_preset)
    assert str(pipeline.data_files(on_files).fuure_files("z", "train")[0]).startswith(str(out.root))
    with open(out.root / "fuure" / "z_test.parquet", "ab") as handle:  # another file: other data, other keys
        handle.write(b"\0")
    assert resolve(str(out.root)).generated_key is None
    assert pipeline.data_key(on_files) != pipeline.data_key(tiny_preset)
    assert pipeline.tau_data_key(on_files) is not None
