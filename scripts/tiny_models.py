"""Tiny Stable Diffusion models with seeded random weights, built at run time in ComfyUI's real layouts, for the
tests and the benchmarks (no downloads; nothing is ever committed). ComfyUI must be booted first
(``scripts.comfy_host.boot``).

  init_module_weights(module, seed)        torch's default init on every layer, deterministic from the seed
  tiny_sd15(seed=0) -> (MODEL, CLIP, VAE)  tiny SD 1.5-shaped ComfyUI objects, float32
  tiny_sd15_checkpoint(cache_dir, seed=0)  a small fp16 checkpoint file CheckpointLoaderSimple detects as SD 1.5
  tiny_unet_model(comfy, layout, seed)     tiny SD 1.5 / SD 2.x-v / SDXL UNet MODELs
  tiny_mmdit_model(family, seed)           tiny SD 3.x (MMDiT) / Flux flow-matching MODELs
  tiny_mmdit_clip(family, seed)            tiny SD 3.x (CLIP-L + CLIP-G + T5) / Flux (T5 + CLIP-L) CLIP objects
  use_models_dir(path)                     adds ``<path>/checkpoints`` to ComfyUI's checkpoint folders
"""
import hashlib
import json
import os
import uuid

from scripts import comfy_host
from scripts.comfy_host import call_node

_verified = set()


# ----------------------------------------------------------------------------------------------------------------
# Deterministic weights
# ----------------------------------------------------------------------------------------------------------------

def _torch_reset_owner(module):
    """The torch.nn class whose reset_parameters applies to ``module`` (comfy.ops overrides it with a no-op)."""
    for cls in type(module).__mro__:
        if cls.__module__.startswith("torch.nn.modules") and "reset_parameters" in cls.__dict__:
            return cls
    return None


def init_module_weights(module, seed, check_finite=True):
    """Initialise every torch.nn layer inside ``module`` with torch's default init, deterministically from ``seed``.

    comfy.ops layers (disable_weight_init / manual_cast) skip initialisation and hold torch.empty memory, and their
    own reset_parameters does nothing, so the torch.nn base class's reset_parameters is called explicitly. Parameters
    owned directly by non-torch.nn modules (TAESD's vae_scale/vae_shift, CLIP's logit_scale) keep their constructor
    values. The global RNG state is left untouched. Returns the module. check_finite=False: the caller fills what
    no init reaches (torch.empty memory, which may hold anything) and checks afterwards (tiny_mmdit_model).
    """
    import torch
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed)
        for m in module.modules():
            owner = _torch_reset_owner(m)
            if owner is not None:
                owner.reset_parameters(m)
    for name, p in module.named_parameters() if check_finite else ():
        if not torch.isfinite(p).all():
            raise RuntimeError(f"parameter {name} is not finite after init")
    return module


# ----------------------------------------------------------------------------------------------------------------
# Tiny SD 1.5 objects (direct construction)
# ----------------------------------------------------------------------------------------------------------------

# SD 1.5's structure (4 levels, 2 res blocks, attention on the first three levels, 16 attn2 layers: input 1,2,4,5,
# 7,8; middle 0; output 3..11) at model_channels 32 and context_dim 32.
TINY_UNET_CONFIG = {
    "use_checkpoint": False, "image_size": 32, "out_channels": 4, "use_spatial_transformer": True, "legacy": False,
    "adm_in_channels": None, "in_channels": 4, "model_channels": 32, "num_res_blocks": [2, 2, 2, 2],
    "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0], "channel_mult": [1, 2, 2, 2], "transformer_depth_middle": 1,
    "use_linear_in_transformer": False, "context_dim": 32, "num_heads": 8,
    "transformer_depth_output": [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0],
    "use_temporal_attention": False, "use_temporal_resblock": False,
}
# Overrides of ComfyUI's CLIP-L config (comfy/sd1_clip_config.json): hidden 32 = TINY_UNET_CONFIG["context_dim"].
TINY_CLIP_CONFIG = {"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 4, "num_hidden_layers": 2,
                    "projection_dim": 32}
