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

Row losses (triplet_margin, cosine_embedding, contrastive, center, ring) take one program
per block of rows: a pass over D for the row statistics, then the loss; the backward
recomputes the statistics and writes the gradients in a second pass. Centers' gradients
(center, triplet-center, center-invariant) and `update_centers` are segmented sums over
the samples sorted by label (torch.argsort stable + searchsorted on the device; one
program per class; no atomics). triplet_center mines the nearest other center over Gram
tiles like batch_hard. batch_contrastive tiles the pairs with exact distances and its
backward is a GEMM over the same tiles (nothing B x B stored). range_loss runs one program
per class over the label-sorted samples (its mean, a k-pass top-k search of its pair
distances, its samples' gradients) and tiles the pairs of class means for the closest.
margin_ranking and hinge_embedding are elementwise losses on kernels/_elementwise.py.

Reductions are two stage (per-program or per-anchor partials that `kernels/_reduce.finish`
adds in a fixed order): deterministic.
"""

import functools
import itertools

import torch
import triton
import triton.language as tl

from . import _elementwise as E
from . import _math, _reduce, _tuning
from ._reduce import MEAN, NONE, SUM  # noqa: F401 (re-exported for the public layer)

# distances
EUCLID, SQUARED, COSINE = range(3)
_NORM_EPS = tl.constexpr(1e-12)  # F.normalize's eps


def _device_name(t: torch.Tensor) -> str | None:
    return torch.cuda.get_device_name(t.device) if t.is_cuda else None


def _dtype_key(*tensors) -> str:
    return "/".join(str(t.dtype).removeprefix("torch.") for t in tensors)


def _space(name: str, kernel, default: dict, **choices) -> _tuning.Space:
    """An autotune Space over the product of `choices` (a list per meta-parameter)."""
    configs = [dict(zip(choices, values)) for values in itertools.product(*choices.values())]
    return _tuning.Space(name, kernel, configs, default)


def _tuned(space: _tuning.Space, key: tuple, like: torch.Tensor, launch):
    """`launch(config)` with the config `_tuning.pick` chooses for `key` (DEFAULT under the
    interpreter). Every launch may be an autotune trial: it must write, not accumulate."""
    return launch(_tuning.pick(space, key + (_dtype_key(like),), _device_name(like), launch))


def _b(n: int) -> int:
    return _tuning.bucket(n)


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
        return g + (idx * 0).to(tl.float32)


@triton.jit
def _gram_tile(q_ptr, k_ptr, rows, rmask, cols, cmask, D, UPCAST: tl.constexpr, IEEE: tl.constexpr,
               BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    """fp32 [BM, BN] tile of q_i . k_j over D with tl.dot (fp32 operands in IEEE precision)."""
    gram = tl.zeros([BM, BN], tl.float32)
    for k0 in range(0, D, BK):
        ks = k0 + tl.arange(0, BK)
        km = ks < D
        a = tl.load(q_ptr + rows[:, None] * D + ks[None, :], mask=rmask[:, None] & km[None, :], other=0.0)
        b = tl.load(k_ptr + cols[None, :] * D + ks[:, None], mask=km[:, None] & cmask[None, :], other=0.0)
        if UPCAST:
            a = a.to(tl.float32)
            b = b.to(tl.float32)
        if IEEE:
            gram = tl.dot(a, b, gram, input_precision="ieee")
        else:
            gram = tl.dot(a, b, gram)
    return gram


@triton.jit
def _running_max(d, mask, cols, n, best, idx):
    """One tile of an online argmax along axis 1 over the masked entries: NaN counts as the
    largest (torch.max propagates it), ties go to the first index. idx -1: none yet."""
    v = tl.where(mask, tl.where(d != d, float("inf"), d), float("-inf"))
    tmax = tl.max(v, axis=1)
    targ = tl.min(tl.where(mask & (v == tmax[:, None]), cols[None, :], n), axis=1)
    upd = (targ < n) & ((idx < 0) | (tmax > best))
    return tl.where(upd, tmax, best), tl.where(upd, targ, idx)


@triton.jit
def _running_min(d, mask, cols, n, best, idx):
    """As _running_max, for the smallest."""
    best, idx = _running_max(-d, mask, cols, n, -best, idx)
    return -best, idx


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


ROW_SQ_NORM_SPACE = _space("metric.row_sq_norm", _row_sq_norm_kernel,
                           {"BR": 32, "BD": 64, "num_warps": 4, "num_stages": 1},
                           BR=[16, 32, 64], BD=[64, 128, 256], num_warps=[2, 4, 8], num_stages=[1])


def row_sq_norms(x: torch.Tensor) -> torch.Tensor:
    """fp32 squared norms of the rows of the contiguous 2-D x."""
    B, D = x.shape
    out = torch.empty(B, dtype=torch.float32, device=x.device)
    if B:
        _tuned(ROW_SQ_NORM_SPACE, (_b(B), _b(D)), x,
               lambda c: _row_sq_norm_kernel[(triton.cdiv(B, c["BR"]),)](x, out, B, D, **c))
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
        gram = _gram_tile(x_ptr, x_ptr, rows, rmask, cols, cmask, D, UPCAST, IEEE, BM, BN, BK)
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
        best_p, idx_p = _running_max(d, pos, cols, B, best_p, idx_p)
        best_n, idx_n = _running_min(d, neg, cols, B, best_n, idx_n)
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


HARD_BACKWARD_SPACE = _space("metric.triplet_hard_backward", _hard_backward_kernel,
                             {"num_warps": 4, "num_stages": 1}, num_warps=[1, 2, 4, 8], num_stages=[1])


def _upcast_flags(x: torch.Tensor, other: torch.Tensor | None = None) -> dict:
    """tl.dot operand handling: fp32 in IEEE precision (no TF32: mining must see the same
    order as the fp32 reference); fp16 / bf16 on tensor cores; upcast to fp32 under the
    interpreter and when the two operands' dtypes differ."""
    upcast = not x.is_cuda or (other is not None and other.dtype != x.dtype)
    return dict(UPCAST=upcast, IEEE=upcast or x.dtype == torch.float32)


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

    _tuned(HARD_FORWARD_SPACE, (metric, normed, soft, _b(B), _b(D)), x, launch)
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
    flags = dict(METRIC=metric, NORMED=normed, REDUCE=reduce, BD=triton.next_power_of_2(D))
    _tuned(HARD_BACKWARD_SPACE, (metric, normed, reduce, _b(B), _b(D)), x,
           lambda c: _hard_backward_kernel[(B,)](x, nsq, pidx, nidx, dap, dan, slope, g, stats, order, start, dx,
                                                 B, D, **flags, **c))
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
_PAIR_TILES = dict(BM=[16, 32, 64], BN=[16, 32, 64], num_warps=[2, 4, 8], num_stages=[1])
_PAIR_DEFAULT = {"BM": 32, "BN": 32, "num_warps": 4, "num_stages": 1}
PDIST_SPACE = _space("metric.pdist", _pdist_kernel, _PAIR_DEFAULT, **_PAIR_TILES)
ALL_BACKWARD_SPACE = _space("metric.triplet_all_backward", _all_backward_kernel, _PAIR_DEFAULT, **_PAIR_TILES)
NORMALIZE_BACKWARD_SPACE = _space("metric.normalize_backward", _normalize_backward_kernel,
                                  {"num_warps": 4, "num_stages": 1}, num_warps=[1, 2, 4, 8], num_stages=[1])


def _pair_blocks(x: torch.Tensor) -> dict:
    """BK (the depth of a [BM, BN, BK] difference tile) and BD (the columns of a backward GEMM
    block): register-sized on the GPU; deeper under the interpreter, whose cost is per
    operation rather than per element."""
    return {"BK": 8, "BD": 32} if x.is_cuda else {"BK": 64, "BD": 128}


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
    bk = _pair_blocks(x)["BK"]
    _tuned(PDIST_SPACE, (metric, normed, _b(B), _b(D)), x,
           lambda c: _pdist_kernel[(triton.cdiv(B, c["BM"]), triton.cdiv(B, c["BN"]))](
               x, nsq, dist, B, D, METRIC=metric, NORMED=normed, BK=bk, **c))

    def launch(c):
        w.zero_()  # the kernel accumulates into W: reset between autotune trials
        _all_mine_kernel[(B,)](dist, labels, part, w, B, margin, SOFT=soft, **c)

    _tuned(ALL_MINE_SPACE, (soft, _b(B)), x, launch)
    return part, (nsq, dist, w)


def triplet_all_backward(x, saved, g, stats, metric: int, normed: bool, reduce: int):
    nsq, dist, w = saved
    B, D = x.shape
    dx = torch.empty_like(x)
    if B == 0:
        return dx
    df = torch.empty(B, D, dtype=torch.float32, device=x.device) if normed else dx
    bd = _pair_blocks(x)["BD"]
    _tuned(ALL_BACKWARD_SPACE, (metric, normed, reduce, _b(B), _b(D)), x,
           lambda c: _all_backward_kernel[(triton.cdiv(B, c["BM"]), triton.cdiv(D, bd))](
               x, nsq, w, dist, g, stats, dx, df, B, D, METRIC=metric, NORMED=normed, REDUCE=reduce, BD=bd, **c))
    if normed:
        _tuned(NORMALIZE_BACKWARD_SPACE, (_b(B), _b(D)), x,
               lambda c: _normalize_backward_kernel[(B,)](df, x, nsq, dx, D, BD=triton.next_power_of_2(D), **c))
    return dx


def finish_anchor_sum(part: torch.Tensor, B: int, reduce: int):
    """(fp32 0-dim total, stats) from per-anchor partials: stats[0] is the count, and "mean"
    divides by max(count, 1) in the backward (the mean of nothing is 0)."""
    total = torch.empty((), dtype=torch.float32, device=part.device)
    stats = _reduce.finish(part, B, total, 0.0, True, SUM)
    return total, stats


# --- row losses: one program per block of rows, the row statistics then the loss ----------

# LOSS ids of the row kernels
TRIPLET_MARGIN, COSINE_EMBEDDING, CONTRASTIVE, CENTER, RING = range(5)
# OPT bits: TRIPLET_MARGIN swap, p == 2, p == 1
SWAP, P2, P1 = 1, 2, 4
_COS_EPS = tl.constexpr(1e-12)  # torch cosine_embedding_loss's EPSILON


@triton.jit
def _pnorm_terms(v, p, OPT: tl.constexpr):
    """|v|^p elementwise (p = 2 and p = 1 exact)."""
    if OPT & 2:
        return v * v
    elif OPT & 4:
        return tl.abs(v)
    else:
        return _math.power(tl.abs(v), p)


@triton.jit
def _pnorm(s, p, OPT: tl.constexpr):
    """S^(1/p)."""
    if OPT & 2:
        return tl.sqrt(s)
    elif OPT & 4:
        return s
    else:
        return _math.power(s, 1.0 / p)


@triton.jit
def _dpnorm(v, d, p, OPT: tl.constexpr):
    """d norm_p(v) / dv = |v|^(p-1) sign(v) / d^(p-1), 0 where d = 0 (as torch's norm backward)."""
    if OPT & 2:
        return v * tl.where(d > 0, 1.0 / tl.where(d > 0, d, 1.0), 0.0)
    elif OPT & 4:
        return _math.sign(v)
    else:
        a = tl.abs(v)
        r = _math.power(tl.where(d > 0, a / tl.where(d > 0, d, 1.0), 0.0), p - 1.0)
        return tl.where(d > 0, r * _math.sign(v), 0.0)


@triton.jit
def _row_terms(LOSS: tl.constexpr, a, b):
    """Per-element summands of the three row statistics (TRIPLET_MARGIN's are in _row_stats)."""
    if LOSS == 1:  # COSINE_EMBEDDING: a.b, a.a, b.b
        return a * b, a * a, b * b
    elif LOSS == 2 or LOSS == 3:  # CONTRASTIVE / CENTER: |a - b|^2
        diff = a - b
        return diff * diff, a * 0.0, a * 0.0
    else:  # RING: |a|^2
        return a * a, a * 0.0, a * 0.0


@triton.jit
def _row_loss(LOSS: tl.constexpr, OPT: tl.constexpr, s0, s1, s2, t, r, p0, p1):
    """Per-row loss and the coefficients k0, k1, k2 of its gradient (see _row_grads)."""
    zero = s0 * 0.0
    if LOSS == 0:  # TRIPLET_MARGIN: s = |a-p+eps|^p, |a-n+eps|^p, |p-n+eps|^p; p0 = p, p1 = margin
        d_ap = _pnorm(s0, p0, OPT)
        d_an = _pnorm(s1, p0, OPT)
        if OPT & 1:
            d_pn = _pnorm(s2, p0, OPT)
            # torch.minimum: the gradient goes to the smaller, half to each on a tie
            w_an = tl.where(d_an < d_pn, 1.0, tl.where(d_an == d_pn, 0.5, 0.0))
            w_pn = 1.0 - w_an
            d_neg = tl.minimum(d_an, d_pn)
        else:
            w_an = zero + 1.0
            w_pn = zero
            d_neg = d_an
        z = p1 + d_ap - d_neg
        loss = tl.where(z < 0, 0.0, z)  # clamp_min(., 0): NaN kept, gradient passes at 0
        h = tl.where(z >= 0, 1.0, 0.0)
        return loss, h, -h * w_an, -h * w_pn, d_ap, d_an, _pnorm(s2, p0, OPT)
    elif LOSS == 1:  # COSINE_EMBEDDING: p0 = margin; t = target
        den = tl.sqrt((s1 + _COS_EPS) * (s2 + _COS_EPS))
        cos = s0 / den
        z = cos - p0
        neg = tl.where(z < 0, 0.0, z)
        loss = tl.where(t == 1, 1.0 - cos, 0.0) + tl.where(t == -1, neg, 0.0)
        dcos = tl.where(t == 1, -1.0, 0.0) + tl.where((t == -1) & (z >= 0), 1.0, 0.0)
        return loss, dcos, cos, den, zero, zero, zero
    elif LOSS == 2:  # CONTRASTIVE: p0 = margin; t = target (1 similar, 0 dissimilar)
        d = tl.sqrt(s0)
        gap = p0 - d
        hinge = tl.where(gap > 0, gap, 0.0)
        loss = 0.5 * t * s0 + 0.5 * (1.0 - t) * hinge * hinge
        # d/d(a - b): t (a - b) - (1 - t) hinge (a - b) / d, direction 0 at d = 0
        k = t - (1.0 - t) * hinge * tl.where(d > 0, 1.0 / tl.where(d > 0, d, 1.0), 0.0)
        return loss, k, zero, zero, zero, zero, zero
    elif LOSS == 3:  # CENTER: 1/2 |x - c_y|^2
        return 0.5 * s0, zero + 1.0, zero, zero, zero, zero, zero
    else:  # RING: 1/2 (|x| - r)^2; k0 multiplies x, k1 = d loss / d r
        d = tl.sqrt(s0)
        e = d - r
        return 0.5 * e * e, e * tl.where(d > 0, 1.0 / tl.where(d > 0, d, 1.0), 0.0), -e, zero, zero, zero, zero


@triton.jit
def _row_stats(LOSS: tl.constexpr, OPT: tl.constexpr, a_ptr, b_ptr, c_ptr, rows, brows, rmask, bmask, D, p0, p3,
               BR: tl.constexpr, BD: tl.constexpr):
    s0 = tl.zeros([BR], tl.float32)
    s1 = tl.zeros([BR], tl.float32)
    s2 = tl.zeros([BR], tl.float32)
    one = tl.full([BR], 1.0, tl.float32)
    for k0 in range(0, D, BD):
        cols = k0 + tl.arange(0, BD)
        cm = cols < D
        a = _load_rows(a_ptr, rows, rmask, cols, cm, D, one)
        if LOSS != 4:
            b = _load_rows(b_ptr, brows, bmask, cols, cm, D, one)
        else:
            b = a
        if LOSS == 0:
            c = _load_rows(c_ptr, rows, rmask, cols, cm, D, one)
            m2 = rmask[:, None] & cm[None, :]
            s0 += tl.sum(tl.where(m2, _pnorm_terms(a - b + p3, p0, OPT), 0.0), axis=1)
            s1 += tl.sum(tl.where(m2, _pnorm_terms(a - c + p3, p0, OPT), 0.0), axis=1)
            if OPT & 1:
                s2 += tl.sum(tl.where(m2, _pnorm_terms(b - c + p3, p0, OPT), 0.0), axis=1)
        else:
            t0, t1, t2 = _row_terms(LOSS, a, b)
            s0 += tl.sum(t0, axis=1)
            s1 += tl.sum(t1, axis=1)
            s2 += tl.sum(t2, axis=1)
    return s0, s1, s2


@triton.jit
def _row_prologue(lab_ptr, t_ptr, r_ptr, N, C, LOSS: tl.constexpr, HAS_T: tl.constexpr, BR: tl.constexpr):
    """This program's rows, the rows of b they pair with (CENTER: c_y, masked where y is out
    of range), the per-row target and the ring radius."""
    rows = tl.program_id(0).to(tl.int64) * BR + tl.arange(0, BR)
    rmask = rows < N
    if LOSS == 3:
        y = tl.load(lab_ptr + rows, mask=rmask, other=0)
        ok = (y >= 0) & (y < C)
        bmask = rmask & ok
        brows = tl.where(bmask, y, 0)
    else:
        ok = rmask
        bmask = rmask
        brows = rows
    if HAS_T:
        t = tl.load(t_ptr + rows, mask=rmask, other=0.0).to(tl.float32)
    else:
        t = tl.zeros([BR], tl.float32)
    if LOSS == 4:
        r = tl.load(r_ptr).to(tl.float32)
    else:
        r = 0.0
    return rows, rmask, brows, bmask, ok, t, r


@triton.jit
def _row_forward_kernel(a_ptr, b_ptr, c_ptr, lab_ptr, t_ptr, r_ptr, out_ptr, part_ptr, N, D, C, p0, p1, p3,
                        LOSS: tl.constexpr, OPT: tl.constexpr, HAS_T: tl.constexpr, REDUCE: tl.constexpr,
                        BR: tl.constexpr, BD: tl.constexpr):
    rows, rmask, brows, bmask, ok, t, r = _row_prologue(lab_ptr, t_ptr, r_ptr, N, C, LOSS, HAS_T, BR)
    s0, s1, s2 = _row_stats(LOSS, OPT, a_ptr, b_ptr, c_ptr, rows, brows, rmask, bmask, D, p0, p3, BR, BD)
    loss, _, _, _, _, _, _ = _row_loss(LOSS, OPT, s0, s1, s2, t, r, p0, p1)
    loss = tl.where(ok, loss, float("nan"))  # an out-of-range label gives NaN
    loss = tl.where(rmask, loss, 0.0)
    if REDUCE == 0:
        tl.store(out_ptr + rows, loss.to(out_ptr.dtype.element_ty), mask=rmask)
    else:
        tl.store(part_ptr + tl.program_id(0), tl.sum(loss, axis=0))


@triton.jit
def _row_backward_kernel(a_ptr, b_ptr, c_ptr, lab_ptr, t_ptr, r_ptr, g_ptr, stat_ptr, da_ptr, db_ptr, dc_ptr,
                         dr_ptr, N, D, C, p0, p1, p3,
                         LOSS: tl.constexpr, OPT: tl.constexpr, HAS_T: tl.constexpr, REDUCE: tl.constexpr,
                         NEED_A: tl.constexpr, NEED_B: tl.constexpr, NEED_C: tl.constexpr,
                         BR: tl.constexpr, BD: tl.constexpr):
    """Recomputes the row statistics, then writes the gradients block by block. CENTER
    writes only da here (its centers' gradient is `_center_grad_kernel`'s); RING writes
    the per-row d loss / d r (times grad) to dr."""
    rows, rmask, brows, bmask, ok, t, r = _row_prologue(lab_ptr, t_ptr, r_ptr, N, C, LOSS, HAS_T, BR)
    s0, s1, s2 = _row_stats(LOSS, OPT, a_ptr, b_ptr, c_ptr, rows, brows, rmask, bmask, D, p0, p3, BR, BD)
    _, k0, k1, k2, e0, e1, e2 = _row_loss(LOSS, OPT, s0, s1, s2, t, r, p0, p1)
    g = _grad_scale(g_ptr, stat_ptr, rows, rmask, REDUCE)
    g = tl.where(ok, g, float("nan"))
    if LOSS == 4:
        tl.store(dr_ptr + rows, tl.where(rmask, g * k1, 0.0), mask=rmask)
    one = tl.full([BR], 1.0, tl.float32)
    for d0 in range(0, D, BD):
        cols = d0 + tl.arange(0, BD)
        cm = cols < D
        m2 = rmask[:, None] & cm[None, :]
        offs = rows[:, None] * D + cols[None, :]
        a = _load_rows(a_ptr, rows, rmask, cols, cm, D, one)
        if LOSS != 4:
            b = _load_rows(b_ptr, brows, bmask, cols, cm, D, one)
        else:
            b = a
        if LOSS == 0:  # k0 = dL/dd_ap, k1 = dL/dd_an, k2 = dL/dd_pn; e = the three distances
            c = _load_rows(c_ptr, rows, rmask, cols, cm, D, one)
            g_ap = _dpnorm(a - b + p3, e0[:, None], p0, OPT) * k0[:, None]
            g_an = _dpnorm(a - c + p3, e1[:, None], p0, OPT) * k1[:, None]
            if OPT & 1:
                g_pn = _dpnorm(b - c + p3, e2[:, None], p0, OPT) * k2[:, None]
            else:
                g_pn = a * 0.0
            da = g_ap + g_an
            db = g_pn - g_ap
            dc = -g_an - g_pn
        elif LOSS == 1:  # k0 = dL/dcos, k1 = cos, k2 = sqrt(m1 m2)
            inv = 1.0 / k2[:, None]
            da = k0[:, None] * (b * inv - k1[:, None] * a / (s1[:, None] + _COS_EPS))
            db = k0[:, None] * (a * inv - k1[:, None] * b / (s2[:, None] + _COS_EPS))
            dc = a * 0.0
        elif LOSS == 4:
            da = k0[:, None] * a
            db = a * 0.0
            dc = a * 0.0
        else:  # CONTRASTIVE / CENTER: k0 (a - b)
            da = k0[:, None] * (a - b)
            db = -da
            dc = a * 0.0
        if NEED_A:
            tl.store(da_ptr + offs, (g[:, None] * da).to(da_ptr.dtype.element_ty), mask=m2)
        if NEED_B:
            tl.store(db_ptr + offs, (g[:, None] * db).to(db_ptr.dtype.element_ty), mask=m2)
        if NEED_C:
            tl.store(dc_ptr + offs, (g[:, None] * dc).to(dc_ptr.dtype.element_ty), mask=m2)


ROW_SPACE = [{"BR": br, "BD": bd, "num_warps": w, "num_stages": 1}
             for br in (4, 16, 32) for bd in (64, 128, 256) for w in (2, 4, 8)]
ROW_DEFAULT = {"BR": 16, "BD": 64, "num_warps": 4, "num_stages": 1}
ROW_FORWARD_SPACE = _tuning.Space("metric.row_forward", _row_forward_kernel, ROW_SPACE, ROW_DEFAULT)
ROW_BACKWARD_SPACE = _tuning.Space("metric.row_backward", _row_backward_kernel, ROW_SPACE, ROW_DEFAULT)


def _row_args(a, b, c, labels, target, radius):
    """Pointers for absent operands (never read) and the class count for CENTER."""
    C = b.shape[0] if labels is not None else 0
    return [t if t is not None else a for t in (b, c, labels, target, radius)], C


def row_forward(loss: int, opt: int, params, a, b, c, labels, target, radius, reduce: int):
    """Per-row losses ("none": [N]) or the 0-dim reduced loss (mean over N), and stats."""
    N, D = a.shape
    p0, p1, p3 = (float(v) for v in params)
    ptrs, C = _row_args(a, b, c, labels, target, radius)
    out = torch.empty((N,) if reduce == NONE else (), dtype=a.dtype, device=a.device)
    flags = dict(LOSS=loss, OPT=opt, HAS_T=target is not None, REDUCE=reduce)
    parts = {}

    def launch(cfg):
        n_part = triton.cdiv(N, cfg["BR"])
        part = out if reduce == NONE else parts.setdefault(n_part, _reduce.partials(n_part, False, a.device))
        _row_forward_kernel[(n_part,)](a, *ptrs, out, part, N, D, C, p0, p1, p3, **flags, **cfg)
        return part

    part = torch.empty(0, dtype=torch.float32, device=a.device)
    if N > 0:
        key = (loss, opt, reduce, _tuning.bucket(N), _tuning.bucket(D), _dtype_key(a))
        part = launch(_tuning.pick(ROW_FORWARD_SPACE, key, _device_name(a), launch))
    stats = torch.zeros(2, dtype=torch.float32, device=a.device)
    if reduce != NONE:
        stats = _reduce.finish(part, part.numel(), out, N, False, reduce)
    return out, stats


def row_backward(loss: int, opt: int, params, a, b, c, labels, target, radius, reduce: int, g, stats, need):
    """(da, db, dc, dr): gradients asked for by `need` (a, b, c), and for RING the per-row
    d result / d radius as fp32 [N] (the caller sums it)."""
    N, D = a.shape
    p0, p1, p3 = (float(v) for v in params)
    ptrs, C = _row_args(a, b, c, labels, target, radius)
    grads = [torch.empty_like(t) if want else None for t, want in zip((a, b, c), need)]
    dr = torch.empty(N, dtype=torch.float32, device=a.device) if loss == RING else None
    if N == 0:
        return (*grads, dr)
    flags = dict(LOSS=loss, OPT=opt, HAS_T=target is not None, REDUCE=reduce,
                 NEED_A=bool(need[0]), NEED_B=bool(need[1]), NEED_C=bool(need[2]))
    outs = [t if t is not None else a for t in (*grads, dr)]

    def launch(cfg):
        _row_backward_kernel[(triton.cdiv(N, cfg["BR"]),)](a, *ptrs, g, stats, *outs, N, D, C, p0, p1, p3,
                                                           **flags, **cfg)

    key = (loss, opt, reduce, _tuning.bucket(N), _tuning.bucket(D), _dtype_key(a), tuple(need))
    launch(_tuning.pick(ROW_BACKWARD_SPACE, key, _device_name(a), launch))
    return (*grads, dr)


# --- centers: segmented (per class) sums over the samples sorted by label ----------------

@triton.jit
def _center_segment_kernel(x_ptr, c_ptr, order_ptr, start_ptr, coef_ptr, g_ptr, stat_ptr, out_ptr, N, D, alpha,
                           UPDATE: tl.constexpr, HAS_COEF: tl.constexpr, REDUCE: tl.constexpr,
                           BD: tl.constexpr):
    """One program per (class j, block of D). The entries pointing at class j are
    order[start[j]:start[j+1]]; entry e stands for sample e % N with coefficient coef[e] (1
    without coef).
    UPDATE False: out[j] = -sum_e g_i coef_e (x_i - c_j), a centers' gradient.
    UPDATE True: c_j -= alpha sum_i (c_j - x_i) / (1 + n_j), in place, only where n_j > 0."""
    j = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1).to(tl.int64) * BD + tl.arange(0, BD)
    cm = cols < D
    start = tl.load(start_ptr + j)
    end = tl.load(start_ptr + j + 1)
    c = tl.load(c_ptr + j * D + cols, mask=cm, other=0.0).to(tl.float32)
    acc = tl.zeros([BD], tl.float32)
    for e in range(start, end):
        ent = tl.load(order_ptr + e)
        i = ent % N
        x = tl.load(x_ptr + i * D + cols, mask=cm, other=0.0).to(tl.float32)
        if UPDATE:
            acc += c - x
        else:
            w = _grad_scale(g_ptr, stat_ptr, i, i >= 0, REDUCE)
            if HAS_COEF:
                w = w * tl.load(coef_ptr + ent)
            acc += w * (x - c)
    if UPDATE:
        if end > start:
            c = c - alpha * acc / (1.0 + (end - start).to(tl.float32))
            tl.store(c_ptr + j * D + cols, c.to(c_ptr.dtype.element_ty), mask=cm)
    else:
        tl.store(out_ptr + j * D + cols, (-acc).to(out_ptr.dtype.element_ty), mask=cm)


