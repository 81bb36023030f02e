"""The training engine: one loop, one history, resume, states that load safely, run keys without the device."""

from __future__ import annotations

import pathlib
import random
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from test_gpt import TINY as GPT_TINY
from test_gpt import toy_jets
from test_vqvae import TINY as TOKENIZER_TINY
from test_vqvae import structured_jets

from tauml import pipeline
from tauml.config import DEMO, DeepSetConfig, FeatureConfig, FinetuneConfig, HeadConfig, PretrainConfig
from tauml.models import CheckpointError
from tauml.models.baselines import DeepSetBaseline
from tauml.models.checkpoints import save_backbone
from tauml.models.gpt import GPT
from tauml.models.tau import build_tau_model
from tauml.training import common, engine
from tauml.training.finetune import TauInputs, train_tau_model
from tauml.training.pretrain import pretrain
from tauml.training.tokenizer import train_tokenizer

# ------------------------------------------------------------------------------------- tiny inputs (shared)


def tau_inputs(n: int, seed: int) -> TauInputs:
    """Token inputs for a tau model: toy sequences with random targets of every task."""
    rng = np.random.default_rng(seed)
    tokens, mask = toy_jets(n, seed=seed)
    is_tau = torch.as_tensor(rng.integers(0, 2, n), dtype=torch.long)
    ratio = torch.as_tensor(rng.normal(0, 0.2, n), dtype=torch.float32)
    ratio[is_tau == 0] = float("nan")
    dm = torch.as_tensor(rng.integers(0, 6, n), dtype=torch.long)
    dm[is_tau == 0] = -1
    return TauInputs({"tokens": tokens, "token_mask": mask}, {"is_tau": is_tau, "log_pt_ratio": ratio, "dm": dm})


def candidate_inputs(n: int, seed: int) -> TauInputs:
    """Candidate inputs for a baseline, with the targets of :func:`tau_inputs`."""
    x, mask = structured_jets(n, seed=seed + 100)
    p3 = np.random.default_rng(seed).normal(0, 5, (n, x.shape[1], 3))
    p4 = np.concatenate([p3, np.sqrt((p3**2).sum(-1, keepdims=True) + 0.01)], -1)
    tensors = {"features": torch.as_tensor(x), "mask": torch.as_tensor(mask), "p4": torch.as_tensor(p4).float()}
    return TauInputs(tensors, tau_inputs(n, seed).targets)


FINETUNE = FinetuneConfig(task="id", strategy="fine_tuning", epochs=3, unfreeze_epoch=1, batch_size=32, lr=1e-3,
                          seed=5, device="cpu", train_size=150, val_size=40)
PRETRAIN = PretrainConfig(epochs=3, batch_size=64, lr=3e-3, warmup_steps=5, device="cpu", seed=7)


def backbone_file(folder: Path) -> Path:
    torch.manual_seed(0)
    path = folder / "backbone.pt"
    save_backbone(GPT(GPT_TINY), path, {})
    return path


def tau_model(config: FinetuneConfig, backbone: Path, dropout: float = 0.0) -> torch.nn.Module:
    common.seed_everything(config.seed)
    return build_tau_model(config.task, config.strategy, GPT_TINY, HeadConfig(n_heads=2, dropout=dropout),
                           n_gpt_blocks=2, pretrained=backbone, seed=config.seed)


# ------------------------------------------------------------------------------------------- the loop


def toy_trainer(folder: Path, step_backward: bool = False, **changes) -> engine.Trainer:
    """A linear regression through the engine: weights of 3, 32 examples in batches of 8."""
    torch.manual_seed(0)
    x = torch.randn(32, 3)
    y = x @ torch.tensor([1.0, -2.0, 0.5]) + 0.1 * torch.randn(32)
    model = torch.nn.Sequential(torch.nn.Dropout(0.2), torch.nn.Linear(3, 1))
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.05)
    scheduler = common.make_cosine_scheduler(optimizer, 4 * 5)

    def step(index):
        loss = torch.nn.functional.mse_loss(model(x[index]).squeeze(1), y[index])
        if step_backward:
            loss.backward()
            loss = loss.detach()
        return loss, len(index), {"abs": float(loss.detach().sqrt())}

    def validate(model):
        model.eval()
        with torch.no_grad():
            return {"val_loss": float(torch.nn.functional.mse_loss(model(x).squeeze(1), y))}

    settings = {"step": step, "validate": validate, "epochs": 5, "folder": folder, "run": {"toy": 1}, "seed": 3,
                "batches": lambda epoch: list(common.batches(32, 8, common.epoch_permutation(32, 3, epoch))),
                "step_backward": step_backward, "progress": False, **changes}
    return engine.Trainer(model, optimizer, scheduler, **settings)


