"""Compile every kernel specialization that `tritonloss check --quick` launches for a GPU
target (default sm_90) without a GPU: catches what Triton's interpreter lets through
(types that differ between branches, unsupported ops, register blow-ups at compile time).

    python .ci/aot_compile.py [--arch 90] [--family F]

Step 1 (a child process with TRITON_INTERPRET=1) runs the check cases and records each
launch: the kernel, the type of every argument (pointer dtype, i32/i64, fp32) and the
value of every constexpr, plus num_warps / num_stages; and the margin kernels' class-shard
variants that tritonloss.distributed launches. Step 2 (this process, compiled
mode) builds each distinct specialization with triton.compile for the target. Exit 1 if
any fails. Kernels launched only on CUDA paths the check does not reach are not covered.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

_TORCH_TO_TRITON = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16", "float64": "fp64",
                    "int64": "i64", "int32": "i32", "int16": "i16", "int8": "i8", "uint8": "u8", "bool": "i1"}


def record(path: str, family: str | None) -> None:
    """Run the check cases under the interpreter and write the launches to `path`."""
    import inspect

    import torch
    from triton.runtime.interpreter import InterpretedFunction

    launches = {}
    original = InterpretedFunction.run

    def typed(v):
        if isinstance(v, torch.Tensor):
            return "*" + _TORCH_TO_TRITON[str(v.dtype).removeprefix("torch.")]
        if isinstance(v, bool):
            return "i1"
        if isinstance(v, int):
            return "i32" if -(2**31) <= v < 2**31 else "i64"
        if isinstance(v, float):
            return "fp32"
        return None

    def run(self, *args, grid, warmup, **kwargs):
        params = list(inspect.signature(self.fn).parameters.values())
        bound = dict(zip([p.name for p in params], args)) | kwargs
        sig, consts, opts = {}, {}, {}
        for p in params:
            v = bound.get(p.name, p.default)
            if "constexpr" in str(p.annotation):
                sig[p.name] = "constexpr"
                consts[p.name] = v
            else:
                sig[p.name] = typed(v) if v is not None else "constexpr"
                if v is None:
                    consts[p.name] = None
        for k in ("num_warps", "num_stages"):
            if k in kwargs:
                opts[k] = kwargs[k]
        key = json.dumps([self.fn.__module__, self.fn.__name__, sig, consts, opts], sort_keys=True, default=str)
        launches[key] = None
        return original(self, *args, grid=grid, warmup=warmup, **kwargs)

    InterpretedFunction.run = run
    from tritonloss import cli

    cli.check(quick=True, family=family)
    if family in (None, "margin"):
        _shard_launches()
    with open(path, "w") as f:
        json.dump([json.loads(k) for k in launches], f)


def _shard_launches() -> None:
    """The margin kernels' class-shard variants that tritonloss.distributed launches (a
    class index, the SHARD finish), which the check cases (one process) do not reach."""
    import torch
    from tritonloss.kernels import _reduce
    from tritonloss.kernels import margin as K

    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        x, w = torch.randn(5, 8, dtype=dtype), torch.randn(6, 8, dtype=dtype)
        idx, y = torch.tensor([0, 2, 5]), torch.tensor([0, -2, 2, -1, 1])
        nx, nw = K.norms(x), K.norms(w, idx)
        _, rowstat = K.shard_forward(x, w, y, nx, nw, idx, kind=K.COMBINED, norm_x=True, norm_w=True, scale=64.0,
                                     ignore_index=-1, m2=0.5)
        K.backward(torch.ones(5), x, w, None, y, nx, nw, rowstat.view(-1), None, norm_x=True, norm_w=True,
                   scale=64.0, ignore_index=-1, reduce=_reduce.NONE, idx=idx, dx_dtype=torch.float32)


def build(launches: list, arch: int) -> int:
    import importlib

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    target = GPUTarget("cuda", arch, 32)
    failed = 0
    for module, name, sig, consts, opts in launches:
        fn = getattr(importlib.import_module(module), name)
        names = fn.arg_names
        src = ASTSource(fn=fn, signature=sig, constexprs={(names.index(k),): v for k, v in consts.items()})
        try:
            triton.compile(src, target=target, options=opts)
        except Exception as e:  # report every failure, then exit 1
            failed += 1
            print(f"FAIL {module}.{name} {consts}: {str(e).splitlines()[-1] if str(e) else repr(e)}")
    print(f"compiled {len(launches) - failed}/{len(launches)} kernel specializations for sm_{arch} "
          f"(triton {triton.__version__})")
    return 1 if failed else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, default=90)
    parser.add_argument("--family")
    parser.add_argument("--record", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.record:
        record(args.record, args.family)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "launches.json")
        cmd = [sys.executable, __file__, "--record", path] + (["--family", args.family] if args.family else [])
        subprocess.run(cmd, check=True, env=dict(os.environ, TRITON_INTERPRET="1"), stdout=subprocess.DEVNULL)
        with open(path) as f:
            launches = json.load(f)
    os.environ.pop("TRITON_INTERPRET", None)
    return build(launches, args.arch)


if __name__ == "__main__":
    sys.exit(main())
