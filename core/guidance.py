"""pix2pix-zero's editing with cross-attention guidance (paper section 3.3), in ComfyUI's sigma space.

Both reference implementations (the authors' `EditingPipeline`, diffusers' `StableDiffusionPix2PixZeroPipeline`)
first denoise the inverted latent with the caption and keep every step's cross-attention maps (the
reconstruction), then denoise it again with the edited caption and, at every step:
1. x_in = two detached copies of the latent (the CFG batch [negative, edited]) with gradients;
2. one UNet pass with [negative, edited] conditioning; loss = sum over attn2 layers of
   ((M - M_ref)^2).sum over pixels and tokens, .mean over the 2 * heads rows (`core.attention.attention_loss`);
   each copy's maps are compared with the reference maps of the same CFG half, so each copy gets the gradient of
   its own branch's loss;
3. x_in <- x_in - lambda_xa * grad (a plain SGD step on the DDIM sample x_t);
4. a no-grad UNet pass on the updated x_in; CFG: eps = eps_neg + cfg * (eps_edit - eps_neg);
5. the DDIM step is applied to x_in.chunk(2)[0], the NEGATIVE (unconditional) copy: the latent carried to the next
   step is the negative copy, guided towards the reference's negative-branch maps; the guided edited copy only feeds
   the conditional noise prediction. Without CFG (cfg 1) the batch is the edited copy alone and it is carried.

Mode "references" (default) reproduces exactly that. Mode "paper" is the paper's formulation: only the edited
branch's maps are guided (same gradient as the references give their edited copy), and the guided latent is both
CFG halves' input and the latent carried.

Work that is provably redundant is skipped, with unchanged results: the two steps run in lock step (reference step
i, then edit step i), so only one step's maps ever exist; a CFG pair whose negative equals the caption is one model
evaluation in the reference pass (its two halves are identical); lambda_xa = 0 skips the gradient pass (the step
would be zero); where the edit's latent equals the reconstruction's (the first step), the negative copy's maps are
the reference maps, so its loss and gradient are exactly zero and it is not evaluated, and its noise prediction is
the reference step's negative one, which is reused.

Sigma space: every conversion (x and x_t, eps from the denoised latent, the DDIM step, the SGD step size) is
core.sigma_space's.
"""
from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch

from .attention import AttentionMaps
from .schedule import inversion_schedule
from .ode import euler_step, slope_from_denoised
from .sigma_space import restate, sgd_step_size, to_ddim

__all__ = [
    "CAPTION",
    "EDITED",
    "GUIDANCE_MODES",
    "NEGATIVE",
    "GuidedEditResult",
    "GuidedEditor",
    "generation_sigmas",
    "guided_edit",
    "restate",
]

NEGATIVE, CAPTION, EDITED = "negative", "positive", "edited"
GUIDANCE_MODES = ("references", "paper")

# denoise({branch: x}, sigma) -> {branch: denoised}: every branch's latent x (sigma space, [B, C, H, W]) with that
# branch's conditioning, at noise level sigma; hosts batch the branches into one model call where they can.
BranchDenoiser = Callable[[Mapping[str, torch.Tensor], float], Mapping[str, torch.Tensor]]
# on_gradient_step(x, stepped, losses) after every gradient pass: x the latent before it, stepped {branch: its copy
# after the gradient step}, losses {branch: map loss before it}
GradientStepCallback = Callable[[torch.Tensor, Mapping[str, torch.Tensor], Mapping[str, float]], None]
# callback(step, edited_x, reconstruction_x, eps, losses) after every step (x at sigmas[step + 1]; losses: the map loss
# of each guided branch before its gradient step, {} when lambda_xa is 0 and no gradient pass runs).
StepCallback = Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor, dict], None]


def generation_sigmas(sigma_table: torch.Tensor, steps: int) -> torch.Tensor:
    """The references' DDIM sampling levels, descending [steps + 1]: "leading" timesteps 1 + k * (1000 // steps)
    with steps_offset 1, and the last step going to alpha_bar[0] (set_alpha_to_one False), not to sigma 0.

    These are the levels of the "diffusers" inversion schedule reversed; the authors' edit uses the same DDIM
    sampler after their shorter inversion."""
    return inversion_schedule(sigma_table, steps, "diffusers").levels.flip(0)


@dataclass
class GuidedEditResult:
    """edited / reconstruction: the final latents as the references decode them (the DDIM sample at the last
    level, x_t = x / sqrt(1 + sigma_last^2)). Each step's map losses go to guided_edit's callback."""

    edited: torch.Tensor
    reconstruction: torch.Tensor