def test_history_best_epoch_callbacks_and_files(tmp_path):
    saved, seen = [], []
    trainer = toy_trainer(tmp_path, save=lambda history, improved: saved.append(improved), info={"size": 32},
                          on_epoch_start=lambda epoch: {"started": epoch})
    history = trainer.fit(callbacks=[lambda epoch, record, history: seen.append(epoch)])
    assert seen == [0, 1, 2, 3, 4] and len(saved) == 5 and saved[0]
    assert history["size"] == 32 and [r["epoch"] for r in history["epochs"]] == [0, 1, 2, 3, 4]
    record = history["epochs"][-1]
    for key in ("train_loss", "train_abs", "val_loss", "lr", "train_jets", "jets_per_s", "train_time_s", "seconds",
                "elapsed_s", "started"):
        assert key in record, key
    assert record["train_jets"] == 32
    val = [r["val_loss"] for r in history["epochs"]]
    assert history["best_epoch"] == int(np.argmin(val)) and history["best_val_loss"] == min(val)
    assert history["epochs"][-1]["train_loss"] < history["epochs"][0]["train_loss"]
    state = torch.load(tmp_path / "state.pt", weights_only=True)
    assert state["epoch"] == 5 and state["history"] == history
    # finished: nothing runs again
    assert toy_trainer(tmp_path).fit(callbacks=[lambda *args: pytest.fail("trained again")]) == history


def test_resume_and_own_backward_give_the_same_weights(tmp_path):
    whole = toy_trainer(tmp_path / "whole")
    history = whole.fit()
    for _ in range(3):  # 2 + 2 + 1 epochs, each call a new process would make: new model, optimiser, scheduler
        parts = toy_trainer(tmp_path / "parts")
        parts.fit(max_epochs_this_call=2)
    assert all(torch.equal(a, b) for a, b in zip(whole.model.state_dict().values(), parts.model.state_dict().values()))
    resumed = torch.load(tmp_path / "parts" / "state.pt", weights_only=True)["history"]
    assert [r["val_loss"] for r in resumed["epochs"]] == [r["val_loss"] for r in history["epochs"]]
    own = toy_trainer(tmp_path / "own", step_backward=True)
    own.fit()
    assert all(torch.equal(a, b) for a, b in zip(whole.model.state_dict().values(), own.model.state_dict().values()))


def test_gradient_clipping_is_applied(tmp_path, monkeypatch):
    norms = []
    original = torch.nn.utils.clip_grad_norm_
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", lambda p, n: norms.append(n) or original(p, n))
    toy_trainer(tmp_path / "a", grad_clip=0.5, epochs=1).fit()
    assert norms == [0.5] * 4
    toy_trainer(tmp_path / "b", grad_clip=0.0, epochs=1).fit()
    assert len(norms) == 4


def test_random_states_are_plain_and_round_trip(tmp_path):
    common.seed_everything(11)
    state = engine.rng_state()
    torch.save(state, tmp_path / "rng.pt")
    draws = (torch.rand(3), np.random.rand(3), random.random())  # noqa: NPY002
    engine.set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    again = (torch.rand(3), np.random.rand(3), random.random())  # noqa: NPY002
    assert torch.equal(draws[0], again[0]) and np.array_equal(draws[1], again[1]) and draws[2] == again[2]


# -------------------------------------------------------------------------------------------- safe states