SEGMENT_SPACE = _space("metric.center_segment", _center_segment_kernel, {"BD": 128, "num_warps": 4, "num_stages": 1},
                       BD=[64, 128, 256, 512], num_warps=[1, 2, 4], num_stages=[1])


def _segments(labels: torch.Tensor, num_classes: int):
    """(order, start): the samples sorted by label (stable) and where each class begins;
    labels outside [0, num_classes) fall in no class."""
    order = torch.argsort(labels, stable=True)
    start = torch.searchsorted(labels[order], torch.arange(num_classes + 1, device=labels.device))
    return order, start


def center_grad(x, centers, labels, g, stats, reduce: int) -> torch.Tensor:
    """d result / d centers of center_loss, deterministic (no atomics)."""
    C, D = centers.shape
    dc = torch.empty_like(centers)
    if C == 0 or D == 0:
        return dc
    order, start = _segments(labels, C)
    _tuned(SEGMENT_SPACE, (False, reduce, _b(x.shape[0]), _b(C), _b(D)), x,
           lambda c: _center_segment_kernel[(C, triton.cdiv(D, c["BD"]))](
               x, centers, order, start, x, g, stats, dc, max(x.shape[0], 1), D, 0.0,
               UPDATE=False, HAS_COEF=False, REDUCE=reduce, **c))
    return dc


