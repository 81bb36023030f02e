"""Training a tau model on one task with one strategy, and the supervised baselines, with their evaluation.

:func:`finetune` is the one entry point (the notebooks, ``tauml finetune`` and the scans call it):

1. the task's jets (``pipeline.tau_jets``): validation = the first ``val_size`` training-file jets,
   training = the next ``train_size``; test = the ``*_test`` files;
2. the model: for ``from_scratch``/``fixed_backbone``/``fine_tuning`` the frozen tokenizer's tokens feed a
   GPT backbone (pretrained, except from scratch) and a task head; ``part`` and ``deepset`` are the
   supervised baselines on the candidates themselves;
3. AdamW with a cosine schedule stepped per batch (to ``min_lr_fraction`` x lr, as the reference),
   :func:`tauml.models.tau.apply_strategy` at the start of every epoch, validation every epoch, the best
   epoch by validation loss;
4. the best model on the test jets: the task's metrics beside the no-learning reference.

The result is cached by configuration (``pipeline.finetune_dir``): calling again returns it at once, and
an interrupted training resumes after its last finished epoch with the same final numbers.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tauml.cache import read_json, write_json
from tauml.config import BASELINES, STRATEGIES, FinetuneConfig, Preset, from_dict, get_preset, to_dict
from tauml.data.features import JetArrays
from tauml.losses import task_loss
from tauml.metrics import confusion_matrix, counting_decay_modes, evaluate_task, reco_pt_reference
from tauml.training import common
from tauml.training.common import make_adamw

RESULT_FILE = "result.json"
PREDICTIONS_FILE = "predictions.npz"
MODEL_FILE = "model.pt"
STATE_FILE = "state.pt"

#: ``callback(epoch, record, history)`` after every epoch (e.g. a live loss curve); raise to stop.
EpochCallback = Callable[[int, dict[str, Any], dict[str, list]], None]


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
        """The task's headline numbers: id mis-ID at 80 % and AUC; reg resolution and median; dm AUC and accuracy."""
        keys = {"id": ("misid_at_80", "auc"), "reg": ("resolution", "median", "iqr"),
                "dm": ("weighted_auc", "accuracy")}[self.config.task]
        return {k: self.metrics[k] for k in keys}


# -----------------------------------------------------------------------------------------------------------
# inputs
# -----------------------------------------------------------------------------------------------------------


@dataclass
class _Inputs:
    """Everything a model needs for a set of jets, as CPU tensors (tokens for tau models, candidates for baselines)."""

    tensors: dict[str, torch.Tensor]
    targets: dict[str, torch.Tensor]

    def __len__(self) -> int:
        return len(self.targets["is_tau"])

    @property
    def lengths(self) -> np.ndarray:
        """Real positions per jet (tokens for tau models, constituents for baselines), for length bucketing."""
        mask = self.tensors["token_mask"] if "token_mask" in self.tensors else self.tensors["mask"]
        return mask.sum(1).numpy()

    def batch(self, index: np.ndarray, device: torch.device) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        idx = torch.as_tensor(index)
        inputs = {k: v[idx] for k, v in self.tensors.items()}
        if "token_mask" in inputs:  # trim to the longest real sequence of the batch
            width = int(inputs["token_mask"].sum(1).max())
            inputs["tokens"], inputs["token_mask"] = inputs["tokens"][:, :width], inputs["token_mask"][:, :width]
        elif "mask" in inputs:
            width = max(1, int(inputs["mask"].sum(1).max()))
            inputs = {k: (v[:, :width] if v.dim() >= 2 else v) for k, v in inputs.items()}
        return ({k: v.to(device) for k, v in inputs.items()},
                {k: v[idx].to(device) for k, v in self.targets.items()})


def _inputs(preset: Preset, jets: JetArrays, strategy: str, name: str, lifetime: bool) -> _Inputs:
    from tauml import pipeline

    targets = {"is_tau": torch.as_tensor(jets.is_tau, dtype=torch.long),
               "log_pt_ratio": torch.as_tensor(jets.log_pt_ratio, dtype=torch.float32),
               "dm": torch.as_tensor(jets.dm, dtype=torch.long)}
    if strategy in STRATEGIES:
        tokens, token_mask = pipeline.tokens(preset, jets, name)
        tensors = {"tokens": torch.as_tensor(tokens), "token_mask": torch.as_tensor(token_mask)}
    else:
        tensors = {"features": torch.as_tensor(jets.features), "mask": torch.as_tensor(jets.mask),
                   "p4": torch.as_tensor(jets.p4)}
        if lifetime:
            tensors["lifetime"] = torch.as_tensor(jets.lifetime)
    return _Inputs(tensors, targets)


