"""Segmentation overlap losses (Dice, Jaccard, Tversky, Focal-Tversky): three kernels.

Layout: logits x [B, C, S] (S = the flattened spatial size), targets either class indices
[B, S] (LABELS) or a tensor [B, C, S] (one-hot or soft), all contiguous. A program works
on a [BLOCK_C, BLOCK_S] tile that holds every channel of BLOCK_S pixels, so the softmax
over C is computed in registers.

1. `_sums_kernel`, grid (B, n_split): the activation, the per-pixel ignore mask m and,
   over a contiguous range of pixels, the per-channel partial sums
   I = sum p' g', P = sum p' (or p'^2), G = sum g' (or g'^2), with p' = p m, g' = g m
   (0 wherever m = 0: `where`, so a NaN there does not leak). They go to
   part[B * n_split, 3, C]; no atomics.
2. `_score_kernel`, one program per score row (a sample, or the whole batch with
   `batch=True`): adds its rows of partials in a fixed order, computes
   TI = (k_i I + smooth_nr) / (d_i I + d_p P + d_g G + smooth_dr) per channel, the loss
   1 - TI (or (1 - TI)^expo for Focal-Tversky) times the class weight, and the loss's
   derivatives with respect to I, P and G (`coef`, [R, 3, C], 0 for unscored channels).
   It stores the losses ("none") or one partial sum per row, which `_reduce.finish` adds.
3. `_grad_kernel`, grid (cdiv(S, BLOCK_S), B): recomputes p, g and m from the inputs and
   chains dL/dI, dL/dP, dL/dG (times grad_output) through the sums, the mask and the
   activation to the logits (and to a floating target when it needs a gradient).

So forward + backward read the logits and the targets twice each and write the gradient;
nothing larger than [B, C] is kept between the passes.
"""

from typing import NamedTuple

import torch
import triton
import triton.language as tl

from . import _math, _reduce, _tuning
from ._reduce import MEAN, NONE, SUM  # noqa: F401 (re-exported for the public layer)

# activations
IDENTITY, SIGMOID, SOFTMAX = range(3)
# ignore masks: none; label (or a single-channel target) != ignore; 1 - target[:, ignore];
# pixels whose target is 0 in every channel ignored (MONAI's sentinel rule)
NO_MASK, LABEL_MASK, CHANNEL_MASK, EMPTY_MASK = range(4)


@triton.jit
def _tile(x_ptr, t_ptr, b, s0, C, S, first, ignore,
          ACT: tl.constexpr, LABELS: tl.constexpr, MASK: tl.constexpr,
          BLOCK_C: tl.constexpr, BLOCK_S: tl.constexpr):
    """One tile's channel/pixel offsets and fp32 probabilities p, targets g, pixel mask m.

    p and g are [BLOCK_C, BLOCK_S]; m is [BLOCK_S], 0 outside the image and at ignored
    pixels. Labels: g_c = (label == c + first) (first = 1 for a single channel, whose
    labels are a 0/1 mask); a label outside [0, C + first) that is not `ignore` makes g NaN
    in every channel of its pixel (never used as an address).
    """
    c = tl.arange(0, BLOCK_C)
    s = s0 + tl.arange(0, BLOCK_S)
    cm = c < C
    sm = s < S
    inside = cm[:, None] & sm[None, :]
    offs = b * C * S + c[:, None].to(tl.int64) * S + s[None, :]
    x = tl.load(x_ptr + offs, mask=inside, other=0.0).to(tl.float32)
    if ACT == 2:  # SOFTMAX over the channels of each pixel
        mx = tl.max(tl.where(cm[:, None], x, float("-inf")), axis=0)
        e = tl.where(cm[:, None], _math.exp(x - mx[None, :]), 0.0)
        p = e / tl.sum(e, axis=0)[None, :]
    elif ACT == 1:  # SIGMOID
        p = 1.0 / (1.0 + _math.exp(-x))
    else:
        p = x
    if LABELS:
        lab = tl.load(t_ptr + b * S + s, mask=sm, other=0).to(tl.int64)
        ok = (lab >= 0) & (lab < C + first)
        if MASK != 0:
            used = lab != ignore
            ok = ok | ~used
            m = tl.where(sm & used, 1.0, 0.0)
        else:
            m = tl.where(sm, 1.0, 0.0)
        g = tl.where(lab[None, :] == c[:, None] + first, 1.0, 0.0)
        g = tl.where(ok[None, :], g, float("nan"))
    else:
        g = tl.load(t_ptr + offs, mask=inside, other=0.0).to(tl.float32)
        if MASK == 1:  # single channel: target != ignore
            m = tl.where(tl.sum(g, axis=0) != ignore, 1.0, 0.0)
        elif MASK == 2:  # 1 - target[ignore] (soft for soft targets)
            m = 1.0 - tl.sum(tl.where(c[:, None] == ignore, g, 0.0), axis=0)
        elif MASK == 3:  # target 0 in every channel: ignored
            m = tl.where(tl.sum(g, axis=0) > 0, 1.0, 0.0)
        else:
            m = tl.full([BLOCK_S], 1.0, tl.float32)
        m = tl.where(sm, m, 0.0)
    return c, cm, offs, inside, p, g, m


