"""Data-parallel training: two CPU processes (gloo, launched by torchrun) give one process's loss curves.

Each test launches ``python -m torch.distributed.run --nproc-per-node 2`` on this file (the ``__main__`` part at
the bottom is the worker) and compares what rank 0 wrote with one process on the same global batches.  The
ranks' gradients are summed in another order than one process sums them, so the curves agree to float
rounding: RTOL.  A run interrupted under 2 processes resumes under 1 (another world size) to the same curve.
"""

from __future__ import annotations

import json
import os
import pickle
import socket
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

TESTS = Path(__file__).resolve().parent
#: Relative tolerance of the per-epoch losses of 2 processes against 1 (measured: a few 1e-7 after 3 epochs).
RTOL = 1e-5


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(*args: str, nproc: int = 2, timeout: int = 180) -> None:
    """Run this file's worker under torchrun with ``nproc`` gloo processes on 127.0.0.1 and a free port."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TAUML_PROGRESS": "0",
           "PYTHONPATH": os.pathsep.join([str(TESTS), str(TESTS.parent), os.environ.get("PYTHONPATH", "")])}
    env.pop("WORLD_SIZE", None)
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc),
               "--master-addr", "127.0.0.1", "--master-port", str(_free_port()), __file__, *args]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"torchrun failed:\n{done.stdout[-3000:]}\n{done.stderr[-6000:]}"


# ---------------------------------------------------------------------------------------- the trainings


def pretraining(folder: Path, **kwargs):
    from test_engine import PRETRAIN
    from test_gpt import TINY, toy_jets

    from tauml.training.pretrain import pretrain

    return pretrain(*toy_jets(300, seed=1), *toy_jets(64, seed=2), TINY, PRETRAIN, folder, progress=False,
                    **kwargs)[1]


def fine_tuning(folder: Path, backbone: Path, **kwargs):
    from test_engine import FINETUNE, tau_inputs, tau_model

    from tauml.training.finetune import train_tau_model

    config = replace(FINETUNE, epochs=3)
    return train_tau_model(tau_model(config, backbone), tau_inputs(150, 21), tau_inputs(40, 22), config, folder,
                           torch.device("cpu"), progress=False, **kwargs).history


def curves(history: dict) -> dict[str, list[float]]:
    """Per-epoch training and validation losses of a pretraining (records) or fine-tuning (lists) history."""
    if "epochs" in history:
        return {key: [r[key] for r in history["epochs"]] for key in ("train_loss", "val_loss")}
    return {key: history[key] for key in ("train_loss", "val_loss")}


def worker(scenario: str, out: Path) -> None:
    """One rank: run the scenario; rank 0 writes what it got to ``out/result.json``."""
    torch.set_num_threads(1)
    from tauml.training import distributed

    result = {}
    if scenario == "train":
        result["pretrain"] = curves(pretraining(out / "pre"))
        result["finetune"] = curves(fine_tuning(out / "ft", out / "backbone.pt"))
        pretraining(out / "pre_cut", max_epochs_this_call=1)
        fine_tuning(out / "ft_cut", out / "backbone.pt", max_epochs_this_call=1)
        result["world_size"] = distributed.world_size()
    elif scenario == "cli":
        from tauml.cli import main
        from tauml.config import PRESETS

        PRESETS["tiny"] = pickle.loads((out / "preset.pkl").read_bytes())
        assert main(["pretrain", "--preset", "tiny", "--quiet"]) == 0
        result["world_size"] = int(os.environ["WORLD_SIZE"])
    if distributed.is_main():
        (out / "result.json").write_text(json.dumps(result))


def test_two_processes_give_one_process_curves_and_resume_under_one(tmp_path):
    from test_engine import backbone_file

    backbone_file(tmp_path)  # the pretrained backbone the fine-tuning starts from
    torchrun("train", str(tmp_path))
    two = json.loads((tmp_path / "result.json").read_text())
    assert two["world_size"] == 2
    one = {"pretrain": curves(pretraining(tmp_path / "one_pre")),
           "finetune": curves(fine_tuning(tmp_path / "one_ft", tmp_path / "backbone.pt"))}
    resumed = {"pretrain": curves(pretraining(tmp_path / "pre_cut")),  # epoch 1 under 2 processes, 2-3 under 1
               "finetune": curves(fine_tuning(tmp_path / "ft_cut", tmp_path / "backbone.pt"))}
    for training in ("pretrain", "finetune"):
        for key in ("train_loss", "val_loss"):
            assert len(two[training][key]) == 3
            np.testing.assert_allclose(two[training][key], one[training][key], rtol=RTOL, err_msg=training)
            np.testing.assert_allclose(resumed[training][key], one[training][key], rtol=RTOL, err_msg=training)
    # the interrupted run's first epoch came from 2 processes, the rest from 1: the state was rank-independent
    state = torch.load(tmp_path / "pre_cut" / "training_state.pt", weights_only=True)
    assert state["epoch"] == 3


def test_tauml_pretrain_runs_under_torchrun(tmp_path, tiny_preset, tiny_dataset):
    """``tauml pretrain`` under 2 gloo processes: rank 0 builds the tokenizer while the other waits, both
    pretrain (a backbone of its own: another seed than the tiny preset's), rank 0 writes the cache entry."""
    from tauml import pipeline

    preset = replace(tiny_preset, pretrain=replace(tiny_preset.pretrain, seed=99, device="cpu"))
    (tmp_path / "preset.pkl").write_bytes(pickle.dumps(preset))
    torchrun("cli", str(tmp_path))
    assert json.loads((tmp_path / "result.json").read_text())["world_size"] == 2
    history = pipeline.backbone_history(preset)  # from the cache: nothing trains here
    assert len(history["epochs"]) == preset.pretrain.epochs
    assert all(np.isfinite(r["val_loss"]) for r in history["epochs"])


def test_streamed_tokenizer_and_pretraining_under_torchrun_give_one_process_curves(tmp_path, tiny_preset,
                                                                                  tiny_dataset):
    """``tauml pretrain`` of a streaming preset under 2 gloo processes: rank 0 builds the feature shards and trains
    the tokenizer (streamed) while the other waits, rank 0 builds the token shards, both ranks stream their slices of
    every global batch; the curves are one process's on the same shards, to float rounding."""
    from tauml import pipeline
    from tauml.pipeline.shards import token_shards
    from tauml.training.pretrain_stream import pretrain_streaming
    from tauml.training.streaming import split_parts

    preset = replace(tiny_preset, tokenizer=replace(tiny_preset.tokenizer, streaming=True, seed=98),
                     pretrain=replace(tiny_preset.pretrain, seed=98, device="cpu", streaming=True))
    (tmp_path / "preset.pkl").write_bytes(pickle.dumps(preset))
    torchrun("cli", str(tmp_path))
    assert json.loads((tmp_path / "result.json").read_text())["world_size"] == 2
    two = pipeline.backbone_history(preset)  # from the cache: nothing trains here
    assert two["streaming"] and len(two["epochs"]) == preset.pretrain.epochs
    shards = token_shards(preset, [f for files in pipeline.pp_files(preset).values() for f in files], progress=False)
    train, val = split_parts(shards, preset.pretrain.val_fraction, preset.pretrain.seed)
    _, one = pretrain_streaming(train, val, pipeline.gpt_config(preset), preset.pretrain, tmp_path / "one",
                                progress=False)
    for key, values in curves(one).items():
        np.testing.assert_allclose(curves(two)[key], values, rtol=RTOL, err_msg=key)


if __name__ == "__main__":
    worker(sys.argv[1], Path(sys.argv[2]))
