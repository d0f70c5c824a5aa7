"""Eager face-recognition losses built from the formulas: normalise (F.normalize, eps 1e-12),
linear, put the margin on the target logit, F.cross_entropy. They hold the B x C logits
(the kernels never do) and serve as the CPU / float64 path and as the tests' oracle.

Combined margin (insightface): target s (cos(m1 theta + m2) - m3), past m1 theta + m2 > pi
continued as s (cos theta - (1 + m3 + cos theta_max)), theta_max = (pi - m2) / m1;
easy_margin keeps s cos theta where cos theta <= 0. margin_grad "exact" differentiates
this with d/dc cos(m1 theta + m2) = m1 sin(m1 theta + m2) / sin(theta), theta clamped to
[1e-3, pi - 1e-3] in that ratio (finite at cos = +-1); "detached" uses derivative 1
(the margin offset held constant, insightface since 2022).

SphereFace / L-Softmax target |x| fw (lambda c + psi(c)) / (1 + lambda), fw = 1 (A-Softmax,
weight rows normalised) or |W_y| (L-Softmax), psi = (-1)^k cos(m theta) - 2k,
k = floor(m theta / pi) (theta = acos c), cos(m theta) as the Chebyshev polynomial T_m(c).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

THETA_EPS = 1e-3


def _ce(logits, labels, ignore_index, reduction, label_smoothing=0.0):
    return F.cross_entropy(logits, labels, ignore_index=ignore_index, reduction=reduction,
                           label_smoothing=label_smoothing)


def _with_target(logits, labels, target_logit):
    """logits with column labels[i] of row i replaced by target_logit[i] (differentiably)."""
    cols = torch.arange(logits.shape[1], device=logits.device)
    hot = cols[None, :] == labels[:, None]
    return torch.where(hot, target_logit[:, None], logits)


def _gather(t, labels):
    safe = labels.clamp(0, t.shape[1] - 1)
    return t.gather(1, safe[:, None])[:, 0]


class _Combined(torch.autograd.Function):
    """F(c) of the combined margin with the documented derivative."""

    @staticmethod
    def forward(ctx, c, m1, m2, m3, easy, detached):
        theta = torch.acos(c)
        theta_max = (math.pi - m2) / m1
        on = theta <= theta_max
        f = torch.where(on, torch.cos(m1 * theta + m2) - m3, c - (1 + m3 + math.cos(theta_max)))
        tc = theta.clamp(THETA_EPS, math.pi - THETA_EPS)
        df = torch.where(on, m1 * torch.sin(m1 * tc + m2) / torch.sin(tc), torch.ones_like(c))
        if easy:
            f = torch.where(c > 0, f, c)
            df = torch.where(c > 0, df, torch.ones_like(c))
        if detached:
            df = torch.ones_like(c)
        ctx.save_for_backward(df)
        return f

    @staticmethod
    def backward(ctx, g):
        (df,) = ctx.saved_tensors
        return g * df, None, None, None, None, None


def combined_logits(embeddings, weight, labels, *, scale=64.0, m1=1.0, m2=0.0, m3=0.0, easy_margin=False,
                    margin_grad="exact"):
    """The [B, C] logits of the combined margin; rows whose label is not in [0, C) have no target."""
    cos = F.linear(F.normalize(embeddings, dim=1), F.normalize(weight, dim=1))
    c = _gather(cos, labels).clamp(-1, 1)
    f = _Combined.apply(c, m1, m2, m3, easy_margin, margin_grad == "detached")
    return _with_target(scale * cos, labels, scale * f)


def margin_cross_entropy(embeddings, weight, labels, *, scale=64.0, m1=1.0, m2=0.0, m3=0.0,
                         easy_margin=False, margin_grad="exact", ignore_index=-100, reduction="mean"):
    logits = combined_logits(embeddings, weight, labels, scale=scale, m1=m1, m2=m2, m3=m3, easy_margin=easy_margin,
                             margin_grad=margin_grad)
    return _ce(logits, labels, ignore_index, reduction)


def arcface_loss(embeddings, weight, labels, *, scale=64.0, margin=0.5, easy_margin=False,
                 margin_grad="exact", ignore_index=-100, reduction="mean"):
    return margin_cross_entropy(embeddings, weight, labels, scale=scale, m2=margin, easy_margin=easy_margin,
                                margin_grad=margin_grad, ignore_index=ignore_index, reduction=reduction)


def cosface_loss(embeddings, weight, labels, *, scale=64.0, margin=0.35, ignore_index=-100, reduction="mean"):
    return margin_cross_entropy(embeddings, weight, labels, scale=scale, m3=margin, ignore_index=ignore_index,
                                reduction=reduction)


def normface_loss(embeddings, weight, labels, *, scale=30.0, ignore_index=-100, reduction="mean"):
    cos = F.linear(F.normalize(embeddings, dim=1), F.normalize(weight, dim=1))
    return _ce(scale * cos, labels, ignore_index, reduction)


def coco_loss(features, centers, labels, *, alpha=6.25, ignore_index=-100, reduction="mean"):
    return normface_loss(features, centers, labels, scale=alpha, ignore_index=ignore_index, reduction=reduction)


def l2_softmax_loss(embeddings, weight, labels, bias=None, *, alpha=50.0, ignore_index=-100, reduction="mean"):
    logits = F.linear(alpha * F.normalize(embeddings, dim=1), weight, bias)
    return _ce(logits, labels, ignore_index, reduction)


def linear_cross_entropy(input, weight, target, bias=None, *, ignore_index=-100, reduction="mean",
                         label_smoothing=0.0):
    return _ce(F.linear(input, weight, bias), target, ignore_index, reduction, label_smoothing)


def chebyshev(c, m):
    """T_m(c) = cos(m acos c) by the recurrence."""
    t_prev, t = torch.ones_like(c), c
    for _ in range(1, m):
        t_prev, t = t, 2 * c * t - t_prev
    return t


def _sphere_target(x, w, labels, m, lam, scale_by_weight_norm):
    nx = x.norm(dim=1)
    cos = F.linear(F.normalize(x, dim=1), F.normalize(w, dim=1))
    c = _gather(cos, labels).clamp(-1, 1)
    k = torch.floor(m * torch.acos(c.detach()) / math.pi).clamp(max=m - 1)
    psi = (1 - 2 * torch.remainder(k, 2)) * chebyshev(c, m) - 2 * k
    target = nx * (lam * c + psi) / (1 + lam)
    if scale_by_weight_norm:
        target = target * _gather(w.norm(dim=1)[None, :].expand(len(labels), -1), labels)
    return target


def sphereface_loss(embeddings, weight, labels, *, margin=4, lambda_=0.0, ignore_index=-100, reduction="mean"):
    logits = F.linear(embeddings, F.normalize(weight, dim=1))
    target = _sphere_target(embeddings, weight, labels, margin, lambda_, False)
    return _ce(_with_target(logits, labels, target), labels, ignore_index, reduction)


def large_margin_softmax_loss(input, weight, labels, *, margin=2, lambda_=0.0, ignore_index=-100,
                              reduction="mean"):
    logits = F.linear(input, weight)
    target = _sphere_target(input, weight, labels, margin, lambda_, True)
    return _ce(_with_target(logits, labels, target), labels, ignore_index, reduction)
