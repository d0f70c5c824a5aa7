"""The autograd wrapper of every elementwise loss (kernels/_elementwise.py's launchers).

Forward and backward are torch.library custom ops ("tritonloss::elementwise_forward" /
"_backward") with fake implementations, so that torch.compile(fullgraph=True) keeps them
as opaque nodes instead of tracing the launchers' Python (the tuner's cache, the
interpreter). The family's kernel module travels by name.
"""

from __future__ import annotations

import importlib

import torch

from . import _runtime
from .kernels import _reduce

REDUCE = {"none": _reduce.NONE, "sum": _reduce.SUM, "mean": _reduce.MEAN, "rms": _reduce.RMS}


@torch.library.custom_op("tritonloss::elementwise_forward", mutates_args=())
def _forward(x: torch.Tensor, y: torch.Tensor, z: torch.Tensor | None, w: torch.Tensor | None,
             q: torch.Tensor | None, family: str, loss: int, opt: int, params: list[float], reduce: int, q_div: int,
             count: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, fp32 stats [normaliser, result]) of kernels.<family>.forward."""
    with _runtime.on_device(x):
        return importlib.import_module(family).forward(loss, opt, tuple(params), x, y, z, w, q, reduce,
                                                       q_div=q_div, count=count)


@_forward.register_fake
def _(x, y, z, w, q, family, loss, opt, params, reduce, q_div, count):
    return x.new_empty(x.shape if reduce == _reduce.NONE else ()), x.new_empty(2, dtype=torch.float32)


@torch.library.custom_op("tritonloss::elementwise_backward", mutates_args=())
def _backward(g: torch.Tensor, x: torch.Tensor, y: torch.Tensor, z: torch.Tensor | None, w: torch.Tensor | None,
              q: torch.Tensor | None, stats: torch.Tensor, need: list[bool], family: str, loss: int, opt: int,
              params: list[float], reduce: int, q_div: int) -> list[torch.Tensor]:
    """[dx, dy, dz] of kernels.<family>.backward; an empty tensor where `need` says no."""
    with _runtime.on_device(x):
        grads = importlib.import_module(family).backward(loss, opt, tuple(params), x, y, z, w, q, reduce, g, stats,
                                                         tuple(need), q_div=q_div)
    return [t if t is not None else x.new_empty(0) for t in grads]


@_backward.register_fake
def _(g, x, y, z, w, q, stats, need, family, loss, opt, params, reduce, q_div):
    return [torch.empty_like(t) if t is not None and want else x.new_empty(0) for t, want in zip((x, y, z), need)]


def _setup_context(ctx, inputs, output):
    x, y, z, w, q, family, loss, opt, params, reduce, q_div, _count = inputs
    ctx.save_for_backward(x, y, z, w, q, output[1])
    ctx.args = (family, loss, opt, params, reduce, q_div)


def _differentiate(ctx, grad, _grad_stats):
    x, y, z, w, q, stats = ctx.saved_tensors
    need = [bool(v) for v in ctx.needs_input_grad[:3]]
    grads = _backward(grad.contiguous(), x, y, z, w, q, stats, need, *ctx.args)
    return (*(t if want else None for t, want in zip(grads, need)),) + (None,) * 9


_forward.register_autograd(_differentiate, setup_context=_setup_context)


def apply(kernels, loss: int, reduction: str, shape, x, y, z=None, w=None, q=None, params=(), opt=0,
          q_div=1, count=None):
    """Run the elementwise kernels on tensors that broadcast to `shape` (w and q detached)."""
    x, y = (t.expand(shape).contiguous() for t in (x, y))
    z = z.expand(shape).contiguous() if z is not None else None
    w = w.detach().expand(shape).contiguous() if w is not None else None
    q = q.detach().contiguous() if q is not None else None
    out, _stats = _forward(x, y, z, w, q, kernels.__name__, loss, opt, [float(v) for v in params], REDUCE[reduction],
                           q_div, count)
    return out
