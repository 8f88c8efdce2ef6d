"""The fast student of pix2pix-zero (paper section 5): an image-to-image network that applies one fixed edit.

The paper distils each edit into a conditional GAN (Co-Mod-GAN) trained on input/edited pairs made by the diffusion
editor, with L1 + LPIPS, and applies it in 0.018 s on an A100. No code or weights were released. Here:

- Generator (`StudentGenerator`, architecture ``p2pz-resunet``): a small fully convolutional U-Net that predicts a
  residual over the input image. Chosen instead of Co-Mod-GAN because (1) Co-Mod-GAN's mapping network and style
  co-modulation exist to sample diverse completions from a latent code; a distilled edit is one deterministic
  function of the input, so that machinery only costs time; (2) Co-Mod-GAN is a StyleGAN2 generator (tens of
  millions of parameters, modulated convolutions) far too slow for real time on a CPU; (3) predicting a residual
  over the input starts as the identity (the last layer is zero-initialised) and keeps the structure of the image
  by construction, which is what pix2pix-zero edits preserve. A pixel-unshuffle stem (space-to-depth, as real-time
  super-resolution networks use) puts the first convolutions at half resolution: at 512 px the default network has
  2.0M parameters and runs in about 60 ms on 2 CPU cores. No normalisation layers: a batch gives exactly the
  results of its images one by one, and the network behaves the same at every size.
- Discriminator (`PatchDiscriminator`): a conditional PatchGAN (pix2pix) on (input, output) pairs.
- Losses: L1 (weighted high), adversarial (LSGAN or hinge), and a perceptual term that needs no download:
  `LaplacianPyramidLoss` (Lap1, Bojanowski et al. 2018) by default, or `FeaturePerceptualLoss` on any feature
  extractor (e.g. the checkpoint's own VAE encoder via `HookedFeatures`), or LPIPS when the `lpips` package and its
  backbone weights are already on the machine (`lpips_loss_if_available`).
- Files: `save_student` / `load_student` (safetensors with metadata; the loader checks format, architecture, config
  and every tensor's shape, and explains what is wrong with any other file).

Images are float tensors [B, 3, H, W] in [0, 1] (ComfyUI's IMAGE is [B, H, W, 3]: the node permutes).
"""
from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .errors import ERROR_MODULE
from .files import atomic_write

ARCHITECTURE = "p2pz-resunet"
FILE_FORMAT = "p2pz-student"
FORMAT_VERSION = 1
TRAIN_STATE_FORMAT = "p2pz-student-train-state"


class StudentFileError(ValueError):
    """A file that is not a loadable student of this version (another model, corrupt, truncated, newer format)."""
    __module__ = ERROR_MODULE  # a clean name in ComfyUI's error report (core/errors.py)


# ----------------------------------------------------------------------------------------------------------------
# Networks
# ----------------------------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class StudentConfig:
    """Shape of a `StudentGenerator`. Stored as JSON in every student file; the loader rebuilds the network from it.

    base_channels: channels at the first level (after the pixel-unshuffle stem, at 1/unshuffle resolution).
    channel_mult: channel multiplier per level; each level after the first halves the resolution.
    num_res_blocks: residual blocks at the coarsest level (they give the receptive field for semantic edits).
    unshuffle: space-to-depth factor of the stem (1 = none).
    """

    base_channels: int = 16
    channel_mult: tuple[int, ...] = (1, 2, 4, 8)
    num_res_blocks: int = 6
    unshuffle: int = 2

    def __post_init__(self):
        object.__setattr__(self, "channel_mult", tuple(int(m) for m in self.channel_mult))
        if not (1 <= self.base_channels <= 1024):
            raise ValueError(f"base_channels must be in 1..1024, got {self.base_channels}")
        if not self.channel_mult or any(m < 1 for m in self.channel_mult) or len(self.channel_mult) > 8:
            raise ValueError(f"channel_mult must be 1 to 8 positive integers, got {self.channel_mult}")
        if not (0 <= self.num_res_blocks <= 64):
            raise ValueError(f"num_res_blocks must be in 0..64, got {self.num_res_blocks}")
        if not (1 <= self.unshuffle <= 8):
            raise ValueError(f"unshuffle must be in 1..8, got {self.unshuffle}")

    @property
    def size_multiple(self) -> int:
        """Height and width the network itself needs to be multiples of (apply_student pads to it)."""
        return self.unshuffle * 2 ** (len(self.channel_mult) - 1)

    def to_dict(self) -> dict:
        return {"base_channels": self.base_channels, "channel_mult": list(self.channel_mult),
                "num_res_blocks": self.num_res_blocks, "unshuffle": self.unshuffle}

    @classmethod
    def from_dict(cls, d: dict) -> StudentConfig:
        if not isinstance(d, dict):
            raise TypeError(f"a student config is a JSON object, got {type(d).__name__}")
        unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown student config keys {sorted(unknown)} (written by a newer version?)")
        return cls(**d)


