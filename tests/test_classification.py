"""Classification family: values and gradients against torch / torchvision / float64
references, every option and reduction, odd shapes, edge cases and bad arguments."""

import pytest
import torch
import torch.nn.functional as TF
import torchvision.ops
from helpers import DEVICE, assert_close, padded

import tritonloss
import tritonloss.nn as tnn
from tritonloss.reference import classification as R

REDUCTIONS = ["none", "mean", "sum"]


@pytest.fixture(autouse=True)
def _seed():
    """Each test draws the same numbers whatever ran before it."""
    torch.manual_seed(0)
HALF = [torch.float16, torch.bfloat16]


def _labels(shape, C, ignore=None, p_ignore=0.25):
    t = torch.randint(0, C, shape)
    if ignore is not None:
        t = torch.where(torch.rand(shape) < p_ignore, torch.full_like(t, ignore), t)
    return t


def _to_ref(v, dtype=torch.float64, grad=False):
    return v.detach().to(dtype).requires_grad_(grad) if torch.is_tensor(v) and v.is_floating_point() else v


def run(fn, ref, args, kwargs=None, dtype=torch.float32, ref_dtype=torch.float64, pad=True):
    """Run `fn` on (NaN-padded) args in `dtype` and `ref` in float64 on the same values;
    compare the output and every floating argument's gradient under a random grad_output."""
    kwargs = kwargs or {}
    base = [a.to(dtype) if torch.is_tensor(a) and a.is_floating_point() else a for a in args]
    xs = []
    for a in base:
        if torch.is_tensor(a) and a.is_floating_point():
            xs.append(padded(a.to(DEVICE)) if pad and a.dim() else a.to(DEVICE).detach().requires_grad_())
        else:
            xs.append(a.to(DEVICE) if torch.is_tensor(a) else a)
    kw = {k: v.to(DEVICE) if torch.is_tensor(v) else v for k, v in kwargs.items()}
    out = fn(*xs, **kw)
    assert out.dtype == dtype
    g = torch.randn(out.shape, dtype=torch.float64)
    diff = [x for x in xs if torch.is_tensor(x) and x.requires_grad]
    grads = torch.autograd.grad(out, diff, g.to(DEVICE, dtype))
    rs = [_to_ref(a, ref_dtype, grad=True) for a in base]
    rkw = {k: _to_ref(v, ref_dtype) for k, v in kwargs.items()}
    r = ref(*rs, **rkw)
    rdiff = [x for x in rs if torch.is_tensor(x) and x.requires_grad]
    rgrads = torch.autograd.grad(r, rdiff, g.to(ref_dtype), allow_unused=True)
    # a loss is a difference of terms as large as the inputs (lse - x_t): its fp32 error
    # scales with them, not with the (possibly tiny) loss
    scale = max(float(r.detach().abs().max()) if r.numel() else 0.0,
                max((float(a.abs().max()) for a in base if torch.is_tensor(a) and a.is_floating_point()
                     and a.numel()), default=0.0))
    assert_close(out, r, dtype, scale=scale, what="loss")
    for i, (a, b) in enumerate(zip(grads, rgrads)):
        assert_close(a, b if b is not None else torch.zeros_like(a), dtype, what=f"grad {i}")
    return out, grads


# ---------------------------------------------------------------------------------------
# cross_entropy / nll_loss


CE_SHAPES = [(7,), (5, 7), (2, 5, 3, 4), (3, 5000)]


