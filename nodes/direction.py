"""Edit-direction nodes: build from sentences with the graph's CLIP, save, load, import the authors' files, apply."""
import os

import folder_paths
import torch

from ..core.direction import (
    EditDirection,
    apply_direction,
    apply_pooled_direction,
    build_direction,
    direction_from_word_embeddings,
    encoder_fingerprint,
    load_direction,
    load_word_embedding,
    save_direction,
)
from ..core.files import check_name
from ..core.sentences import (
    KINDS,
    generate_sentences,
    parse_sentences,
    read_sentence_file,
    sentence_file_label,
)
from .common import (
    CATEGORY,
    DIRECTION_TYPE,
    SEED_INPUT,
    model_files,
    register_model_folder,
)

DIRECTIONS_FOLDER = "pix2pix_zero_directions"  # saved directions (.safetensors) and the authors' word files (.pt)
SENTENCES_FOLDER = "pix2pix_zero_sentences"  # sentence files (.txt, one sentence per line)
register_model_folder(DIRECTIONS_FOLDER, {".safetensors", ".pt"})
register_model_folder(SENTENCES_FOLDER, {".txt"})

NONE = "(none)"
ENCODE_BATCH = 64  # sentences per text-encoder call: fast, and 64 x 77 tokens fits any GPU


# ---------------------------------------------------------------------------------------------------------------
# The graph's CLIP as an encoder of sentences


def _escape_weights(text: str) -> str:
    # ComfyUI reads "(word:1.2)" as a prompt weight; sentences are literal text, as in the references.
    return text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")


