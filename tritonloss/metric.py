"""Metric-learning losses: argument checks, path choice and the autograd wrappers.

Embeddings are [B, D] rows; labels are 1-D integer tensors of B entries. The loss has the
dtype of the embeddings and every accumulator is fp32. float64 inputs, and CPU tensors
without Triton's interpreter, take the eager reference (tritonloss/reference/metric.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from . import _elementwise, _runtime, _validate
from .kernels import metric as K
from .reference import metric as ref

_REDUCE = {"none": K.NONE, "sum": K.SUM, "mean": K.MEAN}
_DISTANCES = {"euclidean": K.EUCLID, "squared": K.SQUARED, "cosine": K.COSINE}
_MINING = ("batch_hard", "batch_all")


def _choice(name: str, value, allowed) -> str:
    if not isinstance(value, str) or value not in allowed:
        raise ValueError(f"{name}: expected one of {', '.join(map(repr, allowed))}, got {value!r}")
    return value


def _embeddings(name: str, t) -> torch.Tensor:
    _validate.floating(name, t)
    if t.dim() != 2:
        raise ValueError(f"{name}: expected a 2-D tensor [B, D], got shape {tuple(t.shape)}")
    return t


def _labels(name: str, t, n: int | None, like: torch.Tensor, like_name: str = "embeddings") -> torch.Tensor:
    """A 1-D integer tensor (of n entries unless n is None) on `like`'s device."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise TypeError(f"{name}: expected an integer tensor, got dtype {t.dtype}")
    if t.dim() != 1 or (n is not None and t.shape[0] != n):
        count = "" if n is None else f" of {n} entries"
        raise ValueError(f"{name}: expected a 1-D tensor{count}, got shape {tuple(t.shape)}")
    _validate.same_device(**{like_name: like, name: t})
    return t


# --- triplet_loss with online mining -------------------------------------------------------

class _TripletMined(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, labels, margin, mining, metric, normed, soft, reduce):
        fwd = K.triplet_hard_forward if mining == "batch_hard" else K.triplet_all_forward
        part, saved = fwd(x, labels, margin, metric, normed, soft)
        B = x.shape[0]
        total, stats = K.finish_anchor_sum(part, B, reduce)
        if reduce == K.NONE:
            out = part[:B].to(x.dtype)
        elif reduce == K.SUM:
            out = total.to(x.dtype)
        else:
            out = (total / stats[0].clamp(min=1.0)).to(x.dtype)
        ctx.args = (mining, metric, normed, reduce)
        ctx.save_for_backward(x, stats, *saved)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        x, stats, *saved = ctx.saved_tensors
        mining, metric, normed, reduce = ctx.args
        bwd = K.triplet_hard_backward if mining == "batch_hard" else K.triplet_all_backward
        dx = bwd(x, saved, grad.contiguous(), stats, metric, normed, reduce)
        return dx, None, None, None, None, None, None, None


def triplet_loss(embeddings: torch.Tensor, labels: torch.Tensor, *, margin: float = 0.3,
                 mining: str = "batch_hard", distance: str = "euclidean", normalize: bool = False,
                 soft_margin: bool = False, reduction: str = "mean") -> torch.Tensor:
    """Triplet loss with online mining in a batch (Hermans et al. 2017, "In defense of the
    triplet loss"); positives of anchor a share its label (a itself excluded), negatives do not.

    d is the distance ("euclidean" norm(f_a - f_b), "squared", or "cosine" 1 - cos) between
    rows f, which are the embeddings or, with `normalize`, the L2-normalised embeddings
    (`F.normalize`, eps 1e-12; cosine always normalises). Per triplet the loss is
    relu(d_ap - d_an + margin), or with `soft_margin` softplus(d_ap - d_an) (the reid
    soft-margin form: the margin is not used).

    - "batch_hard": per anchor the farthest positive and the nearest negative (ties to the
      first index, as torch.max); "none" gives [B] (0 for anchors without both), "sum" the
      sum, "mean" the mean over anchors that have both.
    - "batch_all": every valid (a, p, n); "none" gives [B] (the sum over the anchor's
      triplets), "sum" the sum, "mean" the mean over triplets with positive loss (Hermans
      "BA != 0"; every valid triplet with `soft_margin`); equals pytorch-metric-learning's
      `TripletMarginLoss` (all triplets, AvgNonZeroReducer) for the hinge.

    "mean" with nothing to average gives 0, attached to the graph. The euclidean gradient is
    0 (not NaN) at distance 0; the hinge's gradient at exactly 0 is 0 (relu). NaN in a used
    embedding gives NaN. batch_hard stores no B x B tensor; batch_all stores two fp32 B x B
    matrices (distances and per-pair triplet counts), never B^3.
    """
    _validate.reduction(reduction)
    _embeddings("embeddings", embeddings)
    _labels("labels", labels, embeddings.shape[0], embeddings)
    margin = _validate.number("margin", margin, low=0.0)
    _choice("mining", mining, _MINING)
    _choice("distance", distance, tuple(_DISTANCES))
    _validate.flag("normalize", normalize)
    _validate.flag("soft_margin", soft_margin)
    if not _runtime.use_kernels(embeddings):
        return ref.triplet_loss(embeddings, labels, margin=margin, mining=mining, distance=distance,
                                normalize=normalize, soft_margin=soft_margin, reduction=reduction)
    metric = _DISTANCES[distance]
    x = embeddings.contiguous()
    with _runtime.on_device(x):
        return _runtime.untraced(_TripletMined.apply, x, labels.to(torch.int64).contiguous(), margin, mining, metric,
                                 normalize or metric == K.COSINE, soft_margin, _REDUCE[reduction])


