"""Class-sharded margin softmax over torch.distributed (model-parallel classifier, as
insightface's PartialFC), on the fused margin kernels.

Each rank of a process group holds the weight rows of a contiguous range of classes
[class_start, class_start + C_r); together the shards partition [0, num_classes). A call:
1. all-gathers the embeddings [b_r, D] and labels [b_r] of every rank (batches may differ
   in size: they are padded to the largest with ignored rows);
2. each rank computes, for every gathered row, its shard's (max, sum-exp) of the logits and
   the target logit where it holds the target (kernels/margin.py `shard_forward`: the
   logits are never stored);
3. two all-reduces merge them: the global max, then the sum of the rescaled sum-exps, the
   target logits and the number of ranks holding each target; lse = max + log(sum);
4. the backward computes each shard's share of d loss / d embeddings for all gathered rows
   and its weight gradient with the global lse, and reduce-scatters the embedding gradients
   (summed in fp32) back to the rank that owns each embedding.
Loss and gradients equal the single-process loss over the concatenated weight.

Partial FC (An et al. 2021): with sample_rate r < 1 each rank keeps every class of its
shard that is a target in the gathered batch plus random others, max(int(r C_r), positives)
classes in all; the kernels read the kept weight rows through the index (no copy of the
weight) and unkept rows get zero gradient.

Every rank must make the same calls (forward and backward) with the same options, as with
any collective. Each call gathers a few integers (batch sizes, shard ranges) to check that
the ranks agree: a host synchronisation, like Partial FC's count of positive classes.
"""

from __future__ import annotations

import hashlib

import torch
import torch.distributed as dist

from . import _runtime, _validate
from .kernels import _reduce
from .kernels import margin as K
from .margin import _check, combined_options, combined_spec
from .reference import margin as ref

_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
# local label codes: a shard's class positions are >= 0
_IGNORED, _ELSEWHERE = -1, -2
# torch 2.13 renamed the tensor collectives (the old names warn); older versions have only the old
_all_gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
_reduce_scatter = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor


def shard_classes(num_classes: int, group=None) -> tuple[int, int]:
    """(class_start, count) of this rank's shard when num_classes are split over the group
    in rank order, the first num_classes % world_size ranks holding one class more."""
    num_classes = _validate.integer("num_classes", num_classes)
    if num_classes < 1:
        raise ValueError(f"num_classes: expected an integer >= 1, got {num_classes}")
    rank, world = _group(group)
    base, extra = divmod(num_classes, world)
    return base * rank + min(rank, extra), base + int(rank < extra)


def _group(group):
    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError("tritonloss.distributed: torch.distributed is not initialised "
                           "(call torch.distributed.init_process_group first)")
    return dist.get_rank(group), dist.get_world_size(group)


def _layout(x, w, class_start, num_classes, group, error):
    """Gather every rank's (argument error?, batch, class_start, classes, D, num_classes, dtype)
    and check that they agree. Every rank raises if any rank's arguments were rejected (its
    own error there, a ValueError naming it elsewhere) or if they disagree, so that no rank
    is left waiting in a collective. Returns (batch sizes, rank)."""
    rank, world = _group(group)
    device = next((t.device for t in (x, w) if isinstance(t, torch.Tensor)), torch.device("cpu"))
    mine = [1, 0, 0, 0, 0, 0, 0]
    if error is None:
        mine = [0, x.shape[0], class_start, w.shape[0], x.shape[1], num_classes, _DTYPES.index(x.dtype)]
    table = torch.empty(world * len(mine), dtype=torch.int64, device=device)
    _all_gather(table, torch.tensor(mine, dtype=torch.int64, device=device), group=group)
    rows = table.view(world, -1).tolist()
    if error is not None:
        raise error
    failed = [r for r, row in enumerate(rows) if row[0]]
    if failed:
        raise ValueError(f"tritonloss.distributed: rank(s) {failed} of the group rejected their arguments "
                         "(see the error raised there)")
    for what, col in (("the embedding size D", 4), ("num_classes", 5), ("the dtype", 6)):
        if len({r[col] for r in rows}) > 1:
            raise ValueError(f"tritonloss.distributed: ranks disagree on {what}: {[r[col] for r in rows]}")
    end = 0
    for start, count in sorted((r[2], r[3]) for r in rows):
        if start != end:
            break
        end = start + count
    if end != num_classes or sum(r[3] for r in rows) != num_classes:
        shards = [(r[2], r[2] + r[3]) for r in rows]
        raise ValueError(f"tritonloss.distributed: the class shards [class_start, class_start + len(weight_shard)) "
                         f"of the ranks, {shards}, do not partition [0, {num_classes})")
    return [r[1] for r in rows], rank


