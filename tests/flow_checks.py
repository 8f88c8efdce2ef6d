"""Shared pieces of the SD 3.x / Flux host tests (test_host_mmdit.py, test_host_mmdit_guidance.py)."""
import torch


def smooth_latent(batch=1, size=8, seed=0):
    """A smooth random image latent [B, 16, size, size] in VAE-latent units (what VAEEncode gives)."""
    g = torch.Generator().manual_seed(seed)
    low = torch.randn(batch, 16, size // 2, size // 2, generator=g)
    return {"samples": torch.nn.functional.interpolate(low, size=(size, size), mode="bilinear")}


def check_model_untouched(comfy, model, cond, latent, use):
    """use() (the pack's nodes on `model`) leaves the MODEL as it was: its options, no patches, its weights, and the
    stock KSampler gives the same image before and after."""

    def ksampler():
        return comfy.call_node("KSampler", model=model, seed=3, steps=3, cfg=2.0, sampler_name="euler",
                               scheduler="simple", positive=cond, negative=cond, latent_image=latent,
                               denoise=1.0)[0]["samples"]

    options_before = repr(model.model_options)
    weights = {k: v.clone() for k, v in model.model.state_dict().items()}
    before = ksampler()
    use()
    after = ksampler()
    assert torch.equal(before, after)
    assert repr(model.model_options) == options_before and not model.patches
    assert all(torch.equal(v, weights[k]) for k, v in model.model.state_dict().items())
