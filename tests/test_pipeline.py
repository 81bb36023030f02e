"""The whole chain on real (tiny) data: generation -> tokenizer -> pretrained backbone -> every task, strategy
and baseline -> metrics; caching, resume, reproducibility, frozen weights, the command line and the panel."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from tauml import pipeline
from tauml.config import BASELINES, PRESETS, STRATEGIES, TASKS, ConfigError
from tauml.models.checkpoints import load_backbone
from tauml.models.vqvae import PAD_ID, START_ID, STOP_ID
from tauml.pipeline.finetuning import MODEL_FILE, finetune


@pytest.fixture(scope="module")
def built(tiny_preset, tiny_dataset):
    """The tiny preset's tokenizer and backbone, built through the cached pipeline."""
    tokenizer = pipeline.tokenizer(tiny_preset, progress=False)
    checkpoint = pipeline.backbone_checkpoint(tiny_preset, progress=False)
    return tokenizer, checkpoint


def test_tokenizer_and_backbone_come_from_the_cache_the_second_time(tiny_preset, built):
    tokenizer, checkpoint = built
    again = pipeline.tokenizer(tiny_preset)
    assert again.frozen and not again.training
    for a, b in zip(tokenizer.state_dict().values(), again.state_dict().values()):
        assert torch.equal(a, b)
    assert pipeline.backbone_checkpoint(tiny_preset) == checkpoint
    history = pipeline.backbone_history(tiny_preset)
    assert history["unigram_perplexity"] > 1 and len(history["epochs"]) == tiny_preset.pretrain.epochs
    assert "preset" in pipeline.cached_tokenizers(tiny_preset)


def test_a_tokenizer_trained_on_ee_jets_reads_only_the_ee_training_files(tiny_preset, built):
    from tauml.config import EE_SAMPLES, identity_dict

    ee = replace(tiny_preset, tokenizer=replace(tiny_preset.tokenizer, train_on="ee"))
    split = pipeline.tokenizer_split(ee)
    n_train_files = sum(len(pipeline.sample_jets(tiny_preset, s, "train")) for s in EE_SAMPLES)
    assert len(split.train) + len(split.val) == n_train_files  # every e+e- training jet, no test jet
    assert split.train.mask.shape[1] == pipeline.sample_jets(tiny_preset, "z", "train").mask.shape[1]
    assert pipeline.tokenizer_key(ee) != pipeline.tokenizer_key(tiny_preset)
    assert pipeline.tokenizer_data_key(tiny_preset) == pipeline.pp_data_key(tiny_preset)  # pp keys unchanged
    assert "train_on" not in identity_dict(tiny_preset.tokenizer)
    tokenizer = pipeline.tokenizer(ee, progress=False)
    assert tokenizer.frozen and tokenizer.config.train_on == "ee"
    pp_weights = built[0].state_dict()
    assert any(not torch.equal(w, pp_weights[name]) for name, w in tokenizer.state_dict().items())
    assert any("train_on=ee" in name for name in pipeline.cached_tokenizers(tiny_preset))
    with pytest.raises(ConfigError, match="train_on"):
        replace(tiny_preset.tokenizer, train_on="lhc").validate()


def test_tau_jets_become_tokens_in_the_one_convention(tiny_preset, built):
    jets = pipeline.tau_jets(tiny_preset, "dm", "train")
    tokens, mask = pipeline.tokens(tiny_preset, jets, "dm/train")
    assert tokens.shape == (len(jets), jets.mask.shape[1] + 2)
    assert np.all(tokens[:, 0] == START_ID)
    n = jets.mask.sum(1)
    assert np.all(tokens[np.arange(len(jets)), n + 1] == STOP_ID)
    assert np.all(tokens[~mask] == PAD_ID)
    assert np.all(jets.jet_pt > tiny_preset.finetune.dm_min_jet_pt)


