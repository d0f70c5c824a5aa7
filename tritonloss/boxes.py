"""Box regression losses and pairwise IoU matrices: argument checks, path choice and the
autograd wrapper.

Boxes are [..., 4] in `box_format` "xyxy" (x1, y1, x2, y2), "xywh" (x1, y1, w, h) or
"cxcywh" (cx, cy, w, h); the two inputs broadcast and the loss has the broadcast shape
without its last dimension, in boxes1's dtype (each gradient in its tensor's dtype).
Gradients flow to both inputs, as in torchvision. The default reduction is "none"; the
"mean" of no boxes is 0, attached to the graph (torchvision).

Degenerate boxes: each box is converted to corners and an inverted axis (x2 < x1)
collapses to its midpoint, so widths and heights are max(w, 0), the centre is kept, and an
inverted box has zero area and never earns a GIoU bonus. Intersections are clamped at 0
with a zero gradient there; min / max split their gradient evenly at ties (torch); the
GIoU penalty (C - U) / (C + eps) is 0, with no gradient, where the enclosing area C is 0
(torchvision's gradient there is of order 1/eps); distances have a zero gradient at 0.
With these rules every loss and gradient is finite for zero-area and identical boxes in
every format (for eps > 0). Non-degenerate boxes give torchvision's values (for CIoU see
ciou_loss).
"""

from __future__ import annotations

import torch

from . import _runtime, _validate
from .kernels import boxes as K
from .reference import boxes as ref

_REDUCE = {"none": K.NONE, "sum": K.SUM, "mean": K.MEAN}
_FORMATS = {"xyxy": K.XYXY, "xywh": K.XYWH, "cxcywh": K.CXCYWH}
_IOU_MODES = {"linear": K.IOU, "square": K.IOU_SQUARE, "log": K.IOU_LOG}
_CD_BASES = {"iou": K.IOU, "giou": K.GIOU, "diou": K.DIOU, "ciou": K.CIOU, "eiou": K.EIOU}
_KINDS = {"iou": K.KIND_IOU, "giou": K.KIND_GIOU, "diou": K.KIND_DIOU, "ciou": K.KIND_CIOU}


def _boxes(name: str, t) -> torch.Tensor:
    _validate.floating(name, t)
    if t.dim() == 0 or t.shape[-1] != 4:
        raise ValueError(f"{name}: expected boxes of shape [..., 4], got {tuple(t.shape)}")
    return t


class _Boxes(torch.autograd.Function):
    @staticmethod
    def forward(ctx, spec, b1, b2):
        out, stats = K.forward(*spec, b1, b2)
        ctx.spec = spec
        ctx.save_for_backward(b1, b2, stats)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        b1, b2, stats = ctx.saved_tensors
        d1, d2 = K.backward(*ctx.spec, b1, b2, grad.contiguous(), stats, ctx.needs_input_grad[1:3])
        return None, d1, d2


def _run(loss: int, boxes1, boxes2, box_format, eps, reduction, eager, p0=0.0, cd=False):
    """Check the arguments, then run the kernels (or `eager()` on the eager path)."""
    _boxes("boxes1", boxes1)
    _boxes("boxes2", boxes2)
    _validate.same_device(boxes1=boxes1, boxes2=boxes2)
    shape = _validate.broadcast(boxes1=boxes1, boxes2=boxes2)
    _validate.choice("box_format", box_format, _FORMATS)
    eps = _validate.number("eps", eps, low=0.0, low_open=True)
    _validate.reduction(reduction)
    if not _runtime.use_kernels(boxes1, boxes2):
        return eager(eps)
    reduce = _REDUCE[reduction]
    b1, b2 = (t.expand(shape).reshape(-1, 4).contiguous() for t in (boxes1, boxes2))
    spec = (loss, cd, _FORMATS[box_format], eps, float(p0), reduce)
    with _runtime.on_device(b1):
        out = _runtime.untraced(_Boxes.apply, spec, b1, b2)
    return out.view(shape[:-1]) if reduce == K.NONE else out


def iou_loss(boxes1: torch.Tensor, boxes2: torch.Tensor, mode: str = "linear", box_format: str = "xyxy",
             eps: float = 1e-7, reduction: str = "none") -> torch.Tensor:
    """UnitBox IoU loss with mmdet's modes, IoU = I / (U + eps): "linear" 1 - IoU, "square"
    1 - IoU^2, "log" -ln max(IoU, eps) (mmdet clamps IoU at eps in every mode; linear and
    square here do not, which changes a value by at most eps)."""
    _validate.choice("mode", mode, _IOU_MODES)
    return _run(_IOU_MODES[mode], boxes1, boxes2, box_format, eps, reduction,
                lambda e: ref.iou_loss(boxes1, boxes2, mode, box_format, e, reduction))


def giou_loss(boxes1: torch.Tensor, boxes2: torch.Tensor, box_format: str = "xyxy", eps: float = 1e-7,
              reduction: str = "none") -> torch.Tensor:
    """1 - IoU + (C - U) / (C + eps), C the enclosing box's area; anchor torchvision
    `generalized_box_iou_loss` (the penalty is 0, with no gradient, where C = 0)."""
    return _run(K.GIOU, boxes1, boxes2, box_format, eps, reduction,
                lambda e: ref.giou_loss(boxes1, boxes2, box_format, e, reduction))


