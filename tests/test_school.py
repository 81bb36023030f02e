"""Ready for a school (issue 15): ``tauml prepare`` builds what the notebooks train, the notebooks and prepare read
one set of settings, the fine-tuning panel trains in the background with a progress bar and a Stop button, and a
student sees every figure once and every task with its reference row."""

from __future__ import annotations

import io
import json
import os
import threading
from dataclasses import replace
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pytest

from tauml import pipeline
from tauml.config import PRESETS, TASKS, FinetuneConfig
from tauml.pipeline.finetuning import RESULT_FILE, STATE_FILE, FinetuneResult, finetune, same_training

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def built(tiny_preset, tiny_dataset):
    """The tiny preset's tokenizer and backbone, built through the cached pipeline."""
    return pipeline.tokenizer(tiny_preset, progress=False), pipeline.backbone_checkpoint(tiny_preset, progress=False)


# ---------------------------------------------------------------------------------------------------------
# tauml prepare
# ---------------------------------------------------------------------------------------------------------


def test_prepare_builds_the_chosen_steps_into_the_cache(tiny_preset, tiny_dataset, monkeypatch, capsys):
    from tauml.cli import main
    from tauml.studies import embeddings

    monkeypatch.setitem(PRESETS, "tiny", tiny_preset)
    args = ["prepare", "--preset", "tiny", "--steps", "embeddings", "data", "tokenizer", "backbone", "--workers", "1",
            "--quiet"]
    assert main(args) == 0
    out = capsys.readouterr().out
    # in the order of the steps, each with what it built and how long it took
    assert out.index("[1/4] data") < out.index("[2/4] tokenizer") < out.index("[3/4] backbone") \
        < out.index("[4/4] embeddings")
    assert "3 fine-tunings (dm, seeds 1, 2, 3)" in out and out.count(" s\n") == 4 and "4 step(s) in" in out
    assert (pipeline.tokenizer_dir(tiny_preset) / "tokenizer.pt").is_file()
    assert (pipeline.backbone_dir(tiny_preset) / "backbone.pt").is_file()
    # the very fine-tunings notebook 05 asks for are in the normal cache
    for seed in embeddings.NOTEBOOK_SEEDS:
        config = embeddings.finetuning_config(tiny_preset, embeddings.NOTEBOOK_TASK, seed)
        assert (pipeline.finetune_dir(tiny_preset, same_training(config)) / RESULT_FILE).is_file()
    assert main(args) == 0  # a second run finds everything built
    assert "3 fine-tunings" in capsys.readouterr().out


def test_prepare_calls_what_the_notebooks_call_with_their_settings(tiny_preset, monkeypatch):
    from tauml.studies import ablations, finetuning, prepare, tokenization

    calls = {}

    def record(name):
        def fake(*args, **kwargs):
            calls[name] = (args, kwargs)
            return {"preset": None} if name == "variants" else {}
        return fake

    monkeypatch.setattr(finetuning, "run_comparison", record("finetuning"))
    monkeypatch.setattr(ablations, "run_ablations", record("ablations"))
    monkeypatch.setattr(tokenization, "variant_tokenizers", record("variants"))
    def detector_study(*args):
        calls["detector"] = args
        return {"realistic": [], "ideal": []}

    monkeypatch.setattr(pipeline, "detector_study", detector_study)
    seconds = prepare.prepare(tiny_preset, steps=("ablations", "finetuning", "variants", "detector"), workers=1,
                              progress=False, isolated=False)  # monkeypatched steps: in this process
    assert list(seconds) == ["detector", "variants", "finetuning", "ablations"]  # always in the order of STEPS
    assert calls["detector"] == (tiny_preset, pipeline.DETECTOR_STUDY_EVENTS)
    assert calls["variants"][0] == (tiny_preset, tokenization.NOTEBOOK_VARIANTS)
    assert calls["finetuning"] == ((tiny_preset,), {
        "tasks": finetuning.NOTEBOOK_TASKS, "models": finetuning.NOTEBOOK_MODELS, "seeds": finetuning.NOTEBOOK_SEEDS,
        "train_size": finetuning.NOTEBOOK_TRAIN_SIZE, "epochs": finetuning.NOTEBOOK_EPOCHS,
        "unfreeze_epoch": finetuning.NOTEBOOK_UNFREEZE_EPOCH, "progress": False, "workers": 1})
    assert calls["ablations"] == ((tiny_preset,), {"tasks": ablations.NOTEBOOK_TASKS, "workers": 1,
                                                   "progress": False})


