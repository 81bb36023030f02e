"""``tauml prepare``: build in advance everything the notebooks train, so that a class starts warm.

    tauml prepare --preset demo                        every default step below (binder/postBuild runs it)
    tauml prepare --preset demo --steps scaling        an optional step (not in the default)
    tauml prepare --preset demo --steps data tokenizer backbone
    tauml prepare --list                               the steps, what each builds, for which notebook

Each step calls exactly what its notebook calls, with the notebook's default settings (the ``NOTEBOOK_*``
constants of the studies modules, which the notebooks' configuration cells read), so everything lands in the
normal cache (``tauml.cache``) under the keys the notebooks then look up: opening a notebook afterwards reads
its trainings instead of running them.  Every step is cached and resumes after an interruption, so ``prepare``
can be run again at any time; a step that is already built takes seconds.  What the widgets train on a click
is not prepared: that stays live.

Heavy imports (torch, the pipeline) happen inside :func:`prepare`, so ``tauml --help`` stays fast.
"""

from __future__ import annotations

import multiprocessing
import time
from collections.abc import Callable, Sequence
from typing import Any

from tauml import pipeline
from tauml.config import ConfigError, Preset, get_preset
from tauml.pipeline.finetuning import finetune_many
from tauml.studies import ablations, beyond_tokens, embeddings, tokenization
from tauml.studies import finetuning as comparison
from tauml.studies import joint as joint_study
from tauml.utils import die_with_parent

#: The steps in the order they run (later steps need earlier ones, and the longest, the scans, come last):
#: name -> (the notebook that shows it, what it builds).
STEPS: dict[str, tuple[str, str]] = {
    "data": ("00_data", "the generated events of the preset (Pythia 8, detector, jets, truth)"),
    "detector": ("00_data", "the detector study: Z -> tau tau events seen by the realistic and the ideal detector"),
    "tokenizer": ("01_tokenization", "the preset's VQ-VAE tokenizer, trained on the pp jets"),
    "variants": ("01_tokenization", "the tokenizer variants notebook 01 compares with the preset's"),
    "backbone": ("02_pretraining", "the GPT backbone, pretrained on the tokenized pp jets"),
    "finetuning": ("03_finetuning", "the comparison: every task, strategy and baseline, every seed"),
    "embeddings": ("05_embeddings", "the decay-mode fine-tunings whose backbones the embedding study maps"),
    "ablations": ("04_ablations", "the scan points: unfreeze epoch, GPT blocks and training-set size"),
    "beyond_tokens": ("07_beyond_tokens", "the backbone variants (tokens, continuous, continuous+MPM), their "
                      "fine-tunings and references"),
    "scaling": ("07_beyond_tokens", "the scaling curves: tau metrics against pretraining jets and backbone width"),
    "joint": ("06_joint_analysis", "the joint analysis: its event samples, pretext taggers and event classifiers"),
}


#: Steps a notebook shows only when they were built, and which ``prepare`` therefore runs only when asked
#: (``--steps scaling``): the scaling curves train 10 backbones, more than a class or a Binder build should wait
#: for (notebook 07 says how to build them where they are missing).
OPTIONAL_STEPS: frozenset[str] = frozenset({"scaling"})


def check_steps(steps: Sequence[str] | None) -> list[str]:
    """The steps to run, in the order of :data:`STEPS` (every step but the :data:`OPTIONAL_STEPS` when ``steps``
    is None or empty); an unknown name is a :class:`ConfigError` naming the known ones (raised before anything is
    built)."""
    if not steps:
        return [s for s in STEPS if s not in OPTIONAL_STEPS]
    unknown = [s for s in steps if s not in STEPS]
    if unknown:
        raise ConfigError(f"unknown step {unknown[0]!r} — choose from {', '.join(STEPS)} (tauml prepare --list)")
    return [s for s in STEPS if s in steps]


def duration(seconds: float) -> str:
    """``42 s`` or ``3 min 05 s``."""
    seconds = round(seconds)
    return f"{seconds} s" if seconds < 60 else f"{seconds // 60} min {seconds % 60:02d} s"


