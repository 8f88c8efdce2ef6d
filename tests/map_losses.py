"""The per-step attention-map losses of a guided edit, observed from outside the loop (tests only).

`recording(edit, runs)` wraps core.guidance.guided_edit (either family's rules): every call appends its list
of per-step loss dicts ({branch: loss}) to `runs`.
- lambda_xa > 0: the losses the loop computes before each gradient step, as its step callback reports them (the
  callback the caller passed still runs);
- lambda_xa 0 (no gradient pass, no loss): `LossProbe` wraps the denoiser and measures, on the steps that would be
  guided, the loss a gradient pass would see: the edit pass's maps at the same latents compared with the step's
  reference maps (recorded by the probe where the loop records none), and exactly 0 for a negative copy that sits
  on the reconstruction's latent, as the loop reports it.
"""
import inspect
import sys

import torch

# The branch names are plain strings, the same in every copy of core.guidance (host tests wrap the pack's copy, as
# ComfyUI loaded it; core tests the top-level one): spelled here so that this module imports neither.
NEGATIVE, CAPTION, EDITED = "negative", "positive", "edited"


class LossProbe:
    """A BranchDenoiser around `denoise` for unguided (lambda_xa 0) runs; `losses`: one dict per step.

    targets / copies: what the loop's gradient pass would compare (AttentionMaps.compare); guided_steps: the steps
    it would guide (None: all)."""

    def __init__(self, denoise, maps, targets, copies, guided_steps=None):
        self.denoise, self.maps = denoise, maps
        self.targets, self.copies, self.guided_steps = dict(targets), copies, guided_steps
        self.losses, self.x_ref = [], None

    def _guided(self):
        return self.guided_steps is None or len(self.losses) <= self.guided_steps

    def __call__(self, xs, sigma):
        if CAPTION in xs:  # the reconstruction's pass opens a step
            self.losses.append({})
            self.x_ref = xs[CAPTION]
            if self.maps.wants_maps or not self._guided():  # the loop records the reference itself (UNet)
                return self.denoise(xs, sigma)
            self.maps.record()
            try:
                return self.denoise(xs, sigma)
            finally:
                self.maps.off()
        if EDITED not in xs or self.maps.wants_maps or not self._guided():
            return self.denoise(xs, sigma)
        targets, exact = dict(self.targets), {}
        if NEGATIVE in targets and (NEGATIVE not in xs or torch.equal(xs[NEGATIVE], self.x_ref)):
            # on the reconstruction's latent (the loop then reuses the reference's prediction and does not evaluate
            # it): its maps are the reference maps, the loop reports exactly 0
            exact[NEGATIVE] = 0.0
            del targets[NEGATIVE]
        self.maps.compare(targets, copies=self.copies)
        try:
            out = self.denoise(xs, sigma)
            self.losses[-1].update({b: float(v) for b, v in self.maps.losses.items()}, **exact)
        finally:
            self.maps.off()
            self.maps.losses = {}
        return out


def recording(edit, runs):
    """`edit` (core.guidance.guided_edit) appending each run's per-step losses to `runs`."""
    signature = inspect.signature(edit)
    guided_targets = sys.modules[edit.__module__].guided_targets  # the rule of the loop it wraps, from its own module

    def recorded(*args, **kwargs):
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        a = bound.arguments
        if a["lambda_xa"] == 0:
            use_cfg = a["use_negative"] and a["cfg"] > 1.0
            targets = guided_targets(use_cfg=use_cfg, mode=a["mode"], negative_is_caption=a["negative_is_caption"])
            copies = 2 if use_cfg and a["rules"].loss_over_cfg_batch else 1
            limit = a["guided_steps"]
            probe = LossProbe(a["denoise"], a["maps"], targets, copies, limit)
            a["denoise"] = probe
            runs.append(probe.losses)
        else:
            losses, callback = [], a["callback"]

            def on_step(step, *rest):
                losses.append(dict(rest[-1]))
                if callback is not None:
                    callback(step, *rest)

            a["callback"] = on_step
            runs.append(losses)
        return edit(*bound.args, **bound.kwargs)

    return recorded


def total(losses):
    """A run's summed map loss: all steps, all guided branches."""
    return float(sum(sum(step.values()) for step in losses))
