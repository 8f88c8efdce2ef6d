"""Edit-direction nodes: build from sentences with the graph's CLIP, save, load, import the authors' files, apply."""
import dataclasses
import os

import folder_paths
import torch

from ..core.direction import (
    EditDirection,
    apply_direction,
    apply_pooled_direction,
    build_direction,
    check_conditioning,
    check_edit,
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
from .bundled import add_bundled_directions
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
add_bundled_directions(DIRECTIONS_FOLDER)  # the pack's ready-made directions, after the user's folders
register_model_folder(SENTENCES_FOLDER, {".txt"})

NONE = "(none)"
ENCODE_BATCH = 64  # sentences per text-encoder call: fast, and 64 x 77 tokens fits any GPU


# ---------------------------------------------------------------------------------------------------------------
# The graph's CLIP as an encoder of sentences


def _escape_weights(text: str) -> str:
    # ComfyUI reads "(word:1.2)" as a prompt weight; sentences are literal text, as in the references.
    return text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")


def text_family(clip) -> str:
    """The text-encoder family of a ComfyUI CLIP (core.direction.FAMILIES key), "" for others."""
    import comfy.sd1_clip
    import comfy.sdxl_clip

    model = clip.cond_stage_model
    families = [("sdxl", getattr(comfy.sdxl_clip, "SDXLClipModel", None))]
    try:
        import comfy.text_encoders.flux as flux_te
        import comfy.text_encoders.sd2_clip as sd2_te
        import comfy.text_encoders.sd3_clip as sd3_te
        families += [("sd3", sd3_te.SD3ClipModel), ("flux", flux_te.FluxClipModel), ("sd2", sd2_te.SD2ClipModel)]
    except (ImportError, AttributeError):  # pragma: no cover - every supported ComfyUI has them
        pass
    families.append(("sd1", comfy.sd1_clip.SD1ClipModel))
    for family, cls in families:
        if cls is not None and isinstance(model, cls):
            return family
    return ""


def _segment_keys(clip, family):
    """The token keys whose chunks make up each part of the conditioning sequence, in order. ComfyUI's SD 3.x
    encoder puts CLIP-L + CLIP-G (side by side, padded to 4096 wide) first and T5 after on the sequence, each part
    holding all chunks of that encoder; Flux's sequence is T5 alone (CLIP-L gives only the pooled vector)."""
    model = clip.cond_stage_model
    if family == "sd3":
        parts = []
        if getattr(model, "clip_l", None) is not None or getattr(model, "clip_g", None) is not None:
            parts.append(("l", "g"))
        if getattr(model, "t5xxl", None) is not None:
            parts.append(("t5xxl",))
        return parts
    if family == "flux":
        return [("t5xxl",)]
    return None  # CLIP-only encoders: one part, every key 77-token chunks side by side


def clip_sentence_encoder(clip):
    """``encode(sentences) -> (hidden [n, tokens, width], pooled [n, pooled_width] or None)`` with a ComfyUI CLIP.

    Each sentence is tokenized as CLIPTextEncode would and cut to its first chunk (the references pad and truncate
    to 77; T5 does not chunk, it pads to 77 for SD 3.x and 256 for Flux). All sentences of a call go through
    ``clip.encode_from_tokens`` as the chunks of one prompt, so the text encoder runs once per batch with the
    checkpoint's own layer choice (CLIPSetLastLayer included), and the chunks come back one after another on the
    token axis, part by part for MMDiT encoders (see _segment_keys): they are cut back into one sequence per
    sentence, laid out as a single sentence's conditioning. ComfyUI returns only the first chunk's pooled vector, so
    the per-sentence pooled vectors are read with forward hooks on the CLIP encoders (SD 3.x: CLIP-L's and CLIP-G's
    side by side, as ComfyUI concatenates them).
    """
    import comfy.sd1_clip

    family = text_family(clip)
    parts = _segment_keys(clip, family)

    def encode(sentences):
        merged = {}
        for sentence in sentences:
            tokens = clip.tokenize(_escape_weights(sentence))
            for key, chunks in tokens.items():
                merged.setdefault(key, []).append([(t[0], 1.0) for t in chunks[0]])
        lengths = {key: {len(chunk) for chunk in chunks} for key, chunks in merged.items()}
        if any(len(v) != 1 for v in lengths.values()) or (
                parts is None and len({n for v in lengths.values() for n in v}) != 1):
            raise ValueError(f"this text encoder pads sentences to different lengths ({lengths}): a sentence is "
                             "longer than the encoder's padding (T5: 77 tokens for SD 3.x, 256 for Flux); shorten "
                             "it, or use sentences of ordinary length")
        pooled_by_module = []

        def keep_pooled(module, _inputs, output):
            if isinstance(output, (tuple, list)) and len(output) > 1 and isinstance(output[1], torch.Tensor):
                pooled_by_module.append(output[1])

        hooks = [m.register_forward_hook(keep_pooled) for m in clip.cond_stage_model.modules()
                 if isinstance(m, comfy.sd1_clip.SDClipModel)]
        try:
            cond, first_pooled = clip.encode_from_tokens(merged, return_pooled=True)
        finally:
            for h in hooks:
                h.remove()
        n = len(sentences)
        if parts is None:
            segments = [cond.shape[1] // n]
        else:
            segments = [next(iter(lengths[keys[0]] if keys[0] in lengths else lengths[keys[-1]])) for keys in parts]
        if sum(segments) * n != cond.shape[1]:
            raise ValueError(f"the text encoder returned {cond.shape[1]} tokens for {n} sentences of "
                             f"{' + '.join(map(str, segments))} tokens each: an encoder layout this pack does not "
                             "know")
        pieces, offset = [], 0
        for length in segments:
            pieces.append(cond[:, offset:offset + n * length].reshape(n, length, cond.shape[-1]))
            offset += n * length
        hidden = torch.cat(pieces, dim=1)
        encode.segments = tuple(segments)
        return hidden, _per_sentence_pooled(pooled_by_module, first_pooled, n)

    encode.family = family
    encode.segments = ()
    return encode


def _per_sentence_pooled(candidates, first_pooled, n):
    """The per-sentence pooled vectors [n, width] whose first row is ComfyUI's first_pooled: one encoder's (SDXL:
    CLIP-G; Flux: CLIP-L) or several side by side in encoder order (SD 3.x: CLIP-L then CLIP-G)."""
    if first_pooled is None:
        return None
    candidates = [p for p in candidates if p.dim() == 2 and p.shape[0] == n]
    width, offset, picked = first_pooled.shape[-1], 0, []
    for p in candidates:
        w = p.shape[-1]
        if offset + w <= width and torch.equal(p[0:1].to(first_pooled), first_pooled[:, offset:offset + w]):
            picked.append(p.to(first_pooled.device))
            offset += w
            if offset == width:
                return torch.cat(picked, dim=-1)
    return None


def clip_description(clip):
    """(encoder name, fingerprint of the text encoder's weights)."""
    model = clip.cond_stage_model
    return type(model).__name__, encoder_fingerprint(model.state_dict())


def edit_conditioning(conditioning, direction: EditDirection, multiplier: float = 1.0):
    """A new CONDITIONING with ``multiplier * direction`` added to each entry's tokens (and pooled vector)."""
    out = []
    for tensor, extra in conditioning:
        pooled = extra.get("pooled_output")
        check_conditioning(direction, tensor.shape[-1], None if pooled is None else pooled.shape[-1])
        edited = apply_direction(tensor, direction, multiplier)
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
        if sentence_source != "file":  # file mode may leave the words blank: the files name the edit
            for name, word, example in (("source", source, "what the image shows now, e.g. 'cat'"),
                                        ("target", target, "what it should show instead, e.g. 'dog'")):
                if not word:
                    raise ValueError(f"Build Edit Direction's {name} is empty: type {example} in its {name} box")
        src = _sentences(source, sentence_source, count, seed, kind, source_sentences, source_file, "source")
        tgt = _sentences(target, sentence_source, count, seed, kind, target_sentences, target_file, "target")
        if sentence_source == "file":  # blank words: name the edit after the files ("tabby cat.txt" -> "tabby cat")
            source = source or sentence_file_label(source_file)
            target = target or sentence_file_label(target_file)
        if src == tgt:  # before minutes of encoding: the direction would be exactly zero
            what = {"generated": f"source and target are the same word ({source!r})",
                    "custom": "source_sentences and target_sentences hold the same sentences",
                    "file": f"source_file and target_file hold the same sentences ({source_file!r}, {target_file!r})"}
            raise ValueError(f"Build Edit Direction: {what[sentence_source]}, so the direction would be all zeros and "
                             "an edit with it would only reproduce the image: give the target something else "
                             "(e.g. source 'cat', target 'dog')")
        encoder, fingerprint = clip_description(clip)
        encode = clip_sentence_encoder(clip)
        direction = build_direction(encode, source, target, src, tgt, batch_size=ENCODE_BATCH, encoder=encoder,
                                    fingerprint=fingerprint, family=encode.family)
        check_edit(direction)  # e.g. 'Cat' and 'cat': CLIP lowercases, the sentences encode identically
        # the per-sentence layout is known once the encoder has run
        return (dataclasses.replace(direction, segments=encode.segments),)


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
        direction = direction_from_word_embeddings(*embeddings, *words, origin="authors' word embeddings")
        check_edit(direction)  # the same file twice (source_file = target_file): a zero direction
        return (direction,)


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
                "multiplier": ("FLOAT", {"default": 1.0, "min": -10.0, "max": 10.0, "step": 0.05, "tooltip": "Edit strength: 1 as the references; the authors' demo offers 0-2; negative reverses the edit. 0 (no edit at all) is refused."}),
            }
        }

    def apply(self, conditioning, direction, multiplier):
        check_edit(direction, multiplier, "multiplier")
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
