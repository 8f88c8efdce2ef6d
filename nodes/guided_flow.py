"""P2PZ_GuidedEdit for flow-matching MMDiT models (SD 3.x, Flux).

The loop is core.guidance's (FLOW_RULES, the paper's carry rule); this module connects it to ComfyUI on a CLONE of the MODEL (never the MODEL):
- `transformer_options["optimized_attention_override"]` (honoured by ComfyUI's attention in SD 3.x's joint blocks
  and Flux's blocks on 0.3.64, 0.3.75 and 0.8.0) computes a guided block's joint attention explicitly while maps
  are wanted and hands the image-query/text-key probabilities to the run's AttentionMaps; otherwise it calls the
  override that was there before (another pack's), or ComfyUI's attention;
- `patches_replace["dit"]` block wrappers (chained to any existing one) tag the transformer options of the guided
  blocks with the block key and the text/image token counts (the override alone cannot tell which block it is in,
  nor where the text tokens are), checkpoint the block in the gradient pass where ComfyUI does not already, and stop
  the gradient pass after the last guided block (the maps are all that pass is for);
- the gradient pass aliases the inference-tensor weights and runs quantized layers dequantized
  (common.gradient_pass_weights).

Blocks: SD 3.x: every joint block (context tokens, then image tokens). Flux: the double-stream blocks (txt, then
img) only. Not because their text tokens are purer: in every joint block, double or single, the text stream has
attended to the image in the blocks before. The reasons are cost and structure: the double blocks come first, so
the gradient pass stops before the 38 single blocks (two thirds of Flux-dev's depth: guiding them would run the
gradient pass through the whole model), and a single block projects text and image with one shared set of weights
(no text stream of its own to compare). Whether the single blocks would guide better is untested.
"""
import contextlib
import functools
import logging

import comfy.ldm.modules.attention as comfy_attention
import comfy.model_management
import comfy.samplers
import comfy.utils
import torch
import torch.utils.checkpoint

from ..core.attention import AttentionMaps
from ..core.guidance import FLOW_RULES, guided_edit
from ..core.inversion import INVERSION_NAN_CAUSES, check_latent
from ..core.joint_attention import apply_rope, explicit_joint_attention, token_slices
from ..core.schedule import FlowSchedule
from .attention_backends import OVERRIDE_KEY
from .common import (INVERSION_KEY, check_conditioning_batch, check_no_cfg_patches, check_plain_conditioning,
                     explained_gradient_errors, flow_model_sampling, gradient_pass_weights, log_map_loss)
from .guided_shell import (COND_KEYS, GuidedEditGuider, check_steps, guidance_options, guided_layers, guided_steps,
                           run_guided_sampler, same_conditioning)

TAG_KEY = "p2pz_joint_block"  # set by our block wrappers in a copy of the transformer options


class _MapsComplete(Exception):
    """Raised after the last guided block of the gradient pass: the rest of the model does not change the loss."""


class _Run:
    """State of one guided run shared by its patches; never copied by ModelPatcher.clone()'s deepcopy."""

    def __init__(self, guided_blocks):
        self.maps = AttentionMaps()
        self.guided_blocks = set(guided_blocks)
        self.last_block = max(guided_blocks, key=lambda key: key[1])
        self.branch_of_flag = {}
        self.seen = set()  # (block, branch) observed in this model evaluation (checkpoint recomputes skip)
        self.pending = []  # (block, maps, branches, heads) of the current model evaluation
        self.checkpoint = True
        self.module = None
        self.patch_size = 2
        self.image_tokens = None  # tokens of the latent being edited (reference images' tokens come after them)

    def __deepcopy__(self, memo):
        return self


def _gradient_attention(func, args, kwargs):
    # sage, flash and xformers as ComfyUI calls them have no autograd backward, and an override is an arbitrary
    # function: the gradient pass uses PyTorch's attention (kwargs keep "_inside_attn_wrapper": no override loop).
    return comfy_attention.attention_pytorch(*args, **kwargs)


