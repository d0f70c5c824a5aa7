"""Without a GPU the perf harness runs once, tiny, under Triton's interpreter (set before
tritonloss is imported)."""

import os

import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"


def pytest_benchmark_update_machine_info(config, machine_info):
    """GPU name, driver, torch and triton in every stored result (`tritonloss bench`
    refuses to compare results of different GPUs)."""
    import subprocess

    import triton

    machine_info["torch"] = torch.__version__
    machine_info["triton"] = triton.__version__
    if torch.cuda.is_available():
        machine_info["gpu"] = torch.cuda.get_device_name()
        try:
            machine_info["driver"] = subprocess.run(
                ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                capture_output=True, text=True, check=True).stdout.split("\n")[0].strip()
        except (OSError, subprocess.CalledProcessError):
            machine_info["driver"] = None