class _ResBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)  # each block starts as the identity: trains without normalisation layers
        nn.init.zeros_(self.conv2.bias)

    def forward(self, x):
        return x + self.conv2(F.relu(self.conv1(x)))


class StudentGenerator(nn.Module):
    """Residual U-Net: pixel-unshuffle stem -> strided-conv encoder -> residual blocks -> nearest-upsample decoder
    with additive skips -> pixel-shuffle head; output = input + predicted residual. Starts as the identity.

    forward(x) takes [B, 3, H, W] in [0, 1] with H and W multiples of `config.size_multiple` and returns the
    unclamped edited image; `apply_student` pads any size and clamps.
    """

    def __init__(self, config: StudentConfig | None = None):
        super().__init__()
        self.config = config = config or StudentConfig()
        ch = [config.base_channels * m for m in config.channel_mult]
        u = config.unshuffle
        self.stem = nn.Conv2d(3 * u * u, ch[0], 3, padding=1)
        self.down = nn.ModuleList(nn.Conv2d(ch[i], ch[i + 1], 3, stride=2, padding=1) for i in range(len(ch) - 1))
        self.mid = nn.Sequential(*(_ResBlock(ch[-1]) for _ in range(config.num_res_blocks)))
        self.up = nn.ModuleList(nn.Conv2d(ch[i + 1], ch[i], 3, padding=1) for i in reversed(range(len(ch) - 1)))
        self.head = nn.Conv2d(ch[0], 3 * u * u, 3, padding=1)
        nn.init.zeros_(self.head.weight)  # the untrained student is exactly the identity
        nn.init.zeros_(self.head.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self.config.size_multiple
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"the student takes RGB images [B, 3, H, W], got shape {tuple(x.shape)}")
        if x.shape[-2] % m or x.shape[-1] % m:
            raise ValueError(f"the student network needs height and width that are multiples of {m}, got "
                             f"{x.shape[-2]}x{x.shape[-1]}: use apply_student(), which pads and crops back")
        h = F.relu(self.stem(F.pixel_unshuffle(x * 2 - 1, self.config.unshuffle)))
        skips = []
        for conv in self.down:
            skips.append(h)
            h = F.relu(conv(h))
        h = self.mid(h)
        for conv in self.up:
            h = F.relu(conv(F.interpolate(h, scale_factor=2.0, mode="nearest"))) + skips.pop()
        return x + F.pixel_shuffle(self.head(h), self.config.unshuffle)


