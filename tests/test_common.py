"""Training utilities: schedules, reproducible batching, worker counts under a memory limit."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from tauml import utils
from tauml.training import common


def test_cosine_schedule_warms_up_then_decays_to_the_floor():
    values = [common.cosine_lr(step, 100, warmup_steps=10, min_fraction=0.01) for step in range(101)]
    assert values[0] == pytest.approx(0.1) and values[9] == pytest.approx(1.0)
    assert values[10] == pytest.approx(1.0) and values[100] == pytest.approx(0.01)
    assert all(a >= b for a, b in itertools.pairwise(values[10:]))


def test_bucketed_batches_cover_every_jet_once_and_repeat_per_seed_and_epoch():
    counts = np.random.default_rng(0).integers(1, 17, size=1000)
    batches = common.bucketed_batches(counts, 64, seed=3, epoch=2)
    flat = np.concatenate(batches)
    assert sorted(flat.tolist()) == list(range(1000))
    assert [b.tolist() for b in batches] == [b.tolist() for b in common.bucketed_batches(counts, 64, 3, 2)]
    assert [b.tolist() for b in batches] != [b.tolist() for b in common.bucketed_batches(counts, 64, 3, 3)]
    # similar lengths inside a batch: less padding than random batches
    spread = np.mean([np.ptp(counts[b]) for b in batches])
    random = np.mean([np.ptp(counts[b]) for b in common.batches(1000, 64, common.epoch_permutation(1000, 3, 2))])
    assert spread < 0.5 * random
    dropped = common.bucketed_batches(counts, 64, 3, 2, drop_last=True)
    assert all(len(b) == 64 for b in dropped)


def test_parallel_workers_respect_the_memory_limit(monkeypatch):
    monkeypatch.delenv("TAUML_WORKERS", raising=False)
    monkeypatch.setattr(utils, "usable_cores", lambda: [0, 1])
    monkeypatch.setattr(utils, "memory_limit_bytes", lambda: 24e9)
    assert utils.parallel_workers(jobs=10) == 2
    assert utils.parallel_workers(jobs=1) == 1
    monkeypatch.setattr(utils, "memory_limit_bytes", lambda: 2e9)  # a Binder session
    assert utils.parallel_workers(jobs=10) == 1
    assert utils.parallel_workers(jobs=10, worker_memory=0.6e9, parent_memory=0.6e9) == 2  # generation workers
    monkeypatch.setattr(utils, "memory_limit_bytes", lambda: 24e9)
    monkeypatch.setenv("TAUML_WORKERS", "1")
    assert utils.parallel_workers(jobs=10) == 1