def update_centers(centers, x, labels, alpha: float) -> None:
    """In place: c_j -= alpha sum_{y_i = j} (c_j - x_i) / (1 + n_j) (Wen et al. 2016).
    Runs SEGMENT_SPACE's DEFAULT, untuned: an autotune trial would apply the update again."""
    C, D = centers.shape
    if C == 0 or D == 0 or x.shape[0] == 0:
        return
    order, start = _segments(labels, C)
    c = SEGMENT_SPACE.default
    _center_segment_kernel[(C, triton.cdiv(D, c["BD"]))](
        x, centers, order, start, x, x, x, centers, x.shape[0], D, alpha,
        UPDATE=True, HAS_COEF=False, REDUCE=NONE, **c)


# --- elementwise pair losses (kernels/_elementwise.py) ---------------------------------------

MARGIN_RANKING, HINGE_EMBEDDING = range(2)


@triton.jit
def _terms(LOSS: tl.constexpr, OPT: tl.constexpr, x, y, z, q, p0, p1, p2, p3):
    """(loss, d/dx, d/dy, d/dz), torch's formulas; p0 = margin."""
    zero = tl.zeros_like(x)
    if LOSS == 0:  # MARGIN_RANKING: clamp_min(-z (x - y) + margin, 0), z = target
        u = -z * (x - y) + p0
        loss = tl.where(u < 0, 0.0, u)
        h = tl.where(u >= 0, 1.0, 0.0)  # clamp_min passes the gradient at the bound
        return loss, -h * z, h * z, -h * (x - y)
    else:  # HINGE_EMBEDDING: where(y != 1, clamp_min(margin - x, 0), 0) + where(y != -1, x, 0)
        u = p0 - x
        neg = y != 1.0
        loss = tl.where(neg, tl.where(u < 0, 0.0, u), 0.0) + tl.where(y != -1.0, x, 0.0)
        dx = tl.where(neg & (u >= 0), -1.0, 0.0) + tl.where(y != -1.0, 1.0, 0.0)
        return loss, dx, zero, zero


