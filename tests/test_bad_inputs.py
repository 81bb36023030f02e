"""The bad-input suite (issue 12): every case is a bad input or a fault a new or a hostile user can cause, and
each asserts the exact kind of error and the key phrase of its message (the file, the column, the first bad
row, what to do), or the recovery.  The table of the cases is docs/reliability.md.

Groups: cache primitives, readers and features, checkpoints (malicious pickles included), the verified cache
of the pipeline (tokenizer, backbone, fine-tunings, data), the command line, the fine-tuning panel, processes.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import awkward as ak
import numpy as np
import pytest
import torch

from tauml import pipeline
from tauml.cache import (
    CacheError,
    building,
    cache_path,
    entry_problem,
    locked,
    read_json,
    write_entry,
    write_json,
)
from tauml.config import PRESETS, ConfigError, GenerationConfig
from tauml.data.features import jet_arrays
from tauml.data.readers import read_fuure, read_jetclass
from tauml.data.schema import DataError
from tauml.models import CheckpointError

ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------------------


class Evil:
    """A pickle that creates ``marker`` when it is unpickled (what a hostile file would do instead)."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def fuure_jet(cands, tau=(40.0, 0.0), dm=1, jet=None):
    """One Fu(tau)ure row from candidates (px, py, pz, mass, pdg, charge); the jet is their sum."""
    px, py, pz, m = (np.array([c[i] for c in cands], float) for i in range(4))
    jet = jet or {"x": px.sum(), "y": py.sum(), "z": pz.sum(), "tau": 1.0}
    return {
        "reco_cand_p4s": [{"x": a, "y": b, "z": c, "tau": d} for a, b, c, d in zip(px, py, pz, m)],
        "reco_cand_charge": [c[5] for c in cands], "reco_cand_pdg": [c[4] for c in cands],
        "reco_jet_p4s": jet, "gen_jet_p4s": jet,
        "gen_jet_tau_p4s": {"x": tau[0], "y": tau[1], "z": 0.0, "tau": 1.0},
        "gen_jet_tau_decaymode": dm,
    }


PION = (30.0, 0.0, 0.0, 0.14, 211, -1)
PHOTON = (10.0, 1.0, 0.5, 0.0, 22, 0)
GOOD = fuure_jet([PION, PHOTON])


def jets_with(bad_row: dict, n_good: int = 2) -> ak.Array:
    """``n_good`` good jets, then the bad one (so the first bad row is ``n_good``)."""
    return ak.Array([GOOD] * n_good + [bad_row])


def jetclass_jets(n: int = 3, **override) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    counts = np.full(n, 4)
    flat = {f"part_{k}": rng.normal(10, 1, counts.sum()).astype(np.float32) for k in ("px", "py", "pz")}
    flat["part_energy"] = (np.abs(flat["part_px"]) + np.abs(flat["part_py"]) + np.abs(flat["part_pz"])).astype(
        np.float32)
    flat["part_charge"] = np.zeros(counts.sum(), np.float32)
    for name in ("ChargedHadron", "NeutralHadron", "Electron", "Muon"):
        flat[f"part_is{name}"] = np.zeros(counts.sum(), np.int32)
    flat["part_isPhoton"] = np.ones(counts.sum(), np.int32)
    flat.update(override)
    return {k: ak.unflatten(v, counts) for k, v in flat.items()}


def cli(*argv: str) -> tuple[int, str, str]:
    """Run ``tauml`` in this process; (exit code, stdout, stderr)."""
    import contextlib
    import io

    from tauml.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(argv))
    return code, out.getvalue(), err.getvalue()


def assert_cli_error(code: int, err: str, command: str, phrase: str) -> None:
    """Exit code 2 and one line ``tauml <command>: error: <what> — <what to do>`` holding ``phrase``."""
    assert code == 2, err
    lines = [line for line in err.strip().splitlines() if line.startswith(f"tauml {command}: error:")]
    assert len(lines) == 1, err
    assert re.fullmatch(rf"tauml {command}: error: .+ — .+", lines[0]), lines[0]
    assert phrase in lines[0], lines[0]
    assert "Traceback" not in err


def finetune_folders() -> set[str]:
    root = Path(os.environ["TAUML_CACHE_DIR"]) / "finetune"
    return {p.name for p in root.iterdir()} if root.exists() else set()


# ---------------------------------------------------------------------------------------------------------
# the cache primitives
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("umask", "mode"), [(0o002, 0o664), (0o022, 0o644), (0o077, 0o600)])
def test_cache_files_follow_the_umask(tmp_path, umask, mode):
    previous = os.umask(umask)
    try:
        write_json(tmp_path / "shared.json", {"a": 1})
    finally:
        os.umask(previous)
    assert (tmp_path / "shared.json").stat().st_mode & 0o777 == mode


