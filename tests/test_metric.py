"""Metric-learning family: values and gradients against float64 eager references
(torch.nn.functional where torch has the loss, pytorch-metric-learning for triplet mining,
tritonloss.reference.metric from the papers otherwise)."""

import inspect

import pytest
import torch
import torch.nn.functional as TF
from helpers import DEVICE, assert_close, padded

import tritonloss
import tritonloss.nn as tnn
from tritonloss.reference import metric as R

REDUCTIONS = ["none", "mean", "sum"]


def _grad_out(out, seed=1):
    return torch.randn(out.shape, generator=torch.Generator().manual_seed(seed)).to(DEVICE, out.dtype)


def _compare(fn, ref_fn, tensors, dtype=torch.float32, diff=None, what=""):
    """fn on NaN-padded `dtype` copies vs ref_fn on float64 copies of the same values:
    the loss and the gradient of every tensor listed in `diff` (default: all floating)."""
    diff = [i for i, t in enumerate(tensors) if t.is_floating_point()] if diff is None else diff
    xs = [padded(t.to(DEVICE, dtype), requires_grad=i in diff) if t.is_floating_point() else t.to(DEVICE)
          for i, t in enumerate(tensors)]
    out = fn(*xs)
    assert out.dtype == dtype, what
    g = _grad_out(out)
    grads = torch.autograd.grad(out, [xs[i] for i in diff], g)
    rs = [xs[i].detach().double().cpu().requires_grad_(i in diff) if t.is_floating_point() else t.cpu()
          for i, t in enumerate(tensors)]
    ref = ref_fn(*rs)
    ref_grads = torch.autograd.grad(ref, [rs[i] for i in diff], g.double().cpu())
    assert_close(out, ref, dtype, what=f"{what} value")
    for i, a, b in zip(diff, grads, ref_grads):
        assert a.dtype == xs[i].dtype and a.shape == xs[i].shape
        assert_close(a, b, dtype, what=f"{what} grad {i}")
    return out, grads


def _pk_batch(sizes, D, seed=0):
    """Embeddings and labels of identities with `sizes` samples each, shuffled."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.cat([torch.full((k,), i) for i, k in enumerate(sizes)])
    perm = torch.randperm(len(labels), generator=gen)
    x = torch.randn(len(labels), D, generator=gen) + 0.8 * torch.randn(len(sizes), D, generator=gen)[labels]
    return x[perm], labels[perm]


# --- triplet_loss ------------------------------------------------------------------------------

TRIPLET_OPTIONS = [
    # (mining, distance, normalize, soft_margin, reduction)
    ("batch_hard", "euclidean", False, False, "mean"),
    ("batch_hard", "euclidean", True, False, "none"),
    ("batch_hard", "squared", False, False, "sum"),
    ("batch_hard", "squared", True, True, "mean"),
    ("batch_hard", "cosine", False, False, "none"),
    ("batch_hard", "euclidean", False, True, "sum"),
    ("batch_all", "euclidean", False, False, "mean"),
    ("batch_all", "euclidean", True, True, "none"),
    ("batch_all", "squared", False, False, "sum"),
    ("batch_all", "squared", True, False, "none"),
    ("batch_all", "cosine", False, True, "mean"),
    ("batch_all", "cosine", True, False, "sum"),
]


@pytest.mark.parametrize("mining,distance,normalize,soft,reduction", TRIPLET_OPTIONS)
def test_triplet_every_option(mining, distance, normalize, soft, reduction):
    """Variable K per identity (1 to 6: a singleton has no positive), 21 x 19."""
    x, labels = _pk_batch([3, 1, 6, 2, 5, 4], 19)
    opts = dict(margin=0.4, mining=mining, distance=distance, normalize=normalize, soft_margin=soft,
                reduction=reduction)
    _compare(lambda e, y: tritonloss.triplet_loss(e, y, **opts),
             lambda e, y: R.triplet_loss(e, y, **opts), [x, labels], what=f"{mining} {distance}")


@pytest.mark.parametrize("mining", ["batch_hard", "batch_all"])
def test_triplet_several_tiles(mining):
    """B = 70 > the 32-row tiles and D = 70 > the 32-column blocks: every loop runs more than once."""
    x, labels = _pk_batch([5] * 14, 70, seed=1)
    opts = dict(mining=mining, margin=1.0)
    _compare(lambda e, y: tritonloss.triplet_loss(e, y, **opts),
             lambda e, y: R.triplet_loss(e, y, **opts), [x, labels], what=mining)


@pytest.mark.parametrize("mining", ["batch_hard", "batch_all"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_triplet_half(mining, dtype):
    x, labels = _pk_batch([4, 4, 4, 4, 3], 24, seed=2)
    x = x.to(dtype).float()  # representable
    opts = dict(mining=mining, margin=0.5, normalize=True)
    _compare(lambda e, y: tritonloss.triplet_loss(e, y, **opts),
             lambda e, y: R.triplet_loss(e, y, **opts), [x, labels], dtype=dtype, what=f"{mining} {dtype}")


@pytest.mark.parametrize("normalize", [False, True])
def test_triplet_all_matches_pytorch_metric_learning(normalize):
    """pytorch-metric-learning TripletMarginLoss, all triplets, AvgNonZeroReducer."""
    pytest.importorskip("pytorch_metric_learning")
    from pytorch_metric_learning.distances import LpDistance
    from pytorch_metric_learning.losses import TripletMarginLoss

    x, labels = _pk_batch([4, 3, 5, 2, 6], 16, seed=3)
    anchor = TripletMarginLoss(margin=0.3, distance=LpDistance(normalize_embeddings=normalize))
    _compare(lambda e, y: tritonloss.triplet_loss(e, y, margin=0.3, mining="batch_all", normalize=normalize),
             lambda e, y: anchor(e, y), [x, labels], what="vs pml")


def test_triplet_hard_matches_batch_hard_miner():
    """pytorch-metric-learning BatchHardMiner picks the same triplets; the mean of their
    hinge losses equals batch_hard's value and gradient."""
    pytest.importorskip("pytorch_metric_learning")
    from pytorch_metric_learning.distances import LpDistance
    from pytorch_metric_learning.miners import BatchHardMiner

    x, labels = _pk_batch([4, 4, 5, 3, 4], 16, seed=4)
    miner = BatchHardMiner(distance=LpDistance(normalize_embeddings=False))

    def mined(e, y):
        a, p, n = miner(e, y)
        d = R.pairwise_distance(e)
        return TF.relu(d[a, p] - d[a, n] + 0.3).mean()

    xd = x.double()
    a, p, n = miner(xd, labels)
    _, _, p_idx, n_idx, valid = R.batch_hard_indices(R.pairwise_distance(xd), labels)
    assert torch.equal(a, valid.nonzero()[:, 0]) and torch.equal(p, p_idx[a]) and torch.equal(n, n_idx[a])
    _compare(lambda e, y: tritonloss.triplet_loss(e, y, margin=0.3), mined, [x, labels], what="vs miner")


