"""The scan store (round trip, resume, widen, no recomputation), the point generators, summaries, data
efficiency on curves with known answers, and the scan figures."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import matplotlib.pyplot as plt
import numpy as np
import pytest

from tauml.config import ConfigError, FinetuneConfig, ScanConfig, get_preset
from tauml.pipeline.scan import (
    ScanStore,
    block_points,
    build_scan,
    data_efficiency,
    history_summary,
    preset_key,
    reference_value,
    run_scan,
    select,
    summarize,
    train_size_points,
    unfreeze_points,
)

BASE = FinetuneConfig(task="reg", epochs=20, unfreeze_epoch=10, train_size=2000)
#: A made-up "performance" per strategy: metric = slope * ln(n) + offset (a straight line in ln n).
OFFSETS = {"from_scratch": 0.0, "fixed_backbone": -0.5, "fine_tuning": 0.1 * math.log(10.0)}


class CurveRun:
    """A cheap, deterministic stand-in for a training run: the metric is a known function of the config
    (0.1 ln(train_size) + a per-strategy offset + a per-seed shift), and it counts its calls."""

    def __init__(self, fail_after: int | None = None) -> None:
        self.calls: list[FinetuneConfig] = []
        self.fail_after = fail_after

    def __call__(self, config: FinetuneConfig) -> dict:
        if self.fail_after is not None and len(self.calls) >= self.fail_after:
            raise KeyboardInterrupt("interrupted on purpose")
        self.calls.append(config)
        value = 0.1 * math.log(config.train_size) + OFFSETS.get(config.strategy, 0.0) + 0.01 * (config.seed - 2)
        val_loss = [1.0 / (epoch + 1) + 0.01 * config.seed for epoch in range(3)]
        return {"metrics": {"auc": value, "iqr": 1.0 / value, "blocks": float(config.n_gpt_blocks)},
                "history": {"train_loss": [2.0, 1.5, 1.2], "val_loss": val_loss}, "best_epoch": 2,
                "reference": {"auc": 0.5}}


@pytest.fixture
def store(tmp_path):
    return ScanStore(tmp_path / "scans", preset_key="test-preset")


def test_put_get_round_trip(store):
    config = replace(BASE, seed=7)
    assert config not in store and store.get(config) is None
    record = store.put(config, CurveRun()(config), seconds=1.5)
    assert config in store
    again = store.get(config)
    assert again == record
    assert again["config"]["seed"] == 7 and again["config"]["task"] == "reg"
    assert again["metrics"]["auc"] == pytest.approx(0.1 * math.log(2000) + 0.1 * math.log(10) + 0.05)
    assert again["summary"] == {"epochs": 3, "best_epoch": 2, "best_val_loss": pytest.approx(1 / 3 + 0.07),
                                "final_val_loss": pytest.approx(1 / 3 + 0.07), "final_train_loss": 1.2}
    assert again["seconds"] == 1.5 and again["tauml_version"]
    assert reference_value([again], "auc") == 0.5 and reference_value([again], "iqr") is None
    # the file is named by the hash, holds JSON, and no temporary file is left behind
    files = list(store.root.iterdir())
    assert [f.name for f in files] == [f"{store.key(config)}.json"]
    assert json.loads(files[0].read_text())["key"] == store.key(config)
    # the device does not name a point; anything else does
    assert replace(config, device="cpu") in store
    assert replace(config, seed=8) not in store
    assert replace(config, lr=1e-3) not in store


def test_store_key_depends_on_preset(tmp_path):
    config = BASE
    a = ScanStore(tmp_path / "a", preset_key="demo-aaa")
    b = ScanStore(tmp_path / "b", preset_key="demo-bbb")
    assert a.key(config) != b.key(config)
    demo = get_preset("demo")
    assert preset_key(demo) == preset_key("demo")
    assert preset_key(replace(demo, scan=replace(demo.scan, seeds=(1, 2, 3, 4)))) == preset_key(demo)
    assert preset_key(replace(demo, gpt=replace(demo.gpt, n_layer=2))) != preset_key(demo)


def test_corrupt_point_names_the_fix(store):
    store.path(BASE).write_text("{not json")
    with pytest.raises(ConfigError, match="delete it"):
        store.get(BASE)


def test_resume_after_interruption(store):
    points = train_size_points(BASE, ScanConfig(train_sizes=(100, 1000), seeds=(1, 2)))
    assert len(points) == 12
    interrupted = CurveRun(fail_after=5)
    with pytest.raises(KeyboardInterrupt):
        run_scan(points, store, run=interrupted, progress=False)
    assert len(interrupted.calls) == 5 and len(store.points()) == 5  # each finished point was stored at once
    resumed = CurveRun()
    records = run_scan(points, store, run=resumed, progress=False)
    assert len(resumed.calls) == 7
    assert set(resumed.calls).isdisjoint(interrupted.calls)
    assert set(resumed.calls) | set(interrupted.calls) == set(points)
    # results come back in the order of the points
    assert [r["config"]["seed"] for r in records] == [p.seed for p in points]
    assert [r["config"]["strategy"] for r in records] == [p.strategy for p in points]
    assert [r["config"]["train_size"] for r in records] == [p.train_size for p in points]


def test_no_recomputation_and_widening(store):
    scan = ScanConfig(train_sizes=(100, 1000), seeds=(1, 2))
    first = CurveRun()
    records = run_scan(train_size_points(BASE, scan), store, run=first, progress=False)
    assert len(first.calls) == 12
    again = CurveRun()
    assert run_scan(train_size_points(BASE, scan), store, run=again, progress=False) == records
    assert again.calls == []
    wider = replace(scan, train_sizes=(100, 1000, 10_000), seeds=(1, 2, 3))
    widen = CurveRun()
    records = run_scan(train_size_points(BASE, wider), store, run=widen, progress=False)
    # new: 3 sizes x 3 strategies for seed 3, plus size 10000 for seeds 1 and 2
    assert len(widen.calls) == 9 + 6
    assert all(c.seed == 3 or c.train_size == 10_000 for c in widen.calls)
    assert len(records) == 27 and len(store.points()) == 27


def test_duplicate_points_run_once(store):
    run = CurveRun()
    records = run_scan([BASE, BASE, replace(BASE, seed=2)], store, run=run, progress=False)
    assert len(run.calls) == 2 and records[0] == records[1]


def test_run_scan_without_run_or_preset_names_the_fix(store):
    with pytest.raises(ConfigError, match="for_preset"):
        run_scan([BASE], store, progress=False)


def test_unfreeze_points():
    points = unfreeze_points(BASE, ScanConfig(seeds=(1, 2), ablation_train_size=2000))
    assert [p.unfreeze_epoch for p in points] == [0, 5, 10, 15, 20] * 2
    assert [p.seed for p in points] == [1] * 5 + [2] * 5
    assert {p.strategy for p in points} == {"fine_tuning"} and {p.train_size for p in points} == {2000}
    # the paper's points: 100 epochs, never unfrozen = unfreeze_epoch 100
    paper = unfreeze_points(replace(BASE, epochs=100), ScanConfig(unfreeze_fractions=(0, 0.3, 0.6, 1), seeds=(1,)))
    assert [p.unfreeze_epoch for p in paper] == [0, 30, 60, 100]
    # fractions that round to the same epoch give one point
    assert len(unfreeze_points(replace(BASE, epochs=2), ScanConfig(unfreeze_fractions=(0.4, 0.5), seeds=(1,)))) == 1
    with pytest.raises(ConfigError, match=r"\[0, 1\]"):
        unfreeze_points(BASE, ScanConfig(unfreeze_fractions=(1.5,)))


def test_block_points():
    points = block_points(BASE, ScanConfig(seeds=(1, 2, 3), ablation_train_size=500), n_blocks_pretrained=3)
    assert [(p.n_gpt_blocks, p.seed) for p in points] == [(k, s) for s in (1, 2, 3) for k in (1, 2, 3)]
    assert {p.train_size for p in points} == {500} and {p.strategy for p in points} == {"fine_tuning"}
    assert {p.unfreeze_epoch for p in points} == {BASE.unfreeze_epoch}


def test_train_size_points_and_build_scan():
    points = train_size_points(BASE, ScanConfig(train_sizes=(4000, 500), seeds=(1,)), strategies=("fine_tuning", "part"))
    assert [(p.train_size, p.strategy) for p in points] == [(500, "fine_tuning"), (500, "part"),
                                                            (4000, "fine_tuning"), (4000, "part")]
    with pytest.raises(ConfigError, match="unknown strategy"):
        train_size_points(BASE, ScanConfig(), strategies=("transfer",))
    demo = get_preset("demo")
    scan = build_scan("demo", "blocks", "dm")
    assert len(scan) == demo.gpt.n_layer * len(demo.scan.seeds) and {p.task for p in scan} == {"dm"}
    assert len(build_scan("demo", "unfreeze", "id")) == len(demo.scan.unfreeze_fractions) * len(demo.scan.seeds)
    assert len(build_scan("demo", "train_size", "reg")) == 3 * len(demo.scan.train_sizes) * len(demo.scan.seeds)
    with pytest.raises(ConfigError, match="scan kind"):
        build_scan("demo", "depth", "reg")


def test_build_scan_resolves_points_so_equal_trainings_are_shared():
    demo = get_preset("demo")
    sizes = build_scan(demo, "train_size", "reg", strategies=("from_scratch", "fine_tuning", "part"))
    assert {p.n_gpt_blocks for p in sizes if p.strategy != "part"} == {demo.gpt.n_layer}
    assert {p.unfreeze_epoch for p in sizes if p.strategy != "fine_tuning"} == {0}
    assert {p.n_gpt_blocks for p in sizes if p.strategy == "part"} == {0}
    blocks = build_scan(demo, "blocks", "reg")
    unfreeze = build_scan(demo, "unfreeze", "reg")
    # the deepest block point, the unfreeze point at the base epoch and the size-scan point at the ablation size
    shared = set(sizes) & set(blocks) & set(unfreeze)
    assert {(p.train_size, p.n_gpt_blocks, p.unfreeze_epoch) for p in shared} == {
        (demo.scan.ablation_train_size, demo.gpt.n_layer, demo.finetune.unfreeze_epoch)}
    assert len(shared) == len(demo.scan.seeds)


def test_summarize_known_numbers(store):
    run = CurveRun()
    records = run_scan(train_size_points(BASE, ScanConfig(train_sizes=(100, 1000), seeds=(1, 2, 3))), store,
                       run=run, progress=False)
    rows = summarize(records, by="train_size", metric="auc")
    assert len(rows) == 6
    row = next(r for r in rows if r["strategy"] == "fine_tuning" and r["train_size"] == 1000)
    expected = [0.1 * math.log(1000) + 0.1 * math.log(10) + 0.01 * (s - 2) for s in (1, 2, 3)]
    assert row["values"] == pytest.approx(expected) and row["seeds"] == [1, 2, 3]
    assert row["mean"] == pytest.approx(np.mean(expected))
    assert row["std"] == pytest.approx(np.std(expected)) and row["std"] == pytest.approx(0.01 * math.sqrt(2 / 3))
    assert [r["strategy"] for r in rows[::2]] == ["from_scratch", "fixed_backbone", "fine_tuning"]
    # a metric from the history summary
    loss = summarize(records, by="train_size", metric="best_val_loss")
    assert loss[0]["mean"] == pytest.approx(1 / 3 + 0.02)
    with pytest.raises(KeyError, match="stored metrics"):
        summarize(records, by="train_size", metric="accuracy")


def test_summarize_refuses_mixed_scans(store):
    scan = ScanConfig(seeds=(1, 2), ablation_train_size=1000, train_sizes=(1000,))
    run = CurveRun()
    unfreeze = run_scan(unfreeze_points(BASE, scan), store, run=run, progress=False)
    sizes = run_scan(train_size_points(BASE, scan), store, run=run, progress=False)
    with pytest.raises(ValueError, match="unfreeze_epoch"):
        summarize(unfreeze + sizes, by="train_size", metric="auc")
    rows = summarize(select(store.points(), unfreeze_epoch=15), by="train_size", metric="auc")
    assert [r["strategy"] for r in rows] == ["fine_tuning"] and rows[0]["n"] == 2
    by_epoch = summarize(unfreeze, by="unfreeze_epoch", metric="auc")
    assert [r["unfreeze_epoch"] for r in by_epoch] == [0, 5, 10, 15, 20]


def test_data_efficiency_known_answer(store):
    """metric = 0.1 ln n + b: fine-tuning (b = 0.1 ln 10) reaches any value with 10x fewer jets than from
    scratch; the fixed backbone (b = -0.5) never reaches the from-scratch value at 1e5 within the scan."""
    scan = ScanConfig(train_sizes=(100, 1000, 10_000, 100_000), seeds=(1, 2, 3))
    records = run_scan(train_size_points(BASE, scan), store, run=CurveRun(), progress=False)
    rows = {r["strategy"]: r for r in data_efficiency(records, "auc")}
    assert rows["from_scratch"]["efficiency"] == 1.0
    assert rows["from_scratch"]["train_size_needed"] == pytest.approx(1e5)
    assert rows["fine_tuning"]["status"] == "reached"
    assert rows["fine_tuning"]["train_size_needed"] == pytest.approx(1e4)
    assert rows["fine_tuning"]["efficiency"] == pytest.approx(10.0)
    assert rows["fixed_backbone"]["status"] == "beyond_largest" and rows["fixed_backbone"]["efficiency"] is None
    assert rows["fixed_backbone"]["train_size_needed"] == math.inf
    assert rows["fixed_backbone"]["efficiency_range"] == (0.0, pytest.approx(1.0))
    # iqr = 1 / auc is better when lower: the same factors
    lower = {r["strategy"]: r for r in data_efficiency(records, "iqr")}
    assert lower["fine_tuning"]["efficiency"] == pytest.approx(10.0, rel=0.05)
    # against the fine-tuning reference, from scratch needs 10x more: beyond the scan, efficiency < 0.1
    against = {r["strategy"]: r for r in data_efficiency(records, "auc", reference_strategy="fine_tuning")}
    assert against["from_scratch"]["status"] == "beyond_largest"
    assert against["from_scratch"]["efficiency_range"][1] == pytest.approx(1.0)
    with pytest.raises(ConfigError, match="higher_is_better"):
        data_efficiency(records, "blocks")


def test_data_efficiency_interpolates_in_log_size(store):
    """Between scanned sizes the crossing is interpolated linearly in ln(n): fine-tuning, scanned at 100 and
    10000 only, reaches from scratch's value at 1e4 with 1000 jets.  A curve that reaches the target already at
    its smallest size gives only a lower bound on the efficiency."""
    scan = ScanConfig(train_sizes=(100, 10_000), seeds=(1, 2, 3))
    records = run_scan(train_size_points(BASE, scan), store, run=CurveRun(), progress=False)
    rows = {r["strategy"]: r for r in data_efficiency(records, "auc")}
    assert rows["fine_tuning"]["train_size_needed"] == pytest.approx(1000.0)
    assert rows["fine_tuning"]["efficiency"] == pytest.approx(10.0)
    # the fixed backbone reaches 0.1 ln(1e4) - 0.5 at 1e4; fine-tuning and from scratch beat it already at 100
    rows = {r["strategy"]: r for r in data_efficiency(records, "auc", reference_strategy="fixed_backbone")}
    assert rows["fixed_backbone"]["efficiency"] == 1.0
    for strategy in ("from_scratch", "fine_tuning"):
        assert rows[strategy]["status"] == "at_or_below_smallest"
        assert rows[strategy]["efficiency"] is None
        assert rows[strategy]["train_size_needed"] == 100
        assert rows[strategy]["efficiency_range"] == (pytest.approx(100.0), math.inf)
        assert "at most" in rows[strategy]["note"]


def test_history_summary():
    assert history_summary({"val_loss": [3.0, 1.0, 2.0], "train_loss": [4.0, 3.0, 2.5]}) == {
        "epochs": 3, "best_epoch": 1, "best_val_loss": 1.0, "final_val_loss": 2.0, "final_train_loss": 2.5}
    assert history_summary({})["best_epoch"] is None


def test_scan_figures(store):
    from tauml.plots.scans import (
        plot_block_scan,
        plot_data_efficiency,
        plot_train_size_scan,
        plot_unfreeze_scan,
    )

    scan = ScanConfig(train_sizes=(100, 1000, 10_000), seeds=(1, 2), ablation_train_size=1000)
    run = CurveRun()
    sizes = run_scan(train_size_points(BASE, scan), store, run=run, progress=False)
    fig = plot_train_size_scan(summarize(sizes, by="train_size", metric="auc"), reference_value=0.5)
    ax = fig.axes[0]
    assert ax.get_xscale() == "log" and ax.get_xlabel() and ax.get_ylabel() == "AUC"
    assert len(ax.lines) == 3 + 1 and len(ax.collections) == 3  # three strategies with bands, one reference
    assert {t.get_text() for t in ax.get_legend().get_texts()} >= {"Fine-tuning", "No learning"}
    plt.close(fig)
    fig = plot_data_efficiency(data_efficiency(sizes, "auc"))
    assert len(fig.axes[0].patches) == 3 and fig.axes[0].get_yscale() == "log"
    plt.close(fig)
    unfreeze = run_scan(unfreeze_points(BASE, scan), store, run=run, progress=False)
    fig = plot_unfreeze_scan(summarize(unfreeze, by="unfreeze_epoch", metric="iqr"), epochs=BASE.epochs)
    assert fig.axes[0].get_xlabel().startswith("Epoch")
    plt.close(fig)
    blocks = run_scan(block_points(BASE, scan, 3), store, run=run, progress=False)
    rows = summarize(blocks, by="n_gpt_blocks", metric="blocks")
    assert [r["mean"] for r in rows] == [1.0, 2.0, 3.0]
    fig = plot_block_scan(rows)
    assert list(fig.axes[0].get_xticks()) == [1, 2, 3]
    plt.close(fig)