def _gather_rows(t, sizes, fill, group):
    """[world * max(sizes), ...]: every rank's t, padded to the largest batch with `fill`."""
    bmax = max(sizes)
    if t.shape[0] != bmax:
        t = torch.cat([t, t.new_full((bmax - t.shape[0], *t.shape[1:]), fill)])
    out = t.new_empty((len(sizes) * bmax, *t.shape[1:]))
    _all_gather(out, t.contiguous(), group=group)
    return out


def _sample_classes(labels, class_start, num_local, ignore_index, sample_rate, generator):
    """Partial FC: the sorted shard positions kept for gathered `labels` (None: all of them):
    every position that is a label, plus positions drawn uniformly without replacement from
    the others (torch.rand with `generator`), max(int(sample_rate * num_local), positives) in all."""
    keep = int(sample_rate * num_local)
    if keep >= num_local:
        return None
    rel = labels - class_start
    positive = torch.zeros(num_local, dtype=torch.bool, device=labels.device)
    positive[rel[(labels != ignore_index) & (rel >= 0) & (rel < num_local)]] = True
    keep = max(keep, int(positive.sum()))
    if keep >= num_local:
        return None
    score = torch.rand(num_local, generator=generator, device=labels.device)
    score[positive] = 2.0
    return score.topk(keep).indices.sort().values


def _local_labels(y, class_start, num_local, idx, ignore_index):
    """Gathered labels -> this shard's class positions (among the sampled ones, which
    include every target), _IGNORED or _ELSEWHERE."""
    rel = y - class_start
    held = (y != ignore_index) & (rel >= 0) & (rel < num_local)
    pos = rel if idx is None else torch.searchsorted(idx, rel)
    return torch.where(y == ignore_index, _IGNORED, torch.where(held, pos, _ELSEWHERE))


class _Sharded(torch.autograd.Function):
    @staticmethod
    def forward(ctx, cfg, x, w):
        sizes, group, rank = cfg["sizes"], cfg["group"], cfg["rank"]
        idx, y = cfg["idx"], cfg["local_labels"]
        x_all = _gather_rows(x, sizes, 0, group)
        kernels = _runtime.use_kernels(x, w)
        stat_dtype = _stat_dtype(x, kernels)
        n_local = w.shape[0] if idx is None else idx.numel()
        n_rows = x_all.shape[0]
        nx = nw = None
        rowstat = torch.zeros((5, n_rows), dtype=stat_dtype, device=x.device)  # the kernels write their own
        if n_local == 0 or n_rows == 0:  # a shard without classes (or no rows at all)
            mx = torch.full((n_rows,), float("-inf"), dtype=stat_dtype, device=x.device)
            se, phi = torch.zeros_like(mx), torch.zeros_like(mx)
        elif kernels:
            nx, nw = K.norms(x_all), K.norms(w, idx)
            phi, rowstat = K.shard_forward(x_all, w, y, nx, nw, idx, ignore_index=_IGNORED, **cfg["spec"])
            mx, se = rowstat[0].clone(), rowstat[1].clone()
        else:
            z = _eager_logits(cfg, x_all, w).to(stat_dtype)
            mx = z.amax(1)
            se = torch.exp(z - mx[:, None]).sum(1)
            held = y >= 0
            phi = torch.where(held, z.gather(1, y.clamp(min=0)[:, None])[:, 0], 0.0)
        # merge the shards: global max, then sum-exp, target logit and holder count in one all-reduce
        big = mx.clone()
        dist.all_reduce(big, op=dist.ReduceOp.MAX, group=group)
        part = torch.stack([torch.where(se == 0, 0.0, se * torch.exp(mx - big)), phi, (y >= 0).to(stat_dtype)])
        dist.all_reduce(part, group=group)
        lse = big + torch.log(part[0])
        valid = y != _IGNORED
        loss = torch.where(valid, torch.where(part[2] > 0, lse - part[1], float("nan")), 0.0)
        rowstat[0], rowstat[1] = lse, torch.exp(part[1] - lse)
        ctx.cfg, ctx.kernels = cfg, kernels
        ctx.save_for_backward(x_all, w, nx, nw, rowstat, valid)
        bmax = max(sizes)
        if cfg["reduction"] == "none":
            return loss[rank * bmax:rank * bmax + sizes[rank]].to(x.dtype)
        total = loss.sum()
        if cfg["reduction"] == "mean":
            total = total / valid.sum()
        return total.to(x.dtype)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        cfg, kernels = ctx.cfg, ctx.kernels
        x_all, w, nx, nw, rowstat, valid = ctx.saved_tensors
        sizes, group, rank = cfg["sizes"], cfg["group"], cfg["rank"]
        need_x, need_w = ctx.needs_input_grad[1:3]
        if cfg["reduction"] == "none":
            g = _gather_rows(grad.to(rowstat.dtype), sizes, 0, group)
        else:
            g = grad.to(rowstat.dtype).expand(x_all.shape[0])
            if cfg["reduction"] == "mean":
                g = g / valid.sum()
        g = torch.where(valid, g, 0.0)
        idx, y = cfg["idx"], cfg["local_labels"]
        n_local = w.shape[0] if idx is None else idx.numel()
        dx = dw = None
        comm = _stat_dtype(x_all, kernels)
        if n_local == 0 or x_all.shape[0] == 0:
            dx_all = torch.zeros(x_all.shape, dtype=comm, device=x_all.device) if need_x else None
            dw = torch.zeros_like(w) if need_w else None
        elif kernels:
            dx_all, dw, _ = K.backward(g, x_all, w, None, y, nx, nw, rowstat.view(-1), None, norm_x=True,
                                       norm_w=True, scale=cfg["spec"]["scale"], ignore_index=_IGNORED,
                                       reduce=_reduce.NONE, need_x=need_x, need_w=need_w, idx=idx, dx_dtype=comm)
        else:
            dx_all, dw = _eager_backward(cfg, x_all, w, rowstat[0], g, need_x, need_w)
        if need_x:  # each rank's rows, summed over the shards in `comm` precision
            mine = torch.empty((max(sizes), x_all.shape[1]), dtype=comm, device=x_all.device)
            _reduce_scatter(mine, dx_all.to(comm).contiguous(), group=group)
            dx = mine[:sizes[rank]].to(x_all.dtype)
        return None, dx, dw


