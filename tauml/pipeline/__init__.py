"""The cached pipeline every notebook and command draws from: data -> tokenizer -> tokens -> backbone.

Each step is a function of a preset (``"demo"``, ``"paper"`` or a :class:`~tauml.config.Preset`).  It
returns the cached result when one exists for the same configuration, and builds it (with a progress bar)
otherwise.  No notebook reads a file that another notebook happened to write: all of them call these.

    from tauml import pipeline
    data = pipeline.dataset("demo")                 # generated events (Fu(tau)ure + JetClass schemas)
    files = pipeline.data_files(with_data("paper", "~/data"))  # or the released files (tauml.data.sources)
    taus = pipeline.tau_jets("demo", "id", "train") # JetArrays for a task and a split
    tok  = pipeline.tokenizer("demo")               # the frozen VQ-VAE tokenizer
    gpt  = pipeline.backbone_checkpoint("demo")     # the pretrained backbone's checkpoint path
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path

import numpy as np

from tauml.cache import (
    DATA_FORMAT_VERSION,
    ENTRY_FILE,
    MODEL_FORMAT_VERSION,
    building,
    cache_dir,
    cache_path,
    clear_entry,
    entry_digest,
    entry_problem,
    read_entry,
    write_entry,
)
from tauml.config import (
    EE_SAMPLES,
    PP_SAMPLES,
    TASKS,
    TOKENIZER_DOMAINS,
    ConfigError,
    FeatureConfig,
    Preset,
    config_hash,
    get_preset,
    to_dict,
)
from tauml.data.chunks import CHUNK_JETS, iter_jet_chunks
from tauml.data.features import JetArrays, TruncationWarning, jet_arrays
from tauml.data.generate import GeneratedData, generate_cached
from tauml.data.readers import read_fuure
from tauml.data.schema import DataError
from tauml.data.sources import (
    FETCHED,
    FUURE_LAYOUT,
    GENERATED,
    JETCLASS_LAYOUT,
    DataFiles,
    NoDataFiles,
    file_identity,
    jetclass_entries,
    parquet_rows,
    resolve,
)
from tauml.models import CheckpointError
from tauml.models.checkpoints import load_tokenizer, read_backbone_metadata
from tauml.models.gpt import token_aligned_features
from tauml.models.vqvae import CODE_OFFSET
from tauml.training import distributed
from tauml.training.common import placement_free
from tauml.training.pretrain import BACKBONE_FILE, pretrain, read_history
from tauml.training.tokenizer import train_tokenizer
from tauml.utils import releases_memory

#: Which generated samples feed which task (as the reference: regression and decay modes train on Z -> tau tau
#: jets only, identification on Z -> tau tau against q qbar jets).  Tests add the ZH taus.
TASK_SAMPLES: dict[str, dict[str, tuple[str, ...]]] = {
    "id": {"train": ("z", "qq"), "test": ("z", "zh", "qq")},
    "reg": {"train": ("z",), "test": ("z", "zh")},
    "dm": {"train": ("z",), "test": ("z", "zh")},
}


_preset = get_preset  # every step accepts a preset's name or a Preset


#: Generation speed per core, events/s, measured with benchmarks/bench_generation.py (docs/generation.md); used
#: only to tell a user what generating a large preset would cost.
EVENTS_PER_CORE_SECOND: dict[str, float] = {"z": 145.0, "zh": 660.0, "qq": 1963.0, "ZJetsToNuNu": 150.0,
                                            "TTBar": 142.0}


def generation_core_hours(preset: str | Preset) -> float:
    """The estimated CPU time [core-hours] to generate the samples of ``preset`` (from the measured speeds)."""
    events = _preset(preset).generation.events
    return sum(n / EVENTS_PER_CORE_SECOND.get(sample, 100.0) for sample, n in events.items()) / 3600.0


def dataset(preset: str | Preset = "demo", progress: bool = True) -> GeneratedData | DataFiles:
    """The data of ``preset``: its generated dataset (generated on first use, then read from the cache) when its
    ``data`` is ``"generated"``, else the files of its source (:func:`data_files`, checked).

    A preset on files (``paper``: ``data="files"``) never starts generating by itself: without the files it stops
    at once with a message naming ``tauml fetch``, the expected layout and ``--data generated`` with its cost.
    """
    p = _preset(preset)
    if p.data != GENERATED:
        return data_files(p)
    return generate_cached(p.generation, progress=progress)


_CHECKED: set[str] = set()  # file identities whose schemas were checked in this process


def data_files(preset: str | Preset = "demo") -> DataFiles:
    """The data files of ``preset`` by sample and split (:class:`tauml.data.sources.DataFiles`): those of its
    generated dataset (generated first if needed) or those its ``data`` names (a folder, a glob, ``"files"``),
    resolved by their released names and checked (names, then the schemas once per process and identity)."""
    p = _preset(preset)
    if p.data == GENERATED:
        return DataFiles.from_generated(dataset(p))
    files = _resolved(p)
    identity = config_hash(files.identity())
    if identity not in _CHECKED:
        files.check()
        _CHECKED.add(identity)
    return files


def _resolved(p: Preset) -> DataFiles:
    """The files of ``p.data`` (names and stat only, no reading); the stop message when ``"files"`` finds none."""
    try:
        return resolve(p.data)
    except NoDataFiles:
        if p.data != FETCHED:
            raise
        from tauml.data.manifest import data_dir  # (local: reads yaml)

        raise DataError(
            f"preset {p.name!r} reads the released Fu(tau)ure and JetClass files, and none are in {data_dir()} (where "
            f"`tauml fetch` stores them); tauml does not start generating {sum(p.generation.events.values()):,} events "
            "by itself. Get the files with `tauml fetch NAME` (`tauml fetch --list`: z_train.parquet, "
            "zh_test.parquet, ..., JetClass_Pythia_val_5M.tar --extract), or point at files you have with --data PATH "
            f"(a folder, a glob, or several joined by ':'). Expected layout: {FUURE_LAYOUT}; {JETCLASS_LAYOUT} "
            "(docs/data.md). To generate the preset's samples instead, ask for it with --data generated (about "
            f"{generation_core_hours(p):,.0f} core-hours, parallel over the usable cores), or use the demo or medium "
            "preset"
        ) from None


def generated_dataset_exists(preset: str | Preset) -> bool:
    """Whether the generated dataset of ``preset`` is already complete in the cache (nothing is created)."""
    key = config_hash(_preset(preset).generation, DATA_FORMAT_VERSION)  # the generated data's, whatever its source
    return (cache_dir() / "data" / key / "manifest.json").is_file()


@lru_cache(maxsize=16)
def _fuure_arrays(path: str, lifetime: bool, stamp: tuple[int, int] = (0, 0)) -> JetArrays:
    """The jets of one Fu(tau)ure file (``stamp``: its size and modification time, so a changed file is read
    again)."""

    jets = read_fuure(path)
    arrays = jet_arrays(jets, lifetime=lifetime, source=path)
    arrays.extra["event_number"] = np.asarray(jets.event_number) if "event_number" in jets.fields else \
        np.arange(len(arrays))
    return arrays


def sample_jets(preset: str | Preset, sample: str, split: str = "train", lifetime: bool = False) -> JetArrays:
    """All jets of one e+e- sample (``z``, ``zh`` or ``qq``) and split (``train`` or ``test``), from every file of
    that sample and split in file-name order (``z_train.parquet`` or ``z_train_0.parquet``, ``z_train_1.parquet``,
    ...)."""
    parts = [_fuure_arrays(str(path), lifetime, _stamp(path))
             for path in data_files(preset).fuure_files(sample, split)]
    arrays = JetArrays.concatenate(parts) if len(parts) > 1 else parts[0]
    arrays.extra["sample"] = np.full(len(arrays), sample)
    return arrays


def _stamp(path: Path) -> tuple[int, int]:
    stat = path.stat()
    return stat.st_size, stat.st_mtime_ns


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


#: Test jets evaluated at once by a fine-tuning (:func:`iter_tau_jets`): about 80 MB of features and tokens.
TEST_CHUNK_JETS = 100_000


def iter_tau_jets(preset: str | Preset, task: str, split: str = "test", lifetime: bool = False,
                  chunk_jets: int = TEST_CHUNK_JETS) -> Iterator[JetArrays]:
    """The jets of :func:`tau_jets` for the ``test`` split, in the same order, about ``chunk_jets`` at a time: the
    files are read chunk by chunk (:func:`tauml.data.chunks.iter_jet_chunks`), so that a fine-tuning's test
    evaluation does not hold the whole test set.  (The training split is interleaved across samples and taken whole,
    capped by ``train_size``.)"""
    p = _preset(preset)
    if task not in TASKS:
        raise ValueError(f"task={task!r}; choose from {', '.join(TASKS)}")
    if split != "test":
        raise ValueError(f"iter_tau_jets reads the test split only (got {split!r}); use tau_jets for training jets")
    buffered: list[JetArrays] = []
    for sample in TASK_SAMPLES[task]["test"]:
        for path in data_files(p).fuure_files(sample, "test"):
            if parquet_rows(path) <= chunk_jets:  # a small file: whole, from the in-process cache as tau_jets reads it
                chunks: Iterable[JetArrays] = [_fuure_arrays(str(path), lifetime, _stamp(path))]
            else:  # the features of sample_jets (jet_arrays' defaults), chunk by chunk
                chunks = iter_jet_chunks(path, FeatureConfig().max_constituents_tau, min(chunk_jets, CHUNK_JETS),
                                         lifetime=lifetime)
            for chunk in chunks:
                buffered.append(chunk.subset(chunk.jet_pt > min_jet_pt(p, task)))
                if sum(len(b) for b in buffered) >= chunk_jets:
                    yield JetArrays.concatenate(buffered) if len(buffered) > 1 else buffered[0]
                    buffered = []
    if buffered:
        yield JetArrays.concatenate(buffered) if len(buffered) > 1 else buffered[0]


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
def _pp_arrays(files: tuple[str, ...], max_constituents: int, stamps: tuple = ()) -> JetArrays:
    """The jets of many JetClass files, with one truncation warning for all of them (not one per file);
    ``stamps`` (the files' sizes and modification times) only key the in-memory cache: a changed file is read
    again."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", TruncationWarning)
        # chunk by chunk: the float64 intermediates of the features never span more than a chunk of a file
        parts = [chunk for f in files for chunk in iter_jet_chunks(f, max_constituents)]
    cut = [w.message for w in caught if isinstance(w.message, TruncationWarning)]
    for w in caught:
        if not isinstance(w.message, TruncationWarning):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    if cut:
        n_jets = sum(len(p) for p in parts)
        warnings.warn(TruncationWarning(
            f"{sum(c.n_truncated for c in cut)} of {n_jets} jets in {len(files)} files under "
            f"{Path(files[0]).parent} have more than {max_constituents} constituents (up to "
            f"{max(c.largest for c in cut)}); the {max_constituents} of highest pT are kept",
            n_truncated=sum(c.n_truncated for c in cut), n_jets=n_jets, largest=max(c.largest for c in cut)),
            stacklevel=2)
    return JetArrays.concatenate(parts)


