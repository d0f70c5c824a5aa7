"""Runs the kernels under Triton's interpreter when no CUDA device is present. This must
happen before tritonloss is imported: Triton decides at decoration time."""

import os

import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402

import tritonloss  # noqa: E402, F401


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (none here; kernels ran interpreted)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