class GuidedEditor:
    """One reference step and one guided edit step at a time (see the module docstring)."""

    def __init__(
        self,
        denoise: BranchDenoiser,
        maps: AttentionMaps,
        *,
        cfg: float = 5.0,
        lambda_xa: float = 0.1,
        mode: str = "references",
        negative_is_caption: bool = False,
        on_gradient_step: GradientStepCallback | None = None,
    ):
        if mode not in GUIDANCE_MODES:
            raise ValueError(f"unknown guidance mode {mode!r}; choose one of {', '.join(GUIDANCE_MODES)}")
        if not cfg >= 1.0:
            raise ValueError(f"cfg must be >= 1 (1 turns classifier-free guidance off), got {cfg}")
        if not lambda_xa >= 0.0:
            raise ValueError(f"lambda_xa must be >= 0 (0 turns cross-attention guidance off), got {lambda_xa}")
        self.denoise = denoise
        self.maps = maps
        self.cfg = float(cfg)
        self.lambda_xa = float(lambda_xa)
        self.mode = mode
        self.use_cfg = self.cfg > 1.0  # the references batch the negative only when guidance_scale > 1
        self.negative_is_caption = negative_is_caption
        self.on_gradient_step = on_gradient_step
        # (x, sigma, eps) of the last reference step's negative branch: the edit's first step reuses it
        self._reference_negative = None

    # -- the reconstruction -------------------------------------------------------------------------------------
    def reference_step(self, x: torch.Tensor, sigma: float, sigma_next: float):
        """Record this step's maps of the caption (and negative) branch and take the CFG DDIM step from x.

        Returns (x_next, eps)."""
        if not self.use_cfg or self.negative_is_caption:
            branches = {CAPTION: x}  # an identical negative gives identical output and maps: one evaluation
        else:
            branches = {NEGATIVE: x, CAPTION: x}
        self.maps.record(branches=set(self._guided_branches().values()))  # only the maps a compare pass targets
        try:
            with torch.no_grad():
                denoised = self.denoise(branches, sigma)
        finally:
            self.maps.off()
        eps_c = slope_from_denoised(x, denoised[CAPTION], sigma)
        if self.use_cfg:
            eps_u = slope_from_denoised(x, denoised[NEGATIVE], sigma) if NEGATIVE in denoised else eps_c
            eps = eps_u + self.cfg * (eps_c - eps_u)
            self._reference_negative = (x, sigma, eps_u)
        else:
            eps = eps_c
        return euler_step(x, eps, sigma, sigma_next), eps

    # -- the edit -----------------------------------------------------------------------------------------------
    def _guided_branches(self):
        """Branches whose latent copy gets a gradient step, and the reference branch each is compared with."""
        if self.use_cfg and self.mode == "references":
            return {NEGATIVE: CAPTION if self.negative_is_caption else NEGATIVE, EDITED: CAPTION}
        return {EDITED: CAPTION}

    def _gradient_step(self, x: torch.Tensor, sigma: float, targets: Mapping[str, str]):
        """One UNet pass with gradients on a copy of x per guided branch; returns the stepped copies and losses."""
        # maps_only: the noise prediction of this pass is not used (as the references), only the map loss.
        self.maps.compare(targets, copies=2 if self.use_cfg else 1, maps_only=True)
        try:
            # Hosts may run under torch.inference_mode (ComfyUI does): leave it for this pass and make the leaves
            # normal tensors, so autograd can save what it needs.
            with torch.inference_mode(False), torch.enable_grad():
                leaves = {b: x.detach().clone().requires_grad_(True) for b in targets}
                self.denoise(leaves, sigma)  # its output is not used: hosts may return early (maps_only)
                if set(self.maps.losses) != set(targets):
                    raise RuntimeError(
                        "the model produced no cross-attention maps for the branches "
                        f"{sorted(set(targets) - set(self.maps.losses))}: the attention hook is not installed"
                    )
                loss = self.maps.total_loss()
                grads = torch.autograd.grad(loss, list(leaves.values()))
                losses = {b: float(v.detach()) for b, v in self.maps.losses.items()}
        finally:
            self.maps.off()
            self.maps.losses = {}
        size = sgd_step_size(self.lambda_xa, sigma)  # the references' SGD step on x_t, written for x
        stepped = {b: (leaf.detach() - size * g).to(x.dtype) for (b, leaf), g in zip(leaves.items(), grads)}
        return stepped, losses

    def _reused_negative(self, x_ref: torch.Tensor, sigma: float) -> torch.Tensor | None:
        """The negative-branch eps of the reference step just taken from x_ref at sigma, if that is what ran."""
        if self._reference_negative is None:
            return None
        x_seen, sigma_seen, eps_u = self._reference_negative
        if sigma_seen != sigma or not (x_seen is x_ref or torch.equal(x_seen, x_ref)):
            return None
        return eps_u

    def edit_step(self, x: torch.Tensor, sigma: float, sigma_next: float, x_ref: torch.Tensor | None = None):
        """The guided step from x (run after reference_step of the same step, which started from x_ref).

        Returns (x_next, eps, losses): losses, the map loss of each guided branch before its gradient step ({} when
        lambda_xa is 0: no gradient pass, no loss)."""
        targets = self._guided_branches()
        losses = {}
        exact = {}
        if NEGATIVE in targets and x_ref is not None and torch.equal(x, x_ref):
            # The negative copy sits on the reconstruction's latent with the reference's own conditioning: its maps
            # ARE the reference maps, so its loss and gradient are exactly 0 (the first step). Computing them would
            # only turn float rounding into a step (the references' batch-2 passes happen to round identically).
            exact[NEGATIVE] = 0.0
            targets = {b: t for b, t in targets.items() if b != NEGATIVE}
        if self.lambda_xa > 0:
            stepped, losses = self._gradient_step(x, sigma, targets)
            if self.on_gradient_step is not None:
                self.on_gradient_step(x, dict(stepped), dict(losses))
        else:
            stepped = {b: x for b in targets}  # a zero step: the gradient pass is provably redundant
        for branch, value in exact.items():
            stepped[branch] = x
            if self.lambda_xa > 0:
                losses[branch] = value
        guided = stepped[EDITED]
        eps_u = None
        if self.use_cfg:
            # references: each CFG half at its own guided copy; paper: both halves at the guided edit latent
            x_neg = stepped.get(NEGATIVE, guided)
            branches = {NEGATIVE: x_neg, EDITED: guided}
            if NEGATIVE in exact:
                # the negative copy is unmoved on the reconstruction's latent, with the negative conditioning:
                # the reference step just evaluated exactly that (as its negative, or as the caption it equals)
                eps_u = self._reused_negative(x_ref, sigma)
                if eps_u is not None:
                    del branches[NEGATIVE]
        else:
            x_neg = guided
            branches = {EDITED: guided}
        with torch.no_grad():
            denoised = self.denoise(branches, sigma)
        eps_c = slope_from_denoised(guided, denoised[EDITED], sigma)
        if self.use_cfg:
            if eps_u is None:
                eps_u = slope_from_denoised(x_neg, denoised[NEGATIVE], sigma)
            eps = eps_u + self.cfg * (eps_c - eps_u)
        else:
            eps = eps_c
        # the references carry x_in.chunk(2)[0]: the negative copy with CFG, the edited copy without
        carried = x_neg if self.mode == "references" else guided
        return euler_step(carried, eps, sigma, sigma_next), eps, losses


