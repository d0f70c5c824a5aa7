"""Segmentation overlap family: values and gradients against MONAI in float64.

MONAI's DiceLoss / TverskyLoss are the anchor wherever they have the option; where they do
not (Focal-Tversky, class weights for Tversky), the anchor is MONAI's per-(b, c) output
composed with the catalog formula, and for `squared` Tversky, tritonloss.reference (itself
checked against MONAI below through the float64 path).

Kernel inputs are contiguous views framed by NaN (labels: by an out-of-range index), so a
read outside a tensor shows as NaN in the loss; some tests use non-contiguous padded views.
"""

import inspect
import math
import warnings

import monai.losses as ML
import pytest
import torch
from helpers import DEVICE, assert_close, padded
from tritonloss.kernels import overlap as K

import tritonloss
import tritonloss.nn as tnn
from tritonloss import _runtime
from tritonloss.reference import overlap as R

NAMES = ["dice_loss", "tversky_loss", "focal_tversky_loss"]
REDUCTIONS = ["none", "mean", "sum"]
_FRAME = 37


def framed(t: torch.Tensor, requires_grad: bool = False) -> torch.Tensor:
    """A contiguous copy of `t` inside a larger buffer filled with NaN (floating) or with an
    out-of-range class index (integer): the kernels get it as is, and any read outside it
    turns the loss NaN."""
    fill = float("nan") if t.is_floating_point() else 10**6 if t.dtype != torch.uint8 else 250
    buf = torch.full((t.numel() + 2 * _FRAME,), fill, dtype=t.dtype, device=DEVICE)
    view = buf[_FRAME : _FRAME + t.numel()].view(t.shape)
    view.copy_(t)
    return view.requires_grad_(requires_grad) if t.is_floating_point() else view


def monai(name, x, target, *, activation="softmax", include_background=True, squared=False,
          jaccard=False, smooth_nr=1e-5, smooth_dr=1e-5, batch=False, weight=None, ignore_index=None,
          reduction="mean", alpha=0.5, beta=0.5, gamma=None):
    """The anchor in float64: MONAI itself, composed with the catalog formula where MONAI
    lacks the option (Focal-Tversky power, class weights for Tversky)."""
    labels = not target.is_floating_point()
    t = target.unsqueeze(1) if labels else target
    common = dict(include_background=include_background, to_onehot_y=labels,
                  sigmoid=activation == "sigmoid", softmax=activation == "softmax",
                  smooth_nr=smooth_nr, smooth_dr=smooth_dr, batch=batch, ignore_index=ignore_index)
    n_scored = x.shape[1] - (0 if include_background or x.shape[1] == 1 else 1)
    w = torch.as_tensor(weight, dtype=torch.float64) if weight is not None else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if name == "dice_loss" and (w is None or n_scored > 1):
            return ML.DiceLoss(**common, squared_pred=squared, jaccard=jaccard, weight=w,
                               reduction=reduction)(x, t).reshape(_none_shape(x, batch, n_scored, reduction))
        assert not squared and not jaccard
        if name == "dice_loss":
            loss = ML.DiceLoss(**common, reduction="none")(x, t)
        else:
            loss = ML.TverskyLoss(**common, alpha=alpha, beta=beta, reduction="none")(x, t)
    loss = loss.reshape(_none_shape(x, batch, n_scored, "none"))
    if gamma is not None:  # the catalog's power, with derivative 0 (not inf) at 0
        safe = torch.where(loss > 0, loss, torch.ones_like(loss))
        loss = torch.where(loss > 0, safe ** (1 / gamma), loss * 0)
    if w is not None:
        loss = loss * w
    return {"none": loss, "mean": loss.mean(), "sum": loss.sum()}[reduction]


def _none_shape(x, batch, n_scored, reduction):
    if reduction != "none":
        return ()
    return (n_scored,) if batch else (x.shape[0], n_scored)


def make_input(shape, activation, seed):
    gen = torch.Generator().manual_seed(seed)
    if activation == "none":  # probabilities
        return torch.rand(shape, generator=gen)
    return torch.randn(shape, generator=gen) * 2


