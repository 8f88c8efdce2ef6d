"""The Guided Edit shell shared by both model families' seams (nodes/guided_unet.py: UNet cross-attention;
nodes/guided_flow.py: SD 3.x / Flux joint attention): the guider holding the three conds, the runner that samples
from the inverted latent with ComfyUI's previews and progress, the Guided Edit Options both read, and the checks
both make. Imports neither seam."""
import logging

import comfy.model_management
import comfy.samplers
import comfy.utils
import latent_preview
import torch

from ..core.guidance import CAPTION, EDITED, NEGATIVE
from .common import INVERSION_KEY

COND_KEYS = {NEGATIVE: "negative", CAPTION: "positive", EDITED: "edited"}
CFG_RANGE = (1.0, 30.0)
LAMBDA_RANGE = (0.0, 1.0)

# Guided Edit Options (P2PZ_GuidedEditOptions -> Guided Edit's `options` input): which steps and attention layers
# are guided. Without the node, each family's defaults: every step and layer on UNet models, as the paper; on SD 3.x
# / Flux the first half of the steps (the memory estimate's setting, docs/nodes.md), every joint block.
OPTIONS_TYPE = "P2PZ_GUIDANCE_OPTIONS"
PAPER_OPTIONS = {"guided_fraction": 1.0, "block_stride": 1, "checkpoint_blocks": True}
_FLOW_OPTIONS = dict(PAPER_OPTIONS, guided_fraction=0.5)
DEFAULT_OPTIONS = {"unet": PAPER_OPTIONS, "sd3": _FLOW_OPTIONS, "flux": _FLOW_OPTIONS}
BLOCK_STRIDE_RANGE = (1, 16)


def guidance_options(options, family):
    """The options a run uses: the connected Guided Edit Options, else the family's defaults ("unet", "sd3", "flux");
    a lever that cannot act on this family is logged, never silently dropped."""
    merged = dict(DEFAULT_OPTIONS[family], **(options or {}))  # the options node checked its values
    if not merged["checkpoint_blocks"] and family != "flux":
        logging.warning("pix2pix-zero Guided Edit: checkpoint_blocks off acts on Flux only (SD 3.x's blocks are "
                        "checkpointed by ComfyUI itself, a UNet's gradient pass is not checkpointed); ignored")
    return merged


def guided_layers(keys, block_stride):
    """(every block_stride-th of the attention layers `keys`, loss scale). The map loss is a sum over the guided
    layers: guiding every N-th leaves about 1/N of the terms, so the step is scaled by (layers / guided layers) to keep
    lambda_xa meaning the same step whatever the stride."""
    keys = list(keys)
    guided = keys[::int(block_stride)]
    return guided, len(keys) / len(guided)


def guided_steps(options, steps):
    """The number of steps guided from the first: guided_fraction of the steps, rounded to the nearest."""
    return round(float(options["guided_fraction"]) * steps)


class GuidedEditGuider(comfy.samplers.CFGGuider):
    """A CFGGuider holding the edited caption as a third cond, so ComfyUI preprocesses it like the other two."""

    def __init__(self, model_patcher, positive, negative, edited, cfg):
        super().__init__(model_patcher)
        self.inner_set_conds({"positive": positive, "negative": negative, "edited": edited})
        self.set_cfg(cfg)


def check_steps(steps, recorded):
    """The steps widget must equal the DDIM steps the latent's record carries (from Invert Latent or Noise Latent):
    the edit retraces exactly the inversion's levels, so another value cannot be used. An error instead of silently
    ignoring the widget (no widget may do nothing), saying which value to set."""
    if steps != recorded:
        raise ValueError(
            f"Guided Edit's steps is {steps} but the inverted_latent was made with {recorded} DDIM steps (the steps "
            f"of the Invert Latent or Noise Latent node that made it): the edit retraces the inversion's own steps. "
            f"Set Guided Edit's steps to {recorded}, or set that node's steps to {steps} and run it again"
        )


def check_range(name, value, bounds):
    low, high = bounds
    if not (low <= value <= high):
        raise ValueError(f"{name} must be between {low} and {high}, got {value}")


def run_guided_sampler(guider, sampler, patched, inverted_latent, samples, sigmas, steps, results):
    """Sample with a guided sampler from the inverted latent (no noise added: it is the starting point), with
    ComfyUI's previews and progress; returns (edited, reconstruction) as LATENTs without the inversion record."""
    edited = guider.sample(
        torch.zeros_like(samples),
        samples,
        sampler,
        sigmas,
        callback=latent_preview.prepare_callback(patched, steps),
        disable_pbar=not comfy.utils.PROGRESS_BAR_ENABLED,
        seed=0,
    )
    device = comfy.model_management.intermediate_device()
    out_edit = {k: v for k, v in inverted_latent.items() if k != INVERSION_KEY}
    out_edit["samples"] = edited.to(device)
    out_ref = dict(out_edit, samples=results["reconstruction"].to(device))
    return (out_edit, out_ref)


def same_conditioning(a, b):
    """True when two CONDITIONING lists are the same prompt (same tensors and options): then the reference's CFG
    pair is provably one model evaluation."""
    if a is b:
        return True
    if len(a) != len(b):
        return False
    for (ta, ea), (tb, eb) in zip(a, b):
        if ta.shape != tb.shape or not torch.equal(ta, tb) or ea.keys() != eb.keys():
            return False
        for key in ea:
            va, vb = ea[key], eb[key]
            if isinstance(va, torch.Tensor) or isinstance(vb, torch.Tensor):
                if not (isinstance(va, torch.Tensor) and isinstance(vb, torch.Tensor) and va.shape == vb.shape
                        and torch.equal(va, vb)):
                    return False
            elif va != vb:
                return False
    return True
