"""nn.Module forms of the losses. Constructors take the function's options as keywords with
the same defaults (torch.nn's own constructor where torch has the loss, which these then
subclass); `forward` takes the function's tensors in the same order."""

from __future__ import annotations

import torch

from . import functional as F
from .margin import (  # noqa: F401 (the face-recognition heads own their weight)
    ArcFace,
    COCOLoss,
    CombinedMarginLoss,
    CosFace,
    L2Softmax,
    LargeMarginSoftmax,
    LinearCrossEntropy,
    NormFace,
    SphereFace,
)
from .metric import update_centers


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


class TripletMarginLoss(torch.nn.TripletMarginLoss):
    def __init__(self, margin: float = 1.0, p: float = 2.0, eps: float = 1e-6, swap: bool = False,
                 reduction: str = "mean"):
        super().__init__(margin=margin, p=p, eps=eps, swap=swap, reduction=reduction)

    def forward(self, anchor, positive, negative):
        return F.triplet_margin_loss(anchor, positive, negative, self.margin, self.p, self.eps, self.swap,
                                     self.reduction)


class TripletLoss(torch.nn.Module):
    def __init__(self, margin: float = 0.3, mining: str = "batch_hard", distance: str = "euclidean",
                 normalize: bool = False, soft_margin: bool = False, reduction: str = "mean"):
        super().__init__()
        self.margin, self.mining, self.distance = margin, mining, distance
        self.normalize, self.soft_margin, self.reduction = normalize, soft_margin, reduction

    def forward(self, embeddings, labels):
        return F.triplet_loss(embeddings, labels, margin=self.margin, mining=self.mining, distance=self.distance,
                              normalize=self.normalize, soft_margin=self.soft_margin, reduction=self.reduction)


class ContrastiveLoss(torch.nn.Module):
    def __init__(self, margin: float = 1.0, reduction: str = "mean"):
        super().__init__()
        self.margin, self.reduction = margin, reduction

    def forward(self, x1, x2, target):
        return F.contrastive_loss(x1, x2, target, self.margin, self.reduction)


class BatchContrastiveLoss(torch.nn.Module):
    def __init__(self, margin: float = 1.0):
        super().__init__()
        self.margin = margin

    def forward(self, embeddings, labels):
        return F.batch_contrastive_loss(embeddings, labels, self.margin)


class RangeLoss(torch.nn.Module):
    def __init__(self, k: int = 2, margin: float = 1.0, alpha: float = 0.5, beta: float = 0.5):
        super().__init__()
        self.k, self.margin, self.alpha, self.beta = k, margin, alpha, beta

    def forward(self, features, labels):
        return F.range_loss(features, labels, k=self.k, margin=self.margin, alpha=self.alpha, beta=self.beta)


class TripletCenterLoss(torch.nn.Module):
    """Triplet-center loss with the centers as a Parameter [num_classes, feat_dim] (standard
    normal at construction), learned by the optimiser."""

    def __init__(self, num_classes: int, feat_dim: int, margin: float = 1.0, reduction: str = "mean"):
        super().__init__()
        self.margin, self.reduction = margin, reduction
        self.centers = torch.nn.Parameter(torch.randn(num_classes, feat_dim))

    def forward(self, features, labels):
        return F.triplet_center_loss(features, labels, self.centers, self.margin, self.reduction)


class CenterLoss(torch.nn.Module):
    """Center loss with the centers as a buffer [num_classes, feat_dim] (standard normal at
    construction), moved by `update_centers` (Wen et al.'s rule), not by the optimiser."""

    def __init__(self, num_classes: int, feat_dim: int, alpha: float = 0.5, reduction: str = "mean"):
        super().__init__()
        self.alpha, self.reduction = alpha, reduction
        self.register_buffer("centers", torch.randn(num_classes, feat_dim))

    def forward(self, features, labels):
        return F.center_loss(features, labels, self.centers, self.reduction)

    @torch.no_grad()
    def update_centers(self, features, labels):
        """c_j -= alpha sum_{y_i = j} (c_j - x_i) / (1 + n_j), in place, deterministic."""
        update_centers(self.centers, features, labels, self.alpha)


