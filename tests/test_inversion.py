"""Regularized DDIM inversion: parity with diffusers' invert(), round trip, regularization, seeds, batches, errors."""
import pytest
import torch

from core import auto_corr_loss, draw_shifts, invert_latent, inversion_schedule, kl_divergence, pyramid_sizes
from core import predict_noise, regularize_noise
from fixtures.diffusers_tiny import tiny_pix2pix_zero_pipeline, tiny_unet, unet_denoiser
from tolerances import same_math_atol

_RANDINT = torch.randint  # the real one: Recorder patches torch.randint while diffusers runs


@pytest.fixture(scope="module")
def raw_model():
    """A tiny SD-shaped UNet with raw random weights (the hardest case for matching numerics), in float64: both
    sides then agree to float64 rounding amplified by the network, and what is left is the schedule: both read the
    same float32 alphas_cumprod, diffusers as alpha, we as sigma = sqrt((1 - alpha) / alpha) rounded to float32
    (ComfyUI's sigma tables are float32). That rounding enters the step coefficients linearly, so the two sides'
    latents differ by at most a few float32 ulps of |x| + |eps| (sigma up to 14.6): gamma(8) * 16 * max|x| < 1e-5
    relative (tolerances.py, rule 3), whatever the CPU."""
    unet = tiny_unet(seed=0).double()
    context = torch.randn(1, 77, 32, generator=torch.Generator().manual_seed(1)).double()
    return unet, context, unet_denoiser(unet, context)


@pytest.fixture(scope="module")
def smooth_model():
    """The same architecture with denoiser-like input sensitivity (see tiny_unet's input_gain)."""
    unet = tiny_unet(seed=0, input_gain=0.001)
    context = torch.randn(1, 77, 32, generator=torch.Generator().manual_seed(1))
    return unet_denoiser(unet, context)


@pytest.fixture(scope="module")
def smooth_model64():
    """smooth_model in float64, for comparisons of computations equal in exact arithmetic (tolerances.py, rule 2)."""
    unet = tiny_unet(seed=0, input_gain=0.001).double()
    context = torch.randn(1, 77, 32, generator=torch.Generator().manual_seed(1)).double()
    return unet_denoiser(unet, context)


def _latent(seed=2, batch=1, size=8):
    return torch.randn(batch, 4, size, size, generator=torch.Generator().manual_seed(seed))


class Recorder:
    """Records what diffusers' invert() does at every step: the UNet output, the regularized noise handed to the
    inverse scheduler, its input and output latents, and every auto-correlation shift it draws (which we choose)."""

    def __init__(self, pipe, monkeypatch, shift_seed=0):
        self.unet_out, self.steps, self.shifts = [], [], []
        self._g = torch.Generator().manual_seed(shift_seed)
        self._hook = pipe.unet.register_forward_hook(lambda m, a, out: self.unet_out.append(out.sample.detach().clone()))
        self._monkeypatch = monkeypatch
        step = pipe.inverse_scheduler.step

        def recording_step(model_output, timestep, sample, *args, **kwargs):
            out = step(model_output, timestep, sample, *args, **kwargs)
            self.steps.append((model_output.detach().clone(), int(timestep), sample.clone(), out.prev_sample.clone()))
            return out

        monkeypatch.setattr(pipe.inverse_scheduler, "step", recording_step)
        monkeypatch.setattr(torch, "randint", self._randint)

    def stop(self):
        self._hook.remove()
        self._monkeypatch.undo()

    def _randint(self, high, size, generator=None):
        value = 1 + int(_RANDINT(high - 1, (1,), generator=self._g)) if high > 1 else 0
        self.shifts.append(value)
        return torch.tensor([value])


