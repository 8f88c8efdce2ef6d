"""Weights loaded under torch.inference_mode, made usable by autograd for one pass, without copying them.

Hosts that load models under `torch.inference_mode()` (ComfyUI's executor does) hold every weight as an inference
tensor, and autograd refuses to save an inference tensor for the backward ("Inference tensors cannot be saved for
backward"): a gradient w.r.t. the input of a linear or convolution layer needs its weight. Copying the weights works
but costs a full copy (per forward if done per layer, as identity weight wrappers make ComfyUI do).

`normal_tensor_weights(module)` instead swaps, for the duration of a `with` block, every inference-tensor parameter
and buffer of `module` for a normal tensor ALIASING the same storage (`Tensor.set_` on a fresh tensor: no copy, and
the alias is not an inference tensor), then puts the originals back. Nothing is copied and nothing outlives the
block; the aliases never require grad, so no weight gradient is computed. Use it around the gradient pass only.
"""
from __future__ import annotations

import contextlib

import torch

__all__ = ["normal_alias", "normal_tensor_weights"]


def normal_alias(t: torch.Tensor) -> torch.Tensor:
    """A normal (non-inference) tensor sharing t's storage, shape, strides and dtype. Call outside inference mode."""
    alias = torch.empty(0, dtype=t.dtype, device=t.device).set_(t.untyped_storage(), t.storage_offset(), t.shape,
                                                                 t.stride())
    if isinstance(t, torch.nn.Parameter):
        alias = torch.nn.Parameter(alias, requires_grad=False)
    return alias


@contextlib.contextmanager
def normal_tensor_weights(module: torch.nn.Module):
    """Within the block, `module`'s inference-tensor parameters and buffers are normal-tensor aliases (no copy)."""
    if torch.is_inference_mode_enabled():
        raise RuntimeError("normal_tensor_weights must be entered outside torch.inference_mode")
    swapped = []  # (dict, name, original)
    try:
        for sub in module.modules():
            for table in (sub._parameters, sub._buffers):
                for name, t in table.items():
                    # Tensor subclasses (quantized weights) cannot be aliased this way: left as they are.
                    if t is None or not t.is_inference() or type(t) not in (torch.Tensor, torch.nn.Parameter):
                        continue
                    table[name] = normal_alias(t)
                    swapped.append((table, name, t))
        yield len(swapped)
    finally:
        for table, name, original in reversed(swapped):
            table[name] = original
