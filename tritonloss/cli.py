"""`tritonloss info | check [--quick] | tune`.

`check` runs every implemented loss through the kernels on this machine (the GPU, or the
CPU under Triton's interpreter, which it switches on by re-executing itself) and compares
values and gradients with a float64 eager reference. Exit status 1 on any FAIL.
"""

from __future__ import annotations

import argparse
import os
import sys


def _kernel_env_ready() -> bool:
    """True if kernels can run here as things stand; else we re-exec under the interpreter."""
    import torch

    return torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def check_cases():
    """(name, function, make(shape, dtype, device) -> (tensors, options)) per loss."""
    import torch

    import tritonloss.functional as F

    def randn(shape, dtype, device, scale=1.0):
        return (torch.randn(shape, device=device) * scale).to(dtype)

    def pair(scale=1.0, **opts):
        return lambda s, dt, dev: ([randn(s, dt, dev, scale), randn(s, dt, dev, scale)], opts)

    def quantile(s, dt, dev):
        q = torch.linspace(0.1, 0.9, s[-1], device=dev)
        return [randn(s, dt, dev), randn(s, dt, dev)], {"quantiles": q}

    def heatmap(s, dt, dev):
        return [torch.rand(s, device=dev).to(dt), torch.rand(s, device=dev).to(dt)], {}

    def kl_box(s, dt, dev):
        return [randn(s, dt, dev, 2), randn(s, dt, dev, 0.5), randn(s, dt, dev, 2)], {}

    def poisson(s, dt, dev):
        return [randn(s, dt, dev), (torch.rand(s, device=dev) * 4).to(dt)], {"full": True}

    def gaussian(s, dt, dev):
        return [randn(s, dt, dev), randn(s, dt, dev), (torch.rand(s, device=dev) + 0.1).to(dt)], {}

    return [
        ("l1_loss", F.l1_loss, pair()),
        ("mse_loss", F.mse_loss, pair()),
        ("rmse_loss", F.rmse_loss, pair()),
        ("smooth_l1_loss", F.smooth_l1_loss, pair(beta=0.5)),
        ("huber_loss", F.huber_loss, pair(delta=0.7)),
        ("balanced_l1_loss", F.balanced_l1_loss, pair(beta=0.8)),
        ("quantile_loss", F.quantile_loss, quantile),
        ("wing_loss", F.wing_loss, pair(scale=8.0)),
        ("adaptive_wing_loss", F.adaptive_wing_loss, heatmap),
        ("log_cosh_loss", F.log_cosh_loss, pair(scale=3.0)),
        ("kl_box_loss", F.kl_box_loss, kl_box),
        ("poisson_nll_loss", F.poisson_nll_loss, poisson),
        ("gaussian_nll_loss", F.gaussian_nll_loss, gaussian),
    ]


def _max_rel_err(got, ref) -> float:
    """max |got - ref| / max(1, max |ref|): error relative to the tensor's scale."""
    got, ref = got.detach().double(), ref.detach()
    if ref.numel() == 0:
        return 0.0
    return float((got - ref).abs().max()) / max(1.0, float(ref.abs().max()))


