"""An SD 3.x-layout checkpoint that knows the world: ComfyUI's own MMDiT (comfy.supported_models.SD3, joint
attention, rectified-flow velocity), a frozen seeded CLIP-L as its only text encoder (a valid SD 3.x text-encoder set
in ComfyUI: CLIP-G and T5 absent), and the world's TAESD with 16 latent channels, trained with plain torch and saved
as one .safetensors file that stock CheckpointLoaderSimple detects as SD3. Needs ComfyUI (booted on the CPU here).

What detection reads (comfy/model_detection.py, the MMDiT branch; 0.3.64 and 0.8.0 alike): in and out channels and
patch size from x_embedder / final_layer, depth = x_embedder width / 64 (ComfyUI fixes the head size at 64 and the
hidden size at 64 x depth), pooled width from y_embedder, context width from context_embedder, the position table's
size from pos_embed. So the MMDiT is small and everything else is SD 3.x's: 16 channels, CLIP-L's 768 features
padded to the 4096-wide context and CLIP-L's pooled 768 padded to 2048 by ComfyUI's SD3 text encoder, shift 3.0.

Deviations from a released SD 3.x, each for the 2-core CPU (``MMDIT_CONFIGS``):
- depth 4 (hidden 256, 4 heads) instead of 24-38;
- 16 image tokens: the world's 64 px images have an 8 x 8 latent, in SD 3.x's 2 x 2 patches. Patch size 1 (64
  tokens) would suit the attention maps better, but ComfyUI's MMDiT rounds the patched size up as for patch 2
  (``cropped_pos_embed``: (h + 1) // p), so only patch 2 runs there;
- the VAE: the world's 4-channel TAESD embedded in the 16-channel latent (``lift_taesd``): channels 0-3 carry its
  latent, 4-15 hold the latent format's zero. Exact (the decoder's first op is an element-wise soft clamp, which
  only a channel placement commutes with), and the 4-channel TAESD is the one the SD 1.x world passed its gates with;
  a 16-channel TAESD trained from scratch would cost the CPU another 90 minutes for the same images.

Text encoder: the SD 1.x world's seeded CLIP-L file (world.sd15.text_encoder_state_dict: 12 layers, layers >= 2
identity). ComfyUI's SD3 encoder reads CLIP-L's penultimate layer without the final layer norm, which with those
identities is the output of the two active layers; the embeddings for training come from ComfyUI's own SD3 CLIP
object built on the same weights, so they are what CLIPTextEncode gives for the saved file.

Training: rectified flow as ComfyUI samples it (ModelSamplingDiscreteFlow, CONST: x_sigma = sigma * noise +
(1 - sigma) * x0, the model predicts v = noise - x0, its timestep input is 1000 sigma). Sigmas are drawn
logit-normal (SD 3's training density) and moved by the model's shift 3.0, so training sees the noise levels that
sampling visits; 10 % caption dropout to the empty prompt (CFG); AdamW, warm-up, cosine decay; the EMA is exported.
"""

from __future__ import annotations

import os

from . import loop
from .sd15 import TRAIN as SD15_TRAIN
# the SD 3.x file is written as the SD 1.x one: model fp16 (text_encoders.clip_l.* by SD3's own prefix), TAESD float32
from .sd15 import cached_caption_table, export_checkpoint, text_encoder_state_dict

SHIFT = 3.0  # comfy.supported_models.SD3.sampling_settings
CONTEXT_WIDTH, POOLED_WIDTH, CLIP_L_WIDTH = 4096, 2048, 768


