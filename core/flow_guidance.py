"""pix2pix-zero's attention-guided edit for flow-matching MMDiT models (SD 3.x, Flux), in plain torch.

The reconstruction (the caption) and the edit (the caption moved along the direction) run in lock step down the flow
inversion's sigmas with ComfyUI's Euler step (core.flow_space). At each guided step the edit's latent first gets a
gradient step pulling its joint-attention maps (image queries over text keys, core.joint_attention) towards the
reconstruction's maps of the same step, then the Euler step is taken from the guided latent.

Carry rule: the GUIDED EDIT latent is carried to the next step and is the input of both CFG halves (the paper's
formulation, mode "paper" of the UNet path). The UNet references carry their guided negative copy, a consequence of
diffusers' `x_in.chunk(2)[0]`; it needs a second gradient pass per step, and Flux-dev has no negative branch at all.
One rule for both families, one gradient pass per step (the cost that matters on a 2.5B-12B transformer).

CFG: SD 3.x combines negative and edited velocities as ComfyUI does (v = v_neg + cfg (v_pos - v_neg), linear, so the
same as combining denoised latents); guidance-distilled models (Flux) run each branch once at their embedded
guidance (`use_negative=False`, cfg ignored).

Memory levers: `guided_steps` (guidance only on the first K steps: the layout is fixed early), the choice of blocks
(the host's hook), and the hosts' early stop of the gradient pass after the last guided block.
"""
from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable
from dataclasses import dataclass

import torch

from .attention import AttentionMaps
from .flow_space import flow_sgd_step_size
from .ode import denoised_from_slope, euler_step, slope_from_denoised
from .guidance import CAPTION, EDITED, NEGATIVE, BranchDenoiser

# callback(step, x_edit, x_ref, x0_edit, losses) after every step (latents at sigmas[step + 1]; x0_edit: the edit's
# denoised guess at sigmas[step], for previews; losses: {EDITED: its map loss before the gradient step} on guided
# steps, {} on the others and whenever lambda_xa is 0).
FlowStepCallback = Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor, dict], None]

__all__ = ["FlowGuidedResult", "flow_guided_edit"]


@dataclass
class FlowGuidedResult:
    """edited / reconstruction: the final latents at sigmas[-1] (model units). Each step's map loss goes to
    flow_guided_edit's callback."""

    edited: torch.Tensor
    reconstruction: torch.Tensor


class _FlowEditor:
    def __init__(self, denoise, maps, cfg, lambda_xa, use_negative, negative_is_caption, grad_context):
        if not cfg >= 1.0:
            raise ValueError(f"cfg must be >= 1 (1 turns classifier-free guidance off), got {cfg}")
        if not lambda_xa >= 0.0:
            raise ValueError(f"lambda_xa must be >= 0 (0 turns attention guidance off), got {lambda_xa}")
        self.denoise, self.maps = denoise, maps
        self.cfg, self.lambda_xa = float(cfg), float(lambda_xa)
        self.use_cfg = use_negative and self.cfg > 1.0
        self.negative_is_caption = negative_is_caption
        self.grad_context = grad_context

    def _velocity(self, x, denoised, positive, sigma):
        v_pos = slope_from_denoised(x, denoised[positive], sigma)
        if not self.use_cfg:
            return v_pos
        v_neg = slope_from_denoised(x, denoised[NEGATIVE], sigma) if NEGATIVE in denoised else v_pos
        return v_neg + self.cfg * (v_pos - v_neg)

    def reference_step(self, x, sigma, sigma_next, record):
        # A negative equal to the caption gives the caption's output: one evaluation (v_neg = v_pos).
        branches = {CAPTION: x} if not self.use_cfg or self.negative_is_caption else {NEGATIVE: x, CAPTION: x}
        if record:  # only the caption's maps are ever compared with (a real negative's would double the memory)
            self.maps.record(branches=(CAPTION,))
        try:
            with torch.no_grad():
                denoised = self.denoise(branches, sigma)
        finally:
            self.maps.off()
        return euler_step(x, self._velocity(x, denoised, CAPTION, sigma), sigma, sigma_next)

    def _gradient_step(self, x, sigma):
        self.maps.compare({EDITED: CAPTION}, copies=1)
        try:
            # Hosts run under torch.inference_mode (ComfyUI does): leave it, and make the leaf a normal tensor.
            with torch.inference_mode(False), torch.enable_grad(), self.grad_context():
                leaf = x.detach().clone().requires_grad_(True)
                self.denoise({EDITED: leaf}, sigma)  # only the maps matter (hosts may stop after the last one)
                if EDITED not in self.maps.losses:
                    raise RuntimeError("the model produced no joint-attention maps for the edit: the attention hook "
                                       "is not installed")
                loss = self.maps.total_loss()
                (grad,) = torch.autograd.grad(loss, [leaf])
                value = float(loss.detach())
        finally:
            self.maps.off()
            self.maps.losses = {}
        return (leaf.detach() - flow_sgd_step_size(self.lambda_xa, sigma) * grad).to(x.dtype), value

    def edit_step(self, x, sigma, sigma_next, guided):
        losses = {}
        if guided:
            x, losses[EDITED] = self._gradient_step(x, sigma)
        branches = {NEGATIVE: x, EDITED: x} if self.use_cfg else {EDITED: x}
        with torch.no_grad():
            denoised = self.denoise(branches, sigma)
        v = self._velocity(x, denoised, EDITED, sigma)
        return euler_step(x, v, sigma, sigma_next), denoised_from_slope(x, v, sigma), losses


def flow_guided_edit(
    denoise: BranchDenoiser,
    maps: AttentionMaps,
    x: torch.Tensor,
    sigmas,
    *,
    cfg: float = 1.0,
    lambda_xa: float = 0.1,
    use_negative: bool = True,
    negative_is_caption: bool = False,
    guided_steps: int | None = None,
    grad_context=contextlib.nullcontext,
    callback: FlowStepCallback | None = None,
) -> FlowGuidedResult:
    """Reconstruct and edit the inverted flow latent x (model units, at level sigmas[0]) down the descending sigmas.

    denoise({branch: x}, sigma) -> {branch: denoised} as core.guidance's BranchDenoiser. guided_steps: guide only
    the first K steps (None: all). grad_context(): a context manager around each gradient pass, forward AND
    backward (hosts alias inference-tensor weights there: a checkpointed block recomputes inside the backward).
    callback(step, x_edit, x_ref, x0_edit, losses) after every step (FlowStepCallback), with the edit's
    clean-latent guess for previews and the step's map loss.
    """
    editor = _FlowEditor(denoise, maps, cfg, lambda_xa, use_negative, negative_is_caption, grad_context)
    levels = [float(s) for s in sigmas]
    if len(levels) < 2 or any(b >= a for a, b in itertools.pairwise(levels)) or levels[-1] < 0 or levels[0] >= 1:
        raise ValueError("sigmas must descend strictly from below 1 to >= 0 and hold at least two levels")
    limit = len(levels) - 1 if guided_steps is None else int(guided_steps)
    x_ref, x_edit = x, x
    try:
        for step in range(len(levels) - 1):
            sigma, sigma_next = levels[step], levels[step + 1]
            guided = step < limit and editor.lambda_xa > 0
            x_ref = editor.reference_step(x_ref, sigma, sigma_next, record=guided)
            x_edit, x0, losses = editor.edit_step(x_edit, sigma, sigma_next, guided)
            if callback is not None:
                callback(step, x_edit, x_ref, x0, losses)
    finally:
        maps.clear()
    return FlowGuidedResult(edited=x_edit, reconstruction=x_ref)
