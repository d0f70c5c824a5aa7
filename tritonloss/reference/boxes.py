"""Eager PyTorch box losses and pairwise IoU matrices, written from the papers and
CATALOG.md: the CPU path without the interpreter, the float64 path, and the test oracle.

Same signatures as `tritonloss.functional`, called with arguments the public layer has
checked. Boxes [..., 4] broadcast; the math runs in float64 for float64 inputs and in
float32 otherwise; the result has boxes1's dtype. Degenerate-box policy (CATALOG.md): each
box is converted to corners and an inverted axis (x2 < x1) collapses to its midpoint, so
widths and heights are max(w, 0) and the centre is kept; intersections are clamped at 0
with a zero gradient at 0; the GIoU penalty is 0 (and has no gradient) where the
enclosing box has zero area; distances have a zero gradient at 0.
"""

from __future__ import annotations

import math

import torch

_FOUR_OVER_PI2 = 4 / math.pi**2


def _upcast(boxes1, boxes2):
    dtype = torch.promote_types(torch.promote_types(boxes1.dtype, boxes2.dtype), torch.float32)
    return boxes1.to(dtype), boxes2.to(dtype)


def _collapse(lo, hi):
    inverted = hi < lo
    mid = (lo + hi) / 2
    return torch.where(inverted, mid, lo), torch.where(inverted, mid, hi)


def corners(boxes: torch.Tensor, box_format: str = "xyxy") -> tuple[torch.Tensor, ...]:
    """(x1, y1, x2, y2) of boxes in `box_format`, inverted axes collapsed to their midpoint."""
    a, b, c, d = boxes.unbind(-1)
    if box_format == "xyxy":
        x1, y1, x2, y2 = a, b, c, d
    elif box_format == "xywh":
        x1, y1, x2, y2 = a, b, a + c, b + d
    else:
        x1, y1, x2, y2 = a - c / 2, b - d / 2, a + c / 2, b + d / 2
    x1, x2 = _collapse(x1, x2)
    y1, y2 = _collapse(y1, y2)
    return x1, y1, x2, y2


def _positive(t):
    return torch.where(t > 0, t, torch.zeros((), dtype=t.dtype))


def _distance(dx, dy):
    """sqrt(dx^2 + dy^2) with gradient 0 at 0."""
    s = dx * dx + dy * dy
    return torch.where(s > 0, torch.where(s > 0, s, 1.0).sqrt(), 0.0)


class _Pair:
    """The geometry of two (broadcast) sets of boxes that every loss uses."""

    def __init__(self, boxes1, boxes2, box_format, eps):
        self.eps = eps
        self.p = corners(boxes1, box_format)
        self.g = corners(boxes2, box_format)
        px1, py1, px2, py2 = self.p
        gx1, gy1, gx2, gy2 = self.g
        self.wp, self.hp = px2 - px1, py2 - py1
        self.wg, self.hg = gx2 - gx1, gy2 - gy1
        iw = _positive(torch.minimum(px2, gx2) - torch.maximum(px1, gx1))
        ih = _positive(torch.minimum(py2, gy2) - torch.maximum(py1, gy1))
        self.inter = iw * ih
        self.union = self.wp * self.hp + self.wg * self.hg - self.inter
        self.iou = self.inter / (self.union + eps)
        self.cw = torch.maximum(px2, gx2) - torch.minimum(px1, gx1)
        self.ch = torch.maximum(py2, gy2) - torch.minimum(py1, gy1)
        self.c2 = self.cw**2 + self.ch**2
        self.rho2 = ((px1 + px2 - gx1 - gx2) / 2) ** 2 + ((py1 + py2 - gy1 - gy2) / 2) ** 2

    def giou(self):
        area_c = self.cw * self.ch
        penalty = torch.where(area_c > 0, (area_c - self.union) / (area_c + self.eps), 0.0)
        return 1 - self.iou + penalty

    def diou(self):
        return 1 - self.iou + self.rho2 / (self.c2 + self.eps)

    def ciou(self):
        eps = self.eps
        v = _FOUR_OVER_PI2 * (torch.atan(self.wg / (self.hg + eps)) - torch.atan(self.wp / (self.hp + eps))) ** 2
        with torch.no_grad():
            alpha = v / (1 - self.iou + v + eps)
        return self.diou() + alpha * v

    def eiou(self):
        eps = self.eps
        return (self.diou() + (self.wp - self.wg) ** 2 / (self.cw**2 + eps)
                + (self.hp - self.hg) ** 2 / (self.ch**2 + eps))

    def vertex_term(self):
        """Sum of the distances of the 4 corresponding vertices / (4 * enclosing diagonal)."""
        px1, py1, px2, py2 = self.p
        gx1, gy1, gx2, gy2 = self.g
        total = (_distance(px1 - gx1, py1 - gy1) + _distance(px2 - gx2, py1 - gy1)
                 + _distance(px2 - gx2, py2 - gy2) + _distance(px1 - gx1, py2 - gy2))
        return total / (4 * torch.sqrt(self.c2 + self.eps))


