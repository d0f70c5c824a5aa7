"""The autograd wrapper of every elementwise loss (kernels/_elementwise.py's launchers)."""

from __future__ import annotations

from typing import NamedTuple

import torch

from . import _runtime
from .kernels import _reduce

REDUCE = {"none": _reduce.NONE, "sum": _reduce.SUM, "mean": _reduce.MEAN, "rms": _reduce.RMS}


class Spec(NamedTuple):
    kernels: object  # the family's kernel module: forward(...) and backward(...)
    loss: int
    opt: int
    params: tuple
    reduce: int
    q_div: int = 1
    count: int | None = None  # the normaliser of "mean" without a weight (default numel)


class Elementwise(torch.autograd.Function):
    @staticmethod
    def forward(ctx, spec, x, y, z, w, q):
        k = spec.kernels
        out, stats = k.forward(spec.loss, spec.opt, spec.params, x, y, z, w, q, spec.reduce,
                               q_div=spec.q_div, count=spec.count)
        ctx.spec = spec
        ctx.save_for_backward(x, y, z, w, q, stats)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        x, y, z, w, q, stats = ctx.saved_tensors
        s = ctx.spec
        dx, dy, dz = s.kernels.backward(s.loss, s.opt, s.params, x, y, z, w, q, s.reduce,
                                        grad.contiguous(), stats, ctx.needs_input_grad[1:4], q_div=s.q_div)
        return None, dx, dy, dz, None, None


def apply(kernels, loss: int, reduction: str, shape, x, y, z=None, w=None, q=None, params=(), opt=0,
          q_div=1, count=None):
    """Run the elementwise kernels on tensors that broadcast to `shape` (w and q detached)."""
    spec = Spec(kernels, loss, opt, tuple(params), REDUCE[reduction], q_div, count)
    x, y = (t.expand(shape).contiguous() for t in (x, y))
    z = z.expand(shape).contiguous() if z is not None else None
    w = w.detach().expand(shape).contiguous() if w is not None else None
    q = q.detach().contiguous() if q is not None else None
    with _runtime.on_device(x):
        return Elementwise.apply(spec, x, y, z, w, q)
