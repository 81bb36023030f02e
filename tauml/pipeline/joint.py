"""The joint analysis's cached steps (notebook 06, docs/joint.md): event samples -> splits -> pretext jet models ->
event classifiers, each training a point of the scan store (cached, resumable, widenable).

    from tauml.pipeline import joint
    events = joint.case_events("demo", "hh4b")                     # {"train", "val", "test"}: EventArrays
    record = joint.run_points("demo", [JointConfig(case="hh4b")])[0]  # one training, stored in the scan store

* **data**: the preset's event samples (:data:`tauml.config.JOINT_GENERATION`), generated on first use
  (``tauml generate --joint``); split 50/10/40 by event number (the paper: 45/5/50); training sets are nested
  prefixes of one shuffled list, so larger sizes add events.
* **pretext jet models**: ``zh_tautau``: notebook 03's tau identification (the GPT fine-tuning and the
  ParticleTransformer baseline, from the fine-tuning cache); ``hh4b``: an H -> b bbar tagger trained here on the
  jets of the training and validation events (the GPT one starts from the pretrained backbone), cached.
* **points**: :class:`~tauml.config.JointConfig`; :func:`run_points` trains the missing ones into
  :func:`joint_store` and saves each point's test scores beside its record.
"""

from __future__ import annotations

import copy
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import replace
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tauml import pipeline
from tauml.cache import DATA_FORMAT_VERSION, atomic_path, building, cache_path, read_entry, write_entry
from tauml.config import JOINT_GENERATION, GenerationConfig, JointConfig, Preset, config_hash, get_preset
from tauml.data.events import CASES, HLF_NAMES, EventArrays, case_samples, read_sample, split_of
from tauml.data.generate import GeneratedData, generate_cached
from tauml.data.schema import DataError
from tauml.evaluation.joint import event_metrics, scalar_drift
from tauml.models.baselines import ParticleTransformerBaseline
from tauml.models.joint import EventModel, JetEncoder
from tauml.models.tau import build_tau_model
from tauml.pipeline.finetuning import build_model, finetune, load_model_state
from tauml.pipeline.scan import ScanStore
from tauml.training import common
from tauml.training.joint import (
    EventTensors,
    encode_jets,
    predict_events,
    train_event_model,
    train_jet_tagger,
)
from tauml.utils import die_with_parent, releases_memory
from tauml.utils import progress as progress_bar

#: The split fractions by event (the rest trains).
TEST_FRACTION = 0.4
VAL_FRACTION = 0.1
#: The pretext tau identification of ``zh_tautau`` is notebook 03's (its NOTEBOOK_* settings, seed 1) for the demo
#: and paper presets; other presets use their own ``finetune`` settings.
TAU_PRETEXT = {"demo": {"train_size": 2000, "epochs": 20, "unfreeze_epoch": 10},
               "paper": {"train_size": 2000, "epochs": 20, "unfreeze_epoch": 10}}
#: The H -> b bbar pretext tagger of ``hh4b``: epochs, learning rate, batch size (the paper: 10 epochs, bs 512).
HBB_PRETEXT = {"epochs": 6, "lr": 5e-4, "batch_size": 128, "seed": 1}
SCORES_SUFFIX = ".scores.npy"
JOINT_FORMAT = "joint-v1"


def _preset(preset: str | Preset) -> Preset:
    return get_preset(preset)


def generation_config(preset: str | Preset):
    """The event samples of ``preset`` (the demo's for any preset not listed)."""
    return JOINT_GENERATION.get(_preset(preset).name, JOINT_GENERATION["demo"])


def joint_dataset(preset: str | Preset = "demo", progress: bool = True) -> GeneratedData:
    """The joint analysis's generated event samples (generated on first use for the demo; the paper preset only
    uses them when ``tauml generate --preset paper --joint`` made them)."""
    p = _preset(preset)
    config = generation_config(p)
    if p.name == "paper":
        folder = cache_path("data", config_hash(config, DATA_FORMAT_VERSION), create=False)
        if not (folder / "manifest.json").is_file():
            raise DataError("the paper preset's joint-analysis samples are not generated: run `tauml generate "
                            "--preset paper --joint` first (hours on many cores), or use the demo preset")
    return generate_cached(config, progress=progress)


