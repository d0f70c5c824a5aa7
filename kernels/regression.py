"""Elementwise regression losses: one forward and one backward kernel for the whole family.

The loss is a constexpr (`LOSS`) selecting one `_terms` branch, which returns the loss and
its partial derivatives for x (input), y (target) and z (var / log_var) in fp32; the
launchers, the two-stage reduction and the epilogues are kernels/_elementwise.py's. The
backward recomputes the derivatives from the saved inputs, so nothing but the inputs is
kept between the passes.

Inputs arrive contiguous, all of one shape; `q` (quantiles) is a 1-D tensor along the
last dimension or absent (its value then in p0). With a weight, elements whose weight is
0 contribute exactly 0 to the loss and to every gradient, even where their loss is NaN.
"""

import functools

import triton
import triton.language as tl

from . import _elementwise as E
from . import _math, _tuning
from ._reduce import MEAN, NONE, RMS, SUM  # noqa: F401 (re-exported for the public layer)

# LOSS ids
L1, MSE, SMOOTH_L1, HUBER, BALANCED_L1, QUANTILE, WING, ADAPTIVE_WING = range(8)
LOG_COSH, KL_BOX, POISSON, GAUSSIAN = range(8, 12)
# OPT bits for POISSON
LOG_INPUT, FULL = 1, 2

_LN2 = tl.constexpr(0.6931471805599453)


@triton.jit
def _terms(LOSS: tl.constexpr, OPT: tl.constexpr, x, y, z, q, p0, p1, p2, p3):
    """(loss, dloss/dx, dloss/dy, dloss/dz) for one loss; d = x - y. One return at the end:
    compiled Triton does not support an early return inside a branch."""
    d = x - y
    a = tl.abs(d)
    s = _math.sign(d)
    dz = tl.zeros_like(d)
    if LOSS == 0:  # L1
        loss = a
        dd = s
    elif LOSS == 1:  # MSE
        loss = d * d
        dd = 2.0 * d
    elif LOSS == 2:  # SMOOTH_L1, p0 = beta (0: L1)
        inner = a < p0
        loss = tl.where(inner, 0.5 * d * d / tl.where(inner, p0, 1.0), a - 0.5 * p0)
        dd = tl.where(inner, d / tl.where(inner, p0, 1.0), s)
    elif LOSS == 3:  # HUBER, p0 = delta
        inner = a < p0
        loss = tl.where(inner, 0.5 * d * d, p0 * (a - 0.5 * p0))
        dd = tl.where(inner, d, p0 * s)
    elif LOSS == 4:  # BALANCED_L1, p0 = alpha, p1 = gamma, p2 = beta, p3 = b
        u = a / p2
        inner = u < 1.0
        lg = _math.log1p(p3 * u)
        f = tl.where(inner, p0 / p3 * (p3 * u + 1.0) * lg - p0 * u, p1 * u + p1 / p3 - p0)
        loss = p2 * f
        dd = tl.where(inner, p0 * lg, p1) * s
    elif LOSS == 5:  # QUANTILE, q in [0, 1]; e = y - x; subgradient at e = 0 is q - 1/2
        e = -d
        loss = tl.where(e > 0, q * e, (q - 1.0) * e)
        de = tl.where(e > 0, q, tl.where(e < 0, q - 1.0, q - 0.5 + e))
        dd = -de
    elif LOSS == 6:  # WING, p0 = omega, p1 = epsilon, p2 = C
        inner = a < p0
        loss = tl.where(inner, p0 * _math.log1p(a / p1), a - p2)
        dd = tl.where(inner, p0 / (p1 + a), 1.0) * s
    elif LOSS == 7:  # ADAPTIVE_WING, p0 = omega, p1 = theta, p2 = epsilon, p3 = alpha
        e = p3 - y  # exponent, differentiated through y as mmpose's autograd does
        t = a / p2
        te = _math.power(t, e)
        r = p1 / p2
        re = _math.power(r, e)
        lr = tl.log(r)
        big_a = p0 / p2 * e * (re / r) / (1.0 + re)
        big_c = p1 * big_a - p0 * _math.log1p(re)
        inner = a < p1
        loss = tl.where(inner, p0 * _math.log1p(te), big_a * a - big_c)
        dl_da = tl.where(inner, p0 / p2 * e * _math.power(t, e - 1.0) / (1.0 + te), big_a)
        da_de = p0 / p2 * (re / r) / (1.0 + re) * (1.0 + e * lr / (1.0 + re))
        lt = tl.log(tl.where(t > 0, t, 1.0))
        dl_de = tl.where(
            inner,
            tl.where(t > 0, p0 * te * lt / (1.0 + te), 0.0),
            (a - p1) * da_de + p0 * re * lr / (1.0 + re),
        )
        dx = dl_da * s
        dy = -dx - dl_de
    elif LOSS == 8:  # LOG_COSH: |d| + softplus(-2|d|) - ln 2
        loss = a + _math.softplus(-2.0 * a) - _LN2
        dd = _math.tanh(d)
    elif LOSS == 9:  # KL_BOX, z = log variance alpha
        ez = _math.exp(-z)
        inner = a <= 1.0
        core = tl.where(inner, 0.5 * ez * d * d, ez * (a - 0.5))
        loss = core + 0.5 * z
        dd = tl.where(inner, ez * d, ez * s)
        dz = 0.5 - core
    elif LOSS == 10:  # POISSON, p0 = eps
        if OPT & 1:  # log_input
            ex = _math.exp(x)
            loss = ex - y * x
            dx = ex - y
            dy = -x
        else:
            lx = tl.log(x + p0)
            loss = x - y * lx
            dx = 1.0 - y / (x + p0)
            dy = -lx
        if OPT & 2:  # full: Stirling term where y > 1
            big = y > 1.0
            ly = tl.log(tl.where(big, y, 1.0))
            loss += tl.where(big, y * ly - y + 0.5 * tl.log(6.283185307179586 * y), 0.0)
            dy += tl.where(big, ly + 0.5 / y, 0.0)
    else:  # GAUSSIAN, z = var clamped at p0 = eps (straight through), p1 = constant
        v = tl.where(z < p0, p0, z)
        loss = 0.5 * (tl.log(v) + d * d / v) + p1
        dd = d / v
        dz = 0.5 * (1.0 / v - d * d / (v * v))
    if LOSS != 7 and LOSS != 10:  # the others give d/dx; d/dy = -d/dx
        dx = dd
        dy = -dd
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


FORWARD_SPACE = _tuning.Space("regression.forward", _forward_kernel, E.SPACE, E.DEFAULT)
BACKWARD_SPACE = _tuning.Space("regression.backward", _backward_kernel, E.SPACE, E.DEFAULT)
forward = functools.partial(E.forward, FORWARD_SPACE)
backward = functools.partial(E.backward, BACKWARD_SPACE)
