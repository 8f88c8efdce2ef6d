"""P2PZ_InvertLatent: pix2pix-zero's regularized DDIM inversion as a ComfyUI node."""
import torch

import comfy.model_management
import comfy.samplers
import comfy.utils
import latent_preview

from ..core import SCHEDULES, check_latent, invert_flow_latent, invert_latent, inversion_schedule
from ..core.flow_space import flow_levels
from ..core.inversion import MIN_LATENT, check_inverted
from ..core.schedule import FlowSchedule
from ..core.ode import denoised_from_slope
from ..core.sigma_space import start_noise
from .common import (CATEGORY, INVERSION_KEY, SEED_INPUT, check_conditioning_batch, discrete_model_sampling,
                     flow_model_sampling, is_flow_model, warn_if_large)
from .attention_backends import with_fast_attention


def _core_sampler(invert, denoised_of):
    """A ComfyUI SAMPLER whose loop is a core inversion (sigmas are the ascending levels it walks):
    ``invert(denoise, x, on_step)`` runs it; ``denoised_of(step, x, out)`` turns what its step callback reports into
    the denoised latent ComfyUI's previews show. Interruption is checked every step: server runs check it in the
    progress hook, in-process runs only here."""

    def sample_inversion(model, x, sigmas, extra_args=None, callback=None, disable=None):
        extra_args = extra_args or {}

        def denoise(x_in, sigma):
            return model(x_in, sigma, **extra_args)

        def on_step(step, x_step, out):
            comfy.model_management.throw_exception_if_processing_interrupted()
            if callback is not None:
                callback({"i": step, "x": x_step, "denoised": denoised_of(step, x_step, out),
                          "sigma": sigmas[step + 1], "sigma_hat": sigmas[step + 1]})

        return invert(denoise, x, on_step)

    return comfy.samplers.KSAMPLER(sample_inversion)


def _inversion_sampler(schedule, generator, reg):
    """The DDIM inversion as a SAMPLER; its steps report the predicted noise."""
    return _core_sampler(
        lambda denoise, x, on_step: invert_latent(denoise, x, schedule, generator=generator, callback=on_step, **reg),
        lambda step, x, eps: denoised_from_slope(x, eps, float(schedule.levels[step + 1])))


def _flow_inversion_sampler(levels, generator, reg):
    """The flow inversion as a SAMPLER; its steps report the denoised latent. ComfyUI's KSAMPLER around it starts
    from the clean latent (noise_scaling at sigma 0) and returns x / (1 - s_top), its LATENT convention for a noisy
    flow latent (CONST.inverse_noise_scaling), which SamplerCustom undoes on the way back."""
    return _core_sampler(
        lambda denoise, x, on_step: invert_flow_latent(denoise, x, levels, generator=generator, callback=on_step,
                                                       **reg),
        lambda step, x, x0: x0)


def _run_inversion(model, conditioning, samples, sampler, sigmas, steps, seed):
    # cfg 1: only the caption is evaluated, as the references; SDPA where ComfyUI chose a slow CPU attention
    guider = comfy.samplers.CFGGuider(with_fast_attention(model))
    guider.inner_set_conds({"positive": conditioning})
    callback = latent_preview.prepare_callback(model, steps)
    return guider.sample(
        torch.zeros_like(samples),  # no noise is added: the inversion starts from the clean latent
        samples,
        sampler,
        sigmas,  # ascending: the sampler walks them upwards
        callback=callback,
        disable_pbar=not comfy.utils.PROGRESS_BAR_ENABLED,
        seed=seed,
    )


FLOW_SCHEDULER = "simple"
# Fixed-point iterations per inversion step (core.inversion.invert_latent), chosen on the learned world
# (bench/README.md, "Exact inversion" and "Edit quality on the world"): at the default 50 steps one iteration makes
# the round trip through the stock sampler 5.8-7,000x closer on every model measured (regularization off); the
# world's SD 1.x edit table shows no loss against the paper's first-order inversion for 10 % more model calls, its
# SD 3.x table more structure kept for one edit in 16 less accurate. 0 is the paper's (and diffusers') inversion.
DEFAULT_FIXED_POINT_ITERS = 1


