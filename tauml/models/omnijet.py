"""Importing the released OmniJet-alpha checkpoints (arXiv:2403.05618) into tauml's models.

OmniJet-alpha (https://github.com/uhh-pd-ml/omnijet_alpha, package ``gabbro``) publishes a VQ-VAE tokenizer and a
generative GPT backbone as PyTorch Lightning checkpoints.  :func:`import_omnijet` reads one of them with
``torch.load(weights_only=True)`` (tensors and plain containers only: nothing in the file can run code), maps
its ``state_dict`` tensor by tensor onto tauml's :class:`~tauml.models.vqvae.Tokenizer` or
:class:`~tauml.models.gpt.GPT`, writes a tauml checkpoint, reads that back with tauml's loader and checks every
tensor against its source (or the documented transform of it).  What maps and what does not is in
``docs/omnijet.md``; in short:

* **tokenizer**: the NormFormer VQ-VAE is the same function as tauml's (categorical head ``"mse"``) on real
  constituents, so a 10-feature OmniJet tokenizer maps exactly (vqtorch's affine codebook transform folded into
  the codebook).  The released 8192-token tokenizer reads 3 features (pT, Δη, Δφ) and tauml's 10: refused.
* **backbone**: the tensors correspond one to one, but OmniJet's blocks are post-LN with ReLU and no final
  LayerNorm, tauml's pre-LN with GELU and a final LayerNorm: the same weights compute a different function.
  The import therefore refuses unless asked to write the weights as an *initialisation*
  (``as_initialisation=True``), recorded as such in the checkpoint's metadata.

Token ids: OmniJet's backbone uses start 0 (also padding), code c -> c + 1, stop = codes + 1; tauml uses PAD 0,
START 1, STOP 2, code c -> c + 3 (docs/conventions.md).  Embedding rows and head rows are re-indexed
accordingly (:func:`token_index`).
"""

from __future__ import annotations

import hashlib
import os
import pickle
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from tauml.config import FeatureConfig, GPTConfig, TokenizerConfig
from tauml.models import CheckpointError
from tauml.models.checkpoints import load_backbone, load_tokenizer, save_backbone, save_tokenizer
from tauml.models.gpt import GPT
from tauml.models.vqvae import CODE_OFFSET, PAD_ID, START_ID, STOP_ID, Tokenizer

REPOSITORY = "https://github.com/uhh-pd-ml/omnijet_alpha"
#: Where ``checkpoints/download_checkpoints.sh`` of the repository downloads the released checkpoints from (a
#: tar archive on DESY's sync&share; no published hash).
CHECKPOINTS_URL = "https://syncandshare.desy.de/public.php/dav/files/HX388YZbjSGPNcC/?accept=zip"
KINDS = ("backbone", "tokenizer")

#: Strips a Lightning checkpoint to its ``state_dict`` and plain hyper-parameters.  Run it only where unpickling
#: the file is safe (the reference's own environment, e.g. its docker image), with IN and OUT as arguments.
STRIP_COMMAND = (
    "python -c \"import sys, json, torch; c = torch.load(sys.argv[1], map_location='cpu', weights_only=False); "
    "h = c.get('hyper_parameters') or {}; "
    "p = lambda o: dict(o) if hasattr(o, 'keys') else list(o) if hasattr(o, '__iter__') else str(o); "
    "torch.save({'state_dict': dict(c['state_dict']), 'hyper_parameters': json.loads(json.dumps("
    "{k: h[k] for k in ('model_kwargs', 'model_type') if k in h}, default=p))}, sys.argv[2])\""
)

#: What differs between OmniJet-alpha's backbone and tauml's GPT although every tensor has a counterpart.
BACKBONE_DIFFERENCES = (
    "blocks: OmniJet is post-LN, x = LN1(x + attention(x)), x = LN2(x + FFN(x)); tauml is pre-LN, "
    "x = x + attention(LN1(x)), x = x + MLP(LN2(x))",
    "feed-forward activation: OmniJet ReLU, tauml GELU",
    "final LayerNorm: tauml's ln_f has no OmniJet counterpart (written as the identity: weight 1, bias 0)",
    "next-token head: OmniJet's has a bias, tauml's lm_head has none (the bias is dropped)",
)


class OmniJetImportError(CheckpointError):
    """An OmniJet-alpha checkpoint cannot be read or does not map onto tauml's model."""