def make_target(kind, shape, seed, n_class=None):
    """kind: "labels" (indices [B, *spatial]), "onehot" or "soft" (shaped like input)."""
    gen = torch.Generator().manual_seed(seed + 1000)
    B, C, *spatial = shape
    if kind == "labels":
        return torch.randint(0, max(C, 2) if C == 1 else C, (B, *spatial), generator=gen)
    if kind == "onehot":
        if C == 1:
            return torch.randint(0, 2, shape, generator=gen).float()
        idx = torch.randint(0, C, (B, *spatial), generator=gen)
        return torch.nn.functional.one_hot(idx, C).movedim(-1, 1).float()
    return torch.rand(shape, generator=gen)


def _split(opts):
    """(function keyword options, positional alpha/beta/gamma) for a loss."""
    opts = dict(opts)
    pos = {k: opts.pop(k) for k in ("alpha", "beta", "gamma") if k in opts}
    return opts, pos


def run(name, x, target, opts, reduction, dtype=torch.float32, anchor="monai", seed=7,
        frame=True, grad_target=True):
    """Ours on `dtype` (x, and a floating target, in that dtype; NaN-framed or padded) vs
    the float64 anchor on the same values: the loss, d/dinput and d/dtarget (unless
    `grad_target` is False or the target holds indices)."""
    make = framed if frame else padded
    xk = make(x.to(DEVICE, dtype), requires_grad=True)
    if target.is_floating_point():
        tk = make(target.to(DEVICE, dtype), requires_grad=grad_target)
    else:
        tk = framed(target.to(DEVICE)) if frame else target.to(DEVICE)
    labels = not tk.requires_grad
    kw, pos = _split(opts)
    if name == "focal_tversky_loss":
        pos.setdefault("gamma", 4 / 3)
    out = getattr(tritonloss, name)(xk, tk, **pos, **kw, reduction=reduction)
    assert out.dtype == dtype
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed)).to(DEVICE, dtype)
    diff = [xk] if labels else [xk, tk]
    grads = torch.autograd.grad(out, diff, g)

    xr = xk.detach().cpu().double().requires_grad_()
    tr = tk.detach().cpu()
    tr = tr if not tr.is_floating_point() else tr.double().requires_grad_(not labels)
    if anchor == "monai":
        ref = monai(name, xr, tr, **kw, **pos, reduction=reduction)
    else:
        ref = getattr(R, name)(xr, tr, **pos, **kw, reduction=reduction)
    rdiff = [xr] if labels else [xr, tr]
    ref_grads = torch.autograd.grad(ref, rdiff, g.cpu().double())
    assert_close(out, ref, dtype, what=f"{name} value")
    for i, (a, b) in enumerate(zip(grads, ref_grads)):
        assert a.dtype == diff[i].dtype and a.shape == diff[i].shape
        assert_close(a, b, dtype, what=f"{name} grad {'input target'.split()[i]}")
    return out, grads


# --- every option, against MONAI ----------------------------------------------------------

COMMON = [
    {},
    {"activation": "sigmoid", "include_background": False},
    {"activation": "none"},
    {"batch": True},
    {"smooth_nr": 0.0, "smooth_dr": 1e-3},
    {"weight": [0.2, 1.0, 2.5]},
    {"include_background": False, "weight": [0.5, 3.0]},
    {"ignore_index": 255},
    {"ignore_index": 1},
]
OPTIONS = {
    "dice_loss": COMMON + [{"squared": True}, {"jaccard": True}, {"squared": True, "jaccard": True, "batch": True}],
    "tversky_loss": COMMON + [{"alpha": 0.3, "beta": 0.7}, {"alpha": 1.0, "beta": 1.0, "batch": True}],
    "focal_tversky_loss": COMMON + [{"gamma": 2.0}, {"gamma": 0.75, "alpha": 0.7, "beta": 0.3}],
}
# the defaults with every reduction; each other option with "none" (per-(b, c) values) and
# one of "mean" / "sum" in turn (the reductions do not depend on the options)
CASES = [(n, i, r) for n in NAMES for i in range(len(OPTIONS[n]))
         for r in (REDUCTIONS if i == 0 else ["none", REDUCTIONS[1 + i % 2]])]