class InvertLatent:
    DESCRIPTION = (
        "pix2pix-zero's regularized DDIM inversion: turns an image latent into the noise that regenerates it, "
        "nudging the predicted noise of every step towards i.i.d. Gaussian so it stays editable. Regenerate with "
        "SamplerCustom (add_noise off, cfg 1, sampler ddim or euler, the regeneration_sigmas output), or with "
        "KSamplerAdvanced (add_noise disable, ddim + ddim_uniform, the same steps, cfg 1) when steps divides 1000. "
        "SD 3.x and Flux models are inverted along the Euler ODE of their own sigma schedule; regenerate with "
        "SamplerCustom (euler, cfg 1, add_noise off, regeneration_sigmas)."
    )
    CATEGORY = CATEGORY
    FUNCTION = "invert"
    RETURN_TYPES = ("LATENT", "SIGMAS")
    RETURN_NAMES = ("inverted_latent", "regeneration_sigmas")
    OUTPUT_TOOLTIPS = (
        "The noisy latent at the last inversion step, with the step schedule attached for the pix2pix-zero sampler.",
        "Descending sigmas that undo this inversion with a deterministic sampler (ddim/euler, cfg 1, no added noise).",
    )

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("MODEL", {"tooltip": "SD 1.x, SD 2.x (incl. v-prediction), SDXL, or a flow-matching model (SD 3.x, Flux: inverted along the Euler ODE). It is not modified."}),
                "conditioning": ("CONDITIONING", {"tooltip": "The image's caption, encoded with CLIPTextEncode (e.g. from the BLIP caption). No CFG is used while inverting."}),
                "latent": ("LATENT", {"tooltip": "The image encoded with VAEEncode. Batches invert image by image, each as if alone."}),
                "steps": ("INT", {"default": 50, "min": 1, "max": 500, "tooltip": "DDIM steps. 50 as the references; the editing sampler must use the same. Prefer a divisor of 1000 (20, 25, 50, 100)."}),
                "schedule": (list(SCHEDULES), {"default": "diffusers", "tooltip": "diffusers: all steps (diffusers' invert()). authors: the pix2pix-zero repository's variant, which skips the first and last step (steps - 2 model calls)."}),
                "lambda_ac": ("FLOAT", {"default": 20.0, "min": 0.0, "max": 200.0, "step": 0.5, "tooltip": "Strength of the auto-correlation regularization (20 in the paper). 0 turns it off."}),
                "lambda_kl": ("FLOAT", {"default": 20.0, "min": 0.0, "max": 200.0, "step": 0.5, "tooltip": "Strength of the KL regularization towards mean 0, variance 1 (20 in the paper). 0 turns it off."}),
                "reg_steps": ("INT", {"default": 5, "min": 0, "max": 50, "tooltip": "Regularization iterations per inversion step (5). 0 gives plain DDIM inversion."}),
                "ac_rolls": ("INT", {"default": 5, "min": 0, "max": 50, "tooltip": "Auto-correlation gradient steps (each with fresh random shifts) per iteration (5)."}),
                "seed": SEED_INPUT,
            },
            # optional and last, so workflows and API prompts saved before it existed still load (they get the
            # default, 1 since 2026-12-07, 0 before: docs/nodes.md says so)
            "optional": {
                "fixed_point_iters": ("INT", {"default": DEFAULT_FIXED_POINT_ITERS, "min": 0, "max": 10, "tooltip": "1 (default): solve each inversion step as the exact inverse of the sampler's step, with one fixed-point iteration (one more model call per step): with the regularization off, the regeneration lands about 6x or more closer to the image at 50 steps. 2-3: closer still at fewer steps (each one more call per step). 0: the paper's first-order inversion (one call per step, as diffusers), which only approximates the sampler's step. Measurements: bench/README.md, Exact inversion."}),
            },
        }

    def invert(self, model, conditioning, latent, steps, schedule, lambda_ac, lambda_kl, reg_steps, ac_rolls, seed,
               fixed_point_iters=None):
        if fixed_point_iters is None:
            fixed_point_iters = DEFAULT_FIXED_POINT_ITERS
        if isinstance(latent.get("samples"), torch.Tensor) and latent["samples"].ndim == 4:
            warn_if_large(latent["samples"], model, "Invert Latent")
        if is_flow_model(model):
            return self._invert_flow(model, conditioning, latent, steps, schedule, seed,
                                     dict(lambda_ac=lambda_ac, lambda_kl=lambda_kl, num_reg_steps=reg_steps,
                                          num_ac_rolls=ac_rolls, fixed_point_iters=fixed_point_iters))
        model_sampling = discrete_model_sampling(model, "inversion")
        samples = latent["samples"]
        channels = model.get_model_object("latent_format").latent_channels
        check_latent(samples, channels=channels, what="latent to invert")
        check_conditioning_batch(conditioning, samples.shape[0], "caption conditioning")

        inv_schedule = inversion_schedule(model_sampling.sigmas, steps, schedule)
        generator = torch.Generator(device="cpu").manual_seed(seed)
        reg = dict(lambda_ac=lambda_ac, lambda_kl=lambda_kl, num_reg_steps=reg_steps, num_ac_rolls=ac_rolls,
                   fixed_point_iters=fixed_point_iters)
        inverted = _run_inversion(model, conditioning, samples, _inversion_sampler(inv_schedule, generator, reg),
                                  inv_schedule.levels, inv_schedule.steps, seed)
        check_inverted(inverted)
        out = latent.copy()
        out["samples"] = inverted.to(comfy.model_management.intermediate_device())
        out[INVERSION_KEY] = dict(inv_schedule.to_dict(), shape=list(samples.shape), seed=seed,
                                  fixed_point_iters=fixed_point_iters)
        return (out, inv_schedule.regeneration_sigmas())

    def _invert_flow(self, model, conditioning, latent, steps, schedule, seed, reg):
        """SD 3.x / Flux: the regularized inverse Euler ODE along the model's own schedule (core.flow_space)."""
        model_sampling = flow_model_sampling(model, "inversion")
        if schedule != "diffusers":
            raise ValueError(f"the {schedule!r} schedule is DDIM's (SD 1.x/2.x/SDXL); this is a flow-matching model, "
                             "which inverts along ComfyUI's 'simple' sigmas of the model: set schedule to 'diffusers'")
        samples = latent["samples"]
        channels = model.get_model_object("latent_format").latent_channels
        check_latent(samples, channels=channels, what="latent to invert")
        check_conditioning_batch(conditioning, samples.shape[0], "caption conditioning")
        # ComfyUI's "simple" scheduler (the one SD 3.x and Flux workflows use) for steps + 1 steps, with pure noise
        # (sigma 1, where no LATENT exists) dropped: `steps` steps of the model's own schedule, its shift included
        # (ModelSamplingSD3/ModelSamplingFlux patches apply). Not a widget yet: a new widget would shift the
        # widgets_values of every saved workflow using this node.
        levels = flow_levels(comfy.samplers.calculate_sigmas(model_sampling, FLOW_SCHEDULER, steps + 1), steps)
        generator = torch.Generator(device="cpu").manual_seed(seed)
        inverted = _run_inversion(model, conditioning, samples,
                                  _flow_inversion_sampler(levels, generator, reg), levels, steps, seed)
        check_inverted(inverted)
        out = latent.copy()
        out["samples"] = inverted.to(comfy.model_management.intermediate_device())
        record = FlowSchedule(levels, FLOW_SCHEDULER)
        out[INVERSION_KEY] = dict(record.to_dict(), shape=list(samples.shape), seed=seed,
                                  fixed_point_iters=reg["fixed_point_iters"])
        return (out, record.regeneration_sigmas())


