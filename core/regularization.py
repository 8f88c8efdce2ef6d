"""Noise regularization of pix2pix-zero's DDIM inversion (paper section 3.2).

DDIM inversion of a real image yields predicted noise that is far from i.i.d. Gaussian, which makes the inverted
latent hard to edit. pix2pix-zero nudges the *predicted noise* of every inversion step towards N(0, I) with two
losses: a multi-scale auto-correlation loss (pairs of pixels at random offsets should be uncorrelated) and a KL
term (mean 0, variance 1). Both are minimised by plain gradient steps on the noise, no optimizer.

Conventions shared with the references (authors' `ddim_inv.py`, diffusers' `StableDiffusionPix2PixZeroPipeline`):
- the auto-correlation pyramid works per image and per channel: at each level a shift d is drawn, the loss adds
  mean(n * roll(n, d, H))^2 + mean(n * roll(n, d, W))^2, and the map is average-pooled by 2 until it is 8 px or
  smaller;
- d is drawn in [1, H_level // 2) with H the current level's height, the same d for both axes. diffusers draws
  from [0, H // 2): a shift of 0 turns the term into mean(n^2)^2, which pushes the variance towards 0 (a known
  bug there, fixed in the authors' code). We never draw 0;
- KL is computed over one image's whole noise tensor with the unbiased variance.

Differences, on purpose: the references handle batch 1. Here every image of a batch gets its own losses (their
gradients do not mix), and the batch shares the shifts, so an image inverted inside a batch gets exactly the
result it gets alone with the same seed. Shifts are drawn from a caller-provided generator so results repeat.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F

__all__ = [
    "pyramid_sizes",
    "draw_shifts",
    "auto_corr_loss",
    "kl_divergence",
    "regularize_noise",
]

# A callable giving the shifts for one evaluation of the auto-correlation loss: (channels, level_sizes) -> [C, L].
ShiftSampler = Callable[[int, Sequence[int]], torch.Tensor]


def pyramid_sizes(height: int) -> list[int]:
    """Heights of the auto-correlation pyramid levels: H, H/2, ... until a level is 8 px or smaller."""
    sizes = [height]
    while sizes[-1] > 8:
        sizes.append(sizes[-1] // 2)  # avg_pool2d(kernel 2) floors odd sizes
    return sizes


def draw_shifts(generator: torch.Generator, channels: int, level_sizes: Sequence[int]) -> torch.Tensor:
    """Random shifts d in [1, size // 2) per channel and pyramid level, as a LongTensor [channels, levels].

    One uniform draw per entry (a single generator call): cheaper than a randint per entry and just as
    deterministic. Levels of height < 4 have no valid shift >= 1 below size // 2, so they use 1.
    """
    upper = torch.tensor([max(size // 2, 2) for size in level_sizes], dtype=torch.float64)
    u = torch.rand((channels, len(level_sizes)), generator=generator, dtype=torch.float64)
    return (1 + torch.floor(u * (upper - 1))).long()


def _roll_per_channel(noise: torch.Tensor, shifts: torch.Tensor, dim: int) -> torch.Tensor:
    """torch.roll with a different shift for each channel (noise [B, C, H, W], shifts [C])."""
    size = noise.shape[dim]
    index = torch.arange(size, device=noise.device)
    # roll(n, d)[i] = n[(i - d) mod size]
    index = (index[None, :] - shifts.to(noise.device)[:, None]) % size  # [C, size]
    if dim == 2:
        index = index[None, :, :, None].expand(noise.shape[0], -1, -1, noise.shape[3])
    else:
        index = index[None, :, None, :].expand(noise.shape[0], -1, noise.shape[2], -1)
    return torch.gather(noise, dim, index)


def auto_corr_loss(noise: torch.Tensor, shifts: torch.Tensor) -> torch.Tensor:
    """Multi-scale auto-correlation loss of each image, shape [B].

    noise: [B, C, H, W]; shifts: [C, L] with L == len(pyramid_sizes(H)), shared by the batch.
    Equals the references' loss for batch 1 given the same shifts (in the same channel-major order).
    """
    level_count = len(pyramid_sizes(noise.shape[2]))
    if shifts.shape != (noise.shape[1], level_count):
        raise ValueError(f"shifts must have shape {(noise.shape[1], level_count)}, got {tuple(shifts.shape)}")
    loss = noise.new_zeros(noise.shape[0])
    level = noise
    for index in range(level_count):
        if index > 0:
            level = F.avg_pool2d(level, kernel_size=2)
        d = shifts[:, index]
        for dim in (2, 3):
            corr = (level * _roll_per_channel(level, d, dim)).mean(dim=(2, 3))  # [B, C]
            loss = loss + (corr**2).sum(dim=1)
    return loss


def kl_divergence(noise: torch.Tensor) -> torch.Tensor:
    """KL-style penalty pulling each image's noise to mean 0, variance 1: var + mean^2 - 1 - log(var), shape [B]."""
    flat = noise.flatten(start_dim=1)
    mean = flat.mean(dim=1)
    var = flat.var(dim=1)  # unbiased, as the references
    return var + mean**2 - 1 - torch.log(var + 1e-7)


def regularize_noise(
    noise: torch.Tensor,
    lambda_ac: float = 20.0,
    lambda_kl: float = 20.0,
    num_reg_steps: int = 5,
    num_ac_rolls: int = 5,
    generator: Optional[torch.Generator] = None,
    shift_sampler: Optional[ShiftSampler] = None,
) -> torch.Tensor:
    """Gradient steps that pull predicted noise towards i.i.d. N(0, I), as in the references.

    Each of `num_reg_steps` outer iterations makes `num_ac_rolls` steps
    eps <- eps - (lambda_ac / num_ac_rolls) * grad L_ac (fresh shifts each time), then one step
    eps <- eps - lambda_kl * grad L_kl. Losses are per image; the gradient of their sum is per image.

    Works inside ComfyUI's inference mode: the noise is cloned into a normal tensor before autograd sees it.
    Returns a new tensor in the input's dtype; the input is not modified.
    """
    if num_reg_steps <= 0 or (lambda_ac == 0 and lambda_kl == 0):
        return noise.clone()
    if shift_sampler is None:
        if generator is None:
            raise ValueError("regularize_noise needs a seeded torch.Generator (or a shift_sampler) for its shifts")

        def shift_sampler(channels: int, sizes: Sequence[int]) -> torch.Tensor:
            return draw_shifts(generator, channels, sizes)

    in_dtype = noise.dtype
    sizes = pyramid_sizes(noise.shape[2])
    with torch.inference_mode(False), torch.enable_grad():
        # fp32 so that fp16 models do not lose the small gradient steps
        eps = noise.detach().clone().float()
        for _ in range(num_reg_steps):
            if lambda_ac > 0:
                for _ in range(num_ac_rolls):
                    var = eps.detach().requires_grad_(True)
                    loss = auto_corr_loss(var, shift_sampler(eps.shape[1], sizes)).sum()
                    (grad,) = torch.autograd.grad(loss, var)
                    eps = eps - (lambda_ac / num_ac_rolls) * grad
            if lambda_kl > 0:
                var = eps.detach().requires_grad_(True)
                (grad,) = torch.autograd.grad(kl_divergence(var).sum(), var)
                eps = eps - lambda_kl * grad
        return eps.detach().to(in_dtype)
