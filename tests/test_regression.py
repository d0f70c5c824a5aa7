"""Regression family: values and gradients against float64 eager references."""

import inspect
import math

import pytest
import torch
import torch.nn.functional as TF
from helpers import DEVICE, assert_close, padded

import tritonloss
import tritonloss.nn as tnn
from tritonloss.reference import regression as R


def _randn(shape, scale=1.0):
    return torch.randn(shape) * scale


def _pair(scale=1.0):
    return lambda s: [_randn(s, scale), _randn(s, scale)]


def _heatmap(s):
    return [torch.rand(s), torch.rand(s)]


def _kl_box(s):
    return [_randn(s, 2.0), _randn(s, 0.7), _randn(s, 2.0)]


def _poisson(s):
    return [_randn(s), torch.rand(s) * 4 + 0.01]


def _poisson_lin(s):
    return [torch.rand(s) * 3 + 0.05, torch.rand(s) * 4 + 0.01]


def _gaussian(s):
    return [_randn(s), _randn(s), torch.rand(s) + 0.05]


# name -> (make inputs, option sets). Each option set is run with every reduction.
CASES = {
    "l1_loss": (_pair(), [{}]),
    "mse_loss": (_pair(), [{}]),
    "rmse_loss": (_pair(), [{}]),
    "smooth_l1_loss": (_pair(), [{}, {"beta": 0.3}, {"beta": 0.0}]),
    "huber_loss": (_pair(), [{}, {"delta": 0.4}, {"delta": 2.5}]),
    "balanced_l1_loss": (_pair(), [{}, {"alpha": 0.3, "gamma": 2.0, "beta": 0.6}]),
    "quantile_loss": (_pair(), [{"quantiles": 0.3}, {"quantiles": 0.9}, {"quantiles": "tensor"}]),
    "wing_loss": (_pair(8.0), [{}, {"omega": 5.0, "epsilon": 1.0}]),
    "adaptive_wing_loss": (_heatmap, [{}, {"omega": 10.0, "theta": 0.4, "epsilon": 1.2, "alpha": 2.3}]),
    "log_cosh_loss": (_pair(3.0), [{}]),
    "kl_box_loss": (_kl_box, [{}]),
    "poisson_nll_loss": (_poisson, [{}, {"full": True}]),
    "poisson_nll_loss_linear": (_poisson_lin, [{"log_input": False}, {"log_input": False, "full": True, "eps": 1e-3}]),
    "gaussian_nll_loss": (_gaussian, [{}, {"full": True}, {"eps": 0.2}]),
}
REDUCTIONS = ["none", "mean", "sum"]


def _fn(name):
    return name.removesuffix("_linear")


def _options(opts, shape):
    opts = dict(opts)
    if opts.get("quantiles") == "tensor":
        opts["quantiles"] = torch.linspace(0.05, 0.95, shape[-1], device=DEVICE)
    return opts


def _reduction_kw(name, reduction):
    return {} if name == "rmse_loss" else {"reduction": reduction}


def run_case(name, base, opts, reduction, dtype, weight=None, grad_seed=1):
    """Kernel path on `dtype` inputs vs the float64 reference on the same values; returns
    nothing, asserts values and gradients of every input."""
    fn = getattr(tritonloss, _fn(name))
    ref_fn = getattr(R, _fn(name))
    kw = _reduction_kw(name, reduction)
    xs = [padded(b.to(DEVICE, dtype)) for b in base]
    w = weight.to(DEVICE) if weight is not None else None
    out = fn(*xs, **opts, **kw, weight=w)
    assert out.dtype == dtype
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(grad_seed)).to(DEVICE, dtype)
    grads = torch.autograd.grad(out, xs, g)

    rs = [x.detach().double().requires_grad_() for x in xs]
    ropts = {k: (v.double() if torch.is_tensor(v) else v) for k, v in opts.items()}
    rw = w.double() if w is not None else None
    ref = ref_fn(*rs, **ropts, **kw, weight=rw)
    ref_grads = torch.autograd.grad(ref, rs, g.double())

    scale = None
    if out.dim() == 0 and name != "rmse_loss":  # reduced: error budget of the sum of |loss|
        elem = ref_fn(*[r.detach() for r in rs], **ropts, reduction="none", weight=rw).abs()
        scale = float(elem.sum() / (elem.numel() if reduction == "mean" else 1))
        if reduction == "mean" and rw is not None:
            scale = float(elem.sum() / rw.expand(elem.shape).sum())
    assert_close(out, ref, dtype, scale=scale, what=f"{name} value")
    for i, (gr, rg) in enumerate(zip(grads, ref_grads)):
        assert gr.dtype == dtype and gr.shape == xs[i].shape
        assert_close(gr, rg, dtype, what=f"{name} grad {i}")