def _with_ignored(labels, opts, seed):
    """Some pixels set to ignore_index (when the options have one)."""
    ii = opts.get("ignore_index")
    if ii is None or ii == 1:
        return labels
    gen = torch.Generator().manual_seed(seed)
    return torch.where(torch.rand(labels.shape, generator=gen) < 0.2, torch.full_like(labels, ii), labels)


@pytest.mark.parametrize("name,opt_index,reduction", CASES)
def test_labels_2d_every_option(name, opt_index, reduction):
    """(2, 3, 37, 41) with index targets: 1517 pixels per image, so each forward program
    loops over more than one tile and a program's range ends inside a tile."""
    opts = OPTIONS[name][opt_index]
    shape = (2, 3, 37, 41)
    x = make_input(shape, opts.get("activation", "softmax"), opt_index)
    t = _with_ignored(make_target("labels", shape, opt_index), opts, opt_index)
    run(name, x, t, opts, reduction)


DENSE = [
    {},
    {"ignore_index": 2},
    {"ignore_index": -1},
    {"activation": "sigmoid", "batch": True, "include_background": False},
]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("kind", ["onehot", "soft"])
@pytest.mark.parametrize("opt_index", range(len(DENSE)))
def test_dense_targets_3d(name, kind, opt_index):
    """One-hot and soft targets shaped like a 3-D input; both gradients. MONAI
    differentiates its mask 1 - target[c] for a class-index ignore_index, which these treat
    as a constant: there the target gradient is checked against the reference instead."""
    opts = DENSE[opt_index]
    shape = (2, 4, 5, 6, 7)
    x = make_input(shape, opts.get("activation", "softmax"), 10 + opt_index)
    t = make_target(kind, shape, 10 + opt_index)
    if kind == "onehot" and opts.get("ignore_index") == -1:
        t[:, :, 0] = 0  # the first slice unlabelled: ignored by MONAI's sentinel rule
    reduction = REDUCTIONS[opt_index % 3]
    if opts.get("ignore_index") == 2:
        run(name, x, t, opts, reduction, anchor="reference")
        run(name, x, t, opts, reduction, grad_target=False)
    else:
        run(name, x, t, opts, reduction)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("kind", ["labels", "onehot", "soft"])
@pytest.mark.parametrize("opts", [{"activation": "sigmoid"}, {"activation": "sigmoid", "ignore_index": 1},
                                  {"activation": "none", "batch": True, "weight": [2.0]}])
def test_single_channel(name, kind, opts):
    """C = 1: index targets are the 0/1 foreground mask. MONAI ignores a weight when one
    class is scored (this applies it): the anchor composes that case."""
    shape = (2, 1, 9, 11)
    x = make_input(shape, opts["activation"], 20)
    t = make_target(kind, shape, 20)
    if kind == "soft" and "ignore_index" in opts:
        t = torch.where(t > 0.7, torch.ones_like(t), t)  # some exactly 1: ignored
    run(name, x, t, opts, "none" if "weight" not in opts else "mean")


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("kind", ["labels", "soft"])
def test_half_dtypes(name, dtype, kind):
    shape = (2, 3, 13, 17)
    x = make_input(shape, "softmax", 30).to(dtype).float()  # representable in dtype
    t = make_target(kind, shape, 30)
    t = t if kind == "labels" else t.to(dtype).float()
    run(name, x, t, {"weight": [1.0, 0.5, 2.0]}, "mean", dtype=dtype)
    run(name, x, t, {"activation": "sigmoid"}, "none", dtype=dtype)


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int32, torch.bool])
def test_index_dtypes(dtype):
    """Any integer dtype (bool for one channel) gives what int64 indices give; a float64
    class weight does not move fp32 inputs off the kernels."""
    C = 1 if dtype == torch.bool else 3
    shape = (2, C, 6, 7)
    x = make_input(shape, "sigmoid", 36).to(DEVICE)
    t = make_target("labels", shape, 36).to(DEVICE)
    w = torch.rand(C, dtype=torch.float64, device=DEVICE) + 0.5
    got = tritonloss.dice_loss(x, framed(t.to(dtype)), activation="sigmoid", weight=w, reduction="none")
    expect = tritonloss.dice_loss(x, t, activation="sigmoid", weight=w.float(), reduction="none")
    assert got.dtype == torch.float32 and torch.equal(got, expect)


