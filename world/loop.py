"""What every trainer of the world shares (plain torch): seeding, atomic resumable checkpoints, a progress bar,
deadlines, cached datasets of renders.

Resumption without RNG state: every step's randomness (which samples, augmentation, noise, timesteps) is drawn from
generators seeded by (seed, step), so a run stopped after step k and resumed computes exactly what an uninterrupted
run computes (up to the CPU's floating-point repeatability).
"""

from __future__ import annotations

import json
import os
import sys
import time
import uuid

import numpy as np

from . import render


def step_rng(seed, step, stream=0):
    """numpy Generator for one step of one stream."""
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([int(seed), int(stream), int(step)])))


def torch_generator(seed, step, stream=0):
    import torch
    g = torch.Generator()
    g.manual_seed(int(np.random.SeedSequence([int(seed), int(stream), int(step), 7]).generate_state(1)[0]))
    return g


def atomic_save(obj, path, saver=None):
    """Write ``obj`` to ``path`` through a temporary file in the same folder and os.replace (never half a file).
    ``saver(obj, tmp_path)``: default torch.save."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".{os.path.basename(path)}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        if saver is None:
            import torch
            torch.save(obj, tmp)
        else:
            saver(obj, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def atomic_save_json(obj, path):
    def saver(o, tmp):
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(o, f, indent=2, sort_keys=True)
            f.write("\n")
    return atomic_save(obj, path, saver)


def load_state(path):
    """The checkpoint at ``path`` or None (tensors, numbers, strings and containers only: weights_only)."""
    if not os.path.isfile(path):
        return None
    import torch
    return torch.load(path, map_location="cpu", weights_only=True)


def resume(path, name, model, opt, sched=None):
    """Load the training state at ``path`` into model, optimizer (and scheduler); returns (step, state), (0, None)
    when there is none."""
    state = load_state(path)
    if state is None:
        return 0, None
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["opt"])
    if sched is not None:
        sched.load_state_dict(state["sched"])
    log(f"{name}: resumed at step {state['step']}")
    return state["step"], state


class Progress:
    """tqdm when installed, else a line every ``every_s`` seconds; ``update(n, **postfix)``."""

    def __init__(self, total, initial=0, desc="", every_s=30.0):
        self.total, self.n, self.desc, self.every_s = total, initial, desc, every_s
        self.t0, self.last = time.time(), 0.0
        self.postfix = {}
        try:
            from tqdm import tqdm
            self.bar = tqdm(total=total, initial=initial, desc=desc, dynamic_ncols=True, mininterval=5.0,
                            file=sys.stderr)
        except ImportError:
            self.bar = None

    def update(self, n=1, **postfix):
        self.n += n
        self.postfix = {k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in postfix.items()}
        if self.bar is not None:
            if postfix:
                self.bar.set_postfix(self.postfix, refresh=False)
            self.bar.update(n)
            return
        now = time.time()
        if now - self.last >= self.every_s or self.n >= self.total:
            self.last = now
            rate = (now - self.t0) / max(self.n, 1)
            print(f"{self.desc} {self.n}/{self.total} ({rate:.2f} s/it) {self.postfix}", flush=True)

    def close(self):
        if self.bar is not None:
            self.bar.close()


class Deadline:
    def __init__(self, minutes):
        self.end = None if not minutes else time.time() + 60.0 * float(minutes)

    def passed(self):
        return self.end is not None and time.time() >= self.end


def log(msg):
    print(f"[world {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def rendered(out_dir, split, count, seed, start=0):
    """Renders ``start .. start + count`` of ``split`` as arrays (render.batch), cached in
    ``<out_dir>/data/<split>-<seed>-<start>-<count>.npz`` (images and masks uint8)."""
    path = os.path.join(out_dir, "data", f"{split}-{seed}-{start}-{count}.npz")
    if not os.path.isfile(path):
        # a larger cached set of the same split, seed and start holds these images as its first ``count``
        folder = os.path.dirname(path)
        prefix = f"{split}-{seed}-{start}-"
        for name in sorted(os.listdir(folder)) if os.path.isdir(folder) else ():
            if name.startswith(prefix) and name.endswith(".npz") and name[len(prefix):-4].isdigit() \
                    and int(name[len(prefix):-4]) >= count:
                path = os.path.join(folder, name)
                break
    if os.path.isfile(path):
        z = np.load(path, allow_pickle=False)
        labels = {a: z[f"label_{a}"][:count] for a in render.ATTRIBUTES}
        return {"images": z["images"][:count], "masks": z["masks"][:count], "labels": labels,
                "captions": [str(c) for c in z["captions"][:count]], "templates": z["templates"][:count]}
    log(f"rendering {count} {split} images (seed {seed}) -> {path}")
    t0 = time.time()
    b = render.batch(range(start, start + count), split, seed)
    arrays = {"images": b["images"], "masks": b["masks"], "captions": np.array(b["captions"]),
              "templates": b["templates"]}
    arrays.update({f"label_{a}": v for a, v in b["labels"].items()})

    def saver(obj, tmp):
        with open(tmp, "wb") as f:
            np.savez(f, **obj)
    atomic_save(arrays, path, saver)
    log(f"rendered in {time.time() - t0:.0f} s")
    b.pop("attributes")
    return b


def train_ema(name, net, cfg, out_dir, seed, loss_at, export, minutes=None, report_extra=None):
    """The loop every diffusion trainer of the world runs: AdamW (weight decay 0.01) at cfg["lr"] with cfg["warmup"]
    warm-up steps and a cosine decay to a tenth over cfg["steps"], gradient norm clipped at 1, an EMA of the weights
    (decay cfg["ema"], ramped up over the first 100 steps), resumable from <out_dir>/<name>.ckpt (saved every 5
    minutes and at the end), the EMA exported every cfg["export_every_s"] seconds as a preview.

    ``loss_at(step)`` returns the step's loss (its randomness drawn from step_rng / torch_generator of the step);
    ``export(ema_state, step, final)`` writes a checkpoint of the EMA weights and returns its path (``net`` keeps
    its live weights). ``minutes`` caps the wall time. The report of this run (plus ``report_extra``) is written
    beside the exported checkpoint (.json) and returned."""
    import math

    import torch
    params = [p for p in net.parameters() if p.requires_grad]
    log(f"{name}: {sum(p.numel() for p in params) / 1e6:.1f} M parameters")
    net.train()
    ema = {k: v.detach().clone() for k, v in net.state_dict().items()}
    opt = torch.optim.AdamW(params, lr=cfg["lr"], weight_decay=0.01)
    total = cfg["steps"]

    def lr_at(step):
        if step < cfg["warmup"]:
            return cfg["lr"] * (step + 1) / cfg["warmup"]
        p = (step - cfg["warmup"]) / max(1, total - cfg["warmup"])
        return cfg["lr"] * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(p, 1.0))))

    ckpt_path = os.path.join(out_dir, f"{name}.ckpt")
    step, state = resume(ckpt_path, name, net, opt)
    if state is not None:
        ema = state["ema"]

    def save():
        atomic_save({"model": net.state_dict(), "opt": opt.state_dict(), "ema": ema, "step": step}, ckpt_path)

    def export_ema(final):
        live = {k: v.clone() for k, v in net.state_dict().items()}
        path = export(ema, step, final)
        net.load_state_dict(live)
        return path

    deadline = Deadline(minutes)
    bar = Progress(total, step, name)
    t0, last_save, last_export = time.time(), time.time(), time.time()
    times = []
    while step < total and not deadline.passed():
        ts = time.time()
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        loss = loss_at(step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        step += 1
        with torch.no_grad():
            d = cfg["ema"] if step > 100 else min(cfg["ema"], (1 + step) / (10 + step))
            for k, v in net.state_dict().items():
                if v.is_floating_point():
                    ema[k].mul_(d).add_(v.detach(), alpha=1 - d)
                else:
                    ema[k].copy_(v)
        times.append(time.time() - ts)
        bar.update(1, loss=loss.item(), lr=lr_at(step))
        if time.time() - last_save > 300:
            save()
            last_save = time.time()
        if time.time() - last_export > cfg["export_every_s"]:
            log(f"exported {export_ema(False)} at step {step}")
            last_export = time.time()
    bar.close()
    save()
    path = export_ema(step >= total)
    report = dict({"steps": step, "steps_planned": total, "seconds_this_run": round(time.time() - t0, 1),
                   "median_step_s": round(float(np.median(times)), 3) if times else None, "checkpoint": path},
                  **(report_extra or {}))
    atomic_save_json(report, os.path.splitext(path)[0] + ".json")
    log(f"{name}: {report}")
    return report