class NoiseLatent:
    DESCRIPTION = (
        "The starting noise of a synthetic edit (an image generated from a prompt, then edited): seeded Gaussian "
        "noise at the first DDIM level, carrying the step schedule like an inverted latent. The guided sampler's "
        "reconstruction output is then the generated image, and its edited output the edit of it."
    )
    CATEGORY = CATEGORY
    FUNCTION = "noise"
    RETURN_TYPES = ("LATENT",)
    RETURN_NAMES = ("noise_latent",)
    OUTPUT_TOOLTIPS = ("x_T for the pix2pix-zero guided sampler, in VAE-latent units like any LATENT; it carries its steps to Guided Edit.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("MODEL", {"tooltip": "The model that will generate and edit (for its noise schedule and latent channels)."}),
                "width": ("INT", {"default": 512, "min": 8 * MIN_LATENT, "max": 8192, "step": 8, "tooltip": "Image width in pixels (512 for SD 1.x, 768 for SD 2.x-v, 1024 for SDXL)."}),
                "height": ("INT", {"default": 512, "min": 8 * MIN_LATENT, "max": 8192, "step": 8, "tooltip": "Image height in pixels."}),
                "batch_size": ("INT", {"default": 1, "min": 1, "max": 64, "tooltip": "Images per batch, each with its own noise."}),
                "steps": ("INT", {"default": 50, "min": 1, "max": 500, "tooltip": "DDIM steps of the guided sampler (50 as the references)."}),
                "seed": SEED_INPUT,
            }
        }

    def noise(self, model, width, height, batch_size, steps, seed):
        model_sampling = discrete_model_sampling(model, "synthetic editing")
        channels = model.get_model_object("latent_format").latent_channels
        schedule = inversion_schedule(model_sampling.sigmas, steps, "diffusers")
        # The same draw as ComfyUI's prepare_noise (KSampler) for this seed, from a private generator.
        generator = torch.Generator(device="cpu").manual_seed(seed)
        shape = [batch_size, channels, height // 8, width // 8]
        noise = torch.randn(shape, generator=generator, dtype=torch.float32)
        # DDIM's x_T in the model's units. A LATENT holds VAE-latent units: samplers (the guided one included)
        # apply the latent format's process_in to a non-zero latent, so hand out process_out of it.
        x_T = start_noise(noise, float(schedule.levels[-1]))
        samples = model.get_model_object("latent_format").process_out(x_T)
        info = dict(schedule.to_dict(), shape=shape, seed=seed)
        return ({"samples": samples.to(comfy.model_management.intermediate_device()), INVERSION_KEY: info},)


NODE_CLASS_MAPPINGS = {"P2PZ_InvertLatent": InvertLatent, "P2PZ_NoiseLatent": NoiseLatent}
NODE_DISPLAY_NAME_MAPPINGS = {
    "P2PZ_InvertLatent": "Invert Latent (pix2pix-zero regularized DDIM)",
    "P2PZ_NoiseLatent": "Noise Latent for a Synthetic Edit (pix2pix-zero)",
}
