"""Shared test helpers: the device, the tolerance table, NaN-padded inputs, comparisons."""

import torch

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
INTERPRETED = DEVICE == "cpu"

# (rtol, atol) by dtype of the tensor under test. rtol applies to each element's reference
# value; atol is relative to the tensor's scale (its largest reference magnitude, or for a
# reduced loss the reduction of |loss| over the elements), so it grows with the reduction.
TOL = {
    torch.float32: (1e-5, 1e-6),
    torch.float16: (2e-3, 1e-3),
    # the interpreter stores bf16 by truncation, not rounding: up to 1 ulp (2^-7 relative)
    torch.bfloat16: (1.6e-2, 8e-3),
}


def padded(t: torch.Tensor, requires_grad: bool = True) -> torch.Tensor:
    """A copy of `t` as a non-contiguous view into a larger NaN-filled buffer: a kernel
    that reads outside the tensor sees NaN."""
    shape = t.shape if t.dim() else (1,)
    buf = torch.full((*shape[:-1], shape[-1] + 5), float("nan"), dtype=t.dtype, device=t.device)
    view = buf[..., 2 : 2 + shape[-1]]
    view.copy_(t.reshape(shape))
    view = view.reshape(t.shape) if t.dim() else view[0]
    return view.detach().requires_grad_(requires_grad)


def assert_close(got: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype, scale=None, what=""):
    """|got - ref| <= rtol |ref| + atol * scale, elementwise; NaN must match NaN."""
    rtol, atol = TOL[dtype]
    assert got.shape == ref.shape, f"{what}: shape {tuple(got.shape)} != {tuple(ref.shape)}"
    got, ref = got.detach().double().cpu(), ref.detach().double().cpu()
    assert torch.equal(torch.isnan(got), torch.isnan(ref)), f"{what}: NaN pattern differs"
    finite = ~torch.isnan(ref)
    got, ref = got[finite], ref[finite]
    if ref.numel() == 0:
        return
    if scale is None:
        scale = float(ref.abs().max())
    bound = rtol * ref.abs() + atol * scale + 1e-30
    err = (got - ref).abs()
    worst = int((err - bound).argmax())
    assert bool((err <= bound).all()), (
        f"{what}: max error {float(err.max()):.3e}; at worst element got {float(got[worst]):.8e} "
        f"ref {float(ref[worst]):.8e} bound {float(bound[worst]):.3e}"
    )