def pp_files(preset: str | Preset = "demo", samples: tuple[str, ...] = PP_SAMPLES) -> dict[str, tuple[str, ...]]:
    """The JetClass-like pp files of ``samples`` (by sample) that tokenizer training and pretraining read: the
    ``train_*`` files of a released layout when there are any (:meth:`DataFiles.jetclass_files`), and with the
    preset's ``pp_jets_per_sample`` only the first files that hold that many jets."""
    p = _preset(preset)
    data = data_files(p)
    found = {}
    for sample in samples:
        files = data.jetclass_files(sample)
        if p.pp_jets_per_sample:
            taken, jets = [], 0
            for f in files:  # only as many files as hold the jets (their metadata, read once per file)
                if jets >= p.pp_jets_per_sample:
                    break
                taken.append(f)
                jets += jetclass_entries(f)
            files = tuple(taken)
        found[sample] = tuple(str(f) for f in files)
    return found


def pp_jets(preset: str | Preset = "demo", samples: tuple[str, ...] = PP_SAMPLES) -> tuple[JetArrays, np.ndarray]:
    """All JetClass-like pp jets of ``samples`` and the sample index of each jet (0 = first sample)."""
    p = _preset(preset)
    arrays, labels = [], []
    for i, files in enumerate(pp_files(p, samples).values()):
        a = _pp_arrays(files, p.features.max_constituents_jetclass, tuple(_stamp(Path(f)) for f in files))
        if p.pp_jets_per_sample and len(a) > p.pp_jets_per_sample:
            a = a.subset(slice(0, p.pp_jets_per_sample))
        arrays.append(a)
        labels.append(np.full(len(a), i))
    return JetArrays.concatenate(arrays), np.concatenate(labels)