@lru_cache(maxsize=4)
def _case_events(data_root: str, case: str, max_constituents_pp: int) -> dict[str, EventArrays]:
    data = GeneratedData(Path(data_root), _manifest(Path(data_root)))
    parts: dict[str, list[EventArrays]] = {"train": [], "val": [], "test": []}
    for sample in case_samples(case):
        info = data.manifest["samples"].get(sample)
        if info is None:
            raise DataError(f"sample {sample!r} of the use case {case!r} is not in {data_root}")
        events = read_sample(data.events(sample), case, sample, info["sigma_fb"], info["events"],
                             max_constituents=max_constituents_pp if case == "hh4b" else None)
        split = split_of(sample, events.event_number, TEST_FRACTION, VAL_FRACTION)
        for code, name in enumerate(("train", "val", "test")):
            part = events.subset(np.flatnonzero(split == code))
            # the selected cross section spread over this split's events
            part.weight = np.full(len(part), info["sigma_fb"] * len(events) / info["events"] / max(len(part), 1))
            parts[name].append(part)
    out = {}
    for name, items in parts.items():
        merged = EventArrays.concatenate(items)
        order = np.random.default_rng(20240125).permutation(len(merged))  # interleaved: every prefix is mixed
        out[name] = merged.subset(order)
    return out


def _manifest(root: Path) -> dict:
    from tauml.cache import read_json

    return read_json(root / "manifest.json")


def case_events(preset: str | Preset, case: str, max_constituents_pp: int = JointConfig.max_constituents_pp,
                progress: bool = True) -> dict[str, EventArrays]:
    """The events of ``case`` split into ``train``, ``val`` and ``test`` (shuffled once, fixed)."""
    if case not in CASES:
        raise ValueError(f"case={case!r}; choose from {', '.join(CASES)}")
    return _case_events(str(joint_dataset(preset, progress).root), case, max_constituents_pp)


def _prefix(events: EventArrays, n: int, what: str) -> EventArrays:
    if n > len(events):
        raise DataError(f"asked for {n} {what} events but the split holds {len(events)}: generate more events "
                        "(a larger JOINT_GENERATION) or lower train_size/val_size")
    return events.subset(np.arange(n))


# -----------------------------------------------------------------------------------------------------------
# Jet-model inputs and the pretext jet models
# -----------------------------------------------------------------------------------------------------------


def jet_inputs(preset: Preset, events: EventArrays, jet_model: str, name: str) -> dict[str, torch.Tensor]:
    """The jet model's inputs for every jet: the preset tokenizer's tokens (gpt) or the candidates (part)."""
    jets = events.jets
    if jet_model == "gpt":
        tokens, mask = pipeline.tokens(preset, jets, name)
        return {"tokens": torch.as_tensor(tokens, dtype=torch.long), "token_mask": torch.as_tensor(mask, dtype=torch.bool)}
    return {"features": torch.as_tensor(jets.features, dtype=torch.float32),
            "mask": torch.as_tensor(jets.mask, dtype=torch.bool),
            "p4": torch.as_tensor(jets.p4, dtype=torch.float32)}


def event_tensors(preset: Preset, events: EventArrays, jet_model: str, name: str) -> EventTensors:
    return EventTensors(jet_inputs=jet_inputs(preset, events, jet_model, name), jet_event=events.jet_event,
                        hlf=torch.as_tensor(events.hlf), labels=torch.as_tensor(events.label, dtype=torch.float32),
                        jet_labels=torch.as_tensor(events.jet_label))


def _tau_pretext_config(preset: Preset, jet_model: str):
    strategy = "fine_tuning" if jet_model == "gpt" else "part"
    return replace(preset.finetune, task="id", strategy=strategy, seed=1, **TAU_PRETEXT.get(preset.name, {}))


def _fresh_model(preset: Preset, jet_model: str, seed: int, start: str):
    """A jet model: ``start`` = "random" or "backbone" (the pretrained GPT backbone with a fresh head)."""
    if jet_model == "part":
        return ParticleTransformerBaseline("id", preset.part, seed=seed)
    if start == "random":
        return build_tau_model("id", "from_scratch", pipeline.gpt_config(preset), preset.head, seed=seed)
    model = build_tau_model("id", "fine_tuning", pipeline.gpt_config(preset), preset.head,
                            pretrained=pipeline.backbone_checkpoint(preset), seed=seed)
    model.set_backbone_trainable(True)
    return model


def pretext_dir(preset: str | Preset, case: str, jet_model: str) -> Path:
    p = _preset(preset)
    key = config_hash(pipeline.model_key(p), generation_config(p), DATA_FORMAT_VERSION, case, jet_model, HBB_PRETEXT,
                      JointConfig.max_constituents_pp, JOINT_FORMAT)
    return cache_path("joint-pretext", key, create=False)


