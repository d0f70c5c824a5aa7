"""Argument checks shared by every family. Each error names the argument, what was
expected and what was given, and is raised before any kernel launch."""

from __future__ import annotations

import math
import numbers

import torch

REDUCTIONS = ("none", "mean", "sum")


def reduction(value, allowed: tuple[str, ...] = REDUCTIONS) -> str:
    if not isinstance(value, str) or value not in allowed:
        raise ValueError(f"reduction: expected one of {', '.join(map(repr, allowed))}, got {value!r}")
    return value


def floating(name: str, t) -> torch.Tensor:
    """A floating-point tensor (fp16, bf16, fp32 or fp64)."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    if not t.is_floating_point():
        raise TypeError(f"{name}: expected a floating-point tensor, got dtype {t.dtype}")
    return t


def same_device(**tensors: torch.Tensor | None) -> None:
    named = [(n, t) for n, t in tensors.items() if t is not None]
    first_name, first = named[0]
    for name, t in named[1:]:
        if t.device != first.device:
            raise ValueError(
                f"{name}: expected a tensor on {first.device} like {first_name}, got {t.device}"
            )


def broadcast(**tensors: torch.Tensor | None) -> torch.Size:
    """The broadcast shape of the given tensors, or a ValueError naming their shapes."""
    named = [(n, t) for n, t in tensors.items() if t is not None]
    try:
        return torch.broadcast_shapes(*(t.shape for _, t in named))
    except RuntimeError:
        shapes = ", ".join(f"{n} {tuple(t.shape)}" for n, t in named)
        raise ValueError(f"shapes do not broadcast: {shapes}") from None


def weight(w, shape: torch.Size, like: torch.Tensor) -> torch.Tensor | None:
    """An optional floating weight on `like`'s device that broadcasts to `shape` unchanged."""
    if w is None:
        return None
    floating("weight", w)
    same_device(input=like, weight=w)
    try:
        ok = torch.broadcast_shapes(w.shape, shape) == shape
    except RuntimeError:
        ok = False
    if not ok:
        raise ValueError(
            f"weight: expected a shape broadcastable to the loss shape {tuple(shape)}, "
            f"got {tuple(w.shape)}"
        )
    return w


def number(
    name: str,
    value,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
) -> float:
    """A finite real number in [low, high] (or (low, high] with low_open)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name}: expected a real number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name}: expected a finite number, got {value}")
    if low is not None and (value < low or (low_open and value == low)):
        bound = f"> {low}" if low_open else f">= {low}"
        raise ValueError(f"{name}: expected a number {bound}, got {value}")
    if high is not None and value > high:
        raise ValueError(f"{name}: expected a number <= {high}, got {value}")
    return value


def flag(name: str, value) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name}: expected a bool, got {type(value).__name__}")
    return value


def choice(name: str, value, allowed) -> str:
    """One of the strings in `allowed` (a mode, a format, a kind)."""
    if not isinstance(value, str) or value not in allowed:
        raise ValueError(f"{name}: expected one of {', '.join(map(repr, allowed))}, got {value!r}")
    return value


def integer(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name}: expected an int, got {type(value).__name__}")
    return int(value)


def labels(name: str, t, shape: tuple, like: torch.Tensor) -> torch.Tensor:
    """An integer label tensor of `shape` on `like`'s device, as contiguous int64."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise TypeError(f"{name}: expected integer class labels, got dtype {t.dtype}")
    same_device(input=like, **{name: t})
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"{name}: expected shape {tuple(shape)}, got {tuple(t.shape)}")
    return t.to(torch.int64).contiguous()


def labels_in_range(name: str, t: torch.Tensor, num_classes: int, ignore_index: int | None = None) -> None:
    """With checks on (a device sync on CUDA): every label in [0, num_classes) or ignored."""
    from . import _runtime

    if not _runtime.checks_enabled() or t.numel() == 0:
        return
    bad = (t < 0) | (t >= num_classes)
    if ignore_index is not None:
        bad &= t != ignore_index
    if bool(bad.any()):
        pos = tuple(int(i) for i in bad.nonzero()[0])
        raise ValueError(
            f"{name}: expected class labels in [0, {num_classes})"
            + (f" or ignore_index {ignore_index}" if ignore_index is not None else "")
            + f", got {int(t[pos])} at position {pos}"
        )


def class_weight(name: str, w, num_classes: int, like: torch.Tensor) -> torch.Tensor | None:
    """An optional 1-D floating tensor of `num_classes` elements on `like`'s device."""
    if w is None:
        return None
    floating(name, w)
    same_device(input=like, **{name: w})
    if w.dim() != 1 or w.numel() != num_classes:
        raise ValueError(f"{name}: expected a 1-D tensor of {num_classes} elements, got shape {tuple(w.shape)}")
    return w.detach().contiguous()
