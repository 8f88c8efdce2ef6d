"""Training a student on a pair dataset: seeded, with progress, periodic atomic checkpoints, resume, held-out L1.

Run layout (`output_dir`)::

    <name>-step000500.safetensors              a student (load it in ComfyUI): weights + metadata
    train_state/<name>-step000500.safetensors  what resuming needs: discriminator, both Adam states, the data RNG

Files are written atomically and never overwritten. The last checkpoint (step == steps) is the trained student.
Resuming from a checkpoint continues the same run: on the same machine and thread count the result equals an
uninterrupted run bit for bit (every random draw comes from one saved torch.Generator; Adam's state is saved).
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import time
from collections.abc import Callable

import torch

from .student import (
    GAN_LOSSES,
    TRAIN_STATE_FORMAT,
    LaplacianPyramidLoss,
    PatchDiscriminator,
    StudentConfig,
    StudentFileError,
    apply_student,
    atomic_save_safetensors,
    build_student,
    discriminator_loss,
    generator_adversarial_loss,
    l1_loss,
    load_student,
    save_student,
)
from .files import check_name
from .student_data import Augment, PairDataset, held_out_split, sample_batch

STATE_DIR = "train_state"


@dataclasses.dataclass
class TrainOptions:
    """Hyper-parameters of a run. Defaults follow pix2pix/pix2pixHD practice at a batch that fits a consumer GPU
    (the paper: batch 64, learning rate 0.001, L1 + LPIPS)."""

    steps: int = 5000
    batch_size: int = 8
    resolution: int = 256          # training crop (a multiple of the student's size_multiple)
    load_size: int | None = None   # pairs resized so the shorter side is this (None: as stored); >= resolution
    lr: float = 2e-4
    beta1: float = 0.5
    beta2: float = 0.999
    lambda_l1: float = 10.0
    lambda_perceptual: float = 1.0
    lambda_adv: float = 0.1        # 0 turns the discriminator off
    adv_start: int = 0             # steps of L1 (+ perceptual) only before the adversarial term starts
    gan_loss: str = "lsgan"
    disc_channels: int = 32
    disc_layers: int = 3
    checkpoint_every: int = 1000   # 0: only the final checkpoint
    held_out_fraction: float = 0.05
    seed: int = 0
    augment: Augment = dataclasses.field(default_factory=Augment)
    student: StudentConfig = dataclasses.field(default_factory=StudentConfig)

    def validate(self):
        m = self.student.size_multiple
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError("steps and batch_size must be at least 1")
        if self.resolution < m or self.resolution % m:
            raise ValueError(f"resolution {self.resolution} must be a positive multiple of {m} (the student's "
                             f"downsampling factor)")
        if self.load_size is not None and self.load_size < self.resolution:
            raise ValueError(f"load_size {self.load_size} is smaller than the {self.resolution} px crop")
        if self.gan_loss not in GAN_LOSSES:
            raise ValueError(f"gan_loss must be one of {GAN_LOSSES}, got {self.gan_loss!r}")
        if self.lambda_adv > 0 and self.resolution < 2 ** (self.disc_layers + 1):
            raise ValueError(f"a {self.disc_layers}-layer discriminator needs crops of at least "
                             f"{2 ** (self.disc_layers + 1)} px")
        if self.checkpoint_every < 0:
            raise ValueError("checkpoint_every must be >= 0")

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["student"] = self.student.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict) -> TrainOptions:
        d = dict(d)
        d["augment"] = Augment(**d.get("augment", {}))
        d["student"] = StudentConfig.from_dict(d.get("student", {}))
        return cls(**d)


@dataclasses.dataclass
class TrainResult:
    student_path: str
    steps: int
    held_out_l1: float | None      # mean |student(input) - edited| over held-out pairs, [0, 1] units
    identity_l1: float | None      # the same for the input itself (what doing nothing scores)
    held_out_pairs: int
    checkpoints: list


# ----------------------------------------------------------------------------------------------------------------
# Checkpoint files
# ----------------------------------------------------------------------------------------------------------------

_STEP_RE = re.compile(r"^(?P<name>.+)-step(?P<step>\d{6,})\.safetensors$")


def checkpoint_name(name: str, step: int) -> str:
    return f"{name}-step{step:06d}.safetensors"


def parse_checkpoint_name(filename: str) -> tuple[str, int] | None:
    """(run name, step) of a checkpoint file name, or None."""
    m = _STEP_RE.match(os.path.basename(filename))
    return (m.group("name"), int(m.group("step"))) if m else None


def find_checkpoints(output_dir: str, name: str) -> list[tuple[int, str]]:
    """(step, path) of the student checkpoints of run `name` in `output_dir`, by step."""
    out = []
    if os.path.isdir(output_dir):
        for f in os.listdir(output_dir):
            m = _STEP_RE.match(f)
            if m and m.group("name") == name:
                out.append((int(m.group("step")), os.path.join(output_dir, f)))
    return sorted(out)


def state_path_for(student_path: str) -> str:
    return os.path.join(os.path.dirname(student_path), STATE_DIR, os.path.basename(student_path))


def _optimizer_tensors(prefix: str, opt: torch.optim.Optimizer) -> tuple[dict, dict]:
    sd = opt.state_dict()
    tensors = {}
    for pid, st in sd["state"].items():
        for k, v in st.items():
            tensors[f"{prefix}.state.{pid}.{k}"] = v if torch.is_tensor(v) else torch.tensor(v)
    return tensors, {"param_groups": sd["param_groups"]}


def _load_optimizer(prefix: str, opt: torch.optim.Optimizer, tensors: dict, meta: dict) -> None:
    state: dict = {}
    for key, v in tensors.items():
        if key.startswith(prefix + ".state."):
            pid, k = key[len(prefix) + 7:].split(".", 1)
            state.setdefault(int(pid), {})[k] = v
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def _save_train_state(path, *, step, disc, opt_g, opt_d, generator, options, split, run_meta):
    tensors = {f"disc.{k}": v for k, v in disc.state_dict().items()} if disc is not None else {}
    tg, mg = _optimizer_tensors("opt_g", opt_g)
    tensors.update(tg)
    meta_d = {}
    if opt_d is not None:
        td, meta_d = _optimizer_tensors("opt_d", opt_d)
        tensors.update(td)
    tensors["rng_state"] = generator.get_state()
    metadata = {
        "format": TRAIN_STATE_FORMAT,
        "step": str(step),
        "options": json.dumps(options.to_dict(), sort_keys=True),
        "opt_g": json.dumps(mg),
        "opt_d": json.dumps(meta_d),
        "held_out": json.dumps(split),
        "run": json.dumps(run_meta, sort_keys=True),
    }
    atomic_save_safetensors(tensors, path, metadata)


def _read_train_state(path: str):
    from safetensors import safe_open

    if not os.path.isfile(path):
        raise FileNotFoundError(f"training state {path} not found: resuming needs the train_state/ file written "
                                "next to each checkpoint")
    try:
        with safe_open(path, framework="pt", device="cpu") as f:
            meta = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not iterable)
    except Exception as e:
        raise StudentFileError(f"{path} is not a readable training state ({type(e).__name__}: {e})") from e
    if meta.get("format") != TRAIN_STATE_FORMAT:
        raise StudentFileError(f"{path} is not a student training state")
    return meta, tensors


# ----------------------------------------------------------------------------------------------------------------
# Evaluation
# ----------------------------------------------------------------------------------------------------------------

@torch.no_grad()
def held_out_l1(model, dataset: PairDataset, positions: list[int], device="cpu") -> tuple[float, float]:
    """(student L1, identity L1): mean absolute error against the edited images over whole held-out pairs
    (any size: apply_student pads), in [0, 1] units, averaged per image."""
    if not positions:
        return float("nan"), float("nan")
    was_training = model.training
    model.eval()
    errs, ident = [], []
    for p in positions:
        a, b = dataset[p]
        x, y = a[None].float().div(255).to(device), b[None].float().div(255).to(device)
        errs.append((apply_student(model, x) - y).abs().mean().item())
        ident.append((x - y).abs().mean().item())
    model.train(was_training)
    return sum(errs) / len(errs), sum(ident) / len(ident)


# ----------------------------------------------------------------------------------------------------------------
# The loop
# ----------------------------------------------------------------------------------------------------------------

ProgressFn = Callable[[int, int, dict], None]


@dataclasses.dataclass
class _ResumePoint:
    """Where a run starts: its options, step, and (when resuming) the saved state and the student file."""

    options: TrainOptions
    step: int = 0
    meta: dict | None = None
    tensors: dict | None = None
    student_path: str | None = None


def _resume_point(output_dir: str, name: str, options: TrainOptions, resume: str | None) -> _ResumePoint:
    """A fresh start (refused when checkpoints of `name` exist: files are never overwritten), or the state of the
    checkpoint `resume` ("latest": the newest), whose options are kept except `steps` and `checkpoint_every`."""
    if not resume:
        if find_checkpoints(output_dir, name):
            raise FileExistsError(f"{output_dir} already holds checkpoints of {name!r}: resume them (--resume "
                                  "latest) or choose another name or output folder (files are never overwritten)")
        return _ResumePoint(options)
    path = resume
    if resume == "latest":
        found = find_checkpoints(output_dir, name)
        if not found:
            raise FileNotFoundError(f"no checkpoints of {name!r} in {output_dir} to resume from")
        path = found[-1][1]
    meta, tensors = _read_train_state(state_path_for(path))
    stored = TrainOptions.from_dict(json.loads(meta["options"]))
    options = dataclasses.replace(stored, steps=options.steps, checkpoint_every=options.checkpoint_every)
    step = int(meta["step"])
    if options.steps < step:
        raise ValueError(f"{path} is at step {step}; steps ({options.steps}) must not be lower")
    later = [p for s, p in find_checkpoints(output_dir, name) if s > step]
    if later:
        raise FileExistsError(f"{output_dir} already holds later checkpoints of {name!r} "
                              f"({os.path.basename(later[0])}, ...): resume the latest one, or resume into another "
                              "output folder (files are never overwritten)")
    return _ResumePoint(options, step, meta, tensors, path)


def _split_pairs(dataset: PairDataset, dataset_dir: str, options: TrainOptions, start: _ResumePoint):
    """(training positions, held-out positions): a resumed run keeps its own held-out pairs."""
    if start.meta is not None:
        held = json.loads(start.meta["held_out"])
        known = {dataset.index_of(i): i for i in range(len(dataset))}
        missing = [i for i in held if i not in known]
        if missing:
            raise ValueError(f"held-out pairs {missing[:5]} of this run are gone from {dataset_dir}")
        val_pos = [known[i] for i in held]
        train_pos = [i for i in range(len(dataset)) if i not in set(val_pos)]
    else:
        train_pos, val_pos = held_out_split(len(dataset), options.held_out_fraction, options.seed)
    if not train_pos:
        raise ValueError("no training pairs left after holding out pairs for evaluation")
    return train_pos, val_pos


@dataclasses.dataclass
class _Networks:
    """The generator, the discriminator (None without the adversarial loss), their optimizers and the batch RNG."""

    gen: torch.nn.Module
    disc: torch.nn.Module | None
    opt_g: torch.optim.Optimizer
    opt_d: torch.optim.Optimizer | None
    rng: torch.Generator


def _build_networks(options: TrainOptions, device, start: _ResumePoint, log) -> _Networks:
    """Seeded networks and optimizers; a resumed run gets its saved weights, optimizer moments and RNG back, so it
    continues bit for bit as if never stopped."""
    gen = build_student(options.student, seed=options.seed).to(device).train()
    disc = None
    if options.lambda_adv > 0:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(options.seed + 1)
            disc = PatchDiscriminator(options.disc_channels, options.disc_layers)
        disc = disc.to(device).train()
    betas = (options.beta1, options.beta2)
    opt_g = torch.optim.Adam(gen.parameters(), lr=options.lr, betas=betas)
    opt_d = torch.optim.Adam(disc.parameters(), lr=options.lr, betas=betas) if disc is not None else None
    nets = _Networks(gen, disc, opt_g, opt_d, torch.Generator().manual_seed(options.seed))
    if start.meta is not None:
        loaded, _ = load_student(start.student_path)
        gen.load_state_dict(loaded.state_dict())
        if disc is not None:
            disc.load_state_dict({k[5:]: v for k, v in start.tensors.items() if k.startswith("disc.")})
            _load_optimizer("opt_d", opt_d, start.tensors, json.loads(start.meta["opt_d"]))
        _load_optimizer("opt_g", opt_g, start.tensors, json.loads(start.meta["opt_g"]))
        nets.rng.set_state(start.tensors["rng_state"])
        log(f"resumed {start.student_path} at step {start.step}")
    return nets


def _train_step(nets: _Networks, options: TrainOptions, inp, target, perceptual, adversarial: bool) -> dict:
    """One generator step (after one discriminator step when `adversarial`); returns the step's losses."""
    pred = nets.gen(inp)
    losses = {}
    if adversarial:
        nets.disc.requires_grad_(True)
        loss_d = discriminator_loss(nets.disc(inp, target), nets.disc(inp, pred.detach()), options.gan_loss)
        nets.opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        nets.opt_d.step()
        nets.disc.requires_grad_(False)
        losses["d"] = loss_d.item()
    loss_l1 = l1_loss(pred, target)
    loss_g = options.lambda_l1 * loss_l1
    losses["l1"] = loss_l1.item()
    if perceptual is not None and options.lambda_perceptual > 0:
        loss_p = perceptual(pred, target)
        loss_g = loss_g + options.lambda_perceptual * loss_p
        losses["perceptual"] = loss_p.item()
    if adversarial:
        loss_adv = generator_adversarial_loss(nets.disc(inp, pred), options.gan_loss)
        loss_g = loss_g + options.lambda_adv * loss_adv
        losses["g_adv"] = loss_adv.item()
    if not math.isfinite(loss_g.item()):
        raise FloatingPointError(f"the loss became {loss_g.item()}: lower the learning rate")
    nets.opt_g.zero_grad(set_to_none=True)
    loss_g.backward()
    nets.opt_g.step()
    return losses


