"""v-prediction inversion against diffusers on the same tiny weights (CI, no host): the conversion level of the
model's v output (core.sigma_space.predict_noise's v_conversion) is checked step by step against diffusers'
DDIMInverseScheduler ("source") and against diffusers' own eval-level conversion (`get_epsilon` of the
pix2pix-zero pipeline, "eval"), and a round trip on a denoiser-like v model shows which one reconstructs better.
"""
import pytest
import torch

from core import invert_latent, inversion_schedule
from core.sigma_space import predict_noise
from fixtures.diffusers_tiny import tiny_pix2pix_zero_pipeline, tiny_unet, unet_denoiser

V = "v_prediction"


def _v_pipeline(unet):
    """diffusers' pix2pix-zero pipeline with both DDIM schedulers configured for v-prediction (as an SD 2.x
    checkpoint's scheduler config says prediction_type="v_prediction")."""
    from diffusers import DDIMInverseScheduler, DDIMScheduler

    pipe = tiny_pix2pix_zero_pipeline(unet)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config, prediction_type=V)
    pipe.inverse_scheduler = DDIMInverseScheduler.from_config(pipe.inverse_scheduler.config, prediction_type=V)
    return pipe


@pytest.fixture(scope="module")
def raw_v_model():
    """A tiny SD-shaped UNet with raw random weights, read as a v-prediction model; float64, so that the two sides
    differ only by the float32 rounding of the schedule's sigma, which enters the step linearly (see
    test_inversion.py's raw_model: < 1e-5 of the latent's size, tolerances.py rule 3)."""
    unet = tiny_unet(seed=0).double()
    context = torch.randn(1, 77, 32, generator=torch.Generator().manual_seed(1)).double()
    return unet, context, unet_denoiser(unet, context, prediction_type=V)


def _latent(seed=2, size=8):
    return torch.randn(1, 4, size, size, generator=torch.Generator().manual_seed(seed))


def _record_invert(pipe, latent, context, steps):
    """diffusers' invert() with regularization off; per step (v output, timestep, x_t in, x_t out)."""
    steps_seen = []
    step = pipe.inverse_scheduler.step

    def recording_step(model_output, timestep, sample, *args, **kwargs):
        out = step(model_output, timestep, sample, *args, **kwargs)
        steps_seen.append((model_output.detach().clone(), int(timestep), sample.clone(), out.prev_sample.clone()))
        return out

    pipe.inverse_scheduler.step = recording_step
    with torch.no_grad():
        result = pipe.invert(image=latent, prompt_embeds=context, num_inference_steps=steps, lambda_auto_corr=0.0,
                             lambda_kl=0.0, output_type="latent").latents
    return result, steps_seen


def _our_step(denoise, sample, sch, k, conversion):
    """Our inversion step k from diffusers' x_t, returned as diffusers' x_t of the next level."""
    s_from, s_to, s_eval = float(sch.levels[k]), float(sch.levels[k + 1]), float(sch.eval_sigmas[k])
    x = sample * (1 + s_from**2) ** 0.5
    eps = predict_noise(denoise, x, s_from, s_eval, v_prediction=True, v_conversion=conversion)
    return (x + eps * (s_to - s_from)) / (1 + s_to**2) ** 0.5


def test_source_conversion_matches_diffusers_invert_step_by_step(raw_v_model):
    """v_conversion="source" is diffusers' DDIMInverseScheduler: from diffusers' own x_t at every step our next
    latent equals its prev_sample. Tolerance 1e-5 of the latent's size: raw_v_model's bound (the schedule's float32
    sigma; everything else is float64)."""
    unet, context, denoise = raw_v_model
    steps = 10
    _, seen = _record_invert(_v_pipeline(unet), _latent().double(), context, steps)
    sch = inversion_schedule(denoise.sigma_table, steps)
    assert [t for _, t, _, _ in seen] == list(sch.timesteps)
    for k, (_, _, sample, prev) in enumerate(seen):
        ours = _our_step(denoise, sample, sch, k, "source")
        torch.testing.assert_close(ours, prev, rtol=0, atol=1e-5 * float(prev.abs().max()))


def test_eval_conversion_differs_from_diffusers_by_the_level_change_only(raw_v_model):
    """The default "eval" differs from diffusers' inversion step by exactly what moving the conversion from the
    source level to the evaluated timestep predicts, computed with diffusers alone: its inverse scheduler stepped
    with the noise diffusers' own pipeline derives at the evaluated timestep (`get_epsilon`, which its
    regularization uses) instead of with v. Same 1e-5 tolerance as above. The size of the difference (relative to
    the latent, printed with -s) is what docs/differences.md quotes."""
    from diffusers import DDIMInverseScheduler

    unet, context, denoise = raw_v_model
    steps = 10
    pipe = _v_pipeline(unet)
    _, seen = _record_invert(pipe, _latent().double(), context, steps)
    eps_scheduler = DDIMInverseScheduler.from_config(pipe.inverse_scheduler.config, prediction_type="epsilon")
    eps_scheduler.set_timesteps(steps)
    sch = inversion_schedule(denoise.sigma_table, steps)
    rel = []
    for k, (v, t, sample, prev) in enumerate(seen):
        expected = eps_scheduler.step(pipe.get_epsilon(v, sample, t), t, sample).prev_sample
        ours = _our_step(denoise, sample, sch, k, "eval")
        size = float(prev.abs().max())
        torch.testing.assert_close(ours, expected, rtol=0, atol=1e-5 * size)
        rel.append(float((expected - prev).abs().max()) / size)
    print("eval vs diffusers' source step, relative max difference per step:", [f"{r:.1e}" for r in rel])
    # a real difference, far above the 1e-5 rounding, except on the first step, whose two levels (alpha_bar[0] and
    # alpha_bar[1]) nearly coincide
    assert max(rel) > 1e-2 and min(rel[1:]) > 1e-3, rel


