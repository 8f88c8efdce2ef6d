"""P2PZ_BLIPCaption and P2PZ_EncodeCaptions: pix2pix-zero's BLIP caption (the reference prompt of each image)."""
import collections
import os
import threading

import comfy.model_management
import comfy.model_patcher
import comfy.utils
import folder_paths
import torch

from ..core.caption import (
    BLIP_REPO_ID,
    PREFIX_MODES,
    BlipModelMissingError,
    caption_images,
    check_images,
    ensure_blip,
    load_blip,
)
from .common import CATEGORY, create_default_folder, model_patcher_for

BLIP_FOLDER = "blip"  # folder_paths name: <models_dir>/blip/<model name>/ holds one Hugging Face format BLIP
DEFAULT_BLIP_NAME = BLIP_REPO_ID.split("/")[-1]  # "blip-image-captioning-base": downloaded on first use
_CACHE_SIZE = 2  # BLIP models kept loaded (ComfyUI offloads their weights from the GPU as it needs memory)


def default_blip_dir():
    """Where the default BLIP is downloaded to: <ComfyUI models>/blip."""
    return os.path.join(folder_paths.models_dir, BLIP_FOLDER)


def register_blip_folder(path=None):
    """Add `path` (default <models>/blip) to the "blip" model folders, keeping entries that are already there (from
    extra_model_paths.yaml, say). Returns the absolute path."""
    path = os.path.abspath(path or default_blip_dir())
    folder_paths.add_model_folder_path(BLIP_FOLDER, path)
    if path == os.path.abspath(default_blip_dir()):
        create_default_folder(path)  # only the pack's own default: a user's extra path is theirs to create
    return path


register_blip_folder()


def blip_model_names():
    """Names of the sub-folders of every registered "blip" folder, sorted, always with the default model's name
    (downloaded on first use when missing): a workflow that names it (the examples do) then validates whatever
    other BLIP folders are installed."""
    names = {DEFAULT_BLIP_NAME}
    for base in folder_paths.get_folder_paths(BLIP_FOLDER):
        if os.path.isdir(base):
            names.update(e.name for e in os.scandir(base) if e.is_dir() and not e.name.startswith("."))
    return sorted(names)


def resolve_blip_folder(name):
    """The folder of BLIP model `name`, made usable: found in a registered "blip" folder, or (the default model
    only) downloaded into <models>/blip/<name>. Raises BlipModelMissingError saying where to put what."""
    if not name or name in (".", "..") or any(sep and sep in name for sep in (os.sep, os.altsep)):
        raise ValueError(f"{name!r} is not a BLIP model folder name: pick one of the sub-folders of models/blip")
    bases = folder_paths.get_folder_paths(BLIP_FOLDER)
    folder = next((os.path.join(b, name) for b in bases if os.path.isdir(os.path.join(b, name))), None)
    if folder is None:
        if name != DEFAULT_BLIP_NAME:
            raise BlipModelMissingError(
                f"no BLIP model folder named {name!r} in {bases}: put a Hugging Face format BLIP captioning model "
                f"(config.json, model.safetensors, tokenizer and preprocessor_config.json) in a sub-folder of one "
                f"of them, or pick {DEFAULT_BLIP_NAME!r} to download {BLIP_REPO_ID}"
            )
        folder = os.path.join(default_blip_dir(), name)
    return ensure_blip(folder, BLIP_REPO_ID if name == DEFAULT_BLIP_NAME else None)


_cache = collections.OrderedDict()  # (folder, files' mtimes, devices, dtype) -> (ModelPatcher, BlipCaptioner)
_cache_lock = threading.Lock()


def _folder_signature(folder):
    sig = []
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        if entry.is_file():
            st = entry.stat()
            sig.append((entry.name, st.st_size, st.st_mtime_ns))
    return tuple(sig)


