"""Task losses against values computed by hand, and their masks."""

from __future__ import annotations

import math

import pytest
import torch

from tauml.config import FinetuneConfig
from tauml.training.losses import decay_mode_loss, focal_loss, huber_loss, task_loss


def test_focal_loss_matches_hand_computation() -> None:
    # jet 1: tau (class 1), logits equal -> p_true = 1/2; alpha_sig = 1
    # jet 2: background (class 0), logits (ln 3, 0) -> p_true = 3/4; alpha_bkg = 10
    logits = torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0]])
    target = torch.tensor([1, 0])
    jet1 = 1.0 * math.log(2.0) * (1 - 0.5) ** 2
    jet2 = 10.0 * math.log(4.0 / 3.0) * (1 - 0.75) ** 2
    expected = (jet1 + jet2) / 2
    assert focal_loss(logits, target).item() == pytest.approx(expected, rel=1e-6)
    # gamma = 0 and unit weights is the plain cross entropy
    plain = (math.log(2.0) + math.log(4.0 / 3.0)) / 2
    assert focal_loss(logits, target, gamma=0.0, class_weights=(1.0, 1.0)).item() == pytest.approx(plain, rel=1e-6)


def test_huber_loss_matches_hand_computation() -> None:
    pred = torch.tensor([[0.0], [3.0], [-0.2]])
    target = torch.tensor([0.5, 0.0, 0.2])
    # 0.5 * 0.5^2 = 0.125; |3| > 1: 1 * (3 - 0.5) = 2.5; 0.5 * 0.4^2 = 0.08
    assert huber_loss(pred, target).item() == pytest.approx((0.125 + 2.5 + 0.08) / 3, rel=1e-6)
    # delta = 2: the second jet becomes 2 * (3 - 1) = 4
    assert huber_loss(pred, target, delta=2.0).item() == pytest.approx((0.125 + 4.0 + 0.08) / 3, rel=1e-6)


def test_decay_mode_loss_matches_hand_computation() -> None:
    logits = torch.zeros(2, 6)
    logits[1, 4] = math.log(5.0)  # p(4) = 5 / (5 + 5) = 1/2
    target = torch.tensor([2, 4])
    assert decay_mode_loss(logits, target).item() == pytest.approx((math.log(6.0) + math.log(2.0)) / 2, rel=1e-6)


def test_masked_jets_do_not_contribute() -> None:
    logits = torch.tensor([[0.0, 0.0], [5.0, -5.0], [math.log(3.0), 0.0]])
    target = torch.tensor([1, 1, 0])
    mask = torch.tensor([True, False, True])
    expected = (math.log(2.0) * 0.25 + 10 * math.log(4 / 3) / 16) / 2
    assert focal_loss(logits, target, mask=mask).item() == pytest.approx(expected, rel=1e-6)
    # a background jet's NaN regression target and -1 decay mode are never read
    pred = torch.tensor([0.1, 0.7], requires_grad=True)
    reg_target = torch.tensor([0.1 + 0.5, float("nan")])
    loss = huber_loss(pred, reg_target, mask=torch.tensor([True, False]))
    assert loss.item() == pytest.approx(0.125, rel=1e-6)
    loss.backward()
    assert torch.isfinite(pred.grad).all() and pred.grad[1] == 0
    dm_logits = torch.zeros(2, 6)
    assert decay_mode_loss(dm_logits, torch.tensor([0, -1]), mask=torch.tensor([True, False])).item() == \
        pytest.approx(math.log(6.0), rel=1e-6)


@pytest.mark.parametrize("loss_fn, outputs, target", [
    (focal_loss, torch.randn(4, 2), torch.tensor([0, 1, 0, 1])),
    (huber_loss, torch.randn(4, 1), torch.full((4,), float("nan"))),
    (decay_mode_loss, torch.randn(4, 6), torch.full((4,), -1)),
])
def test_all_masked_batch_gives_zero_that_backpropagates(loss_fn, outputs, target) -> None:
    outputs = outputs.clone().requires_grad_(True)
    loss = loss_fn(outputs, target, mask=torch.zeros(4, dtype=torch.bool))
    assert loss.item() == 0.0
    loss.backward()
    assert outputs.grad is not None and torch.equal(outputs.grad, torch.zeros_like(outputs))


def test_task_loss_selects_tau_jets_and_uses_config() -> None:
    config = FinetuneConfig(focal_gamma=0.0, focal_weight_background=2.0, focal_weight_signal=1.0, huber_delta=1.0)
    targets = {
        "is_tau": torch.tensor([1, 0]),
        "log_pt_ratio": torch.tensor([0.2, float("nan")]),
        "dm": torch.tensor([3, -1]),
    }
    id_logits = torch.tensor([[0.0, 0.0], [0.0, 0.0]])
    # gamma 0: tau jet ln 2 * 1, background jet ln 2 * 2
    assert task_loss("id", id_logits, targets, config).item() == pytest.approx(1.5 * math.log(2.0), rel=1e-6)
    assert task_loss("reg", torch.tensor([[0.0], [9.0]]), targets, config).item() == pytest.approx(0.02, rel=1e-5)
    assert task_loss("dm", torch.zeros(2, 6), targets, config).item() == pytest.approx(math.log(6.0), rel=1e-6)
    with pytest.raises(ValueError, match="unknown task"):
        task_loss("energy", id_logits, targets, config)


def test_bad_inputs_are_named() -> None:
    with pytest.raises(ValueError, match="NaN"):
        huber_loss(torch.zeros(2), torch.tensor([0.0, float("nan")]))
    with pytest.raises(ValueError, match="masked out"):
        decay_mode_loss(torch.zeros(2, 6), torch.tensor([0, -1]))
    with pytest.raises(TypeError, match="boolean"):
        focal_loss(torch.zeros(2, 2), torch.tensor([0, 1]), mask=torch.ones(2))
    with pytest.raises(ValueError, match="expected"):
        focal_loss(torch.zeros(2, 3), torch.tensor([0, 1]))
