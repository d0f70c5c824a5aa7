"""`tritonloss info | check [--quick] | tune | bench`.

`check` runs every implemented loss through the kernels on this machine (the GPU, or the
CPU under Triton's interpreter, which it switches on by re-executing itself) and compares
values and gradients with a float64 eager reference. Exit status 1 on any FAIL.
`tune` autotunes the kernels on a CUDA GPU and stores the winners; `bench` runs the perf
suites (tritonloss/_bench.py), stores or compares their results, plots and reports them.
"""

from __future__ import annotations

import argparse
import os
import sys


def _kernel_env_ready() -> bool:
    """True if kernels can run here as things stand; else we re-exec under the interpreter."""
    import torch

    return torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _max_rel_err(got, ref) -> float:
    """max |got - ref| / max(1, max |ref|): error relative to the tensor's scale."""
    got, ref = got.detach().double(), ref.detach()
    if ref.numel() == 0:
        return 0.0
    return float((got - ref).abs().max()) / max(1.0, float(ref.abs().max()))


def check(quick: bool, family: str | None = None) -> int:
    import warnings

    import torch

    # the interpreter evaluates both sides of every `where` in numpy, which warns on inf / NaN
    warnings.filterwarnings("ignore", category=RuntimeWarning)
    warnings.filterwarnings("ignore", message="reduction: 'mean' divides")  # torch's kl_div notice

    from tritonloss import _cases

    device = "cuda" if torch.cuda.is_available() else "cpu"
    shapes = [(37,), (3, 1100)] if quick else [(37,), (3, 1100), (4, 5, 333)]
    dtypes = [torch.float32] if quick else [torch.float32, torch.float16]
    tol = {torch.float32: 1e-5, torch.float16: 2e-3}
    where = torch.cuda.get_device_name() if device == "cuda" else "CPU (Triton interpreter)"
    print(f"tritonloss check on {where}: max error relative to scale, forward / gradients")
    failed = 0
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    for case in _cases.family_cases(family) if family else _cases.all_cases():
        worst_f = worst_g = 0.0
        for dtype in dtypes:
            for shape in shapes:
                args, opts = case.make(shape, dtype, device)
                for red in case.reductions:
                    xs = [a.detach().clone().requires_grad_(_cases.differentiated(case, i, a))
                          for i, a in enumerate(args)]
                    out = case.fn(*xs, **opts, **red)
                    grad = torch.randn(out.shape, generator=gen).to(device=device, dtype=out.dtype)
                    diff = [x for x in xs if x.requires_grad]
                    gs = torch.autograd.grad(out, diff, grad) if diff else ()
                    rs = [(a.detach().double() if a.is_floating_point() else a).requires_grad_(x.requires_grad)
                          for a, x in zip(args, xs)]
                    ropts = {k: v.double() if torch.is_tensor(v) and v.is_floating_point() else v
                             for k, v in opts.items()}
                    r = case.ref(*rs, **ropts, **red)
                    rg = torch.autograd.grad(r, [x for x in rs if x.requires_grad], grad.double()) if diff else ()
                    worst_f = max(worst_f, _max_rel_err(out, r) / tol[dtype])
                    worst_g = max([worst_g, *(_max_rel_err(a, b) / tol[dtype] for a, b in zip(gs, rg))])
        ok = worst_f <= 1 and worst_g <= 1
        failed += not ok
        print(f"{case.name:42s} fwd {worst_f:8.2e}  grad {worst_g:8.2e}  (x tolerance)  {'PASS' if ok else 'FAIL'}")
    print(f"{'all passed' if not failed else f'{failed} FAILED'}")
    return 1 if failed else 0


def tune(family: str | None = None, quick: bool = False) -> int:
    """Autotune every kernel (or one family's) at the perf suites' shapes, fp32/fp16/bf16
    (fp32 and the first shape with --quick), every reduction, and merge the winners into
    kernels/tuned/<gpu-slug>.json."""
    import json

    import torch
    import triton

    from tritonloss import _cases
    from tritonloss.kernels import _tuning

    if not torch.cuda.is_available():
        print("tritonloss tune needs a CUDA GPU: autotuning times kernels on the device")
        return 1
    os.environ["TRITONLOSS_AUTOTUNE"] = "1"
    name = torch.cuda.get_device_name()
    dtypes = (torch.float32,) if quick else (torch.float32, torch.float16, torch.bfloat16)
    for case in _cases.family_cases(family) if family else _cases.all_cases():
        for shape in case.tune_shapes[:1] if quick else case.tune_shapes:
            for dtype in dtypes:
                args, opts = case.make(shape, dtype, "cuda")
                xs = [a.requires_grad_(_cases.differentiated(case, i, a)) for i, a in enumerate(args)]
                for red in case.reductions:
                    out = case.fn(*xs, **opts, **red)
                    if any(x.requires_grad for x in xs):
                        torch.autograd.grad(out, [x for x in xs if x.requires_grad], torch.ones_like(out))
        print(f"tuned {case.name}")
    path = _tuning.TUNED_DIR / f"{_tuning.gpu_slug(name)}.json"
    old = json.loads(path.read_text()) if path.exists() else {}
    data = _tuning.merge(old, _tuning.winners(name), name, torch.__version__)
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    print(f"wrote {path} (triton {triton.__version__})")
    return 0


