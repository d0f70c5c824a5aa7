"""Face recognition family: fused linear + margin softmax against float64 eager references
built from the formulas (tritonloss.reference.margin), against insightface's margin
formulas written out independently, edge cases, the no-B x C memory guarantee, modules
and bad arguments. Kernel calls are few and small: the interpreter costs ~1 s per call."""

import math

import pytest
import torch
import torch.nn.functional as TF
from helpers import DEVICE, assert_close, padded
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from tritonloss.kernels import margin as K

import tritonloss
from tritonloss import margin as M
from tritonloss.reference import margin as R

B, C, D = 37, 70, 40  # 2 row blocks, 3 class blocks, 2 K chunks of the default tile; D not a power of 2
IGNORE = (3, 20)


def _data(dtype=torch.float32, w_scale=1.0, seed=0, bias=False):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, D, generator=g, dtype=torch.float64)
    w = torch.randn(C, D, generator=g, dtype=torch.float64) * w_scale
    y = torch.randint(0, C, (B,), generator=g)
    y[list(IGNORE)] = -100
    b = torch.randn(C, generator=g, dtype=torch.float64) if bias else None
    return x, w, y, b


def _compare(fn, ref, x, w, y, b=None, dtype=torch.float32, reduction="none", tol=None, nan_ignored=True,
             **opts):
    """Run `fn` on NaN-padded `dtype` copies (NaN in the ignored rows' embeddings too) and
    `ref` in float64 on the same values (ignored rows zeroed: eager torch would leak their
    NaN into dW); compare the loss and every gradient with a random grad_output."""
    xk = x.to(dtype)
    if nan_ignored:
        xk[list(IGNORE)] = float("nan")
    xs = [padded(xk.to(DEVICE)), padded(w.to(dtype).to(DEVICE))]
    rs = [x.to(dtype).double().clone(), w.to(dtype).double()]
    rs[0][list(IGNORE)] = 0.0
    rs = [t.requires_grad_() for t in rs]
    if b is not None:
        xs.append(padded(b.to(dtype).to(DEVICE)))
        rs.append(b.to(dtype).double().requires_grad_())
    yk = y.to(DEVICE)
    out = fn(*xs[:2], yk, *xs[2:], reduction=reduction, **opts)
    assert out.dtype == dtype
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(dtype)
    gs = torch.autograd.grad(out, xs, grad.to(DEVICE))
    r = ref(*rs[:2], y, *rs[2:], reduction=reduction, **opts)
    rg = torch.autograd.grad(r, rs, grad.double())
    assert_close(out, r, tol or dtype, what="loss")
    for name, a, e in zip(("dx", "dw", "db"), gs, rg):
        assert a.dtype == dtype
        assert_close(a, e, tol or dtype, what=name)
    return out, gs


# every loss, every option family, reduction "none" with a random grad_output
CASES = [
    ("arcface", M.arcface_loss, R.arcface_loss, {"scale": 16.0}),
    ("arcface-easy", M.arcface_loss, R.arcface_loss, {"scale": 16.0, "margin": 0.7, "easy_margin": True}),
    ("combined", M.margin_cross_entropy, R.margin_cross_entropy, {"scale": 32.0, "m1": 1.35, "m2": 0.25,
                                                                   "m3": 0.1}),
    ("combined-detached", M.margin_cross_entropy, R.margin_cross_entropy,
     {"scale": 32.0, "m1": 1.2, "m2": 0.4, "m3": 0.05, "margin_grad": "detached"}),
    ("cosface", M.cosface_loss, R.cosface_loss, {}),
    ("normface", M.normface_loss, R.normface_loss, {}),
    ("coco", M.coco_loss, R.coco_loss, {"alpha": 8.0}),
    ("sphereface", M.sphereface_loss, R.sphereface_loss, {"margin": 4, "lambda_": 3.0}),
    ("lsoftmax", M.large_margin_softmax_loss, R.large_margin_softmax_loss, {"margin": 3, "lambda_": 0.5}),
]