# A 4-level KL autoencoder (downscale 8, 4 latent channels) with 32 base channels.
TINY_VAE_DDCONFIG = {"double_z": True, "z_channels": 4, "resolution": 64, "in_channels": 3, "out_ch": 3, "ch": 32,
                     "ch_mult": [1, 2, 2, 2], "num_res_blocks": 1, "attn_resolutions": [], "dropout": 0.0}


def tiny_sd15(seed=0):
    """Build ``(model_patcher, clip, vae)``: tiny, float32, SD 1.5-shaped, weights deterministic from ``seed``.

    - MODEL: ``comfy.supported_models.SD15(TINY_UNET_CONFIG)`` -> set_inference_dtype(float32) -> get_model({}) (an
      eps-prediction BaseModel) wrapped in a ModelPatcher (CPU load/offload devices).
    - CLIP: ``comfy.sd.CLIP(ClipTarget(SD1Tokenizer, SD1ClipModel))`` with ``clip_l_model_config`` = TINY_CLIP_CONFIG
      (2 layers, hidden 32), dtype float32 (ComfyUI's CPU default for text encoders would be fp16). The real CLIP-L
      tokenizer (bundled with ComfyUI) is used, so any prompt text works.
    - VAE: ``comfy.sd.VAE`` around an AutoencoderKL with TINY_VAE_DDCONFIG, dtype float32.
    About 3.2M + 1.6M + 0.4M parameters; stock nodes (CLIPTextEncode, KSampler, VAEEncode, VAEDecode) accept them.
    Weights: seed for the UNet, seed + 1 for the text encoder, seed + 2 for the VAE.
    """
    import torch
    import comfy.model_management as mm
    import comfy.model_patcher
    import comfy.sd
    import comfy.sd1_clip
    import comfy.supported_models
    import comfy.supported_models_base
    from comfy.ldm.models.autoencoder import AutoencoderKL

    model_config = comfy.supported_models.SD15(TINY_UNET_CONFIG)
    model_config.set_inference_dtype(torch.float32, None)
    model = model_config.get_model({})
    init_module_weights(model.diffusion_model, seed)
    model.eval()
    patcher = comfy.model_patcher.ModelPatcher(model, load_device=mm.get_torch_device(),
                                               offload_device=mm.unet_offload_device())

    target = comfy.supported_models_base.ClipTarget(comfy.sd1_clip.SD1Tokenizer, comfy.sd1_clip.SD1ClipModel)
    clip = comfy.sd.CLIP(target, model_options={"clip_l_model_config": dict(TINY_CLIP_CONFIG),
                                                "dtype": torch.float32})
    init_module_weights(clip.cond_stage_model, seed + 1)

    vae_sd = _seeded_state_dict(lambda: AutoencoderKL(ddconfig=dict(TINY_VAE_DDCONFIG), embed_dim=4), seed + 2)
    vae = comfy.sd.VAE(sd=vae_sd, config={"params": {"ddconfig": dict(TINY_VAE_DDCONFIG), "embed_dim": 4}},
                       dtype=torch.float32)
    return patcher, clip, vae