@pytest.mark.parametrize("content", [b'{"a": 1,\n  "b": ', b"\x80\x81\xfe binary", b""])
def test_corrupt_json_names_the_file(tmp_path, content):
    path = tmp_path / "history.json"
    path.write_bytes(content)
    with pytest.raises(CacheError, match=r"history\.json is corrupt .* — delete it"):
        read_json(path)


def _entry(tmp_path) -> Path:
    (tmp_path / "model.pt").write_bytes(b"0123456789")
    write_entry(tmp_path / "done.json", ["model.pt"], built_from={"tokenizer_sha256": "abc"})
    return tmp_path / "done.json"


def test_entry_detects_a_truncated_file(tmp_path):
    done = _entry(tmp_path)
    assert entry_problem(done) is None
    (tmp_path / "model.pt").write_bytes(b"01234")
    assert "5 bytes, 10 were written" in entry_problem(done)


def test_entry_detects_a_swapped_file_of_the_same_size(tmp_path):
    done = _entry(tmp_path)
    (tmp_path / "model.pt").write_bytes(b"9876543210")
    os.utime(tmp_path / "model.pt", ns=(1, 1))
    assert "SHA-256" in entry_problem(done)


def test_entry_detects_a_missing_file(tmp_path):
    done = _entry(tmp_path)
    (tmp_path / "model.pt").unlink()
    assert entry_problem(done) == "model.pt is missing"


def test_entry_detects_another_origin(tmp_path):
    done = _entry(tmp_path)
    assert entry_problem(done, {"tokenizer_sha256": "abc"}) is None
    assert "built from another tokenizer_sha256" in entry_problem(done, {"tokenizer_sha256": "def"})


def test_entry_detects_a_corrupt_entry_file(tmp_path):
    done = _entry(tmp_path)
    done.write_text("{")
    assert "unreadable" in entry_problem(done)


def test_a_failed_build_leaves_no_empty_cache_folder(tmp_path):
    folder = tmp_path / "finetune" / "abc"
    with pytest.raises(DataError), building(folder):
        raise DataError("bad input")
    assert not folder.exists()
    assert not cache_path("finetune", "never-built", create=False).exists()


def test_two_runs_into_one_folder_are_serialised(tmp_path):
    order = []

    def run(name: str, hold: float) -> None:
        with locked(tmp_path):
            order.append(f"{name} start")
            time.sleep(hold)
            order.append(f"{name} end")

    first = threading.Thread(target=run, args=("a", 0.3))
    first.start()
    time.sleep(0.05)
    run("b", 0.0)
    first.join()
    assert order == ["a start", "a end", "b start", "b end"]


# ---------------------------------------------------------------------------------------------------------
# readers and features: dtypes, finiteness, ranges, targets; the file, the column and the first bad row
# ---------------------------------------------------------------------------------------------------------

FEATURE_CASES = {
    "pdg as strings": (fuure_jet([PION, PHOTON]) | {"reco_cand_pdg": ["211", "22"]}, r"reco_cand_pdg in jets\.parquet "
                                                                                     r"holds string values"),
    "charge as strings": (fuure_jet([PION, PHOTON]) | {"reco_cand_charge": ["-1", "0"]},
                          "reco_cand_charge in jets.parquet holds string"),
    "NaN px": (fuure_jet([(np.nan, 0.0, 0.0, 0.1, 211, 1), PHOTON]), r"reco_cand_p4s\.x is NaN .* first in row 2"),
    "infinite pz": (fuure_jet([(3.0, 1.0, np.inf, 0.1, 211, 1), PHOTON]), r"reco_cand_p4s\.z is NaN or infinite"),
    "NaN jet 4-vector": (fuure_jet([PION, PHOTON], jet={"x": np.nan, "y": 1.0, "z": 0.0, "tau": 1.0}),
                         "reco_jet_p4s is NaN or infinite"),
    "zero candidate pT": (fuure_jet([PION, (0.0, 0.0, 5.0, 0.0, 22, 0)]),
                          r"zero transverse momentum .* first in row 2 — drop the candidates"),
    "charge 2": (fuure_jet([(30.0, 0.0, 0.0, 0.1, 211, 2), PHOTON]), r"reco_cand_charge holds charges other than"),
    "charge 0.5": (fuure_jet([(30.0, 0.0, 0.0, 0.1, 211, 0.5), PHOTON]), r"charges other than -1, 0, \+1"),
    "unknown PDG code": (fuure_jet([(30.0, 0.0, 0.0, 0.1, 999, 1), PHOTON]), r"reco_cand_pdg holds codes \[999\].*row 2"),
    "NaN regression target": (fuure_jet([PION, PHOTON], tau=(np.nan, 0.0)),
                              r"gen_jet_tau_p4s .* regression target .* first in row 2"),
    "zero visible tau pT": (fuure_jet([PION, PHOTON], tau=(0.0, 0.0)), r"visible pT that is zero"),
    "decay mode out of range": (fuure_jet([PION, PHOTON], dm=99), r"gen_jet_tau_decaymode holds codes outside -1\.\.15"),
    "leptonic decay mode": (fuure_jet([PION, PHOTON], dm=16), r"leptonic .* first in row 2"),
    "non-integer decay mode": (fuure_jet([PION, PHOTON], dm=1.5), "gen_jet_tau_decaymode in jets.parquet holds non-integer"),
    "missing charge": (fuure_jet([PION, PHOTON]) | {"reco_cand_charge": [None, 0.0]}, r"reco_cand_charge in jets\.parquet has missing \(null\) values"),
    "no constituents": (fuure_jet([PION]) | {"reco_cand_p4s": [], "reco_cand_charge": [], "reco_cand_pdg": []},
                        "no constituents, first in row 2"),
    "feature overflows float32": (fuure_jet([(30.0, 0.0, 0.0, 1e39, 211, 1), PHOTON]), "the feature mass is NaN or "
                                                                                        "infinite"),
}


