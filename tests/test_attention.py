"""Explicit cross-attention probabilities, the references' map loss, and recording keyed by (layer, branch)."""
import pytest
import torch
import torch.nn.functional as F

from tolerances import gamma, same_math_atol, unit_roundoff

from core.attention import AttentionMaps, attention_loss, attention_probs, explicit_attention, split_heads


def _qkv(batch=2, q_tokens=16, k_tokens=77, heads=4, dim_head=8, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    inner = heads * dim_head
    return tuple(torch.randn(batch, n, inner, generator=g).to(dtype) for n in (q_tokens, k_tokens, k_tokens))


def test_probs_and_output_match_diffusers_attention_and_sdpa():
    """Same math and layout as diffusers' Attention (head_to_batch_dim, get_attention_scores): bit for bit in fp32.
    The output equals PyTorch's scaled_dot_product_attention up to float32 rounding."""
    from diffusers.models.attention_processor import Attention

    heads, dim_head = 4, 8
    q, k, v = _qkv(heads=heads, dim_head=dim_head)
    attn = Attention(query_dim=heads * dim_head, heads=heads, dim_head=dim_head)
    expected = attn.get_attention_scores(attn.head_to_batch_dim(q), attn.head_to_batch_dim(k))
    out, probs = explicit_attention(q, k, v, heads)
    assert probs.shape == (2 * heads, 16, 77) and probs.dtype == torch.float32
    assert torch.equal(probs, expected)
    torch.testing.assert_close(probs.sum(-1), torch.ones(2 * heads, 16))
    # SDPA: the same attention in exact arithmetic, another kernel: compared in float64 (tolerances.py, rule 2)
    q64, k64, v64 = (t.double() for t in (q, k, v))
    out64, _ = explicit_attention(q64, k64, v64, heads)
    sdpa = F.scaled_dot_product_attention(*(t.view(2, -1, heads, dim_head).transpose(1, 2) for t in (q64, k64, v64)))
    torch.testing.assert_close(out64, sdpa.transpose(1, 2).reshape(2, 16, heads * dim_head), rtol=0,
                               atol=same_math_atol(out64))
    # rows are batch-major (b * heads + h), as diffusers' and ComfyUI's layouts
    assert torch.equal(split_heads(q, heads)[heads + 1], q[1, :, dim_head:2 * dim_head])


def test_half_precision_inputs_give_float32_maps_and_upcast_is_closer():
    q, k, v = _qkv(seed=1)
    exact = attention_probs(q, k, 4)
    half = [t.half() for t in (q, k, v)]
    plain = attention_probs(half[0], half[1], 4)
    upcast = attention_probs(half[0], half[1], 4, upcast=True)
    assert plain.dtype == upcast.dtype == torch.float32
    assert (upcast - exact).abs().max() <= (plain - exact).abs().max()
    # Bound: rounding q and k to fp16 changes each product q_i k_i by at most (2 u16 + u16^2) |q_i k_i|, so every
    # score moves by at most delta = scale * max_row sum_i |q_i k_i| * (2 u16 + u16^2) (+ float32 rounding of the
    # product, 1e4x smaller: covered by the 1.01); a softmax whose scores move by at most delta changes each
    # probability p by a factor within [exp(-2 delta), exp(2 delta)], i.e. by at most p (exp(2 delta) - 1).
    u16 = unit_roundoff(torch.float16)
    a, b = (t.reshape(2, -1, 4, 8).transpose(1, 2).abs() for t in (q, k))
    delta = 8 ** -0.5 * float((a @ b.transpose(-1, -2)).max()) * (2 * u16 + u16**2) * 1.01
    assert float(((upcast - exact).abs() / exact).max()) <= torch.tensor(2 * delta).expm1().item()
    out, _ = explicit_attention(*half, 4)
    assert out.dtype == torch.float16


def test_loss_equals_the_references_loss_and_gives_each_copy_its_branch_gradient():
    """diffusers' Pix2PixZeroL2Loss over a CFG batch [negative copy, edited copy] (rows 2 * heads, .mean(0)) equals
    the sum of our per-branch losses divided by copies * heads, and so do the gradients of each copy."""
    from diffusers.pipelines.deprecated.stable_diffusion_variants.pipeline_stable_diffusion_pix2pix_zero import (
        Pix2PixZeroL2Loss,
    )

    heads = 4
    # float64: the two losses sum the same squares in other orders (tolerances.py, rule 2)
    q, k, _ = _qkv(batch=2, heads=heads, seed=2, dtype=torch.float64)
    q = q.clone().requires_grad_(True)
    reference = attention_probs(*_qkv(batch=2, heads=heads, seed=3, dtype=torch.float64)[:2], heads)
    theirs = Pix2PixZeroL2Loss()
    theirs.compute_loss(attention_probs(q, k, heads), reference)
    (grad_theirs,) = torch.autograd.grad(theirs.loss, q)

    maps = AttentionMaps()
    maps.record()
    maps.observe_batch("layer", reference, ["negative", "positive"], heads)
    maps.compare({"negative": "negative", "edited": "positive"}, copies=2)
    maps.observe_batch("layer", attention_probs(q, k, heads), ["negative", "edited"], heads)
    ours = maps.total_loss()
    (grad_ours,) = torch.autograd.grad(ours, q)
    torch.testing.assert_close(ours, theirs.loss.to(ours.dtype), rtol=0, atol=same_math_atol(theirs.loss.detach()))
    torch.testing.assert_close(grad_ours, grad_theirs, rtol=0, atol=same_math_atol(grad_theirs))
    assert set(maps.losses) == {"negative", "edited"}


def test_branches_are_split_by_flags_not_by_position():
    """A host may batch the branches in any order (ComfyUI's cond_or_uncond): the same maps give the same losses."""
    heads = 2
    ref = attention_probs(*_qkv(batch=2, heads=heads, seed=4)[:2], heads)
    cur = attention_probs(*_qkv(batch=2, heads=heads, seed=5)[:2], heads)
    results = []
    for order in (["negative", "positive"], ["positive", "negative"]):
        maps = AttentionMaps()
        maps.record()
        chunks = dict(zip(["negative", "positive"], ref.chunk(2)))
        maps.observe_batch(("input", 1, 0), torch.cat([chunks[b] for b in order]), order, heads)
        maps.compare({"negative": "negative", "edited": "positive"}, copies=2)
        cur_chunks = dict(zip(["negative", "edited"], cur.chunk(2)))
        swapped = ["edited", "negative"] if order[0] == "positive" else ["negative", "edited"]
        maps.observe_batch(("input", 1, 0), torch.cat([cur_chunks[b] for b in swapped]), swapped, heads)
        results.append({b: float(v) for b, v in maps.losses.items()})
    assert results[0] == results[1]
    # observe() computes exactly this call on the same chunks (only their memory layout differs, which a float32
    # .sum() may reduce in another order): gamma(n) of the n = rows * 16 * 77 squares summed (tolerances.py, rule 3)
    expected = attention_loss(cur.chunk(2)[1], ref.chunk(2)[1], 2 * heads)
    assert results[0]["edited"] == pytest.approx(float(expected), rel=2 * gamma(cur.chunk(2)[1].numel()))


def test_layers_are_kept_apart_and_a_new_step_forgets_the_old_maps():
    heads = 2
    a = attention_probs(*_qkv(batch=1, heads=heads, seed=6)[:2], heads)
    b = attention_probs(*_qkv(batch=1, heads=heads, seed=7)[:2], heads)
    maps = AttentionMaps()
    maps.record()
    maps.observe("L1", "positive", a, heads)
    maps.observe("L2", "positive", b, heads)
    maps.compare({"edited": "positive"}, copies=1)
    maps.observe("L1", "edited", a, heads)  # same map: 0
    maps.observe("L2", "edited", a, heads)
    # L1's loss is exactly 0 (a - a), and 0 + x is x: the same arithmetic as the direct call
    assert float(maps.losses["edited"]) == float(attention_loss(a, b, heads))
    maps.observe("L1", "negative", b, heads)  # a branch that is not compared is ignored
    assert set(maps.losses) == {"edited"}
    maps.record()
    assert maps.reference == {} and maps.losses == {}
    maps.observe("L1", "positive", a, heads)
    maps.compare({"edited": "positive"}, copies=1)
    with pytest.raises(RuntimeError, match="no reference cross-attention map for layer 'L2'"):
        maps.observe("L2", "edited", a, heads)
    maps.off()
    assert not maps.wants_maps
    maps.observe("L2", "edited", a, heads)  # off: ignored


def test_shape_mismatch_is_a_clear_error():
    heads = 2
    small = attention_probs(*_qkv(batch=1, q_tokens=16, heads=heads)[:2], heads)
    large = attention_probs(*_qkv(batch=1, q_tokens=64, heads=heads)[:2], heads)
    with pytest.raises(RuntimeError, match="same latent size"):
        attention_loss(small, large, heads)
    with pytest.raises(ValueError, match="not divisible by 3 heads"):
        split_heads(torch.zeros(1, 4, 8), 3)


def test_a_reference_pass_keeps_only_the_branches_asked_for():
    """record(branches=...) keeps the maps a later compare targets: a real negative's maps (CFG) are not stored
    when nothing is compared with them (twice the memory otherwise); record() keeps every branch, as before."""
    from core.attention import AttentionMaps

    probs = torch.rand(4, 16, 7)
    maps = AttentionMaps()
    maps.record(branches=("caption",))
    maps.observe_batch("block 0", probs, ["negative", "caption"], heads=2)
    assert set(maps.reference) == {("block 0", "caption")}
    assert torch.equal(maps.reference[("block 0", "caption")], probs.chunk(2)[1])
    maps.record()
    maps.observe_batch("block 0", probs, ["negative", "caption"], heads=2)
    assert set(maps.reference) == {("block 0", "negative"), ("block 0", "caption")}
