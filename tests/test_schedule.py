"""Inversion schedules against diffusers' DDIMInverseScheduler and the authors' scheduler arithmetic."""
import pytest
import torch
from diffusers import DDIMInverseScheduler, DDIMScheduler

from core import inversion_schedule, sigmas_from_alphas_cumprod
from fixtures.diffusers_tiny import SD_BETAS

SD_CONFIG = dict(SD_BETAS, clip_sample=False, set_alpha_to_one=False, steps_offset=1, timestep_spacing="leading")


def _sigma(alpha_bar):
    return float(((1 - alpha_bar) / alpha_bar) ** 0.5)


@pytest.mark.parametrize("steps", [50, 20, 30, 7])
def test_default_schedule_is_diffusers_inversion(steps):
    inverse = DDIMInverseScheduler(**SD_CONFIG)
    inverse.set_timesteps(steps)
    table = sigmas_from_alphas_cumprod(inverse.alphas_cumprod)
    sch = inversion_schedule(table, steps)
    assert list(sch.timesteps) == inverse.timesteps.tolist()
    ratio = 1000 // steps
    for k, t in enumerate(inverse.timesteps.tolist()):
        # DDIMInverseScheduler.step: from alpha(t - ratio) (initial_alpha_cumprod if < 0) to alpha(t); UNet at t
        source = t - ratio
        alpha_from = inverse.alphas_cumprod[source] if source >= 0 else inverse.initial_alpha_cumprod
        # ours: sigma from the same float32 alpha in float32 (subtract, divide, sqrt: gamma(3) relative, plus the
        # float32 rounding of the result); _sigma in float64: 1e-5 is 20x that bound (tolerances.py, rule 3)
        assert float(sch.levels[k]) == pytest.approx(_sigma(alpha_from), rel=1e-5)
        assert float(sch.levels[k + 1]) == pytest.approx(_sigma(inverse.alphas_cumprod[t]), rel=1e-5)
        assert float(sch.eval_sigmas[k]) == pytest.approx(_sigma(inverse.alphas_cumprod[t]), rel=1e-5)


def test_authors_schedule_skips_first_and_last():
    table = sigmas_from_alphas_cumprod(DDIMScheduler(**SD_CONFIG).alphas_cumprod)
    sch = inversion_schedule(table, 50, "authors")
    assert sch.steps == 48
    assert list(sch.timesteps) == list(range(21, 962, 20))
    # authors' scheduler.step(reverse): a_t = alphas_cumprod[t - 1], a_next = alphas_cumprod[t + 20 - 1]
    assert torch.equal(sch.levels, table[[20] + [t + 19 for t in range(21, 962, 20)]])
    assert torch.equal(sch.eval_sigmas, table[list(range(21, 962, 20))])


def test_regeneration_sigmas_are_the_ddim_sampling_schedule():
    scheduler = DDIMScheduler(**dict(SD_CONFIG, set_alpha_to_one=True))
    scheduler.set_timesteps(50)
    table = sigmas_from_alphas_cumprod(scheduler.alphas_cumprod)
    regen = inversion_schedule(table, 50).regeneration_sigmas()
    assert torch.equal(regen[:-1], table[scheduler.timesteps])  # 981, 961, ..., 1
    assert regen[-1] == 0 and (regen[:-1] > regen[1:]).all()


def test_schedule_errors_name_the_problem():
    table = torch.linspace(0.03, 14.6, 1000)
    with pytest.raises(ValueError, match="steps must be an integer >= 1"):
        inversion_schedule(table, 0)
    with pytest.raises(ValueError, match="at most 500"):
        inversion_schedule(table, 900)
    with pytest.raises(ValueError, match="unknown inversion schedule"):
        inversion_schedule(table, 50, "karras")
    with pytest.raises(ValueError, match="steps >= 3"):
        inversion_schedule(table, 2, "authors")
