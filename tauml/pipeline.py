"""The cached pipeline every notebook and command draws from: data -> tokenizer -> tokens -> backbone.

Each step is a function of a preset (``"demo"``, ``"paper"`` or a :class:`~tauml.config.Preset`).  It
returns the cached result when one exists for the same configuration, and builds it (with a progress bar)
otherwise.  No notebook reads a file that another notebook happened to write: all of them call these.

    from tauml import pipeline
    data = pipeline.dataset("demo")                 # generated events (Fu(tau)ure + JetClass schemas)
    taus = pipeline.tau_jets("demo", "id", "train") # JetArrays for a task and a split
    tok  = pipeline.tokenizer("demo")               # the frozen VQ-VAE tokenizer
    gpt  = pipeline.backbone_checkpoint("demo")     # the pretrained backbone's checkpoint path
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from tauml.config import PP_SAMPLES, TASKS, Preset, get_preset
from tauml.data.features import JetArrays, jet_arrays
from tauml.data.generate import GeneratedData, generate_cached
from tauml.data.schema import DataError

#: Which generated samples feed which task (as the reference: regression and decay modes train on Z -> tau tau
#: jets only, identification on Z -> tau tau against q qbar jets).  Tests add the ZH taus.
TASK_SAMPLES: dict[str, dict[str, tuple[str, ...]]] = {
    "id": {"train": ("z", "qq"), "test": ("z", "zh", "qq")},
    "reg": {"train": ("z",), "test": ("z", "zh")},
    "dm": {"train": ("z",), "test": ("z", "zh")},
}


def _preset(preset: str | Preset) -> Preset:
    return get_preset(preset) if isinstance(preset, str) else preset.validate()


def dataset(preset: str | Preset = "demo", progress: bool = True) -> GeneratedData:
    """The generated dataset of ``preset`` (generated on first use, then read from the cache)."""
    return generate_cached(_preset(preset).generation, progress=progress)


@lru_cache(maxsize=16)
def _fuure_arrays(path: str, lifetime: bool) -> JetArrays:
    from tauml.data.readers import read_fuure

    jets = read_fuure(path)
    arrays = jet_arrays(jets, lifetime=lifetime, source=path)
    arrays.extra["event_number"] = np.asarray(jets.event_number) if "event_number" in jets.fields else \
        np.arange(len(arrays))
    return arrays


def sample_jets(preset: str | Preset, sample: str, split: str = "train", lifetime: bool = False) -> JetArrays:
    """All jets of one e+e- sample (``z``, ``zh`` or ``qq``) and split (``train`` or ``test``)."""
    path = dataset(preset).fuure(sample, split)
    arrays = _fuure_arrays(str(path), lifetime)
    arrays.extra["sample"] = np.full(len(arrays), sample)
    return arrays


def min_jet_pt(preset: str | Preset, task: str) -> float:
    """The reco-jet pT selection of a task in GeV (id 20, dm 5, reg 0 in the reference)."""
    f = _preset(preset).finetune
    return {"id": f.id_min_jet_pt, "dm": f.dm_min_jet_pt, "reg": f.reg_min_jet_pt}[task]


def tau_jets(preset: str | Preset, task: str, split: str = "train", lifetime: bool = False) -> JetArrays:
    """The jets of ``task`` (id, reg, dm) for ``split`` after the task's reco-jet pT selection.

    ``train`` jets are later divided into validation (first ``val_size``) and training jets (next
    ``train_size``) by :func:`train_val_split`; ``test`` jets are never used for training.
    """
    if task not in TASKS:
        raise ValueError(f"task={task!r}; choose from {', '.join(TASKS)}")
    parts = [sample_jets(preset, s, split, lifetime) for s in TASK_SAMPLES[task][split]]
    jets = JetArrays.concatenate(parts) if len(parts) > 1 else parts[0]
    keep = jets.jet_pt > min_jet_pt(preset, task)
    if split == "train" and len(parts) > 1:
        # interleave the samples so that every prefix has the same signal fraction
        order = np.random.default_rng(12345).permutation(int(keep.sum()))
        return jets.subset(np.flatnonzero(keep)[order])
    return jets.subset(keep)


@dataclass
class Split:
    train: JetArrays
    val: JetArrays


def train_val_split(jets: JetArrays, train_size: int, val_size: int) -> Split:
    """Validation = the first ``val_size`` jets, training = the next ``train_size`` (files are pre-shuffled).

    Training sets of different sizes are nested, so a data-efficiency scan adds jets rather than redraws.
    """
    if val_size + train_size > len(jets):
        raise DataError(
            f"asked for {train_size} training + {val_size} validation jets but only {len(jets)} pass the selection; "
            "generate more events (tauml generate --sample z --events N) or lower train_size/val_size"
        )
    return Split(train=jets.subset(slice(val_size, val_size + train_size)), val=jets.subset(slice(0, val_size)))


@lru_cache(maxsize=4)
def _pp_arrays(files: tuple[str, ...], max_constituents: int) -> JetArrays:
    from tauml.data.readers import read_jetclass

    parts = [jet_arrays(read_jetclass(f), max_constituents=max_constituents, source=f) for f in files]
    return JetArrays.concatenate(parts)


def pp_jets(preset: str | Preset = "demo", samples: tuple[str, ...] = PP_SAMPLES) -> tuple[JetArrays, np.ndarray]:
    """All JetClass-like pp jets of ``samples`` and the sample index of each jet (0 = first sample)."""
    p = _preset(preset)
    data = dataset(p)
    arrays, labels = [], []
    for i, sample in enumerate(samples):
        files = tuple(str(f) for f in data.jetclass(sample))
        a = _pp_arrays(files, p.features.max_constituents_jetclass)
        arrays.append(a)
        labels.append(np.full(len(a), i))
    return JetArrays.concatenate(arrays), np.concatenate(labels)


def pp_split(preset: str | Preset = "demo", val_fraction: float = 0.1, seed: int = 1603) -> Split:
    """The pp jets for tokenizer training and pretraining, shuffled and divided into train and validation."""
    jets, _ = pp_jets(preset)
    order = np.random.default_rng(seed).permutation(len(jets))
    n_val = max(1, round(val_fraction * len(jets)))
    return Split(train=jets.subset(order[n_val:]), val=jets.subset(order[:n_val]))


def cache_key_path(kind: str, *parts: object) -> Path:
    """A cache folder for ``kind`` named by the hash of ``parts``."""
    from tauml.cache import cache_path
    from tauml.config import config_hash

    return cache_path(kind, config_hash(*parts))


def detector_study(preset: str | Preset = "demo", events: int = 2000) -> dict[str, JetArrays]:
    """Tau jets of the same ``z`` events seen by the realistic and by the ideal e+e- detector.

    Both runs use the preset's seed and chunking, so Pythia generates identical events and only the detector
    differs.  Returns ``{"realistic": ..., "ideal": ...}`` (train and test jets together).
    """
    from dataclasses import replace

    base = _preset(preset).generation
    result = {}
    for name, realistic in (("realistic", True), ("ideal", False)):
        config = replace(base, events={"z": events}, ee_detector=replace(base.ee_detector, realistic=realistic))
        data = generate_cached(config)
        result[name] = JetArrays.concatenate([_fuure_arrays(str(data.fuure("z", split)), False)
                                              for split in ("train", "test")])
    return result