@triton.jit
def _forward_kernel(x_ptr, y_ptr, z_ptr, w_ptr, q_ptr, out_ptr, part_ptr, n, nq, q_div,
                    p0, p1, p2, p3,
                    LOSS: tl.constexpr, OPT: tl.constexpr, HAS_Z: tl.constexpr,
                    HAS_W: tl.constexpr, HAS_Q: tl.constexpr, REDUCE: tl.constexpr,
                    BLOCK: tl.constexpr):
    pid, offs, mask, x, y, z, w, q = E.load_block(x_ptr, y_ptr, z_ptr, w_ptr, q_ptr, n, nq, q_div, p0,
                                                  HAS_Z, HAS_W, HAS_Q, BLOCK)
    loss, _, _, _ = _terms(LOSS, OPT, x, y, z, q, p0, p1, p2, p3)
    E.store_loss(loss, w, pid, offs, mask, out_ptr, part_ptr, HAS_W, REDUCE)


@triton.jit
def _backward_kernel(x_ptr, y_ptr, z_ptr, w_ptr, q_ptr, g_ptr, stat_ptr,
                     dx_ptr, dy_ptr, dz_ptr, n, nq, q_div, p0, p1, p2, p3,
                     LOSS: tl.constexpr, OPT: tl.constexpr, HAS_Z: tl.constexpr,
                     HAS_W: tl.constexpr, HAS_Q: tl.constexpr, REDUCE: tl.constexpr,
                     NEED_X: tl.constexpr, NEED_Y: tl.constexpr, NEED_Z: tl.constexpr,
                     BLOCK: tl.constexpr):
    pid, offs, mask, x, y, z, w, q = E.load_block(x_ptr, y_ptr, z_ptr, w_ptr, q_ptr, n, nq, q_div, p0,
                                                  HAS_Z, HAS_W, HAS_Q, BLOCK)
    g = E.grad_scale(g_ptr, stat_ptr, offs, mask, REDUCE)
    _, dx, dy, dz = _terms(LOSS, OPT, x, y, z, q, p0, p1, p2, p3)
    E.store_grad(dx_ptr, offs, mask, g, w, dx, NEED_X)
    E.store_grad(dy_ptr, offs, mask, g, w, dy, NEED_Y)
    E.store_grad(dz_ptr, offs, mask, g, w, dz, NEED_Z)