# --- row losses ------------------------------------------------------------------------------

class _Rows(torch.autograd.Function):
    """Row losses over [N, D] operands a, b, c (b: centers gathered by labels for CENTER)."""

    @staticmethod
    def forward(ctx, loss, opt, params, reduce, a, b, c, labels, target, radius):
        out, stats = K.row_forward(loss, opt, params, a, b, c, labels, target, radius, reduce)
        ctx.args = (loss, opt, params, reduce)
        ctx.save_for_backward(a, b, c, labels, target, radius, stats)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        a, b, c, labels, target, radius, stats = ctx.saved_tensors
        loss, opt, params, reduce = ctx.args
        grad = grad.contiguous()
        need = list(ctx.needs_input_grad[4:7])
        center_b = loss == K.CENTER and need[1]
        if loss == K.CENTER:
            need[1] = False
        da, db, dc, dr = K.row_backward(loss, opt, params, a, b, c, labels, target, radius, reduce, grad, stats,
                                        need)
        if center_b:
            db = K.center_grad(a, b, labels, grad, stats, reduce)
        if dr is not None and ctx.needs_input_grad[9]:
            dr = dr.sum().to(radius.dtype).reshape(radius.shape)
        else:
            dr = None
        return None, None, None, None, da, db, dc, None, None, dr


def _rows(loss, reduction, a, b=None, c=None, labels=None, target=None, radius=None, params=(0.0, 0.0, 0.0),
          opt=0):
    """Run the row kernels on contiguous 2-D operands; returns the loss."""
    with _runtime.on_device(a):
        return _runtime.untraced(_Rows.apply, loss, opt, tuple(params), _REDUCE[reduction], a, b, c, labels, target,
                                 radius)


def _as_rows(name: str, t) -> tuple[torch.Tensor, bool]:
    """A [N, D] or unbatched [D] tensor as 2-D, and whether it was unbatched."""
    _validate.floating(name, t)
    if t.dim() not in (1, 2):
        raise ValueError(f"{name}: expected a 1-D [D] or 2-D [N, D] tensor, got shape {tuple(t.shape)}")
    return (t.unsqueeze(0) if t.dim() == 1 else t), t.dim() == 1


def _unbatch(out: torch.Tensor, unbatched: bool, reduction: str) -> torch.Tensor:
    return out[0] if unbatched and reduction == "none" else out


def center_loss(features: torch.Tensor, labels: torch.Tensor, centers: torch.Tensor,
                reduction: str = "mean") -> torch.Tensor:
    """Center loss (Wen et al. 2016): 1/2 norm(x_i - c_{y_i})^2 per sample.

    Gradients reach `features` and, when it requires grad, `centers` (d/dc_j = -sum over
    the samples of class j of g_i (x_i - c_j), a deterministic segmented sum over the
    samples sorted by label: no B x C matrix). A label outside [0, C) gives NaN for its row
    and its features' gradient, and adds nothing to the centers' (with checks on it
    raises). `CenterLoss` keeps the centers as a buffer updated by its `update_centers`
    rule instead of by gradients.
    """
    _validate.reduction(reduction)
    _features_and_centers(features, centers, labels)
    _check_label_range(labels, centers.shape[0])
    if not _runtime.use_kernels(features, centers):
        return ref.center_loss(features, labels, centers, reduction)
    return _rows(K.CENTER, reduction, features.contiguous(), centers.contiguous(),
                 labels=labels.to(torch.int64).contiguous())