def train_student(
    dataset_dir: str,
    output_dir: str,
    options: TrainOptions | None = None,
    *,
    name: str = "student",
    edit: str = "",
    resume: str | None = None,
    perceptual: torch.nn.Module | None = None,
    device: str | torch.device = "cpu",
    progress: ProgressFn | None = None,
    log: Callable[[str], None] | None = None,
) -> TrainResult:
    """Train (or resume) a student on the pairs in `dataset_dir`; checkpoints go to `output_dir`.

    options: hyper-parameters (ignored when resuming, except `steps` and `checkpoint_every`: a run keeps its
      settings, and `steps` may be raised to train longer).
    resume: a student checkpoint of this run (its train_state/ file must exist), or "latest" for the newest one
      in `output_dir`. Without it, `output_dir` must not already hold checkpoints of `name`.
    perceptual: the perceptual loss module (pred, target) -> scalar; default `LaplacianPyramidLoss`.
    progress(step, total, losses) is called after every step (raise from it to stop: the last checkpoint stays).
    Returns the final student's path and its held-out L1 next to the identity's.
    """
    log = log or (lambda s: None)
    device = torch.device(device)
    name = check_name(name, "run name")
    os.makedirs(output_dir, exist_ok=True)
    start = _resume_point(output_dir, name, options or TrainOptions(), resume)
    options = start.options
    options.validate()

    dataset = PairDataset(dataset_dir, load_size=options.load_size)
    train_pos, val_pos = _split_pairs(dataset, dataset_dir, options, start)
    split = [dataset.index_of(p) for p in val_pos]
    nets = _build_networks(options, device, start, log)
    if perceptual is None and options.lambda_perceptual > 0:
        perceptual = LaplacianPyramidLoss()
    if perceptual is not None:
        perceptual = perceptual.to(device)

    run_meta = {"name": name, "dataset": os.path.basename(os.path.normpath(dataset_dir)), "pairs": len(dataset),
                "held_out_pairs": len(val_pos)}
    checkpoints = []

    def checkpoint(step, held=None):
        path = os.path.join(output_dir, checkpoint_name(name, step))
        extra = {"seed": str(options.seed), "dataset": run_meta["dataset"], "pairs": str(len(dataset)),
                 "load_size": str(options.load_size or 0),
                 "train_options": json.dumps(options.to_dict(), sort_keys=True)}
        if held is not None:
            extra["held_out_l1"] = f"{held[0]:.6f}"
            extra["identity_l1"] = f"{held[1]:.6f}"
        # the state first: a student file on disk always has its state beside it
        _save_train_state(state_path_for(path), step=step, disc=nets.disc, opt_g=nets.opt_g, opt_d=nets.opt_d,
                          generator=nets.rng, options=options, split=split, run_meta=run_meta)
        save_student(path, nets.gen, edit=edit, resolution=options.resolution, training_steps=step, extra=extra)
        checkpoints.append(path)
        return path

    log(f"training {name!r}: {len(train_pos)} pairs ({len(val_pos)} held out), steps {start.step} -> "
        f"{options.steps}, batch {options.batch_size}, {options.resolution} px, {device}")
    smoothed: dict[str, float] = {}
    final_held = None
    t0 = time.perf_counter()
    for step in range(start.step + 1, options.steps + 1):
        inp, target = sample_batch(dataset, train_pos, options.batch_size, options.resolution, options.augment,
                                   nets.rng)
        try:
            losses = _train_step(nets, options, inp.to(device), target.to(device), perceptual,
                                 adversarial=nets.disc is not None and step > options.adv_start)
        except FloatingPointError as e:
            raise FloatingPointError(f"{e} (step {step})") from None
        for k, v in losses.items():
            smoothed[k] = v if k not in smoothed else 0.9 * smoothed[k] + 0.1 * v
        if progress is not None:
            progress(step, options.steps, dict(smoothed))
        if step == options.steps:
            final_held = held_out_l1(nets.gen, dataset, val_pos, device) if val_pos else None
            checkpoint(step, final_held)
        elif options.checkpoint_every and step % options.checkpoint_every == 0:
            checkpoint(step)

    final = os.path.join(output_dir, checkpoint_name(name, options.steps))
    if final_held is None and val_pos:  # resumed at the final step: nothing was trained, evaluate what is there
        final_held = held_out_l1(nets.gen, dataset, val_pos, device)
    log(f"done in {time.perf_counter() - t0:.1f} s: {final}")
    return TrainResult(student_path=final, steps=options.steps,
                       held_out_l1=final_held[0] if final_held else None,
                       identity_l1=final_held[1] if final_held else None,
                       held_out_pairs=len(val_pos), checkpoints=checkpoints)


def format_losses(losses):
    """{"l1": 0.1, ...} -> "l1 0.1000, ..." (sorted: the same order in every line)."""
    return ", ".join(f"{k} {v:.4f}" for k, v in sorted(losses.items())) or "n/a"


def training_report(path, start, steps, losses, result):
    """The lines Train Student shows under its node and logs: the file written (or found, when ``start`` already
    reached ``steps``), the last smoothed losses and, from a TrainResult, the held-out L1 against doing nothing."""
    lines = [f"student written: {path}" if start < steps else
             f"already trained to step {start} (raise steps to train longer): {path}"]
    if losses:
        lines.append(f"final loss (smoothed) at step {steps}: {format_losses(losses)}")
    if result is not None and result.held_out_l1 is not None:
        lines.append(f"held-out L1 over {result.held_out_pairs} pairs: {result.held_out_l1:.4f} "
                     + (f"(doing nothing scores {result.identity_l1:.4f}; lower is better)"
                        if result.identity_l1 is not None else "(lower is better)"))
    elif result is not None:
        lines.append("held-out L1: n/a (too few pairs to hold any out)")
    return lines
