"""Eager PyTorch versions of the losses: the CPU path when the interpreter is off, and the
oracle the tests compare the kernels with."""

from . import boxes, classification, metric, overlap, regression

__all__ = ["boxes", "classification", "metric", "overlap", "regression"]
