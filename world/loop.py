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
