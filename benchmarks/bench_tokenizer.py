"""Throughput of the VQ-VAE tokenizer: tokenization (jets/s) and training (jets/s, constituents/s).

    python benchmarks/bench_tokenizer.py [--preset demo] [--jets 4000] [--threads N] [--device cpu]

Inputs are the preset's generated pp jets (Pythia 8 + the Delphes-CMS-like detector, JetClass schema) from
tauml's cache; they are generated first where the cache has none (about 2 minutes for ``demo``).
Tokenization is timed with 128-slot padding (JetClass) and with the same jets cut to their 16 hardest
constituents (tau jets); training with the preset's batch size on the 128-slot jets.  Prints figures only.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from tauml import pipeline
from tauml.config import get_preset
from tauml.models.vqvae import Tokenizer
from tauml.training import common
from tauml.training.tokenizer import _batch, _epoch_batches, _make_optimizer


def preset_jets(preset: str, n_jets: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, str]:
    """``n_jets`` of the preset's generated pp jets (the tokenizer's training jets; generated on first use)."""
    jets, _ = pipeline.pp_jets(preset)
    pick = rng.choice(len(jets), size=n_jets, replace=n_jets > len(jets))
    return jets.features[pick], jets.mask[pick], f"{n_jets} of the {len(jets)} generated pp jets of preset {preset!r}"


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
    features, mask, source = preset_jets(args.preset, args.jets, rng)
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
        out = tokenizer(*_batch(features, mask, index, device))  # the engine's step (tauml.training.engine)
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
    epoch_jets = config.train_jets or len(pipeline.pp_split(args.preset).train)  # the tokenizer's training set
    print(f"  -> one demo epoch of {epoch_jets} jets takes about {epoch_jets / (n_jets / seconds):.0f} s, "
          f"{config.epochs} epochs about {config.epochs * epoch_jets / (n_jets / seconds) / 60:.1f} min")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


if __name__ == "__main__":
    main()
