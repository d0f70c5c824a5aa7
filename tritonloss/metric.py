"""Metric-learning losses: argument checks, path choice and the autograd wrappers.

Embeddings are [B, D] rows; labels are 1-D integer tensors of B entries. The loss has the
dtype of the embeddings and every accumulator is fp32. float64 inputs, and CPU tensors
without Triton's interpreter, take the eager reference (tritonloss/reference/metric.py).
"""

from __future__ import annotations

import torch

from . import _runtime, _validate
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


def _labels(name: str, t, n: int, like: torch.Tensor) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise TypeError(f"{name}: expected an integer tensor, got dtype {t.dtype}")
    if t.dim() != 1 or t.shape[0] != n:
        raise ValueError(f"{name}: expected a 1-D tensor of {n} entries, got shape {tuple(t.shape)}")
    _validate.same_device(**{"embeddings" if like.dim() == 2 else "input": like, name: t})
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
        return _TripletMined.apply(x, labels.to(torch.int64).contiguous(), margin, mining, metric,
                                   normalize or metric == K.COSINE, soft_margin, _REDUCE[reduction])
