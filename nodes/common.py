"""Shared pieces of the pack's ComfyUI nodes."""
import contextlib
import logging
import os

import torch

from ..core.inference_weights import normal_tensor_weights

CATEGORY = "pix2pix-zero"

# Key under which a LATENT from the inversion node carries its step schedule (plain Python values). Stock nodes
# read only "samples" (and "noise_mask", "batch_index"), so an extra key passes through them untouched.
INVERSION_KEY = "p2pz_inversion"

SEED_INPUT = (
    "INT",
    {
        "default": 0,
        "min": 0,
        "max": 0xFFFFFFFFFFFFFFFF,
        "control_after_generate": True,
        "tooltip": "Seed of every random draw this node makes. The same seed gives the same result.",
    },
)


def check_conditioning_batch(conditioning, batch_size: int, what: str = "conditioning") -> None:
    """ComfyUI silently repeats or truncates a conditioning batch to the latent batch: refuse a mismatch instead."""
    for tensor, _ in conditioning:
        if tensor.shape[0] not in (1, batch_size):
            raise ValueError(
                f"the {what} has a batch of {tensor.shape[0]} but the latent has {batch_size} images: give one "
                f"conditioning for all images, or exactly one per image (in the same order)"
            )

# Socket type of an edit direction (a core.direction.EditDirection) between the pack's nodes.
DIRECTION_TYPE = "P2PZ_EDIT_DIRECTION"


def create_default_folder(path: str) -> None:
    """Create the pack's own default model folder (``<ComfyUI models>/<name>``) when it is missing, so that users
    can drop files in (the authors' .pt embeddings, students) without making it first. Only ever this folder: paths
    the user named in extra_model_paths.yaml are theirs to create. A read-only install is only logged: the pack
    still loads, and saving there later fails with the OS error."""
    import logging

    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        logging.warning("comfyui-pix2pix-zero: could not create the model folder %s (%s); create it to put files "
                        "there", path, e)


def register_model_folder(folder_name: str, extensions) -> None:
    """Make ``<ComfyUI models>/<folder_name>`` a model folder without overwriting what is there, and create it.

    extra_model_paths.yaml (loaded before custom nodes) may already have registered the name with the user's own
    paths: those are kept first and ours is appended. An entry with an empty extension set lists every file, so
    its set is only widened, never narrowed.
    """
    import folder_paths

    path = os.path.join(folder_paths.models_dir, folder_name)
    create_default_folder(path)
    if folder_name in folder_paths.folder_names_and_paths:
        folder_paths.add_model_folder_path(folder_name, path)
        paths, exts = folder_paths.folder_names_and_paths[folder_name]
        if exts:
            folder_paths.folder_names_and_paths[folder_name] = (paths, set(exts) | set(extensions))
    else:
        folder_paths.folder_names_and_paths[folder_name] = ([path], set(extensions))


def model_files(folder_name: str, extensions) -> list:
    """Sorted file names (relative paths, as ComfyUI lists them) in a model folder with one of ``extensions``."""
    import folder_paths

    exts = tuple(e.lower() for e in extensions)
    return sorted(f for f in folder_paths.get_filename_list(folder_name) if f.lower().endswith(exts))


SUPPORTED_MODELS = ("discrete-time eps- or v-prediction models with sigma_data 1 (SD 1.x, SD 2.x incl. 768-v, SDXL; "
                    "zsnr and ModelSamplingDiscrete eps/v_prediction patches included)")