def _features_and_centers(features, centers, labels) -> None:
    """features [B, D], centers [C, D] on one device, labels [B]."""
    _embeddings("features", features)
    _embeddings("centers", centers)
    _labels("labels", labels, features.shape[0], features, "features")
    _validate.same_device(features=features, centers=centers)
    if centers.shape[1] != features.shape[1]:
        raise ValueError(f"centers: expected [C, {features.shape[1]}] (features' D), got {tuple(centers.shape)}")


def _check_label_range(labels: torch.Tensor, num_classes: int) -> None:
    """With checks on (a device sync on CUDA): every label in [0, num_classes)."""
    if labels.numel() == 0 or not _runtime.checks_enabled():
        return
    bad = (labels < 0) | (labels >= num_classes)
    if bool(bad.any()):
        i = int(bad.nonzero()[0, 0])
        raise ValueError(f"labels: expected class indices in [0, {num_classes}), got {int(labels[i])} at position {i}")


def _pair_rows(names, tensors):
    """Operands of a row loss as 2-D tensors of one broadcast shape, and whether unbatched."""
    rows = [_as_rows(n, t) for n, t in zip(names, tensors)]
    dims = {t.dim() for t in tensors}
    if len(dims) != 1:
        shapes = ", ".join(f"{n} {tuple(t.shape)}" for n, t in zip(names, tensors))
        raise ValueError(f"expected {', '.join(names)} with the same number of dimensions, got {shapes}")
    _validate.same_device(**dict(zip(names, tensors)))
    shape = _validate.broadcast(**{n: r for n, (r, _) in zip(names, rows)})
    return [r.expand(shape).contiguous() for r, _ in rows], rows[0][1]


def _row_target(name: str, t, n: int, unbatched: bool, like: torch.Tensor) -> torch.Tensor:
    """A per-row target: [N] ([] unbatched) of any real dtype, as contiguous fp32."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    if t.is_complex():
        raise TypeError(f"{name}: expected a real tensor, got dtype {t.dtype}")
    want = () if unbatched else (n,)
    if tuple(t.shape) != want:
        raise ValueError(f"{name}: expected shape {want}, got {tuple(t.shape)}")
    _validate.same_device(input=like, **{name: t})
    return t.detach().reshape(-1).to(torch.float32).contiguous()


def triplet_margin_loss(anchor: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor,
                        margin: float = 1.0, p: float = 2.0, eps: float = 1e-6, swap: bool = False,
                        reduction: str = "mean") -> torch.Tensor:
    """torch `F.triplet_margin_loss`: clamp_min(margin + d(a, p) - d(a, n), 0) with
    d(x, y) = norm_p(x - y + eps), and with `swap` d(a, n) replaced by min(d(a, n), d(p, n)).
    Inputs [N, D] or [D], broadcasting as torch; gradients as torch's (the clamp passes the
    gradient at 0, a tie of the swap splits it in half, the norm's gradient is 0 at 0)."""
    _validate.reduction(reduction)
    margin = _validate.number("margin", margin)
    p = _validate.number("p", p, low=0.0, low_open=True)
    eps = _validate.number("eps", eps)
    _validate.flag("swap", swap)
    (a, pp, n), unbatched = _pair_rows(("anchor", "positive", "negative"), (anchor, positive, negative))
    if not _runtime.use_kernels(anchor, positive, negative):
        return F.triplet_margin_loss(anchor, positive, negative, margin=margin, p=p, eps=eps, swap=swap,
                                     reduction=reduction)
    opt = (K.SWAP if swap else 0) | (K.P2 if p == 2 else K.P1 if p == 1 else 0)
    out = _rows(K.TRIPLET_MARGIN, reduction, a, pp, n, params=(p, margin, eps), opt=opt)
    return _unbatch(out, unbatched, reduction)


