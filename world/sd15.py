"""An SD 1.x-layout checkpoint that knows the world: ComfyUI's own UNetModel (comfy.supported_models.SD15), a frozen
seeded CLIP-L text encoder in ComfyUI's layout, and the world's TAESD, trained with plain torch and saved as one
.safetensors file that stock CheckpointLoaderSimple detects as SD 1.5. Needs ComfyUI (booted on the CPU here).

What detection reads (comfy/model_detection.py, comfy/supported_models.py SD15): model_channels 320, context_dim 768
(attn2 to_k), conv proj_in, 4 input channels, no label_emb. Everything else is free, so the UNet is small at the
world's 8 x 8 latent (``UNET_CONFIGS``).

Text encoder: the full 12-layer CLIP-L layout (CheckpointLoaderSimple builds 12 layers), seeded torch-default init,
with layers ``ACTIVE_TEXT_LAYERS`` and above made exact identities (their attention out_proj and MLP fc2 are zero, so
the residual stream passes through unchanged): a 12-layer file whose function is a 2-layer random transformer,
which makes encoding the ~3,200 training captions 6x cheaper on a 2-core CPU. Weights are rounded to fp16 (what the
file holds) before anything is encoded, and the embeddings used for training come from ComfyUI's own CLIP object
(tokenizer, encoder, final layer norm), so they are what CLIPTextEncode gives for the saved file.

Training: epsilon prediction on SD 1.x's scaled-linear schedule (beta 0.00085 .. 0.012, 1000 steps), on model-space
latents (the TAESD's raw latents = VAE latents x 0.18215, see world.taesd) of the world's training renders; the
caption of each image drawn from all templates every step; 10 % caption dropout to the empty prompt's embedding
(CFG); min-SNR-5 loss weighting; AdamW with warm-up and cosine decay; an EMA of the weights is what gets exported.
"""

from __future__ import annotations

import json
import os

from . import loop, render

ACTIVE_TEXT_LAYERS = 2
_BASE_UNET = {
    "use_checkpoint": False, "image_size": 32, "out_channels": 4, "use_spatial_transformer": True, "legacy": False,
    "adm_in_channels": None, "in_channels": 4, "model_channels": 320, "use_linear_in_transformer": False,
    "context_dim": 768, "num_heads": 8, "use_temporal_attention": False, "use_temporal_resblock": False,
}
UNET_CONFIGS = {
    # one level at the 8 x 8 latent (no down-sampling, no middle block), one res block, cross-attention in the input
    # block and the first output block: 16.2 M parameters, about 1.4 GFLOP per forward pass. Measured on the 2-core
    # CPU with other jobs running: 8 s per batch-24 training step, against 26 s for the two-level [1, 1] UNet with
    # a middle block (36.7 M) that fixtures/tiny_models.py builds for the benchmarks.
    "full": dict(_BASE_UNET, num_res_blocks=[1], channel_mult=[1], transformer_depth=[1],
                 transformer_depth_middle=-2, transformer_depth_output=[0, 1]),
    "two_level": dict(_BASE_UNET, num_res_blocks=[1, 1], channel_mult=[1, 1], transformer_depth=[1, 0],
                      transformer_depth_middle=1, transformer_depth_output=[1, 1, 0, 0]),
}
# The CI-sized world (--reduced; bench/README.md, "A CI-sized world") keeps the full UNet: ComfyUI detects SD 1.x only
# at 320 channels (supported_models.SD15; a 128-channel UNet, a third of the time, was "Could not detect model type")
UNET_CONFIGS["reduced"] = UNET_CONFIGS["full"]
TRAIN = {
    # 4,600 steps in one cosine schedule: 82 minutes alone on 2 cores (1.0 s a step), shape 91 % and colour 100 % on
    # world.evaluate (bench/README.md, "The learned world"). The edit tables' 4,572-step checkpoint came from resumes
    # with longer plans stopped by the clock, which cannot be replayed; this single run replaces that history
    "full": {"images": 10000, "steps": 4600, "batch": 16, "lr": 4e-4, "warmup": 50, "ema": 0.99, "dropout": 0.1,
             "export_every_s": 600, "templates": None},
    # CI-sized: fewer training images (encoding 10,000 renders to latents alone takes 5 minutes), every template (the
    # held-out captions use all the full ones), half the batch for half the time per step (the full run read colour
    # 91 % after 800 steps of 16); about 10 minutes here
    "reduced": {"images": 2000, "steps": 800, "batch": 8, "lr": 4e-4, "warmup": 50, "ema": 0.99, "dropout": 0.1,
                "export_every_s": 1e9, "templates": None},
}
CHECKPOINT_NAME = "world-sd15.safetensors"


