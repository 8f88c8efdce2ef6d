"""Guided Edit's seam for UNet models (SD 1.x, 2.x, SDXL): pix2pix-zero's cross-attention-guided sampler.

The loop is core.guidance's; this module connects it to ComfyUI's sampling machinery on a CLONE of the MODEL:
- attn2 replace patches (every cross-attention layer, found by walking the diffusion model) compute the attention
  probabilities explicitly while maps are wanted and hand them to the run's AttentionMaps, split by ComfyUI's
  branch flags (`cond_or_uncond`); otherwise they call ComfyUI's optimized attention with the transformer options;
- an APPLY_MODEL wrapper (ComfyUI's patcher wrappers, under the pack's own key) lets one batched model call evaluate
  each CFG branch at its own latent (the references' two guided copies), again by branch flags;
- attn1 replace patches (where no other pack has one) run self-attention with ComfyUI's PyTorch (SDPA) attention
  in the gradient pass, whatever backend or `optimized_attention_override` the host uses (sage, flash and xformers
  have no autograd backward); the no-grad passes keep the host's attention, override included;
- the gradient pass runs with the weights swapped for normal-tensor aliases of themselves
  (core.inference_weights): ComfyUI loads weights as inference tensors, which autograd cannot save. No weight is
  copied, no weight patch is added (the clone keeps the MODEL's patch uuid: no re-patching, LoRAs included);
- a CFGGuider holding the conds "positive", "negative" and "edited" (so ComfyUI preprocesses all three) runs a
  custom KSAMPLER whose loop is core.guidance.guided_edit, evaluating conds with comfy.samplers.calc_cond_batch.
"""
import logging

import comfy.ldm.modules.attention as comfy_attention
import comfy.model_management
import comfy.patcher_extension
import comfy.samplers
import torch

from ..core.attention import AttentionMaps, explicit_attention
from ..core.guidance import GUIDANCE_MODES, generation_sigmas, guided_edit
from ..core.inversion import INVERSION_NAN_CAUSES, check_latent
from ..core.schedule import restore_schedule
from ..core.sigma_space import restate
from .attention_backends import (AUTOGRAD_BACKENDS, OVERRIDE_KEY, attn2_layers, backend_name, gradient_attention,
                                 no_grad_attention, self_attention)
from .common import (INVERSION_KEY, check_conditioning_batch, check_no_cfg_patches, check_plain_conditioning,
                     discrete_model_sampling, explained_gradient_errors, gradient_pass_weights, log_map_loss)
from .guided_shell import (COND_KEYS, GuidedEditGuider, check_steps, guidance_options, guided_layers, guided_steps,
                           run_guided_sampler, same_conditioning)


WRAPPER_KEY = "p2pz_guided_edit"  # the key of the pack's APPLY_MODEL wrapper on the run's clone

class _Run:
    """State of one guided sampling run, shared by its patches. Never copied: ModelPatcher.clone() deep-copies
    model_options, and the patches must keep talking to this one object."""

    def __init__(self):
        self.maps = AttentionMaps()
        self.branch_of_flag = {}  # index in the conds list given to calc_cond_batch -> branch name
        self.inputs = None  # {flag: latent} when the branches of one call have different latents
        self.module = None  # the torch module whose weights the gradient pass aliases (the clone's BaseModel)
        self.loss_scale = 1.0  # layers / guided layers (patched_model)
        self.function_wrapped = False  # another pack's model_function_wrapper runs around the model calls
        # A maps-only pass stops the model once it has observed these layers (set per model call; None: runs on)
        self.stop_when_seen = None
        self.seen = set()

    def __deepcopy__(self, memo):
        return self


class _MapsComplete(Exception):
    """Raised by the last cross-attention layer of a maps-only pass: the rest of the UNet cannot change the loss."""


