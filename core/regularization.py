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

Small maps (latents of 16-32 px images, the references never meet them). The references' loops were written for
64x64 latents; on a 2x2 or 3x3 map their plain gradient steps turn Gaussian noise into NaN. What we do there:
- a level whose height H has H // 2 <= 1 (H < 4) has no shift in [1, H // 2): we draw none and that level adds no
  auto-correlation term on either axis (the authors' randrange would fail there, diffusers' randint would give the
  excluded d = 0). The shift is drawn from the height as in the references and also used along the width: a roll by
  a multiple of the width is the identity there, its "correlation" is mean(n^2), so that width term is skipped too;
- the pyramid stops where the references stop (the level is 8 px or smaller in height) and also where pooling would
  leave a level without rows or columns (a map 1 px wide), so no term is ever a mean over zero elements;
- the auto-correlation step: lambda_ac / rolls (4) is far below the loss's curvature on a 64x64 map, but on a map of a
  few pixels (or noise a few times too large) it overshoots and the loss, a quartic, runs off to infinity. Each
  channel's step is capped at 1 / (a bound on its curvature at the current point), see
  _auto_corr_grad_and_curvature; where the references' step is within the cap (every ordinary latent) it is
  taken exactly as before;
- the KL step: with N values per image, a step of lambda_kl on (var - 1 - log var) changes the variance's distance
  to 1 by a factor (1 - 4 lambda_kl / (N - 1)) near var = 1 (its linearization), which diverges once
  4 lambda_kl / (N - 1) > 2: N <= 41 for the default 20, i.e. a 2x2 or 3x3 latent of 4 channels. The step is capped
  at (N - 1) / 4 (factor >= 0: it never overshoots var = 1), which leaves every image of more than 4 lambda_kl + 1
  values per image (81 for the default: any 4-channel latent from 4x5 up) exactly as the references step it. The
  variance needs at least 2 values: an image of one value gets no KL step (its unbiased variance is undefined).

Differences, on purpose: the references handle batch 1. Here every image of a batch gets its own losses (their
gradients do not mix), and the batch shares the shifts, so an image inverted inside a batch gets exactly the
result it gets alone with the same seed. Shifts are drawn from a caller-provided generator so results repeat.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F

from .attention import at_least_float32

__all__ = [
    "pyramid_sizes",
    "draw_shifts",
    "auto_corr_loss",
    "auto_corr_grad",
    "kl_divergence",
    "kl_grad",
    "regularize_noise",
]

# A callable giving the shifts for one evaluation of the auto-correlation loss: (channels, level_sizes) -> [C, L].
ShiftSampler = Callable[[int, Sequence[int]], torch.Tensor]


