"""Metric-learning kernels and their launchers.

Embeddings `x` [B, D] arrive contiguous; labels are int64 [B]. A distance is one of
EUCLID (norm(f_i - f_j)), SQUARED (its square) or COSINE (1 - u_i . u_j); f is x itself,
or u = x / max(norm(x), 1e-12) when NORMED (`normalize`, and always for COSINE), as
`F.normalize`. The row norms come from `_row_sq_norm_kernel` (fp32 squared norms), and a
normalised row is the raw row times its inverse norm on the fly: no normalised copy exists.

Triplet mining (`triplet_loss`):
- batch_hard: `_hard_forward_kernel` tiles the Gram matrix with `tl.dot` over blocks of
  anchors, keeps per anchor a running farthest positive and nearest negative (ties to the
  first index, as torch.max), then recomputes the two chosen distances exactly from the
  rows (no cancellation at 0 distance). Per anchor it writes O(1) numbers; no B x B
  tensor exists in the forward or the backward. The backward is a segmented gather:
  every anchor's two pairs are sorted by their other end (torch.argsort, stable) and
  `_hard_backward_kernel` adds, per row, its own pairs and the pairs that point to it.
- batch_all: `_pdist_kernel` writes the exact B x B distance matrix, `_all_mine_kernel`
  (one program per anchor) counts, for every valid (p, n), the active triplets of each
  (a, p) and (a, n) pair into a B x B weight matrix W = dL/dd (O(B^2) memory, never B^3),
  and `_all_backward_kernel` turns W into the gradient with one weighted GEMM.
Every gradient w.r.t. normalised rows goes through `_normalize_backward` (the projection
of `F.normalize`).

Reductions are two stage: the per-anchor losses and counts are the partials that
`kernels/_reduce.finish` adds in a fixed order.
"""

import torch
import triton
import triton.language as tl

from . import _math, _reduce, _tuning
from ._reduce import MEAN, NONE, SUM  # noqa: F401 (re-exported for the public layer)

# distances
EUCLID, SQUARED, COSINE = range(3)
_NORM_EPS = tl.constexpr(1e-12)  # F.normalize's eps


def _device_name(t: torch.Tensor) -> str | None:
    return torch.cuda.get_device_name(t.device) if t.is_cuda else None


def _dtype_key(*tensors) -> str:
    return "/".join(str(t.dtype).removeprefix("torch.") for t in tensors)


# --- shared jit helpers ---------------------------------------------------------------------

@triton.jit
def _inv_norm(nsq, NORMED: tl.constexpr):
    """1 / max(norm, eps) for normalised rows, else 1."""
    if NORMED:
        return 1.0 / tl.maximum(tl.sqrt(nsq), _NORM_EPS)
    else:
        return tl.full(nsq.shape, 1.0, tl.float32)


@triton.jit
def _load_rows(x_ptr, rows, rmask, cols, cmask, D, inv):
    """Rows `rows` of x at columns `cols` as fp32 [R, C], scaled by `inv` per row (0 where masked)."""
    v = tl.load(x_ptr + rows[:, None] * D + cols[None, :], mask=rmask[:, None] & cmask[None, :], other=0.0)
    return v.to(tl.float32) * inv[:, None]


@triton.jit
def _distance(acc, METRIC: tl.constexpr):
    """The distance from the exact per-pair sum: sum of squared differences, or the dot for COSINE."""
    if METRIC == 0:
        return tl.sqrt(acc)
    elif METRIC == 1:
        return acc
    else:
        return 1.0 - acc


@triton.jit
def _pair_term(f1, f2, METRIC: tl.constexpr):
    """The summand of `_distance`'s acc for one pair of (scaled) rows."""
    if METRIC == 2:
        return f1 * f2
    else:
        diff = f1 - f2
        return diff * diff


@triton.jit
def _ddist_first(f1, f2, d, METRIC: tl.constexpr):
    """d dist(f1, f2) / d f1, with 0 (not inf) at euclidean distance 0."""
    if METRIC == 0:
        return (f1 - f2) * tl.where(d > 0, 1.0 / tl.where(d > 0, d, 1.0), 0.0)
    elif METRIC == 1:
        return 2.0 * (f1 - f2)
    else:
        return -f2