def test_prepare_default_leaves_out_the_optional_steps():
    from tauml.studies import prepare

    default = prepare.check_steps(None)
    assert "scaling" in prepare.STEPS and "scaling" not in default
    assert default == [s for s in prepare.STEPS if s not in prepare.OPTIONAL_STEPS]
    assert prepare.check_steps(["scaling", "data"]) == ["data", "scaling"]


def test_prepare_refuses_an_unknown_step_before_building_anything(monkeypatch, capsys):
    from tauml.cli import main

    monkeypatch.setattr(pipeline, "dataset", lambda *a, **k: pytest.fail("built something"))
    assert main(["prepare", "--steps", "data", "tokeniser"]) == 2
    err = capsys.readouterr().err
    assert "unknown step 'tokeniser' — choose from data, detector, tokenizer" in err
    assert main(["prepare", "--list"]) == 0
    assert "04_ablations" in capsys.readouterr().out


def _config_cell(notebook: str) -> dict:
    """The variables the configuration cell (the first code cell) of ``notebook`` sets, for the demo preset."""
    nb = json.loads((ROOT / "notebooks" / f"{notebook}.ipynb").read_text())
    cell = next(c for c in nb["cells"] if c["cell_type"] == "code")
    source = "".join(cell["source"])
    assert source.startswith("# Configuration"), notebook
    namespace: dict = {}
    previous = os.environ.pop("TAUML_PRESET", None)
    try:
        exec(compile(source, notebook, "exec"), namespace)
    finally:
        if previous is not None:
            os.environ["TAUML_PRESET"] = previous
    return namespace


def test_the_notebooks_default_to_the_settings_prepare_builds():
    from tauml.studies import ablations, embeddings, finetuning, tokenization

    assert _config_cell("00_data")["DETECTOR_STUDY_EVENTS"] == pipeline.DETECTOR_STUDY_EVENTS
    assert _config_cell("01_tokenization")["VARIANTS"] == tokenization.NOTEBOOK_VARIANTS
    nb03 = _config_cell("03_finetuning")
    assert (nb03["TASKS"], nb03["MODELS"], nb03["SEEDS"]) == (finetuning.NOTEBOOK_TASKS, finetuning.NOTEBOOK_MODELS,
                                                               finetuning.NOTEBOOK_SEEDS)
    assert (nb03["TRAIN_SIZE"], nb03["EPOCHS"], nb03["UNFREEZE_EPOCH"]) == (
        finetuning.NOTEBOOK_TRAIN_SIZE, finetuning.NOTEBOOK_EPOCHS, finetuning.NOTEBOOK_UNFREEZE_EPOCH)
    # the values the notebooks computed before the settings moved into the library (the same cache entries)
    assert (nb03["TRAIN_SIZE"], nb03["EPOCHS"], nb03["UNFREEZE_EPOCH"], nb03["SEEDS"]) == (2000, 20, 10, (1, 2, 3))
    assert _config_cell("04_ablations")["TASKS"] == ablations.NOTEBOOK_TASKS == TASKS
    nb05 = _config_cell("05_embeddings")
    assert (nb05["TASK"], nb05["SEED"], nb05["SEEDS"]) == (embeddings.NOTEBOOK_TASK, embeddings.NOTEBOOK_SEED,
                                                           embeddings.NOTEBOOK_SEEDS) == ("dm", 1, (1, 2, 3))


# ---------------------------------------------------------------------------------------------------------
# the fine-tuning panel: background training, progress, Stop, resume
# ---------------------------------------------------------------------------------------------------------


