"""pix2pix-zero's editing with attention guidance (paper section 3.3): one editor for every model family.

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

One loop serves both model families; what differs is a seam of three rules (`StepRules`) and the carry rule:
- DDIM_RULES (SD 1.x, 2.x, SDXL in ComfyUI's sigma space, core.sigma_space): the references' SGD step on x_t written
  for x (`sgd_step_size`), the loss averaged over the CFG batch's rows as the references do, and the result returned
  as the DDIM sample the references decode;
- FLOW_RULES (SD 3.x, Flux: rectified flow, core.flow_space): the same SGD step on the variance-preserving latent
  at the same signal-to-noise ratio (`flow_sgd_step_size`), the loss over the edited branch's rows, the result in
  model units. The maps there are the joint attention's image-query / text-key block (core.joint_attention).
Every step is ComfyUI's Euler step in its sampling space (core.ode), DDIM's deterministic step on the UNet path.

Carry rule (`mode`): "references" (the default on the UNet path) reproduces steps 1-5 exactly. "paper" is the
paper's formulation: only the edited branch's maps are guided (the same gradient the references give their edited
copy), and the guided latent is both CFG halves' input and the latent carried; one gradient pass per step. The
flow path always runs "paper": the references' negative copy is a consequence of diffusers' `x_in.chunk(2)[0]`, it
needs a second gradient pass on a 2.5B-12B transformer, and Flux-dev has no negative branch at all
(`use_negative=False`: each branch once at the model's embedded guidance, cfg ignored).

`guided_steps` guides only the first K steps (the high-noise steps that set the layout); the later steps run as
lambda_xa 0 and record no maps.

Work that is provably redundant is skipped, with unchanged results: the two steps run in lock step (reference step
i, then edit step i), so only one step's maps ever exist; a CFG pair whose negative equals the caption is one model
evaluation in the reference pass (its two halves are identical); an unguided step (lambda_xa 0, or past
guided_steps) records no maps and skips the gradient pass (the step would be zero); where the edit's latent equals
the reconstruction's (the first step), the negative copy's maps are the reference maps, so its loss and gradient
are exactly zero and it is not evaluated, and its noise prediction is the reference step's negative one, which is
reused.
"""
from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch

from .attention import AttentionMaps
from .flow_space import flow_sgd_step_size
from .ode import denoised_from_slope, euler_step, slope_from_denoised
from .schedule import inversion_schedule
from .sigma_space import restate, sgd_step_size, to_ddim

__all__ = [
    "CAPTION",
    "DDIM_RULES",
    "EDITED",
    "FLOW_RULES",
    "GUIDANCE_MODES",
    "NEGATIVE",
    "GuidedEditResult",
    "GuidedEditor",
    "StepRules",
    "generation_sigmas",
    "guided_edit",
    "guided_targets",
    "restate",
]

NEGATIVE, CAPTION, EDITED = "negative", "positive", "edited"
GUIDANCE_MODES = ("references", "paper")

# denoise({branch: x}, sigma) -> {branch: denoised}: every branch's latent x (the family's sampling space,
# [B, C, H, W]) with that branch's conditioning, at noise level sigma; hosts batch the branches into one model call
# where they can. A host may return None from a maps-only pass (the gradient pass uses nothing but the maps).
BranchDenoiser = Callable[[Mapping[str, torch.Tensor], float], Mapping[str, torch.Tensor]]
# on_gradient_step(x, stepped, losses) after every gradient pass: x the latent before it, stepped {branch: its copy
# after the gradient step}, losses {branch: map loss before it}
GradientStepCallback = Callable[[torch.Tensor, Mapping[str, torch.Tensor], Mapping[str, float]], None]
# callback(step, x_edit, x_ref, x0_edit, losses) after every step: the latents at sigmas[step + 1], the edit's
# clean-latent guess (for previews), and the map loss of each guided branch before its gradient step ({} on a step
# without a gradient pass: lambda_xa 0, or past guided_steps).
StepCallback = Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor, dict], None]


def _check_ddim_levels(levels: Sequence[float]) -> None:
    if levels[-1] == 0:
        raise ValueError("the last level must be above 0 (the references stop at alpha_bar[0]): see generation_sigmas")


def _check_flow_levels(levels: Sequence[float]) -> None:
    if levels[0] >= 1:
        raise ValueError("a flow model's sigmas must start below 1 (sigma 1 is pure noise: nothing to invert)")


