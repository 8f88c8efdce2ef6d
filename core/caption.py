"""BLIP image captioning (pix2pix-zero, section 3: the caption is the reference conditioning `c`).

Loads a Hugging Face format `BlipForConditionalGeneration` folder and captions a batch of ComfyUI images
([B, H, W, C] floats in 0..1) with the authors' settings: LAVIS BLIP, prompt "a picture of ", beam search with
3 beams, max_length 30, min_length 10, the prompt stripped from the caption.

Length counting: the decoder starts from [DEC] followed by the prompt tokens, and max_length / min_length count
that whole sequence (Hugging Face `generate` on a decoder-only model; `BlipForConditionalGeneration.generate` passes
them through unchanged). LAVIS calls the same `generate` the same way, so the numbers mean what they meant to the
authors: with "a picture of " (3 tokens + [DEC]) max_length 30 leaves at most 26 caption tokens, and min_length 10
means at least 6 caption tokens before [SEP] may end it.

transformers is imported lazily (inside functions): importing this module stays cheap.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .errors import ERROR_MODULE
from .net import offline_reason, unreachable_reason

__all__ = [
    "BLIP_REPO_ID",
    "DEFAULT_PREFIX",
    "PREFIX_MODES",
    "BlipCaptioner",
    "BlipModelMissingError",
    "caption_images",
    "check_images",
    "download_blip",
    "ensure_blip",
    "is_blip_folder",
    "load_blip",
    "missing_blip_files",
    "preprocess_images",
]

BLIP_REPO_ID = "Salesforce/blip-image-captioning-base"
DEFAULT_PREFIX = "a picture of "  # the prompt of LAVIS' BLIP caption models, which the authors used
PREFIX_MODES = ("strip", "keep")  # strip: the authors (LAVIS); keep: diffusers' pix2pix-zero pipeline

# The files of the BLIP repository that a captioner needs (its pytorch_model.bin / tf_model.h5 duplicates are not).
_REPO_SMALL_FILES = ("config.json", "generation_config.json", "preprocessor_config.json", "special_tokens_map.json",
                     "tokenizer.json", "tokenizer_config.json", "vocab.txt")
_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
_WHAT_TO_PUT = ("config.json, model.safetensors (or pytorch_model.bin), tokenizer.json, tokenizer_config.json, "
                "vocab.txt, special_tokens_map.json and preprocessor_config.json")

_RESAMPLE_MODES = {2: "bilinear", 3: "bicubic"}  # PIL resample codes in preprocessor_config.json


class BlipModelMissingError(FileNotFoundError):
    """No usable BLIP captioning model in a folder (and it could not be downloaded)."""
    __module__ = ERROR_MODULE  # a clean name in ComfyUI's error report (core/errors.py)


# ---------------------------------------------------------------------------------------------------------------
# Model folders
# ---------------------------------------------------------------------------------------------------------------

def missing_blip_files(folder: str) -> list[str]:
    """What a Hugging Face format BLIP captioning folder lacks (empty list: it looks usable)."""
    if not os.path.isdir(folder):
        return ["the folder itself"]
    missing = []
    config_path = os.path.join(folder, "config.json")
    if not os.path.isfile(config_path):
        missing.append("config.json")
    else:
        try:
            with open(config_path, encoding="utf-8") as f:
                config = json.load(f)
        except (OSError, ValueError) as e:
            missing.append(f"a readable config.json ({e})")
        else:
            architectures = config.get("architectures") or []
            if config.get("model_type") != "blip" or (architectures and "BlipForConditionalGeneration" not in architectures):
                missing.append(
                    f"a BLIP captioning config.json (this one is model_type {config.get('model_type')!r}, "
                    f"architectures {architectures}; BlipForConditionalGeneration is needed)"
                )
    if not any(os.path.isfile(os.path.join(folder, f)) for f in _WEIGHT_FILES):
        missing.append("model.safetensors (or pytorch_model.bin)")
    if not any(os.path.isfile(os.path.join(folder, f)) for f in ("tokenizer.json", "vocab.txt")):
        missing.append("tokenizer.json or vocab.txt")
    if not os.path.isfile(os.path.join(folder, "preprocessor_config.json")):
        missing.append("preprocessor_config.json")
    return missing


def is_blip_folder(folder: str) -> bool:
    """True when `folder` holds a loadable BLIP captioning model in Hugging Face format."""
    return not missing_blip_files(folder)


def _missing_message(folder: str, missing: Sequence[str], reason: str, repo_id: str = BLIP_REPO_ID) -> str:
    what = "the folder does not exist" if not os.path.isdir(folder) else f"missing: {', '.join(missing)}"
    return (
        f"no usable BLIP captioning model in {folder} ({what}); {reason}. Put the files of "
        f"https://huggingface.co/{repo_id} ({_WHAT_TO_PUT}) into that folder, e.g. on a machine that is online: "
        f'hf download {repo_id} --local-dir "{folder}"'
    )


def download_blip(folder: str, repo_id: str = BLIP_REPO_ID) -> str:
    """Download the BLIP repository `repo_id` into `folder` (which must not exist, or be empty) and return it.

    Files go to a hidden temporary folder next to `folder` that is renamed into place only when complete, so an
    interrupted or failed download leaves nothing behind. Offline (HF_HUB_OFFLINE set) or on any download failure
    raises BlipModelMissingError naming the folder and the files to put there.
    """
    folder = os.path.abspath(folder)
    offline = offline_reason()
    if offline:
        raise BlipModelMissingError(_missing_message(
            folder, missing_blip_files(folder), f"{offline}, so it was not downloaded", repo_id))
    # Without network huggingface_hub retries for about 25 s before failing; this answers in 3 s at most.
    unreachable = unreachable_reason(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    if unreachable:
        raise BlipModelMissingError(_missing_message(
            folder, missing_blip_files(folder), f"{unreachable}, so it was not downloaded", repo_id))
    parent = os.path.dirname(folder)
    try:
        os.makedirs(parent, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(folder)}.download-", dir=parent)
    except OSError as e:
        raise BlipModelMissingError(_missing_message(
            folder, missing_blip_files(folder), f"cannot write to {parent} to download it ({e})", repo_id)) from e
    try:
        from huggingface_hub import list_repo_files, snapshot_download

        files = set(list_repo_files(repo_id))
        # The repository's main branch may only hold the pickled pytorch_model.bin: take safetensors when there.
        weights = next((w for w in ("model.safetensors", "pytorch_model.bin") if w in files), None)
        if weights is None:
            raise RuntimeError(f"{repo_id} has neither model.safetensors nor pytorch_model.bin")
        patterns = [f for f in _REPO_SMALL_FILES if f in files] + [weights]
        snapshot_download(repo_id, local_dir=tmp, allow_patterns=patterns)
        shutil.rmtree(os.path.join(tmp, ".cache"), ignore_errors=True)  # huggingface_hub's download bookkeeping
        missing = missing_blip_files(tmp)
        if missing:
            raise RuntimeError(f"the download lacks {', '.join(missing)}")
        os.chmod(tmp, 0o755)  # mkdtemp made it private; the model folder should look like any other
        _move_into_place(tmp, folder)
    except BlipModelMissingError:
        raise
    except Exception as e:  # connection errors, offline mode, hub errors, a full disk: all mean "put it there"
        raise BlipModelMissingError(_missing_message(
            folder, missing_blip_files(folder), f"downloading it failed ({type(e).__name__}: {e})", repo_id)) from e
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def _move_into_place(tmp: str, folder: str) -> None:
    if os.path.isdir(folder) and not os.listdir(folder):
        os.rmdir(folder)  # an empty folder the user made for it
    try:
        os.rename(tmp, folder)  # atomic on one file system; never replaces an existing non-empty folder
    except OSError:
        if not is_blip_folder(folder):  # not another process that finished the same download first
            raise


def ensure_blip(folder: str, repo_id: str | None = BLIP_REPO_ID) -> str:
    """Return `folder` when it holds a usable BLIP; download `repo_id` into it when it is absent or empty (and
    `repo_id` is given); else raise BlipModelMissingError saying what is missing. Never writes into a folder that
    already has files."""
    missing = missing_blip_files(folder)
    if not missing:
        return folder
    has_files = os.path.isdir(folder) and bool(os.listdir(folder))
    if has_files or repo_id is None:
        reason = "the folder has files but not all that are needed" if has_files else "it is not there"
        raise BlipModelMissingError(_missing_message(folder, missing, reason, repo_id or BLIP_REPO_ID))
    return download_blip(folder, repo_id)


# ---------------------------------------------------------------------------------------------------------------
# Loading and captioning
# ---------------------------------------------------------------------------------------------------------------

@dataclass
class BlipCaptioner:
    """A loaded BLIP captioning model with its tokenizer and image preprocessing settings."""

    model: Any  # transformers.BlipForConditionalGeneration (eval mode)
    tokenizer: Any
    image_size: tuple[int, int]  # (height, width) the vision encoder expects
    image_mean: tuple[float, float, float]
    image_std: tuple[float, float, float]
    resample: str = "bicubic"
    folder: str = ""

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype


def _transformers_version() -> tuple:
    import transformers

    parts = []
    for piece in transformers.__version__.split(".")[:2]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)


def _from_pretrained_options(model_class, dtype: torch.dtype) -> dict:
    """from_pretrained keywords for the installed transformers (requirements.txt's floor is 4.37.2).

    - The dtype keyword is `dtype` from 4.56 (where `torch_dtype` became a deprecated alias) and `torch_dtype`
      before: older versions pass an unknown `dtype` on to the model's constructor, which fails.
    - `weights_only` (unpickle tensors only, for .bin checkpoints) became a keyword of from_pretrained in later
      versions; before that from_pretrained already loads .bin files with torch.load(weights_only=True), and the
      unknown keyword would fail the same way. Passed only where the signature has it.
    """
    import inspect

    options = {"dtype": dtype} if _transformers_version() >= (4, 56) else {"torch_dtype": dtype}
    if "weights_only" in inspect.signature(model_class.from_pretrained).parameters:
        options["weights_only"] = True  # pickles only with weights_only
    return options


def load_blip(folder: str, dtype: torch.dtype = torch.float32, device: Any = "cpu") -> BlipCaptioner:
    """Load a Hugging Face format BLIP captioning folder (offline: local files only) in `dtype` onto `device`."""
    missing = missing_blip_files(folder)
    if missing:
        raise BlipModelMissingError(_missing_message(folder, missing, "nothing can be loaded from it"))
    from transformers import BlipForConditionalGeneration, BlipProcessor

    try:
        processor = BlipProcessor.from_pretrained(folder, local_files_only=True)
        model = BlipForConditionalGeneration.from_pretrained(
            folder, local_files_only=True, **_from_pretrained_options(BlipForConditionalGeneration, dtype))
    except Exception as e:
        raise RuntimeError(f"could not load the BLIP captioning model in {folder}: {type(e).__name__}: {e}") from e
    model.to(device).eval()
    ip = processor.image_processor
    size = dict(ip.size)
    height, width = (size["height"], size["width"]) if size.get("height") else (size["shortest_edge"],) * 2
    mean = tuple(float(v) for v in ip.image_mean) if getattr(ip, "do_normalize", True) else (0.0, 0.0, 0.0)
    std = tuple(float(v) for v in ip.image_std) if getattr(ip, "do_normalize", True) else (1.0, 1.0, 1.0)
    resample = _RESAMPLE_MODES.get(int(getattr(ip, "resample", 3) or 3), "bicubic")
    return BlipCaptioner(model, processor.tokenizer, (int(height), int(width)), mean, std, resample, folder)


def check_images(images: torch.Tensor, what: str = "image") -> None:
    """Raise ValueError unless `images` is a ComfyUI IMAGE batch: a float tensor [B, H, W, C], C in 1/3/4."""
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[-1] not in (1, 3, 4):
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(
            f"the {what} must be a ComfyUI IMAGE batch of shape [batch, height, width, channels] with 1, 3 or 4 "
            f"channels (as LoadImage gives), got {shape}; a mask or latent cannot be captioned"
        )
    if images.shape[0] < 1 or images.shape[1] < 1 or images.shape[2] < 1:
        raise ValueError(f"the {what} batch is empty: shape {tuple(images.shape)}")
    if not images.is_floating_point():
        raise ValueError(f"the {what} must hold floats in 0..1 (ComfyUI IMAGE), got {images.dtype}")
    if not torch.isfinite(images).all():
        raise ValueError(f"the {what} contains NaN or infinite values. Possible causes: the node that made it, e.g. a "
                         "VAE decode in fp16 that overflowed (start ComfyUI with --fp32-vae)")


def preprocess_images(images: torch.Tensor, captioner: BlipCaptioner) -> torch.Tensor:
    """ComfyUI IMAGE [B, H, W, C] in 0..1 -> BLIP pixel_values [B, 3, h, w] on the model's device and dtype.

    The same steps as BLIP's image processor (resize to its size, 8-bit values, normalize with its mean/std) done
    in torch on the whole batch; torch's antialiased bicubic follows PIL's, which that processor uses.
    """
    check_images(images)
    x = images.to(captioner.device, torch.float32)
    x = x[..., :3] if x.shape[-1] >= 3 else x.expand(-1, -1, -1, 3)  # RGBA -> RGB, grey -> RGB
    x = x.movedim(-1, 1).clamp(0.0, 1.0)
    if tuple(x.shape[-2:]) != captioner.image_size:
        x = torch.nn.functional.interpolate(x, size=captioner.image_size, mode=captioner.resample,
                                            align_corners=False, antialias=True)
    x = (x * 255.0).round().clamp(0.0, 255.0) / 255.0  # the processor works on 8-bit images
    mean = torch.tensor(captioner.image_mean, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(captioner.image_std, device=x.device).view(1, 3, 1, 1)
    return ((x - mean) / std).to(captioner.dtype)


def _prompt_ids(captioner: BlipCaptioner, prefix: str) -> list[int]:
    """Decoder prompt: [DEC] + the prefix's tokens (the tokenizer lowercases and splits on whitespace)."""
    config = captioner.model.config.text_config
    words = captioner.tokenizer(" ".join(prefix.split()), add_special_tokens=False)["input_ids"]
    return [config.bos_token_id] + list(words)


def caption_images(
    captioner: BlipCaptioner,
    images: torch.Tensor,
    *,
    prefix: str = DEFAULT_PREFIX,
    prefix_mode: str = "strip",
    num_beams: int = 3,
    max_length: int = 30,
    min_length: int = 10,
    chunk_size: int = 8,
    callback: Callable[[int, int], None] | None = None,
) -> list[str]:
    """One caption per image of a ComfyUI IMAGE batch [B, H, W, C] in 0..1 (deterministic beam search).

    The prefix is the decoder's prompt, so every caption starts with it; "strip" removes those prompt tokens (the
    authors), "keep" returns them as decoded (lowercased by BLIP's tokenizer, as diffusers' pipeline does). Stripping
    cuts the prompt tokens off the generated sequence, so case and spacing of `prefix` do not matter. max_length and
    min_length count [DEC] and the prefix tokens too (see the module docstring). Images are captioned `chunk_size`
    at a time, each independently of the others; callback(done, total) runs after every chunk.
    """
    if prefix_mode not in PREFIX_MODES:
        raise ValueError(f"prefix_mode must be one of {PREFIX_MODES}, got {prefix_mode!r}")
    if num_beams < 1 or chunk_size < 1:
        raise ValueError(f"num_beams and chunk_size must be at least 1, got {num_beams} and {chunk_size}")
    if min_length > max_length:
        raise ValueError(f"min_length ({min_length}) is larger than max_length ({max_length})")
    check_images(images)
    prompt = _prompt_ids(captioner, prefix)
    if len(prompt) >= max_length:
        raise ValueError(
            f"the prefix {prefix!r} takes {len(prompt)} of the max_length {max_length} tokens (the count includes "
            f"the prefix and the start token): raise max_length or shorten the prefix"
        )
    config = captioner.model.config.text_config
    skip = len(prompt) if prefix_mode == "strip" else 1  # [DEC] (outside the vocabulary) is never decoded
    total = images.shape[0]
    captions: list[str] = []
    with torch.no_grad():
        for start in range(0, total, chunk_size):
            chunk = images[start:start + chunk_size]
            pixel_values = preprocess_images(chunk, captioner)
            # BlipForConditionalGeneration.generate drops the last input token (the [SEP] a tokenizer appends) and
            # sets the first to [DEC], so [SEP] is appended here.
            input_ids = torch.tensor([prompt + [config.sep_token_id]] * chunk.shape[0], device=captioner.device)
            out = captioner.model.generate(
                pixel_values=pixel_values,
                input_ids=input_ids,
                attention_mask=torch.ones_like(input_ids),
                do_sample=False,
                num_beams=num_beams,
                max_length=max_length,
                min_length=min_length,
                max_new_tokens=None,  # a folder's generation_config.json must not override max_length
                min_new_tokens=None,
                repetition_penalty=1.0,
                length_penalty=1.0,
                no_repeat_ngram_size=0,
                early_stopping=False,
                num_return_sequences=1,
            )
            texts = captioner.tokenizer.batch_decode(out[:, skip:], skip_special_tokens=True,
                                                      clean_up_tokenization_spaces=True)
            captions.extend(" ".join(t.split()) for t in texts)
            if callback is not None:
                callback(len(captions), total)
    return captions