def discrete_model_sampling(model, what: str):
    """The MODEL's model_sampling, after checking pix2pix-zero's math fits it (see core.sigma_space): a discrete
    timestep table (the DDIM levels), ComfyUI's eps or v denoiser (eps = (x - denoised) / sigma) and the input
    scaling x / sqrt(1 + sigma^2), i.e. sigma_data 1. ``what`` names the step that needs it. Anything else is
    refused by kind, so the message can say what the model is and what is supported."""
    import comfy.model_sampling as ms

    sampling = model.get_model_object("model_sampling")
    kind = type(sampling).__name__

    def refuse(description):
        return ValueError(f"pix2pix-zero {what} cannot use this model: it is {description}. Supported: "
                          f"{SUPPORTED_MODELS}. Use such a checkpoint (or remove the node that changed the model's "
                          "sampling, e.g. ModelSamplingContinuousEDM/ModelSamplingSD3/ModelSamplingFlux)")

    if isinstance(sampling, ms.CONST):
        raise refuse("a flow-matching model (CONST sampling: SD 3.x, Flux, AuraFlow and similar), whose noise path "
                     "x = (1 - sigma) x0 + sigma noise is not DDIM's (for these models Invert Latent, the edit "
                     f"directions and Guided Edit work already; {what} is not available for them: invert a "
                     "generated image instead)")
    continuous = tuple(c for c in (getattr(ms, "ModelSamplingContinuousEDM", None),
                                   getattr(ms, "ModelSamplingContinuousV", None)) if c is not None)
    if continuous and isinstance(sampling, continuous):
        raise refuse(f"a continuous-time model ({kind}, e.g. Playground 2.5 or a ModelSamplingContinuousEDM/"
                     "ModelSamplingContinuousV patch): there is no DDIM timestep table to invert along")
    discrete = getattr(ms, "ModelSamplingDiscrete", None)
    if discrete is None or not isinstance(sampling, discrete) or not hasattr(sampling, "sigmas"):
        raise refuse(f"sampled with {kind}, not a discrete DDIM timestep table")
    if type(sampling).timestep is not discrete.timestep or type(sampling).sigma is not discrete.sigma:
        raise refuse(f"a discrete model with its own timestep mapping ({kind}: EDM-style or distilled such as "
                     "LCM), which DDIM's timestep table does not describe")
    sigma_data = float(getattr(sampling, "sigma_data", 1.0))
    if sigma_data != 1.0:
        raise refuse(f"a model with sigma_data {sigma_data:g} (EDM-style scaling), where DDIM needs 1")
    prediction = type(sampling).calculate_denoised
    if type(sampling).calculate_input is not ms.EPS.calculate_input or prediction not in (
            ms.EPS.calculate_denoised, ms.V_PREDICTION.calculate_denoised):
        names = [c.__name__ for c in type(sampling).__mro__
                 if "calculate_denoised" in vars(c) or "calculate_input" in vars(c)]
        raise refuse(f"a model predicting {names[0] if names else kind} (e.g. EDM, x0, LCM or img_to_img "
                     "sampling), not eps or v")
    return sampling


class HostedModule(torch.nn.Module):
    """Holds a plain torch module (BLIP, a student) for ComfyUI's ModelPatcher, which records the model's device in a
    `device` attribute (read-only on a transformers model) and asks get_dtype(): this gives it both without touching
    the module, which stays reachable as ``inner``."""

    def __init__(self, module, dtype, device):
        super().__init__()
        self.inner = module
        self.device = device
        self.dtype_ = dtype

    def get_dtype(self):
        return self.dtype_


def model_patcher_for(module, dtype, load_device, offload_device):
    """A ComfyUI ModelPatcher around a plain torch module already on ``offload_device`` in ``dtype``, so ComfyUI's
    model management loads it on the GPU when used and evicts it when memory is needed, like its own models
    (comfy/clip_vision.py does the same)."""
    import comfy.model_patcher

    return comfy.model_patcher.ModelPatcher(HostedModule(module, dtype, offload_device), load_device=load_device,
                                            offload_device=offload_device)


def warn_if_large(samples, model, node: str) -> None:
    """Log a warning (ComfyUI's console) when the latent's image size will take very long on the CPU or its
    attention alone exceeds the free memory of the device (core.cost: the estimate and how to go smaller)."""
    import comfy.model_management as mm

    from ..core.cost import size_warning

    device = mm.get_torch_device()
    dtype = model.model.get_dtype() if hasattr(model.model, "get_dtype") else torch.float32
    text = size_warning(8 * samples.shape[2], 8 * samples.shape[3], on_cpu=device.type == "cpu",
                        available_bytes=mm.get_free_memory(device),
                        bytes_per_value=torch.tensor([], dtype=dtype).element_size())
    if text:
        logging.warning("pix2pix-zero %s: %s", node, text)


