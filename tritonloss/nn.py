"""nn.Module forms of the losses. Constructors take the function's options as keywords with
the same defaults (torch.nn's own constructor where torch has the loss, which these then
subclass); `forward` takes the function's tensors in the same order."""

from __future__ import annotations

import torch

from . import functional as F


class L1Loss(torch.nn.L1Loss):
    def __init__(self, reduction: str = "mean"):
        super().__init__(reduction=reduction)

    def forward(self, input, target, weight=None):
        return F.l1_loss(input, target, self.reduction, weight)


class MSELoss(torch.nn.MSELoss):
    def __init__(self, reduction: str = "mean"):
        super().__init__(reduction=reduction)

    def forward(self, input, target, weight=None):
        return F.mse_loss(input, target, self.reduction, weight)


class RMSELoss(torch.nn.Module):
    def forward(self, input, target, weight=None):
        return F.rmse_loss(input, target, weight)


class SmoothL1Loss(torch.nn.SmoothL1Loss):
    def __init__(self, reduction: str = "mean", beta: float = 1.0):
        super().__init__(reduction=reduction, beta=beta)

    def forward(self, input, target, weight=None):
        return F.smooth_l1_loss(input, target, self.reduction, self.beta, weight)


class HuberLoss(torch.nn.HuberLoss):
    def __init__(self, reduction: str = "mean", delta: float = 1.0):
        super().__init__(reduction=reduction, delta=delta)

    def forward(self, input, target, weight=None):
        return F.huber_loss(input, target, self.reduction, self.delta, weight)


class BalancedL1Loss(torch.nn.Module):
    def __init__(self, alpha: float = 0.5, gamma: float = 1.5, beta: float = 1.0,
                 reduction: str = "mean"):
        super().__init__()
        self.alpha, self.gamma, self.beta, self.reduction = alpha, gamma, beta, reduction

    def forward(self, input, target, weight=None):
        return F.balanced_l1_loss(input, target, self.alpha, self.gamma, self.beta,
                                  self.reduction, weight)


class QuantileLoss(torch.nn.Module):
    """`quantiles` as a float, or a 1-D tensor kept as a buffer (moves with the module)."""

    def __init__(self, quantiles: float | torch.Tensor, reduction: str = "mean"):
        super().__init__()
        if isinstance(quantiles, torch.Tensor):
            self.register_buffer("quantiles", quantiles)
        else:
            self.quantiles = quantiles
        self.reduction = reduction

    def forward(self, input, target, weight=None):
        return F.quantile_loss(input, target, self.quantiles, self.reduction, weight)


class WingLoss(torch.nn.Module):
    def __init__(self, omega: float = 10.0, epsilon: float = 2.0, reduction: str = "mean"):
        super().__init__()
        self.omega, self.epsilon, self.reduction = omega, epsilon, reduction

    def forward(self, input, target, weight=None):
        return F.wing_loss(input, target, self.omega, self.epsilon, self.reduction, weight)


class AdaptiveWingLoss(torch.nn.Module):
    def __init__(self, omega: float = 14.0, theta: float = 0.5, epsilon: float = 1.0,
                 alpha: float = 2.1, reduction: str = "mean"):
        super().__init__()
        self.omega, self.theta, self.epsilon, self.alpha = omega, theta, epsilon, alpha
        self.reduction = reduction

    def forward(self, input, target, weight=None):
        return F.adaptive_wing_loss(input, target, self.omega, self.theta, self.epsilon,
                                    self.alpha, self.reduction, weight)


class LogCoshLoss(torch.nn.Module):
    def __init__(self, reduction: str = "mean"):
        super().__init__()
        self.reduction = reduction

    def forward(self, input, target, weight=None):
        return F.log_cosh_loss(input, target, self.reduction, weight)


class KLBoxLoss(torch.nn.Module):
    def __init__(self, reduction: str = "mean"):
        super().__init__()
        self.reduction = reduction

    def forward(self, input, log_var, target, weight=None):
        return F.kl_box_loss(input, log_var, target, self.reduction, weight)


class PoissonNLLLoss(torch.nn.PoissonNLLLoss):
    def __init__(self, log_input: bool = True, full: bool = False, eps: float = 1e-8,
                 reduction: str = "mean"):
        super().__init__(log_input=log_input, full=full, eps=eps, reduction=reduction)

    def forward(self, input, target, weight=None):
        return F.poisson_nll_loss(input, target, self.log_input, self.full, self.eps,
                                  self.reduction, weight)


class GaussianNLLLoss(torch.nn.GaussianNLLLoss):
    def __init__(self, *, full: bool = False, eps: float = 1e-6, reduction: str = "mean"):
        super().__init__(full=full, eps=eps, reduction=reduction)

    def forward(self, input, target, var, weight=None):
        return F.gaussian_nll_loss(input, target, var, self.full, self.eps, self.reduction, weight)
