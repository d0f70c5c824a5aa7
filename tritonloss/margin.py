"""Face recognition: fused linear + (margin) softmax cross-entropy, never storing the B x C
logits (kernels/margin.py describes the passes).

For embeddings x [B, D], class weights W [C, D] and labels y [B] (int), the logits are
computed tile by tile with tl.dot from the raw x and W and their norms; the loss of row i
is logsumexp_j(logit_ij) - logit_iy with the target logit replaced by the margin form.
Memory beyond the inputs and their gradients: O(B + C) norms and row statistics and an
O(B * n_split) (n_split <= 256) fp32 buffer of per-class-split (max, sum-exp) partials.

Common rules (every function here):
- `ignore_index` rows give 0 and no gradient (a NaN in an ignored row does not leak into
  the weight gradient, unlike eager torch, whose dW is NaN there); "mean" divides by the
  number of non-ignored rows (NaN when there is none, as torch); "none" gives [B].
- Normalisation is F.normalize's x / max(|x|, 1e-12), value and gradient: a zero embedding
  row has cosine 0 with every class (its loss is defined) and its gradient is
  (d loss / d xhat) / 1e-12 (huge, as insightface's F.normalize gives; inf in fp16).
- embeddings, weight (and bias) share one dtype; fp32 / fp16 / bf16 run the kernels
  (fp32 accumulation, tensor-core dot for half dtypes on the GPU); float64, and the CPU
  without TRITON_INTERPRET, run the eager reference (tritonloss.reference.margin).
- An out-of-range label (neither in [0, C) nor ignore_index) gives a NaN row (and NaN
  gradients); with checks on it raises ValueError.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from . import _runtime, _validate
from .kernels import _reduce
from .kernels import margin as K
from .reference import margin as ref

_REDUCE = {"none": _reduce.NONE, "sum": _reduce.SUM, "mean": _reduce.MEAN}


class _Spec(NamedTuple):
    kind: int
    norm_x: bool
    norm_w: bool
    scale: float
    ignore_index: int
    reduce: int
    eps_smooth: float = 0.0
    m1: float = 1.0
    m2: float = 0.0
    m3: float = 0.0
    easy: bool = False
    detached: bool = False
    mi: int = 1
    lam: float = 0.0


class _MarginCE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, spec, x, w, b, y):
        nx, nw = K.norms(x), K.norms(w)
        out, rowstat, stats = K.forward(
            x, w, b, y, nx, nw, kind=spec.kind, norm_x=spec.norm_x, norm_w=spec.norm_w, scale=spec.scale,
            ignore_index=spec.ignore_index, eps_smooth=spec.eps_smooth, m1=spec.m1, m2=spec.m2, m3=spec.m3,
            easy=spec.easy, detached=spec.detached, mi=spec.mi, lam=spec.lam, reduce=spec.reduce)
        ctx.spec = spec
        ctx.save_for_backward(x, w, b, y, nx, nw, rowstat, stats)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        x, w, b, y, nx, nw, rowstat, stats = ctx.saved_tensors
        s = ctx.spec
        need_x, need_w, need_b = ctx.needs_input_grad[1:4]
        dx, dw, db = K.backward(grad, x, w, b, y, nx, nw, rowstat, stats, norm_x=s.norm_x, norm_w=s.norm_w,
                                scale=s.scale, ignore_index=s.ignore_index, eps_smooth=s.eps_smooth,
                                reduce=s.reduce, need_x=need_x, need_w=need_w or need_b)
        return None, dx if need_x else None, dw if need_w else None, db if need_b else None, None


def _check(names, x, w, labels, bias, reduction, ignore_index, num_classes=None):
    """Validate (x [B, D], w [C, D], labels [B], bias [C] or None); return int64 labels.
    `num_classes`: the label range when w holds a shard of the classes (C may then be 0)."""
    xn, wn, yn = names
    _validate.reduction(reduction)
    _validate.integer("ignore_index", ignore_index)
    _validate.floating(xn, x)
    _validate.floating(wn, w)
    _validate.same_device(**{xn: x, wn: w})
    if x.dim() != 2:
        raise ValueError(f"{xn}: expected a 2-D tensor [B, D], got shape {tuple(x.shape)}")
    if w.dim() != 2 or w.shape[1] != x.shape[1] or (num_classes is None and w.shape[0] == 0):
        at_least = "" if num_classes is not None else " with C >= 1"
        raise ValueError(f"{wn}: expected a 2-D tensor [C, {x.shape[1]}]{at_least}, got shape {tuple(w.shape)}")
    if x.shape[1] == 0:
        raise ValueError(f"{xn}: expected at least one feature, got shape {tuple(x.shape)}")
    if w.dtype != x.dtype:
        raise TypeError(f"{wn}: expected dtype {x.dtype} like {xn}, got {w.dtype}")
    if bias is not None:
        _validate.floating("bias", bias)
        _validate.same_device(**{xn: x, "bias": bias})
        if tuple(bias.shape) != (w.shape[0],):
            raise ValueError(f"bias: expected shape ({w.shape[0]},), got {tuple(bias.shape)}")
        if bias.dtype != x.dtype:
            raise TypeError(f"bias: expected dtype {x.dtype} like {xn}, got {bias.dtype}")
    y = _validate.labels(yn, labels, (x.shape[0],), x)
    _validate.labels_in_range(yn, y, w.shape[0] if num_classes is None else num_classes, ignore_index)
    return y


def _run(spec_args, names, x, w, labels, bias, reduction, ignore_index, eager):
    y = _check(names, x, w, labels, bias, reduction, ignore_index)
    if not _runtime.use_kernels(x, w, bias) or x.shape[0] == 0:
        return eager()
    spec = _Spec(norm_x=spec_args.pop("norm_x"), norm_w=spec_args.pop("norm_w"), ignore_index=int(ignore_index),
                 reduce=_REDUCE[reduction], **spec_args)
    xc, wc = x.contiguous(), w.contiguous()
    bc = bias.contiguous() if bias is not None else None
    with _runtime.on_device(xc):
        return _runtime.untraced(_MarginCE.apply, spec, xc, wc, bc, y)


_EMB = ("embeddings", "weight", "labels")


def margin_cross_entropy(embeddings: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, *,
                         scale: float = 64.0, m1: float = 1.0, m2: float = 0.0, m3: float = 0.0,
                         easy_margin: bool = False, margin_grad: str = "exact", ignore_index: int = -100,
                         reduction: str = "mean") -> torch.Tensor:
    """insightface's combined margin softmax: with c_ij = cos(x_i, W_j) (both normalised),
    logits s c_ij for j != y_i and s (cos(m1 theta + m2) - m3) for the target, theta = acos c.

    Past m1 theta + m2 > pi the target continues as s (c - (1 + m3 + cos theta_max)),
    theta_max = (pi - m2) / m1: continuous and decreasing (insightface's own formula turns
    back up there). `easy_margin` keeps s c for targets with c <= 0.
    `margin_grad`: "exact" is the derivative of this function, with the singular factor
    m1 sin(m1 theta + m2) / sin(theta) of d cos(m1 theta + m2) / dc evaluated at theta
    clamped to [1e-3, pi - 1e-3] (finite at c = +-1; below 1e-3 rad fp32 cannot resolve
    theta from c anyway); "detached" treats the margin offset as a constant (derivative of
    s c at the target), as insightface's CombinedMarginLoss since 2022.
    Unlike insightface the cosines are not clamped to [-1, 1] in the gradient."""
    opts = combined_options(scale, m1, m2, m3, easy_margin, margin_grad)
    return _run(combined_spec(opts), _EMB, embeddings, weight, labels, None, reduction, ignore_index,
                lambda: ref.margin_cross_entropy(embeddings, weight, labels, **opts, ignore_index=ignore_index,
                                                 reduction=reduction))


def combined_options(scale, m1, m2, m3, easy_margin, margin_grad) -> dict:
    """The validated combined-margin options, as the reference takes them."""
    scale = _validate.number("scale", scale, low=0.0, low_open=True)
    m1 = _validate.number("m1", m1, low=0.0, low_open=True)
    m2 = _validate.number("m2", m2, low=0.0)
    if m2 >= math.pi:
        raise ValueError(f"m2: expected a number in [0, pi), got {m2}")
    return dict(scale=scale, m1=m1, m2=m2, m3=_validate.number("m3", m3),
                easy_margin=_validate.flag("easy_margin", easy_margin),
                margin_grad=_validate.choice("margin_grad", margin_grad, ("exact", "detached")))


def combined_spec(opts: dict) -> dict:
    """`combined_options` as the kernels take them."""
    return dict(kind=K.COMBINED, norm_x=True, norm_w=True, scale=opts["scale"], m1=opts["m1"], m2=opts["m2"],
                m3=opts["m3"], easy=opts["easy_margin"], detached=opts["margin_grad"] == "detached")


def arcface_loss(embeddings: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, *, scale: float = 64.0,
                 margin: float = 0.5, easy_margin: bool = False, margin_grad: str = "exact",
                 ignore_index: int = -100, reduction: str = "mean") -> torch.Tensor:
    """ArcFace (additive angular margin): `margin_cross_entropy` with m2 = margin."""
    return margin_cross_entropy(embeddings, weight, labels, scale=scale, m2=margin, easy_margin=easy_margin,
                                margin_grad=margin_grad, ignore_index=ignore_index, reduction=reduction)


def cosface_loss(embeddings: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, *, scale: float = 64.0,
                 margin: float = 0.35, ignore_index: int = -100, reduction: str = "mean") -> torch.Tensor:
    """CosFace / AM-Softmax / LMCL (additive cosine margin): target s (c - margin);
    `margin_cross_entropy` with m3 = margin (the margin is a constant: both gradient modes agree)."""
    return margin_cross_entropy(embeddings, weight, labels, scale=scale, m3=margin, ignore_index=ignore_index,
                                reduction=reduction)


def _cosine(x, w, labels, scale, names, ignore_index, reduction, eager):
    return _run(dict(kind=K.PLAIN, norm_x=True, norm_w=True, scale=scale), names, x, w, labels, None,
                reduction, ignore_index, eager)


def normface_loss(embeddings: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, *, scale: float = 30.0,
                  ignore_index: int = -100, reduction: str = "mean") -> torch.Tensor:
    """NormFace: cross-entropy of s cos(x_i, W_j), no margin."""
    scale = _validate.number("scale", scale, low=0.0, low_open=True)
    return _cosine(embeddings, weight, labels, scale, _EMB, ignore_index, reduction,
                   lambda: ref.normface_loss(embeddings, weight, labels, scale=scale, ignore_index=ignore_index,
                                             reduction=reduction))


def coco_loss(features: torch.Tensor, centers: torch.Tensor, labels: torch.Tensor, *, alpha: float = 6.25,
              ignore_index: int = -100, reduction: str = "mean") -> torch.Tensor:
    """COCO (congenerous cosine, Liu et al. 2017): cross-entropy of alpha cos(f_i, c_j),
    features and centers normalised."""
    alpha = _validate.number("alpha", alpha, low=0.0, low_open=True)
    return _cosine(features, centers, labels, alpha, ("features", "centers", "labels"), ignore_index, reduction,
                   lambda: ref.coco_loss(features, centers, labels, alpha=alpha, ignore_index=ignore_index,
                                         reduction=reduction))


def l2_softmax_loss(embeddings: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
                    bias: torch.Tensor | None = None, *, alpha: float = 50.0, ignore_index: int = -100,
                    reduction: str = "mean") -> torch.Tensor:
    """L2-constrained softmax (Ranjan et al. 2017): cross-entropy of
    F.linear(alpha x / |x|, W, bias); the weight is not normalised."""
    alpha = _validate.number("alpha", alpha, low=0.0, low_open=True)
    return _run(dict(kind=K.PLAIN, norm_x=True, norm_w=False, scale=alpha), _EMB, embeddings, weight, labels,
                bias, reduction, ignore_index,
                lambda: ref.l2_softmax_loss(embeddings, weight, labels, bias, alpha=alpha,
                                            ignore_index=ignore_index, reduction=reduction))


def linear_cross_entropy(input: torch.Tensor, weight: torch.Tensor, target: torch.Tensor,
                         bias: torch.Tensor | None = None, *, ignore_index: int = -100, reduction: str = "mean",
                         label_smoothing: float = 0.0) -> torch.Tensor:
    """F.cross_entropy(F.linear(input, weight, bias), target, ...) without the logits
    (torch's `linear_cross_entropy`, Cut Cross-Entropy); label smoothing as torch."""
    eps = _validate.number("label_smoothing", label_smoothing, low=0.0, high=1.0)
    return _run(dict(kind=K.PLAIN, norm_x=False, norm_w=False, scale=1.0, eps_smooth=eps),
                ("input", "weight", "target"), input, weight, target, bias, reduction, ignore_index,
                lambda: ref.linear_cross_entropy(input, weight, target, bias, ignore_index=ignore_index,
                                                 reduction=reduction, label_smoothing=eps))


def _sphere(names, x, w, labels, margin, lambda_, norm_w, ignore_index, reduction, eager):
    m = _validate.integer("margin", margin)
    if m < 1:
        raise ValueError(f"margin: expected an integer >= 1, got {m}")
    lam = _validate.number("lambda_", lambda_, low=0.0)
    return _run(dict(kind=K.SPHERE, norm_x=False, norm_w=norm_w, scale=1.0, mi=m, lam=lam), names, x, w,
                labels, None, reduction, ignore_index, lambda: eager(m, lam))


def sphereface_loss(embeddings: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, *, margin: int = 4,
                    lambda_: float = 0.0, ignore_index: int = -100, reduction: str = "mean") -> torch.Tensor:
    """SphereFace / A-Softmax (Liu et al. 2017): weight rows normalised, embeddings not;
    logits |x| cos(theta_j), target |x| (lambda cos theta + psi(theta)) / (1 + lambda),
    psi = (-1)^k cos(m theta) - 2k for theta in [k pi/m, (k+1) pi/m], integer m >= 1.
    psi is computed without acos: cos(m theta) = T_m(c) (Chebyshev), k by comparing c with
    cos(j pi / m); its derivative (-1)^k m U_{m-1}(c) is finite everywhere."""
    return _sphere(_EMB, embeddings, weight, labels, margin, lambda_, True, ignore_index, reduction,
                   lambda m, lam: ref.sphereface_loss(embeddings, weight, labels, margin=m, lambda_=lam,
                                                      ignore_index=ignore_index, reduction=reduction))


def large_margin_softmax_loss(input: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, *, margin: int = 2,
                              lambda_: float = 0.0, ignore_index: int = -100,
                              reduction: str = "mean") -> torch.Tensor:
    """L-Softmax (Liu et al. 2016): nothing normalised; logits x . W_j, target
    |W_y| |x| (lambda cos theta + psi(theta)) / (1 + lambda) with psi as in
    `sphereface_loss`; any integer margin >= 1 (1 with lambda 0 is plain softmax)."""
    return _sphere(("input", "weight", "labels"), input, weight, labels, margin, lambda_, False, ignore_index,
                   reduction,
                   lambda m, lam: ref.large_margin_softmax_loss(input, weight, labels, margin=m, lambda_=lam,
                                                                ignore_index=ignore_index, reduction=reduction))


# ---------------------------------------------------------------------------- modules

class _Head(torch.nn.Module):
    """A classifier head owning weight [num_classes, in_features] (normal, std 0.01, as insightface)."""

    def __init__(self, in_features: int, num_classes: int):
        super().__init__()
        self.in_features, self.num_classes = in_features, num_classes
        self.weight = torch.nn.Parameter(torch.normal(0.0, 0.01, (num_classes, in_features)))


class CombinedMarginLoss(_Head):
    def __init__(self, in_features: int, num_classes: int, *, scale: float = 64.0, m1: float = 1.0,
                 m2: float = 0.0, m3: float = 0.0, easy_margin: bool = False, margin_grad: str = "exact",
                 ignore_index: int = -100, reduction: str = "mean"):
        super().__init__(in_features, num_classes)
        self.options = dict(scale=scale, m1=m1, m2=m2, m3=m3, easy_margin=easy_margin, margin_grad=margin_grad,
                            ignore_index=ignore_index, reduction=reduction)

    def forward(self, embeddings, labels):
        return margin_cross_entropy(embeddings, self.weight, labels, **self.options)


class ArcFace(_Head):
    def __init__(self, in_features: int, num_classes: int, *, scale: float = 64.0, margin: float = 0.5,
                 easy_margin: bool = False, margin_grad: str = "exact", ignore_index: int = -100,
                 reduction: str = "mean"):
        super().__init__(in_features, num_classes)
        self.options = dict(scale=scale, margin=margin, easy_margin=easy_margin, margin_grad=margin_grad,
                            ignore_index=ignore_index, reduction=reduction)

    def forward(self, embeddings, labels):
        return arcface_loss(embeddings, self.weight, labels, **self.options)


class CosFace(_Head):
    def __init__(self, in_features: int, num_classes: int, *, scale: float = 64.0, margin: float = 0.35,
                 ignore_index: int = -100, reduction: str = "mean"):
        super().__init__(in_features, num_classes)
        self.options = dict(scale=scale, margin=margin, ignore_index=ignore_index, reduction=reduction)

    def forward(self, embeddings, labels):
        return cosface_loss(embeddings, self.weight, labels, **self.options)


class NormFace(_Head):
    def __init__(self, in_features: int, num_classes: int, *, scale: float = 30.0, ignore_index: int = -100,
                 reduction: str = "mean"):
        super().__init__(in_features, num_classes)
        self.options = dict(scale=scale, ignore_index=ignore_index, reduction=reduction)

    def forward(self, embeddings, labels):
        return normface_loss(embeddings, self.weight, labels, **self.options)


class COCOLoss(_Head):
    """Holds the class centers as `weight` [num_classes, in_features]."""

    def __init__(self, in_features: int, num_classes: int, alpha: float = 6.25, *, ignore_index: int = -100,
                 reduction: str = "mean"):
        super().__init__(in_features, num_classes)
        self.options = dict(alpha=alpha, ignore_index=ignore_index, reduction=reduction)

    def forward(self, features, labels):
        return coco_loss(features, self.weight, labels, **self.options)


class L2Softmax(_Head):
    """`bias=True` adds a bias Parameter [num_classes] (zeros)."""

    def __init__(self, in_features: int, num_classes: int, *, alpha: float = 50.0, bias: bool = False,
                 ignore_index: int = -100, reduction: str = "mean"):
        super().__init__(in_features, num_classes)
        self.bias = torch.nn.Parameter(torch.zeros(num_classes)) if bias else None
        self.options = dict(alpha=alpha, ignore_index=ignore_index, reduction=reduction)

    def forward(self, embeddings, labels):
        return l2_softmax_loss(embeddings, self.weight, labels, self.bias, **self.options)


class LinearCrossEntropy(_Head):
    """`bias=True` adds a bias Parameter [num_classes] (zeros)."""

    def __init__(self, in_features: int, num_classes: int, *, bias: bool = False, ignore_index: int = -100,
                 reduction: str = "mean", label_smoothing: float = 0.0):
        super().__init__(in_features, num_classes)
        self.bias = torch.nn.Parameter(torch.zeros(num_classes)) if bias else None
        self.options = dict(ignore_index=ignore_index, reduction=reduction, label_smoothing=label_smoothing)

    def forward(self, input, target):
        return linear_cross_entropy(input, self.weight, target, self.bias, **self.options)


class _Annealed(_Head):
    """lambda = max(lambda_min, base (1 + gamma iteration)^-power); `iteration` (a Python
    int, kept in the state dict as extra state: no device sync) counts the forward calls
    made in training mode; eval mode uses the current lambda without advancing."""

    def __init__(self, in_features, num_classes, margin, base, gamma, power, lambda_min, ignore_index, reduction):
        super().__init__(in_features, num_classes)
        self.margin, self.base, self.gamma, self.power, self.lambda_min = margin, base, gamma, power, lambda_min
        self.ignore_index, self.reduction = ignore_index, reduction
        self.iteration = 0

    @property
    def lambda_(self) -> float:
        return max(self.lambda_min, self.base * (1.0 + self.gamma * self.iteration) ** -self.power)

    def get_extra_state(self):
        return {"iteration": self.iteration}

    def set_extra_state(self, state):
        self.iteration = int(state["iteration"])

    def _options(self):
        lam = self.lambda_
        if self.training:
            self.iteration += 1
        return dict(margin=self.margin, lambda_=lam, ignore_index=self.ignore_index, reduction=self.reduction)


class SphereFace(_Annealed):
    def __init__(self, in_features: int, num_classes: int, *, margin: int = 4, base: float = 1000.0,
                 gamma: float = 0.12, power: float = 1.0, lambda_min: float = 5.0, ignore_index: int = -100,
                 reduction: str = "mean"):
        super().__init__(in_features, num_classes, margin, base, gamma, power, lambda_min, ignore_index, reduction)

    def forward(self, embeddings, labels):
        return sphereface_loss(embeddings, self.weight, labels, **self._options())


class LargeMarginSoftmax(_Annealed):
    def __init__(self, in_features: int, num_classes: int, *, margin: int = 2, base: float = 1000.0,
                 gamma: float = 0.12, power: float = 1.0, lambda_min: float = 0.0, ignore_index: int = -100,
                 reduction: str = "mean"):
        super().__init__(in_features, num_classes, margin, base, gamma, power, lambda_min, ignore_index, reduction)

    def forward(self, input, labels):
        return large_margin_softmax_loss(input, self.weight, labels, **self._options())
