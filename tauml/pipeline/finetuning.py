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
import re
import warnings
import zipfile
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tauml import pipeline
from tauml.cache import (
    CacheError,
    atomic_path,
    clear_entry,
    entry_problem,
    file_record,
    plain,
    read_json,
    write_json,
)
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
from tauml.evaluation.references import (
    metrics_from_predictions,
    prediction_arrays,
    reference_from_predictions,
)
from tauml.evaluation.tasks import TASK_INFO
from tauml.models.baselines import DeepSetBaseline, ParticleTransformerBaseline
from tauml.models.tau import build_tau_model, task_predictions
from tauml.training import common, distributed
from tauml.training.finetune import (
    MODEL_FILE,
    STATE_FILE,
    EpochCallback,
    TauInputs,
    evaluate_outputs,
    tau_inputs,
    train_tau_model,
)
from tauml.utils import die_with_parent, releases_memory

RESULT_FILE = "result.json"
PREDICTIONS_FILE = "predictions.npz"

__all__ = ["MODEL_FILE", "PREDICTIONS_FILE", "RESULT_FILE", "FinetuneResult", "build_model", "finetune",
           "finetune_many", "resolve", "same_training", "uses_lifetime"]


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
        """Read a stored result; :class:`~tauml.cache.CacheError` naming the file for anything unreadable (the
        predictions are read without unpickling anything)."""
        folder = Path(folder)
        data = read_json(folder / RESULT_FILE)
        path = folder / PREDICTIONS_FILE
        try:
            with np.load(path, allow_pickle=False) as f:
                predictions = {k: f[k] for k in f.files}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
            raise CacheError(f"{path} is unreadable ({type(err).__name__}: {err}) — delete the folder {folder} to "
                             "train this model again") from err
        try:
            return cls(config=from_dict(FinetuneConfig, data["config"]), history=data["history"],
                       best_epoch=data["best_epoch"], metrics=data["metrics"], reference=data["reference"],
                       predictions=predictions, n_parameters=data["n_parameters"],
                       n_trainable_parameters=data["n_trainable_parameters"], seconds=data["seconds"], folder=folder)
        except (KeyError, TypeError, ConfigError) as err:
            raise CacheError(f"{folder / RESULT_FILE} is not a tauml fine-tuning result ({type(err).__name__}: "
                             f"{err}) — delete the folder {folder} to train this model again") from err

    @property
    def headline(self) -> dict[str, float]:
        """The task's summary numbers (:data:`tauml.evaluation.tasks.TASK_INFO`): id mis-ID at 80 % and AUC;
        reg resolution, median and IQR; dm weighted AUC and accuracy."""
        return {k: self.metrics[k] for k in TASK_INFO[self.config.task].summary_metrics}


def inputs(preset: Preset, jets: JetArrays, strategy: str, name: str, lifetime: bool) -> TauInputs:
    """The model inputs of ``jets``: the preset tokenizer's tokens for the tau models, candidates for baselines."""
    tokens = pipeline.tokens(preset, jets, name) if strategy in STRATEGIES else None
    return tau_inputs(jets, tokens, lifetime, continuous=strategy in STRATEGIES and preset.gpt.inputs == "continuous")


def uses_lifetime(preset: Preset, strategy: str) -> bool:
    """Whether the model of ``strategy`` reads the candidates' lifetime (impact-parameter) features: a baseline
    whose settings say ``use_lifetime=True`` (``preset.part``, ``preset.deepset``); the tau models never do."""
    return (strategy == "part" and preset.part.use_lifetime) or (strategy == "deepset" and preset.deepset.use_lifetime)


def load_model_state(folder: str | Path) -> dict[str, torch.Tensor]:
    """The best weights a fine-tuning stored in ``folder`` (``model.pt``), read with ``weights_only=True``:
    a file that is missing, truncated or holds anything but tensors raises :class:`CacheError` naming it."""
    path = Path(folder) / MODEL_FILE
    if not path.is_file():
        raise CacheError(f"{path} does not exist — run the fine-tuning again (pipeline.finetune) to write it")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated, not a torch file, or pickled objects other than tensors
        raise CacheError(f"{path} is unreadable ({type(err).__name__}: {str(err)[:200]}) — delete the folder "
                         f"{path.parent} to train this model again") from err
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CacheError(f"{path} is not a state dict of tensors — delete the folder {path.parent} to train this "
                         "model again")
    return state