def check(quick: bool) -> int:
    import warnings

    import torch

    # the interpreter evaluates both sides of every `where` in numpy, which warns on inf / NaN
    warnings.filterwarnings("ignore", category=RuntimeWarning)

    from tritonloss import reference

    device = "cuda" if torch.cuda.is_available() else "cpu"
    shapes = [(37,), (3, 1100)] if quick else [(37,), (3, 1100), (4, 5, 333)]
    dtypes = [torch.float32] if quick else [torch.float32, torch.float16]
    tol = {torch.float32: 1e-5, torch.float16: 2e-3}
    where = torch.cuda.get_device_name() if device == "cuda" else "CPU (Triton interpreter)"
    print(f"tritonloss check on {where}: max error relative to scale, forward / gradients")
    failed = 0
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    for name, fn, make in check_cases():
        ref_fn = getattr(reference.regression, name)
        worst_f = worst_g = 0.0
        for dtype in dtypes:
            for shape in shapes:
                tensors, opts = make(shape, dtype, device)
                reductions = [{}] if name == "rmse_loss" else [{"reduction": r} for r in ("none", "mean", "sum")]
                for red in reductions:
                    xs = [t.detach().clone().requires_grad_() for t in tensors]
                    out = fn(*xs, **opts, **red)
                    grad = torch.randn(out.shape, generator=gen).to(device=device, dtype=out.dtype)
                    gs = torch.autograd.grad(out, xs, grad)
                    rs = [t.detach().double().requires_grad_() for t in tensors]
                    ropts = {k: v.double() if torch.is_tensor(v) else v for k, v in opts.items()}
                    r = ref_fn(*rs, **ropts, **red)
                    rg = torch.autograd.grad(r, rs, grad.double())
                    worst_f = max(worst_f, _max_rel_err(out, r) / tol[dtype])
                    worst_g = max(worst_g, max(_max_rel_err(a, b) for a, b in zip(gs, rg)) / tol[dtype])
        ok = worst_f <= 1 and worst_g <= 1
        failed += not ok
        print(f"{name:22s} fwd {worst_f:8.2e}  grad {worst_g:8.2e}  (x tolerance)  {'PASS' if ok else 'FAIL'}")
    print(f"{'all passed' if not failed else f'{failed} FAILED'}")
    return 1 if failed else 0


def tune() -> int:
    """Autotune every kernel at the perf shapes (2^20 and 2^24 elements, fp32/fp16/bf16,
    every reduction) and write the winners to kernels/tuned/<gpu-slug>.json."""
    import json

    import torch
    import triton

    from tritonloss.kernels import _tuning

    if not torch.cuda.is_available():
        print("tritonloss tune needs a CUDA GPU: autotuning times kernels on the device")
        return 1
    os.environ["TRITONLOSS_AUTOTUNE"] = "1"
    name = torch.cuda.get_device_name()
    for loss, fn, make in check_cases():
        for n in (2**20, 2**24):
            for dtype in (torch.float32, torch.float16, torch.bfloat16):
                tensors, opts = make((n // 1024, 1024), dtype, "cuda")
                x = tensors[0].requires_grad_()
                reductions = [{}] if loss == "rmse_loss" else [{"reduction": r} for r in ("none", "mean", "sum")]
                for red in reductions:
                    out = fn(x, *tensors[1:], **opts, **red)
                    torch.autograd.grad(out, [x], torch.ones_like(out))
        print(f"tuned {loss}")
    data = {"gpu": name, "triton": _tuning.triton_minor(), "torch": torch.__version__,
            "kernels": _tuning.winners(name)}
    path = _tuning.TUNED_DIR / f"{_tuning.gpu_slug(name)}.json"
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    print(f"wrote {path} (triton {triton.__version__})")
    return 0


def info() -> int:
    import torch
    import triton

    import tritonloss
    from tritonloss import _runtime

    print(f"tritonloss {tritonloss.__version__}, torch {torch.__version__}, triton {triton.__version__}")
    if torch.cuda.is_available():
        print(f"device: {torch.cuda.get_device_name()} (Triton kernels)")
    elif _runtime.INTERPRET:
        print("device: CPU, kernels run under Triton's interpreter")
    else:
        print("device: CPU, eager reference (set TRITON_INTERPRET=1 to run the kernels)")
    print(f"checks: {'on' if _runtime.checks_enabled() else 'off'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tritonloss", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="versions and the execution path on this machine")
    p_check = sub.add_parser("check", help="every loss against its float64 reference")
    p_check.add_argument("--quick", action="store_true", help="fewer shapes, fp32 only")
    sub.add_parser("tune", help="autotune the kernels on this GPU, write kernels/tuned/<gpu>.json")
    args = parser.parse_args(argv)
    if args.command == "check":
        if not _kernel_env_ready():
            env = dict(os.environ, TRITON_INTERPRET="1")
            argv = sys.argv[1:] if argv is None else argv
            os.execve(sys.executable, [sys.executable, "-m", "tritonloss.cli", *argv], env)
        return check(args.quick)
    return tune() if args.command == "tune" else info()


if __name__ == "__main__":
    sys.exit(main())
