"""Classification family: tritonloss vs eager (torch / torchvision) vs torch.compile(eager).

On CUDA, at the issue's shapes: cross_entropy at 4096 x 32000 and 8192 x 128256 (fp32
logits, as an LM head's loss), sigmoid focal at 65536 x 80 (torchvision's formula, dense
detection), softmax focal at (8, 19, 512, 1024) (segmentation); forward alone and forward
+ backward. extra_info (perf/harness.py) holds GPU time, peak memory and, for the fused
kernels, GB/s against the bytes they must move (the logits read once forward; read once
and the gradient written once backward). Without CUDA: a tiny interpreted run of the same
harness.

    pytest perf/test_classification_perf.py --benchmark-json=perf/results/<gpu-slug>/classification.json
"""

import pytest
import torch
import torch.nn.functional as TF

import tritonloss
from tritonloss.reference import classification as R

from .harness import CUDA, IMPLS, measure, pick

try:  # the anchor itself where it is installed; its formula otherwise
    from torchvision.ops import sigmoid_focal_loss as _tv_sigmoid_focal
except ImportError:  # pragma: no cover
    _tv_sigmoid_focal = R.sigmoid_focal_loss


def _labels(n, C, device):
    return torch.randint(0, C, n, device=device)


def _cross_entropy(shape, device):
    x = torch.randn(shape, device=device)
    return tritonloss.cross_entropy, TF.cross_entropy, x, [_labels(shape[:1], shape[1], device)], 1


def _sigmoid_focal(shape, device):
    x = torch.randn(shape, device=device) * 3
    y = (torch.rand(shape, device=device) < 0.01).float()
    return (lambda a, b: tritonloss.sigmoid_focal_loss(a, b, reduction="sum"),
            lambda a, b: _tv_sigmoid_focal(a, b, reduction="sum"), x, [y], 2)


def _softmax_focal(shape, device):
    x = torch.randn(shape, device=device)
    t = _labels((shape[0], *shape[2:]), shape[1], device)
    return tritonloss.softmax_focal_loss, R.softmax_focal_loss, x, [t], 1


SUITES = {
    "cross_entropy-4096x32000": (_cross_entropy, (4096, 32000)),
    "cross_entropy-8192x128256": (_cross_entropy, (8192, 128256)),
    "sigmoid_focal-65536x80": (_sigmoid_focal, (65536, 80)),
    "softmax_focal-8x19x512x1024": (_softmax_focal, (8, 19, 512, 1024)),
}


def run_harness(benchmark, name, impl, mode, shape, device):
    make, _ = SUITES[name]
    fused, eager, x, rest, reads = make(shape, device)
    loss_fn = pick(impl, fused, eager)
    x.requires_grad_(mode == "forward_backward")

    if mode == "forward":
        def step():
            with torch.no_grad():
                return loss_fn(x, *rest)
        moved = reads * x.numel() * x.element_size()
    else:
        def step():
            (g,) = torch.autograd.grad(loss_fn(x, *rest), [x])
            return g
        moved = (2 * reads + 1) * x.numel() * x.element_size()

    out = measure(benchmark, step, bytes_moved=moved)
    assert torch.isfinite(out).all()


@pytest.mark.skipif(not CUDA, reason="timing needs a CUDA GPU (test_harness_tiny covers the harness)")
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("mode", ["forward", "forward_backward"])
@pytest.mark.parametrize("name", list(SUITES))
def test_classification(benchmark, name, mode, impl):
    benchmark.group = f"{name} {mode}"
    run_harness(benchmark, name, impl, mode, SUITES[name][1], "cuda")


@pytest.mark.skipif(CUDA, reason="the tiny interpreted run is for machines without a GPU")
@pytest.mark.parametrize("name, shape", [("cross_entropy-4096x32000", (3, 5000)),
                                         ("sigmoid_focal-65536x80", (64, 80)),
                                         ("softmax_focal-8x19x512x1024", (2, 19, 4, 8))])
def test_harness_tiny(benchmark, name, shape):
    run_harness(benchmark, name, "tritonloss", "forward_backward", shape, "cpu")
