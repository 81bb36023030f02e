"""Shared fixtures: a tiny generated dataset (real Pythia events, every sample) and the real sample files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("MPLBACKEND", "agg")
os.environ.setdefault("TAUML_PROGRESS", "0")

REAL_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "real"

#: Small enough to generate in ~10 s on one core, large enough to hold jets of every kind.
TINY_EVENTS = {"z": 200, "zh": 100, "qq": 100, "ZJetsToNuNu": 150, "TTBar": 150}


@pytest.fixture(scope="session")
def tiny_config():
    from tauml.config import GenerationConfig

    return GenerationConfig(events=TINY_EVENTS, seed=3, chunk_events=100)


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory, tiny_config):
    """A generated dataset in a temporary folder (one worker, so the test is independent of the core count)."""
    from tauml.data.generate import generate

    return generate(tiny_config, tmp_path_factory.mktemp("generated"), workers=1, progress=False)


def real_file(name: str) -> Path:
    path = REAL_DATA / name
    if not path.exists():
        pytest.skip(f"{path} is absent (../shared/data/real is only on the team's machines)")
    return path