def smooth_sd15(v_prediction=False):
    """Tiny objects whose UNet responds smoothly to its input, like a trained denoiser (random networks are too
    input-sensitive for DDIM inversion to be exact; see scripts/diffusers_tiny.py). The UNet sees
    0.001 * x + a fixed pattern: scaling conv_in alone would be undone by GroupNorm (one channel per group here).
    Done with a unet wrapper on a clone, the same mechanism other packs' patches use."""
    import torch
    model, clip, vae = tiny_sd15(seed=3)
    unet = model.model.diffusion_model
    with torch.no_grad():
        unet.out[-1].weight.mul_(3.0)  # unit-like noise predictions
        unet.out[-1].bias.mul_(3.0)
    pattern = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(5))
    model = model.clone()
    if v_prediction:
        model = call_node("ModelSamplingDiscrete", model=model, sampling="v_prediction", zsnr=False)[0]
    sampling = model.get_model_object("model_sampling")

    def smooth(apply_model, args):
        # apply_model maps (x, sigma) -> denoised, x in sigma space. Give the UNet the damped input, then express
        # the result for the caller's x: calculate_denoised is affine in its input with the same model output.
        x, sigma = args["input"], args["timestep"]
        scale = (sigma.view(-1, 1, 1, 1) ** 2 + 1) ** 0.5
        x_damped = (0.001 * x / scale + pattern) * scale
        zero = torch.zeros_like(x)
        return (apply_model(x_damped, sigma, **args["c"]) - sampling.calculate_denoised(sigma, zero, x_damped)
                + sampling.calculate_denoised(sigma, zero, x))

    model.set_model_unet_function_wrapper(smooth)
    return model, clip, vae


def _seeded_state_dict(factory, seed):
    import torch
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        module = factory()
    init_module_weights(module, seed)
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


# ----------------------------------------------------------------------------------------------------------------
# Tiny SD 1.5 checkpoint file
# ----------------------------------------------------------------------------------------------------------------

# What model detection needs to call it SD 1.5: model_channels 320, context_dim 768 (attn2 to_k), conv proj_in,
# 4 input channels, no label_emb. The rest is free, so: two levels, one res block each, attention on level 0 and
# the middle (44M parameters).
CKPT_UNET_CONFIG = {
    "use_checkpoint": False, "image_size": 32, "out_channels": 4, "use_spatial_transformer": True, "legacy": False,
    "adm_in_channels": None, "in_channels": 4, "model_channels": 320, "num_res_blocks": [1, 1],
    "transformer_depth": [1, 0], "channel_mult": [1, 1], "transformer_depth_middle": 1,
    "use_linear_in_transformer": False, "context_dim": 768, "num_heads": 8,
    "transformer_depth_output": [1, 1, 0, 0],
    "use_temporal_attention": False, "use_temporal_resblock": False,
}
_CKPT_FORMAT_VERSION = 1


def _ckpt_file_name(seed):
    spec = json.dumps({"unet": CKPT_UNET_CONFIG, "clip": "clip_l-12", "vae": "taesd", "dtype": "fp16",
                       "seed": seed, "v": _CKPT_FORMAT_VERSION}, sort_keys=True)
    return "p2pz-tiny-sd15-{}.safetensors".format(hashlib.sha256(spec.encode()).hexdigest()[:12])


def _build_checkpoint_state_dict(seed):
    import torch
    import comfy.sd1_clip
    import comfy.supported_models
    import comfy.taesd.taesd

    model_config = comfy.supported_models.SD15(CKPT_UNET_CONFIG)
    model_config.set_inference_dtype(torch.float32, None)
    model = model_config.get_model({})
    init_module_weights(model.diffusion_model, seed)

    # the full 12-layer CLIP-L text encoder, as CheckpointLoaderSimple builds it (its keys start with "clip_l.")
    clip_sd = _seeded_state_dict(lambda: comfy.sd1_clip.SD1ClipModel(device="cpu", dtype=torch.float32), seed + 1)
    # TAESD stored under first_stage_model. (comfy.sd.VAE recognises "taesd_decoder.1.weight")
    vae_sd = _seeded_state_dict(lambda: comfy.taesd.taesd.TAESD(), seed + 2)

    sd = model.state_dict_for_saving(clip_state_dict=clip_sd, vae_state_dict=vae_sd)
    out = {}
    for k, v in sd.items():
        v = v.detach()
        if v.is_floating_point():
            v = v.to(torch.float16)
        out[k] = v.contiguous()
    return out


