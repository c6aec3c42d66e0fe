"""Diffusion models: noise schedules, the forward process, parameterisations, losses, samplers,
Flax denoisers (MLP, UNet) and the DiffusionModel that ties a denoiser to a schedule."""

from jaxmath.diffusion.denoisers import MLPDenoiser, UNet, timestep_embedding
from jaxmath.diffusion.forward import forward_diffuse
from jaxmath.diffusion.losses import diffusion_loss, min_snr_weight
from jaxmath.diffusion.model import LOSS_WEIGHTINGS, SAMPLERS, DiffusionModel
from jaxmath.diffusion.parameterization import (
    PREDICTION_TYPES,
    convert_prediction,
    predict_eps,
    predict_x0,
    prediction_target,
    velocity,
)
from jaxmath.diffusion.process import q_posterior, q_sample, snr
from jaxmath.diffusion.samplers import (
    TIMESTEP_SPACINGS,
    VARIANCE_TYPES,
    ddim_sample,
    ddim_step,
    ddim_timesteps,
    ddpm_sample,
    ddpm_step,
)
from jaxmath.diffusion.schedules import (
    SCHEDULES,
    NoiseSchedule,
    cosine_schedule,
    from_betas,
    linear_schedule,
    make_schedule,
    scaled_linear_schedule,
    sigmoid_schedule,
)

__all__ = [
    "LOSS_WEIGHTINGS",
    "PREDICTION_TYPES",
    "SAMPLERS",
    "SCHEDULES",
    "TIMESTEP_SPACINGS",
    "VARIANCE_TYPES",
    "DiffusionModel",
    "MLPDenoiser",
    "NoiseSchedule",
    "UNet",
    "convert_prediction",
    "cosine_schedule",
    "ddim_sample",
    "ddim_step",
    "ddim_timesteps",
    "ddpm_sample",
    "ddpm_step",
    "diffusion_loss",
    "forward_diffuse",
    "from_betas",
    "linear_schedule",
    "make_schedule",
    "min_snr_weight",
    "predict_eps",
    "predict_x0",
    "prediction_target",
    "q_posterior",
    "q_sample",
    "scaled_linear_schedule",
    "sigmoid_schedule",
    "snr",
    "timestep_embedding",
    "velocity",
]