def _stat_dtype(x, kernels):
    """dtype of the row statistics and of the collectives: fp32 for the kernels, else x's
    dtype promoted to at least fp32 (float64 stays float64)."""
    return torch.float32 if kernels else torch.promote_types(x.dtype, torch.float32)


def _eager_logits(cfg, x_all, w):
    """This shard's logits [rows, classes] by the reference formulas (float64 and CPU path);
    ignored rows read as zeros (a NaN there stays out of the gradients)."""
    ws = w if cfg["idx"] is None else w[cfg["idx"]]
    y = cfg["local_labels"]
    x_all = torch.where((y == _IGNORED)[:, None], 0.0, x_all)
    return ref.combined_logits(x_all, ws, y, **cfg["options"])


def _eager_backward(cfg, x_all, w, lse, g, need_x, need_w):
    """d/dx_all and d/dw of sum_i g_i loss_i restricted to this shard's logits:
    sum_ij g_i (softmax_ij - [j = y_i]) logit_ij with the softmax held constant."""
    y = cfg["local_labels"]
    with torch.enable_grad():
        xa = x_all.detach().requires_grad_(need_x)
        wa = w.detach().requires_grad_(need_w)
        z = _eager_logits(cfg, xa, wa)
        hot = torch.arange(z.shape[1], device=z.device)[None, :] == y[:, None]
        coef = g[:, None].to(z.dtype) * (torch.exp(z.detach() - lse[:, None].to(z.dtype)) - hot.to(z.dtype))
        coef = torch.where((y == _IGNORED)[:, None], 0.0, coef)
        inputs = [t for t in (xa, wa) if t.requires_grad]
        grads = iter(torch.autograd.grad((coef * z).sum(), inputs))
    return (next(grads) if need_x else None), (next(grads) if need_w else None)


def _arguments(x, w, labels, class_start, num_classes, ignore_index, reduction, sample_rate, generator, margin):
    """This rank's argument checks: (margin options, sample_rate, int64 labels)."""
    opts = combined_options(*margin)
    sample_rate = _validate.number("sample_rate", sample_rate, low=0.0, high=1.0, low_open=True)
    class_start = _validate.integer("class_start", class_start)
    num_classes = _validate.integer("num_classes", num_classes)
    if num_classes < 1 or not 0 <= class_start <= num_classes:
        raise ValueError(f"class_start, num_classes: expected 0 <= class_start <= num_classes and num_classes >= 1, "
                         f"got {class_start}, {num_classes}")
    _validate.floating("embeddings", x)
    if x.dtype not in _DTYPES:
        raise TypeError(f"embeddings: expected one of {_DTYPES}, got {x.dtype}")
    labels = _check(("embeddings", "weight_shard", "labels"), x, w, labels, None, reduction, ignore_index,
                    num_classes)
    if class_start + w.shape[0] > num_classes:
        raise ValueError(f"weight_shard: classes [{class_start}, {class_start + w.shape[0]}) exceed "
                         f"num_classes {num_classes}")
    if generator is not None:
        if not isinstance(generator, torch.Generator):
            raise TypeError(f"generator: expected a torch.Generator, got {type(generator).__name__}")
        if generator.device.type != x.device.type:
            raise ValueError(f"generator: expected one on {x.device.type} like embeddings, got {generator.device}")
    return opts, sample_rate, labels


