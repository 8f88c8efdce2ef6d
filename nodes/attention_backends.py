"""The attention backends the pack's patches call, chosen per pass: which of ComfyUI's attention functions may run
under autograd (the guided edit's gradient pass), SDPA where ComfyUI picked a slow CPU backend for the no-grad passes
(the inversion and the guided edit's other passes), and the UNet's cross-attention layers by ComfyUI's patch keys.
Shared by Invert Latent and Guided Edit; nothing here edits."""
import functools
import inspect

import comfy.ldm.modules.attention as comfy_attention
import torch

# Backends with an autograd backward. sage, flash (a custom op registered without a backward) and xformers as
# ComfyUI calls it have none, and an optimized_attention_override is an arbitrary function: the gradient pass
# through them fails or silently loses the attention terms of the gradient.
AUTOGRAD_BACKENDS = ("attention_pytorch", "attention_basic", "attention_sub_quad", "attention_split")
# Autograd-capable but slow (CPU default): SDPA gives the same attention with a backward about twice as fast.
SLOW_BACKENDS = ("attention_sub_quad", "attention_split")
OVERRIDE_KEY = "optimized_attention_override"


def backend_name(func):
    """The name of the ComfyUI attention function `func` is (e.g. "attention_sage"), or None for another one."""
    for name in dir(comfy_attention):
        if name.startswith("attention") and getattr(comfy_attention, name) is func:
            return name
    return None


@functools.lru_cache(maxsize=64)  # asked at every attention call: inspect once per function
def _accepts_transformer_options(func):
    # 0.3.64 and 0.8.0's attention functions take **kwargs (and honour the override through wrap_attn); a function
    # installed by someone else may not take the keyword at all.
    try:
        params = inspect.signature(func).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == "transformer_options" or p.kind is p.VAR_KEYWORD for p in params)


def host_attention(func, q, k, v, extra_options):
    """func(q, k, v) as ComfyUI's CrossAttention calls it: with the transformer options, so that wrap_attn honours
    an optimized_attention_override (extra_options is transformer_options without the patch tables)."""
    kwargs = {"attn_precision": extra_options.get("attn_precision")}
    if _accepts_transformer_options(func):
        kwargs["transformer_options"] = extra_options
    return func(q, k, v, extra_options["n_heads"], **kwargs)


def gradient_attention(q, k, v, extra_options):
    """Attention for the gradient pass: ComfyUI's attention_pytorch (SDPA, whose backward is PyTorch's), with the
    transformer options minus any override (an arbitrary function cannot be vouched for in a backward pass)."""
    options = {key: value for key, value in extra_options.items() if key != OVERRIDE_KEY}
    return host_attention(comfy_attention.attention_pytorch, q, k, v, options)


def no_grad_attention(q, k, v, extra_options):
    """The no-grad passes' attention on the guided run's clone: the host's, override honoured, but SDPA instead of
    slow sub-quadratic/split attention (measured on a 2-core CPU, 1024 queries, batch 1-2: self-attention 2.7-3.9x
    faster, cross-attention's 77 keys 1.3-3.5x)."""
    func = comfy_attention.optimized_attention
    if any(func is getattr(comfy_attention, name, None) for name in SLOW_BACKENDS):
        func = comfy_attention.attention_pytorch
    return host_attention(func, q, k, v, extra_options)


def no_grad_layer_attention(q, k, v, extra_options):
    """attn1/attn2 replace for a model that only runs without gradients (the inversion's clone)."""
    return no_grad_attention(q, k, v, extra_options)


def with_fast_attention(model):
    """`model`, or where ComfyUI selected a slow attention backend (sub-quadratic or split: its CPU default), a clone
    whose attention layers run SDPA instead (the same attention, faster: see no_grad_attention). No-grad use only; layers that
    another pack replaced keep its patch; the clone adds no weight patch (no re-patching)."""
    func = comfy_attention.optimized_attention
    if not any(func is getattr(comfy_attention, name, None) for name in SLOW_BACKENDS):
        return model
    layers = attn2_layers(model.model.diffusion_model)
    if not layers:  # not a UNet (SD 3.x, Flux): no attn1/attn2 layers to patch
        return model
    clone = model.clone()
    replace = clone.model_options.get("transformer_options", {}).get("patches_replace", {})
    for name, setter in (("attn1", clone.set_model_attn1_replace), ("attn2", clone.set_model_attn2_replace)):
        existing = replace.get(name, {})
        for key in layers:
            if key not in existing and key[:2] not in existing:
                setter(no_grad_layer_attention, *key)
    return clone


def self_attention(q, k, v, extra_options):
    """attn1 replace on the guided run's clone: PyTorch attention in the gradient pass, no_grad_attention in the
    no-grad passes."""
    if torch.is_grad_enabled():
        return gradient_attention(q, k, v, extra_options)
    return no_grad_attention(q, k, v, extra_options)


def attn2_layers(diffusion_model):
    """{(block name, block id, index in the block): attn2 module} for every cross-attention layer of a UNet."""
    from comfy.ldm.modules.attention import SpatialTransformer

    layers = {}
    middle = getattr(diffusion_model, "middle_block", None)  # none on a transformer (SD 3.x, Flux)
    groups = [("input", getattr(diffusion_model, "input_blocks", [])),
              ("middle", [] if middle is None else [middle]),
              ("output", getattr(diffusion_model, "output_blocks", []))]
    for name, blocks in groups:
        for block_id, block in enumerate(blocks):
            for module in block.modules():
                if isinstance(module, SpatialTransformer):
                    for index, transformer in enumerate(module.transformer_blocks):
                        if getattr(transformer, "attn2", None) is not None:
                            layers[(name, block_id, index)] = transformer.attn2
    return layers