@dataclass(frozen=True)
class TensorMap:
    """One tauml tensor, built from OmniJet tensors ``sources`` by ``build`` (described by ``transform``)."""

    target: str
    sources: tuple[str, ...]
    transform: str
    build: Callable[[dict[str, torch.Tensor]], torch.Tensor]


@dataclass
class ImportReport:
    """What :func:`import_omnijet` did: tensors mapped, tensors not mapped (with why), what differs, what was
    checked."""

    kind: str
    source: str
    out: str = ""
    exact: bool = True
    mapped: list[TensorMap] = field(default_factory=list)
    not_mapped: list[str] = field(default_factory=list)
    differences: list[str] = field(default_factory=list)
    not_verified: list[str] = field(default_factory=list)
    verified: int = 0
    settings: dict[str, Any] = field(default_factory=dict)

    def lines(self) -> list[str]:
        out = [f"OmniJet-alpha {self.kind} {self.source} -> tauml {self.kind} {self.out}",
               f"  settings: {', '.join(f'{k}={v}' for k, v in self.settings.items())}",
               f"  mapped ({len(self.mapped)} tensors):"]
        out += [f"    {m.target} <- {' + '.join(m.sources)}  [{m.transform}]" for m in self.mapped]
        out += ["  not mapped:", *(f"    {line}" for line in self.not_mapped or ["nothing"])]
        if self.differences:
            out += ["  NOT the same function as OmniJet-alpha (written as an initialisation only):",
                    *(f"    {line}" for line in self.differences)]
        if self.not_verified:
            out += ["  not verifiable from the file (check them yourself):", *(f"    {line}" for line in self.not_verified)]
        out.append(f"  verified: the written checkpoint, read back with tauml's loader, has {self.verified} tensors "
                   "equal to their source (or its transform above)")
        return out

    def metadata(self, path: Path) -> dict[str, Any]:
        return {"imported_from": "OmniJet-alpha", "repository": REPOSITORY, "source_file": path.name,
                "source_sha256": _sha256(path), "exact": self.exact, "differences": list(self.differences),
                "not_mapped": list(self.not_mapped), "not_verified": list(self.not_verified),
                "mapping": [f"{m.target} <- {' + '.join(m.sources)} [{m.transform}]" for m in self.mapped]}


# ----------------------------------------------------------------------------------------------------------
# Reading
# ----------------------------------------------------------------------------------------------------------


def read_checkpoint(path: str | os.PathLike[str]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """``(state_dict, hyper_parameters)`` of a Lightning checkpoint (or of a bare state dict), read with
    ``weights_only=True``.  A file holding other Python objects (Lightning's hyper-parameters usually do) is
    refused with the command that strips it; nothing in it is ever unpickled."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path} — download the OmniJet-alpha checkpoints ({CHECKPOINTS_URL}, "
                                "see docs/omnijet.md) or check the path")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if "Weights only load failed" not in str(err):
            raise OmniJetImportError(f"cannot read {path} ({str(err)[:200]}) — it is not a PyTorch checkpoint or is "
                                     "truncated: download it again") from err
        found = sorted(set(re.findall(r"GLOBAL ([\w.]+)", str(err)))) or ["an object tauml does not read"]
        raise OmniJetImportError(
            f"{path} holds Python objects besides tensors and plain containers ({', '.join(found)}), and tauml never "
            "unpickles those — strip it to its state_dict and plain hyper-parameters where unpickling it is safe (the "
            f"reference's environment), e.g. {STRIP_COMMAND} {path} stripped.ckpt, then import stripped.ckpt"
        ) from err
    except Exception as err:  # not a zip, truncated, empty
        raise OmniJetImportError(f"cannot read {path} ({type(err).__name__}: {str(err)[:200]}) — it is not a PyTorch "
                                 "checkpoint or is truncated: download it again") from err
    if isinstance(payload, dict) and isinstance(payload.get("state_dict"), dict):
        state, hparams = payload["state_dict"], payload.get("hyper_parameters")
    elif isinstance(payload, dict) and payload and all(isinstance(v, torch.Tensor) for v in payload.values()):
        state, hparams = payload, None
    else:
        raise OmniJetImportError(f"{path} is neither a Lightning checkpoint (a dict with a 'state_dict') nor a state "
                                 "dict of tensors — give an OmniJet-alpha .ckpt file")
    bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise OmniJetImportError(f"{path}: the state_dict holds non-tensors ({', '.join(map(str, bad[:3]))}) — give an "
                                 "OmniJet-alpha checkpoint")
    return dict(state), hparams if isinstance(hparams, dict) else {}


def token_index(n_codes: int) -> torch.Tensor:
    """For every tauml token id, the OmniJet backbone id it is taken from (length ``n_codes + 3``).

    tauml code token ``c + 3`` <- OmniJet ``c + 1``; START <- OmniJet's start 0; STOP <- OmniJet's end
    ``n_codes + 1``; PAD <- 0 as well (OmniJet pads with the start id; tauml masks PAD everywhere).
    """
    index = torch.empty(n_codes + CODE_OFFSET, dtype=torch.long)
    index[PAD_ID], index[START_ID], index[STOP_ID] = 0, 0, n_codes + 1
    index[CODE_OFFSET:] = torch.arange(1, n_codes + 1)
    return index


# ----------------------------------------------------------------------------------------------------------
# Backbone
# ----------------------------------------------------------------------------------------------------------


def backbone_mapping(state: dict[str, torch.Tensor], hparams: dict[str, Any], n_head: int | None,
                     source: str) -> tuple[GPTConfig, list[TensorMap], list[str]]:
    """tauml's GPT settings, the tensor maps and the OmniJet tensors left out, for an OmniJet backbone."""
    kwargs = _model_kwargs(hparams)
    prefix = _prefix(state, "embedding_table.weight", source, "backbone",
                     other=("vqlayer.codebook.weight", "tokenizer"))
    embedding = state[prefix + "embedding_table.weight"]
    n_codes, width = embedding.shape[0] - 2, embedding.shape[1]
    blocks = _indices(state, prefix + "GPT_blocks.")
    if n_codes < 1 or not blocks:
        raise OmniJetImportError(f"{source} has an embedding table {tuple(embedding.shape)} and {len(blocks)} GPT "
                                 "blocks — not an OmniJet-alpha backbone: give the generative checkpoint")
    n_head = _setting(n_head, kwargs.get("n_heads"), "n_heads", "--n-head", source,
                      "8 for the released generative_8192_tokens model, 32 for the core paper's tau variant")
    ffn = _tensor(state, f"{prefix}GPT_blocks.0.ff_block.net.0.weight", source).shape[0]
    config = GPTConfig(n_layer=len(blocks), n_head=n_head, n_embd=width, ffn_dim=ffn, dropout=0.0,
                       vocab_size=n_codes + CODE_OFFSET)
    index = token_index(n_codes)
    maps = [TensorMap("wte.weight", (prefix + "embedding_table.weight",), "rows re-indexed to tauml's token ids",
                      lambda s, k=prefix + "embedding_table.weight": s[k][index])]
    for i in blocks:
        b = f"{prefix}GPT_blocks.{i}."
        pairs = [("ln1", "layernorm_1"), ("attn.proj", "mha_block.proj"), ("ln2", "layernorm_2"),
                 ("mlp.fc", "ff_block.net.0"), ("mlp.out", "ff_block.net.2")]
        for ours, theirs in pairs:
            for kind in ("weight", "bias"):
                maps.append(_copy(f"blocks.{i}.{ours}.{kind}", f"{b}{theirs}.{kind}"))
        qkv = tuple(f"{b}mha_block.{name}.weight" for name in ("query", "key", "value"))
        maps.append(TensorMap(f"blocks.{i}.attn.qkv.weight", qkv, "query, key, value concatenated along rows",
                              lambda s, k=qkv: torch.cat([s[name] for name in k])))
    heads = [k for k in state if k.endswith("head.fc1.weight") and not k.startswith(prefix + "GPT_blocks.")]
    left_out = ["ln_f: no OmniJet counterpart, written as the identity (weight 1, bias 0)"]
    dropped: set[str] = set()
    if len(heads) == 1:
        maps.append(TensorMap("lm_head.weight", (heads[0],), "rows re-indexed to tauml's token ids",
                              lambda s, k=heads[0]: s[k][index]))
        bias = heads[0][:-len("weight")] + "bias"
        if bias in state:
            dropped.add(bias)
            left_out.append(f"{bias}: tauml's lm_head has no bias (dropped; it matters for generation only)")
    else:
        left_out.append("lm_head: the checkpoint has no next-token head (head.fc1), left at tauml's initialisation")
    used = {name for m in maps for name in m.sources} | dropped
    _check_leftovers(state, prefix, used, ignore=(".tril",), source=source, kind="backbone")
    left_out += _others(state, prefix, used)
    return config, maps, left_out


def import_backbone(path: str | os.PathLike[str], out: str | os.PathLike[str], n_head: int | None = None,
                    as_initialisation: bool = False, overwrite: bool = False) -> ImportReport:
    """Map an OmniJet-alpha backbone onto tauml's GPT and write it with :func:`save_backbone` to ``out``.

    Because the two architectures differ (``BACKBONE_DIFFERENCES``), this refuses unless ``as_initialisation``
    says that the weights are wanted as a starting point for tauml's GPT, not as OmniJet-alpha's model.
    """
    path, out = Path(path), Path(out)
    _check_out(out, overwrite)
    state, hparams = read_checkpoint(path)
    config, maps, left_out = backbone_mapping(state, hparams, n_head, str(path))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = GPT(config)
    target = _mapped_state(model.state_dict(), maps, state, str(path))
    target["ln_f.weight"] = torch.ones_like(target["ln_f.weight"])
    target["ln_f.bias"] = torch.zeros_like(target["ln_f.bias"])
    if not as_initialisation:
        raise OmniJetImportError(
            f"{path}: every tensor of the OmniJet-alpha backbone has a counterpart in tauml's GPT, but the two are not "
            f"the same function ({'; '.join(BACKBONE_DIFFERENCES)}) — tauml cannot run OmniJet-alpha's backbone; to use "
            "its weights as the initialisation of tauml's GPT anyway, add --as-initialisation (docs/omnijet.md)")
    model.load_state_dict(target, strict=True)
    report = ImportReport("backbone", str(path), str(out), exact=False, mapped=maps, not_mapped=left_out,
                          differences=list(BACKBONE_DIFFERENCES), settings=_settings(config))
    save_backbone(model, out, metadata=report.metadata(path))
    loaded = load_backbone(out, vocab_size=config.vocab_size, n_embd=config.n_embd).state_dict()
    identity = {"ln_f.weight": torch.ones(config.n_embd), "ln_f.bias": torch.zeros(config.n_embd)}
    report.verified = _verify(loaded, maps, state, str(out), extra=identity)
    return report


# ----------------------------------------------------------------------------------------------------------
# Tokenizer
# ----------------------------------------------------------------------------------------------------------

#: tauml's VQVAE module names <- OmniJet's, for its two transformer layouts (VQVAENormFormer, VQVAETransformer).
_TOKENIZER_LAYOUTS = {
    "input_projection.weight": {"embed": "input_projection", "encoder": "encoder_normformer.blocks",
                                "to_latent": "latent_projection_in", "from_latent": "latent_projection_out",
                                "decoder": "decoder_normformer.blocks", "head": "output_projection"},
    "encoder.project_in.weight": {"embed": "encoder.project_in", "encoder": "encoder.blocks",
                                  "to_latent": "encoder.project_out", "from_latent": "decoder.project_in",
                                  "decoder": "decoder.blocks", "head": "decoder.project_out"},
}
_BLOCK_NAMES = (("norm_in", "norm1"), ("attn.qkv", "attn.in_proj"), ("attn.proj", "attn.out_proj"),
                ("norm_attn", "norm2"), ("mlp.0", "mlp.0"), ("mlp.1", "mlp.1"), ("mlp.4", "mlp.4"))
_N_FEATURES = 10


def tokenizer_mapping(state: dict[str, torch.Tensor], hparams: dict[str, Any], n_head: int | None,
                      affine_lr: float | None, source: str) -> tuple[TokenizerConfig, list[TensorMap], list[str]]:
    """tauml's tokenizer settings, the tensor maps and the OmniJet tensors left out, for an OmniJet VQ-VAE."""
    kwargs = _model_kwargs(hparams)
    prefix = _prefix(state, "vqlayer.codebook.weight", source, "tokenizer",
                     other=("embedding_table.weight", "backbone"))
    layout = next((names for anchor, names in _TOKENIZER_LAYOUTS.items() if prefix + anchor in state), None)
    if layout is None:
        raise OmniJetImportError(
            f"{source}: the tokenizer is not one of OmniJet's transformer VQ-VAEs (no {prefix}input_projection or "
            f"{prefix}encoder.project_in; model_type {hparams.get('model_type', 'not recorded')}) — only "
            "VQVAENormFormer and VQVAETransformer correspond to tauml's tokenizer; the MLP one (VQVAEMLP) does not")
    embed, head = state[f"{prefix}{layout['embed']}.weight"], _tensor(state, f"{prefix}{layout['head']}.weight", source)
    if embed.shape[1] != _N_FEATURES or head.shape[0] != _N_FEATURES:
        raise OmniJetImportError(
            f"{source}: the tokenizer reads {embed.shape[1]} and writes {head.shape[0]} features per constituent "
            f"({prefix}{layout['embed']}.weight {tuple(embed.shape)}), tauml's reads and writes the 10 of "
            "docs/conventions.md — its input and output layers have no counterpart (the released 8192-token tokenizer "
            "reads 3: pT, Δη, Δφ); only a 10-feature OmniJet tokenizer, as the core paper's, maps (docs/omnijet.md)")
    codebook = state[prefix + "vqlayer.codebook.weight"]
    encoder, decoder = (_indices(state, f"{prefix}{layout[part]}.") for part in ("encoder", "decoder"))
    if not encoder or encoder != decoder:
        raise OmniJetImportError(f"{source}: {len(encoder)} encoder and {len(decoder)} decoder blocks — tauml's "
                                 "tokenizer has the same number (n_blocks, at least 1) in both")
    n_head = _setting(n_head, kwargs.get("num_heads"), "num_heads", "--n-head", source,
                      "8 for the released vqvae_8192_tokens model")
    vq = kwargs.get("vq_kwargs") if isinstance(kwargs.get("vq_kwargs"), dict) else {}
    for name in ("norm", "cb_norm"):
        if vq.get(name) not in (None, "none"):
            raise OmniJetImportError(f"{source}: vq_kwargs.{name}={vq[name]!r} normalises the latents or the codebook, "
                                     "tauml's quantizer does not — only checkpoints without it map")
    if vq.get("affine_groups", 1) != 1:
        raise OmniJetImportError(f"{source}: vq_kwargs.affine_groups={vq['affine_groups']} — only one group maps")
    maps = [_copy(f"vqvae.{ours}.{kind}", f"{prefix}{layout[ours]}.{kind}")
            for ours in ("embed", "to_latent", "from_latent", "head") for kind in ("weight", "bias")]
    for part in ("encoder", "decoder"):
        for i in encoder:
            for ours, theirs in _BLOCK_NAMES:
                for kind in ("weight", "bias"):
                    suffix = "_" + kind if theirs == "attn.in_proj" else "." + kind
                    maps.append(_copy(f"vqvae.{part}.{i}.{ours}.{kind}", f"{prefix}{layout[part]}.{i}.{theirs}{suffix}"))
    maps.append(_codebook_map(state, prefix + "vqlayer.", vq, affine_lr, source))
    config = TokenizerConfig(codebook_size=codebook.shape[0], latent_dim=codebook.shape[1], hidden_dim=embed.shape[0],
                             n_blocks=len(encoder), n_heads=n_head, dropout=0.1, categorical_loss="mse")
    used = {name for m in maps for name in m.sources}
    _check_leftovers(state, prefix, used, source=source, kind="tokenizer",
                     ignore=("vqlayer._counts", "vqlayer.data_initialized", "affine_transform.running_statistics_initialized"))
    left_out = [f"{prefix}vqlayer._counts, data_initialized: vqtorch's training state (dead-code counters, k-means "
                "flag); tauml's quantizer is written initialised with zero counters"]
    return config, maps, left_out + _others(state, prefix, used)


def _codebook_map(state: dict[str, torch.Tensor], vq: str, vq_kwargs: dict[str, Any], affine_lr: float | None,
                  source: str) -> TensorMap:
    """The codebook tauml's quantizer uses: vqtorch's with its affine transform folded in."""
    codebook = vq + "codebook.weight"
    if vq + "affine_transform.scale" in state:
        lr = _setting(affine_lr, vq_kwargs.get("affine_lr"), "vq_kwargs.affine_lr", "--affine-lr", source,
                      "2 for the released vqvae_8192_tokens model")
        names = (codebook, vq + "affine_transform.scale", vq + "affine_transform.bias")
        return TensorMap("vqvae.quantizer.codebook", names, f"affine folded in: (1 + {lr:g} scale) * codebook + {lr:g} bias",
                         lambda s: (1.0 + lr * s[names[1]]) * s[names[0]] + lr * s[names[2]])
    if vq + "affine_transform.running_c_mean" in state:
        names = (codebook, *(vq + f"affine_transform.running_{n}" for n in ("ze_mean", "ze_var", "c_mean", "c_var")))

        def build(s: dict[str, torch.Tensor]) -> torch.Tensor:
            scale = (s[names[2]] / (s[names[4]] + 1e-8)).sqrt()
            return scale * s[names[0]] + (s[names[1]] - scale * s[names[3]])

        return TensorMap("vqvae.quantizer.codebook", names, "running-statistics affine folded in", build)
    return _copy("vqvae.quantizer.codebook", codebook)


def import_tokenizer(path: str | os.PathLike[str], out: str | os.PathLike[str], n_head: int | None = None,
                     affine_lr: float | None = None, overwrite: bool = False) -> ImportReport:
    """Map an OmniJet-alpha VQ-VAE (10 features) onto tauml's tokenizer and write it with :func:`save_tokenizer`."""
    path, out = Path(path), Path(out)
    _check_out(out, overwrite)
    state, hparams = read_checkpoint(path)
    config, maps, left_out = tokenizer_mapping(state, hparams, n_head, affine_lr, str(path))
    tokenizer = Tokenizer(config, FeatureConfig())
    target = _mapped_state(tokenizer.state_dict(), maps, state, str(path))
    target["vqvae.quantizer.initialised"] = torch.tensor(True)
    target["vqvae.quantizer.steps_unused"] = torch.zeros(config.codebook_size, dtype=torch.long)
    tokenizer.load_state_dict(target, strict=True)
    report = ImportReport("tokenizer", str(path), str(out), exact=True, mapped=maps, not_mapped=left_out,
                          settings=_settings(config), not_verified=[
                              "the feature transforms: OmniJet keeps them in the run's config.yaml, not in the "
                              "checkpoint; tauml records its own FeatureConfig (docs/conventions.md), which must be "
                              "the tokenizer's"])
    tokenizer.metadata = report.metadata(path)
    save_tokenizer(tokenizer, out)
    report.verified = _verify(load_tokenizer(out).state_dict(), maps, state, str(out))
    return report


def import_omnijet(path: str | os.PathLike[str], kind: str, out: str | os.PathLike[str], n_head: int | None = None,
                   affine_lr: float | None = None, as_initialisation: bool = False,
                   overwrite: bool = False) -> ImportReport:
    """Import an OmniJet-alpha checkpoint of ``kind`` (``backbone`` or ``tokenizer``) into a tauml checkpoint."""
    if kind == "backbone":
        return import_backbone(path, out, n_head=n_head, as_initialisation=as_initialisation, overwrite=overwrite)
    if kind == "tokenizer":
        return import_tokenizer(path, out, n_head=n_head, affine_lr=affine_lr, overwrite=overwrite)
    raise OmniJetImportError(f"kind={kind!r} — choose {' or '.join(KINDS)}")


# ----------------------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------------------


def _copy(target: str, source: str) -> TensorMap:
    return TensorMap(target, (source,), "copied", lambda s: s[source])


def _model_kwargs(hparams: dict[str, Any]) -> dict[str, Any]:
    kwargs = hparams.get("model_kwargs")
    return kwargs if isinstance(kwargs, dict) else {}


def _prefix(state: dict[str, torch.Tensor], anchor: str, source: str, kind: str, other: tuple[str, str]) -> str:
    found = [k[:-len(anchor)] for k in state if k.endswith(anchor)]
    if len(found) == 1:
        return found[0]
    if not found and any(k.endswith(other[0]) for k in state):
        raise OmniJetImportError(f"{source} is an OmniJet {other[1]} checkpoint, not a {kind} — use --kind {other[1]}")
    raise OmniJetImportError(f"{source} has {len(found)} tensors named …{anchor}; an OmniJet {kind} has one — give "
                             f"an OmniJet-alpha {kind} checkpoint")


def _indices(state: dict[str, torch.Tensor], prefix: str) -> list[int]:
    found = sorted({int(k[len(prefix):].split(".")[0]) for k in state
                    if k.startswith(prefix) and k[len(prefix):].split(".")[0].isdigit()})
    return found if found == list(range(len(found))) else []


def _tensor(state: dict[str, torch.Tensor], name: str, source: str) -> torch.Tensor:
    if name not in state:
        raise OmniJetImportError(f"{source} lacks the tensor {name} — the file is not a complete OmniJet-alpha checkpoint")
    return state[name]


def _setting(given: Any, stored: Any, name: str, option: str, source: str, hint: str) -> Any:
    if given is not None and stored is not None and given != stored:
        raise OmniJetImportError(f"{option} {given} contradicts the checkpoint's {name}={stored} ({source}) — drop "
                                 f"{option} or give {stored}")
    value = given if given is not None else stored
    if value is None:
        raise OmniJetImportError(f"{source} does not record {name} (its hyper-parameters are missing or stripped) and "
                                 f"the tensors' shapes do not fix it — give {option} ({hint})")
    return value


def _check_leftovers(state: dict[str, torch.Tensor], prefix: str, used: set[str], ignore: tuple[str, ...],
                     source: str, kind: str) -> None:
    extra = sorted(k for k in state if k.startswith(prefix) and k not in used and not k.endswith(ignore))
    if extra:
        raise OmniJetImportError(f"{source} has OmniJet {kind} tensors tauml has no place for ({', '.join(extra[:4])}"
                                 f"{', …' if len(extra) > 4 else ''}) — this variant of the architecture does not map")


def _others(state: dict[str, torch.Tensor], prefix: str, used: set[str]) -> list[str]:
    others = sorted(k for k in state if not k.startswith(prefix) and k not in used)
    if not others:
        return []
    return [f"{len(others)} tensors of other parts of the Lightning module ({', '.join(others[:3])}"
            f"{', …' if len(others) > 3 else ''})"]


def _mapped_state(own: dict[str, torch.Tensor], maps: list[TensorMap], state: dict[str, torch.Tensor],
                  source: str) -> dict[str, torch.Tensor]:
    """``own`` with every mapped tensor replaced; refuses a tensor that is missing or of another shape."""
    target = dict(own)
    for m in maps:
        for name in m.sources:
            _tensor(state, name, source)
        try:
            tensor = m.build(state)
        except RuntimeError as err:  # e.g. query, key and value of different widths
            raise OmniJetImportError(f"{source}: {', '.join(m.sources)} do not fit together ({err}) — the checkpoint's "
                                     "shapes are inconsistent") from err
        if tuple(tensor.shape) != tuple(own[m.target].shape):
            shapes = ", ".join(f"{n} {tuple(state[n].shape)}" for n in m.sources)
            raise OmniJetImportError(f"{source}: {shapes} give {m.target} the shape {tuple(tensor.shape)}, but the "
                                     f"settings read from the file ({_shape_hint(own)}) need {tuple(own[m.target].shape)}"
                                     " — the checkpoint's shapes do not fit one model")
        target[m.target] = tensor.to(own[m.target].dtype)
    return target


def _shape_hint(own: dict[str, torch.Tensor]) -> str:
    first = next(iter(own.items()))
    return f"first tensor {first[0]} {tuple(first[1].shape)}"


def _verify(loaded: dict[str, torch.Tensor], maps: list[TensorMap], state: dict[str, torch.Tensor], out: str,
            extra: dict[str, torch.Tensor] | None = None) -> int:
    """Every mapped tensor of the model read back from ``out`` equals its source's transform; returns how many."""
    expected = {m.target: m.build(state) for m in maps} | (extra or {})
    for name, tensor in expected.items():
        have = loaded[name]
        if have.shape != tensor.shape or not torch.equal(have, tensor.to(have.dtype)):
            raise OmniJetImportError(f"{out}: {name} differs from its OmniJet source after writing and reading — delete "
                                     f"{out} and import again")
    return len(expected)


def _check_out(out: Path, overwrite: bool) -> None:
    if out.is_dir():
        raise IsADirectoryError(f"--out {out} is a folder — give a file name, e.g. {out / 'backbone.pt'}")
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists — choose another --out or add --overwrite")


def _settings(config: GPTConfig | TokenizerConfig) -> dict[str, Any]:
    names = (("n_layer", "n_head", "n_embd", "ffn_dim", "vocab_size") if isinstance(config, GPTConfig) else
             ("codebook_size", "latent_dim", "hidden_dim", "n_blocks", "n_heads", "categorical_loss"))
    return {name: getattr(config, name) for name in names}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