@pytest.mark.parametrize("shape", CE_SHAPES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("smoothing", [0.0, 0.3])
def test_cross_entropy_index(shape, reduction, weighted, smoothing):
    C = shape[0] if len(shape) == 1 else shape[1]
    lshape = () if len(shape) == 1 else (shape[0], *shape[2:])
    x = torch.randn(shape) * 3
    t = _labels(lshape, C, ignore=-100) if lshape else torch.tensor(3)
    kw = dict(weight=torch.rand(C) + 0.1 if weighted else None, reduction=reduction, label_smoothing=smoothing)
    run(tritonloss.cross_entropy, TF.cross_entropy, [x, t], kw)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("smoothing", [0.0, 0.2])
@pytest.mark.parametrize("shape", [(6, 9), (2, 4, 3, 5)])
def test_cross_entropy_probabilities(shape, reduction, weighted, smoothing):
    x = torch.randn(shape) * 2
    t = torch.softmax(torch.randn(shape), dim=1)
    w = torch.rand(shape[1]) + 0.1 if weighted else None
    run(tritonloss.cross_entropy, TF.cross_entropy, [x, t],
        dict(weight=w, reduction=reduction, label_smoothing=smoothing))


def test_cross_entropy_ignore_index_other_value_and_all_ignored():
    x = torch.randn(6, 5)
    t = torch.tensor([0, 3, 3, 4, 3, 1])
    run(tritonloss.cross_entropy, TF.cross_entropy, [x, t], dict(ignore_index=3, weight=torch.rand(5)))
    every = torch.full((6,), 2)
    for reduction in REDUCTIONS:
        out = tritonloss.cross_entropy(x.to(DEVICE), every.to(DEVICE), ignore_index=2, reduction=reduction)
        ref = TF.cross_entropy(x, every, ignore_index=2, reduction=reduction)
        assert torch.equal(torch.isnan(out.cpu()), torch.isnan(ref)) and torch.allclose(
            out.cpu().nan_to_num(), ref.nan_to_num())
    assert torch.isnan(tritonloss.cross_entropy(x.to(DEVICE), every.to(DEVICE), ignore_index=2))


def test_cross_entropy_ignored_rows_do_not_leak_nan():
    x = torch.randn(4, 6)
    x[1] = float("nan")
    t = torch.tensor([1, -100, 5, 0])
    xs = x.to(DEVICE).requires_grad_()
    for reduction in REDUCTIONS:
        out = tritonloss.cross_entropy(xs, t.to(DEVICE), reduction=reduction, label_smoothing=0.1)
        (g,) = torch.autograd.grad(out.sum(), xs)
        assert torch.isfinite(out).all() and torch.isfinite(g).all() and bool((g[1] == 0).all())


def test_cross_entropy_long_rows_loop_online():
    """A row much longer than one block (TILE 4096) runs the online max/sum, incl. C = 262,147."""
    x = torch.randn(2, 262_147) * 4
    x[0, 200_000] = 30.0  # the max arrives late in the row
    t = torch.tensor([200_000, 7])
    run(tritonloss.cross_entropy, TF.cross_entropy, [x, t], dict(reduction="none", label_smoothing=0.1))


def test_cross_entropy_two_classes():
    run(tritonloss.cross_entropy, TF.cross_entropy, [torch.randn(9, 2), torch.randint(0, 2, (9,))])


@pytest.mark.parametrize("dtype", HALF)
def test_cross_entropy_half(dtype):
    x = torch.randn(6, 40) * 2
    t = _labels((6,), 40, ignore=-100)
    run(tritonloss.cross_entropy, TF.cross_entropy, [x, t], dict(label_smoothing=0.1), dtype=dtype)


@pytest.mark.parametrize("shape", [(7,), (5, 7), (2, 5, 3, 4)])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("weighted", [False, True])
def test_nll_loss(shape, reduction, weighted):
    C = shape[0] if len(shape) == 1 else shape[1]
    lshape = () if len(shape) == 1 else (shape[0], *shape[2:])
    x = torch.log_softmax(torch.randn(shape), dim=0 if len(shape) == 1 else 1)
    t = _labels(lshape, C, ignore=-100) if lshape else torch.tensor(2)
    run(tritonloss.nll_loss, TF.nll_loss, [x, t],
        dict(weight=torch.rand(C) + 0.1 if weighted else None, reduction=reduction))


@pytest.mark.parametrize("fn", ["cross_entropy", "nll_loss", "softmax_focal_loss"])
def test_out_of_range_labels_nan_rows_or_error(fn):
    f = getattr(tritonloss, fn)
    x = torch.randn(4, 5, device=DEVICE, requires_grad=True)
    t = torch.tensor([1, 5, -3, 2], device=DEVICE)
    out = f(x, t, reduction="none")
    assert torch.isnan(out[1]) and torch.isnan(out[2]) and torch.isfinite(out[[0, 3]]).all()
    (g,) = torch.autograd.grad(out[[0, 3]].sum(), x)
    assert torch.isfinite(g[[0, 3]]).all()
    assert torch.isnan(f(x, t))
    tritonloss.set_checks(True)
    try:
        with pytest.raises(ValueError, match=r"position \(1,\)"):
            f(x, t)
    finally:
        tritonloss.set_checks(False)


def test_empty_inputs():
    for fn, ref in [(tritonloss.cross_entropy, TF.cross_entropy), (tritonloss.nll_loss, TF.nll_loss)]:
        x = torch.randn(0, 5, device=DEVICE, requires_grad=True)
        t = torch.zeros(0, dtype=torch.long, device=DEVICE)
        assert fn(x, t, reduction="none").shape == (0,)
        assert float(fn(x, t, reduction="sum")) == 0
        assert torch.isnan(fn(x, t)) and torch.isnan(ref(x.detach().cpu(), t.cpu()))
        (g,) = torch.autograd.grad(fn(x, t, reduction="sum"), x)
        assert g.shape == (0, 5)
    for fn in [tritonloss.binary_cross_entropy_with_logits, tritonloss.kl_div, tritonloss.hinge_loss]:
        x = torch.zeros(0, 3, device=DEVICE)
        assert fn(x, x, reduction="none").shape == (0, 3) and float(fn(x, x, reduction="sum")) == 0


# ---------------------------------------------------------------------------------------
# focal losses


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("alpha", [0.25, -1.0, 0.9])
@pytest.mark.parametrize("gamma", [2.0, 0.0, 1.5])
@pytest.mark.parametrize("soft", [False, True])
def test_sigmoid_focal_matches_torchvision(reduction, alpha, gamma, soft):
    x = torch.randn(7, 33) * 3
    y = torch.rand(7, 33) if soft else (torch.rand(7, 33) < 0.3).float()
    run(tritonloss.sigmoid_focal_loss, torchvision.ops.sigmoid_focal_loss, [x, y],
        dict(alpha=alpha, gamma=gamma, reduction=reduction))


@pytest.mark.parametrize("gamma", [0.5, 0.0])
def test_sigmoid_focal_gradient_finite_at_certainty(gamma):
    """p_t = 1 in fp32 (|x| = 40) gives gradient 0, its limit, where torchvision's formula
    gives NaN for gamma < 1; near-certain and ordinary elements match torchvision."""
    x = torch.tensor([40.0, -40.0, 17.0, 0.3], device=DEVICE, requires_grad=True)
    y = torch.tensor([1.0, 0.0, 1.0, 1.0], device=DEVICE)
    out = tritonloss.sigmoid_focal_loss(x, y, gamma=gamma, reduction="none")
    (g,) = torch.autograd.grad(out.sum(), x)
    assert torch.isfinite(g).all() and float(g[:2].abs().max()) < 1e-12
    xd = x.detach().double()[2:].requires_grad_()
    ref = torchvision.ops.sigmoid_focal_loss(xd, y.double()[2:], gamma=gamma, reduction="none")
    (gd,) = torch.autograd.grad(ref.sum(), xd)
    assert_close(out[2:], ref, torch.float32)
    assert_close(g[2:], gd, torch.float32)


@pytest.mark.parametrize("alpha", [None, 0.3, "tensor"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("shape", [(6, 5), (2, 4, 3, 5)])
def test_softmax_focal(alpha, reduction, shape):
    C = shape[1]
    lshape = (shape[0], *shape[2:])
    a = torch.rand(C) if alpha == "tensor" else alpha
    run(tritonloss.softmax_focal_loss, R.softmax_focal_loss, [torch.randn(shape) * 2, _labels(lshape, C, -100)],
        dict(alpha=a, gamma=2.0, reduction=reduction))


@pytest.mark.parametrize("gamma", [0.0, 0.5, 3.0])
def test_softmax_focal_gammas_and_certainty(gamma):
    """At p_t = 1 the gradient is 0 (its limit) for every gamma, where the eager formula
    gives NaN for gamma < 1; elsewhere it matches."""
    x = torch.randn(5, 4)
    x[0] = torch.tensor([60.0, -60.0, -60.0, -60.0])  # p_t = 1 in fp32
    t = torch.tensor([0, 1, 2, 3, -100])
    run(tritonloss.softmax_focal_loss, R.softmax_focal_loss, [x[1:], t[1:]], dict(gamma=gamma))
    xs = x.to(DEVICE).requires_grad_()
    out = tritonloss.softmax_focal_loss(xs, t.to(DEVICE), gamma=gamma, reduction="none")
    (g,) = torch.autograd.grad(out.sum(), xs)
    assert torch.isfinite(g).all() and float(g[0].abs().max()) < 1e-20 and float(out[0]) == 0


# ---------------------------------------------------------------------------------------
# binary cross-entropy family


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("weight", [None, "full", "row"])
def test_binary_cross_entropy(reduction, weight):
    x = torch.rand(6, 11) * 0.98 + 0.01
    y = torch.rand(6, 11)
    w = {None: None, "full": torch.rand(6, 11), "row": torch.rand(11)}[weight]
    run(tritonloss.binary_cross_entropy, TF.binary_cross_entropy, [x, y], dict(weight=w, reduction=reduction))


def test_binary_cross_entropy_log_clamp():
    x = torch.tensor([0.0, 1.0, 0.0, 1.0, 0.5])
    y = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.5])
    out = tritonloss.binary_cross_entropy(x.to(DEVICE), y.to(DEVICE), reduction="none")
    assert torch.allclose(out.cpu(), TF.binary_cross_entropy(x, y, reduction="none"))
    with pytest.raises(ValueError, match="probabilities"):
        tritonloss.binary_cross_entropy(torch.tensor([1.5], device=DEVICE), torch.tensor([1.0], device=DEVICE))


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("weight", [None, "row"])
@pytest.mark.parametrize("pos_weight", [None, "class", "scalar", "full"])
def test_bce_with_logits(reduction, weight, pos_weight):
    x = torch.randn(5, 3, 9) * 4
    y = torch.rand(5, 3, 9)
    w = torch.rand(3, 1) if weight else None
    pw = {None: None, "class": torch.rand(9) * 3, "scalar": torch.tensor(2.5), "full": torch.rand(3, 9) * 3}[pos_weight]
    out, _ = run(tritonloss.binary_cross_entropy_with_logits, TF.binary_cross_entropy_with_logits, [x, y],
                 dict(weight=w, reduction=reduction, pos_weight=pw))


@pytest.mark.parametrize("dtype", HALF)
def test_bce_with_logits_half(dtype):
    run(tritonloss.binary_cross_entropy_with_logits, TF.binary_cross_entropy_with_logits,
        [torch.randn(8, 50) * 3, (torch.rand(8, 50) < 0.5).float()], {}, dtype=dtype)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("shape", [(4, 1, 7, 9), (3, 10)])
def test_balanced_bce(reduction, shape):
    y = (torch.rand(shape) < 0.2).float()
    run(tritonloss.balanced_binary_cross_entropy_with_logits, R.balanced_binary_cross_entropy_with_logits,
        [torch.randn(shape) * 2, y], dict(reduction=reduction))


def test_balanced_bce_beta_is_the_negative_fraction():
    y = torch.zeros(2, 10)
    y[0, :3] = 1
    y[1, :9] = 1
    x = torch.zeros(2, 10)
    out = tritonloss.balanced_binary_cross_entropy_with_logits(x.to(DEVICE), y.to(DEVICE), reduction="none").cpu()
    ln2 = torch.log(torch.tensor(2.0))
    assert torch.allclose(out[0, 0], 0.7 * ln2) and torch.allclose(out[0, 5], 0.3 * ln2)
    assert torch.allclose(out[1, 0], 0.1 * ln2) and torch.allclose(out[1, 9], 0.9 * ln2)


# ---------------------------------------------------------------------------------------
# KL, margins


@pytest.mark.parametrize("reduction", REDUCTIONS + ["batchmean"])
@pytest.mark.parametrize("log_target", [False, True])
def test_kl_div(reduction, log_target):
    x = torch.log_softmax(torch.randn(6, 13), 1)
    t = torch.log_softmax(torch.randn(6, 13), 1) if log_target else torch.softmax(torch.randn(6, 13) * 2, 1)
    run(tritonloss.kl_div, TF.kl_div, [x, t], dict(reduction=reduction, log_target=log_target))


def test_kl_div_zero_target_as_torch():
    x = torch.randn(5, requires_grad=True)
    t = torch.tensor([0.0, 0.5, 0.0, 0.2, 0.3], requires_grad=True)
    out = tritonloss.kl_div(x.to(DEVICE), t.to(DEVICE), reduction="sum")
    ref = TF.kl_div(x, t, reduction="sum")
    assert torch.allclose(out.cpu(), ref)
    ga = torch.autograd.grad(out, [x, t])
    gb = torch.autograd.grad(ref, [x, t])
    for a, b in zip(ga, gb):
        assert torch.equal(torch.isnan(a), torch.isnan(b)) and torch.allclose(a.nan_to_num(), b.nan_to_num())


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_soft_margin(reduction):
    x = torch.randn(7, 9) * 3
    y = torch.randint(0, 2, (7, 9)).float() * 2 - 1
    args = [x, y]
    xs = padded(x.to(DEVICE))
    out = tritonloss.soft_margin_loss(xs, y.to(DEVICE), reduction=reduction)
    xd = x.double().requires_grad_()
    ref = TF.soft_margin_loss(xd, y.double(), reduction=reduction)
    g = torch.randn(out.shape)
    assert_close(out, ref, torch.float32)
    assert_close(torch.autograd.grad(out, xs, g.to(DEVICE))[0], torch.autograd.grad(ref, xd, g.double())[0],
                 torch.float32)
    assert len(args) == 2


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_soft_margin_finite_where_torch_overflows(dtype):
    x = torch.tensor([1000.0, -1000.0, 50.0], dtype=dtype, device=DEVICE, requires_grad=True)
    y = torch.tensor([-1.0, 1.0, -1.0], dtype=dtype, device=DEVICE)
    out = tritonloss.soft_margin_loss(x, y, reduction="none")
    (g,) = torch.autograd.grad(out.sum(), x)
    assert torch.isfinite(out).all() and torch.isfinite(g).all()
    assert torch.allclose(out.float().cpu()[:2], torch.tensor([1000.0, 1000.0]), rtol=1e-3)
    assert torch.allclose(g.float().cpu(), torch.tensor([1.0, -1.0, 1.0]), atol=1e-3)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("shape", [(9,), (5, 9), (3, 5000)])
def test_multilabel_soft_margin(reduction, weighted, shape):
    y = (torch.rand(shape) < 0.3).float()
    w = torch.rand(shape[-1]) if weighted else None
    run(tritonloss.multilabel_soft_margin_loss, TF.multilabel_soft_margin_loss, [torch.randn(shape) * 2, y],
        dict(weight=w, reduction=reduction))


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("p", [1, 2])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("shape", [(8,), (6, 8), (2, 5000)])
def test_multi_margin(reduction, p, weighted, shape):
    C = shape[-1]
    t = torch.randint(0, C, shape[:-1])
    w = torch.rand(C) + 0.1 if weighted else None
    run(tritonloss.multi_margin_loss, TF.multi_margin_loss, [torch.randn(shape), t],
        dict(p=p, margin=0.7, weight=w, reduction=reduction))


@pytest.mark.parametrize("name", ["hinge_loss", "perceptron_loss", "exponential_loss"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_signed_margin_losses(name, reduction):
    x = torch.randn(6, 7) * 2
    y = torch.randint(0, 2, (6, 7)).float() * 2 - 1
    kw = dict(reduction=reduction, **({"margin": 0.5} if name == "hinge_loss" else {}))
    run(getattr(tritonloss, name), getattr(R, name), [x, y], kw)


# ---------------------------------------------------------------------------------------
# mean-variance


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("include_ce", [True, False])
@pytest.mark.parametrize("start_age", [0, 16])
def test_mean_variance(reduction, include_ce, start_age):
    x = torch.randn(5, 70)
    t = torch.randint(0, 70, (5,)) + start_age
    run(tritonloss.mean_variance_loss, R.mean_variance_loss, [x, t],
        dict(lambda_mean=0.3, lambda_var=0.07, start_age=start_age, include_cross_entropy=include_ce,
             reduction=reduction))


def test_mean_variance_age_out_of_range_is_nan():
    x = torch.randn(3, 10, device=DEVICE)
    out = tritonloss.mean_variance_loss(x, torch.tensor([20, 30, 25], device=DEVICE), start_age=20,
                                        reduction="none")
    assert torch.isfinite(out[[0, 2]]).all() and torch.isnan(out[1])


# ---------------------------------------------------------------------------------------
# modules, bad arguments, determinism


def test_modules_match_functions():
    x = torch.randn(4, 6, device=DEVICE)
    t = torch.tensor([0, 5, 2, 1], device=DEVICE)
    w = torch.rand(6, device=DEVICE)
    y = (torch.rand(4, 6, device=DEVICE) < 0.5).float()
    pairs = [
        (tnn.CrossEntropyLoss(weight=w, label_smoothing=0.1)(x, t),
         tritonloss.cross_entropy(x, t, w, label_smoothing=0.1)),
        (tnn.NLLLoss(reduction="sum")(x, t), tritonloss.nll_loss(x, t, reduction="sum")),
        (tnn.BCELoss()(torch.sigmoid(x), y), tritonloss.binary_cross_entropy(torch.sigmoid(x), y)),
        (tnn.BCEWithLogitsLoss(pos_weight=w)(x, y), tritonloss.binary_cross_entropy_with_logits(x, y, pos_weight=w)),
        (tnn.BalancedBCEWithLogitsLoss()(x, y), tritonloss.balanced_binary_cross_entropy_with_logits(x, y)),
        (tnn.SigmoidFocalLoss(gamma=1.0)(x, y), tritonloss.sigmoid_focal_loss(x, y, gamma=1.0)),
        (tnn.SoftmaxFocalLoss(alpha=w)(x, t), tritonloss.softmax_focal_loss(x, t, alpha=w)),
        (tnn.KLDivLoss(reduction="batchmean")(x, y), tritonloss.kl_div(x, y, reduction="batchmean")),
        (tnn.SoftMarginLoss()(x, y * 2 - 1), tritonloss.soft_margin_loss(x, y * 2 - 1)),
        (tnn.MultiLabelSoftMarginLoss(weight=w)(x, y), tritonloss.multilabel_soft_margin_loss(x, y, w)),
        (tnn.MultiMarginLoss(p=2)(x, t), tritonloss.multi_margin_loss(x, t, p=2)),
        (tnn.HingeLoss(margin=2.0)(x, y), tritonloss.hinge_loss(x, y, margin=2.0)),
        (tnn.PerceptronLoss()(x, y), tritonloss.perceptron_loss(x, y)),
        (tnn.ExponentialLoss()(x, y), tritonloss.exponential_loss(x, y)),
        (tnn.MeanVarianceLoss(start_age=1)(x, t + 1), tritonloss.mean_variance_loss(x, t + 1, start_age=1)),
    ]
    for a, b in pairs:
        assert torch.equal(a, b)
    assert isinstance(tnn.CrossEntropyLoss(), torch.nn.CrossEntropyLoss)
    assert "gamma=1.0" in repr(tnn.SigmoidFocalLoss(gamma=1.0))


@pytest.mark.parametrize("call, error, match", [
    (lambda x, t: tritonloss.cross_entropy(x, t.float()), ValueError, "probabilities of input's shape"),
    (lambda x, t: tritonloss.cross_entropy(x, t[:2]), ValueError, r"target: expected shape \(4,\)"),
    (lambda x, t: tritonloss.cross_entropy(x, t.bool()), TypeError, "integer class labels"),
    (lambda x, t: tritonloss.cross_entropy(x, t, weight=torch.ones(5)), ValueError, "1-D tensor of 6"),
    (lambda x, t: tritonloss.cross_entropy(x, t, reduction="avg"), ValueError, "reduction"),
    (lambda x, t: tritonloss.cross_entropy(x, t, label_smoothing=1.5), ValueError, "label_smoothing"),
    (lambda x, t: tritonloss.cross_entropy(x, t, ignore_index=1.0), TypeError, "ignore_index"),
    (lambda x, t: tritonloss.cross_entropy(x[0, 0], t), ValueError, "0-dim"),
    (lambda x, t: tritonloss.cross_entropy(x[:, :0], t), ValueError, "at least one class"),
    (lambda x, t: tritonloss.cross_entropy(x.long(), t), TypeError, "floating-point"),
    (lambda x, t: tritonloss.softmax_focal_loss(x, t, gamma=-1.0), ValueError, "gamma"),
    (lambda x, t: tritonloss.softmax_focal_loss(x, t, alpha=torch.ones(3)), ValueError, "alpha"),
    (lambda x, t: tritonloss.sigmoid_focal_loss(x, x, alpha=1.5), ValueError, "alpha"),
    (lambda x, t: tritonloss.sigmoid_focal_loss(x, x, gamma=-0.5), ValueError, "gamma"),
    (lambda x, t: tritonloss.binary_cross_entropy_with_logits(x, x[:, :3]), ValueError, "input's shape"),
    (lambda x, t: tritonloss.binary_cross_entropy_with_logits(x, x, pos_weight=torch.ones(4)), ValueError,
     "pos_weight"),
    (lambda x, t: tritonloss.kl_div(x, x, reduction="batch"), ValueError, "batchmean"),
    (lambda x, t: tritonloss.kl_div(x, x, log_target=1), TypeError, "log_target"),
    (lambda x, t: tritonloss.multi_margin_loss(x, t, p=3), ValueError, "p: expected 1 or 2"),
    (lambda x, t: tritonloss.multi_margin_loss(x[None], t), ValueError, r"\[C\] or \[N, C\]"),
    (lambda x, t: tritonloss.mean_variance_loss(x[0], t), ValueError, r"\[N, C\]"),
    (lambda x, t: tritonloss.mean_variance_loss(x, t, lambda_var=-1.0), ValueError, "lambda_var"),
    (lambda x, t: tritonloss.soft_margin_loss(x, x.clone().requires_grad_()), ValueError, "not differentiable"),
    (lambda x, t: tritonloss.hinge_loss(x, x[:3]), ValueError, "broadcast"),
    (lambda x, t: tritonloss.balanced_binary_cross_entropy_with_logits(x[0, 0], x[0, 0]), ValueError, "batch"),
])
def test_bad_arguments(call, error, match):
    x = torch.randn(4, 6, device=DEVICE)
    t = torch.tensor([0, 5, 2, 1], device=DEVICE)
    with pytest.raises(error, match=match):
        call(x, t)


def test_labels_on_another_device_raise():
    x = torch.randn(4, 6, device="meta")
    with pytest.raises(ValueError, match="target: expected a tensor on meta like input, got cpu"):
        tritonloss.cross_entropy(x, torch.tensor([0, 1, 2, 3]))


@pytest.mark.parametrize("fn", ["cross_entropy", "softmax_focal_loss"])
def test_deterministic(fn):
    x = torch.randn(300, 37, device=DEVICE, requires_grad=True)
    t = torch.randint(0, 37, (300,), device=DEVICE)
    runs = []
    for _ in range(2):
        out = getattr(tritonloss, fn)(x, t)
        runs.append((out, *torch.autograd.grad(out, x)))
    assert all(torch.equal(a, b) for a, b in zip(*runs))


def test_float64_takes_the_eager_path_and_gradchecks():
    x = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    t = torch.tensor([0, 3, 1])
    assert torch.autograd.gradcheck(lambda v: tritonloss.softmax_focal_loss(v, t), (x,))
    assert torch.autograd.gradcheck(lambda v: tritonloss.sigmoid_focal_loss(v, torch.ones_like(v)).sum(), (x,))


def _multilabel_targets(shape):
    C = shape[-1]
    t = torch.full(shape, -1, dtype=torch.long)
    for row in t.reshape(-1, C):
        k = int(torch.randint(0, min(C, 6), ()))
        row[:k] = torch.randint(0, C, (k,))  # duplicates allowed, as torch reads them
        row[k + 1:] = torch.randint(0, C, (C - k - 1,))  # ignored: after the first -1
    return t


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("shape", [(9,), (5, 9), (3, 150)])
def test_multilabel_margin(reduction, shape):
    run(tritonloss.multilabel_margin_loss, TF.multilabel_margin_loss,
        [torch.randn(shape), _multilabel_targets(shape)], dict(reduction=reduction))


def test_multilabel_margin_label_out_of_range_is_nan():
    x = torch.randn(2, 4, device=DEVICE)
    t = torch.tensor([[1, 7, -1, 0], [2, -1, 9, 9]], device=DEVICE)
    out = tritonloss.multilabel_margin_loss(x, t, reduction="none")
    assert torch.isnan(out[0]) and torch.isfinite(out[1])
    assert torch.isfinite(tnn.MultiLabelMarginLoss()(x, t.clamp(max=3)))
    tritonloss.set_checks(True)
    try:
        with pytest.raises(ValueError, match=r"got 7 at position \(0, 1\)"):
            tritonloss.multilabel_margin_loss(x, t)
        tritonloss.multilabel_margin_loss(x, t.clamp(max=3))  # 9s after the -1 are not read
    finally:
        tritonloss.set_checks(False)


@pytest.mark.parametrize("dtype", HALF)
def test_every_case_in_half_precision(dtype):
    """Each `tritonloss check` case in fp16 / bf16 against float64 on the same (rounded)
    values: loss in the input's dtype, gradients in each tensor's dtype."""
    from tritonloss import _cases

    torch.manual_seed(0)
    for case in _cases.classification_cases():
        if case.fn in (tritonloss.binary_cross_entropy,):  # probabilities rounded to half may hit 0 / 1
            continue
        args, opts = case.make((5, 3, 11), dtype, DEVICE)
        xs = [a.detach().clone().requires_grad_(_cases.differentiated(case, i, a)) for i, a in enumerate(args)]
        red = case.reductions[-1]  # "sum" (or batchmean, or the only one)
        out = case.fn(*xs, **opts, **red)
        assert out.dtype == dtype, case.name
        diff = [x for x in xs if x.requires_grad]
        grads = torch.autograd.grad(out, diff)
        rs = [(a.detach().double() if a.is_floating_point() else a).requires_grad_(x.requires_grad)
              for a, x in zip(args, xs)]
        ropts = {k: v.double() if torch.is_tensor(v) and v.is_floating_point() else v for k, v in opts.items()}
        ref = case.ref(*rs, **ropts, **red)
        rgrads = torch.autograd.grad(ref, [r for r in rs if r.requires_grad])
        assert_close(out, ref, dtype, scale=float(ref.abs()) + 1.0, what=case.name)
        for g, r in zip(grads, rgrads):
            assert g.dtype == dtype
            assert_close(g, r, dtype, what=f"{case.name} grad")


@pytest.mark.gpu
def test_no_host_sync_on_cuda():
    """Every classification loss, forward and backward, under sync debug mode "error"."""
    from tritonloss import _cases

    for case in _cases.classification_cases():
        args, opts = case.make((6, 40), torch.float32, "cuda")
        xs = [a.requires_grad_(_cases.differentiated(case, i, a)) for i, a in enumerate(args)]
        for red in case.reductions:
            out = case.fn(*xs, **opts, **red)  # first call: autotuning (do_bench) may synchronise
            torch.autograd.grad(out.sum(), [x for x in xs if x.requires_grad])
            torch.cuda.set_sync_debug_mode("error")
            try:
                out = case.fn(*xs, **opts, **red)
                torch.autograd.grad(out.sum(), [x for x in xs if x.requires_grad])
            finally:
                torch.cuda.set_sync_debug_mode("default")
