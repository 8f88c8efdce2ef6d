"""P2PZ_GuidedEdit: pix2pix-zero's guided editing sampler as a ComfyUI node. One node and one shell
(nodes/guided_shell.py) over two seams, one per model family: UNet cross-attention (nodes/guided_unet.py: SD 1.x,
2.x, SDXL) and MMDiT joint attention (nodes/guided_flow.py: SD 3.x, Flux). Each seam installs its hooks on a clone
of the MODEL; the loops are core.guidance's and core.flow_guidance's."""
import torch

from ..core.direction import check_edit
from ..core.guidance import GUIDANCE_MODES
from .common import CATEGORY, DIRECTION_TYPE, is_flow_model, warn_if_large
from .guided_flow import flow_guided_edit_node
from .guided_shell import CFG_RANGE, LAMBDA_RANGE, check_range
from .guided_unet import unet_guided_edit


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
            },
        }

    def edit(self, model, positive, inverted_latent, steps, cfg, lambda_xa, guidance, negative=None, direction=None,
             direction_multiplier=1.0, edited_positive=None):
        if direction is not None:  # before any work: a zero direction (cat -> cat) or multiplier 0 edits nothing
            check_edit(direction, direction_multiplier, "direction_multiplier")
        samples = inverted_latent.get("samples")
        if isinstance(samples, torch.Tensor) and samples.ndim == 4:
            warn_if_large(samples, model, "Guided Edit")
        check_range("cfg", cfg, CFG_RANGE)
        seam = flow_guided_edit_node if is_flow_model(model) else unet_guided_edit  # joint or cross attention
        return seam(model, positive, inverted_latent, steps, cfg, lambda_xa, guidance, negative, direction,
                    direction_multiplier, edited_positive)


NODE_CLASS_MAPPINGS = {"P2PZ_GuidedEdit": GuidedEdit}
NODE_DISPLAY_NAME_MAPPINGS = {"P2PZ_GuidedEdit": "Guided Edit (pix2pix-zero cross-attention guidance)"}
