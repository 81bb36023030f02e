"""Importing OmniJet-alpha checkpoints (issue 11, part 5), on small synthetic Lightning checkpoints with the
reference's parameter names and shapes (github.com/uhh-pd-ml/omnijet_alpha, gabbro/models/gpt_model.py,
backbone.py, vqvae.py; vqtorch's VectorQuant).  The reference forward passes below are written here from the
architecture's description (docs/omnijet.md), to check what maps exactly and what does not."""

from __future__ import annotations

import functools
import math
import shlex
import subprocess
import sys
from collections import OrderedDict, UserDict

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tauml.models.omnijet import STRIP_COMMAND, OmniJetImportError, import_omnijet, token_index
from tauml.models.vqvae import CODE_OFFSET, START_ID, STOP_ID

N_CODES, WIDTH, HEADS, FFN, BLOCKS = 13, 16, 2, 64, 2  # backbone: vocabulary N_CODES + 2, as OmniJet's
TOK_CODES, HIDDEN, LATENT, TOK_BLOCKS, AFFINE_LR = 32, 16, 4, 2, 2.0


def _randn(*shape: int, generator: torch.Generator, scale: float = 0.3) -> torch.Tensor:
    return scale * torch.randn(*shape, generator=generator)


def _layer_norm(prefix: str, dim: int, g: torch.Generator) -> dict[str, torch.Tensor]:
    return {prefix + "weight": 1.0 + _randn(dim, generator=g, scale=0.1), prefix + "bias": _randn(dim, generator=g, scale=0.1)}


def _linear(prefix: str, n_out: int, n_in: int, g: torch.Generator, bias: bool = True) -> dict[str, torch.Tensor]:
    out = {prefix + "weight": _randn(n_out, n_in, generator=g)}
    if bias:
        out[prefix + "bias"] = _randn(n_out, generator=g, scale=0.1)
    return out


def backbone_state(seed: int = 0) -> OrderedDict[str, torch.Tensor]:
    """BackboneNextTokenPredictionLightning's state_dict: ``module.`` (BackboneModel) and ``head.fc1``."""
    g = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {"module.embedding_table.weight": torch.randn(N_CODES + 2, WIDTH, generator=g)}
    for i in range(BLOCKS):
        b = f"module.GPT_blocks.{i}."
        for name in ("key", "query", "value"):
            state |= _linear(f"{b}mha_block.{name}.", WIDTH, WIDTH, g, bias=False)
        state[f"{b}mha_block.tril"] = torch.ones(20, 20).tril()
        state |= _linear(f"{b}mha_block.proj.", WIDTH, WIDTH, g)
        state |= _linear(f"{b}ff_block.net.0.", FFN, WIDTH, g) | _linear(f"{b}ff_block.net.2.", WIDTH, FFN, g)
        state |= _layer_norm(f"{b}layernorm_1.", WIDTH, g) | _layer_norm(f"{b}layernorm_2.", WIDTH, g)
    state |= _linear("head.fc1.", N_CODES + 2, WIDTH, g)
    return OrderedDict(state)


def _normformer_block(prefix: str, g: torch.Generator) -> dict[str, torch.Tensor]:
    state = _layer_norm(prefix + "norm1.", HIDDEN, g) | _layer_norm(prefix + "norm2.", HIDDEN, g)
    state[prefix + "attn.in_proj_weight"] = _randn(3 * HIDDEN, HIDDEN, generator=g)
    state[prefix + "attn.in_proj_bias"] = _randn(3 * HIDDEN, generator=g, scale=0.1)
    state |= _linear(prefix + "attn.out_proj.", HIDDEN, HIDDEN, g)
    state |= _layer_norm(prefix + "mlp.0.", HIDDEN, g)
    return state | _linear(prefix + "mlp.1.", HIDDEN, HIDDEN, g) | _linear(prefix + "mlp.4.", HIDDEN, HIDDEN, g)


def tokenizer_state(n_features: int = 10, seed: int = 1) -> OrderedDict[str, torch.Tensor]:
    """VQVAELightning's state_dict with model_type VQVAENormFormer (prefix ``model.``), vqtorch's affine codebook
    and its training buffers."""
    g = torch.Generator().manual_seed(seed)
    state = _linear("model.input_projection.", HIDDEN, n_features, g)
    for part in ("encoder", "decoder"):
        for i in range(TOK_BLOCKS):
            state |= _normformer_block(f"model.{part}_normformer.blocks.{i}.", g)
    state |= _linear("model.latent_projection_in.", LATENT, HIDDEN, g)
    state |= _linear("model.latent_projection_out.", HIDDEN, LATENT, g)
    state |= _linear("model.output_projection.", n_features, HIDDEN, g)
    state["model.vqlayer.codebook.weight"] = torch.randn(TOK_CODES, LATENT, generator=g)
    state["model.vqlayer.affine_transform.scale"] = _randn(1, LATENT, generator=g, scale=0.1)
    state["model.vqlayer.affine_transform.bias"] = _randn(1, LATENT, generator=g, scale=0.1)
    state["model.vqlayer.data_initialized"] = torch.ones(1)
    state["model.vqlayer._counts"] = torch.full((TOK_CODES,), 10.0)
    return OrderedDict(state)


def lightning(state: dict[str, torch.Tensor], model_kwargs: dict | None = None, **extra) -> dict:
    """A Lightning-style checkpoint whose hyper-parameters are plain containers (a stripped one)."""
    payload = {"epoch": 3, "global_step": 120, "pytorch-lightning_version": "2.2.1", "state_dict": state, **extra}
    if model_kwargs is not None:
        payload["hyper_parameters"] = {"model_kwargs": model_kwargs}
    return payload


@pytest.fixture
def backbone_file(tmp_path):
    path = tmp_path / "OmniJet_generative_model.ckpt"
    torch.save(lightning(backbone_state(), {"n_heads": HEADS, "embedding_dim": WIDTH, "n_GPT_blocks": BLOCKS,
                                            "vocab_size": N_CODES + 2}), path)
    return path


@pytest.fixture
def tokenizer_file(tmp_path):
    path = tmp_path / "model_ckpt.ckpt"
    torch.save(lightning(tokenizer_state(), {"num_heads": HEADS, "hidden_dim": HIDDEN, "latent_dim": LATENT,
                                             "vq_kwargs": {"num_codes": TOK_CODES, "affine_lr": AFFINE_LR,
                                                           "norm": None, "cb_norm": None}},
                         hparams_name="kwargs"), path)
    return path


# ----------------------------------------------------------------------------------------------------------
# Backbone
# ----------------------------------------------------------------------------------------------------------


