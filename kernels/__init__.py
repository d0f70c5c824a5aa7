"""Triton kernels of tritonloss, installed as `tritonloss.kernels`: one module per family,
with `_math` (interpreter-safe elementwise math) and `_tuning` (autotune spaces)."""
