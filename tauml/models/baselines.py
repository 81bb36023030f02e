"""Supervised baselines trained directly on the candidates: ParticleTransformer and a DeepSet.

Both take the per-constituent inputs of ``tauml.data.JetArrays`` as tensors,
``(features (N, P, 10), mask (N, P) bool, p4 (N, P, 4) px, py, pz, E in GeV, lifetime (N, P, 4) or None)``,
and return the task outputs with the shapes of :class:`tauml.models.tau.TauModel` (id 2 logits, reg 1
value, dm 6 logits).  They are the "plain ParT" and "DeepSet" models of ml-tau-en-reg (reference C.1).

The ParticleTransformer is weaver-core's (``pip install "tauml[baselines]"``).  Its attention turns the
boolean padding mask into -inf scores (weaver-core >= 0.4 ``Attention``; the float-mask bug H.3 was in
ml-tau-en-reg's own copy), its pair features are computed for real pairs only, and we replace its input
BatchNorm (whose batch statistics would include the zero padding in training mode) by a masked one, so
padded constituents have no influence on the output, in training and in evaluation.
"""

from __future__ import annotations

import itertools

import torch
from torch import nn

from tauml.config import DeepSetConfig, ParTBaselineConfig
from tauml.data.features import N_FEATURES
from tauml.models.heads import TASK_OUTPUTS, zero_output_layer

N_LIFETIME_FEATURES = 4


def _check_inputs(features: torch.Tensor, mask: torch.Tensor, lifetime: torch.Tensor | None, use_lifetime: bool) -> None:
    if features.dim() != 3 or features.shape[-1] != N_FEATURES:
        raise ValueError(f"features have shape {tuple(features.shape)}; expected (n_jets, n_constituents, {N_FEATURES})")
    if mask.dtype != torch.bool or mask.shape != features.shape[:2]:
        raise ValueError(f"mask must be boolean (n_jets, n_constituents) = {tuple(features.shape[:2])}, "
                         f"got {mask.dtype} {tuple(mask.shape)}")
    if not bool(mask.any(dim=1).all()):
        raise ValueError("a jet has no constituent in its mask; drop empty jets first")
    if use_lifetime and lifetime is None:
        raise ValueError("this baseline was built with use_lifetime=True: pass lifetime (jet_arrays(..., lifetime=True))")


def _inputs(features: torch.Tensor, mask: torch.Tensor, lifetime: torch.Tensor | None, use_lifetime: bool) -> torch.Tensor:
    x = torch.cat((features, lifetime), dim=-1) if use_lifetime else features
    return x.masked_fill(~mask[..., None], 0.0)


class MaskedBatchNorm(nn.Module):
    """BatchNorm over the real constituents only; input ``(N, C, P)`` and mask ``(N, P)``, padding stays 0."""

    def __init__(self, n_channels: int, momentum: float = 0.1, eps: float = 1e-5) -> None:
        super().__init__()
        self.momentum, self.eps = momentum, eps
        self.weight = nn.Parameter(torch.ones(n_channels))
        self.bias = nn.Parameter(torch.zeros(n_channels))
        self.register_buffer("running_mean", torch.zeros(n_channels))
        self.register_buffer("running_var", torch.ones(n_channels))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        m = mask[:, None, :].to(x.dtype)
        if self.training:
            count = m.sum().clamp(min=1)
            mean = (x * m).sum(dim=(0, 2)) / count
            var = (((x - mean[None, :, None]) * m) ** 2).sum(dim=(0, 2)) / count
            with torch.no_grad():
                unbiased = var * count / (count - 1).clamp(min=1)
                self.running_mean.lerp_(mean, self.momentum)
                self.running_var.lerp_(unbiased, self.momentum)
        else:
            mean, var = self.running_mean, self.running_var
        y = (x - mean[None, :, None]) * torch.rsqrt(var[None, :, None] + self.eps)
        return (y * self.weight[None, :, None] + self.bias[None, :, None]) * m


