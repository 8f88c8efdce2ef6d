"""Joint-attention maps of MMDiT models (SD 3.x, Flux) for pix2pix-zero's guidance, in plain torch.

In an MMDiT block text and image tokens attend jointly: one softmax over the keys of [text, image] (SD 3.x: context
tokens first, then the image patches; Flux double blocks: txt then img, or img then txt in "flipped" blocks). The
analogue of a UNet's cross-attention map is the block of those probabilities with IMAGE queries and TEXT keys, each
row still normalized over ALL keys as the model computes it: softmax over every key, then keep the text columns. A
row of that block therefore sums to at most 1 (the rest of the mass is on image keys).

Fast kernels never expose probabilities, so while maps are wanted the attention is computed explicitly here (the
full [tokens, tokens] probabilities of one block: its output must be the model's, and the gradient of the text
columns needs the normalizer over all keys). Maps are laid out as core.attention.AttentionMaps expects:
[batch * heads, image queries, text keys], row b * heads + h.
"""
from __future__ import annotations

import torch

from .attention import at_least_float32

__all__ = ["apply_rope", "explicit_joint_attention", "token_slices"]


def token_slices(n_txt: int, n_img: int, txt_first: bool = True) -> tuple[slice, slice]:
    """(text positions, image positions) along the joint token axis."""
    if txt_first:
        return slice(0, n_txt), slice(n_txt, n_txt + n_img)
    return slice(n_img, n_img + n_txt), slice(0, n_img)


def _heads_first(t: torch.Tensor, heads: int, skip_reshape: bool) -> torch.Tensor:
    """ComfyUI's attention layouts to [batch, heads, tokens, dim_head]: [B, L, H * D] (SD 3.x's q and k; its v comes
    as [B, L, H, D], which ComfyUI's own functions view the same way) or already [B, H, L, D] (`skip_reshape`,
    Flux after RoPE)."""
    if skip_reshape:
        return t
    b, n = t.shape[:2]
    if t[0, 0].numel() % heads:
        raise ValueError(f"attention width {t[0, 0].numel()} is not divisible by {heads} heads")
    return t.reshape(b, n, heads, -1).transpose(1, 2)


def explicit_joint_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    heads: int,
    *,
    text: slice,
    image: slice,
    skip_reshape: bool = False,
    skip_output_reshape: bool = False,
    mask: torch.Tensor | None = None,
    upcast: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Joint attention that also returns the image-query/text-key probabilities: (out, maps).

    out has the layout ComfyUI's attention functions return for these flags ([B, L, H * D], or [B, H, L, D] with
    skip_output_reshape), in v's dtype. maps: float32 [B * heads, image queries, text keys], rows normalized over
    all keys. Scores and softmax are taken in float32 (float64 for float64 inputs) from upcast q and k, whatever
    `upcast` says (it is kept for the hosts' signature).
    """
    qh, kh, vh = (_heads_first(t, heads, skip_reshape) for t in (q, k, v))
    # q and k are upcast before the product whatever `upcast` says: scores formed in bf16/fp16 put percent-level
    # errors on the large probabilities the guidance compares (the maps are few, so this costs little).
    qh, kh = at_least_float32(qh), at_least_float32(kh)
    scores = (qh @ kh.transpose(-1, -2)) * qh.shape[-1] ** -0.5
    if mask is not None:  # ComfyUI's masks: boolean (True = attend) or additive
        # [L, L] and [batch, L, L] apply to every head, as ComfyUI's attention_pytorch broadcasts them
        if mask.ndim == 2:
            mask = mask.unsqueeze(0)
        if mask.ndim == 3:
            mask = mask.unsqueeze(1)
        if mask.dtype == torch.bool:
            scores = scores.masked_fill(~mask, float("-inf"))
        else:
            scores = scores + mask.to(scores.dtype)
    probs = scores.softmax(dim=-1)
    out = probs.to(vh.dtype) @ vh
    if not skip_output_reshape:
        b, h, n, d = out.shape
        out = out.transpose(1, 2).reshape(b, n, h * d)
    # A copy, not a view: a view would keep the whole [tokens, tokens] probabilities of every block alive (the
    # recorded references, the gradient pass's maps waiting for the loss): 1.7 GB per block for SD 3.5 at 1024 px.
    maps = probs[:, :, image, text].contiguous()
    return out, maps.reshape(-1, maps.shape[-2], maps.shape[-1])


def apply_rope(xq: torch.Tensor, xk: torch.Tensor, freqs_cis: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Flux's rotary position embedding in plain torch (differentiable), the formula of ComfyUI's own fallback
    (comfy/ldm/flux/math.py). ComfyUI 0.8.0 applies RoPE with comfy_kitchen's custom op, which registers no autograd
    formula: the gradient pass's Flux double block (nodes/guided_flow.py) calls this instead; nothing of ComfyUI is
    patched."""

    def rope1(x):
        x_ = x.to(dtype=freqs_cis.dtype).reshape(*x.shape[:-1], -1, 1, 2)
        out = freqs_cis[..., 0] * x_[..., 0] + freqs_cis[..., 1] * x_[..., 1]
        return out.reshape(*x.shape).type_as(x)

    return rope1(xq), rope1(xk)
