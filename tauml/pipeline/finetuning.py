"""The cached fine-tuning step: a preset and a FinetuneConfig in, a trained and evaluated tau model out.

:func:`finetune` is the one entry point (the notebooks, ``tauml finetune`` and the scans call it):

1. the task's jets (:func:`tauml.pipeline.tau_jets`): validation = the first ``val_size`` training-file jets,
   training = the next ``train_size``; test = the ``*_test`` files;
2. the model: for ``from_scratch``/``fixed_backbone``/``fine_tuning`` the frozen tokenizer's tokens feed a
   GPT backbone (pretrained, except from scratch) and a task head; ``part`` and ``deepset`` are the
   supervised baselines on the candidates themselves;
3. the training (:func:`tauml.training.finetune.train_tau_model`);
4. the best model on the test jets: the task's metrics beside the no-learning reference.

The result is cached by configuration (:func:`tauml.pipeline.finetune_dir`): calling again returns it at once,
and an interrupted training resumes after its last finished epoch with the same final numbers.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tauml import pipeline
from tauml.cache import plain, read_json, write_json
from tauml.config import (
    BASELINES,
    STRATEGIES,
    ConfigError,
    FinetuneConfig,
    Preset,
    from_dict,
    get_preset,
    to_dict,
)
from tauml.data.features import JetArrays
from tauml.evaluation.metrics import evaluate_task
from tauml.evaluation.references import no_learning_reference, prediction_arrays
from tauml.evaluation.tasks import TASK_INFO
from tauml.models.baselines import DeepSetBaseline, ParticleTransformerBaseline
from tauml.models.tau import build_tau_model, task_predictions
from tauml.training import common
from tauml.training.finetune import (
    MODEL_FILE,
    STATE_FILE,
    EpochCallback,
    TauInputs,
    evaluate_outputs,
    tau_inputs,
    train_tau_model,
)

RESULT_FILE = "result.json"
PREDICTIONS_FILE = "predictions.npz"

__all__ = ["MODEL_FILE", "PREDICTIONS_FILE", "RESULT_FILE", "FinetuneResult", "build_model", "finetune",
           "finetune_many", "resolve", "same_training"]


@dataclass
class FinetuneResult:
    """What one training gives: its configuration, per-epoch history, best epoch, test metrics and predictions."""

    config: FinetuneConfig
    history: dict[str, list]
    best_epoch: int
    metrics: dict[str, Any]
    reference: dict[str, Any]
    predictions: dict[str, np.ndarray] = field(default_factory=dict)
    n_parameters: int = 0
    n_trainable_parameters: int = 0
    seconds: float = 0.0
    folder: Path | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"config": to_dict(self.config), "history": self.history, "best_epoch": self.best_epoch,
                "metrics": self.metrics, "reference": self.reference, "n_parameters": self.n_parameters,
                "n_trainable_parameters": self.n_trainable_parameters, "seconds": self.seconds}

    @classmethod
    def from_folder(cls, folder: Path) -> FinetuneResult:
        data = read_json(folder / RESULT_FILE)
        with np.load(folder / PREDICTIONS_FILE) as f:
            predictions = {k: f[k] for k in f.files}
        return cls(config=from_dict(FinetuneConfig, data["config"]), history=data["history"],
                   best_epoch=data["best_epoch"], metrics=data["metrics"], reference=data["reference"],
                   predictions=predictions, n_parameters=data["n_parameters"],
                   n_trainable_parameters=data["n_trainable_parameters"], seconds=data["seconds"], folder=folder)

    @property
    def headline(self) -> dict[str, float]:
        """The task's summary numbers (:data:`tauml.evaluation.tasks.TASK_INFO`): id mis-ID at 80 % and AUC;
        reg resolution, median and IQR; dm weighted AUC and accuracy."""
        return {k: self.metrics[k] for k in TASK_INFO[self.config.task].summary_metrics}


def inputs(preset: Preset, jets: JetArrays, strategy: str, name: str, lifetime: bool) -> TauInputs:
    """The model inputs of ``jets``: the preset tokenizer's tokens for the tau models, candidates for baselines."""
    tokens = pipeline.tokens(preset, jets, name) if strategy in STRATEGIES else None
    return tau_inputs(jets, tokens, lifetime)