@pytest.mark.parametrize("case", list(FEATURE_CASES))
def test_bad_fuure_values_name_file_column_and_row(case):
    row, phrase = FEATURE_CASES[case]
    with pytest.raises(DataError, match=phrase):
        jet_arrays(jets_with(row), source="jets.parquet")


def test_bad_values_are_named_when_read_from_a_file(tmp_path):
    path = tmp_path / "z_train.parquet"
    ak.to_parquet(ak.Array([fuure_jet([PION, PHOTON]) | {"reco_cand_pdg": ["211", "22"]}] * 3), path)
    with pytest.raises(DataError, match=r"reco_cand_pdg in .*z_train\.parquet holds string"):
        read_fuure(path)


def test_more_candidates_than_slots_is_said_once():
    many = fuure_jet([(float(k), 0.1 * k, 0.0, 0.0, 22, 0) for k in range(1, 21)])
    with pytest.warns(UserWarning, match=r"1 of 3 jets in jets\.parquet have more than 16 constituents \(up to 20\)")\
            as record:
        arrays = jet_arrays(jets_with(many), source="jets.parquet")
    assert len([w for w in record if "constituents" in str(w.message)]) == 1
    assert arrays.mask.sum(1).tolist() == [2, 2, 16]


def test_jetclass_charge_as_strings_names_the_branch_and_file(tmp_path):
    branches = jetclass_jets()
    branches["part_charge"] = ak.Array([["0"] * 4] * 3)
    path = tmp_path / "ZJetsToNuNu_000.parquet"
    ak.to_parquet(ak.zip(branches, depth_limit=1), path)
    with pytest.raises(DataError, match=r"part_charge in .*ZJetsToNuNu_000\.parquet holds string"):
        read_jetclass(path)


def test_jetclass_nan_momentum_names_the_branch_and_row():
    px = np.full(12, 10.0, np.float32)
    px[9] = np.nan  # jet 2
    jets = ak.zip(jetclass_jets(part_px=px), depth_limit=1)
    with pytest.raises(DataError, match=r"part_px is NaN or infinite in x\.root, in 1 jet\(s\), first in row 2"):
        jet_arrays(jets, source="x.root")


def test_jetclass_particle_with_two_types():
    flag = np.ones(12, np.int32)
    jets = ak.zip(jetclass_jets(part_isMuon=flag), depth_limit=1)
    with pytest.raises(DataError, match="exactly one of"):
        jet_arrays(jets, source="x.root")


def test_truncated_parquet_file(tmp_path):
    path = tmp_path / "z_train.parquet"
    ak.to_parquet(ak.Array([GOOD] * 50), path)
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(DataError, match=r"(?s)z_train\.parquet is not a readable parquet file.*Delete it"):
        read_fuure(path)


def test_truncated_root_file(tmp_path):
    import uproot

    path = tmp_path / "TTBar_000.root"
    with uproot.recreate(path) as f:
        f["tree"] = {"part_px": ak.Array([[1.0, 2.0]] * 100)}
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(DataError, match=r"TTBar_000\.root is not a readable ROOT file"):
        read_jetclass(path)


def test_missing_input_file_says_how_to_make_it(tmp_path):
    with pytest.raises(DataError, match="tauml generate"):
        read_fuure(tmp_path / "nothing.parquet")


def test_folder_given_as_input_file(tmp_path):
    with pytest.raises(DataError, match="is a folder; give the file itself"):
        read_jetclass(tmp_path)


# ---------------------------------------------------------------------------------------------------------
# checkpoints: truncated, empty and hostile files
# ---------------------------------------------------------------------------------------------------------


def test_malicious_tokenizer_is_never_unpickled(tmp_path):
    from tauml.models.checkpoints import load_tokenizer

    marker, path = tmp_path / "pwned", tmp_path / "tokenizer.pt"
    torch.save({"format": "x", "payload": Evil(marker)}, path)
    with pytest.raises(CheckpointError, match=r"tokenizer\.pt"):
        load_tokenizer(path)
    assert not marker.exists()


