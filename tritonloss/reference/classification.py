"""Eager references of the classification losses torch.nn lacks (the CPU path without the
interpreter, and the tests' float64 oracle), written from each loss's formula."""

from __future__ import annotations

import torch
import torch.nn.functional as TF


def _reduce(loss: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "none":
        return loss
    return loss.sum() if reduction == "sum" else loss.mean()


def balanced_binary_cross_entropy_with_logits(input, target, reduction="mean"):
    per = max(input.shape[1:].numel(), 1)
    beta = (1 - target.detach()).reshape(input.shape[0], -1).sum(1) / per
    beta = beta.reshape(-1, *([1] * (input.dim() - 1)))
    loss = -(beta * target * TF.logsigmoid(input) + (1 - beta) * (1 - target) * TF.logsigmoid(-input))
    return _reduce(loss, reduction)


def sigmoid_focal_loss(inputs, targets, alpha=0.25, gamma=2.0, reduction="none"):
    """torchvision's formula: alpha_t (1 - p_t)^gamma BCE-with-logits."""
    p = torch.sigmoid(inputs)
    ce = TF.binary_cross_entropy_with_logits(inputs, targets, reduction="none")
    p_t = p * targets + (1 - p) * (1 - targets)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    return _reduce(loss, reduction)


def softmax_focal_loss(input, target, alpha=None, gamma=2.0, ignore_index=-100, reduction="mean"):
    """-alpha_t (1 - p_t)^gamma log p_t over softmax(input, dim=1); "mean" over non-ignored."""
    logp = torch.log_softmax(input, dim=0 if input.dim() == 1 else 1)
    keep = target != ignore_index
    t = torch.where(keep, target, 0)
    logp_t = logp.gather(0 if input.dim() == 1 else 1, t.unsqueeze(0 if input.dim() == 1 else 1))
    logp_t = logp_t.squeeze(0 if input.dim() == 1 else 1)
    if isinstance(alpha, torch.Tensor):
        a = alpha.to(logp.dtype)[t]
    else:
        a = torch.full_like(logp_t, 1.0 if alpha is None else alpha)
    loss = -a * (1 - logp_t.exp()) ** gamma * logp_t
    loss = torch.where(keep, loss, torch.zeros_like(loss))
    if reduction == "none":
        return loss
    return loss.sum() if reduction == "sum" else loss.sum() / keep.sum()


def mean_variance_loss(input, target, lambda_mean=0.2, lambda_var=0.05, start_age=0,
                       include_cross_entropy=True, reduction="mean"):
    """Pan et al. 2018 on ages start_age + arange(C); target is the integer age."""
    p = torch.softmax(input, dim=1)
    ages = start_age + torch.arange(input.shape[1], dtype=input.dtype, device=input.device)
    m = (p * ages).sum(1)
    v = (p * (ages - m[:, None]) ** 2).sum(1)
    loss = lambda_mean / 2 * (m - target.to(input.dtype)) ** 2 + lambda_var * v
    if include_cross_entropy:
        loss = loss + TF.cross_entropy(input, target - start_age, reduction="none")
    return _reduce(loss, reduction)


def hinge_loss(input, target, margin=1.0, reduction="mean"):
    return _reduce(torch.relu(margin - target * input), reduction)


def perceptron_loss(input, target, reduction="mean"):
    return _reduce(torch.relu(-target * input), reduction)


def exponential_loss(input, target, reduction="mean"):
    return _reduce(torch.exp(-target * input), reduction)
