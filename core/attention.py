"""Cross-attention maps for pix2pix-zero's guidance (paper section 3.3), in plain torch.

The guidance compares the cross-attention probabilities softmax(Q K^T / sqrt(d)) of every cross-attention (attn2)
layer between the edit and the reconstruction. Fast attention kernels never expose those probabilities, so attn2
layers compute them explicitly here (77 keys per prompt chunk: cheap); self-attention keeps the host's fast kernel.

Layouts follow both ComfyUI and diffusers: q, k, v are [batch, tokens, heads * dim_head], and probabilities are
[batch * heads, query_tokens, key_tokens] with row b * heads + h (diffusers' `head_to_batch_dim`, ComfyUI's
`attention_basic`).

`AttentionMaps` records one denoising step's maps keyed by (layer key, branch) and, on a later pass, accumulates
the references' loss of every observed map against the recorded one of a chosen branch. A "branch" is a name of one
CFG copy ("negative", "positive" = the caption, "edited"); hosts split a batch by their own branch flags (ComfyUI's
`cond_or_uncond`), never by assuming an order.
"""
from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Optional

import torch

__all__ = ["AttentionMaps", "at_least_float32", "attention_loss", "attention_probs", "explicit_attention", "split_heads"]


def at_least_float32(t: torch.Tensor) -> torch.Tensor:
    """t in float32 if it is in a half-precision type, else unchanged: float64 stays float64, so a computation run in
    float64 (the tests compare formulas there, far below float32 rounding) is not rounded to float32 on the way."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def split_heads(t: torch.Tensor, heads: int) -> torch.Tensor:
    """[batch, tokens, heads * dim_head] -> [batch * heads, tokens, dim_head] (row b * heads + h)."""
    b, n, inner = t.shape
    if inner % heads:
        raise ValueError(f"attention width {inner} is not divisible by {heads} heads")
    return t.reshape(b, n, heads, inner // heads).permute(0, 2, 1, 3).reshape(b * heads, n, inner // heads)


def attention_probs(q: torch.Tensor, k: torch.Tensor, heads: int, upcast: bool = False) -> torch.Tensor:
    """softmax(q k^T * dim_head^-0.5) as [batch * heads, q_tokens, k_tokens], float32 (float64 for float64 inputs).

    q, k: [batch, tokens, heads * dim_head]. The scores are computed like diffusers' `get_attention_scores`
    (baddbmm with alpha = scale), in float32 when `upcast` (the model asks for it: SD 2.x) or when the inputs are
    float32, else in the inputs' dtype; the softmax is always taken in float32 (77 keys: cheap), so the maps the
    loss compares are never half precision.
    """
    qh, kh = split_heads(q, heads), split_heads(k, heads)
    if upcast:
        qh, kh = at_least_float32(qh), at_least_float32(kh)
    scale = qh.shape[-1] ** -0.5
    scores = torch.baddbmm(
        torch.empty(qh.shape[0], qh.shape[1], kh.shape[1], dtype=qh.dtype, device=qh.device),
        qh, kh.transpose(-1, -2), beta=0, alpha=scale,
    )
    return at_least_float32(scores).softmax(dim=-1)


def explicit_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, upcast: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention that also returns its probabilities: (out [batch, q_tokens, heads * dim_head], probs).

    out is in v's dtype, as the host's attention returns it (before the output projection)."""
    probs = attention_probs(q, k, heads, upcast)
    vh = split_heads(v, heads)
    out = torch.bmm(probs.to(vh.dtype), vh)
    b = q.shape[0]
    out = out.reshape(b, heads, out.shape[1], out.shape[2]).permute(0, 2, 1, 3).reshape(b, out.shape[1], -1)
    return out, probs


def attention_loss(maps: torch.Tensor, reference: torch.Tensor, rows: float) -> torch.Tensor:
    """The references' map loss: squared difference summed over query and key tokens, divided by `rows`.

    diffusers and the authors compute ((M - R)^2).sum((1, 2)).mean(0) over the [copies * batch * heads] rows of a
    CFG batch. Summing a branch's rows and dividing by copies * heads gives the same gradient to every copy and
    image while keeping images of a batch independent (the references handle one image)."""
    if maps.shape != reference.shape:
        raise RuntimeError(
            f"cross-attention map of shape {tuple(maps.shape)} cannot be compared with the reference's "
            f"{tuple(reference.shape)}: the edit and the reconstruction must use the same latent size and prompt "
            "length (77-token chunks)"
        )
    return (at_least_float32(maps) - at_least_float32(reference)).pow(2).sum() / rows


