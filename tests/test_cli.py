"""The command line: `tritonloss info` and `tritonloss check --quick`."""

import subprocess
import sys

from tritonloss import _cases, cli


def test_check_quick_passes_a_family(capsys):
    """The whole catalog runs in CI's main command (`tritonloss check --quick`); here one family."""
    assert cli.check(quick=True, family="regression") == 0
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.endswith(("PASS", "FAIL"))]
    assert len(lines) == 13 and all(line.endswith("PASS") for line in lines)


def test_every_public_function_has_a_check_case():
    import tritonloss

    covered = {case.fn for case in _cases.all_cases()}
    missing = [n for n in tritonloss.functional.__all__ if getattr(tritonloss.functional, n) not in covered]
    assert not missing, f"no `tritonloss check` case for {missing}"


def test_check_fails_on_a_wrong_kernel(monkeypatch, capsys):
    import tritonloss.kernels.regression as K

    original = K.forward

    def broken(*args, **kwargs):
        out, stats = original(*args, **kwargs)
        return out * 1.01, stats

    monkeypatch.setattr(K, "forward", broken)
    assert cli.check(quick=True, family="regression") == 1
    assert "FAIL" in capsys.readouterr().out


def test_info_runs():
    out = subprocess.run([sys.executable, "-m", "tritonloss.cli", "info"], capture_output=True,
                         text=True, check=True)
    assert "tritonloss" in out.stdout and "device" in out.stdout
