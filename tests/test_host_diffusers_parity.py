"""The node against diffusers' StableDiffusionPix2PixZeroPipeline.invert() on the SAME tiny weights: ComfyUI's tiny
SD 1.5-layout UNet is copied into a diffusers UNet2DConditionModel with ComfyUI's own key map
(comfy.utils.unet_to_diffusers), then both invert the same latent with the same caption embedding."""
import pytest
import torch
from fixtures import tiny_models
from tolerances import rounding_atol

pytestmark = pytest.mark.host


def _diffusers_twin(comfy_model):
    """A diffusers UNet with the ComfyUI tiny UNet's weights (layout of fixtures/tiny_models.TINY_UNET_CONFIG)."""
    import comfy.utils
    from diffusers import UNet2DConditionModel

    cfg = tiny_models.TINY_UNET_CONFIG
    unet = UNet2DConditionModel(
        sample_size=cfg["image_size"], in_channels=4, out_channels=4, layers_per_block=2,
        block_out_channels=tuple(cfg["model_channels"] * m for m in cfg["channel_mult"]),
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        cross_attention_dim=cfg["context_dim"], attention_head_dim=cfg["num_heads"], norm_num_groups=32,
    )
    key_map = comfy.utils.unet_to_diffusers(cfg)  # diffusers key -> ComfyUI key
    source = comfy_model.model.diffusion_model.state_dict()
    state = {k: source[key_map[k]].detach().clone().float() for k in unet.state_dict()}
    unet.load_state_dict(state, strict=True)
    return unet.eval()


@pytest.mark.parametrize("steps", [1, 2])
def test_inversion_matches_diffusers_on_shared_weights(comfy, tiny_sd15_objects, pack_nodes, steps):
    """Regularization off (its parity with diffusers, shift by shift, is a CI test of core). ComfyUI's CPU attention
    (sub-quadratic, chunked softmax) and diffusers' differ by float32 rounding in every UNet call; a raw random
    network amplifies that. Tolerance (tests/tolerances.py, rule 4): PER_EVALUATION x 2 x steps (one UNet call per step)
    times the change of diffusers' own result when its input latent is nudged by NUDGE of its size (its amplification,
    measured in this run), plus 8 float32 ulps. Only 1-2 steps: more steps amplify float32 rounding beyond what separates right from wrong here."""
    from fixtures.diffusers_tiny import tiny_pix2pix_zero_pipeline

    model, clip, vae = tiny_sd15_objects
    cond = comfy.call_node("CLIPTextEncode", clip=clip, text="a photo of a cat")[0]
    latent = {"samples": torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0)) * 2.0}

    # fixed_point_iters 0: diffusers' inversion is the paper's first-order one (the node's default solves each step)
    inverted, _ = comfy.call_node("P2PZ_InvertLatent", model=model, conditioning=cond, latent=latent, steps=steps,
                                  schedule="diffusers", lambda_ac=0.0, lambda_kl=0.0, reg_steps=5, ac_rolls=5, seed=0,
                                  fixed_point_iters=0)
    scale = model.get_model_object("latent_format").scale_factor
    ours = inverted["samples"] * scale  # ComfyUI's sigma space
    sigma_last = float(inverted["p2pz_inversion"]["levels"][-1])
    ours = ours / (1 + sigma_last**2) ** 0.5  # diffusers' x_T

    pipe = tiny_pix2pix_zero_pipeline(_diffusers_twin(model))

    def theirs(samples):
        with torch.no_grad():
            return pipe.invert(image=samples * scale, prompt_embeds=cond[0][0].float().clone(),
                               num_inference_steps=steps, lambda_auto_corr=0.0, lambda_kl=0.0,
                               output_type="latent").latents

    reference = theirs(latent["samples"])
    tol = rounding_atol(theirs, latent["samples"], reference, evaluations=steps)
    err = float((ours - reference).abs().max())
    print(f"max difference {err:.2e}, tolerance {tol:.2e} (rule 4)")
    assert err <= tol, f"max difference {err:.2e}, tolerance {tol:.2e} (rule 4)"
