"""Regression losses: argument checks, path choice and the autograd wrapper.

Every loss here is elementwise with an optional `weight` that broadcasts to the loss
shape (it is not differentiated). With a weight, `"mean"` is sum(w * loss) / sum(w), and
elements of zero weight contribute exactly 0 to the loss and the gradients even where
their loss is NaN. Inputs broadcast as in torch; the loss has the dtype of `input` and
each gradient the dtype of its tensor.
"""

from __future__ import annotations

import math
import warnings

import torch

from . import _elementwise, _runtime, _validate
from .kernels import regression as K
from .reference import regression as ref


def _run(loss, reduction, input, target, extra=None, weight=None, quantiles=None,
         params=(), opt=0, eager=None, torch_shape_warning=False):
    """Check the tensors, then run the kernel (or `eager()` on the eager path)."""
    _validate.floating("input", input)
    _validate.floating("target", target)
    if extra is not None:
        _validate.floating(extra[0], extra[1])
    z = extra[1] if extra is not None else None
    named = {"input": input, "target": target, **({extra[0]: z} if extra else {})}
    _validate.same_device(**named, quantiles=quantiles)
    shape = _validate.broadcast(**named)
    weight = _validate.weight(weight, shape, input)
    if torch_shape_warning and target.shape != input.shape:
        warnings.warn(
            f"Using a target size ({target.shape}) that is different to the input size "
            f"({input.shape}). This will likely lead to incorrect results due to broadcasting. "
            "Please ensure they have the same size.",
            stacklevel=3,
        )
    if not _runtime.use_kernels(input, target, z, weight):
        return eager(weight)
    return _elementwise.apply(K, loss, reduction, shape, input, target, z, weight, quantiles, params, opt)


def l1_loss(input: torch.Tensor, target: torch.Tensor, reduction: str = "mean",
            weight: torch.Tensor | None = None) -> torch.Tensor:
    """abs(input - target); anchor torch `F.l1_loss` (gradient 0 at 0)."""
    _validate.reduction(reduction)
    return _run(K.L1, reduction, input, target, weight=weight, torch_shape_warning=True,
                eager=lambda w: ref.l1_loss(input, target, reduction, w))


def mse_loss(input: torch.Tensor, target: torch.Tensor, reduction: str = "mean",
             weight: torch.Tensor | None = None) -> torch.Tensor:
    """(input - target)^2; anchor torch `F.mse_loss`."""
    _validate.reduction(reduction)
    return _run(K.MSE, reduction, input, target, weight=weight, torch_shape_warning=True,
                eager=lambda w: ref.mse_loss(input, target, reduction, w))


def rmse_loss(input: torch.Tensor, target: torch.Tensor,
              weight: torch.Tensor | None = None) -> torch.Tensor:
    """sqrt(sum(w (input - target)^2) / sum(w)), 0-dim; the gradient is 0 (not NaN) at a
    perfect fit; empty input gives NaN."""
    return _run(K.MSE, "rms", input, target, weight=weight,
                eager=lambda w: ref.rmse_loss(input, target, w))


def smooth_l1_loss(input: torch.Tensor, target: torch.Tensor, reduction: str = "mean",
                   beta: float = 1.0, weight: torch.Tensor | None = None) -> torch.Tensor:
    """0.5 d^2 / beta if |d| < beta else |d| - 0.5 beta; anchor torch; beta = 0 is L1."""
    _validate.reduction(reduction)
    beta = _validate.number("beta", beta, low=0.0)
    return _run(K.SMOOTH_L1, reduction, input, target, weight=weight, params=(beta,),
                torch_shape_warning=True,
                eager=lambda w: ref.smooth_l1_loss(input, target, reduction, beta, w))


def huber_loss(input: torch.Tensor, target: torch.Tensor, reduction: str = "mean",
               delta: float = 1.0, weight: torch.Tensor | None = None) -> torch.Tensor:
    """0.5 d^2 if |d| < delta else delta (|d| - 0.5 delta); anchor torch `F.huber_loss`."""
    _validate.reduction(reduction)
    delta = _validate.number("delta", delta, low=0.0, low_open=True)
    return _run(K.HUBER, reduction, input, target, weight=weight, params=(delta,),
                torch_shape_warning=True,
                eager=lambda w: ref.huber_loss(input, target, reduction, delta, w))


