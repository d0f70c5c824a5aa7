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
    per = input.shape[1:].numel()
    beta = (1 - target.detach()).reshape(input.shape[0], per).sum(1) / max(per, 1)
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


# ---------------------------------------------------------------------------------------
# dense-detection ranking losses: input [N, C] logits, target [N] (0 background, k in 1..C
# positive for class k, -1 ignored); a label outside [-1, C] makes the result NaN.


def _detection_masks(input, target):
    """(used, positive, negative) masks [N, C] and a factor that is NaN with a bad label."""
    C = input.shape[1]
    cls = torch.arange(1, C + 1, device=input.device)
    used = (target != -1)[:, None].expand(-1, C)
    pos = used & (target[:, None] == cls)
    bad = ((target < -1) | (target > C)).any()
    nan_if_bad = torch.where(bad, float("nan"), 1.0).to(input.dtype)
    return used, pos, used & ~pos, nan_if_bad


def dr_loss(input, target, margin=0.5, pos_lambda=1.0, neg_lambda=0.1 / 1.252762968495368, L=6.0, tau=4.0):
    """Qian et al. 2020: P- = sum softmax(p- / neg_lambda) p- (0 without negatives), P+ = sum
    softmax(-p+ / pos_lambda) p+ (1 without positives), tau / L log(1 + exp(L (P- - P+ + margin)))."""
    used, pos, neg, nan_if_bad = _detection_masks(input, target)
    p = torch.sigmoid(torch.where(used, input, torch.zeros_like(input)))

    def expectation(mask, z, empty):
        # a softmax over the masked entries; an empty mask softmaxes zeros (finite, unused)
        fill = torch.where(mask.any(), float("-inf"), 0.0).to(z.dtype)
        q = torch.softmax(torch.where(mask, z, fill).flatten(), 0).reshape(z.shape)
        return torch.where(mask.any(), torch.where(mask, q * p, 0.0).sum(), torch.tensor(empty, dtype=z.dtype))

    p_neg = expectation(neg, p / neg_lambda, 0.0)
    p_pos = expectation(pos, -p / pos_lambda, 1.0)
    z = L * (p_neg - p_pos + margin)
    return tau / L * torch.logaddexp(torch.zeros_like(z), z) * nan_if_bad


class _APLoss(torch.autograd.Function):
    """Chen et al. 2019, non-interpolated; backward = the error-driven update."""

    @staticmethod
    def forward(ctx, input, target, delta):
        used, pos, neg, nan_if_bad = _detection_masks(input, target)
        s = input.detach().flatten()
        used, neg = used.flatten(), neg.flatten()
        pidx = pos.flatten().nonzero().squeeze(1)  # a host sync: the reference is eager
        n_pos = pidx.numel()
        grad = torch.zeros_like(s)
        total = s.new_zeros(())
        chunk = max(1, 2**25 // max(s.numel(), 1))
        for start in range(0, n_pos, chunk):
            rows = pidx[start:start + chunk]
            h = torch.clamp((s[None, :] - s[rows][:, None]) / (2 * delta) + 0.5, 0, 1)
            others = used[None, :] & (torch.arange(s.numel(), device=s.device)[None, :] != rows[:, None])
            denom = 1 + torch.where(others, h, 0.0).sum(1)
            l_ij = torch.where(neg[None, :], h, 0.0) / denom[:, None]
            total = total + l_ij.sum()
            grad += l_ij.sum(0)
            grad[rows] = -l_ij.sum(1)
        grad = torch.where(used, grad / max(n_pos, 1) * nan_if_bad, 0.0)
        ctx.save_for_backward(grad.reshape(input.shape))
        return (total / max(n_pos, 1) * nan_if_bad).to(input.dtype)

    @staticmethod
    def backward(ctx, grad_output):
        (grad,) = ctx.saved_tensors
        return grad * grad_output, None, None


def ap_loss(input, target, delta=1.0):
    """1/|P| sum_{i in P} sum_{j in N} H(s_j - s_i) / (1 + sum_{k != i} H(s_k - s_i)),
    H(x) = clamp(x / (2 delta) + 1/2, 0, 1); its backward is the paper's error-driven update."""
    return _APLoss.apply(input, target, delta)