def check_device(device: str) -> None:
    """Raise :class:`ConfigError` unless ``device`` is ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps`` and
    is available here (checked before any folder is created or anything is trained)."""

    if not isinstance(device, str) or not re.fullmatch(r"auto|cpu|cuda(:\d+)?|mps", device):
        raise ConfigError(f"device={device!r} is not a device tauml knows — use auto, cpu, cuda, cuda:N or mps")
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"device={device!r} was asked for but CUDA is not available on this machine — use "
                              "cpu or auto")
        index = int(device.split(":")[1]) if ":" in device else 0
        if index >= torch.cuda.device_count():
            raise ConfigError(f"device={device!r}: this machine has {torch.cuda.device_count()} CUDA device(s) — "
                              f"use cuda:0..cuda:{torch.cuda.device_count() - 1}")
    if device == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise ConfigError("device='mps' was asked for but MPS is not available on this machine — use cpu or auto")


def check_config(preset: Preset, config: FinetuneConfig) -> FinetuneConfig:
    """Every check a fine-tuning's settings get before anything is built, with :class:`ConfigError` saying what
    to change (the panel shows it; the command line checks the same with its option names): the settings, an
    unfreeze epoch past the last epoch, the GPT blocks the backbone has, the device.  Returns the resolved config."""
    config.validate()
    if config.strategy == "fine_tuning" and config.unfreeze_epoch > config.epochs:
        raise ConfigError(f"unfreeze_epoch={config.unfreeze_epoch} is past the last epoch (epochs={config.epochs}): "
                          f"the backbone would never be unfrozen — choose 0..{config.epochs} or the fixed backbone")
    resolved = resolve(preset, config)
    check_device(config.device)
    return resolved


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
    check_device(config.device)
    folder = Path(folder) if folder is not None else pipeline.finetune_dir(preset, same_training(config))
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"folder={folder} is a file — give a folder for the fine-tuning's results")
    # two runs of one training wait for each other; a failed first run leaves no folder; under torchrun all ranks
    # train it (data parallel), rank 0 decides from the files and writes them
    with distributed.main_builds(folder):
        cached = _cached_result(preset, config, folder) if distributed.is_main() else None
        if distributed.broadcast(cached is not None):
            return cached if cached is not None else replace(FinetuneResult.from_folder(folder), config=config)
        return _train(preset, config, folder, progress, callback, max_epochs_this_call)


def _cached_result(preset: Preset, config: FinetuneConfig, folder: Path) -> FinetuneResult | None:
    """The stored result in ``folder`` when its files are intact and it was built from the tokenizer and backbone
    cached now; else None, after clearing the folder with one line saying why (it is trained again)."""
    if not (folder / RESULT_FILE).exists():
        return None
    problem = entry_problem(folder / RESULT_FILE, pipeline.built_from(preset, config.strategy))
    if problem is None:
        try:
            result = FinetuneResult.from_folder(folder)
        except CacheError as err:
            problem = str(err)
        else:
            result.config = config
            return result
    clear_entry(folder, problem)
    return None


