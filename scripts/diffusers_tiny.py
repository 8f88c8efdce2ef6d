"""Tiny diffusers models with seeded random weights, and adapters into ComfyUI's denoiser convention (CI, no host)."""
from __future__ import annotations

import torch

from core import sigmas_from_alphas_cumprod

SD_BETAS = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000)


def tiny_unet(seed: int = 0, cross_attention_dim: int = 32, input_gain: float = 1.0):
    """An SD-shaped UNet2DConditionModel (2 resolutions, cross-attention) with seeded random weights.

    input_gain scales conv_in: a random network is extremely sensitive to its input, unlike a trained denoiser,
    and DDIM inversion's error grows with that sensitivity. input_gain=0.001 makes the predicted noise depend
    smoothly on the latent (still strongly on timestep and text), as a trained model's does; it also scales the
    output to a unit-like variance. Used where a test needs denoiser-like behaviour (round trips); parity tests
    use the raw network (input_gain=1).
    """
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=2,
        sample_size=8,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=cross_attention_dim,
        norm_num_groups=16,
    )
    if input_gain != 1.0:
        with torch.no_grad():
            unet.conv_in.weight.mul_(input_gain)
            unet.conv_out.weight.mul_(3.0)
            unet.conv_out.bias.mul_(3.0)
    return unet.eval()


def alphas_cumprod() -> torch.Tensor:
    from diffusers import DDIMScheduler

    return DDIMScheduler(**SD_BETAS).alphas_cumprod


def unet_denoiser(unet, context: torch.Tensor, prediction_type: str = "epsilon"):
    """Wrap a diffusers UNet as ComfyUI's k-diffusion denoiser: denoise(x, sigma) -> denoised, x in sigma space."""
    sigma_table = sigmas_from_alphas_cumprod(alphas_cumprod())
    log_table = sigma_table.log()

    @torch.no_grad()
    def denoise(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        s = sigma.view(-1, 1, 1, 1)
        t = (sigma.log()[:, None] - log_table[None, :]).abs().argmin(dim=1)
        x_in = x / (1 + s**2) ** 0.5
        out = unet(x_in, t, encoder_hidden_states=context.expand(x.shape[0], -1, -1)).sample
        if prediction_type == "epsilon":
            return x - out * s
        # v-prediction, as ComfyUI's V_PREDICTION.calculate_denoised with sigma_data 1
        return x / (s**2 + 1) - out * s / (s**2 + 1) ** 0.5

    denoise.sigma_table = sigma_table
    return denoise


def tiny_pix2pix_zero_pipeline(unet):
    """diffusers' StableDiffusionPix2PixZeroPipeline around `unet`, with SD's scheduler config (offline, no text
    encoder: tests pass prompt_embeds; a tiny VAE only because invert() decodes its result at the end)."""
    from diffusers import AutoencoderKL, DDIMInverseScheduler, DDIMScheduler
    from diffusers.pipelines.deprecated.stable_diffusion_variants.pipeline_stable_diffusion_pix2pix_zero import (
        StableDiffusionPix2PixZeroPipeline,
    )

    config = dict(SD_BETAS, clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    torch.manual_seed(0)
    vae = AutoencoderKL(
        block_out_channels=(8,),
        down_block_types=("DownEncoderBlock2D",),
        up_block_types=("UpDecoderBlock2D",),
        latent_channels=4,
        norm_num_groups=8,
    )
    pipe = StableDiffusionPix2PixZeroPipeline(
        vae=vae.to(unet.dtype),  # invert() casts the latent to the VAE's dtype: float64 tests need both in float64
        text_encoder=None,
        tokenizer=None,
        unet=unet,
        scheduler=DDIMScheduler(**config),
        inverse_scheduler=DDIMInverseScheduler(**config),
        feature_extractor=None,
        safety_checker=None,
        caption_generator=None,
        caption_processor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe
