"""Saving, loading and verifying every model tauml trains: tokenizer, backbone, tau model.

Every file is read with ``torch.load(weights_only=True)``: tensors and plain data only, never a pickle that
could run code.  Each checkpoint names its format and version, and a file that does not fit (another
format, version, vocabulary, width or token convention, truncated) raises :class:`CheckpointError` with the
path and what to do.  A backbone loaded into a larger model is verified tensor by tensor
(:func:`verify_backbone`), so pretrained weights provably survive model construction.
"""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tauml.cache import MODEL_FORMAT_VERSION, atomic_path
from tauml.config import ConfigError, FeatureConfig, GPTConfig, TokenizerConfig, from_dict, to_dict
from tauml.data.features import FEATURE_NAMES
from tauml.models import CheckpointError
from tauml.models.gpt import BACKBONE_FORMAT, GPT
from tauml.models.vqvae import CODE_OFFSET, TOKEN_CONVENTION, TOKENIZER_FORMAT, Tokenizer

# ----------------------------------------------------------------------------------------------------------
# Checkpoints
# ----------------------------------------------------------------------------------------------------------


def save_tokenizer(tokenizer: Tokenizer, path: str | os.PathLike[str],
                   metadata: dict[str, Any] | None = None) -> None:
    """Write the tokenizer (settings, feature names, token convention, weights, training metadata) atomically.

    ``metadata`` (defaults to ``tokenizer.metadata``) must hold only numbers, strings, lists and dicts.
    """
    checkpoint = {
        "format": TOKENIZER_FORMAT,
        "version": MODEL_FORMAT_VERSION,
        "tokenizer_config": to_dict(tokenizer.config),
        "feature_config": to_dict(tokenizer.feature_config),
        "feature_names": list(tokenizer.feature_names),
        "token_convention": dict(TOKEN_CONVENTION),
        "state_dict": {k: v.detach().cpu().clone() for k, v in tokenizer.state_dict().items()},
        "metadata": dict(tokenizer.metadata if metadata is None else metadata),
    }
    with atomic_path(path) as tmp:
        torch.save(checkpoint, tmp)


