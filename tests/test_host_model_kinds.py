"""Model kinds pix2pix-zero's math does not fit are refused with a message naming the kind and what is supported;
the supported kinds pass. Built with ComfyUI's own model-sampling nodes and classes on the tiny SD 1.5 model."""
import pytest
import torch
from tolerances import unit_roundoff

pytestmark = pytest.mark.host


def _noise(comfy, model):
    return comfy.call_node("P2PZ_NoiseLatent", model=model, width=64, height=64, batch_size=1, steps=4, seed=0)[0]


def _patched(model, sampling):
    clone = model.clone()
    clone.add_object_patch("model_sampling", sampling)
    return clone


@pytest.mark.parametrize("sampling,expect", [
    ("edm_playground_v2.5", "continuous-time model"),
    ("edm", "continuous-time model"),
    ("v_prediction", "continuous-time model"),
    ("eps", "continuous-time model"),
])
def test_continuous_edm_sampling_is_refused(comfy, pack_nodes, tiny_sd15_objects, sampling, expect):
    model = tiny_sd15_objects[0]
    patched = comfy.call_node("ModelSamplingContinuousEDM", model=model, sampling=sampling, sigma_max=120.0,
                              sigma_min=0.002)[0]
    with pytest.raises(ValueError, match=expect) as error:
        _noise(comfy, patched)
    assert "Supported: discrete-time eps- or v-prediction" in str(error.value)


@pytest.mark.parametrize("sampling,expect", [("lcm", "own timestep mapping"), ("x0", "predicting X0"),
                                             ("img_to_img", "predicting IMG_TO_IMG")])
def test_other_discrete_predictions_are_refused(comfy, pack_nodes, tiny_sd15_objects, sampling, expect):
    patched = comfy.call_node("ModelSamplingDiscrete", model=tiny_sd15_objects[0], sampling=sampling, zsnr=False)[0]
    with pytest.raises(ValueError, match=expect):
        _noise(comfy, patched)


def test_flow_models_are_refused(comfy, pack_nodes, tiny_sd15_objects):
    patched = comfy.call_node("ModelSamplingSD3", model=tiny_sd15_objects[0], shift=3.0)[0]
    with pytest.raises(ValueError, match=r"flow-matching model \(CONST sampling"):
        _noise(comfy, patched)


def test_discrete_edm_and_sigma_data_other_than_one_are_refused(comfy, pack_nodes, tiny_sd15_objects):
    import comfy.model_sampling as ms

    model = tiny_sd15_objects[0]
    config = model.model.model_config

    class DiscreteEDM(ms.ModelSamplingDiscreteEDM, ms.EDM):
        pass

    with pytest.raises(ValueError, match="own timestep mapping"):
        _noise(comfy, _patched(model, DiscreteEDM(config)))

    class DiscreteV(ms.ModelSamplingDiscrete, ms.V_PREDICTION):
        pass

    half = DiscreteV(config)
    half.sigma_data = 0.5
    with pytest.raises(ValueError, match="sigma_data 0.5"):
        _noise(comfy, _patched(model, half))


def test_every_node_checks_the_model(comfy, pack_nodes, tiny_sd15_objects):
    model, clip, _ = tiny_sd15_objects
    patched = comfy.call_node("ModelSamplingContinuousEDM", model=model, sampling="edm_playground_v2.5",
                              sigma_max=80.0, sigma_min=0.002)[0]
    cond = comfy.call_node("CLIPTextEncode", clip=clip, text="a cat")[0]
    latent = {"samples": torch.zeros(1, 4, 8, 8)}
    with pytest.raises(ValueError, match="inversion cannot use this model: it is a continuous-time model"):
        comfy.call_node("P2PZ_InvertLatent", model=patched, conditioning=cond, latent=latent, steps=4,
                        schedule="diffusers", lambda_ac=20.0, lambda_kl=20.0, reg_steps=5, ac_rolls=5, seed=0)
    with pytest.raises(ValueError, match="editing cannot use this model: it is a continuous-time model"):
        comfy.call_node("P2PZ_GuidedEdit", model=patched, positive=cond, inverted_latent=latent, steps=4, cfg=5.0,
                        lambda_xa=0.1, guidance="references", edited_positive=cond)


@pytest.mark.parametrize("sampling,zsnr", [("eps", False), ("v_prediction", False), ("v_prediction", True)])
def test_supported_kinds_pass(comfy, pack_nodes, tiny_sd15_objects, sampling, zsnr):
    """Each supported kind is served with its own noise schedule: Noise Latent's x_T is the seed's unit noise at
    that model's top DDIM level, sqrt(1 + sigma_T^2) * noise (zsnr's sigma_T is far larger than the default's),
    in VAE-latent units; and a stock sampler along that model's schedule takes it back to a finite image latent."""
    patched = comfy.call_node("ModelSamplingDiscrete", model=tiny_sd15_objects[0], sampling=sampling, zsnr=zsnr)[0]
    out = _noise(comfy, patched)
    table = patched.get_model_object("model_sampling").sigmas
    sigma_top = float(table[1 + 3 * (len(table) // 4)])  # 4 steps: the "leading" timesteps 1, 251, 501, 751
    noise = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    expected = patched.get_model_object("latent_format").process_out(noise * (1 + sigma_top ** 2) ** 0.5)
    # a handful of float32 operations on each side (rule 3): 8 roundings of the largest value
    torch.testing.assert_close(out["samples"], expected, rtol=0, atol=8 * unit_roundoff() * float(expected.abs().max()))
    assert out["p2pz_inversion"]["steps"] == 4
    sampler = comfy.call_node("KSamplerSelect", sampler_name="ddim")[0]
    sigmas = comfy.call_node("BasicScheduler", model=patched, scheduler="ddim_uniform", steps=4, denoise=1.0)[0]
    cond = comfy.call_node("CLIPTextEncode", clip=tiny_sd15_objects[1], text="a cat")[0]
    back = comfy.call_node("SamplerCustom", model=patched, add_noise=False, noise_seed=0, cfg=1.0, positive=cond,
                           negative=cond, sampler=sampler, sigmas=sigmas, latent_image=out)[0]["samples"]
    assert torch.isfinite(back).all() and back.abs().max() < out["samples"].abs().max()