@pytest.mark.parametrize("name,fn,ref,opts", CASES, ids=[c[0] for c in CASES])
def test_matches_reference(name, fn, ref, opts):
    x, w, y, _ = _data(w_scale=0.3 if name == "lsoftmax" else 1.0)
    out, _ = _compare(fn, ref, x, w, y, **opts)
    assert torch.all(out[list(IGNORE)] == 0)


def test_l2_softmax_with_bias():
    x, w, y, b = _data(w_scale=0.1, bias=True)
    _compare(M.l2_softmax_loss, R.l2_softmax_loss, x, w, y, b, alpha=10.0)


def test_linear_cross_entropy_matches_torch(reduction="mean"):
    """Anchor: F.cross_entropy(F.linear(...)) itself, with bias and label smoothing."""
    x, w, y, b = _data(w_scale=0.3, bias=True)

    def ref(i, wt, t, bb, reduction, label_smoothing):
        return TF.cross_entropy(TF.linear(i, wt, bb), t, reduction=reduction, label_smoothing=label_smoothing)

    _compare(M.linear_cross_entropy, ref, x, w, y, b, reduction=reduction, label_smoothing=0.15)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_linear_cross_entropy_rows(dtype):
    """reduction "none" with bias, label smoothing and ignored rows, against torch itself."""
    x, w, y, b = _data(w_scale=0.3, bias=True)

    def ref(i, wt, t, bb, reduction, label_smoothing):
        return TF.cross_entropy(TF.linear(i, wt, bb), t, reduction=reduction, label_smoothing=label_smoothing)

    _compare(M.linear_cross_entropy, ref, x, w, y, b, dtype=dtype, label_smoothing=0.1)


def test_nan_in_a_used_row_propagates_to_that_row():
    x, w, y, _ = _data()
    x[7, 4] = float("nan")
    out = M.arcface_loss(padded(x.float().to(DEVICE)), padded(w.float().to(DEVICE)), y.to(DEVICE), reduction="none")
    assert torch.isnan(out[7]) and torch.isfinite(out[torch.arange(B) != 7]).all()


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_reductions_and_determinism(reduction):
    """Same inputs give bitwise the same loss and gradients (no atomics, fixed-order merges)."""
    x, w, y, _ = _data()
    out, gs = _compare(M.arcface_loss, R.arcface_loss, x, w, y, reduction=reduction, scale=16.0)
    again, gs2 = _compare(M.arcface_loss, R.arcface_loss, x, w, y, reduction=reduction, scale=16.0)
    assert torch.equal(out, again) and all(torch.equal(a, b) for a, b in zip(gs, gs2))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_dtypes(dtype):
    x, w, y, _ = _data()
    _compare(M.arcface_loss, R.arcface_loss, x, w, y, dtype=dtype, reduction="sum", scale=16.0)


@pytest.mark.parametrize("name,fn,ref,opts", [
    ("cosface-default-scale", M.cosface_loss, R.cosface_loss, {"reduction": "mean"}),
    ("sphereface", M.sphereface_loss, R.sphereface_loss, {"margin": 2, "lambda_": 5.0}),
    ("l2-softmax", M.l2_softmax_loss, R.l2_softmax_loss, {"alpha": 16.0}),
], ids=lambda v: v if isinstance(v, str) else "")
def test_fp16(name, fn, ref, opts):
    x, w, y, _ = _data(w_scale=0.2)
    _compare(fn, ref, x, w, y, dtype=torch.float16, **opts)


# ---------------------------------------------------------------- insightface's formulas

def _insightface_current(x, w, y, s, m2, m3):
    """insightface CombinedMarginLoss (2022-): ArcFace under no_grad (the margin detached),
    CosFace m3 with autograd; ignored rows by index."""
    logits = TF.linear(TF.normalize(x), TF.normalize(w)).clamp(-1, 1)
    pos = torch.where(y != -100)[0]
    if m3 == 0.0:
        with torch.no_grad():
            t = logits[pos, y[pos]].arccos()
            delta = torch.zeros_like(logits)
            delta[pos, y[pos]] = torch.cos(t + m2) - logits[pos, y[pos]]
        logits = logits + delta
    else:
        hot = torch.zeros_like(logits, dtype=torch.bool)
        hot[pos, y[pos]] = True
        logits = torch.where(hot, logits - m3, logits)
    return TF.cross_entropy(s * logits, y, ignore_index=-100, reduction="sum")