class _Attn2Maps:
    """attn2 replace patch: explicit probabilities for the maps while they are wanted, else the fast path."""

    def __init__(self, run, key, previous=None, guided=True):
        self.run, self.key, self.previous, self.guided = run, key, previous, guided

    def __deepcopy__(self, memo):
        return self

    def __call__(self, q, k, v, extra_options):
        heads = extra_options["n_heads"]
        precision = comfy_attention.get_attn_precision(extra_options.get("attn_precision"), q.dtype)
        if self.guided and self.run.maps.wants_maps:
            flags = extra_options["cond_or_uncond"]
            out, probs = explicit_attention(q, k, v, heads, upcast=precision == torch.float32)
            if all(f in self.run.branch_of_flag for f in flags):
                self.run.maps.observe_batch(self.key, probs, [self.run.branch_of_flag[f] for f in flags], heads)
                stop = self.run.stop_when_seen
                if stop is not None:
                    self.run.seen.add(self.key)
                    if self.run.seen >= stop:  # every map of the loss is taken: skip the rest of the forward
                        raise _MapsComplete()
            if self.previous is None:
                return out
        if self.previous is not None:  # another pack's replace on this layer keeps producing the output
            return self.previous(q, k, v, extra_options)
        if torch.is_grad_enabled():  # not reached by the guided loop (maps are wanted there); kept safe anyway
            return gradient_attention(q, k, v, extra_options)
        return no_grad_attention(q, k, v, extra_options)


class _BranchInputs:
    """ComfyUI's APPLY_MODEL wrapper (a patcher wrapper under the pack's own key): gives each branch chunk of a
    batched call its own latent. Other packs' wrappers and model_function_wrapper keep running around it."""

    def __init__(self, run):
        self.run = run

    def __deepcopy__(self, memo):
        return self

    def __call__(self, executor, x, t, c_concat, c_crossattn, control, transformer_options, **kwargs):
        inputs = self.run.inputs
        if inputs is not None:
            x = torch.cat([inputs[f] for f in transformer_options["cond_or_uncond"]])
        maps = self.run.maps
        # A maps-only pass (the gradient pass: only its map loss is used) ends at the last cross-attention layer
        # the reference recorded: the rest of the UNet would cost forward time and the memory of its saved
        # activations for nothing. Not when another pack wraps the model call, which may expect the model's whole
        # run (the stop is an exception through its code).
        stop = (maps.maps_only and maps.mode == "compare" and not self.run.function_wrapped
                and not _other_wrappers(transformer_options))
        self.run.stop_when_seen = maps.reference_layers if stop else None
        self.run.seen = set()
        args = (x, t, c_concat, c_crossattn, control, transformer_options)
        try:
            if torch.is_grad_enabled() and self.run.module is not None:
                # The gradient pass: autograd must save weights, which ComfyUI loaded as inference tensors. Aliases
                # of them (no copy) stand in for this call only; the no-grad passes use the weights as they are.
                with gradient_pass_weights(self.run.module):
                    return executor(*args, **kwargs)
            return executor(*args, **kwargs)
        except _MapsComplete:
            # Its maps are in the loss; the output is never read (maps_only), a placeholder of the right shape.
            return torch.zeros_like(x)
        finally:
            self.run.stop_when_seen, self.run.seen = None, set()


def _other_wrappers(transformer_options):
    """Whether another pack's APPLY_MODEL or DIFFUSION_MODEL wrapper runs in this model call."""
    wrappers = transformer_options.get("wrappers", {})
    kinds = (comfy.patcher_extension.WrappersMP.APPLY_MODEL, comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL)
    return any(key != WRAPPER_KEY and found for kind in kinds for key, found in wrappers.get(kind, {}).items())


