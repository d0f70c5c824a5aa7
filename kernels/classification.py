"""Classification losses: elementwise (binary, margin, KL) and row kernels (softmax over C).

Elementwise losses plug `_terms` into kernels/_elementwise.py, like the regression family.

Row losses see the input as R = N * S rows of C classes, with classes strided by S (the
[N, C, d1, ...] layout of torch, S = d1 * ...; S = 1 for [N, C]); a program owns
BLOCK_R rows and walks the classes in BLOCK_C columns. The softmax kernels keep an online
(max, sum of exponentials) per row, so any C runs in one pass; the forward writes per-row
stats (log-sum-exp and one or two more numbers) that the backward uses to write the
gradient in one more pass: logits are read twice in all and nothing of size N x C is
stored but the gradient. Class labels are never trusted for addresses: a label outside
[0, C) (and not ignore_index) makes its row NaN.
"""

import functools

import torch
import triton
import triton.language as tl

from . import _elementwise as E
from . import _math, _reduce, _tuning
from ._reduce import MEAN, NONE, SUM  # noqa: F401 (re-exported for the public layer)

# elementwise LOSS ids
BCE, BCE_LOGITS, BALANCED_BCE, SIGMOID_FOCAL, SOFT_MARGIN, HINGE, EXPONENTIAL, KL_DIV = range(8)
# OPT bits: KL_DIV's log_target; BCE_LOGITS's pos_weight given in z (else in q)
LOG_TARGET, POS_WEIGHT_IN_Z = 1, 1
# row LOSS ids
CE, CE_PROB, NLL, SOFTMAX_FOCAL, MEAN_VAR, MULTI_MARGIN, MULTILABEL_SOFT_MARGIN = range(7)

_LOG2E = tl.constexpr(1.4426950408889634)


@triton.jit
def _sigmoid_pair(x):
    """(sigmoid(x), sigmoid(-x)), each without cancellation."""
    e = _math.exp(-tl.abs(x))
    big = 1.0 / (1.0 + e)
    small = e / (1.0 + e)
    return tl.where(x >= 0, big, small), tl.where(x >= 0, small, big)


@triton.jit
def _terms(LOSS: tl.constexpr, OPT: tl.constexpr, x, y, z, q, p0, p1, p2, p3):
    """(loss, dloss/dx, dloss/dy, dloss/dz) for one element."""
    dz = tl.zeros_like(x)
    if LOSS == 0:  # BCE on probabilities, logs clamped at -100 as torch
        lx = tl.maximum(tl.log(x), -100.0)
        l1x = tl.maximum(tl.log(1.0 - x), -100.0)
        loss = -(y * lx + (1.0 - y) * l1x)
        dx = (x - y) / tl.maximum((1.0 - x) * x, 1e-12)
        dy = l1x - lx
    elif LOSS == 1:  # BCE_LOGITS, pos_weight in z or q: (1 - y) x + (1 + (pw - 1) y) softplus(-x)
        if OPT & 1:
            pw = z
        else:
            pw = q
        sp = _math.softplus(-x)
        _, s_neg = _sigmoid_pair(x)
        lw = 1.0 + (pw - 1.0) * y
        loss = (1.0 - y) * x + lw * sp
        dx = (1.0 - y) - lw * s_neg
        dy = -x + (pw - 1.0) * sp
    elif LOSS == 2:  # BALANCED_BCE, q = beta of the sample
        sp = _math.softplus(-x)
        s_pos, s_neg = _sigmoid_pair(x)
        loss = q * y * sp + (1.0 - q) * (1.0 - y) * (x + sp)
        dx = -q * y * s_neg + (1.0 - q) * (1.0 - y) * s_pos
        dy = q * sp - (1.0 - q) * (x + sp)
    elif LOSS == 3:  # SIGMOID_FOCAL, p0 = alpha (< 0: none), p1 = gamma
        sp = _math.softplus(-x)
        p, r = _sigmoid_pair(x)
        ce = (1.0 - y) * x + sp
        omp = r * y + p * (1.0 - y)  # 1 - p_t without cancellation
        m = _math.power(omp, p1)
        # gamma (1 - p_t)^(gamma - 1), taken as 0 where 1 - p_t = 0 (finite for gamma < 1)
        g1 = tl.where(omp > 0, p1 * m / tl.where(omp > 0, omp, 1.0), 0.0)
        use_alpha = p0 >= 0
        at = tl.where(use_alpha, p0 * y + (1.0 - p0) * (1.0 - y), 1.0)
        dat = tl.where(use_alpha, 2.0 * p0 - 1.0, 0.0)
        loss = at * ce * m
        dx = at * ((p - y) * m + ce * g1 * p * r * (1.0 - 2.0 * y))
        dy = at * (-x * m + ce * g1 * (r - p)) + dat * ce * m
    elif LOSS == 4:  # SOFT_MARGIN: softplus(-y x), finite for any finite y x
        _, s_neg = _sigmoid_pair(y * x)
        loss = _math.softplus(-y * x)
        dx = -y * s_neg
        dy = -x * s_neg
    elif LOSS == 5:  # HINGE, p0 = margin (0: perceptron)
        h = p0 - y * x
        on = h > 0
        loss = tl.where(on, h, 0.0)
        dx = tl.where(on, -y, 0.0)
        dy = tl.where(on, -x, 0.0)
    elif LOSS == 6:  # EXPONENTIAL
        e = _math.exp(-y * x)
        loss = e
        dx = -y * e
        dy = -x * e
    else:  # KL_DIV
        if OPT & 1:  # log_target
            et = _math.exp(y)
            loss = et * (y - x)
            dx = -et
            dy = et * (y - x + 1.0)
        else:  # xlogy(y, y) - y x; torch's target gradient is NaN at y = 0
            ly = tl.log(y)
            loss = tl.where(y == 0, 0.0, y * ly) - y * x
            dx = -y
            dy = tl.where(y == 0, float("nan"), ly + 1.0 - x)
    return loss, dx, dy, dz


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


FORWARD_SPACE = _tuning.Space("classification.forward", _forward_kernel, E.SPACE, E.DEFAULT)
BACKWARD_SPACE = _tuning.Space("classification.backward", _backward_kernel, E.SPACE, E.DEFAULT)
forward = functools.partial(E.forward, FORWARD_SPACE)
backward = functools.partial(E.backward, BACKWARD_SPACE)


# ---------------------------------------------------------------------------------------
# row kernels


@triton.jit
def _rows(C, S, R, BLOCK_R: tl.constexpr):
    """This program's rows, their mask and the offset of each row's class 0."""
    rows = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    rmask = rows < R
    n = rows // S
    return rows, rmask, n * C * S + (rows - n * S)