def test_mixed_dtypes_target_gradient_in_its_dtype():
    shape = (2, 3, 5, 7)
    x = make_input(shape, "softmax", 31).half().float()
    t = make_target("soft", shape, 31)
    xk = framed(x.to(DEVICE, torch.float16), requires_grad=True)
    tk = framed(t.to(DEVICE), requires_grad=True)
    out = tritonloss.dice_loss(xk, tk)
    gx, gt = torch.autograd.grad(out, [xk, tk])
    assert out.dtype == gx.dtype == torch.float16 and gt.dtype == torch.float32
    assert_close(out, monai("dice_loss", x.double(), t.double()), torch.float16)


def test_non_contiguous_inputs():
    shape = (2, 3, 6, 11)
    x, t = make_input(shape, "softmax", 32), make_target("soft", shape, 32)
    run("dice_loss", x, t, {"ignore_index": -1}, "none", frame=False)
    run("tversky_loss", x, make_target("labels", shape, 32), {}, "sum", frame=False)


def test_squared_tversky_against_reference():
    """MONAI's TverskyLoss has no squared form: the reference is the anchor."""
    shape = (2, 3, 9, 10)
    for kind, reduction in [("labels", "mean"), ("soft", "none")]:
        x, t = make_input(shape, "softmax", 33), make_target(kind, shape, 33)
        run("tversky_loss", x, t, {"squared": True, "alpha": 0.2, "beta": 0.8}, reduction, anchor="reference")
        run("focal_tversky_loss", x, t, {"squared": True, "gamma": 1.5}, reduction, anchor="reference")


def test_large_class_count():
    """C = 130: a tile of 256 channels by the minimum 16 pixels."""
    shape = (1, 130, 5, 7)
    x, t = make_input(shape, "softmax", 34), make_target("labels", shape, 34)
    run("dice_loss", x, t, {"include_background": False}, "mean")


def test_many_rows_in_score_stage():
    """batch=True over 19 samples: the score kernel adds more rows than one block."""
    shape = (19, 2, 3, 4)
    x, t = make_input(shape, "softmax", 35), make_target("labels", shape, 35)
    run("dice_loss", x, t, {"batch": True}, "none")


# --- the reference (CPU without interpreter, float64) against MONAI ----------------------

@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("opt_index", range(len(COMMON) + 2))
def test_float64_path_is_the_reference_and_matches_monai(name, opt_index):
    opts = OPTIONS[name][opt_index]
    shape = (2, 3, 4, 5)
    x = make_input(shape, opts.get("activation", "softmax"), 40 + opt_index).double().to(DEVICE)
    t = _with_ignored(make_target("labels", shape, 40), opts, 40).to(DEVICE)
    xr = x.detach().clone().requires_grad_()
    x.requires_grad_()
    kw, pos = _split(opts)
    if name == "focal_tversky_loss":
        pos.setdefault("gamma", 4 / 3)
    out = getattr(tritonloss, name)(x, t, **pos, **kw, reduction="none")
    ref = monai(name, xr.cpu(), t.cpu(), **kw, **pos, reduction="none")
    assert out.dtype == torch.float64
    # MONAI one-hots index targets in float32, and its squared form takes their norm there
    rtol, atol = (1e-7, 1e-9) if opts.get("squared") else (1e-12, 1e-12)
    torch.testing.assert_close(out.cpu(), ref, rtol=rtol, atol=atol)
    g = torch.randn(out.shape, dtype=torch.float64)
    torch.testing.assert_close(torch.autograd.grad(out, x, g.to(DEVICE))[0].cpu(),
                               torch.autograd.grad(ref, xr, g)[0].cpu(), rtol=rtol * 100, atol=atol)


def test_eager_path_without_interpreter(monkeypatch):
    """fp32 CPU tensors with the interpreter off run the reference."""
    if DEVICE != "cpu":
        pytest.skip("the eager CPU path is taken only for CPU tensors")
    monkeypatch.setattr(_runtime, "INTERPRET", False)
    shape = (2, 3, 5, 6)
    x, t = make_input(shape, "softmax", 41), make_target("soft", shape, 41)
    out = tritonloss.tversky_loss(x, t, 0.3, 0.7, ignore_index=-1, reduction="none")
    assert_close(out, monai("tversky_loss", x.double(), t.double(), alpha=0.3, beta=0.7, ignore_index=-1,
                            reduction="none"), torch.float32)


