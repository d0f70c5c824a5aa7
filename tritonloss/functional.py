"""The public functions of tritonloss: one list, imported from the family modules."""

from .regression import (
    adaptive_wing_loss,
    balanced_l1_loss,
    gaussian_nll_loss,
    huber_loss,
    kl_box_loss,
    l1_loss,
    log_cosh_loss,
    mse_loss,
    poisson_nll_loss,
    quantile_loss,
    rmse_loss,
    smooth_l1_loss,
    wing_loss,
)

__all__ = [
    "adaptive_wing_loss",
    "balanced_l1_loss",
    "gaussian_nll_loss",
    "huber_loss",
    "kl_box_loss",
    "l1_loss",
    "log_cosh_loss",
    "mse_loss",
    "poisson_nll_loss",
    "quantile_loss",
    "rmse_loss",
    "smooth_l1_loss",
    "wing_loss",
]