def load_tokenizer(path: str | os.PathLike[str], device: str | torch.device = "cpu") -> Tokenizer:
    """Read a checkpoint written by :func:`save_tokenizer`; the tokenizer comes back frozen.

    Raises :class:`CheckpointError` for a missing, truncated or foreign file, another format version or token
    convention, or weights that do not fit the stored settings.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise CheckpointError(f"no tokenizer checkpoint at {path}; train one with "
                              "tauml.training.tokenizer.train_tokenizer (or check the path)")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise CheckpointError(f"cannot read the tokenizer checkpoint {path} ({type(err).__name__}: {err}); the file "
                              "is truncated or not a tauml tokenizer: delete it and train or copy it again") from err
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != TOKENIZER_FORMAT:
        found = checkpoint.get("format") if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise CheckpointError(f"{path} is not a tauml tokenizer checkpoint (format {found!r}, expected "
                              f"{TOKENIZER_FORMAT!r})")
    if checkpoint.get("version") != MODEL_FORMAT_VERSION:
        raise CheckpointError(f"{path} has model format version {checkpoint.get('version')}, this tauml reads "
                              f"version {MODEL_FORMAT_VERSION}: retrain the tokenizer with this version")
    if checkpoint.get("token_convention") != TOKEN_CONVENTION:
        raise CheckpointError(f"{path} uses the token convention {checkpoint.get('token_convention')}, tauml uses "
                              f"{TOKEN_CONVENTION}: retrain the tokenizer")
    if tuple(checkpoint.get("feature_names", ())) != FEATURE_NAMES:
        raise CheckpointError(f"{path} was trained on features {checkpoint.get('feature_names')}, tauml builds "
                              f"{list(FEATURE_NAMES)}: retrain the tokenizer")
    try:
        config = from_dict(TokenizerConfig, checkpoint["tokenizer_config"])
        feature_config = from_dict(FeatureConfig, checkpoint["feature_config"])
        tokenizer = Tokenizer(config, feature_config)
        tokenizer.load_state_dict(checkpoint["state_dict"])
    except (ConfigError, KeyError, TypeError, RuntimeError) as err:
        raise CheckpointError(f"the weights in {path} do not fit its settings ({err}); the file is damaged") from err
    tokenizer.metadata = dict(checkpoint.get("metadata", {}))
    return tokenizer.to(device).freeze()


def check_compatible(tokenizer: Tokenizer, feature_config: FeatureConfig | None = None,
                     n_features: int | None = None, vocab_size: int | None = None,
                     feature_names: tuple[str, ...] | list[str] | None = None) -> None:
    """Raise :class:`CheckpointError` when the tokenizer does not fit the data or the backbone.

    ``feature_config``: the feature transforms must be the tokenizer's (the ``max_constituents_*`` settings
    may differ: the tokenizer handles any number of constituents).  ``n_features``/``feature_names``: the
    data's feature axis.  ``vocab_size``: the backbone's vocabulary (codebook size + 3).
    """
    if feature_config is not None:
        ignore = {"max_constituents_tau", "max_constituents_jetclass"}
        ours = {k: v for k, v in to_dict(tokenizer.feature_config).items() if k not in ignore}
        theirs = {k: v for k, v in to_dict(feature_config).items() if k not in ignore}
        differ = sorted(k for k in ours if ours[k] != theirs.get(k))
        if differ:
            detail = ", ".join(f"{k}: tokenizer {ours[k]} vs data {theirs.get(k)}" for k in differ)
            raise CheckpointError(f"the tokenizer was trained with other feature transforms ({detail}); build "
                                  "the features with the tokenizer's FeatureConfig or retrain the tokenizer")
    if n_features is not None and n_features != len(tokenizer.feature_names):
        raise CheckpointError(f"the data has {n_features} features per constituent, the tokenizer expects "
                              f"{len(tokenizer.feature_names)} ({', '.join(tokenizer.feature_names)})")
    if feature_names is not None and tuple(feature_names) != tuple(tokenizer.feature_names):
        raise CheckpointError(f"the data's features {list(feature_names)} are not the tokenizer's "
                              f"{list(tokenizer.feature_names)} (names and order must match)")
    if vocab_size is not None and vocab_size != tokenizer.vocab_size:
        raise CheckpointError(f"the backbone has vocab_size={vocab_size}, the tokenizer gives "
                              f"{tokenizer.vocab_size} (codebook {tokenizer.codebook_size} + {CODE_OFFSET} special "
                              "tokens): use the tokenizer the backbone was pretrained with")


# ----------------------------------------------------------------------------------------------------------
# Checkpoints: save, load the first k blocks, verify
# ----------------------------------------------------------------------------------------------------------


def save_backbone(model: GPT, path: str | os.PathLike[str], metadata: dict[str, Any] | None = None) -> Path:
    """Write the backbone (all its tensors, its configuration and ``metadata``) atomically to ``path``.

    ``metadata`` must be JSON-like (numbers, strings, lists, dicts), e.g. the tokenizer checkpoint's hash,
    the epochs trained, the validation loss and perplexity; it is read back by :func:`read_backbone_metadata`.
    """

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
    inputs: str | None = None,
) -> GPT:
    """A GPT with the embedding, the first ``n_blocks`` pretrained blocks (all by default), the final
    LayerNorm and the next-token head of ``checkpoint``, verified tensor by tensor; in eval mode.

    The model is built with ``n_blocks`` blocks and loaded with ``strict=True`` after the keys of the later
    blocks are dropped explicitly.  ``vocab_size`` and ``n_embd``, when given, are what the caller expects
    (its tokenizer's vocabulary, its head's width); ``inputs`` what the caller feeds it (``"tokens"`` or
    ``"continuous"``: a backbone is fine-tuned on the kind of input it was pretrained on).  Raises :class:`CheckpointError` for a missing or corrupt
    file, another format or version, a vocabulary or width that does not fit, or too many blocks asked for.
    """

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
    if inputs is not None and inputs != config.inputs:
        raise CheckpointError(
            f"{path} was pretrained on inputs={config.inputs!r}, but inputs={inputs!r} would be fed to it here: "
            f"fine-tune it with GPTConfig.inputs={config.inputs!r}, or pretrain a backbone on {inputs!r} inputs"
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
    model.next_token_trained = float(payload["metadata"].get("ntp_weight", 1.0)) > 0
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
            "write backbones with tauml.models.checkpoints.save_backbone"
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

    def default(obj: Any) -> Any:
        if hasattr(obj, "item") and getattr(obj, "ndim", 1) == 0:  # numpy and torch scalars
            return obj.item()
        if isinstance(obj, (Path, os.PathLike)):
            return str(obj)
        raise TypeError(f"metadata holds a {type(obj).__name__}; give numbers, strings, lists and dicts only")

    return json.loads(json.dumps(value, default=default))


