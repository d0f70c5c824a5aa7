"""Box regression losses over pairs of boxes [n, 4]: one forward and one backward kernel for
the whole family, and a tiled kernel for the pairwise [N, M] IoU matrices.

Each program takes BLOCK box pairs and loads their coordinates with four strided loads
per box. The box format (FMT) and the loss (LOSS, plus the CD flag that adds the CDIoU
vertex term) are constexpr. Every box is first converted to corners and each inverted
axis (x2 < x1) collapsed to its midpoint, so widths and heights are max(w, 0) and the
centre is kept. `_terms` returns the loss and its derivatives, written out by hand
(reverse mode): per box, positional adjoints of the four corners and the adjoints of the
width and height, kept apart so that large aspect-ratio terms never cancel in fp32;
`_raw_axis_grad` carries them back to the raw coordinates of each format. The backward recomputes everything
from the two box tensors: nothing else is saved. Reductions are two-stage
(kernels/_reduce.py); min / max split their gradient evenly at ties, as torch does.
"""

import torch
import triton
import triton.language as tl

from . import _elementwise as E
from . import _math, _reduce, _tuning
from ._reduce import MEAN, NONE, SUM  # noqa: F401 (re-exported for the public layer)

# LOSS ids; CDIOU is a base loss plus the CD flag
IOU, IOU_SQUARE, IOU_LOG, GIOU, DIOU, CIOU, EIOU, FOCAL_EIOU = range(8)
# box formats
XYXY, XYWH, CXCYWH = range(3)
# pairwise kinds of box_iou
KIND_IOU, KIND_GIOU, KIND_DIOU, KIND_CIOU = range(4)

_FOUR_OVER_PI2 = tl.constexpr(0.40528473456935108)  # 4 / pi^2


@triton.jit
def _load_raw(ptr, rows, mask):
    """The four fp32 coordinates of the boxes at `rows` of a contiguous [n, 4] tensor."""
    a = tl.load(ptr + rows * 4, mask=mask, other=0.0).to(tl.float32)
    b = tl.load(ptr + rows * 4 + 1, mask=mask, other=0.0).to(tl.float32)
    c = tl.load(ptr + rows * 4 + 2, mask=mask, other=0.0).to(tl.float32)
    d = tl.load(ptr + rows * 4 + 3, mask=mask, other=0.0).to(tl.float32)
    return a, b, c, d


@triton.jit
def _corners(a, b, c, d, FMT: tl.constexpr):
    """Corners (x1, y1, x2, y2) of boxes in FMT, inverted axes collapsed to their midpoint."""
    x1, y1, x2, y2 = _to_xyxy(a, b, c, d, FMT)
    x1, x2 = _collapse(x1, x2)
    y1, y2 = _collapse(y1, y2)
    return x1, y1, x2, y2


@triton.jit
def _to_xyxy(a, b, c, d, FMT: tl.constexpr):
    if FMT == 0:  # xyxy
        x1, y1, x2, y2 = a, b, c, d
    elif FMT == 1:  # xywh
        x1, y1, x2, y2 = a, b, a + c, b + d
    else:  # cxcywh
        x1, y1, x2, y2 = a - 0.5 * c, b - 0.5 * d, a + 0.5 * c, b + 0.5 * d
    return x1, y1, x2, y2


@triton.jit
def _collapse(lo, hi):
    """An inverted interval (hi < lo) becomes its midpoint."""
    inv = hi < lo
    mid = 0.5 * (lo + hi)
    return tl.where(inv, mid, lo), tl.where(inv, mid, hi)


@triton.jit
def _raw_axis_grad(lo, hi, g_lo, g_hi, g_w, FMT: tl.constexpr):
    """Gradients for one axis's two raw coordinates ((x1, x2), (x, w) or (cx, w) by FMT),
    given the corners (lo, hi) before the collapse, the positional adjoints g_lo, g_hi of the
    collapsed corners and the adjoint g_w of the extent max(hi - lo, 0). The extent's adjoint
    is kept apart (it can be of order 1/eps where the other terms are small) and never
    added and subtracted again, so no precision is lost to cancellation."""
    inv = hi < lo  # collapsed: both corners are the midpoint, the extent is constant 0
    half = 0.5 * (g_lo + g_hi)
    if FMT == 0:
        g_first = tl.where(inv, half, g_lo - g_w)
        g_second = tl.where(inv, half, g_hi + g_w)
    elif FMT == 1:
        g_first = g_lo + g_hi
        g_second = tl.where(inv, half, g_hi + g_w)
    else:
        g_first = g_lo + g_hi
        g_second = tl.where(inv, 0.0, 0.5 * (g_hi - g_lo) + g_w)
    return g_first, g_second


