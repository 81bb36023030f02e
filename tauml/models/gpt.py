"""The GPT backbone: token embedding, causal transformer blocks, and a next-token head.

As OmniJet-alpha's backbone (arXiv:2403.05618), with no positional encoding: a jet is a set of
constituents ordered by pT, and the order is already in the tokens.  Written after nanoGPT's ``model.py``
with pre-layer-norm blocks, PyTorch's ``scaled_dot_product_attention`` and boolean masks
(``True`` = real token).  Token ids follow ``docs/conventions.md`` (PAD 0, START 1, STOP 2, codes from 3).

Besides the model: :func:`next_token_loss` (real targets only) and the :func:`unigram_perplexity` baseline;
checkpoints (:func:`save_backbone`, :func:`load_backbone` of the first k blocks with every tensor verified,
:func:`verify_backbone`); jet generation (:func:`generate`, :func:`generate_jets`).  See ``docs/backbone.md``.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tauml.config import GPTConfig
from tauml.models import CheckpointError

try:  # the one token convention (docs/conventions.md) lives in the tokenizer module
    from tauml.models.vqvae import CODE_OFFSET, PAD_ID, START_ID, STOP_ID
except ModuleNotFoundError as _err:  # the tokenizer module is not there (yet): the same numbers
    if _err.name != "tauml.models.vqvae":
        raise
    PAD_ID, START_ID, STOP_ID, CODE_OFFSET = 0, 1, 2, 3

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


def unigram_perplexity(
    train_tokens: torch.Tensor, train_mask: torch.Tensor, val_tokens: torch.Tensor, val_mask: torch.Tensor,
    vocab_size: int | None = None,
) -> float:
    """Perplexity on the validation targets of the unigram distribution of the training targets.

    The no-learning baseline of next-token prediction: every target (codes and STOP) is predicted with the
    frequency it has among the training targets, with add-one smoothing over the ``vocab_size - 2`` tokens
    that can be targets (all but PAD and START).  ``vocab_size`` defaults to the largest token id + 1.
    """
    train_targets = torch.as_tensor(train_tokens)[:, 1:][torch.as_tensor(train_mask)[:, 1:]].long()
    val_targets = torch.as_tensor(val_tokens)[:, 1:][torch.as_tensor(val_mask)[:, 1:]].long()
    if len(train_targets) == 0 or len(val_targets) == 0:
        raise ValueError("no real target tokens in the training or the validation sequences")
    largest = int(max(train_targets.max(), val_targets.max()))
    vocab_size = largest + 1 if vocab_size is None else vocab_size
    if largest >= vocab_size:
        raise ValueError(f"token id {largest} does not fit vocab_size={vocab_size}")
    counts = torch.bincount(train_targets, minlength=vocab_size).double()
    counts[[PAD_ID, START_ID]] = 0.0
    possible = torch.ones(vocab_size, dtype=torch.float64)
    possible[[PAD_ID, START_ID]] = 0.0
    probabilities = (counts + possible) / (counts.sum() + possible.sum())
    return float(torch.exp(-torch.log(probabilities[val_targets]).mean()))


# ----------------------------------------------------------------------------------------------------------
# Checkpoints: save, load the first k blocks, verify
# ----------------------------------------------------------------------------------------------------------


def save_backbone(model: GPT, path: str | os.PathLike[str], metadata: dict[str, Any] | None = None) -> Path:
    """Write the backbone (all its tensors, its configuration and ``metadata``) atomically to ``path``.

    ``metadata`` must be JSON-like (numbers, strings, lists, dicts), e.g. the tokenizer checkpoint's hash,
    the epochs trained, the validation loss and perplexity; it is read back by :func:`read_backbone_metadata`.
    """
    from tauml.cache import MODEL_FORMAT_VERSION, atomic_path
    from tauml.config import to_dict

    payload = {
        "format": BACKBONE_FORMAT,
        "version": MODEL_FORMAT_VERSION,
        "gpt_config": to_dict(model.config),
        "vocab_size": model.config.vocab_size,
        "metadata": _plain(metadata or {}),
        "state_dict": {name: tensor.detach().cpu().clone() for name, tensor in model.state_dict().items()},
    }
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return path


def read_backbone_metadata(checkpoint: str | os.PathLike[str]) -> dict[str, Any]:
    """Everything a backbone checkpoint holds except its tensors (format, version, configuration, metadata)."""
    payload = _read_checkpoint(Path(checkpoint))
    return {key: value for key, value in payload.items() if key != "state_dict"}


def load_backbone(
    checkpoint: str | os.PathLike[str],
    n_blocks: int | None = None,
    vocab_size: int | None = None,
    n_embd: int | None = None,
) -> GPT:
    """A GPT with the embedding, the first ``n_blocks`` pretrained blocks (all by default), the final
    LayerNorm and the next-token head of ``checkpoint``, verified tensor by tensor; in eval mode.

    The model is built with ``n_blocks`` blocks and loaded with ``strict=True`` after the keys of the later
    blocks are dropped explicitly.  ``vocab_size`` and ``n_embd``, when given, are what the caller expects
    (its tokenizer's vocabulary, its head's width).  Raises :class:`CheckpointError` for a missing or corrupt
    file, another format or version, a vocabulary or width that does not fit, or too many blocks asked for.
    """
    from tauml.config import ConfigError, GPTConfig, from_dict

    path = Path(checkpoint)
    payload = _read_checkpoint(path)
    try:
        config = from_dict(GPTConfig, payload["gpt_config"])
        config.validate()
    except (ConfigError, TypeError) as err:
        raise CheckpointError(f"{path} holds an unusable GPT configuration ({err}); pretrain the backbone again") from err
    if vocab_size is not None and vocab_size != config.vocab_size:
        raise CheckpointError(
            f"{path} was pretrained with vocab_size={config.vocab_size} (codebook {config.vocab_size - 3} + 3), "
            f"but vocab_size={vocab_size} is expected here: use the tokenizer the backbone was pretrained with "
            f"(metadata: {payload['metadata'].get('tokenizer', 'not recorded')}) or pretrain a backbone on this tokenizer"
        )
    if n_embd is not None and n_embd != config.n_embd:
        raise CheckpointError(
            f"{path} has width n_embd={config.n_embd}, but n_embd={n_embd} is expected here: build the head "
            f"with n_embd={config.n_embd} or pretrain a backbone of width {n_embd}"
        )
    k = config.n_layer if n_blocks is None else n_blocks
    if not 1 <= k <= config.n_layer:
        raise CheckpointError(
            f"n_blocks={k} asked for, but {path} has {config.n_layer} pretrained blocks: "
            f"choose n_blocks in 1..{config.n_layer} (or None for all)"
        )
    state = {name: tensor for name, tensor in payload["state_dict"].items() if _block_index(name) < k}
    model = GPT(replace(config, n_layer=k))
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise CheckpointError(f"{path} does not fit a {k}-block GPT of its own configuration: {err}") from err
    verify_backbone(model, state, source=str(path))
    return model.eval()


def verify_backbone(model: nn.Module, checkpoint: str | os.PathLike[str] | dict[str, torch.Tensor],
                    prefix: str = "", source: str = "") -> int:
    """Check that every backbone tensor of ``model`` equals the checkpoint's; return how many were compared.

    ``checkpoint`` is a backbone file or a state dict; ``prefix`` is where the GPT sits inside ``model``
    (e.g. ``"backbone."`` in a tau model).  Use it after building a model around a loaded backbone, to
    catch a re-initialisation of the pretrained weights (the reference's pitfall H.1).  Only the blocks the
    model has are compared.  Raises :class:`CheckpointError` on any difference or missing tensor.
    """
    if isinstance(checkpoint, dict):
        expected = checkpoint
    else:
        source = source or str(checkpoint)
        expected = _read_checkpoint(Path(checkpoint))["state_dict"]
    own = {name[len(prefix):]: tensor for name, tensor in model.state_dict().items() if name.startswith(prefix)}
    if not own:
        raise CheckpointError(f"the model has no tensors under prefix {prefix!r}: pass where the GPT sits in it")
    n_blocks = 1 + max((_block_index(name) for name in own if name.startswith("blocks.")), default=-1)
    compared = 0
    for name, reference in expected.items():
        if _block_index(name) >= n_blocks:
            continue
        if name not in own:
            raise CheckpointError(f"the model lacks the pretrained tensor {prefix}{name} of {source or 'the checkpoint'}")
        tensor = own[name].detach().cpu()
        if tensor.shape != reference.shape or not torch.equal(tensor, reference.to(tensor.dtype)):
            raise CheckpointError(
                f"{prefix}{name} differs from {source or 'the checkpoint'}: the pretrained weights were changed "
                "after loading (re-initialised?); apply custom initialisation to the new head only"
            )
        compared += 1
    return compared


def _read_checkpoint(path: Path) -> dict[str, Any]:
    from tauml.cache import MODEL_FORMAT_VERSION

    if not path.is_file():
        raise CheckpointError(
            f"no backbone checkpoint at {path}: pretrain one (tauml.training.pretrain.pretrain) or give the right path"
        )
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated, not a torch file, or holding objects other than tensors and plain data
        raise CheckpointError(f"cannot read the backbone checkpoint {path} ({err}); delete it and pretrain again") from err
    if not isinstance(payload, dict) or payload.get("format") != BACKBONE_FORMAT:
        found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise CheckpointError(
            f"{path} is not a tauml backbone checkpoint (format {found!r}, expected {BACKBONE_FORMAT!r}); "
            "write backbones with tauml.models.gpt.save_backbone"
        )
    if payload.get("version") != MODEL_FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has backbone format version {payload.get('version')}, this tauml reads version "
            f"{MODEL_FORMAT_VERSION}: pretrain the backbone again with this version"
        )
    missing = {"gpt_config", "vocab_size", "metadata", "state_dict"} - set(payload)
    if missing:
        raise CheckpointError(f"{path} lacks {sorted(missing)}; it is damaged: delete it and pretrain again")
    return payload


def _block_index(name: str) -> int:
    """The block number in a parameter name ``blocks.<i>.…``; -1 for tensors outside the blocks."""
    parts = name.split(".")
    return int(parts[1]) if parts[0] == "blocks" else -1


def _plain(value: Any) -> Any:
    """``value`` as JSON-like data (what ``torch.load(weights_only=True)`` reads back)."""
    import json

    def default(obj: Any) -> Any:
        if hasattr(obj, "item") and getattr(obj, "ndim", 1) == 0:  # numpy and torch scalars
            return obj.item()
        if isinstance(obj, (Path, os.PathLike)):
            return str(obj)
        raise TypeError(f"metadata holds a {type(obj).__name__}; give numbers, strings, lists and dicts only")

    return json.loads(json.dumps(value, default=default))


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
