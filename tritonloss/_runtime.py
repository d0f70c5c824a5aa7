"""Which path a call takes (Triton on CUDA, Triton interpreted on CPU, eager), and the checks switch.

`TRITON_INTERPRET=1` must be set before `tritonloss` is imported: Triton decides at
decoration time whether a kernel is compiled or interpreted.
"""

from __future__ import annotations

import contextlib
import os

import torch

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")

#: dtypes the kernels take; float64 (gradcheck, tests) runs the eager reference instead.
KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

_checks = os.environ.get("TRITONLOSS_CHECKS", "0") not in ("", "0")


def set_checks(enabled: bool = True) -> None:
    """Turn data-dependent argument checks on or off for CUDA tensors.

    Checks that need the values of a tensor (labels in range, non-negative variances,
    quantiles in [0, 1]) synchronise with the device, so on CUDA they only run when
    enabled. On the CPU they always run: there they cost no synchronisation.
    The environment variable `TRITONLOSS_CHECKS=1` turns them on at import.
    """
    global _checks
    _checks = bool(enabled)


def checks_enabled() -> bool:
    """Whether data-dependent checks run (always False while torch.compile traces)."""
    return _checks and not tracing()


def tracing() -> bool:
    """True while torch.compile traces: no host reads of tensor values then (they would
    break the graph), so data-dependent checks are skipped."""
    return torch.compiler.is_compiling()


def may_inspect(t: torch.Tensor) -> bool:
    """True if reading `t`'s values on the host is allowed (CPU tensor, or checks on) and
    torch.compile is not tracing."""
    return (_checks or t.device.type != "cuda") and not tracing()


def use_kernels(*tensors: torch.Tensor | None) -> bool:
    """True if the Triton kernels serve these tensors, False if the eager reference does."""
    ts = [t for t in tensors if t is not None]
    if any(t.dtype not in KERNEL_DTYPES for t in ts if t.is_floating_point()):
        return False
    device = ts[0].device.type
    return device == "cuda" or (device == "cpu" and INTERPRET)


def on_device(t: torch.Tensor):
    """Context that makes `t`'s GPU current, so a launch lands where the data is."""
    if t.device.type == "cuda":
        return torch.cuda.device(t.device)
    return contextlib.nullcontext()


@torch.compiler.disable
def untraced(apply, *args):
    """apply(*args) outside torch.compile's tracing (a graph break there, run eagerly): the
    launchers' Python (the tuner's cache, Triton's interpreter) is not traceable. Losses on
    the elementwise engine need none of this: they are torch.library custom ops."""
    return apply(*args)
