"""tritonloss.distributed over gloo on the CPU, in 2 and 3 processes (torch.multiprocessing):
loss and gradients against the float64 single-process reference over the concatenated
weight, for uneven class splits (in any rank order, one shard empty), uneven batches (one
rank without rows), ranks holding no target of the batch, ignored rows, every reduction
and margin option; Partial FC sampling; argument errors raised on every rank (no hang).
float32 / float16 run the kernels (interpreted), float64 the eager path."""

import datetime
import os
import subprocess
import sys
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from helpers import assert_close

import tritonloss
from tritonloss import distributed as TD
from tritonloss.reference import margin as R

IGNORE = -100
OPTIONS = [dict(m2=0.5), dict(m1=1.0, m2=0.3, m3=0.2, margin_grad="detached"), dict(m3=0.35, scale=30.0),
           dict(m2=0.5, easy_margin=True)]


def _spawn(world, fn, *args, backend="gloo"):
    with tempfile.TemporaryDirectory() as d:
        mp.spawn(_entry, args=(world, os.path.join(d, "store"), backend, fn, args), nprocs=world)


def _entry(rank, world, store, backend, fn, args):
    dist.init_process_group(backend, init_method=f"file://{store}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=120))
    try:
        fn(rank, world, *args)
    finally:
        dist.destroy_process_group()


def _data(sizes, C, D, seed, labels_from=None, ignored=(1,)):
    """Full embeddings [sum(sizes), D] and weight [C, D] (float64), labels drawn from
    `labels_from` (default all classes) with rows `ignored` set to IGNORE."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(sum(sizes), D, generator=g, dtype=torch.float64)
    w = torch.randn(C, D, generator=g, dtype=torch.float64)
    pool = torch.tensor(labels_from if labels_from is not None else range(C))
    y = pool[torch.randint(0, len(pool), (sum(sizes),), generator=g)]
    y[[i for i in ignored if i < len(y)]] = IGNORE
    return x, w, y


def _compare_sharded(rank, sizes, shards, C, D, dtype, seed, reduction, opts, labels_from=None, device="cpu"):
    """This rank's loss and gradients against the float64 single-process reference."""
    x, w, y = _data(sizes, C, D, seed, labels_from)
    x, w = x.to(dtype).double(), w.to(dtype).double()  # the values the ranks hold
    row0 = sum(sizes[:rank])
    rows = slice(row0, row0 + sizes[rank])
    start, count = shards[rank]
    xr, wr = x.clone().requires_grad_(), w.clone().requires_grad_()
    ref = R.margin_cross_entropy(xr, wr, y, **opts, ignore_index=IGNORE, reduction=reduction)
    grad = torch.randn(ref.shape, generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float64)
    ref.backward(grad)
    xl = x[rows].to(device, dtype).requires_grad_()
    wl = w[start:start + count].to(device, dtype).requires_grad_()
    out = TD.margin_cross_entropy(xl, wl, y[rows].to(device), class_start=start, num_classes=C, **opts,
                                  ignore_index=IGNORE, reduction=reduction)
    assert out.dtype == dtype
    out.backward((grad[rows] if reduction == "none" else grad).to(device, dtype))
    what = f"rank {rank} {reduction} {opts} sizes {sizes} shards {shards} {dtype}"
    tol = torch.float32 if dtype == torch.float64 else dtype
    assert_close(out, ref.detach()[rows] if reduction == "none" else ref.detach(), tol, what=f"loss, {what}")
    assert xl.grad.dtype == dtype and wl.grad.dtype == dtype
    assert_close(xl.grad, xr.grad[rows], tol, scale=float(xr.grad.abs().max()), what=f"dx, {what}")
    assert_close(wl.grad, wr.grad[start:start + count], tol, scale=float(wr.grad.abs().max()), what=f"dw, {what}")


# (batch sizes, class shards (start, count) per rank, C, D, labels drawn from): uneven splits
# in any rank order, a rank holding no target, a rank without rows, an empty shard, and sizes
# that make the kernels loop over several row and class blocks
SCENARIOS = {
    2: [([5, 3], [(4, 7), (0, 4)], 11, 20, range(4, 11)),
        ([20, 17], [(0, 33), (33, 37)], 70, 40, None)],
    3: [([4, 0, 3], [(6, 7), (0, 5), (5, 1)], 13, 20, [c for c in range(13) if c != 5]),
        ([3, 3, 3], [(0, 5), (5, 0), (5, 4)], 9, 20, None)],
}


def _sharded_cases(rank, world, dtype):
    for k, (sizes, shards, C, D, labels_from) in enumerate(SCENARIOS[world]):
        for j, reduction in enumerate(("none", "sum", "mean")):
            for opts in OPTIONS if k == 0 else OPTIONS[j:j + 1]:
                _compare_sharded(rank, sizes, shards, C, D, dtype, 10 * k + j, reduction, opts, labels_from)


@pytest.mark.parametrize("world, dtype", [(2, torch.float32), (3, torch.float32), (2, torch.float64),
                                          (3, torch.float64), (2, torch.float16)])
def test_sharded_equals_single_process(world, dtype):
    _spawn(world, _sharded_cases, dtype)


def _partial_fc(rank, world, dtype):
    C, D, sizes = 23, 16, [6, 5]
    # rank 0's shard [0, 12) holds 3 targets (below its 6 samples), rank 1's [12, 23) 7 (above its 5)
    x, w, y = _data(sizes, C, D, 5, ignored=(2,))
    y[[0, 1, 3, 4, 5, 6, 7, 8, 9, 10]] = torch.tensor([1, 4, 21, 9, 12, 13, 15, 17, 20, 22])
    x, w = x.to(dtype).double(), w.to(dtype).double()
    head = TD.ShardedMarginSoftmax(D, C, m2=0.5, sample_rate=0.5, seed=3, ignore_index=IGNORE).to(dtype)
    start, count = TD.shard_classes(C)
    assert (head.class_start, head.weight.shape[0]) == (start, count) == [(0, 12), (12, 11)][rank]
    with torch.no_grad():
        head.weight.copy_(w[start:start + count])
    row0 = sum(sizes[:rank])
    xl = x[row0:row0 + sizes[rank]].to(dtype).requires_grad_()
    loss = head(xl, y[row0:row0 + sizes[rank]])
    loss.backward()
    assert head.step == 1
    # the classes it kept: every target of its shard, max(int(0.5 * count), targets) in all
    idx = TD._sample_classes(y, start, count, IGNORE, 0.5, head._generator(0))
    targets = {int(c) - start for c in y if start <= c < start + count}
    assert targets <= set(idx.tolist())
    assert len(idx) == max(count // 2, len(targets)) == [6, 7][rank]
    assert torch.equal(idx, TD._sample_classes(y, start, count, IGNORE, 0.5, head._generator(0)))
    if rank == 0:  # 3 of its 9 other classes drawn: another step draws others
        assert not torch.equal(idx, TD._sample_classes(y, start, count, IGNORE, 0.5, head._generator(1)))
    kept = [None] * world
    dist.all_gather_object(kept, (start + idx).tolist())
    kept = torch.tensor(sorted(sum(kept, [])))
    # reference: the single-process loss over the kept classes only
    xr, wr = x.clone().requires_grad_(), w[kept].clone().requires_grad_()
    yr = torch.where(y == IGNORE, IGNORE, torch.searchsorted(kept, y))
    ref = R.margin_cross_entropy(xr, wr, yr, m2=0.5, ignore_index=IGNORE)
    ref.backward()
    tol = torch.float32 if dtype == torch.float64 else dtype
    assert_close(loss, ref.detach(), tol, what="partial fc loss")
    assert_close(xl.grad, xr.grad[row0:row0 + sizes[rank]], tol, scale=float(xr.grad.abs().max()), what="dx")
    mine = (kept >= start) & (kept < start + count)
    assert_close(head.weight.grad[idx], wr.grad[mine], tol, scale=float(wr.grad.abs().max()), what="dw kept")
    dropped = torch.ones(count, dtype=torch.bool)
    dropped[idx] = False
    assert dropped.any() and torch.equal(head.weight.grad[dropped], torch.zeros_like(head.weight.grad[dropped]))
    # eval mode: every class, no step
    head.eval()
    with torch.no_grad():
        full = head(xl, y[row0:row0 + sizes[rank]])
    assert head.step == 1
    assert_close(full, R.margin_cross_entropy(x, w, y, m2=0.5, ignore_index=IGNORE), tol, what="eval loss")
    # the step travels with the state dict: a resumed run draws the same classes
    twin = TD.ShardedMarginSoftmax(D, C, m2=0.5, sample_rate=0.5, seed=3)
    twin.load_state_dict(head.state_dict())
    assert twin.step == 1


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_partial_fc_keeps_targets_and_is_reproducible(dtype):
    _spawn(2, _partial_fc, dtype)


def _errors(rank, world):
    x, w, y = torch.randn(4, 6), torch.randn(4, 6), torch.tensor([0, 1, 2, 3])
    assert TD.shard_classes(10) == [(0, 4), (4, 3), (7, 3)][rank]
    call = TD.margin_cross_entropy
    # shards that overlap / leave a gap: the same error on every rank
    with pytest.raises(ValueError, match="do not partition"):
        call(x, w, y, class_start=[0, 3, 8][rank], num_classes=12)
    # ranks disagreeing on D
    with pytest.raises(ValueError, match="embedding size"):
        call(torch.randn(4, 6 + rank), torch.randn(4, 6 + rank), y, class_start=4 * rank, num_classes=12)
    # one rank's bad label: with checks on, its own error there and a ValueError naming it on
    # the others (no hang); with checks off a NaN row, as the single-device function
    bad = torch.tensor([0, 1, 2, 99 if rank == 1 else 3])
    expected = "labels: expected class labels" if rank == 1 else r"rank\(s\) \[1\]"
    tritonloss.set_checks(True)
    try:
        with pytest.raises(ValueError, match=expected):
            call(x, w, bad, class_start=4 * rank, num_classes=12)
    finally:
        tritonloss.set_checks(False)
    rows = call(x, w, bad, class_start=4 * rank, num_classes=12, reduction="none")
    assert torch.equal(torch.isnan(rows), torch.tensor([False, False, False, rank == 1]))
    with pytest.raises(TypeError if rank == 2 else ValueError, match="weight_shard" if rank == 2 else "rank"):
        call(x, w.double() if rank == 2 else w, y, class_start=4 * rank, num_classes=12)
    with pytest.raises(TypeError if rank == 0 else ValueError, match="generator" if rank == 0 else "rank"):
        call(x, w, y, class_start=4 * rank, num_classes=12, sample_rate=0.5, generator=1 if rank == 0 else None)
    # the group still works after the errors
    out = call(x, w, y, class_start=4 * rank, num_classes=12)
    assert torch.isfinite(out)


def test_errors_reach_every_rank():
    _spawn(3, _errors)


def _cuda_one_rank(rank, world):
    torch.cuda.set_device(0)
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        for j, reduction in enumerate(("none", "sum", "mean")):
            _compare_sharded(rank, [300], [(0, 1000)], 1000, 128, dtype, j, reduction, OPTIONS[j], device="cuda")
    # Partial FC on the GPU: the loss over the kept classes, zero gradient elsewhere
    x, w, y = _data([300], 1000, 128, 7)
    xl, wl = x.float().cuda().requires_grad_(), w.float().cuda().requires_grad_()
    seed = 5
    out = TD.margin_cross_entropy(xl, wl, y.cuda(), class_start=0, num_classes=1000, m2=0.5, ignore_index=IGNORE,
                                  sample_rate=0.25, generator=torch.Generator("cuda").manual_seed(seed))
    out.backward()
    idx = TD._sample_classes(y.cuda(), 0, 1000, IGNORE, 0.25, torch.Generator("cuda").manual_seed(seed)).cpu()
    xr, wr = x.float().double().requires_grad_(), w.float().double()[idx].requires_grad_()
    ref = R.margin_cross_entropy(xr, wr, torch.where(y == IGNORE, IGNORE, torch.searchsorted(idx, y)), m2=0.5,
                                 ignore_index=IGNORE)
    ref.backward()
    assert_close(out, ref.detach(), torch.float32, what="partial fc loss")
    assert_close(xl.grad, xr.grad, torch.float32, what="partial fc dx")
    assert_close(wl.grad[idx], wr.grad, torch.float32, what="partial fc dw")
    kept = torch.zeros(1000, dtype=torch.bool)
    kept[idx] = True
    assert torch.equal(wl.grad.cpu()[~kept], torch.zeros_like(wl.grad.cpu()[~kept]))


@pytest.mark.gpu
def test_cuda_nccl_one_rank():
    """The compiled kernels' shard variants (class index, SHARD finish) under NCCL on one GPU."""
    _spawn(1, _cuda_one_rank, backend="nccl")


def test_needs_a_process_group():
    assert not dist.is_initialized()
    with pytest.raises(RuntimeError, match="init_process_group"):
        TD.margin_cross_entropy(torch.randn(2, 3), torch.randn(2, 3), torch.tensor([0, 1]), class_start=0,
                                num_classes=2)
    with pytest.raises(RuntimeError, match="init_process_group"):
        TD.ShardedMarginSoftmax(3, 10)


def test_example_trains(tmp_path):
    """examples/train_face_sharded.py under torchrun, 2 processes: the loss falls."""
    script = os.path.join(os.path.dirname(__file__), "..", "examples", "train_face_sharded.py")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                          "--standalone", script, "--steps", "40"],
                         capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    losses = [float(line.split()[-1]) for line in run.stdout.splitlines() if line.startswith("step")]
    assert len(losses) >= 4, run.stdout
    assert losses[-1] < 0.5 * losses[0], losses
