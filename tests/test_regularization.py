"""The noise regularization: agreement with diffusers' losses, the shift-0 fix, and that it does its job."""
import pytest
import torch

from tolerances import same_math_atol

from core import auto_corr_grad, auto_corr_loss, draw_shifts, kl_divergence, kl_grad, pyramid_sizes, regularize_noise


def _pipeline_cls():
    from diffusers.pipelines.deprecated.stable_diffusion_variants.pipeline_stable_diffusion_pix2pix_zero import (
        StableDiffusionPix2PixZeroPipeline,
    )

    return StableDiffusionPix2PixZeroPipeline


class ScriptedRandint:
    """Stands in for torch.randint inside diffusers' auto_corr_loss: hands out our shifts, in its draw order."""

    def __init__(self, shifts_per_call):
        self.values = [int(v) for v in shifts_per_call]
        self.bounds = []

    def __call__(self, high, size, generator=None):
        self.bounds.append(int(high))
        return torch.tensor([self.values.pop(0)])


@pytest.mark.parametrize("size", [64, 32, 12, 8])
def test_auto_corr_loss_matches_diffusers_given_same_shifts(monkeypatch, size):
    g = torch.Generator().manual_seed(size)
    # float64: diffusers' loops and our batched rolls sum the same products in other orders (tolerances.py, rule 2)
    noise = (torch.randn(1, 4, size, size, generator=g) + 0.3 * torch.randn(1, 4, 1, size, generator=g)).double()
    shifts = draw_shifts(g, 4, pyramid_sizes(size))  # [C, L], channel-major like diffusers' loops
    scripted = ScriptedRandint(shifts.flatten())
    monkeypatch.setattr(torch, "randint", scripted)
    expected = _pipeline_cls().auto_corr_loss(None, noise)
    monkeypatch.undo()
    ours = auto_corr_loss(noise, shifts)
    assert not scripted.values, "diffusers drew a different number of shifts than our pyramid has"
    # the bounds diffusers asks for are the level heights // 2, which our draws respect
    assert scripted.bounds == [s // 2 for s in pyramid_sizes(size)] * 4
    torch.testing.assert_close(ours, expected.reshape(1), rtol=0, atol=same_math_atol(expected))


def test_auto_corr_loss_is_per_image_and_sums_like_diffusers(monkeypatch):
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(3, 4, 16, 16, generator=g).double()  # float64: other summation orders (rule 2)
    shifts = draw_shifts(g, 4, pyramid_sizes(16))
    scripted = ScriptedRandint(shifts.flatten().repeat(3))  # diffusers draws per image; give each image ours
    monkeypatch.setattr(torch, "randint", scripted)
    expected = _pipeline_cls().auto_corr_loss(None, noise)
    monkeypatch.undo()
    ours = auto_corr_loss(noise, shifts)
    assert ours.shape == (3,)
    torch.testing.assert_close(ours.sum(), expected, rtol=0, atol=same_math_atol(expected))
    for i in range(3):
        torch.testing.assert_close(ours[i], auto_corr_loss(noise[i : i + 1], shifts)[0])


def test_kl_divergence_matches_diffusers():
    g = torch.Generator().manual_seed(3)
    noise = (1.7 * torch.randn(1, 4, 16, 16, generator=g) + 0.2).double()  # float64: other reduction orders (rule 2)
    expected = _pipeline_cls().kl_divergence(None, noise)
    torch.testing.assert_close(kl_divergence(noise), expected.reshape(1), rtol=0, atol=same_math_atol(expected))
    batch = torch.cat([noise, 0.5 * noise])
    alone = _pipeline_cls().kl_divergence(None, 0.5 * noise)
    torch.testing.assert_close(kl_divergence(batch)[1], alone, rtol=0, atol=same_math_atol(alone))


@pytest.mark.parametrize("height, width", [(64, 64), (32, 32), (18, 18), (13, 13), (8, 8), (5, 5), (24, 40)])
def test_auto_corr_grad_is_the_gradient_of_the_loss(height, width):
    """The written-out gradient equals autograd's, odd and non-square sizes included (pooling drops a row and a
    column at odd sizes)."""
    g = torch.Generator().manual_seed(height)
    # float64: autograd and the written-out gradient are the same derivative by other op sequences (rule 2)
    noise = (torch.randn(2, 4, height, width, generator=g) + 0.5 * torch.randn(2, 4, 1, width, generator=g)).double()
    shifts = draw_shifts(g, 4, pyramid_sizes(height))
    var = noise.clone().requires_grad_(True)
    (expected,) = torch.autograd.grad(auto_corr_loss(var, shifts).sum(), var)
    torch.testing.assert_close(auto_corr_grad(noise, shifts), expected, rtol=0, atol=same_math_atol(expected))
    # per image: the other images do not contribute
    torch.testing.assert_close(auto_corr_grad(noise[1:], shifts), expected[1:], rtol=0, atol=same_math_atol(expected))


def test_kl_grad_is_the_gradient_of_the_loss():
    g = torch.Generator().manual_seed(5)
    noise = torch.cat([1.7 * torch.randn(1, 4, 16, 16, generator=g) + 0.2, 0.4 * torch.randn(1, 4, 16, 16, generator=g)])
    noise = noise.double()  # float64: the same derivative by other op sequences (rule 2)
    var = noise.clone().requires_grad_(True)
    (expected,) = torch.autograd.grad(kl_divergence(var).sum(), var)
    torch.testing.assert_close(kl_grad(noise), expected, rtol=0, atol=same_math_atol(expected))


def test_regularization_steps_like_autograd_on_the_losses():
    """regularize_noise equals the references' loop (autograd on each loss, then a step), shifts replayed alike."""
    g = torch.Generator().manual_seed(4)
    # float64: autograd steps and the written-out ones, 30 steps of the same arithmetic in exact terms (rule 2)
    noise = (0.8 * torch.randn(1, 4, 32, 32, generator=g) + 0.3 * torch.randn(1, 4, 32, 1, generator=g)).double()
    sizes = pyramid_sizes(32)
    shifts = [draw_shifts(g, 4, sizes) for _ in range(25)]
    it = iter(shifts)
    ours = regularize_noise(noise, shift_sampler=lambda c, s: next(it))
    eps = noise.clone()
    it = iter(shifts)
    for _ in range(5):
        for _ in range(5):
            var = eps.detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(auto_corr_loss(var, next(it)).sum(), var)
            eps = eps - (20.0 / 5) * grad
        var = eps.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(kl_divergence(var).sum(), var)
        eps = eps - 20.0 * grad
    torch.testing.assert_close(ours, eps.detach(), rtol=0, atol=same_math_atol(eps.detach()))


def test_shifts_are_never_zero_and_stay_below_half_the_level():
    g = torch.Generator().manual_seed(0)
    sizes = pyramid_sizes(64)
    assert sizes == [64, 32, 16, 8]
    shifts = torch.stack([draw_shifts(g, 4, sizes) for _ in range(2000)])
    upper = torch.tensor([s // 2 for s in sizes])
    assert shifts.min() >= 1
    assert (shifts < upper).all()
    # every allowed shift occurs: the draw is not stuck on a few values
    for level, size in enumerate(sizes):
        assert set(shifts[:, :, level].unique().tolist()) == set(range(1, size // 2))


def test_shift_zero_would_shrink_the_variance():
    """Why d=0 is excluded: its term is mean(n^2)^2, whose gradient scales the noise down."""
    n = torch.randn(1, 1, 8, 8, generator=torch.Generator().manual_seed(0)).requires_grad_(True)
    ((n * n).mean() ** 2).backward()
    assert (n.grad * n).sum() > 0  # descending this gradient shrinks every value


def test_regularization_lowers_both_losses():
    g = torch.Generator().manual_seed(1)
    # correlated, off-scale "predicted noise", like a DDIM step's on a real image
    base = torch.randn(2, 4, 32, 32, generator=g)
    noise = 0.6 * (base + torch.roll(base, 1, 2) + torch.roll(base, 1, 3)) + 0.4
    out = regularize_noise(noise, generator=torch.Generator().manual_seed(0))
    probe = draw_shifts(torch.Generator().manual_seed(9), 4, pyramid_sizes(32))
    assert (auto_corr_loss(out, probe) < 0.5 * auto_corr_loss(noise, probe)).all()
    assert (kl_divergence(out) < 0.7 * kl_divergence(noise)).all()  # measured: AC 4x and KL 2x lower
    assert out.dtype == noise.dtype and not torch.equal(out, noise)


def test_regularization_is_seeded_and_batch_independent():
    g = torch.Generator().manual_seed(2)
    # float64: a batch and one image alone are equal in exact arithmetic, reduced in other orders (rule 2)
    noise = torch.randn(3, 4, 16, 16, generator=g).double()
    a = regularize_noise(noise, generator=torch.Generator().manual_seed(7))
    b = regularize_noise(noise, generator=torch.Generator().manual_seed(7))
    c = regularize_noise(noise, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    alone = regularize_noise(noise[1:2], generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(a[1:2], alone, rtol=0, atol=same_math_atol(alone))


def test_regularization_off_is_identity_and_needs_a_seed_when_on():
    noise = torch.randn(1, 4, 8, 8)
    assert torch.equal(regularize_noise(noise, lambda_ac=0, lambda_kl=0), noise)
    with pytest.raises(ValueError, match="seeded"):
        regularize_noise(noise)


def test_regularization_works_under_inference_mode_and_fp16():
    with torch.inference_mode():
        noise = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0)).half()
        out = regularize_noise(noise, generator=torch.Generator().manual_seed(0))
    assert out.dtype == torch.float16
    assert kl_divergence(out.float()) < kl_divergence(noise.float()) + 1e-3


# ---------------------------------------------------------------------------------------------------------------
# Small maps: the latents of 16-64 px images (2x2 to 8x8), which the references were never run on

SMALL_SIZES = [(h, w) for h in range(1, 9) for w in range(1, 9)] + [(16, 1), (1, 16), (16, 2), (2, 16), (12, 3)]


@pytest.mark.parametrize("height, width", SMALL_SIZES)
def test_small_and_narrow_maps_stay_finite(height, width):
    """Gaussian noise of every latent size from 1x1 to 8x8 (and narrow non-square ones), at the scale of predicted
    noise and 3x larger: the default regularization returns finite values. Before the fix 2x2 and 3x3 maps turned
    into NaN (a roll on a level with no valid shift, and a KL step larger than the variance can take), and 4x4 to
    8x8 maps of 3x larger noise too (the auto-correlation step overshooting)."""
    for seed in range(4):
        for sigma in (1.0, 3.0):
            g = torch.Generator().manual_seed(100 * height + 10 * width + seed)
            noise = sigma * torch.randn(1, 4, height, width, generator=g)
            out = regularize_noise(noise, generator=torch.Generator().manual_seed(seed))
            assert torch.isfinite(out).all(), (height, width, seed, sigma)
            assert not torch.equal(out, noise)  # the KL step still acts on every one of them


def test_pyramid_stops_where_the_references_stop_and_before_an_empty_level():
    assert pyramid_sizes(64) == pyramid_sizes(64, 64) == [64, 32, 16, 8]
    assert pyramid_sizes(9) == [9, 4] and pyramid_sizes(8) == [8] and pyramid_sizes(2) == [2]
    assert pyramid_sizes(64, 16) == [64, 32, 16, 8]  # the references' rule: by the height
    assert pyramid_sizes(64, 2) == [64, 32]  # pooling a 1 px wide level would leave nothing to average
    assert pyramid_sizes(16, 1) == [16]


def test_levels_without_a_shift_add_no_term():
    """A level of height 2 or 3 has no shift in [1, H // 2): no draw is used and it adds nothing; a shift that is a
    multiple of the width leaves the width term out (it would be mean(n^2)^2, not a correlation)."""
    g = torch.Generator().manual_seed(0)
    shifts = draw_shifts(g, 4, [3])
    assert (shifts == 0).all() and (draw_shifts(g, 4, [2]) == 0).all() and (draw_shifts(g, 4, [4]) == 1).all()
    noise = torch.randn(1, 4, 3, 5, generator=g)
    assert auto_corr_loss(noise, shifts).item() == 0.0
    assert not auto_corr_grad(noise, shifts).any()
    narrow = torch.randn(1, 4, 8, 2, generator=g)
    two = torch.full((4, 1), 2)  # a valid height shift (in [1, 4)); a roll by 2 on 2 columns is the identity
    rows_only = ((narrow * torch.roll(narrow, 2, 2)).mean(dim=(2, 3)) ** 2).sum(dim=1)
    torch.testing.assert_close(auto_corr_loss(narrow, two), rows_only, rtol=0, atol=0)
    # float64: autograd and the written-out gradient, the same derivative by other op sequences (rule 2)
    narrow = narrow.double()
    var = narrow.clone().requires_grad_(True)
    (expected,) = torch.autograd.grad(auto_corr_loss(var, two).sum(), var)
    torch.testing.assert_close(auto_corr_grad(narrow, two), expected, rtol=0, atol=same_math_atol(expected))


@pytest.mark.parametrize("height, width", [(4, 4), (5, 3), (8, 2), (8, 8), (12, 12), (18, 10)])
def test_curvature_bound_bounds_the_hessian(height, width):
    """The step cap's curvature is an upper bound of the largest Hessian eigenvalue of each channel's loss (checked
    with the exact float64 Hessian; equality would be allowed, rounding of float64 sums is far below 1e-9)."""
    from core.regularization import _auto_corr_grad_and_curvature

    g = torch.Generator().manual_seed(height * width)
    noise = 2.0 * torch.randn(1, 2, height, width, generator=g, dtype=torch.float64)
    shifts = draw_shifts(g, 2, pyramid_sizes(height, width))
    _, curvature = _auto_corr_grad_and_curvature(noise, shifts)
    for channel in range(2):
        def loss(x):
            full = noise.clone()
            full[0, channel] = x.view(height, width)
            return auto_corr_loss(full, shifts).sum()

        hessian = torch.autograd.functional.hessian(loss, noise[0, channel].flatten())
        top = torch.linalg.eigvalsh(hessian).abs().max()
        assert top <= curvature[0, channel, 0, 0] * (1 + 1e-9), (top, curvature[0, channel])


def test_ordinary_latents_keep_the_references_step():
    """64x64 latents of predicted-noise scale never reach the cap: bit-identical to stepping lambda_ac / rolls."""
    from core.regularization import _auto_corr_grad_and_curvature

    g = torch.Generator().manual_seed(11)
    noise = torch.randn(1, 4, 64, 64, generator=g)
    shifts = draw_shifts(g, 4, pyramid_sizes(64))
    _, curvature = _auto_corr_grad_and_curvature(noise, shifts)
    assert (4.0 * curvature <= 1).all()
    out = regularize_noise(noise, lambda_kl=0, num_reg_steps=1, num_ac_rolls=1, shift_sampler=lambda c, s: shifts)
    assert torch.equal(out, noise - 20.0 * auto_corr_grad(noise, shifts))


def test_kl_step_on_tiny_images_converges_instead_of_diverging():
    """With N values per image the references' KL step changes var - 1 by about (1 - 4 lambda / (N - 1)): for a
    2x2x4 latent (N = 16) and lambda 20 that is -4.3 per step, a divergence. Capped, the variance moves towards 1."""
    g = torch.Generator().manual_seed(3)
    noise = 1.5 * torch.randn(1, 4, 2, 2, generator=g)
    out = regularize_noise(noise, lambda_ac=0, generator=torch.Generator().manual_seed(0))
    assert abs(out.var().item() - 1) < abs(noise.var().item() - 1)
    one = torch.randn(1, 1, 1, 1, generator=g)  # one value: no variance, no KL step
    assert torch.equal(regularize_noise(one, lambda_ac=0, generator=g), one)
    with pytest.raises(ValueError, match="at least 2 values"):
        kl_divergence(one)
