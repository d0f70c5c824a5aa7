"""One case per public loss, shared by `tritonloss check`, `tritonloss tune` and the perf
suites: how to make its arguments at a shape, which reductions it takes, and its float64
eager reference. Each family keeps its cases in one function below.

`make(shape, dtype, device) -> (args, options)`: positional tensors (floating ones are
differentiated; integer ones, such as class labels, are not) and keyword options. A family
reads `shape` as it needs (for example its last dimension as the class count).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as TF

from . import functional as F
from . import reference

_ALL = tuple({"reduction": r} for r in ("none", "mean", "sum"))
# shapes `tritonloss tune` times: the elementwise perf size and one smaller bucket
_ELEMENTWISE_TUNE = ((2**10, 2**10), (2**14, 2**10))
# row losses: the classification perf shapes (rows x classes, and [N, C, H, W])
_ROW_TUNE = ((4096, 32000), (8192, 128256), (65536, 80), (8, 19, 512, 1024))


class Case(NamedTuple):
    name: str
    fn: Callable
    ref: Callable
    make: Callable
    reductions: tuple = _ALL
    tune_shapes: tuple = _ELEMENTWISE_TUNE
    grad_args: tuple | None = None  # positions of the differentiated args (None: every floating one)


def differentiated(case: Case, position: int, arg: torch.Tensor) -> bool:
    """Whether `check` and `tune` ask for the gradient of positional argument `position`."""
    if not arg.is_floating_point():
        return False
    return case.grad_args is None or position in case.grad_args


def _randn(shape, dtype, device, scale=1.0):
    return (torch.randn(shape, device=device) * scale).to(dtype)


def _rand(shape, dtype, device, low=0.0, high=1.0):
    return (torch.rand(shape, device=device) * (high - low) + low).to(dtype)


def regression_cases() -> list[Case]:
    R = reference.regression

    def case(name, make, reductions=_ALL):
        return Case(name, getattr(F, name), getattr(R, name), make, reductions)

    def pair(scale=1.0, **opts):
        return lambda s, dt, dev: ([_randn(s, dt, dev, scale), _randn(s, dt, dev, scale)], opts)

    def quantile(s, dt, dev):
        q = torch.linspace(0.1, 0.9, s[-1], device=dev)
        return [_randn(s, dt, dev), _randn(s, dt, dev)], {"quantiles": q}

    def heatmap(s, dt, dev):
        return [_rand(s, dt, dev), _rand(s, dt, dev)], {}

    def kl_box(s, dt, dev):
        return [_randn(s, dt, dev, 2), _randn(s, dt, dev, 0.5), _randn(s, dt, dev, 2)], {}

    def poisson(s, dt, dev):
        return [_randn(s, dt, dev), _rand(s, dt, dev, 0, 4)], {"full": True}

    def gaussian(s, dt, dev):
        return [_randn(s, dt, dev), _randn(s, dt, dev), _rand(s, dt, dev, 0.1, 1.1)], {}

    return [
        case("l1_loss", pair()),
        case("mse_loss", pair()),
        case("rmse_loss", pair(), reductions=({},)),
        case("smooth_l1_loss", pair(beta=0.5)),
        case("huber_loss", pair(delta=0.7)),
        case("balanced_l1_loss", pair(beta=0.8)),
        case("quantile_loss", quantile),
        case("wing_loss", pair(scale=8.0)),
        case("adaptive_wing_loss", heatmap),
        case("log_cosh_loss", pair(scale=3.0)),
        case("kl_box_loss", kl_box),
        case("poisson_nll_loss", poisson),
        case("gaussian_nll_loss", gaussian),
    ]


def classification_cases() -> list[Case]:
    """`shape` is read as [..., C]: the softmax losses see [N, C, rest] when it has three
    dims (labels [N, rest]), the others rows x C."""
    Rc = reference.classification

    def rows(s):
        return (math.prod(s[:-1]) if len(s) > 1 else 1, s[-1])

    def labels(s, dev, C, ignore=True):
        t = torch.randint(0, C, s, device=dev)
        return torch.where(torch.rand(s, device=dev) < 0.2, -100, t) if ignore else t

    def softmax_input(s, dt, dev, log=False):
        x = _randn(s, torch.float32, dev, 2.0)
        C, lshape = (s[0], ()) if len(s) == 1 else (s[1], (s[0], *s[2:]))
        x = torch.log_softmax(x, dim=0 if len(s) == 1 else 1) if log else x
        return x.to(dt), C, lshape

    def ce(s, dt, dev):
        x, C, ls = softmax_input(s, dt, dev)
        return [x, labels(ls, dev, C)], {"label_smoothing": 0.1, "weight": _rand((C,), torch.float32, dev, 0.1)}

    def ce_prob(s, dt, dev):
        x, C, ls = softmax_input(s, dt, dev)
        return [x, torch.softmax(_randn(s, torch.float32, dev), dim=0 if len(s) == 1 else 1).to(dt)], {}

    def nll(s, dt, dev):
        x, C, ls = softmax_input(s, dt, dev, log=True)
        return [x, labels(ls, dev, C)], {"weight": _rand((C,), torch.float32, dev, 0.1)}

    def focal(s, dt, dev):
        x, C, ls = softmax_input(s, dt, dev)
        return [x, labels(ls, dev, C)], {"alpha": _rand((C,), torch.float32, dev), "gamma": 1.5}

    def mean_var(s, dt, dev):
        n, C = rows(s)
        return [_randn((n, C), dt, dev), torch.randint(0, C, (n,), device=dev) + 10], {"start_age": 10}

    def multi_margin(s, dt, dev):
        n, C = rows(s)
        return [_randn((n, C), dt, dev), torch.randint(0, C, (n,), device=dev)], {"p": 2, "margin": 0.8}

    def multilabel(s, dt, dev):
        n, C = rows(s)
        C = min(C, 64)  # O(C^2) per row: keeps interpreted runs short
        t = torch.randint(0, C, (n, C), device=dev)
        t[:, 5] = -1
        return [_randn((n, C), dt, dev), t], {}

    def soft_multilabel(s, dt, dev):
        n, C = rows(s)
        return [_randn((n, C), dt, dev, 2), _rand((n, C), dt, dev)], {"weight": _rand((C,), torch.float32, dev)}

    def signs(s, dt, dev, **opts):
        return [_randn(s, dt, dev, 2), (torch.randint(0, 2, s, device=dev) * 2 - 1).to(dt)], opts

    def probs(s, dt, dev):
        return [_rand(s, dt, dev, 0.02, 0.98), _rand(s, dt, dev)], {"weight": _rand(s[-1:], torch.float32, dev)}

    def logits(s, dt, dev):
        return [_randn(s, dt, dev, 3), _rand(s, dt, dev)], {"pos_weight": _rand(s[-1:], torch.float32, dev, 0.5, 3)}

    def binary(s, dt, dev, **opts):
        return [_randn(s, dt, dev, 3), (torch.rand(s, device=dev) < 0.3).to(dt)], opts

    def kl(s, dt, dev):
        return [torch.log_softmax(_randn(s, torch.float32, dev), -1).to(dt),
                torch.softmax(_randn(s, torch.float32, dev), -1).to(dt)], {}

    def detection(s, dt, dev, **opts):
        """Dense-detection logits [anchors, C]; labels -1 ignored (10%), 1..C positive (1% of a
        large set as in RetinaNet, 30% of a small one so that checks see several), else 0."""
        n, C = rows(s)
        p_pos = 0.01 if n >= 10000 else 0.3
        u = torch.rand(n, device=dev)
        t = torch.where(u < 0.1, -1, torch.where(u < 0.1 + p_pos, torch.randint(1, C + 1, (n,), device=dev), 0))
        t[0] = C  # at least one positive
        return [_randn((n, C), dt, dev, 2), t], opts

    return [
        Case("cross_entropy", F.cross_entropy, TF.cross_entropy, ce, tune_shapes=_ROW_TUNE),
        Case("cross_entropy (probabilities)", F.cross_entropy, TF.cross_entropy, ce_prob, tune_shapes=_ROW_TUNE),
        Case("nll_loss", F.nll_loss, TF.nll_loss, nll, tune_shapes=_ROW_TUNE),
        Case("softmax_focal_loss", F.softmax_focal_loss, Rc.softmax_focal_loss, focal, tune_shapes=_ROW_TUNE),
        Case("mean_variance_loss", F.mean_variance_loss, Rc.mean_variance_loss, mean_var, tune_shapes=_ROW_TUNE),
        Case("multi_margin_loss", F.multi_margin_loss, TF.multi_margin_loss, multi_margin, tune_shapes=_ROW_TUNE),
        Case("multilabel_margin_loss", F.multilabel_margin_loss, TF.multilabel_margin_loss, multilabel,
             tune_shapes=((256, 80),)),
        Case("multilabel_soft_margin_loss", F.multilabel_soft_margin_loss, TF.multilabel_soft_margin_loss,
             soft_multilabel, tune_shapes=_ROW_TUNE),
        Case("binary_cross_entropy", F.binary_cross_entropy, TF.binary_cross_entropy, probs),
        Case("binary_cross_entropy_with_logits", F.binary_cross_entropy_with_logits,
             TF.binary_cross_entropy_with_logits, logits),
        Case("balanced_binary_cross_entropy_with_logits", F.balanced_binary_cross_entropy_with_logits,
             Rc.balanced_binary_cross_entropy_with_logits, binary),
        Case("sigmoid_focal_loss", F.sigmoid_focal_loss, Rc.sigmoid_focal_loss,
             functools.partial(binary, alpha=0.3, gamma=1.5)),
        Case("kl_div", F.kl_div, TF.kl_div, kl, reductions=(*_ALL, {"reduction": "batchmean"})),
        Case("soft_margin_loss", F.soft_margin_loss, TF.soft_margin_loss, signs, grad_args=(0,)),
        Case("hinge_loss", F.hinge_loss, Rc.hinge_loss, functools.partial(signs, margin=0.5)),
        Case("perceptron_loss", F.perceptron_loss, Rc.perceptron_loss, signs),
        Case("exponential_loss", F.exponential_loss, Rc.exponential_loss, signs),
        Case("dr_loss", F.dr_loss, Rc.dr_loss, detection, reductions=({},), tune_shapes=((100000, 80),)),
        Case("ap_loss", F.ap_loss, Rc.ap_loss, detection, reductions=({},), tune_shapes=((100000, 80),)),
    ]


def overlap_cases() -> list[Case]:
    """`shape` is read as [B, C, *spatial] when it has three dims or more, else as the
    spatial size of a [2, 3, n] input. Tuned at the perf shapes."""
    Ro = reference.overlap
    tune = ((8, 19, 512, 1024), (2, 4, 128, 128, 128))

    def shape_of(s):
        return tuple(s) if len(s) >= 3 else (2, 3, s[-1])

    def labels(s, dev):
        return torch.randint(0, s[1], (s[0], *s[2:]), device=dev)

    def dice(s, dt, dev):
        s = shape_of(s)
        return [_randn(s, dt, dev, 2), labels(s, dev)], {"ignore_index": 0}

    def tversky(s, dt, dev):
        s = shape_of(s)
        return [_randn(s, dt, dev, 2), _rand(s, dt, dev)], {"alpha": 0.3, "beta": 0.7, "activation": "sigmoid"}

    def focal(s, dt, dev):
        s = shape_of(s)
        w = _rand((s[1] - 1,), torch.float32, dev, 0.5, 2.0)
        return [_randn(s, dt, dev, 2), labels(s, dev)], {"include_background": False, "weight": w}

    return [
        Case("dice_loss", F.dice_loss, Ro.dice_loss, dice, tune_shapes=tune),
        Case("tversky_loss", F.tversky_loss, Ro.tversky_loss, tversky, tune_shapes=tune),
        Case("focal_tversky_loss", F.focal_tversky_loss, Ro.focal_tversky_loss, focal, tune_shapes=tune),
    ]


def boxes_cases() -> list[Case]:
    """Box pairs of shape [*shape, 4] (so shape (2**10, 2**10) is 2^20 pairs), xyxy unless
    the case names another format."""
    R = reference.boxes

    def pair(**opts):
        """A target box and a prediction near it (as in box regression): corners in
        [0, 100], sides in [1, 50], each prediction corner moved by 5% to 30% of the side
        (never ~0: an edge of both boxes within an fp32 ulp is a tie of min / max, whose
        subgradient fp32 and the float64 reference would pick differently)."""

        def make(s, dt, dev):
            xy = _rand((*s, 2), torch.float32, dev, 0, 100)
            target = torch.cat([xy, xy + _rand((*s, 2), torch.float32, dev, 1, 50)], -1)
            side = (target[..., 2:] - target[..., :2]).repeat(*([1] * len(s)), 2)
            sign = torch.randint(0, 2, (*s, 4), device=dev) * 2 - 1
            pred = target + side * sign * _rand((*s, 4), torch.float32, dev, 0.05, 0.3)
            return [pred.to(dt), target.to(dt)], opts

        return make

    def case(name, **opts):
        return Case(name, getattr(F, name), getattr(R, name), pair(**opts), tune_shapes=((2**10, 2**10),))

    def pairwise(s, dt, dev):
        """box_iou (no gradient): boxes1 [s[0], 4] against boxes2 [s[-1], 4], CIoU."""
        n, m = s[0], s[-1]
        (b1, _), _ = pair()((n,), dt, dev)
        (b2, _), _ = pair()((m,), dt, dev)
        return [b1, b2], {"kind": "ciou"}

    return [
        case("iou_loss", mode="log"),
        case("giou_loss"),
        case("diou_loss", box_format="xywh"),
        case("ciou_loss"),
        case("eiou_loss", box_format="cxcywh"),
        case("focal_eiou_loss"),
        case("cdiou_loss", base="diou"),
        Case("box_iou", F.box_iou, R.box_iou, pairwise, reductions=({},), tune_shapes=((4096, 4096),), grad_args=()),
    ]


def metric_cases() -> list[Case]:
    """`shape` is read as [B, D] (B = shape[0], D = shape[-1], a 1-D shape giving B = D):
    embeddings of B samples in identities of 4, shuffled; 2-D pair losses on [B, D] rows.
    Tuned at the perf shapes of the issue (B = 4096, D = 512)."""
    from .reference import metric as Rm

    tune = ((4096, 512),)

    def dims(s):
        return s[0], s[-1]

    def identities(B, dev, k=4):
        return (torch.arange(B, device=dev) // k)[torch.randperm(B, device=dev)]

    def mined(**opts):
        def make(s, dt, dev):
            B, D = dims(s)
            return [_randn((B, D), dt, dev), identities(B, dev)], opts
        return make

    def rows(n, **opts):
        def make(s, dt, dev):
            B, D = dims(s)
            return [_randn((B, D), dt, dev) for _ in range(n)], opts
        return make

    def targeted(values, **opts):
        def make(s, dt, dev):
            B, D = dims(s)
            t = torch.tensor(values, device=dev)[torch.randint(0, len(values), (B,), device=dev)]
            return [_randn((B, D), dt, dev), _randn((B, D), dt, dev), t], opts
        return make

    def centered(s, dt, dev):
        B, D = dims(s)
        C = max(B // 4, 2)
        return [_randn((B, D), dt, dev), torch.randint(0, C, (B,), device=dev), _randn((C, D), dt, dev)], {}

    def ring(s, dt, dev):
        B, D = dims(s)
        return [_randn((B, D), dt, dev), _rand((1,), dt, dev, 0.5 * D**0.5, 1.5 * D**0.5)], {}

    def ranking(s, dt, dev):
        B, D = dims(s)
        return [_randn((B, D), dt, dev), _randn((B, D), dt, dev), torch.randn(B, D, device=dev).sign().to(dt)], {}

    def hinge(s, dt, dev):
        B, D = dims(s)
        return [_randn((B, D), dt, dev), torch.randint(-1, 2, (B, D), device=dev).to(dt)], {"margin": 0.5}

    def invariant(s, dt, dev):
        B, D = dims(s)
        C = max(B // 4, 2)
        scale = _rand((C, 1), torch.float32, dev, 0.5, 1.5)  # norms that differ: a well-conditioned case
        return [torch.randint(0, C, (B,), device=dev), (_randn((C, D), torch.float32, dev) * scale).to(dt)], {}

    return [
        Case("triplet_loss", F.triplet_loss, Rm.triplet_loss, mined(margin=0.5), tune_shapes=tune),
        Case("triplet_loss[batch_all]", F.triplet_loss, Rm.triplet_loss, mined(mining="batch_all", normalize=True),
             tune_shapes=tune),
        Case("triplet_margin_loss", F.triplet_margin_loss, TF.triplet_margin_loss, rows(3, swap=True),
             tune_shapes=tune),
        Case("contrastive_loss", F.contrastive_loss, Rm.contrastive_loss, targeted([0, 1], margin=2 * 16**0.5),
             tune_shapes=tune),
        Case("batch_contrastive_loss", F.batch_contrastive_loss, Rm.batch_contrastive_loss,
             mined(margin=2 * 16**0.5), reductions=({},), tune_shapes=((1024, 128),)),
        Case("center_loss", F.center_loss, Rm.center_loss, centered, tune_shapes=tune),
        Case("center_invariant_loss", F.center_invariant_loss, Rm.center_invariant_loss, invariant,
             tune_shapes=tune),
        Case("ring_loss", F.ring_loss, Rm.ring_loss, ring, tune_shapes=tune),
        Case("range_loss", F.range_loss, Rm.range_loss, mined(k=3, margin=4.0), reductions=({},),
             tune_shapes=((1024, 128),)),
        Case("triplet_center_loss", F.triplet_center_loss, Rm.triplet_center_loss, centered, tune_shapes=tune),
        Case("cosine_embedding_loss", F.cosine_embedding_loss, TF.cosine_embedding_loss,
             targeted([1, -1, 0], margin=0.2), tune_shapes=tune),
        Case("margin_ranking_loss", F.margin_ranking_loss, TF.margin_ranking_loss, ranking),
        Case("hinge_embedding_loss", F.hinge_embedding_loss, TF.hinge_embedding_loss, hinge, grad_args=(0,)),
    ]


def margin_cases() -> list[Case]:
    """Face recognition: shape read as (B, D) (1-D: (B, 24); more dims: B = their product)
    with C = 70 classes (three class blocks of the default tile) and 10% ignored labels.
    Under the interpreter D is capped at 40 (the backward recomputes the logits per D block)."""
    Rg = reference.margin
    num_classes = 70

    def head(bias=False, scale_w=1.0, **opts):
        def make(s, dt, dev):
            B, D = (s[0], 24) if len(s) == 1 else (math.prod(s[:-1]), s[-1])
            if torch.device(dev).type == "cpu":
                D = min(D, 40)
            y = torch.randint(0, num_classes, (B,), device=dev)
            y[torch.rand(B, device=dev) < 0.1] = -100
            args = [_randn((B, D), dt, dev), _randn((num_classes, D), dt, dev, scale_w), y]
            if bias:
                args.append(_randn((num_classes,), dt, dev))
            return args, opts
        return make

    tune = ((4096, 512),)
    return [
        Case(name, getattr(F, name.split("[")[0]), getattr(Rg, name.split("[")[0]), make, tune_shapes=tune)
        for name, make in (
            ("margin_cross_entropy", head(scale=32.0, m1=1.2, m2=0.3, m3=0.1)),
            ("margin_cross_entropy[detached]", head(scale=32.0, m2=0.5, margin_grad="detached")),
            ("arcface_loss", head(scale=16.0)),
            ("cosface_loss", head(scale=16.0)),
            ("normface_loss", head()),
            ("coco_loss", head()),
            ("l2_softmax_loss", head(bias=True, scale_w=0.05, alpha=10.0)),
            ("sphereface_loss", head(margin=4, lambda_=5.0)),
            ("large_margin_softmax_loss", head(scale_w=0.2, margin=3, lambda_=2.0)),
            ("linear_cross_entropy", head(bias=True, scale_w=0.2, label_smoothing=0.1)),
        )
    ]


def family_cases(family: str) -> list[Case]:
    """The cases of one family, by its module name (regression, classification, ...)."""
    make = globals().get(f"{family}_cases")
    if make is None:
        raise ValueError(f"family: expected one of the families with cases, got {family!r}")
    return make()


def all_cases() -> list[Case]:
    return (regression_cases() + classification_cases() + overlap_cases() + boxes_cases() + metric_cases()
            + margin_cases())