def test_malicious_backbone_is_never_unpickled(tmp_path):
    from tauml.models.checkpoints import load_backbone

    marker, path = tmp_path / "pwned", tmp_path / "backbone.pt"
    path.write_bytes(pickle.dumps(Evil(marker)))
    with pytest.raises(CheckpointError, match=r"backbone\.pt"):
        load_backbone(path)
    assert not marker.exists()


def test_malicious_model_is_never_unpickled(tmp_path):
    from tauml.pipeline.finetuning import load_model_state

    marker = tmp_path / "pwned"
    torch.save({"w": torch.zeros(2), "evil": Evil(marker)}, tmp_path / "model.pt")
    with pytest.raises(CacheError, match=r"(?s)model\.pt is unreadable .* — delete the folder"):
        load_model_state(tmp_path)
    assert not marker.exists()


def test_malicious_predictions_are_never_unpickled(tmp_path):
    from tauml.pipeline.finetuning import FinetuneResult

    marker = tmp_path / "pwned"
    write_json(tmp_path / "result.json", {"config": {}})
    np.savez(tmp_path / "predictions.npz", pred=np.array([Evil(marker)], dtype=object))
    with pytest.raises(CacheError, match=r"(?s)predictions\.npz is unreadable .* — delete the folder"):
        FinetuneResult.from_folder(tmp_path)
    assert not marker.exists()