def patched_model(model, run, block_stride=1):
    """A clone of `model` with the guidance patches; `model` itself is not modified. block_stride N: the maps of
    every N-th cross-attention layer are guided (run.loss_scale: layers / guided layers, see unet_guided_edit)."""
    layers = attn2_layers(model.model.diffusion_model)
    if not layers:
        raise ValueError("this model has no cross-attention (attn2) layers in a UNet: pix2pix-zero needs an SD 1.x, "
                         "SD 2.x or SDXL model")
    guided, run.loss_scale = guided_layers(layers, block_stride)
    guided = set(guided)
    clone = model.clone()
    transformer_options = clone.model_options.get("transformer_options", {})
    existing = transformer_options.get("patches_replace", {}).get("attn2", {})
    for key in layers:
        previous = existing.get(key, existing.get(key[:2]))
        # every layer is patched (the unguided ones still need an attention with a backward in the gradient pass)
        clone.set_model_attn2_replace(_Attn2Maps(run, key, previous, guided=key in guided), *key)
    # The guided step backpropagates through every self-attention layer (see self_attention). Only on this clone,
    # and never over another pack's attn1 patch (its attention is then what the gradient goes through).
    existing1 = transformer_options.get("patches_replace", {}).get("attn1", {})
    for key in layers:
        if key not in existing1 and key[:2] not in existing1:
            clone.set_model_attn1_replace(self_attention, *key)
    backend = backend_name(comfy_attention.optimized_attention)
    if backend not in AUTOGRAD_BACKENDS or OVERRIDE_KEY in transformer_options:
        logging.info("pix2pix-zero Guided Edit: the gradient pass uses PyTorch attention (attention backend %s%s has "
                     "no usable backward)", backend or comfy_attention.optimized_attention,
                     " with an optimized_attention_override" if OVERRIDE_KEY in transformer_options else "")
    clone.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.APPLY_MODEL, WRAPPER_KEY, _BranchInputs(run))
    run.module = clone.model
    return clone


class _BranchDenoiser:
    """core.guidance's BranchDenoiser over ComfyUI: calc_cond_batch on the processed conds of each branch."""

    def __init__(self, guider, model_options, run):
        self.guider, self.model_options, self.run = guider, model_options, run

    def __call__(self, xs, sigma):
        names = list(xs)
        first = xs[names[0]]
        conds = [self.guider.conds[COND_KEYS[b]] for b in names]
        self.run.branch_of_flag = dict(enumerate(names))
        self.run.inputs = None if all(xs[b] is first for b in names) else {i: xs[b] for i, b in enumerate(names)}
        self.run.function_wrapped = "model_function_wrapper" in self.model_options
        timestep = torch.full((first.shape[0],), sigma, dtype=first.dtype, device=first.device)
        try:
            out = comfy.samplers.calc_cond_batch(self.guider.inner_model, conds, first, timestep, self.model_options)
        finally:
            self.run.branch_of_flag, self.run.inputs = {}, None
        return dict(zip(names, out))


def _guided_sampler(run, settings, start_level, results, guider):
    """A ComfyUI SAMPLER whose loop is core.guidance.guided_edit (sigmas: the references' DDIM levels)."""

    def sample_guided(model, x, sigmas, extra_args=None, callback=None, disable=None):
        denoise = _BranchDenoiser(guider, (extra_args or {}).get("model_options", {}), run)
        levels = [float(s) for s in sigmas]

        def on_step(step, x_edit, x_ref, x0, losses):
            # Server runs check interruption in the progress hook; in-process runs only here.
            comfy.model_management.throw_exception_if_processing_interrupted()
            log_map_loss(step, len(levels) - 1, losses)
            if callback is not None:
                callback({"i": step, "x": x_edit, "denoised": x0, "sigma": sigmas[step], "sigma_hat": sigmas[step]})

        comfy.model_management.throw_exception_if_processing_interrupted()
        x = restate(x, start_level, levels[0])  # the inverted DDIM sample x_t, written at the first level
        result = guided_edit(denoise, run.maps, x, sigmas, callback=on_step, grad_context=explained_gradient_errors,
                             **settings)
        results["reconstruction"] = guider.inner_model.process_latent_out(result.reconstruction.to(torch.float32))
        return result.edited

    return comfy.samplers.KSAMPLER(sample_guided)


def _check_model(model):
    sampling = discrete_model_sampling(model, "editing")
    layers = attn2_layers(model.model.diffusion_model)
    if not layers:
        raise ValueError("this model has no cross-attention (attn2) layers in a UNet: pix2pix-zero needs an SD 1.x, "
                         "SD 2.x or SDXL model")
    return sampling, next(iter(layers.values())).to_k.in_features


