"""core.sigma_space against independent references: diffusers' DDIM schedulers for the steps and conversions,
autograd for the SGD step size; and core.schedule.restore_schedule's checks."""
import pytest
import torch
from diffusers import DDIMInverseScheduler, DDIMScheduler

from core import inversion_schedule, restore_schedule, sigmas_from_alphas_cumprod
from core.ode import euler_step, slope_from_denoised
from core.sigma_space import (
    from_ddim,
    predict_noise,
    sgd_step_size,
    start_noise,
    to_ddim,
)
from fixtures.diffusers_tiny import SD_BETAS

SD_CONFIG = dict(SD_BETAS, clip_sample=False, set_alpha_to_one=False, steps_offset=1)


def _sigma(alpha_bar):
    return float(((1 - alpha_bar) / alpha_bar) ** 0.5)


def test_sampling_step_is_diffusers_euler_step():
    """x_t -> sigma space -> DDIM step -> back equals DDIMScheduler.step (eta 0) for the same eps."""
    scheduler = DDIMScheduler(**SD_CONFIG)
    scheduler.set_timesteps(10)
    g = torch.Generator().manual_seed(0)
    x_t, eps = torch.randn(1, 4, 8, 8, generator=g), torch.randn(1, 4, 8, 8, generator=g)
    t = int(scheduler.timesteps[3])
    prev = t - 1000 // 10
    reference = scheduler.step(eps, t, x_t).prev_sample
    s, s_prev = _sigma(scheduler.alphas_cumprod[t]), _sigma(scheduler.alphas_cumprod[prev])
    ours = to_ddim(euler_step(from_ddim(x_t, s), eps, s, s_prev), s_prev)
    # rule 3 (tolerances.py): about 10 float32 operations on each side, on |x_t|, |eps| < 6 with coefficients <= 15:
    # 2 gamma(10) * 6 * 15 = 1.1e-4 at worst in x; back in x_t (divided by sqrt(1 + s^2) >= 1) 1e-5 holds with the
    # rtol term for all but a worst case of every rounding in one direction, which the 1e-5 rtol covers
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-5)


def test_inversion_step_is_diffusers_inverse_step_for_eps():
    scheduler = DDIMInverseScheduler(**SD_CONFIG)
    scheduler.set_timesteps(10)
    g = torch.Generator().manual_seed(1)
    x_t, eps = torch.randn(1, 4, 8, 8, generator=g), torch.randn(1, 4, 8, 8, generator=g)
    t = int(scheduler.timesteps[4])
    reference = scheduler.step(eps, t, x_t).prev_sample  # from level t - 100 to level t
    s_from, s_to = _sigma(scheduler.alphas_cumprod[t - 100]), _sigma(scheduler.alphas_cumprod[t])
    ours = to_ddim(euler_step(from_ddim(x_t, s_from), eps, s_from, s_to), s_to)
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-5)  # as above (rule 3)


def test_v_prediction_noise_is_converted_at_the_evaluated_timestep():
    """V_CONVERSION_LEVEL 'eval': the noise equals diffusers' DDIMScheduler v->eps conversion at the timestep the
    model was asked at (the inverse scheduler converts at the source level instead; see docs/differences.md)."""
    table = sigmas_from_alphas_cumprod(DDIMScheduler(**SD_CONFIG).alphas_cumprod)
    alphas = DDIMScheduler(**SD_CONFIG).alphas_cumprod
    g = torch.Generator().manual_seed(2)
    x_t, v = torch.randn(1, 4, 8, 8, generator=g), torch.randn(1, 4, 8, 8, generator=g)
    t_from, t_eval = 381, 401
    seen = {}

    def denoise(x, sigma):  # a v model in ComfyUI's convention (V_PREDICTION.calculate_denoised, sigma_data 1)
        s = float(sigma[0])
        seen["unet_input"] = x / (1 + s**2) ** 0.5
        return x / (s**2 + 1) - v * s / (s**2 + 1) ** 0.5

    x = from_ddim(x_t, float(table[t_from]))
    eps = predict_noise(denoise, x, float(table[t_from]), float(table[t_eval]))
    # x_t * c / c: 2 roundings of |x_t| plus c's own (sqrt, square, add): gamma(5) |x_t| < 1e-5 (rule 3)
    torch.testing.assert_close(seen["unet_input"], x_t, rtol=1e-5, atol=1e-5)  # the UNet sees the level-s sample
    a = alphas[t_eval]
    # the conversion divides by sigma(t_eval) and recombines terms up to |x| / sigma ~ 10 |x_t|: about 20 float32
    # operations on values up to 10 * 5: gamma(20) * 50 = 6e-5 < 1e-4 (rule 3)
    torch.testing.assert_close(eps, a**0.5 * v + (1 - a) ** 0.5 * x_t, rtol=1e-4, atol=1e-4)


