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


def test_world_sd3_checkpoint_is_stock_sd3(comfy, tmp_path):
    """world.sd3: the 4-channel TAESD placed in SD 3.x's 16 channels gives the same images and model-space latents;
    the exported file is detected by stock loading as SD3 with CLIP-L as its only text encoder and a 16-channel TAESD,
    its MMDiT computes what the trainer's did, and CLIPTextEncode of it gives the trainer's caption embeddings."""
    import comfy.sd
    import comfy.taesd.taesd
    from world import sd3, sd15, taesd as T

    u = unit_roundoff()
    torch.manual_seed(0)
    small = T.TAESD(4, skip=T.LITE_SKIP)
    with torch.no_grad():  # a non-trivial normalisation, as world.taesd.finish_taesd sets one
        small.vae_scale.fill_(0.18215 * 1.7)
        small.vae_shift.fill_(-0.3 / (0.18215 * 1.7))
    big = sd3.lift_taesd(small)
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        ms4, ms16 = T.to_model_space(small, x, "sd15"), T.to_model_space(big, x, "sd3")
        img4 = T.from_model_space(small, ms4, "sd15")
        img16 = T.from_model_space(big, ms16, "sd3")
    assert ms16.shape == (2, 16, 8, 8)
    # the same convolutions with 12 more zero channels (other kernels may sum in another order), plus the two
    # formats' scale and shift in float32: rule 3 of tests/tolerances.py
    tol = network_rounding_atol(small, 0, ms4) + 16 * u * float(ms4.abs().max() + 1)
    assert torch.allclose(ms16[:, :4], ms4, rtol=0, atol=tol)
    # channels 4-15 hold the raw latent 0, standardised: (0 - mean) / std = -0.3 / 1.7
    assert torch.allclose(ms16[:, 4:], torch.full_like(ms16[:, 4:], -0.3 / 1.7), rtol=0, atol=16 * u)
    tol = network_rounding_atol(big, 0, img4) + 16 * u * float(ms4.abs().max() + 1)
    assert torch.allclose(img16, img4, rtol=0, atol=tol)

    te_sd = sd15.text_encoder_state_dict(1)
    model = sd3.build_model(sd3.MMDIT_CONFIGS["reduced"], 0)
    state = {k: v.clone() for k, v in model.diffusion_model.state_dict().items()}
    with torch.no_grad():  # the zero-initialised output layer would make any comparison trivial
        for v in state.values():
            if v.is_floating_point():
                v.add_(0.02 * torch.randn(v.shape, generator=torch.Generator().manual_seed(v.numel())))
    path = sd3.export_checkpoint(model, state, te_sd, big, str(tmp_path / "w.safetensors"), {"format": "test"})
    with torch.inference_mode():
        patcher, clip, vae, _ = comfy.sd.load_checkpoint_guess_config(path, output_vae=True, output_clip=True)[:4]
    assert type(patcher.model.model_config).__name__ == "SD3"
    assert isinstance(vae.first_stage_model, comfy.taesd.taesd.TAESD) and vae.latent_channels == 16
    te = clip.cond_stage_model
    assert te.clip_l is not None and te.clip_g is None and te.t5xxl is None

    # the loaded MMDiT (fp16 in the file, float32 here) against the trainer's weights rounded the same way: two
    # float32 evaluations of one network, rule 3 of tests/tolerances.py (16 image + 77 text tokens), doubled because
    # ComfyUI's cast layers and attention may order each sum differently from the freshly built module's
    net = patcher.model.diffusion_model.float()
    ref = sd3.build_model(sd3.MMDIT_CONFIGS["reduced"], 0).diffusion_model
    ref.load_state_dict({k: v.half().float() for k, v in state.items()})
    g = torch.Generator().manual_seed(1)
    xt, ctx, pooled = torch.randn(1, 16, 8, 8, generator=g), torch.randn(1, 77, 4096, generator=g), torch.randn(
        1, 2048, generator=g)
    with torch.no_grad():
        ours = ref(xt, torch.tensor([700.0]), context=ctx, y=pooled)
        theirs = net(xt, torch.tensor([700.0]), context=ctx, y=pooled)
    assert torch.allclose(theirs, ours, rtol=0, atol=2 * network_rounding_atol(ref, 16 + 77, ours))

    # CLIPTextEncode of the file = the trainer's embeddings (world.sd3.encode_captions: the CLIP-L parts)
    caption = "a small red circle on the left on a purple striped background"
    tokens = clip.tokenize(caption)
    with torch.inference_mode():
        cond, pool = clip.encode_from_tokens(tokens, return_pooled=True)
    train_ctx, train_pooled = sd3.encode_captions(sd3.make_clip(te_sd), [caption])
    full_ctx, full_pooled = sd3.full_conditioning(train_ctx, train_pooled)
    assert cond.shape == (1, 77, 4096) and pool.shape == (1, 2048)
    # the trainer stores fp16 (half-precision rounding of each value) of the same float32 computation
    assert torch.allclose(cond.float(), full_ctx, rtol=2 * unit_roundoff(torch.float16), atol=1e-6)
    assert torch.allclose(pool.float(), full_pooled, rtol=2 * unit_roundoff(torch.float16), atol=1e-6)
