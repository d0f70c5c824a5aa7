"""Boxes family: tritonloss vs eager vs torch.compile(eager).

On CUDA: every loss at 2^20 fp32 box pairs, reduction "mean", forward alone and forward +
backward (gradient for boxes1); the eager anchor is torchvision.ops where it has the loss
(GIoU, DIoU, CIoU) and the float64-tested eager reference otherwise. extra_info holds the
GPU time (median of triton.testing.do_bench), the bytes a fused implementation must move
(both box tensors read once per pass, the gradient written once), GB/s, % of the measured
copy bandwidth and peak memory. `box_iou` at 4096 x 4096 for each kind, against
torchvision's pairwise functions (bytes: the fp32 result written once). Without CUDA,
`test_harness_tiny` runs the same harness on tiny shapes under the interpreter.

    pytest perf/test_boxes_perf.py --benchmark-json=perf/results/<gpu-slug>/boxes.json
"""

import pytest
import torch

import tritonloss
from tritonloss import _cases

from .harness import CUDA, IMPLS, measure, pick

N = 2**20
PAIRWISE_N = 4096
CASES = {c.name: c for c in _cases.boxes_cases()}
KINDS = ("iou", "giou", "diou", "ciou")


def _torchvision():
    """The torchvision.ops anchors by our names (an empty dict where it is not installed)."""
    try:
        import torchvision.ops as tv
    except ImportError:
        return {}, {}
    losses = {"giou_loss": tv.generalized_box_iou_loss, "diou_loss": tv.distance_box_iou_loss,
              "ciou_loss": tv.complete_box_iou_loss}
    pairwise = {"iou": tv.box_iou, "giou": tv.generalized_box_iou, "diou": tv.distance_box_iou,
                "ciou": tv.complete_box_iou}
    return losses, pairwise


def run_loss(benchmark, name, impl, backward, n, device):
    case = CASES[name]
    (b1, b2), opts = case.make((n,), torch.float32, device)
    eager = case.ref
    if name in _torchvision()[0]:  # the anchor itself, on xyxy boxes
        eager, opts = _torchvision()[0][name], {}
    loss_fn = pick(impl, case.fn, eager)
    b1.requires_grad_(backward)

    def step():
        out = loss_fn(b1, b2, **opts, reduction="mean")
        if backward:
            (g,) = torch.autograd.grad(out, [b1])
            return g
        return out

    passes = 2 if backward else 1
    result = measure(benchmark, step, bytes_moved=(2 * passes + (1 if backward else 0)) * b1.numel() * 4)
    assert torch.isfinite(result).all()


def run_pairwise(benchmark, kind, impl, n, device):
    (b1, _), _ = CASES["giou_loss"].make((n,), torch.float32, device)
    (b2, _), _ = CASES["giou_loss"].make((n,), torch.float32, device)
    eager = _torchvision()[1].get(kind) or (lambda a, b: tritonloss.reference.boxes.box_iou(a, b, kind))
    fn = pick(impl, lambda a, b: tritonloss.box_iou(a, b, kind), eager)
    out = measure(benchmark, lambda: fn(b1, b2), bytes_moved=n * n * 4)
    assert out.shape == (n, n)


@pytest.mark.skipif(not CUDA, reason="timing needs a CUDA GPU (test_harness_tiny covers the harness)")
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("backward", [False, True], ids=["forward", "forward_backward"])
@pytest.mark.parametrize("name", list(CASES))
def test_loss(benchmark, name, backward, impl):
    benchmark.group = f"{name} {'forward+backward' if backward else 'forward'}"
    run_loss(benchmark, name, impl, backward, N, "cuda")


@pytest.mark.skipif(not CUDA, reason="timing needs a CUDA GPU (test_harness_tiny covers the harness)")
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("kind", KINDS)
def test_box_iou(benchmark, kind, impl):
    benchmark.group = f"box_iou {kind}"
    run_pairwise(benchmark, kind, impl, PAIRWISE_N, "cuda")


@pytest.mark.skipif(CUDA, reason="the tiny interpreted run is for machines without a GPU")
@pytest.mark.parametrize("impl", ["tritonloss", "eager"])
def test_harness_tiny(benchmark, impl):
    run_loss(benchmark, "ciou_loss", impl, True, 300, "cpu")


@pytest.mark.skipif(CUDA, reason="the tiny interpreted run is for machines without a GPU")
def test_harness_tiny_box_iou(benchmark):
    run_pairwise(benchmark, "ciou", "tritonloss", 70, "cpu")