ALL = [(n, i, r) for n, (_, opts) in CASES.items() for i in range(len(opts)) for r in REDUCTIONS
       if n != "rmse_loss" or r == "mean"]


@pytest.mark.parametrize("name,opt_index,reduction", ALL)
def test_every_option_and_reduction(name, opt_index, reduction):
    """Odd 2-D shape of 4227 elements: five programs of the default block, then the
    reduction's second stage."""
    torch.manual_seed(0)
    make, opts = CASES[name]
    shape = (3, 1409)
    run_case(name, make(shape), _options(opts[opt_index], shape), reduction, torch.float32)


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("reduction", ["none", "mean"])
def test_half_dtypes(name, dtype, reduction):
    torch.manual_seed(1)
    make, opts = CASES[name]
    shape = (2, 301)
    base = [b.to(dtype).float() for b in make(shape)]  # representable in dtype
    run_case(name, base, _options(opts[-1], shape), reduction, dtype)


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("shape", [(), (1,), (7,), (2, 3, 5, 7)])
def test_odd_shapes(name, shape):
    torch.manual_seed(2)
    make, opts = CASES[name]
    opt = opts[0] if shape == () else opts[-1]  # a quantiles tensor needs a last dimension
    run_case(name, make(shape), _options(opt, shape), "sum", torch.float32)


@pytest.mark.parametrize("name,reduction", [(n, r) for n, i, r in ALL if i == 0])
def test_weight(name, reduction):
    """A per-column weight (broadcast) and a full weight with zeros where the inputs are NaN:
    zero-weight elements add nothing, not even NaN, to the loss and the gradients."""
    torch.manual_seed(3)
    make, opts = CASES[name]
    shape = (5, 211)
    opts = _options(opts[-1], shape)
    run_case(name, make(shape), opts, reduction, torch.float32, weight=torch.rand(211) * 2)
    w = (torch.rand(shape) > 0.3).float() * torch.rand(shape)
    base = make(shape)
    for b in base:
        b[w == 0] = float("nan")
    run_case(name, base, opts, reduction, torch.float32, weight=w)


def test_many_partials():
    """More partial sums than one block of the second stage: its loop runs twice."""
    torch.manual_seed(4)
    n = 1024 * 1030
    run_case("mse_loss", _pair()((n,)), {}, "sum", torch.float32)
    run_case("l1_loss", _pair()((n,)), {}, "mean", torch.float32, weight=torch.rand(n))


@pytest.mark.parametrize("name", list(CASES))
def test_empty(name):
    make, opts = CASES[name]
    opts = _options(opts[-1], (0, 3))
    fn = getattr(tritonloss, _fn(name))
    xs = [b.to(DEVICE).requires_grad_() for b in make((0, 3))]
    for reduction, expect in [("none", None), ("sum", 0.0), ("mean", math.nan)]:
        if name == "rmse_loss" and reduction != "mean":
            continue
        out = fn(*xs, **opts, **_reduction_kw(name, reduction))
        if expect is None:
            assert out.shape == (0, 3)
        elif math.isnan(expect):
            assert out.dim() == 0 and torch.isnan(out)
        else:
            assert out.dim() == 0 and out.item() == expect
        grads = torch.autograd.grad(out, xs, torch.ones_like(out), allow_unused=True)
        assert all(gr is not None and gr.shape == (0, 3) for gr in grads)