@triton.jit
def _share(a, b):
    """d max(a, b) / da: 1, 0, or 1/2 at a tie (torch.maximum's convention)."""
    return tl.where(a > b, 1.0, tl.where(a == b, 0.5, 0.0))


@triton.jit
def _axis(p1, p2, g1, g2):
    """One axis of a pair of collapsed boxes: intersection extent (clamped at 0, strictly),
    enclosing extent, and the difference of the centres."""
    inter = tl.minimum(p2, g2) - tl.maximum(p1, g1)
    inter = tl.where(inter > 0, inter, 0.0)
    enclose = tl.maximum(p2, g2) - tl.minimum(p1, g1)
    dc = 0.5 * (p1 + p2 - g1 - g2)
    return inter, enclose, dc


@triton.jit
def _axis_grads(p1, p2, g1, g2, g_inter, g_enc, g_dc, g_e1, g_e2):
    """Positional gradients with respect to (p1, p2, g1, g2) given those of the intersection
    and enclosing extents, the centre difference and the edge offsets e1 = p1 - g1,
    e2 = p2 - g2 (the box extents' adjoints are carried separately, see _raw_axis_grad)."""
    t = tl.where(tl.minimum(p2, g2) - tl.maximum(p1, g1) > 0, g_inter, 0.0)
    s_hi = _share(g2, p2)  # min(p2, g2) goes to p2 where p2 < g2
    s_lo = _share(p1, g1)  # max(p1, g1) goes to p1 where p1 > g1
    c_hi = _share(p2, g2)  # max(p2, g2)
    c_lo = _share(g1, p1)  # min(p1, g1) goes to p1 where p1 < g1
    half = 0.5 * g_dc
    dp2 = t * s_hi + g_enc * c_hi + half + g_e2
    dg2 = t * (1.0 - s_hi) + g_enc * (1.0 - c_hi) - half - g_e2
    dp1 = -t * s_lo - g_enc * c_lo + half + g_e1
    dg1 = -t * (1.0 - s_lo) - g_enc * (1.0 - c_lo) - half - g_e1
    return dp1, dp2, dg1, dg2


@triton.jit
def _unit(e, dist):
    """e / dist, 0 where dist = 0 (the subgradient of a distance at 0)."""
    return tl.where(dist > 0, e / tl.where(dist > 0, dist, 1.0), 0.0)