def test_triplet_ties_go_to_the_first_index():
    """Duplicated positives and negatives: both copies tie; the first one gets the gradient."""
    base = torch.randn(4, 8, generator=torch.Generator().manual_seed(5))
    x = torch.stack([base[0], base[1], base[1], base[2], base[2], base[3]])
    labels = torch.tensor([0, 0, 0, 1, 1, 2])
    xs = padded(x.to(DEVICE))
    out = tritonloss.triplet_loss(xs, labels.to(DEVICE), margin=5.0, reduction="none")
    (g,) = torch.autograd.grad(out[0], [xs])
    _, _, p_idx, n_idx, _ = R.batch_hard_indices(R.pairwise_distance(x.double()), labels)
    assert int(p_idx[0]) in (1, 2) and int(n_idx[0]) in (3, 4, 5)
    expect = torch.zeros(6, dtype=torch.bool)
    expect[[0, int(p_idx[0]), int(n_idx[0])]] = True
    assert torch.equal(g.abs().sum(1).cpu() > 0, expect)


@pytest.mark.parametrize("mining", ["batch_hard", "batch_all"])
def test_triplet_duplicates_and_zero_distance(mining):
    """Identical embeddings (distance 0) within and across identities: finite gradients
    that match the reference's (0 where the euclidean distance is 0)."""
    base = torch.randn(3, 12, generator=torch.Generator().manual_seed(6))
    x = torch.cat([base[[0, 0, 0]], base[[1, 1]], base[[2]], base[[0]]])
    labels = torch.tensor([0, 0, 0, 1, 1, 2, 3])
    opts = dict(mining=mining, margin=0.5)
    _, (gx,) = _compare(lambda e, y: tritonloss.triplet_loss(e, y, **opts),
                        lambda e, y: R.triplet_loss(e, y, **opts), [x, labels], what="duplicates")
    assert torch.isfinite(gx).all()