def cosine_embedding_loss(x1: torch.Tensor, x2: torch.Tensor, target: torch.Tensor,
                          margin: float = 0.0, reduction: str = "mean") -> torch.Tensor:
    """torch `F.cosine_embedding_loss`: with cos = x1.x2 / sqrt((norm(x1)^2 + 1e-12)(norm(x2)^2 + 1e-12)),
    1 - cos where target == 1, clamp_min(cos - margin, 0) where target == -1, and 0 for
    any other target value. Inputs [N, D] with target [N], or [D] with a 0-dim target
    (torch names the inputs input1 and input2)."""
    _validate.reduction(reduction)
    margin = _validate.number("margin", margin)
    (a, b), unbatched = _pair_rows(("x1", "x2"), (x1, x2))
    t = _row_target("target", target, a.shape[0], unbatched, a)
    if not _runtime.use_kernels(x1, x2):
        return F.cosine_embedding_loss(x1, x2, target, margin=margin, reduction=reduction)
    out = _rows(K.COSINE_EMBEDDING, reduction, a, b, target=t, params=(margin, 0.0, 0.0))
    return _unbatch(out, unbatched, reduction)


def contrastive_loss(x1: torch.Tensor, x2: torch.Tensor, target: torch.Tensor, margin: float = 1.0,
                     reduction: str = "mean") -> torch.Tensor:
    """Contrastive loss (Hadsell et al. 2006, DeepID2): with d = norm(x1 - x2),
    t/2 d^2 + (1 - t)/2 max(0, margin - d)^2 per row, t = target (1 similar, 0 dissimilar;
    values between weigh the two terms linearly). eps policy at d = 0: no eps is added to d
    (the value is exact) and the dissimilar term's gradient direction (x1 - x2)/d is taken as
    0 there, so the gradient is finite (0). The target is not differentiated."""
    _validate.reduction(reduction)
    margin = _validate.number("margin", margin, low=0.0)
    (a, b), unbatched = _pair_rows(("x1", "x2"), (x1, x2))
    t = _row_target("target", target, a.shape[0], unbatched, a)
    if not _runtime.use_kernels(x1, x2):
        return ref.contrastive_loss(x1, x2, target, margin, reduction)
    out = _rows(K.CONTRASTIVE, reduction, a, b, target=t, params=(margin, 0.0, 0.0))
    return _unbatch(out, unbatched, reduction)


def ring_loss(features: torch.Tensor, radius: torch.Tensor | float, reduction: str = "mean") -> torch.Tensor:
    """Ring loss (Zheng et al. 2018): 1/2 (norm(x_i) - R)^2 per row; `radius` is a float or a
    one-element tensor, differentiated when it requires grad. The gradient for x is 0 at
    norm 0. `RingLoss` scales by its `weight` and learns R."""
    _validate.reduction(reduction)
    _embeddings("features", features)
    if isinstance(radius, torch.Tensor):
        _validate.floating("radius", radius)
        if radius.numel() != 1:
            raise ValueError(f"radius: expected a one-element tensor, got shape {tuple(radius.shape)}")
        _validate.same_device(features=features, radius=radius)
    else:
        radius = torch.tensor(_validate.number("radius", radius), dtype=torch.float32, device=features.device)
    if not _runtime.use_kernels(features, radius):
        return ref.ring_loss(features, radius, reduction)
    return _rows(K.RING, reduction, features.contiguous(), radius=radius)


def margin_ranking_loss(x1: torch.Tensor, x2: torch.Tensor, target: torch.Tensor,
                        margin: float = 0.0, reduction: str = "mean") -> torch.Tensor:
    """torch `F.margin_ranking_loss` (whose inputs are named input1, input2):
    clamp_min(-target (x1 - x2) + margin, 0), broadcasting; all three tensors are
    differentiated, as in torch."""
    _validate.reduction(reduction)
    margin = _validate.number("margin", margin)
    for name, t in (("x1", x1), ("x2", x2), ("target", target)):
        _validate.floating(name, t)
    if not (x1.dim() == x2.dim() == target.dim()):
        raise ValueError(f"expected x1, x2, target with the same number of dimensions, got "
                         f"{tuple(x1.shape)}, {tuple(x2.shape)}, {tuple(target.shape)}")
    _validate.same_device(x1=x1, x2=x2, target=target)
    shape = _validate.broadcast(x1=x1, x2=x2, target=target)
    if not _runtime.use_kernels(x1, x2, target):
        return F.margin_ranking_loss(x1, x2, target, margin=margin, reduction=reduction)
    return _elementwise.apply(K, K.MARGIN_RANKING, reduction, shape, x1, x2, target, params=(margin,))