@triton.jit
def _ddist_second(f1, f2, d, METRIC: tl.constexpr):
    """d dist(f1, f2) / d f2."""
    if METRIC == 2:
        return -f1
    else:
        return -_ddist_first(f1, f2, d, METRIC)


@triton.jit
def _normalize_backward(df, f, nsq, inv, NORMED: tl.constexpr):
    """Gradient w.r.t. the raw row from the gradient w.r.t. its normalised form f = x * inv
    (rows along axis 0): (df - f (f . df)) * inv, or df * inv where the norm is clamped."""
    if NORMED:
        proj = tl.sum(f * df, axis=1)
        proj = tl.where(tl.sqrt(nsq) >= _NORM_EPS, proj, 0.0)
        return (df - f * proj[:, None]) * inv[:, None]
    else:
        return df


@triton.jit
def _grad_scale(g_ptr, stat_ptr, idx, mask, REDUCE: tl.constexpr):
    """d(result) / d(per-anchor loss): grad_output[idx] ("none"), grad_output ("sum") or
    grad_output / max(count, 1) ("mean": the mean of nothing is 0)."""
    if REDUCE == 0:
        return tl.load(g_ptr + idx, mask=mask, other=0.0).to(tl.float32)
    else:
        g = tl.load(g_ptr).to(tl.float32)
        if REDUCE == 2:
            g = g / tl.maximum(tl.load(stat_ptr), 1.0)
        return g + tl.zeros(idx.shape, tl.float32)


@triton.jit
def _row_sq_norm_kernel(x_ptr, out_ptr, B, D, BR: tl.constexpr, BD: tl.constexpr):
    rows = tl.program_id(0).to(tl.int64) * BR + tl.arange(0, BR)
    rmask = rows < B
    acc = tl.zeros([BR], tl.float32)
    one = tl.full([BR], 1.0, tl.float32)
    for k0 in range(0, D, BD):
        cols = k0 + tl.arange(0, BD)
        v = _load_rows(x_ptr, rows, rmask, cols, cols < D, D, one)
        acc += tl.sum(v * v, axis=1)
    tl.store(out_ptr + rows, acc, mask=rmask)


def row_sq_norms(x: torch.Tensor) -> torch.Tensor:
    """fp32 squared norms of the rows of the contiguous 2-D x."""
    B, D = x.shape
    out = torch.empty(B, dtype=torch.float32, device=x.device)
    if B:
        _row_sq_norm_kernel[(triton.cdiv(B, 32),)](x, out, B, D, BR=32, BD=64)
    return out


# --- triplet batch_hard ---------------------------------------------------------------------