FORWARD_SPACE = _tuning.Space("metric.forward", _forward_kernel, E.SPACE, E.DEFAULT)
BACKWARD_SPACE = _tuning.Space("metric.backward", _backward_kernel, E.SPACE, E.DEFAULT)
forward = functools.partial(E.forward, FORWARD_SPACE)
backward = functools.partial(E.backward, BACKWARD_SPACE)


# --- triplet-center loss: nearest other center per sample, tiled over the centers -------------

@triton.jit
def _tc_forward_kernel(x_ptr, c_ptr, xnsq_ptr, cnsq_ptr, lab_ptr, out_ptr, part_ptr, nidx_ptr, slope_ptr,
                       B, C, D, margin, REDUCE: tl.constexpr, UPCAST: tl.constexpr, IEEE: tl.constexpr,
                       BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    """Per sample: D(x, c) = 1/2 norm(x - c)^2, the nearest center n != y over Gram tiles
    (first index on ties), then relu(D(x, c_y) + margin - D(x, c_n)) with both D exact."""
    pid = tl.program_id(0)
    rows = pid.to(tl.int64) * BM + tl.arange(0, BM)
    rmask = rows < B
    y = tl.load(lab_ptr + rows, mask=rmask, other=0)
    ok = (y >= 0) & (y < C)
    nsq_i = tl.load(xnsq_ptr + rows, mask=rmask, other=0.0)
    best = tl.full([BM], float("inf"), tl.float32)
    idx = tl.full([BM], -1, tl.int64)
    for j0 in range(0, C, BN):
        cols = j0 + tl.arange(0, BN).to(tl.int64)
        cmask = cols < C
        gram = _gram_tile(x_ptr, c_ptr, rows, rmask, cols, cmask, D, UPCAST, IEEE, BM, BN, BK)
        nsq_j = tl.load(cnsq_ptr + cols, mask=cmask, other=0.0)
        sq = tl.maximum(nsq_i[:, None] + nsq_j[None, :] - 2.0 * gram, 0.0)
        other = rmask[:, None] & cmask[None, :] & (cols[None, :] != y[:, None])
        best, idx = _running_min(sq, other, cols, C, best, idx)
    valid = rmask & ok & (idx >= 0)
    yc = tl.where(valid, y, 0)
    n = tl.where(valid, idx, 0)
    one = tl.full([BM], 1.0, tl.float32)
    acc_p = tl.zeros([BM], tl.float32)
    acc_n = tl.zeros([BM], tl.float32)
    for k0 in range(0, D, BK):
        ks = k0 + tl.arange(0, BK)
        km = ks < D
        f = _load_rows(x_ptr, rows, valid, ks, km, D, one)
        acc_p += tl.sum(_pair_term(f, _load_rows(c_ptr, yc, valid, ks, km, D, one), 0), axis=1)
        acc_n += tl.sum(_pair_term(f, _load_rows(c_ptr, n, valid, ks, km, D, one), 0), axis=1)
    z = 0.5 * acc_p + margin - 0.5 * acc_n
    loss = tl.where(valid, tl.where(z < 0, 0.0, z), 0.0)
    loss = tl.where(rmask & ~ok, float("nan"), loss)  # an out-of-range label gives NaN
    tl.store(nidx_ptr + rows, tl.where(valid, idx, -1), mask=rmask)
    tl.store(slope_ptr + rows, tl.where(valid & (z > 0), 1.0, 0.0), mask=rmask)
    if REDUCE == 0:
        tl.store(out_ptr + rows, loss.to(out_ptr.dtype.element_ty), mask=rmask)
    else:
        tl.store(part_ptr + pid, tl.sum(loss, axis=0))


@triton.jit
def _tc_dx_kernel(c_ptr, lab_ptr, nidx_ptr, slope_ptr, g_ptr, stat_ptr, dx_ptr, B, C, D,
                  REDUCE: tl.constexpr, BR: tl.constexpr, BD: tl.constexpr):
    """d/dx = g slope (c_n - c_y); NaN rows for out-of-range labels."""
    rows = tl.program_id(0).to(tl.int64) * BR + tl.arange(0, BR)
    rmask = rows < B
    y = tl.load(lab_ptr + rows, mask=rmask, other=0)
    ok = (y >= 0) & (y < C)
    n = tl.load(nidx_ptr + rows, mask=rmask, other=-1)
    valid = rmask & ok & (n >= 0)
    g = _grad_scale(g_ptr, stat_ptr, rows, rmask, REDUCE) * tl.load(slope_ptr + rows, mask=rmask, other=0.0)
    g = tl.where(ok, g, float("nan"))
    one = tl.full([BR], 1.0, tl.float32)
    for d0 in range(0, D, BD):
        cols = d0 + tl.arange(0, BD)
        cm = cols < D
        diff = _load_rows(c_ptr, tl.where(valid, n, 0), valid, cols, cm, D, one) - _load_rows(
            c_ptr, tl.where(valid, y, 0), valid, cols, cm, D, one)
        tl.store(dx_ptr + rows[:, None] * D + cols[None, :], (g[:, None] * diff).to(dx_ptr.dtype.element_ty),
                 mask=rmask[:, None] & cm[None, :])


TC_FORWARD_SPACE = _tuning.Space(
    "metric.triplet_center_forward", _tc_forward_kernel, _HARD_SPACE_CONFIGS,
    {"BM": 32, "BN": 32, "BK": 32, "num_warps": 4, "num_stages": 2},
)


TC_DX_SPACE = _space("metric.triplet_center_dx", _tc_dx_kernel, {"BR": 16, "BD": 64, "num_warps": 4, "num_stages": 1},
                     BR=[8, 16, 32], BD=[64, 128, 256], num_warps=[2, 4, 8], num_stages=[1])


def triplet_center_forward(x, centers, labels, margin: float, reduce: int):
    """Loss ("none": [B]) or the 0-dim reduced loss (mean over B), stats, and (nidx, slope)."""
    B, D = x.shape
    C = centers.shape[0]
    dev = x.device
    out = torch.empty((B,) if reduce == NONE else (), dtype=x.dtype, device=dev)
    nidx = torch.empty(B, dtype=torch.int64, device=dev)
    slope = torch.empty(B, dtype=torch.float32, device=dev)
    stats = torch.zeros(2, dtype=torch.float32, device=dev)
    part = torch.empty(0, dtype=torch.float32, device=dev)
    if B > 0:
        xnsq, cnsq = row_sq_norms(x), row_sq_norms(centers)
        flags = dict(REDUCE=reduce, **_upcast_flags(x, centers))
        parts = {}

        def launch(c):
            n_part = triton.cdiv(B, c["BM"])
            part = out if reduce == NONE else parts.setdefault(n_part, _reduce.partials(n_part, False, dev))
            _tc_forward_kernel[(n_part,)](x, centers, xnsq, cnsq, labels, out, part, nidx, slope, B, C, D, margin,
                                          **flags, **c)
            return part

        part = _tuned(TC_FORWARD_SPACE, (reduce, _b(B), _b(C), _b(D), _dtype_key(centers)), x, launch)
    if reduce != NONE:
        stats = _reduce.finish(part, part.numel(), out, B, False, reduce)
    return out, stats, (nidx, slope)


def triplet_center_backward(x, centers, labels, saved, g, stats, reduce: int, need):
    """(dx, dcenters), each None unless `need` asks for it."""
    nidx, slope = saved
    B, D = x.shape
    C = centers.shape[0]
    dx = torch.empty_like(x) if need[0] else None
    dc = torch.empty_like(centers) if need[1] else None
    if need[0] and B > 0:
        _tuned(TC_DX_SPACE, (reduce, _b(B), _b(D)), x,
               lambda c: _tc_dx_kernel[(triton.cdiv(B, c["BR"]),)](centers, labels, nidx, slope, g, stats, dx,
                                                                   B, C, D, REDUCE=reduce, **c))
    if need[1] and C > 0 and D > 0:
        # entries i: (sample i, its own center, +slope); B + i: (sample i, its nearest other, -slope)
        ends = torch.cat([torch.where(nidx >= 0, labels, -1), nidx])
        coef = torch.cat([slope, -slope])
        order, start = _segments(ends, C)
        _tuned(SEGMENT_SPACE, (True, reduce, _b(B), _b(C), _b(D)), x,
               lambda c: _center_segment_kernel[(C, triton.cdiv(D, c["BD"]))](
                   x, centers, order, start, coef, g, stats, dc, max(B, 1), D, 0.0,
                   UPDATE=False, HAS_COEF=True, REDUCE=reduce, **c))
    return dx, dc


# --- center-invariant loss: 1/4 (norm(c_y)^2 - mean_k norm(c_k)^2)^2 per sample ---------------

@triton.jit
def _ci_sample_kernel(nsq_ptr, mean_ptr, lab_ptr, g_ptr, stat_ptr, out_ptr, part_ptr, B, C,
                      BACKWARD: tl.constexpr, REDUCE: tl.constexpr, BLOCK: tl.constexpr):
    """Forward: the per-sample loss 1/4 e^2, e = nsq[y] - mean (NaN for a label outside
    [0, C)), stored ("none") or as partial sums. Backward: G = g e / 2 per sample (0 for an
    out-of-range label) into out, and its partial sums."""
    pid = tl.program_id(0)
    offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < B
    y = tl.load(lab_ptr + offs, mask=mask, other=0)
    ok = mask & (y >= 0) & (y < C)
    e = tl.load(nsq_ptr + tl.where(ok, y, 0), mask=ok, other=0.0) - tl.load(mean_ptr)
    if BACKWARD:
        val = tl.where(ok, _grad_scale(g_ptr, stat_ptr, offs, mask, REDUCE) * e * 0.5, 0.0)
        tl.store(out_ptr + offs, val, mask=mask)
        tl.store(part_ptr + pid, tl.sum(val, axis=0))
    else:
        loss = tl.where(ok, 0.25 * e * e, float("nan"))
        loss = tl.where(mask, loss, 0.0)
        if REDUCE == 0:
            tl.store(out_ptr + offs, loss.to(out_ptr.dtype.element_ty), mask=mask)
        else:
            tl.store(part_ptr + pid, tl.sum(loss, axis=0))


@triton.jit
def _ci_center_kernel(c_ptr, gs_ptr, total_ptr, order_ptr, start_ptr, dc_ptr, C, D, BD: tl.constexpr):
    """dc_j = 2 c_j (sum of G over the samples of class j - sum of all G / C)."""
    j = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1).to(tl.int64) * BD + tl.arange(0, BD)
    cm = cols < D
    s = tl.load(total_ptr) * 0.0
    for e in range(tl.load(start_ptr + j), tl.load(start_ptr + j + 1)):
        s += tl.load(gs_ptr + tl.load(order_ptr + e))
    coef = 2.0 * (s - tl.load(total_ptr) / C)
    c = tl.load(c_ptr + j * D + cols, mask=cm, other=0.0).to(tl.float32)
    tl.store(dc_ptr + j * D + cols, (coef * c).to(dc_ptr.dtype.element_ty), mask=cm)


