"""Throughput of the backbone's next-token pretraining on this machine, and how close it gets to the CPU's peak.

Runs :func:`tauml.training.pretrain.pretrain` (the real training loop: batch trimming, AdamW, clipping,
cosine schedule) for one epoch on random token sequences with JetClass-like multiplicities, for the demo
``GPTConfig``, and prints tokens/s, jets/s, the matrix-multiply FLOPs per step, this CPU's measured float32
matmul peak and the fraction of it reached.  Also times jet generation.  No assertions: it reports.

    .venv/bin/python benchmarks/bench_pretrain.py [--jets 2048] [--device cpu]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from tauml.config import GPTConfig, get_preset
from tauml.models.gpt import CODE_OFFSET, GPT, PAD_ID, START_ID, STOP_ID, generate, next_token_loss
from tauml.training import common
from tauml.training.pretrain import _make_optimizer, _trim, pretrain


def jetclass_like_tokens(n_jets: int, codebook_size: int, max_constituents: int = 128,
                         seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random token sequences whose multiplicities follow a JetClass-like spread (log-normal, median ~50,
    clipped to 30..100 constituents); the codes themselves do not matter for the speed."""
    rng = np.random.default_rng(seed)
    counts = np.clip(np.round(rng.lognormal(np.log(50.0), 0.35, n_jets)), 30, 100).astype(int)
    tokens = np.full((n_jets, max_constituents + 2), PAD_ID, dtype=np.int64)
    tokens[:, 0] = START_ID
    codes = rng.integers(0, codebook_size, (n_jets, max_constituents)) + CODE_OFFSET
    real = np.arange(max_constituents)[None, :] < counts[:, None]
    tokens[:, 1:-1] = np.where(real, codes, PAD_ID)
    tokens[np.arange(n_jets), counts + 1] = STOP_ID
    tokens_t = torch.from_numpy(tokens)
    return tokens_t, tokens_t != PAD_ID


def matmul_flops_per_step(config: GPTConfig, batch: int, length: int, n_targets: int) -> float:
    """Matrix-multiply FLOPs of one training step (forward + backward) on a batch trimmed to ``length`` inputs.

    A matmul of (m x k) by (k x n) costs 2 m k n FLOPs forward and twice that backward (gradients of both
    operands), hence the factor 6 = 2 x (1 + 2) per weight and token:

    * weights applied at every (padded) input position: per block qkv 3 C^2, proj C^2, MLP 2 C F, so
      6 * n_layer * (4 C^2 + 2 C F) * batch * length;
    * attention scores Q K^T and the weighted sum A V: 2 * 2 * length^2 * C per block and sequence forward,
      so 12 * n_layer * batch * length^2 * C (the boolean causal mask does not skip the upper triangle);
    * the next-token head only on real targets (``next_token_loss`` projects only those): 6 * C * V * n_targets.

    Embedding lookups, LayerNorm, GELU, softmax and the optimiser are memory-bound and not counted.
    """
    width, ffn, layers = config.n_embd, config.ffn_dim, config.n_layer
    weights = 6 * layers * (4 * width**2 + 2 * width * ffn) * batch * length
    attention = 12 * layers * batch * length**2 * width
    head = 6 * width * config.vocab_size * n_targets
    return float(weights + attention + head)