def test_step_by_step_parity_with_diffusers_invert(raw_model, monkeypatch):
    """Same weights, same x_t in: our noise prediction and next latent match diffusers' at every step.

    Tolerances (float64, see raw_model): the noise prediction differs by float64 rounding of the input only (we scale
    x by sqrt(1 + sigma^2) and the denoiser divides it back); the regularization, 25 gradient steps of size
    lambda/5 = 4 from equal noise, by float64 rounding; the next latent by the float32 rounding of the schedule's
    sigma (raw_model's bound, 1e-5 relative). The tolerances below are those bounds with 10x margin.
    """
    unet, context, denoise = raw_model
    pipe = tiny_pix2pix_zero_pipeline(unet)
    rec = Recorder(pipe, monkeypatch)
    latent = _latent().double()
    steps = 10
    pipe.invert(image=latent, prompt_embeds=context, num_inference_steps=steps, output_type="latent",
                cross_attention_guidance_amount=0.1)
    rec.stop()
    sch = inversion_schedule(denoise.sigma_table, steps)
    assert [t for _, t, _, _ in rec.steps] == list(sch.timesteps)
    shifts_per_loss = 4 * len(pyramid_sizes(latent.shape[2]))
    assert len(rec.shifts) == steps * 25 * shifts_per_loss  # 5 outer x 5 rolls per step, all channels and levels
    for k, (noise_pred, _, sample, prev_sample) in enumerate(rec.steps):
        s_from, s_to, s_eval = float(sch.levels[k]), float(sch.levels[k + 1]), float(sch.eval_sigmas[k])
        x = sample * (1 + s_from**2) ** 0.5  # diffusers' x_t -> ComfyUI's sigma space
        eps = predict_noise(denoise, x, s_from, s_eval)
        torch.testing.assert_close(eps, rec.unet_out[k], rtol=0, atol=same_math_atol(rec.unet_out[k]))
        used = rec.shifts[k * 25 * shifts_per_loss:(k + 1) * 25 * shifts_per_loss]
        it = iter(used)
        replay = lambda c, sizes: torch.tensor([next(it) for _ in range(c * len(sizes))]).view(c, len(sizes))
        eps_reg = regularize_noise(rec.unet_out[k], shift_sampler=replay)
        torch.testing.assert_close(eps_reg, noise_pred, rtol=0, atol=same_math_atol(noise_pred))
        x_next = x + eps_reg * (s_to - s_from)
        torch.testing.assert_close(x_next / (1 + s_to**2) ** 0.5, prev_sample, rtol=0,
                                   atol=1e-4 * float(prev_sample.abs().max()))


def test_end_to_end_matches_diffusers_within_its_own_sensitivity(raw_model, monkeypatch):
    """The final inverted latent vs diffusers' over a whole run, same weights and shifts.

    End to end, the random network amplifies the per-step differences (raw_model: float32 rounding of the schedule,
    < 1e-5 relative per step, far below 1e-6 absolute here). Tolerance: 20x the change of diffusers' own output when
    its input latent is perturbed by 1e-6 (the network's amplification, measured in this run on this CPU), i.e. room
    for 10 steps each injecting a difference up to 2e-6, plus 1e-5.
    """
    unet, context, denoise = raw_model
    steps = 10

    def run_diffusers(latent):
        pipe = tiny_pix2pix_zero_pipeline(unet)
        rec = Recorder(pipe, monkeypatch, shift_seed=5)
        out = pipe.invert(image=latent, prompt_embeds=context, num_inference_steps=steps, output_type="latent").latents
        rec.stop()
        return out, rec.shifts

    latent = _latent().double()
    reference, shifts = run_diffusers(latent)
    perturbed, _ = run_diffusers(latent + 1e-6 * torch.randn(latent.shape, generator=torch.Generator().manual_seed(9)))
    sensitivity = (perturbed - reference).abs().max().item()
    it = iter(shifts)
    replay = lambda c, sizes: torch.tensor([next(it) for _ in range(c * len(sizes))]).view(c, len(sizes))
    sch = inversion_schedule(denoise.sigma_table, steps)
    ours = invert_latent(denoise, latent, sch, shift_sampler=replay)
    ours = ours / (1 + float(sch.levels[-1]) ** 2) ** 0.5  # back to diffusers' x_T
    diff = (ours - reference).abs().max().item()
    assert diff <= 20 * sensitivity + 1e-5, f"diff {diff:.2e} vs diffusers' own sensitivity {sensitivity:.2e}"


def _regenerate(denoise, x, sigmas):
    """The matching deterministic sampler: DDIM = Euler in sigma space, model at the current level."""
    for i in range(len(sigmas) - 1):
        eps = (x - denoise(x, sigmas[i : i + 1].expand(x.shape[0]))) / sigmas[i]
        x = x + eps * (sigmas[i + 1] - sigmas[i])
    return x


