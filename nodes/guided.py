"""P2PZ_GuidedEdit: pix2pix-zero's guided editing sampler as a ComfyUI node. One node and one shell
(nodes/guided_shell.py) over two seams, one per model family: UNet cross-attention (nodes/guided_unet.py: SD 1.x,
2.x, SDXL) and MMDiT joint attention (nodes/guided_flow.py: SD 3.x, Flux). Each seam installs its hooks on a clone
of the MODEL; the loop is core.guidance's, one editor with the family's StepRules."""
import logging

import torch

from ..core.direction import check_edit
from ..core.guidance import GUIDANCE_MODES
from .common import CATEGORY, DIRECTION_TYPE, is_flow_model, warn_if_large
from .guided_flow import flow_guided_edit_node
from .guided_shell import (BLOCK_STRIDE_RANGE, CFG_RANGE, DEFAULT_OPTIONS, LAMBDA_RANGE, OPTIONS_TYPE, PAPER_OPTIONS,
                           check_range)
from .guided_unet import unet_guided_edit

# model_options entry of the deprecated P2PZ_MMDiTGuidanceOptions (workflows saved before the options became an input)
LEGACY_OPTIONS_KEY = "p2pz_mmdit_guidance"


class GuidedEdit:
    DESCRIPTION = (
        "pix2pix-zero's editing sampler: regenerates the inverted latent twice in lock step, once with the caption "
        "(the reconstruction) and once with the caption moved along the edit direction, and at every step nudges "
        "the edit's latent so its cross-attention maps stay those of the reconstruction: the edit changes what "
        "the direction names while the image's layout survives. SD 3.x and Flux: the same with the maps of their "
        "joint attention (Flux at its embedded guidance, without a negative pass)."
    )
    CATEGORY = CATEGORY
    FUNCTION = "edit"
    RETURN_TYPES = ("LATENT", "LATENT")
    RETURN_NAMES = ("edited_latent", "reconstruction")
    OUTPUT_TOOLTIPS = (
        "The edited image latent (decode with VAEDecode).",
        "The image regenerated from the inverted latent with the caption alone (what the edit is held to).",
    )

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("MODEL", {"tooltip": "The model used for the inversion: SD 1.x, SD 2.x, SDXL, or SD 3.x / Flux (flow models, e.g. through ModelSamplingSD3 / ModelSamplingFlux and Guided Edit Options). It is not modified; LoRAs and other patches on it apply."}),
                "positive": ("CONDITIONING", {"tooltip": "The caption of the image (CLIPTextEncode), the same conditioning used for the inversion. Flux-dev: its embedded guidance (FluxGuidance, 3.5) is what the edit runs at."}),
                "inverted_latent": ("LATENT", {"tooltip": "The inverted_latent output of P2PZ_InvertLatent (or a latent inverted with the same steps by stock nodes)."}),
                "steps": ("INT", {"default": 50, "min": 1, "max": 500, "tooltip": "DDIM steps of the edit: the same value as the Invert Latent (or Noise Latent) node's steps, which the latent records; a different value stops with an error saying which to set. For a latent inverted with stock nodes, its inversion's steps."}),
                "cfg": ("FLOAT", {"default": 5.0, "min": CFG_RANGE[0], "max": CFG_RANGE[1], "step": 0.1, "round": 0.01, "tooltip": "Classifier-free guidance scale. 5 with the caption as negative for real images (the authors' setting); 1 turns CFG off. SD 3.x: CFG as here (4.5 is usual). Flux: ignored (it runs at the conditioning's embedded guidance, no negative pass)."}),
                "lambda_xa": ("FLOAT", {"default": 0.1, "min": LAMBDA_RANGE[0], "max": LAMBDA_RANGE[1], "step": 0.005, "round": 0.0001, "tooltip": "Cross-attention guidance strength: 0.1 for real images, 0.15 for generated ones; v-prediction models (SD 2.x 768) need <= 0.01. 0 turns the guidance off (a plain prompt edit)."}),
                "guidance": (list(GUIDANCE_MODES), {"default": "references", "tooltip": "references: as the authors' code and diffusers (both CFG copies guided, the negative copy carried on). paper: the paper's formulation (only the edited branch guided, the guided latent carried on). SD 3.x / Flux always carry the guided latent: ignored there."}),
            },
            "optional": {
                "negative": ("CONDITIONING", {"tooltip": "Negative prompt. Not connected: the caption itself, the authors' setting for real images (its reference pass then costs one model call per step instead of two); also on SD 3.x. Use an empty prompt for generated images. Flux: ignored (no negative pass)."}),
                "direction": (DIRECTION_TYPE, {"tooltip": "The edit direction (e.g. cat -> dog), added to every token of the caption."}),
                "direction_multiplier": ("FLOAT", {"default": 1.0, "min": -5.0, "max": 5.0, "step": 0.05, "tooltip": "Scales the direction (the authors' demo uses 0..2; negative values reverse the edit). 0 (no edit at all) is refused."}),
                "edited_positive": ("CONDITIONING", {"tooltip": "An already edited caption conditioning, used instead of a direction (same prompt length as the caption)."}),
                "options": (OPTIONS_TYPE, {"tooltip": "Guided Edit Options: which steps and attention layers are guided. Not connected: every step and layer on SD 1.x / 2.x / SDXL (the paper); on SD 3.x / Flux the first half of the steps, every joint block."}),
            },
        }

    def edit(self, model, positive, inverted_latent, steps, cfg, lambda_xa, guidance, negative=None, direction=None,
             direction_multiplier=1.0, edited_positive=None, options=None):
        if direction is not None:  # before any work: a zero direction (cat -> cat) or multiplier 0 edits nothing
            check_edit(direction, direction_multiplier, "direction_multiplier")
        samples = inverted_latent.get("samples")
        if isinstance(samples, torch.Tensor) and samples.ndim == 4:
            warn_if_large(samples, model, "Guided Edit")
        check_range("cfg", cfg, CFG_RANGE)
        check_range("lambda_xa", lambda_xa, LAMBDA_RANGE)  # both families: the input's range
        if options is None and LEGACY_OPTIONS_KEY in model.model_options:
            options = model.model_options[LEGACY_OPTIONS_KEY]
            logging.warning("pix2pix-zero Guided Edit: the MODEL carries the settings of the deprecated 'Guided Edit "
                            "Options for SD 3.x / Flux' node; they apply. Replace that node with Guided Edit Options "
                            "connected to Guided Edit's options input")
        seam = flow_guided_edit_node if is_flow_model(model) else unet_guided_edit  # joint or cross attention
        return seam(model, positive, inverted_latent, steps, cfg, lambda_xa, guidance, negative, direction,
                    direction_multiplier, edited_positive, options)