# --- anchors: where torch has the loss, the kernels equal torch itself --------------------

TORCH_ANCHORS = [
    ("l1_loss", TF.l1_loss, {}),
    ("mse_loss", TF.mse_loss, {}),
    ("smooth_l1_loss", TF.smooth_l1_loss, {"beta": 0.5}),
    ("smooth_l1_loss", TF.smooth_l1_loss, {"beta": 0.0}),
    ("huber_loss", TF.huber_loss, {"delta": 0.5}),
    ("poisson_nll_loss", TF.poisson_nll_loss, {"full": True}),
    ("poisson_nll_loss", TF.poisson_nll_loss, {"log_input": False, "eps": 1e-4}),
]


@pytest.mark.parametrize("name,torch_fn,opts", TORCH_ANCHORS)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_torch_anchor(name, torch_fn, opts, reduction):
    torch.manual_seed(5)
    x = torch.rand(4, 33) * 2 + 0.1
    y = torch.rand(4, 33) * 3 + 0.5
    xs = [padded(t.to(DEVICE)) for t in (x, y)]
    out = getattr(tritonloss, name)(*xs, reduction=reduction, **opts)
    g = torch.randn(out.shape).to(DEVICE)
    grads = torch.autograd.grad(out, xs, g)
    rs = [t.double().requires_grad_() for t in (x, y)]
    ref = torch_fn(*rs, reduction=reduction, **opts)
    ref_grads = torch.autograd.grad(ref, rs, g.double().cpu())
    assert_close(out, ref, torch.float32, what=name)
    for a, b in zip(grads, ref_grads):
        assert_close(a, b, torch.float32, what=f"{name} grad")


