"""The GPT backbone: token embedding, causal transformer blocks, and a next-token head.

As OmniJet-alpha's backbone (arXiv:2403.05618), with no positional encoding: a jet is a set of
constituents ordered by pT, and the order is already in the tokens.  Written after nanoGPT's ``model.py``
with pre-layer-norm blocks, PyTorch's ``scaled_dot_product_attention`` and boolean masks
(``True`` = real token).  Token ids follow ``docs/conventions.md`` (PAD 0, START 1, STOP 2, codes from 3).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tauml.config import GPTConfig


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