FLOW_MODELS = "flow-matching models with ComfyUI's CONST sampling (SD 3.x, Flux, incl. ModelSamplingSD3/Flux patches)"


def log_map_loss(step: int, steps: int, losses) -> None:
    """A Guided Edit step's attention-map loss (before its gradient step) at DEBUG level: shows whether and how much
    lambda_xa pulls the edit's maps towards the reconstruction's. Nothing for an unguided step (no loss computed)."""
    if losses:
        logging.debug("pix2pix-zero Guided Edit: step %d/%d, attention map loss %s", step + 1, steps,
                      ", ".join(f"{branch} {value:.6g}" for branch, value in losses.items()))


def is_flow_model(model) -> bool:
    """Whether the MODEL samples as a flow-matching model (ComfyUI's CONST: x = (1 - sigma) x0 + sigma noise)."""
    import comfy.model_sampling as ms

    return isinstance(model.get_model_object("model_sampling"), ms.CONST)


def flow_model_sampling(model, what: str):
    """The MODEL's model_sampling after checking the flow inversion's math fits it (see core.flow_space): CONST's
    denoiser (denoised = x - sigma * velocity) on an unscaled input, and a sigma table ending at pure noise, 1."""
    import comfy.model_sampling as ms

    sampling = model.get_model_object("model_sampling")
    kind = type(sampling).__name__
    if not isinstance(sampling, ms.CONST) or type(sampling).calculate_denoised is not ms.CONST.calculate_denoised \
            or type(sampling).calculate_input is not ms.CONST.calculate_input:
        raise ValueError(f"pix2pix-zero {what} cannot use this model as a flow-matching model: it is sampled with "
                         f"{kind}. Supported: {FLOW_MODELS}")
    sigmas = getattr(sampling, "sigmas", None)
    if sigmas is None or abs(float(sampling.sigma_max) - 1.0) > 1e-3:
        raise ValueError(f"pix2pix-zero {what} cannot use this flow model: its sigmas do not run up to pure noise "
                         f"(sigma_max {float(getattr(sampling, 'sigma_max', float('nan'))):g}, expected 1). "
                         f"Supported: {FLOW_MODELS}")
    return sampling


def check_plain_conditioning(conditioning, what):
    """The guided edit's conditionings (both model families): one plain text entry. pix2pix-zero holds the attention
    maps of one prompt; areas, masks, ControlNets, GLIGEN and timestep ranges would change what the maps mean or
    which prompt a step sees, so they are refused rather than silently dropped."""
    if not conditioning:
        raise ValueError(f"the {what} conditioning is empty: connect a CLIPTextEncode output")
    if len(conditioning) != 1:
        raise ValueError(
            f"the {what} conditioning has {len(conditioning)} entries (ConditioningCombine, area or timestep-range "
            "nodes): pix2pix-zero holds the cross-attention maps of one prompt, so give it a single CLIPTextEncode "
            "output (ConditioningConcat keeps one entry for long prompts)"
        )
    extra = conditioning[0][1]
    unsupported = [k for k in ("area", "mask", "control", "gligen") if extra.get(k) is not None]
    if unsupported or not (extra.get("start_percent", 0.0) <= 0.0 and extra.get("end_percent", 1.0) >= 1.0):
        raise ValueError(
            f"the {what} conditioning carries {', '.join(unsupported) or 'a timestep range'}: the guided sampler "
            "supports plain text conditioning only (no areas, masks, ControlNets, GLIGEN or timestep ranges)"
        )


# ComfyUI's CFG hooks (ModelPatcher.set_model_sampler_cfg_function / _pre_cfg_ / _post_cfg_), set by nodes such as
# RescaleCFG, SkipLayerGuidanceSD3, PerpNeg, CFGZeroStar or APG.
CFG_PATCH_KEYS = ("sampler_cfg_function", "sampler_pre_cfg_function", "sampler_post_cfg_function")