def _panel(tiny_preset, task: str, strategy: str, seed: int, background: bool, run=None):
    from tauml.widgets.finetuning import finetune_panel

    panel = finetune_panel(tiny_preset, run=run, train_sizes=(30, 60), background=background)
    panel.task.value, panel.strategy.value, panel.seed.value, panel.train_size.value = task, strategy, seed, 30
    panel.epochs.value, panel.unfreeze_epoch.value = 2, 1
    return panel


def test_panel_trains_in_a_background_thread(tiny_preset, built):
    seen = []

    def run(preset, config, callback, **kwargs):
        def watch(epoch, record, history):
            seen.append((threading.current_thread() is threading.main_thread(), panel.train_button.disabled,
                         panel.stop_button.disabled))
            callback(epoch, record, history)
        return finetune(preset, config, callback=watch, **kwargs)

    panel = _panel(tiny_preset, "reg", "from_scratch", 21, background=True, run=run)
    assert panel.stop_button.disabled and not panel.train_button.disabled
    thread = panel.train()
    assert thread is not None and thread.daemon
    assert panel.wait(timeout=300), "the background training did not end"
    assert panel.error is None, panel.error
    assert seen == [(False, True, False)] * 2  # in the thread; Train disabled and Stop enabled meanwhile
    assert panel.last_result.config.seed == 21 and "done" in panel.status.value
    assert panel.progress.value == panel.progress.max == 2 and panel.progress.bar_style == "success"
    assert not panel.train_button.disabled and panel.stop_button.disabled
    assert len(panel.loss_output.outputs) == 1 and len(panel.plot_output.outputs) == 1
    assert plt.get_fignums() == []  # the panel draws without pyplot: nothing for Jupyter to show again


@pytest.mark.parametrize("background", [False, True])
def test_panel_stop_keeps_the_epochs_and_train_continues_to_the_same_model(tiny_preset, built, tmp_path, background):
    seed = 31 if background else 32
    panel = None

    def run(preset, config, callback, **kwargs):
        def stop_after_first_epoch(epoch, record, history):
            if epoch == 0:
                panel.stop_button.click()  # as a student would, while the first epoch's curve is drawn
            callback(epoch, record, history)
        return finetune(preset, config, callback=stop_after_first_epoch, **kwargs)

    panel = _panel(tiny_preset, "dm", "fine_tuning", seed, background=background, run=run)
    config = panel.config()
    uninterrupted = finetune(tiny_preset, config, progress=False, folder=tmp_path / "uninterrupted")

    panel.train_button.click()
    assert panel.wait(timeout=300)
    assert panel.status.value == "stopped after epoch 1 of 2 — press Train to continue"
    assert panel.last_result is None and panel.progress.value == 1 and panel.progress.bar_style == "warning"
    assert not panel.train_button.disabled and panel.stop_button.disabled
    folder = pipeline.finetune_dir(tiny_preset, same_training(config))
    assert (folder / STATE_FILE).is_file() and not (folder / RESULT_FILE).exists()  # what was trained is kept

    panel.train_button.click()  # continues with epoch 2 (the run above stops in epoch 1 only)
    assert panel.wait(timeout=300)
    result = panel.last_result
    assert result is not None and "done" in panel.status.value and panel.progress.value == 2
    assert result.history["val_loss"] == pytest.approx(uninterrupted.history["val_loss"], rel=1e-9)
    assert result.headline == pytest.approx(uninterrupted.headline, rel=1e-9)


def test_panel_in_the_background_refuses_impossible_settings_without_starting(tiny_preset):
    from tauml.widgets.finetuning import finetune_panel

    panel = finetune_panel(tiny_preset, run=lambda *a, **k: pytest.fail("trained"), train_sizes=(30, 60),
                           background=True)
    panel.strategy.value = "fine_tuning"
    panel.unfreeze_epoch.value = 999
    assert panel.train() is None and not panel.training
    panel.train_button.click()
    assert panel._thread is None and "unfreeze_epoch=999 is past the last epoch" in panel.status.value
    panel.unfreeze_epoch.value, panel.gpt_blocks.value = 1, 9
    panel.train_button.click()
    assert panel._thread is None and "n_gpt_blocks=9, but the backbone" in panel.status.value
    assert not panel.train_button.disabled and panel.stop_button.disabled


