"""Task head (padding and permutation invariance), the tau model, its strategies and weight survival (H.1)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import as_if_trained

from tauml.config import GPTConfig, HeadConfig
from tauml.models import CheckpointError
from tauml.models.checkpoints import save_backbone
from tauml.models.gpt import GPT
from tauml.models.heads import TASK_OUTPUTS, TaskHead
from tauml.models.tau import (
    TauModel,
    apply_strategy,
    assert_backbone_matches,
    build_tau_model,
    task_predictions,
)

WIDTH = 16
HEAD = HeadConfig(n_particle_blocks=2, n_class_blocks=2, n_heads=2, ffn_ratio=2, dropout=0.1)
GPT_CONFIG = GPTConfig(n_layer=2, n_head=2, n_embd=WIDTH, ffn_dim=32, vocab_size=3 + 12, max_len=10)


def _hidden(batch: int = 4, length: int = 8, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(batch, length, WIDTH, generator=g)
    n_real = torch.tensor([1, 3, 5, 8][:batch])
    mask = torch.arange(length)[None, :] < n_real[:, None]
    return hidden, mask


def _head(task: str = "dm") -> TaskHead:
    torch.manual_seed(3)
    return as_if_trained(TaskHead(WIDTH, TASK_OUTPUTS[task], HEAD))


def test_untrained_head_predicts_the_no_learning_answer() -> None:
    hidden, mask = _hidden()
    torch.manual_seed(3)
    out = TaskHead(WIDTH, TASK_OUTPUTS["reg"], HEAD)(hidden, mask)
    assert torch.equal(out, torch.zeros_like(out))  # ln(pT_vis / pT_jet) = 0: the reco-jet pT


@pytest.mark.parametrize("task", ["id", "reg", "dm"])
def test_head_output_shapes(task: str) -> None:
    hidden, mask = _hidden()
    assert _head(task)(hidden, mask).shape == (4, TASK_OUTPUTS[task])


def test_padded_positions_have_no_influence() -> None:
    head = _head().eval()
    hidden, mask = _hidden()
    reference = head(hidden, mask)
    garbage = hidden.clone()
    garbage[~mask] = torch.randn(int((~mask).sum()), WIDTH) * 100.0
    garbage[0, -1] = float("nan")
    torch.testing.assert_close(head(garbage, mask), reference)
    # more padded positions (they become attention keys unless masked)
    longer = torch.cat((hidden, torch.randn(4, 5, WIDTH)), dim=1)
    longer_mask = torch.cat((mask, torch.zeros(4, 5, dtype=torch.bool)), dim=1)
    torch.testing.assert_close(head(longer, longer_mask), reference)
    # in training mode too (same dropout draws, as the shapes are the same)
    head.train()
    torch.manual_seed(7)
    train_reference = head(hidden, mask)
    torch.manual_seed(7)
    torch.testing.assert_close(head(garbage, mask), train_reference)


def test_output_is_permutation_invariant() -> None:
    head = _head().eval()
    hidden, mask = _hidden()
    reference = head(hidden, mask)
    order = torch.randperm(hidden.shape[1], generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(head(hidden[:, order], mask[:, order]), reference, rtol=1e-5, atol=1e-5)


def test_head_refuses_bad_masks() -> None:
    hidden, mask = _hidden()
    with pytest.raises(TypeError, match="boolean"):
        _head()(hidden, mask.float())
    mask[0] = False
    with pytest.raises(ValueError, match="no real position"):
        _head()(hidden, mask)


# ----------------------------------------------------------------------------------------------------------
# Tau model
# ----------------------------------------------------------------------------------------------------------


def _tokens(batch: int = 6, length: int = 9) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(11)
    n_constituents = torch.randint(1, length - 1, (batch,), generator=g)
    positions = torch.arange(length)[None, :]
    mask = positions < (n_constituents + 2)[:, None]
    tokens = torch.randint(3, GPT_CONFIG.vocab_size, (batch, length), generator=g)
    tokens[:, 0] = 1
    tokens[positions == (n_constituents + 1)[:, None]] = 2
    tokens[~mask] = 0
    return tokens, mask


@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    torch.manual_seed(123)
    gpt = GPT(GPT_CONFIG)
    return save_backbone(gpt, tmp_path / "backbone.pt", {"note": "test"})


def _backbone_state(model: TauModel) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.backbone.state_dict().items()}


def _train_step(model: TauModel, optimizer: torch.optim.Optimizer) -> None:
    tokens, mask = _tokens()
    optimizer.zero_grad()
    model(tokens, mask).square().mean().backward()
    optimizer.step()


def test_from_scratch_model_is_seeded(checkpoint: Path) -> None:
    tokens, mask = _tokens()
    a = as_if_trained(build_tau_model("dm", "from_scratch", GPT_CONFIG, HEAD, seed=5).eval())
    b = as_if_trained(build_tau_model("dm", "from_scratch", GPT_CONFIG, HEAD, seed=5).eval())
    c = as_if_trained(build_tau_model("dm", "from_scratch", GPT_CONFIG, HEAD, seed=6).eval())
    assert a(tokens, mask).shape == (6, 6)
    torch.testing.assert_close(a(tokens, mask), b(tokens, mask), rtol=0, atol=0)
    assert not torch.equal(a(tokens, mask), c(tokens, mask))
    # the head starts identical in every strategy for one seed
    d = as_if_trained(build_tau_model("dm", "fine_tuning", GPT_CONFIG, HEAD, pretrained=checkpoint, seed=5))
    for (name, p), q in zip(a.head.named_parameters(), d.head.parameters()):
        assert torch.equal(p, q), name


def test_pretrained_weights_survive_building(checkpoint: Path) -> None:
    saved = torch.load(checkpoint, weights_only=True)["state_dict"]
    model = build_tau_model("id", "fixed_backbone", GPT_CONFIG, HEAD, pretrained=checkpoint, seed=1)
    for name, tensor in model.backbone.state_dict().items():
        assert torch.equal(tensor, saved[name]), name
    assert assert_backbone_matches(model, checkpoint) == len(saved)
    # a global re-initialisation (the reference's bug H.1) is caught
    with torch.no_grad():
        torch.nn.init.normal_(model.backbone.wte.weight)
    with pytest.raises(CheckpointError, match=r"backbone\.wte\.weight differs"):
        assert_backbone_matches(model, checkpoint)


def test_first_blocks_of_a_checkpoint(checkpoint: Path) -> None:
    model = build_tau_model("reg", "fine_tuning", GPT_CONFIG, HEAD, n_gpt_blocks=1, pretrained=checkpoint)
    assert len(model.backbone.blocks) == 1 and model.n_gpt_blocks == 1
    tokens, mask = _tokens()
    assert model(tokens, mask).shape == (6, 1)
    with pytest.raises(CheckpointError, match="n_blocks=3"):
        build_tau_model("reg", "fine_tuning", GPT_CONFIG, HEAD, n_gpt_blocks=3, pretrained=checkpoint)
    with pytest.raises(CheckpointError, match="pretrained"):
        build_tau_model("reg", "fixed_backbone", GPT_CONFIG, HEAD)


def test_frozen_backbone_gets_no_gradient_and_no_adamw_update(checkpoint: Path) -> None:
    model = build_tau_model("id", "fixed_backbone", GPT_CONFIG, HEAD, pretrained=checkpoint)
    assert apply_strategy(model, "fixed_backbone", epoch=5, unfreeze_epoch=0) is False
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.5)
    before_backbone = _backbone_state(model)
    before_head = [p.clone() for p in model.head.parameters()]
    model.train()
    assert not model.backbone.training and model.head.training
    _train_step(model, optimizer)
    assert all(p.grad is None for p in model.backbone.parameters())
    for name, tensor in model.backbone.state_dict().items():
        assert torch.equal(tensor, before_backbone[name]), name
    assert any(not torch.equal(p, q) for p, q in zip(model.head.parameters(), before_head))
    assert_backbone_matches(model, checkpoint)


def test_fine_tuning_unfreezes_at_the_unfreeze_epoch(checkpoint: Path) -> None:
    model = build_tau_model("dm", "fine_tuning", GPT_CONFIG, HEAD, pretrained=checkpoint)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    assert apply_strategy(model, "fine_tuning", epoch=0, unfreeze_epoch=1) is False
    _train_step(model, optimizer)
    assert_backbone_matches(model, checkpoint)
    assert apply_strategy(model, "fine_tuning", epoch=1, unfreeze_epoch=1) is True
    model.train()
    assert model.backbone.training
    _train_step(model, optimizer)
    with pytest.raises(CheckpointError):
        assert_backbone_matches(model, checkpoint)
    # the unused next-token head never trains
    assert model.backbone.lm_head.weight.grad is None


def test_freezing_clears_stale_gradients_so_adamw_momentum_cannot_move_weights() -> None:
    model = build_tau_model("reg", "from_scratch", GPT_CONFIG, HEAD, seed=2)
    assert apply_strategy(model, "from_scratch", epoch=0, unfreeze_epoch=0) is True
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    _train_step(model, optimizer)  # the backbone now has AdamW momentum
    optimizer.zero_grad(set_to_none=False)  # zero-filled gradients would still let momentum act
    model.set_backbone_trainable(False)
    frozen = _backbone_state(model)
    tokens, mask = _tokens()
    model(tokens, mask).square().mean().backward()
    optimizer.step()
    for name, tensor in model.backbone.state_dict().items():
        assert torch.equal(tensor, frozen[name]), name


def test_task_predictions_shapes() -> None:
    assert task_predictions("id", torch.zeros(3, 2)).tolist() == [0.5, 0.5, 0.5]
    assert task_predictions("reg", torch.ones(3, 1)).shape == (3,)
    probs = task_predictions("dm", torch.randn(3, 6))
    assert probs.shape == (3, 6) and abs(probs.sum(axis=1) - 1).max() < 1e-6
