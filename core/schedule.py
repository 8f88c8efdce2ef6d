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

__all__ = ["FLOW_KIND", "SCHEDULES", "FlowSchedule", "InversionSchedule", "inversion_schedule", "regeneration_sigmas", "restore_schedule",
           "sigmas_from_alphas_cumprod"]

SCHEDULES = ("diffusers", "authors")
# The "kind" of a LATENT's inversion record made by the flow-model path (core.inversion.invert_flow_latent), which
# carries no DDIM schedule.
FLOW_KIND = "flow"


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
        """UNet calls of the inversion (the "authors" schedule skips two of its DDIM steps)."""
        return len(self.timesteps)

    @property
    def ddim_steps(self) -> int:
        """The DDIM step count the schedule was made for (inversion_schedule's `steps`): what sampling retraces."""
        return self.steps + 2 if self.name == "authors" else self.steps

    def regeneration_sigmas(self) -> torch.Tensor:
        """Descending sigmas that undo this inversion with a deterministic sampler, ending at 0."""
        return regeneration_sigmas(self.levels)

    def to_dict(self) -> dict:
        """Plain-Python description (JSON-able), carried in the LATENT for later nodes."""
        return {
            "schedule": self.name,
            "steps": self.steps,
            "timesteps": list(self.timesteps),
            "levels": [float(s) for s in self.levels],
            "eval_sigmas": [float(s) for s in self.eval_sigmas],
        }

    @classmethod
    def from_dict(cls, info) -> "InversionSchedule":
        """The schedule a LATENT carries (to_dict's output, possibly with extra keys), checked for shape only:
        compare it with a model's table with restore_schedule."""
        if hasattr(info, "get") and info.get("kind") == FLOW_KIND:
            raise ValueError(
                "this latent was inverted with a flow-matching model (SD 3.x, Flux), not with a DDIM model: edit it "
                "with the model it was inverted with (Guided Edit takes its flow path for SD 3.x and Flux), or "
                "regenerate it with SamplerCustom (euler, cfg 1, add_noise off) and the inversion's "
                "regeneration_sigmas"
            )
        try:
            name = str(info["schedule"])
            levels = torch.tensor([float(s) for s in info["levels"]], dtype=torch.float32)
            eval_sigmas = torch.tensor([float(s) for s in info["eval_sigmas"]], dtype=torch.float32)
            timesteps = tuple(int(t) for t in info["timesteps"])
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(
                f"the latent's inversion record is damaged ({type(e).__name__}: {e}): invert the image again with "
                "P2PZ_InvertLatent (or P2PZ_NoiseLatent) and pass its latent on unchanged"
            ) from e
        if name not in SCHEDULES or len(levels) != len(timesteps) + 1 or len(eval_sigmas) != len(timesteps) or \
                not timesteps:
            raise ValueError(
                f"the latent's inversion record is inconsistent (schedule {name!r}, {len(timesteps)} timesteps, "
                f"{len(levels)} levels): invert the image again and pass its latent on unchanged"
            )
        return cls(name=name, levels=levels, eval_sigmas=eval_sigmas, timesteps=timesteps)


@dataclass(frozen=True)
class FlowSchedule:
    """The levels a flow inversion walked (SD 3.x, Flux: core.flow_space.flow_levels, ascending from 0 to below 1) and
    the ComfyUI scheduler they came from: the flow path's record, as InversionSchedule is DDIM's."""

    levels: torch.Tensor
    scheduler: str

    @property
    def steps(self) -> int:
        return len(self.levels) - 1

    def regeneration_sigmas(self) -> torch.Tensor:
        return regeneration_sigmas(self.levels)

    def to_dict(self) -> dict:
        return {"kind": FLOW_KIND, "scheduler": self.scheduler, "steps": self.steps,
                "levels": [float(s) for s in self.levels]}

    @classmethod
    def from_dict(cls, info) -> "FlowSchedule":
        """The record a flow-inverted LATENT carries (to_dict's output, possibly with extra keys), checked."""
        if not hasattr(info, "get") or info.get("kind") != FLOW_KIND:
            raise ValueError(
                "this is a flow-matching model (SD 3.x, Flux): the guided edit needs the inverted_latent output of "
                "Invert Latent run with this model, which carries the flow inversion's sigmas"
                + ("" if info is None else " (this latent carries a DDIM inversion record: another model)"))
        try:
            levels = torch.tensor([float(s) for s in info["levels"]], dtype=torch.float32)
            steps, scheduler = int(info["steps"]), str(info["scheduler"])
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"the latent's inversion record is damaged ({type(e).__name__}: {e}): invert the image "
                             "again with P2PZ_InvertLatent and pass its latent on unchanged") from e
        if len(levels) != steps + 1 or steps < 1 or float(levels[0]) != 0.0 or float(levels[-1]) >= 1.0 or \
                not bool((levels[1:] > levels[:-1]).all()):
            raise ValueError(f"the latent's inversion record is inconsistent ({steps} steps, {len(levels)} levels): "
                             "invert the image again and pass its latent on unchanged")
        return cls(levels=levels, scheduler=scheduler)


def regeneration_sigmas(levels: torch.Tensor) -> torch.Tensor:
    """The descending sigmas that retrace ascending inversion levels [l_0, ..., l_N] back to 0: [l_N, ..., l_1, 0]
    (the clean latent's own level l_0 is where the last step lands; a sampler's last sigma is 0)."""
    return torch.cat([levels[1:].flip(0), levels.new_zeros(1)])


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


def restore_schedule(info, sigma_table: torch.Tensor, shape=None) -> InversionSchedule:
    """The schedule an inverted LATENT carries, after checking it belongs to this model and this latent.

    info: the latent's record (InversionSchedule.to_dict() plus "shape"); sigma_table: the editing model's table;
    shape: the latent's current shape, compared with the shape the inversion produced (when the record has one).
    Raises ValueError saying what to change when the latent was resized or re-batched after the inversion, or was
    made with a model of another noise schedule.
    """
    schedule = InversionSchedule.from_dict(info)
    recorded_shape = info.get("shape") if hasattr(info, "get") else None
    if shape is not None and recorded_shape is not None and list(shape) != [int(n) for n in recorded_shape]:
        raise ValueError(
            f"the inverted latent is {list(shape)} but its inversion produced {list(recorded_shape)}: it was "
            "resized, cropped or re-batched after the inversion. Edit the latent exactly as P2PZ_InvertLatent "
            "returned it"
        )
    try:
        expected = inversion_schedule(sigma_table, schedule.ddim_steps, schedule.name)
    except ValueError as e:
        raise ValueError(f"the latent's inversion schedule does not fit this model: {e}") from e
    same = expected.timesteps == schedule.timesteps and all(
        torch.allclose(recorded, wanted, rtol=1e-4, atol=0)
        for recorded, wanted in ((schedule.levels, expected.levels), (schedule.eval_sigmas, expected.eval_sigmas)))
    if not same:
        raise ValueError(
            "the inverted latent was made with a model of another noise schedule (e.g. v-prediction/zsnr settings "
            "changed): invert and edit with the same MODEL"
        )
    return schedule