def pp_split(preset: str | Preset = "demo", val_fraction: float = 0.1, seed: int = 1603) -> Split:
    """The pp jets for tokenizer training and pretraining, shuffled and divided into train and validation."""
    return shuffled_split(pp_jets(preset)[0], val_fraction, seed)


def shuffled_split(jets: JetArrays, val_fraction: float, seed: int) -> Split:
    """``jets`` shuffled with ``seed`` and divided into training and validation (at least one validation jet)."""
    order = np.random.default_rng(seed).permutation(len(jets))
    n_val = max(1, round(val_fraction * len(jets)))
    return Split(train=jets.subset(order[n_val:]), val=jets.subset(order[:n_val]))


def ee_training_jets(preset: str | Preset = "demo") -> JetArrays:
    """Every jet of the e+e- *training* files (z, zh and qq: tau and quark jets alike, no task selection), for a
    tokenizer trained on e+e- jets (``TokenizerConfig.train_on="ee"``).  The test files are never read."""
    return JetArrays.concatenate([sample_jets(preset, sample, "train") for sample in EE_SAMPLES])


def tokenizer_split(preset: str | Preset = "demo") -> Split:
    """The jets the preset's tokenizer trains and validates on: the pp jets (:func:`pp_split`, the default), or
    with ``train_on="ee"`` the e+e- training jets, shuffled with the tokenizer's seed and divided alike."""
    p = _preset(preset)
    t = p.tokenizer
    if t.train_on == "pp":
        return pp_split(p, t.val_fraction, t.seed)
    return shuffled_split(ee_training_jets(p), t.val_fraction, t.seed)


