"""Eager PyTorch versions of the losses: the CPU path when the interpreter is off, and the
oracle the tests compare the kernels with."""

from . import regression

__all__ = ["regression"]