def test_empty_tokenizer_file(tmp_path):
    from tauml.models.checkpoints import load_tokenizer

    (tmp_path / "tokenizer.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"(?s)tokenizer\.pt .*delete it"):
        load_tokenizer(tmp_path / "tokenizer.pt")


def test_truncated_backbone_file(tmp_path):
    from tauml.config import GPTConfig
    from tauml.models.checkpoints import load_backbone, save_backbone
    from tauml.models.gpt import GPT

    path = save_backbone(GPT(GPTConfig(n_layer=1, n_head=2, n_embd=8, ffn_dim=16, vocab_size=10, max_len=8)),
                         tmp_path / "backbone.pt")
    path.write_bytes(path.read_bytes()[:500])
    with pytest.raises(CheckpointError, match=r"(?s)backbone\.pt .*delete it and pretrain again"):
        load_backbone(path)


def test_stored_result_corrupt_json_names_the_file(tmp_path):
    from tauml.pipeline.finetuning import FinetuneResult

    (tmp_path / "result.json").write_text('{"config": {"task": "reg"},\n "history": ')
    with pytest.raises(CacheError, match=r"result\.json is corrupt"):
        FinetuneResult.from_folder(tmp_path)


# ---------------------------------------------------------------------------------------------------------
# the verified cache of the pipeline: an entry that no longer matches is rebuilt, once, saying why
# ---------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cache(tiny_preset, tiny_dataset, tmp_path_factory):
    """A private cache (the session's data linked in) with the tiny preset's tokenizer and backbone: the cases
    below damage its entries without touching what other test modules use."""
    root = tmp_path_factory.mktemp("bad-inputs-cache")
    (root / "data").mkdir()
    (root / "data" / tiny_dataset.root.name).symlink_to(tiny_dataset.root)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TAUML_CACHE_DIR", str(root))
        patch.setitem(PRESETS, "tiny", tiny_preset)
        pipeline.tokenizer(tiny_preset, progress=False)
        pipeline.backbone_checkpoint(tiny_preset, progress=False)
        yield root


@pytest.fixture
def fast(tiny_preset):
    """A one-epoch regression fine-tuning."""
    return replace(tiny_preset.finetune, task="reg", strategy="fine_tuning", epochs=1, unfreeze_epoch=0,
                   train_size=30)


def _rebuilt(capsys, phrase: str) -> None:
    out = capsys.readouterr().out
    assert "tauml: rebuilding" in out and phrase in out, out


def test_truncated_backbone_is_rebuilt(cache, tiny_preset, capsys):
    from tauml.models.checkpoints import load_backbone

    path = pipeline.backbone_checkpoint(tiny_preset)
    path.write_bytes(path.read_bytes()[:1000])
    again = pipeline.backbone_checkpoint(tiny_preset, progress=False)
    _rebuilt(capsys, "backbone.pt has 1000 bytes")
    assert load_backbone(again).config.n_layer == tiny_preset.gpt.n_layer
    assert entry_problem(again.parent / "done.json") is None


def test_deleted_backbone_as_advised_is_rebuilt(cache, tiny_preset, capsys):
    path = pipeline.backbone_checkpoint(tiny_preset)
    path.unlink()  # what the old message advised: it used to report success without rebuilding
    assert pipeline.backbone_checkpoint(tiny_preset, progress=False).is_file()
    _rebuilt(capsys, "backbone.pt is missing")
    assert pipeline.backbone_history(tiny_preset)["best_epoch"] is not None


def test_corrupt_backbone_history_is_rebuilt(cache, tiny_preset, capsys):
    history = pipeline.backbone_dir(tiny_preset) / "history.json"
    history.write_text('{"epochs": [')
    assert len(pipeline.backbone_history(tiny_preset)["epochs"]) == tiny_preset.pretrain.epochs
    _rebuilt(capsys, "history.json")


def test_backbone_of_another_tokenizer_is_rebuilt(cache, tiny_preset, capsys):
    done = pipeline.backbone_dir(tiny_preset) / "done.json"
    entry = read_json(done)
    entry["built_from"]["tokenizer_sha256"] = "0" * 64
    write_json(done, entry)
    pipeline.backbone_checkpoint(tiny_preset, progress=False)
    _rebuilt(capsys, "built from another tokenizer_sha256")
    assert read_json(done)["built_from"]["tokenizer_sha256"] == pipeline.tokenizer_digest(tiny_preset)


def test_empty_tokenizer_file_is_rebuilt(cache, tiny_preset, capsys):
    path = pipeline.tokenizer_dir(tiny_preset) / "tokenizer.pt"
    path.write_bytes(b"")
    tok = pipeline.tokenizer(tiny_preset, progress=False)
    _rebuilt(capsys, "tokenizer.pt has 0 bytes")
    assert tok.codebook_size == tiny_preset.tokenizer.codebook_size


def test_tokenizer_of_another_codebook_swapped_in_is_rebuilt(cache, tiny_preset, tmp_path, capsys):
    from tauml.models.checkpoints import save_tokenizer
    from tauml.models.vqvae import Tokenizer

    other = Tokenizer(replace(tiny_preset.tokenizer, codebook_size=8), tiny_preset.features)
    save_tokenizer(other, pipeline.tokenizer_dir(tiny_preset) / "tokenizer.pt")
    tok = pipeline.tokenizer(tiny_preset, progress=False)
    _rebuilt(capsys, "tokenizer.pt")
    assert tok.codebook_size == tiny_preset.tokenizer.codebook_size == 16


def test_corrupt_result_is_retrained_to_the_same_numbers(cache, tiny_preset, fast, capsys):
    from tauml.pipeline.finetuning import finetune

    first = finetune(tiny_preset, fast, progress=False)
    (first.folder / "result.json").write_text('{"config": {"task": "reg"},\n  "metrics": ')
    again = finetune(tiny_preset, fast, progress=False)
    _rebuilt(capsys, "result.json is unreadable")
    assert again.metrics == first.metrics


@pytest.mark.parametrize("damage", ["predictions.npz", "model.pt"])
def test_damaged_result_files_are_retrained(cache, tiny_preset, fast, capsys, damage):
    from tauml.pipeline.finetuning import finetune

    first = finetune(tiny_preset, fast, progress=False)
    path = first.folder / damage
    path.write_bytes(path.read_bytes()[:100])
    again = finetune(tiny_preset, fast, progress=False)
    _rebuilt(capsys, f"{damage} has 100 bytes")
    assert again.metrics == first.metrics and (first.folder / damage).stat().st_size > 100


def test_result_of_another_backbone_is_retrained(cache, tiny_preset, fast, capsys):
    from tauml.pipeline.finetuning import finetune

    first = finetune(tiny_preset, fast, progress=False)
    entry = read_json(first.folder / "result.json")
    entry["built_from"]["backbone_sha256"] = "f" * 64  # as if the backbone had been pretrained again since
    write_json(first.folder / "result.json", entry)
    finetune(tiny_preset, fast, progress=False)
    _rebuilt(capsys, "built from another backbone_sha256")
    assert read_json(first.folder / "result.json")["built_from"] == {
        "tokenizer_sha256": pipeline.tokenizer_digest(tiny_preset),
        "backbone_sha256": pipeline.backbone_digest(tiny_preset)}


def test_failed_finetune_leaves_no_cache_folder(cache, tiny_preset, fast):
    from tauml.pipeline.finetuning import finetune

    before = finetune_folders()
    with pytest.raises(DataError, match="generate more events"):
        finetune(tiny_preset, replace(fast, train_size=100_000), progress=False)
    assert finetune_folders() == before


def test_finetune_folder_that_is_a_file(cache, tiny_preset, fast, tmp_path):
    from tauml.pipeline.finetuning import finetune

    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="is a file"):
        finetune(tiny_preset, fast, progress=False, folder=tmp_path / "notes.txt")
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_unfreeze_epoch_past_the_last_epoch_is_said_once(tiny_preset, fast):
    from tauml.pipeline.finetuning import check_config, resolve, same_training

    config = replace(fast, unfreeze_epoch=999)
    with pytest.warns(UserWarning, match="never unfrozen, so this trains the fixed backbone") as record:
        resolved = resolve(tiny_preset, config)
    assert len(record) == 1 and same_training(resolved).strategy == "fixed_backbone"
    with pytest.raises(ConfigError, match=r"unfreeze_epoch=999 is past the last epoch .* — choose 0\.\.1"):
        check_config(tiny_preset, config)


@pytest.mark.parametrize(("device", "phrase"), [("tpu", "not a device tauml knows"),
                                                ("cuda:99", "cuda:99"), ("gpu0", "not a device")])