@triton.jit
def _hard_forward_kernel(x_ptr, nsq_ptr, lab_ptr, part_ptr, pidx_ptr, nidx_ptr, dap_ptr, dan_ptr,
                         slope_ptr, B, D, margin,
                         METRIC: tl.constexpr, NORMED: tl.constexpr, SOFT: tl.constexpr,
                         UPCAST: tl.constexpr, IEEE: tl.constexpr,
                         BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    rows = tl.program_id(0).to(tl.int64) * BM + tl.arange(0, BM)
    rmask = rows < B
    lab_i = tl.load(lab_ptr + rows, mask=rmask, other=0)
    nsq_i = tl.load(nsq_ptr + rows, mask=rmask, other=1.0)
    inv_i = _inv_norm(nsq_i, NORMED)
    best_p = tl.full([BM], float("-inf"), tl.float32)
    best_n = tl.full([BM], float("inf"), tl.float32)
    idx_p = tl.full([BM], -1, tl.int64)
    idx_n = tl.full([BM], -1, tl.int64)
    for j0 in range(0, B, BN):
        cols = j0 + tl.arange(0, BN).to(tl.int64)
        cmask = cols < B
        # Gram tile x_i . x_j over D
        gram = tl.zeros([BM, BN], tl.float32)
        for k0 in range(0, D, BK):
            ks = k0 + tl.arange(0, BK)
            km = ks < D
            a = tl.load(x_ptr + rows[:, None] * D + ks[None, :], mask=rmask[:, None] & km[None, :], other=0.0)
            b = tl.load(x_ptr + cols[None, :] * D + ks[:, None], mask=km[:, None] & cmask[None, :], other=0.0)
            if UPCAST:
                a = a.to(tl.float32)
                b = b.to(tl.float32)
            if IEEE:
                gram = tl.dot(a, b, gram, input_precision="ieee")
            else:
                gram = tl.dot(a, b, gram)
        nsq_j = tl.load(nsq_ptr + cols, mask=cmask, other=1.0)
        inv_j = _inv_norm(nsq_j, NORMED)
        if NORMED:
            cos = gram * inv_i[:, None] * inv_j[None, :]
            if METRIC == 2:
                d = 1.0 - cos
            else:
                d = _distance(tl.maximum(2.0 - 2.0 * cos, 0.0), METRIC)
        else:
            d = _distance(tl.maximum(nsq_i[:, None] + nsq_j[None, :] - 2.0 * gram, 0.0), METRIC)
        lab_j = tl.load(lab_ptr + cols, mask=cmask, other=0)
        both = rmask[:, None] & cmask[None, :]
        same = lab_i[:, None] == lab_j[None, :]
        pos = both & same & (rows[:, None] != cols[None, :])
        neg = both & (lab_i[:, None] != lab_j[None, :])
        # NaN distances win (torch.max / torch.min propagate NaN)
        dp = tl.where(pos, tl.where(d != d, float("inf"), d), float("-inf"))
        tmax = tl.max(dp, axis=1)
        targ = tl.min(tl.where(pos & (dp == tmax[:, None]), cols[None, :], B), axis=1)
        upd = (targ < B) & ((idx_p < 0) | (tmax > best_p))
        best_p = tl.where(upd, tmax, best_p)
        idx_p = tl.where(upd, targ, idx_p)
        dn = tl.where(neg, tl.where(d != d, float("-inf"), d), float("inf"))
        tmin = tl.min(dn, axis=1)
        targ = tl.min(tl.where(neg & (dn == tmin[:, None]), cols[None, :], B), axis=1)
        upd = (targ < B) & ((idx_n < 0) | (tmin < best_n))
        best_n = tl.where(upd, tmin, best_n)
        idx_n = tl.where(upd, targ, idx_n)
    # the chosen distances, exactly from the rows
    valid = rmask & (idx_p >= 0) & (idx_n >= 0)
    p = tl.where(valid, idx_p, 0)
    n = tl.where(valid, idx_n, 0)
    inv_p = _inv_norm(tl.load(nsq_ptr + p, mask=valid, other=1.0), NORMED)
    inv_n = _inv_norm(tl.load(nsq_ptr + n, mask=valid, other=1.0), NORMED)
    acc_p = tl.zeros([BM], tl.float32)
    acc_n = tl.zeros([BM], tl.float32)
    for k0 in range(0, D, BK):
        ks = k0 + tl.arange(0, BK)
        km = ks < D
        f_i = _load_rows(x_ptr, rows, valid, ks, km, D, inv_i)
        acc_p += tl.sum(_pair_term(f_i, _load_rows(x_ptr, p, valid, ks, km, D, inv_p), METRIC), axis=1)
        acc_n += tl.sum(_pair_term(f_i, _load_rows(x_ptr, n, valid, ks, km, D, inv_n), METRIC), axis=1)
    d_ap = _distance(acc_p, METRIC)
    d_an = _distance(acc_n, METRIC)
    if SOFT:
        z = d_ap - d_an
        loss = _math.softplus(z)
        slope = 1.0 / (1.0 + _math.exp(-z))
    else:
        z = d_ap - d_an + margin
        loss = tl.where(z < 0, 0.0, z)  # relu, NaN kept
        slope = tl.where(z > 0, 1.0, 0.0)
    tl.store(part_ptr + rows, tl.where(valid, loss, 0.0), mask=rmask)
    tl.store(part_ptr + B + rows, tl.where(valid, 1.0, 0.0), mask=rmask)
    tl.store(pidx_ptr + rows, tl.where(valid, idx_p, -1), mask=rmask)
    tl.store(nidx_ptr + rows, tl.where(valid, idx_n, -1), mask=rmask)
    tl.store(dap_ptr + rows, d_ap, mask=rmask)
    tl.store(dan_ptr + rows, d_an, mask=rmask)
    tl.store(slope_ptr + rows, tl.where(valid, slope, 0.0), mask=rmask)


@triton.jit
def _hard_backward_kernel(x_ptr, nsq_ptr, pidx_ptr, nidx_ptr, dap_ptr, dan_ptr, slope_ptr, g_ptr, stat_ptr,
                          order_ptr, start_ptr, dx_ptr, B, D,
                          METRIC: tl.constexpr, NORMED: tl.constexpr, REDUCE: tl.constexpr,
                          BD: tl.constexpr):
    """One program per row k: its own two pairs as anchor, then every pair whose other end is k."""
    k = tl.program_id(0).to(tl.int64)
    one = tl.full([1], 1, tl.int1)
    kk = tl.full([1], 0, tl.int64) + k
    cols = tl.arange(0, BD)
    cm = cols < D
    nsq_k = tl.load(nsq_ptr + kk)
    inv_k = _inv_norm(nsq_k, NORMED)
    f_k = _load_rows(x_ptr, kk, one, cols, cm, D, inv_k)
    c = tl.load(slope_ptr + kk) * _grad_scale(g_ptr, stat_ptr, kk, one, REDUCE)
    p = tl.load(pidx_ptr + kk)
    n = tl.load(nidx_ptr + kk)
    valid = p >= 0
    p = tl.where(valid, p, 0)
    n = tl.where(valid, n, 0)
    f_p = _load_rows(x_ptr, p, valid, cols, cm, D, _inv_norm(tl.load(nsq_ptr + p, mask=valid, other=1.0), NORMED))
    f_n = _load_rows(x_ptr, n, valid, cols, cm, D, _inv_norm(tl.load(nsq_ptr + n, mask=valid, other=1.0), NORMED))
    c = tl.where(valid, c, 0.0)
    df = c[:, None] * (_ddist_first(f_k, f_p, tl.load(dap_ptr + kk)[:, None], METRIC)
                       - _ddist_first(f_k, f_n, tl.load(dan_ptr + kk)[:, None], METRIC))
    start = tl.load(start_ptr + k)
    end = tl.load(start_ptr + k + 1)
    for e in range(start, end):
        ent = tl.load(order_ptr + e + tl.zeros([1], tl.int64))
        is_neg = ent >= B
        a = tl.where(is_neg, ent - B, ent)
        ca = tl.load(slope_ptr + a) * _grad_scale(g_ptr, stat_ptr, a, one, REDUCE)
        ca = tl.where(is_neg, -ca, ca)
        d = tl.where(is_neg, tl.load(dan_ptr + a), tl.load(dap_ptr + a))
        f_a = _load_rows(x_ptr, a, one, cols, cm, D, _inv_norm(tl.load(nsq_ptr + a), NORMED))
        df += ca[:, None] * _ddist_second(f_a, f_k, d[:, None], METRIC)
    dx = _normalize_backward(df, f_k, nsq_k, inv_k, NORMED)
    tl.store(dx_ptr + kk[:, None] * D + cols[None, :], dx.to(dx_ptr.dtype.element_ty), mask=cm[None, :])


_HARD_SPACE_CONFIGS = [
    {"BM": bm, "BN": bn, "BK": bk, "num_warps": w, "num_stages": s}
    for bm in (32, 64, 128) for bn in (32, 64) for bk in (32, 64) for w in (4, 8) for s in (2, 3)
]
HARD_FORWARD_SPACE = _tuning.Space(
    "metric.triplet_hard_forward", _hard_forward_kernel, _HARD_SPACE_CONFIGS,
    {"BM": 32, "BN": 32, "BK": 32, "num_warps": 4, "num_stages": 2},
)


def _upcast_flags(x: torch.Tensor) -> dict:
    """tl.dot operand handling: fp32 in IEEE precision (no TF32: mining must see the same
    order as the fp32 reference); fp16 / bf16 on tensor cores, upcast under the interpreter."""
    return dict(UPCAST=not x.is_cuda, IEEE=x.dtype == torch.float32 or not x.is_cuda)


def triplet_hard_forward(x, labels, margin: float, metric: int, normed: bool, soft: bool):
    """Per-anchor partials [2B] (loss, valid) and what the backward needs:
    (nsq, pidx, nidx, d_ap, d_an, slope)."""
    B, D = x.shape
    dev = x.device
    nsq = row_sq_norms(x)
    part = torch.empty(2 * B, dtype=torch.float32, device=dev)
    pidx = torch.empty(B, dtype=torch.int64, device=dev)
    nidx = torch.empty_like(pidx)
    dap, dan, slope = (torch.empty(B, dtype=torch.float32, device=dev) for _ in range(3))
    if B == 0:
        return part, (nsq, pidx, nidx, dap, dan, slope)
    flags = dict(METRIC=metric, NORMED=normed, SOFT=soft, **_upcast_flags(x))

    def launch(c):
        _hard_forward_kernel[(triton.cdiv(B, c["BM"]),)](
            x, nsq, labels, part, pidx, nidx, dap, dan, slope, B, D, margin, **flags, **c)

    key = (metric, normed, soft, _tuning.bucket(B), _tuning.bucket(D), _dtype_key(x))
    launch(_tuning.pick(HARD_FORWARD_SPACE, key, _device_name(x), launch))
    return part, (nsq, pidx, nidx, dap, dan, slope)


def triplet_hard_backward(x, saved, g, stats, metric: int, normed: bool, reduce: int):
    nsq, pidx, nidx, dap, dan, slope = saved
    B, D = x.shape
    dx = torch.empty_like(x)
    if B == 0:
        return dx
    # every pair (a, p*(a)) and (a, n*(a)) grouped by its other end; entries a + B are negatives
    ends = torch.cat([pidx, nidx])
    order = torch.argsort(ends, stable=True)
    start = torch.searchsorted(ends[order], torch.arange(B + 1, device=x.device))
    _hard_backward_kernel[(B,)](x, nsq, pidx, nidx, dap, dan, slope, g, stats, order, start, dx, B, D,
                                METRIC=metric, NORMED=normed, REDUCE=reduce,
                                BD=triton.next_power_of_2(D))
    return dx


# --- triplet batch_all ----------------------------------------------------------------------

@triton.jit
def _pdist_kernel(x_ptr, nsq_ptr, dist_ptr, B, D, METRIC: tl.constexpr, NORMED: tl.constexpr,
                  BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    """The exact distance matrix from the rows (differences, not the Gram expansion)."""
    rows = tl.program_id(0).to(tl.int64) * BM + tl.arange(0, BM)
    cols = tl.program_id(1).to(tl.int64) * BN + tl.arange(0, BN)
    rmask = rows < B
    cmask = cols < B
    inv_i = _inv_norm(tl.load(nsq_ptr + rows, mask=rmask, other=1.0), NORMED)
    inv_j = _inv_norm(tl.load(nsq_ptr + cols, mask=cmask, other=1.0), NORMED)
    acc = tl.zeros([BM, BN], tl.float32)
    for k0 in range(0, D, BK):
        ks = k0 + tl.arange(0, BK)
        km = ks < D
        f_i = _load_rows(x_ptr, rows, rmask, ks, km, D, inv_i)
        f_j = _load_rows(x_ptr, cols, cmask, ks, km, D, inv_j)
        acc += tl.sum(_pair_term(f_i[:, None, :], f_j[None, :, :], METRIC), axis=2)
    tl.store(dist_ptr + rows[:, None] * B + cols[None, :], _distance(acc, METRIC),
             mask=rmask[:, None] & cmask[None, :])


@triton.jit
def _all_mine_kernel(dist_ptr, lab_ptr, part_ptr, w_ptr, B, margin, SOFT: tl.constexpr,
                     BP: tl.constexpr, BN: tl.constexpr):
    """One program per anchor a: every valid (p, n), the anchor's loss sum and active count,
    and W[a, p] = sum_n h'(l_apn), W[a, n] = -sum_p h'(l_apn) (W starts at 0)."""
    a = tl.program_id(0).to(tl.int64)
    lab_a = tl.load(lab_ptr + a)
    loss = tl.zeros([BP], tl.float32)
    count = tl.zeros([BP], tl.float32)
    for p0 in range(0, B, BP):
        p = p0 + tl.arange(0, BP).to(tl.int64)
        pm = p < B
        pos = pm & (tl.load(lab_ptr + p, mask=pm, other=0) == lab_a) & (p != a)
        if tl.sum(pos.to(tl.int32), axis=0) > 0:
            d_ap = tl.load(dist_ptr + a * B + p, mask=pos, other=0.0)
            w_p = tl.zeros([BP], tl.float32)
            for n0 in range(0, B, BN):
                n = n0 + tl.arange(0, BN).to(tl.int64)
                nm = n < B
                neg = nm & (tl.load(lab_ptr + n, mask=nm, other=0) != lab_a)
                d_an = tl.load(dist_ptr + a * B + n, mask=neg, other=0.0)
                trip = pos[:, None] & neg[None, :]
                if SOFT:
                    z = d_ap[:, None] - d_an[None, :]
                    lz = tl.where(trip, _math.softplus(z), 0.0)
                    h = tl.where(trip, 1.0 / (1.0 + _math.exp(-z)), 0.0)
                    active = trip
                else:
                    z = d_ap[:, None] - d_an[None, :] + margin
                    lz = tl.where(trip & ~(z < 0), z, 0.0)  # relu, NaN kept
                    active = trip & (z > 0)
                    h = tl.where(active, 1.0, 0.0)
                loss += tl.sum(lz, axis=1)
                count += tl.sum(tl.where(active, 1.0, 0.0), axis=1)
                w_p += tl.sum(h, axis=1)
                w_n = tl.load(w_ptr + a * B + n, mask=neg, other=0.0)
                tl.store(w_ptr + a * B + n, w_n - tl.sum(h, axis=0), mask=neg)
            tl.store(w_ptr + a * B + p, w_p, mask=pos)
    tl.store(part_ptr + a, tl.sum(loss, axis=0))
    tl.store(part_ptr + B + a, tl.sum(count, axis=0))


@triton.jit
def _all_backward_kernel(x_ptr, nsq_ptr, w_ptr, dist_ptr, g_ptr, stat_ptr, dx_ptr, df_ptr, B, D,
                         METRIC: tl.constexpr, NORMED: tl.constexpr, REDUCE: tl.constexpr,
                         BM: tl.constexpr, BN: tl.constexpr, BD: tl.constexpr):
    """dF_k = sum_j T_kj (f_k - f_j) (COSINE: -sum_j T_kj f_j), T_kj = phi(d_kj)(s_k W_kj + s_j W_jk),
    phi = 1/d, 2 or 1: one GEMM over j. Writes dx, or fp32 dF when rows are normalised."""
    rows = tl.program_id(0).to(tl.int64) * BM + tl.arange(0, BM)
    dcols = tl.program_id(1).to(tl.int64) * BD + tl.arange(0, BD)
    rmask = rows < B
    dmask = dcols < D
    s_r = _grad_scale(g_ptr, stat_ptr, rows, rmask, REDUCE)
    inv_i = _inv_norm(tl.load(nsq_ptr + rows, mask=rmask, other=1.0), NORMED)
    acc = tl.zeros([BM, BD], tl.float32)
    rowsum = tl.zeros([BM], tl.float32)
    for j0 in range(0, B, BN):
        cols = j0 + tl.arange(0, BN).to(tl.int64)
        cmask = cols < B
        m2 = rmask[:, None] & cmask[None, :]
        w_kj = tl.load(w_ptr + rows[:, None] * B + cols[None, :], mask=m2, other=0.0)
        w_jk = tl.load(w_ptr + cols[None, :] * B + rows[:, None], mask=m2, other=0.0)
        d = tl.load(dist_ptr + rows[:, None] * B + cols[None, :], mask=m2, other=0.0)
        s_c = _grad_scale(g_ptr, stat_ptr, cols, cmask, REDUCE)
        if METRIC == 0:
            phi = tl.where(d > 0, 1.0 / tl.where(d > 0, d, 1.0), 0.0)
        elif METRIC == 1:
            phi = tl.full([BM, BN], 2.0, tl.float32)
        else:
            phi = tl.full([BM, BN], 1.0, tl.float32)
        t = tl.where(m2, (s_r[:, None] * w_kj + s_c[None, :] * w_jk) * phi, 0.0)
        rowsum += tl.sum(t, axis=1)
        inv_j = _inv_norm(tl.load(nsq_ptr + cols, mask=cmask, other=1.0), NORMED)
        f_j = _load_rows(x_ptr, cols, cmask, dcols, dmask, D, inv_j)
        acc = tl.dot(t, f_j, acc, input_precision="ieee")
    if METRIC == 2:
        df = -acc
    else:
        df = rowsum[:, None] * _load_rows(x_ptr, rows, rmask, dcols, dmask, D, inv_i) - acc
    m2 = rmask[:, None] & dmask[None, :]
    if NORMED:
        tl.store(df_ptr + rows[:, None] * D + dcols[None, :], df, mask=m2)
    else:
        tl.store(dx_ptr + rows[:, None] * D + dcols[None, :], df.to(dx_ptr.dtype.element_ty), mask=m2)


@triton.jit
def _normalize_backward_kernel(df_ptr, x_ptr, nsq_ptr, dx_ptr, D, BD: tl.constexpr):
    k = tl.program_id(0).to(tl.int64) + tl.zeros([1], tl.int64)
    one = tl.full([1], 1, tl.int1)
    cols = tl.arange(0, BD)
    cm = cols < D
    nsq = tl.load(nsq_ptr + k)
    inv = _inv_norm(nsq, True)
    f = _load_rows(x_ptr, k, one, cols, cm, D, inv)
    df = tl.load(df_ptr + k[:, None] * D + cols[None, :], mask=cm[None, :], other=0.0)
    dx = _normalize_backward(df, f, nsq, inv, True)
    tl.store(dx_ptr + k[:, None] * D + cols[None, :], dx.to(dx_ptr.dtype.element_ty), mask=cm[None, :])


ALL_MINE_SPACE = _tuning.Space(
    "metric.triplet_all_mine", _all_mine_kernel,
    [{"BP": bp, "BN": bn, "num_warps": w, "num_stages": 1} for bp in (16, 32, 64) for bn in (64, 128, 256)
     for w in (4, 8)],
    {"BP": 32, "BN": 64, "num_warps": 4, "num_stages": 1},
)
_PDIST = {"BM": 32, "BN": 32, "BK": 8}
_ALL_BACKWARD = {"BM": 32, "BN": 32, "BD": 32}


def triplet_all_forward(x, labels, margin: float, metric: int, normed: bool, soft: bool):
    """Per-anchor partials [2B] (loss sum, active count) and (nsq, dist, W) for the backward."""
    B, D = x.shape
    dev = x.device
    nsq = row_sq_norms(x)
    dist = torch.empty(B, B, dtype=torch.float32, device=dev)
    w = torch.zeros(B, B, dtype=torch.float32, device=dev)
    part = torch.empty(2 * B, dtype=torch.float32, device=dev)
    if B == 0:
        return part, (nsq, dist, w)
    c = _PDIST
    _pdist_kernel[(triton.cdiv(B, c["BM"]), triton.cdiv(B, c["BN"]))](
        x, nsq, dist, B, D, METRIC=metric, NORMED=normed, **c)

    def launch(c):
        w.zero_()  # the kernel accumulates into W: reset between autotune trials
        _all_mine_kernel[(B,)](dist, labels, part, w, B, margin, SOFT=soft, **c)

    key = (soft, _tuning.bucket(B))
    launch(_tuning.pick(ALL_MINE_SPACE, key, _device_name(x), launch))
    return part, (nsq, dist, w)


def triplet_all_backward(x, saved, g, stats, metric: int, normed: bool, reduce: int):
    nsq, dist, w = saved
    B, D = x.shape
    dx = torch.empty_like(x)
    if B == 0:
        return dx
    df = torch.empty(B, D, dtype=torch.float32, device=x.device) if normed else dx
    c = _ALL_BACKWARD
    _all_backward_kernel[(triton.cdiv(B, c["BM"]), triton.cdiv(D, c["BD"]))](
        x, nsq, w, dist, g, stats, dx, df, B, D, METRIC=metric, NORMED=normed, REDUCE=reduce, **c)
    if normed:
        _normalize_backward_kernel[(B,)](df, x, nsq, dx, D, BD=triton.next_power_of_2(D))
    return dx


def finish_anchor_sum(part: torch.Tensor, B: int, reduce: int):
    """(fp32 0-dim total, stats) from per-anchor partials: stats[0] is the count, and "mean"
    divides by max(count, 1) in the backward (the mean of nothing is 0)."""
    total = torch.empty((), dtype=torch.float32, device=part.device)
    stats = _reduce.finish(part, B, total, 0.0, True, SUM)
    return total, stats
