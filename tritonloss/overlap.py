"""Segmentation overlap losses: Dice (and Jaccard), Tversky, Focal-Tversky.

`input` is logits (or probabilities with activation="none") [B, C, *spatial], at least one
spatial dimension. `target` is class indices [B, *spatial] (any integer or bool dtype), or
a floating tensor shaped like `input` (one-hot or soft), which then receives a gradient
too. p = activation(input) ("softmax" over C, "sigmoid", or "none") and g the target (the
one-hot of the indices); with a single channel, indices are the 0/1 foreground mask.

Per (sample, class), summed over space (and over the batch with `batch=True`):
tp = sum p g, fp = sum p - tp, fn = sum g - tp; with `squared`, p^2 and g^2 replace p and
g in the last two sums (MONAI's `squared_pred`, which squares the target too). Then

  Dice          1 - (2 tp + smooth_nr) / (2 tp + fp + fn + smooth_dr)
  Jaccard       1 - (2 tp + smooth_nr) / (2 (tp + fp + fn) + smooth_dr)   (dice_loss(jaccard=True))
  Tversky       1 - (tp + smooth_nr) / (tp + alpha fp + beta fn + smooth_dr)
  Focal-Tversky (Tversky loss)^(1/gamma)

each times `weight[c]` (one non-negative weight per scored class). "none" returns
[B, C'] ([C'] with batch), C' = C, or C - 1 without the background channel 0; "mean" is
the mean of those, "sum" their sum. Anchor: MONAI `DiceLoss` / `TverskyLoss` with
soft_label=False (the default), `to_onehot_y=True` for index targets; the activation, the
three sums and the score are one pass over the data, the backward one more.

`ignore_index` follows MONAI's `create_ignore_mask`: with index targets (or a single
channel) pixels whose target equals it are ignored; with a C-channel target, a valid class
index c ignores every pixel in proportion 1 - target[c] (all of them, every class, where
target[c] = 1), and any other value ignores pixels whose target is 0 in every channel.
Ignored pixels add nothing to any sum. If every pixel is ignored (or the image is empty)
every sum is 0, so the loss is 1 - smooth_nr / smooth_dr (0 with the defaults) and the
gradient is 0. Empty ground truth and empty predictions behave as in MONAI (the smoothing
terms decide).

Differences from MONAI, all deliberate:
- the default activation is "softmax" (input is logits); MONAI applies none by default;
- masking uses `where`, not a product, so a NaN at an ignored pixel or in a class of
  weight 0 reaches neither the loss nor a gradient;
- a floating target's gradient treats the ignore mask as a constant (MONAI also
  differentiates 1 - target[c] when `ignore_index` is a class index);
- `weight` is applied also when one class is scored (MONAI then ignores it), and Tversky
  and Focal-Tversky take `weight` and `squared` too (MONAI's TverskyLoss has neither);
- an index outside [0, C) (outside {0, 1} for one channel) that is not `ignore_index`
  never addresses memory: it makes its sample's row NaN, or raises a ValueError naming
  its position where values may be read without a sync (CPU, or with checks on).
As in MONAI, "softmax" with a single channel and include_background=False with a single
channel warn and are ignored.
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Sequence

import torch

from . import _runtime, _validate
from .kernels import overlap as K
from .reference import overlap as ref

_ACTIVATIONS = {"none": K.IDENTITY, "sigmoid": K.SIGMOID, "softmax": K.SOFTMAX}
_REDUCE = {"none": K.NONE, "sum": K.SUM, "mean": K.MEAN}
_INDEX_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64, torch.bool)


class _Overlap(torch.autograd.Function):
    @staticmethod
    def forward(ctx, spec, x, t, w):
        out, coef = K.forward(spec, x, t, w)
        ctx.spec = spec
        ctx.save_for_backward(x, t, coef)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        x, t, coef = ctx.saved_tensors
        dx, dt = K.backward(ctx.spec, x, t, coef, grad.contiguous(), ctx.needs_input_grad[1],
                            ctx.needs_input_grad[2])
        return None, dx, dt, None


def _check_tensors(input, target) -> bool:
    """Shapes and dtypes; True if `target` holds class indices."""
    _validate.floating("input", input)
    if input.dim() < 3 or input.shape[1] == 0:
        raise ValueError(
            f"input: expected [B, C, *spatial] with C >= 1 and at least one spatial dimension, "
            f"got shape {tuple(input.shape)}"
        )
    if not isinstance(target, torch.Tensor):
        raise TypeError(f"target: expected a torch.Tensor, got {type(target).__name__}")
    labels = not target.is_floating_point()
    if labels and target.dtype not in _INDEX_DTYPES:
        raise TypeError(f"target: expected class indices (an integer dtype) or a floating tensor, got {target.dtype}")
    want = (input.shape[0], *input.shape[2:]) if labels else tuple(input.shape)
    if tuple(target.shape) != want:
        kind = "class indices [B, *spatial]" if labels else "a floating target shaped like input [B, C, *spatial]"
        raise ValueError(f"target: expected {kind} = {want} for input {tuple(input.shape)}, got {tuple(target.shape)}")
    return labels


def _check_labels(target: torch.Tensor, n_class: int, ignore_index: int | None) -> None:
    top = n_class + 1 if n_class == 1 else n_class
    t = target.long()
    bad = (t < 0) | (t >= top)
    if ignore_index is not None:
        bad &= t != ignore_index
    if bool(bad.any()):
        pos = tuple(int(i) for i in bad.nonzero()[0])
        raise ValueError(
            f"target: expected class indices in [0, {top}) or ignore_index ({ignore_index}), "
            f"got {int(t[pos])} at position {pos}"
        )


def _check_weight(weight, n_scored: int, input: torch.Tensor) -> torch.Tensor | None:
    if weight is None:
        return None
    if isinstance(weight, Sequence) and not isinstance(weight, str):
        if not all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in weight):
            raise TypeError(f"weight: expected a 1-D tensor or a sequence of real numbers, got {weight!r}")
        dtype = torch.float64 if input.dtype == torch.float64 else torch.float32
        weight = torch.tensor(weight, dtype=dtype, device=input.device)
    _validate.floating("weight", weight)
    _validate.same_device(input=input, weight=weight)
    if weight.shape != (n_scored,):
        raise ValueError(
            f"weight: expected one weight per scored class, shape ({n_scored},), got {tuple(weight.shape)}"
        )
    if _runtime.may_inspect(weight) and bool((weight < 0).any()):
        raise ValueError(f"weight: expected non-negative class weights, got {weight.tolist()}")
    return weight


def _mask_mode(labels: bool, n_class: int, ignore_index: int | None) -> int:
    if ignore_index is None:
        return K.NO_MASK
    if labels or n_class == 1:
        return K.LABEL_MASK
    return K.CHANNEL_MASK if 0 <= ignore_index < n_class else K.EMPTY_MASK


def _overlap(input, target, form, expo, activation, include_background, squared, smooth_nr,
             smooth_dr, batch, weight, ignore_index, reduction, eager):
    """Check every argument, then run the kernels (or `eager(weight)` on the eager path).
    `form` = (k_i, d_i, d_p, d_g): TI = (k_i tp + nr) / (d_i tp + d_p P + d_g G + dr)."""
    _validate.reduction(reduction)
    labels = _check_tensors(input, target)
    if activation not in _ACTIVATIONS:
        raise ValueError(f"activation: expected one of 'softmax', 'sigmoid', 'none', got {activation!r}")
    for name, value in (("include_background", include_background), ("squared", squared), ("batch", batch)):
        _validate.flag(name, value)
    smooth_nr = _validate.number("smooth_nr", smooth_nr, low=0.0)
    smooth_dr = _validate.number("smooth_dr", smooth_dr, low=0.0)
    if ignore_index is not None and (isinstance(ignore_index, bool) or not isinstance(ignore_index, int)):
        raise TypeError(f"ignore_index: expected None or an int, got {type(ignore_index).__name__}")
    if ignore_index is not None and not -(2**63) <= ignore_index < 2**63:
        raise ValueError(f"ignore_index: expected a 64-bit integer, got {ignore_index}")
    _validate.same_device(input=input, target=target)
    n_class = input.shape[1]
    if n_class == 1 and activation == "softmax":
        warnings.warn("single channel prediction, `activation='softmax'` ignored.", stacklevel=3)
        activation = "none"
    if n_class == 1 and not include_background:
        warnings.warn("single channel prediction, `include_background=False` ignored.", stacklevel=3)
        include_background = True
    weight = _check_weight(weight, n_class - (0 if include_background else 1), input)
    if labels and _runtime.may_inspect(target):
        _check_labels(target, n_class, ignore_index)
    if not _runtime.use_kernels(input, None if labels else target):  # the kernels read any weight dtype
        return eager(activation, include_background, weight)

    B, S = input.shape[0], math.prod(input.shape[2:])
    x = input.reshape(B, n_class, S).contiguous()
    t = target.reshape((B, S) if labels else (B, n_class, S)).contiguous()
    if t.dtype == torch.bool:
        t = t.view(torch.uint8)
    spec = K.Spec(
        act=_ACTIVATIONS[activation], labels=labels, mask=_mask_mode(labels, n_class, ignore_index),
        squared=squared, first=1 if labels and n_class == 1 else 0,
        ignore=ignore_index if ignore_index is not None else 0, c0=0 if include_background else 1,
        form=(*form, smooth_nr, smooth_dr), focal=expo is not None, expo=expo or 1.0, batch=batch,
        reduce=_REDUCE[reduction],
    )
    w = weight.detach().contiguous() if weight is not None else None
    with _runtime.on_device(x):
        out = _runtime.untraced(_Overlap.apply, spec, x, t, w)
    return out[0] if batch and reduction == "none" else out


def dice_loss(input: torch.Tensor, target: torch.Tensor, *, activation: str = "softmax",
              include_background: bool = True, squared: bool = False, jaccard: bool = False,
              smooth_nr: float = 1e-5, smooth_dr: float = 1e-5, batch: bool = False,
              weight: torch.Tensor | Sequence[float] | None = None, ignore_index: int | None = None,
              reduction: str = "mean") -> torch.Tensor:
    """Dice loss 1 - (2 tp + smooth_nr) / (2 tp + fp + fn + smooth_dr) per (sample, class),
    or with `jaccard` the soft Jaccard 1 - (2 tp + smooth_nr) / (2 (tp + fp + fn) + smooth_dr);
    anchor MONAI `DiceLoss`. See the module docstring for the options and the differences."""
    _validate.flag("jaccard", jaccard)
    form = (2.0, -2.0, 2.0, 2.0) if jaccard else (2.0, 0.0, 1.0, 1.0)
    return _overlap(input, target, form, None, activation, include_background, squared,
                    smooth_nr, smooth_dr, batch, weight, ignore_index, reduction,
                    lambda act, bg, w: ref.dice_loss(
                        input, target, activation=act, include_background=bg, squared=squared,
                        jaccard=jaccard, smooth_nr=smooth_nr, smooth_dr=smooth_dr, batch=batch,
                        weight=w, ignore_index=ignore_index, reduction=reduction))


def _tversky_form(alpha, beta) -> tuple:
    alpha = _validate.number("alpha", alpha, low=0.0)
    beta = _validate.number("beta", beta, low=0.0)
    return alpha, beta, (1.0, 1.0 - alpha - beta, alpha, beta)


def tversky_loss(input: torch.Tensor, target: torch.Tensor, alpha: float = 0.5, beta: float = 0.5, *,
                 activation: str = "softmax", include_background: bool = True, squared: bool = False,
                 smooth_nr: float = 1e-5, smooth_dr: float = 1e-5, batch: bool = False,
                 weight: torch.Tensor | Sequence[float] | None = None, ignore_index: int | None = None,
                 reduction: str = "mean") -> torch.Tensor:
    """Tversky loss 1 - (tp + smooth_nr) / (tp + alpha fp + beta fn + smooth_dr) per (sample,
    class): alpha weighs false positives, beta false negatives (alpha = beta = 1/2 is Dice,
    1 and 1 Jaccard); anchor MONAI `TverskyLoss`. See the module docstring."""
    alpha, beta, form = _tversky_form(alpha, beta)
    return _overlap(input, target, form, None, activation, include_background, squared,
                    smooth_nr, smooth_dr, batch, weight, ignore_index, reduction,
                    lambda act, bg, w: ref.tversky_loss(
                        input, target, alpha, beta, activation=act, include_background=bg,
                        squared=squared, smooth_nr=smooth_nr, smooth_dr=smooth_dr, batch=batch,
                        weight=w, ignore_index=ignore_index, reduction=reduction))


def focal_tversky_loss(input: torch.Tensor, target: torch.Tensor, alpha: float = 0.5, beta: float = 0.5,
                       gamma: float = 4 / 3, *, activation: str = "softmax", include_background: bool = True,
                       squared: bool = False, smooth_nr: float = 1e-5, smooth_dr: float = 1e-5,
                       batch: bool = False, weight: torch.Tensor | Sequence[float] | None = None,
                       ignore_index: int | None = None, reduction: str = "mean") -> torch.Tensor:
    """Focal-Tversky loss (Abraham and Khan 2019): (1 - TI)^(1/gamma) per (sample, class),
    TI the Tversky index of `tversky_loss` (alpha weighs false positives, as in MONAI; the
    paper writes alpha for false negatives). Where 1 - TI = 0 (a perfect or an empty
    prediction of an empty class with smooth_nr = smooth_dr) the loss is 0 and its gradient
    0, not the infinite derivative of the power for gamma > 1; 1 - TI < 0 (only with
    smooth_nr > smooth_dr or inputs outside [0, 1]) gives NaN, as torch.pow."""
    alpha, beta, form = _tversky_form(alpha, beta)
    gamma = _validate.number("gamma", gamma, low=0.0, low_open=True)
    return _overlap(input, target, form, 1.0 / gamma, activation, include_background, squared,
                    smooth_nr, smooth_dr, batch, weight, ignore_index, reduction,
                    lambda act, bg, w: ref.focal_tversky_loss(
                        input, target, alpha, beta, gamma, activation=act, include_background=bg,
                        squared=squared, smooth_nr=smooth_nr, smooth_dr=smooth_dr, batch=batch,
                        weight=w, ignore_index=ignore_index, reduction=reduction))