@triton.jit
def _labels(t_ptr, w_ptr, x_ptr, base, rows, rmask, C, S, ignore_index,
            HAS_IGNORE: tl.constexpr, HAS_W: tl.constexpr):
    """Per row: used (label in [0, C)), bad (out of range and not ignored), the safe label,
    its logit and its class weight (1 without weights). Nothing is read for other rows."""
    t = tl.load(t_ptr + rows, mask=rmask, other=0)
    if HAS_IGNORE:
        ignored = t == ignore_index
    else:
        ignored = rows < 0
    used = rmask & (t >= 0) & (t < C) & (~ignored)
    bad = rmask & (~ignored) & ((t < 0) | (t >= C))
    tc = tl.where(used, t, 0)
    xt = tl.load(x_ptr + base + tc * S, mask=used, other=0.0).to(tl.float32)
    if HAS_W:
        wt = tl.load(w_ptr + tc, mask=used, other=0.0).to(tl.float32)
    else:
        wt = tl.where(used, 1.0, 0.0)
    return used, bad, tc, xt, wt


@triton.jit
def _class_weights(w_ptr, cols, C, HAS_W: tl.constexpr):
    """w[cols] (1 without weights; 0 past C)."""
    if HAS_W:
        wc = tl.load(w_ptr + cols, mask=cols < C, other=0.0).to(tl.float32)
    else:
        wc = tl.where(cols < C, 1.0, 0.0)
    return wc


@triton.jit
def _tile(x_ptr, base, rmask, c0, C, S, other, BLOCK_C: tl.constexpr):
    """Columns c0 .. c0 + BLOCK_C of the rows: (cols, 2-D mask, offsets, fp32 values)."""
    cols = c0 + tl.arange(0, BLOCK_C)
    mask = rmask[:, None] & (cols < C)[None, :]
    offs = base[:, None] + cols.to(tl.int64)[None, :] * S
    x = tl.load(x_ptr + offs, mask=mask, other=other).to(tl.float32)
    return cols, mask, offs, x


@triton.jit
def _row_epilogue(loss, norm, rows, rmask, pid, out_ptr, part_ptr, HAS_NORM: tl.constexpr,
                  REDUCE: tl.constexpr):
    """Per-row loss ("none") or this program's partial sums of loss and normaliser."""
    if REDUCE == 0:
        tl.store(out_ptr + rows, loss.to(out_ptr.dtype.element_ty), mask=rmask)
    else:
        tl.store(part_ptr + pid, tl.sum(tl.where(rmask, loss, 0.0), axis=0))
        if HAS_NORM:
            tl.store(part_ptr + tl.num_programs(0) + pid, tl.sum(tl.where(rmask, norm, 0.0), axis=0))


@triton.jit
def _row_grad_scale(g_ptr, red_ptr, rows, rmask, REDUCE: tl.constexpr):
    """d(result)/d(row loss): grad_output per row, or the scalar over the normaliser."""
    if REDUCE == 0:
        g = tl.load(g_ptr + rows, mask=rmask, other=0.0).to(tl.float32)
    else:
        g = tl.load(g_ptr).to(tl.float32) + tl.zeros(rows.shape, tl.float32)
        if REDUCE == 2:
            g = g / tl.load(red_ptr)
    return g