def tokenizer_data_key(preset: str | Preset) -> str:
    """Hash naming the jets the preset's tokenizer is trained on: :func:`pp_data_key` (unchanged keys), or for
    ``train_on="ee"`` the e+e- data (:func:`data_key` of generated data, the Fu(tau)ure files' identity)."""
    p = _preset(preset)
    if p.tokenizer.train_on == "pp":
        return pp_data_key(p)
    return data_key(p) if _generated_key(p) is not None else config_hash({"ee": tau_data_key(p)})


def cache_key_path(kind: str, *parts: object) -> Path:
    """A cache folder for ``kind`` named by the hash of ``parts``."""

    return cache_path(kind, config_hash(*parts))


#: Z -> tau tau events of the detector study (notebook 00's default; ``tauml prepare`` generates them in advance).
DETECTOR_STUDY_EVENTS = 2000


def detector_study(preset: str | Preset = "demo", events: int = DETECTOR_STUDY_EVENTS) -> dict[str, JetArrays]:
    """Tau jets of the same ``z`` events seen by the realistic and by the ideal e+e- detector.

    Both runs use the preset's seed and chunking, so Pythia generates identical events and only the detector
    differs.  Returns ``{"realistic": ..., "ideal": ...}`` (train and test jets together).
    """

    base = _preset(preset).generation
    result = {}
    for name, realistic in (("realistic", True), ("ideal", False)):
        config = replace(base, events={"z": events}, ee_detector=replace(base.ee_detector, realistic=realistic))
        data = generate_cached(config)
        result[name] = JetArrays.concatenate([_fuure_arrays(str(data.fuure("z", split)), False)
                                              for split in ("train", "test")])
    return result


# -----------------------------------------------------------------------------------------------------------
# Tokenizer, tokens, backbone
# -----------------------------------------------------------------------------------------------------------


