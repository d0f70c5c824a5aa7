"""Elementwise regression losses: one forward and one backward kernel for the whole family.

The loss is a constexpr (`LOSS`) selecting one `_terms` branch, which returns the loss and
its partial derivatives for x (input), y (target) and z (var / log_var) in fp32. The
forward stores the loss ("none") or per-program partial sums that `_finish_kernel` adds
in a fixed order (deterministic two-stage reduction) and divides by the count or the
summed weight. The backward recomputes the derivatives from the saved inputs, so nothing
but the inputs is kept between the passes.

Inputs arrive contiguous, all of one shape; `q` (quantiles) is a 1-D tensor along the
last dimension or absent (its value then in p0). With a weight, elements whose weight is
0 contribute exactly 0 to the loss and to every gradient, even where their loss is NaN.
"""

import torch
import triton
import triton.language as tl

from . import _math, _reduce, _tuning
from ._reduce import MEAN, NONE, RMS, SUM  # noqa: F401 (re-exported for the public layer)

# LOSS ids
L1, MSE, SMOOTH_L1, HUBER, BALANCED_L1, QUANTILE, WING, ADAPTIVE_WING = range(8)
LOG_COSH, KL_BOX, POISSON, GAUSSIAN = range(8, 12)
# OPT bits for POISSON
LOG_INPUT, FULL = 1, 2

_LN2 = tl.constexpr(0.6931471805599453)


@triton.jit
def _terms(LOSS: tl.constexpr, OPT: tl.constexpr, x, y, z, q, p0, p1, p2, p3):
    """(loss, dloss/dx, dloss/dy, dloss/dz) for one loss; d = x - y."""
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
        dd = dl_da * s
        return loss, dd, -dd - dl_de, dz
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
        return loss, dx, dy, dz
    else:  # GAUSSIAN, z = var clamped at p0 = eps (straight through), p1 = constant
        v = tl.where(z < p0, p0, z)
        loss = 0.5 * (tl.log(v) + d * d / v) + p1
        dd = d / v
        dz = 0.5 * (1.0 / v - d * d / (v * v))
    return loss, dd, -dd, dz