def _as_sampled(x: torch.Tensor, sigma_last: float) -> torch.Tensor:
    return x


@dataclass(frozen=True)
class StepRules:
    """The seam between model families: the only rules in which their guided loops differ.

    step_size(lambda_xa, sigma): the SGD step on x that equals the references' step lambda_xa on the DDIM sample.
    loss_over_cfg_batch: the map loss is averaged over the CFG batch's rows (the references' mean over 2 * heads
    rows with CFG) instead of the edited branch's heads alone.
    result(x, sigma_last): the final latent as it is decoded. check_levels(levels): the family's own limits on the
    sigmas, after the common ones (strictly descending, non-negative)."""

    name: str
    step_size: Callable[[float, float], float]
    loss_over_cfg_batch: bool
    result: Callable[[torch.Tensor, float], torch.Tensor]
    check_levels: Callable[[Sequence[float]], None]


# UNet models (SD 1.x, 2.x, SDXL) in ComfyUI's sigma space, as the references: the DDIM sample x_t is what they decode
DDIM_RULES = StepRules("ddim", sgd_step_size, True, to_ddim, _check_ddim_levels)
# Flow-matching models (SD 3.x, Flux): x = (1 - s) x0 + s noise, in model units
FLOW_RULES = StepRules("flow", flow_sgd_step_size, False, _as_sampled, _check_flow_levels)


def guided_targets(*, use_cfg: bool, mode: str, negative_is_caption: bool) -> dict[str, str]:
    """The branches whose latent copy gets a gradient step, each with the reference branch its maps are compared
    with: with CFG in mode "references", the negative copy too (towards the reference's negative, or the caption
    it equals); otherwise the edited branch alone."""
    if use_cfg and mode == "references":
        return {NEGATIVE: CAPTION if negative_is_caption else NEGATIVE, EDITED: CAPTION}
    return {EDITED: CAPTION}


def generation_sigmas(sigma_table: torch.Tensor, steps: int) -> torch.Tensor:
    """The references' DDIM sampling levels, descending [steps + 1]: "leading" timesteps 1 + k * (1000 // steps)
    with steps_offset 1, and the last step going to alpha_bar[0] (set_alpha_to_one False), not to sigma 0.

    These are the levels of the "diffusers" inversion schedule reversed; the authors' edit uses the same DDIM
    sampler after their shorter inversion."""
    return inversion_schedule(sigma_table, steps, "diffusers").levels.flip(0)