def _insightface_exact(x, w, y, s, m, easy):
    """The earlier insightface / arcface-pytorch ArcFace with autograd through the margin:
    phi = c cos m - sqrt(1 - c^2) sin m (no acos); easy_margin keeps c where c <= 0."""
    c = TF.linear(TF.normalize(x), TF.normalize(w))
    phi = c * math.cos(m) - torch.sqrt((1 - c * c).clamp_min(0)) * math.sin(m)
    if easy:
        phi = torch.where(c > 0, phi, c)
    hot = torch.arange(w.shape[0])[None, :] == y[:, None]
    return TF.cross_entropy(s * torch.where(hot, phi, c), y, ignore_index=-100, reduction="sum")


@pytest.mark.parametrize("mode", ["detached", "exact", "exact-easy", "cosface"])
def test_matches_insightface_formula(mode):
    x, w, y, _ = _data(seed=3)
    if mode == "detached":
        fn = lambda a, b, t, reduction: M.arcface_loss(a, b, t, scale=16.0, margin_grad="detached",  # noqa: E731
                                                       reduction=reduction)
        ref = lambda a, b, t, reduction: _insightface_current(a, b, t, 16.0, 0.5, 0.0)  # noqa: E731
    elif mode == "cosface":
        fn = lambda a, b, t, reduction: M.cosface_loss(a, b, t, scale=16.0, reduction=reduction)  # noqa: E731
        ref = lambda a, b, t, reduction: _insightface_current(a, b, t, 16.0, 0.0, 0.35)  # noqa: E731
    else:
        easy = mode == "exact-easy"
        fn = lambda a, b, t, reduction: M.arcface_loss(a, b, t, scale=16.0, easy_margin=easy,  # noqa: E731
                                                       reduction=reduction)
        ref = lambda a, b, t, reduction: _insightface_exact(a, b, t, 16.0, 0.5, easy)  # noqa: E731
    _compare(fn, ref, x, w, y, reduction="sum")


# ---------------------------------------------------------------- edge cases

def _rotated(w_row, angle, gen):
    """A vector at `angle` radians from w_row, of norm 2."""
    u = torch.randn(w_row.shape, generator=gen, dtype=torch.float64)
    wh = w_row / w_row.norm()
    u = u - (u @ wh) * wh
    u = u / u.norm()
    return 2 * (math.cos(angle) * wh + math.sin(angle) * u)


def _edge_data():
    """Rows 0-1: x = W_y (cos 1); 2: x = -W_y (cos -1); 4-5: theta = 2.9 and 3.1 > pi - 0.5;
    6: a zero embedding; row 3 ignored; the others random."""
    x, w, y, _ = _data(seed=5)
    gen = torch.Generator().manual_seed(6)
    x[0], x[1], x[2] = w[y[0]], 0.5 * w[y[1]], -w[y[2]]
    x[4], x[5] = _rotated(w[y[4]], 2.9, gen), _rotated(w[y[5]], 3.1, gen)
    x[6] = 0.0
    return x, w, y


