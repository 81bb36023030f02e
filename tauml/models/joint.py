"""Event-level models of the joint analysis (Vigl, Hartman, Heinrich, arXiv:2401.13536): jet model -> per-jet
representation -> Deep Sets over the jets of an event.

* :class:`JetEncoder` turns each jet's constituents into ``(V, S)``: V the jet model's embedding (the class token
  before its output layer), S one learned scalar, the tagger's log-odds ``logit_1 - logit_0`` (a linear function
  of V, so in the frozen strategy it *is* the pretext tagger's score).  Two jet models: tauml's GPT backbone +
  task head (notebook 03's tau model) and weaver-core's ParticleTransformer baseline.
* :class:`EventModel`: the representation of each jet (``s_hlf`` = [S, HLF], ``v_hlf`` = [V, HLF], ``v`` = V),
  an MLP phi per jet, the sum over the real jets (the mask), an MLP rho to one logit (Deep Sets, Zaheer et al.
  arXiv:1703.06114).  The output does not depend on the order of the jets nor on anything in padded jet slots:
  the jet model only ever sees real jets, and padded slots are multiplied by 0 before the sum.

Strategies (the paper's Table II): ``frozen`` (the pretext jet model fixed in eval mode, only phi and rho train),
``finetuned`` (everything trains, the jet model starts as the pretext tagger), ``from_scratch`` (everything trains
from a random jet model) and ``foundation`` (everything trains, the GPT backbone starts from tauml's pretrained
backbone with a fresh head and no pretext step: the paper's JetClass-initialisation analogue).
"""

from __future__ import annotations

import itertools

import torch
from torch import nn

from tauml.models.baselines import ParticleTransformerBaseline
from tauml.models.tau import TauModel

REPRESENTATIONS: tuple[str, ...] = ("s_hlf", "v_hlf", "v")
JOINT_STRATEGIES: tuple[str, ...] = ("frozen", "finetuned", "from_scratch", "foundation")
JET_MODELS: tuple[str, ...] = ("gpt", "part")
#: Labels for tables and plots.
REPRESENTATION_LABELS = {"s_hlf": "S+HLF", "v_hlf": "V+HLF", "v": "V-only"}


