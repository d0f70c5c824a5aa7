"""Dense-detection ranking losses (dr_loss, ap_loss): values and gradients against the float64
eager references in tritonloss.reference.classification (for ap_loss the backward is the
error-driven update, computed eagerly there), edge cases, bad input and determinism."""

import pytest
import torch
from helpers import DEVICE, assert_close, padded

import tritonloss
import tritonloss.nn as tnn
from tritonloss.reference import classification as R

LOSSES = ["dr_loss", "ap_loss"]


def _targets(N, C, p_ignore=0.15, p_pos=0.3, gen=None):
    """Labels: -1 ignored, 0 background, 1..C positive for that class."""
    u = torch.rand(N, generator=gen)
    cls = torch.randint(1, C + 1, (N,), generator=gen)
    return torch.where(u < p_ignore, -1, torch.where(u < p_ignore + p_pos, cls, 0))


def check(name, x, t, dtype=torch.float32, **kw):
    """Run the loss on a NaN-padded `dtype` view and the float64 reference on the same values;
    compare the 0-dim loss and the input gradient under a random grad_output."""
    xq = x.to(dtype)
    xk = padded(xq.to(DEVICE))
    out = getattr(tritonloss, name)(xk, t.to(DEVICE), **kw)
    assert out.dtype == dtype and out.shape == ()
    g = torch.randn(()) * 3
    (dx,) = torch.autograd.grad(out, [xk], g.to(DEVICE, dtype))
    assert dx.dtype == dtype
    xr = xq.double().requires_grad_()
    ref = getattr(R, name)(xr, t, **kw)
    (dr,) = torch.autograd.grad(ref, [xr], g.double())
    assert_close(out, ref, dtype, scale=float(ref.detach().abs()) + 1e-3, what="loss")
    assert_close(dx, dr, dtype, what="grad")
    return out, dx


@pytest.mark.parametrize("name", LOSSES)
@pytest.mark.parametrize("shape, p_pos", [((37, 13), 0.3), ((101, 37), 0.3), ((150, 5), 0.6), ((9, 1), 0.3)])
def test_values_and_gradients(name, shape, p_pos):
    """(101, 37): several DR blocks and AP sample splits; (150, 5): several AP positive blocks."""
    torch.manual_seed(0)
    x = torch.randn(shape) * 2
    check(name, x, _targets(*shape, p_pos=p_pos))


@pytest.mark.parametrize("name, kw", [
    ("dr_loss", dict(margin=0.2, pos_lambda=0.5, neg_lambda=0.3, L=3.0, tau=2.0)),
    ("dr_loss", dict(neg_lambda=0.01)),  # a sharp softmax: needs the online max
    ("ap_loss", dict(delta=0.3)),
    ("ap_loss", dict(delta=5.0)),
])
def test_options(name, kw):
    torch.manual_seed(1)
    check(name, torch.randn(23, 11) * 3, _targets(23, 11), **kw)


