"""Throughput of the VQ-VAE tokenizer: tokenization (jets/s) and training (jets/s, constituents/s).

    python benchmarks/bench_tokenizer.py [--preset demo] [--jets 4000] [--threads N] [--device cpu]

Inputs are real JetClass-II jets (../shared/data/real/JetClassII_example.root, 100 jets, resampled with
their angles mirrored at random) when that file is there, else random jets with realistic structure.
Tokenization is timed with 128-slot padding (JetClass) and with the same jets cut to their 16 hardest
constituents (tau jets); training with the preset's batch size on the 128-slot jets.  Prints figures only.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from tauml.config import get_preset
from tauml.models.vqvae import Tokenizer
from tauml.training import common
from tauml.training.tokenizer import _batch, _epoch_batches, _make_optimizer

REAL_FILE = Path(__file__).resolve().parents[2] / "shared" / "data" / "real" / "JetClassII_example.root"


def real_jets(n_jets: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, str] | None:
    if not REAL_FILE.exists():
        return None
    import uproot

    from tauml.data.features import jet_arrays

    jets = jet_arrays(uproot.open(REAL_FILE)["tree"].arrays())
    pick = rng.integers(len(jets), size=n_jets)
    features, mask = jets.features[pick].copy(), jets.mask[pick]
    flip = rng.choice([-1.0, 1.0], size=(n_jets, 1, 2)).astype(np.float32)
    features[..., 2:4] *= flip  # mirrored angles: the same physics, not the same 100 jets over and over
    return features, mask, f"JetClass-II jets from {REAL_FILE.name}, resampled"


def random_jets(n_jets: int, rng: np.random.Generator, slots: int = 128) -> tuple[np.ndarray, np.ndarray, str]:
    counts = np.clip(rng.poisson(45, n_jets), 2, slots)
    mask = np.arange(slots)[None, :] < counts[:, None]
    pid = rng.choice(5, size=(n_jets, slots), p=[0.02, 0.02, 0.4, 0.4, 0.16])
    features = np.zeros((n_jets, slots, 10), np.float32)
    features[..., 0] = -np.sort(-rng.normal(0.5, 1.3, (n_jets, slots)), axis=1)
    features[..., 1] = np.array([0.0026, 0.53, 0.0, 0.70, 2.49])[pid]
    features[..., 2:4] = np.clip(rng.normal(0.0, 0.4, (n_jets, slots, 2)), -3, 3)
    features[..., 4] = np.where(np.isin(pid, (0, 1, 3)), rng.choice([-1.0, 1.0], (n_jets, slots)), 0.0)
    features[..., 5:] = np.eye(5)[pid]
    features[~mask] = 0.0
    return features, mask, "random structured jets (the JetClass-II file is not here)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="demo")
    parser.add_argument("--jets", type=int, default=4000, help="jets to tokenize")
    parser.add_argument("--train-steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = the cores this process may use)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    common.limit_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = common.select_device(args.device)
    config = get_preset(args.preset).tokenizer
    rng = np.random.default_rng(1)
    features, mask, source = real_jets(args.jets, rng) or random_jets(args.jets, rng)
    print(f"preset {args.preset}: codebook {config.codebook_size}, latent {config.latent_dim}, hidden "
          f"{config.hidden_dim}, {config.n_blocks}+{config.n_blocks} blocks, {config.n_heads} heads")
    print(f"inputs: {source}; {mask.sum(1).mean():.1f} constituents per jet on average")
    print(f"device {device}, torch threads {torch.get_num_threads()}, torch {torch.__version__}")

    tokenizer = Tokenizer(config).to(device).eval()
    start = time.perf_counter()
    tokenizer.vqvae.initialise_codebook(*_batch(features, mask, np.arange(min(config.batch_size, len(features))),
                                                device))
    _sync(device)
    print(f"k-means initialisation of {config.codebook_size} codes ({config.kmeans_iterations} iterations) on "
          f"{int(mask[:config.batch_size].sum())} latents: {time.perf_counter() - start:.2f} s")

    for label, slots in (("128-slot padding", 128), ("16-slot padding", 16)):
        f, k = np.ascontiguousarray(features[:, :slots]), np.ascontiguousarray(mask[:, :slots])
        tokenizer.tokenize(f[:256], k[:256])  # warm-up
        _sync(device)
        start = time.perf_counter()
        tokenizer.tokenize(f, k)
        _sync(device)
        seconds = time.perf_counter() - start
        print(f"tokenize, {label}: {len(f) / seconds:10.0f} jets/s  {k.sum() / seconds:12.0f} constituents/s "
              f"({len(f)} jets in {seconds:.2f} s)")

    tokenizer.train()
    optimizer = _make_optimizer(tokenizer, config)
    steps = _epoch_batches(mask.sum(1), config.batch_size, config.seed, 0)
    steps = (steps * (1 + args.train_steps // max(1, len(steps))))[:args.train_steps + 2]
    n_jets = n_constituents = 0
    for i, index in enumerate(steps):
        if i == 2:  # the first steps are warm-up
            _sync(device)
            start = time.perf_counter()
        x, m = _batch(features, mask, index, device)
        out = tokenizer(x, m)
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(tokenizer.parameters(), config.grad_clip)
        optimizer.step()
        if i >= 2:
            n_jets += len(index)
            n_constituents += int(mask[index].sum())
    _sync(device)
    seconds = time.perf_counter() - start
    print(f"train, batch {config.batch_size}, 128-slot padding: {n_jets / seconds:8.0f} jets/s  "
          f"{n_constituents / seconds:12.0f} constituents/s ({len(steps) - 2} steps in {seconds:.2f} s)")
    epoch_jets = config.train_jets or len(features)
    print(f"  -> one demo epoch of {epoch_jets} jets takes about {epoch_jets / (n_jets / seconds):.0f} s, "
          f"{config.epochs} epochs about {config.epochs * epoch_jets / (n_jets / seconds) / 60:.1f} min")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


if __name__ == "__main__":
    main()
