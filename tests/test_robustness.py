"""Guarantees that hold for every public loss, swept over every `tritonloss check` case:
bitwise determinism, layout independence (non-contiguous and expanded views), clear errors
for wrong dtypes and devices, and the eager CPU path inside torch.compile."""

import pytest
import torch
from helpers import DEVICE

from tritonloss import _cases, _runtime

CASES = {case.name: case for case in _cases.all_cases()}
SHAPE = (5, 300)  # two programs of the elementwise kernels; long rows are tested per family


def _make(case, seed=0):
    torch.manual_seed(seed)
    return case.make(SHAPE, torch.float32, DEVICE)


def _run(case, args, opts, red):
    xs = [a.detach().clone().requires_grad_(_cases.differentiated(case, i, a)) for i, a in enumerate(args)]
    out = case.fn(*xs, **opts, **red)
    g = torch.linspace(-1, 1, out.numel(), device=out.device).reshape(out.shape).to(out.dtype)
    grads = torch.autograd.grad(out, [x for x in xs if x.requires_grad], g)
    return out, grads


@pytest.mark.parametrize("name", list(CASES))
def test_bitwise_deterministic(name):
    case = CASES[name]
    args, opts = _make(case)
    for red in case.reductions:
        (o1, g1), (o2, g2) = _run(case, args, opts, red), _run(case, args, opts, red)
        assert torch.equal(o1, o2) or (o1.isnan() == o2.isnan()).all() and torch.equal(o1.nan_to_num(), o2.nan_to_num())
        for a, b in zip(g1, g2):
            assert torch.equal(a.nan_to_num(), b.nan_to_num()), f"{name} {red}: gradients differ between runs"


def _relayout(t: torch.Tensor) -> torch.Tensor:
    """The same values in a non-contiguous layout (or a stride-0 expansion for 1 element)."""
    if t.dim() >= 2:
        return t.transpose(0, -1).contiguous().transpose(0, -1)
    if t.dim() == 1 and t.numel() > 1:
        buf = torch.empty(2 * t.numel(), dtype=t.dtype, device=t.device)
        buf[::2] = t
        return buf[::2]
    return t


@pytest.mark.parametrize("name", list(CASES))
def test_non_contiguous_inputs_give_the_same_result(name):
    case = CASES[name]
    args, opts = _make(case)
    red = case.reductions[0]
    out, grads = _run(case, args, opts, red)
    out2, grads2 = _run(case, [_relayout(a) for a in args], opts, red)
    assert torch.equal(out.nan_to_num(), out2.nan_to_num())
    for a, b in zip(grads, grads2):
        assert torch.allclose(a.nan_to_num(), b.nan_to_num(), rtol=0, atol=0), f"{name}: gradient depends on layout"


@pytest.mark.parametrize("name", list(CASES))
def test_integer_input_raises_clearly(name):
    case = CASES[name]
    args, opts = _make(case)
    bad = [args[0].round().long(), *args[1:]]
    with pytest.raises((TypeError, ValueError)):
        case.fn(*bad, **opts, **case.reductions[0])


@pytest.mark.parametrize("name", list(CASES))
def test_tensor_on_another_device_raises_clearly(name):
    case = CASES[name]
    args, opts = _make(case)
    if len(args) < 2:
        pytest.skip("a single tensor argument: nothing to mismatch")
    bad = [args[0], args[1].to("meta"), *args[2:]]
    with pytest.raises(ValueError, match="device|meta"):
        case.fn(*bad, **opts, **case.reductions[0])


@pytest.mark.parametrize("name", list(CASES))
def test_eager_cpu_path_inside_torch_compile(name, monkeypatch):
    """Without the interpreter the CPU runs the eager reference: it works compiled (AOT
    autograd), with the same values and gradients as uncompiled."""
    monkeypatch.setattr(_runtime, "INTERPRET", False)
    case = CASES[name]
    torch.manual_seed(0)
    args, opts = case.make(SHAPE, torch.float32, "cpu")
    red = case.reductions[-1]
    eager = _run(case, args, opts, red)
    torch._dynamo.reset()
    compiled_case = case._replace(fn=torch.compile(case.fn, backend="aot_eager"))
    out, grads = _run(compiled_case, args, opts, red)
    torch.testing.assert_close(out, eager[0], equal_nan=True)
    for a, b in zip(grads, eager[1]):
        torch.testing.assert_close(a, b, equal_nan=True)