def test_gradcheck_float64():
    x = torch.randn(2, 3, 3, 4, dtype=torch.float64, requires_grad=True)
    t = torch.rand(2, 3, 3, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: tritonloss.focal_tversky_loss(a, b, reduction="none"), (x, t))


# --- empty masks, ignored pixels, NaN, bad labels ----------------------------------------

@pytest.mark.parametrize("name", ["dice_loss", "tversky_loss"])
def test_empty_ground_truth_and_empty_prediction_as_monai(name):
    """Class 1 absent from the ground truth of sample 0; class 2 absent from ground truth and
    prediction (probabilities exactly 0) of sample 1; sample 1's class 0 a perfect fit."""
    shape = (2, 3, 4, 5)
    x = torch.zeros(shape)
    t = torch.zeros(shape)
    t[0, 0], t[0, 2, :2] = 1, 1
    t[0, 0, :2] = 0
    x[0] = torch.rand(3, 4, 5)
    t[1, 0, :2], x[1, 0, :2] = 1, 1  # perfect fit
    t[1, 1, 2:] = 1  # ground truth, empty prediction
    for reduction in REDUCTIONS:
        out, _ = run(name, x, t, {"activation": "none"}, reduction)
        assert torch.isfinite(out).all()
    out = run(name, x, t, {"activation": "none", "smooth_nr": 0.0}, "none")[0].detach()
    assert out[1, 2] == 1 and abs(float(out[1, 0])) < 1e-6 and out[1, 1] > 0.99  # 1 - 0 / smooth_dr


def test_focal_tversky_at_zero_gives_zero_gradient():
    """An empty class predicted empty: 1 - TI = 0, loss 0 and gradient 0 (not inf)."""
    x = torch.zeros(1, 2, 3, 3)
    t = torch.zeros(1, 2, 3, 3)
    x[0, 0] = t[0, 0] = 1
    xk = framed(x.to(DEVICE), requires_grad=True)
    out = tritonloss.focal_tversky_loss(xk, t.to(DEVICE), activation="none", reduction="none")
    (gx,) = torch.autograd.grad(out.sum(), [xk])
    assert out.tolist() == [[0.0, 0.0]]
    assert torch.equal(gx, torch.zeros_like(gx))


@pytest.mark.parametrize("name", NAMES)
def test_all_ignored(name):
    """Every pixel ignored: every sum is 0, the loss 1 - smooth_nr / smooth_dr, gradient 0;
    NaN logits at the ignored pixels leak nowhere."""
    x = torch.full((2, 3, 4, 5), float("nan"))
    t = torch.full((2, 4, 5), 7)
    xk = framed(x.to(DEVICE), requires_grad=True)
    for nr, dr in [(1e-5, 1e-5), (0.0, 1e-5), (1e-6, 1e-5)]:
        out = getattr(tritonloss, name)(xk, framed(t.to(DEVICE)), ignore_index=7, smooth_nr=nr,
                                        smooth_dr=dr, reduction="none")
        (gx,) = torch.autograd.grad(out.sum(), [xk])
        expect = 1 - nr / dr
        expect = expect ** 0.75 if name == "focal_tversky_loss" else expect
        assert torch.allclose(out, torch.full((2, 3), expect, device=DEVICE), rtol=1e-6, atol=1e-7)
        assert torch.equal(gx, torch.zeros_like(gx))