def test_bad_device_is_refused_before_anything(tiny_preset, fast, device, phrase):
    from tauml.pipeline.finetuning import check_device

    if device.startswith("cuda") and torch.cuda.device_count() > 99:
        pytest.skip("a machine with 100 GPUs")
    with pytest.raises(ConfigError, match=phrase):
        check_device(device)


# ---- data --------------------------------------------------------------------------------------------------

SMALL = GenerationConfig(events={"z": 40, "ZJetsToNuNu": 20}, seed=3, chunk_events=20)


@pytest.fixture(scope="module")
def small_data(tmp_path_factory):
    from tauml.data.generate import generate

    out = tmp_path_factory.mktemp("small") / "out"
    return generate(SMALL, out, workers=1, progress=False)


@pytest.mark.parametrize("damage", ["truncate data file", "corrupt manifest"])
def test_damaged_generated_data_is_generated_again(small_data, capsys, damage):
    from tauml.data.generate import generate

    counts = {k: v["jets"] for k, v in small_data.manifest["samples"].items()}
    if damage == "truncate data file":
        path = small_data.fuure("z", "train")
        path.write_bytes(path.read_bytes()[:500])
        phrase = "z_train.parquet has 500 bytes"
    else:
        (small_data.root / "manifest.json").write_text('{"samples": {')
        phrase = "manifest.json is unreadable"
    again = generate(SMALL, small_data.root, workers=1, progress=False)
    _rebuilt(capsys, phrase)
    assert {k: v["jets"] for k, v in again.manifest["samples"].items()} == counts
    assert len(read_fuure(again.fuure("z", "train"))) == again.manifest["samples"]["z"]["jets_train"]


