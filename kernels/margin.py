"""Fused linear + (margin) softmax cross-entropy that never stores the B x C logits.

For embeddings x [B, D], class weights W [C, D] (optional bias [C]) and labels y [B]:

    logit_ij = rs_i * cs_j * (x_i . W_j) + b_j          (j != y_i)
    logit_iy = phi_i                                    (the target, margin applied)

with rs_i = scale / max(|x_i|, eps) when the embeddings are normalised (else scale),
cs_j = 1 / max(|W_j|, eps) when the weight rows are (else 1), eps = 1e-12 as F.normalize.

Passes (all fp32 accumulation; tl.dot operands as `_flags` says: bf16 / fp16 tensor cores
on the GPU, TF32 for the fp16 backward, fp32 IEEE for fp32 inputs and under the interpreter):
1. `_norms_kernel`: |x_i| and |W_j| (O(B + C) fp32).
2. `_partial_kernel`, grid (row blocks, class splits): each program loops over its class
   blocks, recomputes the logit tile with tl.dot and keeps an online (max, sum-exp) of the
   non-target logits per row (plus the sum of all logits for label smoothing), written to a
   [2 or 3, B, n_split] buffer: O(B * n_split), never B x C.
3. `_finish_kernel`, one program per row block: the target dot x_i . W_y (a gather-dot),
   the margin psi and its derivatives, the deterministic merge of the partials with the
   target logit into the log-sum-exp, the row loss and the per-row statistics the backward
   reads: lse, p_t = exp(phi - lse) and the target's derivative coefficients
   (Tdot, TX, TW): d phi = Tdot d(x.W_y) + TX x.dx + TW W_y.dW_y.
4. `_dx_kernel`, grid (row blocks, D blocks), B-stationary: loops over class blocks,
   recomputes the logits, dlogit = g (p - onehot(1 - eps) - eps/C), accumulates
   dlogit * d(logit)/d(dot) @ W and, for normalised embeddings, sum_j dlogit (logit - b);
   the epilogue adds the normalisation Jacobian -px rx Q x_i and the target's TX x_i.
5. `_dw_kernel`, grid (class blocks, D blocks), C-stationary: loops over row blocks, the
   same recomputation, accumulates dlogit^T @ x and the weight Jacobian terms; each dW row
   (and db entry) is written once: no atomics, no read-modify-write.
"""

import math

import torch
import triton
import triton.language as tl

from . import _math, _reduce, _tuning

# target kinds (constexpr KIND)
PLAIN, COMBINED, SPHERE = 0, 1, 2
NORM_EPS = 1e-12  # F.normalize's eps
# the singular factor sin(m1 theta + m2) / sin(theta) of the exact combined-margin gradient
# is evaluated with theta clamped to [THETA_EPS, pi - THETA_EPS]
THETA_EPS = 1e-3
_PI = tl.constexpr(math.pi)
# how many class splits the forward aims for: about this many programs in all (CUDA);
# a module constant so that tests can force programs to loop over several class blocks
TARGET_PROGRAMS = 2048
MAX_SPLIT = 256


@triton.jit
def _wrows(idx_ptr, cols, cmask, HAS_IDX: tl.constexpr):
    """The weight rows of class positions `cols`: idx[cols] for a sampled class set, else cols."""
    r = cols
    if HAS_IDX:
        r = tl.load(idx_ptr + cols, mask=cmask, other=0).to(tl.int64)
    return r


@triton.jit
def _norms_kernel(x_ptr, idx_ptr, n_ptr, N, D, HAS_IDX: tl.constexpr, BLOCK_N: tl.constexpr,
                  BLOCK_D: tl.constexpr):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    rmask = rows < N
    src = _wrows(idx_ptr, rows, rmask, HAS_IDX)
    acc = tl.zeros([BLOCK_N], tl.float32)
    for k0 in range(0, D, BLOCK_D):
        ks = k0 + tl.arange(0, BLOCK_D)
        v = tl.load(x_ptr + src[:, None] * D + ks[None, :], mask=rmask[:, None] & (ks < D)[None, :],
                    other=0.0).to(tl.float32)
        acc += tl.sum(v * v, axis=1)
    tl.store(n_ptr + rows, tl.sqrt(acc), mask=rmask)


@triton.jit
def _scales(n_ptr, idx, mask, factor, NORM: tl.constexpr):
    """(multiplier, r, p): multiplier = factor * r (normalised) or factor; r = 1/max(n, eps);
    p = r where n > eps else 0 (the Jacobian of x / max(|x|, eps))."""
    n = tl.load(n_ptr + idx, mask=mask, other=1.0)
    r = 1.0 / tl.maximum(n, 1e-12)
    p = tl.where(n > 1e-12, r, 0.0)
    if NORM:
        mult = factor * r
    else:
        mult = factor + 0.0 * r
    return mult, r, p, n


