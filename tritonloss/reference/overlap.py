"""Eager PyTorch segmentation overlap losses: the CPU path without the interpreter, the
float64 path, and a second oracle beside MONAI in the tests.

Same signatures as `tritonloss.functional`, called with arguments the public layer has
checked. Written from MONAI's definitions (DiceLoss and TverskyLoss with soft_label=False)
and Abraham and Khan 2019 for Focal-Tversky: per (sample, class), over space,
tp = sum p g, fp = sum p - tp, fn = sum g - tp (with `squared`, p^2 and g^2 in the last
two sums), where p and g are the prediction and the target after the ignore mask.
"""

from __future__ import annotations

import torch


def _probabilities(input: torch.Tensor, activation: str) -> torch.Tensor:
    if activation == "sigmoid":
        return torch.sigmoid(input)
    if activation == "softmax" and input.shape[1] > 1:  # MONAI: no softmax over one channel
        return torch.softmax(input, 1)
    return input


def _target_and_mask(target: torch.Tensor, n_class: int, ignore_index: int | None, dtype):
    """The target [B, C, *spatial] and the pixel mask [B, 1, *spatial] (MONAI's rules).

    Class indices become one-hot by comparison (no scatter: a bad index never addresses
    memory) and a bad index makes its pixel NaN. With a single channel the indices are the
    0/1 mask itself. A floating target's mask is treated as a constant."""
    if not target.is_floating_point():
        labels = target.long().unsqueeze(1)
        first = 1 if n_class == 1 else 0
        shape = (1, n_class) + (1,) * (target.dim() - 1)
        classes = torch.arange(first, n_class + first, device=target.device).reshape(shape)
        g = (labels == classes).to(dtype)
        ok = (labels >= 0) & (labels < n_class + first)
        m = torch.ones_like(labels, dtype=dtype)
        if ignore_index is not None:
            used = labels != ignore_index
            ok = ok | ~used
            m = used.to(dtype)
        return torch.where(ok, g, torch.full((), float("nan"), dtype=dtype, device=g.device)), m
    g = target
    t = target.detach()
    if ignore_index is None:
        m = torch.ones_like(t[:, :1])
    elif n_class == 1:
        m = (t != ignore_index).to(t.dtype)
    elif 0 <= ignore_index < n_class:
        m = 1.0 - t[:, ignore_index : ignore_index + 1]
    else:
        m = (t.sum(1, keepdim=True) > 0).to(t.dtype)
    return g, m


def _tp_fp_fn(input, target, activation, include_background, squared, batch, ignore_index):
    p = _probabilities(input, activation)
    n_class = input.shape[1]
    g, m = _target_and_mask(target, n_class, ignore_index, p.dtype)
    keep = m != 0
    zero = torch.zeros((), dtype=p.dtype, device=p.device)
    p = torch.where(keep, p * m, zero)
    g = torch.where(keep, g * m, zero)
    if not include_background and n_class > 1:
        p, g = p[:, 1:], g[:, 1:]
    dims = ([0] if batch else []) + list(range(2, p.dim()))
    tp = (p * g).sum(dims)
    power = 2 if squared else 1
    return tp, (p**power).sum(dims) - tp, (g**power).sum(dims) - tp


def _finish(loss, weight, reduction):
    if weight is not None:
        w = torch.as_tensor(weight, dtype=loss.dtype, device=loss.device)
        loss = torch.where(w != 0, loss * w, torch.zeros((), dtype=loss.dtype, device=loss.device))
    if reduction == "none":
        return loss
    return loss.sum() if reduction == "sum" else loss.mean()


def dice_loss(input, target, *, activation="softmax", include_background=True, squared=False,
              jaccard=False, smooth_nr=1e-5, smooth_dr=1e-5, batch=False, weight=None,
              ignore_index=None, reduction="mean"):
    tp, fp, fn = _tp_fp_fn(input, target, activation, include_background, squared, batch, ignore_index)
    union = 2 * (tp + fp + fn) if jaccard else 2 * tp + fp + fn
    return _finish(1 - (2 * tp + smooth_nr) / (union + smooth_dr), weight, reduction)


def _tversky(input, target, alpha, beta, activation, include_background, squared, smooth_nr,
             smooth_dr, batch, ignore_index):
    tp, fp, fn = _tp_fp_fn(input, target, activation, include_background, squared, batch, ignore_index)
    return 1 - (tp + smooth_nr) / (tp + alpha * fp + beta * fn + smooth_dr)


def tversky_loss(input, target, alpha=0.5, beta=0.5, *, activation="softmax",
                 include_background=True, squared=False, smooth_nr=1e-5, smooth_dr=1e-5,
                 batch=False, weight=None, ignore_index=None, reduction="mean"):
    loss = _tversky(input, target, alpha, beta, activation, include_background, squared,
                    smooth_nr, smooth_dr, batch, ignore_index)
    return _finish(loss, weight, reduction)


def focal_tversky_loss(input, target, alpha=0.5, beta=0.5, gamma=4 / 3, *, activation="softmax",
                       include_background=True, squared=False, smooth_nr=1e-5, smooth_dr=1e-5,
                       batch=False, weight=None, ignore_index=None, reduction="mean"):
    """(1 - TI)^(1/gamma); 0 with derivative 0 where 1 - TI = 0, NaN where it is negative."""
    base = _tversky(input, target, alpha, beta, activation, include_background, squared,
                    smooth_nr, smooth_dr, batch, ignore_index)
    positive = base > 0
    zero = torch.zeros_like(base)
    power = torch.where(positive, base, torch.ones_like(base)) ** (1 / gamma)
    negative = torch.where(base < 0, base, zero) * float("nan")  # NaN value and gradient there only
    loss = torch.where(positive, power, torch.where(base == 0, zero, negative))
    return _finish(loss, weight, reduction)