def tiny_sd15_checkpoint(cache_dir, seed=0, verify=True):
    """Path of a small fp16 SD 1.5 checkpoint in ``<cache_dir>/checkpoints/`` (built on first use, then reused).

    UNet: CKPT_UNET_CONFIG (model_channels 320, context_dim 768, channel_mult [1, 1], one res block), the full
    12-layer CLIP-L text encoder, and a TAESD under ``first_stage_model.``; random weights from ``seed``; about
    330 MiB. The file name carries a hash of the build spec, so a changed spec never reuses a stale file; the file
    is written to a temporary name and renamed, so concurrent builders do not see half a file.

    With ``verify`` (once per process and file) the file is loaded through ``nodes.CheckpointLoaderSimple`` (which
    registers ``<cache_dir>/checkpoints`` through use_models_dir), and this checks that the model is SD15 and that
    every text-encoder weight ComfyUI built was present in the file (ComfyUI leaves missing layers uninitialised
    with only a log line).
    """
    import comfy.utils

    ckpt_dir = os.path.join(os.path.abspath(cache_dir), "checkpoints")
    os.makedirs(ckpt_dir, exist_ok=True)
    path = os.path.join(ckpt_dir, _ckpt_file_name(seed))
    if not os.path.isfile(path):
        sd = _build_checkpoint_state_dict(seed)
        tmp = f"{path}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
        try:
            comfy.utils.save_torch_file(sd, tmp, metadata={"p2pz": "tiny random SD 1.5 test checkpoint"})
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
        del sd
    verified = _verified
    if verify and path not in verified:
        _verify_checkpoint(path, cache_dir)
        verified.add(path)
    return path


def _verify_checkpoint(path, cache_dir):
    import torch
    import comfy.supported_models
    import comfy.utils
    nodes = comfy_host.booted()

    use_models_dir(cache_dir)
    name = os.path.basename(path)
    model, clip, vae = call_node(nodes.CheckpointLoaderSimple, ckpt_name=name)
    if type(model.model.model_config) is not comfy.supported_models.SD15:
        raise AssertionError(f"{name} was detected as {type(model.model.model_config).__name__}, not SD15")
    if clip is None or vae is None or vae.first_stage_model is None:
        raise AssertionError(f"{name} did not give a CLIP and a VAE")

    file_sd = comfy.utils.load_torch_file(path)
    te = clip.cond_stage_model.state_dict()
    layers = {k.split(".")[5] for k in te if k.startswith("clip_l.transformer.text_model.encoder.layers.")}
    if len(layers) != 12:
        raise AssertionError(f"text encoder has {len(layers)} layers, expected 12")
    missing, differs = [], []
    for k, v in te.items():
        if k in ("clip_l.logit_scale", "clip_l.transformer.text_projection.weight"):
            continue  # not stored in SD 1.5 checkpoints (identity projection / constant)
        fk = "cond_stage_model." + k[len("clip_l."):]
        if fk not in file_sd:
            missing.append(k)
        elif not torch.equal(file_sd[fk].to(v.dtype), v):
            differs.append(k)
    if missing or differs:
        raise AssertionError(f"text encoder of {name}: uninitialised {missing[:5]}..., not loaded {differs[:5]}...")


def use_models_dir(path):
    """Register ``<path>/checkpoints`` for "checkpoints" (appended; existing entries, e.g. from
    extra_model_paths.yaml, are kept) so CheckpointLoaderSimple finds files there by name."""
    import folder_paths
    ckpt_dir = os.path.join(os.path.abspath(path), "checkpoints")
    os.makedirs(ckpt_dir, exist_ok=True)
    folder_paths.add_model_folder_path("checkpoints", ckpt_dir)


# ----------------------------------------------------------------------------------------------------------------
# Tiny UNets of the three SD layouts (direct construction), and caption-like conditionings

_BASE = {"use_checkpoint": False, "image_size": 32, "out_channels": 4, "in_channels": 4, "use_spatial_transformer": True,
         "legacy": False, "use_temporal_attention": False, "use_temporal_resblock": False}
