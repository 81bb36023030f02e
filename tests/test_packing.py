"""Length-grouped next-token steps: the same loss and gradients as the plain step on the whole batch."""

from __future__ import annotations

from contextlib import nullcontext

import numpy as np
import pytest
import torch

from tauml.config import GPTConfig
from tauml.models.gpt import CODE_OFFSET, GPT, PAD_ID, START_ID, STOP_ID, next_token_loss
from tauml.training.packing import length_grouped_loss_and_backward, length_groups

CODEBOOK = 20
CONFIG = GPTConfig(n_layer=2, n_head=2, n_embd=16, ffn_dim=32, vocab_size=CODEBOOK + CODE_OFFSET, max_len=34)


def _sequences(counts: list[int], width: int = 34, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """[START, codes..., STOP, PAD...] rows with ``counts`` constituents each."""
    rng = np.random.default_rng(seed)
    tokens = np.full((len(counts), width), PAD_ID, dtype=np.int64)
    for row, count in enumerate(counts):
        tokens[row, 0] = START_ID
        tokens[row, 1 : count + 1] = rng.integers(0, CODEBOOK, count) + CODE_OFFSET
        tokens[row, count + 1] = STOP_ID
    tokens_t = torch.from_numpy(tokens)
    return tokens_t, tokens_t != PAD_ID


def _model(seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(CONFIG).train()


def _plain(model: GPT, tokens: torch.Tensor, mask: torch.Tensor) -> tuple[float, int, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    length = int(mask.sum(1).max())
    loss, count = next_token_loss(model, tokens[:, :length], mask[:, :length])
    loss.backward()
    return float(loss.detach()), count, {name: p.grad.clone() for name, p in model.named_parameters()}


def _grouped(model: GPT, tokens: torch.Tensor, mask: torch.Tensor, **kwargs) -> tuple[float, int, dict]:
    model.zero_grad(set_to_none=True)
    loss, count = length_grouped_loss_and_backward(model, tokens, mask, **kwargs)
    assert loss.requires_grad is False
    return float(loss.detach()), count, {name: p.grad.clone() for name, p in model.named_parameters()}


def test_grouped_gradients_equal_the_whole_batch():
    counts = [1, 3, 5, 7, 8, 12, 15, 20, 22, 25, 28, 30, 31, 32, 2, 17]
    tokens, mask = _sequences(counts)
    model = _model()
    loss, count, grads = _plain(model, tokens, mask)
    groups = length_groups(mask.sum(1) - 1, max_groups=4, group_overhead=0.0)
    assert len(groups) == 4  # without an overhead more groups are always cheaper: the test uses 4
    assert sorted(np.concatenate(groups).tolist()) == list(range(len(counts)))
    g_loss, g_count, g_grads = _grouped(model, tokens, mask, max_groups=4, group_overhead=0.0)
    assert g_count == count == sum(counts) + len(counts)
    assert g_loss == pytest.approx(loss, rel=1e-6)
    for name, grad in grads.items():
        torch.testing.assert_close(g_grads[name], grad, rtol=1e-5, atol=1e-7, msg=name)
    calls = []  # the defaults, with a forward context entered once per group

    def context():
        calls.append(1)
        return nullcontext()

    d_loss, d_count, d_grads = _grouped(model, tokens, mask, autocast=context)
    assert d_count == count and d_loss == pytest.approx(loss, rel=1e-6)
    assert len(calls) == len(length_groups(mask.sum(1) - 1)) > 1
    for name, grad in grads.items():
        torch.testing.assert_close(d_grads[name], grad, rtol=1e-5, atol=1e-7, msg=name)


def test_a_single_group_is_exactly_the_plain_step():
    tokens, mask = _sequences([4, 9, 30, 1, 16], seed=1)
    model = _model(1)
    loss, count, grads = _plain(model, tokens, mask)
    g_loss, g_count, g_grads = _grouped(model, tokens, mask, max_groups=1)
    assert (g_loss, g_count) == (loss, count)
    for name, grad in grads.items():
        assert torch.equal(g_grads[name], grad), name


def test_equal_lengths_and_a_batch_of_one():
    model = _model(2)
    for counts in ([10] * 6, [13]):
        tokens, mask = _sequences(counts, seed=2)
        assert len(length_groups(mask.sum(1) - 1, max_groups=4)) == 1  # nothing to gain: one group
        loss, count, grads = _plain(model, tokens, mask)
        g_loss, g_count, g_grads = _grouped(model, tokens, mask)
        assert (g_loss, g_count) == (loss, count)
        for name, grad in grads.items():
            assert torch.equal(g_grads[name], grad), name


def test_accumulates_like_backward_and_rejects_bad_masks():
    tokens, mask = _sequences([2, 30, 5, 25], seed=3)
    model = _model(3)
    _, _, grads = _plain(model, tokens, mask)
    model.zero_grad(set_to_none=True)
    for _ in range(2):  # two calls without zeroing: twice the gradient, as two backward() calls
        length_grouped_loss_and_backward(model, tokens, mask, group_overhead=0.0)
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, 2 * grads[name], rtol=1e-5, atol=1e-7, msg=name)
    holed = mask.clone()
    holed[1, 3] = False
    with pytest.raises(ValueError, match="real tokens must come first"):
        length_grouped_loss_and_backward(model, tokens, holed)
    with pytest.raises(TypeError, match="boolean"):
        length_grouped_loss_and_backward(model, tokens, mask.long())


def test_groups_follow_the_cost_model():
    lengths = np.array([100] * 8 + [20] * 8)
    # two clearly separated lengths: two groups (cost 8*20 + 8*100 + 2 overheads < 16*100 + 1)
    groups = length_groups(lengths, max_groups=4, quadratic_scale=1e9, group_overhead=10.0)
    assert [sorted(g.tolist()) for g in groups] == [list(range(8, 16)), list(range(8))]
    # an overhead larger than the saving: one group
    assert len(length_groups(lengths, max_groups=4, quadratic_scale=1e9, group_overhead=700.0)) == 1
    assert len(length_groups(np.arange(1, 65), max_groups=3, group_overhead=0.0)) == 3
    assert [g.tolist() for g in length_groups(np.array([5, 1, 3]), max_groups=1)] == [[0, 1, 2]]
