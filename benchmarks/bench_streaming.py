"""Training throughput streamed from shards against in memory, measured side by side (interleaved repetitions).

    nice -n 10 python benchmarks/bench_streaming.py [--scales 1 4] [--reps 3] [--epochs 2] [--out bench-memory]
        [--models small|demo]

On a shared machine the speed drifts by ±15 % between runs minutes apart, which is more than the difference to
measure; so each repetition trains the in-memory and the streamed variant one after the other on the same jets
(the demo's pp files replicated N times, as ``bench_memory.py`` makes them in ``OUT/xN``; that script runs first),
with the same small models, and the ratio of the median epoch throughputs is reported:

* tokenizer: ``train_tokenizer`` on the padded jets against ``train_tokenizer_streaming`` on feature shards,
* pretraining: ``pretrain`` on padded tokens against ``pretrain_streaming`` on token shards.

Prints one Markdown row per scale and step (jets/s or tokens/s of every epoch, median ratio).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_memory  # the replicated folders and the small models


def measure(folder: Path, reps: int, epochs: int, models: str = "small") -> list[dict]:
    from tauml import pipeline
    from tauml.config import DEMO
    from tauml.pipeline.shards import build_shards, feature_shards
    from tauml.training.pretrain import pretrain
    from tauml.training.pretrain_stream import pretrain_streaming
    from tauml.training.streaming import split_parts
    from tauml.training.tokenizer import train_tokenizer, train_tokenizer_streaming

    files = sorted(str(f) for f in (folder / "jetclass").glob("*.root"))
    jets = pipeline._pp_arrays(tuple(files), 128)
    order = np.random.default_rng(1).permutation(len(jets))
    n_val = len(jets) // 10
    small = models == "small"
    tokenizer_config = replace(DEMO.tokenizer, epochs=epochs, **(bench_memory.SMALL_TOKENIZER if small else {}))
    features = feature_shards(files, DEMO.features, 128, progress=False)
    feature_train, feature_val = split_parts(features, 0.1, 1)
    tok_dir = pipeline.tokenizer_dir(DEMO)
    tokens = build_shards(files, tok_dir / pipeline.TOKENIZER_FILE, pipeline.tokenizer_key(DEMO),
                          pipeline.tokenizer_digest(DEMO), DEMO.features, 128, progress=False)
    pretrain_config = replace(DEMO.pretrain, epochs=epochs, device="cpu")
    token_train, token_val = split_parts(tokens, pretrain_config.val_fraction, pretrain_config.seed)
    padded = [s.padded() for s in tokens]
    all_tokens, all_mask = np.concatenate([t for t, _ in padded]), np.concatenate([m for _, m in padded])
    token_order = np.random.default_rng(pretrain_config.seed).permutation(len(all_tokens))
    n_val_tokens = round(pretrain_config.val_fraction * len(all_tokens))
    gpt = replace(pipeline.gpt_config(DEMO), **(bench_memory.SMALL_GPT if small else {}))
    speeds: dict[tuple[str, str], list[float]] = {}
    out = folder / f"ab-{os.getpid()}"
    for _ in range(reps):
        for step in ("tokenizer", "pretraining"):
            for how in ("memory", "stream"):
                shutil.rmtree(out, ignore_errors=True)
                if step == "tokenizer" and how == "memory":
                    train_tokenizer(jets.subset(order[n_val:]), jets.subset(order[:n_val]), tokenizer_config,
                                    DEMO.features, out, progress=False, device="cpu")
                elif step == "tokenizer":
                    train_tokenizer_streaming(feature_train, feature_val, replace(tokenizer_config, streaming=True),
                                              DEMO.features, out, progress=False, device="cpu")
                elif how == "memory":
                    pretrain(all_tokens[token_order[n_val_tokens:]], all_mask[token_order[n_val_tokens:]],
                             all_tokens[token_order[:n_val_tokens]], all_mask[token_order[:n_val_tokens]], gpt,
                             pretrain_config, out, progress=False)
                else:
                    pretrain_streaming(token_train, token_val, gpt, replace(pretrain_config, streaming=True), out,
                                       progress=False)
                history = json.loads((out / "history.json").read_text())
                records = history if step == "tokenizer" else history["epochs"]
                unit = "jets_per_s" if step == "tokenizer" else "tokens_per_s"
                speeds.setdefault((step, how), []).extend(r[unit] for r in records)
    shutil.rmtree(out, ignore_errors=True)
    rows = []
    for step, unit in (("tokenizer", "jets/s"), ("pretraining", "tokens/s")):
        memory, stream = speeds[(step, "memory")], speeds[(step, "stream")]
        rows.append({"step": step, "jets": len(jets), "unit": unit, "memory": memory, "stream": stream,
                     "ratio": float(np.median(stream) / np.median(memory))})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scales", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("bench-memory"))
    parser.add_argument("--models", choices=("small", "demo"), default="small",
                        help="small: bench_memory.py's (the data path dominates); demo: the demo preset's models")
    args = parser.parse_args()
    out = args.out.resolve()
    os.environ["TAUML_CACHE_DIR"] = str(out / "cache")  # bench_memory.py's private cache (the demo's linked)
    os.environ["TAUML_PROGRESS"] = "0"
    print(f"models: {args.models}\n\n| pp jets | step | in memory | streamed | streamed / in memory (medians) |\n"
          "|---|---|---|---|---|")
    for scale in args.scales:
        folder = out / f"x{scale}"
        if not (folder / "done").exists():
            sys.exit(f"{folder} is missing: run benchmarks/bench_memory.py --scales {scale} --out {args.out} first")
        for row in measure(folder, args.reps, args.epochs, args.models):
            print(f"| {row['jets']:,} | {row['step']} | {np.median(row['memory']):,.0f} {row['unit']} | "
                  f"{np.median(row['stream']):,.0f} {row['unit']} | {row['ratio']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