@triton.jit
def _softmax_forward_kernel(x_ptr, t_ptr, w_ptr, out_ptr, part_ptr, stat_ptr, R, C, S,
                            ignore_index, eps, p0, p1, p2,
                            LOSS: tl.constexpr, HAS_W: tl.constexpr, HAS_IGNORE: tl.constexpr,
                            HAS_NORM: tl.constexpr, REDUCE: tl.constexpr,
                            BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    """CE (eps = label smoothing), CE_PROB, NLL, SOFTMAX_FOCAL (p0 = alpha when no alpha
    tensor, p1 = gamma), MEAN_VAR (p0 = lambda_mean, p1 = lambda_var, p2 = 1 with CE).
    stats, planar [3, R]: log-sum-exp, then U = sum_c u_c (CE, CE_PROB), the focal factor
    k (SOFTMAX_FOCAL) or the mean and variance of centred ages (MEAN_VAR)."""
    pid = tl.program_id(0)
    rows, rmask, base = _rows(C, S, R, BLOCK_R)
    if LOSS != 1:
        used, bad, tc, xt, wt = _labels(t_ptr, w_ptr, x_ptr, base, rows, rmask, C, S, ignore_index,
                                        HAS_IGNORE, HAS_W)
    m = tl.full([BLOCK_R], float("-inf"), tl.float32)
    s = tl.zeros([BLOCK_R], tl.float32)
    acc1 = tl.zeros([BLOCK_R], tl.float32)  # CE: sum w x; CE_PROB: sum u x; MEAN_VAR: sum e a
    acc2 = tl.zeros([BLOCK_R], tl.float32)  # CE: sum w; CE_PROB: sum u; MEAN_VAR: sum e a^2
    if LOSS != 2:
        for c0 in range(0, C, BLOCK_C):
            cols, mask, offs, x = _tile(x_ptr, base, rmask, c0, C, S, float("-inf"), BLOCK_C)
            m_new = tl.maximum(m, tl.max(x, axis=1))
            m_ref = tl.where(m_new == float("-inf"), 0.0, m_new)  # rows with nothing finite yet
            scale = tl.exp2((m - m_ref) * _LOG2E)
            e = tl.exp2((x - m_ref[:, None]) * _LOG2E)
            s = s * scale + tl.sum(e, axis=1)
            if LOSS == 0 or LOSS == 1:
                wc = _class_weights(w_ptr, cols, C, HAS_W)
                if LOSS == 0:
                    if eps > 0:
                        acc1 += tl.sum(tl.where(mask, wc[None, :] * x, 0.0), axis=1)
                        acc2 += tl.sum(tl.where(mask, wc[None, :], 0.0), axis=1)
                else:
                    tp = tl.load(t_ptr + offs, mask=mask, other=0.0).to(tl.float32)
                    u = wc[None, :] * ((1.0 - eps) * tp + eps / C)
                    acc1 += tl.sum(tl.where(mask & (u != 0), u * x, 0.0), axis=1)
                    acc2 += tl.sum(tl.where(mask, u, 0.0), axis=1)
            elif LOSS == 4:
                a = cols.to(tl.float32) - (C - 1) * 0.5
                acc1 = acc1 * scale + tl.sum(e * a[None, :], axis=1)
                acc2 = acc2 * scale + tl.sum(e * (a * a)[None, :], axis=1)
            m = m_new
    lse = m + tl.log(s)  # below, lse - x_t is (m - x_t) + log s: exact where x_t is the max
    norm = tl.zeros([BLOCK_R], tl.float32)
    st2 = tl.zeros([BLOCK_R], tl.float32)
    st3 = tl.zeros([BLOCK_R], tl.float32)
    if LOSS == 0:  # sum_c u_c (lse - x_c), u = eps/C w + (1 - eps) w_t [c = t]
        a_t = (1.0 - eps) * wt
        st2 = a_t + eps / C * acc2
        loss = a_t * ((m - xt) + tl.log(s))
        if eps > 0:
            loss += eps / C * (acc2 * lse - acc1)
        norm = wt
    elif LOSS == 1:
        loss = acc2 * lse - acc1
        st2 = acc2
        used = rmask
        bad = rows < 0
    elif LOSS == 2:
        loss = -wt * xt
        norm = wt
    elif LOSS == 3:
        logp = (xt - m) - tl.log(s)
        omp = -_math.expm1(logp)  # 1 - p_t
        if HAS_W:  # alpha_t
            at = wt
        else:
            at = p0 + tl.zeros([BLOCK_R], tl.float32)
        mg = _math.power(omp, p1)
        loss = -at * mg * logp
        g1 = tl.where(omp > 0, p1 * mg / tl.where(omp > 0, omp, 1.0), 0.0)  # gamma (1-p)^(gamma-1)
        st2 = at * (g1 * (1.0 - omp) * logp - mg)  # d loss / d x_j = k ([j = t] - p_j)
        norm = tl.where(used, 1.0, 0.0)
    else:
        mc = acc1 / s
        var = tl.maximum(acc2 / s - mc * mc, 0.0)
        dm = mc + (C - 1) * 0.5 - tc.to(tl.float32)
        loss = p2 * ((m - xt) + tl.log(s)) + 0.5 * p0 * dm * dm + p1 * var
        st2 = mc
        st3 = var
    loss = tl.where(used, loss, tl.where(bad, float("nan"), 0.0))
    tl.store(stat_ptr + rows, lse, mask=rmask)
    tl.store(stat_ptr + R + rows, st2, mask=rmask)
    tl.store(stat_ptr + 2 * R + rows, st3, mask=rmask)
    _row_epilogue(loss, norm, rows, rmask, pid, out_ptr, part_ptr, HAS_NORM, REDUCE)


@triton.jit
def _softmax_backward_kernel(x_ptr, t_ptr, w_ptr, g_ptr, red_ptr, stat_ptr, dx_ptr, dt_ptr,
                             R, C, S, ignore_index, eps, p0, p1, p2,
                             LOSS: tl.constexpr, HAS_W: tl.constexpr, HAS_IGNORE: tl.constexpr,
                             HAS_NORM: tl.constexpr, REDUCE: tl.constexpr,
                             NEED_T: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    """dx (and dt for CE_PROB) of `_softmax_forward_kernel`'s losses from its stats."""
    rows, rmask, base = _rows(C, S, R, BLOCK_R)
    g = _row_grad_scale(g_ptr, red_ptr, rows, rmask, REDUCE)
    lse = tl.load(stat_ptr + rows, mask=rmask, other=0.0)
    st2 = tl.load(stat_ptr + R + rows, mask=rmask, other=0.0)
    st3 = tl.load(stat_ptr + 2 * R + rows, mask=rmask, other=0.0)
    if LOSS != 1:
        used, bad, tc, xt, wt = _labels(t_ptr, w_ptr, x_ptr, base, rows, rmask, C, S, ignore_index,
                                        HAS_IGNORE, HAS_W)
        # a NaN row for a bad label, exact zeros for ignored rows (even with NaN logits)
        g = tl.where(used, g, tl.where(bad, float("nan"), 0.0))
        dm = st2 + (C - 1) * 0.5 - tc.to(tl.float32)
    for c0 in range(0, C, BLOCK_C):
        cols, mask, offs, x = _tile(x_ptr, base, rmask, c0, C, S, 0.0, BLOCK_C)
        if LOSS != 2:
            p = tl.exp2((x - lse[:, None]) * _LOG2E)
        if LOSS == 0 or LOSS == 1:
            wc = _class_weights(w_ptr, cols, C, HAS_W)
            if LOSS == 0:
                is_t = cols[None, :] == tc[:, None]
                u = eps / C * wc[None, :] + tl.where(is_t, ((1.0 - eps) * wt)[:, None], 0.0)
            else:
                tp = tl.load(t_ptr + offs, mask=mask, other=0.0).to(tl.float32)
                u = wc[None, :] * ((1.0 - eps) * tp + eps / C)
                if NEED_T:
                    dt = -(1.0 - eps) * wc[None, :] * (x - lse[:, None]) * g[:, None]
                    tl.store(dt_ptr + offs, dt.to(dt_ptr.dtype.element_ty), mask=mask)
            d = st2[:, None] * p - u
        elif LOSS == 2:
            d = tl.where(cols[None, :] == tc[:, None], -wt[:, None], 0.0)
        elif LOSS == 3:
            d = st2[:, None] * (tl.where(cols[None, :] == tc[:, None], 1.0, 0.0) - p)
        else:
            da = cols.to(tl.float32)[None, :] - (C - 1) * 0.5 - st2[:, None]
            ce = p - tl.where(cols[None, :] == tc[:, None], 1.0, 0.0)
            d = p2 * ce + p0 * dm[:, None] * p * da + p1 * p * (da * da - st3[:, None])
        d = tl.where(g[:, None] == 0, 0.0, g[:, None] * d)  # ignored rows exactly 0
        tl.store(dx_ptr + offs, d.to(dx_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _margin_forward_kernel(x_ptr, t_ptr, w_ptr, out_ptr, part_ptr, stat_ptr, R, C, S, margin, p,
                           LOSS: tl.constexpr, HAS_W: tl.constexpr, HAS_IGNORE: tl.constexpr,
                           HAS_NORM: tl.constexpr, REDUCE: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    """[N, C] rows. MULTI_MARGIN: w_t / C sum_{j != t} max(0, margin - x_t + x_j)^p, stat =
    sum_j p h_j^(p-1) over active j. MULTILABEL_SOFT_MARGIN (t: float targets like x):
    1/C sum_c w_c (t softplus(-x) + (1 - t) softplus(x))."""
    pid = tl.program_id(0)
    rows, rmask, base = _rows(C, 1, R, BLOCK_R)
    acc = tl.zeros([BLOCK_R], tl.float32)
    act = tl.zeros([BLOCK_R], tl.float32)
    if LOSS == 5:
        used, bad, tc, xt, wt = _labels(t_ptr, w_ptr, x_ptr, base, rows, rmask, C, 1, 0, False, HAS_W)
    for c0 in range(0, C, BLOCK_C):
        cols, mask, offs, x = _tile(x_ptr, base, rmask, c0, C, 1, 0.0, BLOCK_C)
        if LOSS == 5:
            h = margin - xt[:, None] + x
            on = mask & (h > 0) & (cols[None, :] != tc[:, None])
            if p == 1:
                acc += tl.sum(tl.where(on, h, 0.0), axis=1)
                act += tl.sum(tl.where(on, 1.0, 0.0), axis=1)
            else:
                acc += tl.sum(tl.where(on, h * h, 0.0), axis=1)
                act += tl.sum(tl.where(on, 2.0 * h, 0.0), axis=1)
        else:
            y = tl.load(t_ptr + offs, mask=mask, other=0.0).to(tl.float32)
            wc = _class_weights(w_ptr, cols, C, HAS_W)
            sp = _math.softplus(-x)
            acc += tl.sum(tl.where(mask & (wc[None, :] != 0), wc[None, :] * (y * sp + (1.0 - y) * (x + sp)),
                                   0.0), axis=1)
    if LOSS == 5:
        loss = tl.where(used, wt / C * acc, tl.where(bad, float("nan"), 0.0))
        tl.store(stat_ptr + rows, act, mask=rmask)
    else:
        loss = acc / C
    _row_epilogue(loss, loss, rows, rmask, pid, out_ptr, part_ptr, HAS_NORM, REDUCE)


@triton.jit
def _margin_backward_kernel(x_ptr, t_ptr, w_ptr, g_ptr, red_ptr, stat_ptr, dx_ptr, dt_ptr, R, C, S, margin, p,
                            LOSS: tl.constexpr, HAS_W: tl.constexpr, HAS_IGNORE: tl.constexpr,
                            HAS_NORM: tl.constexpr, REDUCE: tl.constexpr, NEED_T: tl.constexpr,
                            BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    rows, rmask, base = _rows(C, 1, R, BLOCK_R)
    g = _row_grad_scale(g_ptr, red_ptr, rows, rmask, REDUCE) / C
    if LOSS == 5:
        used, bad, tc, xt, wt = _labels(t_ptr, w_ptr, x_ptr, base, rows, rmask, C, 1, 0, False, HAS_W)
        gw = tl.where(used, g * wt, float("nan"))
        act = tl.load(stat_ptr + rows, mask=rmask, other=0.0)
    for c0 in range(0, C, BLOCK_C):
        cols, mask, offs, x = _tile(x_ptr, base, rmask, c0, C, 1, 0.0, BLOCK_C)
        if LOSS == 5:
            h = margin - xt[:, None] + x
            is_t = cols[None, :] == tc[:, None]
            on = (h > 0) & (~is_t)
            if p == 1:
                d = tl.where(on, 1.0, 0.0)
            else:
                d = tl.where(on, 2.0 * h, 0.0)
            d = gw[:, None] * tl.where(is_t, -act[:, None], d)
        else:
            y = tl.load(t_ptr + offs, mask=mask, other=0.0).to(tl.float32)
            wc = _class_weights(w_ptr, cols, C, HAS_W)
            keep = wc[None, :] != 0
            s_pos, _ = _sigmoid_pair(x)
            gw = g[:, None] * wc[None, :]
            d = tl.where(keep, gw * (s_pos - y), 0.0)
            if NEED_T:
                tl.store(dt_ptr + offs, tl.where(keep, -gw * x, 0.0).to(dt_ptr.dtype.element_ty), mask=mask)
        tl.store(dx_ptr + offs, d.to(dx_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _multilabel_margin_forward_kernel(x_ptr, t_ptr, is_t_ptr, cnt_ptr, out_ptr, part_ptr, C,
                                      REDUCE: tl.constexpr, BLOCK: tl.constexpr):
    """One row (program) of [N, C]: T = the labels before the first negative one; loss =
    1/C sum_{j in T positions} sum_{k not in T} max(0, 1 - x_{t_j} + x_k). Writes the row's
    target mask is_t[k] and, per position j, the count of active k (for the backward);
    a label >= C makes the row NaN."""
    pid = tl.program_id(0)
    row = pid.to(tl.int64) * C
    idx = tl.arange(0, BLOCK)
    end = C
    for j0 in range(0, C, BLOCK):
        t = tl.load(t_ptr + row + j0 + idx, mask=j0 + idx < C, other=0)
        end = tl.minimum(end, tl.min(tl.where((t < 0) & (j0 + idx < C), j0 + idx, C), axis=0))
    bad = 0
    for k0 in range(0, C, BLOCK):
        k = k0 + idx
        hit = tl.zeros([BLOCK], tl.int32)
        for j0 in range(0, C, BLOCK):
            j = j0 + idx
            t = tl.load(t_ptr + row + j, mask=j < end, other=-1)
            hit = tl.maximum(hit, tl.max(tl.where(t[:, None] == k[None, :], 1, 0), axis=0))
            if k0 == 0:
                bad += tl.sum(tl.where((j < end) & (t >= C), 1, 0), axis=0)
        tl.store(is_t_ptr + row + k, hit.to(tl.float32), mask=k < C)
    acc = 0.0
    for j0 in range(0, C, BLOCK):
        j = j0 + idx
        used = j < end
        t = tl.load(t_ptr + row + j, mask=used, other=0)
        used = used & (t < C)
        xt = tl.load(x_ptr + row + tl.where(used, t, 0), mask=used, other=0.0).to(tl.float32)
        cnt = tl.zeros([BLOCK], tl.float32)
        for k0 in range(0, C, BLOCK):
            k = k0 + idx
            xk = tl.load(x_ptr + row + k, mask=k < C, other=0.0).to(tl.float32)
            other = tl.load(is_t_ptr + row + k, mask=k < C, other=1.0) == 0
            h = 1.0 - xt[:, None] + xk[None, :]
            on = used[:, None] & other[None, :] & (h > 0)
            acc += tl.sum(tl.sum(tl.where(on, h, 0.0), axis=1), axis=0)
            cnt += tl.sum(tl.where(on, 1.0, 0.0), axis=1)
        tl.store(cnt_ptr + row + j, cnt, mask=j < C)
    loss = tl.where(bad > 0, float("nan"), acc / C)
    if REDUCE == 0:
        tl.store(out_ptr + pid, loss.to(out_ptr.dtype.element_ty))
    else:
        tl.store(part_ptr + pid, loss)


@triton.jit
def _multilabel_margin_backward_kernel(x_ptr, t_ptr, is_t_ptr, cnt_ptr, g_ptr, red_ptr, dx_ptr, C,
                                       REDUCE: tl.constexpr, BLOCK: tl.constexpr):
    """dx_k = g/C ([k not in T] #{j: active(j, k)} - sum_{j: t_j = k} #{k': active(j, k')})."""
    pid = tl.program_id(0)
    row = pid.to(tl.int64) * C
    idx = tl.arange(0, BLOCK)
    if REDUCE == 0:
        g = tl.load(g_ptr + pid).to(tl.float32) / C
    else:
        g = tl.load(g_ptr).to(tl.float32) / C
        if REDUCE == 2:
            g = g / tl.load(red_ptr)
    end = C
    bad = 0
    for j0 in range(0, C, BLOCK):
        t = tl.load(t_ptr + row + j0 + idx, mask=j0 + idx < C, other=0)
        end = tl.minimum(end, tl.min(tl.where((t < 0) & (j0 + idx < C), j0 + idx, C), axis=0))
    for j0 in range(0, C, BLOCK):
        t = tl.load(t_ptr + row + j0 + idx, mask=j0 + idx < end, other=0)
        bad += tl.sum(tl.where(t >= C, 1, 0), axis=0)
    g = tl.where(bad > 0, float("nan"), g)
    for k0 in range(0, C, BLOCK):
        k = k0 + idx
        xk = tl.load(x_ptr + row + k, mask=k < C, other=0.0).to(tl.float32)
        other = tl.load(is_t_ptr + row + k, mask=k < C, other=1.0) == 0
        d = tl.zeros([BLOCK], tl.float32)
        for j0 in range(0, C, BLOCK):
            j = j0 + idx
            used = j < end
            t = tl.load(t_ptr + row + j, mask=used, other=0)
            used = used & (t < C)
            xt = tl.load(x_ptr + row + tl.where(used, t, 0), mask=used, other=0.0).to(tl.float32)
            cnt = tl.load(cnt_ptr + row + j, mask=used, other=0.0)
            on = used[:, None] & other[None, :] & (1.0 - xt[:, None] + xk[None, :] > 0)
            d += tl.sum(tl.where(on, 1.0, 0.0), axis=0)
            d -= tl.sum(tl.where(used[:, None] & (t[:, None] == k[None, :]), cnt[:, None], 0.0), axis=0)
        tl.store(dx_ptr + row + k, (g * d).to(dx_ptr.dtype.element_ty), mask=k < C)


_PAIR_SPACE = [{"BLOCK": b, "num_warps": w, "num_stages": 1} for b in (32, 64, 128) for w in (4, 8)]
_PAIR_DEFAULT = {"BLOCK": 64, "num_warps": 4, "num_stages": 1}
MULTILABEL_MARGIN_FORWARD_SPACE = _tuning.Space("classification.multilabel_margin_forward",
                                                _multilabel_margin_forward_kernel, _PAIR_SPACE, _PAIR_DEFAULT)
MULTILABEL_MARGIN_BACKWARD_SPACE = _tuning.Space("classification.multilabel_margin_backward",
                                                 _multilabel_margin_backward_kernel, _PAIR_SPACE, _PAIR_DEFAULT)


def multilabel_margin_forward(x, t, reduce: int):
    """x, t: contiguous [N, C]. (loss [N] or 0-dim, saved (is_t, cnt), reduce stats)."""
    N, C = x.shape
    out = torch.empty((N,) if reduce == NONE else (), dtype=x.dtype, device=x.device)
    is_t = torch.empty(x.shape, dtype=torch.float32, device=x.device)
    cnt = torch.empty(x.shape, dtype=torch.float32, device=x.device)
    part = _reduce.partials(N, False, x.device) if reduce != NONE else out

    def launch(c):
        _multilabel_margin_forward_kernel[(N,)](x, t, is_t, cnt, out, part, C, REDUCE=reduce, **c)

    if N > 0:
        key = (reduce, _tuning.bucket(N), _tuning.bucket(C), str(x.dtype).removeprefix("torch."))
        launch(_tuning.pick(MULTILABEL_MARGIN_FORWARD_SPACE, key, E._device_name(x), launch))
    red = torch.zeros(2, dtype=torch.float32, device=x.device)
    if reduce != NONE:
        red = _reduce.finish(part, N, out, N, False, reduce)
    return out, is_t, cnt, red


def multilabel_margin_backward(x, t, is_t, cnt, g, red, reduce: int):
    N, C = x.shape
    dx = torch.empty_like(x)

    def launch(c):
        _multilabel_margin_backward_kernel[(N,)](x, t, is_t, cnt, g, red, dx, C, REDUCE=reduce, **c)

    if N > 0:
        key = (reduce, _tuning.bucket(N), _tuning.bucket(C), str(x.dtype).removeprefix("torch."))
        launch(_tuning.pick(MULTILABEL_MARGIN_BACKWARD_SPACE, key, E._device_name(x), launch))
    return dx


_ROW_SPACE = [{"TILE": t, "num_warps": w, "num_stages": 1} for t in (1024, 2048, 4096, 8192, 16384) for w in (4, 8, 16)]
_ROW_DEFAULT = {"TILE": 4096, "num_warps": 8, "num_stages": 1}
SOFTMAX_FORWARD_SPACE = _tuning.Space("classification.softmax_forward", _softmax_forward_kernel,
                                      _ROW_SPACE, _ROW_DEFAULT)
SOFTMAX_BACKWARD_SPACE = _tuning.Space("classification.softmax_backward", _softmax_backward_kernel,
                                       _ROW_SPACE, _ROW_DEFAULT)
MARGIN_FORWARD_SPACE = _tuning.Space("classification.margin_forward", _margin_forward_kernel,
                                     _ROW_SPACE, _ROW_DEFAULT)
MARGIN_BACKWARD_SPACE = _tuning.Space("classification.margin_backward", _margin_backward_kernel,
                                      _ROW_SPACE, _ROW_DEFAULT)


def _blocks(config: dict, R: int, C: int) -> dict:
    """A TILE of elements as BLOCK_R rows x BLOCK_C classes: whole rows while C fits."""
    block_c = min(triton.next_power_of_2(max(C, 1)), config["TILE"])
    block_r = max(1, min(config["TILE"] // block_c, triton.next_power_of_2(max(R, 1))))
    return dict(BLOCK_R=block_r, BLOCK_C=block_c, num_warps=config["num_warps"],
                num_stages=config["num_stages"])


def _row_key(loss: int, reduce: int, R: int, C: int, S: int, x) -> tuple:
    return (loss, reduce, _tuning.bucket(R), _tuning.bucket(C), S == 1, str(x.dtype).removeprefix("torch."))


def row_forward(space, x, t, w, reduce, C, S, scalars, flags, count=None):
    """Per-row loss [R] ("none") or the reduced 0-dim loss: (out, row stats [3 R], reduce
    stats [normaliser, result]). `scalars` are the kernel's arguments after (R, C, S); the
    normaliser of "mean" is the partial sums' (flags HAS_NORM) or `count` (default R)."""
    R = x.numel() // C if C else 0
    out = torch.empty((R,) if reduce == NONE else (), dtype=x.dtype, device=x.device)
    stats = torch.empty(3 * R, dtype=torch.float32, device=x.device)
    red = torch.zeros(2, dtype=torch.float32, device=x.device)
    has_norm = flags["HAS_NORM"]
    ptrs = [v if v is not None else x for v in (t, w)]
    parts = {}

    def launch(c):
        b = _blocks(c, R, C)
        n_part = triton.cdiv(R, b["BLOCK_R"])
        if reduce == NONE:
            part = out
        elif n_part not in parts:
            part = parts[n_part] = _reduce.partials(n_part, has_norm, x.device)
        else:
            part = parts[n_part]
        space.kernel[(n_part,)](x, *ptrs, out, part, stats, R, C, S, *scalars, HAS_W=w is not None,
                                REDUCE=reduce, **flags, **b)
        return part, n_part

    part, n_part = torch.empty(0, dtype=torch.float32, device=x.device), 0
    if R > 0:
        key = _row_key(flags["LOSS"], reduce, R, C, S, x)
        part, n_part = launch(_tuning.pick(space, key, E._device_name(x), launch))
    if reduce != NONE:
        red = _reduce.finish(part, n_part, out, R if count is None else count, has_norm, reduce)
    return out, stats, red


def row_backward(space, x, t, w, g, red, stats, reduce, C, S, scalars, flags, need_t):
    """(dx, dt): the input's gradient and, when `need_t`, the float target's."""
    R = x.numel() // C if C else 0
    dx = torch.empty_like(x)
    dt = torch.empty_like(t) if need_t else None
    if R == 0:
        return dx, dt
    ptrs = [v if v is not None else x for v in (t, w)]

    def launch(c):
        b = _blocks(c, R, C)
        space.kernel[(triton.cdiv(R, b["BLOCK_R"]),)](
            x, *ptrs, g, red, stats, dx, dt if dt is not None else x, R, C, S, *scalars,
            HAS_W=w is not None, REDUCE=reduce, NEED_T=need_t, **flags, **b)

    key = _row_key(flags["LOSS"], reduce, R, C, S, x) + (need_t,)
    launch(_tuning.pick(space, key, E._device_name(x), launch))
    return dx, dt


# ---------------------------------------------------------------------------------------
# dense-detection ranking losses (dr_loss, ap_loss)
#
# input x: contiguous [N, C] logits seen flat (sample e = anchor e // C, class e % C + 1),
# target t: [N] int64, 0 background, k in 1..C positive for class k, -1 ignored. A sample
# of a non-ignored anchor is positive when its class is the anchor's label, else negative.
# Labels are only compared, never used as addresses.


@triton.jit
def _detection_samples(x_ptr, t_ptr, offs, n, C):
    """For flat samples `offs`: (valid = in range and not ignored, positive, negative, bad
    label, fp32 logit; 0 where not valid, so NaN in ignored rows never enters)."""
    m = offs < n
    row = offs // C
    cls = offs - row * C + 1
    t = tl.load(t_ptr + row, mask=m, other=-1)
    valid = m & (t != -1)
    pos = valid & (t == cls)
    neg = valid & (t != cls)
    bad = m & ((t < -1) | (t > C))
    x = tl.load(x_ptr + offs, mask=valid, other=0.0).to(tl.float32)
    return valid, pos, neg, bad, x, row


@triton.jit
def _online_part(sel, z, p):
    """Softmax partials of the selected z: (max, sum e^(z - max), sum e^(z - max) p)."""
    zs = tl.where(sel, z, float("-inf"))
    m = tl.max(zs, axis=0)
    m_ref = tl.where(m == float("-inf"), 0.0, m)
    e = tl.where(sel, tl.exp2((zs - m_ref) * _LOG2E), 0.0)
    return m, tl.sum(e, axis=0), tl.sum(tl.where(sel, e * p, 0.0), axis=0)


@triton.jit
def _dr_partial_kernel(x_ptr, t_ptr, part_ptr, n, C, inv_neg, inv_pos, BLOCK: tl.constexpr):
    """One BLOCK of samples -> 9 partials (planar, n_part apart): for the negatives (z = p /
    neg_lambda) and positives (z = -p / pos_lambda) the online-softmax (max, sum, weighted
    sum of p), then the counts of negatives, positives and bad-label samples."""
    pid = tl.program_id(0)
    n_part = tl.num_programs(0)
    offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    valid, pos, neg, bad, x, _ = _detection_samples(x_ptr, t_ptr, offs, n, C)
    p, _ = _sigmoid_pair(x)
    mn, sn, an = _online_part(neg, p * inv_neg, p)
    mp, sp, ap = _online_part(pos, -p * inv_pos, p)
    tl.store(part_ptr + pid, mn)
    tl.store(part_ptr + n_part + pid, sn)
    tl.store(part_ptr + 2 * n_part + pid, an)
    tl.store(part_ptr + 3 * n_part + pid, mp)
    tl.store(part_ptr + 4 * n_part + pid, sp)
    tl.store(part_ptr + 5 * n_part + pid, ap)
    tl.store(part_ptr + 6 * n_part + pid, tl.sum(neg.to(tl.float32), axis=0))
    tl.store(part_ptr + 7 * n_part + pid, tl.sum(pos.to(tl.float32), axis=0))
    tl.store(part_ptr + 8 * n_part + pid, tl.sum(bad.to(tl.float32), axis=0))


@triton.jit
def _merge_parts(part_ptr, n_part, k0, BLOCK: tl.constexpr):
    """Merge the online-softmax partials stored at rows k0 .. k0 + 2 in a fixed order:
    (global max (0 if none), sum e^(z - max), sum e^(z - max) p)."""
    idx = tl.arange(0, BLOCK)
    mx = tl.full([BLOCK], float("-inf"), tl.float32)
    for start in range(0, n_part, BLOCK):
        mi = tl.load(part_ptr + k0 * n_part + start + idx, mask=start + idx < n_part, other=float("-inf"))
        mx = tl.maximum(mx, mi)
    m = tl.max(mx, axis=0)
    m = tl.where(m == float("-inf"), 0.0, m)
    s = tl.zeros([BLOCK], tl.float32)
    a = tl.zeros([BLOCK], tl.float32)
    for start in range(0, n_part, BLOCK):
        msk = start + idx < n_part
        mi = tl.load(part_ptr + k0 * n_part + start + idx, mask=msk, other=float("-inf"))
        f = tl.where(mi == float("-inf"), 0.0, tl.exp2((mi - m) * _LOG2E))
        s += f * tl.load(part_ptr + (k0 + 1) * n_part + start + idx, mask=msk, other=0.0)
        a += f * tl.load(part_ptr + (k0 + 2) * n_part + start + idx, mask=msk, other=0.0)
    return m, tl.sum(s, axis=0), tl.sum(a, axis=0)


@triton.jit
def _part_total(part_ptr, n_part, k0, BLOCK: tl.constexpr):
    idx = tl.arange(0, BLOCK)
    acc = tl.zeros([BLOCK], tl.float32)
    for start in range(0, n_part, BLOCK):
        acc += tl.load(part_ptr + k0 * n_part + start + idx, mask=start + idx < n_part, other=0.0)
    return tl.sum(acc, axis=0)


@triton.jit
def _dr_finish_kernel(part_ptr, out_ptr, stat_ptr, n_part, margin, L, tau, BLOCK: tl.constexpr):
    """P- = sum q- p (0 without negatives), P+ = sum q+ p (1 without positives), loss =
    tau / L softplus(L (P- - P+ + margin)); NaN with a bad label. stats: [max-, sum-, P-,
    max+, sum+, P+, dloss/d(P- - P+)]."""
    mn, sn, an = _merge_parts(part_ptr, n_part, 0, BLOCK)
    mp, sp, ap = _merge_parts(part_ptr, n_part, 3, BLOCK)
    n_neg = _part_total(part_ptr, n_part, 6, BLOCK)
    n_pos = _part_total(part_ptr, n_part, 7, BLOCK)
    n_bad = _part_total(part_ptr, n_part, 8, BLOCK)
    pn = tl.where(n_neg > 0, an / sn, 0.0)
    pp = tl.where(n_pos > 0, ap / sp, 1.0)
    z = L * (pn - pp + margin)
    nan_if_bad = tl.where(n_bad > 0, float("nan"), 1.0)
    loss = tau / L * _math.softplus(z) * nan_if_bad
    dz = tau * (1.0 / (1.0 + _math.exp(-z))) * nan_if_bad
    tl.store(stat_ptr, mn)
    tl.store(stat_ptr + 1, sn)
    tl.store(stat_ptr + 2, pn)
    tl.store(stat_ptr + 3, mp)
    tl.store(stat_ptr + 4, sp)
    tl.store(stat_ptr + 5, pp)
    tl.store(stat_ptr + 6, dz)
    tl.store(out_ptr, loss.to(out_ptr.dtype.element_ty))


@triton.jit
def _dr_backward_kernel(x_ptr, t_ptr, g_ptr, stat_ptr, dx_ptr, n, C, inv_neg, inv_pos, BLOCK: tl.constexpr):
    """dP-/dp_j = q_j (1 + (p_j - P-) / neg_lambda), dP+/dp_i = q_i (1 - (p_i - P+) / pos_lambda),
    times p (1 - p) and g dloss/d(P- - P+) (minus for positives); 0 for ignored anchors."""
    pid = tl.program_id(0)
    offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    valid, pos, neg, bad, x, _ = _detection_samples(x_ptr, t_ptr, offs, n, C)
    mn = tl.load(stat_ptr)
    sn = tl.load(stat_ptr + 1)
    pn = tl.load(stat_ptr + 2)
    mp = tl.load(stat_ptr + 3)
    sp = tl.load(stat_ptr + 4)
    pp = tl.load(stat_ptr + 5)
    g = tl.load(g_ptr).to(tl.float32) * tl.load(stat_ptr + 6)
    p, r = _sigmoid_pair(x)
    qn = tl.exp2((p * inv_neg - mn) * _LOG2E) / sn
    qp = tl.exp2((-p * inv_pos - mp) * _LOG2E) / sp
    d = tl.where(neg, qn * (1.0 + (p - pn) * inv_neg), -qp * (1.0 - (p - pp) * inv_pos))
    d = tl.where(valid, g * d * (p * r), 0.0)
    tl.store(dx_ptr + offs, d.to(dx_ptr.dtype.element_ty), mask=offs < n)


_FLAT_SPACE = [{"BLOCK": b, "num_warps": w, "num_stages": 1} for b in (1024, 2048, 4096, 8192) for w in (4, 8)]
_FLAT_DEFAULT = {"BLOCK": 1024, "num_warps": 4, "num_stages": 1}
DR_FORWARD_SPACE = _tuning.Space("classification.dr_forward", _dr_partial_kernel, _FLAT_SPACE, _FLAT_DEFAULT)
DR_BACKWARD_SPACE = _tuning.Space("classification.dr_backward", _dr_backward_kernel, _FLAT_SPACE, _FLAT_DEFAULT)
_FINISH_BLOCK = 1024


def _detection_key(x) -> tuple:
    N, C = x.shape
    return (_tuning.bucket(N), _tuning.bucket(C), str(x.dtype).removeprefix("torch."))


def dr_forward(x, t, margin, pos_lambda, neg_lambda, L, tau):
    """x contiguous [N, C], t int64 [N]: (0-dim loss in x's dtype, fp32 stats [7])."""
    n = x.numel()
    out = torch.empty((), dtype=x.dtype, device=x.device)
    stats = torch.empty(7, dtype=torch.float32, device=x.device)
    parts = {}

    def launch(c):
        n_part = triton.cdiv(n, c["BLOCK"])
        if n_part not in parts:
            parts[n_part] = torch.empty(9 * n_part, dtype=torch.float32, device=x.device)
        _dr_partial_kernel[(n_part,)](x, t, parts[n_part], n, x.shape[1], 1.0 / neg_lambda, 1.0 / pos_lambda,
                                      **c)
        return parts[n_part], n_part

    part, n_part = torch.zeros(9, dtype=torch.float32, device=x.device), 0
    if n > 0:
        part, n_part = launch(_tuning.pick(DR_FORWARD_SPACE, _detection_key(x), E._device_name(x), launch))
    _dr_finish_kernel[(1,)](part, out, stats, n_part, margin, L, tau, BLOCK=_FINISH_BLOCK)
    return out, stats


def dr_backward(x, t, g, stats, pos_lambda, neg_lambda):
    n = x.numel()
    dx = torch.empty_like(x)

    def launch(c):
        _dr_backward_kernel[(triton.cdiv(n, c["BLOCK"]),)](x, t, g, stats, dx, n, x.shape[1], 1.0 / neg_lambda,
                                                           1.0 / pos_lambda, **c)

    if n > 0:
        launch(_tuning.pick(DR_BACKWARD_SPACE, _detection_key(x), E._device_name(x), launch))
    return dx


@triton.jit
def _step(s, si, inv2d):
    """AP-loss's H(s - si) = clamp((s - si) / (2 delta) + 1/2, 0, 1), NaN in NaN out."""
    u = (s - si) * inv2d + 0.5
    return tl.where(u < 0.0, 0.0, tl.where(u > 1.0, 1.0, u))


@triton.jit
def _positives(x_ptr, pidx_ptr, i, count):
    """Positive slots `i` (compacted, the first `count`): (mask, flat sample index, fp32 score)."""
    im = i < count
    pi = tl.load(pidx_ptr + i, mask=im, other=0)
    si = tl.load(x_ptr + pi, mask=im, other=0.0).to(tl.float32)
    return im, pi, si


@triton.jit
def _ap_rank_kernel(x_ptr, t_ptr, pidx_ptr, cnt_ptr, part_ptr, n, N, C, chunk, inv2d,
                    BLOCK_P: tl.constexpr, BLOCK_S: tl.constexpr):
    """Program (b, k): positives b BLOCK_P .. (b + 1) BLOCK_P against the samples of split
    k (`chunk` samples). Writes, per positive i, sum_{j neg} H(s_j - s_i) to part[k, i] and
    sum_{valid k' != i} H(s_k' - s_i) to part[n_split + k, i] (rows of N). Blocks past the
    device-side positive count run no iteration."""
    b = tl.program_id(0)
    k = tl.program_id(1)
    n_split = tl.num_programs(1)
    count = tl.load(cnt_ptr)
    i = b * BLOCK_P + tl.arange(0, BLOCK_P)
    im, pi, si = _positives(x_ptr, pidx_ptr, i, count)
    lo = k.to(tl.int64) * chunk
    hi = tl.minimum(lo + chunk, n)
    hi = tl.where(b * BLOCK_P < count, hi, lo)
    rank_neg = tl.zeros([BLOCK_P], tl.float32)
    rank_all = tl.zeros([BLOCK_P], tl.float32)
    for s0 in range(lo, hi, BLOCK_S):
        offs = s0 + tl.arange(0, BLOCK_S)
        valid, pos, neg, bad, s, _ = _detection_samples(x_ptr, t_ptr, offs, hi, C)
        h = _step(s[None, :], si[:, None], inv2d)
        rank_neg += tl.sum(tl.where(neg[None, :], h, 0.0), axis=1)
        rank_all += tl.sum(tl.where(valid[None, :] & (offs[None, :] != pi[:, None]), h, 0.0), axis=1)
    tl.store(part_ptr + k * N + i, rank_neg, mask=im)
    tl.store(part_ptr + (n_split + k) * N + i, rank_all, mask=im)


@triton.jit
def _ap_finish_kernel(part_ptr, pidx_ptr, cnt_ptr, bad_ptr, ratio_ptr, invd_ptr, lpart_ptr, N, C, n_split,
                      BLOCK: tl.constexpr):
    """Per positive i: D_i = 1 + sum_{k != i} H(s_k - s_i), r_i = sum_j L_ij = (sum_{j neg} H) / D_i.
    Stores 1 / D_i (by slot) and r_i (by anchor), and this block's partial sums of r and of
    the positive count (block 0 counts at least 1, so no positive gives 0 / 1 = 0); both
    NaN with a bad label."""
    pid = tl.program_id(0)
    n_part = tl.num_programs(0)
    count = tl.load(cnt_ptr)
    i = pid * BLOCK + tl.arange(0, BLOCK)
    im = i < count
    rank_neg = tl.zeros([BLOCK], tl.float32)
    rank_all = tl.zeros([BLOCK], tl.float32)
    for k in range(0, n_split):
        rank_neg += tl.load(part_ptr + k * N + i, mask=im, other=0.0)
        rank_all += tl.load(part_ptr + (n_split + k) * N + i, mask=im, other=0.0)
    inv_d = 1.0 / (1.0 + rank_all)
    r = rank_neg * inv_d
    pi = tl.load(pidx_ptr + i, mask=im, other=0)
    tl.store(invd_ptr + i, inv_d, mask=im)
    tl.store(ratio_ptr + pi // C, r, mask=im)
    n_here = tl.sum(im.to(tl.float32), axis=0)
    if pid == 0:
        n_here = tl.maximum(n_here, 1.0)
    nan_if_bad = tl.where(tl.load(bad_ptr) != 0, float("nan"), 1.0)
    tl.store(lpart_ptr + pid, tl.sum(tl.where(im, r, 0.0), axis=0) * nan_if_bad)
    tl.store(lpart_ptr + n_part + pid, n_here * nan_if_bad)


@triton.jit
def _ap_backward_kernel(x_ptr, t_ptr, pidx_ptr, cnt_ptr, invd_ptr, ratio_ptr, g_ptr, red_ptr, dx_ptr, n, C,
                        inv2d, BLOCK_P: tl.constexpr, BLOCK_S: tl.constexpr):
    """The error-driven update times g / |P|: negative j gets sum_i L_ij = sum_i H(s_j - s_i) / D_i
    (a loop over the compacted positives, bounded by the device-side count), positive i gets
    -r_i, ignored anchors 0."""
    pid = tl.program_id(0)
    offs = pid.to(tl.int64) * BLOCK_S + tl.arange(0, BLOCK_S)
    valid, pos, neg, bad, s, row = _detection_samples(x_ptr, t_ptr, offs, n, C)
    count = tl.load(cnt_ptr)
    acc = tl.zeros([BLOCK_S], tl.float32)
    for p0 in range(0, count, BLOCK_P):
        i = p0 + tl.arange(0, BLOCK_P)
        im, pi, si = _positives(x_ptr, pidx_ptr, i, count)
        inv_d = tl.load(invd_ptr + i, mask=im, other=0.0)
        h = _step(s[None, :], si[:, None], inv2d)
        acc += tl.sum(tl.where(im[:, None], h * inv_d[:, None], 0.0), axis=0)
    g = tl.load(g_ptr).to(tl.float32) / tl.load(red_ptr)
    r = tl.load(ratio_ptr + row, mask=pos, other=0.0)
    d = tl.where(neg, g * acc, tl.where(pos, -g * r, 0.0))
    tl.store(dx_ptr + offs, d.to(dx_ptr.dtype.element_ty), mask=offs < n)


_AP_RANK_SPACE = [{"BLOCK_P": p, "BLOCK_S": s, "SPLIT": k, "num_warps": w, "num_stages": 1}
                  for p in (32, 64) for s in (128, 256) for k in (16, 64) for w in (4, 8)]
_AP_RANK_DEFAULT = {"BLOCK_P": 32, "BLOCK_S": 256, "SPLIT": 32, "num_warps": 4, "num_stages": 1}
_AP_BACKWARD_SPACE = [{"BLOCK_P": p, "BLOCK_S": s, "num_warps": w, "num_stages": 1}
                      for p in (16, 32, 64) for s in (128, 256, 512) for w in (4, 8)]
_AP_BACKWARD_DEFAULT = {"BLOCK_P": 32, "BLOCK_S": 256, "num_warps": 4, "num_stages": 1}
AP_RANK_SPACE = _tuning.Space("classification.ap_rank", _ap_rank_kernel, _AP_RANK_SPACE, _AP_RANK_DEFAULT)
AP_BACKWARD_SPACE = _tuning.Space("classification.ap_backward", _ap_backward_kernel, _AP_BACKWARD_SPACE,
                                  _AP_BACKWARD_DEFAULT)


def ap_forward(x, t, delta):
    """x contiguous [N, C], t int64 [N]. Positives are compacted on the device (a prefix sum
    over the anchors and a scatter; their count stays a device tensor). Returns (0-dim
    loss, saved = (pidx, count, 1/D by slot, r by anchor, reduce stats [|P| or 1, loss]))."""
    N, C = x.shape
    n = x.numel()
    dev = x.device
    pos = (t >= 1) & (t <= C)
    count = pos.sum(dtype=torch.int32).reshape(1)
    bad = ((t < -1) | (t > C)).any().to(torch.int32).reshape(1)
    # slot k < count holds the flat sample index of the k-th positive (in anchor order); the
    # other anchors scatter to a spare slot N that is never read
    slot = torch.where(pos, torch.cumsum(pos, 0) - 1, N)
    flat = torch.arange(N, device=dev) * C + (t - 1).clamp(0, C - 1)
    pidx = torch.empty(N + 1, dtype=torch.int64, device=dev).scatter_(0, slot, flat)
    ratio = torch.empty(N, dtype=torch.float32, device=dev)
    invd = torch.empty(N, dtype=torch.float32, device=dev)
    out = torch.empty((), dtype=x.dtype, device=dev)
    n_lpart = triton.cdiv(N, _FINISH_BLOCK)
    lpart = _reduce.partials(n_lpart, True, dev)
    parts = {}

    def launch(c):
        # the partials (2 n_split N floats) stay within the input's size: n_split <= C / 2
        n_split = max(1, min(c["SPLIT"], triton.cdiv(n, c["BLOCK_S"]), C // 2))
        chunk = triton.cdiv(triton.cdiv(n, n_split), c["BLOCK_S"]) * c["BLOCK_S"]
        if n_split not in parts:
            parts[n_split] = torch.empty(2 * n_split * N, dtype=torch.float32, device=dev)
        grid = (triton.cdiv(N, c["BLOCK_P"]), n_split)
        _ap_rank_kernel[grid](x, t, pidx, count, parts[n_split], n, N, C, chunk, 0.5 / delta,
                              BLOCK_P=c["BLOCK_P"], BLOCK_S=c["BLOCK_S"], num_warps=c["num_warps"],
                              num_stages=c["num_stages"])
        return parts[n_split], n_split

    if N > 0:
        part, n_split = launch(_tuning.pick(AP_RANK_SPACE, _detection_key(x), E._device_name(x), launch))
        _ap_finish_kernel[(n_lpart,)](part, pidx, count, bad, ratio, invd, lpart, N, C, n_split,
                                      BLOCK=_FINISH_BLOCK)
    red = _reduce.finish(lpart, n_lpart, out, 1.0, n_lpart > 0, MEAN)
    return out, (pidx, count, invd, ratio, red)


def ap_backward(x, t, g, saved, delta):
    pidx, count, invd, ratio, red = saved
    n = x.numel()
    dx = torch.empty_like(x)

    def launch(c):
        _ap_backward_kernel[(triton.cdiv(n, c["BLOCK_S"]),)](x, t, pidx, count, invd, ratio, g, red, dx, n,
                                                             x.shape[1], 0.5 / delta, **c)

    if n > 0:
        launch(_tuning.pick(AP_BACKWARD_SPACE, _detection_key(x), E._device_name(x), launch))
    return dx