def hinge_embedding_loss(input: torch.Tensor, target: torch.Tensor, margin: float = 1.0,
                         reduction: str = "mean") -> torch.Tensor:
    """torch `F.hinge_embedding_loss`: where(target != 1, clamp_min(margin - x, 0), 0) +
    where(target != -1, x, 0); so a target such as 0 takes both terms. The target is not
    differentiated."""
    _validate.reduction(reduction)
    margin = _validate.number("margin", margin)
    _validate.floating("input", input)
    if not isinstance(target, torch.Tensor) or target.is_complex():
        raise TypeError(f"target: expected a real torch.Tensor, got {getattr(target, 'dtype', type(target).__name__)}")
    _validate.same_device(input=input, target=target)
    shape = _validate.broadcast(input=input, target=target)
    if not _runtime.use_kernels(input):
        return F.hinge_embedding_loss(input, target, margin=margin, reduction=reduction)
    y = target.detach().to(torch.float32)
    return _elementwise.apply(K, K.HINGE_EMBEDDING, reduction, shape, input, y, params=(margin,))


@torch.no_grad()
def update_centers(centers: torch.Tensor, features: torch.Tensor, labels: torch.Tensor, alpha: float) -> None:
    """In place, the center update of Wen et al. 2016 (`CenterLoss.update_centers`):
    c_j -= alpha * sum_{y_i = j} (c_j - x_i) / (1 + n_j). One fused kernel over the samples
    sorted by label: deterministic, no atomics; classes without samples are not written,
    and labels outside [0, C) are skipped (with checks on they raise)."""
    _features_and_centers(features, centers, labels)
    alpha = _validate.number("alpha", alpha, low=0.0)
    _check_label_range(labels, centers.shape[0])
    if not _runtime.use_kernels(features, centers) or not centers.is_contiguous():
        centers.copy_(ref.update_centers(centers, features, labels, alpha))
        return
    with _runtime.on_device(centers):
        _runtime.untraced(K.update_centers, centers, features.detach().contiguous(),
                          labels.to(torch.int64).contiguous(), alpha)


class _TripletCenter(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, centers, labels, margin, reduce):
        out, stats, saved = K.triplet_center_forward(x, centers, labels, margin, reduce)
        ctx.reduce = reduce
        ctx.save_for_backward(x, centers, labels, stats, *saved)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        x, centers, labels, stats, *saved = ctx.saved_tensors
        dx, dc = K.triplet_center_backward(x, centers, labels, saved, grad.contiguous(), stats, ctx.reduce,
                                           ctx.needs_input_grad[:2])
        return dx, dc, None, None, None


def triplet_center_loss(features: torch.Tensor, labels: torch.Tensor, centers: torch.Tensor, margin: float = 1.0,
                        reduction: str = "mean") -> torch.Tensor:
    """Triplet-center loss (He et al. 2018): with D(x, c) = 1/2 norm(x - c)^2,
    relu(D(x_i, c_{y_i}) + margin - min over j != y_i of D(x_i, c_j)) per sample.

    The nearest other center is found over tiles of the Gram matrix (no B x C tensor; ties
    to the first index), then both D are recomputed exactly. Gradients reach `features`
    and `centers` (a deterministic segmented sum; the relu's gradient at 0 is 0). With one
    class there is no other center and the loss is 0. A label outside [0, C) gives NaN for
    its row (with checks on it raises).
    """
    _validate.reduction(reduction)
    _features_and_centers(features, centers, labels)
    margin = _validate.number("margin", margin, low=0.0)
    _check_label_range(labels, centers.shape[0])
    if not _runtime.use_kernels(features, centers):
        return ref.triplet_center_loss(features, labels, centers, margin, reduction)
    with _runtime.on_device(features):
        return _runtime.untraced(_TripletCenter.apply, features.contiguous(), centers.contiguous(),
                                 labels.to(torch.int64).contiguous(), margin, _REDUCE[reduction])


class _CenterInvariant(torch.autograd.Function):
    @staticmethod
    def forward(ctx, centers, labels, reduce):
        out, stats, saved = K.center_invariant_forward(centers, labels, reduce)
        ctx.reduce = reduce
        ctx.save_for_backward(centers, labels, stats, *saved)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        centers, labels, stats, *saved = ctx.saved_tensors
        return K.center_invariant_backward(centers, labels, saved, grad.contiguous(), stats, ctx.reduce), None, None