def _forward(model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    if "tokens" in inputs:
        return model(inputs["tokens"], inputs["token_mask"])
    return model(inputs["features"], inputs["mask"], inputs["p4"], inputs.get("lifetime"))


# -----------------------------------------------------------------------------------------------------------
# models
# -----------------------------------------------------------------------------------------------------------


def build_model(preset: Preset, config: FinetuneConfig) -> torch.nn.Module:
    """The model of ``config.strategy`` for ``config.task``, initialised from ``config.seed``."""
    from tauml import pipeline

    if config.strategy == "part":
        from tauml.models.baselines import ParticleTransformerBaseline

        return ParticleTransformerBaseline(config.task, preset.part, seed=config.seed)
    if config.strategy == "deepset":
        from tauml.models.baselines import DeepSetBaseline

        return DeepSetBaseline(config.task, preset.deepset, seed=config.seed)
    from tauml.models.tau import build_tau_model

    pretrained = None if config.strategy == "from_scratch" else pipeline.backbone_checkpoint(preset)
    return build_tau_model(config.task, config.strategy, pipeline.gpt_config(preset), preset.head,
                           n_gpt_blocks=config.n_gpt_blocks, pretrained=pretrained, seed=config.seed)


def _set_epoch(model: torch.nn.Module, config: FinetuneConfig, epoch: int) -> bool:
    """Apply the strategy for ``epoch``; return whether the backbone (if any) trains."""
    if config.strategy in BASELINES:
        return True
    from tauml.models.tau import apply_strategy

    return apply_strategy(model, config.strategy, epoch, config.unfreeze_epoch)


# -----------------------------------------------------------------------------------------------------------
# training
# -----------------------------------------------------------------------------------------------------------


@torch.no_grad()
def _evaluate(model: torch.nn.Module, data: _Inputs, config: FinetuneConfig, device: torch.device,
              batch_size: int = 1024) -> tuple[float, torch.Tensor]:
    """Mean loss over ``data`` (weighted by batch size) and the raw outputs, in eval mode."""
    model.eval()
    order = np.argsort(data.lengths, kind="stable")  # batches of similar length: little padding
    outputs = torch.empty(0)
    total, count = 0.0, 0
    for index in common.batches(len(data), batch_size, order):
        inputs, targets = data.batch(index, device)
        out = _forward(model, inputs).float().cpu()
        total += float(task_loss(config.task, out, {k: v.cpu() for k, v in targets.items()}, config)) * len(index)
        count += len(index)
        if outputs.numel() == 0:
            outputs = torch.empty((len(data), *out.shape[1:]))
        outputs[torch.as_tensor(index)] = out
    return total / max(count, 1), outputs


def _predictions(task: str, outputs: torch.Tensor) -> np.ndarray:
    from tauml.models.tau import task_predictions

    return task_predictions(task, outputs)


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
    from tauml import pipeline

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
    train = _inputs(preset, split.train, config.strategy, f"{name}/{config.val_size}+{config.train_size}", lifetime)
    val = _inputs(preset, split.val, config.strategy, f"{name}/val{config.val_size}", lifetime)

    common.seed_everything(config.seed)
    model = build_model(preset, config).to(device)
    optimizer = make_adamw(_optimised_parameters(model), lr=config.lr, weight_decay=config.weight_decay)
    steps_per_epoch = math.ceil(len(train) / config.batch_size)
    scheduler = common.make_cosine_scheduler(optimizer, config.epochs * steps_per_epoch, 0, config.min_lr_fraction)
    history: dict[str, list] = {"train_loss": [], "val_loss": [], "lr": [], "backbone_trainable": [], "seconds": []}
    best = {"epoch": -1, "val_loss": math.inf, "state": None}
    first_epoch = 0
    state_path = folder / STATE_FILE
    if state_path.exists():
        state = common.load_training_state(state_path)
        if state.get("config") == to_dict(config):
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            common.set_rng_state(state["rng"])
            history, best, first_epoch = state["history"], state["best"], state["epoch"]

    started = time.perf_counter() - sum(history["seconds"])
    bar = common.progress(range(first_epoch, config.epochs), desc=f"{config.task} {config.strategy}",
                          total=config.epochs, initial=first_epoch, disable=not progress or None, unit="epoch")
    stop = config.epochs if max_epochs_this_call is None else min(config.epochs, first_epoch + max_epochs_this_call)
    for epoch in bar:
        if epoch >= stop:
            break
        t0 = time.perf_counter()
        trainable = _set_epoch(model, config, epoch)
        model.train()
        total, count = 0.0, 0
        for index in common.bucketed_batches(train.lengths, config.batch_size, config.seed, epoch):
            inputs, targets = train.batch(index, device)
            loss = task_loss(config.task, _forward(model, inputs), targets, config)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            total += float(loss.detach()) * len(index)
            count += len(index)
        val_loss, _ = _evaluate(model, val, config, device)
        record = {"epoch": epoch, "train_loss": total / count, "val_loss": val_loss,
                  "lr": scheduler.get_last_lr()[0], "backbone_trainable": trainable,
                  "seconds": time.perf_counter() - t0}
        for key in history:
            history[key].append(record[key])
        if val_loss < best["val_loss"]:
            best = {"epoch": epoch, "val_loss": val_loss,
                    "state": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}}
        common.save_training_state(state_path, config=to_dict(config), epoch=epoch + 1, model=model.state_dict(),
                                   optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(),
                                   rng=common.rng_state(), history=history, best=best)
        bar.set_postfix(train=f"{record['train_loss']:.4f}", val=f"{val_loss:.4f}", best=best["epoch"])
        if callback is not None:
            callback(epoch, record, history)
    bar.close()
    if len(history["val_loss"]) < config.epochs:
        return FinetuneResult(config=config, history=history, best_epoch=best["epoch"], metrics={}, reference={},
                              folder=folder)

    model.load_state_dict(best["state"])
    torch.save(best["state"], folder / MODEL_FILE)
    test_inputs = _inputs(preset, test, config.strategy, f"{config.task}/test", lifetime)
    _, outputs = _evaluate(model, test_inputs, config, device)
    predictions = _predictions(config.task, outputs)
    metrics = _plain(evaluate_task(config.task, predictions, test))
    result = FinetuneResult(
        config=config, history=history, best_epoch=int(best["epoch"]), metrics=metrics,
        reference=_plain(no_learning_reference(config.task, test)),
        predictions=prediction_arrays(config.task, predictions, test),
        n_parameters=sum(p.numel() for p in model.parameters()),
        n_trainable_parameters=_n_trainable(model, config),
        seconds=time.perf_counter() - started, folder=folder,
    )
    np.savez_compressed(folder / PREDICTIONS_FILE, **result.predictions)
    write_json(folder / RESULT_FILE, result.to_dict())
    state_path.unlink(missing_ok=True)
    return result