@pytest.mark.parametrize("name", LOSSES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs(name, dtype):
    torch.manual_seed(2)
    check(name, torch.randn(29, 7) * 2, _targets(29, 7), dtype=dtype)


@pytest.mark.parametrize("name", LOSSES)
@pytest.mark.parametrize("case", ["no_positive", "all_ignored", "single_positive", "ties", "empty"])
def test_edge_cases(name, case):
    torch.manual_seed(3)
    N, C = 19, 6
    x = torch.randn(N, C)
    t = torch.where(torch.rand(N) < 0.2, -1, 0)
    if case == "all_ignored":
        t = torch.full((N,), -1)
    elif case == "single_positive":
        t[5] = 3
    elif case == "ties":  # exact ties (integer scores), also between positives
        x = torch.randint(-2, 3, (N, C)).float()
        t = _targets(N, C, p_pos=0.5)
    elif case == "empty":
        x, t = torch.randn(0, C), torch.zeros(0, dtype=torch.int64)
    out, dx = check(name, x, t)
    if name == "ap_loss" and case in ("no_positive", "all_ignored", "empty"):
        assert float(out.detach()) == 0.0 and bool((dx == 0).all())
    if case == "all_ignored":
        assert bool((dx == 0).all())


def test_no_positive_ap_loss_is_attached_zero():
    x = torch.randn(8, 3, device=DEVICE, requires_grad=True)
    out = tritonloss.ap_loss(x, torch.zeros(8, dtype=torch.int64, device=DEVICE))
    assert out.requires_grad and float(out.detach()) == 0.0
    out.backward()
    assert bool((x.grad == 0).all())


def test_dr_loss_without_samples_uses_the_reference_convention():
    """No positive: P+ = 1; no negative: P- = 0 (the official SigmoidDRLoss)."""
    x = torch.randn(4, 3, device=DEVICE)
    out = tritonloss.dr_loss(x, torch.full((4,), -1, device=DEVICE))
    expect = 4.0 / 6.0 * torch.log1p(torch.exp(torch.tensor(6.0 * (0.0 - 1.0 + 0.5))))
    assert abs(float(out) - float(expect)) < 1e-6


def test_ap_error_driven_update_balances():
    """Negatives' updates sum to g * loss, positives' to -g * loss."""
    torch.manual_seed(4)
    x = torch.randn(31, 9, device=DEVICE, requires_grad=True)
    t = _targets(31, 9).to(DEVICE)
    out = tritonloss.ap_loss(x, t)
    out.backward(torch.tensor(2.5, device=DEVICE))
    cls = torch.arange(1, 10, device=DEVICE)
    pos = (t[:, None] == cls)
    neg = (t[:, None] != -1) & ~pos
    loss = float(out.detach())
    assert loss > 0
    assert abs(float(x.grad[neg].sum()) - 2.5 * loss) < 1e-5
    assert abs(float(x.grad[pos].sum()) + 2.5 * loss) < 1e-5


@pytest.mark.parametrize("name", LOSSES)
def test_nan_in_ignored_rows_does_not_leak_and_used_nan_propagates(name):
    torch.manual_seed(5)
    x = torch.randn(17, 5)
    t = _targets(17, 5)
    t[[2, 9]] = -1
    t[4] = 2
    x[[2, 9]] = float("nan")
    xk = x.clone().to(DEVICE).requires_grad_()
    out = getattr(tritonloss, name)(xk, t.to(DEVICE))
    out.backward()
    assert torch.isfinite(out) and bool(torch.isfinite(xk.grad).all())
    x[4, 0] = float("nan")
    assert torch.isnan(getattr(tritonloss, name)(x.to(DEVICE), t.to(DEVICE)))


@pytest.mark.parametrize("name", LOSSES)
@pytest.mark.parametrize("bad", [-2, 6, 100])
def test_out_of_range_labels(name, bad):
    torch.manual_seed(6)
    x = torch.randn(11, 5, device=DEVICE, requires_grad=True)
    t = _targets(11, 5)
    t[7] = bad
    out = getattr(tritonloss, name)(x, t.to(DEVICE))
    assert torch.isnan(out)
    assert torch.isnan(getattr(R, name)(x.detach().double().cpu(), t))
    out.backward()
    used = (t != -1).to(DEVICE)
    assert bool(torch.isnan(x.grad[used]).all()) and bool((x.grad[~used] == 0).all())
    tritonloss.set_checks(True)
    try:
        with pytest.raises(ValueError, match=rf"target: .*got {bad} at position \(7,\)"):
            getattr(tritonloss, name)(x, t.to(DEVICE))
    finally:
        tritonloss.set_checks(False)


@pytest.mark.parametrize("name", LOSSES)
def test_deterministic(name):
    torch.manual_seed(7)
    x = torch.randn(67, 33, device=DEVICE)
    t = _targets(67, 33).to(DEVICE)
    runs = []
    for _ in range(2):
        xk = x.clone().requires_grad_()
        out = getattr(tritonloss, name)(xk, t)
        out.backward()
        runs.append((out.detach(), xk.grad))
    assert torch.equal(runs[0][0], runs[1][0]) and torch.equal(runs[0][1], runs[1][1])


def test_modules():
    torch.manual_seed(8)
    x = torch.randn(13, 4, device=DEVICE)
    t = _targets(13, 4).to(DEVICE)
    assert torch.equal(tnn.DRLoss(margin=0.3, tau=2.0)(x, t), tritonloss.dr_loss(x, t, margin=0.3, tau=2.0))
    assert torch.equal(tnn.APLoss(delta=0.5)(x, t), tritonloss.ap_loss(x, t, delta=0.5))
    m = tnn.DRLoss()
    assert (m.margin, m.pos_lambda, m.L, m.tau) == (0.5, 1.0, 6.0, 4.0)
    assert abs(m.neg_lambda - 0.1 / torch.log(torch.tensor(3.5, dtype=torch.float64)).item()) < 1e-15


def test_float64_takes_the_eager_path():
    torch.manual_seed(9)
    x = torch.randn(7, 3, dtype=torch.float64, requires_grad=True)
    t = _targets(7, 3)
    assert torch.autograd.gradcheck(lambda v: tritonloss.dr_loss(v, t), (x,))
    out = tritonloss.ap_loss(x, t)
    (g,) = torch.autograd.grad(out, [x])
    (gr,) = torch.autograd.grad(R.ap_loss(x, t), [x])
    assert torch.equal(g, gr)


_X = torch.randn(5, 3)
_T = torch.tensor([0, 1, -1, 3, 2])


@pytest.mark.parametrize("name", LOSSES)
@pytest.mark.parametrize("args, kw, error, match", [
    ((_X[0], _T), {}, ValueError, r"input: expected logits of shape \[N, C\]"),
    ((_X[None], _T), {}, ValueError, r"input: expected logits of shape \[N, C\]"),
    ((torch.randn(5, 0), _T), {}, ValueError, r"C >= 1"),
    ((_X.long(), _T), {}, TypeError, "input: expected a floating-point tensor"),
    ((_X, _T.float()), {}, TypeError, "target: expected integer class labels"),
    ((_X, _T[:4]), {}, ValueError, r"target: expected shape \(5,\), got \(4,\)"),
    ((_X, [0, 1, 2, 3, 0]), {}, TypeError, "target: expected a torch.Tensor"),
])
def test_bad_tensors(name, args, kw, error, match):
    with pytest.raises(error, match=match):
        getattr(tritonloss, name)(*args, **kw)


@pytest.mark.parametrize("name, kw, error, match", [
    ("dr_loss", dict(margin="0.5"), TypeError, "margin: expected a real number"),
    ("dr_loss", dict(margin=float("inf")), ValueError, "margin: expected a finite number"),
    ("dr_loss", dict(pos_lambda=0.0), ValueError, "pos_lambda: expected a number > 0.0"),
    ("dr_loss", dict(neg_lambda=-1.0), ValueError, "neg_lambda: expected a number > 0.0"),
    ("dr_loss", dict(L=0), ValueError, "L: expected a number > 0.0"),
    ("dr_loss", dict(tau=-2.0), ValueError, "tau: expected a number > 0.0"),
    ("ap_loss", dict(delta=0.0), ValueError, "delta: expected a number > 0.0"),
    ("ap_loss", dict(delta=None), TypeError, "delta: expected a real number"),
])
def test_bad_options(name, kw, error, match):
    with pytest.raises(error, match=match):
        getattr(tritonloss, name)(_X, _T, **kw)


def test_device_mismatch():
    with pytest.raises(ValueError, match="target: expected a tensor on meta like input, got cpu"):
        tritonloss.dr_loss(torch.randn(5, 3, device="meta"), _T)


@pytest.mark.gpu
@pytest.mark.parametrize("name", LOSSES)
def test_dense_detection_shape(name):
    """20,000 anchors x 80 classes (1% positive): many blocks, splits and positive tiles."""
    gen = torch.Generator().manual_seed(10)
    x = torch.randn(20000, 80, generator=gen) * 2
    u = torch.rand(20000, generator=gen)
    t = torch.where(u < 0.1, -1, torch.where(u < 0.11, torch.randint(1, 81, (20000,), generator=gen), 0))
    check(name, x, t)


@pytest.mark.gpu
def test_no_host_sync():
    x = torch.randn(5000, 80, device="cuda", requires_grad=True)
    t = _targets(5000, 80, p_pos=0.02).cuda()
    for name in LOSSES:
        getattr(tritonloss, name)(x, t).backward()  # compile / autotune
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for name in LOSSES:
            getattr(tritonloss, name)(x, t).backward()
    finally:
        torch.cuda.set_sync_debug_mode(0)
