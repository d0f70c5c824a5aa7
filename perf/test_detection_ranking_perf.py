"""Dense-detection ranking losses (dr_loss, ap_loss): tritonloss vs the eager float64-tested
reference (run in fp32) vs torch.compile of it, forward alone and forward + backward.

On CUDA: a dense-detection shape, 100,000 anchors x 80 classes fp32, 10% of the anchors
ignored and 1% positive (1,000 positives, RetinaNet-like). dr_loss is memory bound:
extra_info holds the bytes a fused implementation must move (logits read once per pass,
the gradient written once), GB/s and % of the copy bandwidth. ap_loss is O(|P| N C) pair
work per pass: extra_info holds the number of (positive, sample) pairs per pass. Both
record the GPU time (median of triton.testing.do_bench) and peak memory. Without CUDA,
`test_harness_tiny` runs the same harness on a tiny shape under the interpreter.

    pytest perf/test_detection_ranking_perf.py --benchmark-json=perf/results/<gpu-slug>/detection_ranking.json
"""

import pytest
import torch

import tritonloss
from tritonloss.reference import classification as R

from .harness import CUDA, IMPLS, measure, pick

ANCHORS, CLASSES = 100_000, 80
LOSSES = {"dr_loss": (tritonloss.dr_loss, R.dr_loss), "ap_loss": (tritonloss.ap_loss, R.ap_loss)}


def make(n, C, device, p_ignore=0.1, p_pos=0.01):
    gen = torch.Generator().manual_seed(0)
    x = (torch.randn(n, C, generator=gen) * 2).to(device)
    u = torch.rand(n, generator=gen)
    cls = torch.randint(1, C + 1, (n,), generator=gen)
    t = torch.where(u < p_ignore, -1, torch.where(u < p_ignore + p_pos, cls, 0)).to(device)
    return x, t


def run(benchmark, name, impl, backward, n, C, device):
    x, t = make(n, C, device)
    fn = pick(impl, *LOSSES[name])
    x.requires_grad_(backward)

    def step():
        out = fn(x, t)
        if backward:
            (g,) = torch.autograd.grad(out, [x])
            return g
        return out

    passes = 2 if backward else 1
    if name == "dr_loss":
        result = measure(benchmark, step, bytes_moved=(passes + (1 if backward else 0)) * x.numel() * 4)
    else:
        result = measure(benchmark, step)
        benchmark.extra_info["pairs_per_pass"] = int(((t >= 1) & (t <= C)).sum()) * x.numel()
    assert torch.isfinite(result).all()


@pytest.mark.skipif(not CUDA, reason="timing needs a CUDA GPU (test_harness_tiny covers the harness)")
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("backward", [False, True], ids=["forward", "forward_backward"])
@pytest.mark.parametrize("name", list(LOSSES))
def test_detection_ranking(benchmark, name, backward, impl):
    benchmark.group = f"{name} {ANCHORS}x{CLASSES} {'forward+backward' if backward else 'forward'}"
    run(benchmark, name, impl, backward, ANCHORS, CLASSES, "cuda")


@pytest.mark.skipif(CUDA, reason="the tiny interpreted run is for machines without a GPU")
@pytest.mark.parametrize("impl", ["tritonloss", "eager"])
@pytest.mark.parametrize("name", list(LOSSES))
def test_harness_tiny(benchmark, name, impl):
    run(benchmark, name, impl, True, 300, 7, "cpu")