def _finish(loss, reduction, like):
    loss = loss.to(like.dtype)
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    return loss.mean() if loss.numel() > 0 else 0.0 * loss.sum()


def _pair(boxes1, boxes2, box_format, eps):
    b1, b2 = _upcast(boxes1, boxes2)
    return _Pair(b1, b2, box_format, eps)


def iou_loss(boxes1, boxes2, mode="linear", box_format="xyxy", eps=1e-7, reduction="none"):
    iou = _pair(boxes1, boxes2, box_format, eps).iou
    if mode == "linear":
        loss = 1 - iou
    elif mode == "square":
        loss = 1 - iou**2
    else:
        loss = -torch.log(torch.where(iou > eps, iou, eps))
    return _finish(loss, reduction, boxes1)


def giou_loss(boxes1, boxes2, box_format="xyxy", eps=1e-7, reduction="none"):
    return _finish(_pair(boxes1, boxes2, box_format, eps).giou(), reduction, boxes1)


def diou_loss(boxes1, boxes2, box_format="xyxy", eps=1e-7, reduction="none"):
    return _finish(_pair(boxes1, boxes2, box_format, eps).diou(), reduction, boxes1)


def ciou_loss(boxes1, boxes2, box_format="xyxy", eps=1e-7, reduction="none"):
    return _finish(_pair(boxes1, boxes2, box_format, eps).ciou(), reduction, boxes1)


def eiou_loss(boxes1, boxes2, box_format="xyxy", eps=1e-7, reduction="none"):
    return _finish(_pair(boxes1, boxes2, box_format, eps).eiou(), reduction, boxes1)


def focal_eiou_loss(boxes1, boxes2, box_format="xyxy", eps=1e-7, reduction="none", gamma=0.5):
    pair = _pair(boxes1, boxes2, box_format, eps)
    return _finish(pair.iou.detach() ** gamma * pair.eiou(), reduction, boxes1)


def cdiou_loss(boxes1, boxes2, box_format="xyxy", eps=1e-7, reduction="none", base="giou", lam=0.001):
    pair = _pair(boxes1, boxes2, box_format, eps)
    base_loss = 1 - pair.iou if base == "iou" else getattr(pair, base)()
    return _finish(base_loss + lam * pair.vertex_term(), reduction, boxes1)


def box_iou(boxes1, boxes2, kind="iou", box_format="xyxy"):
    """[N, M] matrix, torchvision's conventions: no eps in IoU and GIoU (0/0 gives NaN),
    eps = 1e-7 in the DIoU diagonal and in CIoU's alpha, no eps on CIoU's heights."""
    eps = 1e-7
    b1, b2 = _upcast(boxes1, boxes2)
    px1, py1, px2, py2 = (t[:, None] for t in corners(b1, box_format))
    gx1, gy1, gx2, gy2 = (t[None, :] for t in corners(b2, box_format))
    wp, hp, wg, hg = px2 - px1, py2 - py1, gx2 - gx1, gy2 - gy1
    inter = ((torch.minimum(px2, gx2) - torch.maximum(px1, gx1)).clamp(min=0)
             * (torch.minimum(py2, gy2) - torch.maximum(py1, gy1)).clamp(min=0))
    union = wp * hp + wg * hg - inter
    iou = inter / union
    cw = torch.maximum(px2, gx2) - torch.minimum(px1, gx1)
    ch = torch.maximum(py2, gy2) - torch.minimum(py1, gy1)
    if kind == "iou":
        out = iou
    elif kind == "giou":
        out = iou - (cw * ch - union) / (cw * ch)
    else:
        rho2 = ((px1 + px2 - gx1 - gx2) / 2) ** 2 + ((py1 + py2 - gy1 - gy2) / 2) ** 2
        out = iou - rho2 / (cw**2 + ch**2 + eps)
        if kind == "ciou":
            v = _FOUR_OVER_PI2 * (torch.atan(wp / hp) - torch.atan(wg / hg)) ** 2
            out = out - v / (1 - iou + v + eps) * v
    return out.to(boxes1.dtype).detach()
