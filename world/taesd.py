"""The world's autoencoder: TAESD (Tiny AutoEncoder for Stable Diffusion) in plain torch with ComfyUI's exact key
layout (``comfy/taesd/taesd.py``: ``taesd_encoder.*``, ``taesd_decoder.*``, ``vae_scale``, ``vae_shift``), trained
on the world's renders. 4 latent channels for SD 1.x, 16 for SD 3.x; 8x downsampling (64 px -> 8 x 8).

Latent units (read from ComfyUI 0.8.0 / 0.3.x ``comfy/taesd/taesd.py`` and ``comfy/sd.py``):
- ``comfy.sd.VAE`` recognises TAESD by ``taesd_decoder.1.weight`` (its input width = latent channels); pixels go in
  as ``x * 2 - 1`` and TAESD.encode computes ``taesd_encoder((x + 1) / 2) / vae_scale + vae_shift``: the encoder
  itself sees [0, 1] images. Decoding is ``taesd_decoder((z - vae_shift) * vae_scale)`` mapped back to [0, 1]; the
  decoder starts with a soft clamp ``3 tanh(x / 3)``, so raw latents must stay well inside +-3.
- The model then works on ``process_latent_in(z) = (z - shift_factor) * scale_factor`` (SD 1.x: 0.18215, 0; SD 3.x:
  1.5305, 0.0609). With ``vae_scale = scale_factor * s`` and ``vae_shift = shift_factor - m / vae_scale`` the
  model-space latent is ``(raw - m) / s``: the raw encoder output standardised. This is also what ComfyUI's own
  VAELoader does for the released TAESD files (vae_scale 0.18215 for SD 1.x, 1.5305 / 0.0609 for SD 3.x, m = 0, s = 1).
  Training keeps raw latents near zero mean and unit variance (a penalty), and the exact m, s are measured after
  training and written into vae_scale / vae_shift, so diffusion sees unit-variance latents.

  TAESD(latent_channels)               the module (same state-dict keys as ComfyUI's)
  LATENT_FORMATS                       {"sd15": (scale_factor, shift_factor, channels), "sd3": ...}
  train_taesd(out_dir, seed, ...)      resumable training; writes <out_dir>/taesd[-sd3].safetensors and .json
  load_taesd(path) -> TAESD
  to_model_space(taesd, images01)      images [B, 3, H, W] in [0, 1] -> model-space latents (what the UNet sees)
  from_model_space(taesd, latents)     model-space latents -> images in [0, 1]
"""

from __future__ import annotations

import os
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import loop

LATENT_FORMATS = {"sd15": (0.18215, 0.0, 4), "sd3": (1.5305, 0.0609, 16)}


def _conv(n_in, n_out, **kwargs):
    return nn.Conv2d(n_in, n_out, 3, padding=1, **kwargs)


class Clamp(nn.Module):
    def forward(self, x):
        return torch.tanh(x / 3) * 3


class Block(nn.Module):
    def __init__(self, n_in, n_out):
        super().__init__()
        self.conv = nn.Sequential(_conv(n_in, n_out), nn.ReLU(), _conv(n_out, n_out), nn.ReLU(), _conv(n_out, n_out))
        self.skip = nn.Conv2d(n_in, n_out, 1, bias=False) if n_in != n_out else nn.Identity()
        self.fuse = nn.ReLU()

    def forward(self, x):
        return self.fuse(self.conv(x) + self.skip(x))


def Encoder(latent_channels=4):
    return nn.Sequential(
        _conv(3, 64), Block(64, 64),
        _conv(64, 64, stride=2, bias=False), Block(64, 64), Block(64, 64), Block(64, 64),
        _conv(64, 64, stride=2, bias=False), Block(64, 64), Block(64, 64), Block(64, 64),
        _conv(64, 64, stride=2, bias=False), Block(64, 64), Block(64, 64), Block(64, 64),
        _conv(64, latent_channels),
    )


def Decoder(latent_channels=4):
    return nn.Sequential(
        Clamp(), _conv(latent_channels, 64), nn.ReLU(),
        Block(64, 64), Block(64, 64), Block(64, 64), nn.Upsample(scale_factor=2), _conv(64, 64, bias=False),
        Block(64, 64), Block(64, 64), Block(64, 64), nn.Upsample(scale_factor=2), _conv(64, 64, bias=False),
        Block(64, 64), Block(64, 64), Block(64, 64), nn.Upsample(scale_factor=2), _conv(64, 64, bias=False),
        Block(64, 64), _conv(64, 3),
    )