class AttentionMaps:
    """One step's attn2 probabilities keyed by (layer key, branch), and the map loss against them.

    Modes: `record()` keeps every observed map as the reference (detached);
    `compare(targets, copies)` adds attention_loss(map, reference[(layer, targets[branch])], copies * heads) for
    every observed map of a branch in `targets`, with autograd (per-branch totals in `losses`); `off()` ignores
    maps (hosts then use their fast attention). A host's attention hook asks `wants_maps` first and calls `observe`
    or `observe_batch` with the layer's head count.
    """

    def __init__(self):
        self.mode = "off"
        self.reference: dict[tuple[Hashable, str], torch.Tensor] = {}
        self.targets: dict[str, str] = {}
        self.copies = 1
        self.maps_only = False
        self.losses: dict[str, torch.Tensor] = {}
        self.recorded_branches: Optional[set] = None

    @property
    def wants_maps(self) -> bool:
        return self.mode != "off"

    def record(self, branches: Optional[Sequence[str]] = None) -> None:
        """Start a reference pass: forget the previous step's maps (only one step's maps ever live). `branches`: keep
        only these branches' maps (the ones a later compare targets); None keeps every branch's."""
        self.mode = "record"
        self.recorded_branches = None if branches is None else set(branches)
        self.reference.clear()
        self.losses = {}

    def compare(self, targets: Mapping[str, str], copies: int, maps_only: bool = False) -> None:
        """Start an edit pass: branch b's maps are compared with the recorded maps of branch targets[b].

        copies: how many CFG copies the references batch (2 with CFG, 1 without); the loss of a layer with h heads
        is divided by copies * h, the references' mean over their rows. maps_only: the caller uses nothing of this
        pass but the losses, so a host may stop the model once it has observed every recorded layer
        (`reference_layers`): what runs after the last cross-attention layer cannot change the loss."""
        self.mode = "compare"
        self.targets = dict(targets)
        self.copies = int(copies)
        self.maps_only = bool(maps_only)
        self.losses = {}

    @property
    def reference_layers(self) -> set:
        """The layers the reference pass recorded (what a compare pass must observe)."""
        return {layer for layer, _ in self.reference}

    def off(self) -> None:
        self.mode = "off"
        self.maps_only = False

    def clear(self) -> None:
        self.mode = "off"
        self.maps_only = False
        self.reference.clear()
        self.losses = {}

    def total_loss(self) -> torch.Tensor:
        """Sum of the per-branch losses of the current compare pass (0 when nothing was compared)."""
        if not self.losses:
            return torch.zeros(())
        return sum(self.losses.values())

    def observe(self, layer: Hashable, branch: str, probs: torch.Tensor, heads: int) -> None:
        """One branch's maps of one layer: [batch * heads, q_tokens, k_tokens]."""
        if self.mode == "record":
            if self.recorded_branches is None or branch in self.recorded_branches:
                self.reference[(layer, branch)] = probs.detach()
        elif self.mode == "compare" and branch in self.targets:
            key = (layer, self.targets[branch])
            if key not in self.reference:
                raise RuntimeError(
                    f"no reference cross-attention map for layer {layer!r} and branch {self.targets[branch]!r}: "
                    "the reference pass did not run this layer (recorded layers: "
                    f"{sorted({str(k[0]) for k in self.reference})})"
                )
            loss = attention_loss(probs, self.reference[key], self.copies * heads)
            self.losses[branch] = self.losses[branch] + loss if branch in self.losses else loss

    def observe_batch(self, layer: Hashable, probs: torch.Tensor, branches: Sequence[str], heads: int) -> None:
        """Observe a batch made of len(branches) equal chunks, chunk i belonging to branches[i]."""
        if probs.shape[0] % len(branches):
            raise RuntimeError(f"{probs.shape[0]} attention rows cannot be split into {len(branches)} branches")
        for branch, chunk in zip(branches, probs.chunk(len(branches))):
            self.observe(layer, branch, chunk, heads)