CI_SAMPLE_SPACE = _space("metric.center_invariant_sample", _ci_sample_kernel,
                         {"BLOCK": 1024, "num_warps": 4, "num_stages": 1},
                         BLOCK=[1024, 2048, 4096], num_warps=[4, 8], num_stages=[1])
CI_CENTER_SPACE = _space("metric.center_invariant_center", _ci_center_kernel,
                         {"BD": 128, "num_warps": 4, "num_stages": 1},
                         BD=[64, 128, 256, 512], num_warps=[1, 2, 4], num_stages=[1])


def _ci_samples(nsq, mean, labels, g, stats, out, C, backward: bool, reduce: int, like):
    """Run `_ci_sample_kernel` over the B samples; returns its partial sums."""
    B = labels.shape[0]

    def launch(c):
        n_part = triton.cdiv(B, c["BLOCK"])
        part = _reduce.partials(n_part, False, nsq.device)
        _ci_sample_kernel[(n_part,)](nsq, mean, labels, g, stats, out, part, B, C, BACKWARD=backward,
                                     REDUCE=reduce, **c)
        return part

    return _tuned(CI_SAMPLE_SPACE, (backward, reduce, _b(B)), like, launch)


def center_invariant_forward(centers, labels, reduce: int):
    """Loss ("none": [B]) or the 0-dim mean / sum over B, stats, and (nsq, mean) for the backward."""
    C, D = centers.shape
    B = labels.shape[0]
    dev = centers.device
    nsq = row_sq_norms(centers)
    mean = torch.zeros((), dtype=torch.float32, device=dev)
    if C > 0:
        _reduce.finish(nsq, C, mean, C, False, MEAN)
    out = torch.empty((B,) if reduce == NONE else (), dtype=centers.dtype, device=dev)
    part = torch.zeros(1, dtype=torch.float32, device=dev)
    if B > 0:
        part = _ci_samples(nsq, mean, labels, nsq, nsq, out, C, False, reduce, centers)
    stats = torch.zeros(2, dtype=torch.float32, device=dev)
    if reduce != NONE:
        stats = _reduce.finish(part, part.numel(), out, B, False, reduce)
    return out, stats, (nsq, mean)


def center_invariant_backward(centers, labels, saved, g, stats, reduce: int):
    nsq, mean = saved
    C, D = centers.shape
    B = labels.shape[0]
    dev = centers.device
    dc = torch.empty_like(centers)
    if C == 0 or D == 0:
        return dc
    gs = torch.empty(B, dtype=torch.float32, device=dev)
    total = torch.zeros((), dtype=torch.float32, device=dev)
    if B > 0:
        part = _ci_samples(nsq, mean, labels, g, stats, gs, C, True, reduce, centers)
        _reduce.finish(part, part.numel(), total, B, False, SUM)
    order, start = _segments(labels, C)
    _tuned(CI_CENTER_SPACE, (_b(B), _b(C), _b(D)), centers,
           lambda c: _ci_center_kernel[(C, triton.cdiv(D, c["BD"]))](centers, gs, total, order, start, dc, C, D,
                                                                      **c))
    return dc


# --- batch contrastive loss: every pair i < j of a batch, no B x B storage --------------------

@triton.jit
def _bc_pair_tile(x_ptr, lab_ptr, rows, rmask, lab_i, j0, B, D, margin, BM: tl.constexpr, BN: tl.constexpr,
                  BK: tl.constexpr):
    """For the tile of pairs (rows, j0 + arange(BN)): the columns, the pair mask (j != i),
    the exact squared distance, and whether the pair shares a label."""
    cols = j0 + tl.arange(0, BN).to(tl.int64)
    cmask = cols < B
    one = tl.full([BM], 1.0, tl.float32)
    sq = tl.zeros([BM, BN], tl.float32)
    for k0 in range(0, D, BK):
        ks = k0 + tl.arange(0, BK)
        km = ks < D
        f_i = _load_rows(x_ptr, rows, rmask, ks, km, D, one)
        f_j = _load_rows(x_ptr, cols, cmask, ks, km, D, one)
        sq += tl.sum(_pair_term(f_i[:, None, :], f_j[None, :, :], 0), axis=2)
    pair = rmask[:, None] & cmask[None, :] & (rows[:, None] != cols[None, :])
    same = lab_i[:, None] == tl.load(lab_ptr + cols, mask=cmask, other=0)[None, :]
    return cols, cmask, pair, sq, same


@triton.jit
def _bc_forward_kernel(x_ptr, lab_ptr, part_ptr, B, D, margin, BM: tl.constexpr, BN: tl.constexpr,
                       BK: tl.constexpr):
    """Partial sum over the pairs (i, j > i) of this block of rows i: 1/2 d^2 for a shared
    label, 1/2 relu(margin - d)^2 otherwise."""
    pid = tl.program_id(0)
    rows = pid.to(tl.int64) * BM + tl.arange(0, BM)
    rmask = rows < B
    lab_i = tl.load(lab_ptr + rows, mask=rmask, other=0)
    acc = tl.zeros([BM], tl.float32)
    for j0 in range(pid * BM, B, BN):
        cols, cmask, pair, sq, same = _bc_pair_tile(x_ptr, lab_ptr, rows, rmask, lab_i, j0, B, D, margin, BM, BN, BK)
        gap = tl.maximum(margin - tl.sqrt(sq), 0.0)
        loss = tl.where(same, 0.5 * sq, 0.5 * gap * gap)
        acc += tl.sum(tl.where(pair & (cols[None, :] > rows[:, None]), loss, 0.0), axis=1)
    tl.store(part_ptr + pid, tl.sum(acc, axis=0))