@pytest.mark.parametrize("var_shape", ["same", "last1", "short", "float"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_gaussian_var_shapes_match_torch(var_shape, reduction):
    torch.manual_seed(6)
    x, y = torch.randn(6, 5), torch.randn(6, 5)
    var = {"same": torch.rand(6, 5) + 0.1, "last1": torch.rand(6, 1) + 0.1,
           "short": torch.rand(6) + 0.1, "float": 0.7}[var_shape]
    args = [x, y, var] if var_shape == "float" else [x, y, var]
    dev = [padded(a.to(DEVICE)) if torch.is_tensor(a) else a for a in args]
    out = tritonloss.gaussian_nll_loss(*dev, full=True, reduction=reduction)
    g = torch.randn(out.shape).to(DEVICE)
    tensors = [d for d in dev if torch.is_tensor(d)]
    grads = torch.autograd.grad(out, tensors, g)
    rs = [a.double().requires_grad_() if torch.is_tensor(a) else a for a in args]
    ref = TF.gaussian_nll_loss(*rs, full=True, reduction=reduction)
    rtensors = [r for r in rs if torch.is_tensor(r)]
    ref_grads = torch.autograd.grad(ref, rtensors, g.double().cpu())
    assert_close(out, ref, torch.float32, what="gaussian")
    for a, b in zip(grads, ref_grads):
        assert_close(a, b, torch.float32, what="gaussian grad")


def test_gaussian_small_var_clamped_straight_through():
    x, y = torch.randn(50), torch.randn(50)
    var = torch.rand(50) * 1e-3
    xs = [padded(t.to(DEVICE)) for t in (x, y, var)]
    out = tritonloss.gaussian_nll_loss(*xs, eps=5e-4)
    grads = torch.autograd.grad(out, xs)
    rs = [t.double().requires_grad_() for t in (x, y, var)]
    ref = TF.gaussian_nll_loss(*rs, eps=5e-4)
    for a, b in zip(grads, torch.autograd.grad(ref, rs)):
        assert_close(a, b, torch.float32, what="clamped var grad")


def test_balanced_l1_equals_mmdet_at_beta_1():
    """mmdet's formula, written here independently, at beta = 1."""
    d = torch.linspace(-3, 3, 601, dtype=torch.float64)
    alpha, gamma = 0.5, 1.5
    b = math.exp(gamma / alpha) - 1
    a = d.abs()
    mmdet = torch.where(a < 1, alpha / b * (b * a + 1) * torch.log(b * a + 1) - alpha * a,
                        gamma * a + gamma / b - alpha)
    got = tritonloss.balanced_l1_loss(d.float().to(DEVICE), torch.zeros(601, device=DEVICE),
                                      reduction="none")
    assert_close(got, mmdet, torch.float32, what="balanced_l1 vs mmdet")


# --- catalog edge cases ------------------------------------------------------------------

def test_rmse_perfect_fit_gradient_is_zero():
    x = padded(torch.randn(300).to(DEVICE))
    y = padded(x.detach().clone())
    out = tritonloss.rmse_loss(x, y)
    gx, gy = torch.autograd.grad(out, [x, y])
    assert out.item() == 0.0
    assert torch.equal(gx, torch.zeros_like(gx)) and torch.equal(gy, torch.zeros_like(gy))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_log_cosh_large_arguments(dtype):
    x = padded(torch.tensor([1000.0, -1000.0, 60000.0, 0.0]).to(DEVICE, dtype))
    y = torch.zeros(4, device=DEVICE, dtype=dtype)
    out = tritonloss.log_cosh_loss(x, y, reduction="none")
    (gx,) = torch.autograd.grad(out.sum(), [x])
    ln2 = math.log(2)
    expect = torch.tensor([1000 - ln2, 1000 - ln2, 60000 - ln2, 0.0], dtype=torch.float64)
    assert torch.isfinite(out).all() and torch.isfinite(gx).all()
    assert_close(out, expect.to(dtype).double(), dtype, what="log_cosh large")
    assert gx.tolist() == [1.0, -1.0, 1.0, 0.0]


@pytest.mark.parametrize("beta", [0.25, 2.0])
def test_balanced_l1_gradient_continuous_at_beta(beta):
    """For beta != 1 the gradient is gamma on both sides of |d| = beta."""
    gamma = 1.5
    d = torch.tensor([beta * (1 - 1e-5), beta, beta * (1 + 1e-5), -beta * (1 - 1e-5), -beta])
    x = padded(d.to(DEVICE))
    out = tritonloss.balanced_l1_loss(x, torch.zeros(5, device=DEVICE), beta=beta, gamma=gamma,
                                      reduction="sum")
    (gx,) = torch.autograd.grad(out, [x])
    expect = torch.tensor([gamma, gamma, gamma, -gamma, -gamma], dtype=torch.float64)
    assert_close(gx, expect, torch.float32, scale=1e2, what="continuity")


def test_wing_at_omega():
    omega, eps = 10.0, 2.0
    c = omega - omega * math.log1p(omega / eps)
    d = torch.tensor([omega, -omega, omega * (1 - 1e-6), omega * (1 + 1e-6)])
    x = padded(d.to(DEVICE))
    out = tritonloss.wing_loss(x, torch.zeros(4, device=DEVICE), reduction="none")
    (gx,) = torch.autograd.grad(out.sum(), [x])
    # at |d| = omega the linear branch: |d| - C, which equals omega ln(1 + omega/eps) there
    assert_close(out[:2], torch.full((2,), omega - c, dtype=torch.float64), torch.float32)
    assert_close(out[2:], torch.full((2,), omega * math.log1p(omega / eps), dtype=torch.float64),
                 torch.float32, scale=1e2)
    assert gx[:2].tolist() == [1.0, -1.0]
    assert gx[2].item() == pytest.approx(omega / (eps + omega), rel=1e-5)


def test_l1_gradient_zero_at_zero():
    x = padded(torch.tensor([0.0, 1.0, -2.0]).to(DEVICE))
    out = tritonloss.l1_loss(x, torch.zeros(3, device=DEVICE), reduction="sum")
    (gx,) = torch.autograd.grad(out, [x])
    assert gx.tolist() == [0.0, 1.0, -1.0]


def test_poisson_full_target_zero_gradient_finite():
    """torch gives NaN for d/dtarget at target = 0 with full=True; the derivative is 0."""
    x = padded(torch.randn(4).to(DEVICE))
    y = padded(torch.tensor([0.0, 0.5, 1.0, 3.0]).to(DEVICE))
    out = tritonloss.poisson_nll_loss(x, y, full=True, reduction="sum")
    gx, gy = torch.autograd.grad(out, [x, y])
    expect = -x.detach().double().cpu()
    expect[3] += math.log(3.0) + 0.5 / 3.0
    assert_close(gy, expect, torch.float32, what="poisson target grad")


def test_nan_propagates_where_used():
    x = padded(torch.tensor([1.0, float("nan"), 2.0]).to(DEVICE))
    y = torch.zeros(3, device=DEVICE)
    for name in ["l1_loss", "mse_loss", "smooth_l1_loss", "log_cosh_loss", "wing_loss"]:
        out = getattr(tritonloss, name)(x, y, reduction="none")
        assert torch.isnan(out[1]) and torch.isfinite(out[[0, 2]]).all(), name
        assert torch.isnan(getattr(tritonloss, name)(x, y)), name


def test_quantile_target_broadcasts_over_quantiles():
    torch.manual_seed(7)
    x = padded(torch.randn(9, 3).to(DEVICE))
    y = padded(torch.randn(9).to(DEVICE))
    q = torch.tensor([0.1, 0.5, 0.9], device=DEVICE)
    out = tritonloss.quantile_loss(x, y, q, reduction="none")
    gx, gy = torch.autograd.grad(out, [x, y], torch.ones_like(out))
    e = y.detach().double().cpu()[:, None] - x.detach().double().cpu()
    qq = q.double().cpu()
    expect = torch.maximum(qq * e, (qq - 1) * e)
    assert_close(out, expect, torch.float32)
    assert_close(gy, torch.where(e > 0, qq, qq - 1).sum(1), torch.float32)


def test_broadcast_target_gradient_is_summed():
    torch.manual_seed(8)
    x = padded(torch.randn(6, 4).to(DEVICE))
    y = padded(torch.randn(6, 1).to(DEVICE))
    with pytest.warns(UserWarning, match="different to the input size"):
        out = tritonloss.mse_loss(x, y)
    gx, gy = torch.autograd.grad(out, [x, y])
    rx, ry = (t.detach().double().cpu().requires_grad_() for t in (x, y))
    with pytest.warns(UserWarning):
        ref = TF.mse_loss(rx, ry)
    rgx, rgy = torch.autograd.grad(ref, [rx, ry])
    assert gy.shape == (6, 1)
    assert_close(gx, rgx, torch.float32)
    assert_close(gy, rgy, torch.float32)


def test_mixed_dtypes():
    """fp16 prediction, fp32 target: loss in fp16, each gradient in its tensor's dtype."""
    torch.manual_seed(9)
    x = padded(torch.randn(40).half().to(DEVICE))
    y = padded(torch.randn(40).to(DEVICE))
    out = tritonloss.smooth_l1_loss(x, y)
    gx, gy = torch.autograd.grad(out, [x, y])
    assert out.dtype == torch.float16 and gx.dtype == torch.float16 and gy.dtype == torch.float32
    ref = TF.smooth_l1_loss(x.detach().double().cpu(), y.detach().double().cpu())
    assert_close(out, ref, torch.float16)


def test_deterministic():
    torch.manual_seed(10)
    x = torch.randn(5000, device=DEVICE, requires_grad=True)
    y = torch.randn(5000, device=DEVICE)
    w = torch.rand(5000, device=DEVICE)
    results = []
    for _ in range(2):
        out = tritonloss.huber_loss(x, y, weight=w)
        (gx,) = torch.autograd.grad(out, [x])
        results.append((out, gx))
    assert torch.equal(results[0][0], results[1][0]) and torch.equal(results[0][1], results[1][1])


def test_double_backward_raises_clearly():
    x = torch.randn(8, device=DEVICE, requires_grad=True)
    (gx,) = torch.autograd.grad(tritonloss.mse_loss(x, torch.zeros(8, device=DEVICE)), [x], create_graph=True)
    with pytest.raises(RuntimeError, match="elementwise_backward.*no autograd formula"):
        torch.autograd.grad(gx.sum(), [x])


# --- bad arguments -----------------------------------------------------------------------

def _xy(n=4):
    return torch.randn(n, device=DEVICE), torch.randn(n, device=DEVICE)


@pytest.mark.parametrize("call,exc,match", [
    (lambda x, y: tritonloss.mse_loss(x, torch.randn(5, device=DEVICE)), ValueError, "broadcast"),
    (lambda x, y: tritonloss.l1_loss(x, y, reduction="avg"), ValueError, "reduction"),
    (lambda x, y: tritonloss.smooth_l1_loss(x, y, beta=-1.0), ValueError, "beta"),
    (lambda x, y: tritonloss.huber_loss(x, y, delta=0.0), ValueError, "delta"),
    (lambda x, y: tritonloss.wing_loss(x, y, omega=-1.0), ValueError, "omega"),
    (lambda x, y: tritonloss.wing_loss(x, y, epsilon=0.0), ValueError, "epsilon"),
    (lambda x, y: tritonloss.balanced_l1_loss(x, y, beta=0.0), ValueError, "beta"),
    (lambda x, y: tritonloss.balanced_l1_loss(x, y, alpha=-0.5), ValueError, "alpha"),
    (lambda x, y: tritonloss.adaptive_wing_loss(x, y, theta=-1.0), ValueError, "theta"),
    (lambda x, y: tritonloss.smooth_l1_loss(x, y, beta=float("nan")), ValueError, "beta"),
    (lambda x, y: tritonloss.huber_loss(x, y, delta="1"), TypeError, "delta"),
    (lambda x, y: tritonloss.mse_loss(x.long(), y), TypeError, "input"),
    (lambda x, y: tritonloss.mse_loss(x, y.int()), TypeError, "target"),
    (lambda x, y: tritonloss.l1_loss(x.tolist(), y), TypeError, "input"),
    (lambda x, y: tritonloss.mse_loss(x, y, weight=torch.ones(3, device=DEVICE)), ValueError, "weight"),
    (lambda x, y: tritonloss.mse_loss(x, y, weight=torch.ones(2, 4, device=DEVICE)), ValueError, "weight"),
    (lambda x, y: tritonloss.mse_loss(x, y, weight=torch.ones(4, device=DEVICE).long()), TypeError, "weight"),
    (lambda x, y: tritonloss.quantile_loss(x, y, 1.5), ValueError, "quantiles"),
    (lambda x, y: tritonloss.quantile_loss(x, y, torch.tensor([0.5, 0.5], device=DEVICE)), ValueError, "quantiles"),
    (lambda x, y: tritonloss.quantile_loss(x, y, torch.tensor([0.5, 0.5, 0.5, 1.5])), ValueError, "quantiles"),
    (lambda x, y: tritonloss.kl_box_loss(x, torch.zeros(3, device=DEVICE), y), ValueError, "log_var"),
    (lambda x, y: tritonloss.poisson_nll_loss(x, y, log_input=1), TypeError, "log_input"),
    (lambda x, y: tritonloss.poisson_nll_loss(x, y, eps=-1.0), ValueError, "eps"),
    (lambda x, y: tritonloss.gaussian_nll_loss(x, y, torch.ones(3, device=DEVICE)), ValueError, "var"),
    (lambda x, y: tritonloss.gaussian_nll_loss(x, y, -1.0), ValueError, "var"),
    (lambda x, y: tritonloss.gaussian_nll_loss(x, y, torch.full((4,), -1.0)), ValueError, "var"),
    (lambda x, y: tritonloss.gaussian_nll_loss(x, y, torch.ones(4, dtype=torch.long)), TypeError, "var"),
])
def test_bad_arguments(call, exc, match):
    x, y = _xy()
    with pytest.raises(exc, match=match):
        call(x, y)


@pytest.mark.gpu
def test_device_mismatch_raises():
    x = torch.randn(4, device="cuda")
    with pytest.raises(ValueError, match="target"):
        tritonloss.mse_loss(x, torch.randn(4))


@pytest.mark.gpu
def test_negative_var_on_cuda_clamps_without_checks_and_raises_with_checks():
    x, y = torch.randn(4, device="cuda"), torch.randn(4, device="cuda")
    var = torch.tensor([1.0, -1.0, 1.0, 1.0], device="cuda")
    out = tritonloss.gaussian_nll_loss(x, y, var, eps=0.5)
    assert torch.isfinite(out)
    tritonloss.set_checks(True)
    try:
        with pytest.raises(ValueError, match="var"):
            tritonloss.gaussian_nll_loss(x, y, var)
    finally:
        tritonloss.set_checks(False)


# --- modules -----------------------------------------------------------------------------

MODULES = [
    (tnn.L1Loss, "l1_loss", {}, torch.nn.L1Loss),
    (tnn.MSELoss, "mse_loss", {}, torch.nn.MSELoss),
    (tnn.RMSELoss, "rmse_loss", {}, None),
    (tnn.SmoothL1Loss, "smooth_l1_loss", {"beta": 0.5}, torch.nn.SmoothL1Loss),
    (tnn.HuberLoss, "huber_loss", {"delta": 0.5}, torch.nn.HuberLoss),
    (tnn.BalancedL1Loss, "balanced_l1_loss", {"beta": 0.5}, None),
    (tnn.QuantileLoss, "quantile_loss", {"quantiles": 0.2}, None),
    (tnn.WingLoss, "wing_loss", {"omega": 3.0}, None),
    (tnn.AdaptiveWingLoss, "adaptive_wing_loss", {"theta": 0.4}, None),
    (tnn.LogCoshLoss, "log_cosh_loss", {}, None),
    (tnn.KLBoxLoss, "kl_box_loss", {}, None),
    (tnn.PoissonNLLLoss, "poisson_nll_loss", {"full": True}, torch.nn.PoissonNLLLoss),
    (tnn.GaussianNLLLoss, "gaussian_nll_loss", {"full": True}, torch.nn.GaussianNLLLoss),
]


@pytest.mark.parametrize("cls,name,opts,torch_cls", MODULES)
def test_modules(cls, name, opts, torch_cls):
    torch.manual_seed(11)
    make, _ = CASES[name]
    xs = [b.to(DEVICE) for b in make((3, 7))]
    w = torch.rand(3, 7, device=DEVICE)
    kw = {} if name == "rmse_loss" else {"reduction": "sum"}
    module = cls(**opts, **kw)
    assert torch.equal(module(*xs, weight=w), getattr(tritonloss, name)(*xs, **opts, **kw, weight=w))
    if torch_cls is not None:
        assert isinstance(module, torch_cls)
        assert module(*xs).item() == pytest.approx(torch_cls(**opts, **kw)(*xs).item(), rel=1e-5)


def test_quantile_module_keeps_tensor_as_buffer():
    q = torch.tensor([0.1, 0.9])
    module = tnn.QuantileLoss(q)
    assert "quantiles" in dict(module.named_buffers())


def test_module_defaults_match_functions():
    for cls, name, _, _ in MODULES:
        fn_params = inspect.signature(getattr(tritonloss, name)).parameters
        for pname, p in inspect.signature(cls.__init__).parameters.items():
            if pname in ("self", "quantiles") or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
                continue
            assert fn_params[pname].default == p.default, (cls.__name__, pname)