@pytest.mark.parametrize("kind", ["labels", "onehot"])
def test_nan_at_ignored_pixels_does_not_leak(kind):
    shape = (2, 3, 5, 6)
    x = make_input(shape, "softmax", 50)
    if kind == "labels":
        t = make_target("labels", shape, 50)
        t[:, 0] = -100
        opts = {"ignore_index": -100}
    else:
        t = make_target("onehot", shape, 50)
        t[:, :, 0] = 0
        opts = {"ignore_index": 255}
    clean = x.clone()
    x[:, :, 0] = float("nan")
    xk = framed(x.to(DEVICE), requires_grad=True)
    out = tritonloss.dice_loss(xk, framed(t.to(DEVICE)), **opts, reduction="none")
    (gx,) = torch.autograd.grad(out.sum(), [xk])
    assert torch.isfinite(out).all() and torch.isfinite(gx).all()
    assert (gx[:, :, 0] == 0).all()
    ref = monai("dice_loss", clean.double(), t.double() if kind == "onehot" else t, **opts, reduction="none")
    assert_close(out, ref, torch.float32)


def test_nan_propagates_where_used():
    x = make_input((2, 3, 4, 5), "softmax", 51)
    x[1, 2, 3, 4] = float("nan")
    t = make_target("labels", (2, 3, 4, 5), 51)
    out = tritonloss.dice_loss(framed(x.to(DEVICE)), framed(t.to(DEVICE)), reduction="none")
    assert torch.isfinite(out[0]).all() and torch.isnan(out[1]).all()  # softmax couples channels
    assert torch.isnan(tritonloss.dice_loss(x.to(DEVICE), t.to(DEVICE)))


def test_bad_labels_never_read_out_of_bounds():
    """The kernels alone (the public layer raises first on the CPU): sample 1 holds indices
    -5 and 3 (C = 3) and an ignored 9; its row is NaN, sample 0 is exact."""
    shape = (2, 3, 4, 5)
    x = make_input(shape, "softmax", 52)
    t = make_target("labels", shape, 52)
    t[1, 0, 0], t[1, 2, 3], t[1, 1, 1] = -5, 3, 9
    spec = K.Spec(act=K.SOFTMAX, labels=True, mask=K.LABEL_MASK, squared=False, first=0, ignore=9, c0=0,
                  form=(2.0, 0.0, 1.0, 1.0, 1e-5, 1e-5), focal=False, expo=1.0, batch=False, reduce=K.NONE)
    xk = framed(x.reshape(2, 3, 20).to(DEVICE))
    out, coef = K.forward(spec, xk, framed(t.reshape(2, 20).to(DEVICE)), None)
    dx, _ = K.backward(spec, xk, framed(t.reshape(2, 20).to(DEVICE)), coef, torch.ones(2, 3, device=DEVICE),
                       True, False)
    assert torch.isnan(out[1]).all()
    assert torch.isnan(dx[1, :, :6]).all() and (dx[1, :, 6] == 0).all() and torch.isnan(dx[1, :, 7:]).all()
    good = monai("dice_loss", x[:1].double(), t[:1], reduction="none")
    assert_close(out[:1], good, torch.float32)
    assert torch.isfinite(dx[0]).all()


def test_bad_labels_raise_with_position():
    x = torch.randn(2, 3, 4, 5, device=DEVICE)
    t = torch.zeros(2, 4, 5, dtype=torch.long, device=DEVICE)
    t[1, 2, 3] = 3
    if DEVICE == "cuda":
        tritonloss.set_checks(True)
    try:
        with pytest.raises(ValueError, match=r"target: .*got 3 at position \(1, 2, 3\)"):
            tritonloss.dice_loss(x, t)
        t[1, 2, 3] = -1
        with pytest.raises(ValueError, match="position"):
            tritonloss.dice_loss(x, t)
        tritonloss.dice_loss(x, t, ignore_index=-1)  # -1 ignored: fine
        with pytest.raises(ValueError, match=r"\[0, 2\)"):  # one channel: 0/1 mask
            tritonloss.dice_loss(x[:, :1], t.abs() * 2, activation="sigmoid")
    finally:
        tritonloss.set_checks(False)


# --- empty inputs, determinism, warnings, autograd ---------------------------------------

