"""Boxes family: values and gradients against torchvision.ops and the float64 eager
references, the degenerate-box policy case by case, pairwise box_iou, bad arguments."""

import math

import pytest
import torch
from helpers import DEVICE, assert_close, padded

import tritonloss
import tritonloss.nn as tnn
from tritonloss.reference import boxes as R

try:
    import torchvision.ops as tv
except ImportError:  # a dev extra: CI has it, a bare GPU machine may not
    tv = None
needs_torchvision = pytest.mark.skipif(tv is None, reason="torchvision is not installed")

REDUCTIONS = ["none", "mean", "sum"]
FORMATS = ["xyxy", "xywh", "cxcywh"]


def random_boxes(shape, low=1.0, high=30.0, seed=0):
    """Non-degenerate xyxy boxes [*shape, 4]: corners in [0, 100], sides in [low, high], all
    multiples of 1/64 so that every format conversion is exact in fp32."""
    gen = torch.Generator().manual_seed(seed)
    xy = torch.rand((*shape, 2), generator=gen, dtype=torch.float64) * 100
    wh = torch.rand((*shape, 2), generator=gen, dtype=torch.float64) * (high - low) + low
    return (torch.cat([xy, xy + wh], -1) * 64).round() / 64


def to_format(xyxy, box_format):
    x1, y1, x2, y2 = xyxy.unbind(-1)
    if box_format == "xyxy":
        return xyxy
    if box_format == "xywh":
        return torch.stack([x1, y1, x2 - x1, y2 - y1], -1)
    return torch.stack([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1], -1)


def run(name, b1, b2, reduction="none", dtype=torch.float32, ref=None, grad_seed=1, floor=0.0, **opts):
    """The kernels on `dtype` copies of b1, b2 (NaN-padded views) vs `ref` (default: the
    float64 eager reference) on the same values: loss and both gradients, random grad_output.
    The absolute tolerance scales with each tensor's largest reference magnitude, at least
    `floor`. Returns the kernel's (loss, grad1, grad2)."""
    ref = ref or getattr(R, name)
    xs = [padded(b.to(DEVICE, dtype)) for b in (b1, b2)]
    out = getattr(tritonloss, name)(*xs, reduction=reduction, **opts)
    assert out.dtype == dtype
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(grad_seed)).to(DEVICE, dtype)
    grads = torch.autograd.grad(out, xs, g)
    rs = [x.detach().cpu().double().requires_grad_() for x in xs]
    expect = ref(*rs, reduction=reduction, **opts)
    ref_grads = torch.autograd.grad(expect, rs, g.cpu().double())
    scale = None
    if out.dim() == 0:  # reduced: the error budget of the sum of |loss|
        elem = ref(*[r.detach() for r in rs], reduction="none", **opts).abs()
        scale = float(elem.sum() / (max(elem.numel(), 1) if reduction == "mean" else 1))
    else:
        scale = float(expect.detach().abs().max()) if expect.numel() else 0.0
    assert_close(out, expect, dtype, scale=max(scale, floor), what=f"{name} value")
    for i, (got, want) in enumerate(zip(grads, ref_grads)):
        assert got.dtype == dtype and got.shape == xs[i].shape
        scale = float(want.abs().max()) if want.numel() else 0.0
        assert_close(got, want, dtype, scale=max(scale, floor), what=f"{name} grad {i + 1}")
    return out, *grads


# --- the anchor: torchvision.ops --------------------------------------------------------

TORCHVISION = {  # our name -> torchvision.ops name
    "giou_loss": "generalized_box_iou_loss",
    "diou_loss": "distance_box_iou_loss",
    "ciou_loss": "complete_box_iou_loss",
}


@needs_torchvision
@pytest.mark.parametrize("name", list(TORCHVISION))
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_torchvision_anchor(name, reduction):
    """Random non-degenerate xyxy boxes, 1203 pairs (three programs): values and gradients
    of both inputs equal torchvision's in float64."""
    b1, b2 = random_boxes((3, 401), seed=1), random_boxes((3, 401), seed=2)
    tv_fn = getattr(tv, TORCHVISION[name])
    run(name, b1, b2, reduction, ref=lambda a, b, reduction: tv_fn(a, b, reduction=reduction))