class GuidedEditOptions:
    DESCRIPTION = ("Which steps and attention layers Guided Edit guides: its time and memory levers. Connect the "
                   "output to Guided Edit's options input; without this node Guided Edit guides every step and layer "
                   "on SD 1.x / 2.x / SDXL (the paper) and the first half of the steps on SD 3.x / Flux.")
    CATEGORY = CATEGORY
    FUNCTION = "options"
    RETURN_TYPES = (OPTIONS_TYPE,)
    RETURN_NAMES = ("options",)
    OUTPUT_TOOLTIPS = ("Settings for Guided Edit's options input.",)

    @classmethod
    def INPUT_TYPES(cls):
        d = PAPER_OPTIONS
        flow_fraction = DEFAULT_OPTIONS["sd3"]["guided_fraction"]
        return {"required": {
            "guided_fraction": ("FLOAT", {"default": d["guided_fraction"], "min": 0.0, "max": 1.0, "step": 0.05, "tooltip": f"Guidance only on the first fraction of the steps (the high-noise steps that set the layout); 1 guides every step, as the paper. Saves the later steps' gradient passes (time, not peak memory). Without this node: 1 on SD 1.x / 2.x / SDXL, {flow_fraction} on SD 3.x / Flux. 0 leaves only the direction (as lambda_xa 0)."}),
            "block_stride": ("INT", {"default": d["block_stride"], "min": BLOCK_STRIDE_RANGE[0], "max": BLOCK_STRIDE_RANGE[1], "tooltip": "Guide every N-th attention layer (SD 1.x / 2.x / SDXL: cross-attention layers; SD 3.x / Flux: joint blocks); 1: all. Higher keeps fewer reference maps and stops the gradient pass earlier. The step is scaled by layers / guided layers, so lambda_xa keeps its meaning."}),
            "checkpoint_blocks": ("BOOLEAN", {"default": d["checkpoint_blocks"], "tooltip": "Flux only: recompute each block in the backward pass instead of keeping its activations. Off is faster but needs several GB per block at 1024 px. (SD 3.x: ComfyUI checkpoints its blocks itself; UNet models: not checkpointed. Off is reported there.)"}),
        }}

    def options(self, guided_fraction, block_stride, checkpoint_blocks):
        check_range("guided_fraction", guided_fraction, (0.0, 1.0))
        check_range("block_stride", block_stride, BLOCK_STRIDE_RANGE)
        return ({"guided_fraction": float(guided_fraction), "block_stride": int(block_stride),
                 "checkpoint_blocks": bool(checkpoint_blocks)},)


class MMDiTGuidanceOptions:
    """Deprecated: the options travelled inside the MODEL (a hidden model_options entry). Kept so that workflows saved
    with it still load and run as they did; hidden from the node menu."""

    DEPRECATED = True
    DESCRIPTION = ("Deprecated: use Guided Edit Options, connected to Guided Edit's options input. This node still "
                   "works: it attaches the same settings to a clone of the MODEL.")
    CATEGORY = CATEGORY
    FUNCTION = "apply"
    RETURN_TYPES = ("MODEL",)
    OUTPUT_TOOLTIPS = ("The same model with the options attached (the input MODEL is not modified).",)

    @classmethod
    def INPUT_TYPES(cls):
        inputs = GuidedEditOptions.INPUT_TYPES()["required"]
        fraction = dict(inputs["guided_fraction"][1], default=DEFAULT_OPTIONS["sd3"]["guided_fraction"])
        return {"required": {"model": ("MODEL", {"tooltip": "An SD 3.x or Flux model."}),
                             **inputs, "guided_fraction": ("FLOAT", fraction)}}

    def apply(self, model, guided_fraction, block_stride, checkpoint_blocks):
        clone = model.clone()
        (clone.model_options[LEGACY_OPTIONS_KEY],) = GuidedEditOptions().options(guided_fraction, block_stride,
                                                                                 checkpoint_blocks)
        return (clone,)


NODE_CLASS_MAPPINGS = {"P2PZ_GuidedEdit": GuidedEdit, "P2PZ_GuidedEditOptions": GuidedEditOptions,
                       "P2PZ_MMDiTGuidanceOptions": MMDiTGuidanceOptions}
NODE_DISPLAY_NAME_MAPPINGS = {"P2PZ_GuidedEdit": "Guided Edit (pix2pix-zero cross-attention guidance)",
                              "P2PZ_GuidedEditOptions": "Guided Edit Options (pix2pix-zero)",
                              "P2PZ_MMDiTGuidanceOptions": "Guided Edit Options for SD 3.x / Flux (deprecated)"}