def mmdit_config(depth, patch_size=2, latent_size=8):
    """The unet_config ComfyUI's detection derives from such a file (model_detection.py, the MMDiT branch)."""
    tokens = (latent_size // patch_size) ** 2
    return {"in_channels": 16, "out_channels": 16, "patch_size": patch_size, "depth": depth, "input_size": None,
            "adm_in_channels": POOLED_WIDTH, "pos_embed_scaling_factor": None,
            "pos_embed_max_size": latent_size // patch_size, "num_patches": tokens, "x_block_self_attn_layers": [],
            "context_embedder_config": {"target": "torch.nn.Linear",
                                        "params": {"in_features": CONTEXT_WIDTH, "out_features": 64 * depth}}}


MMDIT_CONFIGS = {"full": mmdit_config(4), "reduced": mmdit_config(2)}
TRAIN = {
    # 8,000 steps in one cosine schedule (was 4,000, which read shape 83 %): the resumes to 6,500 and 8,000 showed
    # shape reaching the 90 % only at 8,000. From scratch: 72 minutes (0.49 s a step), shape 91 %, colour
    # 94 % on world.evaluate (bench/README.md, "The learned world")
    "full": {"images": 10000, "steps": 8000, "batch": 16, "lr": 3e-4, "warmup": 100, "ema": 0.99, "dropout": 0.1,
             "export_every_s": 600, "templates": None},
    "reduced": SD15_TRAIN["reduced"],
}
CHECKPOINT_NAME = "world-sd3.safetensors"


# ----------------------------------------------------------------------------------------------------------------
# VAE and text encoder

def lift_taesd(taesd4):
    """The 4-channel TAESD as a 16-channel one in SD 3.x's latent units: the encoder's last conv writes channels
    0-3 (4-15 get zero), the decoder's first conv reads channels 0-3; vae_scale / vae_shift are set so that the
    model-space latent of channels 0-3 is the same standardised latent as in SD 1.x's units."""
    import torch
    from .taesd import LATENT_FORMATS, TAESD
    factor4, shift4, _ = LATENT_FORMATS["sd15"]
    factor16, shift16, channels = LATENT_FORMATS["sd3"]
    s = float(taesd4.vae_scale) / factor4                   # raw std
    m = (shift4 - float(taesd4.vae_shift)) * float(taesd4.vae_scale)  # raw mean
    out = TAESD(channels, skip=taesd4.skip)
    sd = {k: v.clone() for k, v in taesd4.state_dict().items()}
    last = len(out.taesd_encoder) - 1
    w, b = sd[f"taesd_encoder.{last}.weight"], sd[f"taesd_encoder.{last}.bias"]
    sd[f"taesd_encoder.{last}.weight"] = torch.cat([w, w.new_zeros((channels - 4,) + w.shape[1:])])
    sd[f"taesd_encoder.{last}.bias"] = torch.cat([b, b.new_zeros(channels - 4)])
    w = sd["taesd_decoder.1.weight"]
    sd["taesd_decoder.1.weight"] = torch.cat([w, w.new_zeros((w.shape[0], channels - 4) + w.shape[2:])], dim=1)
    sd["vae_scale"] = torch.tensor(factor16 * s)
    sd["vae_shift"] = torch.tensor(shift16 - m / (factor16 * s))
    out.load_state_dict(sd)
    return out.eval()


def make_clip(te_sd):
    """ComfyUI's SD 3.x CLIP object (SD3Tokenizer + SD3ClipModel, CLIP-L only) holding ``te_sd``; 3 of the 12 layers
    built: SD 3.x reads the penultimate layer, which must be the output of the 2 active layers, as in the 12-layer
    file."""
    import comfy.supported_models_base
    import comfy.text_encoders.sd3_clip as sd3_te

    from . import sd15
    target = comfy.supported_models_base.ClipTarget(sd3_te.SD3Tokenizer,
                                                    sd3_te.sd3_clip(clip_l=True, clip_g=False, t5=False))
    return sd15.make_clip(te_sd, sd15.ACTIVE_TEXT_LAYERS + 1, target)


def encode_captions(clip, captions):
    """(context [N, 77, 768] fp16, pooled [N, 768] fp16): the CLIP-L parts of what CLIPTextEncode gives (the rest of
    the 4096-wide context and 2048-wide pooled vector is zero padding, added back by ``full_conditioning``)."""
    import torch
    ctx, pooled = [], []
    bar = loop.Progress(len(captions), 0, "captions")
    for c in captions:
        tokens = clip.tokenize(c)
        if len(tokens["l"]) != 1:
            raise ValueError(f"caption longer than 77 tokens: {c!r}")
        with torch.no_grad():
            cond, pool = clip.encode_from_tokens(tokens, return_pooled=True)
        if cond.shape[-1] != CONTEXT_WIDTH or cond[..., CLIP_L_WIDTH:].abs().max() > 0:
            raise RuntimeError(f"unexpected SD3 conditioning layout {tuple(cond.shape)}")
        ctx.append(cond[0, :, :CLIP_L_WIDTH].to(torch.float16))
        pooled.append(pool[0, :CLIP_L_WIDTH].to(torch.float16))
        bar.update(1)
    bar.close()
    return torch.stack(ctx), torch.stack(pooled)


def full_conditioning(ctx, pooled):
    """The CLIP-L parts back to SD 3.x's widths (zeros where CLIP-G and T5 would be), float32."""
    import torch.nn.functional as F
    return (F.pad(ctx.float(), (0, CONTEXT_WIDTH - ctx.shape[-1])),
            F.pad(pooled.float(), (0, POOLED_WIDTH - pooled.shape[-1])))


def caption_table(out_dir, cfg, te_seed, clip=None):
    """{"captions", "context" [N, 77, 768], "pooled" [N, 768], "empty_context", "empty_pooled"} (fp16):
    world.sd15.cached_caption_table with the SD3 text encoder."""
    def embed(captions):
        ctx, pooled = encode_captions(clip or make_clip(text_encoder_state_dict(te_seed)), captions)
        return {"context": ctx[:-1], "pooled": pooled[:-1], "empty_context": ctx[-1:], "empty_pooled": pooled[-1:]}
    return cached_caption_table(out_dir, cfg, te_seed, "sd3", embed)


# ----------------------------------------------------------------------------------------------------------------
# MMDiT

def build_model(config, seed):
    """comfy.supported_models.SD3(config) -> BaseModel (float32), weights seeded (fixtures.tiny_models'
    initialisation), the fixed sin-cos position table filled, and the adaLN modulations and the final layer zero as
    in DiT / SD 3 (each block starts as the identity, the model's first output is zero)."""
    import torch
    import comfy.supported_models
    from fixtures.tiny_models import _fill_mmdit_extras, init_module_weights
    cfg = comfy.supported_models.SD3(dict(config))
    cfg.set_inference_dtype(torch.float32, None)
    model = cfg.get_model({})
    net = model.diffusion_model
    init_module_weights(net, seed)
    with torch.no_grad():
        _fill_mmdit_extras(net)
        for name, m in net.named_modules():
            if name.endswith("adaLN_modulation"):
                for p in m[-1].parameters():
                    p.zero_()
        for p in net.final_layer.linear.parameters():
            p.zero_()
    return model


def sample_sigmas(generator, n):
    """Logit-normal(0, 1) sigmas, then the shift ComfyUI samples with: sigma' = shift s / (1 + (shift - 1) s)."""
    import torch
    s = torch.sigmoid(torch.randn(n, generator=generator))
    return SHIFT * s / (1 + (SHIFT - 1) * s)


def train_sd3(out_dir, seed=0, reduced=False, minutes=None, world_seed=0, comfyui=None, steps=None):
    import torch
    from scripts import comfy_host
    comfy_host.boot(comfyui, device="cpu", attention="pytorch", extra_nodes=False)
    from .sd15 import _prepare_latents
    from .taesd import load_taesd

    kind = "reduced" if reduced else "full"
    cfg, config = dict(TRAIN[kind]), MMDIT_CONFIGS[kind]
    if steps:
        cfg["steps"] = int(steps)
    taesd_path = os.path.join(out_dir, "taesd.safetensors")
    if not os.path.isfile(taesd_path):
        raise FileNotFoundError(f"{taesd_path} is missing: train the VAE first (--part vae)")
    taesd16 = lift_taesd(load_taesd(taesd_path))
    te_sd = text_encoder_state_dict(seed + 1)
    table = caption_table(out_dir, cfg, seed + 1)  # the text encoder is built only when the table is not cached
    lat, cap_idx = _prepare_latents(out_dir, cfg, world_seed, taesd16, table["captions"], "sd3")
    n = len(lat)
    loop.log(f"latents {tuple(lat.shape)} std of channels 0-3 {float(lat[:, :4].std()):.3f}, "
             f"{len(table['captions'])} caption embeddings")

    model = build_model(config, seed)
    net = model.diffusion_model
    ckpt_dir = os.path.join(out_dir, "checkpoints")
    meta = {"format": "p2pz world sd3", "unet_config": config, "train": cfg, "seed": str(seed),
            "world_seed": str(world_seed),
            "text_encoder": f"CLIP-L layout, seeded (seed {seed + 1}), layers >= 2 identity",
            "vae": "the world's 4-channel TAESD in channels 0-3 of 16"}
    ctx_all, pooled_all = table["context"], table["pooled"]
    empty_ctx, empty_pooled = full_conditioning(table["empty_context"], table["empty_pooled"])

    def loss_at(step):
        rng = loop.step_rng(seed, step, 4)
        b = cfg["batch"]
        idx = torch.from_numpy(rng.choice(n, b, replace=False))
        tmpl = torch.from_numpy(rng.integers(0, cap_idx.shape[1], b))
        rows = cap_idx[idx, tmpl]
        ctx, pooled = full_conditioning(ctx_all[rows], pooled_all[rows])
        drop = torch.from_numpy(rng.random(b) < cfg["dropout"])
        ctx = torch.where(drop[:, None, None], empty_ctx.expand(b, -1, -1), ctx)
        pooled = torch.where(drop[:, None], empty_pooled.expand(b, -1), pooled)
        g = loop.torch_generator(seed, step, 4)
        sigma = sample_sigmas(g, b)
        x0 = lat[idx]
        noise = torch.randn(x0.shape, generator=g)
        s = sigma[:, None, None, None]
        pred = net(s * noise + (1 - s) * x0, sigma * 1000.0, context=ctx, y=pooled)
        return ((pred - (noise - x0)) ** 2).mean()

    def export(ema, step, final):
        name = CHECKPOINT_NAME if final else "world-sd3-latest.safetensors"
        return export_checkpoint(model, ema, te_sd, taesd16, os.path.join(ckpt_dir, name), dict(meta, steps=str(step)))

    return loop.train_ema("sd3", net, cfg, out_dir, seed, loss_at, export, minutes,
                          {"unet_config": config, "train": cfg})
