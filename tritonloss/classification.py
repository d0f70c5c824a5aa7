"""Classification losses: argument checks, path choice and the autograd wrappers.

Softmax losses (cross_entropy, nll_loss, softmax_focal_loss, mean_variance_loss) take
input [C], [N, C] or [N, C, d1, ...] with class labels shaped like the input without its
class dimension. Labels are never trusted for addresses: an out-of-range label (not
ignore_index) gives its row NaN, or a ValueError naming its position with
`tritonloss.set_checks(True)`. Normalisers (summed weights, non-ignored counts) stay on the
device. The loss has the dtype of `input` and each gradient the dtype of its tensor.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as TF

from . import _elementwise, _runtime, _validate
from .kernels import classification as K
from .reference import classification as ref

_REDUCE = _elementwise.REDUCE


# ---------------------------------------------------------------------------------------
# row losses


class _RowSpec(NamedTuple):
    forward: object  # kernel Space
    backward: object
    C: int
    S: int
    scalars: tuple
    flags: dict
    reduce: int
    count: int | None


class _Rows(torch.autograd.Function):
    @staticmethod
    def forward(ctx, spec, x, t, w):
        out, stats, red = K.row_forward(spec.forward, x, t, w, spec.reduce, spec.C, spec.S, spec.scalars,
                                        spec.flags, spec.count)
        ctx.spec = spec
        ctx.save_for_backward(x, t, w, stats, red)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        x, t, w, stats, red = ctx.saved_tensors
        s = ctx.spec
        need_t = bool(ctx.needs_input_grad[2])
        dx, dt = K.row_backward(s.backward, x, t, w, grad.contiguous(), red, stats, s.reduce, s.C, s.S,
                                s.scalars, s.flags, need_t)
        return None, dx, dt, None


def _layout(input: torch.Tensor, target) -> tuple[int, int, int]:
    """(N, C, S) of input [C], [N, C] or [N, C, d1, ...]; S = d1 * ... (1 without).
    Also checks that target is a tensor on input's device."""
    _validate.floating("input", input)
    if not isinstance(target, torch.Tensor):
        raise TypeError(f"target: expected a torch.Tensor, got {type(target).__name__}")
    _validate.same_device(input=input, target=target)
    if input.dim() == 0:
        raise ValueError("input: expected shape [C], [N, C] or [N, C, d1, ...], got a 0-dim tensor")
    if input.dim() == 1:
        n, c, s = 1, input.shape[0], 1
    else:
        n, c = input.shape[:2]
        s = input.shape[2:].numel()
    if c == 0:
        raise ValueError(f"input: expected at least one class, got shape {tuple(input.shape)}")
    return n, c, s


def _label_shape(input: torch.Tensor) -> tuple:
    return () if input.dim() == 1 else (input.shape[0], *input.shape[2:])


def _rows(loss, reduction, input, t, w, C, S, scalars, *, ignore, has_norm, count=None,
          space=(K.SOFTMAX_FORWARD_SPACE, K.SOFTMAX_BACKWARD_SPACE), out_shape=None):
    flags = dict(LOSS=loss, HAS_IGNORE=ignore, HAS_NORM=has_norm)
    spec = _RowSpec(space[0], space[1], C, S, tuple(scalars), flags, _REDUCE[reduction], count)
    x = input.contiguous()
    with _runtime.on_device(x):
        out = _runtime.untraced(_Rows.apply, spec, x, t, w)
    if reduction == "none":
        out = out.reshape(out_shape if out_shape is not None else _label_shape(input))
    return out


def _index_target(name, input, target, C, ignore_index=None):
    t = _validate.labels(name, target, _label_shape(input), input)
    _validate.labels_in_range(name, t, C, ignore_index)
    return t


