"""Eager PyTorch regression losses: the CPU path without the interpreter, and the test oracle.

Same signatures as `tritonloss.functional`, called with arguments the public layer has
already checked and normalised (gaussian `var` shaped as torch does, quantile targets
unsqueezed). torch.nn.functional serves where it has the loss and no weight is given.
With a weight, elements of zero weight are replaced by harmless values before the loss,
so that their NaN reaches neither the loss nor a gradient.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _keep(weight, *tensors):
    """Tensors with zero-weight elements replaced by 0 (so a NaN there does not leak)."""
    if weight is None:
        return tensors
    keep = weight != 0
    return tuple(torch.where(keep, t, torch.zeros((), dtype=t.dtype)) for t in tensors)


def _reduce(loss, reduction, weight):
    if weight is not None:
        w = weight.to(loss.dtype)
        loss = torch.where(w != 0, loss * w, torch.zeros((), dtype=loss.dtype))
        if reduction == "mean":
            return loss.sum() / w.expand(loss.shape).sum()
    if reduction == "none":
        return loss
    return loss.sum() if reduction == "sum" else loss.mean()


def _weighted(torch_fn, input, target, reduction, weight, **options):
    if weight is None:
        return torch_fn(input, target, reduction=reduction, **options)
    input, target = _keep(weight, input, target)
    return _reduce(torch_fn(input, target, reduction="none", **options), reduction, weight)


def l1_loss(input, target, reduction="mean", weight=None):
    return _weighted(F.l1_loss, input, target, reduction, weight)


def mse_loss(input, target, reduction="mean", weight=None):
    return _weighted(F.mse_loss, input, target, reduction, weight)


def smooth_l1_loss(input, target, reduction="mean", beta=1.0, weight=None):
    return _weighted(F.smooth_l1_loss, input, target, reduction, weight, beta=beta)


def huber_loss(input, target, reduction="mean", delta=1.0, weight=None):
    return _weighted(F.huber_loss, input, target, reduction, weight, delta=delta)


def rmse_loss(input, target, weight=None):
    input, target = _keep(weight, input, target)
    ms = _reduce((input - target) ** 2, "mean", weight)
    return torch.where(ms == 0, 0.0, torch.where(ms == 0, 1.0, ms).sqrt()).to(ms.dtype)


def balanced_l1_loss(input, target, alpha=0.5, gamma=1.5, beta=1.0, reduction="mean", weight=None):
    input, target = _keep(weight, input, target)
    b = math.exp(gamma / alpha) - 1
    u = (input - target).abs() / beta
    f = torch.where(
        u < 1, alpha / b * (b * u + 1) * torch.log1p(b * u) - alpha * u, gamma * u + gamma / b - alpha
    )
    return _reduce(beta * f, reduction, weight)


def quantile_loss(input, target, quantiles, reduction="mean", weight=None):
    input, target = _keep(weight, input, target)
    e = target - input
    return _reduce(torch.maximum(quantiles * e, (quantiles - 1) * e), reduction, weight)


def wing_loss(input, target, omega=10.0, epsilon=2.0, reduction="mean", weight=None):
    input, target = _keep(weight, input, target)
    a = (input - target).abs()
    c = omega - omega * math.log1p(omega / epsilon)
    return _reduce(torch.where(a < omega, omega * torch.log1p(a / epsilon), a - c), reduction, weight)


def adaptive_wing_loss(
    input, target, omega=14.0, theta=0.5, epsilon=1.0, alpha=2.1, reduction="mean", weight=None
):
    input, target = _keep(weight, input, target)
    delta = (target - input).abs()
    e = alpha - target
    r = theta / epsilon
    big_a = omega / (1 + torch.pow(r, e)) * e * torch.pow(r, e - 1) / epsilon
    big_c = theta * big_a - omega * torch.log1p(torch.pow(r, e))
    loss = torch.where(
        delta < theta, omega * torch.log1p(torch.pow(delta / epsilon, e)), big_a * delta - big_c
    )
    return _reduce(loss, reduction, weight)


def log_cosh_loss(input, target, reduction="mean", weight=None):
    input, target = _keep(weight, input, target)
    a = (input - target).abs()
    return _reduce(a + F.softplus(-2 * a) - math.log(2), reduction, weight)


def kl_box_loss(input, log_var, target, reduction="mean", weight=None):
    input, log_var, target = _keep(weight, input, log_var, target)
    d = input - target
    a = d.abs()
    ez = torch.exp(-log_var)
    loss = torch.where(a <= 1, 0.5 * ez * d * d, ez * (a - 0.5)) + 0.5 * log_var
    return _reduce(loss, reduction, weight)


def poisson_nll_loss(
    input, target, log_input=True, full=False, eps=1e-8, reduction="mean", weight=None
):
    return _weighted(
        F.poisson_nll_loss, input, target, reduction, weight, log_input=log_input, full=full, eps=eps
    )


def gaussian_nll_loss(input, target, var, full=False, eps=1e-6, reduction="mean", weight=None):
    if weight is None:
        return F.gaussian_nll_loss(input, target, var, full=full, eps=eps, reduction=reduction)
    input, target = _keep(weight, input, target)
    var = torch.where(weight != 0, var, torch.ones((), dtype=var.dtype))
    loss = F.gaussian_nll_loss(input, target, var, full=full, eps=eps, reduction="none")
    return _reduce(loss, reduction, weight)
