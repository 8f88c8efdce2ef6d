"""Regularized DDIM inversion (pix2pix-zero, section 3.2), in ComfyUI's sigma space.

The model is any k-diffusion style denoiser `denoise(x, sigma) -> denoised` working on x = x_t / sqrt(alpha_bar_t):
ComfyUI's samplers hand exactly that to a custom sampler, and a diffusers UNet is wrapped into it in the tests.
Every step asks the model for the noise, regularizes that noise towards i.i.d. N(0, I) and takes the deterministic
DDIM step, which in sigma space is the Euler step x <- x + eps * (sigma_to - sigma_from). The conversions live in
core.sigma_space (predict_noise is re-exported here).
"""
from __future__ import annotations

from typing import Callable, Optional

import torch

from .regularization import ShiftSampler, regularize_noise
from .schedule import InversionSchedule
from .flow_space import denoised_from_noise, flow_step, noise_from_velocity, predict_velocity
from .sigma_space import V_CONVERSION_LEVEL, V_CONVERSIONS, ddim_step, from_ddim, predict_noise

# The smallest latent side the pack inverts and edits (16 px images; tests/test_host_newcomer.py runs every size
# from there to 64 px). The regularization is finite down to 1x1 (core.regularization's notes); a 1 px latent
# side leaves a UNet nothing to downsample.
MIN_LATENT = 2

__all__ = ["Denoiser", "ENCODE_NAN_CAUSES", "INVERSION_NAN_CAUSES", "INVERSION_RUN_NAN_CAUSES", "MIN_LATENT",
           "check_inverted",
           "check_latent", "predict_noise", "invert_flow_latent", "invert_latent"]

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
StepCallback = Callable[[int, torch.Tensor, torch.Tensor], None]


# What can put NaN or infinite values into a latent, named in the errors (each with its fix).
ENCODE_NAN_CAUSES = ("the VAE encode overflowed (a VAE in fp16 can: start ComfyUI with --fp32-vae), or the image "
                     "itself holds NaN (check the node that made it)")
INVERSION_RUN_NAN_CAUSES = ("the model overflowed in fp16 (start ComfyUI with --force-fp32, or load the checkpoint "
                            "in fp32), or the regularization diverged (lambda_ac or lambda_kl far above the paper's "
                            "20: lower them, or set reg_steps 0 to check)")
INVERSION_NAN_CAUSES = (INVERSION_RUN_NAN_CAUSES.replace(", or the regularization", ", the regularization")
                        + ", or the encoded image already held NaN (a VAE in fp16 can overflow: --fp32-vae)")


def check_inverted(x: torch.Tensor) -> None:
    """Raise ValueError naming the possible causes if an inversion (from a finite latent) produced NaN or inf."""
    if not torch.isfinite(x).all():
        raise ValueError(f"the inversion produced NaN or infinite values. Possible causes: {INVERSION_RUN_NAN_CAUSES}")


def check_latent(latent: torch.Tensor, channels: Optional[int] = None, what: str = "latent",
                 nan_causes: str = ENCODE_NAN_CAUSES) -> None:
    """Raise ValueError naming the problem if `latent` cannot be inverted. `nan_causes` says what can have made
    NaN or infinite values in this latent (ENCODE_NAN_CAUSES for an encoded image, INVERSION_NAN_CAUSES for an
    inverted one)."""
    if not isinstance(latent, torch.Tensor) or latent.ndim != 4:
        shape = tuple(latent.shape) if isinstance(latent, torch.Tensor) else type(latent).__name__
        raise ValueError(f"the {what} must be an image latent of shape [batch, channels, height, width], got {shape}")
    if channels is not None and latent.shape[1] != channels:
        raise ValueError(
            f"the {what} has {latent.shape[1]} channels but this model works on {channels}-channel latents: "
            "encode the image with the VAE that belongs to the same checkpoint (VAEEncode)"
        )
    if latent.shape[2] < MIN_LATENT or latent.shape[3] < MIN_LATENT:
        raise ValueError(f"the {what} is {latent.shape[2]}x{latent.shape[3]}: it must be at least "
                         f"{MIN_LATENT}x{MIN_LATENT} ({8 * MIN_LATENT}x{8 * MIN_LATENT} pixels)")
    if not torch.isfinite(latent).all():
        raise ValueError(f"the {what} contains NaN or infinite values. Possible causes: {nan_causes}")


def _regularization(lambda_ac, lambda_kl, num_reg_steps, num_ac_rolls, generator, shift_sampler) -> dict:
    """regularize_noise's keyword arguments, checked."""
    for name, value in (("num_reg_steps", num_reg_steps), ("num_ac_rolls", num_ac_rolls)):
        if int(value) != value or value < 0:
            raise ValueError(f"{name} must be a whole number >= 0, got {value!r}")
    if lambda_ac < 0 or lambda_kl < 0:
        raise ValueError(f"regularization strengths must be >= 0, got lambda_ac={lambda_ac}, lambda_kl={lambda_kl}")
    return dict(lambda_ac=0.0 if num_ac_rolls == 0 else lambda_ac, lambda_kl=lambda_kl, num_reg_steps=num_reg_steps,
                num_ac_rolls=num_ac_rolls, generator=generator, shift_sampler=shift_sampler)