class RingLoss(torch.nn.Module):
    """weight * ring_loss(features, R) with R a learned Parameter, set to the first batch's
    mean feature norm on the first call."""

    def __init__(self, weight: float = 0.01, reduction: str = "mean"):
        super().__init__()
        self.weight, self.reduction = weight, reduction
        self.radius = torch.nn.Parameter(torch.zeros(()))
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))
        self._checked = False  # this process has passed the first training call (no device sync)

    def forward(self, features):
        if self.training and not self._checked:
            with torch.no_grad():  # on the device: keep a loaded radius, else the batch's mean norm
                mean_norm = features.detach().float().norm(dim=1).mean().to(self.radius.dtype)
                self.radius.copy_(torch.where(self.initialized, self.radius, mean_norm))
                self.initialized.fill_(True)
            self._checked = True
        return self.weight * F.ring_loss(features, self.radius, self.reduction)


class CosineEmbeddingLoss(torch.nn.CosineEmbeddingLoss):
    def __init__(self, margin: float = 0.0, reduction: str = "mean"):
        super().__init__(margin=margin, reduction=reduction)

    def forward(self, input1, input2, target):
        return F.cosine_embedding_loss(input1, input2, target, self.margin, self.reduction)


class MarginRankingLoss(torch.nn.MarginRankingLoss):
    def __init__(self, margin: float = 0.0, reduction: str = "mean"):
        super().__init__(margin=margin, reduction=reduction)

    def forward(self, input1, input2, target):
        return F.margin_ranking_loss(input1, input2, target, self.margin, self.reduction)


class HingeEmbeddingLoss(torch.nn.HingeEmbeddingLoss):
    def __init__(self, margin: float = 1.0, reduction: str = "mean"):
        super().__init__(margin=margin, reduction=reduction)

    def forward(self, input, target):
        return F.hinge_embedding_loss(input, target, self.margin, self.reduction)


class _OverlapLoss(torch.nn.Module):
    """Base of the overlap modules: the options, and a tensor `weight` kept as a buffer."""

    def __init__(self, weight, **options):
        super().__init__()
        if isinstance(weight, torch.Tensor):
            self.register_buffer("weight", weight)
        else:
            self.weight = weight
        self.options = options

    def forward(self, input, target):
        return self._loss(input, target, weight=self.weight, **self.options)


class DiceLoss(_OverlapLoss):
    _loss = staticmethod(F.dice_loss)

    def __init__(self, *, activation: str = "softmax", include_background: bool = True,
                 squared: bool = False, jaccard: bool = False, smooth_nr: float = 1e-5,
                 smooth_dr: float = 1e-5, batch: bool = False, weight=None, ignore_index=None,
                 reduction: str = "mean"):
        super().__init__(weight, activation=activation, include_background=include_background,
                         squared=squared, jaccard=jaccard, smooth_nr=smooth_nr, smooth_dr=smooth_dr,
                         batch=batch, ignore_index=ignore_index, reduction=reduction)


class TverskyLoss(_OverlapLoss):
    _loss = staticmethod(F.tversky_loss)

    def __init__(self, alpha: float = 0.5, beta: float = 0.5, *, activation: str = "softmax",
                 include_background: bool = True, squared: bool = False, smooth_nr: float = 1e-5,
                 smooth_dr: float = 1e-5, batch: bool = False, weight=None, ignore_index=None,
                 reduction: str = "mean"):
        super().__init__(weight, alpha=alpha, beta=beta, activation=activation,
                         include_background=include_background, squared=squared, smooth_nr=smooth_nr,
                         smooth_dr=smooth_dr, batch=batch, ignore_index=ignore_index, reduction=reduction)