def test_sgd_step_size_is_the_references_step_on_x_t():
    """A gradient step of lambda on x_t, written for x (autograd on both parametrizations)."""
    sigma, lam = 3.0, 0.1
    g = torch.Generator().manual_seed(3)
    x_t = torch.randn(1, 4, 4, 4, generator=g)
    target = torch.randn(1, 4, 4, 4, generator=g)

    def loss(z_t):
        return ((z_t.tanh() - target) ** 2).sum()

    leaf_t = x_t.clone().requires_grad_(True)
    stepped_t = x_t - lam * torch.autograd.grad(loss(leaf_t), leaf_t)[0]
    leaf = from_ddim(x_t, sigma).requires_grad_(True)
    stepped = leaf.detach() - sgd_step_size(lam, sigma) * torch.autograd.grad(loss(to_ddim(leaf, sigma)), leaf)[0]
    # both sides: tanh, its derivative and a step, ~10 float32 operations per element on |x_t| < 5 and gradients
    # below 4 |target| + 4: gamma(10) * (|x_t| + 0.1 |grad|) ~ 6e-7 (|x_t| + 1): within rtol 1e-5 + atol 1e-6 (rule 3)
    torch.testing.assert_close(to_ddim(stepped, sigma), stepped_t, rtol=1e-5, atol=1e-6)


def test_start_noise_is_the_noise_as_ddim_sample_and_eps_inverts_denoised():
    noise = torch.randn(2, 4, 4, 4, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(to_ddim(start_noise(noise, 14.6), 14.6), noise)
    x, eps = noise * 3, noise.flip(0)
    torch.testing.assert_close(slope_from_denoised(x, x - eps * 2.5, 2.5), eps)


def test_restore_schedule_round_trip_and_refusals():
    table = sigmas_from_alphas_cumprod(DDIMScheduler(**SD_CONFIG).alphas_cumprod)
    for name, steps in (("diffusers", 10), ("authors", 10)):
        schedule = inversion_schedule(table, steps, name)
        info = dict(schedule.to_dict(), shape=[1, 4, 8, 8], seed=0)
        restored = restore_schedule(info, table, shape=(1, 4, 8, 8))
        assert restored.ddim_steps == steps and restored.timesteps == schedule.timesteps
        torch.testing.assert_close(restored.levels, schedule.levels)
    with pytest.raises(ValueError, match=r"inverted latent is \[1, 4, 16, 16\] but its inversion produced"):
        restore_schedule(info, table, shape=(1, 4, 16, 16))
    other = sigmas_from_alphas_cumprod(DDIMScheduler(beta_schedule="linear").alphas_cumprod)
    with pytest.raises(ValueError, match="another noise schedule"):
        restore_schedule(info, other)
    with pytest.raises(ValueError, match="damaged"):
        restore_schedule({k: v for k, v in info.items() if k != "levels"}, table)
    with pytest.raises(ValueError, match="inconsistent"):
        restore_schedule(dict(info, levels=info["levels"][:-1]), table)
