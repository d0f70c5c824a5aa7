"""Guarantees that hold for every public loss, swept over every `tritonloss check` case:
bitwise determinism, layout independence (non-contiguous and expanded views), clear errors
for wrong dtypes and devices, the eager CPU path inside torch.compile, property tests over
shapes / dtypes / reductions, and on CUDA: no host syncs, torch.compile(fullgraph=True) and
int64 indexing past 2^31 elements."""

import math

import pytest
import torch
from helpers import DEVICE, assert_close
from hypothesis import HealthCheck, assume, given, reject, settings
from hypothesis import strategies as st

from tritonloss import _cases, _elementwise, _runtime

CASES = {case.name: case for case in _cases.all_cases()}
SHAPE = (4, 33)  # small: multi-program and long-row cases are tested per family


def _make(case, seed=0):
    torch.manual_seed(seed)
    return case.make(SHAPE, torch.float32, DEVICE)


def _run(case, args, opts, red):
    xs = [a.detach().clone().requires_grad_(_cases.differentiated(case, i, a)) for i, a in enumerate(args)]
    out = case.fn(*xs, **opts, **red)
    g = torch.linspace(-1, 1, out.numel(), device=out.device).reshape(out.shape).to(out.dtype)
    diff = [x for x in xs if x.requires_grad]
    return out, torch.autograd.grad(out, diff, g) if diff else ()


@pytest.mark.parametrize("name", list(CASES))
def test_bitwise_deterministic(name):
    case = CASES[name]
    args, opts = _make(case)
    for red in case.reductions[-1:]:
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
    first = next(i for i, a in enumerate(args) if a.is_floating_point())
    bad = [a.round().long() if i == first else a for i, a in enumerate(args)]
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


@pytest.mark.parametrize("name", list(CASES))
def test_inside_torch_compile(name, monkeypatch):
    """Every loss works inside torch.compile (AOT autograd), kernels included (interpreted
    here), bitwise equal to eager calls. Losses on the elementwise engine are torch.library
    custom ops and compile with fullgraph=True; the others' launchers run as a graph break."""
    case = CASES[name]
    args, opts = _make(case)
    red = case.reductions[-1]
    calls, real = [], _elementwise._forward
    monkeypatch.setattr(_elementwise, "_forward", lambda *a: calls.append(1) or real(*a))
    plain = _run(case, args, opts, red)
    monkeypatch.undo()
    torch._dynamo.reset()
    compiled = torch.compile(case.fn, fullgraph=bool(calls), backend="aot_eager")
    out, grads = _run(case._replace(fn=compiled), args, opts, red)
    assert torch.equal(out.nan_to_num(), plain[0].nan_to_num())
    for a, b in zip(grads, plain[1]):
        assert torch.equal(a.nan_to_num(), b.nan_to_num()), f"{name}: compiled gradient differs"


# ---------------------------------------------------------------------------------------
# property tests: random shapes (sizes 0, 1, primes), dtypes and reductions per case


settings.register_profile("ci", max_examples=4, derandomize=True, deadline=None,
                          suppress_health_check=list(HealthCheck))
settings.load_profile("ci")

SIZES = st.sampled_from([0, 1, 2, 3, 7, 13, 31, 97])


@pytest.mark.parametrize("name", list(CASES))
@given(dims=st.lists(SIZES, min_size=1, max_size=3), last=st.sampled_from([1, 2, 5, 37, 130]),
       dtype=st.sampled_from([torch.float32, torch.float16]), seed=st.integers(0, 2**16), data=st.data())