@pytest.mark.parametrize("mining", ["batch_hard", "batch_all"])
def test_triplet_nothing_to_average_gives_attached_zero(mining):
    x = padded(torch.randn(5, 6).to(DEVICE))
    for labels in (torch.arange(5), torch.zeros(5, dtype=torch.long)):  # no positive / no negative
        out = tritonloss.triplet_loss(x, labels.to(DEVICE), mining=mining)
        assert out.item() == 0.0 and out.requires_grad
        (g,) = torch.autograd.grad(out, [x])
        assert torch.equal(g, torch.zeros_like(g))
    far = torch.tensor([[0.0, 0.0], [0.1, 0.0], [9.0, 0.0], [9.1, 0.0]])  # every loss 0 (BA != 0 empty)
    out = tritonloss.triplet_loss(padded(far.to(DEVICE)), torch.tensor([0, 0, 1, 1], device=DEVICE),
                                  mining=mining, margin=0.1)
    assert out.item() == 0.0


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])  # kernels, eager reference
def test_triplet_empty_batch(dtype):
    x = torch.zeros(0, 4, device=DEVICE, dtype=dtype, requires_grad=True)
    y = torch.zeros(0, dtype=torch.long, device=DEVICE)
    for mining in ("batch_hard", "batch_all"):
        assert tritonloss.triplet_loss(x, y, reduction="none", mining=mining).shape == (0,)
        for reduction in ("mean", "sum"):
            out = tritonloss.triplet_loss(x, y, reduction=reduction, mining=mining)
            assert out.item() == 0.0
            (g,) = torch.autograd.grad(out, [x])
            assert g.shape == (0, 4)


def test_triplet_nan_propagates():
    x, labels = _pk_batch([3, 3, 3], 5, seed=7)
    x[4, 2] = float("nan")
    for mining in ("batch_hard", "batch_all"):
        out = tritonloss.triplet_loss(x.to(DEVICE), labels.to(DEVICE), mining=mining)
        assert torch.isnan(out), mining


def test_triplet_deterministic():
    x, labels = _pk_batch([4] * 5, 10, seed=8)
    x = x.to(DEVICE).requires_grad_()
    runs = []
    for _ in range(2):
        out = tritonloss.triplet_loss(x, labels.to(DEVICE), mining="batch_hard")
        runs.append((out, *torch.autograd.grad(out, [x])))
    assert all(torch.equal(a, b) for a, b in zip(*runs))


# --- center loss -------------------------------------------------------------------------------

@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_center_loss(reduction):
    """Labels hit some classes several times and others never; both tensors differentiated."""
    gen = torch.Generator().manual_seed(9)
    x, c = torch.randn(23, 150, generator=gen), torch.randn(11, 150, generator=gen)
    labels = torch.randint(0, 7, (23,), generator=gen)
    _compare(lambda f, y, cc: tritonloss.center_loss(f, y, cc, reduction),
             lambda f, y, cc: R.center_loss(f, y, cc, reduction), [x, labels, c], what="center")


def test_center_loss_half_and_features_only():
    gen = torch.Generator().manual_seed(10)
    x, c = torch.randn(9, 40, generator=gen).half().float(), torch.randn(5, 40, generator=gen).half().float()
    labels = torch.randint(0, 5, (9,), generator=gen)
    _compare(lambda f, y, cc: tritonloss.center_loss(f, y, cc),
             lambda f, y, cc: R.center_loss(f, y, cc), [x, labels, c], dtype=torch.float16, diff=[0])


def test_center_loss_out_of_range_label_gives_nan_row():
    x = padded(torch.randn(4, 6).to(DEVICE))
    c = padded(torch.randn(3, 6).to(DEVICE))
    labels = torch.tensor([0, 3, 2, -1], device=DEVICE)
    out = tritonloss.center_loss(x, labels, c, reduction="none")
    gx, gc = torch.autograd.grad(out, [x, c], torch.ones_like(out))
    assert torch.isnan(out[[1, 3]]).all() and torch.isfinite(out[[0, 2]]).all()
    assert torch.isnan(gx[[1, 3]]).all() and torch.isfinite(gc).all()
    tritonloss.set_checks(True)
    try:
        with pytest.raises(ValueError, match="labels"):
            tritonloss.center_loss(x, labels, c)
    finally:
        tritonloss.set_checks(False)