@dataclass
class GuidedEditResult:
    """edited / reconstruction: the final latents as the family decodes them (StepRules.result: on the UNet path the
    DDIM sample at the last level, x_t = x / sqrt(1 + sigma_last^2), as the references; on the flow path the latent
    at the last level). Each step's map losses go to guided_edit's callback."""

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
        use_negative: bool = True,
        rules: StepRules = DDIM_RULES,
        grad_context: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
        on_gradient_step: GradientStepCallback | None = None,
    ):
        if mode not in GUIDANCE_MODES:
            raise ValueError(f"unknown guidance mode {mode!r}; choose one of {', '.join(GUIDANCE_MODES)}")
        if not cfg >= 1.0:
            raise ValueError(f"cfg must be >= 1 (1 turns classifier-free guidance off), got {cfg}")
        if not lambda_xa >= 0.0:
            raise ValueError(f"lambda_xa must be >= 0 (0 turns attention guidance off), got {lambda_xa}")
        self.denoise = denoise
        self.maps = maps
        self.cfg = float(cfg)
        self.lambda_xa = float(lambda_xa)
        self.mode = mode
        # the references batch the negative only when guidance_scale > 1; guidance-distilled models have none
        self.use_cfg = use_negative and self.cfg > 1.0
        self.negative_is_caption = negative_is_caption
        self.rules = rules
        self.grad_context = grad_context
        self.on_gradient_step = on_gradient_step
        self.targets = guided_targets(use_cfg=self.use_cfg, mode=mode, negative_is_caption=negative_is_caption)
        # (x, sigma, eps) of the last reference step's negative branch: the edit's first step reuses it
        self._reference_negative = None

    def _combined(self, x_pos, x_neg, denoised, positive, sigma, slope_neg=None):
        """The CFG slope: slope_neg + cfg (slope_pos - slope_neg) (linear: the same as ComfyUI's combination of the
        denoised latents). slope_neg: the negative's slope where it is known already; else from its output, or, for
        a negative equal to the positive that was not evaluated, the positive's."""
        slope = slope_from_denoised(x_pos, denoised[positive], sigma)
        if not self.use_cfg:
            return slope, None
        if slope_neg is None:
            slope_neg = slope_from_denoised(x_neg, denoised[NEGATIVE], sigma) if NEGATIVE in denoised else slope
        return slope_neg + self.cfg * (slope - slope_neg), slope_neg

    # -- the reconstruction -------------------------------------------------------------------------------------
    def reference_step(self, x: torch.Tensor, sigma: float, sigma_next: float, record: bool = True):
        """Take the CFG step of the caption (the reconstruction) from x and, when `record`, keep this step's maps of
        the branches a compare pass targets (only those: a real negative's maps are kept only where a negative copy
        is guided towards them).

        Returns (x_next, slope)."""
        if not self.use_cfg or self.negative_is_caption:
            branches = {CAPTION: x}  # an identical negative gives identical output and maps: one evaluation
        else:
            branches = {NEGATIVE: x, CAPTION: x}
        if record:
            self.maps.record(branches=set(self.targets.values()))
        try:
            with torch.no_grad():
                denoised = self.denoise(branches, sigma)
        finally:
            self.maps.off()
        slope, slope_neg = self._combined(x, x, denoised, CAPTION, sigma)
        if slope_neg is not None:
            self._reference_negative = (x, sigma, slope_neg)
        return euler_step(x, slope, sigma, sigma_next), slope

    # -- the edit -----------------------------------------------------------------------------------------------
    def _gradient_step(self, x: torch.Tensor, sigma: float, targets: Mapping[str, str]):
        """One model pass with gradients on a copy of x per guided branch; returns the stepped copies and losses."""
        copies = 2 if self.use_cfg and self.rules.loss_over_cfg_batch else 1
        # maps_only: the prediction of this pass is not used (as the references), only the map loss.
        self.maps.compare(targets, copies=copies, maps_only=True)
        try:
            # Hosts may run under torch.inference_mode (ComfyUI does): leave it for this pass and make the leaves
            # normal tensors, so autograd can save what it needs. grad_context spans forward AND backward (a
            # checkpointed block recomputes inside the backward).
            with torch.inference_mode(False), torch.enable_grad(), self.grad_context():
                leaves = {b: x.detach().clone().requires_grad_(True) for b in targets}
                self.denoise(leaves, sigma)  # its output is not used: hosts may return early (maps_only)
                if set(self.maps.losses) != set(targets):
                    raise RuntimeError(
                        "the model produced no attention maps for the branches "
                        f"{sorted(set(targets) - set(self.maps.losses))}: the attention hook is not installed"
                    )
                loss = self.maps.total_loss()
                grads = torch.autograd.grad(loss, list(leaves.values()))
                losses = {b: float(v.detach()) for b, v in self.maps.losses.items()}
        finally:
            self.maps.off()
            self.maps.losses = {}
        size = self.rules.step_size(self.lambda_xa, sigma)
        stepped = {b: (leaf.detach() - size * g).to(x.dtype) for (b, leaf), g in zip(leaves.items(), grads)}
        return stepped, losses

    def _reused_negative(self, x_ref: torch.Tensor, sigma: float) -> torch.Tensor | None:
        """The negative-branch slope of the reference step just taken from x_ref at sigma, if that is what ran."""
        if self._reference_negative is None:
            return None
        x_seen, sigma_seen, slope_neg = self._reference_negative
        if sigma_seen != sigma or not (x_seen is x_ref or torch.equal(x_seen, x_ref)):
            return None
        return slope_neg

    def edit_step(self, x: torch.Tensor, sigma: float, sigma_next: float, x_ref: torch.Tensor | None = None,
                  guided: bool = True):
        """The edit's step from x (run after reference_step of the same step, which started from x_ref), with a
        gradient step first when `guided` and lambda_xa > 0.

        Returns (x_next, slope, losses): losses, the map loss of each guided branch before its gradient step ({}
        without a gradient pass)."""
        guided = guided and self.lambda_xa > 0
        targets = dict(self.targets)
        losses = {}
        exact = set()
        if NEGATIVE in targets and x_ref is not None and torch.equal(x, x_ref):
            # The negative copy sits on the reconstruction's latent with the reference's own conditioning: its maps
            # ARE the reference maps, so its loss and gradient are exactly 0 (the first step). Computing them would
            # only turn float rounding into a step (the references' batch-2 passes happen to round identically).
            exact.add(NEGATIVE)
            del targets[NEGATIVE]
        if guided:
            stepped, losses = self._gradient_step(x, sigma, targets)
            losses.update({b: 0.0 for b in exact})
            if self.on_gradient_step is not None:
                self.on_gradient_step(x, dict(stepped), {b: v for b, v in losses.items() if b not in exact})
        else:
            stepped = {b: x for b in targets}  # a zero step: the gradient pass is provably redundant
        guided_x = stepped[EDITED]
        # references: each CFG half at its own guided copy; paper: both halves at the guided edit latent
        x_neg = stepped.get(NEGATIVE, x if NEGATIVE in exact else guided_x)
        branches = {EDITED: guided_x}
        slope_neg = None
        if self.use_cfg:
            if NEGATIVE in exact:
                # the negative copy is unmoved on the reconstruction's latent, with the negative conditioning:
                # the reference step just evaluated exactly that (as its negative, or as the caption it equals)
                slope_neg = self._reused_negative(x_ref, sigma)
            if slope_neg is None:
                branches = {NEGATIVE: x_neg, EDITED: guided_x}
        with torch.no_grad():
            denoised = self.denoise(branches, sigma)
        slope, _ = self._combined(guided_x, x_neg, denoised, EDITED, sigma, slope_neg)
        # the references carry x_in.chunk(2)[0]: the negative copy with CFG, the edited copy without
        carried = x_neg if self.mode == "references" and self.use_cfg else guided_x
        return euler_step(carried, slope, sigma, sigma_next), slope, losses


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
    use_negative: bool = True,
    guided_steps: int | None = None,
    rules: StepRules = DDIM_RULES,
    grad_context: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
    callback: StepCallback | None = None,
    on_gradient_step: GradientStepCallback | None = None,
) -> GuidedEditResult:
    """Reconstruct and edit the inverted latent x (the family's sampling space, at sigmas[0]) down the descending
    `sigmas`.

    The reference (reconstruction) and the edit advance in lock step, so only the current step's maps are kept.
    guided_steps: guide only the first K steps (None: every step). rules: the model family's seam (DDIM_RULES or
    FLOW_RULES). grad_context(): a context manager around each gradient pass, forward and backward (hosts alias
    inference-tensor weights there). Returns both final latents as the family decodes them (GuidedEditResult);
    callback (StepCallback) receives every step's latents, the edit's clean-latent guess and the map losses;
    on_gradient_step (GradientStepCallback) every gradient pass's result (for instruments and tests: the step each
    guided branch's latent took).
    """
    editor = GuidedEditor(denoise, maps, cfg=cfg, lambda_xa=lambda_xa, mode=mode,
                          negative_is_caption=negative_is_caption, use_negative=use_negative, rules=rules,
                          grad_context=grad_context, on_gradient_step=on_gradient_step)
    levels = [float(s) for s in sigmas]
    if len(levels) < 2 or any(b >= a for a, b in itertools.pairwise(levels)) or levels[-1] < 0:
        raise ValueError("sigmas must be strictly descending, non-negative and hold at least two levels")
    rules.check_levels(levels)
    limit = len(levels) - 1 if guided_steps is None else int(guided_steps)
    x_ref, x_edit = x, x
    try:
        for step in range(len(levels) - 1):
            sigma, sigma_next = levels[step], levels[step + 1]
            guided = step < limit and editor.lambda_xa > 0
            x_ref_next, _ = editor.reference_step(x_ref, sigma, sigma_next, record=guided)
            x_edit, slope, losses = editor.edit_step(x_edit, sigma, sigma_next, x_ref=x_ref, guided=guided)
            x_ref = x_ref_next
            if callback is not None:
                # the edit's clean-latent guess at this step (x_next - sigma_next slope = carried - sigma slope)
                callback(step, x_edit, x_ref, denoised_from_slope(x_edit, slope, sigma_next), losses)
    finally:
        maps.clear()
    return GuidedEditResult(edited=rules.result(x_edit, levels[-1]), reconstruction=rules.result(x_ref, levels[-1]))