def data_key(preset: str | Preset) -> str:
    """Hash naming the data of a preset: its generation settings and the format (generated data, or a folder that
    ``tauml generate`` wrote, verified against its manifest: :func:`tauml.data.sources.generated_dataset_key`), or
    the identity of its files (paths, sizes, modification times: :meth:`DataFiles.identity`), so that a changed,
    added or removed file names new results."""

    p = _preset(preset)
    generated = _generated_key(p)
    if generated is not None:
        return generated
    return config_hash({"files": _resolved(p).identity()}, DATA_FORMAT_VERSION)


def _generated_key(p: Preset) -> str | None:
    """The key of the generated dataset the preset reads: its own generated data, or a folder of generated data
    (a copy, or ``tauml generate --out``); None for other files."""
    if p.data == GENERATED:
        return config_hash(p.generation, DATA_FORMAT_VERSION)
    return _resolved(p).generated_key


def pp_data_key(preset: str | Preset) -> str:
    """Hash naming the pp jets the tokenizer and the backbone are trained on: :func:`data_key` for generated data
    (unchanged keys); for files the identity of the JetClass files they read (:func:`pp_files`: a changed
    Fu(tau)ure, validation or test file does not retrain the tokenizer); with ``pp_jets_per_sample`` when set."""

    p = _preset(preset)
    if _generated_key(p) is not None:
        key = data_key(p)
    else:
        try:
            read = [f for files in pp_files(p).values() for f in files]
        except NoDataFiles:
            raise
        except DataError:  # no pp jets (a Fu(tau)ure-only folder): the baselines still run; the tokenizer says why not
            read = [str(f) for f in _resolved(p).all_files(ee=False)]
        key = config_hash({"jetclass": file_identity(read)}, DATA_FORMAT_VERSION)
    return config_hash(key, {"pp_jets_per_sample": p.pp_jets_per_sample}) if p.pp_jets_per_sample else key


def tau_data_key(preset: str | Preset) -> str | None:
    """Hash naming the Fu(tau)ure files the tau models train and are tested on (None for generated data, whose
    :func:`data_key` already names them)."""

    p = _preset(preset)
    return None if _generated_key(p) is not None else config_hash({"fuure": _resolved(p).identity(pp=False)})


def tokenizer_key(preset: str | Preset) -> str:
    """Hash naming a preset's tokenizer: its pp data, features and tokenizer settings."""

    p = _preset(preset)
    return config_hash(tokenizer_data_key(p), p.features, p.tokenizer, MODEL_FORMAT_VERSION)


def backbone_key(preset: str | Preset) -> str:
    """Hash naming a preset's pretrained backbone: its tokenizer and the GPT and pretraining settings."""

    p = _preset(preset)
    return config_hash(tokenizer_key(p), p.gpt, placement_free(p.pretrain))  # the same model on any device


def cached_tokenizers(preset: str | Preset = "demo") -> dict[str, Path]:
    """Tokenizers already trained on the preset's data (its pp or its e+e- jets) with its features, by a short description of how their
    settings differ from the preset's (``"preset"`` for the preset's own), e.g. ``"codebook_size=128"``."""

    p = _preset(preset)
    data_keys = {tokenizer_data_key(replace(p, tokenizer=replace(p.tokenizer, train_on=d)))
                 for d in TOKENIZER_DOMAINS}  # trained on its pp or on its e+e- jets
    own = to_dict(p.tokenizer)
    found = {}
    for done in sorted((cache_dir() / "tokenizer").glob(f"*/{ENTRY_FILE}")):
        info = read_entry(done)
        if (info is None or info.get("data_key") not in data_keys or info.get("features") != to_dict(p.features)
                or "tokenizer" not in info):
            continue
        diff = [f"{k}={v}" for k, v in info["tokenizer"].items() if own.get(k) != v]
        found[", ".join(diff) or "preset"] = done.parent / "tokenizer.pt"
    return found


TOKENIZER_FILE = "tokenizer.pt"
HISTORY_FILE = "history.json"


def tokenizer_dir(preset: str | Preset) -> Path:
    """The cache folder of the preset's tokenizer (named only: it exists once the tokenizer is built)."""

    return cache_path("tokenizer", tokenizer_key(preset), create=False)


def _present(folder: Path, names: tuple[str, ...]) -> list[str]:
    return [name for name in names if (folder / name).is_file()]