def balanced_l1_loss(input: torch.Tensor, target: torch.Tensor, alpha: float = 0.5,
                     gamma: float = 1.5, beta: float = 1.0, reduction: str = "mean",
                     weight: torch.Tensor | None = None) -> torch.Tensor:
    """Libra R-CNN balanced L1. With b = e^(gamma/alpha) - 1 and u = |d| / beta:
    beta * (alpha/b (b u + 1) ln(b u + 1) - alpha u) for u < 1, else
    beta * (gamma u + gamma/b - alpha). Equals mmdet at beta = 1; unlike mmdet the
    gradient alpha ln(b u + 1) sign(d) is continuous at |d| = beta for every beta."""
    _validate.reduction(reduction)
    alpha = _validate.number("alpha", alpha, low=0.0, low_open=True)
    gamma = _validate.number("gamma", gamma, low=0.0, low_open=True)
    beta = _validate.number("beta", beta, low=0.0, low_open=True)
    b = math.expm1(gamma / alpha)
    if not math.isfinite(b):
        raise ValueError(f"gamma / alpha: expected at most 88 (e^(gamma/alpha) finite), got {gamma / alpha}")
    return _run(K.BALANCED_L1, reduction, input, target, weight=weight,
                params=(alpha, gamma, beta, b),
                eager=lambda w: ref.balanced_l1_loss(input, target, alpha, gamma, beta, reduction, w))


def quantile_loss(input: torch.Tensor, target: torch.Tensor, quantiles: float | torch.Tensor,
                  reduction: str = "mean", weight: torch.Tensor | None = None) -> torch.Tensor:
    """Pinball loss max(q e, (q - 1) e), e = target - input (sklearn `mean_pinball_loss`,
    no factor 2). `quantiles` is a float or a 1-D tensor of the size of input's last dim;
    with a tensor, a target shaped like input[..., 0] is compared with every quantile.
    The subgradient at e = 0 is q - 1/2 (as autograd of torch.maximum)."""
    _validate.reduction(reduction)
    if isinstance(quantiles, torch.Tensor):
        _validate.floating("quantiles", quantiles)
        if quantiles.dim() != 1 or input.dim() == 0 or quantiles.numel() != input.shape[-1]:
            raise ValueError(
                f"quantiles: expected a 1-D tensor of input.shape[-1] elements, got shape "
                f"{tuple(quantiles.shape)} for input {tuple(input.shape)}"
            )
        if _runtime.may_inspect(quantiles) and not bool(((quantiles >= 0) & (quantiles <= 1)).all()):
            raise ValueError(f"quantiles: expected values in [0, 1], got {quantiles.tolist()}")
        if isinstance(target, torch.Tensor) and target.shape == input.shape[:-1]:
            target = target.unsqueeze(-1)
        q, p = quantiles, 0.0
    else:
        q, p = None, _validate.number("quantiles", quantiles, low=0.0, high=1.0)
    return _run(K.QUANTILE, reduction, input, target, weight=weight, quantiles=q, params=(p,),
                eager=lambda w: ref.quantile_loss(input, target, quantiles, reduction, w))


def wing_loss(input: torch.Tensor, target: torch.Tensor, omega: float = 10.0,
              epsilon: float = 2.0, reduction: str = "mean",
              weight: torch.Tensor | None = None) -> torch.Tensor:
    """Wing loss (Feng et al. 2018): omega ln(1 + |d|/epsilon) if |d| < omega, else |d| - C,
    C = omega - omega ln(1 + omega/epsilon)."""
    _validate.reduction(reduction)
    omega = _validate.number("omega", omega, low=0.0, low_open=True)
    epsilon = _validate.number("epsilon", epsilon, low=0.0, low_open=True)
    c = omega - omega * math.log1p(omega / epsilon)
    return _run(K.WING, reduction, input, target, weight=weight, params=(omega, epsilon, c),
                eager=lambda w: ref.wing_loss(input, target, omega, epsilon, reduction, w))


def adaptive_wing_loss(input: torch.Tensor, target: torch.Tensor, omega: float = 14.0,
                       theta: float = 0.5, epsilon: float = 1.0, alpha: float = 2.1,
                       reduction: str = "mean",
                       weight: torch.Tensor | None = None) -> torch.Tensor:
    """Adaptive wing loss (Wang et al. 2019, mmpose form), e = alpha - target, r = theta/eps:
    omega ln(1 + (|d|/eps)^e) if |d| < theta, else A |d| - C with
    A = omega e r^(e-1) / (eps (1 + r^e)), C = theta A - omega ln(1 + r^e).
    The target is differentiated through the exponent too, as autograd of mmpose does."""
    _validate.reduction(reduction)
    omega = _validate.number("omega", omega, low=0.0, low_open=True)
    theta = _validate.number("theta", theta, low=0.0, low_open=True)
    epsilon = _validate.number("epsilon", epsilon, low=0.0, low_open=True)
    alpha = _validate.number("alpha", alpha)
    return _run(K.ADAPTIVE_WING, reduction, input, target, weight=weight,
                params=(omega, theta, epsilon, alpha),
                eager=lambda w: ref.adaptive_wing_loss(input, target, omega, theta, epsilon,
                                                       alpha, reduction, w))