def scaled_linear_alphas_cumprod(n=1000, start=0.00085, end=0.012):
    import torch
    betas = torch.linspace(start ** 0.5, end ** 0.5, n, dtype=torch.float64) ** 2
    return torch.cumprod(1.0 - betas, 0)


# ----------------------------------------------------------------------------------------------------------------
# Text encoder

def text_encoder_state_dict(seed):
    """SD1ClipModel state dict ("clip_l.transformer.text_model...."): seeded, layers >= ACTIVE_TEXT_LAYERS identity,
    rounded to fp16 and back to float32."""
    import torch
    import comfy.sd1_clip
    from fixtures.tiny_models import init_module_weights
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        te = comfy.sd1_clip.SD1ClipModel(device="cpu", dtype=torch.float32)
    init_module_weights(te, seed)
    sd = {k: v.detach().clone() for k, v in te.state_dict().items()}
    pre = "clip_l.transformer.text_model.encoder.layers."
    for k in sd:
        if k.startswith(pre):
            layer = int(k[len(pre):].split(".")[0])
            if layer >= ACTIVE_TEXT_LAYERS and (".self_attn.out_proj." in k or ".mlp.fc2." in k):
                sd[k].zero_()
    return {k: (v.to(torch.float16).to(torch.float32) if v.is_floating_point() else v) for k, v in sd.items()}


def make_clip(te_sd, layers=ACTIVE_TEXT_LAYERS, target=None):
    """A ComfyUI CLIP object (float32) holding ``te_sd``; ``layers`` < 12 builds only the active layers (the rest
    are identities in te_sd, so the function is the same). ``target``: the ClipTarget (default SD 1.x's; world.sd3
    passes SD 3.x's, whose CLIP-L has the same keys)."""
    import torch
    import comfy.sd
    import comfy.sd1_clip
    import comfy.supported_models_base
    if target is None:
        target = comfy.supported_models_base.ClipTarget(comfy.sd1_clip.SD1Tokenizer, comfy.sd1_clip.SD1ClipModel)
    opts = {"dtype": torch.float32}
    if layers != 12:
        opts["clip_l_model_config"] = {"num_hidden_layers": layers}
    clip = comfy.sd.CLIP(target, model_options=opts)
    sd = {k: v for k, v in te_sd.items()
          if not (k.startswith("clip_l.transformer.text_model.encoder.layers.")
                  and int(k.split(".")[5]) >= layers)}
    missing, unexpected = clip.cond_stage_model.load_state_dict(sd, strict=False)
    bad = [k for k in missing if "logit_scale" not in k and "text_projection" not in k]
    if bad or unexpected:
        raise RuntimeError(f"text encoder did not load: missing {bad[:4]}, unexpected {list(unexpected)[:4]}")
    return clip


def encode_captions(clip, captions, batch=64):
    """[N, 77, 768] float16 embeddings, as CLIPTextEncode computes them (one 77-token chunk per caption)."""
    import torch
    out = []
    bar = loop.Progress(len(captions), 0, "captions")
    for i in range(0, len(captions), batch):
        chunks = []
        for c in captions[i:i + batch]:
            tok = clip.tokenize(c)["l"]
            if len(tok) != 1:
                raise ValueError(f"caption longer than 77 tokens: {c!r}")
            chunks.append(tok[0])
        with torch.no_grad():
            cond = clip.encode_from_tokens({"l": chunks})  # chunks are concatenated along tokens
        out.append(cond.reshape(len(chunks), 77, -1).to(torch.float16))
        bar.update(len(chunks))
    bar.close()
    return torch.cat(out)


# ----------------------------------------------------------------------------------------------------------------
# UNet

