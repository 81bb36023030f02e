"""The ``tauml`` command line.

    tauml generate --preset demo [--out DIR]             the embedded datasets of a preset
    tauml generate --sample z --events 5000 --seed 1 --out DIR
    tauml fetch NAME                                    a real dataset file from data_manifest.yaml
    tauml train-tokenizer --preset demo                 the VQ-VAE tokenizer on the pp jets
    tauml pretrain --preset demo                        the GPT backbone, by next-token prediction
    tauml pretrain --preset paper --data ~/data         ... on the released Fu(tau)ure / JetClass files (any step)
    tauml finetune --task reg --strategy fine_tuning --unfreeze-epoch 10 --gpt-blocks 3 --train-size 2000 --seed 1
    tauml evaluate --task reg --strategy fine_tuning ... --out metrics.json
    tauml scan --task reg --kind unfreeze               ablations and data-efficiency scans (unfreeze|blocks|train_size)
    tauml generate --joint                              the joint analysis's event samples (notebook 06)
    tauml joint --case hh4b --repr s_hlf --strategy finetuned   event-level joint analysis (--all: Tables II-IV)
    tauml prepare --preset demo [--steps data ...]      build in advance all the notebooks train (a warm start)
    tauml demo [--preset demo] [--results results]      the notebook series, headless
    tauml info [--preset demo]                          settings and cache locations
    tauml import-omnijet CKPT --kind backbone|tokenizer --out PATH   a released OmniJet-alpha checkpoint

Every step is cached by configuration: running it again returns at once, an interrupted run resumes.
Every expected failure ends in one line, ``tauml <command>: error: <what> — <what to do>``, and exit code 2;
the options are checked before anything is built.
"""

# Imports of tauml's heavy modules (torch, awkward, the pipeline) stay inside the commands: `tauml --help` and
# argument errors must answer at once, without importing torch.

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import replace

from tauml.config import (
    ALL_SAMPLES,
    BASELINES,
    PRESETS,
    STRATEGIES,
    TASKS,
    TOKENIZER_DOMAINS,
    ConfigError,
    get_preset,
    to_dict,
    with_data,
)
from tauml.evaluation.tasks import headline_metric
from tauml.utils import ENV_SCHEDULER, error_sentence, is_expected_error

COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {}

#: The metrics a scan point of each task stores (tauml.evaluation.metrics.evaluate_task), and those every
#: point has (its history summary): what ``tauml scan --metric`` accepts, checked before anything trains.
SCAN_METRICS: dict[str, tuple[str, ...]] = {
    "id": ("misid_at_80", "auc", "misid_at_80_stat"),
    "reg": ("resolution", "median", "iqr", "q25", "q75", "mean", "std"),
    "dm": ("weighted_auc", "accuracy", "macro_f1"),
}
HISTORY_METRICS: tuple[str, ...] = ("best_val_loss", "final_val_loss", "final_train_loss")