@triton.jit
def _dot_tile(x_ptr, w_ptr, rows, rmask, wr, cmask, D, UPCAST: tl.constexpr, IEEE: tl.constexpr,
              BB: tl.constexpr, BC: tl.constexpr, BK: tl.constexpr):
    """fp32 [BB, BC] tile of x_i . W_j for weight rows wr."""
    acc = tl.zeros([BB, BC], tl.float32)
    for k0 in range(0, D, BK):
        ks = k0 + tl.arange(0, BK)
        km = ks < D
        a = tl.load(x_ptr + rows[:, None] * D + ks[None, :], mask=rmask[:, None] & km[None, :], other=0.0)
        b = tl.load(w_ptr + wr[None, :] * D + ks[:, None], mask=km[:, None] & cmask[None, :], other=0.0)
        acc = _mm(a, b, acc, UPCAST, IEEE)
    return acc


@triton.jit
def _mm(a, b, acc, UPCAST: tl.constexpr, IEEE: tl.constexpr):
    """acc + a @ b: operands in fp32 (UPCAST; TF32 unless IEEE) or in b's dtype (tensor cores)."""
    if UPCAST:
        a = a.to(tl.float32)
        b = b.to(tl.float32)
    else:
        a = a.to(b.dtype)
    if IEEE:
        return tl.dot(a, b, acc, input_precision="ieee")
    else:
        return tl.dot(a, b, acc)