@triton.jit
def _terms(LOSS: tl.constexpr, CD: tl.constexpr, px1, py1, px2, py2, gx1, gy1, gx2, gy2, eps, p0):
    """The loss and, per box (p: boxes1, g: boxes2), the positional adjoints of its corners
    (x1, y1, x2, y2) and the adjoints of its width and height. p0 is gamma (FOCAL_EIOU) or
    lam (CD)."""
    wp = px2 - px1
    hp = py2 - py1
    wg = gx2 - gx1
    hg = gy2 - gy1
    iw, cw, dcx = _axis(px1, px2, gx1, gx2)
    ih, ch, dcy = _axis(py1, py2, gy1, gy2)
    ap = wp * hp
    ag = wg * hg
    inter = iw * ih
    union = ap + ag - inter
    den = union + eps
    iou = inter / den
    zero = tl.zeros_like(iou)
    # seeds: d loss / d (iou, union, wp, hp, wg, hg, cw, ch, dcx, dcy, c2)
    g_union = zero
    g_wp = zero
    g_hp = zero
    g_wg = zero
    g_hg = zero
    g_cw = zero
    g_ch = zero
    g_dcx = zero
    g_dcy = zero
    g_c2 = zero
    c2 = cw * cw + ch * ch
    if LOSS == 0:  # IOU: 1 - iou
        loss = 1.0 - iou
        g_iou = zero - 1.0
    elif LOSS == 1:  # IOU_SQUARE: 1 - iou^2
        loss = 1.0 - iou * iou
        g_iou = -2.0 * iou
    elif LOSS == 2:  # IOU_LOG: -ln max(iou, eps)
        keep = iou > eps
        clamped = tl.where(keep, iou, eps)
        loss = -tl.log(clamped)
        g_iou = tl.where(keep, -1.0 / clamped, 0.0)
    elif LOSS == 3:  # GIOU: 1 - iou + (C - U) / (C + eps), the penalty 0 where C = 0
        area_c = cw * ch
        pos = area_c > 0
        cden = area_c + eps
        loss = 1.0 - iou + tl.where(pos, (area_c - union) / cden, 0.0)
        g_iou = zero - 1.0
        g_area_c = tl.where(pos, den / (cden * cden), 0.0)
        g_union = tl.where(pos, -1.0 / cden, 0.0)
        g_cw = g_area_c * ch
        g_ch = g_area_c * cw
    else:  # DIOU, CIOU, EIOU, FOCAL_EIOU: 1 - iou + rho^2 / (c^2 + eps) + ...
        cden = c2 + eps
        rho2 = dcx * dcx + dcy * dcy
        loss = 1.0 - iou + rho2 / cden
        g_iou = zero - 1.0
        g_dcx = 2.0 * dcx / cden
        g_dcy = 2.0 * dcy / cden
        g_c2 = -rho2 / (cden * cden)
        if LOSS == 5:  # CIOU: + alpha v, alpha = v / (1 - iou + v + eps) detached
            hpe = hp + eps
            hge = hg + eps
            dt = _math.atan(wg / hge) - _math.atan(wp / hpe)
            v = _FOUR_OVER_PI2 * dt * dt
            alpha = v / (1.0 - iou + v + eps)
            loss += alpha * v
            g_t = alpha * 2.0 * _FOUR_OVER_PI2 * dt  # d / d atan(wg / hge); minus for the other
            qp = hpe * hpe + wp * wp
            qg = hge * hge + wg * wg
            g_wp = -g_t * hpe / qp
            g_hp = g_t * wp / qp
            g_wg = g_t * hge / qg
            g_hg = -g_t * wg / qg
        elif LOSS >= 6:  # EIOU: + (wp - wg)^2 / (cw^2 + eps) + (hp - hg)^2 / (ch^2 + eps)
            dw = wp - wg
            dh = hp - hg
            cwe = cw * cw + eps
            che = ch * ch + eps
            loss += dw * dw / cwe + dh * dh / che
            g_wp = 2.0 * dw / cwe
            g_wg = -g_wp
            g_hp = 2.0 * dh / che
            g_hg = -g_hp
            g_cw = -2.0 * cw * dw * dw / (cwe * cwe)
            g_ch = -2.0 * ch * dh * dh / (che * che)
    g_e1x = zero
    g_e2x = zero
    g_e1y = zero
    g_e2y = zero
    if CD:  # + lam * (sum of the 4 vertex distances) / (4 sqrt(c^2 + eps))
        ex1 = px1 - gx1
        ex2 = px2 - gx2
        ey1 = py1 - gy1
        ey2 = py2 - gy2
        d11 = tl.sqrt(ex1 * ex1 + ey1 * ey1)
        d21 = tl.sqrt(ex2 * ex2 + ey1 * ey1)
        d22 = tl.sqrt(ex2 * ex2 + ey2 * ey2)
        d12 = tl.sqrt(ex1 * ex1 + ey2 * ey2)
        total = d11 + d21 + d22 + d12
        diag = tl.sqrt(c2 + eps)
        g_total = p0 / (4.0 * diag)
        loss += g_total * total
        g_c2 += -0.5 * g_total * total / (diag * diag)
        g_e1x = g_total * (_unit(ex1, d11) + _unit(ex1, d12))
        g_e2x = g_total * (_unit(ex2, d21) + _unit(ex2, d22))
        g_e1y = g_total * (_unit(ey1, d11) + _unit(ey1, d21))
        g_e2y = g_total * (_unit(ey2, d22) + _unit(ey2, d12))
    if LOSS == 7:  # FOCAL_EIOU: iou^gamma (a constant for the gradient) times EIoU
        f = _math.power(iou, p0)
        loss = f * loss
        g_iou *= f
        g_union *= f
        g_wp *= f
        g_hp *= f
        g_wg *= f
        g_hg *= f
        g_cw *= f
        g_ch *= f
        g_dcx *= f
        g_dcy *= f
        g_c2 *= f
    # iou = inter / (ap + ag - inter + eps); union = ap + ag - inter
    g_inter = g_iou * (den + inter) / (den * den) - g_union
    g_area = g_union - g_iou * inter / (den * den)  # d / d ap = d / d ag
    g_cw += 2.0 * cw * g_c2
    g_ch += 2.0 * ch * g_c2
    g_wp += g_area * hp
    g_hp += g_area * wp
    g_wg += g_area * hg
    g_hg += g_area * wg
    dpx1, dpx2, dgx1, dgx2 = _axis_grads(px1, px2, gx1, gx2, g_inter * ih, g_cw, g_dcx, g_e1x, g_e2x)
    dpy1, dpy2, dgy1, dgy2 = _axis_grads(py1, py2, gy1, gy2, g_inter * iw, g_ch, g_dcy, g_e1y, g_e2y)
    return loss, dpx1, dpy1, dpx2, dpy2, g_wp, g_hp, dgx1, dgy1, dgx2, dgy2, g_wg, g_hg


