"""Eager PyTorch metric-learning losses: the CPU path without the interpreter, and the test
oracle. Written from the papers' formulas (torch.nn.functional where torch has the loss);
same signatures as `tritonloss.functional`, called with checked arguments.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

_NORM_EPS = 1e-12


def _reduce(loss: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "none":
        return loss
    return loss.sum() if reduction == "sum" else loss.mean()


def _safe_sqrt(sq: torch.Tensor) -> torch.Tensor:
    """sqrt with gradient 0 (not inf) at 0."""
    pos = sq > 0
    return torch.where(pos, torch.sqrt(torch.where(pos, sq, torch.ones_like(sq))), torch.zeros_like(sq))


def pairwise_distance(x: torch.Tensor, distance: str = "euclidean", normalize: bool = False) -> torch.Tensor:
    """[B, B] distances between the rows of x: exact differences (torch.cdist without the
    Gram expansion, nothing B x B x D), gradient 0 at distance 0."""
    if normalize or distance == "cosine":
        x = F.normalize(x, dim=1, eps=_NORM_EPS)
    if distance == "cosine":
        return 1.0 - x @ x.T
    d = torch.cdist(x, x, compute_mode="donot_use_mm_for_euclid_dist")
    return d * d if distance == "squared" else d


def _label_masks(labels: torch.Tensor):
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    return same & ~eye, ~same


def _hinge(z: torch.Tensor, margin: float, soft: bool) -> torch.Tensor:
    return F.softplus(z) if soft else F.relu(z + margin)


def batch_hard_indices(dist: torch.Tensor, labels: torch.Tensor):
    """Per anchor the farthest positive and the nearest negative (first index on ties, as
    torch.max / torch.min) and whether the anchor has both."""
    pos, neg = _label_masks(labels)
    inf = torch.tensor(float("inf"), dtype=dist.dtype, device=dist.device)
    ap, p_idx = torch.where(pos, dist, -inf).max(1)
    an, n_idx = torch.where(neg, dist, inf).min(1)
    return ap, an, p_idx, n_idx, pos.any(1) & neg.any(1)


def triplet_loss(embeddings, labels, *, margin=0.3, mining="batch_hard", distance="euclidean",
                 normalize=False, soft_margin=False, reduction="mean"):
    if embeddings.shape[0] == 0:  # nothing to mine: [0] for "none", else 0 attached to the graph
        empty = embeddings.sum(1)
        return empty if reduction == "none" else empty.sum()
    dist = pairwise_distance(embeddings, distance, normalize)
    zero = torch.zeros((), dtype=dist.dtype, device=dist.device)
    if mining == "batch_hard":
        ap, an, _, _, valid = batch_hard_indices(dist, labels)
        loss = torch.where(valid, _hinge(ap - an, margin, soft_margin), zero)
        count = valid.sum()
    else:
        pos, neg = _label_masks(labels)
        trip = pos[:, :, None] & neg[:, None, :]
        z = dist[:, :, None] - dist[:, None, :]
        per = torch.where(trip, _hinge(z, margin, soft_margin), zero)
        count = trip.sum() if soft_margin else (trip & (z + margin > 0)).sum()
        loss = per.sum((1, 2))
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    return loss.sum() / count.clamp(min=1)


def _gather_centers(centers, labels):
    """centers[labels], and which labels are in range (the others read row 0)."""
    ok = (labels >= 0) & (labels < centers.shape[0])
    return centers[torch.where(ok, labels, 0)], ok


def _nan_where_bad(loss, ok):
    return torch.where(ok, loss, torch.full((), float("nan"), dtype=loss.dtype, device=loss.device))


def center_loss(features, labels, centers, reduction="mean"):
    """A label outside [0, C) gives NaN for its row."""
    c, ok = _gather_centers(centers, labels)
    diff = features - c
    return _reduce(_nan_where_bad(0.5 * (diff * diff).sum(1), ok), reduction)


def update_centers(centers, features, labels, alpha):
    """c_j - alpha sum_{y_i = j} (c_j - x_i) / (1 + n_j), as a new tensor; labels outside
    [0, C) are skipped (sent to a spare row)."""
    C = centers.shape[0]
    lab = torch.where((labels >= 0) & (labels < C), labels, C)
    spare = torch.cat([centers, centers.new_zeros(1, centers.shape[1])])
    counts = torch.zeros(C + 1, dtype=centers.dtype, device=centers.device).index_add_(
        0, lab, torch.ones(len(lab), dtype=centers.dtype, device=centers.device))
    sums = torch.zeros_like(spare).index_add_(0, lab, spare[lab] - features.to(centers.dtype))
    return centers - alpha * sums[:C] / (1 + counts[:C])[:, None]


def contrastive_loss(x1, x2, target, margin=1.0, reduction="mean"):
    d = _safe_sqrt(((x1 - x2) ** 2).sum(-1))
    t = target.to(d.dtype)
    return _reduce(0.5 * t * d**2 + 0.5 * (1 - t) * F.relu(margin - d) ** 2, reduction)


def ring_loss(features, radius, reduction="mean"):
    norm = _safe_sqrt((features * features).sum(1))
    return _reduce(0.5 * (norm - radius.to(norm.dtype).reshape(())) ** 2, reduction)


def triplet_center_loss(features, labels, centers, margin=1.0, reduction="mean"):
    """A label outside [0, C) gives NaN for its row."""
    ok = (labels >= 0) & (labels < centers.shape[0])
    lab = torch.where(ok, labels, 0)[:, None]
    dtype = torch.promote_types(features.dtype, centers.dtype)
    d = 0.5 * torch.cdist(features.to(dtype), centers.to(dtype), compute_mode="donot_use_mm_for_euclid_dist") ** 2
    own = d.gather(1, lab)[:, 0]
    other = d.scatter(1, lab, float("inf")).min(1).values
    return _reduce(_nan_where_bad(F.relu(own + margin - other), ok), reduction)


def center_invariant_loss(labels, centers, reduction="mean"):
    """A label outside [0, C) gives NaN for its sample."""
    nsq = (centers * centers).sum(1)
    ok = (labels >= 0) & (labels < centers.shape[0])
    return _reduce(_nan_where_bad(0.25 * (nsq[torch.where(ok, labels, 0)] - nsq.mean()) ** 2, ok), reduction)


def batch_contrastive_loss(embeddings, labels, margin=1.0):
    B = embeddings.shape[0]
    i, j = torch.triu_indices(B, B, 1, device=embeddings.device)
    d = pairwise_distance(embeddings)[i, j]
    loss = torch.where(labels[i] == labels[j], 0.5 * d * d, 0.5 * F.relu(margin - d) ** 2)
    return loss.sum() / max(len(loss), 1)


def range_loss(features, labels, *, k=2, margin=1.0, alpha=0.5, beta=0.5):
    """Classes in label order; per class with >= 2 samples the harmonic mean of its min(k,
    pairs) largest pair distances (ties to the first pair (i < j) in sample order; 0 if one
    of them is 0); the hinge on the smallest squared distance between class means (first
    pair on ties)."""
    zero = (features * 0).sum()  # attached to the graph
    intra, means = zero, []
    for c in torch.unique(labels):
        idx = (labels == c).nonzero()[:, 0]
        x = features[idx]
        means.append(x.mean(0))
        if len(idx) < 2:
            continue
        i, j = torch.triu_indices(len(idx), len(idx), 1)
        d = _safe_sqrt(((x[i] - x[j]) ** 2).sum(-1))
        if torch.isnan(d).any():
            intra = intra + d.sum()
            continue
        top = d[torch.sort(d.detach(), descending=True, stable=True).indices[:k]]
        if not (top == 0).any():
            intra = intra + len(top) / (1.0 / top).sum()
    inter = zero
    if len(means) > 1:
        m = torch.stack(means)
        i, j = torch.triu_indices(len(m), len(m), 1)
        d2 = ((m[i] - m[j]) ** 2).sum(-1)
        inter = F.relu(margin - d2[torch.argmin(d2.detach())])
    return alpha * intra + beta * inter
