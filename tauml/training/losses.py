"""Losses of the three tau tasks, all masked: a jet whose mask is False does not contribute.

As ml-tau-en-reg (reference section C.3; the core paper's Table 1):

* identification: focal loss, cross entropy with class weights alpha = [background 10, signal 1] times
  (1 - p_true)^gamma, gamma = 2, averaged over jets;
* visible-pT regression: Huber loss (delta = 1) on ln(pT_vis / pT_jet), tau jets only;
* decay mode: cross entropy over the six reduced classes, no class weights, tau jets only.

Every loss is the plain mean of the per-jet losses over the selected jets.  A batch with no selected jet
gives a loss of exactly zero that is still connected to the graph (``backward`` works, gradients are zero),
never NaN.  Targets of unselected jets are not read (background jets carry NaN and -1 there).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F

from tauml.config import FinetuneConfig


def _selection(mask: torch.Tensor | None, n: int, device: torch.device) -> torch.Tensor:
    if mask is None:
        return torch.ones(n, dtype=torch.bool, device=device)
    if mask.dtype != torch.bool:
        raise TypeError(f"mask must be boolean (True = the jet counts), got {mask.dtype}")
    if mask.shape != (n,):
        raise ValueError(f"mask has shape {tuple(mask.shape)}, expected ({n},) (one entry per jet)")
    return mask


def _masked_mean(per_jet: torch.Tensor) -> torch.Tensor:
    """Mean over the (already selected) jets; an empty selection gives a zero still attached to the graph."""
    return per_jet.sum() / max(per_jet.numel(), 1)


def _as_vector(pred: torch.Tensor, name: str) -> torch.Tensor:
    if pred.dim() == 2 and pred.shape[1] == 1:
        return pred[:, 0]
    if pred.dim() != 1:
        raise ValueError(f"{name} has shape {tuple(pred.shape)}; expected (n_jets,) or (n_jets, 1)")
    return pred


def focal_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    gamma: float = 2.0,
    class_weights: Sequence[float] = (10.0, 1.0),
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Focal loss (Lin et al., arXiv:1708.02002) for tau identification.

    ``logits`` ``(n_jets, 2)`` [background, tau]; ``target`` ``(n_jets,)`` 0 or 1.  Per jet:
    ``-alpha[t] * ln p_t * (1 - p_t)^gamma`` with ``p_t`` the softmax probability of the true class and
    ``alpha = class_weights`` ordered [background, signal]; the result is the mean over selected jets.
    """
    if logits.dim() != 2 or logits.shape[1] != len(class_weights):
        raise ValueError(f"logits have shape {tuple(logits.shape)}; expected (n_jets, {len(class_weights)})")
    selected = _selection(mask, logits.shape[0], logits.device)
    logits, target = logits[selected], target[selected].long()
    if target.numel() and (target.min() < 0 or target.max() >= logits.shape[1]):
        raise ValueError(f"identification targets must lie in 0..{logits.shape[1] - 1}, got {target.unique().tolist()}")
    weight = torch.as_tensor(class_weights, dtype=logits.dtype, device=logits.device)
    log_p_true = F.log_softmax(logits, dim=1).gather(1, target[:, None])[:, 0]
    per_jet = -weight[target] * log_p_true * (1.0 - log_p_true.exp()) ** gamma
    return _masked_mean(per_jet)


def huber_loss(
    pred: torch.Tensor, target: torch.Tensor, delta: float = 1.0, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Huber loss: 0.5 d^2 for |d| <= delta, else delta (|d| - delta / 2), d = pred - target; mean over jets.

    ``pred`` ``(n_jets,)`` or ``(n_jets, 1)``, here the predicted ln(pT_vis / pT_jet) (dimensionless).
    """
    pred = _as_vector(pred, "pred")
    target = _as_vector(target, "target")
    if pred.shape != target.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} must have the same shape")
    selected = _selection(mask, pred.shape[0], pred.device)
    pred, target = pred[selected], target[selected].to(pred.dtype)
    if not bool(torch.isfinite(target).all()):
        raise ValueError("a selected regression target is NaN or infinite; select tau jets only (mask = is_tau == 1)")
    return _masked_mean(F.huber_loss(pred, target, delta=delta, reduction="none"))


def decay_mode_loss(logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Cross entropy over the reduced decay-mode classes; ``logits`` ``(n_jets, 6)``, ``target`` class 0..5."""
    if logits.dim() != 2:
        raise ValueError(f"logits have shape {tuple(logits.shape)}; expected (n_jets, n_classes)")
    selected = _selection(mask, logits.shape[0], logits.device)
    logits, target = logits[selected], target[selected].long()
    if target.numel() and (target.min() < 0 or target.max() >= logits.shape[1]):
        raise ValueError(
            f"decay-mode targets must lie in 0..{logits.shape[1] - 1}, got {target.unique().tolist()}; "
            "background jets (dm = -1) must be masked out"
        )
    return _masked_mean(F.cross_entropy(logits, target, reduction="none"))


def task_loss(
    task: str, outputs: torch.Tensor, batch_targets: Mapping[str, torch.Tensor], config: FinetuneConfig
) -> torch.Tensor:
    """The loss of ``task`` (``id``, ``reg``, ``dm``) with the settings of ``config``.

    ``batch_targets`` holds per-jet tensors named as :class:`tauml.data.JetArrays`: ``is_tau`` (0/1),
    ``log_pt_ratio`` (NaN for background) and ``dm`` (-1 for background).  ``reg`` and ``dm`` use tau jets
    only (is_tau == 1); ``id`` uses every jet.
    """
    if task == "id":
        return focal_loss(outputs, batch_targets["is_tau"], gamma=config.focal_gamma,
                          class_weights=(config.focal_weight_background, config.focal_weight_signal))
    if task == "reg":
        target = batch_targets["log_pt_ratio"]
        return huber_loss(outputs, target, delta=config.huber_delta, mask=batch_targets["is_tau"] == 1)
    if task == "dm":
        target = batch_targets["dm"]
        return decay_mode_loss(outputs, target, mask=(batch_targets["is_tau"] == 1) & (target >= 0))
    raise ValueError(f"unknown task {task!r}; choose from id, reg, dm")
