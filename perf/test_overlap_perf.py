"""Overlap family: dice_loss vs eager MONAI DiceLoss vs torch.compile(MONAI), forward and
forward + backward.

On CUDA, the issue's shapes with class-index targets and softmax: (8, 19, 512, 1024) 2-D
(Cityscapes-like) and (2, 4, 128, 128, 128) 3-D, fp32 logits, reduction "mean". MONAI is
called as users call it: DiceLoss(softmax=True, to_onehot_y=True) with [B, 1, *spatial]
labels. extra_info holds the GPU time (do_bench median), peak memory beyond the live
inputs, and GB/s against the bytes a fused implementation must move (forward: logits and
labels once; forward + backward: both twice and the gradient written once). Without CUDA,
`test_harness_tiny` runs the same harness once on a tiny shape under the interpreter.

    pytest perf/test_overlap_perf.py --benchmark-json=perf/results/<gpu-slug>/overlap.json
"""

import warnings

import pytest
import torch

import tritonloss

from .harness import CUDA, IMPLS, measure, pick

SHAPES = {"2d": (8, 19, 512, 1024), "3d": (2, 4, 128, 128, 128)}
PASSES = ("forward", "forward_backward")


def _monai_dice(x, labels):
    from monai.losses import DiceLoss

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return DiceLoss(softmax=True, to_onehot_y=True)(x, labels.unsqueeze(1))


def run_harness(benchmark, impl, shape, which, device):
    pytest.importorskip("monai")
    gen = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(shape, device=device, generator=gen).requires_grad_()
    labels = torch.randint(0, shape[1], (shape[0], *shape[2:]), device=device, generator=gen)
    loss_fn = pick(impl, tritonloss.dice_loss, _monai_dice)
    read = x.numel() * x.element_size() + labels.numel() * labels.element_size()

    if which == "forward":
        def step():
            with torch.no_grad():
                return loss_fn(x, labels)

        out = measure(benchmark, step, bytes_moved=read)
        assert torch.isfinite(out)
    else:
        def step():
            (g,) = torch.autograd.grad(loss_fn(x, labels), [x])
            return g

        g = measure(benchmark, step, bytes_moved=2 * read + x.numel() * x.element_size())
        assert torch.isfinite(g).all()


@pytest.mark.skipif(not CUDA, reason="timing needs a CUDA GPU (test_harness_tiny covers the harness)")
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("which", PASSES)
@pytest.mark.parametrize("shape", list(SHAPES))
def test_dice(benchmark, shape, which, impl):
    benchmark.group = f"dice_loss {shape} {which}"
    run_harness(benchmark, impl, SHAPES[shape], which, "cuda")


@pytest.mark.skipif(CUDA, reason="the tiny interpreted run is for machines without a GPU")
@pytest.mark.parametrize("impl", ["tritonloss", "eager"])
@pytest.mark.parametrize("which", PASSES)
def test_harness_tiny(benchmark, impl, which):
    run_harness(benchmark, impl, (2, 3, 9, 10), which, "cpu")
