"""The GPT backbone: token embedding, causal transformer blocks, and a next-token head.

As OmniJet-alpha's backbone (arXiv:2403.05618), with no positional encoding: a jet is a set of
constituents ordered by pT, and the order is already in the tokens.  Written after nanoGPT's ``model.py``
with pre-layer-norm blocks, PyTorch's ``scaled_dot_product_attention`` and boolean masks
(``True`` = real token).  Token ids follow ``docs/conventions.md`` (PAD 0, START 1, STOP 2, codes from 3).

Besides the model: :func:`next_token_loss` (real targets only) and jet generation (:func:`generate`,
:func:`generate_jets`).  Checkpoints live in :mod:`tauml.models.checkpoints`, the unigram baseline in
:mod:`tauml.evaluation.generation`.  See ``docs/backbone.md``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tauml.config import GPTConfig
from tauml.models import CheckpointError
from tauml.models.vqvae import CODE_OFFSET, PAD_ID, START_ID, STOP_ID  # noqa: F401  (re-exported: one token convention)

BACKBONE_FORMAT = "tauml-backbone"


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention where a token sees itself and earlier real tokens only."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.n_head = config.n_head
        self.qkv = nn.Linear(config.n_embd, 3 * config.n_embd, bias=False)
        self.proj = nn.Linear(config.n_embd, config.n_embd)
        self.dropout = config.dropout

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor) -> torch.Tensor:
        batch, length, width = x.shape
        q, k, v = self.qkv(x).split(width, dim=2)
        q, k, v = (t.view(batch, length, self.n_head, width // self.n_head).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, dropout_p=self.dropout if self.training else 0.0
        )
        return self.proj(y.transpose(1, 2).reshape(batch, length, width))


class MLP(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.fc = nn.Linear(config.n_embd, config.ffn_dim)
        self.out = nn.Linear(config.ffn_dim, config.n_embd)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.out(F.gelu(self.fc(x))))


class Block(nn.Module):
    """Pre-LN transformer block: x + attention(LN(x)), then x + MLP(LN(x))."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(config.n_embd)
        self.attn = CausalSelfAttention(config)
        self.ln2 = nn.LayerNorm(config.n_embd)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x), attn_mask)
        return x + self.mlp(self.ln2(x))


def causal_attention_mask(mask: torch.Tensor) -> torch.Tensor:
    """Boolean attention mask ``(batch, 1, T, T)``: query t may attend to real keys s <= t.

    Every query may also attend to itself, so that a padded query never has an empty row (its output is
    discarded anyway); real queries are unaffected because a real token is always a valid key for itself.
    """
    if mask.dtype != torch.bool:
        raise TypeError(f"mask must be boolean (True = real token), got {mask.dtype}")
    length = mask.shape[1]
    causal = torch.ones(length, length, dtype=torch.bool, device=mask.device).tril()
    allowed = causal[None, None] & mask[:, None, None, :]
    return allowed | torch.eye(length, dtype=torch.bool, device=mask.device)[None, None]


class GPT(nn.Module):
    """Token embedding -> ``n_layer`` causal blocks -> final LayerNorm (the backbone) -> next-token logits.

    ``forward`` returns the backbone's hidden states ``(batch, T, n_embd)``; ``logits`` turns them into
    next-token scores over the vocabulary.  ``n_blocks`` runs only the first blocks (fine-tuning with
    fewer GPT blocks).
    """

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        config.validate()
        if config.vocab_size <= 3:
            raise ValueError(f"vocab_size={config.vocab_size}: set it to the tokenizer's codebook size + 3")
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.n_embd)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.apply(_init_weights)

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor, n_blocks: int | None = None) -> torch.Tensor:
        return self.hidden_states(tokens, mask, n_blocks=n_blocks)[-1]

    def hidden_states(
        self, tokens: torch.Tensor, mask: torch.Tensor, n_blocks: int | None = None
    ) -> list[torch.Tensor]:
        """The normalised output after each of the first ``n_blocks`` blocks (the last one is ``forward``'s)."""
        n_blocks = len(self.blocks) if n_blocks is None else n_blocks
        if not 1 <= n_blocks <= len(self.blocks):
            raise ValueError(f"n_blocks={n_blocks} must lie in 1..{len(self.blocks)}")
        if tokens.shape != mask.shape:
            raise ValueError(f"tokens {tuple(tokens.shape)} and mask {tuple(mask.shape)} must have the same shape")
        attn_mask = causal_attention_mask(mask)
        x = self.wte(tokens)
        outputs = []
        for block in self.blocks[:n_blocks]:
            x = block(x, attn_mask)
            outputs.append(self.ln_f(x))
        return outputs

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head(hidden)


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, mean=0.0, std=0.02)