def measured_matmul_peak(size: int = 2048, repeats: int = 10) -> float:
    """FLOP/s of a large float32 ``torch.matmul`` on this machine (the practical peak for these models)."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    for _ in range(2):
        torch.matmul(a, b)
    started = time.perf_counter()
    for _ in range(repeats):
        torch.matmul(a, b)
    return 2.0 * size**3 * repeats / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jets", type=int, default=2048, help="training jets (one epoch)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--generate", type=int, default=500, help="jets to generate (0 to skip)")
    args = parser.parse_args()
    common.limit_threads()
    preset = get_preset("demo")
    gpt_config = replace(preset.gpt, vocab_size=preset.tokenizer.codebook_size + CODE_OFFSET)
    config = replace(preset.pretrain, epochs=1, device=args.device, warmup_steps=10)
    train_tokens, train_mask = jetclass_like_tokens(args.jets, preset.tokenizer.codebook_size, seed=1)
    val_tokens, val_mask = jetclass_like_tokens(256, preset.tokenizer.codebook_size, seed=2)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}, "
          f"load average {os.getloadavg()[0]:.1f} (other processes slow every number below)")
    print(f"GPT demo config: {gpt_config}")
    multiplicity = train_mask.sum(1).numpy() - 2
    print(f"{args.jets} jets, constituents per jet: mean {multiplicity.mean():.1f}, "
          f"range {multiplicity.min()}..{multiplicity.max()}; batch {config.batch_size}")

    with tempfile.TemporaryDirectory() as out_dir:
        model, history = pretrain(train_tokens, train_mask, val_tokens, val_mask, gpt_config, config,
                                  Path(out_dir), progress=False)
    record = history["epochs"][0]

    # the same batches as the training loop (permutation of epoch 0, each batch trimmed to its longest jet),
    # timed one by one with the training step of pretrain() (its loss and optimiser): the median step time
    # is robust against other processes on the machine, the end-to-end time is not
    order = common.epoch_permutation(args.jets, config.seed, 0)
    flops, positions, step_flops, step_seconds = 0.0, 0, [], []
    device = common.select_device(args.device)
    timed_model = GPT(gpt_config).to(device).train()
    optimizer = _make_optimizer(timed_model, config)
    for index in common.batches(args.jets, config.batch_size, order):
        tokens, mask = (t.to(device) for t in _trim(train_tokens[index], train_mask[index]))
        length = tokens.shape[1] - 1  # inputs are sequence[:-1]
        step_flops.append(matmul_flops_per_step(gpt_config, len(index), length, int(mask[:, 1:].sum())))
        positions += len(index) * length
        started = time.perf_counter()
        loss, _ = next_token_loss(timed_model, tokens, mask)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(timed_model.parameters(), config.grad_clip)
        optimizer.step()
        float(loss.detach())  # waits for the device
        step_seconds.append(time.perf_counter() - started)
    flops = sum(step_flops)
    steps = len(step_flops)
    achieved = flops / record["train_time_s"]
    step_rate = np.median(np.array(step_flops) / np.array(step_seconds))
    peak = measured_matmul_peak()
    print(f"\ntraining, end to end (pretrain(), 1 epoch): {record['tokens_per_s']:.0f} real tokens/s, "
          f"{record['jets_per_s']:.1f} jets/s, {record['train_time_s']:.2f} s for {steps} steps "
          f"({record['train_time_s'] / steps * 1e3:.0f} ms/step)")
    print(f"single steps: median {np.median(step_seconds) * 1e3:.0f} ms, fastest {min(step_seconds) * 1e3:.0f} ms "
          f"-> {config.batch_size / np.median(step_seconds):.0f} jets/s at the median")
    print(f"padding computed after trimming: {1 - record['train_tokens'] / positions:.1%} of input positions")
    print(f"matmul FLOPs per step (mean): {flops / steps / 1e9:.2f} GFLOP -> {achieved / 1e9:.1f} GFLOP/s end to end, "
          f"{step_rate / 1e9:.1f} GFLOP/s median step")
    print(f"measured float32 matmul peak (2048^3): {peak / 1e9:.1f} GFLOP/s")
    print(f"fraction of peak reached: {achieved / peak:.1%} end to end, {step_rate / peak:.1%} median step")

    if args.generate:
        started = time.perf_counter()
        _tokens, mask = generate(model, args.generate, max_len=128, seed=0, batch_size=256)
        elapsed = time.perf_counter() - started
        print(f"\ngeneration (the benchmark model, KV cache, batch 256): {args.generate / elapsed:.0f} jets/s, "
              f"{int(mask.sum()) / elapsed:.0f} tokens/s, mean {mask.sum(1).float().mean() - 2:.1f} constituents")


if __name__ == "__main__":
    main()