def diou_loss(boxes1: torch.Tensor, boxes2: torch.Tensor, box_format: str = "xyxy", eps: float = 1e-7,
              reduction: str = "none") -> torch.Tensor:
    """1 - IoU + rho^2 / (c^2 + eps), rho the distance of the centres and c the enclosing
    box's diagonal; anchor torchvision `distance_box_iou_loss`."""
    return _run(K.DIOU, boxes1, boxes2, box_format, eps, reduction,
                lambda e: ref.diou_loss(boxes1, boxes2, box_format, e, reduction))


def ciou_loss(boxes1: torch.Tensor, boxes2: torch.Tensor, box_format: str = "xyxy", eps: float = 1e-7,
              reduction: str = "none") -> torch.Tensor:
    """DIoU loss + alpha v, v = 4/pi^2 (atan(w2 / (h2 + eps)) - atan(w1 / (h1 + eps)))^2,
    alpha = v / (1 - IoU + v + eps) detached; anchor torchvision `complete_box_iou_loss`.
    Differences: eps on the heights (torchvision divides by h, NaN for zero-area boxes), and
    eps is used throughout (torchvision's DIoU part always uses 1e-7). A zero-area box (not
    an inverted one, which collapses) against a box of another aspect ratio has a width
    gradient of order 1/eps: finite in fp32, beyond fp16's range (inf) for fp16 boxes."""
    return _run(K.CIOU, boxes1, boxes2, box_format, eps, reduction,
                lambda e: ref.ciou_loss(boxes1, boxes2, box_format, e, reduction))


def eiou_loss(boxes1: torch.Tensor, boxes2: torch.Tensor, box_format: str = "xyxy", eps: float = 1e-7,
              reduction: str = "none") -> torch.Tensor:
    """EIoU (Zhang et al. 2021): 1 - IoU + rho^2 / (Cw^2 + Ch^2 + eps) + (w1 - w2)^2 / (Cw^2 + eps)
    + (h1 - h2)^2 / (Ch^2 + eps), Cw, Ch the enclosing box's sides (not mmdet's "Extended IoU")."""
    return _run(K.EIOU, boxes1, boxes2, box_format, eps, reduction,
                lambda e: ref.eiou_loss(boxes1, boxes2, box_format, e, reduction))


def focal_eiou_loss(boxes1: torch.Tensor, boxes2: torch.Tensor, box_format: str = "xyxy", eps: float = 1e-7,
                    reduction: str = "none", gamma: float = 0.5) -> torch.Tensor:
    """Focal-EIoU (Zhang et al. 2021): IoU^gamma * EIoU loss, the weight IoU^gamma detached
    (a constant for the gradient)."""
    gamma = _validate.number("gamma", gamma, low=0.0)
    return _run(K.FOCAL_EIOU, boxes1, boxes2, box_format, eps, reduction,
                lambda e: ref.focal_eiou_loss(boxes1, boxes2, box_format, e, reduction, gamma), p0=gamma)


def cdiou_loss(boxes1: torch.Tensor, boxes2: torch.Tensor, box_format: str = "xyxy", eps: float = 1e-7,
               reduction: str = "none", base: str = "giou", lam: float = 0.001) -> torch.Tensor:
    """CDIoU (Chen et al. 2020), the paper's form: base loss + lam * diou, diou = (sum of the
    distances of the 4 corresponding vertices) / (4 sqrt(Cw^2 + Ch^2 + eps)). `base` is
    "iou" (1 - IoU), "giou", "diou", "ciou" or "eiou", each as its function here."""
    _validate.choice("base", base, _CD_BASES)
    lam = _validate.number("lam", lam, low=0.0)
    return _run(_CD_BASES[base], boxes1, boxes2, box_format, eps, reduction,
                lambda e: ref.cdiou_loss(boxes1, boxes2, box_format, e, reduction, base, lam), p0=lam, cd=True)


def box_iou(boxes1: torch.Tensor, boxes2: torch.Tensor, kind: str = "iou", box_format: str = "xyxy") -> torch.Tensor:
    """Pairwise [N, M] matrix of `kind` "iou", "giou", "diou" or "ciou" between boxes1 [N, 4]
    and boxes2 [M, 4], for anchor matching; anchors torchvision `box_iou`,
    `generalized_box_iou`, `distance_box_iou`, `complete_box_iou` (their eps = 1e-7 in DIoU
    and CIoU, none in IoU and GIoU, so two zero-area boxes give NaN as there). Computed
    tile by tile: no [N, M, k] temporaries. Forward only (the result carries no gradient).
    Differences: the result has boxes1's dtype (torchvision: float32 for half inputs), and
    inverted boxes collapse as in the losses."""
    _validate.choice("kind", kind, _KINDS)
    _validate.choice("box_format", box_format, _FORMATS)
    for name, t in (("boxes1", boxes1), ("boxes2", boxes2)):
        _boxes(name, t)
        if t.dim() != 2:
            raise ValueError(f"{name}: expected a 2-D tensor of boxes [N, 4], got {tuple(t.shape)}")
    _validate.same_device(boxes1=boxes1, boxes2=boxes2)
    if not _runtime.use_kernels(boxes1, boxes2):
        return ref.box_iou(boxes1, boxes2, kind, box_format)
    b1, b2 = boxes1.detach().contiguous(), boxes2.detach().contiguous()
    with _runtime.on_device(b1):
        return _runtime.untraced(K.pairwise, _KINDS[kind], _FORMATS[box_format], 1e-7, b1, b2)