def test_out_of_range_labels_on_the_eager_path_give_nan_rows():
    """float64 takes the eager reference: the same NaN rows as the kernels, no IndexError."""
    x = torch.randn(3, 4, dtype=torch.float64, device=DEVICE)
    c = torch.randn(2, 4, dtype=torch.float64, device=DEVICE)
    labels = torch.tensor([0, 2, -1], device=DEVICE)
    for out in (tritonloss.center_loss(x, labels, c, "none"),
                tritonloss.triplet_center_loss(x, labels, c, reduction="none"),
                tritonloss.center_invariant_loss(labels, c, "none")):
        assert torch.isfinite(out[0]) and torch.isnan(out[1:]).all()


@pytest.mark.parametrize("name", ["triplet_margin_loss", "cosine_embedding_loss", "contrastive_loss", "center_loss",
                                  "ring_loss", "triplet_center_loss"])
def test_empty_batch_row_losses(name):
    """N = 0: "none" empty, "sum" 0, "mean" NaN (torch's mean of nothing), gradients empty."""
    x = torch.zeros(0, 5, device=DEVICE, requires_grad=True)
    y = torch.zeros(0, 5, device=DEVICE, requires_grad=True)
    idx = torch.zeros(0, dtype=torch.long, device=DEVICE)
    c = torch.randn(3, 5, device=DEVICE)
    call = {
        "triplet_margin_loss": lambda r: tritonloss.triplet_margin_loss(x, y, y, reduction=r),
        "cosine_embedding_loss": lambda r: tritonloss.cosine_embedding_loss(x, y, idx, reduction=r),
        "contrastive_loss": lambda r: tritonloss.contrastive_loss(x, y, idx, reduction=r),
        "center_loss": lambda r: tritonloss.center_loss(x, idx, c, r),
        "ring_loss": lambda r: tritonloss.ring_loss(x, 1.0, r),
        "triplet_center_loss": lambda r: tritonloss.triplet_center_loss(x, idx, c, reduction=r),
    }[name]
    assert call("none").shape == (0,)
    assert call("sum").item() == 0.0
    out = call("mean")
    assert torch.isnan(out)
    (g,) = torch.autograd.grad(out, [x])
    assert g.shape == (0, 5)


def test_update_centers_matches_rule_and_is_deterministic():
    gen = torch.Generator().manual_seed(11)
    x, c = torch.randn(30, 200, generator=gen), torch.randn(8, 200, generator=gen)
    labels = torch.randint(0, 6, (30,), generator=gen)  # classes 6 and 7 get no sample
    expect = R.update_centers(c.double(), x.double(), labels, 0.3)
    got = [c.clone().to(DEVICE) for _ in range(2)]
    for g in got:
        tritonloss.metric.update_centers(g, x.to(DEVICE), labels.to(DEVICE), 0.3)
    assert_close(got[0], expect, torch.float32, what="update")
    assert torch.equal(got[0], got[1])
    assert torch.equal(got[0][6:].cpu(), c[6:])


def test_center_loss_module():
    torch.manual_seed(12)
    m = tnn.CenterLoss(5, 7, alpha=0.5).to(DEVICE)
    assert "centers" in dict(m.named_buffers()) and not list(m.parameters())
    x = torch.randn(6, 7, device=DEVICE)
    y = torch.tensor([0, 1, 1, 4, 4, 4], device=DEVICE)
    before = m.centers.clone()
    assert torch.equal(m(x, y), tritonloss.center_loss(x, y, before))
    m.update_centers(x, y)
    assert_close(m.centers, R.update_centers(before.double(), x.double(), y, 0.5), torch.float32)


# --- triplet-center, center-invariant, batch contrastive ------------------------------------

@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("num_classes", [1, 7, 40])
def test_triplet_center_loss(reduction, num_classes):
    """C = 40 > one 32-center tile; C = 1 has no other center (loss 0)."""
    gen = torch.Generator().manual_seed(22)
    x, c = torch.randn(19, 45, generator=gen), torch.randn(num_classes, 45, generator=gen) * 0.7
    labels = torch.randint(0, num_classes, (19,), generator=gen)
    _compare(lambda f, y, cc: tritonloss.triplet_center_loss(f, y, cc, margin=20.0, reduction=reduction),
             lambda f, y, cc: R.triplet_center_loss(f, y, cc, 20.0, reduction), [x, labels, c], what="tcl")


