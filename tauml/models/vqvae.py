"""The VQ-VAE tokenizer: constituents -> codebook entries -> token sequences, and back.

OmniJet-alpha's NormFormer VQ-VAE (arXiv:2403.05618, ``gabbro/models/vqvae.py``) with the core paper's
10 input features and latent size 8 (arXiv:2503.19165).  Written after nanoGPT's ``model.py``: one block
class, one quantizer, one model, a thin :class:`Tokenizer` that owns the token convention, and checkpoints.

* No positional encoding: the encoder and decoder are permutation-equivariant over constituents.
* Every mask is boolean, ``True`` = a real constituent; padded slots never enter a loss, the k-means
  initialisation, the dead-code statistics or the codebook usage (the reference counted them, see
  reference-implementations.md A.3 and H.6).
* A frozen tokenizer stays in eval mode whatever a parent module does, and its codebook cannot change
  (the reference's bug H.2).

Token convention (docs/conventions.md): ``PAD 0, START 1, STOP 2``, codebook entry ``c`` is token ``c + 3``.
See docs/tokenizer.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tauml.config import FeatureConfig, TokenizerConfig
from tauml.data.features import CHARGE_INDEX, CONTINUOUS_FEATURES, FEATURE_NAMES, N_FEATURES, PID_FEATURES
from tauml.data.schema import DataError

PAD_ID = 0
START_ID = 1
STOP_ID = 2
CODE_OFFSET = 3
TOKEN_CONVENTION: dict[str, int] = {"PAD_ID": PAD_ID, "START_ID": START_ID, "STOP_ID": STOP_ID,
                                    "CODE_OFFSET": CODE_OFFSET}
TOKENIZER_FORMAT = "tauml-tokenizer"

N_CONTINUOUS = CONTINUOUS_FEATURES.stop - CONTINUOUS_FEATURES.start  # 4
N_CHARGE_CLASSES = 3  # charge -1, 0, +1 -> class 0, 1, 2
N_PID_CLASSES = PID_FEATURES.stop - PID_FEATURES.start  # 5


# ----------------------------------------------------------------------------------------------------------
# Blocks
# ----------------------------------------------------------------------------------------------------------


def attention_mask(mask: torch.Tensor) -> torch.Tensor:
    """Boolean ``(batch, 1, P, P)`` mask for ``scaled_dot_product_attention``: a query sees the real keys.

    Every query also sees itself, so a padded query (or a jet without constituents) never has an empty
    row; real queries are unaffected, since a real constituent is a real key for itself.
    """
    length = mask.shape[1]
    eye = torch.eye(length, dtype=torch.bool, device=mask.device)
    return mask[:, None, None, :] | eye[None, None]


class SelfAttention(nn.Module):
    """Multi-head self-attention over the constituents of a jet (no positions, no causality)."""

    def __init__(self, dim: int, n_heads: int, dropout: float) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.dropout = dropout
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        nn.init.xavier_uniform_(self.qkv.weight)  # as torch.nn.MultiheadAttention, biases zero
        nn.init.zeros_(self.qkv.bias)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor) -> torch.Tensor:
        batch, length, width = x.shape
        q, k, v = self.qkv(x).split(width, dim=2)
        q, k, v = (t.view(batch, length, self.n_heads, width // self.n_heads).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask,
                                           dropout_p=self.dropout if self.training else 0.0)
        return self.proj(y.transpose(1, 2).reshape(batch, length, width))


class NormFormerBlock(nn.Module):
    """OmniJet-alpha's block: x + LN(attention(LN(x))), then x + MLP(x) with MLP = LN, Linear, SiLU, Dropout,
    Linear.  The pre-attention LN weight and the last MLP layer start at zero, so the block starts as the
    identity."""

    def __init__(self, dim: int, n_heads: int, dropout: float) -> None:
        super().__init__()
        self.norm_in = nn.LayerNorm(dim)
        self.attn = SelfAttention(dim, n_heads, dropout)
        self.norm_attn = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim), nn.SiLU(), nn.Dropout(dropout),
                                 nn.Linear(dim, dim))
        nn.init.zeros_(self.norm_in.weight)
        nn.init.zeros_(self.mlp[-1].weight)
        nn.init.zeros_(self.mlp[-1].bias)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, attn_mask: torch.Tensor) -> torch.Tensor:
        x = x.masked_fill(~mask[..., None], 0.0)
        x = x + self.norm_attn(self.attn(self.norm_in(x), attn_mask))
        return x + self.mlp(x)


# ----------------------------------------------------------------------------------------------------------
# Quantizer
# ----------------------------------------------------------------------------------------------------------


def code_counts(codes: torch.Tensor, codebook_size: int) -> torch.Tensor:
    """How often each code occurs in ``codes`` (entries < 0, i.e. padding, are ignored)."""
    codes = codes[codes >= 0]
    return torch.bincount(codes.flatten().long(), minlength=codebook_size)


def utilisation(counts: torch.Tensor | np.ndarray) -> float:
    """Fraction of the codebook used at least once."""
    counts = torch.as_tensor(counts)
    return float((counts > 0).float().mean())


def perplexity(counts: torch.Tensor | np.ndarray) -> float:
    """exp(entropy) of the code-usage distribution: the effective number of codes in use (1 .. codebook size)."""
    counts = torch.as_tensor(counts, dtype=torch.float64)
    if counts.sum() <= 0:
        return float("nan")
    p = counts[counts > 0] / counts.sum()
    return float(torch.exp(-(p * p.log()).sum()))


class VectorQuantizer(nn.Module):
    """Nearest-code quantizer with k-means initialisation and dead-code replacement, on real constituents only.

    The codebook is an ``nn.Parameter`` learned through the codebook term of the VQ loss; k-means and the
    dead-code replacement overwrite rows in place, and only in training mode of a tokenizer that is not
    frozen (``frozen`` is set by :meth:`Tokenizer.freeze`).  ``steps_unused`` counts, per code, the training
    steps since it was last chosen.
    """

    def __init__(self, codebook_size: int, dim: int, beta: float, patience: int, kmeans_iterations: int,
                 seed: int) -> None:
        super().__init__()
        self.codebook_size, self.dim, self.beta = codebook_size, dim, beta
        self.patience, self.kmeans_iterations, self.seed = patience, kmeans_iterations, seed
        generator = torch.Generator().manual_seed(seed)
        self.codebook = nn.Parameter(torch.randn(codebook_size, dim, generator=generator))
        self.register_buffer("initialised", torch.tensor(False))
        self.register_buffer("steps_unused", torch.zeros(codebook_size, dtype=torch.long))
        self.frozen = False
        self.replaced_count = 0  # codes replaced since construction (statistics only, not saved)

    @property
    def updates_codebook(self) -> bool:
        return self.training and not self.frozen

    @torch.no_grad()
    def nearest(self, z: torch.Tensor) -> torch.Tensor:
        """Index of the nearest code (squared Euclidean distance) for each row of ``z`` ``(M, dim)``."""
        codebook = self.codebook.detach()
        chunk = max(1, 2**24 // self.codebook_size)
        codes = [torch.cdist(part, codebook).argmin(dim=1) for part in z.split(chunk)]
        return torch.cat(codes) if codes else torch.zeros(0, dtype=torch.long, device=z.device)

    def forward(self, z: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Quantize latents ``z`` ``(N, P, dim)``; returns ``(z_q, codes, vq_loss)``.

        ``z_q`` carries the straight-through gradient to ``z`` and is zero at padding; ``codes`` is ``-1`` at
        padding; ``vq_loss`` = (1 - beta) mean((z - sg(z_q))^2) + beta mean((sg(z) - z_q)^2) over real
        constituents.
        """
        real = z[mask]
        if self.updates_codebook and not bool(self.initialised) and len(real) > 0:
            self.kmeans_init(real.detach())
        codes_real = self.nearest(real.detach())
        codes = torch.full(mask.shape, -1, dtype=torch.long, device=z.device)
        codes[mask] = codes_real
        z_q = torch.zeros_like(z)
        if len(real) == 0:
            return z_q, codes, z.sum() * 0.0
        quantized = F.embedding(codes_real, self.codebook)
        vq_loss = ((1.0 - self.beta) * F.mse_loss(real, quantized.detach())
                   + self.beta * F.mse_loss(real.detach(), quantized))
        z_q[mask] = real + (quantized - real).detach()  # straight-through estimator
        if self.updates_codebook:
            self.replace_dead_codes(codes_real, real.detach())
        return z_q, codes, vq_loss

    @torch.no_grad()
    def kmeans_init(self, data: torch.Tensor) -> None:
        """Set the codebook to k-means centroids (k-means++ seeding, then Lloyd steps) of ``data`` ``(M, dim)``.

        Deterministic given the quantizer's seed.  With fewer vectors than codes, the codes are vectors drawn
        with replacement plus 1e-3 x their spread of Gaussian noise.
        """
        generator = torch.Generator(device=data.device).manual_seed(self.seed)
        n, k = len(data), self.codebook_size
        if n < k:
            pick = torch.randint(n, (k,), generator=generator, device=data.device)
            noise = torch.randn(k, self.dim, generator=generator, device=data.device)
            centres = data[pick] + 1e-3 * (data.std() if n > 1 else 1.0) * noise
        else:
            centres = _kmeans_plus_plus(data, k, generator)
            chunk = max(1, 2**24 // k)  # rows per distance matrix, to bound memory with large codebooks
            for _ in range(self.kmeans_iterations):
                assign = torch.cat([torch.cdist(part, centres).argmin(1) for part in data.split(chunk)])
                sums = torch.zeros_like(centres).index_add_(0, assign, data)
                counts = torch.bincount(assign, minlength=k)
                filled = counts > 0  # an empty cluster keeps its centre
                centres[filled] = sums[filled] / counts[filled, None].to(data.dtype)
        self.codebook.copy_(centres)
        self.initialised.fill_(True)
        self.steps_unused.zero_()

    @torch.no_grad()
    def replace_dead_codes(self, codes_real: torch.Tensor, real: torch.Tensor) -> int:
        """Count one training step; codes unused for ``patience`` steps become random real latents of this batch
        plus noise of 1e-2 x their norm.  Returns the number of codes replaced."""
        used = torch.bincount(codes_real, minlength=self.codebook_size) > 0
        self.steps_unused += 1
        self.steps_unused[used] = 0
        dead = torch.nonzero(self.steps_unused >= self.patience).flatten()
        if len(dead) == 0 or len(real) == 0:
            return 0
        new = real[torch.randint(len(real), (len(dead),), device=real.device)]
        self.codebook[dead] = new + 1e-2 * new.norm(dim=1, keepdim=True) * torch.randn_like(new)
        self.steps_unused[dead] = 0
        self.replaced_count += len(dead)
        return len(dead)


def _kmeans_plus_plus(data: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """k-means++ seeding: each new centre is drawn with probability proportional to the squared distance
    to the nearest centre chosen so far."""
    n = len(data)
    first = int(torch.randint(n, (1,), generator=generator, device=data.device))
    centres = [data[first]]
    closest = ((data - data[first]) ** 2).sum(1)
    for _ in range(1, k):
        weights = closest if float(closest.sum()) > 0 else torch.ones_like(closest)
        pick = int(torch.multinomial(weights, 1, generator=generator))
        centres.append(data[pick])
        closest = torch.minimum(closest, ((data - data[pick]) ** 2).sum(1))
    return torch.stack(centres)


# ----------------------------------------------------------------------------------------------------------
# The VQ-VAE
# ----------------------------------------------------------------------------------------------------------


@dataclass
class VQVAEOutput:
    """What a forward pass gives: raw decoder outputs, codes (-1 at padding), and the losses.

    ``loss`` = continuous + categorical_weight * categorical + vq_weight * vq, each a mean over real
    constituents (``parts`` holds the three terms, detached).
    """

    raw: torch.Tensor
    codes: torch.Tensor
    latents: torch.Tensor
    loss: torch.Tensor
    parts: dict[str, torch.Tensor]


class VQVAE(nn.Module):
    """Linear(10 -> hidden) -> encoder blocks -> Linear(hidden -> latent) -> quantizer -> Linear(latent -> hidden)
    -> decoder blocks -> output head.

    The head gives 4 continuous values plus, with ``categorical_loss="cross_entropy"``, 3 charge logits and
    5 particle-type logits (12 outputs); with ``"mse"`` it gives raw values for all 10 features, as the
    reference.
    """

    def __init__(self, config: TokenizerConfig) -> None:
        super().__init__()
        self.config = config
        hidden, latent = config.hidden_dim, config.latent_dim
        self.cross_entropy = config.categorical_loss == "cross_entropy"
        self.embed = nn.Linear(N_FEATURES, hidden)
        self.encoder = nn.ModuleList(NormFormerBlock(hidden, config.n_heads, config.dropout)
                                     for _ in range(config.n_blocks))
        self.to_latent = nn.Linear(hidden, latent)
        self.quantizer = VectorQuantizer(config.codebook_size, latent, config.beta, config.dead_code_patience,
                                         config.kmeans_iterations, config.seed)
        self.from_latent = nn.Linear(latent, hidden)
        self.decoder = nn.ModuleList(NormFormerBlock(hidden, config.n_heads, config.dropout)
                                     for _ in range(config.n_blocks))
        n_out = N_CONTINUOUS + N_CHARGE_CLASSES + N_PID_CLASSES if self.cross_entropy else N_FEATURES
        self.head = nn.Linear(hidden, n_out)

    def encode(self, features: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Latents ``(N, P, latent_dim)``, zero at padding."""
        attn_mask = attention_mask(mask)
        x = self.embed(features.masked_fill(~mask[..., None], 0.0))
        for block in self.encoder:
            x = block(x, mask, attn_mask)
        return self.to_latent(x).masked_fill(~mask[..., None], 0.0)

    def decode(self, z_q: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Raw head outputs ``(N, P, 12 or 10)`` from quantized latents."""
        attn_mask = attention_mask(mask)
        x = self.from_latent(z_q).masked_fill(~mask[..., None], 0.0)
        for block in self.decoder:
            x = block(x, mask, attn_mask)
        return self.head(x)

    def decode_codes(self, codes: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Raw head outputs from codebook indices ``(N, P)`` (anything at padding)."""
        z_q = F.embedding(codes.clamp(min=0), self.quantizer.codebook).masked_fill(~mask[..., None], 0.0)
        return self.decode(z_q, mask)

    @torch.no_grad()
    def initialise_codebook(self, features: torch.Tensor, mask: torch.Tensor) -> None:
        """k-means initialisation of the codebook on the latents of the real constituents of these jets
        (otherwise the first training forward pass does it on its batch)."""
        if self.quantizer.frozen:
            raise RuntimeError("the tokenizer is frozen: its codebook cannot be initialised again")
        self.quantizer.kmeans_init(self.encode(features, mask)[mask])

    def forward(self, features: torch.Tensor, mask: torch.Tensor) -> VQVAEOutput:
        latents = self.encode(features, mask)
        z_q, codes, vq_loss = self.quantizer(latents, mask)
        raw = self.decode(z_q, mask)
        continuous, categorical = self.reconstruction_loss(raw, features, mask)
        loss = continuous + self.config.categorical_weight * categorical + self.config.vq_weight * vq_loss
        parts = {"continuous": continuous.detach(), "categorical": categorical.detach(), "vq": vq_loss.detach()}
        return VQVAEOutput(raw=raw, codes=codes, latents=latents, loss=loss, parts=parts)

    def reconstruction_loss(self, raw: torch.Tensor, features: torch.Tensor,
                            mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(MSE of the 4 continuous features, categorical loss), both means over real constituents.

        Categorical loss: cross entropy of charge plus cross entropy of particle type, or (``"mse"``) the
        mean squared error of the charge and the 5 one-hot flags.
        """
        out, target = raw[mask], features[mask]
        if len(target) == 0:
            zero = raw.sum() * 0.0
            return zero, zero
        continuous = F.mse_loss(out[:, CONTINUOUS_FEATURES], target[:, CONTINUOUS_FEATURES])
        if not self.cross_entropy:
            return continuous, F.mse_loss(out[:, CHARGE_INDEX:], target[:, CHARGE_INDEX:])
        charge_class = target[:, CHARGE_INDEX].round().clamp(-1, 1).long() + 1
        pid_class = target[:, PID_FEATURES].argmax(dim=1)
        charge_logits = out[:, N_CONTINUOUS:N_CONTINUOUS + N_CHARGE_CLASSES]
        pid_logits = out[:, N_CONTINUOUS + N_CHARGE_CLASSES:]
        return continuous, F.cross_entropy(charge_logits, charge_class) + F.cross_entropy(pid_logits, pid_class)

    def to_features(self, raw: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Constituent features ``(N, P, 10)`` from raw head outputs: the charge as -1/0/+1 and the particle
        type one-hot (arg-max of logits, or rounded / arg-max raw values for the MSE variant); 0 at padding."""
        features = torch.zeros(*raw.shape[:-1], N_FEATURES, dtype=raw.dtype, device=raw.device)
        features[..., CONTINUOUS_FEATURES] = raw[..., :N_CONTINUOUS]
        if self.cross_entropy:
            charge = raw[..., N_CONTINUOUS:N_CONTINUOUS + N_CHARGE_CLASSES].argmax(-1).to(raw.dtype) - 1.0
            pid = raw[..., N_CONTINUOUS + N_CHARGE_CLASSES:].argmax(-1)
        else:
            charge = raw[..., CHARGE_INDEX].round().clamp(-1, 1)
            pid = raw[..., PID_FEATURES].argmax(-1)
        features[..., CHARGE_INDEX] = charge
        features[..., PID_FEATURES] = F.one_hot(pid, N_PID_CLASSES).to(raw.dtype)
        return features.masked_fill(~mask[..., None], 0.0)


# ----------------------------------------------------------------------------------------------------------
# Tokenizer: the token convention, batching, freezing
# ----------------------------------------------------------------------------------------------------------


class Tokenizer(nn.Module):
    """A :class:`VQVAE` with its settings, turning jets into token sequences and back.

    ``tokenize``/``encode``/``reconstruct`` run in eval mode under ``no_grad`` in batches on the
    tokenizer's device and return CPU tensors.  The weights are drawn from ``config.seed``.
    """

    def __init__(self, config: TokenizerConfig, feature_config: FeatureConfig | None = None) -> None:
        super().__init__()
        config.validate()
        self.config = config
        self.feature_config = feature_config or FeatureConfig()
        self.feature_names: tuple[str, ...] = FEATURE_NAMES
        self.metadata: dict[str, Any] = {}
        self.frozen = False
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            self.vqvae = VQVAE(config)

    @property
    def vocab_size(self) -> int:
        return self.config.codebook_size + CODE_OFFSET

    @property
    def codebook_size(self) -> int:
        return self.config.codebook_size

    @property
    def device(self) -> torch.device:
        return self.vqvae.quantizer.codebook.device

    def forward(self, features: torch.Tensor, mask: torch.Tensor) -> VQVAEOutput:
        return self.vqvae(features, mask)

    def freeze(self) -> Tokenizer:
        """Eval mode for good, no gradients, no k-means and no dead-code replacement; returns ``self``."""
        for parameter in self.parameters():
            parameter.requires_grad_(False)
        self.frozen = True
        self.vqvae.quantizer.frozen = True
        return self.eval()

    def train(self, mode: bool = True) -> Tokenizer:
        """As ``nn.Module.train``, except that a frozen tokenizer stays in eval mode."""
        return super().train(mode and not self.frozen)

    # ---- jets -> codes -> tokens ----------------------------------------------------------------------

    @torch.no_grad()
    def encode(self, features: torch.Tensor | np.ndarray, mask: torch.Tensor | np.ndarray,
               batch_size: int = 2048) -> torch.Tensor:
        """Codebook index of every constituent, ``(N, P)`` long, ``-1`` at padding.

        ``features`` ``(N, P, 10)`` float (docs/conventions.md), ``mask`` ``(N, P)`` boolean.  Jets are
        batched by number of constituents and each batch is cut to its longest jet, which changes nothing
        (padding is masked) but saves time.
        """
        features, mask = _check_inputs(features, mask)
        codes = torch.full(mask.shape, -1, dtype=torch.long)
        was_training = self.training
        self.eval()
        try:
            order = torch.argsort(mask.sum(1), stable=True)
            for start in range(0, len(order), batch_size):
                index = order[start:start + batch_size]
                batch_mask = mask[index]
                width = _used_width(batch_mask)
                x = features[index, :width].to(self.device)
                m = batch_mask[:, :width].to(self.device)
                z = self.vqvae.encode(x, m)
                batch_codes = torch.full(m.shape, -1, dtype=torch.long, device=self.device)
                batch_codes[m] = self.vqvae.quantizer.nearest(z[m])
                codes[index, :width] = batch_codes.cpu()
        finally:
            self.train(was_training)
        return codes

    def tokenize(self, features: torch.Tensor | np.ndarray, mask: torch.Tensor | np.ndarray,
                 batch_size: int = 2048) -> tuple[torch.Tensor, torch.Tensor]:
        """Token sequences ``(N, P + 2)`` long and their boolean mask: ``[START, c1+3, ..., cn+3, STOP, PAD...]``.

        Real constituents must come first in every row of ``mask`` (as ``jet_arrays`` writes them).
        """
        mask_t = _as_bool_mask(mask)
        counts = mask_t.sum(1)
        slots = mask_t.shape[1]
        if not torch.equal(mask_t, torch.arange(slots)[None, :] < counts[:, None]):
            bad = int(torch.nonzero((mask_t != (torch.arange(slots)[None, :] < counts[:, None])).any(1))[0])
            raise DataError(f"mask row {bad} has a padded slot before a real constituent; tokens need the real "
                            "constituents first (sort them, e.g. as tauml.data.features.jet_arrays does)")
        codes = self.encode(features, mask_t, batch_size=batch_size)
        n_jets = len(codes)
        tokens = torch.full((n_jets, slots + 2), PAD_ID, dtype=torch.long)
        tokens[:, 0] = START_ID
        tokens[:, 1:slots + 1] = torch.where(mask_t, codes + CODE_OFFSET, PAD_ID)
        tokens[torch.arange(n_jets), counts + 1] = STOP_ID
        token_mask = torch.arange(slots + 2)[None, :] < (counts + 2)[:, None]
        return tokens, token_mask

    # ---- tokens -> features ---------------------------------------------------------------------------

    def check_tokens(self, tokens: torch.Tensor, token_mask: torch.Tensor) -> torch.Tensor:
        """Raise ``ValueError`` unless every row is ``[START, codes..., STOP, PAD...]`` with a matching mask;
        returns the number of constituents per jet."""
        if tokens.ndim != 2 or tokens.shape != token_mask.shape or tokens.shape[1] < 2:
            raise ValueError(f"tokens {tuple(tokens.shape)} and token_mask {tuple(token_mask.shape)} must both be "
                             "(n_jets, max_constituents + 2)")
        if token_mask.dtype != torch.bool or tokens.dtype.is_floating_point:
            raise ValueError(f"tokens must be integers and token_mask boolean; got {tokens.dtype}, {token_mask.dtype}")
        length = tokens.shape[1]
        n_real = token_mask.sum(1)
        positions = torch.arange(length)[None, :]
        expected_mask = positions < n_real[:, None]
        _refuse_rows(token_mask != expected_mask, "token_mask has a padded position before a real one")
        _refuse_rows((n_real < 2)[:, None], "has fewer than 2 real tokens; every jet needs at least START, STOP")
        stop_position = (n_real - 1).clamp(min=0)[:, None]
        is_code_position = (positions > 0) & (positions < stop_position)
        is_code = (tokens >= CODE_OFFSET) & (tokens < self.vocab_size)
        _refuse_rows((tokens[:, :1] != START_ID), f"does not begin with START_ID={START_ID}")
        _refuse_rows((tokens.gather(1, stop_position) != STOP_ID), f"does not end with STOP_ID={STOP_ID}")
        _refuse_rows(is_code_position & ~is_code,
                     f"holds a token that is not a code ({CODE_OFFSET}..{self.vocab_size - 1}) between START and STOP")
        _refuse_rows(~expected_mask & (tokens != PAD_ID), f"holds a token other than PAD_ID={PAD_ID} at padding")
        return n_real - 2

    @torch.no_grad()
    def reconstruct(self, tokens: torch.Tensor | np.ndarray, token_mask: torch.Tensor | np.ndarray,
                    batch_size: int = 2048) -> tuple[torch.Tensor, torch.Tensor]:
        """Constituent features ``(N, P, 10)`` float32 and mask ``(N, P)`` decoded from token sequences
        ``(N, P + 2)``: continuous features as decoded, charge and particle type as the most likely class."""
        tokens, token_mask = torch.as_tensor(tokens), torch.as_tensor(token_mask)
        counts = self.check_tokens(tokens, token_mask)
        slots = tokens.shape[1] - 2
        mask = torch.arange(slots)[None, :] < counts[:, None]
        codes = torch.where(mask, tokens[:, 1:slots + 1] - CODE_OFFSET, -1)
        features = torch.zeros(len(tokens), slots, N_FEATURES)
        was_training = self.training
        self.eval()
        try:
            for start in range(0, len(tokens), batch_size):
                batch_mask = mask[start:start + batch_size]
                width = _used_width(batch_mask)
                m = batch_mask[:, :width].to(self.device)
                raw = self.vqvae.decode_codes(codes[start:start + batch_size, :width].to(self.device), m)
                features[start:start + batch_size, :width] = self.vqvae.to_features(raw, m).float().cpu()
        finally:
            self.train(was_training)
        return features, mask


def _refuse_rows(bad: torch.Tensor, problem: str) -> None:
    rows = torch.nonzero(bad.any(1)).flatten()
    if len(rows):
        raise ValueError(f"token sequence {int(rows[0])} (and {len(rows) - 1} more) {problem}; token sequences "
                         "must follow docs/conventions.md: [START, code+3, ..., STOP, PAD, ...]")


def _used_width(mask: torch.Tensor) -> int:
    """Slots up to the last real constituent in a batch (at least 1)."""
    used = torch.nonzero(mask.any(0)).flatten()
    return int(used.max()) + 1 if len(used) else 1


def _as_bool_mask(mask: torch.Tensor | np.ndarray) -> torch.Tensor:
    mask = torch.as_tensor(mask)
    if mask.dtype != torch.bool:
        raise DataError(f"mask must be boolean (True = real constituent), got {mask.dtype}; use mask.astype(bool)")
    if mask.ndim != 2:
        raise DataError(f"mask must be (n_jets, max_constituents), got shape {tuple(mask.shape)}")
    return mask.cpu()


def _check_inputs(features: torch.Tensor | np.ndarray,
                  mask: torch.Tensor | np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    mask = _as_bool_mask(mask)
    features = torch.as_tensor(features, dtype=torch.float32).cpu()
    if features.shape != (*mask.shape, N_FEATURES):
        raise DataError(f"features {tuple(features.shape)} must be (n_jets, max_constituents, {N_FEATURES}) "
                        f"matching mask {tuple(mask.shape)}; see tauml.data.features.FEATURE_NAMES")
    bad = ~torch.isfinite(features[mask]).all(1)
    if bool(bad.any()):
        raise DataError(f"{int(bad.sum())} real constituents have NaN or infinite features; fix or drop them")
    return features, mask
