"""Regression family: tritonloss vs eager vs torch.compile(eager), forward + backward.

On CUDA: every loss at 2^24 fp32 elements, reduction "mean", gradient for the input.
pytest-benchmark times the synchronised step; extra_info holds the GPU time from
triton.testing.do_bench (median), the bytes a fused implementation must move (inputs read
twice, gradient written once), GB/s and % of the measured device copy bandwidth, and
peak memory. Without CUDA: `test_harness_tiny` runs the same harness on a tiny shape under
the interpreter, so the harness itself is tested in CI.

    pytest perf --benchmark-json=perf/results/<gpu-slug>/regression.json
"""

import functools

import pytest
import torch

from tritonloss import reference
from tritonloss.cli import check_cases

CUDA = torch.cuda.is_available()
N = 2**24
CASES = {name: (fn, make) for name, fn, make in check_cases()}


@functools.cache
def copy_bandwidth_gbps() -> float:
    """Device-to-device copy of 1 GiB, bytes read + written over the median time."""
    import triton

    src = torch.empty(2**28, device="cuda")
    dst = torch.empty_like(src)
    ms = triton.testing.do_bench(lambda: dst.copy_(src), return_mode="median")
    return 2 * src.numel() * 4 / ms / 1e6


def _implementation(name, impl):
    fn, _ = CASES[name]
    eager = getattr(reference.regression, name)
    if impl == "tritonloss":
        return fn
    if impl == "eager":
        return eager
    return torch.compile(eager, dynamic=False)


def run_harness(benchmark, name, impl, n, device, rounds):
    fn, make = CASES[name]
    shape = (n // 1024, 1024) if n >= 1024 else (n,)
    tensors, opts = make(shape, torch.float32, device)
    x = tensors[0].requires_grad_()
    loss_fn = _implementation(name, impl)

    def step():
        (g,) = torch.autograd.grad(loss_fn(x, *tensors[1:], **opts), [x])
        return g

    step()  # compile / autotune outside the timing
    if device == "cuda":
        import triton

        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        step()
        peak = torch.cuda.max_memory_allocated() - base
        ms = triton.testing.do_bench(step, return_mode="median")
        bytes_moved = (2 * len(tensors) + 1) * x.numel() * x.element_size()
        gbps = bytes_moved / ms / 1e6
        benchmark.extra_info.update(
            gpu=torch.cuda.get_device_name(), gpu_ms=ms, bytes=bytes_moved, gbps=gbps,
            copy_gbps=copy_bandwidth_gbps(), pct_of_copy=100 * gbps / copy_bandwidth_gbps(),
            peak_mb=peak / 2**20,
        )

        def timed():
            step()
            torch.cuda.synchronize()

        benchmark.pedantic(timed, rounds=rounds, warmup_rounds=3)
    else:
        benchmark.pedantic(step, rounds=rounds)
    assert torch.isfinite(step()).all()


@pytest.mark.skipif(not CUDA, reason="timing needs a CUDA GPU (test_harness_tiny covers the harness)")
@pytest.mark.parametrize("impl", ["tritonloss", "eager", "compile"])
@pytest.mark.parametrize("name", list(CASES))
def test_forward_backward(benchmark, name, impl):
    benchmark.group = name
    run_harness(benchmark, name, impl, N, "cuda", rounds=20)


@pytest.mark.skipif(CUDA, reason="the tiny interpreted run is for machines without a GPU")
@pytest.mark.parametrize("impl", ["tritonloss", "eager"])
def test_harness_tiny(benchmark, impl):
    run_harness(benchmark, "huber_loss", impl, 3000, "cpu", rounds=1)