def tokenizer(preset: str | Preset = "demo", progress: bool = True):
    """The preset's frozen VQ-VAE tokenizer, trained on the pp jets on first use (then read from the cache).

    The cached entry is verified first (:func:`tauml.cache.entry_problem`): a tokenizer file that is missing,
    truncated, replaced, or holds other settings is trained again, with one line saying why.
    """

    with distributed.main_first():  # under torchrun rank 0 builds it, the other ranks then read it
        return _tokenizer(_preset(preset), progress)


def _tokenizer(p: Preset, progress: bool):
    with building(tokenizer_dir(p)) as folder:
        done = folder / ENTRY_FILE
        if done.exists():
            found = _cached_tokenizer(p, folder)
            if found is not None:
                return found
        result = _train_tokenizer(p, folder, progress)
        write_entry(done, _present(folder, (TOKENIZER_FILE, HISTORY_FILE)),
                    built_from={"data_key": tokenizer_data_key(p)}, tokenizer_key=tokenizer_key(p),
                    data_key=tokenizer_data_key(p), tokenizer=to_dict(p.tokenizer),
                    features=to_dict(p.features))
    return result


@releases_memory
def _train_tokenizer(p: Preset, folder: Path, progress: bool):
    if p.tokenizer.streaming:  # out of core: feature shards per file, batches streamed from them
        from tauml.pipeline.shards import feature_shards
        from tauml.training.streaming import split_parts
        from tauml.training.tokenizer import train_tokenizer_streaming

        files, max_constituents = tokenizer_files(p)
        shards = feature_shards(files, p.features, max_constituents, progress=progress)
        train_parts, val_parts = split_parts(shards, p.tokenizer.val_fraction, p.tokenizer.seed)
        return train_tokenizer_streaming(train_parts, val_parts, p.tokenizer, p.features, folder, progress=progress)
    split = tokenizer_split(p)
    return train_tokenizer(split.train, split.val, p.tokenizer, p.features, folder, progress=progress)


def tokenizer_files(preset: str | Preset) -> tuple[list[str], int]:
    """The files a streamed tokenizer training reads and the constituent slots of their jets: the pp files
    (:func:`pp_files`, 128 slots) or with ``train_on="ee"`` the e+e- *training* files (16 slots)."""
    p = _preset(preset)
    if p.tokenizer.train_on == "pp":
        return [f for files in pp_files(p).values() for f in files], p.features.max_constituents_jetclass
    data = data_files(p)
    return ([str(f) for sample in EE_SAMPLES for f in data.fuure_files(sample, "train")],
            p.features.max_constituents_tau)


def _cached_tokenizer(p: Preset, folder: Path):
    """The verified cached tokenizer in ``folder``, or None after clearing an entry that cannot be trusted."""
    done = folder / ENTRY_FILE
    problem = entry_problem(done, {"data_key": tokenizer_data_key(p)})
    if problem is None:
        try:
            tok = load_tokenizer(folder / TOKENIZER_FILE)
        except CheckpointError as err:
            problem = str(err)
        else:
            if tok.config != p.tokenizer or tok.feature_config != p.features:
                problem = (f"{TOKENIZER_FILE} holds a tokenizer with other settings (codebook "
                           f"{tok.config.codebook_size}, preset {p.tokenizer.codebook_size})")
            else:
                if "files" not in (read_entry(done) or {}):  # an entry from before entries vouched for their files
                    write_entry(done, _present(folder, (TOKENIZER_FILE, HISTORY_FILE)),
                                built_from={"data_key": tokenizer_data_key(p)},
                                **{k: v for k, v in read_entry(done).items() if k not in ("files", "built_from")})
                return tok
    clear_entry(folder, problem)
    return None


def tokenizer_digest(preset: str | Preset) -> str | None:
    """The SHA-256 of the preset's cached tokenizer file as its entry records it (None when not built)."""

    return entry_digest(tokenizer_dir(preset) / ENTRY_FILE, TOKENIZER_FILE)


def backbone_digest(preset: str | Preset) -> str | None:
    """The SHA-256 of the preset's cached backbone file as its entry records it (None when not built)."""

    return entry_digest(backbone_dir(preset) / ENTRY_FILE, BACKBONE_FILE)


