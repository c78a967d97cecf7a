"""EDM (Karras et al. 2022): formulation (:mod:`augdiff.edm.core`) and samplers
(:mod:`augdiff.edm.samplers`). The training loop and store sampling live in
``augdiff.edm.train`` and ``augdiff.edm.sampling``."""

from augdiff.edm.core import (
    EDMConfig,
    denoise,
    edm_loss,
    loss_weight,
    preconditioning,
    sample_sigma_train,
    sigma_schedule,
)
from augdiff.edm.samplers import (
    euler_sampler,
    guided_denoiser,
    heun_sampler,
    nfe,
    sample,
    stochastic_sampler,
)

__all__ = [
    "EDMConfig",
    "denoise",
    "edm_loss",
    "euler_sampler",
    "guided_denoiser",
    "heun_sampler",
    "loss_weight",
    "nfe",
    "preconditioning",
    "sample",
    "sample_sigma_train",
    "sigma_schedule",
    "stochastic_sampler",
]