def pyramid_sizes(height: int, width: Optional[int] = None) -> list[int]:
    """Heights of the auto-correlation pyramid levels: H, H/2, ... until a level is 8 px or smaller (the
    references' rule), or, given the width, until pooling would leave a level less than 1 px wide."""
    sizes = [height]
    while sizes[-1] > 8 and (width is None or width >= 2):
        sizes.append(sizes[-1] // 2)  # avg_pool2d(kernel 2) floors odd sizes
        width = None if width is None else width // 2
    return sizes


def draw_shifts(generator: torch.Generator, channels: int, level_sizes: Sequence[int]) -> torch.Tensor:
    """Random shifts d in [1, size // 2) per channel and pyramid level, as a LongTensor [channels, levels].

    One uniform draw per entry (a single generator call): cheaper than a randint per entry and just as
    deterministic. A level of height < 4 has no shift in [1, size // 2) (the range is empty): its entries are 0,
    which the losses read as "no term for this level" (never as a roll by 0, see the module's notes). The draws are
    made for it all the same, so the generator's stream does not depend on the map's size.
    """
    upper = torch.tensor([max(size // 2, 2) for size in level_sizes], dtype=torch.float64)
    u = torch.rand((channels, len(level_sizes)), generator=generator, dtype=torch.float64)
    shifts = (1 + torch.floor(u * (upper - 1))).long()
    empty = torch.tensor([size // 2 <= 1 for size in level_sizes])
    return shifts.masked_fill(empty[None, :], 0)


def _pyramid(noise: torch.Tensor, shifts: torch.Tensor) -> list[torch.Tensor]:
    """The auto-correlation pyramid of noise (one map per pyramid_sizes level), after checking shifts fit it."""
    level_count = len(pyramid_sizes(noise.shape[2], noise.shape[3]))
    if shifts.shape != (noise.shape[1], level_count):
        raise ValueError(f"shifts must have shape {(noise.shape[1], level_count)}, got {tuple(shifts.shape)}")
    levels = [noise]
    for _ in range(1, level_count):
        levels.append(F.avg_pool2d(levels[-1], kernel_size=2))
    return levels


def _row_rolls(level: torch.Tensor, shifts: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """torch.roll(level, s, 2) for each row s of shifts [S, C], with a different shift per channel (level
    [B, C, H, W]): whole rows picked by one index_select over the channel-and-row axis. Columns: roll the
    transposed map (_both_axes)."""
    batch, channels, height, width = level.shape
    offsets = torch.arange(channels, device=level.device).view(1, channels, 1) * height
    # roll(n, s)[i] = n[(i - s) mod size]
    rows = (torch.arange(height, device=level.device) - shifts.to(level.device)[:, :, None]) % height + offsets
    picked = torch.index_select(level.reshape(batch, channels * height, width), 1, rows.flatten())
    return picked.view(batch, shifts.shape[0], channels, height, width).unbind(1)


def _both_axes(level: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The map with its rows as rows, then with its columns as rows (so rolling rows rolls either axis)."""
    return level, level.transpose(2, 3).contiguous()


def _rolls_something(shifts: torch.Tensor, size: int, like: torch.Tensor) -> torch.Tensor:
    """1.0 where a roll by the shift changes a map of `size` rows, 0.0 where it is the identity (a shift of 0, the
    "no shift" of draw_shifts, or a multiple of the size): such a term would be mean(n^2)^2, not a correlation.
    Shape [1, C] (or [1, C, 1, 1] for like.dim() == 4), in like's dtype and device."""
    mask = (shifts % size != 0).to(device=like.device, dtype=like.dtype)[None, :]
    return mask if like.dim() == 2 else mask[:, :, None, None]


def auto_corr_loss(noise: torch.Tensor, shifts: torch.Tensor) -> torch.Tensor:
    """Multi-scale auto-correlation loss of each image, shape [B].

    noise: [B, C, H, W]; shifts: [C, L] with L == len(pyramid_sizes(H, W)), shared by the batch.
    Equals the references' loss for batch 1 given the same shifts (in the same channel-major order).
    """
    loss = noise.new_zeros(noise.shape[0])
    for index, level in enumerate(_pyramid(noise, shifts)):
        for axis_first in _both_axes(level):
            (rolled,) = _row_rolls(axis_first, shifts[None, :, index])
            corr = (axis_first * rolled).mean(dim=(2, 3))  # [B, C]
            valid = _rolls_something(shifts[:, index], axis_first.shape[2], corr)
            loss = loss + (valid * corr**2).sum(dim=1)
    return loss


def kl_divergence(noise: torch.Tensor) -> torch.Tensor:
    """KL-style penalty pulling each image's noise to mean 0, variance 1: var + mean^2 - 1 - log(var), shape [B].
    Images need at least 2 values (the unbiased variance of one value is undefined)."""
    flat = noise.flatten(start_dim=1)
    if flat.shape[1] < 2:
        raise ValueError(f"kl_divergence needs at least 2 values per image (unbiased variance), got {flat.shape[1]}")
    mean = flat.mean(dim=1)
    var = flat.var(dim=1)  # unbiased, as the references
    return var + mean**2 - 1 - torch.log(var + 1e-7)


# The gradients regularize_noise steps along, written out: the same values autograd gives for the losses above (the
# tests check they agree), without recording a graph for each of the 30 small steps per inversion step (half the ops,
# each a kernel launch on a GPU; on 2 CPU cores 0.76-0.90x the autograd version's CPU time for 32-128 px latents).
def _upsample_adjoint(grad: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """The adjoint of avg_pool2d(kernel 2): each coarse value spread over its 2x2 block / 4; rows and columns that
    pooling dropped (odd sizes floor) get 0."""
    up = grad.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3) * 0.25
    return F.pad(up, (0, width - up.shape[3], 0, height - up.shape[2]))


def auto_corr_grad(noise: torch.Tensor, shifts: torch.Tensor) -> torch.Tensor:
    """d auto_corr_loss(noise, shifts).sum() / d noise, [B, C, H, W].

    Per level and axis, corr = mean(m * roll(m, d)) gives d(corr^2)/dm = 2 corr (roll(m, d) + roll(m, -d)) / (H W);
    coarser levels come back through the pooling's adjoint."""
    return _auto_corr_grad_and_curvature(noise, shifts)[0]


def _auto_corr_grad_and_curvature(noise: torch.Tensor, shifts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(auto_corr_grad, a bound on the largest eigenvalue of each channel's loss Hessian [B, C, 1, 1]).

    One term, on a level of M values: c = mean(m * roll(m, d)) = m^T S m / M with S = (R + R^T) / 2 (R the roll,
    orthogonal, so ||S|| <= 1). The Hessian of c^2 is 2 grad c grad c^T + 2 c hess c with grad c = 2 S m / M and
    hess c = 2 S / M, so its norm is at most 8 |S m|^2 / M^2 + 4 |c| / M, and S m = (roll(m, d) + roll(m, -d)) / 2.
    A level k below the map is P m with P the k-fold 2x2 average pooling, ||P||^2 = 4^-k: its bound counts 4^-k.
    Summed over axes and levels this bounds the whole channel's curvature at the current point; a gradient step no
    larger than 1 / bound does not overshoot there (plain gradient descent on a quadratic with that curvature)."""
    levels = _pyramid(noise, shifts)
    grad = None
    curvature = noise.new_zeros(noise.shape[0], noise.shape[1], 1, 1)
    for index in reversed(range(len(levels))):
        level = levels[index]
        size = level.shape[2] * level.shape[3]
        scale = 2.0 / size
        level_grad = None if grad is None else _upsample_adjoint(grad, level.shape[2], level.shape[3])
        d = shifts[:, index]
        for axis_first in _both_axes(level):
            forward, backward = _row_rolls(axis_first, torch.stack([d, -d]))
            corr = (axis_first * forward).mean(dim=(2, 3), keepdim=True)  # [B, C, 1, 1]
            valid = _rolls_something(d, axis_first.shape[2], corr)
            corr = corr * valid  # skipped terms have no gradient
            both = forward + backward
            term = (scale * corr) * both
            term = term if axis_first is level else term.transpose(2, 3)
            level_grad = term if level_grad is None else level_grad + term
            s_norm2 = (0.25 * both.square()).sum(dim=(2, 3), keepdim=True)  # |S m|^2
            curvature = curvature + valid * (8 * s_norm2 / size**2 + 4 * corr.abs() / size) / 4**index
        grad = level_grad
    return grad, curvature


def kl_grad(noise: torch.Tensor) -> torch.Tensor:
    """d kl_divergence(noise).sum() / d noise: (1 - 1/(var + 1e-7)) 2 (n - mean) / (N - 1) + 2 mean / N per image."""
    flat = noise.flatten(start_dim=1)
    count = flat.shape[1]
    if count < 2:
        raise ValueError(f"kl_grad needs at least 2 values per image (unbiased variance), got {count}")
    mean = flat.mean(dim=1, keepdim=True)
    var = flat.var(dim=1, keepdim=True)
    grad = (1 - 1 / (var + 1e-7)) * (2 / (count - 1)) * (flat - mean) + (2 / count) * mean
    return grad.view_as(noise)


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

    The gradients are auto_corr_grad's and kl_grad's (no autograd, so it runs under ComfyUI's inference mode as is).
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
    sizes = pyramid_sizes(noise.shape[2], noise.shape[3])
    # The KL step, capped for tiny images (module notes): unchanged for more than 4 lambda_kl + 1 values per image.
    count = noise[0].numel() if noise.shape[0] else 0
    kl_step = min(lambda_kl, (count - 1) / 4) if count >= 2 else 0.0
    # at least fp32 so that fp16 models do not lose the small gradient steps (float64 stays float64)
    eps = at_least_float32(noise.detach())
    for _ in range(num_reg_steps):
        if lambda_ac > 0:
            for _ in range(num_ac_rolls):
                grad, curvature = _auto_corr_grad_and_curvature(eps, shift_sampler(eps.shape[1], sizes))
                ac_step = lambda_ac / num_ac_rolls
                if bool((ac_step * curvature <= 1).all()):
                    eps = eps - ac_step * grad  # the references' step (every ordinary latent)
                else:
                    # A map so small (or noise so large) that the references' step would overshoot and diverge: that
                    # channel steps 1 / curvature instead (see _auto_corr_grad_and_curvature).
                    eps = eps - torch.clamp(1 / curvature, max=ac_step) * grad
        if kl_step > 0:
            eps = eps - kl_step * kl_grad(eps)
    return eps.to(in_dtype)