def invert_latent(
    denoise: Denoiser,
    latent: torch.Tensor,
    schedule: InversionSchedule,
    *,
    lambda_ac: float = 20.0,
    lambda_kl: float = 20.0,
    num_reg_steps: int = 5,
    num_ac_rolls: int = 5,
    generator: Optional[torch.Generator] = None,
    shift_sampler: Optional[ShiftSampler] = None,
    callback: Optional[StepCallback] = None,
    v_prediction: bool = False,
    v_conversion: str = V_CONVERSION_LEVEL,
) -> torch.Tensor:
    """Invert a clean latent to the noise level schedule.levels[-1] and return that noisy latent.

    latent: [B, C, H, W] in the model's latent space (ComfyUI: after `process_latent_in`), at sigma ~ 0.
    Returns x at schedule.levels[-1], in ComfyUI's sigma space: a deterministic sampler run down
    `schedule.regeneration_sigmas()` from it reconstructs the latent (up to the usual inversion error).

    The references treat the clean latent as the DDIM sample x_t at level levels[0] (alpha_bar[0] in diffusers), so
    it enters sigma space as latent * sqrt(1 + levels[0]^2) (a factor 1.0004 for the default schedule).
    callback(step, x, eps) runs after every step.
    v_prediction / v_conversion: for a v-prediction model, the level its output becomes noise at ("eval", the
    default, or "source" as diffusers' DDIMInverseScheduler; core.sigma_space.V_CONVERSION_LEVEL says why).
    """
    check_latent(latent)
    reg = _regularization(lambda_ac, lambda_kl, num_reg_steps, num_ac_rolls, generator, shift_sampler)
    if v_conversion not in V_CONVERSIONS:
        raise ValueError(f"v_conversion must be one of {V_CONVERSIONS}, got {v_conversion!r}")
    levels = [float(s) for s in schedule.levels]
    eval_sigmas = [float(s) for s in schedule.eval_sigmas]

    x = from_ddim(latent, levels[0])
    for step, sigma_eval in enumerate(eval_sigmas):
        sigma_from, sigma_to = levels[step], levels[step + 1]
        eps = predict_noise(denoise, x, sigma_from, sigma_eval, v_prediction=v_prediction,
                            v_conversion=v_conversion)
        eps = regularize_noise(eps, **reg)
        x = ddim_step(x, eps, sigma_from, sigma_to)
        if callback is not None:
            callback(step, x, eps)
    return x


def invert_flow_latent(
    denoise: Denoiser,
    latent: torch.Tensor,
    levels: torch.Tensor,
    *,
    lambda_ac: float = 20.0,
    lambda_kl: float = 20.0,
    num_reg_steps: int = 5,
    num_ac_rolls: int = 5,
    generator: Optional[torch.Generator] = None,
    shift_sampler: Optional[ShiftSampler] = None,
    callback: Optional[StepCallback] = None,
) -> torch.Tensor:
    """Regularized inversion for a flow-matching model (ComfyUI CONST: SD 3.x, Flux): the Euler ODE run backwards.

    denoise: ComfyUI's denoiser (x, sigma) -> denoised, with x = (1 - sigma) x0 + sigma eps unscaled.
    latent: the clean latent [B, C, H, W] in the model's units (after process_latent_in), at level levels[0] = 0.
    levels: ascending [N + 1] from 0 to the top level < 1 (core.flow_space.flow_levels).
    Step k asks the model for its velocity at (x_k, levels[k + 1]) — the level the regenerating Euler step evaluates
    at — turns it into noise at the latent's level (eps_hat = x + (1 - s) v), regularizes that noise as the DDIM
    inversion does, and steps with it (core.flow_space.flow_step; with no regularization exactly x + v (s' - s)).
    Returns x at levels[-1] (model units, before ComfyUI's LATENT scaling x / (1 - s)). callback(step, x, x0) runs
    after every step with the clean latent the regularized noise implies.
    """
    check_latent(latent)
    reg = _regularization(lambda_ac, lambda_kl, num_reg_steps, num_ac_rolls, generator, shift_sampler)
    levels = [float(s) for s in levels]
    if len(levels) < 2 or levels[0] != 0.0 or levels[-1] >= 1.0 or any(b <= a for a, b in zip(levels, levels[1:])):
        raise ValueError(f"flow inversion levels must ascend from 0 to below 1, got {levels}")
    x = latent
    for step in range(len(levels) - 1):
        sigma_from, sigma_to = levels[step], levels[step + 1]
        eps = noise_from_velocity(x, predict_velocity(denoise, x, sigma_to), sigma_from)
        eps = regularize_noise(eps, **reg)
        x0 = denoised_from_noise(x, eps, sigma_from)
        x = flow_step(x, eps, sigma_from, sigma_to)
        if callback is not None:
            callback(step, x, x0)
    return x