def clip_sentence_encoder(clip):
    """``encode(sentences) -> (hidden [n, 77, width], pooled [n, pooled_width] or None)`` with a ComfyUI CLIP.

    Each sentence is tokenized as CLIPTextEncode would and cut to its first 77-token chunk (the references pad and
    truncate to 77). All sentences of a call go through ``clip.encode_from_tokens`` as the chunks of one prompt, so
    the text encoder runs once per batch with the checkpoint's own layer choice (CLIPSetLastLayer included), and the
    chunks come back side by side on the token axis. ComfyUI returns only the first chunk's pooled vector, so the
    per-sentence pooled vectors are read with a forward hook on the encoder that produced it.
    """
    import comfy.sd1_clip

    def encode(sentences):
        merged = {}
        for sentence in sentences:
            tokens = clip.tokenize(_escape_weights(sentence))
            for key, chunks in tokens.items():
                merged.setdefault(key, []).append([(t[0], 1.0) for t in chunks[0]])
        lengths = {len(chunk) for chunks in merged.values() for chunk in chunks}
        if len(lengths) != 1:
            raise ValueError(f"this text encoder pads sentences to different lengths ({sorted(lengths)}): "
                             "only CLIP encoders with fixed 77-token chunks (SD 1.x, SD 2.x, SDXL) are supported")
        pooled_by_module = {}

        def keep_pooled(module, _inputs, output):
            if isinstance(output, (tuple, list)) and len(output) > 1 and isinstance(output[1], torch.Tensor):
                pooled_by_module[module] = output[1]

        hooks = [m.register_forward_hook(keep_pooled) for m in clip.cond_stage_model.modules()
                 if isinstance(m, comfy.sd1_clip.SDClipModel)]
        try:
            cond, first_pooled = clip.encode_from_tokens(merged, return_pooled=True)
        finally:
            for h in hooks:
                h.remove()
        n = len(sentences)
        if cond.shape[1] % n != 0:
            raise ValueError(f"the text encoder returned {cond.shape[1]} tokens for {n} sentences")
        hidden = cond.reshape(n, cond.shape[1] // n, cond.shape[-1])
        pooled = None
        if first_pooled is not None:
            for p in pooled_by_module.values():
                if p.shape[0] == n and torch.equal(p[0:1].to(first_pooled), first_pooled):
                    pooled = p.to(first_pooled.device)
                    break
        return hidden, pooled

    return encode


def clip_description(clip):
    """(encoder name, fingerprint of the text encoder's weights)."""
    model = clip.cond_stage_model
    return type(model).__name__, encoder_fingerprint(model.state_dict())


def edit_conditioning(conditioning, direction: EditDirection, multiplier: float = 1.0):
    """A new CONDITIONING with ``multiplier * direction`` added to each entry's tokens (and pooled vector)."""
    out = []
    for tensor, extra in conditioning:
        edited = apply_direction(tensor, direction, multiplier)  # checks the width first: the clearer message
        extra = dict(extra)
        if "pooled_output" in extra:
            extra["pooled_output"] = apply_pooled_direction(extra["pooled_output"], direction, multiplier)
        out.append([edited, extra])
    return out


# ---------------------------------------------------------------------------------------------------------------
# Sentence sources

SENTENCE_SOURCES = ("generated", "custom", "file")


def _sentence_files():
    return [NONE] + model_files(SENTENCES_FOLDER, (".txt",))


def _sentences(word, mode, count, seed, kind, text, file_name, side):
    if mode == "generated":
        return generate_sentences(word, count=count, seed=seed, kind=kind)
    if mode == "custom":
        sentences = parse_sentences(text or "")
        if not sentences:
            raise ValueError(f"sentence_source is 'custom' but {side}_sentences is empty: write one sentence per "
                             f"line about {word!r} (about 1000 varied ones work best), or choose 'generated'")
    else:
        if not file_name or file_name == NONE:
            raise ValueError(f"sentence_source is 'file' but no {side}_file is chosen: put a .txt file (one "
                             f"sentence per line) in models/{SENTENCES_FOLDER}/ and pick it")
        path = folder_paths.get_full_path(SENTENCES_FOLDER, file_name)
        if path is None:
            raise FileNotFoundError(f"sentence file {file_name!r} is not in models/{SENTENCES_FOLDER}/ any more")
        sentences = read_sentence_file(path)
        if not sentences:
            raise ValueError(f"sentence file {file_name!r} has no sentences (one per line; '#' starts a comment)")
    return sentences[:count]


# ---------------------------------------------------------------------------------------------------------------
# Nodes


class BuildDirection:
    DESCRIPTION = (
        "Builds a pix2pix-zero edit direction with the CLIP of your checkpoint: the mean text embedding of many "
        "sentences about the target minus the mean for the source (per token, 77 tokens, not normalized)."
    )
    CATEGORY = CATEGORY
    FUNCTION = "build"
    RETURN_TYPES = (DIRECTION_TYPE,)
    RETURN_NAMES = ("direction",)
    OUTPUT_TOOLTIPS = ("The edit direction, for Apply Edit Direction, the guided sampler or Save Edit Direction.",)

    @classmethod
    def INPUT_TYPES(cls):
        files = _sentence_files()
        return {
            "required": {
                "clip": ("CLIP", {"tooltip": "The text encoder of the checkpoint you edit with: a direction only works with the encoder that built it."}),
                "source": ("STRING", {"default": "cat", "tooltip": "What the image shows now: a word or phrase (\"cat\", \"oil pastel\", \"cat wearing glasses\")."}),
                "target": ("STRING", {"default": "dog", "tooltip": "What it should show instead."}),
                "sentence_source": (list(SENTENCE_SOURCES), {"default": "generated", "tooltip": "generated: built-in varied sentences containing each word. custom: the two text boxes below, one sentence per line. file: .txt files in models/pix2pix_zero_sentences/."}),
                "count": ("INT", {"default": 1000, "min": 1, "max": 10000, "tooltip": "Sentences per word (at most; custom/file use their first ones). About 1000 give a clean direction; fewer entangle background and style."}),
                "seed": SEED_INPUT,
            },
            "optional": {
                "kind": (list(KINDS), {"default": "auto", "tooltip": "generated only: 'object' sentences (photos of a thing) or 'style' sentences (artworks in a medium); auto decides from the words."}),
                "source_sentences": ("STRING", {"multiline": True, "default": "", "tooltip": "custom only: sentences about the source, one per line."}),
                "target_sentences": ("STRING", {"multiline": True, "default": "", "tooltip": "custom only: sentences about the target, one per line."}),
                "source_file": (files, {"default": NONE, "tooltip": "file only: sentences about the source (models/pix2pix_zero_sentences/)."}),
                "target_file": (files, {"default": NONE, "tooltip": "file only: sentences about the target."}),
            },
        }

    def build(self, clip, source, target, sentence_source, count, seed, kind="auto", source_sentences="",
              target_sentences="", source_file=NONE, target_file=NONE):
        source, target = source.strip(), target.strip()
        src = _sentences(source, sentence_source, count, seed, kind, source_sentences, source_file, "source")
        tgt = _sentences(target, sentence_source, count, seed, kind, target_sentences, target_file, "target")
        if sentence_source == "file":  # blank words: name the edit after the files ("tabby cat.txt" -> "tabby cat")
            source = source or sentence_file_label(source_file)
            target = target or sentence_file_label(target_file)
        encoder, fingerprint = clip_description(clip)
        direction = build_direction(clip_sentence_encoder(clip), source, target, src, tgt, batch_size=ENCODE_BATCH,
                                    encoder=encoder, fingerprint=fingerprint)
        return (direction,)


class SaveDirection:
    DESCRIPTION = ("Saves an edit direction to models/pix2pix_zero_directions/ as .safetensors (with its words, "
                   "sentence counts and text encoder). An existing file is never replaced: a number is added.")
    CATEGORY = CATEGORY
    FUNCTION = "save"
    OUTPUT_NODE = True
    RETURN_TYPES = (DIRECTION_TYPE,)
    RETURN_NAMES = ("direction",)
    OUTPUT_TOOLTIPS = ("The same direction, passed through.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "direction": (DIRECTION_TYPE, {"tooltip": "The direction to save."}),
                "name": ("STRING", {"default": "cat_to_dog", "tooltip": "File name, without .safetensors: letters, digits, '_', '-' or '.' (a letter or digit first). If it exists, _2, _3, ... is added."}),
            }
        }

    def save(self, direction, name):
        name = check_name(name.strip().removesuffix(".safetensors"), "direction name")
        # The first folder registered: models/pix2pix_zero_directions/ unless extra_model_paths.yaml names another.
        folder = folder_paths.get_folder_paths(DIRECTIONS_FOLDER)[0]
        path = _free_path(folder, name)
        save_direction(path, direction)
        saved = os.path.basename(path)
        return {"ui": {"text": [f"saved {direction.describe()} as {saved}"]}, "result": (direction,)}