@needs_torchvision
@pytest.mark.parametrize("name", list(TORCHVISION))
def test_torchvision_anchor_overlapping_and_apart(name):
    """Pairs of heavily overlapping boxes (small offsets) and far-apart ones."""
    b1 = random_boxes((300,), seed=3)
    b2 = b1 + (torch.rand(300, 4, generator=torch.Generator().manual_seed(4), dtype=torch.float64) - 0.5) * 0.8
    b2[::2] += 200.0
    tv_fn = getattr(tv, TORCHVISION[name])
    run(name, b1, b2, "none", ref=lambda a, b, reduction: tv_fn(a, b, reduction=reduction))


# --- every loss and option against the float64 references -------------------------------

CASES = [
    ("iou_loss", {"mode": "linear"}),
    ("iou_loss", {"mode": "square"}),
    ("iou_loss", {"mode": "log"}),
    ("giou_loss", {}),
    ("diou_loss", {}),
    ("ciou_loss", {}),
    ("eiou_loss", {}),
    ("focal_eiou_loss", {}),
    ("focal_eiou_loss", {"gamma": 1.5}),
    ("focal_eiou_loss", {"gamma": 0.0}),
    ("cdiou_loss", {}),
    ("cdiou_loss", {"base": "iou", "lam": 0.5}),
    ("cdiou_loss", {"base": "diou", "lam": 0.3}),
    ("cdiou_loss", {"base": "ciou", "lam": 0.2}),
    ("cdiou_loss", {"base": "eiou", "lam": 1.0}),
    ("giou_loss", {"eps": 1e-3}),
    ("ciou_loss", {"eps": 0.5}),
]
NAMES = sorted({n for n, _ in CASES})