def _check_conditioning(conditioning, what, width, batch):
    check_plain_conditioning(conditioning, what)
    tensor = conditioning[0][0]
    if tensor.shape[-1] != width:
        raise ValueError(
            f"the {what} conditioning is {tensor.shape[-1]} wide but this model's cross-attention expects "
            f"{width}: encode it with the CLIP of the same checkpoint"
        )
    check_conditioning_batch(conditioning, batch, f"{what} conditioning")


def _schedule_of(latent, model_sampling, steps):
    """(generation sigmas, level the inverted latent is at, DDIM steps). A latent carrying its inversion record
    has its steps checked against the widget (check_steps) and its schedule against this model; a latent made
    otherwise uses `steps`."""
    table = model_sampling.sigmas
    info = latent.get(INVERSION_KEY)
    if info is None:  # a latent inverted otherwise (e.g. stock FlipSigmas + ddim_uniform): at the first level
        sigmas = generation_sigmas(table, steps)
        return sigmas, float(sigmas[0]), steps
    schedule = restore_schedule(info, table, shape=latent["samples"].shape)
    check_steps(steps, schedule.ddim_steps)
    return generation_sigmas(table, schedule.ddim_steps), float(schedule.levels[-1]), schedule.ddim_steps


def unet_guided_edit(model, positive, inverted_latent, steps, cfg, lambda_xa, guidance, negative=None,
                     direction=None, direction_multiplier=1.0, edited_positive=None, options=None):
    """P2PZ_GuidedEdit for SD 1.x / 2.x / SDXL (nodes/guided.py dispatches here)."""
    options = guidance_options(options, "unet")
    check_no_cfg_patches(model, cfg != 1.0)
    if guidance not in GUIDANCE_MODES:
        raise ValueError(f"unknown guidance {guidance!r}; choose one of {', '.join(GUIDANCE_MODES)}")
    model_sampling, width = _check_model(model)
    samples = inverted_latent["samples"]
    check_latent(samples, channels=model.get_model_object("latent_format").latent_channels,
                 what="inverted latent", nan_causes=INVERSION_NAN_CAUSES)
    sigmas, start_level, steps = _schedule_of(inverted_latent, model_sampling, steps)

    if (direction is None) == (edited_positive is None):
        raise ValueError("connect either an edit direction or an edited_positive conditioning (exactly one)")
    if direction is not None:
        if direction.width != width:
            raise ValueError(
                f"the edit direction {direction.name!r} is {direction.width} wide but this model's "
                f"cross-attention expects {width}: build the direction with the CLIP of this checkpoint"
            )
        from .direction import edit_conditioning

        edited_positive = edit_conditioning(positive, direction, direction_multiplier)
    negative_is_caption = negative is None or same_conditioning(negative, positive)
    negative = positive if negative is None else negative
    batch = samples.shape[0]
    for cond, what in ((positive, "positive"), (negative, "negative"), (edited_positive, "edited_positive")):
        _check_conditioning(cond, what, width, batch)
    if edited_positive[0][0].shape[1] != positive[0][0].shape[1]:
        raise ValueError(
            f"edited_positive has {edited_positive[0][0].shape[1]} tokens but the caption has "
            f"{positive[0][0].shape[1]}: their cross-attention maps cannot be compared; edit the caption itself"
        )

    run = _Run()
    patched = patched_model(model, run, options["block_stride"])
    settings = {"cfg": cfg, "lambda_xa": lambda_xa * run.loss_scale, "mode": guidance,
                "negative_is_caption": negative_is_caption, "guided_steps": guided_steps(options, steps)}
    results = {}
    guider = GuidedEditGuider(patched, positive, negative, edited_positive, cfg)
    sampler = _guided_sampler(run, settings, start_level, results, guider)
    return run_guided_sampler(guider, sampler, patched, inverted_latent, samples, sigmas, steps, results)
