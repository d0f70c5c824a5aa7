"""Class-sharded margin softmax (tritonloss.distributed) in a one-rank process group vs the
same loss written as insightface's PartialFC computes it (eager, and torch.compile of it).

On CUDA (NCCL, world size 1: the cost of the sharded path itself, no communication
between GPUs): ArcFace (scale 64, margin 0.5, detached margin gradient) at B = 4096,
D = 512, C = 1M classes, bf16, forward + backward, without sampling and with Partial FC
at sample_rate 0.1. Eager samples the same classes (the same generator), copies the kept
weight rows, normalises, computes the [B, kept] logits in fp32 and the cross-entropy, as
PartialFC v2 does on one rank. FLOPs are counted as 8 B D (kept classes).

Without CUDA: `test_harness_tiny` runs the step once under the interpreter (gloo).

    pytest perf/test_distributed_perf.py --benchmark-json=perf/results/<gpu-slug>/distributed.json
"""

import os
import tempfile

import pytest
import torch
import torch.distributed as dist

from tritonloss import distributed as TD
from tritonloss.reference import margin as R

from .harness import CUDA, measure, pick

B, D, C = 4096, 512, 1_000_000
RATES = (1.0, 0.1)


@pytest.fixture(scope="module")
def group():
    with tempfile.TemporaryDirectory() as tmp:
        dist.init_process_group("nccl" if CUDA else "gloo", init_method=f"file://{os.path.join(tmp, 'store')}",
                                rank=0, world_size=1)
        yield
        dist.destroy_process_group()


def _eager(x, w, y, idx):
    """PartialFC on one rank: the kept rows copied, fp32 logits, margin, cross-entropy."""
    ws = w if idx is None else w[idx]
    ys = y if idx is None else torch.searchsorted(idx, y)
    return R.arcface_loss(x.float(), ws.float(), ys, scale=64.0, margin=0.5, margin_grad="detached")


def run_harness(benchmark, impl, rate, b, d, c, device, dtype):
    gen = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(b, d, device=device, dtype=dtype, generator=gen).requires_grad_()
    w = (torch.randn(c, d, device=device, dtype=dtype, generator=gen) * 0.05).requires_grad_()
    y = torch.randint(0, c, (b,), device=device, generator=gen)
    eager = pick(impl, None, _eager)

    def step():
        sampler = torch.Generator(device=device).manual_seed(1)
        if impl == "tritonloss":
            out = TD.margin_cross_entropy(x, w, y, class_start=0, num_classes=c, m2=0.5, margin_grad="detached",
                                          sample_rate=rate, generator=sampler)
        else:
            idx = None if rate == 1.0 else TD._sample_classes(y, 0, c, -100, rate, sampler)
            out = eager(x, w, y, idx)
        dx, dw = torch.autograd.grad(out, [x, w])
        return dw

    kept = max(int(rate * c), 1)
    try:
        result = measure(benchmark, step, flops=8 * b * d * kept)
    except torch.OutOfMemoryError:
        pytest.skip(f"{impl} ran out of GPU memory at B={b}, D={d}, C={c}, sample_rate={rate}")
    assert torch.isfinite(result.float()).all()


@pytest.mark.skipif(not CUDA, reason="timing needs a CUDA GPU (test_harness_tiny covers the harness)")
@pytest.mark.parametrize("impl", ["tritonloss", "eager", "compile"])
@pytest.mark.parametrize("rate", RATES)
def test_sharded_arcface(benchmark, group, rate, impl):
    benchmark.group = f"sharded arcface C={C} sample_rate={rate} forward_backward"
    run_harness(benchmark, impl, rate, B, D, C, "cuda", torch.bfloat16)


@pytest.mark.skipif(CUDA, reason="the tiny interpreted run is for machines without a GPU")
@pytest.mark.parametrize("rate", RATES)
def test_harness_tiny(benchmark, group, rate):
    run_harness(benchmark, "tritonloss", rate, 8, 16, 40, "cpu", torch.float32)