class JetEncoder(nn.Module):
    """A jet model for the joint analysis: ``forward(**jet_inputs) -> (V (n, d), S (n,))``.

    ``jet_inputs`` are the model's own: ``tokens, token_mask`` for the GPT model, ``features, mask, p4`` for the
    ParticleTransformer.  :meth:`set_trainable` freezes it (``requires_grad=False``, eval mode, no gradient)."""

    def __init__(self, model: TauModel | ParticleTransformerBaseline) -> None:
        super().__init__()
        if not isinstance(model, (TauModel, ParticleTransformerBaseline)):
            raise TypeError(f"a jet encoder wraps a TauModel or a ParticleTransformerBaseline, not {type(model).__name__}")
        self.model = model
        self.kind = "gpt" if isinstance(model, TauModel) else "part"
        self.trainable = True
        if self.kind == "gpt":
            self.dim = model.head.out.in_features
            model.set_backbone_trainable(True)
        else:
            self.dim = model.part.fc[0].in_features

    def forward(self, **inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.trainable:
            with torch.no_grad():
                return self._encode(inputs)
        return self._encode(inputs)

    def _encode(self, inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        if self.kind == "gpt":
            m = self.model
            hidden = m.backbone(inputs["tokens"], inputs["token_mask"], n_blocks=m.n_gpt_blocks)
            v = m.head.embed(hidden, inputs["token_mask"])
            logits = m.head.out(v)
        else:
            captured: list[torch.Tensor] = []
            hook = self.model.part.fc.register_forward_pre_hook(lambda _m, args: captured.append(args[0]))
            try:
                logits = self.model(inputs["features"], inputs["mask"], inputs["p4"])
            finally:
                hook.remove()
            v = captured[0]
        return v, logits[:, 1] - logits[:, 0]

    def set_trainable(self, trainable: bool) -> None:
        self.trainable = bool(trainable)
        for p in self.parameters():
            p.requires_grad_(self.trainable)
            if not self.trainable:
                p.grad = None
        self.train(self.training)

    def train(self, mode: bool = True) -> JetEncoder:
        super().train(mode and self.trainable)  # a frozen jet model stays in eval mode (no dropout, fixed norms)
        return self


def _mlp(sizes: list[int], last_activation: bool) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(itertools.pairwise(sizes)):
        layers.append(nn.Linear(n_in, n_out))
        if last_activation or i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class EventModel(nn.Module):
    """Jet model -> per-jet representation -> phi -> masked sum over jets -> rho -> one logit per event.

    ``forward(jet_inputs, jet_mask (B, J) bool, hlf (B, J, n_hlf)) -> (B,)``: ``jet_inputs`` hold the *real* jets
    only, in the order of ``jet_mask``'s True entries (row by row).  :meth:`head` takes per-jet representations
    directly (the frozen strategy computes them once).  ``hlf_mean``/``hlf_std`` standardise the HLFs (fixed,
    from the training events)."""

    def __init__(self, encoder: JetEncoder, representation: str, n_hlf: int, width: int = 64, n_layers: int = 3,
                 hlf_mean: torch.Tensor | None = None, hlf_std: torch.Tensor | None = None, seed: int = 1) -> None:
        super().__init__()
        if representation not in REPRESENTATIONS:
            raise ValueError(f"representation={representation!r}; choose from {', '.join(REPRESENTATIONS)}")
        self.encoder = encoder
        self.representation = representation
        n_in = {"s_hlf": 1 + n_hlf, "v_hlf": encoder.dim + n_hlf, "v": encoder.dim}[representation]
        self.register_buffer("hlf_mean", torch.zeros(n_hlf) if hlf_mean is None else hlf_mean.float())
        self.register_buffer("hlf_std", torch.ones(n_hlf) if hlf_std is None else hlf_std.float())
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.phi = _mlp([n_in] + [width] * n_layers, last_activation=True)
            self.rho = _mlp([width] * n_layers + [1], last_activation=False)

    def jet_features(self, v: torch.Tensor, s: torch.Tensor, hlf: torch.Tensor) -> torch.Tensor:
        """The per-jet representation of real jets: ``v (n, d)``, ``s (n,)``, raw ``hlf (n, n_hlf)``."""
        h = (hlf - self.hlf_mean) / self.hlf_std
        if self.representation == "s_hlf":
            return torch.cat((s[:, None], h), dim=1)
        if self.representation == "v_hlf":
            return torch.cat((v, h), dim=1)
        return v

    def head(self, per_jet: torch.Tensor, jet_mask: torch.Tensor) -> torch.Tensor:
        """phi, masked sum, rho: ``per_jet (B, J, n_in)`` (anything in padded slots) -> logits ``(B,)``."""
        if jet_mask.dtype != torch.bool:
            raise TypeError(f"jet_mask must be boolean (True = a real jet), got {jet_mask.dtype}")
        x = per_jet.masked_fill(~jet_mask[..., None], 0.0)
        x = self.phi(x) * jet_mask[..., None].to(x.dtype)
        return self.rho(x.sum(dim=1)).squeeze(-1)

    def forward(self, jet_inputs: dict[str, torch.Tensor], jet_mask: torch.Tensor, hlf: torch.Tensor) -> torch.Tensor:
        v, s = self.encoder(**jet_inputs)
        real = self.jet_features(v, s, hlf[jet_mask])
        per_jet = real.new_zeros((*jet_mask.shape, real.shape[-1]))
        per_jet[jet_mask] = real
        return self.head(per_jet, jet_mask)


__all__ = ["JET_MODELS", "JOINT_STRATEGIES", "REPRESENTATIONS", "REPRESENTATION_LABELS",
           "EventModel", "JetEncoder"]