class _JointOverride:
    """optimized_attention_override on the clone: explicit joint attention with maps in tagged guided blocks while
    maps are wanted; everything else goes to the previous override or ComfyUI's function."""

    def __init__(self, run, previous=None):
        self.run, self.previous = run, previous

    def __deepcopy__(self, memo):
        return self

    def _pass_on(self, func, args, kwargs):
        if torch.is_grad_enabled():
            return _gradient_attention(func, args, kwargs)
        if self.previous is not None:
            return self.previous(func, *args, **kwargs)
        return func(*args, **kwargs)

    def __call__(self, func, *args, **kwargs):
        options = kwargs.get("transformer_options") or {}
        tag = options.get(TAG_KEY)
        run = self.run
        if tag is None or not run.maps.wants_maps:
            return self._pass_on(func, args, kwargs)
        key, n_txt, n_img, n_edited, txt_first = tag
        q, k, v = args[:3]
        skip_reshape = kwargs.get("skip_reshape", False)
        tokens = k.shape[-2] if skip_reshape else k.shape[1]
        if tokens != n_txt + n_img:  # SD 3.5's extra image self-attention in the same block: not joint
            return self._pass_on(func, args, kwargs)
        heads = args[3] if len(args) > 3 else kwargs["heads"]
        precision = comfy_attention.get_attn_precision(kwargs.get("attn_precision"), q.dtype)
        text, image = token_slices(n_txt, n_img, txt_first)
        # The maps' rows: the edited image's tokens only. Flux Kontext appends its reference images' tokens to the
        # image stream; their maps are not the edited image's layout.
        image = slice(image.start, image.start + n_edited)
        out, maps = explicit_joint_attention(
            q, k, v, heads, text=text, image=image, skip_reshape=skip_reshape,
            skip_output_reshape=kwargs.get("skip_output_reshape", False), mask=kwargs.get("mask"),
            upcast=precision == torch.float32)
        flags = options.get("cond_or_uncond", [])
        branches = [run.branch_of_flag.get(f) for f in flags]
        if branches and None not in branches and not any((key, b) in run.seen for b in branches):
            # Handed over after the model call, not here: the loss ops must stay out of a checkpointed block (its
            # recompute must save the same tensors), and a recompute observes nothing twice.
            run.seen.update((key, b) for b in branches)
            if run.maps.mode == "record":  # no autograd involved: recorded at once
                run.maps.observe_batch(key, maps, branches, heads)
            else:
                run.pending.append((key, maps, branches, heads))
        if self.previous is not None and not torch.is_grad_enabled():
            return self.previous(func, *args, **kwargs)  # another pack's attention still produces the output
        return out


class _BlockTag:
    """patches_replace["dit"] wrapper of one block up to the last guided one (chained to the previous wrapper of
    that key): tags a guided block's transformer options while maps are wanted; in the gradient pass runs a Flux
    block out of place (checkpointed), guided or not (the gradient flows through every block before the last guided
    one), and stops the pass after the last guided block."""

    def __init__(self, run, key, module, host_checkpoints, txt_first, previous=None, guided=True):
        self.run, self.key, self.module, self.previous = run, key, module, previous
        self.host_checkpoints, self.txt_first, self.guided = host_checkpoints, txt_first, guided

    def __deepcopy__(self, memo):
        return self

    def __call__(self, args, extra):
        run = self.run
        if not run.maps.wants_maps:
            return self.previous(args, extra) if self.previous is not None else extra["original_block"](args)
        if self.guided:
            n_txt, n_img = args["txt"].shape[1], args["img"].shape[1]
            n_edited = min(n_img, run.image_tokens or n_img)
            options = dict(args.get("transformer_options") or {})
            options[TAG_KEY] = (self.key, n_txt, n_img, n_edited, self.txt_first)
            args = dict(args, transformer_options=options)
        original = extra["original_block"]
        grad = torch.is_grad_enabled()
        if grad and not self.host_checkpoints:  # Flux (ComfyUI checkpoints SD 3.x's JointBlock itself)
            # The block module is called directly, as Flux's block_wrap does: block_wrap reads the model loop's
            # variable `block`, which by a checkpoint's recompute in the backward names the last single block.
            original = functools.partial(_flux_double_block, self.module, run.checkpoint)
            extra = dict(extra, original_block=original)
        out = self.previous(args, extra) if self.previous is not None else original(args)
        if grad and self.key == run.last_block:
            raise _MapsComplete()
        return out