def cross_entropy(input: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None,
                  ignore_index: int = -100, reduction: str = "mean",
                  label_smoothing: float = 0.0) -> torch.Tensor:
    """-sum_c u_c log softmax(input)_c per row; anchor torch `F.cross_entropy`, exactly.

    Class-index targets: u = (1 - eps) w_t [c = t] + eps w_c / C, and "mean" divides by the
    summed w_t of non-ignored rows (NaN if every row is ignored). Probability targets
    (floating, shaped like input): u = w_c ((1 - eps) t_c + eps / C), "mean" divides by the
    number of rows, and the target is differentiated as in torch. Any C: rows longer than
    one block run an online max / sum over the classes."""
    _validate.reduction(reduction)
    N, C, S = _layout(input, target)
    ignore_index = _validate.integer("ignore_index", ignore_index)
    eps = _validate.number("label_smoothing", label_smoothing, low=0.0, high=1.0)
    w = _validate.class_weight("weight", weight, C, input)
    soft = isinstance(target, torch.Tensor) and target.is_floating_point()
    if soft:
        _validate.same_device(input=input, target=target)
        if target.shape != input.shape:
            raise ValueError(f"target: expected probabilities of input's shape {tuple(input.shape)}, "
                             f"got {tuple(target.shape)}")
    if not _runtime.use_kernels(input, target if soft else None, w):
        return TF.cross_entropy(input, target, weight, ignore_index=ignore_index, reduction=reduction,
                                label_smoothing=eps)
    if soft:
        return _rows(K.CE_PROB, reduction, input, target.contiguous(), w, C, S, (0, eps, 0.0, 0.0, 0.0),
                     ignore=False, has_norm=False)
    t = _index_target("target", input, target, C, ignore_index)
    return _rows(K.CE, reduction, input, t, w, C, S, (ignore_index, eps, 0.0, 0.0, 0.0),
                 ignore=True, has_norm=True)


def nll_loss(input: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None,
             ignore_index: int = -100, reduction: str = "mean") -> torch.Tensor:
    """-w_t input_t per row (input holds log-probabilities); anchor torch `F.nll_loss`:
    "mean" divides by the summed w_t of non-ignored rows."""
    _validate.reduction(reduction)
    N, C, S = _layout(input, target)
    ignore_index = _validate.integer("ignore_index", ignore_index)
    w = _validate.class_weight("weight", weight, C, input)
    if not _runtime.use_kernels(input, w):
        return TF.nll_loss(input, target, weight, ignore_index=ignore_index, reduction=reduction)
    t = _index_target("target", input, target, C, ignore_index)
    return _rows(K.NLL, reduction, input, t, w, C, S, (ignore_index, 0.0, 0.0, 0.0, 0.0),
                 ignore=True, has_norm=True)


def softmax_focal_loss(input: torch.Tensor, target: torch.Tensor, alpha: float | torch.Tensor | None = None,
                       gamma: float = 2.0, ignore_index: int = -100, reduction: str = "mean") -> torch.Tensor:
    """-alpha_t (1 - p_t)^gamma log p_t, p_t = softmax(input)_t; alpha None (1), a float for
    every class or a [C] tensor; "mean" over non-ignored positions. Input layout as
    `cross_entropy`. The gradient is finite at p_t = 1 for every gamma >= 0."""
    _validate.reduction(reduction)
    N, C, S = _layout(input, target)
    ignore_index = _validate.integer("ignore_index", ignore_index)
    gamma = _validate.number("gamma", gamma, low=0.0)
    if isinstance(alpha, torch.Tensor):
        a, a_val = _validate.class_weight("alpha", alpha, C, input), 1.0
    else:
        a, a_val = None, 1.0 if alpha is None else _validate.number("alpha", alpha, low=0.0)
    if not _runtime.use_kernels(input, a):
        return ref.softmax_focal_loss(input, target, alpha, gamma, ignore_index, reduction)
    t = _index_target("target", input, target, C, ignore_index)
    return _rows(K.SOFTMAX_FOCAL, reduction, input, t, a, C, S, (ignore_index, 0.0, a_val, gamma, 0.0),
                 ignore=True, has_norm=True)


