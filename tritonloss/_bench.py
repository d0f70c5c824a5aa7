"""`tritonloss bench`: run the perf suites, store and compare their results, plot, and write
the README's results table.

Results are pytest-benchmark JSON files, one per family, under
perf/results/<gpu-slug>/<family>.json. Every benchmark has a `group` (one loss at one
shape and mode) and an `impl` parameter: "tritonloss", "eager" or "compile"; its GPU time is
`extra_info["gpu_ms"]` (do_bench median) when present, else pytest-benchmark's min.
"""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]
PERF = REPO / "perf"
RESULTS = PERF / "results"
README = REPO / "README.md"
SLOWER = 1.10  # --compare fails when a benchmark is more than 10% slower than its baseline
TABLE_START, TABLE_END = "<!-- results:start -->", "<!-- results:end -->"


def suites(family: str | None = None) -> dict[str, pathlib.Path]:
    """{family: perf suite file}, optionally only `family`."""
    found = {p.name.removeprefix("test_").removesuffix("_perf.py"): p for p in sorted(PERF.glob("test_*_perf.py"))}
    if family is None:
        return found
    if family not in found:
        raise ValueError(f"family: expected one of {', '.join(found)}, got {family!r}")
    return {family: found[family]}


def load(path: pathlib.Path) -> dict:
    return json.loads(path.read_text())


def gpu_of(result: dict) -> str | None:
    return result.get("machine_info", {}).get("gpu")


def timings(result: dict) -> dict[tuple[str, str], float]:
    """{(group, impl): milliseconds} of one results file."""
    out = {}
    for b in result.get("benchmarks", []):
        impl = b.get("params", {}).get("impl")
        if impl is None:
            continue
        ms = b.get("extra_info", {}).get("gpu_ms")
        out[(b.get("group") or b["name"], impl)] = ms if ms is not None else b["stats"]["min"] * 1e3
    return out


def compare(new: dict, old: dict) -> list[str]:
    """The benchmarks of `new` more than 10% slower (min of rounds) than in `old`.
    Raises ValueError when the two were measured on different GPUs."""
    if gpu_of(new) != gpu_of(old):
        raise ValueError(f"refusing to compare results from different GPUs: {gpu_of(new)!r} vs {gpu_of(old)!r}")
    before = {b["fullname"]: b["stats"]["min"] for b in old.get("benchmarks", [])}
    slower = []
    for b in new.get("benchmarks", []):
        base = before.get(b["fullname"])
        if base and b["stats"]["min"] > SLOWER * base:
            slower.append(f"{b['fullname']}: {b['stats']['min'] * 1e3:.3f} ms vs {base * 1e3:.3f} ms "
                          f"(+{100 * (b['stats']['min'] / base - 1):.0f}%)")
    return slower


def rows(result: dict) -> list[dict]:
    """Per group: tritonloss time, speedup vs eager and vs compile, throughput, peak memory."""
    t = timings(result)
    extra = {(b.get("group") or b["name"], b.get("params", {}).get("impl")): b.get("extra_info", {})
             for b in result.get("benchmarks", [])}
    out = []
    for group in dict.fromkeys(g for g, _ in t):
        ours = t.get((group, "tritonloss"))
        if ours is None:
            continue
        info = extra.get((group, "tritonloss"), {})
        row = {"group": group, "ms": ours, "peak_mb": info.get("peak_mb")}
        for impl in ("eager", "compile"):
            other = t.get((group, impl))
            row[f"vs_{impl}"] = other / ours if other else None
        if "pct_of_copy" in info:
            row["throughput"] = f"{info['gbps']:.0f} GB/s ({info['pct_of_copy']:.0f}% of copy)"
        elif "pct_of_matmul" in info:
            row["throughput"] = f"{info['tflops']:.0f} TFLOP/s ({info['pct_of_matmul']:.0f}% of bf16 GEMM)"
        else:
            row["throughput"] = ""
        out.append(row)
    return out


def _fmt(v, spec):
    return format(v, spec) if v is not None else "-"


def table(results: dict[str, dict]) -> str:
    """A markdown table of every family's rows, naming the GPU."""
    lines = ["| family | benchmark | tritonloss ms | vs eager | vs torch.compile | throughput | peak MiB |",
             "|---|---|---|---|---|---|---|"]
    gpus = sorted({gpu_of(r) or "?" for r in results.values()})
    for family, result in results.items():
        for r in rows(result):
            lines.append(f"| {family} | {r['group']} | {r['ms']:.3f} | {_fmt(r['vs_eager'], '.2f')}x | "
                         f"{_fmt(r['vs_compile'], '.2f')}x | {r['throughput']} | {_fmt(r['peak_mb'], '.0f')} |")
    return f"Measured on {', '.join(gpus)}:\n\n" + "\n".join(lines)


def write_readme(results: dict[str, dict], readme: pathlib.Path = README) -> None:
    """Replace the README's results table (between the results markers)."""
    text = readme.read_text()
    start, end = text.index(TABLE_START) + len(TABLE_START), text.index(TABLE_END)
    readme.write_text(text[:start] + "\n" + table(results) + "\n" + text[end:])


def plot(results: dict[str, dict], path: str) -> None:
    """Speedup vs eager and vs torch.compile per benchmark, as a horizontal bar chart."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = [(f"{fam}: {r['group']}", r["vs_eager"] or 0.0, r["vs_compile"] or 0.0)
            for fam, res in results.items() for r in rows(res)]
    fig, ax = plt.subplots(figsize=(9, 0.35 * len(data) + 1.5))
    ys = range(len(data))
    ax.barh([y - 0.2 for y in ys], [d[1] for d in data], height=0.4, label="vs eager")
    ax.barh([y + 0.2 for y in ys], [d[2] for d in data], height=0.4, label="vs torch.compile")
    ax.axvline(1.0, color="k", lw=0.8)
    ax.set_yticks(list(ys), [d[0] for d in data], fontsize=7)
    ax.set_xlabel("speedup of tritonloss (x)")
    gpus = sorted({gpu_of(r) or "?" for r in results.values()})
    ax.set_title(f"tritonloss speedups on {', '.join(gpus)}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run_suite(path: pathlib.Path, json_out: pathlib.Path | None, extra: list[str]) -> int:
    cmd = [sys.executable, "-m", "pytest", str(path), "-q", "-p", "no:cacheprovider", *extra]
    if json_out is not None:
        cmd.append(f"--benchmark-json={json_out}")
    return subprocess.call(cmd, cwd=REPO)