@releases_memory
def _train(preset: Preset, config: FinetuneConfig, folder: Path, progress: bool, callback: EpochCallback | None,
           max_epochs_this_call: int | None) -> FinetuneResult:
    common.limit_threads()
    device = common.select_device(config.device)
    lifetime = uses_lifetime(preset, config.strategy)
    jets = pipeline.tau_jets(preset, config.task, "train", lifetime=lifetime)
    split = pipeline.train_val_split(jets, config.train_size, config.val_size)
    del jets  # (the training and validation jets are copies)
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

    predictions = _test_predictions(preset, config, trained.model, device, lifetime)
    result = FinetuneResult(
        config=config, history=trained.history, best_epoch=trained.best_epoch,
        metrics=plain(metrics_from_predictions(config.task, predictions)),
        reference=plain(reference_from_predictions(config.task, predictions)),
        predictions=predictions,
        n_parameters=sum(p.numel() for p in model.parameters()),
        n_trainable_parameters=_n_trainable(model, config),
        seconds=trained.seconds, folder=folder,
    )
    if not distributed.is_main():
        return result
    with atomic_path(folder / PREDICTIONS_FILE) as tmp, open(tmp, "wb") as handle:
        np.savez_compressed(handle, **result.predictions)
    # written last: the result vouches for its files and names the tokenizer and backbone it was built from
    write_json(folder / RESULT_FILE, {
        **result.to_dict(), "built_from": pipeline.built_from(preset, config.strategy),
        "files": {name: file_record(folder / name) for name in (PREDICTIONS_FILE, MODEL_FILE)
                  if (folder / name).is_file()}})
    (folder / STATE_FILE).unlink(missing_ok=True)
    return result


def _test_predictions(preset: Preset, config: FinetuneConfig, model: torch.nn.Module, device: torch.device,
                      lifetime: bool) -> dict[str, np.ndarray]:
    """The prediction arrays (:func:`tauml.evaluation.references.prediction_arrays`) of every test jet, evaluated
    chunk by chunk (:func:`tauml.pipeline.iter_tau_jets`): memory does not grow with the test files.  The demo's test
    sets are one chunk."""
    parts = []
    for i, chunk in enumerate(pipeline.iter_tau_jets(preset, config.task, "test", lifetime=lifetime)):
        name = f"{config.task}/test" if i == 0 else f"{config.task}/test/{i}"
        _, outputs = evaluate_outputs(model, inputs(preset, chunk, config.strategy, name, lifetime), config, device)
        parts.append(prediction_arrays(config.task, task_predictions(config.task, outputs), chunk))
    if not parts or not sum(len(p["is_tau"]) for p in parts):
        raise ConfigError(f"no {config.task} test jets pass the selection in the test files of preset {preset.name!r}")
    return {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}


def _worker_init() -> None:
    """Worker processes of :func:`finetune_many` use one thread each: for small models two processes with one
    thread get 1.6x the throughput of one process with two (measured on 2 cores)."""
    die_with_parent()
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
    pipeline.tokenizer(preset, progress=progress)  # build (or verify) once, before the workers start
    if any(configs[ix[0]].strategy in ("fixed_backbone", "fine_tuning") for ix in todo.values()):
        pipeline.backbone_checkpoint(preset, progress=progress)
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
    if config.strategy == "fine_tuning" and config.unfreeze_epoch > config.epochs:
        warnings.warn(f"unfreeze_epoch={config.unfreeze_epoch} is past the last epoch (epochs={config.epochs}): the "
                      "backbone is never unfrozen, so this trains the fixed backbone (stored as fixed_backbone)",
                      UserWarning, stacklevel=2)
    if config.strategy in STRATEGIES and config.n_gpt_blocks == 0:
        config = replace(config, n_gpt_blocks=preset.gpt.n_layer)
    if config.strategy in BASELINES:
        config = replace(config, n_gpt_blocks=0, unfreeze_epoch=0)
    elif config.strategy != "fine_tuning":
        config = replace(config, unfreeze_epoch=0)
    if config.n_gpt_blocks > preset.gpt.n_layer:
        raise ConfigError(f"n_gpt_blocks={config.n_gpt_blocks}, but the backbone of preset {preset.name!r} has "
                          f"{preset.gpt.n_layer} blocks — choose 1..{preset.gpt.n_layer} (0 = all)")
    return config


def same_training(config: FinetuneConfig) -> FinetuneConfig:
    """The configuration that trains exactly the same model: fine-tuning never unfrozen (unfreeze_epoch >= epochs)
    is the fixed backbone, as the paper notes; both then share one cached training."""
    if config.strategy == "fine_tuning" and config.unfreeze_epoch >= config.epochs:
        return replace(config, strategy="fixed_backbone", unfreeze_epoch=0)
    return config