@pytest.mark.parametrize("name", NAMES)
def test_empty_batch_and_empty_image(name):
    fn = getattr(tritonloss, name)
    x = torch.randn(0, 3, 4, 5, device=DEVICE, requires_grad=True)
    t = torch.zeros(0, 4, 5, dtype=torch.long, device=DEVICE)
    assert fn(x, t, reduction="none").shape == (0, 3)
    assert fn(x, t, reduction="sum").item() == 0
    out = fn(x, t)
    assert torch.isnan(out)
    (gx,) = torch.autograd.grad(out, [x])
    assert gx.shape == x.shape
    assert fn(x, t, batch=True, reduction="none").tolist() == [0.0, 0.0, 0.0]  # as MONAI: empty sums
    x = torch.randn(2, 3, 0, 5, device=DEVICE, requires_grad=True)
    out = fn(x, torch.zeros(2, 3, 0, 5, device=DEVICE), reduction="none")
    assert out.tolist() == [[0.0] * 3] * 2
    (gx,) = torch.autograd.grad(out.sum(), [x])
    assert gx.shape == x.shape


def test_deterministic():
    shape = (2, 4, 33, 65)
    x = make_input(shape, "softmax", 60).to(DEVICE).requires_grad_()
    t = make_target("soft", shape, 60).to(DEVICE).requires_grad_()
    results = []
    for _ in range(2):
        out = tritonloss.focal_tversky_loss(x, t, ignore_index=-1)
        results.append((out, *torch.autograd.grad(out, [x, t])))
    assert all(torch.equal(a, b) for a, b in zip(*results))


def test_single_channel_warnings_as_monai():
    x = torch.rand(2, 1, 4, 5, device=DEVICE)
    t = torch.randint(0, 2, (2, 4, 5), device=DEVICE)
    with pytest.warns(UserWarning, match="softmax"):
        out = tritonloss.dice_loss(x, t)
    assert_close(out, monai("dice_loss", x.double().cpu(), t.cpu()), torch.float32)
    with pytest.warns(UserWarning, match="include_background"):
        tritonloss.dice_loss(x, t, activation="sigmoid", include_background=False)