@triton.jit
def _load_pair(b1_ptr, b2_ptr, n, FMT: tl.constexpr, BLOCK: tl.constexpr):
    """This program's box pairs: ids, mask, raw coordinates and corners of both boxes."""
    pid = tl.program_id(0).to(tl.int64)
    rows = pid * BLOCK + tl.arange(0, BLOCK)
    mask = rows < n
    pa, pb, pc, pd = _load_raw(b1_ptr, rows, mask)
    ga, gb, gc, gd = _load_raw(b2_ptr, rows, mask)
    px1, py1, px2, py2 = _corners(pa, pb, pc, pd, FMT)
    gx1, gy1, gx2, gy2 = _corners(ga, gb, gc, gd, FMT)
    return pid, rows, mask, pa, pb, pc, pd, ga, gb, gc, gd, px1, py1, px2, py2, gx1, gy1, gx2, gy2


@triton.jit
def _forward_kernel(b1_ptr, b2_ptr, out_ptr, part_ptr, n, eps, p0,
                    LOSS: tl.constexpr, CD: tl.constexpr, FMT: tl.constexpr, REDUCE: tl.constexpr,
                    BLOCK: tl.constexpr):
    pid, rows, mask, pa, pb, pc, pd, ga, gb, gc, gd, px1, py1, px2, py2, gx1, gy1, gx2, gy2 = _load_pair(
        b1_ptr, b2_ptr, n, FMT, BLOCK)
    loss, _, _, _, _, _, _, _, _, _, _, _, _ = _terms(LOSS, CD, px1, py1, px2, py2, gx1, gy1, gx2, gy2, eps, p0)
    E.store_loss(loss, tl.where(mask, 1.0, 0.0), pid, rows, mask, out_ptr, part_ptr, False, REDUCE)


@triton.jit
def _store_box_grad(ptr, rows, mask, g, a, b, c, d, gx1, gy1, gx2, gy2, g_w, g_h, FMT: tl.constexpr):
    """g times the gradients for the raw coordinates (a, b, c, d) of one box, from the
    positional adjoints of its corners and the adjoints of its width and height."""
    x1, y1, x2, y2 = _to_xyxy(a, b, c, d, FMT)
    ga, gc = _raw_axis_grad(x1, x2, gx1, gx2, g_w, FMT)
    gb, gd = _raw_axis_grad(y1, y2, gy1, gy2, g_h, FMT)
    ty = ptr.dtype.element_ty
    tl.store(ptr + rows * 4, (g * ga).to(ty), mask=mask)
    tl.store(ptr + rows * 4 + 1, (g * gb).to(ty), mask=mask)
    tl.store(ptr + rows * 4 + 2, (g * gc).to(ty), mask=mask)
    tl.store(ptr + rows * 4 + 3, (g * gd).to(ty), mask=mask)