def mean_variance_loss(input: torch.Tensor, target: torch.Tensor, lambda_mean: float = 0.2,
                       lambda_var: float = 0.05, start_age: int = 0, include_cross_entropy: bool = True,
                       reduction: str = "mean") -> torch.Tensor:
    """Mean-variance loss (Pan et al. 2018) over p = softmax(input) [N, C] and the ages
    a_c = start_age + c: CE + lambda_mean / 2 (m - y)^2 + lambda_var v per row, with
    m = sum p a, v = sum p (a - m)^2 and y = target, the integer age (its class is
    y - start_age; outside [0, C) the row is NaN). "mean" averages the rows."""
    _validate.reduction(reduction)
    if not isinstance(input, torch.Tensor) or input.dim() != 2:
        raise ValueError(f"input: expected shape [N, C], got {getattr(input, 'shape', type(input).__name__)}")
    N, C, S = _layout(input, target)
    lambda_mean = _validate.number("lambda_mean", lambda_mean, low=0.0)
    lambda_var = _validate.number("lambda_var", lambda_var, low=0.0)
    start_age = _validate.integer("start_age", start_age)
    _validate.flag("include_cross_entropy", include_cross_entropy)
    if not _runtime.use_kernels(input):
        return ref.mean_variance_loss(input, target, lambda_mean, lambda_var, start_age,
                                      include_cross_entropy, reduction)
    t = _validate.labels("target", target, (N,), input) - start_age
    _validate.labels_in_range("target - start_age", t, C)
    scalars = (0, 0.0, lambda_mean, lambda_var, float(include_cross_entropy))
    return _rows(K.MEAN_VAR, reduction, input, t, None, C, S, scalars, ignore=False, has_norm=False)


def multi_margin_loss(input: torch.Tensor, target: torch.Tensor, p: int = 1, margin: float = 1.0,
                      weight: torch.Tensor | None = None, reduction: str = "mean") -> torch.Tensor:
    """w_t / C sum_{j != t} max(0, margin - x_t + x_j)^p per row, p in {1, 2}; anchor torch
    `F.multi_margin_loss` (input [C] or [N, C])."""
    _validate.reduction(reduction)
    if isinstance(input, torch.Tensor) and input.dim() > 2:
        raise ValueError(f"input: expected shape [C] or [N, C], got {tuple(input.shape)}")
    N, C, S = _layout(input, target)
    if isinstance(p, bool) or p not in (1, 2):
        raise ValueError(f"p: expected 1 or 2, got {p!r}")
    margin = _validate.number("margin", margin)
    w = _validate.class_weight("weight", weight, C, input)
    if not _runtime.use_kernels(input, w):
        return TF.multi_margin_loss(input, target, p, margin, weight, reduction=reduction)
    t = _index_target("target", input, target, C)
    return _rows(K.MULTI_MARGIN, reduction, input, t, w, C, 1, (margin, p), ignore=False, has_norm=False,
                 space=(K.MARGIN_FORWARD_SPACE, K.MARGIN_BACKWARD_SPACE))


def multilabel_soft_margin_loss(input: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None,
                                reduction: str = "mean") -> torch.Tensor:
    """1/C sum_c w_c (-y log sigmoid(x) - (1 - y) log sigmoid(-x)) per row; anchor torch
    `F.multilabel_soft_margin_loss` (input [C] or [N, C]; the target is differentiated)."""
    _validate.reduction(reduction)
    if isinstance(input, torch.Tensor) and input.dim() > 2:
        raise ValueError(f"input: expected shape [C] or [N, C], got {tuple(input.shape)}")
    N, C, S = _layout(input, target)
    _validate.floating("target", target)
    _validate.same_device(input=input, target=target)
    if target.shape != input.shape:
        raise ValueError(f"target: expected input's shape {tuple(input.shape)}, got {tuple(target.shape)}")
    w = _validate.class_weight("weight", weight, C, input)
    if not _runtime.use_kernels(input, target, w):
        return TF.multilabel_soft_margin_loss(input, target, weight, reduction=reduction)
    return _rows(K.MULTILABEL_SOFT_MARGIN, reduction, input, target.contiguous(), w, C, 1, (0.0, 1),
                 ignore=False, has_norm=False, space=(K.MARGIN_FORWARD_SPACE, K.MARGIN_BACKWARD_SPACE))