@triton.jit
def _bc_backward_kernel(x_ptr, lab_ptr, g_ptr, stat_ptr, dx_ptr, B, D, margin, BM: tl.constexpr,
                        BN: tl.constexpr, BK: tl.constexpr, BD: tl.constexpr):
    """dx_k = s sum_{j != k} T_kj (x_k - x_j), T = 1 (shared label) or -relu(margin - d)/d
    (0 at d = 0), s = grad / pairs: one GEMM per block of D; distances recomputed exactly."""
    rows = tl.program_id(0).to(tl.int64) * BM + tl.arange(0, BM)
    dcols = tl.program_id(1).to(tl.int64) * BD + tl.arange(0, BD)
    rmask = rows < B
    dmask = dcols < D
    lab_i = tl.load(lab_ptr + rows, mask=rmask, other=0)
    one_r = tl.full([BM], 1.0, tl.float32)
    one_c = tl.full([BN], 1.0, tl.float32)
    acc = tl.zeros([BM, BD], tl.float32)
    rowsum = tl.zeros([BM], tl.float32)
    for j0 in range(0, B, BN):
        cols, cmask, pair, sq, same = _bc_pair_tile(x_ptr, lab_ptr, rows, rmask, lab_i, j0, B, D, margin, BM, BN, BK)
        d = tl.sqrt(sq)
        inv = tl.where(d > 0, 1.0 / tl.where(d > 0, d, 1.0), 0.0)
        t = tl.where(pair, tl.where(same, 1.0, -tl.maximum(margin - d, 0.0) * inv), 0.0)
        rowsum += tl.sum(t, axis=1)
        acc = tl.dot(t, _load_rows(x_ptr, cols, cmask, dcols, dmask, D, one_c), acc, input_precision="ieee")
    s = tl.load(g_ptr).to(tl.float32) / tl.maximum(tl.load(stat_ptr), 1.0)
    dx = s * (rowsum[:, None] * _load_rows(x_ptr, rows, rmask, dcols, dmask, D, one_r) - acc)
    tl.store(dx_ptr + rows[:, None] * D + dcols[None, :], dx.to(dx_ptr.dtype.element_ty),
             mask=rmask[:, None] & dmask[None, :])


BC_FORWARD_SPACE = _space("metric.batch_contrastive_forward", _bc_forward_kernel, _PAIR_DEFAULT, **_PAIR_TILES)
BC_BACKWARD_SPACE = _space("metric.batch_contrastive_backward", _bc_backward_kernel, _PAIR_DEFAULT, **_PAIR_TILES)


