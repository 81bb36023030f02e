"""Peak memory and throughput of the training-data path at 1x, 4x and 16x the demo's data.

    nice -n 10 python benchmarks/bench_memory.py [--scales 1 4 16] [--out bench-memory] [--epochs 1] [--max-batches N]

``--max-batches N`` trains only the first N batches of each epoch (all data are still read and held, so the peak
memory is that of a full epoch; throughput is measured on those batches).  The table in docs/training.md was made
with ``--scales 1`` and ``--scales 4 16 --max-batches 100``; results of several calls add up in ``OUT/results.json``.

The demo's generated JetClass-layout pp files (``<Sample>_NNN.root``) and its Fu(tau)ure ``z_train.parquet`` are
replicated into ``OUT/x1``, ``OUT/x4``, ``OUT/x16`` (the same jets N times, under new file numbers), and every
step runs in a fresh Python process whose peak resident memory (``getrusage`` max RSS) is reported; the models are
small (:data:`SMALL_GPT`, :data:`SMALL_TOKENIZER`: it is about the data path's memory, not physics):

* ``imports``: the floor every step starts from (Python, torch, tauml's modules; no data),
* ``tokenize``: the pp files into token shards (chunked reading, float32 features per chunk, one shard per file),
* ``tokenizer``: VQ-VAE tokenizer training (the demo's settings, ``--epochs``), on all pp jets in memory,
* ``tokenizer-stream``: the same training streamed from feature shards (``TokenizerConfig.streaming``; the shards
  are built in the step: reading, float32 features per chunk, one shard per file),
* ``pretrain-stream``: GPT pretraining streamed from the shards (``PretrainConfig.streaming``),
* ``pretrain-memory``: the same pretraining with all tokens padded in memory (today's default path),
* ``finetune``: the from-scratch decay-mode model on all replicated ``z`` training jets, in memory,
* ``finetune-2000``: the same on 2,000 of them (the demo's training size: the files are still read whole, as
  ``pipeline.tau_jets`` does).

Inputs come from tauml's cache (the demo's data and tokenizer; built with ``tauml prepare`` first).  Writes go to
a private cache under OUT (the demo's entries are linked, not copied).  Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

#: Small models: the benchmark is about the data path's memory, not about physics.
SMALL_GPT = {"n_layer": 1, "n_head": 2, "n_embd": 32, "ffn_dim": 64}
SMALL_TOKENIZER = {"hidden_dim": 32, "n_blocks": 1, "n_heads": 2}
STEPS = ("imports", "tokenize", "tokenizer", "tokenizer-stream", "pretrain-stream", "pretrain-memory", "finetune",
         "finetune-2000")


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def replicate(source_pp: list[Path], source_z: Path, folder: Path, scale: int) -> None:
    """``scale`` copies of every pp file (numbered on) and of z_train.parquet into ``folder`` (hard links)."""
    if (folder / "done").exists():
        return
    shutil.rmtree(folder, ignore_errors=True)
    (folder / "jetclass").mkdir(parents=True)
    (folder / "fuure").mkdir(parents=True)
    by_sample: dict[str, list[Path]] = {}
    for f in source_pp:
        by_sample.setdefault(f.name.rsplit("_", 1)[0], []).append(f)
    for sample, files in by_sample.items():
        for copy in range(scale):
            for i, f in enumerate(files):
                os.link(f, folder / "jetclass" / f"{sample}_{copy * len(files) + i:03d}.root")
    for copy in range(scale):
        os.link(source_z, folder / "fuure" / f"z_train_{copy:03d}.parquet")
    (folder / "done").write_text("")


def limit_batches(max_batches: int) -> None:
    """Train only the first ``max_batches`` batches of each epoch (all the data is still read and held: the peak
    memory is the full-data one; throughput is measured on those batches).  Benchmark-only patches."""
    import itertools

    from tauml.training import common, pretrain_stream, tokenizer

    class Limited:
        def __init__(self, batches):
            self.batches = batches

        def __len__(self):
            return min(max_batches, len(self.batches))

        def __iter__(self):
            return itertools.islice(iter(self.batches), max_batches)

    original_batches, original_bucketed = common.batches, common.bucketed_batches
    original_loader, original_epoch = pretrain_stream.loader, tokenizer._epoch_batches
    original_tokenizer_loader = tokenizer.loader
    common.batches = lambda *a, **k: itertools.islice(original_batches(*a, **k), max_batches)
    common.bucketed_batches = lambda *a, **k: original_bucketed(*a, **k)[:max_batches]
    pretrain_stream.loader = lambda *a, **k: Limited(original_loader(*a, **k))
    tokenizer._epoch_batches = lambda *a, **k: original_epoch(*a, **k)[:max_batches]
    tokenizer.loader = lambda *a, **k: Limited(original_tokenizer_loader(*a, **k))


def child(step: str, folder: Path, epochs: int, max_batches: int = 0) -> dict:
    """One measurement, in this (fresh) process."""
    import numpy as np
    import torch

    if max_batches:
        limit_batches(max_batches)

    from tauml import pipeline
    from tauml.config import DEMO, FinetuneConfig
    from tauml.data.features import JetArrays, jet_arrays
    from tauml.data.readers import read_fuure
    from tauml.pipeline.shards import build_shards
    from tauml.training.pretrain import pretrain
    from tauml.training.pretrain_stream import pretrain_streaming
    from tauml.training.streaming import split_parts

    torch.manual_seed(0)
    files = sorted(str(f) for f in (folder / "jetclass").glob("*.root"))
    preset = DEMO
    gpt = replace_(pipeline.gpt_config(preset), **SMALL_GPT)
    tok_dir = pipeline.tokenizer_dir(preset)
    tok_args = (tok_dir / pipeline.TOKENIZER_FILE, pipeline.tokenizer_key(preset), pipeline.tokenizer_digest(preset),
                preset.features, preset.features.max_constituents_jetclass)
    result: dict = {"step": step, "files": len(files)}
    start = time.perf_counter()
    if step == "imports":  # the floor: Python, torch and tauml's modules, no data
        result.update(jets=0, jets_per_s=0.0)
    elif step == "tokenize":
        shards = build_shards(files, *tok_args, progress=False)
        result.update(jets=sum(len(s) for s in shards), jets_per_s=sum(len(s) for s in shards) /
                      (time.perf_counter() - start))
    elif step == "tokenizer":
        from tauml.training.tokenizer import train_tokenizer

        jets = pipeline._pp_arrays(tuple(files), preset.features.max_constituents_jetclass)
        order = np.random.default_rng(1).permutation(len(jets))
        n_val = len(jets) // 10
        config = replace_(preset.tokenizer, epochs=epochs, **SMALL_TOKENIZER)
        out = folder / f"tok-{os.getpid()}"
        train_tokenizer(jets.subset(order[n_val:]), jets.subset(order[:n_val]), config, preset.features, out,
                        progress=False, device="cpu")
        record = json.loads((out / "history.json").read_text())[-1]
        shutil.rmtree(out, ignore_errors=True)
        result.update(jets=len(jets), jets_per_s=record["jets_per_s"])
    elif step == "tokenizer-stream":
        from tauml.pipeline.shards import feature_shards
        from tauml.training.tokenizer import train_tokenizer_streaming

        shards = feature_shards(files, preset.features, preset.features.max_constituents_jetclass, progress=False)
        train, val = split_parts(shards, 0.1, 1)
        config = replace_(preset.tokenizer, epochs=epochs, streaming=True, **SMALL_TOKENIZER)
        out = folder / f"tok-stream-{os.getpid()}"
        train_tokenizer_streaming(train, val, config, preset.features, out, progress=False, device="cpu")
        record = json.loads((out / "history.json").read_text())[-1]
        shutil.rmtree(out, ignore_errors=True)
        result.update(jets=sum(len(s) for s in shards), jets_per_s=record["jets_per_s"])
    elif step.startswith("pretrain"):
        shards = build_shards(files, *tok_args, progress=False)
        config = replace_(preset.pretrain, epochs=epochs, device="cpu", streaming=step == "pretrain-stream")
        out = folder / f"{step}-{os.getpid()}"
        if step == "pretrain-stream":
            train, val = split_parts(shards, config.val_fraction, config.seed)
            _, history = pretrain_streaming(train, val, gpt, config, out, progress=False)
        else:
            padded = [s.padded() for s in shards]  # today's path: every sequence padded, in memory
            tokens = np.concatenate([t for t, _ in padded])
            mask = np.concatenate([m for _, m in padded])
            del padded
            order = np.random.default_rng(config.seed).permutation(len(tokens))
            n_val = round(config.val_fraction * len(tokens))
            _, history = pretrain(tokens[order[n_val:]], mask[order[n_val:]], tokens[order[:n_val]],
                                  mask[order[:n_val]], gpt, config, out, progress=False)
        shutil.rmtree(out, ignore_errors=True)
        last = history["epochs"][-1]
        result.update(jets=history["n_train_jets"] + history["n_val_jets"], tokens_per_s=last["tokens_per_s"],
                      jets_per_s=last["jets_per_s"])
    elif step in ("finetune", "finetune-2000"):
        from tauml.models.tau import build_tau_model
        from tauml.training.finetune import tau_inputs, train_tau_model

        parts = [jet_arrays(read_fuure(f)) for f in sorted((folder / "fuure").glob("z_train_*.parquet"))]
        jets = JetArrays.concatenate(parts)
        del parts
        from tauml.models.checkpoints import load_tokenizer

        tokenizer = load_tokenizer(tok_args[0])
        train_size = len(jets) - 500 if step == "finetune" else 2000  # all jets, or the demo's 2,000 of them
        config = FinetuneConfig(task="dm", strategy="from_scratch", epochs=epochs, batch_size=64, device="cpu",
                                train_size=train_size, val_size=500)
        split = pipeline.train_val_split(jets, config.train_size, config.val_size)
        inputs = {}
        for name, part in (("train", split.train), ("val", split.val)):
            t, m = tokenizer.tokenize(part.features, part.mask)
            inputs[name] = tau_inputs(part, (t.numpy(), m.numpy()))
        model = build_tau_model("dm", "from_scratch", gpt, replace_(preset.head, n_heads=2), seed=1)
        out = folder / f"ft-{os.getpid()}"
        trained = train_tau_model(model, inputs["train"], inputs["val"], config, out, torch.device("cpu"),
                                  progress=False)
        state = torch.load(out / "state.pt", weights_only=True)
        shutil.rmtree(out, ignore_errors=True)
        result.update(jets=len(jets), jets_per_s=state["history"]["epochs"][-1]["jets_per_s"], best=trained.best_epoch)
    result.update(seconds=time.perf_counter() - start, peak_rss_mb=_peak_mb())
    return result


def replace_(config, **changes):
    from dataclasses import replace

    return replace(config, **changes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scales", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--steps", nargs="+", default=list(STEPS), choices=STEPS)
    parser.add_argument("--out", type=Path, default=Path("bench-memory"))
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--max-batches", type=int, default=0,
                        help="train only this many batches per epoch (all data still read; 0 = all)")
    parser.add_argument("--child", nargs=2, metavar=("STEP", "FOLDER"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print("RESULT " + json.dumps(child(args.child[0], Path(args.child[1]), args.epochs, args.max_batches)), flush=True)
        return

    from tauml import pipeline
    from tauml.cache import cache_dir

    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    real_cache = cache_dir()
    data_dir = real_cache / "data" / pipeline.data_key("demo")
    tok_dir = real_cache / "tokenizer" / pipeline.tokenizer_key("demo")
    if not (data_dir / "manifest.json").is_file() or not (tok_dir / "done.json").is_file():
        sys.exit("the demo's data and tokenizer are not in tauml's cache: run `tauml prepare` (or notebook 01) first")
    private = out / "cache"
    for kind, source in (("data", data_dir), ("tokenizer", tok_dir)):
        link = private / kind / source.name
        link.parent.mkdir(parents=True, exist_ok=True)
        if not link.exists():
            link.symlink_to(source)
    pp = sorted((data_dir / "jetclass").glob("*.root"))
    env = {**os.environ, "TAUML_CACHE_DIR": str(private), "TAUML_PROGRESS": "0"}
    rows = []
    for scale in args.scales:
        folder = out / f"x{scale}"
        replicate(pp, data_dir / "fuure" / "z_train.parquet", folder, scale)
        shutil.rmtree(private / "shards", ignore_errors=True)  # tokenize from scratch at every scale
        for step in args.steps:
            run = subprocess.run([sys.executable, __file__, "--child", step, str(folder), "--epochs",
                                  str(args.epochs), "--max-batches", str(args.max_batches)], env=env,
                                 capture_output=True, text=True)
            found = [line for line in run.stdout.splitlines() if line.startswith("RESULT ")]
            if run.returncode or not found:
                print(run.stdout[-2000:], run.stderr[-4000:], file=sys.stderr)
                sys.exit(f"step {step} at {scale}x failed")
            rows.append({"scale": scale, **json.loads(found[0][7:])})
            print(json.dumps(rows[-1]), flush=True)
    previous = json.loads((out / "results.json").read_text()) if (out / "results.json").is_file() else []
    rows = [r for r in previous if r["scale"] not in args.scales] + rows  # other scales of an earlier call kept
    (out / "results.json").write_text(json.dumps(rows, indent=2))
    print_table(rows)


def print_table(rows: list[dict]) -> None:
    scales = sorted({r["scale"] for r in rows})
    print("\n| step | " + " | ".join(f"{s}x peak RSS [MB]" for s in scales) + f" | {scales[-1]}x / {scales[0]}x | "
          "throughput at each scale |")
    print("|---|" + "---|" * (len(scales) + 2))
    for step in STEPS:
        found = {r["scale"]: r for r in rows if r["step"] == step}
        if not found:
            continue
        rss = [found[s]["peak_rss_mb"] if s in found else float("nan") for s in scales]
        speed = ", ".join(f"{found[s].get('tokens_per_s', found[s]['jets_per_s']):,.0f}" for s in scales if s in found)
        unit = "tokens/s" if "tokens_per_s" in next(iter(found.values())) else "jets/s"
        jets = ", ".join(f"{found[s]['jets']:,}" for s in scales if s in found)
        print(f"| {step} ({jets} jets) | " + " | ".join(f"{v:,.0f}" for v in rss) + f" | {rss[-1] / rss[0]:.2f} | "
              f"{speed} {unit} |")
    stream = {r["scale"]: r for r in rows if r["step"] == "pretrain-stream"}
    memory = {r["scale"]: r for r in rows if r["step"] == "pretrain-memory"}
    for s in scales:
        if s in stream and s in memory:
            print(f"streaming / in-memory pretraining throughput at {s}x: "
                  f"{stream[s]['tokens_per_s'] / memory[s]['tokens_per_s']:.2f}")


if __name__ == "__main__":
    main()