_PRETEXT: dict[tuple[str, str, str], JetEncoder] = {}


def pretext_encoder(preset: str | Preset, case: str, jet_model: str, progress: bool = True) -> JetEncoder:
    """The pretext jet model of ``case`` (a fresh copy each call; see the module docstring)."""
    p = _preset(preset)
    key = (pipeline.model_key(p), case, jet_model)
    if key not in _PRETEXT:
        if case == "zh_tautau":
            config = _tau_pretext_config(p, jet_model)
            result = finetune(p, config, progress=progress)
            model = build_model(p, result.config)
            model.load_state_dict(load_model_state(result.folder))
            encoder = JetEncoder(model)
        else:
            encoder = _hbb_pretext(p, jet_model, progress)
        encoder.eval()
        _PRETEXT[key] = encoder
    return copy.deepcopy(_PRETEXT[key])


def _hbb_pretext(p: Preset, jet_model: str, progress: bool) -> JetEncoder:
    model_file = "model.pt"
    with building(pretext_dir(p, "hh4b", jet_model)) as folder:
        encoder = JetEncoder(_fresh_model(p, jet_model, HBB_PRETEXT["seed"], "backbone"))
        if read_entry(folder / "entry.json") is not None:
            encoder.load_state_dict(torch.load(folder / model_file, map_location="cpu", weights_only=True))
            return encoder
        events = case_events(p, "hh4b")
        train = event_tensors(p, events["train"], jet_model, "joint/hh4b/train")
        val = event_tensors(p, events["val"], jet_model, "joint/hh4b/val")
        device = common.select_device("auto")
        history = train_jet_tagger(encoder, train.jet_inputs, train.jet_labels, val.jet_inputs, val.jet_labels,
                                   HBB_PRETEXT["epochs"], HBB_PRETEXT["lr"], HBB_PRETEXT["batch_size"],
                                   HBB_PRETEXT["seed"], device, progress=progress)
        encoder.cpu()
        with atomic_path(folder / model_file) as tmp:
            torch.save(encoder.state_dict(), tmp)
        write_entry(folder / "entry.json", [model_file], history=history, settings=HBB_PRETEXT)
    return encoder


def pretext_event_scores(preset: str | Preset, case: str, jet_model: str) -> np.ndarray:
    """The no-learning event score of the test events: the sum over an event's jets of the pretext tagger's
    probability (the expected number of tagged jets); nothing is trained at the event level."""
    p = _preset(preset)
    test = case_events(p, case)["test"]
    _, s = encode_jets(pretext_encoder(p, case, jet_model, progress=False),
                       jet_inputs(p, test, jet_model, f"joint/{case}/test"), torch.device("cpu"))
    return np.bincount(test.jet_event, weights=torch.sigmoid(s).numpy(), minlength=len(test))


_REFERENCES: dict[tuple[str, str, str, str], dict[str, Any]] = {}


def pretext_reference(preset: str | Preset, case: str, jet_model: str) -> dict[str, Any]:
    """The pretext tagger on the test events' jets: per-jet AUC and rejection at 90 % efficiency."""
    p = _preset(preset)
    key = (pipeline.model_key(p), case, jet_model, str(joint_dataset(p).root))
    if key not in _REFERENCES:
        test = case_events(p, case)["test"]
        _, s = encode_jets(pretext_encoder(p, case, jet_model, progress=False),
                           jet_inputs(p, test, jet_model, f"joint/{case}/test"), torch.device("cpu"))
        _REFERENCES[key] = scalar_drift(s.numpy(), test.jet_label)
    return dict(_REFERENCES[key])


# -----------------------------------------------------------------------------------------------------------
# One point and the store
# -----------------------------------------------------------------------------------------------------------


def starting_encoder(preset: Preset, config: JointConfig, progress: bool = True) -> JetEncoder:
    """The jet model a training of ``config`` starts from (the pretext tagger, random, or the backbone)."""
    if config.strategy in ("frozen", "finetuned"):
        return pretext_encoder(preset, config.case, config.jet_model, progress)
    start = "random" if config.strategy == "from_scratch" else "backbone"
    return JetEncoder(_fresh_model(preset, config.jet_model, config.seed + 1000, start))