def _round_trip_error(denoise, latent, schedule):
    x_t = invert_latent(denoise, latent, schedule, lambda_ac=0, lambda_kl=0)
    back = _regenerate(denoise, x_t, schedule.regeneration_sigmas())
    return (back - latent).pow(2).mean().sqrt().item()


def test_round_trip_reconstructs_the_latent(smooth_model):
    """Inversion (regularization off) then DDIM regeneration returns the latent.

    Bound: rms error <= 0.1 at 50 steps for a unit-variance latent (measured 0.071). DDIM inversion is exact only
    in the limit of small steps (it asks the model at x_{t-1} for the noise the sampler will ask at x_t), so the
    error is first order in the step size: the test checks it shrinks as steps grow, which shows the residual is
    that discretization error and not a mismatch. A wrong pairing of levels and timesteps gives 0.44.
    """
    latent = _latent(size=8)
    err = {n: _round_trip_error(smooth_model, latent, inversion_schedule(smooth_model.sigma_table, n))
           for n in (25, 50, 100)}
    assert err[50] <= 0.1, err
    assert err[100] < 0.75 * err[50] < 0.75 * err[25], err


def test_regularization_gives_more_gaussian_noise(smooth_model):
    """On the same input, the noise the inversion adds is closer to i.i.d. N(0, 1) with regularization on."""
    latent = _latent()
    sch = inversion_schedule(smooth_model.sigma_table, 20)
    probe = draw_shifts(torch.Generator().manual_seed(4), 4, pyramid_sizes(8))
    totals = {}
    for name, kwargs in (("off", dict(lambda_ac=0, lambda_kl=0)), ("on", dict(generator=torch.Generator().manual_seed(0)))):
        ac, kl = [], []
        cb = lambda step, x, eps: (ac.append(auto_corr_loss(eps, probe).sum()), kl.append(kl_divergence(eps).sum()))
        x_t = invert_latent(smooth_model, latent, sch, callback=cb, **kwargs)
        totals[name] = (sum(ac), sum(kl), auto_corr_loss(x_t / (1 + float(sch.levels[-1]) ** 2) ** 0.5, probe).sum())
    assert totals["on"][0] < 0.5 * totals["off"][0], totals
    assert totals["on"][1] < 0.5 * totals["off"][1], totals
    assert totals["on"][2] < totals["off"][2], totals  # and the inverted latent itself is less auto-correlated


def test_same_seed_same_result_and_batches_match_single_images(smooth_model64):
    """The same run twice is the same arithmetic: equal. A batch and its images alone are equal in exact arithmetic
    and batched differently: float64 (tolerances.py, rule 2)."""
    smooth_model = smooth_model64
    sch = inversion_schedule(smooth_model.sigma_table, 10)
    batch = _latent(batch=2).double()
    run = lambda lat, seed: invert_latent(smooth_model, lat, sch, generator=torch.Generator().manual_seed(seed))
    a, b, c = run(batch, 3), run(batch, 3), run(batch, 4)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    for i in range(2):
        alone = run(batch[i : i + 1], 3)
        torch.testing.assert_close(a[i : i + 1], alone, rtol=0, atol=same_math_atol(alone))


def test_bad_latents_get_clear_errors(smooth_model):
    sch = inversion_schedule(smooth_model.sigma_table, 5)
    g = torch.Generator().manual_seed(0)
    with pytest.raises(ValueError, match=r"shape \[batch, channels, height, width\]"):
        invert_latent(smooth_model, torch.zeros(4, 8, 8), sch, generator=g)
    bad = _latent()
    bad[0, 1, 2, 3] = float("nan")
    with pytest.raises(ValueError, match="NaN or infinite"):
        invert_latent(smooth_model, bad, sch, generator=g)
    bad[0, 1, 2, 3] = float("inf")
    with pytest.raises(ValueError, match="NaN or infinite"):
        invert_latent(smooth_model, bad, sch, generator=g)
    with pytest.raises(ValueError, match="must be >= 0"):
        invert_latent(smooth_model, _latent(), sch, lambda_ac=-1, generator=g)