def test_two_generations_into_one_folder_run_once(tmp_path, monkeypatch):
    from tauml.data import generate as gen

    calls = []
    original = gen.run_chunk
    monkeypatch.setattr(gen, "run_chunk", lambda *a: calls.append(a[0]) or original(*a))
    config = GenerationConfig(events={"z": 20}, seed=4, chunk_events=20)
    threads = [threading.Thread(target=gen.generate, args=(config, tmp_path / "out", 1, False)) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and (tmp_path / "out" / "manifest.json").is_file()


def test_interrupted_merge_resumes_without_trusting_half_work(tmp_path, monkeypatch):
    from tauml.data import generate as gen

    config = GenerationConfig(events={"z": 20}, seed=4, chunk_events=20)

    def crash(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(gen, "_merge", crash)
    with pytest.raises(KeyboardInterrupt):
        gen.generate(config, tmp_path / "out", workers=1, progress=False)
    assert not (tmp_path / "out" / "manifest.json").exists()
    monkeypatch.undo()
    data = gen.generate(config, tmp_path / "out", workers=1, progress=False)
    assert entry_problem(data.root / "manifest.json") is None and data.manifest["samples"]["z"]["events"] == 20


def test_generate_into_a_file(tmp_path):
    from tauml.data.generate import generate

    (tmp_path / "notes").write_text("mine")
    with pytest.raises(DataError, match="is a file, not a folder"):
        generate(SMALL, tmp_path / "notes", workers=1, progress=False)


# ---------------------------------------------------------------------------------------------------------
# the command line: one sentence and exit code 2, options checked before anything is built
# ---------------------------------------------------------------------------------------------------------

FT = ("--preset", "tiny", "--task", "reg", "--quiet")

CLI_CASES = {
    "device tpu": (["finetune", *FT, "--strategy", "part", "--device", "tpu"], "not a device tauml knows"),
    "unfreeze epoch 999": (["finetune", *FT, "--strategy", "fine_tuning", "--unfreeze-epoch", "999"],
                           "--unfreeze-epoch 999 is past the last epoch"),
    "unfreeze epoch for a baseline": (["finetune", *FT, "--strategy", "part", "--unfreeze-epoch", "1"],
                                      "applies to --strategy fine_tuning only"),
    "gpt blocks for a baseline": (["finetune", *FT, "--strategy", "deepset", "--gpt-blocks", "1"],
                                  "applies to the GPT strategies only"),
    "too many gpt blocks": (["finetune", *FT, "--strategy", "fine_tuning", "--gpt-blocks", "9"], "n_gpt_blocks=9"),
    "zero training jets": (["finetune", *FT, "--strategy", "part", "--train-size", "0"], "train_size"),
    "negative epochs": (["evaluate", *FT, "--strategy", "part", "--epochs", "-3"], "epochs=-3"),
    "negative seed": (["finetune", *FT, "--strategy", "part", "--seed", "-1"], "seed=-1 must not be negative"),
    "scan metric bogus": (["scan", "--preset", "tiny", "--task", "reg", "--kind", "blocks", "--metric", "bogus"],
                          "--metric 'bogus' is not a metric of --task reg"),
    "scan metric of another task": (["scan", "--preset", "tiny", "--task", "reg", "--kind", "blocks", "--metric",
                                     "auc"], "is not a metric of --task reg"),
    "scan zero train size": (["scan", "--preset", "tiny", "--task", "dm", "--kind", "train_size", "--train-sizes", "0"],
                             "must all be positive"),
    "generate negative events": (["generate", "--sample", "z", "--events", "-5", "--quiet"], "--events -5 must be"),
    "generate zero workers": (["generate", "--workers", "0", "--quiet"], "--workers 0 must be positive"),
    "generate events without sample": (["generate", "--events", "10", "--quiet"], "--events needs --sample"),
    "fetch hash of a missing file": (["fetch", "--print-hash", "z_train.parquet"], "does not exist"),
}


@pytest.mark.parametrize("case", list(CLI_CASES))
def test_command_line_refuses_bad_options(tiny_preset, monkeypatch, case):
    from tauml.pipeline import scan

    monkeypatch.setitem(PRESETS, "tiny", tiny_preset)
    monkeypatch.setattr(scan, "run_scan", lambda *a, **k: pytest.fail("trained before checking the options"))
    before = finetune_folders()
    argv, phrase = CLI_CASES[case]
    code, _, err = cli(*argv)
    assert_cli_error(code, err, argv[0], phrase)
    assert finetune_folders() == before


def test_command_line_cuda_on_a_cpu_machine(tiny_preset, monkeypatch):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    monkeypatch.setitem(PRESETS, "tiny", tiny_preset)
    before = finetune_folders()
    code, _, err = cli("finetune", *FT, "--strategy", "fine_tuning", "--device", "cuda")
    assert_cli_error(code, err, "finetune", "CUDA is not available")
    assert finetune_folders() == before  # no empty cache folder is left behind


def test_command_line_out_is_a_file(tmp_path):
    (tmp_path / "notes").write_text("mine")
    code, _, err = cli("generate", "--sample", "z", "--events", "10", "--out", str(tmp_path / "notes"))
    assert_cli_error(code, err, "generate", "is a file")
    assert (tmp_path / "notes").read_text() == "mine"


def test_command_line_evaluate_out_is_a_folder(tiny_preset, monkeypatch, tmp_path):
    monkeypatch.setitem(PRESETS, "tiny", tiny_preset)
    code, _, err = cli("evaluate", *FT, "--strategy", "part", "--out", str(tmp_path))
    assert_cli_error(code, err, "evaluate", "is a folder")


def test_command_line_evaluate_existing_out_before_training(tiny_preset, monkeypatch, tmp_path):
    from tauml.pipeline import finetuning

    monkeypatch.setitem(PRESETS, "tiny", tiny_preset)
    monkeypatch.setattr(finetuning, "finetune", lambda *a, **k: pytest.fail("trained before checking --out"))
    (tmp_path / "m.json").write_text("mine")
    code, _, err = cli("evaluate", *FT, "--strategy", "part", "--out", str(tmp_path / "m.json"))
    assert_cli_error(code, err, "evaluate", "--overwrite")


def test_command_line_corrupt_cache_file_is_one_sentence(monkeypatch, tmp_path):
    from tauml.data import generate as gen

    def corrupt(*args, **kwargs):
        read_json(tmp_path / "manifest.json")

    (tmp_path / "manifest.json").write_text("{")
    monkeypatch.setattr(gen, "generate_cached", corrupt)
    code, _, err = cli("generate", "--quiet")
    assert_cli_error(code, err, "generate", "manifest.json is corrupt")


def test_command_line_bad_input_file_is_one_sentence(monkeypatch, tmp_path):
    from tauml.data import generate as gen

    def bad(*args, **kwargs):
        raise DataError(f"reco_cand_pdg in {tmp_path}/z.parquet holds string values, not numbers")

    monkeypatch.setattr(gen, "generate_cached", bad)
    code, _, err = cli("generate", "--quiet")
    assert_cli_error(code, err, "generate", "z.parquet")


def test_command_line_bug_is_not_hidden(monkeypatch):
    from tauml import cli as tcli

    monkeypatch.setitem(tcli.COMMANDS, "info", lambda args: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        tcli.main(["info"])


def test_command_line_pretrain_rebuilds_a_truncated_backbone(cache, tiny_preset):
    path = pipeline.backbone_checkpoint(tiny_preset)
    path.write_bytes(path.read_bytes()[:700])
    code, out, _ = cli("pretrain", "--preset", "tiny", "--quiet")
    assert code == 0 and "rebuilding" in out and "backbone.pt has 700 bytes" in out
    from tauml.models.checkpoints import load_backbone

    assert load_backbone(path).config.n_layer == tiny_preset.gpt.n_layer


def test_command_line_help_does_not_import_torch():
    code = "import sys; from tauml.cli import build_parser; build_parser(); print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert result.stdout.strip() == "False", result.stderr


# ---------------------------------------------------------------------------------------------------------
# the fine-tuning panel: the same sentence on screen, nothing clamped silently, nothing trained
# ---------------------------------------------------------------------------------------------------------


@pytest.fixture
def panel(tiny_preset):
    from tauml.widgets.finetuning import finetune_panel

    calls = []
    widget = finetune_panel(tiny_preset, run=lambda *a, **k: calls.append(a) or pytest.fail("trained"),
                            train_sizes=(30, 60))
    widget.calls = calls
    widget.strategy.value = "fine_tuning"
    return widget


@pytest.mark.parametrize(("control", "value", "phrase"), [
    ("unfreeze_epoch", 999, "unfreeze_epoch=999 is past the last epoch"),
    ("gpt_blocks", 9, "n_gpt_blocks=9, but the backbone"),
    ("seed", -1, "seed=-1 must not be negative"),
    ("epochs", 0, "epochs=0 must be positive"),
])
def test_panel_shows_impossible_values_instead_of_clamping(panel, control, value, phrase):
    getattr(panel, control).value = value
    assert getattr(panel, control).value == value  # kept as typed, not clamped
    assert phrase in panel.status.value and "error:" in panel.status.value
    panel.train_button.click()
    assert not panel.calls and phrase in panel.status.value


def test_panel_lowering_epochs_below_the_unfreeze_epoch(panel):
    panel.epochs.value = 2
    panel.unfreeze_epoch.value = 2
    panel.epochs.value = 1
    assert panel.unfreeze_epoch.value == 2  # not silently moved to 1
    assert "unfreeze_epoch=2 is past the last epoch (epochs=1)" in panel.status.value
    panel.unfreeze_epoch.value = 1
    assert "error" not in panel.status.value


def test_panel_shows_an_input_error_as_one_sentence(tiny_preset):
    from tauml.widgets.finetuning import finetune_panel

    def broken(*args, **kwargs):
        raise DataError("reco_cand_pdg in z_train.parquet holds string values, not numbers")

    widget = finetune_panel(tiny_preset, run=broken, train_sizes=(30, 60))
    widget.train_button.click()  # no exception escapes into the notebook
    assert "error: reco_cand_pdg in z_train.parquet holds string values, not numbers — fix or regenerate" in \
        widget.status.value
    assert not widget.train_button.disabled


# ---------------------------------------------------------------------------------------------------------
# processes: workers die with their parent
# ---------------------------------------------------------------------------------------------------------

psutil = pytest.importorskip("psutil")


def _workers(pid: int) -> list:
    try:
        children = psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    found = []
    for child in children:
        try:
            if "spawn_main" in " ".join(child.cmdline()):
                found.append(child)
        except psutil.Error:
            pass
    return found


def _kill_parent_and_check_workers(proc: subprocess.Popen, n: int, settle: float) -> None:
    deadline = time.monotonic() + 60
    workers = []
    try:
        while time.monotonic() < deadline and len(workers) < n:
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            time.sleep(0.2)
            workers = _workers(proc.pid)
        assert len(workers) >= n, "the workers never started"
        time.sleep(settle)  # let them get to work (import, initializer, a task)
        proc.kill()  # SIGKILL: the parent runs no clean-up at all
        proc.wait(10)
        _, alive = psutil.wait_procs(workers, timeout=15)
        assert not alive, f"workers outlived their parent: {[p.pid for p in alive]}"
    finally:
        for worker in workers:
            try:
                worker.kill()
            except psutil.Error:
                pass
        if proc.poll() is None:
            proc.kill()


def test_killed_generate_takes_its_workers_with_it(tmp_path):
    env = {**os.environ, "TAUML_CACHE_DIR": str(tmp_path / "cache"), "TAUML_WORKERS": "2"}
    proc = subprocess.Popen([sys.executable, "-m", "tauml.cli", "generate", "--sample", "z", "--events", "2000",
                             "--chunk-events", "100", "--workers", "2", "--out", str(tmp_path / "out"), "--quiet"],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _kill_parent_and_check_workers(proc, 2, settle=3.0)


POOL = """
import multiprocessing, time
from concurrent.futures import ProcessPoolExecutor
from tauml.pipeline.finetuning import _worker_init
if __name__ == "__main__":
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn"), initializer=_worker_init) as pool:
        futures = [pool.submit(time.sleep, 120) for _ in range(2)]
        futures[0].result()
"""


@pytest.mark.parametrize("watch", ["prctl", "poll"])
def test_killed_finetune_pool_takes_its_workers_with_it(tmp_path, watch):
    env = {**os.environ, "TAUML_PARENT_WATCH": watch}
    proc = subprocess.Popen([sys.executable, "-c", POOL], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    _kill_parent_and_check_workers(proc, 2, settle=4.0)


def test_json_written_by_the_cache_is_readable_json(tmp_path):
    write_json(tmp_path / "a.json", {"x": np.float32(1.5), "p": Path("/x")})
    assert json.loads((tmp_path / "a.json").read_text()) == {"x": 1.5, "p": "/x"}