def train_point(preset: str | Preset, config: JointConfig, progress: bool = True,
                head_state: dict[str, torch.Tensor] | None = None,
                ) -> tuple[dict[str, Any], np.ndarray, dict[str, torch.Tensor]]:
    """Train one point (no caching): its result (metrics, history ...), the test events' scores and the trained
    phi and rho weights.  ``head_state`` warm-starts phi and rho (the finetuned strategy starts from the frozen
    head trained on the same events, as the paper's code does for S+HLF and V+HLF)."""
    p = _preset(preset)
    config.validate()
    common.limit_threads()
    device = common.select_device(config.device)
    events = case_events(p, config.case, config.max_constituents_pp, progress)
    train_events = _prefix(events["train"], config.train_size, "training")
    # the validation split may be smaller than val_size in a small sample: all of it is used (recorded below)
    val_events = _prefix(events["val"], min(config.val_size, len(events["val"])), "validation")
    name = f"joint/{config.case}"
    train = event_tensors(p, train_events, config.jet_model, f"{name}/train/{config.train_size}")
    val = event_tensors(p, val_events, config.jet_model, f"{name}/val/{config.val_size}")
    test = event_tensors(p, events["test"], config.jet_model, f"{name}/test")
    encoder = starting_encoder(p, config, progress)
    real_hlf = torch.as_tensor(train_events.hlf)
    model = EventModel(encoder, config.representation, len(HLF_NAMES[config.case]), config.width, config.n_layers,
                       hlf_mean=real_hlf.mean(0), hlf_std=real_hlf.std(0).clamp(min=1e-3), seed=config.seed)
    if head_state is not None:
        missing = model.load_state_dict(head_state, strict=False)
        if missing.unexpected_keys or any(not k.startswith("encoder.") for k in missing.missing_keys):
            raise RuntimeError(f"the warm-start head does not fit: {missing}")
    before = {k: v.clone() for k, v in model.encoder.state_dict().items()}
    trained = train_event_model(model, config.strategy, train, val, config, device, progress=progress)
    if config.strategy == "frozen":  # frozen means frozen: the jet model never changed
        after = trained.model.encoder.state_dict()
        if any(not torch.equal(before[k], after[k].cpu()) for k in before):
            raise RuntimeError("the frozen jet model changed during training: a bug in the frozen strategy")
    scores = predict_events(trained.model, test, device)
    metrics = event_metrics(scores, events["test"].label)
    metrics["val_events"] = len(val_events)
    weighted = event_metrics(scores, events["test"].label, weights=events["test"].weight)
    metrics.update({f"weighted_{k}": v for k, v in weighted.items() if k in ("auc", "rejection", "sic", "max_sic")})
    if config.representation == "s_hlf" and config.strategy != "frozen":
        _, s = encode_jets(trained.model.encoder, test.jet_inputs, device)
        reference = pretext_reference(p, config.case, config.jet_model)
        drift = scalar_drift(s.numpy(), events["test"].jet_label, reference, sign_free=config.strategy in ("from_scratch", "foundation"))
        metrics.update({f"scalar_{k}": v for k, v in drift.items()})
    n_trainable = sum(p_.numel() for n, p_ in trained.model.named_parameters()
                      if config.strategy != "frozen" or not n.startswith("encoder."))
    result = {"metrics": metrics, "history": trained.history, "best_epoch": trained.best_epoch,
              "seconds": trained.seconds, "n_parameters": sum(p_.numel() for p_ in trained.model.parameters()),
              "n_trainable_parameters": n_trainable}
    head = {k: v.detach().cpu().clone() for k, v in trained.model.state_dict().items() if not k.startswith("encoder.")}
    return result, scores, head


def store_key(preset: str | Preset) -> str:
    """What every point of the preset's joint store depends on besides its own settings."""
    p = _preset(preset)
    return f"{p.name}-" + config_hash(pipeline.model_key(p), generation_config(p), DATA_FORMAT_VERSION,
                                      _tau_pretext_config(p, "gpt"),
                                      HBB_PRETEXT, TEST_FRACTION, VAL_FRACTION, JOINT_FORMAT)


def joint_store(preset: str | Preset) -> ScanStore:
    """The scan store of the joint analysis for ``preset`` (in tauml's cache)."""
    key = store_key(preset)
    return ScanStore(cache_path("joint-scans", key), preset_key=key)


def scores_path(store: ScanStore, config: JointConfig) -> Path:
    return store.root / f"{store.key(config)}{SCORES_SUFFIX}"


def head_path(store: ScanStore, config: JointConfig) -> Path:
    return store.root / f"{store.key(config)}.head.pt"