def flux_double_block_out_of_place(block, img, txt, vec, pe, attn_mask=None, transformer_options=None):
    """ComfyUI's Flux DoubleStreamBlock.forward (0.3.64 to 0.8.0, Flux.1's configuration: per-block modulation, no
    modulation_dims, which Flux.1's block loop never passes; the fp16 clamp of the text stream included) with its
    residual additions written out of place.

    ComfyUI's block adds to img and txt in place (`img += ...`), overwriting tensors its own layer norms saved for
    the backward: autograd refuses it, and under checkpointing the recompute would silently hand the backward the
    overwritten values. Used for the gradient pass only (same modules, same attention call, so the same maps and
    the override still sees the joint attention); tests compare it with ComfyUI's block."""
    from comfy.ldm.flux import math as flux_math
    from comfy.ldm.flux.layers import apply_mod

    if not getattr(block, "modulation", True):
        raise ValueError("this Flux variant has no per-block modulation (e.g. Chroma): the guided edit supports "
                         "Flux.1 (dev, schnell) and SD 3.x")
    img_mod1, img_mod2 = block.img_mod(vec)
    txt_mod1, txt_mod2 = block.txt_mod(vec)

    def qkv(norm, attn, x, mod):
        qkv_ = attn.qkv(apply_mod(norm(x), 1 + mod.scale, mod.shift))
        q, k, v = qkv_.view(qkv_.shape[0], qkv_.shape[1], 3, block.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k = attn.norm(q, k, v)
        return q, k, v

    img_qkv = qkv(block.img_norm1, block.img_attn, img, img_mod1)
    txt_qkv = qkv(block.txt_norm1, block.txt_attn, txt, txt_mod1)
    flipped = getattr(block, "flipped_img_txt", False)
    first, second = (img_qkv, txt_qkv) if flipped else (txt_qkv, img_qkv)
    q, k, v = (torch.cat((a, b), dim=2) for a, b in zip(first, second))
    # flux_math.attention's two steps, with RoPE in differentiable torch (core.joint_attention.apply_rope): 0.8.0's
    # comfy_kitchen op has no backward. ComfyUI's own attention function, so an override still sees the call.
    if pe is not None:
        q, k = apply_rope(q, k, pe)
    attn = flux_math.optimized_attention(q, k, v, q.shape[1], skip_reshape=True, mask=attn_mask,
                                         transformer_options=transformer_options or {})
    n_first = first[0].shape[2]
    img_attn, txt_attn = (attn[:, :n_first], attn[:, n_first:]) if flipped else (attn[:, n_first:], attn[:, :n_first])

    img = img + apply_mod(block.img_attn.proj(img_attn), img_mod1.gate)
    img = img + apply_mod(block.img_mlp(apply_mod(block.img_norm2(img), 1 + img_mod2.scale, img_mod2.shift)),
                          img_mod2.gate)
    txt = txt + apply_mod(block.txt_attn.proj(txt_attn), txt_mod1.gate)
    txt = txt + apply_mod(block.txt_mlp(apply_mod(block.txt_norm2(txt), 1 + txt_mod2.scale, txt_mod2.shift)),
                          txt_mod2.gate)
    if txt.dtype == torch.float16:  # as ComfyUI's block (0.3.64, 0.8.0): fp16's text stream can overflow
        txt = torch.nan_to_num(txt, nan=0.0, posinf=65504, neginf=-65504)
    return img, txt


def _flux_double_block(block, checkpoint, args):
    """The gradient pass's Flux double block (flux_double_block_out_of_place), with per-block gradient
    checkpointing (non-reentrant) when `checkpoint`: the block's activations (the explicit [tokens, tokens]
    probabilities above all) are recomputed in the backward instead of kept for every block."""
    options, mask = args.get("transformer_options"), args.get("attn_mask")

    def run(img, txt, vec, pe):
        return flux_double_block_out_of_place(block, img, txt, vec, pe, mask, options)

    tensors = (args["img"], args["txt"], args["vec"], args["pe"])
    if checkpoint:
        img, txt = torch.utils.checkpoint.checkpoint(run, *tensors, use_reentrant=False)
    else:
        img, txt = run(*tensors)
    return {"img": img, "txt": txt}


def _joint_blocks(diffusion_model):
    """[(dit key, block module, ComfyUI checkpoints it itself under a replace, text first)] of the guided kind."""
    # SD 3.x MMDiT: under a block wrapper JointBlock.forward calls block_mixing(use_checkpoint=True), ComfyUI's own
    # per-block checkpointing
    if hasattr(diffusion_model, "joint_blocks"):
        return [(("double_block", i), b, True, True) for i, b in enumerate(diffusion_model.joint_blocks)]
    if hasattr(diffusion_model, "double_blocks"):  # Flux
        return [(("double_block", i), b, False, not getattr(b, "flipped_img_txt", False))
                for i, b in enumerate(diffusion_model.double_blocks)]
    return []


def family_of(model):
    """"sd3" or "flux" by the model's class (comfy.model_base.SD3, Flux), else None. By class, not by the blocks a
    network has: Chroma, Chroma Radiance and Flux 2 subclass Flux with other blocks (no per-block modulation),
    HunyuanVideo and Hunyuan Image have double blocks too; none of them is what the joint-attention hooks know."""
    import comfy.model_base as model_base

    kind = type(model.model)
    return "sd3" if kind is model_base.SD3 else "flux" if kind is model_base.Flux else None


def patched_flow_model(model, options):
    """A clone of `model` with the joint-attention hooks for the guided blocks; `model` is not modified. options:
    Guided Edit Options' block_stride and checkpoint_blocks (nodes/guided_shell.py)."""
    blocks = _joint_blocks(model.model.diffusion_model)
    if not blocks:
        raise ValueError("this flow model has no joint-attention blocks pix2pix-zero knows: the guided edit supports "
                         "SD 3.x (MMDiT) and Flux")
    guided, loss_scale = guided_layers(blocks, options["block_stride"])
    run = _Run([key for key, *_ in guided])
    run.checkpoint = bool(options["checkpoint_blocks"])
    patch = getattr(model.model.diffusion_model, "patch_size", 2)
    run.patch_size = int(patch[-1] if isinstance(patch, (tuple, list)) else patch)
    run.loss_scale = loss_scale  # blocks / guided blocks (guided_shell.guided_layers)
    clone = model.clone()
    transformer_options = clone.model_options.setdefault("transformer_options", {})
    transformer_options[OVERRIDE_KEY] = _JointOverride(run, transformer_options.get(OVERRIDE_KEY))
    existing = transformer_options.get("patches_replace", {}).get("dit", {})
    for key, module, host_checkpoints, txt_first in blocks[:blocks.index(guided[-1]) + 1]:
        tag = _BlockTag(run, key, module, host_checkpoints, txt_first, existing.get(key),
                        guided=key in run.guided_blocks)
        clone.set_model_patch_replace(tag, "dit", *key)
    run.module = clone.model
    return clone, run


class _FlowDenoiser:
    """core.guidance's BranchDenoiser over ComfyUI: calc_cond_batch on the processed conds, one latent for all
    branches of a call (the carry rule makes it so)."""

    def __init__(self, guider, model_options, run):
        self.guider, self.model_options, self.run = guider, model_options, run

    def __call__(self, xs, sigma):
        names = list(xs)
        x = xs[names[0]]
        if any(xs[b] is not x for b in names):
            raise RuntimeError("the flow guided edit evaluates its branches at one latent per call")
        conds = [self.guider.conds[COND_KEYS[b]] for b in names]
        self.run.branch_of_flag = dict(enumerate(names))
        self.run.seen, self.run.pending = set(), []
        p = self.run.patch_size  # SD 3.x and Flux patchify 2 x 2, padding odd sides
        self.run.image_tokens = -(-x.shape[-2] // p) * -(-x.shape[-1] // p)
        timestep = torch.full((x.shape[0],), sigma, dtype=x.dtype, device=x.device)
        out = None
        try:
            out = comfy.samplers.calc_cond_batch(self.guider.inner_model, conds, x, timestep, self.model_options)
        except _MapsComplete:  # the gradient pass stopped after the last guided block: its maps are all it is for
            pass
        finally:
            self.run.branch_of_flag = {}
            pending, self.run.pending = self.run.pending, []
        for key, maps, branches, heads in pending:
            self.run.maps.observe_batch(key, maps, branches, heads)
        if out is None:
            return None
        return dict(zip(names, out))


@contextlib.contextmanager
def _gradient_context(run):
    """Around each gradient pass, forward and backward (checkpointed blocks recompute inside the backward): the
    weights as autograd can use them (common.gradient_pass_weights: normal-tensor aliases, quantized layers
    dequantized), and the host's fp8 errors explained. (Flux's RoPE needs nothing here: the gradient pass's double
    block applies it itself, flux_double_block_out_of_place.)"""
    with explained_gradient_errors(), gradient_pass_weights(run.module):
        yield


def _flow_sampler(run, settings, results, guider):
    def sample(model, x, sigmas, extra_args=None, callback=None, disable=None):
        denoise = _FlowDenoiser(guider, (extra_args or {}).get("model_options", {}), run)

        def on_step(step, x_edit, x_ref, x0, losses):
            comfy.model_management.throw_exception_if_processing_interrupted()
            log_map_loss(step, len(sigmas) - 1, losses)
            if callback is not None:
                callback({"i": step, "x": x_edit, "denoised": x0, "sigma": sigmas[step], "sigma_hat": sigmas[step]})

        comfy.model_management.throw_exception_if_processing_interrupted()
        # The gradient pass (forward and backward: checkpointed blocks recompute in the backward) needs the weights,
        # loaded as inference tensors, as normal-tensor aliases (no copy) for autograd to save them.
        result = guided_edit(denoise, run.maps, x, sigmas, mode="paper", rules=FLOW_RULES, callback=on_step,
                             grad_context=lambda: _gradient_context(run), **settings)
        results["reconstruction"] = guider.inner_model.process_latent_out(result.reconstruction.to(torch.float32))
        return result.edited

    return comfy.samplers.KSAMPLER(sample)


def _flow_sigmas(latent):
    info = latent.get(INVERSION_KEY)
    record = FlowSchedule.from_dict(info)
    if list(latent["samples"].shape) != list(info.get("shape", latent["samples"].shape)):
        raise ValueError("the inverted latent's size changed since its inversion: invert the latent again")
    return record.regeneration_sigmas(), record.steps


def flow_guided_edit_node(model, positive, inverted_latent, steps, cfg, lambda_xa, guidance, negative=None,
                          direction=None, direction_multiplier=1.0, edited_positive=None, options=None):
    """P2PZ_GuidedEdit's function for flow models (nodes/guided.py dispatches here)."""

    flow_model_sampling(model, "guided editing")
    family = family_of(model)
    if family is None:
        raise ValueError(f"this model is {type(model.model).__name__}: the guided edit on flow models supports SD 3.x "
                         "(SD 3.0, 3.5 Medium and Large) and Flux.1 (dev), not its variants with other blocks (Chroma, "
                         "Flux 2) or other flow models. Invert Latent works on it; the edit does not")
    options = guidance_options(options, family)
    samples = inverted_latent["samples"]
    check_latent(samples, channels=model.get_model_object("latent_format").latent_channels, what="inverted latent",
                 nan_causes=INVERSION_NAN_CAUSES)
    sigmas, recorded = _flow_sigmas(inverted_latent)
    check_steps(steps, recorded)
    if (direction is None) == (edited_positive is None):
        raise ValueError("connect either an edit direction or an edited_positive conditioning (exactly one)")
    if direction is not None:
        from .direction import edit_conditioning

        edited_positive = edit_conditioning(positive, direction, direction_multiplier)
    use_negative = family == "sd3"  # Flux is guidance-distilled: its embedded guidance, no negative pass
    params = getattr(model.model.diffusion_model, "params", None)
    if family == "flux" and params is not None and not getattr(params, "guidance_embed", True):
        # Flux.1-schnell (no guidance embedding) is distilled to sample in 1-4 steps; pix2pix-zero's inversion and
        # guidance assume a model that follows its ODE over many steps, which schnell was not trained to do.
        logging.warning("pix2pix-zero Guided Edit: this Flux model has no guidance embedding (Flux.1-schnell, "
                        "distilled for 1-4 steps); inversion and guidance over %d steps are untested on it and may "
                        "not reconstruct the image. Flux.1-dev is the tested model", steps)
    check_no_cfg_patches(model, use_negative and cfg != 1.0)
    if not use_negative and (cfg != 1.0 or negative is not None):
        logging.info("pix2pix-zero Guided Edit: Flux is guidance-distilled; both branches run once at the "
                     "conditioning's guidance value (FluxGuidance), cfg and negative are not used")
    negative_is_caption = negative is None or same_conditioning(negative, positive)
    negative = positive if negative is None else negative
    batch = samples.shape[0]
    for cond, what in ((positive, "positive"), (negative, "negative"), (edited_positive, "edited_positive")):
        check_plain_conditioning(cond, what)
        check_conditioning_batch(cond, batch, f"{what} conditioning")
    if edited_positive[0][0].shape[1] != positive[0][0].shape[1]:
        raise ValueError(f"edited_positive has {edited_positive[0][0].shape[1]} tokens but the caption has "
                         f"{positive[0][0].shape[1]}: their attention maps cannot be compared; edit the caption")
    if guidance != "paper":
        logging.info("pix2pix-zero Guided Edit: flow models always carry the guided edit latent (the paper's rule)")

    patched, run = patched_flow_model(model, options)
    settings = {"cfg": cfg, "lambda_xa": lambda_xa * run.loss_scale, "use_negative": use_negative,
                "negative_is_caption": negative_is_caption, "guided_steps": guided_steps(options, steps)}
    results = {}
    guider = GuidedEditGuider(patched, positive, negative, edited_positive, cfg if use_negative else 1.0)
    # KSAMPLER starts from (1 - s_top) * latent, the inverted x
    return run_guided_sampler(guider, _flow_sampler(run, settings, results, guider), patched, inverted_latent, samples,
                              sigmas, steps, results)
