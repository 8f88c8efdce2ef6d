"""The judge: a small CNN that reads a 64 x 64 image of the world (the analogue of the paper's CLIP accuracy), and
estimates the object's mask (for structure IoU).

Trained only on renders (never on model outputs), with augmentation so that it reads imperfect images: Gaussian
blur, pixel noise, colour jitter (brightness, contrast, saturation, channel gains), a soft down/up-sampling, and
shifts of up to 2 px. Heads: shape, colour, size, position, background (softmax each) and a mask logit map at
32 x 32 (upsampled to 64 x 64 by ``predict``).

  Judge()                          the network (input: [B, 3, 64, 64] in [0, 1])
  train_judge(out_dir, seed, ...)  trains it, resumable; writes <out_dir>/judge.safetensors + judge.json
  load_judge(path) -> Judge        eval mode
  predict(judge, images)           images [B, 64, 64, 3] (ComfyUI IMAGE layout) or [B, 3, 64, 64] in [0, 1] ->
                                   {"shape": [B] names, ..., "probs": {attr: [B, k]}, "mask": [B, 64, 64] float}
  evaluate_on(judge, data)         per-attribute accuracy and mask IoU on a rendered set
"""

from __future__ import annotations

import json
import os
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from . import loop, render

HEADS = {name: len(values) for name, values in render.ATTRIBUTES.items()}


def _conv(cin, cout, stride=1, k=3):
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


class Judge(nn.Module):
    def __init__(self, width=32):
        super().__init__()
        w = width
        self.stem = _conv(5, w, stride=2, k=5)                                     # 32 x 32 (+2 coordinate channels)
        self.b32 = _conv(w, int(1.5 * w))
        self.b16 = nn.Sequential(_conv(int(1.5 * w), 2 * w, 2), _conv(2 * w, 2 * w))  # 16 x 16
        self.b8 = nn.Sequential(_conv(2 * w, 3 * w, 2), _conv(3 * w, 3 * w))          # 8 x 8
        self.squeeze = _conv(3 * w, 8, k=1)
        self.fc = nn.Sequential(nn.Linear(3 * w + 8 * 64, 128), nn.ReLU(), nn.Dropout(0.1))
        self.heads = nn.ModuleDict({name: nn.Linear(128, k) for name, k in HEADS.items()})
        self.up16 = _conv(3 * w + 2 * w, int(1.5 * w))
        self.up32 = _conv(int(1.5 * w) + int(1.5 * w), w)
        self.mask_out = nn.Conv2d(w, 1, 1)

    def forward(self, x):
        b = x.shape[0]
        g = torch.linspace(-1.0, 1.0, x.shape[-1], device=x.device, dtype=x.dtype)
        gy, gx = torch.meshgrid(g, g, indexing="ij")
        coords = torch.stack([gx, gy])[None].expand(b, -1, -1, -1)
        x = torch.cat([(x - 0.5) * 2.0, coords], 1)
        f32 = self.b32(self.stem(x))
        f16 = self.b16(f32)
        f8 = self.b8(f16)
        h = torch.cat([f8.mean((2, 3)), self.squeeze(f8).flatten(1)], 1)
        h = self.fc(h)
        logits = {name: head(h) for name, head in self.heads.items()}
        u = self.up16(torch.cat([F.interpolate(f8, scale_factor=2.0, mode="nearest"), f16], 1))
        u = self.up32(torch.cat([F.interpolate(u, scale_factor=2.0, mode="nearest"), f32], 1))
        logits["mask"] = self.mask_out(u)[:, 0]  # [B, 32, 32]
        return logits


# ----------------------------------------------------------------------------------------------------------------
# Augmentation (batched, deterministic from a torch.Generator)

def _gaussian_blur(x, sigma):
    """Per-image Gaussian blur; ``sigma`` [B] (0 = none)."""
    b, c, h, w = x.shape
    radius = 3
    t = torch.arange(-radius, radius + 1, dtype=x.dtype)
    s = sigma.clamp(min=1e-3)[:, None]
    k = torch.exp(-0.5 * (t[None] / s) ** 2)
    k = k / k.sum(1, keepdim=True)                                   # [B, 7]
    k = k.repeat_interleave(c, 0)                                    # [B*C, 7]
    y = x.reshape(1, b * c, h, w)
    y = F.pad(y, (radius, radius, radius, radius), mode="reflect")
    y = F.conv2d(y, k[:, None, None, :], groups=b * c)
    y = F.conv2d(y, k[:, None, :, None], groups=b * c)
    return y.reshape(b, c, h, w)