def batch_contrastive_forward(x, labels, margin: float):
    """The 0-dim mean over pairs (0 without a pair) and stats = [max(pairs, 1), result]."""
    B, D = x.shape
    pairs = max(B * (B - 1) // 2, 1)
    out = torch.empty((), dtype=x.dtype, device=x.device)
    part = torch.zeros(1, dtype=torch.float32, device=x.device)
    if B > 0:
        bk = _pair_blocks(x)["BK"]

        def launch(c):
            n_part = triton.cdiv(B, c["BM"])
            part = _reduce.partials(n_part, False, x.device)
            _bc_forward_kernel[(n_part,)](x, labels, part, B, D, margin, BK=bk, **c)
            return part

        part = _tuned(BC_FORWARD_SPACE, (_b(B), _b(D)), x, launch)
    return out, _reduce.finish(part, part.numel(), out, pairs, False, MEAN)


def batch_contrastive_backward(x, labels, margin: float, g, stats):
    B, D = x.shape
    dx = torch.empty_like(x)
    if B > 0 and D > 0:
        bd = _pair_blocks(x)["BD"]
        blocks = dict(BK=_pair_blocks(x)["BK"], BD=bd)
        _tuned(BC_BACKWARD_SPACE, (_b(B), _b(D)), x,
               lambda c: _bc_backward_kernel[(triton.cdiv(B, c["BM"]), triton.cdiv(D, bd))](
                   x, labels, g, stats, dx, B, D, margin, **blocks, **c))
    return dx


# --- range loss: per-class top-k intra distances and the closest pair of class means ----------
# Samples are sorted by label (stable), so each class is a segment of positions [start, end)
# and is owned by its head position (start); `order[pos]` is the sample at a position.

@triton.jit
def _range_class_kernel(x_ptr, order_ptr, start_ptr, end_ptr, mean_ptr, tk_a_ptr, tk_b_ptr, tk_d_ptr, tk_c_ptr,
                        part_ptr, B, D, k, alpha, BP: tl.constexpr, BK: tl.constexpr, BD: tl.constexpr):
    """For the class headed at this position: its mean (all of D) into mean[pos]; its k
    largest intra-class distances (fewer if it has fewer pairs; ties to the first pair in
    position order) into tk_*; alpha times their harmonic mean into part[pos] (0 if one of
    them is 0, NaN if any distance of the class is NaN) and the gradient coefficients
    alpha d(harmonic mean)/d(distance) into tk_c."""
    pos = tl.program_id(0).to(tl.int64)
    start = tl.load(start_ptr + pos)
    end = tl.load(end_ptr + pos)
    head = start == pos
    tl.store(part_ptr + pos, 0.0)
    if head:
        n = end - start
        for d0 in range(0, D, BD):
            cols = d0 + tl.arange(0, BD)
            cm = cols < D
            acc = tl.zeros([BD], tl.float32)
            for e in range(start, end):
                acc += tl.load(x_ptr + tl.load(order_ptr + e) * D + cols, mask=cm, other=0.0).to(tl.float32)
            tl.store(mean_ptr + pos * D + cols, acc / n.to(tl.float32), mask=cm)
        big = (end * 0 + B) * B  # past every pair index a * B + b (int64)
        found = tl.full([], 0, tl.int32)
        has_nan = tl.full([], 0, tl.int32)
        zero_d = tl.full([], 0, tl.int32)
        inv_sum = tl.full([], 0.0, tl.float32)
        prev_v = tl.full([], float("inf"), tl.float32)
        prev_l = tl.full([], -1, tl.int64)
        one = tl.full([BP], 1.0, tl.float32)
        for t in range(0, k):
            best_v = tl.full([], float("-inf"), tl.float32)
            best_l = tl.full([], -1, tl.int64)
            for a0 in range(start, end, BP):
                a = a0 + tl.arange(0, BP).to(tl.int64)
                am = a < end
                ra = tl.load(order_ptr + a, mask=am, other=0)
                for b0 in range(a0, end, BP):
                    b = b0 + tl.arange(0, BP).to(tl.int64)
                    bm = b < end
                    rb = tl.load(order_ptr + b, mask=bm, other=0)
                    sq = tl.zeros([BP, BP], tl.float32)
                    for k0 in range(0, D, BK):
                        ks = k0 + tl.arange(0, BK)
                        km = ks < D
                        fa = _load_rows(x_ptr, ra, am, ks, km, D, one)
                        fb = _load_rows(x_ptr, rb, bm, ks, km, D, one)
                        sq += tl.sum(_pair_term(fa[:, None, :], fb[None, :, :], 0), axis=2)
                    v = tl.sqrt(sq)
                    pair = am[:, None] & bm[None, :] & (a[:, None] < b[None, :])
                    lin = a[:, None] * B + b[None, :]
                    has_nan = tl.maximum(has_nan, tl.max(tl.max(tl.where(pair & (v != v), 1, 0), axis=1), axis=0))
                    cand = pair & ((v < prev_v) | ((v == prev_v) & (lin > prev_l)))
                    tv = tl.max(tl.max(tl.where(cand, v, float("-inf")), axis=1), axis=0)
                    tlin = tl.min(tl.min(tl.where(cand & (v == tv), lin, big), axis=1), axis=0)
                    take = (tlin < big) & ((best_l < 0) | (tv > best_v) | ((tv == best_v) & (tlin < best_l)))
                    best_v = tl.where(take, tv, best_v)
                    best_l = tl.where(take, tlin, best_l)
            if best_l >= 0:
                tl.store(tk_a_ptr + pos * k + t, best_l // B)
                tl.store(tk_b_ptr + pos * k + t, best_l % B)
                tl.store(tk_d_ptr + pos * k + t, best_v)
                found += 1
                zero_d = tl.maximum(zero_d, tl.where(best_v == 0, 1, 0))
                inv_sum += 1.0 / tl.where(best_v == 0, 1.0, best_v)
                prev_v = best_v
                prev_l = best_l
        m = found.to(tl.float32)
        ok = (found > 0) & (zero_d == 0)
        s = tl.where(ok, inv_sum, 1.0)
        loss = tl.where(ok, alpha * m / s, 0.0)
        tl.store(part_ptr + pos, tl.where(has_nan > 0, float("nan"), loss))
        for t in range(0, k):
            d = tl.load(tk_d_ptr + pos * k + t)
            c = tl.where(ok & (t < found), alpha * m / (s * s) / tl.where(d == 0, 1.0, d * d), 0.0)
            tl.store(tk_c_ptr + pos * k + t, c)


@triton.jit
def _range_means_kernel(mean_ptr, start_ptr, best_ptr, bidx_ptr, B, D,
                        BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    """Per class head p: the smallest squared distance from mean p to a mean q > p (first q
    on ties; NaN counts as the smallest), +inf and -1 when there is none."""
    rows = tl.program_id(0).to(tl.int64) * BM + tl.arange(0, BM)
    rmask = rows < B
    rhead = rmask & (tl.load(start_ptr + rows, mask=rmask, other=-1) == rows)
    one_r = tl.full([BM], 1.0, tl.float32)
    one_c = tl.full([BN], 1.0, tl.float32)
    best = tl.full([BM], float("inf"), tl.float32)
    idx = tl.full([BM], -1, tl.int64)
    for j0 in range(0, B, BN):
        cols = j0 + tl.arange(0, BN).to(tl.int64)
        cmask = cols < B
        chead = cmask & (tl.load(start_ptr + cols, mask=cmask, other=-1) == cols)
        sq = tl.zeros([BM, BN], tl.float32)
        for k0 in range(0, D, BK):
            ks = k0 + tl.arange(0, BK)
            km = ks < D
            fa = _load_rows(mean_ptr, rows, rhead, ks, km, D, one_r)
            fb = _load_rows(mean_ptr, cols, chead, ks, km, D, one_c)
            sq += tl.sum(_pair_term(fa[:, None, :], fb[None, :, :], 0), axis=2)
        pair = rhead[:, None] & chead[None, :] & (cols[None, :] > rows[:, None])
        best, idx = _running_min(sq, pair, cols, B, best, idx)
    tl.store(best_ptr + rows, best, mask=rmask)
    tl.store(bidx_ptr + rows, idx, mask=rmask)


@triton.jit
def _range_backward_kernel(x_ptr, order_ptr, start_ptr, end_ptr, mean_ptr, tk_a_ptr, tk_b_ptr, tk_d_ptr,
                           tk_c_ptr, pq_ptr, dmin_ptr, g_ptr, dx_ptr, B, D, k, margin, beta, BD: tl.constexpr):
    """The class headed here writes the gradient of each of its samples: its top-k pairs
    (coefficient times the unit direction) and, if it is one of the two closest classes, the
    inter-class hinge through its mean (1/n per sample)."""
    pos = tl.program_id(0).to(tl.int64)
    start = tl.load(start_ptr + pos)
    end = tl.load(end_ptr + pos)
    if start == pos:
        cols = tl.program_id(1).to(tl.int64) * BD + tl.arange(0, BD)
        cm = cols < D
        g = tl.load(g_ptr).to(tl.float32)
        p = tl.load(pq_ptr)
        q = tl.load(pq_ptr + 1)
        dmin = tl.load(dmin_ptr)
        active = (margin - dmin > 0) & (q >= 0)
        sign = tl.where(pos == p, -1.0, tl.where(pos == q, 1.0, 0.0))
        coef = tl.where(active, 2.0 * beta * g * sign / (end - start).to(tl.float32), 0.0)
        pp = tl.where(q >= 0, p, 0)
        qq = tl.where(q >= 0, q, 0)
        diff_pq = (tl.load(mean_ptr + pp * D + cols, mask=cm, other=0.0)
                   - tl.load(mean_ptr + qq * D + cols, mask=cm, other=0.0))
        inter = coef * diff_pq
        for e in range(start, end):
            acc = inter
            for t in range(0, k):
                c = tl.load(tk_c_ptr + pos * k + t)
                ea = tl.load(tk_a_ptr + pos * k + t)
                eb = tl.load(tk_b_ptr + pos * k + t)
                w = tl.where(e == ea, 1.0, tl.where(e == eb, -1.0, 0.0)) * c * g
                if w != 0:
                    d = tl.load(tk_d_ptr + pos * k + t)
                    xa = tl.load(x_ptr + tl.load(order_ptr + ea) * D + cols, mask=cm, other=0.0).to(tl.float32)
                    xb = tl.load(x_ptr + tl.load(order_ptr + eb) * D + cols, mask=cm, other=0.0).to(tl.float32)
                    acc += w * (xa - xb) / d
            i = tl.load(order_ptr + e)
            tl.store(dx_ptr + i * D + cols, acc.to(dx_ptr.dtype.element_ty), mask=cm)


RANGE_CLASS_SPACE = _space("metric.range_class", _range_class_kernel, {"BP": 16, "num_warps": 4, "num_stages": 1},
                           BP=[16, 32], num_warps=[2, 4, 8], num_stages=[1])
RANGE_MEANS_SPACE = _space("metric.range_means", _range_means_kernel, _PAIR_DEFAULT, **_PAIR_TILES)
RANGE_BACKWARD_SPACE = _space("metric.range_backward", _range_backward_kernel, {"num_warps": 4, "num_stages": 1},
                              num_warps=[1, 2, 4], num_stages=[1])


def _class_segments(labels: torch.Tensor):
    """(order, start, end): samples sorted by label (stable) and each position's class segment."""
    order = torch.argsort(labels, stable=True)
    sl = labels[order].contiguous()
    return order, torch.searchsorted(sl, sl), torch.searchsorted(sl, sl, right=True)


def range_forward(x, labels, k: int, margin: float, alpha: float, beta: float):
    """(alpha * intra, per-class parts), the closest class pair and its squared distance,
    and what the backward needs."""
    B, D = x.shape
    dev = x.device
    order, start, end = _class_segments(labels)
    mean = torch.zeros(B, D, dtype=torch.float32, device=dev)
    tk_a, tk_b = (torch.zeros(B * k, dtype=torch.int64, device=dev) for _ in range(2))
    tk_d, tk_c = (torch.zeros(B * k, dtype=torch.float32, device=dev) for _ in range(2))
    part = torch.zeros(max(B, 1), dtype=torch.float32, device=dev)
    best = torch.full((max(B, 1),), float("inf"), dtype=torch.float32, device=dev)
    bidx = torch.full((max(B, 1),), -1, dtype=torch.int64, device=dev)
    if B > 0:
        blocks = _pair_blocks(x)
        _tuned(RANGE_CLASS_SPACE, (_b(B), _b(D)), x,
               lambda c: _range_class_kernel[(B,)](x, order, start, end, mean, tk_a, tk_b, tk_d, tk_c, part, B, D, k,
                                                   alpha, **blocks, **c))
        _tuned(RANGE_MEANS_SPACE, (_b(B), _b(D)), x,
               lambda c: _range_means_kernel[(triton.cdiv(B, c["BM"]),)](mean, start, best, bidx, B, D,
                                                                        BK=blocks["BK"], **c))
    intra = torch.empty((), dtype=torch.float32, device=dev)
    _reduce.finish(part, part.numel(), intra, 1.0, False, SUM)
    p = torch.argmin(best).reshape(1)  # the first class on ties (NaN counts as the smallest)
    pq = torch.cat([p, bidx.gather(0, p)])
    dmin = best.gather(0, p).reshape(())
    return intra, pq, dmin, (order, start, end, mean, tk_a, tk_b, tk_d, tk_c)


def range_backward(x, saved, pq, dmin, g, k: int, margin: float, beta: float):
    order, start, end, mean, tk_a, tk_b, tk_d, tk_c = saved
    B, D = x.shape
    dx = torch.empty_like(x)
    if B > 0 and D > 0:
        bd = _pair_blocks(x)["BD"]
        _tuned(RANGE_BACKWARD_SPACE, (_b(B), _b(D)), x,
               lambda c: _range_backward_kernel[(B, triton.cdiv(D, bd))](
                   x, order, start, end, mean, tk_a, tk_b, tk_d, tk_c, pq, dmin, g, dx, B, D, k, margin, beta,
                   BD=bd, **c))
    return dx
