"""The tau model: the GPT backbone (first ``n_gpt_blocks`` blocks) and one task head, and its three strategies.

``from_scratch``   the backbone starts from a random initialisation and trains from the first epoch;
``fixed_backbone`` the pretrained backbone is loaded and never changes (only the head trains);
``fine_tuning``    the pretrained backbone is loaded, frozen for epochs < ``unfreeze_epoch``, then trained.

The head is the only part that gets a fresh initialisation; after building, every backbone tensor is
compared with the checkpoint (:func:`assert_backbone_matches`), so a stray global initialisation, the
reference's pitfall H.1, cannot pass unnoticed.  A frozen backbone has ``requires_grad=False``, runs in
eval mode and under ``no_grad``; its parameters therefore never hold a gradient, and torch optimisers
(AdamW included, weight decay too) skip parameters whose ``.grad`` is ``None``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import replace

import numpy as np
import torch
from torch import nn

from tauml.config import STRATEGIES, TASKS, GPTConfig, HeadConfig
from tauml.models import CheckpointError
from tauml.models.checkpoints import load_backbone, verify_backbone
from tauml.models.gpt import GPT
from tauml.models.heads import TASK_OUTPUTS, TaskHead


class TauModel(nn.Module):
    """GPT backbone -> hidden states of the first ``n_gpt_blocks`` blocks -> :class:`TaskHead`.

    ``forward(tokens (B, T) int, token_mask (B, T) bool, features=None) -> (B, n_outputs)``; the head sees every
    real token position (START, the codes, STOP).  A continuous backbone also takes ``features`` ``(B, T,
    N_FEATURES)`` aligned with the tokens (:func:`tauml.models.gpt.token_aligned_features`), the same input it
    was pretrained on.
    """

    def __init__(self, backbone: GPT, head: TaskHead, task: str, n_gpt_blocks: int | None = None) -> None:
        super().__init__()
        if task not in TASKS:
            raise ValueError(f"task={task!r}; choose from {', '.join(TASKS)}")
        n_gpt_blocks = len(backbone.blocks) if not n_gpt_blocks else n_gpt_blocks
        if not 1 <= n_gpt_blocks <= len(backbone.blocks):
            raise ValueError(f"n_gpt_blocks={n_gpt_blocks} must lie in 1..{len(backbone.blocks)}")
        self.backbone = backbone
        self.head = head
        self.task = task
        self.n_gpt_blocks = n_gpt_blocks
        self.backbone_trainable = True
        # the next-token head and blocks beyond n_gpt_blocks are kept (checkpoint verification) but never used
        used = {id(p) for p in self.backbone_parameters()}
        for p in self.backbone.parameters():
            if id(p) not in used:
                p.requires_grad_(False)

    def forward(self, tokens: torch.Tensor, token_mask: torch.Tensor,
                features: torch.Tensor | None = None) -> torch.Tensor:
        if self.backbone_trainable:
            hidden = self.backbone(tokens, token_mask, n_blocks=self.n_gpt_blocks, features=features)
        else:
            with torch.no_grad():
                hidden = self.backbone(tokens, token_mask, n_blocks=self.n_gpt_blocks, features=features)
        return self.head(hidden, token_mask)

    def train(self, mode: bool = True) -> TauModel:
        super().train(mode)
        if not self.backbone_trainable:
            self.backbone.eval()
        return self

    def set_backbone_trainable(self, trainable: bool) -> None:
        """Train (True) or freeze (False) the backbone.  Freezing also drops any gradient it holds, so that an
        optimiser that already knows these parameters leaves them untouched."""
        self.backbone_trainable = bool(trainable)
        for p in self.backbone_parameters():
            p.requires_grad_(self.backbone_trainable)
            if not self.backbone_trainable:
                p.grad = None
        self.backbone.train(self.training and self.backbone_trainable)

    def backbone_parameters(self) -> Iterator[nn.Parameter]:
        """The backbone parameters the model uses: input embedding, the first n_gpt_blocks blocks, final LN."""
        yield from self.backbone.input_parameters()
        for block in self.backbone.blocks[: self.n_gpt_blocks]:
            yield from block.parameters()
        yield from self.backbone.ln_f.parameters()

    def head_parameters(self) -> Iterator[nn.Parameter]:
        yield from self.head.parameters()


def apply_strategy(model: TauModel, strategy: str, epoch: int, unfreeze_epoch: int) -> bool:
    """Set the backbone's trainability for ``epoch`` (0-based); call at the start of every epoch.

    from_scratch: always trainable; fixed_backbone: never; fine_tuning: frozen while epoch < unfreeze_epoch.
    Returns whether the backbone trains in this epoch.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy={strategy!r}; choose from {', '.join(STRATEGIES)}")
    trainable = strategy == "from_scratch" or (strategy == "fine_tuning" and epoch >= unfreeze_epoch)
    model.set_backbone_trainable(trainable)
    return trainable