# "Lite" training: the Blocks listed here (indices into taesd_encoder / taesd_decoder) are not trained; their last
# conv is zero, so each is exactly ReLU (fuse(0 + x)), and training skips them. The exported file still has every
# key ComfyUI's TAESD has, and ComfyUI computes the same function. The skipped blocks are the full-resolution ones
# and part of the 32 x 32 / 16 x 16 ones: about 3x fewer FLOPs per image, which a 2-core CPU needs.
LITE_SKIP = {"taesd_encoder": (1, 4, 5, 9), "taesd_decoder": (10, 14, 15, 18)}


class TAESD(nn.Module):
    def __init__(self, latent_channels=4, skip=None):
        super().__init__()
        self.taesd_encoder = Encoder(latent_channels)
        self.taesd_decoder = Decoder(latent_channels)
        self.vae_scale = nn.Parameter(torch.tensor(1.0), requires_grad=False)
        self.vae_shift = nn.Parameter(torch.tensor(0.0), requires_grad=False)
        self.latent_channels = latent_channels
        self.skip = {k: tuple(v) for k, v in (skip or {}).items()}
        with torch.no_grad():
            for name, idx in self.skip.items():
                for i in idx:
                    block = getattr(self, name)[i]
                    assert isinstance(block, Block)
                    block.conv[4].weight.zero_()
                    block.conv[4].bias.zero_()
                    for p in block.parameters():
                        p.requires_grad_(False)

    def _run(self, name, x):
        skip = self.skip.get(name, ())
        for i, layer in enumerate(getattr(self, name)):
            x = F.relu(x) if i in skip else layer(x)
        return x

    # raw latents: what the encoder outputs and the decoder reads
    def encode_raw(self, images01):
        return self._run("taesd_encoder", images01)

    def decode_raw(self, raw):
        return self._run("taesd_decoder", raw)


def to_model_space(taesd, images01, latent_format="sd15"):
    """[B, 3, H, W] in [0, 1] -> the latents the diffusion model sees (ComfyUI: VAEEncode, then process_latent_in)."""
    factor, shift, _ = LATENT_FORMATS[latent_format]
    z = taesd.encode_raw(images01) / taesd.vae_scale + taesd.vae_shift   # VAE-latent units (LATENT["samples"])
    return (z - shift) * factor


def from_model_space(taesd, latents, latent_format="sd15"):
    """Inverse of to_model_space (process_latent_out, then VAEDecode); images in [0, 1] (not clamped)."""
    factor, shift, _ = LATENT_FORMATS[latent_format]
    z = latents / factor + shift
    return taesd.decode_raw((z - taesd.vae_shift) * taesd.vae_scale)


CONFIGS = {
    "full": {"train": 10000, "test": 500, "steps": 3000, "batch": 16, "crop": 32, "full_from": 0.8, "lr": 1e-3,
             "latent_noise": 0.05, "lite": True, "object_weight": 5.0},
    # the CI-sized world: at 200 steps (18.3 dB) the judge read colour on 43 % of the round trips and the edits lost
    # their object; 800 steps (20.6 dB, colour 100 %), about 6 minutes here
    "reduced": {"train": 2000, "test": 100, "steps": 800, "batch": 16, "crop": 32, "full_from": 0.8, "lr": 2e-3,
                "latent_noise": 0.05, "lite": True, "object_weight": 5.0},
}


def _file_name(latent_format):
    return "taesd.safetensors" if latent_format == "sd15" else f"taesd-{latent_format}.safetensors"


def psnr(a, b):
    mse = ((a - b) ** 2).flatten(1).mean(1).clamp(min=1e-10)
    return 10 * torch.log10(1.0 / mse)


def _weighted_batch(x_all, m_all, idx, rng, object_weight):
    """Images idx in [0, 1], their loss weights and a random horizontal flip of each (flags returned). The object
    (dilated by 2 px, so its edges count) weighs object_weight x in the reconstruction loss: what the judge and the
    edits read is the shape and its colour, not the background's texture phase."""
    x = x_all[idx].float() / 255.0
    w = 1.0 + (object_weight - 1.0) * F.max_pool2d(m_all[idx].float() / 255.0, 5, 1, 2)
    flip = torch.from_numpy(rng.random(len(idx)) < 0.5)
    x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    w = torch.where(flip[:, None, None, None], w.flip(-1), w)
    return x, w, flip


