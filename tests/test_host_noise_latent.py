"""P2PZ_NoiseLatent, the start of a synthetic edit: KSampler's noise for the same seed, at the first DDIM level,
and the guided sampler's reconstruction from it is the image a stock DDIM KSampler generates from that seed."""
import pytest
import torch

pytestmark = pytest.mark.host


@pytest.fixture(autouse=True)
def _pack_loaded(pack_nodes):
    return pack_nodes


def test_noise_latent_is_ksampler_noise_at_the_first_ddim_level(comfy, tiny_sd15_objects):
    from comfy.sample import prepare_noise

    model, _, _ = tiny_sd15_objects
    latent = comfy.call_node("P2PZ_NoiseLatent", model=model, width=64, height=48, batch_size=2, steps=10, seed=7)[0]
    info = latent["p2pz_inversion"]
    assert latent["samples"].shape == (2, 4, 6, 8) and info["steps"] == 10 and info["shape"] == [2, 4, 6, 8]
    sigma_t = info["levels"][-1]
    noise = prepare_noise(torch.zeros(2, 4, 6, 8), 7)
    assert torch.allclose(latent["samples"], noise * (1 + sigma_t**2) ** 0.5)
    again = comfy.call_node("P2PZ_NoiseLatent", model=model, width=64, height=48, batch_size=2, steps=10, seed=7)[0]
    assert torch.equal(again["samples"], latent["samples"])


def test_guided_reconstruction_from_noise_is_the_stock_generation(comfy, tiny_sd15_objects):
    model, clip, _ = tiny_sd15_objects
    prompt = comfy.call_node("CLIPTextEncode", clip=clip, text="a photo of a cat on a bench")[0]
    negative = comfy.call_node("CLIPTextEncode", clip=clip, text="")[0]
    steps, seed = 4, 3
    noise = comfy.call_node("P2PZ_NoiseLatent", model=model, width=64, height=64, batch_size=1, steps=steps,
                            seed=seed)[0]
    edited, reconstruction = comfy.call_node(
        "P2PZ_GuidedEdit", model=model, positive=prompt, negative=negative, inverted_latent=noise, steps=steps,
        cfg=5.0, lambda_xa=0.0, guidance="references", edited_positive=prompt)
    # The same start, stepped by stock DDIM (KSamplerAdvanced without added noise): only the last level differs,
    # sigma 0 there and alpha_bar[0]'s level (sigma 0.029) here, as in the references. That adds 0.029 times the last
    # predicted noise, which a random network under cfg 5 makes about 10: ~0.3, about 1 % of the latent's range.
    stock = comfy.call_node("KSamplerAdvanced", model=model, add_noise="disable", noise_seed=0, steps=steps,
                            cfg=5.0, sampler_name="ddim", scheduler="ddim_uniform", positive=prompt,
                            negative=negative, latent_image=noise, start_at_step=0, end_at_step=steps,
                            return_with_leftover_noise="disable")[0]
    scale = stock["samples"].abs().max()
    assert torch.allclose(reconstruction["samples"], stock["samples"], atol=2e-2 * scale), (
        (reconstruction["samples"] - stock["samples"]).abs().max(), scale)
    # Same math, other batching of the model calls: float32 rounding only.
    assert torch.allclose(edited["samples"], reconstruction["samples"], atol=1e-4 * scale)
