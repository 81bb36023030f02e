"""ParticleTransformer-style task heads: particle-attention blocks, then class-attention blocks.

The head of the core paper (arXiv:2503.19165, section 2) and of ml-tau-en-reg's OmniParT: the GPT hidden
states of a jet pass through ``n_particle_blocks`` NormFormer-like self-attention blocks and
``n_class_blocks`` class-attention blocks (a learnable class token attends to itself and the particles),
then LayerNorm and one Linear layer.  The blocks follow weaver-core's ``ParticleTransformer.Block``
(Qu, Li, Qian, arXiv:2202.03772) without pair features, written out here in a short file.

Masks are boolean, ``True`` = a real position.  ``scaled_dot_product_attention`` takes a boolean mask with
``True`` = "may attend", so a key mask is passed as it is; no float masks (reference pitfall H.3, where a
float 1.0 for padding was *added* to the attention scores, leaving padding unmasked).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tauml.config import HeadConfig

#: Number of outputs per task: tau identification (2 logits: background, tau), visible-pT regression
#: (1 value: ln(pT_vis / pT_jet)) and reduced decay mode (6 logits).
TASK_OUTPUTS: dict[str, int] = {"id": 2, "reg": 1, "dm": 6}


class MultiHeadAttention(nn.Module):
    """Multi-head attention of queries ``(B, Tq, d)`` on keys/values ``(B, Tk, d)`` with a key mask ``(B, Tk)``.

    As weaver-core's ``Attention`` (packed q/k/v projection) plus ParT's learnable per-head scale ``c_attn``.
    """

    def __init__(self, width: int, n_heads: int, dropout: float) -> None:
        super().__init__()
        if width % n_heads:
            raise ValueError(f"width={width} must be divisible by n_heads={n_heads}")
        self.n_heads = n_heads
        self.in_proj = nn.Linear(width, 3 * width)
        self.out_proj = nn.Linear(width, width)
        self.head_scale = nn.Parameter(torch.ones(n_heads))  # ParT's c_attn
        self.dropout = dropout

    def forward(self, query: torch.Tensor, key_value: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
        batch, n_query, width = query.shape
        n_key = key_value.shape[1]
        w_q, w_kv = self.in_proj.weight.split((width, 2 * width))
        b_q, b_kv = self.in_proj.bias.split((width, 2 * width))
        q = F.linear(query, w_q, b_q)
        k, v = F.linear(key_value, w_kv, b_kv).split(width, dim=-1)
        head_dim = width // self.n_heads
        q = q.view(batch, n_query, self.n_heads, head_dim).transpose(1, 2)
        k = k.view(batch, n_key, self.n_heads, head_dim).transpose(1, 2)
        v = v.view(batch, n_key, self.n_heads, head_dim).transpose(1, 2)
        # boolean, True = may attend: (B, 1, 1, Tk) broadcast over heads and queries
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=key_mask[:, None, None, :], dropout_p=self.dropout if self.training else 0.0
        )
        y = y * self.head_scale.view(1, self.n_heads, 1, 1)
        return self.out_proj(y.transpose(1, 2).reshape(batch, n_query, width))


class FeedForward(nn.Module):
    """pre-LN -> Linear(d, r d) -> GELU -> dropout -> LN -> Linear(r d, d) -> dropout (NormFormer)."""

    def __init__(self, width: int, ffn_ratio: int, dropout: float) -> None:
        super().__init__()
        hidden = ffn_ratio * width
        self.net = nn.Sequential(
            nn.LayerNorm(width), nn.Linear(width, hidden), nn.GELU(), nn.Dropout(dropout),
            nn.LayerNorm(hidden), nn.Linear(hidden, width), nn.Dropout(dropout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class ParticleAttentionBlock(nn.Module):
    """NormFormer-like self-attention block over the particles of a jet.

    x = x + dropout(LN(MHA(LN(x)))); x = FFN(x) + w_resid * x, with ParT's learnable residual scale.
    """

    def __init__(self, width: int, n_heads: int, ffn_ratio: int = 4, dropout: float = 0.1) -> None:
        super().__init__()
        self.pre_attn_norm = nn.LayerNorm(width)
        self.attn = MultiHeadAttention(width, n_heads, dropout)
        self.post_attn_norm = nn.LayerNorm(width)
        self.dropout = nn.Dropout(dropout)
        self.ffn = FeedForward(width, ffn_ratio, dropout)
        self.resid_scale = nn.Parameter(torch.ones(width))  # ParT's w_resid

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``x`` ``(B, T, d)``, ``mask`` ``(B, T)`` boolean (True = real); returns ``(B, T, d)``."""
        u = self.pre_attn_norm(x)
        x = x + self.dropout(self.post_attn_norm(self.attn(u, u, mask)))
        return self.ffn(x) + self.resid_scale * x