@releases_memory
def _store_point(p: Preset, store: ScanStore, config: JointConfig) -> None:
    """Train ``config`` and store it: its record, its test scores and its phi/rho weights (the finetuned strategy
    starts from the frozen point's, which must be stored already)."""
    head_state = None
    if config.strategy == "finetuned":
        head_state = torch.load(head_path(store, replace(config, strategy="frozen")), map_location="cpu",
                                weights_only=True)
    start = time.perf_counter()
    result, scores, head = train_point(p, config, progress=False, head_state=head_state)
    with atomic_path(scores_path(store, config)) as tmp, open(tmp, "wb") as handle:
        np.save(handle, scores.astype(np.float32), allow_pickle=False)
    with atomic_path(head_path(store, config)) as tmp:
        torch.save(head, tmp)
    store.put(config, result, seconds=time.perf_counter() - start)  # last: the record vouches for the files


def _worker_job(preset: Preset, root: str, key: str, config: JointConfig, generation: GenerationConfig) -> None:
    torch.set_num_threads(1)
    JOINT_GENERATION[preset.name] = generation  # the parent's event samples, whatever this process's table says
    _store_point(preset, ScanStore(root, preset_key=key), config)


def _done(store: ScanStore, config: JointConfig) -> bool:
    return store.get(config) is not None and scores_path(store, config).is_file() and head_path(store, config).is_file()


def run_points(preset: str | Preset, points: list[JointConfig], progress: bool = True,
               workers: int | None = None) -> list[dict[str, Any]]:
    """Train the points missing from the store, in ``workers`` processes (default: the usable cores, as the memory
    allows), storing each as it finishes; return every point's record (with ``test_scores``) in the order of
    ``points``.  The frozen points train first: a finetuned point starts from its frozen head (added when absent)."""
    p = _preset(preset)
    for config in points:
        config.validate()
    store = joint_store(p)
    joint_dataset(p, progress)  # generate first, with its own progress bar
    wanted = list(dict.fromkeys(points))
    frozen_needed = [replace(c, strategy="frozen") for c in wanted if c.strategy == "finetuned"]
    phases = [[c for c in dict.fromkeys(wanted + frozen_needed) if c.strategy == "frozen" and not _done(store, c)],
              [c for c in wanted if c.strategy != "frozen" and not _done(store, c)]]
    todo = phases[0] + phases[1]
    for config in todo:  # sizes checked here, before any worker starts
        events = case_events(p, config.case, config.max_constituents_pp, progress)
        _prefix(events["train"], config.train_size, "training")
    if todo:  # what every worker needs, built once here: the tokenizer, the backbone, the pretext taggers
        if any(c.jet_model == "gpt" for c in todo):
            pipeline.tokenizer(p, progress=progress)
            pipeline.backbone_checkpoint(p, progress=progress)
        for case, jet_model in dict.fromkeys((c.case, c.jet_model) for c in todo):
            pretext_encoder(p, case, jet_model, progress)
            if any(c.representation == "s_hlf" and c.strategy != "frozen" for c in todo if c.case == case):
                pretext_reference(p, case, jet_model)
    n_workers = common.parallel_workers(max((len(ph) for ph in phases), default=1), workers)
    bar = progress_bar(total=len(todo), desc="joint trainings", unit="model", disable=not progress or None,
                       leave=True)
    try:
        for phase in phases:
            if n_workers <= 1 or len(phase) <= 1:
                for config in phase:
                    bar.set_postfix_str(f"{config.case} {config.representation} {config.strategy} "
                                        f"n={config.train_size} seed={config.seed}")
                    _store_point(p, store, config)
                    bar.update()
                continue
            context = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(max_workers=n_workers, mp_context=context, initializer=die_with_parent) as pool:
                futures = [pool.submit(_worker_job, p, str(store.root), store.preset_key, c, generation_config(p))
                           for c in phase]
                for future in as_completed(futures):
                    future.result()
                    bar.update()
    finally:
        bar.close()
    records = []
    for config in points:
        record = store.get(config)
        record["test_scores"] = np.load(scores_path(store, config), allow_pickle=False)
        records.append(record)
    return records


def test_events(preset: str | Preset, case: str) -> EventArrays:
    """The test events of ``case`` (labels, weights, samples) that every point is evaluated on."""
    return case_events(preset, case)["test"]


__all__ = [
    "HBB_PRETEXT",
    "TAU_PRETEXT",
    "case_events",
    "event_tensors",
    "generation_config",
    "jet_inputs",
    "joint_dataset",
    "joint_store",
    "pretext_encoder",
    "pretext_event_scores",
    "pretext_reference",
    "run_points",
    "starting_encoder",
    "store_key",
    "test_events",
    "train_point",
]