def load_blip_patcher(folder):
    """(ModelPatcher, BlipCaptioner) for a BLIP folder, cached: a second run reuses the loaded model. fp16 where
    ComfyUI runs fp16 on the load device, fp32 on the CPU; weights start on the offload device."""
    mm = comfy.model_management
    load_device = mm.text_encoder_device()
    offload_device = mm.text_encoder_offload_device()
    dtype = torch.float16 if mm.should_use_fp16(load_device) else torch.float32
    key = (os.path.realpath(folder), _folder_signature(folder), str(load_device), str(offload_device), dtype)
    with _cache_lock:
        if key in _cache:
            _cache.move_to_end(key)
            return _cache[key]
        captioner = load_blip(folder, dtype=dtype, device=offload_device)
        patcher = model_patcher_for(captioner.model, dtype, load_device, offload_device)
        _cache[key] = (patcher, captioner)
        while len(_cache) > _CACHE_SIZE:
            _cache.popitem(last=False)
        return patcher, captioner


class BLIPCaption:
    DESCRIPTION = (
        "Captions each image with BLIP, as pix2pix-zero does to get the prompt it inverts and edits with (authors' "
        "settings: prompt 'a picture of', 3 beams, max length 30, min length 10). One caption per image of the "
        "batch. Models are Hugging Face BLIP folders in models/blip/; blip-image-captioning-base is downloaded "
        "there on first use when online. To read the captions, connect them to a Preview Any node."
    )
    CATEGORY = CATEGORY
    FUNCTION = "caption"
    RETURN_TYPES = ("STRING",)
    RETURN_NAMES = ("captions",)
    OUTPUT_IS_LIST = (True,)
    OUTPUT_TOOLTIPS = (
        (
            "One caption per image, in batch order (a list: a node taking one STRING runs once per caption, "
            "P2PZ_EncodeCaptions makes one conditioning batch of them)."
        ),
    )

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "image": ("IMAGE", {"tooltip": "The image(s) to caption. Every image of the batch gets its own caption."}),
                "blip_model": (blip_model_names(), {"tooltip": "A Hugging Face format BLIP captioning model: a sub-folder of models/blip. blip-image-captioning-base is always listed: when its folder is missing it is downloaded into models/blip on first use (about 1 GB; online only, offline the node says where to put it)."}),
                "prefix": ("STRING", {"default": "a picture of", "tooltip": "Text the caption is made to start with (BLIP's conditional prompt; 'a picture of' as the authors). Empty: unconditional captioning. BLIP lowercases it."}),
                "prefix_mode": (list(PREFIX_MODES), {"default": "strip", "tooltip": "strip: remove the prefix from the caption (the authors). keep: the caption starts with the prefix, lowercased (diffusers' pipeline)."}),
                "num_beams": ("INT", {"default": 3, "min": 1, "max": 16, "tooltip": "Beam search width (3 as the authors). 1 is greedy. More beams: slower, often more generic captions."}),
                "max_length": ("INT", {"default": 30, "min": 2, "max": 128, "tooltip": "Longest caption in tokens, counting the start token and the prefix (30 as the authors: up to 26 words with 'a picture of'). Keep the caption within CLIP's 75 tokens."}),
                "min_length": ("INT", {"default": 10, "min": 0, "max": 128, "tooltip": "Shortest caption in tokens, counting the start token and the prefix (10 as the authors). Must not exceed max_length."}),
            }
        }

    def caption(self, image, blip_model, prefix, prefix_mode, num_beams, max_length, min_length):
        check_images(image)
        patcher, captioner = load_blip_patcher(resolve_blip_folder(blip_model))
        # full load: BLIP's layers are plain torch modules, which ComfyUI cannot load partially
        comfy.model_management.load_models_gpu([patcher], force_full_load=True)
        pbar = comfy.utils.ProgressBar(image.shape[0])

        def on_chunk(done, total):
            comfy.model_management.throw_exception_if_processing_interrupted()
            pbar.update_absolute(done, total)

        captions = caption_images(captioner, image, prefix=prefix, prefix_mode=prefix_mode, num_beams=num_beams,
                                  max_length=max_length, min_length=min_length, callback=on_chunk)
        return {"ui": {"text": captions}, "result": (captions,)}