def _overlapping_pairs(n, seed):
    """Half the pairs overlap (so every term of every loss is exercised), half need not."""
    b1 = random_boxes((n,), seed=seed)
    b2 = random_boxes((n,), seed=seed + 1)
    b2[: n // 2, :2] = b1[: n // 2, :2] + (b2[: n // 2, :2] - b1[: n // 2, :2]) * 0.1
    b2[: n // 2, 2:] = torch.maximum(b2[: n // 2, 2:], b2[: n // 2, :2] + 1)
    return b1, b2


@pytest.mark.parametrize("name,opts", CASES, ids=[f"{n}-{i}" for i, (n, _) in enumerate(CASES)])
def test_every_option(name, opts):
    b1, b2 = _overlapping_pairs(517, seed=5)
    run(name, b1, b2, "none", **opts)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_reductions(name, reduction):
    b1, b2 = _overlapping_pairs(700, seed=6)
    run(name, b1.view(7, 100, 4), b2.view(7, 100, 4), reduction)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("box_format", ["xywh", "cxcywh"])
def test_formats_give_the_same_losses(name, box_format):
    """The same boxes in xywh and cxcywh give the xyxy losses; gradients match the reference
    in that format."""
    b1, b2 = _overlapping_pairs(211, seed=7)
    xyxy = getattr(tritonloss, name)(b1.float().to(DEVICE), b2.float().to(DEVICE))
    out, _, _ = run(name, to_format(b1, box_format), to_format(b2, box_format), box_format=box_format)
    assert_close(out, xyxy.double(), torch.float32, what=f"{name} {box_format} vs xyxy")


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_dtypes(name, dtype):
    b1, b2 = _overlapping_pairs(300, seed=8)
    b1, b2 = b1.to(dtype).double(), b2.to(dtype).double()  # representable in dtype
    for reduction in ["none", "mean"]:
        run(name, b1, b2, reduction, dtype=dtype)


def test_mixed_dtypes():
    """fp16 boxes1, fp32 boxes2: the loss in fp16, each gradient in its tensor's dtype."""
    b1, b2 = _overlapping_pairs(64, seed=9)
    x = padded(b1.half().to(DEVICE))
    y = padded(b2.float().to(DEVICE))
    out = tritonloss.ciou_loss(x, y, reduction="sum")
    gx, gy = torch.autograd.grad(out, [x, y])
    assert (out.dtype, gx.dtype, gy.dtype) == (torch.float16, torch.float16, torch.float32)
    ref = R.ciou_loss(x.detach().double().cpu(), y.detach().double().cpu(), reduction="sum")
    assert_close(out, ref, torch.float16)


# --- hand-computed values: the references against the papers' formulas -------------------

def test_references_by_hand():
    """boxes1 [0, 0, 2, 2], boxes2 [1, 1, 3, 4]: I = 1, U = 9, enclosing 3 x 4 (c^2 = 25),
    centres (1, 1) and (2, 2.5) (rho^2 = 3.25), vertex distances sqrt2, sqrt2, sqrt5, sqrt5."""
    b1 = torch.tensor([[0.0, 0.0, 2.0, 2.0]], dtype=torch.float64)
    b2 = torch.tensor([[1.0, 1.0, 3.0, 4.0]], dtype=torch.float64)
    iou = 1 / 9
    diou = 1 - iou + 3.25 / 25
    eiou = diou + 0 / 9 + 1 / 16
    vertex = (2 * math.sqrt(2) + 2 * math.sqrt(5)) / (4 * 5)
    giou = 1 - iou + (12 - 9) / 12
    expect = {
        ("iou_loss", "linear"): 1 - iou,
        ("iou_loss", "square"): 1 - iou**2,
        ("iou_loss", "log"): -math.log(iou),
        ("giou_loss", None): giou,
        ("diou_loss", None): diou,
        ("eiou_loss", None): eiou,
        ("focal_eiou_loss", None): math.sqrt(iou) * eiou,
        ("cdiou_loss", None): giou + 0.001 * vertex,
    }
    for (name, mode), value in expect.items():
        opts = {"mode": mode} if mode else {}
        assert float(getattr(R, name)(b1, b2, **opts)[0]) == pytest.approx(value, rel=1e-6), (name, mode)
        got = getattr(tritonloss, name)(b1.float().to(DEVICE), b2.float().to(DEVICE), **opts)
        assert float(got[0]) == pytest.approx(value, rel=1e-5), (name, mode, "kernel")
    # CDIoU with a large lam and base eiou: the vertex term exactly as in the paper
    got = R.cdiou_loss(b1, b2, base="eiou", lam=2.0)
    assert float(got[0]) == pytest.approx(eiou + 2.0 * vertex, rel=1e-6)
    # CIoU: v = 4/pi^2 (atan(2/3) - atan(1))^2, alpha = v / (1 - IoU + v)
    v = 4 / math.pi**2 * (math.atan(2 / 3) - math.atan(1.0)) ** 2
    assert float(R.ciou_loss(b1, b2)[0]) == pytest.approx(diou + v / (1 - iou + v) * v, rel=1e-6)


def test_focal_eiou_weight_is_detached():
    """d(IoU^gamma EIoU) = IoU^gamma dEIoU: the gradient is the EIoU gradient scaled."""
    b1, b2 = _overlapping_pairs(40, seed=10)
    x = b1.float().to(DEVICE).requires_grad_()
    y = b2.float().to(DEVICE)
    (g_focal,) = torch.autograd.grad(tritonloss.focal_eiou_loss(x, y, gamma=0.7).sum(), [x])
    (g_eiou,) = torch.autograd.grad(tritonloss.eiou_loss(x, y).sum(), [x])
    w = R.iou_loss(b1, b2).neg().add(1).pow(0.7)  # IoU^gamma
    assert_close(g_focal, (g_eiou.double().cpu() * w[:, None]), torch.float32)


# --- the degenerate-box policy, case by case ----------------------------------------------

DEGENERATE = {
    "identical": ([10, 20, 40, 60], [10, 20, 40, 60]),
    "zero-area box against itself": ([5, 5, 5, 5], [5, 5, 5, 5]),
    "zero width": ([10, 10, 10, 30], [5, 5, 25, 35]),
    "zero height": ([10, 10, 30, 10], [5, 5, 25, 35]),
    "both zero height, same y": ([0, 3, 10, 3], [4, 3, 20, 3]),
    "both zero height, apart": ([0, 3, 10, 3], [4, 7, 20, 7]),
    "zero width against zero height": ([5, 0, 5, 10], [0, 5, 10, 5]),
    "point against a box": ([5, 5, 5, 5], [0, 0, 10, 20]),
    "inverted x": ([30, 10, 10, 40], [5, 5, 25, 35]),
    "inverted x and y": ([30, 40, 10, 10], [5, 5, 25, 35]),
    "both inverted": ([30, 40, 10, 10], [25, 35, 5, 5]),
    "non-overlapping": ([0, 0, 10, 10], [20, 30, 25, 40]),
    "touching": ([0, 0, 10, 10], [10, 0, 20, 10]),
}
ALL_LOSSES = [("iou_loss", {"mode": m}) for m in ("linear", "square", "log")] + [
    (n, {}) for n in ("giou_loss", "diou_loss", "ciou_loss", "eiou_loss", "focal_eiou_loss")] + [
    ("cdiou_loss", {"base": b, "lam": 0.5}) for b in ("iou", "giou", "diou", "ciou", "eiou")]


def _degenerate_pairs():
    b1 = torch.tensor([p for p, _ in DEGENERATE.values()], dtype=torch.float64)
    b2 = torch.tensor([g for _, g in DEGENERATE.values()], dtype=torch.float64)
    return b1, b2


@pytest.mark.parametrize("name,opts", ALL_LOSSES, ids=[f"{n}-{i}" for i, (n, _) in enumerate(ALL_LOSSES)])
@pytest.mark.parametrize("box_format", FORMATS)
def test_degenerate_boxes_finite(name, opts, box_format):
    """Every case of DEGENERATE, both orders, in every format: loss and gradients finite and
    equal to the reference (which follows the catalog's policy). Errors are measured against
    scale 1: identical boxes have exact gradients of order eps / area, which fp32 gives as 0."""
    b1, b2 = _degenerate_pairs()
    p, g = torch.cat([b1, b2]), torch.cat([b2, b1])
    out, d1, d2 = run(name, to_format(p, box_format), to_format(g, box_format), box_format=box_format, floor=1.0,
                      **opts)
    for t in (out, d1, d2):
        assert torch.isfinite(t).all(), (name, box_format, [k for k, f in zip(list(DEGENERATE) * 2, out) if
                                                            not torch.isfinite(f)])


@pytest.mark.parametrize("index", range(len(ALL_LOSSES)), ids=[n for n, _ in ALL_LOSSES])
def test_small_integer_boxes(index):
    """Coordinates drawn from {0, ..., 5}: inverted, zero-width, point, identical and touching
    boxes and ties between the boxes' edges everywhere (the formats in turn). Values and
    gradients equal the reference's (ties split as torch.minimum / maximum split them)."""
    name, opts = ALL_LOSSES[index]
    gen = torch.Generator().manual_seed(40 + index)
    b1, b2 = (torch.randint(0, 6, (300, 4), generator=gen).double() for _ in range(2))
    run(name, b1, b2, box_format=FORMATS[index % 3], floor=1.0, **opts)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_degenerate_boxes_finite_in_half(dtype):
    """The same cases stored in fp16 / bf16 (cxcywh, where the gradients of w and h and of
    the centre are separated): everything finite, except the one case documented in
    ciou_loss: a zero-area box that is not inverted against a box of another aspect ratio
    has a width gradient of order 1/eps, beyond fp16's range."""
    b1, b2 = _degenerate_pairs()
    p, g = (to_format(t, "cxcywh").to(DEVICE, dtype).requires_grad_() for t in (torch.cat([b1, b2]),
                                                                                 torch.cat([b2, b1])))
    names = list(DEGENERATE) * 2
    for name, opts in ALL_LOSSES:
        out = getattr(tritonloss, name)(p, g, box_format="cxcywh", **opts)
        gp, gg = torch.autograd.grad(out.sum(), [p, g])
        finite = torch.isfinite(out) & torch.isfinite(gp).all(-1) & torch.isfinite(gg).all(-1)
        bad = {names[i] for i in range(len(names)) if not finite[i]}
        ciou = name == "ciou_loss" or opts.get("base") == "ciou"
        assert bad == ({"point against a box"} if ciou and dtype == torch.float16 else set()), (name, opts, bad)


def test_degenerate_values():
    """Identical boxes: loss 0 (1 for the zero-area box, whose IoU is 0); an inverted box has
    zero area, so IoU 0, and never earns a GIoU bonus: the penalty is >= 0."""
    b1, b2 = _degenerate_pairs()
    x, y = b1.float().to(DEVICE), b2.float().to(DEVICE)
    names = list(DEGENERATE)
    iou = 1 - tritonloss.iou_loss(x, y)
    giou = tritonloss.giou_loss(x, y)
    assert iou[names.index("identical")] == pytest.approx(1.0, abs=1e-6)
    for k in ("zero-area box against itself", "inverted x", "inverted x and y", "both inverted"):
        assert iou[names.index(k)] == 0
    assert (giou >= 1 - iou - 1e-6).all()  # penalty (C - U) / (C + eps) >= 0 everywhere
    for name in ("giou_loss", "diou_loss", "ciou_loss", "eiou_loss"):
        out = getattr(tritonloss, name)(x, y)
        assert out[names.index("identical")] == pytest.approx(0.0, abs=1e-6), name
        assert out[names.index("zero-area box against itself")] == 1.0, name


def test_inverted_box_equals_its_collapsed_form():
    """An inverted axis collapses to its midpoint: [30, 10, 10, 40] is the box [20, 10, 20, 40]."""
    g = torch.tensor([[5.0, 5.0, 25.0, 35.0]], device=DEVICE)
    inverted = torch.tensor([[30.0, 10.0, 10.0, 40.0]], device=DEVICE)
    collapsed = torch.tensor([[20.0, 10.0, 20.0, 40.0]], device=DEVICE)
    for name, opts in ALL_LOSSES:
        fn = getattr(tritonloss, name)
        assert torch.equal(fn(inverted, g, **opts), fn(collapsed, g, **opts)), name


@pytest.mark.parametrize("name,opts", ALL_LOSSES, ids=[f"{n}-{i}" for i, (n, _) in enumerate(ALL_LOSSES)])
def test_large_coordinates_fp16(name, opts):
    """Coordinates near 1e4 in fp16 (spacing 8): the math runs in fp32, nothing overflows."""
    b1, b2 = _overlapping_pairs(64, seed=11)
    b1, b2 = ((b * 8 + 1e4).half().double() for b in (b1, b2))
    out, d1, d2 = run(name, b1, b2, "none", dtype=torch.float16, **opts)
    assert all(torch.isfinite(t).all() for t in (out, d1, d2))


def test_nan_propagates_to_its_pair_only():
    b1, b2 = _overlapping_pairs(5, seed=12)
    b1[2, 1] = float("nan")
    x = padded(b1.float().to(DEVICE))
    out = tritonloss.ciou_loss(x, b2.float().to(DEVICE))
    assert torch.isnan(out[2]) and torch.isfinite(out[[0, 1, 3, 4]]).all()
    (gx,) = torch.autograd.grad(out[[0, 1, 3, 4]].sum(), [x])
    assert torch.isfinite(gx[[0, 1, 3, 4]]).all()


# --- shapes, broadcasting, empty inputs ----------------------------------------------------

def test_broadcast_leading_dims():
    """boxes1 [5, 1, 4] against boxes2 [1, 7, 4]: loss [5, 7]; each gradient is summed over
    the broadcast dimension."""
    b1 = random_boxes((5, 1), seed=13)
    b2 = random_boxes((1, 7), seed=14)
    out, d1, d2 = run("diou_loss", b1, b2, "none")
    assert out.shape == (5, 7) and d1.shape == (5, 1, 4) and d2.shape == (1, 7, 4)
    out, _, _ = run("giou_loss", random_boxes((9,), seed=15), random_boxes((), seed=16), "mean")
    assert out.dim() == 0


def test_single_box_pair():
    out, _, _ = run("eiou_loss", random_boxes((), seed=17), random_boxes((), seed=18), "none")
    assert out.shape == ()


@pytest.mark.parametrize("name", NAMES)
def test_empty(name):
    """"none" gives an empty loss, "sum" 0 and "mean" 0 (torchvision), attached to the graph."""
    x = torch.zeros(0, 4, device=DEVICE, requires_grad=True)
    y = torch.zeros(2, 0, 4, device=DEVICE, requires_grad=True)
    fn = getattr(tritonloss, name)
    assert fn(x, y).shape == (2, 0)
    for reduction in ("sum", "mean"):
        out = fn(x, y, reduction=reduction)
        assert out.dim() == 0 and out.item() == 0.0 and out.requires_grad
        gx, gy = torch.autograd.grad(out, [x, y])
        assert gx.shape == x.shape and gy.shape == y.shape
        ref = R.giou_loss(x.double(), y.double(), reduction=reduction)
        assert torch.equal(ref, torch.zeros((), dtype=torch.float64)) and ref.requires_grad


# --- autograd contract -------------------------------------------------------------------

def test_saves_only_the_two_box_tensors():
    """The backward recomputes from the boxes: the graph holds them and the 2-float stats."""
    x = random_boxes((100,), seed=19).float().to(DEVICE).requires_grad_()
    y = random_boxes((100,), seed=20).float().to(DEVICE)
    out = tritonloss.ciou_loss(x, y, reduction="mean")
    saved = out.grad_fn.saved_tensors
    assert [tuple(t.shape) for t in saved] == [(100, 4), (100, 4), (2,)]


def test_deterministic():
    b1, b2 = _overlapping_pairs(1500, seed=21)
    results = []
    for _ in range(2):
        x = b1.float().to(DEVICE).requires_grad_()
        out = tritonloss.cdiou_loss(x, b2.float().to(DEVICE), reduction="mean")
        results.append((out, *torch.autograd.grad(out, [x])))
    assert all(torch.equal(a, b) for a, b in zip(*results))


def test_gradient_only_for_what_is_needed():
    b1, b2 = _overlapping_pairs(10, seed=22)
    x = b1.float().to(DEVICE).requires_grad_()
    y = b2.float().to(DEVICE)
    (gx,) = torch.autograd.grad(tritonloss.giou_loss(x, y, reduction="sum"), [x])
    assert gx.shape == (10, 4)


def test_double_backward_raises_clearly():
    x = random_boxes((4,), seed=23).float().to(DEVICE).requires_grad_()
    y = random_boxes((4,), seed=24).float().to(DEVICE)
    (gx,) = torch.autograd.grad(tritonloss.giou_loss(x, y, reduction="sum"), [x], create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable|does not require grad"):
        torch.autograd.grad(gx.sum(), [x])


def test_float64_takes_the_reference_path():
    b1, b2 = _overlapping_pairs(20, seed=25)
    x = b1.requires_grad_()
    assert torch.autograd.gradcheck(lambda a: tritonloss.eiou_loss(a, b2), (x,))
    assert torch.equal(tritonloss.cdiou_loss(b1, b2), R.cdiou_loss(b1, b2))


# --- pairwise box_iou ----------------------------------------------------------------------

TV_PAIRWISE = {"iou": "box_iou", "giou": "generalized_box_iou", "diou": "distance_box_iou", "ciou": "complete_box_iou"}


@needs_torchvision
@pytest.mark.parametrize("kind", list(TV_PAIRWISE))
@pytest.mark.parametrize("box_format", FORMATS)
def test_box_iou_matches_torchvision(kind, box_format):
    """A 100 x 90 matrix (2 x 2 tiles, ragged edges) from NaN-padded inputs: equal to
    torchvision on the xyxy boxes, and to the reference, which equals torchvision, in every
    format."""
    b1, b2 = random_boxes((100,), seed=26), random_boxes((90,), seed=27)
    b2[:40] = b1[:40] + 1.5  # some overlap
    x, y = (padded(to_format(b, box_format).float().to(DEVICE), False) for b in (b1, b2))
    got = tritonloss.box_iou(x, y, kind, box_format)
    expect = getattr(tv, TV_PAIRWISE[kind])(b1, b2)
    assert got.shape == (100, 90) and got.dtype == torch.float32 and not got.requires_grad
    assert_close(got, expect, torch.float32, what=f"box_iou {kind} {box_format}")
    reference = R.box_iou(to_format(b1, box_format), to_format(b2, box_format), kind, box_format)
    assert_close(reference, expect, torch.float32, what="reference")
    assert torch.equal(tritonloss.box_iou(b1, b2, kind), R.box_iou(b1, b2, kind))  # float64: the reference


@needs_torchvision
def test_box_iou_half_and_empty():
    b1, b2 = random_boxes((70,), seed=28).half(), random_boxes((90,), seed=29).half()
    got = tritonloss.box_iou(b1.to(DEVICE), b2.to(DEVICE), "ciou")
    assert got.dtype == torch.float16
    assert_close(got, tv.complete_box_iou(b1.double(), b2.double()), torch.float16)
    assert tritonloss.box_iou(torch.zeros(0, 4, device=DEVICE), b2.float().to(DEVICE)).shape == (0, 90)


@needs_torchvision
def test_box_iou_zero_area_nan_as_torchvision():
    b = torch.tensor([[1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 2.0, 2.0]])
    got = tritonloss.box_iou(b.to(DEVICE), b.to(DEVICE))
    expect = tv.box_iou(b.double(), b.double())
    assert torch.equal(torch.isnan(got.cpu()), torch.isnan(expect))


@pytest.mark.gpu
@needs_torchvision
@pytest.mark.parametrize("kind", list(TV_PAIRWISE))
def test_box_iou_large_and_no_temporaries(kind):
    """3000 x 2500 equals torchvision; the call allocates only its [N, M] result."""
    b1, b2 = random_boxes((3000,), seed=30), random_boxes((2500,), seed=31)
    x, y = b1.float().cuda(), b2.float().cuda()
    tritonloss.box_iou(x, y, kind)  # compile / autotune
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    got = tritonloss.box_iou(x, y, kind)
    torch.cuda.synchronize()
    assert torch.cuda.max_memory_allocated() - base <= 3000 * 2500 * 4 + 2**20
    assert_close(got, getattr(tv, TV_PAIRWISE[kind])(b1.cuda(), b2.cuda()), torch.float32, what=kind)


@pytest.mark.gpu
def test_no_host_sync():
    x = random_boxes((5000,), seed=32).float().cuda().requires_grad_()
    y = random_boxes((5000,), seed=33).float().cuda()
    for name, opts in ALL_LOSSES:
        getattr(tritonloss, name)(x, y, reduction="mean", **opts).backward()  # compile / autotune
    tritonloss.box_iou(x.detach(), y, "ciou")
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for name, opts in ALL_LOSSES:
            for reduction in REDUCTIONS:
                out = getattr(tritonloss, name)(x, y, reduction=reduction, **opts)
                torch.autograd.grad(out, [x], torch.ones_like(out))
        tritonloss.box_iou(x.detach(), y, "ciou")
    finally:
        torch.cuda.set_sync_debug_mode(0)


# --- bad arguments -----------------------------------------------------------------------

def _b(*shape, dtype=torch.float32):
    return torch.rand(*shape, device=DEVICE).to(dtype)


@pytest.mark.parametrize("call,exc,match", [
    (lambda: tritonloss.giou_loss(_b(5, 3), _b(5, 4)), ValueError, r"boxes1: expected boxes of shape \[\.\.\., 4\]"),
    (lambda: tritonloss.giou_loss(_b(5, 4), _b(5, 5)), ValueError, "boxes2.*got \\(5, 5\\)"),
    (lambda: tritonloss.giou_loss(torch.tensor(1.0), _b(4)), ValueError, "boxes1"),
    (lambda: tritonloss.giou_loss(_b(5, 4), _b(3, 4)), ValueError, "broadcast"),
    (lambda: tritonloss.giou_loss(_b(5, 4), _b(5, 4), box_format="xyxyxy"), ValueError, "box_format"),
    (lambda: tritonloss.giou_loss(_b(5, 4), _b(5, 4), "mean"), ValueError, "box_format"),
    (lambda: tritonloss.iou_loss(_b(5, 4), _b(5, 4), mode="cube"), ValueError, "mode"),
    (lambda: tritonloss.cdiou_loss(_b(5, 4), _b(5, 4), base="focal_eiou"), ValueError, "base"),
    (lambda: tritonloss.cdiou_loss(_b(5, 4), _b(5, 4), lam=-1.0), ValueError, "lam"),
    (lambda: tritonloss.focal_eiou_loss(_b(5, 4), _b(5, 4), gamma=-0.5), ValueError, "gamma"),
    (lambda: tritonloss.diou_loss(_b(5, 4), _b(5, 4), eps=0.0), ValueError, "eps"),
    (lambda: tritonloss.diou_loss(_b(5, 4), _b(5, 4), eps=float("nan")), ValueError, "eps"),
    (lambda: tritonloss.diou_loss(_b(5, 4), _b(5, 4), reduction="avg"), ValueError, "reduction"),
    (lambda: tritonloss.ciou_loss(_b(5, 4).long(), _b(5, 4)), TypeError, "boxes1"),
    (lambda: tritonloss.ciou_loss(_b(5, 4), [[0, 0, 1, 1]]), TypeError, "boxes2"),
    (lambda: tritonloss.box_iou(_b(5, 4), _b(3, 4), kind="fiou"), ValueError, "kind"),
    (lambda: tritonloss.box_iou(_b(2, 5, 4), _b(3, 4)), ValueError, "boxes1: expected a 2-D"),
    (lambda: tritonloss.box_iou(_b(5, 4), _b(3, 2)), ValueError, "boxes2"),
    (lambda: tritonloss.box_iou(_b(5, 4), _b(3, 4), box_format="xy"), ValueError, "box_format"),
])
def test_bad_arguments(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


@pytest.mark.gpu
def test_device_mismatch_raises():
    with pytest.raises(ValueError, match="boxes2"):
        tritonloss.giou_loss(_b(5, 4).cuda(), _b(5, 4).cpu())


# --- modules -----------------------------------------------------------------------------

MODULES = [
    (tnn.IoULoss, "iou_loss", {"mode": "square"}),
    (tnn.GIoULoss, "giou_loss", {}),
    (tnn.DIoULoss, "diou_loss", {"box_format": "cxcywh"}),
    (tnn.CIoULoss, "ciou_loss", {"eps": 1e-5}),
    (tnn.EIoULoss, "eiou_loss", {}),
    (tnn.FocalEIoULoss, "focal_eiou_loss", {"gamma": 1.0}),
    (tnn.CDIoULoss, "cdiou_loss", {"base": "ciou", "lam": 0.1}),
]


@pytest.mark.parametrize("cls,name,opts", MODULES)
def test_modules(cls, name, opts):
    b1, b2 = (b.float().to(DEVICE) for b in _overlapping_pairs(12, seed=34))
    assert cls().reduction == "none"
    module = cls(**opts, reduction="sum")
    assert torch.equal(module(b1, b2), getattr(tritonloss, name)(b1, b2, **opts, reduction="sum"))
