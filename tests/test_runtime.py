"""The runtime layer: path choice, the checks switch, the autotune prune hook and the
committed-winner lookup."""

import json
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as TF
from helpers import DEVICE
from tritonloss.kernels import _tuning
from tritonloss.kernels import regression as K

import tritonloss
from tritonloss import _runtime


def test_float64_takes_the_eager_reference():
    x = torch.randn(5, dtype=torch.float64, device=DEVICE, requires_grad=True)
    y = torch.randn(5, dtype=torch.float64, device=DEVICE)
    assert not _runtime.use_kernels(x, y)
    assert torch.autograd.gradcheck(lambda a: tritonloss.huber_loss(a, y, delta=0.5), (x,))


def test_cpu_without_interpreter_takes_the_eager_reference(monkeypatch):
    monkeypatch.setattr(_runtime, "INTERPRET", False)
    monkeypatch.setattr(K, "forward", None)  # a kernel call would fail
    x, y = torch.randn(6, 3), torch.randn(6, 3)
    assert tritonloss.mse_loss(x, y).item() == TF.mse_loss(x, y).item()
    assert tritonloss.wing_loss(x, y, reduction="none").shape == (6, 3)


def test_kernel_path_here():
    x = torch.randn(3, device=DEVICE)
    assert _runtime.use_kernels(x, x)


def test_set_checks_switches_data_checks_on_cuda():
    t = torch.zeros(1)
    assert _runtime.may_inspect(t)  # CPU: always
    tritonloss.set_checks(True)
    try:
        assert tritonloss.checks_enabled()
    finally:
        tritonloss.set_checks(False)
    assert not tritonloss.checks_enabled()


def test_checks_env_variable():
    code = "import tritonloss; print(tritonloss.checks_enabled())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={"TRITONLOSS_CHECKS": "1", "PATH": ""}, check=True)
    assert out.stdout.strip() == "True"


# --- tuning ------------------------------------------------------------------------------

SPACE = _tuning.Space("test.space", K._forward_kernel,
                      [{"BLOCK": 64, "num_warps": 4}, {"BLOCK": 128, "num_warps": 4}],
                      {"BLOCK": 32, "num_warps": 4})
KEY = (1, 2, 1024, "float32")


def _write_tuned(tmp_path, name, triton_version, source, configs):
    data = {"gpu": name, "triton": triton_version, "torch": torch.__version__,
            "kernels": {"test.space": {"source": source, "configs": configs}}}
    (tmp_path / f"{_tuning.gpu_slug(name)}.json").write_text(json.dumps(data))


@pytest.fixture
def tuned_dir(tmp_path, monkeypatch):
    monkeypatch.setattr(_tuning, "TUNED_DIR", tmp_path)
    monkeypatch.setattr(_tuning, "_INTERPRET", False)
    monkeypatch.delenv("TRITONLOSS_AUTOTUNE", raising=False)
    _tuning.load_tuned.cache_clear()
    original = _tuning.load_tuned.__wrapped__

    def load(device_name, directory=str(tmp_path)):
        return original(device_name, directory)

    monkeypatch.setattr(_tuning, "load_tuned", load)
    return tmp_path


def test_gpu_slug():
    assert _tuning.gpu_slug("NVIDIA H100 80GB HBM3") == "nvidia-h100-80gb-hbm3"


def test_bucket():
    assert [_tuning.bucket(n) for n in (1, 2, 3, 1000, 1024, 1025)] == [1, 2, 4, 1024, 1024, 2048]


def test_prune_default_under_interpreter_or_autotune_off(monkeypatch):
    monkeypatch.setattr(_tuning, "_INTERPRET", True)
    assert _tuning.prune(SPACE, KEY, "GPU X") == [SPACE.default]
    monkeypatch.setattr(_tuning, "_INTERPRET", False)
    monkeypatch.setenv("TRITONLOSS_AUTOTUNE", "0")
    assert _tuning.prune(SPACE, KEY, "GPU X") == [SPACE.default]


def test_prune_full_space_without_a_stored_winner(tuned_dir):
    assert _tuning.prune(SPACE, KEY, "GPU X") == SPACE.configs


def test_prune_uses_the_stored_winner(tuned_dir):
    winner = {"BLOCK": 128, "num_warps": 8}
    _write_tuned(tuned_dir, "GPU X", _tuning.triton_minor(), SPACE.source_hash,
                 {_tuning.key_string(KEY): winner})
    assert _tuning.prune(SPACE, KEY, "GPU X") == [winner]
    assert _tuning.prune(SPACE, (1, 2, 2048, "float32"), "GPU X") == SPACE.configs
    assert _tuning.prune(SPACE, KEY, "GPU Y") == SPACE.configs


@pytest.mark.parametrize("triton_version,source", [("2.0", None), (None, "0000000000000000")])
def test_stale_entries_are_ignored(tuned_dir, triton_version, source):
    _write_tuned(tuned_dir, "GPU X", triton_version or _tuning.triton_minor(),
                 source or SPACE.source_hash, {_tuning.key_string(KEY): {"BLOCK": 128}})
    assert _tuning.prune(SPACE, KEY, "GPU X") == SPACE.configs


def test_corrupt_file_is_ignored(tuned_dir):
    (tuned_dir / "gpu-x.json").write_text("{not json")
    assert _tuning.prune(SPACE, KEY, "GPU X") == SPACE.configs


def test_pick_caches_and_records_winners(monkeypatch):
    monkeypatch.setattr(_tuning, "_INTERPRET", True)
    launched = []
    cfg = _tuning.pick(SPACE, ("k",), "GPU Z", launched.append)
    assert cfg == SPACE.default and launched == []
    assert _tuning.winners("GPU Z") == {
        "test.space": {"source": SPACE.source_hash, "configs": {"k": SPACE.default}}}


def test_committed_tuned_files_are_well_formed():
    for path in _tuning.TUNED_DIR.glob("*.json"):
        data = json.loads(path.read_text())
        assert {"gpu", "triton", "torch", "kernels"} <= set(data), path
        assert path.stem == _tuning.gpu_slug(data["gpu"])
        spaces = {s.name: s for s in _tuning.Space.registry}
        for name, entry in data["kernels"].items():
            assert name in spaces, f"{path}: unknown kernel {name}"
            for config in entry["configs"].values():
                assert set(config) <= set(spaces[name].default) | {"num_warps", "num_stages"}


@pytest.mark.gpu
def test_autotune_on_gpu_picks_a_config_from_the_space(monkeypatch):
    monkeypatch.setenv("TRITONLOSS_AUTOTUNE", "1")
    x = torch.randn(3 * 2**20, device="cuda", requires_grad=True)
    y = torch.randn(3 * 2**20, device="cuda")
    out = tritonloss.mse_loss(x, y)
    out.backward()
    dev = torch.cuda.get_device_name()
    picked = _tuning.winners(dev)
    assert "regression.forward" in picked and "regression.backward" in picked
    for entry in picked.values():
        for cfg in entry["configs"].values():
            assert cfg in K.FORWARD_SPACE.configs
