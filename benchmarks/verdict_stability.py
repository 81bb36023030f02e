"""Do the notebooks' verdicts survive another machine?  The claims of 03, 04 and 05, run twice with other float
rounding.

Training is not bit-reproducible across machines: CPU kernels differ, and small differences grow through training.
This check produces such differences here, with the same seeds and the same inputs, by changing only how the
fine-tunings use the CPU threads:

* **run A** is tauml's cache as the notebooks left it: every fine-tuning trained by two worker processes with one
  thread each (how ``make test`` and ``tauml prepare`` train them);
* **run B** is a separate cache (``--workdir``) that starts with copies of run A's data, tokenizer, token shards
  and pretrained backbone, and retrains every fine-tuning of the three notebooks in one process with
  ``--threads`` intra-op threads.

For each notebook it states every claim's verdict in both runs, with the notebooks' own defaults (03's and 04's
three seeds, 05's seeds), and for 03 the measured difference of every compared pair in both runs and whether the
two measurements agree within their combined uncertainty (:func:`tauml.evaluation.verdicts.consistent`).  It exits
with status 1 when a verdict differs.

    .venv/bin/python benchmarks/verdict_stability.py [--threads 2] [--workdir results/verdict_stability]
        [--notebooks 03 04 05]

Cost on 2 CPU cores (demo): run A is the notebooks' cache (seconds when they ran); run B retrains about 45
fine-tunings for 03, 180 scan points for 04 (partly shared with 03) and 3 for 05: about 35 minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

#: The cache kinds run B copies from run A: everything upstream of the fine-tunings.
UPSTREAM = ("data", "tokenizer", "tokens", "backbone")


def collect(notebooks: list[str], threads: int | None) -> dict[str, Any]:
    """The claims of ``notebooks`` from the cache in ``$TAUML_CACHE_DIR``, trained in this process with
    ``threads`` intra-op threads (None: the notebooks' worker processes)."""
    import torch

    from tauml.config import get_preset
    from tauml.studies import ablations, embeddings, finetuning

    workers = None
    if threads is not None:
        torch.set_num_threads(threads)
        workers = 1
    out: dict[str, Any] = {"threads": threads}
    if "03" in notebooks:
        results = finetuning.run_comparison(
            "demo", tasks=finetuning.NOTEBOOK_TASKS, models=finetuning.NOTEBOOK_MODELS, seeds=finetuning.NOTEBOOK_SEEDS,
            train_size=finetuning.NOTEBOOK_TRAIN_SIZE, epochs=finetuning.NOTEBOOK_EPOCHS,
            unfreeze_epoch=finetuning.NOTEBOOK_UNFREEZE_EPOCH, workers=workers, progress=False)
        out["03"] = [{"claim": r["claim"], "verdict": r["verdict"]} for r in finetuning.claims_rows(results)]
        out["03 pairs"] = [{"pair": f"{task}: {a} vs {b}", "difference": c.difference, "uncertainty": c.uncertainty,
                            "dof": c.dof, "verdict": c.verdict, "text": c.text()}
                           for (task, a, b), c in finetuning.pair_comparisons(results).items()]
    if "04" in notebooks:
        records = ablations.run_ablations("demo", tasks=ablations.NOTEBOOK_TASKS, workers=workers, progress=False)
        epochs = get_preset("demo").finetune.epochs
        out["04"] = [{"claim": r["claim"], "verdict": r["agrees"], "this run": r["this run"]}
                     for r in ablations.ablation_claims_rows(records, epochs=epochs)]
    if "05" in notebooks:
        jets = embeddings.study_jets("demo", seed=embeddings.NOTEBOOK_SEED)
        scores = embeddings.scores_over_seeds("demo", embeddings.NOTEBOOK_SEEDS, jets, task=embeddings.NOTEBOOK_TASK,
                                              progress=False)
        out["05"] = [{"claim": f"{kind}: {row['step']} (block {row['block']})", "verdict": row["verdict"],
                      "this run": f"{row['kNN before']} -> {row['kNN after']}"}
                     for kind in embeddings.CLAIM_KINDS for row in embeddings.claim_reading_over_seeds(scores, kind=kind)]
    return out


def compare_runs(a: dict[str, Any], b: dict[str, Any], notebooks: list[str]) -> tuple[str, int]:
    """A Markdown report of both runs side by side, and the number of claims whose verdict differs."""
    from tauml.evaluation.verdicts import consistent
    from tauml.studies.report import markdown_table

    lines, differing = [], 0
    for nb in notebooks:
        rows = []
        for ra, rb in zip(a[nb], b[nb], strict=True):
            same = ra["verdict"] == rb["verdict"]
            differing += not same
            rows.append({"claim": ra["claim"], "run A": ra["verdict"], "run B": rb["verdict"],
                         "same": "yes" if same else "**no**"})
        lines += [f"### {nb}: {sum(r['same'] == 'yes' for r in rows)} of {len(rows)} verdicts agree", "",
                  markdown_table(rows), ""]
        if nb == "03":
            pair_rows = [{"pair": pa["pair"], "run A": pa["text"], "run B": pb["text"],
                          "measurements agree": "yes" if consistent(
                              (pa["difference"], pa["uncertainty"], pa["dof"]),
                              (pb["difference"], pb["uncertainty"], pb["dof"])) else "**no**"}
                         for pa, pb in zip(a["03 pairs"], b["03 pairs"], strict=True)]
            lines += ["#### 03: every compared pair", "", markdown_table(pair_rows), ""]
    return "\n".join(lines), differing


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads of run B (default 2)")
    parser.add_argument("--workdir", type=Path, default=Path("results/verdict_stability"),
                        help="run B's cache and the reports (default results/verdict_stability)")
    parser.add_argument("--notebooks", nargs="+", default=["03", "04", "05"], choices=["03", "04", "05"])
    parser.add_argument("--collect", type=Path, help=argparse.SUPPRESS)  # internal: one run, into this JSON
    args = parser.parse_args()
    if args.threads < 1:
        parser.error(f"--threads must be at least 1, got {args.threads}")
    if args.collect:
        result = collect(args.notebooks, args.threads if os.environ.get("TAUML_VERDICT_RUN") == "B" else None)
        args.collect.write_text(json.dumps(result, indent=1))
        return 0

    from tauml.cache import ENV_CACHE_DIR, cache_dir

    source = cache_dir()
    run_b_cache = args.workdir / "cache"
    args.workdir.mkdir(parents=True, exist_ok=True)
    for kind in UPSTREAM:
        if not (source / kind).is_dir():
            sys.exit(f"tauml's cache {source} has no {kind}/: run the notebooks (or `tauml prepare`) first")
        if not (run_b_cache / kind).exists():
            shutil.copytree(source / kind, run_b_cache / kind)
    reports = {}
    for run, env in (("A", {}), ("B", {ENV_CACHE_DIR: str(run_b_cache.resolve())})):
        path = args.workdir / f"run_{run}.json"
        what = "the notebooks' cache" if run == "A" else f"{args.threads} threads in one process"
        print(f"run {run}: {what} ...", flush=True)
        subprocess.run([sys.executable, __file__, "--collect", str(path), "--threads", str(args.threads),
                        "--notebooks", *args.notebooks],
                       env={**os.environ, **env, "TAUML_VERDICT_RUN": run}, check=True)
        reports[run] = json.loads(path.read_text())
    text, differing = compare_runs(reports["A"], reports["B"], args.notebooks)
    (args.workdir / "report.md").write_text(text)
    print(text)
    print(f"{differing} verdict(s) differ between the runs" if differing else "every verdict agrees")
    return 1 if differing else 0


if __name__ == "__main__":
    raise SystemExit(main())
