"""Shared fixtures: a tiny generated dataset (real Pythia events, every sample) and the real sample files."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("MPLBACKEND", "agg")
os.environ.setdefault("TAUML_PROGRESS", "0")

#: Small enough to generate in ~10 s on one core, large enough to hold jets of every kind.
TINY_EVENTS = {"z": 200, "zh": 100, "qq": 100, "ZJetsToNuNu": 150, "TTBar": 150}


@pytest.fixture(scope="session")
def tiny_config():
    from tauml.config import GenerationConfig

    return GenerationConfig(events=TINY_EVENTS, seed=3, chunk_events=100)


@pytest.fixture(scope="session", autouse=True)
def _private_cache(tmp_path_factory):
    """Every test session gets its own tauml cache: nothing is read from, or written to, the user's."""
    previous = os.environ.get("TAUML_CACHE_DIR")
    os.environ["TAUML_CACHE_DIR"] = str(tmp_path_factory.mktemp("tauml-cache"))
    yield
    if previous is None:
        os.environ.pop("TAUML_CACHE_DIR", None)
    else:
        os.environ["TAUML_CACHE_DIR"] = previous


@pytest.fixture(scope="session")
def tiny_dataset(tiny_config):
    """The tiny dataset, generated once per session into the session's cache (one worker)."""
    from tauml.data.generate import generate_cached

    return generate_cached(tiny_config, workers=1, progress=False)


@pytest.fixture(scope="session")
def tiny_preset(tiny_config):
    """A preset small enough to run the whole pipeline (tokenizer, backbone, every fine-tuning) in seconds."""
    from dataclasses import replace

    from tauml.config import (
        DEMO,
        FinetuneConfig,
        GPTConfig,
        HeadConfig,
        PretrainConfig,
        ScanConfig,
        TokenizerConfig,
    )

    return replace(
        DEMO, name="tiny", generation=tiny_config,
        tokenizer=TokenizerConfig(codebook_size=16, hidden_dim=16, n_blocks=1, n_heads=2, epochs=2, batch_size=64,
                                  kmeans_iterations=3, train_jets=0),
        gpt=GPTConfig(n_layer=2, n_head=2, n_embd=16, ffn_dim=32),
        pretrain=PretrainConfig(epochs=2, batch_size=32, warmup_steps=2),
        head=HeadConfig(n_heads=2, dropout=0.0),
        finetune=FinetuneConfig(epochs=2, train_size=60, val_size=30, batch_size=32, unfreeze_epoch=1),
        scan=ScanConfig(train_sizes=(30, 60), seeds=(1, 2), ablation_train_size=60),
    ).validate()


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """Tiny test models run fastest, and most predictably on a shared machine, on one thread."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(autouse=True)
def _close_figures():
    """Each test starts without open figures and leaves none behind."""
    import matplotlib.pyplot as plt

    plt.close("all")
    yield
    plt.close("all")