def built_from(preset: str | Preset, strategy: str) -> dict[str, str | None]:
    """What a fine-tuning of ``strategy`` is built from: the digests of the tokenizer (the tau models' tokens)
    and of the pretrained backbone (fixed backbone, fine-tuning); None where that entry is not built."""

    uses_tokenizer = strategy in ("from_scratch", "fixed_backbone", "fine_tuning")
    uses_backbone = strategy in ("fixed_backbone", "fine_tuning")
    found: dict[str, str | None] = {}
    if uses_tokenizer:
        found["tokenizer_sha256"] = tokenizer_digest(preset)
    if uses_backbone:
        found["backbone_sha256"] = backbone_digest(preset)
    return found


def tokens(preset: str | Preset, jets: JetArrays, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Token sequences ``(n_jets, slots + 2)`` int64 and boolean masks of ``jets`` under the preset's tokenizer.

    Written once as a token shard (:mod:`tauml.data.shards`, no padding stored) into the cache under the
    tokenizer's key and SHA-256, ``name`` (e.g. ``"id/train"``) and a fingerprint of the jets, verified and
    read back on the next call, so a different preset, tokenizer or set of jets never reuses stale tokens.
    For the pp jets of a large pretraining see :func:`tauml.pipeline.shards.token_shards` (streamed, per file).
    """
    from tauml.data.shards import SHARD_FORMAT, open_shard, shard_problem, write_shard

    fingerprint = f"{len(jets)}/{jets.mask.shape[1]}/{float(jets.features.sum(dtype=np.float64)):.6e}"
    digest = tokenizer_digest(preset)
    if digest is None:  # not built yet: build it first, so that its digest names the shard
        tokenizer(preset)
        digest = tokenizer_digest(preset)
    folder = cache_key_path("tokens", tokenizer_key(preset), digest, name, fingerprint, SHARD_FORMAT)
    if shard_problem(folder, {"tokenizer_sha256": digest}) is None:  # (its entry is written last, atomically)
        return open_shard(folder).padded()
    tok = tokenizer(preset)  # outside the lock below: under torchrun this synchronises the ranks
    with building(folder):
        problem = shard_problem(folder, {"tokenizer_sha256": digest})
        if problem is None:  # another process wrote it meanwhile
            return open_shard(folder).padded()
        if any(item.name != ".lock" for item in folder.iterdir()):
            clear_entry(folder, problem)
        t, m = tok.tokenize(jets.features, jets.mask)
        t, m = t.numpy(), m.numpy()
        write_shard(folder, [(t, m)], tok.vocab_size, t.shape[1], built_from={"tokenizer_sha256": digest}, name=name)
    return t, m


def backbone_dir(preset: str | Preset) -> Path:
    """The cache folder of the preset's backbone (named only: it exists once the backbone is built)."""

    return cache_path("backbone", backbone_key(preset), create=False)


def gpt_config(preset: str | Preset):
    """The preset's GPT settings with the vocabulary of its tokenizer (codebook size + 3)."""


    p = _preset(preset)
    return replace(p.gpt, vocab_size=p.tokenizer.codebook_size + CODE_OFFSET,
                   max_len=p.features.max_constituents_jetclass + 2)


def backbone_checkpoint(preset: str | Preset = "demo", progress: bool = True) -> Path:
    """Path of the preset's pretrained backbone, pretrained on the tokenized pp jets on first use."""

    p = _preset(preset)
    with distributed.main_builds(backbone_dir(p)) as folder:  # under torchrun all ranks pretrain, rank 0 writes
        done = folder / ENTRY_FILE
        if distributed.broadcast(_cached_backbone(p, folder) if distributed.is_main() else None):
            return folder / BACKBONE_FILE
        _pretrain_backbone(p, folder, progress)
        if distributed.is_main():
            write_entry(done, _present(folder, (BACKBONE_FILE, HISTORY_FILE)),
                        built_from={"tokenizer_key": tokenizer_key(p), "tokenizer_sha256": tokenizer_digest(p)},
                        backbone_key=backbone_key(p))
    return folder / BACKBONE_FILE


@releases_memory
def _pretrain_backbone(p: Preset, folder: Path, progress: bool) -> None:
    """Pretrain the preset's backbone into ``folder`` (in memory, or streamed from token shards)."""
    metadata = {"tokenizer_key": tokenizer_key(p), "backbone_key": backbone_key(p)}
    if p.pretrain.streaming and (p.gpt.inputs != "tokens" or p.pretrain.ntp_weight != 1.0
                                 or p.pretrain.mpm_weight > 0):
        raise ConfigError("streaming pretraining reads token shards only (next-token prediction on tokens): "
                          "set streaming=False for continuous inputs or masked particle modelling")
    if p.pretrain.streaming:  # out of core: token shards per file, batches streamed from them
        from tauml.pipeline.shards import token_shards
        from tauml.training.pretrain_stream import pretrain_streaming
        from tauml.training.streaming import split_parts

        with distributed.main_first():  # rank 0 builds the shards, the other ranks then verify them
            shards = token_shards(p, [f for files in pp_files(p).values() for f in files], progress=progress)
        train_parts, val_parts = split_parts(shards, p.pretrain.val_fraction, p.pretrain.seed)
        pretrain_streaming(train_parts, val_parts, gpt_config(p), p.pretrain, folder, progress=progress,
                           metadata=metadata)
    else:
        split = pp_split(p, p.pretrain.val_fraction, p.pretrain.seed)
        train_tokens, train_mask = tokens(p, split.train, "pp/train")
        val_tokens, val_mask = tokens(p, split.val, "pp/val")
        # a continuous backbone reads the tokenizer's own input features (one preprocessing everywhere)
        features = {"train_features": token_aligned_features(split.train.features, split.train.mask),
                    "val_features": token_aligned_features(split.val.features, split.val.mask)} \
            if p.gpt.inputs == "continuous" else {}
        pretrain(train_tokens, train_mask, val_tokens, val_mask, gpt_config(p), p.pretrain, folder,
                 progress=progress, metadata=metadata, **features)


def _cached_backbone(p: Preset, folder: Path) -> bool:
    """Whether ``folder`` holds the preset's verified backbone; clears an entry that cannot be trusted."""
    done = folder / ENTRY_FILE
    if done.exists():
        # built from the tokenizer cached now? (not compared when that tokenizer is not built)
        problem = entry_problem(done, {"tokenizer_key": tokenizer_key(p), "tokenizer_sha256": tokenizer_digest(p)})
        if problem is None and "files" not in (read_entry(done) or {}):  # an entry from before they vouched
            try:
                read_backbone_metadata(folder / BACKBONE_FILE)
                write_entry(done, _present(folder, (BACKBONE_FILE, HISTORY_FILE)),
                            built_from={"tokenizer_key": tokenizer_key(p)}, backbone_key=backbone_key(p))
            except CheckpointError as err:
                problem = str(err)
        if problem is None:
            return True
        clear_entry(folder, problem)
    return False


def backbone_history(preset: str | Preset = "demo") -> dict:
    """The pretraining history (per-epoch losses, perplexities, throughput) of the preset's backbone."""

    backbone_checkpoint(preset)
    return read_history(backbone_dir(preset))


def model_key(preset: str | Preset) -> str:
    """Hash of everything a fine-tuning result depends on besides its own settings (on files: the Fu(tau)ure
    files' identity too, :func:`tau_data_key`)."""

    p = _preset(preset)
    tau_key = tau_data_key(p)
    if tau_key is None:
        return config_hash(backbone_key(p), p.head, p.part, p.deepset)
    return config_hash(backbone_key(p), p.head, p.part, p.deepset, tau_key)


def finetune_dir(preset: str | Preset, config) -> Path:
    """The cache folder of one fine-tuning configuration (a resolved FinetuneConfig); named only, created by the
    fine-tuning itself."""

    return cache_path("finetune", config_hash(model_key(preset), placement_free(config)), create=False)


# The fine-tuning step lives in its own module; it is part of the pipeline's public face:
#     pipeline.finetune("demo", config)
from tauml.pipeline.finetuning import FinetuneResult, finetune, finetune_many  # noqa: E402, F401  (it imports this module)
