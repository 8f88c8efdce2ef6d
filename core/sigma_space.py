"""Every conversion between ComfyUI's sigma space and DDIM's x_t, in one place.

ComfyUI (k-diffusion) samples x = x_t / sqrt(alpha_bar_t) at noise level sigma_t = sqrt((1 - alpha_bar_t) / alpha_bar_t),
so x = x_t * sqrt(1 + sigma^2). Its models are denoisers `denoise(x, sigma) -> denoised`, which feed the UNet
x / sqrt(1 + sigma^2) (the DDIM sample x_t) and the training timestep of sigma. In that space:
- the predicted noise is eps = (x - denoised) / sigma, for eps- and v-prediction models alike;
- the deterministic DDIM step (eta 0) is the Euler step x <- x + eps * (sigma_next - sigma);
  both are core.ode's slope_from_denoised and euler_step (the same formulas as the flow path's velocity and step);
- a gradient step of size lambda on x_t is a step of lambda * (1 + sigma^2) on x;
- DDIM's start noise x_T = noise is noise * sqrt(1 + sigma_T^2).

These identities hold only for discrete-time eps/v models with sigma_data = 1 (SD 1.x, SD 2.x, SDXL); the nodes
refuse other model kinds before anything here runs. Plain torch: nothing here imports ComfyUI.

Model units vs VAE-latent units: every x here is in the model's units (ComfyUI's LATENT `samples` after
`process_latent_in`). Converting to and from a LATENT is the host's job (the latent format's scale factor).
"""
from __future__ import annotations

import torch

from .ode import Denoiser, slope_from_denoised

__all__ = [
    "V_CONVERSIONS",
    "V_CONVERSION_LEVEL",
    "ddim_scale",
    "from_ddim",
    "predict_noise",
    "restate",
    "sgd_step_size",
    "start_noise",
    "to_ddim",
]


# Which level a v-prediction output is turned into noise at when the UNet is asked at a timestep other than the
# latent's level (inversion does: the latent at level s, the UNet at the timestep t of the next level). This is the
# `v_conversion` argument of predict_noise / invert_latent; V_CONVERSION_LEVEL is its default.
# "eval": eps = a_t v + b_t x_t (a = sqrt(alpha_bar), b = sqrt(1 - alpha_bar)), at the timestep the model was asked
#   at: the noise the model itself predicts when it takes its input to be at level t, i.e. the same DDIM-inversion
#   approximation an eps model trained on the same data makes.
# "source": eps = a_s v + b_s x_t, diffusers' DDIMInverseScheduler (alpha_bar of `timestep - ratio`): the model's
#   level-t output with level-s coefficients. The two differ by (a_s - a_t) v + (b_s - b_t) x_t per step.
# For eps models there is nothing to convert and both are the same; sampling (the guided edit) asks the model at the
# latent's own level, where both agree. The test test_v_prediction.py measures the difference against diffusers and
# which one reconstructs better (docs/differences.md).
V_CONVERSIONS = ("eval", "source")
V_CONVERSION_LEVEL = "eval"


def ddim_scale(sigma: float) -> float:
    """sqrt(1 + sigma^2) = 1 / sqrt(alpha_bar): x in sigma space over the DDIM sample x_t at level sigma."""
    return (1.0 + float(sigma) ** 2) ** 0.5


def from_ddim(x_t: torch.Tensor, sigma: float) -> torch.Tensor:
    """DDIM's sample x_t at level sigma, written in sigma space."""
    return x_t * ddim_scale(sigma)


def to_ddim(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """The DDIM sample x_t (what the references hold and decode) of x at level sigma."""
    return x / ddim_scale(sigma)


def restate(x: torch.Tensor, sigma_from: float, sigma_to: float) -> torch.Tensor:
    """The same DDIM sample x_t written in sigma space at another level (x scales with sqrt(1 + sigma^2))."""
    if float(sigma_from) == float(sigma_to):
        return x
    return x * (ddim_scale(sigma_to) / ddim_scale(sigma_from))


def sgd_step_size(lambda_: float, sigma: float) -> float:
    """The references take x_t <- x_t - lambda * dL/dx_t. With x = x_t * c (c = sqrt(1 + sigma^2)), dL/dx_t = c dL/dx
    and x' = c x_t', so the same step on x is x <- x - lambda * c^2 * dL/dx."""
    return float(lambda_) * ddim_scale(sigma) ** 2


def start_noise(noise: torch.Tensor, sigma_T: float) -> torch.Tensor:
    """DDIM's start x_T = noise (unit Gaussian, as the references draw it), in sigma space at level sigma_T, in the
    model's units. A LATENT must carry it in VAE-latent units (divided by the latent format's scale factor)."""
    return from_ddim(noise, sigma_T)


def predict_noise(
    denoise: Denoiser,
    x: torch.Tensor,
    sigma_from: float,
    sigma_eval: float,
    *,
    v_prediction: bool = False,
    v_conversion: str = V_CONVERSION_LEVEL,
) -> torch.Tensor:
    """The model's noise for x (at level sigma_from), asked at the timestep of sigma_eval.

    The references give the UNet the latent of the current level together with another level's timestep. A
    denoiser ties input scaling and timestep to one sigma, so x is restated at sigma_eval: the denoiser's own
    scaling x / sqrt(1 + sigma_eval^2) then gives the UNet exactly the DDIM sample x_t of level sigma_from. The
    noise read from the denoiser at sigma_eval is the conversion at the evaluated timestep ("eval"). For a
    v-prediction model (v_prediction=True) v_conversion="source" re-converts the model's v with the coefficients of
    sigma_from instead, as diffusers' DDIMInverseScheduler does (see V_CONVERSION_LEVEL); for eps models, or when
    both levels are the same, there is nothing to re-convert.
    """
    if v_conversion not in V_CONVERSIONS:
        raise ValueError(f"v_conversion must be one of {V_CONVERSIONS}, got {v_conversion!r}")
    x_in = restate(x, sigma_from, sigma_eval)
    sigma = x.new_full((x.shape[0],), float(sigma_eval))
    eps = slope_from_denoised(x_in, denoise(x_in, sigma), sigma_eval)
    if not v_prediction or v_conversion == "eval" or float(sigma_from) == float(sigma_eval):
        return eps
    # a = 1 / sqrt(1 + sigma^2), b = sigma / sqrt(1 + sigma^2); the UNet saw x_t = x / sqrt(1 + sigma_from^2).
    # The model's v from its level-t noise, v = (eps - b_t x_t) / a_t, then eps_s = a_s v + b_s x_t.
    c_eval, c_from = ddim_scale(sigma_eval), ddim_scale(sigma_from)
    x_t = to_ddim(x, sigma_from)
    v = (eps - (float(sigma_eval) / c_eval) * x_t) * c_eval
    return v / c_from + (float(sigma_from) / c_from) * x_t