class Planted:
    """A pickle that creates ``marker`` when unpickled: what a crafted cache file could do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return pathlib.Path.touch, (pathlib.Path(self.marker),)


def plant(path: Path, marker: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"format": engine.STATE_FORMAT, "epoch": 1, "payload": Planted(marker)}, path)


def test_the_planted_pickle_is_live(tmp_path):
    plant(tmp_path / "state.pt", tmp_path / "ran")
    torch.load(tmp_path / "state.pt", weights_only=False)  # what the old loader did
    assert (tmp_path / "ran").exists()


@pytest.mark.parametrize("training", ["tokenizer", "pretraining", "fine-tuning"])
def test_a_planted_state_never_runs(tmp_path, training):
    marker = tmp_path / "ran"
    folder = tmp_path / "run"
    if training == "tokenizer":
        plant(folder / "state.pt", marker)
        train, val = structured_jets(64, seed=1), structured_jets(16, seed=2)
        call = lambda: train_tokenizer(train, val, TOKENIZER_TINY, FeatureConfig(), folder, progress=False)  # noqa: E731
        name = "state.pt"
    elif training == "pretraining":
        plant(folder / "training_state.pt", marker)
        call = lambda: pretrain(*toy_jets(64, 1), *toy_jets(16, 2), GPT_TINY, PRETRAIN, folder, progress=False)  # noqa: E731
        name = "training_state.pt"
    else:
        plant(folder / "state.pt", marker)
        model = tau_model(FINETUNE, backbone_file(tmp_path))
        call = lambda: train_tau_model(model, tau_inputs(60, 1), tau_inputs(20, 2), FINETUNE, folder,  # noqa: E731
                                       torch.device("cpu"), progress=False)
        name = "state.pt"
    with pytest.raises(CheckpointError, match=rf"{name}.*delete") as error:
        call()
    assert str(folder / name) in str(error.value)
    assert not marker.exists()


def test_a_state_of_an_older_format_is_a_clear_error(tmp_path):
    torch.save({"epoch": 1, "model": {}}, tmp_path / "state.pt")
    with pytest.raises(CheckpointError, match=r"not a .* state of this version of tauml: delete it"):
        toy_trainer(tmp_path).fit()


def test_fine_tuning_refuses_a_state_that_does_not_fit(tmp_path):
    backbone = backbone_file(tmp_path)
    train, val = tau_inputs(60, 1), tau_inputs(20, 2)
    folder = tmp_path / "run"
    train_tau_model(tau_model(FINETUNE, backbone), train, val, FINETUNE, folder, torch.device("cpu"), progress=False,
                    max_epochs_this_call=1)
    other = replace(FINETUNE, lr=2e-3)
    with pytest.raises(CheckpointError, match=r"other settings or data.*delete .*state\.pt"):
        train_tau_model(tau_model(other, backbone), train, val, other, folder, torch.device("cpu"), progress=False)
    with pytest.raises(CheckpointError, match=r"other settings or data"):
        train_tau_model(tau_model(FINETUNE, backbone), tau_inputs(60, 3), val, FINETUNE, folder, torch.device("cpu"),
                        progress=False)
    # same settings and data, another model: its shapes do not fit
    baseline = replace(FINETUNE, strategy="deepset", unfreeze_epoch=0)
    cands = candidate_inputs(60, 1), candidate_inputs(20, 2)
    train_tau_model(DeepSetBaseline("id", DeepSetConfig(width=8), seed=5), *cands, baseline, tmp_path / "ds",
                    torch.device("cpu"), progress=False, max_epochs_this_call=1)
    with pytest.raises(CheckpointError, match=r"does not fit.*delete .*state\.pt"):
        train_tau_model(DeepSetBaseline("id", DeepSetConfig(width=16), seed=5), *cands, baseline, tmp_path / "ds",
                        torch.device("cpu"), progress=False)
    # the device is not part of a run: the same training resumes on another device
    resumed = train_tau_model(tau_model(FINETUNE, backbone), train, val, replace(FINETUNE, device="auto"), folder,
                              torch.device("cpu"), progress=False)
    assert resumed.finished and len(resumed.history["val_loss"]) == 3


def test_device_and_precision_name_no_run():
    train, val = toy_jets(16, 1), toy_jets(8, 2)
    from tauml.training.pretrain import _run_key

    keys = {_run_key(train[0], val[0], GPT_TINY, replace(PRETRAIN, device=d, bf16=b))
            for d in ("cpu", "auto", "cuda") for b in (True, False)}
    assert len(keys) == 1
    other = replace(DEMO, pretrain=replace(DEMO.pretrain, device="cuda", bf16=False))
    assert pipeline.backbone_key(other) == pipeline.backbone_key(DEMO)
    assert pipeline.finetune_dir(DEMO, replace(DEMO.finetune, device="cuda")) == pipeline.finetune_dir(DEMO,
                                                                                                      DEMO.finetune)