def center_invariant_loss(labels: torch.Tensor, centers: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Center-invariant loss (Wu et al. 2017): 1/4 (norm(c_{y_i})^2 - mean_k norm(c_k)^2)^2
    per sample, the mean over all C centers. Differentiated w.r.t. `centers`. A label
    outside [0, C) gives NaN for its sample and adds nothing to the gradient (with checks on
    it raises)."""
    _validate.reduction(reduction)
    _embeddings("centers", centers)
    _labels("labels", labels, None, centers, "centers")
    _check_label_range(labels, centers.shape[0])
    if not _runtime.use_kernels(centers):
        return ref.center_invariant_loss(labels, centers, reduction)
    with _runtime.on_device(centers):
        return _runtime.untraced(_CenterInvariant.apply, centers.contiguous(), labels.to(torch.int64).contiguous(),
                                 _REDUCE[reduction])


class _BatchContrastive(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, labels, margin):
        out, stats = K.batch_contrastive_forward(x, labels, margin)
        ctx.margin = margin
        ctx.save_for_backward(x, labels, stats)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        x, labels, stats = ctx.saved_tensors
        return K.batch_contrastive_backward(x, labels, ctx.margin, grad.contiguous(), stats), None, None


def batch_contrastive_loss(embeddings: torch.Tensor, labels: torch.Tensor, margin: float = 1.0) -> torch.Tensor:
    """`contrastive_loss` over every pair i < j of a batch, the target being whether the
    labels match: the mean over the B (B - 1) / 2 pairs of 1/2 d^2 (same label) or
    1/2 max(0, margin - d)^2 (different), d = norm(x_i - x_j) computed exactly from the rows.
    Fused: tiles of pairs, no B x B tensor in the forward or the backward (a GEMM over tiles
    of pairs whose distances are recomputed). Same eps policy as `contrastive_loss` (the
    gradient direction is 0 at d = 0); fewer than two samples give 0 attached to the graph.
    """
    _embeddings("embeddings", embeddings)
    _labels("labels", labels, embeddings.shape[0], embeddings)
    margin = _validate.number("margin", margin, low=0.0)
    if not _runtime.use_kernels(embeddings):
        return ref.batch_contrastive_loss(embeddings, labels, margin)
    with _runtime.on_device(embeddings):
        return _runtime.untraced(_BatchContrastive.apply, embeddings.contiguous(), labels.to(torch.int64).contiguous(),
                                 margin)


class _Range(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, labels, k, margin, alpha, beta):
        intra, pq, dmin, saved = K.range_forward(x, labels, k, margin, alpha, beta)
        out = (intra + beta * torch.clamp_min(margin - dmin, 0.0)).to(x.dtype)
        ctx.args = (k, margin, beta)
        ctx.save_for_backward(x, pq, dmin, *saved)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        x, pq, dmin, *saved = ctx.saved_tensors
        k, margin, beta = ctx.args
        return K.range_backward(x, saved, pq, dmin, grad.contiguous(), k, margin, beta), None, None, None, None, None


def range_loss(features: torch.Tensor, labels: torch.Tensor, *, k: int = 2, margin: float = 1.0,
               alpha: float = 0.5, beta: float = 0.5) -> torch.Tensor:
    """Range loss (Zhang et al. 2017): alpha * L_intra + beta * L_inter, 0-dim.

    L_intra sums over the classes with at least 2 samples the harmonic mean
    m / sum_t 1/D_t of the class's m = min(k, pairs) largest pairwise distances
    D = norm(x_i - x_j) (exact; ties to the first pair (i < j) in sample order; a class
    whose chosen distances include 0 adds 0, with gradient 0). L_inter = max(0, margin -
    min squared distance between the means of two classes present in the batch (classes of
    one sample included; the first pair on ties; 0 with fewer than two classes)).
    One program per class (samples sorted by label on the device): the means, the k-pass
    top-k search and the gradient; the closest means over tiles of class pairs.
    """
    _embeddings("features", features)
    _labels("labels", labels, features.shape[0], features, "features")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k: expected an int >= 1, got {k!r}")
    margin = _validate.number("margin", margin, low=0.0)
    alpha = _validate.number("alpha", alpha, low=0.0)
    beta = _validate.number("beta", beta, low=0.0)
    if not _runtime.use_kernels(features):
        return ref.range_loss(features, labels, k=k, margin=margin, alpha=alpha, beta=beta)
    with _runtime.on_device(features):
        return _runtime.untraced(_Range.apply, features.contiguous(), labels.to(torch.int64).contiguous(), k, margin,
                                 alpha, beta)
