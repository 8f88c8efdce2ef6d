"""core.joint_attention and the flow guidance's step size, in plain torch (no ComfyUI)."""
import torch
from tolerances import same_math_atol

from core.flow_space import flow_sgd_step_size
from core.joint_attention import apply_rope, explicit_joint_attention, token_slices


def _qkv(b=2, n=11, heads=3, d=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, n, heads * d, generator=g, dtype=torch.float64) for _ in range(3)]


def test_output_is_torch_sdpa_and_maps_are_the_text_columns_of_full_rows():
    q, k, v = _qkv()
    heads, n_txt, n_img = 3, 4, 7
    text, image = token_slices(n_txt, n_img)
    out, maps = explicit_joint_attention(q, k, v, heads, text=text, image=image)
    split = [t.reshape(2, 11, heads, 4).transpose(1, 2) for t in (q, k, v)]
    ref = torch.nn.functional.scaled_dot_product_attention(*split).transpose(1, 2).reshape(2, 11, 12)
    # float64 inputs stay float64 (core.attention.at_least_float32): SDPA is the same math, another kernel (rule 2)
    torch.testing.assert_close(out, ref, rtol=0, atol=same_math_atol(ref))
    assert maps.shape == (2 * heads, n_img, n_txt)
    assert maps.untyped_storage().nbytes() == maps.numel() * maps.element_size()  # not a view of all probabilities
    rows = maps.sum(-1)
    assert bool((rows < 1).all()) and bool((rows > 0).all())
    # the same in Flux's layout ([B, H, L, D], text after the image in a flipped block)
    text2, image2 = token_slices(n_txt, n_img, txt_first=False)
    perm = torch.cat([torch.arange(4, 11), torch.arange(0, 4)])
    flipped = [t[:, :, perm] for t in split]
    out2, maps2 = explicit_joint_attention(*flipped, heads, text=text2, image=image2, skip_reshape=True,
                                           skip_output_reshape=True)
    torch.testing.assert_close(maps2, maps)
    torch.testing.assert_close(out2.transpose(1, 2).reshape(2, 11, 12)[:, perm.argsort()], out)


def test_rope_is_a_rotation_of_pairs():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, 2, 5, 8, generator=g)
    angle = torch.randn(1, 1, 5, 4, generator=g)
    c, s = angle.cos(), angle.sin()
    freqs = torch.stack([torch.stack([c, -s], -1), torch.stack([s, c], -1)], -2)  # [.., 4, 2, 2]
    xq, _ = apply_rope(x, x, freqs)
    pairs = x.reshape(1, 2, 5, 4, 2)
    expected = torch.stack([c * pairs[..., 0] - s * pairs[..., 1], s * pairs[..., 0] + c * pairs[..., 1]], -1)
    torch.testing.assert_close(xq, expected.reshape(x.shape))


def test_flow_step_is_the_references_step_on_the_vp_latent():
    """A step lambda * grad on x_t = x / r (the variance-preserving latent at the same SNR) moves x by
    flow_sgd_step_size * grad_x: checked with autograd on a quadratic loss."""
    g = torch.Generator().manual_seed(2)
    target = torch.randn(6, generator=g, dtype=torch.float64)
    x = torch.randn(6, generator=g, dtype=torch.float64)
    lam = 0.3
    for sigma in (0.1, 0.5, 0.9):
        r = ((1 - sigma) ** 2 + sigma ** 2) ** 0.5
        x_t = (x / r).requires_grad_(True)
        (grad_t,) = torch.autograd.grad(((r * x_t - target) ** 2).sum(), [x_t])
        moved_by_references = r * (x_t.detach() - lam * grad_t)
        x_leaf = x.clone().requires_grad_(True)
        (grad_x,) = torch.autograd.grad(((x_leaf - target) ** 2).sum(), [x_leaf])
        torch.testing.assert_close(x - flow_sgd_step_size(lam, sigma) * grad_x, moved_by_references)


def test_masks_of_two_and_three_dimensions_apply_to_every_head_as_comfyuis():
    """A mask [L, L] or [batch, L, L] applies to every head (ComfyUI's attention_pytorch unsqueezes it so): checked
    against torch's SDPA with the mask given per head, additive and boolean, float64 (rule 2)."""
    q, k, v = _qkv()
    heads, n_txt, n_img = 3, 4, 7
    text, image = token_slices(n_txt, n_img)
    split = [t.reshape(2, 11, heads, 4).transpose(1, 2) for t in (q, k, v)]
    g = torch.Generator().manual_seed(3)
    additive = torch.randn(2, 11, 11, generator=g, dtype=torch.float64)
    boolean = torch.rand(2, 11, 11, generator=g) > 0.3
    boolean[..., 0] = True  # every row attends somewhere
    for mask in (additive, boolean, additive[0], boolean[0]):
        out, _ = explicit_joint_attention(q, k, v, heads, text=text, image=image, mask=mask)
        per_head = (mask if mask.ndim == 3 else mask.expand(2, 11, 11))[:, None].expand(2, heads, 11, 11)
        ref = torch.nn.functional.scaled_dot_product_attention(*split, attn_mask=per_head)
        ref = ref.transpose(1, 2).reshape(2, 11, 12)
        torch.testing.assert_close(out, ref, rtol=0, atol=same_math_atol(ref))