# ----------------------------------------------------------------------------------------------------------
# Next-token loss and the no-learning baseline
# ----------------------------------------------------------------------------------------------------------


def next_token_loss(model: GPT, tokens: torch.Tensor, token_mask: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Mean cross entropy of predicting ``tokens[:, 1:]`` from ``tokens[:, :-1]``, over real targets only.

    A position counts only where its target is a real token (codes and STOP are predicted, PAD never;
    OmniJet-alpha's loss also counted the padding).  Returns ``(loss, n_targets)``; the loss is in nats.
    """
    if token_mask.dtype != torch.bool:
        raise TypeError(f"token_mask must be boolean (True = real token), got {token_mask.dtype}")
    inputs, input_mask = tokens[:, :-1], token_mask[:, :-1]
    targets, target_mask = tokens[:, 1:], token_mask[:, 1:]
    if bool((target_mask & ~input_mask).any()):
        raise ValueError("token_mask has a real token after a padded one; real tokens must come first in a row")
    n_targets = int(target_mask.sum())
    if n_targets == 0:
        raise ValueError("no real target token in this batch: every row needs at least [START, STOP]")
    hidden = model(inputs, input_mask)
    logits = model.logits(hidden[target_mask])  # the vocabulary projection only where a target is real
    return F.cross_entropy(logits.float(), targets[target_mask]), n_targets


# ----------------------------------------------------------------------------------------------------------
# Generation
# ----------------------------------------------------------------------------------------------------------


@torch.no_grad()
def generate(
    model: GPT,
    n_jets: int,
    max_len: int | None = None,
    temperature: float = 1.0,
    top_k: int | None = None,
    seed: int = 0,
    batch_size: int = 512,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample ``n_jets`` token sequences ``[START, codes..., STOP, PAD...]`` from the model.

    ``max_len`` is the most constituents (codes) a jet may have (default ``model.config.max_len - 2``);
    the sequences have ``max_len + 2`` positions, like the tokenizer's for ``max_len`` constituents.  Each
    step samples from ``softmax(logits / temperature)`` restricted to the ``top_k`` most likely allowed
    tokens; PAD and START are never sampled, STOP only after at least one code, and a jet that reaches
    ``max_len`` codes is closed with STOP.  The same ``seed`` and ``batch_size`` give the same jets.
    Decoding is incremental (cached keys and values, :class:`KVCache`), so a jet costs one forward pass in
    total, and finished jets leave the batch.
    Returns ``(tokens, token_mask)`` on CPU: int64 and boolean, ``(n_jets, max_len + 2)``.
    """
    max_len = model.config.max_len - 2 if max_len is None else max_len
    if n_jets < 0 or max_len < 1:
        raise ValueError(f"n_jets={n_jets} must be >= 0 and max_len={max_len} >= 1")
    if not temperature > 0:
        raise ValueError(f"temperature={temperature} must be positive (small values approach greedy decoding)")
    vocab_size = model.config.vocab_size
    if top_k is not None and not 1 <= top_k <= vocab_size:
        raise ValueError(f"top_k={top_k} must lie in 1..{vocab_size} (or None for no restriction)")
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    was_training = model.training
    model.eval()
    try:
        parts = [_generate_batch(model, min(batch_size, n_jets - start), max_len, temperature, top_k, generator)
                 for start in range(0, n_jets, batch_size)]
    finally:
        model.train(was_training)
    if not parts:
        return torch.zeros(0, max_len + 2, dtype=torch.long), torch.zeros(0, max_len + 2, dtype=torch.bool)
    tokens = torch.cat(parts).cpu()
    return tokens, tokens != PAD_ID


def _generate_batch(model: GPT, n: int, max_len: int, temperature: float, top_k: int | None,
                    generator: torch.Generator) -> torch.Tensor:
    device = next(model.parameters()).device
    tokens = torch.full((n, max_len + 2), PAD_ID, dtype=torch.long, device=device)
    tokens[:, 0] = START_ID
    rows = torch.arange(n, device=device)  # the jet each batch row writes to
    running = torch.ones(n, dtype=torch.bool, device=device)  # batch rows that have not stopped yet
    cache = KVCache(model, n, max_len + 2)
    banned = torch.zeros(model.config.vocab_size, dtype=torch.bool, device=device)
    banned[[PAD_ID, START_ID]] = True
    last = tokens[:, 0]
    for position in range(1, max_len + 2):
        logits = _decode_step(model, last, cache).float() / temperature
        logits[:, banned] = -torch.inf
        if position == 1:  # a jet has at least one constituent
            logits[:, STOP_ID] = -torch.inf
        if top_k is not None:
            kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
            logits[logits < kth] = -torch.inf
        last = torch.multinomial(torch.softmax(logits, dim=-1), 1, generator=generator)[:, 0]
        if position == max_len + 1:  # max_len codes so far: close the jet
            last.fill_(STOP_ID)
        tokens[rows[running], position] = last[running]
        running &= last != STOP_ID
        n_running = int(running.sum())
        if n_running == 0:
            break
        if n_running <= 0.75 * len(running):  # drop the finished jets from the batch (and from the cache)
            rows, last, cache = rows[running], last[running], cache.select(running)
            running = torch.ones(n_running, dtype=torch.bool, device=device)
    return tokens


class KVCache:
    """Attention keys and values of the positions decoded so far, per block: ``(batch, n_head, capacity, head_dim)``."""

    def __init__(self, model: GPT, batch: int, capacity: int) -> None:
        parameter = next(model.parameters())
        head_dim = model.config.n_embd // model.config.n_head
        shape = (batch, model.config.n_head, capacity, head_dim)
        self.keys = [parameter.new_empty(shape) for _ in model.blocks]
        self.values = [parameter.new_empty(shape) for _ in model.blocks]
        self.length = 0

    def select(self, rows: torch.Tensor) -> KVCache:
        """Keep only the batch rows ``rows`` (boolean or indices); returns ``self``."""
        self.keys = [k[rows] for k in self.keys]
        self.values = [v[rows] for v in self.values]
        return self


def _decode_step(model: GPT, token: torch.Tensor, cache: KVCache) -> torch.Tensor:
    """Next-token logits ``(batch, vocab)`` after appending ``token`` ``(batch,)`` to sequences whose earlier
    positions (all real) are in ``cache``, which gains this position.

    The same computation as :class:`Block` for one new position; the test suite checks it against
    :meth:`GPT.forward` on whole sequences.
    """
    x = model.wte(token)[:, None]
    batch, _, width = x.shape
    t = cache.length
    for index, block in enumerate(model.blocks):
        attn = block.attn
        q, k, v = attn.qkv(block.ln1(x)).split(width, dim=2)
        q, k, v = (a.view(batch, 1, attn.n_head, width // attn.n_head).transpose(1, 2) for a in (q, k, v))
        cache.keys[index][:, :, t:t + 1] = k
        cache.values[index][:, :, t:t + 1] = v
        # one query sees every earlier (real) position and itself
        y = F.scaled_dot_product_attention(q, cache.keys[index][:, :, :t + 1], cache.values[index][:, :, :t + 1])
        x = x + attn.proj(y.transpose(1, 2).reshape(batch, 1, width))
        x = x + block.mlp(block.ln2(x))
    cache.length = t + 1
    return model.logits(model.ln_f(x))[:, 0]


def generate_jets(
    model: GPT, tokenizer: Any, n_jets: int, max_len: int | None = None, temperature: float = 1.0,
    top_k: int | None = None, seed: int = 0, batch_size: int = 512,
) -> tuple[np.ndarray, np.ndarray]:
    """Sample jets with :func:`generate` and decode them with the tokenizer.

    Returns ``(features (n_jets, max_len, 10) float32, mask (n_jets, max_len) bool)`` as numpy arrays, in the
    transformed feature convention (``tauml.data.features.inverse_transform`` gives GeV).
    """
    if tokenizer.vocab_size != model.config.vocab_size:
        raise CheckpointError(
            f"the tokenizer has vocab_size={tokenizer.vocab_size} but the backbone {model.config.vocab_size}: "
            "decode with the tokenizer the backbone was pretrained on"
        )
    tokens, token_mask = generate(model, n_jets, max_len, temperature, top_k, seed, batch_size)
    features, mask = tokenizer.reconstruct(tokens, token_mask)
    features = features.detach().cpu().numpy() if isinstance(features, torch.Tensor) else np.asarray(features)
    mask = mask.detach().cpu().numpy() if isinstance(mask, torch.Tensor) else np.asarray(mask)
    return features.astype(np.float32), mask.astype(bool)