def _reference_attention(state: dict, b: str, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """OmniJet's MultiHeadAttention: separate q, k, v without bias, 1/sqrt(head_dim), padding and causal masks."""
    n, t, _ = x.shape
    q, k, v = (F.linear(x, state[f"{b}mha_block.{name}.weight"]).view(n, t, HEADS, -1).transpose(1, 2)
               for name in ("query", "key", "value"))
    scores = q @ k.transpose(2, 3) / math.sqrt(WIDTH // HEADS)
    allowed = mask[:, None, None, :] & torch.ones(t, t, dtype=torch.bool).tril()
    y = scores.masked_fill(~allowed, float("-inf")).softmax(-1) @ v
    return F.linear(y.transpose(1, 2).reshape(n, t, WIDTH), state[f"{b}mha_block.proj.weight"],
                    state[f"{b}mha_block.proj.bias"])


def _reference_backbone(state: dict, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """OmniJet's BackboneModel: embedding, then post-LN blocks with a ReLU feed-forward; no final LayerNorm."""
    x = state["module.embedding_table.weight"][tokens]
    for i in range(BLOCKS):
        b = f"module.GPT_blocks.{i}."
        ln = [(state[f"{b}layernorm_{j}.weight"], state[f"{b}layernorm_{j}.bias"]) for j in (1, 2)]
        x = F.layer_norm(x + _reference_attention(state, b, x, mask), (WIDTH,), *ln[0])
        ffn = F.linear(F.relu(F.linear(x, state[f"{b}ff_block.net.0.weight"], state[f"{b}ff_block.net.0.bias"])),
                       state[f"{b}ff_block.net.2.weight"], state[f"{b}ff_block.net.2.bias"])
        x = F.layer_norm(x + ffn, (WIDTH,), *ln[1])
    return x


def test_token_index_is_a_permutation_plus_padding() -> None:
    index = token_index(N_CODES)
    assert len(index) == N_CODES + CODE_OFFSET
    assert index[START_ID] == 0 and index[STOP_ID] == N_CODES + 1  # OmniJet's start and end tokens
    assert index[CODE_OFFSET:].tolist() == list(range(1, N_CODES + 1))  # code c: tauml c + 3 <- OmniJet c + 1
    assert sorted(index[1:].tolist()) == list(range(N_CODES + 2))  # without PAD: every OmniJet id exactly once


def test_backbone_maps_tensor_by_tensor(backbone_file, tmp_path) -> None:
    from tauml.models.checkpoints import load_backbone, read_backbone_metadata
    from tauml.models.gpt import causal_attention_mask

    out = tmp_path / "backbone.pt"
    report = import_omnijet(backbone_file, "backbone", out, as_initialisation=True)
    source = backbone_state()
    model = load_backbone(out, vocab_size=N_CODES + 3, n_embd=WIDTH)
    own = model.state_dict()
    assert report.verified == len(own)  # every tensor of the written backbone checked against its source
    assert (model.config.n_layer, model.config.n_head, model.config.ffn_dim) == (BLOCKS, HEADS, FFN)

    embedding, head = source["module.embedding_table.weight"], source["head.fc1.weight"]
    for c in range(N_CODES):
        assert torch.equal(own["wte.weight"][c + CODE_OFFSET], embedding[c + 1])
        assert torch.equal(own["lm_head.weight"][c + CODE_OFFSET], head[c + 1])
    assert torch.equal(own["wte.weight"][START_ID], embedding[0])
    assert torch.equal(own["wte.weight"][STOP_ID], embedding[N_CODES + 1])
    assert torch.equal(own["lm_head.weight"][STOP_ID], head[N_CODES + 1])
    b = "module.GPT_blocks.1."
    assert torch.equal(own["blocks.1.attn.qkv.weight"], torch.cat([source[f"{b}mha_block.{n}.weight"]
                                                                   for n in ("query", "key", "value")]))
    assert torch.equal(own["blocks.1.mlp.fc.bias"], source[f"{b}ff_block.net.0.bias"])
    assert torch.equal(own["blocks.1.ln2.weight"], source[f"{b}layernorm_2.weight"])
    assert torch.equal(own["ln_f.weight"], torch.ones(WIDTH)) and torch.equal(own["ln_f.bias"], torch.zeros(WIDTH))

    meta = read_backbone_metadata(out)["metadata"]
    assert meta["exact"] is False and meta["source_file"] == backbone_file.name and len(meta["differences"]) == 4
    assert any("head.fc1.bias" in line for line in report.not_mapped)
    text = "\n".join(report.lines())
    assert "NOT the same function" in text and "query, key, value concatenated" in text

    # the attention layer is the same function (q, k, v in the right order, heads split alike) ...
    tokens_ref = torch.tensor([[0, 5, 3, 9, N_CODES + 1, 0], [0, 1, 13, N_CODES + 1, 0, 0]])
    mask = torch.tensor([[True] * 5 + [False], [True] * 4 + [False] * 2])
    x = embedding[tokens_ref]
    ours = model.blocks[0].attn(x, causal_attention_mask(mask))
    torch.testing.assert_close(ours[mask], _reference_attention(source, "module.GPT_blocks.0.", x, mask)[mask])
    # ... but the whole backbone is not: post-LN + ReLU against pre-LN + GELU + final LayerNorm
    tokens = torch.where(tokens_ref == N_CODES + 1, STOP_ID, tokens_ref + CODE_OFFSET - 1)
    tokens[:, 0] = START_ID
    tokens[~mask] = 0
    with torch.no_grad():
        assert not torch.allclose(model(tokens, mask)[mask], _reference_backbone(source, tokens_ref, mask)[mask],
                                  atol=1e-2)


def test_backbone_needs_consent_and_its_head_count(backbone_file, tmp_path) -> None:
    out = tmp_path / "backbone.pt"
    with pytest.raises(OmniJetImportError, match=r"not the same function.*--as-initialisation"):
        import_omnijet(backbone_file, "backbone", out)
    assert not out.exists()
    stripped = tmp_path / "stripped.ckpt"
    torch.save({"state_dict": backbone_state()}, stripped)  # hyper-parameters gone: n_heads unknown
    with pytest.raises(OmniJetImportError, match="--n-head"):
        import_omnijet(stripped, "backbone", out, as_initialisation=True)
    with pytest.raises(OmniJetImportError, match="contradicts"):
        import_omnijet(backbone_file, "backbone", out, n_head=4, as_initialisation=True)
    assert import_omnijet(stripped, "backbone", out, n_head=HEADS, as_initialisation=True).verified > 0
    with pytest.raises(FileExistsError, match="--overwrite"):
        import_omnijet(stripped, "backbone", out, n_head=HEADS, as_initialisation=True)


@pytest.mark.parametrize("change", ["ffn_of_one_block", "key_width", "embedding_width"])
def test_shapes_that_do_not_fit_are_refused(tmp_path, change) -> None:
    state = backbone_state()
    b = "module.GPT_blocks.1."
    if change == "ffn_of_one_block":  # consistent inside the block, but tauml's blocks share one ffn_dim
        state[f"{b}ff_block.net.0.weight"], state[f"{b}ff_block.net.0.bias"] = torch.zeros(48, WIDTH), torch.zeros(48)
        state[f"{b}ff_block.net.2.weight"] = torch.zeros(WIDTH, 48)
    elif change == "key_width":
        state[f"{b}mha_block.key.weight"] = torch.zeros(WIDTH, WIDTH - 4)
    else:
        state["module.embedding_table.weight"] = torch.zeros(N_CODES + 2, WIDTH + 8)
    path = tmp_path / "bad.ckpt"
    torch.save(lightning(state, {"n_heads": HEADS}), path)
    with pytest.raises(OmniJetImportError, match=r"bad.ckpt.*(do not fit|shape)"):
        import_omnijet(path, "backbone", tmp_path / "out.pt", as_initialisation=True)
    assert not (tmp_path / "out.pt").exists()


def test_the_wrong_kind_is_named(backbone_file, tokenizer_file, tmp_path) -> None:
    with pytest.raises(OmniJetImportError, match=r"tokenizer checkpoint.*--kind tokenizer"):
        import_omnijet(tokenizer_file, "backbone", tmp_path / "a.pt", as_initialisation=True)
    with pytest.raises(OmniJetImportError, match=r"backbone checkpoint.*--kind backbone"):
        import_omnijet(backbone_file, "tokenizer", tmp_path / "b.pt")


# ----------------------------------------------------------------------------------------------------------
# Tokenizer
# ----------------------------------------------------------------------------------------------------------


def _reference_tokenizer(state: dict, features: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """OmniJet's VQVAENormFormer in eval mode: codes and decoder outputs (zero at padding)."""
    m = mask[..., None].float()

    def lin(x, name):
        return F.linear(x, state[f"model.{name}.weight"], state[f"model.{name}.bias"])

    def ln(x, name):
        return F.layer_norm(x, x.shape[-1:], state[f"model.{name}.weight"], state[f"model.{name}.bias"])

    def block(x, b):
        x = x * m
        attention = nn.MultiheadAttention(HIDDEN, HEADS, batch_first=True).eval()
        attention.load_state_dict({"in_proj_weight": state[f"model.{b}attn.in_proj_weight"],
                                   "in_proj_bias": state[f"model.{b}attn.in_proj_bias"],
                                   "out_proj.weight": state[f"model.{b}attn.out_proj.weight"],
                                   "out_proj.bias": state[f"model.{b}attn.out_proj.bias"]})
        h = ln(x, b + "norm1")
        residual = ln(attention(h, h, h, key_padding_mask=~mask)[0], b + "norm2") + x
        return lin(F.silu(lin(ln(residual, b + "mlp.0"), b + "mlp.1")), b + "mlp.4") + residual

    x = lin(features, "input_projection")
    for i in range(TOK_BLOCKS):
        x = block(x, f"encoder_normformer.blocks.{i}.")
    z = lin(x * m, "latent_projection_in") * m
    codebook = ((1 + AFFINE_LR * state["model.vqlayer.affine_transform.scale"]) * state["model.vqlayer.codebook.weight"]
                + AFFINE_LR * state["model.vqlayer.affine_transform.bias"])
    codes = torch.cdist(z, codebook[None].expand(len(z), -1, -1)).argmin(-1)
    y = lin(codebook[codes] * m, "latent_projection_out") * m
    for i in range(TOK_BLOCKS):
        y = block(y, f"decoder_normformer.blocks.{i}.")
    return codes, lin(y * m, "output_projection") * m


def _jets(n: int = 6, slots: int = 8, seed: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    counts = torch.randint(1, slots + 1, (n,), generator=g)
    mask = torch.arange(slots)[None] < counts[:, None]
    features = torch.zeros(n, slots, 10)
    features[..., :4] = torch.randn(n, slots, 4, generator=g)
    features[..., 4] = torch.randint(-1, 2, (n, slots), generator=g).float()
    features[..., 5:] = F.one_hot(torch.randint(0, 5, (n, slots), generator=g), 5).float()
    return features * mask[..., None], mask


def test_tokenizer_maps_exactly(tokenizer_file, tmp_path) -> None:
    from tauml.models.checkpoints import load_tokenizer

    out = tmp_path / "tokenizer.pt"
    report = import_omnijet(tokenizer_file, "tokenizer", out)
    assert report.exact and not report.differences and report.not_verified  # the feature transforms
    tokenizer = load_tokenizer(out)
    source = tokenizer_state()
    own = tokenizer.state_dict()
    assert report.verified == len(own) - 2  # all but the quantizer's two buffers (initialised, no counters)
    assert bool(own["vqvae.quantizer.initialised"]) and not own["vqvae.quantizer.steps_unused"].any()
    assert tokenizer.config.categorical_loss == "mse" and tokenizer.vocab_size == TOK_CODES + CODE_OFFSET
    assert torch.equal(own["vqvae.encoder.1.attn.qkv.weight"],
                       source["model.encoder_normformer.blocks.1.attn.in_proj_weight"])
    assert torch.equal(own["vqvae.decoder.0.norm_in.bias"], source["model.decoder_normformer.blocks.0.norm1.bias"])
    assert tokenizer.metadata["exact"] is True

    # the same function on real constituents: the same codes and the same decoder outputs
    features, mask = _jets()
    with torch.no_grad():
        codes_ref, raw_ref = _reference_tokenizer(source, features, mask)
        codes = tokenizer.encode(features, mask)
        raw = tokenizer.vqvae.decode_codes(codes, mask)
    assert torch.equal(codes[mask], codes_ref[mask]) and (codes[~mask] == -1).all()
    assert len(codes[mask].unique()) > 3
    torch.testing.assert_close(raw[mask], raw_ref[mask], atol=1e-5, rtol=1e-5)
    tokens, _ = tokenizer.tokenize(features, mask)
    assert torch.equal(tokens[:, 1:-1][mask], codes_ref[mask] + CODE_OFFSET)


def test_three_feature_tokenizer_is_refused(tmp_path) -> None:
    path = tmp_path / "vqvae_8192_tokens.ckpt"
    torch.save(lightning(tokenizer_state(n_features=3), {"num_heads": HEADS, "vq_kwargs": {"affine_lr": 2}}), path)
    with pytest.raises(OmniJetImportError, match="reads 3 and writes 3 features"):
        import_omnijet(path, "tokenizer", tmp_path / "t.pt")


# ----------------------------------------------------------------------------------------------------------
# Safe loading
# ----------------------------------------------------------------------------------------------------------


class _Payload:
    """Unpickling this would create ``marker`` (what a malicious checkpoint could do instead)."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_pickle_that_would_run_code_is_refused(tmp_path) -> None:
    marker = tmp_path / "marker"
    path = tmp_path / "evil.ckpt"
    torch.save(lightning(backbone_state(), {"n_heads": HEADS}, callbacks=_Payload(str(marker))), path)
    with pytest.raises(OmniJetImportError, match=r"evil.ckpt holds Python objects.*open.*never unpickles"):
        import_omnijet(path, "backbone", tmp_path / "out.pt", as_initialisation=True)
    assert not marker.exists() and not (tmp_path / "out.pt").exists()


def test_lightning_hyper_parameters_are_stripped_by_the_documented_command(tmp_path) -> None:
    """Lightning stores the optimiser as a functools.partial and the settings in omegaconf containers (here a
    UserDict): refused, with a command that strips the file to what tauml reads."""
    path = tmp_path / "generative.ckpt"
    torch.save({"state_dict": backbone_state(), "hyper_parameters": {
        "optimizer": functools.partial(torch.optim.AdamW, lr=1e-3),
        "model_kwargs": UserDict(n_heads=HEADS, vq_kwargs=UserDict(norm=None))}}, path)
    with pytest.raises(OmniJetImportError, match=r"functools.partial.*stripped.ckpt") as err:
        import_omnijet(path, "backbone", tmp_path / "out.pt", as_initialisation=True)
    assert str(path) in str(err.value)
    stripped = tmp_path / "stripped.ckpt"
    command = shlex.split(STRIP_COMMAND)  # ["python", "-c", code]; our own test file is trusted
    done = subprocess.run([sys.executable, *command[1:], str(path), str(stripped)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    report = import_omnijet(stripped, "backbone", tmp_path / "out.pt", as_initialisation=True)
    assert report.settings["n_head"] == HEADS


def test_command_line(backbone_file, tmp_path, capsys) -> None:
    from tauml.cli import main

    out = tmp_path / "backbone.pt"
    assert main(["import-omnijet", str(backbone_file), "--kind", "backbone", "--out", str(out)]) == 2
    assert "tauml import-omnijet: error:" in capsys.readouterr().err and not out.exists()
    assert main(["import-omnijet", str(backbone_file), "--kind", "backbone", "--out", str(out),
                 "--as-initialisation"]) == 0
    printed = capsys.readouterr().out
    assert "wte.weight <- module.embedding_table.weight" in printed and "verified" in printed
    assert main(["import-omnijet", str(backbone_file), "--kind", "backbone", "--out", str(out), "--n-head", "0"]) == 2
    assert "--n-head 0 must be positive" in capsys.readouterr().err
