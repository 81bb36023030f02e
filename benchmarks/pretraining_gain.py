"""Does the demo's pretraining carry over? Gain of fine-tuning over training from scratch against pretraining cost.

For each pretraining variant of the ``demo`` preset (more epochs, a wider backbone, both), this pretrains the
backbone (timed: its cost in CPU seconds on this machine), then trains the three tau tasks at 2,000 labelled
jets with ``fine_tuning`` and ``from_scratch``, several seeds each, and states the verdict of fine-tuning against
from scratch per task with the rule of :mod:`tauml.evaluation.verdicts` (Welch's t-test on the seed means,
counting error included; the three tasks of a variant are one family of tests, each at 1 - 0.05/3).  Every
training goes through tauml's cache, so a second run prints the table at once and the variants share what they
can (the demo variant's trainings are the notebooks' own).

    .venv/bin/python benchmarks/pretraining_gain.py [--seeds 1 2 3] [--variants demo epochs16 width128]
        [--json results/pretraining_gain.json]

Prints a Markdown table (variant, pretraining seconds, validation perplexity, per task the relative gain ± its
uncertainty and the verdict, and how many tasks fine-tuning wins beyond the noise).  No assertions: it reports.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

from tauml import pipeline
from tauml.config import TASKS, Preset, get_preset
from tauml.studies import finetuning as studies
from tauml.studies.report import markdown_table

#: name -> (what changes, a function of the demo preset)
VARIANTS = {
    "demo": ("the demo preset (64 wide, 8 epochs)", lambda p: p),
    "epochs16": ("16 pretraining epochs", lambda p: replace(p, pretrain=replace(p.pretrain, epochs=16))),
    "epochs32": ("32 pretraining epochs", lambda p: replace(p, pretrain=replace(p.pretrain, epochs=32))),
    "width128": ("128 wide (ffn 512)", lambda p: replace(p, gpt=replace(p.gpt, n_embd=128, ffn_dim=512))),
    "width128_epochs16": ("128 wide, 16 epochs", lambda p: replace(
        p, gpt=replace(p.gpt, n_embd=128, ffn_dim=512), pretrain=replace(p.pretrain, epochs=16))),
}


def measure(name: str, preset: Preset, seeds: tuple[int, ...]) -> dict:
    """Pretrain the variant (timed), fine-tune and train from scratch on every task and seed, and compare."""
    started = time.perf_counter()
    checkpoint = pipeline.backbone_checkpoint(preset)
    history = pipeline.backbone_history(preset)
    wall = time.perf_counter() - started
    pretrain_seconds = sum(e["train_time_s"] for e in history["epochs"])
    tuned = studies.run_comparison(preset, tasks=TASKS, models=("fine_tuning",), seeds=seeds, train_size=2000)
    # from scratch does not depend on the pretraining: a variant with the demo's GPT shares the demo's trainings
    demo = get_preset("demo")
    scratch_preset = demo if preset.gpt == demo.gpt and preset.head == demo.head else preset
    scratch = studies.run_comparison(scratch_preset, tasks=TASKS, models=("from_scratch",), seeds=seeds,
                                     train_size=2000)
    results = {task: {**tuned[task], **scratch[task]} for task in TASKS}
    row = {"variant": name, "what": VARIANTS[name][0], "pretraining s": round(pretrain_seconds),
           "val perplexity": round(history["epochs"][history["best_epoch"]]["val_perplexity"], 1),
           "unigram perplexity": round(history["unigram_perplexity"], 1), "wins": 0, "backbone": str(checkpoint),
           "wall s (incl. cache)": round(wall)}
    for task in TASKS:
        # "wins on two of the three tasks" reads the three comparisons together: one family of tests
        c = studies.model_comparison(results, task, "fine_tuning", "from_scratch", comparisons=len(TASKS))
        row[task] = f"{c.relative:+.1%} ± {c.uncertainty / abs(c.b.mean):.1%} ({c.verdict})"
        row["wins"] += c.verdict == "better"
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", nargs="*", type=int, default=[1, 2, 3])
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--json", help="also write the rows to this JSON file")
    args = parser.parse_args()
    demo = get_preset("demo")
    rows = []
    for name in args.variants:
        rows.append(measure(name, VARIANTS[name][1](demo), tuple(args.seeds)))
        print(markdown_table([{k: v for k, v in r.items() if k != "backbone"} for r in rows]), flush=True)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
