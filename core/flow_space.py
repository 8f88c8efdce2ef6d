"""Every conversion of pix2pix-zero's inversion for flow-matching models (ComfyUI's CONST sampling: SD 3.x, Flux), in
one place. Plain torch: nothing here imports ComfyUI.

A flow model's latent at level s in [0, 1] is x = (1 - s) x0 + s eps. ComfyUI's denoiser returns
denoised = x - s * v, v the velocity the network predicts (v = eps - x0 along the straight path), so:
- the velocity is v = (x - denoised) / s, at the level s the model was asked at;
- ComfyUI's Euler step is x <- x + v * (s_next - s);
  both are core.ode's slope_from_denoised and euler_step (the same formulas as DDIM's noise and step).

The identity this pack uses to regularize noise (``noise_from_velocity``): the model's velocity at x, split at the
latent's own level s into a clean part and a noise part with x = (1 - s) x0_hat + s eps_hat and v = eps_hat - x0_hat:
    x0_hat  = x - s v
    eps_hat = x + (1 - s) v          (= (x - (1 - s) x0_hat) / s for s > 0)
The regularized noise eps then takes the place of eps_hat exactly as DDIM's step uses a regularized noise: the clean
latent is recomputed from x and eps at the level s (``denoised_from_noise``: x0 = (x - s eps) / (1 - s)) and re-noised
to the next level with the same eps (``flow_step``: x' = (1 - s') x0 + s' eps). That step equals an Euler step with
the velocity (eps - x) / (1 - s) (``velocity_from_noise``), and with eps = eps_hat it is exactly ComfyUI's Euler
step x + v (s' - s), so with no regularization the inversion is the plain inverse Euler ODE. (It is DDIM's
regularized step written in flow units: DDIM's sigma space holds x / (1 - s) at sigma = s / (1 - s).)
The division by 1 - s never meets s = 1: an inversion step starts below the top level, which is below 1
(``flow_levels``).

ComfyUI's LATENT convention for a partially noised flow latent: samplers start from (1 - s_0) * latent when no noise
is added (CONST.noise_scaling) and hand back x / (1 - s_last) (CONST.inverse_noise_scaling), so a LATENT holds
x / (1 - s); the inversion runs inside ComfyUI's sampler, which applies both. At s = 1 that LATENT is undefined,
so the inversion stops at the highest level below 1.
"""
from __future__ import annotations

import torch

from .ode import Denoiser, slope_from_denoised

__all__ = [
    "denoised_from_noise",
    "flow_levels",
    "flow_sgd_step_size",
    "flow_step",
    "noise_from_velocity",
    "predict_velocity",
    "velocity_from_noise",
]





def noise_from_velocity(x: torch.Tensor, velocity: torch.Tensor, sigma: float) -> torch.Tensor:
    """eps_hat = x + (1 - sigma) v: the noise part of x at its level sigma, given the velocity (see the module)."""
    return x + (1.0 - sigma) * velocity


def velocity_from_noise(x: torch.Tensor, eps: torch.Tensor, sigma: float) -> torch.Tensor:
    """The velocity whose Euler step from level sigma < 1 is the regularized step with noise eps: (eps - x) / (1 - s).
    The inverse of noise_from_velocity."""
    return (eps - x) / (1.0 - sigma)


def denoised_from_noise(x: torch.Tensor, eps: torch.Tensor, sigma: float) -> torch.Tensor:
    """The clean latent of x at level sigma < 1 given its noise: x0 = (x - sigma eps) / (1 - sigma)."""
    return (x - sigma * eps) / (1.0 - sigma)


def flow_step(x: torch.Tensor, eps: torch.Tensor, sigma: float, sigma_next: float) -> torch.Tensor:
    """From level sigma to sigma_next with noise eps: x0 from (x, eps) at sigma, re-noised with the same eps. Equal to
    the Euler step x + velocity_from_noise(x, eps, sigma) * (sigma_next - sigma)."""
    return x + velocity_from_noise(x, eps, sigma) * (sigma_next - sigma)


def predict_velocity(denoise: Denoiser, x: torch.Tensor, sigma_eval: float) -> torch.Tensor:
    """The model's velocity at x, asked at level sigma_eval > 0. Flow models take x unscaled, so unlike DDIM nothing
    is restated: the inversion asks at the next level (the level the regenerating Euler step evaluates at, where
    the level-0 start gives no velocity through a denoiser)."""
    sigma = x.new_full((x.shape[0],), float(sigma_eval))
    return slope_from_denoised(x, denoise(x, sigma), sigma_eval)


def flow_levels(scheduler_sigmas: torch.Tensor, steps: int) -> torch.Tensor:
    """Ascending inversion levels [0, s_1, ..., s_steps] from a ComfyUI scheduler's descending sigmas (ending in 0).

    Levels at 1 or above (pure noise, where a LATENT x / (1 - s) does not exist) are dropped from the top, then the
    lowest steps + 1 are kept: pass the scheduler's sigmas for steps + 1 steps to invert over `steps` steps of the
    model's own schedule below pure noise.
    """
    sigmas = scheduler_sigmas.detach().float().cpu()
    if sigmas.ndim != 1 or len(sigmas) < 2 or float(sigmas[-1]) != 0.0 or not bool((sigmas[:-1] > sigmas[1:]).all()):
        raise ValueError("the scheduler's sigmas must descend strictly to 0")
    below = sigmas[sigmas < 1.0]
    if len(below) < steps + 1:
        raise ValueError(f"the schedule has only {len(below) - 1} steps below pure noise, {steps} are needed")
    return below[-(steps + 1):].flip(0).contiguous()





def flow_sgd_step_size(lambda_xa: float, sigma: float) -> float:
    """The step on a flow latent x at level sigma equal to pix2pix-zero's SGD step `lambda_xa` on the DDIM sample.

    The references step x_t <- x_t - lambda grad_{x_t} L on the variance-preserving latent
    x_t = sqrt(a) x0 + sqrt(1 - a) eps. A flow latent at the same signal-to-noise ratio is x = r x_t with
    r = sqrt((1 - s)^2 + s^2) (sqrt(a) = (1 - s) / r), so grad_{x_t} L = r grad_x L and the step on x is
    r * (-lambda r grad_x L): size lambda ((1 - s)^2 + s^2). (The UNet path's lambda (1 + sigma^2) is the same rule
    for ComfyUI's sigma space, where x = sqrt(1 + sigma^2) x_t.) So one lambda_xa means the same step in units of the
    latent's own scale on both paths; at s = 0.5 it halves, at s -> 0 or 1 it is lambda."""
    return float(lambda_xa) * ((1.0 - sigma) ** 2 + sigma ** 2)