def test_triplet_center_loss_mixed_dtypes_and_module():
    """fp16 features with fp32 centers (a module's Parameter): each gradient in its dtype."""
    torch.manual_seed(23)
    m = tnn.TripletCenterLoss(6, 24, margin=5.0).to(DEVICE)
    assert [n for n, _ in m.named_parameters()] == ["centers"]
    x = padded(torch.randn(10, 24).half().to(DEVICE))
    y = torch.randint(0, 6, (10,), device=DEVICE)
    out = m(x, y)
    gx, gc = torch.autograd.grad(out, [x, m.centers])
    assert out.dtype == torch.float16 and gx.dtype == torch.float16 and gc.dtype == torch.float32
    rx, rc = x.detach().double().cpu().requires_grad_(), m.centers.detach().double().cpu().requires_grad_()
    ref = R.triplet_center_loss(rx, y.cpu(), rc, 5.0)
    rgx, rgc = torch.autograd.grad(ref, [rx, rc])
    assert_close(out, ref, torch.float16)
    assert_close(gx, rgx, torch.float16)
    assert_close(gc, rgc, torch.float16)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_center_invariant_loss(reduction):
    gen = torch.Generator().manual_seed(24)
    c = torch.randn(9, 30, generator=gen) * (torch.rand(9, 1, generator=gen) + 0.5)
    labels = torch.randint(0, 7, (25,), generator=gen)
    _compare(lambda y, cc: tritonloss.center_invariant_loss(y, cc, reduction),
             lambda y, cc: R.center_invariant_loss(y, cc, reduction), [labels, c], what="cil")


@pytest.mark.parametrize("sizes,D", [([1], 5), ([1, 1], 5), ([3, 1, 6, 2, 5, 4], 19), ([5] * 8, 45)])
def test_batch_contrastive_loss(sizes, D):
    """One sample (no pair: 0), two, variable K, and B = 40 > a 32-row tile; a duplicated
    pair with different labels (d = 0) keeps finite gradients."""
    x, labels = _pk_batch(sizes, D, seed=25)
    if len(labels) > 10:
        x[5] = x[3]
        labels[5], labels[3] = 100, 101
    out, (g,) = _compare(lambda e, y: tritonloss.batch_contrastive_loss(e, y, margin=6.0),
                         lambda e, y: R.batch_contrastive_loss(e, y, 6.0), [x, labels], what="bcl")
    assert torch.isfinite(g).all() and out.requires_grad


@pytest.mark.parametrize("sizes,D,k,margin", [
    ([1], 5, 2, 1.0),  # one class of one sample: 0, attached
    ([3, 1, 6, 2, 5, 4], 19, 2, 3.0),  # classes of one sample skipped by the intra term
    ([3, 1, 6, 2, 5, 4], 19, 5, 0.01),  # k above a class's pair count; inter hinge inactive
    ([5] * 7, 40, 3, 3.0),  # more positions than one 32-wide tile of class means
])
def test_range_loss(sizes, D, k, margin):
    x, labels = _pk_batch(sizes, D, seed=26)
    x = x * 0.3
    opts = dict(k=k, margin=margin, alpha=0.7, beta=0.4)
    _compare(lambda e, y: tritonloss.range_loss(e, y, **opts), lambda e, y: R.range_loss(e, y, **opts),
             [x, labels * 3], what="range")


def test_range_loss_zero_distance_class():
    """A class of identical samples: its harmonic mean is 0 with gradient 0; others count."""
    x, labels = _pk_batch([3, 4], 6, seed=27)
    x[labels == 0] = x[labels == 0][0]
    _, (g,) = _compare(lambda e, y: tritonloss.range_loss(e, y), lambda e, y: R.range_loss(e, y), [x, labels])
    assert torch.isfinite(g).all()


# --- torch pair losses -------------------------------------------------------------------------

def _rows(n=13, d=37, seed=13, k=3):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(n, d, generator=gen) for _ in range(k)]


TRIPLET_MARGIN_OPTIONS = [{}, {"swap": True}, {"p": 1.0, "margin": 0.5}, {"p": 3.0, "swap": True, "eps": 1e-3}]


@pytest.mark.parametrize("opts", TRIPLET_MARGIN_OPTIONS)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_triplet_margin_loss(opts, reduction):
    _compare(lambda a, p, n: tritonloss.triplet_margin_loss(a, p, n, reduction=reduction, **opts),
             lambda a, p, n: TF.triplet_margin_loss(a, p, n, reduction=reduction, **opts), _rows(), what="tml")