@pytest.mark.parametrize("task", TASKS)
def test_every_strategy_and_baseline_trains_and_is_evaluated(tiny_preset, built, task):
    for strategy in STRATEGIES + BASELINES:
        config = replace(tiny_preset.finetune, task=task, strategy=strategy)
        result = finetune(tiny_preset, config, progress=False)
        assert len(result.history["val_loss"]) == config.epochs
        assert all(np.isfinite(v) for v in result.headline.values()), (task, strategy, result.headline)
        if task == "reg":
            assert result.reference["resolution"] > 0
            assert result.predictions["pred_pt"].shape == result.predictions["vis_pt"].shape
        if task == "dm":
            assert 0 <= result.reference["accuracy"] <= 1
        if task == "id":
            assert set(np.unique(result.predictions["is_tau"])) == {0, 1}
        cached = finetune(tiny_preset, config, progress=False)
        assert cached.metrics == result.metrics and cached.folder == result.folder


@pytest.mark.parametrize("task", TASKS)
def test_the_test_jets_in_chunks_are_the_test_jets_and_give_the_same_metrics(tiny_preset, built, task):
    from tauml.cache import plain
    from tauml.evaluation.metrics import evaluate_task
    from tauml.evaluation.references import (
        metrics_from_predictions,
        no_learning_reference,
        prediction_arrays,
        reference_from_predictions,
    )

    whole = pipeline.tau_jets(tiny_preset, task, "test")
    chunks = list(pipeline.iter_tau_jets(tiny_preset, task, "test", chunk_jets=40))  # files read in chunks
    assert len(chunks) > 1 and sum(len(c) for c in chunks) == len(whole)
    at_once = list(pipeline.iter_tau_jets(tiny_preset, task, "test"))  # small files: whole, one chunk
    assert len(at_once) == 1
    for together in (chunks[0].concatenate(chunks), at_once[0]):
        for name in ("features", "mask", "jet_pt", "is_tau", "dm", "gen_vis_pt"):
            assert np.array_equal(getattr(together, name), getattr(whole, name), equal_nan=name == "gen_vis_pt"), name
    # metrics from the prediction arrays equal those from the jets (any predictions will do)
    rng = np.random.default_rng(3)
    predictions = {"id": rng.random(len(whole)), "reg": rng.normal(0, 0.1, len(whole)),
                   "dm": rng.dirichlet(np.ones(6), len(whole))}[task]
    arrays = prediction_arrays(task, predictions, whole)
    assert plain(metrics_from_predictions(task, arrays)) == plain(evaluate_task(task, predictions, whole))
    assert plain(reference_from_predictions(task, arrays)) == plain(no_learning_reference(task, whole))
    with pytest.raises(ValueError, match="test split only"):
        next(pipeline.iter_tau_jets(tiny_preset, task, "train"))


def _backbone_tensors(result_folder):
    state = torch.load(result_folder / MODEL_FILE, weights_only=True)
    return {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}


def test_frozen_backbone_never_changes_and_fine_tuning_changes_it(tiny_preset, built):
    _, checkpoint = built
    pretrained = load_backbone(checkpoint).state_dict()
    fixed = finetune(tiny_preset, replace(tiny_preset.finetune, task="reg", strategy="fixed_backbone"), progress=False)
    for name, tensor in _backbone_tensors(fixed.folder).items():
        assert torch.equal(tensor, pretrained[name]), name
    never = replace(tiny_preset.finetune, task="reg", strategy="fine_tuning", unfreeze_epoch=2)  # = epochs
    never_result = finetune(tiny_preset, never, progress=False)
    assert never_result.folder == fixed.folder  # the same training, run once
    assert never_result.config.strategy == "fine_tuning" and never_result.config.unfreeze_epoch == 2
    for name, tensor in _backbone_tensors(never_result.folder).items():
        assert torch.equal(tensor, pretrained[name]), name
    unfrozen = finetune(tiny_preset, replace(never, unfreeze_epoch=0), progress=False)
    changed = [not torch.equal(t, pretrained[n]) for n, t in _backbone_tensors(unfrozen.folder).items()]
    assert any(changed)
    assert unfrozen.history["backbone_trainable"] == [True, True]
    assert finetune(tiny_preset, replace(never, unfreeze_epoch=1), progress=False).history["backbone_trainable"] == \
        [False, True]


