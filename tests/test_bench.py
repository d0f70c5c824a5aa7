"""`tritonloss bench` and `tune`'s file handling: results tables, comparison, plot, README
table, the CPU smoke run, and merging tuned winners (all without a GPU)."""

import json

import pytest
from tritonloss.kernels import _tuning

from tritonloss import _bench, cli


def _result(gpu="NVIDIA H100 80GB HBM3", times=None):
    times = times or {"eager": 3.0, "compile": 1.5, "tritonloss": 1.0}
    benchmarks = []
    for impl, ms in times.items():
        benchmarks.append({
            "name": f"test_x[{impl}]", "fullname": f"perf/test_x_perf.py::test_x[{impl}]", "group": "l1 fwd+bwd",
            "params": {"impl": impl}, "stats": {"min": ms / 1e3, "median": ms / 1e3},
            "extra_info": {"gpu_ms": ms, "gbps": 2000.0 / ms, "pct_of_copy": 80.0 / ms, "peak_mb": 64.0},
        })
    return {"machine_info": {"gpu": gpu}, "benchmarks": benchmarks}


def test_rows_speedups_and_table():
    (row,) = _bench.rows(_result())
    assert row["ms"] == 1.0 and row["vs_eager"] == 3.0 and row["vs_compile"] == 1.5
    assert row["throughput"] == "2000 GB/s (80% of copy)"
    text = _bench.table({"regression": _result()})
    assert "NVIDIA H100 80GB HBM3" in text and "| regression | l1 fwd+bwd | 1.000 | 3.00x | 1.50x |" in text


def test_compare_flags_only_more_than_ten_percent_slower():
    old = _result()
    assert _bench.compare(_result(times={"eager": 3.2, "compile": 1.5, "tritonloss": 1.09}), old) == []
    slower = _bench.compare(_result(times={"eager": 3.0, "compile": 1.5, "tritonloss": 1.2}), old)
    assert len(slower) == 1 and "tritonloss" in slower[0] and "+20%" in slower[0]
    with pytest.raises(ValueError, match="different GPUs"):
        _bench.compare(_result(gpu="NVIDIA A100"), old)


def test_readme_table_and_plot(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{_bench.TABLE_START}\nold\n{_bench.TABLE_END}\nrest\n")
    _bench.write_readme({"regression": _result()}, readme)
    text = readme.read_text()
    assert "old" not in text and "| regression |" in text and text.endswith(f"{_bench.TABLE_END}\nrest\n")
    png = tmp_path / "speedups.png"
    _bench.plot({"regression": _result()}, str(png))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_readme_has_the_results_markers():
    text = _bench.README.read_text()
    assert text.index(_bench.TABLE_START) < text.index(_bench.TABLE_END)


def test_suites_cover_every_family_and_reject_unknown():
    assert {"regression", "classification"} <= set(_bench.suites())
    with pytest.raises(ValueError, match="family"):
        _bench.suites("nope")


def test_bench_without_gpu_explains_and_runs_the_tiny_harness(capsys):
    assert cli.bench("regression", compare=False, plot=None, readme=False, stored=False) == 0
    assert "timing needs a CUDA GPU" in capsys.readouterr().out


def test_tune_without_gpu_refuses(capsys):
    assert cli.tune() == 1 and "needs a CUDA GPU" in capsys.readouterr().out


def test_merge_tuned_winners_keeps_other_kernels_and_drops_stale():
    minor = _tuning.triton_minor()
    old = {"triton": minor, "kernels": {
        "a": {"source": "s1", "configs": {"k1": {"BLOCK": 1}}},
        "b": {"source": "s2", "configs": {"k1": {"BLOCK": 2}}},
    }}
    new = {"a": {"source": "s1", "configs": {"k2": {"BLOCK": 4}}},
           "b": {"source": "s3", "configs": {"k2": {"BLOCK": 8}}}}
    data = _tuning.merge(old, new, "GPU X", "2.14.1")
    assert data["kernels"]["a"]["configs"] == {"k1": {"BLOCK": 1}, "k2": {"BLOCK": 4}}
    assert data["kernels"]["b"] == {"source": "s3", "configs": {"k2": {"BLOCK": 8}}}
    assert data["gpu"] == "GPU X" and data["triton"] == minor
    stale = _tuning.merge({**old, "triton": "0.0"}, {}, "GPU X", "2.14.1")
    assert stale["kernels"] == {}
    json.dumps(data)


def test_autotune_skips_configs_the_gpu_cannot_run():
    from triton.runtime.errors import OutOfResources

    def launch(config):
        raise OutOfResources(300000, 232448, "shared memory")

    assert _tuning._time(launch, {"BLOCK": 1}) == float("inf")
