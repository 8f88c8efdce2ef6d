"""Step schedules for DDIM inversion, in ComfyUI's sigma space.

ComfyUI samples x = x_t / sqrt(alpha_bar_t) at noise level sigma_t = sqrt((1 - alpha_bar_t) / alpha_bar_t); in that
space a deterministic DDIM step with predicted noise eps is the Euler step x <- x + eps * (sigma_to - sigma_from),
for eps- and v-prediction models alike (the model is asked for eps at a given input and timestep).

An inversion step therefore needs three numbers: the level the latent is at (`sigma_from`), the level it moves to
(`sigma_to`), and the timestep at which the UNet is asked for the noise (`sigma_eval`, the input itself is scaled
for `sigma_from`). The two reference schedules differ in exactly these:

- "diffusers" (default; `StableDiffusionPix2PixZeroPipeline.invert` with `DDIMInverseScheduler`, SD's config:
  "leading" spacing, steps_offset 1, set_alpha_to_one False): timesteps t = 1, 1 + r, ..., 1 + (N - 1) r with
  r = 1000 // N. Step t moves from level t - r (level 0, i.e. alpha_bar[0], for the first step) to level t and
  asks the UNet at timestep t. N UNet calls.
- "authors" (the pix2pix-zero repository's `ddim_inv.py` with its own `DDIMInverseScheduler`): the same timesteps
  with the first and last skipped (N - 2 calls). Step t moves from level t - 1 to level t + r - 1 and asks the
  UNet at timestep t: for 50 steps the clean latent is treated as sitting at level 20 (alpha_bar[20]) and the
  inversion stops at level 980.

`regeneration_sigmas` gives the matching descending sigmas for a deterministic sampler (ComfyUI's `ddim`/`euler`
sampler with `SamplerCustom`); for N dividing 1000 and the default schedule they equal ComfyUI's `ddim_uniform`
scheduler.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["SCHEDULES", "InversionSchedule", "inversion_schedule", "sigmas_from_alphas_cumprod"]

SCHEDULES = ("diffusers", "authors")


@dataclass(frozen=True)
class InversionSchedule:
    """Per-step noise levels of an inversion, ascending.

    levels: [N + 1] sigma of the latent before step 0, after step 0, ..., after step N - 1.
    eval_sigmas: [N] sigma whose timestep the UNet is asked at in step k.
    timesteps: [N] the same as integer training timesteps (for reporting and for the guided sampler).
    """

    name: str
    levels: torch.Tensor
    eval_sigmas: torch.Tensor
    timesteps: tuple[int, ...]

    @property
    def steps(self) -> int:
        return len(self.timesteps)

    def regeneration_sigmas(self) -> torch.Tensor:
        """Descending sigmas that undo this inversion with a deterministic sampler, ending at 0."""
        return torch.cat([self.levels[1:].flip(0), self.levels.new_zeros(1)])

    def to_dict(self) -> dict:
        """Plain-Python description (JSON-able), carried in the LATENT for later nodes."""
        return {
            "schedule": self.name,
            "steps": self.steps,
            "timesteps": list(self.timesteps),
            "levels": [float(s) for s in self.levels],
            "eval_sigmas": [float(s) for s in self.eval_sigmas],
        }


def sigmas_from_alphas_cumprod(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """ComfyUI's sigma table: sigma_t = sqrt((1 - alpha_bar_t) / alpha_bar_t)."""
    alphas_cumprod = alphas_cumprod.double()
    return ((1 - alphas_cumprod) / alphas_cumprod).sqrt().float()


def inversion_schedule(sigma_table: torch.Tensor, steps: int, schedule: str = "diffusers") -> InversionSchedule:
    """Build the inversion schedule from a model's sigma table (one sigma per training timestep, ascending).

    sigma_table is ComfyUI's `model_sampling.sigmas` (1000 entries for SD 1.x/2.x/SDXL).
    """
    train_steps = int(sigma_table.shape[0])
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    if steps > train_steps // 2:
        raise ValueError(f"steps must be at most {train_steps // 2} for a model with {train_steps} timesteps, got {steps}")
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown inversion schedule {schedule!r}; choose one of {', '.join(SCHEDULES)}")
    ratio = train_steps // steps
    timesteps = [1 + k * ratio for k in range(steps)]  # "leading" spacing, steps_offset 1
    table = sigma_table.float().cpu()
    if schedule == "diffusers":
        level_index = [max(t - ratio, 0) for t in timesteps[:1]] + timesteps
        eval_index = timesteps
    else:
        if steps < 3:
            raise ValueError("the 'authors' schedule skips the first and last step: it needs steps >= 3")
        eval_index = timesteps[1:-1]
        level_index = [eval_index[0] - 1] + [t + ratio - 1 for t in eval_index]
    return InversionSchedule(
        name=schedule,
        levels=table[level_index],
        eval_sigmas=table[eval_index],
        timesteps=tuple(eval_index),
    )
