"""Without a GPU the perf harness runs once, tiny, under Triton's interpreter (set before
tritonloss is imported)."""

import os

import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"
