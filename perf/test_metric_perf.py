"""Metric-learning family: tritonloss vs eager vs torch.compile(eager), forward + backward.

On CUDA, the shapes of issue 7, fp32 and bf16 embeddings:
- triplet_loss batch_hard and batch_all at B = 4096, D = 512, with P = 1024 identities of
  K = 4 and P = 128 of K = 32. Eager batch_hard is the reid-style reference (Gram-matrix
  distances, masked max / min: B x B tensors); eager batch_all is pytorch-metric-learning's
  TripletMarginLoss over all triplets (skipped where it runs out of memory, which is the
  point of the O(B^2) kernel at K = 32).
- center_loss at B = 4096, C = 100,000, D = 512, centers differentiated.
extra_info holds the GPU time (do_bench median), the peak memory of one step, and for
batch_hard the TFLOP/s of its 2 B^2 D Gram flops. Without CUDA, `test_harness_tiny` runs the
harness once on a tiny batch under the interpreter.

    pytest perf/test_metric_perf.py --benchmark-json=perf/results/<gpu-slug>/metric.json
"""

import pytest
import torch
import torch.nn.functional as TF

import tritonloss

from .harness import CUDA, IMPLS, measure, pick

B, D = 4096, 512
C = 100_000
GROUPS = {"K4": (1024, 4), "K32": (128, 32)}


def pk_batch(P, K, dim, dtype, device, seed=0):
    gen = torch.Generator(device=device).manual_seed(seed)
    labels = torch.arange(P, device=device).repeat_interleave(K)
    centers = torch.randn(P, dim, device=device, generator=gen)
    x = torch.randn(P * K, dim, device=device, generator=gen) + centers[labels]
    return x.to(dtype), labels


def reid_batch_hard(x, labels, margin=0.3):
    """The usual reid-style eager batch-hard triplet loss (B x B distance and mask tensors)."""
    x = x.float()
    sq = (x * x).sum(1)
    dist = (sq[:, None] + sq[None, :] - 2 * x @ x.T).clamp_min(1e-12).sqrt()
    same = labels[:, None] == labels[None, :]
    d_ap = torch.where(same, dist, torch.zeros_like(dist)).max(1).values
    d_an = torch.where(same, torch.full_like(dist, float("inf")), dist).min(1).values
    return TF.relu(d_ap - d_an + margin).mean()


def pml_all_triplets(margin=0.3):
    from pytorch_metric_learning.distances import LpDistance
    from pytorch_metric_learning.losses import TripletMarginLoss

    loss = TripletMarginLoss(margin=margin, distance=LpDistance(normalize_embeddings=False))
    return lambda x, labels: loss(x.float(), labels)


def eager_center_loss(x, labels, centers):
    return 0.5 * ((x.float() - centers[labels]) ** 2).sum(1).mean()


def run_triplet(benchmark, mining, impl, P, K, dim, dtype, device):
    x, labels = pk_batch(P, K, dim, dtype, device)
    x.requires_grad_()
    eager = reid_batch_hard if mining == "batch_hard" else pml_all_triplets()

    def fused(e, y):
        return tritonloss.triplet_loss(e, y, margin=0.3, mining=mining)

    loss_fn = pick(impl, fused, eager)

    def step():
        (g,) = torch.autograd.grad(loss_fn(x, labels), [x])
        return g

    flops = 2.0 * (P * K) ** 2 * dim if mining == "batch_hard" else None
    try:
        g = measure(benchmark, step, flops=flops)
    except torch.OutOfMemoryError:
        pytest.skip(f"{impl} {mining} runs out of GPU memory at B={P * K}, K={K}")
    assert torch.isfinite(g).all()


@pytest.mark.skipif(not CUDA, reason="timing needs a CUDA GPU (test_harness_tiny covers the harness)")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("group", list(GROUPS))
@pytest.mark.parametrize("mining", ["batch_hard", "batch_all"])
def test_triplet(benchmark, mining, group, impl, dtype):
    benchmark.group = f"triplet {mining} {group} {dtype}"
    P, K = GROUPS[group]
    run_triplet(benchmark, mining, impl, P, K, D, dtype, "cuda")


@pytest.mark.skipif(not CUDA, reason="timing needs a CUDA GPU (test_harness_tiny covers the harness)")
@pytest.mark.parametrize("impl", IMPLS)
def test_center_loss(benchmark, impl):
    benchmark.group = "center_loss"
    gen = torch.Generator(device="cuda").manual_seed(1)
    x = torch.randn(B, D, device="cuda", generator=gen, requires_grad=True)
    centers = torch.randn(C, D, device="cuda", generator=gen, requires_grad=True)
    labels = torch.randint(0, C, (B,), device="cuda", generator=gen)
    loss_fn = pick(impl, tritonloss.center_loss, eager_center_loss)

    def step():
        return torch.autograd.grad(loss_fn(x, labels, centers), [x, centers])

    gx, gc = measure(benchmark, step, bytes_moved=(3 * B * D + C * D) * 4)
    assert torch.isfinite(gx).all() and torch.isfinite(gc).all()


@pytest.mark.skipif(CUDA, reason="the tiny interpreted run is for machines without a GPU")
@pytest.mark.parametrize("impl", ["tritonloss", "eager"])
def test_harness_tiny(benchmark, impl):
    run_triplet(benchmark, "batch_hard", impl, 4, 3, 16, torch.float32, "cpu")