def build_model(unet_config, seed):
    """comfy.supported_models.SD15(unet_config) -> BaseModel (float32), weights seeded; the layers the original
    UNet zero-initialises (each res block's last conv, each transformer's proj_out, the output conv) start at 0."""
    import torch
    import comfy.supported_models
    from fixtures.tiny_models import init_module_weights
    cfg = comfy.supported_models.SD15(dict(unet_config))
    cfg.set_inference_dtype(torch.float32, None)
    model = cfg.get_model({})
    net = model.diffusion_model
    init_module_weights(net, seed)
    with torch.no_grad():
        for name, m in net.named_modules():
            if type(m).__name__ == "ResBlock":
                for p in m.out_layers[-1].parameters():
                    p.zero_()
            if type(m).__name__ == "SpatialTransformer":
                for p in m.proj_out.parameters():
                    p.zero_()
        for p in net.out[-1].parameters():
            p.zero_()
    return model


def export_checkpoint(model, unet_state, te_sd, taesd, path, metadata):
    """Write the SD 1.x checkpoint: UNet and text encoder fp16, the TAESD (under first_stage_model.) float32."""
    import torch
    import comfy.utils
    model.diffusion_model.load_state_dict(unet_state)
    vae_sd = {k: v.detach().float() for k, v in taesd.state_dict().items()}
    sd = model.state_dict_for_saving(clip_state_dict=dict(te_sd), vae_state_dict=vae_sd)
    out = {}
    for k, v in sd.items():
        v = v.detach()
        if v.is_floating_point() and not k.startswith("first_stage_model."):
            v = v.to(torch.float16)
        out[k] = v.contiguous()
    meta = {k: (v if isinstance(v, str) else json.dumps(v)) for k, v in metadata.items()}
    loop.atomic_save(out, path, lambda o, tmp: comfy.utils.save_torch_file(o, tmp, metadata=meta))
    return path


def _templates(cfg):
    return tuple(cfg["templates"] or range(len(render.TEMPLATES)))


def cached_caption_table(out_dir, cfg, te_seed, family, embed):
    """Every training caption (non-held-out attribute combinations x the config's templates) and the empty prompt,
    embedded once by ``embed(captions) -> dict`` (its entries for the captions, then for the empty prompt, split by
    the caller's layout: see caption_table); cached in <out_dir>/data/<family>-captions-te<seed>-<templates>.pt."""
    import itertools

    import torch
    templates = _templates(cfg)
    tag = "all" if not cfg["templates"] else "t" + "-".join(map(str, templates))
    path = os.path.join(out_dir, "data", f"{family}-captions-te{te_seed}-{tag}.pt")
    if os.path.isfile(path):
        return torch.load(path, map_location="cpu", weights_only=True)
    caps = set()
    for combo in itertools.product(*render.ATTRIBUTES.values()):
        attrs = dict(zip(render.ATTRIBUTES, combo))
        if not render.is_held_out(attrs):
            caps.update(render.caption(attrs, t) for t in templates)
    captions = sorted(caps)
    loop.log(f"encoding {len(captions)} captions + the empty prompt ({family} text encoder)")
    d = dict(embed(captions + [""]), captions=captions)
    loop.atomic_save(d, path)
    return d


def caption_table(out_dir, cfg, te_seed, clip=None):
    """{"captions", "embeddings" [N, 77, 768] fp16, "empty" [1, 77, 768]}: cached_caption_table for SD 1.x."""
    def embed(captions):
        emb = encode_captions(clip or make_clip(text_encoder_state_dict(te_seed)), captions)
        return {"embeddings": emb[:-1], "empty": emb[-1:]}
    return cached_caption_table(out_dir, cfg, te_seed, "sd15", embed)


def _prepare_latents(out_dir, cfg, world_seed, taesd, captions, latent_format="sd15"):
    """Model-space latents of the training renders and, for each image, the index into ``captions`` of its caption
    under every template of the config (shared by the SD 1.x and SD 3.x trainers)."""
    import torch
    from .taesd import to_model_space
    data = loop.rendered(out_dir, "train", cfg["images"], world_seed)
    x = torch.from_numpy(data["images"]).permute(0, 3, 1, 2).float() / 255.0
    loop.log(f"encoding {len(x)} images to latents")
    with torch.no_grad():
        lat = torch.cat([to_model_space(taesd, x[i:i + 200], latent_format) for i in range(0, len(x), 200)])
    index = {c: i for i, c in enumerate(captions)}
    attrs = [{a: render.ATTRIBUTES[a][int(data["labels"][a][i])] for a in render.ATTRIBUTES} for i in range(len(x))]
    cap_idx = torch.tensor([[index[render.caption(at, t)] for t in _templates(cfg)] for at in attrs])
    return lat, cap_idx