def concat_conditionings(conds, captions):
    """Join CONDITIONINGs of batch 1 (one per caption, each as CLIPTextEncode gives it) into one conditioning
    whose batch holds them in order: tensors (the embedding, pooled_output, ...) concatenated along the batch."""
    first = conds[0]
    out = []
    for k, (cond0, extra0) in enumerate(first):
        entries = []
        for i, c in enumerate(conds):
            if len(c) != len(first):
                raise ValueError(f"caption {i} encoded to {len(c)} conditioning entries but caption 0 to {len(first)}")
            entries.append(c[k])
        for i, (cond, _) in enumerate(entries):
            if cond.shape[1:] != cond0.shape[1:]:
                raise ValueError(
                    f"caption {i} ({captions[i]!r}) encodes to {cond.shape[1]} tokens but caption 0 "
                    f"({captions[0]!r}) to {cond0.shape[1]}: captions over 75 tokens take another 77-token chunk, and "
                    f"a batch needs the same length for all. Shorten the long caption (lower max_length on the "
                    f"caption node) or encode it alone with CLIPTextEncode"
                )
        extra = {}
        for key, value in extra0.items():
            if torch.is_tensor(value):
                values = [e[1].get(key) for e in entries]
                if not all(torch.is_tensor(v) and v.shape[1:] == value.shape[1:] for v in values):
                    raise ValueError(f"the captions' conditionings differ in the shape of {key!r}: cannot batch them")
                extra[key] = torch.cat(values, dim=0)
            else:
                extra[key] = value
        out.append([torch.cat([cond for cond, _ in entries], dim=0), extra])
    return out


class EncodeCaptions:
    DESCRIPTION = (
        "Encodes a list of captions (from P2PZ_BLIPCaption) into ONE conditioning whose batch holds one caption per "
        "image, in order, each encoded exactly as CLIPTextEncode would. Feed it to P2PZ_InvertLatent together with "
        "the same image batch encoded with VAEEncode."
    )
    CATEGORY = CATEGORY
    FUNCTION = "encode"
    INPUT_IS_LIST = True
    RETURN_TYPES = ("CONDITIONING",)
    RETURN_NAMES = ("conditioning",)
    OUTPUT_TOOLTIPS = ("A conditioning with batch size = number of captions (caption i conditions image i).",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "clip": ("CLIP", {"tooltip": "The checkpoint's text encoder (as for CLIPTextEncode)."}),
                "captions": ("STRING", {"forceInput": True, "tooltip": "The captions, one per image (the list from P2PZ_BLIPCaption)."}),
            }
        }

    def encode(self, clip, captions):
        clips = [c for c in clip]
        if not clips or clips[0] is None:
            raise RuntimeError("clip input is invalid: None. Connect the text encoder of a checkpoint loader.")
        if any(c is not clips[0] for c in clips[1:]):
            raise ValueError("EncodeCaptions got several CLIP models: connect exactly one")
        if not captions:
            raise ValueError("no captions to encode: connect the captions output of P2PZ_BLIPCaption")
        if not all(isinstance(t, str) for t in captions):
            raise ValueError("captions must be text (STRING)")
        clip = clips[0]
        conds = [clip.encode_from_tokens_scheduled(clip.tokenize(text)) for text in captions]
        return (concat_conditionings(conds, list(captions)),)


NODE_CLASS_MAPPINGS = {"P2PZ_BLIPCaption": BLIPCaption, "P2PZ_EncodeCaptions": EncodeCaptions}
NODE_DISPLAY_NAME_MAPPINGS = {
    "P2PZ_BLIPCaption": "BLIP Caption (pix2pix-zero)",
    "P2PZ_EncodeCaptions": "Encode Captions as a Batch (pix2pix-zero)",
}