def test_source_conversion_end_to_end_within_diffusers_own_sensitivity(raw_v_model):
    """A whole v-prediction inversion with v_conversion="source" vs diffusers' invert(): within 20x the change of
    diffusers' own result under a 1e-6 nudge of its input (a raw random network amplifies rounding), plus 1e-5 of
    the latent's size, as tests/test_inversion.py bounds the eps case."""
    unet, context, denoise = raw_v_model
    steps, latent = 10, _latent(seed=3).double()
    reference, _ = _record_invert(_v_pipeline(unet), latent, context, steps)
    nudged = latent + 1e-6 * torch.randn(latent.shape, generator=torch.Generator().manual_seed(9))
    perturbed, _ = _record_invert(_v_pipeline(unet), nudged, context, steps)
    sensitivity = float((perturbed - reference).abs().max())
    sch = inversion_schedule(denoise.sigma_table, steps)
    ours = invert_latent(denoise, latent, sch, lambda_ac=0, lambda_kl=0, v_prediction=True, v_conversion="source")
    ours = ours / (1 + float(sch.levels[-1]) ** 2) ** 0.5
    assert float((ours - reference).abs().max()) <= 20 * sensitivity + 1e-5 * float(reference.abs().max())
    default = invert_latent(denoise, latent, sch, lambda_ac=0, lambda_kl=0, v_prediction=True)
    assert float((default / (1 + float(sch.levels[-1]) ** 2) ** 0.5 - reference).abs().max()) > 1e-3
    with pytest.raises(ValueError, match="v_conversion must be one of"):
        invert_latent(denoise, latent, sch, v_prediction=True, v_conversion="target")


def _regenerate(denoise, x, sigmas):
    """Deterministic DDIM sampling = Euler in sigma space, model asked at the latent's own level (no conversion
    choice arises there)."""
    for i in range(len(sigmas) - 1):
        eps = (x - denoise(x, sigmas[i : i + 1].expand(x.shape[0]))) / sigmas[i]
        x = x + eps * (sigmas[i + 1] - sigmas[i])
    return x


def _round_trip_errors(denoise, latent, steps):
    sch = inversion_schedule(denoise.sigma_table, steps)
    err = {}
    for conversion in ("eval", "source"):
        x_T = invert_latent(denoise, latent, sch, lambda_ac=0, lambda_kl=0, v_prediction=True, v_conversion=conversion)
        back = _regenerate(denoise, x_T, sch.regeneration_sigmas())
        err[conversion] = (back - latent).pow(2).mean().sqrt().item()
    return err


def test_round_trip_eval_reconstructs_at_least_as_well_as_source():
    """Why "eval" is the default. Invert (regularization off) then regenerate with DDIM (the sampler asks the model
    at the latent's own level, so only the inversion's conversion differs), on two kinds of denoiser-like v models:

    - the tiny UNet with denoiser-like input sensitivity (tiny_unet's input_gain, as tests/test_inversion.py's round
      trip), read as a v model. Measured rms error, 10 steps: eval 0.241 / 0.251 vs source 0.285 / 0.279 (two
      contexts); 50 steps: 0.076 vs 0.078. Asserted: eval lower at 10 steps, no worse than 5% at 50.
    - the exact denoiser of Gaussian data N(mu, 1) (the posterior mean: the best any trained model can do, so the
      only error left is the inversion's): eval 0.175 vs source 0.272 at 10 steps, 0.046 vs 0.065 at 50 (float64).
      Asserted: eval at least 20% lower. (For nearly degenerate data, a variance of 0.05^2, source is ~1% better;
      for variance 0.3^2 eval is ~4% better.)
    """
    unet = tiny_unet(seed=0, input_gain=0.001)
    for seed, steps in ((1, 10), (4, 10), (1, 50)):
        context = torch.randn(1, 77, 32, generator=torch.Generator().manual_seed(seed))
        denoise = unet_denoiser(unet, context, prediction_type=V)
        err = _round_trip_errors(denoise, _latent(seed=seed + 10), steps)
        print(f"tiny v UNet, context seed {seed}, {steps} steps, round-trip rms error:", err)
        assert err["eval"] < (err["source"] if steps == 10 else 1.05 * err["source"]), err

    from core import sigmas_from_alphas_cumprod
    from fixtures.diffusers_tiny import alphas_cumprod

    g = torch.Generator().manual_seed(0)
    mu = torch.randn(1, 4, 8, 8, generator=g, dtype=torch.float64)
    latent = mu + torch.randn(1, 4, 8, 8, generator=g, dtype=torch.float64)

    def exact_denoiser(x, sigma):  # E[x0 | x] for x0 ~ N(mu, 1), x = x0 + sigma n (ComfyUI's sigma space)
        return mu + (x - mu) / (1 + sigma.view(-1, 1, 1, 1).double() ** 2)

    exact_denoiser.sigma_table = sigmas_from_alphas_cumprod(alphas_cumprod()).double()
    for steps in (10, 50):
        err = _round_trip_errors(exact_denoiser, latent, steps)
        print(f"exact Gaussian-data denoiser, {steps} steps, round-trip rms error:", err)
        assert err["eval"] < 0.8 * err["source"], err
