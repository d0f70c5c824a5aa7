"""The second stage of every deterministic reduction: one program adds the per-program
partial sums in a fixed order.

A first-stage kernel writes `n_part` partial loss sums to `part[0:n_part]` and, when the
normaliser is data dependent (weights, non-ignored counts), `n_part` partial normalisers
to `part[n_part:2 n_part]`. `finish` turns them into the 0-dim result and the fp32
`stats = [normaliser, result]` that backward kernels read (no host sync anywhere).
"""

import torch
import triton
import triton.language as tl

# reductions, as constexpr values in every family's kernels; RMS is sqrt of the mean
NONE, SUM, MEAN, RMS = range(4)
_BLOCK = 1024


@triton.jit
def _finish_kernel(part_ptr, out_ptr, stat_ptr, n_part, count,
                   HAS_NORM: tl.constexpr, REDUCE: tl.constexpr, BLOCK: tl.constexpr):
    acc = tl.zeros([BLOCK], tl.float32)
    acc_w = tl.zeros([BLOCK], tl.float32)
    for start in range(0, n_part, BLOCK):
        idx = start + tl.arange(0, BLOCK)
        m = idx < n_part
        acc += tl.load(part_ptr + idx, mask=m, other=0.0)
        if HAS_NORM:
            acc_w += tl.load(part_ptr + n_part + idx, mask=m, other=0.0)
    total = tl.sum(acc, axis=0)
    if HAS_NORM:
        norm = tl.sum(acc_w, axis=0)
    else:
        norm = count
    if REDUCE == 1:
        result = total
    elif REDUCE == 2:
        result = total / norm
    else:
        result = tl.sqrt(total / norm)
    tl.store(out_ptr, result.to(out_ptr.dtype.element_ty))
    tl.store(stat_ptr, norm)
    tl.store(stat_ptr + 1, result)


def partials(n_part: int, has_norm: bool, device) -> torch.Tensor:
    """The fp32 buffer a first stage of `n_part` programs writes into."""
    return torch.empty(2 * n_part if has_norm else n_part, dtype=torch.float32, device=device)


def finish(part: torch.Tensor, n_part: int, out: torch.Tensor, count: float, has_norm: bool,
           reduce: int) -> torch.Tensor:
    """Write the reduced loss into the 0-dim `out`; return stats = fp32 [normaliser, result].
    `count` is the normaliser when the partials carry none (has_norm False)."""
    stats = torch.empty(2, dtype=torch.float32, device=out.device)
    _finish_kernel[(1,)](part, out, stats, n_part, float(count), HAS_NORM=has_norm,
                         REDUCE=reduce, BLOCK=_BLOCK)
    return stats