@triton.jit
def _sums_kernel(x_ptr, t_ptr, part_ptr, C, S, chunk, first, ignore,
                 ACT: tl.constexpr, LABELS: tl.constexpr, MASK: tl.constexpr,
                 SQUARED: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_S: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    split = tl.program_id(1).to(tl.int64)
    acc_i = tl.zeros([BLOCK_C, BLOCK_S], tl.float32)
    acc_p = tl.zeros([BLOCK_C, BLOCK_S], tl.float32)
    acc_g = tl.zeros([BLOCK_C, BLOCK_S], tl.float32)
    start = split * chunk
    end = tl.minimum(start + chunk, S)
    for s0 in range(start, end, BLOCK_S):
        c, cm, offs, inside, p, g, m = _tile(x_ptr, t_ptr, b, s0, C, S, first, ignore,
                                             ACT, LABELS, MASK, BLOCK_C, BLOCK_S)
        keep = inside & (m != 0)[None, :]
        pm = tl.where(keep, p * m[None, :], 0.0)
        gm = tl.where(keep, g * m[None, :], 0.0)
        acc_i += pm * gm
        if SQUARED:
            acc_p += pm * pm
            acc_g += gm * gm
        else:
            acc_p += pm
            acc_g += gm
    c = tl.arange(0, BLOCK_C)
    cm = c < C
    row = part_ptr + (b * tl.num_programs(1) + split) * 3 * C
    tl.store(row + c, tl.sum(acc_i, axis=1), mask=cm)
    tl.store(row + C + c, tl.sum(acc_p, axis=1), mask=cm)
    tl.store(row + 2 * C + c, tl.sum(acc_g, axis=1), mask=cm)


@triton.jit
def _score_kernel(part_ptr, w_ptr, out_ptr, loss_part_ptr, coef_ptr, rows, C, c0, C_out,
                  k_i, d_i, d_p, d_g, smooth_nr, smooth_dr, expo,
                  FOCAL: tl.constexpr, HAS_W: tl.constexpr, REDUCE: tl.constexpr,
                  BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    r = tl.program_id(0).to(tl.int64)
    c = tl.arange(0, BLOCK_C)
    cm = c < C
    acc_i = tl.zeros([BLOCK_R, BLOCK_C], tl.float32)
    acc_p = tl.zeros([BLOCK_R, BLOCK_C], tl.float32)
    acc_g = tl.zeros([BLOCK_R, BLOCK_C], tl.float32)
    for r0 in range(0, rows, BLOCK_R):
        rr = r0 + tl.arange(0, BLOCK_R)
        m = (rr < rows)[:, None] & cm[None, :]
        offs = part_ptr + (r * rows + rr[:, None]) * 3 * C + c[None, :]
        acc_i += tl.load(offs, mask=m, other=0.0)
        acc_p += tl.load(offs + C, mask=m, other=0.0)
        acc_g += tl.load(offs + 2 * C, mask=m, other=0.0)
    big_i = tl.sum(acc_i, axis=0)
    big_p = tl.sum(acc_p, axis=0)
    big_g = tl.sum(acc_g, axis=0)
    num = k_i * big_i + smooth_nr
    den = d_i * big_i + d_p * big_p + d_g * big_g + smooth_dr
    ti = num / den
    den2 = den * den
    base = 1.0 - ti
    if FOCAL:  # (1 - TI)^expo; its derivative is taken as 0 at the minimum 1 - TI = 0
        loss = _math.power(base, expo)
        dl = tl.where(base == 0, 0.0, -expo * _math.power(base, expo - 1.0))
    else:
        loss = base
        dl = tl.full([BLOCK_C], -1.0, tl.float32)
    scored = cm & (c >= c0)
    if HAS_W:  # a zero class weight contributes exactly 0, even where the score is NaN
        w = tl.load(w_ptr + c - c0, mask=scored, other=0.0).to(tl.float32)
        loss = tl.where(w != 0, loss * w, 0.0)
        dl = tl.where(w != 0, dl * w, 0.0)
    if REDUCE == 0:
        tl.store(out_ptr + r * C_out + c - c0, loss.to(out_ptr.dtype.element_ty), mask=scored)
    else:
        tl.store(loss_part_ptr + r, tl.sum(tl.where(scored, loss, 0.0), axis=0))
    coef = coef_ptr + r * 3 * C + c
    tl.store(coef, tl.where(scored, dl * (k_i * den - num * d_i) / den2, 0.0), mask=cm)
    tl.store(coef + C, tl.where(scored, -dl * num * d_p / den2, 0.0), mask=cm)
    tl.store(coef + 2 * C, tl.where(scored, -dl * num * d_g / den2, 0.0), mask=cm)


@triton.jit
def _grad_kernel(x_ptr, t_ptr, coef_ptr, go_ptr, dx_ptr, dt_ptr, C, S, c0, C_out, first, ignore,
                 row_of_b, g_scale,
                 ACT: tl.constexpr, LABELS: tl.constexpr, MASK: tl.constexpr,
                 SQUARED: tl.constexpr, REDUCE: tl.constexpr, NEED_X: tl.constexpr,
                 NEED_T: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_S: tl.constexpr):
    b = tl.program_id(1).to(tl.int64)
    s0 = tl.program_id(0).to(tl.int64) * BLOCK_S
    c, cm, offs, inside, p, g, m = _tile(x_ptr, t_ptr, b, s0, C, S, first, ignore,
                                         ACT, LABELS, MASK, BLOCK_C, BLOCK_S)
    r = b * row_of_b
    coef = coef_ptr + r * 3 * C + c
    if REDUCE == 0:
        go = tl.load(go_ptr + r * C_out + c - c0, mask=cm & (c >= c0), other=0.0).to(tl.float32)
    else:
        go = tl.load(go_ptr).to(tl.float32) * g_scale
    d_i = (go * tl.load(coef, mask=cm, other=0.0))[:, None]
    d_p = (go * tl.load(coef + C, mask=cm, other=0.0))[:, None]
    d_g = (go * tl.load(coef + 2 * C, mask=cm, other=0.0))[:, None]
    used = m != 0
    keep = inside & used[None, :]
    pm = tl.where(keep, p * m[None, :], 0.0)
    gm = tl.where(keep, g * m[None, :], 0.0)
    if NEED_X:
        if SQUARED:
            dpm = d_i * gm + 2.0 * d_p * pm
        else:
            dpm = d_i * gm + d_p
        dp = tl.where(keep, dpm * m[None, :], 0.0)
        if ACT == 2:
            dx = p * (dp - tl.sum(p * dp, axis=0)[None, :])
        elif ACT == 1:
            dx = dp * p * (1.0 - p)
        else:
            dx = dp
        dx = tl.where(used[None, :], dx, 0.0)  # an ignored pixel's NaN does not leak
        tl.store(dx_ptr + offs, dx.to(dx_ptr.dtype.element_ty), mask=inside)
    if NEED_T:
        if SQUARED:
            dgm = d_i * pm + 2.0 * d_g * gm
        else:
            dgm = d_i * pm + d_g
        dt = tl.where(keep, dgm * m[None, :], 0.0)
        tl.store(dt_ptr + offs, dt.to(dt_ptr.dtype.element_ty), mask=inside)


# TILE = BLOCK_C * BLOCK_S elements per tile (BLOCK_S at least 16)
_SPACE = [{"TILE": t, "num_warps": w, "num_stages": 1} for t in (1024, 2048, 4096, 8192) for w in (4, 8)]
_DEFAULT = {"TILE": 2048, "num_warps": 4, "num_stages": 1}
SUMS_SPACE = _tuning.Space("overlap.sums", _sums_kernel, _SPACE, _DEFAULT)
GRAD_SPACE = _tuning.Space("overlap.grad", _grad_kernel, _SPACE, _DEFAULT)
_SCORE_DEFAULT = {"BLOCK_R": 16, "num_warps": 4, "num_stages": 1}
SCORE_SPACE = _tuning.Space("overlap.score", _score_kernel, [_SCORE_DEFAULT], _SCORE_DEFAULT)
_INTERPRETED_PROGRAMS = 4  # forward programs in all under the interpreter (~2 ms each)


class Spec(NamedTuple):
    """Everything about a call but its tensors."""

    act: int
    labels: bool
    mask: int
    squared: bool
    first: int  # labels name channel c by the value c + first (1 for a single channel)
    ignore: int
    c0: int  # first scored channel (1 without the background)
    form: tuple  # (k_i, d_i, d_p, d_g, smooth_nr, smooth_dr): TI = (k_i I + nr) / (d_i I + d_p P + d_g G + dr)
    focal: bool
    expo: float
    batch: bool
    reduce: int


def _device_name(t: torch.Tensor) -> str | None:
    return torch.cuda.get_device_name(t.device) if t.is_cuda else None


def _programs(t: torch.Tensor) -> int:
    """How many forward programs fill the device: 4 per SM."""
    if t.is_cuda:
        return 4 * torch.cuda.get_device_properties(t.device).multi_processor_count
    return _INTERPRETED_PROGRAMS


def _block_s(config: dict, block_c: int) -> int:
    return max(config["TILE"] // block_c, 16)


def _key(spec: Spec, x, t, n_pixels: int) -> tuple:
    dtypes = f"{str(x.dtype).removeprefix('torch.')}/{str(t.dtype).removeprefix('torch.')}"
    return (spec.act, spec.labels, spec.mask, spec.squared, triton.next_power_of_2(x.shape[1]),
            _tuning.bucket(n_pixels), dtypes)


def _flags(spec: Spec) -> dict:
    return dict(ACT=spec.act, LABELS=spec.labels, MASK=spec.mask, SQUARED=spec.squared)


def forward(spec: Spec, x: torch.Tensor, t: torch.Tensor, w: torch.Tensor | None):
    """The loss ([R, C - c0] for "none", else 0-dim, in x's dtype) and coef [R, 3, C] fp32,
    the derivatives of each row's weighted loss with respect to its sums I, P, G.
    R = 1 with `batch`, else B."""
    B, C, S = x.shape
    block_c = triton.next_power_of_2(C)
    rows_out = 1 if spec.batch else B
    c_out = C - spec.c0
    out = torch.empty((rows_out, c_out) if spec.reduce == NONE else (), dtype=x.dtype, device=x.device)
    coef = torch.empty(rows_out, 3, C, dtype=torch.float32, device=x.device)
    parts = {}

    def launch(config):
        block_s = _block_s(config, block_c)
        n_blocks = triton.cdiv(S, block_s)
        per_split = max(1, triton.cdiv(n_blocks, max(1, _programs(x) // max(B, 1))))
        n_split = max(1, triton.cdiv(n_blocks, per_split))
        if n_split not in parts:
            parts[n_split] = torch.empty(B * n_split, 3, C, dtype=torch.float32, device=x.device)
        _sums_kernel[(B, n_split)](x, t, parts[n_split], C, S, per_split * block_s, spec.first,
                                   spec.ignore, **_flags(spec), BLOCK_C=block_c, BLOCK_S=block_s,
                                   **{k: v for k, v in config.items() if k != "TILE"})
        return parts[n_split], n_split

    if B > 0:
        config = _tuning.pick(SUMS_SPACE, _key(spec, x, t, S), _device_name(x), launch)
        part, n_split = launch(config)
    else:
        part, n_split = torch.empty(0, 3, C, dtype=torch.float32, device=x.device), 0
    rows = B * n_split if spec.batch else n_split
    loss_part = _reduce.partials(rows_out, False, x.device)
    w_ptr = w if w is not None else coef

    def score(config):
        _score_kernel[(rows_out,)](part, w_ptr, out, loss_part, coef, rows, C, spec.c0, c_out,
                                   *spec.form, spec.expo, FOCAL=spec.focal, HAS_W=w is not None,
                                   REDUCE=spec.reduce, BLOCK_C=block_c, **config)

    if rows_out > 0:
        score(_tuning.pick(SCORE_SPACE, (block_c,), _device_name(x), score))
    if spec.reduce != NONE:
        _reduce.finish(loss_part, rows_out, out, rows_out * c_out, False, spec.reduce)
    return out, coef


def backward(spec: Spec, x: torch.Tensor, t: torch.Tensor, coef: torch.Tensor, go: torch.Tensor,
             need_x: bool, need_t: bool):
    """Gradients (dx, dt) for the logits and a floating target, None where not needed."""
    B, C, S = x.shape
    dx = torch.empty_like(x) if need_x else None
    dt = torch.empty_like(t) if need_t else None
    if B * S == 0 or not (need_x or need_t):
        return dx, dt
    block_c = triton.next_power_of_2(C)
    count = coef.shape[0] * (C - spec.c0)
    g_scale = 1.0 / count if spec.reduce == MEAN else 1.0
    flags = dict(**_flags(spec), REDUCE=spec.reduce, NEED_X=need_x, NEED_T=need_t)

    def launch(config):
        block_s = _block_s(config, block_c)
        _grad_kernel[(triton.cdiv(S, block_s), B)](
            x, t, coef, go, dx if need_x else x, dt if need_t else x, C, S, spec.c0, C - spec.c0,
            spec.first, spec.ignore, 0 if spec.batch else 1, g_scale, **flags, BLOCK_C=block_c,
            BLOCK_S=block_s, **{k: v for k, v in config.items() if k != "TILE"})

    key = _key(spec, x, t, S) + (spec.reduce, need_x, need_t)
    launch(_tuning.pick(GRAD_SPACE, key, _device_name(x), launch))
    return dx, dt