def _prepare_data(out_dir, cfg, world_seed, te_seed, taesd):
    """The training latents, caption indices and the caption embedding table of the SD 1.x trainer."""
    table = caption_table(out_dir, cfg, te_seed)  # the text encoder is built only when the table is not cached
    lat, cap_idx = _prepare_latents(out_dir, cfg, world_seed, taesd, table["captions"])
    return {"latents": lat, "caption_index": cap_idx, "embeddings": table["embeddings"], "empty": table["empty"],
            "captions": table["captions"]}


def train_sd15(out_dir, seed=0, reduced=False, minutes=None, world_seed=0, comfyui=None, unet=None, steps=None):
    import torch
    from scripts import comfy_host
    # SDPA: ComfyUI's CPU default (sub-quadratic attention) is several times slower, forward and backward
    comfy_host.boot(comfyui, device="cpu", attention="pytorch", extra_nodes=False)
    from .taesd import load_taesd

    kind = "reduced" if reduced else "full"
    cfg, unet_config = dict(TRAIN[kind]), UNET_CONFIGS[unet or kind]
    if steps:
        cfg["steps"] = int(steps)
    taesd_path = os.path.join(out_dir, "taesd.safetensors")
    if not os.path.isfile(taesd_path):
        raise FileNotFoundError(f"{taesd_path} is missing: train the VAE first (--part vae)")
    taesd = load_taesd(taesd_path)
    te_sd = text_encoder_state_dict(seed + 1)
    data = _prepare_data(out_dir, cfg, world_seed, seed + 1, taesd)
    lat, cap_idx, emb, empty = data["latents"], data["caption_index"], data["embeddings"], data["empty"]
    n = len(lat)
    loop.log(f"latents {tuple(lat.shape)} std {float(lat.std()):.3f}, {len(emb)} caption embeddings")

    model = build_model(unet_config, seed)
    net = model.diffusion_model
    ac = scaled_linear_alphas_cumprod().float()
    snr = ac / (1 - ac)
    weight = torch.clamp(snr, max=5.0) / snr  # min-SNR-5 for epsilon prediction
    ckpt_dir = os.path.join(out_dir, "checkpoints")
    meta = {"format": "p2pz world sd15", "unet_config": unet_config, "train": cfg, "seed": str(seed),
            "world_seed": str(world_seed), "text_encoder": f"CLIP-L layout, seeded (seed {seed + 1}), layers >= "
                                                           f"{ACTIVE_TEXT_LAYERS} identity"}

    def loss_at(step):
        rng = loop.step_rng(seed, step, 3)
        b = cfg["batch"]
        idx = torch.from_numpy(rng.choice(n, b, replace=False))
        tmpl = torch.from_numpy(rng.integers(0, cap_idx.shape[1], b))
        ctx = emb[cap_idx[idx, tmpl]].float()
        drop = torch.from_numpy(rng.random(b) < cfg["dropout"])
        ctx = torch.where(drop[:, None, None], empty.float().expand(b, -1, -1), ctx)
        g = loop.torch_generator(seed, step, 3)
        t = torch.randint(0, 1000, (b,), generator=g)
        eps = torch.randn(lat[idx].shape, generator=g)
        a = ac[t][:, None, None, None]
        x_t = a.sqrt() * lat[idx] + (1 - a).sqrt() * eps
        pred = net(x_t, t.float(), context=ctx)
        loss = ((pred - eps) ** 2).mean((1, 2, 3))
        return (loss * weight[t]).mean()

    def export(ema, step, final):
        name = CHECKPOINT_NAME if final else "world-sd15-latest.safetensors"
        return export_checkpoint(model, ema, te_sd, taesd, os.path.join(ckpt_dir, name), dict(meta, steps=str(step)))

    return loop.train_ema("sd15", net, cfg, out_dir, seed, loss_at, export, minutes,
                          {"unet_config": unet_config, "train": cfg})