def augment(x, mask, g, strength=1.0):
    """x [B, 3, 64, 64] in [0, 1], mask [B, 64, 64]; returns augmented copies (shift applies to both)."""
    b = x.shape[0]

    def u(lo, hi, *shape):
        return lo + (hi - lo) * torch.rand(*(shape or (b,)), generator=g)

    # shift by up to 2 px (edge padding)
    dx, dy = torch.randint(-2, 3, (2,), generator=g).tolist()
    if dx or dy:
        pad = 2
        xp = F.pad(x, (pad, pad, pad, pad), mode="replicate")
        mp = F.pad(mask[:, None], (pad, pad, pad, pad), mode="replicate")[:, 0]
        x = xp[:, :, pad + dy:pad + dy + 64, pad + dx:pad + dx + 64]
        mask = mp[:, pad + dy:pad + dy + 64, pad + dx:pad + dx + 64]
    # colour jitter
    s = strength
    x = x * u(1 - 0.15 * s, 1 + 0.15 * s)[:, None, None, None]
    mean = x.mean((1, 2, 3), keepdim=True)
    x = (x - mean) * u(1 - 0.2 * s, 1 + 0.2 * s)[:, None, None, None] + mean
    grey = x.mean(1, keepdim=True)
    x = (x - grey) * u(1 - 0.25 * s, 1 + 0.2 * s)[:, None, None, None] + grey
    x = x * u(1 - 0.06 * s, 1 + 0.06 * s, b, 3)[:, :, None, None]
    # blur (70 %), soft down/up-sampling (20 %)
    sigma = u(0.0, 1.3 * s) * (torch.rand(b, generator=g) < 0.7)
    x = torch.where((sigma > 0.05)[:, None, None, None], _gaussian_blur(x, sigma), x)
    soft = torch.rand(b, generator=g) < 0.2
    if soft.any():
        y = F.interpolate(F.interpolate(x, scale_factor=0.5, mode="bilinear", antialias=True), size=64,
                          mode="bilinear")
        x = torch.where(soft[:, None, None, None], y, x)
    # noise
    x = x + u(0.0, 0.06 * s)[:, None, None, None] * torch.randn(x.shape, generator=g)
    return x.clamp(0, 1), mask


# ----------------------------------------------------------------------------------------------------------------
# Training

def _to_input(images_uint8):
    return torch.from_numpy(np.ascontiguousarray(images_uint8)).permute(0, 3, 1, 2).float() / 255.0


def _loss(logits, labels, mask32):
    loss = sum(F.cross_entropy(logits[a], labels[a]) for a in HEADS)
    return loss + F.binary_cross_entropy_with_logits(logits["mask"], mask32), loss


CONFIGS = {
    "full": {"width": 24, "train": 10000, "val": 1000, "test": 2000, "steps": 1000, "batch": 48, "lr": 3e-3},
    "reduced": {"width": 16, "train": 2000, "val": 300, "test": 600, "steps": 300, "batch": 48, "lr": 3e-3},
}


def train_judge(out_dir, seed=0, reduced=False, minutes=None, world_seed=0, steps=None):
    """Train the judge; resumable from <out_dir>/judge.ckpt; writes judge.safetensors and judge.json (config and
    held-out accuracies). Returns the report dict."""
    cfg = dict(CONFIGS["reduced" if reduced else "full"])
    if steps:
        cfg["steps"] = int(steps)
    torch.manual_seed(seed)
    data = loop.rendered(out_dir, "train", cfg["train"], world_seed)
    x_all = _to_input(data["images"])
    m_all = torch.from_numpy(data["masks"]).float() / 255.0
    y_all = {a: torch.from_numpy(v) for a, v in data["labels"].items()}
    n = len(x_all)

    model = Judge(cfg["width"])
    opt = torch.optim.AdamW(model.parameters(), lr=cfg["lr"], weight_decay=1e-4)
    total = cfg["steps"]
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg["lr"], total_steps=total, pct_start=0.1)
    ckpt_path = os.path.join(out_dir, "judge.ckpt")
    step, _ = loop.resume(ckpt_path, "judge", model, opt, sched)
    deadline = loop.Deadline(minutes)
    bar = loop.Progress(total, step, "judge")
    t0, last_save = time.time(), time.time()
    model.train()
    while step < total and not deadline.passed():
        rng = loop.step_rng(seed, step, 1)
        idx = torch.from_numpy(rng.choice(n, cfg["batch"], replace=False))
        g = loop.torch_generator(seed, step, 1)
        x, m = augment(x_all[idx], m_all[idx], g)
        m32 = F.avg_pool2d(m[:, None], 2)[:, 0]
        logits = model(x)
        loss, cls = _loss(logits, {a: v[idx] for a, v in y_all.items()}, m32)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        step += 1
        bar.update(1, loss=loss.item(), cls=cls.item())
        if time.time() - last_save > 120 or step == total:
            loop.atomic_save({"model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(),
                              "step": step}, ckpt_path)
            last_save = time.time()
    bar.close()
    loop.atomic_save({"model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(),
                      "step": step}, ckpt_path)
    model.eval()
    report = {"steps": step, "steps_planned": total, "config": cfg, "seed": seed, "world_seed": world_seed,
              "train_seconds_this_run": round(time.time() - t0, 1)}
    for split in ("val", "test"):
        d = loop.rendered(out_dir, split, cfg[split], world_seed)
        report[split] = evaluate_on(model, d)
        report[split + "_augmented"] = evaluate_on(model, d, augment_seed=seed + 1000)
    save_judge(model, cfg["width"], os.path.join(out_dir, "judge.safetensors"), report)
    loop.log(f"judge held-out (test split): {report['test']}")
    return report


