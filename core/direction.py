"""Edit directions: the mean text embedding of target sentences minus that of source sentences (plain torch).

pix2pix-zero encodes each sentence padded to one 77-token chunk, keeps the per-token last hidden states
([1, 77, width], not a pooled vector), averages them over the sentences of each word and subtracts:
``direction = mean(target) - mean(source)``, NOT normalized. The direction is position aligned and is added to all
77 token positions of the caption embedding (``c_edit = c + multiplier * direction``). SDXL conditioning also needs a
pooled vector, so a direction may carry the difference of the mean pooled vectors too.

Files: ``save_direction`` writes a ``.safetensors`` file (tensors ``embedding`` and optionally ``pooled``) whose
metadata names the edit, the sentence counts, the encoder and a fingerprint of its weights; ``load_direction``
reads it back bit exact. The authors' per-word mean embeddings (``cat.pt``, ``dog.pt``: torch-saved [1, 77, 768]
tensors for SD 1.4) are read by ``load_word_embedding`` (``weights_only=True``, never a full unpickle).
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch

from .files import atomic_write

__all__ = [
    "DIRECTION_FORMAT",
    "FAMILIES",
    "EditDirection",
    "apply_direction",
    "apply_pooled_direction",
    "build_direction",
    "check_conditioning",
    "check_edit",
    "conditioning_kind",
    "direction_from_word_embeddings",
    "encoder_fingerprint",
    "encoder_kind",
    "load_direction",
    "load_word_embedding",
    "mean_embedding",
    "save_direction",
]

DIRECTION_FORMAT = "pix2pix-zero edit direction"
FORMAT_VERSION = "1"

# Width of the per-token text embedding -> what usually produces it. Only a label: the width check is what protects.
_KNOWN_WIDTHS = {768: "SD 1.x (CLIP-L)", 1024: "SD 2.x (OpenCLIP-H)", 2048: "SDXL (CLIP-L + OpenCLIP-bigG)",
                 4096: "SD 3.x or Flux (T5-XXL width)"}

# Text-encoder families a direction records (``EditDirection.family``) and what their conditioning holds. MMDiT
# conditionings (SD 3.x, Flux) put T5 tokens on the sequence: SD 3.x is [77 CLIP-L+G tokens padded to 4096 wide,
# then the T5 tokens], Flux is the T5 tokens alone; their pooled vectors are CLIP-L 768 + CLIP-G 1280 (SD 3.x) and
# CLIP-L 768 (Flux).
FAMILIES = {
    "sd1": "SD 1.x (CLIP-L)",
    "sd2": "SD 2.x (OpenCLIP-H)",
    "sdxl": "SDXL (CLIP-L + OpenCLIP-bigG)",
    "sd3": "SD 3.x (CLIP-L + CLIP-G + T5-XXL)",
    "flux": "Flux (T5-XXL sequence + CLIP-L pooled)",
}
# (width, pooled width) of the full-size encoders -> family, to name what a conditioning came from in messages.
_KNOWN_CONDITIONINGS = {(768, None): "sd1", (1024, None): "sd2", (2048, 1280): "sdxl", (4096, 2048): "sd3",
                        (4096, 768): "flux"}

# An encoder returns per-token hidden states [n, tokens, width] and pooled vectors [n, pooled_width] (or None).
EncodeFn = Callable[[Sequence[str]], "tuple[torch.Tensor, torch.Tensor | None]"]


def encoder_kind(width: int) -> str:
    """A readable name for the text encoder family that gives embeddings of this width."""
    return _KNOWN_WIDTHS.get(int(width), f"unknown text encoder ({width} wide)")


def conditioning_kind(width: int, pooled_width=None) -> str:
    """A readable guess of what produced a conditioning of this width and pooled width (full-size encoders)."""
    family = _KNOWN_CONDITIONINGS.get((int(width), None if pooled_width is None else int(pooled_width)))
    if family is not None:
        return FAMILIES[family]
    return encoder_kind(width) if int(width) in _KNOWN_WIDTHS else "an unknown text encoder"


def _encoder_label(direction) -> str:
    if direction.family in FAMILIES:
        return f"{direction.encoder}, {FAMILIES[direction.family]}" if direction.encoder else FAMILIES[direction.family]
    kind = encoder_kind(direction.width)
    return f"{direction.encoder}, {kind}" if direction.encoder and direction.encoder != kind else kind


@dataclass(frozen=True)
class EditDirection:
    """An edit in text-embedding space: ``embedding`` [1, tokens, width] (float32), ``pooled`` [1, pooled] or None.

    ``encoder`` names the text encoder that made it (class name / kind) and ``fingerprint`` identifies its weights
    ("" when unknown, e.g. imported files). ``source_count`` / ``target_count`` are the numbers of sentences.
    ``family`` is the text-encoder family (a FAMILIES key; "" for directions made before families were recorded)
    and ``segments`` the per-sentence token counts of the sequence's parts, in order (SD 3.x with T5: (77, 77),
    CLIP 77 then T5 77; Flux: (256,); CLIP-only encoders: (77,)); () when unknown (then (tokens,) is assumed).
    """

    embedding: torch.Tensor
    pooled: torch.Tensor | None = None
    source: str = ""
    target: str = ""
    source_count: int = 0
    target_count: int = 0
    encoder: str = ""
    fingerprint: str = ""
    origin: str = "sentences"
    extra: Mapping[str, str] = field(default_factory=dict)
    family: str = ""
    segments: tuple = ()

    def __post_init__(self):
        e = self.embedding
        if not isinstance(e, torch.Tensor) or e.dim() != 3 or e.shape[0] != 1:
            shape = tuple(e.shape) if isinstance(e, torch.Tensor) else type(e).__name__
            raise ValueError(f"an edit direction embedding must have shape [1, tokens, width], got {shape}")
        if self.pooled is not None and (self.pooled.dim() != 2 or self.pooled.shape[0] != 1):
            raise ValueError(f"a pooled edit direction must have shape [1, width], got {tuple(self.pooled.shape)}")
        if self.segments and sum(self.segments) != e.shape[1]:
            raise ValueError(f"an edit direction's segments {tuple(self.segments)} must add up to its {e.shape[1]} tokens")

    @property
    def repeats_per_chunk(self) -> bool:
        """Whether the direction is one CLIP chunk that a multi-chunk caption repeats (SD 1.x/2.x/SDXL, SD 3.x
        without T5). A sequence with T5 tokens (SD 3.x with T5, Flux) is one unchunked sequence: no repeat."""
        return len(self.segments) <= 1 and self.family != "flux"

    @property
    def width(self) -> int:
        return int(self.embedding.shape[-1])

    @property
    def tokens(self) -> int:
        return int(self.embedding.shape[1])

    @property
    def name(self) -> str:
        return f"{self.source} -> {self.target}"

    def describe(self) -> str:
        pooled = f", pooled {self.pooled.shape[-1]}" if self.pooled is not None else ""
        counts = f", {self.source_count}/{self.target_count} sentences" if self.source_count or self.target_count else ""
        return f"{self.name} ({self.tokens}x{self.width}, {_encoder_label(self)}{pooled}{counts})"


# ---------------------------------------------------------------------------------------------------------------
# Building


def mean_embedding(encode: EncodeFn, sentences: Sequence[str], batch_size: int = 64):
    """Mean over ``sentences`` of the per-token embeddings (and pooled vectors) that ``encode`` returns.

    Sentences are encoded ``batch_size`` at a time; the sum is kept in float64 so the mean does not depend on the
    batch size beyond float32 rounding of each batch. Returns ``(mean [1, tokens, width] float32,
    mean pooled [1, pooled_width] float32 or None)``.
    """
    sentences = list(sentences)
    if not sentences:
        raise ValueError("no sentences to encode")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    total = total_pooled = None
    for start in range(0, len(sentences), batch_size):
        chunk = sentences[start:start + batch_size]
        hidden, pooled = encode(chunk)
        if hidden.dim() != 3 or hidden.shape[0] != len(chunk):
            raise ValueError(f"the encoder returned shape {tuple(hidden.shape)} for {len(chunk)} sentences; "
                             "expected [sentences, tokens, width]")
        s = hidden.detach().to(torch.float64).sum(0, keepdim=True)
        total = s if total is None else total + s
        if pooled is not None:
            p = pooled.detach().to(torch.float64).sum(0, keepdim=True)
            total_pooled = p if total_pooled is None else total_pooled + p
    n = len(sentences)
    mean_pooled = None if total_pooled is None else (total_pooled / n).to(torch.float32)
    return (total / n).to(torch.float32), mean_pooled


def build_direction(
    encode: EncodeFn,
    source: str,
    target: str,
    source_sentences: Sequence[str],
    target_sentences: Sequence[str],
    batch_size: int = 64,
    encoder: str = "",
    fingerprint: str = "",
    origin: str = "sentences",
    family: str = "",
    segments: Sequence[int] = (),
) -> EditDirection:
    """``mean(encode(target_sentences)) - mean(encode(source_sentences))``, as diffusers' ``get_embeds`` +
    ``construct_direction`` (no normalization). The pooled difference is kept when the encoder gives pooled vectors."""
    src, src_pooled = mean_embedding(encode, source_sentences, batch_size)
    tgt, tgt_pooled = mean_embedding(encode, target_sentences, batch_size)
    if src.shape != tgt.shape:
        raise ValueError(f"source and target embeddings differ in shape: {tuple(src.shape)} vs {tuple(tgt.shape)}")
    # Subtract in float64 like the sums, then round once.
    embedding = (tgt.double() - src.double()).float()
    pooled = None
    if src_pooled is not None and tgt_pooled is not None:
        pooled = (tgt_pooled.double() - src_pooled.double()).float()
    return EditDirection(
        embedding=embedding, pooled=pooled, source=source, target=target,
        source_count=len(source_sentences), target_count=len(target_sentences),
        encoder=encoder, fingerprint=fingerprint, origin=origin, family=family,
        segments=tuple(int(n) for n in segments),
    )


def encoder_fingerprint(state_dict: Mapping[str, torch.Tensor], samples_per_tensor: int = 4096) -> str:
    """A short hex id of a text encoder's weights: keys, shapes, dtypes and an evenly strided sample of values.

    Two encoders with the same fingerprint have the same architecture and (with overwhelming likelihood) the same
    weights; hashing every value of a 700 MB encoder would cost seconds, the sample costs milliseconds.
    """
    h = hashlib.sha256()
    for key in sorted(state_dict):
        t = state_dict[key]
        if not isinstance(t, torch.Tensor):
            continue
        h.update(f"{key}|{tuple(t.shape)}|".encode())
        flat = t.detach().reshape(-1)
        if flat.numel() == 0:
            continue
        stride = max(1, flat.numel() // samples_per_tensor)
        sample = flat[::stride][:samples_per_tensor].to(device="cpu", dtype=torch.float32).contiguous()
        h.update(sample.numpy().tobytes())
    return h.hexdigest()[:16]


# ---------------------------------------------------------------------------------------------------------------
# Applying


def apply_direction(embedding: torch.Tensor, direction: EditDirection, multiplier: float = 1.0) -> torch.Tensor:
    """``embedding + multiplier * direction`` for a conditioning tensor [batch, tokens, width].

    A caption longer than one chunk is several 77-token chunks, each encoded on its own (with its own start and end
    tokens), so the position-aligned direction is added to every chunk. Never broadcasts silently: the width must
    match, and the token count must be a multiple of the direction's.
    """
    if embedding.dim() != 3:
        raise ValueError(f"expected a conditioning tensor [batch, tokens, width], got shape {tuple(embedding.shape)}")
    width, tokens = embedding.shape[-1], embedding.shape[1]
    if width != direction.width:
        raise ValueError(
            f"the edit direction {direction.name!r} is {direction.width} wide (built with "
            f"{_encoder_label(direction)}) but this conditioning is {width} wide "
            f"({encoder_kind(width)}): build the direction with the CLIP of the checkpoint you are editing with"
        )
    if not direction.repeats_per_chunk:
        if tokens != direction.tokens:
            raise ValueError(
                f"the conditioning has {tokens} tokens but the edit direction {direction.name!r} has "
                f"{direction.tokens} ({' + '.join(str(n) for n in direction.segments)} per sentence, "
                f"{_encoder_label(direction)}): its T5 tokens are one sequence, not 77-token chunks, so the caption "
                "must encode to the same length. Shorten the caption (T5 pads to 77 tokens for SD 3.x, 256 for Flux) "
                "or build the direction with the CLIP that encodes the caption"
            )
    elif tokens % direction.tokens != 0:
        raise ValueError(
            f"the conditioning has {tokens} tokens, not a multiple of the direction's {direction.tokens}: "
            "encode the caption with CLIPTextEncode (which pads to 77-token chunks)"
        )
    delta = direction.embedding.to(device=embedding.device, dtype=torch.float32) * float(multiplier)
    delta = delta.repeat(1, tokens // direction.tokens, 1)
    return (embedding.to(torch.float32) + delta).to(embedding.dtype)


def check_conditioning(direction: EditDirection, width: int, pooled_width=None) -> None:
    """Refuse a conditioning made by another kind of text encoder than the direction, before anything is added:
    the sequence width must match, and so must the pooled width when both have one (SD 3.x and Flux share the T5
    width 4096 and differ in the pooled vector: 2048 vs 768)."""
    direction_pooled = None if direction.pooled is None else int(direction.pooled.shape[-1])
    if int(width) == direction.width and (pooled_width is None or direction_pooled is None
                                          or int(pooled_width) == direction_pooled):
        return
    pooled = f", pooled {direction_pooled}" if direction_pooled is not None else ""
    got_pooled = f", pooled {pooled_width}" if pooled_width is not None else ""
    raise ValueError(
        f"the edit direction {direction.name!r} is {direction.width} wide (built with "
        f"{_encoder_label(direction)}{pooled}) but this conditioning is {width} wide (from "
        f"{conditioning_kind(width, pooled_width)}{got_pooled}): build the direction with the CLIP of the checkpoint you are "
        "editing with (P2PZ_BuildDirection on the same CLIP output that encodes the caption)"
    )


def is_zero(direction: EditDirection) -> bool:
    """Whether the direction moves nothing: its embedding (and pooled vector, if any) is all zeros."""
    return not bool(direction.embedding.any()) and (direction.pooled is None or not bool(direction.pooled.any()))


def check_edit(direction: EditDirection, multiplier: float = 1.0, multiplier_input: str = "multiplier") -> None:
    """Refuse an edit that changes nothing, before minutes of sampling reproduce the image: an all-zero direction
    (its source and target are the same, e.g. cat -> cat, or two identical word files) or a multiplier of 0.
    ``multiplier_input`` names the node's widget for the multiplier."""
    if is_zero(direction):
        same = (f"its source and target are the same ({direction.source!r})"
                if direction.source.strip().lower() == direction.target.strip().lower()
                else f"its source ({direction.source!r}) and target ({direction.target!r}) encode identically")
        raise ValueError(
            f"the edit direction {direction.name!r} is all zeros: {same}, so the edit would only reproduce the "
            "image. Give different words in Build Edit Direction's source and target (e.g. source 'cat', target "
            "'dog'), or pick two different word files"
        )
    if float(multiplier) == 0.0:
        raise ValueError(
            f"{multiplier_input} is 0: the direction {direction.name!r} would be added 0 times and the edit would only "
            f"reproduce the image; set {multiplier_input} to 1 (the references' strength; negative values reverse "
            "the edit)"
        )