def _worker_init() -> None:
    """Worker processes of :func:`finetune_many` use one thread each: for small models two processes with one
    thread get 1.6x the throughput of one process with two (measured on 2 cores)."""
    import os

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
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    from tauml import pipeline

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


def _optimised_parameters(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    """What the optimiser holds: a tau model's head and the backbone parts it uses (frozen ones included: a
    frozen parameter has no gradient and is skipped by AdamW until the strategy unfreezes it); all of a
    baseline."""
    if hasattr(model, "backbone_parameters"):
        return [*model.head_parameters(), *model.backbone_parameters()]
    return list(model.parameters())


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
        from tauml.config import ConfigError

        raise ConfigError(f"n_gpt_blocks={config.n_gpt_blocks}, but the backbone of preset {preset.name!r} has "
                          f"{preset.gpt.n_layer} blocks")
    return config


def same_training(config: FinetuneConfig) -> FinetuneConfig:
    """The configuration that trains exactly the same model: fine-tuning never unfrozen (unfreeze_epoch >= epochs)
    is the fixed backbone, as the paper notes; both then share one cached training."""
    if config.strategy == "fine_tuning" and config.unfreeze_epoch >= config.epochs:
        return replace(config, strategy="fixed_backbone", unfreeze_epoch=0)
    return config


def no_learning_reference(task: str, jets: JetArrays) -> dict[str, Any]:
    """What needs no training: the reco-jet pT as the visible-pT estimate, and counting candidates for the decay
    mode.  (Tau identification has no such reference here.)"""
    taus = jets.is_tau == 1
    if task == "reg":
        return reco_pt_reference(jets.jet_pt[taus], jets.gen_vis_pt[taus])
    if task == "dm":
        counted = counting_decay_modes(jets.features[taus], jets.mask[taus])
        true = jets.dm[taus]
        return {"accuracy": float(np.mean(counted == true)), "confusion": confusion_matrix(true, counted, 6)}
    return {}


def prediction_arrays(task: str, predictions: np.ndarray, jets: JetArrays) -> dict[str, np.ndarray]:
    """The arrays the plots need, for the test jets."""
    out = {"is_tau": jets.is_tau, "jet_pt": jets.jet_pt}
    taus = jets.is_tau == 1
    if task == "id":
        out["score"] = predictions
    elif task == "reg":
        out["pred_pt"] = np.exp(predictions[taus]) * jets.jet_pt[taus]
        out["vis_pt"] = jets.gen_vis_pt[taus]
        out["reco_pt"] = jets.jet_pt[taus]
    else:
        out["probs"] = predictions[taus]
        out["dm"] = jets.dm[taus]
        out["counting"] = counting_decay_modes(jets.features[taus], jets.mask[taus])
    return {k: np.asarray(v) for k, v in out.items()}


def _plain(value: Any) -> Any:
    """JSON-ready: numpy scalars and arrays to Python numbers and lists."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value

