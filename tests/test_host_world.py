"""world/: the TAESD the world trains is ComfyUI's TAESD (same keys, same function, the latent units world.taesd
documents), and the judge and the SD 1.x UNet build (small, random weights; fast)."""
import pytest
import torch
from tolerances import network_rounding_atol, unit_roundoff

pytestmark = pytest.mark.host


@pytest.mark.parametrize("fmt", ["sd15", "sd3"])
def test_world_taesd_is_comfyuis_taesd(comfy, fmt):
    import comfy.sd
    import comfy.taesd.taesd
    from world import taesd as T

    factor, shift, channels = T.LATENT_FORMATS[fmt]
    torch.manual_seed(0)
    ours = T.TAESD(channels, skip=T.LITE_SKIP)
    with torch.no_grad():  # a non-trivial normalisation: raw latents with mean 0.3 and std 1.7
        ours.vae_scale.fill_(factor * 1.7)
        ours.vae_shift.fill_(shift - 0.3 / (factor * 1.7))
    sd = ours.state_dict()
    theirs = comfy.taesd.taesd.TAESD(latent_channels=channels)
    theirs.load_state_dict(sd, strict=True)  # every key, no extras

    vae = comfy.sd.VAE(sd=dict(sd))
    assert isinstance(vae.first_stage_model, comfy.taesd.taesd.TAESD) and vae.latent_channels == channels
    x = torch.rand(2, 64, 64, 3)
    with torch.inference_mode():
        lat = vae.encode(x)                                          # VAE-latent units, [2, C, 8, 8]
        dec = vae.decode(lat)
    x_nchw = x.permute(0, 3, 1, 2)
    with torch.no_grad():
        ms = T.to_model_space(ours, x_nchw, fmt)
        raw = ours.encode_raw(x_nchw)
        back = T.from_model_space(ours, ms, fmt).clamp(0, 1)
    import comfy.latent_formats
    latent_format = {"sd15": comfy.latent_formats.SD15, "sd3": comfy.latent_formats.SD3}[fmt]()
    assert lat.shape == (2, channels, 8, 8)
    # the same network run by ComfyUI and by world.taesd (other kernels or batching): rule 3 of tests/tolerances.py,
    # the network's reduction chain, plus a few float32 operations of the latent format's scale and shift
    u = unit_roundoff()
    tol = network_rounding_atol(ours, 0, ms) + 8 * u * float(ms.abs().max() + 1)
    assert torch.allclose(latent_format.process_in(lat.float()), ms, rtol=0, atol=tol)
    # model space is the raw encoder output standardised by the stored statistics: a few float32 operations (rule 3)
    assert torch.allclose(ms, (raw - 0.3) / 1.7, rtol=0, atol=8 * u * float(raw.abs().max() + 1))
    tol = network_rounding_atol(ours, 0, back) + 8 * u
    assert torch.allclose(dec.float().reshape(back.permute(0, 2, 3, 1).shape), back.permute(0, 2, 3, 1), rtol=0,
                          atol=tol)


def test_world_judge_and_unet_build(comfy):
    from world import judge as J, render as R, sd15

    j = J.Judge(8).eval()
    b = R.batch(range(2), "val")
    out = J.predict(j, b["images"])
    assert out["mask"].shape == (2, 64, 64) and len(out["shape"]) == 2
    model = sd15.build_model(sd15.UNET_CONFIGS["full"], 0)
    net = model.diffusion_model
    with torch.no_grad():
        y = net(torch.randn(1, 4, 8, 8), torch.tensor([500.0]), context=torch.randn(1, 77, 768))
    assert y.shape == (1, 4, 8, 8)
    # the text encoder: layers >= ACTIVE_TEXT_LAYERS are identities
    te = sd15.text_encoder_state_dict(1)
    k = f"clip_l.transformer.text_model.encoder.layers.{sd15.ACTIVE_TEXT_LAYERS}.mlp.fc2.weight"
    assert not te[k].any()
    assert te["clip_l.transformer.text_model.encoder.layers.0.mlp.fc2.weight"].any()