def prepare(preset: str | Preset = "demo", steps: Sequence[str] | None = None, workers: int | None = None,
            progress: bool = True, isolated: bool = True) -> dict[str, float]:
    """Build the ``steps`` (default: all of :data:`STEPS` but the :data:`OPTIONAL_STEPS`) of ``preset`` into the
    cache, printing what each builds and how long it took; returns ``{step: seconds}``.  ``workers`` is the number
    of trainings run side by side (default: as the cores and the memory allow, :func:`tauml.utils.parallel_workers`).

    ``isolated`` runs each step in a fresh process, which ends with the step: one process that builds every step
    keeps the high-water mark of all of them, and a Binder build of the demo was killed above 2 GB at the last
    step that way (measured, ``benchmarks/bench_school.py``); a step alone stays well below."""
    chosen = check_steps(steps)
    p = get_preset(preset)
    seconds: dict[str, float] = {}
    started = time.perf_counter()
    print(f"tauml prepare: preset {p.name!r}, steps {', '.join(chosen)}", flush=True)
    for i, name in enumerate(chosen, 1):
        notebook, what = STEPS[name]
        print(f"[{i}/{len(chosen)}] {name} ({notebook}): {what} ...", flush=True)
        begun = time.perf_counter()
        detail = _in_own_process(name, p, workers, progress) if isolated else \
            _STEP_FUNCTIONS[name](p, workers, progress)
        seconds[name] = time.perf_counter() - begun
        print(f"      {detail} — {duration(seconds[name])}", flush=True)
    print(f"tauml prepare: {len(chosen)} step(s) in {duration(time.perf_counter() - started)}; the notebooks now "
          "find them in the cache", flush=True)
    return seconds


def _run_step(name: str, p: Preset, workers: int | None, progress: bool, connection: Any) -> None:
    """The body of a step's own process: run it, send back its line or its exception."""
    die_with_parent()
    try:
        connection.send(("done", _STEP_FUNCTIONS[name](p, workers, progress)))
    except BaseException as err:  # the parent raises it again, so the command's error surface is the same
        connection.send(("failed", err))
    finally:
        connection.close()


def _in_own_process(name: str, p: Preset, workers: int | None, progress: bool) -> str:
    """Run step ``name`` in a fresh (spawned) process and return its line; its exception is raised here."""
    context = multiprocessing.get_context("spawn")
    receive, send = context.Pipe(duplex=False)
    process = context.Process(target=_run_step, args=(name, p, workers, progress, send), name=f"prepare-{name}")
    process.start()
    send.close()
    try:
        status, value = receive.recv()
    except EOFError:  # the process ended without a word: killed (out of memory?) or crashed
        process.join()
        raise RuntimeError(f"step {name!r} ended without finishing (exit code {process.exitcode}; killed for lack "
                           "of memory?) — run `tauml prepare` again: it resumes where the step stopped") from None
    finally:
        receive.close()
    process.join()
    if status == "failed":
        raise value
    return value


# Each step: (preset, workers, progress) -> one line saying what was built (or found in the cache).  The imports
# sit inside so that importing this module (tauml --help, tauml prepare --list) imports no torch.


def _data(p: Preset, workers: int | None, progress: bool) -> str:

    data = pipeline.dataset(p, progress=progress)
    if p.data != "generated":
        jets = sum(entry["jets"] for entry in data.manifest["samples"].values())
        return f"{jets:,} jets in the files of {data.root}"
    events = sum(entry["events"] for entry in data.manifest["samples"].values())
    return f"{events:,} events in {data.root}"


def _detector(p: Preset, workers: int | None, progress: bool) -> str:

    study = pipeline.detector_study(p, pipeline.DETECTOR_STUDY_EVENTS)
    return (f"{pipeline.DETECTOR_STUDY_EVENTS} events each: {len(study['realistic'])} tau jets (realistic), "
            f"{len(study['ideal'])} (ideal)")


def _tokenizer(p: Preset, workers: int | None, progress: bool) -> str:

    tokenizer = pipeline.tokenizer(p, progress=progress)
    return f"codebook of {tokenizer.codebook_size} in {pipeline.tokenizer_dir(p)}"


def _variants(p: Preset, workers: int | None, progress: bool) -> str:

    tokenizers = tokenization.variant_tokenizers(p, tokenization.NOTEBOOK_VARIANTS)
    return f"{len(tokenizers) - 1} variant(s): {', '.join(n for n in tokenizers if n != 'preset') or 'none'}"