def log_cosh_loss(input: torch.Tensor, target: torch.Tensor, reduction: str = "mean",
                  weight: torch.Tensor | None = None) -> torch.Tensor:
    """ln cosh(d) computed as |d| + softplus(-2|d|) - ln 2: finite for every finite d;
    gradient tanh(d)."""
    _validate.reduction(reduction)
    return _run(K.LOG_COSH, reduction, input, target, weight=weight,
                eager=lambda w: ref.log_cosh_loss(input, target, reduction, w))


def kl_box_loss(input: torch.Tensor, log_var: torch.Tensor, target: torch.Tensor,
                reduction: str = "mean", weight: torch.Tensor | None = None) -> torch.Tensor:
    """KL box regression (He et al. 2019), alpha = log_var, d = input - target:
    e^-alpha d^2 / 2 + alpha/2 if |d| <= 1, else e^-alpha (|d| - 1/2) + alpha/2."""
    _validate.reduction(reduction)
    return _run(K.KL_BOX, reduction, input, target, extra=("log_var", log_var), weight=weight,
                eager=lambda w: ref.kl_box_loss(input, log_var, target, reduction, w))


def poisson_nll_loss(input: torch.Tensor, target: torch.Tensor, log_input: bool = True,
                     full: bool = False, eps: float = 1e-8, reduction: str = "mean",
                     weight: torch.Tensor | None = None) -> torch.Tensor:
    """exp(input) - target input (log_input) or input - target ln(input + eps), plus the
    Stirling term where target > 1 if full; anchor torch `F.poisson_nll_loss`. Where torch's
    target gradient is NaN (full, target = 0) this one is 0, the true derivative."""
    _validate.reduction(reduction)
    _validate.flag("log_input", log_input)
    _validate.flag("full", full)
    eps = _validate.number("eps", eps, low=0.0)
    opt = (K.LOG_INPUT if log_input else 0) | (K.FULL if full else 0)
    return _run(K.POISSON, reduction, input, target, weight=weight, params=(eps,), opt=opt,
                eager=lambda w: ref.poisson_nll_loss(input, target, log_input, full, eps,
                                                     reduction, w))


def _gaussian_var(input: torch.Tensor, var) -> torch.Tensor:
    """var as torch shapes it: a float, input's shape, input.shape[:-1] (unsqueezed), or
    input's shape with one dimension of size 1."""
    if not isinstance(var, torch.Tensor):
        var = _validate.number("var", var, low=0.0)
        return torch.full((), var, dtype=input.dtype, device=input.device).expand(input.shape)
    _validate.floating("var", var)
    if var.shape == input.shape:
        return var
    if var.shape == input.shape[:-1]:
        return var.unsqueeze(-1)
    if var.dim() == input.dim() and sum(v for i, v in zip(input.shape, var.shape) if i != v) == 1:
        return var
    raise ValueError(
        f"var: expected input's shape {tuple(input.shape)}, that shape without its last "
        f"dimension, or with one dimension of size 1, got {tuple(var.shape)}"
    )


def gaussian_nll_loss(input: torch.Tensor, target: torch.Tensor, var: torch.Tensor | float,
                      full: bool = False, eps: float = 1e-6, reduction: str = "mean",
                      weight: torch.Tensor | None = None) -> torch.Tensor:
    """0.5 (ln v + (input - target)^2 / v) (+ 0.5 ln 2 pi if full), v = max(var, eps) with
    the clamp passed straight through as torch does; anchor torch `F.gaussian_nll_loss`.
    Unlike torch, negative variances raise only where values may be read without a device
    sync (CPU, or `tritonloss.set_checks(True)`); otherwise they are clamped to eps."""
    _validate.reduction(reduction)
    _validate.floating("input", input)
    _validate.flag("full", full)
    eps = _validate.number("eps", eps, low=0.0)
    var = _gaussian_var(input, var)
    if _runtime.may_inspect(var) and bool((var < 0).any()):
        raise ValueError("var: expected non-negative variances, got a negative entry")
    const = 0.5 * math.log(2 * math.pi) if full else 0.0
    return _run(K.GAUSSIAN, reduction, input, target, extra=("var", var), weight=weight,
                params=(eps, const),
                eager=lambda w: ref.gaussian_nll_loss(input, target, var, full, eps, reduction, w))
