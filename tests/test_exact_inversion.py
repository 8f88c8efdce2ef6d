"""Exact inversion (core.inversion, fixed_point_iters > 0) in plain torch: each inversion step solved as the
inverse of the regenerating sampler's own step, on both paths (DDIM / eps and flow / velocity).

What makes these tests able to fail: a fixed-point iteration y <- x_k + h f(y) contracts by the factor q = h Lip(f)
per iteration, so where q is well below 1 the round trip must shrink geometrically with the iterations. Evaluating
the model at the wrong point or level, keeping the references' alpha_bar[0] start level (an error of sigma_0 * eps
that no iteration removes), or stepping from the iterate instead of from x_k would each stop that decrease. Every
test runs in float64 (tolerances.py, rule 2), so rounding (1e-16 relative) is far below every bound here.
"""
import pytest
import torch

from core import invert_latent, inversion_schedule
from core.inversion import invert_flow_latent
from core.schedule import regeneration_sigmas
from test_inversion import smooth_model64  # noqa: F401  (the fixture: the smooth tiny UNet in float64)
from tolerances import same_math_atol


def _latent(channels=4, batch=1, seed=2):
    return torch.randn(batch, channels, 8, 8, generator=torch.Generator().manual_seed(seed)).double()


def _rel(a, b):
    return float((a - b).pow(2).mean().sqrt() / b.pow(2).mean().sqrt())


def _regenerate(denoise, x, sigmas):
    """ComfyUI's ddim / euler sampler (deterministic, model at the current level) down ``sigmas`` to 0."""
    for i in range(len(sigmas) - 1):
        s = sigmas[i : i + 1].expand(x.shape[0])
        x = x + (x - denoise(x, s)) / sigmas[i] * (sigmas[i + 1] - sigmas[i])
    return x


def test_ddim_fixed_point_inverts_the_samplers_step(smooth_model64):
    """Round trip (regularization off) through the stock sampler's step along regeneration_sigmas. Measured on this
    model: 0.27 -> 0.025 -> 0.0029 -> 0.0005 at 10 steps (about 10x per iteration); asserted: at least 4x per
    iteration, and the first iteration removes more than the references' start-level offset (sigma_0 = 0.029
    times the noise, about 0.03 here), which only starting at level 0 can do."""
    latent = _latent()
    schedule = inversion_schedule(smooth_model64.sigma_table, 10)
    sigmas = schedule.regeneration_sigmas().double()
    errors = []
    for n in range(4):
        x_T = invert_latent(smooth_model64, latent, schedule, lambda_ac=0, lambda_kl=0, num_reg_steps=0,
                            fixed_point_iters=n)
        errors.append(_rel(_regenerate(smooth_model64, x_T, sigmas), latent))
    for before, after in zip(errors, errors[1:]):
        assert after < before / 4, errors
    assert errors[1] < 0.029, errors


def _flow_field(channels=16, seed=3, gain=1.5):
    """A smooth nonlinear velocity field v(x, s) = W tanh(x) + (1 + s) b (per-channel mixing W with spectral norm
    ``gain``), as ComfyUI's CONST denoiser: denoised = x - s v."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(channels, channels, generator=g, dtype=torch.float64)
    w = gain * w / torch.linalg.matrix_norm(w, ord=2)
    b = torch.randn(1, channels, 8, 8, generator=g, dtype=torch.float64)

    def velocity(x, s):
        return torch.einsum("oc,bchw->bohw", w, torch.tanh(x)) + (1 + s.view(-1, 1, 1, 1)) * b

    return lambda x, s: x - s.view(-1, 1, 1, 1) * velocity(x, s)


def test_flow_fixed_point_inverts_comfyuis_euler_step():
    """The flow path: with Lip(v) <= 1.5 and steps of at most 0.2 the contraction is q <= 0.3 per iteration, so the
    round trip through ComfyUI's Euler step must shrink by at least 1 / 0.3 per iteration until rounding: asserted
    3x (measured below in the test's own numbers, printed on failure)."""
    denoise = _flow_field()
    latent = _latent(16)
    levels = torch.linspace(0, 0.9, 6, dtype=torch.float64)  # steps of 0.18
    errors = []
    for n in range(4):
        x_T = invert_flow_latent(denoise, latent, levels, lambda_ac=0, lambda_kl=0, num_reg_steps=0,
                                 fixed_point_iters=n)
        errors.append(_rel(_regenerate(denoise, x_T, regeneration_sigmas(levels)), latent))
    for before, after in zip(errors, errors[1:]):
        assert after < before / 3, errors


@pytest.mark.parametrize("path", ["ddim", "flow"])
def test_regularized_fixed_point_is_seeded_and_a_batch_is_singles(smooth_model64, path):
    """With the regularization on at every iterate: the same seed gives the same arithmetic (equal), another seed
    another result, and a batch equals its images alone in exact arithmetic (float64, rule 2)."""
    if path == "ddim":
        schedule = inversion_schedule(smooth_model64.sigma_table, 6)
        run = lambda lat, seed: invert_latent(smooth_model64, lat, schedule, fixed_point_iters=2,
                                              generator=torch.Generator().manual_seed(seed))
        batch = _latent(batch=2)
    else:
        denoise, levels = _flow_field(), torch.linspace(0, 0.9, 6, dtype=torch.float64)
        run = lambda lat, seed: invert_flow_latent(denoise, lat, levels, fixed_point_iters=2,
                                                   generator=torch.Generator().manual_seed(seed))
        batch = _latent(16, batch=2)
    a, b, c = run(batch, 3), run(batch, 3), run(batch, 4)
    assert torch.isfinite(a).all()
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    for i in range(2):
        alone = run(batch[i : i + 1], 3)
        torch.testing.assert_close(a[i : i + 1], alone, rtol=0, atol=same_math_atol(alone))


def test_iterations_cost_one_call_each_and_bad_counts_are_refused(smooth_model64):
    calls = []

    def counting(x, s):
        calls.append(1)
        return smooth_model64(x, s)

    schedule = inversion_schedule(smooth_model64.sigma_table, 5)
    invert_latent(counting, _latent(), schedule, lambda_ac=0, lambda_kl=0, fixed_point_iters=2)
    assert len(calls) == 5 * 3
    for bad in (-1, 1.5):
        with pytest.raises(ValueError, match="fixed_point_iters must be a whole number >= 0"):
            invert_latent(smooth_model64, _latent(), schedule, fixed_point_iters=bad)
        with pytest.raises(ValueError, match="fixed_point_iters must be a whole number >= 0"):
            invert_flow_latent(_flow_field(), _latent(16), torch.linspace(0, 0.9, 4), fixed_point_iters=bad)