def apply_pooled_direction(pooled: torch.Tensor | None, direction: EditDirection, multiplier: float = 1.0):
    """``pooled + multiplier * direction.pooled`` when both exist (SDXL); otherwise ``pooled`` unchanged.

    A pooled vector of another width is an error (the direction was built with another text encoder)."""
    if pooled is None or direction.pooled is None:
        return pooled
    if pooled.shape[-1] != direction.pooled.shape[-1]:
        raise ValueError(
            f"the edit direction {direction.name!r} has a pooled vector {direction.pooled.shape[-1]} wide but the "
            f"conditioning's is {pooled.shape[-1]} wide: build the direction with the CLIP of this checkpoint"
        )
    delta = direction.pooled.to(device=pooled.device, dtype=torch.float32) * float(multiplier)
    return (pooled.to(torch.float32) + delta).to(pooled.dtype)


# ---------------------------------------------------------------------------------------------------------------
# Files

_META_KEYS = ("source", "target", "encoder", "fingerprint", "origin")


def save_direction(path, direction: EditDirection, overwrite: bool = False) -> str:
    """Write ``direction`` to ``path`` (.safetensors) atomically; refuse to replace a file unless ``overwrite``."""
    from safetensors.torch import save_file

    tensors = {"embedding": direction.embedding.detach().to("cpu", torch.float32).contiguous()}
    if direction.pooled is not None:
        tensors["pooled"] = direction.pooled.detach().to("cpu", torch.float32).contiguous()
    metadata = {
        "format": DIRECTION_FORMAT,
        "format_version": FORMAT_VERSION,
        "source_count": str(direction.source_count),
        "target_count": str(direction.target_count),
        "width": str(direction.width),
        "tokens": str(direction.tokens),
        "encoder_kind": FAMILIES.get(direction.family, encoder_kind(direction.width)),
        "family": direction.family,
        "segments": json.dumps([int(n) for n in direction.segments]),
        **{k: str(getattr(direction, k)) for k in _META_KEYS},
    }
    if direction.extra:
        metadata["extra"] = json.dumps(dict(direction.extra), sort_keys=True)
    return atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata), overwrite=overwrite)


