"""Eager PyTorch versions of the losses: the CPU path when the interpreter is off, and the
oracle the tests compare the kernels with."""

from . import boxes, classification, margin, metric, overlap, regression

__all__ = ["boxes", "classification", "margin", "metric", "overlap", "regression"]