def command(name: str):
    def register(func: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
        COMMANDS[name] = func
        return func

    return register


def _print_generation_summary(data) -> None:
    print(f"data in {data.root}")
    for sample, entry in data.manifest["samples"].items():
        rate = entry.get("events_per_cpu_second")
        jets = entry.get("jets_per_cpu_second")
        sigma = f"   sigma {entry['sigma_fb']:.4g} fb (Pythia)" if "sigma_fb" in entry else ""
        print(f"  {sample:12s} {entry['events']:9d} events {entry['jets']:8d} jets "
              f"{entry['bytes'] / 1e6:8.1f} MB   {rate or 0:7.1f} events/s/core {jets or 0:7.1f} jets/s/core{sigma}")


@command("generate")
def cmd_generate(args: argparse.Namespace) -> int:
    from tauml.data.generate import generate, generate_cached

    config = get_preset(args.preset).generation
    if args.joint:
        from tauml.config import JOINT_GENERATION

        config = JOINT_GENERATION.get(args.preset, JOINT_GENERATION["demo"])
    _positive(args, "events", "chunk_events", "workers")
    if args.out and os.path.exists(args.out) and not os.path.isdir(args.out):
        raise ConfigError(f"--out {args.out} is a file — give a new or empty folder")
    if args.sample:
        if args.events is None:
            raise ConfigError("--sample needs --events N")
        config = replace(config, events={args.sample: args.events})
    elif args.events is not None:
        raise ConfigError("--events needs --sample NAME (or use a preset)")
    if args.seed is not None:
        config = replace(config, seed=args.seed)
    if args.chunk_events:
        config = replace(config, chunk_events=args.chunk_events)
    if args.ideal:
        config = replace(config, ee_detector=replace(config.ee_detector, realistic=False),
                         pp_detector=replace(config.pp_detector, realistic=False))
    config.validate()
    if args.out:
        data = generate(config, args.out, workers=args.workers, progress=not args.quiet, scheduler=args.scheduler)
    else:
        data = generate_cached(config, workers=args.workers, progress=not args.quiet, scheduler=args.scheduler)
    _print_generation_summary(data)
    return 0


@command("fetch")
def cmd_fetch(args: argparse.Namespace) -> int:
    from tauml.data.manifest import fetch, file_hash, file_names, local_path

    if args.list or not args.name:
        print("\n".join(file_names()))
        return 0
    if args.print_hash:
        path = local_path(args.name)
        if not path.exists():
            raise FileNotFoundError(f"{path} does not exist: download {args.name} first (tauml fetch {args.name})")
        print(file_hash(path, "md5"))
        print(file_hash(path, "sha256"))
        return 0
    print(fetch(args.name, progress=not args.quiet, extract=args.extract))
    return 0


@command("train-tokenizer")
def cmd_train_tokenizer(args: argparse.Namespace) -> int:
    from tauml import pipeline
    from tauml.evaluation.tokenization import tokenization_metrics

    preset = _preset_of(args)
    tokenizer = pipeline.tokenizer(preset, progress=not args.quiet)
    split = pipeline.tokenizer_split(preset)
    metrics = tokenization_metrics(tokenizer, split.val)
    print(f"tokenizer in {pipeline.tokenizer_dir(preset)}")
    print(f"  codebook {tokenizer.codebook_size}: utilisation {metrics['utilisation']:.3f}, "
          f"perplexity {metrics['perplexity']:.1f} on {len(split.val)} validation jets")
    print(f"  particle type accuracy {metrics['pid_accuracy']:.4f}, charge accuracy {metrics['charge_accuracy']:.4f}")
    return 0


@command("pretrain")
def cmd_pretrain(args: argparse.Namespace) -> int:
    from tauml import pipeline

    preset = _preset_of(args)
    path = pipeline.backbone_checkpoint(preset, progress=not args.quiet)
    history = pipeline.backbone_history(preset)
    best = history["epochs"][history["best_epoch"]]
    print(f"backbone in {path}")
    print(f"  best epoch {history['best_epoch'] + 1}: validation perplexity {best['val_perplexity']:.1f} "
          f"(unigram baseline {history['unigram_perplexity']:.1f}), {best['tokens_per_s']:.0f} tokens/s")
    return 0


def _finetune_config(args: argparse.Namespace):
    preset = _preset_of(args)
    changes = {"task": args.task, "strategy": args.strategy}
    for name in ("unfreeze_epoch", "train_size", "val_size", "seed", "epochs", "batch_size", "lr", "device"):
        value = getattr(args, name)
        if value is not None:
            changes[name] = value
    if args.gpt_blocks is not None:
        changes["n_gpt_blocks"] = args.gpt_blocks
    config = replace(preset.finetune, **changes)
    config.validate()
    _positive(args, "train_size", "val_size", "epochs", "batch_size")
    if args.unfreeze_epoch is not None and config.strategy != "fine_tuning":
        raise ConfigError(f"--unfreeze-epoch applies to --strategy fine_tuning only, not {config.strategy} — drop "
                          "it or choose fine_tuning")
    if args.gpt_blocks is not None and config.strategy in BASELINES:
        raise ConfigError(f"--gpt-blocks applies to the GPT strategies only, not the baseline {config.strategy} — "
                          "drop it or choose a GPT strategy")
    if config.strategy == "fine_tuning" and config.unfreeze_epoch > config.epochs:
        raise ConfigError(f"--unfreeze-epoch {config.unfreeze_epoch} is past the last epoch (--epochs "
                          f"{config.epochs}): the backbone would never be unfrozen — choose 0..{config.epochs} "
                          "or --strategy fixed_backbone")
    if config.strategy == "fine_tuning" and config.unfreeze_epoch == config.epochs:
        print(f"note: --unfreeze-epoch {config.unfreeze_epoch} = --epochs: the backbone is never unfrozen; this is "
              "the fixed backbone's training (cached once for both)", file=sys.stderr)
    from tauml.pipeline.finetuning import check_device, resolve  # torch: only training commands pay

    resolve(preset, config)  # the same checks as the library's (e.g. more GPT blocks than the backbone has)
    out = getattr(args, "out", None)
    if out and os.path.isdir(out):
        raise ConfigError(f"--out {out} is a folder — give the path of a JSON file")
    if out and os.path.exists(out) and not args.overwrite:
        raise FileExistsError(f"{out} exists — choose another path or pass --overwrite to replace it")
    check_device(config.device)
    return preset, config


def _preset_of(args: argparse.Namespace, check: bool = True):
    """The preset of ``--preset`` reading the data of ``--data`` (the preset's own when not given).  With ``check``,
    a preset on files resolves and checks them now (tauml.pipeline.data_files), so that missing or malformed data
    stop the command at once, before anything is built."""
    preset = get_preset(with_data(args.preset, getattr(args, "data", None)))
    if getattr(args, "scheduler", None):  # where the shards of a streamed training are built (tauml.utils.dask_client)
        os.environ[ENV_SCHEDULER] = args.scheduler
    domain = getattr(args, "tokenizer_on", None)
    if domain is not None and domain != preset.tokenizer.train_on:  # the tokenizer, and all built on it, change
        preset = replace(preset, tokenizer=replace(preset.tokenizer, train_on=domain))
    if check and preset.data != "generated":
        from tauml import pipeline  # torch: only the commands that train pay

        pipeline.data_files(preset)
    return preset


def _positive(args: argparse.Namespace, *names: str) -> None:
    """Refuse a numeric option that is given but not positive."""
    for name in names:
        value = getattr(args, name, None)
        if value is not None and value <= 0:
            raise ConfigError(f"--{name.replace('_', '-')} {value} must be positive — give a number above 0")


@command("finetune")
def cmd_finetune(args: argparse.Namespace) -> int:
    from tauml.pipeline.finetuning import finetune

    preset, config = _finetune_config(args)
    result = finetune(preset, config, progress=not args.quiet)
    print(f"{config.task} with {config.strategy}: best epoch {result.best_epoch + 1} of {config.epochs}, "
          f"results in {result.folder}")
    for key, value in result.headline.items():
        print(f"  {key:14s} {value:.4f}")
    for key in ("resolution", "median", "accuracy"):
        if key in result.reference:
            print(f"  no-learning reference {key}: {result.reference[key]:.4f}")
    return 0


@command("evaluate")
def cmd_evaluate(args: argparse.Namespace) -> int:
    from tauml.cache import write_json
    from tauml.pipeline.finetuning import finetune

    preset, config = _finetune_config(args)
    result = finetune(preset, config, progress=not args.quiet)
    payload = {"config": to_dict(result.config), "metrics": result.metrics, "reference": result.reference,
               "best_epoch": result.best_epoch, "preset": preset.name}
    if args.out:
        if os.path.exists(args.out) and not args.overwrite:  # checked before training too; written meanwhile?
            raise FileExistsError(f"{args.out} exists — choose another path or pass --overwrite to replace it")
        write_json(args.out, payload)
        print(f"metrics written to {args.out}")
    else:
        print(json.dumps(payload, indent=2, default=str))
    return 0


@command("scan")
def cmd_scan(args: argparse.Namespace) -> int:
    from tauml.pipeline.scan import ScanStore, build_scan, run_scan, summarize
    from tauml.studies.report import markdown_table

    preset = _preset_of(args)
    _positive(args, "epochs")
    tasks = [args.task] if args.task != "all" else list(TASKS)
    known = [m for m in dict.fromkeys(sum((SCAN_METRICS[t] for t in tasks), ())) if all(
        m in SCAN_METRICS[t] for t in tasks)] + list(HISTORY_METRICS)
    if args.metric is not None and args.metric not in known:
        raise ConfigError(f"--metric {args.metric!r} is not a metric of --task {args.task} — choose from "
                          f"{', '.join(known)}")
    if args.train_sizes and min(args.train_sizes) <= 0:
        raise ConfigError(f"--train-sizes {args.train_sizes} must all be positive — give sizes above 0")
    scan = preset.scan
    if args.seeds:
        scan = replace(scan, seeds=tuple(args.seeds))
    if args.train_sizes:
        scan = replace(scan, train_sizes=tuple(args.train_sizes))
    base = replace(preset.finetune, epochs=args.epochs) if args.epochs else None
    store = ScanStore.for_preset(preset)
    by = {"unfreeze": "unfreeze_epoch", "blocks": "n_gpt_blocks", "train_size": "train_size"}[args.kind]
    metric = args.metric or (headline_metric(args.task) if args.task != "all" else None)
    for task in ([args.task] if args.task != "all" else list(TASKS)):
        if args.task == "all":
            metric = args.metric or headline_metric(task)
        points = build_scan(preset, args.kind, task, base=base, scan=scan,
                            strategies=tuple(args.strategies) if args.strategies else STRATEGIES)
        records = run_scan(points, store, progress=not args.quiet)
        print(f"{task}: {len(points)} points ({metric}, mean ± std over seeds) stored in {store.root}")
        print(markdown_table(summarize(records, by=by, metric=metric)))
    return 0


@command("joint")
def cmd_joint(args: argparse.Namespace) -> int:
    from tauml.config import JointConfig
    from tauml.studies import joint as study  # torch: only once the command runs
    from tauml.studies.report import markdown_table

    _positive(args, "epochs_frozen", "epochs_e2e", "batch_size")
    if args.lookahead_k is not None and args.lookahead_k < 0:
        raise ConfigError(f"--lookahead-k {args.lookahead_k} must be 0 (RAdam alone) or a number of steps, e.g. 6")
    if args.train_sizes and min(args.train_sizes) <= 0:
        raise ConfigError(f"--train-sizes {args.train_sizes} must all be positive — give sizes above 0")
    if args.seeds and len(set(args.seeds)) != len(args.seeds):
        raise ConfigError(f"--seeds {args.seeds} must be distinct")
    if args.all:  # foundation starts from tauml's GPT backbone: it has no ParticleTransformer version
        models = tuple(m for m in study.ALL_MODELS if args.jet_model == "gpt" or m[1] != "foundation")
    else:
        models = tuple((r, s) for r in (args.repr or ["s_hlf"]) for s in (args.strategy or ["frozen"]))
    settings = {k: v for k, v in (("epochs_frozen", args.epochs_frozen), ("epochs_e2e", args.epochs_e2e),
                                  ("batch_size", args.batch_size), ("lookahead_k", args.lookahead_k),
                                  ("device", args.device)) if v is not None}
    sizes = tuple(args.train_sizes or study.NOTEBOOK_TRAIN_SIZES)
    seeds = tuple(args.seeds or study.NOTEBOOK_SEEDS)
    for point in study.study_points(args.case, models, sizes, seeds, args.jet_model, **settings):
        JointConfig.validate(point)  # every option checked before anything trains
    records = study.run_study(args.preset, [args.case], models, sizes, seeds, args.jet_model,
                              progress=not args.quiet, **settings)[args.case]
    print(f"{args.case}: {len(records)} points (jet model {args.jet_model}, mean ± std over seeds {list(seeds)})")
    print("\nBackground rejection at 90 % signal efficiency (Table II), largest size:")
    print(markdown_table(study.rejection_table(records)))
    print("\nAUC:")
    print(markdown_table(study.rejection_table(records, metric="auc")))
    if len(sizes) > 1 and ("s_hlf", "frozen") in models:
        print("\nData efficiency against S+HLF frozen (Table III):")
        print(markdown_table(study.efficiency_table(records)))
    if any(r == "s_hlf" and s != "frozen" for r, s in models):
        print("\nThe learned scalar as a jet tagger (Table IV):")
        print(markdown_table(study.drift_table(args.preset, args.case, records)))
    return 0


@command("prepare")
def cmd_prepare(args: argparse.Namespace) -> int:
    # torch only once a step runs
    from tauml.studies.prepare import OPTIONAL_STEPS, STEPS, check_steps, prepare

    if args.list:
        for name, (notebook, what) in STEPS.items():
            optional = " (optional: only with --steps)" if name in OPTIONAL_STEPS else ""
            print(f"{name:13s} {notebook:17s} {what}{optional}")
        return 0
    _positive(args, "workers")
    check_steps(args.steps)  # before anything is built
    prepare(_preset_of(args), steps=args.steps, workers=args.workers, progress=not args.quiet)
    return 0


@command("demo")
def cmd_demo(args: argparse.Namespace) -> int:
    from tauml.demo import print_summary, run_series

    _preset_of(args)  # a data source that does not exist or holds no data files stops here, before any notebook
    summary = run_series(args.preset, args.results, notebooks=args.notebooks or None, data=args.data)
    print_summary(summary)
    return 0


@command("import-omnijet")
def cmd_import_omnijet(args: argparse.Namespace) -> int:
    from tauml.models.omnijet import import_omnijet

    _positive(args, "n_head", "affine_lr")
    report = import_omnijet(args.checkpoint, args.kind, args.out, n_head=args.n_head, affine_lr=args.affine_lr,
                            as_initialisation=args.as_initialisation, overwrite=args.overwrite)
    print("\n".join(report.lines()))
    return 0


@command("info")
def cmd_info(args: argparse.Namespace) -> int:
    from tauml.cache import cache_dir

    preset = _preset_of(args, check=False)
    print(json.dumps({"preset": to_dict(preset), "cache_dir": str(cache_dir())}, indent=2))
    return 0


DATA_HELP = ("where the data come from: 'generated' (the preset's generated events), 'files' (what `tauml fetch` "
             "stored), or a folder, file or glob of Fu(tau)ure / JetClass files in the released layouts (several "
             "joined by ':'); default: the preset's own (demo, medium: generated; paper: files). docs/data.md")


def _data_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", metavar="PATH|generated|files", help=DATA_HELP)
    parser.add_argument("--tokenizer-on", choices=TOKENIZER_DOMAINS,
                        help="the jets the tokenizer learns from: pp (default, as the paper) or ee (every jet of the "
                        "e+e- training files; docs/tokenizer.md); the backbone and the fine-tunings follow it")
    _scheduler_option(parser, "the feature and token shards of a streamed training (one per input file)")


def _scheduler_option(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--scheduler", metavar="local|local:N|ADDRESS",
                        help=f"build {what} on dask: local (a LocalCluster, one worker per usable core), local:N "
                        "(N workers), or a dask scheduler's address such as tcp://host:8786 (an HTCondor or Slurm "
                        "dask deployment; its workers must see the files and tauml's cache); default: "
                        "$TAUML_DASK_SCHEDULER, else here")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tauml", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("generate", help="generate events with Pythia 8, a detector model and fastjet")
    p.add_argument("--preset", default="demo", choices=sorted(PRESETS))
    p.add_argument("--sample", choices=ALL_SAMPLES, help="generate one sample only")
    p.add_argument("--events", type=int, help="number of events of --sample")
    p.add_argument("--seed", type=int)
    p.add_argument("--chunk-events", type=int, help="events per chunk (the unit of resuming)")
    p.add_argument("--ideal", action="store_true", help="switch off the particle-flow imperfections")
    p.add_argument("--joint", action="store_true", help="the joint analysis's event samples instead (notebook 06)")
    p.add_argument("--out", help="output folder (default: tauml's cache, by configuration)")
    p.add_argument("--workers", type=int, help="worker processes (default: all usable cores)")
    _scheduler_option(p, "the chunks of events (instead of --workers processes here)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")

    p = sub.add_parser("fetch", help="download a real dataset file listed in data_manifest.yaml")
    p.add_argument("name", nargs="?", help="a file name from the manifest (see --list)")
    p.add_argument("--list", action="store_true", help="list the files the manifest knows")
    p.add_argument("--print-hash", action="store_true", help="print the md5 and sha256 of a downloaded file")
    p.add_argument("--extract", action="store_true", help="unpack a .tar archive after downloading it")
    p.add_argument("--quiet", action="store_true")

    p = sub.add_parser("train-tokenizer", help="train the preset's VQ-VAE tokenizer on the pp jets (cached)")
    p.add_argument("--preset", default="demo", choices=sorted(PRESETS))
    _data_option(p)
    p.add_argument("--quiet", action="store_true")

    p = sub.add_parser("pretrain", help="pretrain the preset's GPT backbone by next-token prediction (cached)")
    p.add_argument("--preset", default="demo", choices=sorted(PRESETS))
    _data_option(p)
    p.add_argument("--quiet", action="store_true")

    for name, text in (("finetune", "train a tau model on one task with one strategy (cached)"),
                       ("evaluate", "the test metrics of a (cached) training, as JSON")):
        p = sub.add_parser(name, help=text)
        p.add_argument("--preset", default="demo", choices=sorted(PRESETS))
        _data_option(p)
        p.add_argument("--task", required=True, choices=TASKS)
        p.add_argument("--strategy", required=True, choices=STRATEGIES + BASELINES)
        p.add_argument("--unfreeze-epoch", type=int, help="fine_tuning: epoch at which the backbone is unfrozen")
        p.add_argument("--gpt-blocks", type=int, help="number of pretrained GPT blocks to use (default all)")
        p.add_argument("--train-size", type=int)
        p.add_argument("--val-size", type=int)
        p.add_argument("--epochs", type=int)
        p.add_argument("--batch-size", type=int)
        p.add_argument("--lr", type=float)
        p.add_argument("--seed", type=int)
        p.add_argument("--device", help="auto, cpu or cuda")
        p.add_argument("--quiet", action="store_true")
        if name == "evaluate":
            p.add_argument("--out", help="write the metrics to this JSON file")
            p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")

    p = sub.add_parser("scan", help="ablation and data-efficiency scans, several seeds per point (cached per point)")
    p.add_argument("--preset", default="demo", choices=sorted(PRESETS))
    _data_option(p)
    p.add_argument("--task", required=True, choices=(*TASKS, "all"))
    p.add_argument("--kind", required=True, choices=("unfreeze", "blocks", "train_size"))
    p.add_argument("--strategies", nargs="*", choices=STRATEGIES + BASELINES,
                   help="strategies of the training-size scan (default: the three)")
    p.add_argument("--seeds", nargs="*", type=int, help="seeds per point (default: the preset's, at least three)")
    p.add_argument("--train-sizes", nargs="*", type=int, help="training-set sizes of the training-size scan")
    p.add_argument("--epochs", type=int)
    p.add_argument("--metric", help="metric to summarise (default: the task's headline metric)")
    p.add_argument("--quiet", action="store_true")

    p = sub.add_parser("joint", help="the joint analysis (arXiv:2401.13536): event classifiers from jet representations, "
                       "strategies and training sizes, several seeds (cached per point; notebook 06)")
    p.add_argument("--preset", default="demo", choices=sorted(PRESETS))
    p.add_argument("--case", required=True, choices=("hh4b", "zh_tautau"))
    p.add_argument("--repr", nargs="+", choices=("s_hlf", "v_hlf", "v"), help="jet representations (default s_hlf)")
    p.add_argument("--strategy", nargs="+", choices=("frozen", "finetuned", "from_scratch", "foundation"),
                   help="strategies (default frozen)")
    p.add_argument("--all", action="store_true",
                   help="the full grid of Table II plus the foundation init (gpt only)")
    p.add_argument("--jet-model", default="gpt", choices=("gpt", "part"))
    p.add_argument("--train-sizes", nargs="+", type=int, help="training events (default: notebook 06's)")
    p.add_argument("--seeds", nargs="+", type=int, help="seeds per point (default: notebook 06's three)")
    p.add_argument("--epochs-frozen", type=int)
    p.add_argument("--epochs-e2e", type=int)
    p.add_argument("--batch-size", type=int, help="events per batch (default 32)")
    p.add_argument("--lookahead-k", type=int,
                   help="wrap the end-to-end RAdam in Lookahead with this k (the paper: 6; default 0, off)")
    p.add_argument("--device", help="auto, cpu or cuda")
    p.add_argument("--quiet", action="store_true")

    p = sub.add_parser("prepare", help="build in advance everything the notebooks train: data, tokenizers, backbone, "
                       "fine-tunings, scan points (cached; a warm start for a class or Binder)")
    p.add_argument("--preset", default="demo", choices=sorted(PRESETS))
    _data_option(p)
    p.add_argument("--steps", nargs="+", metavar="STEP",
                   help="only these steps, e.g. data tokenizer backbone (default: all; see --list)")
    p.add_argument("--list", action="store_true", help="list the steps, the notebook each serves and what it builds")
    p.add_argument("--workers", type=int, help="trainings side by side (default: as the cores and the memory allow)")
    p.add_argument("--quiet", action="store_true", help="no progress bars (each step still prints a line)")

    p = sub.add_parser("demo", help="generate the data and run the notebook series headless")
    p.add_argument("--preset", default="demo", choices=sorted(PRESETS))
    _data_option(p)
    p.add_argument("--results", default="results", help="folder for executed notebooks, figures, summary.json")
    p.add_argument("--notebooks", nargs="*", help="run only these notebooks (names without .ipynb)")

    p = sub.add_parser("info", help="print a preset's settings and the cache folder")
    p.add_argument("--preset", default="demo", choices=sorted(PRESETS))
    _data_option(p)

    p = sub.add_parser("import-omnijet", help="read a released OmniJet-alpha checkpoint into a tauml one "
                                              "(docs/omnijet.md)")
    p.add_argument("checkpoint", help="the OmniJet-alpha Lightning checkpoint (.ckpt), read with weights_only")
    p.add_argument("--kind", required=True, choices=("backbone", "tokenizer"))
    p.add_argument("--out", required=True, help="the tauml checkpoint to write")
    p.add_argument("--n-head", type=int, help="attention heads, when the checkpoint's hyper-parameters are stripped")
    p.add_argument("--affine-lr", type=float, help="tokenizer: vqtorch's affine_lr, when not recorded in the file")
    p.add_argument("--as-initialisation", action="store_true",
                   help="backbone: write the weights although tauml's GPT computes another function with them")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    return parser


#: Commands that train data-parallel under ``torchrun --nproc-per-node N -m tauml.cli ...`` (docs/training.md).
DISTRIBUTED_COMMANDS = ("train-tokenizer", "pretrain", "finetune", "evaluate")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if int(os.environ.get("WORLD_SIZE", "1")) > 1 and args.command in DISTRIBUTED_COMMANDS:
            return _run_distributed(args)
        return COMMANDS[args.command](args)
    except Exception as err:  # expected failures (bad options, inputs, files, cache) in one line; bugs as tracebacks
        if not is_expected_error(err):
            raise
        print(f"tauml {args.command}: error: {error_sentence(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"tauml {args.command}: interrupted; run the same command again to resume", file=sys.stderr)
        return 130


def _run_distributed(args: argparse.Namespace) -> int:
    """One rank of a torchrun launch: join the process group, run the command (rank 0 prints), leave."""
    import contextlib

    from tauml.training import distributed

    distributed.init()
    try:
        with open(os.devnull, "w") as quiet, (contextlib.redirect_stdout(quiet) if not distributed.is_main()
                                              else contextlib.nullcontext()):
            return COMMANDS[args.command](args)
    finally:
        distributed.close()


if __name__ == "__main__":
    raise SystemExit(main())
