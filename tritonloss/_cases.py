"""One case per public loss, shared by `tritonloss check`, `tritonloss tune` and the perf
suites: how to make its arguments at a shape, which reductions it takes, and its float64
eager reference. Each family keeps its cases in one function below.

`make(shape, dtype, device) -> (args, options)`: positional tensors (floating ones are
differentiated; integer ones, such as class labels, are not) and keyword options. A family
reads `shape` as it needs (for example its last dimension as the class count).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch

from . import functional as F
from . import reference

_ALL = tuple({"reduction": r} for r in ("none", "mean", "sum"))
# shapes `tritonloss tune` times: the elementwise perf size and one smaller bucket
_ELEMENTWISE_TUNE = ((2**10, 2**10), (2**14, 2**10))


class Case(NamedTuple):
    name: str
    fn: Callable
    ref: Callable
    make: Callable
    reductions: tuple = _ALL
    tune_shapes: tuple = _ELEMENTWISE_TUNE


def _randn(shape, dtype, device, scale=1.0):
    return (torch.randn(shape, device=device) * scale).to(dtype)


def _rand(shape, dtype, device, low=0.0, high=1.0):
    return (torch.rand(shape, device=device) * (high - low) + low).to(dtype)


def regression_cases() -> list[Case]:
    R = reference.regression

    def case(name, make, reductions=_ALL):
        return Case(name, getattr(F, name), getattr(R, name), make, reductions)

    def pair(scale=1.0, **opts):
        return lambda s, dt, dev: ([_randn(s, dt, dev, scale), _randn(s, dt, dev, scale)], opts)

    def quantile(s, dt, dev):
        q = torch.linspace(0.1, 0.9, s[-1], device=dev)
        return [_randn(s, dt, dev), _randn(s, dt, dev)], {"quantiles": q}

    def heatmap(s, dt, dev):
        return [_rand(s, dt, dev), _rand(s, dt, dev)], {}

    def kl_box(s, dt, dev):
        return [_randn(s, dt, dev, 2), _randn(s, dt, dev, 0.5), _randn(s, dt, dev, 2)], {}

    def poisson(s, dt, dev):
        return [_randn(s, dt, dev), _rand(s, dt, dev, 0, 4)], {"full": True}

    def gaussian(s, dt, dev):
        return [_randn(s, dt, dev), _randn(s, dt, dev), _rand(s, dt, dev, 0.1, 1.1)], {}

    return [
        case("l1_loss", pair()),
        case("mse_loss", pair()),
        case("rmse_loss", pair(), reductions=({},)),
        case("smooth_l1_loss", pair(beta=0.5)),
        case("huber_loss", pair(delta=0.7)),
        case("balanced_l1_loss", pair(beta=0.8)),
        case("quantile_loss", quantile),
        case("wing_loss", pair(scale=8.0)),
        case("adaptive_wing_loss", heatmap),
        case("log_cosh_loss", pair(scale=3.0)),
        case("kl_box_loss", kl_box),
        case("poisson_nll_loss", poisson),
        case("gaussian_nll_loss", gaussian),
    ]


def overlap_cases() -> list[Case]:
    """`shape` is read as [B, C, *spatial] when it has three dims or more, else as the
    spatial size of a [2, 3, n] input. Tuned at the perf shapes."""
    Ro = reference.overlap
    tune = ((8, 19, 512, 1024), (2, 4, 128, 128, 128))

    def shape_of(s):
        return tuple(s) if len(s) >= 3 else (2, 3, s[-1])

    def labels(s, dev):
        return torch.randint(0, s[1], (s[0], *s[2:]), device=dev)

    def dice(s, dt, dev):
        s = shape_of(s)
        return [_randn(s, dt, dev, 2), labels(s, dev)], {"ignore_index": 0}

    def tversky(s, dt, dev):
        s = shape_of(s)
        return [_randn(s, dt, dev, 2), _rand(s, dt, dev)], {"alpha": 0.3, "beta": 0.7, "activation": "sigmoid"}

    def focal(s, dt, dev):
        s = shape_of(s)
        w = _rand((s[1] - 1,), torch.float32, dev, 0.5, 2.0)
        return [_randn(s, dt, dev, 2), labels(s, dev)], {"include_background": False, "weight": w}

    return [
        Case("dice_loss", F.dice_loss, Ro.dice_loss, dice, tune_shapes=tune),
        Case("tversky_loss", F.tversky_loss, Ro.tversky_loss, tversky, tune_shapes=tune),
        Case("focal_tversky_loss", F.focal_tversky_loss, Ro.focal_tversky_loss, focal, tune_shapes=tune),
    ]


def all_cases() -> list[Case]:
    return regression_cases() + overlap_cases()