def test_panel_shows_a_reference_row_for_identification(tiny_preset, built):
    from tauml.widgets.finetuning import finetune_panel

    panel = finetune_panel(tiny_preset, train_sizes=(30, 60), background=False)
    panel.task.value, panel.strategy.value, panel.train_size.value = "id", "from_scratch", 30
    panel.train_button.click()
    table = panel.metrics_output.outputs[0]["data"]["text/markdown"]
    assert "random guessing" in table and "| 0.8 | 0.5 |" in table
    assert "No-learning reference: none for identification — random guessing gives mis-ID = 0.8 at 80 % " \
           "efficiency" in table


def test_random_guessing_gives_the_stated_misid():
    from tauml.evaluation.metrics import auc, misid_at_efficiency
    from tauml.evaluation.references import RANDOM_GUESSING_ID

    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 200_000)
    scores = rng.random(200_000)  # independent of the label
    assert misid_at_efficiency(scores, labels, 0.8) == pytest.approx(RANDOM_GUESSING_ID["misid_at_80"], abs=0.01)
    assert auc(scores, labels) == pytest.approx(RANDOM_GUESSING_ID["auc"], abs=0.01)


# ---------------------------------------------------------------------------------------------------------
# what a student sees: each figure once, a reference row for every task
# ---------------------------------------------------------------------------------------------------------


def _fake_results() -> dict:
    """Results of three tasks and three models with two seeds, made up (no training)."""
    rng = np.random.default_rng(0)
    n = 300
    is_tau = (np.arange(n) % 2).astype(np.int64)
    vis = rng.uniform(10, 60, n)
    dm = rng.integers(0, 6, n)
    results: dict = {}
    for task in TASKS:
        results[task] = {}
        for model in ("from_scratch", "fine_tuning", "part"):
            runs = []
            for seed in (1, 2):
                config = replace(FinetuneConfig(), task=task, strategy=model, seed=seed)
                history = {"val_loss": list(rng.random(4)), "train_loss": list(rng.random(4))}
                if task == "id":
                    predictions = {"score": rng.random(n) + 0.5 * is_tau, "is_tau": is_tau}
                    metrics = {"misid_at_80": 0.1, "auc": 0.9, "n_background": int((is_tau == 0).sum())}
                    reference = {}
                elif task == "reg":
                    predictions = {"pred_pt": vis * rng.normal(1, 0.05, n), "vis_pt": vis,
                                   "reco_pt": vis * rng.normal(0.97, 0.08, n)}
                    metrics = {"resolution": 0.05, "median": 1.0}
                    reference = {"resolution": 0.08, "median": 0.97, "iqr": 0.08}
                else:
                    probs = rng.dirichlet(np.ones(6), n)
                    predictions = {"dm": dm, "probs": probs, "counting": rng.integers(0, 6, n)}
                    metrics = {"weighted_auc": 0.8, "accuracy": 0.6}
                    reference = {"accuracy": 0.5}
                runs.append(FinetuneResult(config=config, history=history, best_epoch=3, metrics=metrics,
                                           reference=reference, predictions=predictions, n_trainable_parameters=10))
            results[task][model] = runs
    return results


def test_comparison_figures_leave_no_figure_for_jupyter_to_show_again():
    from tauml.studies import finetuning as studies

    figures = studies.comparison_figures(_fake_results(), save_prefix=None)
    assert {"id_val_loss", "id_roc", "reg_response", "reg_resolution_vs_pt", "dm_confusion_fine_tuning",
            "dm_confusion_part", "dm_confusion_counting"} <= set(figures)
    assert plt.get_fignums() == []  # closed for pyplot: only display(fig) shows them, once
    buffer = io.BytesIO()
    figures["dm_confusion_part"].savefig(buffer, format="png")  # a closed figure still draws
    assert buffer.getvalue().startswith(b"\x89PNG")