def build_model(preset: Preset, config: FinetuneConfig) -> torch.nn.Module:
    """The model of ``config.strategy`` for ``config.task``, initialised from ``config.seed`` (pretraining the
    preset's backbone first when it is not cached)."""
    if config.strategy == "part":
        return ParticleTransformerBaseline(config.task, preset.part, seed=config.seed)
    if config.strategy == "deepset":
        return DeepSetBaseline(config.task, preset.deepset, seed=config.seed)
    pretrained = None if config.strategy == "from_scratch" else pipeline.backbone_checkpoint(preset)
    return build_tau_model(config.task, config.strategy, pipeline.gpt_config(preset), preset.head,
                           n_gpt_blocks=config.n_gpt_blocks, pretrained=pretrained, seed=config.seed)


def finetune(
    preset: str | Preset,
    config: FinetuneConfig,
    progress: bool = True,
    callback: EpochCallback | None = None,
    folder: str | Path | None = None,
    max_epochs_this_call: int | None = None,
) -> FinetuneResult:
    """Train (or load from the cache) the model of ``config`` and evaluate it on the test jets.

    ``folder`` overrides the cache folder.  ``max_epochs_this_call`` stops after that many epochs (call again
    to continue); ``callback`` is called after every epoch.
    """
    preset = get_preset(preset)
    config = resolve(preset, config)
    folder = Path(folder) if folder is not None else pipeline.finetune_dir(preset, same_training(config))
    folder.mkdir(parents=True, exist_ok=True)
    if (folder / RESULT_FILE).exists():
        result = FinetuneResult.from_folder(folder)
        result.config = config
        return result

    common.limit_threads()
    device = common.select_device(config.device)
    lifetime = False
    jets = pipeline.tau_jets(preset, config.task, "train", lifetime=lifetime)
    split = pipeline.train_val_split(jets, config.train_size, config.val_size)
    test = pipeline.tau_jets(preset, config.task, "test", lifetime=lifetime)
    name = f"{config.task}/train"
    train = inputs(preset, split.train, config.strategy, f"{name}/{config.val_size}+{config.train_size}", lifetime)
    val = inputs(preset, split.val, config.strategy, f"{name}/val{config.val_size}", lifetime)

    common.seed_everything(config.seed)
    model = build_model(preset, config).to(device)
    trained = train_tau_model(model, train, val, config, folder, device, progress=progress, callback=callback,
                              max_epochs_this_call=max_epochs_this_call)
    if not trained.finished:
        return FinetuneResult(config=config, history=trained.history, best_epoch=trained.best_epoch, metrics={},
                              reference={}, folder=folder)

    test_inputs = inputs(preset, test, config.strategy, f"{config.task}/test", lifetime)
    _, outputs = evaluate_outputs(trained.model, test_inputs, config, device)
    predictions = task_predictions(config.task, outputs)
    result = FinetuneResult(
        config=config, history=trained.history, best_epoch=trained.best_epoch,
        metrics=plain(evaluate_task(config.task, predictions, test)),
        reference=plain(no_learning_reference(config.task, test)),
        predictions=prediction_arrays(config.task, predictions, test),
        n_parameters=sum(p.numel() for p in model.parameters()),
        n_trainable_parameters=_n_trainable(model, config),
        seconds=trained.seconds, folder=folder,
    )
    np.savez_compressed(folder / PREDICTIONS_FILE, **result.predictions)
    write_json(folder / RESULT_FILE, result.to_dict())
    (folder / STATE_FILE).unlink(missing_ok=True)
    return result


def _worker_init() -> None:
    """Worker processes of :func:`finetune_many` use one thread each: for small models two processes with one
    thread get 1.6x the throughput of one process with two (measured on 2 cores)."""
    torch.set_num_threads(1)
    os.environ["TAUML_PROGRESS"] = "0"


def _finetune_job(preset: Preset, config: FinetuneConfig) -> FinetuneResult:
    return finetune(preset, config, progress=False)