# SD 2.x: linear projections, heads of 64 channels at full size (here 16), attention upcast to fp32, v-prediction.
_SD2 = dict(_BASE, model_channels=32, channel_mult=[1, 2], num_res_blocks=[1, 1], transformer_depth=[1, 1],
            transformer_depth_output=[1, 1, 1, 1], transformer_depth_middle=1, use_linear_in_transformer=True,
            context_dim=64, adm_in_channels=None)
# SDXL: attention only at the lower resolution with depth 2 (layer keys (block, id, 0..1)), a pooled text vector
# (here 32 wide) plus six size embeddings of 256 as the adm input.
_SDXL = dict(_BASE, model_channels=32, channel_mult=[1, 2], num_res_blocks=[1, 1], transformer_depth=[0, 2],
             transformer_depth_output=[0, 0, 2, 2], transformer_depth_middle=2, use_linear_in_transformer=True,
             context_dim=64, adm_in_channels=32 + 6 * 256, num_classes="sequential")


def tiny_unet_model(comfy, layout, seed=0):
    """A tiny UNet MODEL of one layout: "sd15" (eps), "sd2v" (SD 2.x v-prediction) or "sdxl" (eps, pooled vector).
    Returns (MODEL, context width, pooled width or None); ``comfy`` is unused (the tests' call form). Built under
    inference mode, as ComfyUI's loaders build models, so the weights are inference tensors (what makes gradients
    hard inside ComfyUI)."""
    import torch
    import comfy.model_base as mb
    import comfy.model_management as mm
    import comfy.supported_models as sm
    from comfy.model_patcher import ModelPatcher

    if layout == "sd15":
        config, kind, width, pooled = sm.SD15(dict(TINY_UNET_CONFIG)), mb.ModelType.EPS, 32, None
    elif layout == "sd2v":
        config, kind, width, pooled = sm.SD20(dict(_SD2)), mb.ModelType.V_PREDICTION, 64, None
    else:
        config, kind, width, pooled = sm.SDXL(dict(_SDXL)), mb.ModelType.EPS, 64, 32
    if layout != "sd15":
        config.unet_config["num_head_channels"] = 16
    config.set_inference_dtype(torch.float32, None)
    with torch.inference_mode():
        model = (mb.SDXL if layout == "sdxl" else mb.BaseModel)(config, model_type=kind)
        init_module_weights(model.diffusion_model, seed)
        model.eval()
    patcher = ModelPatcher(model, load_device=mm.get_torch_device(), offload_device=mm.unet_offload_device())
    return patcher, width, pooled


def tiny_conditioning(width, pooled, seed, scale=4.0):
    """A caption-like conditioning. Scaled x4: a tiny random network's cross-attention is then peaked enough for its
    maps to respond to the latent, as a trained model's do (with unit embeddings they are nearly uniform)."""
    import torch
    g = torch.Generator().manual_seed(seed)
    extra = {} if pooled is None else {"pooled_output": torch.randn(1, pooled, generator=g)}
    return [[scale * torch.randn(1, 77, width, generator=g), extra]]


# ----------------------------------------------------------------------------------------------------------------
# Tiny MMDiT models (SD 3.x, Flux) and their text encoders (direct construction)
# ----------------------------------------------------------------------------------------------------------------

# SD 3.x's MMDiT: ComfyUI fixes the head size at 64 and the hidden size at 64 * depth, so depth 2 is hidden 128 with
# 2 heads. Context and pooled widths are free here (4096 and 2048 at full size): tiny conditionings feed it.
TINY_SD3_CONTEXT, TINY_SD3_POOLED = 64, 32
_SD3_UNET = {"in_channels": 16, "out_channels": 16, "patch_size": 2, "depth": 2, "input_size": None,
             "adm_in_channels": TINY_SD3_POOLED, "pos_embed_scaling_factor": None, "pos_embed_max_size": 16,
             "num_patches": 256, "x_block_self_attn_layers": [],
             "context_embedder_config": {"target": "torch.nn.Linear",
                                         "params": {"in_features": TINY_SD3_CONTEXT, "out_features": 128}}}
