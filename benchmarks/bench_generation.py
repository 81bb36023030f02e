"""Generation speed per sample on this machine: events/s and jets/s per core, and Pythia's share.

    python benchmarks/bench_generation.py [--events 1000] [--samples z zh qq ZJetsToNuNu TTBar]

One chunk per sample runs in this process (one core); each chunk includes Pythia, the detector, FastJet,
the truth and writing.  A short warm-up chunk first compiles numba's kernels so they are not timed.
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time

from tauml.config import ALL_SAMPLES, GenerationConfig
from tauml.data.generate import ChunkTask, run_chunk


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=1000)
    parser.add_argument("--samples", nargs="*", default=list(ALL_SAMPLES))
    args = parser.parse_args()
    config = GenerationConfig(events={s: args.events for s in args.samples}, chunk_events=args.events)
    with tempfile.TemporaryDirectory() as tmp:
        run_chunk(ChunkTask("zh", 99, 20, 0), config, tmp)  # warm-up: numba compilation, imports
        print(f"{'sample':12s} {'events':>7s} {'jets':>6s} {'events/s':>9s} {'jets/s':>8s} {'Pythia share':>12s}")
        for sample in args.samples:
            started = time.perf_counter()
            stats = run_chunk(ChunkTask(sample, 0, args.events, 0), config, tmp)
            seconds = time.perf_counter() - started
            print(f"{sample:12s} {stats['events']:7d} {stats['jets']:6d} {stats['events'] / seconds:9.1f} "
                  f"{stats['jets'] / seconds:8.1f} {stats['seconds_generator'] / seconds:12.0%}")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak memory of this process: {peak:.0f} MB")


if __name__ == "__main__":
    main()