@triton.jit
def _backward_kernel(b1_ptr, b2_ptr, g_ptr, stat_ptr, d1_ptr, d2_ptr, n, eps, p0,
                     LOSS: tl.constexpr, CD: tl.constexpr, FMT: tl.constexpr, REDUCE: tl.constexpr,
                     NEED1: tl.constexpr, NEED2: tl.constexpr, BLOCK: tl.constexpr):
    pid, rows, mask, pa, pb, pc, pd, ga, gb, gc, gd, px1, py1, px2, py2, gx1, gy1, gx2, gy2 = _load_pair(
        b1_ptr, b2_ptr, n, FMT, BLOCK)
    g = E.grad_scale(g_ptr, stat_ptr, rows, mask, REDUCE)
    _, dpx1, dpy1, dpx2, dpy2, dwp, dhp, dgx1, dgy1, dgx2, dgy2, dwg, dhg = _terms(
        LOSS, CD, px1, py1, px2, py2, gx1, gy1, gx2, gy2, eps, p0)
    if NEED1:
        _store_box_grad(d1_ptr, rows, mask, g, pa, pb, pc, pd, dpx1, dpy1, dpx2, dpy2, dwp, dhp, FMT)
    if NEED2:
        _store_box_grad(d2_ptr, rows, mask, g, ga, gb, gc, gd, dgx1, dgy1, dgx2, dgy2, dwg, dhg, FMT)


@triton.jit
def _pairwise_kernel(b1_ptr, b2_ptr, out_ptr, n, m, eps,
                     KIND: tl.constexpr, FMT: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr):
    """One [BLOCK_N, BLOCK_M] tile of the [n, m] matrix of boxes1 x boxes2 (torchvision's
    box_iou family: no eps in IoU and GIoU, eps in the DIoU diagonal and CIoU's alpha)."""
    rows = tl.program_id(0).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = tl.program_id(1).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    rmask = rows < n
    cmask = cols < m
    pa, pb, pc, pd = _load_raw(b1_ptr, rows, rmask)
    ga, gb, gc, gd = _load_raw(b2_ptr, cols, cmask)
    px1, py1, px2, py2 = _corners(pa, pb, pc, pd, FMT)
    gx1, gy1, gx2, gy2 = _corners(ga, gb, gc, gd, FMT)
    px1, py1, px2, py2 = px1[:, None], py1[:, None], px2[:, None], py2[:, None]
    gx1, gy1, gx2, gy2 = gx1[None, :], gy1[None, :], gx2[None, :], gy2[None, :]
    iw, cw, dcx = _axis(px1, px2, gx1, gx2)
    ih, ch, dcy = _axis(py1, py2, gy1, gy2)
    wp = px2 - px1
    hp = py2 - py1
    wg = gx2 - gx1
    hg = gy2 - gy1
    inter = iw * ih
    union = wp * hp + wg * hg - inter
    iou = inter / union
    if KIND == 0:
        res = iou
    elif KIND == 1:
        area_c = cw * ch
        res = iou - (area_c - union) / area_c
    else:
        res = iou - (dcx * dcx + dcy * dcy) / (cw * cw + ch * ch + eps)
        if KIND == 3:
            dt = _math.atan(wp / hp) - _math.atan(wg / hg)
            v = _FOUR_OVER_PI2 * dt * dt
            res -= v / (1.0 - iou + v + eps) * v
    offs = rows[:, None] * m + cols[None, :]
    tl.store(out_ptr + offs, res.to(out_ptr.dtype.element_ty), mask=rmask[:, None] & cmask[None, :])


SPACE = [{"BLOCK": b, "num_warps": w, "num_stages": 1} for b in (256, 512, 1024, 2048) for w in (4, 8)]
DEFAULT = {"BLOCK": 512, "num_warps": 4, "num_stages": 1}
PAIR_SPACE = [{"BLOCK_N": bn, "BLOCK_M": bm, "num_warps": w, "num_stages": 1}
              for bn in (32, 64, 128) for bm in (64, 128) for w in (4, 8)]
