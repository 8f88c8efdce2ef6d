"""The one ODE step every model family takes in ComfyUI's sampling space, under one name for each formula.

ComfyUI's denoiser returns the clean-latent guess ``denoised`` of x at level sigma. For every model kind the pack
serves, x moves along its probability-flow ODE with the slope d = (x - denoised) / sigma (k-diffusion's ``to_d``):
- DDIM models (SD 1.x, 2.x, SDXL), in ComfyUI's sigma space x = x_t / sqrt(alpha_bar): d is the predicted noise eps,
  and the Euler step x + d (sigma_next - sigma) is the deterministic DDIM step (core.sigma_space);
- flow models (SD 3.x, Flux, CONST sampling), x = (1 - s) x0 + s eps: d is the velocity v = eps - x0, and the same
  Euler step is ComfyUI's "euler" sampler (core.flow_space).
So the noise of one and the velocity of the other are the same formula, written here once. Plain torch.
"""
from __future__ import annotations

from typing import Callable

import torch

__all__ = ["Denoiser", "denoised_from_slope", "euler_step", "slope_from_denoised"]

# ComfyUI's k-diffusion denoiser: denoise(x, sigma [B]) -> denoised
Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def slope_from_denoised(x: torch.Tensor, denoised: torch.Tensor, sigma: float) -> torch.Tensor:
    """The ODE's slope at level sigma > 0: (x - denoised) / sigma (the noise eps in DDIM's sigma space, the velocity v
    for a flow model)."""
    return (x - denoised) / sigma


def denoised_from_slope(x: torch.Tensor, slope: torch.Tensor, sigma: float) -> torch.Tensor:
    """The clean-latent guess of x at level sigma given its slope: x - sigma * slope (inverse of
    slope_from_denoised)."""
    return x - sigma * slope


def euler_step(x: torch.Tensor, slope: torch.Tensor, sigma: float, sigma_next: float) -> torch.Tensor:
    """x + slope (sigma_next - sigma): ComfyUI's euler / ddim sampler step, DDIM's deterministic step (eta 0) in
    sigma space, up (inversion) or down (sampling)."""
    return x + slope * (sigma_next - sigma)
