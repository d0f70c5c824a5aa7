"""The command line: `tritonloss info` and `tritonloss check --quick`."""

import subprocess
import sys

from tritonloss import cli


def test_check_quick_passes_every_loss(capsys):
    assert cli.check(quick=True) == 0
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.endswith(("PASS", "FAIL"))]
    assert len(lines) == 13 and all(line.endswith("PASS") for line in lines)


def test_check_fails_on_a_wrong_kernel(monkeypatch, capsys):
    import tritonloss.kernels.regression as K

    original = K.forward

    def broken(*args, **kwargs):
        out, stats = original(*args, **kwargs)
        return out * 1.01, stats

    monkeypatch.setattr(K, "forward", broken)
    assert cli.check(quick=True) == 1
    assert "FAIL" in capsys.readouterr().out


def test_info_runs():
    out = subprocess.run([sys.executable, "-m", "tritonloss.cli", "info"], capture_output=True,
                         text=True, check=True)
    assert "tritonloss" in out.stdout and "device" in out.stdout