def test_double_backward_raises_clearly():
    x = torch.randn(1, 2, 3, 3, device=DEVICE, requires_grad=True)
    t = torch.randint(0, 2, (1, 3, 3), device=DEVICE)
    (gx,) = torch.autograd.grad(tritonloss.dice_loss(x, t), [x], create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable|does not require grad"):
        torch.autograd.grad(gx.sum(), [x])


# --- bad arguments ------------------------------------------------------------------------

def _xt():
    return torch.randn(2, 3, 4, 5, device=DEVICE), torch.randint(0, 3, (2, 4, 5), device=DEVICE)


@pytest.mark.parametrize("call,exc,match", [
    (lambda x, t: tritonloss.dice_loss(x, t[:, :3]), ValueError, r"target: .*\(2, 4, 5\)"),
    (lambda x, t: tritonloss.dice_loss(x, torch.rand(2, 2, 4, 5, device=DEVICE)), ValueError, "target"),
    (lambda x, t: tritonloss.dice_loss(x, torch.rand(2, 3, 4, 6, device=DEVICE)), ValueError, "target"),
    (lambda x, t: tritonloss.dice_loss(x[:, :, 0, 0], t[:, 0, 0]), ValueError, "input"),
    (lambda x, t: tritonloss.dice_loss(x.long(), t), TypeError, "input"),
    (lambda x, t: tritonloss.dice_loss(x, t.tolist()), TypeError, "target"),
    (lambda x, t: tritonloss.dice_loss(x, t.to(torch.complex64)), TypeError, "target"),
    (lambda x, t: tritonloss.dice_loss(x, t, reduction="avg"), ValueError, "reduction"),
    (lambda x, t: tritonloss.dice_loss(x, t, activation="relu"), ValueError, "activation"),
    (lambda x, t: tritonloss.dice_loss(x, t, squared=1), TypeError, "squared"),
    (lambda x, t: tritonloss.dice_loss(x, t, jaccard=None), TypeError, "jaccard"),
    (lambda x, t: tritonloss.dice_loss(x, t, batch="yes"), TypeError, "batch"),
    (lambda x, t: tritonloss.dice_loss(x, t, include_background=0), TypeError, "include_background"),
    (lambda x, t: tritonloss.dice_loss(x, t, smooth_nr=-1.0), ValueError, "smooth_nr"),
    (lambda x, t: tritonloss.dice_loss(x, t, smooth_dr=float("inf")), ValueError, "smooth_dr"),
    (lambda x, t: tritonloss.dice_loss(x, t, ignore_index=1.5), TypeError, "ignore_index"),
    (lambda x, t: tritonloss.dice_loss(x, t, ignore_index=True), TypeError, "ignore_index"),
    (lambda x, t: tritonloss.dice_loss(x, t, weight=[1.0, 2.0]), ValueError, "weight"),
    (lambda x, t: tritonloss.dice_loss(x, t, weight=[1.0, 2.0, 3.0], include_background=False), ValueError,
     r"weight: .*\(2,\)"),
    (lambda x, t: tritonloss.dice_loss(x, t, weight=[1.0, -2.0, 3.0]), ValueError, "non-negative"),
    (lambda x, t: tritonloss.dice_loss(x, t, weight=["a", 1, 2]), TypeError, "weight"),
    (lambda x, t: tritonloss.dice_loss(x, t, weight=torch.ones(3, dtype=torch.long)), TypeError, "weight"),
    (lambda x, t: tritonloss.dice_loss(x, t, weight=torch.ones(1, 3)), ValueError, "weight"),
    (lambda x, t: tritonloss.tversky_loss(x, t, alpha=-0.1), ValueError, "alpha"),
    (lambda x, t: tritonloss.tversky_loss(x, t, beta="1"), TypeError, "beta"),
    (lambda x, t: tritonloss.focal_tversky_loss(x, t, gamma=0.0), ValueError, "gamma"),
    (lambda x, t: tritonloss.tversky_loss(x, t, jaccard=True), TypeError, "jaccard"),
])
def test_bad_arguments(call, exc, match):
    x, t = _xt()
    with pytest.raises(exc, match=match):
        call(x, t)


@pytest.mark.gpu
def test_device_mismatch_raises():
    x = torch.randn(2, 3, 4, 5, device="cuda")
    with pytest.raises(ValueError, match="target"):
        tritonloss.dice_loss(x, torch.zeros(2, 4, 5, dtype=torch.long))


@pytest.mark.gpu
def test_no_host_sync_on_cuda():
    x = torch.randn(2, 3, 40, 50, device="cuda", requires_grad=True)
    t = torch.randint(0, 3, (2, 40, 50), device="cuda")
    w = torch.tensor([0.5, 1.0, 2.0], device="cuda")
    tritonloss.dice_loss(x, t, weight=w).backward()  # compile and tune outside the check
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for name in NAMES:
            getattr(tritonloss, name)(x, t, weight=w, ignore_index=2).backward()
    finally:
        torch.cuda.set_sync_debug_mode(0)


# --- modules ------------------------------------------------------------------------------

MODULES = [(tnn.DiceLoss, "dice_loss"), (tnn.TverskyLoss, "tversky_loss"),
           (tnn.FocalTverskyLoss, "focal_tversky_loss")]


@pytest.mark.parametrize("cls,name", MODULES)
def test_modules(cls, name):
    x, t = _xt()
    w = torch.tensor([0.5, 1.0, 2.0], device=DEVICE)
    module = cls(weight=w, batch=True, reduction="none")
    assert "weight" in dict(module.named_buffers())
    assert torch.equal(module(x, t), getattr(tritonloss, name)(x, t, weight=w, batch=True, reduction="none"))
    assert torch.equal(cls()(x, t), getattr(tritonloss, name)(x, t))


def test_module_defaults_match_functions():
    for cls, name in MODULES:
        fn_params = inspect.signature(getattr(tritonloss, name)).parameters
        mod_params = inspect.signature(cls.__init__).parameters
        assert set(fn_params) - {"input", "target"} == set(mod_params) - {"self"}, cls.__name__
        for pname, p in mod_params.items():
            if pname != "self":
                assert fn_params[pname].default == p.default, (cls.__name__, pname)
                assert fn_params[pname].kind == p.kind, (cls.__name__, pname)


def test_module_docstring_states_anchor_and_differences():
    doc = tritonloss.overlap.__doc__
    for word in ("MONAI", "Differences", "ignore", "1 - smooth_nr / smooth_dr"):
        assert word in doc
    assert math.isclose(inspect.signature(tritonloss.focal_tversky_loss).parameters["gamma"].default, 4 / 3)
