"""The GPT backbone: token embedding, causal transformer blocks, and a next-token head.

As OmniJet-alpha's backbone (arXiv:2403.05618), with no positional encoding: a jet is a set of
constituents ordered by pT, and the order is already in the tokens.  Written after nanoGPT's ``model.py``
with pre-layer-norm blocks, PyTorch's ``scaled_dot_product_attention`` and boolean masks
(``True`` = real token).  Token ids follow ``docs/conventions.md`` (PAD 0, START 1, STOP 2, codes from 3).

The backbone reads token ids (``GPTConfig.inputs="tokens"``) or the continuous constituent features the tokenizer
reads (``"continuous"``, the hybrid of arXiv:2512.04149: START, STOP and PAD keep learned embeddings, each
constituent is embedded by a small MLP of its features, the token ids stay the targets).

Besides the model: :func:`next_token_loss` (real targets only), masked particle modelling
(:class:`MaskedParticleHead`, :func:`choose_masked`, :func:`masked_particle_loss`) and jet generation
(:func:`generate`, :func:`generate_jets`).  Checkpoints live in :mod:`tauml.models.checkpoints`, the unigram baseline in
:mod:`tauml.evaluation.generation`.  See ``docs/backbone.md``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tauml.config import GPTConfig
from tauml.data.features import N_FEATURES
from tauml.models import CheckpointError
from tauml.models.vqvae import CODE_OFFSET, PAD_ID, START_ID, STOP_ID

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


def attention_mask(mask: torch.Tensor, causal: bool = True) -> torch.Tensor:
    """Boolean attention mask ``(batch, 1, T, T)``: query t may attend to the real keys (``mask``), only to
    those at s <= t when ``causal``, and always to itself (:func:`causal_attention_mask`)."""
    if causal:
        return causal_attention_mask(mask)
    if mask.dtype != torch.bool:
        raise TypeError(f"mask must be boolean (True = real token), got {mask.dtype}")
    length = mask.shape[1]
    return mask[:, None, None, :] | torch.eye(length, dtype=torch.bool, device=mask.device)[None, None]


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
    """Input embedding -> ``n_layer`` causal blocks -> final LayerNorm (the backbone) -> next-token logits.

    ``forward`` returns the backbone's hidden states ``(batch, T, n_embd)``; ``logits`` turns them into
    next-token scores over the vocabulary.  ``n_blocks`` runs only the first blocks (fine-tuning with
    fewer GPT blocks).  With ``config.inputs == "continuous"`` every call also takes ``features``
    ``(batch, T, N_FEATURES)``, the constituent features aligned with the token positions
    (:func:`token_aligned_features`); the token ids then only say which positions are START, STOP or PAD.
    ``causal=False`` runs the blocks bidirectionally (the masked-particle pass).
    """

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        config.validate()
        if config.vocab_size <= 3:
            raise ValueError(f"vocab_size={config.vocab_size}: set it to the tokenizer's codebook size + 3")
        self.config = config
        if config.inputs == "tokens":
            self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        else:  # the special tokens PAD, START, STOP only; constituents through feature_embedding
            self.wte = nn.Embedding(CODE_OFFSET, config.n_embd)
            self.feature_embedding = nn.Sequential(nn.Linear(N_FEATURES, config.n_embd), nn.GELU(),
                                                   nn.Linear(config.n_embd, config.n_embd))
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.n_embd)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.apply(_init_weights)
        #: False for a backbone pretrained without next-token prediction (its lm_head never trained):
        #: :func:`generate` refuses it.  Set by :func:`tauml.models.checkpoints.load_backbone`.
        self.next_token_trained = True

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor, n_blocks: int | None = None,
                features: torch.Tensor | None = None, causal: bool = True) -> torch.Tensor:
        return self.hidden_states(tokens, mask, n_blocks=n_blocks, features=features, causal=causal)[-1]

    def input_parameters(self) -> list[nn.Parameter]:
        """The parameters of the input embedding (token table, and the feature MLP for continuous inputs)."""
        params = list(self.wte.parameters())
        if self.config.inputs == "continuous":
            params += list(self.feature_embedding.parameters())
        return params

    def embed(self, tokens: torch.Tensor, features: torch.Tensor | None = None) -> torch.Tensor:
        """The input vectors ``(batch, T, n_embd)``: token embeddings, or for continuous inputs the feature MLP
        at constituent positions (token id >= CODE_OFFSET) and the special-token embedding elsewhere."""
        if self.config.inputs == "tokens":
            return self.wte(tokens)
        if features is None:
            raise ValueError("this backbone reads continuous features (GPTConfig.inputs='continuous'): pass "
                             "features=(batch, T, N_FEATURES) aligned with the tokens (token_aligned_features)")
        if features.shape != (*tokens.shape, N_FEATURES):
            raise ValueError(f"features {tuple(features.shape)} must be (batch, T, {N_FEATURES}) for tokens "
                             f"{tuple(tokens.shape)}: align them with token_aligned_features")
        is_code = tokens >= CODE_OFFSET
        special = self.wte(torch.where(is_code, torch.zeros_like(tokens), tokens))
        return torch.where(is_code[..., None], self.feature_embedding(features.to(special.dtype)), special)

    def hidden_states(
        self, tokens: torch.Tensor, mask: torch.Tensor, n_blocks: int | None = None,
        features: torch.Tensor | None = None, causal: bool = True,
    ) -> list[torch.Tensor]:
        """The normalised output after each of the first ``n_blocks`` blocks (the last one is ``forward``'s)."""
        n_blocks = len(self.blocks) if n_blocks is None else n_blocks
        if not 1 <= n_blocks <= len(self.blocks):
            raise ValueError(f"n_blocks={n_blocks} must lie in 1..{len(self.blocks)}")
        if tokens.shape != mask.shape:
            raise ValueError(f"tokens {tuple(tokens.shape)} and mask {tuple(mask.shape)} must have the same shape")
        attn_mask = attention_mask(mask, causal)
        x = self.embed(tokens, features)
        outputs = []
        for block in self.blocks[:n_blocks]:
            x = block(x, attn_mask)
            outputs.append(self.ln_f(x))
        return outputs

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head(hidden)


def token_aligned_features(features: torch.Tensor | np.ndarray, mask: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Constituent features ``(n_jets, P, N_FEATURES)`` (the tokenizer's inputs, :mod:`tauml.data.features`) placed
    at the positions of their tokens ``[START, c1, ..., cn, STOP, PAD...]``: ``(n_jets, P + 2, N_FEATURES)``
    float32, constituent i at position i + 1, zeros at START, STOP and padding."""
    features, mask = torch.as_tensor(features, dtype=torch.float32), torch.as_tensor(mask)
    if mask.dtype != torch.bool:
        raise TypeError(f"mask must be boolean (True = real constituent), got {mask.dtype}")
    if features.ndim != 3 or features.shape[:2] != mask.shape or features.shape[2] != N_FEATURES:
        raise ValueError(f"features {tuple(features.shape)} must be (n_jets, P, {N_FEATURES}) with mask (n_jets, P)")
    aligned = torch.zeros(len(features), features.shape[1] + 2, N_FEATURES)
    aligned[:, 1:-1] = torch.where(mask[..., None], features, 0.0)
    return aligned


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


def next_token_loss(model: GPT, tokens: torch.Tensor, token_mask: torch.Tensor,
                    features: torch.Tensor | None = None) -> tuple[torch.Tensor, int]:
    """Mean cross entropy of predicting ``tokens[:, 1:]`` from ``tokens[:, :-1]``, over real targets only.

    A position counts only where its target is a real token (codes and STOP are predicted, PAD never;
    OmniJet-alpha's loss also counted the padding).  ``features`` (aligned with ``tokens``) are the inputs of a
    continuous backbone; the targets stay the token ids.  Returns ``(loss, n_targets)``; the loss is in nats.
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
    hidden = model(inputs, input_mask, features=None if features is None else features[:, :-1])
    logits = model.logits(hidden[target_mask])  # the vocabulary projection only where a target is real
    return F.cross_entropy(logits.float(), targets[target_mask]), n_targets


# ----------------------------------------------------------------------------------------------------------
# Masked particle modelling
# ----------------------------------------------------------------------------------------------------------


class MaskedParticleHead(nn.Module):
    """Predicts the token ids of hidden constituents from a bidirectional pass of the backbone.

    As the reference of arXiv:2512.04149 (``masked_input_treatment="exclude"``): the hidden constituents are
    left out of the backbone's attention altogether, then their outputs are replaced by a learned vector per
    position (``mask_vectors``, position = index in pT order: the backbone has no positional encoding), one
    bidirectional block lets those positions read the visible constituents, and a linear layer gives
    vocabulary logits.  It is used in pretraining only; fine-tuning never sees it.
    """

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.mask_vectors = nn.Parameter(torch.empty(config.max_len, config.n_embd))
        self.block = Block(config)
        self.ln = nn.LayerNorm(config.n_embd)
        self.out = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.apply(_init_weights)
        nn.init.normal_(self.mask_vectors, mean=0.0, std=0.02)

    def forward(self, hidden: torch.Tensor, token_mask: torch.Tensor, masked: torch.Tensor) -> torch.Tensor:
        """Logits ``(n_masked, vocab_size)`` at the positions ``masked`` (boolean, ``(batch, T)``)."""
        length = hidden.shape[1]
        if length > len(self.mask_vectors):
            raise ValueError(f"sequences of {length} positions exceed max_len={len(self.mask_vectors)}")
        x = torch.where(masked[..., None], self.mask_vectors[:length].to(hidden.dtype)[None], hidden)
        x = self.block(x, attention_mask(token_mask, causal=False))
        return self.out(self.ln(x[masked]))


def choose_masked(tokens: torch.Tensor, token_mask: torch.Tensor, fraction: float,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """The constituents hidden for masked particle modelling: boolean ``(batch, T)``.

    Per jet, ``max(1, round(fraction * n))`` of its ``n`` constituents (codes, never START, STOP or PAD), drawn
    uniformly without replacement with ``generator``.  The convention: a hidden constituent is left out of the
    backbone's attention keys and its output replaced by :class:`MaskedParticleHead`'s mask vector; its token
    id is the target.
    """
    if token_mask.dtype != torch.bool:
        raise TypeError(f"token_mask must be boolean (True = real token), got {token_mask.dtype}")
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"fraction={fraction} must lie in (0, 1)")
    is_constituent = token_mask & (tokens >= CODE_OFFSET)
    n = is_constituent.sum(dim=1)
    if bool((n == 0).any()):
        raise ValueError("a jet without constituents cannot be masked; every jet needs at least one")
    scores = torch.rand(tokens.shape, generator=generator, device=generator.device if generator else tokens.device)
    scores = scores.to(tokens.device).masked_fill(~is_constituent, 2.0)
    rank = scores.argsort(dim=1).argsort(dim=1)
    k = torch.clamp(torch.round(fraction * n.double()).long(), min=1)
    return (rank < k[:, None]) & is_constituent


def masked_particle_loss(model: GPT, head: MaskedParticleHead, tokens: torch.Tensor, token_mask: torch.Tensor,
                         masked: torch.Tensor, features: torch.Tensor | None = None) -> tuple[torch.Tensor, int]:
    """Mean cross entropy (nats) of the hidden constituents' token ids, from a bidirectional pass that sees only
    the visible ones (:func:`choose_masked`); returns ``(loss, n_masked)``."""
    n_masked = int(masked.sum())
    if n_masked == 0:
        raise ValueError("no constituent is masked in this batch")
    hidden = model(tokens, token_mask & ~masked, features=features, causal=False)
    logits = head(hidden, token_mask, masked)
    return F.cross_entropy(logits.float(), tokens[masked]), n_masked


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
    tokenizer: Any = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample ``n_jets`` token sequences ``[START, codes..., STOP, PAD...]`` from the model.

    ``max_len`` is the most constituents (codes) a jet may have (default ``model.config.max_len - 2``);
    the sequences have ``max_len + 2`` positions, like the tokenizer's for ``max_len`` constituents.  Each
    step samples from ``softmax(logits / temperature)`` restricted to the ``top_k`` most likely allowed
    tokens; PAD and START are never sampled, STOP only after at least one code, and a jet that reaches
    ``max_len`` codes is closed with STOP.  The same ``seed`` and ``batch_size`` give the same jets.
    Decoding is incremental (cached keys and values, :class:`KVCache`), so a jet costs one forward pass in
    total, and finished jets leave the batch.  A continuous backbone (``inputs="continuous"``) needs the
    ``tokenizer``: after each step the codes so far are decoded into features (as the reference of
    arXiv:2512.04149 does; the decoder reads the whole jet, so every step decodes and runs the whole prefix
    again, without a cache).  A backbone pretrained without next-token prediction is refused.
    Returns ``(tokens, token_mask)`` on CPU: int64 and boolean, ``(n_jets, max_len + 2)``.
    """
    if not getattr(model, "next_token_trained", True):
        raise ValueError("this backbone was pretrained without next-token prediction (ntp_weight=0): its "
                         "next-token head never trained, so it cannot generate jets; pretrain with ntp_weight > 0")
    if model.config.inputs == "continuous" and tokenizer is None:
        raise ValueError("a continuous backbone generates through its tokenizer (each sampled code is decoded "
                         "into features for the next step): pass tokenizer=")
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
        parts = [_generate_batch(model, min(batch_size, n_jets - start), max_len, temperature, top_k, generator,
                                 tokenizer) for start in range(0, n_jets, batch_size)]
    finally:
        model.train(was_training)
    if not parts:
        return torch.zeros(0, max_len + 2, dtype=torch.long), torch.zeros(0, max_len + 2, dtype=torch.bool)
    tokens = torch.cat(parts).cpu()
    return tokens, tokens != PAD_ID


def _generate_batch(model: GPT, n: int, max_len: int, temperature: float, top_k: int | None,
                    generator: torch.Generator, tokenizer: Any = None) -> torch.Tensor:
    if model.config.inputs == "continuous":
        return _generate_batch_continuous(model, n, max_len, temperature, top_k, generator, tokenizer)
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


def _sample(logits: torch.Tensor, position: int, max_len: int, temperature: float, top_k: int | None,
            generator: torch.Generator) -> torch.Tensor:
    """One token per row from next-token ``logits`` at ``position`` under the rules of :func:`generate`."""
    logits = logits.float() / temperature
    logits[:, [PAD_ID, START_ID]] = -torch.inf
    if position == 1:  # a jet has at least one constituent
        logits[:, STOP_ID] = -torch.inf
    if top_k is not None:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits[logits < kth] = -torch.inf
    token = torch.multinomial(torch.softmax(logits, dim=-1), 1, generator=generator)[:, 0]
    if position == max_len + 1:  # max_len codes so far: close the jet
        token.fill_(STOP_ID)
    return token


def _generate_batch_continuous(model: GPT, n: int, max_len: int, temperature: float, top_k: int | None,
                               generator: torch.Generator, tokenizer: Any) -> torch.Tensor:
    """:func:`_generate_batch` for a continuous backbone: decode the codes so far, run the whole prefix."""
    device = next(model.parameters()).device
    tokens = torch.full((n, max_len + 2), PAD_ID, dtype=torch.long)
    tokens[:, 0] = START_ID
    running = torch.ones(n, dtype=torch.bool)
    for position in range(1, max_len + 2):
        rows = torch.nonzero(running)[:, 0]
        prefix = tokens[rows, :position]
        if position > 1:  # decode the codes so far (a STOP appended only for the decoder's format)
            closed = torch.cat([prefix, torch.full((len(rows), 1), STOP_ID)], dim=1)
            decoded, decoded_mask = tokenizer.reconstruct(closed, torch.ones_like(closed, dtype=torch.bool))
            features = token_aligned_features(decoded, decoded_mask)[:, :position]
        else:
            features = torch.zeros(len(rows), 1, N_FEATURES)
        hidden = model(prefix.to(device), torch.ones_like(prefix, dtype=torch.bool, device=device),
                       features=features.to(device))
        last = _sample(model.logits(hidden[:, -1]), position, max_len, temperature, top_k, generator).cpu()
        tokens[rows, position] = last
        running[rows[last == STOP_ID]] = False
        if not bool(running.any()):
            break
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
    tokens, token_mask = generate(model, n_jets, max_len, temperature, top_k, seed, batch_size, tokenizer=tokenizer)
    features, mask = tokenizer.reconstruct(tokens, token_mask)
    features = features.detach().cpu().numpy() if isinstance(features, torch.Tensor) else np.asarray(features)
    mask = mask.detach().cpu().numpy() if isinstance(mask, torch.Tensor) else np.asarray(mask)
    return features.astype(np.float32), mask.astype(bool)