def _backbone(p: Preset, workers: int | None, progress: bool) -> str:

    return f"backbone in {pipeline.backbone_checkpoint(p, progress=progress)}"


def _finetuning(p: Preset, workers: int | None, progress: bool) -> str:

    results = comparison.run_comparison(
        p, tasks=comparison.NOTEBOOK_TASKS, models=comparison.NOTEBOOK_MODELS, seeds=comparison.NOTEBOOK_SEEDS,
        train_size=comparison.NOTEBOOK_TRAIN_SIZE, epochs=comparison.NOTEBOOK_EPOCHS,
        unfreeze_epoch=comparison.NOTEBOOK_UNFREEZE_EPOCH, progress=progress, workers=workers)
    n = sum(len(runs) for by_model in results.values() for runs in by_model.values())
    return (f"{n} trainings: {len(results)} tasks x {len(comparison.NOTEBOOK_MODELS)} models x "
            f"{len(comparison.NOTEBOOK_SEEDS)} seeds, {comparison.NOTEBOOK_TRAIN_SIZE} jets, "
            f"{comparison.NOTEBOOK_EPOCHS} epochs")


def _embeddings(p: Preset, workers: int | None, progress: bool) -> str:

    seeds = tuple(dict.fromkeys((embeddings.NOTEBOOK_SEED, *embeddings.NOTEBOOK_SEEDS)))
    configs = [embeddings.finetuning_config(p, embeddings.NOTEBOOK_TASK, seed) for seed in seeds]
    finetune_many(p, configs, workers=workers, progress=progress)
    return f"{len(configs)} fine-tunings ({embeddings.NOTEBOOK_TASK}, seeds {', '.join(map(str, seeds))})"


def _ablations(p: Preset, workers: int | None, progress: bool) -> str:

    records = ablations.run_ablations(p, tasks=ablations.NOTEBOOK_TASKS, workers=workers, progress=progress)
    keys = {point["key"] for by_task in records.values() for points in by_task.values() for point in points}
    return f"{len(keys)} scan points (shared points once) in the preset's scan store"


def _beyond_tokens(p: Preset, workers: int | None, progress: bool) -> str:

    results = beyond_tokens.run_variants(
        p, variants=beyond_tokens.NOTEBOOK_VARIANTS, tasks=beyond_tokens.NOTEBOOK_TASKS,
        references=beyond_tokens.NOTEBOOK_REFERENCES, seeds=beyond_tokens.NOTEBOOK_SEEDS,
        pretrain_epochs=beyond_tokens.NOTEBOOK_PRETRAIN_EPOCHS, train_size=beyond_tokens.NOTEBOOK_TRAIN_SIZE,
        epochs=beyond_tokens.NOTEBOOK_EPOCHS, unfreeze_epoch=beyond_tokens.NOTEBOOK_UNFREEZE_EPOCH,
        progress=progress, workers=workers)
    n = sum(len(runs) for by_model in results.values() for runs in by_model.values())
    return f"{len(beyond_tokens.NOTEBOOK_VARIANTS)} backbones, {n} trainings"


def _scaling(p: Preset, workers: int | None, progress: bool) -> str:

    points = 0
    for kind in ("jets", "width"):
        curve = beyond_tokens.run_scaling(p, kind, progress=progress, workers=workers)
        points += len(next(iter(curve.values())))
    return f"{points} backbones, each fine-tuned on {len(beyond_tokens.NOTEBOOK_TASKS)} tasks x " \
           f"{len(beyond_tokens.SCALING_SEEDS)} seeds"


def _joint(p: Preset, workers: int | None, progress: bool) -> str:

    records = joint_study.run_study(p, progress=progress, workers=workers)
    return f"{sum(len(r) for r in records.values())} event classifiers ({', '.join(records)})"


_STEP_FUNCTIONS: dict[str, Callable[[Preset, int | None, bool], Any]] = {
    "data": _data, "detector": _detector, "tokenizer": _tokenizer, "variants": _variants, "backbone": _backbone,
    "finetuning": _finetuning, "embeddings": _embeddings, "ablations": _ablations,
    "beyond_tokens": _beyond_tokens, "scaling": _scaling, "joint": _joint,
}