def test_triplet_margin_loss_unbatched_broadcast_half():
    a, p, n = _rows(1, 29, k=3)
    _compare(lambda a, p, n: tritonloss.triplet_margin_loss(a, p, n, reduction="none"),
             lambda a, p, n: TF.triplet_margin_loss(a, p, n, reduction="none"), [a[0], p[0], n[0]])
    a, p, n = (t.half().float() for t in _rows(6, 20, k=3))
    _compare(lambda a, p, n: tritonloss.triplet_margin_loss(a, p, n, swap=True),
             lambda a, p, n: TF.triplet_margin_loss(a, p, n, swap=True), [a, p[:1], n], dtype=torch.float16)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_cosine_embedding_loss(reduction):
    x1, x2 = _rows(k=2, seed=14)
    x2[0] = 0.0  # zero vector: torch's eps keeps it finite
    target = torch.tensor([1, -1, 0, 2, 1, -1, 1, -1, -1, 1, 0, 1, -1])  # odd targets give 0
    _compare(lambda a, b: tritonloss.cosine_embedding_loss(a, b, target.to(DEVICE), margin=-0.2, reduction=reduction),
             lambda a, b: TF.cosine_embedding_loss(a, b, target.double(), margin=-0.2, reduction=reduction),
             [x1, x2], what="cosine")


def test_cosine_embedding_loss_unbatched_bf16():
    x1, x2 = (t.bfloat16().float() for t in _rows(1, 50, k=2))
    t = torch.tensor(-1)
    _compare(lambda a, b: tritonloss.cosine_embedding_loss(a, b, t.to(DEVICE), reduction="none"),
             lambda a, b: TF.cosine_embedding_loss(a, b, t.double(), reduction="none"), [x1[0], x2[0]],
             dtype=torch.bfloat16)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_margin_ranking_loss(reduction):
    x1, x2, t = _rows(5, 33, seed=15)
    t = torch.sign(t)
    t[0, :3] = 0.0
    _compare(lambda a, b, y: tritonloss.margin_ranking_loss(a, b, y, margin=0.3, reduction=reduction),
             lambda a, b, y: TF.margin_ranking_loss(a, b, y, margin=0.3, reduction=reduction), [x1, x2, t])


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_hinge_embedding_loss(reduction):
    (x,) = _rows(5, 33, seed=16, k=1)
    target = torch.randint(-1, 2, (5, 33))  # 0 takes both terms, as torch
    target[0, :4] = 2
    _compare(lambda a: tritonloss.hinge_embedding_loss(a, target.to(DEVICE), margin=0.7, reduction=reduction),
             lambda a: TF.hinge_embedding_loss(a, target.double(), margin=0.7, reduction=reduction), [x])


# --- contrastive, ring ------------------------------------------------------------------------

