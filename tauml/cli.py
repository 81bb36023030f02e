"""The ``tauml`` command line.

    tauml generate --preset demo [--out DIR]             the embedded datasets of a preset
    tauml generate --sample z --events 5000 --seed 1 --out DIR
    tauml fetch NAME                                    a real dataset file from data_manifest.yaml
    tauml info [--preset demo]                          settings and cache locations

Later subcommands (train-tokenizer, pretrain, finetune, evaluate, scan, demo) are registered below.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import replace

from tauml.config import ALL_SAMPLES, PRESETS, ConfigError, get_preset, to_dict

COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {}


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
        print(f"  {sample:12s} {entry['events']:9d} events {entry['jets']:8d} jets "
              f"{entry['bytes'] / 1e6:8.1f} MB   {rate or 0:7.1f} events/s/core {jets or 0:7.1f} jets/s/core")


@command("generate")
def cmd_generate(args: argparse.Namespace) -> int:
    from tauml.data.generate import generate, generate_cached

    config = get_preset(args.preset).generation
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
        data = generate(config, args.out, workers=args.workers, progress=not args.quiet)
    else:
        data = generate_cached(config, workers=args.workers, progress=not args.quiet)
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


@command("demo")
def cmd_demo(args: argparse.Namespace) -> int:
    from tauml.demo import print_summary, run_series

    summary = run_series(args.preset, args.results, notebooks=args.notebooks or None)
    print_summary(summary)
    return 0


@command("info")
def cmd_info(args: argparse.Namespace) -> int:
    from tauml.cache import cache_dir

    preset = get_preset(args.preset)
    print(json.dumps({"preset": to_dict(preset), "cache_dir": str(cache_dir())}, indent=2))
    return 0


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
    p.add_argument("--out", help="output folder (default: tauml's cache, by configuration)")
    p.add_argument("--workers", type=int, help="worker processes (default: all usable cores)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")

    p = sub.add_parser("fetch", help="download a real dataset file listed in data_manifest.yaml")
    p.add_argument("name", nargs="?", help="a file name from the manifest (see --list)")
    p.add_argument("--list", action="store_true", help="list the files the manifest knows")
    p.add_argument("--print-hash", action="store_true", help="print the md5 and sha256 of a downloaded file")
    p.add_argument("--extract", action="store_true", help="unpack a .tar archive after downloading it")
    p.add_argument("--quiet", action="store_true")

    p = sub.add_parser("demo", help="generate the data and run the notebook series headless")
    p.add_argument("--preset", default="demo", choices=sorted(PRESETS))
    p.add_argument("--results", default="results", help="folder for executed notebooks, figures, summary.json")
    p.add_argument("--notebooks", nargs="*", help="run only these notebooks (names without .ipynb)")

    p = sub.add_parser("info", help="print a preset's settings and the cache folder")
    p.add_argument("--preset", default="demo", choices=sorted(PRESETS))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except (ConfigError, ValueError, FileNotFoundError) as err:
        print(f"tauml {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"tauml {args.command}: interrupted; run the same command again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