def save_judge(model, width, path, report=None):
    from safetensors.torch import save_file
    meta = {"format": "p2pz world judge", "width": str(width), "heads": json.dumps(HEADS)}
    sd = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    loop.atomic_save(sd, path, lambda o, tmp: save_file(o, tmp, metadata=meta))
    if report is not None:
        loop.atomic_save_json(report, os.path.splitext(path)[0] + ".json")


def load_judge(path) -> Judge:
    from safetensors import safe_open
    from safetensors.torch import load_file
    with safe_open(path, "pt") as f:
        meta = f.metadata() or {}
    model = Judge(int(meta.get("width", 32)))
    model.load_state_dict(load_file(path))
    return model.eval()


@torch.no_grad()
def predict(judge, images, batch_size=256):
    """Read images: [B, 64, 64, 3] (ComfyUI IMAGE) or [B, 3, 64, 64], float in [0, 1] (uint8 arrays accepted).
    Returns {attr: [names], "index": {attr: LongTensor}, "probs": {attr: [B, k]}, "mask": [B, 64, 64] in [0, 1]}."""
    x = torch.as_tensor(np.asarray(images) if not isinstance(images, torch.Tensor) else images)
    if x.dtype == torch.uint8:
        x = x.float() / 255.0
    x = x.float()
    if x.shape[-1] == 3 and x.shape[1] != 3:
        x = x.permute(0, 3, 1, 2)
    if x.shape[-1] != 64:
        x = F.interpolate(x, size=(64, 64), mode="bilinear", antialias=True)
    judge.eval()
    probs = {a: [] for a in HEADS}
    masks = []
    for i in range(0, len(x), batch_size):
        out = judge(x[i:i + batch_size].clamp(0, 1))
        for a in HEADS:
            probs[a].append(out[a].softmax(-1))
        masks.append(torch.sigmoid(F.interpolate(out["mask"][:, None], size=(64, 64), mode="bilinear"))[:, 0])
    res = {"probs": {a: torch.cat(p) for a, p in probs.items()}, "mask": torch.cat(masks)}
    res["index"] = {a: p.argmax(-1) for a, p in res["probs"].items()}
    for a, values in render.ATTRIBUTES.items():
        res[a] = [values[i] for i in res["index"][a].tolist()]
    return res


def mask_iou(a, b, threshold=0.5):
    a, b = torch.as_tensor(a) > threshold, torch.as_tensor(b) > threshold
    inter = (a & b).flatten(1).sum(1).float()
    union = (a | b).flatten(1).sum(1).float()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(inter))


@torch.no_grad()
def evaluate_on(judge, data, augment_seed=None):
    """Accuracy per attribute and mean mask IoU on a rendered set (loop.rendered / render.batch arrays);
    ``augment_seed``: read augmented copies (the judge's training degradations) instead."""
    x = _to_input(data["images"])
    m = torch.from_numpy(data["masks"]).float() / 255.0
    if augment_seed is not None:
        x, m = augment(x, m, loop.torch_generator(augment_seed, 0, 9))
    out = predict(judge, x)
    res = {a: round(float((out["index"][a].numpy() == data["labels"][a]).mean()), 4) for a in HEADS}
    res["mask_iou"] = round(float(mask_iou(out["mask"], m).mean()), 4)
    res["n"] = int(len(x))
    return res