def finetune_many(preset: str | Preset, configs: list[FinetuneConfig], workers: int | None = None,
                  progress: bool = True, on_result: Callable[[FinetuneConfig, FinetuneResult], Any] | None = None,
                  ) -> list[FinetuneResult]:
    """:func:`finetune` for many configurations, in parallel worker processes, each training run once.

    Cached results are read at once; the trainings that are missing run in ``workers`` processes (default:
    the usable cores, as far as the memory allows, :func:`tauml.utils.parallel_workers`), after the
    tokenizer and the backbone have been built here.  ``on_result(config,
    result)`` is called as each configuration is done (e.g. to store a scan point).  Results come back in the
    order of ``configs``.
    """
    preset = get_preset(preset)
    configs = [resolve(preset, c) for c in configs]
    folders = [pipeline.finetune_dir(preset, same_training(c)) for c in configs]
    results: list[FinetuneResult | None] = [None] * len(configs)
    todo: dict[Path, list[int]] = {}
    for i, (config, folder) in enumerate(zip(configs, folders)):
        if (folder / RESULT_FILE).exists():
            results[i] = finetune(preset, config, progress=False)
            if on_result is not None:
                on_result(config, results[i])
        else:
            todo.setdefault(folder, []).append(i)
    if not todo:
        return results
    if any(configs[ix[0]].strategy in ("fixed_backbone", "fine_tuning") for ix in todo.values()):
        pipeline.backbone_checkpoint(preset, progress=progress)  # build once, before the workers start
    else:
        pipeline.tokenizer(preset, progress=progress)
    workers = common.parallel_workers(len(todo), workers)
    bar = common.progress(total=len(todo), desc="trainings", unit="model", disable=not progress or None, leave=True)

    def finished(indices: list[int], result: FinetuneResult) -> None:
        for i in indices:
            results[i] = replace_config(result, configs[i])
            if on_result is not None:
                on_result(configs[i], results[i])
        bar.update()

    try:
        if workers <= 1 or len(todo) == 1:
            for indices in todo.values():
                bar.set_postfix_str(f"{configs[indices[0]].task} {configs[indices[0]].strategy}")
                finished(indices, finetune(preset, configs[indices[0]], progress=False))
        else:
            context = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=_worker_init) as pool:
                futures = {pool.submit(_finetune_job, preset, configs[ix[0]]): ix for ix in todo.values()}
                for future in as_completed(futures):
                    finished(futures[future], future.result())
    finally:
        bar.close()
    return results


def replace_config(result: FinetuneResult, config: FinetuneConfig) -> FinetuneResult:
    """The same result under another configuration that trains the same model (see :func:`same_training`)."""
    return replace(result, config=config)


def _n_trainable(model: torch.nn.Module, config: FinetuneConfig) -> int:
    if config.strategy == "fixed_backbone":
        return sum(p.numel() for p in model.head_parameters())
    if config.strategy in STRATEGIES:
        return sum(p.numel() for p in model.head_parameters()) + sum(p.numel() for p in model.backbone_parameters())
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def resolve(preset: Preset, config: FinetuneConfig) -> FinetuneConfig:
    """``config`` with what ``0`` means filled in (all GPT blocks) and checked against the preset."""
    config.validate()
    if config.strategy in STRATEGIES and config.n_gpt_blocks == 0:
        config = replace(config, n_gpt_blocks=preset.gpt.n_layer)
    if config.strategy in BASELINES:
        config = replace(config, n_gpt_blocks=0, unfreeze_epoch=0)
    elif config.strategy != "fine_tuning":
        config = replace(config, unfreeze_epoch=0)
    if config.n_gpt_blocks > preset.gpt.n_layer:
        raise ConfigError(f"n_gpt_blocks={config.n_gpt_blocks}, but the backbone of preset {preset.name!r} has "
                          f"{preset.gpt.n_layer} blocks")
    return config


def same_training(config: FinetuneConfig) -> FinetuneConfig:
    """The configuration that trains exactly the same model: fine-tuning never unfrozen (unfreeze_epoch >= epochs)
    is the fixed backbone, as the paper notes; both then share one cached training."""
    if config.strategy == "fine_tuning" and config.unfreeze_epoch >= config.epochs:
        return replace(config, strategy="fixed_backbone", unfreeze_epoch=0)
    return config