class _MultilabelMargin(torch.autograd.Function):
    @staticmethod
    def forward(ctx, reduce, x, t):
        out, is_t, cnt, red = K.multilabel_margin_forward(x, t, reduce)
        ctx.reduce = reduce
        ctx.save_for_backward(x, t, is_t, cnt, red)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        x, t, is_t, cnt, red = ctx.saved_tensors
        return None, K.multilabel_margin_backward(x, t, is_t, cnt, grad.contiguous(), red, ctx.reduce), None


def multilabel_margin_loss(input: torch.Tensor, target: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """1/C sum_{j in T} sum_{k not in T} max(0, 1 - (x_j - x_k)) per row, T = the labels of
    `target` before its first negative entry; anchor torch `F.multilabel_margin_loss`
    (input [C] or [N, C], target of input's shape). A label >= C before the first negative
    one makes the row NaN (torch raises)."""
    _validate.reduction(reduction)
    if isinstance(input, torch.Tensor) and input.dim() > 2:
        raise ValueError(f"input: expected shape [C] or [N, C], got {tuple(input.shape)}")
    N, C, S = _layout(input, target)
    if not _runtime.use_kernels(input):
        return TF.multilabel_margin_loss(input, target, reduction=reduction)
    t = _validate.labels("target", target, tuple(input.shape), input)
    if _runtime.checks_enabled():  # the labels read: those before each row's first negative one
        read = (t < 0).cumsum(-1) == 0
        _validate.labels_in_range("target", torch.where(read, t, 0), C)
    x = input.contiguous().reshape(-1, C)
    with _runtime.on_device(x):
        out = _runtime.untraced(_MultilabelMargin.apply, _REDUCE[reduction], x, t.reshape(-1, C))
    return out.reshape(()) if reduction == "none" and input.dim() == 1 else out


# ---------------------------------------------------------------------------------------
# elementwise losses


def _pair(input, target, *, same_shape=False):
    _validate.floating("input", input)
    _validate.floating("target", target)
    _validate.same_device(input=input, target=target)
    if same_shape and target.shape != input.shape:
        raise ValueError(f"target: expected input's shape {tuple(input.shape)}, got {tuple(target.shape)}")
    return _validate.broadcast(input=input, target=target)


def binary_cross_entropy(input: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None,
                         reduction: str = "mean") -> torch.Tensor:
    """-w (y log x + (1 - y) log(1 - x)), logs clamped at -100; anchor torch
    `F.binary_cross_entropy` ("mean" divides by the element count, as torch)."""
    _validate.reduction(reduction)
    shape = _pair(input, target, same_shape=True)
    w = _validate.weight(weight, shape, input)
    if _runtime.may_inspect(input) and input.numel() and not bool(((input >= 0) & (input <= 1)).all()):
        raise ValueError("input: expected probabilities in [0, 1], got values outside")
    if not _runtime.use_kernels(input, target, w):
        return TF.binary_cross_entropy(input, target, weight, reduction=reduction)
    return _elementwise.apply(K, K.BCE, reduction, shape, input, target, w=w, count=input.numel())


def binary_cross_entropy_with_logits(input: torch.Tensor, target: torch.Tensor,
                                     weight: torch.Tensor | None = None, reduction: str = "mean",
                                     pos_weight: torch.Tensor | None = None) -> torch.Tensor:
    """w ((1 - y) x + (1 + (pos_weight - 1) y) softplus(-x)); anchor torch
    `F.binary_cross_entropy_with_logits` ("mean" divides by the element count). Unlike
    torch, pos_weight is not differentiated."""
    _validate.reduction(reduction)
    shape = _pair(input, target, same_shape=True)
    w = _validate.weight(weight, shape, input)
    z = q = None
    if pos_weight is not None:
        _validate.floating("pos_weight", pos_weight)
        _validate.same_device(input=input, pos_weight=pos_weight)
        try:
            ok = torch.broadcast_shapes(pos_weight.shape, shape) == shape
        except RuntimeError:
            ok = False
        if not ok:
            raise ValueError(f"pos_weight: expected a shape broadcastable to {tuple(shape)}, "
                             f"got {tuple(pos_weight.shape)}")
        if pos_weight.dim() <= 1:
            q = pos_weight.reshape(-1)  # along the last dimension
        else:
            z = pos_weight.detach()
    if not _runtime.use_kernels(input, target, w, pos_weight):
        return TF.binary_cross_entropy_with_logits(input, target, weight, reduction=reduction,
                                                   pos_weight=pos_weight)
    return _elementwise.apply(K, K.BCE_LOGITS, reduction, shape, input, target, z, w, q, params=(1.0,),
                              opt=K.POS_WEIGHT_IN_Z if z is not None else 0, count=input.numel())


def balanced_binary_cross_entropy_with_logits(input: torch.Tensor, target: torch.Tensor,
                                              reduction: str = "mean") -> torch.Tensor:
    """HED's class-balanced BCE: -(beta y log sigmoid(x) + (1 - beta)(1 - y) log sigmoid(-x))
    with beta = negatives / elements per sample (dim 0), negatives = sum(1 - y) (the count
    of zeros for binary targets). beta is computed on the device and held constant: the
    target gradient treats it as such."""
    _validate.reduction(reduction)
    shape = _pair(input, target, same_shape=True)
    if input.dim() == 0:
        raise ValueError("input: expected a batch dimension (dim 0), got a 0-dim tensor")
    if not _runtime.use_kernels(input, target):
        return ref.balanced_binary_cross_entropy_with_logits(input, target, reduction)
    per = input.shape[1:].numel()
    beta = 1.0 - target.detach().reshape(input.shape[0], per).sum(1, dtype=torch.float32) / max(per, 1)
    return _elementwise.apply(K, K.BALANCED_BCE, reduction, shape, input, target, q=beta, q_div=max(per, 1))


def sigmoid_focal_loss(inputs: torch.Tensor, targets: torch.Tensor, alpha: float = 0.25, gamma: float = 2.0,
                       reduction: str = "none") -> torch.Tensor:
    """alpha_t (1 - p_t)^gamma BCE-with-logits; anchor torchvision `ops.sigmoid_focal_loss`
    (soft targets included, alpha < 0 disables alpha_t). Unlike torchvision the gradient
    stays finite for gamma < 1 at p_t = 1, where gamma (1 - p_t)^(gamma - 1) is taken as 0."""
    _validate.reduction(reduction)
    shape = _pair(inputs, targets)
    alpha = _validate.number("alpha", alpha, high=1.0)
    gamma = _validate.number("gamma", gamma, low=0.0)
    if not _runtime.use_kernels(inputs, targets):
        return ref.sigmoid_focal_loss(inputs, targets, alpha, gamma, reduction)
    return _elementwise.apply(K, K.SIGMOID_FOCAL, reduction, shape, inputs, targets, params=(alpha, gamma))


def kl_div(input: torch.Tensor, target: torch.Tensor, reduction: str = "mean",
           log_target: bool = False) -> torch.Tensor:
    """target (log target - input), or e^target (target - input) with log_target; anchor
    torch `F.kl_div`: "batchmean" divides the sum by input.size(0), "mean" by the count."""
    _validate.reduction(reduction, ("none", "mean", "sum", "batchmean"))
    _validate.flag("log_target", log_target)
    shape = _pair(input, target)
    if not _runtime.use_kernels(input, target):
        return TF.kl_div(input, target, reduction=reduction, log_target=log_target)
    count = None
    if reduction == "batchmean":
        reduction, count = ("mean", shape[0]) if len(shape) else ("sum", None)
    return _elementwise.apply(K, K.KL_DIV, reduction, shape, input, target,
                              opt=K.LOG_TARGET if log_target else 0, count=count)


def soft_margin_loss(input: torch.Tensor, target: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """softplus(-y x); anchor torch `F.soft_margin_loss`, whose values it equals; finite
    (loss and gradient) where torch's exp overflows. Not differentiable in target, as torch."""
    _validate.reduction(reduction)
    shape = _pair(input, target)
    if target.requires_grad:
        raise ValueError("target: soft_margin_loss is not differentiable with respect to target "
                         "(as torch); pass target.detach()")
    if not _runtime.use_kernels(input, target):
        return TF.soft_margin_loss(input, target, reduction=reduction)
    return _elementwise.apply(K, K.SOFT_MARGIN, reduction, shape, input, target)


def _signed(loss, reduction, input, target, params=(), eager=None):
    _validate.reduction(reduction)
    shape = _pair(input, target)
    if not _runtime.use_kernels(input, target):
        return eager()
    return _elementwise.apply(K, loss, reduction, shape, input, target, params=params)


def hinge_loss(input: torch.Tensor, target: torch.Tensor, margin: float = 1.0,
               reduction: str = "mean") -> torch.Tensor:
    """SVM hinge max(0, margin - y x), y in {-1, +1}; subgradient 0 at the kink."""
    margin = _validate.number("margin", margin)
    return _signed(K.HINGE, reduction, input, target, (margin,),
                   lambda: ref.hinge_loss(input, target, margin, reduction))


def perceptron_loss(input: torch.Tensor, target: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """max(0, -y x); subgradient 0 at 0."""
    return _signed(K.HINGE, reduction, input, target, (0.0,),
                   lambda: ref.perceptron_loss(input, target, reduction))


def exponential_loss(input: torch.Tensor, target: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """AdaBoost's exp(-y x)."""
    return _signed(K.EXPONENTIAL, reduction, input, target, (),
                   lambda: ref.exponential_loss(input, target, reduction))


# ---------------------------------------------------------------------------------------
# dense-detection ranking losses

DR_NEG_LAMBDA = 0.1 / 1.252762968495368  # 0.1 / ln 3.5: the DR paper's and official SigmoidDRLoss's default


def _detection_target(input: torch.Tensor, target) -> torch.Tensor:
    """Checks input [N, C] (C >= 1) and target [N] integer labels: 0 background, k in 1..C
    class k, -1 ignored. Returns target as contiguous int64. A label outside [-1, C] makes
    the loss NaN, or (checks on) raises a ValueError naming its position."""
    _validate.floating("input", input)
    if input.dim() != 2 or input.shape[1] == 0:
        raise ValueError(f"input: expected logits of shape [N, C] with C >= 1, got {tuple(input.shape)}")
    t = _validate.labels("target", target, (input.shape[0],), input)
    _validate.labels_in_range("target", t, input.shape[1] + 1, ignore_index=-1)
    return t


class _DR(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, t, margin, pos_lambda, neg_lambda, L, tau):
        out, stats = K.dr_forward(x, t, margin, pos_lambda, neg_lambda, L, tau)
        ctx.lambdas = (pos_lambda, neg_lambda)
        ctx.save_for_backward(x, t, stats)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        x, t, stats = ctx.saved_tensors
        return K.dr_backward(x, t, grad.contiguous(), stats, *ctx.lambdas), None, None, None, None, None, None


def dr_loss(input: torch.Tensor, target: torch.Tensor, margin: float = 0.5, pos_lambda: float = 1.0,
            neg_lambda: float = DR_NEG_LAMBDA, L: float = 6.0, tau: float = 4.0) -> torch.Tensor:
    """Distributional Ranking loss for dense detection (Qian et al., "DR Loss: Improving Object
    Detection by Distributional Ranking", CVPR 2020), 0-dim; defaults are the paper's and its
    official SigmoidDRLoss's: margin 0.5, pos_lambda 1, neg_lambda 0.1 / ln 3.5, L 6, tau 4.

    input [N, C] logits over N anchors, target [N]: 0 background, k in 1..C positive for
    class k, -1 ignored. Every (anchor, class) of a non-ignored anchor is a sample, positive
    when class == target, else negative. With p = sigmoid(input):
        q- = softmax(p- / neg_lambda) over the negatives,  P- = sum q- p-  (0 without negatives)
        q+ = softmax(-p+ / pos_lambda) over the positives, P+ = sum q+ p+  (1 without positives)
        loss = tau / L * log(1 + exp(L (P- - P+ + margin)))
    The gradient is exact: dP-/dp_j = q_j (1 + (p_j - P-) / neg_lambda), dP+/dp_i =
    q_i (1 - (p_i - P+) / pos_lambda). Kernels: per-block online-softmax partials merged on
    the device in a fixed order. Difference from the official code: log(1 + exp) is computed
    without overflow, and a label outside [-1, C] gives NaN (the official code counts it
    as background)."""
    margin = _validate.number("margin", margin)
    pos_lambda = _validate.number("pos_lambda", pos_lambda, low=0.0, low_open=True)
    neg_lambda = _validate.number("neg_lambda", neg_lambda, low=0.0, low_open=True)
    L = _validate.number("L", L, low=0.0, low_open=True)
    tau = _validate.number("tau", tau, low=0.0, low_open=True)
    t = _detection_target(input, target)
    if not _runtime.use_kernels(input):
        return ref.dr_loss(input, t, margin, pos_lambda, neg_lambda, L, tau)
    x = input.contiguous()
    with _runtime.on_device(x):
        return _runtime.untraced(_DR.apply, x, t, margin, pos_lambda, neg_lambda, L, tau)


class _AP(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, t, delta):
        out, saved = K.ap_forward(x, t, delta)
        ctx.delta = delta
        ctx.save_for_backward(x, t, *saved)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        x, t, *saved = ctx.saved_tensors
        return K.ap_backward(x, t, grad.contiguous(), saved, ctx.delta), None, None


def ap_loss(input: torch.Tensor, target: torch.Tensor, delta: float = 1.0) -> torch.Tensor:
    """AP-loss for dense detection (Chen et al., "Towards Accurate One-Stage Object Detection
    with AP-Loss", CVPR 2019), non-interpolated, 0-dim; delta = 1.0 as in the authors' code.

    input [N, C] logits (the scores s), target [N] as `dr_loss` (0 background, k in 1..C
    class k, -1 ignored; samples are the (anchor, class) pairs of non-ignored anchors). With
    H(x) = clamp(x / (2 delta) + 1/2, 0, 1), for each positive i and negative j:
        L_ij = H(s_j - s_i) / (1 + sum_{k in P u N, k != i} H(s_k - s_i))
        loss = 1/|P| sum_i sum_j L_ij = 1 - AP  (0, still attached to the graph, without positives)
    The backward is the paper's error-driven update, NOT the gradient of this loss:
        dL/ds_j = 1/|P| sum_i L_ij for negatives,  dL/ds_i = -1/|P| sum_j L_ij for positives,
    times grad_output. Kernels: positives are compacted on the device (count kept there),
    then tiled [positives x samples] passes reduce per positive (forward) and per sample
    (backward) in a fixed order, O(|P| N C) work. Difference from the paper's code: no
    interpolation of the precision (its max_prec), and no pruning of negatives below
    min_i s_i - delta (H is 0 there anyway); a label outside [-1, C] gives NaN."""
    delta = _validate.number("delta", delta, low=0.0, low_open=True)
    t = _detection_target(input, target)
    if not _runtime.use_kernels(input):
        return ref.ap_loss(input, t, delta)
    x = input.contiguous()
    with _runtime.on_device(x):
        return _runtime.untraced(_AP.apply, x, t, delta)