def assert_backbone_matches(model: TauModel, checkpoint: str | os.PathLike[str]) -> int:
    """Raise :class:`CheckpointError` unless every backbone tensor of ``model`` equals the checkpoint's
    (the blocks the model holds); return the number of tensors compared."""

    return verify_backbone(model, checkpoint, prefix="backbone.")


def _derived_seed(seed: int, part: str) -> int:
    return int(np.random.SeedSequence([seed, sum(map(ord, part))]).generate_state(1)[0])


def build_tau_model(
    task: str,
    strategy: str,
    gpt_config: GPTConfig,
    head_config: HeadConfig,
    n_gpt_blocks: int = 0,
    pretrained: str | os.PathLike[str] | None = None,
    seed: int = 1,
) -> TauModel:
    """Build the tau model of ``task`` for ``strategy`` (see the module docstring).

    ``n_gpt_blocks`` = 0 uses every block (of ``gpt_config`` or of the checkpoint).  ``from_scratch`` builds a
    GPT from ``gpt_config`` (``vocab_size`` set) with ``n_gpt_blocks`` blocks; the other strategies load the
    first ``n_gpt_blocks`` blocks of ``pretrained`` (checked against ``gpt_config.vocab_size`` when set and
    ``gpt_config.n_embd``).  The head is initialised from ``seed`` alone, so it starts identical in all three
    strategies; the scratch backbone from a seed derived from ``seed``.  The model is returned in its epoch-0
    state (fine_tuning frozen: call :func:`apply_strategy` each epoch, which unfreezes when unfreeze_epoch=0).
    """
    if task not in TASKS:
        raise ValueError(f"task={task!r}; choose from {', '.join(TASKS)}")
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy={strategy!r}; choose from {', '.join(STRATEGIES)}")
    if n_gpt_blocks < 0:
        raise ValueError(f"n_gpt_blocks={n_gpt_blocks} must be >= 0 (0 = all blocks)")
    if strategy == "from_scratch":
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(_derived_seed(seed, "backbone"))
            backbone = GPT(replace(gpt_config, n_layer=n_gpt_blocks or gpt_config.n_layer))
    else:
        if pretrained is None:
            raise CheckpointError(f"strategy {strategy!r} needs a pretrained backbone checkpoint: pass pretrained=path")

        backbone = load_backbone(pretrained, n_blocks=n_gpt_blocks or None,
                                 vocab_size=gpt_config.vocab_size or None, n_embd=gpt_config.n_embd,
                                 inputs=gpt_config.inputs)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_derived_seed(seed, "head"))
        head = TaskHead(backbone.config.n_embd, TASK_OUTPUTS[task], head_config)
    model = TauModel(backbone, head, task)
    if pretrained is not None and strategy != "from_scratch":
        assert_backbone_matches(model, pretrained)
    model.set_backbone_trainable(strategy == "from_scratch")
    return model.train()


def task_predictions(task: str, outputs: torch.Tensor) -> np.ndarray:
    """Model outputs as the numpy predictions :func:`tauml.evaluation.metrics.evaluate_task` takes: id, the tau
    probability (n,); reg, the predicted ln(pT_vis / pT_jet) (n,); dm, class probabilities (n, 6)."""
    outputs = outputs.detach().float().cpu()
    if task == "id":
        return torch.softmax(outputs, dim=1)[:, 1].numpy()
    if task == "reg":
        return outputs.reshape(-1).numpy()
    if task == "dm":
        return torch.softmax(outputs, dim=1).numpy()
    raise ValueError(f"unknown task {task!r}; choose from {', '.join(TASKS)}")