@triton.jit
def _partial_kernel(x_ptr, w_ptr, b_ptr, nx_ptr, nw_ptr, y_ptr, idx_ptr, part_ptr, B, C, D, n_split, cb_per_prog,
                    scale, NORM_X: tl.constexpr, NORM_W: tl.constexpr, HAS_BIAS: tl.constexpr,
                    SMOOTH: tl.constexpr, HAS_IDX: tl.constexpr, UPCAST: tl.constexpr, IEEE: tl.constexpr,
                    BB: tl.constexpr, BC: tl.constexpr, BK: tl.constexpr):
    pid_b = tl.program_id(0).to(tl.int64)
    split = tl.program_id(1).to(tl.int64)
    rows = pid_b * BB + tl.arange(0, BB)
    rmask = rows < B
    y = tl.load(y_ptr + rows, mask=rmask, other=-1)
    rs, _r, _p, _n = _scales(nx_ptr, rows, rmask, scale, NORM_X)
    m = tl.full([BB], float("-inf"), tl.float32)
    s = tl.zeros([BB], tl.float32)
    zsum = tl.zeros([BB], tl.float32)
    for i in range(0, cb_per_prog):
        cols = (split * cb_per_prog + i) * BC + tl.arange(0, BC)
        cmask = cols < C
        cs, _rw, _pw, _nw = _scales(nw_ptr, cols, cmask, 1.0, NORM_W)
        wr = _wrows(idx_ptr, cols, cmask, HAS_IDX)
        z = _dot_tile(x_ptr, w_ptr, rows, rmask, wr, cmask, D, UPCAST, IEEE, BB, BC, BK)
        z = z * rs[:, None] * cs[None, :]
        if HAS_BIAS:
            z += tl.load(b_ptr + wr, mask=cmask, other=0.0).to(tl.float32)[None, :]
        if SMOOTH:
            zsum += tl.sum(tl.where(cmask[None, :], z, 0.0), axis=1)
        zo = tl.where(cmask[None, :] & (cols[None, :] != y[:, None]), z, float("-inf"))
        m_new = tl.maximum(m, tl.max(zo, axis=1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        s = s * tl.exp(m - m_safe) + tl.sum(tl.exp(zo - m_safe[:, None]), axis=1)
        m = m_new
    base = rows * n_split + split
    tl.store(part_ptr + base, m, mask=rmask)
    tl.store(part_ptr + B * n_split + base, s, mask=rmask)
    if SMOOTH:
        tl.store(part_ptr + 2 * B * n_split + base, zsum, mask=rmask)


@triton.jit
def _clamp_cos(c):
    """c clamped to [-1, 1]; NaN stays NaN (tl.minimum / maximum would drop it)."""
    return tl.where(c != c, c, tl.minimum(tl.maximum(c, -1.0), 1.0))


@triton.jit
def _combined(c, m1, m2, m3, th_cos, EASY: tl.constexpr, DETACHED: tl.constexpr):
    """F(c) = cos(m1 theta + m2) - m3 while m1 theta + m2 <= pi (c >= th_cos), else the
    continuation c - (1 + m3 + cos theta_max); easy_margin keeps c where c <= 0.
    Returns (F, F'), F' = 1 when the margin is detached."""
    theta = _math.acos(c)
    a = m1 * theta + m2
    on = c >= th_cos
    f = tl.where(on, tl.cos(a) - m3, c - (1.0 + m3 + th_cos))
    tc = tl.minimum(tl.maximum(theta, 1e-3), _PI - 1e-3)
    df = tl.where(on, m1 * tl.sin(m1 * tc + m2) / tl.sin(tc), 1.0)
    if EASY:
        f = tl.where(c > 0, f, c)
        df = tl.where(c > 0, df, 1.0)
    if DETACHED:
        df = df * 0.0 + 1.0
    return f, df


@triton.jit
def _psi(c, m, lam):
    """G(c) = (lam c + psi) / (1 + lam), psi = (-1)^k T_m(c) - 2k, k = #{j in 1..m-1 :
    c <= cos(j pi / m)} (so theta in [k pi/m, (k+1) pi/m]); T_m by the Chebyshev recurrence,
    T_m' = m U_{m-1}. Returns (G, G')."""
    t_prev = tl.full(c.shape, 1.0, tl.float32)
    t_cur = c
    u_prev = tl.zeros(c.shape, tl.float32)  # U_{-1}
    u_cur = tl.full(c.shape, 1.0, tl.float32)  # U_0
    k = tl.zeros(c.shape, tl.float32)
    for j in range(1, m):
        t_next = 2.0 * c * t_cur - t_prev
        t_prev = t_cur
        t_cur = t_next
        u_next = 2.0 * c * u_cur - u_prev
        u_prev = u_cur
        u_cur = u_next
        k += tl.where(c <= tl.cos(c * 0.0 + j * _PI / m), 1.0, 0.0)
    sgn = 1.0 - 2.0 * (k - 2.0 * tl.floor(k * 0.5))
    psi = sgn * t_cur - 2.0 * k
    dpsi = sgn * m * u_cur
    return (lam * c + psi) / (1.0 + lam), (lam + dpsi) / (1.0 + lam)


@triton.jit
def _finish_kernel(x_ptr, w_ptr, b_ptr, nx_ptr, nw_ptr, y_ptr, idx_ptr, part_ptr, out_ptr, row_ptr, red_ptr,
                   B, C, D, n_split, ignore_index, scale, eps_smooth, m1, m2, m3, th_cos, mi, lam,
                   KIND: tl.constexpr, NORM_X: tl.constexpr, NORM_W: tl.constexpr, HAS_BIAS: tl.constexpr,
                   SMOOTH: tl.constexpr, EASY: tl.constexpr, DETACHED: tl.constexpr, REDUCE: tl.constexpr,
                   HAS_IDX: tl.constexpr, SHARD: tl.constexpr, BB: tl.constexpr, BS: tl.constexpr,
                   BK: tl.constexpr):
    pid = tl.program_id(0)
    rows = pid.to(tl.int64) * BB + tl.arange(0, BB)
    rmask = rows < B
    y = tl.load(y_ptr + rows, mask=rmask, other=ignore_index)
    valid = rmask & (y != ignore_index)
    inrange = (y >= 0) & (y < C)
    own = valid & inrange  # the target class is among these C
    yc = tl.where(own, y, 0)
    wy = _wrows(idx_ptr, yc, own, HAS_IDX)
    # target gather-dot x_i . W_y
    dot = tl.zeros([BB], tl.float32)
    for k0 in range(0, D, BK):
        ks = k0 + tl.arange(0, BK)
        mk = own[:, None] & (ks < D)[None, :]
        a = tl.load(x_ptr + rows[:, None] * D + ks[None, :], mask=mk, other=0.0).to(tl.float32)
        w = tl.load(w_ptr + wy[:, None] * D + ks[None, :], mask=mk, other=0.0).to(tl.float32)
        dot += tl.sum(a * w, axis=1)
    rs, rx, px, nx = _scales(nx_ptr, rows, valid, scale, NORM_X)
    cs, rw, pw, nw = _scales(nw_ptr, yc, own, 1.0, NORM_W)
    bias = tl.zeros([BB], tl.float32)
    if HAS_BIAS:
        bias = tl.load(b_ptr + wy, mask=own, other=0.0).to(tl.float32)
    if KIND == 0:  # plain: the target is an ordinary logit
        phi = rs * cs * dot + bias
        t_dot = rs * cs
        t_x = tl.zeros([BB], tl.float32)
        t_w = tl.zeros([BB], tl.float32)
        if NORM_X:
            t_x = -px * rx * (phi - bias)
        if NORM_W:
            t_w = -pw * rw * (phi - bias)
    elif KIND == 1:  # combined margin, both normalised, no bias: phi = scale F(c)
        c = _clamp_cos(dot * rx * rw)
        f, df = _combined(c, m1, m2, m3, th_cos, EASY, DETACHED)
        phi = scale * f
        t_dot = scale * df * rx * rw
        t_x = -scale * df * c * px * rx
        t_w = -scale * df * c * pw * rw
    else:  # SphereFace (W normalised) / L-Softmax (nothing): phi = |x| fw G(c)
        c = _clamp_cos(dot * rx * rw)
        g, dg = _psi(c, mi, lam)
        fw = nw
        if NORM_W:
            fw = fw * 0.0 + 1.0
        phi = nx * fw * g
        t_dot = nx * fw * dg * rx * rw
        t_x = fw * g * rx - nx * fw * dg * c * px * rx
        t_w = -nx * fw * dg * c * pw * rw
        if not NORM_W:
            t_w += nx * g * rw
    # merge the class splits with the target logit: deterministic, fixed order
    if SHARD:
        has_t = own  # a shard holds the target of some rows only
    else:
        has_t = valid  # out-of-range targets give NaN below
    mx = tl.where(has_t, phi, float("-inf"))
    for s0 in range(0, n_split, BS):
        ss = s0 + tl.arange(0, BS)
        pm = rmask[:, None] & (ss < n_split)[None, :]
        pmax = tl.load(part_ptr + rows[:, None] * n_split + ss[None, :], mask=pm, other=float("-inf"))
        mx = tl.maximum(mx, tl.max(pmax, axis=1))
    se = tl.where(has_t, tl.exp(phi - mx), 0.0)
    zsum = phi * 0.0
    for s0 in range(0, n_split, BS):
        ss = s0 + tl.arange(0, BS)
        pm = rmask[:, None] & (ss < n_split)[None, :]
        off = rows[:, None] * n_split + ss[None, :]
        pmax = tl.load(part_ptr + off, mask=pm, other=float("-inf"))
        psum = tl.load(part_ptr + B * n_split + off, mask=pm, other=0.0)
        # psum is 0 where a split saw no logit (pmax -inf) and NaN where it saw a NaN
        se += tl.sum(tl.where(psum == 0.0, 0.0, psum * tl.exp(pmax - mx[:, None])), axis=1)
        if SMOOTH:
            zsum += tl.sum(tl.load(part_ptr + 2 * B * n_split + off, mask=pm, other=0.0), axis=1)
    tl.store(row_ptr + 2 * B + rows, tl.where(has_t, t_dot, 0.0), mask=rmask)
    tl.store(row_ptr + 3 * B + rows, tl.where(has_t, t_x, 0.0), mask=rmask)
    tl.store(row_ptr + 4 * B + rows, tl.where(has_t, t_w, 0.0), mask=rmask)
    if SHARD:  # this shard's (max, sum-exp) and target logit; the caller merges the shards
        tl.store(row_ptr + rows, mx, mask=rmask)
        tl.store(row_ptr + B + rows, se, mask=rmask)
        tl.store(out_ptr + rows, tl.where(own, phi, 0.0), mask=rmask)
    else:
        lse = mx + tl.log(se)
        lse = tl.where(inrange | ~valid, lse, float("nan"))
        loss = lse - phi
        if SMOOTH:
            loss = lse - (1.0 - eps_smooth) * phi - eps_smooth / C * zsum
        loss = tl.where(valid, loss, 0.0)
        tl.store(row_ptr + rows, lse, mask=rmask)
        tl.store(row_ptr + B + rows, tl.exp(phi - lse), mask=rmask)
        if REDUCE == 0:
            tl.store(out_ptr + rows, loss.to(out_ptr.dtype.element_ty), mask=rmask)
        else:
            tl.store(red_ptr + pid, tl.sum(loss, axis=0))
            tl.store(red_ptr + tl.num_programs(0) + pid, tl.sum(valid.to(tl.float32), axis=0))


@triton.jit
def _upstream(g_ptr, stat_ptr, rows, rmask, REDUCE: tl.constexpr):
    """d(result)/d(row loss): g[i] ("none"), g ("sum"), g / max(count, 1) ("mean")."""
    if REDUCE == 0:
        return tl.load(g_ptr + rows, mask=rmask, other=0.0).to(tl.float32)
    else:
        g = tl.load(g_ptr).to(tl.float32)
        if REDUCE == 2:
            g = g / tl.maximum(tl.load(stat_ptr), 1.0)
        return g + (rows * 0).to(tl.float32)


@triton.jit
def _dlogit_tile(x_ptr, w_ptr, b_ptr, nx_ptr, nw_ptr, row_ptr, rows, rmask, y, valid, g, cols, wr, cmask,
                 B, C, D, scale, eps_smooth, NORM_X: tl.constexpr, NORM_W: tl.constexpr,
                 HAS_BIAS: tl.constexpr, UPCAST: tl.constexpr, IEEE: tl.constexpr,
                 BB: tl.constexpr, BC: tl.constexpr, BK: tl.constexpr):
    """Recomputed logits -> (A, dl, zb, is_t, ok): dl = dloss/dlogit, A = dl * dlogit/d(x.W),
    zb = logit - bias; all 0 outside valid rows and columns."""
    rs, _r, _p, _n = _scales(nx_ptr, rows, rmask, scale, NORM_X)
    cs, _rw, _pw, _nw = _scales(nw_ptr, cols, cmask, 1.0, NORM_W)
    zb = _dot_tile(x_ptr, w_ptr, rows, rmask, wr, cmask, D, UPCAST, IEEE, BB, BC, BK) * rs[:, None] * cs[None, :]
    z = zb
    if HAS_BIAS:
        z += tl.load(b_ptr + wr, mask=cmask, other=0.0).to(tl.float32)[None, :]
    lse = tl.load(row_ptr + rows, mask=rmask, other=0.0)
    pt = tl.load(row_ptr + B + rows, mask=rmask, other=0.0)
    t_dot = tl.load(row_ptr + 2 * B + rows, mask=rmask, other=0.0)
    is_t = cols[None, :] == y[:, None]
    ok = valid[:, None] & cmask[None, :]
    p = tl.where(is_t, pt[:, None] - (1.0 - eps_smooth), tl.exp(z - lse[:, None]))
    dl = tl.where(ok, g[:, None] * (p - eps_smooth / C), 0.0)
    a = tl.where(ok, dl * tl.where(is_t, t_dot[:, None], rs[:, None] * cs[None, :]), 0.0)
    return a, dl, tl.where(ok & ~is_t, zb, 0.0), is_t


@triton.jit
def _dx_kernel(x_ptr, w_ptr, b_ptr, nx_ptr, nw_ptr, y_ptr, idx_ptr, row_ptr, g_ptr, stat_ptr, dx_ptr,
               B, C, D, ignore_index, scale, eps_smooth,
               NORM_X: tl.constexpr, NORM_W: tl.constexpr, HAS_BIAS: tl.constexpr, REDUCE: tl.constexpr,
               HAS_IDX: tl.constexpr, UPCAST: tl.constexpr, IEEE: tl.constexpr,
               BB: tl.constexpr, BC: tl.constexpr, BK: tl.constexpr, BD: tl.constexpr):
    rows = tl.program_id(0).to(tl.int64) * BB + tl.arange(0, BB)
    ds = tl.program_id(1).to(tl.int64) * BD + tl.arange(0, BD)
    rmask = rows < B
    dmask = ds < D
    y = tl.load(y_ptr + rows, mask=rmask, other=ignore_index)
    valid = rmask & (y != ignore_index)
    g = _upstream(g_ptr, stat_ptr, rows, rmask, REDUCE)
    acc = tl.zeros([BB, BD], tl.float32)
    q = tl.zeros([BB], tl.float32)
    for c0 in range(0, C, BC):
        cols = (c0 + tl.arange(0, BC)).to(tl.int64)
        cmask = cols < C
        wr = _wrows(idx_ptr, cols, cmask, HAS_IDX)
        a, dl, zb, is_t = _dlogit_tile(x_ptr, w_ptr, b_ptr, nx_ptr, nw_ptr, row_ptr, rows, rmask, y, valid, g,
                                       cols, wr, cmask, B, C, D, scale, eps_smooth, NORM_X, NORM_W, HAS_BIAS,
                                       UPCAST, IEEE, BB, BC, BK)
        if NORM_X:
            q += tl.sum(dl * zb, axis=1)
        wt = tl.load(w_ptr + wr[:, None] * D + ds[None, :], mask=cmask[:, None] & dmask[None, :], other=0.0)
        acc = _mm(a, wt, acc, UPCAST, IEEE)
    # epilogue: the target's and the normalisation's terms along x_i
    pt = tl.load(row_ptr + B + rows, mask=rmask, other=0.0)
    t_x = tl.load(row_ptr + 3 * B + rows, mask=rmask, other=0.0)
    dl_t = g * (pt - (1.0 - eps_smooth) - eps_smooth / C)
    coef = dl_t * t_x
    if NORM_X:
        _rs, rx, px, _n = _scales(nx_ptr, rows, rmask, scale, NORM_X)
        coef -= px * rx * q
    xm = valid[:, None] & dmask[None, :]
    xt = tl.load(x_ptr + rows[:, None] * D + ds[None, :], mask=xm, other=0.0).to(tl.float32)
    dx = tl.where(valid[:, None], acc + coef[:, None] * xt, 0.0)
    tl.store(dx_ptr + rows[:, None] * D + ds[None, :], dx.to(dx_ptr.dtype.element_ty),
             mask=rmask[:, None] & dmask[None, :])


@triton.jit
def _dw_kernel(x_ptr, w_ptr, b_ptr, nx_ptr, nw_ptr, y_ptr, idx_ptr, row_ptr, g_ptr, stat_ptr, dw_ptr, db_ptr,
               B, C, D, ignore_index, scale, eps_smooth,
               NORM_X: tl.constexpr, NORM_W: tl.constexpr, HAS_BIAS: tl.constexpr, REDUCE: tl.constexpr,
               HAS_IDX: tl.constexpr, UPCAST: tl.constexpr, IEEE: tl.constexpr,
               BB: tl.constexpr, BC: tl.constexpr, BK: tl.constexpr, BD: tl.constexpr):
    pid_d = tl.program_id(1)
    cols = tl.program_id(0).to(tl.int64) * BC + tl.arange(0, BC)
    ds = pid_d.to(tl.int64) * BD + tl.arange(0, BD)
    cmask = cols < C
    dmask = ds < D
    wr = _wrows(idx_ptr, cols, cmask, HAS_IDX)
    acc = tl.zeros([BC, BD], tl.float32)
    q = tl.zeros([BC], tl.float32)  # sum_i dl (logit - b) over non-target entries
    tw = tl.zeros([BC], tl.float32)  # sum_i [y_i = j] dl_t TW_i
    dbias = tl.zeros([BC], tl.float32)
    for r0 in range(0, B, BB):
        rows = (r0 + tl.arange(0, BB)).to(tl.int64)
        rmask = rows < B
        y = tl.load(y_ptr + rows, mask=rmask, other=ignore_index)
        valid = rmask & (y != ignore_index)
        g = _upstream(g_ptr, stat_ptr, rows, rmask, REDUCE)
        a, dl, zb, is_t = _dlogit_tile(x_ptr, w_ptr, b_ptr, nx_ptr, nw_ptr, row_ptr, rows, rmask, y, valid, g,
                                       cols, wr, cmask, B, C, D, scale, eps_smooth, NORM_X, NORM_W, HAS_BIAS,
                                       UPCAST, IEEE, BB, BC, BK)
        t_w = tl.load(row_ptr + 4 * B + rows, mask=valid, other=0.0)
        tw += tl.sum(tl.where(is_t, dl * t_w[:, None], 0.0), axis=0)
        if NORM_W:
            q += tl.sum(dl * zb, axis=0)
        if HAS_BIAS:
            dbias += tl.sum(dl, axis=0)
        xt = tl.load(x_ptr + rows[:, None] * D + ds[None, :], mask=valid[:, None] & dmask[None, :], other=0.0)
        acc = _mm(tl.trans(a), xt, acc, UPCAST, IEEE)
    coef = tw
    if NORM_W:
        _cs, rw, pw, _n = _scales(nw_ptr, cols, cmask, 1.0, NORM_W)
        coef -= pw * rw * q
    wm = cmask[:, None] & dmask[None, :]
    wt = tl.load(w_ptr + wr[:, None] * D + ds[None, :], mask=wm, other=0.0).to(tl.float32)
    tl.store(dw_ptr + wr[:, None] * D + ds[None, :], (acc + coef[:, None] * wt).to(dw_ptr.dtype.element_ty),
             mask=wm)
    if HAS_BIAS:
        if pid_d == 0:
            tl.store(db_ptr + wr, dbias.to(db_ptr.dtype.element_ty), mask=cmask)


# ---------------------------------------------------------------------------- launchers

def _configs(bbs, bcs, bks, warps, stages, bd=None):
    out = []
    for bb in bbs:
        for bc in bcs:
            for bk in bks:
                for w in warps:
                    for s in stages:
                        cfg = {"BB": bb, "BC": bc, "BK": bk, "num_warps": w, "num_stages": s}
                        if bd is not None:
                            for d in bd:
                                out.append({**cfg, "BD": d})
                        else:
                            out.append(cfg)
    return out


FORWARD_SPACE = _tuning.Space(
    "margin.forward", _partial_kernel, _configs((64, 128), (64, 128), (32, 64), (4, 8), (3, 4)),
    {"BB": 32, "BC": 32, "BK": 32, "num_warps": 4, "num_stages": 2},
)
# wide D blocks (fewer recomputations of the logits per row block; shared memory within H100 limits)
_WIDE_D = [{"BB": 64, "BC": 64, "BK": 64, "BD": 256, "num_warps": 8, "num_stages": 2},
           {"BB": 32, "BC": 64, "BK": 64, "BD": 512, "num_warps": 8, "num_stages": 2}]
DX_SPACE = _tuning.Space(
    "margin.dx", _dx_kernel, _configs((64, 128), (64, 128), (32, 64), (4, 8), (2, 3), bd=(64, 128)) + _WIDE_D,
    {"BB": 32, "BC": 32, "BK": 32, "BD": 64, "num_warps": 4, "num_stages": 2},
)
DW_SPACE = _tuning.Space(
    "margin.dw", _dw_kernel,
    _configs((64, 128), (64, 128), (32, 64), (4, 8), (2, 3), bd=(64, 128))
    + [{**c, "BB": c["BC"], "BC": c["BB"]} for c in _WIDE_D],
    {"BB": 32, "BC": 32, "BK": 32, "BD": 64, "num_warps": 4, "num_stages": 2},
)
_FINISH_BB, _FINISH_BS, _FINISH_BK = 32, 32, 32


def _flags(x: torch.Tensor, backward: bool = False) -> dict:
    """tl.dot operands: fp32 IEEE for fp32 inputs (as eager fp32, no TF32) and under the
    interpreter (whose bf16 dot is wrong); bf16 on tensor cores; fp16 on tensor cores in the
    forward, but in the backward upcast to TF32 (exact for fp16 values, 8 exponent bits):
    dlogit = g (p - onehot) * scale is far below fp16's normal range at large C (p ~ 1/C,
    g = 1/B for "mean") and would lose its precision as an fp16 operand."""
    upcast = not x.is_cuda or (backward and x.dtype == torch.float16)
    return dict(UPCAST=upcast, IEEE=not x.is_cuda or x.dtype == torch.float32)


def _device_name(t: torch.Tensor):
    return torch.cuda.get_device_name(t.device) if t.is_cuda else None


def _key(B, C, D, x):
    return (_tuning.bucket(B), _tuning.bucket(C), _tuning.bucket(D), str(x.dtype).removeprefix("torch."))


def norms(t: torch.Tensor, idx: torch.Tensor | None = None) -> torch.Tensor:
    """fp32 row norms of a contiguous [N, D] tensor (of rows t[idx] when idx is given)."""
    N, D = t.shape if idx is None else (idx.numel(), t.shape[1])
    out = torch.empty(N, dtype=torch.float32, device=t.device)
    if N:
        bd = min(triton.next_power_of_2(D), 128)
        _norms_kernel[(triton.cdiv(N, 16),)](t, idx if idx is not None else out, out, N, D, HAS_IDX=idx is not None,
                                             BLOCK_N=16, BLOCK_D=bd)
    return out


def _split(n_bb: int, n_cb: int) -> int:
    return max(1, min(n_cb, MAX_SPLIT, triton.cdiv(TARGET_PROGRAMS, n_bb)))


def _classes(w, idx):
    """(number of class positions, idx pointer argument): the sampled rows, or all of w."""
    return (w.shape[0], w) if idx is None else (idx.numel(), idx)


def _partials(x, w, b, y, nx, nw, idx, norm_x, norm_w, scale, smooth):
    """Pass 2: the [2 or 3, B, n_split] fp32 partials of the non-target logits, and n_split."""
    B, D = x.shape
    C, iptr = _classes(w, idx)
    flags = dict(NORM_X=norm_x, NORM_W=norm_w, HAS_BIAS=b is not None, SMOOTH=smooth, HAS_IDX=idx is not None,
                 **_flags(x))
    bptr = b if b is not None else nw

    def launch(cfg):
        n_bb, n_cb = triton.cdiv(B, cfg["BB"]), triton.cdiv(C, cfg["BC"])
        n_split = _split(n_bb, n_cb)
        part = torch.empty((3 if smooth else 2) * B * n_split, dtype=torch.float32, device=x.device)
        _partial_kernel[(n_bb, n_split)](x, w, bptr, nx, nw, y, iptr, part, B, C, D, n_split,
                                         triton.cdiv(n_cb, n_split), scale, **flags, **cfg)
        return part, n_split

    return launch(_tuning.pick(FORWARD_SPACE, _key(B, C, D, x), _device_name(x), launch))


def _finish(x, w, b, y, nx, nw, idx, part, n_split, out, rowstat, red, *, kind, norm_x, norm_w, scale,
            ignore_index, eps_smooth, m1, m2, m3, easy, detached, mi, lam, reduce, shard):
    B, D = x.shape
    C, iptr = _classes(w, idx)
    th_cos = -2.0
    if kind == COMBINED:
        theta_max = (math.pi - m2) / m1
        th_cos = math.cos(theta_max) if theta_max < math.pi else -2.0
    _finish_kernel[(triton.cdiv(B, _FINISH_BB),)](
        x, w, b if b is not None else nw, nx, nw, y, iptr, part, out, rowstat, red, B, C, D, n_split, ignore_index,
        scale, eps_smooth, m1, m2, m3, th_cos, mi, lam, KIND=kind, NORM_X=norm_x, NORM_W=norm_w,
        HAS_BIAS=b is not None, SMOOTH=eps_smooth > 0, EASY=easy, DETACHED=detached, REDUCE=reduce,
        HAS_IDX=idx is not None, SHARD=shard, BB=_FINISH_BB, BS=_FINISH_BS, BK=_FINISH_BK)


def forward(x, w, b, y, nx, nw, *, kind, norm_x, norm_w, scale, ignore_index, eps_smooth=0.0,
            m1=1.0, m2=0.0, m3=0.0, easy=False, detached=False, mi=1, lam=0.0, reduce=_reduce.MEAN):
    """Loss (0-dim, or [B] for NONE, in x's dtype), the fp32 [5, B] row statistics and the
    reduction stats [count, result] (None for NONE)."""
    B = x.shape[0]
    part, n_split = _partials(x, w, b, y, nx, nw, None, norm_x, norm_w, scale, eps_smooth > 0)
    rowstat = torch.empty(5 * B, dtype=torch.float32, device=x.device)
    n_prog = triton.cdiv(B, _FINISH_BB)
    if reduce == _reduce.NONE:
        out = torch.empty(B, dtype=x.dtype, device=x.device)
        red = rowstat
    else:
        out = torch.empty((), dtype=x.dtype, device=x.device)
        red = _reduce.partials(n_prog, True, x.device)
    _finish(x, w, b, y, nx, nw, None, part, n_split, out, rowstat, red, kind=kind, norm_x=norm_x, norm_w=norm_w,
            scale=scale, ignore_index=ignore_index, eps_smooth=eps_smooth, m1=m1, m2=m2, m3=m3, easy=easy,
            detached=detached, mi=mi, lam=lam, reduce=reduce, shard=False)
    stats = None
    if reduce != _reduce.NONE:
        stats = _reduce.finish(red, n_prog, out, float(B), True, reduce)
    return out, rowstat, stats


def shard_forward(x, w, y, nx, nw, idx=None, *, kind, norm_x, norm_w, scale, ignore_index, m1=1.0, m2=0.0,
                  m3=0.0, easy=False, detached=False, mi=1, lam=0.0):
    """One class shard's share of the softmax, for the rows x [B, D] and the classes w (or
    w[idx]); labels y are positions among those classes, any other value (not ignore_index)
    marks a target held elsewhere. Returns (phi, rowstat), fp32: phi [B] the target logit
    where this shard holds the target, else 0; rowstat [5, B]: this shard's max and sum-exp
    (target included where held) and the target's (Tdot, TX, TW) where held, else 0.
    `backward` takes rowstat once rows 0 and 1 hold the global lse and exp(phi - lse)."""
    B = x.shape[0]
    part, n_split = _partials(x, w, None, y, nx, nw, idx, norm_x, norm_w, scale, False)
    phi = torch.empty(B, dtype=torch.float32, device=x.device)
    rowstat = torch.empty(5 * B, dtype=torch.float32, device=x.device)
    _finish(x, w, None, y, nx, nw, idx, part, n_split, phi, rowstat, rowstat, kind=kind, norm_x=norm_x,
            norm_w=norm_w, scale=scale, ignore_index=ignore_index, eps_smooth=0.0, m1=m1, m2=m2, m3=m3, easy=easy,
            detached=detached, mi=mi, lam=lam, reduce=_reduce.NONE, shard=True)
    return phi, rowstat.view(5, B)


def backward(g, x, w, b, y, nx, nw, rowstat, stats, *, norm_x, norm_w, scale, ignore_index, eps_smooth=0.0,
             reduce=_reduce.MEAN, need_x=True, need_w=True, idx=None, dx_dtype=None):
    """(dx in dx_dtype or x's dtype, dw in w's dtype, db in b's dtype), each None when not
    needed. With idx only the rows w[idx] take part; dw is 0 in the other rows."""
    B, D = x.shape
    C, iptr = _classes(w, idx)
    g = g.contiguous()
    stat = stats if stats is not None else rowstat
    bptr = b if b is not None else nw
    flags = dict(NORM_X=norm_x, NORM_W=norm_w, HAS_BIAS=b is not None, REDUCE=reduce, HAS_IDX=idx is not None,
                 **_flags(x, True))
    args = (B, C, D, ignore_index, scale, eps_smooth)
    key = _key(B, C, D, x)
    dx = dw = db = None
    if need_x:
        dx = torch.empty(x.shape, dtype=dx_dtype or x.dtype, device=x.device)

        def launch_dx(cfg):
            grid = (triton.cdiv(B, cfg["BB"]), triton.cdiv(D, cfg["BD"]))
            _dx_kernel[grid](x, w, bptr, nx, nw, y, iptr, rowstat, g, stat, dx, *args, **flags, **cfg)

        launch_dx(_tuning.pick(DX_SPACE, key, _device_name(x), launch_dx))
    if need_w:
        dw = torch.empty_like(w) if idx is None else torch.zeros_like(w)
        db = None if b is None else torch.empty_like(b) if idx is None else torch.zeros_like(b)
        dbptr = db if db is not None else nw

        def launch_dw(cfg):
            grid = (triton.cdiv(C, cfg["BC"]), triton.cdiv(D, cfg["BD"]))
            _dw_kernel[grid](x, w, bptr, nx, nw, y, iptr, rowstat, g, stat, dw, dbptr, *args, **flags, **cfg)

        launch_dw(_tuning.pick(DW_SPACE, key, _device_name(x), launch_dw))
    return dx, dw, db