@triton.jit
def _load_block(x_ptr, y_ptr, z_ptr, w_ptr, q_ptr, n, nq, p0,
                HAS_Z: tl.constexpr, HAS_W: tl.constexpr, HAS_Q: tl.constexpr, BLOCK: tl.constexpr):
    """This program's block: offsets, mask and the fp32 inputs (w = 0 on masked lanes)."""
    pid = tl.program_id(0).to(tl.int64)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    y = tl.load(y_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    if HAS_Z:
        z = tl.load(z_ptr + offs, mask=mask, other=1.0).to(tl.float32)
    else:
        z = tl.zeros_like(x)
    if HAS_W:
        w = tl.load(w_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    else:
        w = tl.where(mask, 1.0, 0.0)
    if HAS_Q:
        q = tl.load(q_ptr + offs % nq).to(tl.float32)
    else:
        q = p0 + tl.zeros_like(x)
    return pid, offs, mask, x, y, z, w, q


@triton.jit
def _forward_kernel(x_ptr, y_ptr, z_ptr, w_ptr, q_ptr, out_ptr, part_ptr, n, nq,
                    p0, p1, p2, p3,
                    LOSS: tl.constexpr, OPT: tl.constexpr, HAS_Z: tl.constexpr,
                    HAS_W: tl.constexpr, HAS_Q: tl.constexpr, REDUCE: tl.constexpr,
                    BLOCK: tl.constexpr):
    pid, offs, mask, x, y, z, w, q = _load_block(x_ptr, y_ptr, z_ptr, w_ptr, q_ptr, n, nq, p0,
                                                 HAS_Z, HAS_W, HAS_Q, BLOCK)
    loss, _, _, _ = _terms(LOSS, OPT, x, y, z, q, p0, p1, p2, p3)
    loss = tl.where(w != 0, loss * w, 0.0)  # zero weight and masked lanes: exactly 0
    if REDUCE == 0:
        tl.store(out_ptr + offs, loss.to(out_ptr.dtype.element_ty), mask=mask)
    else:
        tl.store(part_ptr + pid, tl.sum(loss, axis=0))
        if HAS_W:
            tl.store(part_ptr + tl.num_programs(0) + pid, tl.sum(w, axis=0))


@triton.jit
def _backward_kernel(x_ptr, y_ptr, z_ptr, w_ptr, q_ptr, g_ptr, stat_ptr,
                     dx_ptr, dy_ptr, dz_ptr, n, nq, p0, p1, p2, p3,
                     LOSS: tl.constexpr, OPT: tl.constexpr, HAS_Z: tl.constexpr,
                     HAS_W: tl.constexpr, HAS_Q: tl.constexpr, REDUCE: tl.constexpr,
                     NEED_X: tl.constexpr, NEED_Y: tl.constexpr, NEED_Z: tl.constexpr,
                     BLOCK: tl.constexpr):
    pid, offs, mask, x, y, z, w, q = _load_block(x_ptr, y_ptr, z_ptr, w_ptr, q_ptr, n, nq, p0,
                                                 HAS_Z, HAS_W, HAS_Q, BLOCK)
    if REDUCE == 0:
        g = tl.load(g_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    else:
        g = tl.load(g_ptr).to(tl.float32)
        if REDUCE == 2:
            g = g / tl.load(stat_ptr)
        elif REDUCE == 3:  # d sqrt(S / norm) / dS = 1 / (2 r norm); 0 at a perfect fit
            r = tl.load(stat_ptr + 1)
            g = tl.where(r == 0, 0.0, g / (2.0 * r * tl.load(stat_ptr)))
    gw = g * w
    keep = w != 0
    _, dx, dy, dz = _terms(LOSS, OPT, x, y, z, q, p0, p1, p2, p3)
    if NEED_X:
        tl.store(dx_ptr + offs, tl.where(keep, gw * dx, 0.0).to(dx_ptr.dtype.element_ty), mask=mask)
    if NEED_Y:
        tl.store(dy_ptr + offs, tl.where(keep, gw * dy, 0.0).to(dy_ptr.dtype.element_ty), mask=mask)
    if NEED_Z:
        tl.store(dz_ptr + offs, tl.where(keep, gw * dz, 0.0).to(dz_ptr.dtype.element_ty), mask=mask)


_SPACE = [
    {"BLOCK": b, "num_warps": w, "num_stages": 1} for b in (1024, 2048, 4096, 8192) for w in (4, 8)
]
_DEFAULT = {"BLOCK": 1024, "num_warps": 4, "num_stages": 1}
FORWARD_SPACE = _tuning.Space("regression.forward", _forward_kernel, _SPACE, _DEFAULT)
BACKWARD_SPACE = _tuning.Space("regression.backward", _backward_kernel, _SPACE, _DEFAULT)


def _device_name(t: torch.Tensor) -> str | None:
    return torch.cuda.get_device_name(t.device) if t.is_cuda else None


def _key(loss: int, reduce: int, n: int, *tensors) -> tuple:
    dtypes = "/".join(str(t.dtype).removeprefix("torch.") for t in tensors if t is not None)
    return (loss, reduce, _tuning.bucket(n), dtypes)


def forward(loss: int, opt: int, params, x, y, z, w, q, reduce: int):
    """Loss ("none": shaped like x) or 0-dim result, and stats = fp32 [normaliser, result]."""
    n = x.numel()
    nq = q.numel() if q is not None else 1
    p = tuple(float(v) for v in params) + (0.0,) * (4 - len(params))
    out = torch.empty(x.shape if reduce == NONE else (), dtype=x.dtype, device=x.device)
    stats = torch.empty(2, dtype=torch.float32, device=x.device)  # unused with "none"
    flags = dict(LOSS=loss, OPT=opt, HAS_Z=z is not None, HAS_W=w is not None,
                 HAS_Q=q is not None, REDUCE=reduce)
    dummy = x
    parts = {}

    def launch(c):
        n_part = triton.cdiv(n, c["BLOCK"])
        if reduce == NONE:
            part = out  # the kernel writes no partials
        elif n_part not in parts:
            part = parts[n_part] = _reduce.partials(n_part, w is not None, x.device)
        else:
            part = parts[n_part]
        _forward_kernel[(n_part,)](
            x, y, z if z is not None else dummy, w if w is not None else dummy,
            q if q is not None else dummy, out, part, n, nq, *p, **flags, **c)
        return part

    part = torch.empty(0, dtype=torch.float32, device=x.device)
    if n > 0:
        config = _tuning.pick(FORWARD_SPACE, _key(loss, reduce, n, x, y, z, w), _device_name(x), launch)
        part = launch(config)
    if reduce != NONE:
        n_part = part.numel() // 2 if w is not None else part.numel()
        stats = _reduce.finish(part, n_part, out, n, w is not None, reduce)
    return out, stats


def backward(loss: int, opt: int, params, x, y, z, w, q, reduce: int, g, stats, need):
    """Gradients (dx, dy, dz), each None unless `need` asks for it, in its tensor's dtype."""
    n = x.numel()
    nq = q.numel() if q is not None else 1
    p = tuple(float(v) for v in params) + (0.0,) * (4 - len(params))
    grads = [torch.empty_like(t) if want else None for t, want in zip((x, y, z), need)]
    if n == 0 or not any(need):
        return tuple(grads)
    dummy = x
    ptrs = [t if t is not None else dummy for t in (z, w, q)]
    dptrs = [t if t is not None else dummy for t in grads]
    flags = dict(LOSS=loss, OPT=opt, HAS_Z=z is not None, HAS_W=w is not None,
                 HAS_Q=q is not None, REDUCE=reduce, NEED_X=bool(need[0]),
                 NEED_Y=bool(need[1]), NEED_Z=bool(need[2]))

    def launch(c):
        _backward_kernel[(triton.cdiv(n, c["BLOCK"]),)](
            x, y, *ptrs, g, stats, *dptrs, n, nq, *p, **flags, **c)

    key = _key(loss, reduce, n, x, y, z, w) + (tuple(bool(v) for v in need),)
    launch(_tuning.pick(BACKWARD_SPACE, key, _device_name(x), launch))
    return tuple(grads)