def test_property_matches_reference(name, dims, last, dtype, seed, data):
    """Any shape the case accepts (size 0, 1, primes), fp32/fp16, any reduction: output and
    gradients match the float64 reference, and nothing is NaN where the reference is finite."""
    case = CASES[name]
    assume(math.prod(dims) * last <= 2000)  # keeps every case (some are O(n^2)) quick interpreted
    red = data.draw(st.sampled_from(case.reductions))
    torch.manual_seed(seed)
    try:
        args, opts = case.make((*dims, last), dtype, DEVICE)
    except (ValueError, RuntimeError, IndexError):
        reject()  # the case's generator has no valid input at this shape (e.g. too few identities)
    xs = [a.detach().clone().requires_grad_(_cases.differentiated(case, i, a)) for i, a in enumerate(args)]
    try:
        out = case.fn(*xs, **opts, **red)
    except (ValueError, TypeError) as e:  # a documented refusal of this shape, never a crash
        assert str(e)
        return
    rs = [(a.detach().double() if a.is_floating_point() else a).requires_grad_(x.requires_grad)
          for a, x in zip(args, xs)]
    ropts = {k: v.double() if torch.is_tensor(v) and v.is_floating_point() else v for k, v in opts.items()}
    ref = case.ref(*rs, **ropts, **red)
    assert out.shape == ref.shape and out.dtype == dtype
    scale = float(ref.detach().abs().nan_to_num().max()) + 1.0 if ref.numel() else 1.0
    assert_close(out, ref, dtype, scale=scale if not out.dim() else None, what=f"{name} loss")
    diff = [x for x in xs if x.requires_grad]
    if out.numel() and diff and ref.requires_grad:
        g = torch.randn(out.shape, dtype=torch.float64)
        grads = torch.autograd.grad(out, diff, g.to(DEVICE, dtype), allow_unused=True)
        rgrads = torch.autograd.grad(ref, [r for r in rs if r.requires_grad], g, allow_unused=True)
        for a, b in zip(grads, rgrads):
            if a is not None and b is not None:  # atol against max(|ref|, 100): a sweep of shapes and
                # finiteness (a zero reference gradient has float rounding around it); each family's
                # tests assert the precision
                assert_close(a, b, dtype, scale=max(float(b.abs().nan_to_num().max()) if b.numel() else 0.0, 100.0),
                             what=f"{name} grad")


# ---------------------------------------------------------------------------------------
# CUDA only: no host syncs, torch.compile(fullgraph=True), int64 indexing past 2^31


@pytest.mark.gpu
@pytest.mark.parametrize("name", list(CASES))
def test_no_host_sync_on_cuda(name):
    case = CASES[name]
    args, opts = case.make(SHAPE, torch.float32, "cuda")
    xs = [a.requires_grad_(_cases.differentiated(case, i, a)) for i, a in enumerate(args)]
    for red in case.reductions:
        out = case.fn(*xs, **opts, **red)  # first call: autotuning (do_bench) may synchronise
        if any(x.requires_grad for x in xs):
            torch.autograd.grad(out.sum(), [x for x in xs if x.requires_grad])
        torch.cuda.set_sync_debug_mode("error")
        try:
            out = case.fn(*xs, **opts, **red)
            if any(x.requires_grad for x in xs):
                torch.autograd.grad(out.sum(), [x for x in xs if x.requires_grad])
        finally:
            torch.cuda.set_sync_debug_mode("default")


@pytest.mark.gpu
@pytest.mark.parametrize("name", list(CASES))
def test_inside_torch_compile_fullgraph_on_cuda(name):
    case = CASES[name]
    torch.manual_seed(0)
    args, opts = case.make(SHAPE, torch.float32, "cuda")
    red = case.reductions[-1]
    plain = _run(case, args, opts, red)
    torch._dynamo.reset()
    compiled = _run(case._replace(fn=torch.compile(case.fn, fullgraph=True)), args, opts, red)
    torch.testing.assert_close(compiled[0], plain[0], equal_nan=True)
    for a, b in zip(compiled[1], plain[1]):
        torch.testing.assert_close(a, b, equal_nan=True)


def _needs_gpu_memory(gib):
    free = torch.cuda.mem_get_info()[0] if torch.cuda.is_available() else 0
    if free < gib * 2**30:
        pytest.skip(f"needs {gib} GiB of free GPU memory, {free / 2**30:.1f} GiB free")


@pytest.mark.gpu
def test_elementwise_past_2_31_elements():
    import tritonloss

    _needs_gpu_memory(24)
    n = 2**31 + 3
    x = torch.zeros(n, device="cuda", dtype=torch.float16)
    y = torch.zeros(n, device="cuda", dtype=torch.float16)
    x[-1], y[0] = 2.0, 1.0
    x.requires_grad_()
    loss = tritonloss.mse_loss(x, y, reduction="sum")
    assert float(loss) == 5.0
    (g,) = torch.autograd.grad(loss, x)
    assert float(g[-1]) == 4.0 and float(g[0]) == -2.0 and float(g[1:-1].abs().max()) == 0.0


@pytest.mark.gpu
def test_row_reduction_past_2_31_elements():
    import tritonloss

    _needs_gpu_memory(24)
    x = torch.zeros(16, 2**27 + 5, device="cuda", dtype=torch.float16)  # 2^31 + 80 elements
    x[-1, -1] = 8.0
    t = torch.full((16,), 2**27 + 4, device="cuda")
    loss = tritonloss.cross_entropy(x.requires_grad_(), t, reduction="none")
    ref = torch.nn.functional.cross_entropy(x[-1:].float(), t[-1:], reduction="none")
    torch.testing.assert_close(loss[-1:].float(), ref, rtol=1e-3, atol=1e-3)