def test_scan_figures_leave_no_figure_for_jupyter_to_show_again():
    from tauml.plots import scans as splots

    rows = [{"task": "dm", "strategy": "fine_tuning", "metric": "weighted_auc", "unfreeze_epoch": e,
             "n_gpt_blocks": e + 1, "train_size": 250 * (e + 1), "mean": 0.7 + 0.01 * e, "std": 0.01}
            for e in range(3)]
    splots.plot_unfreeze_scan(rows, epochs=20)
    splots.plot_block_scan(rows)
    splots.plot_train_size_scan(rows, reference_value=0.6)
    assert plt.get_fignums() == []
    fig, ax = plt.subplots()
    splots.plot_block_scan(rows, ax=ax)  # a figure the caller made stays the caller's
    assert plt.get_fignums() == [fig.number]


def test_every_task_table_has_its_reference_row():
    from tauml.studies import finetuning as studies

    rows = studies.headline_rows(_fake_results())
    references = {r["task"]: r["model"] for r in rows if r["trainable parameters"] == 0}
    assert set(references) == set(TASKS)
    assert "random guessing" in references["id"]
    id_row = next(r for r in rows if r["model"] == references["id"])
    assert id_row[studies.METRIC_LABELS["misid_at_80"]] == "0.8" and id_row[studies.METRIC_LABELS["auc"]] == "0.5"


def test_confusion_text_sits_above_the_experiment_label():
    from tauml.plots import set_style
    from tauml.plots.tau import plot_confusion

    set_style()
    fig = plot_confusion(np.eye(6), text="decay mode: counting (no learning)")
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    ax = fig.axes[0]
    text = next(t for t in ax.texts if t.get_text() == "decay mode: counting (no learning)")
    experiment = [t for t in ax.texts if t.get_text() in ("tauml", "Simulation")]
    assert len(experiment) == 2, "no experiment label found"
    box = text.get_window_extent(renderer)
    assert all(not box.overlaps(t.get_window_extent(renderer)) for t in experiment)


def test_scan_explorer_follows_a_change_of_task(tiny_preset, built):
    """Choosing another task gives that task's metrics and redraws (it raised a TraitError before, which a browser
    hides in its log: the explorer then stopped redrawing; found by tests/browser)."""
    from tauml.studies import ablations as studies
    from tauml.widgets import scan_explorer
    from tauml.widgets.scans import TASK_METRICS

    records = studies.run_ablations(tiny_preset, tasks=("reg", "dm"), kinds=("blocks",), progress=False, workers=1)
    explorer = scan_explorer(records, epochs=tiny_preset.finetune.epochs)
    first = explorer.output.outputs
    explorer.task.value = "dm"
    assert explorer.metric.options == TASK_METRICS["dm"] and explorer.metric.value == "weighted_auc"
    assert explorer.output.outputs != first and explorer.summary_rows()[0]["metric"] == "weighted_auc"
    explorer.metric.value = "accuracy"
    assert explorer.summary_rows()[0]["metric"] == "accuracy"
    explorer.task.value = "reg"
    assert explorer.metric.value == "resolution" and explorer.summary_rows()[0]["task"] == "reg"


def test_each_prepare_step_runs_in_its_own_process_and_its_errors_come_back(tiny_preset, tiny_dataset, capsys,
                                                                            tmp_path):
    from dataclasses import replace

    from tauml.data.schema import DataError
    from tauml.studies import prepare

    seconds = prepare.prepare(tiny_preset, steps=("data",), workers=1, progress=False)  # isolated: the default
    assert list(seconds) == ["data"]
    assert "events in" in capsys.readouterr().out  # the step's line came back from its process
    empty = replace(tiny_preset, data=str(tmp_path))  # a folder without data files: the step fails in its process
    with pytest.raises(DataError, match="no"):  # raised in the step's process, raised again here with its type
        prepare.prepare(empty, steps=("data",), workers=1, progress=False)