@pytest.mark.parametrize("name,fn,ref,opts", [
    ("arcface-exact", M.arcface_loss, R.arcface_loss, {"scale": 16.0}),
    ("combined-exact", M.margin_cross_entropy, R.margin_cross_entropy, {"scale": 16.0, "m1": 1.2, "m2": 0.3,
                                                                         "m3": 0.1}),
    ("combined-detached", M.margin_cross_entropy, R.margin_cross_entropy,
     {"scale": 16.0, "m1": 1.2, "m2": 0.3, "m3": 0.1, "margin_grad": "detached"}),
    ("sphereface", M.sphereface_loss, R.sphereface_loss, {"margin": 4, "lambda_": 1.0}),
], ids=lambda v: v if isinstance(v, str) else "")
def test_edge_cases(name, fn, ref, opts):
    """cos = +-1, theta past pi - m and a zero embedding: finite values and gradients that match
    the reference. At cos = 1 the exact margin gradient's factor sin(theta + m) / sin(theta)
    is evaluated at theta = 1e-3 (documented), which amplifies the fp32 rounding of
    1 - cos: those rows compare to 1e-4 of the gradient scale. The zero row's gradient is
    F.normalize's (d loss / d xhat) / 1e-12, compared on its own scale."""
    x, w, y = _edge_data()
    xs = [padded(x.float().to(DEVICE)), padded(w.float().to(DEVICE))]
    out = fn(*xs, y.to(DEVICE), reduction="none", **opts)
    grad = torch.rand(out.shape, generator=torch.Generator().manual_seed(2)) + 0.5
    dx, dw = torch.autograd.grad(out, xs, grad.to(DEVICE))
    rs = [x.float().double().requires_grad_(), w.float().double().requires_grad_()]
    r = ref(*rs, y, reduction="none", **opts)
    rdx, rdw = torch.autograd.grad(r, rs, grad.double())
    assert torch.isfinite(out).all() and torch.isfinite(dx).all() and torch.isfinite(dw).all()
    assert_close(out, r, torch.float32, what="loss")
    assert_close(dx[6], rdx[6], torch.float32, what="dx of the zero row")
    rest = torch.tensor([i for i in range(B) if i != 6])
    scale = float(rdx[rest].abs().max())
    assert_close(dx[rest][3:], rdx[rest][3:], torch.float32, scale, what="dx")
    assert float((dx[rest][:3].double().cpu() - rdx[rest][:3]).abs().max()) <= 1e-4 * scale, "dx at cos = +-1"
    scale_w = float(rdw.abs().max())
    assert float((dw.double().cpu() - rdw).abs().max()) <= 1e-4 * scale_w, "dw"


def test_all_labels_ignored():
    x, w, y, _ = _data()
    y[:] = -100
    xs = [padded(x.float().to(DEVICE)), padded(w.float().to(DEVICE))]
    out = M.arcface_loss(*xs, y.to(DEVICE))
    assert torch.isnan(out)  # the mean of nothing, as torch
    dx, dw = torch.autograd.grad(out, xs)
    assert torch.all(dx == 0) and torch.all(dw == 0)
    assert M.cosface_loss(*xs, y.to(DEVICE), reduction="sum").item() == 0.0


def test_out_of_range_label_gives_nan_row_and_check_raises():
    x, w, y, _ = _data()
    y[5] = C + 3
    xs = [padded(x.float().to(DEVICE), False), padded(w.float().to(DEVICE), False)]
    out = M.linear_cross_entropy(*xs, y.to(DEVICE), reduction="none")
    assert torch.isnan(out[5]) and torch.isfinite(out[torch.arange(B) != 5]).all()
    tritonloss.set_checks(True)
    try:
        with pytest.raises(ValueError, match="labels: expected class labels in \\[0, 70\\).*position \\(5,\\)"):
            M.arcface_loss(*xs, y.to(DEVICE))
    finally:
        tritonloss.set_checks(False)


def test_programs_loop_over_class_blocks(monkeypatch):
    """Few programs: each forward program runs its online (max, sum-exp) over several class blocks."""
    monkeypatch.setattr(K, "TARGET_PROGRAMS", 2)
    x, w, y, _ = _data(seed=7)
    _compare(M.margin_cross_entropy, R.margin_cross_entropy, x, w, y, scale=32.0, m1=1.1, m2=0.2, m3=0.1)


# ---------------------------------------------------------------- memory

class _Allocations(TorchDispatchMode):
    """Records the size in bytes of every tensor an aten op returns."""

    def __init__(self):
        super().__init__()
        self.sizes = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.sizes += [(str(func), t.numel() * t.element_size()) for t in tree_leaves(out)
                       if isinstance(t, torch.Tensor)]
        return out