def check_no_cfg_patches(model, uses_cfg):
    """The guided edit combines CFG itself, as the paper (the guided latent's noise and the carried negative's), so
    a CFG hook on the MODEL could not take effect: refused when the run uses CFG, rather than dropped unseen."""
    if not uses_cfg:
        return
    found = [key for key in CFG_PATCH_KEYS if model.model_options.get(key)]
    if found:
        raise ValueError(
            f"this MODEL carries a CFG patch ({', '.join(found)}: from a node such as RescaleCFG, "
            "SkipLayerGuidanceSD3, PerpNeg or CFGZeroStar). Guided Edit combines CFG itself, as pix2pix-zero does, and cannot apply it: "
            "connect Guided Edit's model from before that node, or set cfg to 1")


def _quantized_weight(module) -> bool:
    """Whether a ComfyUI cast layer holds its weight quantized: a float8 tensor (scaled fp8 checkpoints) or a tensor
    subclass (ComfyUI 0.8's mixed-precision QuantizedTensor: fp8, nvfp4)."""
    weight = getattr(module, "weight", None)
    if not isinstance(weight, torch.Tensor) or not hasattr(module, "comfy_cast_weights"):
        return False
    return type(weight) not in (torch.Tensor, torch.nn.Parameter) or (weight.is_floating_point()
                                                                       and weight.element_size() == 1)


@contextlib.contextmanager
def gradient_pass_weights(module):
    """Around the guided edit's gradient pass (forward and backward): the weights as autograd can use them.

    - Inference-tensor weights become normal-tensor aliases of themselves (core.inference_weights: no copy).
    - Layers with quantized weights compute with their weights dequantized, as ComfyUI does when it casts weights
      (`comfy_cast_weights`, its low-VRAM switch, on those layers only): their fp8 / nvfp4 matrix products (where the
      GPU has them, e.g. ComfyUI 0.8's mixed-precision layers or `--fast fp8_matrix_mult`) quantize the input and
      have no backward, so the latent would get no gradient. The dequantized weight lives for one layer's call.
    Both are undone when the block ends; the no-grad passes run as the host set them up."""
    switched = [m for m in module.modules() if _quantized_weight(m) and not m.comfy_cast_weights]
    try:
        for m in switched:
            m.comfy_cast_weights = True
        with normal_tensor_weights(module):
            yield
    finally:
        for m in switched:
            m.comfy_cast_weights = False


# What torch says when a gradient meets ComfyUI's fp8 matrix products before 0.8 (fp8_linear): torch._scaled_mm has
# no backward (0.3.64), and fp8_linear clamps its input in place, with out= (0.3.75)
FP8_MATMUL_ERRORS = ("derivative for aten::_scaled_mm is not implemented",
                     "functions with out=... arguments don't support automatic differentiation")


@contextlib.contextmanager
def explained_gradient_errors():
    """Around each gradient pass, forward and backward: an error of the host's math that the user can act on gets a
    message saying what to change. ComfyUI before 0.8 multiplies by fp8 weights with fp8 matrix products on fp8 GPUs
    (UNETLoader's weight_dtype fp8_e4m3fn_fast, `--fast fp8_matrix_mult`, scaled fp8 checkpoints that ask for
    them), and those have no backward there."""
    try:
        yield
    except RuntimeError as error:
        if not any(text in str(error) for text in FP8_MATMUL_ERRORS):
            raise
        raise RuntimeError(
            "Guided Edit needs a gradient through the model, and this model multiplies by its fp8 weights with fp8 "
            "matrix products (on an fp8 GPU: UNETLoader's weight_dtype fp8_e4m3fn_fast, --fast fp8_matrix_mult, or a "
            "scaled fp8 checkpoint that asks for them), which have no backward in this ComfyUI version. Update to "
            "ComfyUI 0.8 or later (the edit then runs fp8 layers dequantized in its gradient pass), or load the "
            "model in fp16 / bf16, or with UNETLoader's weight_dtype default or fp8_e4m3fn") from error