def guided_edit(
    denoise: BranchDenoiser,
    maps: AttentionMaps,
    x: torch.Tensor,
    sigmas,
    *,
    cfg: float = 5.0,
    lambda_xa: float = 0.1,
    mode: str = "references",
    negative_is_caption: bool = False,
    callback: StepCallback | None = None,
    on_gradient_step: GradientStepCallback | None = None,
) -> GuidedEditResult:
    """Reconstruct and edit the inverted latent x (sigma space, at sigmas[0]) down the descending `sigmas`.

    The reference (reconstruction) and the edit advance in lock step, so only the current step's maps are kept.
    Returns both final latents as the references decode them (see GuidedEditResult); callback (StepCallback)
    receives every step's latents, noise prediction and map losses; on_gradient_step (GradientStepCallback) every
    gradient pass's result (for instruments and tests: the step each guided branch's latent took).
    """
    editor = GuidedEditor(denoise, maps, cfg=cfg, lambda_xa=lambda_xa, mode=mode,
                          negative_is_caption=negative_is_caption, on_gradient_step=on_gradient_step)
    levels = [float(s) for s in sigmas]
    if len(levels) < 2 or any(b >= a for a, b in itertools.pairwise(levels)) or levels[-1] < 0:
        raise ValueError("sigmas must be strictly descending, non-negative and hold at least two levels")
    if levels[-1] == 0:
        raise ValueError("the last level must be above 0 (the references stop at alpha_bar[0]): see generation_sigmas")
    x_ref, x_edit = x, x
    try:
        for step in range(len(levels) - 1):
            sigma, sigma_next = levels[step], levels[step + 1]
            x_ref_next, _ = editor.reference_step(x_ref, sigma, sigma_next)
            x_edit, eps, losses = editor.edit_step(x_edit, sigma, sigma_next, x_ref=x_ref)
            x_ref = x_ref_next
            if callback is not None:
                callback(step, x_edit, x_ref, eps, losses)
    finally:
        maps.clear()
    return GuidedEditResult(edited=to_ddim(x_edit, levels[-1]), reconstruction=to_ddim(x_ref, levels[-1]))