class FocalTverskyLoss(_OverlapLoss):
    _loss = staticmethod(F.focal_tversky_loss)

    def __init__(self, alpha: float = 0.5, beta: float = 0.5, gamma: float = 4 / 3, *,
                 activation: str = "softmax", include_background: bool = True, squared: bool = False,
                 smooth_nr: float = 1e-5, smooth_dr: float = 1e-5, batch: bool = False, weight=None,
                 ignore_index=None, reduction: str = "mean"):
        super().__init__(weight, alpha=alpha, beta=beta, gamma=gamma, activation=activation,
                         include_background=include_background, squared=squared, smooth_nr=smooth_nr,
                         smooth_dr=smooth_dr, batch=batch, ignore_index=ignore_index, reduction=reduction)


# classification


class CrossEntropyLoss(torch.nn.CrossEntropyLoss):
    def forward(self, input, target):
        return F.cross_entropy(input, target, self.weight, self.ignore_index, self.reduction, self.label_smoothing)


class NLLLoss(torch.nn.NLLLoss):
    def forward(self, input, target):
        return F.nll_loss(input, target, self.weight, self.ignore_index, self.reduction)


class BCELoss(torch.nn.BCELoss):
    def forward(self, input, target):
        return F.binary_cross_entropy(input, target, self.weight, self.reduction)


class BCEWithLogitsLoss(torch.nn.BCEWithLogitsLoss):
    def forward(self, input, target):
        return F.binary_cross_entropy_with_logits(input, target, self.weight, self.reduction, self.pos_weight)


class KLDivLoss(torch.nn.KLDivLoss):
    def forward(self, input, target):
        return F.kl_div(input, target, self.reduction, self.log_target)


class SoftMarginLoss(torch.nn.SoftMarginLoss):
    def forward(self, input, target):
        return F.soft_margin_loss(input, target, self.reduction)


class MultiLabelSoftMarginLoss(torch.nn.MultiLabelSoftMarginLoss):
    def forward(self, input, target):
        return F.multilabel_soft_margin_loss(input, target, self.weight, self.reduction)


class MultiMarginLoss(torch.nn.MultiMarginLoss):
    def forward(self, input, target):
        return F.multi_margin_loss(input, target, self.p, self.margin, self.weight, self.reduction)


class _Reduction(torch.nn.Module):
    """A loss module whose only option is `reduction`, plus the keywords given."""

    def __init__(self, reduction: str = "mean", **options):
        super().__init__()
        self.reduction = reduction
        self.options = options

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in {"reduction": self.reduction, **self.options}.items())


class BalancedBCEWithLogitsLoss(_Reduction):
    def forward(self, input, target):
        return F.balanced_binary_cross_entropy_with_logits(input, target, self.reduction)


class SigmoidFocalLoss(_Reduction):
    def __init__(self, alpha: float = 0.25, gamma: float = 2.0, reduction: str = "none"):
        super().__init__(reduction, alpha=alpha, gamma=gamma)

    def forward(self, inputs, targets):
        return F.sigmoid_focal_loss(inputs, targets, reduction=self.reduction, **self.options)


class SoftmaxFocalLoss(_Reduction):
    """`alpha` as None, a float, or a [C] tensor kept as a buffer (moves with the module)."""

    def __init__(self, alpha=None, gamma: float = 2.0, ignore_index: int = -100, reduction: str = "mean"):
        super().__init__(reduction, gamma=gamma, ignore_index=ignore_index)
        if isinstance(alpha, torch.Tensor):
            self.register_buffer("alpha", alpha)
        else:
            self.alpha = alpha

    def forward(self, input, target):
        return F.softmax_focal_loss(input, target, self.alpha, reduction=self.reduction, **self.options)


class HingeLoss(_Reduction):
    def __init__(self, margin: float = 1.0, reduction: str = "mean"):
        super().__init__(reduction, margin=margin)

    def forward(self, input, target):
        return F.hinge_loss(input, target, reduction=self.reduction, **self.options)