def _reconstruction_loss(y, x, w):
    return ((y - x).abs() * w).mean() + ((y - x) ** 2 * w).mean()


def _latent_penalty(z):
    """Keeps raw latents near zero mean and unit variance per channel, and inside the decoder's soft clamp."""
    zc = z.transpose(0, 1).flatten(1)  # [C, B*h*w]
    return zc.mean(1).pow(2).mean() + (zc.std(1) - 1.0).pow(2).mean() + F.relu(z.abs() - 2.5).pow(2).mean()


def train_taesd(out_dir, seed=0, reduced=False, minutes=None, world_seed=0, latent_format="sd15", steps=None):
    """Train TAESD on the world's train renders (L1 + MSE reconstruction, latent mean / variance penalty, a little
    latent noise before decoding so the decoder tolerates imperfect latents). Mostly on 32 x 32 crops aligned to the
    8-px latent grid (4x cheaper), the last 20 % of steps on whole images. Resumable; returns the report."""
    cfg = dict(CONFIGS["reduced" if reduced else "full"])
    if steps:
        cfg["steps"] = int(steps)
    factor, shift_factor, channels = LATENT_FORMATS[latent_format]
    torch.manual_seed(seed)
    data = loop.rendered(out_dir, "train", cfg["train"], world_seed)
    x_all = torch.from_numpy(data["images"]).permute(0, 3, 1, 2).contiguous()  # uint8
    m_all = torch.from_numpy(data["masks"])[:, None].contiguous()               # uint8 coverage
    n = len(x_all)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = TAESD(channels, skip=LITE_SKIP if cfg["lite"] else None)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg["lr"], weight_decay=0.0)
    total = cfg["steps"]
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg["lr"], total_steps=total, pct_start=0.05)
    stem = os.path.splitext(_file_name(latent_format))[0]
    ckpt_path = os.path.join(out_dir, stem + ".ckpt")
    step, _ = loop.resume(ckpt_path, "taesd", model, opt, sched)
    deadline = loop.Deadline(minutes)
    bar = loop.Progress(total, step, "taesd")
    t0, last_save = time.time(), time.time()
    model.train()

    def save():
        loop.atomic_save({"model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(),
                          "step": step}, ckpt_path)

    while step < total and not deadline.passed():
        rng = loop.step_rng(seed, step, 2)
        full = step >= cfg["full_from"] * total
        bsz = cfg["batch"] // 2 if full else cfg["batch"]
        idx = torch.from_numpy(rng.choice(n, bsz, replace=False))
        x, w, _ = _weighted_batch(x_all, m_all, idx, rng, cfg["object_weight"])
        if not full:
            c = cfg["crop"]
            oy, ox = (8 * rng.integers(0, (64 - c) // 8 + 1, size=2)).tolist()
            x = x[:, :, oy:oy + c, ox:ox + c]
            w = w[:, :, oy:oy + c, ox:ox + c]
        g = loop.torch_generator(seed, step, 2)
        z = model.encode_raw(x)
        zn = z + cfg["latent_noise"] * torch.randn(z.shape, generator=g) * (torch.rand(bsz, 1, 1, 1, generator=g) < 0.5)
        y = model.decode_raw(zn)
        zc = z.transpose(0, 1).flatten(1)                      # [C, B*h*w]
        loss = _reconstruction_loss(y, x, w) + 0.02 * _latent_penalty(z)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        step += 1
        with torch.no_grad():
            p = float(psnr(y.clamp(0, 1), x).mean())
        bar.update(1, loss=loss.item(), psnr=p, zstd=float(zc.std(1).mean()))
        if time.time() - last_save > 120:
            save()
            last_save = time.time()
    bar.close()
    save()
    model.eval()
    report = finish_taesd(model, out_dir, world_seed, cfg, latent_format)
    report.update(steps=step, steps_planned=total, seed=seed, config=cfg,
                  train_seconds_this_run=round(time.time() - t0, 1))
    save_taesd(model, os.path.join(out_dir, _file_name(latent_format)), report)
    loop.log(f"taesd: {report}")
    return report


@torch.no_grad()
def finish_taesd(model, out_dir, world_seed, cfg, latent_format):
    """Measure raw-latent statistics on training renders, set vae_scale / vae_shift so model-space latents are
    standardised, and measure reconstruction PSNR on held-out (test split) renders."""
    factor, shift_factor, _ = LATENT_FORMATS[latent_format]
    data = loop.rendered(out_dir, "train", cfg["train"], world_seed)
    x = torch.from_numpy(data["images"][:1000]).permute(0, 3, 1, 2).float() / 255.0
    z = torch.cat([model.encode_raw(x[i:i + 100]) for i in range(0, len(x), 100)])
    m, s = float(z.mean()), float(z.std())
    model.vae_scale.fill_(factor * s)
    model.vae_shift.fill_(shift_factor - m / (factor * s))
    test = loop.rendered(out_dir, "test", cfg["test"], world_seed)
    xt = torch.from_numpy(test["images"]).permute(0, 3, 1, 2).float() / 255.0
    lat = torch.cat([to_model_space(model, xt[i:i + 100], latent_format) for i in range(0, len(xt), 100)])
    rec = torch.cat([from_model_space(model, lat[i:i + 100], latent_format).clamp(0, 1)
                     for i in range(0, len(lat), 100)])
    judged = {}
    judge_path = os.path.join(out_dir, "judge.safetensors")
    if os.path.isfile(judge_path):  # does the round trip keep what the judge reads?
        from .judge import load_judge, predict
        read = predict(load_judge(judge_path), rec)
        judged = {a: round(float((read["index"][a].numpy() == test["labels"][a]).mean()), 4)
                  for a in test["labels"]}
    return {"judge_on_reconstructions": judged, "raw_mean": m, "raw_std": s, "per_channel_std": [round(float(v), 4) for v in z.transpose(0, 1).flatten(1).std(1)],
            "model_space_std": round(float(lat.std()), 4), "model_space_mean": round(float(lat.mean()), 4),
            "test_psnr": round(float(psnr(rec, xt).mean()), 3), "vae_scale": float(model.vae_scale),
            "vae_shift": float(model.vae_shift), "latent_format": latent_format}


def save_taesd(model, path, report=None):
    from safetensors.torch import save_file
    sd = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    meta = {"format": "p2pz world taesd", "latent_channels": str(model.latent_channels)}
    loop.atomic_save(sd, path, lambda o, tmp: save_file(o, tmp, metadata=meta))
    if report is not None:
        loop.atomic_save_json(report, os.path.splitext(path)[0] + ".json")


def load_taesd(path) -> TAESD:
    from safetensors.torch import load_file
    sd = load_file(path)
    # blocks whose last conv is all zero are exact ReLUs: skip them (same function, fewer FLOPs)
    skip = {}
    for name in ("taesd_encoder", "taesd_decoder"):
        for i in range(20):
            w, b = sd.get(f"{name}.{i}.conv.4.weight"), sd.get(f"{name}.{i}.conv.4.bias")
            if w is not None and b is not None and not w.any() and not b.any():
                skip.setdefault(name, []).append(i)
    model = TAESD(sd["taesd_decoder.1.weight"].shape[1], skip=skip)
    model.load_state_dict(sd)
    return model.eval()



REFINE = {"full": {"steps": 1500, "batch": 8, "lr": 3e-4, "latent_noise": 0.05, "object_weight": 5.0},
          "reduced": {"steps": 20, "batch": 8, "lr": 3e-4, "latent_noise": 0.05, "object_weight": 5.0}}
# Stages after the first training: "decoder" (the encoder fixed) and "all" (encoder and decoder, every block).
REFINE_STAGES = {"decoder": "stage1", "all": "stage2"}


def refine_taesd(out_dir, seed=0, reduced=False, minutes=None, world_seed=0, latent_format="sd15", steps=None,
                 stage="decoder"):
    """A refinement stage on whole images with every block of the trained part running and training, the
    full-resolution ones included (lite training left those as exact ReLUs; they start from that function, so a
    stage can only add detail). Why: after the first training the judge read the shape of small stars in
    reconstructions as circles or squares (shape 88 % overall, small objects 73 %): the points of a 16-px star need
    more than one conv at full resolution.
    - stage "decoder": the encoder (so the latents, vae_scale and vae_shift) fixed; the raw latents of the training
      renders are computed once, so a step costs the decoder's forward and backward only. It sharpened the decoder but
      did not bring back small stars (figures: bench/README.md, "The learned world").
    - stage "all": encoder and decoder together (the latents move; vae_scale / vae_shift are measured again).
    Resumable; overwrites taesd[-sd3].safetensors, keeping the file it started from as
    taesd[-sd3]-<stage1|stage2>.safetensors, and writes taesd[-sd3]-refine[-all].json."""
    kind = "reduced" if reduced else "full"
    cfg = dict(REFINE[kind])
    if steps:
        cfg["steps"] = int(steps)
    base_cfg = CONFIGS[kind]
    path = os.path.join(out_dir, _file_name(latent_format))
    stem = os.path.splitext(path)[0]
    suffix = "-refine" if stage == "decoder" else f"-refine-{stage}"
    start = f"{stem}-{REFINE_STAGES[stage]}.safetensors"
    if not os.path.isfile(start):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path} is missing: train the VAE first (--part vae)")
        import shutil
        shutil.copyfile(path, start)
    model = load_taesd(start)
    train_encoder = stage == "all"
    model.skip = {"taesd_encoder": () if train_encoder else model.skip.get("taesd_encoder", ()), "taesd_decoder": ()}
    for p in model.taesd_encoder.parameters():
        p.requires_grad_(train_encoder)
    for p in model.taesd_decoder.parameters():
        p.requires_grad_(True)
    torch.manual_seed(seed)
    data = loop.rendered(out_dir, "train", base_cfg["train"], world_seed)
    x_all = torch.from_numpy(data["images"]).permute(0, 3, 1, 2).contiguous()
    m_all = torch.from_numpy(data["masks"])[:, None].contiguous()
    n = len(x_all)
    z_all = None
    if not train_encoder:
        with torch.no_grad():
            z_all = torch.cat([model.encode_raw(x_all[i:i + 200].float() / 255.0) for i in range(0, n, 200)])
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg["lr"], weight_decay=0.0)
    total = cfg["steps"]
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg["lr"], total_steps=total, pct_start=0.05)
    ckpt_path = stem + suffix + ".ckpt"
    step, _ = loop.resume(ckpt_path, f"taesd refine {stage}", model, opt, sched)
    deadline = loop.Deadline(minutes)
    bar = loop.Progress(total, step, f"taesd refine {stage}")
    t0, last_save = time.time(), time.time()
    model.train()

    def save():
        loop.atomic_save({"model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(),
                          "step": step}, ckpt_path)

    while step < total and not deadline.passed():
        rng = loop.step_rng(seed, step, 5)
        bsz = cfg["batch"]
        idx = torch.from_numpy(rng.choice(n, bsz, replace=False))
        x, w, flip = _weighted_batch(x_all, m_all, idx, rng, cfg["object_weight"])
        if train_encoder:
            z = model.encode_raw(x)
        else:  # a flipped image's latent taken as the flipped latent (the encoder is nearly equivariant)
            z = torch.where(flip[:, None, None, None], z_all[idx].flip(-1), z_all[idx])
        g = loop.torch_generator(seed, step, 5)
        zn = z + cfg["latent_noise"] * torch.randn(z.shape, generator=g) * (torch.rand(bsz, 1, 1, 1, generator=g) < 0.5)
        y = model.decode_raw(zn)
        loss = _reconstruction_loss(y, x, w)
        if train_encoder:  # keep the raw latents standardised, as the first stage did
            loss = loss + 0.02 * _latent_penalty(z)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        step += 1
        with torch.no_grad():
            p = float(psnr(y.clamp(0, 1), x).mean())
        bar.update(1, loss=loss.item(), psnr=p)
        if time.time() - last_save > 120:
            save()
            last_save = time.time()
    bar.close()
    save()
    model.eval()
    report = finish_taesd(model, out_dir, world_seed, base_cfg, latent_format)
    report.update(steps=step, steps_planned=total, seed=seed, config=cfg, stage=f"refine_{stage}",
                  train_seconds_this_run=round(time.time() - t0, 1))
    save_taesd(model, path, None)
    loop.atomic_save_json(report, stem + suffix + ".json")
    loop.log(f"taesd refine {stage}: {report}")
    return report