class ParticleTransformerBaseline(nn.Module):
    """weaver-core's ParticleTransformer with pair features (ln kT, ln z, ln ΔR, ln m²) from the 4-vectors."""

    def __init__(self, task: str, config: ParTBaselineConfig | None = None, seed: int = 1) -> None:
        super().__init__()
        try:
            from weaver.nn.model.ParticleTransformer import (
                ParticleTransformer,  # (local: optional 'baselines' extra)
            )
        except ImportError as err:
            raise ImportError(
                'the ParticleTransformer baseline needs weaver-core: pip install "tauml[baselines]"'
            ) from err
        config = config or ParTBaselineConfig()
        self.config = config
        n_inputs = N_FEATURES + (N_LIFETIME_FEATURES if config.use_lifetime else 0)
        block = {"dropout": config.dropout, "attn_dropout": config.dropout, "activation_dropout": config.dropout}
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.input_norm = MaskedBatchNorm(n_inputs)
            self.part = ParticleTransformer(
                input_dim=n_inputs, num_classes=TASK_OUTPUTS[task], pair_input_type="pp", pair_input_dim=4,
                use_pre_activation_pair=False, embed_dims=list(config.embed_dims),
                pair_embed_dims=list(config.pair_embed_dims), num_heads=config.num_heads,
                num_layers=config.num_layers, num_cls_layers=config.num_cls_layers, block_params=block,
                fc_params=[], activation="gelu", trim=False,
            )
        # our masked normalisation replaces weaver's input BatchNorm (which would count padding in training)
        self.part.embed.input_bn = nn.Identity()
        zero_output_layer(self.part)  # start at the no-learning answer, as the tau heads (heads.zero_output_layer)

    def forward(self, features: torch.Tensor, mask: torch.Tensor, p4: torch.Tensor,
                lifetime: torch.Tensor | None = None) -> torch.Tensor:
        _check_inputs(features, mask, lifetime, self.config.use_lifetime)
        x = _inputs(features, mask, lifetime, self.config.use_lifetime).transpose(1, 2)  # (N, C, P)
        x = self.input_norm(x, mask)
        v = p4.masked_fill(~mask[..., None], 0.0).transpose(1, 2)  # (N, 4, P)
        return self.part(x, v=v, mask=mask[:, None, :])


def _mlp(sizes: list[int], dropout: float, last_activation: bool) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(itertools.pairwise(sizes)):
        layers.append(nn.Linear(n_in, n_out))
        if last_activation or i < len(sizes) - 2:
            layers += [nn.GELU(), nn.Dropout(dropout)]
    return nn.Sequential(*layers)


class DeepSetBaseline(nn.Module):
    """phi (per-constituent GELU MLP) -> masked mean over constituents -> rho (GELU MLP) -> outputs."""

    def __init__(self, task: str, config: DeepSetConfig | None = None, seed: int = 1) -> None:
        super().__init__()
        config = config or DeepSetConfig()
        self.config = config
        n_inputs = N_FEATURES + (N_LIFETIME_FEATURES if config.use_lifetime else 0)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.phi = _mlp([n_inputs] + [config.width] * config.n_constituent_layers, config.dropout, True)
            self.rho = _mlp([config.width] * config.n_jet_layers + [TASK_OUTPUTS[task]], config.dropout, False)
        zero_output_layer(self.rho)

    def forward(self, features: torch.Tensor, mask: torch.Tensor, p4: torch.Tensor | None = None,
                lifetime: torch.Tensor | None = None) -> torch.Tensor:
        _check_inputs(features, mask, lifetime, self.config.use_lifetime)
        x = self.phi(_inputs(features, mask, lifetime, self.config.use_lifetime))
        m = mask[..., None].to(x.dtype)
        pooled = (x * m).sum(dim=1) / m.sum(dim=1)
        return self.rho(pooled)
