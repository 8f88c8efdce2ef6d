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
from .ode import Denoiser, euler_step
from .sigma_space import V_CONVERSION_LEVEL, V_CONVERSIONS, from_ddim, predict_noise

# The smallest latent side the pack inverts and edits (16 px images; tests/test_host_newcomer.py runs every size
# from there to 64 px). The regularization is finite down to 1x1 (core.regularization's notes); a 1 px latent
# side leaves a UNet nothing to downsample.
MIN_LATENT = 2

__all__ = ["Denoiser", "ENCODE_NAN_CAUSES", "INVERSION_NAN_CAUSES", "INVERSION_RUN_NAN_CAUSES", "MIN_LATENT",
           "check_inverted",
           "check_latent", "predict_noise", "invert_flow_latent", "invert_latent"]

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


def _iterations(fixed_point_iters) -> int:
    if int(fixed_point_iters) != fixed_point_iters or fixed_point_iters < 0:
        raise ValueError(f"fixed_point_iters must be a whole number >= 0, got {fixed_point_iters!r}")
    return int(fixed_point_iters)


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
    fixed_point_iters: int = 0,
) -> torch.Tensor:
    """Invert a clean latent to the noise level schedule.levels[-1] and return that noisy latent.

    latent: [B, C, H, W] in the model's latent space (ComfyUI: after `process_latent_in`), at sigma ~ 0.
    Returns x at schedule.levels[-1], in ComfyUI's sigma space: a deterministic sampler run down
    `schedule.regeneration_sigmas()` from it reconstructs the latent (up to the usual inversion error).

    The references treat the clean latent as the DDIM sample x_t at level levels[0] (alpha_bar[0] in diffusers), so
    it enters sigma space as latent * sqrt(1 + levels[0]^2) (a factor 1.0004 for the default schedule).
    callback(step, x, eps) runs after every step.

    fixed_point_iters: 0 is the references' first-order inversion: the noise is read at the latent being left
    (x_k), which only approximates the regenerating step x_k = x_{k+1} + eps(x_{k+1}, s_{k+1}) (s_k - s_{k+1}) of a
    deterministic sampler (ComfyUI's ddim/euler along regeneration_sigmas, and Guided Edit's reconstruction).
    n > 0 then solves that step for x_{k+1} by n fixed-point iterations y <- x_k + eps(y, s_{k+1}) (s_{k+1} - s_k),
    starting from the first-order result, with the noise regularized at every iterate before the step (as ReNoise,
    Garibi et al. 2024, combines renoising with pix2pix-zero's regularizers). Each iteration is one more model call
    per step. The iterate converges where the step times the model's sensitivity to its input is below 1, which a
    trained denoiser's smooth field gives; bench/README.md ("Exact inversion") has the measured round trips.
    The fixed-point noise is read at the level being solved for, s_{k+1} (the sampler's own evaluation), also for
    the "authors" schedule, whose first-order step asks the UNet at another timestep. With n > 0 the clean latent
    starts at level 0, where the regenerating sampler's last step lands, instead of the references' alpha_bar[0]
    level (sigma 0.029 for SD): otherwise the round trip keeps an error of that sigma times the noise (about 0.03
    of a unit latent) however well each step is solved. Guided Edit's reconstruction ends at the references'
    level, so it keeps that small offset in both modes.
    v_prediction / v_conversion: for a v-prediction model, the level its output becomes noise at ("eval", the
    default, or "source" as diffusers' DDIMInverseScheduler; core.sigma_space.V_CONVERSION_LEVEL says why).
    """
    check_latent(latent)
    reg = _regularization(lambda_ac, lambda_kl, num_reg_steps, num_ac_rolls, generator, shift_sampler)
    iterations = _iterations(fixed_point_iters)
    if v_conversion not in V_CONVERSIONS:
        raise ValueError(f"v_conversion must be one of {V_CONVERSIONS}, got {v_conversion!r}")
    levels = [float(s) for s in schedule.levels]
    eval_sigmas = [float(s) for s in schedule.eval_sigmas]

    if iterations:
        # the regenerating sampler's last step lands on sigma 0 (regeneration_sigmas), so its exact inverse starts
        # there: the clean latent at level 0, not at the references' alpha_bar[0] level (see the docstring)
        levels[0] = 0.0
    x = from_ddim(latent, levels[0])
    for step, sigma_eval in enumerate(eval_sigmas):
        sigma_from, sigma_to = levels[step], levels[step + 1]
        eps = predict_noise(denoise, x, sigma_from, sigma_eval, v_prediction=v_prediction,
                            v_conversion=v_conversion)
        eps = regularize_noise(eps, **reg)
        y = euler_step(x, eps, sigma_from, sigma_to)
        for _ in range(iterations):
            eps = regularize_noise(predict_noise(denoise, y, sigma_to, sigma_to, v_prediction=v_prediction), **reg)
            y = euler_step(x, eps, sigma_from, sigma_to)
        x = y
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
    fixed_point_iters: int = 0,
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

    fixed_point_iters: 0 reads the velocity at the latent being left (x_k), the explicit, first-order inverse of
    ComfyUI's Euler step x_k = x_{k+1} + v(x_{k+1}, s_{k+1}) (s_k - s_{k+1}). n > 0 solves that step for x_{k+1} by
    n fixed-point iterations y <- x_k + v(y, s_{k+1}) (s_{k+1} - s_k) from the first-order result, the noise
    regularized at every iterate (eps_hat = x_k + (1 - s_k) v(y, s_{k+1}), then flow_step): one more model call per
    iteration and step (see invert_latent).
    """
    check_latent(latent)
    reg = _regularization(lambda_ac, lambda_kl, num_reg_steps, num_ac_rolls, generator, shift_sampler)
    iterations = _iterations(fixed_point_iters)
    levels = [float(s) for s in levels]
    if len(levels) < 2 or levels[0] != 0.0 or levels[-1] >= 1.0 or any(b <= a for a, b in zip(levels, levels[1:])):
        raise ValueError(f"flow inversion levels must ascend from 0 to below 1, got {levels}")
    x = latent
    for step in range(len(levels) - 1):
        sigma_from, sigma_to = levels[step], levels[step + 1]
        eps = noise_from_velocity(x, predict_velocity(denoise, x, sigma_to), sigma_from)
        eps = regularize_noise(eps, **reg)
        y = flow_step(x, eps, sigma_from, sigma_to)
        for _ in range(iterations):
            eps = regularize_noise(noise_from_velocity(x, predict_velocity(denoise, y, sigma_to), sigma_from), **reg)
            y = flow_step(x, eps, sigma_from, sigma_to)
        x0 = denoised_from_noise(x, eps, sigma_from)
        x = y
        if callback is not None:
            callback(step, x, x0)
    return x