class ClassAttentionBlock(ParticleAttentionBlock):
    """Class attention (CaiT, arXiv:2103.17239): the class token attends to [class token, particles].

    The keys are LN([cls; x]) with the mask [True, mask], so the class slot is never masked.
    """

    def __init__(self, width: int, n_heads: int, ffn_ratio: int = 4, dropout: float = 0.0) -> None:
        super().__init__(width, n_heads, ffn_ratio, dropout)  # the same layers, used on the class token

    def forward(self, cls: torch.Tensor, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``cls`` ``(B, 1, d)``, ``x`` ``(B, T, d)``, ``mask`` ``(B, T)``; returns the new class token ``(B, 1, d)``."""
        keys = self.pre_attn_norm(torch.cat((cls, x), dim=1))
        key_mask = torch.cat((torch.ones_like(mask[:, :1]), mask), dim=1)
        # query = the class token as it is, keys and values normalised, as weaver-core's Block
        cls = cls + self.dropout(self.post_attn_norm(self.attn(cls, keys, key_mask)))
        return self.ffn(cls) + self.resid_scale * cls


class TaskHead(nn.Module):
    """Particle blocks -> class token + class-attention blocks -> LayerNorm -> Linear(n_embd, n_outputs).

    Input: per-token hidden states ``(B, T, n_embd)`` and a boolean mask ``(B, T)`` (True = real token).
    Output: ``(B, n_outputs)``.  No positional information: the output is invariant under permutations
    of the real positions and independent of the values at padded positions.
    """

    def __init__(self, n_embd: int, n_outputs: int, config: HeadConfig | None = None) -> None:
        super().__init__()
        config = config or HeadConfig()
        config.validate()
        self.particle_blocks = nn.ModuleList(
            ParticleAttentionBlock(n_embd, config.n_heads, config.ffn_ratio, config.dropout)
            for _ in range(config.n_particle_blocks)
        )
        self.cls_token = nn.Parameter(torch.zeros(1, 1, n_embd))
        # class blocks without dropout, as ParT and OmniParT
        self.class_blocks = nn.ModuleList(
            ClassAttentionBlock(n_embd, config.n_heads, config.ffn_ratio, 0.0) for _ in range(config.n_class_blocks)
        )
        self.norm = nn.LayerNorm(n_embd)
        self.out = nn.Linear(n_embd, n_outputs)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Initialise the head only (never call a global init on a model holding pretrained weights, H.1):
        Xavier-uniform Linear weights, zero biases, LayerNorm (1, 0), class token ~ N(0, 0.02) truncated."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                module.reset_parameters()
        for block in (*self.particle_blocks, *self.class_blocks):
            nn.init.ones_(block.attn.head_scale)
            nn.init.ones_(block.resid_scale)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        zero_output_layer(self)


    def forward(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.out(self.embed(hidden, mask))

    def embed(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The jet's representation before the output layer: LayerNorm of the final class token ``(B, n_embd)``
        (the joint analysis's per-jet vector V)."""
        if mask.dtype != torch.bool:
            raise TypeError(f"mask must be boolean (True = real position), got {mask.dtype}")
        if hidden.shape[:2] != mask.shape:
            raise ValueError(f"hidden {tuple(hidden.shape)} and mask {tuple(mask.shape)} disagree in (batch, length)")
        if not bool(mask.any(dim=1).all()):
            raise ValueError("a jet has no real position in its mask; drop empty jets before the head")
        x = hidden.masked_fill(~mask[..., None], 0.0)  # padded values (even NaN) never enter
        for block in self.particle_blocks:
            x = block(x, mask)
        cls = self.cls_token.expand(x.shape[0], -1, -1)
        for block in self.class_blocks:
            cls = block(cls, x, mask)
        return self.norm(cls.squeeze(1))


def zero_output_layer(model: nn.Module) -> None:
    """Zero the weights and bias of the last ``nn.Linear`` of ``model``: before training, the regression then
    predicts ln(pT_vis / pT_jet) = 0 (the reco-jet pT, the no-learning reference) and the classifiers give equal
    probabilities; training moves away from there only as far as the data ask."""
    last = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    nn.init.zeros_(last.weight)
    nn.init.zeros_(last.bias)