def build_student(config: StudentConfig | None = None, seed: int = 0) -> StudentGenerator:
    """A freshly initialised student (the identity map), weights deterministic from `seed`; global RNG untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return StudentGenerator(config)


class PatchDiscriminator(nn.Module):
    """Conditional PatchGAN (pix2pix): sees (input, image) stacked as 6 channels in [-1, 1] and scores every patch.

    num_layers stride-2 4x4 convolutions, then two stride-1 ones; no normalisation (LSGAN/hinge train stably
    without it at these sizes, and instance norm fails on the 1x1 maps of small crops). Inputs need at least
    2 ** num_layers * 2 pixels per side.
    """

    def __init__(self, base_channels: int = 32, num_layers: int = 3):
        super().__init__()
        layers, ch = [], 6
        for i in range(num_layers):
            out = base_channels * min(2 ** i, 8)
            layers += [nn.Conv2d(ch, out, 4, stride=2, padding=1), nn.LeakyReLU(0.2)]
            ch = out
        out = base_channels * min(2 ** num_layers, 8)
        layers += [nn.Conv2d(ch, out, 3, padding=1), nn.LeakyReLU(0.2), nn.Conv2d(out, 1, 3, padding=1)]
        self.net = nn.Sequential(*layers)
        self.num_layers = num_layers

    def forward(self, inp: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([inp, image], dim=1) * 2 - 1)


# ----------------------------------------------------------------------------------------------------------------
# Applying
# ----------------------------------------------------------------------------------------------------------------

def _pad_to_multiple(x: torch.Tensor, multiple: int):
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if not ph and not pw:
        return x, (0, 0)
    top, left = ph // 2, pw // 2
    pad = (left, pw - left, top, ph - top)
    # reflect keeps edge statistics natural; it needs the pad to be smaller than the side, else replicate
    mode = "reflect" if max(pad[0], pad[1]) < w and max(pad[2], pad[3]) < h else "replicate"
    return F.pad(x, pad, mode=mode), (top, left)


@torch.no_grad()
def apply_student(model: StudentGenerator, images: torch.Tensor, chunk_size: int | None = None) -> torch.Tensor:
    """Edit `images` [B, 3, H, W] in [0, 1] of any size: reflect-pad to the network's multiple, run, crop back,
    clamp to [0, 1]. Runs on the model's device, dtype and memory format; returns images.dtype on images.device.
    Images are independent (no normalisation layers), so chunking a batch changes nothing."""
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"apply_student takes RGB images [B, 3, H, W], got shape {tuple(images.shape)}")
    if images.shape[0] == 0 or images.shape[-1] == 0 or images.shape[-2] == 0:
        raise ValueError(f"empty image batch {tuple(images.shape)}")
    param = next(model.parameters())
    # a model converted with .to(memory_format=torch.channels_last) gets its input in that layout too (about 20%
    # faster on CPUs and tensor-core GPUs)
    layout = torch.channels_last if model.stem.weight.is_contiguous(memory_format=torch.channels_last) \
        and not model.stem.weight.is_contiguous() else torch.contiguous_format
    h, w = images.shape[-2:]
    outs = []
    step = chunk_size or images.shape[0]
    for start in range(0, images.shape[0], step):
        x = images[start:start + step].to(device=param.device, dtype=param.dtype)
        x, (top, left) = _pad_to_multiple(x, model.config.size_multiple)
        x = x.contiguous(memory_format=layout)
        y = model(x)[..., top:top + h, left:left + w].clamp(0, 1)
        outs.append(y.to(device=images.device, dtype=images.dtype))
    return torch.cat(outs) if len(outs) > 1 else outs[0]


# ----------------------------------------------------------------------------------------------------------------
# Losses
# ----------------------------------------------------------------------------------------------------------------

def l1_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return (pred - target).abs().mean()


GAN_LOSSES = ("lsgan", "hinge")


def discriminator_loss(d_real: torch.Tensor, d_fake: torch.Tensor, kind: str = "lsgan") -> torch.Tensor:
    """LSGAN (Mao et al. 2017, as pix2pixHD): 0.5 E[(D(real)-1)^2] + 0.5 E[D(fake)^2]; hinge: E[relu(1-D(real))]
    + E[relu(1+D(fake))]."""
    if kind == "lsgan":
        return 0.5 * ((d_real - 1) ** 2).mean() + 0.5 * (d_fake ** 2).mean()
    if kind == "hinge":
        return F.relu(1 - d_real).mean() + F.relu(1 + d_fake).mean()
    raise ValueError(f"unknown GAN loss {kind!r}; choose one of {GAN_LOSSES}")


def generator_adversarial_loss(d_fake: torch.Tensor, kind: str = "lsgan") -> torch.Tensor:
    if kind == "lsgan":
        return 0.5 * ((d_fake - 1) ** 2).mean()
    if kind == "hinge":
        return -d_fake.mean()
    raise ValueError(f"unknown GAN loss {kind!r}; choose one of {GAN_LOSSES}")


def _binomial_blur(x: torch.Tensor) -> torch.Tensor:
    k = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0], dtype=x.dtype, device=x.device) / 16
    c = x.shape[1]
    x = F.pad(x, (2, 2, 2, 2), mode="replicate")
    x = F.conv2d(x, k.view(1, 1, 1, 5).expand(c, 1, 1, 5), groups=c)
    return F.conv2d(x, k.view(1, 1, 5, 1).expand(c, 1, 5, 1), groups=c)


class LaplacianPyramidLoss(nn.Module):
    """Lap1 (Bojanowski et al. 2018, "Optimizing the Latent Space of Generative Networks"): L1 between Laplacian
    pyramids, each band's mean weighted equally, plus the coarsest low-pass. Needs no weights. Plain L1 is dominated
    by low frequencies and gives blurry students; Lap1 weighs edges and texture of every scale like the coarse
    colours, which is why it was proposed as a cheap perceptual loss. It is a weaker prior than LPIPS (no
    semantics), and the default because it needs nothing downloaded."""

    def __init__(self, levels: int = 4):
        super().__init__()
        self.levels = levels

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        x = pred - target  # the pyramid is linear: decompose the difference once
        total = x.new_zeros(())
        n = 0
        for _ in range(self.levels):
            if min(x.shape[-2:]) < 2:
                break
            low = F.avg_pool2d(_binomial_blur(x), 2)
            up = F.interpolate(low, size=x.shape[-2:], mode="bilinear", align_corners=False)
            total = total + (x - up).abs().mean()
            n += 1
            x = low
        return (total + x.abs().mean()) / (n + 1)


class HookedFeatures(nn.Module):
    """Feature extractor from any network: returns the outputs of the named submodules (in the given order) for
    an input in [0, 1], mapped to the range the network expects. The forward pass stops after the last requested
    layer, so only the needed part of e.g. a VAE encoder runs. The network is frozen (eval, no parameter grads)."""

    class _Stop(Exception):
        pass

    def __init__(self, network: nn.Module, layer_names: Sequence[str], input_range: tuple[float, float] = (-1.0, 1.0)):
        super().__init__()
        modules = dict(network.named_modules())
        missing = [n for n in layer_names if n not in modules]
        if missing or not layer_names:
            raise ValueError(f"no layers named {missing or list(layer_names)} in {type(network).__name__}; "
                             f"some of its layers: {list(modules)[1:12]}")
        self.network = network.eval().requires_grad_(False)
        self.layer_names = list(layer_names)
        self.input_range = input_range
        self._modules_by_name = {n: modules[n] for n in self.layer_names}

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        got: dict[str, torch.Tensor] = {}
        last = self.layer_names[-1]

        def hook_for(name):
            def hook(_module, _inputs, output):
                got[name] = output[0] if isinstance(output, (tuple, list)) else output
                if len(got) == len(self.layer_names):
                    raise HookedFeatures._Stop
            return hook

        handles = [m.register_forward_hook(hook_for(n)) for n, m in self._modules_by_name.items()]
        lo, hi = self.input_range
        try:
            self.network(x * (hi - lo) + lo)
        except HookedFeatures._Stop:
            pass
        finally:
            for h in handles:
                h.remove()
        if len(got) != len(self.layer_names):
            raise RuntimeError(f"layers {sorted(set(self.layer_names) - set(got))} never ran (last wanted: {last})")
        return [got[n] for n in self.layer_names]


def vae_encoder_features(encoder: nn.Module, num_levels: int = 3) -> HookedFeatures:
    """Features of a VAE encoder's first `num_levels` resolution levels, for `FeaturePerceptualLoss`.

    Knows diffusers' `Encoder` (AutoencoderKL.encoder: ``down_blocks.i``) and the LDM/ComfyUI `Encoder`
    (``down.i.block.j``, whose level modules have no forward of their own); input in [-1, 1] as both expect."""
    names = dict(encoder.named_modules())
    if "down_blocks.0" in names:  # diffusers
        levels = [f"down_blocks.{i}" for i in range(num_levels) if f"down_blocks.{i}" in names]
    elif "down.0.block.0" in names:  # CompVis / ComfyUI
        levels = []
        for i in range(num_levels):
            blocks = sorted(int(n.split(".")[3]) for n in names if n.startswith(f"down.{i}.block.") and n.count(".") == 3)
            if blocks:
                levels.append(f"down.{i}.block.{blocks[-1]}")
    else:
        raise ValueError(f"{type(encoder).__name__} is not a VAE encoder this pack knows (diffusers or LDM layout); "
                         "pass HookedFeatures(network, layer_names) yourself")
    return HookedFeatures(encoder, levels)


class FeaturePerceptualLoss(nn.Module):
    """LPIPS-style distance on any feature extractor (a callable image [0, 1] -> list of [B, C, H, W]): features
    are unit-normalised over channels, then the squared difference is averaged per layer and over layers (LPIPS
    with uniform instead of learned channel weights)."""

    def __init__(self, extractor: Callable[[torch.Tensor], Sequence[torch.Tensor]]):
        super().__init__()
        self.extractor = extractor

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        fp = self.extractor(pred)
        with torch.no_grad():
            ft = self.extractor(target)
        total = pred.new_zeros(())
        for a, b in zip(fp, ft):
            a = a / (a.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            b = b / (b.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            total = total + (a - b).pow(2).sum(1).mean()
        return total / max(len(fp), 1)


def lpips_loss_if_available(net: str = "alex") -> nn.Module | None:
    """LPIPS (Zhang et al. 2018), the paper's perceptual loss, only if the `lpips` package is installed AND its
    torchvision backbone weights are already in torch's hub cache (nothing is downloaded). None otherwise.
    The module maps [0, 1] images itself (normalize=True)."""
    try:
        import lpips  # optional; never a dependency of this pack
    except ImportError:
        return None
    backbone = {"alex": "alexnet-owt", "vgg": "vgg16-", "squeeze": "squeezenet1_1"}.get(net)
    ckpt_dir = os.path.join(torch.hub.get_dir(), "checkpoints")
    if backbone is None or not os.path.isdir(ckpt_dir) or not any(f.startswith(backbone) for f in os.listdir(ckpt_dir)):
        return None
    model = lpips.LPIPS(net=net, verbose=False).eval().requires_grad_(False)

    class _LPIPS(nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, pred, target):
            return self.model(pred, target, normalize=True).mean()

    return _LPIPS()


# ----------------------------------------------------------------------------------------------------------------
# Files
# ----------------------------------------------------------------------------------------------------------------

def atomic_save_safetensors(tensors: dict, path: str, metadata: dict[str, str], overwrite: bool = False) -> None:
    """Write a safetensors file through a temporary file in the same folder + os.replace. Refuses to replace an
    existing file unless `overwrite` (this pack never overwrites a user's file)."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().contiguous() for k, v in tensors.items()}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata), overwrite=overwrite)


def student_metadata(model: StudentGenerator, *, edit: str = "", resolution: int = 0, training_steps: int = 0,
                     extra: dict | None = None) -> dict[str, str]:
    """The metadata block of a student file (all strings, as safetensors requires)."""
    meta = {
        "format": FILE_FORMAT,
        "format_version": str(FORMAT_VERSION),
        "architecture": ARCHITECTURE,
        "config": json.dumps(model.config.to_dict(), sort_keys=True),
        "edit": str(edit),
        "resolution": str(int(resolution)),
        "training_steps": str(int(training_steps)),
        "size_multiple": str(model.config.size_multiple),
    }
    for k, v in (extra or {}).items():
        if k in meta:
            raise ValueError(f"metadata key {k!r} is reserved")
        meta[k] = v if isinstance(v, str) else json.dumps(v)
    return meta


def save_student(path: str, model: StudentGenerator, *, edit: str = "", resolution: int = 0, training_steps: int = 0,
                 extra: dict | None = None, overwrite: bool = False) -> str:
    """Save the generator's weights (as they are: bit exact) with metadata, atomically. Returns the path."""
    meta = student_metadata(model, edit=edit, resolution=resolution, training_steps=training_steps, extra=extra)
    atomic_save_safetensors(dict(model.state_dict()), path, meta, overwrite=overwrite)
    return path


def _describe_foreign(keys: Sequence[str], metadata: dict) -> str:
    ks = list(keys)
    if metadata.get("format") == TRAIN_STATE_FORMAT:
        return ("a student's training state (optimizer, discriminator), not a student: load the student file of the "
                "same step from the folder above train_state/")
    if any(k.startswith("model.diffusion_model.") for k in ks):
        return "a Stable Diffusion checkpoint (it belongs in models/checkpoints)"
    if any(k.startswith(("first_stage_model.", "encoder.down", "decoder.up", "encoder.down_blocks")) for k in ks):
        return "a VAE (it belongs in models/vae)"
    if any("lora" in k.lower() for k in ks[:50]):
        return "a LoRA (it belongs in models/loras)"
    if any(k.startswith(("input_blocks.", "down_blocks.", "transformer_blocks.")) for k in ks):
        return "a diffusion model (it belongs in models/diffusion_models)"
    return f"some other model ({len(ks)} tensors, e.g. {ks[:3]})"


def _open_checked(path: str):
    from safetensors import safe_open

    name = os.path.basename(path)
    if not os.path.isfile(path):
        raise StudentFileError(f"student file not found: {path}")
    try:
        with safe_open(path, framework="pt", device="cpu") as f:
            metadata = dict(f.metadata() or {})
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118 (safe_open is not iterable)
    except Exception as e:  # safetensors raises its own error types for bad headers and truncated data
        raise StudentFileError(
            f"{name} is not a readable safetensors file ({type(e).__name__}: {e}): it is corrupt or truncated "
            "(an interrupted copy or download?). Copy it again, or train/export the student again") from e
    if metadata.get("format") != FILE_FORMAT:
        raise StudentFileError(
            f"{name} is not a pix2pix-zero student: it looks like {_describe_foreign(list(shapes), metadata)}. "
            "Student files are made by this pack's train_student.py (or P2PZ_TrainStudent)")
    try:
        version = int(metadata.get("format_version", ""))
    except ValueError:
        raise StudentFileError(f"{name}: bad format_version {metadata.get('format_version')!r}") from None
    if version > FORMAT_VERSION:
        raise StudentFileError(f"{name} has student format version {version}; this version of the pack reads up to "
                               f"{FORMAT_VERSION}: update the pack")
    arch = metadata.get("architecture")
    if arch != ARCHITECTURE:
        raise StudentFileError(f"{name} is a student of architecture {arch!r}; this pack builds {ARCHITECTURE!r} only")
    try:
        config = StudentConfig.from_dict(json.loads(metadata.get("config", "")))
    except (ValueError, TypeError) as e:
        raise StudentFileError(f"{name} has an unusable architecture config: {e}") from e
    return metadata, config, shapes


def load_student(path: str, device: str | torch.device = "cpu", dtype: torch.dtype | None = None):
    """Load a student file -> (StudentGenerator in eval mode, metadata dict). Checks the format, the architecture
    and its config, every tensor's name and shape, and that all weights are finite; raises StudentFileError with
    what is wrong otherwise. Weights load bit exact; `dtype` casts afterwards (e.g. torch.float16 on a GPU)."""
    from safetensors import safe_open

    metadata, config, shapes = _open_checked(path)
    name = os.path.basename(path)
    model = StudentGenerator(config)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = sorted(set(expected) - set(shapes))
    unexpected = sorted(set(shapes) - set(expected))
    wrong = sorted(k for k in set(expected) & set(shapes) if expected[k] != shapes[k])
    if missing or unexpected or wrong:
        detail = "; ".join(s for s in (
            f"missing {missing[:4]}" if missing else "",
            f"unexpected {unexpected[:4]}" if unexpected else "",
            "wrong shapes " + ", ".join(f"{k} {shapes[k]} (config needs {expected[k]})" for k in wrong[:4]) if wrong else "",
        ) if s)
        raise StudentFileError(f"{name}: its tensors do not match its own config {config.to_dict()}: {detail}")
    try:
        with safe_open(path, framework="pt", device="cpu") as f:
            state = {k: f.get_tensor(k) for k in expected}
    except Exception as e:
        raise StudentFileError(f"{name}: reading the weights failed ({type(e).__name__}: {e}): corrupt file") from e
    bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise StudentFileError(f"{name}: weights {bad[:4]} contain NaN or inf (training diverged?)")
    model.load_state_dict(state, strict=True)
    model.requires_grad_(False).eval()
    model.to(device=device, dtype=dtype)
    return model, metadata
