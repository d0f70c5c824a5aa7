"""The engine of the elementwise losses (regression, and the binary / margin losses of
classification): the shared parts of their kernels and their launchers.

A family writes `_terms` (loss and its derivatives for one element) and two thin kernels
with the signatures below that call `load_block`, then `store_loss` (forward) or
`grad_scale` + `store_grad` (backward). Operands, all contiguous and of the loss's shape
except `q`: x (input), y (target), z (a third differentiable operand), w (a weight, not
differentiated; 0 masks an element exactly, even where its loss is NaN) and q, a small
vector broadcast along the flat index as q[(i // q_div) % nq] (quantiles along the last
dimension, pos_weight per class, a per-sample coefficient). Reductions are two-stage
(kernels/_reduce.py) and the backward recomputes from the inputs.
"""

import torch
import triton
import triton.language as tl

from . import _reduce, _tuning
from ._reduce import NONE

SPACE = [{"BLOCK": b, "num_warps": w, "num_stages": 1} for b in (1024, 2048, 4096, 8192) for w in (4, 8)]
DEFAULT = {"BLOCK": 1024, "num_warps": 4, "num_stages": 1}


@triton.jit
def load_block(x_ptr, y_ptr, z_ptr, w_ptr, q_ptr, n, nq, q_div, p0,
               HAS_Z: tl.constexpr, HAS_W: tl.constexpr, HAS_Q: tl.constexpr, BLOCK: tl.constexpr):
    """This program's block: offsets, mask and the fp32 operands (w = 0 on masked lanes;
    without q, q = p0)."""
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
        q = tl.load(q_ptr + (offs // q_div) % nq, mask=mask, other=0.0).to(tl.float32)
    else:
        q = p0 + tl.zeros_like(x)
    return pid, offs, mask, x, y, z, w, q


@triton.jit
def store_loss(loss, w, pid, offs, mask, out_ptr, part_ptr, HAS_W: tl.constexpr, REDUCE: tl.constexpr):
    """Forward epilogue: the weighted loss ("none") or this program's partial sums."""
    loss = tl.where(w != 0, loss * w, 0.0)  # zero weight and masked lanes: exactly 0
    if REDUCE == 0:
        tl.store(out_ptr + offs, loss.to(out_ptr.dtype.element_ty), mask=mask)
    else:
        tl.store(part_ptr + pid, tl.sum(loss, axis=0))
        if HAS_W:
            tl.store(part_ptr + tl.num_programs(0) + pid, tl.sum(w, axis=0))


@triton.jit
def grad_scale(g_ptr, stat_ptr, offs, mask, REDUCE: tl.constexpr):
    """d(result)/d(loss element): grad_output, divided by the normaliser for "mean"."""
    if REDUCE == 0:
        g = tl.load(g_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    else:
        g = tl.load(g_ptr).to(tl.float32)
        if REDUCE == 2:
            g = g / tl.load(stat_ptr)
        elif REDUCE == 3:  # d sqrt(S / norm) / dS = 1 / (2 r norm); 0 at a perfect fit
            r = tl.load(stat_ptr + 1)
            g = tl.where(r == 0, 0.0, g / (2.0 * r * tl.load(stat_ptr)))
    return g


@triton.jit
def store_grad(ptr, offs, mask, g, w, d, NEED: tl.constexpr):
    """Backward epilogue: g * w * d, exactly 0 where the weight is 0."""
    if NEED:
        tl.store(ptr + offs, tl.where(w != 0, g * w * d, 0.0).to(ptr.dtype.element_ty), mask=mask)


def _device_name(t: torch.Tensor) -> str | None:
    return torch.cuda.get_device_name(t.device) if t.is_cuda else None


def _key(loss: int, reduce: int, n: int, *tensors) -> tuple:
    dtypes = "/".join(str(t.dtype).removeprefix("torch.") for t in tensors if t is not None)
    return (loss, reduce, _tuning.bucket(n), dtypes)


def _params(params) -> tuple:
    return tuple(float(v) for v in params) + (0.0,) * (4 - len(params))


def forward(space: _tuning.Space, loss: int, opt: int, params, x, y, z, w, q, reduce: int,
            q_div: int = 1, count: int | None = None):
    """Loss ("none": shaped like x) or 0-dim result, and stats = fp32 [normaliser, result].
    The normaliser of "mean" is `count` when given (torch's weighted BCE divides by the
    element count), else the summed weight, else the element count."""
    n = x.numel()
    nq = q.numel() if q is not None else 1
    out = torch.empty(x.shape if reduce == NONE else (), dtype=x.dtype, device=x.device)
    stats = torch.empty(2, dtype=torch.float32, device=x.device)  # unused with "none"
    flags = dict(LOSS=loss, OPT=opt, HAS_Z=z is not None, HAS_W=w is not None,
                 HAS_Q=q is not None, REDUCE=reduce)
    ptrs = [t if t is not None else x for t in (z, w, q)]
    parts = {}

    def launch(c):
        n_part = triton.cdiv(n, c["BLOCK"])
        if reduce == NONE:
            part = out  # the kernel writes no partials
        elif n_part not in parts:
            part = parts[n_part] = _reduce.partials(n_part, w is not None, x.device)
        else:
            part = parts[n_part]
        space.kernel[(n_part,)](x, y, *ptrs, out, part, n, nq, q_div, *_params(params), **flags, **c)
        return part

    part = torch.empty(0, dtype=torch.float32, device=x.device)
    if n > 0:
        config = _tuning.pick(space, _key(loss, reduce, n, x, y, z, w), _device_name(x), launch)
        part = launch(config)
    if reduce != NONE:
        n_part = part.numel() // 2 if w is not None else part.numel()
        has_norm = w is not None and count is None
        stats = _reduce.finish(part, n_part, out, n if count is None else count, has_norm, reduce)
    return out, stats


def backward(space: _tuning.Space, loss: int, opt: int, params, x, y, z, w, q, reduce: int, g,
             stats, need, q_div: int = 1):
    """Gradients (dx, dy, dz), each None unless `need` asks for it, in its tensor's dtype."""
    n = x.numel()
    nq = q.numel() if q is not None else 1
    grads = [torch.empty_like(t) if want else None for t, want in zip((x, y, z), need)]
    if n == 0 or not any(need):
        return tuple(grads)
    ptrs = [t if t is not None else x for t in (z, w, q)]
    dptrs = [t if t is not None else x for t in grads]
    flags = dict(LOSS=loss, OPT=opt, HAS_Z=z is not None, HAS_W=w is not None,
                 HAS_Q=q is not None, REDUCE=reduce, NEED_X=bool(need[0]),
                 NEED_Y=bool(need[1]), NEED_Z=bool(need[2]))

    def launch(c):
        space.kernel[(triton.cdiv(n, c["BLOCK"]),)](
            x, y, *ptrs, g, stats, *dptrs, n, nq, q_div, *_params(params), **flags, **c)

    key = _key(loss, reduce, n, x, y, z, w) + (tuple(bool(v) for v in need),)
    launch(_tuning.pick(space, key, _device_name(x), launch))
    return tuple(grads)