PAIR_DEFAULT = {"BLOCK_N": 64, "BLOCK_M": 64, "num_warps": 4, "num_stages": 1}
FORWARD_SPACE = _tuning.Space("boxes.forward", _forward_kernel, SPACE, DEFAULT)
BACKWARD_SPACE = _tuning.Space("boxes.backward", _backward_kernel, SPACE, DEFAULT)
PAIRWISE_SPACE = _tuning.Space("boxes.pairwise", _pairwise_kernel, PAIR_SPACE, PAIR_DEFAULT)


def _device_name(t: torch.Tensor) -> str | None:
    return torch.cuda.get_device_name(t.device) if t.is_cuda else None


def _key(loss: int, cd: bool, fmt: int, reduce: int, n: int, *tensors) -> tuple:
    dtypes = "/".join(str(t.dtype).removeprefix("torch.") for t in tensors)
    return (loss, int(cd), fmt, reduce, _tuning.bucket(n), dtypes)


def forward(loss: int, cd: bool, fmt: int, eps: float, p0: float, reduce: int, b1, b2):
    """Loss per pair ([n], "none") or the 0-dim reduction, in b1's dtype, and the fp32 stats
    [normaliser, result] the backward reads. b1, b2: contiguous [n, 4]. The "mean" of no
    pairs is 0."""
    n = b1.shape[0]
    if reduce == MEAN and n == 0:
        reduce = SUM
    out = torch.empty((n,) if reduce == NONE else (), dtype=b1.dtype, device=b1.device)
    flags = dict(LOSS=loss, CD=cd, FMT=fmt, REDUCE=reduce)

    def launch(c):
        n_part = triton.cdiv(n, c["BLOCK"])
        if reduce == NONE:
            part = out  # the kernel writes no partials
        else:
            part = _reduce.partials(n_part, False, b1.device)
        FORWARD_SPACE.kernel[(n_part,)](b1, b2, out, part, n, float(eps), float(p0), **flags, **c)
        return part

    part = torch.empty(0, dtype=torch.float32, device=b1.device)
    if n > 0:
        part = launch(_tuning.pick(FORWARD_SPACE, _key(loss, cd, fmt, reduce, n, b1, b2), _device_name(b1), launch))
    stats = torch.empty(2, dtype=torch.float32, device=b1.device)
    if reduce != NONE:
        stats = _reduce.finish(part, part.numel(), out, n, False, reduce)
    return out, stats


def backward(loss: int, cd: bool, fmt: int, eps: float, p0: float, reduce: int, b1, b2, g, stats, need):
    """Gradients for b1 and b2 (None unless `need` asks), each in its tensor's dtype."""
    n = b1.shape[0]
    grads = [torch.empty_like(t) if want else None for t, want in zip((b1, b2), need)]
    if n == 0 or not any(need):
        return tuple(grads)
    flags = dict(LOSS=loss, CD=cd, FMT=fmt, REDUCE=reduce, NEED1=bool(need[0]), NEED2=bool(need[1]))
    d1, d2 = (t if t is not None else b1 for t in grads)

    def launch(c):
        BACKWARD_SPACE.kernel[(triton.cdiv(n, c["BLOCK"]),)](
            b1, b2, g, stats, d1, d2, n, float(eps), float(p0), **flags, **c)

    key = _key(loss, cd, fmt, reduce, n, b1, b2) + (tuple(bool(v) for v in need),)
    launch(_tuning.pick(BACKWARD_SPACE, key, _device_name(b1), launch))
    return tuple(grads)


def pairwise(kind: int, fmt: int, eps: float, b1, b2):
    """The [n, m] matrix for contiguous b1 [n, 4] and b2 [m, 4], in b1's dtype."""
    n, m = b1.shape[0], b2.shape[0]
    out = torch.empty((n, m), dtype=b1.dtype, device=b1.device)
    if n == 0 or m == 0:
        return out

    def launch(c):
        grid = (triton.cdiv(n, c["BLOCK_N"]), triton.cdiv(m, c["BLOCK_M"]))
        PAIRWISE_SPACE.kernel[grid](b1, b2, out, n, m, float(eps), KIND=kind, FMT=fmt, **c)

    dtypes = "/".join(str(t.dtype).removeprefix("torch.") for t in (b1, b2))
    key = (kind, fmt, _tuning.bucket(n), _tuning.bucket(m), dtypes)
    launch(_tuning.pick(PAIRWISE_SPACE, key, _device_name(b1), launch))
    return out