# Flux: one double and one single block, hidden 32 in 2 heads of 16 (axes_dim sums to the head size), the real
# 16 latent channels and patch 2; T5 width 64 and CLIP pooled 32 instead of 4096 and 768. No guidance embedding
# (schnell-like), so cfg 1 runs need no guidance value.
TINY_FLUX_CONTEXT, TINY_FLUX_POOLED = 64, 32
_FLUX_UNET = {"image_model": "flux", "in_channels": 16, "out_channels": 16, "vec_in_dim": TINY_FLUX_POOLED,
              "context_in_dim": TINY_FLUX_CONTEXT, "hidden_size": 32, "mlp_ratio": 2.0, "num_heads": 2, "depth": 1,
              "depth_single_blocks": 1, "axes_dim": [4, 6, 6], "theta": 10000, "patch_size": 2, "qkv_bias": True,
              "guidance_embed": False}


def tiny_mmdit_model(family, seed=0, x_self_attn_layers=(), double_blocks=1):
    """A tiny flow-matching MODEL in ComfyUI's real layout: ``family`` "sd3" (comfy.supported_models.SD3: MMDiT,
    ModelSamplingDiscreteFlow shift 3.0, SD3 latent format) or "flux" (comfy.supported_models.Flux: double + single
    stream blocks, ModelSamplingFlux, Flux latent format). Returns (MODEL, context width, pooled width). float32,
    weights deterministic from ``seed``; built under inference mode as ComfyUI's loaders build models.

    ``x_self_attn_layers`` (SD3 only): joint blocks with SD 3.5 Medium's extra image self-attention (MMDiT-X).
    ``double_blocks`` (Flux only): how many double-stream blocks."""
    import torch
    import comfy.model_management as mm
    import comfy.supported_models as sm
    from comfy.model_patcher import ModelPatcher

    if family == "sd3":
        unet = dict(_SD3_UNET, x_block_self_attn_layers=list(x_self_attn_layers))
        config, width, pooled = sm.SD3(unet), TINY_SD3_CONTEXT, TINY_SD3_POOLED
    elif family == "flux":
        unet = dict(_FLUX_UNET, depth=double_blocks)
        from comfy.ldm.flux.model import FluxParams
        if "txt_ids_dims" in getattr(FluxParams, "__dataclass_fields__", {}):
            unet["txt_ids_dims"] = []  # 0.8.0+: what model detection gives Flux.1
        config, width, pooled = sm.Flux(unet), TINY_FLUX_CONTEXT, TINY_FLUX_POOLED
    else:
        raise ValueError(f"unknown MMDiT family {family!r}: 'sd3' or 'flux'")
    config.set_inference_dtype(torch.float32, None)
    with torch.inference_mode():
        model = config.get_model({})
        # Flux's RMSNorm scales are torch.empty memory until _fill_mmdit_extras sets them (and then checks all)
        init_module_weights(model.diffusion_model, seed, check_finite=False)
        _fill_mmdit_extras(model.diffusion_model)
        model.eval()
    patcher = ModelPatcher(model, load_device=mm.get_torch_device(), offload_device=mm.unet_offload_device())
    return patcher, width, pooled


def _fill_mmdit_extras(net):
    """What init_module_weights cannot reach and ComfyUI leaves as torch.empty memory until a checkpoint loads:
    Flux's RMSNorm scales (set to 1, their trained-free value) and MMDiT's fixed sin-cos position table (the table
    SD3 checkpoints carry)."""
    import torch
    from comfy.ldm.modules.diffusionmodules.mmdit import get_2d_sincos_pos_embed
    for module in net.modules():
        if type(module).__name__ == "RMSNorm" and isinstance(getattr(module, "scale", None), torch.Tensor):
            module.scale.fill_(1.0)
    pos = getattr(net, "pos_embed", None)
    if isinstance(pos, torch.Tensor):
        grid = round(pos.shape[1] ** 0.5)
        pos.copy_(torch.from_numpy(get_2d_sincos_pos_embed(pos.shape[2], grid)).to(pos.dtype)[None])
    for name, t in list(net.named_parameters()) + list(net.named_buffers()):
        if not torch.isfinite(t).all() or t.abs().max() > 1e6:
            raise RuntimeError(f"{name} is not initialised")