class PerceptronLoss(_Reduction):
    def forward(self, input, target):
        return F.perceptron_loss(input, target, self.reduction)


class ExponentialLoss(_Reduction):
    def forward(self, input, target):
        return F.exponential_loss(input, target, self.reduction)


class MeanVarianceLoss(_Reduction):
    def __init__(self, lambda_mean: float = 0.2, lambda_var: float = 0.05, start_age: int = 0,
                 include_cross_entropy: bool = True, reduction: str = "mean"):
        super().__init__(reduction, lambda_mean=lambda_mean, lambda_var=lambda_var, start_age=start_age,
                         include_cross_entropy=include_cross_entropy)

    def forward(self, input, target):
        return F.mean_variance_loss(input, target, reduction=self.reduction, **self.options)


class _BoxLoss(torch.nn.Module):
    """Base of the box modules: `forward(boxes1, boxes2)` calls `fn` with the options."""

    fn = None

    def __init__(self, box_format: str = "xyxy", eps: float = 1e-7, reduction: str = "none", **options):
        super().__init__()
        self.box_format, self.eps, self.reduction = box_format, eps, reduction
        self._options = tuple(options)
        for name, value in options.items():
            setattr(self, name, value)

    def forward(self, boxes1, boxes2):
        options = {name: getattr(self, name) for name in self._options}
        return type(self).fn(boxes1, boxes2, box_format=self.box_format, eps=self.eps,
                             reduction=self.reduction, **options)


class IoULoss(_BoxLoss):
    fn = staticmethod(F.iou_loss)

    def __init__(self, mode: str = "linear", box_format: str = "xyxy", eps: float = 1e-7, reduction: str = "none"):
        super().__init__(box_format, eps, reduction, mode=mode)


class GIoULoss(_BoxLoss):
    fn = staticmethod(F.giou_loss)


class DIoULoss(_BoxLoss):
    fn = staticmethod(F.diou_loss)


class CIoULoss(_BoxLoss):
    fn = staticmethod(F.ciou_loss)


class EIoULoss(_BoxLoss):
    fn = staticmethod(F.eiou_loss)


class FocalEIoULoss(_BoxLoss):
    fn = staticmethod(F.focal_eiou_loss)

    def __init__(self, box_format: str = "xyxy", eps: float = 1e-7, reduction: str = "none", gamma: float = 0.5):
        super().__init__(box_format, eps, reduction, gamma=gamma)


class CDIoULoss(_BoxLoss):
    fn = staticmethod(F.cdiou_loss)

    def __init__(self, box_format: str = "xyxy", eps: float = 1e-7, reduction: str = "none", base: str = "giou",
                 lam: float = 0.001):
        super().__init__(box_format, eps, reduction, base=base, lam=lam)


class MultiLabelMarginLoss(torch.nn.MultiLabelMarginLoss):
    def forward(self, input, target):
        return F.multilabel_margin_loss(input, target, self.reduction)


class DRLoss(torch.nn.Module):
    """`dr_loss` (Qian et al. 2020) with its paper defaults; forward(input [N, C], target [N])."""

    def __init__(self, margin: float = 0.5, pos_lambda: float = 1.0, neg_lambda: float = 0.1 / 1.252762968495368,
                 L: float = 6.0, tau: float = 4.0):
        super().__init__()
        self.margin, self.pos_lambda, self.neg_lambda, self.L, self.tau = margin, pos_lambda, neg_lambda, L, tau

    def forward(self, input, target):
        return F.dr_loss(input, target, self.margin, self.pos_lambda, self.neg_lambda, self.L, self.tau)


class APLoss(torch.nn.Module):
    """`ap_loss` (Chen et al. 2019), backward = the error-driven update; forward(input [N, C], target [N])."""

    def __init__(self, delta: float = 1.0):
        super().__init__()
        self.delta = delta

    def forward(self, input, target):
        return F.ap_loss(input, target, self.delta)