def bench(family: str | None, compare: bool, plot: str | None, readme: bool, stored: bool) -> int:
    """Run the perf suites (or, with `stored`, read the stored results), print the table;
    store the results, or with `compare` check them against the stored baseline."""
    import torch

    from tritonloss import _bench
    from tritonloss.kernels import _tuning

    chosen = _bench.suites(family)
    if stored:
        results = {f"{d.name}/{p.stem}": _bench.load(p) for d in sorted(_bench.RESULTS.iterdir()) if d.is_dir()
                   for p in sorted(d.glob("*.json")) if family is None or p.stem == family}
        if not results:
            print(f"no stored results under {_bench.RESULTS}")
            return 1
    elif not torch.cuda.is_available():
        print("tritonloss bench: timing needs a CUDA GPU and there is none here, so each suite's harness runs "
              "once on tiny shapes under Triton's interpreter (a smoke test; no timings).")
        return max(_bench.run_suite(p, None, ["-k", "harness_tiny"]) for p in chosen.values())
    else:
        outdir = _bench.RESULTS / _tuning.gpu_slug(torch.cuda.get_device_name())
        outdir.mkdir(parents=True, exist_ok=True)
        results, status = {}, 0
        for fam, suite in chosen.items():
            new_path, base_path = outdir / f".{fam}.new.json", outdir / f"{fam}.json"
            status = _bench.run_suite(suite, new_path, []) or status
            if not new_path.exists():
                continue
            results[fam] = _bench.load(new_path)
            if compare and base_path.exists():
                try:
                    slower = _bench.compare(results[fam], _bench.load(base_path))
                except ValueError as e:
                    print(e)
                    return 2
                for line in slower:
                    print(f"SLOWER {line}")
                status = status or (1 if slower else 0)
                new_path.unlink()
            else:
                new_path.replace(base_path)
        if status:
            print("tritonloss bench: FAILED (a suite failed or a benchmark is >10% slower than its baseline)")
    print(_bench.table(results))
    if plot:
        _bench.plot(results, plot)
        print(f"wrote {plot}")
    if readme:
        _bench.write_readme(results)
        print(f"updated the results table in {_bench.README}")
    return 0 if stored else status


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
    p_check.add_argument("--family", help="only this family (regression, classification, ...)")
    p_tune = sub.add_parser("tune", help="autotune the kernels on this GPU, write kernels/tuned/<gpu>.json")
    p_tune.add_argument("--family", help="only this family's kernels")
    p_tune.add_argument("--quick", action="store_true", help="fp32 and one shape per loss")
    p_bench = sub.add_parser("bench", help="run the perf suites, store / compare results, plot")
    p_bench.add_argument("--family", help="only this family's suite")
    p_bench.add_argument("--compare", action="store_true",
                         help="fail if a benchmark is >10%% slower than the stored baseline (stores nothing)")
    p_bench.add_argument("--plot", metavar="PNG", help="write a speedup plot")
    p_bench.add_argument("--readme", action="store_true", help="write the results table into README.md")
    p_bench.add_argument("--stored", action="store_true", help="report the stored results, run nothing")
    args = parser.parse_args(argv)
    if args.command == "check":
        if not _kernel_env_ready():
            env = dict(os.environ, TRITON_INTERPRET="1")
            argv = sys.argv[1:] if argv is None else argv
            os.execve(sys.executable, [sys.executable, "-m", "tritonloss.cli", *argv], env)
        return check(args.quick, args.family)
    if args.command == "tune":
        return tune(args.family, args.quick)
    if args.command == "bench":
        return bench(args.family, args.compare, args.plot, args.readme, args.stored)
    return info()


if __name__ == "__main__":
    sys.exit(main())