def test_fewer_gpt_blocks_and_their_limits(tiny_preset, built):
    one = finetune(tiny_preset, replace(tiny_preset.finetune, task="dm", strategy="fine_tuning", n_gpt_blocks=1),
                   progress=False)
    assert one.config.n_gpt_blocks == 1
    assert not any(k.startswith("backbone.blocks.1.") for k in torch.load(one.folder / MODEL_FILE, weights_only=True))
    with pytest.raises(ConfigError, match="has 2 blocks"):
        finetune(tiny_preset, replace(tiny_preset.finetune, n_gpt_blocks=5), progress=False)


def test_interrupted_training_resumes_to_the_same_numbers(tiny_preset, built, tmp_path):
    config = replace(tiny_preset.finetune, task="id", strategy="fine_tuning", epochs=3, unfreeze_epoch=1, seed=7)
    whole = finetune(tiny_preset, config, progress=False, folder=tmp_path / "whole")
    partial = finetune(tiny_preset, config, progress=False, folder=tmp_path / "resumed", max_epochs_this_call=1)
    assert partial.metrics == {} and len(partial.history["val_loss"]) == 1
    resumed = finetune(tiny_preset, config, progress=False, folder=tmp_path / "resumed")
    assert resumed.history["val_loss"] == whole.history["val_loss"]
    assert resumed.metrics == whole.metrics


def test_same_seed_same_numbers_other_seed_other_numbers(tiny_preset, built, tmp_path):
    config = replace(tiny_preset.finetune, task="reg", strategy="from_scratch", seed=11)
    a = finetune(tiny_preset, config, progress=False, folder=tmp_path / "a")
    b = finetune(tiny_preset, config, progress=False, folder=tmp_path / "b")
    c = finetune(tiny_preset, replace(config, seed=12), progress=False, folder=tmp_path / "c")
    assert a.history["val_loss"] == b.history["val_loss"]
    assert a.history["val_loss"] != c.history["val_loss"]


def test_too_many_training_jets_is_a_clear_error(tiny_preset, built):
    from tauml.data.schema import DataError

    with pytest.raises(DataError, match="generate more events"):
        finetune(tiny_preset, replace(tiny_preset.finetune, task="reg", train_size=100_000), progress=False)


def test_command_line_finetune_and_evaluate(tiny_preset, built, tmp_path, monkeypatch, capsys):
    from tauml.cli import main

    monkeypatch.setitem(PRESETS, "tiny", tiny_preset)
    args = ["--preset", "tiny", "--task", "reg", "--strategy", "fine_tuning", "--unfreeze-epoch", "1",
            "--gpt-blocks", "2", "--train-size", "60", "--seed", "1", "--quiet"]
    assert main(["finetune", *args]) == 0
    assert "resolution" in capsys.readouterr().out
    out = tmp_path / "metrics.json"
    assert main(["evaluate", *args, "--out", str(out)]) == 0
    payload = json.loads(out.read_text())
    assert payload["config"]["strategy"] == "fine_tuning" and "resolution" in payload["metrics"]
    out.write_text("my notes")
    assert main(["evaluate", *args, "--out", str(out)]) == 2  # never overwrites a file silently
    assert out.read_text() == "my notes" and "--overwrite" in capsys.readouterr().err
    assert main(["evaluate", *args, "--out", str(out), "--overwrite"]) == 0
    assert main(["finetune", "--preset", "tiny", "--task", "reg", "--strategy", "fine_tuning", "--gpt-blocks", "9",
                 "--quiet"]) == 2
    assert "n_gpt_blocks=9" in capsys.readouterr().err


def test_finetune_panel_headless(tiny_preset, built):
    from tauml.widgets.finetuning import finetune_panel

    panel = finetune_panel(tiny_preset, train_sizes=(30, 60))
    panel.strategy.value = "from_scratch"
    assert panel.unfreeze_epoch.disabled and not panel.gpt_blocks.disabled
    panel.strategy.value = "part"
    assert panel.gpt_blocks.disabled
    panel.strategy.value = "fine_tuning"
    assert not panel.unfreeze_epoch.disabled
    panel.epochs.value = 2
    assert panel.unfreeze_epoch.max == 2
    panel.task.value = "dm"
    panel.unfreeze_epoch.value = 1
    panel.train_size.value = 30
    panel.train_button.click()
    result = panel.last_result
    assert result.config.task == "dm" and result.config.train_size == 30 and result.config.unfreeze_epoch == 1
    assert "done" in panel.status.value
    assert len(panel.loss_output.outputs) == 1 and len(panel.metrics_output.outputs) == 1
    assert len(panel.plot_output.outputs) == 1
    assert not panel.train_button.disabled