def margin_cross_entropy(embeddings: torch.Tensor, weight_shard: torch.Tensor, labels: torch.Tensor, *,
                         class_start: int, num_classes: int, group=None, scale: float = 64.0, m1: float = 1.0,
                         m2: float = 0.0, m3: float = 0.0, easy_margin: bool = False, margin_grad: str = "exact",
                         ignore_index: int = -100, reduction: str = "mean", sample_rate: float = 1.0,
                         generator: torch.Generator | None = None) -> torch.Tensor:
    """`tritonloss.margin_cross_entropy` with the classes sharded over `group`.

    embeddings [b_r, D] and labels [b_r] (global class ids) are this rank's; weight_shard
    [C_r, D] holds classes [class_start, class_start + C_r). The loss is over the batch
    gathered from all ranks: "mean" and "sum" return the same scalar on every rank (its
    gradient is taken once, not once per rank), "none" this rank's rows [b_r].
    `sample_rate` < 1 turns on Partial FC sampling (drawn with `generator`, see the module).
    Margin options, ignore_index and the checks as the single-device function."""
    _group(group)
    error = opts = None
    try:
        opts, sample_rate, labels = _arguments(embeddings, weight_shard, labels, class_start, num_classes,
                                               ignore_index, reduction, sample_rate, generator,
                                               (scale, m1, m2, m3, easy_margin, margin_grad))
    except (TypeError, ValueError) as e:
        error = e
    sizes, rank = _layout(embeddings, weight_shard, class_start, num_classes, group, error)
    y_all = _gather_rows(labels, sizes, int(ignore_index), group)
    idx = None
    if sample_rate < 1.0:
        idx = _sample_classes(y_all, class_start, weight_shard.shape[0], int(ignore_index), sample_rate, generator)
    cfg = dict(sizes=sizes, group=group, rank=rank, idx=idx, reduction=reduction, options=opts,
               spec=combined_spec(opts),
               local_labels=_local_labels(y_all, class_start, weight_shard.shape[0], idx, int(ignore_index)))
    with _runtime.on_device(embeddings):
        return _Sharded.apply(cfg, embeddings.contiguous(), weight_shard.contiguous())


class ShardedMarginSoftmax(torch.nn.Module):
    """A combined-margin classifier head whose weight rows are sharded over `group`: this
    rank's `weight` is [C_r, in_features] for classes [class_start, class_start + C_r)
    (`shard_classes`), initialised N(0, 0.01) as insightface. forward(embeddings, labels)
    returns `margin_cross_entropy` over the batch gathered from every rank.

    With sample_rate < 1 each training-mode forward samples classes (Partial FC) with a
    generator seeded from (seed, rank, step); `step` counts training-mode forwards and is
    kept in the state dict, so a resumed run draws the same classes. Eval mode uses every
    class. Keep this module out of DistributedDataParallel: its weight is not replicated."""

    def __init__(self, in_features: int, num_classes: int, *, scale: float = 64.0, m1: float = 1.0,
                 m2: float = 0.0, m3: float = 0.0, easy_margin: bool = False, margin_grad: str = "exact",
                 ignore_index: int = -100, reduction: str = "mean", sample_rate: float = 1.0, seed: int = 0,
                 group=None):
        super().__init__()
        in_features = _validate.integer("in_features", in_features)
        if in_features < 1:
            raise ValueError(f"in_features: expected an integer >= 1, got {in_features}")
        self.class_start, count = shard_classes(num_classes, group)
        self.num_classes, self.group = num_classes, group
        self.sample_rate = _validate.number("sample_rate", sample_rate, low=0.0, high=1.0, low_open=True)
        self.seed = _validate.integer("seed", seed)
        self.options = dict(combined_options(scale, m1, m2, m3, easy_margin, margin_grad), ignore_index=ignore_index,
                            reduction=reduction)
        self.weight = torch.nn.Parameter(torch.normal(0.0, 0.01, (count, in_features)))
        self.step = 0

    def get_extra_state(self):
        return {"step": self.step}

    def set_extra_state(self, state):
        self.step = int(state["step"])

    def _generator(self, step: int) -> torch.Generator:
        """The Partial FC generator of training step `step` on this rank."""
        rank = dist.get_rank(self.group)
        digest = hashlib.sha256(f"{self.seed},{rank},{step}".encode()).digest()
        return torch.Generator(device=self.weight.device).manual_seed(int.from_bytes(digest[:8], "little") >> 1)

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        rate, gen = 1.0, None
        if self.training and self.sample_rate < 1.0:
            rate, gen = self.sample_rate, self._generator(self.step)
        if self.training:
            self.step += 1
        return margin_cross_entropy(embeddings, self.weight, labels, class_start=self.class_start,
                                    num_classes=self.num_classes, group=self.group, sample_rate=rate, generator=gen,
                                    **self.options)
