"""Regression family: tritonloss vs eager vs torch.compile(eager), forward + backward.

On CUDA: every loss at 2^24 fp32 elements, reduction "mean", gradient for the input.
pytest-benchmark times the synchronised step; extra_info holds the GPU time from
triton.testing.do_bench (median), the bytes a fused implementation must move (inputs read
twice, gradient written once), GB/s and % of the measured device copy bandwidth, and
peak memory. Without CUDA: `test_harness_tiny` runs the same harness on a tiny shape under
the interpreter, so the harness itself is tested in CI.

    pytest perf --benchmark-json=perf/results/<gpu-slug>/regression.json
"""

import pytest
import torch

from tritonloss import _cases

from .harness import CUDA, IMPLS, measure, pick

N = 2**24
CASES = {c.name: c for c in _cases.regression_cases()}


def run_harness(benchmark, name, impl, n, device):
    case = CASES[name]
    shape = (n // 1024, 1024) if n >= 1024 else (n,)
    tensors, opts = case.make(shape, torch.float32, device)
    x = tensors[0].requires_grad_()
    loss_fn = pick(impl, case.fn, case.ref)

    def step():
        (g,) = torch.autograd.grad(loss_fn(x, *tensors[1:], **opts), [x])
        return g

    g = measure(benchmark, step, bytes_moved=(2 * len(tensors) + 1) * x.numel() * x.element_size())
    assert torch.isfinite(g).all()


@pytest.mark.skipif(not CUDA, reason="timing needs a CUDA GPU (test_harness_tiny covers the harness)")
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("name", list(CASES))
def test_forward_backward(benchmark, name, impl):
    benchmark.group = name
    run_harness(benchmark, name, impl, N, "cuda")


@pytest.mark.skipif(CUDA, reason="the tiny interpreted run is for machines without a GPU")
@pytest.mark.parametrize("impl", ["tritonloss", "eager"])
def test_harness_tiny(benchmark, impl):
    run_harness(benchmark, "huber_loss", impl, 3000, "cpu")
