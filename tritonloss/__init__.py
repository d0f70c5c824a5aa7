"""tritonloss: loss functions as fused, autotuned Triton kernels, exactly as correct as eager
PyTorch. Set TRITON_INTERPRET=1 before importing it to run the kernels on the CPU."""

from . import functional, nn
from ._runtime import checks_enabled, set_checks
from .functional import *  # noqa: F403

__version__ = "0.1.0"
__all__ = ["functional", "nn", "set_checks", "checks_enabled", "__version__", *functional.__all__]