def tiny_flow_conditioning(width, pooled, seed, tokens=77, scale=1.0):
    """A random conditioning for a tiny MMDiT MODEL: [1, tokens, width] plus the pooled vector it needs."""
    import torch
    g = torch.Generator().manual_seed(seed)
    return [[scale * torch.randn(1, tokens, width, generator=g), {"pooled_output": torch.randn(1, pooled, generator=g)}]]


# Text encoders: ComfyUI's real SD3 and Flux CLIP objects (tokenizers, encoder classes, how the conditioning is laid
# out), with tiny configs through model_options["<name>_model_config"] (clip_l, clip_g, t5xxl: sd1_clip reads them on
# every supported version). SD3 pads CLIP-L + CLIP-G to 4096 and concatenates T5 along the sequence, so its T5 must
# be 4096 wide: one layer, 2 heads of 8, d_ff 16, but the 32128 x 4096 embedding (131M floats, 0.5 GB) is the
# price of the real layout. Flux's T5 width is free (64 here). 3 CLIP layers: SD3 reads CLIP-L's penultimate layer,
# which ComfyUI asserts is inside the model.
TINY_CLIP_L = {"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 4, "num_hidden_layers": 3,
               "projection_dim": 32}
TINY_CLIP_G = {"hidden_size": 48, "intermediate_size": 64, "num_attention_heads": 4, "num_hidden_layers": 3,
               "projection_dim": 40}


def _tiny_t5(d_model):
    return {"d_model": d_model, "d_ff": 16, "d_kv": 8, "num_heads": 2, "num_layers": 1, "num_decoder_layers": 1}


def tiny_mmdit_clip(family, seed=0, t5=True):
    """A tiny comfy.sd.CLIP with the real ClipTarget of ``family``: "sd3" (SD3Tokenizer + sd3_clip(clip_l, clip_g,
    t5)) or "flux" (FluxTokenizer + flux_clip: T5 sequence, CLIP-L pooled). float32, weights from ``seed``."""
    import torch
    import comfy.sd
    import comfy.supported_models_base
    import comfy.text_encoders.flux as flux_te
    import comfy.text_encoders.sd3_clip as sd3_te

    options = {"clip_l_model_config": dict(TINY_CLIP_L), "clip_g_model_config": dict(TINY_CLIP_G),
               "dtype": torch.float32}
    if family == "sd3":
        target = comfy.supported_models_base.ClipTarget(
            sd3_te.SD3Tokenizer, sd3_te.sd3_clip(clip_l=True, clip_g=True, t5=t5, dtype_t5=torch.float32))
        options["t5xxl_model_config"] = _tiny_t5(4096)
    elif family == "flux":
        target = comfy.supported_models_base.ClipTarget(flux_te.FluxTokenizer,
                                                        flux_te.flux_clip(dtype_t5=torch.float32))
        options["t5xxl_model_config"] = _tiny_t5(TINY_FLUX_CONTEXT)
    else:
        raise ValueError(f"unknown MMDiT family {family!r}: 'sd3' or 'flux'")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # T5's relative attention bias and CLIP's position ids are created, not reset
        clip = comfy.sd.CLIP(target, model_options=options)
    with torch.no_grad():
        for module in clip.cond_stage_model.modules():
            # T5's own RMS layer norm is no torch.nn class (nothing resets it) and holds torch.empty memory
            if type(module).__name__ == "T5LayerNorm":
                module.weight.fill_(1.0)
    init_module_weights(clip.cond_stage_model, seed)
    return clip