def load_direction(path) -> EditDirection:
    """Read a direction written by ``save_direction``; a truncated, corrupt or foreign file gives a clear error."""
    from safetensors import safe_open

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"edit direction file not found: {path!r}")
    try:
        with safe_open(path, framework="pt", device="cpu") as f:
            metadata = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises its own error types for bad headers and short files
        raise ValueError(
            f"{path!r} is not a readable .safetensors file (truncated or corrupt?): {e}. Rebuild the direction "
            "with 'Build Edit Direction' and save it again"
        ) from None
    if metadata.get("format") != DIRECTION_FORMAT or "embedding" not in tensors:
        raise ValueError(
            f"{path!r} is a .safetensors file but not a pix2pix-zero edit direction (format "
            f"{metadata.get('format')!r}, tensors {sorted(tensors)}). To use the authors' per-word .pt files, use "
            "'Import Word Embeddings (.pt)'"
        )
    embedding = tensors["embedding"]
    if embedding.dim() != 3 or str(embedding.shape[-1]) != metadata.get("width"):
        raise ValueError(f"{path!r} is inconsistent: embedding shape {tuple(embedding.shape)} but metadata width "
                         f"{metadata.get('width')!r}; the file is damaged, rebuild it")
    extra = json.loads(metadata["extra"]) if metadata.get("extra") else {}
    return EditDirection(
        embedding=embedding, pooled=tensors.get("pooled"),
        source_count=int(metadata.get("source_count", 0)), target_count=int(metadata.get("target_count", 0)),
        extra=extra, family=metadata.get("family", ""),
        segments=tuple(json.loads(metadata["segments"])) if metadata.get("segments") else (),
        **{k: metadata.get(k, "") for k in _META_KEYS},
    )


