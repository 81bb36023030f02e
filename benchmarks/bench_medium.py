"""What the ``medium`` preset costs: generation from the measured speeds, training from short runs of its models.

    python benchmarks/bench_medium.py [--data FOLDER] [--tokenizer-jets 2048] [--pretrain-jets 2048]
                                      [--finetune-jets 2000] [--device cpu]

Trains the medium preset's own tokenizer, GPT backbone and one fine-tuning (fine_tuning strategy, reg task) for one
epoch each on a few thousand jets, through the cached pipeline in a private, temporary cache, reading the jets
from ``--data`` (default: the demo's generated files in tauml's cache, through the files data source, so nothing is
generated when the demo has been run).  Then scales the measured per-jet times to the medium preset's sizes
(its generated jets, epochs and trainings) and prints the estimated cost.  Generation: the measured events per
core-second of ``tauml.pipeline.EVENTS_PER_CORE_SECOND`` (benchmarks/bench_generation.py).  No assertions: it reports.
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time
from dataclasses import replace

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", help="folder of Fu(tau)ure + JetClass files (default: the demo's generated data)")
    parser.add_argument("--tokenizer-jets", type=int, default=2048)
    parser.add_argument("--pretrain-jets", type=int, default=2048)
    parser.add_argument("--finetune-jets", type=int, default=2000)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    from tauml import pipeline
    from tauml.config import MEDIUM, get_preset, with_data
    from tauml.pipeline.finetuning import finetune

    data = args.data or str(pipeline.dataset("demo").root)  # generated once (about 2 minutes) if not cached
    medium = get_preset("medium")
    # the medium models, one epoch each on a few thousand jets
    short = replace(
        MEDIUM,
        tokenizer=replace(MEDIUM.tokenizer, epochs=1, train_jets=args.tokenizer_jets, kmeans_iterations=5,
                          streaming=False),  # a subset in memory: the same cost per jet (docs/training.md)
        pretrain=replace(MEDIUM.pretrain, epochs=1, train_jets=args.pretrain_jets, warmup_steps=10,
                         device=args.device, streaming=False),
        finetune=replace(MEDIUM.finetune, epochs=1, train_size=args.finetune_jets, val_size=500, unfreeze_epoch=0,
                         device=args.device),
        pp_jets_per_sample=0,
    )
    short = with_data(short, data)
    threads = torch.get_num_threads()
    with tempfile.TemporaryDirectory() as cache:
        os.environ["TAUML_CACHE_DIR"] = cache
        pipeline.pp_jets(short)  # read once, outside the timings
        pipeline.tau_jets(short, "reg", "train")
        wall, cpu = {}, {}

        def timed(name, build):
            started, started_cpu = time.perf_counter(), time.process_time()
            build()
            wall[name], cpu[name] = time.perf_counter() - started, time.process_time() - started_cpu

        timed("tokenizer", lambda: pipeline.tokenizer(short, progress=False))
        timed("pretrain", lambda: pipeline.backbone_checkpoint(short, progress=False))
        history = pipeline.backbone_history(short)["epochs"][0]
        timed("finetune", lambda: finetune(short, replace(short.finetune, task="reg", strategy="fine_tuning"),
                                           progress=False))

    # CPU time (all threads of this process) per jet and epoch: what the work costs in core-seconds, whatever else
    # runs on the machine.  The fixed costs (k-means, validation, writing) are counted in: an upper bound.
    pp_jets = args.tokenizer_jets
    tok_per_jet = cpu["tokenizer"] / pp_jets
    pre_per_jet = cpu["pretrain"] / args.pretrain_jets
    fin_per_jet = cpu["finetune"] / args.finetune_jets
    n_pp = 2 * medium.pp_jets_per_sample
    tok_hours = tok_per_jet * n_pp * medium.tokenizer.epochs / 3600
    pre_hours = pre_per_jet * n_pp * medium.pretrain.epochs / 3600
    fin_hours = fin_per_jet * medium.finetune.train_size * medium.finetune.epochs / 3600
    print(f"device {args.device}, {threads} torch threads, data {data}")
    print(f"tokenizer (codebook {medium.tokenizer.codebook_size}, width {medium.tokenizer.hidden_dim}): "
          f"{pp_jets} jets, 1 epoch: {cpu['tokenizer']:.1f} CPU s ({wall['tokenizer']:.1f} s wall)")
    print(f"pretraining (GPT {medium.gpt.n_layer}x{medium.gpt.n_embd}): {args.pretrain_jets} jets, 1 epoch: "
          f"{cpu['pretrain']:.1f} CPU s ({wall['pretrain']:.1f} s wall; {history.get('jets_per_s', 0):.0f} jets/s, "
          f"{history.get('tokens_per_s', 0):.0f} tokens/s wall in the loop)")
    print(f"fine-tuning (reg, fine_tuning, backbone trainable): {args.finetune_jets} jets, 1 epoch: "
          f"{cpu['finetune']:.1f} CPU s ({wall['finetune']:.1f} s wall)")
    print(f"medium, CPU core-hours: generation {pipeline.generation_core_hours(medium):.1f}; tokenizer "
          f"{tok_hours:.1f} ({n_pp:,} jets x {medium.tokenizer.epochs} epochs), pretraining {pre_hours:.1f} "
          f"({medium.pretrain.epochs} epochs), one fine-tuning {fin_hours:.2f} "
          f"({medium.finetune.train_size:,} jets x {medium.finetune.epochs} epochs)")
    print(f"peak memory {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")


if __name__ == "__main__":
    main()
