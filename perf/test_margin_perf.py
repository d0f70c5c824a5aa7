"""Face recognition family: fused linear + margin softmax vs eager and torch.compile(eager).

On CUDA (the issue's shapes):
- ArcFace (scale 64, margin 0.5) at B = 4096, D = 512, C in {100k, 1M}, bf16 embeddings and
  weight. Eager is insightface's recipe in fp32: normalize + linear + margin +
  cross_entropy (tritonloss.reference.margin.arcface_loss on fp32 copies), and
  torch.compile of it. Eager at C = 1M needs several B x C fp32 tensors (16 GB each) and
  may run out of memory: that run is skipped with the reason.
- linear_cross_entropy at the same shapes vs F.cross_entropy(F.linear(...)) and torch's
  `F.linear_cross_entropy` where this torch has it.
Modes "forward", "backward" (rerunning the backward of one held graph, retain_graph) and
"forward_backward"; the harness records GPU time, TFLOP/s against the floor of each mode
(2 B D C forward, 6 B D C backward with the logits recomputed, 8 B D C both) and peak memory
beyond the inputs.

Without CUDA: `test_harness_tiny` runs the same step once under the interpreter on a tiny
shape (a smoke test of the harness, no timing claims).

    pytest perf/test_margin_perf.py --benchmark-json=perf/results/<gpu-slug>/margin.json
"""

import pytest
import torch
import torch.nn.functional as TF

from tritonloss import functional as F
from tritonloss.reference import margin as R

from .harness import CUDA, measure

B, D = 4096, 512
CLASSES = (100_000, 1_000_000)
MODES = ("forward", "backward", "forward_backward")


def _arcface_eager(x, w, y):
    return R.arcface_loss(x.float(), w.float(), y, scale=64.0, margin=0.5, margin_grad="detached")


def _linear_ce_eager(x, w, y):
    return TF.cross_entropy(TF.linear(x, w).float(), y)


IMPLS = {
    "arcface": {
        "tritonloss": lambda x, w, y: F.arcface_loss(x, w, y, scale=64.0, margin=0.5, margin_grad="detached"),
        "eager": _arcface_eager,
        "compile": "compile",
    },
    "linear_cross_entropy": {
        "tritonloss": F.linear_cross_entropy,
        "eager": _linear_ce_eager,
        "compile": "compile",
        "torch": getattr(TF, "linear_cross_entropy", None),
    },
}


def _impl(loss, impl):
    fn = IMPLS[loss][impl]
    if fn == "compile":
        return torch.compile(IMPLS[loss]["eager"], dynamic=False)
    if fn is None:
        pytest.skip(f"torch {torch.__version__} has no F.linear_cross_entropy")
    return fn


def run_harness(benchmark, loss, impl, mode, b, d, c, device, dtype):
    gen = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(b, d, device=device, dtype=dtype, generator=gen).requires_grad_()
    w = (torch.randn(c, d, device=device, dtype=dtype, generator=gen) * 0.05).requires_grad_()
    y = torch.randint(0, c, (b,), device=device, generator=gen)
    fn = _impl(loss, impl)
    try:
        held = fn(x, w, y) if mode == "backward" else None  # the graph the backward-only mode reruns
    except torch.OutOfMemoryError:
        pytest.skip(f"{impl} ran out of GPU memory at B={b}, D={d}, C={c}")

    def step():
        if mode == "backward":
            return torch.autograd.grad(held, [x, w], retain_graph=True)[1]
        out = fn(x, w, y)
        if mode == "forward":
            return out.detach()
        dx, dw = torch.autograd.grad(out, [x, w])
        return dw

    factor = {"forward": 2, "backward": 6, "forward_backward": 8}[mode]
    try:
        result = measure(benchmark, step, flops=factor * b * d * c)
    except torch.OutOfMemoryError:
        pytest.skip(f"{impl} ran out of GPU memory at B={b}, D={d}, C={c}")
    assert torch.isfinite(result.float()).all()


@pytest.mark.skipif(not CUDA, reason="timing needs a CUDA GPU (test_harness_tiny covers the harness)")
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("impl", ["tritonloss", "eager", "compile", "torch"])
@pytest.mark.parametrize("c", CLASSES)
@pytest.mark.parametrize("loss", list(IMPLS))
def test_margin(benchmark, loss, c, impl, mode):
    if impl not in IMPLS[loss]:
        pytest.skip(f"no {impl} implementation of {loss}")
    benchmark.group = f"{loss} C={c} {mode}"
    run_harness(benchmark, loss, impl, mode, B, D, c, "cuda", torch.bfloat16)


@pytest.mark.skipif(CUDA, reason="the tiny interpreted run is for machines without a GPU")
@pytest.mark.parametrize("loss", list(IMPLS))
@pytest.mark.parametrize("mode", ["backward", "forward_backward"])
def test_harness_tiny(benchmark, loss, mode):
    run_harness(benchmark, loss, "tritonloss", mode, 8, 16, 40, "cpu", torch.float32)
