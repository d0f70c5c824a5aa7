"""The measurement every perf suite shares.

`measure(benchmark, step, ...)` runs `step` (one forward + backward) once to compile and
autotune, then on CUDA records into `benchmark.extra_info`: the GPU time (median of
triton.testing.do_bench, which flushes L2), the peak memory the step allocates beyond
what was live before it, and, when given, GB/s and % of the measured copy bandwidth
(memory-bound losses) or TFLOP/s and % of a measured bf16 GEMM (matmul-bound ones);
pytest-benchmark then times the
synchronised step. Without CUDA the step runs once under the interpreter (a smoke test of
the harness: no timing claims come from it).
"""

from __future__ import annotations

import functools

import torch

CUDA = torch.cuda.is_available()
IMPLS = ("tritonloss", "eager", "compile")


@functools.cache
def copy_bandwidth_gbps() -> float:
    """Device-to-device copy of 1 GiB: bytes read + written over the median time."""
    import triton

    src = torch.empty(2**28, device="cuda")
    dst = torch.empty_like(src)
    ms = triton.testing.do_bench(lambda: dst.copy_(src), return_mode="median")
    return 2 * src.numel() * 4 / ms / 1e6


@functools.cache
def matmul_tflops() -> float:
    """bf16 8192^3 GEMM on the tensor cores: the measured peak the margin family's TFLOP/s is
    compared with (the 8 B D C floor runs at this rate at best)."""
    import triton

    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    ms = triton.testing.do_bench(lambda: a @ a, return_mode="median")
    return 2 * 8192**3 / ms / 1e9


def pick(impl: str, fused, eager):
    """The callable for one implementation: ours, the eager anchor, or torch.compile of it."""
    if impl == "tritonloss":
        return fused
    if impl == "eager":
        return eager
    return torch.compile(eager, dynamic=False)


def measure(benchmark, step, *, bytes_moved: int | None = None, flops: float | None = None,
            rounds: int = 20):
    """Time `step` on CUDA (see the module docstring) or run it once on the CPU; returns
    what the last call of `step` returned."""
    result = step()  # compile / autotune outside the timing
    if not CUDA:
        benchmark.pedantic(step, rounds=1)
        return step()
    import triton

    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    result = step()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - base
    ms = triton.testing.do_bench(step, return_mode="median")
    info = dict(gpu=torch.cuda.get_device_name(), gpu_ms=ms, peak_mb=peak / 2**20)
    if bytes_moved is not None:
        gbps = bytes_moved / ms / 1e6
        info.update(bytes=bytes_moved, gbps=gbps, copy_gbps=copy_bandwidth_gbps(),
                    pct_of_copy=100 * gbps / copy_bandwidth_gbps())
    if flops is not None:
        tflops = flops / ms / 1e9
        info.update(flops=flops, tflops=tflops, matmul_tflops=matmul_tflops(),
                    pct_of_matmul=100 * tflops / matmul_tflops())
    benchmark.extra_info.update(info)

    def timed():
        step()
        torch.cuda.synchronize()

    benchmark.pedantic(timed, rounds=rounds, warmup_rounds=3)
    return result