def _free_path(folder, name):
    path = os.path.join(folder, name + ".safetensors")
    n = 2
    while os.path.exists(path):
        path = os.path.join(folder, f"{name}_{n}.safetensors")
        n += 1
    return path


class LoadDirection:
    DESCRIPTION = "Loads an edit direction saved by Save Edit Direction from models/pix2pix_zero_directions/."
    CATEGORY = CATEGORY
    FUNCTION = "load"
    RETURN_TYPES = (DIRECTION_TYPE,)
    RETURN_NAMES = ("direction",)
    OUTPUT_TOOLTIPS = ("The saved edit direction.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"direction_name": (model_files(DIRECTIONS_FOLDER, (".safetensors",)), {"tooltip": "A .safetensors file in models/pix2pix_zero_directions/."})}}

    def load(self, direction_name):
        path = folder_paths.get_full_path_or_raise(DIRECTIONS_FOLDER, direction_name)
        return (load_direction(path),)


class ImportWordEmbeddings:
    DESCRIPTION = (
        "Makes an edit direction from two of the pix2pix-zero authors' per-word embedding files (cat.pt, dog.pt, "
        "horse.pt, zebra.pt for SD 1.4/1.5) placed in models/pix2pix_zero_directions/: target minus source."
    )
    CATEGORY = CATEGORY
    FUNCTION = "load"
    RETURN_TYPES = (DIRECTION_TYPE,)
    RETURN_NAMES = ("direction",)
    OUTPUT_TOOLTIPS = ("The edit direction target - source (SD 1.x width, 768).",)

    @classmethod
    def INPUT_TYPES(cls):
        files = model_files(DIRECTIONS_FOLDER, (".pt",))
        return {
            "required": {
                "source_file": (files, {"tooltip": "Mean embedding of the source word, e.g. cat.pt (loaded as plain tensors only, never as code)."}),
                "target_file": (files, {"tooltip": "Mean embedding of the target word, e.g. dog.pt."}),
            }
        }

    def load(self, source_file, target_file):
        embeddings = [load_word_embedding(folder_paths.get_full_path_or_raise(DIRECTIONS_FOLDER, f))
                      for f in (source_file, target_file)]
        words = [os.path.basename(f).removesuffix(".pt") for f in (source_file, target_file)]
        return (direction_from_word_embeddings(*embeddings, *words, origin="authors' word embeddings"),)


class ApplyDirection:
    DESCRIPTION = (
        "Adds an edit direction (times a multiplier) to a conditioning, e.g. the caption: the edited conditioning "
        "for the guided sampler, or for any stock sampler (an edit without structure guidance)."
    )
    CATEGORY = CATEGORY
    FUNCTION = "apply"
    RETURN_TYPES = ("CONDITIONING",)
    RETURN_NAMES = ("conditioning",)
    OUTPUT_TOOLTIPS = ("The conditioning plus multiplier x direction on every token.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "conditioning": ("CONDITIONING", {"tooltip": "Usually the caption encoded with CLIPTextEncode, with the CLIP that built the direction."}),
                "direction": (DIRECTION_TYPE, {"tooltip": "The edit direction."}),
                "multiplier": ("FLOAT", {"default": 1.0, "min": -10.0, "max": 10.0, "step": 0.05, "tooltip": "Edit strength: 1 as the references; 0 = no edit; the authors' demo offers 0-2; negative reverses the edit."}),
            }
        }

    def apply(self, conditioning, direction, multiplier):
        return (edit_conditioning(conditioning, direction, multiplier),)


NODE_CLASS_MAPPINGS = {
    "P2PZ_BuildDirection": BuildDirection,
    "P2PZ_SaveDirection": SaveDirection,
    "P2PZ_LoadDirection": LoadDirection,
    "P2PZ_ImportWordEmbeddings": ImportWordEmbeddings,
    "P2PZ_ApplyDirection": ApplyDirection,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "P2PZ_BuildDirection": "Build Edit Direction (pix2pix-zero)",
    "P2PZ_SaveDirection": "Save Edit Direction (pix2pix-zero)",
    "P2PZ_LoadDirection": "Load Edit Direction (pix2pix-zero)",
    "P2PZ_ImportWordEmbeddings": "Import Word Embeddings .pt (pix2pix-zero)",
    "P2PZ_ApplyDirection": "Apply Edit Direction (pix2pix-zero)",
}

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "clip_sentence_encoder", "edit_conditioning"]