def test_no_b_by_c_tensor():
    """At B x C = 40 x 512 (ten times the weight, 128 times the embeddings), no tensor
    allocated in the forward or the backward (the interpreter's own copies of the inputs
    included) takes half the bytes of an fp32 B x C matrix; the eager reference does (the
    spy works)."""
    b, c, d = 40, 512, 4
    x = torch.randn(b, d, device=DEVICE, requires_grad=True)
    w = torch.randn(c, d, device=DEVICE, requires_grad=True)
    y = torch.randint(0, c, (b,), device=DEVICE)
    with _Allocations() as spy:
        out = M.arcface_loss(x, w, y)
        out.backward()
    big = [(f, n) for f, n in spy.sizes if n >= b * c * 4 // 2]
    assert spy.sizes and not big, big
    with _Allocations() as spy:
        R.arcface_loss(x.detach().double(), w.detach().double(), y)
    assert max(n for _, n in spy.sizes) >= b * c * 8


# ---------------------------------------------------------------- paths, modules, arguments

def test_float64_takes_the_reference_path_and_gradchecks():
    x, w, y, _ = _data()
    x, w = x[:4, :5].requires_grad_(), w[:6, :5].requires_grad_()
    y = torch.tensor([0, 5, -100, 3])
    assert torch.autograd.gradcheck(lambda a, b: M.arcface_loss(a, b, y, scale=8.0), (x, w))
    assert torch.autograd.gradcheck(lambda a, b: M.sphereface_loss(a, b, y), (x, w))


def test_empty_batch():
    w = torch.randn(C, D, device=DEVICE, requires_grad=True)
    x = torch.randn(0, D, device=DEVICE, requires_grad=True)
    y = torch.zeros(0, dtype=torch.int64, device=DEVICE)
    assert M.normface_loss(x, w, y, reduction="none").shape == (0,)
    assert M.normface_loss(x, w, y, reduction="sum").item() == 0.0
    out = M.arcface_loss(x, w, y)
    assert torch.isnan(out) and out.requires_grad


def test_modules():
    heads = [tritonloss.nn.ArcFace(D, C), tritonloss.nn.CosFace(D, C), tritonloss.nn.NormFace(D, C),
             tritonloss.nn.CombinedMarginLoss(D, C, m1=1.0, m2=0.3, m3=0.2), tritonloss.nn.COCOLoss(D, C),
             tritonloss.nn.L2Softmax(D, C, bias=True), tritonloss.nn.LinearCrossEntropy(D, C, bias=True),
             tritonloss.nn.SphereFace(D, C), tritonloss.nn.LargeMarginSoftmax(D, C)]
    for h in heads:
        assert h.weight.shape == (C, D) and 0.005 < float(h.weight.detach().std()) < 0.015
    x, w, y, _ = _data()
    head = tritonloss.nn.ArcFace(D, C, scale=16.0, reduction="sum").to(DEVICE)
    head.weight.data.copy_(w.float())
    xk = x.float().to(DEVICE).requires_grad_()
    head(xk, y.to(DEVICE)).backward()
    rx, rw = x.float().double().requires_grad_(), w.float().double().requires_grad_()
    R.arcface_loss(rx, rw, y, scale=16.0, reduction="sum").backward()
    assert_close(head.weight.grad, rw.grad, torch.float32, what="dW")
    assert_close(xk.grad, rx.grad, torch.float32, what="dx")


def test_sphereface_lambda_annealing():
    head = tritonloss.nn.SphereFace(4, 3)
    assert head.lambda_ == 1000.0
    x, y = torch.randn(2, 4, dtype=torch.float64), torch.tensor([0, 2])
    head.double()
    seen = []
    for _ in range(3):
        seen.append(head.lambda_)
        head(x, y)
    assert seen == [1000.0, 1000.0 / 1.12, 1000.0 / 1.24] and head.iteration == 3
    head.iteration = 10**6
    assert head.lambda_ == 5.0
    head.eval()
    head(x, y)
    assert head.iteration == 10**6
    other = tritonloss.nn.SphereFace(4, 3).double()
    other.load_state_dict(head.state_dict())
    assert other.iteration == 10**6
    lm = tritonloss.nn.LargeMarginSoftmax(4, 3, lambda_min=0.0)
    lm.iteration = 10**6
    assert 0 < lm.lambda_ < 0.01


def test_bad_arguments():
    x, w, y = torch.randn(4, 8), torch.randn(5, 8), torch.tensor([0, 1, 2, 3])
    bad = [
        (lambda: M.arcface_loss(x, w, y, scale=0.0), ValueError, "scale"),
        (lambda: M.margin_cross_entropy(x, w, y, m1=0.0), ValueError, "m1"),
        (lambda: M.margin_cross_entropy(x, w, y, m2=4.0), ValueError, "m2"),
        (lambda: M.arcface_loss(x, w, y, margin_grad="approx"), ValueError, "margin_grad"),
        (lambda: M.arcface_loss(x, w, y, easy_margin=1), TypeError, "easy_margin"),
        (lambda: M.arcface_loss(x, w, y, reduction="avg"), ValueError, "reduction"),
        (lambda: M.arcface_loss(x, torch.randn(5, 7), y), ValueError, "weight"),
        (lambda: M.arcface_loss(x[0], w, y), ValueError, "embeddings"),
        (lambda: M.arcface_loss(x, w.double(), y), TypeError, "weight"),
        (lambda: M.arcface_loss(x, w, y.float()), TypeError, "labels"),
        (lambda: M.arcface_loss(x, w, y[:3]), ValueError, "labels"),
        (lambda: M.arcface_loss(x, w, y, ignore_index=1.5), TypeError, "ignore_index"),
        (lambda: M.coco_loss(x, w, y, alpha=-1.0), ValueError, "alpha"),
        (lambda: M.coco_loss(x, torch.randn(0, 8), y), ValueError, "centers"),
        (lambda: M.l2_softmax_loss(x, w, y, torch.randn(4)), ValueError, "bias"),
        (lambda: M.sphereface_loss(x, w, y, margin=0), ValueError, "margin"),
        (lambda: M.sphereface_loss(x, w, y, margin=2.5), TypeError, "margin"),
        (lambda: M.large_margin_softmax_loss(x, w, y, lambda_=-1.0), ValueError, "lambda_"),
        (lambda: M.linear_cross_entropy(x, w, y, label_smoothing=1.5), ValueError, "label_smoothing"),
        (lambda: M.linear_cross_entropy(x, "w", y), TypeError, "weight"),
    ]
    for call, exc, name in bad:
        with pytest.raises(exc, match=name):
            call()



@pytest.mark.gpu
def test_no_host_sync():
    """Forward and backward launch without a device synchronisation (after autotuning)."""
    x, w, y, _ = _data()
    xs = [x.cuda().bfloat16().requires_grad_(), w.cuda().bfloat16().requires_grad_()]
    yk = y.cuda()
    M.arcface_loss(*xs, yk).backward()  # autotune outside the check
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        M.arcface_loss(*xs, yk).backward()
        M.linear_cross_entropy(*xs, yk, label_smoothing=0.1).backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.gpu
def test_peak_memory_gpu():
    """The issue's bound: peak extra memory of forward + backward at most dW (+ dX) + 64 MiB,
    at a shape whose fp32 logits would take 1.6 GB."""
    b, c, d = 2048, 200_000, 128
    x = torch.randn(b, d, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    w = torch.randn(c, d, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    y = torch.randint(0, c, (b,), device="cuda")
    M.arcface_loss(x, w, y).backward()  # autotune outside the measurement
    x.grad = w.grad = None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    dx, dw = torch.autograd.grad(M.arcface_loss(x, w, y), [x, w])
    torch.cuda.synchronize()
    extra = torch.cuda.max_memory_allocated() - base
    assert extra <= dw.numel() * 2 + dx.numel() * 2 + 64 * 2**20, extra