@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_contrastive_loss(reduction):
    x1, x2 = _rows(k=2, seed=17)
    x2[3] = x1[3]  # d = 0 on a dissimilar pair: finite, direction 0
    target = torch.tensor([1, 0, 1, 0, 0, 1, 1, 0, 1, 0, 0, 1, 0])
    out, grads = _compare(lambda a, b: tritonloss.contrastive_loss(a, b, target.to(DEVICE), margin=8.0,
                                                                   reduction=reduction),
                          lambda a, b: R.contrastive_loss(a, b, target, 8.0, reduction), [x1, x2])
    assert all(torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_ring_loss(reduction):
    (x,) = _rows(k=1, seed=18)
    x[2] = 0.0  # norm 0: gradient 0 for x
    radius = torch.tensor([5.5])
    _compare(lambda f, r: tritonloss.ring_loss(f, r, reduction), lambda f, r: R.ring_loss(f, r, reduction),
             [x, radius], what="ring")


def test_ring_loss_module_initialises_radius_from_first_batch():
    m = tnn.RingLoss(weight=0.5).to(DEVICE)
    x = torch.randn(8, 16, device=DEVICE) * 3
    out = m(x)
    assert m.radius.item() == pytest.approx(x.norm(dim=1).mean().item(), rel=1e-6)
    assert out.item() == pytest.approx(0.5 * tritonloss.ring_loss(x, m.radius.detach()).item(), rel=1e-6)
    out.backward()
    assert m.radius.grad is not None
    r = m.radius.item()
    m(x * 2)
    assert m.radius.item() == r  # only the first batch sets it


_Y6 = torch.tensor([0, 0, 1, 1, 2, 0])
HALF_CASES = {
    "contrastive_loss": (lambda a, b: tritonloss.contrastive_loss(a, b, torch.tensor([1, 0, 1, 0, 0, 1]).to(DEVICE),
                                                                margin=6.0),
                         lambda a, b: R.contrastive_loss(a, b, torch.tensor([1, 0, 1, 0, 0, 1]), 6.0), 2),
    "ring_loss": (lambda a: tritonloss.ring_loss(a, 4.0, "sum"),
                  lambda a: R.ring_loss(a, torch.tensor(4.0, dtype=torch.float64), "sum"), 1),
    "batch_contrastive_loss": (lambda a: tritonloss.batch_contrastive_loss(a, _Y6.to(DEVICE), margin=6.0),
                               lambda a: R.batch_contrastive_loss(a, _Y6, 6.0), 1),
    "range_loss": (lambda a: tritonloss.range_loss(a, torch.tensor([0, 0, 1, 1, 1, 2]).to(DEVICE), margin=9.0),
                   lambda a: R.range_loss(a, torch.tensor([0, 0, 1, 1, 1, 2]), margin=9.0), 1),
    "center_invariant_loss": (lambda c: tritonloss.center_invariant_loss(torch.tensor([0, 2, 2, 1]).to(DEVICE), c),
                              lambda c: R.center_invariant_loss(torch.tensor([0, 2, 2, 1]), c), 1),
    "margin_ranking_loss": (lambda a, b: tritonloss.margin_ranking_loss(a, b, torch.ones(6, 9, device=DEVICE), 0.2),
                            lambda a, b: TF.margin_ranking_loss(a, b, torch.ones(6, 9, dtype=torch.float64), 0.2), 2),
}


@pytest.mark.parametrize("name", list(HALF_CASES))
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_dtypes(name, dtype):
    fn, ref_fn, n = HALF_CASES[name]
    gen = torch.Generator().manual_seed(28)
    rows = 3 if name == "center_invariant_loss" else 6
    xs = [(torch.randn(rows, 9, generator=gen) * 1.5).to(dtype).float() for _ in range(n)]
    _compare(fn, ref_fn, xs, dtype=dtype, what=f"{name} {dtype}")


# --- arguments, modules ------------------------------------------------------------------------

def _x(n=4, d=3):
    return torch.randn(n, d, device=DEVICE)


Y4 = torch.tensor([0, 0, 1, 1])


@pytest.mark.parametrize("call,exc,match", [
    (lambda: tritonloss.triplet_loss(_x(), Y4[:3].to(DEVICE)), ValueError, "labels"),
    (lambda: tritonloss.triplet_loss(_x(), Y4.float().to(DEVICE)), TypeError, "labels"),
    (lambda: tritonloss.triplet_loss(_x()[0], Y4.to(DEVICE)), ValueError, "embeddings"),
    (lambda: tritonloss.triplet_loss(_x(), Y4.to(DEVICE), margin=-0.1), ValueError, "margin"),
    (lambda: tritonloss.triplet_loss(_x(), Y4.to(DEVICE), mining="semi_hard"), ValueError, "mining"),
    (lambda: tritonloss.triplet_loss(_x(), Y4.to(DEVICE), distance="l1"), ValueError, "distance"),
    (lambda: tritonloss.triplet_loss(_x(), Y4.to(DEVICE), normalize=1), TypeError, "normalize"),
    (lambda: tritonloss.triplet_loss(_x(), Y4.to(DEVICE), reduction="avg"), ValueError, "reduction"),
    (lambda: tritonloss.center_loss(_x(), Y4.to(DEVICE), _x(5, 4)), ValueError, "centers"),
    (lambda: tritonloss.center_loss(_x(), Y4[:2].to(DEVICE), _x(5, 3)), ValueError, "labels"),
    (lambda: tritonloss.metric.update_centers(_x(5, 3), _x(), Y4.to(DEVICE), -1.0), ValueError, "alpha"),
    (lambda: tritonloss.triplet_margin_loss(_x(), _x(), _x(4, 5)), ValueError, "broadcast"),
    (lambda: tritonloss.triplet_margin_loss(_x(), _x(), _x(), p=0.0), ValueError, "p"),
    (lambda: tritonloss.triplet_margin_loss(_x(), _x()[0], _x()), ValueError, "dimensions"),
    (lambda: tritonloss.cosine_embedding_loss(_x(), _x(), torch.ones(3, device=DEVICE)), ValueError, "target"),
    (lambda: tritonloss.contrastive_loss(_x(), _x(), torch.ones(4, device=DEVICE), margin=-1.0), ValueError,
     "margin"),
    (lambda: tritonloss.contrastive_loss(_x(), _x(4, 2), torch.ones(4, device=DEVICE)), ValueError, "broadcast"),
    (lambda: tritonloss.ring_loss(_x(), torch.ones(2, device=DEVICE)), ValueError, "radius"),
    (lambda: tritonloss.margin_ranking_loss(_x(), _x(), _x().long()), TypeError, "target"),
    (lambda: tritonloss.hinge_embedding_loss(_x().long(), _x()), TypeError, "input"),
    (lambda: tritonloss.triplet_center_loss(_x(), Y4.to(DEVICE), _x(5, 3), margin=-1.0), ValueError, "margin"),
    (lambda: tritonloss.triplet_center_loss(_x(), Y4.to(DEVICE), _x(5, 2)), ValueError, "centers"),
    (lambda: tritonloss.center_invariant_loss(Y4.float().to(DEVICE), _x(5, 3)), TypeError, "labels"),
    (lambda: tritonloss.center_invariant_loss(Y4.to(DEVICE), _x(5, 3)[0]), ValueError, "centers"),
    (lambda: tritonloss.batch_contrastive_loss(_x(), Y4[:3].to(DEVICE)), ValueError, "labels"),
    (lambda: tritonloss.batch_contrastive_loss(_x(), Y4.to(DEVICE), margin=-2.0), ValueError, "margin"),
    (lambda: tritonloss.range_loss(_x(), Y4.to(DEVICE), k=0), ValueError, "k"),
    (lambda: tritonloss.range_loss(_x(), Y4.to(DEVICE), margin=-1.0), ValueError, "margin"),
    (lambda: tritonloss.range_loss(_x(), Y4.to(DEVICE), alpha=-1.0), ValueError, "alpha"),
])
def test_bad_arguments(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


MODULES = [
    (tnn.TripletMarginLoss, torch.nn.TripletMarginLoss, "triplet_margin_loss"),
    (tnn.CosineEmbeddingLoss, torch.nn.CosineEmbeddingLoss, "cosine_embedding_loss"),
    (tnn.MarginRankingLoss, torch.nn.MarginRankingLoss, "margin_ranking_loss"),
    (tnn.HingeEmbeddingLoss, torch.nn.HingeEmbeddingLoss, "hinge_embedding_loss"),
    (tnn.TripletLoss, None, "triplet_loss"),
    (tnn.ContrastiveLoss, None, "contrastive_loss"),
    (tnn.BatchContrastiveLoss, None, "batch_contrastive_loss"),
    (tnn.RangeLoss, None, "range_loss"),
]


@pytest.mark.parametrize("cls,torch_cls,name", MODULES)
def test_module_defaults_match_functions(cls, torch_cls, name):
    if torch_cls is not None:
        assert issubclass(cls, torch_cls)
    fn_params = inspect.signature(getattr(tritonloss, name)).parameters
    for pname, p in inspect.signature(cls.__init__).parameters.items():
        if pname != "self":
            assert fn_params[pname].default == p.default, (cls.__name__, pname)


def test_modules_call_the_functions():
    x, labels = _pk_batch([3, 3, 2], 6, seed=19)
    x, labels = x.to(DEVICE), labels.to(DEVICE)
    assert torch.equal(tnn.TripletLoss(mining="batch_all")(x, labels),
                       tritonloss.triplet_loss(x, labels, mining="batch_all"))
    a, p, n = (t.to(DEVICE) for t in _rows(4, 5))
    assert torch.equal(tnn.TripletMarginLoss(swap=True)(a, p, n), tritonloss.triplet_margin_loss(a, p, n, swap=True))
    t = torch.tensor([1, 0, 1, 0], device=DEVICE)
    assert torch.equal(tnn.ContrastiveLoss(margin=2.0)(a, p, t), tritonloss.contrastive_loss(a, p, t, 2.0))


def test_float64_takes_the_eager_path_and_gradchecks():
    x, labels = _pk_batch([3, 3, 2], 4, seed=20)
    x = x.double().to(DEVICE).requires_grad_()
    assert torch.autograd.gradcheck(lambda e: tritonloss.triplet_loss(e, labels.to(DEVICE), mining="batch_all"),
                                    (x,))


@pytest.mark.gpu
def test_no_host_sync_on_cuda():
    x, labels = _pk_batch([4] * 8, 32, seed=21)
    x, labels = x.cuda().requires_grad_(), labels.cuda()
    c = torch.randn(10, 32, device="cuda", requires_grad=True)
    tritonloss.triplet_loss(x, labels)  # compile / autotune outside the check
    torch.cuda.set_sync_debug_mode("error")
    try:
        for mining in ("batch_hard", "batch_all"):
            torch.autograd.grad(tritonloss.triplet_loss(x, labels, mining=mining), [x])
        torch.autograd.grad(tritonloss.center_loss(x, labels, c), [x, c])
        tritonloss.metric.update_centers(c.detach().clone(), x.detach(), labels, 0.5)
    finally:
        torch.cuda.set_sync_debug_mode("default")