def load_word_embedding(path) -> torch.Tensor:
    """One of the authors' per-word mean embeddings (a torch-saved tensor [1, 77, width] or [77, width]) as
    float32 [1, tokens, width]. Loaded with ``weights_only=True``: a file holding code is refused, never run."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"word embedding file not found: {path!r}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        # PyTorch's own text advises re-running with weights_only=False: advice this pack must never pass on for a
        # file it refuses on purpose (that would run whatever code the file holds).
        raise ValueError(
            f"{path!r} was refused on purpose: it holds Python code or objects other than plain tensors, and this "
            f"pack reads .pt files with torch.load(weights_only=True) so that no file can run code. A word "
            f"embedding file holds one tensor [1, 77, width] (the pix2pix-zero authors' cat.pt, dog.pt, ...): get "
            f"the authors' file again, or, from a source you trust, save just the tensor with "
            f"torch.save(tensor.detach().cpu(), 'word.pt')"
        ) from None
    except Exception as e:
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise ValueError(
            f"{path!r} could not be read as a torch-saved tensor file (truncated, corrupt, or not a .pt file: "
            f"{type(e).__name__}: {first_line}); get the file again"
        ) from None
    if isinstance(obj, Mapping) and len(obj) == 1:
        obj = next(iter(obj.values()))
    if not isinstance(obj, torch.Tensor) or obj.dim() not in (2, 3) or (obj.dim() == 3 and obj.shape[0] != 1):
        shape = tuple(obj.shape) if isinstance(obj, torch.Tensor) else type(obj).__name__
        raise ValueError(f"{path!r} holds {shape}, not a word embedding of shape [1, tokens, width]")
    if obj.dim() == 2:
        obj = obj[None]
    return obj.detach().to(torch.float32).contiguous()


def direction_from_word_embeddings(
    source_embedding: torch.Tensor, target_embedding: torch.Tensor, source: str, target: str,
    encoder: str = "", origin: str = "word embeddings",
) -> EditDirection:
    """``target - source`` from two per-word mean embeddings (the authors' .pt files: dog.pt - cat.pt)."""
    if source_embedding.shape != target_embedding.shape:
        raise ValueError(
            f"the word embeddings differ in shape ({source!r}: {tuple(source_embedding.shape)}, {target!r}: "
            f"{tuple(target_embedding.shape)}): they were made with different text encoders"
        )
    embedding = (target_embedding.double() - source_embedding.double()).float()
    return EditDirection(embedding=embedding, source=source, target=target, origin=origin,
                         encoder=encoder or encoder_kind(embedding.shape[-1]))