def test_command_line_scan_reuses_finished_points(tiny_preset, built, monkeypatch, capsys):
    from tauml.cli import main
    from tauml.pipeline.scan import ScanStore

    monkeypatch.setitem(PRESETS, "tiny", tiny_preset)
    args = ["scan", "--preset", "tiny", "--task", "dm", "--kind", "blocks", "--seeds", "1", "2", "3", "--quiet"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "n_gpt_blocks" in out and "weighted_auc" in out
    store = ScanStore.for_preset(tiny_preset)
    n_points = len(store.points())
    assert n_points >= 6  # 2 block settings x 3 seeds
    before = {p.name: p.stat().st_mtime_ns for p in store.root.glob("*.json")}
    assert main(args) == 0  # everything cached: nothing is trained or rewritten
    assert {p.name: p.stat().st_mtime_ns for p in store.root.glob("*.json")} == before


def test_comparison_study_tables_and_figures(tiny_preset, built):
    from tauml.studies import finetuning as studies

    results = studies.run_comparison(tiny_preset, tasks=("reg", "dm"), models=("from_scratch", "fine_tuning", "part"),
                                     progress=False, workers=1)
    rows = studies.headline_rows(results)
    assert {r["model"] for r in rows} >= {"from_scratch", "fine_tuning", "part", "reco-jet pT (no learning)"}
    lines = studies.beats_reference(results)
    assert len(lines) == 6 and all("(one seed) compares with" in line for line in lines)  # one seed: no verdict
    claims = studies.claims_rows(results)
    assert any("narrows the pT resolution" in c["claim"] for c in claims)
    assert all(c["agrees"] == "undetermined" for c in claims)  # one seed each: no spread to judge by
    figures = studies.comparison_figures(results, save_prefix=None)
    assert {"reg_val_loss", "reg_response", "reg_resolution_vs_pt", "dm_confusion_counting"} <= set(figures)


def test_ablations_and_the_scan_explorer(tiny_preset, built):
    from tauml.studies import ablations as studies
    from tauml.widgets import scan_explorer

    records = studies.run_ablations(tiny_preset, tasks=("reg",), kinds=("blocks", "train_size"), progress=False,
                                    workers=1)
    assert len(records["blocks"]["reg"]) == 2 * len(tiny_preset.scan.seeds)
    claims = studies.ablation_claims_rows(records, epochs=tiny_preset.finetune.epochs)
    assert {c["agrees"] for c in claims} <= {"yes", "no", "not significant"} and len(claims) == 2
    explorer = scan_explorer(records, epochs=tiny_preset.finetune.epochs)
    first = explorer.output.outputs
    assert len(first) == 1 and "image/png" in first[0]["data"]
    explorer.kind.value = "train_size"
    assert explorer.output.outputs != first
    explorer.metric.value = "median"
    assert explorer.summary_rows()[0]["metric"] == "median"
    assert "train_size" in explorer.table.outputs[0]["data"]["text/markdown"]


def test_the_tokenizer_domain_is_one_option_on_every_step():
    from tauml.cli import _preset_of, build_parser

    parser = build_parser()
    extras = {"train-tokenizer": [], "pretrain": [], "finetune": ["--task", "id", "--strategy", "fine_tuning"],
              "scan": ["--task", "id", "--kind", "blocks"]}
    for command, extra in extras.items():
        args = parser.parse_args([command, *extra, "--tokenizer-on", "ee"])
        preset = _preset_of(args, check=False)
        assert preset.tokenizer.train_on == "ee", command
        assert pipeline.tokenizer_key(preset) != pipeline.tokenizer_key("demo")
        assert pipeline.backbone_key(preset) != pipeline.backbone_key("demo")  # the backbone follows the tokenizer
    assert _preset_of(parser.parse_args(["pretrain"]), check=False).tokenizer.train_on == "pp"
    with pytest.raises(SystemExit):
        parser.parse_args(["pretrain", "--tokenizer-on", "lhc"])
