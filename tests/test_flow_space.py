"""core.flow_space and core.inversion.invert_flow_latent in plain torch (no ComfyUI): the identities the flow
inversion rests on, checked numerically against their definitions, not re-derived."""
import pytest
import torch

from core.flow_space import (denoised_from_noise, flow_levels, flow_step, noise_from_velocity, predict_velocity,
                             velocity_from_noise)
from core.inversion import invert_flow_latent


def _xs(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g)


@pytest.mark.parametrize("s", [0.0, 0.3, 0.9])
def test_noise_split_reproduces_the_latent_and_the_velocity(s):
    """eps_hat and x0_hat = x - s v decompose x at level s and differ by v (the flow path's velocity)."""
    x, v = _xs()
    eps = noise_from_velocity(x, v, s)
    x0 = denoised_from_noise(x, eps, s)
    # rule 3 (tolerances.py): each identity is a handful of float32 operations (gamma(6) = 3.6e-7 relative) on values
    # up to |x| + |v| < 10: assert_close's float32 default (rtol 1.3e-6, atol 1e-5) and 1e-5 hold on every CPU
    torch.testing.assert_close((1 - s) * x0 + s * eps, x)
    torch.testing.assert_close(eps - x0, v, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(velocity_from_noise(x, eps, s), v, atol=1e-5, rtol=1e-5)


def test_unregularized_step_is_comfyui_euler_and_renoises_x0():
    x, v = _xs(1)
    s, s_next = 0.4, 0.55
    eps = noise_from_velocity(x, v, s)
    stepped = flow_step(x, eps, s, s_next)
    # a few float32 operations on each side (rule 3, as above)
    torch.testing.assert_close(stepped, x + v * (s_next - s))  # ComfyUI's Euler step, d = (x - denoised) / sigma
    torch.testing.assert_close(stepped, (1 - s_next) * denoised_from_noise(x, eps, s) + s_next * eps)


def test_straight_path_is_inverted_exactly():
    """A model that knows the noise of a straight path (v = eps - x0, constant) is inverted exactly by the
    unregularized inverse Euler: the result is (1 - s_top) x0 + s_top eps."""
    x0, eps = _xs(2)
    levels = torch.tensor([0.0, 0.2, 0.5, 0.9])

    def denoise(x, sigma):  # ComfyUI's CONST denoiser for that velocity
        return x - sigma.view(-1, 1, 1, 1) * (eps - x0)

    out = invert_flow_latent(denoise, x0, levels, lambda_ac=0, lambda_kl=0, num_reg_steps=0)
    # three Euler steps of a few float32 operations each on |x0|, |eps| < 5: 3 gamma(6) * 10 = 1.1e-5 worst case in
    # absolute terms, covered by atol + rtol |value| (rule 3)
    torch.testing.assert_close(out, 0.1 * x0 + 0.9 * eps, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(predict_velocity(denoise, x0, 0.5), eps - x0)


def test_flow_levels_drop_pure_noise_and_ascend():
    sigmas = torch.tensor([1.0, 0.9, 0.6, 0.3, 0.0])
    torch.testing.assert_close(flow_levels(sigmas, 3), torch.tensor([0.0, 0.3, 0.6, 0.9]))
    with pytest.raises(ValueError, match="only 3 steps below pure noise"):
        flow_levels(sigmas, 4)
    with pytest.raises(ValueError, match="descend strictly to 0"):
        flow_levels(torch.tensor([0.5, 0.6, 0.0]), 1)
    with pytest.raises(ValueError, match="ascend from 0 to below 1"):
        invert_flow_latent(lambda x, s: x, torch.zeros(1, 4, 8, 8), torch.tensor([0.0, 1.0]))


def test_flow_record_round_trips_and_bad_records_are_named():
    """core.schedule.FlowSchedule: the flow path's LATENT record, written by Invert Latent and read by Guided Edit."""
    from core.schedule import FlowSchedule

    levels = flow_levels(torch.tensor([1.0, 0.8, 0.5, 0.2, 0.0]), 3)
    record = FlowSchedule(levels, "simple")
    back = FlowSchedule.from_dict(dict(record.to_dict(), shape=[1, 16, 8, 8], seed=0))
    assert torch.equal(back.levels, levels) and back.steps == 3 and back.scheduler == "simple"
    assert torch.equal(back.regeneration_sigmas(), torch.tensor([0.8, 0.5, 0.2, 0.0]))
    with pytest.raises(ValueError, match="DDIM inversion record"):
        FlowSchedule.from_dict({"schedule": "diffusers", "levels": [0.0, 1.0]})
    with pytest.raises(ValueError, match="damaged"):
        FlowSchedule.from_dict({"kind": "flow", "steps": 3, "scheduler": "simple"})
    with pytest.raises(ValueError, match="inconsistent"):
        FlowSchedule.from_dict(dict(record.to_dict(), steps=4))
